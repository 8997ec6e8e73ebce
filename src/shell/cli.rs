//! Command line: `run`, `crd`, `reference`, `verify`. Every `run` flag is also an environment variable `MXCRED_...`.

use crate::domain::api::Platform;
use crate::domain::probe::NamedProbe;
use crate::shell::context::Settings;
use crate::shell::platform::PlatformConfig;
use crate::shell::telemetry::LogFormat;
use clap::{Args, Parser, Subcommand};
use reqwest::Url;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "mxcred-operator",
    version,
    about = "Mendix credentials for CI, as Kubernetes Secrets, verified"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller.
    Run(RunArgs),
    /// Print the CustomResourceDefinitions as YAML (MendixCredential, ClusterMendixCredential).
    Crd(CrdArgs),
    /// Print the API reference pages of the book (docs/reference/), generated from the CRDs, as
    /// Markdown.
    Reference(ReferenceArgs),
    /// Check a token or API key once, for CI steps: prints `<status> <reason>: <message>` and
    /// exits 0 when valid, 1 when rejected or deactivated, 2 when unknown. Unusable input (a
    /// variable not set, a value with a space or line break, a bad probe) prints `Unknown
    /// InvalidInput: ...` and exits 2, before anything is sent.
    Verify(VerifyArgs),
}

/// What `crd` prints.
#[derive(Debug, Args)]
pub struct CrdArgs {
    /// Only the CRD stored under this file name in crds/ (e.g.
    /// clustermendixcredentials.mxcred.io.yaml).
    #[arg(long)]
    pub file: Option<String>,
}

/// What `reference` prints.
#[derive(Debug, Args)]
pub struct ReferenceArgs {
    /// Only the page stored under this file name in docs/reference/ (e.g.
    /// clustermendixcredential.md).
    #[arg(long)]
    pub file: Option<String>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// File holding a personal access token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Environment variable holding a personal access token (e.g. MENDIX_TOKEN).
    #[arg(long)]
    pub token_env: Option<String>,
    /// File holding the API key's username.
    #[arg(long)]
    pub username_file: Option<PathBuf>,
    /// Environment variable holding the API key's username (e.g. MENDIX_USERNAME).
    #[arg(long)]
    pub username_env: Option<String>,
    /// File holding the API key.
    #[arg(long)]
    pub api_key_file: Option<PathBuf>,
    /// Environment variable holding the API key (e.g. MENDIX_API_KEY).
    #[arg(long)]
    pub api_key_env: Option<String>,
    /// A named probe or an https:// URL; the default depends on the credential and platform.
    #[arg(long)]
    pub probe: Option<String>,
    /// MendixCloud or PrivatePlatform.
    #[arg(long = "platform", default_value = "MendixCloud", value_parser = parse_platform)]
    pub platform_kind: Platform,
    /// Base URL of a Private Mendix Platform.
    #[arg(long)]
    pub base_url: Option<String>,
    #[command(flatten)]
    pub platform: PlatformArgs,
}

fn parse_platform(text: &str) -> Result<Platform, String> {
    match text {
        "MendixCloud" => Ok(Platform::MendixCloud),
        "PrivatePlatform" => Ok(Platform::PrivatePlatform),
        _ => Err("MendixCloud or PrivatePlatform".into()),
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Namespace to serve (repeatable, or comma-separated in the environment); all by default.
    #[arg(long = "namespace", env = "MXCRED_NAMESPACE", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "MXCRED_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Verification interval of resources that do not set one.
    #[arg(long, env = "MXCRED_DEFAULT_INTERVAL", default_value = "1h", value_parser = parse_default_interval)]
    pub default_interval: Duration,
    /// The maximum age of the credentials of resources that set no spec.rotation.maxAge, as a
    /// duration such as "90d"; none by default (no maximum age).
    #[arg(long, env = "MXCRED_DEFAULT_MAX_AGE", value_parser = parse_default_max_age)]
    pub default_max_age: Option<Duration>,
    /// Forced checks (changes of mxcred.io/verify-requested-at) of one credential closer
    /// together than this become one check at the end of the cooldown.
    #[arg(long, env = "MXCRED_FORCED_CHECK_COOLDOWN", default_value = "60s", value_parser = humantime::parse_duration)]
    pub forced_check_cooldown: Duration,
    /// The shortest interval one namespace's resources make the checks of a credential that
    /// another namespace's resources share (a tenant holding a copy of a token cannot make the
    /// platform see it more often than this).
    #[arg(long, env = "MXCRED_SHARED_INTERVAL_FLOOR", default_value = "15m", value_parser = humantime::parse_duration)]
    pub shared_interval_floor: Duration,
    /// Resources reconciled at once. 32 converged 5000 resources a quarter faster than 8 (make bench).
    #[arg(long, env = "MXCRED_CONCURRENCY", default_value_t = 32)]
    pub concurrency: u16,
    /// Log lines as JSON objects, one a line (for log collectors), or as text for people.
    #[arg(long, env = "MXCRED_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
    /// Run the controllers only while holding a Lease, so that several replicas can run.
    #[arg(long, env = "MXCRED_LEADER_ELECT")]
    pub leader_elect: bool,
    /// Name of the Lease.
    #[arg(long, env = "MXCRED_LEASE_NAME", default_value = "mxcred-operator")]
    pub lease_name: String,
    /// Namespace of the Lease; default $POD_NAMESPACE, else the kubeconfig's namespace.
    #[arg(long, env = "MXCRED_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Refuse spec.target label and annotation keys starting with this prefix (repeatable),
    /// e.g. `example.com/`, beyond the built-in kubernetes.io/, k8s.io/, mxcred.io/ and the
    /// replication keys of Reflector, kubed and kubernetes-replicator.
    #[arg(
        long = "denied-metadata-prefix",
        env = "MXCRED_DENIED_METADATA_PREFIX",
        value_delimiter = ','
    )]
    pub denied_metadata_prefixes: Vec<String>,
    /// The least time between two restarts of one workload (spec.target.rolloutRestart), by
    /// any credential: changes within it come to one restart at its end.
    #[arg(long, env = "MXCRED_RESTART_MIN_INTERVAL", default_value = "1m", value_parser = humantime::parse_duration)]
    pub restart_min_interval: Duration,
    /// The first wait before workloads of spec.target.rolloutRestart that are missing, do not
    /// consent or could not be patched are tried again; it doubles with each try, up to 1h.
    #[arg(long, env = "MXCRED_RESTART_RETRY", default_value = "1m", value_parser = parse_restart_retry)]
    pub restart_retry: Duration,
    /// Look for the workloads that use each target Secret (status.consumers; needs list and
    /// watch on Pods, ReplicaSets, Deployments, StatefulSets, DaemonSets, Jobs and CronJobs).
    /// `--discover-consumers=false` turns it off.
    #[arg(long, env = "MXCRED_DISCOVER_CONSUMERS", default_value_t = true, action = clap::ArgAction::Set)]
    pub discover_consumers: bool,
    #[command(flatten)]
    pub platform: RunPlatformArgs,
    /// For tests only: verify at this interval, whatever the resources ask. Their own minimum
    /// of 1m is unaffected.
    #[arg(long, hide = true, value_parser = humantime::parse_duration)]
    pub test_interval: Option<Duration>,
}

/// Platform flags, shared by `run` and `verify`.
#[derive(Debug, Args)]
pub struct PlatformArgs {
    /// Replace the URL of a named probe, keeping its classification: NAME=URL (repeatable). For
    /// egress proxies, mirrors and simulators; exactly this URL counts as allowed.
    #[arg(long = "probe-url", env = "MXCRED_PROBE_URL", value_delimiter = ',', value_parser = parse_probe_url)]
    pub probe_urls: Vec<(NamedProbe, Url)>,
    /// Origin credentials may be sent to (repeatable): `host` (https on port 443), `host:port`
    /// (https) or `scheme://host[:port]`. Default: the Mendix Cloud hosts of the named probes.
    /// A Private Mendix Platform host must be added here.
    #[arg(
        long = "allowed-host",
        env = "MXCRED_ALLOWED_HOST",
        value_delimiter = ',',
        value_parser = parse_allowed_origin
    )]
    pub allowed_hosts: Vec<String>,
    /// Permit http:// probe URLs (local testing only).
    #[arg(long, env = "MXCRED_ALLOW_HTTP")]
    pub allow_http: bool,
    /// PEM file with extra CAs to trust for platform TLS.
    #[arg(long, env = "MXCRED_EXTRA_CA_FILE")]
    pub extra_ca_file: Option<PathBuf>,
}

/// The platform flags of `run`: the shared ones and the operator-wide rate limit, which means
/// nothing to `verify`'s single request.
#[derive(Debug, Args)]
pub struct RunPlatformArgs {
    #[command(flatten)]
    pub common: PlatformArgs,
    /// Requests per second to any one platform host, summed over every resource this operator
    /// verifies.
    #[arg(long, env = "MXCRED_PLATFORM_QPS", default_value = "5")]
    pub platform_qps: NonZeroU32,
    /// Checks per second started for the resources of any one namespace (a share of
    /// --platform-qps): one namespace's many or rewritten credentials cannot spend the
    /// platform's rate limit of all the others. A check of a credential that resources of
    /// several namespaces share counts against one of them.
    #[arg(long, env = "MXCRED_PLATFORM_NAMESPACE_QPS", default_value = "2")]
    pub platform_namespace_qps: NonZeroU32,
}

impl RunPlatformArgs {
    pub fn config(&self) -> PlatformConfig {
        self.common.config_with_qps(self.platform_qps)
    }
}

impl PlatformArgs {
    /// The configuration of `verify`: one request, so no rate limit to choose.
    pub fn config(&self) -> PlatformConfig {
        self.config_with_qps(NonZeroU32::MIN)
    }

    fn config_with_qps(&self, qps: NonZeroU32) -> PlatformConfig {
        let allowed_hosts = if self.allowed_hosts.is_empty() {
            PlatformConfig::default_allowed_hosts()
        } else {
            self.allowed_hosts.iter().cloned().collect()
        };
        PlatformConfig {
            probe_urls: self.probe_urls.iter().cloned().collect(),
            allowed_hosts,
            allow_http: self.allow_http,
            extra_ca_file: self.extra_ca_file.clone(),
            qps,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(15),
        }
    }
}

fn parse_probe_url(text: &str) -> Result<(NamedProbe, Url), String> {
    let (name, url) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not NAME=URL"))?;
    let probe =
        NamedProbe::from_name(name).ok_or_else(|| format!("{name:?} is not a named probe"))?;
    let url = Url::parse(url).map_err(|e| format!("{url:?}: {e}"))?;
    if !matches!(url.scheme(), "https" | "http")
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(format!(
            "{name}: the URL must be http(s) without user information"
        ));
    }
    Ok((probe, url))
}

impl RunArgs {
    pub fn settings(&self) -> Settings {
        Settings {
            namespaces: self.namespaces.clone(),
            default_interval: self.default_interval,
            default_max_age: self.default_max_age,
            concurrency: self.concurrency,
            test_interval: self.test_interval,
            denied_metadata_prefixes: self.denied_metadata_prefixes.clone(),
            restart_min_interval: self.restart_min_interval,
            restart_retry: self.restart_retry,
            discover_consumers: self.discover_consumers,
        }
    }
}

fn parse_allowed_origin(text: &str) -> Result<String, String> {
    crate::shell::platform::Origin::parse(text).map(|_| text.to_owned())
}

fn parse_restart_retry(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text).map_err(|e| e.to_string())? {
        d if d.is_zero() => Err("must be above zero".into()),
        d => Ok(d),
    }
}

fn parse_default_max_age(text: &str) -> Result<Duration, String> {
    crate::domain::spec::parse_rotation_duration("maxAge", text, crate::domain::spec::MIN_INTERVAL)
        .map_err(|e| e.to_string())
}

fn parse_default_interval(text: &str) -> Result<Duration, String> {
    crate::domain::spec::parse_interval(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn namespaces_repeat() {
        let cli = Cli::parse_from([
            "mxcred-operator",
            "run",
            "--namespace",
            "a",
            "--namespace",
            "b",
        ]);
        let Command::Run(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.namespaces, ["a", "b"]);
        assert_eq!(args.default_interval, Duration::from_secs(3600));
        assert_eq!(args.default_max_age, None);
        assert_eq!(
            args.platform.config().allowed_hosts,
            PlatformConfig::default_allowed_hosts()
        );
        assert_eq!(args.platform.config().qps.get(), 5);
    }

    #[test]
    fn only_run_offers_the_operator_wide_rate_limit() {
        let run = Cli::try_parse_from(["mxcred-operator", "run", "--platform-qps", "2"]);
        assert!(run.is_ok());
        let verify = Cli::try_parse_from([
            "mxcred-operator",
            "verify",
            "--token-env",
            "T",
            "--platform-qps",
            "2",
        ]);
        assert!(verify.is_err(), "verify sends one request: no rate limit");
    }

    #[test]
    fn every_flag_has_a_description() {
        for sub in Cli::command().get_subcommands() {
            for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
                assert!(
                    arg.get_help().is_some(),
                    "{} --{} has no help text",
                    sub.get_name(),
                    arg.get_id()
                );
            }
        }
    }

    #[test]
    fn probe_urls() {
        let cli = Cli::parse_from([
            "mxcred-operator",
            "run",
            "--probe-url",
            "DeployApps=http://127.0.0.1:1/api/v4/apps",
            "--allow-http",
        ]);
        let Command::Run(args) = cli.command else {
            panic!()
        };
        let config = args.platform.config();
        assert_eq!(config.probe_urls[&NamedProbe::DeployApps].port(), Some(1));
        assert!(parse_probe_url("Nope=https://x").is_err());
        assert!(parse_probe_url("DeployApps=https://u:p@x").is_err());
        assert!(parse_probe_url("DeployApps=file:///x").is_err());
    }
}
