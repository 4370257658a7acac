//! `quarry scan`: collect → detect → report.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::collect::{self, Snapshot};
use crate::detect::{self, Finding};
use crate::host::{FreshProc, Host};
use crate::report::model::{ModulesSummary, Report, Summary, SCHEMA, SCHEMA_VERSION};
use crate::rules::Rules;

mod entry;
mod processes;
mod rootkit;
use processes::{flagged, inspection_targets, top_processes};
use rootkit::RootkitViews;

/// The checks a scan can run (`--only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Check {
    /// Machine CPU verdict.
    Cpu,
    /// Miner verdicts per process.
    Miner,
    /// Cross-view census: hidden processes and unexplained CPU.
    Hidden,
    /// Userland rootkits: ld.so.preload, LD_PRELOAD.
    Preload,
    /// Kernel modules: files outside the module tree, hidden loaded modules.
    Modules,
    /// Start-up entries: cron, systemd, init scripts, shell start-up, SSH keys.
    Persistence,
    /// How it got in: the door of each miner, doors left open, the timeline.
    Entry,
}

impl Check {
    /// The check whose scan reports findings of `rule` (by its prefix).
    pub fn of_rule(rule: &str) -> Option<Check> {
        Some(match rule.split('.').next()? {
            "cpu" => Check::Cpu,
            "miner" => Check::Miner,
            "hidden" | "kernel" => Check::Hidden,
            "rootkit" => Check::Preload,
            "module" => Check::Modules,
            "persistence" => Check::Persistence,
            "entry" => Check::Entry,
            _ => return None,
        })
    }

    pub const ALL: [Check; 7] = [
        Check::Cpu,
        Check::Miner,
        Check::Hidden,
        Check::Preload,
        Check::Modules,
        Check::Persistence,
        Check::Entry,
    ];
}

/// Options of a scan.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    pub interval: Duration,
    pub cpu_threshold: f64,
    pub top: usize,
    /// Checks to run (all by default).
    pub checks: Vec<Check>,
    /// Where to look for module files (default: `modules::DEFAULT_WALK_ROOTS`).
    pub module_roots: Vec<String>,
    pub walk_limits: collect::modules::WalkLimits,
    /// Pin the identity of every file a remedy names (for `quarry fix`; it
    /// costs a read and a hash of each).
    pub pin_files: bool,
    /// Content signatures compiled beforehand (built-in and `--yara`); when
    /// `None`, the built-in rules are compiled if some process needs them.
    pub signatures: Option<std::sync::Arc<collect::signatures::Signatures>>,
    /// Read the rootkit views (the PID allocator over the whole range, the
    /// scheduler's task list) even when nothing points at a rootkit.
    pub deep: bool,
    /// The whole scan's deadline, from its start (`--timeout`): stages not
    /// begun by then are skipped, the PID-allocator probe and the module walk
    /// stop at it, and the report says what was not finished. `None`: none.
    pub timeout: Option<Duration>,
}

/// The default `--timeout` of `quarry scan` and `quarry fix`: a person is
/// waiting. A default scan takes the sample plus well under a second here;
/// the worst cases measured (a cold walk of two kernel trees on a machine at
/// 100 %, the PID-allocator probe at pid_max 4,194,304 on a busy machine:
/// 25-190 s) are what it bounds.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// A scan's deadline, and the stages it cut.
#[derive(Debug, Default)]
pub struct Deadline {
    at: Option<Instant>,
    timeout: Option<Duration>,
    unfinished: std::sync::Mutex<Vec<String>>,
}

impl Deadline {
    pub fn new(timeout: Option<Duration>) -> Deadline {
        Deadline {
            at: timeout.map(|t| Instant::now() + t),
            timeout,
            unfinished: Default::default(),
        }
    }

    /// When it falls, if there is one.
    pub fn at(&self) -> Option<Instant> {
        self.at
    }

    /// Time left (`None`: no deadline).
    pub fn left(&self) -> Option<Duration> {
        self.at
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// True once it has passed.
    pub fn passed(&self) -> bool {
        self.at.is_some_and(|at| Instant::now() >= at)
    }

    /// True (and `what` is recorded as not finished) once it has passed.
    pub fn skip(&self, what: &str) -> bool {
        let late = self.passed();
        if late {
            self.cut(what);
        }
        late
    }

    /// Records `what` as cut short by the deadline.
    pub fn cut(&self, what: &str) {
        let mut u = self.unfinished.lock().unwrap_or_else(|e| e.into_inner());
        if !u.iter().any(|x| x == what) {
            u.push(what.to_string());
        }
    }

    /// The limitation line, when something was cut.
    pub fn limitation(&self) -> Option<String> {
        let u = self.unfinished.lock().unwrap_or_else(|e| e.into_inner());
        if u.is_empty() {
            return None;
        }
        Some(format!(
            "the scan reached its --timeout of {} s and reports what it saw; not finished: {} (run again with a longer --timeout, or --timeout 0 for none)",
            self.timeout.map_or(0, |t| t.as_secs()),
            u.join("; ")
        ))
    }
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            interval: Duration::from_secs(1),
            cpu_threshold: 70.0,
            top: 10,
            checks: Check::ALL.to_vec(),
            module_roots: collect::modules::DEFAULT_WALK_ROOTS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            walk_limits: Default::default(),
            pin_files: false,
            signatures: None,
            deep: false,
            timeout: Some(DEFAULT_TIMEOUT),
        }
    }
}

/// Runs a scan.
pub fn run(host: &Host, rules: &Rules, opts: &ScanOptions) -> std::io::Result<Report> {
    run_full(host, rules, opts).map(|(r, _)| r)
}

/// Runs a scan and also returns the snapshot it judged (for `quarry fix`).
pub fn run_full(
    host: &Host,
    rules: &Rules,
    opts: &ScanOptions,
) -> std::io::Result<(Report, Snapshot)> {
    let started = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let on = |c: Check| opts.checks.contains(&c);
    let deadline = Deadline::new(opts.timeout);
    let mut limitations = Vec::new();
    // A private procfs sees through mounts over /proc/PID (root only).
    let fresh = if host.is_live() {
        match FreshProc::open(host) {
            Ok(f) => Some(f),
            Err(e) => {
                limitations.push(format!(
                    "could not mount a private procfs ({e}): a process whose /proc/PID is covered by a mount can be detected but not read"
                ));
                None
            }
        }
    } else {
        None
    };
    let collect_opts = collect::Options {
        interval: opts.interval,
        pool_ports: rules.pool_ports(),
        fresh: fresh.as_ref().map(|f| f.host().clone()),
    };
    // The module-file walk reads the disk: it runs during the CPU sample (at
    // the lowest priority, and Quarry's own CPU is left out of the machine's
    // busy share), and goes on beside the census that follows the sample.
    let walk = on(Check::Modules).then(|| {
        let (h, roots, mut limits) = (
            host.clone(),
            opts.module_roots.clone(),
            opts.walk_limits.clone(),
        );
        // Beside the sample at the lowest priority; after it, at Quarry's
        // own, so a machine at 100 % cannot starve it (issue 21).
        limits.raise_after = limits
            .raise_after
            .min(opts.interval + Duration::from_millis(100));
        if let Some(t) = opts.timeout {
            limits.max_time = limits.max_time.min(t);
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let writer = std::thread::spawn(move || {
            let t = Instant::now();
            let (files, stats, save) = collect::modules::find_files_deferred(&h, &roots, &limits);
            let _ = tx.send(((files, stats), t.elapsed()));
            // The caches are written while the scan judges what was found.
            save.write();
        });
        (rx, writer)
    });
    // The hook and BPF views do not depend on the sample, and are small:
    // they are read during it, on their own thread.
    let views = on(Check::Hidden).then(|| {
        let h = host.clone();
        std::thread::spawn(move || RootkitViews::read(&h))
    });
    let snap = collect::sample(host, &collect_opts)?;
    let t = Instant::now();
    let me = host.is_live().then(|| std::process::id() as i32);
    let (cpu, cpu_finding) = detect::cpu::assess(&snap, opts.cpu_threshold, me);
    let mut findings = Vec::new();
    let mut hidden = match views {
        Some(views) => {
            let fresh_host = fresh.as_ref().map(|f| f.host());
            let ctx = rootkit::Ctx {
                host,
                fresh_host,
                collect_opts: &collect_opts,
                opts,
                rules,
                deadline: &deadline,
            };
            rootkit::hidden_stage(ctx, views, &snap)
        }
        None => rootkit::HiddenStage::default(),
    };
    findings.append(&mut hidden.findings);
    limitations.append(&mut hidden.limitations);
    let hidden_pids = std::mem::take(&mut hidden.hidden_pids);
    if on(Check::Preload) && !deadline.skip("userland rootkit checks (preload)") {
        let pids: Vec<i32> = snap.processes.keys().copied().collect();
        let pre = collect::preload::collect(host, &pids);
        if pre.env_unreadable > 0 && host.is_live() && snap.host.euid != 0 {
            limitations.push(format!(
            "the environments of {} processes could not be read (LD_PRELOAD checks are partial)",
            pre.env_unreadable
        ));
        }
        findings.extend(detect::preload::findings(&pre, &snap, rules));
    }
    let mut modules_summary = None;
    let mut walk_us = 0;
    let mut cache_writer = None;
    // A panic in the walk thread (it parses ELF, xz, zstd and PKCS#7 from
    // files anyone can plant) is a limitation, not an exit (issue 26).
    let walked = walk.and_then(|(rx, writer)| match rx.recv() {
        Ok(w) => Some((w, writer)),
        Err(_) => {
            limitations.push(
                "the module-file walk stopped on an internal error (a panic while reading a file there): module files were not judged; please report it".into(),
            );
            None
        }
    });
    if let Some((((files, walk), took), writer)) = walked {
        cache_writer = Some(writer);
        walk_us = took.as_micros() as u64;
        if walk.truncated.is_some() && deadline.passed() {
            deadline.cut("the module-file walk");
        }
        if let Some(t) = &walk.truncated {
            limitations.push(format!(
                "the module-file walk was cut short ({t}); narrow it with --module-path"
            ));
        }
        let mut loaded = collect::modules::read_loaded(host, hidden.hook_suspect);
        loaded.vmalloc_printer_hooked = hidden.vmalloc_hooked;
        if let Some(r) = &loaded.reason {
            limitations.push(r.clone());
        }
        let mut files = files;
        let release = if files.is_empty() {
            String::new()
        } else {
            let ctx = collect::modules::place::Context::load(host, &files);
            collect::modules::place::classify(host, &mut files, &ctx);
            ctx.release
        };
        findings.extend(detect::modules::file_findings(&files, rules, &release));
        findings.extend(detect::modules::loaded_findings(host, &loaded));
        modules_summary = Some(ModulesSummary {
            loaded_checks_applicable: loaded.applicable,
            not_applicable_reason: loaded.reason.clone(),
            listed: loaded.proc_modules.len(),
            sys_module_loadable: loaded.sys_module.len(),
            kallsyms_tagged: loaded.kallsyms.len(),
            tracefs_tagged: loaded.tracefs.as_ref().map(|t| t.len()),
            vmalloc_load_module: loaded.vmalloc_load_module,
            tainted: loaded.tainted,
            taint_flags: loaded
                .tainted
                .map(collect::modules::taint_letters)
                .unwrap_or_default(),
            module_files: files.len(),
            walk,
        });
    }
    // Persistence files are read before the miner verdicts: a start-up line
    // that runs a process's exact executable is part of its verdict.
    let persist_files = if on(Check::Persistence) && !deadline.skip("start-up entries") {
        let (files, note) = collect::persistence::collect(host, &snap.users);
        limitations.extend(note);
        files
    } else {
        Vec::new()
    };
    let lookup = detect::persistence::Lookup {
        stat: &|p| host.ident(p),
        sha256: &|p| host.sha256_of(p),
    };
    let mut snap = snap;
    let mut inspect_us = 0;
    if on(Check::Miner) {
        let ti = Instant::now();
        let pids = inspection_targets(&snap, rules, me, &hidden_pids);
        if !pids.is_empty() {
            let sigs = match &opts.signatures {
                Some(s) => s.clone(),
                None => std::sync::Arc::new(
                    collect::signatures::Signatures::compile(&[])
                        .map_err(|e| std::io::Error::other(e.0))?,
                ),
            };
            snap.inspections = collect::inspect::inspect(host, &sigs, &snap, &pids, deadline.at());
            let skipped = pids.len() - snap.inspections.len().min(pids.len());
            if skipped > 0 && deadline.passed() {
                deadline.cut(&format!(
                    "content and configuration checks of {skipped} of {} selected processes",
                    pids.len()
                ));
            }
            let procs: Vec<detect::persistence::Flagged> = pids
                .iter()
                .filter_map(|pid| flagged(host, &snap, *pid, false))
                .collect();
            for (pid, line) in detect::persistence::links(&persist_files, &procs, &lookup) {
                if let Some(ins) = snap.inspections.get_mut(&pid) {
                    ins.restarters.push(line);
                }
            }
        }
        inspect_us = ti.elapsed().as_micros() as u64;
        findings.extend(
            detect::miner::detect(&snap, rules)
                .into_iter()
                .filter(|f| !f.subject.pid.is_some_and(|p| hidden_pids.contains(&p))),
        );
    }
    if on(Check::Persistence) {
        let flagged: Vec<detect::persistence::Flagged> = findings
            .iter()
            .filter(|f| f.verdict.is_some())
            .filter_map(|f| {
                let pid = f.subject.pid?;
                let mut fl = flagged(host, &snap, pid, f.verdict.as_deref() == Some("malicious"))?;
                if fl.name.is_empty() {
                    fl.name = f.subject.name.clone().unwrap_or_default();
                }
                Some(fl)
            })
            .collect();
        findings.extend(detect::persistence::findings(
            &persist_files,
            &flagged,
            rules,
            &lookup,
        ));
    }
    let mut entry = None;
    let mut entry_us = 0;
    if on(Check::Entry) && !deadline.skip("how it got in (entry)") {
        let te = Instant::now();
        let (mut more, report, notes) =
            entry::entry_stage(host, &snap, &persist_files, &mut findings);
        findings.append(&mut more);
        limitations.extend(notes);
        entry = (!report.is_empty()).then_some(report);
        entry_us = te.elapsed().as_micros() as u64;
    }
    if on(Check::Cpu) {
        findings.extend(cpu_finding);
    }
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    if opts.pin_files {
        pin_files(host, &mut findings);
    }
    let top = top_processes(host, &snap, &findings, opts.top);
    let summary = Summary {
        malicious: count_verdict(&findings, "malicious"),
        suspicious: count_verdict(&findings, "suspicious"),
        findings: findings.len(),
        highest: findings.iter().map(|f| f.severity).max(),
        verdict: String::new(),
    };
    let mut timing = snap.timing.clone();
    timing.detect_us = t.elapsed().as_micros() as u64;
    timing.census_us = hidden.census_us;
    timing.rootkit_views_us = hidden.views_us;
    timing.rootkit_deep_us = hidden.deep_us;
    timing.module_walk_us = walk_us;
    timing.inspect_us = inspect_us;
    timing.entry_us = entry_us;
    timing.confirm_interval_us = hidden.confirm_sleep_us;
    timing.work_us = timing.first_pass_us + timing.second_pass_us + timing.detect_us
        - hidden.confirm_sleep_us.min(timing.detect_us);
    let report = Report {
        schema: SCHEMA,
        schema_version: SCHEMA_VERSION,
        quarry_version: env!("CARGO_PKG_VERSION"),
        started,
        host: snap.host.clone(),
        cpu,
        top,
        findings,
        summary,
        census: hidden.census,
        cpu_accounting: hidden.accounting,
        modules: modules_summary,
        entry,
        // What the deadline cut comes first: the report is incomplete.
        limitations: deadline
            .limitation()
            .into_iter()
            .chain(snap.limitations.iter().cloned())
            .chain(limitations)
            .collect(),
        timing,
    };
    let mut report = report;
    report.summary.verdict = crate::report::verdict_line(&report).1;
    if let Some(w) = cache_writer {
        let _ = w.join();
    }
    Ok((report, snap))
}

fn count_verdict(f: &[Finding], v: &str) -> usize {
    f.iter().filter(|f| f.verdict.as_deref() == Some(v)).count()
}

/// Records, at scan time, the identity (real path, device, inode, size,
/// mtime, SHA-256) of every file a remedy names, so that `quarry fix` acts only
/// on the object the scan judged. The pin must agree with what the detector
/// judged (the content's SHA-256, or the inode a process runs); if it does not
/// (the file changed in between), nothing is pinned and fix leaves it alone.
fn pin_files(host: &Host, findings: &mut [Finding]) {
    use detect::{Judged, Remedy};
    for f in findings.iter_mut() {
        for r in f.remedies.iter_mut() {
            let (path, id, judged) = match r {
                Remedy::QuarantineFile {
                    path, id, judged, ..
                }
                | Remedy::RemoveLine {
                    path, id, judged, ..
                } => (path, id, judged),
                _ => continue,
            };
            let pin = host.file_id(&path.0).filter(|pin| match judged {
                Judged::Content(h) => pin.sha256 == *h,
                Judged::ExeOf(pid) => host
                    .ident(format!("/proc/{pid}/exe").as_bytes())
                    .is_some_and(|(d, i, _)| (d, i) == (pin.dev, pin.ino)),
                Judged::None => true,
            });
            *id = pin;
        }
    }
}
