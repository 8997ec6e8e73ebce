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
    ANNOTATION_VERIFY_REQUESTED_AT, MendixCredential, MendixCredentialStatus,
};
use crate::domain::plan::{self, Observed, Plan, Ready, ReadyReason, Sync};
use crate::domain::restart as restarts;
use crate::domain::spec::{self, InvalidSpec};
use crate::shell::Guarded;
use crate::shell::context::{Context, Error, Id, apply_params, now, requeue};
use crate::shell::publish::{count_rotation, publish};
use crate::shell::unreadable::mark_unreadable;
use crate::shell::{restart, subscribe, target};
use kube::api::Patch;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use std::sync::Arc;
use std::time::Instant;
use tracing::{debug, info, warn};

pub async fn reconcile(guard: Arc<Guarded>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = match &guard.0 {
        Ok(cr) => reconcile_valid(cr, &ctx).await,
        Err(invalid) => reconcile_unreadable(&guard, &invalid.error, &ctx)
            .await
            .map(|action| (action, ReadyReason::InvalidSpec.as_str())),
    };
    ctx.record(
        guard.meta().uid.as_deref().unwrap_or_default(),
        started,
        &result,
    );
    result.map(|(action, _)| action)
}

pub fn error_policy(guard: Arc<Guarded>, error: &Error, ctx: Arc<Context>) -> Action {
    let obj_ref = ObjectRef::from_obj(guard.as_ref());
    let (attempt, delay) = ctx.retry_after_failure(guard.meta().uid.as_deref().unwrap_or_default());
    warn!(credential = %obj_ref, %error, step = error.step(), attempt, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
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
    let action = requeue(
        hold,
        ready == ReadyReason::TargetConflict,
        ready == ReadyReason::Synced,
        restart_again,
    );
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
    let slot = ctx.status_writes.acquire().await;
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
