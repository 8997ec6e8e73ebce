//! The Mendix platform client: sends a credential's headers to a probe and classifies the
//! answer. Thin IO around [`crate::domain::classify`].
//!
//! Guards, in order: the probe's host must be on the allow-list (a namespace user must not make
//! the operator call internal addresses), `http://` only when allowed, a rate limit per host, no
//! redirects (they could carry the credential elsewhere), connect and total timeouts, and a
//! bounded read of the body, which is never logged or stored.

use crate::domain::classify::{self, Answer, MAX_BODY, Outcome, Reason, TransportFailure};
use crate::domain::credential::Credential;
use crate::domain::probe::{NamedProbe, ProbeTarget};
use crate::shell::metrics::Metrics;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;
use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use secrecy::ExposeSecret;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tracing::debug;

#[derive(Debug, Clone)]
pub struct PlatformConfig {
    /// Replacement URLs of named probes (`--probe-url NAME=URL`); each exact URL counts as
    /// allowed, not its host.
    pub probe_urls: BTreeMap<NamedProbe, Url>,
    /// Origins credentials may be sent to, besides the URLs of `probe_urls`: each `host`,
    /// `host:port` or `scheme://host[:port]` ([`Origin::parse`]).
    pub allowed_hosts: BTreeSet<String>,
    pub allow_http: bool,
    /// PEM file of extra CAs to trust for platform TLS.
    pub extra_ca_file: Option<std::path::PathBuf>,
    /// Requests per second per host, for the whole operator.
    pub qps: NonZeroU32,
    pub connect_timeout: Duration,
    pub timeout: Duration,
}

impl PlatformConfig {
    /// The Mendix Cloud hosts of the named probes: the default allow-list.
    pub fn default_allowed_hosts() -> BTreeSet<String> {
        NamedProbe::ALL
            .iter()
            .filter_map(|p| p.cloud_url())
            .filter_map(|u| Url::parse(u).ok()?.host_str().map(str::to_owned))
            .collect()
    }
}

/// What the allow-list compares: scheme, host and port. Another port of an allowed host is
/// another service (an internal admin port, a proxy's other listener), so it is not allowed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    /// The origin of a URL (its port, or its scheme's default).
    pub fn of(url: &Url) -> Option<Origin> {
        Some(Origin {
            scheme: url.scheme().to_owned(),
            host: url.host_str()?.to_ascii_lowercase(),
            port: url.port_or_known_default()?,
        })
    }

    /// An allow-list entry: `host` (https on 443), `host:port` (https) or `scheme://host[:port]`
    /// (http or https; the scheme's default port).
    pub fn parse(entry: &str) -> Result<Origin, String> {
        let text = if entry.contains("://") {
            entry.to_owned()
        } else {
            format!("https://{entry}")
        };
        let bad = || format!("{entry:?} is not host, host:port or scheme://host[:port]");
        let url = Url::parse(&text).map_err(|_| bad())?;
        let bare = matches!(url.scheme(), "https" | "http")
            && url.path() == "/"
            && url.query().is_none()
            && url.fragment().is_none()
            && url.username().is_empty()
            && url.password().is_none();
        if !bare {
            return Err(bad());
        }
        Origin::of(&url).ok_or_else(bad)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("--allowed-host: {0}")]
    AllowedHost(String),
    #[error("cannot read the extra CA file {path}: {source}")]
    CaFile {
        path: String,
        source: std::io::Error,
    },
    #[error("the extra CA file {0} holds no usable PEM certificate")]
    CaPem(String),
    #[error("cannot build the HTTP client: {0}")]
    Client(reqwest::Error),
}

pub struct Platform {
    http: reqwest::Client,
    config: PlatformConfig,
    allowed: BTreeSet<Origin>,
    /// The `--probe-url` URLs: allowed exactly, not their origins.
    exact: BTreeSet<Url>,
    limiters: Mutex<HashMap<String, Arc<DefaultDirectRateLimiter>>>,
    metrics: Arc<Metrics>,
}

impl Platform {
    pub fn new(config: PlatformConfig, metrics: Arc<Metrics>) -> Result<Self, SetupError> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            .timeout(config.timeout)
            .user_agent(concat!("mxcred-operator/", env!("CARGO_PKG_VERSION")))
            .https_only(!config.allow_http);
        if let Some(path) = &config.extra_ca_file {
            let pem = std::fs::read(path).map_err(|source| SetupError::CaFile {
                path: path.display().to_string(),
                source,
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| SetupError::CaPem(path.display().to_string()))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(SetupError::Client)?;
        let allowed = config
            .allowed_hosts
            .iter()
            .map(|entry| Origin::parse(entry))
            .collect::<Result<_, _>>()
            .map_err(SetupError::AllowedHost)?;
        let exact = config.probe_urls.values().cloned().collect();
        Ok(Platform {
            http,
            config,
            allowed,
            exact,
            limiters: Mutex::default(),
            metrics,
        })
    }

    /// The URL a probe resolves to, after `--probe-url` replacements.
    pub fn url_for(&self, target: &ProbeTarget) -> Url {
        match target {
            ProbeTarget::Url(url) => url.clone(),
            ProbeTarget::Named { probe, base_url } => {
                if let Some(url) = self.config.probe_urls.get(probe) {
                    return url.clone();
                }
                match (probe.cloud_url(), base_url) {
                    (Some(url), _) => Url::parse(url).expect("built-in probe URLs parse"),
                    (None, Some(base)) => private_platform_url(base),
                    (None, None) => {
                        unreachable!("spec resolution gives PrivatePlatformProjects a base URL")
                    }
                }
            }
        }
    }

    /// Asks the platform whether `credential` works, through `target`.
    pub async fn check(&self, target: &ProbeTarget, credential: &Credential) -> Outcome {
        let url = self.url_for(target);
        let host = url.host_str().unwrap_or_default().to_owned();
        if url.scheme() == "http" && !self.config.allow_http {
            return Outcome {
                reason: Reason::EndpointNotAllowed,
                message: format!(
                    "the probe URL for {host} uses http://, which the operator does not allow \
                     (--allow-http): no request was sent"
                ),
                retry_after: None,
            };
        }
        if !self.is_allowed(&url) {
            return Outcome::endpoint_not_allowed(&host);
        }
        self.limiter(&host).until_ready().await;

        let mut headers = HeaderMap::new();
        for (name, value) in credential.headers() {
            // Validated as visible ASCII (and usernames as control-free) when read; a value a
            // header cannot carry is refused there, so this only fails on a bug.
            let Ok(mut value) = HeaderValue::from_str(value.expose_secret()) else {
                return classify::transport_failure(&host, TransportFailure::Other);
            };
            value.set_sensitive(true);
            // `from_bytes` lowercases, as HTTP/2 requires; the names are constants, so it cannot fail.
            let name = HeaderName::from_bytes(name.as_bytes()).expect("a valid header name");
            headers.insert(name, value);
        }
        let started = Instant::now();
        let response = match self.http.get(url).headers(headers).send().await {
            Ok(response) => response,
            Err(e) => {
                self.metrics
                    .platform_request(&host, None, started.elapsed());
                debug!(host, kind = ?failure_kind(&e), "platform request failed");
                return classify::transport_failure(&host, failure_kind(&e));
            }
        };
        let status = response.status().as_u16();
        let response_headers = response.headers().clone();
        let body = read_bounded(response).await;
        let took = started.elapsed();
        self.metrics.platform_request(&host, Some(status), took);
        debug!(host, status, ?took, "platform answered");
        let body = match body {
            Ok(body) => body,
            Err(e) => return classify::transport_failure(&host, failure_kind(&e)),
        };
        let answer = Answer {
            status,
            headers: &response_headers,
            body: &body,
        };
        classify::classify(target.named(), &host, &answer, SystemTime::now())
    }

    /// Whether credentials may be sent to `url`: its origin is allowed, or it is exactly a
    /// `--probe-url` URL.
    fn is_allowed(&self, url: &Url) -> bool {
        self.origin_allowed(url) || self.exact.contains(url)
    }

    /// Whether every URL of `url`'s origin is allowed (an `--allowed-host`), not just the
    /// exact `--probe-url` URLs.
    pub(crate) fn origin_allowed(&self, url: &Url) -> bool {
        Origin::of(url).is_some_and(|o| self.allowed.contains(&o))
    }

    fn limiter(&self, host: &str) -> Arc<DefaultDirectRateLimiter> {
        let mut limiters = self.limiters.lock();
        limiters
            .entry(host.to_owned())
            .or_insert_with(|| Arc::new(RateLimiter::direct(Quota::per_second(self.config.qps))))
            .clone()
    }
}

fn private_platform_url(base: &Url) -> Url {
    let mut url = base.clone();
    let path = format!(
        "{}/{}",
        url.path().trim_end_matches('/'),
        NamedProbe::PRIVATE_PLATFORM_PATH
    );
    url.set_path(&path);
    url.set_query(None);
    url
}

/// Reads at most [`MAX_BODY`] bytes of the body; the rest is dropped unread.
async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_BODY - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_BODY {
            break;
        }
    }
    Ok(body)
}

fn failure_kind(e: &reqwest::Error) -> TransportFailure {
    if e.is_timeout() {
        TransportFailure::Timeout
    } else if is_tls(e) {
        TransportFailure::Tls
    } else if e.is_connect() {
        TransportFailure::Connect
    } else {
        TransportFailure::Other
    }
}

/// Whether a TLS handshake or certificate check failed, somewhere in the error's sources.
/// reqwest does not expose this as a kind, so the source chain is searched for rustls' error.
fn is_tls(e: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        source = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::api::{CredentialType, Platform as Kind};

    fn config() -> PlatformConfig {
        PlatformConfig {
            probe_urls: BTreeMap::new(),
            allowed_hosts: PlatformConfig::default_allowed_hosts(),
            allow_http: false,
            extra_ca_file: None,
            qps: NonZeroU32::new(5).unwrap(),
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(15),
        }
    }

    #[test]
    fn default_allow_list_is_the_cloud_hosts() {
        let hosts: Vec<_> = PlatformConfig::default_allowed_hosts()
            .into_iter()
            .collect();
        assert_eq!(
            hosts,
            [
                "cloud.home.mendix.com",
                "deploy.mendix.com",
                "marketplace-api.mendix.com",
                "projects-api.home.mendix.com"
            ]
        );
    }

    #[test]
    fn probe_urls_replace_named_probes() {
        let mut c = config();
        let sim = Url::parse("http://127.0.0.1:9/api/v4/apps?limit=1").unwrap();
        c.probe_urls.insert(NamedProbe::DeployApps, sim.clone());
        let p = Platform::new(c, Arc::default()).unwrap();
        let target = ProbeTarget::resolve(
            CredentialType::PersonalAccessToken,
            Kind::MendixCloud,
            None,
            None,
        )
        .unwrap();
        assert_eq!(p.url_for(&target), sim);
        assert!(p.is_allowed(&sim));
        for other in [
            "http://127.0.0.1:9/anything?q=1",
            "http://127.0.0.1:9/api/v4/apps?limit=2",
            "http://127.0.0.1:10/api/v4/apps?limit=1",
        ] {
            assert!(
                !p.is_allowed(&Url::parse(other).unwrap()),
                "a --probe-url allows exactly that URL, not {other}"
            );
        }
    }

    #[test]
    fn the_allow_list_is_of_origins() {
        let mut c = config();
        c.allowed_hosts = [
            "pmp.example.com",
            "mirror.example.com:8443",
            "http://127.0.0.1:8080",
            "https://Other.Example.com",
        ]
        .map(String::from)
        .into();
        let p = Platform::new(c, Arc::default()).unwrap();
        let allowed = |u: &str| p.is_allowed(&Url::parse(u).unwrap());
        assert!(allowed(
            "https://pmp.example.com/projectservice/v1/projects"
        ));
        assert!(allowed("https://pmp.example.com:443/x"));
        assert!(!allowed("https://pmp.example.com:8443/x"), "another port");
        assert!(!allowed("http://pmp.example.com/x"), "another scheme");
        assert!(allowed("https://mirror.example.com:8443/api?q=1"));
        assert!(!allowed("https://mirror.example.com/api"));
        assert!(allowed("http://127.0.0.1:8080/anything?q=1"));
        assert!(!allowed("http://127.0.0.1:8081/anything?q=1"));
        assert!(!allowed("http://127.0.0.1/"));
        assert!(allowed("https://other.example.com/"));
        for bad in [
            "https://x.example.com/path",
            "ftp://x.example.com",
            "user@x.example.com",
            "x.example.com:port",
            "",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad}");
        }
        let mut c = config();
        c.allowed_hosts = ["https://x.example.com/path".to_owned()].into();
        assert!(Platform::new(c, Arc::default()).is_err());
    }

    #[test]
    fn private_platform_url_hangs_off_the_base() {
        let p = Platform::new(config(), Arc::default()).unwrap();
        let target = ProbeTarget::resolve(
            CredentialType::PersonalAccessToken,
            Kind::PrivatePlatform,
            Some("https://pmp.example.com/mx/"),
            None,
        )
        .unwrap();
        assert_eq!(
            p.url_for(&target).as_str(),
            "https://pmp.example.com/mx/projectservice/v1/projects"
        );
    }
}
