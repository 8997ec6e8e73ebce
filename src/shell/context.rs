//! What the reconciles of both kinds share: the operator's settings, the services every step
//! uses, the names of a resource, and the errors a reconcile ends with.

use crate::domain::api::MANAGER;
use crate::domain::api::RolloutRestartStatus;
use crate::shell::api_error::describe;
use crate::shell::events::EventLimiter;
use crate::shell::metrics::Metrics;
use crate::shell::retries::Retries;
use crate::shell::secrets::SecretCache;
use crate::shell::tracker::Tracker;
use crate::shell::verifier::Verifier;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::api::PatchParams;
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the controller is told by its command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Namespaces to serve; empty means all.
    pub namespaces: Vec<String>,
    pub default_interval: Duration,
    pub concurrency: u16,
    /// Replaces every resource's interval (tests only).
    pub test_interval: Option<Duration>,
    /// Label and annotation key prefixes refused in `spec.target`, beyond the built-in ones.
    pub denied_metadata_prefixes: Vec<String>,
    /// The least time between two restarts of one workload.
    pub restart_min_interval: Duration,
    /// The first wait before workloads not all brought to the credential are tried again.
    pub restart_retry: Duration,
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub reporter: Reporter,
    pub secrets: SecretCache,
    pub settings: Settings,
    pub verifier: Arc<Verifier>,
    pub tracker: Arc<Tracker>,
    pub metrics: Arc<Metrics>,
    /// When the workloads of each resource are tried again.
    pub retries: Arc<Retries<Vec<RolloutRestartStatus>>>,
    /// The bound on the Events of each object.
    pub events: Arc<EventLimiter>,
    pub status_writes: StatusWrites,
}

/// Status writes under way at once. The API server answers each with the whole resource, whose
/// annotations and managed fields a tenant can make hundreds of KiB large: with every reconcile
/// writing at once, the answers alone took the operator more than 10 MiB up.
pub struct StatusWrites(tokio::sync::Semaphore);

impl StatusWrites {
    /// Waits for a turn to write a status; the turn ends when the permit is dropped.
    pub async fn acquire(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.0
            .acquire()
            .await
            .expect("the semaphore is never closed")
    }
}

impl Default for StatusWrites {
    fn default() -> Self {
        StatusWrites(tokio::sync::Semaphore::new(2))
    }
}

/// A reconcile that failed, by the step that failed. Problems a user must fix are not errors:
/// they end the reconcile normally with a condition on the resource.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the source Secret failed: {}", describe(.0))]
    ReadSource(kube::Error),
    #[error("reading the target Secret failed: {}", describe(.0))]
    ReadTarget(kube::Error),
    #[error("applying the target Secret failed: {}", describe(.0))]
    ApplyTarget(kube::Error),
    #[error("deleting the previous target Secret failed: {}", describe(.0))]
    DeletePreviousTarget(kube::Error),
    #[error("writing the status failed: {}", describe(.0))]
    WriteStatus(kube::Error),
    #[error("the object has no {0}")]
    MissingMetadata(&'static str),
}

impl Error {
    /// The step that failed, for the error metric.
    pub fn step(&self) -> &'static str {
        match self {
            Error::ReadSource(_) => "read_source",
            Error::ReadTarget(_) => "read_target",
            Error::ApplyTarget(_) => "apply_target",
            Error::DeletePreviousTarget(_) => "delete_previous_target",
            Error::WriteStatus(_) => "write_status",
            Error::MissingMetadata(_) => "read_resource",
        }
    }
}

/// How often a resource is reconciled when nothing changes: a safety net, since every input is
/// also watched and the verification loop triggers a reconcile for each answer.
const RESYNC: Duration = Duration::from_secs(3600);

/// When a reconcile comes back, for both kinds, in this order: a held rotation at the end of
/// its hold; a target blocked by a foreign Secret (not watched) after [`CONFLICT_RETRY`]; a
/// synced resource at its next resync, or sooner when its workloads are tried again (they are
/// not watched); any other only on a change.
pub fn requeue(
    hold: Option<Duration>,
    blocked: bool,
    synced: bool,
    restart_again: Option<Duration>,
) -> Action {
    match hold {
        Some(hold) => Action::requeue(hold),
        None if blocked => Action::requeue(CONFLICT_RETRY),
        None if synced => Action::requeue(restart_again.map_or(RESYNC, |again| again.min(RESYNC))),
        None => Action::await_change(),
    }
}

impl Context {
    /// Counts a reconcile that ended with `result` (its Ready reason, or its error) after
    /// `started`, and resets or keeps the resource's count of API failures.
    pub fn record(&self, uid: &str, started: Instant, result: &Result<(Action, &str), Error>) {
        match result {
            Ok((_, ready)) => {
                self.metrics.reconciled(ready, started.elapsed());
                self.tracker.api_succeeded(uid);
            }
            Err(e) => {
                self.metrics.reconciled("error", started.elapsed());
                self.metrics.failed(e.step());
            }
        }
    }

    /// How long a resource whose reconcile failed waits: longer after each failure in a row.
    pub fn retry_after_failure(&self, uid: &str) -> (u32, Duration) {
        let attempt = self.tracker.api_failed(uid);
        (attempt, backoff(attempt))
    }
}

/// How often a target blocked by someone else's Secret is tried again.
pub const CONFLICT_RETRY: Duration = Duration::from_secs(30);

/// Exponential backoff for transient API failures: 1 s doubling up to 256 s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(8)).min(Duration::from_secs(300))
}

/// The names of a resource that every step needs.
pub(crate) struct Id {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

pub(crate) fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

pub(crate) fn now() -> Time {
    api_time(jiff::Timestamp::now())
}

/// A time as the API serializes it: in whole seconds. A status holding a finer time would differ
/// from its own copy read back, and be written a second time.
pub(crate) fn api_time(t: jiff::Timestamp) -> Time {
    Time(jiff::Timestamp::from_second(t.as_second()).expect("a second of a valid time is valid"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(100), Duration::from_secs(256));
    }

    #[test]
    fn errors_name_their_step_and_never_the_servers_message() {
        let status =
            Status::failure("quoting CANARY-data from the object", "Forbidden").with_code(403);
        let error = Error::WriteStatus(kube::Error::Api(Box::new(status)));
        let text = error.to_string();
        assert_eq!(error.step(), "write_status");
        assert!(
            text.starts_with("writing the status failed: HTTP 403 Forbidden"),
            "{text}"
        );
        assert!(!text.contains("CANARY"), "{text}");
    }
}
