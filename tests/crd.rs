//! The committed CRD is what `mxcred-operator crd` prints, `kubectl explain` documents every
//! field on the real API server, and its validation rules hold on every server version: at apply
//! time where the server runs CEL, in status (the operator's `InvalidSpec`) where it does not.

mod common;

use common::{TestEnv, condition};
use kube::api::{Patch, PatchParams};
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn committed_crds_are_current() {
    for (file, yaml) in mxcred_operator::crds() {
        let committed =
            std::fs::read_to_string(format!("{}/crds/{file}", env!("CARGO_MANIFEST_DIR")))
                .unwrap_or_else(|e| panic!("crds/{file}: {e}: run `make crds`"));
        assert!(
            committed == yaml,
            "crds/{file} is stale: run `make crds` (which copies it to charts/mxcred-operator/crds/)"
        );
    }
}

#[test]
fn the_crd_command_prints_every_crd() {
    let out = Command::new(env!("CARGO_BIN_EXE_mxcred-operator"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let kinds: Vec<String> = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            let crd = <serde_yaml::Value as serde::Deserialize>::deserialize(doc).unwrap();
            crd["spec"]["names"]["kind"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(kinds, ["MendixCredential", "ClusterMendixCredential"]);
}

#[test]
fn objects_and_enums_are_not_nullable() {
    // An API server publishing OpenAPI v2 turns a nullable field into `{}`: `kubectl explain`
    // then shows an object without its fields. Plain values and maps stay nullable (see
    // `without_nullable`).
    fn check(path: &str, schema: &serde_json::Value, nullable: &mut Vec<String>) {
        let is_object_or_enum = schema.get("properties").is_some() || schema.get("enum").is_some();
        assert!(
            !(is_object_or_enum && schema.get("nullable").is_some()),
            "{path} is nullable"
        );
        if schema.get("nullable").is_some() {
            nullable.push(path.to_owned());
        }
        for (name, sub) in schema["properties"].as_object().into_iter().flatten() {
            check(&format!("{path}.{name}"), sub, nullable);
        }
    }
    let crd: serde_json::Value = serde_yaml::from_str(&mxcred_operator::crd_yaml()).unwrap();
    let mut nullable = vec![];
    check(
        "",
        &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"],
        &mut nullable,
    );
    let cluster: serde_json::Value =
        serde_yaml::from_str(&mxcred_operator::cluster_crd_yaml()).unwrap();
    let mut cluster_nullable = vec![];
    check(
        "",
        &cluster["spec"]["versions"][0]["schema"]["openAPIV3Schema"],
        &mut cluster_nullable,
    );
    for path in [".spec.target.namespaceSelector", ".status"] {
        assert!(!cluster_nullable.iter().any(|p| p == path), "{path}");
    }
    for path in [
        ".spec.target",
        ".spec.verification",
        ".spec.type",
        ".status",
    ] {
        assert!(!nullable.iter().any(|p| p == path), "{path}");
    }
    assert!(nullable.iter().any(|p| p == ".spec.target.labels"));
    assert!(nullable.iter().any(|p| p == ".spec.sourceRef.tokenKey"));
}

#[tokio::test]
async fn kubectl_explain_documents_every_field() {
    let env = TestEnv::new("explain").await;
    let kubectl = common::helm_tools().join("kubectl");
    let explain = |path: &str| {
        // The API server publishes a new CRD's OpenAPI a moment after serving it.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = Command::new(&kubectl)
                .arg("--kubeconfig")
                .arg(&env.cp.admin_kubeconfig)
                .arg("--cache-dir")
                .arg(env.cp.dir.join("kubectl-cache"))
                .args(["explain", path])
                .output()
                .unwrap();
            if out.status.success() {
                return String::from_utf8(out.stdout).unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "kubectl explain {path}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    let has = |text: &str, field: &str, kind: &str| {
        text.lines().any(|l| {
            let mut words = l.split_whitespace();
            words.next() == Some(field) && words.next() == Some(kind)
        })
    };
    let spec = explain("mendixcredential.spec");
    for (field, kind) in [
        ("type", "<string>"),
        ("sourceRef", "<Object>"),
        ("target", "<Object>"),
        ("verification", "<Object>"),
    ] {
        assert!(has(&spec, field, kind), "{field} {kind} missing:\n{spec}");
    }
    let verification = explain("mendixcredential.spec.verification");
    for field in ["enabled", "interval", "platform", "baseUrl", "probe"] {
        assert!(
            verification.contains(field),
            "{field} missing:\n{verification}"
        );
    }
    let words = verification
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(words.contains("At least 1m."), "{verification}");
    let status = explain("mendixcredential.status");
    assert!(has(&status, "conditions", "<[]Object>"), "{status}");
    assert!(status.contains("lastVerifiedTime"), "{status}");
    let cluster = explain("clustermendixcredential.spec.target");
    // Optional plain values are nullable, which a 1.20 server publishes without a type.
    assert!(has(&cluster, "namespaceSelector", "<Object>"), "{cluster}");
    for field in ["name", "namespaces", "labels", "annotations"] {
        assert!(cluster.contains(field), "{field} missing:\n{cluster}");
    }
    let words = cluster.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        words.contains("An empty selector ({}) selects nothing"),
        "{cluster}"
    );
    let source = explain("clustermendixcredential.spec.sourceRef");
    assert!(has(&source, "namespace", "<string>"), "{source}");
    let status = explain("clustermendixcredential.status");
    for (field, kind) in [
        ("failedNamespaces", "<[]Object>"),
        ("conditions", "<[]Object>"),
    ] {
        assert!(
            has(&status, field, kind),
            "{field} {kind} missing:\n{status}"
        );
    }
    for field in ["selected", "synced", "namespaces", "failedNamespaceCount"] {
        assert!(status.contains(field), "{field} missing:\n{status}");
    }
    let target = explain("mendixcredential.spec.target");
    for field in ["name", "labels", "annotations", "rolloutRestart"] {
        assert!(target.contains(field), "{field} missing:\n{target}");
    }
    // A nullable list, published without a type by an API server of OpenAPI v2 only (1.20):
    // its description names the fields of its items.
    let restart = explain("mendixcredential.spec.target.rolloutRestart")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        restart.contains("kind (Deployment, StatefulSet or DaemonSet) and name"),
        "{restart}"
    );
    assert!(restart.contains("rolloutRestart.enabled=true"), "{restart}");
    let restarts = explain("mendixcredential.status.rolloutRestart");
    for field in ["kind", "name", "fingerprint", "reason", "message"] {
        assert!(restarts.contains(field), "{field} missing:\n{restarts}");
    }
    assert!(restarts.contains("NotFound"), "{restarts}");
}

#[tokio::test]
async fn rules_are_checked_at_apply_time_or_in_status() {
    let env = TestEnv::new("rules").await;
    let version = env.client.apiserver_version().await.unwrap();
    let minor: u32 = version
        .minor
        .trim_end_matches('+')
        .parse()
        .expect("a numeric minor version");
    // CEL validation rules: beta and on by default from 1.25, GA in 1.29.
    let cel = minor >= 25;
    let crds: kube::Api<
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    > = kube::Api::all(env.client.clone());
    let stored =
        serde_json::to_string(&crds.get("mendixcredentials.mxcred.io").await.unwrap()).unwrap();
    assert_eq!(
        stored.contains("x-kubernetes-validations"),
        cel,
        "1.{minor}: the CRD applied with its rules, which this version keeps only with CEL"
    );

    let _op = env.start_operator(&[]);
    env.put_source("raw", &[("token", "a-token")]).await;
    for (name, spec, needle) in [
        (
            "private",
            json!({"sourceRef": {"name": "raw"}, "verification": {"platform": "PrivatePlatform"}}),
            "baseUrl is required when platform is PrivatePlatform",
        ),
        (
            "cloud",
            json!({"sourceRef": {"name": "raw"}, "verification": {"baseUrl": "https://pmp.example.com"}}),
            "baseUrl is only used with platform PrivatePlatform",
        ),
        (
            "interval",
            json!({"sourceRef": {"name": "raw"}, "verification": {"interval": "59s"}}),
            "1m",
        ),
        (
            "named",
            json!({"sourceRef": {"name": "raw"}, "target": {"name": "raw"}}),
            "must differ from spec.sourceRef.name",
        ),
        // The target's name defaults to the resource's.
        ("raw", json!({"sourceRef": {"name": "raw"}}), "must differ"),
    ] {
        let cr = json!({"apiVersion": "mxcred.io/v1alpha1", "kind": "MendixCredential",
                        "metadata": {"name": name}, "spec": spec});
        let applied = env
            .credentials()
            .patch(name, &PatchParams::apply("mxcred-tests"), &Patch::Apply(cr))
            .await;
        if cel {
            let error = applied.expect_err(name).to_string();
            assert!(error.contains(needle), "{name}: {error}");
        } else {
            applied.unwrap_or_else(|e| panic!("{name}: 1.{minor} has no CEL, yet: {e}"));
            let cr = env.wait_reason(name, "Ready", "InvalidSpec").await;
            let message = condition(&cr, "Ready").message;
            assert!(message.contains(needle), "{name}: {message}");
        }
    }
    // Spellings CEL cannot read are left to the operator, in both directions.
    env.put_credential(
        "long",
        json!({"sourceRef": {"name": "raw"}, "verification": {"interval": "1d"}}),
    )
    .await;
    env.wait_reason("long", "Ready", "Synced").await;
}
