//! ClusterMendixCredentials on the real control plane, with the platform simulator: selection by
//! label and by list, namespaces joining and leaving, a foreign Secret left alone and reported,
//! source rotation, garbage collection of every copy, and one platform call for 200 namespaces;
//! the workloads of `spec.target.rolloutRestart` restarted once per rotation in every namespace
//! that runs them.
//!
//! The operator runs in cluster mode (no `--namespace`), so two of them would both serve every
//! ClusterMendixCredential: the tests of this binary take turns. Each test's namespaces have
//! unique names and are deleted at its end.

mod common;

use common::{Operator, TestEnv, loopback_platform, value, wait_for};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::rbac::v1::{ClusterRole, RoleBinding};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use mendix_simulator::{Simulator, State};
use mxcred_operator::domain::api::RolloutRestartProblem;
use mxcred_operator::domain::cluster::ClusterMendixCredential;
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// One cluster-mode operator at a time.
static TURN: Mutex<()> = Mutex::const_new(());

const TARGET: &str = "mendix-deploy";
const FINGERPRINT: &str = "mxcred.io/token-fingerprint";

/// A test's world: a namespace for the source, the simulator, and a cluster-mode operator.
struct World {
    env: TestEnv,
    sim: Simulator,
    op: Operator,
    args: Vec<String>,
    namespaces: Vec<String>,
}

impl World {
    async fn new(name: &str, extra: &[&str]) -> World {
        let env = TestEnv::new(name).await;
        let sim = Simulator::start().await;
        let mut args = loopback_platform(&sim.base_url());
        args.extend(extra.iter().map(|a| a.to_string()));
        let op = start_operator(&env, &args);
        World {
            env,
            sim,
            op,
            args,
            namespaces: vec![],
        }
    }

    /// SIGKILLs the operator and starts another one, with the same arguments.
    fn restart_operator(&mut self) {
        self.op.kill();
        self.op = start_operator(&self.env, &self.args);
    }

    fn client(&self) -> Client {
        self.env.client.clone()
    }

    fn clusters(&self) -> Api<ClusterMendixCredential> {
        Api::all(self.client())
    }

    /// Creates namespace `<source ns>-<suffix>` with `labels`; returns its name.
    async fn namespace(&mut self, suffix: &str, labels: serde_json::Value) -> String {
        let name = format!("{}-{suffix}", self.env.ns);
        create_namespace(&self.client(), &name, labels).await;
        self.namespaces.push(name.clone());
        name
    }

    async fn label(&self, ns: &str, labels: serde_json::Value) {
        Api::<Namespace>::all(self.client())
            .patch(
                ns,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": labels}})),
            )
            .await
            .unwrap();
    }

    /// A source Secret in the test's namespace holding `token`.
    async fn source(&self, name: &str, token: &str) {
        self.sim.set(token, State::Valid);
        self.env.put_source(name, &[("token", token)]).await;
    }

    async fn put(&self, name: &str, spec: serde_json::Value) {
        let cr = json!({"apiVersion": "mxcred.io/v1alpha1", "kind": "ClusterMendixCredential",
                        "metadata": {"name": name}, "spec": spec});
        self.clusters()
            .patch(
                name,
                &PatchParams::apply("mxcred-tests").force(),
                &Patch::Apply(cr),
            )
            .await
            .unwrap();
    }

    /// A resource `name` publishing the source `raw` as [`TARGET`] into every namespace
    /// labelled `key: "true"`.
    async fn put_selecting(&self, name: &str, key: &str) {
        let spec = json!({
            "sourceRef": {"namespace": self.env.ns, "name": "raw"},
            "target": {"name": TARGET, "namespaceSelector": {"matchLabels": {key: "true"}}},
        });
        self.put(name, spec).await;
    }

    /// Waits until the resource's status satisfies `check`; returns it.
    async fn wait_status(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        check: impl Fn(&ClusterMendixCredential) -> bool,
    ) -> ClusterMendixCredential {
        let api = self.clusters();
        let last = std::sync::Mutex::new(None);
        wait_for(timeout, || async {
            let cr = api.get(name).await.ok()?;
            *last.lock().unwrap() = Some(cr.status.clone());
            check(&cr).then_some(cr)
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "{name} never became {what}; last status {:?}\n{}",
                last.lock().unwrap(),
                tail(&self.op.logs())
            )
        })
    }

    async fn copy(&self, ns: &str) -> Option<Secret> {
        Api::<Secret>::namespaced(self.client(), ns)
            .get_opt(TARGET)
            .await
            .unwrap()
    }

    /// Deletes the resource and the test's namespaces.
    async fn clean_up(self, resources: &[&str]) {
        for name in resources {
            let _ = self.clusters().delete(name, &DeleteParams::default()).await;
        }
        for ns in self.namespaces.iter().chain([&self.env.ns]) {
            let _ = Api::<Namespace>::all(self.client())
                .delete(ns, &DeleteParams::default())
                .await;
        }
    }
}

fn start_operator(env: &TestEnv, args: &[String]) -> Operator {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Operator::start(env.cp, &env.cp.operator_kubeconfig, "", &args, &[])
}

async fn create_namespace(client: &Client, name: &str, labels: serde_json::Value) {
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap(),
        )
        .await
        .unwrap();
}

fn tail(logs: &str) -> String {
    let lines: Vec<&str> = logs.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn ready(cr: &ClusterMendixCredential) -> Option<(String, String)> {
    let c = cr
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some((c.status.clone(), c.reason.clone()))
}

fn is_synced(cr: &ClusterMendixCredential, namespaces: &str) -> bool {
    ready(cr).is_some_and(|(s, r)| s == "True" && r == "Synced")
        && cr.status.as_ref().and_then(|s| s.namespaces.as_deref()) == Some(namespaces)
        && cr.status.as_ref().and_then(|s| s.observed_generation) == cr.metadata.generation
}

fn token_valid(cr: &ClusterMendixCredential) -> Option<String> {
    cr.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "TokenValid")
        .map(|c| c.reason.clone())
}

/// Waits, by a watch, until Secret `TARGET` in `ns` satisfies `check`.
async fn copy_becomes(
    client: &Client,
    ns: &str,
    check: impl Fn(Option<&Secret>) -> bool,
) -> Result<(), tokio::time::error::Elapsed> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(api, TARGET, move |s: Option<&Secret>| check(s)),
    )
    .await
    .map(|r| {
        r.unwrap();
    })
}

/// Events recorded for a ClusterMendixCredential, as "Type Reason: note": in namespace
/// `default`, where client-go and kube put the Events of cluster-scoped objects.
async fn events_of(client: &Client, name: &str) -> Vec<String> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), "default");
    let all = api.list(&Default::default()).await.unwrap().items;
    all.into_iter()
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("ClusterMendixCredential")
                    && r.name.as_deref() == Some(name)
            })
        })
        .map(common::describe_event)
        .collect()
}

#[tokio::test]
async fn selects_by_label_and_by_list_and_publishes_the_same_secret() {
    let _turn = TURN.lock().await;
    let mut w = World::new("cl-select", &[]).await;
    let key = format!("ci.example.com/{}", w.env.ns);
    let labelled = w.namespace("a", json!({&key: "true"})).await;
    let listed = w.namespace("b", json!({})).await;
    let other = w.namespace("c", json!({&key: "false"})).await;
    w.source("raw", "tok-select").await;
    let name = w.env.ns.clone();
    w.put(
        &name,
        json!({
            "sourceRef": {"namespace": w.env.ns, "name": "raw"},
            "target": {"name": TARGET, "namespaceSelector": {"matchLabels": {&key: "true"}},
                       "namespaces": [listed], "labels": {"team": "ci"}},
        }),
    )
    .await;
    let cr = w
        .wait_status(&name, "synced in 2/2", Duration::from_secs(30), |cr| {
            is_synced(cr, "2/2") && token_valid(cr).as_deref() == Some("Verified")
        })
        .await;
    let status = cr.status.clone().unwrap();
    assert_eq!((status.selected, status.synced), (Some(2), Some(2)));
    assert_eq!(status.secret_name.as_deref(), Some(TARGET));
    assert!(status.failed_namespaces.is_empty());
    for ns in [&labelled, &listed] {
        let copy = w
            .copy(ns)
            .await
            .unwrap_or_else(|| panic!("no copy in {ns}"));
        assert_eq!(value(&copy, "MENDIX_TOKEN").as_deref(), Some("tok-select"));
        assert_eq!(
            value(&copy, "Authorization").as_deref(),
            Some("MxToken tok-select")
        );
        assert_eq!(
            value(&copy, "headers").as_deref(),
            Some("Authorization: MxToken tok-select\n")
        );
        let labels = copy.labels();
        assert_eq!(
            labels.get("mxcred.io/cluster-credential"),
            Some(&name),
            "{labels:?}"
        );
        assert_eq!(
            labels
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str),
            Some("mxcred-operator")
        );
        assert_eq!(labels.get("team").map(String::as_str), Some("ci"));
        assert!(!labels.contains_key("mxcred.io/credential"));
        assert_eq!(
            copy.annotations().get(FINGERPRINT),
            status.token_fingerprint.as_ref()
        );
        let owner = &copy.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("ClusterMendixCredential", cr.uid().unwrap().as_str())
        );
    }
    assert!(w.copy(&other).await.is_none(), "not selected");
    assert_eq!(w.sim.requests("tok-select"), 1);
    // Sources are watched in the namespace the resource names, not in the selected ones (whose
    // users may label their own Secrets as sources).
    let watching = |ns: &str| {
        w.op.logs().lines().any(|l| {
            l.contains("watching sources of cluster credentials")
                && l.contains(&format!("\"namespace\":\"{ns}\""))
        })
    };
    assert!(watching(&w.env.ns), "{}", tail(&w.op.logs()));
    for ns in [&labelled, &listed, &other] {
        assert!(!watching(ns), "sources watched in {ns}");
    }
    let events = wait_for(Duration::from_secs(15), || async {
        let events = events_of(&w.client(), &name).await;
        (events.iter().any(|e| e.starts_with("Normal Synced"))
            && events.iter().any(|e| e.starts_with("Normal Verified")))
        .then_some(events)
    })
    .await
    .expect("Synced and Verified Events in namespace default");
    assert!(
        !events.iter().any(|e| e.contains("tok-select")),
        "{events:?}"
    );
    // A forced check, as for a MendixCredential.
    w.clusters()
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"mxcred.io/verify-requested-at": "now"}}}),
            ),
        )
        .await
        .unwrap();
    wait_for(Duration::from_secs(30), || async {
        (w.sim.requests("tok-select") == 2).then_some(())
    })
    .await
    .expect("the forced check is sent");
    // The empty selector selects nothing.
    w.put(
        &name,
        json!({
            "sourceRef": {"namespace": w.env.ns, "name": "raw"},
            "target": {"name": TARGET, "namespaceSelector": {}},
        }),
    )
    .await;
    w.wait_status(&name, "synced in 0/0", Duration::from_secs(30), |cr| {
        is_synced(cr, "0/0")
    })
    .await;
    for ns in [&labelled, &listed] {
        copy_becomes(&w.client(), ns, |s| s.is_none())
            .await
            .unwrap_or_else(|_| panic!("the copy in {ns} stays"));
    }
    assert!(!w.op.logs().contains("tok-select"));
    w.clean_up(&[&name]).await;
}

#[tokio::test]
async fn namespaces_join_and_leave_the_selection() {
    let _turn = TURN.lock().await;
    let mut w = World::new("cl-join", &[]).await;
    let key = format!("ci.example.com/{}", w.env.ns);
    let first = w.namespace("first", json!({&key: "true"})).await;
    let later = w.namespace("later", json!({})).await;
    let listed = w.namespace("listed", json!({})).await;
    w.source("raw", "tok-join").await;
    let name = w.env.ns.clone();
    let spec = |list: Vec<&str>| {
        json!({
            "sourceRef": {"namespace": w.env.ns, "name": "raw"},
            "target": {"name": TARGET, "namespaceSelector": {"matchLabels": {&key: "true"}},
                       "namespaces": list},
        })
    };
    w.put(&name, spec(vec![&listed])).await;
    w.wait_status(&name, "synced in 2/2", Duration::from_secs(30), |cr| {
        is_synced(cr, "2/2")
    })
    .await;

    // Labelled later: its copy comes within seconds.
    let client = w.client();
    let later_ns = later.clone();
    let arrival =
        tokio::spawn(async move { copy_becomes(&client, &later_ns, |s| s.is_some()).await });
    let labelled_at = Instant::now();
    w.label(&later, json!({&key: "true"})).await;
    arrival.await.unwrap().expect("the copy arrives");
    let took = labelled_at.elapsed();
    eprintln!("MEASURED label a namespace -> its Secret: {took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    w.wait_status(&name, "synced in 3/3", Duration::from_secs(30), |cr| {
        is_synced(cr, "3/3")
    })
    .await;

    // A copy deleted by hand comes back.
    Api::<Secret>::namespaced(w.client(), &later)
        .delete(TARGET, &DeleteParams::default())
        .await
        .unwrap();
    copy_becomes(&w.client(), &later, |s| s.is_some())
        .await
        .expect("a deleted copy is restored");

    // Unlabelled: the copy goes. Removed from the list: the copy goes.
    w.label(&first, json!({&key: null})).await;
    copy_becomes(&w.client(), &first, |s| s.is_none())
        .await
        .expect("the copy of an unlabelled namespace is deleted");
    w.put(&name, spec(vec![])).await;
    copy_becomes(&w.client(), &listed, |s| s.is_none())
        .await
        .expect("the copy of a namespace removed from the list is deleted");
    w.wait_status(&name, "synced in 1/1", Duration::from_secs(30), |cr| {
        is_synced(cr, "1/1")
    })
    .await;
    assert!(w.copy(&later).await.is_some());

    // A namespace being deleted loses the copy and is reported.
    let doomed = w.namespace("doomed", json!({&key: "true"})).await;
    copy_becomes(&w.client(), &doomed, |s| s.is_some())
        .await
        .expect("the copy arrives");
    // A finalizer of our own keeps the namespace terminating long enough to be seen.
    Api::<Secret>::namespaced(w.client(), &doomed)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "held",
                "finalizers": ["example.com/hold"]}}))
            .unwrap(),
        )
        .await
        .unwrap();
    Api::<Namespace>::all(w.client())
        .delete(&doomed, &DeleteParams::default())
        .await
        .unwrap();
    let cr = w
        .wait_status(
            &name,
            "reporting the terminating namespace",
            Duration::from_secs(30),
            |cr| {
                cr.status.as_ref().is_some_and(|s| {
                    s.failed_namespaces
                        .iter()
                        .any(|f| f.namespace == doomed && f.reason == "NamespaceTerminating")
                })
            },
        )
        .await;
    assert!(is_synced(&cr, "1/1"), "{:?}", cr.status);
    Api::<Secret>::namespaced(w.client(), &doomed)
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    w.clean_up(&[&name]).await;
}

#[tokio::test]
async fn a_foreign_secret_is_untouched_and_reported_while_the_others_sync() {
    let _turn = TURN.lock().await;
    let mut w = World::new("cl-foreign", &[]).await;
    let key = format!("ci.example.com/{}", w.env.ns);
    let good = w.namespace("good", json!({&key: "true"})).await;
    let taken = w.namespace("taken", json!({&key: "true"})).await;
    let foreign = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": TARGET}, "stringData": {"MENDIX_TOKEN": "theirs"}});
    Api::<Secret>::namespaced(w.client(), &taken)
        .create(
            &PostParams::default(),
            &serde_json::from_value(foreign).unwrap(),
        )
        .await
        .unwrap();
    let before = w.copy(&taken).await.unwrap();
    w.source("raw", "tok-foreign").await;
    let name = w.env.ns.clone();
    w.put_selecting(&name, &key).await;
    let cr = w
        .wait_status(
            &name,
            "1/2 with a conflict",
            Duration::from_secs(30),
            |cr| cr.status.as_ref().and_then(|s| s.namespaces.as_deref()) == Some("1/2"),
        )
        .await;
    let status = cr.status.clone().unwrap();
    assert_eq!(
        ready(&cr),
        Some(("False".into(), "NamespacesFailed".into()))
    );
    assert_eq!(status.failed_namespaces.len(), 1);
    assert_eq!(status.failed_namespaces[0].namespace, taken);
    assert_eq!(status.failed_namespaces[0].reason, "TargetConflict");
    assert_eq!(status.failed_namespace_count, Some(1));
    let copy = w.copy(&good).await.expect("the other namespace proceeds");
    assert_eq!(value(&copy, "MENDIX_TOKEN").as_deref(), Some("tok-foreign"));
    let after = w.copy(&taken).await.unwrap();
    assert_eq!(
        after.metadata.resource_version,
        before.metadata.resource_version
    );
    assert_eq!(value(&after, "MENDIX_TOKEN").as_deref(), Some("theirs"));
    let events = wait_for(Duration::from_secs(15), || async {
        let events = events_of(&w.client(), &name).await;
        events
            .iter()
            .any(|e| e.starts_with("Warning TargetConflict") && e.contains(&taken))
            .then_some(events)
    })
    .await;
    assert!(events.is_some(), "a Warning TargetConflict naming {taken}");

    // Once the foreign Secret is gone, the namespace gets its copy.
    Api::<Secret>::namespaced(w.client(), &taken)
        .delete(TARGET, &DeleteParams::default())
        .await
        .unwrap();
    w.wait_status(&name, "synced in 2/2", Duration::from_secs(60), |cr| {
        is_synced(cr, "2/2")
    })
    .await;
    w.clean_up(&[&name]).await;
}

#[tokio::test]
async fn deleting_the_resource_collects_every_copy() {
    let _turn = TURN.lock().await;
    let mut w = World::new("cl-gc", &[]).await;
    let key = format!("ci.example.com/{}", w.env.ns);
    let mut namespaces = vec![];
    for i in 0..3 {
        namespaces.push(w.namespace(&format!("n{i}"), json!({&key: "true"})).await);
    }
    w.source("raw", "tok-gc").await;
    let name = w.env.ns.clone();
    w.put_selecting(&name, &key).await;
    w.wait_status(&name, "synced in 3/3", Duration::from_secs(30), |cr| {
        is_synced(cr, "3/3")
    })
    .await;
    w.clusters()
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    for ns in &namespaces {
        copy_becomes(&w.client(), ns, |s| s.is_none())
            .await
            .unwrap_or_else(|_| panic!("the copy in {ns} was not collected"));
    }
    // A cluster-mode operator stops on SIGTERM as quickly as a namespaced one.
    let took = w.op.terminate();
    eprintln!("MEASURED cluster mode: SIGTERM -> exit {took:?}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    w.clean_up(&[]).await;
}

#[tokio::test]
async fn two_hundred_namespaces_cost_one_platform_call_and_rotation_reaches_every_copy() {
    const N: usize = 200;
    let _turn = TURN.lock().await;
    let mut w = World::new("cl-many", &[]).await;
    let key = format!("ci.example.com/{}", w.env.ns);
    let mut namespaces = vec![];
    for i in 0..N {
        namespaces.push(w.namespace(&format!("{i:03}"), json!({&key: "true"})).await);
    }
    w.source("raw", "tok-many").await;
    // A MendixCredential with the same token and probe shares the check.
    w.env
        .put_credential("namespaced", json!({"sourceRef": {"name": "raw"}}))
        .await;
    let name = w.env.ns.clone();
    let started = Instant::now();
    w.put_selecting(&name, &key).await;
    let all = format!("{N}/{N}");
    let cr = w
        .wait_status(
            &name,
            &format!("synced in {all}"),
            Duration::from_secs(120),
            |cr| is_synced(cr, &all) && token_valid(cr).as_deref() == Some("Verified"),
        )
        .await;
    eprintln!(
        "MEASURED {N} namespaces: first sync of every copy {:?}",
        started.elapsed()
    );
    w.env
        .wait_reason("namespaced", "TokenValid", "Verified")
        .await;
    assert_eq!(
        w.sim.requests("tok-many"),
        1,
        "one platform call for {N} namespaces and a MendixCredential on the same token"
    );
    let first = cr.status.unwrap().token_fingerprint.unwrap();

    // Rotation: every copy gets the new token; the new token costs one call.
    let (tx, done) = tokio::sync::oneshot::channel();
    let watched = Api::<Secret>::all(w.client());
    let selector = format!("mxcred.io/cluster-credential={name}");
    let old = first.clone();
    let watch = tokio::spawn(async move {
        let mut fingerprints: HashMap<String, String> = HashMap::new();
        let mut tx = Some(tx);
        let mut stream = watcher(watched, watcher::Config::default().labels(&selector))
            .applied_objects()
            .boxed();
        let mut rotated_at: Option<Instant> = None;
        while let Some(secret) = stream.try_next().await.unwrap() {
            let ns = secret.namespace().unwrap_or_default();
            let fp = secret
                .annotations()
                .get(FINGERPRINT)
                .cloned()
                .unwrap_or_default();
            fingerprints.insert(ns, fp);
            if rotated_at.is_none() {
                rotated_at = Some(Instant::now());
            }
            let (count, new) = (
                fingerprints.len(),
                fingerprints.values().filter(|f| **f != old).count(),
            );
            if count == N && new == N {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(Instant::now());
                }
                return;
            }
        }
    });
    w.sim.set("tok-many-2", State::Valid);
    let rotated = Instant::now();
    w.env.put_source("raw", &[("token", "tok-many-2")]).await;
    let last_copy = tokio::time::timeout(Duration::from_secs(120), done)
        .await
        .expect("every copy gets the rotated token")
        .unwrap();
    watch.abort();
    eprintln!(
        "MEASURED {N} namespaces: source rotation -> last copy {:?}",
        last_copy.duration_since(rotated)
    );
    for ns in [&namespaces[0], &namespaces[N - 1]] {
        let copy = w.copy(ns).await.unwrap();
        assert_eq!(value(&copy, "MENDIX_TOKEN").as_deref(), Some("tok-many-2"));
    }
    w.wait_status(&name, "verified again", Duration::from_secs(60), |cr| {
        is_synced(cr, &all)
            && token_valid(cr).as_deref() == Some("Verified")
            && cr
                .status
                .as_ref()
                .and_then(|s| s.token_fingerprint.as_deref())
                != Some(&first)
    })
    .await;
    w.env
        .wait_reason("namespaced", "TokenValid", "Verified")
        .await;
    assert_eq!(
        w.sim.requests("tok-many-2"),
        1,
        "one call for the new token"
    );
    assert_eq!(w.sim.requests("tok-many"), 1, "none more for the old one");

    // A resync with nothing changed writes nothing: label one namespace (every resource is
    // reconciled) and count the copies' versions.
    let versions = |secrets: Vec<Secret>| {
        secrets
            .into_iter()
            .map(|s| (s.namespace().unwrap(), s.resource_version().unwrap()))
            .collect::<HashMap<_, _>>()
    };
    let list =
        kube::api::ListParams::default().labels(&format!("mxcred.io/cluster-credential={name}"));
    let before = versions(
        Api::<Secret>::all(w.client())
            .list(&list)
            .await
            .unwrap()
            .items,
    );
    w.label(&namespaces[0], json!({"touched": "yes"})).await;
    let logs_before = w.op.logs().matches("\"reconciled\"").count();
    wait_for(Duration::from_secs(15), || async {
        (w.op.logs().matches("\"reconciled\"").count() > logs_before).then_some(())
    })
    .await
    .expect("a reconcile after the namespace event");
    let after = versions(
        Api::<Secret>::all(w.client())
            .list(&list)
            .await
            .unwrap()
            .items,
    );
    assert_eq!(before, after, "no copy was written on a resync");
    assert!(!w.op.logs().contains("tok-many"));
    w.clean_up(&[&name]).await;
}

#[tokio::test]
async fn a_namespace_scoped_operator_does_not_serve_the_kind() {
    let _turn = TURN.lock().await;
    let env = TestEnv::new("cl-scoped").await;
    let op = env.start_operator(&[]);
    env.put_source("raw", &[("token", "tok-scoped")]).await;
    let name = env.ns.clone();
    let cr = json!({"apiVersion": "mxcred.io/v1alpha1", "kind": "ClusterMendixCredential",
        "metadata": {"name": name},
        "spec": {"sourceRef": {"namespace": env.ns, "name": "raw"},
                 "target": {"name": TARGET, "namespaces": [env.ns]}}});
    let api: Api<ClusterMendixCredential> = Api::all(env.client.clone());
    api.patch(
        &name,
        &PatchParams::apply("mxcred-tests"),
        &Patch::Apply(cr),
    )
    .await
    .unwrap();
    wait_for(Duration::from_secs(20), || async {
        op.logs()
            .contains("ClusterMendixCredentials are not served")
            .then_some(())
    })
    .await
    .expect("the operator says it does not serve the kind");
    env.put_credential("c", json!({"sourceRef": {"name": "raw"}}))
        .await;
    env.wait_reason("c", "Ready", "Synced").await;
    assert!(api.get(&name).await.unwrap().status.is_none());
    assert!(env.secrets().get_opt(TARGET).await.unwrap().is_none());
    let _ = api.delete(&name, &DeleteParams::default()).await;
}

#[tokio::test]
async fn an_unreadable_resource_gets_a_condition_and_the_others_go_on() {
    let _turn = TURN.lock().await;
    let mut w = World::new("cl-unreadable", &[]).await;
    // Drop the enum on spec.type so that the API server stores a value this operator cannot
    // read. (The tests of this binary send only valid values: the looser schema is harmless.)
    let crds: Api<
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    > = Api::all(w.client());
    let patch = json!([{"op": "remove", "path": "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/type/enum"}]);
    let _ = crds
        .patch(
            "clustermendixcredentials.mxcred.io",
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(patch).unwrap()),
        )
        .await;
    let ns = w.namespace("a", json!({})).await;
    w.source("raw", "tok-unreadable").await;
    let bogus = format!("{}-bogus", w.env.ns);
    let raw = kube::api::ApiResource::erase::<ClusterMendixCredential>(&());
    let dynamic: Api<kube::api::DynamicObject> = Api::all_with(w.client(), &raw);
    let applied = wait_for(Duration::from_secs(10), || async {
        let obj = json!({"apiVersion": "mxcred.io/v1alpha1", "kind": "ClusterMendixCredential",
            "metadata": {"name": bogus},
            "spec": {"type": "Bogus", "sourceRef": {"namespace": w.env.ns, "name": "raw"},
                     "target": {"name": TARGET, "namespaces": [ns]}}});
        // The schema change takes a moment to be served.
        dynamic
            .patch(
                &bogus,
                &PatchParams::apply("mxcred-tests"),
                &Patch::Apply(obj),
            )
            .await
            .ok()
    })
    .await;
    assert!(applied.is_some(), "the looser schema accepts type Bogus");
    let fine = w.env.ns.clone();
    w.put(
        &fine,
        json!({"sourceRef": {"namespace": w.env.ns, "name": "raw"},
               "target": {"name": TARGET, "namespaces": [ns]}}),
    )
    .await;
    w.wait_status(&fine, "synced in 1/1", Duration::from_secs(30), |cr| {
        is_synced(cr, "1/1")
    })
    .await;
    let message = wait_for(Duration::from_secs(30), || async {
        let obj = dynamic.get(&bogus).await.ok()?;
        let conditions = obj
            .data
            .get("status")?
            .get("conditions")?
            .as_array()?
            .clone();
        conditions
            .iter()
            .find(|c| c["type"] == "Ready" && c["reason"] == "InvalidSpec")
            .map(|c| c["message"].as_str().unwrap_or_default().to_owned())
    })
    .await
    .expect("the unreadable resource gets Ready=False InvalidSpec");
    assert!(message.contains("cannot be read"), "{message}");
    let _ = dynamic.delete(&bogus, &DeleteParams::default()).await;
    w.clean_up(&[&fine]).await;
}

#[tokio::test]
async fn a_rejected_rotation_keeps_the_working_token_in_every_copy() {
    let _turn = TURN.lock().await;
    let mut w = World::new("cl-rotate", &[]).await;
    let key = format!("ci.example.com/{}", w.env.ns);
    let a = w.namespace("a", json!({&key: "true"})).await;
    let b = w.namespace("b", json!({&key: "true"})).await;
    w.source("raw", "CANARY-cl-old").await;
    let name = w.env.ns.clone();
    w.put_selecting(&name, &key).await;
    w.wait_status(
        &name,
        "synced and verified",
        Duration::from_secs(30),
        |cr| is_synced(cr, "2/2") && token_valid(cr).as_deref() == Some("Verified"),
    )
    .await;

    // A token deleted in the Mendix Portal: checked once for all copies, and held back.
    w.sim.set("CANARY-cl-deleted", State::Deleted);
    let rotated = Instant::now();
    w.env
        .put_source("raw", &[("token", "CANARY-cl-deleted")])
        .await;
    let cr = w
        .wait_status(&name, "RotationRejected", Duration::from_secs(30), |cr| {
            ready(cr) == Some(("False".into(), "RotationRejected".into()))
        })
        .await;
    eprintln!(
        "MEASURED cluster: source rotation to a deleted token -> RotationRejected {:?}",
        rotated.elapsed()
    );
    assert_eq!(token_valid(&cr).as_deref(), Some("Verified"));
    assert!(cr.status.unwrap().pending_fingerprint.is_some());
    // A namespace selected meanwhile gets the working token too.
    let c = w.namespace("c", json!({&key: "true"})).await;
    let client = w.client();
    copy_becomes(&client, &c, |s| s.is_some()).await.unwrap();
    for ns in [&a, &b, &c] {
        let copy = w.copy(ns).await.unwrap();
        assert_eq!(
            value(&copy, "MENDIX_TOKEN").as_deref(),
            Some("CANARY-cl-old"),
            "{ns}"
        );
    }
    assert_eq!(w.sim.requests("CANARY-cl-deleted"), 1);
    wait_for(Duration::from_secs(15), || async {
        let events = events_of(&w.client(), &name).await;
        events
            .iter()
            .any(|e| e.starts_with("Warning RotationRejected"))
            .then_some(())
    })
    .await
    .expect("a RotationRejected Warning Event");

    // A good token next reaches every copy.
    w.sim.set("CANARY-cl-new", State::Valid);
    w.env.put_source("raw", &[("token", "CANARY-cl-new")]).await;
    w.wait_status(
        &name,
        "synced with the new token",
        Duration::from_secs(30),
        |cr| is_synced(cr, "3/3") && cr.status.as_ref().unwrap().pending_fingerprint.is_none(),
    )
    .await;
    for ns in [&a, &b, &c] {
        let copy = w.copy(ns).await.unwrap();
        assert_eq!(
            value(&copy, "MENDIX_TOKEN").as_deref(),
            Some("CANARY-cl-new"),
            "{ns}"
        );
    }
    assert_eq!(w.sim.requests("CANARY-cl-new"), 1);
    let events = events_of(&w.client(), &name).await;
    assert!(
        events.iter().any(|e| e.starts_with("Normal Rotated")),
        "{events:?}"
    );
    let all = format!(
        "{events:?}{:?}",
        w.clusters().get(&name).await.unwrap().status
    );
    assert!(!all.contains("CANARY"), "a token in an Event or the status");
    assert!(!w.op.logs().contains("CANARY"), "a token in the log");
    w.clean_up(&[&name]).await;
}

/// Two tokens with the same fingerprint (`sha256:262dd65c426c`), found by a cycle search over
/// its 48 bits in a few minutes of one core.
const WORKING: &str = "mxforge-8f8b40ea2ff9";
const FORGED: &str = "mxforge-7cf267c610d5";

/// A tenant of namespace `ns`: a ServiceAccount of its own with a Role that may read and write
/// the Secrets of that namespace only, as the users of a selected namespace commonly may.
async fn namespace_tenant(w: &World, ns: &str) -> Client {
    let client = w.client();
    let account: k8s_openapi::api::core::v1::ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "tenant"}})).unwrap();
    Api::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &account)
        .await
        .unwrap();
    let role: k8s_openapi::api::rbac::v1::Role = serde_json::from_value(json!({
        "metadata": {"name": "tenant"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"],
                   "verbs": ["get", "list", "watch", "create", "update", "patch"]}],
    }))
    .unwrap();
    Api::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "tenant"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tenant"},
        "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": ns}],
    }))
    .unwrap();
    Api::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let kubeconfig = common::service_account_kubeconfig(&client, &w.env.cp.dir, ns, "tenant").await;
    let tenant = common::client_from(&kubeconfig).await;
    let secrets: Api<Secret> = Api::namespaced(tenant.clone(), ns);
    common::wait_until(Duration::from_secs(10), "the tenant's Role", || async {
        secrets.list(&Default::default()).await.is_ok()
    })
    .await;
    tenant
}

#[tokio::test]
async fn a_forged_token_with_the_working_fingerprint_in_a_tenant_copy_reaches_no_other_namespace() {
    let _turn = TURN.lock().await;
    let mut w = World::new("cl-forge", &[]).await;
    let key = format!("ci.example.com/{}", w.env.ns);
    let a = w.namespace("a", json!({&key: "true"})).await;
    let b = w.namespace("b", json!({&key: "true"})).await;
    w.source("raw", WORKING).await;
    // The platform would accept the forged token too: nothing but the operator stops it.
    w.sim.set(FORGED, State::Valid);
    let name = w.env.ns.clone();
    w.put_selecting(&name, &key).await;
    let cr = w
        .wait_status(
            &name,
            "synced and verified",
            Duration::from_secs(30),
            |cr| is_synced(cr, "2/2") && token_valid(cr).as_deref() == Some("Verified"),
        )
        .await;
    let working = fingerprint(&cr).unwrap();
    assert_eq!(working, "sha256:262dd65c426c");
    // The administrator's next token is rejected: held back, the copies keep the working one.
    w.sim.set("mxforge-deleted", State::Deleted);
    w.env
        .put_source("raw", &[("token", "mxforge-deleted")])
        .await;
    w.wait_status(&name, "RotationRejected", Duration::from_secs(30), |cr| {
        ready(cr) == Some(("False".into(), "RotationRejected".into()))
    })
    .await;

    // The tenant of namespace a writes the forged token into its copy, fingerprint and all.
    let tenant = namespace_tenant(&w, &a).await;
    Api::<Secret>::namespaced(tenant, &a)
        .patch(
            TARGET,
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {
                "MENDIX_TOKEN": FORGED,
                "Authorization": format!("MxToken {FORGED}"),
                "headers": format!("Authorization: MxToken {FORGED}\n"),
            }})),
        )
        .await
        .unwrap();
    // A namespace selected next, and one selected after a restart of the operator (which then
    // knows the working token only from what it recorded): each gets the working token.
    let client = w.client();
    let c = w.namespace("c", json!({&key: "true"})).await;
    copy_becomes(&client, &c, |s| s.is_some()).await.unwrap();
    w.restart_operator();
    let d = w.namespace("d", json!({&key: "true"})).await;
    copy_becomes(&client, &d, |s| s.is_some()).await.unwrap();
    // The tenant's own copy is put back.
    copy_becomes(&client, &a, |s| {
        s.and_then(|s| value(s, "MENDIX_TOKEN")).as_deref() == Some(WORKING)
    })
    .await
    .expect("the tenant's copy holds the working token again");
    for ns in [&a, &b, &c, &d] {
        let copy = w.copy(ns).await.unwrap();
        assert_eq!(
            value(&copy, "MENDIX_TOKEN").as_deref(),
            Some(WORKING),
            "{ns}"
        );
    }
    let cr = w.clusters().get(&name).await.unwrap();
    assert_eq!(
        ready(&cr),
        Some(("False".into(), "RotationRejected".into()))
    );
    assert_eq!(fingerprint(&cr), Some(working));
    assert_eq!(w.sim.requests(FORGED), 0, "the forged token is never sent");
    assert!(!w.op.logs().contains("mxforge"), "a token in the log");
    let said = format!("{:?}{:?}", events_of(&w.client(), &name).await, cr.status);
    assert!(
        !said.contains("mxforge"),
        "a token in an Event or the status"
    );
    w.clean_up(&[&name]).await;
}

#[tokio::test]
async fn a_cluster_credential_with_the_longest_valid_name_syncs() {
    let _turn = TURN.lock().await;
    let mut w = World::new("cl-long", &[]).await;
    let a = w.namespace("a", json!({})).await;
    w.source("raw", "tok-cl-long").await;
    let head = format!("{}-", w.env.ns);
    let name = format!("{head}{}", "c".repeat(253 - head.len()));
    assert_eq!(name.len(), 253);
    w.put(
        &name,
        json!({
            "sourceRef": {"namespace": w.env.ns, "name": "raw"},
            "target": {"name": TARGET, "namespaces": [a]},
            "verification": {"enabled": false},
        }),
    )
    .await;
    w.wait_status(&name, "synced", Duration::from_secs(30), |cr| {
        is_synced(cr, "1/1")
    })
    .await;
    let copy = w.copy(&a).await.unwrap();
    let label = &copy.metadata.labels.as_ref().unwrap()["mxcred.io/cluster-credential"];
    assert!(label.len() <= 63, "{label}");
    // A copy changed by hand is put back: the copies' watch finds its resource.
    Api::<Secret>::namespaced(w.client(), &a)
        .patch(
            TARGET,
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"MENDIX_TOKEN": "tok-by-hand"}})),
        )
        .await
        .unwrap();
    copy_becomes(&w.client(), &a, |s| {
        s.and_then(|s| value(s, "MENDIX_TOKEN")).as_deref() == Some("tok-cl-long")
    })
    .await
    .expect("the copy is put back");
    // Events of a resource of that name are published (their names fit).
    w.env.put_source("raw", &[("token", "tok-cl-long-2")]).await;
    wait_for(Duration::from_secs(30), || async {
        let events = events_of(&w.client(), &name).await;
        events
            .iter()
            .any(|e| e.starts_with("Normal Rotated"))
            .then_some(())
    })
    .await
    .expect("a Rotated Event");
    assert!(!w.op.logs().contains("could not publish Event"));
    w.clean_up(&[&name]).await;
}

/// A Deployment `runner` in `ns` reading the copy through `envFrom`, as a CI runner's would,
/// that consents to restarts by the cluster resources `follows` (none: no consent).
async fn create_runner(client: &Client, ns: &str, follows: &[&str]) -> Deployment {
    let consent: Vec<String> = follows.iter().map(|n| format!("cluster/{n}")).collect();
    let annotations = if follows.is_empty() {
        json!({})
    } else {
        json!({"mxcred.io/restart-on": consent.join(",")})
    };
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "runner", "annotations": annotations},
        "spec": {"selector": {"matchLabels": {"app": "runner"}}, "template": {
            "metadata": {"labels": {"app": "runner"}},
            "spec": {"containers": [{"name": "runner", "image": "runner:1",
                "envFrom": [{"secretRef": {"name": TARGET}}]}]},
        }},
    }))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap()
}

/// Waits, by a watch, until Deployment `runner` in `ns` holds `value` under `key` in its pod
/// template.
async fn runner_annotated(client: &Client, ns: &str, key: &str, value: &str) -> Deployment {
    let (key, value) = (key.to_owned(), value.to_owned());
    let holds = move |d: Option<&Deployment>| {
        d.is_some_and(|d| runner_annotation(d, &key).as_deref() == Some(value.as_str()))
    };
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(api, "runner", holds),
    )
    .await
    .unwrap_or_else(|_| panic!("Deployment runner in {ns} never held the annotation"))
    .unwrap()
    .unwrap()
}

fn runner_annotation(d: &Deployment, key: &str) -> Option<String> {
    d.spec
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(key)
        .cloned()
}

async fn runner(client: &Client, ns: &str) -> Deployment {
    Api::<Deployment>::namespaced(client.clone(), ns)
        .get("runner")
        .await
        .unwrap()
}

fn generation(d: &Deployment) -> i64 {
    d.metadata.generation.unwrap()
}

fn fingerprint(cr: &ClusterMendixCredential) -> Option<String> {
    cr.status.as_ref()?.token_fingerprint.clone()
}

/// How many reconciles of `name` the operator has logged.
/// A resync: an event of namespace `ns` reconciles every cluster resource; returns once
/// `name` was reconciled again.
async fn resync(w: &World, name: &str, ns: &str) {
    let before = reconciles(&w.op, name);
    w.label(ns, json!({"touched": "yes"})).await;
    wait_for(Duration::from_secs(15), || async {
        (reconciles(&w.op, name) > before).then_some(())
    })
    .await
    .expect("a reconcile after the namespace event");
}

fn reconciles(op: &Operator, name: &str) -> usize {
    let name = format!("\"{name}\"");
    op.logs()
        .lines()
        .filter(|l| l.contains("\"reconciled\"") && l.contains(&name))
        .count()
}

#[tokio::test]
async fn a_rotation_restarts_the_workloads_of_every_namespace_once() {
    let _turn = TURN.lock().await;
    let mut w = World::new("cl-restart", &["--restart-min-interval", "1s"]).await;
    let client = w.client();
    let label = format!("ci.example.com/{}", w.env.ns);
    let name = w.env.ns.clone();
    // a and b run the consumer, c does not; d runs it, but the operator may not touch it; e
    // runs it and the operator may, but it does not consent.
    let a = w.namespace("a", json!({&label: "true"})).await;
    let b = w.namespace("b", json!({&label: "true"})).await;
    let c = w.namespace("c", json!({&label: "true"})).await;
    let d = w.namespace("d", json!({&label: "true"})).await;
    let e = w.namespace("e", json!({&label: "true"})).await;
    for ns in [&a, &b, &c, &e] {
        common::grant_workload_restarts(&client, ns, &["deployments"]).await;
    }
    for ns in [&a, &b, &d] {
        create_runner(&client, ns, &["other", &name]).await;
    }
    create_runner(&client, &e, &[]).await;
    w.source("raw", "CANARY-clr-1").await;
    w.put(
        &name,
        json!({
            "sourceRef": {"namespace": w.env.ns, "name": "raw"},
            "target": {"name": TARGET, "namespaceSelector": {"matchLabels": {&label: "true"}},
                       "rolloutRestart": [{"kind": "Deployment", "name": "runner"}]},
        }),
    )
    .await;
    let key = format!("cluster.restart.mxcred.io/{name}");
    let has_failure = |cr: &ClusterMendixCredential| {
        cr.status
            .as_ref()
            .is_some_and(|s| s.rollout_restart_failure_count == Some(2))
    };
    let cr = w
        .wait_status(
            &name,
            "synced, d and e failing",
            Duration::from_secs(30),
            |cr| is_synced(cr, "5/5") && has_failure(cr),
        )
        .await;
    let first = fingerprint(&cr).unwrap();
    let status = cr.status.unwrap();
    let failure = &status.rollout_restart_failures[..];
    assert_eq!(failure.len(), 2, "{failure:?}");
    assert_eq!(
        (failure[0].namespace.as_str(), failure[0].name.as_str()),
        (d.as_str(), "runner")
    );
    assert_eq!(failure[0].reason, RolloutRestartProblem::Forbidden);
    assert!(
        failure[0].message.contains("rolloutRestart.enabled=true"),
        "{}",
        failure[0].message
    );
    assert_eq!(
        (failure[1].namespace.as_str(), failure[1].reason),
        (e.as_str(), RolloutRestartProblem::NoConsent)
    );
    assert!(
        failure[1].message.contains(&format!("\"cluster/{name}\"")),
        "{}",
        failure[1].message
    );
    let mut generations = HashMap::new();
    for ns in [&a, &b] {
        let deployment = runner_annotated(&client, ns, &key, &first).await;
        generations.insert(ns.clone(), generation(&deployment));
    }
    assert_eq!(runner_annotation(&runner(&client, &d).await, &key), None);
    let unconsenting = runner(&client, &e).await;
    assert_eq!(runner_annotation(&unconsenting, &key), None);
    let e_generation = generation(&unconsenting);

    // Rotation to another valid token: each runner is restarted once, for it.
    w.sim.set("CANARY-clr-2", State::Valid);
    let rotated = Instant::now();
    w.env.put_source("raw", &[("token", "CANARY-clr-2")]).await;
    let cr = w
        .wait_status(
            &name,
            "synced with the new token",
            Duration::from_secs(30),
            |cr| is_synced(cr, "5/5") && fingerprint(cr).is_some_and(|f| f != first),
        )
        .await;
    let second = fingerprint(&cr).unwrap();
    for ns in [&a, &b] {
        runner_annotated(&client, ns, &key, &second).await;
    }
    eprintln!(
        "MEASURED cluster rolloutRestart: source rotation -> last Deployment annotated (2 of 4 namespaces run it) {:?}",
        rotated.elapsed()
    );
    for ns in [&a, &b] {
        let deployment = runner(&client, ns).await;
        assert_eq!(generation(&deployment), generations[ns] + 1, "{ns}");
        generations.insert(ns.clone(), generation(&deployment));
    }
    // The namespace without the workload is no failure, and Ready stays True; the workload
    // without consent is left alone.
    let status = cr.status.unwrap();
    assert_eq!(status.rollout_restart_failure_count, Some(2));
    assert_eq!(status.rollout_restart_failures[0].namespace, d);
    let unconsenting = runner(&client, &e).await;
    assert_eq!(runner_annotation(&unconsenting, &key), None);
    assert_eq!(generation(&unconsenting), e_generation);
    let failed_once = || async {
        events_of(&client, &name)
            .await
            .iter()
            .filter(|e| e.starts_with("Warning RolloutRestartFailed"))
            .count()
    };
    wait_for(Duration::from_secs(15), || async {
        (failed_once().await > 0).then_some(())
    })
    .await
    .expect("a RolloutRestartFailed Warning Event");

    // SIGKILL and a new operator: it reads each workload once and restarts nothing.
    w.restart_operator();
    let reconciled = wait_for(Duration::from_secs(30), || async {
        (reconciles(&w.op, &name) > 0).then_some(())
    })
    .await;
    assert!(
        reconciled.is_some(),
        "the new operator never reconciled\n{}",
        tail(&w.op.logs())
    );
    // And a resync: a namespace event reconciles every cluster resource.
    resync(&w, &name, &a).await;
    for ns in [&a, &b] {
        let deployment = runner(&client, ns).await;
        assert_eq!(generation(&deployment), generations[ns], "{ns}");
        assert_eq!(runner_annotation(&deployment, &key), Some(second.clone()));
    }
    // It did go through the workloads (d's answer is logged), and patched none.
    assert!(
        w.op.logs()
            .lines()
            .any(|l| l.contains("cannot restart a workload") && l.contains(&d)),
        "the new operator never read the workloads\n{}",
        tail(&w.op.logs())
    );
    assert_eq!(w.op.logs().matches("restarted a workload").count(), 0);
    // c, without the workload, was read once and then remembered: the resync sent nothing.
    let skipped = |op: &Operator| {
        op.logs()
            .lines()
            .filter(|l| l.contains("no such workload") && l.contains(&format!("\"{c}\"")))
            .count()
    };
    assert_eq!(skipped(&w.op), 1, "{}", tail(&w.op.logs()));
    let cr = w.clusters().get(&name).await.unwrap();
    assert_eq!(ready(&cr), Some(("True".into(), "Synced".into())));
    assert_eq!(
        failed_once().await,
        1,
        "one Warning Event, on the transition only"
    );
    let events = events_of(&client, &name).await;
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("Normal RolloutRestarted")),
        "{events:?}"
    );

    // A rotation held back (the platform rejects the new token) restarts nothing: the copies
    // keep the working credential.
    w.sim.set("CANARY-clr-deleted", State::Deleted);
    w.env
        .put_source("raw", &[("token", "CANARY-clr-deleted")])
        .await;
    w.wait_status(&name, "RotationRejected", Duration::from_secs(30), |cr| {
        ready(cr) == Some(("False".into(), "RotationRejected".into()))
    })
    .await;
    resync(&w, &name, &b).await;
    for ns in [&a, &b] {
        let deployment = runner(&client, ns).await;
        assert_eq!(generation(&deployment), generations[ns], "{ns}");
        assert_eq!(runner_annotation(&deployment, &key), Some(second.clone()));
    }
    assert_eq!(w.op.logs().matches("restarted a workload").count(), 0);
    let cr = w.clusters().get(&name).await.unwrap();
    let all = format!("{:?}{:?}", events_of(&client, &name).await, cr.status);
    assert!(!all.contains("CANARY"), "a token in an Event or the status");
    assert!(!w.op.logs().contains("CANARY"), "a token in the log");
    w.clean_up(&[&name]).await;
}

/// Waits, by a watch, until the `n` Deployments labelled `selector` hold `value` under `key`;
/// returns when.
async fn all_annotated(
    client: &Client,
    selector: &str,
    key: &str,
    value: &str,
    n: usize,
) -> Instant {
    let api = Api::<Deployment>::all(client.clone());
    let mut stream = watcher(api, watcher::Config::default().labels(selector))
        .applied_objects()
        .boxed();
    let mut held: HashMap<String, bool> = HashMap::new();
    let wait = async {
        while let Some(d) = stream.try_next().await.unwrap() {
            let holds = runner_annotation(&d, key).as_deref() == Some(value);
            held.insert(d.namespace().unwrap_or_default(), holds);
            if held.len() == n && held.values().all(|h| *h) {
                return Instant::now();
            }
        }
        panic!("the watch of Deployments ended");
    };
    tokio::time::timeout(Duration::from_secs(120), wait)
        .await
        .unwrap_or_else(|_| panic!("not every Deployment held {value}"))
}

#[tokio::test]
async fn two_hundred_namespaces_restart_once_per_rotation_and_a_resync_reads_nothing() {
    const N: usize = 200;
    let _turn = TURN.lock().await;
    let mut w = World::new("cl-many-restart", &["--restart-min-interval", "1s"]).await;
    let client = w.client();
    let label = format!("ci.example.com/{}", w.env.ns);
    let mut namespaces = vec![];
    for i in 0..N {
        namespaces.push(
            w.namespace(&format!("{i:03}"), json!({&label: "true"}))
                .await,
        );
    }
    // The rights of rolloutRestart.enabled=true in each namespace; a runner (no replicas: only
    // its template matters) in every other one.
    let role = format!("{}-restarts", w.env.ns);
    let cluster_role: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": role},
        "rules": [{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "patch"]}],
    }))
    .unwrap();
    Api::<ClusterRole>::all(client.clone())
        .create(&PostParams::default(), &cluster_role)
        .await
        .unwrap();
    let selector = format!("test={}", w.env.ns);
    futures::stream::iter(namespaces.iter().enumerate())
        .for_each_concurrent(16, |(i, ns)| {
            let (client, role, test) = (client.clone(), role.clone(), w.env.ns.clone());
            async move {
                let binding: RoleBinding = serde_json::from_value(json!({
                    "metadata": {"name": "operator-restarts"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                    "subjects": [{"kind": "ServiceAccount", "name": "mxcred-operator", "namespace": "mxcred-system"}],
                }))
                .unwrap();
                Api::<RoleBinding>::namespaced(client.clone(), ns)
                    .create(&PostParams::default(), &binding)
                    .await
                    .unwrap();
                if i % 2 == 0 {
                    let deployment: Deployment = serde_json::from_value(json!({
                        "metadata": {"name": "runner", "labels": {"test": test},
                            "annotations": {"mxcred.io/restart-on": format!("cluster/{test}")}},
                        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "runner"}},
                            "template": {"metadata": {"labels": {"app": "runner"}},
                                "spec": {"containers": [{"name": "runner", "image": "runner:1"}]}}},
                    }))
                    .unwrap();
                    Api::<Deployment>::namespaced(client, ns)
                        .create(&PostParams::default(), &deployment)
                        .await
                        .unwrap();
                }
            }
        })
        .await;
    let runners = N / 2;
    w.source("raw", "tok-many-restart").await;
    let name = w.env.ns.clone();
    let key = format!("cluster.restart.mxcred.io/{name}");
    let started = Instant::now();
    w.put(
        &name,
        json!({
            "sourceRef": {"namespace": w.env.ns, "name": "raw"},
            "target": {"name": TARGET, "namespaceSelector": {"matchLabels": {&label: "true"}},
                       "rolloutRestart": [{"kind": "Deployment", "name": "runner"}]},
        }),
    )
    .await;
    let all = format!("{N}/{N}");
    let cr = w
        .wait_status(&name, "synced", Duration::from_secs(120), |cr| {
            is_synced(cr, &all)
                && cr.status.as_ref().unwrap().rollout_restart_failure_count == Some(0)
        })
        .await;
    let first = fingerprint(&cr).unwrap();
    let done = all_annotated(&client, &selector, &key, &first, runners).await;
    eprintln!(
        "MEASURED {N} namespaces, {runners} runners: first sync -> last Deployment annotated {:?}",
        done.duration_since(started)
    );

    w.sim.set("tok-many-restart-2", State::Valid);
    let rotated = Instant::now();
    w.env
        .put_source("raw", &[("token", "tok-many-restart-2")])
        .await;
    let second = w
        .wait_status(&name, "rotated", Duration::from_secs(120), |cr| {
            is_synced(cr, &all) && fingerprint(cr).is_some_and(|f| f != first)
        })
        .await;
    let second = fingerprint(&second).unwrap();
    let done = all_annotated(&client, &selector, &key, &second, runners).await;
    eprintln!(
        "MEASURED {N} namespaces, {runners} runners: source rotation -> last Deployment annotated {:?}",
        done.duration_since(rotated)
    );
    // Created, then one restart per credential.
    let deployments = Api::<Deployment>::all(client.clone())
        .list(&kube::api::ListParams::default().labels(&selector))
        .await
        .unwrap()
        .items;
    assert_eq!(deployments.len(), runners);
    for d in &deployments {
        assert_eq!(generation(d), 3, "{:?}", d.namespace());
    }
    assert_eq!(
        w.op.logs().matches("restarted a workload").count(),
        2 * runners
    );

    // A resync (any namespace event reconciles the resource) reads no workload.
    let read = |op: &Operator| op.logs().matches("no such workload").count();
    let skipped = read(&w.op);
    assert_eq!(
        skipped,
        2 * (N - runners),
        "each namespace without it read once per credential"
    );
    resync(&w, &name, &namespaces[0]).await;
    assert_eq!(read(&w.op), skipped);
    assert_eq!(
        w.op.logs().matches("restarted a workload").count(),
        2 * runners
    );
    let _ = Api::<ClusterRole>::all(client)
        .delete(&role, &DeleteParams::default())
        .await;
    w.clean_up(&[&name]).await;
}

#[tokio::test]
async fn a_tenant_deleting_its_copy_again_and_again_makes_a_bounded_number_of_events() {
    const DELETES: usize = 25;
    let _turn = TURN.lock().await;
    let mut w = World::new("cl-delete", &[]).await;
    let client = w.client();
    let team = w.namespace("team", json!({})).await;
    w.source("raw", "tok-deleted-again").await;
    let name = w.env.ns.clone();
    w.put(
        &name,
        json!({"sourceRef": {"namespace": w.env.ns, "name": "raw"},
               "target": {"name": TARGET, "namespaces": [team]}}),
    )
    .await;
    w.wait_status(&name, "synced", Duration::from_secs(30), |cr| {
        is_synced(cr, "1/1")
    })
    .await;
    // The tenant of `team`: a ServiceAccount whose Role lets it read and delete the Secrets
    // of its namespace.
    let tenant_env = TestEnv {
        ns: team.clone(),
        client: client.clone(),
        cp: w.env.cp,
    };
    let kubeconfig = tenant_env
        .namespaced_identity(
            "tenant",
            json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "delete"]}]),
        )
        .await;
    let tenant = common::client_from(&kubeconfig).await;
    let secrets: Api<Secret> = Api::namespaced(tenant, &team);
    let started = Instant::now();
    for _ in 0..DELETES {
        let copy = wait_for(Duration::from_secs(30), || async {
            secrets.get_opt(TARGET).await.ok().flatten()
        })
        .await
        .expect("the copy is written again");
        secrets
            .delete(TARGET, &DeleteParams::default())
            .await
            .unwrap();
        let old = copy.uid();
        copy_becomes(&client, &team, move |s| s.is_some_and(|s| s.uid() != old))
            .await
            .expect("the copy is written again");
        // A little over a second apart: the status records its writes in whole seconds, so
        // each rewrite is a new sync for it (and, unbounded, a new Event).
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let events = events_of(&client, &name).await;
    let synced = events
        .iter()
        .filter(|e| e.starts_with("Normal Synced"))
        .count();
    let allowed = 10 + (started.elapsed().as_secs() / 30) as usize + 1;
    eprintln!(
        "MEASURED a tenant deleting its copy {DELETES} times in {:?}: {synced} Synced Events of \
         {} in all",
        started.elapsed(),
        events.len()
    );
    assert!(
        synced <= allowed,
        "{synced} Synced Events, at most {allowed}: {events:?}"
    );
    w.clean_up(&[&name]).await;
}
