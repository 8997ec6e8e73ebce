//! `mxcred-operator verify` against the platform simulator: output line and exit code.

use mendix_simulator::{Simulator, State};
use std::process::Command;

async fn verify(sim: &Simulator, env: &[(&str, &str)], args: &[&str]) -> (String, i32) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mxcred-operator"));
    cmd.arg("verify")
        .args(["--allowed-host", "127.0.0.1", "--allow-http"]);
    for (probe, url) in sim.probe_urls() {
        cmd.args(["--probe-url", &format!("{probe}={url}")]);
    }
    cmd.args(args).envs(env.iter().copied());
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stdout.lines().count(), 1, "one line: {stdout:?} {stderr:?}");
    for (_, secret) in env {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} printed: {stdout} {stderr}"
        );
    }
    (stdout.trim().to_owned(), out.status.code().unwrap())
}

#[tokio::test]
async fn verify_prints_the_verdict_and_exits_accordingly() {
    let sim = Simulator::start().await;
    sim.set("pat-ok-0001", State::Valid);
    sim.set("pat-gone-0002", State::Deleted);
    sim.set("pat-user-0003", State::Deactivated);
    sim.set("pat-down-0004", State::ServerError);
    sim.set("ci@example.com:key-0005", State::Valid);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "pat-ok-0001\n").unwrap();
    let file = file.to_str().unwrap();
    // The simulator itself under a host name that is not allowed.
    let outside = sim.base_url().replace("127.0.0.1", "localhost") + "/api/v4/apps";

    for (env, args, want, code) in [
        (vec![], vec!["--token-file", file], "True Verified: ", 0),
        (
            vec![("T", "pat-gone-0002")],
            vec!["--token-env", "T"],
            "False TokenRejected: ",
            1,
        ),
        (
            vec![("T", "pat-user-0003")],
            vec!["--token-env", "T"],
            "False UserDeactivated: ",
            1,
        ),
        (
            vec![("T", "pat-down-0004")],
            vec!["--token-env", "T"],
            "Unknown PlatformUnavailable: ",
            2,
        ),
        (
            vec![("U", "ci@example.com"), ("K", "key-0005")],
            vec!["--username-env", "U", "--api-key-env", "K"],
            "True Verified: ",
            0,
        ),
        (
            vec![("T", "bad token")],
            vec!["--token-env", "T"],
            "Unknown InvalidInput: the token contains",
            2,
        ),
        (
            vec![],
            vec!["--token-env", "UNSET_VAR_0"],
            "Unknown InvalidInput: the environment variable named by the --token-env option is not set",
            2,
        ),
        (
            vec![("T", "pat-ok-0001")],
            vec!["--token-env", "T", "--probe", &outside],
            "Unknown EndpointNotAllowed: ",
            2,
        ),
    ] {
        let (line, status) = verify(&sim, &env, &args).await;
        assert!(line.starts_with(want), "{args:?}: {line}");
        assert_eq!(status, code, "{args:?}: {line}");
    }
    assert_eq!(
        sim.requests("pat-ok-0001"),
        1,
        "the URL probe outside the allow-list was not called"
    );

    // A token pasted where the variable's name belongs, or as a stray argument, is not echoed.
    for args in [
        vec!["--token-env", "mx-PASTED-token-99"],
        vec!["mx-PASTED-token-99"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_mxcred-operator"))
            .arg("verify")
            .args(&args)
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(2));
        assert!(!all.contains("PASTED"), "{all}");
    }
}
