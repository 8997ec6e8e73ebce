//! One check of the verification loop: a credential and probe, who subscribed to it, what the
//! platform last said, and when it is due next.

use super::{Key, Slot};
use crate::domain::api::Scope;
use crate::domain::classify::Outcome;
use crate::domain::credential::Credential;
use crate::domain::probe::ProbeTarget;
use crate::domain::schedule::{self, Attempt};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

pub(super) struct Check {
    pub(super) credential: Credential,
    pub(super) probe: ProbeTarget,
    pub(super) subscribers: BTreeMap<(String, Slot), Subscriber>,
    /// The last answer of the platform given to this instance, and when it was asked.
    pub(super) answer: Option<(Outcome, SystemTime, SystemTime)>,
    /// The last definitive answer or restored verdict, and when: the base of the schedule.
    pub(super) last: Option<(SystemTime, Attempt)>,
    /// Transient failures in a row.
    pub(super) failures: u32,
    /// Earliest moment a forced check was requested that no check has served yet.
    pub(super) forced: Option<SystemTime>,
    /// When the last forced check was sent, for the cooldown.
    pub(super) last_forced: Option<SystemTime>,
    /// When the next check is due as a resource's status recorded it, after a restart.
    pub(super) restored_next: Option<SystemTime>,
    /// Since when a subscriber whose status holds no verdict waits for a first answer: the
    /// check is then due at once, whatever another subscriber's status restored.
    pub(super) wanted: Option<SystemTime>,
    /// Not before this is the first check asked: the resource that made it moved to a new
    /// credential within the cooldown of its last move.
    pub(super) not_before: Option<SystemTime>,
    pub(super) running: bool,
}

#[derive(Clone)]
pub(super) struct Subscriber {
    /// The resource's namespace; for a cluster-scoped one, its source's, whose share of the
    /// checks it counts against.
    pub(super) namespace: String,
    pub(super) name: String,
    pub(super) interval: Duration,
    pub(super) scope: Scope,
}

impl Check {
    pub(super) fn new(credential: Credential, probe: ProbeTarget) -> Self {
        Check {
            credential,
            probe,
            subscribers: BTreeMap::new(),
            answer: None,
            last: None,
            failures: 0,
            forced: None,
            last_forced: None,
            restored_next: None,
            wanted: None,
            not_before: None,
            running: false,
        }
    }

    /// The namespace whose share this check counts against: its first subscriber's.
    pub(super) fn namespace(&self) -> &str {
        self.subscribers
            .values()
            .next()
            .map_or("", |s| s.namespace.as_str())
    }

    /// Whether this check has never been asked and must be: a subscriber has no verdict, or
    /// no status restored a schedule.
    pub(super) fn first_due(&self) -> bool {
        self.answer.is_none()
            && (self.wanted.is_some() || (self.last.is_none() && self.restored_next.is_none()))
    }

    /// When this check is due: on its schedule, or sooner for a forced check (at the end of
    /// the cooldown since the last one).
    pub(super) fn due(&self, key: &Key, cooldown: Duration, floor: Duration) -> SystemTime {
        let scheduled = self.scheduled(key, floor);
        let due = match self.forced {
            Some(requested) => {
                let allowed = self
                    .last_forced
                    .map_or(requested, |last| (last + cooldown).max(requested));
                scheduled.min(allowed)
            }
            None => scheduled,
        };
        match self.not_before {
            Some(not_before) if self.answer.is_none() => due.max(not_before),
            _ => due,
        }
    }

    /// The interval of this check: the shortest of its subscribers', except that no namespace's
    /// resources make it shorter than `floor` for another namespace's (each namespace asks for
    /// its shortest interval, up to the floor, and the check follows the longest such ask).
    pub(super) fn interval(&self, floor: Duration) -> Duration {
        let mut shortest: BTreeMap<&str, Duration> = BTreeMap::new();
        for s in self.subscribers.values() {
            let entry = shortest.entry(s.namespace.as_str()).or_insert(s.interval);
            *entry = (*entry).min(s.interval);
        }
        let overall = shortest.values().copied().min();
        let asked = shortest.values().map(|i| (*i).min(floor)).max();
        overall
            .zip(asked)
            .map_or(Duration::from_secs(3600), |(o, a)| o.max(a))
    }

    /// When the next check is due on the schedule of [`Check::interval`] (the time the status
    /// shows: a forced check does not move it).
    pub(super) fn scheduled(&self, key: &Key, floor: Duration) -> SystemTime {
        let interval = self.interval(floor);
        match (&self.answer, self.last) {
            // Never asked, and a subscriber waits for an answer: now.
            (None, _) if self.first_due() => SystemTime::UNIX_EPOCH,
            (None, _) if self.restored_next.is_some() => {
                self.restored_next.unwrap_or(SystemTime::UNIX_EPOCH)
            }
            (Some((outcome, answered, _)), _)
                if !crate::domain::plan::is_definitive(outcome.reason) =>
            {
                schedule::next_check(
                    *answered,
                    interval,
                    Duration::ZERO,
                    Attempt::Transient {
                        failures: self.failures.max(1),
                        retry_after: outcome.retry_after,
                    },
                )
            }
            (_, Some((at, attempt))) => schedule::next_check(
                at,
                interval,
                schedule::jitter(&hex::encode(key), interval),
                attempt,
            ),
            (_, None) => SystemTime::UNIX_EPOCH,
        }
    }

    pub(super) fn record(&mut self, outcome: &Outcome, asked: SystemTime, answered: SystemTime) {
        self.answer = Some((outcome.clone(), answered, asked));
        match Attempt::of(outcome.reason) {
            Attempt::Transient { .. } => self.failures = self.failures.saturating_add(1),
            attempt => {
                self.failures = 0;
                self.last = Some((answered, attempt));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::classify::Reason;

    const HOUR: Duration = Duration::from_secs(3600);
    const T0: SystemTime = SystemTime::UNIX_EPOCH;
    const FLOOR: Duration = Duration::from_secs(15 * 60);

    fn check(subscribers: &[(&str, Duration)]) -> Check {
        let mut check = Check::new(
            Credential::personal_access_token(b"tok").unwrap(),
            ProbeTarget::Url("https://example.invalid/probe".parse().unwrap()),
        );
        for (uid, interval) in subscribers {
            let s = Subscriber {
                namespace: "ns".into(),
                name: (*uid).into(),
                interval: *interval,
                scope: Scope::Namespaced,
            };
            check
                .subscribers
                .insert(((*uid).to_owned(), Slot::Published), s);
        }
        check
    }

    #[test]
    fn a_new_credential_is_due_at_once() {
        let c = check(&[("a", HOUR)]);
        assert!(c.first_due());
        assert_eq!(c.due(&[0; 32], HOUR, FLOOR), T0);
    }

    #[test]
    fn a_restored_schedule_holds_until_a_subscriber_without_a_verdict_comes() {
        let mut c = check(&[("a", HOUR)]);
        c.last = Some((T0 + HOUR, Attempt::Accepted));
        c.restored_next = Some(T0 + 2 * HOUR);
        assert!(!c.first_due());
        assert_eq!(c.due(&[0; 32], HOUR, FLOOR), T0 + 2 * HOUR);
        c.wanted = Some(T0 + HOUR);
        assert!(c.first_due());
        assert_eq!(c.due(&[0; 32], HOUR, FLOOR), T0);
    }

    #[test]
    fn the_shortest_interval_of_the_subscribers_sets_the_schedule() {
        let mut c = check(&[("a", HOUR), ("b", 2 * HOUR)]);
        c.record(&Outcome::of(Reason::Verified), T0, T0);
        let key = [7; 32];
        let jitter = schedule::jitter(&hex::encode(key), HOUR);
        assert_eq!(c.scheduled(&key, FLOOR), T0 + HOUR + jitter);
        c.subscribers.remove(&("a".to_owned(), Slot::Published));
        let jitter = schedule::jitter(&hex::encode(key), 2 * HOUR);
        assert_eq!(c.scheduled(&key, FLOOR), T0 + 2 * HOUR + jitter);
    }

    #[test]
    fn another_namespace_never_makes_the_checks_shorter_than_the_floor() {
        const MINUTE: Duration = Duration::from_secs(60);
        let in_ns = |c: &mut Check, uid: &str, ns: &str, interval| {
            let s = Subscriber {
                namespace: ns.into(),
                name: uid.into(),
                interval,
                scope: Scope::Namespaced,
            };
            c.subscribers.insert((uid.to_owned(), Slot::Published), s);
        };
        let mut c = check(&[]);
        in_ns(&mut c, "admin", "team-a", HOUR);
        assert_eq!(c.interval(FLOOR), HOUR);
        // A tenant holding a copy of the token asks for every minute: the floor.
        in_ns(&mut c, "tenant", "team-b", MINUTE);
        assert_eq!(c.interval(FLOOR), FLOOR);
        // A namespace that asks for less than the floor itself gets what it asks for.
        in_ns(&mut c, "admin-5m", "team-a", 5 * MINUTE);
        assert_eq!(c.interval(FLOOR), 5 * MINUTE);
        // Within one namespace, the shortest interval, as before.
        let mut own = check(&[]);
        in_ns(&mut own, "a", "team-b", HOUR);
        in_ns(&mut own, "b", "team-b", MINUTE);
        assert_eq!(own.interval(FLOOR), MINUTE);
        c.record(&Outcome::of(Reason::Verified), T0, T0);
        assert!(c.scheduled(&[0; 32], FLOOR) >= T0 + 5 * MINUTE);
    }

    #[test]
    fn transient_answers_back_off_and_keep_the_verdict_as_base() {
        let mut c = check(&[("a", HOUR)]);
        c.record(&Outcome::of(Reason::Verified), T0, T0);
        let at = T0 + HOUR;
        c.record(&Outcome::of(Reason::PlatformUnavailable), at, at);
        assert_eq!(c.scheduled(&[0; 32], FLOOR), at + Duration::from_secs(30));
        c.record(&Outcome::of(Reason::PlatformUnavailable), at, at);
        assert_eq!(c.scheduled(&[0; 32], FLOOR), at + Duration::from_secs(60));
        assert_eq!(c.last, Some((T0, Attempt::Accepted)));
    }

    #[test]
    fn forced_checks_wait_for_the_cooldown() {
        let cooldown = Duration::from_secs(60);
        let mut c = check(&[("a", HOUR)]);
        c.record(&Outcome::of(Reason::Verified), T0, T0);
        c.forced = Some(T0 + Duration::from_secs(5));
        assert_eq!(
            c.due(&[0; 32], cooldown, FLOOR),
            T0 + Duration::from_secs(5),
            "the first at once"
        );
        c.last_forced = Some(T0 + Duration::from_secs(5));
        c.forced = Some(T0 + Duration::from_secs(10));
        assert_eq!(
            c.due(&[0; 32], cooldown, FLOOR),
            T0 + Duration::from_secs(65),
            "the next at the end of the cooldown"
        );
        c.forced = Some(T0 + Duration::from_secs(100));
        assert_eq!(
            c.due(&[0; 32], cooldown, FLOOR),
            T0 + Duration::from_secs(100)
        );
        // The status shows the schedule, not the forced check.
        assert!(c.scheduled(&[0; 32], FLOOR) > T0 + HOUR);
    }
}
