//! The copy of each namespace: written only when it differs, and deleted where no longer
//! selected. A copy whose version the watch reports as the one this instance wrote or found
//! current is not read again: a resync of many namespaces sends no request.

use super::context::{ClusterContext, Id, KnownCopy};
use crate::domain::cluster::{self, ClusterMendixCredential, CopyOutcome};
use crate::domain::credential::Credential;
use crate::domain::render;
use crate::domain::spec::Resolved;
use crate::shell::api_error::describe;
use crate::shell::context::Error;
use crate::shell::secrets::SecretMeta;
use crate::shell::target::{self, TargetOutcome};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Preconditions};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tracing::{info, warn};

/// Copies written or read at once, per resource.
pub(super) const WRITERS: usize = 16;

/// Writes the copy of every namespace in `active` that does not hold it, a few at a time.
pub(super) async fn write_copies(
    cc: &ClusterContext,
    cr: &ClusterMendixCredential,
    id: &Id,
    resolved: &Resolved,
    credential: &Credential,
    active: &[String],
) -> Result<BTreeMap<String, CopyOutcome>, Error> {
    let owner = cr
        .controller_owner_ref(&())
        .ok_or(Error::MissingMetadata("uid"))?;
    let outcomes = futures::stream::iter(active.iter().cloned())
        .map(|ns| {
            let mut desired =
                render::target_secret(&ns, &id.name, owner.clone(), resolved, credential);
            cluster::copy_labels(&mut desired, &id.name);
            async move {
                let outcome = write_copy(cc, id, &ns, desired).await;
                (ns, outcome)
            }
        })
        .buffer_unordered(WRITERS)
        .collect::<BTreeMap<_, _>>()
        .await;
    Ok(outcomes)
}

/// The copy of one namespace: kept when the watch reports it as this instance left it, else
/// read and written when it differs.
async fn write_copy(cc: &ClusterContext, id: &Id, ns: &str, desired: Secret) -> CopyOutcome {
    let digest = render::digest(&desired);
    let name = desired.metadata.name.clone().unwrap_or_default();
    if let Some(known) = cc.known_copy(&id.uid, ns, &name, &digest) {
        return CopyOutcome::Synced {
            written_at: known.at,
            wrote: false,
        };
    }
    let secrets: Api<Secret> = Api::namespaced(cc.ctx.client.clone(), ns);
    let failed = |e: &kube::Error| CopyOutcome::Failed(describe(e));
    let existing = match secrets.get_opt(&name).await {
        Ok(existing) => existing,
        Err(e) => return failed(&e),
    };
    let action = cluster::copy_action(existing.as_ref(), &desired, &id.uid, &id.name);
    let (version, written_at, wrote) = match target::carry_out(&secrets, action, existing, desired)
        .await
    {
        Ok(TargetOutcome::Holds { version, at, wrote }) => (version, at, wrote),
        Ok(TargetOutcome::Conflict) => return CopyOutcome::Conflict,
        Ok(TargetOutcome::Refused(e)) => return CopyOutcome::Invalid(target::refused_target(&e)),
        Err(Error::ApplyTarget(e)) => return failed(&e),
        Err(e) => return CopyOutcome::Failed(e.to_string()),
    };
    cc.remember_copy(
        &id.uid,
        ns,
        KnownCopy {
            name,
            version,
            digest,
            at: written_at.clone(),
        },
    );
    CopyOutcome::Synced { written_at, wrote }
}

/// Deletes our copies other than `target` in the `keep` namespaces. Returns false when a
/// deletion failed (it is retried).
pub(super) async fn remove_copies(
    cc: &ClusterContext,
    id: &Id,
    target: &str,
    keep: &BTreeSet<&str>,
) -> bool {
    let stale: Vec<Arc<SecretMeta>> = cc.copies.state_filter(|copy| {
        let ns = copy.metadata.namespace.as_deref().unwrap_or_default();
        cluster::is_ours_meta(&copy.metadata, &id.uid, &id.name)
            && !(keep.contains(ns) && copy.metadata.name.as_deref() == Some(target))
    });
    let results = futures::stream::iter(stale)
        .map(|copy| async move {
            let ns = copy.metadata.namespace.clone().unwrap_or_default();
            let name = copy.name_any();
            let secrets: Api<Secret> = Api::namespaced(cc.ctx.client.clone(), &ns);
            // Only the very Secret seen as ours: one replaced meanwhile is not deleted.
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: copy.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match secrets.delete(&name, &params).await {
                Ok(_) => {
                    info!(cluster_credential = id.name, namespace = ns, secret = name, "deleted a copy no longer selected");
                    cc.forget_copy(&id.uid, &ns);
                    true
                }
                Err(kube::Error::Api(e)) if e.is_not_found() || e.is_conflict() => true,
                Err(e) => {
                    warn!(cluster_credential = id.name, namespace = ns, error = %describe(&e), "could not delete a copy");
                    false
                }
            }
        })
        .buffer_unordered(WRITERS)
        .collect::<Vec<bool>>()
        .await;
    results.into_iter().all(|ok| ok)
}

impl ClusterContext {
    /// The copy of `ns` as this instance left it, if the watch still reports that version.
    fn known_copy(&self, uid: &str, ns: &str, name: &str, digest: &[u8; 32]) -> Option<KnownCopy> {
        if !self.current[1].load(Ordering::Relaxed) {
            return None;
        }
        let version = self
            .copies
            .get(&ObjectRef::new(name).within(ns))?
            .metadata
            .resource_version
            .clone()?;
        let known = self.known.lock();
        let copy = known.get(uid)?.get(ns)?;
        (copy.name == name && copy.version == version && copy.digest == *digest)
            .then(|| copy.clone())
    }

    fn remember_copy(&self, uid: &str, ns: &str, copy: KnownCopy) {
        self.known
            .lock()
            .entry(uid.to_owned())
            .or_default()
            .insert(ns.to_owned(), copy);
    }

    fn forget_copy(&self, uid: &str, ns: &str) {
        if let Some(copies) = self.known.lock().get_mut(uid) {
            copies.remove(ns);
        }
    }
}
