//! When the workloads of `spec.target.rolloutRestart` are tried again: after a growing delay,
//! not at every reconcile.

use crate::domain::restart;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// When the workloads of a resource in a namespace are tried again, per resource (uid) and
/// namespace, for the credential and spec they were last tried for: a missing or
/// non-consenting workload is read again after a growing delay, not at every reconcile. What
/// the last try found (`T`: status entries, or failures) is kept with it, for the reconciles
/// in between to report (the one that tried may not have written its status).
pub struct Retries<T>(Mutex<HashMap<(String, String), Retry<T>>>);

impl<T> Default for Retries<T> {
    fn default() -> Self {
        Retries(Mutex::default())
    }
}

struct Retry<T> {
    key: String,
    attempt: u32,
    due: Instant,
    found: T,
}

impl<T: Clone> Retries<T> {
    /// How long until the workloads of `uid` in `ns` are due again for `key`, and what their
    /// last try found; `None`: due now.
    pub fn wait(&self, uid: &str, ns: &str, key: &str) -> Option<(Duration, T)> {
        let retries = self.0.lock();
        let retry = retries.get(&(uid.to_owned(), ns.to_owned()))?;
        let wait = retry.due.checked_duration_since(Instant::now());
        let wait = wait.filter(|wait| retry.key == key && !wait.is_zero())?;
        Some((wait, retry.found.clone()))
    }

    /// Records what a try for `key` left pending and found; returns when to try again.
    pub fn record(
        &self,
        (uid, ns): (&str, &str),
        key: String,
        pending: Option<restart::Pending>,
        first: Duration,
        found: T,
    ) -> Option<Duration> {
        let mut retries = self.0.lock();
        let id = (uid.to_owned(), ns.to_owned());
        let Some(pending) = pending else {
            retries.remove(&id);
            return None;
        };
        let attempt = match retries.get(&id) {
            Some(retry) if retry.key == key => retry.attempt,
            _ => 0,
        } + u32::from(pending.failing);
        let backoff = pending
            .failing
            .then(|| restart::retry_delay(attempt, first));
        let wait = match (backoff, pending.deferred) {
            (Some(b), Some(d)) => b.min(d),
            (b, d) => b.or(d).unwrap_or(first),
        };
        retries.insert(
            id,
            Retry {
                key,
                attempt,
                due: Instant::now() + wait,
                found,
            },
        );
        Some(wait)
    }

    /// Forgets the resources whose uid is not in `live`.
    pub fn retain(&self, live: &std::collections::HashSet<String>) {
        self.0.lock().retain(|(uid, _), _| live.contains(uid));
    }
}

/// What a try is for: another credential or another spec is tried at once.
pub fn retry_key(fingerprint: &str, generation: Option<i64>) -> String {
    format!("{fingerprint}@{}", generation.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failing() -> Option<restart::Pending> {
        Some(restart::Pending {
            failing: true,
            deferred: None,
        })
    }

    #[test]
    fn a_failing_try_waits_longer_each_time_and_a_new_credential_goes_at_once() {
        let retries: Retries<u8> = Retries::default();
        let first = Duration::from_secs(60);
        let key = retry_key("sha256:a", Some(1));
        let waits: Vec<Duration> = (0..4)
            .map(|i| {
                retries
                    .record(("u", "ns"), key.clone(), failing(), first, i)
                    .unwrap()
            })
            .collect();
        assert_eq!(waits, [60, 120, 240, 480].map(Duration::from_secs));
        let (wait, found) = retries.wait("u", "ns", &key).expect("not due");
        assert!(wait <= Duration::from_secs(480) && wait > Duration::from_secs(470));
        assert_eq!(found, 3, "what the last try found");
        // Another credential, another spec, another namespace: due now.
        assert!(
            retries
                .wait("u", "ns", &retry_key("sha256:b", Some(1)))
                .is_none()
        );
        assert!(
            retries
                .wait("u", "ns", &retry_key("sha256:a", Some(2)))
                .is_none()
        );
        assert!(retries.wait("u", "other", &key).is_none());
        // A deferred workload comes back when its interval is over, sooner than the backoff.
        let deferred = Some(restart::Pending {
            failing: true,
            deferred: Some(Duration::from_secs(5)),
        });
        let wait = retries.record(("u", "ns"), key.clone(), deferred, first, 4);
        assert_eq!(wait, Some(Duration::from_secs(5)));
        // Settled: forgotten.
        assert_eq!(
            retries.record(("u", "ns"), key.clone(), None, first, 5),
            None
        );
        assert!(retries.wait("u", "ns", &key).is_none());
        retries.record(("u", "ns"), key.clone(), failing(), first, 6);
        retries.retain(&std::collections::HashSet::new());
        assert!(
            retries.wait("u", "ns", &key).is_none(),
            "a deleted resource"
        );
    }
}
