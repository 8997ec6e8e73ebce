//! Rotation with policy VerifyFirst, on the real control plane with the simulator as the
//! platform: a new credential in the source replaces a working one only once the platform
//! accepts it.

mod common;

use common::{Operator, TestEnv, assert_no_canary, value, wait_until};
use mendix_simulator::{Simulator, State};
use mxcred_operator::domain::credential::Credential;
use serde_json::json;
use std::time::{Duration, Instant};

fn fingerprint(token: &str) -> String {
    Credential::personal_access_token(token.as_bytes())
        .unwrap()
        .fingerprint()
}

/// A credential `name` published and verified with `old`, under an operator of its own.
async fn working(
    sim: &Simulator,
    name: &str,
    old: &str,
    spec: serde_json::Value,
) -> (TestEnv, Operator) {
    sim.set(old, State::Valid);
    let env = TestEnv::new(name).await;
    let op = env.start_operator_with_platform(&sim.base_url(), &[]);
    env.put_source(&format!("{name}-raw"), &[("token", old)])
        .await;
    let mut full = json!({"sourceRef": {"name": format!("{name}-raw")}});
    full.as_object_mut()
        .unwrap()
        .extend(spec.as_object().unwrap().clone());
    env.put_credential(name, full).await;
    env.wait_reason(name, "TokenValid", "Verified").await;
    (env, op)
}

/// Puts `new` into the source and returns when that happened.
async fn rotate(env: &TestEnv, name: &str, new: &str) -> Instant {
    let started = Instant::now();
    env.put_source(&format!("{name}-raw"), &[("token", new)])
        .await;
    started
}

async fn published(env: &TestEnv, name: &str, token: &str) {
    env.wait_secret(name, &format!("holding {token}"), |s| {
        value(s, "MENDIX_TOKEN").as_deref() == Some(token)
    })
    .await;
}

async fn target_token(env: &TestEnv, name: &str) -> Option<String> {
    value(&env.secrets().get(name).await.unwrap(), "MENDIX_TOKEN")
}

#[tokio::test]
async fn a_valid_new_token_is_checked_once_then_published() {
    let sim = Simulator::start().await;
    let (env, op) = working(&sim, "valid", "CANARY-valid-a", json!({})).await;
    sim.set("CANARY-valid-b", State::Valid);
    let started = rotate(&env, "valid", "CANARY-valid-b").await;
    published(&env, "valid", "CANARY-valid-b").await;
    eprintln!(
        "valid new token: source change to publication {:?}",
        started.elapsed()
    );
    let events = env.wait_event("Normal Rotated").await;
    let rotated = events.iter().find(|e| e.contains("Rotated")).unwrap();
    assert!(
        rotated.contains("after the platform accepted it")
            && rotated.contains(&fingerprint("CANARY-valid-a")),
        "{rotated}"
    );
    let cr = env.wait_reason("valid", "Ready", "Synced").await;
    let status = cr.status.unwrap();
    assert_eq!(status.pending_fingerprint, None);
    assert_eq!(
        status.token_fingerprint,
        Some(fingerprint("CANARY-valid-b"))
    );
    assert_eq!(
        common::condition(&env.credentials().get("valid").await.unwrap(), "TokenValid").reason,
        "Verified"
    );
    // One check before publication, none after it: the answer carries over.
    assert_eq!(sim.requests("CANARY-valid-b"), 1);
    assert!(
        op.metrics()
            .await
            .contains("mxcred_rotations_total{result=\"published\"} 1"),
        "the rotation is counted"
    );
    assert_no_canary(&env, &[&op], "CANARY").await;
}

#[tokio::test]
async fn a_deleted_new_token_is_held_back_and_the_working_one_stays() {
    let sim = Simulator::start().await;
    let (env, op) = working(&sim, "deleted", "CANARY-deleted-a", json!({})).await;
    sim.set("CANARY-deleted-b", State::Deleted);
    let started = rotate(&env, "deleted", "CANARY-deleted-b").await;
    let cr = env
        .wait_reason("deleted", "Ready", "RotationRejected")
        .await;
    eprintln!(
        "deleted new token: source change to RotationRejected {:?}",
        started.elapsed()
    );
    let ready = common::condition(&cr, "Ready");
    assert_eq!(ready.status, "False");
    assert!(ready.message.contains("TokenRejected"), "{}", ready.message);
    let status = cr.status.clone().unwrap();
    assert_eq!(
        status.pending_fingerprint,
        Some(fingerprint("CANARY-deleted-b"))
    );
    assert_eq!(
        status.token_fingerprint,
        Some(fingerprint("CANARY-deleted-a"))
    );
    assert_eq!(common::condition(&cr, "TokenValid").reason, "Verified");
    assert_eq!(
        target_token(&env, "deleted").await.as_deref(),
        Some("CANARY-deleted-a"),
        "the target keeps the working token"
    );
    env.wait_event("Warning RotationRejected").await;
    let metrics = op.metrics().await;
    for line in [
        "mxcred_rotations_held{reason=\"RotationRejected\"} 1",
        "mxcred_rotations_total{result=\"rejected\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }

    // A restart neither publishes it nor announces it again.
    drop(op);
    let op = env.start_operator_with_platform(&sim.base_url(), &[]);
    wait_until(
        Duration::from_secs(30),
        "the restarted operator checked it",
        || async { sim.requests("CANARY-deleted-b") >= 2 },
    )
    .await;
    let cr = env
        .wait_reason("deleted", "Ready", "RotationRejected")
        .await;
    assert_eq!(
        target_token(&env, "deleted").await.as_deref(),
        Some("CANARY-deleted-a")
    );
    assert_eq!(common::condition(&cr, "TokenValid").reason, "Verified");
    let warnings = env.events().await;
    let rejected = warnings.iter().filter(|e| e.contains("RotationRejected"));
    assert_eq!(rejected.count(), 1, "{warnings:?}");

    // A good token next replaces the working one.
    sim.set("CANARY-deleted-c", State::Valid);
    rotate(&env, "deleted", "CANARY-deleted-c").await;
    published(&env, "deleted", "CANARY-deleted-c").await;
    let cr = env.wait_reason("deleted", "Ready", "Synced").await;
    assert_eq!(cr.status.unwrap().pending_fingerprint, None);
    assert_no_canary(&env, &[&op], "CANARY").await;
}

#[tokio::test]
async fn a_new_token_waits_out_a_platform_outage_then_is_published() {
    let sim = Simulator::start().await;
    let (env, op) = working(&sim, "outage", "CANARY-outage-a", json!({})).await;
    sim.set("CANARY-outage-b", State::ServerError);
    let started = rotate(&env, "outage", "CANARY-outage-b").await;
    let cr = env.wait_reason("outage", "Ready", "RotationPending").await;
    let ready = common::condition(&cr, "Ready");
    assert_eq!(ready.status, "Unknown");
    assert!(
        ready.message.contains("PlatformUnavailable"),
        "{}",
        ready.message
    );
    assert_eq!(
        target_token(&env, "outage").await.as_deref(),
        Some("CANARY-outage-a")
    );
    sim.set("CANARY-outage-b", State::Valid);
    let recovered = Instant::now();
    // Retried on the usual backoff: 30 s after the first failure.
    wait_until(
        Duration::from_secs(60),
        "publication after the outage",
        || async { target_token(&env, "outage").await.as_deref() == Some("CANARY-outage-b") },
    )
    .await;
    eprintln!(
        "platform outage: source change to publication {:?} ({:?} after the platform recovered)",
        started.elapsed(),
        recovered.elapsed()
    );
    env.wait_event("Normal Rotated").await;
    let cr = env.wait_reason("outage", "Ready", "Synced").await;
    assert_eq!(common::condition(&cr, "TokenValid").reason, "Verified");
    assert_no_canary(&env, &[&op], "CANARY").await;
}

#[tokio::test]
async fn with_nothing_to_protect_a_new_token_is_published_at_once() {
    let sim = Simulator::start().await;
    // The published token is rejected already: nothing works that could be broken.
    sim.set("CANARY-broken-a", State::Deleted);
    sim.set("CANARY-broken-b", State::Deleted);
    let env = TestEnv::new("broken").await;
    let op = env.start_operator_with_platform(&sim.base_url(), &[]);
    env.put_token_credential("broken", "CANARY-broken-a", json!({}))
        .await;
    env.wait_reason("broken", "TokenValid", "TokenRejected")
        .await;
    let started = rotate(&env, "broken", "CANARY-broken-b").await;
    published(&env, "broken", "CANARY-broken-b").await;
    eprintln!(
        "published token rejected: source change to publication {:?}",
        started.elapsed()
    );

    // Policy Immediate: published at once, whatever the platform says of it.
    sim.set("CANARY-immediate-a", State::Valid);
    sim.set("CANARY-immediate-b", State::Deleted);
    env.put_source("immediate-raw", &[("token", "CANARY-immediate-a")])
        .await;
    env.put_credential(
        "immediate",
        json!({"sourceRef": {"name": "immediate-raw"}, "rotation": {"policy": "Immediate"}}),
    )
    .await;
    env.wait_reason("immediate", "TokenValid", "Verified").await;
    rotate(&env, "immediate", "CANARY-immediate-b").await;
    published(&env, "immediate", "CANARY-immediate-b").await;
    env.wait_reason("immediate", "TokenValid", "TokenRejected")
        .await;

    // Verification disabled: nothing can be checked first.
    env.put_source("unchecked-raw", &[("token", "CANARY-unchecked-a")])
        .await;
    env.put_credential(
        "unchecked",
        json!({"sourceRef": {"name": "unchecked-raw"}, "verification": {"enabled": false}}),
    )
    .await;
    published(&env, "unchecked", "CANARY-unchecked-a").await;
    rotate(&env, "unchecked", "CANARY-unchecked-b").await;
    published(&env, "unchecked", "CANARY-unchecked-b").await;
    assert_eq!(sim.requests("CANARY-unchecked-b"), 0);
    for name in ["broken", "immediate", "unchecked"] {
        let cr = env.credentials().get(name).await.unwrap();
        assert_eq!(common::condition(&cr, "Ready").reason, "Synced", "{name}");
    }
    assert_no_canary(&env, &[&op], "CANARY").await;
}
