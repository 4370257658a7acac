//! Miner verdicts per process.
//!
//! Each process collects [`Signal`]s; their weights add up to a score:
//!
//! | score | verdict | severity |
//! |---|---|---|
//! | ≥ 5 | malicious | high |
//! | 3–4 | suspicious | medium |
//! | < 3 | nothing to report | — |
//!
//! Weights (built-in signals here, indicator signals from the rules file):
//! a stratum URL 5; a known miner name 3; XMRig options 3; a pool name 3; a
//! Monero wallet 3; a kernel-thread masquerade 4; an unsealed memory-only
//! executable 2 (sealed 1: runc and systemd use sealed memfds); a deleted
//! executable 2; a hidden directory in a temporary or system place 2; an
//! algorithm name 2; a temporary directory 1; a pool port 1; high CPU 1.
//!
//! So no weak signal alone (port, /tmp, high CPU, memfd) reaches "suspicious",
//! and "malicious" needs either a miner-specific fact (a stratum URL) or several
//! independent ones (a miner name in /tmp burning CPU).

use std::collections::HashMap;

use super::{Basis, Evidence, Finding, Severity, Signal, Subject, Technique};
use crate::collect::inspect::Inspection;
use crate::collect::process::{basename, Process, ReadError};
use crate::collect::{net, Snapshot};
use crate::escape::{escape, escape_args};
use crate::rules::{Indicator, Kind, Rules};

/// Score at which a process is called malicious.
pub const MALICIOUS: u32 = 5;
/// Score at which a process is called suspicious.
pub const SUSPICIOUS: u32 = 3;
/// A process using at least this share of one CPU over the interval counts as
/// busy (one weak signal).
pub const HIGH_CPU_PERCENT: f64 = 50.0;
/// `TASK_COMM_LEN - 1`: the kernel truncates process names to 15 bytes.
const COMM_MAX: usize = 15;

/// Verdicts for every process in the snapshot, most severe first.
pub fn detect(snap: &Snapshot, rules: &Rules) -> Vec<Finding> {
    let conns = connections_by_pid(snap, rules);
    let mut out: Vec<Finding> = snap
        .processes
        .values()
        .filter_map(|p| {
            judge(
                snap,
                rules,
                p,
                conns.get(&p.pid).map(Vec::as_slice).unwrap_or(&[]),
            )
        })
        .collect();
    out.extend(planted_configs(snap));
    out.sort_by(|a, b| {
        b.score
            .cmp(&a.score)
            .then(a.subject.pid.cmp(&b.subject.pid))
    });
    out
}

/// Miner configurations found near a process that are not its own (owned by
/// another user, or writable by others): evidence about whoever wrote
/// them, never about the process (`miner.planted-config`, medium, not acted
/// on by default).
fn planted_configs(snap: &Snapshot) -> Vec<Finding> {
    let mut out: Vec<Finding> = Vec::new();
    for (pid, ins) in &snap.inspections {
        for c in ins.configs.iter() {
            let Some(why) = &c.foreign else { continue };
            let shown = c.path.display();
            if let Some(f) = out
                .iter_mut()
                .find(|f| f.subject.path.as_deref() == Some(shown.as_str()))
            {
                f.evidence.push(Evidence::new(
                    "near",
                    format!("PID {pid} ({})", c.found.words()),
                ));
                continue;
            }
            let name = snap
                .processes
                .get(pid)
                .map(|p| escape(p.name()))
                .unwrap_or_default();
            let user = snap.users.name(c.uid);
            let mut remedies = Vec::new();
            if let Some(h) = &c.host_path {
                remedies.push(super::Remedy::QuarantineFile {
                    path: h.clone(),
                    id: None,
                    direct: false,
                    judged: super::Judged::Content(c.sha256.clone()),
                });
            }
            out.push(Finding {
                rule: "miner.planted-config".into(),
                severity: Severity::Medium,
                verdict: None,
                title: format!(
                    "a miner configuration {shown} written by {} (uid {}), not by PID {pid} {name}'s user: evidence about uid {}, not about the process",
                    escape(user.as_bytes()),
                    c.uid,
                    c.uid
                ),
                subject: Subject {
                    pid: None,
                    name: None,
                    path: Some(shown.clone()),
                },
                techniques: vec![Technique::new("T1496")],
                signals: Vec::new(),
                score: None,
                evidence: vec![
                    Evidence::new(
                        "file",
                        format!(
                            "{shown}: {why}; owner uid {}, mode {:o}, sha256 {} (stat {shown}; cat {shown})",
                            c.uid,
                            c.mode,
                            &c.sha256[..16]
                        ),
                    ),
                    Evidence::new("pools", pools_words(c)),
                    Evidence::new("near", format!("PID {pid} {name} ({})", c.found.words())),
                    Evidence::new(
                        "why it is not the process's",
                        "a file is evidence about a process only when the process's user or root wrote it and nobody else can change it; anybody who can write here could have put it beside the process",
                    ),
                ],
                remedies,
            });
        }
    }
    out
}

/// Established connections to pool ports, per owning PID.
fn connections_by_pid<'a>(snap: &'a Snapshot, rules: &Rules) -> HashMap<i32, Vec<&'a net::Socket>> {
    let ports = rules.pool_ports();
    let mut by_pid: HashMap<i32, Vec<&net::Socket>> = HashMap::new();
    for s in &snap.sockets {
        if s.state != net::TCP_ESTABLISHED || !ports.contains(&s.remote_port) {
            continue;
        }
        for pid in snap.socket_owners.get(&s.inode).into_iter().flatten() {
            by_pid.entry(*pid).or_default().push(s);
        }
    }
    by_pid
}

/// Least age for a lifetime CPU average to count (younger processes are
/// what the sample measures).
pub const HISTORY_MIN_AGE_SECONDS: f64 = 60.0;

/// True when a process of `age` seconds used `pct`% of one CPU over its
/// life: at least [`HIGH_CPU_PERCENT`] for a minute or more.
pub fn is_heavy(pct: f64, age: f64) -> bool {
    age >= HISTORY_MIN_AGE_SECONDS && pct >= HIGH_CPU_PERCENT
}

fn human_age(secs: f64) -> String {
    match secs {
        s if s < 120.0 => format!("{s:.0} s"),
        s if s < 7200.0 => format!("{:.0} min", s / 60.0),
        s if s < 172_800.0 => format!("{:.0} h", s / 3600.0),
        s => format!("{:.0} days", s / 86400.0),
    }
}

/// What a signal of this id rests on (see [`Basis`]): a name, a folder and
/// what restarts a process are its surroundings; the rest is its own.
pub fn basis_of(id: &str) -> Basis {
    match id {
        "miner-name" | "exe-in-temp-dir" | "exe-hidden-dir" | "restarted" => Basis::Ambient,
        _ => Basis::Own,
    }
}

fn signal(id: &str, weight: u32, detail: String, technique: &str) -> Signal {
    Signal {
        id: id.into(),
        weight,
        detail,
        technique: Technique::new(technique),
        source: None,
        basis: basis_of(id),
    }
}

fn from_indicator(ind: &Indicator, detail: String) -> Signal {
    let id = ind.kind.signal_id();
    Signal {
        id: id.into(),
        weight: ind.weight,
        detail,
        technique: Technique::new(&ind.technique),
        source: Some(format!("{} ({})", ind.source, ind.origin)),
        basis: basis_of(id),
    }
}

/// The weight of the process's own evidence among its signals.
pub fn own_score(signals: &[Signal]) -> u32 {
    signals
        .iter()
        .filter(|s| s.basis == Basis::Own)
        .map(|s| s.weight)
        .sum()
}

/// The signals of one process (public for tests and for hidden processes).
pub fn signals(snap: &Snapshot, rules: &Rules, p: &Process, conns: &[&net::Socket]) -> Vec<Signal> {
    let mut sig = Vec::new();
    if p.is_kernel_thread() || (p.cmdline.is_empty() && p.exe == Err(ReadError::Missing)) {
        return sig; // kernel threads and zombies have nothing to judge
    }
    let exe = p.exe.as_ref().ok();
    // The executable path: from /proc/PID/exe, or an absolute argv[0] if unreadable.
    let exe_path: Option<&[u8]> = exe
        .map(|e| e.path.as_slice())
        .or_else(|| p.argv0().filter(|a| a.starts_with(b"/")));

    // 1. Known miner names.
    let mut names: Vec<(&str, &[u8])> = vec![("process name", p.name())];
    if let Some(a) = p.argv0() {
        names.push(("argv[0]", basename(a)));
    }
    if let Some(e) = exe {
        names.push(("executable", e.file_name()));
    }
    let mut seen_name = false;
    // The name that fired `miner-name`: it must not fire a second signal.
    let mut named_by: Option<Vec<u8>> = None;
    for (what, n_raw) in &names {
        if seen_name {
            break;
        }
        let n = String::from_utf8_lossy(n_raw).to_ascii_lowercase();
        for ind in rules.of(Kind::ProcessName) {
            let hit = ind.values.iter().any(|v| {
                *v == n || (*what == "process name" && n.len() == COMM_MAX && v.starts_with(&n))
            });
            if hit {
                sig.push(from_indicator(
                    ind,
                    format!("{what} \"{}\": {}", crate::escape::escape_str(&n), ind.note),
                ));
                seen_name = true;
                named_by = Some(n_raw.to_vec());
                break;
            }
        }
    }

    // 2. Mining strings in the command line: each rules entry counts once.
    let cmd = p.cmdline_lower();
    if let Some(algo) = algorithm_option(&p.cmdline) {
        if let Some(ind) = rules
            .of(Kind::Algorithm)
            .find(|ind| ind.values.contains(&algo))
        {
            sig.push(from_indicator(
                ind,
                format!(
                    "algorithm option \"{}\": {}",
                    crate::escape::escape_str(&algo),
                    ind.note
                ),
            ));
        }
    }
    if !cmd.is_empty() {
        for ind in rules.of(Kind::Cmdline) {
            if let Some(v) = ind.values.iter().find(|v| cmd.contains(v.as_str())) {
                sig.push(from_indicator(
                    ind,
                    format!(
                        "command line contains \"{}\": {}",
                        crate::escape::escape_str(v),
                        ind.note
                    ),
                ));
            }
        }
        if let Some(w) = find_wallet(&p.cmdline) {
            sig.push(signal(
                "wallet-address",
                3,
                format!(
                    "command line holds a Monero-style wallet address {}…",
                    &w[..12]
                ),
                "T1496",
            ));
        }
    }

    // 3. Where the executable lives.
    if let Some(path) = exe_path.filter(|_| !exe.is_some_and(|e| e.memfd)) {
        let lower = String::from_utf8_lossy(path).to_ascii_lowercase();
        let temp = rules.of(Kind::TempDir).find_map(|ind| {
            ind.values
                .iter()
                .find(|d| lower.starts_with(d.as_str()))
                .map(|d| (ind, d))
        });
        if let Some((ind, d)) = temp {
            sig.push(from_indicator(
                ind,
                format!("executable {} is under {d}: {}", escape(path), ind.note),
            ));
        }
        if let Some(dir) = hidden_dir(path) {
            let in_home = lower.starts_with("/root/") || lower.starts_with("/home/");
            if temp.is_some() || !in_home {
                sig.push(signal(
                    "exe-hidden-dir",
                    2,
                    format!(
                        "executable {} is inside the hidden directory {}",
                        escape(path),
                        escape(dir)
                    ),
                    "T1564.001",
                ));
            }
        }
    }
    if let Some(e) = exe {
        if e.memfd {
            let (w, how) = match e.memfd_sealed {
                Some(true) => (1, "sealed (as runc and systemd use)"),
                Some(false) => (2, "not sealed"),
                None => (2, "seal state unknown"),
            };
            sig.push(signal(
                "exe-memfd",
                w,
                format!(
                    "executable exists only in memory ({}), {how}: no file on disk",
                    escape(&e.link)
                ),
                "T1620",
            ));
        } else if e.deleted {
            sig.push(signal(
                "exe-deleted",
                2,
                format!(
                    "executable {} was deleted while the process runs",
                    escape(&e.link)
                ),
                "T1070.004",
            ));
        }
    }

    // 4. Kernel-thread masquerade: a user-space process named like a kernel thread.
    if let Some((what, n)) = kthread_like(rules, p, named_by.as_deref()) {
        sig.push(signal(
            "kthread-masquerade",
            4,
            format!(
                "{what} \"{}\" looks like a kernel thread, but it runs the user-space executable {}",
                escape(n),
                exe.map_or_else(|| "(unreadable)".into(), |e| escape(&e.link))
            ),
            "T1036.004",
        ));
    }

    // 5. Connections to pool ports.
    if !conns.is_empty() {
        let ind = rules.of(Kind::PoolPort).next();
        let list: Vec<String> = conns.iter().map(|s| s.remote_str()).collect();
        let mut detail = format!("established TCP connection to {}", list.join(", "));
        if let Some(ns) = snap
            .inspections
            .get(&p.pid)
            .and_then(|i| i.namespaces.netns.as_deref())
        {
            detail.push_str(&format!(
                " in network namespace {ns}, not the host's (see the namespace evidence)"
            ));
        }
        sig.push(match ind {
            Some(ind) => from_indicator(ind, format!("{detail}: {}", ind.note)),
            None => signal("pool-port", 1, detail, "T1571"),
        });
    }

    // 6. Sustained CPU.
    if p.cpu_percent >= HIGH_CPU_PERCENT {
        sig.push(signal(
            "high-cpu",
            1,
            format!(
                "used {:.0}% of one CPU over the {:.1} s sample",
                p.cpu_percent,
                snap.elapsed.as_secs_f64()
            ),
            "T1496",
        ));
    }

    // 6b. CPU over its life: a miner paused while Quarry (or top, or ps)
    // runs keeps what it used before (issue 23).
    if let Some((pct, age)) = p.lifetime {
        if p.cpu_percent < HIGH_CPU_PERCENT && is_heavy(pct, age) {
            let stopped = p.stat.state == 'T' || p.stat.state == 't';
            sig.push(signal(
                "heavy-history",
                if stopped { 2 } else { 1 },
                format!(
                    "used {pct:.0}% of one CPU over its {} life, {:.0}% in the sample{}",
                    human_age(age),
                    p.cpu_percent,
                    if stopped {
                        " and is stopped (state T) now: a miner paused while it is watched"
                    } else {
                        ""
                    }
                ),
                "T1496",
            ));
        }
    }

    // 7. What it carries, reads and what restarts it (collect::inspect).
    if let Some(ins) = snap.inspections.get(&p.pid) {
        inspection_signals(p, ins, snap, &mut sig);
    }
    sig
}

/// Whether a process started before the sample's first reading and used at
/// least [`HIGH_CPU_PERCENT`] of one CPU over all of it.
fn busy_whole_sample(snap: &Snapshot, p: &Process) -> bool {
    p.cpu_percent >= HIGH_CPU_PERCENT
        && snap
            .first
            .get(&p.pid)
            .is_some_and(|f| f.starttime == p.stat.starttime)
}

/// Signals from what the process carries (content signatures in its
/// executable and memory), the miner configuration it reads, what restarts
/// it, and a memory-only or deleted executable kept busy.
fn inspection_signals(p: &Process, ins: &Inspection, snap: &Snapshot, sig: &mut Vec<Signal>) {
    // The program is a package's own unchanged file (a compiler, an
    // interpreter, grep, an editor): its memory holds whatever it reads,
    // miner source code included. Only a strong rule (a live job, a login
    // with a wallet: data, not code) counts in its memory then.
    let packaged = ins
        .exe_package
        .as_ref()
        .filter(|(_, ok)| *ok == Some(true))
        .map(|(name, _)| name.clone());
    let mut rules: Vec<&str> = Vec::new();
    // Each rule once, shown by its best place: the file, then code or
    // constants in memory, then data in memory.
    let mut all: Vec<(u8, &crate::collect::signatures::Match)> = ins
        .exe_matches
        .iter()
        .map(|m| (0, m))
        .chain(ins.mem_matches.iter().map(|m| (1 + m.in_data as u8, m)))
        .collect();
    all.sort_by_key(|(rank, _)| *rank);
    for (rank, m) in all {
        if rules.contains(&m.rule.as_str()) {
            continue;
        }
        rules.push(&m.rule);
        let in_file = rank == 0;
        let mut weight = m.weight;
        let mut detail = format!(
            "{} rule {} matched {} at {}: {} {}{}",
            m.origin,
            m.rule,
            if in_file {
                "the executable"
            } else {
                "its memory"
            },
            m.at,
            m.string,
            m.data,
            if m.description.is_empty() {
                String::new()
            } else {
                format!(" ({})", m.description)
            }
        );
        if m.in_data && !in_file && weight < MALICIOUS {
            // Writable memory holds what the process built or read (a test
            // harness writing miner-like text, an editor's buffer): only the
            // strong rules, which need live pool data, count there.
            weight = 0;
            detail.push_str(
                "; not counted: found in writable memory, data the process holds or read rather than code it carries",
            );
        } else if ins.quarry_exe && !in_file {
            weight = 0;
            detail.push_str(
                "; not counted: the process runs Quarry's own executable, whose memory holds Quarry's compiled rules",
            );
        } else if let (Some(pkg), false) = (&packaged, in_file) {
            if weight < MALICIOUS {
                weight = 0;
                detail.push_str(&format!(
                    "; not counted: the program is package {pkg}'s unchanged file, whose memory holds what it reads (miner source code too)"
                ));
            }
        }
        sig.push(Signal {
            id: "content-signature".into(),
            weight,
            detail,
            technique: Technique::new(&m.technique),
            source: Some(format!("YARA rule {} ({})", m.rule, m.origin)),
            basis: Basis::Own,
        });
    }
    let busy = p.cpu_percent >= HIGH_CPU_PERCENT;
    for c in ins.configs.iter().filter(|c| c.foreign.is_none()) {
        // Named or held open, the file is the process's own evidence. Only
        // lying nearby, it counts in full when the process is busy doing
        // what the file configures, and never alone where every user can
        // write (a guard or a backup job in the same folder is not the
        // miner the file configures).
        let (weight, basis, note) = if c.found.is_own() {
            (MALICIOUS, Basis::Own, "")
        } else if c.open_directory {
            (
                2,
                Basis::Ambient,
                "; counts 2: a file in a folder every user can write is never enough alone",
            )
        } else if busy {
            (MALICIOUS, Basis::Ambient, "")
        } else {
            (
                2,
                Basis::Ambient,
                "; counts 2: the process is not busy, so the file may configure another program of the folder",
            )
        };
        sig.push(Signal {
            id: "miner-config".into(),
            weight,
            detail: format!(
                "reads the miner configuration {} ({}, {}): {}{note}",
                c.path.display(),
                c.found.words(),
                owner_words(c),
                pools_words(c)
            ),
            technique: Technique::new("T1496"),
            source: None,
            basis,
        });
    }
    if let Some(m) = &ins.config_missing {
        sig.push(signal(
            "config-deleted",
            1,
            format!("the configuration its command line names is gone: {m}"),
            "T1070.004",
        ));
    }
    if let Some(what) = &ins.exe_served {
        sig.push(signal(
            "exe-served",
            2,
            format!(
                "its executable is served by a program or another machine, not by the kernel: {what}; code there hides from every reader its server chooses"
            ),
            "T1564",
        ));
    }
    let fileless = p.exe.as_ref().ok().filter(|e| {
        (e.memfd && e.memfd_sealed != Some(true))
            || (e.deleted && !e.memfd && ins.exe_package.is_none())
    });
    if let Some(e) = fileless.filter(|_| busy_whole_sample(snap, p)) {
        sig.push(signal(
            "fileless-busy",
            3,
            format!(
                "ran from {} ({}) and used {:.0}% of one CPU for the whole {:.1} s sample: code with no file on disk, kept busy",
                escape(&e.link),
                if e.memfd { "an unsealed memory file" } else { "a deleted file no package owns" },
                p.cpu_percent,
                snap.elapsed.as_secs_f64()
            ),
            "T1620",
        ));
    }
    // A restarter raises a miner signal already there; it never creates one,
    // and busy CPU or a port alone is not one (a service cron keeps alive is
    // not a miner by that).
    let miner_signal = sig
        .iter()
        .any(|s| s.weight > 0 && !matches!(s.id.as_str(), "high-cpu" | "pool-port"));
    if !ins.restarters.is_empty() && miner_signal {
        sig.push(signal(
            "restarted",
            3,
            format!(
                "restarted by what runs its exact executable: {}{}",
                ins.restarters.join("; "),
                ins.restart_seen
                    .as_deref()
                    .map(|r| format!("; {r}"))
                    .unwrap_or_default()
            ),
            "T1496",
        ));
    }
}

/// Judges one process.
pub fn judge(
    snap: &Snapshot,
    rules: &Rules,
    p: &Process,
    conns: &[&net::Socket],
) -> Option<Finding> {
    let sig = signals(snap, rules, p, conns);
    let score: u32 = sig.iter().map(|s| s.weight).sum();
    let (verdict, severity) = if score >= MALICIOUS {
        ("malicious", Severity::High)
    } else if score >= SUSPICIOUS {
        ("suspicious", Severity::Medium)
    } else {
        return None;
    };
    let mut techniques: Vec<Technique> = Vec::new();
    for s in &sig {
        if !techniques.contains(&s.technique) {
            techniques.push(s.technique.clone());
        }
    }
    let shown = display_name(p);
    let name = match p.argv0() {
        Some(a) if shown.contains("(kernel name") => escape(a),
        _ => escape(p.name()),
    };
    let ins = snap.inspections.get(&p.pid);
    let mut remedies = process_remedies_for(p, ins);
    if verdict == "malicious" {
        // Its configuration is the miner's own: it goes with it, as the
        // inode the scan read (the host path that leads to it), or not at
        // all.
        for c in ins.map_or(&[][..], |i| &i.configs) {
            if c.foreign.is_some() || c.path.as_bytes().starts_with(b"/memfd:") {
                continue;
            }
            remedies.push(match &c.host_path {
                Some(h) => super::Remedy::QuarantineFile {
                    path: h.clone(),
                    id: None,
                    direct: true,
                    judged: super::Judged::Content(c.sha256.clone()),
                },
                None => super::Remedy::Unreachable {
                    path: c.path.clone(),
                    why: unreachable_why(ins, "the configuration"),
                },
            });
        }
    }
    let mut reasons: Vec<&str> = Vec::new();
    for s in &sig {
        if !reasons.contains(&s.id.as_str()) {
            reasons.push(&s.id);
        }
    }
    let title = format!(
        "PID {} {shown} is {} ({})",
        p.pid,
        if verdict == "malicious" {
            "a cryptominer"
        } else {
            "possibly a cryptominer"
        },
        reasons.join(", ")
    );
    Some(Finding {
        remedies,
        rule: "miner.process".into(),
        severity,
        verdict: Some(verdict.into()),
        title,
        subject: Subject {
            pid: Some(p.pid),
            name: Some(name),
            path: p.exe.as_ref().ok().map(|e| escape(&e.link)),
        },
        techniques,
        signals: sig,
        score: Some(score),
        evidence: process_evidence(snap, p),
    })
}

/// How a process is named in a title: its kernel name, or, for a program
/// run from a memfd (`fexecve` names it after `/proc/self/fd/N`, "3", or the
/// memfd, "memfd:x"), its argv[0] with the kernel name beside it.
pub fn display_name(p: &Process) -> String {
    let n = p.name();
    let numeric = !n.is_empty() && n.iter().all(u8::is_ascii_digit);
    let memfd = p.exe.as_ref().is_ok_and(|e| e.memfd);
    if numeric || memfd {
        if let Some(a) = p.argv0().filter(|a| !a.is_empty() && *a != n) {
            return format!("\"{}\" (kernel name \"{}\")", escape(a), escape(n));
        }
    }
    format!("\"{}\"", escape(n))
}

/// The value of a process's own algorithm option, lower-cased: the word after
/// `-a`, `--algo` or `--algorithm`, or what follows `=` (`--algo=rx/0`) or is
/// glued to `-a` (`-arx/0`). Only arguments after argv[0] count.
pub fn algorithm_option(argv: &[Vec<u8>]) -> Option<String> {
    let words: Vec<String> = argv
        .iter()
        .skip(1)
        .map(|w| String::from_utf8_lossy(w).to_ascii_lowercase())
        .collect();
    for (i, w) in words.iter().enumerate() {
        for opt in ["--algorithm", "--algo", "-a"] {
            if w == opt {
                return words.get(i + 1).cloned();
            }
            if let Some(v) = w.strip_prefix(opt) {
                if let Some(v) = v.strip_prefix('=') {
                    return Some(v.to_string());
                }
                if opt == "-a" && !v.is_empty() && !v.starts_with('-') {
                    return Some(v.to_string());
                }
            }
        }
    }
    None
}

/// Why `fix` cannot reach a file of this process from the host.
fn unreachable_why(ins: Option<&Inspection>, what: &str) -> String {
    match ins.and_then(|i| i.root.as_deref()) {
        Some(root) => format!(
            "{what} lives in {root}, and no path of the host's mount namespace leads to the same inode: not quarantined (a host file of the same name is another file); fix stops the process and keeps a copy of its executable as evidence; remove the file inside the container, or the container"
        ),
        None => format!(
            "{what} was deleted or is reachable only through the process: not quarantined"
        ),
    }
}

/// Stop the process; quarantine its executable as the inode it runs (the
/// host path that leads to it), or say why not.
pub fn process_remedies_for(p: &Process, ins: Option<&Inspection>) -> Vec<super::Remedy> {
    let Some(ins) = ins else {
        return process_remedies(p);
    };
    let mut r = vec![super::Remedy::StopProcess {
        pid: p.pid,
        starttime: p.stat.starttime,
    }];
    let Ok(e) = &p.exe else {
        return r;
    };
    if e.memfd || e.deleted {
        return r;
    }
    if let Some(what) = &ins.exe_served {
        r.push(super::Remedy::Unreachable {
            path: crate::host::BytePath::new(e.path.clone()),
            why: format!("{what}: fix stops the process; the file stays with whoever serves it"),
        });
        return r;
    }
    match &ins.exe_host {
        Some(h) => r.push(super::Remedy::QuarantineFile {
            path: h.clone(),
            id: None,
            direct: true,
            judged: super::Judged::ExeOf(p.pid),
        }),
        None => r.push(super::Remedy::Unreachable {
            path: ins
                .exe_view
                .clone()
                .unwrap_or_else(|| crate::host::BytePath::new(e.path.clone())),
            why: unreachable_why(Some(ins), "the executable"),
        }),
    }
    r
}

/// "owned by root, mode 644" or the reason it is foreign.
fn owner_words(c: &crate::collect::minercfg::MinerConfig) -> String {
    format!("owner uid {}, mode {:o}", c.uid, c.mode)
}

fn pools_words(c: &crate::collect::minercfg::MinerConfig) -> String {
    c.pools
        .iter()
        .take(3)
        .map(|pl| {
            format!(
                "pool {} user {}{}",
                crate::escape::escape_str(&pl.url),
                crate::escape::escape_str(&pl.user),
                pl.algo
                    .as_deref()
                    .map(|a| format!(" algo {}", crate::escape::escape_str(a)))
                    .unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Stop the process; quarantine its executable if it is a file on disk.
pub fn process_remedies(p: &Process) -> Vec<super::Remedy> {
    let mut r = vec![super::Remedy::StopProcess {
        pid: p.pid,
        starttime: p.stat.starttime,
    }];
    if let Ok(e) = &p.exe {
        if !e.memfd && !e.deleted {
            r.push(super::Remedy::QuarantineFile {
                path: crate::host::BytePath::new(e.path.clone()),
                id: None,
                direct: true,
                judged: super::Judged::ExeOf(p.pid),
            });
        }
    }
    r
}

/// Facts about a process for a finding, each checkable by hand.
pub fn process_evidence(snap: &Snapshot, p: &Process) -> Vec<Evidence> {
    let mut ev = vec![Evidence::new("pid", p.pid.to_string())];
    ev.push(Evidence::new(
        "exe",
        match &p.exe {
            Ok(e) => format!("{} (ls -l /proc/{}/exe)", escape(&e.link), p.pid),
            Err(e) => format!("unreadable: {e:?}"),
        },
    ));
    let mut cmd = escape_args(&p.cmdline);
    if cmd.len() > 1024 {
        let cut = (0..=1024)
            .rev()
            .find(|i| cmd.is_char_boundary(*i))
            .unwrap_or(0);
        cmd.truncate(cut);
        cmd.push('…');
    }
    ev.push(Evidence::new("cmdline", cmd));
    if let Some(uid) = p.uid {
        ev.push(Evidence::new(
            "user",
            format!("{} (uid {uid})", snap.users.name(uid)),
        ));
    }
    ev.push(Evidence::new(
        "cpu",
        format!(
            "{:.1}% of one CPU, {} threads, nice {}",
            p.cpu_percent, p.stat.num_threads, p.stat.nice
        ),
    ));
    if let Some(ins) = snap.inspections.get(&p.pid) {
        let mut what = format!(
            "signatures matched against the executable ({} KiB) and {} KiB of private memory in {} regions",
            ins.exe_bytes >> 10,
            ins.mem_bytes >> 10,
            ins.mem_regions
        );
        if let Some(n) = &ins.exe_note {
            what.push_str(&format!("; executable not read: {n}"));
        }
        for s in &ins.mem_skipped {
            what.push_str(&format!("; skipped: {s}"));
        }
        ev.push(Evidence::new("content", what));
        for c in &ins.configs {
            let whose = match &c.foreign {
                Some(why) => format!("; NOT the process's own evidence: {why}"),
                None => String::new(),
            };
            let place = match (&c.root, &c.host_path) {
                (Some(root), Some(h)) => {
                    format!(
                        " in {root}, on the host {} (cat {})",
                        h.display(),
                        h.display()
                    )
                }
                (Some(root), None) => format!(
                    " in {root} (nsenter -t {} -m cat {})",
                    p.pid,
                    c.path.display()
                ),
                (None, _) => format!(" (cat {})", c.path.display()),
            };
            ev.push(Evidence::new(
                "config",
                format!(
                    "{} ({}, {}): {}; sha256 {}{place}{whose}",
                    c.path.display(),
                    c.found.words(),
                    owner_words(c),
                    pools_words(c),
                    &c.sha256[..16],
                ),
            ));
        }
        if let Some(root) = &ins.root {
            ev.push(Evidence::new(
                "root",
                format!(
                    "its files are resolved in {root}{} (ls -l /proc/{}/root/)",
                    ins.exe_host
                        .as_ref()
                        .map(|h| format!("; its executable is {} on the host", h.display()))
                        .unwrap_or_else(|| {
                            "; its executable is reachable from the host only through the process"
                                .into()
                        }),
                    p.pid
                ),
            ));
        }
        for n in &ins.not_read {
            ev.push(Evidence::new("not read", n.clone()));
        }
        let ns = &ins.namespaces;
        if ns.netns.is_some() || ns.nspid.is_some() || ns.container.is_some() {
            let mut parts = Vec::new();
            if let Some(n) = &ns.netns {
                parts.push(format!("network {n} (not the host's)"));
            }
            if let Some(inner) = &ns.nspid {
                parts.push(format!(
                    "PID {} inside its PID namespace (NSpid: {inner})",
                    inner.split_whitespace().last().unwrap_or("?")
                ));
            }
            if let Some(c) = &ns.container {
                parts.push(format!("container {c}"));
            }
            if let Some(u) = &ns.unit {
                parts.push(format!("unit {u}"));
            }
            parts.push(format!(
                "check: nsenter -t {} -n ss -tnp; grep NSpid /proc/{}/status",
                p.pid, p.pid
            ));
            ev.push(Evidence::new("namespace", parts.join("; ")));
        }
        for r in &ins.restarters {
            ev.push(Evidence::new("restarted by", r.clone()));
        }
        if let Some(r) = &ins.restart_seen {
            ev.push(Evidence::new("restart seen", r.clone()));
        }
        if let Some((pkg, ok)) = &ins.exe_package {
            ev.push(Evidence::new(
                "package",
                format!(
                    "executable path installed by {pkg}{} (dpkg -S; dpkg --verify {pkg})",
                    match ok {
                        Some(true) => ", checksum matches",
                        Some(false) => ", checksum DIFFERS",
                        None => "",
                    }
                ),
            ));
        }
    }
    let chain: Vec<String> = snap
        .ancestors(p.pid)
        .iter()
        .map(|(pid, n)| format!("{}({pid})", escape(n)))
        .collect();
    if !chain.is_empty() {
        ev.push(Evidence::new("parents", chain.join(" < ")));
    }
    ev
}

/// A hidden directory component (`.name`) of a path, as the directory path.
fn hidden_dir(path: &[u8]) -> Option<&[u8]> {
    let dir_end = path.iter().rposition(|b| *b == b'/')?;
    let mut start = 0;
    for (i, b) in path[..=dir_end].iter().enumerate() {
        if *b == b'/' {
            let comp = &path[start..i];
            if comp.len() > 1 && comp[0] == b'.' && comp != b".." {
                return Some(&path[..i]);
            }
            start = i + 1;
        }
    }
    None
}

/// Whether the process's argv[0] or name looks like a kernel thread, judged
/// against the kernel's own naming: a thread name from the rules exactly
/// (`kthreadd`, `kdevtmpfs`), or followed by its instance (`kworker/0:1`,
/// `ksoftirqd/3`, `kswapd0`), or a family prefix ending in `/`, `_` or `-`
/// (`migration/`, `rcu_`, `ext4-`), or any name in brackets as `ps` shows
/// kernel threads. `kdevtmpfsi` is not `kdevtmpfs`. A name that already fired
/// `miner-name` (`skip`) is not counted again.
fn kthread_like<'a>(
    rules: &Rules,
    p: &'a Process,
    skip: Option<&[u8]>,
) -> Option<(&'static str, &'a [u8])> {
    // A kernel thread has no executable; a zombie or an unreadable one says nothing.
    p.exe.as_ref().ok()?;
    let looks = |n: &[u8]| -> bool {
        if n.len() > 2 && n.starts_with(b"[") && n.ends_with(b"]") {
            return true; // ps shows kernel threads in brackets; the kernel never names one so
        }
        let s = String::from_utf8_lossy(n).to_ascii_lowercase();
        rules.values(Kind::KernelThreadName).any(|k| {
            if k.ends_with(['/', '_', '-']) {
                return s.starts_with(k);
            }
            match s.strip_prefix(k) {
                Some("") => true,
                Some(rest) => {
                    rest.starts_with(['/', ':']) || rest.starts_with(|c: char| c.is_ascii_digit())
                }
                None => false,
            }
        })
    };
    let candidates = [("argv[0]", p.argv0()), ("process name", Some(p.name()))];
    candidates
        .into_iter()
        .filter_map(|(what, n)| Some((what, n?)))
        .find(|(_, n)| Some(*n) != skip && looks(n))
}

/// Base58 alphabet (Bitcoin/Monero): no 0, O, I, l.
fn is_base58(b: u8) -> bool {
    b.is_ascii_alphanumeric() && !matches!(b, b'0' | b'O' | b'I' | b'l')
}

/// Finds a Monero address: 95 (standard) or 106 (integrated) base58 characters
/// starting with 4 or 8, as a token of the command line.
pub fn find_wallet(args: &[Vec<u8>]) -> Option<String> {
    for a in args {
        for tok in a.split(|b| !is_base58(*b)) {
            if (tok.len() == 95 || tok.len() == 106) && matches!(tok[0], b'4' | b'8') {
                return Some(String::from_utf8_lossy(tok).into_owned());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(state: char, sample: f64, lifetime: Option<(f64, f64)>) -> Process {
        Process {
            pid: 4242,
            stat: crate::collect::process::ProcStat {
                comm: b"cloud-agent".to_vec(),
                state,
                ..Default::default()
            },
            uid: Some(0),
            cmdline: vec![b"/usr/local/bin/cloud-agent".to_vec()],
            exe: Ok(crate::collect::process::Exe::from_link(
                b"/usr/local/bin/cloud-agent".to_vec(),
            )),
            cpu_percent: sample,
            cpu_ticks_in_interval: 0,
            lifetime,
            recovered: false,
        }
    }

    #[test]
    fn a_miner_paused_while_watched_keeps_its_history() {
        let snap = Snapshot::default();
        let rules = Rules::default();
        let heavy = |p: &Process| {
            signals(&snap, &rules, p, &[])
                .into_iter()
                .find(|s| s.id == "heavy-history")
        };
        // Stopped during the scan after 97 % of a CPU over 20 minutes.
        let s = heavy(&process('T', 0.0, Some((97.0, 1200.0)))).unwrap();
        assert_eq!(s.weight, 2);
        assert!(
            s.detail.contains("97% of one CPU over its 20 min life"),
            "{}",
            s.detail
        );
        assert!(s.detail.contains("stopped (state T)"), "{}", s.detail);
        // Running but quiet in the sample: one weak signal.
        assert_eq!(
            heavy(&process('S', 3.0, Some((80.0, 600.0))))
                .unwrap()
                .weight,
            1
        );
        // Busy in the sample (high-cpu says it), young, or light: none.
        assert!(heavy(&process('R', 99.0, Some((99.0, 600.0)))).is_none());
        assert!(heavy(&process('T', 0.0, Some((99.0, 30.0)))).is_none());
        assert!(heavy(&process('T', 0.0, Some((20.0, 6000.0)))).is_none());
    }

    #[test]
    fn algorithm_only_as_an_option_value() {
        let argv = |v: &[&str]| v.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>();
        assert_eq!(
            algorithm_option(&argv(&["x", "-a", "rx/0"])).as_deref(),
            Some("rx/0")
        );
        assert_eq!(
            algorithm_option(&argv(&["x", "--algo=RandomX"])).as_deref(),
            Some("randomx")
        );
        assert_eq!(
            algorithm_option(&argv(&["x", "-acn/r"])).as_deref(),
            Some("cn/r")
        );
        assert_eq!(
            algorithm_option(&argv(&[
                "cc1plus",
                "-DXMRIG_ALGO_RANDOMX",
                "randomx.cpp",
                "-o",
                "x"
            ])),
            None
        );
        // argv[0] never counts: a tool named -a is not an option.
        assert_eq!(algorithm_option(&argv(&["-a", "rx"])), None);
    }

    #[test]
    fn wallets() {
        let w = format!("4{}", "A".repeat(94));
        assert!(find_wallet(&[b"-u".to_vec(), format!("{w}.rig1").into_bytes()]).is_some());
        assert!(find_wallet(&[format!("5{}", "A".repeat(94)).into_bytes()]).is_none());
        assert!(find_wallet(&[format!("4{}", "0".repeat(94)).into_bytes()]).is_none());
    }

    #[test]
    fn hidden_dirs() {
        assert_eq!(hidden_dir(b"/tmp/.x/.y/miner"), Some(&b"/tmp/.x"[..]));
        assert_eq!(hidden_dir(b"/tmp/x/.miner"), None);
        assert_eq!(hidden_dir(b"/usr/bin/ls"), None);
    }
}
