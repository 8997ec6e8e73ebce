//! Properties of the two planners, the namespaced one ([`plan::reconcile`]) and the cluster one
//! ([`cluster::plan`]), on generated observations: a source present, missing, not opted in or
//! invalid; a target (or the copy of each namespace) missing, ours and current, ours and stale,
//! or someone else's; a rotation held back; the verification loop's verdicts. The previous
//! status is one the planner itself reached over a few earlier reconciles.
//!
//! - Planning its own output again writes nothing: once the plan's status is written and the
//!   target holds what was written, the next plan has no status to write and no Event.
//! - The age and expiry of the credential (`RotationDue`) are among the observations, with
//!   limits that fall between the reconciles of a history, never within the ten minutes the
//!   properties look on.
//! - Events only on transitions: a later check that comes to the same verdict publishes no
//!   Event.
//! - A failed status write planned again is the same plan: the retry starts from the same
//!   previous status, so it writes the same status (at its own time) and publishes the same
//!   Events.
//!
//! Failures are not persisted to a regressions file: a minimal failing input found here becomes
//! an explicit case in the module it concerns.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use mxcred_operator::domain::api::{CredentialType, MendixCredentialStatus};
use mxcred_operator::domain::classify::{Outcome, Reason};
use mxcred_operator::domain::cluster::{
    self, ClusterMendixCredentialStatus, ClusterObserved, ClusterPlan, CopyOutcome,
    MAX_FAILED_NAMESPACES, Selected,
};
use mxcred_operator::domain::consumers::{Consumer, Consumers};
use mxcred_operator::domain::credential::{self, Problem, SourceError};
use mxcred_operator::domain::due::{self, Policy, Stamp, Stamps};
use mxcred_operator::domain::plan::{
    self, Answer, Observed, Plan, Ready, ReadyReason, Sync, Verification,
};
use mxcred_operator::domain::rotation::Held;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use std::collections::BTreeMap;
use std::time::Duration;

const TARGET: &str = "mendix";

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        // Minimal failing inputs become explicit cases; no untracked regressions files.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn at(second: i64) -> Time {
    Time(jiff::Timestamp::from_second(second).unwrap())
}

fn outcome(reason: Reason) -> Outcome {
    Outcome {
        reason,
        message: format!("{} message", reason.as_str()),
        retry_after: None,
    }
}

/// The digest of credential `n` (1 to 3): each has a fingerprint of its own.
fn digest(n: u8) -> String {
    format!("sha256:{}", format!("{n:x}").repeat(64))
}

// ---------------------------------------------------------------------------------------------
// Observations
// ---------------------------------------------------------------------------------------------

/// What the source Secret holds.
#[derive(Clone, Debug)]
enum Source {
    Missing,
    Refused(SourceError),
    /// A valid credential (1 to 3).
    Valid(u8),
    /// The spec cannot be read.
    InvalidSpec,
}

fn source() -> impl Strategy<Value = Source> {
    let secret = "raw".to_owned();
    prop_oneof![
        1 => Just(Source::Missing),
        1 => Just(Source::InvalidSpec),
        1 => Just(Source::Refused(SourceError::NotAllowed {
            secret: secret.clone()
        })),
        1 => Just(Source::Refused(SourceError::KeyMissing {
            secret: secret.clone(),
            key: "token".into()
        })),
        1 => Just(Source::Refused(SourceError::Invalid {
            secret,
            key: "token".into(),
            problem: Problem::NotVisibleAscii
        })),
        3 => (1u8..=3).prop_map(Source::Valid),
    ]
}

impl Source {
    /// Why the source cannot be used, as the sync step reports it.
    fn refusal(&self) -> Option<Ready> {
        match self {
            Source::Missing => Some(Ready::refused(
                ReadyReason::SourceNotFound,
                "Secret \"raw\" not found",
            )),
            Source::Refused(problem) => Some(plan::source_refused(problem)),
            Source::InvalidSpec => Some(Ready::refused(ReadyReason::InvalidSpec, "bad spec")),
            Source::Valid(_) => None,
        }
    }
}

/// What is under the target's name (in one namespace).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Target {
    Missing,
    /// Ours, holding what would be written.
    Current,
    /// Ours, holding something else (an older credential, a change by hand).
    Stale,
    Foreign,
    /// The API server refuses the Secret (cluster kind only).
    Refused,
    /// The write fails (cluster kind only).
    Failed,
    /// Ours and current: written by the reconcile before, at [`Seen::wrote_at`].
    Written,
}

/// A rotation held back (policy VerifyFirst): the check of the new credential.
fn held(now: i64) -> impl Strategy<Value = Held> {
    prop_oneof![
        (now - 5..=now).prop_map(|s| Held::Queued { since: at(s) }),
        select(vec![
            Reason::Forbidden,
            Reason::RateLimited,
            Reason::PlatformUnavailable
        ])
        .prop_map(|r| Held::Unanswered(outcome(r))),
        select(vec![Reason::TokenRejected, Reason::UserDeactivated])
            .prop_map(|r| Held::Rejected(outcome(r))),
    ]
}

/// What the verification loop knows of the published credential, at `now`.
fn verification(now: i64) -> impl Strategy<Value = Verification> {
    let answer = (
        select(Reason::OUTCOMES.to_vec()),
        // Never at `now` itself: the failed-write properties move the times set at `now`.
        now - 100..now,
        proptest::option::of(now + 1..now + 3600),
        any::<bool>(),
    )
        .prop_map(|(reason, answered, next, serves_request)| {
            Verification::Answered(Answer {
                outcome: outcome(reason),
                answered_at: at(answered),
                next: next.map(at),
                serves_request,
            })
        });
    prop_oneof![
        1 => Just(Verification::Disabled),
        1 => Just(Verification::Waiting),
        1 => (now - 10..=now).prop_map(|s| Verification::Queued { since: at(s) }),
        3 => answer,
    ]
}

/// One reconcile's observation, before it is read against the previous status.
#[derive(Clone, Debug)]
struct Seen {
    source: Source,
    /// The target, or the copy of each active namespace.
    targets: Vec<Target>,
    /// A new credential is held back, when there is a published one to protect.
    held: Option<Held>,
    checked_first: bool,
    verification: Verification,
    generation: i64,
    /// When a current target was last written, as the API server recorded it.
    written_at: i64,
    /// When the reconcile before wrote the targets it wrote.
    wrote_at: i64,
    /// The rotation policy and the source's time annotations.
    due: due::Inputs,
    /// The workloads that use the targets, when known.
    consumers: Option<Consumers>,
    now: i64,
}

impl Seen {
    /// When the API server recorded a write of this reconcile: just before it planned.
    fn write_time(&self) -> i64 {
        self.now - 1
    }
}

/// The age limits of a resource and the time annotations of its source. Every limit falls
/// between two reconciles (at 10 000 + 1 000 i), never in the ten minutes after one.
fn due_inputs() -> impl Strategy<Value = due::Inputs> {
    let renew = Duration::from_secs(1_000);
    let policy = |max_age: Option<u64>| Policy {
        max_age: max_age.map(Duration::from_secs),
        renew_before: renew,
    };
    let stamp = |s: i64| Stamp::At(at(s).0);
    let inputs = |policy: Policy, issued_at: Stamp, expires_at: Stamp| due::Inputs {
        policy,
        stamps: Stamps {
            issued_at,
            expires_at,
        },
    };
    prop_oneof![
        2 => Just(due::Inputs::default()),
        1 => Just(inputs(policy(Some(1_000_000)), Stamp::Absent, Stamp::Absent)),
        1 => Just(inputs(policy(Some(2_700)), stamp(9_000), Stamp::Absent)),
        1 => Just(inputs(policy(None), Stamp::Absent, stamp(12_800))),
        1 => Just(inputs(policy(Some(1_000_000)), Stamp::Absent, stamp(14_800))),
        1 => Just(inputs(
            policy(None),
            Stamp::Malformed("annotation mxcred.io/issued-at is malformed".into()),
            Stamp::Absent
        )),
    ]
}

/// What the index knows of the consumers: not yet listed, none, some, or that it may not know.
fn consumers() -> impl Strategy<Value = Option<Consumers>> {
    let some = |names: &[&str]| {
        Consumers::of(
            names
                .iter()
                .map(|name| Consumer {
                    namespace: None,
                    kind: "Deployment".into(),
                    name: (*name).into(),
                })
                .collect(),
        )
    };
    prop_oneof![
        Just(None),
        Just(Some(some(&[]))),
        Just(Some(some(&["runner"]))),
        Just(Some(some(&["a", "b", "c", "d"]))),
        Just(Some(Consumers::unknown("the operator may not list Pods"))),
    ]
}

/// The `i`-th reconcile of a history: its times are later than those of the ones before.
fn seen(i: i64, targets: impl Strategy<Value = Vec<Target>>) -> impl Strategy<Value = Seen> {
    let now = 10_000 + 1_000 * i;
    (
        source(),
        targets,
        proptest::option::weighted(0.25, held(now)),
        any::<bool>(),
        verification(now),
        1i64..=3,
        now - 500..now - 200,
        due_inputs(),
        consumers(),
    )
        .prop_map(
            move |(
                source,
                targets,
                held,
                checked_first,
                verification,
                generation,
                written_at,
                due,
                consumers,
            )| {
                Seen {
                    source,
                    targets,
                    held,
                    checked_first,
                    verification,
                    generation,
                    written_at,
                    wrote_at: 0,
                    due,
                    consumers,
                    now,
                }
            },
        )
}

/// The target states of a MendixCredential: missing, current, stale or foreign.
fn one_target() -> BoxedStrategy<Vec<Target>> {
    select(vec![
        Target::Missing,
        Target::Current,
        Target::Stale,
        Target::Foreign,
    ])
    .prop_map(|t| vec![t])
    .boxed()
}

/// The copies of a ClusterMendixCredential's active namespaces; sometimes more conflicts than
/// `status.failedNamespaces` lists.
fn copies() -> BoxedStrategy<Vec<Target>> {
    let target = select(vec![
        Target::Missing,
        Target::Current,
        Target::Stale,
        Target::Foreign,
        Target::Refused,
        Target::Failed,
    ]);
    let mostly_foreign = prop_oneof![4 => Just(Target::Foreign), 1 => target.clone()];
    prop_oneof![
        4 => vec(target.clone(), 0..6),
        1 => vec(target, 20..30),
        1 => vec(mostly_foreign, 18..30),
    ]
    .boxed()
}

/// A history of up to four reconciles.
fn history(targets: fn() -> BoxedStrategy<Vec<Target>>) -> impl Strategy<Value = Vec<Seen>> {
    (0i64..=4).prop_flat_map(move |n| (0..n).map(|i| seen(i, targets())).collect::<Vec<_>>())
}

// ---------------------------------------------------------------------------------------------
// The namespaced planner
// ---------------------------------------------------------------------------------------------

/// What the sync step of a MendixCredential establishes from `seen`, given the previous status.
fn sync_of(seen: &Seen, previous: &MendixCredentialStatus) -> Sync {
    if let Some(refused) = seen.source.refusal() {
        return Sync::Refused(refused);
    }
    let Source::Valid(n) = seen.source else {
        unreachable!()
    };
    let new = digest(n);
    let published = previous
        .published_digest()
        .filter(|p| !credential::is_recorded(p, &new));
    if let (Some(held), Some(published)) = (&seen.held, published) {
        return Sync::Held {
            target: TARGET.into(),
            published: credential::fingerprint_of(published),
            pending: credential::fingerprint_of(&new),
            held: held.clone(),
        };
    }
    let (written_at, wrote) = match seen.targets[0] {
        Target::Foreign => return Sync::Refused(plan::target_conflict(TARGET)),
        Target::Missing | Target::Stale => (Some(at(seen.write_time())), true),
        Target::Written => (Some(at(seen.wrote_at)), false),
        _ => (Some(at(seen.written_at)), false),
    };
    Sync::Published {
        target: TARGET.into(),
        fingerprint: credential::fingerprint_of(&new),
        digest: new,
        written_at,
        wrote,
        checked_first: seen.checked_first && published.is_some(),
    }
}

fn plan_namespaced(seen: &Seen, previous: &MendixCredentialStatus) -> Plan {
    plan::reconcile(Observed {
        generation: Some(seen.generation),
        credential_type: (!matches!(seen.source, Source::InvalidSpec))
            .then_some(CredentialType::PersonalAccessToken),
        previous,
        sync: sync_of(seen, previous),
        verification: seen.verification.clone(),
        due: seen.due.clone(),
        consumers: seen.consumers.clone(),
        now: at(seen.now),
    })
}

/// The status after `plan` was written.
fn written(previous: &MendixCredentialStatus, plan: &Plan) -> MendixCredentialStatus {
    plan.status.clone().unwrap_or_else(|| previous.clone())
}

/// A previous status the planner reached over `history`.
fn reached(history: &[Seen]) -> MendixCredentialStatus {
    history
        .iter()
        .fold(MendixCredentialStatus::default(), |status, seen| {
            written(&status, &plan_namespaced(seen, &status))
        })
}

/// The next reconcile over the state `seen` left: each target written holds what was written,
/// at the time of that write; the same verdict.
fn again(seen: &Seen) -> Seen {
    let mut next = seen.clone();
    next.targets = seen
        .targets
        .iter()
        .map(|t| match t {
            Target::Missing | Target::Stale => Target::Written,
            other => *other,
        })
        .collect();
    next.wrote_at = seen.write_time();
    next
}

/// A later reconcile, `later` seconds on: the verification loop checked again and came to the
/// same verdict (a later answer, a later next check).
fn same_verdict_later(seen: &Seen, later: i64) -> Seen {
    let mut next = again(seen);
    next.now += later;
    if let Verification::Answered(answer) = &mut next.verification {
        answer.answered_at = at(answer.answered_at.0.as_second() + later);
        answer.next = answer.next.as_ref().map(|n| at(n.0.as_second() + later));
    }
    next
}

/// `text` with every time at `from` moved to `to`.
fn retimed(text: String, from: i64, to: i64) -> String {
    let (from, to) = (
        serde_json::to_string(&at(from)).unwrap(),
        serde_json::to_string(&at(to)).unwrap(),
    );
    text.replace(&from, &to)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_namespaced_plan_of_its_own_output_writes_nothing(
        history in history(one_target),
        current in seen(5, one_target()),
    ) {
        let previous = reached(&history);
        let first = plan_namespaced(&current, &previous);
        let after = written(&previous, &first);
        let next = plan_namespaced(&again(&current), &after);
        prop_assert_eq!(&next.status, &None, "first plan: {:?}", first);
        prop_assert_eq!(&next.events, &vec![]);
        prop_assert_eq!(next.ready, first.ready);
    }

    #[test]
    fn a_namespaced_plan_announces_only_transitions(
        history in history(one_target),
        current in seen(5, one_target()),
        later in 1i64..600,
    ) {
        let previous = reached(&history);
        let first = plan_namespaced(&current, &previous);
        // A status held back for the first answer is not written: what comes later is new.
        prop_assume!(first.hold.is_none());
        let after = written(&previous, &first);
        let next = plan_namespaced(&same_verdict_later(&current, later), &after);
        prop_assert_eq!(&next.events, &vec![], "first plan: {:?}", first);
    }

    #[test]
    fn a_failed_namespaced_status_write_is_planned_again_the_same(
        history in history(one_target),
        current in seen(5, one_target()),
        later in 0i64..600,
    ) {
        let previous = reached(&history);
        let first = plan_namespaced(&current, &previous);
        prop_assume!(first.status.is_some());
        // The status write failed: the retry starts from the same previous status, later, and
        // finds the target as the first attempt left it.
        let mut retry = again(&current);
        retry.now += later;
        let second = plan_namespaced(&retry, &previous);
        prop_assert_eq!(&second.events, &first.events);
        prop_assert_eq!(second.ready, first.ready);
        prop_assert_eq!(second.request_served, first.request_served);
        prop_assert_eq!(second.hold, None);
        let text = |p: &Plan| serde_json::to_string(&p.status).unwrap();
        prop_assert_eq!(text(&second), retimed(text(&first), current.now, retry.now));
    }
}

// ---------------------------------------------------------------------------------------------
// The cluster planner
// ---------------------------------------------------------------------------------------------

fn namespace(i: usize) -> String {
    format!("team-{i:02}")
}

/// What the reconcile of a ClusterMendixCredential observes from `seen`, given the previous
/// status.
fn cluster_observed<'a>(
    seen: &Seen,
    previous: &'a ClusterMendixCredentialStatus,
) -> ClusterObserved<'a> {
    let active: Vec<String> = (0..seen.targets.len()).map(namespace).collect();
    let selected = Selected {
        active: active.clone(),
        terminating: vec!["leaving".into()],
        missing: vec!["absent".into()],
    };
    let core = previous.core();
    let (source, held) = match (&seen.source, seen.source.refusal()) {
        (_, Some(refused)) => (Err(refused), None),
        (Source::Valid(n), None) => {
            let new = digest(*n);
            let published = core
                .published_digest()
                .filter(|p| !credential::is_recorded(p, &new))
                .map(str::to_owned);
            match (&seen.held, published) {
                // The copies keep the published credential.
                (Some(held), Some(published)) => (
                    Ok(published),
                    Some((credential::fingerprint_of(&new), held.clone())),
                ),
                _ => (Ok(new), None),
            }
        }
        _ => unreachable!(),
    };
    let copies: BTreeMap<String, CopyOutcome> = match &source {
        Err(_) => BTreeMap::new(),
        Ok(_) => active
            .into_iter()
            .zip(&seen.targets)
            .map(|(ns, target)| {
                let outcome = match target {
                    Target::Missing | Target::Stale => CopyOutcome::Synced {
                        written_at: Some(at(seen.write_time())),
                        wrote: true,
                    },
                    Target::Current => CopyOutcome::Synced {
                        written_at: Some(at(seen.written_at)),
                        wrote: false,
                    },
                    Target::Written => CopyOutcome::Synced {
                        written_at: Some(at(seen.wrote_at)),
                        wrote: false,
                    },
                    Target::Foreign => CopyOutcome::Conflict,
                    Target::Refused => CopyOutcome::Invalid("data: Invalid value".into()),
                    Target::Failed => CopyOutcome::Failed("HTTP 500 InternalError".into()),
                };
                (ns, outcome)
            })
            .collect(),
    };
    ClusterObserved {
        generation: Some(seen.generation),
        credential_type: (!matches!(seen.source, Source::InvalidSpec))
            .then_some(CredentialType::PersonalAccessToken),
        previous,
        target: TARGET.into(),
        checked_first: seen.checked_first && held.is_none() && core.published_digest().is_some(),
        source,
        held,
        copies,
        selected,
        verification: seen.verification.clone(),
        due: seen.due.clone(),
        consumers: seen.consumers.clone(),
        now: at(seen.now),
    }
}

fn plan_cluster(seen: &Seen, previous: &ClusterMendixCredentialStatus) -> ClusterPlan {
    cluster::plan(cluster_observed(seen, previous))
}

fn cluster_written(
    previous: &ClusterMendixCredentialStatus,
    plan: &ClusterPlan,
) -> ClusterMendixCredentialStatus {
    plan.status.clone().unwrap_or_else(|| previous.clone())
}

fn cluster_reached(history: &[Seen]) -> ClusterMendixCredentialStatus {
    history
        .iter()
        .fold(ClusterMendixCredentialStatus::default(), |status, seen| {
            cluster_written(&status, &plan_cluster(seen, &status))
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_cluster_plan_of_its_own_output_writes_nothing(
        history in history(copies),
        current in seen(5, copies()),
    ) {
        let previous = cluster_reached(&history);
        let first = plan_cluster(&current, &previous);
        let after = cluster_written(&previous, &first);
        let next = plan_cluster(&again(&current), &after);
        prop_assert_eq!(&next.status, &None, "first plan: {:?}", first);
        prop_assert_eq!(&next.events, &vec![]);
        prop_assert_eq!(next.ready, first.ready);
    }

    #[test]
    fn a_cluster_plan_announces_only_transitions(
        history in history(copies),
        current in seen(5, copies()),
        later in 1i64..600,
    ) {
        let previous = cluster_reached(&history);
        let first = plan_cluster(&current, &previous);
        prop_assume!(first.hold.is_none());
        let after = cluster_written(&previous, &first);
        let next = plan_cluster(&same_verdict_later(&current, later), &after);
        prop_assert_eq!(&next.events, &vec![], "first plan: {:?}", first);
    }

    #[test]
    fn a_failed_cluster_status_write_is_planned_again_the_same(
        history in history(copies),
        current in seen(5, copies()),
        later in 0i64..600,
    ) {
        let previous = cluster_reached(&history);
        let first = plan_cluster(&current, &previous);
        prop_assume!(first.status.is_some());
        let mut retry = again(&current);
        retry.now += later;
        let second = plan_cluster(&retry, &previous);
        prop_assert_eq!(&second.events, &first.events);
        prop_assert_eq!(second.ready, first.ready);
        prop_assert_eq!(second.request_served, first.request_served);
        prop_assert_eq!(second.retry, first.retry);
        prop_assert_eq!(second.hold, None);
        let text = |p: &ClusterPlan| serde_json::to_string(&p.status).unwrap();
        prop_assert_eq!(text(&second), retimed(text(&first), current.now, retry.now));
    }
}

// ---------------------------------------------------------------------------------------------
// Cases the properties found
// ---------------------------------------------------------------------------------------------

/// A reconcile of a valid credential 1 at `now`, with `targets`, verification disabled.
fn valid(targets: Vec<Target>, now: i64) -> Seen {
    Seen {
        source: Source::Valid(1),
        targets,
        held: None,
        checked_first: false,
        verification: Verification::Disabled,
        generation: 1,
        written_at: 100,
        wrote_at: 0,
        due: Default::default(),
        consumers: None,
        now,
    }
}

#[test]
fn a_rewrite_of_the_published_credential_is_recorded_by_the_retry_of_its_status_write() {
    let previous = reached(&[valid(vec![Target::Missing], 1_000)]);
    // Someone changed the target by hand: it is written again; the status write fails.
    let first = plan_namespaced(&valid(vec![Target::Stale], 2_000), &previous);
    assert_eq!(first.events.len(), 1, "{first:?}");
    let retry = plan_namespaced(&again(&valid(vec![Target::Stale], 2_000)), &previous);
    assert_eq!(retry, first);
}

#[test]
fn the_retry_of_a_failed_cluster_status_write_names_the_namespaces_written() {
    let previous = ClusterMendixCredentialStatus::default();
    let seen = valid(vec![Target::Missing], 1_000);
    let first = plan_cluster(&seen, &previous);
    let retry = plan_cluster(&again(&seen), &previous);
    assert_eq!(retry.events, first.events);
}

#[test]
fn a_conflict_beyond_the_failures_listed_is_announced_once() {
    let seen = valid(vec![Target::Foreign; MAX_FAILED_NAMESPACES + 1], 1_000);
    let first = plan_cluster(&seen, &ClusterMendixCredentialStatus::default());
    let conflicts: Vec<_> = first.events.iter().map(|e| e.reason).collect();
    assert_eq!(conflicts, ["TargetConflict"], "{first:?}");
    let after = cluster_written(&ClusterMendixCredentialStatus::default(), &first);
    let next = plan_cluster(&again(&seen), &after);
    assert_eq!(next.events, []);
}
