//! When to ask the platform again. Pure: the schedule lives in the resource's status, so a
//! restarted operator continues it instead of re-verifying everything at once.

use crate::classify::Reason;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

/// After the platform rejected a credential, it is asked again at most this often (unless the
/// source changes or a check is forced): a deleted token stays deleted.
pub const REJECTED_RECHECK: Duration = Duration::from_secs(6 * 3600);
/// First delay after a transient failure; doubles up to the interval.
pub const FIRST_RETRY: Duration = Duration::from_secs(30);

/// What an attempt concluded, as far as the schedule is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The platform accepted the credential.
    Accepted,
    /// The platform rejected the credential or said its user is inactive.
    Rejected,
    /// No definitive answer; `failures` in a row so far (1 for the first), and the delay the
    /// platform asked for, if any.
    Transient {
        failures: u32,
        retry_after: Option<Duration>,
    },
}

impl Attempt {
    /// The schedule's view of a reason: a transient one counts as the first failure.
    pub fn of(reason: Reason) -> Attempt {
        match reason {
            Reason::Verified => Attempt::Accepted,
            Reason::TokenRejected | Reason::UserDeactivated => Attempt::Rejected,
            _ => Attempt::Transient {
                failures: 1,
                retry_after: None,
            },
        }
    }
}

/// The time of the next check after `attempt` at `now`.
pub fn next_check(
    now: SystemTime,
    interval: Duration,
    jitter: Duration,
    attempt: Attempt,
) -> SystemTime {
    let delay = match attempt {
        Attempt::Accepted => interval + jitter,
        Attempt::Rejected => interval.max(REJECTED_RECHECK) + jitter,
        Attempt::Transient {
            failures,
            retry_after,
        } => {
            let doubling = 2u32.saturating_pow(failures.saturating_sub(1).min(20));
            let backoff = FIRST_RETRY.saturating_mul(doubling).min(interval);
            // The platform's own answer wins when it asks for more patience.
            backoff.max(retry_after.unwrap_or_default())
        }
    };
    now + delay
}

/// A delay fixed per `seed` (the verification loop uses a digest of the credential and probe),
/// up to a tenth of the interval and at most five minutes, so that credentials first checked
/// together do not stay in lockstep.
pub fn jitter(seed: &str, interval: Duration) -> Duration {
    let span = (interval / 10).min(Duration::from_secs(300)).as_millis() as u64;
    if span == 0 {
        return Duration::ZERO;
    }
    // FNV-1a: stable across runs and versions, unlike std's hasher.
    let hash = seed.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    Duration::from_millis(hash % span)
}

/// Picks up to `room` due checks, round-robin over namespaces starting after `cursor`, the
/// longest-due first within a namespace, and no namespace beyond `per_namespace` under way: a namespace with many due or slow checks
/// takes no more than its share of the workers, whatever the others wait for.
pub fn fair_pick<K: Copy>(
    mut waiting: BTreeMap<String, Vec<(SystemTime, K)>>,
    running: &HashMap<String, usize>,
    cursor: Option<&str>,
    room: usize,
    per_namespace: usize,
) -> Vec<(String, K)> {
    for due in waiting.values_mut() {
        // Longest due last, to pop first.
        due.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
    }
    let order: Vec<String> = {
        let names: Vec<&String> = waiting.keys().collect();
        let start = cursor.map_or(0, |c| {
            names.iter().position(|n| n.as_str() > c).unwrap_or(0)
        });
        names[start..]
            .iter()
            .chain(names[..start].iter())
            .map(|n| (*n).clone())
            .collect()
    };
    let mut taken: HashMap<&str, usize> = HashMap::new();
    let mut picked = vec![];
    let mut progress = true;
    while picked.len() < room && progress {
        progress = false;
        for namespace in &order {
            if picked.len() >= room {
                break;
            }
            let busy = running.get(namespace).copied().unwrap_or(0)
                + taken.get(namespace.as_str()).copied().unwrap_or(0);
            if busy >= per_namespace {
                continue;
            }
            if let Some((_, key)) = waiting.get_mut(namespace).and_then(Vec::pop) {
                *taken.entry(namespace.as_str()).or_default() += 1;
                picked.push((namespace.clone(), key));
                progress = true;
            }
        }
    }
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);
    const T0: SystemTime = SystemTime::UNIX_EPOCH;

    #[test]
    fn accepted_waits_an_interval_plus_jitter() {
        let j = Duration::from_secs(7);
        assert_eq!(next_check(T0, HOUR, j, Attempt::Accepted), T0 + HOUR + j);
    }

    #[test]
    fn rejected_waits_at_least_six_hours() {
        let z = Duration::ZERO;
        assert_eq!(next_check(T0, HOUR, z, Attempt::Rejected), T0 + 6 * HOUR);
        assert_eq!(
            next_check(T0, 24 * HOUR, z, Attempt::Rejected),
            T0 + 24 * HOUR
        );
    }

    #[test]
    fn transient_backs_off_from_30s_to_the_interval() {
        let z = Duration::ZERO;
        let after = |failures| {
            next_check(
                T0,
                HOUR,
                z,
                Attempt::Transient {
                    failures,
                    retry_after: None,
                },
            )
            .duration_since(T0)
            .unwrap()
        };
        assert_eq!(after(1), Duration::from_secs(30));
        assert_eq!(after(2), Duration::from_secs(60));
        assert_eq!(after(5), Duration::from_secs(480));
        assert_eq!(after(10), HOUR);
        assert_eq!(after(u32::MAX), HOUR);
    }

    #[test]
    fn retry_after_is_obeyed() {
        let asked = Duration::from_secs(120);
        let next = next_check(
            T0,
            HOUR,
            Duration::ZERO,
            Attempt::Transient {
                failures: 1,
                retry_after: Some(asked),
            },
        );
        assert_eq!(next, T0 + asked);
    }

    #[test]
    fn jitter_is_fixed_per_resource_and_bounded() {
        let a = jitter("uid-a", HOUR);
        assert_eq!(a, jitter("uid-a", HOUR));
        assert_ne!(a, jitter("uid-b", HOUR));
        assert!(a < Duration::from_secs(300));
        assert!(jitter("uid-a", Duration::from_secs(60)) < Duration::from_secs(6));
    }

    fn due_in(n: u32, count: usize) -> Vec<(SystemTime, u32)> {
        (0..count)
            .map(|i| {
                (
                    SystemTime::UNIX_EPOCH + Duration::from_secs(i as u64),
                    n + i as u32,
                )
            })
            .collect()
    }

    #[test]
    fn a_crowded_namespace_takes_no_more_than_its_share() {
        let waiting = BTreeMap::from([
            ("busy".to_owned(), due_in(0, 45)),
            ("quiet".to_owned(), due_in(100, 1)),
        ]);
        let picked = fair_pick(waiting, &HashMap::new(), None, 16, 2);
        assert_eq!(picked.len(), 2 + 1);
        assert_eq!(
            picked
                .iter()
                .map(|(n, _)| n.clone())
                .collect::<std::collections::BTreeSet<_>>(),
            ["busy".to_owned(), "quiet".to_owned()].into()
        );
        // Checks under way count against the share.
        let waiting = BTreeMap::from([("busy".to_owned(), due_in(0, 45))]);
        let running = HashMap::from([("busy".to_owned(), 2)]);
        assert!(fair_pick(waiting, &running, None, 16, 2).is_empty());
    }

    #[test]
    fn namespaces_take_turns_after_the_cursor() {
        let waiting: BTreeMap<String, _> = ["a", "b", "c"]
            .iter()
            .map(|n| (n.to_string(), due_in(0, 3)))
            .collect();
        let picked = fair_pick(waiting, &HashMap::new(), Some("a"), 2, 2);
        let order: Vec<&str> = picked.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(order, ["b", "c"]);
    }

    #[test]
    fn the_longest_due_goes_first() {
        let waiting = BTreeMap::from([("a".to_owned(), due_in(0, 3))]);
        let picked = fair_pick(waiting, &HashMap::new(), None, 1, 2);
        assert_eq!(picked[0].1, 0);
    }
}
