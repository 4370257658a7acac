//! Which processes a scan looks at closer (content inspection, persistence
//! links) and which it shows on top.

use crate::collect::process::{cgroup_context, Process};
use crate::collect::Snapshot;
use crate::detect::{self, Finding};
use crate::escape::{escape, escape_args};
use crate::host::Host;
use crate::report::model::{Parent, TopProcess};
use crate::rules::Rules;

/// Processes whose content is inspected: any miner signal, or at least
/// [`detect::miner::HIGH_CPU_PERCENT`] of one CPU in the sample (issue 9) or over
/// a life of a minute or more (a miner paused while watched, issue 23); never Quarry itself, a
/// kernel thread, or a process the hidden-process check reports.
pub(super) fn inspection_targets(
    snap: &Snapshot,
    rules: &Rules,
    me: Option<i32>,
    hidden: &[i32],
) -> Vec<i32> {
    snap.processes
        .values()
        .filter(|p| Some(p.pid) != me && !p.is_kernel_thread() && !hidden.contains(&p.pid))
        .filter(|p| {
            // A sealed memfd alone is what runc and systemd run: not a reason.
            p.cpu_percent >= detect::miner::HIGH_CPU_PERCENT
                || p.lifetime
                    .is_some_and(|(pct, age)| detect::miner::is_heavy(pct, age))
                || detect::miner::signals(snap, rules, p, &[])
                    .iter()
                    .any(|s| !(s.id == "exe-memfd" && s.weight <= 1))
        })
        .map(|p| p.pid)
        .collect()
}

/// A process as the persistence links see it: its executable's path,
/// identity and SHA-256 (through `/proc/PID/exe`, so a deleted file has them).
pub(super) fn flagged(
    host: &Host,
    snap: &Snapshot,
    pid: i32,
    malicious: bool,
) -> Option<detect::persistence::Flagged> {
    let p = snap.processes.get(&pid);
    // The executable's path as the host names it: a container's miner's
    // `/usr/local/bin/x` is not the host's file of that name.
    let ins = snap.inspections.get(&pid);
    let exe = match ins.filter(|i| i.root.is_some()) {
        Some(i) => i.exe_host.as_ref().map(|h| h.as_bytes().to_vec()),
        None => p
            .and_then(|p| p.exe.as_ref().ok())
            .filter(|e| !e.memfd)
            .map(|e| e.path.clone()),
    };
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

pub(super) fn top_processes(
    host: &Host,
    snap: &Snapshot,
    findings: &[Finding],
    n: usize,
) -> Vec<TopProcess> {
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
