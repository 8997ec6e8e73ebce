//! `spec.target.rolloutRestart` on the real control plane: a rotation restarts each listed
//! workload that consents (annotation `mxcred.io/restart-on`) once (its pod template's
//! generation goes up by exactly one), a SIGKILL and restart of the operator restarts nothing
//! again, problems are reported without holding up the Secret, and two resources restarting
//! one Deployment do not fight. The operators run with `--restart-min-interval 1s`: the tests
//! rotate faster than the default minute between two restarts of one workload.
//!
//! The operator runs under `hack/rbac.yaml`, which grants nothing on workloads (as the chart
//! without `rolloutRestart.enabled`); each test grants it, in its own namespace only, what the
//! chart's value would.

mod common;

use common::{Operator, TestEnv, value, wait_for};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Api, Resource};
use mendix_simulator::{Simulator, State};
use mxcred_operator::domain::api::{MendixCredential, RolloutRestartProblem};
use serde_json::json;
use std::time::{Duration, Instant};

/// A pod template reading `secret` through `envFrom`, as a CI runner's would.
fn template(app: &str, secret: &str) -> serde_json::Value {
    json!({
        "metadata": {"labels": {"app": app}},
        "spec": {"containers": [{"name": "runner", "image": "runner:1",
            "envFrom": [{"secretRef": {"name": secret}}]}]},
    })
}

/// Restarts of one workload may follow each other within a second.
const QUICK: [&str; 2] = ["--restart-min-interval", "1s"];

/// A Deployment reading `secret`, consenting to restarts by the credentials `follows`.
async fn create_deployment(env: &TestEnv, name: &str, secret: &str, follows: &str) -> Deployment {
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {"mxcred.io/restart-on": follows}},
        "spec": {"selector": {"matchLabels": {"app": name}}, "template": template(name, secret)},
    }))
    .unwrap();
    deployments(env)
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap()
}

fn deployments(env: &TestEnv) -> Api<Deployment> {
    Api::namespaced(env.client.clone(), &env.ns)
}

fn annotation(deployment: &Deployment, key: &str) -> Option<String> {
    deployment
        .spec
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(key)
        .cloned()
}

/// Waits, with a watch, until Deployment `name` holds `value` under `key`; returns it.
async fn wait_annotation(env: &TestEnv, name: &str, key: &str, value: &str) -> Deployment {
    let (key, value) = (key.to_owned(), value.to_owned());
    let holds = move |d: Option<&Deployment>| {
        d.is_some_and(|d| annotation(d, &key).as_deref() == Some(value.as_str()))
    };
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(deployments(env), name, holds),
    )
    .await
    .unwrap_or_else(|_| panic!("Deployment {name} never held the annotation"))
    .unwrap()
    .unwrap()
}

fn generation(d: &Deployment) -> i64 {
    d.meta().generation.unwrap()
}

/// The fingerprint the target Secret `name` holds, once it holds `token`.
async fn published(env: &TestEnv, name: &str, token: &str) -> String {
    let secret: Secret = env
        .wait_secret(name, "holding the token", |s| {
            value(s, "MENDIX_TOKEN").as_deref() == Some(token)
        })
        .await;
    secret.metadata.annotations.unwrap()["mxcred.io/token-fingerprint"].clone()
}

/// How many reconciles of credential `name` the operator has logged.
fn reconciles(op: &Operator, env: &TestEnv, name: &str) -> usize {
    let credential = format!("\"{}/{name}\"", env.ns);
    op.logs()
        .lines()
        .filter(|l| l.contains("\"reconciled\"") && l.contains(&credential))
        .count()
}

/// How many times the operator logged a patch of a workload.
fn patches(op: &Operator) -> usize {
    op.logs().matches("restarted a workload").count()
}

/// Makes the operator reconcile each credential `n` more times, one after the other, each
/// awaited: a change of its source Secret's metadata starts a reconcile (the operator watches
/// sources' metadata), the log tells it is done, and changes sent at once could be merged into
/// one reconcile. Each credential `NAME` reads source `NAME-raw`.
async fn reconcile_more(env: &TestEnv, op: &Operator, names: &[&str], n: usize) {
    for name in names {
        for _ in 0..n {
            let before = reconciles(op, env, name);
            let touch = TOUCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let patch =
                json!({"metadata": {"annotations": {"example.com/touched": touch.to_string()}}});
            env.secrets()
                .patch(
                    &format!("{name}-raw"),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
                .unwrap();
            let done = wait_for(Duration::from_secs(30), || async {
                (reconciles(op, env, name) > before).then_some(())
            })
            .await;
            assert!(done.is_some(), "{name} was not reconciled after a change");
        }
    }
}

static TOUCHES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

async fn valid_tokens(tokens: &[&str]) -> Simulator {
    let sim = Simulator::start().await;
    for token in tokens {
        sim.set(token, State::Valid);
    }
    sim
}

#[tokio::test]
async fn a_rotation_restarts_the_consumer_once_and_a_killed_operator_restarts_nothing_again() {
    let env = TestEnv::new("restart").await;
    common::grant_workload_restarts(&env.client, &env.ns, &["deployments"]).await;
    let sim = valid_tokens(&["restart-token-1", "restart-token-2"]).await;
    let mut op = env.start_operator_with_platform(&sim.base_url(), &QUICK);
    let created = create_deployment(&env, "runner", "bot", "bot").await;
    let g0 = generation(&created);

    env.put_source("bot-raw", &[("token", "restart-token-1")])
        .await;
    env.put_credential(
        "bot",
        json!({"sourceRef": {"name": "bot-raw"},
               "target": {"rolloutRestart": [{"kind": "Deployment", "name": "runner"}]}}),
    )
    .await;
    let key = "restart.mxcred.io/bot";
    let first = published(&env, "bot", "restart-token-1").await;
    let d = wait_annotation(&env, "runner", key, &first).await;
    assert_eq!(
        generation(&d),
        g0 + 1,
        "the first publication restarts once"
    );
    env.wait_event("Normal RolloutRestarted").await;

    // Rotation: the source changes to another valid token.
    let changed = Instant::now();
    env.put_source("bot-raw", &[("token", "restart-token-2")])
        .await;
    let second = published(&env, "bot", "restart-token-2").await;
    assert_ne!(first, second);
    let d = wait_annotation(&env, "runner", key, &second).await;
    println!(
        "source change to the Deployment's annotation: {:?}",
        changed.elapsed()
    );
    let g2 = generation(&d);
    assert_eq!(g2, g0 + 2, "the rotation restarts exactly once");
    let cr = env.wait_reason("bot", "TokenValid", "Verified").await;
    let entries = cr.status.unwrap().rollout_restart;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].fingerprint.as_deref(), Some(second.as_str()));
    assert_eq!(entries[0].reason, None);

    // Further reconciles (a resync, the verification's answers) restart nothing.
    reconcile_more(&env, &op, &["bot"], 3).await;
    assert_eq!(
        generation(&deployments(&env).get("runner").await.unwrap()),
        g2
    );
    assert_eq!(
        patches(&op),
        2,
        "one patch per credential; see {:?}",
        op.log
    );
    // The operator's own field manager on the workload, owning nothing but its annotation.
    let d = deployments(&env).get("runner").await.unwrap();
    let managers: Vec<_> = d
        .meta()
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.manager.as_deref() == Some("mxcred-operator/restart/bot"))
        .collect();
    assert_eq!(managers.len(), 1, "{:?}", d.meta().managed_fields);
    let owned = serde_json::to_string(&managers[0].fields_v1).unwrap();
    assert!(owned.contains("f:restart.mxcred.io/bot"), "{owned}");
    assert!(!owned.contains("f:containers"), "{owned}");

    // SIGKILL, then a new operator: it reconciles and restarts nothing.
    op.kill();
    let op = env.start_operator_with_platform(&sim.base_url(), &QUICK);
    let restarted = wait_for(Duration::from_secs(30), || async {
        (reconciles(&op, &env, "bot") > 0).then_some(())
    })
    .await;
    assert!(restarted.is_some(), "the new operator never reconciled");
    reconcile_more(&env, &op, &["bot"], 2).await;
    assert_eq!(
        generation(&deployments(&env).get("runner").await.unwrap()),
        g2
    );
    assert_eq!(patches(&op), 0, "see {:?}", op.log);
    let restarted_events = env
        .events()
        .await
        .into_iter()
        .filter(|e| e.starts_with("Normal RolloutRestarted"))
        .count();
    assert_eq!(restarted_events, 2, "one Event per restart, none repeated");
    common::assert_no_canary(&env, &[&op], "restart-token").await;
}

#[tokio::test]
async fn a_missing_or_forbidden_workload_is_reported_and_the_secret_still_synced() {
    let env = TestEnv::new("restart-problems").await;
    // Deployments and DaemonSets only: the StatefulSet is out of the operator's reach.
    common::grant_workload_restarts(&env.client, &env.ns, &["deployments", "daemonsets"]).await;
    let sim = valid_tokens(&["problem-token"]).await;
    let op = env.start_operator_with_platform(&sim.base_url(), &[]);
    create_deployment(&env, "runner", "bot", "bot").await;
    // Its own annotation names another credential only: it is left alone.
    create_deployment(&env, "unasked", "bot", "other, cluster/bot").await;
    let statefulset: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "db", "annotations": {"mxcred.io/restart-on": "bot"}},
        "spec": {"serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                 "template": template("db", "bot")},
    }))
    .unwrap();
    Api::<StatefulSet>::namespaced(env.client.clone(), &env.ns)
        .create(&PostParams::default(), &statefulset)
        .await
        .unwrap();

    let daemonset: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "agent", "annotations": {"mxcred.io/restart-on": "bot"}},
        "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": template("agent", "bot")},
    }))
    .unwrap();
    let daemonsets: Api<DaemonSet> = Api::namespaced(env.client.clone(), &env.ns);
    daemonsets
        .create(&PostParams::default(), &daemonset)
        .await
        .unwrap();

    env.put_source("bot-raw", &[("token", "problem-token")])
        .await;
    env.put_credential(
        "bot",
        json!({"sourceRef": {"name": "bot-raw"},
               "target": {"rolloutRestart": [
                   {"kind": "Deployment", "name": "missing"},
                   {"kind": "StatefulSet", "name": "db"},
                   {"kind": "Deployment", "name": "runner"},
                   {"kind": "Deployment", "name": "unasked"},
                   {"kind": "DaemonSet", "name": "agent"}]}}),
    )
    .await;
    let fingerprint = published(&env, "bot", "problem-token").await;
    // The listed workload that can be restarted is, whatever happens to the others.
    wait_annotation(&env, "runner", "restart.mxcred.io/bot", &fingerprint).await;
    let cr = env.wait_reason("bot", "Ready", "Synced").await;
    let entries = wait_for(Duration::from_secs(30), || async {
        let cr: MendixCredential = env.credentials().get("bot").await.ok()?;
        let entries = cr.status?.rollout_restart;
        (entries.len() == 5).then_some(entries)
    })
    .await
    .unwrap_or_else(|| panic!("no status for five workloads: {:?}", cr.status));
    let by_name = |name: &str| entries.iter().find(|e| e.name == name).unwrap().clone();
    let missing = by_name("missing");
    assert_eq!(missing.reason, Some(RolloutRestartProblem::NotFound));
    assert!(missing.message.unwrap().contains("does not exist"));
    let unasked = by_name("unasked");
    assert_eq!(unasked.reason, Some(RolloutRestartProblem::NoConsent));
    let message = unasked.message.unwrap();
    assert!(
        message.contains("mxcred.io/restart-on does not list \"bot\""),
        "{message}"
    );
    let left_alone = deployments(&env).get("unasked").await.unwrap();
    assert_eq!(annotation(&left_alone, "restart.mxcred.io/bot"), None);
    assert_eq!(generation(&left_alone), 1, "never restarted");
    let db = by_name("db");
    assert_eq!(db.reason, Some(RolloutRestartProblem::Forbidden));
    let message = db.message.unwrap();
    assert!(message.contains("rolloutRestart.enabled=true"), "{message}");
    assert!(
        !message.contains("cannot"),
        "not the server's message: {message}"
    );
    for restarted in ["runner", "agent"] {
        let entry = by_name(restarted);
        assert_eq!(
            (entry.reason, entry.fingerprint.as_deref()),
            (None, Some(fingerprint.as_str())),
            "{restarted}"
        );
    }
    let agent = daemonsets.get("agent").await.unwrap();
    let annotations = agent.spec.template.metadata.unwrap().annotations;
    assert_eq!(
        annotations.unwrap().get("restart.mxcred.io/bot"),
        Some(&fingerprint)
    );
    assert_eq!(
        common::condition(&env.credentials().get("bot").await.unwrap(), "Ready").status,
        "True",
        "Ready stays as the sync says"
    );

    let events = env.wait_event("Warning RolloutRestartFailed").await;
    let warnings = |events: &[String]| {
        events
            .iter()
            .filter(|e| e.starts_with("Warning RolloutRestartFailed"))
            .count()
    };
    // One Warning naming the three workloads that could not be restarted.
    let warning = events
        .iter()
        .find(|e| e.starts_with("Warning RolloutRestartFailed"))
        .unwrap();
    for named in [
        "Deployment \"missing\" (NotFound)",
        "StatefulSet \"db\" (Forbidden)",
        "Deployment \"unasked\" (NoConsent)",
    ] {
        assert!(warning.contains(named), "{warning}");
    }
    // On transition only: more reconciles find the same problems and say nothing new.
    reconcile_more(&env, &op, &["bot"], 2).await;
    assert_eq!(warnings(&env.events().await), 1, "{:?}", env.events().await);
    let restarted: Vec<String> = env
        .events()
        .await
        .into_iter()
        .filter(|e| e.starts_with("Normal RolloutRestarted"))
        .collect();
    assert_eq!(
        restarted.len(),
        1,
        "one Event for both restarts: {restarted:?}"
    );
    assert!(
        restarted[0].contains("Deployment \"runner\", DaemonSet \"agent\""),
        "{restarted:?}"
    );
    let logs = op.logs();
    assert!(logs.contains("cannot restart a workload"), "{logs}");
    assert!(
        !logs.contains("is forbidden"),
        "the server's message is not logged"
    );
    common::assert_no_canary(&env, &[&op], "problem-token").await;
}

#[tokio::test]
async fn two_credentials_restarting_one_deployment_do_not_fight() {
    let env = TestEnv::new("restart-two").await;
    common::grant_workload_restarts(&env.client, &env.ns, &["deployments"]).await;
    let sim = valid_tokens(&["two-token-a", "two-token-b", "two-token-a2"]).await;
    let op = env.start_operator_with_platform(&sim.base_url(), &QUICK);
    let g0 = generation(&create_deployment(&env, "shared", "a", "a,b").await);
    let restart_shared = json!([{"kind": "Deployment", "name": "shared"}]);
    for (name, token) in [("a", "two-token-a"), ("b", "two-token-b")] {
        env.put_source(&format!("{name}-raw"), &[("token", token)])
            .await;
        env.put_credential(
            name,
            json!({"sourceRef": {"name": format!("{name}-raw")},
                   "target": {"rolloutRestart": restart_shared}}),
        )
        .await;
    }
    let fa = published(&env, "a", "two-token-a").await;
    let fb = published(&env, "b", "two-token-b").await;
    wait_annotation(&env, "shared", "restart.mxcred.io/a", &fa).await;
    let d = wait_annotation(&env, "shared", "restart.mxcred.io/b", &fb).await;
    assert_eq!(
        annotation(&d, "restart.mxcred.io/a").as_deref(),
        Some(fa.as_str())
    );
    assert_eq!(generation(&d), g0 + 2, "one restart for each credential");

    // Each resource applies only its own annotation: neither removes the other's.
    reconcile_more(&env, &op, &["a", "b", "a", "b"], 2).await;
    let d = deployments(&env).get("shared").await.unwrap();
    assert_eq!(
        generation(&d),
        g0 + 2,
        "no fight: {:?}",
        d.spec.template.metadata
    );
    assert_eq!(
        annotation(&d, "restart.mxcred.io/a").as_deref(),
        Some(fa.as_str())
    );
    assert_eq!(
        annotation(&d, "restart.mxcred.io/b").as_deref(),
        Some(fb.as_str())
    );
    assert_eq!(patches(&op), 2, "see {:?}", op.log);

    // One of them rotates: one more restart, and the other's annotation stays.
    env.put_source("a-raw", &[("token", "two-token-a2")]).await;
    let fa2 = published(&env, "a", "two-token-a2").await;
    let d = wait_annotation(&env, "shared", "restart.mxcred.io/a", &fa2).await;
    assert_eq!(generation(&d), g0 + 3);
    assert_eq!(
        annotation(&d, "restart.mxcred.io/b").as_deref(),
        Some(fb.as_str())
    );
    reconcile_more(&env, &op, &["a", "b"], 2).await;
    assert_eq!(
        generation(&deployments(&env).get("shared").await.unwrap()),
        g0 + 3
    );
}
#[tokio::test]
async fn a_rejected_rotation_restarts_nothing() {
    let env = TestEnv::new("restart-rejected").await;
    common::grant_workload_restarts(&env.client, &env.ns, &["deployments"]).await;
    let sim = valid_tokens(&["rejected-token-1"]).await;
    sim.set("rejected-token-2", State::Deleted);
    let op = env.start_operator_with_platform(&sim.base_url(), &[]);
    let g0 = generation(&create_deployment(&env, "runner", "bot", "bot").await);
    env.put_source("bot-raw", &[("token", "rejected-token-1")])
        .await;
    env.put_credential(
        "bot",
        json!({"sourceRef": {"name": "bot-raw"},
               "target": {"rolloutRestart": [{"kind": "Deployment", "name": "runner"}]}}),
    )
    .await;
    let first = published(&env, "bot", "rejected-token-1").await;
    wait_annotation(&env, "runner", "restart.mxcred.io/bot", &first).await;
    env.wait_reason("bot", "TokenValid", "Verified").await;

    env.put_source("bot-raw", &[("token", "rejected-token-2")])
        .await;
    env.wait_reason("bot", "Ready", "RotationRejected").await;
    reconcile_more(&env, &op, &["bot"], 2).await;
    let d = deployments(&env).get("runner").await.unwrap();
    assert_eq!(
        generation(&d),
        g0 + 1,
        "no restart for a held-back credential"
    );
    assert_eq!(
        annotation(&d, "restart.mxcred.io/bot").as_deref(),
        Some(first.as_str())
    );
    assert_eq!(patches(&op), 1);
}
