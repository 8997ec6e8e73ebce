//! The reconcile driver of ClusterMendixCredentials. It reads as its steps:
//!
//! 1. resolve the spec and the selection (pure),
//! 2. read the source Secret (the cache, or the client),
//! 3. write the copy of each selected namespace that does not hold it, a few at a time (the
//!    decision is pure), and delete our copies where no longer selected ([`super::copies`]);
//!    then, unless a rotation is held back, bring the workloads of `spec.target.rolloutRestart`
//!    to the credential in each namespace whose copy holds it ([`super::restarts`]; never
//!    fails the reconcile),
//! 4. subscribe the credential to the verification loop (shared with MendixCredentials),
//! 5. plan the status and the Events (pure: [`crate::domain::cluster::plan`]),
//! 6. write the status, then publish the Events, then remember what was done.

use super::context::{ClusterContext, Id, NamespaceMeta};
use super::copies::remove_copies;
use super::publish::{Publication, Publish};
use crate::domain::api::{
    ANNOTATION_VERIFY_REQUESTED_AT, MendixCredential, MendixCredentialStatus,
};
use crate::domain::cluster::restart::{self as cluster_restart};
use crate::domain::cluster::{
    self, ClusterMendixCredential, ClusterMendixCredentialStatus, ClusterObserved, CopyOutcome,
    NamespaceView, Selected, Selection,
};
use crate::domain::credential::Credential;
use crate::domain::plan::{self, Ready, ReadyReason};
use crate::domain::spec::{self, InvalidSpec, Resolved};
use crate::shell::ClusterGuarded;
use crate::shell::context::{Error, apply_params, now, requeue};
use crate::shell::publish::{count_rotation, publish};
use crate::shell::subscribe;
use crate::shell::unreadable::mark_unreadable;
use crate::shell::verifier::{Slot, Subscription};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Patch;
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Reconciles one ClusterMendixCredential: what the controller runs for each.
pub async fn reconcile(
    guard: Arc<ClusterGuarded>,
    cc: Arc<ClusterContext>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let result = match &guard.0 {
        Ok(cr) => reconcile_one(cr, &cc).await,
        Err(invalid) => reconcile_unreadable(&guard, &invalid.error, &cc)
            .await
            .map(|action| (action, ReadyReason::InvalidSpec.as_str())),
    };
    cc.ctx.record(
        guard.meta().uid.as_deref().unwrap_or_default(),
        started,
        &result,
    );
    result.map(|(action, _)| action)
}

pub(super) fn error_policy(
    guard: Arc<ClusterGuarded>,
    error: &Error,
    cc: Arc<ClusterContext>,
) -> Action {
    let meta = guard.meta();
    let (attempt, delay) = cc
        .ctx
        .retry_after_failure(meta.uid.as_deref().unwrap_or_default());
    let name = meta.name.as_deref().unwrap_or_default();
    warn!(cluster_credential = name, %error, step = error.step(), attempt, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

async fn reconcile_one(
    cr: &ClusterMendixCredential,
    cc: &ClusterContext,
) -> Result<(Action, &'static str), Error> {
    let ctx = &cc.ctx;
    // Being deleted: the garbage collector removes the copies (they are owned by it).
    if cr.metadata.deletion_timestamp.is_some() {
        return Ok((Action::await_change(), "Deleting"));
    }
    // Until both caches are current, what is selected and what we hold is not known: a copy
    // must never be deleted for a namespace the cache has not listed yet.
    if !cc.current.iter().all(|c| c.load(Ordering::Relaxed)) {
        debug!(cluster_credential = cr.name_any(), "waiting for the caches");
        return Ok((Action::requeue(Duration::from_millis(500)), "Waiting"));
    }
    let id = Id {
        name: cr.name_any(),
        uid: cr.uid().ok_or(Error::MissingMetadata("uid"))?,
    };
    let previous = cc.previous_status(cr);
    let source_ns = cr.spec.source_ref.namespace.clone();

    // 1. The spec and the selection.
    let resolved = spec::resolve(
        &id.name,
        &cr.spec.as_namespaced(),
        ctx.settings.default_interval,
    )
    .and_then(|r| {
        spec::check_target_metadata(&r, &ctx.settings.denied_metadata_prefixes)?;
        spec::check_verify_request(
            cr.annotations()
                .get(ANNOTATION_VERIFY_REQUESTED_AT)
                .map(String::as_str),
        )?;
        Ok(r)
    });
    let selection = Selection::of(&cr.spec.target);
    let namespaces: Vec<NamespaceView> = cc.namespaces.state().iter().map(|n| view(n)).collect();
    let selected = match &selection {
        Ok(selection) => selection.apply(&namespaces),
        Err(_) => Selected::default(),
    };
    cc.remember_selected(&id.uid, &selected);

    // 2. and 3. The source, checked first when it replaces a working credential, then the
    // copies.
    let view_cr = as_namespaced(cr, &previous.core());
    let request = subscribe::verify_request(&view_cr, &id.uid, &previous.core(), ctx);
    let forced = request.as_ref().map(|(_, at)| *at);
    let Publication {
        source,
        credential,
        held,
        checked_first,
        copies,
        restarted,
        restart_again,
    } = match (&resolved, &selection) {
        (Err(InvalidSpec(m)), _) | (_, Err(InvalidSpec(m))) => {
            Publication::refused(Ready::refused(ReadyReason::InvalidSpec, m.clone()))
        }
        (Ok(resolved), Ok(_)) => {
            let step = Publish {
                cc,
                cr,
                id: &id,
                source_ns: &source_ns,
                resolved,
                forced,
            };
            step.run(&previous, &selected.active).await?
        }
    };
    // Our copies outside the selection go, whatever the source says. With a spec that cannot be
    // read, nothing is selected: the copies stay until it is fixed.
    let keep: Option<(&str, BTreeSet<&str>)> = match (&resolved, &selection) {
        (Ok(r), Ok(_)) => Some((
            r.target_name.as_str(),
            selected.active.iter().map(String::as_str).collect(),
        )),
        _ => None,
    };
    let mut retry = false;
    if let Some((target_name, keep)) = keep {
        retry |= !remove_copies(cc, &id, target_name, &keep).await;
    }

    // 4. The verification loop.
    let verification = subscribe_published(
        cc,
        &id,
        &source_ns,
        resolved.as_ref().ok(),
        credential.as_ref(),
        forced,
        (&view_cr, &previous.core()),
    );
    // After the published subscription: a credential just published keeps the answer its check
    // as a pending one got.
    if held.is_none() {
        ctx.verifier.unsubscribe_slot(&id.uid, Slot::Pending);
    }

    // 5. The plan.
    let wrote = copies
        .values()
        .filter(|c| matches!(c, CopyOutcome::Synced { wrote: true, .. }))
        .count();
    let plan = cluster::plan(ClusterObserved {
        generation: cr.metadata.generation,
        credential_type: resolved.as_ref().ok().map(|r| r.credential_type),
        previous: &previous,
        target: resolved
            .as_ref()
            .map(|r| r.target_name.clone())
            .unwrap_or_default(),
        source,
        held,
        checked_first,
        copies,
        selected,
        verification,
        now: now(),
    });
    let plan = cluster_restart::amend(plan, &previous, restarted);

    // 6. Status, Events, memory.
    let wrote_status = plan.status.is_some();
    if let Some(status) = plan.status {
        write_status(cc, cr, &id, status).await?;
    }
    for event in plan.events {
        count_rotation(&ctx.metrics, &event);
        publish(ctx, &cr.object_ref(&()), event).await;
    }
    if let Some((value, _)) = request.filter(|_| plan.request_served) {
        ctx.tracker.serve_verify_request(&id.uid, &value);
    }
    info!(
        cluster_credential = id.name,
        reason = plan.ready,
        wrote,
        wrote_status,
        "reconciled"
    );
    retry |= plan.retry;
    let action = requeue(
        plan.hold,
        retry,
        plan.ready == ReadyReason::Synced.as_str(),
        restart_again,
    );
    Ok((action, plan.ready))
}

/// Tells the verification loop which credential the copies hold; returns what the plan needs
/// of its answer.
fn subscribe_published(
    cc: &ClusterContext,
    id: &Id,
    source_ns: &str,
    resolved: Option<&Resolved>,
    credential: Option<&Credential>,
    forced: Option<std::time::SystemTime>,
    (view_cr, previous): (&MendixCredential, &MendixCredentialStatus),
) -> plan::Verification {
    let ctx = &cc.ctx;
    match (resolved, credential) {
        (Some(resolved), Some(credential)) => match &resolved.verification {
            None => {
                ctx.verifier.unsubscribe(&id.uid);
                plan::Verification::Disabled
            }
            Some(v) => subscribe::verification_of(ctx.verifier.subscribe_cluster(Subscription {
                uid: &id.uid,
                slot: Slot::Published,
                namespace: source_ns,
                name: &id.name,
                credential,
                probe: &v.probe,
                interval: ctx.settings.test_interval.unwrap_or(v.interval),
                forced,
                known: subscribe::known_verdict(view_cr, previous, credential),
            })),
        },
        _ => {
            ctx.verifier.unsubscribe(&id.uid);
            plan::Verification::Waiting
        }
    }
}

fn view(ns: &NamespaceMeta) -> NamespaceView {
    NamespaceView {
        name: ns.name_any(),
        labels: ns.labels().clone(),
        terminating: ns.metadata.deletion_timestamp.is_some(),
    }
}

/// The resource as a MendixCredential in its source's namespace: what the verification
/// request and the restored verdict are read from.
fn as_namespaced(
    cr: &ClusterMendixCredential,
    status: &MendixCredentialStatus,
) -> MendixCredential {
    MendixCredential {
        metadata: ObjectMeta {
            name: cr.metadata.name.clone(),
            namespace: Some(cr.spec.source_ref.namespace.clone()),
            uid: cr.metadata.uid.clone(),
            generation: cr.metadata.generation,
            annotations: cr.metadata.annotations.as_ref().map(|a| {
                a.iter()
                    .filter(|(k, _)| *k == ANNOTATION_VERIFY_REQUESTED_AT)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            }),
            managed_fields: cr.metadata.managed_fields.clone(),
            ..ObjectMeta::default()
        },
        spec: cr.spec.as_namespaced(),
        status: Some(status.clone()),
    }
}

/// An object the API server holds but this version cannot read (for example after a
/// downgrade): say so on the object and wait for it to change. Nothing is written or deleted
/// in any namespace.
async fn reconcile_unreadable(
    guard: &ClusterGuarded,
    error: &str,
    cc: &ClusterContext,
) -> Result<Action, Error> {
    let meta = guard.meta();
    let name = meta.name.clone().ok_or(Error::MissingMetadata("name"))?;
    warn!(cluster_credential = name, error, "cannot read resource");
    let api = Api::<ClusterGuarded>::all(cc.ctx.client.clone());
    mark_unreadable(
        api,
        "ClusterMendixCredential",
        meta,
        &name,
        error,
        &cc.ctx.tracker,
    )
    .await?;
    Ok(Action::await_change())
}

async fn write_status(
    cc: &ClusterContext,
    cr: &ClusterMendixCredential,
    id: &Id,
    status: ClusterMendixCredentialStatus,
) -> Result<(), Error> {
    let patch = serde_json::json!({
        "apiVersion": "mxcred.io/v1alpha1",
        "kind": "ClusterMendixCredential",
        "status": status,
    });
    Api::<ClusterMendixCredential>::all(cc.ctx.client.clone())
        .patch_status(&id.name, &apply_params(), &Patch::Apply(patch))
        .await
        .map_err(Error::WriteStatus)?;
    cc.written
        .lock()
        .insert(id.uid.clone(), (cr.resource_version(), status));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_namespaced_view_keeps_only_what_verification_reads() {
        let mut cr = ClusterMendixCredential::new("c", Default::default());
        cr.spec.source_ref.namespace = "src".into();
        cr.metadata.uid = Some("u".into());
        cr.metadata.generation = Some(3);
        cr.metadata.annotations = Some(
            [
                (ANNOTATION_VERIFY_REQUESTED_AT.to_owned(), "now".to_owned()),
                ("other".to_owned(), "x".to_owned()),
            ]
            .into(),
        );
        let view = as_namespaced(&cr, &MendixCredentialStatus::default());
        assert_eq!(view.metadata.namespace.as_deref(), Some("src"));
        assert_eq!(view.metadata.generation, Some(3));
        assert_eq!(view.annotations().len(), 1);
    }
}
