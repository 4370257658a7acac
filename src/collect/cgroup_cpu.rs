//! CPU time of every cgroup over the sample, and the tasks seen starting in
//! the cgroups whose time no visible process accounts for.
//!
//! A task that exits during the sample and is reaped by nobody who waits
//! for it (its parent ignores SIGCHLD, so the kernel reaps it) leaves no
//! trace in any `/proc/PID/stat`: its time is in `/proc/stat` only. The
//! cgroup it ran in keeps it (cgroup v2 `cpu.stat` `usage_usec`, v1
//! `cpuacct.usage`, both hierarchical, see the kernel's
//! Documentation/admin-guide/cgroup-v2.rst "cpu.stat" and cgroup-v1/cpuacct.rst).
//! A cgroup's own time is its usage less its children's; what its visible
//! processes used is subtracted in `detect::hidden::account`.
//!
//! Read at both readings of the sample: one directory listing and one small
//! read per cgroup (bounded at [`MAX_CGROUPS`]). Where a cgroup's own time
//! is larger than its members' by [`POLL_PERCENT`] of a CPU, its member list
//! is read [`POLLS`] times [`POLL_GAP`] apart to see the short-lived tasks
//! starting there and their parents.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use serde::Serialize;

use super::process::{ProcStat, Process};
use crate::host::Host;

/// Cgroups read per reading at most (a bound, not a budget: systemd servers
/// have hundreds).
pub const MAX_CGROUPS: usize = 4096;
/// Deepest cgroup read (systemd nests five or six levels).
const MAX_DEPTH: usize = 32;
/// A cgroup's own time beyond its members' that is worth a look at its
/// member list, % of one CPU over the interval.
pub const POLL_PERCENT: f64 = 5.0;
/// How often the member list of such a cgroup is read, and how far apart.
pub const POLLS: usize = 10;
pub const POLL_GAP: Duration = Duration::from_millis(2);
/// Short-lived tasks kept per cgroup (their count is kept whole).
const KEEP_TASKS: usize = 16;

/// Which counter a hierarchy keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Kind {
    /// cgroup v2 `cpu.stat` `usage_usec` (kept by every v2 cgroup, with or
    /// without the cpu controller).
    V2,
    /// cgroup v1 `cpuacct.usage`, nanoseconds.
    V1Cpuacct,
}

/// Cumulative CPU time of every cgroup of one hierarchy at one moment.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    /// The hierarchy's mount point and what it keeps.
    pub mount: String,
    pub kind: Option<Kind>,
    /// Nanoseconds used, by path below the mount ("" is its root).
    pub usage_ns: BTreeMap<String, u64>,
    /// More cgroups than [`MAX_CGROUPS`] (the rest are not read).
    pub truncated: bool,
}

/// A cgroup whose own time over the interval was more than its members'.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Busy {
    /// Path below the hierarchy's mount ("/" for its root).
    pub cgroup: String,
    /// The usage file, for the check by hand.
    pub file: String,
    /// Own time (less its children's) over the interval, ns.
    pub own_ns: u64,
    /// Its processes (TGIDs) at the second reading.
    #[serde(skip)]
    pub members: Vec<i32>,
    /// Tasks seen in its member list that neither listing of `/proc` had:
    /// started and, mostly, gone within the sample.
    pub new_tasks: usize,
    /// A few of them: PID, parent PID, name.
    pub seen: Vec<SeenTask>,
}

/// A short-lived task seen in a cgroup's member list.
#[derive(Debug, Clone, Serialize)]
pub struct SeenTask {
    pub pid: i32,
    pub ppid: Option<i32>,
    /// Its name, escaped (the task's own, so hostile).
    pub comm: String,
}

/// Picks the hierarchy to read: cgroup v2 where it holds cgroups or there is
/// no v1 `cpuacct`, else v1 `cpuacct` (hybrid machines keep their groups there).
fn choose(host: &Host) -> Option<(String, Kind)> {
    let mounts = super::mounts::read(host, "self");
    let v2 = mounts
        .iter()
        .find(|m| m.fs_type == "cgroup2")
        .map(|m| String::from_utf8_lossy(&m.mount_point).into_owned());
    let v1 = mounts
        .iter()
        .find(|m| m.fs_type == "cgroup" && m.super_options.split(',').any(|o| o == "cpuacct"))
        .map(|m| String::from_utf8_lossy(&m.mount_point).into_owned());
    let has_children = |dir: &str| {
        host.list_dir(dir).is_ok_and(|es| {
            es.iter()
                .any(|e| e.file_type == rustix::fs::FileType::Directory)
        })
    };
    match (v2, v1) {
        (Some(v2), Some(v1)) if !has_children(&v2) && has_children(&v1) => {
            Some((v1, Kind::V1Cpuacct))
        }
        (Some(v2), _) => Some((v2, Kind::V2)),
        (None, Some(v1)) => Some((v1, Kind::V1Cpuacct)),
        (None, None) => None,
    }
}

fn usage_of(host: &Host, dir: &str, kind: Kind) -> Option<u64> {
    match kind {
        Kind::V2 => {
            let text = host.read_text(format!("{dir}/cpu.stat")).ok()?;
            let us: u64 = text
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec "))?
                .trim()
                .parse()
                .ok()?;
            Some(us.saturating_mul(1000))
        }
        Kind::V1Cpuacct => host
            .read_text(format!("{dir}/cpuacct.usage"))
            .ok()?
            .trim()
            .parse()
            .ok(),
    }
}

fn usage_file(kind: Kind) -> &'static str {
    match kind {
        Kind::V2 => "cpu.stat",
        Kind::V1Cpuacct => "cpuacct.usage",
    }
}

fn join(mount: &str, rel: &str) -> String {
    format!("{mount}{rel}")
}

impl Reading {
    /// Reads every cgroup of the hierarchy Quarry reads on this machine.
    pub fn take(host: &Host) -> Reading {
        match choose(host) {
            Some((mount, kind)) => Reading::take_of(host, mount, kind),
            None => Reading::default(),
        }
    }

    /// Reads the same hierarchy as `self` again.
    pub fn again(&self, host: &Host) -> Reading {
        match self.kind {
            Some(kind) => Reading::take_of(host, self.mount.clone(), kind),
            None => Reading::default(),
        }
    }

    fn take_of(host: &Host, mount: String, kind: Kind) -> Reading {
        let mut r = Reading {
            mount,
            kind: Some(kind),
            ..Reading::default()
        };
        let mut stack = vec![(String::new(), 0usize)];
        while let Some((rel, depth)) = stack.pop() {
            if r.usage_ns.len() >= MAX_CGROUPS {
                r.truncated = true;
                break;
            }
            let dir = join(&r.mount, &rel);
            let Some(ns) = usage_of(host, &dir, kind) else {
                continue;
            };
            r.usage_ns.insert(rel.clone(), ns);
            if depth >= MAX_DEPTH {
                continue;
            }
            if let Ok(entries) = host.list_dir(&dir) {
                for e in entries {
                    if e.file_type == rustix::fs::FileType::Directory {
                        let name = String::from_utf8_lossy(&e.name);
                        stack.push((format!("{rel}/{name}"), depth + 1));
                    }
                }
            }
        }
        r
    }
}

/// Own time of each cgroup between two readings (its usage less its direct
/// children's), ns. Cgroups missing from either reading are left out.
pub fn own_deltas(a: &Reading, b: &Reading) -> BTreeMap<String, u64> {
    let delta = |rel: &str| -> Option<u64> {
        Some(b.usage_ns.get(rel)?.saturating_sub(*a.usage_ns.get(rel)?))
    };
    let mut own: BTreeMap<String, i128> = BTreeMap::new();
    for rel in b.usage_ns.keys() {
        let Some(d) = delta(rel) else { continue };
        *own.entry(rel.clone()).or_default() += d as i128;
        if let Some((parent, _)) = rel.rsplit_once('/') {
            if a.usage_ns.contains_key(parent) && b.usage_ns.contains_key(parent) {
                *own.entry(parent.to_string()).or_default() -= d as i128;
            }
        }
    }
    own.into_iter().map(|(k, v)| (k, v.max(0) as u64)).collect()
}

/// Reads a cgroup's member list (TGIDs).
fn members(host: &Host, dir: &str) -> Vec<i32> {
    host.read_text(format!("{dir}/cgroup.procs"))
        .map(|t| {
            t.split_ascii_whitespace()
                .filter_map(|s| s.parse::<i32>().ok())
                .filter(|p| *p > 0)
                .collect()
        })
        .unwrap_or_default()
}

/// The cgroups whose own time over the interval exceeds what their members
/// used by [`POLL_PERCENT`] of a CPU, with the short-lived tasks seen in
/// them. `first` and `processes` are the two readings of the sample.
pub fn busy(
    host: &Host,
    a: &Reading,
    b: &Reading,
    elapsed: Duration,
    first: &BTreeMap<i32, ProcStat>,
    processes: &BTreeMap<i32, Process>,
    ticks_per_second: u64,
) -> Vec<Busy> {
    let Some(kind) = b.kind else {
        return Vec::new();
    };
    let secs = elapsed.as_secs_f64().max(1e-3);
    let ns_per_tick = 1e9 / ticks_per_second.max(1) as f64;
    let floor = POLL_PERCENT / 100.0 * secs * 1e9;
    let mut out = Vec::new();
    for (rel, own) in own_deltas(a, b) {
        if (own as f64) < floor {
            continue;
        }
        let dir = join(&b.mount, &rel);
        let members = members(host, &dir);
        let used: f64 = members
            .iter()
            .filter_map(|pid| processes.get(pid))
            .map(|p| used_ticks(first, p) as f64 * ns_per_tick)
            .sum();
        if own as f64 - used < floor {
            continue;
        }
        let mut found = Busy {
            cgroup: if rel.is_empty() {
                "/".into()
            } else {
                rel.clone()
            },
            file: format!("{dir}/{}", usage_file(kind)),
            own_ns: own,
            members,
            ..Busy::default()
        };
        // Tasks neither listing had: started within the sample.
        let known: HashSet<i32> = first.keys().chain(processes.keys()).copied().collect();
        let mut seen_pids = BTreeSet::new();
        for poll in 0..POLLS {
            if poll > 0 {
                std::thread::sleep(POLL_GAP);
            }
            for pid in self::members(host, &dir) {
                if known.contains(&pid) || !seen_pids.insert(pid) {
                    continue;
                }
                if found.seen.len() < KEEP_TASKS {
                    let st = super::process::read_stat(host, &format!("/proc/{pid}/stat")).ok();
                    found.seen.push(SeenTask {
                        pid,
                        ppid: st.as_ref().map(|s| s.ppid),
                        comm: st
                            .map(|s| crate::escape::escape(&s.comm))
                            .unwrap_or_default(),
                    });
                }
            }
        }
        found.new_tasks = seen_pids.len();
        out.push(found);
    }
    out
}

/// Ticks a process used over the interval, with its reaped children's.
pub fn used_ticks(first: &BTreeMap<i32, ProcStat>, p: &Process) -> u64 {
    let now = p.stat.cpu_ticks() + p.stat.child_ticks();
    match first.get(&p.pid) {
        Some(s0) if s0.starttime == p.stat.starttime => {
            now.saturating_sub(s0.cpu_ticks() + s0.child_ticks())
        }
        _ => now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(pairs: &[(&str, u64)]) -> Reading {
        Reading {
            mount: "/sys/fs/cgroup".into(),
            kind: Some(Kind::V2),
            usage_ns: pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            truncated: false,
        }
    }

    #[test]
    fn own_time_is_usage_less_children() {
        let a = reading(&[("", 100), ("/user.slice", 50), ("/user.slice/u1", 10)]);
        let b = reading(&[("", 400), ("/user.slice", 250), ("/user.slice/u1", 200)]);
        let own = own_deltas(&a, &b);
        assert_eq!(own[""], 300 - 200);
        assert_eq!(own["/user.slice"], 200 - 190);
        assert_eq!(own["/user.slice/u1"], 190);
    }

    #[test]
    fn a_cgroup_made_meanwhile_counts_nowhere() {
        let a = reading(&[("", 100)]);
        let b = reading(&[("", 400), ("/new", 250)]);
        let own = own_deltas(&a, &b);
        assert_eq!(own[""], 300);
        assert!(!own.contains_key("/new"));
    }
}
