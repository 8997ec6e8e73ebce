//! A stand-in for the Mendix platform APIs that mxcred-operator probes, on loopback.
//!
//! Each route answers with the status and body shape that the Mendix documentation gives for its
//! API (the operator's book lists them: "What the platform documents"), chosen by the [`State`] given to the credential of the request. Where the documents are
//! silent, the simulator picks the answer the operator has to be most careful with, and says so
//! at [`State`]. Nothing here is a faithful model of the platform: it is what the documents say.
//!
//! ```no_run
//! # async fn demo() {
//! use mendix_simulator::{Simulator, State};
//! let sim = Simulator::start().await;
//! sim.set("a-personal-access-token", State::Deactivated);
//! sim.set("bot@example.com:an-api-key", State::Valid);
//! # }
//! ```

use axum::Router;
use axum::extract::{Extension, State as Shared};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tower_service::Service;

/// How a credential behaves. An unknown credential behaves as [`State::Deleted`].
///
/// Choices where the platform's documents say nothing:
/// - `Deactivated` on every API but Deploy v4 answers as `Deleted` does: nothing documents a
///   different answer, so the operator cannot tell the two apart there.
/// - `MissingScope` answers 403 in the API's own error shape (documented for Projects only).
/// - `ServerError` answers Deploy v4's documented 500; the other APIs answer 503.
/// - `Garbage` answers 500 with 96 KiB of bytes that are neither JSON nor UTF-8 (more than the
///   64 KiB the operator reads) under a JSON content type: a 2xx would mean a valid credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    Valid,
    Deleted,
    Deactivated,
    MissingScope,
    RateLimited {
        retry_after_secs: u64,
    },
    ServerError,
    /// Waits this long, then answers as `Valid`.
    Slow(Duration),
    /// Closes the connection without an HTTP answer.
    DropConnection,
    /// A proxy's HTML page with 502.
    Html,
    Garbage,
}

/// Parses the names the binary's `--state` takes: `valid`, `deleted`, `deactivated`,
/// `missing-scope`, `rate-limited[:SECONDS]` (default 30), `server-error`, `slow:DURATION`
/// (e.g. `slow:2s`), `drop`, `html`, `garbage`.
impl FromStr for State {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (name, arg) = match text.split_once(':') {
            Some((name, arg)) => (name, Some(arg)),
            None => (text, None),
        };
        let state = match (name, arg) {
            ("valid", None) => State::Valid,
            ("deleted", None) => State::Deleted,
            ("deactivated", None) => State::Deactivated,
            ("missing-scope", None) => State::MissingScope,
            ("rate-limited", None) => State::RateLimited {
                retry_after_secs: 30,
            },
            ("rate-limited", Some(secs)) => State::RateLimited {
                retry_after_secs: secs
                    .parse()
                    .map_err(|_| format!("rate-limited:{secs}: not a number of seconds"))?,
            },
            ("server-error", None) => State::ServerError,
            ("slow", Some(wait)) => State::Slow(
                humantime::parse_duration(wait)
                    .map_err(|e| format!("slow:{wait}: not a duration ({e})"))?,
            ),
            ("drop", None) => State::DropConnection,
            ("html", None) => State::Html,
            ("garbage", None) => State::Garbage,
            _ => {
                return Err(format!(
                    "unknown state {text:?}: expected valid, deleted, deactivated, \
                     missing-scope, rate-limited[:SECONDS], server-error, slow:DURATION, drop, \
                     html or garbage"
                ));
            }
        };
        Ok(state)
    }
}

/// The APIs behind the operator's named probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    DeployApps,
    Projects,
    MarketplaceContent,
    DeployV1Apps,
    PrivatePlatformProjects,
}

impl Api {
    const ALL: [Api; 5] = [
        Api::DeployApps,
        Api::Projects,
        Api::MarketplaceContent,
        Api::DeployV1Apps,
        Api::PrivatePlatformProjects,
    ];

    /// The operator's probe name.
    fn probe(self) -> &'static str {
        match self {
            Api::DeployApps => "DeployApps",
            Api::Projects => "Projects",
            Api::MarketplaceContent => "MarketplaceContent",
            Api::DeployV1Apps => "DeployV1Apps",
            Api::PrivatePlatformProjects => "PrivatePlatformProjects",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Api::DeployApps => "/api/v4/apps",
            Api::Projects => "/v2/projects",
            Api::MarketplaceContent => "/v1/content",
            Api::DeployV1Apps => "/api/1/apps",
            Api::PrivatePlatformProjects => "/projectservice/v1/projects",
        }
    }

    /// The probe's path and query, as the operator's probe URLs have them.
    fn probe_path(self) -> &'static str {
        match self {
            Api::DeployApps => "/api/v4/apps?limit=1",
            Api::Projects => "/v2/projects?limit=1",
            Api::MarketplaceContent => "/v1/content?limit=1",
            Api::DeployV1Apps | Api::PrivatePlatformProjects => self.path(),
        }
    }

    fn takes_api_keys(self) -> bool {
        self == Api::DeployV1Apps
    }
}

/// The platform, served on loopback by a task of the current tokio runtime until dropped.
pub struct Simulator {
    addr: SocketAddr,
    shared: Arc<Inner>,
    server: JoinHandle<()>,
}

#[derive(Default)]
struct Inner {
    states: Mutex<HashMap<String, State>>,
    requests: Mutex<HashMap<String, usize>>,
    total: AtomicUsize,
}

impl Inner {
    fn state(&self, credential: &str) -> State {
        let states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        states.get(credential).cloned().unwrap_or(State::Deleted)
    }

    fn count(&self, credential: Option<&str>) -> usize {
        if let Some(credential) = credential {
            let mut requests = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
            *requests.entry(credential.to_owned()).or_default() += 1;
        }
        self.total.fetch_add(1, Ordering::SeqCst) + 1
    }
}

impl Simulator {
    /// Serves on a free port of 127.0.0.1. Panics when there is none: a test cannot go on.
    pub async fn start() -> Simulator {
        Simulator::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("a free port on 127.0.0.1")
    }

    pub async fn bind(addr: SocketAddr) -> std::io::Result<Simulator> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Inner::default());
        let router = Api::ALL
            .into_iter()
            .fold(Router::new(), |router, api| {
                router.route(
                    api.path(),
                    get(
                        move |shared: Shared<Arc<Inner>>,
                              dropper: Extension<Dropper>,
                              headers: HeaderMap| {
                            answer(api, shared, dropper, headers)
                        },
                    ),
                )
            })
            .with_state(shared.clone());
        let server = tokio::spawn(serve(listener, router));
        Ok(Simulator {
            addr,
            shared,
            server,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, also the base URL of the Private Platform probe.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `(probe name, URL)` for each of the operator's named probes, e.g.
    /// `("DeployApps", "http://127.0.0.1:PORT/api/v4/apps?limit=1")`: what `--probe-url` takes.
    pub fn probe_urls(&self) -> Vec<(String, String)> {
        Api::ALL
            .map(|api| {
                let url = format!("{}{}", self.base_url(), api.probe_path());
                (api.probe().to_owned(), url)
            })
            .to_vec()
    }

    /// Sets how `credential` behaves: a personal access token, or `username:apikey`.
    pub fn set(&self, credential: &str, state: State) {
        let mut states = self
            .shared
            .states
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        states.insert(credential.to_owned(), state);
    }

    /// Requests that carried `credential` (including dropped and unanswered ones).
    pub fn requests(&self, credential: &str) -> usize {
        let requests = self
            .shared
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        requests.get(credential).copied().unwrap_or(0)
    }

    /// All requests to the simulator's routes, with or without a credential.
    pub fn total_requests(&self) -> usize {
        self.shared.total.load(Ordering::SeqCst)
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl fmt::Debug for Simulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simulator")
            .field("addr", &self.addr)
            .finish()
    }
}

/// Lets a handler close its connection without answering.
#[derive(Clone)]
struct Dropper(Arc<Notify>);

/// The accept loop. Hand-written rather than `axum::serve` because `DropConnection` has to close
/// a connection without an HTTP answer: the connection's task stops serving when the handler
/// asks it to, which closes the socket. Connections end with the loop (the `JoinSet` aborts
/// them when the server task is aborted).
async fn serve(listener: TcpListener, router: Router) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors or a connection reset before accept: try again shortly.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        while connections.try_join_next().is_some() {}
        let dropper = Dropper(Arc::new(Notify::new()));
        let router = router.clone();
        let signal = dropper.0.clone();
        let service = hyper::service::service_fn(move |mut request| {
            request.extensions_mut().insert(dropper.clone());
            router.clone().call(request)
        });
        connections.spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            // A client that goes away mid-request is its own business: no error to report.
            tokio::select! {
                _ = connection => {}
                () = signal.notified() => {}
            }
        });
    }
}

/// The credential of a request, as [`Simulator::set`] names it.
enum Credential {
    /// From `Authorization: MxToken <PAT>`.
    Token(String),
    /// `username:apikey` from `Mendix-Username` and `Mendix-ApiKey`.
    ApiKey(String),
}

impl Credential {
    fn of(headers: &HeaderMap) -> Option<Credential> {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if let Some(token) = text("authorization").and_then(|v| v.strip_prefix("MxToken ")) {
            return Some(Credential::Token(token.trim().to_owned()));
        }
        match (text("mendix-username"), text("mendix-apikey")) {
            (Some(user), Some(key)) => Some(Credential::ApiKey(format!("{user}:{key}"))),
            _ => None,
        }
    }

    fn name(&self) -> &str {
        match self {
            Credential::Token(name) | Credential::ApiKey(name) => name,
        }
    }
}

async fn answer(
    api: Api,
    Shared(shared): Shared<Arc<Inner>>,
    Extension(dropper): Extension<Dropper>,
    headers: HeaderMap,
) -> Response {
    let credential = Credential::of(&headers);
    let seen = shared.count(credential.as_ref().map(Credential::name));
    let state = match credential {
        Some(Credential::ApiKey(name)) if api.takes_api_keys() => shared.state(&name),
        Some(Credential::Token(name)) if !api.takes_api_keys() => shared.state(&name),
        _ => return unauthenticated(api),
    };
    match state {
        State::Valid => valid(api),
        State::Slow(wait) => {
            tokio::time::sleep(wait).await;
            valid(api)
        }
        State::Deleted => deleted(api),
        State::Deactivated => match api {
            Api::DeployApps => shape_a(StatusCode::FORBIDDEN, "Account not found or inactive"),
            _ => deleted(api),
        },
        State::MissingScope => missing_scope(api),
        State::RateLimited { retry_after_secs } => rate_limited(retry_after_secs),
        State::ServerError => match api {
            Api::DeployApps => shape_a(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Not able to authenticate the request due a technical failure",
            ),
            _ => in_api_shape(api, StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable"),
        },
        State::DropConnection => {
            dropper.0.notify_one();
            std::future::pending::<Response>().await
        }
        State::Html => (
            StatusCode::BAD_GATEWAY,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            PROXY_PAGE,
        )
            .into_response(),
        State::Garbage => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "application/json")],
            garbage(seen),
        )
            .into_response(),
    }
}

const PROXY_PAGE: &str = "<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\
    <body><h1>Bad Gateway</h1><p>The proxy could not reach the upstream server.</p>\
    <hr><address>corporate-proxy</address></body></html>\n";

fn valid(api: Api) -> Response {
    let body = match api {
        Api::DeployApps => json!({"apps": [{"appId": "demo-app", "name": "Demo App"}]}),
        Api::Projects => json!({"items": [{"projectId": "b7e2", "name": "Demo App"}]}),
        Api::MarketplaceContent => json!({"items": [{"contentId": 1, "publisher": "Mendix"}]}),
        // Deploy v1 answers a key without apps with `[]`: still a valid key.
        Api::DeployV1Apps => json!([]),
        Api::PrivatePlatformProjects => json!([{"id": "b7e2", "name": "Demo App"}]),
    };
    json_response(StatusCode::OK, body)
}

/// No credential the API takes (for Deploy v4: no `Authorization: MxToken` header).
fn unauthenticated(api: Api) -> Response {
    match api {
        Api::DeployApps => shape_a(
            StatusCode::UNAUTHORIZED,
            "Missing or invalid Authorization header",
        ),
        _ => deleted(api),
    }
}

fn deleted(api: Api) -> Response {
    match api {
        Api::DeployApps => shape_a(StatusCode::FORBIDDEN, "The token is not accepted"),
        Api::DeployV1Apps => json_response(
            StatusCode::UNAUTHORIZED,
            json!({
                "errorMessage": "Authentication failed. Check the Mendix-Username and \
                                 Mendix-ApiKey headers.",
                "errorCode": "UNAUTHORIZED",
            }),
        ),
        _ => in_api_shape(api, StatusCode::UNAUTHORIZED, "Unauthorized"),
    }
}

fn missing_scope(api: Api) -> Response {
    match api {
        Api::DeployApps => shape_a(
            StatusCode::FORBIDDEN,
            "The token does not have the scope mx:deployment:read",
        ),
        Api::DeployV1Apps => json_response(
            StatusCode::FORBIDDEN,
            json!({
                "errorMessage": "You do not have the API rights for this request.",
                "errorCode": "FORBIDDEN",
            }),
        ),
        _ => in_api_shape(api, StatusCode::FORBIDDEN, "Forbidden"),
    }
}

/// The documented error shape of Projects, Marketplace Content and Private Platform (and a
/// `{"error": {...}}` shape for the rest).
fn in_api_shape(api: Api, status: StatusCode, message: &str) -> Response {
    let code = status.as_u16();
    let detail = "The request could not be completed.";
    let body = match api {
        Api::PrivatePlatformProjects => json!({"status": code, "title": message, "detail": detail}),
        Api::Projects => json!({"error": {"message": message, "detail": detail, "code": code}}),
        _ => json!({"error": {"code": code, "message": message, "detail": detail}}),
    };
    json_response(status, body)
}

fn json_response(status: StatusCode, body: Value) -> Response {
    let content_type = [(header::CONTENT_TYPE, "application/json")];
    (status, content_type, body.to_string()).into_response()
}

/// Deploy v4's "shapeA".
fn shape_a(status: StatusCode, message: &str) -> Response {
    let body: Value = json!({"error": {
        "code": status.as_u16(),
        "message": message,
        "invalid-params": [{"name": "Authentication", "reason": message}],
    }});
    json_response(status, body)
}

/// 429 with the headers the Webhooks API documents, and `Retry-After`.
fn rate_limited(retry_after_secs: u64) -> Response {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let reset = now.saturating_add(retry_after_secs);
    let mut response = shape_a(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests");
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    headers.insert("x-ratelimit-limit", HeaderValue::from(60u64));
    headers.insert("x-ratelimit-remaining", HeaderValue::from(0u64));
    headers.insert("x-ratelimit-reset", HeaderValue::from(reset));
    response
}

/// 96 KiB of pseudo-random bytes (xorshift, seeded per request), never valid UTF-8 or JSON:
/// every 16th byte is 0xFF, which UTF-8 never contains.
fn garbage(seed: usize) -> Vec<u8> {
    let mut x = (seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..96 * 1024)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % 16 == 0 {
                0xFF
            } else {
                x.to_le_bytes()[0]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names() {
        assert_eq!("valid".parse(), Ok(State::Valid));
        assert_eq!("missing-scope".parse(), Ok(State::MissingScope));
        assert_eq!(
            "rate-limited".parse(),
            Ok(State::RateLimited {
                retry_after_secs: 30
            })
        );
        assert_eq!(
            "rate-limited:5".parse(),
            Ok(State::RateLimited {
                retry_after_secs: 5
            })
        );
        assert_eq!(
            "slow:1500ms".parse(),
            Ok(State::Slow(Duration::from_millis(1500)))
        );
        assert_eq!("drop".parse(), Ok(State::DropConnection));
        for bad in [
            "",
            "Valid",
            "slow",
            "slow:soon",
            "rate-limited:x",
            "valid:1",
        ] {
            assert!(bad.parse::<State>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn garbage_is_neither_json_nor_text() {
        let bytes = garbage(1);
        assert_eq!(bytes.len(), 96 * 1024);
        assert!(std::str::from_utf8(&bytes).is_err());
        assert!(serde_json::from_slice::<Value>(&bytes).is_err());
        assert_ne!(garbage(2), bytes);
    }
}
