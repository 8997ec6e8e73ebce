//! The restart step of a ClusterMendixCredential: the workloads of `spec.target.rolloutRestart`
//! in every namespace whose copy holds the current credential, each brought to it as a
//! MendixCredential brings its own ([`crate::shell::restart::bring`]), a few namespaces at a
//! time. A namespace whose workloads this instance already brought to the credential is not
//! read again: a resync of many namespaces sends no request, and after a restart of the
//! operator one read per workload finds the annotation in place and patches nothing.

use super::copies::WRITERS;
use super::{ClusterContext, Id};
use crate::domain::api::WorkloadRef;
use crate::domain::cluster::restart::{self as cluster_restart, Restarts};
use crate::domain::restart;
use crate::shell::restart::{Owner, bring};
use futures::StreamExt;

/// What this instance brought the workloads of one namespace to.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct Brought {
    fingerprint: String,
    workloads: Vec<WorkloadRef>,
}

/// Brings `workloads` to `fingerprint` in each of `namespaces`.
pub(super) async fn restart_workloads(
    cc: &ClusterContext,
    id: &Id,
    workloads: &[WorkloadRef],
    fingerprint: &str,
    namespaces: &[&str],
) -> Restarts {
    let mut restarts = Restarts {
        listed: !workloads.is_empty(),
        fingerprint: fingerprint.to_owned(),
        ..Restarts::default()
    };
    if workloads.is_empty() {
        return restarts;
    }
    let (key, manager) = (
        restart::cluster_annotation_key(&id.name),
        restart::cluster_field_manager(&id.name),
    );
    let brought = Brought {
        fingerprint: fingerprint.to_owned(),
        workloads: workloads.to_vec(),
    };
    let (key, manager, brought) = (&key, &manager, &brought);
    // Owned, for a future that must be Send for any lifetime of the namespaces' names.
    let due: Vec<String> = namespaces
        .iter()
        .filter(|ns| !cc.has_brought(&id.uid, ns, brought))
        .map(|ns| (*ns).to_owned())
        .collect();
    let results = futures::stream::iter(due)
        .map(|ns| async move {
            let owner = Owner {
                namespace: &ns,
                key,
                manager,
                credential: &id.name,
                missing_is_normal: true,
            };
            let mut outcomes = Vec::with_capacity(workloads.len());
            for workload in workloads {
                let (outcome, patched) = bring(&cc.ctx.client, &owner, workload, fingerprint).await;
                outcomes.push((workload.clone(), outcome, patched));
            }
            (ns, outcomes)
        })
        .buffer_unordered(WRITERS)
        .collect::<Vec<_>>()
        .await;
    for (ns, outcomes) in results {
        let settled: Vec<_> = outcomes
            .iter()
            .map(|(w, o, _)| (w.clone(), o.clone()))
            .collect();
        if cluster_restart::settled(&settled) {
            cc.remember_brought(&id.uid, &ns, brought.clone());
        }
        for (workload, outcome, patched) in outcomes {
            if patched {
                restarts.restarted.push((ns.clone(), workload.clone()));
            }
            restarts
                .failures
                .extend(cluster_restart::failure(&ns, &workload, &outcome));
        }
    }
    restarts.restarted.sort();
    restarts
}

impl ClusterContext {
    fn has_brought(&self, uid: &str, ns: &str, brought: &Brought) -> bool {
        let memory = self.brought.lock().expect("lock poisoned");
        memory.get(uid).and_then(|m| m.get(ns)) == Some(brought)
    }

    fn remember_brought(&self, uid: &str, ns: &str, brought: Brought) {
        self.brought
            .lock()
            .expect("lock poisoned")
            .entry(uid.to_owned())
            .or_default()
            .insert(ns.to_owned(), brought);
    }
}
