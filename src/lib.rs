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
pub mod reference;
pub mod shell;

use kube::CustomResourceExt;

/// The MendixCredential CRD as YAML: what `crds/mendixcredentials.mxcred.io.yaml` holds.
pub fn crd_yaml() -> String {
    yaml_of(domain::api::MendixCredential::crd())
}

/// The ClusterMendixCredential CRD as YAML: what
/// `crds/clustermendixcredentials.mxcred.io.yaml` holds.
pub fn cluster_crd_yaml() -> String {
    yaml_of(domain::cluster::ClusterMendixCredential::crd())
}

/// Every CRD: its file name under `crds/` and its YAML. `mxcred-operator crd` prints them all.
pub fn crds() -> [(&'static str, String); 2] {
    [
        ("mendixcredentials.mxcred.io.yaml", crd_yaml()),
        (
            "clustermendixcredentials.mxcred.io.yaml",
            cluster_crd_yaml(),
        ),
    ]
}

fn yaml_of(
    crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> String {
    let mut crd = serde_json::to_value(crd).expect("a CRD always serialises");
    for version in crd["spec"]["versions"].as_array_mut().into_iter().flatten() {
        without_nullable(&mut version["schema"]["openAPIV3Schema"]);
    }
    serde_yaml::to_string(&crd).expect("a CRD always serialises")
}

/// Drops `nullable` from the objects and enums of a schema. An API server publishing OpenAPI v2
/// (1.20, and `kubectl explain` on any server without v3) cannot say "nullable" and publishes such
/// a field as `{}`: no type, no fields to explain. Optional fields stay optional (not
/// `required`). Plain values and maps stay nullable: a server-side apply on 1.20 turns an empty
/// string, and a map whose last key it removes, into null, which a non-nullable field refuses.
fn without_nullable(schema: &mut serde_json::Value) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    if object.contains_key("properties") || object.contains_key("enum") {
        object.remove("nullable");
    }
    for (key, value) in object.iter_mut() {
        match key.as_str() {
            "properties" => value
                .as_object_mut()
                .into_iter()
                .flat_map(|p| p.values_mut())
                .for_each(without_nullable),
            "items" | "additionalProperties" => without_nullable(value),
            _ => {}
        }
    }
}
