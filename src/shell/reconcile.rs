//! The reconcile driver. It reads as its steps:
//!
//! 1. resolve the spec (pure),
//! 2. read the source Secret (client, or the cache),
//! 3. find and write the target Secret (client, or the cache; the decision is pure),
//! 4. subscribe the credential to the verification loop (memory; never waits for the platform),
//! 5. plan the status and the Events (pure: [`crate::domain::plan`]),
//! 6. write the status, then publish the Events, then remember what was done (client),
//!
//! each step only after the write before it succeeded.

use crate::domain::api::{
    ANNOTATION_VERIFY_REQUESTED_AT, MANAGER, MendixCredential, MendixCredentialStatus, condition,
};
use crate::domain::classify::{Reason, TokenValid};
use crate::domain::conditions::{self, Verdict};
use crate::domain::credential::Credential;
use crate::domain::plan::{self, Observed, Plan, Ready, ReadyReason, Sync, TargetAction};
use crate::domain::render;
use crate::domain::spec::{self, InvalidSpec, Resolved};
use crate::shell::Guarded;
use crate::shell::controller::Settings;
use crate::shell::metrics::Metrics;
use crate::shell::secrets::SecretCache;
use crate::shell::tracker::{Published, Tracker};
use crate::shell::verifier::{Known, Subscription, Verifier, View};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta, Time};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::core::Status;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tracing::{info, warn};

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub reporter: Reporter,
    pub secrets: SecretCache,
    pub settings: Settings,
    pub verifier: Arc<Verifier>,
    pub tracker: Arc<Tracker>,
    pub metrics: Arc<Metrics>,
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
fn describe(error: &kube::Error) -> String {
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

pub async fn reconcile(guard: Arc<Guarded>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = match &guard.0 {
        Ok(cr) => reconcile_valid(cr, &ctx).await,
        Err(invalid) => reconcile_unreadable(&guard, &invalid.error, &ctx)
            .await
            .map(|action| (action, ReadyReason::InvalidSpec)),
    };
    let uid = guard.meta().uid.as_deref().unwrap_or_default();
    match &result {
        Ok((_, ready)) => {
            ctx.metrics.reconciled(ready.as_str(), started.elapsed());
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
fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(8)).min(Duration::from_secs(300))
}

/// The names of a resource that every step needs.
struct Id {
    namespace: String,
    name: String,
    uid: String,
}

async fn reconcile_valid(
    cr: &MendixCredential,
    ctx: &Context,
) -> Result<(Action, ReadyReason), Error> {
    let id = Id {
        namespace: cr.namespace().ok_or(Error::MissingMetadata("namespace"))?,
        name: cr.name_any(),
        uid: cr.uid().ok_or(Error::MissingMetadata("uid"))?,
    };
    let previous = ctx
        .tracker
        .newer_status(&id.uid, cr.resource_version().as_deref())
        .or_else(|| cr.status.clone())
        .unwrap_or_default();

    let resolved = spec::resolve(&id.name, &cr.spec, ctx.settings.default_interval);
    let (sync, credential) = match &resolved {
        Ok(resolved) => sync(cr, &id, resolved, &previous, ctx).await?,
        Err(InvalidSpec(message)) => (
            Sync::Refused(Ready::refused(ReadyReason::InvalidSpec, message.clone())),
            None,
        ),
    };
    let request = verify_request(cr, &id.uid, &previous, ctx);
    let verification = subscribe(
        cr,
        &id,
        resolved.as_ref().ok(),
        credential.as_ref(),
        request.as_ref().map(|(_, at)| *at),
        &previous,
        ctx,
    );

    let wrote_target = matches!(sync, Sync::Published { wrote: true, .. });
    let plan = plan::reconcile(Observed {
        generation: cr.metadata.generation,
        previous: &previous,
        sync,
        verification,
        now: now(),
    });

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
        publish(ctx, cr, event).await;
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
        (None, ReadyReason::Synced) => Action::requeue(Duration::from_secs(3600)),
        (None, _) => Action::await_change(),
    };
    Ok((action, ready))
}

/// Reads the source, renders the target and writes it when it differs from what is there.
/// Returns what was established, and the credential published.
async fn sync(
    cr: &MendixCredential,
    id: &Id,
    resolved: &Resolved,
    previous: &MendixCredentialStatus,
    ctx: &Context,
) -> Result<(Sync, Option<Credential>), Error> {
    let refused = |ready| Ok((Sync::Refused(ready), None));
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &id.namespace);
    let credential = match read_source(&secrets, &id.namespace, resolved, &ctx.secrets).await? {
        None => {
            return refused(Ready::refused(
                ReadyReason::SourceNotFound,
                format!(
                    "Secret {:?} not found in namespace {:?}",
                    resolved.source.secret, id.namespace
                ),
            ));
        }
        Some(Err(problem)) => return refused(plan::source_refused(&problem)),
        Some(Ok(credential)) => credential,
    };

    let owner = cr
        .controller_owner_ref(&())
        .ok_or(Error::MissingMetadata("uid"))?;
    let desired = render::target_secret(&id.namespace, &id.name, owner, resolved, &credential);
    let digest = render::digest(&desired);
    let target = &resolved.target_name;
    let version = ctx.secrets.version(&id.namespace, target);
    let known = ctx
        .tracker
        .publication(&id.uid, target, version.as_deref(), &digest);
    let (written_at, wrote) = match known {
        // The target is as this instance left it, and would be left as it is.
        Some(published) => (published.at, false),
        None => match write_target(id, &secrets, desired, digest, ctx).await? {
            Ok(written) => written,
            Err(ready) => return refused(ready),
        },
    };
    remove_previous_target(previous, &secrets, target, &id.uid).await?;
    let sync = Sync::Published {
        target: target.clone(),
        fingerprint: credential.fingerprint(),
        written_at,
        wrote,
    };
    Ok((sync, Some(credential)))
}

/// The credential in the source Secret: from the cache when the watch reports the version it
/// was read at, else read. `None` when the Secret does not exist.
async fn read_source(
    secrets: &Api<Secret>,
    ns: &str,
    resolved: &Resolved,
    cache: &SecretCache,
) -> Result<Option<Result<Credential, crate::domain::credential::SourceError>>, Error> {
    let (credential_type, keys) = (resolved.credential_type, &resolved.source);
    if let Some(cached) = cache.credential(ns, credential_type, keys) {
        return Ok(Some(cached));
    }
    let Some(source) = secrets
        .get_opt(&keys.secret)
        .await
        .map_err(Error::ReadSource)?
    else {
        return Ok(None);
    };
    let data = source.data.unwrap_or_default();
    let credential = Credential::from_source(credential_type, keys, &data);
    if let Some(version) = source.metadata.resource_version {
        cache.remember(ns, credential_type, keys, version, credential.clone());
    }
    Ok(Some(credential))
}

/// Reads the target and applies `desired` unless the target already holds it; returns when the
/// data was last written and whether this wrote it, or the condition when it cannot be written.
async fn write_target(
    id: &Id,
    secrets: &Api<Secret>,
    mut desired: Secret,
    digest: [u8; 32],
    ctx: &Context,
) -> Result<Result<(Option<Time>, bool), Ready>, Error> {
    let target = desired
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingMetadata("name"))?;
    // Read even when no watch reports it: a Secret another resource (or anyone) created a
    // moment ago must be refused as a conflict, not taken over; the watch may lag by more.
    let existing = secrets.get_opt(&target).await.map_err(Error::ReadTarget)?;
    let (version, written_at, wrote) =
        match plan::target_action(existing.as_ref(), &desired, &id.uid, &id.name) {
            TargetAction::Conflict => return Ok(Err(plan::target_conflict(&target))),
            TargetAction::Keep { written_at } => {
                let version = existing.and_then(|e| e.metadata.resource_version);
                (version.unwrap_or_default(), written_at, false)
            }
            TargetAction::Apply { resource_version } => {
                // The resourceVersion makes the apply conditional: if the Secret changed (or
                // was replaced by a foreign one) since it was read, the apply fails and is
                // retried.
                desired.metadata.resource_version = resource_version.clone();
                let written = match secrets
                    .patch(&target, &apply_params(), &Patch::Apply(&desired))
                    .await
                {
                    Ok(written) => written,
                    Err(kube::Error::Api(e)) if e.is_invalid() => {
                        return Ok(Err(Ready::refused(
                            ReadyReason::InvalidSpec,
                            refused_target(&e),
                        )));
                    }
                    Err(e) => return Err(Error::ApplyTarget(e)),
                };
                let version = written.resource_version().unwrap_or_default();
                // An apply that changed nothing keeps the version: nothing was written.
                let wrote = resource_version.as_ref() != Some(&version);
                // The server's own time of the write, as any later reader of the target sees
                // it: another instance then agrees on it.
                let at = render::applied_at(&written).or_else(|| wrote.then(now));
                (version, at, wrote)
            }
        };
    ctx.tracker.record_published(
        &id.uid,
        Published {
            target,
            version,
            digest,
            at: written_at.clone(),
        },
    );
    Ok(Ok((written_at, wrote)))
}

/// The API server refused the target Secret: only labels and annotations from the spec can make
/// it invalid. Names the fields, not the values.
fn refused_target(e: &Status) -> String {
    let fields: Vec<&str> = e
        .details
        .iter()
        .flat_map(|d| d.causes.iter())
        .map(|c| c.field.as_str())
        .filter(|f| !f.is_empty())
        .collect();
    format!(
        "the API server refused the target Secret (invalid: {}); check spec.target.labels and spec.target.annotations",
        fields.join(", ")
    )
}

/// After `spec.target.name` changed, deletes the Secret published under the old name.
async fn remove_previous_target(
    previous: &MendixCredentialStatus,
    secrets: &Api<Secret>,
    target: &str,
    uid: &str,
) -> Result<(), Error> {
    let Some(old) = previous.secret_name.as_deref().filter(|old| *old != target) else {
        return Ok(());
    };
    let existing = secrets
        .get_opt(old)
        .await
        .map_err(Error::DeletePreviousTarget)?;
    if let Some(secret) = existing
        && render::is_controlled_by(&secret, uid)
    {
        secrets
            .delete(old, &DeleteParams::default())
            .await
            .map_err(Error::DeletePreviousTarget)?;
        info!(secret = old, "deleted the previous target Secret");
    }
    Ok(())
}

/// Tells the verification loop which credential and probe this resource uses; returns what the
/// plan needs of its answer.
fn subscribe(
    cr: &MendixCredential,
    id: &Id,
    resolved: Option<&Resolved>,
    credential: Option<&Credential>,
    forced: Option<SystemTime>,
    previous: &MendixCredentialStatus,
    ctx: &Context,
) -> plan::Verification {
    let Some((resolved, credential)) = resolved.zip(credential) else {
        ctx.verifier.unsubscribe(&id.uid);
        return plan::Verification::Waiting;
    };
    let Some(verification) = &resolved.verification else {
        ctx.verifier.unsubscribe(&id.uid);
        return plan::Verification::Disabled;
    };
    let latest = ctx.verifier.subscribe(Subscription {
        uid: &id.uid,
        namespace: &id.namespace,
        name: &id.name,
        credential,
        probe: &verification.probe,
        interval: ctx.settings.test_interval.unwrap_or(verification.interval),
        forced,
        known: known_verdict(cr, previous, credential),
    });
    match latest {
        View::Scheduled => plan::Verification::Waiting,
        View::Queued { since } => plan::Verification::Queued {
            since: api_time(timestamp(since)),
        },
        View::Answered(latest) => plan::Verification::Answered(plan::Answer {
            outcome: latest.outcome,
            answered_at: api_time(timestamp(latest.answered_at)),
            // Rounded up: a status never shows a check as due before it is.
            next: Some(api_time(
                timestamp(latest.next) + jiff::SignedDuration::from_nanos(999_999_999),
            )),
            serves_request: latest.serves_request,
        }),
    }
}

/// What the status says of the checks of this credential at this generation, which a
/// restarted instance continues from instead of asking again.
fn known_verdict(
    cr: &MendixCredential,
    previous: &MendixCredentialStatus,
    credential: &Credential,
) -> Option<Known> {
    let valid = conditions::find(&previous.conditions, condition::TOKEN_VALID)?;
    let same = previous.token_fingerprint.as_deref() == Some(credential.fingerprint().as_str())
        && valid.observed_generation == cr.metadata.generation
        && valid.reason != Reason::Pending.as_str();
    let verdict = Reason::OUTCOMES
        .into_iter()
        .find(|r| r.as_str() == valid.reason && r.status() != TokenValid::Unknown)
        .zip(previous.last_verified_time.as_ref())
        .map(|(reason, at)| (reason, SystemTime::from(at.0)));
    let next = previous
        .next_verification_time
        .as_ref()
        .map(|t| SystemTime::from(t.0));
    same.then_some(Known { verdict, next })
}

fn timestamp(t: SystemTime) -> jiff::Timestamp {
    jiff::Timestamp::try_from(t).unwrap_or_default()
}

/// The forced check the `verify-requested-at` annotation asks for and no check has served yet:
/// its value, and when this instance first saw it.
fn verify_request(
    cr: &MendixCredential,
    uid: &str,
    previous: &MendixCredentialStatus,
    ctx: &Context,
) -> Option<(String, SystemTime)> {
    let value = cr.annotations().get(ANNOTATION_VERIFY_REQUESTED_AT)?;
    // First seen by this instance: served if it was set (as `managedFields` records) before the
    // last definitive check.
    let served_before = || match (
        annotation_set_at(&cr.metadata, ANNOTATION_VERIFY_REQUESTED_AT),
        &previous.last_verified_time,
    ) {
        (Some(asked), Some(done)) => asked < done.0,
        _ => false,
    };
    ctx.tracker
        .verify_request(uid, value, served_before)
        .map(|at| (value.clone(), at))
}

/// When `key` was last set, from the `managedFields` entry that owns it.
fn annotation_set_at(meta: &ObjectMeta, key: &str) -> Option<jiff::Timestamp> {
    meta.managed_fields
        .iter()
        .flatten()
        .filter(|entry| sets_annotation(entry, key))
        .filter_map(|entry| entry.time.as_ref().map(|t| t.0))
        .max()
}

pub fn sets_annotation(entry: &ManagedFieldsEntry, key: &str) -> bool {
    entry.fields_v1.as_ref().is_some_and(|f| {
        f.0.get("f:metadata")
            .and_then(|m| m.get("f:annotations"))
            .and_then(|a| a.get(format!("f:{key}")))
            .is_some()
    })
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
    let written = Api::<MendixCredential>::namespaced(ctx.client.clone(), &id.namespace)
        .patch_status(&id.name, &apply_params(), &Patch::Apply(patch))
        .await
        .map_err(Error::WriteStatus)?;
    ctx.tracker.wrote_status(
        &id.uid,
        cr.resource_version(),
        written.resource_version(),
        written.status,
    );
    Ok(())
}

/// Publishes an Event. One that cannot be published is logged and counted, and does not fail
/// the reconcile: the status already tells the same.
async fn publish(ctx: &Context, cr: &MendixCredential, event: plan::Announcement) {
    let reason = event.reason;
    let event = Event {
        type_: if event.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        note: Some(event.note),
        action: "Reconcile".into(),
        secondary: None,
    };
    // A recorder per Event, as kube documents: a long-lived one keeps every Event it published
    // for six minutes, and scans them all on each publish.
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    if let Err(error) = recorder.publish(&event, &cr.object_ref(&())).await {
        ctx.metrics.failed("publish_event");
        warn!(error = %describe(&error), reason, "could not publish Event");
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
    let uid = meta.uid.clone().unwrap_or_default();
    let version = meta.resource_version.clone();
    // Its status cannot be read either: remember the write, so that the write's own watch event
    // does not cause another write.
    if ctx.tracker.has_written(&uid, version.as_deref()) {
        return Ok(Action::await_change());
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
        "kind": "MendixCredential",
        "status": { "conditions": conds, "observedGeneration": meta.generation },
    });
    let written = Api::<Guarded>::namespaced(ctx.client.clone(), &ns)
        .patch_status(&name, &apply_params(), &Patch::Apply(patch))
        .await
        .map_err(Error::WriteStatus)?;
    let produced = written.meta().resource_version.clone();
    ctx.tracker.wrote_status(&uid, version, produced, None);
    Ok(Action::await_change())
}

fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

fn now() -> Time {
    api_time(jiff::Timestamp::now())
}

/// A time as the API serializes it: in whole seconds. A status holding a finer time would differ
/// from its own copy read back, and be written a second time.
fn api_time(t: jiff::Timestamp) -> Time {
    Time(jiff::Timestamp::from_second(t.as_second()).expect("a second of a valid time is valid"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
