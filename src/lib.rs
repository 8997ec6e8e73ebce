//! mxcred-operator: turns `MendixCredential` resources into header-ready Secrets for CI runners,
//! keeps them in step with their source and verifies them against the Mendix platform.
//!
//! Two layers, kept apart on purpose:
//! - [`domain`] is the pure core, the workspace's `mxcred-core` crate (`core/`): the API types,
//!   spec resolution, credentials, the rendered Secret, conditions, the classification of
//!   platform answers, probes, the schedule and the plan that decides what a reconcile writes. It
//!   does no IO: it depends on no Kubernetes client, no async runtime and no HTTP client
//!   (`tests/layers.rs` checks its dependency closure), so every decision is tested with plain
//!   values.
//! - [`shell`] is the IO around it: watches and caches, the reconcile driver, the verification
//!   loop, the platform's HTTP client, leader election, the HTTP server and the command line.

/// The pure core, the `mxcred-core` crate of this workspace, under the name the shell uses.
pub use mxcred_core as domain;
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
        tidy(&mut version["schema"]["openAPIV3Schema"]);
    }
    serde_yaml::to_string(&crd).expect("a CRD always serialises")
}

/// Keeps `nullable`, which schemars sets on every optional field, only on optional objects,
/// lists and maps, and joins the lines of each description into paragraphs.
///
/// A server-side apply that removes the last entry of an object, list or map leaves it null
/// (`target: {labels: {}}` after `labels: {team: ci}`), which a field that is not nullable
/// refuses; a string or an enum never becomes null that way. Descriptions come from doc
/// comments, wrapped at 100 columns; `kubectl explain` wraps them itself, so a line break in the
/// middle of a sentence would show.
fn tidy(schema: &mut serde_json::Value) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    let container = matches!(
        object.get("type").and_then(|t| t.as_str()),
        Some("object" | "array")
    );
    if !container || object.contains_key("enum") {
        object.remove("nullable");
    }
    for (key, value) in object.iter_mut() {
        match key.as_str() {
            "description" => {
                if let Some(text) = value.as_str() {
                    *value = paragraphs(text).into();
                }
            }
            "properties" => value
                .as_object_mut()
                .into_iter()
                .flat_map(|p| p.values_mut())
                .for_each(tidy),
            "items" | "additionalProperties" => tidy(value),
            _ => {}
        }
    }
}

/// Joins the lines of each paragraph (paragraphs are separated by an empty line).
fn paragraphs(text: &str) -> String {
    text.split("\n\n")
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n\n")
}
