//! Logging. Log lines carry resource names, reasons and errors, never a credential: credentials
//! are `SecretString`s and the target Secret is never formatted.

use clap::ValueEnum;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// Installs the global subscriber; `RUST_LOG` overrides the default level (info).
///
/// kube's client logs a refused request's whole answer at debug level, and an API server's
/// message may quote the object sent or others (an admission webhook, a policy engine): its
/// logs stop at info, whatever `RUST_LOG` says. kube's watcher logs a refused list or watch
/// (403) whole at warn level, and other watch errors whole at debug level, the API server's
/// message with them (it names the identity refused): its logs are off. The operator logs each
/// failure itself, by step, code and reason.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive("kube_client=info".parse().expect("a valid directive"))
        .add_directive(
            "kube_runtime::watcher=off"
                .parse()
                .expect("a valid directive"),
        );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}
