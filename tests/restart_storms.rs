//! No restart storms, on the real control plane with the platform simulator: a source that
//! flips between two valid credentials 20 times in 30 seconds restarts each listed workload of a
//! MendixCredential and of a ClusterMendixCredential at most as often as
//! `--restart-min-interval` allows, and each ends on the latest credential, restarted at the
//! end of its interval (the reconcile comes back then: nothing else would wake it for an hour).
//! Then, the interval over, a change restarts at once and a change back right after it waits
//! for the interval's end.
//!
//! One cluster-mode operator serves both resources, which read the same source; it serves
//! every namespace, so the tests of this binary take turns.

mod common;

use common::{Operator, TestEnv, loopback_platform, value, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use mendix_simulator::{Simulator, State};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// One cluster-mode operator at a time.
static TURN: Mutex<()> = Mutex::const_new(());

/// The least time between two restarts of one workload, for these tests.
const INTERVAL: Duration = Duration::from_secs(20);
/// The source's changes: this many, one every [`PACE`].
const FLIPS: u32 = 20;
const PACE: Duration = Duration::from_millis(1500);
/// The copies of the cluster resource.
const TARGET: &str = "mendix-deploy";
const FINGERPRINT: &str = "mxcred.io/token-fingerprint";

/// The workloads of one resource: two Deployments in `ns`, consenting by `consent`, reading
/// `secret`.
struct Workloads {
    client: Client,
    ns: String,
    names: [&'static str; 2],
    key: String,
}

impl Workloads {
    async fn create(client: &Client, ns: &str, secret: &str, consent: &str, key: String) -> Self {
        let names = ["runner-1", "runner-2"];
        for name in names {
            let deployment: Deployment = serde_json::from_value(json!({
                "metadata": {"name": name, "annotations": {"mxcred.io/restart-on": consent}},
                "spec": {"selector": {"matchLabels": {"app": name}}, "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "runner", "image": "runner:1",
                        "envFrom": [{"secretRef": {"name": secret}}]}]},
                }},
            }))
            .unwrap();
            Api::<Deployment>::namespaced(client.clone(), ns)
                .create(&PostParams::default(), &deployment)
                .await
                .unwrap();
        }
        Workloads {
            client: client.clone(),
            ns: ns.to_owned(),
            names,
            key,
        }
    }

    /// Each Deployment's generation (it goes up by one with each change of its pod template,
    /// and so with each restart) and the fingerprint under the resource's annotation.
    async fn observed(&self) -> Vec<(i64, Option<String>)> {
        let observed = self.observed_with_times().await;
        observed.into_iter().map(|(g, held, _)| (g, held)).collect()
    }

    /// As [`Self::observed`], with the time of each one's last restart: the API server's time
    /// (to the second) of the latest change by a restart field manager.
    async fn observed_with_times(&self) -> Vec<(i64, Option<String>, Option<jiff::Timestamp>)> {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &self.ns);
        let mut observed = vec![];
        for name in self.names {
            let d = api.get(name).await.unwrap();
            let held = d
                .spec
                .template
                .metadata
                .and_then(|m| m.annotations)
                .and_then(|a| a.get(&self.key).cloned());
            let restarted = d
                .metadata
                .managed_fields
                .iter()
                .flatten()
                .filter(|m| m.manager.as_deref().is_some_and(|m| m.contains("restart/")))
                .filter_map(|m| m.time.as_ref().map(|t| t.0))
                .max();
            observed.push((d.metadata.generation.unwrap(), held, restarted));
        }
        observed
    }

    /// Waits until every Deployment holds `fingerprint`; returns their generations.
    async fn wait_all(&self, fingerprint: &str, timeout: Duration) -> Vec<i64> {
        let last = std::sync::Mutex::new(vec![]);
        wait_for(timeout, || async {
            let observed = self.observed().await;
            *last.lock().unwrap() = observed.clone();
            observed
                .iter()
                .all(|(_, held)| held.as_deref() == Some(fingerprint))
                .then(|| observed.iter().map(|(g, _)| *g).collect())
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "the Deployments of {} never all held {fingerprint}: {:?}",
                self.key,
                last.lock().unwrap()
            )
        })
    }
}

impl Workloads {
    /// Waits until every Deployment holds `fingerprint`; returns each one's generation and
    /// the time of its last restart.
    async fn at(&self, fingerprint: &str, timeout: Duration) -> Vec<(i64, jiff::Timestamp)> {
        self.wait_all(fingerprint, timeout).await;
        self.observed_with_times()
            .await
            .into_iter()
            .map(|(g, _, restarted)| (g, restarted.expect("restarted")))
            .collect()
    }
}

/// The fingerprint Secret `name` in `ns` holds once it holds `token`.
async fn published(client: &Client, ns: &str, name: &str, token: &str) -> String {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = wait_for(Duration::from_secs(30), || async {
        let secret = api.get_opt(name).await.ok()??;
        (value(&secret, "MENDIX_TOKEN").as_deref() == Some(token)).then_some(secret)
    })
    .await
    .unwrap_or_else(|| panic!("Secret {ns}/{name} never held the token"));
    secret.metadata.annotations.unwrap()[FINGERPRINT].clone()
}

/// The most restarts a workload can have had after its first, when the source changed for
/// `span` after that first: one per interval, less the second the API server's timestamps
/// round away, and one for a change after the last of those.
fn bound(span: Duration) -> i64 {
    let step = INTERVAL - Duration::from_secs(1);
    1 + i64::try_from(span.as_millis() / step.as_millis()).unwrap()
}

fn patches(op: &Operator) -> usize {
    op.logs().matches("restarted a workload").count()
}

/// Flips the source between two valid tokens, starting from a third; checks the restarts of
/// both resources' workloads.
async fn flips_restart_each_workload_once_per_interval(policy: &str) {
    let _turn = TURN.lock().await;
    let env = TestEnv::new(&format!("storm-{}", policy.to_lowercase())).await;
    let client = env.client.clone();
    let sim = Simulator::start().await;
    let tokens = ["storm-token-a", "storm-token-b"];
    for token in ["storm-token-0", tokens[0], tokens[1]] {
        sim.set(token, State::Valid);
    }
    let mut args = loopback_platform(&sim.base_url());
    args.extend(["--restart-min-interval".to_owned(), format!("{INTERVAL:?}")]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let op = Operator::start(env.cp, &env.cp.operator_kubeconfig, "", &args, &[]);

    // The MendixCredential's workloads in the source's namespace; the cluster resource's in a
    // namespace it selects.
    let copies = format!("{}-copies", env.ns);
    let label = format!("storm.example.com/{}", env.ns);
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": copies, "labels": {&label: "x"}}}))
                .unwrap(),
        )
        .await
        .unwrap();
    for ns in [&env.ns, &copies] {
        common::grant_workload_restarts(&client, ns, &["deployments"]).await;
    }
    let cluster = env.ns.clone();
    let namespaced = Workloads::create(
        &client,
        &env.ns,
        "bot",
        "bot",
        "restart.mxcred.io/bot".into(),
    )
    .await;
    let clustered = Workloads::create(
        &client,
        &copies,
        TARGET,
        &format!("cluster/{cluster}"),
        format!("cluster.restart.mxcred.io/{cluster}"),
    )
    .await;

    env.put_source("raw", &[("token", "storm-token-0")]).await;
    let restart = json!([{"kind": "Deployment", "name": "runner-1"},
                         {"kind": "Deployment", "name": "runner-2"}]);
    env.put_credential(
        "bot",
        json!({"sourceRef": {"name": "raw"}, "rotation": {"policy": policy},
               "target": {"rolloutRestart": restart}}),
    )
    .await;
    let cr = json!({"apiVersion": "mxcred.io/v1alpha1", "kind": "ClusterMendixCredential",
        "metadata": {"name": cluster},
        "spec": {"sourceRef": {"namespace": env.ns, "name": "raw"},
                 "rotation": {"policy": policy},
                 "target": {"name": TARGET, "namespaceSelector": {"matchLabels": {&label: "x"}},
                            "rolloutRestart": restart}}});
    let clusters: Api<mxcred_operator::domain::cluster::ClusterMendixCredential> =
        Api::all(client.clone());
    clusters
        .patch(
            &cluster,
            &PatchParams::apply("mxcred-tests").force(),
            &Patch::Apply(cr),
        )
        .await
        .unwrap();
    let first = published(&client, &env.ns, "bot", "storm-token-0").await;
    let first_copy = published(&client, &copies, TARGET, "storm-token-0").await;
    assert_eq!(first, first_copy, "one source, one fingerprint");
    let timeout = Duration::from_secs(30);
    let g1 = [
        namespaced.wait_all(&first, timeout).await,
        clustered.wait_all(&first, timeout).await,
    ];
    let restarted = Instant::now();

    // The storm: 20 changes in 30 seconds, ending on token b.
    let start = tokio::time::Instant::now();
    for flip in 0..FLIPS {
        tokio::time::sleep_until(start + PACE * flip).await;
        let token = tokens[usize::from(flip % 2 == 1)];
        env.put_source("raw", &[("token", token)]).await;
    }
    let last_flip = Instant::now();
    let latest = tokens[usize::from((FLIPS - 1) % 2 == 1)];
    let fingerprint = published(&client, &env.ns, "bot", latest).await;
    assert_eq!(
        published(&client, &copies, TARGET, latest).await,
        fingerprint
    );
    assert_ne!(fingerprint, first);

    // Each workload ends on the latest credential, restarted at the end of its interval at the
    // latest: only the reconcile coming back then restarts it (the next resync is in an hour).
    let settle = INTERVAL + Duration::from_secs(10);
    let g2 = [
        namespaced.wait_all(&fingerprint, settle).await,
        clustered.wait_all(&fingerprint, settle).await,
    ];
    let settled = last_flip.elapsed();
    let span = last_flip - restarted;
    let most = bound(span + Duration::from_secs(2));
    for (kind, (before, after)) in ["MendixCredential", "ClusterMendixCredential"]
        .iter()
        .zip(g1.iter().zip(&g2))
    {
        for (name, (b, a)) in namespaced.names.iter().zip(before.iter().zip(after)) {
            let restarts = a - b;
            println!("{policy} {kind} {name}: {restarts} restarts in {span:?} (at most {most})");
            assert!(
                (1..=most).contains(&restarts),
                "{policy} {kind} {name}: {restarts} restarts for {FLIPS} changes in {span:?}, \
                 with {INTERVAL:?} between two: at most {most}; see {:?}",
                op.log
            );
        }
    }
    println!("{policy}: last change to the last restart {settled:?}");

    // Nothing more: the workloads hold the latest credential.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let total = patches(&op);
    assert_eq!(
        [
            namespaced.wait_all(&fingerprint, timeout).await,
            clustered.wait_all(&fingerprint, timeout).await
        ],
        g2
    );
    assert_eq!(patches(&op), total);

    // Once the interval is over, a change restarts at once; another right after it waits for
    // the interval's end, when the reconcile comes back for it (no other event wakes it).
    tokio::time::sleep(INTERVAL).await;
    let back = tokens[usize::from(latest == tokens[0])];
    env.put_source("raw", &[("token", back)]).await;
    let other = published(&client, &env.ns, "bot", back).await;
    let restarted = [
        namespaced.at(&other, timeout).await,
        clustered.at(&other, timeout).await,
    ];
    env.put_source("raw", &[("token", latest)]).await;
    published(&client, &env.ns, "bot", latest).await;
    let deferred = [
        namespaced.at(&fingerprint, settle).await,
        clustered.at(&fingerprint, settle).await,
    ];
    for (before, after) in restarted.iter().flatten().zip(deferred.iter().flatten()) {
        assert_eq!(after.0, before.0 + 1, "one restart for the change back");
        let waited = after.1.duration_since(before.1);
        assert!(
            waited >= jiff::SignedDuration::try_from(INTERVAL - Duration::from_secs(1)).unwrap(),
            "{policy}: restarted {waited:?} after the previous restart"
        );
    }
    let _ = clusters.delete(&cluster, &DeleteParams::default()).await;
    for ns in [&copies, &env.ns] {
        let _ = Api::<Namespace>::all(client.clone())
            .delete(ns, &DeleteParams::default())
            .await;
    }
}

#[tokio::test]
async fn a_storm_of_immediate_rotations_restarts_each_workload_once_per_interval() {
    flips_restart_each_workload_once_per_interval("Immediate").await;
}

#[tokio::test]
async fn a_storm_of_verified_rotations_restarts_each_workload_once_per_interval() {
    flips_restart_each_workload_once_per_interval("VerifyFirst").await;
}

#[test]
fn the_bound_allows_one_restart_per_interval_and_one_more() {
    assert_eq!(bound(Duration::from_secs(10)), 1);
    assert_eq!(
        bound(Duration::from_secs(31)),
        2,
        "twice for 20 changes in 30 seconds"
    );
    assert_eq!(bound(Duration::from_secs(40)), 3);
}
