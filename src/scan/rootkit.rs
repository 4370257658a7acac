//! The hidden-process and kernel-rootkit stage of a scan: the views read
//! during the CPU sample ([`RootkitViews`]), then the judging after it
//! (hidden tasks, unexplained CPU, hooks, BPF programs, hidden sockets).

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::ScanOptions;
use crate::collect::census::Reach;
use crate::collect::{self, process::Process, Snapshot};
use crate::detect::{self, Finding};
use crate::escape::escape;
use crate::host::{Host, PrivateMount};
use crate::report::model::{AllocatorSummary, CensusSummary, PidSpaceSummary, TaskCountsSummary};
use crate::rules::Rules;

/// What the stage adds to the scan.
#[derive(Default)]
pub(super) struct HiddenStage {
    pub findings: Vec<Finding>,
    pub limitations: Vec<String>,
    pub census: Option<CensusSummary>,
    pub accounting: Option<detect::hidden::CpuAccounting>,
    /// Processes reported as hidden or as a BPF rootkit's loader: not judged
    /// again as miners.
    pub hidden_pids: Vec<i32>,
    /// A hook or rootkit BPF program was found (the loaded-module views then
    /// read more).
    pub hook_suspect: bool,
    /// The vmallocinfo printer or the vmalloc code is hooked.
    pub vmalloc_hooked: bool,
    pub views_us: u64,
    pub deep_us: u64,
    pub confirm_sleep_us: u64,
    pub census_us: u64,
}

/// What the stage reads with and judges by.
#[derive(Clone, Copy)]
pub(super) struct Ctx<'a> {
    pub host: &'a Host,
    /// The private procfs, where one could be mounted.
    pub fresh_host: Option<&'a Host>,
    pub collect_opts: &'a collect::Options,
    pub opts: &'a ScanOptions,
    pub rules: &'a Rules,
    pub deadline: &'a super::Deadline,
}

/// Judges the views (joined from their thread) against the CPU sample.
pub(super) fn hidden_stage(
    ctx: Ctx<'_>,
    views: JoinHandle<RootkitViews>,
    snap: &Snapshot,
) -> HiddenStage {
    let Ctx {
        host,
        fresh_host,
        collect_opts,
        opts,
        rules,
        deadline,
    } = ctx;
    let mut out = HiddenStage::default();
    let tc = Instant::now();
    let live = host.is_live();
    let RootkitViews {
        tracefs: _tracefs,
        debugfs,
        hooks,
        mut hook_findings,
        progs,
        took,
    } = match views.join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    // The census runs after the sample, not during it: its PID-space probe
    // takes every CPU for as long as pid_max asks (4,194,304 PIDs under
    // systemd, and in every new PID namespace since Linux 6.14: 1.5 s here),
    // which would take CPU from the processes the sample measures.
    let mut acc = detect::hidden::account(snap);
    // Inside a child PID namespace (a container), /proc/stat counts the
    // whole machine but only the namespace's processes are visible:
    // the comparison cannot tell hidden CPU from other containers'.
    let nested = live && host.in_child_pid_namespace();
    if nested {
        out.limitations.push(
            "running inside a child PID namespace (a container): CPU used outside it cannot be told from hidden CPU, so the hidden-CPU check is not applicable, and the kernel's task counts are the whole machine's, so the PID space is swept only with --deep; run Quarry in the host's PID namespace (hostPID, docker run --pid=host) for both".into(),
        );
    }
    let big_enough = snap.elapsed >= Duration::from_millis(200);
    // The costly rootkit views run when something points at a rootkit.
    let pointed = if opts.deep {
        Some("--deep")
    } else if !hook_findings.is_empty() {
        Some("a kernel hook")
    } else if !nested && big_enough && acc.is_large() {
        Some("unexplained CPU")
    } else {
        None
    };
    let sweep = match pointed {
        // Pointed at a rootkit: every PID, including any root placed above
        // the counter (collect::census::PidSpace).
        Some(why) => collect::census::Sweep::Forced(why.into(), Reach::Whole),
        None if nested => collect::census::Sweep::OnlyForced,
        // CPU booked to a fork storm's tasks: a hidden task in the same
        // cgroup would hide behind it, so its PIDs are swept (not the
        // allocator: a storm is no sign of a rootkit).
        None if !acc.short_lived.is_empty() => {
            collect::census::Sweep::Forced("CPU booked to short-lived tasks".into(), Reach::InUse)
        }
        None => collect::census::Sweep::IfCountsDisagree,
    };
    let census = collect::census::take(host, fresh_host, sweep);
    if progs.programs.iter().any(|p| !p.helpers.is_empty()) {
        hook_findings.extend(bpf_findings(host, &progs, &census));
    }
    // Counts that disagree twice with nothing created meanwhile are no race.
    let quiet_mismatch = census
        .counts
        .as_ref()
        .is_some_and(|c| c.disagreement.is_some() && c.created == 0);
    let reason = pointed
        .or((!hook_findings.is_empty()).then_some("a kernel hook"))
        .or(quiet_mismatch.then_some("the kernel's task counts disagree with the listing"));
    out.views_us = (took + census.diag_time).as_micros() as u64;
    out.hook_suspect = !hook_findings.is_empty();
    out.vmalloc_hooked = hooks.enabled.iter().flatten().any(|e| {
        e.function == "s_show" || e.function.contains("vmalloc") || e.function.contains("vmap")
    });
    let mut extra = detect::hidden::ExtraViews::default();
    let mut allocator = None;
    let tdeep = Instant::now();
    let last = census.pid_max.saturating_sub(1);
    let upto = census.pid_space.upto.min(last);
    let mut ask_allocator: Option<AllocatorAsk> = None;
    let allocator_due = reason.is_some() && live;
    if allocator_due && deadline.skip("the PID-allocator probe") {
        out.limitations.push(format!(
            "the PID allocator was not asked ({}): the scan's deadline had passed",
            reason.unwrap_or_default()
        ));
    } else if live && reason.is_some() {
        extra.sched = collect::sched::read(host, debugfs.as_ref()).ok();
        let mut ask =
            AllocatorAsk::new(detect::hidden::allocator_explained(&census, snap), deadline);
        // The PIDs that can be in use first (collect::census::PidSpace).
        ask.range(1, upto);
        ask.apply(&mut extra);
        ask_allocator = Some(ask);
    }
    let mut hidden = detect::hidden::find(host, fresh_host, &census, snap, &extra);
    // The rest of the range only with --deep, or when CPU no task accounts
    // for says something runs hidden and nothing hidden was found yet (a
    // task root placed above the PID counter). A hook alone is reported as
    // it is: asking about 4,194,304 PIDs takes 20 s here.
    let rest_due = opts.deep || (!nested && big_enough && acc.is_large());
    if let Some(ask) = ask_allocator.as_mut() {
        if rest_due && hidden.is_empty() && ask.whole() && upto < last {
            ask.range(upto + 1, last);
            ask.apply(&mut extra);
            hidden = detect::hidden::find(host, fresh_host, &census, snap, &extra);
        }
    }
    // Tasks every lookup denies: recover them from the scheduler's list.
    if extra.sched.is_none() && live && hidden.iter().any(|h| h.process.is_none()) {
        extra.sched = collect::sched::read(host, debugfs.as_ref()).ok();
        if extra.sched.is_some() {
            hidden = detect::hidden::find(host, fresh_host, &census, snap, &extra);
        }
    }
    if let (Some(ask), Some(reason)) = (ask_allocator, reason) {
        allocator = Some(ask.summary(reason, &mut out.limitations));
    }
    out.deep_us = tdeep.elapsed().as_micros() as u64;
    out.hidden_pids = hidden.iter().map(|h| h.pid).collect();
    // A BPF rootkit's loader is reported as what it is (its kernel.hook
    // finding names and removes it), not judged again as a miner.
    out.hidden_pids.extend(
        hook_findings
            .iter()
            .filter(|f| f.rule == "kernel.hook")
            .filter_map(|f| f.subject.pid),
    );
    // A second, shorter sample: confirms unexplained CPU, and measures
    // what the hidden processes found use over it.
    let confirm = !nested
        && acc.is_large()
        && big_enough
        && !deadline.skip("the second sample confirming unexplained CPU");
    if live && (confirm || !hidden.is_empty()) {
        let mut o = collect_opts.clone();
        o.interval = opts
            .interval
            .clamp(Duration::from_millis(500), Duration::from_secs(1));
        out.confirm_sleep_us = o.interval.as_micros() as u64;
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
        let share = detect::hidden::attribute(&mut hidden, &before, &after, secs, snap.host.cpus);
        acc.attribute_hidden(share);
        if confirm {
            if let Ok(snap2) = snap2 {
                let mut acc2 = detect::hidden::account(&snap2);
                acc2.attribute_hidden(share);
                if let Some(f) = detect::hidden::cpu_finding(&acc, &acc2, &hidden) {
                    acc.stated = Some(detect::hidden::stated(&acc, &acc2));
                    out.findings.push(f);
                }
            }
        }
    }
    if !nested {
        out.findings
            .extend(detect::hidden::short_lived_finding(&acc));
    }
    out.findings
        .extend(detect::hidden::findings(&hidden, snap, rules));
    out.findings.extend(detect::hidden::socket_findings(
        &census, rules, &hidden, host, fresh_host,
    ));
    out.findings.extend(hook_findings);
    out.limitations.extend(hooks.notes.iter().cloned());
    if !census.probed && !live {
        out.limitations.push(
        "system-call probes of the PID space were skipped (offline root): hidden processes are found only from cgroup and children lists".into(),
    );
    }
    out.census = Some(CensusSummary {
        pid_max: census.pid_max,
        pid_space: PidSpaceSummary {
            upto: census.pid_space.upto,
            reason: census.pid_space.reason.clone(),
        },
        swept_upto: if census.probed { census.swept_upto } else { 0 },
        listed_processes: census.listed.len(),
        threads: census.tasks.len(),
        cgroup_hierarchies: census.cgroup_roots.clone(),
        probed: census.probed,
        probe_answers: census.probe_kill.len(),
        private_procfs: fresh_host.is_some(),
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
        sweep: census.sweep_reason.clone(),
        task_counts: census.counts.as_ref().map(|c| TaskCountsSummary {
            loadavg: c.loadavg.map(|(a, b)| [a, b]),
            sysinfo: c.sysinfo.map(|(a, b)| [a, b]),
            created: c.created,
            visible: c.visible,
            attempts: c.attempts,
            disagreement: c.disagreement.clone(),
        }),
    });
    out.accounting = Some(acc);
    out.census_us = tc.elapsed().as_micros() as u64;
    out
}

/// The PID-allocator probe over one range or two, merged.
struct AllocatorAsk<'a> {
    explained: std::collections::BTreeSet<i32>,
    deadline: &'a super::Deadline,
    asked: usize,
    answer: Option<Result<collect::pidalloc::Answer, collect::pidalloc::NotApplicable>>,
}

impl<'a> AllocatorAsk<'a> {
    fn new(explained: std::collections::BTreeSet<i32>, deadline: &'a super::Deadline) -> Self {
        AllocatorAsk {
            explained,
            deadline,
            asked: 0,
            answer: None,
        }
    }

    /// Asks about `lo..=hi`, less the PIDs the views explain.
    fn range(&mut self, lo: i32, hi: i32) {
        if lo > hi {
            return;
        }
        let pids: Vec<i32> = (lo..=hi).filter(|p| !self.explained.contains(p)).collect();
        self.asked += pids.len();
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let r = collect::pidalloc::probe(&pids, workers, self.deadline.at());
        self.answer = Some(match (self.answer.take(), r) {
            (Some(Ok(mut a)), Ok(b)) => {
                a.held.extend(b.held);
                a.probed += b.probed;
                a.created += b.created;
                a.helpers.extend(b.helpers);
                a.took += b.took;
                a.cut |= b.cut;
                Ok(a)
            }
            (Some(Ok(a)), Err(_)) => Ok(a),
            (_, r) => r,
        });
    }

    /// Answered, and not cut by the deadline.
    fn whole(&self) -> bool {
        matches!(&self.answer, Some(Ok(a)) if !a.cut)
    }

    /// Hands what the allocator holds to the hidden-process judge.
    fn apply(&self, extra: &mut detect::hidden::ExtraViews) {
        if let Some(Ok(a)) = &self.answer {
            extra.allocator_usable = true;
            extra.allocator_held = a.held.clone();
        }
    }

    fn summary(self, reason: &str, limitations: &mut Vec<String>) -> AllocatorSummary {
        match self.answer.unwrap_or_else(|| Ok(Default::default())) {
            Ok(a) => {
                if a.cut {
                    self.deadline.cut(&format!(
                        "the PID-allocator probe ({} of {} PIDs asked)",
                        a.probed, self.asked
                    ));
                }
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
        }
    }
}

/// What the hidden-process and rootkit checks read during the CPU sample:
/// the kernel's records of hooks and the BPF programs (a few small reads;
/// the census, which is not small, follows the sample).
pub(super) struct RootkitViews {
    /// Private tracefs and debugfs mounts where the machine has none: kept
    /// open for the later reads (the scheduler's list) and unmounted on drop.
    tracefs: Option<PrivateMount>,
    debugfs: Option<PrivateMount>,
    hooks: collect::hooks::Hooks,
    /// Hooks that are findings in themselves (BPF programs become findings
    /// once the census names their holders).
    hook_findings: Vec<Finding>,
    progs: collect::bpf::Programs,
    /// The hook and BPF reads.
    took: Duration,
}

impl RootkitViews {
    pub(super) fn read(host: &Host) -> RootkitViews {
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
        let hook_findings = detect::hooks::findings(&hooks, &listed_modules);
        let mut took = tv.elapsed();
        let tb = Instant::now();
        let progs = collect::bpf::enumerate(host);
        took += tb.elapsed();
        RootkitViews {
            tracefs,
            debugfs,
            hooks,
            hook_findings,
            progs,
            took,
        }
    }
}

/// Findings for BPF programs that call rootkit helpers, with the processes
/// holding them and the kernel's own warnings about them.
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
