//! The restart step: brings every workload of `spec.target.rolloutRestart` that consents to the
//! published credential. Each workload is read (a GET: workloads are not watched) and patched
//! by server-side apply only when it consents, its pod template does not hold the credential's
//! fingerprint yet, and its last restart (the time of the latest restart field manager on it)
//! is at least the minimum interval ago. The decisions are pure ([`crate::domain::restart`]);
//! this is their IO. Nothing here fails the reconcile: each problem becomes the workload's
//! status entry. Workloads that did not all come to the credential are tried again after a
//! growing delay ([`Retries`](crate::shell::retries::Retries)), not at every reconcile.

use crate::domain::api::{MendixCredentialStatus, RolloutRestartStatus, WorkloadRef};
use crate::domain::restart::{self, Marks, Outcome, Step};
use crate::shell::context::{Context, Id};
use crate::shell::retries::retry_key;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::{Api, Client};
use std::collections::BTreeMap;
use std::time::Duration;
use tracing::{debug, info, warn};

/// What the restart step of a reconcile did: the status entries (those of the last try when
/// the workloads were not due again); and when to come back.
pub(crate) struct Ensured {
    pub entries: Vec<RolloutRestartStatus>,
    pub again_in: Option<Duration>,
}

/// Brings each workload to `fingerprint`, unless the try for this credential and spec is not
/// due yet.
pub(crate) async fn ensure(
    id: &Id,
    generation: Option<i64>,
    workloads: &[WorkloadRef],
    fingerprint: &str,
    previous: &MendixCredentialStatus,
    ctx: &Context,
) -> Ensured {
    let due_key = retry_key(fingerprint, generation);
    if let Some((wait, entries)) = ctx.retries.wait(&id.uid, &id.namespace, &due_key) {
        return Ensured {
            entries,
            again_in: Some(wait),
        };
    }
    let credential = format!("{}/{}", id.namespace, id.name);
    let marks = Marks::of(id.scope, &id.name);
    let owner = Owner {
        namespace: &id.namespace,
        marks: &marks,
        credential: &credential,
        missing_is_normal: false,
        min_interval: ctx.settings.restart_min_interval,
    };
    let restarts = restart_in(&ctx.client, &owner, workloads, fingerprint).await;
    let entries: Vec<RolloutRestartStatus> = restarts
        .iter()
        .map(|r| {
            restart::entry(
                &r.workload,
                &r.outcome,
                restart::previous_entry(previous, &r.workload),
            )
        })
        .collect();
    let outcomes: Vec<Outcome> = restarts.into_iter().map(|r| r.outcome).collect();
    let pending = restart::pending(&outcomes, false);
    let first = ctx.settings.restart_retry;
    let again_in = ctx.retries.record(
        (&id.uid, &id.namespace),
        due_key,
        pending,
        first,
        entries.clone(),
    );
    Ensured { entries, again_in }
}

/// Whose annotation the workloads get, and in which namespace.
pub(crate) struct Owner<'a> {
    pub namespace: &'a str,
    /// The pod-template annotation, field manager and consent entry: the resource's alone.
    pub marks: &'a Marks,
    /// The resource, for the logs.
    pub credential: &'a str,
    /// Whether a workload that does not exist is as expected (a cluster resource's, in a
    /// namespace without it): then it is logged at debug level only.
    pub missing_is_normal: bool,
    /// The least time between two restarts of one workload.
    pub min_interval: Duration,
}

/// What restarting one workload came to, and whether it was patched (and so restarted).
pub(crate) struct Restart {
    pub workload: WorkloadRef,
    pub outcome: Outcome,
    pub patched: bool,
}

/// The restart step of one namespace, for both kinds: brings each of `workloads` in the
/// namespace of `owner` to `fingerprint`, one after another.
pub(crate) async fn restart_in(
    client: &Client,
    owner: &Owner<'_>,
    workloads: &[WorkloadRef],
    fingerprint: &str,
) -> Vec<Restart> {
    let mut restarts = Vec::with_capacity(workloads.len());
    for workload in workloads {
        let (outcome, patched) = restart_to(client, owner, workload, fingerprint).await;
        restarts.push(Restart {
            workload: workload.clone(),
            outcome,
            patched,
        });
    }
    restarts
}

/// Restarts one workload to `fingerprint` (its pod template annotated with it); says whether it was patched (and so restarted).
async fn restart_to(
    client: &Client,
    owner: &Owner<'_>,
    workload: &WorkloadRef,
    fingerprint: &str,
) -> (Outcome, bool) {
    let credential = owner.credential;
    let (kind, name) = (workload.kind.as_str(), workload.name.as_str());
    let gvk = GroupVersionKind::gvk("apps", "v1", kind);
    let resource = ApiResource::from_gvk_with_plural(&gvk, workload.kind.plural());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), owner.namespace, &resource);
    let holds = || Outcome::Holds {
        fingerprint: fingerprint.to_owned(),
    };

    let current = match api.get(name).await {
        Ok(current) => current,
        Err(error) => return (failed(owner, workload, Step::Read, &error), false),
    };
    if !restart::consents(current.metadata.annotations.as_ref(), &owner.marks.consent) {
        debug!(
            credential,
            namespace = owner.namespace,
            kind,
            name,
            "the workload does not consent to restarts by this credential: left alone"
        );
        let entry = owner.marks.consent.clone();
        return (Outcome::NoConsent { entry }, false);
    }
    let annotations: Option<BTreeMap<String, String>> =
        serde_json::from_value(current.data["spec"]["template"]["metadata"]["annotations"].clone())
            .ok();
    let held = restart::held(annotations.as_ref(), &owner.marks.key);
    if !restart::needs_patch(held, fingerprint) {
        return (holds(), false);
    }
    // The last restart by any credential of either kind: the time of the latest change by a
    // restart field manager, which the API server keeps on the workload (so an operator
    // restart forgets nothing).
    let last = current
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| {
            m.manager
                .as_deref()
                .is_some_and(restart::is_restart_manager)
        })
        .filter_map(|m| m.time.as_ref().map(|t| t.0))
        .max();
    if let Some(wait) = restart::deferral(last, jiff::Timestamp::now(), owner.min_interval) {
        debug!(
            credential,
            namespace = owner.namespace,
            kind,
            name,
            ?wait,
            "restarted less than the minimum interval ago: deferred"
        );
        let held = held.map(str::to_owned);
        return (Outcome::Deferred { held, wait }, false);
    }
    // Forced: the key is this resource's alone, whoever touched it since. No `create` is
    // granted, so a workload deleted since the read is not created by this apply.
    let params = PatchParams::apply(&owner.marks.manager).force();
    let body = restart::apply_body(workload, &owner.marks.key, fingerprint);
    match api.patch(name, &params, &Patch::Apply(&body)).await {
        Ok(_) => {
            info!(
                credential,
                namespace = owner.namespace,
                kind,
                name,
                fingerprint,
                "restarted a workload for the published credential"
            );
            (holds(), true)
        }
        Err(error) => (failed(owner, workload, Step::Patch, &error), false),
    }
}

/// The outcome of a failed request, logged with its code and reason only (the API server's
/// message may quote the object).
fn failed(owner: &Owner<'_>, workload: &WorkloadRef, step: Step, error: &kube::Error) -> Outcome {
    let (kind, name) = (workload.kind.as_str(), workload.name.as_str());
    let (credential, namespace) = (owner.credential, owner.namespace);
    match error {
        kube::Error::Api(status) if status.code == 404 && owner.missing_is_normal => {
            debug!(
                credential,
                namespace, kind, name, "no such workload in this namespace: skipped"
            );
            Outcome::Refused {
                step,
                code: status.code,
                reason: status.reason.clone(),
            }
        }
        kube::Error::Api(status) => {
            warn!(credential, namespace, kind, name, ?step, code = status.code, reason = %status.reason, "cannot restart a workload");
            Outcome::Refused {
                step,
                code: status.code,
                reason: status.reason.clone(),
            }
        }
        other => {
            // Not the error's text: a body that could not be read may be quoted in it.
            let error = match other {
                kube::Error::SerdeError(_) => "unreadable answer",
                _ => "no answer",
            };
            warn!(
                credential,
                namespace,
                kind,
                name,
                ?step,
                error,
                "cannot restart a workload"
            );
            Outcome::Unanswered { step }
        }
    }
}
