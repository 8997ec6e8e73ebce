//! The reconcile driver. It reads as its steps:
//!
//! 1. resolve the spec (pure),
//! 2. read the source Secret (client, or the cache),
//! 3. find and write the target Secret (client, or the cache; the decision is pure),
//!    then bring the workloads of `spec.target.rolloutRestart` to the credential it holds
//!    (client; the decisions are pure: [`crate::domain::restart`]; never fails the reconcile),
//! 4. subscribe the credential to the verification loop (memory; never waits for the platform),
//! 5. plan the status and the Events (pure: [`crate::domain::plan`]),
//! 6. write the status, then publish the Events, then remember what was done (client),
//!
//! each step only after the write before it succeeded.

use crate::domain::api::{
    ANNOTATION_VERIFY_REQUESTED_AT, MANAGER, MendixCredential, MendixCredentialStatus,
    RolloutRestartStatus, condition,
};
use crate::domain::conditions::{self, Verdict};
use crate::domain::plan::{self, Observed, Plan, Ready, ReadyReason, Sync};
use crate::domain::restart as restarts;
use crate::domain::spec::{self, InvalidSpec};
use crate::shell::Guarded;
use crate::shell::controller::Settings;
use crate::shell::events::EventLimiter;
use crate::shell::metrics::Metrics;
use crate::shell::secrets::SecretCache;
use crate::shell::tracker::Tracker;
use crate::shell::verifier::Verifier;
use crate::shell::{restart, subscribe, target};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

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
    pub retries: Arc<restart::Retries<Vec<RolloutRestartStatus>>>,
    /// The bound on the Events of each object.
    pub events: Arc<EventLimiter>,
    pub status_writes: StatusWrites,
}

/// Status writes under way at once. The API server answers each with the whole resource, whose
/// annotations and managed fields a tenant can make hundreds of KiB large: with every reconcile
/// writing at once, the answers alone took the operator more than 10 MiB up.
pub struct StatusWrites(tokio::sync::Semaphore);

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

/// A Kubernetes error for a log line: its code and reason only. The API server's messages, and
/// those of admission webhooks and policy engines, may quote the object sent (a target
/// Secret's data) or other objects; none is repeated.
pub(crate) fn describe(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => {
            let hint = match status.code {
                401 | 403 => " (check the operator's ServiceAccount and RBAC)",
                409 => " (changed meanwhile; retried)",
                _ => "",
            };
            format!("HTTP {} {}{hint}", status.code, status.reason)
        }
        other => other.to_string(),
    }
}

/// How often a resource is reconciled when nothing changes.
const RESYNC: Duration = Duration::from_secs(3600);

/// How often a target blocked by someone else's Secret is tried again.
pub const CONFLICT_RETRY: Duration = Duration::from_secs(30);

pub async fn reconcile(guard: Arc<Guarded>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = match &guard.0 {
        Ok(cr) => reconcile_valid(cr, &ctx).await,
        Err(invalid) => reconcile_unreadable(&guard, &invalid.error, &ctx)
            .await
            .map(|action| (action, ReadyReason::InvalidSpec.as_str())),
    };
    let uid = guard.meta().uid.as_deref().unwrap_or_default();
    match &result {
        Ok((_, ready)) => {
            ctx.metrics.reconciled(ready, started.elapsed());
            ctx.tracker.api_succeeded(uid);
        }
        Err(e) => {
            ctx.metrics.reconciled("error", started.elapsed());
            ctx.metrics.failed(e.step());
        }
    }
    result.map(|(action, _)| action)
}

pub fn error_policy(guard: Arc<Guarded>, error: &Error, ctx: Arc<Context>) -> Action {
    let obj_ref = ObjectRef::from_obj(guard.as_ref());
    let attempt = ctx
        .tracker
        .api_failed(guard.meta().uid.as_deref().unwrap_or_default());
    let delay = backoff(attempt);
    warn!(credential = %obj_ref, %error, step = error.step(), attempt, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

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

async fn reconcile_valid(
    cr: &MendixCredential,
    ctx: &Context,
) -> Result<(Action, &'static str), Error> {
    // A resource being deleted is never written for. With `--cascade=orphan` the garbage
    // collector removes the owner reference from the target so that it stays; a "repair" of it
    // would hand the Secret back to be collected with its owner.
    if cr.metadata.deletion_timestamp.is_some() {
        debug!(credential = %format!("{}/{}", cr.namespace().unwrap_or_default(), cr.name_any()), "being deleted: nothing to do");
        return Ok((Action::await_change(), "Deleting"));
    }
    let id = Id {
        namespace: cr.namespace().ok_or(Error::MissingMetadata("namespace"))?,
        name: cr.name_any(),
        uid: cr.uid().ok_or(Error::MissingMetadata("uid"))?,
    };
    let remembered = ctx
        .tracker
        .newer_status(&id.uid, cr.resource_version().as_deref());
    debug!(
        credential = %format!("{}/{}", id.namespace, id.name),
        version = cr.resource_version(),
        remembered = remembered.is_some(),
        "previous status"
    );
    let previous = remembered.or_else(|| cr.status.clone()).unwrap_or_default();

    let resolved =
        spec::resolve(&id.name, &cr.spec, ctx.settings.default_interval).and_then(|resolved| {
            spec::check_target_metadata(&resolved, &ctx.settings.denied_metadata_prefixes)?;
            spec::check_verify_request(
                cr.annotations()
                    .get(ANNOTATION_VERIFY_REQUESTED_AT)
                    .map(String::as_str),
            )?;
            Ok(resolved)
        });
    let request = subscribe::verify_request(cr, &id.uid, &previous, ctx);
    let forced = request.as_ref().map(|(_, at)| *at);
    let (sync, credential) = match &resolved {
        Ok(resolved) => target::sync(cr, &id, resolved, &previous, forced, ctx).await?,
        Err(InvalidSpec(message)) => (
            Sync::Refused(Ready::refused(ReadyReason::InvalidSpec, message.clone())),
            None,
        ),
    };
    let holding = matches!(sync, Sync::Held { .. });
    let verification = subscribe::subscribe(
        cr,
        &id,
        resolved.as_ref().ok(),
        (credential.as_ref(), holding),
        forced,
        &previous,
        ctx,
    );

    let wrote_target = matches!(sync, Sync::Published { wrote: true, .. });
    // Only once the target holds the credential: a restarted pod must read the new one.
    let (restarted, restart_again) = match &sync {
        Sync::Published { fingerprint, .. } => {
            let workloads = restarts::workloads(&cr.spec);
            let generation = cr.metadata.generation;
            let ensured =
                restart::ensure(&id, generation, &workloads, fingerprint, &previous, ctx).await;
            (Some(ensured.entries), ensured.again_in)
        }
        _ => (None, None),
    };
    let plan = plan::reconcile(Observed {
        generation: cr.metadata.generation,
        credential_type: resolved.as_ref().ok().map(|r| r.credential_type),
        previous: &previous,
        sync,
        verification,
        now: now(),
    });
    let plan = restarts::amend(plan, &previous, restarted);

    let Plan {
        status,
        events,
        ready,
        request_served,
        hold,
    } = plan;
    let wrote_status = status.is_some();
    if let Some(status) = status {
        write_status(cr, &id, status, ctx).await?;
    }
    for event in events {
        count_rotation(&ctx.metrics, &event);
        publish(ctx, &cr.object_ref(&()), event).await;
    }
    if let Some((value, _)) = request.filter(|_| request_served) {
        ctx.tracker.serve_verify_request(&id.uid, &value);
    }
    info!(
        credential = %format!("{}/{}", id.namespace, id.name),
        reason = ready.as_str(),
        wrote = wrote_target,
        wrote_status,
        "reconciled"
    );
    // Periodic resync as a safety net; every input is also watched, and the verification loop
    // triggers a reconcile for each answer.
    let action = match (hold, ready) {
        (Some(hold), _) => Action::requeue(hold),
        // Workloads are not watched: one that is missing, refused or deferred is tried again.
        (None, ReadyReason::Synced) => {
            Action::requeue(restart_again.map_or(RESYNC, |again| again.min(RESYNC)))
        }
        // The foreign Secret in the way is not watched (only ours and sources are).
        (None, ReadyReason::TargetConflict) => Action::requeue(CONFLICT_RETRY),
        (None, _) => Action::await_change(),
    };
    Ok((action, ready.as_str()))
}

async fn write_status(
    cr: &MendixCredential,
    id: &Id,
    status: MendixCredentialStatus,
    ctx: &Context,
) -> Result<(), Error> {
    let patch = serde_json::json!({
        "apiVersion": "mxcred.io/v1alpha1",
        "kind": "MendixCredential",
        "status": status,
    });
    let slot = ctx.status_writes.0.acquire().await;
    let written = Api::<MendixCredential>::namespaced(ctx.client.clone(), &id.namespace)
        .patch_status(&id.name, &apply_params(), &Patch::Apply(patch))
        .await
        .map_err(Error::WriteStatus)?;
    drop(slot);
    debug!(
        credential = %format!("{}/{}", id.namespace, id.name),
        based_on = cr.resource_version(),
        produced = written.resource_version(),
        answered_with_status = written.status.is_some(),
        "wrote the status"
    );
    ctx.tracker.wrote_status(
        &id.uid,
        cr.resource_version(),
        written.resource_version(),
        written.status,
    );
    Ok(())
}

/// Counts a published or rejected rotation, once: as its Event, after the status that records it.
pub(crate) fn count_rotation(metrics: &Metrics, event: &plan::Announcement) {
    match event.reason {
        plan::ROTATED => metrics.rotated("published"),
        r if r == ReadyReason::RotationRejected.as_str() => metrics.rotated("rejected"),
        _ => {}
    }
}

/// Publishes an Event about `regarding` (a cluster-scoped object's go to the namespace
/// `default`, as client-go puts them). One that cannot be published is logged and counted, and
/// does not fail the reconcile: the status already tells the same.
pub(crate) async fn publish(ctx: &Context, regarding: &ObjectReference, event: plan::Announcement) {
    let reason = event.reason;
    if !ctx
        .events
        .allow(regarding.uid.as_deref().unwrap_or_default(), reason)
    {
        debug!(
            reason,
            "too many Events of this reason for this object: not published"
        );
        return;
    }
    let body = event_of(regarding, event, &ctx.reporter, jiff::Timestamp::now());
    let namespace = body.metadata.namespace.clone().unwrap_or_default();
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(ctx.client.clone(), &namespace);
    if let Err(error) = events.create(&PostParams::default(), &body).await {
        ctx.metrics.failed("publish_event");
        warn!(error = %describe(&error), reason, "could not publish Event");
    }
}

/// The Event kube's `Recorder` would publish, but for its name: the Recorder's is the object's
/// name and a suffix, too long for an object whose name takes the 253 characters a name may.
fn event_of(
    regarding: &ObjectReference,
    event: plan::Announcement,
    reporter: &Reporter,
    at: jiff::Timestamp,
) -> k8s_openapi::api::events::v1::Event {
    let name = crate::domain::render::label_value(regarding.name.as_deref().unwrap_or_default());
    k8s_openapi::api::events::v1::Event {
        action: Some("Reconcile".into()),
        reason: Some(event.reason.into()),
        note: Some(event.note),
        type_: Some(if event.warning { "Warning" } else { "Normal" }.into()),
        event_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            at,
        )),
        regarding: Some(regarding.clone()),
        reporting_controller: Some(reporter.controller.clone()),
        reporting_instance: Some(
            reporter
                .instance
                .clone()
                .unwrap_or_else(|| reporter.controller.clone()),
        ),
        metadata: kube::api::ObjectMeta {
            name: Some(format!("{name}.{:x}", at.as_nanosecond())),
            namespace: Some(
                regarding
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
            ),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// An object the API server holds but this version cannot read (for example after a
/// downgrade): say so on the object and wait for it to change.
async fn reconcile_unreadable(
    guard: &Guarded,
    error: &str,
    ctx: &Context,
) -> Result<Action, Error> {
    let meta = guard.meta();
    let name = meta.name.clone().ok_or(Error::MissingMetadata("name"))?;
    let ns = meta
        .namespace
        .clone()
        .ok_or(Error::MissingMetadata("namespace"))?;
    warn!(credential = %format!("{ns}/{name}"), error, "cannot read resource");
    let api = Api::<Guarded>::namespaced(ctx.client.clone(), &ns);
    mark_unreadable(api, "MendixCredential", meta, &name, error, &ctx.tracker).await?;
    Ok(Action::await_change())
}

/// Writes `Ready` False (`InvalidSpec`) on an object this version cannot read, once per version
/// of it: its status cannot be read either, so the write is remembered, and the events that
/// reconcile it again (its own write's among them) cause no other.
pub(crate) async fn mark_unreadable<K>(
    api: Api<K>,
    kind: &str,
    meta: &ObjectMeta,
    name: &str,
    error: &str,
    tracker: &Tracker,
) -> Result<(), Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let uid = meta.uid.clone().unwrap_or_default();
    let version = meta.resource_version.clone();
    if tracker.has_written(&uid, version.as_deref()) {
        return Ok(());
    }
    let mut conds = vec![];
    conditions::set(
        &mut conds,
        Verdict {
            type_: condition::READY,
            status: "False",
            reason: ReadyReason::InvalidSpec.as_str(),
            message: format!("the resource cannot be read: {error}"),
        },
        meta.generation,
        now(),
    );
    let patch = serde_json::json!({
        "apiVersion": "mxcred.io/v1alpha1",
        "kind": kind,
        "status": { "conditions": conds, "observedGeneration": meta.generation },
    });
    let written = api
        .patch_status(name, &apply_params(), &Patch::Apply(patch))
        .await
        .map_err(Error::WriteStatus)?;
    let produced = written.meta().resource_version.clone();
    tracker.wrote_status(&uid, version, produced, None);
    Ok(())
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
