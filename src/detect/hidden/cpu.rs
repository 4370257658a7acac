//! CPU time nobody accounts for: `/proc/stat` against the visible
//! processes, their reaped children, the cgroups short-lived tasks ran in,
//! and the hidden processes Quarry found (`hidden.cpu`, `cpu.short-lived`).

use std::collections::BTreeMap;

use serde::Serialize;

use super::Hidden;
use crate::collect::process::Process;
use crate::collect::sched::SchedTask;
use crate::collect::Snapshot;
use crate::detect::{Evidence, Finding, Severity, Subject, Technique};
use crate::escape::escape;
use crate::host::Host;

/// Unexplained CPU (percent of all CPUs) at which `hidden.cpu` is raised, if a
/// second sample confirms it. Clean machines measured here stay within ±1 %.
pub const UNEXPLAINED_ALERT_PERCENT: f64 = 10.0;

/// CPU time per process creation that no task's counters keep: the end of
/// `exit()` after the final accounting a parent collects. Measured here: a
/// storm of 10,000 fork+exit per second left 12 % of two CPUs unexplained,
/// about 24 µs each; 30 µs is used so that storms never raise `hidden.cpu`.
pub const EXIT_OVERHEAD_SECONDS: f64 = 30e-6;

/// Average CPU share of one CPU since the process started.
pub(super) fn lifetime_cpu(snap: &Snapshot, p: &Process) -> f64 {
    let ticks = snap.ticks_per_second as f64;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let started = snap.stat1.boot_time as f64 + p.stat.starttime as f64 / ticks;
    let age = (now - started).max(0.1);
    100.0 * (p.stat.cpu_ticks() as f64 / ticks) / age
}

/// CPU accounting over the interval: `/proc/stat` against the processes.
#[derive(Debug, Clone, Serialize)]
pub struct CpuAccounting {
    pub interval_seconds: f64,
    /// Task time (user+nice+system) from /proc/stat, % of all CPUs.
    pub kernel_busy_percent: f64,
    /// Time of visible processes (threads, and children reaped meanwhile), %.
    pub visible_percent: f64,
    /// Time of processes Quarry recovered through a private procfs, %.
    pub recovered_percent: f64,
    /// kernel − visible − recovered, %.
    pub unexplained_percent: f64,
    /// The part of `recovered_percent` used by hidden processes Quarry found
    /// outside every procfs listing (measured through their `/proc/PID/stat`
    /// or the scheduler's task list): CPU still hidden from ps and top.
    pub hidden_measured_percent: f64,
    /// Root cgroup usage over the interval, % of all CPUs, and its file.
    pub cgroup_percent: Option<f64>,
    pub cgroup_file: Option<String>,
    /// Processes and threads created per second during the interval.
    pub forks_per_second: f64,
    /// Unexplained share tolerated before alerting, % of all CPUs: the base
    /// threshold plus the expected exit overhead of the forks seen.
    pub alert_percent: f64,
    /// CPU of tasks that started and ended within the sample, kept by the
    /// cgroups they ran in, % of all CPUs (left out of `unexplained_percent`).
    pub short_lived_percent: f64,
    /// Where that CPU went, cgroup by cgroup.
    pub short_lived: Vec<ShortLived>,
    /// What the `hidden.cpu` finding states, when there is one: the share
    /// (the smaller of the two samples') and whether it names the hidden
    /// processes it goes to. The verdict line repeats exactly this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stated: Option<(f64, bool)>,
}

/// CPU a cgroup's short-lived tasks used: its own time less its visible
/// processes', where tasks were seen starting and ending within the sample.
#[derive(Debug, Clone, Serialize)]
pub struct ShortLived {
    /// The cgroup's path below its hierarchy ("/" for the root).
    pub cgroup: String,
    /// Its usage file (v2 `cpu.stat`, v1 `cpuacct.usage`).
    pub file: String,
    /// % of all CPUs.
    pub percent: f64,
    /// Tasks seen in its member list that neither `/proc` listing had.
    pub new_tasks: usize,
    /// The parent most of them had, when it could be read: PID and name
    /// (escaped).
    pub parent: Option<(i32, String)>,
    /// How many of the tasks read had that parent, of how many read.
    pub parent_of: (usize, usize),
}

impl ShortLived {
    /// "short-lived tasks in /user.slice (parent PID 811 \"bash\", 9 of 10
    /// seen) used 38.0% of all CPUs".
    pub fn describe(&self) -> String {
        let parent = match &self.parent {
            Some((pid, name)) => format!(
                ", parent PID {pid} \"{name}\" of {} of the {} seen",
                self.parent_of.0, self.parent_of.1
            ),
            None => String::new(),
        };
        format!(
            "short-lived tasks in cgroup {} ({} started and ended within the sample{parent}) used {:.1}% of all CPUs ({})",
            escape(self.cgroup.as_bytes()),
            self.new_tasks,
            self.percent,
            escape(self.file.as_bytes())
        )
    }
}

/// Forks per second at or above which a cgroup's unaccounted time is booked
/// to its short-lived tasks: a storm, not a cron job. A hidden process's
/// CPU in a cgroup without one stays unexplained (`hidden.cpu`).
pub const SHORT_LIVED_MIN_FORKS_PER_SECOND: f64 = 20.0;

impl CpuAccounting {
    /// True when the unexplained share exceeds what races and exits explain.
    pub fn is_large(&self) -> bool {
        self.unexplained_percent + self.hidden_measured_percent >= self.alert_percent
    }

    /// Books the CPU Quarry measured for hidden processes (% of all CPUs)
    /// to them instead of to nothing.
    pub fn attribute_hidden(&mut self, percent_of_all: f64) {
        self.hidden_measured_percent += percent_of_all;
        self.recovered_percent += percent_of_all;
        self.unexplained_percent -= percent_of_all;
    }
}

/// Compares `/proc/stat` with the sum over processes.
///
/// Per process: utime+stime deltas (all threads), plus cutime+cstime deltas
/// (children reaped during the interval move their time into the parent),
/// minus what exited processes had already used before the interval (it is in
/// that delta too). Interrupt time (irq, softirq, steal) is left out of the
/// kernel side: no task is charged for it.
pub fn account(snap: &Snapshot) -> CpuAccounting {
    let a = &snap.stat0.total;
    let b = &snap.stat1.total;
    let task = |t: &crate::collect::cpu::CpuTimes| t.user + t.nice + t.system;
    let kernel = task(b).saturating_sub(task(a)) as f64;
    let total = b.total().saturating_sub(a.total()).max(1) as f64;
    let (mut visible, mut recovered) = (0i64, 0i64);
    for p in snap.processes.values() {
        let used = match snap.first.get(&p.pid) {
            Some(s0) if s0.starttime == p.stat.starttime => {
                (p.stat.cpu_ticks() + p.stat.child_ticks()) as i64
                    - (s0.cpu_ticks() + s0.child_ticks()) as i64
            }
            _ => (p.stat.cpu_ticks() + p.stat.child_ticks()) as i64,
        };
        if p.recovered {
            recovered += used;
        } else {
            visible += used;
        }
    }
    // Exited during the interval: their earlier time reappears in a parent's
    // cutime/cstime, so it must not count as used now.
    for (pid, s0) in &snap.first {
        if !snap.processes.contains_key(pid) {
            visible -= (s0.cpu_ticks() + s0.child_ticks()) as i64;
        }
    }
    let pct = |x: f64| 100.0 * x / total;
    let visible = pct(visible.max(0) as f64);
    let recovered = pct(recovered.max(0) as f64);
    let kernel_pct = pct(kernel);
    let cgroup_percent = snap.cgroup_usage.as_ref().map(|(u0, u1, _)| {
        let secs = snap.elapsed.as_secs_f64().max(1e-3) * snap.host.cpus.max(1) as f64;
        100.0 * (u1.saturating_sub(*u0) as f64 / 1e9) / secs
    });
    let secs = snap.elapsed.as_secs_f64().max(1e-3);
    let forks_per_second = snap.stat1.forks.saturating_sub(snap.stat0.forks) as f64 / secs;
    let cpus = snap.host.cpus.max(1) as f64;
    let unexplained = kernel_pct - visible - recovered;
    let short_lived = short_lived(snap, forks_per_second, unexplained, pct);
    let short_lived_percent: f64 = short_lived.iter().map(|s| s.percent).sum();
    CpuAccounting {
        short_lived_percent,
        short_lived,
        stated: None,
        forks_per_second,
        alert_percent: UNEXPLAINED_ALERT_PERCENT
            + 100.0 * forks_per_second * EXIT_OVERHEAD_SECONDS / cpus,
        interval_seconds: snap.elapsed.as_secs_f64(),
        kernel_busy_percent: kernel_pct,
        visible_percent: visible,
        recovered_percent: recovered,
        unexplained_percent: unexplained - short_lived_percent,
        hidden_measured_percent: 0.0,
        cgroup_percent,
        cgroup_file: snap.cgroup_usage.as_ref().map(|(_, _, f)| f.clone()),
    }
}

/// Books cgroups' unaccounted time to their short-lived tasks, at most the
/// unexplained share: only during a fork storm
/// ([`SHORT_LIVED_MIN_FORKS_PER_SECOND`]) and where such tasks were seen.
/// `pct` turns clock ticks into % of all CPUs.
fn short_lived(
    snap: &Snapshot,
    forks_per_second: f64,
    unexplained: f64,
    pct: impl Fn(f64) -> f64,
) -> Vec<ShortLived> {
    if forks_per_second < SHORT_LIVED_MIN_FORKS_PER_SECOND {
        return Vec::new();
    }
    let ticks_per_ns = snap.ticks_per_second.max(1) as f64 / 1e9;
    let mut left = unexplained;
    let mut out = Vec::new();
    for b in &snap.cgroup_cpu {
        if b.new_tasks == 0 || left <= 0.0 {
            continue;
        }
        let members: u64 = b
            .members
            .iter()
            .filter_map(|pid| snap.processes.get(pid))
            .map(|p| crate::collect::cgroup_cpu::used_ticks(&snap.first, p))
            .sum();
        let residual = pct(b.own_ns as f64 * ticks_per_ns - members as f64);
        if residual <= 0.0 {
            continue;
        }
        let percent = residual.min(left);
        left -= percent;
        let mut by_parent: BTreeMap<i32, usize> = BTreeMap::new();
        for t in &b.seen {
            if let Some(pp) = t.ppid {
                *by_parent.entry(pp).or_default() += 1;
            }
        }
        let read: usize = by_parent.values().sum();
        let top = by_parent.into_iter().max_by_key(|(pid, n)| (*n, -pid));
        out.push(ShortLived {
            cgroup: b.cgroup.clone(),
            file: b.file.clone(),
            percent,
            new_tasks: b.new_tasks,
            parent: top.map(|(pid, _)| {
                let name = snap
                    .processes
                    .get(&pid)
                    .map_or_else(|| "?".into(), |p| escape(p.name()));
                (pid, name)
            }),
            parent_of: (top.map_or(0, |(_, n)| n), read),
        });
    }
    out
}

/// The `cpu.short-lived` finding: CPU of tasks that lived and died within
/// the sample, where it was large enough to matter
/// ([`UNEXPLAINED_ALERT_PERCENT`]). Not a rootkit: named where it ran.
pub fn short_lived_finding(first: &CpuAccounting) -> Option<Finding> {
    if first.short_lived_percent < UNEXPLAINED_ALERT_PERCENT {
        return None;
    }
    let top = first
        .short_lived
        .iter()
        .max_by(|a, b| a.percent.total_cmp(&b.percent))?;
    let parent = top.parent.as_ref().map_or(String::new(), |(pid, name)| {
        format!(" (PID {pid} \"{name}\")")
    });
    let mut evidence: Vec<Evidence> = first
        .short_lived
        .iter()
        .map(|s| Evidence::new("cgroup", s.describe()))
        .collect();
    evidence.push(Evidence::new(
        "forks",
        format!(
            "{:.0} processes and threads created per second (/proc/stat processes)",
            first.forks_per_second
        ),
    ));
    evidence.push(Evidence::new(
        "check by hand",
        format!(
            "cat {} twice a second apart, against the %CPU top shows for its processes; watch the processes line of /proc/stat",
            escape(top.file.as_bytes())
        ),
    ));
    Some(Finding {
        remedies: Vec::new(),
        rule: "cpu.short-lived".into(),
        severity: Severity::Low,
        verdict: None,
        title: format!(
            "A fork storm in cgroup {}{parent} used {:.0}% of all CPUs through tasks that live too briefly for top to show",
            escape(top.cgroup.as_bytes()),
            first.short_lived_percent
        ),
        subject: Subject {
            pid: top.parent.as_ref().map(|(p, _)| *p),
            name: top.parent.as_ref().map(|(_, n)| n.clone()),
            ..Subject::default()
        },
        techniques: vec![Technique::new("T1496")],
        signals: vec![],
        score: None,
        evidence,
    })
}

/// CPU seconds a hidden process has used so far: its `stat` when readable
/// (directly or through the private procfs), else the scheduler's `sum-exec`
/// of it and its threads.
pub fn cpu_seconds(
    host: &Host,
    fresh: Option<&Host>,
    sched: Option<&BTreeMap<i32, SchedTask>>,
    h: &Hidden,
    ticks_per_second: u64,
) -> Option<f64> {
    let stat = crate::collect::process::read_stat(host, &format!("/proc/{}/stat", h.pid))
        .ok()
        .or_else(|| {
            crate::collect::process::read_stat(fresh?, &format!("/proc/{}/stat", h.pid)).ok()
        });
    if let Some(st) = stat {
        return Some(st.cpu_ticks() as f64 / ticks_per_second.max(1) as f64);
    }
    let tasks = sched?;
    let mut ms = 0.0;
    let mut any = false;
    for id in std::iter::once(h.pid).chain(h.threads.iter().copied()) {
        if let Some(v) = tasks.get(&id).and_then(|t| t.sum_exec_ms) {
            ms += v;
            any = true;
        }
    }
    any.then_some(ms / 1e3)
}

/// Sets each hidden process's CPU share from two readings `secs` apart.
/// Returns the total, % of all CPUs.
pub fn attribute(
    hidden: &mut [Hidden],
    before: &[Option<f64>],
    after: &[Option<f64>],
    secs: f64,
    cpus: usize,
) -> f64 {
    let mut total = 0.0;
    for (h, (b, a)) in hidden.iter_mut().zip(before.iter().zip(after)) {
        if let (Some(b), Some(a)) = (b, a) {
            let pct = 100.0 * (a - b).max(0.0) / secs.max(1e-3);
            h.cpu = Some((pct, secs));
            // Processes recovered through the private procfs are already in
            // the sample's "recovered" share.
            if h.process.as_ref().is_none_or(|p| !p.recovered) {
                total += pct / cpus.max(1) as f64;
            }
        }
    }
    total
}

/// The share of all CPUs `hidden.cpu` states (the smaller of the two
/// samples'), and whether the hidden processes found account for at least
/// half of it.
pub fn stated(first: &CpuAccounting, second: &CpuAccounting) -> (f64, bool) {
    let hidden_share = second.unexplained_percent + second.hidden_measured_percent;
    let first_share = first.unexplained_percent + first.hidden_measured_percent;
    (
        hidden_share.min(first_share),
        second.hidden_measured_percent >= 0.5 * hidden_share,
    )
}

/// The `hidden.cpu` finding, when two samples agree that a large share of CPU
/// time belongs to no visible process. The hidden processes Quarry found and
/// measured are named as where it goes.
pub fn cpu_finding(
    first: &CpuAccounting,
    second: &CpuAccounting,
    hidden: &[Hidden],
) -> Option<Finding> {
    if !first.is_large() || !second.is_large() {
        return None;
    }
    let describe = |a: &CpuAccounting| {
        format!(
            "/proc/stat task time {:.1}%, visible processes {:.1}%, hidden processes Quarry found {:.1}%, unexplained {:.1}% of all CPUs over {:.2} s (alert at {:.1}% with {:.0} forks/s){}",
            a.kernel_busy_percent,
            a.visible_percent,
            a.recovered_percent,
            a.unexplained_percent,
            a.interval_seconds,
            a.alert_percent,
            a.forks_per_second,
            a.cgroup_percent
                .map_or(String::new(), |c| format!("; root cgroup {c:.1}%"))
        )
    };
    let (share, attributed) = stated(first, second);
    let named: Vec<String> = hidden
        .iter()
        .filter_map(|h| {
            let (pct, _) = h.cpu?;
            (pct >= 1.0).then(|| {
                let name = h
                    .process
                    .as_ref()
                    .map(|p| escape(p.name()))
                    .or_else(|| h.sched.as_ref().map(|t| escape(&t.comm)))
                    .map_or(String::new(), |n| format!(" \"{n}\""));
                format!("PID {}{name} {pct:.0}% of one CPU", h.pid)
            })
        })
        .collect();
    let title = if attributed && !named.is_empty() {
        format!(
            "{share:.0}% of all CPU time is used by processes hidden from ps and top: {}",
            named.join(", ")
        )
    } else {
        format!(
            "Something hides {share:.0}% of all CPU time: no visible process uses it (a kernel rootkit is likely)"
        )
    };
    let mut evidence = vec![
        Evidence::new("first sample", describe(first)),
        Evidence::new("second sample", describe(second)),
    ];
    if !named.is_empty() {
        evidence.push(Evidence::new("hidden processes found", named.join("; ")));
    }
    evidence.push(Evidence::new(
        "check by hand",
        "compare the busy columns of /proc/stat over a few seconds with the sum of top's %CPU",
    ));
    Some(Finding {
        remedies: Vec::new(),
        rule: "hidden.cpu".into(),
        severity: Severity::High,
        verdict: None,
        title,
        subject: Subject::default(),
        techniques: vec![Technique::new("T1014"), Technique::new("T1496")],
        signals: vec![],
        score: None,
        evidence,
    })
}
