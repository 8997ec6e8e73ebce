//! The steps of a `ClusterMendixCredential`, for the reconcile driver
//! ([`crate::shell::reconcile`]): one target in each selected namespace.
//!
//! 1. resolve the spec and the selection (pure),
//! 2. read the source Secret, write the copy of each selected namespace that does not hold it,
//!    a few at a time (the decision is pure), then, unless a rotation is held back, restart
//!    the workloads of `spec.target.rolloutRestart` in each namespace whose copy holds it
//!    ([`super::publish`]; restarts never fail the reconcile), and delete our copies where no
//!    longer selected ([`super::copies`]),
//! 3. subscribe the credential to the verification loop (shared with MendixCredentials),
//! 4. plan the status and the Events (pure: [`crate::domain::cluster::plan`]).

use super::context::{ClusterContext, namespace_view};
use super::copies::remove_copies;
use super::publish::{Publication, Publish};
use crate::domain::api::Scope;
use crate::domain::cluster::restart::{self as cluster_restart};
use crate::domain::cluster::{
    self, ClusterMendixCredential, ClusterMendixCredentialStatus, ClusterObserved, CopyOutcome,
    NamespaceView, Selected, Selection,
};
use crate::domain::consumers::Consumers;
use crate::domain::due;
use crate::domain::plan::Verification;
use crate::domain::plan::{Ready, ReadyReason};
use crate::domain::spec::{InvalidSpec, Resolved};
use crate::shell::ClusterGuarded;
use crate::shell::context::{Context, Decided, Error, Id, Kind, now};
use crate::shell::subscribe;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::{Api, ResourceExt};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

impl Kind for ClusterContext {
    type Resource = ClusterMendixCredential;
    type Status = ClusterMendixCredentialStatus;
    const KIND: &'static str = "ClusterMendixCredential";

    fn ctx(&self) -> &Context {
        &self.ctx
    }

    fn caches_current(&self) -> bool {
        self.current.iter().all(|c| c.load(Ordering::Relaxed)) && self.ctx.consumers.current()
    }

    fn id(cr: &ClusterMendixCredential) -> Result<Id, Error> {
        Ok(Id {
            scope: Scope::Cluster,
            namespace: cr.spec.source_ref.namespace.clone(),
            name: cr.name_any(),
            uid: cr.uid().ok_or(Error::MissingMetadata("uid"))?,
        })
    }

    fn label(id: &Id) -> String {
        id.name.clone()
    }

    fn status(cr: &ClusterMendixCredential) -> ClusterMendixCredentialStatus {
        cr.status.clone().unwrap_or_default()
    }

    fn last_verified(status: &ClusterMendixCredentialStatus) -> Option<&Time> {
        status.last_verified_time.as_ref()
    }

    fn status_of(written: ClusterMendixCredential) -> Option<ClusterMendixCredentialStatus> {
        written.status
    }

    fn api(&self, _: &ObjectMeta) -> Result<Api<ClusterMendixCredential>, Error> {
        Ok(Api::all(self.ctx.client.clone()))
    }

    fn guarded_api(&self, _: &ObjectMeta) -> Result<Api<ClusterGuarded>, Error> {
        Ok(Api::all(self.ctx.client.clone()))
    }

    async fn steps(
        &self,
        cr: &ClusterMendixCredential,
        id: &Id,
        previous: &ClusterMendixCredentialStatus,
        forced: Option<SystemTime>,
    ) -> Result<Decided<ClusterMendixCredentialStatus>, Error> {
        let ctx = &self.ctx;
        let credential_half = previous.core();

        // 1. The spec and the selection.
        let resolved = ctx.resolve(&id.name, &cr.spec.as_namespaced(), &cr.metadata);
        let (selection, selected) = self.select(cr, id);
        let spec = match (&resolved, &selection) {
            (Err(InvalidSpec(m)), _) | (_, Err(InvalidSpec(m))) => Err(m.clone()),
            (Ok(resolved), Ok(_)) => Ok(resolved),
        };

        // 2. The source, checked first when it replaces a working credential, then the copies;
        // our copies outside the selection go, whatever the source says. With a spec that
        // cannot be read, nothing is selected: the copies stay until it is fixed.
        let (publication, removed) = match spec {
            Err(message) => (
                Publication::refused(Ready::refused(ReadyReason::InvalidSpec, message)),
                true,
            ),
            Ok(resolved) => {
                let step = Publish {
                    cc: self,
                    cr,
                    id,
                    resolved,
                    forced,
                };
                let publication = step.run(&credential_half, &selected.active).await?;
                let keep: BTreeSet<&str> = selected.active.iter().map(String::as_str).collect();
                let removed = remove_copies(self, id, &resolved.target_name, &keep).await;
                (publication, removed)
            }
        };

        // 3. The verification loop.
        let verification = subscribe::subscribe(
            cr.metadata.generation,
            id,
            resolved.as_ref().ok(),
            (publication.credential.as_ref(), publication.held.is_some()),
            forced,
            &credential_half,
            ctx,
        );

        // 4. The plan, with the workloads that use the copies.
        let consumers = resolved.as_ref().ok().and_then(|r| {
            let namespaces = selected.active.iter().map(String::as_str);
            ctx.consumers.of(namespaces, &r.target_name, true)
        });
        let observed = Observed {
            cr,
            previous,
            resolved: resolved.as_ref().ok(),
            selected,
            verification,
            consumers,
        };
        let mut decided = decide(observed, publication);
        decided.blocked |= !removed;
        Ok(decided)
    }
}

impl ClusterContext {
    /// The selection the spec asks for, and the namespaces it selects now (remembered, so that
    /// a later change of one of them wakes this resource even once it is deselected).
    fn select(
        &self,
        cr: &ClusterMendixCredential,
        id: &Id,
    ) -> (Result<Selection, InvalidSpec>, Selected) {
        let selection = Selection::of(&cr.spec.target);
        let namespaces: Vec<NamespaceView> = self
            .namespaces
            .state()
            .iter()
            .map(|n| namespace_view(n))
            .collect();
        let selected = match &selection {
            Ok(selection) => selection.apply(&namespaces),
            Err(_) => Selected::default(),
        };
        self.remember_selected(&id.uid, &selected);
        (selection, selected)
    }
}

/// What the plan of a reconcile reads beside the publication.
struct Observed<'a> {
    cr: &'a ClusterMendixCredential,
    previous: &'a ClusterMendixCredentialStatus,
    resolved: Option<&'a Resolved>,
    selected: Selected,
    verification: Verification,
    consumers: Option<Consumers>,
}

/// The plan of the status and the Events (pure), with the restarts amended in.
fn decide(observed: Observed, publication: Publication) -> Decided<ClusterMendixCredentialStatus> {
    let Observed {
        cr,
        previous,
        resolved,
        selected,
        verification,
        consumers,
    } = observed;
    let Publication {
        source,
        held,
        checked_first,
        copies,
        restarted,
        restart_again,
        stamps,
        credential: _,
    } = publication;
    let wrote = copies
        .values()
        .filter(|c| matches!(c, CopyOutcome::Synced { wrote: true, .. }))
        .count();
    let plan = cluster::plan(ClusterObserved {
        generation: cr.metadata.generation,
        credential_type: resolved.map(|r| r.credential_type),
        previous,
        target: resolved.map(|r| r.target_name.clone()).unwrap_or_default(),
        source,
        held,
        checked_first,
        copies,
        selected,
        verification,
        due: due::Inputs {
            policy: resolved.map(|r| r.due).unwrap_or_default(),
            stamps,
        },
        consumers,
        now: now(),
    });
    let plan = cluster_restart::amend(plan, previous, restarted);
    Decided {
        status: plan.status,
        events: plan.events,
        ready: plan.ready,
        request_served: plan.request_served,
        hold: plan.hold,
        blocked: plan.retry,
        restart_again,
        due_in: plan.due_in,
        wrote,
    }
}
