//! Verification through the operator, against the real control plane and the platform simulator.

mod common;

use common::{TestEnv, wait_for, wait_until};
use mendix_simulator::{Simulator, State};
use mxcred_operator::domain::api::MendixCredential;
use serde_json::json;
use std::time::{Duration, Instant};

fn token_valid(cr: &MendixCredential) -> (String, String, String) {
    let c = common::condition(cr, "TokenValid");
    (c.status, c.reason, c.message)
}

#[tokio::test]
async fn every_reason_is_reached_through_the_operator() {
    let sim = Simulator::start().await;
    let env = TestEnv::new("reasons").await;
    let _op = env.start_operator_with_platform(&sim.base_url(), &[]);
    let cases = [
        ("valid", State::Valid, json!({}), "True", "Verified"),
        (
            "deleted",
            State::Deleted,
            json!({}),
            "False",
            "TokenRejected",
        ),
        (
            "deactivated",
            State::Deactivated,
            json!({}),
            "False",
            "UserDeactivated",
        ),
        (
            "noscope",
            State::MissingScope,
            json!({"probe": "Projects"}),
            "Unknown",
            "Forbidden",
        ),
        (
            "limited",
            State::RateLimited {
                retry_after_secs: 120,
            },
            json!({}),
            "Unknown",
            "RateLimited",
        ),
        (
            "down",
            State::ServerError,
            json!({}),
            "Unknown",
            "PlatformUnavailable",
        ),
        (
            "dropped",
            State::DropConnection,
            json!({}),
            "Unknown",
            "PlatformUnavailable",
        ),
        (
            "html",
            State::Html,
            json!({}),
            "Unknown",
            "PlatformUnavailable",
        ),
        (
            "garbage",
            State::Garbage,
            json!({}),
            "Unknown",
            "PlatformUnavailable",
        ),
        (
            "off",
            State::Valid,
            json!({"enabled": false}),
            "Unknown",
            "VerificationDisabled",
        ),
        (
            "outside",
            State::Valid,
            // The simulator itself, under a host name that is not on the allow-list.
            json!({"probe": format!("{}/api/v4/apps", sim.base_url().replace("127.0.0.1", "localhost"))}),
            "Unknown",
            "EndpointNotAllowed",
        ),
    ];
    for (name, state, verification, _, _) in &cases {
        let token = format!("tok-{name}");
        sim.set(&token, state.clone());
        env.put_token_credential(name, &token, verification.clone())
            .await;
    }
    for (name, _, _, status, reason) in &cases {
        let cr = env.wait_reason(name, "TokenValid", reason).await;
        let (s, _, message) = token_valid(&cr);
        assert_eq!(&s, status, "{name}");
        assert!(!message.contains("tok-"), "{name}: {message}");
        let st = cr.status.unwrap();
        match *status {
            "Unknown" if *reason != "VerificationDisabled" => {
                assert!(st.last_verification_error.is_some(), "{name}");
                assert!(st.last_verified_time.is_none(), "{name}");
            }
            "True" | "False" => assert!(st.last_verified_time.is_some(), "{name}"),
            _ => {}
        }
    }
    assert_eq!(sim.requests("tok-off"), 0);
    assert_eq!(sim.requests("tok-outside"), 0);
    for want in [
        "Normal Verified",
        "Warning TokenRejected",
        "Warning UserDeactivated",
    ] {
        env.wait_event(want).await;
    }
    // Pending: no credential published yet, so nothing to verify.
    env.put_credential("nosource", json!({"sourceRef": {"name": "missing"}}))
        .await;
    env.wait_reason("nosource", "TokenValid", "Pending").await;
}

#[tokio::test]
async fn a_probe_outside_the_allow_list_is_never_contacted() {
    // A listener on another loopback address stands for an internal service.
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let contacted = tokio::spawn(async move { listener.accept().await.is_ok() });
    let sim = Simulator::start().await;
    let env = TestEnv::new("allowlist").await;
    let _op = env.start_operator_with_platform(&sim.base_url(), &[]);
    env.put_token_credential(
        "internal",
        "tok-internal",
        json!({"probe": format!("http://127.0.0.2:{port}/admin")}),
    )
    .await;
    let cr = env
        .wait_reason("internal", "TokenValid", "EndpointNotAllowed")
        .await;
    assert!(token_valid(&cr).2.contains("127.0.0.2"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !contacted.is_finished(),
        "a request reached the address outside the allow-list"
    );
}

#[tokio::test]
async fn a_deleted_token_is_seen_after_a_forced_check_and_after_the_interval() {
    let sim = Simulator::start().await;
    let env = TestEnv::new("deleted").await;
    sim.set("tok-a", State::Valid);
    sim.set("tok-b", State::Valid);
    let op = env.start_operator_with_platform(&sim.base_url(), &[]);
    env.put_token_credential("a", "tok-a", json!({})).await;
    env.wait_reason("a", "TokenValid", "Verified").await;

    // Forced: a new annotation value verifies at once.
    sim.set("tok-a", State::Deleted);
    let forced = Instant::now();
    // Any new value forces a check, even one that does not look like a recent time.
    let patch = json!({"metadata": {"annotations": {"mxcred.io/verify-requested-at": "please"}}});
    env.credentials()
        .patch(
            "a",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .unwrap();
    let cr = env.wait_reason("a", "TokenValid", "TokenRejected").await;
    println!("forced check to TokenRejected: {:?}", forced.elapsed());
    assert_eq!(token_valid(&cr).0, "False");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        sim.requests("tok-a"),
        2,
        "one call to verify, one for the forced check"
    );
    drop(op);

    // At the interval (shortened for the test by a hidden flag, not by the resource).
    let _op = env.start_operator_with_platform(&sim.base_url(), &["--test-interval", "2s"]);
    env.put_token_credential("b", "tok-b", json!({"interval": "1m"}))
        .await;
    env.wait_reason("b", "TokenValid", "Verified").await;
    sim.set("tok-b", State::Deleted);
    env.wait_reason("b", "TokenValid", "TokenRejected").await;
    // A rejected token is asked about again only after max(interval, 6h).
    let rejected = sim.requests("tok-b");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        sim.requests("tok-b"),
        rejected,
        "re-checked a rejected token within 6h"
    );
}

#[tokio::test]
async fn rotating_the_source_reverifies_at_once() {
    let sim = Simulator::start().await;
    let env = TestEnv::new("rotation").await;
    sim.set("tok-old", State::Deleted);
    sim.set("tok-new", State::Valid);
    let _op = env.start_operator_with_platform(&sim.base_url(), &[]);
    env.put_token_credential("rot", "tok-old", json!({})).await;
    env.wait_reason("rot", "TokenValid", "TokenRejected").await;
    env.put_source("rot-raw", &[("token", "tok-new")]).await;
    let cr = env.wait_reason("rot", "TokenValid", "Verified").await;
    assert_eq!(sim.requests("tok-new"), 1);
    // A verdict on the new token after an outage: the old verdict does not survive a rotation
    // (published at once with policy Immediate; VerifyFirst holds it back, tests/rotation.rs).
    env.put_credential(
        "rot",
        json!({"sourceRef": {"name": "rot-raw"}, "rotation": {"policy": "Immediate"}}),
    )
    .await;
    sim.set("tok-newer", State::ServerError);
    env.put_source("rot-raw", &[("token", "tok-newer")]).await;
    let cr2 = env
        .wait_reason("rot", "TokenValid", "PlatformUnavailable")
        .await;
    assert_eq!(token_valid(&cr2).0, "Unknown");
    assert_ne!(
        cr.status.unwrap().token_fingerprint,
        cr2.status.unwrap().token_fingerprint
    );
}

#[tokio::test]
async fn an_outage_after_verified_keeps_true() {
    let sim = Simulator::start().await;
    let env = TestEnv::new("outage").await;
    sim.set("tok-o", State::Valid);
    let _op = env.start_operator_with_platform(&sim.base_url(), &["--test-interval", "1s"]);
    env.put_token_credential("o", "tok-o", json!({})).await;
    env.wait_reason("o", "TokenValid", "Verified").await;
    sim.set("tok-o", State::ServerError);
    let before = sim.requests("tok-o");
    let cr = wait_for(Duration::from_secs(30), || async {
        let cr = env.credentials().get("o").await.ok()?;
        cr.status.as_ref()?.last_verification_error.as_ref()?;
        Some(cr)
    })
    .await
    .expect("the failed attempt is recorded");
    assert!(sim.requests("tok-o") > before);
    assert_eq!(token_valid(&cr).0, "True");
    assert_eq!(token_valid(&cr).1, "Verified");
    let error = cr.status.unwrap().last_verification_error.unwrap();
    assert!(error.contains("127.0.0.1"), "{error}");
}

#[tokio::test]
async fn resources_sharing_a_token_share_its_platform_calls() {
    let sim = Simulator::start().await;
    let env = TestEnv::new("shared").await;
    // Thirty resources on one token, and thirty more spread over three tokens.
    let tokens = ["tok-shared", "tok-k0", "tok-k1", "tok-k2"];
    for token in tokens {
        sim.set(token, State::Valid);
        env.put_source(&format!("{token}-raw"), &[("token", token)])
            .await;
    }
    let _op = env.start_operator_with_platform(&sim.base_url(), &[]);
    let resources: Vec<(String, &str)> = (0..30)
        .map(|i| (format!("one{i}"), tokens[0]))
        .chain((0..30).map(|i| (format!("three{i}"), tokens[1 + i % 3])))
        .collect();
    for (name, token) in &resources {
        env.put_credential(name, json!({"sourceRef": {"name": format!("{token}-raw")}}))
            .await;
    }
    for (name, _) in &resources {
        env.wait_reason(name, "TokenValid", "Verified").await;
    }
    let calls: Vec<usize> = tokens.iter().map(|t| sim.requests(t)).collect();
    println!(
        "60 resources on 4 tokens (30 on one, 10 on each of three): platform calls per token {calls:?}"
    );
    assert_eq!(calls, [1, 1, 1, 1]);
}

#[tokio::test]
async fn a_rate_limit_slows_the_operator_down_as_asked() {
    let sim = Simulator::start().await;
    let env = TestEnv::new("ratelimit").await;
    sim.set(
        "tok-r",
        State::RateLimited {
            retry_after_secs: 4,
        },
    );
    let _op = env.start_operator_with_platform(&sim.base_url(), &["--test-interval", "1s"]);
    env.put_token_credential("r", "tok-r", json!({})).await;
    let cr = env.wait_reason("r", "TokenValid", "RateLimited").await;
    let status = cr.status.unwrap();
    let next = status.next_verification_time.unwrap().0;
    let asked = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(2);
    assert!(
        next > asked,
        "next check {next} comes before the 4 s the platform asked for"
    );
    let first = sim.requests("tok-r");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sim.requests("tok-r"),
        first,
        "asked again before Retry-After passed"
    );
    sim.set("tok-r", State::Valid);
    env.wait_reason("r", "TokenValid", "Verified").await;
}

#[tokio::test]
async fn a_restart_does_not_reverify_what_is_not_due() {
    let sim = Simulator::start().await;
    let env = TestEnv::new("restart").await;
    for i in 0..5 {
        sim.set(&format!("tok-{i}"), State::Valid);
    }
    let mut first = env.start_operator_with_platform(&sim.base_url(), &[]);
    for i in 0..5 {
        env.put_token_credential(&format!("r{i}"), &format!("tok-{i}"), json!({}))
            .await;
    }
    for i in 0..5 {
        env.wait_reason(&format!("r{i}"), "TokenValid", "Verified")
            .await;
    }
    first.kill();
    let before = sim.total_requests();
    let second = env.start_operator_with_platform(&sim.base_url(), &[]);
    wait_until(
        Duration::from_secs(20),
        "the restarted operator to reconcile all",
        || async { second.logs().matches("\"reconciled\"").count() >= 5 },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        sim.total_requests(),
        before,
        "a restart re-verified resources that were not due"
    );
}

#[tokio::test]
async fn metrics_follow_the_verifications() {
    let sim = Simulator::start().await;
    let env = TestEnv::new("metrics").await;
    sim.set("tok-m1", State::Valid);
    sim.set("tok-m2", State::Deleted);
    let op = env.start_operator_with_platform(&sim.base_url(), &[]);
    env.put_token_credential("m1", "tok-m1", json!({})).await;
    env.put_token_credential("m2", "tok-m2", json!({})).await;
    env.wait_reason("m1", "TokenValid", "Verified").await;
    env.wait_reason("m2", "TokenValid", "TokenRejected").await;
    let text = wait_for(Duration::from_secs(10), || async {
        let text = op.metrics().await;
        text.contains(r#"mxcred_credentials{token_valid="false"} 1"#)
            .then_some(text)
    })
    .await
    .expect("the credentials gauge follows the status");
    for line in [
        r#"mxcred_credentials{token_valid="true"} 1"#,
        r#"mxcred_verifications_total{outcome="Verified"}"#,
        r#"mxcred_verifications_total{outcome="TokenRejected"}"#,
        r#"mxcred_platform_requests_total{host="127.0.0.1",code="200"}"#,
        r#"mxcred_platform_requests_total{host="127.0.0.1",code="403"}"#,
        r#"mxcred_reconciles_total{result="Synced"}"#,
        "mxcred_reconcile_duration_seconds_count",
        r#"mxcred_platform_request_duration_seconds_count{host="127.0.0.1"}"#,
        r#"mxcred_build_info{version=""#,
    ] {
        assert!(text.contains(line), "missing {line}:\n{text}");
    }
}

#[tokio::test]
async fn no_credential_reaches_logs_events_status_or_metrics() {
    const CANARY: &str = "CANARY-7f3e9a1c-token";
    const CANARY_KEY: &str = "CANARY-apikey-55e1";
    let sim = Simulator::start().await;
    let env = TestEnv::new("secrecy").await;
    let op = env.start_operator_with_platform(&sim.base_url(), &["--test-interval", "1s"]);
    // Every outcome, with the canary as the credential.
    for (i, state) in [
        State::Valid,
        State::Deleted,
        State::Deactivated,
        State::ServerError,
        State::Html,
        State::Garbage,
        State::DropConnection,
        State::RateLimited {
            retry_after_secs: 1,
        },
    ]
    .into_iter()
    .enumerate()
    {
        let token = format!("{CANARY}-{i}");
        sim.set(&token, state);
        env.put_token_credential(&format!("s{i}"), &token, json!({}))
            .await;
    }
    env.put_source(
        "k-raw",
        &[
            ("username", "canary-user@example.com"),
            ("apiKey", CANARY_KEY),
        ],
    )
    .await;
    env.put_credential(
        "k",
        json!({"type": "ApiKey", "sourceRef": {"name": "k-raw"}}),
    )
    .await;
    env.put_source("bad-raw", &[("token", &format!("{CANARY}\nX-Injected: 1"))])
        .await;
    env.put_credential("bad", json!({"sourceRef": {"name": "bad-raw"}}))
        .await;
    env.wait_reason("bad", "Ready", "InvalidSource").await;
    env.wait_reason("s0", "TokenValid", "Verified").await;
    env.wait_reason("s1", "TokenValid", "TokenRejected").await;
    env.wait_reason("k", "TokenValid", "TokenRejected").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Positive control: the canary is where it belongs, so a leak would be found.
    let published = env.secrets().get("s0").await.unwrap();
    assert!(
        common::value(&published, "MENDIX_TOKEN")
            .unwrap()
            .starts_with(CANARY)
    );
    assert!(sim.requests(&format!("{CANARY}-0")) > 0);

    let statuses = serde_json::to_string(
        &env.credentials()
            .list(&Default::default())
            .await
            .unwrap()
            .items,
    )
    .unwrap();
    let events = env.events().await.join("\n");
    let metrics = op.metrics().await;
    let logs = op.logs();
    assert!(
        logs.contains("\"level\":\"DEBUG\""),
        "logs are at debug level"
    );
    assert!(
        logs.contains("platform answered"),
        "the platform calls are logged"
    );
    for (what, text) in [
        ("status", &statuses),
        ("events", &events),
        ("metrics", &metrics),
        ("logs", &logs),
    ] {
        assert!(!text.contains("CANARY"), "a credential reached the {what}");
    }
}
