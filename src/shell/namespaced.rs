//! The steps of a `MendixCredential`, for the reconcile driver ([`crate::shell::reconcile`]):
//! one target, in the resource's own namespace.
//!
//! 1. resolve the spec (pure),
//! 2. read the source Secret and write the target Secret ([`crate::shell::target`]), then
//!    restart the workloads of `spec.target.rolloutRestart` to the credential it holds
//!    ([`crate::shell::restart`]; never fails the reconcile),
//! 3. subscribe the credential to the verification loop (memory; never waits for the platform),
//! 4. plan the status and the Events (pure: [`crate::domain::plan`]).

use crate::domain::api::Scope;
use crate::domain::api::{MendixCredential, MendixCredentialStatus};
use crate::domain::due::{self, Stamps};
use crate::domain::plan::{self, Observed, Plan, Ready, ReadyReason, Sync};
use crate::domain::restart as restarts;
use crate::domain::spec::InvalidSpec;
use crate::shell::context::{Context, Decided, Error, Id, Kind, now};
use crate::shell::{Guarded, restart, subscribe, target};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::{Api, ResourceExt};
use std::sync::Arc;
use std::time::SystemTime;

/// The kind `MendixCredential`, over the context every reconcile shares.
pub struct Namespaced(pub Arc<Context>);

impl Kind for Namespaced {
    type Resource = MendixCredential;
    type Status = MendixCredentialStatus;
    const KIND: &'static str = "MendixCredential";

    fn ctx(&self) -> &Context {
        &self.0
    }

    fn id(cr: &MendixCredential) -> Result<Id, Error> {
        Ok(Id {
            scope: Scope::Namespaced,
            namespace: cr.namespace().ok_or(Error::MissingMetadata("namespace"))?,
            name: cr.name_any(),
            uid: cr.uid().ok_or(Error::MissingMetadata("uid"))?,
        })
    }

    fn label(id: &Id) -> String {
        format!("{}/{}", id.namespace, id.name)
    }

    fn status(cr: &MendixCredential) -> MendixCredentialStatus {
        cr.status.clone().unwrap_or_default()
    }

    fn last_verified(status: &MendixCredentialStatus) -> Option<&Time> {
        status.last_verified_time.as_ref()
    }

    fn status_of(written: MendixCredential) -> Option<MendixCredentialStatus> {
        written.status
    }

    fn api(&self, meta: &ObjectMeta) -> Result<Api<MendixCredential>, Error> {
        let ns = meta
            .namespace
            .as_deref()
            .ok_or(Error::MissingMetadata("namespace"))?;
        Ok(Api::namespaced(self.0.client.clone(), ns))
    }

    fn guarded_api(&self, meta: &ObjectMeta) -> Result<Api<Guarded>, Error> {
        let ns = meta
            .namespace
            .as_deref()
            .ok_or(Error::MissingMetadata("namespace"))?;
        Ok(Api::namespaced(self.0.client.clone(), ns))
    }

    async fn steps(
        &self,
        cr: &MendixCredential,
        id: &Id,
        previous: &MendixCredentialStatus,
        forced: Option<SystemTime>,
    ) -> Result<Decided<MendixCredentialStatus>, Error> {
        let ctx = self.ctx();
        let resolved = ctx.resolve(&id.name, &cr.spec, &cr.metadata);
        let (sync, credential, stamps) = match &resolved {
            Ok(resolved) => target::sync(cr, id, resolved, previous, forced, ctx).await?,
            Err(InvalidSpec(message)) => (
                Sync::Refused(Ready::refused(ReadyReason::InvalidSpec, message.clone())),
                None,
                Stamps::default(),
            ),
        };
        let holding = matches!(sync, Sync::Held { .. });
        let verification = subscribe::subscribe(
            cr.metadata.generation,
            id,
            resolved.as_ref().ok(),
            (credential.as_ref(), holding),
            forced,
            previous,
            ctx,
        );
        let wrote = usize::from(matches!(sync, Sync::Published { wrote: true, .. }));
        // Only once the target holds the credential: a restarted pod must read the new one.
        let (restarted, restart_again) = match &sync {
            Sync::Published { fingerprint, .. } => {
                let workloads = restarts::workloads(&cr.spec);
                let generation = cr.metadata.generation;
                let ensured =
                    restart::ensure(id, generation, &workloads, fingerprint, previous, ctx).await;
                (Some(ensured.entries), ensured.again_in)
            }
            _ => (None, None),
        };
        let plan = plan::reconcile(Observed {
            generation: cr.metadata.generation,
            credential_type: resolved.as_ref().ok().map(|r| r.credential_type),
            previous,
            sync,
            verification,
            due: due::Inputs {
                policy: resolved.as_ref().map(|r| r.due).unwrap_or_default(),
                stamps,
            },
            now: now(),
        });
        let Plan {
            status,
            events,
            ready,
            request_served,
            hold,
            due_in,
        } = restarts::amend(plan, previous, restarted);
        Ok(Decided {
            status,
            events,
            ready: ready.as_str(),
            request_served,
            hold,
            blocked: ready == ReadyReason::TargetConflict,
            restart_again,
            due_in,
            wrote,
        })
    }
}
