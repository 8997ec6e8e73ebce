//! mxcred-operator: turns `MendixCredential` resources into header-ready Secrets for CI runners
//! and keeps them in step with their source.
//!
//! The pure parts hold the logic and are tested without a cluster: [`spec`] (defaults and
//! checks), [`credential`] (reading and validating the source), [`render`] (the target Secret),
//! [`conditions`]. [`controller`] is the thin IO around them.

pub mod api;
pub mod classify;
pub mod cli;
pub mod conditions;
pub mod controller;
pub mod credential;
pub mod leader;
pub mod metrics;
pub mod platform;
pub mod probe;
pub mod render;
pub mod schedule;
pub mod secrets;
pub mod server;
pub mod spec;
pub mod telemetry;
pub mod tracker;
pub mod verification;
pub mod verify_cmd;

use kube::CustomResourceExt;

/// The CRD as YAML: what `mxcred-operator crd` prints and `crds/` holds.
pub fn crd_yaml() -> String {
    let crd = api::MendixCredential::crd();
    serde_yaml::to_string(&crd).expect("a CRD always serialises")
}
