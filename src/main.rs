use clap::Parser;
use clap::error::ErrorKind;
use mxcred_operator::crds;
use mxcred_operator::shell::cli::{Cli, Command, RunArgs};
use mxcred_operator::shell::controller::{Role, Shared};
use mxcred_operator::shell::leader::{self, LeaseConfig};
use mxcred_operator::shell::metrics::Metrics;
use mxcred_operator::shell::platform::Platform;
use mxcred_operator::shell::verifier::Verifier;
use mxcred_operator::shell::{controller, proxy, server, telemetry, verify_cmd};
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    match parse().command {
        Command::Crd(args) => {
            let all = crds();
            let chosen: Vec<&String> = all
                .iter()
                .filter(|(file, _)| args.file.as_deref().is_none_or(|f| f == *file))
                .map(|(_, yaml)| yaml)
                .collect();
            if chosen.is_empty() {
                eprintln!("error: no CRD is stored under that file name");
                return Ok(ExitCode::from(2));
            }
            let documents: Vec<&str> = chosen.iter().map(|y| y.as_str()).collect();
            print!("{}", documents.join("---\n"));
        }
        Command::Reference(args) => {
            let pages = mxcred_operator::reference::references();
            let chosen: Vec<&String> = pages
                .iter()
                .filter(|(file, _)| args.file.as_deref().is_none_or(|f| f == file))
                .map(|(_, page)| page)
                .collect();
            if chosen.is_empty() {
                eprintln!("error: no reference page is stored under that file name");
                return Ok(ExitCode::from(2));
            }
            let pages: Vec<&str> = chosen.iter().map(|p| p.as_str()).collect();
            print!("{}", pages.join("\n"));
        }
        Command::Run(args) => run(args).await?,
        Command::Verify(args) => {
            let (line, code) = verify_cmd::run(&args).await;
            println!("{line}");
            return Ok(code);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Parses the command line. A usage error names its kind but does not repeat the offending
/// value: a token pasted where a variable's name belongs must not reach a CI log.
fn parse() -> Cli {
    Cli::try_parse().unwrap_or_else(|e| match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        kind => {
            eprintln!("error: {kind} (the value is not repeated here); see --help");
            std::process::exit(2)
        }
    })
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    telemetry::init_logging(args.log_format);
    let metrics = Arc::new(Metrics::default());
    let verifier = Arc::new(
        Verifier::new(
            Platform::new(args.platform.config(), metrics.clone())?,
            metrics.clone(),
            args.forced_check_cooldown,
        )
        .with_shared_floor(args.shared_interval_floor)
        .with_namespace_qps(args.platform.platform_namespace_qps),
    );
    let shared = Arc::new(Shared::new(metrics));
    let mut kube_config = kube::Config::infer().await?;
    kube_config.proxy_url =
        proxy::for_api_server(&kube_config.cluster_url, kube_config.proxy_url.take());
    let client = kube::Client::try_from(kube_config)?;
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(args.metrics_addr).await?;
    let http = tokio::spawn(server::serve(listener, shared.clone(), shutdown.clone()));
    tokio::spawn(cancel_on_signal(shutdown.clone(), shared.clone()));
    let settings = args.settings();
    let serve = |term: CancellationToken| {
        controller::run(
            client.clone(),
            settings.clone(),
            verifier.clone(),
            shared.clone(),
            term,
        )
    };
    if args.leader_elect {
        let lease = LeaseConfig {
            name: args.lease_name.clone(),
            namespace: args
                .lease_namespace
                .clone()
                .or_else(|| std::env::var("POD_NAMESPACE").ok())
                .unwrap_or_else(|| client.default_namespace().to_owned()),
            identity: LeaseConfig::identity_of_this_process(),
        };
        leader::run(client.clone(), lease, &shared, shutdown.clone(), serve).await?;
    } else {
        serve(shutdown.clone()).await;
    }
    shutdown.cancel();
    http.await??;
    info!("stopped");
    Ok(())
}

async fn cancel_on_signal(shutdown: CancellationToken, shared: Arc<Shared>) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    info!("shutting down");
    shared.set_role(Role::Stopping);
    shutdown.cancel();
    // Stopping waits for reconciles under way, the release of the Lease and the runtime's
    // blocking tasks, and each of these can wait on an API server or a platform that does not
    // answer. A thread of its own, outside the runtime, ends the process after the bound
    // whatever they do: within the 30 s Kubernetes grants a Pod before it kills it.
    std::thread::spawn(|| {
        std::thread::sleep(SHUTDOWN_BOUND);
        warn!(bound = ?SHUTDOWN_BOUND, "not stopped within the bound after the signal: exiting");
        std::process::exit(0);
    });
}

/// How long after SIGTERM (or SIGINT) the process may take to exit.
const SHUTDOWN_BOUND: std::time::Duration = std::time::Duration::from_secs(10);
