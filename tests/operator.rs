//! The operator against a real kube-apiserver: MendixCredential in, header-ready Secret out.

mod common;

use common::{TestEnv, condition, value, wait_until};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams};
use mxcred_operator::domain::api::MendixCredential;
use serde_json::json;
use std::time::{Duration, Instant};

const PAT: &str = "mx-pat-9f8e7d6c5b4a";

fn fingerprint_of(s: &Secret) -> String {
    s.metadata.annotations.as_ref().unwrap()["mxcred.io/token-fingerprint"].clone()
}

#[tokio::test]
async fn personal_access_token_becomes_a_header_ready_secret() {
    let env = TestEnv::new("pat").await;
    let _op = env.start_operator(&[]);
    env.put_source("deploy-bot-raw", &[("token", &format!("{PAT}\n"))])
        .await;
    let applied = Instant::now();
    env.put_credential(
        "deploy-bot",
        json!({
            "sourceRef": {"name": "deploy-bot-raw"},
            "target": {"name": "deploy-bot-mendix", "labels": {"team": "ci"}, "annotations": {"owner": "platform"}},
        }),
    )
    .await;
    let secret = env
        .wait_secret("deploy-bot-mendix", "published", |_| true)
        .await;
    println!("apply to Secret: {:?}", applied.elapsed());

    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    let keys: Vec<_> = secret.data.as_ref().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["Authorization", "MENDIX_TOKEN", "headers"]);
    assert_eq!(value(&secret, "MENDIX_TOKEN").unwrap(), PAT);
    assert_eq!(
        value(&secret, "Authorization").unwrap(),
        format!("MxToken {PAT}")
    );
    assert_eq!(
        value(&secret, "headers").unwrap(),
        format!("Authorization: MxToken {PAT}\n")
    );

    let labels = secret.metadata.labels.clone().unwrap();
    assert_eq!(labels["app.kubernetes.io/managed-by"], "mxcred-operator");
    assert_eq!(labels["mxcred.io/credential"], "deploy-bot");
    assert_eq!(labels["team"], "ci");
    let annotations = secret.metadata.annotations.clone().unwrap();
    assert_eq!(annotations["owner"], "platform");
    assert!(fingerprint_of(&secret).starts_with("sha256:"));
    assert_eq!(fingerprint_of(&secret).len(), 19);

    let cr = env.wait_reason("deploy-bot", "Ready", "Synced").await;
    let owners = secret.metadata.owner_references.clone().unwrap();
    assert_eq!(owners.len(), 1);
    assert_eq!(owners[0].kind, "MendixCredential");
    assert_eq!(owners[0].api_version, "mxcred.io/v1alpha1");
    assert_eq!(owners[0].name, "deploy-bot");
    assert_eq!(Some(&owners[0].uid), cr.metadata.uid.as_ref());
    assert_eq!(owners[0].controller, Some(true));

    let status = cr.status.unwrap();
    assert_eq!(status.secret_name.as_deref(), Some("deploy-bot-mendix"));
    assert_eq!(status.token_fingerprint, Some(fingerprint_of(&secret)));
    assert_eq!(status.observed_generation, cr.metadata.generation);
    assert_eq!(
        status.credential_type,
        Some(mxcred_operator::domain::api::CredentialType::PersonalAccessToken),
        "the defaulted type is shown (the Type column)"
    );
    assert!(status.last_synced_time.is_some());
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "True");
    assert_eq!(ready.observed_generation, cr.metadata.generation);

    env.wait_event("Normal Synced").await;
}

#[tokio::test]
async fn api_key_becomes_a_header_ready_secret() {
    let env = TestEnv::new("apikey").await;
    let _op = env.start_operator(&[]);
    env.put_source(
        "legacy-raw",
        &[("user", " ci@example.com "), ("key", "0123-abcd")],
    )
    .await;
    env.put_credential(
        "legacy",
        json!({"type": "ApiKey", "sourceRef": {"name": "legacy-raw", "usernameKey": "user", "apiKeyKey": "key"}}),
    )
    .await;
    // The target name defaults to the resource's name.
    let secret = env
        .wait_secret("legacy", "published", |s| {
            s.data.as_ref().is_some_and(|d| d.contains_key("headers"))
        })
        .await;
    let keys: Vec<_> = secret.data.as_ref().unwrap().keys().cloned().collect();
    assert_eq!(
        keys,
        [
            "MENDIX_API_KEY",
            "MENDIX_USERNAME",
            "Mendix-ApiKey",
            "Mendix-Username",
            "headers"
        ]
    );
    assert_eq!(value(&secret, "MENDIX_USERNAME").unwrap(), "ci@example.com");
    assert_eq!(value(&secret, "MENDIX_API_KEY").unwrap(), "0123-abcd");
    assert_eq!(value(&secret, "Mendix-Username").unwrap(), "ci@example.com");
    assert_eq!(value(&secret, "Mendix-ApiKey").unwrap(), "0123-abcd");
    assert_eq!(
        value(&secret, "headers").unwrap(),
        "Mendix-Username: ci@example.com\nMendix-ApiKey: 0123-abcd\n"
    );
    let cr = env.wait_reason("legacy", "Ready", "Synced").await;
    assert_eq!(
        cr.status.unwrap().credential_type,
        Some(mxcred_operator::domain::api::CredentialType::ApiKey)
    );
}

#[tokio::test]
async fn ready_reasons_follow_the_source() {
    let env = TestEnv::new("reasons").await;
    let _op = env.start_operator(&[]);
    env.put_credential("c", json!({"sourceRef": {"name": "raw"}}))
        .await;
    let cr = env.wait_reason("c", "Ready", "SourceNotFound").await;
    let ready = condition(&cr, "Ready");
    assert_eq!(ready.status, "False");
    assert!(ready.message.contains("\"raw\""), "{}", ready.message);

    env.put_source("raw", &[("other", "x")]).await;
    env.wait_reason("c", "Ready", "SourceKeyMissing").await;

    env.put_source("raw", &[("token", "has space")]).await;
    env.wait_reason("c", "Ready", "InvalidSource").await;
    assert!(
        env.secrets().get_opt("c").await.unwrap().is_none(),
        "nothing is written for a refused source"
    );

    env.put_source("raw", &[("token", PAT)]).await;
    env.wait_reason("c", "Ready", "Synced").await;
}

#[tokio::test]
async fn invalid_specs_are_reported() {
    let env = TestEnv::new("spec").await;
    let _op = env.start_operator(&[]);
    env.put_source("raw", &[("token", PAT)]).await;
    for (name, spec, needle) in [
        (
            "interval",
            // "10sec", not "10s": the CRD's CEL rule refuses "10s" at apply time (tests/crd.rs).
            json!({"sourceRef": {"name": "raw"}, "verification": {"interval": "10sec"}}),
            "interval",
        ),
        (
            // An http(s) URL, as the CEL rule asks, but with credentials in it.
            "probe",
            json!({"sourceRef": {"name": "raw"}, "verification": {"probe": "https://u:p@x.example.com/"}}),
            "probe",
        ),
    ] {
        env.put_credential(name, spec).await;
        let cr = env.wait_reason(name, "Ready", "InvalidSpec").await;
        let ready = condition(&cr, "Ready");
        assert!(ready.message.contains(needle), "{name}: {}", ready.message);
    }
}

#[tokio::test]
async fn rotating_the_source_updates_the_target_within_seconds() {
    let env = TestEnv::new("rotate").await;
    let _op = env.start_operator(&[]);
    env.put_source("raw", &[("token", "first-token")]).await;
    env.put_credential("rot", json!({"sourceRef": {"name": "raw"}}))
        .await;
    let first = env.wait_secret("rot", "published", |_| true).await;

    let rotated = Instant::now();
    env.put_source("raw", &[("token", "second-token")]).await;
    let second = env
        .wait_secret("rot", "rotated", |s| {
            value(s, "MENDIX_TOKEN").as_deref() == Some("second-token")
        })
        .await;
    println!("rotation to target: {:?}", rotated.elapsed());
    assert!(rotated.elapsed() < Duration::from_secs(10));
    assert_eq!(
        value(&second, "Authorization").unwrap(),
        "MxToken second-token"
    );
    assert_ne!(fingerprint_of(&first), fingerprint_of(&second));
    wait_until(
        Duration::from_secs(10),
        "status fingerprint to follow",
        || async {
            let cr = env.credentials().get("rot").await.unwrap();
            cr.status.and_then(|s| s.token_fingerprint) == Some(fingerprint_of(&second))
        },
    )
    .await;
}

#[tokio::test]
async fn a_refused_source_keeps_the_last_good_secret() {
    let env = TestEnv::new("keep").await;
    let op = env.start_operator(&[]);
    env.put_source("raw", &[("token", "good-token")]).await;
    env.put_credential("keep", json!({"sourceRef": {"name": "raw"}}))
        .await;
    env.wait_reason("keep", "Ready", "Synced").await;
    let good = env.wait_secret("keep", "published", |_| true).await;

    for bad in ["injected\r\nX-Evil: 1", "", &"a".repeat(4097), "tökén"] {
        env.put_source("raw", &[("token", bad)]).await;
        let cr = env.wait_reason("keep", "Ready", "InvalidSource").await;
        let message = &condition(&cr, "Ready").message;
        assert!(
            !message.contains("X-Evil") && !message.contains("tökén") && !message.contains("aaaa"),
            "{message}"
        );
        let now = env.secrets().get("keep").await.unwrap();
        assert_eq!(
            now.data, good.data,
            "the published Secret must stay as it was"
        );
        assert_eq!(
            now.metadata.resource_version,
            good.metadata.resource_version
        );
        assert_eq!(
            cr.status.unwrap().token_fingerprint,
            Some(fingerprint_of(&good))
        );
        env.put_source("raw", &[("token", "good-token")]).await;
        env.wait_reason("keep", "Ready", "Synced").await;
    }
    let events = env.wait_event("Warning InvalidSource").await;
    assert!(
        !events
            .iter()
            .any(|e| e.contains("good-token") || e.contains("injected")),
        "{events:?}"
    );
    assert!(!op.logs().contains("good-token"));
}

#[tokio::test]
async fn a_foreign_secret_is_never_modified() {
    let env = TestEnv::new("foreign").await;
    let _op = env.start_operator(&[]);
    let foreign: Secret = serde_json::from_value(json!({
        "metadata": {"name": "taken"}, "stringData": {"mine": "keep me"}
    }))
    .unwrap();
    let foreign = env
        .secrets()
        .create(&Default::default(), &foreign)
        .await
        .unwrap();
    env.put_source("raw", &[("token", PAT)]).await;
    env.put_credential(
        "c",
        json!({"sourceRef": {"name": "raw"}, "target": {"name": "taken"}}),
    )
    .await;
    env.wait_reason("c", "Ready", "TargetConflict").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = env.secrets().get("taken").await.unwrap();
    assert_eq!(
        after.metadata.resource_version,
        foreign.metadata.resource_version
    );
    assert_eq!(value(&after, "mine").as_deref(), Some("keep me"));
    env.wait_event("Warning TargetConflict").await;

    // Once the foreign Secret is gone, the operator publishes without being prodded: a
    // conflict is retried every 30 s (the foreign Secret is not watched).
    env.secrets()
        .delete("taken", &DeleteParams::default())
        .await
        .unwrap();
    wait_until(Duration::from_secs(45), "the conflict retried", || async {
        let cr = env.credentials().get("c").await.unwrap();
        cr.status.is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.reason == "Synced")
        })
    })
    .await;
    let ours = env.secrets().get("taken").await.unwrap();
    assert_eq!(value(&ours, "MENDIX_TOKEN").as_deref(), Some(PAT));
}

#[tokio::test]
async fn the_target_is_garbage_collected_with_its_resource() {
    let env = TestEnv::new("gc").await;
    let _op = env.start_operator(&[]);
    env.put_source("raw", &[("token", PAT)]).await;
    env.put_credential("gone", json!({"sourceRef": {"name": "raw"}}))
        .await;
    env.wait_secret("gone", "published", |_| true).await;
    env.credentials()
        .delete("gone", &DeleteParams::default())
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(30),
        "kube-controller-manager to collect the target",
        || async { env.secrets().get_opt("gone").await.unwrap().is_none() },
    )
    .await;
    assert!(
        env.secrets().get_opt("raw").await.unwrap().is_some(),
        "the source is not ours to delete"
    );
}

#[tokio::test]
async fn renaming_the_target_removes_the_old_secret() {
    let env = TestEnv::new("rename").await;
    let _op = env.start_operator(&[]);
    env.put_source("raw", &[("token", PAT)]).await;
    env.put_credential(
        "c",
        json!({"sourceRef": {"name": "raw"}, "target": {"name": "old-name"}}),
    )
    .await;
    env.wait_reason("c", "Ready", "Synced").await;
    env.wait_secret("old-name", "published", |_| true).await;
    env.put_credential(
        "c",
        json!({"sourceRef": {"name": "raw"}, "target": {"name": "new-name"}}),
    )
    .await;
    env.wait_secret("new-name", "published", |_| true).await;
    wait_until(
        Duration::from_secs(10),
        "the old target to be deleted",
        || async { env.secrets().get_opt("old-name").await.unwrap().is_none() },
    )
    .await;
}

#[tokio::test]
async fn a_second_instance_agrees_and_writes_nothing() {
    let env = TestEnv::new("idem").await;
    let mut first = env.start_operator(&[]);
    env.put_source("raw", &[("token", PAT)]).await;
    env.put_credential("c", json!({"sourceRef": {"name": "raw"}}))
        .await;
    env.wait_reason("c", "Ready", "Synced").await;
    // Let the first instance settle, then stop it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    first.kill();
    let secret = env.secrets().get("c").await.unwrap();
    let cr = env.credentials().get("c").await.unwrap();

    let second = env.start_operator(&[]);
    wait_until(
        Duration::from_secs(20),
        "the second instance to reconcile",
        || async { second.logs().contains("reconciled") },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let secret_after = env.secrets().get("c").await.unwrap();
    let cr_after: MendixCredential = env.credentials().get("c").await.unwrap();
    assert_eq!(
        secret_after.metadata.resource_version, secret.metadata.resource_version,
        "target rewritten"
    );
    assert_eq!(
        cr_after.metadata.resource_version, cr.metadata.resource_version,
        "status rewritten"
    );
    assert!(second.logs().contains("\"wrote\":0"), "{}", second.logs());
    let synced = env
        .events()
        .await
        .into_iter()
        .filter(|e| e.starts_with("Normal Synced"))
        .count();
    assert_eq!(synced, 1, "one Synced Event for one write");
}

#[tokio::test]
async fn spec_changes_follow_through_to_status_and_target() {
    let env = TestEnv::new("statusfix").await;
    let _op = env.start_operator(&[]);
    env.put_source("raw", &[("token", PAT)]).await;
    env.put_credential("c", json!({"sourceRef": {"name": "raw"}}))
        .await;
    env.wait_reason("c", "Ready", "Synced").await;
    // A spec change bumps the generation; the status follows it.
    env.put_credential(
        "c",
        json!({"sourceRef": {"name": "raw"}, "target": {"labels": {"a": "b"}}}),
    )
    .await;
    wait_until(
        Duration::from_secs(10),
        "observedGeneration to follow",
        || async {
            let cr = env.credentials().get("c").await.unwrap();
            cr.status.and_then(|s| s.observed_generation) == cr.metadata.generation
        },
    )
    .await;
    env.wait_secret("c", "relabelled", |s| {
        s.metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.get("a").is_some_and(|v| v == "b"))
    })
    .await;
    // Removing a label from the spec removes it from the Secret.
    env.put_credential("c", json!({"sourceRef": {"name": "raw"}}))
        .await;
    env.wait_secret("c", "unlabelled", |s| {
        s.metadata
            .labels
            .as_ref()
            .is_some_and(|l| !l.contains_key("a"))
    })
    .await;
}

#[tokio::test]
async fn a_source_in_another_namespace_cannot_be_named() {
    let env = TestEnv::new("tenant").await;
    let other = TestEnv::new("victim").await;
    other.put_source("raw", &[("token", "victims-token")]).await;
    let _op = env.start_operator(&[]);
    let cr = json!({"apiVersion": "mxcred.io/v1alpha1", "kind": "MendixCredential",
        "metadata": {"name": "steal"},
        "spec": {"sourceRef": {"name": "raw", "namespace": other.ns}, "target": {"name": "t", "namespace": other.ns}}});

    // There is no namespace field: server-side apply (kubectl apply --server-side, Argo CD,
    // Flux) refuses it...
    let refused = env
        .credentials()
        .patch(
            "steal",
            &PatchParams::apply("mxcred-tests"),
            &Patch::Apply(&cr),
        )
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains(".spec.sourceRef.namespace: field not declared"),
        "{refused}"
    );

    // ...and a plain create has it pruned: the operator looks in the resource's namespace only.
    let raw: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(
        env.client.clone(),
        &env.ns,
        &kube::api::ApiResource::erase::<MendixCredential>(&()),
    );
    let sent: kube::api::DynamicObject = serde_json::from_value(cr).unwrap();
    assert!(sent.data["spec"]["sourceRef"].get("namespace").is_some());
    let stored = raw.create(&Default::default(), &sent).await.unwrap();
    let spec = &stored.data["spec"];
    assert!(spec["sourceRef"].get("namespace").is_none(), "{spec}");
    assert!(spec["target"].get("namespace").is_none(), "{spec}");
    env.wait_reason("steal", "Ready", "SourceNotFound").await;
    assert!(other.secrets().get_opt("t").await.unwrap().is_none());
}

/// Watches `name`: once the watch has listed, returns a task that yields the distinct versions
/// reported after that, until `done` holds and for three seconds more.
async fn versions<K>(
    api: kube::Api<K>,
    name: &str,
    done: impl Fn(&K) -> bool + Send + 'static,
) -> tokio::task::JoinHandle<Vec<String>>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    use futures::StreamExt;
    use kube::runtime::watcher::{self, Event};
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher::watcher(api, config).boxed();
    while !matches!(stream.next().await, Some(Ok(Event::InitDone))) {}
    let name = name.to_owned();
    tokio::spawn(async move {
        let mut seen: Vec<String> = vec![];
        let mut settled = None;
        loop {
            let deadline = settled.unwrap_or_else(|| Instant::now() + Duration::from_secs(20));
            let Ok(next) = tokio::time::timeout_at(deadline.into(), stream.next()).await else {
                assert!(settled.is_some(), "{name} never got there");
                return seen;
            };
            let Event::Apply(object) = next.unwrap().unwrap() else {
                continue;
            };
            let version = object.meta().resource_version.clone().unwrap();
            if !seen.contains(&version) {
                seen.push(version);
            }
            if settled.is_none() && done(&object) {
                settled = Some(Instant::now() + Duration::from_secs(3));
            }
        }
    })
}

#[tokio::test]
async fn a_new_resource_costs_one_target_write_one_status_write_and_two_events() {
    let env = TestEnv::new("once").await;
    let sim = mendix_simulator::Simulator::start().await;
    sim.set(PAT, mendix_simulator::State::Valid);
    let _op = env.start_operator_with_platform(&sim.base_url(), &[]);
    env.put_source("raw", &[("token", PAT)]).await;
    let statuses = versions(env.credentials(), "once", common::is_verified).await;
    let targets = versions(env.secrets(), "once", |_: &Secret| true).await;
    env.put_credential("once", json!({"sourceRef": {"name": "raw"}}))
        .await;
    let statuses = statuses.await.unwrap();
    assert_eq!(
        statuses.len(),
        2,
        "created, then one status write: {statuses:?}"
    );
    assert_eq!(targets.await.unwrap().len(), 1, "one target write");
    let events = env.events().await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(
        events.iter().any(|e| e.starts_with("Normal Synced")),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e.starts_with("Normal Verified")),
        "{events:?}"
    );

    // Another reconcile of the same resource (someone else's annotation starts one) writes
    // nothing: the status it would write equals the one read back, times and all.
    let after = versions(env.credentials(), "once", |cr: &MendixCredential| {
        cr.annotations().contains_key("example.com/note")
    })
    .await;
    env.credentials()
        .patch(
            "once",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"example.com/note": "x"}}})),
        )
        .await
        .unwrap();
    let after = after.await.unwrap();
    assert_eq!(after.len(), 1, "annotated, and no status write: {after:?}");
    assert_eq!(env.events().await.len(), 2);
}

#[tokio::test]
async fn watches_stream_their_initial_state_where_the_api_server_offers_it() {
    let env = TestEnv::new("streaming").await;
    // What the API server offers, asked as a plain client: a streamed watch that selects
    // nothing ends its initial state with the bookmark that says so.
    let params = kube::api::WatchParams::streaming_lists()
        .fields("metadata.name=none")
        .timeout(5);
    let offered = match env.credentials().watch(&params, "0").await {
        Ok(stream) => {
            let mut stream = std::pin::pin!(stream);
            matches!(
                futures::StreamExt::next(&mut stream).await,
                Some(Ok(kube::api::WatchEvent::Bookmark(b)))
                    if b.metadata.annotations.get("k8s.io/initial-events-end").map(String::as_str) == Some("true")
            )
        }
        Err(_) => false,
    };
    let op = env.start_operator(&[]);
    env.put_source("raw", &[("token", PAT)]).await;
    env.put_credential("c", json!({"sourceRef": {"name": "raw"}}))
        .await;
    env.wait_reason("c", "Ready", "Synced").await;
    let said = format!("\"streaming_lists\":{offered}");
    assert!(op.logs().contains(&said), "expected {said}: {}", op.logs());
    // The newest supported version offers it: the operator's start-up there is streamed.
    let version = env.client.apiserver_version().await.unwrap();
    let minor: u32 = version.minor.trim_end_matches('+').parse().unwrap();
    if minor >= 34 {
        assert!(
            offered,
            "Kubernetes {}.{minor} streams watches",
            version.major
        );
    }
}
