//! One operator, many tenants: each way a tenant could reach what is not its own (a Secret that did
//! not opt in, forged labels, replication and reserved metadata keys, probe URLs beyond the allow
//! list, oversized specs, large unrelated Secrets, API server messages in the log, restarts of
//! workloads without their consent), tried as a tenant would, with a ServiceAccount of its own
//! and a namespace-scoped Role, on the real control plane.

mod common;

use common::{TestEnv, assert_no_canary, value, wait_until};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};
use mendix_simulator::{Simulator, State};
use serde_json::json;
use std::time::Duration;

/// A tenant of the test's namespace: may create and read MendixCredentials, and `get` only the
/// Secrets named in `readable`. Returns the tenant's client.
async fn tenant(env: &TestEnv, readable: &[&str]) -> Client {
    tenant_with(env, readable, vec![]).await
}

/// As [`tenant`], with more rules.
async fn tenant_with(env: &TestEnv, readable: &[&str], more: Vec<serde_json::Value>) -> Client {
    let mut rules = vec![json!({
        "apiGroups": ["mxcred.io"], "resources": ["mendixcredentials"],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    })];
    if !readable.is_empty() {
        rules.push(json!({
            "apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
            "resourceNames": readable,
        }));
    }
    rules.extend(more);
    let kubeconfig = env.namespaced_identity("tenant", json!(rules)).await;
    let client = common::client_from(&kubeconfig).await;
    let credentials: Api<mxcred_operator::domain::api::MendixCredential> =
        Api::namespaced(client.clone(), &env.ns);
    wait_until(Duration::from_secs(10), "the tenant's Role", || async {
        credentials.list(&Default::default()).await.is_ok()
    })
    .await;
    client
}

/// Applies a MendixCredential with the tenant's client.
async fn apply_as(client: &Client, ns: &str, name: &str, spec: serde_json::Value) {
    let cr = json!({"apiVersion": "mxcred.io/v1alpha1", "kind": "MendixCredential",
        "metadata": {"name": name}, "spec": spec});
    Api::<mxcred_operator::domain::api::MendixCredential>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::apply("tenant"), &Patch::Apply(cr))
        .await
        .unwrap();
}

/// A Secret the tenant did not make, created by the namespace's administrator.
async fn admin_secret(env: &TestEnv, secret: serde_json::Value) {
    let secret: Secret = serde_json::from_value(secret).unwrap();
    env.secrets()
        .create(&Default::default(), &secret)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_secret_that_did_not_opt_in_is_never_read_for_a_tenant() {
    let canary = "CANARY-prod-db-password-7d1f";
    let sa_canary = "CANARY-eyJhbGciOiJSUzI1NiJ9.service-account-jwt";
    let sim = Simulator::start().await;
    sim.set(canary, State::Valid);
    sim.set(sa_canary, State::Valid);
    sim.set("tok-late", State::Valid);
    let env = TestEnv::new("deputy").await;
    let op = env.start_operator_with_platform(&sim.base_url(), &[]);
    admin_secret(
        &env,
        json!({"metadata": {"name": "prod-db"}, "type": "Opaque",
               "stringData": {"password": canary, "user": "app"}}),
    )
    .await;
    // A ServiceAccount token Secret, even labelled as a source, is no source.
    admin_secret(
        &env,
        json!({"metadata": {"name": "sa-token", "labels": {"mxcred.io/source": "true"},
                            "annotations": {"kubernetes.io/service-account.name": "default"}},
               "type": "kubernetes.io/service-account-token",
               "stringData": {"token": sa_canary}}),
    )
    .await;
    let tenant = tenant(&env, &["ci-token"]).await;

    // Confused deputy: the tenant may read ci-token only, and asks for prod-db's password in it.
    apply_as(
        &tenant,
        &env.ns,
        "deputy",
        json!({"sourceRef": {"name": "prod-db", "tokenKey": "password"},
               "target": {"name": "ci-token"}}),
    )
    .await;
    apply_as(
        &tenant,
        &env.ns,
        "jwt",
        json!({"sourceRef": {"name": "sa-token"}, "target": {"name": "ci-jwt"}}),
    )
    .await;
    for name in ["deputy", "jwt"] {
        let cr = env.wait_reason(name, "Ready", "SourceNotAllowed").await;
        let message = common::condition(&cr, "Ready").message;
        assert!(message.contains("mxcred.io/source"), "{message}");
        for hidden in ["password", "\"user\"", "key", "bytes", "service-account"] {
            assert!(!message.contains(hidden), "{message} reveals {hidden}");
        }
    }
    let tenant_secrets: Api<Secret> = Api::namespaced(tenant.clone(), &env.ns);
    assert!(
        tenant_secrets.get_opt("ci-token").await.unwrap().is_none(),
        "no target was written"
    );
    assert!(env.secrets().get_opt("ci-jwt").await.unwrap().is_none());

    // A Secret opts in with the label; it is picked up through the watch of sources, and losing
    // the label stops its use while the published target stays.
    admin_secret(
        &env,
        json!({"metadata": {"name": "late"}, "type": "Opaque", "stringData": {"token": "tok-late"}}),
    )
    .await;
    apply_as(
        &tenant,
        &env.ns,
        "late",
        json!({"sourceRef": {"name": "late"}, "target": {"name": "late-out"}}),
    )
    .await;
    env.wait_reason("late", "Ready", "SourceNotAllowed").await;
    let label =
        |value: serde_json::Value| json!({"metadata": {"labels": {"mxcred.io/source": value}}});
    env.secrets()
        .patch(
            "late",
            &PatchParams::default(),
            &Patch::Merge(label(json!("true"))),
        )
        .await
        .unwrap();
    env.wait_reason("late", "TokenValid", "Verified").await;
    env.secrets()
        .patch(
            "late",
            &PatchParams::default(),
            &Patch::Merge(label(json!(null))),
        )
        .await
        .unwrap();
    env.wait_reason("late", "Ready", "SourceNotAllowed").await;
    let kept = env.secrets().get("late-out").await.unwrap();
    assert_eq!(
        value(&kept, "MENDIX_TOKEN").as_deref(),
        Some("tok-late"),
        "the last good target stays"
    );

    assert_eq!(sim.requests(canary), 0, "the password reached the probe");
    assert_eq!(sim.requests(sa_canary), 0, "the JWT reached the probe");
    assert_no_canary(&env, &[&op], canary).await;
    assert_no_canary(&env, &[&op], sa_canary).await;
}

#[tokio::test]
async fn forged_labels_never_make_a_secret_ours() {
    let env = TestEnv::new("forged").await;
    let op = env.start_operator(&[]);
    // A Helm release Secret the tenant may not read, only patch.
    admin_secret(
        &env,
        json!({"metadata": {"name": "sh.helm.release.v1.app.v1", "labels": {"owner": "helm"}},
               "type": "helm.sh/release.v1", "stringData": {"release": "CANARY-helm-release"}}),
    )
    .await;
    let tenant = tenant_with(
        &env,
        &[],
        vec![json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["patch"]})],
    )
    .await;
    let forged = json!({"metadata": {"labels": {
        "app.kubernetes.io/managed-by": "mxcred-operator", "mxcred.io/credential": "x"}}});
    Api::<Secret>::namespaced(tenant.clone(), &env.ns)
        .patch(
            "sh.helm.release.v1.app.v1",
            &PatchParams::default(),
            &Patch::Merge(forged),
        )
        .await
        .unwrap();
    env.put_source("x-raw", &[("token", "tok-x")]).await;
    apply_as(
        &tenant,
        &env.ns,
        "x",
        json!({"sourceRef": {"name": "x-raw"}, "target": {"name": "sh.helm.release.v1.app.v1"},
               "verification": {"enabled": false}}),
    )
    .await;
    env.wait_reason("x", "Ready", "TargetConflict").await;
    let release = env
        .secrets()
        .get("sh.helm.release.v1.app.v1")
        .await
        .unwrap();
    assert!(release.metadata.owner_references.is_none(), "never adopted");
    assert_eq!(
        value(&release, "release").as_deref(),
        Some("CANARY-helm-release")
    );
    assert!(value(&release, "MENDIX_TOKEN").is_none());

    // Deleting the resource therefore cannot delete the release.
    Api::<mxcred_operator::domain::api::MendixCredential>::namespaced(tenant.clone(), &env.ns)
        .delete("x", &DeleteParams::default())
        .await
        .unwrap();
    wait_until(Duration::from_secs(30), "the resource gone", || async {
        env.credentials().get_opt("x").await.unwrap().is_none()
    })
    .await;
    // The garbage collector, had the Secret an owner reference, would act within a second.
    assert!(
        common::wait_for(Duration::from_secs(3), || async {
            env.secrets()
                .get_opt("sh.helm.release.v1.app.v1")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        })
        .await
        .is_none(),
        "the release Secret was deleted with the resource"
    );
    assert_no_canary(&env, &[&op], "CANARY-helm-release").await;
}

#[tokio::test]
async fn an_orphaning_delete_keeps_the_secret_and_a_new_resource_adopts_it() {
    let env = TestEnv::new("orphan").await;
    let _op = env.start_operator(&[]);
    let tenant = tenant(&env, &["keep"]).await;
    env.put_source("keep-raw", &[("token", "tok-keep")]).await;
    let spec = json!({"sourceRef": {"name": "keep-raw"}, "verification": {"enabled": false}});
    apply_as(&tenant, &env.ns, "keep", spec.clone()).await;
    env.wait_reason("keep", "Ready", "Synced").await;

    // `kubectl delete mxcred keep --cascade=orphan`, as docs/install.md says to keep the Secret.
    let credentials: Api<mxcred_operator::domain::api::MendixCredential> =
        Api::namespaced(tenant.clone(), &env.ns);
    credentials
        .delete("keep", &DeleteParams::orphan())
        .await
        .unwrap();
    wait_until(Duration::from_secs(30), "the resource gone", || async {
        env.credentials().get_opt("keep").await.unwrap().is_none()
    })
    .await;
    // Had the operator put its owner reference back while the resource was being deleted, the
    // garbage collector would now delete the Secret (it acts within a second).
    let collected = common::wait_for(Duration::from_secs(3), || async {
        let secret = env.secrets().get_opt("keep").await.unwrap();
        let owned = secret
            .as_ref()
            .is_some_and(|s| s.metadata.owner_references.is_some());
        (secret.is_none() || owned).then_some(())
    })
    .await;
    assert!(
        collected.is_none(),
        "the kept Secret was collected or re-owned"
    );
    let kept = env.secrets().get("keep").await.unwrap();
    assert_eq!(value(&kept, "MENDIX_TOKEN").as_deref(), Some("tok-keep"));

    // A resource of the same name takes the kept Secret back (it was written by the operator
    // for a credential of that name), and owns it again.
    apply_as(&tenant, &env.ns, "keep", spec).await;
    let cr = env.wait_reason("keep", "Ready", "Synced").await;
    let uid = cr.metadata.uid.unwrap();
    env.wait_secret("keep", "owned by the new resource", |s| {
        s.metadata
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.uid == uid && r.controller == Some(true))
    })
    .await;
}

#[tokio::test]
async fn replication_and_reserved_metadata_keys_are_refused() {
    let env = TestEnv::new("metadata").await;
    let _op = env.start_operator(&["--denied-metadata-prefix", "example.com/"]);
    let tenant = tenant(&env, &[]).await;
    env.put_source("raw", &[("token", "tok-meta")]).await;
    let spec = |target: serde_json::Value| json!({"sourceRef": {"name": "raw"}, "target": target, "verification": {"enabled": false}});
    // The built-in domains: refused when the tenant applies, by the CRD's CEL rules.
    for (name, target) in [
        (
            "reflect",
            json!({"annotations": {
                "reflector.v1.k8s.emberstack.com/reflection-allowed": "true",
                "reflector.v1.k8s.emberstack.com/reflection-auto-namespaces": "attacker"}}),
        ),
        (
            "kubed",
            json!({"annotations": {"kubed.appscode.com/sync": "team=attacker"}}),
        ),
        (
            "replicate",
            json!({"annotations": {"replicator.v1.mittwald.de/replicate-to": "attacker"}}),
        ),
        (
            "reserved",
            json!({"labels": {"kubernetes.io/service-account.name": "default"}}),
        ),
    ] {
        let cr = json!({"apiVersion": "mxcred.io/v1alpha1", "kind": "MendixCredential",
            "metadata": {"name": name}, "spec": spec(target)});
        let refused = Api::<mxcred_operator::domain::api::MendixCredential>::namespaced(
            tenant.clone(),
            &env.ns,
        )
        .patch(name, &PatchParams::apply("tenant"), &Patch::Apply(cr))
        .await
        .expect_err(name)
        .to_string();
        assert!(
            refused.contains(
                "replication keys of Reflector, kubed and kubernetes-replicator are refused"
            ),
            "{name}: {refused}"
        );
        assert!(env.secrets().get_opt(name).await.unwrap().is_none());
    }
    // The administrator's prefixes only the operator knows: refused in status.
    apply_as(
        &tenant,
        &env.ns,
        "admin",
        spec(json!({"labels": {"example.com/owner": "x"}})),
    )
    .await;
    let cr = env.wait_reason("admin", "Ready", "InvalidSpec").await;
    let message = common::condition(&cr, "Ready").message;
    assert!(message.contains("example.com/owner"), "{message}");
    assert!(env.secrets().get_opt("admin").await.unwrap().is_none());
}

#[tokio::test]
async fn the_allow_list_is_an_origin_and_a_probe_url_only_itself() {
    // Another port of the allowed loopback host stands for an internal service.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let contacted = tokio::spawn(async move { listener.accept().await.is_ok() });
    let sim = Simulator::start().await;
    let env = TestEnv::new("origin").await;
    // Only the simulator's exact probe URLs (and https://127.0.0.1:443) are allowed.
    let op = env.start_operator_with_platform(&sim.base_url(), &[]);
    let tenant = tenant(&env, &[]).await;
    let canary = "CANARY-origin-token";
    sim.set(canary, State::Valid);
    env.put_source("raw", &[("token", canary)]).await;
    for (name, probe) in [
        ("port", format!("http://127.0.0.1:{port}/anything?q=1")),
        // The simulator's own origin, but not one of the URLs given with --probe-url.
        ("path", format!("{}/api/v4/apps?limit=2", sim.base_url())),
    ] {
        apply_as(
            &tenant,
            &env.ns,
            name,
            json!({"sourceRef": {"name": "raw"}, "verification": {"probe": probe}}),
        )
        .await;
        let cr = env
            .wait_reason(name, "TokenValid", "EndpointNotAllowed")
            .await;
        let message = common::condition(&cr, "TokenValid").message;
        assert!(message.contains("127.0.0.1"), "{message}");
    }
    assert!(
        !contacted.is_finished(),
        "a request reached the port outside the allow-list"
    );
    assert_eq!(sim.requests(canary), 0, "the simulator got an unlisted URL");
    // The exact probe URL itself is allowed.
    apply_as(
        &tenant,
        &env.ns,
        "named",
        json!({"sourceRef": {"name": "raw"}}),
    )
    .await;
    env.wait_reason("named", "TokenValid", "Verified").await;
    assert_no_canary(&env, &[&op], canary).await;
}

#[tokio::test]
async fn an_oversized_spec_is_refused_by_the_api_server() {
    let env = TestEnv::new("oversized").await;
    let tenant = tenant(&env, &[]).await;
    let many: serde_json::Map<_, _> = (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
    let huge = "x".repeat(1025);
    for (what, spec) in [
        (
            "17 annotations",
            json!({"sourceRef": {"name": "raw"}, "target": {"annotations": many}}),
        ),
        (
            "a 1 KiB annotation",
            json!({"sourceRef": {"name": "raw"}, "target": {"annotations": {"a": huge}}}),
        ),
        (
            "17 labels",
            json!({"sourceRef": {"name": "raw"}, "target": {"labels": many}}),
        ),
        (
            "a long probe",
            json!({"sourceRef": {"name": "raw"},
                   "verification": {"probe": format!("https://x.example.com/{}", "p".repeat(2048))}}),
        ),
        (
            "a long key name",
            json!({"sourceRef": {"name": "raw", "tokenKey": "k".repeat(254)}}),
        ),
        (
            "a key no Secret can have",
            json!({"sourceRef": {"name": "raw", "tokenKey": "to ken"}}),
        ),
        (
            "a target name no Secret can have",
            json!({"sourceRef": {"name": "raw"}, "target": {"name": "Bad_Name"}}),
        ),
        (
            "a source name no Secret can have",
            json!({"sourceRef": {"name": "../raw"}}),
        ),
        (
            "17 workloads to restart",
            json!({"sourceRef": {"name": "raw"}, "target": {"rolloutRestart":
                (0..17).map(|i| json!({"kind": "Deployment", "name": format!("d{i}")})).collect::<Vec<_>>()}}),
        ),
        (
            "a workload of a kind the operator does not restart",
            json!({"sourceRef": {"name": "raw"}, "target": {"rolloutRestart": [{"kind": "Pod", "name": "p"}]}}),
        ),
        (
            "a workload name no workload can have",
            json!({"sourceRef": {"name": "raw"}, "target": {"rolloutRestart": [{"kind": "Deployment", "name": "../x"}]}}),
        ),
    ] {
        let cr = json!({"apiVersion": "mxcred.io/v1alpha1", "kind": "MendixCredential",
            "metadata": {"name": "big"}, "spec": spec});
        let refused = Api::<mxcred_operator::domain::api::MendixCredential>::namespaced(
            tenant.clone(),
            &env.ns,
        )
        .patch("big", &PatchParams::apply("tenant"), &Patch::Apply(cr))
        .await
        .expect_err(what);
        match refused {
            kube::Error::Api(e) => assert_eq!(e.code, 422, "{what}: {e:?}"),
            other => panic!("{what}: {other}"),
        }
    }
    // A workload listed twice (rolloutRestart is a list keyed by kind and name): the server
    // refuses the apply, naming the duplicate.
    let twice = json!({"apiVersion": "mxcred.io/v1alpha1", "kind": "MendixCredential",
        "metadata": {"name": "big"}, "spec": {"sourceRef": {"name": "raw"}, "target": {"rolloutRestart": [
            {"kind": "Deployment", "name": "d"}, {"kind": "Deployment", "name": "d"}]}}});
    let refused =
        Api::<mxcred_operator::domain::api::MendixCredential>::namespaced(tenant.clone(), &env.ns)
            .patch("big", &PatchParams::apply("tenant"), &Patch::Apply(twice))
            .await
            .expect_err("a workload listed twice");
    assert!(
        refused.to_string().contains("duplicate entries"),
        "{refused}"
    );
}

/// Applies a MendixCredential without verification and waits until it is Ready.
async fn ready_credential(env: &TestEnv, name: &str) {
    env.put_credential(
        name,
        json!({"sourceRef": {"name": "raw"}, "verification": {"enabled": false}}),
    )
    .await;
    env.wait_reason(name, "Ready", "Synced").await;
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

#[tokio::test]
async fn unrelated_secrets_however_large_leave_the_operator_flat() {
    use futures::StreamExt;
    const SECRETS: usize = 1000;
    const ANNOTATION: usize = 48 * 1024;
    let env = TestEnv::new("memory").await;
    let mut op = env.start_operator(&[]);
    env.put_source("raw", &[("token", "tok-mem")]).await;
    ready_credential(&env, "before").await;
    let before = peak_rss_kib(op.pid());

    // Unrelated Secrets, each with a 48 KiB annotation (as kubectl's last-applied copy makes).
    let padding = "a".repeat(ANNOTATION);
    futures::stream::iter(0..SECRETS)
        .map(|i| {
            let secret: Secret = serde_json::from_value(json!({
                "metadata": {"name": format!("unrelated-{i}"),
                             "annotations": {"example.com/padding": padding}},
                "stringData": {"data": "x"},
            }))
            .unwrap();
            let secrets = env.secrets();
            async move { secrets.create(&Default::default(), &secret).await.unwrap() }
        })
        .buffer_unordered(16)
        .for_each(|_| async {})
        .await;
    ready_credential(&env, "after").await;
    let running = peak_rss_kib(op.pid());

    // A restart lists what it watches: the unrelated Secrets are not among them.
    op.kill();
    let op = env.start_operator(&[]);
    ready_credential(&env, "restarted").await;
    let restarted = peak_rss_kib(op.pid());
    println!(
        "peak RSS (VmHWM): {before} KiB with one resource; {running} KiB after {SECRETS} \
         unrelated Secrets with {} KiB annotations ({} MiB in all); {restarted} KiB after a restart",
        ANNOTATION / 1024,
        SECRETS * ANNOTATION / (1024 * 1024)
    );
    let flat = before + 2 * 1024;
    assert!(running < flat, "{running} KiB against {before} KiB before");
    assert!(
        restarted < flat,
        "{restarted} KiB after a restart against {before} KiB"
    );
}

#[tokio::test]
async fn an_api_server_message_is_never_logged() {
    // The API server's 403 names the user it refused: a ServiceAccount named like a canary, whose
    // Role lacks `get` on Secrets, makes the message carry it.
    const CANARY: &str = "canary-403-7d1f";
    let sim = Simulator::start().await;
    let env = TestEnv::new("redaction").await;
    let kubeconfig = env
        .namespaced_identity(
            CANARY,
            json!([
                {"apiGroups": ["mxcred.io"], "resources": ["mendixcredentials"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["mxcred.io"], "resources": ["mendixcredentials/status"], "verbs": ["patch"]},
                {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list", "watch"]},
                {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create"]},
            ]),
        )
        .await;
    let mut args = common::loopback_platform(&sim.base_url());
    args.retain(|a| !a.contains(CANARY));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let op = common::Operator::start(env.cp, &kubeconfig, &env.ns, &args, &[]);
    env.put_source("raw", &[("token", "tok-redaction")]).await;
    env.put_credential("c", json!({"sourceRef": {"name": "raw"}}))
        .await;
    wait_until(
        Duration::from_secs(30),
        "the refused read to be logged",
        || async {
            op.logs()
                .contains("reading the source Secret failed: HTTP 403 Forbidden")
        },
    )
    .await;
    assert!(
        !op.logs().contains(CANARY),
        "the API server's message reached the log:\n{}",
        op.logs()
    );
}

/// A Deployment of the namespace's administrator (no replicas: only its template matters),
/// with `annotations` on the Deployment itself.
async fn admin_deployment(
    env: &TestEnv,
    name: &str,
    annotations: serde_json::Value,
) -> k8s_openapi::api::apps::v1::Deployment {
    let deployment = serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "app:1"}]}}},
    }))
    .unwrap();
    Api::namespaced(env.client.clone(), &env.ns)
        .create(&Default::default(), &deployment)
        .await
        .unwrap()
}

/// The generation of Deployment `name` (each restart adds one) and its pod template's
/// annotation `key`.
async fn restarts_of(env: &TestEnv, name: &str, key: &str) -> (i64, Option<String>) {
    let d: k8s_openapi::api::apps::v1::Deployment = Api::namespaced(env.client.clone(), &env.ns)
        .get(name)
        .await
        .unwrap();
    let held = d
        .spec
        .template
        .metadata
        .and_then(|m| m.annotations)
        .and_then(|a| a.get(key).cloned());
    (d.metadata.generation.unwrap(), held)
}

/// The tenant writes its own source Secret `name` holding `token`.
async fn tenant_source(client: &Client, ns: &str, name: &str, token: &str) {
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": name, "labels": {"mxcred.io/source": "true"}},
        "stringData": {"token": token}});
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::apply("tenant").force(),
            &Patch::Apply(secret),
        )
        .await
        .unwrap();
}

/// A tenant that may write Secrets and MendixCredentials, and read Deployments, but not
/// change them.
async fn workload_tenant(env: &TestEnv) -> Client {
    let tenant = tenant_with(
        env,
        &[],
        vec![
            json!({"apiGroups": [""], "resources": ["secrets"],
                   "verbs": ["get", "create", "patch", "update", "delete"]}),
            json!({"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list"]}),
        ],
    )
    .await;
    let denied = Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(tenant.clone(), &env.ns)
        .patch(
            "protected-app",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {"x": "y"}}}}})),
        )
        .await;
    assert!(
        matches!(&denied, Err(kube::Error::Api(e)) if e.code == 403),
        "the tenant may not patch the Deployment itself: {denied:?}"
    );
    tenant
}

/// How many Events of each reason the namespace holds.
async fn events_by_reason(env: &TestEnv) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for event in env.events().await {
        let reason = event.split(':').next().unwrap_or_default().to_owned();
        *counts.entry(reason).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn a_workload_is_restarted_only_with_its_consent_and_at_most_once_per_interval() {
    const INTERVAL: Duration = Duration::from_secs(4);
    const WRITES: usize = 20;
    let env = TestEnv::new("consent").await;
    common::grant_workload_restarts(&env.client, &env.ns, &["deployments"]).await;
    let op = env.start_operator(&["--restart-min-interval", "4s"]);
    let key = "restart.mxcred.io/bot";
    admin_deployment(&env, "protected-app", json!({})).await;
    // Consent names the credential; a list naming others does not count for it.
    admin_deployment(
        &env,
        "other-app",
        json!({"mxcred.io/restart-on": "bots,cluster/bot"}),
    )
    .await;
    let followers = ["follower-0", "follower-1", "follower-2", "follower-3"];
    for name in followers {
        admin_deployment(&env, name, json!({"mxcred.io/restart-on": "other, bot"})).await;
    }
    let tenant = workload_tenant(&env).await;
    tenant_source(&tenant, &env.ns, "bot-raw", "tok-0").await;
    let mut listed = vec![
        json!({"kind": "Deployment", "name": "protected-app"}),
        json!({"kind": "Deployment", "name": "other-app"}),
    ];
    listed.extend(
        followers
            .iter()
            .map(|n| json!({"kind": "Deployment", "name": n})),
    );
    apply_as(
        &tenant,
        &env.ns,
        "bot",
        json!({"sourceRef": {"name": "bot-raw"}, "verification": {"enabled": false},
               "target": {"rolloutRestart": listed}}),
    )
    .await;

    // The first publication: the followers are restarted once, the others reported.
    let entries = common::wait_for(Duration::from_secs(30), || async {
        let cr = env.credentials().get("bot").await.ok()?;
        let entries = cr.status?.rollout_restart;
        let done = entries.len() == 6
            && entries
                .iter()
                .all(|e| e.reason.is_some() || e.fingerprint.is_some());
        done.then_some(entries)
    })
    .await
    .expect("a status entry for each workload");
    for unasked in ["protected-app", "other-app"] {
        let entry = entries.iter().find(|e| e.name == unasked).unwrap();
        assert_eq!(
            entry.reason,
            Some(mxcred_operator::domain::api::RolloutRestartProblem::NoConsent),
            "{entry:?}"
        );
        let message = entry.message.clone().unwrap();
        assert!(message.contains("mxcred.io/restart-on"), "{message}");
        assert!(message.contains("\"bot\""), "{message}");
    }
    let mut after_first = vec![];
    for name in followers {
        let (generation, held) = restarts_of(&env, name, key).await;
        assert!(held.is_some(), "{name} was restarted");
        after_first.push(generation);
    }
    // One Event for all restarts of a reconcile, one for all its problems.
    let counts = common::wait_for(Duration::from_secs(15), || async {
        let counts = events_by_reason(&env).await;
        counts
            .contains_key("Warning RolloutRestartFailed")
            .then_some(counts)
    })
    .await
    .expect("a RolloutRestartFailed Event");
    assert_eq!(
        counts.get("Normal RolloutRestarted"),
        Some(&1),
        "{counts:?}"
    );
    assert_eq!(
        counts.get("Warning RolloutRestartFailed"),
        Some(&1),
        "{counts:?}"
    );

    // The tenant rewrites its source again and again.
    let started = std::time::Instant::now();
    for i in 1..=WRITES {
        tenant_source(&tenant, &env.ns, "bot-raw", &format!("tok-{i}")).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let burst = started.elapsed();
    let last = env
        .wait_secret("bot", "holding the last token", |s| {
            value(s, "MENDIX_TOKEN").as_deref() == Some(&format!("tok-{WRITES}"))
        })
        .await;
    let last = last.metadata.annotations.unwrap()["mxcred.io/token-fingerprint"].clone();
    // The changes within an interval come to one restart at its end: each follower ends with
    // the last credential.
    for name in followers {
        common::wait_for(Duration::from_secs(30), || async {
            (restarts_of(&env, name, key).await.1.as_deref() == Some(last.as_str())).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("{name} never got the last credential"));
    }
    let bound = (burst.as_secs_f64() / INTERVAL.as_secs_f64()).ceil() as i64 + 1;
    for (name, first) in followers.iter().zip(after_first) {
        let restarts = restarts_of(&env, name, key).await.0 - first;
        println!(
            "MEASURED {WRITES} source writes in {burst:?}: {name} restarted {restarts} times \
             (bound {bound}, interval {INTERVAL:?})"
        );
        assert!(
            (1..=bound).contains(&restarts),
            "{name}: {restarts} restarts, bound {bound}"
        );
    }
    for unasked in ["protected-app", "other-app"] {
        let (generation, held) = restarts_of(&env, unasked, key).await;
        assert_eq!((generation, held), (1, None), "{unasked} was restarted");
    }
    // Events of one reason on one object are bounded, however many writes.
    let counts = events_by_reason(&env).await;
    let allowed = 10 + (started.elapsed().as_secs() / 30) as usize + 1;
    println!("MEASURED Events after {WRITES} source writes: {counts:?}");
    for (reason, n) in &counts {
        assert!(
            *n <= allowed,
            "{n} Events {reason}, at most {allowed}: {counts:?}"
        );
    }
    common::assert_no_canary(&env, &[&op], "tok-1").await;
}

#[tokio::test]
async fn missing_workloads_are_read_again_after_a_growing_delay_not_at_every_reconcile() {
    let env = TestEnv::new("missing").await;
    common::grant_workload_restarts(&env.client, &env.ns, &["deployments"]).await;
    let op = env.start_operator(&["--restart-retry", "1s"]);
    admin_deployment(&env, "protected-app", json!({})).await;
    let tenant = workload_tenant(&env).await;
    tenant_source(&tenant, &env.ns, "gone-raw", "tok-gone").await;
    let listed: Vec<_> = (0..4)
        .map(|i| json!({"kind": "Deployment", "name": format!("gone-{i}")}))
        .collect();
    apply_as(
        &tenant,
        &env.ns,
        "gone",
        json!({"sourceRef": {"name": "gone-raw"}, "verification": {"enabled": false},
               "target": {"rolloutRestart": listed}}),
    )
    .await;
    common::wait_for(Duration::from_secs(30), || async {
        let cr = env.credentials().get("gone").await.ok()?;
        (cr.status?.rollout_restart.len() == 4).then_some(())
    })
    .await
    .expect("a status entry for each workload");
    let reads = || {
        op.logs()
            .lines()
            .filter(|l| l.contains("cannot restart a workload") && l.contains("\"gone-0\""))
            .count()
    };
    let reconciles = || {
        op.logs()
            .lines()
            .filter(|l| l.contains("\"reconciled\"") && l.contains("/gone\""))
            .count()
    };
    // Each change of its source's metadata reconciles the resource: the tenant touches it
    // every second for 20 seconds.
    let started = std::time::Instant::now();
    let (reads_before, reconciles_before) = (reads(), reconciles());
    for i in 0..20 {
        let touch = json!({"metadata": {"annotations": {"example.com/touch": i.to_string()}}});
        Api::<Secret>::namespaced(tenant.clone(), &env.ns)
            .patch("gone-raw", &PatchParams::default(), &Patch::Merge(touch))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (read, reconciled) = (reads() - reads_before, reconciles() - reconciles_before);
    println!(
        "MEASURED a missing workload over {:?}, {reconciled} reconciles: read {read} times \
         (first retry 1s, doubling)",
        started.elapsed()
    );
    assert!(reconciled >= 10, "the touches reconciled: {reconciled}");
    // Tries 1, 2, 4, 8 and 16 s apart: at most five in these 20 s, not one per reconcile.
    assert!(
        (2..=5).contains(&read),
        "read {read} times in {reconciled} reconciles"
    );
}
