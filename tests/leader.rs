//! Two instances with leader election: one serves, the other takes over when it dies.

mod common;

use common::{Operator, TestEnv, value, wait_for};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use mxcred_operator::shell::leader::LEASE_DURATION;
use serde_json::json;
use std::time::{Duration, Instant};

fn elected(env: &TestEnv, lease: &str, pod: &str) -> Operator {
    env.start_operator_as(
        "http://127.0.0.1:9",
        &[
            "--leader-elect",
            "--lease-name",
            lease,
            "--lease-namespace",
            "mxcred-system",
        ],
        &[("POD_NAME", pod)],
    )
}

async fn holder(env: &TestEnv, lease: &str) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), "mxcred-system");
    leases.get(lease).await.ok()?.spec?.holder_identity
}

/// Waits until one instance serves and the other stands by (both ready); returns the index of
/// the one serving.
async fn the_one_serving(ops: [&Operator; 2]) -> usize {
    wait_for(Duration::from_secs(40), || async {
        let roles = [ops[0].readyz().await, ops[1].readyz().await];
        match roles.each_ref().map(|r| r.as_deref()) {
            [Some("serving"), Some("standby")] => Some(0),
            [Some("standby"), Some("serving")] => Some(1),
            _ => None,
        }
    })
    .await
    .expect("one instance serves, the other stands by")
}

async fn serves(op: &Operator) -> bool {
    op.readyz().await.as_deref() == Some("serving")
}

#[tokio::test]
async fn one_leader_and_fail_over_when_it_dies() {
    let env = TestEnv::new("failover").await;
    let mut ops = [
        elected(&env, "failover", "pod-a"),
        elected(&env, "failover", "pod-b"),
    ];
    env.put_source("raw", &[("token", "first")]).await;
    env.put_credential("c", json!({"sourceRef": {"name": "raw"}}))
        .await;
    env.wait_reason("c", "Ready", "Synced").await;

    let leader = the_one_serving([&ops[0], &ops[1]]).await;
    let standby = 1 - leader;
    let names = ["pod-a", "pod-b"];
    assert_eq!(
        holder(&env, "failover").await.as_deref(),
        Some(names[leader])
    );
    assert!(
        !ops[standby].logs().contains("\"reconciled\""),
        "the standby reconciled"
    );

    ops[leader].kill();
    let killed = Instant::now();
    wait_for(Duration::from_secs(LEASE_DURATION + 20), || async {
        serves(&ops[standby]).await.then_some(())
    })
    .await
    .expect("the standby takes over");
    let took = killed.elapsed();
    println!("fail-over after SIGKILL: {took:?} (lease duration {LEASE_DURATION} s)");
    assert!(took < Duration::from_secs(LEASE_DURATION + 10), "{took:?}");
    assert_eq!(
        holder(&env, "failover").await.as_deref(),
        Some(names[standby])
    );

    // The new leader serves: a rotation reaches the target.
    env.put_source("raw", &[("token", "second")]).await;
    env.wait_secret("c", "rotated", |s| {
        value(s, "MENDIX_TOKEN").as_deref() == Some("second")
    })
    .await;
}

#[tokio::test]
async fn sigterm_drains_quickly_and_releases_the_lease() {
    let env = TestEnv::new("sigterm").await;
    let mut ops = [
        elected(&env, "sigterm", "pod-c"),
        elected(&env, "sigterm", "pod-d"),
    ];
    let leader = the_one_serving([&ops[0], &ops[1]]).await;
    let standby = 1 - leader;

    let names = ["pod-c", "pod-d"];
    assert_eq!(
        holder(&env, "sigterm").await.as_deref(),
        Some(names[leader])
    );
    let exit = ops[leader].terminate();
    println!("exit after SIGTERM: {exit:?}");
    assert!(exit < Duration::from_secs(5), "{exit:?}");
    // Released on the way out: no holder, rather than a stale one until expiry.
    assert_eq!(
        holder(&env, "sigterm").await,
        None,
        "the lease was not released"
    );
    let released = Instant::now();
    // The standby looks again when the lease it saw would have expired.
    wait_for(Duration::from_secs(LEASE_DURATION + 10), || async {
        serves(&ops[standby]).await.then_some(())
    })
    .await
    .expect("the standby takes over");
    println!("take-over after SIGTERM: {:?}", released.elapsed());
    assert_eq!(
        holder(&env, "sigterm").await.as_deref(),
        Some(names[standby])
    );
}

#[tokio::test]
async fn a_leader_keeps_its_lease_past_the_lease_duration() {
    let env = TestEnv::new("renew").await;
    let ops = [
        elected(&env, "renew", "pod-e"),
        elected(&env, "renew", "pod-f"),
    ];
    let leader = the_one_serving([&ops[0], &ops[1]]).await;
    let names = ["pod-e", "pod-f"];
    tokio::time::sleep(Duration::from_secs(LEASE_DURATION + 10)).await;
    assert_eq!(the_one_serving([&ops[0], &ops[1]]).await, leader);
    assert_eq!(holder(&env, "renew").await.as_deref(), Some(names[leader]));
    let standby = &ops[1 - leader];
    assert!(
        !standby.logs().contains("holding the lease"),
        "the standby took the lease while the leader held it"
    );
}
