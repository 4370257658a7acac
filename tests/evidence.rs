//! Issue 20: evidence that belongs to the process. Nobody but the process's
//! own user (or root) can write what decides Quarry's verdict on it, or turn
//! `fix` against another's programs:
//! - a miner config an unprivileged user leaves in /tmp beside busy root
//!   processes frames none of them, and `fix --yes` touches nothing;
//! - a miner in a container of its own (mount and PID namespace,
//!   pivot_root) is judged on its own files, and `fix` quarantines those,
//!   never the host's files of the same name;
//! - a forged `SSH_CONNECTION`, a user's shell copy named `java` and a
//!   syslog line anyone can send name no door;
//! - a process of Quarry's own executable running other code is judged.
//!
//! Every test runs as root in its own mount and PID namespace
//! (tests/common `sandboxed!`), and every `fix --yes` is scoped with
//! `--only` to the test's own processes and files.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A user that is not root and owns nothing on the machine.
const OTHER_UID: u32 = 4242;

/// A pool configuration as XMRig writes it.
fn pool_config(pool: &str) -> String {
    format!(
        r#"{{"autosave": true, "cpu": {{"enabled": true}}, "pools": [{{"url": "{pool}", "user": "4AdUndXHHZ6cfufTMvppY6JwXNouMBzSkbLYfpAV5Usx3skxNgYeYTRj5UzqtReoS44qo9mtmXCqY45DJ852K5Jv2684Rge", "pass": "x", "keepalive": true}}]}}"#
    )
}

fn sha(path: &str) -> String {
    quarry::collect::modules::sha256_hex(&std::fs::read(path).unwrap())
}

/// Alive and not stopped (a fix freezes a process before it kills it).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(") ")
                .map(|(_, r)| !r.starts_with('T') && !r.starts_with('Z'))
        })
        .unwrap_or(false)
}

fn dead_within(pid: i32, d: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < d {
        if !running(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Every evidence value of a finding, one per line.
fn evidence_text(f: &Value) -> String {
    f["evidence"]
        .as_array()
        .map(|e| {
            e.iter()
                .map(|e| format!("{}: {}", e["key"], e["value"]))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

#[test]
fn a_users_miner_config_in_tmp_frames_no_root_process() {
    sandboxed!("a_users_miner_config_in_tmp_frames_no_root_process");
    // Root's own busy programs, both working in /tmp: a daemon no package
    // installed and perl.
    let _b = install_burner("/usr/local/sbin/backupd");
    let backupd = start({
        let mut c = Command::new("/usr/local/sbin/backupd");
        c.current_dir("/tmp");
        c
    });
    let perl = start({
        let mut c = Command::new("sh");
        c.args(["-c", "echo ready $$; exec perl -e '1 while 1'"])
            .current_dir("/tmp");
        c
    });
    // Another user's file beside them.
    std::fs::write("/tmp/config.json", pool_config("pool.supportxmr.com:3333")).unwrap();
    std::os::unix::fs::chown("/tmp/config.json", Some(OTHER_UID), Some(OTHER_UID)).unwrap();
    std::fs::set_permissions("/tmp/config.json", std::fs::Permissions::from_mode(0o644)).unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let s = scan(&["--interval", "0.5"]);
    for pid in [backupd.pid, perl.pid] {
        assert!(
            !s.malicious_pids().contains(&(pid as i64)),
            "root's PID {pid} framed by a user's file: {:#}",
            s.json["findings"]
        );
        if let Some(f) = s.miner(pid) {
            let ids = s.signal_ids(pid);
            assert!(!ids.iter().any(|i| i == "miner-config"), "{f:#}");
        }
    }
    let planted = s
        .findings()
        .iter()
        .find(|f| f["rule"] == "miner.planted-config")
        .unwrap_or_else(|| panic!("the planted file is not reported: {:#}", s.json["findings"]));
    assert_eq!(
        planted["subject"]["path"], "/tmp/config.json",
        "{planted:#}"
    );
    assert!(
        planted["title"].as_str().unwrap().contains("uid 4242"),
        "{planted:#}"
    );
    assert!(
        evidence_text(planted).contains("pool.supportxmr.com:3333"),
        "{planted:#}"
    );

    // fix --yes, scoped to exactly what the file could frame: nothing moves.
    let before = (
        sha("/usr/local/sbin/backupd"),
        sha("/tmp/config.json"),
        std::fs::metadata("/tmp/config.json").unwrap().uid(),
    );
    // (The planted file itself is not in the scope: named with --only, it
    // would be quarantined, as the administrator asked.)
    let only = format!("{},{},/usr/local/sbin/backupd", backupd.pid, perl.pid);
    let (_, out) = fix(&["--yes", "--interval", "0.5", "--only", &only], &[]);
    assert!(!out.contains("killed PID"), "{out}");
    assert!(!out.contains("quarantined"), "{out}");
    std::thread::sleep(Duration::from_millis(300));
    for pid in [backupd.pid, perl.pid] {
        assert!(running(pid), "PID {pid} was stopped or killed:\n{out}");
    }
    let after = (
        sha("/usr/local/sbin/backupd"),
        sha("/tmp/config.json"),
        std::fs::metadata("/tmp/config.json").unwrap().uid(),
    );
    assert_eq!(before, after, "{out}");
}

const CTR: &str = "/tmp/quarry-ctr";

#[test]
fn a_containers_miner_is_judged_and_fixed_in_its_own_root() {
    sandboxed!("a_containers_miner_is_judged_and_fixed_in_its_own_root");
    // The container: a static miner imitation at /usr/local/bin/xmrig, its
    // config beside it and another named by `-c`.
    for d in ["usr/local/bin", "etc"] {
        std::fs::create_dir_all(Path::new(CTR).join(d)).unwrap();
    }
    let exe = format!("{CTR}/usr/local/bin/xmrig");
    std::fs::copy(static_burner(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let beside = format!("{CTR}/usr/local/bin/config.json");
    std::fs::write(&beside, pool_config("pool-beside.example.org:3333")).unwrap();
    let named = format!("{CTR}/etc/xmrig.json");
    std::fs::write(
        &named,
        pool_config("stratum+tcp://pool-named.example.org:5555"),
    )
    .unwrap();
    // Host files of the same names (in the sandbox's overlays): an
    // ordinary program and configs an old parser took for a miner's.
    std::fs::create_dir_all("/usr/local/bin").unwrap();
    std::fs::copy("/bin/true", "/usr/local/bin/xmrig").unwrap();
    let decoy = r#"{"name": "dashboard", "url": "http://localhost:8080", "user": "admin"}"#;
    std::fs::write("/usr/local/bin/config.json", decoy).unwrap();
    std::fs::write("/etc/xmrig.json", decoy).unwrap();
    let decoys = [
        "/usr/local/bin/xmrig",
        "/usr/local/bin/config.json",
        "/etc/xmrig.json",
    ];
    let before: Vec<String> = decoys.iter().map(|d| sha(d)).collect();

    let miner = start({
        let mut c = Command::new(compile("container", &[]));
        c.args([CTR, "/usr/local/bin/xmrig", "-c", "/etc/xmrig.json"]);
        c
    });
    std::thread::sleep(Duration::from_millis(300));
    let s = scan(&["--interval", "0.5"]);
    let f = s
        .miner(miner.pid)
        .unwrap_or_else(|| panic!("the container's miner is not reported: {:#}", s.json));
    assert_eq!(f["verdict"], "malicious", "{f:#}");
    let ev = evidence_text(f);
    // Its own configs, as it sees them and where they are on the host.
    assert!(ev.contains("pool-beside.example.org:3333"), "{ev}");
    assert!(ev.contains("pool-named.example.org:5555"), "{ev}");
    assert!(
        ev.contains(&exe),
        "no host location of its executable: {ev}"
    );
    assert!(!ev.contains("localhost:8080"), "a host file was read: {ev}");

    let (st, out) = fix(
        &[
            "--yes",
            "--interval",
            "0.5",
            "--only",
            &miner.pid.to_string(),
        ],
        &[],
    );
    assert!(st.success(), "{out}");
    assert!(dead_within(miner.pid, Duration::from_secs(5)), "{out}");
    // The container's files are quarantined; the host's are untouched.
    for p in [&exe, &beside, &named] {
        assert!(!Path::new(p).exists(), "{p} not quarantined:\n{out}");
    }
    let after: Vec<String> = decoys.iter().map(|d| sha(d)).collect();
    assert_eq!(before, after, "a host file changed:\n{out}");
}

/// Writes one wtmp login record (utmp(5), x86-64 and aarch64 layout).
fn wtmp_login(user: &str, host: &str, time: i64) -> Vec<u8> {
    let mut r = vec![0u8; 384];
    r[0..2].copy_from_slice(&7i16.to_le_bytes()); // USER_PROCESS
    r[4..8].copy_from_slice(&4321i32.to_le_bytes());
    r[8..13].copy_from_slice(b"pts/7");
    r[44..44 + user.len()].copy_from_slice(user.as_bytes());
    r[76..76 + host.len()].copy_from_slice(host.as_bytes());
    r[340..344].copy_from_slice(&(time as i32).to_le_bytes());
    r
}

/// A private, empty /var/log in the test's mount namespace.
fn private_var_log() {
    use rustix::mount::{mount, MountFlags};
    std::fs::create_dir_all("/var/log").unwrap();
    mount(
        "tmpfs",
        "/var/log",
        "tmpfs",
        MountFlags::empty(),
        Some(c"mode=755"),
    )
    .unwrap();
}

#[test]
fn forged_claims_name_no_door() {
    sandboxed!("forged_claims_name_no_door");
    private_var_log();
    // A line `logger -t 'sshd[4321]'` puts in auth.log: any user can send it.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let stamp = String::from_utf8(
        Command::new("date")
            .args([
                "-u",
                "-d",
                &format!("@{}", now - 5),
                "+%Y-%m-%dT%H:%M:%S.000000+00:00",
            ])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    std::fs::write(
        "/var/log/auth.log",
        format!(
            "{} box sshd[4321]: Accepted password for root from 203.0.113.77 port 50022 ssh2\n",
            stamp.trim()
        ),
    )
    .unwrap();
    // A user's miner and a copy of the shell named java, both the user's.
    std::fs::create_dir_all("/tmp/.u").unwrap();
    let _m = install_burner("/tmp/.u/kswapd0");
    std::fs::copy("/bin/sh", "/tmp/.u/java").unwrap();
    for p in ["/tmp/.u", "/tmp/.u/kswapd0", "/tmp/.u/java"] {
        std::os::unix::fs::chown(p, Some(OTHER_UID), Some(OTHER_UID)).unwrap();
    }
    let as_user = |args: &[&str]| {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=4242",
            "--regid=4242",
            "--clear-groups",
            "env",
            "-i",
            "SSH_CONNECTION=198.51.100.23 50000 10.0.0.1 22",
            "USER=root",
            "PATH=/usr/bin:/bin",
        ])
        .args(args);
        c
    };
    let java = start(as_user(&[
        "/tmp/.u/java",
        "-c",
        "/tmp/.u/kswapd0 & wait",
        "org.apache.catalina.startup.Bootstrap",
    ]));
    let orphan = start(as_user(&[
        "sh",
        "-c",
        "/tmp/.u/kswapd0 --name xmr-ssh & exit 0",
    ]));
    let _k = KillGuard(orphan.pid);
    std::thread::sleep(Duration::from_millis(300));

    let s = scan(&["--interval", "0.5"]);
    let origins = s.json["entry"]["origins"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for pid in [java.pid, orphan.pid] {
        let o = origins.iter().find(|o| o["pid"] == pid);
        let door = o.map(|o| o["door"].clone()).unwrap_or(Value::Null);
        let summary = door["summary"].as_str().unwrap_or("");
        assert_ne!(door["kind"], "java-app", "{door:#}");
        assert!(!summary.contains("Tomcat"), "{door:#}");
        assert!(!summary.contains("198.51.100.23"), "{door:#}");
        assert!(!summary.contains("as root"), "{door:#}");
        // What the environment claims is shown, labelled as a claim.
        let f = s
            .miner(pid)
            .unwrap_or_else(|| panic!("PID {pid}: {:#}", s.json));
        let ev = evidence_text(f);
        if ev.contains("SSH_CONNECTION") {
            assert!(ev.contains("claimed by its own environment"), "{ev}");
        }
        assert!(!ev.contains("came in through\": \"Tomcat"), "{ev}");
    }
    // The syslog line appears only as a claim.
    let tl = s.json["entry"]["timeline"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for e in tl.iter().filter(|e| e.to_string().contains("203.0.113.77")) {
        let what = e["what"].as_str().unwrap_or("");
        let source = e["source"].as_str().unwrap_or("");
        assert!(what.starts_with("claimed "), "{e:#}");
        assert!(
            source.contains("any user can send") && source.contains("unverified"),
            "{e:#}"
        );
    }
    let all = s.json.to_string();
    assert!(
        !all.contains("an SSH login as root from 198.51.100.23"),
        "{all}"
    );
}

#[test]
fn a_wtmp_record_verifies_what_the_environment_claims() {
    sandboxed!("a_wtmp_record_verifies_what_the_environment_claims");
    private_var_log();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    std::fs::write("/var/log/wtmp", wtmp_login("root", "203.0.113.7", now - 3)).unwrap();
    let _m = install_burner("/tmp/.x/kdevtmpfsi");
    let ssh = start({
        let mut c = Command::new("sh");
        c.args(["-c", "/tmp/.x/kdevtmpfsi --name xmr-ssh & exit 0"])
            .env_clear()
            .env("SSH_CONNECTION", "203.0.113.7 51234 10.0.0.5 22")
            .env("USER", "root")
            .env("PATH", "/usr/bin:/bin");
        c
    });
    let _k = KillGuard(ssh.pid);
    std::thread::sleep(Duration::from_millis(300));
    let s = scan(&["--interval", "0.5"]);
    let o = s.json["entry"]["origins"]
        .as_array()
        .and_then(|a| a.iter().find(|o| o["pid"] == ssh.pid).cloned())
        .unwrap_or_else(|| panic!("no origin: {:#}", s.json["entry"]));
    assert_eq!(o["door"]["kind"], "ssh", "{o:#}");
    let summary = o["door"]["summary"].as_str().unwrap();
    assert!(summary.contains("as root from 203.0.113.7"), "{o:#}");
    assert!(summary.contains("/var/log/wtmp"), "{o:#}");
}

#[test]
fn a_process_of_quarrys_own_executable_is_judged() {
    sandboxed!("a_process_of_quarrys_own_executable_is_judged");
    std::fs::create_dir_all("/root/.q").unwrap();
    std::fs::write(
        "/root/.q/c.json",
        pool_config("stratum+tcp://pool.hashvault.pro:443"),
    )
    .unwrap();
    // Quarry's own binary, its code replaced by a loop, holding a pool
    // config open: another process of the same executable.
    let p = start({
        let mut c = Command::new(compile("hijack", &[]));
        c.args(["/root/.q/c.json", QUARRY, "--version"]);
        c
    });
    std::thread::sleep(Duration::from_millis(300));
    let s = scan(&["--interval", "0.5"]);
    let f = s.miner(p.pid).unwrap_or_else(|| {
        panic!(
            "PID {} of Quarry's executable not judged: {:#}",
            p.pid, s.json
        )
    });
    let ids = s.signal_ids(p.pid);
    assert!(ids.iter().any(|i| i == "miner-config"), "{f:#}");
    assert_eq!(f["verdict"], "malicious", "{f:#}");
    // What Quarry's own rules put in its memory is not a match.
    assert!(!ids.iter().any(|i| i == "content-signature"), "{f:#}");
    // And the scanning process itself is never a finding.
    let me: Vec<&Value> = s
        .findings()
        .iter()
        .filter(|f| f["subject"]["path"].as_str() == Some(QUARRY) && f["subject"]["pid"] != p.pid)
        .collect();
    assert!(me.is_empty(), "{me:#?}");
}
