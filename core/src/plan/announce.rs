//! The Events of a plan: derived from the difference between the previous status and the new
//! one, never from memory.

use super::{Announcement, ROTATED, Ready, ReadyReason};
use crate::api::{MendixCredentialStatus, condition};
use crate::classify::Reason;
use crate::conditions;
use crate::credential;

/// The Events that tell of the difference between two statuses: a write of the target, and
/// transitions into a reason people must hear about.
pub(super) fn announcements(
    previous: &MendixCredentialStatus,
    status: &MendixCredentialStatus,
    ready: &Ready,
    checked_first: bool,
) -> Vec<Announcement> {
    let mut events = vec![];
    let reason_of = |s: &MendixCredentialStatus, type_| {
        conditions::find(&s.conditions, type_).map(|c| c.reason.clone())
    };
    if ready.reason == ReadyReason::Synced
        && status.last_synced_time.is_some()
        && status.last_synced_time != previous.last_synced_time
    {
        let target = status.secret_name.clone().unwrap_or_default();
        events.push(Announcement {
            warning: false,
            reason: ReadyReason::Synced.as_str(),
            note: format!("wrote Secret {target}"),
        });
    }
    if let (Some(old), Some(new), Some(published)) = (
        &previous.token_fingerprint,
        &status.token_fingerprint,
        previous.published_digest(),
    ) && !status
        .token_digest
        .as_deref()
        .is_some_and(|d| credential::is_recorded(published, d))
    {
        let target = status.secret_name.clone().unwrap_or_default();
        let checked = if checked_first {
            " after the platform accepted it"
        } else {
            ""
        };
        events.push(Announcement {
            warning: false,
            reason: ROTATED,
            note: format!("published {new} in Secret {target}{checked}, replacing {old}"),
        });
    }
    // A new rejected credential is announced too, though the reason stays the same.
    let ready_changed = reason_of(previous, condition::READY).as_deref()
        != Some(ready.reason.as_str())
        || (ready.reason == ReadyReason::RotationRejected
            && previous.pending_fingerprint != status.pending_fingerprint);
    if ready.reason.warns() && ready_changed {
        events.push(Announcement {
            warning: true,
            reason: ready.reason.as_str(),
            note: ready.message.clone(),
        });
    }
    if let Some(due) = conditions::find(&status.conditions, condition::ROTATION_DUE)
        && due.status == "True"
        && conditions::find(&previous.conditions, condition::ROTATION_DUE)
            .is_none_or(|c| c.status != "True" || c.reason != due.reason)
    {
        events.push(Announcement {
            warning: true,
            reason: condition::ROTATION_DUE,
            note: format!("{}: {}", due.reason, due.message),
        });
    }
    if let Some(valid) = conditions::find(&status.conditions, condition::TOKEN_VALID) {
        let announced = [
            Reason::Verified,
            Reason::TokenRejected,
            Reason::UserDeactivated,
        ]
        .into_iter()
        .find(|r| r.as_str() == valid.reason);
        if let Some(reason) = announced
            && reason_of(previous, condition::TOKEN_VALID).as_deref() != Some(reason.as_str())
        {
            events.push(Announcement {
                warning: reason != Reason::Verified,
                reason: reason.as_str(),
                note: valid.message.clone(),
            });
        }
    }
    events
}
