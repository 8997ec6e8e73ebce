//! What to do with a target Secret, given what exists under its name, and the `Ready` of a
//! source or target that cannot be used: the decisions about Secrets, beside the plan of the
//! status.

use super::{Ready, ReadyReason};
use crate::credential::SourceError;
use crate::render;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// What to do with the target Secret, given what exists under its name.
#[derive(Clone, Debug, PartialEq)]
pub enum TargetAction {
    /// Someone else's Secret holds the name: leave it alone.
    Conflict,
    /// It already holds the desired content, as written at this time.
    Keep { written_at: Option<Time> },
    /// Create the desired Secret: there is none under its name. A create, not an apply, so
    /// that a Secret someone else creates meanwhile makes it fail instead of being taken over.
    Create,
    /// Apply the desired Secret, on condition that the target is still at `resource_version`.
    Apply { resource_version: String },
}

/// Decides what to do with the target, given the Secret found under its name (`None`: none).
pub fn target_action(
    existing: Option<&Secret>,
    desired: &Secret,
    publisher: render::Publisher,
) -> TargetAction {
    match existing {
        Some(existing) if !publisher.owns(existing) => TargetAction::Conflict,
        Some(existing) if render::is_current(existing, desired) => TargetAction::Keep {
            written_at: render::applied_at(existing),
        },
        Some(existing) => TargetAction::Apply {
            resource_version: existing
                .metadata
                .resource_version
                .clone()
                .unwrap_or_default(),
        },
        None => TargetAction::Create,
    }
}

/// The condition for a source whose values cannot be used.
pub fn source_refused(problem: &SourceError) -> Ready {
    match problem {
        SourceError::NotAllowed { .. } => {
            Ready::refused(ReadyReason::SourceNotAllowed, problem.to_string())
        }
        SourceError::KeyMissing { .. } => {
            Ready::refused(ReadyReason::SourceKeyMissing, problem.to_string())
        }
        SourceError::Invalid { .. } => Ready::refused(
            ReadyReason::InvalidSource,
            format!("{problem}; the target Secret was left as it was"),
        ),
    }
}

/// The condition that a target which cannot be written is reported with.
pub fn target_conflict(target: &str) -> Ready {
    Ready::refused(
        ReadyReason::TargetConflict,
        format!(
            "Secret {target:?} exists and is not managed by this MendixCredential; delete or \
             rename it, or choose another spec.target.name"
        ),
    )
}
