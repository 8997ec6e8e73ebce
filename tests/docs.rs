//! The documentation's shell examples work as written: every block fenced as `sh` in README.md
//! and the book's pages (docs/, in the order of docs/SUMMARY.md) runs, in order, against the demo (`hack/demo.sh` with `DEMO_KEEP=1`: a real
//! control plane, the operator, examples/ in namespace `ci`) with the platform simulator behind
//! every probe. A block fenced as `sh norun` is one that cannot run here (it needs a cluster that
//! runs Pods, `kubeseal`, or is `make` itself); the test counts both kinds.
//!
//! And the book holds together (the tests named `book_`, which `make docs` runs): it builds with
//! mdBook, every link between its pages and to a heading resolves, every page is in SUMMARY.md,
//! and the README's links into it resolve.

mod common;

use mendix_simulator::{Simulator, State};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::ROOT;

/// A fenced block of a Markdown file.
struct Block {
    file: String,
    line: usize,
    runnable: bool,
    code: String,
}

impl Block {
    /// Commands in the block: lines that are neither empty nor comments, continuations joined.
    fn commands(&self) -> usize {
        let mut n = 0;
        let mut continued = false;
        for line in self.code.lines().map(str::trim) {
            if !continued && !line.is_empty() && !line.starts_with('#') {
                n += 1;
            }
            continued = line.ends_with('\\');
        }
        n
    }
}

fn shell_blocks(file: &str) -> Vec<Block> {
    let text = std::fs::read_to_string(Path::new(ROOT).join(file)).unwrap();
    let mut blocks = vec![];
    let mut open: Option<(usize, Vec<String>, Vec<&str>)> = None;
    for (i, line) in text.lines().enumerate() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => {
                open = Some((
                    i + 1,
                    info.split_whitespace().map(String::from).collect(),
                    vec![],
                ))
            }
            (Some(_), Some(_)) => {
                let (line, info, body) = open.take().unwrap();
                if info.first().is_some_and(|lang| lang == "sh") {
                    blocks.push(Block {
                        file: file.to_owned(),
                        line,
                        runnable: !info.iter().any(|w| w == "norun"),
                        code: body.join("\n"),
                    });
                }
            }
            (Some((_, _, body)), None) => body.push(line),
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "{file}: a fence is never closed");
    blocks
}

/// The book's pages in the order of docs/SUMMARY.md (paths under docs/).
fn summary_pages() -> Vec<String> {
    let summary = std::fs::read_to_string(Path::new(ROOT).join("docs/SUMMARY.md")).unwrap();
    summary
        .lines()
        .filter_map(|line| {
            let start = line.find("](")? + 2;
            let end = start + line[start..].find(')')?;
            Some(line[start..end].to_owned())
        })
        .collect()
}

/// README.md, then the book's pages in the order of SUMMARY.md, but upgrade.md last: it
/// uninstalls everything.
fn documentation() -> Vec<String> {
    let mut pages: Vec<String> = summary_pages()
        .into_iter()
        .map(|page| format!("docs/{page}"))
        .collect();
    pages.sort_by_key(|page| page == "docs/upgrade.md");
    [vec!["README.md".to_owned()], pages].concat()
}

/// Stops the demo (control plane, operator) however the test ends; the directory goes with the
/// temporary directory that holds it.
struct Demo(PathBuf);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = Command::new(format!("{ROOT}/hack/controlplane.sh"))
            .arg("stop")
            .arg(&self.0)
            .status();
    }
}

/// Stand-ins for the Prometheus Operator's CRDs, which docs/install.md asks for before its
/// monitoring example: just enough for the chart's ServiceMonitor and PrometheusRule to be stored.
const PROMETHEUS_OPERATOR_CRDS: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: servicemonitors.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: ServiceMonitor, plural: servicemonitors, singular: servicemonitor}
  versions:
  - name: v1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: prometheusrules.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: PrometheusRule, plural: prometheusrules, singular: prometheusrule}
  versions:
  - name: v1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
"#;

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_shell_examples_work() {
    let blocks: Vec<Block> = documentation()
        .iter()
        .flat_map(|f| shell_blocks(f))
        .collect();
    let (runnable, norun): (Vec<&Block>, Vec<&Block>) = blocks.iter().partition(|b| b.runnable);
    let commands: usize = runnable.iter().map(|b| b.commands()).sum();
    println!(
        "documentation: {} sh blocks run ({commands} commands), {} fenced sh norun",
        runnable.len(),
        norun.len()
    );
    // A floor, so that a change that stops blocks from being found cannot pass unnoticed.
    assert!(
        runnable.len() >= 8,
        "only {} runnable blocks",
        runnable.len()
    );

    let tools = common::helm_tools();
    let operator = PathBuf::from(env!("CARGO_BIN_EXE_mxcred-operator"));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let path = format!(
        "{}:{}:{}",
        tools.display(),
        operator.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );

    // The tokens of examples/ and hack/demo-credentials.yaml, as hack/demo.sh gives its own
    // simulator.
    let sim = Simulator::start().await;
    sim.set("example-personal-access-token", State::Valid);
    sim.set("ci-bot@example.com:example-api-key", State::Valid);
    sim.set("deleted-token", State::Deleted);
    sim.set("deactivated-user-token", State::Deactivated);

    let demo = Demo(dir.clone());
    let mut command = Command::new(format!("{ROOT}/hack/demo.sh"));
    command
        .current_dir(ROOT)
        .env("PATH", &path)
        .env("DEMO_KEEP", "1")
        .env("DEMO_DIR", &dir)
        .env("DEMO_OPERATOR", &operator)
        .env("DEMO_PLATFORM", sim.base_url())
        .env("DEMO_WATCH_PID", std::process::id().to_string())
        .env("MXCRED_NO_BUILD", "1");
    let out = tokio::task::spawn_blocking(move || run(&mut command))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "hack/demo.sh failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for shown in [
        "Verified",
        "TokenRejected",
        "UserDeactivated",
        "RotationRejected",
        "the working token stays",
        "export KUBECONFIG=",
    ] {
        assert!(stdout.contains(shown), "the demo shows {shown}:\n{stdout}");
    }

    let home = tmp.path().join("home");
    let env = move |cmd: &mut Command| {
        cmd.current_dir(ROOT)
            .env("PATH", &path)
            .env("KUBECONFIG", dir.join("admin.kubeconfig"))
            .env("KUBECACHEDIR", home.join("kube-cache"))
            .env("HELM_CACHE_HOME", home.join("helm-cache"))
            .env("HELM_CONFIG_HOME", home.join("helm-config"))
            .env("HELM_DATA_HOME", home.join("helm-data"))
            .env_remove("MXCRED_NAMESPACE");
    };
    let setup = {
        let mut cmd = Command::new("kubectl");
        env(&mut cmd);
        cmd.args(["apply", "-f", "-"]);
        cmd
    };
    apply_stdin(setup, PROMETHEUS_OPERATOR_CRDS);

    for block in runnable {
        let mut cmd = Command::new("timeout");
        env(&mut cmd);
        cmd.args(["120", "bash", "-euo", "pipefail", "-c", &block.code]);
        let out = tokio::task::spawn_blocking(move || run(&mut cmd))
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}:{}: the documented commands failed ({}):\n{}\n--- stdout\n{}\n--- stderr\n{}",
            block.file,
            block.line,
            out.status,
            block.code,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    drop(demo);
}

fn apply_stdin(mut cmd: Command, input: &str) {
    use std::io::Write;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn fences_are_read_as_written() {
    let blocks = shell_blocks("README.md");
    assert!(
        blocks
            .iter()
            .any(|b| !b.runnable && b.code.contains("make demo"))
    );
    assert!(
        blocks
            .iter()
            .any(|b| b.runnable && b.code.contains("verify-requested-at"))
    );
    let b = Block {
        file: String::new(),
        line: 0,
        runnable: true,
        code: "# comment\nhelm upgrade x \\\n  --set a=b\n\nkubectl get ns".into(),
    };
    assert_eq!(b.commands(), 2);
}

/// Every Markdown file under docs/ (paths under docs/), SUMMARY.md aside.
fn markdown_files(dir: &Path, under: &str, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = format!("{under}{}", entry.file_name().to_string_lossy());
        if entry.file_type().unwrap().is_dir() {
            markdown_files(&entry.path(), &format!("{name}/"), out);
        } else if name.ends_with(".md") && name != "SUMMARY.md" {
            out.push(name);
        }
    }
}

#[test]
fn book_lists_every_page() {
    let mut files = vec![];
    markdown_files(&Path::new(ROOT).join("docs"), "", &mut files);
    let pages = summary_pages();
    let missing: Vec<&String> = files.iter().filter(|f| !pages.contains(f)).collect();
    assert!(
        missing.is_empty(),
        "pages under docs/ that docs/SUMMARY.md does not list (the book would not show them): {missing:?}"
    );
    for page in [
        "concepts.md",
        "install.md",
        "reference/mendixcredential.md",
        "testenv.md",
    ] {
        assert!(pages.iter().any(|p| p == page), "{page} is in the book");
    }
}

/// Mendix retired the name Warden: tokens are made under User Settings → Developer Settings in
/// the Mendix Portal. The README names the old one once, for those who remember it; no other
/// page, nor the demo, says it.
#[test]
fn only_the_readme_names_warden_once() {
    let says = |path: &str| {
        let text = std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap();
        text.matches("Warden").count()
    };
    assert_eq!(says("README.md"), 1, "README.md says Warden exactly once");
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    assert!(
        readme.contains("formerly Warden"),
        "README.md says Warden only as the former name"
    );
    let mut others = vec![];
    markdown_files(&Path::new(ROOT).join("docs"), "docs/", &mut others);
    others.extend(["SECURITY.md", "hack/demo.sh", "hack/demo-credentials.yaml"].map(String::from));
    assert!(others.len() > 10, "the pages are found: {others:?}");
    let stale: Vec<&String> = others.iter().filter(|p| says(p) > 0).collect();
    assert!(stale.is_empty(), "these still say Warden: {stale:?}");
}

/// The links of an HTML page: `href` values.
fn hrefs(html: &str) -> Vec<&str> {
    html.match_indices("href=\"")
        .filter_map(|(i, m)| {
            let rest = &html[i + m.len()..];
            Some(&rest[..rest.find('"')?])
        })
        .collect()
}

/// The broken links of a built book: to a file the book does not hold, or to an `id` its target
/// page does not have. Links out of the book (a scheme, `//`) are not followed.
fn broken_links(book: &Path) -> Vec<String> {
    let mut broken = vec![];
    let mut pages = vec![];
    fn html_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                html_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "html") {
                out.push(path);
            }
        }
    }
    html_files(book, &mut pages);
    // print.html repeats every page under one file; 404.html is mdBook's own.
    pages.retain(|p| {
        !["print.html", "404.html", "toc.html"]
            .iter()
            .any(|n| p.ends_with(n))
    });
    let root = book.canonicalize().unwrap();
    for page in &pages {
        let html = std::fs::read_to_string(page).unwrap();
        let name = page.strip_prefix(book).unwrap().display().to_string();
        for href in hrefs(&html) {
            if href.contains("://") || href.starts_with("//") || href.starts_with("mailto:") {
                continue;
            }
            let (file, fragment) = href.split_once('#').unwrap_or((href, ""));
            let target = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(file)
            };
            let Ok(target) = target.canonicalize() else {
                broken.push(format!("{name}: {href}: no such file in the book"));
                continue;
            };
            if !target.starts_with(&root) {
                broken.push(format!("{name}: {href}: outside the book"));
                continue;
            }
            if !fragment.is_empty() {
                let text = std::fs::read_to_string(&target).unwrap_or_default();
                if !text.contains(&format!("id=\"{fragment}\"")) {
                    broken.push(format!("{name}: {href}: no heading #{fragment} there"));
                }
            }
        }
    }
    broken
}

fn build_book(dest: &Path) {
    let out = Command::new(format!("{ROOT}/hack/mdbook.sh"))
        .output()
        .expect("hack/mdbook.sh runs");
    assert!(
        out.status.success(),
        "hack/mdbook.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()).join("mdbook");
    let out = run(Command::new(bin)
        .current_dir(ROOT)
        .args(["build", "docs", "--dest-dir"])
        .arg(dest));
    assert!(
        out.status.success(),
        "mdbook build failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn book_links_resolve() {
    let tmp = tempfile::tempdir().unwrap();
    let book = tmp.path().join("book");
    build_book(&book);
    for page in summary_pages() {
        let html = book.join(page.replace(".md", ".html"));
        assert!(html.exists(), "the book has no {}", html.display());
    }
    let broken = broken_links(&book);
    assert!(
        broken.is_empty(),
        "broken links in the book:\n{}",
        broken.join("\n")
    );
}

#[test]
fn book_link_checker_finds_broken_links() {
    let tmp = tempfile::tempdir().unwrap();
    let book = tmp.path();
    std::fs::write(
        book.join("a.html"),
        r##"<h1 id="top">A</h1><a href="b.html#there">b</a> <a href="#top">top</a>"##,
    )
    .unwrap();
    std::fs::write(book.join("b.html"), r#"<h2 id="there">B</h2><a href="a.html#gone">a</a> <a href="c.html">c</a> <a href="https://example.com/x">out</a> <a href="../x.html">up</a>"#).unwrap();
    let mut broken = broken_links(book);
    broken.sort();
    assert_eq!(
        broken,
        [
            "b.html: ../x.html: no such file in the book",
            "b.html: a.html#gone: no heading #gone there",
            "b.html: c.html: no such file in the book",
        ]
    );
}

/// The anchor GitHub gives a heading: lower case, letters, digits, `-` and `_` kept, spaces made
/// `-`, everything else dropped (as mdBook does).
fn github_anchor(heading: &str) -> String {
    mxcred_operator::reference::anchor(heading)
}

/// Links of a Markdown file outside code blocks and code spans: `](target)`.
fn markdown_links(text: &str) -> Vec<String> {
    let mut links = vec![];
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut in_code = false;
        let mut rest = String::new();
        for c in line.chars() {
            if c == '`' {
                in_code = !in_code;
            } else if !in_code {
                rest.push(c);
            }
        }
        let mut from = 0;
        while let Some(i) = rest[from..].find("](") {
            let start = from + i + 2;
            let Some(end) = rest[start..].find(')') else {
                break;
            };
            links.push(rest[start..start + end].to_owned());
            from = start + end;
        }
    }
    links
}

fn headings(text: &str) -> Vec<String> {
    let mut fenced = false;
    let mut out = vec![];
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            out.push(github_anchor(line.trim_start_matches('#').trim()));
        }
    }
    out
}

#[test]
fn book_readme_links_resolve() {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let mut broken = vec![];
    let links = markdown_links(&readme);
    assert!(
        links.iter().any(|l| l.starts_with("docs/")),
        "the README links into the book"
    );
    for link in links {
        if link.contains("://") || link.starts_with("mailto:") {
            continue;
        }
        let (file, fragment) = link.split_once('#').unwrap_or((&link, ""));
        let path = if file.is_empty() { "README.md" } else { file };
        let Ok(text) = std::fs::read_to_string(Path::new(ROOT).join(path)) else {
            broken.push(format!("{link}: no such file"));
            continue;
        };
        if !fragment.is_empty() && !headings(&text).iter().any(|h| h == fragment) {
            broken.push(format!("{link}: no such heading"));
        }
    }
    assert!(broken.is_empty(), "broken links in README.md: {broken:?}");
}

#[test]
fn book_markdown_links_are_read_as_written() {
    let text = "See [a](a.md#x) and `[b](b.md)`.\n```\n[c](c.md)\n```\n# The CRDs\n";
    assert_eq!(markdown_links(text), ["a.md#x"]);
    assert_eq!(headings(text), ["the-crds"]);
}

/// Writes an executable shell script.
fn script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A `cargo` for hack/demo.sh whose `build` reports the operator and the simulator in a target
/// directory of its own (as with CARGO_TARGET_DIR set), the way `--message-format=json` does.
/// Returns the directory to put first on the PATH.
fn fake_cargo(dir: &Path, operator: &Path, simulator: &Path) -> PathBuf {
    let bin = dir.join("fake-cargo");
    let artifact = |exe: &Path| {
        format!(
            r#"echo '{{"reason":"compiler-artifact","executable":"{}","fresh":true}}'"#,
            exe.display()
        )
    };
    script(
        &bin.join("cargo"),
        &format!("{}\n{}", artifact(operator), artifact(simulator)),
    );
    bin
}

/// Runs hack/demo.sh as `make demo` does, with `path` first on the PATH and `env` set.
fn demo(dir: &Path, path: &Path, env: &[(&str, String)]) -> (Output, std::time::Duration) {
    let tools = common::helm_tools();
    let mut cmd = Command::new(format!("{ROOT}/hack/demo.sh"));
    cmd.current_dir(ROOT)
        .env(
            "PATH",
            format!(
                "{}:{}:{}",
                path.display(),
                tools.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("DEMO_DIR", dir.join("demo"))
        .env("DEMO_WATCH_PID", std::process::id().to_string())
        .env("MXCRED_NO_BUILD", "1")
        .env_remove("DEMO_OPERATOR")
        .env_remove("DEMO_SIMULATOR")
        .env_remove("DEMO_PLATFORM")
        .env_remove("DEMO_KEEP");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = std::time::Instant::now();
    let out = run(&mut cmd);
    let _ = Command::new(format!("{ROOT}/hack/controlplane.sh"))
        .arg("stop")
        .arg(dir.join("demo"))
        .output();
    (out, started.elapsed())
}

/// A build of the operator and the simulator as the scripts given, where cargo says it put them
/// (outside `target/`): the directory, the two binaries and a PATH whose `cargo` reports them.
fn fake_build(operator: &str, simulator: &str) -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("elsewhere/debug");
    let (op, sim) = (
        target.join("mxcred-operator"),
        target.join("mendix-simulator"),
    );
    script(&op, operator);
    script(&sim, simulator);
    let path = fake_cargo(tmp.path(), &op, &sim);
    (tmp, op, sim, path)
}

/// Asserts that the demo failed and said that `what` (`binary`) exited, with its log's message;
/// returns its stdout and stderr.
fn says_it_exited(out: &Output, what: &str, binary: &Path) -> (String, String) {
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        !out.status.success(),
        "the demo failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("{what} ({}) exited at start", binary.display()))
            && stderr.contains("a message of its own"),
        "the demo says {what} exited, and shows its log:\n{stdout}\n{stderr}"
    );
    (stdout, stderr)
}

#[test]
fn demo_runs_the_simulator_cargo_built_and_says_when_it_dies() {
    let (tmp, _, simulator, path) = fake_build(
        "exit 0",
        "echo 'simulator: cannot listen on 127.0.0.1:0 (a message of its own)' >&2; exit 3",
    );
    let (out, took) = demo(tmp.path(), &path, &[]);
    let (stdout, _) = says_it_exited(&out, "the platform simulator", &simulator);
    assert!(
        !stdout.contains("starting a local control plane"),
        "it stops before the control plane:\n{stdout}"
    );
    assert!(
        took.as_secs() < 20,
        "it says so at once, not after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_the_operator_cargo_built_and_says_when_it_dies() {
    let (tmp, operator, _, path) = fake_build(
        "echo 'starting'; echo 'error: the API server refused (a message of its own)' >&2; exit 1",
        "exit 3",
    );
    let sim = Simulator::start().await;
    let platform = sim.base_url();
    let dir = tmp.path().to_owned();
    let (out, took) =
        tokio::task::spawn_blocking(move || demo(&dir, &path, &[("DEMO_PLATFORM", platform)]))
            .await
            .unwrap();
    let (_, stderr) = says_it_exited(&out, "the operator", &operator);
    assert!(
        !stderr.contains("timed out waiting"),
        "no kubectl wait ran into its timeout:\n{stderr}"
    );
    assert!(took.as_secs() < 120, "took {took:?}");
}
