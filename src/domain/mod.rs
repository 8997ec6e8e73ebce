//! The pure core: values in, values out. No Kubernetes client, no async runtime, no HTTP client.

pub mod api;
pub mod classify;
pub mod cluster;
pub mod conditions;
pub mod credential;
pub mod plan;
pub mod probe;
pub mod ready;
pub mod render;
pub mod restart;
pub mod rotation;
pub mod schedule;
pub mod spec;
