//! `quarry scan`: collect → detect → report.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::collect::process::cgroup_context;
use crate::collect::{self, process::Process, Snapshot};
use crate::detect::{self, cpu::CpuVerdict, Finding, Severity};
use crate::escape::{escape, escape_args};
use crate::host::{FreshProc, Host, PrivateMount};
use crate::rules::Rules;

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
        }
    }
}

/// What the module checks saw (for the report).
#[derive(Debug, Clone, Serialize)]
pub struct ModulesSummary {
    /// False on a kernel without loadable-module support.
    pub loaded_checks_applicable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_applicable_reason: Option<String>,
    pub listed: usize,
    pub sys_module_loadable: usize,
    pub kallsyms_tagged: usize,
    pub tracefs_tagged: Option<usize>,
    pub vmalloc_load_module: Option<usize>,
    pub tainted: Option<u64>,
    pub taint_flags: String,
    pub module_files: usize,
    pub walk: collect::modules::WalkStats,
}

/// What the cross-view census saw (for the report).
#[derive(Debug, Clone, Serialize)]
pub struct CensusSummary {
    pub pid_max: i32,
    pub listed_processes: usize,
    pub threads: usize,
    pub cgroup_hierarchies: Vec<String>,
    pub probed: bool,
    pub probe_answers: usize,
    pub private_procfs: bool,
    pub hidden: usize,
    /// TCP/UDP sockets whose inode no visible process holds (kernel sockets
    /// legitimately have none).
    pub orphan_sockets: usize,
    pub orphan_unix_sockets: usize,
    pub probe_ms: f64,
    pub census_ms: f64,
    /// The PID-allocator probe (clone3 set_tid), when it ran: PIDs asked,
    /// PIDs held that nothing explains, milliseconds; or why it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocator: Option<AllocatorSummary>,
    /// Where the scheduler's task list was read, when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sched_source: Option<String>,
    /// Functions with an ftrace callback (tracefs enabled_functions), if readable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hooked_functions: Option<usize>,
    /// kprobes registered (debugfs kprobes/list), if readable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kprobes: Option<usize>,
    /// Whether TCP sockets were compared between /proc/net/tcp{,6} and inet_diag.
    pub inet_diag_compared: bool,
    /// BPF programs loaded (bpf() BPF_PROG_GET_NEXT_ID), on the live host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bpf_programs: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AllocatorSummary {
    /// Why it ran: `unexplained CPU`, `a kernel hook`, `--deep`.
    pub reason: String,
    pub probed: usize,
    pub held_unexplained: usize,
    pub ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_applicable: Option<String>,
}

/// The JSON schema name and version (docs/JSON-SCHEMA.md).
pub const SCHEMA: &str = "quarry.scan";
pub const SCHEMA_VERSION: u32 = 1;

/// A top CPU consumer, with the context an administrator needs.
#[derive(Debug, Clone, Serialize)]
pub struct TopProcess {
    pub pid: i32,
    pub user: String,
    pub uid: Option<u32>,
    pub cpu_percent: f64,
    pub threads: i64,
    pub name: String,
    pub exe: Option<String>,
    /// `file`, `deleted`, `memory-only`, `kernel-thread` or `unreadable`.
    pub exe_state: &'static str,
    pub cmdline: String,
    pub cwd: Option<String>,
    pub age_seconds: Option<u64>,
    pub parents: Vec<Parent>,
    pub unit: Option<String>,
    pub container: Option<String>,
    /// `malicious` / `suspicious` when a miner finding names this process.
    pub verdict: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Parent {
    pub pid: i32,
    pub name: String,
}

/// Counts for the summary line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub malicious: usize,
    pub suspicious: usize,
    pub findings: usize,
    pub highest: Option<Severity>,
}

/// The whole result of a scan.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub schema_version: u32,
    pub quarry_version: &'static str,
    pub started: String,
    pub host: collect::HostInfo,
    pub cpu: CpuVerdict,
    pub top: Vec<TopProcess>,
    pub findings: Vec<Finding>,
    pub summary: Summary,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub census: Option<CensusSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_accounting: Option<detect::hidden::CpuAccounting>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modules: Option<ModulesSummary>,
    /// How it got in: each case process's lineage and door, and the case's
    /// timeline (only when there is a case).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<detect::entry::EntryReport>,
    pub limitations: Vec<String>,
    pub timing: collect::Timing,
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
    // busy share) and beside the census after it.
    let walk = on(Check::Modules).then(|| {
        let (h, roots, limits) = (
            host.clone(),
            opts.module_roots.clone(),
            opts.walk_limits.clone(),
        );
        std::thread::spawn(move || {
            let t = Instant::now();
            let r = collect::modules::find_files(&h, &roots, &limits);
            (r, t.elapsed())
        })
    });
    // The rootkit views do not depend on the sample: they are read during
    // it, on their own thread (at normal priority: the census must not wait
    // behind a miner; its CPU is Quarry's, left out of the busy share).
    let views = on(Check::Hidden).then(|| {
        let (h, f) = (host.clone(), fresh.as_ref().map(|f| f.host().clone()));
        std::thread::spawn(move || RootkitViews::read(&h, f.as_ref()))
    });
    let snap = collect::sample(host, &collect_opts)?;
    let t = Instant::now();
    let me = host.is_live().then(|| std::process::id() as i32);
    let (cpu, cpu_finding) = detect::cpu::assess(&snap, opts.cpu_threshold, me);
    let mut findings = Vec::new();
    let mut census_summary = None;
    let mut census_us = 0;
    let mut confirm_sleep_us = 0;
    let mut cpu_accounting = None;
    let mut hidden_pids = Vec::new();
    let mut hook_suspect = false;
    let mut vmalloc_hooked = false;
    let mut rootkit_views_us = 0;
    let mut rootkit_deep_us = 0;
    if on(Check::Hidden) {
        let fresh_host = fresh.as_ref().map(|f| f.host());
        let tc = Instant::now();
        let live = host.is_live();
        let RootkitViews {
            tracefs: _tracefs,
            debugfs,
            hooks,
            hook_findings,
            census,
            progs,
            took,
        } = match views.map(|v| v.join()) {
            Some(Ok(v)) => v,
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => RootkitViews::read(host, fresh_host),
        };
        rootkit_views_us = took.as_micros() as u64;
        hook_suspect = !hook_findings.is_empty();
        vmalloc_hooked = hooks.enabled.iter().flatten().any(|e| {
            e.function == "s_show" || e.function.contains("vmalloc") || e.function.contains("vmap")
        });
        let mut acc = detect::hidden::account(&snap);
        // Inside a child PID namespace (a container), /proc/stat counts the
        // whole machine but only the namespace's processes are visible:
        // the comparison cannot tell hidden CPU from other containers'.
        let nested = live && host.in_child_pid_namespace();
        if nested {
            limitations.push(
                "running inside a child PID namespace (a container): CPU used outside it cannot be told from hidden CPU, so the hidden-CPU check is not applicable; run Quarry in the host's PID namespace (hostPID) for it".into(),
            );
        }
        let big_enough = snap.elapsed >= Duration::from_millis(200);
        // The costly rootkit views run when something points at a rootkit.
        let reason = if opts.deep {
            Some("--deep")
        } else if !hook_findings.is_empty() {
            Some("a kernel hook")
        } else if !nested && big_enough && acc.is_large() {
            Some("unexplained CPU")
        } else {
            None
        };
        let mut extra = detect::hidden::ExtraViews::default();
        let mut allocator = None;
        let tdeep = Instant::now();
        if let (Some(reason), true) = (reason, live) {
            extra.sched = collect::sched::read(host, debugfs.as_ref()).ok();
            let explained = detect::hidden::allocator_explained(&census, &snap);
            let pids: Vec<i32> = (1..census.pid_max)
                .filter(|p| !explained.contains(p))
                .collect();
            let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
            allocator = Some(match collect::pidalloc::probe(&pids, workers) {
                Ok(a) => {
                    extra.allocator_usable = true;
                    extra.allocator_held = a.held.clone();
                    AllocatorSummary {
                        reason: reason.into(),
                        probed: a.probed,
                        held_unexplained: a.held.len(),
                        ms: a.took.as_secs_f64() * 1e3,
                        not_applicable: None,
                    }
                }
                Err(e) => {
                    limitations.push(format!(
                        "the PID allocator could not be asked ({}): a task hidden from every list and lookup is found only through the CPU it uses",
                        e.0
                    ));
                    AllocatorSummary {
                        reason: reason.into(),
                        probed: 0,
                        held_unexplained: 0,
                        ms: 0.0,
                        not_applicable: Some(e.0),
                    }
                }
            });
        }
        rootkit_deep_us = tdeep.elapsed().as_micros() as u64;
        let mut hidden = detect::hidden::find(host, fresh_host, &census, &snap, &extra);
        // Tasks every lookup denies: recover them from the scheduler's list.
        if extra.sched.is_none() && live && hidden.iter().any(|h| h.process.is_none()) {
            extra.sched = collect::sched::read(host, debugfs.as_ref()).ok();
            if extra.sched.is_some() {
                hidden = detect::hidden::find(host, fresh_host, &census, &snap, &extra);
            }
        }
        hidden_pids = hidden.iter().map(|h| h.pid).collect();
        // A BPF rootkit's loader is reported as what it is (its kernel.hook
        // finding names and removes it), not judged again as a miner.
        hidden_pids.extend(
            hook_findings
                .iter()
                .filter(|f| f.rule == "kernel.hook")
                .filter_map(|f| f.subject.pid),
        );
        // A second, shorter sample: confirms unexplained CPU, and measures
        // what the hidden processes found use over it.
        let confirm = !nested && acc.is_large() && big_enough;
        if live && (confirm || !hidden.is_empty()) {
            let mut o = collect_opts.clone();
            o.interval = opts
                .interval
                .clamp(Duration::from_millis(500), Duration::from_secs(1));
            confirm_sleep_us = o.interval.as_micros() as u64;
            let need_sched = hidden.iter().any(|h| h.process.is_none());
            let sched_now = || {
                need_sched
                    .then(|| {
                        collect::sched::read(host, debugfs.as_ref())
                            .ok()
                            .map(|x| x.0)
                    })
                    .flatten()
            };
            let ticks = snap.ticks_per_second;
            let s0 = sched_now();
            let before: Vec<Option<f64>> = hidden
                .iter()
                .map(|h| detect::hidden::cpu_seconds(host, fresh_host, s0.as_ref(), h, ticks))
                .collect();
            let t0 = Instant::now();
            let snap2 = collect::sample(host, &o);
            let s1 = sched_now();
            let after: Vec<Option<f64>> = hidden
                .iter()
                .map(|h| detect::hidden::cpu_seconds(host, fresh_host, s1.as_ref(), h, ticks))
                .collect();
            let secs = t0.elapsed().as_secs_f64();
            let share =
                detect::hidden::attribute(&mut hidden, &before, &after, secs, snap.host.cpus);
            acc.attribute_hidden(share);
            if confirm {
                if let Ok(snap2) = snap2 {
                    let mut acc2 = detect::hidden::account(&snap2);
                    acc2.attribute_hidden(share);
                    findings.extend(detect::hidden::cpu_finding(&acc, &acc2, &hidden));
                }
            }
        }
        findings.extend(detect::hidden::findings(&hidden, &snap, rules));
        findings.extend(detect::hidden::socket_findings(
            &census, rules, &hidden, host, fresh_host,
        ));
        findings.extend(hook_findings);
        limitations.extend(hooks.notes.iter().cloned());
        if !census.probed {
            limitations.push(
            "system-call probes of the PID space were skipped (offline root): hidden processes are found only from cgroup and children lists".into(),
        );
        }
        census_summary = Some(CensusSummary {
            pid_max: census.pid_max,
            listed_processes: census.listed.len(),
            threads: census.tasks.len(),
            cgroup_hierarchies: census.cgroup_roots.clone(),
            probed: census.probed,
            probe_answers: census.probe_kill.len(),
            private_procfs: fresh.is_some(),
            hidden: hidden.len(),
            orphan_sockets: census.orphan_inet.len(),
            orphan_unix_sockets: census.orphan_unix,
            probe_ms: census.probe_time.as_secs_f64() * 1e3,
            census_ms: census.total_time.as_secs_f64() * 1e3,
            allocator,
            sched_source: extra.sched.as_ref().map(|(_, s)| s.clone()),
            hooked_functions: hooks.enabled.as_ref().map(Vec::len),
            kprobes: hooks.kprobes.as_ref().map(Vec::len),
            bpf_programs: host.is_live().then_some(progs.programs.len()),
            inet_diag_compared: census.diag_checked,
        });
        cpu_accounting = Some(acc);
        census_us = tc.elapsed().as_micros() as u64;
    }
    if on(Check::Preload) {
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
    if let Some(handle) = walk {
        let ((files, walk), took) = handle.join().expect("module walk thread");
        walk_us = took.as_micros() as u64;
        if let Some(t) = &walk.truncated {
            limitations.push(format!(
                "the module-file walk was cut short ({t}); narrow it with --module-path"
            ));
        }
        let mut loaded = collect::modules::read_loaded(host, hook_suspect);
        loaded.vmalloc_printer_hooked = vmalloc_hooked;
        if let Some(r) = &loaded.reason {
            limitations.push(r.clone());
        }
        let mut files = files;
        let release = if files.is_empty() {
            String::new()
        } else {
            let ctx = collect::modules::place::Context::load(host);
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
    let persist_files = if on(Check::Persistence) {
        collect::persistence::collect(host, &snap.users)
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
            snap.inspections = collect::inspect::inspect(host, &sigs, &snap, &pids);
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
    if on(Check::Entry) {
        let te = Instant::now();
        let (mut more, report, notes) = entry_stage(host, &snap, &persist_files, &mut findings);
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
    };
    let mut timing = snap.timing.clone();
    timing.detect_us = t.elapsed().as_micros() as u64;
    timing.census_us = census_us;
    timing.rootkit_views_us = rootkit_views_us;
    timing.rootkit_deep_us = rootkit_deep_us;
    timing.module_walk_us = walk_us;
    timing.inspect_us = inspect_us;
    timing.entry_us = entry_us;
    timing.confirm_interval_us = confirm_sleep_us;
    timing.work_us = timing.first_pass_us + timing.second_pass_us + timing.detect_us
        - confirm_sleep_us.min(timing.detect_us);
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
        census: census_summary,
        cpu_accounting,
        modules: modules_summary,
        entry,
        limitations: snap
            .limitations
            .iter()
            .cloned()
            .chain(limitations)
            .collect(),
        timing,
    };
    Ok((report, snap))
}

/// Rules whose findings make a case: what got in and what keeps it.
fn is_case(f: &Finding) -> bool {
    f.rule.starts_with("miner.") && f.verdict.is_some()
        || f.rule == "hidden.process"
        || f.rule.starts_with("persistence.")
        || f.rule == "entry.redis-write"
        || f.rule == "kernel.hook" && f.subject.pid.is_some()
}

/// How it got in: doors left open (`entry.*` findings), the lineage and door
/// of every case process (added to its findings' evidence), and the case's
/// timeline. Returns the new findings, the report section and notes.
fn entry_stage(
    host: &Host,
    snap: &Snapshot,
    persist: &[collect::persistence::PersistFile],
    findings: &mut [Finding],
) -> (Vec<Finding>, detect::entry::EntryReport, Vec<String>) {
    use detect::entry;
    let doors = collect::entry::collect(host, snap);
    let case: Vec<usize> = (0..findings.len())
        .filter(|&i| is_case(&findings[i]))
        .collect();
    let root_pw = doors
        .sshd
        .as_ref()
        .is_some_and(|s| !s.conf.root_password_logins().is_empty());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    // Login records are read only when they can answer something: a case,
    // or an SSH door whose use they show.
    let logins = (!case.is_empty() || root_pw).then(|| collect::entry::logins::read(host, now));
    let sha = |b: &[u8]| Some(collect::modules::sha256_hex(b));
    let out = detect::entry::findings(&doors, persist, logins.as_ref(), &snap.users, &sha);
    let mut report = entry::EntryReport::default();
    let mut notes: Vec<String> = doors
        .notes
        .iter()
        .map(|n| format!("configuration not understood: {n}"))
        .collect();
    let redis_written: Vec<usize> = (0..out.len())
        .filter(|&i| out[i].rule == "entry.redis-write")
        .collect();
    if case.is_empty() && redis_written.is_empty() {
        return (out, report, notes);
    }
    // Lineage of each case process, once per PID.
    let mut pids: Vec<i32> = case
        .iter()
        .filter_map(|&i| findings[i].subject.pid)
        .collect();
    pids.sort();
    pids.dedup();
    let mut traces = Vec::new();
    for pid in pids {
        let t = collect::entry::lineage::trace(host, snap, pid);
        let rules: Vec<String> = findings
            .iter()
            .filter(|f| f.subject.pid == Some(pid) && is_case(f))
            .map(|f| f.rule.clone())
            .collect();
        let o = entry::origin(&t, rules, &snap.users);
        for f in findings
            .iter_mut()
            .filter(|f| f.subject.pid == Some(pid) && is_case(f))
        {
            entry::annotate(f, &o);
        }
        report.origins.push(o);
        traces.push(t);
    }
    // The files of the case, with what each is.
    let mut files: Vec<(String, crate::host::FileMeta, &'static str)> = Vec::new();
    for o in &report.origins {
        if let Some(Ok(exe)) = snap.processes.get(&o.pid).map(|p| p.exe.as_ref()) {
            if !exe.memfd && !exe.deleted {
                files.push((
                    escape(&exe.path),
                    host.file_meta(crate::host::bytes_to_path(&exe.path)),
                    "written (the executable)",
                ));
            }
        }
    }
    // A Redis dump is named as such first (it is also a start-up entry).
    for f in redis_written
        .iter()
        .map(|&i| &out[i])
        .chain(case.iter().map(|&i| &findings[i]))
    {
        let Some(path) = &f.subject.path else {
            continue;
        };
        if let Some(pf) = persist.iter().find(|p| escape(&p.path) == *path) {
            if !files.iter().any(|(p, _, _)| p == path) {
                let what = if f.rule == "entry.redis-write" {
                    "written (a Redis dump)"
                } else {
                    "changed (start-up entry)"
                };
                files.push((path.clone(), pf.meta.clone(), what));
            }
        }
    }
    // When each open door's service started: the door was open since then.
    let mut door_rules: std::collections::BTreeMap<i32, Vec<&str>> = Default::default();
    for f in out.iter().filter(|f| f.rule.starts_with("entry.")) {
        if let Some(pid) = f.subject.pid {
            let rules = door_rules.entry(pid).or_default();
            if !rules.contains(&f.rule.as_str()) {
                rules.push(&f.rule);
            }
        }
    }
    let mut door_events = Vec::new();
    for (pid, rules) in door_rules {
        let Some(p) = snap.processes.get(&pid) else {
            continue;
        };
        let l = collect::entry::lineage::link(snap, p);
        if let Some(start) = l.start {
            door_events.push(entry::Event::new(
                start,
                entry::RANK_START,
                format!(
                    "PID {} {} started, serving an open door [{}]",
                    l.pid,
                    l.name,
                    rules.join(", ")
                ),
                format!("process start time (ps -o lstart= -p {})", l.pid),
            ));
        }
    }
    report.timeline = entry::timeline(
        &report.origins,
        &traces,
        &files,
        logins.as_ref(),
        &door_events,
    );
    if logins.as_ref().is_some_and(|l| l.files.is_empty()) {
        notes.push("no login records (/var/log/wtmp, btmp, auth.log, secure) could be read: logins are missing from the timeline; on a journald-only machine, `journalctl -u ssh` shows them".into());
    }
    (out, report, notes)
}

/// Findings for BPF programs that call rootkit helpers, with the processes
/// holding them and the kernel's own warnings about them.
/// What the hidden-process and rootkit checks read before judging: the
/// kernel's records of hooks, the census of every view of tasks, and the BPF
/// programs.
struct RootkitViews {
    /// Private tracefs and debugfs mounts where the machine has none: kept
    /// open for the later reads (the scheduler's list) and unmounted on drop.
    tracefs: Option<PrivateMount>,
    debugfs: Option<PrivateMount>,
    hooks: collect::hooks::Hooks,
    /// Hooks and BPF programs that are findings in themselves.
    hook_findings: Vec<Finding>,
    census: collect::census::Census,
    progs: collect::bpf::Programs,
    /// The hook, BPF and socket-diagnostics reads (not the census's walk of
    /// the process lists, reported apart).
    took: Duration,
}

impl RootkitViews {
    fn read(host: &Host, fresh: Option<&Host>) -> RootkitViews {
        // The kernel's records of hooks: a few small files, every scan.
        // tracefs and debugfs are mounted privately where the machine has none.
        let live = host.is_live();
        let tracefs = (live && !host.exists("/sys/kernel/tracing/enabled_functions"))
            .then(|| PrivateMount::open("tracefs").ok())
            .flatten();
        let debugfs = (live && !host.exists("/sys/kernel/debug/sched"))
            .then(|| PrivateMount::open("debugfs").ok())
            .flatten();
        let tv = Instant::now();
        let hooks = collect::hooks::read(host, tracefs.as_ref(), debugfs.as_ref());
        let listed_modules: std::collections::BTreeSet<String> = host
            .read_text("/proc/modules")
            .map(|t| {
                collect::modules::parse_proc_modules(&t)
                    .into_keys()
                    .collect()
            })
            .unwrap_or_default();
        let mut hook_findings = detect::hooks::findings(&hooks, &listed_modules);
        let mut took = tv.elapsed();
        let census = collect::census::take(host, fresh);
        let tb = Instant::now();
        let progs = collect::bpf::enumerate(host);
        took += tb.elapsed() + census.diag_time;
        if progs.programs.iter().any(|p| !p.helpers.is_empty()) {
            hook_findings.extend(bpf_findings(host, &progs, &census));
        }
        RootkitViews {
            tracefs,
            debugfs,
            hooks,
            hook_findings,
            census,
            progs,
            took,
        }
    }
}

fn bpf_findings(
    host: &Host,
    progs: &collect::bpf::Programs,
    census: &collect::census::Census,
) -> Vec<Finding> {
    let pids: Vec<i32> = census.listed.iter().copied().collect();
    let holders: std::collections::BTreeMap<u32, Vec<detect::hooks::Holder>> =
        collect::bpf::holders(host, &pids)
            .into_iter()
            .map(|(id, list)| {
                let hs = list
                    .into_iter()
                    .map(|(pid, fd)| {
                        let p = Process::read(host, pid);
                        detect::hooks::Holder {
                            pid,
                            fd,
                            remedies: p
                                .as_ref()
                                .map(detect::miner::process_remedies)
                                .unwrap_or_default(),
                            name: p.as_ref().map(|p| escape(p.name())).unwrap_or_default(),
                            exe: p
                                .as_ref()
                                .and_then(|p| p.exe.as_ref().ok().map(|e| escape(&e.link)))
                                .unwrap_or_else(|| "?".into()),
                        }
                    })
                    .collect();
                (id, hs)
            })
            .collect();
    let warnings: Vec<String> = collect::modules::read_kmsg(host)
        .unwrap_or_default()
        .into_iter()
        .filter(|l| l.contains("bpf_probe_write_user") || l.contains("bpf_override_return"))
        .collect();
    let uptime = host
        .read_text("/proc/uptime")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok());
    detect::hooks::bpf_findings(progs, &holders, &warnings, uptime)
}

/// Processes whose content is inspected: any miner signal, or at least
/// [`detect::miner::HIGH_CPU_PERCENT`] of one CPU (issue 9); never Quarry itself, a
/// kernel thread, or a process the hidden-process check reports.
fn inspection_targets(snap: &Snapshot, rules: &Rules, me: Option<i32>, hidden: &[i32]) -> Vec<i32> {
    snap.processes
        .values()
        .filter(|p| Some(p.pid) != me && !p.is_kernel_thread() && !hidden.contains(&p.pid))
        .filter(|p| {
            // A sealed memfd alone is what runc and systemd run: not a reason.
            p.cpu_percent >= detect::miner::HIGH_CPU_PERCENT
                || detect::miner::signals(snap, rules, p, &[])
                    .iter()
                    .any(|s| !(s.id == "exe-memfd" && s.weight <= 1))
        })
        .map(|p| p.pid)
        .collect()
}

/// A process as the persistence links see it: its executable's path,
/// identity and SHA-256 (through `/proc/PID/exe`, so a deleted file has them).
fn flagged(
    host: &Host,
    snap: &Snapshot,
    pid: i32,
    malicious: bool,
) -> Option<detect::persistence::Flagged> {
    let p = snap.processes.get(&pid);
    let exe = p
        .and_then(|p| p.exe.as_ref().ok())
        .filter(|e| !e.memfd)
        .map(|e| e.path.clone());
    let name = p
        .map(|p| String::from_utf8_lossy(p.name()).into_owned())
        .unwrap_or_default();
    let exe_link = format!("/proc/{pid}/exe");
    Some(detect::persistence::Flagged {
        pid,
        name,
        exe,
        exe_id: host.ident(exe_link.as_bytes()),
        sha256: snap
            .inspections
            .get(&pid)
            .and_then(|i| i.exe_sha256.clone())
            .or_else(|| host.sha256_of(exe_link.as_bytes())),
        malicious,
    })
}

fn count_verdict(f: &[Finding], v: &str) -> usize {
    f.iter().filter(|f| f.verdict.as_deref() == Some(v)).count()
}

fn top_processes(host: &Host, snap: &Snapshot, findings: &[Finding], n: usize) -> Vec<TopProcess> {
    let mut procs: Vec<&Process> = snap.processes.values().collect();
    procs.sort_by(|a, b| {
        b.cpu_percent
            .total_cmp(&a.cpu_percent)
            .then(a.pid.cmp(&b.pid))
    });
    // Idle processes are noise in a "who is eating the CPU" list, and so is
    // Quarry itself (its module walk runs during the sample; its share is in
    // `cpu.quarry_percent`).
    let me = host.is_live().then(|| std::process::id() as i32);
    procs
        .into_iter()
        .filter(|p| p.cpu_percent > 0.0 && Some(p.pid) != me)
        .take(n)
        .map(|p| {
            let (exe, exe_state) = match &p.exe {
                Ok(e) if e.memfd => (Some(escape(&e.link)), "memory-only"),
                Ok(e) if e.deleted => (Some(escape(&e.link)), "deleted"),
                Ok(e) => (Some(escape(&e.link)), "file"),
                Err(_) if p.is_kernel_thread() => (None, "kernel-thread"),
                Err(_) => (None, "unreadable"),
            };
            let cgroup = host
                .read(format!("/proc/{}/cgroup", p.pid))
                .unwrap_or_default();
            let (unit, container) = cgroup_context(&cgroup);
            TopProcess {
                pid: p.pid,
                user: p
                    .uid
                    .map_or_else(|| "?".into(), |u| escape(snap.users.name(u).as_bytes())),
                uid: p.uid,
                cpu_percent: round1(p.cpu_percent),
                threads: p.stat.num_threads,
                name: escape(p.name()),
                exe,
                exe_state,
                cmdline: escape_args(&p.cmdline),
                cwd: host
                    .read_link(format!("/proc/{}/cwd", p.pid))
                    .ok()
                    .map(|c| escape(&c)),
                age_seconds: snap.age_seconds(p),
                parents: snap
                    .ancestors(p.pid)
                    .into_iter()
                    .map(|(pid, n)| Parent {
                        pid,
                        name: escape(&n),
                    })
                    .collect(),
                unit,
                container,
                verdict: findings
                    .iter()
                    .find(|f| f.verdict.is_some() && f.subject.pid == Some(p.pid))
                    .and_then(|f| f.verdict.clone()),
            }
        })
        .collect()
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
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
