//! The committed CRDs are what `mxcred-operator crd` prints; on the real API server, `kubectl
//! explain` documents every spec field of both kinds with its type, and every CEL rule refuses
//! its bad spec at `kubectl apply`, with its message, and accepts the valid neighbour.

mod common;

use common::TestEnv;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn committed_crds_are_current() {
    for (file, yaml) in mxcred_operator::crds() {
        let committed =
            std::fs::read_to_string(format!("{}/crds/{file}", env!("CARGO_MANIFEST_DIR")))
                .unwrap_or_else(|e| panic!("crds/{file}: {e}: run `make crds`"));
        assert!(
            committed == yaml,
            "crds/{file} is stale: run `make crds` (which copies it to charts/mxcred-operator/files/crds/)"
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

/// The two CRDs as JSON, with the kind each defines.
fn crds() -> Vec<(String, Value)> {
    mxcred_operator::crds()
        .into_iter()
        .map(|(_, yaml)| {
            let crd: Value = serde_yaml::from_str(&yaml).unwrap();
            (
                crd["spec"]["names"]["kind"].as_str().unwrap().to_owned(),
                crd,
            )
        })
        .collect()
}

fn schema(crd: &Value) -> &Value {
    &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
}

/// Calls `visit` with the path and schema of every node below `schema` (properties, list items
/// and map values).
fn walk(path: &str, schema: &Value, visit: &mut dyn FnMut(&str, &Value)) {
    visit(path, schema);
    for (name, sub) in schema["properties"].as_object().into_iter().flatten() {
        walk(&format!("{path}.{name}"), sub, visit);
    }
    if schema["items"].is_object() {
        walk(&format!("{path}[]"), &schema["items"], visit);
    }
    if schema["additionalProperties"].is_object() {
        walk(
            &format!("{path}{{}}"),
            &schema["additionalProperties"],
            visit,
        );
    }
}

#[test]
fn only_optional_objects_lists_and_maps_are_nullable() {
    // A server-side apply that empties an object, list or map leaves it null (see
    // `an_apply_that_empties_an_object_list_or_map_is_accepted`); plain values and enums never
    // become null, and are not nullable.
    for (kind, crd) in crds() {
        let mut nullable = vec![];
        walk(kind.as_str(), schema(&crd), &mut |path, node| {
            let container = node["type"] == "object" || node["type"] == "array";
            if node.get("nullable").is_some() {
                assert!(
                    container && node.get("enum").is_none(),
                    "{path} is nullable"
                );
                nullable.push(path.to_owned());
            }
        });
        let mut expected = vec![
            ".spec.verification",
            ".spec.target.labels",
            ".spec.target.rolloutRestart",
        ];
        expected.push(match kind.as_str() {
            "MendixCredential" => ".spec.target",
            _ => ".spec.target.namespaceSelector.matchLabels",
        });
        for path in expected {
            assert!(
                nullable.contains(&format!("{kind}{path}")),
                "{kind}{path}: {nullable:?}"
            );
        }
    }
}

#[test]
fn descriptions_are_paragraphs() {
    // `kubectl explain` wraps descriptions itself: a line break of the doc comment in the middle
    // of a sentence would show as a short line.
    for (kind, crd) in crds() {
        walk(kind.as_str(), schema(&crd), &mut |path, node| {
            let text = node["description"].as_str().unwrap_or("");
            assert!(
                !text.replace("\n\n", "").contains('\n'),
                "{path}: a line break inside a paragraph: {text:?}"
            );
        });
    }
}

/// The type `kubectl explain` shows for a field of this schema.
fn explained_type(schema: &Value) -> String {
    match schema["type"].as_str() {
        Some("array") => format!("[]{}", explained_type(&schema["items"])),
        Some("object") if schema["additionalProperties"].is_object() => {
            format!(
                "map[string]{}",
                explained_type(&schema["additionalProperties"])
            )
        }
        Some("object") => "Object".into(),
        Some(other) => other.into(),
        None => panic!("a field without a type: {schema}"),
    }
}

/// Every field below `schema` as (depth, name, type), as `kubectl explain --recursive` lists
/// them.
fn fields(depth: usize, schema: &Value, out: &mut BTreeSet<(usize, String, String)>) {
    let object = if schema["type"] == "array" {
        &schema["items"]
    } else {
        schema
    };
    for (name, sub) in object["properties"].as_object().into_iter().flatten() {
        out.insert((depth, name.clone(), explained_type(sub)));
        fields(depth + 1, sub, out);
    }
}

fn kubectl(env: &TestEnv) -> Command {
    let mut cmd = Command::new(common::helm_tools().join("kubectl"));
    cmd.arg("--kubeconfig")
        .arg(&env.cp.admin_kubeconfig)
        .arg("--cache-dir")
        .arg(env.cp.dir.join("kubectl-cache"));
    cmd
}

#[tokio::test]
async fn kubectl_explain_shows_every_spec_field_with_its_type() {
    let env = TestEnv::new("explain").await;
    let explain = |path: &str| {
        // The API server publishes a new CRD's OpenAPI a moment after serving it.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = kubectl(&env)
                .args(["explain", "--recursive", path])
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
    for (kind, crd) in crds() {
        let mut expected = BTreeSet::new();
        fields(0, &schema(&crd)["properties"]["spec"], &mut expected);
        let text = explain(&format!("{}.spec", kind.to_lowercase()));
        // "  name\t<type> -required-", indented two spaces per level below FIELDS.
        let shown: BTreeSet<(usize, String, String)> = text
            .lines()
            .skip_while(|l| !l.starts_with("FIELDS:"))
            .filter_map(|l| {
                let (name, rest) = l.split_once('\t')?;
                let depth = (name.len() - name.trim_start().len()) / 2 - 1;
                let ty = rest.strip_prefix('<')?.split_once('>')?.0;
                Some((depth, name.trim().to_owned(), ty.to_owned()))
            })
            .collect();
        assert!(expected.len() >= 15, "{kind}: {expected:?}");
        assert_eq!(shown, expected, "{kind}: kubectl explain shows\n{text}");
    }
    // Descriptions read as paragraphs, not as the lines of the doc comments.
    let out = kubectl(&env)
        .args(["explain", "mendixcredential.spec.verification.interval"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let words = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        words.contains(r#"as a duration such as "30m", "1h" or "1d". At least 1m. Defaults"#),
        "{text}"
    );
}

/// A spec of `kind` that every rule accepts, with `patch` merged into it (JSON merge patch).
fn spec(kind: &str, patch: &Value) -> Value {
    let mut spec = match kind {
        "MendixCredential" => json!({"sourceRef": {"name": "raw"}}),
        _ => json!({"sourceRef": {"name": "raw", "namespace": "sources"},
                    "target": {"name": "copy", "namespaces": ["ci"]}}),
    };
    merge(&mut spec, patch);
    spec
}

fn merge(into: &mut Value, patch: &Value) {
    match (into, patch) {
        (Value::Object(into), Value::Object(patch)) => {
            for (key, value) in patch {
                merge(into.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
        (into, patch) => *into = patch.clone(),
    }
}

/// One CEL rule: a spec it refuses with `message` and its valid neighbour, as merge patches.
struct Case {
    message: &'static str,
    bad: Value,
    good: Value,
}

fn cases(kind: &str) -> Vec<Case> {
    let case = |message, bad, good| Case { message, bad, good };
    let private = json!({"platform": "PrivatePlatform", "baseUrl": "https://pmp.example.com"});
    let mut cases = vec![
        case(
            "baseUrl is required when platform is PrivatePlatform",
            json!({"verification": {"platform": "PrivatePlatform"}}),
            json!({"verification": private}),
        ),
        case(
            "baseUrl is only used with platform PrivatePlatform",
            json!({"verification": {"baseUrl": "https://pmp.example.com"}}),
            json!({"verification": {"enabled": false, "baseUrl": "https://pmp.example.com"}}),
        ),
        case(
            "probe must be a named probe",
            json!({"verification": {"probe": "Deploy"}}),
            json!({"verification": {"probe": "DeployApps"}}),
        ),
        case(
            "interval must be at least 1m",
            json!({"verification": {"interval": "59s"}}),
            json!({"verification": {"interval": "1m"}}),
        ),
        case(
            "interval must be at most 366d",
            json!({"verification": {"interval": "8785h"}}),
            json!({"verification": {"interval": "8784h"}}),
        ),
        case(
            "labels keys must be qualified names",
            json!({"target": {"labels": {"team name": "ci"}}}),
            json!({"target": {"labels": {"example.com/team-name": "ci"}}}),
        ),
        case(
            "labels keys under kubernetes.io/",
            json!({"target": {"labels": {"app.kubernetes.io/managed-by": "me"}}}),
            json!({"target": {"labels": {"app.kubernetes.io/part-of": "ci"}}}),
        ),
        case(
            "label values must be at most 63 letters",
            json!({"target": {"labels": {"team": "-ci"}}}),
            json!({"target": {"labels": {"team": "c-i"}}}),
        ),
        case(
            "annotations keys must be qualified names",
            json!({"target": {"annotations": {"example.com/": "x"}}}),
            json!({"target": {"annotations": {"example.com/x": "x"}}}),
        ),
        case(
            "annotations keys under kubernetes.io/",
            json!({"target": {"annotations": {"reflector.v1.k8s.emberstack.com/reflection-allowed": "true"}}}),
            json!({"target": {"annotations": {"v1.k8s.emberstack.example/reflection-allowed": "true"}}}),
        ),
        case(
            "sourceRef.usernameKey and sourceRef.apiKeyKey must name different keys",
            json!({"type": "ApiKey", "sourceRef": {"usernameKey": "apiKey"}}),
            json!({"type": "ApiKey", "sourceRef": {"usernameKey": "user"}}),
        ),
        case(
            "check personal access tokens, not API keys",
            json!({"type": "ApiKey", "verification": {"probe": "Projects"}}),
            json!({"type": "ApiKey", "verification": {"probe": "DeployV1Apps"}}),
        ),
        case(
            "probe DeployV1Apps checks API keys",
            json!({"verification": {"probe": "DeployV1Apps"}}),
            json!({"type": "ApiKey", "verification": {"probe": "DeployV1Apps"}}),
        ),
        case(
            "API keys have no default probe on a Private Mendix Platform",
            json!({"type": "ApiKey", "verification": private}),
            json!({"type": "ApiKey", "verification": {"platform": "PrivatePlatform",
                    "baseUrl": "https://pmp.example.com", "probe": "https://pmp.example.com/api/v1/check"}}),
        ),
    ];
    if kind == "MendixCredential" {
        cases.push(case(
            "spec.target.name (default: the resource's name) must differ from spec.sourceRef.name",
            json!({"target": {"name": "raw"}}),
            json!({"target": {"name": "published"}}),
        ));
    }
    cases
}

/// Every rule's message in the CRD of `kind`.
fn rule_messages(crd: &Value) -> Vec<String> {
    let mut messages = vec![];
    walk("", schema(crd), &mut |_, node| {
        for rule in node["x-kubernetes-validations"]
            .as_array()
            .into_iter()
            .flatten()
        {
            messages.push(
                rule["message"]
                    .as_str()
                    .expect("every rule has a message")
                    .into(),
            );
        }
    });
    messages
}

/// `kubectl apply --server-side` of a resource of `kind` named `name` (in the test's namespace
/// for the namespaced kind): whether it was accepted, and what kubectl said on stderr.
fn kubectl_apply(env: &TestEnv, kind: &str, name: &str, spec: Value) -> (bool, String) {
    let mut object = json!({"apiVersion": "mxcred.io/v1alpha1", "kind": kind,
                            "metadata": {"name": name}, "spec": spec});
    if kind == "MendixCredential" {
        object["metadata"]["namespace"] = env.ns.clone().into();
    }
    let mut child = kubectl(env)
        .args([
            "apply",
            "--server-side",
            "--field-manager",
            "mxcred-tests",
            "-f",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = serde_json::to_vec(&object).unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn every_cel_rule_refuses_its_bad_spec_at_kubectl_apply_and_accepts_its_neighbour() {
    let env = TestEnv::new("rules").await;
    let apply = |kind: &str, name: &str, spec: Value| kubectl_apply(&env, kind, name, spec);
    let version = env.client.apiserver_version().await.unwrap().git_version;
    let mut table = vec![];
    for (kind, crd) in crds() {
        let cases = cases(&kind);
        let messages = rule_messages(&crd);
        for message in &messages {
            assert!(
                cases.iter().any(|c| message.contains(c.message)),
                "{kind}: no case for the rule {message:?}"
            );
        }
        for (i, case) in cases.iter().enumerate() {
            assert!(
                messages.iter().any(|m| m.contains(case.message)),
                "{kind}: the CRD has no rule {:?}",
                case.message
            );
            let name = format!("rule-{i}");
            let (accepted, refusal) = apply(&kind, &name, spec(&kind, &case.bad));
            assert!(
                !accepted,
                "{kind} {:?}: the bad spec was accepted",
                case.message
            );
            assert!(
                refusal.contains(case.message),
                "{kind} {:?}: refused for another reason: {refusal}",
                case.message
            );
            let said = refusal
                .lines()
                .find(|l| l.contains(case.message))
                .unwrap_or("");
            table.push(format!("{version} | {kind} | {}", said.trim()));
            let (accepted, refusal) = apply(&kind, &name, spec(&kind, &case.good));
            assert!(
                accepted,
                "{kind} {:?}: the neighbour was refused: {refusal}",
                case.message
            );
        }
    }
    // The table of the rules with what this server said, for the record.
    println!("{}", table.join("\n"));
    let clusters: kube::Api<mxcred_operator::domain::cluster::ClusterMendixCredential> =
        kube::Api::all(env.client.clone());
    for (i, _) in cases("ClusterMendixCredential").iter().enumerate() {
        let _ = clusters
            .delete(&format!("rule-{i}"), &Default::default())
            .await;
    }
}

#[tokio::test]
async fn an_apply_that_empties_an_object_list_or_map_is_accepted() {
    let env = TestEnv::new("emptied").await;
    let apply = |kind: &str, spec: Value| {
        let (applied, refusal) = kubectl_apply(&env, kind, "emptied", spec.clone());
        assert!(applied, "{kind} {spec}: {refusal}");
    };
    for kind in ["MendixCredential", "ClusterMendixCredential"] {
        let full = json!({"target": {"labels": {"team": "ci"}, "annotations": {"a": "b"},
                                     "rolloutRestart": [{"kind": "Deployment", "name": "d"}]},
                          "verification": {"interval": "1h"}});
        let mut emptied = json!({"target": {"labels": {}, "annotations": {}, "rolloutRestart": []},
                                 "verification": {}});
        if kind == "ClusterMendixCredential" {
            let mut with_selector = full.clone();
            with_selector["target"]["namespaceSelector"] = json!({"matchLabels": {"a": "b"}});
            apply(kind, spec(kind, &with_selector));
            emptied["target"]["namespaceSelector"] = json!({"matchLabels": {}});
            apply(kind, spec(kind, &emptied));
            emptied["target"]["namespaceSelector"] = json!({});
        } else {
            apply(kind, spec(kind, &full));
        }
        apply(kind, spec(kind, &emptied));
    }
}

#[tokio::test]
async fn intervals_cel_cannot_read_are_left_to_the_operator() {
    // CEL's duration() reads Go's syntax only; "1d" is the operator's to accept, "400d" to refuse.
    let env = TestEnv::new("rules-op").await;
    let _op = env.start_operator(&[]);
    env.put_source("raw", &[("token", "a-token")]).await;
    env.put_credential(
        "long",
        json!({"sourceRef": {"name": "raw"}, "verification": {"interval": "1d"}}),
    )
    .await;
    env.wait_reason("long", "Ready", "Synced").await;
    env.put_credential(
        "longer",
        json!({"sourceRef": {"name": "raw"}, "verification": {"interval": "400d"}}),
    )
    .await;
    let cr = env.wait_reason("longer", "Ready", "InvalidSpec").await;
    let message = common::condition(&cr, "Ready").message;
    assert!(
        message.contains("longer than the maximum of 366d"),
        "{message}"
    );
}
