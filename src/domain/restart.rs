//! Restarting the consumers of a credential (`spec.target.rolloutRestart`), as plain data: the
//! annotation and field manager of a resource, whether a workload needs a patch, the patch, and
//! what the status and the Events say about it.
//!
//! Level-based: after each reconcile that finds the target Secret holding the current
//! credential, every listed workload's pod template should hold that credential's fingerprint
//! under this resource's annotation. A workload that holds it is left alone, so a restart of the
//! operator, a change of leader or a resync never restarts anything again, while two rotations
//! within one second still restart twice (the fingerprints differ).

use crate::domain::api::{
    MendixCredentialSpec, MendixCredentialStatus, RolloutRestartProblem, RolloutRestartStatus,
    WorkloadKind, WorkloadRef,
};
use crate::domain::plan::{Announcement, Plan};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The domain of the pod-template annotations; the name part is the resource's name.
pub const ANNOTATION_DOMAIN: &str = "restart.mxcred.io";
/// The domain of a ClusterMendixCredential's annotations: another domain, so that a cluster
/// resource and a namespaced one of the same name restarting the same workload never share a
/// key (each would undo the other's value forever).
pub const CLUSTER_ANNOTATION_DOMAIN: &str = "cluster.restart.mxcred.io";

/// Event reasons.
pub const RESTARTED: &str = "RolloutRestarted";
pub const RESTART_FAILED: &str = "RolloutRestartFailed";

/// How long a resource whose workloads could not all be brought to the current credential waits
/// before trying again (workloads are not watched: a missing one may appear at any time).
pub const RETRY: std::time::Duration = std::time::Duration::from_secs(60);

impl WorkloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
        }
    }

    /// The resource's plural in group `apps`, version `v1`.
    pub fn plural(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "deployments",
            WorkloadKind::StatefulSet => "statefulsets",
            WorkloadKind::DaemonSet => "daemonsets",
        }
    }
}

/// The name part of this resource's annotation key and field manager: its name when that fits
/// the 63 characters of an annotation name, else a prefix of it and a hash of the whole name.
/// A resource's name is unique in its namespace, as are the workloads it may restart, so two
/// resources never share a key (they would undo each other's value forever) nor a field manager
/// (an apply by one manager removes the fields it set before and does not set again: with one
/// manager for all resources, each would remove the other's annotation).
fn name_part(credential: &str) -> String {
    const MAX: usize = 63;
    if credential.len() <= MAX {
        return credential.to_owned();
    }
    let hash = hex::encode(&Sha256::digest(credential.as_bytes())[..4]);
    // A DNS subdomain is ASCII; the cut may end in '-' or '.', which an annotation name may not.
    let head = credential[..MAX - hash.len() - 1].trim_end_matches(['-', '.']);
    format!("{head}-{hash}")
}

/// The pod-template annotation holding the fingerprint of the credential a workload was last
/// restarted for: `restart.mxcred.io/<resource name>`.
pub fn annotation_key(credential: &str) -> String {
    format!("{ANNOTATION_DOMAIN}/{}", name_part(credential))
}

/// The server-side apply field manager of this resource's annotations on workloads.
pub fn field_manager(credential: &str) -> String {
    format!("mxcred-operator/restart/{}", name_part(credential))
}

/// The pod-template annotation of the ClusterMendixCredential `credential`:
/// `cluster.restart.mxcred.io/<resource name>`.
pub fn cluster_annotation_key(credential: &str) -> String {
    format!("{CLUSTER_ANNOTATION_DOMAIN}/{}", name_part(credential))
}

/// The server-side apply field manager of the ClusterMendixCredential `credential`'s
/// annotations: distinct from a namespaced resource's of the same name, whose apply would
/// otherwise remove this one's annotation.
pub fn cluster_field_manager(credential: &str) -> String {
    format!("mxcred-operator/cluster-restart/{}", name_part(credential))
}

/// The workloads a spec asks to restart, each once, in the order listed.
pub fn workloads(spec: &MendixCredentialSpec) -> Vec<WorkloadRef> {
    listed(
        spec.target
            .as_ref()
            .and_then(|t| t.rollout_restart.as_deref()),
    )
}

/// The workloads of a `rolloutRestart` list, each once, in the order listed.
pub fn listed(list: Option<&[WorkloadRef]>) -> Vec<WorkloadRef> {
    let mut seen = std::collections::BTreeSet::new();
    list.unwrap_or_default()
        .iter()
        .filter(|w| seen.insert(*w))
        .cloned()
        .collect()
}

/// The value under `key` in a workload's pod template annotations.
pub fn held<'a>(
    template_annotations: Option<&'a BTreeMap<String, String>>,
    key: &str,
) -> Option<&'a str> {
    template_annotations?.get(key).map(String::as_str)
}

/// Whether a workload whose pod template holds `held` under the resource's key must be patched
/// to `fingerprint`.
pub fn needs_patch(held: Option<&str>, fingerprint: &str) -> bool {
    held != Some(fingerprint)
}

/// The server-side apply body that sets the annotation and nothing else.
pub fn apply_body(workload: &WorkloadRef, key: &str, fingerprint: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": workload.kind.as_str(),
        "metadata": {"name": workload.name},
        "spec": {"template": {"metadata": {"annotations": {key: fingerprint}}}},
    })
}

/// Which request an answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Read,
    Patch,
}

impl Step {
    fn verb(self) -> &'static str {
        match self {
            Step::Read => "read",
            Step::Patch => "patch",
        }
    }
}

/// What became of one workload in a reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Its pod template holds `fingerprint` (it did, or now does).
    Holds { fingerprint: String },
    /// The API server answered `code` and `reason` (never its message, which may quote objects).
    Refused {
        step: Step,
        code: u16,
        reason: String,
    },
    /// No answer from the API server.
    Unanswered { step: Step },
}

/// The status entry of a workload after `outcome`. A failure keeps the fingerprint the
/// workload was last seen with, but for a workload that does not exist.
pub fn entry(
    workload: &WorkloadRef,
    outcome: &Outcome,
    previous: Option<&RolloutRestartStatus>,
) -> RolloutRestartStatus {
    let kind = workload.kind.as_str();
    let name = &workload.name;
    let (problem, message) = match outcome {
        Outcome::Holds { fingerprint } => {
            return RolloutRestartStatus {
                kind: workload.kind,
                name: workload.name.clone(),
                fingerprint: Some(fingerprint.clone()),
                reason: None,
                message: None,
            };
        }
        Outcome::Refused { code: 404, .. } => (
            RolloutRestartProblem::NotFound,
            format!(
                "{kind} {name:?} does not exist in this namespace; it is annotated (and so \
                 restarted) once it exists (checked every minute)"
            ),
        ),
        Outcome::Refused {
            step,
            code: 403,
            reason,
        } => (
            RolloutRestartProblem::Forbidden,
            format!(
                "the operator may not {} {kind} {name:?} (HTTP 403 {reason}): the chart must be \
                 installed with rolloutRestart.enabled=true, which grants get and patch on \
                 Deployments, StatefulSets and DaemonSets; or an admission policy refused it",
                step.verb()
            ),
        ),
        Outcome::Refused {
            step: step @ Step::Patch,
            code: code @ (400 | 422),
            reason,
        } => (
            RolloutRestartProblem::Invalid,
            format!(
                "the API server refused to {} {kind} {name:?} (HTTP {code} {reason}); see its \
                 admission policies or webhooks",
                step.verb()
            ),
        ),
        Outcome::Refused { step, code, reason } => (
            RolloutRestartProblem::Failed,
            format!(
                "could not {} {kind} {name:?} (HTTP {code} {reason}); tried again within a minute",
                step.verb()
            ),
        ),
        Outcome::Unanswered { step } => (
            RolloutRestartProblem::Failed,
            format!(
                "could not {} {kind} {name:?}: the API server did not answer; tried again \
                 within a minute",
                step.verb()
            ),
        ),
    };
    let fingerprint = match problem {
        RolloutRestartProblem::NotFound => None,
        _ => previous.and_then(|p| p.fingerprint.clone()),
    };
    RolloutRestartStatus {
        kind: workload.kind,
        name: workload.name.clone(),
        fingerprint,
        reason: Some(problem),
        message: Some(message),
    }
}

/// The previous status entry of `workload`.
pub fn previous_entry<'a>(
    previous: &'a MendixCredentialStatus,
    workload: &WorkloadRef,
) -> Option<&'a RolloutRestartStatus> {
    previous
        .rollout_restart
        .iter()
        .find(|e| e.kind == workload.kind && e.name == workload.name)
}

/// Adds the workloads' entries to the plan of a reconcile, and the Events that tell of their
/// difference from the previous status. `entries` is `None` when the target does not hold the
/// current credential: then nothing was tried and the entries stay as they were. A plan that
/// holds its status back is left as it is (the next reconcile finds the same).
pub fn amend(
    mut plan: Plan,
    previous: &MendixCredentialStatus,
    entries: Option<Vec<RolloutRestartStatus>>,
) -> Plan {
    let Some(entries) = entries else {
        return plan;
    };
    if plan.hold.is_some() {
        return plan;
    }
    let mut status = plan.status.take().unwrap_or_else(|| previous.clone());
    plan.events
        .extend(announcements(&previous.rollout_restart, &entries));
    status.rollout_restart = entries;
    plan.status = (status != *previous).then_some(status);
    plan
}

/// Whether some workload does not hold the current credential for a reason worth retrying.
pub fn failing(entries: &[RolloutRestartStatus]) -> bool {
    entries.iter().any(|e| e.reason.is_some())
}

/// A Normal Event for each workload that reached a new credential, a Warning one for each that
/// reached a new problem.
fn announcements(
    previous: &[RolloutRestartStatus],
    entries: &[RolloutRestartStatus],
) -> Vec<Announcement> {
    let mut events = vec![];
    for entry in entries {
        let before = previous
            .iter()
            .find(|p| p.kind == entry.kind && p.name == entry.name);
        match (&entry.reason, &entry.fingerprint) {
            (Some(problem), _) => {
                if before.and_then(|b| b.reason) != Some(*problem) {
                    events.push(Announcement {
                        warning: true,
                        reason: RESTART_FAILED,
                        note: entry.message.clone().unwrap_or_default(),
                    });
                }
            }
            (None, Some(fingerprint)) => {
                if before.and_then(|b| b.fingerprint.as_ref()) != Some(fingerprint) {
                    events.push(Announcement {
                        warning: false,
                        reason: RESTARTED,
                        note: format!(
                            "{} {:?} restarted for credential {fingerprint}",
                            entry.kind.as_str(),
                            entry.name
                        ),
                    });
                }
            }
            (None, None) => {}
        }
    }
    events
}

#[cfg(test)]
mod tests;
