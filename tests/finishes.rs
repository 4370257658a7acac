//! Issue 21: a scan always finishes. A FUSE file system that stops
//! answering (tests/c/fusetrap.c, the raw /dev/fuse protocol) holds a miner's
//! executable, a private writable mapping of it no page of which was ever
//! read, its `-c` config and its working directory. Before Quarry knew who
//! serves a file, `scan` was stuck in state D on the first of them (killed at
//! 90 s; 1.06 s without the trap), `fix` printed no plan and `watch` went
//! blind. Here `scan`, `fix` and `watch` finish (or report) beside it, name
//! the trap, and no Quarry thread waits in state D.
//!
//! Every test runs as root in its own mount and PID namespace, and `fix
//! --yes` is scoped with `--only` to the test's own plain miner.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Where the trap is mounted (a private tmpfs in the sandbox).
const TRAP: &str = "/tmp/quarry-trap";

/// The unprivileged user who serves the trap and runs its miner.
const TRAP_UID: &str = "4242";

/// The FUSE server and the miner running from its mount.
struct Trap {
    server: ProcGuard,
    miner: ProcGuard,
    /// Stuck probes (they end when the server dies).
    _probes: Vec<Child>,
}

impl Trap {
    /// Mounts the trap, starts its miner (uid 4242, from the mount, its
    /// config named on its command line, its working directory there), then
    /// arms it: from now on the server answers nothing.
    fn set() -> Option<Trap> {
        if !std::path::Path::new("/dev/fuse").exists() {
            eprintln!("SKIPPED the FUSE trap: this kernel has no /dev/fuse");
            return None;
        }
        std::fs::create_dir_all(TRAP).unwrap();
        let mut srv = Command::new(compile("fusetrap", &[]));
        srv.args([TRAP, TRAP_UID]);
        let server = start(srv);
        let mut m = Command::new("setpriv");
        m.args([
            &format!("--reuid={TRAP_UID}"),
            &format!("--regid={TRAP_UID}"),
            "--clear-groups",
            &format!("{TRAP}/xmrig"),
            "-c",
            &format!("{TRAP}/config.json"),
        ])
        .current_dir(TRAP);
        let miner = start(m);
        kill(server.pid, rustix::process::Signal::USR1);
        // Proof that the trap holds: a lookup of a new name there waits.
        let probe = Command::new("stat")
            .arg(format!("{TRAP}/never-answered"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut probes = vec![probe];
        std::thread::sleep(Duration::from_secs(1));
        assert!(
            probes[0].try_wait().unwrap().is_none(),
            "the trap did not hold a lookup"
        );
        let _ = probes[0].kill();
        Some(Trap {
            server,
            miner,
            _probes: probes,
        })
    }

    /// Ends the server: everything waiting on the mount gets an error.
    fn release(&mut self) {
        kill(self.server.pid, rustix::process::Signal::KILL);
    }
}

impl Drop for Trap {
    fn drop(&mut self) {
        self.release();
    }
}

fn kill(pid: i32, sig: rustix::process::Signal) {
    let _ = rustix::process::kill_process(rustix::process::Pid::from_raw(pid).unwrap(), sig);
}

/// A plain miner beside the trap: a CPU burner named xmrig in a folder of
/// its own, with a stratum URL on its command line.
fn plain_miner(dir: &str) -> ProcGuard {
    std::fs::create_dir_all(dir).unwrap();
    let exe = format!("{dir}/xmrig");
    std::fs::copy(burner(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut c = Command::new(&exe);
    c.args([
        "-o",
        "stratum+tcp://127.0.0.1:3333",
        "-u",
        "wallet",
        "-p",
        "x",
    ]);
    start(c)
}

/// The longest time any task of `pid` was seen in state D, so far.
#[derive(Default)]
struct DWatch {
    since: std::collections::HashMap<String, Instant>,
    longest: Duration,
    worst: String,
}

impl DWatch {
    fn look(&mut self, pid: u32) {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return;
        };
        let mut now_d = std::collections::HashSet::new();
        for t in tasks.flatten() {
            let tid = t.file_name().to_string_lossy().into_owned();
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            let state = stat.rsplit(')').next().unwrap_or("").trim().chars().next();
            if state == Some('D') {
                let at = *self.since.entry(tid.clone()).or_insert_with(Instant::now);
                if at.elapsed() > self.longest {
                    self.longest = at.elapsed();
                    let wchan = std::fs::read_to_string(t.path().join("wchan")).unwrap_or_default();
                    let stack = std::fs::read_to_string(t.path().join("stack")).unwrap_or_default();
                    self.worst = format!("task {tid} in D at {wchan}\n{stack}");
                }
                now_d.insert(tid);
            }
        }
        self.since.retain(|t, _| now_d.contains(t));
    }
}

/// Runs a Quarry command to its end, watching its tasks' states; past
/// `deadline` the trap is released (so the command can end at all) and the
/// test fails with where Quarry waited.
fn run_beside(trap: &mut Trap, mut cmd: Command, deadline: Duration) -> (Output, Duration) {
    let t = Instant::now();
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    let mut d = DWatch::default();
    while !waiter.is_finished() {
        d.look(pid);
        if t.elapsed() > deadline {
            d.look(pid);
            trap.release();
            let out = waiter.join().unwrap();
            panic!(
                "quarry did not finish within {deadline:?} beside the trap; longest in state D: {:?}: {}\nstdout: {}\nstderr: {}",
                d.longest,
                d.worst,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = t.elapsed();
    assert!(
        d.longest < Duration::from_secs(2),
        "a Quarry task waited {:?} in state D: {}",
        d.longest,
        d.worst
    );
    (waiter.join().unwrap(), took)
}

#[test]
fn a_fuse_trap_holds_no_scan_and_no_fix() {
    sandboxed!("a_fuse_trap_holds_no_scan_and_no_fix");
    let Some(mut trap) = Trap::set() else {
        return;
    };
    let plain = plain_miner("/tmp/quarry-plain");

    // scan: finishes, finds the plain miner, names the trap.
    let mut cmd = command();
    cmd.args(["scan", "--format", "json"]);
    let (out, took) = run_beside(&mut trap, cmd, Duration::from_secs(60));
    eprintln!("scan beside the trap: {took:?}");
    let json: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    let findings = json["findings"].as_array().unwrap();
    let of = |pid: i32| {
        findings
            .iter()
            .filter(|f| f["subject"]["pid"] == pid)
            .collect::<Vec<_>>()
    };
    assert!(
        of(plain.pid).iter().any(|f| f["verdict"] == "malicious"),
        "the plain miner beside the trap: {:#?}",
        of(plain.pid)
    );
    let trapped = of(trap.miner.pid);
    let text = serde_json::to_string(&trapped).unwrap();
    assert!(
        text.contains("a FUSE mount of uid 4242 at /tmp/quarry-trap"),
        "the trap is not named: {trapped:#?}"
    );

    // fix: a plan within the deadline, the trap named and not acted on;
    // scoped to the plain miner, it is killed and quarantined.
    let mut cmd = command();
    cmd.args(["fix", "--interval", "0.5"]);
    let (out, took) = run_beside(&mut trap, cmd, Duration::from_secs(60));
    eprintln!("fix (dry run) beside the trap: {took:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Dry run: nothing was changed"), "{text}");
    assert!(text.contains("/tmp/quarry-trap"), "{text}");
    let mut cmd = command();
    cmd.args([
        "fix",
        "--yes",
        "--interval",
        "0.5",
        "--only",
        &plain.pid.to_string(),
    ]);
    let (out, took) = run_beside(&mut trap, cmd, Duration::from_secs(60));
    eprintln!("fix --yes beside the trap: {took:?}");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("killed PID {}", plain.pid)),
        "{text}"
    );
    assert!(
        !std::path::Path::new("/tmp/quarry-plain/xmrig").exists(),
        "{text}"
    );
    // The trap's miner was not touched (fix was scoped).
    assert!(std::path::Path::new(&format!("/proc/{}", trap.miner.pid)).exists());
}

#[test]
fn watch_reports_a_miner_beside_a_fuse_trap() {
    sandboxed!("watch_reports_a_miner_beside_a_fuse_trap");
    let Some(mut trap) = Trap::set() else {
        return;
    };
    let mut w = watch_command(free_port())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    let out = w.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                if tx.send(v).is_err() {
                    break;
                }
            }
        }
    });
    let wait =
        |rx: &std::sync::mpsc::Receiver<Value>, within: Duration, want: &dyn Fn(&Value) -> bool| {
            let end = Instant::now() + within;
            let mut seen = Vec::new();
            while let Some(left) = end.checked_duration_since(Instant::now()) {
                match rx.recv_timeout(left) {
                    Ok(v) if want(&v) => return Some(v),
                    Ok(v) => seen.push(v),
                    Err(_) => break,
                }
            }
            eprintln!("saw: {seen:#?}");
            None
        };
    let first_scan = wait(&rx, Duration::from_secs(60), &|v| v["event"] == "scan");
    let mut d = DWatch::default();
    d.look(w.id());
    if first_scan.is_none() {
        d.look(w.id());
        trap.release();
        let _ = w.kill();
        panic!("watch finished no scan beside the trap: {}", d.worst);
    }
    let started = Instant::now();
    let plain = plain_miner("/tmp/quarry-plain");
    let f = wait(&rx, Duration::from_secs(30), &|v| {
        v["event"] == "finding" && v["finding"]["subject"]["pid"] == plain.pid
    });
    let latency = started.elapsed();
    d.look(w.id());
    let _ = w.kill();
    let _ = w.wait();
    assert!(
        f.is_some(),
        "watch did not report the plain miner beside the trap"
    );
    eprintln!("watch: a plain miner beside the trap reported after {latency:?}");
    assert!(
        d.longest < Duration::from_secs(2),
        "a watch task waited in state D: {}",
        d.worst
    );
}

/// Peak resident memory of the largest child waited for so far, KiB.
fn children_peak_rss_kib() -> i64 {
    // SAFETY: getrusage(2) fills the struct it is given; a zeroed rusage is
    // a valid value of that plain C struct.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_CHILDREN, &mut u), 0);
        u.ru_maxrss
    }
}

#[test]
fn sparse_unit_files_do_not_fill_memory() {
    sandboxed!("sparse_unit_files_do_not_fill_memory");
    // 400 sparse 1 MiB unit files, no disk used (as an unprivileged user
    // makes them where systemd reads user units); one real line first in
    // one of them, to prove its text is still read.
    let dir = std::path::Path::new("/etc/systemd/system");
    std::fs::create_dir_all(dir).unwrap();
    for n in 0..400 {
        let f = std::fs::File::create(dir.join(format!("quarry-sparse-{n}.service"))).unwrap();
        if n == 7 {
            use std::io::Write;
            (&f).write_all(
                b"[Service]\nExecStart=/tmp/quarry-sparse/xmrig -o stratum+tcp://127.0.0.1:3333\n",
            )
            .unwrap();
        }
        f.set_len(1 << 20).unwrap();
    }
    let out = command()
        .args(["scan", "--format", "json", "--only", "persistence"])
        .output()
        .unwrap();
    let peak = children_peak_rss_kib();
    eprintln!("peak RSS with 400 sparse 1 MiB unit files: {peak} KiB");
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB");
    let findings = json["findings"].as_array().unwrap();
    assert!(
        findings.iter().any(|f| f["rule"] == "persistence.systemd"
            && f["subject"]["path"] == "/etc/systemd/system/quarry-sparse-7.service"),
        "{findings:#?}"
    );
}

#[test]
fn many_small_regions_are_read_within_the_budget() {
    sandboxed!("many_small_regions_are_read_within_the_budget");
    // 40 processes named xmrig with 6,000 one-page regions each: before the
    // regions were merged into one matcher pass, 1.5 s a process (60.7 s).
    let procs: Vec<ProcGuard> = (0..40)
        .map(|_| {
            let mut c = Command::new(burner());
            c.args(["--name", "xmrig", "--regions", "6000", "--idle"]);
            start(c)
        })
        .collect();
    let t = Instant::now();
    let out = command()
        .args(["scan", "--format", "json", "--only", "miner"])
        .output()
        .unwrap();
    let took = t.elapsed();
    eprintln!("scan of 40 processes x 6,000 regions: {took:?}");
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let findings = json["findings"].as_array().unwrap();
    for p in &procs {
        let f = findings
            .iter()
            .find(|f| f["subject"]["pid"] == p.pid)
            .unwrap_or_else(|| panic!("PID {} not judged: {findings:#?}", p.pid));
        // What the budget left unread is said.
        let text = f.to_string();
        assert!(text.contains("memory"), "{f:#}");
    }
    assert!(took < Duration::from_secs(60), "{took:?}");
}

#[test]
fn a_reader_that_stops_reading_ends_the_output_not_the_verdict() {
    // `true` has exited long before the report is written: every write
    // fails with EPIPE.
    let out = Command::new("bash")
        .args([
            "-c",
            r#""$0" scan --only cpu --interval 0.2 | true; echo "status=${PIPESTATUS[0]}""#,
            common::QUARRY,
        ])
        .env("QUARRY_CACHE_DIR", "")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("status=0") || stdout.contains("status=1"),
        "{stdout}{stderr}"
    );
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn a_scan_ends_at_its_timeout_and_says_what_it_did_not_finish() {
    sandboxed!("a_scan_ends_at_its_timeout_and_says_what_it_did_not_finish");
    // A new PID namespace starts at pid_max 4,194,304 (Linux 6.14 on):
    // --deep asks the allocator about every PID, 25 s and more here.
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    if pid_max < 1_000_000 {
        eprintln!("SKIPPED: pid_max {pid_max} here: the allocator probe is too quick to cut");
        return;
    }
    let t = Instant::now();
    let s = scan(&[
        "--only",
        "hidden,miner",
        "--deep",
        "--interval",
        "0.2",
        "--timeout",
        "2",
    ]);
    let took = t.elapsed();
    eprintln!("scan --deep --timeout 2 at pid_max {pid_max}: {took:?}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    let first = s.json["limitations"][0].as_str().unwrap_or("").to_string();
    assert!(
        first.starts_with("the scan reached its --timeout of 2 s")
            && first.contains("PID-allocator probe"),
        "{:#}",
        s.json["limitations"]
    );
    // The report is whole otherwise: the census ran, the verdict is there.
    assert!(s.json["census"]["listed_processes"].as_u64().unwrap() > 0);
    assert!(s.code == 0 || s.code == 1, "{}", s.stderr);
    // Without a deadline nothing is said to be unfinished.
    let s = scan(&["--only", "hidden", "--interval", "0.2", "--timeout", "0"]);
    assert!(
        !s.json["limitations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains("--timeout")),
        "{:#}",
        s.json["limitations"]
    );
}

#[test]
fn watch_reports_a_miner_beside_a_reaped_fork_storm() {
    // The host's PID namespace: in a namespace of its own the storm's CPU
    // would not be compared at all.
    sandboxed_mounts!("watch_reports_a_miner_beside_a_reaped_fork_storm", false);
    let mut cmd = Command::new(burner());
    cmd.args(["--reaped-storm", "5"]);
    std::os::unix::process::CommandExt::uid(&mut cmd, 4242);
    let _storm = start(cmd);
    let mut w = watch_command(free_port())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    let out = w.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                if tx.send(v).is_err() {
                    break;
                }
            }
        }
    });
    let mut seen = Vec::new();
    let mut wait = |within: Duration, want: &dyn Fn(&Value) -> bool| {
        let end = Instant::now() + within;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(v) if want(&v) => return Some(v),
                Ok(v) => seen.push(v),
                Err(_) => break,
            }
        }
        None
    };
    let first = wait(Duration::from_secs(60), &|v| v["event"] == "scan");
    assert!(first.is_some(), "no first scan beside the storm");
    let started = Instant::now();
    let plain = plain_miner("/tmp/quarry-plain");
    let f = wait(Duration::from_secs(30), &|v| {
        v["event"] == "finding" && v["finding"]["subject"]["pid"] == plain.pid
    });
    let latency = started.elapsed();
    let _ = w.kill();
    let _ = w.wait();
    assert!(
        f.is_some(),
        "watch did not report the miner beside the storm"
    );
    eprintln!("watch: a miner beside a reaped fork storm reported after {latency:?}");
    // Two ticks of 0.5 s and the scan they start, with room for a busy
    // machine (a deadline, not a timing).
    assert!(latency < Duration::from_secs(10), "{latency:?}");
    let hidden: Vec<&Value> = seen
        .iter()
        .filter(|v| {
            v["event"] == "finding"
                && v["finding"]["rule"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("hidden."))
        })
        .collect();
    assert!(hidden.is_empty(), "{hidden:#?}");
}
