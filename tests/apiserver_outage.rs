//! The API server goes away for a while and comes back: the operator keeps running, its watches
//! resume, and changes made since are reconciled. Its own test binary: it stops the API server.

mod common;

use common::{ROOT, TestEnv, assert_no_canary, condition, value};
use mendix_simulator::{Simulator, State};
use serde_json::json;
use std::process::Command;
use std::time::Instant;

const CANARY: &str = "CANARY-outage-77d1";

#[tokio::test]
async fn the_operator_rides_out_an_api_server_outage() {
    let sim = Simulator::start().await;
    let env = TestEnv::new("outage").await;
    let first = format!("{CANARY}-1");
    let second = format!("{CANARY}-2");
    sim.set(&first, State::Valid);
    sim.set(&second, State::Valid);
    let op = env.start_operator_with_platform(&sim.base_url(), &["--test-interval", "2s"]);
    env.put_source("raw", &[("token", &first)]).await;
    env.put_credential("c", json!({"sourceRef": {"name": "raw"}}))
        .await;
    env.wait_reason("c", "TokenValid", "Verified").await;

    // Down for 15 s, while verifications come due and fail to be recorded.
    let dir = env.cp.dir.clone();
    let down = Instant::now();
    let restarted = tokio::task::spawn_blocking(move || {
        Command::new(format!("{ROOT}/hack/controlplane.sh"))
            .arg("restart-apiserver")
            .arg(&dir)
            .arg("15")
            .status()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(restarted.success());
    println!("API server back after {:?}", down.elapsed());
    assert!(!op.has_exited(), "the operator exited during the outage");

    // A change made right after: the resumed watches see it.
    let changed = Instant::now();
    env.put_source("raw", &[("token", &second)]).await;
    env.wait_secret("c", "rotated after the outage", |s| {
        value(s, "MENDIX_TOKEN").as_deref() == Some(second.as_str())
    })
    .await;
    println!(
        "rotation reconciled {:?} after the change",
        changed.elapsed()
    );
    let cr = env.wait_reason("c", "TokenValid", "Verified").await;
    assert_eq!(
        condition(&cr, "Ready").reason,
        "Synced",
        "no wrong condition from the outage"
    );
    assert!(!op.has_exited());
    assert!(
        op.logs().contains("reconcile failed") || op.logs().contains("WARN"),
        "the outage was noticed"
    );
    assert_no_canary(&env, &[&op], CANARY).await;
}
