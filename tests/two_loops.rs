//! The sync loop and the verification loop, apart: each defect of the single loop, shown fixed
//! on the real control plane with the simulator as the platform.

mod common;

use common::{Operator, TestEnv, loopback_platform, wait_until};
use kube::Api;
use kube::api::{Patch, PatchParams};
use mendix_simulator::{Simulator, State};
use serde_json::json;
use std::time::{Duration, Instant};

async fn annotate(env: &TestEnv, name: &str, value: &str) {
    let patch = json!({"metadata": {"annotations": {"mxcred.io/verify-requested-at": value}}});
    env.credentials()
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// The operator's rights in the test's namespace alone, as a Role that a test can narrow.
fn rules(status: bool) -> serde_json::Value {
    let mut rules = vec![
        json!({"apiGroups": ["mxcred.io"], "resources": ["mendixcredentials"], "verbs": ["get", "list", "watch"]}),
        json!({"apiGroups": [""], "resources": ["secrets"],
            "verbs": ["get", "list", "watch", "create", "patch", "delete"]}),
        json!({"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create"]}),
    ];
    if status {
        rules.push(json!({"apiGroups": ["mxcred.io"], "resources": ["mendixcredentials/status"], "verbs": ["patch"]}));
    }
    json!(rules)
}

async fn grant(env: &TestEnv, status: bool) {
    env.set_rules("operator", rules(status)).await;
}

/// Whether the API server's authorizer lets the test's operator write statuses now.
async fn may_write_status(env: &TestEnv) -> bool {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    };
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(format!("system:serviceaccount:{}:operator", env.ns)),
            resource_attributes: Some(ResourceAttributes {
                group: Some("mxcred.io".into()),
                resource: Some("mendixcredentials".into()),
                subresource: Some("status".into()),
                verb: Some("patch".into()),
                namespace: Some(env.ns.clone()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let reviewed = Api::<SubjectAccessReview>::all(env.client.clone())
        .create(&Default::default(), &review)
        .await
        .unwrap();
    reviewed.status.is_some_and(|s| s.allowed)
}

/// The operator under a ServiceAccount of the test's namespace, whose Role [`grant`] sets.
async fn start_narrow_operator(env: &TestEnv, sim: &Simulator, extra: &[&str]) -> Operator {
    let kubeconfig = env.namespaced_identity("operator", rules(true)).await;
    let mut args = loopback_platform(&sim.base_url());
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Operator::start(env.cp, &kubeconfig, &env.ns, &args, &[])
}

#[tokio::test]
async fn a_failed_status_write_loses_neither_the_forced_check_nor_its_event() {
    let sim = Simulator::start().await;
    let env = TestEnv::new("statusfail").await;
    sim.set("tok-f", State::Valid);
    let op = start_narrow_operator(&env, &sim, &[]).await;
    env.put_token_credential("f", "tok-f", json!({})).await;
    env.wait_reason("f", "TokenValid", "Verified").await;
    env.wait_event("Normal Verified").await;

    // The token is deleted, the status can no longer be written, and a check is forced.
    sim.set("tok-f", State::Deleted);
    grant(&env, false).await;
    wait_until(
        Duration::from_secs(10),
        "the status permission withdrawn",
        || async { !may_write_status(&env).await },
    )
    .await;
    annotate(&env, "f", "now").await;
    wait_until(
        Duration::from_secs(30),
        "a forced check and a refused status write",
        || async {
            sim.requests("tok-f") == 2 && op.logs().contains("writing the status failed: HTTP 403")
        },
    )
    .await;
    grant(&env, true).await;

    let cr = env.wait_reason("f", "TokenValid", "TokenRejected").await;
    env.wait_event("Warning TokenRejected").await;
    assert_eq!(
        sim.requests("tok-f"),
        2,
        "the retry reused the forced check's answer"
    );
    let next = cr.status.unwrap().next_verification_time.unwrap().0;
    assert!(
        next > jiff::Timestamp::now() + jiff::SignedDuration::from_hours(5),
        "a rejected token is asked about again after 6 h, not at {next}"
    );
    assert!(
        op.logs().contains(r#""step":"write_status""#),
        "the error names its step"
    );
}

#[tokio::test]
async fn a_spec_change_reverifies_within_seconds() {
    let sim = Simulator::start().await;
    let env = TestEnv::new("respec").await;
    sim.set("tok-s", State::Valid);
    let _op = env.start_operator_with_platform(&sim.base_url(), &[]);
    env.put_token_credential("s", "tok-s", json!({"interval": "1h"}))
        .await;
    let cr = env.wait_reason("s", "TokenValid", "Verified").await;
    let verified = cr.status.unwrap().last_verified_time.unwrap().0;

    // A shorter interval moves the next check to the new schedule at once.
    env.put_token_credential("s", "tok-s", json!({"interval": "1m"}))
        .await;
    wait_until(Duration::from_secs(10), "the shorter schedule", || async {
        let cr = env.credentials().get("s").await.unwrap();
        let next = cr.status.and_then(|s| s.next_verification_time);
        next.is_some_and(|n| n.0 <= verified + jiff::SignedDuration::from_secs(60 + 7))
    })
    .await;

    // Another probe is another question: asked within seconds, not at the old schedule.
    sim.set("tok-s", State::Deleted);
    let changed = Instant::now();
    env.put_token_credential("s", "tok-s", json!({"interval": "1m", "probe": "Projects"}))
        .await;
    env.wait_reason("s", "TokenValid", "TokenRejected").await;
    println!("probe changed to TokenRejected: {:?}", changed.elapsed());
    assert_eq!(sim.requests("tok-s"), 2);
}

#[tokio::test]
async fn a_slow_platform_for_one_namespace_delays_no_other() {
    let sim = Simulator::start().await;
    let crowded = TestEnv::new("crowded").await;
    let quiet = TestEnv::new("quiet").await;
    for i in 0..45 {
        sim.set(
            &format!("tok-slow-{i}"),
            State::Slow(Duration::from_secs(10)),
        );
    }
    sim.set("tok-quiet", State::Valid);
    let mut args = loopback_platform(&sim.base_url());
    args.extend(["--namespace".to_owned(), quiet.ns.clone()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _op = Operator::start(
        crowded.cp,
        &crowded.cp.operator_kubeconfig,
        &crowded.ns,
        &args,
        &[],
    );
    for i in 0..45 {
        crowded
            .put_token_credential(&format!("slow{i}"), &format!("tok-slow-{i}"), json!({}))
            .await;
    }
    wait_until(Duration::from_secs(20), "slow checks under way", || async {
        sim.total_requests() >= 2
    })
    .await;

    let created = Instant::now();
    quiet
        .put_token_credential("q", "tok-quiet", json!({}))
        .await;
    quiet.wait_reason("q", "Ready", "Synced").await;
    let synced = created.elapsed();
    quiet.wait_reason("q", "TokenValid", "Verified").await;
    let verified = created.elapsed();
    println!(
        "another namespace beside 45 slow checks: Synced after {synced:?}, Verified after {verified:?}"
    );
    // The slow checks take 10 s each: had the quiet namespace waited for any of them, one
    // would have finished first.
    let crowded_verified = crowded
        .credentials()
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|cr| common::is_verified(cr))
        .count();
    assert_eq!(
        crowded_verified, 0,
        "the quiet namespace waited for the crowded one"
    );
}

#[tokio::test]
async fn forced_checks_within_the_cooldown_become_one() {
    let sim = Simulator::start().await;
    let env = TestEnv::new("cooldown").await;
    sim.set("tok-c", State::Valid);
    let op = env.start_operator_with_platform(&sim.base_url(), &["--forced-check-cooldown", "10s"]);
    env.put_token_credential("c", "tok-c", json!({})).await;
    env.wait_reason("c", "TokenValid", "Verified").await;
    assert_eq!(sim.requests("tok-c"), 1);

    // Forty changes within the cooldown: one check at once, one at the end of the cooldown.
    let started = Instant::now();
    for i in 0..40 {
        annotate(&env, "c", &format!("change-{i}")).await;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let last_change = jiff::Timestamp::now();
    sim.set("tok-c", State::Deleted);
    // The last change is not lost: its check (after the cooldown) sees the deleted token.
    let cr = env.wait_reason("c", "TokenValid", "TokenRejected").await;
    println!(
        "40 forced checks in {:?}: {} platform calls",
        started.elapsed(),
        sim.requests("tok-c") - 1
    );
    assert!(
        cr.status.unwrap().last_verified_time.unwrap().0
            >= last_change - jiff::SignedDuration::from_secs(1)
    );
    assert_eq!(
        sim.requests("tok-c"),
        3,
        "initial check, one forced at once, one after the cooldown"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(sim.requests("tok-c"), 3, "nothing more was asked");
    let forced = op.logs().matches(r#""forced":true"#).count();
    assert_eq!(forced, 2, "{}", op.logs());
}
