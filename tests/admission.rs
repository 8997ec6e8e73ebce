//! The chart's ValidatingAdmissionPolicies (`admissionPolicy.enabled=true`) on the real API
//! server: the operator works under them as before, and its own identity is refused, with the
//! policy's message, when it creates, changes or deletes a Secret it does not manage, and when
//! it changes anything on a workload but its restart annotation; a tenant may not set a
//! reserved namespace label.

mod common;

use common::{
    Operator, TestEnv, client_from, loopback_platform, service_account_kubeconfig, wait_for,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use mendix_simulator::{Simulator, State};
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/mxcred-operator");
const RELEASE_NS: &str = "mxcred-admission";
const WRITE: &str =
    "mxcred-operator may only write Secrets labelled app.kubernetes.io/managed-by: mxcred-operator";
const CHANGE: &str = "mxcred-operator may only change or delete Secrets that were labelled app.kubernetes.io/managed-by: mxcred-operator";

fn foreign(name: &str) -> Secret {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "someone-else"}},
        "stringData": {"password": "theirs"},
    }))
    .unwrap()
}

/// The error of a write the API server refused, as text.
fn refusal<T: std::fmt::Debug>(result: Result<T, kube::Error>, what: &str) -> String {
    match result {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 403, "{what}: {e:?}");
            e.message
        }
        other => panic!("{what} was not refused: {other:?}"),
    }
}

/// Waits until the policy denies the operator a foreign Secret: a new policy takes a moment to
/// be loaded. Returns the message of that refusal.
async fn policy_in_force(operator: &Client, ns: &str) -> String {
    let secrets: Api<Secret> = Api::namespaced(operator.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match secrets
            .create(&PostParams::default(), &foreign("probe"))
            .await
        {
            Err(kube::Error::Api(e)) if e.code == 403 => return e.message,
            Ok(_) => {
                secrets.delete("probe", &DeleteParams::default()).await.ok();
            }
            Err(e) => panic!("create: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "the policy never refused a foreign Secret"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn the_policy_confines_the_operator_to_its_own_secrets() {
    let env = TestEnv::new("admission").await;
    let admin = env.cp.admin_kubeconfig.clone();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(common::helm_tools().join("helm"))
            .args([
                "install",
                "adm",
                CHART,
                "-n",
                RELEASE_NS,
                "--create-namespace",
            ])
            // The harness owns the CRDs on this control plane (tests/upgrade.rs installs them).
            .args([
                "--set",
                "crds.enabled=false",
                "--set",
                "admissionPolicy.enabled=true",
            ])
            .arg("--kubeconfig")
            .arg(&admin)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "helm install: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    })
    .await
    .unwrap();
    let kubeconfig =
        service_account_kubeconfig(&env.client, &env.cp.dir, RELEASE_NS, "adm-mxcred-operator")
            .await;
    let operator = client_from(&kubeconfig).await;
    let message = policy_in_force(&operator, &env.ns).await;
    assert!(message.contains(WRITE), "{message}");

    // The operator at work under the policy: it creates, updates and deletes its own Secrets.
    let sim = Simulator::start().await;
    sim.set("admitted-token", State::Valid);
    sim.set("rotated-token", State::Valid);
    let mut args = loopback_platform(&sim.base_url());
    args.extend(["--lease-namespace", RELEASE_NS].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let op = Operator::start(env.cp, &kubeconfig, &env.ns, &args, &[]);
    env.put_source("raw", &[("token", "admitted-token")]).await;
    env.put_credential("c", json!({"sourceRef": {"name": "raw"}}))
        .await;
    env.wait_reason("c", "Ready", "Synced").await;
    env.wait_reason("c", "TokenValid", "Verified").await;
    env.put_source("raw", &[("token", "rotated-token")]).await;
    env.wait_secret("c", "rotated", |s| {
        common::value(s, "MENDIX_TOKEN").as_deref() == Some("rotated-token")
    })
    .await;
    // A new target name: the operator writes the new Secret and deletes the one it wrote before.
    env.put_credential(
        "c",
        json!({"sourceRef": {"name": "raw"}, "target": {"name": "renamed"}}),
    )
    .await;
    env.wait_secret("renamed", "written", |_| true).await;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns);
    common::wait_until(
        Duration::from_secs(30),
        "the previous target to be deleted",
        || async { secrets.get_opt("c").await.unwrap().is_none() },
    )
    .await;
    assert!(
        !op.logs().contains("ValidatingAdmissionPolicy"),
        "{}",
        op.logs()
    );

    // The operator's identity and a Secret it does not manage.
    secrets
        .create(&PostParams::default(), &foreign("theirs"))
        .await
        .unwrap();
    let as_operator: Api<Secret> = Api::namespaced(operator.clone(), &env.ns);
    let created = refusal(
        as_operator
            .create(&PostParams::default(), &foreign("new"))
            .await,
        "create",
    );
    let relabel = json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": "mxcred-operator"}},
                         "stringData": {"password": "stolen"}});
    let patched = refusal(
        as_operator
            .patch("theirs", &PatchParams::default(), &Patch::Merge(&relabel))
            .await,
        "patch",
    );
    let deleted = refusal(
        as_operator.delete("theirs", &DeleteParams::default()).await,
        "delete",
    );
    println!("create: {created}\npatch: {patched}\ndelete: {deleted}");
    assert!(created.contains(WRITE), "{created}");
    assert!(patched.contains(CHANGE), "{patched}");
    assert!(deleted.contains(CHANGE), "{deleted}");
    let theirs = secrets.get("theirs").await.unwrap();
    assert_eq!(
        common::value(&theirs, "password").as_deref(),
        Some("theirs")
    );
}

/// Renders the chart as the test control plane's operator identity is named (ServiceAccount
/// mxcred-operator in mxcred-system) and applies its admission policies and bindings.
async fn install_policies(client: &Client) {
    let out = Command::new(common::helm_tools().join("helm"))
        .args([
            "template",
            "mxcred-operator",
            CHART,
            "--namespace",
            "mxcred-system",
        ])
        .args(["--set", "admissionPolicy.enabled=true"])
        .args(["--show-only", "templates/admissionpolicy.yaml"])
        .output()
        .expect("helm runs");
    assert!(
        out.status.success(),
        "helm template failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert!(yaml.contains("-workloads"), "{yaml}");
    common::apply_yaml(client, &yaml).await;
}

/// A server-side apply by the operator's identity, as its restart step sends it.
fn restart_patch(value: &str) -> serde_json::Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "app"},
           "spec": {"template": {"metadata": {"annotations": {"restart.mxcred.io/bot": value}}}}})
}

fn refused(result: &Result<Deployment, kube::Error>) -> bool {
    matches!(result, Err(kube::Error::Api(e)) if e.code == 403 || e.code == 422)
}

#[tokio::test]
async fn the_operator_may_change_a_workloads_restart_annotation_and_nothing_else() {
    let env = TestEnv::new("vap").await;
    install_policies(&env.client).await;
    common::grant_workload_restarts(&env.client, &env.ns, &["deployments"]).await;
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "app", "labels": {"team": "a"}},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "app"}},
            "template": {"metadata": {"labels": {"app": "app"}, "annotations": {"keep": "me"}},
                "spec": {"containers": [{"name": "app", "image": "app:1"}]}}},
    }))
    .unwrap();
    let admin: Api<Deployment> = Api::namespaced(env.client.clone(), &env.ns);
    admin
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let operator = common::client_from(&env.cp.operator_kubeconfig).await;
    let deployments: Api<Deployment> = Api::namespaced(operator, &env.ns);
    let apply = PatchParams::apply("mxcred-operator/restart/bot").force();
    let merge = PatchParams::default();

    // The policy takes effect a moment after its creation: until a change of another
    // Deployment's replicas is refused (each try is a change: a change that was let through
    // would make the same patch a no-op, which the policy allows).
    let probe: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "probe"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "probe"}},
            "template": {"metadata": {"labels": {"app": "probe"}},
                "spec": {"containers": [{"name": "app", "image": "app:1"}]}}},
    }))
    .unwrap();
    admin.create(&PostParams::default(), &probe).await.unwrap();
    let tries = std::sync::atomic::AtomicI32::new(1);
    wait_for(Duration::from_secs(30), || async {
        let n = tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let replicas = json!({"spec": {"replicas": n}});
        let result = deployments
            .patch("probe", &merge, &Patch::Merge(&replicas))
            .await;
        refused(&result).then_some(())
    })
    .await
    .expect("the policy takes effect");

    let image = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "app", "image": "evil:1"}]}}}});
    let result = deployments
        .patch("app", &merge, &Patch::Strategic(&image))
        .await;
    let Err(kube::Error::Api(e)) = &result else {
        panic!("the operator's identity changed the image: {result:?}")
    };
    assert_eq!(e.code, 403, "{e:?}");
    assert!(
        e.message.contains("mxcred-operator may change nothing"),
        "{}",
        e.message
    );

    // Its restart annotation: allowed, by the apply the operator sends, twice.
    for value in ["sha256:aaaaaaaaaaaa", "sha256:bbbbbbbbbbbb"] {
        deployments
            .patch("app", &apply, &Patch::Apply(restart_patch(value)))
            .await
            .unwrap_or_else(|e| panic!("the restart annotation is refused: {e}"));
    }
    let cluster_key = json!({"spec": {"template": {"metadata": {"annotations": {
        "cluster.restart.mxcred.io/shared": "sha256:cccccccccccc"}}}}});
    deployments
        .patch("app", &merge, &Patch::Merge(&cluster_key))
        .await
        .expect("a cluster resource's restart annotation is allowed");

    // Anything else is refused: another template annotation, removing one, the template's
    // labels, the workload's own labels and annotations, its replicas.
    let attempts = [
        json!({"spec": {"template": {"metadata": {"annotations": {"other": "x"}}}}}),
        json!({"spec": {"template": {"metadata": {"annotations": {"keep": null}}}}}),
        json!({"spec": {"template": {"metadata": {"labels": {"extra": "x"}}}}}),
        json!({"metadata": {"labels": {"team": "b"}}}),
        json!({"metadata": {"annotations": {"mxcred.io/restart-on": "bot"}}}),
        json!({"spec": {"replicas": 3}}),
        json!({"spec": {"template": {"spec": {"serviceAccountName": "admin"}}}}),
    ];
    for attempt in attempts {
        let result = deployments
            .patch("app", &merge, &Patch::Merge(&attempt))
            .await;
        assert!(refused(&result), "{attempt} was allowed: {result:?}");
    }
    let d = admin.get("app").await.unwrap();
    let template = d.spec.template;
    let image = template.spec.unwrap().containers[0].image.clone();
    assert_eq!(image.as_deref(), Some("app:1"));
    let annotations = template.metadata.unwrap().annotations.unwrap();
    assert_eq!(annotations["restart.mxcred.io/bot"], "sha256:bbbbbbbbbbbb");
    assert_eq!(annotations["keep"], "me");
    assert_eq!(annotations.len(), 3, "{annotations:?}");
    // The administrator is not confined.
    admin
        .patch(
            "app",
            &merge,
            &Patch::Strategic(&json!({"spec": {"replicas": 1}})),
        )
        .await
        .expect("the administrator may change it");
}

#[tokio::test]
async fn a_tenant_may_not_set_a_reserved_namespace_label() {
    let env = TestEnv::new("vap-ns").await;
    install_policies(&env.client).await;
    // The tenant may label its own namespace, as with project-style tenancy.
    let role: k8s_openapi::api::rbac::v1::ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": format!("{}-label", env.ns)},
        "rules": [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "patch"],
                   "resourceNames": [env.ns]}],
    }))
    .unwrap();
    Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(env.client.clone())
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let kubeconfig = env.namespaced_identity("tenant", json!([])).await;
    let binding: k8s_openapi::api::rbac::v1::ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": format!("{}-label", env.ns)},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": format!("{}-label", env.ns)},
        "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": env.ns}],
    }))
    .unwrap();
    Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(env.client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let tenant = common::client_from(&kubeconfig).await;
    let namespaces: Api<Namespace> = Api::all(tenant);
    let label = |key: &str| json!({"metadata": {"labels": {key: "true"}}});
    wait_for(Duration::from_secs(15), || async {
        namespaces
            .patch(
                &env.ns,
                &PatchParams::default(),
                &Patch::Merge(label("team.example.com/a")),
            )
            .await
            .ok()
    })
    .await
    .expect("the tenant may label its namespace");
    // The policy takes effect a moment after its creation: each try sets another key (one let
    // through before would make the same patch a no-op, which the policy allows).
    let tries = std::sync::atomic::AtomicU32::new(0);
    let message = wait_for(Duration::from_secs(30), || async {
        let n = tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let reserved = label(&format!("select.mxcred.io/probe-{n}"));
        match namespaces
            .patch(&env.ns, &PatchParams::default(), &Patch::Merge(reserved))
            .await
        {
            Err(kube::Error::Api(e)) if e.code == 403 || e.code == 422 => Some(e.message),
            _ => None,
        }
    })
    .await
    .expect("the tenant is refused a reserved label");
    assert!(message.contains("reserved to administrators"), "{message}");
    let reserved = label("select.mxcred.io/deploy-bot");
    let result = namespaces
        .patch(&env.ns, &PatchParams::default(), &Patch::Merge(reserved))
        .await;
    assert!(
        matches!(&result, Err(kube::Error::Api(e)) if e.code == 403),
        "the tenant set the selector's label: {result:?}"
    );
    // The administrator may set it; the tenant may then neither change nor remove it.
    Api::<Namespace>::all(env.client.clone())
        .patch(
            &env.ns,
            &PatchParams::default(),
            &Patch::Merge(label("select.mxcred.io/deploy-bot")),
        )
        .await
        .expect("the administrator may set it");
    for value in [json!("false"), json!(null)] {
        let change = json!({"metadata": {"labels": {"select.mxcred.io/deploy-bot": value}}});
        let result = namespaces
            .patch(&env.ns, &PatchParams::default(), &Patch::Merge(change))
            .await;
        assert!(
            matches!(&result, Err(kube::Error::Api(e)) if e.code == 403 || e.code == 422),
            "{value}: {result:?}"
        );
    }
}
