//! Issue 22: real servers. Inside a child PID namespace with its own /proc
//! (as `docker run` without `--pid=host` mounts it), Quarry knows it is
//! nested (the namespace's inode is not PROC_PID_INIT_INO), raises no
//! rootkit finding from the CPU of processes outside, and sweeps no PID
//! space unless asked. In the initial namespace, the PID sweep runs only
//! when the kernel's task counts disagree with the listing (a task hidden
//! from the listing by a kernel hider makes them disagree: proven in QEMU,
//! tests/vm).

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

/// `quarry scan --format json ARGS` in a new PID namespace with its own
/// /proc.
fn scan_nested(args: &[&str]) -> Value {
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--"])
        .arg(QUARRY)
        .args(["scan", "--format", "json"])
        .args(args)
        .env("QUARRY_CACHE_DIR", "")
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn in_a_container_outside_cpu_is_no_rootkit_and_no_pid_space_is_swept() {
    sandboxed_mounts!(
        "in_a_container_outside_cpu_is_no_rootkit_and_no_pid_space_is_swept",
        false
    );
    // Both CPUs busy outside the namespace the scan runs in.
    let _a = start(Command::new(burner()));
    let _b = start(Command::new(burner()));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let s = scan_nested(&["--only", "cpu,hidden"]);
    let findings = s["findings"].as_array().unwrap();
    assert!(
        !findings
            .iter()
            .any(|f| f["rule"].as_str().unwrap_or("").starts_with("hidden.")),
        "{findings:#?}"
    );
    let limits = s["limitations"].to_string();
    assert!(limits.contains("inside a child PID namespace"), "{limits}");
    let c = &s["census"];
    assert_eq!(c["probed"], false, "{c:#}");
    assert!(
        c["sweep"].as_str().unwrap().contains("child PID namespace"),
        "{c:#}"
    );
    assert!(c["task_counts"].is_null(), "{c:#}");
}

#[test]
fn the_pid_sweep_runs_when_the_kernels_counts_disagree() {
    sandboxed_mounts!("the_pid_sweep_runs_when_the_kernels_counts_disagree", false);
    // A quiet machine: the counts agree, nothing is swept.
    let s = scan(&["--only", "hidden", "--interval", "0.3"]);
    let c = &s.json["census"];
    let counts = &c["task_counts"];
    assert!(counts.is_object(), "{c:#}");
    if counts["disagreement"].is_null() {
        assert_eq!(c["probed"], false, "{c:#}");
        assert!(
            c["sweep"].as_str().unwrap().starts_with("not needed"),
            "{c:#}"
        );
    } else {
        // Something created tasks during the listing: then it is swept.
        assert_eq!(c["probed"], true, "{c:#}");
    }
}
