//! The Helm chart installed into the real control plane: its RBAC is enough for the operator
//! (a credential gets synced and verified under the chart's ServiceAccount) and no more.

mod common;

use common::{
    Operator, TestEnv, client_from, control_plane, loopback_platform, service_account_kubeconfig,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::{Api, Client};
use mendix_simulator::{Simulator, State};
use serde_json::json;
use std::process::Command;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/mxcred-operator");

fn helm_install(release: &str, ns: &str, set: &[&str]) {
    let cp = futures::executor::block_on(async { control_plane().await });
    let mut cmd = Command::new(common::helm_tools().join("helm"));
    cmd.args([
        "install",
        release,
        CHART,
        "--namespace",
        ns,
        "--create-namespace",
        // The harness applied the CRDs for every test of this control plane: a release that
        // owned them could not be installed beside it (tests/upgrade.rs installs them with the
        // chart).
        "--set",
        "crds.enabled=false",
    ])
    .arg("--kubeconfig")
    .arg(&cp.admin_kubeconfig);
    for s in set {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "helm install: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether the client's identity may do `verb` on `resource` (in `ns`, or cluster-wide).
async fn can(client: &Client, verb: &str, group: &str, resource: &str, ns: Option<&str>) -> bool {
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s.to_owned())),
        None => (resource, None),
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                subresource,
                namespace: ns.map(str::to_owned),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let answer = api.create(&Default::default(), &review).await.unwrap();
    answer.status.unwrap().allowed
}

#[tokio::test]
async fn the_charts_rbac_is_enough_and_no_more() {
    let env = TestEnv::new("chart").await;
    let release_ns = "mxcred-chart";
    // In a blocking thread: helm_install waits for the shared control plane on its own executor.
    tokio::task::spawn_blocking(|| helm_install("chart", "mxcred-chart", &["replicas=2"]))
        .await
        .unwrap();
    let kubeconfig = service_account_kubeconfig(
        &env.client,
        &env.cp.dir,
        release_ns,
        "chart-mxcred-operator",
    )
    .await;

    let sim = Simulator::start().await;
    sim.set("chart-token", State::Valid);
    let mut args: Vec<String> = [
        "--leader-elect",
        "--lease-name",
        "mxcred-operator",
        "--lease-namespace",
        release_ns,
    ]
    .map(String::from)
    .into();
    args.extend(loopback_platform(&sim.base_url()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let op = Operator::start(
        env.cp,
        &kubeconfig,
        &env.ns,
        &args,
        &[("POD_NAME", "chart-pod")],
    );

    env.put_source("raw", &[("token", "chart-token")]).await;
    env.put_credential("c", json!({"sourceRef": {"name": "raw"}}))
        .await;
    env.wait_reason("c", "Ready", "Synced").await;
    env.wait_reason("c", "TokenValid", "Verified").await;
    env.wait_event("Normal Verified").await;
    assert!(
        !op.logs().to_lowercase().contains("forbidden"),
        "{}",
        op.logs()
    );

    let sa = client_from(&kubeconfig).await;
    let ns = Some(env.ns.as_str());
    for (verb, group, resource, where_) in [
        ("watch", "mxcred.io", "mendixcredentials", None),
        ("patch", "mxcred.io", "mendixcredentials/status", ns),
        ("get", "", "secrets", ns),
        ("create", "", "secrets", ns),
        ("patch", "", "secrets", ns),
        ("delete", "", "secrets", ns),
        ("create", "events.k8s.io", "events", ns),
        ("create", "coordination.k8s.io", "leases", Some(release_ns)),
        // ClusterMendixCredentials, in cluster mode.
        ("watch", "mxcred.io", "clustermendixcredentials", None),
        (
            "patch",
            "mxcred.io",
            "clustermendixcredentials/status",
            None,
        ),
        ("list", "", "namespaces", None),
        ("watch", "", "namespaces", None),
        ("create", "events.k8s.io", "events", Some("default")),
        // The consumers of the targets (consumers.enabled, the default), read only.
        ("list", "", "pods", ns),
        ("watch", "apps", "replicasets", None),
        ("list", "batch", "cronjobs", ns),
    ] {
        assert!(
            can(&sa, verb, group, resource, where_).await,
            "needs {verb} {resource}"
        );
    }
    for (verb, group, resource, where_) in [
        ("create", "mxcred.io", "clustermendixcredentials", None),
        ("patch", "mxcred.io", "clustermendixcredentials", None),
        ("delete", "mxcred.io", "clustermendixcredentials", None),
        ("patch", "", "namespaces", None),
        ("delete", "", "namespaces", None),
        ("update", "", "secrets", ns),
        ("create", "mxcred.io", "mendixcredentials", ns),
        ("update", "mxcred.io", "mendixcredentials", ns),
        ("delete", "mxcred.io", "mendixcredentials", ns),
        ("patch", "mxcred.io", "mendixcredentials", ns),
        ("get", "", "configmaps", ns),
        ("get", "", "pods", ns),
        ("create", "", "pods", ns),
        ("create", "", "serviceaccounts/token", ns),
        ("create", "coordination.k8s.io", "leases", Some("default")),
        ("get", "coordination.k8s.io", "leases", Some("kube-system")),
        ("create", "rbac.authorization.k8s.io", "clusterroles", None),
        ("impersonate", "", "users", None),
        ("create", "", "events", ns),
        // Without rolloutRestart.enabled, nothing on workloads but list and watch.
        ("get", "apps", "deployments", ns),
        ("create", "batch", "jobs", ns),
        ("patch", "apps", "deployments", ns),
        ("patch", "apps", "statefulsets", ns),
    ] {
        assert!(
            !can(&sa, verb, group, resource, where_).await,
            "must not {verb} {resource} in {where_:?}"
        );
    }
}

#[tokio::test]
async fn namespace_scoped_mode_grants_only_the_watched_namespaces() {
    let watched = TestEnv::new("watched").await;
    let other = TestEnv::new("unwatched").await;
    let set = format!("watchNamespaces={{{}}}", watched.ns);
    tokio::task::spawn_blocking(move || {
        helm_install(
            "scoped",
            "mxcred-scoped",
            &[&set, "rolloutRestart.enabled=true"],
        )
    })
    .await
    .unwrap();
    let kubeconfig = service_account_kubeconfig(
        &watched.client,
        &watched.cp.dir,
        "mxcred-scoped",
        "scoped-mxcred-operator",
    )
    .await;
    let sa = client_from(&kubeconfig).await;
    assert!(can(&sa, "list", "", "secrets", Some(&watched.ns)).await);
    assert!(
        can(
            &sa,
            "watch",
            "mxcred.io",
            "mendixcredentials",
            Some(&watched.ns)
        )
        .await
    );
    assert!(!can(&sa, "list", "", "secrets", Some(&other.ns)).await);
    // The cluster kind is not served in this mode, and nothing grants it.
    assert!(!can(&sa, "watch", "mxcred.io", "clustermendixcredentials", None).await);
    assert!(!can(&sa, "list", "", "namespaces", None).await);
    assert!(
        !can(&sa, "get", "", "secrets", None).await,
        "no cluster-wide Secret access"
    );
    assert!(!can(&sa, "watch", "mxcred.io", "mendixcredentials", None).await);
    // rolloutRestart.enabled: workloads of the watched namespace, read and patched only.
    for resource in ["deployments", "statefulsets", "daemonsets"] {
        assert!(can(&sa, "patch", "apps", resource, Some(&watched.ns)).await);
        assert!(!can(&sa, "patch", "apps", resource, Some(&other.ns)).await);
    }
    // consumers.enabled: listed and watched in the watched namespace only.
    assert!(can(&sa, "list", "apps", "deployments", Some(&watched.ns)).await);
    assert!(!can(&sa, "list", "apps", "deployments", Some(&other.ns)).await);
    assert!(!can(&sa, "list", "", "pods", None).await);
    assert!(!can(&sa, "create", "apps", "deployments", Some(&watched.ns)).await);
    assert!(!can(&sa, "update", "apps", "deployments", Some(&watched.ns)).await);

    let sim = Simulator::start().await;
    sim.set("scoped-token", State::Valid);
    let args = loopback_platform(&sim.base_url());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _op = Operator::start(watched.cp, &kubeconfig, &watched.ns, &args, &[]);
    watched
        .put_source("raw", &[("token", "scoped-token")])
        .await;
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "runner", "annotations": {"mxcred.io/restart-on": "c"}},
        "spec": {"selector": {"matchLabels": {"app": "runner"}}, "template": {
            "metadata": {"labels": {"app": "runner"}},
            "spec": {"containers": [{"name": "runner", "image": "runner:1"}]}}},
    }))
    .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(watched.client.clone(), &watched.ns);
    deployments
        .create(&Default::default(), &deployment)
        .await
        .unwrap();
    watched
        .put_credential(
            "c",
            json!({"sourceRef": {"name": "raw"},
                   "target": {"rolloutRestart": [{"kind": "Deployment", "name": "runner"}]}}),
        )
        .await;
    watched.wait_reason("c", "Ready", "Synced").await;
    watched.wait_reason("c", "TokenValid", "Verified").await;
    // The chart's Role is enough to restart it.
    let annotated = common::wait_for(std::time::Duration::from_secs(30), || async {
        let d = deployments.get("runner").await.ok()?;
        let annotations = d.spec.template.metadata?.annotations?;
        annotations.get("restart.mxcred.io/c").cloned()
    })
    .await;
    assert!(annotated.is_some_and(|f| f.starts_with("sha256:")));
}

#[tokio::test]
async fn a_pinned_digest_the_network_policy_and_the_dashboard_install() {
    // The API server refuses a label value it finds invalid: a digest must not reach one.
    let digest = format!("image.digest=sha256:{}", "0123456789abcdef".repeat(4));
    tokio::task::spawn_blocking(move || {
        helm_install(
            "extras",
            "mxcred-extras",
            &[
                &digest,
                "image.tag=v1.2.3",
                "networkPolicy.enabled=true",
                "networkPolicy.apiServer.cidrs={127.0.0.1/32}",
                "grafanaDashboard.enabled=true",
                "proxy.httpsProxy=http://proxy.example.com:3128",
            ],
        )
    })
    .await
    .unwrap();
    let cp = control_plane().await;
    let client = client_from(&cp.admin_kubeconfig).await;
    let policies: Api<k8s_openapi::api::networking::v1::NetworkPolicy> =
        Api::namespaced(client.clone(), "mxcred-extras");
    assert!(policies.get("extras-mxcred-operator").await.is_ok());
    let maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "mxcred-extras");
    let dashboard = maps.get("extras-mxcred-operator-dashboard").await.unwrap();
    assert!(dashboard.data.unwrap().contains_key("mxcred-operator.json"));
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client, "mxcred-extras");
    let deployment = deployments.get("extras-mxcred-operator").await.unwrap();
    let image = deployment.spec.template.spec.unwrap().containers[0]
        .image
        .clone()
        .unwrap();
    assert!(
        image.ends_with("@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"),
        "{image}"
    );
}
