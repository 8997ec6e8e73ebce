//! The restart step of a ClusterMendixCredential: the workloads of `spec.target.rolloutRestart`
//! in every namespace whose copy holds the current credential, each brought to it as a
//! MendixCredential brings its own ([`crate::shell::restart::restart_in`]), a few namespaces at a
//! time. A namespace whose workloads this instance already brought to the credential is not
//! read again: a resync of many namespaces sends no request, and after a restart of the
//! operator one read per workload finds the annotation in place and patches nothing. A
//! namespace whose workloads did not all come to the credential (missing ones are fine) is
//! tried again after a growing delay, its failures kept meanwhile.

use super::context::{ClusterContext, Restarted};
use super::copies::WRITERS;
use crate::domain::api::WorkloadRef;
use crate::domain::cluster::RolloutRestartFailure;
use crate::domain::cluster::restart::{self as cluster_restart, Restarts};
use crate::domain::restart::{self, Marks};
use crate::shell::context::Id;
use crate::shell::restart::{Owner, Restart, restart_in};
use crate::shell::retries::retry_key;
use futures::StreamExt;
use std::time::Duration;

/// Brings `workloads` to `fingerprint` in each of `namespaces` that is due; says when to come
/// back. A namespace not due yet reports the failures of its last try.
pub(super) async fn restart_workloads(
    cc: &ClusterContext,
    id: &Id,
    generation: Option<i64>,
    workloads: &[WorkloadRef],
    fingerprint: &str,
    namespaces: &[&str],
) -> (Restarts, Option<Duration>) {
    let mut restarts = Restarts {
        listed: !workloads.is_empty(),
        fingerprint: fingerprint.to_owned(),
        ..Restarts::default()
    };
    if workloads.is_empty() {
        return (restarts, None);
    }
    let marks = Marks::of(id.scope, &id.name);
    let due_key = retry_key(fingerprint, generation);
    let restarted = Restarted {
        fingerprint: fingerprint.to_owned(),
        workloads: workloads.to_vec(),
    };
    let (marks, restarted) = (&marks, &restarted);
    let retries = &cc.retries;
    let mut again_in: Option<Duration> = None;
    let mut sooner = |wait: Option<Duration>| {
        if let Some(wait) = wait {
            again_in = Some(again_in.map_or(wait, |a| a.min(wait)));
        }
    };
    // Owned, for a future that must be Send for any lifetime of the namespaces' names.
    let mut due: Vec<String> = vec![];
    for ns in namespaces
        .iter()
        .filter(|ns| !cc.has_restarted(&id.uid, ns, restarted))
    {
        match retries.wait(&id.uid, ns, &due_key) {
            None => due.push((*ns).to_owned()),
            Some((wait, failures)) => {
                sooner(Some(wait));
                restarts.failures.extend(failures);
            }
        }
    }
    let results = futures::stream::iter(due)
        .map(|ns| async move {
            let owner = Owner {
                namespace: &ns,
                marks,
                credential: &id.name,
                missing_is_normal: true,
                min_interval: cc.ctx.settings.restart_min_interval,
            };
            let outcomes = restart_in(&cc.ctx.client, &owner, workloads, fingerprint).await;
            (ns, outcomes)
        })
        .buffer_unordered(WRITERS)
        .collect::<Vec<_>>()
        .await;
    for (ns, outcomes) in results {
        let settled: Vec<_> = outcomes
            .iter()
            .map(|r| (r.workload.clone(), r.outcome.clone()))
            .collect();
        if cluster_restart::settled(&settled) {
            cc.remember_restarted(&id.uid, &ns, restarted.clone());
        }
        let mut failures: Vec<RolloutRestartFailure> = vec![];
        for Restart {
            workload,
            outcome,
            patched,
        } in outcomes
        {
            if patched {
                restarts.restarted.push((ns.clone(), workload.clone()));
            }
            failures.extend(cluster_restart::failure(&ns, &workload, &outcome));
        }
        let pending = restart::pending(settled.iter().map(|(_, o)| o), true);
        let first = cc.ctx.settings.restart_retry;
        let key = due_key.clone();
        sooner(retries.record((&id.uid, &ns), key, pending, first, failures.clone()));
        restarts.failures.extend(failures);
    }
    restarts.restarted.sort();
    (restarts, again_in)
}

impl ClusterContext {
    fn has_restarted(&self, uid: &str, ns: &str, restarted: &Restarted) -> bool {
        let memory = self.restarted.lock();
        memory.get(uid).and_then(|m| m.get(ns)) == Some(restarted)
    }

    fn remember_restarted(&self, uid: &str, ns: &str, restarted: Restarted) {
        self.restarted
            .lock()
            .entry(uid.to_owned())
            .or_default()
            .insert(ns.to_owned(), restarted);
    }
}
