//! Reconcile scenarios of ClusterMendixCredentials against a mocked API server (kube's
//! `tower_test` pattern), as tests/scenarios.rs has them for MendixCredentials: the exact
//! requests each reconcile sends, and the facts of their bodies that matter. A new resource over
//! three selected namespaces; a foreign Secret under the target's name in one of them; a
//! rotation of the source; namespaces that leave the selection, one holding our copy and one a
//! foreign Secret that claims to be ours by its label. (The same behaviours run on the real
//! control plane in tests/cluster.rs.)
//!
//! The copies of the namespaces are written a few at a time, so the requests of different
//! namespaces interleave in any order: a step of the expected sequence is a set of chains, one
//! per namespace, each in its exact order, and the step ends only when all of them were sent.

use http::{Method, Request, Response};
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use kube::{Client, Resource};
use mxcred_operator::domain::cluster::{ClusterMendixCredential, ClusterMendixCredentialStatus};
use mxcred_operator::shell::cluster::{ClusterContext, NamespaceMeta};
use mxcred_operator::shell::consumers::ConsumerIndex;
use mxcred_operator::shell::context::{CONFLICT_RETRY, Context, Settings};
use mxcred_operator::shell::metrics::Metrics;
use mxcred_operator::shell::platform::{Platform, PlatformConfig};
use mxcred_operator::shell::reconcile::reconcile;
use mxcred_operator::shell::secrets::{SecretCache, SecretMeta};
use mxcred_operator::shell::verifier::Verifier;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::num::NonZeroU32;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower_test::mock::Handle;

const NAME: &str = "shared";
const UID: &str = "uid-shared";
const SOURCE_NS: &str = "ops";
const TOKEN: &str = "tok-cluster-1";
const NEW_TOKEN: &str = "tok-cluster-2";
/// The namespaces the resource's selector matches.
const SELECTED: [&str; 3] = ["team-a", "team-b", "team-c"];
/// The resync of a resource whose copies all hold the credential.
const RESYNC: Duration = Duration::from_secs(3600);

/// One expected request and the answer to give.
struct Expect {
    method: Method,
    path: String,
    status: u16,
    /// The answer's body; `None` echoes the request's body as the API server would store it.
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

/// One step of a reconcile: chains of requests that may interleave, each sent in its order.
type Step = Vec<Vec<Expect>>;

/// A step of one request.
fn one(e: Expect) -> Step {
    vec![vec![e]]
}

/// A step of one chain per namespace.
fn each(namespaces: &[&str], chain: impl Fn(&str) -> Vec<Expect>) -> Step {
    namespaces.iter().map(|ns| chain(ns)).collect()
}

/// A request the mocked API server answered as expected.
struct Sent {
    method: Method,
    path: String,
    body: Value,
}

/// What the mocked API server expects and saw during one reconcile.
#[derive(Default)]
struct Script {
    steps: VecDeque<Step>,
    sent: Vec<Sent>,
    unexpected: Vec<String>,
}

impl Script {
    /// The answer to a request: the head of a chain of the current step that it matches.
    fn answer(&mut self, method: Method, path: String, body: Value) -> (u16, Value) {
        while self
            .steps
            .front()
            .is_some_and(|s| s.iter().all(Vec::is_empty))
        {
            self.steps.pop_front();
        }
        let matched = self.steps.front_mut().and_then(|step| {
            let chain = step.iter_mut().find(|chain| {
                chain
                    .first()
                    .is_some_and(|e| e.method == method && e.path == path)
            })?;
            Some(chain.remove(0))
        });
        let Some(e) = matched else {
            let heads: Vec<String> = self
                .steps
                .front()
                .into_iter()
                .flatten()
                .filter_map(|chain| chain.first())
                .map(|e| format!("{} {}", e.method, e.path))
                .collect();
            self.unexpected
                .push(format!("{method} {path} (expected one of {heads:?})"));
            return (500, status_body(500, "InternalError"));
        };
        let answer = e.body.unwrap_or_else(|| echo(&method, body.clone(), &path));
        self.sent.push(Sent { method, path, body });
        (e.status, answer)
    }

    fn never_sent(&self) -> Vec<String> {
        self.steps
            .iter()
            .flatten()
            .flatten()
            .map(|e| format!("never sent: {} {}", e.method, e.path))
            .collect()
    }
}

/// Answers every request of a test from the script it holds at the time, but for the list
/// that starts the watch of sources in a namespace: it is never answered, so that the watch's
/// cache stays empty and each reconcile reads its source.
fn api_server(mut handle: Handle<Request<Body>, Response<Body>>, script: Arc<Mutex<Script>>) {
    tokio::spawn(async move {
        let mut unanswered = vec![];
        while let Some((request, send)) = handle.next_request().await {
            let (method, path) = (request.method().clone(), request.uri().path().to_owned());
            let query = request.uri().query().unwrap_or_default();
            if method == Method::GET
                && path.ends_with("/secrets")
                && query.contains("labelSelector=mxcred.io%2Fsource%3Dtrue")
            {
                unanswered.push(send);
                continue;
            }
            let body = request.into_body().collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let (status, answer) = script.lock().unwrap().answer(method, path, body);
            let response = Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap();
            send.send_response(response);
        }
    });
}

/// The object a write stored: what was sent, named and placed by its path, at version "2" when
/// created, else "4"; a Secret written by us has our field manager's entry (an update when
/// created, else an apply), at a time of its own.
fn echo(method: &Method, mut body: Value, path: &str) -> Value {
    let parts: Vec<&str> = path.split('/').collect();
    let namespace = parts
        .iter()
        .position(|p| *p == "namespaces")
        .and_then(|i| parts.get(i + 1));
    let is_status = path.ends_with("/status");
    let name = path.trim_end_matches("/status").rsplit('/').next();
    let is_secret = body["kind"] == "Secret";
    let meta = body
        .as_object_mut()
        .expect("an object was sent")
        .entry("metadata")
        .or_insert_with(|| json!({}));
    if let Some(ns) = namespace {
        meta["namespace"] = json!(ns);
    }
    if meta.get("name").is_none() {
        meta["name"] = json!(name);
    }
    let created = *method == Method::POST;
    meta["resourceVersion"] = json!(if created { "2" } else { "4" });
    meta["uid"] = json!(format!("uid-{}", namespace.unwrap_or(&"cluster")));
    if is_secret {
        let (operation, time) = if created {
            ("Update", "2026-01-01T00:00:00Z")
        } else {
            ("Apply", "2026-01-02T00:00:00Z")
        };
        meta["managedFields"] = json!([{"manager": "mxcred-operator", "operation": operation,
            "apiVersion": "v1", "time": time, "fieldsType": "FieldsV1", "fieldsV1": {}}]);
    }
    if is_status {
        // A status write answers with the whole resource.
        meta["uid"] = json!(UID);
        body["spec"] = json!({"sourceRef": {"namespace": SOURCE_NS, "name": "raw"}, "target": {}});
    }
    body
}

fn status_body(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
        "code": code, "message": "not for any log"})
}

fn base64(text: &str) -> Value {
    serde_json::to_value(k8s_openapi::ByteString(text.as_bytes().to_vec())).unwrap()
}

fn copy_path(ns: &str) -> String {
    format!("/api/v1/namespaces/{ns}/secrets/{NAME}")
}

fn secrets_path(ns: &str) -> String {
    format!("/api/v1/namespaces/{ns}/secrets")
}

fn status_path() -> String {
    format!("/apis/mxcred.io/v1alpha1/clustermendixcredentials/{NAME}/status")
}

/// Events of a cluster-scoped object go to the namespace `default`.
fn events_path() -> String {
    "/apis/events.k8s.io/v1/namespaces/default/events".into()
}

/// The source Secret, holding `token`.
fn get_source(token: &str) -> Step {
    let source = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "raw", "namespace": SOURCE_NS, "resourceVersion": "1",
            "labels": {"mxcred.io/source": "true"}},
        "data": {"token": base64(token)},
    });
    one(expect(
        Method::GET,
        &format!("/api/v1/namespaces/{SOURCE_NS}/secrets/raw"),
        200,
        Some(source),
    ))
}

/// The copy of `ns` is not there (the watch of copies reports none), and is created at once.
fn created(ns: &str) -> Vec<Expect> {
    vec![expect(Method::POST, &secrets_path(ns), 201, None)]
}

/// The watch of copies reports none in `ns`, but `existing` is there: the create is refused,
/// and the Secret is read.
fn in_the_way(ns: &str, existing: &Value) -> Vec<Expect> {
    vec![
        expect(
            Method::POST,
            &secrets_path(ns),
            409,
            Some(status_body(409, "AlreadyExists")),
        ),
        expect(Method::GET, &copy_path(ns), 200, Some(existing.clone())),
    ]
}

fn write_status() -> Step {
    one(expect(Method::PATCH, &status_path(), 200, None))
}

fn event() -> Step {
    one(expect(Method::POST, &events_path(), 201, None))
}

/// Someone else's Secret under the target's name in `ns`, with `labels`.
fn foreign(ns: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": NAME, "namespace": ns, "resourceVersion": "5", "uid": "uid-foreign",
            "labels": labels},
        "data": {"password": base64("hunter2")},
    })
}

/// A namespace as its watch reports it.
fn namespace(name: &str, labels: &[(&str, &str)]) -> NamespaceMeta {
    NamespaceMeta {
        types: None,
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).into(), (*v).into()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        _phantom: Default::default(),
    }
}

/// A Secret as the watch of copies reports it (its metadata).
fn copy_meta(secret: &Value) -> SecretMeta {
    SecretMeta {
        types: None,
        metadata: serde_json::from_value(secret["metadata"].clone()).unwrap(),
        _phantom: Default::default(),
    }
}

/// A cache whose watch is current and reports `objects`.
fn cache<K>(objects: Vec<K>) -> (reflector::Store<K>, Writer<K>)
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let (reader, mut writer) = reflector::store::<K>();
    writer.apply_watcher_event(&watcher::Event::Init);
    for object in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(object));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    (reader, writer)
}

/// The operator's side of a test: the context of its reconciles, the caches it reads (kept
/// current by the test), and the mocked API server.
struct World {
    cc: Arc<ClusterContext>,
    namespaces: Writer<NamespaceMeta>,
    copies: Writer<SecretMeta>,
    script: Arc<Mutex<Script>>,
}

/// What one reconcile did.
struct Reconciled {
    result: Result<Action, String>,
    sent: Vec<Sent>,
}

impl Reconciled {
    /// The bodies of the requests sent to `method` `path`, in order.
    fn bodies(&self, method: Method, path: &str) -> Vec<&Value> {
        self.sent
            .iter()
            .filter(|s| s.method == method && s.path == path)
            .map(|s| &s.body)
            .collect()
    }

    /// The body of the one request sent to `method` `path`.
    fn body(&self, method: Method, path: &str) -> &Value {
        let found = self.bodies(method.clone(), path);
        assert_eq!(found.len(), 1, "{method} {path} sent {} times", found.len());
        found[0]
    }

    /// Each of `namespaces`' copy as the API server stored its creation.
    fn stored(&self, namespaces: &[&str]) -> BTreeMap<String, Value> {
        namespaces
            .iter()
            .map(|ns| {
                let sent = self.body(Method::POST, &secrets_path(ns)).clone();
                (ns.to_string(), echo(&Method::POST, sent, &secrets_path(ns)))
            })
            .collect()
    }

    fn status(&self) -> &Value {
        &self.body(Method::PATCH, &status_path())["status"]
    }

    /// The Events published, as (type, reason, note).
    fn events(&self) -> Vec<(String, String, String)> {
        self.sent
            .iter()
            .filter(|s| s.path == events_path())
            .map(|s| {
                let text = |k: &str| s.body[k].as_str().unwrap_or_default().to_owned();
                (text("type"), text("reason"), text("note"))
            })
            .collect()
    }
}

impl World {
    /// `namespaces` exist, with their labels; the watch of copies reports none.
    fn new(namespaces: &[(&str, &[(&str, &str)])]) -> World {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let script = Arc::new(Mutex::new(Script::default()));
        api_server(handle, script.clone());
        let (namespaces, namespace_writer) = cache(
            namespaces
                .iter()
                .map(|(name, labels)| namespace(name, labels))
                .collect(),
        );
        let (copies, copy_writer) = cache(vec![]);
        let (cc, _) = ClusterContext::new(
            context(Client::new(service, "default")),
            namespaces,
            copies,
            [
                Arc::new(AtomicBool::new(true)),
                Arc::new(AtomicBool::new(true)),
            ],
        );
        World {
            cc: Arc::new(cc),
            namespaces: namespace_writer,
            copies: copy_writer,
            script,
        }
    }

    /// Runs one reconcile of `cr`, after checking that it sent exactly the requests of `steps`.
    async fn reconcile(&self, cr: &ClusterMendixCredential, steps: Vec<Step>) -> Reconciled {
        let between = std::mem::replace(
            &mut *self.script.lock().unwrap(),
            Script {
                steps: steps.into(),
                ..Script::default()
            },
        );
        assert!(
            between.unexpected.is_empty(),
            "sent after the reconcile before: {:?}",
            between.unexpected
        );
        let guard = Arc::new(kube::core::DeserializeGuard(Ok(cr.clone())));
        let result = reconcile(guard, self.cc.clone())
            .await
            .map_err(|e| e.to_string());
        let script = std::mem::take(&mut *self.script.lock().unwrap());
        let mut wrong = script.unexpected.clone();
        wrong.extend(script.never_sent());
        assert!(
            wrong.is_empty(),
            "{wrong:?}; the reconcile returned {result:?}"
        );
        Reconciled {
            result,
            sent: script.sent,
        }
    }
}

fn context(client: Client) -> Arc<Context> {
    let metrics = Arc::new(Metrics::default());
    let mut probe_urls = BTreeMap::new();
    for probe in mxcred_operator::domain::probe::NamedProbe::ALL {
        probe_urls.insert(probe, "http://127.0.0.1:9/api/v4/apps".parse().unwrap());
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
    Arc::new(Context {
        client,
        reporter: Reporter {
            controller: "mxcred-operator".into(),
            instance: None,
        },
        secrets: SecretCache::default(),
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
        verifier,
        tracker: Arc::default(),
        metrics,
        retries: Arc::default(),
        events: Arc::default(),
        status_writes: Default::default(),
        consumers: Arc::new(ConsumerIndex::new(true)),
        streaming_lists: false,
    })
}

/// The resource: namespaces labelled `team: payments` are selected; the platform is not asked.
fn resource() -> ClusterMendixCredential {
    let mut cr: ClusterMendixCredential = serde_json::from_value(json!({
        "apiVersion": "mxcred.io/v1alpha1", "kind": "ClusterMendixCredential",
        "metadata": {"name": NAME, "uid": UID, "generation": 1, "resourceVersion": "10"},
        "spec": {
            "sourceRef": {"namespace": SOURCE_NS, "name": "raw"},
            "target": {"namespaceSelector": {"matchLabels": {"team": "payments"}}},
            "verification": {"enabled": false},
        },
    }))
    .unwrap();
    cr.meta_mut().managed_fields = None;
    cr
}

/// The resource as the watch brings it after the status write: with that status.
fn with_status(
    mut cr: ClusterMendixCredential,
    status: &Value,
    version: &str,
) -> ClusterMendixCredential {
    cr.status =
        Some(serde_json::from_value::<ClusterMendixCredentialStatus>(status.clone()).unwrap());
    cr.metadata.resource_version = Some(version.into());
    cr
}

const PAYMENTS: &[(&str, &str)] = &[("team", "payments")];

/// Three selected namespaces, one more that is not, and the source's.
fn three_selected() -> World {
    World::new(&[
        ("team-a", PAYMENTS),
        ("team-b", PAYMENTS),
        ("team-c", PAYMENTS),
        ("elsewhere", &[("team", "billing")]),
        (SOURCE_NS, &[]),
    ])
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no condition {type_} in {status}"))
}

fn token_of(copy: &Value) -> Vec<u8> {
    let secret: Secret = serde_json::from_value(copy.clone()).unwrap();
    secret.data.unwrap()["MENDIX_TOKEN"].0.clone()
}

#[tokio::test]
async fn a_new_resource_creates_a_copy_in_each_selected_namespace() {
    let mut world = three_selected();
    let cr = resource();

    let done = world
        .reconcile(
            &cr,
            vec![
                get_source(TOKEN),
                each(&SELECTED, created),
                write_status(),
                event(),
            ],
        )
        .await;
    assert_eq!(done.result, Ok(Action::requeue(RESYNC)));
    for ns in SELECTED {
        let copy = done.body(Method::POST, &secrets_path(ns));
        assert_eq!(copy["metadata"]["name"], NAME);
        assert_eq!(
            copy["metadata"].get("resourceVersion"),
            None,
            "created, not applied: a Secret made meanwhile fails it"
        );
        assert_eq!(
            copy["metadata"]["labels"]["mxcred.io/cluster-credential"],
            NAME
        );
        assert_eq!(copy["metadata"]["ownerReferences"][0]["uid"], UID);
        assert_eq!(token_of(copy), TOKEN.as_bytes());
    }
    let status = done.status();
    assert_eq!(status["namespaces"], "3/3");
    assert_eq!(
        (status["selected"].clone(), status["synced"].clone()),
        (json!(3), json!(3))
    );
    assert_eq!(status["failedNamespaceCount"], 0);
    assert_eq!(status["secretName"], NAME);
    assert_eq!(condition(status, "Ready")["reason"], "Synced");
    assert_eq!(
        condition(status, "TokenValid")["reason"],
        "VerificationDisabled"
    );
    assert_eq!(
        done.events(),
        [(
            "Normal".into(),
            "Synced".into(),
            format!("wrote Secret {NAME} in namespaces team-a, team-b, team-c")
        )]
    );

    // With the status it wrote, and the copies as the watch reports them: nothing is sent.
    for stored in done.stored(&SELECTED).values() {
        world
            .copies
            .apply_watcher_event(&watcher::Event::Apply(copy_meta(stored)));
    }
    let cr = with_status(cr, status, "11");
    let again = world.reconcile(&cr, vec![get_source(TOKEN)]).await;
    assert_eq!(again.result, Ok(Action::requeue(RESYNC)));
}

#[tokio::test]
async fn a_foreign_secret_in_one_namespace_is_never_written_and_is_reported() {
    let world = three_selected();
    let cr = resource();
    let foreign_secret = foreign("team-b", json!({"app": "theirs"}));

    let done = world
        .reconcile(
            &cr,
            vec![
                get_source(TOKEN),
                vec![
                    created("team-a"),
                    in_the_way("team-b", &foreign_secret),
                    created("team-c"),
                ],
                write_status(),
                event(),
                event(),
            ],
        )
        .await;
    // Foreign Secrets are not watched: the resource is looked at again soon.
    assert_eq!(done.result, Ok(Action::requeue(CONFLICT_RETRY)));
    let status = done.status();
    assert_eq!(status["namespaces"], "2/3");
    assert_eq!(status["failedNamespaceCount"], 1);
    let failed = status["failedNamespaces"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["namespace"], "team-b");
    assert_eq!(failed[0]["reason"], "TargetConflict");
    assert_eq!(condition(status, "Ready")["reason"], "NamespacesFailed");
    assert_eq!(
        done.events(),
        [
            (
                "Normal".into(),
                "Synced".into(),
                format!("wrote Secret {NAME} in namespaces team-a, team-c")
            ),
            (
                "Warning".into(),
                "TargetConflict".into(),
                format!(
                    "Secret {NAME} exists and is not managed by this ClusterMendixCredential in \
                     namespace team-b; left untouched"
                )
            ),
        ]
    );
    // Nothing of the foreign Secret's data is sent anywhere, in plain or in base64.
    let sent =
        serde_json::to_string(&done.sent.iter().map(|s| &s.body).collect::<Vec<_>>()).unwrap();
    let encoded = base64("hunter2");
    assert!(!sent.contains("hunter2") && !sent.contains(encoded.as_str().unwrap()));

    // Still there on the next reconcile: tried and read again, still not written, and not
    // announced again; the copies of the others are read (the watch has not reported them,
    // and this instance wrote them: they are not created again) and kept.
    let stored = done.stored(&["team-a", "team-c"]);
    let cr = with_status(cr, status, "11");
    let again = world
        .reconcile(
            &cr,
            vec![
                get_source(TOKEN),
                vec![
                    vec![expect(
                        Method::GET,
                        &copy_path("team-a"),
                        200,
                        Some(stored["team-a"].clone()),
                    )],
                    in_the_way("team-b", &foreign_secret),
                    vec![expect(
                        Method::GET,
                        &copy_path("team-c"),
                        200,
                        Some(stored["team-c"].clone()),
                    )],
                ],
            ],
        )
        .await;
    assert_eq!(again.result, Ok(Action::requeue(CONFLICT_RETRY)));
}

#[tokio::test]
async fn a_rotation_rewrites_every_copy_and_records_the_new_credential() {
    let mut world = three_selected();
    let cr = resource();
    let first = world
        .reconcile(
            &cr,
            vec![
                get_source(TOKEN),
                each(&SELECTED, created),
                write_status(),
                event(),
            ],
        )
        .await;
    let stored = first.stored(&SELECTED);
    for copy in stored.values() {
        world
            .copies
            .apply_watcher_event(&watcher::Event::Apply(copy_meta(copy)));
    }
    let before = first.status().clone();
    let cr = with_status(cr, &before, "11");

    // The source holds a new credential (the platform is not asked: it is published at once).
    // Each copy is read, claimed once for apply (its creation's entry is an update), and
    // applied on condition of the version claimed.
    let claimed = |ns: &str| {
        let mut copy = stored[ns].clone();
        copy["metadata"]["resourceVersion"] = json!("3");
        copy["metadata"]["managedFields"][0]["operation"] = json!("Apply");
        copy
    };
    let done = world
        .reconcile(
            &cr,
            vec![
                get_source(NEW_TOKEN),
                each(&SELECTED, |ns| {
                    vec![
                        expect(Method::GET, &copy_path(ns), 200, Some(stored[ns].clone())),
                        expect(Method::PATCH, &copy_path(ns), 200, Some(claimed(ns))),
                        expect(Method::PATCH, &copy_path(ns), 200, None),
                    ]
                }),
                write_status(),
                event(),
                event(),
            ],
        )
        .await;
    assert_eq!(done.result, Ok(Action::requeue(RESYNC)));
    for ns in SELECTED {
        let [claim, apply] = done.bodies(Method::PATCH, &copy_path(ns))[..] else {
            panic!("two patches of the copy in {ns}");
        };
        assert_eq!(
            *claim,
            json!([
                {"op": "test", "path": "/metadata/resourceVersion", "value": "2"},
                {"op": "test", "path": "/metadata/managedFields/0/manager", "value": "mxcred-operator"},
                {"op": "replace", "path": "/metadata/managedFields/0/operation", "value": "Apply"},
            ])
        );
        assert_eq!(
            apply["metadata"]["resourceVersion"], "3",
            "conditional on the claimed version"
        );
        assert_eq!(token_of(apply), NEW_TOKEN.as_bytes());
    }
    let status = done.status();
    let (old, new) = (&before["tokenFingerprint"], &status["tokenFingerprint"]);
    assert_ne!(old, new);
    assert_ne!(before["tokenDigest"], status["tokenDigest"]);
    assert_eq!(status["lastSyncedTime"], "2026-01-02T00:00:00Z");
    assert_eq!(status["namespaces"], "3/3");
    assert_eq!(status.get("pendingFingerprint"), None);
    assert_eq!(condition(status, "Ready")["reason"], "Synced");
    let new = new.as_str().unwrap();
    assert_eq!(
        done.events(),
        [
            (
                "Normal".into(),
                "Synced".into(),
                format!("wrote Secret {NAME} in namespaces team-a, team-b, team-c")
            ),
            (
                "Normal".into(),
                "Rotated".into(),
                format!(
                    "published {new} in Secret {NAME}, replacing {}",
                    old.as_str().unwrap()
                )
            ),
        ]
    );
    let text = serde_json::to_string(&done.status()).unwrap() + &format!("{:?}", done.events());
    assert!(!text.contains(NEW_TOKEN) && !text.contains(TOKEN));
}

#[tokio::test]
async fn a_deselected_namespace_loses_our_copy_and_keeps_a_foreign_one() {
    let mut world = World::new(&[
        ("team-a", PAYMENTS),
        ("team-b", PAYMENTS),
        ("team-c", PAYMENTS),
        ("team-d", PAYMENTS),
        (SOURCE_NS, &[]),
    ]);
    let cr = resource();
    // Someone else's Secret in team-d, labelled as if we had published it: the watch of copies
    // reports it (it has the label), but it is neither owned nor written by us.
    let forged = foreign("team-d", json!({"mxcred.io/cluster-credential": NAME}));
    let first = world
        .reconcile(
            &cr,
            vec![
                get_source(TOKEN),
                each(&["team-a", "team-b", "team-c", "team-d"], |ns| match ns {
                    "team-d" => in_the_way(ns, &forged),
                    _ => created(ns),
                }),
                write_status(),
                event(),
                event(),
            ],
        )
        .await;
    assert_eq!(first.status()["failedNamespaces"][0]["namespace"], "team-d");
    let stored = first.stored(&SELECTED);
    for copy in stored.values().chain([&forged]) {
        world
            .copies
            .apply_watcher_event(&watcher::Event::Apply(copy_meta(copy)));
    }
    // team-c and team-d leave the selection.
    for ns in ["team-c", "team-d"] {
        world
            .namespaces
            .apply_watcher_event(&watcher::Event::Apply(namespace(
                ns,
                &[("team", "billing")],
            )));
    }
    let cr = with_status(cr, first.status(), "11");

    // The copies of team-a and team-b are as the watch reports them: not read. Ours in team-c
    // is deleted, on condition that it is still the Secret seen; the one in team-d is not
    // touched.
    let done = world
        .reconcile(
            &cr,
            vec![
                get_source(TOKEN),
                one(expect(
                    Method::DELETE,
                    &copy_path("team-c"),
                    200,
                    Some(stored["team-c"].clone()),
                )),
                write_status(),
            ],
        )
        .await;
    assert_eq!(done.result, Ok(Action::requeue(RESYNC)));
    let delete = done.body(Method::DELETE, &copy_path("team-c"));
    assert_eq!(delete["preconditions"]["uid"], "uid-team-c");
    let status = done.status();
    assert_eq!(status["namespaces"], "2/2");
    assert_eq!(status["failedNamespaceCount"], 0);
    assert_eq!(status.get("failedNamespaces"), None);
    assert_eq!(condition(status, "Ready")["reason"], "Synced");
    assert_eq!(done.events(), []);

    // Once the watch reports the deletion, nothing is left to do.
    world
        .copies
        .apply_watcher_event(&watcher::Event::Delete(copy_meta(&stored["team-c"])));
    let cr = with_status(cr, status, "12");
    let again = world.reconcile(&cr, vec![get_source(TOKEN)]).await;
    assert_eq!(again.result, Ok(Action::requeue(RESYNC)));
}
