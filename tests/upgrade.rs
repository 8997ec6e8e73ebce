//! The chart installs and upgrades the CRDs the way users do it, on a control plane that starts
//! without them: a fresh `helm install` creates them and `helm uninstall` keeps them; a release
//! of the chart as it was when the CRDs sat in its `crds/` directory (which Helm never upgrades)
//! upgrades to this chart with every resource, field, status and Secret intact, under the new
//! schema.

mod common;

use common::{
    Operator, TestEnv, control_plane_without_crds, loopback_platform, service_account_kubeconfig,
    wait_until,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use mendix_simulator::{Simulator, State};
use mxcred_operator::domain::api::MendixCredential;
use mxcred_operator::domain::cluster::ClusterMendixCredential;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/mxcred-operator");
/// The last commit whose chart shipped the CRDs in `crds/`.
const CHART_WITH_CRDS_DIR: &str = "8e1ccbc";
const CRDS: [&str; 2] = [
    "mendixcredentials.mxcred.io",
    "clustermendixcredentials.mxcred.io",
];

fn helm(kubeconfig: &Path, args: &[&str]) {
    let out = Command::new(common::helm_tools().join("helm"))
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The chart as it was at `commit`, from the repository's history.
fn chart_at(commit: &str, dir: &Path) -> PathBuf {
    let archive = Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "archive", commit])
        .arg("charts/mxcred-operator")
        .output()
        .unwrap();
    assert!(
        archive.status.success(),
        "git archive {commit}: {} (the upgrade test needs the repository's history: a full \
         clone, not a shallow one)",
        String::from_utf8_lossy(&archive.stderr)
    );
    let mut tar = Command::new("tar")
        .args(["-x", "-C"])
        .arg(dir)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(tar.stdin.as_mut().unwrap(), &archive.stdout).unwrap();
    assert!(tar.wait().unwrap().success());
    dir.join("charts/mxcred-operator")
}

async fn wait_served(client: &Client) {
    let namespaced: Api<MendixCredential> = Api::all(client.clone());
    let cluster: Api<ClusterMendixCredential> = Api::all(client.clone());
    wait_until(Duration::from_secs(30), "the CRDs to be served", || async {
        namespaced.list(&Default::default()).await.is_ok()
            && cluster.list(&Default::default()).await.is_ok()
    })
    .await;
}

/// Every path of a spec field in the CRD of `name` (lists and maps as one field).
fn spec_fields(crd: &CustomResourceDefinition) -> Vec<String> {
    fn walk(path: &str, schema: &Value, out: &mut Vec<String>) {
        let object = if schema["type"] == "array" {
            &schema["items"]
        } else {
            schema
        };
        for (name, sub) in object["properties"].as_object().into_iter().flatten() {
            let path = format!("{path}.{name}");
            out.push(path.clone());
            walk(&path, sub, out);
        }
    }
    let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
    let mut out = vec![];
    walk(
        "",
        &schema["openAPIV3Schema"]["properties"]["spec"],
        &mut out,
    );
    out
}

/// Whether `value` sets the field at `path` (".a.b", through the first item of a list).
fn sets(value: &Value, path: &str) -> bool {
    let mut at = value;
    for part in path.trim_start_matches('.').split('.') {
        if let Some(first) = at.as_array().and_then(|a| a.first()) {
            at = first;
        }
        match at.get(part) {
            Some(next) => at = next,
            None => return false,
        }
    }
    true
}

/// What the upgrade must keep: every resource's spec and status (times and verdicts the
/// operator may renew aside) and every published Secret's data.
async fn snapshot(client: &Client, ns: &[&str]) -> Value {
    let strip = |mut status: Value| {
        for time in [
            "lastVerifiedTime",
            "nextVerificationTime",
            "lastSyncedTime",
            "observedGeneration",
        ] {
            status.as_object_mut().map(|s| s.remove(time));
        }
        status.as_object_mut().map(|s| s.remove("conditions"));
        status
    };
    let mut out = json!({});
    for cr in Api::<MendixCredential>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
    {
        let cr = serde_json::to_value(cr).unwrap();
        let key = format!("{}/{}", cr["metadata"]["namespace"], cr["metadata"]["name"]);
        out[key] = json!({"spec": cr["spec"], "status": strip(cr["status"].clone())});
    }
    for cr in Api::<ClusterMendixCredential>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
    {
        let cr = serde_json::to_value(cr).unwrap();
        let key = format!("cluster/{}", cr["metadata"]["name"]);
        out[key] = json!({"spec": cr["spec"], "status": strip(cr["status"].clone())});
    }
    for ns in ns {
        for secret in Api::<Secret>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await
            .unwrap()
        {
            let name = secret.metadata.name.clone().unwrap();
            out[format!("secret {ns}/{name}")] = serde_json::to_value(&secret.data).unwrap();
        }
    }
    out
}

#[tokio::test]
async fn the_chart_installs_keeps_and_upgrades_the_crds() {
    let cp = control_plane_without_crds().await;
    let env = TestEnv::new("upgrade").await;
    let crds: Api<CustomResourceDefinition> = Api::all(env.client.clone());
    let kubeconfig = cp.admin_kubeconfig.clone();

    // A fresh install creates the CRDs, labelled and kept; uninstalling keeps them.
    let kc = kubeconfig.clone();
    tokio::task::spawn_blocking(move || {
        helm(
            &kc,
            &[
                "install",
                "fresh",
                CHART,
                "-n",
                "mxcred-fresh",
                "--create-namespace",
            ],
        );
    })
    .await
    .unwrap();
    wait_served(&env.client).await;
    for name in CRDS {
        let crd = crds.get(name).await.unwrap();
        let keep = crd.metadata.annotations.unwrap_or_default();
        assert_eq!(keep["helm.sh/resource-policy"], "keep", "{name}");
    }
    let kc = kubeconfig.clone();
    tokio::task::spawn_blocking(move || helm(&kc, &["uninstall", "fresh", "-n", "mxcred-fresh"]))
        .await
        .unwrap();
    for name in CRDS {
        assert!(
            crds.get_opt(name).await.unwrap().is_some(),
            "{name} was deleted"
        );
        crds.delete(name, &DeleteParams::default()).await.unwrap();
    }
    wait_until(Duration::from_secs(60), "the CRDs to go", || async {
        crds.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .all(|c| !CRDS.contains(&c.metadata.name.as_deref().unwrap_or("")))
    })
    .await;

    // The chart from before: its CRDs come from crds/, installed once.
    let old_dir = cp.dir.join("old-chart");
    std::fs::create_dir_all(&old_dir).unwrap();
    let old = chart_at(CHART_WITH_CRDS_DIR, &old_dir);
    let release_ns = "mxcred-upgrade";
    let old_chart = old.to_str().unwrap().to_owned();
    let kc = kubeconfig.clone();
    tokio::task::spawn_blocking(move || {
        helm(
            &kc,
            &[
                "install",
                "up",
                &old_chart,
                "-n",
                release_ns,
                "--create-namespace",
                "--set",
                "rolloutRestart.enabled=true",
            ],
        );
    })
    .await
    .unwrap();
    wait_served(&env.client).await;

    let sim = Simulator::start().await;
    // The simulator knows an API key as "username:key".
    for token in ["pat-token", "ci-bot:api-key", "cluster-token"] {
        sim.set(token, State::Valid);
    }
    let operator_kubeconfig =
        service_account_kubeconfig(&env.client, &cp.dir, release_ns, "up-mxcred-operator").await;
    let start = || {
        let mut args = loopback_platform(&sim.base_url());
        args.extend(["--lease-namespace", release_ns].map(String::from));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // Cluster mode: every namespace and the cluster kind.
        Operator::start(cp, &operator_kubeconfig, "", &args, &[])
    };
    let ns = env.ns.as_str();
    let copies = "upgrade-copies";
    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    namespaces
        .patch(
            copies,
            &PatchParams::apply("mxcred-tests"),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": copies, "labels": {"ci.example.com/mendix": "yes"}}})),
        )
        .await
        .unwrap();
    // It consents to restarts by both resources (a status reason the old CRD does not know,
    // such as NoConsent, would be refused by it: the operator here is already the new one).
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "runner", "annotations": {"mxcred.io/restart-on": "pat,cluster/shared"}},
        "spec": {"selector": {"matchLabels": {"app": "runner"}},
                 "template": {"metadata": {"labels": {"app": "runner"}},
                              "spec": {"containers": [{"name": "c", "image": "runner"}]}}}
    }))
    .unwrap();
    for namespace in [ns, copies] {
        Api::<Deployment>::namespaced(env.client.clone(), namespace)
            .create(&Default::default(), &deployment)
            .await
            .unwrap();
    }
    env.put_source("pat", &[("pat", "pat-token")]).await;
    env.put_source("key", &[("user", "ci-bot"), ("key", "api-key")])
        .await;
    env.put_source("shared", &[("token", "cluster-token")])
        .await;
    let target = |name: &str| {
        json!({"name": name, "labels": {"team": "ci"}, "annotations": {"example.com/owner": "ci"},
               "rolloutRestart": [{"kind": "Deployment", "name": "runner"}]})
    };
    let pat = json!({
        "type": "PersonalAccessToken",
        "sourceRef": {"name": "pat", "tokenKey": "pat"},
        "target": target("mendix-pat"),
        "verification": {"enabled": true, "interval": "10m", "platform": "PrivatePlatform",
                         "baseUrl": sim.base_url(), "probe": "PrivatePlatformProjects"},
        "rotation": {"policy": "VerifyFirst"},
    });
    let api_key = json!({
        "type": "ApiKey",
        "sourceRef": {"name": "key", "usernameKey": "user", "apiKeyKey": "key"},
        "target": {"name": "mendix-key"},
        "verification": {"probe": "DeployV1Apps"},
    });
    let mut cluster_target = target("mendix-shared");
    cluster_target["namespaces"] = json!([ns]);
    cluster_target["namespaceSelector"] = json!({
        "matchLabels": {"ci.example.com/mendix": "yes"},
        "matchExpressions": [{"key": "ci.example.com/mendix", "operator": "In", "values": ["yes"]}],
    });
    let cluster = json!({
        "type": "PersonalAccessToken",
        // The keys of the other credential type are allowed, and unused.
        "sourceRef": {"name": "shared", "namespace": ns, "tokenKey": "token",
                      "usernameKey": "user", "apiKeyKey": "key"},
        "target": cluster_target,
        "verification": {"enabled": true, "interval": "10m", "platform": "MendixCloud",
                         "baseUrl": "", "probe": "DeployApps"},
        "rotation": {"policy": "VerifyFirst"},
    });
    // No operator runs under the old CRDs: this build's operator writes status fields they do
    // not declare (status.tokenDigest), which a server-side apply refuses; the old chart ran
    // the old image. Status and Secrets are compared across the upgrade of a running release
    // below.
    env.put_credential("pat", pat.clone()).await;
    env.put_credential("key", api_key.clone()).await;
    let clusters: Api<ClusterMendixCredential> = Api::all(env.client.clone());
    clusters
        .patch(
            "shared",
            &PatchParams::apply("mxcred-tests"),
            &Patch::Apply(json!({"apiVersion": "mxcred.io/v1alpha1",
                "kind": "ClusterMendixCredential", "metadata": {"name": "shared"},
                "spec": cluster})),
        )
        .await
        .unwrap();
    // Every spec field of both kinds is used: the upgrade has to keep each of them.
    for (name, specs) in [
        ("mendixcredentials.mxcred.io", vec![&pat, &api_key]),
        ("clustermendixcredentials.mxcred.io", vec![&cluster]),
    ] {
        for field in spec_fields(&crds.get(name).await.unwrap()) {
            assert!(
                specs.iter().any(|s| sets(s, &field)),
                "{name}: the upgrade test sets no {field}"
            );
        }
    }
    let ready = || async {
        for name in ["pat", "key"] {
            env.wait_reason(name, "Ready", "Synced").await;
            env.wait_reason(name, "TokenValid", "Verified").await;
        }
        wait_until(
            Duration::from_secs(30),
            "the cluster credential",
            || async {
                clusters.get("shared").await.ok().is_some_and(|c| {
                    let conditions = c.status.map(|s| s.conditions).unwrap_or_default();
                    ["Ready", "TokenValid"].iter().all(|t| {
                        conditions
                            .iter()
                            .any(|c| &c.type_ == t && c.status == "True")
                    })
                })
            },
        )
        .await;
    };
    let specs = snapshot(&env.client, &[]).await;

    // The upgrade: Helm adopts the CRDs it installed from crds/ and applies the new schema.
    let upgrade = || {
        let kc = kubeconfig.clone();
        tokio::task::spawn_blocking(move || {
            helm(
                &kc,
                &[
                    "upgrade",
                    "up",
                    CHART,
                    "-n",
                    release_ns,
                    "--take-ownership",
                    "--set",
                    "rolloutRestart.enabled=true",
                ],
            );
        })
    };
    upgrade().await.unwrap();
    for name in CRDS {
        let crd = crds.get(name).await.unwrap();
        let annotations = crd.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(annotations["helm.sh/resource-policy"], "keep", "{name}");
        assert_eq!(annotations["meta.helm.sh/release-name"], "up", "{name}");
        let schema = serde_json::to_string(&crd.spec.versions[0].schema).unwrap();
        for rule in [
            "interval must be at most 366d",
            "labels keys must be qualified names",
        ] {
            assert!(schema.contains(rule), "{name}: the old schema");
        }
    }
    assert_eq!(
        snapshot(&env.client, &[]).await,
        specs,
        "a resource or spec field lost in the upgrade"
    );

    let mut op = start();
    ready().await;
    let before = snapshot(&env.client, &[ns, copies]).await;
    assert!(
        before
            .get(format!("secret {copies}/mendix-shared"))
            .is_some(),
        "{before:#}"
    );
    // The next upgrade of the release, operator stopped: nothing lost or changed either.
    op.terminate();
    upgrade().await.unwrap();
    assert_eq!(
        snapshot(&env.client, &[ns, copies]).await,
        before,
        "lost in the upgrade"
    );
    let _op = start();
    ready().await;
    assert_eq!(
        snapshot(&env.client, &[ns, copies]).await,
        before,
        "changed after the upgrade"
    );
    // The new schema holds: a rule the old chart's CRD did not have refuses at apply time.
    let mut bad = pat.clone();
    bad["verification"]["interval"] = "8785h".into();
    let refused = env
        .credentials()
        .patch(
            "pat",
            &PatchParams::apply("mxcred-tests"),
            &Patch::Apply(
                json!({"apiVersion": "mxcred.io/v1alpha1", "kind": "MendixCredential",
                "metadata": {"name": "pat"}, "spec": bad}),
            ),
        )
        .await
        .expect_err("the new rule")
        .to_string();
    assert!(
        refused.contains("interval must be at most 366d"),
        "{refused}"
    );
}
