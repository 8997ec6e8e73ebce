//! mxcred-operator: turns `MendixCredential` resources into header-ready Secrets for CI runners,
//! keeps them in step with their source and verifies them against the Mendix platform.
//!
//! Two layers, kept apart on purpose:
//! - [`domain`] is the pure core: the API types, spec resolution, credentials, the rendered
//!   Secret, conditions, the classification of platform answers, probes, the schedule and the
//!   plan that decides what a reconcile writes. It does no IO: it imports no Kubernetes client,
//!   no async runtime and no HTTP client (`tests/layers.rs` checks it), so every decision is
//!   tested with plain values.
//! - [`shell`] is the IO around it: watches and caches, the reconcile driver, the verification
//!   loop, the platform's HTTP client, leader election, the HTTP server and the command line.

pub mod domain;
pub mod shell;

use kube::CustomResourceExt;

/// The CRD as YAML: what `mxcred-operator crd` prints and `crds/` holds.
pub fn crd_yaml() -> String {
    let crd = domain::api::MendixCredential::crd();
    serde_yaml::to_string(&crd).expect("a CRD always serialises")
}
