//! The IO around the [`crate::domain`]: Kubernetes, the platform, time, the process.

pub mod cli;
pub mod cluster;
pub mod controller;
pub mod events;
pub mod leader;
pub mod metrics;
pub mod platform;
pub mod proxy;
pub mod reconcile;
pub mod restart;
pub mod secrets;
pub mod server;
mod subscribe;
mod target;
pub mod telemetry;
pub mod tracker;
pub mod verifier;
pub mod verify_cmd;

/// A MendixCredential as the watch delivers it: one this version cannot read still arrives, so
/// that it gets a condition instead of being skipped in silence.
pub type Guarded = kube::core::DeserializeGuard<crate::domain::api::MendixCredential>;
