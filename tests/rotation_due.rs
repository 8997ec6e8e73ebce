//! The age and expiry of a published credential (condition RotationDue), on the real control
//! plane, for a MendixCredential and a ClusterMendixCredential: an expiry three days away in the
//! source Secret's annotation mxcred.io/expires-at makes it due (ExpiresSoon, one Warning Event,
//! status.rotateBy); a new credential without the annotation and a maxAge of 1h is not due; a
//! malformed annotation is reported in the condition's message while Ready stays True.
//!
//! One operator in cluster mode serves both kinds. A cluster-mode operator of another test binary
//! (tests/cluster.rs) would serve this test's ClusterMendixCredential too: run them one after
//! the other.

mod common;

use common::{Operator, TestEnv, loopback_platform, wait_for};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use mxcred_operator::domain::api::MendixCredential;
use mxcred_operator::domain::cluster::ClusterMendixCredential;
use serde_json::{Value, json};
use std::time::Duration;

/// The resource of one kind, as this test drives it.
enum Resource {
    Namespaced { env_ns: String },
    Cluster { copies_in: String },
}

struct Case<'a> {
    env: &'a TestEnv,
    name: String,
    source: &'static str,
    resource: Resource,
}

impl Case<'_> {
    fn client(&self) -> Client {
        self.env.client.clone()
    }

    /// Puts `token` in the source Secret, with exactly `annotations` of this test's.
    async fn source(&self, token: &str, annotations: Value) {
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": self.source, "labels": {"mxcred.io/source": "true"},
                         "annotations": annotations},
            "stringData": {"token": token},
        });
        self.env
            .secrets()
            .patch(
                self.source,
                &PatchParams::apply("mxcred-tests").force(),
                &Patch::Apply(secret),
            )
            .await
            .unwrap();
    }

    /// Applies the resource with `rotation` (and verification off: no platform here).
    async fn put(&self, rotation: Value) {
        let (kind, spec) = match &self.resource {
            Resource::Namespaced { .. } => (
                "MendixCredential",
                json!({"sourceRef": {"name": self.source}, "target": {"name": "due-target"}}),
            ),
            Resource::Cluster { copies_in } => (
                "ClusterMendixCredential",
                json!({"sourceRef": {"namespace": self.env.ns, "name": self.source},
                       "target": {"name": "due-target", "namespaces": [copies_in]}}),
            ),
        };
        let mut spec = spec;
        spec["verification"] = json!({"enabled": false});
        spec["rotation"] = rotation;
        let cr = json!({"apiVersion": "mxcred.io/v1alpha1", "kind": kind,
                        "metadata": {"name": self.name}, "spec": spec});
        let params = PatchParams::apply("mxcred-tests").force();
        match &self.resource {
            Resource::Namespaced { env_ns } => {
                Api::<MendixCredential>::namespaced(self.client(), env_ns)
                    .patch(&self.name, &params, &Patch::Apply(cr))
                    .await
                    .map(|_| ())
            }
            Resource::Cluster { .. } => Api::<ClusterMendixCredential>::all(self.client())
                .patch(&self.name, &params, &Patch::Apply(cr))
                .await
                .map(|_| ()),
        }
        .unwrap();
    }

    /// The resource's status, as JSON.
    async fn status(&self) -> Option<Value> {
        let status = match &self.resource {
            Resource::Namespaced { env_ns } => {
                let cr = Api::<MendixCredential>::namespaced(self.client(), env_ns)
                    .get(&self.name)
                    .await
                    .ok()?;
                serde_json::to_value(cr.status?).unwrap()
            }
            Resource::Cluster { .. } => {
                let cr = Api::<ClusterMendixCredential>::all(self.client())
                    .get(&self.name)
                    .await
                    .ok()?;
                serde_json::to_value(cr.status?).unwrap()
            }
        };
        Some(status)
    }

    /// Waits until the status satisfies `check`; returns it.
    async fn wait(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let last = std::sync::Mutex::new(None);
        let found = wait_for(Duration::from_secs(30), || async {
            let status = self.status().await?;
            *last.lock().unwrap() = Some(status.clone());
            check(&status).then_some(status)
        })
        .await;
        found.unwrap_or_else(|| {
            panic!(
                "{}: never {what}; last status {:#}",
                self.name,
                last.lock().unwrap().clone().unwrap_or_default()
            )
        })
    }

    /// The Events recorded for the resource, as "Type Reason: note".
    async fn events(&self) -> Vec<String> {
        let (ns, kind) = match &self.resource {
            Resource::Namespaced { env_ns } => (env_ns.as_str(), "MendixCredential"),
            // Cluster-scoped objects' Events are kept in namespace default.
            Resource::Cluster { .. } => ("default", "ClusterMendixCredential"),
        };
        let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(self.client(), ns);
        let all = api.list(&Default::default()).await.unwrap().items;
        all.into_iter()
            .filter(|e| {
                e.regarding.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(self.name.as_str())
                })
            })
            .map(common::describe_event)
            .collect()
    }

    async fn due_events(&self) -> Vec<String> {
        let events = self.events().await;
        events
            .into_iter()
            .filter(|e| e.starts_with("Warning RotationDue"))
            .collect()
    }
}

fn condition<'a>(status: &'a Value, type_: &str) -> Option<&'a Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

fn has(status: &Value, type_: &str, state: &str, reason: &str) -> bool {
    condition(status, type_).is_some_and(|c| c["status"] == state && c["reason"] == reason)
}

/// Now plus `seconds`, in whole seconds, as RFC 3339.
fn in_seconds(seconds: i64) -> String {
    let now = jiff::Timestamp::now().as_second() + seconds;
    jiff::Timestamp::from_second(now).unwrap().to_string()
}

async fn scenario(case: &Case<'_>) {
    // An expiry three days away, within the default renewBefore of 14 days.
    let expires = in_seconds(3 * 86_400);
    case.source("due-token-a", json!({"mxcred.io/expires-at": expires}))
        .await;
    case.put(json!({})).await;
    let status = case
        .wait("RotationDue True ExpiresSoon", |s| {
            has(s, "RotationDue", "True", "ExpiresSoon")
        })
        .await;
    assert!(has(&status, "Ready", "True", "Synced"), "{status:#}");
    assert_eq!(status["rotateBy"], json!(expires), "{status:#}");
    let message = condition(&status, "RotationDue").unwrap()["message"].to_string();
    assert!(message.contains(&expires), "{message}");
    wait_for(Duration::from_secs(15), || async {
        (!case.due_events().await.is_empty()).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("{}: no Warning RotationDue", case.name));
    // Another reconcile (a spec change) announces nothing more.
    case.put(json!({"renewBefore": "10d"})).await;
    case.wait("reconciled at generation 2", |s| {
        s["observedGeneration"] == 2 && has(s, "RotationDue", "True", "ExpiresSoon")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let due = case.due_events().await;
    assert_eq!(due.len(), 1, "{}: {due:?}", case.name);
    assert!(due[0].contains("ExpiresSoon"), "{due:?}");

    // A new credential without the annotation, and a maximum age of an hour: not due.
    case.put(json!({"maxAge": "1h"})).await;
    case.source("due-token-b", json!({})).await;
    let status = case
        .wait("RotationDue False NotDue", |s| {
            has(s, "RotationDue", "False", "NotDue") && s["rotateBy"] != json!(expires)
        })
        .await;
    assert!(has(&status, "Ready", "True", "Synced"), "{status:#}");
    let published = status["publishedTime"].as_str().expect("publishedTime");
    let published: jiff::Timestamp = published.parse().unwrap();
    let rotate_by: jiff::Timestamp = status["rotateBy"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        rotate_by.as_second() - published.as_second(),
        3600,
        "{status:#}"
    );
    let age = jiff::Timestamp::now().as_second() - published.as_second();
    assert!((0..60).contains(&age), "published {age}s ago: {status:#}");

    // A malformed annotation: reported, ignored, and Ready stays True.
    case.source(
        "due-token-b",
        json!({"mxcred.io/issued-at": "last tuesday"}),
    )
    .await;
    let status = case
        .wait("reporting the malformed annotation", |s| {
            condition(s, "RotationDue").is_some_and(|c| {
                c["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("mxcred.io/issued-at") && m.contains("RFC 3339"))
            })
        })
        .await;
    assert!(has(&status, "Ready", "True", "Synced"), "{status:#}");
    assert!(has(&status, "RotationDue", "False", "NotDue"), "{status:#}");
    assert_eq!(case.due_events().await.len(), 1, "{}", case.name);
}

#[tokio::test]
async fn expiry_and_age_are_reported_for_both_kinds() {
    let env = TestEnv::new("due").await;
    let copies_in = format!("{}-copies", env.ns);
    Api::<Namespace>::all(env.client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": copies_in}})).unwrap(),
        )
        .await
        .unwrap();
    let args = loopback_platform("http://127.0.0.1:9");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let op = Operator::start(env.cp, &env.cp.operator_kubeconfig, "", &args, &[]);

    let namespaced = Case {
        env: &env,
        name: "due-ns".into(),
        source: "due-raw-ns",
        resource: Resource::Namespaced {
            env_ns: env.ns.clone(),
        },
    };
    let cluster_name = format!("{}-cluster", env.ns);
    let cluster = Case {
        env: &env,
        name: cluster_name.clone(),
        source: "due-raw-cluster",
        resource: Resource::Cluster {
            copies_in: copies_in.clone(),
        },
    };
    scenario(&namespaced).await;
    scenario(&cluster).await;
    let logs = op.logs();
    for token in ["due-token-a", "due-token-b"] {
        assert!(!logs.contains(token), "the token {token} is in the log");
    }

    let _ = Api::<ClusterMendixCredential>::all(env.client.clone())
        .delete(&cluster_name, &DeleteParams::default())
        .await;
    for ns in [&copies_in, &env.ns] {
        let _ = Api::<Namespace>::all(env.client.clone())
            .delete(ns, &DeleteParams::default())
            .await;
    }
}
