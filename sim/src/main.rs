//! `mendix-simulator [--listen ADDR] [--state CREDENTIAL=STATE]...`: serves the simulated
//! platform until killed, for demos. Prints one line, `listening on http://ADDR`.

use clap::Parser;
use mendix_simulator::{Simulator, State};
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    version,
    about = "A stand-in for the Mendix platform APIs, on loopback"
)]
struct Args {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// How a credential (a token, or `username:apikey`) behaves: valid, deleted, deactivated,
    /// missing-scope, rate-limited[:SECONDS], server-error, slow:DURATION, drop, html, garbage.
    /// Unknown credentials behave as deleted.
    #[arg(long = "state", value_name = "CREDENTIAL=STATE")]
    states: Vec<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("mendix-simulator: {message}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    // Parsed here rather than by clap, whose errors would echo the credential.
    let states = args
        .states
        .iter()
        .map(|arg| {
            let (credential, state) = arg
                .rsplit_once('=')
                .ok_or("--state takes CREDENTIAL=STATE")?;
            Ok((credential, state.parse::<State>()?))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let sim = Simulator::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    for (credential, state) in states {
        sim.set(credential, state);
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {}", sim.base_url())
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))?;
    drop(stdout);
    tokio::signal::ctrl_c()
        .await
        .map_err(|e| format!("cannot wait for Ctrl-C: {e}"))
}
