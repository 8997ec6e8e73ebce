//! The steps of a `MendixCredential`, for the reconcile driver ([`crate::shell::reconcile`]):
//! one target, in the resource's own namespace.
//!
//! 1. resolve the spec (pure),
//! 2. read the source Secret ([`crate::shell::source`]), pass the rotation gate
//!    ([`crate::shell::rotation`]), write the target Secret ([`crate::shell::target`]) and
//!    delete the one published under a previous name, then
//!    restart the workloads of `spec.target.rolloutRestart` to the credential it holds
//!    ([`crate::shell::restart`]; never fails the reconcile),
//! 3. subscribe the credential to the verification loop (memory; never waits for the platform),
//! 4. plan the status and the Events (pure: [`crate::domain::plan`]).

use crate::domain::api::Scope;
use crate::domain::api::{MendixCredential, MendixCredentialStatus};
use crate::domain::credential::Credential;
use crate::domain::due::{self, Stamps};
use crate::domain::plan::{self, Observed, Plan, Ready, ReadyReason, Sync};
use crate::domain::render;
use crate::domain::restart as restarts;
use crate::domain::spec::InvalidSpec;
use crate::domain::spec::Resolved;
use crate::shell::context::{Context, Decided, Error, Id, Kind, now};
use crate::shell::rotation;
use crate::shell::source::read_source;
use crate::shell::target::{Written, remove_target, write_target};
use crate::shell::{Guarded, restart, subscribe};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Resource;
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

    fn caches_current(&self) -> bool {
        self.0.consumers.current()
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
            Ok(resolved) => sync(cr, id, resolved, previous, forced, ctx).await?,
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
            consumers: resolved.as_ref().ok().and_then(|r| {
                ctx.consumers
                    .of([id.namespace.as_str()], &r.target_name, false)
            }),
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

/// Reads the source, renders the target and writes it when it differs from what is there.
/// Returns what was established, the credential published and, when it is the source's, the
/// source's time annotations.
async fn sync(
    cr: &MendixCredential,
    id: &Id,
    resolved: &Resolved,
    previous: &MendixCredentialStatus,
    forced: Option<SystemTime>,
    ctx: &Context,
) -> Result<(Sync, Option<Credential>, Stamps), Error> {
    let refused = |ready| Ok((Sync::Refused(ready), None, Stamps::default()));
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &id.namespace);
    let seen = ctx.secrets.version(&id.namespace, &resolved.source.secret);
    let (credential, stamps) = match read_source(ctx, &id.namespace, resolved, seen).await? {
        Err(ready) => return refused(ready),
        Ok(read) => read,
    };
    let working = async |published: &str| working_target(id, &secrets, resolved, published).await;
    let gated = rotation::pass(ctx, id, resolved, previous, credential, forced, working).await?;
    if let Some((pending, held)) = gated.held {
        let sync = Sync::Held {
            target: resolved.target_name.clone(),
            published: gated.publish.fingerprint(),
            pending,
            held,
        };
        return Ok((sync, Some(gated.publish), Stamps::default()));
    }
    let (credential, checked_first) = (gated.publish, gated.checked_first);

    let owner = cr
        .controller_owner_ref(&())
        .ok_or(Error::MissingMetadata("uid"))?;
    let desired = render::target_secret(&id.namespace, &id.name, owner, resolved, &credential);
    let target = &resolved.target_name;
    let seen = ctx.secrets.seen(&id.namespace, target);
    let publisher = id.publisher();
    let (written_at, wrote) = match write_target(ctx, publisher, desired, seen).await? {
        Written::Holds { at, wrote } => (at, wrote),
        Written::Conflict => return refused(plan::target_conflict(target)),
        Written::Invalid(message) => {
            return refused(Ready::refused(ReadyReason::InvalidSpec, message));
        }
    };
    remove_previous_target(ctx, id, previous, &secrets, target).await?;
    let sync = Sync::Published {
        target: target.clone(),
        fingerprint: credential.fingerprint(),
        digest: credential.digest(),
        written_at,
        wrote,
        checked_first,
    };
    Ok((sync, Some(credential), stamps))
}

/// The published credential (the one whose digest the status recorded), if the target still
/// holds it. Only a target of ours is protected: one deleted or changed by hand meanwhile has
/// nothing left to lose.
async fn working_target(
    id: &Id,
    secrets: &Api<Secret>,
    resolved: &Resolved,
    published: &str,
) -> Result<Option<Credential>, Error> {
    let target = secrets
        .get_opt(&resolved.target_name)
        .await
        .map_err(Error::ReadTarget)?;
    Ok(target
        .filter(|existing| render::is_ours(existing, &id.uid, &id.name))
        .and_then(|existing| {
            render::published_credential(&existing, resolved.credential_type, published)
        }))
}

/// After `spec.target.name` changed, deletes the Secret published under the old name
/// ([`remove_target`]), if it is ours.
async fn remove_previous_target(
    ctx: &Context,
    id: &Id,
    previous: &MendixCredentialStatus,
    secrets: &Api<Secret>,
    target: &str,
) -> Result<(), Error> {
    let Some(old) = previous.secret_name.as_deref().filter(|old| *old != target) else {
        return Ok(());
    };
    let existing = secrets
        .get_opt(old)
        .await
        .map_err(Error::DeletePreviousTarget)?;
    match existing.filter(|secret| render::is_controlled_by(secret, &id.uid)) {
        Some(secret) => remove_target(ctx, id, &id.namespace, old, secret.metadata.uid)
            .await
            .map_err(Error::DeletePreviousTarget),
        None => Ok(()),
    }
}
