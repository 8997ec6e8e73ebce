//! The pure core stays pure: the `mxcred-core` crate, where every decision lives, has neither the
//! Kubernetes client or runtime, nor an async runtime, nor an HTTP client or server among its
//! dependencies, so the compiler refuses a decision that quietly grows IO. This test reads the
//! crate's normal dependency closure from cargo and fails naming each such crate found there.

use std::collections::BTreeSet;
use std::process::Command;

/// Crates the core must not depend on, directly or through another crate.
const FORBIDDEN: &[&str] = &[
    "kube",
    "kube-client",
    "kube-runtime",
    "tokio",
    "reqwest",
    "hyper",
];

/// The names of the packages in the normal (not dev, not build) dependency closure of `package`,
/// for the host platform, from `cargo tree`.
fn normal_closure(package: &str) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    // Offline: `cargo test` has fetched every package of the host's closure already.
    let output = Command::new(cargo)
        .args(["tree", "--offline", "--manifest-path", manifest])
        .args(["-p", package, "-e", "normal", "--prefix", "none"])
        .args(["--format", "{p}"])
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("cargo tree prints UTF-8")
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_core_depends_on_no_client_runtime_or_http_crate() {
    let closure = normal_closure("mxcred-core");
    // The closure is the one of the core: it holds the core and what the core is built on.
    for expected in ["mxcred-core", "kube-core", "k8s-openapi", "serde"] {
        assert!(
            closure.contains(expected),
            "expected {expected} in the core's dependency closure, found {closure:?}"
        );
    }
    let found: Vec<&str> = FORBIDDEN
        .iter()
        .copied()
        .filter(|name| closure.contains(*name))
        .collect();
    assert!(
        found.is_empty(),
        "the pure core (mxcred-core) depends on {}: `cargo tree -p mxcred-core -e normal -i NAME` \
         shows through which crate",
        found.join(", ")
    );
}

#[test]
fn the_operator_closure_holds_what_the_core_must_not() {
    // The same reading of the operator finds the crates the core must not have: a closure that
    // came back empty or in another format would pass the test above for nothing.
    let closure = normal_closure("mxcred-operator");
    for name in FORBIDDEN {
        assert!(
            closure.contains(*name),
            "expected {name} in the operator's dependency closure, found {closure:?}"
        );
    }
}
