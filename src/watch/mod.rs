//! `quarry watch`: always on, cheap, and in the tools fleets already run.
//!
//! Every `interval` a light tick ([`tick`]) reads `/proc/stat`, each
//! process's `stat` and new processes. A full scan (the same as `quarry scan`,
//! without the module walk and PID sweeps) runs when:
//! - the machine is busy at or above the threshold for `sustain`;
//! - a new process carries a miner signal;
//! - CPU that no visible process explains appears (two ticks in a row: a
//!   deep scan, with the hidden-process checks);
//! - a start-up or hiding place changes (`/etc/ld.so.preload`, crontabs,
//!   systemd unit folders, init scripts), seen with inotify; without inotify
//!   the periodic scans cover them and the first `scan` event says so;
//! - findings are open and a process they name went away, or `recheck` passed
//!   (so that "cleared" is reported);
//! - `deep_every` passed: a deep scan with the hidden-process sweep and the
//!   module walk.
//!
//! Output: one JSON object per line on stdout ([`Event`], documented in
//! docs/JSON-SCHEMA.md). Under systemd (`JOURNAL_STREAM` set) each line starts
//! with a syslog priority prefix (`<3>`), which journald turns into the
//! entry's PRIORITY. Findings are de-duplicated through [`state`]. Metrics are
//! served for Prometheus ([`metrics`]). `watch` never acts on what it finds.

pub mod lanes;
pub mod metrics;
pub mod state;
pub mod tick;

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::detect::{Finding, Severity};
use crate::host::Host;
use crate::rules::Rules;
use crate::scan::{Check, ScanOptions};

/// Version of the event schema (docs/JSON-SCHEMA.md).
pub const EVENT_SCHEMA_VERSION: u32 = 1;

/// Places whose change triggers a scan: where hiding and persistence live.
pub const WATCHED: &[&str] = &[
    "/etc",
    "/etc/cron.d",
    "/var/spool/cron/crontabs",
    "/var/spool/cron",
    "/etc/systemd/system",
    "/etc/init.d",
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
];

/// Names in `/etc` whose change matters (the folder itself changes often).
const ETC_NAMES: &[&str] = &["ld.so.preload", "crontab", "rc.local"];

/// Unexplained CPU share (of all CPUs) that triggers a deep scan when seen
/// on two ticks in a row. The full scan confirms it on its own sample.
const UNEXPLAINED_TRIGGER: f64 = 0.10;

/// Least time between two deep scans for CPU no process explains.
const DEEP_GAP: Duration = Duration::from_secs(60);

/// Options of `quarry watch`.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub interval: Duration,
    pub cpu_threshold: f64,
    pub sustain: Duration,
    pub deep_every: Duration,
    /// While findings are open, scan again at least this often.
    pub recheck: Duration,
    /// The sample of each full scan.
    pub scan_interval: Duration,
    pub metrics_addr: Option<SocketAddr>,
    pub state_dir: PathBuf,
    /// Findings below this are counted in metrics but not emitted as events.
    pub min_severity: Severity,
    pub scan: ScanOptions,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            interval: Duration::from_secs(5),
            cpu_threshold: 70.0,
            sustain: Duration::from_secs(60),
            deep_every: Duration::from_secs(3600),
            recheck: Duration::from_secs(30),
            scan_interval: Duration::from_secs(1),
            metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 9745))),
            state_dir: PathBuf::from("/var/lib/quarry/watch"),
            min_severity: Severity::Low,
            scan: ScanOptions::default(),
        }
    }
}

/// One line of output.
#[derive(Debug, Serialize)]
pub struct Event<'a> {
    pub schema: &'static str,
    pub schema_version: u32,
    pub time: String,
    pub host: &'a str,
    /// `finding`, `changed`, `cleared`, `cpu`, `scan`, `error`.
    pub event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finding: Option<&'a Finding>,
    /// For `changed` and `cleared`: what was reported before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<state::Seen>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuEvent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scan: Option<ScanEvent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CpuEvent {
    pub busy_ratio: f64,
    pub unexplained_ratio: f64,
    /// `abnormal` when at or above the threshold, `normal` when back below.
    pub state: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScanEvent {
    pub trigger: String,
    pub deep: bool,
    pub duration_ms: f64,
    pub findings: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub highest: Option<Severity>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub limitations: Vec<String>,
}

/// syslog priority of an event, for journald's `<N>` prefix (sd-daemon(3)).
fn priority(sev: Option<Severity>) -> u8 {
    match sev {
        Some(Severity::Critical) => 2,
        Some(Severity::High) => 3,
        Some(Severity::Medium) => 4,
        Some(Severity::Low) => 5,
        _ => 6,
    }
}

struct Out<W: Write> {
    w: W,
    host: String,
    journald: bool,
}

impl<W: Write> Out<W> {
    fn emit(&mut self, e: Event, sev: Option<Severity>) -> io::Result<()> {
        let e = Event {
            host: &self.host,
            ..e
        };
        let line = bounded_line(serde_json::to_value(&e).map_err(io::Error::other)?);
        if self.journald {
            write!(self.w, "<{}>", priority(sev))?;
        }
        writeln!(self.w, "{line}")?;
        self.w.flush()
    }
}

/// Longest line written. journald splits longer ones (`LineMax=`, 48K by
/// default, journald.conf(5)) and reads a priority prefix at the start of
/// every piece: a 1.2 MB path of a miner's made six forged PRIORITY 0
/// entries before lines were bounded (issue 21).
pub const MAX_LINE: usize = 32 * 1024;

/// One JSON line of at most [`MAX_LINE`] bytes in which `<` never appears
/// (written `\u003c`, the same string to a JSON reader), so nothing but
/// Quarry's own prefix can look like a priority. Too long, its strings are
/// cut (saying how much), then its lists; at worst only the event's kind,
/// time and key are kept.
pub fn bounded_line(mut v: serde_json::Value) -> String {
    let text = |v: &serde_json::Value| v.to_string().replace('<', "\\u003c");
    let line = text(&v);
    if line.len() <= MAX_LINE {
        return line;
    }
    for max in [4096, 1024, 256, 64] {
        cut(&mut v, max, usize::MAX);
        let line = text(&v);
        if line.len() <= MAX_LINE {
            return line;
        }
    }
    cut(&mut v, 64, 8);
    let line = text(&v);
    if line.len() <= MAX_LINE {
        return line;
    }
    let mut small = serde_json::Map::new();
    for k in ["schema", "schema_version", "time", "host", "event", "key"] {
        if let Some(x) = v.get(k) {
            small.insert(k.into(), x.clone());
        }
    }
    small.insert("truncated".into(), true.into());
    let mut small = serde_json::Value::Object(small);
    cut(&mut small, 256, 8);
    text(&small)
}

/// Cuts every string in `v` to `max` bytes (on a character boundary, with a
/// note of what was cut) and every list to `items`.
fn cut(v: &mut serde_json::Value, max: usize, items: usize) {
    match v {
        serde_json::Value::String(s) if s.len() > max => {
            let mut end = max;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            let cut = s.len() - end;
            s.truncate(end);
            s.push_str(&format!("…[{cut} bytes cut]"));
        }
        serde_json::Value::Array(a) => {
            if a.len() > items {
                let n = a.len() - items;
                a.truncate(items);
                a.push(format!("[{n} more cut]").into());
            }
            a.iter_mut().for_each(|x| cut(x, max, items));
        }
        serde_json::Value::Object(o) => o.values_mut().for_each(|x| cut(x, max, items)),
        _ => {}
    }
}

fn event(kind: &'static str) -> Event<'static> {
    Event {
        schema: "quarry.watch-event",
        schema_version: EVENT_SCHEMA_VERSION,
        time: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        host: "",
        event: kind,
        key: None,
        finding: None,
        previous: None,
        cpu: None,
        scan: None,
        message: None,
    }
}

/// inotify watches on [`WATCHED`] places that exist.
struct Watcher {
    fd: rustix::fd::OwnedFd,
    etc_wd: Option<i32>,
}

impl Watcher {
    fn new(host: &Host) -> io::Result<Watcher> {
        use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
        let fd = inotify::init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC)?;
        let mut etc_wd = None;
        let flags = WatchFlags::CLOSE_WRITE
            | WatchFlags::CREATE
            | WatchFlags::DELETE
            | WatchFlags::MOVED_TO
            | WatchFlags::MOVED_FROM
            | WatchFlags::ATTRIB
            | WatchFlags::MODIFY;
        let mut any = false;
        for p in WATCHED {
            if let Ok(wd) = inotify::add_watch(&fd, host.path(p), flags) {
                any = true;
                if *p == "/etc" {
                    etc_wd = Some(wd);
                }
            }
        }
        if !any {
            return Err(io::Error::other("no watched place exists"));
        }
        Ok(Watcher { fd, etc_wd })
    }

    /// Whether something relevant changed since the last call.
    fn changed(&self) -> Option<String> {
        let mut buf = [0u8; 8192];
        let mut what = None;
        while let Ok(n) = rustix::io::read(&self.fd, &mut buf) {
            if n == 0 {
                break;
            }
            // struct inotify_event { int wd; u32 mask, cookie, len; char name[len]; }
            let mut i = 0;
            while i + 16 <= n {
                let wd = i32::from_ne_bytes(buf[i..i + 4].try_into().unwrap());
                let len = u32::from_ne_bytes(buf[i + 12..i + 16].try_into().unwrap()) as usize;
                let name = &buf[(i + 16).min(n)..(i + 16 + len).min(n)];
                let name = String::from_utf8_lossy(name.split(|b| *b == 0).next().unwrap_or(b""));
                i += 16 + len;
                if Some(wd) == self.etc_wd && !ETC_NAMES.contains(&name.as_ref()) {
                    continue;
                }
                what.get_or_insert_with(|| crate::escape::escape(name.as_bytes()));
            }
        }
        what
    }
}

/// Runs until `stop` is set (SIGTERM, SIGINT). Writes events to `out`.
pub fn run<W: Write>(
    host: &Host,
    rules: &Rules,
    opts: &WatchOptions,
    stop: Arc<AtomicBool>,
    out: W,
) -> anyhow::Result<()> {
    let hostname = host
        .read_text("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let mut out = Out {
        w: out,
        host: hostname,
        journald: std::env::var_os("JOURNAL_STREAM").is_some(),
    };
    let metrics = metrics::Metrics::new();
    if let Some(addr) = opts.metrics_addr {
        let bound = metrics.serve(addr)?;
        let mut e = event("scan");
        e.event = "started";
        e.message = Some(format!("metrics on http://{bound}/metrics"));
        out.emit(e, None)?;
    }
    let state_dir = opts.state_dir.as_os_str().as_encoded_bytes().to_vec();
    let mut st = match state::State::load(&state_dir) {
        Ok(s) => s,
        Err(e) => {
            let mut ev = event("error");
            ev.message = Some(format!("state not loaded, starting empty: {e}"));
            out.emit(ev, Some(Severity::Medium))?;
            state::State::default()
        }
    };
    let watcher = Watcher::new(host);
    let mut pending_limits: Vec<String> = match &watcher {
        Ok(_) => vec![],
        Err(e) => vec![format!(
            "inotify is not available ({e}): changes to start-up and hiding places are seen only by the periodic scans"
        )],
    };
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let mut ticker = tick::Ticker::new();
    let _ = ticker.tick(host, rules);
    let mut lanes = lanes::Lanes::start(host, rules, &opts.scan, opts.scan_interval)?;
    let mut busy_since: Option<Instant> = None;
    let mut abnormal = false;
    let mut unexplained_ticks = 0;
    let mut last_scan: Option<Instant> = None;
    let mut last_deep = Instant::now();
    let mut last_unexplained_deep: Option<Instant> = None;
    // The first scan runs at once: the answer is waiting when an alarm fires.
    let mut trigger: Option<(String, bool)> = Some(("start".into(), false));
    while !stop.load(Ordering::Relaxed) {
        if let Some((why, deep)) = trigger.take() {
            if deep {
                last_deep = Instant::now();
            }
            lanes.request(why, deep);
        }
        // Wait one interval, taking each scan's result as it ends, waking
        // for a stop.
        let until = Instant::now() + opts.interval;
        while !stop.load(Ordering::Relaxed) {
            let Some(left) = until.checked_duration_since(Instant::now()) else {
                break;
            };
            let done = match lanes
                .done
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                Ok(d) => d,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    anyhow::bail!("the scan threads ended")
                }
            };
            lanes.finished(&done);
            let lanes::Done {
                why,
                deep,
                took,
                report,
            } = done;
            match report {
                Ok(report) => {
                    metrics.scan_duration.observe(took.as_secs_f64());
                    metrics.last_scan.set(
                        SystemTime::now()
                            .duration_since(SystemTime::UNIX_EPOCH)
                            .map_or(0.0, |d| d.as_secs_f64()),
                    );
                    metrics.set_findings(&report.findings);
                    if let Some(c) = &report.census {
                        metrics.hidden.set(c.hidden as i64);
                    }
                    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
                    let shown: Vec<Finding> = report
                        .findings
                        .iter()
                        .filter(|f| f.severity >= opts.min_severity)
                        .cloned()
                        .collect();
                    // A light scan says nothing of what only a deep one checks.
                    let covered = |rule: &str| {
                        deep || Check::of_rule(rule).is_some_and(|c| lanes::LIGHT.contains(&c))
                    };
                    for (change, key, f, prev) in st.update(&shown, &now, covered) {
                        let mut e = event(match change {
                            state::Change::New => "finding",
                            state::Change::Changed => "changed",
                            state::Change::Cleared => "cleared",
                        });
                        let sev = f.map(|f| f.severity).or(prev.as_ref().map(|p| p.severity));
                        e.key = Some(key);
                        e.finding = f;
                        e.previous = prev;
                        out.emit(
                            e,
                            if change == state::Change::Cleared {
                                Some(Severity::Low)
                            } else {
                                sev
                            },
                        )?;
                    }
                    if let Err(e) = st.save(&state_dir) {
                        pending_limits.push(format!("state not saved: {e}"));
                    }
                    let mut e = event("scan");
                    let mut limits = report.limitations.clone();
                    limits.append(&mut pending_limits);
                    e.scan = Some(ScanEvent {
                        trigger: why,
                        deep,
                        duration_ms: (took.as_secs_f64() * 1e4).round() / 10.0,
                        findings: report.findings.len(),
                        highest: report.summary.highest,
                        limitations: limits,
                    });
                    out.emit(e, None)?;
                }
                Err(err) => {
                    let mut e = event("error");
                    e.message = Some(format!("scan failed: {err}"));
                    out.emit(e, Some(Severity::Medium))?;
                }
            }
            last_scan = Some(Instant::now());
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
        let t = match ticker.tick(host, rules) {
            Ok(t) => t,
            Err(e) => {
                let mut ev = event("error");
                ev.message = Some(format!("/proc unreadable: {e}"));
                out.emit(ev, Some(Severity::Medium))?;
                continue;
            }
        };
        metrics.cpu_busy.set(t.busy);
        metrics.scan_running.set(
            lanes
                .running(false)
                .max(lanes.running(true))
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        metrics.cpu_unexplained.set(t.unexplained);
        let busy = t.busy * 100.0 >= opts.cpu_threshold;
        if busy != abnormal {
            abnormal = busy;
            let mut e = event("cpu");
            e.cpu = Some(CpuEvent {
                busy_ratio: (t.busy * 1000.0).round() / 1000.0,
                unexplained_ratio: (t.unexplained * 1000.0).round() / 1000.0,
                state: if busy { "abnormal" } else { "normal" },
            });
            out.emit(e, if busy { Some(Severity::Medium) } else { None })?;
        }
        busy_since = if busy {
            busy_since.or(Some(Instant::now()))
        } else {
            None
        };
        unexplained_ticks = if t.unexplained >= UNEXPLAINED_TRIGGER {
            unexplained_ticks + 1
        } else {
            0
        };
        let since_scan = last_scan.map_or(Duration::MAX, |l| l.elapsed());
        let open_pids: Vec<i32> = st
            .reported
            .keys()
            .filter_map(|k| k.split("|pid=").nth(1)?.split('|').next()?.parse().ok())
            .collect();
        // A deep scan for unexplained CPU at most every DEEP_GAP: a fork
        // storm that lasts is one condition, not one deep scan per tick.
        let unexplained_due = last_unexplained_deep.is_none_or(|t| t.elapsed() >= DEEP_GAP);
        trigger = if last_deep.elapsed() >= opts.deep_every && lanes.running(true).is_none() {
            Some(("periodic deep scan".into(), true))
        } else if unexplained_ticks >= 2 && unexplained_due {
            unexplained_ticks = 0;
            last_unexplained_deep = Some(Instant::now());
            Some((
                format!(
                    "{:.0}% of the CPU explained by no visible process",
                    t.unexplained * 100.0
                ),
                true,
            ))
        } else if let Some((pid, name, ids)) = t.suspects.first() {
            Some((
                format!("new process PID {pid} \"{name}\" ({})", ids.join(", ")),
                false,
            ))
        } else if busy_since.is_some_and(|s| s.elapsed() >= opts.sustain)
            && since_scan >= opts.sustain
            && lanes.running(false).is_none()
        {
            Some((
                format!(
                    "CPU {:.0}% busy for {} s or more",
                    t.busy * 100.0,
                    opts.sustain.as_secs()
                ),
                false,
            ))
        } else if let Some(what) = watcher.as_ref().ok().and_then(|w| w.changed()) {
            Some((format!("start-up or hiding place changed ({what})"), false))
        } else if let Some(pid) = open_pids.iter().find(|p| t.gone.contains(p)) {
            Some((format!("PID {pid} of an open finding exited"), false))
        } else if !st.reported.is_empty()
            && since_scan >= opts.recheck
            && lanes.running(false).is_none()
        {
            Some(("recheck of open findings".into(), false))
        } else {
            None
        };
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_bounded_and_holds_no_priority_but_quarrys() {
        let path = "/tmp/<0>x".repeat(150_000); // 1.35 MB, as a miner's own path
        let v = serde_json::json!({
            "event": "finding",
            "key": "miner.process|pid=7",
            "finding": {"subject": {"path": path}, "evidence": ["a<1>b"]},
        });
        let line = bounded_line(v);
        assert!(line.len() <= MAX_LINE, "{}", line.len());
        assert!(!line.contains('<'));
        let back: serde_json::Value = serde_json::from_str(&line).unwrap();
        let p = back["finding"]["subject"]["path"].as_str().unwrap();
        assert!(
            p.starts_with("/tmp/<0>x/tmp/<0>x") && p.contains("bytes cut]"),
            "{p}"
        );
        assert_eq!(back["finding"]["evidence"][0], "a<1>b");
        // Many entries: lists are cut too.
        let many: Vec<String> = (0..20_000)
            .map(|i| format!("entry {i} {}", "y".repeat(40)))
            .collect();
        let line =
            bounded_line(serde_json::json!({"event": "scan", "scan": {"limitations": many}}));
        assert!(line.len() <= MAX_LINE, "{}", line.len());
        let back: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["event"], "scan");
        // A short line is as serde_json writes it, `<` aside.
        assert_eq!(
            bounded_line(serde_json::json!({"a": "<b>"})),
            "{\"a\":\"\\u003cb>\"}"
        );
    }
}
