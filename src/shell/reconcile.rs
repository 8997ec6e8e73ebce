//! The reconcile driver of both kinds. It reads as its steps:
//!
//! 1. leave alone a resource being deleted, and wait while the kind's caches are not current,
//! 2. take the status to plan from: the one this instance wrote, while the cache holds an older
//!    version of the resource, else the resource's own,
//! 3. note a forced check the `verify-requested-at` annotation asks for,
//! 4. run the kind's steps ([`Kind::steps`]): resolve the spec, read the source, publish the
//!    credential to each target and restart the workloads there, subscribe the credential to
//!    the verification loop, and plan the status and the Events (pure),
//! 5. write the status, then publish the Events, then remember what was done (client),
//!
//! each step only after the write before it succeeded; then it says when to come back
//! ([`requeue`]).

use crate::domain::plan::ReadyReason;
use crate::shell::context::{Decided, Error, Id, Kind, apply_params, requeue};
use crate::shell::publish::{count_rotation, publish};
use crate::shell::subscribe;
use crate::shell::unreadable::mark_unreadable;
use kube::api::Patch;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Reconciles one resource of kind `K`: what its controller runs for each.
pub async fn reconcile<K: Kind>(
    guard: Arc<DeserializeGuard<K::Resource>>,
    kind: Arc<K>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let result = match &guard.0 {
        Ok(cr) => reconcile_valid(cr, kind.as_ref()).await,
        Err(invalid) => reconcile_unreadable(guard.as_ref(), &invalid.error, kind.as_ref())
            .await
            .map(|action| (action, ReadyReason::InvalidSpec.as_str())),
    };
    kind.ctx().record(
        guard.meta().uid.as_deref().unwrap_or_default(),
        started,
        &result,
    );
    result.map(|(action, _)| action)
}

/// When a resource whose reconcile failed is tried again: later after each failure in a row.
pub fn error_policy<K: Kind>(
    guard: Arc<DeserializeGuard<K::Resource>>,
    error: &Error,
    kind: Arc<K>,
) -> Action {
    let meta = guard.meta();
    let (attempt, delay) = kind
        .ctx()
        .retry_after_failure(meta.uid.as_deref().unwrap_or_default());
    let credential = match &meta.namespace {
        Some(ns) => format!("{ns}/{}", meta.name.as_deref().unwrap_or_default()),
        None => meta.name.clone().unwrap_or_default(),
    };
    warn!(kind = K::KIND, credential, %error, step = error.step(), attempt, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

async fn reconcile_valid<K: Kind>(
    cr: &K::Resource,
    kind: &K,
) -> Result<(Action, &'static str), Error> {
    let ctx = kind.ctx();
    // A resource being deleted is never written for. With `--cascade=orphan` the garbage
    // collector removes the owner reference from the targets so that they stay; a "repair"
    // would hand them back to be collected with their owner.
    if cr.meta().deletion_timestamp.is_some() {
        debug!(
            kind = K::KIND,
            credential = cr.name_any(),
            "being deleted: nothing to do"
        );
        return Ok((Action::await_change(), "Deleting"));
    }
    // Until the caches are current, what is selected and what we hold is not known: a target
    // must never be deleted for a namespace the cache has not listed yet. At start-up they
    // stream in beside the resources: a reconcile waits a moment for them before it comes back.
    if !caches_current_soon(kind).await {
        debug!(
            kind = K::KIND,
            credential = cr.name_any(),
            "waiting for the caches"
        );
        return Ok((Action::requeue(Duration::from_millis(500)), "Waiting"));
    }
    let id = K::id(cr)?;
    let previous = previous_status(kind, cr, &id);
    let request = subscribe::verify_request(cr.meta(), &id.uid, K::last_verified(&previous), ctx);
    let forced = request.as_ref().map(|(_, at)| *at);
    let Decided {
        status,
        events,
        ready,
        request_served,
        hold,
        blocked,
        restart_again,
        due_in,
        wrote,
    } = kind.steps(cr, &id, &previous, forced).await?;

    let wrote_status = status.is_some();
    if let Some(status) = status {
        write_status(kind, cr, &id, status).await?;
    }
    for event in events {
        count_rotation(&ctx.metrics, &event);
        publish(ctx, &cr.object_ref(&()), event).await;
    }
    if let Some((value, _)) = request.filter(|_| request_served) {
        ctx.tracker.serve_verify_request(&id.uid, &value);
    }
    info!(
        kind = K::KIND,
        credential = K::label(&id),
        reason = ready,
        wrote,
        wrote_status,
        "reconciled"
    );
    let synced = ready == ReadyReason::Synced.as_str();
    Ok((requeue(hold, blocked, synced, restart_again, due_in), ready))
}

/// Whether the kind's caches are current, or become so within a moment.
async fn caches_current_soon<K: Kind>(kind: &K) -> bool {
    let deadline = Instant::now() + Duration::from_secs(1);
    while !kind.caches_current() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// The status to plan from: the one this instance wrote, while the object the reconcile holds
/// is older than that write; else the object's own.
fn previous_status<K: Kind>(kind: &K, cr: &K::Resource, id: &Id) -> K::Status {
    let version = cr.resource_version();
    let remembered = kind
        .ctx()
        .tracker
        .newer_status::<K::Status>(&id.uid, version.as_deref());
    debug!(
        kind = K::KIND,
        credential = K::label(id),
        version,
        remembered = remembered.is_some(),
        "previous status"
    );
    remembered.unwrap_or_else(|| K::status(cr))
}

async fn write_status<K: Kind>(
    kind: &K,
    cr: &K::Resource,
    id: &Id,
    status: K::Status,
) -> Result<(), Error> {
    let patch = serde_json::json!({
        "apiVersion": "mxcred.io/v1alpha1",
        "kind": K::KIND,
        "status": status,
    });
    let api = kind.api(cr.meta())?;
    let ctx = kind.ctx();
    let slot = ctx.status_writes.acquire().await;
    let written = api
        .patch_status(&id.name, &apply_params(), &Patch::Apply(patch))
        .await
        .map_err(Error::WriteStatus)?;
    drop(slot);
    let produced = written.resource_version();
    debug!(
        kind = K::KIND,
        credential = K::label(id),
        based_on = cr.resource_version(),
        produced,
        "wrote the status"
    );
    ctx.tracker.wrote_status(
        &id.uid,
        cr.resource_version(),
        produced,
        K::status_of(written),
    );
    Ok(())
}

/// An object the API server holds but this version cannot read (for example after a
/// downgrade): say so on the object and wait for it to change. Nothing is written for its
/// targets.
async fn reconcile_unreadable<K: Kind>(
    guard: &DeserializeGuard<K::Resource>,
    error: &str,
    kind: &K,
) -> Result<Action, Error> {
    let meta = guard.meta();
    let name = meta.name.clone().ok_or(Error::MissingMetadata("name"))?;
    warn!(
        kind = K::KIND,
        credential = name,
        error,
        "cannot read resource"
    );
    let api = kind.guarded_api(meta)?;
    mark_unreadable(api, K::KIND, meta, &name, error, &kind.ctx().tracker).await?;
    Ok(Action::await_change())
}
