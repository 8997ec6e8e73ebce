//! The consumers of a credential (`status.consumers`), on the real control plane: three
//! workloads read a MendixCredential's Secret in three different ways, and when its token
//! is deleted the condition, the Warning Event and the gauge say which are affected; a
//! ClusterMendixCredential counts the workloads of every namespace it publishes to; and an
//! operator that may not list workloads says so in the status, once in its log, and serves the
//! credential all the same.
//!
//! One operator in cluster mode serves both kinds, so the tests of this file take turns; a
//! cluster-mode operator of another test binary would serve them too (binaries run one after
//! the other).

mod common;

use common::{Operator, TestEnv, apply_yaml, loopback_platform, wait_for, wait_until};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use mendix_simulator::{Simulator, State};
use mxcred_operator::domain::api::MendixCredential;
use mxcred_operator::domain::cluster::ClusterMendixCredential;
use mxcred_operator::domain::consumers::Consumers;
use serde_json::{Value, json};
use std::process::Command;
use std::time::Duration;

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How a pod spec names the Secret.
#[derive(Clone, Copy)]
enum Reads {
    Env,
    EnvFrom,
    Projected,
}

fn pod_spec(secret: &str, reads: Reads) -> Value {
    let container = |extra: Value| {
        let mut c = json!({"name": "ci", "image": "registry.invalid/ci:1"});
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        c
    };
    match reads {
        Reads::Env => json!({"containers": [container(json!({"env": [{"name": "MENDIX_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": secret, "key": "MENDIX_TOKEN"}}}]}))]}),
        Reads::EnvFrom => json!({"restartPolicy": "Never",
            "containers": [container(json!({"envFrom": [{"secretRef": {"name": secret}}]}))]}),
        Reads::Projected => json!({
            "containers": [container(json!({"volumeMounts": [{"name": "mx", "mountPath": "/mx"}]}))],
            "volumes": [{"name": "mx", "projected": {"sources": [{"secret": {"name": secret}}]}}]}),
    }
}

fn deployment(ns: &str, name: &str, secret: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec(secret, Reads::Env)}}})
}

fn cron_job(ns: &str, name: &str, secret: &str) -> Value {
    json!({"apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": {
            "spec": pod_spec(secret, Reads::EnvFrom)}}}}})
}

fn job(ns: &str, name: &str, secret: &str) -> Value {
    json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"template": {"spec": pod_spec(secret, Reads::EnvFrom)}}})
}

fn pod(ns: &str, name: &str, secret: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
        "spec": pod_spec(secret, Reads::Projected)})
}

async fn apply(client: &Client, objects: &[Value]) {
    for object in objects {
        apply_yaml(client, &object.to_string()).await;
    }
}

/// The consumers a status lists, as "[namespace/]Kind name".
fn listed(consumers: &Consumers) -> Vec<String> {
    consumers
        .workloads
        .iter()
        .map(|w| match &w.namespace {
            Some(ns) => format!("{ns}/{} {}", w.kind, w.name),
            None => format!("{} {}", w.kind, w.name),
        })
        .collect()
}

async fn namespaced_consumers(env: &TestEnv, name: &str, want: &[&str]) -> MendixCredential {
    let api = env.credentials();
    let last = std::sync::Mutex::new(None);
    let found = wait_for(Duration::from_secs(30), || async {
        let cr = api.get(name).await.ok()?;
        let consumers = cr.status.as_ref()?.consumers.clone()?;
        *last.lock().unwrap() = Some(consumers.clone());
        (listed(&consumers) == want && consumers.count == Some(want.len() as i32)).then_some(cr)
    })
    .await;
    found.unwrap_or_else(|| panic!("{name}: consumers never {want:?}; last {last:?}"))
}

fn kubectl(env: &TestEnv, args: &[&str]) -> String {
    let out = Command::new(common::helm_tools().join("kubectl"))
        .arg("--kubeconfig")
        .arg(&env.cp.admin_kubeconfig)
        .arg("--cache-dir")
        .arg(env.cp.dir.join("kubectl-cache"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn request_check(api: Api<MendixCredential>, name: &str) {
    let patch = json!({"metadata": {"annotations": {"mxcred.io/verify-requested-at": "now"}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_token_names_the_workloads_it_breaks() {
    let _turn = TURN.lock().await;
    let sim = Simulator::start().await;
    let env = TestEnv::new("consumers").await;
    let args = loopback_platform(&sim.base_url());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let op = Operator::start(env.cp, &env.cp.operator_kubeconfig, "", &args, &[]);
    let ns = env.ns.as_str();
    sim.set("tok-consumers", State::Valid);
    env.put_source("raw", &[("token", "tok-consumers")]).await;
    apply(
        &env.client,
        &[
            deployment(ns, "runner", "ci-token"),
            cron_job(ns, "nightly", "ci-token"),
            pod(ns, "debug", "ci-token"),
            deployment(ns, "unrelated", "other-secret"),
        ],
    )
    .await;
    env.put_credential(
        "ci",
        json!({"sourceRef": {"name": "raw"}, "target": {"name": "ci-token"}}),
    )
    .await;
    env.wait_reason("ci", "TokenValid", "Verified").await;
    let three = ["CronJob nightly", "Deployment runner", "Pod debug"];
    namespaced_consumers(&env, "ci", &three).await;

    // The Deployment's pod, through its ReplicaSet, counts as the Deployment, once. (The test
    // control plane runs no workload controllers: the test makes what the Deployment's would.)
    owned_pod(&env, "runner").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    namespaced_consumers(&env, "ci", &three).await;

    // The token is deleted in the Mendix Portal.
    sim.set("tok-consumers", State::Deleted);
    request_check(env.credentials(), "ci").await;
    let cr = env.wait_reason("ci", "TokenValid", "TokenRejected").await;
    let affected = "Affected: 3 workloads (CronJob nightly, Deployment runner, Pod debug).";
    let valid = common::condition(&cr, "TokenValid");
    assert!(valid.message.ends_with(affected), "{}", valid.message);
    let events = env.wait_event("Warning TokenRejected").await;
    let event = events
        .iter()
        .find(|e| e.starts_with("Warning TokenRejected"))
        .unwrap();
    assert!(event.ends_with(affected), "{event}");
    wait_until(Duration::from_secs(10), "the gauge", || async {
        op.metrics().await.contains("mxcred_affected_workloads 3")
    })
    .await;
    println!(
        "$ kubectl get mxcred -n {ns}\n{}",
        kubectl(&env, &["get", "mxcred", "-n", ns])
    );
    println!(
        "$ kubectl describe mxcred ci -n {ns}\n{}",
        kubectl(&env, &["describe", "mxcred", "ci", "-n", ns])
    );
    println!("Event: {event}");

    // A workload that goes no longer counts.
    Api::<k8s_openapi::api::batch::v1::CronJob>::namespaced(env.client.clone(), ns)
        .delete("nightly", &DeleteParams::default())
        .await
        .unwrap();
    let cr = namespaced_consumers(&env, "ci", &["Deployment runner", "Pod debug"]).await;
    let valid = common::condition(&cr, "TokenValid");
    assert!(
        valid
            .message
            .ends_with("Affected: 2 workloads (Deployment runner, Pod debug)."),
        "{}",
        valid.message
    );

    cluster_kind(&env, &sim, &op).await;
    common::assert_no_canary(&env, &[&op], "tok-consumers").await;
}

/// A ReplicaSet of Deployment `name` and a pod of that ReplicaSet, owned as the Deployment's
/// controllers would own them.
async fn owned_pod(env: &TestEnv, name: &str) {
    let ns = env.ns.as_str();
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(env.client.clone(), ns);
    let uid = deployments.get(name).await.unwrap().metadata.uid.unwrap();
    let owner = |kind: &str, name: &str, uid: &str| json!([{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": uid, "controller": true}]);
    let rs_name = format!("{name}-5d4f8");
    let template = deployment(ns, name, "ci-token")["spec"]["template"].clone();
    apply(
        &env.client,
        &[json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": rs_name, "namespace": ns,
                         "ownerReferences": owner("Deployment", name, &uid)},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}}, "template": template}})],
    )
    .await;
    let rs: Api<k8s_openapi::api::apps::v1::ReplicaSet> = Api::namespaced(env.client.clone(), ns);
    let rs_uid = rs.get(&rs_name).await.unwrap().metadata.uid.unwrap();
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{rs_name}-x2k9q"), "namespace": ns, "labels": {"app": name},
                     "ownerReferences": owner("ReplicaSet", &rs_name, &rs_uid)},
        "spec": template["spec"].clone()});
    pod["metadata"]["ownerReferences"][0]["apiVersion"] = json!("apps/v1");
    apply(&env.client, &[pod]).await;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    assert_eq!(
        pods.list(&ListParams::default().labels(&format!("app={name}")))
            .await
            .unwrap()
            .items
            .len(),
        1
    );
}

/// A ClusterMendixCredential publishing into two namespaces counts the workloads of both.
async fn cluster_kind(env: &TestEnv, sim: &Simulator, op: &Operator) {
    let (a, b) = (format!("{}-a", env.ns), format!("{}-b", env.ns));
    for ns in [&a, &b] {
        Api::<Namespace>::all(env.client.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
            )
            .await
            .unwrap();
    }
    sim.set("tok-consumers-cluster", State::Valid);
    env.put_source("raw-cluster", &[("token", "tok-consumers-cluster")])
        .await;
    apply(
        &env.client,
        &[
            deployment(&a, "runner", "ci-shared"),
            job(&b, "smoke", "ci-shared"),
        ],
    )
    .await;
    let name = format!("{}-shared", env.ns);
    let api: Api<ClusterMendixCredential> = Api::all(env.client.clone());
    let cr = json!({"apiVersion": "mxcred.io/v1alpha1", "kind": "ClusterMendixCredential",
        "metadata": {"name": name},
        "spec": {"sourceRef": {"namespace": env.ns, "name": "raw-cluster"},
                 "target": {"name": "ci-shared", "namespaces": [a, b]}}});
    api.patch(
        &name,
        &PatchParams::apply("mxcred-tests").force(),
        &Patch::Apply(cr),
    )
    .await
    .unwrap();
    let want = [format!("{a}/Deployment runner"), format!("{b}/Job smoke")];
    let last = std::sync::Mutex::new(None);
    let found = wait_for(Duration::from_secs(30), || async {
        let consumers = api.get(&name).await.ok()?.status?.consumers?;
        *last.lock().unwrap() = Some(consumers.clone());
        (listed(&consumers) == want && consumers.count == Some(2)).then_some(())
    })
    .await;
    assert!(found.is_some(), "consumers never {want:?}; last {last:?}");

    sim.set("tok-consumers-cluster", State::Deleted);
    let patch = json!({"metadata": {"annotations": {"mxcred.io/verify-requested-at": "now"}}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    let affected = format!("Affected: 2 workloads (Deployment {a}/runner, Job {b}/smoke).");
    let message = wait_for(Duration::from_secs(30), || async {
        let status = api.get(&name).await.ok()?.status?;
        let valid = status.conditions.iter().find(|c| c.type_ == "TokenValid")?;
        (valid.reason == "TokenRejected").then(|| valid.message.clone())
    })
    .await
    .expect("TokenRejected");
    assert!(message.ends_with(&affected), "{message}");
    wait_until(Duration::from_secs(10), "the cluster gauge", || async {
        op.metrics()
            .await
            .contains("mxcred_cluster_affected_workloads 2")
    })
    .await;
    println!(
        "$ kubectl get cmxc {name}\n{}",
        kubectl(env, &["get", "cmxc", &name])
    );
    let _ = api.delete(&name, &DeleteParams::default()).await;
    for ns in [&a, &b] {
        let _ = Api::<Namespace>::all(env.client.clone())
            .delete(ns, &DeleteParams::default())
            .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_rights_the_status_says_so_and_nothing_else_degrades() {
    let _turn = TURN.lock().await;
    let sim = Simulator::start().await;
    let env = TestEnv::new("consumers-norights").await;
    // The operator's namespaced rules without any on workloads.
    let kubeconfig = env
        .namespaced_identity(
            "operator-without-workloads",
            json!([
                {"apiGroups": ["mxcred.io"], "resources": ["mendixcredentials"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["mxcred.io"], "resources": ["mendixcredentials/status"], "verbs": ["patch"]},
                {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
                {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create"]},
            ]),
        )
        .await;
    let args = loopback_platform(&sim.base_url());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let op = Operator::start(env.cp, &kubeconfig, &env.ns, &args, &[]);
    sim.set("tok-norights", State::Valid);
    env.put_source("raw", &[("token", "tok-norights")]).await;
    apply(&env.client, &[deployment(&env.ns, "runner", "c")]).await;
    env.put_credential("c", json!({"sourceRef": {"name": "raw"}}))
        .await;
    let cr = env.wait_reason("c", "TokenValid", "Verified").await;
    assert_eq!(common::condition(&cr, "Ready").reason, "Synced");
    let consumers = cr.status.unwrap().consumers.expect("status.consumers");
    assert_eq!(consumers.count, None);
    let why = consumers.unknown.expect("why they are unknown");
    assert!(why.contains("may not list"), "{why}");
    env.wait_secret("c", "published", |s| {
        common::value(s, "MENDIX_TOKEN").as_deref() == Some("tok-norights")
    })
    .await;
    // Said once in the log, however many watches were refused.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        op.logs().matches("consumers are not counted").count(),
        1,
        "{}",
        op.logs()
    );
}
