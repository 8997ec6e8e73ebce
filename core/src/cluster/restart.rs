//! Restarting the consumers of a ClusterMendixCredential in every selected namespace whose copy
//! holds the current credential: per workload, the decisions of a MendixCredential
//! ([`crate::restart`]); here, what the status and the Events say of all of them.
//!
//! Unlike a MendixCredential's, a workload missing from a namespace is no problem: namespaces
//! differ, and a workload created later reads the current credential when it starts.

use super::{
    ClusterMendixCredentialStatus, ClusterPlan, MAX_RESTART_FAILURES, RolloutRestartFailure,
};
use crate::api::{RolloutRestartProblem, WorkloadKind, WorkloadRef};
use crate::plan::Announcement;
use crate::restart::{self, Outcome, bounded, few};
use std::collections::BTreeSet;

/// What the restart step of one reconcile came to, in every namespace it went through.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restarts {
    /// Whether the spec lists any workload (without, the status says nothing of restarts).
    pub listed: bool,
    /// The workloads that could not be brought to the credential, in any order.
    pub failures: Vec<RolloutRestartFailure>,
    /// The workloads patched by this reconcile (and so restarted), by namespace.
    pub restarted: Vec<(String, WorkloadRef)>,
    /// The credential they were brought to.
    pub fingerprint: String,
}

/// The failure of `workload` in `namespace` after `outcome`, if it is one. A workload that
/// does not exist is skipped, not a failure; one waiting for its minimum interval is none.
pub fn failure(
    namespace: &str,
    workload: &WorkloadRef,
    outcome: &Outcome,
) -> Option<RolloutRestartFailure> {
    let entry = restart::entry(workload, outcome, None);
    match entry.reason? {
        RolloutRestartProblem::NotFound => None,
        reason => Some(RolloutRestartFailure {
            namespace: namespace.to_owned(),
            kind: workload.kind,
            name: workload.name.clone(),
            reason,
            message: entry.message.unwrap_or_default(),
        }),
    }
}

/// Whether a namespace's workloads all came to the credential (or do not exist): then it need
/// not be read again for that credential.
pub fn settled(outcomes: &[(WorkloadRef, Outcome)]) -> bool {
    restart::pending(outcomes.iter().map(|(_, o)| o), true).is_none()
}

/// Adds the restarts to the plan of a reconcile: the bounded list of failures and their count,
/// a Warning Event for failures that are new since the previous status, a Normal one for the
/// workloads restarted. `restarts` is `None` when nothing was tried (the source cannot be used,
/// or a rotation is held back): the failures stay as they were. A plan that holds its status
/// back is left as it is.
pub fn amend(
    mut plan: ClusterPlan,
    previous: &ClusterMendixCredentialStatus,
    restarts: Option<Restarts>,
) -> ClusterPlan {
    if plan.hold.is_some() {
        return plan;
    }
    let mut status = plan.status.take().unwrap_or_else(|| previous.clone());
    match restarts {
        None => {
            status.rollout_restart_failures = previous.rollout_restart_failures.clone();
            status.rollout_restart_failure_count = previous.rollout_restart_failure_count;
        }
        Some(restarts) => {
            let mut failures = restarts.failures;
            failures.sort();
            let before: BTreeSet<Identity> = previous
                .rollout_restart_failures
                .iter()
                .map(identity)
                .collect();
            let new: Vec<&RolloutRestartFailure> = failures
                .iter()
                .take(MAX_RESTART_FAILURES)
                .filter(|f| !before.contains(&identity(f)))
                .collect();
            if let Some(first) = new.first() {
                let shown: Vec<String> = new
                    .iter()
                    .map(|f| {
                        format!(
                            "{} {:?} in namespace {} ({:?})",
                            f.kind.as_str(),
                            f.name,
                            f.namespace,
                            f.reason
                        )
                    })
                    .collect();
                plan.events.push(Announcement {
                    warning: true,
                    reason: restart::RESTART_FAILED,
                    note: bounded(format!("{}. {}", few(&shown, ", "), first.message)),
                });
            }
            if !restarts.restarted.is_empty() {
                let shown: Vec<String> = restarts
                    .restarted
                    .iter()
                    .map(|(ns, w)| format!("{} {:?} in namespace {ns}", w.kind.as_str(), w.name))
                    .collect();
                plan.events.push(Announcement {
                    warning: false,
                    reason: restart::RESTARTED,
                    note: bounded(format!(
                        "restarted for credential {}: {}",
                        restarts.fingerprint,
                        few(&shown, ", ")
                    )),
                });
            }
            status.rollout_restart_failure_count = restarts
                .listed
                .then(|| i32::try_from(failures.len()).unwrap_or(i32::MAX));
            failures.truncate(MAX_RESTART_FAILURES);
            status.rollout_restart_failures = failures;
        }
    }
    plan.status = (status != *previous).then_some(status);
    plan
}

/// A failure without its message: what tells a new failure from one already announced.
type Identity<'a> = (&'a str, WorkloadKind, &'a str, RolloutRestartProblem);

fn identity(f: &RolloutRestartFailure) -> Identity<'_> {
    (&f.namespace, f.kind, &f.name, f.reason)
}

#[cfg(test)]
mod tests;
