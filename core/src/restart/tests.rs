//! The restart decisions: keys, patches, status entries and Events, table by table.

use super::*;
use crate::api::Target;
use crate::plan::ReadyReason;

fn deployment(name: &str) -> WorkloadRef {
    WorkloadRef {
        kind: WorkloadKind::Deployment,
        name: name.into(),
    }
}

fn holds(fingerprint: &str) -> Outcome {
    Outcome::Holds {
        fingerprint: fingerprint.into(),
    }
}

fn refused(step: Step, code: u16, reason: &str) -> Outcome {
    Outcome::Refused {
        step,
        code,
        reason: reason.into(),
    }
}

/// A plan as `plan::reconcile` makes it when the rest of the status did not change.
fn unchanged() -> Plan {
    Plan {
        status: None,
        events: vec![],
        ready: ReadyReason::Synced,
        request_served: false,
        hold: None,
        due_in: None,
    }
}

fn status_with(entries: Vec<RolloutRestartStatus>) -> MendixCredentialStatus {
    MendixCredentialStatus {
        secret_name: Some("t".into()),
        rollout_restart: entries,
        ..Default::default()
    }
}

fn events(plan: &Plan) -> Vec<(&'static str, bool)> {
    plan.events.iter().map(|e| (e.reason, e.warning)).collect()
}

/// Runs one reconcile's restart step from `previous` and returns the plan and the status after.
fn step(
    previous: &MendixCredentialStatus,
    outcomes: &[(&WorkloadRef, Outcome)],
) -> (Plan, MendixCredentialStatus) {
    let entries = outcomes
        .iter()
        .map(|(w, o)| entry(w, o, previous_entry(previous, w)))
        .collect();
    let plan = amend(unchanged(), previous, Some(entries));
    let after = plan.status.clone().unwrap_or_else(|| previous.clone());
    (plan, after)
}

fn is_annotation_key(key: &str) -> bool {
    let Some((prefix, name)) = key.split_once('/') else {
        return false;
    };
    let alnum = |c: char| c.is_ascii_alphanumeric();
    crate::spec::is_dns_subdomain(prefix)
        && !name.is_empty()
        && name.len() <= 63
        && name.starts_with(alnum)
        && name.ends_with(alnum)
        && name
            .chars()
            .all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
}

#[test]
fn each_resource_has_its_own_annotation_and_field_manager() {
    assert_eq!(annotation_key("deploy-bot"), "restart.mxcred.io/deploy-bot");
    assert_eq!(
        field_manager("deploy-bot"),
        "mxcred-operator/restart/deploy-bot"
    );
    assert_ne!(annotation_key("a"), annotation_key("b"));
    assert_ne!(field_manager("a"), field_manager("b"));

    // Names up to 253 characters still give valid, distinct keys.
    let long_a = format!("{}-a", "x".repeat(250));
    let long_b = format!("{}-b", "x".repeat(250));
    let dotted = format!("{}.{}", "y".repeat(56), "z".repeat(100));
    for name in [&long_a, &long_b, &dotted, &"a".repeat(63), &"a".repeat(64)] {
        let key = annotation_key(name);
        assert!(is_annotation_key(&key), "{key}");
        assert!(field_manager(name).len() <= 128, "{}", field_manager(name));
    }
    assert_ne!(annotation_key(&long_a), annotation_key(&long_b));
    assert_ne!(field_manager(&long_a), field_manager(&long_b));
    assert_eq!(annotation_key(&long_a), annotation_key(&long_a), "stable");
    assert_eq!(
        annotation_key(&"a".repeat(63)),
        format!("restart.mxcred.io/{}", "a".repeat(63))
    );
}

#[test]
fn the_listed_workloads_each_once_in_order() {
    let mut spec = MendixCredentialSpec::default();
    assert_eq!(workloads(&spec), vec![]);
    let statefulset = WorkloadRef {
        kind: WorkloadKind::StatefulSet,
        name: "runner".into(),
    };
    spec.target = Some(Target {
        rollout_restart: Some(vec![
            deployment("runner"),
            statefulset.clone(),
            deployment("runner"),
            deployment("agent"),
        ]),
        ..Default::default()
    });
    assert_eq!(
        workloads(&spec),
        vec![deployment("runner"), statefulset, deployment("agent")]
    );
}

#[test]
fn a_workload_is_patched_only_when_it_holds_another_credential() {
    let key = annotation_key("bot");
    let mut annotations = BTreeMap::from([("other".to_owned(), "x".to_owned())]);
    assert_eq!(held(None, &key), None);
    assert_eq!(held(Some(&annotations), &key), None);
    assert!(needs_patch(
        held(Some(&annotations), &key),
        "sha256:aaaaaaaaaaaa"
    ));

    annotations.insert(key.clone(), "sha256:aaaaaaaaaaaa".into());
    assert!(
        !needs_patch(held(Some(&annotations), &key), "sha256:aaaaaaaaaaaa"),
        "the same credential again (a restart of the operator, a resync): no patch"
    );
    // Two rotations within one second: each has its own fingerprint, each restarts.
    assert!(needs_patch(
        held(Some(&annotations), &key),
        "sha256:bbbbbbbbbbbb"
    ));
    // Another resource's annotation on the same workload is not ours.
    assert!(needs_patch(
        held(Some(&annotations), &annotation_key("other-bot")),
        "sha256:aaaaaaaaaaaa"
    ));
}

#[test]
fn the_patch_sets_the_annotation_and_nothing_else() {
    let body = apply_body(
        &WorkloadRef {
            kind: WorkloadKind::DaemonSet,
            name: "agent".into(),
        },
        "restart.mxcred.io/bot",
        "sha256:aaaaaaaaaaaa",
    );
    assert_eq!(
        body,
        serde_json::json!({
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": "agent"},
            "spec": {"template": {"metadata": {"annotations": {"restart.mxcred.io/bot": "sha256:aaaaaaaaaaaa"}}}},
        })
    );
}

#[test]
fn problems_are_named_with_what_to_do_and_never_the_servers_message() {
    let w = deployment("runner");
    let earlier = entry(&w, &holds("sha256:old"), None);
    let cases = [
        (
            refused(Step::Read, 404, "NotFound"),
            RolloutRestartProblem::NotFound,
            None,
            "does not exist",
        ),
        (
            refused(Step::Read, 403, "Forbidden"),
            RolloutRestartProblem::Forbidden,
            Some("sha256:old"),
            "may not read Deployment \"runner\" (HTTP 403 Forbidden): the chart must be installed with rolloutRestart.enabled=true",
        ),
        (
            refused(Step::Patch, 403, "Forbidden"),
            RolloutRestartProblem::Forbidden,
            Some("sha256:old"),
            "may not patch",
        ),
        (
            refused(Step::Patch, 422, "Invalid"),
            RolloutRestartProblem::Invalid,
            Some("sha256:old"),
            "refused to patch Deployment \"runner\" (HTTP 422 Invalid)",
        ),
        (
            refused(Step::Patch, 500, "InternalError"),
            RolloutRestartProblem::Failed,
            Some("sha256:old"),
            "HTTP 500 InternalError); tried again",
        ),
        (
            Outcome::Unanswered { step: Step::Read },
            RolloutRestartProblem::Failed,
            Some("sha256:old"),
            "did not answer",
        ),
        (
            Outcome::NoConsent {
                entry: "bot".into(),
            },
            RolloutRestartProblem::NoConsent,
            Some("sha256:old"),
            "its annotation mxcred.io/restart-on does not list \"bot\"",
        ),
    ];
    for (outcome, problem, fingerprint, says) in cases {
        let e = entry(&w, &outcome, Some(&earlier));
        assert_eq!(e.reason, Some(problem), "{outcome:?}");
        assert_eq!(e.fingerprint.as_deref(), fingerprint, "{outcome:?}");
        let message = e.message.unwrap();
        assert!(message.contains(says), "{message}");
    }
    let ok = entry(&w, &holds("sha256:new"), Some(&earlier));
    assert_eq!((ok.reason, ok.message), (None, None));
    assert_eq!(ok.fingerprint.as_deref(), Some("sha256:new"));
}

#[test]
fn a_restart_is_announced_once_and_repeats_change_nothing() {
    let runner = deployment("runner");
    let (plan, after) = step(&status_with(vec![]), &[(&runner, holds("sha256:a"))]);
    assert_eq!(events(&plan), [(RESTARTED, false)]);
    assert!(
        plan.events[0]
            .note
            .contains("restarted for credential sha256:a: Deployment \"runner\"")
    );
    assert_eq!(after.rollout_restart.len(), 1);

    // The next reconcile (or a restarted operator) finds it holding the same: nothing to write.
    let (plan, again) = step(&after, &[(&runner, holds("sha256:a"))]);
    assert_eq!(plan.status, None);
    assert!(plan.events.is_empty());
    assert_eq!(again, after);

    // A rotation: one more.
    let (plan, _) = step(&after, &[(&runner, holds("sha256:b"))]);
    assert_eq!(events(&plan), [(RESTARTED, false)]);
}

#[test]
fn a_problem_warns_on_transition_only_and_never_blocks_the_others() {
    let runner = deployment("runner");
    let gone = deployment("gone");
    let (plan, after) = step(
        &status_with(vec![]),
        &[
            (&gone, refused(Step::Read, 404, "NotFound")),
            (&runner, holds("sha256:a")),
        ],
    );
    assert_eq!(events(&plan), [(RESTART_FAILED, true), (RESTARTED, false)]);
    assert!(after.rollout_restart.iter().any(|e| e.reason.is_some()));

    // Still missing: no second Warning.
    let (plan, after) = step(
        &after,
        &[
            (&gone, refused(Step::Read, 404, "NotFound")),
            (&runner, holds("sha256:a")),
        ],
    );
    assert!(plan.events.is_empty());
    assert_eq!(plan.status, None);

    // Another problem is a new transition.
    let (plan, after) = step(
        &after,
        &[
            (&gone, refused(Step::Patch, 403, "Forbidden")),
            (&runner, holds("sha256:a")),
        ],
    );
    assert_eq!(events(&plan), [(RESTART_FAILED, true)]);

    // Solved: the workload got the credential.
    let (plan, after) = step(
        &after,
        &[(&gone, holds("sha256:a")), (&runner, holds("sha256:a"))],
    );
    assert_eq!(events(&plan), [(RESTARTED, false)]);
    assert!(after.rollout_restart.iter().all(|e| e.reason.is_none()));
}

#[test]
fn a_workload_that_was_restarted_and_then_failed_is_not_announced_again_when_it_holds_the_same() {
    let runner = deployment("runner");
    let (_, after) = step(&status_with(vec![]), &[(&runner, holds("sha256:a"))]);
    let (_, after) = step(
        &after,
        &[(&runner, Outcome::Unanswered { step: Step::Read })],
    );
    assert_eq!(
        after.rollout_restart[0].fingerprint.as_deref(),
        Some("sha256:a")
    );
    let (plan, _) = step(&after, &[(&runner, holds("sha256:a"))]);
    assert!(plan.events.is_empty(), "{:?}", plan.events);
    assert!(plan.status.is_some(), "the problem is cleared");
}

#[test]
fn nothing_is_decided_when_the_target_does_not_hold_the_current_credential() {
    let runner = deployment("runner");
    let (_, previous) = step(&status_with(vec![]), &[(&runner, holds("sha256:a"))]);
    let plan = amend(unchanged(), &previous, None);
    assert_eq!(plan, unchanged());
}

#[test]
fn a_held_status_stays_held() {
    let runner = deployment("runner");
    let held_back = Plan {
        hold: Some(std::time::Duration::from_secs(1)),
        ..unchanged()
    };
    let entries = vec![entry(&runner, &holds("sha256:a"), None)];
    assert_eq!(
        amend(held_back.clone(), &status_with(vec![]), Some(entries)),
        held_back
    );
}

#[test]
fn the_rest_of_a_new_status_is_kept_and_an_emptied_list_clears_the_field() {
    let runner = deployment("runner");
    let (_, previous) = step(&status_with(vec![]), &[(&runner, holds("sha256:a"))]);
    let mut written = previous.clone();
    written.token_fingerprint = Some("sha256:b".into());
    let plan = Plan {
        status: Some(written),
        ..unchanged()
    };
    let plan = amend(
        plan,
        &previous,
        Some(vec![entry(&runner, &holds("sha256:b"), None)]),
    );
    let status = plan.status.unwrap();
    assert_eq!(status.token_fingerprint.as_deref(), Some("sha256:b"));
    assert_eq!(
        status.rollout_restart[0].fingerprint.as_deref(),
        Some("sha256:b")
    );

    let plan = amend(unchanged(), &previous, Some(vec![]));
    assert_eq!(plan.status.unwrap().rollout_restart, vec![]);
    assert!(
        plan.events.is_empty(),
        "a workload dropped from the list is not announced"
    );
}

#[test]
fn a_cluster_resource_has_its_own_key_and_manager() {
    let long = "c".repeat(200);
    for name in ["deploy-bot", long.as_str()] {
        assert_ne!(cluster_annotation_key(name), annotation_key(name));
        assert_ne!(cluster_field_manager(name), field_manager(name));
        let key = cluster_annotation_key(name);
        let (domain, part) = key.split_once('/').unwrap();
        assert_eq!(domain, CLUSTER_ANNOTATION_DOMAIN);
        assert!(part.len() <= 63, "{key}");
    }
    assert_eq!(
        cluster_annotation_key("deploy-bot"),
        "cluster.restart.mxcred.io/deploy-bot"
    );
    assert_eq!(
        cluster_field_manager("deploy-bot"),
        "mxcred-operator/cluster-restart/deploy-bot"
    );
}

#[test]
fn many_workloads_make_one_event_of_each_kind() {
    let workloads: Vec<WorkloadRef> = (0..16).map(|i| deployment(&format!("w{i}"))).collect();
    let outcomes: Vec<(&WorkloadRef, Outcome)> = workloads
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let outcome = if i % 2 == 0 {
                holds("sha256:a")
            } else {
                refused(Step::Read, 404, "NotFound")
            };
            (w, outcome)
        })
        .collect();
    let (plan, _) = step(&status_with(vec![]), &outcomes);
    assert_eq!(events(&plan), [(RESTART_FAILED, true), (RESTARTED, false)]);
    let restarted = &plan.events[1].note;
    assert!(restarted.contains("Deployment \"w0\", "), "{restarted}");
    assert!(restarted.ends_with("and 3 more"), "{restarted}");
}

#[test]
fn consent_is_the_workloads_own_list_of_names() {
    let with = |value: &str| BTreeMap::from([(CONSENT_ANNOTATION.to_owned(), value.to_owned())]);
    assert!(consents(Some(&with("bot")), "bot"));
    assert!(consents(Some(&with("other, bot ,cluster/shared")), "bot"));
    assert!(consents(
        Some(&with("bot,cluster/shared")),
        "cluster/shared"
    ));
    assert!(
        !consents(Some(&with("cluster/bot")), "bot"),
        "a cluster resource is not the namespaced one"
    );
    assert!(!consents(Some(&with("bot")), "cluster/bot"));
    assert!(!consents(Some(&with("bots")), "bot"));
    assert!(!consents(Some(&with("*")), "bot"), "no wildcard");
    assert!(!consents(None, "bot"));
    assert_eq!(consent_entry("bot"), "bot");
    assert_eq!(cluster_consent_entry("bot"), "cluster/bot");
}

#[test]
fn a_workload_restarted_within_the_interval_waits_for_the_rest_of_it() {
    let t = |s: i64| jiff::Timestamp::from_second(1_000_000 + s).unwrap();
    let minute = Duration::from_secs(60);
    assert_eq!(deferral(None, t(0), minute), None, "never restarted");
    assert_eq!(
        deferral(Some(t(0)), t(20), minute),
        Some(Duration::from_secs(40))
    );
    assert_eq!(deferral(Some(t(0)), t(60), minute), None);
    assert_eq!(deferral(Some(t(0)), t(600), minute), None);
    assert_eq!(
        deferral(Some(t(30)), t(0), minute),
        Some(minute),
        "a future time counts as now"
    );
    assert!(is_restart_manager("mxcred-operator/restart/bot"));
    assert!(is_restart_manager("mxcred-operator/cluster-restart/bot"));
    assert!(!is_restart_manager("kubectl-rollout"));
    // A deferred workload is no problem: it keeps what it holds, and no Event is made.
    let runner = deployment("runner");
    let (_, after) = step(&status_with(vec![]), &[(&runner, holds("sha256:a"))]);
    let deferred = Outcome::Deferred {
        held: Some("sha256:a".into()),
        wait: Duration::from_secs(5),
    };
    let (plan, again) = step(&after, &[(&runner, deferred.clone())]);
    assert!(plan.events.is_empty(), "{:?}", plan.events);
    assert_eq!(again, after);
    let pending = pending([&holds("sha256:a"), &deferred], false).unwrap();
    assert_eq!(
        (pending.failing, pending.deferred),
        (false, Some(Duration::from_secs(5)))
    );
}

#[test]
fn retries_back_off_and_a_missing_cluster_workload_is_settled() {
    let minute = Duration::from_secs(60);
    assert_eq!(retry_delay(1, minute), minute);
    assert_eq!(retry_delay(2, minute), 2 * minute);
    assert_eq!(retry_delay(4, minute), 8 * minute);
    assert_eq!(retry_delay(7, minute), MAX_RETRY);
    assert_eq!(retry_delay(1000, minute), MAX_RETRY);
    let missing = refused(Step::Read, 404, "NotFound");
    assert_eq!(pending([&holds("a"), &missing], true), None);
    assert!(pending([&missing], false).unwrap().failing);
    let no = Outcome::NoConsent { entry: "x".into() };
    assert!(
        pending([&no], true).unwrap().failing,
        "consent may come later"
    );
}
