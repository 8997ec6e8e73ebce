//! Whether the published credential is due for rotation: the `RotationDue` condition.
//!
//! A credential's age counts from the source Secret's annotation `mxcred.io/issued-at`, or else
//! from when the operator first published it (`status.publishedTime`, kept across restarts). It
//! is due when its age passes `spec.rotation.maxAge` (reason `MaxAgeExceeded`), when the
//! annotation `mxcred.io/expires-at` is less than `spec.rotation.renewBefore` away
//! (`ExpiresSoon`) or past (`Expired`). Pure: the time is an input.

use crate::api::{ANNOTATION_EXPIRES_AT, ANNOTATION_ISSUED_AT};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::collections::BTreeMap;
use std::time::Duration;

/// `spec.rotation.renewBefore` when unset: 14 days.
pub const DEFAULT_RENEW_BEFORE: Duration = Duration::from_secs(14 * 24 * 3600);

/// How a resource wants its credential's age judged, from its spec and the operator's default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub max_age: Option<Duration>,
    pub renew_before: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_age: None,
            renew_before: DEFAULT_RENEW_BEFORE,
        }
    }
}

/// One time annotation of the source Secret.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Stamp {
    #[default]
    Absent,
    At(jiff::Timestamp),
    /// Not an RFC 3339 time: what the condition's message says about it.
    Malformed(String),
}

/// The time annotations of the source Secret, read with the credential.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stamps {
    pub issued_at: Stamp,
    pub expires_at: Stamp,
}

impl Stamps {
    /// Reads `mxcred.io/issued-at` and `mxcred.io/expires-at` from a Secret's annotations.
    pub fn of(annotations: Option<&BTreeMap<String, String>>) -> Self {
        let stamp = |key: &str| {
            annotations
                .and_then(|a| a.get(key))
                .map_or(Stamp::Absent, |v| parse(key, v))
        };
        Stamps {
            issued_at: stamp(ANNOTATION_ISSUED_AT),
            expires_at: stamp(ANNOTATION_EXPIRES_AT),
        }
    }
}

fn parse(key: &str, value: &str) -> Stamp {
    match value.trim().parse::<jiff::Timestamp>() {
        Ok(at) => Stamp::At(at),
        // Never the value: a credential pasted there by mistake must not reach a status.
        Err(_) => Stamp::Malformed(format!(
            "annotation {key} of the source Secret is not an RFC 3339 time (such as 2027-01-31T00:00:00Z) and was ignored"
        )),
    }
}

/// What a reconcile needs to judge the published credential's age.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inputs {
    pub policy: Policy,
    pub stamps: Stamps,
}

/// The reason of a `RotationDue` condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DueReason {
    NotDue,
    MaxAgeExceeded,
    ExpiresSoon,
    Expired,
}

impl DueReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DueReason::NotDue => "NotDue",
            DueReason::MaxAgeExceeded => "MaxAgeExceeded",
            DueReason::ExpiresSoon => "ExpiresSoon",
            DueReason::Expired => "Expired",
        }
    }

    pub fn status(self) -> &'static str {
        match self {
            DueReason::NotDue => "False",
            _ => "True",
        }
    }
}

/// The judgement of a credential's age.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    pub reason: DueReason,
    pub message: String,
    /// The date by which to rotate: the earlier of the age limit and the expiry.
    pub rotate_by: Option<Time>,
    /// How long until the judgement changes by the clock alone.
    pub changes_in: Option<Duration>,
}

/// Judges the credential published since `published` (the operator's first publication of
/// it; `None` while no target records a write of it), at `now`. `None` when neither a maximum
/// age (with a time to count it from) nor an expiry applies, and no annotation is malformed:
/// the resource has no `RotationDue` condition.
pub fn judge(inputs: &Inputs, published: Option<&Time>, now: &Time) -> Option<Due> {
    let Inputs { policy, stamps } = inputs;
    let mut notes = vec![];
    let mut malformed = |stamp: &Stamp| match stamp {
        Stamp::At(at) => Some(*at),
        Stamp::Malformed(note) => {
            notes.push(note.clone());
            None
        }
        Stamp::Absent => None,
    };
    let issued = malformed(&stamps.issued_at);
    let expires = malformed(&stamps.expires_at);
    let start = match issued {
        Some(at) => Some((at, ANNOTATION_ISSUED_AT)),
        None => published.map(|p| (p.0, "its first publication")),
    };
    let aged = policy
        .max_age
        .zip(start)
        .map(|(max, (start, _))| after(start, max));
    if aged.is_none() && expires.is_none() && notes.is_empty() {
        return None;
    }
    let now = now.0;
    let warned = expires.map(|at| before(at, policy.renew_before));
    let (reason, mut message) = match (aged, expires, warned) {
        (_, Some(at), _) if now >= at => (
            DueReason::Expired,
            format!(
                "the credential expired at {} ({ANNOTATION_EXPIRES_AT}): publish a new one",
                show(at)
            ),
        ),
        (_, Some(at), Some(warn)) if now > warn => (
            DueReason::ExpiresSoon,
            format!(
                "the credential expires at {} ({ANNOTATION_EXPIRES_AT}), less than renewBefore ({}) away: publish a new one before then",
                show(at),
                humantime::format_duration(policy.renew_before)
            ),
        ),
        (Some(limit), _, _) if now > limit => (
            DueReason::MaxAgeExceeded,
            format!(
                "the credential is older than maxAge ({}), counted from {}: publish a new one",
                humantime::format_duration(policy.max_age.unwrap_or_default()),
                start.map_or(String::new(), |(at, from)| format!("{from} ({})", show(at))),
            ),
        ),
        _ => (
            DueReason::NotDue,
            "the credential is not due for rotation".to_owned(),
        ),
    };
    for note in notes {
        message.push_str("; ");
        message.push_str(&note);
    }
    let rotate_by = [aged, expires].into_iter().flatten().min();
    // MaxAgeExceeded and ExpiresSoon hold once their limit has passed, Expired from its time.
    let second = Duration::from_secs(1);
    let changes_in = [
        aged.map(|t| after(t, second)),
        warned.map(|t| after(t, second)),
        expires,
    ]
    .into_iter()
    .flatten()
    .filter(|t| *t > now)
    .map(|t| Duration::from_secs(t.duration_since(now).as_secs().unsigned_abs()))
    .min();
    Some(Due {
        reason,
        message,
        rotate_by: rotate_by.map(Time),
        changes_in,
    })
}

fn after(t: jiff::Timestamp, d: Duration) -> jiff::Timestamp {
    let span = jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX);
    t.checked_add(span).unwrap_or(jiff::Timestamp::MAX)
}

fn before(t: jiff::Timestamp, d: Duration) -> jiff::Timestamp {
    let span = jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX);
    t.checked_sub(span).unwrap_or(jiff::Timestamp::MIN)
}

/// A time as the API shows it, in whole seconds.
fn show(t: jiff::Timestamp) -> String {
    jiff::Timestamp::from_second(t.as_second())
        .unwrap_or(t)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);
    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn at(seconds: i64) -> Time {
        Time(jiff::Timestamp::from_second(seconds).unwrap())
    }

    fn inputs(max_age: Option<Duration>, issued: Stamp, expires: Stamp) -> Inputs {
        Inputs {
            policy: Policy {
                max_age,
                ..Policy::default()
            },
            stamps: Stamps {
                issued_at: issued,
                expires_at: expires,
            },
        }
    }

    fn stamp(seconds: i64) -> Stamp {
        Stamp::At(at(seconds).0)
    }

    const T0: i64 = 1_800_000_000;

    #[test]
    fn nothing_applies_without_max_age_or_expiry() {
        assert_eq!(judge(&Inputs::default(), Some(&at(T0)), &at(T0 + 1)), None);
        // issued-at alone says nothing without maxAge.
        let i = inputs(None, stamp(T0 - 100), Stamp::Absent);
        assert_eq!(judge(&i, Some(&at(T0)), &at(T0)), None);
    }

    #[test]
    fn max_age_counts_from_publication_up_to_its_boundary() {
        let i = inputs(Some(HOUR), Stamp::Absent, Stamp::Absent);
        let limit = T0 + 3600;
        let due = judge(&i, Some(&at(T0)), &at(limit)).unwrap();
        assert_eq!(
            due.reason,
            DueReason::NotDue,
            "at exactly maxAge it has not passed"
        );
        assert_eq!(due.rotate_by, Some(at(limit)));
        assert_eq!(due.changes_in, Some(Duration::from_secs(1)));
        let due = judge(&i, Some(&at(T0)), &at(limit + 1)).unwrap();
        assert_eq!(due.reason, DueReason::MaxAgeExceeded);
        assert!(due.message.contains("first publication"), "{}", due.message);
        assert_eq!(due.changes_in, None);
        let early = judge(&i, Some(&at(T0)), &at(T0 + 600)).unwrap();
        assert_eq!(early.changes_in, Some(Duration::from_secs(3001)));
    }

    #[test]
    fn no_age_without_a_time_to_count_it_from() {
        let i = inputs(Some(HOUR), Stamp::Absent, Stamp::Absent);
        assert_eq!(judge(&i, None, &at(T0)), None);
        let issued = inputs(Some(HOUR), stamp(T0 - 7200), Stamp::Absent);
        assert_eq!(
            judge(&issued, None, &at(T0)).unwrap().reason,
            DueReason::MaxAgeExceeded
        );
    }

    #[test]
    fn issued_at_comes_before_publication() {
        let i = inputs(Some(HOUR), stamp(T0 - 7200), Stamp::Absent);
        let due = judge(&i, Some(&at(T0)), &at(T0)).unwrap();
        assert_eq!(due.reason, DueReason::MaxAgeExceeded);
        assert!(
            due.message.contains(ANNOTATION_ISSUED_AT),
            "{}",
            due.message
        );
        assert_eq!(due.rotate_by, Some(at(T0 - 3600)));
    }

    #[test]
    fn a_new_publication_resets_the_age_and_a_restart_keeps_it() {
        let i = inputs(Some(HOUR), Stamp::Absent, Stamp::Absent);
        let old = judge(&i, Some(&at(T0)), &at(T0 + 2 * 3600)).unwrap();
        assert_eq!(old.reason, DueReason::MaxAgeExceeded);
        // A new credential: published now.
        let new = judge(&i, Some(&at(T0 + 2 * 3600)), &at(T0 + 2 * 3600)).unwrap();
        assert_eq!(new.reason, DueReason::NotDue);
        // The same publication time (from status, after a restart) judges the same.
        assert_eq!(judge(&i, Some(&at(T0)), &at(T0 + 2 * 3600)).unwrap(), old);
    }

    #[test]
    fn expiry_warns_within_renew_before_then_expires() {
        let expires = T0 + 20 * 86_400;
        let i = inputs(None, Stamp::Absent, stamp(expires));
        let warn = expires - 14 * 86_400;
        let due = judge(&i, Some(&at(T0)), &at(warn)).unwrap();
        assert_eq!(due.reason, DueReason::NotDue, "exactly renewBefore away");
        assert_eq!(due.rotate_by, Some(at(expires)));
        assert_eq!(due.changes_in, Some(Duration::from_secs(1)));
        let due = judge(&i, Some(&at(T0)), &at(warn + 1)).unwrap();
        assert_eq!(due.reason, DueReason::ExpiresSoon);
        assert_eq!(due.status_str(), "True");
        assert_eq!(due.changes_in, Some(Duration::from_secs(14 * 86_400 - 1)));
        assert_eq!(
            judge(&i, Some(&at(T0)), &at(expires - 1)).unwrap().reason,
            DueReason::ExpiresSoon
        );
        let due = judge(&i, Some(&at(T0)), &at(expires)).unwrap();
        assert_eq!(due.reason, DueReason::Expired);
        assert_eq!(due.changes_in, None);
    }

    #[test]
    fn the_earlier_limit_is_the_rotation_date_and_expiry_comes_first() {
        let i = inputs(Some(DAY), Stamp::Absent, stamp(T0 + 3 * 86_400));
        let due = judge(&i, Some(&at(T0)), &at(T0 + 2 * 86_400)).unwrap();
        assert_eq!(due.reason, DueReason::ExpiresSoon);
        assert_eq!(due.rotate_by, Some(at(T0 + 86_400)));
        let short = Inputs {
            policy: Policy {
                max_age: Some(DAY),
                renew_before: HOUR,
            },
            ..i
        };
        let due = judge(&short, Some(&at(T0)), &at(T0 + 2 * 86_400)).unwrap();
        assert_eq!(due.reason, DueReason::MaxAgeExceeded);
    }

    #[test]
    fn malformed_annotations_are_reported_and_ignored() {
        let stamps = Stamps::of(Some(&BTreeMap::from([
            (ANNOTATION_ISSUED_AT.to_owned(), "yesterday".to_owned()),
            (ANNOTATION_EXPIRES_AT.to_owned(), "x".repeat(1000)),
        ])));
        assert!(matches!(stamps.issued_at, Stamp::Malformed(_)));
        let i = Inputs {
            policy: Policy::default(),
            stamps,
        };
        let due = judge(&i, Some(&at(T0)), &at(T0)).unwrap();
        assert_eq!(due.reason, DueReason::NotDue);
        assert!(
            due.message.contains(ANNOTATION_ISSUED_AT),
            "{}",
            due.message
        );
        assert!(!due.message.contains("yesterday"), "{}", due.message);
        assert!(
            due.message.contains(ANNOTATION_EXPIRES_AT),
            "{}",
            due.message
        );
        assert!(!due.message.contains("xxx"), "{}", due.message);
        assert_eq!(due.rotate_by, None);
        assert_eq!(due.changes_in, None);
    }

    #[test]
    fn annotations_are_read_as_rfc3339() {
        let stamps = Stamps::of(Some(&BTreeMap::from([(
            ANNOTATION_EXPIRES_AT.to_owned(),
            " 2027-01-31T00:00:00+01:00 ".to_owned(),
        )])));
        assert_eq!(stamps.issued_at, Stamp::Absent);
        assert_eq!(
            stamps.expires_at,
            Stamp::At("2027-01-30T23:00:00Z".parse().unwrap())
        );
        assert_eq!(Stamps::of(None), Stamps::default());
    }

    impl Due {
        fn status_str(&self) -> &'static str {
            self.reason.status()
        }
    }
}
