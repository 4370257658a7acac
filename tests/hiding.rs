//! Issue 3 scenarios: processes hidden by a bind mount over /proc/PID and by
//! an ld.so.preload readdir hider; a storm of short-lived processes gives no
//! false "hidden" report; fixture trees cover views this machine cannot fake.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// PIDs that `ps` (dynamically linked, like an administrator's) lists.
fn ps_pids() -> Vec<i32> {
    let out = Command::new("ps")
        .args(["-e", "-o", "pid="])
        .output()
        .expect("ps");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

fn bind(src: &Path, dst: &Path) -> MountGuard {
    rustix::mount::mount_bind(src, dst).expect("bind mount");
    MountGuard(dst.to_path_buf())
}

#[test]
fn bind_mount_over_proc_pid_is_seen_through() {
    sandboxed_mounts!("bind_mount_over_proc_pid_is_seen_through", false);
    let _f = install_burner("/tmp/quarry-bindhidden");
    // It talks to a fake pool: its socket must be explained by the recovered
    // process, not reported as an ownerless connection.
    let pool = std::net::TcpListener::bind("127.0.0.1:3334").expect("port 3334 free");
    let mut cmd = Command::new("/tmp/quarry-bindhidden");
    cmd.args(["--connect", "3334"]);
    let m = start(cmd);
    let _conn = pool.accept().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let proc_dir = PathBuf::from(format!("/proc/{}", m.pid));
    let _mount = bind(empty.path(), &proc_dir);
    assert!(
        !ps_pids().contains(&m.pid),
        "ps still shows the hidden PID: the trick failed"
    );

    let s = scan(&[]);
    let f = s
        .findings()
        .iter()
        .find(|f| f["rule"] == "hidden.process" && f["subject"]["pid"] == m.pid)
        .unwrap_or_else(|| panic!("not reported hidden: {:#}", s.json["findings"]));
    assert_eq!(f["severity"], "critical");
    assert_eq!(f["subject"]["name"], "quarry-bindhidd");
    assert_eq!(f["subject"]["path"], "/tmp/quarry-bindhidden");
    let ev = f["evidence"].to_string();
    assert!(
        ev.contains(&format!("/proc/{}", m.pid)),
        "no mountinfo evidence: {ev}"
    );
    assert!(ev.contains("private procfs"), "{ev}");
    // Its CPU is attributed to it (recovered) or shows as unexplained.
    let acc = &s.json["cpu_accounting"];
    let recovered = acc["recovered_percent"].as_f64().unwrap();
    let unexplained = acc["unexplained_percent"].as_f64().unwrap();
    assert!(
        recovered + unexplained > 30.0,
        "hidden CPU not visible: {acc:#}"
    );
    assert!(ev.contains("% of one CPU"), "{ev}");
    // It is attributed to the recovered process, so no "hidden CPU" alarm.
    assert!(recovered > 30.0, "{acc:#}");
    assert!(
        !s.findings().iter().any(|f| f["rule"] == "hidden.cpu"),
        "{:#}",
        s.json["findings"]
    );
    // Not double-reported as a plain miner finding, nor as an ownerless socket.
    assert!(s.miner(m.pid).is_none());
    assert!(
        !s.findings().iter().any(|f| f["rule"] == "hidden.socket"),
        "{:#}",
        s.json["findings"]
    );
    assert_eq!(s.code, 1);
}

#[test]
fn ld_so_preload_hider_is_reported_and_cannot_hide_from_quarry() {
    sandboxed!("ld_so_preload_hider_is_reported_and_cannot_hide_from_quarry");
    let libdir = PathGuard("/usr/local/lib/quarry-test-hider".into());
    std::fs::create_dir_all(&libdir.0).unwrap();
    let lib = libdir.0.join("libsystem.so");
    build_hider(&lib, "minerd");
    let _file = install_burner("/tmp/minerd");
    let m = start(Command::new("/tmp/minerd"));
    let _preload = PreloadGuard::save();
    std::fs::write("/etc/ld.so.preload", format!("{}\n", lib.display())).unwrap();
    assert!(
        !ps_pids().contains(&m.pid),
        "the hider does not hide from ps"
    );

    let s = scan(&[]);
    // Quarry is static: the hider has no effect on it.
    assert!(
        s.malicious_pids().contains(&(m.pid as i64)),
        "{:#}",
        s.json["findings"]
    );
    let f = s
        .findings()
        .iter()
        .find(|f| f["rule"] == "rootkit.preload")
        .unwrap_or_else(|| panic!("no preload finding: {:#}", s.json["findings"]));
    assert_eq!(f["severity"], "critical");
    assert_eq!(f["subject"]["path"], lib.display().to_string());
    let ev = f["evidence"].to_string();
    assert!(ev.contains("readdir") && ev.contains("readdir64"), "{ev}");
    assert!(
        ev.contains(&format!("PID {} minerd", m.pid)),
        "hidden target not named: {ev}"
    );
}

#[test]
fn storm_of_short_lived_processes_and_threads_gives_no_hidden_finding() {
    sandboxed_mounts!(
        "storm_of_short_lived_processes_and_threads_gives_no_hidden_finding",
        false
    );
    let mut cmd = Command::new(burner());
    cmd.args(["--fork-storm", "20"]);
    let _storm = start(cmd);
    let mut cmd = Command::new(burner());
    cmd.args(["--thread-storm", "16"]);
    let _threads = start(cmd);
    for i in 0..10 {
        // Every other scan asks the PID allocator too (--deep): PIDs the
        // storm takes and frees meanwhile must not look hidden.
        let deep: &[&str] = if i % 2 == 1 { &["--deep"] } else { &[] };
        let s = scan(&[&["--interval", "0.5", "--only", "hidden"], deep].concat());
        let bad: Vec<_> = s
            .findings()
            .iter()
            .filter(|f| f["rule"].as_str().unwrap().starts_with("hidden."))
            .collect();
        assert!(
            bad.is_empty(),
            "false hidden finding under a fork storm: {bad:#?}"
        );
        // The PID space is swept unless the kernel's counts vouched for the
        // listing (nothing created while it was read, the counts agreeing):
        // a storm makes that rare, not impossible.
        let c = &s.json["census"];
        assert!(
            c["probed"].as_bool().unwrap()
                || c["sweep"].as_str().unwrap().starts_with("not needed")
                    && c["task_counts"]["created"] == 0,
            "{c:#}"
        );
        if i % 2 == 1 {
            let a = &s.json["census"]["allocator"];
            assert!(
                a["probed"].as_u64().unwrap_or(0) > 1000 || a["not_applicable"].is_string(),
                "{a:#}"
            );
        }
    }
}

/// Loads tests/c/bpfload.c in a mode; `None` when the kernel refuses the
/// program (lockdown refuses bpf_probe_write_user; a kernel without BPF).
fn bpf_loader(mode: &str) -> Option<ProcGuard> {
    let prog = compile("bpfload", &[]);
    let probe = Command::new(&prog)
        .arg(mode)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    // A refused program exits at once; a loaded one waits.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut probe = probe;
    if let Ok(Some(_)) = probe.try_wait() {
        let out = probe.wait_with_output().unwrap();
        eprintln!(
            "SKIPPED bpfload {mode}: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .next()
                .unwrap_or("")
        );
        return None;
    }
    let _ = probe.kill();
    let _ = probe.wait();
    let mut cmd = Command::new(&prog);
    cmd.arg(mode);
    Some(start(cmd))
}

#[test]
fn bpf_program_of_a_tracer_is_counted_not_reported() {
    sandboxed_mounts!("bpf_program_of_a_tracer_is_counted_not_reported", false);
    let Some(_p) = bpf_loader("benign") else {
        return;
    };
    let s = scan(&["--interval", "0.3", "--only", "hidden"]);
    assert!(
        s.json["census"]["bpf_programs"].as_u64().unwrap_or(0) >= 1,
        "{:#}",
        s.json["census"]
    );
    assert!(
        !s.findings().iter().any(|f| f["rule"] == "kernel.hook"),
        "{:#}",
        s.json["findings"]
    );
}

#[test]
fn bpf_program_writing_user_memory_is_critical_and_names_its_loader() {
    sandboxed_mounts!(
        "bpf_program_writing_user_memory_is_critical_and_names_its_loader",
        false
    );
    let Some(p) = bpf_loader("pwu") else {
        return; // this kernel refuses it (lockdown): the QEMU test covers it
    };
    let s = scan(&["--interval", "0.3", "--only", "hidden"]);
    let f = s
        .findings()
        .iter()
        .find(|f| f["rule"] == "kernel.hook")
        .unwrap_or_else(|| panic!("no kernel.hook: {:#}", s.json["findings"]));
    assert_eq!(f["severity"], "critical");
    assert!(f["title"]
        .as_str()
        .unwrap()
        .contains("bpf_probe_write_user"));
    assert_eq!(f["subject"]["pid"], p.pid);
    assert_eq!(s.code, 1);
}

/// A minimal fixture of a Linux root with processes 1 and 100.
fn fixture() -> tempfile::TempDir {
    let d = base_fixture();
    let r = d.path();
    put(
        r,
        "proc/self/mountinfo",
        "30 1 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
    );
    for (pid, name, ppid) in [(1, "systemd", 0), (100, "sshd", 1)] {
        put(
            r,
            &format!("proc/{pid}/stat"),
            &format!("{pid} ({name}) S {ppid} {pid} {pid} 0 -1 4194560 0 0 0 0 10 5 0 0 20 0 1 0 100 0 0\n"),
        );
        put(
            r,
            &format!("proc/{pid}/cmdline"),
            &format!("/usr/sbin/{name}\0"),
        );
        put(
            r,
            &format!("proc/{pid}/status"),
            &format!("Name:\t{name}\nTgid:\t{pid}\n"),
        );
        put(r, &format!("proc/{pid}/task/{pid}/children"), "");
    }
    put(r, "etc/passwd", "root:x:0:0:root:/root:/bin/bash\n");
    d
}

#[test]
fn fixture_cgroup_lists_a_pid_the_listing_omits() {
    let d = fixture();
    let r = d.path();
    put(r, "sys/fs/cgroup/cgroup.procs", "1\n");
    put(
        r,
        "sys/fs/cgroup/system.slice/ssh.service/cgroup.procs",
        "100\n4242\n",
    );
    put(r, "proc/1/task/1/children", "100 4242");
    let s = scan(&["--root", r.to_str().unwrap(), "--interval", "0"]);
    let f = s
        .findings()
        .iter()
        .find(|f| f["rule"] == "hidden.process")
        .unwrap_or_else(|| panic!("{:#}", s.json["findings"]));
    assert_eq!(f["subject"]["pid"], 4242);
    let seen = f["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == "seen by")
        .unwrap();
    let seen = seen["value"].as_str().unwrap();
    assert!(
        seen.contains("cgroup") && seen.contains("children"),
        "{seen}"
    );
    assert!(f["evidence"]
        .to_string()
        .contains("ssh.service/cgroup.procs"));
    assert_eq!(s.code, 1);
}

#[test]
fn fixture_clean_gives_no_hidden_finding() {
    let d = fixture();
    let r = d.path();
    put(r, "sys/fs/cgroup/cgroup.procs", "1\n100\n");
    put(r, "proc/1/task/1/children", "100");
    let s = scan(&["--root", r.to_str().unwrap(), "--interval", "0"]);
    assert!(s.findings().is_empty(), "{:#}", s.json["findings"]);
    assert_eq!(s.code, 0);
}

#[test]
fn fixture_bind_mount_line_is_reported() {
    let d = fixture();
    let r = d.path();
    put(r, "sys/fs/cgroup/cgroup.procs", "1\n100\n");
    // PID 100's /proc entry is covered: its stat cannot be read.
    std::fs::remove_file(r.join("proc/100/stat")).unwrap();
    put(
        r,
        "proc/self/mountinfo",
        "30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n412 25 0:5 /tmp/empty /proc/100 rw,relatime - tmpfs tmpfs rw\n",
    );
    let s = scan(&["--root", r.to_str().unwrap(), "--interval", "0"]);
    let f = s
        .findings()
        .iter()
        .find(|f| f["rule"] == "hidden.process" && f["subject"]["pid"] == 100)
        .unwrap_or_else(|| panic!("{:#}", s.json["findings"]));
    assert!(f["evidence"].to_string().contains("/tmp/empty /proc/100"));
}

#[test]
fn fixture_connection_nobody_owns() {
    let d = fixture();
    let r = d.path();
    put(r, "sys/fs/cgroup/cgroup.procs", "1\n100\n");
    put(r, "proc/1/task/1/children", "100");
    put(
        r,
        "proc/net/tcp",
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100000A:A1B2 0A0A0A0A:0D05 01 00000000:00000000 00:00000000 00000000     0        0 777777 1 0000000000000000 20 4 30 10 -1\n",
    );
    let s = scan(&["--root", r.to_str().unwrap(), "--interval", "0"]);
    let f = s
        .findings()
        .iter()
        .find(|f| f["rule"] == "hidden.socket")
        .unwrap_or_else(|| panic!("{:#}", s.json["findings"]));
    assert!(
        f["title"].as_str().unwrap().contains("10.10.10.10:3333"),
        "{f:#}"
    );
    assert_eq!(s.json["census"]["orphan_sockets"], 1);
}

/// Issue 9: LD_LIBRARY_PATH into the process user's own cargo build tree
/// under /tmp (what `cargo build` and `cargo test` set) is not a finding; the
/// same variable into a bare folder in /tmp still is.
#[test]
fn cargo_build_tree_library_path_is_not_a_finding() {
    sandboxed!("cargo_build_tree_library_path_is_not_a_finding");
    std::fs::create_dir_all("/tmp/proj/target/release/deps").unwrap();
    std::fs::write("/tmp/proj/Cargo.toml", "[package]\nname = \"proj\"\n").unwrap();
    std::fs::create_dir_all("/tmp/evil").unwrap();
    let spawn = |lib: &str| {
        Command::new("sleep")
            .arg("30")
            .env("LD_LIBRARY_PATH", lib)
            .spawn()
            .unwrap()
    };
    let mut build = spawn("/tmp/proj/target/release/deps:/tmp/proj/target/release:/usr/lib");
    let mut evil = spawn("/tmp/evil");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let s = scan(&["--only", "preload", "--interval", "0"]);
    let env: Vec<&serde_json::Value> = s
        .findings()
        .iter()
        .filter(|f| f["rule"] == "rootkit.preload-env")
        .collect();
    let _ = (build.kill(), evil.kill(), build.wait(), evil.wait());
    assert_eq!(env.len(), 1, "{:#}", s.json["findings"]);
    assert!(
        env[0]["title"].as_str().unwrap().contains("/tmp/evil"),
        "{:#}",
        env[0]
    );
}

/// Issue 9: a preload library an installed package owns, unchanged, that
/// overrides no hiding function and names no process (what snoopy and
/// libeatmydata are) is low with its package; the same bytes copied to a
/// place no package owns stay high.
#[test]
fn packaged_preload_library_is_low() {
    sandboxed!("packaged_preload_library_is_low");
    let lib = [
        "/lib/x86_64-linux-gnu/libdl.so.2",
        "/usr/lib/x86_64-linux-gnu/libdl.so.2",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists());
    let Some(lib) = lib else {
        eprintln!("SKIPPED: no libdl.so.2 from libc6 here");
        return;
    };
    std::fs::create_dir_all("/usr/local/lib/q").unwrap();
    std::fs::copy(lib, "/usr/local/lib/q/libdl-copy.so").unwrap();
    std::fs::write(
        "/etc/ld.so.preload",
        format!("{lib}\n/usr/local/lib/q/libdl-copy.so\n"),
    )
    .unwrap();
    let s = scan(&["--only", "preload", "--interval", "0"]);
    let f = |p: &str| {
        s.findings()
            .iter()
            .find(|f| f["rule"] == "rootkit.preload" && f["subject"]["path"] == p)
            .unwrap_or_else(|| panic!("no finding for {p}: {:#}", s.json["findings"]))
            .clone()
    };
    let packaged = f(lib);
    assert_eq!(packaged["severity"], "low", "{packaged:#}");
    assert!(
        packaged["title"].as_str().unwrap().contains("libc6"),
        "{packaged:#}"
    );
    assert_eq!(f("/usr/local/lib/q/libdl-copy.so")["severity"], "high");
}

/// Issue 9: the real snoopy from Debian (`.ci/run` installs it; its debconf
/// default leaves /etc/ld.so.preload alone) in /etc/ld.so.preload (an overlay
/// in the sandbox) is low, with its package, and nothing is medium or above.
#[test]
fn snoopy_from_debian_in_ld_so_preload_is_low() {
    sandboxed!("snoopy_from_debian_in_ld_so_preload_is_low");
    let lib = [
        "/lib/x86_64-linux-gnu/libsnoopy.so",
        "/usr/lib/x86_64-linux-gnu/libsnoopy.so",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists());
    let Some(lib) = lib else {
        eprintln!("SKIPPED: snoopy is not installed (apt-get install snoopy)");
        return;
    };
    std::fs::write("/etc/ld.so.preload", format!("{lib}\n")).unwrap();
    let s = scan(&["--only", "preload,miner", "--interval", "0.5"]);
    for f in s.findings() {
        assert!(
            !matches!(f["severity"].as_str(), Some("medium" | "high" | "critical")),
            "snoopy raised {f:#}"
        );
    }
    let f = s
        .findings()
        .iter()
        .find(|f| f["rule"] == "rootkit.preload")
        .unwrap_or_else(|| panic!("{:#}", s.json["findings"]));
    assert_eq!(f["severity"], "low", "{f:#}");
    assert!(f["title"].as_str().unwrap().contains("snoopy"), "{f:#}");
}

/// A cgroup v2 group of the test's own (removed on drop, its processes moved
/// back to the root first), as systemd makes one per user.
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn make(name: &str) -> Option<TestCgroup> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let mount = info.lines().find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            post.starts_with("cgroup2 ")
                .then(|| pre.split(' ').nth(4).map(PathBuf::from))?
        })?;
        let dir = mount.join(name);
        std::fs::create_dir(&dir).ok()?;
        Some(TestCgroup(dir))
    }

    fn add(&self, pid: i32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).expect("join the cgroup");
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let root = self.0.parent().unwrap().join("cgroup.procs");
        for _ in 0..50 {
            if let Ok(members) = std::fs::read_to_string(self.0.join("cgroup.procs")) {
                for pid in members.split_whitespace() {
                    let _ = std::fs::write(&root, pid);
                }
            }
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

#[test]
fn a_reaped_fork_storm_is_booked_to_its_cgroup_not_to_a_rootkit() {
    sandboxed_mounts!(
        "a_reaped_fork_storm_is_booked_to_its_cgroup_not_to_a_rootkit",
        false
    );
    // Children that burn 5 ms each and are reaped by the kernel (SIGCHLD
    // ignored): their time reaches no parent's counters, about one CPU.
    let cg = TestCgroup::make("quarry-test-storm.slice");
    let mut cmd = Command::new(burner());
    cmd.args(["--reaped-storm", "5"]);
    std::os::unix::process::CommandExt::uid(&mut cmd, 4242);
    let storm = start(cmd);
    if let Some(cg) = &cg {
        cg.add(storm.pid);
    }
    let want_cgroup = if cg.is_some() {
        "/quarry-test-storm.slice"
    } else {
        "/"
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut booked = 0;
    for _ in 0..3 {
        let s = scan(&["--only", "cpu,hidden"]);
        let hidden: Vec<_> = s
            .findings()
            .iter()
            .filter(|f| f["rule"].as_str().unwrap().starts_with("hidden."))
            .collect();
        assert!(hidden.is_empty(), "a fork storm called hidden: {hidden:#?}");
        // No rootkit pointed at: the PID allocator is not asked.
        assert!(
            s.json["census"]["allocator"].is_null(),
            "{:#}",
            s.json["census"]
        );
        let acc = &s.json["cpu_accounting"];
        let Some(f) = s.findings().iter().find(|f| f["rule"] == "cpu.short-lived") else {
            eprintln!("no cpu.short-lived this time: {acc:#}");
            continue;
        };
        assert_eq!(f["subject"]["pid"], storm.pid, "{f:#}");
        assert!(f["title"].as_str().unwrap().contains(want_cgroup), "{f:#}");
        let booked_to = acc["short_lived"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["cgroup"] == want_cgroup)
            .unwrap_or_else(|| panic!("{acc:#}"));
        assert!(booked_to["percent"].as_f64().unwrap() >= 10.0, "{acc:#}");
        assert!(booked_to["new_tasks"].as_u64().unwrap() >= 1, "{acc:#}");
        // Swept for a hidden task behind the storm.
        assert!(
            s.json["census"]["probed"].as_bool().unwrap(),
            "{:#}",
            s.json["census"]
        );
        booked += 1;
    }
    assert!(
        booked >= 2,
        "the storm's CPU was booked in {booked} of 3 scans"
    );
}
