//! Faults and hostile input: nothing lost, nothing leaked, always converges.

mod common;

use common::{TestEnv, assert_no_canary, condition, value, wait_for, wait_until};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use mendix_simulator::{Simulator, State};
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const CANARY: &str = "CANARY-reliability-5b2e";

async fn merge(env: &TestEnv, name: &str, patch: serde_json::Value) {
    env.secrets()
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

fn ours(env: &TestEnv) -> ListParams {
    let _ = env;
    ListParams::default().labels("app.kubernetes.io/managed-by=mxcred-operator")
}

#[tokio::test]
async fn drift_is_repaired_within_seconds_and_never_duplicated() {
    let sim = Simulator::start().await;
    let env = TestEnv::new("drift").await;
    let token = format!("{CANARY}-drift");
    sim.set(&token, State::Valid);
    let op = env.start_operator_with_platform(&sim.base_url(), &[]);
    env.put_source("raw", &[("token", &token)]).await;
    env.put_credential(
        "d",
        json!({"sourceRef": {"name": "raw"}, "target": {"labels": {"team": "ci"}}}),
    )
    .await;
    env.wait_reason("d", "TokenValid", "Verified").await;
    let good = |s: &Secret| {
        value(s, "MENDIX_TOKEN").as_deref() == Some(token.as_str())
            && s.metadata
                .owner_references
                .as_ref()
                .is_some_and(|o| o.len() == 1)
            && s.metadata.labels.as_ref().is_some_and(|l| {
                l.get("mxcred.io/credential").is_some_and(|v| v == "d")
                    && l.get("app.kubernetes.io/managed-by")
                        .is_some_and(|v| v == "mxcred-operator")
                    && l.get("team").is_some_and(|v| v == "ci")
            })
    };
    env.wait_secret("d", "published", good).await;

    let edits = [
        (
            "data edited",
            json!({"data": {"MENDIX_TOKEN": "dGFtcGVyZWQ="}}),
        ),
        (
            "owner reference removed",
            json!({"metadata": {"ownerReferences": null}}),
        ),
        (
            "labels removed",
            json!({"metadata": {"labels": {"mxcred.io/credential": null, "app.kubernetes.io/managed-by": null, "team": null}}}),
        ),
        (
            "annotation edited",
            json!({"metadata": {"annotations": {"mxcred.io/token-fingerprint": "sha256:000000000000"}}}),
        ),
    ];
    for (what, patch) in edits {
        let started = Instant::now();
        merge(&env, "d", patch).await;
        let repaired = env
            .wait_secret("d", what, |s| {
                good(s)
                    && s.metadata
                        .annotations
                        .as_ref()
                        .is_some_and(|a| a["mxcred.io/token-fingerprint"] != "sha256:000000000000")
            })
            .await;
        println!("{what}: repaired in {:?}", started.elapsed());
        assert!(started.elapsed() < Duration::from_secs(10), "{what}");
        assert_eq!(repaired.metadata.owner_references.unwrap().len(), 1);
    }
    let started = Instant::now();
    env.secrets()
        .delete("d", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_secret("d", "recreated", good).await;
    println!("deleted: recreated in {:?}", started.elapsed());

    let published = env.secrets().list(&ours(&env)).await.unwrap().items;
    assert_eq!(published.len(), 1, "exactly one target Secret");
    assert_eq!(
        condition(&env.credentials().get("d").await.unwrap(), "Ready").reason,
        "Synced"
    );
    assert_no_canary(&env, &[&op], CANARY).await;
}

#[tokio::test]
async fn crashes_at_random_moments_converge_without_storm_or_repeated_events() {
    const N: usize = 500;
    const TOKENS: usize = 10;
    let sim = Simulator::start().await;
    let env = TestEnv::new("crash").await;
    for t in 0..TOKENS {
        let token = format!("{CANARY}-{t}");
        sim.set(&token, State::Valid);
        env.put_source(&format!("raw{t}"), &[("token", &token)])
            .await;
    }
    let mut op = env.start_operator_with_platform(&sim.base_url(), &[]);
    // Kill the operator at moments that vary from run to run while the resources arrive.
    let seed = Instant::now().elapsed().subsec_nanos() as u64 ^ std::process::id() as u64;
    let mut kills = 0;
    let mut next_kill = Instant::now() + Duration::from_millis(300 + seed % 700);
    for i in 0..N {
        env.put_credential(
            &format!("c{i}"),
            json!({"sourceRef": {"name": format!("raw{}", i % TOKENS)}}),
        )
        .await;
        if Instant::now() > next_kill && kills < 4 {
            op.kill();
            kills += 1;
            op = env.start_operator_with_platform(&sim.base_url(), &[]);
            next_kill = Instant::now() + Duration::from_millis(300 + (seed >> kills) % 900);
        }
    }
    // And once more, while they are being verified.
    tokio::time::sleep(Duration::from_millis(200 + seed % 400)).await;
    op.kill();
    let started = Instant::now();
    let op = env.start_operator_with_platform(&sim.base_url(), &[]);
    wait_until(
        Duration::from_secs(180),
        "all resources to converge",
        || env.all_verified(N),
    )
    .await;
    println!(
        "{N} resources, {kills} kills while creating and 1 while verifying: converged {:?} after the last restart",
        started.elapsed()
    );

    let published = env.secrets().list(&ours(&env)).await.unwrap().items;
    assert_eq!(
        published.len(),
        N,
        "one target Secret per resource, no orphans or duplicates"
    );
    assert!(published.iter().all(|s| {
        s.metadata
            .owner_references
            .as_ref()
            .is_some_and(|o| o.len() == 1)
    }));

    // Events: at most one per resource and transition.
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(env.client.clone(), &env.ns);
    let mut seen: HashMap<(String, String), usize> = HashMap::new();
    for e in events.list(&Default::default()).await.unwrap().items {
        let who = e.regarding.and_then(|r| r.name).unwrap_or_default();
        *seen.entry((who, e.reason.unwrap_or_default())).or_default() +=
            e.series.map_or(1, |s| s.count as usize);
    }
    let repeated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "repeated Events: {repeated:?}");

    // No verification storm: a restart after convergence asks the platform nothing.
    let calls = sim.total_requests();
    println!(
        "platform calls for {N} resources on {TOKENS} tokens across {} starts: {calls}",
        kills + 2
    );
    drop(op);
    let op = env.start_operator_with_platform(&sim.base_url(), &[]);
    wait_until(
        Duration::from_secs(60),
        "the restarted operator to reconcile all",
        || async { op.logs().matches("\"message\":\"reconciled\"").count() >= N },
    )
    .await;
    assert_eq!(
        sim.total_requests(),
        calls,
        "a restart re-verified resources that were not due"
    );
    assert_no_canary(&env, &[&op], CANARY).await;
}

#[tokio::test]
async fn deletion_races_leave_nothing_behind() {
    let sim = Simulator::start().await;
    let env = TestEnv::new("races").await;
    let op = env.start_operator_with_platform(&sim.base_url(), &[]);

    // A resource deleted while its verification is in flight.
    let slow = format!("{CANARY}-slow");
    sim.set(&slow, State::Slow(Duration::from_secs(3)));
    env.put_source("slow-raw", &[("token", &slow)]).await;
    env.put_credential("inflight", json!({"sourceRef": {"name": "slow-raw"}}))
        .await;
    wait_until(
        Duration::from_secs(20),
        "the check to be in flight",
        || async { sim.requests(&slow) > 0 },
    )
    .await;
    env.credentials()
        .delete("inflight", &DeleteParams::default())
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(30),
        "the target to be collected",
        || async { env.secrets().get_opt("inflight").await.unwrap().is_none() },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!op.has_exited(), "the operator died");

    // A source deleted and created again.
    let first = format!("{CANARY}-first");
    let second = format!("{CANARY}-second");
    sim.set(&first, State::Valid);
    sim.set(&second, State::Valid);
    env.put_source("raw", &[("token", &first)]).await;
    env.put_credential("src", json!({"sourceRef": {"name": "raw"}}))
        .await;
    env.wait_reason("src", "TokenValid", "Verified").await;
    env.secrets()
        .delete("raw", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_reason("src", "Ready", "SourceNotFound").await;
    let kept = env.secrets().get("src").await.unwrap();
    assert_eq!(
        value(&kept, "MENDIX_TOKEN").as_deref(),
        Some(first.as_str()),
        "the last good Secret stays"
    );
    env.put_source("raw", &[("token", &second)]).await;
    env.wait_secret("src", "updated", |s| {
        value(s, "MENDIX_TOKEN").as_deref() == Some(second.as_str())
    })
    .await;
    env.wait_reason("src", "Ready", "Synced").await;
    env.wait_reason("src", "TokenValid", "Verified").await;

    // A namespace deleted with everything in it, under the operator that serves it.
    let doomed = TestEnv::new("doomed").await;
    let doomed_op = doomed.start_operator_with_platform(&sim.base_url(), &[]);
    doomed.put_source("raw", &[("token", &first)]).await;
    doomed
        .put_credential("c", json!({"sourceRef": {"name": "raw"}}))
        .await;
    doomed.wait_reason("c", "Ready", "Synced").await;
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(env.client.clone());
    namespaces
        .delete(&doomed.ns, &DeleteParams::default())
        .await
        .unwrap();
    wait_until(Duration::from_secs(60), "the namespace to go", || async {
        namespaces.get_opt(&doomed.ns).await.unwrap().is_none()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !doomed_op.has_exited(),
        "the operator of a deleted namespace died"
    );
    assert!(!doomed_op.logs().contains("panicked"));
    assert!(!op.logs().contains("panicked"));
    assert_no_canary(&env, &[&op, &doomed_op], CANARY).await;
}

#[tokio::test]
async fn hostile_input_gets_a_reason_and_harms_no_one_else() {
    let sim = Simulator::start().await;
    let env = TestEnv::new("hostile").await;
    let good = format!("{CANARY}-good");
    sim.set(&good, State::Valid);
    let op = env.start_operator_with_platform(&sim.base_url(), &[]);
    let big = format!("{CANARY}{}", "x".repeat(5000));
    let mib = vec![b'a'; 1024 * 1024 - 64];
    env.put_source_bytes("src-long", &[("token", big.as_bytes())])
        .await;
    env.put_source_bytes(
        "src-binary",
        &[("token", &[0xff, 0x00, 0xfe, b'C', b'A', b'N'])],
    )
    .await;
    env.put_source_bytes("src-blank", &[("token", b"   \n")])
        .await;
    env.put_source_bytes(
        "src-notutf8",
        &[("username", &[0xc3, 0x28]), ("apiKey", good.as_bytes())],
    )
    .await;
    env.put_source_bytes("src-huge", &[("token", &mib)]).await;
    env.put_source_bytes(
        "src-padded",
        &[("token", good.as_bytes()), ("ballast", &mib[..512 * 1024])],
    )
    .await;
    // As many labels as the CRD allows (more are refused when applied: tests/tenancy.rs).
    let many_labels: serde_json::Map<_, _> = (0..16)
        .map(|i| (format!("l{i}"), json!(format!("v{i}"))))
        .collect();

    let cases = [
        (
            "long",
            json!({"sourceRef": {"name": "src-long"}}),
            "Ready",
            "InvalidSource",
        ),
        (
            "binary",
            json!({"sourceRef": {"name": "src-binary"}}),
            "Ready",
            "InvalidSource",
        ),
        (
            "blank",
            json!({"sourceRef": {"name": "src-blank"}}),
            "Ready",
            "InvalidSource",
        ),
        (
            "notutf8",
            json!({"type": "ApiKey", "sourceRef": {"name": "src-notutf8"}}),
            "Ready",
            "InvalidSource",
        ),
        (
            "huge",
            json!({"sourceRef": {"name": "src-huge"}}),
            "Ready",
            "InvalidSource",
        ),
        (
            "userinfo",
            json!({"sourceRef": {"name": "src-padded"}, "verification": {"probe": format!("https://{CANARY}:pw@example.com/")}}),
            "Ready",
            "InvalidSpec",
        ),
        (
            "negative",
            json!({"sourceRef": {"name": "src-padded"}, "verification": {"interval": "-1h"}}),
            "Ready",
            "InvalidSpec",
        ),
        (
            "words",
            json!({"sourceRef": {"name": "src-padded"}, "verification": {"interval": "abc"}}),
            "Ready",
            "InvalidSpec",
        ),
        (
            "year",
            json!({"sourceRef": {"name": "src-padded"}, "verification": {"interval": "1y"}}),
            "TokenValid",
            "Verified",
        ),
        (
            "labels",
            json!({"sourceRef": {"name": "src-padded"}, "target": {"labels": many_labels}}),
            "TokenValid",
            "Verified",
        ),
        (
            "padded",
            json!({"sourceRef": {"name": "src-padded"}}),
            "TokenValid",
            "Verified",
        ),
    ];
    // Refused when applied, by the CRD's CEL rules (each rule has its case in tests/crd.rs).
    for (name, spec) in [
        (
            "samekeys",
            json!({"type": "ApiKey", "sourceRef": {"name": "src-padded", "usernameKey": "k", "apiKeyKey": "k"}}),
        ),
        (
            "scheme",
            json!({"sourceRef": {"name": "src-padded"}, "verification": {"probe": "gopher://example.com/"}}),
        ),
        (
            "zero",
            json!({"sourceRef": {"name": "src-padded"}, "verification": {"interval": "0s"}}),
        ),
    ] {
        let cr = json!({"apiVersion": "mxcred.io/v1alpha1", "kind": "MendixCredential",
                        "metadata": {"name": name}, "spec": spec});
        let refused = env
            .credentials()
            .patch(name, &PatchParams::apply("mxcred-tests"), &Patch::Apply(cr))
            .await
            .expect_err(name);
        assert!(
            matches!(&refused, kube::Error::Api(e) if e.code == 422),
            "{name}: {refused}"
        );
    }
    for (name, spec, _, _) in &cases {
        env.put_credential(name, spec.clone()).await;
    }
    for (name, _, type_, reason) in &cases {
        let cr = env.wait_reason(name, type_, reason).await;
        let c = condition(&cr, type_);
        assert!(!c.message.is_empty(), "{name}: a reason needs words");
        if *reason == "InvalidSource" {
            assert!(
                env.secrets().get_opt(name).await.unwrap().is_none(),
                "{name}: nothing written"
            );
        }
    }
    let labelled = env.secrets().get("labels").await.unwrap();
    assert!(labelled.metadata.labels.unwrap().len() >= 16);
    assert!(
        wait_for(Duration::from_secs(1), || async {
            (!op.has_exited()).then_some(())
        })
        .await
        .is_some()
    );
    assert_no_canary(&env, &[&op], CANARY).await;
}
