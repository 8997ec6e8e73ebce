//! The restart decisions of a ClusterMendixCredential: what is a failure, and what the status
//! and the Events say.

use super::*;
use crate::api::WorkloadKind;
use crate::restart::Step;

fn runner() -> WorkloadRef {
    WorkloadRef {
        kind: WorkloadKind::Deployment,
        name: "runner".into(),
    }
}

fn refused(step: Step, code: u16, reason: &str) -> Outcome {
    Outcome::Refused {
        step,
        code,
        reason: reason.into(),
    }
}

fn unchanged() -> ClusterPlan {
    ClusterPlan {
        status: None,
        events: vec![],
        ready: "Synced",
        request_served: false,
        hold: None,
        retry: false,
        due_in: None,
    }
}

fn forbidden(ns: &str) -> RolloutRestartFailure {
    failure(ns, &runner(), &refused(Step::Patch, 403, "Forbidden")).unwrap()
}

fn restarts(failures: Vec<RolloutRestartFailure>, restarted: &[&str]) -> Restarts {
    Restarts {
        listed: true,
        failures,
        restarted: restarted
            .iter()
            .map(|ns| (ns.to_string(), runner()))
            .collect(),
        fingerprint: "sha256:abc".into(),
    }
}

fn events(plan: &ClusterPlan) -> Vec<(&'static str, bool)> {
    plan.events.iter().map(|e| (e.reason, e.warning)).collect()
}

#[test]
fn a_missing_workload_is_skipped_and_settled_the_others_fail() {
    let missing = refused(Step::Read, 404, "NotFound");
    assert_eq!(failure("a", &runner(), &missing), None);
    assert!(settled(&[(runner(), missing)]));
    let f = forbidden("a");
    assert_eq!(f.reason, RolloutRestartProblem::Forbidden);
    assert!(
        f.message.contains("rolloutRestart.enabled=true"),
        "{}",
        f.message
    );
    let invalid = failure("a", &runner(), &refused(Step::Patch, 422, "Invalid")).unwrap();
    assert_eq!(invalid.reason, RolloutRestartProblem::Invalid);
    let unanswered = Outcome::Unanswered { step: Step::Read };
    assert_eq!(
        failure("a", &runner(), &unanswered).unwrap().reason,
        RolloutRestartProblem::Failed
    );
    assert!(!settled(&[(runner(), unanswered)]));
    assert!(!settled(&[(
        runner(),
        refused(Step::Read, 403, "Forbidden")
    )]));
    let holds = Outcome::Holds {
        fingerprint: "sha256:abc".into(),
    };
    assert_eq!(failure("a", &runner(), &holds), None);
    assert!(settled(&[(runner(), holds)]));
}

#[test]
fn a_new_failure_is_announced_once_and_listed_with_its_count() {
    let previous = ClusterMendixCredentialStatus::default();
    let plan = amend(
        unchanged(),
        &previous,
        Some(restarts(vec![forbidden("b")], &["a"])),
    );
    assert_eq!(
        events(&plan),
        vec![(restart::RESTART_FAILED, true), (restart::RESTARTED, false)]
    );
    let status = plan.status.unwrap();
    assert_eq!(status.rollout_restart_failures, vec![forbidden("b")]);
    assert_eq!(status.rollout_restart_failure_count, Some(1));

    // The same failure again: no Event, no status write.
    let again = amend(
        unchanged(),
        &status,
        Some(restarts(vec![forbidden("b")], &[])),
    );
    assert!(again.events.is_empty());
    assert_eq!(again.status, None);

    // Resolved: the list empties, no Event.
    let resolved = amend(unchanged(), &status, Some(restarts(vec![], &[])));
    assert!(resolved.events.is_empty());
    let after = resolved.status.unwrap();
    assert!(after.rollout_restart_failures.is_empty());
    assert_eq!(after.rollout_restart_failure_count, Some(0));
}

#[test]
fn failures_are_bounded_sorted_and_counted() {
    let failures: Vec<_> = (0..25)
        .rev()
        .map(|i| forbidden(&format!("ns-{i:02}")))
        .collect();
    let plan = amend(
        unchanged(),
        &ClusterMendixCredentialStatus::default(),
        Some(restarts(failures, &[])),
    );
    assert_eq!(events(&plan), vec![(restart::RESTART_FAILED, true)]);
    let note = &plan.events[0].note;
    assert!(note.contains(", and 15 more. "), "{note}");
    assert!(
        note.ends_with("or an admission policy refused it"),
        "{note}"
    );
    let status = plan.status.unwrap();
    assert_eq!(status.rollout_restart_failures.len(), MAX_RESTART_FAILURES);
    assert_eq!(status.rollout_restart_failures[0].namespace, "ns-00");
    assert_eq!(status.rollout_restart_failure_count, Some(25));
}

#[test]
fn nothing_tried_keeps_the_failures_and_no_list_says_nothing() {
    let previous = ClusterMendixCredentialStatus {
        rollout_restart_failures: vec![forbidden("b")],
        rollout_restart_failure_count: Some(1),
        ..Default::default()
    };
    // A plan whose status changed elsewhere keeps the failures it does not decide.
    let mut changed = unchanged();
    changed.status = Some(ClusterMendixCredentialStatus {
        secret_name: Some("t".into()),
        ..Default::default()
    });
    let status = amend(changed, &previous, None).status.unwrap();
    assert_eq!(status.rollout_restart_failures, vec![forbidden("b")]);
    assert_eq!(amend(unchanged(), &previous, None).status, None);

    let none_listed = Restarts {
        listed: false,
        ..Default::default()
    };
    let status = amend(unchanged(), &previous, Some(none_listed))
        .status
        .unwrap();
    assert_eq!(status.rollout_restart_failure_count, None);
    assert!(status.rollout_restart_failures.is_empty());
}

#[test]
fn a_held_plan_is_left_as_it_is() {
    let mut held = unchanged();
    held.hold = Some(std::time::Duration::from_secs(1));
    let plan = amend(
        held.clone(),
        &Default::default(),
        Some(restarts(vec![forbidden("a")], &["b"])),
    );
    assert_eq!(plan, held);
}

#[test]
fn notes_fit_an_event_however_long_the_names() {
    let long = WorkloadRef {
        kind: WorkloadKind::Deployment,
        name: "w".repeat(253),
    };
    let failures: Vec<_> = (0..20)
        .map(|i| {
            failure(
                &format!("{}{i:02}", "n".repeat(61)),
                &long,
                &refused(Step::Read, 403, "Forbidden"),
            )
            .unwrap()
        })
        .collect();
    let restarted = (0..20)
        .map(|i| (format!("{}{i:02}", "n".repeat(61)), long.clone()))
        .collect();
    let restarts = Restarts {
        listed: true,
        failures,
        restarted,
        fingerprint: "sha256:abc".into(),
    };
    let plan = amend(unchanged(), &Default::default(), Some(restarts));
    assert_eq!(plan.events.len(), 2);
    for event in &plan.events {
        assert!(event.note.len() <= 1024, "{}", event.note.len());
        assert!(event.note.ends_with("..."), "{}", event.note);
    }
}
