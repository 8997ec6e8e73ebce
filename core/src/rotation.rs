//! Rotation: whether a new credential in the source Secret must pass a check before it replaces
//! the published one (`spec.rotation.policy: VerifyFirst`), and what the check decided.
//!
//! A credential is only held back when there is something to protect: a published credential
//! the platform accepted at its last definitive check. Otherwise (no target yet, the published
//! credential already rejected or not yet verified, verification disabled, `Immediate`) the new
//! one is published at once, as it would be without rotation.

use crate::api::{MendixCredentialStatus, RotationPolicy, condition};
use crate::classify::{Outcome, TokenValid};
use crate::conditions;
use crate::credential;
use crate::ready::{Ready, ReadyReason};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// The published credential a new one must not replace unchecked: its recorded digest, when
/// the new credential (of digest `digest`) must be checked first.
pub fn to_protect<'a>(
    policy: RotationPolicy,
    verification_enabled: bool,
    previous: &'a MendixCredentialStatus,
    digest: &str,
) -> Option<&'a str> {
    if policy == RotationPolicy::Immediate || !verification_enabled {
        return None;
    }
    let published = previous.published_digest()?;
    let known_good = conditions::find(&previous.conditions, condition::TOKEN_VALID)
        .is_some_and(|c| c.status == TokenValid::True.as_str());
    (!credential::is_recorded(published, digest) && known_good).then_some(published)
}

/// What is known of the check of a credential waiting to be published.
#[derive(Clone, Debug, PartialEq)]
pub enum Check {
    /// Not answered yet; asked for since `since`.
    Queued {
        since: Time,
    },
    Answered(Outcome),
}

/// Whether a checked credential is published, or why it waits.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Publish,
    Hold(Held),
}

/// Why a new credential is not published (yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Held {
    /// The platform has not answered yet; the status waits for it a moment before saying so.
    Queued { since: Time },
    /// The platform gave no verdict (down, rate limited, forbidden): checked again on the
    /// usual backoff.
    Unanswered(Outcome),
    /// The platform rejected the credential, or its user is deactivated.
    Rejected(Outcome),
}

/// What the check of the new credential decides.
pub fn decide(check: Check) -> Decision {
    match check {
        Check::Queued { since } => Decision::Hold(Held::Queued { since }),
        Check::Answered(outcome) => match outcome.reason.status() {
            TokenValid::True => Decision::Publish,
            TokenValid::False => Decision::Hold(Held::Rejected(outcome)),
            TokenValid::Unknown => Decision::Hold(Held::Unanswered(outcome)),
        },
    }
}

/// The `Ready` condition of a rotation held back.
pub fn ready(target: &str, published: &str, pending: &str, held: &Held) -> Ready {
    let keeps = format!("Secret {target:?} keeps the working credential {published}");
    match held {
        Held::Rejected(outcome) => Ready::refused(
            ReadyReason::RotationRejected,
            format!(
                "the new credential {pending} in the source Secret was not published: {} ({}); \
                 {keeps}",
                outcome.message,
                outcome.reason.as_str(),
            ),
        ),
        Held::Unanswered(outcome) => Ready::refused(
            ReadyReason::RotationPending,
            format!(
                "the new credential {pending} is published once the platform accepts it; no \
                 verdict yet: {} ({}); {keeps}",
                outcome.message,
                outcome.reason.as_str(),
            ),
        ),
        Held::Queued { .. } => Ready::refused(
            ReadyReason::RotationPending,
            format!(
                "the new credential {pending} is being checked against the platform before it \
                 is published; {keeps}"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Reason;
    use crate::conditions::Verdict;

    fn status(fingerprint: &str, token_valid: TokenValid) -> MendixCredentialStatus {
        let mut status = MendixCredentialStatus {
            token_fingerprint: Some(fingerprint.into()),
            ..Default::default()
        };
        let reason = match token_valid {
            TokenValid::True => Reason::Verified,
            TokenValid::False => Reason::TokenRejected,
            TokenValid::Unknown => Reason::Pending,
        };
        conditions::set(
            &mut status.conditions,
            Verdict {
                type_: condition::TOKEN_VALID,
                status: token_valid.as_str(),
                reason: reason.as_str(),
                message: String::new(),
            },
            Some(1),
            Time(jiff::Timestamp::UNIX_EPOCH),
        );
        status
    }

    #[test]
    fn only_a_published_credential_known_good_is_protected() {
        let good = status("fp-a", TokenValid::True);
        let verify_first = RotationPolicy::VerifyFirst;
        assert_eq!(to_protect(verify_first, true, &good, "fp-b"), Some("fp-a"));
        assert_eq!(
            to_protect(verify_first, true, &good, "fp-a"),
            None,
            "the same credential"
        );
        assert_eq!(
            to_protect(RotationPolicy::Immediate, true, &good, "fp-b"),
            None
        );
        assert_eq!(
            to_protect(verify_first, false, &good, "fp-b"),
            None,
            "verification disabled"
        );
        for nothing_to_protect in [
            MendixCredentialStatus::default(),
            status("fp-a", TokenValid::False),
            status("fp-a", TokenValid::Unknown),
        ] {
            assert_eq!(
                to_protect(verify_first, true, &nothing_to_protect, "fp-b"),
                None
            );
        }
    }

    #[test]
    fn a_credential_with_the_published_fingerprint_is_still_a_new_one() {
        // Two tokens with the same fingerprint, found by a cycle search over its 48 bits.
        let [working, forged] = ["mxforge-8f8b40ea2ff9", "mxforge-7cf267c610d5"]
            .map(|t| crate::credential::Credential::personal_access_token(t.as_bytes()));
        let (working, forged) = (working.unwrap(), forged.unwrap());
        assert_eq!(working.fingerprint(), forged.fingerprint());
        let mut good = status(&working.fingerprint(), TokenValid::True);
        good.token_digest = Some(working.digest());
        let verify_first = RotationPolicy::VerifyFirst;
        assert_eq!(
            to_protect(verify_first, true, &good, &forged.digest()),
            Some(working.digest().as_str()),
            "checked first, as any new credential"
        );
        assert_eq!(
            to_protect(verify_first, true, &good, &working.digest()),
            None
        );
        // A status from before digests were recorded compares the fingerprint, until the
        // next write records the digest.
        let legacy = status(&working.fingerprint(), TokenValid::True);
        assert_eq!(
            to_protect(verify_first, true, &legacy, &working.digest()),
            None
        );
    }

    #[test]
    fn every_outcome_decides() {
        for reason in Reason::OUTCOMES {
            let decision = decide(Check::Answered(Outcome::of(reason)));
            let expected = match reason {
                Reason::Verified => Decision::Publish,
                Reason::TokenRejected | Reason::UserDeactivated => {
                    Decision::Hold(Held::Rejected(Outcome::of(reason)))
                }
                _ => Decision::Hold(Held::Unanswered(Outcome::of(reason))),
            };
            assert_eq!(decision, expected, "{reason:?}");
        }
        let since = Time(jiff::Timestamp::UNIX_EPOCH);
        assert_eq!(
            decide(Check::Queued {
                since: since.clone()
            }),
            Decision::Hold(Held::Queued { since })
        );
    }
}
