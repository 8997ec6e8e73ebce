//! The copy of each namespace: written as every target is, only when it differs, and deleted
//! where no longer selected. A copy whose version the watch reports as the one this instance
//! wrote or found current is not read again: a resync of many namespaces sends no request.

use super::context::ClusterContext;
use crate::domain::cluster::{self, ClusterMendixCredential, CopyOutcome};
use crate::domain::credential::Credential;
use crate::domain::render;
use crate::domain::spec::Resolved;
use crate::shell::api_error::describe;
use crate::shell::context::Error;
use crate::shell::context::Id;
use crate::shell::secrets::{SecretMeta, Seen};
use crate::shell::target::{self, Written};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tracing::warn;

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

/// The copy of one namespace, written as every target is ([`target::write_target`]); a
/// failed read or write is that namespace's outcome, retried.
async fn write_copy(cc: &ClusterContext, id: &Id, ns: &str, desired: Secret) -> CopyOutcome {
    let name = desired.metadata.name.as_deref().unwrap_or_default();
    let seen = cc.copy_seen(ns, name);
    let publisher = id.publisher();
    match target::write_target(&cc.ctx, publisher, desired, seen).await {
        Ok(Written::Holds { at, wrote }) => CopyOutcome::Synced {
            written_at: at,
            wrote,
        },
        Ok(Written::Conflict) => CopyOutcome::Conflict,
        Ok(Written::Invalid(message)) => CopyOutcome::Invalid(message),
        Err(Error::ReadTarget(e) | Error::ApplyTarget(e)) => CopyOutcome::Failed(describe(&e)),
        Err(e) => CopyOutcome::Failed(e.to_string()),
    }
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
            let removed = target::remove_target(&cc.ctx, id, &ns, &name, copy.metadata.uid.clone()).await;
            removed
                .inspect_err(|e| warn!(cluster_credential = id.name, namespace = ns, error = %describe(e), "could not delete a copy"))
                .is_ok()
        })
        .buffer_unordered(WRITERS)
        .collect::<Vec<bool>>()
        .await;
    results.into_iter().all(|ok| ok)
}

impl ClusterContext {
    /// What the watch reports of the copy `name` in `ns`, while it is current.
    fn copy_seen(&self, ns: &str, name: &str) -> Seen {
        if !self.current[1].load(Ordering::Relaxed) {
            return Seen::Unknown;
        }
        Seen::of(self.copies.get(&ObjectRef::new(name).within(ns)).as_deref())
    }
}
