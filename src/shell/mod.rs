//! The IO around the [`crate::domain`]: Kubernetes, the platform, time, the process.

pub mod cli;
pub mod controller;
pub mod leader;
pub mod metrics;
pub mod platform;
pub mod proxy;
pub mod secrets;
pub mod server;
pub mod telemetry;
pub mod tracker;
pub mod verification;
pub mod verify_cmd;
