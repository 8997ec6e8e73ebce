//! The chart's ValidatingAdmissionPolicy (`admissionPolicy.enabled=true`) on the real API
//! server: the operator works under it as before, and its own identity is refused, with the
//! policy's message, when it creates, changes or deletes a Secret it does not manage.

mod common;

use common::{Operator, TestEnv, client_from, loopback_platform, service_account_kubeconfig};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use mendix_simulator::{Simulator, State};
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/mxcred-operator");
const RELEASE_NS: &str = "mxcred-admission";
const WRITE: &str =
    "mxcred-operator may only write Secrets labelled app.kubernetes.io/managed-by: mxcred-operator";
const CHANGE: &str = "mxcred-operator may only change or delete Secrets that were labelled app.kubernetes.io/managed-by: mxcred-operator";

fn foreign(name: &str) -> Secret {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "someone-else"}},
        "stringData": {"password": "theirs"},
    }))
    .unwrap()
}

/// The error of a write the API server refused, as text.
fn refusal<T: std::fmt::Debug>(result: Result<T, kube::Error>, what: &str) -> String {
    match result {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 403, "{what}: {e:?}");
            e.message
        }
        other => panic!("{what} was not refused: {other:?}"),
    }
}

/// Waits until the policy denies the operator a foreign Secret: a new policy takes a moment to
/// be loaded. Returns the message of that refusal.
async fn policy_in_force(operator: &Client, ns: &str) -> String {
    let secrets: Api<Secret> = Api::namespaced(operator.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match secrets
            .create(&PostParams::default(), &foreign("probe"))
            .await
        {
            Err(kube::Error::Api(e)) if e.code == 403 => return e.message,
            Ok(_) => {
                secrets.delete("probe", &DeleteParams::default()).await.ok();
            }
            Err(e) => panic!("create: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "the policy never refused a foreign Secret"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn the_policy_confines_the_operator_to_its_own_secrets() {
    let env = TestEnv::new("admission").await;
    let admin = env.cp.admin_kubeconfig.clone();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(common::helm_tools().join("helm"))
            .args([
                "install",
                "adm",
                CHART,
                "-n",
                RELEASE_NS,
                "--create-namespace",
            ])
            // The harness owns the CRDs on this control plane (tests/upgrade.rs installs them).
            .args([
                "--set",
                "crds.enabled=false",
                "--set",
                "admissionPolicy.enabled=true",
            ])
            .arg("--kubeconfig")
            .arg(&admin)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "helm install: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    })
    .await
    .unwrap();
    let kubeconfig =
        service_account_kubeconfig(&env.client, &env.cp.dir, RELEASE_NS, "adm-mxcred-operator")
            .await;
    let operator = client_from(&kubeconfig).await;
    let message = policy_in_force(&operator, &env.ns).await;
    assert!(message.contains(WRITE), "{message}");

    // The operator at work under the policy: it creates, updates and deletes its own Secrets.
    let sim = Simulator::start().await;
    sim.set("admitted-token", State::Valid);
    sim.set("rotated-token", State::Valid);
    let mut args = loopback_platform(&sim.base_url());
    args.extend(["--lease-namespace", RELEASE_NS].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let op = Operator::start(env.cp, &kubeconfig, &env.ns, &args, &[]);
    env.put_source("raw", &[("token", "admitted-token")]).await;
    env.put_credential("c", json!({"sourceRef": {"name": "raw"}}))
        .await;
    env.wait_reason("c", "Ready", "Synced").await;
    env.wait_reason("c", "TokenValid", "Verified").await;
    env.put_source("raw", &[("token", "rotated-token")]).await;
    env.wait_secret("c", "rotated", |s| {
        common::value(s, "MENDIX_TOKEN").as_deref() == Some("rotated-token")
    })
    .await;
    // A new target name: the operator writes the new Secret and deletes the one it wrote before.
    env.put_credential(
        "c",
        json!({"sourceRef": {"name": "raw"}, "target": {"name": "renamed"}}),
    )
    .await;
    env.wait_secret("renamed", "written", |_| true).await;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns);
    common::wait_until(
        Duration::from_secs(30),
        "the previous target to be deleted",
        || async { secrets.get_opt("c").await.unwrap().is_none() },
    )
    .await;
    assert!(
        !op.logs().contains("ValidatingAdmissionPolicy"),
        "{}",
        op.logs()
    );

    // The operator's identity and a Secret it does not manage.
    secrets
        .create(&PostParams::default(), &foreign("theirs"))
        .await
        .unwrap();
    let as_operator: Api<Secret> = Api::namespaced(operator.clone(), &env.ns);
    let created = refusal(
        as_operator
            .create(&PostParams::default(), &foreign("new"))
            .await,
        "create",
    );
    let relabel = json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": "mxcred-operator"}},
                         "stringData": {"password": "stolen"}});
    let patched = refusal(
        as_operator
            .patch("theirs", &PatchParams::default(), &Patch::Merge(&relabel))
            .await,
        "patch",
    );
    let deleted = refusal(
        as_operator.delete("theirs", &DeleteParams::default()).await,
        "delete",
    );
    println!("create: {created}\npatch: {patched}\ndelete: {deleted}");
    assert!(created.contains(WRITE), "{created}");
    assert!(patched.contains(CHANGE), "{patched}");
    assert!(deleted.contains(CHANGE), "{deleted}");
    let theirs = secrets.get("theirs").await.unwrap();
    assert_eq!(
        common::value(&theirs, "password").as_deref(),
        Some("theirs")
    );
}
