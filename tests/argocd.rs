//! The Argo CD health check of docs/argocd.md, run by a Lua 5.1 interpreter (Argo CD's own Lua
//! is 5.1) on the MendixCredentials the operator itself wrote a status to: one per reason it
//! can write. docs/argocd-health.lua is the script; the copy in the docs must be the same.

mod common;

use common::{ROOT, TestEnv, wait_for};
use mendix_simulator::{Simulator, State};
use serde_json::{Value, json};
use std::process::{Command, Stdio};
use std::time::Duration;

fn script() -> String {
    std::fs::read_to_string(format!("{ROOT}/docs/argocd-health.lua")).unwrap()
}

#[test]
fn the_docs_quote_the_script_verbatim() {
    let docs = std::fs::read_to_string(format!("{ROOT}/docs/argocd.md")).unwrap();
    let fence = "```yaml\napiVersion: v1\nkind: ConfigMap\n";
    let start = docs.find(fence).expect("the docs give argocd-cm") + "```yaml\n".len();
    let block = &docs[start..start + docs[start..].find("```").unwrap()];
    let config_map: serde_yaml::Value = serde_yaml::from_str(block).unwrap();
    for kind in ["MendixCredential", "ClusterMendixCredential"] {
        let key = format!("resource.customizations.health.mxcred.io_{kind}");
        assert_eq!(
            config_map["data"][key.as_str()].as_str(),
            Some(script().as_str()),
            "docs/argocd.md and docs/argocd-health.lua differ for {kind}: copy the script into the docs"
        );
    }
}

/// The tests of this binary take turns: one runs the operator in cluster mode, which would also
/// serve the other's namespace.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A JSON value as a Lua 5.1 table constructor (null as nil, arrays 1-based).
fn lua(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let mut out = String::from("\"");
            for byte in s.bytes() {
                match byte {
                    b'"' | b'\\' => out.extend(['\\', byte as char]),
                    0x20..=0x7e => out.push(byte as char),
                    _ => out.push_str(&format!("\\{byte}")),
                }
            }
            out.push('"');
            out
        }
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("[{}] = {}", lua(&Value::String(k.clone())), lua(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Runs the health check on `obj` as Argo CD does (the object in the global `obj`); returns
/// (status, message).
fn health(obj: &Value) -> (String, String) {
    let program = format!(
        "obj = {}\nlocal function health()\n{}\nend\nlocal hs = health()\n\
         io.write(hs.status, \"\\n\", hs.message or \"\")\n",
        lua(obj),
        script()
    );
    let out = Command::new("lua5.1")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(program.as_bytes())?;
            child.wait_with_output()
        })
        .expect(
            "lua5.1 is missing: `make test` installs it (hack/deps.sh), or apt-get install lua5.1",
        );
    assert!(
        out.status.success(),
        "lua5.1: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (status, message) = text.split_once('\n').unwrap();
    (status.to_owned(), message.to_owned())
}

fn condition<'a>(obj: &'a Value, type_: &str) -> &'a Value {
    obj["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {obj}"))
}

fn describe(c: &Value) -> String {
    format!(
        "{}: {}",
        c["reason"].as_str().unwrap(),
        c["message"].as_str().unwrap()
    )
}

#[tokio::test]
async fn health_of_every_status_the_operator_writes() {
    let _turn = TURN.lock().await;
    let env = TestEnv::new("argocd").await;
    let sim = Simulator::start().await;
    for (token, state) in [
        ("argo-valid", State::Valid),
        ("argo-deleted", State::Deleted),
        ("argo-deactivated", State::Deactivated),
        ("argo-scope", State::MissingScope),
        (
            "argo-limited",
            State::RateLimited {
                retry_after_secs: 3600,
            },
        ),
        ("argo-down", State::ServerError),
    ] {
        sim.set(token, state);
    }
    let _op = env.start_operator_with_platform(&sim.base_url(), &[]);

    // name, token in the source ("" for no source), extra spec, the reason awaited (condition).
    let cases: [(&str, &str, Value, &str, &str); 15] = [
        ("valid", "argo-valid", json!({}), "TokenValid", "Verified"),
        (
            "deleted",
            "argo-deleted",
            json!({}),
            "TokenValid",
            "TokenRejected",
        ),
        (
            "deactivated",
            "argo-deactivated",
            json!({}),
            "TokenValid",
            "UserDeactivated",
        ),
        ("scope", "argo-scope", json!({}), "TokenValid", "Forbidden"),
        (
            "limited",
            "argo-limited",
            json!({}),
            "TokenValid",
            "RateLimited",
        ),
        (
            "down",
            "argo-down",
            json!({}),
            "TokenValid",
            "PlatformUnavailable",
        ),
        (
            "notallowed",
            "argo-valid",
            json!({"verification": {"probe": "https://platform.invalid/api"}}),
            "TokenValid",
            "EndpointNotAllowed",
        ),
        (
            "disabled",
            "argo-valid",
            json!({"verification": {"enabled": false}}),
            "TokenValid",
            "VerificationDisabled",
        ),
        ("nosource", "", json!({}), "Ready", "SourceNotFound"),
        (
            "nokey",
            "argo-valid",
            json!({"sourceRef": {"tokenKey": "other"}}),
            "Ready",
            "SourceKeyMissing",
        ),
        (
            "badvalue",
            "not a token",
            json!({}),
            "Ready",
            "InvalidSource",
        ),
        (
            "conflict",
            "argo-valid",
            json!({"target": {"name": "someone-elses"}}),
            "Ready",
            "TargetConflict",
        ),
        (
            "badspec",
            "argo-valid",
            // A spelling the CRD's CEL rule cannot read: the operator refuses it.
            json!({"verification": {"interval": "10sec"}}),
            "Ready",
            "InvalidSpec",
        ),
        // The operator here may not touch workloads: the restart is Forbidden, and named.
        (
            "restart",
            "argo-valid",
            json!({"target": {"rolloutRestart": [{"kind": "Deployment", "name": "runner"}]}}),
            "TokenValid",
            "Verified",
        ),
        // Nothing to verify yet: TokenValid Pending.
        ("pending", "", json!({}), "TokenValid", "Pending"),
    ];
    env.put_source("someone-elses", &[("x", "y")]).await;
    for (name, token, extra, ..) in &cases {
        let source = format!("src-{name}");
        if !token.is_empty() {
            env.put_source(&source, &[("token", token)]).await;
        }
        let mut spec = json!({"sourceRef": {"name": source}});
        for (k, v) in extra.as_object().unwrap() {
            match (spec.get_mut(k), v) {
                (Some(Value::Object(have)), Value::Object(more)) => {
                    have.extend(more.clone());
                }
                _ => spec[k] = v.clone(),
            }
        }
        env.put_credential(name, spec).await;
    }

    // A rotation held back: rejected, or waiting for a verdict.
    let rotations = [
        ("rotated-bad", "argo-deleted", "RotationRejected"),
        ("rotated-later", "argo-down", "RotationPending"),
    ];
    for (name, _, _) in rotations {
        env.put_source(&format!("src-{name}"), &[("token", "argo-valid")])
            .await;
        env.put_credential(name, json!({"sourceRef": {"name": format!("src-{name}")}}))
            .await;
    }
    for (name, new, _) in rotations {
        env.wait_reason(name, "TokenValid", "Verified").await;
        env.put_source(&format!("src-{name}"), &[("token", new)])
            .await;
    }
    let awaited = cases
        .iter()
        .map(|(name, _, _, type_, reason)| (*name, *type_, *reason))
        .chain(rotations.map(|(name, _, reason)| (name, "Ready", reason)));

    let mut seen = vec![];
    for (name, type_, reason) in awaited {
        let cr = env.wait_reason(name, type_, reason).await;
        let obj = serde_json::to_value(&cr).unwrap();
        let (status, message) = health(&obj);
        let ready = condition(&obj, "Ready");
        let valid = condition(&obj, "TokenValid");
        let (expected, expected_message) = if ready["status"] == "False" {
            ("Degraded", describe(ready))
        } else if valid["status"] == "False" {
            ("Degraded", describe(valid))
        } else if ready["status"] == "Unknown" {
            ("Progressing", describe(ready))
        } else {
            assert_eq!(ready["status"], "True", "{name}: {obj}");
            let secret = obj["status"]["secretName"].as_str().unwrap_or_default();
            let restarts: String = obj["status"]["rolloutRestart"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|w| w["reason"].is_string())
                .map(|w| {
                    format!(
                        "; rolloutRestart: {} {} {}",
                        w["kind"].as_str().unwrap(),
                        w["name"].as_str().unwrap(),
                        w["reason"].as_str().unwrap()
                    )
                })
                .collect();
            if obj["metadata"]["name"] == "restart" {
                assert_eq!(restarts, "; rolloutRestart: Deployment runner Forbidden");
            }
            (
                "Healthy",
                format!(
                    "Secret {secret} synced; TokenValid {} ({}){restarts}",
                    valid["status"].as_str().unwrap(),
                    describe(valid)
                ),
            )
        };
        assert_eq!(
            (status.as_str(), message.as_str()),
            (expected, expected_message.as_str()),
            "{name} ({type_} {reason})"
        );
        assert!(!message.contains("argo-"), "{name}: a token in the message");
        seen.push(format!("{reason} -> {status}: {message}"));
    }
    eprintln!("argocd: {}", seen.join("\n  "));

    // What the docs quote is what the script says.
    let docs = std::fs::read_to_string(format!("{ROOT}/docs/argocd.md")).unwrap();
    let paragraph = &docs[docs.find("Messages look like").unwrap()..];
    let paragraph = &paragraph[..paragraph.find("\n\n").unwrap()];
    let quotes = paragraph.split('`').skip(1).step_by(2);
    for quoted in quotes.filter(|q| q.ends_with("...")) {
        let prefix = quoted.trim_end_matches("...").trim_end();
        assert!(
            seen.iter().any(|s| s.contains(&format!(": {prefix}"))),
            "docs/argocd.md quotes {quoted:?}, which no status gave"
        );
    }

    // A resource no operator has acted on yet.
    let other = TestEnv::new("argocd-unwatched").await;
    other
        .put_credential("fresh", json!({"sourceRef": {"name": "x"}}))
        .await;
    let fresh = wait_for(Duration::from_secs(5), || async {
        other.credentials().get("fresh").await.ok()
    })
    .await
    .unwrap();
    let (status, message) = health(&serde_json::to_value(&fresh).unwrap());
    assert_eq!(
        (status.as_str(), message.as_str()),
        ("Progressing", "Waiting for the operator")
    );
}

#[tokio::test]
async fn health_of_cluster_credentials() {
    let _turn = TURN.lock().await;
    let env = TestEnv::new("argocd-cluster").await;
    let sim = Simulator::start().await;
    sim.set("argo-cluster-valid", State::Valid);
    sim.set("argo-cluster-deleted", State::Deleted);
    let args = common::loopback_platform(&sim.base_url());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _op = common::Operator::start(env.cp, &env.cp.operator_kubeconfig, "", &args, &[]);
    env.put_source("valid", &[("token", "argo-cluster-valid")])
        .await;
    env.put_source("deleted", &[("token", "argo-cluster-deleted")])
        .await;
    // The test's own namespace holds a foreign Secret named "taken".
    env.put_source("taken", &[("x", "y")]).await;
    let api: kube::Api<mxcred_operator::domain::cluster::ClusterMendixCredential> =
        kube::Api::all(env.client.clone());
    // name, source, target name, the Ready reason and the TokenValid reason awaited.
    let cases = [
        ("synced", "valid", "argo-copy", "Synced", "Verified"),
        (
            "rejected",
            "deleted",
            "argo-copy-2",
            "Synced",
            "TokenRejected",
        ),
        ("conflict", "valid", "taken", "NamespacesFailed", "Verified"),
        (
            "nosource",
            "absent",
            "argo-copy-3",
            "SourceNotFound",
            "Pending",
        ),
    ];
    let mut seen = vec![];
    for (name, source, target, ready_reason, valid_reason) in cases {
        let name = format!("{}-{name}", env.ns);
        let cr = json!({"apiVersion": "mxcred.io/v1alpha1", "kind": "ClusterMendixCredential",
            "metadata": {"name": name},
            "spec": {"sourceRef": {"namespace": env.ns, "name": source},
                     "target": {"name": target, "namespaces": [env.ns]}}});
        api.patch(
            &name,
            &kube::api::PatchParams::apply("mxcred-tests"),
            &kube::api::Patch::Apply(cr),
        )
        .await
        .unwrap();
        let reason = |obj: &Value, type_: &str| {
            obj["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == type_))
                .and_then(|c| c["reason"].as_str().map(str::to_owned))
        };
        let obj = wait_for(Duration::from_secs(30), || async {
            let obj = serde_json::to_value(api.get(&name).await.ok()?).unwrap();
            (reason(&obj, "Ready").as_deref() == Some(ready_reason)
                && reason(&obj, "TokenValid").as_deref() == Some(valid_reason))
            .then_some(obj)
        })
        .await
        .unwrap_or_else(|| panic!("{name}: never {ready_reason}/{valid_reason}"));
        let (status, message) = health(&obj);
        let ready = condition(&obj, "Ready");
        let valid = condition(&obj, "TokenValid");
        let expected = if ready["status"] == "False" {
            ("Degraded".to_owned(), describe(ready))
        } else if valid["status"] == "False" {
            ("Degraded".to_owned(), describe(valid))
        } else {
            (
                "Healthy".to_owned(),
                format!(
                    "Secret {target} synced in 1/1 namespaces; TokenValid {} ({})",
                    valid["status"].as_str().unwrap(),
                    describe(valid)
                ),
            )
        };
        assert_eq!((status.clone(), message.clone()), expected, "{name}");
        assert!(
            !message.contains("argo-cluster"),
            "{name}: a token in the message"
        );
        seen.push(format!(
            "{ready_reason}/{valid_reason} -> {status}: {message}"
        ));
        let _ = api.delete(&name, &Default::default()).await;
    }
    eprintln!("argocd (cluster): {}", seen.join("\n  "));
}

#[test]
fn a_cluster_credential_names_its_failed_restarts_and_stays_healthy() {
    let obj = serde_json::json!({
        "metadata": {"name": "deploy-bot", "generation": 1},
        "status": {
            "observedGeneration": 1,
            "secretName": "mendix-deploy",
            "namespaces": "3/3",
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "Synced", "message": "m"},
                {"type": "TokenValid", "status": "True", "reason": "Verified", "message": "v"},
            ],
            "rolloutRestartFailures": [{"namespace": "team-a", "kind": "Deployment",
                "name": "runner", "reason": "Forbidden", "message": "m"}],
            "rolloutRestartFailureCount": 2,
        },
    });
    let (status, message) = health(&obj);
    assert_eq!(status, "Healthy");
    assert!(
        message.ends_with("; rolloutRestart: 2 failed (Deployment runner in team-a Forbidden)"),
        "{message}"
    );
}
