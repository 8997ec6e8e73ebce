//! Reconcile scenarios against a mocked API server (kube's `tower_test` pattern): the exact
//! requests each reconcile sends, in order. Faster than the real control plane, and exact where
//! it can only count: a cached resource sends nothing; a new one sends the reads and writes the
//! README promises; a conflict; a failed status write retried without losing the forced check
//! or its Event. (The same behaviours run on the real control plane in tests/operator.rs and
//! tests/two_loops.rs.)

use futures::StreamExt;
use http::{Method, Request, Response};
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use kube::client::Body;
use kube::runtime::events::Reporter;
use kube::runtime::watcher;
use kube::{Client, Resource};
use mendix_simulator::{Simulator, State};
use mxcred_operator::domain::api::{MendixCredential, MendixCredentialStatus};
use mxcred_operator::shell::consumers::ConsumerIndex;
use mxcred_operator::shell::context::{Context, Settings};
use mxcred_operator::shell::metrics::Metrics;
use mxcred_operator::shell::namespaced::Namespaced;
use mxcred_operator::shell::platform::{Platform, PlatformConfig};
use mxcred_operator::shell::reconcile::reconcile;
use mxcred_operator::shell::secrets::{SecretCache, SecretMeta};
use mxcred_operator::shell::verifier::Verifier;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use tokio::sync::oneshot;
use tower_test::mock::Handle;

const NS: &str = "ci";
const TOKEN: &str = "tok-scenario-1";

/// One expected request and the answer to give.
struct Expect {
    method: Method,
    path: String,
    status: u16,
    /// The answer's body; `None` echoes the request's body with a resource version.
    body: Option<Value>,
}

fn expect(method: Method, path: &str, status: u16, body: Option<Value>) -> Expect {
    Expect {
        method,
        path: path.to_owned(),
        status,
        body,
    }
}

fn get_source() -> Expect {
    let source = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "raw", "namespace": NS, "resourceVersion": "1", "labels": {"mxcred.io/source": "true"}},
        "type": "Opaque",
        "data": {"token": base64(TOKEN)},
    });
    expect(
        Method::GET,
        &format!("/api/v1/namespaces/{NS}/secrets/raw"),
        200,
        Some(source),
    )
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

fn target_path() -> String {
    format!("/api/v1/namespaces/{NS}/secrets/c")
}

fn secrets_path() -> String {
    format!("/api/v1/namespaces/{NS}/secrets")
}

fn status_path() -> String {
    format!("/apis/mxcred.io/v1alpha1/namespaces/{NS}/mendixcredentials/c/status")
}

fn events_path() -> String {
    format!("/apis/events.k8s.io/v1/namespaces/{NS}/events")
}

fn base64(text: &str) -> Value {
    serde_json::to_value(k8s_openapi::ByteString(text.as_bytes().to_vec())).unwrap()
}

fn server_error() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "InternalError", "code": 500, "message": "etcd is unhappy"})
}

/// The object a write stored: what was sent, named by its path, at version "2".
fn echo(mut body: Value, path: &str) -> Value {
    let name = path
        .trim_end_matches("/status")
        .rsplit('/')
        .next()
        .unwrap_or_default();
    let meta = body
        .as_object_mut()
        .expect("an object was sent")
        .entry("metadata")
        .or_insert_with(|| json!({}));
    meta["namespace"] = json!(NS);
    meta["resourceVersion"] = json!("2");
    meta["uid"] = json!("uid-c");
    if meta.get("name").is_none() {
        meta["name"] = json!(name);
    }
    if path.ends_with("/status") {
        // A status write answers with the whole resource.
        body["spec"] = json!({"sourceRef": {"name": "raw"}});
    }
    body
}

/// What the mocked API server saw: the bodies of the expected requests, and any request that
/// was not expected.
struct Seen {
    bodies: Vec<Value>,
    unexpected: Vec<String>,
}

/// Answers `expects` in order; any other request is answered 500 and reported.
fn api_server(
    mut handle: Handle<Request<Body>, Response<Body>>,
    expects: Vec<Expect>,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<Seen>) {
    let (done, mut finished) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut seen = Seen {
            bodies: vec![],
            unexpected: vec![],
        };
        let mut expects = expects.into_iter();
        loop {
            let next = tokio::select! {
                _ = &mut finished => break,
                next = handle.next_request() => next,
            };
            let Some((request, send)) = next else { break };
            let (method, path) = (request.method().clone(), request.uri().path().to_owned());
            let body = request.into_body().collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let answer = match expects.next() {
                Some(e) if e.method == method && e.path == path => {
                    seen.bodies.push(body.clone());
                    let answer = e.body.unwrap_or_else(|| echo(body, &path));
                    (e.status, answer)
                }
                other => {
                    seen.unexpected.push(format!(
                        "{method} {path} (expected {:?})",
                        other.map(|e| format!("{} {}", e.method, e.path))
                    ));
                    (500, not_found())
                }
            };
            let response = Response::builder()
                .status(answer.0)
                .body(Body::from(serde_json::to_vec(&answer.1).unwrap()))
                .unwrap();
            send.send_response(response);
        }
        seen.unexpected
            .extend(expects.map(|e| format!("never sent: {} {}", e.method, e.path)));
        seen
    });
    (done, task)
}

/// Runs one reconcile of `cr` against a mocked API server that expects `expects`; returns the
/// request bodies, after checking that exactly those requests were made.
async fn scenario(
    ctx: &mut Arc<Context>,
    cr: &MendixCredential,
    expects: Vec<Expect>,
) -> (Result<(), String>, Vec<Value>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    Arc::get_mut(ctx).expect("the context is not shared").client = Client::new(service, NS);
    let (done, server) = api_server(handle, expects);
    let guard = Arc::new(kube::core::DeserializeGuard(Ok(cr.clone())));
    let result = reconcile(guard, Arc::new(Namespaced(ctx.clone()))).await;
    let _ = done.send(());
    let seen = server.await.unwrap();
    let result = result.map(|_| ()).map_err(|e| e.to_string());
    assert!(
        seen.unexpected.is_empty(),
        "{:?}; the reconcile returned {result:?}",
        seen.unexpected
    );
    (result, seen.bodies)
}

fn context(platform: &str, secrets: SecretCache) -> (Arc<Context>, Arc<Verifier>) {
    let (service, _) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let metrics = Arc::new(Metrics::default());
    let mut probe_urls = BTreeMap::new();
    for probe in mxcred_operator::domain::probe::NamedProbe::ALL {
        let url = format!("{platform}/api/v4/apps?limit=1");
        probe_urls.insert(probe, url.parse().unwrap());
    }
    let config = PlatformConfig {
        probe_urls,
        allowed_hosts: BTreeSet::from(["127.0.0.1".to_owned()]),
        allow_http: true,
        extra_ca_file: None,
        qps: NonZeroU32::new(5).unwrap(),
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(5),
    };
    let verifier = Arc::new(Verifier::new(
        Platform::new(config, metrics.clone()).unwrap(),
        metrics.clone(),
        Duration::from_secs(60),
    ));
    let ctx = Context {
        client: Client::new(service, NS),
        reporter: Reporter {
            controller: "mxcred-operator".into(),
            instance: None,
        },
        secrets,
        settings: Settings {
            namespaces: vec![],
            default_interval: Duration::from_secs(3600),
            default_max_age: None,
            concurrency: 1,
            test_interval: None,
            denied_metadata_prefixes: vec![],
            restart_min_interval: Duration::from_secs(60),
            restart_retry: Duration::from_secs(60),
            discover_consumers: true,
        },
        verifier: verifier.clone(),
        tracker: Arc::default(),
        metrics,
        retries: Arc::default(),
        events: Arc::default(),
        status_writes: Default::default(),
        consumers: Arc::new(ConsumerIndex::new(true)),
        streaming_lists: false,
    };
    (Arc::new(ctx), verifier)
}

fn resource(verification: Value) -> MendixCredential {
    let mut cr: MendixCredential = serde_json::from_value(json!({
        "apiVersion": "mxcred.io/v1alpha1", "kind": "MendixCredential",
        "metadata": {"name": "c", "namespace": NS, "uid": "uid-c", "generation": 1, "resourceVersion": "10"},
        "spec": {"sourceRef": {"name": "raw"}, "verification": verification},
    }))
    .unwrap();
    cr.meta_mut().managed_fields = None;
    cr
}

fn with_status(mut cr: MendixCredential, status: &Value, version: &str) -> MendixCredential {
    cr.status = Some(serde_json::from_value::<MendixCredentialStatus>(status.clone()).unwrap());
    cr.metadata.resource_version = Some(version.into());
    cr
}

fn reasons_of(bodies: &[Value]) -> Vec<String> {
    bodies
        .iter()
        .filter_map(|b| b.get("reason").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

/// Someone else's Secret under the target's name, with `labels`.
fn foreign_target(labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "c", "namespace": NS, "resourceVersion": "5", "labels": labels},
        "data": {"password": base64("hunter2")},
    })
}

/// A reconcile that finds `foreign` under the target's name reports `TargetConflict`, with its
/// Warning Event, and writes nothing to the Secret.
async fn conflict_is_reported(ctx: &mut Arc<Context>, cr: &MendixCredential, foreign: Value) {
    let found = vec![expect(Method::GET, &target_path(), 200, Some(foreign))];
    conflict_is_reported_after(ctx, cr, found).await;
}

/// A reconcile that finds a foreign Secret by `finding` it reports `TargetConflict`, with its
/// Event, and writes nothing to the target.
async fn conflict_is_reported_after(
    ctx: &mut Arc<Context>,
    cr: &MendixCredential,
    finding: Vec<Expect>,
) {
    let at = finding.len() + 1;
    let mut expects = vec![get_source()];
    expects.extend(finding);
    expects.push(expect(Method::PATCH, &status_path(), 200, None));
    expects.push(expect(Method::POST, &events_path(), 201, None));
    let (result, bodies) = scenario(ctx, cr, expects).await;
    result.unwrap();
    assert_eq!(
        bodies[at]["status"]["conditions"][0]["reason"],
        "TargetConflict"
    );
    assert_eq!(reasons_of(&bodies[at + 1..]), ["TargetConflict"]);
}

/// A Secret cache whose watches are current and report `secrets` at their versions.
fn cache_holding(secrets: &[(&str, &str)]) -> SecretCache {
    let cache = SecretCache::default();
    let mut writer = mxcred_operator::shell::secrets::Versions::default();
    writer.apply(&watcher::Event::Init);
    for (name, version) in secrets {
        let meta = SecretMeta {
            types: None,
            metadata: ObjectMeta {
                name: Some((*name).into()),
                namespace: Some(NS.into()),
                resource_version: Some((*version).into()),
                ..ObjectMeta::default()
            },
            _phantom: Default::default(),
        };
        writer.apply(&watcher::Event::InitApply(meta));
    }
    writer.apply(&watcher::Event::InitDone);
    cache.watch(writer.reader(), Arc::new(AtomicBool::new(true)));
    cache
}

#[tokio::test]
async fn a_new_resource_sends_the_reads_and_writes_the_readme_promises() {
    let (mut ctx, _) = context("http://127.0.0.1:9", SecretCache::default());
    let cr = resource(json!({"enabled": false}));

    let (result, bodies) = scenario(
        &mut ctx,
        &cr,
        vec![
            get_source(),
            expect(Method::GET, &target_path(), 404, Some(not_found())),
            expect(Method::POST, &secrets_path(), 201, None),
            expect(Method::PATCH, &status_path(), 200, None),
            expect(Method::POST, &events_path(), 201, None),
        ],
    )
    .await;
    result.unwrap();
    let target: Secret = serde_json::from_value(bodies[2].clone()).unwrap();
    assert_eq!(
        target.metadata.resource_version, None,
        "created, not applied: a Secret made meanwhile fails it"
    );
    assert!(target.data.unwrap().contains_key("MENDIX_TOKEN"));
    assert_eq!(bodies[3]["status"]["conditions"][0]["reason"], "Synced");
    assert_eq!(reasons_of(&bodies[4..]), ["Synced"]);
}

#[tokio::test]
async fn a_target_created_meanwhile_is_never_taken_over() {
    let (mut ctx, _) = context("http://127.0.0.1:9", SecretCache::default());
    let cr = resource(json!({"enabled": false}));
    let exists = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "reason": "AlreadyExists", "code": 409, "message": "secrets \"c\" already exists"});
    let (result, _) = scenario(
        &mut ctx,
        &cr,
        vec![
            get_source(),
            expect(Method::GET, &target_path(), 404, Some(not_found())),
            expect(Method::POST, &secrets_path(), 409, Some(exists)),
        ],
    )
    .await;
    let error = result.unwrap_err();
    assert!(error.contains("HTTP 409"), "{error}");
    // The retry finds the other Secret, and reports the conflict without writing it.
    // Labelled as ours, but neither owned nor written by us.
    let labels =
        json!({"app.kubernetes.io/managed-by": "mxcred-operator", "mxcred.io/credential": "c"});
    conflict_is_reported(&mut ctx, &cr, foreign_target(labels)).await;
}

#[tokio::test]
async fn a_cached_resource_sends_nothing() {
    let (mut ctx, _) = context(
        "http://127.0.0.1:9",
        cache_holding(&[("raw", "1"), ("c", "2")]),
    );
    let cr = resource(json!({"enabled": false}));
    // The first reconcile reads what it has not seen: the source, and the target it finds as
    // it would write it.
    let (_, first) = scenario(
        &mut ctx,
        &cr,
        vec![
            get_source(),
            expect(Method::GET, &target_path(), 404, Some(not_found())),
            expect(Method::POST, &secrets_path(), 201, None),
            expect(Method::PATCH, &status_path(), 200, None),
            expect(Method::POST, &events_path(), 201, None),
        ],
    )
    .await;
    // Then, with the status it wrote and both Secrets as the watches report them: nothing.
    let cr = with_status(cr, &first[3]["status"], "11");
    let (result, bodies) = scenario(&mut ctx, &cr, vec![]).await;
    result.unwrap();
    assert!(bodies.is_empty());
}

#[tokio::test]
async fn a_target_the_watch_does_not_report_is_created_without_a_read() {
    // The watches are current and report the source, not the target.
    let (mut ctx, _) = context("http://127.0.0.1:9", cache_holding(&[("raw", "1")]));
    let cr = resource(json!({"enabled": false}));
    let (result, bodies) = scenario(
        &mut ctx,
        &cr,
        vec![
            get_source(),
            expect(Method::POST, &secrets_path(), 201, None),
            expect(Method::PATCH, &status_path(), 200, None),
            expect(Method::POST, &events_path(), 201, None),
        ],
    )
    .await;
    result.unwrap();
    let target: Secret = serde_json::from_value(bodies[1].clone()).unwrap();
    assert_eq!(
        target.metadata.resource_version, None,
        "created, not applied"
    );
    assert_eq!(bodies[2]["status"]["conditions"][0]["reason"], "Synced");
}

#[tokio::test]
async fn a_foreign_target_the_watch_does_not_report_refuses_the_create_and_is_left_alone() {
    let (mut ctx, _) = context("http://127.0.0.1:9", cache_holding(&[("raw", "1")]));
    let cr = resource(json!({"enabled": false}));
    let exists = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "reason": "AlreadyExists", "code": 409, "message": "secrets \"c\" already exists"});
    let foreign = foreign_target(json!({"app": "theirs"}));
    let finding = vec![
        expect(Method::POST, &secrets_path(), 409, Some(exists)),
        expect(Method::GET, &target_path(), 200, Some(foreign)),
    ];
    conflict_is_reported_after(&mut ctx, &cr, finding).await;
}

#[tokio::test]
async fn a_foreign_target_is_a_conflict_and_is_left_alone() {
    let (mut ctx, _) = context("http://127.0.0.1:9", SecretCache::default());
    let cr = resource(json!({"enabled": false}));
    conflict_is_reported(&mut ctx, &cr, foreign_target(json!({}))).await;
}

#[tokio::test]
async fn a_created_target_is_claimed_for_apply_before_its_first_change() {
    let (mut ctx, _) = context("http://127.0.0.1:9", SecretCache::default());
    let cr = resource(json!({"enabled": false}));
    // As the creation left it: our entry is an update, and its data is an older token.
    let created = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "c", "namespace": NS, "resourceVersion": "5",
            "labels": {"app.kubernetes.io/managed-by": "mxcred-operator", "mxcred.io/credential": "c"},
            "ownerReferences": [{"apiVersion": "mxcred.io/v1alpha1", "kind": "MendixCredential",
                "name": "c", "uid": "uid-c", "controller": true, "blockOwnerDeletion": true}],
            "managedFields": [
                {"manager": "kubectl", "operation": "Update", "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {}},
                {"manager": "mxcred-operator", "operation": "Update", "apiVersion": "v1",
                 "time": "2026-01-01T00:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": {}}]},
        "data": {"MENDIX_TOKEN": base64("old-token")},
    });
    let mut claimed = created.clone();
    claimed["metadata"]["resourceVersion"] = json!("6");
    claimed["metadata"]["managedFields"][1]["operation"] = json!("Apply");
    let (result, bodies) = scenario(
        &mut ctx,
        &cr,
        vec![
            get_source(),
            expect(Method::GET, &target_path(), 200, Some(created)),
            expect(Method::PATCH, &target_path(), 200, Some(claimed)),
            expect(Method::PATCH, &target_path(), 200, None),
            expect(Method::PATCH, &status_path(), 200, None),
            expect(Method::POST, &events_path(), 201, None),
        ],
    )
    .await;
    result.unwrap();
    assert_eq!(
        bodies[2],
        json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": "5"},
            {"op": "test", "path": "/metadata/managedFields/1/manager", "value": "mxcred-operator"},
            {"op": "replace", "path": "/metadata/managedFields/1/operation", "value": "Apply"},
        ]),
        "the creation's entry becomes an apply entry, on condition"
    );
    assert_eq!(
        bodies[3]["metadata"]["resourceVersion"], "6",
        "the apply is conditional on the claimed version"
    );
}

#[tokio::test]
async fn a_failed_status_write_is_retried_with_its_forced_check_and_event() {
    let sim = Simulator::start().await;
    sim.set(TOKEN, State::Valid);
    let (mut ctx, verifier) = context(&sim.base_url(), cache_holding(&[("raw", "1"), ("c", "2")]));
    let mut answered = verifier.routes(&[None]).remove(0);
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(verifier.clone().run(shutdown.clone()));
    let cr = resource(json!({}));

    // New: the target is written; the status waits for the first answer.
    let (result, _) = scenario(
        &mut ctx,
        &cr,
        vec![
            get_source(),
            expect(Method::GET, &target_path(), 404, Some(not_found())),
            expect(Method::POST, &secrets_path(), 201, None),
        ],
    )
    .await;
    result.unwrap();
    answered
        .next()
        .await
        .expect("the verification loop answers");
    // Answered: one status write with both conditions, and its two Events.
    let (result, bodies) = scenario(
        &mut ctx,
        &cr,
        vec![
            expect(Method::PATCH, &status_path(), 200, None),
            expect(Method::POST, &events_path(), 201, None),
            expect(Method::POST, &events_path(), 201, None),
        ],
    )
    .await;
    result.unwrap();
    assert_eq!(reasons_of(&bodies[1..]), ["Synced", "Verified"]);
    let verified = with_status(cr, &bodies[0]["status"], "11");
    assert_eq!(sim.requests(TOKEN), 1);

    // A check is forced after the token was deleted; the status write of its answer fails.
    sim.set(TOKEN, State::Deleted);
    let mut forced = verified.clone();
    forced
        .meta_mut()
        .annotations
        .get_or_insert_default()
        .insert("mxcred.io/verify-requested-at".into(), "now".into());
    forced.metadata.resource_version = Some("12".into());
    let (result, _) = scenario(&mut ctx, &forced, vec![]).await;
    result.unwrap();
    answered.next().await.expect("the forced check answers");
    assert_eq!(sim.requests(TOKEN), 2);
    let (result, _) = scenario(
        &mut ctx,
        &forced,
        vec![expect(
            Method::PATCH,
            &status_path(),
            500,
            Some(server_error()),
        )],
    )
    .await;
    let error = result.unwrap_err();
    assert!(
        error.starts_with("writing the status failed: HTTP 500"),
        "{error}"
    );
    assert!(
        !error.contains("etcd"),
        "the server's message is not repeated: {error}"
    );

    // The retry writes the verdict and announces it; the platform is not asked again.
    let (result, bodies) = scenario(
        &mut ctx,
        &forced,
        vec![
            expect(Method::PATCH, &status_path(), 200, None),
            expect(Method::POST, &events_path(), 201, None),
        ],
    )
    .await;
    result.unwrap();
    let conditions = bodies[0]["status"]["conditions"].as_array().unwrap();
    assert!(
        conditions.iter().any(|c| c["reason"] == "TokenRejected"),
        "{conditions:?}"
    );
    assert_eq!(reasons_of(&bodies[1..]), ["TokenRejected"]);
    assert_eq!(sim.requests(TOKEN), 2);

    // Written, and served: another reconcile neither writes nor asks again.
    let settled = with_status(forced, &bodies[0]["status"], "13");
    let (result, _) = scenario(&mut ctx, &settled, vec![]).await;
    result.unwrap();
    assert_eq!(sim.requests(TOKEN), 2);
    shutdown.cancel();
}

/// A Deployment `runner` of group apps, its pod template holding `annotations`.
fn deployment(annotations: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "runner", "namespace": NS, "resourceVersion": "7", "generation": 1,
            "annotations": {"mxcred.io/restart-on": "c"}},
        "spec": {"selector": {"matchLabels": {"app": "runner"}}, "template": {
            "metadata": {"labels": {"app": "runner"}, "annotations": annotations},
            "spec": {"containers": [{"name": "runner", "image": "runner:1",
                "env": [{"name": "UNRELATED", "value": "not-for-any-log"}]}]}}},
    })
}

fn forbidden() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
        "message": "statefulsets.apps \"db\" is forbidden: User \"system:serviceaccount:x:y\" cannot get resource"})
}

#[tokio::test]
async fn workloads_are_read_and_patched_only_when_they_hold_another_credential() {
    let (mut ctx, _) = context(
        "http://127.0.0.1:9",
        cache_holding(&[("raw", "1"), ("c", "2")]),
    );
    let mut cr = resource(json!({"enabled": false}));
    cr.spec.target = Some(
        serde_json::from_value(json!({"rolloutRestart": [
            {"kind": "Deployment", "name": "runner"}, {"kind": "StatefulSet", "name": "db"}]}))
        .unwrap(),
    );
    let runner = format!("/apis/apps/v1/namespaces/{NS}/deployments/runner");
    let db = format!("/apis/apps/v1/namespaces/{NS}/statefulsets/db");
    let (result, first) = scenario(
        &mut ctx,
        &cr,
        vec![
            get_source(),
            expect(Method::GET, &target_path(), 404, Some(not_found())),
            expect(Method::POST, &secrets_path(), 201, None),
            expect(
                Method::GET,
                &runner,
                200,
                Some(deployment(json!({"other": "x"}))),
            ),
            expect(Method::PATCH, &runner, 200, None),
            expect(Method::GET, &db, 403, Some(forbidden())),
            expect(Method::PATCH, &status_path(), 200, None),
            expect(Method::POST, &events_path(), 201, None),
            expect(Method::POST, &events_path(), 201, None),
            expect(Method::POST, &events_path(), 201, None),
        ],
    )
    .await;
    result.unwrap();
    let target: Secret = serde_json::from_value(first[2].clone()).unwrap();
    let fingerprint = target.metadata.annotations.unwrap()["mxcred.io/token-fingerprint"].clone();
    // The apply sets the resource's annotation and nothing else.
    assert_eq!(
        first[4],
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "runner"},
            "spec": {"template": {"metadata": {"annotations": {"restart.mxcred.io/c": fingerprint}}}}})
    );
    let status = &first[6]["status"];
    assert_eq!(status["conditions"][0]["reason"], "Synced");
    assert_eq!(
        status["rolloutRestart"],
        json!([
            {"kind": "Deployment", "name": "runner", "fingerprint": fingerprint},
            {"kind": "StatefulSet", "name": "db", "reason": "Forbidden", "message":
                "the operator may not read StatefulSet \"db\" (HTTP 403 Forbidden): the chart must be \
                 installed with rolloutRestart.enabled=true, which grants get and patch on \
                 Deployments, StatefulSets and DaemonSets; or an admission policy refused it"},
        ])
    );
    assert_eq!(
        reasons_of(&first[7..]),
        ["Synced", "RolloutRestartFailed", "RolloutRestarted"]
    );

    // With the status it wrote, at once: the workloads are not due again (the refused one is
    // tried again after a growing delay), so nothing is read or written.
    let cr = with_status(cr, status, "11");
    let (result, _) = scenario(&mut ctx, &cr, vec![]).await;
    result.unwrap();

    // Once due (here: a fresh memory): the workloads are read again (they are not watched), the
    // one holding the credential is not patched, and nothing else is written.
    Arc::get_mut(&mut ctx).expect("not shared").retries = Arc::default();
    let mut restarted = deployment(json!({"restart.mxcred.io/c": fingerprint}));
    restarted["metadata"]["generation"] = json!(2);
    let (result, _) = scenario(
        &mut ctx,
        &cr,
        vec![
            expect(Method::GET, &runner, 200, Some(restarted)),
            expect(Method::GET, &db, 403, Some(forbidden())),
        ],
    )
    .await;
    result.unwrap();
}
