//! The documentation's shell examples work as written: every block fenced as `sh` in README.md
//! and docs/*.md runs, in order, against the demo (`hack/demo.sh` with `DEMO_KEEP=1`: a real
//! control plane, the operator, examples/ in namespace `ci`) with the platform simulator behind
//! every probe. A block fenced as `sh norun` is one that cannot run here (it needs a cluster that
//! runs Pods, `kubeseal`, or is `make` itself); the test counts both kinds.

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

/// README.md, then docs/ in name order but install.md last: it uninstalls everything.
fn documentation() -> Vec<String> {
    let mut docs: Vec<String> = std::fs::read_dir(Path::new(ROOT).join("docs"))
        .unwrap()
        .map(|e| format!("docs/{}", e.unwrap().file_name().to_string_lossy()))
        .filter(|f| f.ends_with(".md"))
        .collect();
    docs.sort_by_key(|f| (f == "docs/install.md", f.clone()));
    [vec!["README.md".to_owned()], docs].concat()
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
