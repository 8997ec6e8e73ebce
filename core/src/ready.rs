//! The `Ready` condition: whether the target Secret holds the current credential, and if not,
//! why.

/// The reason of the `Ready` condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadyReason {
    Synced,
    SourceNotFound,
    SourceNotAllowed,
    SourceKeyMissing,
    InvalidSource,
    TargetConflict,
    InvalidSpec,
    RotationRejected,
    RotationPending,
}

impl ReadyReason {
    pub const ALL: [ReadyReason; 9] = [
        ReadyReason::Synced,
        ReadyReason::SourceNotFound,
        ReadyReason::SourceNotAllowed,
        ReadyReason::SourceKeyMissing,
        ReadyReason::InvalidSource,
        ReadyReason::TargetConflict,
        ReadyReason::InvalidSpec,
        ReadyReason::RotationRejected,
        ReadyReason::RotationPending,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReadyReason::Synced => "Synced",
            ReadyReason::SourceNotFound => "SourceNotFound",
            ReadyReason::SourceNotAllowed => "SourceNotAllowed",
            ReadyReason::SourceKeyMissing => "SourceKeyMissing",
            ReadyReason::InvalidSource => "InvalidSource",
            ReadyReason::TargetConflict => "TargetConflict",
            ReadyReason::InvalidSpec => "InvalidSpec",
            ReadyReason::RotationRejected => "RotationRejected",
            ReadyReason::RotationPending => "RotationPending",
        }
    }

    /// The status of `Ready` with this reason.
    pub fn status(self) -> &'static str {
        match self {
            ReadyReason::Synced => "True",
            ReadyReason::RotationPending => "Unknown",
            _ => "False",
        }
    }

    /// Whether reaching this reason is announced by a Warning Event: the problems a user must
    /// act on and that could otherwise go unseen.
    pub fn warns(self) -> bool {
        matches!(
            self,
            ReadyReason::TargetConflict
                | ReadyReason::InvalidSource
                | ReadyReason::RotationRejected
        )
    }
}

/// The `Ready` condition as the sync step found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ready {
    pub reason: ReadyReason,
    pub message: String,
}

impl Ready {
    pub fn refused(reason: ReadyReason, message: impl Into<String>) -> Self {
        Ready {
            reason,
            message: message.into(),
        }
    }
}
