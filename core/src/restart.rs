//! Restarting the consumers of a credential (`spec.target.rolloutRestart`), as plain data: the
//! annotation and field manager of a resource, the workload's consent, whether a workload needs
//! a patch and may have it now, the patch, when to try again, and what the status and the
//! Events say about it.
//!
//! Level-based: after each reconcile that finds the target Secret holding the current
//! credential, every listed workload that consents should hold that credential's fingerprint
//! under this resource's annotation in its pod template. A workload that holds it is left
//! alone, so a restart of the operator, a change of leader or a resync never restarts anything
//! again; a workload restarted less than the minimum interval ago waits for the rest of it, and
//! then gets the credential current at that time (changes within the interval come to one
//! restart).

use crate::api::{
    MendixCredentialSpec, MendixCredentialStatus, RolloutRestartProblem, RolloutRestartStatus,
    WorkloadKind, WorkloadRef,
};
use crate::plan::{Announcement, Plan};
use std::collections::BTreeMap;
use std::time::Duration;

mod keys;
pub use keys::*;

/// Event reasons.
pub const RESTARTED: &str = "RolloutRestarted";
pub const RESTART_FAILED: &str = "RolloutRestartFailed";

/// The longest wait before the workloads of a resource that could not all be brought to the
/// current credential are tried again (workloads are not watched: a missing one may appear,
/// and consent may be given, at any time). The first wait is `--restart-retry`.
pub const MAX_RETRY: Duration = Duration::from_secs(3600);

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

/// How long a workload last restarted at `last` (the latest change of any restart annotation
/// on it) must still wait for its next restart, if at all. A time in the future (another
/// clock) counts as now.
pub fn deferral(
    last: Option<jiff::Timestamp>,
    now: jiff::Timestamp,
    interval: Duration,
) -> Option<Duration> {
    let since = Duration::try_from(now.duration_since(last?)).unwrap_or_default();
    interval.checked_sub(since).filter(|wait| !wait.is_zero())
}

/// The wait before try number `attempt + 1` of workloads that failed `attempt` times in a row:
/// `first`, doubling, at most [`MAX_RETRY`].
pub fn retry_delay(attempt: u32, first: Duration) -> Duration {
    first
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(MAX_RETRY)
}

/// When the workloads of one namespace are due again after a try that came to `outcomes`:
/// `None` when every one holds the credential (or, for a cluster resource, does not exist).
/// `failing` says whether some is worth retrying with backoff; `deferred`, the shortest wait of
/// those waiting for their minimum interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    pub failing: bool,
    pub deferred: Option<Duration>,
}

/// What is pending after `outcomes`; `missing_is_settled` for a cluster resource.
pub fn pending<'a>(
    outcomes: impl IntoIterator<Item = &'a Outcome>,
    missing_is_settled: bool,
) -> Option<Pending> {
    let mut pending = Pending {
        failing: false,
        deferred: None,
    };
    for outcome in outcomes {
        match outcome {
            Outcome::Holds { .. } => {}
            Outcome::Refused { code: 404, .. } if missing_is_settled => {}
            Outcome::Deferred { wait, .. } => {
                pending.deferred = Some(pending.deferred.map_or(*wait, |d| d.min(*wait)));
            }
            _ => pending.failing = true,
        }
    }
    (pending.failing || pending.deferred.is_some()).then_some(pending)
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
    /// The workload does not list `entry` in its annotation [`CONSENT_ANNOTATION`]: left alone.
    NoConsent { entry: String },
    /// It needs a restart but had one less than the minimum interval ago: it still holds
    /// `held`, and is tried again after `wait`.
    Deferred {
        held: Option<String>,
        wait: Duration,
    },
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
        // Not a problem: the restart comes once the interval is over.
        Outcome::Deferred { held, .. } => {
            return RolloutRestartStatus {
                kind: workload.kind,
                name: workload.name.clone(),
                fingerprint: held.clone(),
                reason: None,
                message: None,
            };
        }
        Outcome::NoConsent { entry } => (
            RolloutRestartProblem::NoConsent,
            format!(
                "{kind} {name:?} is not restarted: its annotation {CONSENT_ANNOTATION} does not \
                 list {entry:?}. Whoever may edit it can add that entry (comma-separated) to \
                 have it restarted for this credential"
            ),
        ),
        Outcome::Refused { code: 404, .. } => (
            RolloutRestartProblem::NotFound,
            format!(
                "{kind} {name:?} does not exist in this namespace; it is annotated (and so \
                 restarted) once it exists (checked again after a growing delay, at most an \
                 hour)"
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
                "could not {} {kind} {name:?} (HTTP {code} {reason}); tried again later",
                step.verb()
            ),
        ),
        Outcome::Unanswered { step } => (
            RolloutRestartProblem::Failed,
            format!(
                "could not {} {kind} {name:?}: the API server did not answer; tried again \
                 later",
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

/// A Warning Event naming the workloads that reached a new problem, and a Normal one naming
/// those that reached a new credential: at most two Events, however many workloads.
fn announcements(
    previous: &[RolloutRestartStatus],
    entries: &[RolloutRestartStatus],
) -> Vec<Announcement> {
    let before = |entry: &RolloutRestartStatus| {
        previous
            .iter()
            .find(|p| p.kind == entry.kind && p.name == entry.name)
    };
    let describe = |e: &RolloutRestartStatus| format!("{} {:?}", e.kind.as_str(), e.name);
    let problems: Vec<&RolloutRestartStatus> = entries
        .iter()
        .filter(|e| e.reason.is_some() && before(e).and_then(|b| b.reason) != e.reason)
        .collect();
    let restarted: Vec<&RolloutRestartStatus> = entries
        .iter()
        .filter(|e| {
            e.reason.is_none()
                && e.fingerprint.is_some()
                && before(e).and_then(|b| b.fingerprint.as_ref()) != e.fingerprint.as_ref()
        })
        .collect();
    let mut events = vec![];
    if let Some(first) = problems.first() {
        let shown: Vec<String> = problems
            .iter()
            .map(|e| {
                format!(
                    "{} ({:?})",
                    describe(e),
                    e.reason.unwrap_or(RolloutRestartProblem::Failed)
                )
            })
            .collect();
        events.push(Announcement {
            warning: true,
            reason: RESTART_FAILED,
            note: bounded(format!(
                "{}. {}",
                few(&shown, ", "),
                first.message.clone().unwrap_or_default()
            )),
        });
    }
    if let Some(first) = restarted.first() {
        let shown: Vec<String> = restarted.iter().map(|e| describe(e)).collect();
        events.push(Announcement {
            warning: false,
            reason: RESTARTED,
            note: bounded(format!(
                "restarted for credential {}: {}",
                first.fingerprint.clone().unwrap_or_default(),
                few(&shown, ", ")
            )),
        });
    }
    events
}

/// An Event's note within the 1024 bytes the API server accepts (names may be long).
pub fn bounded(mut note: String) -> String {
    const MAX: usize = 1024;
    if note.len() > MAX {
        let mut cut = MAX - 3;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    note
}

/// A few items for an Event's note, and how many more.
pub fn few(items: &[String], separator: &str) -> String {
    const SHOWN: usize = 5;
    let shown = items
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(separator);
    match items.len().saturating_sub(SHOWN) {
        0 => shown,
        more => format!("{shown}{separator}and {more} more"),
    }
}

#[cfg(test)]
mod tests;
