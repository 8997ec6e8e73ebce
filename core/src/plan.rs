//! What a reconcile decides, as plain data: the status to write, the Events to publish and what
//! to remember once both are done. The reconcile driver observes (the previous status, the
//! source, the target, the platform's answer, the time), calls [`reconcile`], and applies the
//! [`Plan`] in order, each step only after the one before it succeeded.
//!
//! Events are derived from the difference between the previous status and the new one, never
//! from memory: a status write that fails is retried from the same previous status, so the
//! retry announces what the failed attempt would have.

use crate::api::{CredentialType, MendixCredentialStatus, condition};
use crate::classify::{Outcome, Reason, TokenValid};
use crate::conditions::{self, Verdict};
use crate::consumers::{Consumers, with_affected};
use crate::credential;
use crate::due;
pub use crate::ready::{Ready, ReadyReason};
use crate::rotation::{self, Held};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// What the sync step established about the target Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sync {
    /// The target holds the current credential.
    Published {
        target: String,
        /// Its fingerprint, for people (and restart annotations).
        fingerprint: String,
        /// Its digest: what decides whether it is the credential published before.
        digest: String,
        /// When the target's data was last written, as the API server recorded it.
        written_at: Option<Time>,
        /// Whether this reconcile wrote it (for logs and metrics: the plan goes by
        /// `written_at`, which the retry of a failed status write finds the same).
        wrote: bool,
        /// Whether the platform accepted it before it replaced a working credential (rotation
        /// policy VerifyFirst).
        checked_first: bool,
    },
    /// A new credential in the source waits for the platform's verdict (rotation policy
    /// VerifyFirst); the target keeps the published one.
    Held {
        target: String,
        /// The fingerprint of the credential the target holds.
        published: String,
        /// The fingerprint of the new credential.
        pending: String,
        held: Held,
    },
    /// Nothing was written; the target (if any) was left as it was.
    Refused(Ready),
}

impl Sync {
    /// Whether the target holds a credential of this resource that the verification concerns.
    fn publishes(&self) -> bool {
        matches!(self, Sync::Published { .. } | Sync::Held { .. })
    }
}

/// What the verification loop knows of the published credential.
#[derive(Clone, Debug, PartialEq)]
pub enum Verification {
    /// `spec.verification.enabled: false`.
    Disabled,
    /// No answer from this instance, and none due: the status's own verdict still holds (after
    /// a restart), or there is no credential to check.
    Waiting,
    /// The first check of this credential is under way or due now, since `since`.
    Queued {
        since: Time,
    },
    Answered(Answer),
}

/// The platform's latest answer about a credential and probe.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub outcome: Outcome,
    pub answered_at: Time,
    /// When the next check is due.
    pub next: Option<Time>,
    /// Whether the answer serves the pending forced check of this resource (asked no earlier
    /// than the request was seen).
    pub serves_request: bool,
}

/// Everything a reconcile observed.
#[derive(Clone, Debug)]
pub struct Observed<'a> {
    pub generation: Option<i64>,
    /// The credential type in effect, when the spec could be resolved.
    pub credential_type: Option<CredentialType>,
    pub previous: &'a MendixCredentialStatus,
    pub sync: Sync,
    pub verification: Verification,
    /// How to judge the published credential's age, and the source's time annotations.
    pub due: due::Inputs,
    /// The workloads that use the target; `None` while they are not known yet (the status
    /// keeps what it recorded).
    pub consumers: Option<Consumers>,
    pub now: Time,
}

/// An Event to publish, after the status that records it is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

/// What to write, publish and remember.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The status to write; `None` when it is as it was.
    pub status: Option<MendixCredentialStatus>,
    pub events: Vec<Announcement>,
    pub ready: ReadyReason,
    /// The pending forced check has been served: remember it once the status is written.
    pub request_served: bool,
    /// The status is held back this long for the first answer about a new credential, so that
    /// a new resource, or a rotation, costs one status write instead of two.
    pub hold: Option<std::time::Duration>,
    /// How long until `RotationDue` changes by the clock alone: the reconcile comes back then.
    pub due_in: Option<std::time::Duration>,
}

/// The Event that announces a new published credential replacing another.
pub const ROTATED: &str = "Rotated";

/// How long a status waits for the first answer about a new credential before it says
/// `Pending`.
pub const FIRST_ANSWER_HOLD: std::time::Duration = std::time::Duration::from_secs(3);

/// Decides the status and the Events of one reconcile: the target's part of the status and
/// `Ready`, then `RotationDue`, then what the verification loop knows; then the Events, from
/// the difference with the previous status.
pub fn reconcile(observed: Observed) -> Plan {
    let Observed {
        generation,
        credential_type,
        previous,
        sync,
        verification,
        due,
        consumers,
        now,
    } = observed;
    let mut status = previous.clone();
    status.observed_generation = generation;
    if credential_type.is_some() {
        status.credential_type = credential_type;
    }
    if consumers.is_some() {
        status.consumers = consumers;
    }
    let mut ready = record_sync(&mut status, previous, &sync);
    if ready.reason == ReadyReason::RotationRejected {
        ready.message = with_affected(&ready.message, status.consumers.as_ref());
    }
    conditions::set(
        &mut status.conditions,
        Verdict {
            type_: condition::READY,
            status: ready.reason.status(),
            reason: ready.reason.as_str(),
            message: ready.message.clone(),
        },
        generation,
        now.clone(),
    );
    let due_in = match &sync {
        Sync::Published { .. } => judge_due(&mut status, &due, generation, &now),
        _ => None,
    };
    let held_since = match &sync {
        Sync::Held {
            held: Held::Queued { since },
            ..
        } => remaining_hold(since, &now),
        _ => None,
    };
    let (request_served, queued) = record_verification(
        &mut status,
        verification,
        sync.publishes(),
        generation,
        &now,
    );
    name_affected(&mut status);
    let hold = held_since.or(queued);
    if hold.is_some() {
        return Plan {
            status: None,
            events: vec![],
            ready: ready.reason,
            request_served,
            hold,
            due_in: None,
        };
    }
    let checked_first = matches!(
        sync,
        Sync::Published {
            checked_first: true,
            ..
        }
    );
    Plan {
        events: announcements(previous, &status, &ready, checked_first),
        status: (status != *previous).then_some(status),
        ready: ready.reason,
        request_served,
        hold,
        due_in,
    }
}

/// Records in `status` what the sync step established about the target; returns `Ready`.
fn record_sync(
    status: &mut MendixCredentialStatus,
    previous: &MendixCredentialStatus,
    sync: &Sync,
) -> Ready {
    match sync {
        Sync::Published {
            target,
            fingerprint,
            digest,
            written_at,
            wrote: _,
            checked_first: _,
        } => {
            let rotated = !previous
                .published_digest()
                .is_some_and(|d| credential::is_recorded(d, digest));
            if rotated {
                forget_verdict(status);
            }
            // The time of the write, when the target was written since the status recorded one.
            // Decided from the times alone, not from whether this reconcile wrote it: the retry
            // of a failed status write finds the target as the first attempt left it, and records
            // the same. A target unchanged since the status was written (read by another
            // instance, or after a restart) changes nothing.
            if rotated || written_since(written_at.as_ref(), previous.last_synced_time.as_ref()) {
                status.last_synced_time = written_at.clone().or(previous.last_synced_time.clone());
            }
            // The API server's time of the write, which the retry of a failed status write
            // finds the same; none while no target records one.
            if rotated || status.published_time.is_none() {
                status.published_time = written_at.clone();
            }
            status.token_fingerprint = Some(fingerprint.clone());
            status.token_digest = Some(digest.clone());
            status.secret_name = Some(target.clone());
            status.pending_fingerprint = None;
            Ready {
                reason: ReadyReason::Synced,
                message: format!("Secret {target:?} holds the current credential"),
            }
        }
        Sync::Held {
            target,
            published,
            pending,
            held,
        } => {
            status.pending_fingerprint = Some(pending.clone());
            rotation::ready(target, published, pending, held)
        }
        Sync::Refused(ready) => {
            status.pending_fingerprint = None;
            ready.clone()
        }
    }
}

/// Records in `status` what the verification loop knows of the credential the target holds
/// (`publishes`: whether it holds one of this resource); returns whether the pending forced
/// check was served, and how long the status waits for the first answer.
fn record_verification(
    status: &mut MendixCredentialStatus,
    verification: Verification,
    publishes: bool,
    generation: Option<i64>,
    now: &Time,
) -> (bool, Option<std::time::Duration>) {
    let pending_unless_known = |status: &mut MendixCredentialStatus| {
        if conditions::find(&status.conditions, condition::TOKEN_VALID).is_none() {
            record(status, &Outcome::pending(), generation, now.clone());
        }
    };
    match verification {
        Verification::Disabled => {
            let outcome = Outcome::verification_disabled();
            record(status, &outcome, generation, now.clone());
            status.next_verification_time = None;
            (false, None)
        }
        Verification::Answered(answer) if publishes => {
            record(status, &answer.outcome, generation, answer.answered_at);
            status.next_verification_time = answer.next;
            (answer.serves_request, None)
        }
        Verification::Queued { since } if publishes => {
            pending_unless_known(status);
            (false, remaining_hold(&since, now))
        }
        Verification::Answered(_) | Verification::Queued { .. } | Verification::Waiting => {
            pending_unless_known(status);
            (false, None)
        }
    }
}

/// Names the workloads a rejected credential breaks in TokenValid's message, as they are now.
fn name_affected(status: &mut MendixCredentialStatus) {
    let consumers = status.consumers.clone();
    if let Some(valid) = status
        .conditions
        .iter_mut()
        .find(|c| c.type_ == condition::TOKEN_VALID && c.status == "False")
    {
        valid.message = with_affected(&valid.message, consumers.as_ref());
    }
}

/// Sets `RotationDue` and `rotateBy` for the credential published since
/// `status.publishedTime`; returns how long until the judgement changes by the clock alone.
fn judge_due(
    status: &mut MendixCredentialStatus,
    inputs: &due::Inputs,
    generation: Option<i64>,
    now: &Time,
) -> Option<std::time::Duration> {
    let Some(judged) = due::judge(inputs, status.published_time.as_ref(), now) else {
        status
            .conditions
            .retain(|c| c.type_ != condition::ROTATION_DUE);
        status.rotate_by = None;
        return None;
    };
    status.rotate_by = judged.rotate_by;
    conditions::set(
        &mut status.conditions,
        Verdict {
            type_: condition::ROTATION_DUE,
            status: judged.reason.status(),
            reason: judged.reason.as_str(),
            message: judged.message,
        },
        generation,
        now.clone(),
    );
    judged.changes_in
}

/// Whether a target last written at `written_at` was written since the status recorded a write
/// at `last_synced`: none is recorded, or the target's time is later. Both are the API server's
/// time of a write, and compared to the second, as the status keeps them; a target unchanged
/// since the status was written has the time it records, whichever instance reads it.
pub fn written_since(written_at: Option<&Time>, last_synced: Option<&Time>) -> bool {
    last_synced.is_none_or(|recorded| {
        written_at.is_some_and(|written| written.0.as_second() > recorded.0.as_second())
    })
}

/// What is left of [`FIRST_ANSWER_HOLD`] for a check queued `since`.
fn remaining_hold(since: &Time, now: &Time) -> Option<std::time::Duration> {
    let waited = now.0.duration_since(since.0).unsigned_abs();
    FIRST_ANSWER_HOLD
        .checked_sub(waited)
        .filter(|h| !h.is_zero())
}

/// A verdict on one credential says nothing about the next.
fn forget_verdict(status: &mut MendixCredentialStatus) {
    status
        .conditions
        .retain(|c| c.type_ != condition::TOKEN_VALID);
    status.last_verified_time = None;
    status.last_verification_error = None;
    status.next_verification_time = None;
}

/// Whether a reason is a verdict on the credential rather than on the attempt.
pub fn is_definitive(reason: Reason) -> bool {
    reason.status() != TokenValid::Unknown || reason == Reason::VerificationDisabled
}

/// Records `outcome` in `status`. A transient outcome never replaces a definitive verdict: it
/// only sets `lastVerificationError`. Returns the new reason when `TokenValid` changed reason.
pub fn record(
    status: &mut MendixCredentialStatus,
    outcome: &Outcome,
    generation: Option<i64>,
    now: Time,
) -> Option<Reason> {
    let previous = conditions::find(&status.conditions, condition::TOKEN_VALID)
        .map(|c| (c.status.clone(), c.reason.clone()));
    let previous_was_verdict = previous.as_ref().is_some_and(|(s, _)| s != "Unknown");
    if is_definitive(outcome.reason) {
        if outcome.reason != Reason::VerificationDisabled {
            status.last_verified_time = Some(now.clone());
        }
        status.last_verification_error = None;
    } else {
        status.last_verification_error = Some(outcome.message.clone());
        if previous_was_verdict {
            return None;
        }
    }
    let verdict = Verdict {
        type_: condition::TOKEN_VALID,
        status: outcome.reason.status().as_str(),
        reason: outcome.reason.as_str(),
        message: outcome.message.clone(),
    };
    conditions::set(&mut status.conditions, verdict, generation, now);
    let changed = previous.is_none_or(|(_, reason)| reason != outcome.reason.as_str());
    changed.then_some(outcome.reason)
}

mod announce;
mod target;
use announce::announcements;
pub use target::{TargetAction, source_refused, target_action, target_conflict};

#[cfg(test)]
mod tests;
