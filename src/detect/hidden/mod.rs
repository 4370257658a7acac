//! Hidden processes and CPU time nobody accounts for.
//!
//! A PID is *hidden* when an independent view sees it (a system-call probe, a
//! cgroup list, a parent's children list, a private procfs) but neither the
//! `/proc` listing nor any listed process's threads account for it — or when
//! it is listed but `/proc/PID` cannot be read because something is mounted
//! over it. Before reporting, each candidate is re-checked: a PID that exited
//! meanwhile, or that belongs to a process born during the census, is a race,
//! not hiding.

use std::collections::{BTreeMap, BTreeSet};

use super::{miner, Evidence, Finding, Severity, Signal, Subject, Technique};
use crate::collect::census::{self, Census};
use crate::collect::process::Process;
use crate::collect::sched::SchedTask;
use crate::collect::Snapshot;
use crate::escape::{escape, escape_str};
use crate::host::Host;
use crate::rules::Rules;

mod cpu;
pub use cpu::*;

/// Delay before the second check of a hidden-process candidate.
pub const RECHECK_DELAY: std::time::Duration = std::time::Duration::from_millis(25);

/// A hidden process, with what each view said.
#[derive(Debug, Clone)]
pub struct Hidden {
    pub pid: i32,
    /// Views that saw it.
    pub seen_by: Vec<String>,
    /// Views that did not.
    pub missed_by: Vec<String>,
    /// Lookups by PID that denied it while a view still showed it: the
    /// lies of a system-call hook (empty for hiding that only filters lists).
    pub denied_by: Vec<String>,
    /// Thread IDs of it that answered probes.
    pub threads: Vec<i32>,
    /// What could be read of it, and how.
    pub process: Option<Process>,
    pub read_via: &'static str,
    /// The scheduler's line for it, when every lookup by PID is denied.
    pub sched: Option<SchedTask>,
    pub notes: Vec<Evidence>,
    /// Mount points over its /proc entry.
    pub mounts: Vec<String>,
    /// CPU over Quarry's measurement, % of one CPU, and the seconds measured.
    pub cpu: Option<(f64, f64)>,
}

/// Views beyond the census that Quarry reads when something points at a
/// kernel rootkit (unexplained CPU, a hook, a hidden module, `--deep`).
#[derive(Debug, Clone, Default)]
pub struct ExtraViews {
    /// The scheduler's task list (debugfs `sched/debug`) and where it was read.
    pub sched: Option<(BTreeMap<i32, SchedTask>, String)>,
    /// PIDs the kernel's allocator holds that no listing, thread list,
    /// process group or session explains.
    pub allocator_held: Vec<i32>,
    /// Whether the allocator can be asked again (root, x86-64, Linux ≥ 5.5).
    pub allocator_usable: bool,
}

/// PIDs the allocator may hold without a task of that PID being hidden:
/// every listed process and thread, and every process group and session ID
/// in use (a group keeps its PID after its leader exits). Quarry's own
/// probe helpers come and go: their PIDs are above `me`'s and re-checked.
pub fn allocator_explained(census: &Census, snap: &Snapshot) -> BTreeSet<i32> {
    let mut out: BTreeSet<i32> = census.listed.iter().copied().collect();
    out.extend(census.tasks.keys().copied());
    for s in snap.first.values() {
        out.insert(s.pgrp);
        out.insert(s.session);
    }
    for p in snap.processes.values() {
        out.insert(p.stat.pgrp);
        out.insert(p.stat.session);
    }
    out
}

/// The lookups by PID that deny `pid` now, by name.
pub fn denials(host: &Host, fresh: Option<&Host>, pid: i32) -> Vec<&'static str> {
    let mut d = Vec::new();
    let readable = host.exists(format!("/proc/{pid}/stat"))
        || fresh.is_some_and(|f| f.exists(format!("/proc/{pid}/stat")));
    if !readable {
        d.push("/proc/PID");
    }
    for (name, ok) in [
        ("kill", census::kill_probe(pid)),
        ("getpgid", census::getpgid_probe(pid)),
        ("getsid", census::getsid_probe(pid)),
        ("sched_getaffinity", census::affinity_probe(pid)),
        ("pidfd_open", census::pidfd_probe(pid)),
    ] {
        if !ok {
            d.push(name);
        }
    }
    d
}

/// Finds hidden processes. `fresh` is a private procfs view (if mounted).
pub fn find(
    host: &Host,
    fresh: Option<&Host>,
    census: &Census,
    snap: &Snapshot,
    extra: &ExtraViews,
) -> Vec<Hidden> {
    let mut out = Vec::new();
    let live = host.is_live();
    let relisted: BTreeSet<i32> = host
        .list_pids("/proc")
        .unwrap_or_default()
        .into_iter()
        .collect();

    // 1. PIDs that some view sees but no listing accounts for, and listed
    // PIDs that cannot be opened. Checked twice, RECHECK_DELAY apart: a task
    // that is being created or is exiting (a thread between its last probe
    // answer and its release, Quarry's own probe threads among them) must not
    // be reported.
    //
    // A task that every lookup by PID denies (`/proc/PID`, kill, getpgid)
    // is not taken for an exited one while a kernel list still shows it on a
    // re-read: a rootkit that hooks those calls makes exactly them lie.
    let me = std::process::id() as i32;
    let readable_tgid =
        |pid: i32| read_tgid(host, pid).or_else(|| fresh.and_then(|f| read_tgid(f, pid)));
    let still_seen = |pid: i32, relisted: &BTreeSet<i32>| -> bool {
        if relisted.contains(&pid) {
            return true;
        }
        if let Some(parent) = census.children.get(&pid) {
            let alive = *parent == 1 || census::kill_probe(*parent) || relisted.contains(parent);
            if alive && census::children_of(host, *parent).contains(&pid) {
                return true;
            }
        }
        if let Some(path) = census.cgroup.get(&pid) {
            if host.read_text(path).is_ok_and(|t| {
                t.split_ascii_whitespace()
                    .any(|w| w.parse::<i32>().ok() == Some(pid))
            }) {
                return true;
            }
        }
        extra.allocator_usable
            && crate::collect::pidalloc::probe(&[pid], 1, None).is_ok_and(|a| a.held.contains(&pid))
    };
    let still_hidden = |pid: i32, relisted: &BTreeSet<i32>| -> Option<i32> {
        let tgid = readable_tgid(pid);
        if relisted.contains(&pid) && tgid.is_some() {
            return None; // listed and readable: born during the census
        }
        match tgid {
            Some(tgid) => {
                if tgid == me {
                    return None; // one of Quarry's own threads
                }
                if tgid != pid && (relisted.contains(&tgid) || census.listed.contains(&tgid)) {
                    return None; // a thread created after its (visible) process's task list was read
                }
                Some(tgid)
            }
            None if !live => Some(pid),
            None => {
                if census::kill_probe(pid) || census::getpgid_probe(pid) {
                    return Some(pid); // unreadable, but the probes answer
                }
                // Every call denies it: a lie, or an exit. The views decide.
                still_seen(pid, relisted).then_some(pid)
            }
        }
    };
    let mut unaccounted = census.unaccounted();
    // Listed, but /proc/PID cannot be opened (a lookup hook, not a filter).
    let tgids: BTreeSet<i32> = census.tasks.values().copied().collect();
    for &pid in &census.listed {
        if !tgids.contains(&pid)
            && !snap.processes.contains_key(&pid)
            && relisted.contains(&pid)
            && readable_tgid(pid).is_none()
        {
            unaccounted.entry(pid).or_default().push("/proc listing");
        }
    }
    if let Some((tasks, _)) = &extra.sched {
        for &pid in tasks.keys() {
            if pid > 0 && !census.listed.contains(&pid) && !census.tasks.contains_key(&pid) {
                unaccounted.entry(pid).or_default().push("sched/debug");
            }
        }
    }
    for &pid in &extra.allocator_held {
        unaccounted.entry(pid).or_default().push("PID allocator");
    }
    let mut candidates: Vec<(i32, Vec<&'static str>, i32)> = Vec::new();
    for (pid, views) in unaccounted {
        if live && !relisted.is_empty() && views.iter().all(|v| *v == "proc-mount") {
            continue; // a mount point named like a PID that does not exist
        }
        if let Some(tgid) = still_hidden(pid, &relisted) {
            candidates.push((pid, views, tgid));
        }
    }
    if live && !candidates.is_empty() {
        std::thread::sleep(RECHECK_DELAY);
        let relisted2: BTreeSet<i32> = host
            .list_pids("/proc")
            .unwrap_or_default()
            .into_iter()
            .collect();
        candidates.retain(|(pid, _, _)| still_hidden(*pid, &relisted2).is_some());
    }
    let mut by_tgid: BTreeMap<i32, (BTreeSet<&'static str>, Vec<i32>)> = BTreeMap::new();
    for (pid, views, tgid) in candidates {
        let e = by_tgid.entry(tgid).or_default();
        e.0.extend(views);
        e.1.push(pid);
    }
    for (tgid, (views, ids)) in by_tgid {
        let mut seen: Vec<String> = views.iter().map(|v| v.to_string()).collect();
        let mut missed = Vec::new();
        if !views.contains("/proc listing") {
            missed.push("/proc listing (ps, top)".to_string());
        }
        let denied: Vec<String> = if live {
            denials(host, fresh, tgid)
                .into_iter()
                .map(str::to_string)
                .collect()
        } else {
            Vec::new()
        };
        if live {
            for name in [
                "kill",
                "getpgid",
                "getsid",
                "sched_getaffinity",
                "pidfd_open",
            ] {
                if !denied.iter().any(|d| d == name) && !seen.iter().any(|s| s == name) {
                    seen.push(name.into());
                }
            }
        }
        let direct = Process::read(host, tgid);
        let (process, read_via) = match direct {
            Some(p) => {
                seen.push("direct /proc/PID/stat".into());
                (
                    Some(p),
                    "direct open of /proc/PID (not listed, but readable)",
                )
            }
            None => match fresh.and_then(|f| Process::read(f, tgid)) {
                Some(mut p) => {
                    p.recovered = true;
                    (Some(p), "a private procfs mounted by Quarry")
                }
                None => (None, "nothing could be read through /proc"),
            },
        };
        let sched = extra
            .sched
            .as_ref()
            .and_then(|(t, _)| t.get(&tgid).cloned());
        if sched.is_some() && !seen.iter().any(|s| s == "sched/debug") {
            seen.push("sched/debug".into());
        }
        let mut notes = Vec::new();
        if let Some(parent) = census.children.get(&tgid) {
            notes.push(Evidence::new(
                "children",
                format!("listed in /proc/{parent}/task/*/children"),
            ));
        }
        if let Some(path) = census.cgroup.get(&tgid) {
            notes.push(Evidence::new(
                "cgroup",
                format!("listed in {}", escape(path.as_bytes())),
            ));
        }
        if let (Some(t), Some((_, src))) = (&sched, &extra.sched) {
            notes.push(Evidence::new(
                "scheduler",
                format!(
                    "{} \"{}\" state {}{}{} ({})",
                    t.pid,
                    escape(&t.comm),
                    t.state,
                    t.cpu.map_or(String::new(), |c| format!(" on CPU {c}")),
                    t.sum_exec_ms.map_or(String::new(), |ms| format!(
                        ", {:.1} s of CPU since it started",
                        ms / 1e3
                    )),
                    escape_str(src)
                ),
            ));
        }
        // Name only the lookups that denied it: where kill and getpgid saw
        // it, only /proc lied (issue 24).
        let denials = if denied.is_empty() {
            "/proc/PID could not be read".to_string()
        } else {
            format!("{} deny it", denied.join(", "))
        };
        if extra.allocator_held.contains(&tgid) {
            notes.push(Evidence::new(
                "PID allocator",
                format!("held by the kernel (clone3 with set_tid {tgid} answers EEXIST), while {denials}"),
            ));
        }
        if process.is_none() {
            notes.push(Evidence::new(
                "not recovered",
                if sched.is_some() {
                    format!("executable, command line, owner, open files and sockets: each is read through /proc/PID, and {denials}")
                } else {
                    format!("name, executable, command line, owner: {denials}, and no scheduler view was readable")
                },
            ));
        }
        let threads: Vec<i32> = ids.into_iter().filter(|i| *i != tgid).collect();
        out.push(Hidden {
            pid: tgid,
            seen_by: seen,
            missed_by: missed,
            denied_by: denied,
            threads,
            process,
            read_via,
            sched,
            notes,
            mounts: vec![],
            cpu: None,
        });
    }

    // 2. Listed PIDs whose /proc/PID is covered by a mount.
    let covered: BTreeSet<i32> = census
        .proc_mounts
        .iter()
        .map(|(p, _)| *p)
        .chain(
            snap.processes
                .values()
                .filter(|p| p.recovered)
                .map(|p| p.pid),
        )
        .filter(|p| census.listed.contains(p))
        .collect();
    for pid in covered {
        if live && !census::kill_probe(pid) {
            continue;
        }
        let process = snap
            .processes
            .get(&pid)
            .filter(|p| p.recovered)
            .cloned()
            .or_else(|| {
                let mut p = Process::read(fresh?, pid)?;
                p.recovered = true;
                Some(p)
            });
        let host_readable = Process::read(host, pid).is_some();
        if host_readable && process.as_ref().is_none_or(|p| !p.recovered) {
            continue; // a mount below /proc/PID that hides nothing
        }
        let mut notes: Vec<Evidence> = census
            .proc_mounts
            .iter()
            .filter(|(p, _)| *p == pid)
            .map(|(_, m)| Evidence::new("mountinfo", escape(m.line.as_bytes())))
            .collect();
        notes.push(Evidence::new(
            "check by hand",
            format!("grep ' /proc/{pid} ' /proc/self/mountinfo; ls /proc/{pid} (empty or foreign)"),
        ));
        let mut seen = vec!["/proc listing".to_string(), "kill".into()];
        if census
            .fresh_listed
            .as_ref()
            .is_some_and(|f| f.contains(&pid))
        {
            seen.push("fresh-procfs".into());
        }
        let mounts = census
            .proc_mounts
            .iter()
            .filter(|(p, _)| *p == pid)
            .map(|(_, m)| String::from_utf8_lossy(&m.mount_point).into_owned())
            .collect();
        out.push(Hidden {
            pid,
            denied_by: vec![],
            sched: None,
            cpu: None,
            mounts,
            seen_by: seen,
            missed_by: vec!["/proc/PID contents (ps, top read /proc/PID/stat)".into()],
            threads: vec![],
            read_via: if process.is_some() {
                "a private procfs mounted by Quarry"
            } else {
                "nothing could be read"
            },
            process,
            notes,
        });
    }
    out
}

fn read_tgid(host: &Host, pid: i32) -> Option<i32> {
    let text = host.read_text(format!("/proc/{pid}/status")).ok()?;
    crate::collect::process::status_field(&text, "Tgid").and_then(|v| v.parse().ok())
}

/// Turns hidden processes into findings, judging each recovered process with
/// the miner signals too.
pub fn findings(hidden: &[Hidden], snap: &Snapshot, rules: &Rules) -> Vec<Finding> {
    hidden
        .iter()
        .map(|h| {
            let mut signals = vec![Signal {
                id: "hidden-process".into(),
                weight: miner::MALICIOUS,
                detail: format!(
                    "seen by {}; missed by {}",
                    h.seen_by.join(", "),
                    h.missed_by.join(", ")
                ),
                technique: Technique::new("T1014"),
                source: None,
                basis: super::Basis::Own,
            }];
            let mut evidence = vec![
                Evidence::new("pid", h.pid.to_string()),
                Evidence::new("seen by", h.seen_by.join(", ")),
                Evidence::new("missed by", h.missed_by.join(", ")),
            ];
            if !h.denied_by.is_empty() {
                evidence.push(Evidence::new(
                    "denied by",
                    format!(
                        "{} (each answers \"no such process\" while a kernel list still shows it: a system-call hook lies)",
                        h.denied_by.join(", ")
                    ),
                ));
            }
            evidence.push(Evidence::new("read via", h.read_via));
            if !h.threads.is_empty() {
                let t: Vec<String> = h.threads.iter().map(i32::to_string).collect();
                evidence.push(Evidence::new("threads", t.join(" ")));
            }
            evidence.extend(h.notes.iter().cloned());
            if let Some((pct, secs)) = h.cpu {
                evidence.push(Evidence::new(
                    "cpu",
                    format!("{pct:.1}% of one CPU over {secs:.2} s measured by Quarry"),
                ));
            }
            let mut name = None;
            let mut path = None;
            let mut remedies: Vec<super::Remedy> = h
                .mounts
                .iter()
                .map(|m| super::Remedy::Unmount {
                    mount_point: m.clone(),
                })
                .collect();
            if let Some(p) = &h.process {
                let mut p = p.clone();
                if let Some((pct, _)) = h.cpu {
                    p.cpu_percent = pct;
                } else if p.cpu_percent == 0.0 && !snap.processes.contains_key(&p.pid) {
                    p.cpu_percent = lifetime_cpu(snap, &p);
                    evidence.push(Evidence::new(
                        "cpu",
                        format!(
                            "{:.1}% of one CPU on average since it started",
                            p.cpu_percent
                        ),
                    ));
                }
                signals.extend(miner::signals(snap, rules, &p, &[]));
                evidence.extend(
                    miner::process_evidence(snap, &p)
                        .into_iter()
                        .filter(|e| e.key != "pid"),
                );
                remedies.extend(miner::process_remedies(&p));
                name = Some(escape(p.name()));
                path = p.exe.as_ref().ok().map(|e| escape(&e.link));
            } else if let Some(t) = &h.sched {
                name = Some(escape(&t.comm));
            }
            let pid = h.pid;
            evidence.push(Evidence::new(
                "check by hand",
                if h.denied_by.is_empty() {
                    format!("ls /proc | grep -x {pid} (absent); cat /proc/{pid}/stat (readable)")
                } else {
                    format!(
                        "cat /proc/*/task/*/children | tr ' ' '\\n' | grep -x {pid}; kill -0 {pid} (No such process); mount -t debugfs none /sys/kernel/debug; grep -E ' {pid} ' /sys/kernel/debug/sched/debug"
                    )
                },
            ));
            let score = signals.iter().map(|s| s.weight).sum();
            let mut techniques: Vec<Technique> = Vec::new();
            for s in &signals {
                if !techniques.contains(&s.technique) {
                    techniques.push(s.technique.clone());
                }
            }
            Finding {
                remedies,
                rule: "hidden.process".into(),
                severity: Severity::Critical,
                verdict: Some("malicious".into()),
                title: if !h.denied_by.is_empty() && h.process.is_none() {
                    format!(
                        "PID {} {}is hidden by a kernel hook: {} still show it, but {} deny it",
                        h.pid,
                        name.as_ref().map_or(String::new(), |n| format!("\"{n}\" ")),
                        h.seen_by.join(", "),
                        h.denied_by.join(", ")
                    )
                } else if h.mounts.is_empty() {
                    format!(
                        "PID {} {}is hidden from ps and top (seen by {})",
                        h.pid,
                        name.as_ref().map_or(String::new(), |n| format!("\"{n}\" ")),
                        h.seen_by.join(", ")
                    )
                } else {
                    format!(
                        "PID {} {}is hidden from ps and top: something is mounted over /proc/{} (read through a private procfs)",
                        h.pid,
                        name.as_ref().map_or(String::new(), |n| format!("\"{n}\" ")),
                        h.pid
                    )
                },
                subject: Subject {
                    pid: Some(h.pid),
                    name,
                    path,
                },
                techniques,
                signals,
                score: Some(score),
                evidence,
            }
        })
        .collect()
}

/// Established TCP connections to pool ports that no visible process owns
/// (and no recovered hidden process explains): `hidden.socket`, medium.
pub fn socket_findings(
    census: &Census,
    rules: &Rules,
    hidden: &[Hidden],
    host: &Host,
    fresh: Option<&Host>,
) -> Vec<Finding> {
    if !census.fds_complete {
        return Vec::new();
    }
    let ports = rules.pool_ports();
    // Sockets held by recovered hidden processes are explained by them.
    let hidden_pids: Vec<i32> = hidden.iter().map(|h| h.pid).collect();
    let mut explained = crate::collect::net::all_socket_owners(host, &hidden_pids);
    if let Some(f) = fresh {
        explained.extend(crate::collect::net::all_socket_owners(f, &hidden_pids));
    }
    let mut out: Vec<Finding> = census
        .orphan_inet
        .iter()
        .filter(|s| s.state == crate::collect::net::TCP_ESTABLISHED && ports.contains(&s.remote_port))
        .filter(|s| !explained.contains_key(&s.inode))
        .map(|s| Finding {
            remedies: Vec::new(),
            rule: "hidden.socket".into(),
            severity: Severity::Medium,
            verdict: None,
            title: format!(
                "An established connection to {} (a mining-pool port) belongs to no visible process",
                s.remote_str()
            ),
            subject: Subject::default(),
            techniques: vec![Technique::new("T1014"), Technique::new("T1571")],
            signals: vec![],
            score: None,
            evidence: vec![
                Evidence::new("socket", format!("{} inode {} uid {}", s.proto, s.inode, s.uid)),
                Evidence::new("check by hand", format!("grep ' {} ' /proc/net/{}; ls -l /proc/*/fd 2>/dev/null | grep {}", s.inode, s.proto, s.inode)),
            ],
        })
        .collect()
;
    // Connections inet_diag shows and /proc/net/tcp does not.
    if !census.diag_hidden.is_empty() {
        let wanted: std::collections::HashSet<u64> =
            census.diag_hidden.iter().map(|s| s.inode).collect();
        let mut pids: Vec<i32> = census.listed.iter().copied().collect();
        pids.extend(hidden_pids.iter().copied());
        let mut owners = crate::collect::net::socket_owners(host, &pids, &wanted);
        if let Some(f) = fresh {
            owners.extend(crate::collect::net::socket_owners(f, &pids, &wanted));
        }
        for s in &census.diag_hidden {
            let fmt = |(a, p): (std::net::IpAddr, u16)| match a {
                std::net::IpAddr::V6(a) => format!("[{a}]:{p}"),
                std::net::IpAddr::V4(a) => format!("{a}:{p}"),
            };
            let pool = ports.contains(&s.remote.1);
            let owner = owners.get(&s.inode).cloned().unwrap_or_default();
            let by_hidden = owner.iter().any(|p| hidden_pids.contains(p));
            let mut evidence = vec![
                Evidence::new(
                    "inet_diag",
                    format!(
                        "{} → {} state {} inode {} uid {}",
                        fmt(s.local),
                        fmt(s.remote),
                        tcp_state_name(s.state),
                        s.inode,
                        s.uid
                    ),
                ),
                Evidence::new(
                    "missed by",
                    "/proc/net/tcp and /proc/net/tcp6 (netstat), read between two inet_diag dumps that both showed it",
                ),
            ];
            if let (Some(tx), Some(rx)) = (s.bytes_acked, s.bytes_received) {
                evidence.push(Evidence::new(
                    "traffic",
                    format!("{tx} bytes sent and acknowledged, {rx} bytes received (tcp_info)"),
                ));
            }
            if !owner.is_empty() {
                let o: Vec<String> = owner.iter().map(i32::to_string).collect();
                evidence.push(Evidence::new("held by PID", o.join(" ")));
            }
            evidence.push(Evidence::new(
                "check by hand",
                format!(
                    "ss -tnpe | grep 'ino:{0}'; grep -c ' {0} ' /proc/net/tcp /proc/net/tcp6 (0: hidden)",
                    s.inode
                ),
            ));
            out.push(Finding {
                remedies: Vec::new(),
                rule: "hidden.socket".into(),
                severity: if pool || by_hidden {
                    Severity::Critical
                } else {
                    Severity::High
                },
                verdict: None,
                title: format!(
                    "A TCP {} {} → {} is hidden from /proc/net/tcp (netstat) but the kernel's socket diagnostics show it{}",
                    if s.state == crate::collect::net::TCP_ESTABLISHED { "connection" } else { "socket" },
                    fmt(s.local),
                    fmt(s.remote),
                    if pool { " (a mining-pool port)" } else { "" }
                ),
                subject: Subject {
                    pid: owner.first().copied(),
                    ..Subject::default()
                },
                techniques: vec![Technique::new("T1014"), Technique::new("T1571")],
                signals: vec![],
                score: None,
                evidence,
            });
        }
    }
    out
}

/// TCP state names (include/net/tcp_states.h).
fn tcp_state_name(s: u8) -> &'static str {
    const NAMES: &[&str] = &[
        "?",
        "ESTABLISHED",
        "SYN_SENT",
        "SYN_RECV",
        "FIN_WAIT1",
        "FIN_WAIT2",
        "TIME_WAIT",
        "CLOSE",
        "CLOSE_WAIT",
        "LAST_ACK",
        "LISTEN",
        "CLOSING",
        "NEW_SYN_RECV",
    ];
    NAMES.get(s as usize).copied().unwrap_or("?")
}
