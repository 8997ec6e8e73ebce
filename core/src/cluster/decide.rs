//! The decisions of a reconcile of a ClusterMendixCredential: its status and Events, from
//! what each namespace's copy came to. The credential half is decided by
//! [`crate::plan`], as for a `MendixCredential`.

use super::{ClusterMendixCredentialStatus, FailedNamespace, MAX_FAILED_NAMESPACES, Selected};
use crate::api::{CredentialType, MendixCredentialStatus, condition};
use crate::conditions::{self, Verdict};
use crate::credential;
use crate::due;
use crate::plan::{self, Announcement, Observed, Ready, ReadyReason, Sync};
use crate::rotation::Held;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::collections::{BTreeMap, BTreeSet};

/// How the copy of one namespace came out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CopyOutcome {
    /// The namespace holds the current credential.
    Synced {
        written_at: Option<Time>,
        wrote: bool,
    },
    /// A Secret of that name that is not ours: left alone.
    Conflict,
    /// The API server refused the Secret (fields named, no values).
    Invalid(String),
    /// The write failed (code and reason only); retried.
    Failed(String),
}

/// Why a namespace is listed in `status.failedNamespaces`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailedReason {
    /// A Secret of the target name exists and is not ours.
    TargetConflict,
    /// The API server refused the Secret.
    InvalidTarget,
    /// The write failed; retried.
    WriteFailed,
    /// Listed, but does not exist.
    NamespaceNotFound,
    /// Being deleted.
    NamespaceTerminating,
}

impl FailedReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailedReason::TargetConflict => "TargetConflict",
            FailedReason::InvalidTarget => "InvalidTarget",
            FailedReason::WriteFailed => "WriteFailed",
            FailedReason::NamespaceNotFound => "NamespaceNotFound",
            FailedReason::NamespaceTerminating => "NamespaceTerminating",
        }
    }
}

/// The reason of `Ready` when some selected namespace does not hold the credential.
pub const NAMESPACES_FAILED: &str = "NamespacesFailed";

/// Everything a reconcile of a ClusterMendixCredential observed.
#[derive(Clone, Debug)]
pub struct ClusterObserved<'a> {
    pub generation: Option<i64>,
    pub credential_type: Option<CredentialType>,
    pub previous: &'a ClusterMendixCredentialStatus,
    pub target: String,
    /// The digest of the credential the copies hold, or why none could be used.
    pub source: Result<String, Ready>,
    /// A new credential in the source held back (rotation policy VerifyFirst): its
    /// fingerprint, and why; the copies keep the published one.
    pub held: Option<(String, Held)>,
    /// Whether the platform accepted the credential before it replaced a working one.
    pub checked_first: bool,
    /// The copy of each active selected namespace (empty when the source could not be used).
    pub copies: BTreeMap<String, CopyOutcome>,
    pub selected: Selected,
    pub verification: plan::Verification,
    /// How to judge the published credential's age, and the source's time annotations.
    pub due: due::Inputs,
    /// The workloads that use the copies, in all namespaces; `None` while not known yet.
    pub consumers: Option<crate::consumers::Consumers>,
    pub now: Time,
}

/// What to write, publish and remember.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterPlan {
    pub status: Option<ClusterMendixCredentialStatus>,
    pub events: Vec<Announcement>,
    /// The Ready reason, for logs and metrics.
    pub ready: &'static str,
    pub request_served: bool,
    pub hold: Option<std::time::Duration>,
    /// Some namespace failed for a reason that may pass (a conflict, a failed write).
    pub retry: bool,
    /// How long until `RotationDue` changes by the clock alone.
    pub due_in: Option<std::time::Duration>,
}

/// Decides the status and Events of one reconcile. The credential half is decided as for a
/// `MendixCredential`; `Ready` then says whether every selected namespace holds it.
pub fn plan(observed: ClusterObserved) -> ClusterPlan {
    let ClusterObserved {
        generation,
        credential_type,
        previous,
        target,
        source,
        held,
        checked_first,
        copies,
        selected,
        verification,
        due,
        consumers,
        now,
    } = observed;
    let core_previous = previous.core();
    let synced: Vec<Synced> = copies
        .iter()
        .filter_map(|(ns, c)| match c {
            CopyOutcome::Synced { written_at, wrote } => Some((ns.as_str(), written_at, *wrote)),
            _ => None,
        })
        .collect();
    let core_plan = plan::reconcile(Observed {
        generation,
        credential_type,
        previous: &core_previous,
        sync: credential_sync(&target, &source, &held, checked_first, &synced),
        verification,
        due,
        consumers,
        now: now.clone(),
    });
    if core_plan.hold.is_some() {
        return ClusterPlan {
            status: None,
            events: vec![],
            ready: core_plan.ready.as_str(),
            request_served: core_plan.request_served,
            hold: core_plan.hold,
            retry: false,
            due_in: None,
        };
    }
    let mut core = core_plan.status.unwrap_or(core_previous);
    let (selected_count, synced_count) = (selected.active.len(), synced.len());
    // A rotation held back: the credential half said why.
    let held_ready = conditions::find(&core.conditions, condition::READY)
        .filter(|_| held.is_some())
        .map(|c| (core_plan.ready, c.message.clone()));
    let verdict = cluster_ready(&source, held_ready, &target, selected_count, synced_count);
    let ready_reason = verdict.reason;
    set_ready(&mut core, previous, verdict, generation, now);

    let failures = failures(&copies, &selected);
    let mut status = ClusterMendixCredentialStatus::from_core(core);
    if source.is_ok() {
        status.selected = Some(count(selected_count));
        status.synced = Some(count(synced_count));
        status.namespaces = Some(format!("{synced_count}/{selected_count}"));
        status.failed_namespace_count = Some(count(failures.len()));
        status.failed_namespaces = failures
            .iter()
            .take(MAX_FAILED_NAMESPACES)
            .cloned()
            .collect();
    }
    let events = announcements(
        core_plan.events,
        &target,
        &synced,
        &new_conflicts(&copies, &failures, previous),
        previous,
    );
    let retry = copies
        .values()
        .any(|c| matches!(c, CopyOutcome::Conflict | CopyOutcome::Failed(_)));
    ClusterPlan {
        status: (status != *previous).then_some(status),
        events,
        ready: ready_reason,
        request_served: core_plan.request_served,
        hold: None,
        retry,
        due_in: core_plan.due_in,
    }
}

/// A namespace whose copy holds the credential: when it was written, and whether this
/// reconcile wrote it.
type Synced<'a> = (&'a str, &'a Option<Time>, bool);

/// What the copies came to, as the credential half of the plan sees one target: the latest
/// write of any copy.
fn credential_sync(
    target: &str,
    source: &Result<String, Ready>,
    held: &Option<(String, Held)>,
    checked_first: bool,
    synced: &[Synced],
) -> Sync {
    match (source, held) {
        (Ok(published), Some((pending, held))) => Sync::Held {
            target: target.to_owned(),
            published: credential::fingerprint_of(published),
            pending: pending.clone(),
            held: held.clone(),
        },
        (Ok(digest), None) => Sync::Published {
            target: target.to_owned(),
            fingerprint: credential::fingerprint_of(digest),
            digest: digest.clone(),
            written_at: synced.iter().filter_map(|(_, at, _)| (*at).clone()).max(),
            wrote: synced.iter().any(|(_, _, wrote)| *wrote),
            checked_first,
        },
        (Err(ready), _) => Sync::Refused(ready.clone()),
    }
}

/// `Ready` of the resource: the source's refusal, a rotation held back (`held`: the credential
/// half's reason and message), or whether every selected namespace holds the credential.
fn cluster_ready(
    source: &Result<String, Ready>,
    held: Option<(ReadyReason, String)>,
    target: &str,
    selected: usize,
    synced: usize,
) -> Verdict {
    let (status, reason, message) = match (source, held) {
        (Err(ready), _) => ("False", ready.reason.as_str(), ready.message.clone()),
        (Ok(_), Some((reason, message))) => (reason.status(), reason.as_str(), message),
        (Ok(_), None) if synced == selected => (
            "True",
            ReadyReason::Synced.as_str(),
            format!(
                "Secret {target:?} holds the current credential in all {selected} selected namespaces"
            ),
        ),
        (Ok(_), None) => (
            "False",
            NAMESPACES_FAILED,
            format!(
                "{} of {selected} selected namespaces do not hold the current credential; see status.failedNamespaces",
                selected - synced
            ),
        ),
    };
    Verdict {
        type_: condition::READY,
        status,
        reason,
        message,
    }
}

/// Sets `Ready` in the credential half `core`, from the previous Ready (not from the one the
/// credential half set), and first, as a MendixCredential's status has it.
fn set_ready(
    core: &mut MendixCredentialStatus,
    previous: &ClusterMendixCredentialStatus,
    verdict: Verdict,
    generation: Option<i64>,
    now: Time,
) {
    core.conditions.retain(|c| c.type_ != condition::READY);
    if let Some(c) = conditions::find(&previous.conditions, condition::READY) {
        core.conditions.insert(0, c.clone());
    }
    conditions::set(&mut core.conditions, verdict, generation, now);
    core.conditions.sort_by_key(|c| c.type_ != condition::READY);
}

/// The Events: the credential half's, its `Synced` naming the namespaces whose copy was written
/// since the status recorded a write (as the credential half decides whether there was one: the
/// retry of a failed status write names the same), and the conflicts that are new.
fn announcements(
    credential_half: Vec<Announcement>,
    target: &str,
    synced: &[Synced],
    new_conflicts: &[&str],
    previous: &ClusterMendixCredentialStatus,
) -> Vec<Announcement> {
    let written: Vec<&str> = synced
        .iter()
        .filter(|(_, at, _)| plan::written_since(at.as_ref(), previous.last_synced_time.as_ref()))
        .map(|(ns, _, _)| *ns)
        .collect();
    let mut events: Vec<Announcement> = credential_half
        .into_iter()
        .map(|mut e| {
            if e.reason == ReadyReason::Synced.as_str() {
                e.note = format!("wrote Secret {target} in {}", listed(&written));
            }
            e
        })
        .collect();
    if !new_conflicts.is_empty() {
        events.push(Announcement {
            warning: true,
            reason: ReadyReason::TargetConflict.as_str(),
            note: format!(
                "Secret {target} exists and is not managed by this ClusterMendixCredential in {}; left untouched",
                listed(new_conflicts)
            ),
        });
    }
    events
}

/// The namespaces whose copy conflicts and did not before, as far as the previous status tells.
///
/// `status.failedNamespaces` lists the first [`MAX_FAILED_NAMESPACES`] failures by name and
/// `failedNamespaceCount` counts them all. Up to the last one listed the list is complete: a
/// conflict there is new unless listed as one. Beyond it, the previous status only tells how
/// many failed; the conflicts there are new when more namespaces fail there than did (at least
/// one of them is new; which ones cannot be told, so all are named). A steady state is never
/// announced again; a new conflict beyond the list is, unless a failure there passed meanwhile.
fn new_conflicts<'a>(
    copies: &'a BTreeMap<String, CopyOutcome>,
    failures: &[FailedNamespace],
    previous: &ClusterMendixCredentialStatus,
) -> Vec<&'a str> {
    let listed = &previous.failed_namespaces;
    let unlisted = previous
        .failed_namespace_count
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0)
        .saturating_sub(listed.len());
    let last_listed = listed.iter().map(|f| f.namespace.as_str()).max();
    let beyond_the_list = |ns: &str| unlisted > 0 && last_listed.is_none_or(|last| ns > last);
    let more_fail_beyond = failures
        .iter()
        .filter(|f| beyond_the_list(&f.namespace))
        .count()
        > unlisted;
    let conflicted_before: BTreeSet<&str> = listed
        .iter()
        .filter(|f| f.reason == FailedReason::TargetConflict.as_str())
        .map(|f| f.namespace.as_str())
        .collect();
    copies
        .iter()
        .filter(|(_, c)| **c == CopyOutcome::Conflict)
        .map(|(ns, _)| ns.as_str())
        .filter(|ns| {
            if beyond_the_list(ns) {
                more_fail_beyond
            } else {
                !conflicted_before.contains(ns)
            }
        })
        .collect()
}

/// The failed namespaces, sorted by name.
fn failures(copies: &BTreeMap<String, CopyOutcome>, selected: &Selected) -> Vec<FailedNamespace> {
    let entry = |ns: &str, reason: FailedReason, message: String| FailedNamespace {
        namespace: ns.to_owned(),
        reason: reason.as_str().to_owned(),
        message,
    };
    let mut out: Vec<FailedNamespace> = copies
        .iter()
        .filter_map(|(ns, c)| match c {
            CopyOutcome::Synced { .. } => None,
            CopyOutcome::Conflict => Some(entry(
                ns,
                FailedReason::TargetConflict,
                "a Secret of this name exists and is not managed by this ClusterMendixCredential; it was left untouched".into(),
            )),
            CopyOutcome::Invalid(m) => Some(entry(ns, FailedReason::InvalidTarget, m.clone())),
            CopyOutcome::Failed(m) => Some(entry(ns, FailedReason::WriteFailed, m.clone())),
        })
        .collect();
    out.extend(selected.missing.iter().map(|ns| {
        entry(
            ns,
            FailedReason::NamespaceNotFound,
            "listed in spec.target.namespaces but does not exist".into(),
        )
    }));
    out.extend(selected.terminating.iter().map(|ns| {
        entry(
            ns,
            FailedReason::NamespaceTerminating,
            "being deleted: no Secret is written there".into(),
        )
    }));
    out.sort_by(|a, b| a.namespace.cmp(&b.namespace));
    out
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// A few names for an Event's note, and how many more.
fn listed(names: &[&str]) -> String {
    const SHOWN: usize = 5;
    let shown = names
        .iter()
        .take(SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    match names.len() {
        0 => "no namespace".into(),
        1 => format!("namespace {shown}"),
        n if n <= SHOWN => format!("namespaces {shown}"),
        n => format!("{n} namespaces ({shown}, ...)"),
    }
}

impl ClusterMendixCredentialStatus {
    /// The credential half, as a MendixCredential's status.
    /// The restarts are left out: this kind reports them per namespace
    /// (`rolloutRestartFailures`), not as a namespaced resource does.
    pub fn core(&self) -> MendixCredentialStatus {
        MendixCredentialStatus {
            observed_generation: self.observed_generation,
            credential_type: self.credential_type,
            secret_name: self.secret_name.clone(),
            token_fingerprint: self.token_fingerprint.clone(),
            token_digest: self.token_digest.clone(),
            pending_fingerprint: self.pending_fingerprint.clone(),
            last_synced_time: self.last_synced_time.clone(),
            published_time: self.published_time.clone(),
            rotate_by: self.rotate_by.clone(),
            last_verified_time: self.last_verified_time.clone(),
            next_verification_time: self.next_verification_time.clone(),
            last_verification_error: self.last_verification_error.clone(),
            conditions: self.conditions.clone(),
            rollout_restart: Vec::new(),
            consumers: self.consumers.clone(),
        }
    }

    /// A status with the credential half of `core` and no namespace counts.
    pub fn from_core(core: MendixCredentialStatus) -> Self {
        ClusterMendixCredentialStatus {
            observed_generation: core.observed_generation,
            credential_type: core.credential_type,
            secret_name: core.secret_name,
            token_fingerprint: core.token_fingerprint,
            token_digest: core.token_digest,
            pending_fingerprint: core.pending_fingerprint,
            last_synced_time: core.last_synced_time,
            published_time: core.published_time,
            rotate_by: core.rotate_by,
            last_verified_time: core.last_verified_time,
            next_verification_time: core.next_verification_time,
            last_verification_error: core.last_verification_error,
            conditions: core.conditions,
            consumers: core.consumers,
            ..Default::default()
        }
    }
}
