//! Selection, the copy's ownership, and the plan of a ClusterMendixCredential.

use super::*;
use crate::api::condition;
use crate::classify::{Outcome, Reason};
use crate::conditions;
use crate::plan::{self, Answer, Ready, ReadyReason, Verification as Verif};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelectorRequirement, ObjectMeta, OwnerReference,
};

fn at(s: i64) -> Time {
    Time(jiff::Timestamp::from_second(s).unwrap())
}

fn ns(name: &str, labels: &[(&str, &str)]) -> NamespaceView {
    NamespaceView {
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        terminating: false,
    }
}

fn target(selector: Option<LabelSelector>, list: &[&str]) -> ClusterTarget {
    ClusterTarget {
        namespace_selector: selector,
        namespaces: (!list.is_empty()).then(|| list.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    }
}

fn match_labels(k: &str, v: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some([(k.to_owned(), v.to_owned())].into()),
        match_expressions: None,
    }
}

#[test]
fn an_empty_selector_selects_nothing() {
    let all = [ns("a", &[("ci", "true")]), ns("b", &[])];
    for selector in [
        None,
        Some(LabelSelector::default()),
        Some(LabelSelector {
            match_labels: Some(BTreeMap::new()),
            match_expressions: Some(vec![]),
        }),
    ] {
        let s = Selection::of(&target(selector, &[])).unwrap();
        assert_eq!(s.apply(&all), Selected::default());
    }
}

#[test]
fn the_selector_and_the_list_are_united() {
    let mut terminating = ns("t", &[("ci", "true")]);
    terminating.terminating = true;
    let all = [
        ns("a", &[("ci", "true")]),
        ns("b", &[("ci", "false")]),
        ns("release", &[]),
        ns("c", &[]),
        terminating,
    ];
    let s = Selection::of(&target(
        Some(match_labels("ci", "true")),
        &["release", "gone"],
    ))
    .unwrap();
    assert_eq!(
        s.apply(&all),
        Selected {
            active: vec!["a".into(), "release".into()],
            terminating: vec!["t".into()],
            missing: vec!["gone".into()],
        }
    );
}

#[test]
fn expressions_select_and_bad_operators_are_refused() {
    let selector = LabelSelector {
        match_labels: None,
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: "team".into(),
            operator: "In".into(),
            values: Some(vec!["x".into(), "y".into()]),
        }]),
    };
    let s = Selection::of(&target(Some(selector.clone()), &[])).unwrap();
    assert!(s.selects(&ns("a", &[("team", "y")])));
    assert!(!s.selects(&ns("a", &[("team", "z")])));
    let mut bad = selector;
    bad.match_expressions.as_mut().unwrap()[0].operator = "Near".into();
    let error = Selection::of(&target(Some(bad), &[])).unwrap_err();
    assert!(error.0.contains("namespaceSelector"), "{error}");
}

fn secret(owner_uid: Option<&str>, label: Option<&str>, ours_written: bool) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some("t".into()),
            labels: label.map(|l| [(LABEL_CLUSTER_CREDENTIAL.to_owned(), l.to_owned())].into()),
            owner_references: owner_uid.map(|uid| {
                vec![OwnerReference {
                    uid: uid.into(),
                    controller: Some(true),
                    ..Default::default()
                }]
            }),
            managed_fields: ours_written.then(|| {
                vec![
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry {
                        manager: Some(crate::api::MANAGER.into()),
                        operation: Some("Apply".into()),
                        ..Default::default()
                    },
                ]
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[test]
fn a_copy_is_ours_by_owner_or_by_label_and_our_writes_never_by_label_alone() {
    assert!(is_ours(&secret(Some("u"), None, false), "u", "c"));
    assert!(!is_ours(&secret(Some("other"), Some("c"), true), "u", "c"));
    assert!(is_ours(&secret(None, Some("c"), true), "u", "c"));
    assert!(!is_ours(&secret(None, Some("c"), false), "u", "c"));
    assert!(!is_ours(&secret(None, None, true), "u", "c"));
    let desired = secret(Some("u"), Some("c"), false);
    assert_eq!(
        plan::target_action(
            Some(&secret(None, None, false)),
            &desired,
            cluster("u", "c")
        ),
        plan::TargetAction::Conflict
    );
    assert_eq!(
        plan::target_action(None, &desired, cluster("u", "c")),
        plan::TargetAction::Create
    );
}

#[test]
fn a_copy_s_metadata_alone_decides_whether_it_is_ours() {
    let meta = |owner, label, written| secret(owner, label, written).metadata;
    assert!(is_ours_meta(&meta(Some("u"), None, false), "u", "c"));
    assert!(!is_ours_meta(
        &meta(Some("other"), Some("c"), true),
        "u",
        "c"
    ));
    assert!(is_ours_meta(&meta(None, Some("c"), true), "u", "c"));
    assert!(!is_ours_meta(&meta(None, Some("c"), false), "u", "c"));
    assert!(!is_ours_meta(&meta(None, Some("other"), true), "u", "c"));
}

#[test]
fn copies_carry_the_cluster_label_not_the_namespaced_one() {
    let mut s = Secret::default();
    s.metadata.labels = Some([(crate::api::LABEL_CREDENTIAL.to_owned(), "c".to_owned())].into());
    copy_labels(&mut s, "c");
    let labels = s.metadata.labels.unwrap();
    assert_eq!(
        labels.get(LABEL_CLUSTER_CREDENTIAL).map(String::as_str),
        Some("c")
    );
    assert!(!labels.contains_key(crate::api::LABEL_CREDENTIAL));
}

fn verified(when: i64) -> Verif {
    Verif::Answered(Answer {
        outcome: Outcome {
            reason: Reason::Verified,
            message: "Verified message".into(),
            retry_after: None,
        },
        answered_at: at(when),
        next: Some(at(when + 3600)),
        serves_request: false,
    })
}

fn synced(at_s: i64, wrote: bool) -> CopyOutcome {
    CopyOutcome::Synced {
        written_at: Some(at(at_s)),
        wrote,
    }
}

fn observed<'a>(
    previous: &'a ClusterMendixCredentialStatus,
    copies: &[(&str, CopyOutcome)],
    selected: &[&str],
) -> ClusterObserved<'a> {
    ClusterObserved {
        generation: Some(1),
        credential_type: Some(CredentialType::PersonalAccessToken),
        previous,
        target: "t".into(),
        source: Ok("fp-a".into()),
        held: None,
        checked_first: false,
        copies: copies
            .iter()
            .map(|(n, c)| (n.to_string(), c.clone()))
            .collect(),
        selected: Selected {
            active: selected.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        },
        verification: verified(11),
        due: Default::default(),
        consumers: None,
        now: at(100),
    }
}

fn ready_of(status: &ClusterMendixCredentialStatus) -> (String, String) {
    let c = conditions::find(&status.conditions, condition::READY).unwrap();
    (c.status.clone(), c.reason.clone())
}

#[test]
fn ready_when_every_selected_namespace_holds_the_credential() {
    let previous = ClusterMendixCredentialStatus::default();
    let p = plan(observed(
        &previous,
        &[("a", synced(10, true)), ("b", synced(12, true))],
        &["a", "b"],
    ));
    let status = p.status.clone().unwrap();
    assert_eq!(ready_of(&status), ("True".into(), "Synced".into()));
    assert_eq!(status.namespaces.as_deref(), Some("2/2"));
    assert_eq!((status.selected, status.synced), (Some(2), Some(2)));
    assert_eq!(status.last_synced_time, Some(at(12)), "the latest write");
    assert_eq!(status.token_fingerprint.as_deref(), Some("fp-a"));
    let c = conditions::find(&status.conditions, condition::TOKEN_VALID).unwrap();
    assert_eq!(c.reason, "Verified");
    let events: Vec<_> = p
        .events
        .iter()
        .map(|e| (e.reason, e.note.as_str()))
        .collect();
    assert!(
        events.contains(&("Synced", "wrote Secret t in namespaces a, b")),
        "{events:?}"
    );
    assert!(!p.retry);

    // The same again: nothing to write, nothing to say.
    let again = plan(observed(
        &status,
        &[("a", synced(10, false)), ("b", synced(12, false))],
        &["a", "b"],
    ));
    assert_eq!(again.status, None);
    assert!(again.events.is_empty(), "{:?}", again.events);
}

#[test]
fn a_conflict_is_reported_once_and_the_others_proceed() {
    let previous = ClusterMendixCredentialStatus::default();
    let p = plan(observed(
        &previous,
        &[("a", synced(10, true)), ("b", CopyOutcome::Conflict)],
        &["a", "b"],
    ));
    let status = p.status.clone().unwrap();
    assert_eq!(
        ready_of(&status),
        ("False".into(), NAMESPACES_FAILED.into())
    );
    assert_eq!(status.namespaces.as_deref(), Some("1/2"));
    assert_eq!(status.failed_namespaces.len(), 1);
    assert_eq!(status.failed_namespaces[0].namespace, "b");
    assert_eq!(
        status.failed_namespaces[0].reason,
        FailedReason::TargetConflict.as_str()
    );
    assert!(p.retry);
    assert!(
        p.events
            .iter()
            .any(|e| e.warning && e.reason == "TargetConflict" && e.note.contains("namespace b"))
    );
    let again = plan(observed(
        &status,
        &[("a", synced(10, false)), ("b", CopyOutcome::Conflict)],
        &["a", "b"],
    ));
    assert_eq!(again.status, None);
    assert!(
        again.events.is_empty(),
        "announced once: {:?}",
        again.events
    );
}

#[test]
fn failed_namespaces_are_bounded_and_counted() {
    let previous = ClusterMendixCredentialStatus::default();
    let names: Vec<String> = (0..30).map(|i| format!("ns-{i:02}")).collect();
    let copies: Vec<(&str, CopyOutcome)> = names
        .iter()
        .map(|n| (n.as_str(), CopyOutcome::Failed("HTTP 500".into())))
        .collect();
    let selected: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut o = observed(&previous, &copies, &selected);
    o.selected.missing = vec!["zz-gone".into()];
    let status = plan(o).status.unwrap();
    assert_eq!(status.failed_namespaces.len(), MAX_FAILED_NAMESPACES);
    assert_eq!(status.failed_namespace_count, Some(31));
    assert_eq!(status.failed_namespaces[0].namespace, "ns-00");
    assert_eq!(status.namespaces.as_deref(), Some("0/30"));
}

/// The namespaces announced in a TargetConflict Event's note.
fn conflicts_announced(p: &ClusterPlan) -> Vec<String> {
    p.events
        .iter()
        .filter(|e| e.reason == "TargetConflict")
        .map(|e| e.note.clone())
        .collect()
}

#[test]
fn conflicts_beyond_the_failures_listed_are_announced_when_new() {
    // 25 conflicts, ns-00 to ns-24: ns-19 is the last listed.
    let names: Vec<String> = (0..30).map(|i| format!("ns-{i:02}")).collect();
    let selected: Vec<&str> = names.iter().map(String::as_str).collect();
    let state = |conflicts: &[usize]| -> Vec<(&str, CopyOutcome)> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| match conflicts.contains(&i) {
                true => (n.as_str(), CopyOutcome::Conflict),
                false => (n.as_str(), synced(10, false)),
            })
            .collect()
    };
    let before: Vec<usize> = (0..25).collect();
    let fresh = ClusterMendixCredentialStatus::default();
    let first = plan(observed(&fresh, &state(&before), &selected));
    assert_eq!(conflicts_announced(&first).len(), 1);
    let previous = first.status.unwrap();
    assert_eq!(previous.failed_namespaces.len(), MAX_FAILED_NAMESPACES);

    let steady = plan(observed(&previous, &state(&before), &selected));
    assert!(steady.events.is_empty(), "{:?}", steady.events);
    // One more beyond the list: more fail there than did. Which one is new cannot be told, so
    // all six beyond the last listed are named.
    let more: Vec<usize> = (0..26).collect();
    let p = plan(observed(&previous, &state(&more), &selected));
    let notes = conflicts_announced(&p);
    assert_eq!(notes.len(), 1, "{:?}", p.events);
    assert!(notes[0].contains("6 namespaces (ns-20,"), "{notes:?}");
    // One of those beyond passed: fewer fail there, none is new.
    let fewer: Vec<usize> = (0..24).collect();
    let p = plan(observed(&previous, &state(&fewer), &selected));
    assert!(conflicts_announced(&p).is_empty(), "{:?}", p.events);
    // The list was complete up to ns-19: a conflict there that is not listed is new.
    let mut earlier = state(&before);
    earlier.push(("ns-05a", CopyOutcome::Conflict));
    let mut with_it = selected.clone();
    with_it.push("ns-05a");
    let p = plan(observed(&previous, &earlier, &with_it));
    let notes = conflicts_announced(&p);
    assert_eq!(notes.len(), 1, "{:?}", p.events);
    assert!(notes[0].contains("namespace ns-05a;"), "{notes:?}");
}

#[test]
fn listed_namespaces_that_are_missing_do_not_make_it_unready() {
    let previous = ClusterMendixCredentialStatus::default();
    let mut o = observed(&previous, &[("a", synced(10, true))], &["a"]);
    o.selected.missing = vec!["gone".into()];
    o.selected.terminating = vec!["leaving".into()];
    let status = plan(o).status.unwrap();
    assert_eq!(ready_of(&status).1, "Synced");
    let reasons: Vec<_> = status
        .failed_namespaces
        .iter()
        .map(|f| (f.namespace.as_str(), f.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        [
            ("gone", FailedReason::NamespaceNotFound.as_str()),
            ("leaving", FailedReason::NamespaceTerminating.as_str())
        ]
    );
}

#[test]
fn a_refused_source_keeps_the_verdict_and_says_why() {
    let previous = plan(observed(
        &ClusterMendixCredentialStatus::default(),
        &[("a", synced(10, true))],
        &["a"],
    ))
    .status
    .unwrap();
    let mut o = observed(&previous, &[], &["a"]);
    o.source = Err(Ready::refused(ReadyReason::SourceNotFound, "not found"));
    o.verification = Verif::Waiting;
    let p = plan(o);
    let status = p.status.unwrap();
    assert_eq!(ready_of(&status), ("False".into(), "SourceNotFound".into()));
    assert_eq!(p.ready, "SourceNotFound");
    let valid = conditions::find(&status.conditions, condition::TOKEN_VALID).unwrap();
    assert_eq!(valid.reason, "Verified");
}

#[test]
fn the_ready_transition_time_comes_from_the_previous_ready() {
    let previous = plan(observed(
        &ClusterMendixCredentialStatus::default(),
        &[("a", synced(10, true)), ("b", CopyOutcome::Conflict)],
        &["a", "b"],
    ))
    .status
    .unwrap();
    let mut o = observed(
        &previous,
        &[
            ("a", synced(10, false)),
            ("b", CopyOutcome::Failed("HTTP 500".into())),
        ],
        &["a", "b"],
    );
    o.now = at(500);
    let status = plan(o).status.unwrap();
    let c = conditions::find(&status.conditions, condition::READY).unwrap();
    assert_eq!(c.last_transition_time, at(100), "still False since then");
}

#[test]
fn the_spec_resolves_as_a_namespaced_one() {
    let spec = ClusterMendixCredentialSpec {
        r#type: None,
        source_ref: ClusterSourceRef {
            namespace: "src".into(),
            name: "raw".into(),
            ..Default::default()
        },
        target: ClusterTarget {
            name: Some("mendix".into()),
            ..Default::default()
        },
        verification: None,
        rotation: None,
    };
    let resolved = crate::spec::resolve(
        "c",
        &spec.as_namespaced(),
        std::time::Duration::from_secs(3600),
    )
    .unwrap();
    assert_eq!(resolved.target_name, "mendix");
    assert_eq!(resolved.source.secret, "raw");
    assert_eq!(resolved.source.token_key, "token");
}

/// The publisher `uid` of ClusterMendixCredential `name`.
fn cluster<'a>(uid: &'a str, name: &'a str) -> crate::render::Publisher<'a> {
    crate::render::Publisher {
        scope: crate::api::Scope::Cluster,
        uid,
        name,
    }
}
