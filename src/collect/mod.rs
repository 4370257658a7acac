//! Snapshots of the machine: processes, CPU counters, sockets, accounts.
//!
//! [`sample`] takes two readings `interval` apart: a light one (`/proc/stat` and
//! every `/proc/PID/stat`) and a full one (adds command lines, executables,
//! owners, sockets). CPU shares are the differences between the two.

pub mod bpf;
pub mod census;
pub mod cgroup_cpu;
pub mod cpu;
pub mod diag;
pub mod entry;
pub mod hooks;
pub mod inspect;
pub mod minercfg;
pub mod modules;
pub mod mounts;
pub mod net;
pub mod packages;
pub mod persistence;
pub mod pidalloc;
pub mod preload;
pub mod process;
pub mod sched;
pub mod signatures;
pub mod users;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::host::Host;
use cpu::StatSnapshot;
use net::Socket;
use process::{ProcStat, Process, ReadError};
use users::Users;

/// Facts about the inspected machine.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HostInfo {
    pub hostname: String,
    pub kernel: String,
    pub root: String,
    pub cpus: usize,
    pub euid: u32,
}

/// How long each part of Quarry's own work took, in microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timing {
    /// First reading (before the interval).
    pub first_pass_us: u64,
    /// The interval Quarry slept, measured.
    pub interval_us: u64,
    /// Second, full reading.
    pub second_pass_us: u64,
    /// Everything after the second reading: detection (including the census
    /// and the module walk, which run side by side) and report building.
    pub detect_us: u64,
    /// The cross-view census, hidden-process checks and CPU accounting.
    pub census_us: u64,
    /// Of `census_us`: the kernel-rootkit views every scan reads (tracefs
    /// hooks, kprobes, BPF programs, the inet_diag socket comparison), not the
    /// ones that run only when something points at a rootkit.
    pub rootkit_views_us: u64,
    /// Of `census_us`: the PID-allocator probe and scheduler list, when they ran.
    pub rootkit_deep_us: u64,
    /// The module-file walk (in its own thread, overlapping the census).
    pub module_walk_us: u64,
    /// The second sample's interval, slept only when unexplained CPU needed
    /// confirming (included in census_us and detect_us, not in work_us).
    pub confirm_interval_us: u64,
    /// Content signatures, miner configurations and restarter links of the
    /// selected processes (collect::inspect).
    pub inspect_us: u64,
    /// How it got in: doors, lineages, login records, timeline (detect::entry).
    pub entry_us: u64,
    /// Everything but the intervals.
    pub work_us: u64,
}

/// Everything [`sample`] learned (empty by default: `quarry watch` judges a
/// new process on what it is, without a sample).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub host: HostInfo,
    pub ticks_per_second: u64,
    pub stat0: StatSnapshot,
    pub stat1: StatSnapshot,
    /// The measured wall time between the two `/proc/stat` readings.
    pub elapsed: Duration,
    /// Stats of the first reading.
    pub first: BTreeMap<i32, ProcStat>,
    /// Processes of the second reading, by PID.
    pub processes: BTreeMap<i32, Process>,
    pub sockets: Vec<Socket>,
    /// Socket inode → owning PIDs (only for the sockets detection asked about).
    pub socket_owners: HashMap<u64, Vec<i32>>,
    pub users: Users,
    /// Root cgroup CPU usage (ns) at both readings, and the file it came from.
    pub cgroup_usage: Option<(u64, u64, String)>,
    /// Cgroups whose own time over the interval exceeds their visible
    /// processes' ([`cgroup_cpu::busy`]): where exited tasks' time went.
    pub cgroup_cpu: Vec<cgroup_cpu::Busy>,
    /// Things Quarry could not see, in plain words.
    pub limitations: Vec<String>,
    pub timing: Timing,
    /// What the selected processes carry (signatures, configs, restarters),
    /// filled by the scan after the sample ([`inspect`]).
    pub inspections: HashMap<i32, inspect::Inspection>,
}

/// What to collect.
#[derive(Debug, Clone)]
pub struct Options {
    pub interval: Duration,
    /// Remote ports whose established connections need an owner.
    pub pool_ports: HashSet<u16>,
    /// A view of the host through a private procfs ([`crate::host::FreshProc`]):
    /// used for a listed PID whose `/proc/PID` cannot be read (covered by a mount).
    pub fresh: Option<Host>,
}

fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

/// Reads the machine twice, `interval` apart.
pub fn sample(host: &Host, opts: &Options) -> std::io::Result<Snapshot> {
    let t0 = Instant::now();
    let cg0 = cpu::root_cgroup_usage_ns(host);
    // Every cgroup's time, for CPU of tasks gone within the sample.
    let cgroups0 = if host.is_live() {
        cgroup_cpu::Reading::take(host)
    } else {
        cgroup_cpu::Reading::default()
    };
    let stat0 = cpu::read_stat(host)?;
    let s0 = Instant::now();
    let pids0 = host.list_pids("/proc")?;
    let mut first = process::read_all_stats(host, &pids0);
    if let Some(fresh) = &opts.fresh {
        let missing: Vec<i32> = pids0
            .iter()
            .copied()
            .filter(|p| !first.contains_key(p))
            .collect();
        first.extend(process::read_all_stats(fresh, &missing));
    }
    let first_pass = t0.elapsed();

    std::thread::sleep(opts.interval);

    let t1 = Instant::now();
    let stat1 = cpu::read_stat(host)?;
    let elapsed = s0.elapsed();
    let cgroups1 = cgroups0.again(host);
    let cg1 = cpu::root_cgroup_usage_ns(host);
    let cgroup_usage = match (cg0, cg1) {
        (Some((a, f)), Some((b, _))) => Some((a, b, f)),
        _ => None,
    };
    let pids1 = host.list_pids("/proc")?;
    let ticks = rustix::param::clock_ticks_per_second().max(1);
    let elapsed_ticks = (elapsed.as_secs_f64() * ticks as f64).max(1.0);
    let interval_end_ticks = stat_uptime_ticks(host, ticks);

    let mut processes = BTreeMap::new();
    for &pid in &pids1 {
        let read = Process::read(host, pid).or_else(|| {
            let mut p = Process::read(opts.fresh.as_ref()?, pid)?;
            p.recovered = true;
            Some(p)
        });
        let Some(mut p) = read else {
            continue;
        };
        let used = match first.get(&pid) {
            Some(s0) if s0.starttime == p.stat.starttime => {
                p.stat.cpu_ticks().saturating_sub(s0.cpu_ticks())
            }
            // Started during the interval (or PID reused): all its time is new.
            _ => p.stat.cpu_ticks(),
        };
        p.cpu_ticks_in_interval = used;
        // A process that started during the interval only had part of it.
        let span = match (first.contains_key(&pid), interval_end_ticks) {
            (false, Some(now)) if now > p.stat.starttime => {
                ((now - p.stat.starttime) as f64).min(elapsed_ticks)
            }
            _ => elapsed_ticks,
        };
        p.cpu_percent = 100.0 * used as f64 / span.max(1.0);
        p.lifetime = interval_end_ticks
            .filter(|now| *now > p.stat.starttime)
            .map(|now| {
                let age = (now - p.stat.starttime) as f64;
                (100.0 * p.stat.cpu_ticks() as f64 / age, age / ticks as f64)
            });
        processes.insert(pid, p);
    }

    let cgroup_cpu = cgroup_cpu::busy(
        host, &cgroups0, &cgroups1, elapsed, &first, &processes, ticks,
    );
    let sockets = net::read_tcp_all_namespaces(host, &pids1);
    let wanted: HashSet<u64> = sockets
        .iter()
        .filter(|s| s.state == net::TCP_ESTABLISHED && opts.pool_ports.contains(&s.remote_port))
        .map(|s| s.inode)
        .collect();
    let socket_owners = net::socket_owners(host, &pids1, &wanted);
    let users = Users::load(host);
    let host_info = host_info(host, &stat1);
    let mut limitations = Vec::new();
    if host.is_live() && host_info.euid != 0 {
        let denied = processes
            .values()
            .filter(|p| p.exe == Err(ReadError::PermissionDenied))
            .count();
        limitations.push(format!(
            "not running as root: the executables, open files and sockets of {denied} processes \
             owned by other users cannot be read, so their miner checks are partial; run as root \
             for a full scan"
        ));
    }
    if !host.is_live() {
        limitations.push(format!(
            "offline scan of {}: system-call probes and memfd seal checks are skipped",
            host.root().display()
        ));
    }
    let second_pass = t1.elapsed();
    Ok(Snapshot {
        host: host_info,
        ticks_per_second: ticks,
        stat0,
        stat1,
        elapsed,
        first,
        processes,
        sockets,
        socket_owners,
        users,
        cgroup_usage,
        cgroup_cpu,
        limitations,
        timing: Timing {
            first_pass_us: us(first_pass),
            interval_us: us(opts.interval),
            second_pass_us: us(second_pass),
            ..Timing::default()
        },
        inspections: HashMap::new(),
    })
}

/// Uptime in clock ticks (`/proc/uptime`), to compare with process start times.
fn stat_uptime_ticks(host: &Host, ticks: u64) -> Option<u64> {
    let text = host.read_text("/proc/uptime").ok()?;
    let secs: f64 = text.split_ascii_whitespace().next()?.parse().ok()?;
    Some((secs * ticks as f64) as u64)
}

fn host_info(host: &Host, stat: &StatSnapshot) -> HostInfo {
    let read = |p: &str| {
        host.read_text(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into())
    };
    HostInfo {
        hostname: crate::escape::escape_str(&read("/proc/sys/kernel/hostname")),
        kernel: crate::escape::escape_str(&read("/proc/sys/kernel/osrelease")),
        root: host.root().display().to_string(),
        cpus: stat.per_cpu.len(),
        euid: rustix::process::geteuid().as_raw(),
    }
}

impl Snapshot {
    /// Whole-machine busy share over the interval, %.
    pub fn busy_percent(&self) -> f64 {
        cpu::busy_percent(&self.stat0.total, &self.stat1.total)
    }

    /// Per-CPU busy shares, %.
    pub fn per_cpu_percent(&self) -> Vec<f64> {
        self.stat0
            .per_cpu
            .iter()
            .zip(&self.stat1.per_cpu)
            .map(|(a, b)| cpu::busy_percent(a, b))
            .collect()
    }

    /// Seconds since the process started, if boot time is known.
    pub fn age_seconds(&self, p: &Process) -> Option<u64> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs();
        let start = self
            .stat1
            .boot_time
            .checked_add(p.stat.starttime / self.ticks_per_second)?;
        (self.stat1.boot_time > 0).then(|| now.saturating_sub(start))
    }

    /// The parent chain of a process up to PID 1 (excluding the process itself).
    pub fn ancestors(&self, pid: i32) -> Vec<(i32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut cur = self.processes.get(&pid).map(|p| p.stat.ppid);
        while let Some(ppid) = cur {
            if ppid <= 0 || out.len() > 64 || out.iter().any(|(p, _)| *p == ppid) {
                break;
            }
            match self.processes.get(&ppid) {
                Some(pp) => {
                    out.push((ppid, pp.stat.comm.clone()));
                    cur = Some(pp.stat.ppid);
                }
                None => {
                    out.push((ppid, b"?".to_vec()));
                    break;
                }
            }
        }
        out
    }
}
