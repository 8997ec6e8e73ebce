//! The chart's ValidatingAdmissionPolicies on a real API server (Kubernetes 1.30 and newer:
//! run with `KUBEBUILDER_ASSETS` pointing at such a control plane), installed from what
//! `helm template` renders with `admissionPolicy.enabled=true`: the operator's identity may
//! change a workload's restart annotation and nothing else on it, and a tenant may not set a
//! reserved namespace label. A binary of its own: the policies are cluster-wide.

mod common;

use common::{TestEnv, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use std::process::Command;
use std::time::Duration;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/mxcred-operator");

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
