//! What the reconciles of both kinds share: the operator's settings, the services every step
//! uses, the names of a resource, what differs between the kinds ([`Kind`]), and the errors a
//! reconcile ends with.

use crate::domain::api::MANAGER;
use crate::domain::api::Scope;
use crate::domain::api::{
    ANNOTATION_VERIFY_REQUESTED_AT, MendixCredentialSpec, RolloutRestartStatus,
};
use crate::domain::plan::Announcement;
use crate::domain::render::Publisher;
use crate::domain::spec::{self, InvalidSpec, Resolved};
use crate::shell::api_error::describe;
use crate::shell::consumers::ConsumerIndex;
use crate::shell::events::EventLimiter;
use crate::shell::metrics::Metrics;
use crate::shell::retries::Retries;
use crate::shell::secrets::SecretCache;
use crate::shell::tracker::Tracker;
use crate::shell::verifier::Verifier;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::PatchParams;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// What the controller is told by its command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Namespaces to serve; empty means all.
    pub namespaces: Vec<String>,
    pub default_interval: Duration,
    /// `spec.rotation.maxAge` of resources that set none; `None`: no maximum age.
    pub default_max_age: Option<Duration>,
    pub concurrency: u16,
    /// Replaces every resource's interval (tests only).
    pub test_interval: Option<Duration>,
    /// Label and annotation key prefixes refused in `spec.target`, beyond the built-in ones.
    pub denied_metadata_prefixes: Vec<String>,
    /// The least time between two restarts of one workload.
    pub restart_min_interval: Duration,
    /// The first wait before workloads not all brought to the credential are tried again.
    pub restart_retry: Duration,
    /// Whether the workloads that use each target are looked for (`status.consumers`).
    pub discover_consumers: bool,
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
    /// The workloads that use each target Secret.
    pub consumers: Arc<ConsumerIndex>,
    /// Whether the API server streams the initial state of watches
    /// ([`crate::shell::watch::streams_initial_events`]); else they list it in pages.
    pub streaming_lists: bool,
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
/// not watched) or its `RotationDue` changes by the clock (`due_in`); any other only on a change.
pub fn requeue(
    hold: Option<Duration>,
    blocked: bool,
    synced: bool,
    restart_again: Option<Duration>,
    due_in: Option<Duration>,
) -> Action {
    match hold {
        Some(hold) => Action::requeue(hold),
        None if blocked => Action::requeue(CONFLICT_RETRY),
        None if synced => Action::requeue(
            [restart_again, due_in]
                .into_iter()
                .flatten()
                .fold(RESYNC, Duration::min),
        ),
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

    /// The spec resolved and checked as every kind's is: the labels and annotations it asks of
    /// the targets, and the value of the `verify-requested-at` annotation.
    pub fn resolve(
        &self,
        name: &str,
        spec: &MendixCredentialSpec,
        meta: &ObjectMeta,
    ) -> Result<Resolved, InvalidSpec> {
        let mut resolved = spec::resolve(name, spec, self.settings.default_interval)?;
        resolved.due.max_age = resolved.due.max_age.or(self.settings.default_max_age);
        spec::check_target_metadata(&resolved, &self.settings.denied_metadata_prefixes)?;
        let requested = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_VERIFY_REQUESTED_AT));
        spec::check_verify_request(requested.map(String::as_str))?;
        Ok(resolved)
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

/// The names of a resource that every step needs. `namespace` is where its source is read
/// (a MendixCredential's own namespace).
pub struct Id {
    /// The kind's scope: where the verification loop sends its answers.
    pub scope: Scope,
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl Id {
    /// The resource as the publisher of its targets.
    pub fn publisher(&self) -> Publisher<'_> {
        Publisher {
            scope: self.scope,
            uid: &self.uid,
            name: &self.name,
        }
    }
}

/// What differs between the two kinds of resource, for the one reconcile driver
/// ([`crate::shell::reconcile`]): how a resource is named, where its status is written, and the
/// steps that publish its credential to its targets and plan its status (a MendixCredential has
/// one target in its own namespace, a ClusterMendixCredential one in each selected namespace).
pub trait Kind: Send + Sync + 'static {
    type Resource: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug
        + Send
        + Sync
        + 'static;
    type Status: Clone + Serialize + Send + Sync + 'static;

    /// The kind, as its status patches name it.
    const KIND: &'static str;

    fn ctx(&self) -> &Context;

    /// Whether the caches the steps read are current: until then a reconcile waits.
    fn caches_current(&self) -> bool {
        true
    }

    /// The names of `cr`.
    fn id(cr: &Self::Resource) -> Result<Id, Error>;

    /// How logs name the resource.
    fn label(id: &Id) -> String;

    /// The status `cr` holds, or an empty one.
    fn status(cr: &Self::Resource) -> Self::Status;

    /// When the status says the credential was last verified.
    fn last_verified(status: &Self::Status) -> Option<&Time>;

    /// The status written back as the API server answered it.
    fn status_of(written: Self::Resource) -> Option<Self::Status>;

    /// Where the status of the resource `meta` describes is written (its namespace, or the
    /// cluster), as this version reads it and as it arrives when it cannot be read.
    fn api(&self, meta: &ObjectMeta) -> Result<Api<Self::Resource>, Error>;
    fn guarded_api(
        &self,
        meta: &ObjectMeta,
    ) -> Result<Api<DeserializeGuard<Self::Resource>>, Error>;

    /// The kind's steps, from the spec to the plan: publish the credential to the targets,
    /// restart their workloads, subscribe the verification loop, and plan the status and the
    /// Events, for `cr` whose last known status is `previous`.
    fn steps(
        &self,
        cr: &Self::Resource,
        id: &Id,
        previous: &Self::Status,
        forced: Option<SystemTime>,
    ) -> impl Future<Output = Result<Decided<Self::Status>, Error>> + Send;
}

/// What a kind's steps published and planned: what the driver writes, publishes and remembers,
/// and when it comes back.
pub struct Decided<S> {
    /// The status to write; `None` when it is as it was.
    pub status: Option<S>,
    pub events: Vec<Announcement>,
    /// The Ready reason, for logs and metrics.
    pub ready: &'static str,
    /// The pending forced check has been served: remember it once the status is written.
    pub request_served: bool,
    /// The status is held back this long for the first answer about a new credential.
    pub hold: Option<Duration>,
    /// A target is blocked for a reason that may pass (a foreign Secret, a failed write).
    pub blocked: bool,
    /// When the workloads not all restarted are tried again.
    pub restart_again: Option<Duration>,
    /// When `RotationDue` changes by the clock alone.
    pub due_in: Option<Duration>,
    /// How many targets this reconcile wrote.
    pub wrote: usize,
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
    fn a_synced_resource_comes_back_when_it_falls_due_within_the_resync() {
        let minute = Duration::from_secs(60);
        assert_eq!(
            requeue(None, false, true, None, Some(minute)),
            Action::requeue(minute)
        );
        assert_eq!(
            requeue(None, false, true, Some(2 * minute), Some(3 * minute)),
            Action::requeue(2 * minute)
        );
        assert_eq!(
            requeue(None, false, true, None, Some(RESYNC * 24)),
            Action::requeue(RESYNC)
        );
        assert_eq!(
            requeue(None, false, false, None, Some(minute)),
            Action::await_change()
        );
    }

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
