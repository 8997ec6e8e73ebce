//! Each route and state of the simulator, over real HTTP on loopback.

use mendix_simulator::{Simulator, State};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PAT: &str = "pat-0123456789";
const USER: &str = "bot@example.com";
const KEY: &str = "key-0123456789";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

struct Got {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

async fn get(url: &str, headers: &[(&str, &str)]) -> Result<Got, reqwest::Error> {
    let mut request = client().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await?.to_vec();
    Ok(Got {
        status,
        headers,
        body,
    })
}

fn url(sim: &Simulator, probe: &str) -> String {
    sim.probe_urls()
        .into_iter()
        .find(|(name, _)| name == probe)
        .map(|(_, url)| url)
        .unwrap()
}

/// The request headers for `probe` with the test credential.
fn auth(probe: &str) -> Vec<(&'static str, String)> {
    if probe == "DeployV1Apps" {
        vec![
            ("mendix-username", USER.into()),
            ("mendix-apikey", KEY.into()),
        ]
    } else {
        vec![("authorization", format!("MxToken {PAT}"))]
    }
}

async fn call(sim: &Simulator, probe: &str, state: State) -> Got {
    sim.set(PAT, state.clone());
    sim.set(&format!("{USER}:{KEY}"), state);
    let headers = auth(probe);
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    get(&url(sim, probe), &headers).await.unwrap()
}

const PROBES: [&str; 5] = [
    "DeployApps",
    "Projects",
    "MarketplaceContent",
    "DeployV1Apps",
    "PrivatePlatformProjects",
];

#[tokio::test]
async fn probe_urls_name_every_route() {
    let sim = Simulator::start().await;
    let urls = sim.probe_urls();
    assert_eq!(urls.len(), 5);
    let base = sim.base_url();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    assert_eq!(
        url(&sim, "DeployApps"),
        format!("{base}/api/v4/apps?limit=1")
    );
    assert_eq!(url(&sim, "DeployV1Apps"), format!("{base}/api/1/apps"));
    assert_eq!(
        url(&sim, "PrivatePlatformProjects"),
        format!("{base}/projectservice/v1/projects")
    );
    for (name, _) in urls {
        assert!(PROBES.contains(&name.as_str()), "{name}");
    }
}

#[tokio::test]
async fn valid_credentials() {
    let sim = Simulator::start().await;
    for probe in PROBES {
        let got = call(&sim, probe, State::Valid).await;
        assert_eq!(got.status, 200, "{probe}");
        assert_eq!(got.headers["content-type"], "application/json", "{probe}");
        got.json();
    }
    // Deploy v1 answers a key without apps with `[]`.
    assert_eq!(
        call(&sim, "DeployV1Apps", State::Valid).await.json(),
        json!([])
    );
}

#[tokio::test]
async fn deleted_and_unknown_credentials() {
    let sim = Simulator::start().await;
    let got = call(&sim, "DeployApps", State::Deleted).await;
    assert_eq!(got.status, 403);
    assert_eq!(got.json()["error"]["message"], "The token is not accepted");
    assert_eq!(got.json()["error"]["code"], 403);
    assert_eq!(
        got.json()["error"]["invalid-params"][0]["name"],
        "Authentication"
    );

    let got = call(&sim, "Projects", State::Deleted).await;
    assert_eq!(got.status, 401);
    assert_eq!(got.json()["error"]["message"], "Unauthorized");
    assert_eq!(got.json()["error"]["code"], 401);
    assert!(got.json()["error"]["detail"].is_string());

    let got = call(&sim, "MarketplaceContent", State::Deleted).await;
    assert_eq!(got.status, 401);
    assert_eq!(got.json()["error"]["message"], "Unauthorized");

    let got = call(&sim, "DeployV1Apps", State::Deleted).await;
    assert_eq!(got.status, 401);
    assert_eq!(got.json()["errorCode"], "UNAUTHORIZED");
    assert!(
        got.json()["errorMessage"]
            .as_str()
            .unwrap()
            .starts_with("Authentication failed.")
    );

    let got = call(&sim, "PrivatePlatformProjects", State::Deleted).await;
    assert_eq!(got.status, 401);
    assert_eq!(got.json()["status"], 401);
    assert_eq!(got.json()["title"], "Unauthorized");

    // A credential never set behaves as deleted.
    let stranger = [("authorization", "MxToken nobody-knows-me")];
    let got = get(&url(&sim, "DeployApps"), &stranger).await.unwrap();
    assert_eq!(got.status, 403);
    assert_eq!(got.json()["error"]["message"], "The token is not accepted");
}

#[tokio::test]
async fn missing_or_foreign_credentials() {
    let sim = Simulator::start().await;
    let got = get(&url(&sim, "DeployApps"), &[]).await.unwrap();
    assert_eq!(got.status, 401);
    assert_eq!(
        got.json()["error"]["message"],
        "Missing or invalid Authorization header"
    );
    let basic = [("authorization", "Basic Zm9vOmJhcg==")];
    assert_eq!(
        get(&url(&sim, "DeployApps"), &basic).await.unwrap().status,
        401
    );
    for probe in PROBES.into_iter().filter(|p| *p != "DeployApps") {
        assert_eq!(
            get(&url(&sim, probe), &[]).await.unwrap().status,
            401,
            "{probe}"
        );
    }
    // Each API takes only its own kind of credential, even a valid one.
    sim.set(PAT, State::Valid);
    sim.set(&format!("{USER}:{KEY}"), State::Valid);
    let pat = [("authorization", &*format!("MxToken {PAT}"))];
    assert_eq!(
        get(&url(&sim, "DeployV1Apps"), &pat).await.unwrap().status,
        401
    );
    let key = [("mendix-username", USER), ("mendix-apikey", KEY)];
    assert_eq!(get(&url(&sim, "Projects"), &key).await.unwrap().status, 401);
    assert_eq!(
        get(&url(&sim, "DeployApps"), &key).await.unwrap().status,
        401
    );
}

#[tokio::test]
async fn deactivated_users() {
    let sim = Simulator::start().await;
    let got = call(&sim, "DeployApps", State::Deactivated).await;
    assert_eq!(got.status, 403);
    assert_eq!(
        got.json()["error"]["message"],
        "Account not found or inactive"
    );
    assert_eq!(
        got.json()["error"]["invalid-params"][0]["reason"],
        "Account not found or inactive"
    );
    // Undocumented elsewhere: answered as a deleted credential.
    for probe in PROBES.into_iter().filter(|p| *p != "DeployApps") {
        assert_eq!(
            call(&sim, probe, State::Deactivated).await.status,
            401,
            "{probe}"
        );
    }
}

#[tokio::test]
async fn missing_scope() {
    let sim = Simulator::start().await;
    for probe in PROBES {
        let got = call(&sim, probe, State::MissingScope).await;
        assert_eq!(got.status, 403, "{probe}");
        let body = got.json();
        let message = match probe {
            "DeployApps" => &body["error"]["message"],
            "DeployV1Apps" => &body["errorMessage"],
            "PrivatePlatformProjects" => &body["title"],
            _ => &body["error"]["message"],
        };
        let message = message.as_str().unwrap();
        assert!(!message.contains("not accepted"), "{probe}: {message}");
        assert!(!message.contains("inactive"), "{probe}: {message}");
    }
    let body = call(&sim, "Projects", State::MissingScope).await.json();
    assert_eq!(body["error"]["code"], 403);
    let body = call(&sim, "PrivatePlatformProjects", State::MissingScope)
        .await
        .json();
    assert_eq!(
        (&body["status"], &body["title"]),
        (&json!(403), &json!("Forbidden"))
    );
}

#[tokio::test]
async fn rate_limited() {
    let sim = Simulator::start().await;
    for probe in PROBES {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let got = call(
            &sim,
            probe,
            State::RateLimited {
                retry_after_secs: 42,
            },
        )
        .await;
        assert_eq!(got.status, 429, "{probe}");
        let header = |name: &str| -> u64 { got.headers[name].to_str().unwrap().parse().unwrap() };
        assert_eq!(header("retry-after"), 42);
        assert_eq!(header("x-ratelimit-remaining"), 0);
        assert!(header("x-ratelimit-limit") > 0);
        let reset = header("x-ratelimit-reset");
        assert!((before + 42..=before + 44).contains(&reset), "{reset}");
    }
}

#[tokio::test]
async fn server_errors() {
    let sim = Simulator::start().await;
    let got = call(&sim, "DeployApps", State::ServerError).await;
    assert_eq!(got.status, 500);
    assert_eq!(
        got.json()["error"]["message"],
        "Not able to authenticate the request due a technical failure"
    );
    for probe in PROBES.into_iter().filter(|p| *p != "DeployApps") {
        let got = call(&sim, probe, State::ServerError).await;
        assert_eq!(got.status, 503, "{probe}");
        got.json();
    }
}

#[tokio::test]
async fn html_and_garbage() {
    let sim = Simulator::start().await;
    for probe in PROBES {
        let got = call(&sim, probe, State::Html).await;
        assert_eq!(got.status, 502, "{probe}");
        assert!(
            got.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert!(got.body.starts_with(b"<!DOCTYPE html>"));

        let got = call(&sim, probe, State::Garbage).await;
        assert_eq!(got.status, 500, "{probe}");
        assert_eq!(got.body.len(), 96 * 1024);
        assert!(serde_json::from_slice::<Value>(&got.body).is_err());
        assert!(std::str::from_utf8(&got.body).is_err());
    }
}

#[tokio::test]
async fn slow_answers_valid_after_the_wait() {
    let sim = Simulator::start().await;
    let start = Instant::now();
    let got = call(&sim, "Projects", State::Slow(Duration::from_millis(300))).await;
    assert_eq!(got.status, 200);
    assert!(start.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn dropped_connections_get_no_answer_and_still_count() {
    let sim = Simulator::start().await;
    for probe in PROBES {
        sim.set(PAT, State::DropConnection);
        sim.set(&format!("{USER}:{KEY}"), State::DropConnection);
        let headers = auth(probe);
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let start = Instant::now();
        let err = get(&url(&sim, probe), &headers)
            .await
            .err()
            .expect("no answer");
        assert!(!err.is_timeout(), "{probe}: {err}");
        assert!(err.status().is_none(), "{probe}: {err}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }
    assert_eq!(sim.requests(PAT), 4);
    assert_eq!(sim.requests(&format!("{USER}:{KEY}")), 1);
    // The simulator still serves after dropping connections.
    assert_eq!(call(&sim, "DeployApps", State::Valid).await.status, 200);
}

#[tokio::test]
async fn requests_are_counted_per_credential() {
    let sim = Simulator::start().await;
    sim.set(PAT, State::Valid);
    let other = [("authorization", "MxToken other-token")];
    let pat = format!("MxToken {PAT}");
    for _ in 0..3 {
        get(&url(&sim, "DeployApps"), &[("authorization", &pat)])
            .await
            .unwrap();
    }
    get(&url(&sim, "Projects"), &other).await.unwrap();
    get(&url(&sim, "Projects"), &[]).await.unwrap();
    let key = [("mendix-username", USER), ("mendix-apikey", KEY)];
    get(&url(&sim, "DeployV1Apps"), &key).await.unwrap();
    assert_eq!(sim.requests(PAT), 3);
    assert_eq!(sim.requests("other-token"), 1);
    assert_eq!(sim.requests(&format!("{USER}:{KEY}")), 1);
    assert_eq!(sim.requests("never-seen"), 0);
    assert_eq!(sim.total_requests(), 6);
    // Paths that are not a probe's are not the platform's: 404, not counted.
    let got = get(&format!("{}/api/v4/other", sim.base_url()), &[])
        .await
        .unwrap();
    assert_eq!(got.status, 404);
    assert_eq!(sim.total_requests(), 6);
}

#[tokio::test]
async fn states_are_per_simulator() {
    let a = Simulator::start().await;
    let b = Simulator::start().await;
    a.set(PAT, State::Valid);
    assert_eq!(call(&a, "DeployApps", State::Valid).await.status, 200);
    let pat = format!("MxToken {PAT}");
    let got = get(&url(&b, "DeployApps"), &[("authorization", &pat)])
        .await
        .unwrap();
    assert_eq!(got.status, 403);
    assert_eq!(b.total_requests(), 1);
}

/// Kills the child when a test ends, failed or not.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn binary_serves_the_states_given() {
    let mut child = Running(
        Command::new(env!("CARGO_BIN_EXE_mendix-simulator"))
            .args(["--state", "good=valid", "--state", "gone=deleted"])
            .args(["--state", "tok=en=deactivated"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    let apps = format!("{base}/api/v4/apps?limit=1");
    let status = |token: &'static str| {
        let apps = apps.clone();
        async move {
            let header = format!("MxToken {token}");
            get(&apps, &[("authorization", &header)])
                .await
                .map(|g| (g.status, g.json()))
        }
    };
    assert_eq!(status("good").await.unwrap().0, 200);
    let (code, body) = status("gone").await.unwrap();
    assert_eq!(
        (code, &body["error"]["message"]),
        (403, &json!("The token is not accepted"))
    );
    let (code, body) = status("tok=en").await.unwrap();
    assert_eq!(
        (code, &body["error"]["message"]),
        (403, &json!("Account not found or inactive"))
    );
}

#[test]
fn binary_refuses_bad_states_without_echoing_the_credential() {
    let output = Command::new(env!("CARGO_BIN_EXE_mendix-simulator"))
        .args(["--state", "secret-token-value=sparkly"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown state \"sparkly\""), "{stderr}");
    assert!(!stderr.contains("secret-token-value"), "{stderr}");
}
