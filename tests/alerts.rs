//! The chart's alerts, unit-tested with promtool: tests/prometheus/rules.yaml is what the chart
//! renders (`make rules` writes it), and each `*.test.yaml` beside it runs as
//! `promtool test rules FILE` from that folder.

use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn promtool() -> Command {
    let found = Command::new("sh")
        .args(["-c", "command -v promtool"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "promtool is missing: `make test` installs it (hack/deps.sh), or apt-get install prometheus"
    );
    Command::new("promtool")
}

#[test]
fn the_committed_rules_are_what_the_chart_renders() {
    let out = Command::new(format!("{ROOT}/hack/rules.sh"))
        .output()
        .expect("run hack/rules.sh");
    assert!(
        out.status.success(),
        "hack/rules.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let committed = std::fs::read(format!("{ROOT}/tests/prometheus/rules.yaml")).unwrap();
    assert!(
        out.stdout == committed,
        "tests/prometheus/rules.yaml is stale: run `make rules` and commit it"
    );
}

#[test]
fn every_alert_passes_its_promtool_tests() {
    let dir = Path::new(ROOT).join("tests/prometheus");
    let out = promtool()
        .args(["check", "rules", "rules.yaml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let rules = std::fs::read_to_string(dir.join("rules.yaml")).unwrap();
    let mut tested = vec![];
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if !name.ends_with(".test.yaml") {
            continue;
        }
        let out = promtool()
            .args(["test", "rules", &name])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool test rules {name}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        tested.push(std::fs::read_to_string(dir.join(&name)).unwrap());
    }
    // Every alert has tests that expect it firing and tests that expect silence.
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        let named = format!("alertname: {alert}");
        let cases: String = tested
            .iter()
            .filter(|t| t.contains(&named))
            .cloned()
            .collect();
        assert!(cases.contains("exp_alerts: []"), "{alert}: no silent case");
        assert!(cases.contains("exp_labels"), "{alert}: no firing case");
    }
}
