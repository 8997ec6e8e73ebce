//! The classification of every answer the simulator gives, read over HTTP the way the operator
//! reads it (the body bounded to `classify::MAX_BODY`).

use mendix_simulator::{Simulator, State};
use mxcred_operator::domain::classify::{Answer, MAX_BODY, Outcome, Reason, classify};
use mxcred_operator::domain::probe::NamedProbe;
use std::time::{Duration, SystemTime};

const PAT: &str = "pat-for-classification";
const USER: &str = "bot@example.com";
const KEY: &str = "key-for-classification";

/// Requests `probe` with the test credential and classifies the answer; `None` when the
/// connection closed without one.
async fn check(sim: &Simulator, probe: NamedProbe, state: State) -> Option<Outcome> {
    sim.set(PAT, state.clone());
    sim.set(&format!("{USER}:{KEY}"), state);
    let (_, url) = sim
        .probe_urls()
        .into_iter()
        .find(|(name, _)| name == probe.name())
        .unwrap();
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let request = match probe {
        NamedProbe::DeployV1Apps => client
            .get(&url)
            .header("Mendix-Username", USER)
            .header("Mendix-ApiKey", KEY),
        _ => client
            .get(&url)
            .header("Authorization", format!("MxToken {PAT}")),
    };
    let mut response = request.send().await.ok()?;
    let mut body = Vec::new();
    while body.len() < MAX_BODY {
        match response.chunk().await.unwrap() {
            Some(chunk) => body.extend_from_slice(&chunk),
            None => break,
        }
    }
    let answer = Answer {
        status: response.status().as_u16(),
        headers: response.headers(),
        body: &body,
    };
    let outcome = classify(Some(probe), "127.0.0.1", &answer, SystemTime::now());
    assert!(!outcome.message.contains(PAT), "{outcome:?}");
    assert!(!outcome.message.contains(KEY), "{outcome:?}");
    Some(outcome)
}

async fn reason(sim: &Simulator, probe: NamedProbe, state: State) -> Reason {
    check(sim, probe, state).await.expect("an answer").reason
}

#[tokio::test]
async fn every_state_on_every_probe() {
    let sim = Simulator::start().await;
    for probe in NamedProbe::ALL {
        let deactivated = match probe {
            // Only Deploy v4 documents an answer for a deactivated user.
            NamedProbe::DeployApps => Reason::UserDeactivated,
            _ => Reason::TokenRejected,
        };
        for (state, want) in [
            (State::Valid, Reason::Verified),
            (State::Slow(Duration::from_millis(50)), Reason::Verified),
            (State::Deleted, Reason::TokenRejected),
            (State::Deactivated, deactivated),
            (State::MissingScope, Reason::Forbidden),
            (State::ServerError, Reason::PlatformUnavailable),
            (State::Html, Reason::PlatformUnavailable),
            (State::Garbage, Reason::PlatformUnavailable),
        ] {
            assert_eq!(
                reason(&sim, probe, state.clone()).await,
                want,
                "{probe} {state:?}"
            );
        }
        let limited = check(
            &sim,
            probe,
            State::RateLimited {
                retry_after_secs: 90,
            },
        )
        .await
        .unwrap();
        assert_eq!(limited.reason, Reason::RateLimited, "{probe}");
        assert_eq!(
            limited.retry_after,
            Some(Duration::from_secs(90)),
            "{probe}"
        );
        assert!(check(&sim, probe, State::DropConnection).await.is_none());
    }
}
