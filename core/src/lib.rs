//! The pure core of mxcred-operator: values in, values out. The API types, spec resolution,
//! credentials, the rendered Secret, conditions, the classification of platform answers, probes,
//! the schedule and the plan that decides what a reconcile writes.
//!
//! The crate depends on no Kubernetes client or runtime, no async runtime and no HTTP client
//! (`kube-core` and `k8s-openapi` give it the Kubernetes types), so the compiler keeps every
//! decision free of IO; the operator's `tests/layers.rs` checks the dependency closure, and the
//! lints of `core/clippy.toml` refuse the standard library's files, sockets, processes and
//! threads. The operator uses it as `mxcred_operator::domain`.

pub mod api;
pub mod classify;
pub mod cluster;
pub mod conditions;
pub mod consumers;
pub mod credential;
pub mod due;
pub mod plan;
pub mod probe;
pub mod ready;
pub mod render;
pub mod restart;
pub mod rotation;
pub mod schedule;
pub mod spec;
