//! Verification: asking the platform (once per credential and probe, however many resources
//! share them) and recording the answer in the status.

use crate::domain::api::{MendixCredentialStatus, condition};
use crate::domain::classify::{Outcome, Reason, TokenValid};
use crate::domain::conditions::{self, Verdict};
use crate::domain::credential::Credential;
use crate::domain::probe::ProbeTarget;
use crate::domain::schedule::FIRST_RETRY;
use crate::shell::platform::Platform;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tracing::debug;

/// The platform behind a cache shared by all resources: resources that share a credential and a
/// probe share one answer per interval, and concurrent first checks wait for one request.
pub struct Verifier {
    platform: Platform,
    answers: Mutex<HashMap<[u8; 32], Slot>>,
}

/// One credential-and-probe pair: its last answer, locked while a request for it is under way.
type Slot = Arc<tokio::sync::Mutex<Option<Cached>>>;

struct Cached {
    outcome: Outcome,
    at: Instant,
    /// When the platform answered, for the status.
    answered: SystemTime,
}

impl Verifier {
    pub fn new(platform: Platform) -> Self {
        Verifier {
            platform,
            answers: Mutex::default(),
        }
    }

    /// The platform's answer for `credential` at `target`, and when it was given: from the
    /// cache when a definitive one is younger than `max_age` (a transient one is reused for
    /// 30 s, or as long as the platform asked to wait), unless `force`.
    pub async fn check(
        &self,
        target: &ProbeTarget,
        credential: &Credential,
        max_age: Duration,
        force: bool,
    ) -> (Outcome, SystemTime) {
        let slot = {
            let mut answers = self.answers.lock().expect("lock poisoned");
            answers
                .entry(self.key(target, credential))
                .or_default()
                .clone()
        };
        let mut cached = slot.lock().await;
        if let Some(c) = cached.as_ref().filter(|_| !force) {
            let fresh_for = if c.outcome.reason.status() == TokenValid::Unknown {
                FIRST_RETRY
                    .max(c.outcome.retry_after.unwrap_or_default())
                    .min(max_age)
            } else {
                max_age
            };
            if c.at.elapsed() < fresh_for {
                debug!(
                    reason = c.outcome.reason.as_str(),
                    "answer from the shared cache"
                );
                return (c.outcome.clone(), c.answered);
            }
        }
        let outcome = self.platform.check(target, credential).await;
        let answered = SystemTime::now();
        *cached = Some(Cached {
            outcome: outcome.clone(),
            at: Instant::now(),
            answered,
        });
        (outcome, answered)
    }

    /// Drops answers older than `age` (and slots no request filled), so that rotated and
    /// deleted credentials do not accumulate.
    pub fn forget_older_than(&self, age: Duration) {
        let mut answers = self.answers.lock().expect("lock poisoned");
        answers.retain(|_, slot| match slot.try_lock() {
            Ok(cached) => cached.as_ref().is_some_and(|c| c.at.elapsed() < age),
            // A request for it is under way.
            Err(_) => true,
        });
    }

    /// A digest of the credential and the probe's URL: the cache never holds the credential.
    fn key(&self, target: &ProbeTarget, credential: &Credential) -> [u8; 32] {
        let mut hash = Sha256::new();
        for (name, value) in credential.headers() {
            hash.update(name);
            hash.update(b"\0");
            hash.update(value.expose_secret());
            hash.update(b"\0");
        }
        hash.update(self.platform.url_for(target).as_str());
        hash.finalize().into()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Time {
        Time(jiff::Timestamp::from_second(s).unwrap())
    }

    fn outcome(reason: Reason) -> Outcome {
        Outcome {
            reason,
            message: format!("{} message", reason.as_str()),
            retry_after: None,
        }
    }

    fn token_valid(status: &MendixCredentialStatus) -> (String, String) {
        let c = conditions::find(&status.conditions, "TokenValid").unwrap();
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn an_outage_after_verified_keeps_true() {
        let mut status = MendixCredentialStatus::default();
        assert_eq!(
            record(&mut status, &outcome(Reason::Verified), Some(1), at(10)),
            Some(Reason::Verified)
        );
        assert_eq!(
            record(
                &mut status,
                &outcome(Reason::PlatformUnavailable),
                Some(1),
                at(20)
            ),
            None
        );
        assert_eq!(token_valid(&status), ("True".into(), "Verified".into()));
        assert_eq!(status.last_verified_time, Some(at(10)));
        assert_eq!(
            status.last_verification_error.as_deref(),
            Some("PlatformUnavailable message")
        );
        // The next definitive answer clears the error.
        assert_eq!(
            record(&mut status, &outcome(Reason::Verified), Some(1), at(30)),
            None
        );
        assert_eq!(status.last_verification_error, None);
        assert_eq!(status.last_verified_time, Some(at(30)));
    }

    #[test]
    fn a_rate_limit_after_rejected_keeps_false() {
        let mut status = MendixCredentialStatus::default();
        record(&mut status, &outcome(Reason::TokenRejected), None, at(10));
        record(&mut status, &outcome(Reason::RateLimited), None, at(20));
        assert_eq!(
            token_valid(&status),
            ("False".into(), "TokenRejected".into())
        );
    }

    #[test]
    fn transient_before_any_verdict_is_shown() {
        let mut status = MendixCredentialStatus::default();
        assert_eq!(
            record(&mut status, &outcome(Reason::Forbidden), None, at(10)),
            Some(Reason::Forbidden)
        );
        assert_eq!(token_valid(&status), ("Unknown".into(), "Forbidden".into()));
        assert_eq!(status.last_verified_time, None);
        assert_eq!(
            record(&mut status, &outcome(Reason::UserDeactivated), None, at(20)),
            Some(Reason::UserDeactivated)
        );
        assert_eq!(
            token_valid(&status),
            ("False".into(), "UserDeactivated".into())
        );
    }

    #[test]
    fn disabling_replaces_any_verdict() {
        let mut status = MendixCredentialStatus::default();
        record(&mut status, &outcome(Reason::Verified), None, at(10));
        record(
            &mut status,
            &outcome(Reason::VerificationDisabled),
            None,
            at(20),
        );
        assert_eq!(
            token_valid(&status),
            ("Unknown".into(), "VerificationDisabled".into())
        );
    }
}
