//! Issue 12: `quarry watch` as a real process. A miner imitation appears: its
//! `finding` line names its PID within two intervals (plus the scan's own
//! sample); a real Prometheus (Debian's `prometheus`, when installed) scrapes
//! the endpoint and sees `quarry_findings{rule="miner.process"}` go to 1 and
//! back to 0; a restart with the miner still running does not report it
//! again; the miner stops and `cleared` follows; SIGTERM ends it cleanly.
//!
//! Runs in its own mount and PID namespace (tests/common `sandboxed!`): the
//! state folder is on an overlay, and the scans see only the test's
//! processes. Network: 127.0.0.1 only.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

struct Watch {
    child: Child,
    lines: Receiver<Value>,
    metrics_port: u16,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `quarry watch` serving metrics on `port` (the same port across a
/// restart, as a scrape target stays the same).
fn start_watch(port: u16) -> Watch {
    let mut child = common::watch_command(port)
        .args(["--recheck", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(10)).expect("no output");
    assert_eq!(first["event"], "started", "{first}");
    let msg = first["message"].as_str().unwrap();
    let port = msg
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches("/metrics")
        .parse()
        .unwrap();
    Watch {
        child,
        lines: rx,
        metrics_port: port,
    }
}

/// The next event matching `want` within `timeout`; every event read is kept.
fn wait_event(
    w: &Watch,
    timeout: Duration,
    seen: &mut Vec<Value>,
    want: impl Fn(&Value) -> bool,
) -> Value {
    let end = Instant::now() + timeout;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match w.lines.recv_timeout(left) {
            Ok(v) => {
                seen.push(v.clone());
                if want(&v) {
                    return v;
                }
            }
            Err(_) => panic!("event not seen in {timeout:?}; saw:\n{seen:#?}"),
        }
    }
}

/// Asserts a checker program succeeded, with what it printed.
fn assert_ran(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// Debian's prometheus scraping `target` every second, if installed.
struct Prometheus {
    child: Child,
    port: u16,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prometheus(target: u16) -> Option<Prometheus> {
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!(
            "SKIPPED the Prometheus part: prometheus is not installed (apt-get install prometheus)"
        );
        return None;
    }
    let dir = std::path::Path::new("/tmp/quarry-prom");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: quarry\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n",
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("deploy/prometheus/quarry-alerts.yml")
                .display()
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Some(Prometheus { child, port })
}

/// Polls Prometheus's query API until `sum(query)` equals `want`.
fn prom_until(p: &Prometheus, query: &str, want: f64, timeout: Duration) {
    let end = Instant::now() + timeout;
    let q: String = query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let mut last = String::new();
    while Instant::now() < end {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", p.port)) {
            let _ = write!(s, "GET /api/v1/query?query={q} HTTP/1.0\r\n\r\n");
            let mut body = String::new();
            let _ = s.read_to_string(&mut body);
            if let Some(json) = body.split("\r\n\r\n").nth(1) {
                if let Ok(v) = serde_json::from_str::<Value>(json) {
                    let val = v["data"]["result"][0]["value"][1]
                        .as_str()
                        .and_then(|x| x.parse::<f64>().ok());
                    if val == Some(want) {
                        return;
                    }
                    last = json.to_string();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("Prometheus never answered {want} to {query}: {last}");
}

#[test]
fn watch_reports_a_miner_once_clears_it_and_feeds_prometheus() {
    sandboxed!("watch_reports_a_miner_once_clears_it_and_feeds_prometheus");
    let port = free_port();
    let w = start_watch(port);
    let mut seen = Vec::new();
    // The first scan runs at once.
    wait_event(&w, Duration::from_secs(10), &mut seen, |v| {
        v["event"] == "scan"
    });
    let prom = prometheus(w.metrics_port);
    let metrics = http_get(w.metrics_port, "/metrics");
    assert!(
        metrics.contains("quarry_cpu_busy_ratio") && metrics.contains("quarry_build_info"),
        "{metrics}"
    );
    // Without an Accept header for OpenMetrics: the text format 0.0.4, which
    // Debian's `promtool check metrics` lints.
    assert!(
        metrics.contains("Content-Type: text/plain; version=0.0.4"),
        "{metrics}"
    );
    if let Ok(mut lint) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        let body = metrics.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        lint.stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let out = lint.wait_with_output().unwrap();
        assert_ran(&out, "promtool check metrics");
    }

    // A miner appears.
    let _bin = install_burner("/tmp/quarry-watch/xmrig");
    let started = Instant::now();
    let miner = start(Command::new("/tmp/quarry-watch/xmrig"));
    let f = wait_event(&w, Duration::from_secs(10), &mut seen, |v| {
        v["event"] == "finding" && v["finding"]["subject"]["pid"] == miner.pid
    });
    let latency = started.elapsed();
    eprintln!("detection latency: {latency:?}");
    // Two intervals (1 s) plus the scan's 0.5 s sample and its work.
    assert!(latency < Duration::from_secs(3), "{latency:?}: {f}");
    assert_eq!(f["finding"]["rule"], "miner.process");
    assert_eq!(f["schema"], "quarry.watch-event");
    if let Some(p) = &prom {
        prom_until(
            p,
            "sum(quarry_findings{rule=\"miner.process\"})",
            1.0,
            Duration::from_secs(30),
        );
        let rules = Command::new("promtool")
            .args(["check", "rules"])
            .arg(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("deploy/prometheus/quarry-alerts.yml"),
            )
            .output()
            .unwrap();
        assert_ran(&rules, "promtool check rules");
        // Each alert fires on what it is for and stays quiet otherwise.
        let unit = Command::new("promtool")
            .args(["test", "rules", "quarry-alerts.test.yml"])
            .current_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus"))
            .output()
            .unwrap();
        assert_ran(&unit, "promtool test rules");
    }

    // A restart with the miner still running: no second finding. The scan
    // event that follows the finding comes after the state is saved (a
    // SIGKILL between the two would report it again, by design: a finding
    // is never lost).
    wait_event(&w, Duration::from_secs(10), &mut seen, |v| {
        v["event"] == "scan"
    });
    drop(w);
    let w = start_watch(port);
    let mut seen2 = Vec::new();
    wait_event(&w, Duration::from_secs(10), &mut seen2, |v| {
        v["event"] == "scan"
    });
    assert!(
        !seen2
            .iter()
            .any(|v| v["event"] == "finding" && v["finding"]["subject"]["pid"] == miner.pid),
        "reported again after a restart: {seen2:#?}"
    );

    // The miner goes: cleared.
    // While Prometheus must see the miner go, 20 idle connections and one
    // dripping a byte every half second are held open on the metrics port
    // (opened again as the server's 3 s deadline closes them): its scrapes
    // still answer (issue 21).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let holder = {
        let stop = stop.clone();
        let port = w.metrics_port;
        std::thread::spawn(move || {
            let mut rounds = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _idle: Vec<TcpStream> = (0..20)
                    .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
                    .collect();
                if let Ok(mut drip) = TcpStream::connect(("127.0.0.1", port)) {
                    for _ in 0..5 {
                        let _ = drip.write_all(b"G");
                        std::thread::sleep(Duration::from_millis(500));
                    }
                }
                rounds += 1;
            }
            rounds
        })
    };
    drop(miner);
    wait_event(&w, Duration::from_secs(10), &mut seen2, |v| {
        v["event"] == "cleared" && v["key"].as_str().unwrap_or("").contains("miner.process")
    });
    if let Some(p) = &prom {
        prom_until(
            p,
            "sum(quarry_findings{rule=\"miner.process\"})",
            0.0,
            Duration::from_secs(30),
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = holder.join().unwrap();
    eprintln!("held 20 idle + 1 dripping connections for {rounds} rounds of 2.5 s");

    // SIGTERM: a clean exit.
    let mut w = w;
    let pid = rustix::process::Pid::from_raw(w.child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let t = Instant::now();
    loop {
        if let Some(st) = w.child.try_wait().unwrap() {
            assert!(st.success(), "{st:?}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The man page and completions come from the clap definitions; the systemd
/// unit passes `systemd-analyze verify` (with ExecStart pointing at this
/// build; `.ci/run` verifies the installed package's unit as shipped).
#[test]
fn man_page_completions_and_unit() {
    let (code, out, err) = quarry(&["generate", "man"]);
    assert_eq!(code, 0, "{err}");
    let man = String::from_utf8(out).unwrap();
    assert!(man.contains(".TH quarry") && man.contains("watch"), "{man}");
    for sh in ["bash", "zsh", "fish"] {
        let (code, out, err) = quarry(&["generate", sh]);
        assert_eq!(code, 0, "{err}");
        assert!(String::from_utf8_lossy(&out).contains("watch"), "{sh}");
    }
    let (code, out, _) = quarry(&["watch", "--help"]);
    assert_eq!(code, 0);
    let help = String::from_utf8(out).unwrap();
    for opt in [
        "--interval",
        "--sustain",
        "--deep-every",
        "--metrics-addr",
        "--state-dir",
        "--cpu-threshold",
    ] {
        assert!(help.contains(opt), "{opt}: {help}");
    }
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED systemd-analyze verify: systemd-analyze is not installed");
        return;
    }
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/systemd/quarry-watch.service"),
    )
    .unwrap();
    let unit: String = unit
        .lines()
        .filter(|l| !l.starts_with("Documentation="))
        .map(|l| {
            if l.starts_with("ExecStart=") {
                l.replace("/usr/bin/quarry", QUARRY)
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("quarry-watch.service");
    std::fs::write(&path, unit).unwrap();
    let v = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    assert_ran(&v, "systemd-analyze verify");
}

/// Issue 21: a finding whose evidence is over a megabyte (a miner's own
/// command line) reaches a real journald (Debian's systemd-journald, run by
/// the test in its own namespace, with tmpfs over /run and /var/log) as
/// entries that each carry Quarry's own priority and parse as one JSON
/// object: nothing the miner wrote can start a line with a priority prefix.
#[test]
fn a_megabyte_finding_reaches_journald_whole_with_quarrys_priority() {
    sandboxed!("a_megabyte_finding_reaches_journald_whole_with_quarrys_priority");
    let journald = std::path::Path::new("/lib/systemd/systemd-journald");
    let have = |c: &str| {
        Command::new(c)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    if !journald.exists() || !have("systemd-cat") || !have("journalctl") {
        eprintln!("SKIPPED: no systemd-journald, systemd-cat or journalctl here");
        return;
    }
    // Everything journald writes stays in this sandbox's tmpfs.
    for dir in ["/run", "/var/log"] {
        rustix::mount::mount(
            "tmpfs",
            dir,
            "tmpfs",
            rustix::mount::MountFlags::empty(),
            None,
        )
        .unwrap_or_else(|e| panic!("tmpfs over {dir}: {e}"));
    }
    std::fs::create_dir_all("/run/systemd/journal").unwrap();
    let mut jd = Command::new(journald)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !std::path::Path::new("/run/systemd/journal/stdout").exists() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "journald did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A miner whose command line is 1.2 MB (10 arguments of 120,000 bytes:
    // one argument may hold 128 KiB), with '<0>' where a line could start.
    std::fs::create_dir_all("/tmp/quarry-journal").unwrap();
    let exe = "/tmp/quarry-journal/xmrig";
    std::fs::copy(burner(), exe).unwrap();
    let mut cmd = Command::new(exe);
    cmd.args(["-o", "stratum+tcp://127.0.0.1:3333"]);
    let chunk = format!("\n<0>{}", "A".repeat(119_995));
    for _ in 0..10 {
        cmd.arg(&chunk);
    }
    let miner = start(cmd);
    let mut w = Command::new("systemd-cat")
        .args(["--level-prefix=true", "-t", "quarry-watch"])
        .arg(QUARRY)
        .args(["watch", "--interval", "0.5", "--scan-interval", "0.5"])
        .args(["--metrics-addr", "none"])
        // What systemd sets for a unit's stdout on the journal.
        .env("JOURNAL_STREAM", "0:0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let entries = || -> Vec<Value> {
        let out = Command::new("journalctl")
            .args(["-o", "json", "-t", "quarry-watch", "--no-pager"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let about_miner = |e: &Value| {
        e["MESSAGE"]
            .as_str()
            .and_then(|m| serde_json::from_str::<Value>(m).ok())
            .is_some_and(|v| v["event"] == "finding" && v["finding"]["subject"]["pid"] == miner.pid)
    };
    let t = Instant::now();
    let mut all = entries();
    while !all.iter().any(about_miner) && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(500));
        all = entries();
    }
    let _ = w.kill();
    let _ = w.wait();
    let _ = jd.kill();
    let _ = jd.wait();
    assert!(
        all.iter().any(about_miner),
        "no journal entry for the miner's finding in 30 s; entries: {}",
        all.len()
    );
    for e in &all {
        let prio = e["PRIORITY"].as_str().unwrap_or("?");
        assert!(
            ["2", "3", "4", "5", "6"].contains(&prio),
            "an entry with priority {prio}: {:.300}",
            e["MESSAGE"]
        );
        let msg = e["MESSAGE"]
            .as_str()
            .unwrap_or_else(|| panic!("a MESSAGE that is not text: {:.300}", e["MESSAGE"]));
        assert!(
            serde_json::from_str::<Value>(msg).is_ok(),
            "an entry that is not one JSON object: {msg:.300}"
        );
    }
    eprintln!(
        "journald: {} entries, all with Quarry's priority",
        all.len()
    );
}
