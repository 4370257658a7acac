//! Cross-view process census: which independent kernel views see each PID.
//!
//! Views (each can be lied to separately; a rootkit rarely fixes them all):
//! - `listing`: `getdents64` on `/proc` (what `ps` and `top` use);
//! - `tasks`: thread IDs from `/proc/PID/task` of listed processes;
//! - `children`: `/proc/PID/task/TID/children` of listed threads;
//! - `cgroup`: `cgroup.procs` / `cgroup.threads` / `tasks` of every mounted
//!   hierarchy, v1 and v2;
//! - `fresh-listing`: `getdents64` on a private procfs instance;
//! - `kill` and `getpgid`: system-call probes over the whole PID space, 1 to
//!   `pid_max`, split across all CPUs, when they are called for (see
//!   [`Sweep`]);
//! - `proc-mounts`: mounts over `/proc/PID` in mountinfo (the bind-mount trick).
//!
//! Thread IDs answer the probes too: `kill(tid, 0)` succeeds for every thread,
//! so the census accounts for every thread of every listed process before it
//! calls anything hidden.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use rustix::io::Errno;

use super::mounts::{self, Mount};
use crate::host::Host;

/// Highest PID the census will probe when `pid_max` is unreadable (Linux's
/// `PID_MAX_LIMIT` on 64-bit: 4,194,304).
pub const PID_MAX_LIMIT: i32 = 4_194_304;

/// Most TCP sockets for which `/proc/net/tcp{,6}` is compared with inet_diag
/// (see `take`): 200,000 lines are about 30 MB, half of `host::MAX_READ`.
pub const DIAG_MAX_SOCKETS: usize = 200_000;

/// Whether the PID-space sweep runs. It costs what the PID space costs
/// (1.5 s at pid_max 4,194,304, systemd's default and every new PID
/// namespace's since Linux 6.14), so in the initial namespace it runs when
/// the kernel's own task counts disagree with the tasks visible, or when
/// something else points at a rootkit (the caller's `Forced`).
///
/// The counts are `nr_threads`, read two ways a hider must both falsify:
/// the fourth field of `/proc/loadavg` and `sysinfo(2)`'s `procs`. They are
/// read before and after the listing, with `/proc/stat`'s `processes` (tasks
/// created): a task that exits in between is inside the two readings; a
/// task created meanwhile could make room for a hidden one, so then the
/// counts vouch for nothing (the listing is read again once). A task hidden from the
/// listing but counted (what a getdents or lookup hook leaves) is a
/// disagreement. What this cannot see: a hider that also falsifies both
/// counts, or unhashes its task and lowers `nr_threads` (then the PID
/// allocator probe, forced by the CPU no task accounts for, still finds the
/// PID held); and an attacker who creates tasks fast enough makes every
/// listing disagree, which only costs the sweep. In a child PID namespace
/// the counts are the whole machine's, so there the sweep runs only when
/// forced.
#[derive(Debug, Clone)]
pub enum Sweep {
    /// Run it, for this reason, over this much of the PID space.
    Forced(String, Reach),
    /// Run it if the counts disagree.
    IfCountsDisagree,
    /// Run it only if forced: the counts do not describe this namespace.
    OnlyForced,
}

/// How much of the PID space a sweep covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// The PIDs the kernel can have handed out ([`PidSpace`]).
    InUse,
    /// 1 to pid_max.
    Whole,
}

/// `RESERVED_PIDS` of kernel/pid.c: where the PID counter starts again
/// when it wraps at pid_max.
pub const RESERVED_PIDS: u64 = 300;

/// PIDs above the highest one handed out that a sweep still covers: tasks
/// created between that reading and the sweep.
pub const PID_SLACK: i32 = 4096;

/// The kernel's boot-time pid_max (kernel/pid.c `pid_idr_init`): 32,768
/// (`PID_MAX_DEFAULT`), or 1,024 per possible CPU when that is more. Nothing
/// tells how far the counter went before pid_max was raised (systemd raises
/// it at boot; an administrator may later), so the PIDs in use are never
/// bounded below it.
fn boot_pid_max(host: &Host) -> i32 {
    let cpus = host
        .read_text("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|t| {
            t.trim()
                .split(',')
                .map(|r| match r.split_once('-') {
                    Some((a, b)) => Some(b.parse::<i32>().ok()? - a.parse::<i32>().ok()? + 1),
                    None => r.parse::<i32>().ok().map(|_| 1),
                })
                .sum::<Option<i32>>()
        })
        .unwrap_or(1);
    32_768.max(1_024 * cpus)
}

/// The part of the PID space that can be in use.
///
/// The kernel hands out PIDs cyclically (`idr_alloc_cyclic` in
/// kernel/pid.c): each new task takes the next free PID after the last one
/// handed out (`/proc/sys/kernel/ns_last_pid`), and only at pid_max does it
/// wrap back to [`RESERVED_PIDS`]. While fewer tasks were created since boot
/// (`/proc/stat` `processes`, every thread included) than pid_max less
/// those, the counter cannot have wrapped at pid_max, so no PID above the
/// last one is in use: a sweep up to it (plus [`PID_SLACK`]) covers every
/// task. pid_max may have been raised after the counter wrapped under a
/// smaller one, so the bound is never below the boot-time pid_max
/// ([`boot_pid_max`]).
///
/// What defeats it: a process with CAP_SYS_ADMIN over the namespace can
/// choose a PID (`clone3` with `set_tid`) or move the counter (a write to
/// `ns_last_pid`, as CRIU does) and move it back. Legitimate such processes
/// are listed (the highest PID any view shows raises the bound); a hidden
/// one placed high by root is beyond the in-use sweep, and is left to the
/// whole-range sweep (`--deep`, a kernel hook, CPU no task accounts for)
/// and the PID-allocator probe, which asks about the rest of the range when
/// the in-use part held nothing.
#[derive(Debug, Clone, Default)]
pub struct PidSpace {
    /// Highest PID that can be in use (inclusive).
    pub upto: i32,
    /// Why, in words.
    pub reason: String,
}

impl PidSpace {
    /// From the census's views and the kernel's counters.
    fn of(host: &Host, c: &Census) -> PidSpace {
        let pid_max = c.pid_max.clamp(1, PID_MAX_LIMIT);
        let last: Option<i32> = host
            .read_text("/proc/sys/kernel/ns_last_pid")
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let created = tasks_created(host);
        let highest = c
            .listed
            .iter()
            .chain(c.tasks.keys())
            .chain(c.children.keys())
            .chain(c.cgroup.keys())
            .chain(c.fresh_listed.iter().flatten())
            .copied()
            .max()
            .unwrap_or(1);
        PidSpace::judge(pid_max, last, created, highest.max(boot_pid_max(host)))
    }

    /// The bound from pid_max, the last PID handed out, the tasks created
    /// since boot and the highest PID any view shows (or the boot-time
    /// pid_max, when higher).
    fn judge(pid_max: i32, last: Option<i32>, created: Option<u64>, highest: i32) -> PidSpace {
        let whole = |why: String| PidSpace {
            upto: pid_max,
            reason: why,
        };
        match (last, created) {
            (Some(last), Some(created)) if created + RESERVED_PIDS < pid_max as u64 => {
                let upto = last.max(highest).saturating_add(PID_SLACK).min(pid_max);
                PidSpace {
                    upto,
                    reason: format!(
                        "PIDs 1-{upto}: {created} tasks created since boot, fewer than pid_max {pid_max}, so the PID counter has not wrapped and no PID above the last handed out ({last}), any view's highest or the boot-time pid_max ({highest}) is in use, unless root chose it (clone3 set_tid, ns_last_pid)"
                    ),
                }
            }
            (Some(_), Some(created)) => whole(format!(
                "PIDs 1-{pid_max}: {created} tasks created since boot, so the PID counter may have wrapped at pid_max {pid_max}"
            )),
            _ => whole(format!(
                "PIDs 1-{pid_max}: ns_last_pid or /proc/stat could not be read"
            )),
        }
    }
}

/// The kernel's counts of its tasks around the listing, and the verdict.
#[derive(Debug, Clone, Default)]
pub struct TaskCounts {
    /// `/proc/loadavg`'s `nr_threads`, before and after the listing.
    pub loadavg: Option<(u64, u64)>,
    /// `sysinfo(2)`'s `procs` (16 bits: compared modulo 65,536).
    pub sysinfo: Option<(u16, u16)>,
    /// Tasks created during the listing.
    pub created: u64,
    /// Threads of the listed processes.
    pub visible: u64,
    /// Listings made (a disagreement is read once more before it counts).
    pub attempts: u32,
    /// What disagreed, in words.
    pub disagreement: Option<String>,
}

/// The number congruent to `x` modulo 65,536 nearest to `v` (sysinfo's
/// `procs` is 16 bits wide).
fn near(x: u16, v: u64) -> u64 {
    let base = v & !0xffff;
    [base.wrapping_sub(0x10000), base, base + 0x10000]
        .into_iter()
        .map(|b| b.wrapping_add(x as u64))
        .min_by_key(|c| c.abs_diff(v))
        .unwrap_or(x as u64)
}

fn loadavg_threads(host: &Host) -> Option<u64> {
    let t = host.read_text("/proc/loadavg").ok()?;
    t.split_whitespace().nth(3)?.split('/').nth(1)?.parse().ok()
}

fn tasks_created(host: &Host) -> Option<u64> {
    let t = host.read_text("/proc/stat").ok()?;
    t.lines()
        .find_map(|l| l.strip_prefix("processes "))?
        .trim()
        .parse()
        .ok()
}

impl TaskCounts {
    /// Compares the readings with `visible` tasks; `None` when they agree.
    /// They agree only when nothing was created during the listing (a task
    /// created unlisted would make room for one hidden) and the visible
    /// count lies between the two readings of each count (a task that
    /// exited meanwhile, listed or not, does).
    fn judge(&mut self) -> Option<String> {
        let created = self.created;
        let v = self.visible;
        let mut bad = Vec::new();
        if let Some((a, b)) = self.loadavg {
            if v < a.min(b) || v > a.max(b) {
                bad.push(format!("/proc/loadavg counts {a} then {b} tasks"));
            }
        }
        if let Some((a, b)) = self.sysinfo {
            let (a, b) = (near(a, v), near(b, v));
            if v < a.min(b) || v > a.max(b) {
                bad.push(format!("sysinfo(2) counts {a} then {b} tasks"));
            }
        }
        if created > 0 {
            bad.push(format!(
                "{created} tasks were created during the listing, so the counts cannot vouch for it"
            ));
        }
        let d = (!bad.is_empty()).then(|| format!("{}; {v} visible", bad.join(", ")));
        self.disagreement = d.clone();
        d
    }
}

/// The result of a census.
#[derive(Debug, Clone, Default)]
pub struct Census {
    pub listed: BTreeSet<i32>,
    /// tid → tgid, for every thread of every listed process.
    pub tasks: HashMap<i32, i32>,
    /// child pid → parent pid (from `children` files).
    pub children: HashMap<i32, i32>,
    /// pid/tid → the cgroup file that lists it.
    pub cgroup: HashMap<i32, String>,
    /// PIDs listed by a private procfs, if one could be mounted.
    pub fresh_listed: Option<BTreeSet<i32>>,
    pub probe_kill: BTreeSet<i32>,
    pub probe_getpgid: BTreeSet<i32>,
    pub probed: bool,
    pub pid_max: i32,
    /// Mounts whose mount point is `/proc/PID` or below.
    pub proc_mounts: Vec<(i32, Mount)>,
    /// cgroup hierarchies read.
    pub cgroup_roots: Vec<String>,
    /// Sockets (TCP/UDP) whose inode no listed process holds.
    pub orphan_inet: Vec<super::net::Socket>,
    /// Unix sockets whose inode no listed process holds (count).
    pub orphan_unix: usize,
    /// TCP sockets the kernel's socket diagnostics (inet_diag) showed twice
    /// while `/proc/net/tcp{,6}`, read between the two, did not: hidden from
    /// netstat by a hook on its printers.
    pub diag_hidden: Vec<super::diag::DiagSocket>,
    /// Whether the inet_diag comparison ran.
    pub diag_checked: bool,
    /// Whether every process's fds could be read (root): without that,
    /// "no owner" means nothing.
    pub fds_complete: bool,
    pub probe_time: Duration,
    pub diag_time: Duration,
    pub total_time: Duration,
    /// The kernel's task counts against the listing (initial namespace).
    pub counts: Option<TaskCounts>,
    /// Why the sweep ran, or why it did not.
    pub sweep_reason: String,
    /// The part of the PID space that can be in use.
    pub pid_space: PidSpace,
    /// The highest PID the sweep asked about.
    pub swept_upto: i32,
}

/// Reads every view. `fresh` is a private procfs view, when available.
pub fn take(host: &Host, fresh: Option<&Host>, sweep: Sweep) -> Census {
    let t0 = Instant::now();
    let mut c = Census {
        pid_max: host
            .read_text("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(PID_MAX_LIMIT),
        ..Census::default()
    };
    let count = host.is_live() && matches!(sweep, Sweep::IfCountsDisagree);
    let mut counts = TaskCounts::default();
    loop {
        let before = count.then(|| {
            (
                loadavg_threads(host),
                rustix::system::sysinfo().procs,
                tasks_created(host),
            )
        });
        list_tasks(host, &mut c);
        counts.attempts += 1;
        let Some((l0, s0, f0)) = before else { break };
        let (l1, s1, f1) = (
            loadavg_threads(host),
            rustix::system::sysinfo().procs,
            tasks_created(host),
        );
        counts.loadavg = l0.zip(l1);
        counts.sysinfo = Some((s0, s1));
        counts.created = f1.zip(f0).map_or(0, |(b, a)| b.saturating_sub(a));
        counts.visible = c.tasks.len() as u64;
        if counts.judge().is_none() || counts.attempts >= 2 {
            break;
        }
    }
    // Mounts: our own namespace and PID 1's (a container's view may differ).
    let mut all_mounts = mounts::read(host, "self");
    for m in mounts::read(host, "1") {
        if !all_mounts.iter().any(|x| x.line == m.line) {
            all_mounts.push(m);
        }
    }
    for m in &all_mounts {
        if let Some(pid) = mounts::covered_pid(&m.mount_point) {
            c.proc_mounts.push((pid, m.clone()));
        }
    }
    read_cgroups(host, &all_mounts, &mut c);
    // Sockets nobody visible owns. Kernel sockets (listeners of in-kernel
    // services) legitimately have no owner, so this is evidence, not a verdict.
    let listed: Vec<i32> = c.listed.iter().copied().collect();
    let owners = super::net::all_socket_owners(host, &listed);
    c.fds_complete = !host.is_live() || rustix::process::geteuid().is_root();
    // /proc/net/tcp{,6} is read once (each read walks the kernel's whole
    // connection hash table: 1.7 ms a file here): between the two inet_diag
    // dumps when they are compared, for both the comparison and the orphans.
    let td = Instant::now();
    let mut tcp = None;
    if host.is_live() {
        // Above DIAG_MAX_SOCKETS, /proc/net/tcp (about 150 bytes a line) could
        // be cut at Quarry's read limit: every later socket would look hidden.
        if let Some(d1) = super::diag::tcp_by_inode().filter(|d| d.len() <= DIAG_MAX_SOCKETS) {
            let between = super::net::read_tcp(host);
            let in_proc: std::collections::HashSet<u64> = between.iter().map(|s| s.inode).collect();
            tcp = Some(between);
            if let Some(d2) = super::diag::tcp_by_inode() {
                c.diag_checked = true;
                c.diag_hidden = d1
                    .into_iter()
                    .filter(|(i, _)| d2.contains_key(i) && !in_proc.contains(i))
                    .map(|(_, s)| s)
                    .collect();
            }
        }
    }
    c.diag_time = td.elapsed();
    let tcp = tcp.unwrap_or_else(|| super::net::read_tcp(host));
    let (inet, unix) = super::net::read_all_inodes(host, tcp);
    c.orphan_inet = inet
        .into_iter()
        .filter(|s| s.inode != 0 && !owners.contains_key(&s.inode))
        .collect();
    c.orphan_unix = unix
        .iter()
        .filter(|i| **i != 0 && !owners.contains_key(i))
        .count();
    if let Some(f) = fresh {
        c.fresh_listed = f.list_pids("/proc").ok().map(|v| v.into_iter().collect());
    }
    let run = match (&sweep, &counts.disagreement) {
        _ if !host.is_live() => {
            c.sweep_reason = "not the running machine".into();
            false
        }
        (Sweep::Forced(why, _), _) => {
            c.sweep_reason = why.clone();
            true
        }
        (Sweep::IfCountsDisagree, Some(d)) => {
            c.sweep_reason = format!("the kernel's task counts disagree with the listing: {d}");
            true
        }
        (Sweep::IfCountsDisagree, None) => {
            c.sweep_reason = format!(
                "not needed: the kernel's task counts agree with the {} tasks listed",
                counts.visible
            );
            false
        }
        (Sweep::OnlyForced, _) => {
            c.sweep_reason = "not run: inside a child PID namespace the kernel's task counts are the whole machine's, so nothing calls for it (--deep runs it)".into();
            false
        }
    };
    if count {
        c.counts = Some(counts);
    }
    c.pid_space = PidSpace::of(host, &c);
    if run {
        let t = Instant::now();
        c.swept_upto = match sweep {
            Sweep::Forced(_, Reach::Whole) => c.pid_max,
            _ => c.pid_space.upto,
        };
        let (k, g) = probe_all(c.swept_upto);
        c.probe_kill = k;
        c.probe_getpgid = g;
        c.probed = true;
        c.probe_time = t.elapsed();
    }
    c.total_time = t0.elapsed();
    c
}

/// Lists `/proc` and every listed process's threads and children into `c`
/// (again, if it was listed before).
fn list_tasks(host: &Host, c: &mut Census) {
    c.tasks.clear();
    c.children.clear();
    c.listed = host
        .list_pids("/proc")
        .unwrap_or_default()
        .into_iter()
        .collect();
    for &pid in &c.listed {
        let tids = host
            .list_pids(format!("/proc/{pid}/task"))
            .unwrap_or_default();
        for &tid in &tids {
            c.tasks.insert(tid, pid);
            for child in thread_children(host, pid, tid) {
                c.children.insert(child, pid);
            }
        }
    }
}

/// The children one thread lists (`/proc/PID/task/TID/children`).
pub fn thread_children(host: &Host, pid: i32, tid: i32) -> Vec<i32> {
    host.read_text(format!("/proc/{pid}/task/{tid}/children"))
        .map(|t| {
            t.split_ascii_whitespace()
                .filter_map(|s| s.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The children of every thread of a process, read now.
pub fn children_of(host: &Host, pid: i32) -> BTreeSet<i32> {
    host.list_pids(format!("/proc/{pid}/task"))
        .unwrap_or_default()
        .into_iter()
        .flat_map(|tid| thread_children(host, pid, tid))
        .collect()
}

/// Reads every cgroup hierarchy's process and thread lists.
fn read_cgroups(host: &Host, mounts: &[Mount], c: &mut Census) {
    let mut seen_roots = BTreeSet::new();
    for m in mounts
        .iter()
        .filter(|m| m.fs_type == "cgroup" || m.fs_type == "cgroup2")
    {
        // One walk per hierarchy (the same hierarchy can be mounted twice).
        let key = format!("{} {}", m.fs_type, m.super_options);
        if !seen_roots.insert(key) {
            continue;
        }
        let root = String::from_utf8_lossy(&m.mount_point).into_owned();
        c.cgroup_roots.push(root.clone());
        let mut stack = vec![(root, 0usize)];
        let mut dirs = 0usize;
        while let Some((dir, depth)) = stack.pop() {
            dirs += 1;
            // Bounded: a pathological tree cannot stall the scan.
            if dirs > 20_000 {
                break;
            }
            for file in ["cgroup.procs", "cgroup.threads", "tasks"] {
                let path = format!("{dir}/{file}");
                if let Ok(text) = host.read_text(&path) {
                    for pid in text
                        .split_ascii_whitespace()
                        .filter_map(|s| s.parse::<i32>().ok())
                    {
                        if pid > 0 {
                            c.cgroup.entry(pid).or_insert_with(|| path.clone());
                        }
                    }
                }
            }
            if depth < 32 {
                if let Ok(entries) = host.list_dir(&dir) {
                    for e in entries {
                        if e.file_type == rustix::fs::FileType::Directory {
                            stack.push((
                                format!("{dir}/{}", String::from_utf8_lossy(&e.name)),
                                depth + 1,
                            ));
                        }
                    }
                }
            }
        }
    }
}

// The probes call glibc's thin system-call wrappers through `libc` rather
// than rustix: rustix asserts that getpgid/getsid return a positive id, but
// for a task in an ancestor PID namespace the kernel legitimately returns 0.

/// True if `kill(pid, 0)` finds a task (EPERM still means it exists).
pub fn kill_probe(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 performs only the existence and permission check.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || Errno::from_raw_os_error(errno()) == Errno::PERM
}

/// True if `getpgid(pid)` finds a task.
pub fn getpgid_probe(pid: i32) -> bool {
    // SAFETY: getpgid has no memory side effects.
    pid > 0 && unsafe { libc::getpgid(pid) } >= 0
}

/// True if `getsid(pid)` finds a task.
pub fn getsid_probe(pid: i32) -> bool {
    // SAFETY: getsid has no memory side effects.
    pid > 0 && unsafe { libc::getsid(pid) } >= 0
}

/// True if `sched_getaffinity(pid)` finds a task.
pub fn affinity_probe(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: the set is a valid, writable cpu_set_t of the size passed.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let r =
        unsafe { libc::sched_getaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    r == 0 || Errno::from_raw_os_error(errno()) == Errno::PERM
}

/// True if `pidfd_open(pid)` finds a task (Linux 5.3+; ENOSYS counts as
/// not answering).
pub fn pidfd_probe(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: pidfd_open takes a PID and flags; the descriptor is closed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd >= 0 {
        // SAFETY: closing the descriptor just opened.
        unsafe { libc::close(fd as i32) };
        return true;
    }
    false
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Sweeps 1..=pid_max with `kill(pid, 0)` and `getpgid(pid)`, on every CPU.
/// Each probe is one system call (~80 ns here): 32,768 PIDs take a few ms,
/// 4,194,304 about half a second on two cores.
pub fn probe_all(pid_max: i32) -> (BTreeSet<i32>, BTreeSet<i32>) {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 16) as i32;
    let max = pid_max.clamp(1, PID_MAX_LIMIT);
    let chunk = (max + threads - 1) / threads;
    let results: Vec<(Vec<i32>, Vec<i32>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let lo = 1 + i * chunk;
                let hi = ((i + 1) * chunk).min(max);
                s.spawn(move || {
                    let (mut k, mut g) = (Vec::new(), Vec::new());
                    for pid in lo..=hi {
                        if kill_probe(pid) {
                            k.push(pid);
                        }
                        if getpgid_probe(pid) {
                            g.push(pid);
                        }
                    }
                    (k, g)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut k = BTreeSet::new();
    let mut g = BTreeSet::new();
    for (a, b) in results {
        k.extend(a);
        g.extend(b);
    }
    (k, g)
}

impl Census {
    /// PIDs that some view sees but neither the listing nor any listed
    /// process's threads account for, with the names of the views.
    pub fn unaccounted(&self) -> BTreeMap<i32, Vec<&'static str>> {
        let mut out: BTreeMap<i32, Vec<&'static str>> = BTreeMap::new();
        let known = |p: &i32| self.listed.contains(p) || self.tasks.contains_key(p);
        let mut add = |p: i32, view: &'static str| {
            if !known(&p) {
                let v = out.entry(p).or_default();
                if !v.contains(&view) {
                    v.push(view);
                }
            }
        };
        for &p in &self.probe_kill {
            add(p, "kill");
        }
        for &p in &self.probe_getpgid {
            add(p, "getpgid");
        }
        for &p in self.children.keys() {
            add(p, "children");
        }
        for &p in self.cgroup.keys() {
            add(p, "cgroup");
        }
        if let Some(f) = &self.fresh_listed {
            for &p in f {
                add(p, "fresh-procfs");
            }
        }
        for (p, _) in &self.proc_mounts {
            add(*p, "proc-mount");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(load: (u64, u64), created: u64, visible: u64) -> TaskCounts {
        TaskCounts {
            loadavg: Some(load),
            sysinfo: Some((load.0 as u16, load.1 as u16)),
            created,
            visible,
            ..TaskCounts::default()
        }
    }

    #[test]
    fn counts_agree_within_exits_and_creations_only() {
        assert!(counts((125, 125), 0, 125).judge().is_none());
        // A task exited meanwhile: listed or not, inside the readings.
        assert!(counts((125, 124), 0, 124).judge().is_none());
        assert!(counts((125, 124), 0, 125).judge().is_none());
        // A task created meanwhile leaves room for one hidden: no vouching.
        let d = counts((125, 126), 1, 125).judge().unwrap();
        assert!(d.contains("1 tasks were created"), "{d}");
        // One task hidden on a quiet machine.
        let d = counts((126, 126), 0, 125).judge().unwrap();
        assert!(
            d.contains("/proc/loadavg counts 126 then 126") && d.contains("125 visible"),
            "{d}"
        );
        // Past 65,536 tasks sysinfo's 16 bits wrap and still compare.
        assert!(counts((70_000, 70_000), 0, 70_000).judge().is_none());
        let mut c = counts((70_000, 70_000), 0, 70_000);
        c.sysinfo = Some((4466, 4466)); // 70,002 modulo 65,536
        assert!(c.judge().unwrap().contains("sysinfo(2) counts 70002"));
    }

    #[test]
    fn near_unwraps_sixteen_bits() {
        assert_eq!(near(4464, 70_000), 70_000);
        assert_eq!(near(65_535, 65_537), 65_535);
        assert_eq!(near(3, 65_534), 65_539);
        assert_eq!(near(125, 125), 125);
    }

    #[test]
    fn the_pid_space_in_use_ends_at_the_counter_until_it_can_have_wrapped() {
        // A new PID namespace at systemd's pid_max, a few thousand tasks made.
        let p = PidSpace::judge(4_194_304, Some(1_200), Some(169_000), 900);
        assert_eq!(p.upto, 1_200 + PID_SLACK);
        assert!(p.reason.contains("has not wrapped"), "{}", p.reason);
        // A view's higher PID (CRIU restored it there) raises the bound.
        let p = PidSpace::judge(4_194_304, Some(1_200), Some(169_000), 2_000_000);
        assert_eq!(p.upto, 2_000_000 + PID_SLACK);
        // More tasks made than pid_max less the reserved ones: the whole range.
        let p = PidSpace::judge(32_768, Some(18_000), Some(32_768 - 300), 18_000);
        assert_eq!(p.upto, 32_768);
        assert!(p.reason.contains("may have wrapped"), "{}", p.reason);
        // Unreadable counters: the whole range.
        assert_eq!(PidSpace::judge(32_768, None, Some(10), 10).upto, 32_768);
        // Never past pid_max.
        assert_eq!(
            PidSpace::judge(8_192, Some(7_000), Some(7_000), 7_000).upto,
            8_192
        );
    }
}
