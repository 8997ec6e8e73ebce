//! Behind an egress proxy (Debian's tinyproxy, started here): with the proxy environment set as
//! many clusters set it, platform calls go through the proxy, the API server is reached directly
//! when `NO_PROXY` names it and through the proxy (CONNECT) when it does not, and the allow-list
//! still applies to the destination, not to the proxy.

mod common;

use common::TestEnv;
use mendix_simulator::{Simulator, State};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

struct Tinyproxy {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Tinyproxy {
    fn start(dir: &Path) -> Tinyproxy {
        std::fs::create_dir_all(dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = dir.join("tinyproxy.log");
        std::fs::write(
            dir.join("tinyproxy.conf"),
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 20\nAllow 127.0.0.1\n\
                 LogLevel Info\nLogFile \"{}\"\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::write(&log, "").unwrap();
        let child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(dir.join("tinyproxy.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "tinyproxy is missing: `make test` installs it (hack/deps.sh), or apt-get install tinyproxy",
            );
        Tinyproxy { child, port, log }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn platform_calls_go_through_the_proxy_and_the_api_server_as_no_proxy_says() {
    let env = TestEnv::new("proxy").await;
    let proxy = Tinyproxy::start(&env.cp.dir.join("tinyproxy"));
    let sim = Simulator::start().await;
    sim.set("proxied-token", State::Valid);
    let api_port = std::fs::read_to_string(env.cp.dir.join("apiserver.port")).unwrap();
    let api = format!("127.0.0.1:{}", api_port.trim());
    // The simulator by a name that NO_PROXY does not hold; the API server by its address.
    let platform = format!("http://localhost:{}", sim.addr().port());
    let proxy_url = proxy.url();

    // Both spellings of the variables, as clusters set them.
    let op = env.start_operator_as(
        &platform,
        &[],
        &[
            ("HTTPS_PROXY", &proxy_url),
            ("http_proxy", &proxy_url),
            ("no_proxy", "127.0.0.1"),
        ],
    );
    env.put_source("raw", &[("token", "proxied-token")]).await;
    env.put_credential("c", json!({"sourceRef": {"name": "raw"}}))
        .await;
    // A probe on a host outside the allow-list: refused before any proxy is asked.
    env.put_credential(
        "elsewhere",
        json!({"sourceRef": {"name": "raw"}, "verification": {"probe": "https://platform.invalid/api"}}),
    )
    .await;
    env.wait_reason("c", "Ready", "Synced").await;
    env.wait_reason("c", "TokenValid", "Verified").await;
    env.wait_reason("elsewhere", "TokenValid", "EndpointNotAllowed")
        .await;
    assert!(sim.requests("proxied-token") > 0);
    let log = proxy.log();
    let sim_port = sim.addr().port();
    assert!(
        log.contains(&format!("GET http://localhost:{sim_port}/")),
        "the platform call did not go through the proxy:\n{log}"
    );
    assert!(
        !log.contains(&api),
        "the API server was reached through the proxy although NO_PROXY names it:\n{log}"
    );
    assert!(!log.contains("platform.invalid"), "{log}");
    assert!(
        !op.logs().contains("requires the disabled feature"),
        "{}",
        op.logs()
    );
    drop(op);

    // Without NO_PROXY, the API server is reached through the proxy too (CONNECT), as Go
    // clients do, and everything still works.
    let _op = env.start_operator_as(&platform, &[], &[("HTTPS_PROXY", &proxy_url)]);
    sim.set("second-token", State::Valid);
    env.put_source("raw2", &[("token", "second-token")]).await;
    env.put_credential("d", json!({"sourceRef": {"name": "raw2"}}))
        .await;
    env.wait_reason("d", "TokenValid", "Verified").await;
    let log = proxy.log();
    assert!(
        log.contains(&format!("CONNECT {api}")),
        "the API server was not reached through the proxy:\n{log}"
    );
    assert!(!log.contains("proxied-token") && !log.contains("second-token"));
}
