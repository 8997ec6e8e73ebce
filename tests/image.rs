//! The shipped image, run the way the chart's Deployment runs it: `make image` builds the
//! Dockerfile's `FROM scratch` stage around the binary built here (hack/image.sh), and runc runs
//! it as user 65532 with a read-only root filesystem, no capabilities, the ServiceAccount's token,
//! CA and namespace mounted where Kubernetes mounts them, `KUBERNETES_SERVICE_HOST`/`PORT` set and
//! no kubeconfig. The API server's certificate comes from a CA made for the test, so the in-cluster
//! client verifies TLS for real, and the platform (the simulator) is reached by a host name that
//! only the container's /etc/hosts knows.

mod common;

use common::{
    ROOT, TestEnv, control_plane_with, loopback_platform, require_tool, service_account_token,
};
use mendix_simulator::{Simulator, State};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ARCHIVE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/target/image/mxcred-operator.tar"
);
const PLATFORM_HOST: &str = "platform.mxcred.test";

/// Runs `make image`'s script: it rebuilds the binary and the archive when they are stale.
fn build_image() {
    for (tool, package) in [("buildah", "buildah"), ("skopeo", "skopeo")] {
        require_tool(tool, package);
    }
    let status = Command::new(format!("{ROOT}/hack/image.sh"))
        .status()
        .expect("run hack/image.sh");
    assert!(status.success(), "hack/image.sh could not build the image");
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Unpacks the archive into an OCI runtime bundle under `dir`.
fn unpack(dir: &Path) -> PathBuf {
    let layout = dir.join("oci");
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        &format!("oci-archive:{ARCHIVE}"),
        &format!("oci:{}:dev", layout.display()),
    ]));
    let bundle = dir.join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:dev", layout.display()))
        .arg(&bundle));
    bundle
}

/// What the chart's Deployment asks of the container runtime, written into the bundle's
/// config.json: the image's own entrypoint and user, everything else as a Pod gets it. No
/// network namespace: the container shares loopback with the test control plane.
fn pod_like(config: &mut Value, args: &[String], env: &[String], mounts: &[(PathBuf, &str)]) {
    let process = &mut config["process"];
    assert_eq!(
        process["args"],
        json!(["/mxcred-operator", "run"]),
        "the image's ENTRYPOINT and CMD"
    );
    assert_eq!(
        process["user"],
        json!({"uid": 65532, "gid": 65532}),
        "the image's USER"
    );
    process["terminal"] = json!(false);
    process["args"]
        .as_array_mut()
        .unwrap()
        .extend(args.iter().map(|a| json!(a)));
    process["env"]
        .as_array_mut()
        .unwrap()
        .extend(env.iter().map(|e| json!(e)));
    // securityContext: capabilities.drop [ALL], allowPrivilegeEscalation false.
    process["capabilities"] =
        json!({"bounding": [], "effective": [], "inheritable": [], "permitted": [], "ambient": []});
    process["noNewPrivileges"] = json!(true);
    // runc cannot set rlimits or cgroup resources on this host (TESTENV.md).
    process.as_object_mut().unwrap().remove("rlimits");
    config["root"]["readonly"] = json!(true);
    let linux = config["linux"].as_object_mut().unwrap();
    linux.remove("resources");
    linux["namespaces"]
        .as_array_mut()
        .unwrap()
        .retain(|ns| !matches!(ns["type"].as_str(), Some("network" | "cgroup")));
    let all = config["mounts"].as_array_mut().unwrap();
    all.retain(|m| m["type"] != "cgroup" && m["destination"] != "/sys/fs/cgroup");
    for (source, destination) in mounts {
        all.push(json!({"destination": destination, "type": "bind",
            "source": source, "options": ["rbind", "ro"]}));
    }
}

/// A container run by runc in the foreground; deleted when dropped.
struct Container {
    id: String,
    state: PathBuf,
    runc: Child,
    log: PathBuf,
}

impl Container {
    fn start(bundle: &Path, state: &Path, id: &str, log: PathBuf) -> Container {
        let out = std::fs::File::create(&log).unwrap();
        let runc = Command::new("runc")
            .arg("--root")
            .arg(state)
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start runc");
        Container {
            id: id.into(),
            state: state.into(),
            runc,
            log,
        }
    }

    fn runc(&self, args: &[&str]) -> std::process::Output {
        Command::new("runc")
            .arg("--root")
            .arg(&self.state)
            .args(args)
            .output()
            .unwrap()
    }

    /// The container's init process as the host sees it.
    fn pid(&self) -> u32 {
        let out = self.runc(&["state", &self.id]);
        let state: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("runc state: {}", String::from_utf8_lossy(&out.stderr)));
        state["pid"].as_u64().unwrap() as u32
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM through runc; returns how long the container took to exit.
    fn terminate(&mut self) -> Duration {
        let started = Instant::now();
        let out = self.runc(&["kill", &self.id, "TERM"]);
        assert!(out.status.success(), "runc kill: {out:?}");
        while self.runc.try_wait().unwrap().is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no exit 30 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        started.elapsed()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.runc(&["delete", "--force", &self.id]);
        let _ = self.runc.kill();
        let _ = self.runc.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A field of /proc/PID/status, e.g. `Uid` or `CapEff`.
fn proc_status(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

#[tokio::test]
async fn the_image_runs_as_the_chart_runs_it() {
    require_tool("runc", "runc");
    require_tool("umoci", "umoci");
    tokio::task::spawn_blocking(build_image).await.unwrap();
    let size = std::fs::metadata(ARCHIVE).unwrap().len();
    eprintln!("image: {ARCHIVE} is {:.1} MB", size as f64 / 1e6);
    assert!(size <= 20_000_000, "the image is {size} bytes, above 20 MB");

    let cp = control_plane_with(&["--serving-ca"]).await;
    let env = TestEnv::new("image").await;
    let sim = Simulator::start().await;
    sim.set("image-token", State::Valid);

    let dir = cp.dir.join(format!("image-{}", env.ns));
    std::fs::create_dir_all(&dir).unwrap();
    let bundle = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || unpack(&dir)
    })
    .await
    .unwrap();

    // What the kubelet mounts for the Pod's ServiceAccount, readable by the container's user.
    let sa = dir.join("serviceaccount");
    std::fs::create_dir_all(&sa).unwrap();
    let token = service_account_token(&env.client, "mxcred-system", "mxcred-operator").await;
    std::fs::write(sa.join("token"), &token).unwrap();
    std::fs::copy(cp.dir.join("pki/ca.crt"), sa.join("ca.crt")).unwrap();
    std::fs::write(sa.join("namespace"), "mxcred-system").unwrap();
    let hosts = dir.join("hosts");
    std::fs::write(
        &hosts,
        format!("127.0.0.1 localhost\n127.0.0.1 {PLATFORM_HOST}\n"),
    )
    .unwrap();

    let api_port = std::fs::read_to_string(cp.dir.join("apiserver.port")).unwrap();
    let metrics_port = free_port();
    let mut args: Vec<String> = ["--namespace", &env.ns, "--metrics-addr"]
        .map(String::from)
        .into();
    args.push(format!("0.0.0.0:{metrics_port}"));
    args.extend(loopback_platform(&format!(
        "http://{PLATFORM_HOST}:{}",
        sim.addr().port()
    )));
    let config_path = bundle.join("config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    pod_like(
        &mut config,
        &args,
        &[
            "KUBERNETES_SERVICE_HOST=127.0.0.1".into(),
            format!("KUBERNETES_SERVICE_PORT={}", api_port.trim()),
            "POD_NAMESPACE=mxcred-system".into(),
            "RUST_LOG=debug".into(),
        ],
        &[
            (sa.clone(), "/var/run/secrets/kubernetes.io/serviceaccount"),
            (hosts, "/etc/hosts"),
        ],
    );
    std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();

    env.put_source("raw", &[("token", "image-token")]).await;
    env.put_credential("c", json!({"sourceRef": {"name": "raw"}}))
        .await;

    let started = Instant::now();
    let mut container = Container::start(
        &bundle,
        &dir.join("runc"),
        &format!("mxcred-{}", env.ns),
        dir.join("container.log"),
    );
    env.wait_reason("c", "Ready", "Synced").await;
    let to_synced = started.elapsed();
    env.wait_reason("c", "TokenValid", "Verified").await;
    let to_verified = started.elapsed();
    eprintln!(
        "image: container start to first Synced {} ms, to Verified {} ms",
        to_synced.as_millis(),
        to_verified.as_millis()
    );
    assert!(sim.requests("image-token") > 0, "the simulator was asked");

    let pid = container.pid();
    assert_eq!(
        proc_status(pid, "Uid").split_whitespace().next(),
        Some("65532")
    );
    assert_eq!(proc_status(pid, "CapEff"), "0000000000000000");
    assert_eq!(proc_status(pid, "NoNewPrivs"), "1");

    let base = format!("http://127.0.0.1:{metrics_port}");
    let healthz = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert!(
        healthz.status().is_success(),
        "/healthz: {}",
        healthz.status()
    );
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for family in [
        "mxcred_build_info{",
        r#"mxcred_verifications_total{outcome="Verified"}"#,
        &format!(r#"mxcred_platform_requests_total{{host="{PLATFORM_HOST}",code="200"}}"#),
    ] {
        assert!(
            metrics.contains(family),
            "/metrics lacks {family}:\n{metrics}"
        );
    }

    let took = tokio::task::spawn_blocking(move || {
        let took = container.terminate();
        (took, container)
    })
    .await
    .unwrap();
    let (took, container) = took;
    eprintln!("image: SIGTERM to exit {} ms", took.as_millis());
    assert!(took < Duration::from_secs(1), "SIGTERM took {took:?}");
    let logs = container.logs();
    assert!(
        logs.contains("\"level\":\"DEBUG\""),
        "the container logs: {logs}"
    );
    assert!(
        !logs.contains("image-token"),
        "a credential reached the log"
    );
    assert!(
        !logs.contains(token.trim()),
        "the ServiceAccount token reached the log"
    );
    drop(container);

    // The same container with a CA that did not sign the API server's certificate: the
    // in-cluster client refuses the connection, so the run above verified TLS for real.
    let other_ca = dir.join("other-ca");
    std::fs::create_dir_all(&other_ca).unwrap();
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=not-the-cluster-ca", "-keyout"])
        .arg(other_ca.join("ca.key"))
        .arg("-out")
        .arg(sa.join("ca.crt")));
    let container = Container::start(
        &bundle,
        &dir.join("runc"),
        &format!("mxcred-{}-wrong-ca", env.ns),
        dir.join("container-wrong-ca.log"),
    );
    let refused = common::wait_for(Duration::from_secs(20), || async {
        let logs = container.logs();
        (logs.contains("UnknownIssuer") || logs.contains("invalid peer certificate")).then_some(())
    })
    .await;
    assert!(
        refused.is_some(),
        "no TLS refusal with the wrong CA:\n{}",
        container.logs()
    );
}
