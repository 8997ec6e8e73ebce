//! The IO around the [`crate::domain`]: Kubernetes, the platform, time, the process.

//!
//! Its modules, from the top down (each uses only those below it; `tests/shell_layers.rs` holds the
//! order):
//!
//! - the process and its wiring: [`cli`], [`verify_cmd`], [`leader`], [`server`], the
//!   controllers' watches ([`controller`], [`cluster`]);
//! - the one reconcile driver of both kinds: [`reconcile`];
//! - the steps: each kind's own ([`namespaced`], and [`cluster`]'s), and those both share: the
//!   source ([`source`]), the rotation gate ([`rotation`]), a target in one namespace
//!   ([`target`]), the verification loop's subscription ([`subscribe`]), the restarts of one
//!   namespace ([`restart`]), the Events ([`publish`]) and the unreadable resource
//!   ([`unreadable`]);
//! - what the steps share: [`context`], with what differs between the kinds
//!   ([`context::Kind`]) (and [`cluster`]'s own context);
//! - services: [`tracker`], [`secrets`], [`verifier`], [`platform`], [`metrics`], [`events`],
//!   [`retries`], [`watch`], [`api_error`], [`proxy`], [`telemetry`].

pub mod api_error;
pub mod cli;
pub mod cluster;
pub mod consumers;
pub mod context;
pub mod controller;
pub mod events;
pub mod leader;
pub mod metrics;
pub mod namespaced;
pub mod platform;
pub mod proxy;
pub mod publish;
pub mod reconcile;
pub mod restart;
pub mod retries;
mod rotation;
pub mod secrets;
pub mod server;
mod source;
mod subscribe;
mod target;
pub mod telemetry;
pub mod tracker;
mod unreadable;
pub mod verifier;
pub mod verify_cmd;
pub mod watch;

/// A MendixCredential as the watch delivers it: one this version cannot read still arrives, so
/// that it gets a condition instead of being skipped in silence.
pub type Guarded = kube::core::DeserializeGuard<crate::domain::api::MendixCredential>;

/// A ClusterMendixCredential as the watch delivers it: one this version cannot read still
/// arrives, so that it gets a condition instead of stopping the watch of all of them.
pub type ClusterGuarded =
    kube::core::DeserializeGuard<crate::domain::cluster::ClusterMendixCredential>;
