//! Command line: `run`, `crd`. Every `run` flag is also an environment variable `MXCRED_...`.

use crate::controller::Settings;
use crate::telemetry::LogFormat;
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
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
    /// Print the CustomResourceDefinition as YAML.
    Crd,
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
    /// Resources reconciled at once.
    #[arg(long, env = "MXCRED_CONCURRENCY", default_value_t = 8)]
    pub concurrency: u16,
    #[arg(long, env = "MXCRED_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
}

impl RunArgs {
    pub fn settings(&self) -> Settings {
        Settings {
            namespaces: self.namespaces.clone(),
            default_interval: self.default_interval,
            concurrency: self.concurrency,
        }
    }
}

fn parse_default_interval(text: &str) -> Result<Duration, String> {
    crate::spec::parse_interval(text).map_err(|e| e.to_string())
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
    }
}
