//! From findings to a plan: what `quarry fix` would do, and what it refuses.
//!
//! What is acted on by default is what the scan *proved*: a process whose
//! verdict is malicious, a hidden process, a hooking preload library, a module
//! file named like a rootkit, and start-up entries linked to a malicious
//! process by its exact executable. Everything else is listed as "reported,
//! not acted on" until `--only` names it or `--force` allows it.
//!
//! Links are evidence, never names: a restarter is an ancestor of the miner
//! whose command line runs the miner's exact executable (same path, or a path
//! to the same inode).
//!
//! Files are protected by what they are: the real path (every link resolved at
//! scan time), the package that installed them (dpkg), and the system places;
//! only direct evidence or `--force` acts there.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::allowlist::Allowlist;
use crate::collect::packages::Packages;
use crate::collect::process::Process;
use crate::collect::Snapshot;
use crate::detect::{Finding, Remedy, Severity};
use crate::escape::escape;
use crate::host::{BytePath, FileId, Host};

/// A process the plan stops.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedProcess {
    pub pid: i32,
    pub starttime: u64,
    pub name: String,
    pub exe: BytePath,
    /// `miner` (named by a finding) or `restarter` (a watchdog that restarts one).
    pub role: &'static str,
    pub why: String,
}

/// A file the plan quarantines.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedFile {
    /// The path as the finding named it.
    pub named: BytePath,
    /// What the scan saw: the real path acted on, device, inode, SHA-256.
    pub id: FileId,
}

/// Lines the plan removes from one file.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedEdit {
    pub named: BytePath,
    pub id: FileId,
    /// (line number, content) to remove.
    pub lines: Vec<(usize, String)>,
}

/// What `quarry fix` will do.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Plan {
    pub processes: Vec<PlannedProcess>,
    pub unmounts: Vec<String>,
    pub preload_entries: Vec<BytePath>,
    pub edits: Vec<PlannedEdit>,
    pub units: Vec<BytePath>,
    pub quarantine: Vec<PlannedFile>,
    /// Targets refused, with the reason.
    pub refused: Vec<String>,
    /// Findings reported but not acted on, and how to act on them.
    pub reported: Vec<String>,
    /// Things the fix cannot do, in plain words.
    pub notes: Vec<String>,
    /// Findings the plan acts on (rule and title).
    pub findings: Vec<String>,
    /// Doors to close by hand: `quarry fix` never edits a service's
    /// configuration (a wrong edit can take a production service down), so
    /// the plan lists each `entry.*` finding's hardening step instead.
    pub steps: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.processes.is_empty()
            && self.unmounts.is_empty()
            && self.preload_entries.is_empty()
            && self.edits.is_empty()
            && self.units.is_empty()
            && self.quarantine.is_empty()
    }

    fn files_touched(&self) -> usize {
        self.quarantine.len() + self.edits.len()
    }
}

/// Options of `quarry fix`.
#[derive(Debug, Clone, Default)]
pub struct FixOptions {
    /// PIDs, rule ids (or prefixes like `persistence`) or absolute paths to act
    /// on; empty: what the scan proved (see the module documentation).
    pub only: Vec<String>,
    pub force: bool,
    pub allowlist: Allowlist,
}

/// More files than this in one plan needs `--only` or `--force`: an ordinary
/// incident touches a handful; hundreds mean the findings are not what they
/// seem (an extracted kernel package under /tmp once gave 3,222).
pub const MAX_FILES_UNSCOPED: usize = 25;

/// System places: files here are installed software; quarantining one needs
/// direct evidence against that very file, or `--force`.
const SYSTEM_DIRS: &[&str] = &[
    "/bin/",
    "/sbin/",
    "/usr/bin/",
    "/usr/sbin/",
    "/usr/lib/",
    "/usr/lib64/",
    "/usr/lib32/",
    "/lib/",
    "/lib64/",
    "/usr/libexec/",
    "/usr/local/",
    "/usr/share/",
    "/opt/",
    "/boot/",
];

/// What a fix never touches, read once per plan: Quarry's PID and its
/// ancestors (from the live /proc: the snapshot may predate Quarry), and the
/// allowlist.
pub struct Guard<'a> {
    me: i32,
    ancestors: Vec<i32>,
    allow: &'a Allowlist,
}

impl<'a> Guard<'a> {
    pub fn new(host: &Host, allow: &'a Allowlist) -> Guard<'a> {
        let me = std::process::id() as i32;
        let mut ancestors = Vec::new();
        let mut cur = me;
        for _ in 0..64 {
            let Ok(s) = crate::collect::process::read_stat(host, &format!("/proc/{cur}/stat"))
            else {
                break;
            };
            if s.ppid <= 0 {
                break;
            }
            ancestors.push(s.ppid);
            cur = s.ppid;
        }
        Guard {
            me,
            ancestors,
            allow,
        }
    }

    /// Why a process must not be touched, if it must not.
    pub fn protected(&self, host: &Host, p: &Process) -> Option<String> {
        if p.pid == 1 {
            return Some("PID 1 (init) is never touched".into());
        }
        if p.is_kernel_thread() {
            return Some("kernel threads are never touched".into());
        }
        if p.pid == self.me {
            return Some("Quarry itself".into());
        }
        if self.ancestors.contains(&p.pid) {
            return Some("an ancestor of Quarry (the shell or tool that started it)".into());
        }
        self.allow.allows_process(host, p).map(str::to_string)
    }
}

/// How a finding is treated.
#[derive(PartialEq)]
enum Choice {
    Act,
    Report,
    Skip,
}

/// What the scan proved, acted on without `--only`: a malicious verdict
/// whose own evidence alone reaches "suspicious" (names, folders, nearby
/// files and restarters never alone get a process killed: see
/// [`crate::detect::Basis`]), and the critical findings below.
fn proven(f: &Finding) -> bool {
    (f.verdict.as_deref() == Some("malicious") && rests_on_own_evidence(f))
        || (f.severity == Severity::Critical
            && (matches!(
                f.rule.as_str(),
                "hidden.process" | "rootkit.preload" | "module.file" | "entry.redis-write"
            ) || f.rule.starts_with("persistence.") && f.subject.pid.is_some()))
}

/// True when a process verdict's own evidence reaches "suspicious".
fn rests_on_own_evidence(f: &Finding) -> bool {
    f.signals.is_empty()
        || crate::detect::miner::own_score(&f.signals) >= crate::detect::miner::SUSPICIOUS
}

fn choose(f: &Finding, opts: &FixOptions) -> Choice {
    if f.remedies.is_empty() {
        return Choice::Skip;
    }
    if !opts.only.is_empty() {
        let hit = opts.only.iter().any(|o| {
            if let Ok(pid) = o.parse::<i32>() {
                return f.subject.pid == Some(pid);
            }
            if o.starts_with('/') {
                return f
                    .remedies
                    .iter()
                    .filter_map(Remedy::file)
                    .any(|p| p.as_bytes() == o.as_bytes())
                    || f.subject.path.as_deref() == Some(o.as_str());
            }
            f.rule == *o || f.rule.starts_with(&format!("{o}."))
        });
        return if hit { Choice::Act } else { Choice::Skip };
    }
    if proven(f) || (opts.force && f.severity >= Severity::High) {
        Choice::Act
    } else if f.severity >= Severity::Medium {
        Choice::Report
    } else {
        Choice::Skip
    }
}

/// True when a fix with these options acts on this finding (used to judge
/// what remains after a fix: findings outside its scope are not its failure).
pub fn in_scope(f: &Finding, opts: &FixOptions) -> bool {
    choose(f, opts) == Choice::Act
}

/// Builds the plan from the scan's findings.
pub fn plan(host: &Host, findings: &[Finding], snap: &Snapshot, opts: &FixOptions) -> Plan {
    let mut plan = Plan::default();
    let mut seen_files = BTreeSet::new();
    let guard = Guard::new(host, &opts.allowlist);
    let protected_exes = protected_executables(host, findings, snap, &guard);
    let mut packages: Option<Packages> = None;
    let mut edits: BTreeMap<BytePath, PlannedEdit> = BTreeMap::new();
    for f in findings {
        match choose(f, opts) {
            Choice::Skip => continue,
            Choice::Report => {
                let why = if f.verdict.as_deref() == Some("malicious") && !rests_on_own_evidence(f)
                {
                    format!(
                        " (its own evidence weighs {}, under {}: the verdict rests on its name, folder, nearby files or restarters)",
                        crate::detect::miner::own_score(&f.signals),
                        crate::detect::miner::SUSPICIOUS
                    )
                } else {
                    String::new()
                };
                plan.reported.push(format!(
                    "[{}] {} — reported, not acted on{why} (use --only or --force)",
                    f.rule, f.title
                ));
                continue;
            }
            Choice::Act => {}
        }
        if f.verdict.as_deref() == Some("suspicious") && !opts.force {
            plan.refused.push(format!(
                "{} — only suspicious; use --force to act on it",
                f.title
            ));
            continue;
        }
        plan.findings.push(format!("[{}] {}", f.rule, f.title));
        for r in &f.remedies {
            match r {
                Remedy::StopProcess { pid, starttime } => {
                    let Some(p) = snap.processes.get(pid) else {
                        // A hidden process read through the private procfs.
                        if let Some(p) = hidden_process(host, *pid, *starttime) {
                            add_process(host, &guard, &mut plan, &p, "miner", &f.title);
                        }
                        continue;
                    };
                    if p.stat.starttime != *starttime {
                        plan.notes.push(format!(
                            "PID {pid} was replaced by another process since the scan: not touched"
                        ));
                        continue;
                    }
                    add_process(host, &guard, &mut plan, p, "miner", &f.title);
                }
                Remedy::QuarantineFile {
                    path, id, direct, ..
                } => {
                    let Some(id) = pinned(&mut plan, path, id) else {
                        continue;
                    };
                    if !seen_files.insert(id.path.clone()) {
                        continue;
                    }
                    let pk = packages.get_or_insert_with(|| Packages::load(host));
                    if let Some(who) = protected_exes.get(&(id.dev, id.ino)) {
                        plan.refused.push(format!(
                            "{} — the executable of {who}, which is never touched: not quarantined",
                            id.path.display()
                        ));
                    } else if let Some(why) = file_refusal(path, &id, opts, pk) {
                        plan.refused.push(why);
                    } else if in_system_dir(&id.path) && !direct && !opts.force {
                        plan.refused.push(format!(
                            "{} — in a system place and only linked to the finding, not itself the evidence; use --force",
                            id.path.display()
                        ));
                    } else {
                        plan.quarantine.push(PlannedFile {
                            named: path.clone(),
                            id,
                        });
                    }
                }
                Remedy::RemoveLine {
                    path,
                    line,
                    content,
                    id,
                    ..
                } => {
                    let Some(id) = pinned(&mut plan, path, id) else {
                        continue;
                    };
                    let pk = packages.get_or_insert_with(|| Packages::load(host));
                    if let Some(why) = file_refusal(path, &id, opts, pk) {
                        if !plan.refused.contains(&why) {
                            plan.refused.push(why);
                        }
                        continue;
                    }
                    let e = edits.entry(id.path.clone()).or_insert_with(|| PlannedEdit {
                        named: path.clone(),
                        id: id.clone(),
                        lines: Vec::new(),
                    });
                    if !e.lines.iter().any(|(l, _)| l == line) {
                        e.lines.push((*line, content.clone()));
                    }
                }
                Remedy::DisableUnit { path } => {
                    if !plan.units.contains(path) {
                        plan.units.push(path.clone());
                    }
                }
                Remedy::RemovePreloadEntry { entry } => {
                    if !plan.preload_entries.contains(entry) {
                        plan.preload_entries.push(entry.clone());
                    }
                }
                Remedy::Unmount { mount_point } => {
                    if !plan.unmounts.contains(mount_point) {
                        plan.unmounts.push(mount_point.clone());
                    }
                }
                Remedy::Unreachable { path, why } => {
                    let r = format!("{} — {why}", path.display());
                    if !plan.refused.contains(&r) {
                        plan.refused.push(r);
                    }
                }
            }
        }
    }
    plan.edits = edits.into_values().collect();
    // A file quarantined whole needs no line removed from it.
    let whole: std::collections::HashSet<&BytePath> =
        plan.quarantine.iter().map(|q| &q.id.path).collect();
    plan.edits.retain(|e| !whole.contains(&e.id.path));
    for f in findings.iter().filter(|f| f.rule.starts_with("entry.")) {
        if let Some(h) = f.evidence.iter().find(|e| e.key == "harden") {
            let step = format!("[{}] {}: {}", f.rule, f.title, h.value);
            if !plan.steps.contains(&step) {
                plan.steps.push(step);
            }
        }
    }
    if plan.files_touched() > MAX_FILES_UNSCOPED && opts.only.is_empty() && !opts.force {
        plan.refused.push(format!(
            "{} files would be quarantined or edited, more than {MAX_FILES_UNSCOPED}: an incident rarely touches so many, so none is; name them with --only (PIDs, rules or paths) or use --force",
            plan.files_touched()
        ));
        plan.quarantine.clear();
        plan.edits.clear();
    }
    if findings.iter().any(|f| f.rule == "module.hidden") {
        plan.notes.push(
            "a hidden kernel module cannot be unloaded safely: after this fix removes its files, reboot the machine".into(),
        );
    }
    if !plan.units.is_empty() {
        plan.notes.push(
            "on a systemd host, run `systemctl daemon-reload` after the fix so systemd forgets the disabled units".into(),
        );
    }
    if packages.as_ref().is_some_and(|p| !p.checked()) {
        plan.notes.push(if packages.as_ref().is_some_and(|p| p.rpm_present) {
            "package ownership not checked (rpm database present, not read); system places stay protected".into()
        } else {
            "package ownership not checked (no dpkg database)".into()
        });
    }
    add_restarters(host, &guard, &mut plan, snap);
    // Restarters stop first.
    plan.processes
        .sort_by_key(|p| (p.role != "restarter", p.pid));
    plan
}

/// Executables (device, inode) that are never quarantined, with whose they
/// are: Quarry's own, its ancestors', PID 1's, and those of every process a
/// finding names but that is protected (allowlisted, a kernel thread, …).
/// Moving the file of a running protected process would break it as surely
/// as killing it.
fn protected_executables(
    host: &Host,
    findings: &[Finding],
    snap: &Snapshot,
    guard: &Guard,
) -> BTreeMap<(u64, u64), String> {
    let mut out = BTreeMap::new();
    let mut add = |pid: i32, who: String| {
        if let Some((d, i, _)) = host.ident(format!("/proc/{pid}/exe").as_bytes()) {
            out.entry((d, i)).or_insert(who);
        }
    };
    add(1, "PID 1".into());
    add(guard.me, "Quarry itself".into());
    for &pid in &guard.ancestors {
        add(pid, format!("PID {pid}, an ancestor of Quarry"));
    }
    for f in findings {
        for r in &f.remedies {
            if let Remedy::StopProcess { pid, .. } = r {
                if let Some(p) = snap.processes.get(pid) {
                    if let Some(why) = guard.protected(host, p) {
                        add(*pid, format!("PID {pid} ({why})"));
                    }
                }
            }
        }
    }
    out
}

/// The identity the scan pinned, or a note that the file is not touched.
fn pinned(plan: &mut Plan, path: &BytePath, id: &Option<FileId>) -> Option<FileId> {
    match id {
        Some(id) => Some(id.clone()),
        None => {
            let why = format!(
                "{} — could not be pinned to the object the scan judged (not a regular file, unreadable, or changed while being judged): not touched",
                path.display()
            );
            if !plan.refused.contains(&why) {
                plan.refused.push(why);
            }
            None
        }
    }
}

fn in_system_dir(p: &BytePath) -> bool {
    SYSTEM_DIRS
        .iter()
        .any(|d| p.as_bytes().starts_with(d.as_bytes()))
}

/// Why a file must not be changed, if it must not: allowlisted, or installed
/// by a package (needs --force).
fn file_refusal(named: &BytePath, id: &FileId, opts: &FixOptions, pk: &Packages) -> Option<String> {
    if opts.allowlist.allows_path(named.as_bytes())
        || opts.allowlist.allows_path(id.path.as_bytes())
    {
        return Some(format!("{} — allowlisted", id.path.display()));
    }
    if !opts.force {
        if let Some(p) = pk
            .owner(id.path.as_bytes())
            .or_else(|| pk.owner(named.as_bytes()))
        {
            return Some(format!(
                "{} — installed by the package {}; use --force (and reinstall the package to get a clean copy)",
                id.path.display(),
                escape(p.as_bytes())
            ));
        }
    }
    None
}

/// Restarters: ancestors of a planned miner whose command line runs the
/// miner's exact executable (the same path, or a path to the same inode),
/// e.g. `sh -c 'while :; do /tmp/minerd; sleep 1; done'`.
fn add_restarters(host: &Host, guard: &Guard, plan: &mut Plan, snap: &Snapshot) {
    let miners: Vec<PlannedProcess> = plan.processes.clone();
    for m in &miners {
        for (w, how) in crate::collect::inspect::watchdogs(host, snap, m.pid) {
            let Some(q) = snap.processes.get(&w) else {
                continue;
            };
            let why = format!(
                "an ancestor of the miner PID {} whose command line runs {how}",
                m.pid
            );
            add_process(host, guard, plan, q, "restarter", &why);
        }
    }
}

fn hidden_process(host: &Host, pid: i32, starttime: u64) -> Option<Process> {
    let fresh = crate::host::FreshProc::open(host).ok()?;
    let p = Process::read(fresh.host(), pid)?;
    (p.stat.starttime == starttime).then_some(p)
}

fn add_process(
    host: &Host,
    guard: &Guard,
    plan: &mut Plan,
    p: &Process,
    role: &'static str,
    why: &str,
) {
    if plan.processes.iter().any(|x| x.pid == p.pid) {
        return;
    }
    if let Some(reason) = guard.protected(host, p) {
        plan.refused
            .push(format!("PID {} {} — {reason}", p.pid, escape(p.name())));
        return;
    }
    plan.processes.push(PlannedProcess {
        pid: p.pid,
        starttime: p.stat.starttime,
        name: escape(p.name()),
        exe: p
            .exe
            .as_ref()
            .map(|e| BytePath::new(e.path.clone()))
            .unwrap_or_default(),
        role,
        why: why.to_string(),
    });
}

/// Prints a plan for people.
pub fn describe(plan: &Plan) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let mut n = 0;
    let mut step = |s: &mut String, text: String| {
        n += 1;
        let _ = writeln!(s, "  {n:>2}. {text}");
    };
    let _ = writeln!(s, "Plan (acting on {} findings):", plan.findings.len());
    for p in &plan.processes {
        step(
            &mut s,
            format!(
                "freeze PID {} {} ({}: {})",
                p.pid,
                p.name,
                p.role,
                escape(p.why.as_bytes())
            ),
        );
    }
    for p in &plan.processes {
        step(
            &mut s,
            format!(
                "save evidence of PID {} (executable via /proc/{}/exe, cmdline, environ, maps)",
                p.pid, p.pid
            ),
        );
    }
    for p in &plan.processes {
        step(
            &mut s,
            format!("kill PID {} {} through its pidfd", p.pid, p.name),
        );
    }
    for m in &plan.unmounts {
        step(&mut s, format!("unmount {}", escape(m.as_bytes())));
    }
    for e in &plan.preload_entries {
        step(
            &mut s,
            format!(
                "remove {} from /etc/ld.so.preload (original kept)",
                e.display()
            ),
        );
    }
    for e in &plan.edits {
        let via = if e.named != e.id.path {
            format!(" (the file {} points to)", e.named.display())
        } else {
            String::new()
        };
        for (l, c) in &e.lines {
            step(
                &mut s,
                format!(
                    "remove line {l} of {}{via}: {} (original kept)",
                    e.id.path.display(),
                    escape(c.as_bytes())
                ),
            );
        }
    }
    for u in &plan.units {
        step(&mut s, format!("disable systemd unit {}", u.display()));
    }
    for q in &plan.quarantine {
        step(
            &mut s,
            format!(
                "quarantine {} (moved into the case, mode 0400, with its metadata; sha256 {})",
                q.id.path.display(),
                &q.id.sha256[..q.id.sha256.len().min(16)]
            ),
        );
    }
    if n == 0 {
        let _ = writeln!(s, "  nothing to do");
    }
    for r in &plan.refused {
        let _ = writeln!(s, "  refused: {r}");
    }
    for r in &plan.reported {
        let _ = writeln!(s, "  {r}");
    }
    for r in &plan.notes {
        let _ = writeln!(s, "  note: {r}");
    }
    if !plan.steps.is_empty() {
        let _ = writeln!(
            s,
            "  doors to close by hand (fix does not edit service configurations):"
        );
        for r in &plan.steps {
            let _ = writeln!(s, "    - {r}");
        }
    }
    s
}
