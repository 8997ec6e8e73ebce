//! Monitoring on a real Prometheus (Debian's `prometheus`, started here): it scrapes the
//! operator, loads the alerts the chart renders (with `for` shortened through chart values), and
//! each alert fires for the reason it exists: a token deleted on the platform, a credential
//! past its expiry, a platform that stops answering, an operator that stops. Every query of every panel of the chart's Grafana
//! dashboard returns data from that Prometheus.

mod common;

use common::{ROOT, TestEnv, require_tool, wait_for};
use mendix_simulator::{Simulator, State};
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const RELEASE: &str = "mxcred-operator";
const NAMESPACE: &str = "mxcred-system";

/// The chart's alerts as a rule file, `for` shortened to seconds through chart values.
fn rules() -> String {
    let out = Command::new(format!("{ROOT}/hack/rules.sh"))
        .args([
            "--set",
            "prometheusRule.alerts.credentialInvalid.for=2s",
            "--set",
            "prometheusRule.alerts.verificationFailing.for=2s",
            "--set",
            "prometheusRule.alerts.verificationFailing.noVerdictFor=1s",
            "--set",
            "prometheusRule.alerts.operatorDown.for=2s",
            "--set",
            "prometheusRule.alerts.rotationDue.for=2s",
        ])
        .output()
        .expect("run hack/rules.sh");
    assert!(
        out.status.success(),
        "hack/rules.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The query of every panel of the chart's dashboard, as the ConfigMap holds it.
fn dashboard_queries() -> Vec<(String, String)> {
    let out = Command::new(common::helm_tools().join("helm"))
        .args([
            "template",
            RELEASE,
            &format!("{ROOT}/charts/mxcred-operator"),
        ])
        .args([
            "--namespace",
            NAMESPACE,
            "--set",
            "grafanaDashboard.enabled=true",
        ])
        .args(["--show-only", "templates/grafana-dashboard.yaml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let map: Value = serde_yaml::from_slice(&out.stdout).unwrap();
    let dashboard: Value =
        serde_json::from_str(map["data"]["mxcred-operator.json"].as_str().unwrap()).unwrap();
    let mut queries = vec![];
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            queries.push((
                panel["title"].as_str().unwrap().to_owned(),
                target["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    queries
}

/// A Prometheus server of its own, stopped when dropped.
struct Prometheus {
    child: Child,
    url: String,
    http: reqwest::Client,
}

impl Prometheus {
    fn start(dir: &Path, target: &str, rules: &str) -> Prometheus {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("rules.yaml"), rules).unwrap();
        // The labels a ServiceMonitor of the chart gives the series: job and namespace.
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: [rules.yaml]\n\
             scrape_configs:\n\
             - job_name: {RELEASE}-metrics\n  \
               static_configs:\n  \
               - targets: ['{target}']\n    \
                 labels: {{namespace: {NAMESPACE}, pod: operator-0}}\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        }
    }

    async fn get(&self, path: &str, params: &[(&str, &str)]) -> Option<Value> {
        let url = url::Url::parse_with_params(&format!("{}{path}", self.url), params).unwrap();
        let response = self.http.get(url).send().await.ok()?;
        let body: Value = serde_json::from_slice(&response.bytes().await.ok()?).ok()?;
        (body["status"] == "success").then(|| body["data"].clone())
    }

    /// The result vector of an instant query.
    async fn query(&self, expr: &str) -> Vec<Value> {
        self.get("/api/v1/query", &[("query", expr)])
            .await
            .and_then(|d| d["result"].as_array().cloned())
            .unwrap_or_default()
    }

    /// Waits until alert `name` is firing; returns its labels.
    async fn wait_firing(&self, name: &str, timeout: Duration) -> Value {
        let found = wait_for(timeout, || async {
            let alerts = self.get("/api/v1/alerts", &[]).await?;
            alerts["alerts"]
                .as_array()?
                .iter()
                .find(|a| a["labels"]["alertname"] == name && a["state"] == "firing")
                .map(|a| a["labels"].clone())
        })
        .await;
        found.unwrap_or_else(|| panic!("{name} never fired"))
    }

    async fn rule_names(&self) -> Vec<String> {
        let data = self.get("/api/v1/rules", &[]).await.unwrap_or_default();
        data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .filter_map(|r| r["name"].as_str().map(str::to_owned))
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn force_check(env: &TestEnv, name: &str, value: &str) {
    let patch = json!({"metadata": {"annotations": {"mxcred.io/verify-requested-at": value}}});
    env.credentials()
        .patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .unwrap();
}

/// Whether a query result holds at least one finite sample.
fn has_data(result: &[Value]) -> bool {
    result.iter().any(|series| {
        series["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(f64::is_finite)
    })
}

#[tokio::test]
async fn alerts_fire_on_a_real_prometheus_and_every_dashboard_query_has_data() {
    require_tool("prometheus", "prometheus");
    let env = TestEnv::new("monitoring").await;
    let sim = Simulator::start().await;
    sim.set("mon-a", State::Valid);
    sim.set("mon-b", State::Valid);
    let mut op = env.start_operator_with_platform(&sim.base_url(), &[]);
    env.put_source("raw-a", &[("token", "mon-a")]).await;
    env.put_source("raw-b", &[("token", "mon-b")]).await;
    env.put_credential("a", json!({"sourceRef": {"name": "raw-a"}}))
        .await;
    env.put_credential("b", json!({"sourceRef": {"name": "raw-b"}}))
        .await;
    // A resource that cannot sync, for the reconcile panels.
    env.put_credential("orphan", json!({"sourceRef": {"name": "missing"}}))
        .await;
    env.wait_reason("a", "TokenValid", "Verified").await;
    env.wait_reason("b", "TokenValid", "Verified").await;
    env.wait_reason("orphan", "Ready", "SourceNotFound").await;

    let target = op
        .metrics_url()
        .await
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_owned();
    let prometheus = Prometheus::start(&env.cp.dir.join("prometheus"), &target, &rules());
    let scraped = format!(r#"up{{job="{RELEASE}-metrics",namespace="{NAMESPACE}"}} == 1"#);
    wait_for(Duration::from_secs(60), || async {
        (!prometheus.query(&scraped).await.is_empty()).then_some(())
    })
    .await
    .expect("Prometheus scrapes the operator");
    let mut names = prometheus.rule_names().await;
    names.sort();
    assert_eq!(
        names,
        [
            "ClusterMendixCredentialInvalid",
            "MendixCredentialInvalid",
            "MendixCredentialOperatorDown",
            "MendixCredentialRotationDue",
            "MendixCredentialRotationRejected",
            "MendixCredentialVerificationFailing"
        ]
    );
    // Two scrapes at least, so that rates have two samples.
    let twice = format!(r#"count_over_time(up{{job="{RELEASE}-metrics"}}[1m]) >= 2"#);
    wait_for(Duration::from_secs(30), || async {
        (!prometheus.query(&twice).await.is_empty()).then_some(())
    })
    .await
    .expect("two scrapes");

    // The platform marks token a deleted: the alert fires once the operator has seen it.
    let deleted = Instant::now();
    sim.set("mon-a", State::Deleted);
    force_check(&env, "a", "deleted").await;
    env.wait_reason("a", "TokenValid", "TokenRejected").await;
    let rejected = deleted.elapsed();
    let labels = prometheus
        .wait_firing("MendixCredentialInvalid", Duration::from_secs(60))
        .await;
    let invalid = deleted.elapsed();
    assert_eq!(labels["namespace"], NAMESPACE);
    assert_eq!(labels["job"], format!("{RELEASE}-metrics"));

    // A credential whose source Secret says it expired: due for rotation.
    sim.set("mon-c", State::Valid);
    env.put_source("raw-c", &[("token", "mon-c")]).await;
    let expired =
        json!({"metadata": {"annotations": {"mxcred.io/expires-at": "2020-01-01T00:00:00Z"}}});
    env.secrets()
        .patch(
            "raw-c",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&expired),
        )
        .await
        .unwrap();
    env.put_credential("c", json!({"sourceRef": {"name": "raw-c"}}))
        .await;
    env.wait_reason("c", "RotationDue", "Expired").await;
    let labels = prometheus
        .wait_firing("MendixCredentialRotationDue", Duration::from_secs(60))
        .await;
    assert_eq!(labels["namespace"], NAMESPACE);

    // The platform stops answering for token b: no verdict since, and the latest attempt failed.
    let outage = Instant::now();
    sim.set("mon-b", State::ServerError);
    force_check(&env, "b", "outage").await;
    prometheus
        .wait_firing(
            "MendixCredentialVerificationFailing",
            Duration::from_secs(60),
        )
        .await;
    let failing = outage.elapsed();

    // Every panel's queries, as Grafana would send them for the last minutes.
    let mut checked = vec![];
    for (panel, expr) in dashboard_queries() {
        let expr_now = expr.replace("$__rate_interval", "1m").replace("$job", ".+");
        let found = wait_for(Duration::from_secs(20), || async {
            let result = prometheus.query(&expr_now).await;
            has_data(&result).then_some(result)
        })
        .await;
        assert!(found.is_some(), "panel {panel:?}: no data for {expr_now}");
        checked.push(format!("{panel}: {expr}"));
    }
    eprintln!(
        "monitoring: dashboard queries with data:\n  {}",
        checked.join("\n  ")
    );

    // The operator stops.
    let stopped = Instant::now();
    op.kill();
    let labels = prometheus
        .wait_firing("MendixCredentialOperatorDown", Duration::from_secs(60))
        .await;
    let down = stopped.elapsed();
    assert_eq!(labels["namespace"], NAMESPACE);
    assert_eq!(labels["job"], format!("{RELEASE}-metrics"));

    eprintln!(
        "monitoring: token deleted -> TokenRejected {} ms -> MendixCredentialInvalid firing {} ms (for: 2s); \
         platform 5xx -> MendixCredentialVerificationFailing firing {} ms (noVerdictFor: 1s, for: 2s); \
         operator killed -> MendixCredentialOperatorDown firing {} ms (for: 2s)",
        rejected.as_millis(),
        invalid.as_millis(),
        failing.as_millis(),
        down.as_millis()
    );
}
