//! A test binary that dies leaves nothing behind: the control plane it started, the processes
//! it recorded in the control plane's directory, and the directory itself go when it goes,
//! however it ends (here: SIGKILL, so no destructor runs).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn alive(pid: u32) -> bool {
    // A zombie has exited; only its parent has yet to reap it.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.split_whitespace().nth(2) != Some("Z"))
}

fn pid_in(dir: &Path, name: &str) -> u32 {
    std::fs::read_to_string(dir.join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .trim()
        .parse()
        .unwrap()
}

fn spawn(program: &str, args: &[&str]) -> Child {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

#[test]
fn a_killed_test_binary_leaves_no_process_and_no_directory() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("cp");
    // Stands for a test binary.
    let mut binary = spawn("sleep", &["600"]);
    let status = Command::new(format!("{ROOT}/hack/controlplane.sh"))
        .arg("start")
        .arg(&dir)
        .args(["--watch-pid", &binary.id().to_string()])
        .env("MXCRED_NO_BUILD", "1")
        .env_remove("MXCRED_KEEP_TEST_DIR")
        .status()
        .unwrap();
    assert!(
        status.success(),
        "the control plane did not start: `make controlplane` builds it, or set KUBEBUILDER_ASSETS"
    );
    // Stands for an operator the test binary started and recorded, as tests/common does.
    let mut operator = spawn("sleep", &["600"]);
    std::fs::write(dir.join("operator-x-0.pid"), operator.id().to_string()).unwrap();
    let pids = [
        pid_in(&dir, "etcd.pid"),
        pid_in(&dir, "kube-apiserver.pid"),
        pid_in(&dir, "kube-controller-manager.pid"),
    ];

    binary.kill().unwrap();
    binary.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while dir.exists() || pids.iter().any(|&p| alive(p)) || alive(operator.id()) {
        if Instant::now() > deadline {
            let _ = operator.kill();
            let _ = operator.wait();
            panic!(
                "20 s after the test binary died: directory exists {}, processes alive {:?}, \
                 operator alive {}",
                dir.exists(),
                pids.map(alive),
                alive(operator.id())
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Killed by the watcher: reap it.
    operator.wait().unwrap();
}
