//! The shell reads top-down: each module uses only modules of its own layer or below, and no
//! two modules use each other, however indirectly. The layers are declared here, once; a
//! module of `src/shell/` not declared here fails the test, so that each new one gets its place.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// From the top down.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "the process and the controllers' wiring",
        &[
            "shell::cli",
            "shell::verify_cmd",
            "shell::leader",
            "shell::server",
            "shell::controller",
            "shell::controller::gauges",
            "shell::cluster",
        ],
    ),
    ("the reconcile driver", &["shell::reconcile"]),
    (
        "each kind's steps",
        &[
            "shell::namespaced",
            "shell::cluster::kind",
            "shell::cluster::publish",
            "shell::cluster::copies",
            "shell::cluster::restarts",
            "shell::cluster::rotation",
        ],
    ),
    (
        "the steps both kinds share",
        &[
            "shell::source",
            "shell::rotation",
            "shell::target",
            "shell::subscribe",
            "shell::restart",
            "shell::publish",
            "shell::unreadable",
        ],
    ),
    (
        "what the steps share",
        &["shell::context", "shell::cluster::context"],
    ),
    (
        "services",
        &[
            "shell::tracker",
            "shell::secrets",
            "shell::verifier",
            "shell::verifier::check",
            "shell::platform",
            "shell::metrics",
            "shell::events",
            "shell::retries",
            "shell::consumers",
            "shell::consumers::workload",
            "shell::watch",
            "shell::api_error",
            "shell::proxy",
            "shell::telemetry",
            "shell::cluster::sources",
            "shell",
        ],
    ),
];

/// The module a file of `src/` holds: `shell/cluster/mod.rs` is `shell::cluster`.
fn module_of(relative: &Path) -> String {
    let mut parts: Vec<String> = relative
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

/// The code of a file before its unit tests, without comments.
fn code(text: &str) -> String {
    let text = text
        .split("#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or_default();
    text.lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first identifiers of a `use` group's items: `{self, a::b, c}` gives `a`, `c`.
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = vec![];
    let mut depth = 0;
    let mut item = String::new();
    for ch in group.chars() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => heads.push(std::mem::take(&mut item)),
            _ if depth == 0 => item.push(ch),
            _ => {}
        }
    }
    heads.push(item);
    heads
        .iter()
        .filter_map(|i| {
            let head = i.trim().split("::").next()?.trim().to_owned();
            (!head.is_empty() && head != "self").then_some(head)
        })
        .collect()
}

/// The modules of the shell that `code` (of module `module`) names.
fn uses(module: &str, code: &str, known: &BTreeSet<&str>) -> BTreeSet<String> {
    let resolve = |path: Vec<String>| -> String {
        // The longest known module the path starts with.
        (1..=path.len())
            .rev()
            .map(|n| path[..n].join("::"))
            .find(|m| known.contains(m.as_str()))
            .unwrap_or_else(|| "shell".into())
    };
    let parent = module.rsplit_once("::").map(|(p, _)| p).unwrap_or("shell");
    let mut found = BTreeSet::new();
    for (prefix, base) in [("crate::shell::", "shell"), ("super::", parent)] {
        for (at, _) in code.match_indices(prefix) {
            if prefix == "super::" && at > 0 && code[..at].ends_with("::") {
                continue;
            }
            let rest = &code[at + prefix.len()..];
            let heads = if let Some(group) = rest.strip_prefix('{') {
                let end = group
                    .find("};")
                    .or_else(|| group.find('}'))
                    .unwrap_or(group.len());
                group_heads(&group[..end])
                    .into_iter()
                    .map(|h| vec![h])
                    .collect::<Vec<_>>()
            } else {
                let path: Vec<String> = rest
                    .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    .next()
                    .unwrap_or_default()
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                vec![path]
            };
            for path in heads {
                let full: Vec<String> = base.split("::").map(str::to_owned).chain(path).collect();
                let target = resolve(full);
                if target != module {
                    found.insert(target);
                }
            }
        }
    }
    found
}

fn shell_files() -> Vec<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![];
    let mut dirs = vec![src.join("shell")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let module = module_of(path.strip_prefix(&src).unwrap());
                files.push((module, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    files
}

/// Every module's uses, by module; fails for a module no layer declares.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let known: BTreeSet<&str> = LAYERS.iter().flat_map(|(_, m)| m.iter().copied()).collect();
    let mut graph = BTreeMap::new();
    let mut undeclared = vec![];
    for (module, text) in shell_files() {
        if !known.contains(module.as_str()) {
            undeclared.push(module.clone());
        }
        let used = uses(&module, &code(&text), &known);
        graph.insert(module, used);
    }
    assert!(
        undeclared.is_empty(),
        "modules no layer declares (add each to LAYERS): {undeclared:?}"
    );
    graph
}

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
        .unwrap()
}

#[test]
fn no_module_of_the_shell_uses_one_above_it() {
    let graph = graph();
    assert!(graph.len() >= 30, "only {} modules found", graph.len());
    let mut upward = vec![];
    for (module, used) in &graph {
        for target in used {
            if layer_of(target) < layer_of(module) {
                upward.push(format!(
                    "{module} ({}) uses {target} ({})",
                    LAYERS[layer_of(module)].0,
                    LAYERS[layer_of(target)].0
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that point up:\n{}",
        upward.join("\n")
    );
}

#[test]
fn no_two_modules_of_the_shell_use_each_other() {
    let graph = graph();
    // Depth-first, with the path so far: a module met again on it closes a cycle.
    fn visit(
        module: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|m| m == module) {
            let mut cycle = path[at..].to_vec();
            cycle.push(module.to_owned());
            return Some(cycle);
        }
        if !done.insert(module.to_owned()) {
            return None;
        }
        path.push(module.to_owned());
        for next in graph.get(module).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        if let Some(cycle) = visit(module, &graph, &mut vec![], &mut done) {
            panic!("an import cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_reader_finds_grouped_nested_and_relative_uses() {
    let known: BTreeSet<&str> = [
        "shell",
        "shell::context",
        "shell::cluster",
        "shell::cluster::copies",
        "shell::restart",
    ]
    .into_iter()
    .collect();
    let code = "use crate::shell::{context::{Context, Id}, restart};\nuse super::copies::KnownCopy;\nlet x = crate::shell::Guarded;";
    let found = uses("shell::cluster::driver", code, &known);
    let expected: BTreeSet<String> = [
        "shell::context",
        "shell::restart",
        "shell::cluster::copies",
        "shell",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(found, expected);
}
