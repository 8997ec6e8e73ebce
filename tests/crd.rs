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
fn committed_crd_is_current() {
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/mendixcredentials.mxcred.io.yaml"
    ))
    .unwrap();
    assert!(
        committed == mxcred_operator::crd_yaml(),
        "crds/mendixcredentials.mxcred.io.yaml is stale: run `make crds` and copy it to charts/mxcred-operator/crds/"
    );
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
