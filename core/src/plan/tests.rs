//! The plan, table by table: every Ready reason and TokenValid reason, entered from each other
//! state, and what a failed or a successful status write leaves for the next reconcile.

use super::*;
use crate::api::CredentialType;
use crate::classify::Reason;
use crate::consumers::Consumer;
use k8s_openapi::api::core::v1::Secret;
use std::time::Duration;

fn at(s: i64) -> Time {
    Time(jiff::Timestamp::from_second(s).unwrap())
}

fn published(fingerprint: &str, written_at: i64, wrote: bool) -> Sync {
    Sync::Published {
        target: "t".into(),
        fingerprint: fingerprint.into(),
        digest: fingerprint.into(),
        written_at: Some(at(written_at)),
        wrote,
        checked_first: false,
    }
}

/// "fp-b" held back while the target keeps "fp-a".
fn held(held: Held) -> Sync {
    Sync::Held {
        target: "t".into(),
        published: "fp-a".into(),
        pending: "fp-b".into(),
        held,
    }
}

fn answered(reason: Reason, when: i64) -> Verification {
    Verification::Answered(Answer {
        outcome: Outcome::of(reason),
        answered_at: at(when),
        next: Some(at(when + 3600)),
        serves_request: false,
    })
}

fn run(previous: &MendixCredentialStatus, sync: Sync, verification: Verification) -> Plan {
    run_used_by(previous, sync, verification, None)
}

/// The status a plan writes, or the previous one when it writes nothing.
fn after(previous: &MendixCredentialStatus, plan: &Plan) -> MendixCredentialStatus {
    plan.status.clone().unwrap_or_else(|| previous.clone())
}

fn reasons(plan: &Plan) -> Vec<(&'static str, bool)> {
    plan.events.iter().map(|e| (e.reason, e.warning)).collect()
}

fn condition_of(status: &MendixCredentialStatus, type_: &str) -> (String, String) {
    let c = conditions::find(&status.conditions, type_).expect("condition set");
    (c.status.clone(), c.reason.clone())
}

/// A resource synced and verified with credential "fp-a".
fn settled() -> MendixCredentialStatus {
    let first = run(
        &MendixCredentialStatus::default(),
        published("fp-a", 10, true),
        answered(Reason::Verified, 11),
    );
    first.status.unwrap()
}

#[test]
fn every_ready_reason_is_reached_from_synced_and_from_nothing() {
    for reason in ReadyReason::ALL {
        let sync = match reason {
            ReadyReason::Synced => published("fp-a", 10, false),
            ReadyReason::RotationRejected => {
                held(Held::Rejected(Outcome::of(Reason::TokenRejected)))
            }
            ReadyReason::RotationPending => {
                held(Held::Unanswered(Outcome::of(Reason::PlatformUnavailable)))
            }
            other => Sync::Refused(Ready::refused(other, format!("{} message", other.as_str()))),
        };
        for previous in [MendixCredentialStatus::default(), settled()] {
            let plan = run(&previous, sync.clone(), Verification::Waiting);
            let status = after(&previous, &plan);
            let expected = match reason {
                ReadyReason::Synced => "True",
                ReadyReason::RotationPending => "Unknown",
                _ => "False",
            };
            assert_eq!(
                condition_of(&status, "Ready"),
                (expected.to_owned(), reason.as_str().to_owned())
            );
            assert_eq!(plan.ready, reason);
            let warned = reasons(&plan).contains(&(reason.as_str(), true));
            let entered = conditions::find(&previous.conditions, "Ready")
                .is_none_or(|c| c.reason != reason.as_str());
            assert_eq!(
                warned,
                entered
                    && matches!(
                        reason,
                        ReadyReason::TargetConflict
                            | ReadyReason::InvalidSource
                            | ReadyReason::RotationRejected
                    ),
                "{reason:?} from {previous:?}"
            );
            // Staying in a reason announces nothing again.
            let again = run(&status, sync.clone(), Verification::Waiting);
            assert_eq!(again.status, None, "{reason:?}: nothing changed");
            assert!(again.events.is_empty(), "{reason:?}: {:?}", again.events);
        }
    }
}

#[test]
fn a_refused_source_keeps_what_was_published() {
    let previous = settled();
    let plan = run(
        &previous,
        Sync::Refused(Ready::refused(ReadyReason::InvalidSource, "bad")),
        Verification::Waiting,
    );
    let status = plan.status.unwrap();
    assert_eq!(status.token_fingerprint.as_deref(), Some("fp-a"));
    assert_eq!(status.last_synced_time, previous.last_synced_time);
    assert_eq!(condition_of(&status, "TokenValid").1, "Verified");
}

#[test]
fn token_valid_transitions_and_their_events() {
    use Reason::*;
    // (previous TokenValid reason, answer, resulting reason, Event announced)
    let table = [
        (None, Verified, Verified, Some((Verified, false))),
        (
            None,
            TokenRejected,
            TokenRejected,
            Some((TokenRejected, true)),
        ),
        (
            None,
            UserDeactivated,
            UserDeactivated,
            Some((UserDeactivated, true)),
        ),
        (None, PlatformUnavailable, PlatformUnavailable, None),
        (None, Forbidden, Forbidden, None),
        (
            Some(Verified),
            TokenRejected,
            TokenRejected,
            Some((TokenRejected, true)),
        ),
        (
            Some(Verified),
            UserDeactivated,
            UserDeactivated,
            Some((UserDeactivated, true)),
        ),
        (Some(Verified), PlatformUnavailable, Verified, None),
        (Some(Verified), RateLimited, Verified, None),
        (Some(Verified), EndpointNotAllowed, Verified, None),
        (
            Some(TokenRejected),
            Verified,
            Verified,
            Some((Verified, false)),
        ),
        (Some(TokenRejected), Forbidden, TokenRejected, None),
        (
            Some(UserDeactivated),
            TokenRejected,
            TokenRejected,
            Some((TokenRejected, true)),
        ),
        (
            Some(PlatformUnavailable),
            Verified,
            Verified,
            Some((Verified, false)),
        ),
        (Some(Verified), Verified, Verified, None),
    ];
    for (before, answer, expected, event) in table {
        let mut previous = MendixCredentialStatus::default();
        if let Some(before) = before {
            let plan = run(&previous, published("fp-a", 10, true), answered(before, 11));
            previous = plan.status.unwrap();
        }
        let plan = run(
            &previous,
            published("fp-a", 10, false),
            answered(answer, 50),
        );
        let status = after(&previous, &plan);
        assert_eq!(
            condition_of(&status, "TokenValid").1,
            expected.as_str(),
            "{before:?} then {answer:?}"
        );
        let announced: Vec<_> = plan
            .events
            .iter()
            .filter(|e| e.reason != "Synced")
            .map(|e| (e.reason, e.warning))
            .collect();
        let wanted: Vec<_> = event.iter().map(|(r, w)| (r.as_str(), *w)).collect();
        assert_eq!(announced, wanted, "{before:?} then {answer:?}");
        if is_definitive(answer) {
            assert_eq!(status.last_verified_time, Some(at(50)));
            assert_eq!(status.last_verification_error, None);
        } else {
            assert!(status.last_verification_error.is_some());
        }
    }
}

#[test]
fn a_failed_status_write_is_planned_again_with_its_events() {
    // A forced check found the token deleted; the status write failed. The retry starts from
    // the same previous status: the same status, the same Event, the request still served.
    let previous = settled();
    let mut verification = answered(Reason::TokenRejected, 60);
    if let Verification::Answered(a) = &mut verification {
        a.serves_request = true;
    }
    let first = run(
        &previous,
        published("fp-a", 10, false),
        verification.clone(),
    );
    let retry = run(
        &previous,
        published("fp-a", 10, false),
        verification.clone(),
    );
    assert_eq!(first, retry);
    assert_eq!(reasons(&retry), [("TokenRejected", true)]);
    assert!(retry.request_served);
    // Once written, the next reconcile has nothing to write or say.
    let written = retry.status.clone().unwrap();
    let next = run(&written, published("fp-a", 10, false), verification);
    assert_eq!(next.status, None);
    assert!(next.events.is_empty());
}

#[test]
fn a_target_write_is_announced_until_the_status_records_it() {
    let previous = settled();
    // Rotated: the target was written, then the status write failed; the retry finds the
    // target as written (not by itself) and still announces the write.
    let retry = run(
        &previous,
        published("fp-b", 70, false),
        Verification::Waiting,
    );
    assert_eq!(reasons(&retry), [("Synced", false), ("Rotated", false)]);
    let status = retry.status.unwrap();
    assert_eq!(status.last_synced_time, Some(at(70)));
    assert_eq!(status.token_fingerprint.as_deref(), Some("fp-b"));
    // The verdict was about the old credential.
    assert_eq!(condition_of(&status, "TokenValid").1, "Pending");
    assert_eq!(status.last_verified_time, None);
}

#[test]
fn another_instance_agrees_on_the_write_time() {
    // The same credential found current by another instance, or after a restart: the target's
    // time of the write is the API server's, the one the status records.
    let previous = settled();
    let plan = run(
        &previous,
        published("fp-a", 10, false),
        answered(Reason::Verified, 11),
    );
    assert_eq!(plan.status, None);
    assert!(plan.events.is_empty());
}

#[test]
fn a_rewrite_since_the_status_is_recorded_whoever_wrote_it() {
    // The target was written again (deleted by hand) with the published credential; the status
    // write failed. The first attempt and its retry plan the same.
    let previous = settled();
    let first = run(
        &previous,
        published("fp-a", 50, true),
        answered(Reason::Verified, 11),
    );
    let retry = run(
        &previous,
        published("fp-a", 50, false),
        answered(Reason::Verified, 11),
    );
    assert_eq!(retry, first);
    assert_eq!(reasons(&first), [("Synced", false)]);
    assert_eq!(first.status.unwrap().last_synced_time, Some(at(50)));
}

#[test]
fn a_write_is_since_the_status_when_later_to_the_second() {
    let (recorded, written) = (at(10), at(11));
    assert!(written_since(Some(&written), Some(&recorded)));
    assert!(written_since(Some(&recorded), None), "none recorded");
    assert!(!written_since(Some(&recorded), Some(&recorded)));
    assert!(!written_since(Some(&recorded), Some(&written)));
    assert!(!written_since(None, Some(&recorded)));
    // The status keeps whole seconds: a fraction later is the same write.
    let fraction = Time(recorded.0 + jiff::SignedDuration::from_millis(400));
    assert!(!written_since(Some(&fraction), Some(&recorded)));
}

#[test]
fn the_first_answer_is_waited_for_briefly() {
    let fresh = MendixCredentialStatus::default();
    let plan = run(
        &fresh,
        published("fp-a", 99, true),
        Verification::Queued { since: at(99) },
    );
    assert_eq!(plan.status, None, "held for the first answer");
    assert!(plan.events.is_empty());
    assert_eq!(plan.hold, Some(FIRST_ANSWER_HOLD - Duration::from_secs(1)));
    // Held no longer than FIRST_ANSWER_HOLD: then Pending is written.
    let plan = run(
        &fresh,
        published("fp-a", 90, true),
        Verification::Queued { since: at(90) },
    );
    assert_eq!(plan.hold, None);
    assert_eq!(reasons(&plan), [("Synced", false)]);
    let status = plan.status.unwrap();
    assert_eq!(condition_of(&status, "TokenValid").1, "Pending");
}

#[test]
fn disabling_verification_replaces_any_verdict_and_clears_the_schedule() {
    let previous = settled();
    let plan = run(
        &previous,
        published("fp-a", 10, false),
        Verification::Disabled,
    );
    let status = plan.status.unwrap();
    assert_eq!(
        condition_of(&status, "TokenValid"),
        ("Unknown".to_owned(), "VerificationDisabled".to_owned())
    );
    assert_eq!(status.next_verification_time, None);
    assert!(plan.events.is_empty());
}

#[test]
fn the_target_decision() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
    let owner = OwnerReference {
        api_version: "mxcred.io/v1alpha1".into(),
        kind: "MendixCredential".into(),
        name: "c".into(),
        uid: "uid-1".into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let desired = Secret {
        metadata: ObjectMeta {
            name: Some("t".into()),
            owner_references: Some(vec![owner.clone()]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        ..Secret::default()
    };
    let mut foreign = desired.clone();
    foreign.metadata.owner_references = Some(vec![OwnerReference {
        uid: "someone-else".into(),
        ..owner
    }]);
    foreign.metadata.resource_version = Some("5".into());
    assert_eq!(
        target_action(None, &desired, by("uid-1", "c")),
        TargetAction::Create
    );
    assert_eq!(
        target_action(Some(&foreign), &desired, by("uid-1", "c")),
        TargetAction::Conflict
    );
    // Labelled as ours by someone who may patch Secrets: still not ours.
    let mut forged = desired.clone();
    forged.metadata.owner_references = None;
    forged.metadata.labels = Some(
        [
            (
                "app.kubernetes.io/managed-by".to_owned(),
                "mxcred-operator".to_owned(),
            ),
            ("mxcred.io/credential".to_owned(), "c".to_owned()),
        ]
        .into(),
    );
    assert_eq!(
        target_action(Some(&forged), &desired, by("uid-1", "c")),
        TargetAction::Conflict
    );
    let mut ours = desired.clone();
    ours.metadata.resource_version = Some("7".into());
    assert_eq!(
        target_action(Some(&ours), &desired, by("uid-1", "c")),
        TargetAction::Keep { written_at: None }
    );
    ours.type_ = Some("kubernetes.io/tls".into());
    assert_eq!(
        target_action(Some(&ours), &desired, by("uid-1", "c")),
        TargetAction::Apply {
            resource_version: "7".into()
        }
    );
}

#[test]
fn a_rejected_rotation_keeps_the_working_credential_and_warns_once_per_credential() {
    let previous = settled();
    let plan = run(
        &previous,
        held(Held::Rejected(Outcome::of(Reason::UserDeactivated))),
        answered(Reason::Verified, 90),
    );
    assert_eq!(reasons(&plan), [("RotationRejected", true)]);
    let status = plan.status.unwrap();
    assert_eq!(
        condition_of(&status, "Ready"),
        ("False".into(), "RotationRejected".into())
    );
    let ready = conditions::find(&status.conditions, "Ready").unwrap();
    assert!(
        ready.message.contains("UserDeactivated") && ready.message.contains("fp-a"),
        "names the verdict and the credential kept: {}",
        ready.message
    );
    assert_eq!(status.token_fingerprint.as_deref(), Some("fp-a"));
    assert_eq!(status.pending_fingerprint.as_deref(), Some("fp-b"));
    assert_eq!(
        condition_of(&status, "TokenValid"),
        ("True".into(), "Verified".into()),
        "the published credential's verdict goes on"
    );
    assert_eq!(status.last_verified_time, Some(at(90)));
    // Another rejected credential is announced too.
    let next = Sync::Held {
        target: "t".into(),
        published: "fp-a".into(),
        pending: "fp-c".into(),
        held: Held::Rejected(Outcome::of(Reason::TokenRejected)),
    };
    let again = run(&status, next, answered(Reason::Verified, 90));
    assert_eq!(reasons(&again), [("RotationRejected", true)]);
}

#[test]
fn a_rotation_waits_briefly_for_its_check_then_says_pending() {
    let previous = settled();
    let queued = |since| held(Held::Queued { since: at(since) });
    let plan = run(&previous, queued(99), Verification::Waiting);
    assert_eq!(plan.status, None, "held for the check's answer");
    assert_eq!(plan.hold, Some(Duration::from_secs(2)));
    let plan = run(&previous, queued(90), Verification::Waiting);
    assert_eq!(plan.hold, None);
    let status = plan.status.unwrap();
    assert_eq!(
        condition_of(&status, "Ready"),
        ("Unknown".into(), "RotationPending".into())
    );
    assert!(plan.events.is_empty(), "{:?}", plan.events);
}

#[test]
fn an_accepted_rotation_is_published_and_announced() {
    let pending = run(
        &settled(),
        held(Held::Unanswered(Outcome::of(Reason::RateLimited))),
        Verification::Waiting,
    )
    .status
    .unwrap();
    let accepted = Sync::Published {
        target: "t".into(),
        fingerprint: "fp-b".into(),
        digest: "fp-b".into(),
        written_at: Some(at(95)),
        wrote: true,
        checked_first: true,
    };
    let plan = run(&pending, accepted, answered(Reason::Verified, 94));
    let events = &plan.events;
    assert_eq!(reasons(&plan), [("Synced", false), ("Rotated", false)]);
    assert!(
        events[1].note.contains("after the platform accepted it")
            && events[1].note.contains("replacing fp-a"),
        "{}",
        events[1].note
    );
    let status = plan.status.unwrap();
    assert_eq!(status.pending_fingerprint, None);
    assert_eq!(status.token_fingerprint.as_deref(), Some("fp-b"));
    assert_eq!(
        condition_of(&status, "TokenValid"),
        ("True".into(), "Verified".into())
    );
    assert_eq!(condition_of(&status, "Ready").1, "Synced");
}

#[test]
fn a_credential_with_the_published_fingerprint_but_another_digest_is_a_new_one() {
    let previous = run(
        &MendixCredentialStatus::default(),
        Sync::Published {
            target: "t".into(),
            fingerprint: "sha256:262dd65c426c".into(),
            digest: "sha256:262dd65c426c-working".into(),
            written_at: Some(at(10)),
            wrote: true,
            checked_first: false,
        },
        answered(Reason::Verified, 11),
    )
    .status
    .unwrap();
    assert_eq!(
        previous.token_digest.as_deref(),
        Some("sha256:262dd65c426c-working")
    );
    let forged = Sync::Published {
        target: "t".into(),
        fingerprint: "sha256:262dd65c426c".into(),
        digest: "sha256:262dd65c426c-forged".into(),
        written_at: Some(at(20)),
        wrote: true,
        checked_first: false,
    };
    let status = after(&previous, &run(&previous, forged, Verification::Waiting));
    // The working credential's verdict is not carried over to it.
    assert_eq!(condition_of(&status, "TokenValid").1, "Pending");
    assert_eq!(status.last_verified_time, None);
    assert_eq!(
        status.token_digest.as_deref(),
        Some("sha256:262dd65c426c-forged")
    );
}

/// The publisher `uid` of MendixCredential `name`.
fn by<'a>(uid: &'a str, name: &'a str) -> crate::render::Publisher<'a> {
    crate::render::Publisher {
        scope: crate::api::Scope::Namespaced,
        uid,
        name,
    }
}

mod rotation_due {
    use super::*;
    use crate::due::{Inputs, Policy, Stamp, Stamps};

    const HOUR: u64 = 3600;

    fn plan_at(previous: &MendixCredentialStatus, sync: Sync, due: &Inputs, now: i64) -> Plan {
        reconcile(Observed {
            generation: Some(1),
            credential_type: Some(CredentialType::PersonalAccessToken),
            previous,
            sync,
            verification: answered(Reason::Verified, 11),
            due: due.clone(),
            consumers: None,
            now: at(now),
        })
    }

    fn max_age(hours: u64) -> Inputs {
        Inputs {
            policy: Policy {
                max_age: Some(Duration::from_secs(hours * HOUR)),
                ..Policy::default()
            },
            stamps: Stamps::default(),
        }
    }

    fn due_events(plan: &Plan) -> usize {
        plan.events
            .iter()
            .filter(|e| e.reason == condition::ROTATION_DUE && e.warning)
            .count()
    }

    #[test]
    fn due_is_announced_once_and_keeps_ready() {
        let due = max_age(1);
        let first = plan_at(&Default::default(), published("fp-a", 10, true), &due, 10);
        let fresh = after(&Default::default(), &first);
        assert_eq!(fresh.published_time, Some(at(10)));
        assert_eq!(fresh.rotate_by, Some(at(3610)));
        assert_eq!(
            condition_of(&fresh, "RotationDue"),
            ("False".into(), "NotDue".into())
        );
        assert_eq!(first.due_in, Some(Duration::from_secs(3601)));
        let late = plan_at(&fresh, published("fp-a", 10, false), &due, 3611);
        let aged = after(&fresh, &late);
        assert_eq!(
            condition_of(&aged, "RotationDue"),
            ("True".into(), "MaxAgeExceeded".into())
        );
        assert_eq!(
            condition_of(&aged, "Ready"),
            ("True".into(), "Synced".into())
        );
        assert_eq!(due_events(&late), 1);
        // Planning its own output writes nothing and announces nothing.
        let again = plan_at(&aged, published("fp-a", 10, false), &due, 3700);
        assert_eq!(again.status, None);
        assert_eq!(due_events(&again), 0);
        // A change of reason is announced again.
        let expiring = Inputs {
            stamps: Stamps {
                expires_at: Stamp::At(at(4000).0),
                ..Stamps::default()
            },
            ..due
        };
        let soon = plan_at(&aged, published("fp-a", 10, false), &expiring, 3700);
        assert_eq!(due_events(&soon), 1);
        assert_eq!(
            condition_of(&after(&aged, &soon), "RotationDue").1,
            "ExpiresSoon"
        );
    }

    #[test]
    fn a_new_credential_resets_the_age_and_a_restart_keeps_it() {
        let due = max_age(1);
        let first = plan_at(&Default::default(), published("fp-a", 10, true), &due, 10);
        let fresh = after(&Default::default(), &first);
        // Another instance (or a restart) reads the status: the age still counts from 10.
        let later = plan_at(&fresh, published("fp-a", 10, false), &due, 5000);
        assert_eq!(after(&fresh, &later).published_time, Some(at(10)));
        let aged = after(&fresh, &later);
        let rotated = plan_at(&aged, published("fp-b", 5000, true), &due, 5000);
        let new = after(&aged, &rotated);
        assert_eq!(new.published_time, Some(at(5000)));
        assert_eq!(
            condition_of(&new, "RotationDue"),
            ("False".into(), "NotDue".into())
        );
        assert_eq!(due_events(&rotated), 0);
    }

    #[test]
    fn without_max_age_or_expiry_there_is_no_condition() {
        let first = plan_at(
            &Default::default(),
            published("fp-a", 10, true),
            &max_age(1),
            10,
        );
        let with = after(&Default::default(), &first);
        let plan = plan_at(&with, published("fp-a", 10, false), &Inputs::default(), 20);
        let without = after(&with, &plan);
        assert!(conditions::find(&without.conditions, "RotationDue").is_none());
        assert_eq!(without.rotate_by, None);
        assert_eq!(plan.due_in, None);
    }

    #[test]
    fn a_malformed_annotation_is_reported_not_refused() {
        let due = Inputs {
            policy: Policy::default(),
            stamps: Stamps {
                expires_at: Stamp::Malformed("annotation mxcred.io/expires-at is bad".into()),
                ..Stamps::default()
            },
        };
        let plan = plan_at(&Default::default(), published("fp-a", 10, true), &due, 10);
        let status = after(&Default::default(), &plan);
        assert_eq!(
            condition_of(&status, "Ready"),
            ("True".into(), "Synced".into())
        );
        let c = conditions::find(&status.conditions, "RotationDue").unwrap();
        assert_eq!(c.status, "False");
        assert!(c.message.contains("expires-at"), "{}", c.message);
    }
}

/// A plan of `sync` and `verification` with `consumers` known.
fn run_used_by(
    previous: &MendixCredentialStatus,
    sync: Sync,
    verification: Verification,
    consumers: Option<Consumers>,
) -> Plan {
    reconcile(Observed {
        generation: Some(1),
        credential_type: Some(CredentialType::PersonalAccessToken),
        previous,
        sync,
        verification,
        due: Default::default(),
        consumers,
        now: at(100),
    })
}

fn used_by(names: &[&str]) -> Consumers {
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
}

#[test]
fn a_rejected_credential_names_the_workloads_it_breaks_in_its_condition_and_event() {
    let previous = settled();
    let plan = run_used_by(
        &previous,
        published("fp-a", 10, false),
        answered(Reason::TokenRejected, 95),
        Some(used_by(&["a", "b", "c", "d"])),
    );
    let status = plan.status.clone().unwrap();
    let affected = "Affected: 4 workloads (Deployment a, Deployment b, Deployment c and 1 more).";
    let valid = conditions::find(&status.conditions, "TokenValid").unwrap();
    assert!(valid.message.ends_with(affected), "{}", valid.message);
    let event = plan
        .events
        .iter()
        .find(|e| e.reason == "TokenRejected")
        .unwrap();
    assert!(event.note.ends_with(affected), "{}", event.note);
    assert_eq!(status.consumers.as_ref().and_then(|c| c.count), Some(4));

    // One goes: the message follows, without another Event; while the index is not current,
    // the status keeps what it recorded.
    let plan = run_used_by(
        &status,
        published("fp-a", 10, false),
        Verification::Waiting,
        Some(used_by(&["a"])),
    );
    let later = plan.status.clone().unwrap();
    let valid = conditions::find(&later.conditions, "TokenValid").unwrap();
    assert!(
        valid
            .message
            .ends_with("Affected: 1 workload (Deployment a)."),
        "{}",
        valid.message
    );
    assert!(plan.events.is_empty(), "{:?}", plan.events);
    let plan = run_used_by(
        &later,
        published("fp-a", 10, false),
        Verification::Waiting,
        None,
    );
    assert_eq!(plan.status, None);
}

#[test]
fn a_rejected_rotation_names_the_workloads_that_keep_the_old_credential() {
    let plan = run_used_by(
        &settled(),
        held(Held::Rejected(Outcome::of(Reason::TokenRejected))),
        answered(Reason::Verified, 90),
        Some(used_by(&["runner"])),
    );
    let status = plan.status.unwrap();
    let ready = conditions::find(&status.conditions, "Ready").unwrap();
    assert!(
        ready
            .message
            .ends_with("Affected: 1 workload (Deployment runner)."),
        "{}",
        ready.message
    );
    let event = plan
        .events
        .iter()
        .find(|e| e.reason == "RotationRejected")
        .unwrap();
    assert!(
        event
            .note
            .ends_with("Affected: 1 workload (Deployment runner)."),
        "{}",
        event.note
    );
}
