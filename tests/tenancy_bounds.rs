//! What a tenant controls cannot move the operator beyond what the tenant could do itself: any
//! valid name syncs, an oversized annotation is refused without being held, one namespace
//! spends no more than its share of the platform's rate, and the operator stops in a bounded
//! time. Each test runs the tenant as a ServiceAccount with a Role of its own
//! in its namespace, on the real control plane.

mod common;

use common::{TestEnv, assert_no_canary, wait_until};
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
    let op = env.start_operator(&[]);
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
    assert_no_canary(&env, &[&op], "tok-long-name").await;
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

/// The operator's peak resident set (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

const SECRETS: usize = 150;
const RESOURCES: usize = 100;
const ANNOTATION: usize = 250_000;
/// How far above idle the peak may go.
const BOUND_KIB: u64 = 10 * 1024;

/// As a tenant of `env`'s namespace (it may create Secrets and MendixCredentials there): 150
/// Secrets labelled as sources (and as copies of a cluster credential) and 100 resources, each
/// with a 250 KB annotation; the resources' is `mxcred.io/verify-requested-at`.
async fn load(env: &TestEnv) {
    use futures::StreamExt;
    let rules = json!([
        {"apiGroups": ["mxcred.io"], "resources": ["mendixcredentials"],
         "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
    ]);
    let kubeconfig = env.namespaced_identity("loader", rules).await;
    let tenant = common::client_from(&kubeconfig).await;
    let padding = "a".repeat(ANNOTATION);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(tenant.clone(), &env.ns);
    wait_until(Duration::from_secs(10), "the loader's Role", || async {
        Api::<MendixCredential>::namespaced(tenant.clone(), &env.ns)
            .list(&Default::default())
            .await
            .is_ok()
    })
    .await;
    futures::stream::iter(0..SECRETS)
        .map(|i| {
            let secret = serde_json::from_value(json!({
                "metadata": {"name": format!("padded-{i}"),
                    "labels": {"mxcred.io/source": "true", "mxcred.io/cluster-credential": "x"},
                    "annotations": {"example.com/padding": padding}},
                "type": "Opaque", "stringData": {"token": format!("tok-padded-{i}")},
            }))
            .unwrap();
            let secrets = secrets.clone();
            async move { secrets.create(&Default::default(), &secret).await.unwrap() }
        })
        .buffer_unordered(8)
        .for_each(|_| async {})
        .await;
    futures::stream::iter(0..RESOURCES)
        .map(|i| {
            let tenant = tenant.clone();
            let padding = padding.clone();
            async move {
                apply_as(
                    &tenant,
                    &env.ns,
                    &format!("res-{i}"),
                    json!({"annotations": {"mxcred.io/verify-requested-at": padding}}),
                    json!({"sourceRef": {"name": format!("padded-{i}")},
                           "verification": {"enabled": false}}),
                )
                .await
            }
        })
        .buffer_unordered(8)
        .for_each(|_| async {})
        .await;
}

/// Waits until every loaded resource has been refused for its annotation.
async fn all_refused(env: &TestEnv) {
    let api = env.credentials();
    wait_until(
        Duration::from_secs(120),
        "every padded resource refused",
        || async {
            let Ok(list) = api.list(&Default::default()).await else {
                return false;
            };
            let refused = list
                .items
                .iter()
                .filter(|cr| {
                    cr.status.as_ref().is_some_and(|s| {
                        s.conditions.iter().any(|c| {
                            c.type_ == "Ready"
                                && c.reason == "InvalidSpec"
                                && c.message.contains("mxcred.io/verify-requested-at")
                        })
                    })
                })
                .count();
            refused == RESOURCES
        },
    )
    .await;
}

/// Applies MendixCredential `name` reading `raw` and waits until it is Ready.
async fn ready_credential(env: &TestEnv, name: &str) {
    env.put_credential(
        name,
        json!({"sourceRef": {"name": "raw"}, "verification": {"enabled": false}}),
    )
    .await;
    env.wait_reason(name, "Ready", "Synced").await;
}

/// Peaks of one mode: idle, running under the load, and after a restart with it.
async fn measure(env: &TestEnv, namespaced: bool) -> [u64; 3] {
    let extra: &[&str] = &[];
    let start = || {
        if namespaced {
            env.start_operator(extra)
        } else {
            common::Operator::start(env.cp, &env.cp.operator_kubeconfig, "", extra, &[])
        }
    };
    let mut op = start();
    env.put_source("raw", &[("token", "tok-mem")]).await;
    ready_credential(env, "before").await;
    let idle = peak_rss_kib(op.pid());
    load(env).await;
    all_refused(env).await;
    ready_credential(env, "after").await;
    let running = peak_rss_kib(op.pid());
    op.kill();
    let op = start();
    ready_credential(env, "restarted").await;
    let restarted = peak_rss_kib(op.pid());
    [idle, running, restarted]
}

#[tokio::test]
async fn what_a_tenant_writes_does_not_move_the_operators_memory() {
    let _turn = TURN.lock().await;
    let mut failures = vec![];
    for (mode, namespaced) in [("cluster", false), ("namespaced", true)] {
        let env = TestEnv::new(&format!("mem-{mode}")).await;
        let [idle, running, restarted] = measure(&env, namespaced).await;
        println!(
            "{mode} mode: peak RSS (VmHWM) {idle} KiB idle; {running} KiB running with \
             {SECRETS} labelled Secrets and {RESOURCES} resources of {ANNOTATION}-character \
             annotations; {restarted} KiB after a restart"
        );
        for (what, peak) in [("running", running), ("after a restart", restarted)] {
            if peak > idle + BOUND_KIB {
                failures.push(format!(
                    "{mode} mode {what}: {peak} KiB against {idle} KiB idle"
                ));
            }
        }
        let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(env.client.clone())
            .delete(&env.ns, &Default::default())
            .await;
    }
    assert!(failures.is_empty(), "{failures:?}");
}

#[tokio::test]
async fn rewriting_a_source_again_and_again_costs_one_check_per_cooldown() {
    use mendix_simulator::{Simulator, State};
    const REWRITES: usize = 20;
    let _turn = TURN.lock().await;
    let sim = Simulator::start().await;
    let env = TestEnv::new("rewrite").await;
    let rules = json!([
        {"apiGroups": ["mxcred.io"], "resources": ["mendixcredentials"],
         "verbs": ["get", "list", "watch", "create", "patch"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "patch"]},
    ]);
    let kubeconfig = env.namespaced_identity("rewriter", rules).await;
    let tenant = common::client_from(&kubeconfig).await;
    let op = env.start_operator_with_platform(&sim.base_url(), &["--forced-check-cooldown", "5s"]);
    let token = |i: usize| format!("tok-rewrite-{i}");
    for i in 0..=REWRITES {
        sim.set(&token(i), State::Valid);
    }
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(tenant.clone(), &env.ns);
    let write = |i: usize| {
        let secrets = secrets.clone();
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "raw", "labels": {"mxcred.io/source": "true"}},
            "stringData": {"token": token(i)}});
        async move {
            secrets
                .patch(
                    "raw",
                    &PatchParams::apply("tenant").force(),
                    &Patch::Apply(secret),
                )
                .await
                .unwrap();
        }
    };
    wait_until(Duration::from_secs(10), "the tenant's Role", || async {
        secrets.get_opt("raw").await.is_ok()
    })
    .await;
    write(0).await;
    apply_as(
        &tenant,
        &env.ns,
        "c",
        json!({}),
        json!({"sourceRef": {"name": "raw"}, "rotation": {"policy": "Immediate"}}),
    )
    .await;
    env.wait_reason("c", "TokenValid", "Verified").await;
    assert_eq!(sim.requests(&token(0)), 1);
    for i in 1..=REWRITES {
        write(i).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_until(
        Duration::from_secs(30),
        "the last token checked",
        || async { sim.requests(&token(REWRITES)) == 1 },
    )
    .await;
    env.wait_reason("c", "TokenValid", "Verified").await;
    let calls: usize = (1..=REWRITES).map(|i| sim.requests(&token(i))).sum();
    println!(
        "{REWRITES} rewrites of the source 300 ms apart, cooldown 5 s: {calls} platform calls"
    );
    // Two at once, then one at the end of the cooldown; the rewrites span two cooldowns.
    assert!(calls <= 6, "{calls} platform calls for {REWRITES} rewrites");
    assert_no_canary(&env, &[&op], "tok-rewrite-").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_namespace_spends_no_more_than_its_share_of_the_platform_rate() {
    use mendix_simulator::{Simulator, State};
    const FLOOD: usize = 40;
    let _turn = TURN.lock().await;
    let sim = Simulator::start().await;
    let env = TestEnv::new("share-a").await;
    let other = TestEnv::new("share-b").await;
    let rules = json!([
        {"apiGroups": ["mxcred.io"], "resources": ["mendixcredentials"],
         "verbs": ["get", "list", "watch", "create", "patch"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "patch"]},
    ]);
    let kubeconfig = env.namespaced_identity("flooder", rules).await;
    let tenant = common::client_from(&kubeconfig).await;
    let op = env.start_operator_with_platform(
        &sim.base_url(),
        &[
            "--namespace",
            &other.ns,
            "--platform-qps",
            "10",
            "--platform-namespace-qps",
            "2",
        ],
    );
    let token = |i: usize| format!("tok-share-{i}");
    for i in 0..FLOOD {
        sim.set(&token(i), State::Valid);
    }
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(tenant.clone(), &env.ns);
    wait_until(Duration::from_secs(10), "the tenant's Role", || async {
        secrets.get_opt("raw-0").await.is_ok()
    })
    .await;
    // The tenant's many credentials, each checked on its own.
    for i in 0..FLOOD {
        let name = format!("raw-{i}");
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "labels": {"mxcred.io/source": "true"}},
            "stringData": {"token": token(i)}});
        secrets
            .patch(&name, &PatchParams::apply("tenant"), &Patch::Apply(secret))
            .await
            .unwrap();
    }
    let started = std::time::Instant::now();
    for i in 0..FLOOD {
        apply_as(
            &tenant,
            &env.ns,
            &format!("c-{i}"),
            json!({}),
            json!({"sourceRef": {"name": format!("raw-{i}")}}),
        )
        .await;
    }
    // Another namespace's credential, while the tenant's wait.
    sim.set("tok-share-other", State::Valid);
    other
        .put_source("raw", &[("token", "tok-share-other")])
        .await;
    other
        .put_credential("c", json!({"sourceRef": {"name": "raw"}}))
        .await;
    other.wait_reason("c", "TokenValid", "Verified").await;
    let other_verdict = started.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let calls: usize = (0..FLOOD).map(|i| sim.requests(&token(i))).sum();
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{FLOOD} credentials in one namespace, --platform-qps 10, --platform-namespace-qps 2: \
         {calls} platform calls in {elapsed:.1} s; another namespace's first verdict after {:.1} s",
        other_verdict.as_secs_f64()
    );
    // Two a second, after the ten of the first instant (the namespace's burst).
    assert!(
        calls as f64 <= 2.0 * elapsed + 10.0,
        "{calls} calls in {elapsed:.1} s"
    );
    assert_eq!(sim.requests("tok-share-other"), 1);
    assert_no_canary(&env, &[&op], "tok-share-").await;
}
