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
use crate::domain::cluster::restart::{self as cluster_restart};
use crate::domain::cluster::{
    self, ClusterMendixCredential, ClusterMendixCredentialStatus, ClusterObserved, CopyOutcome,
    NamespaceView, Selected, Selection,
};
use crate::domain::credential::Credential;
use crate::domain::due;
use crate::domain::plan::{self, Ready, ReadyReason};
use crate::domain::spec::{InvalidSpec, Resolved};
use crate::shell::ClusterGuarded;
use crate::shell::context::{Context, Decided, Error, Id, Kind, now};
use crate::shell::subscribe;
use crate::shell::verifier::{Slot, Subscription};
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
        self.current.iter().all(|c| c.load(Ordering::Relaxed))
    }

    fn id(cr: &ClusterMendixCredential) -> Result<Id, Error> {
        Ok(Id {
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
        let cc = self;
        let ctx = &cc.ctx;
        let credential_half = previous.core();

        // 1. The spec and the selection.
        let resolved = ctx.resolve(&id.name, &cr.spec.as_namespaced(), &cr.metadata);
        let selection = Selection::of(&cr.spec.target);
        let namespaces: Vec<NamespaceView> = cc
            .namespaces
            .state()
            .iter()
            .map(|n| namespace_view(n))
            .collect();
        let selected = match &selection {
            Ok(selection) => selection.apply(&namespaces),
            Err(_) => Selected::default(),
        };
        cc.remember_selected(&id.uid, &selected);

        // 2. The source, checked first when it replaces a working credential, then the copies.
        let Publication {
            source,
            credential,
            held,
            checked_first,
            copies,
            restarted,
            restart_again,
            stamps,
        } = match (&resolved, &selection) {
            (Err(InvalidSpec(m)), _) | (_, Err(InvalidSpec(m))) => {
                Publication::refused(Ready::refused(ReadyReason::InvalidSpec, m.clone()))
            }
            (Ok(resolved), Ok(_)) => {
                let step = Publish {
                    cc,
                    cr,
                    id,
                    resolved,
                    forced,
                };
                step.run(previous, &selected.active).await?
            }
        };
        // Our copies outside the selection go, whatever the source says. With a spec that
        // cannot be read, nothing is selected: the copies stay until it is fixed.
        let mut blocked = false;
        if let (Ok(resolved), Ok(_)) = (&resolved, &selection) {
            let keep: BTreeSet<&str> = selected.active.iter().map(String::as_str).collect();
            blocked |= !remove_copies(cc, id, &resolved.target_name, &keep).await;
        }

        // 3. The verification loop.
        let verification = subscribe_published(
            cc,
            id,
            cr.metadata.generation,
            resolved.as_ref().ok(),
            credential.as_ref(),
            forced,
            &credential_half,
        );
        // After the published subscription: a credential just published keeps the answer its
        // check as a pending one got.
        if held.is_none() {
            ctx.verifier.unsubscribe_slot(&id.uid, Slot::Pending);
        }

        // 4. The plan.
        let wrote = copies
            .values()
            .filter(|c| matches!(c, CopyOutcome::Synced { wrote: true, .. }))
            .count();
        let plan = cluster::plan(ClusterObserved {
            generation: cr.metadata.generation,
            credential_type: resolved.as_ref().ok().map(|r| r.credential_type),
            previous,
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
            due: due::Inputs {
                policy: resolved.as_ref().map(|r| r.due).unwrap_or_default(),
                stamps,
            },
            now: now(),
        });
        let plan = cluster_restart::amend(plan, previous, restarted);
        Ok(Decided {
            status: plan.status,
            events: plan.events,
            ready: plan.ready,
            request_served: plan.request_served,
            hold: plan.hold,
            blocked: blocked || plan.retry,
            restart_again,
            due_in: plan.due_in,
            wrote,
        })
    }
}

/// Tells the verification loop which credential the copies hold; returns what the plan needs
/// of its answer.
fn subscribe_published(
    cc: &ClusterContext,
    id: &Id,
    generation: Option<i64>,
    resolved: Option<&Resolved>,
    credential: Option<&Credential>,
    forced: Option<SystemTime>,
    previous: &crate::domain::api::MendixCredentialStatus,
) -> plan::Verification {
    let ctx = &cc.ctx;
    let Some((resolved, credential)) = resolved.zip(credential) else {
        ctx.verifier.unsubscribe(&id.uid);
        return plan::Verification::Waiting;
    };
    let Some(v) = &resolved.verification else {
        ctx.verifier.unsubscribe(&id.uid);
        return plan::Verification::Disabled;
    };
    subscribe::verification_of(ctx.verifier.subscribe_cluster(Subscription {
        uid: &id.uid,
        slot: Slot::Published,
        namespace: &id.namespace,
        name: &id.name,
        credential,
        probe: &v.probe,
        interval: ctx.settings.test_interval.unwrap_or(v.interval),
        forced,
        known: subscribe::known_verdict(generation, previous, credential),
    }))
}
