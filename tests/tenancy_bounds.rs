//! What a tenant controls cannot move the operator beyond what the tenant could do itself: any
//! valid name syncs, an oversized annotation is refused without being held, and the operator
//! stops in a bounded time. Each test runs the tenant as a ServiceAccount with a Role of its own
//! in its namespace, on the real control plane.

mod common;

use common::{TestEnv, wait_until};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use mxcred_operator::domain::api::MendixCredential;
use serde_json::json;
use std::time::Duration;
use tokio::sync::Mutex;

/// One test at a time: the memory test runs a cluster-mode operator, which would serve every
/// other test's resources too.
static TURN: Mutex<()> = Mutex::const_new(());

/// A tenant of the test's namespace: may create, read and delete MendixCredentials, and
/// nothing else (it may not read a Secret, nor write a status).
async fn tenant(env: &TestEnv) -> Client {
    let rules = json!([{
        "apiGroups": ["mxcred.io"], "resources": ["mendixcredentials"],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    }]);
    let kubeconfig = env.namespaced_identity("tenant", rules).await;
    let client = common::client_from(&kubeconfig).await;
    let credentials: Api<MendixCredential> = Api::namespaced(client.clone(), &env.ns);
    wait_until(Duration::from_secs(10), "the tenant's Role", || async {
        credentials.list(&Default::default()).await.is_ok()
    })
    .await;
    client
}

/// Applies a MendixCredential as the tenant.
async fn apply_as(
    client: &Client,
    ns: &str,
    name: &str,
    metadata: serde_json::Value,
    spec: serde_json::Value,
) {
    let mut metadata = metadata;
    metadata["name"] = json!(name);
    let cr = json!({"apiVersion": "mxcred.io/v1alpha1", "kind": "MendixCredential",
        "metadata": metadata, "spec": spec});
    Api::<MendixCredential>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::apply("tenant"), &Patch::Apply(cr))
        .await
        .unwrap();
}

/// A valid name of 253 characters (the longest a resource may have), with a '.' where the
/// label value's cut falls.
fn longest_name(seed: &str) -> String {
    let head = format!("{seed}-{}", "a".repeat(51 - seed.len() - 1));
    let name = format!("{head}.{}", "b".repeat(253 - head.len() - 1));
    assert_eq!(name.len(), 253);
    name
}

#[tokio::test]
async fn a_resource_with_the_longest_valid_name_syncs() {
    let _turn = TURN.lock().await;
    let env = TestEnv::new("long").await;
    let tenant = tenant(&env).await;
    let _op = env.start_operator(&[]);
    env.put_source("raw", &[("token", "tok-long-name")]).await;
    let name = longest_name("bot");
    apply_as(
        &tenant,
        &env.ns,
        &name,
        json!({}),
        json!({"sourceRef": {"name": "raw"}, "verification": {"enabled": false}}),
    )
    .await;
    let cr = env.wait_reason(&name, "Ready", "Synced").await;
    assert_eq!(
        cr.status.unwrap().secret_name.as_deref(),
        Some(name.as_str())
    );
    let target = env.secrets().get(&name).await.unwrap();
    assert_eq!(
        common::value(&target, "MENDIX_TOKEN").as_deref(),
        Some("tok-long-name")
    );
    let label = &target.metadata.labels.as_ref().unwrap()["mxcred.io/credential"];
    assert!(label.len() <= 63, "{label}");
    assert!(label.starts_with("bot-"), "{label}");
    // A change of the source still reaches it: the target's watch maps it to its resource.
    env.put_source("raw", &[("token", "tok-long-name-2")]).await;
    env.wait_secret(&name, "the new token", |s| {
        common::value(s, "MENDIX_TOKEN").as_deref() == Some("tok-long-name-2")
    })
    .await;
}

/// The bound on the time from SIGTERM to exit, and a margin for a loaded machine.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(10);
const MARGIN: Duration = Duration::from_millis(1500);

#[tokio::test]
async fn the_operator_exits_within_the_bound_whatever_the_api_server_and_platform_do() {
    use mendix_simulator::{Simulator, State};
    let _turn = TURN.lock().await;
    let sim = Simulator::start().await;
    let env = TestEnv::new("stop").await;
    let tenant = tenant(&env).await;
    let lease = [
        "--leader-elect",
        "--lease-name",
        "stop",
        "--lease-namespace",
        "mxcred-system",
    ];
    let mut op = env.start_operator_with_platform(&sim.base_url(), &lease);
    // The tenant's resources, each checked against a platform that never answers.
    for i in 0..20 {
        let token = format!("tok-hang-{i}");
        sim.set(&token, State::Slow(Duration::from_secs(600)));
        env.put_source(&format!("raw-{i}"), &[("token", &token)])
            .await;
        apply_as(
            &tenant,
            &env.ns,
            &format!("c-{i}"),
            json!({}),
            json!({"sourceRef": {"name": format!("raw-{i}")}}),
        )
        .await;
    }
    wait_until(Duration::from_secs(30), "checks under way", || async {
        sim.total_requests() > 0
    })
    .await;
    // More work arrives, and the API server stops answering in the middle of it.
    for i in 0..20 {
        env.put_source(
            &format!("raw-{i}"),
            &[("token", &format!("tok-hang-{i}-b"))],
        )
        .await;
    }
    let frozen = common::Frozen::freeze(env.cp.apiserver_pid());
    let took = op.terminate();
    println!(
        "exit after SIGTERM, resources in flight, platform hanging, API server frozen: {took:?}"
    );
    assert!(took < SHUTDOWN_BOUND + MARGIN, "{took:?}");

    // Started while the API server does not answer: it never lists anything, and still stops.
    let mut op = env.start_operator_with_platform(&sim.base_url(), &lease);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let took = op.terminate();
    println!("exit after SIGTERM, API server frozen since the start: {took:?}");
    assert!(took < SHUTDOWN_BOUND + MARGIN, "{took:?}");
    drop(frozen);
}
