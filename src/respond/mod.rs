//! `quarry fix`, `quarry restore`, `quarry cases`: plan → journal → act →
//! verify → restore.
//!
//! The fix is built from the remedies that findings carry. Step by step:
//! 1. freeze every process involved (SIGSTOP through a pidfd), restarters
//!    (watchdog shells) first, so nothing respawns in between;
//! 2. save evidence: the executable through `/proc/PID/exe` (works for deleted
//!    and memory-only executables), command line, environment, maps, status;
//! 3. kill through the same pidfds (a reused PID can never be hit), and wait
//!    for each to exit;
//! 4. unmount mounts over `/proc/PID`;
//! 5. remove `/etc/ld.so.preload` entries, then the malicious lines of
//!    crontabs and start-up files (originals kept), disable systemd units;
//! 6. quarantine files into the case (clearing chattr +i/+a first, recorded);
//! 7. every step is journaled durably before it is done (see [`case`]);
//! 8. scan again and report what is left.
//!
//! Never touched: PID 1, kernel threads, Quarry itself and its ancestors, and
//! anything the allowlist names. Findings whose verdict is only "suspicious",
//! and files in system directories named by a non-critical finding, are
//! refused without `--force`.

pub mod case;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::collect::process::{Process, SHELLS};
use crate::collect::Snapshot;
use crate::detect::{Finding, Remedy, Severity};
use crate::escape::escape;
use case::{Action, Case, SavedMeta};

/// Processes and files a fix must never touch (TOML, `--allowlist FILE`,
/// default `/etc/quarry/allowlist.toml` when it exists):
///
/// ```toml
/// pids = [1234]
/// names = ["backup-agent"]          # process names
/// paths = ["/opt/vendor/"]          # executables and files (prefixes)
/// ```
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Allowlist {
    #[serde(default)]
    pub pids: Vec<i32>,
    #[serde(default)]
    pub names: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
}

impl Allowlist {
    pub fn load(path: &Path) -> anyhow::Result<Allowlist> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot read allowlist: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| {
            let (line, col) = e
                .span()
                .map_or((1, 1), |s| crate::rules::line_col(&text, s.start));
            anyhow::anyhow!(
                "{}:{line}:{col}: invalid allowlist: {}",
                path.display(),
                e.message()
            )
        })
    }

    fn allows_path(&self, p: &str) -> bool {
        self.paths.iter().any(|a| {
            p == a
                || p.starts_with(a.trim_end_matches('/'))
                    && p[a.trim_end_matches('/').len()..].starts_with('/')
        })
    }
}

/// A process the plan stops.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedProcess {
    pub pid: i32,
    pub starttime: u64,
    pub name: String,
    pub exe: String,
    /// `miner` (named by a finding) or `restarter` (a watchdog that restarts one).
    pub role: &'static str,
    pub why: String,
}

/// What `quarry fix` will do.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Plan {
    pub processes: Vec<PlannedProcess>,
    pub unmounts: Vec<String>,
    pub preload_entries: Vec<String>,
    /// File → (line number, content) to remove.
    pub line_removals: BTreeMap<String, Vec<(usize, String)>>,
    pub units: Vec<String>,
    pub quarantine: Vec<String>,
    /// Targets refused, with the reason.
    pub refused: Vec<String>,
    /// Things the fix cannot do, in plain words.
    pub notes: Vec<String>,
    /// Findings the plan acts on (rule and title).
    pub findings: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.processes.is_empty()
            && self.unmounts.is_empty()
            && self.preload_entries.is_empty()
            && self.line_removals.is_empty()
            && self.units.is_empty()
            && self.quarantine.is_empty()
    }
}

/// Options of `quarry fix`.
#[derive(Debug, Clone, Default)]
pub struct FixOptions {
    /// PIDs, rule ids (or prefixes like `persistence`) to act on; empty: every
    /// finding at or above high severity.
    pub only: Vec<String>,
    pub force: bool,
    pub allowlist: Allowlist,
}

/// System directories: files here are package-managed; quarantining one needs
/// a critical finding or `--force`.
const SYSTEM_DIRS: &[&str] = &[
    "/bin/",
    "/sbin/",
    "/usr/bin/",
    "/usr/sbin/",
    "/usr/lib/",
    "/lib/",
    "/lib64/",
    "/usr/libexec/",
    "/boot/",
    "/usr/share/",
];

/// Why a process must not be touched, if it must not.
pub fn protected(p: &Process, allow: &Allowlist) -> Option<String> {
    let me = std::process::id() as i32;
    if p.pid == 1 {
        return Some("PID 1 (init) is never touched".into());
    }
    if p.is_kernel_thread() {
        return Some("kernel threads are never touched".into());
    }
    if p.pid == me {
        return Some("Quarry itself".into());
    }
    // Quarry's ancestors, from the live /proc (the snapshot may predate us).
    let mut cur = me;
    for _ in 0..64 {
        let Ok(s) = crate::collect::process::read_stat(
            &crate::host::Host::default(),
            &format!("/proc/{cur}/stat"),
        ) else {
            break;
        };
        if s.ppid <= 0 {
            break;
        }
        if s.ppid == p.pid {
            return Some("an ancestor of Quarry (the shell or tool that started it)".into());
        }
        cur = s.ppid;
    }
    if allow.pids.contains(&p.pid) {
        return Some("allowlisted PID".into());
    }
    let name = String::from_utf8_lossy(p.name()).into_owned();
    if allow.names.contains(&name) {
        return Some("allowlisted name".into());
    }
    if let Ok(e) = &p.exe {
        if allow.allows_path(&String::from_utf8_lossy(&e.path)) {
            return Some("allowlisted path".into());
        }
    }
    None
}

fn selected(f: &Finding, opts: &FixOptions) -> bool {
    if opts.only.is_empty() {
        return f.severity >= Severity::High;
    }
    opts.only.iter().any(|o| {
        if let Ok(pid) = o.parse::<i32>() {
            return f.subject.pid == Some(pid);
        }
        f.rule == *o || f.rule.starts_with(&format!("{o}."))
    })
}

/// Builds the plan from the scan's findings.
pub fn plan(findings: &[Finding], snap: &Snapshot, opts: &FixOptions) -> Plan {
    let mut plan = Plan::default();
    let mut seen_files = BTreeSet::new();
    for f in findings
        .iter()
        .filter(|f| !f.remedies.is_empty() && selected(f, opts))
    {
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
                        if let Some(p) = hidden_process(*pid, *starttime) {
                            add_process(&mut plan, &p, opts, "miner", &f.title);
                        }
                        continue;
                    };
                    if p.stat.starttime != *starttime {
                        plan.notes.push(format!(
                            "PID {pid} was replaced by another process since the scan: not touched"
                        ));
                        continue;
                    }
                    add_process(&mut plan, p, opts, "miner", &f.title);
                }
                Remedy::QuarantineFile { path } => {
                    if !seen_files.insert(path.clone()) {
                        continue;
                    }
                    if opts.allowlist.allows_path(path) {
                        plan.refused
                            .push(format!("{} — allowlisted", escape(path.as_bytes())));
                    } else if SYSTEM_DIRS.iter().any(|d| path.starts_with(d))
                        && f.severity < Severity::Critical
                        && !opts.force
                    {
                        plan.refused.push(format!(
                            "{} — in a system directory and the finding is not critical; use --force",
                            escape(path.as_bytes())
                        ));
                    } else {
                        plan.quarantine.push(path.clone());
                    }
                }
                Remedy::RemoveLine {
                    path,
                    line,
                    content,
                } => {
                    if opts.allowlist.allows_path(path) {
                        plan.refused
                            .push(format!("{} — allowlisted", escape(path.as_bytes())));
                        continue;
                    }
                    let v = plan.line_removals.entry(path.clone()).or_default();
                    if !v.iter().any(|(l, _)| l == line) {
                        v.push((*line, content.clone()));
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
            }
        }
    }
    if findings
        .iter()
        .any(|f| f.rule == "module.hidden" && selected(f, opts))
    {
        plan.notes.push(
            "a hidden kernel module cannot be unloaded safely: after this fix removes its files, reboot the machine".into(),
        );
    }
    if !plan.units.is_empty() {
        plan.notes.push(
            "on a systemd host, run `systemctl daemon-reload` after the fix so systemd forgets the disabled units".into(),
        );
    }
    // Restarters: shells (or programs in temp places) whose command line
    // names a planned miner, e.g. `sh -c 'while :; do /tmp/minerd; sleep 1; done'`.
    let miners: Vec<PlannedProcess> = plan.processes.clone();
    for q in snap.processes.values() {
        if plan.processes.iter().any(|p| p.pid == q.pid) {
            continue;
        }
        let Ok(exe) = &q.exe else { continue };
        let base =
            String::from_utf8_lossy(crate::collect::process::basename(&exe.path)).into_owned();
        if !SHELLS.contains(&base.as_str()) && base != "busybox" {
            continue;
        }
        let cmd = String::from_utf8_lossy(&q.cmdline.join(&b' ')).into_owned();
        let names = miners.iter().find(|m| {
            (!m.exe.is_empty() && cmd.contains(m.exe.as_str()))
                || (m.name.len() >= 4
                    && cmd
                        .split_whitespace()
                        .any(|t| t.rsplit('/').next() == Some(m.name.as_str())))
        });
        if let Some(m) = names {
            let why = format!(
                "its command line restarts the miner PID {} ({})",
                m.pid, m.exe
            );
            add_process(&mut plan, q, opts, "restarter", &why);
        }
    }
    // Restarters stop first.
    plan.processes
        .sort_by_key(|p| (p.role != "restarter", p.pid));
    plan
}

fn hidden_process(pid: i32, starttime: u64) -> Option<Process> {
    let fresh = crate::host::FreshProc::open(&crate::host::Host::default()).ok()?;
    let p = Process::read(fresh.host(), pid)?;
    (p.stat.starttime == starttime).then_some(p)
}

fn add_process(plan: &mut Plan, p: &Process, opts: &FixOptions, role: &'static str, why: &str) {
    if plan.processes.iter().any(|x| x.pid == p.pid) {
        return;
    }
    if let Some(reason) = protected(p, &opts.allowlist) {
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
            .map(|e| String::from_utf8_lossy(&e.path).into_owned())
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
                escape(e.as_bytes())
            ),
        );
    }
    for (path, lines) in &plan.line_removals {
        for (l, c) in lines {
            step(
                &mut s,
                format!(
                    "remove line {l} of {}: {} (original kept)",
                    escape(path.as_bytes()),
                    escape(c.as_bytes())
                ),
            );
        }
    }
    for u in &plan.units {
        step(
            &mut s,
            format!("disable systemd unit {}", escape(u.as_bytes())),
        );
    }
    for q in &plan.quarantine {
        step(
            &mut s,
            format!(
                "quarantine {} (moved into the case, mode 0400, with its metadata)",
                escape(q.as_bytes())
            ),
        );
    }
    if n == 0 {
        let _ = writeln!(s, "  nothing to do");
    }
    for r in &plan.refused {
        let _ = writeln!(s, "  refused: {r}");
    }
    for r in &plan.notes {
        let _ = writeln!(s, "  note: {r}");
    }
    s
}

/// What a fix did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    pub case_dir: String,
    pub done: Vec<String>,
    pub failed: Vec<String>,
}

/// Test hook: `QUARRY_FIX_CRASH_AFTER=N` kills Quarry (SIGKILL) right after
/// the N-th journal record marked done, to test recovery from an interrupted
/// fix. Never set it on a real incident.
fn crash_hook(done_count: usize) {
    if let Some(n) = std::env::var("QUARRY_FIX_CRASH_AFTER")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        if done_count >= n {
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::KILL,
            );
        }
    }
}

struct Runner {
    case: Case,
    out: Outcome,
    done_count: usize,
}

impl Runner {
    /// Journals, runs, journals.
    fn step(&mut self, action: Action, f: impl FnOnce(&mut Case) -> std::io::Result<Action>) {
        let label = action_label(&action);
        if let Err(e) = self.case.begin(&action) {
            self.out
                .failed
                .push(format!("{label}: journal write failed: {e}"));
            return;
        }
        match f(&mut self.case) {
            Ok(final_action) => {
                let _ = self.case.done(&final_action);
                self.out.done.push(label);
                self.done_count += 1;
                crash_hook(self.done_count);
            }
            Err(e) => {
                let _ = self.case.failed(&action, &e.to_string());
                self.out.failed.push(format!("{label}: {e}"));
            }
        }
    }
}

fn action_label(a: &Action) -> String {
    match a {
        Action::Freeze { pid, name } => format!("froze PID {pid} {name}"),
        Action::SaveEvidence { pid, .. } => format!("saved evidence of PID {pid}"),
        Action::Kill { pid, name } => format!("killed PID {pid} {name}"),
        Action::ClearAttrs { path, .. } => {
            format!("cleared chattr attributes of {}", escape(path.as_bytes()))
        }
        Action::Quarantine { original, .. } => {
            format!("quarantined {}", escape(original.as_bytes()))
        }
        Action::Edit { path, removed, .. } => format!(
            "removed {} line(s) from {}",
            removed.len(),
            escape(path.as_bytes())
        ),
        Action::RemoveLink { link, .. } => format!("removed unit link {}", escape(link.as_bytes())),
        Action::Unmount { mount_point } => format!("unmounted {}", escape(mount_point.as_bytes())),
        Action::Note { text } => text.clone(),
        Action::Open { .. } => "opened the case".into(),
        Action::Close { .. } => "closed the case".into(),
    }
}

/// Carries out a plan, journaling every step into a new case under `case_root`.
pub fn execute(plan: &Plan, case_root: &Path, before: &impl Serialize) -> anyhow::Result<Outcome> {
    use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};
    let case = Case::create(case_root)?;
    std::fs::write(case.dir.join("plan.json"), serde_json::to_vec_pretty(plan)?)?;
    std::fs::write(
        case.dir.join("scan-before.json"),
        serde_json::to_vec_pretty(before)?,
    )?;
    let mut r = Runner {
        out: Outcome {
            case_dir: case.dir.display().to_string(),
            ..Outcome::default()
        },
        case,
        done_count: 0,
    };
    let open = Action::Open {
        host: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim()
            .to_string(),
        quarry_version: env!("CARGO_PKG_VERSION").into(),
    };
    let open2 = open.clone();
    r.step(open, |_| Ok(open2));

    // 1. pidfds, checked against the scan's start time (a reused PID is skipped).
    let mut fds = Vec::new();
    for p in &plan.processes {
        let Some(pid) = Pid::from_raw(p.pid) else {
            continue;
        };
        let Ok(fd) = pidfd_open(pid, PidfdFlags::empty()) else {
            r.out.done.push(format!("PID {} had already exited", p.pid));
            continue;
        };
        let now = crate::collect::process::read_stat(
            &crate::host::Host::default(),
            &format!("/proc/{}/stat", p.pid),
        )
        .ok()
        .or_else(|| hidden_process(p.pid, p.starttime).map(|x| x.stat));
        if now.map(|s| s.starttime) != Some(p.starttime) {
            r.out.failed.push(format!(
                "PID {} is no longer the process the scan saw: not touched",
                p.pid
            ));
            continue;
        }
        fds.push((p, fd));
    }
    // 2. Freeze everything before killing anything.
    for (p, fd) in &fds {
        r.step(
            Action::Freeze {
                pid: p.pid,
                name: p.name.clone(),
            },
            |_| {
                pidfd_send_signal(fd, Signal::STOP)?;
                Ok(Action::Freeze {
                    pid: p.pid,
                    name: p.name.clone(),
                })
            },
        );
    }
    // 3. Evidence.
    for (p, _) in &fds {
        let dir = format!("evidence/{}", p.pid);
        r.step(
            Action::SaveEvidence {
                pid: p.pid,
                dir: dir.clone(),
                exe_sha256: None,
            },
            |case| {
                // A /proc/PID covered by a mount is read through a private procfs.
                let proc_dir = format!("/proc/{}", p.pid);
                let fresh = if Path::new(&format!("{proc_dir}/stat")).exists() {
                    None
                } else {
                    crate::host::FreshProc::open(&crate::host::Host::default()).ok()
                };
                let src = match &fresh {
                    Some(f) => f.host().path(&proc_dir),
                    None => PathBuf::from(&proc_dir),
                };
                let mut sha = None;
                if let Ok(exe) = std::fs::read(src.join("exe")) {
                    sha = Some(crate::collect::modules::sha256_hex(&exe));
                    case.write_file(&format!("{dir}/exe"), &exe)?;
                }
                for f in [
                    "cmdline",
                    "environ",
                    "maps",
                    "status",
                    "stat",
                    "cgroup",
                    "mountinfo",
                ] {
                    if let Ok(data) = std::fs::read(src.join(f)) {
                        case.write_file(&format!("{dir}/{f}"), &data)?;
                    }
                }
                if let Ok(l) = std::fs::read_link(src.join("exe")) {
                    case.write_file(&format!("{dir}/exe.link"), l.as_os_str().as_encoded_bytes())?;
                }
                Ok(Action::SaveEvidence {
                    pid: p.pid,
                    dir: dir.clone(),
                    exe_sha256: sha,
                })
            },
        );
    }
    // 4. Kill through the pidfds, then wait for each to exit.
    for (p, fd) in &fds {
        r.step(
            Action::Kill {
                pid: p.pid,
                name: p.name.clone(),
            },
            |_| {
                pidfd_send_signal(fd, Signal::KILL)?;
                let mut pfd = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
                let timeout = rustix::event::Timespec {
                    tv_sec: 5,
                    tv_nsec: 0,
                };
                rustix::event::poll(&mut pfd, Some(&timeout))?;
                Ok(Action::Kill {
                    pid: p.pid,
                    name: p.name.clone(),
                })
            },
        );
    }
    // 5. Unmount covers over /proc/PID.
    for m in &plan.unmounts {
        r.step(
            Action::Unmount {
                mount_point: m.clone(),
            },
            |_| {
                rustix::mount::unmount(m.as_str(), rustix::mount::UnmountFlags::DETACH)?;
                Ok(Action::Unmount {
                    mount_point: m.clone(),
                })
            },
        );
    }
    // 6. /etc/ld.so.preload entries, then line removals.
    let mut edits: BTreeMap<String, Vec<(usize, String)>> = plan.line_removals.clone();
    if !plan.preload_entries.is_empty() {
        if let Ok(text) = std::fs::read_to_string("/etc/ld.so.preload") {
            let v = edits.entry("/etc/ld.so.preload".into()).or_default();
            for (i, line) in text.lines().enumerate() {
                let words = crate::collect::preload::split_preload(line.as_bytes());
                if words.iter().any(|w| {
                    plan.preload_entries
                        .iter()
                        .any(|e| e.as_bytes() == w.as_slice())
                }) {
                    v.push((i + 1, line.to_string()));
                }
            }
        }
    }
    for (path, lines) in &edits {
        edit_file(&mut r, path, lines);
    }
    // 7. systemd units: remove the links that enable them.
    for unit in &plan.units {
        let name = unit.rsplit('/').next().unwrap_or(unit).to_string();
        for link in unit_links(&name) {
            let target = std::fs::read_link(&link)
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            r.step(
                Action::RemoveLink {
                    link: link.clone(),
                    target: target.clone(),
                },
                |_| {
                    std::fs::remove_file(&link)?;
                    Ok(Action::RemoveLink {
                        link: link.clone(),
                        target: target.clone(),
                    })
                },
            );
        }
    }
    // 8. Quarantine.
    for path in &plan.quarantine {
        let p = Path::new(path);
        let Ok(meta) = SavedMeta::of(p) else {
            r.out
                .done
                .push(format!("{} is already gone", escape(path.as_bytes())));
            continue;
        };
        if meta.immutable || meta.append_only {
            clear_attrs(&mut r, path, &meta);
        }
        let stored = r.case.slot("files");
        let sha = std::fs::read(p)
            .map(|d| crate::collect::modules::sha256_hex(&d))
            .unwrap_or_default();
        let action = Action::Quarantine {
            original: path.clone(),
            stored: stored.clone(),
            sha256: sha,
            meta,
        };
        let dst = r.case.dir.join(&stored);
        let a2 = action.clone();
        r.step(action, |_| {
            case::move_into(p, &dst)?;
            Ok(a2)
        });
    }
    let summary = format!(
        "{} actions done, {} failed",
        r.out.done.len(),
        r.out.failed.len()
    );
    r.step(
        Action::Close {
            summary: summary.clone(),
        },
        |_| Ok(Action::Close { summary }),
    );
    write_manifest(&r.case.dir)?;
    Ok(r.out)
}

fn clear_attrs(r: &mut Runner, path: &str, meta: &SavedMeta) {
    let a = Action::ClearAttrs {
        path: path.to_string(),
        immutable: meta.immutable,
        append_only: meta.append_only,
    };
    let a2 = a.clone();
    r.step(a, |_| {
        case::set_attrs(Path::new(path), false, false)?;
        Ok(a2)
    });
}

/// Removes lines from a file, keeping the original in the case.
fn edit_file(r: &mut Runner, path: &str, lines: &[(usize, String)]) {
    let p = Path::new(path);
    let Ok(original) = std::fs::read(p) else {
        r.out
            .failed
            .push(format!("{}: cannot read", escape(path.as_bytes())));
        return;
    };
    let Ok(meta) = SavedMeta::of(p) else { return };
    let text = String::from_utf8_lossy(&original).into_owned();
    let mut all: Vec<&str> = text.split_inclusive('\n').collect();
    let mut removed = Vec::new();
    for (lineno, content) in lines {
        // The line must still be what the scan saw; else look for it.
        let idx = if all.get(lineno - 1).map(|l| l.trim_end_matches('\n')) == Some(content.as_str())
        {
            Some(lineno - 1)
        } else {
            all.iter().position(|l| l.trim_end_matches('\n') == content)
        };
        if let Some(i) = idx {
            removed.push((i + 1, content.clone()));
        }
    }
    if removed.is_empty() {
        r.out.done.push(format!(
            "{}: the lines were already gone",
            escape(path.as_bytes())
        ));
        return;
    }
    removed.sort();
    for (i, _) in removed.iter().rev() {
        all.remove(i - 1);
    }
    let edited: Vec<u8> = all.concat().into_bytes();
    if meta.immutable || meta.append_only {
        clear_attrs(r, path, &meta);
    }
    let copy = r.case.slot("originals");
    if let Err(e) = r.case.write_file(&copy, &original) {
        r.out.failed.push(format!(
            "{}: cannot keep the original: {e}",
            escape(path.as_bytes())
        ));
        return;
    }
    let action = Action::Edit {
        path: path.to_string(),
        original_copy: copy,
        original_sha256: crate::collect::modules::sha256_hex(&original),
        edited_sha256: crate::collect::modules::sha256_hex(&edited),
        meta: meta.clone(),
        removed,
    };
    let a2 = action.clone();
    r.step(action, |_| {
        case::replace_content(p, &edited, &meta)?;
        Ok(a2)
    });
}

/// Links in systemd's `.wants` / `.requires` directories that point to a unit.
fn unit_links(unit: &str) -> Vec<String> {
    let mut out = Vec::new();
    for base in ["/etc/systemd/system", "/etc/systemd/user"] {
        let Ok(rd) = std::fs::read_dir(base) else {
            continue;
        };
        for d in rd.flatten() {
            let n = d.file_name().to_string_lossy().into_owned();
            if n.ends_with(".wants") || n.ends_with(".requires") {
                let link = d.path().join(unit);
                if link.symlink_metadata().is_ok() {
                    out.push(link.display().to_string());
                }
            }
        }
        let alias = Path::new(base).join(unit);
        if alias
            .symlink_metadata()
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false)
        {
            out.push(alias.display().to_string());
        }
    }
    out
}

/// Writes `manifest.json`: one entry per quarantined or edited file.
pub fn write_manifest(dir: &Path) -> anyhow::Result<()> {
    let records = case::read_journal(dir)?;
    let entries: Vec<&Action> = records
        .iter()
        .filter(|r| r.state == "done")
        .map(|r| &r.action)
        .filter(|a| {
            matches!(
                a,
                Action::Quarantine { .. }
                    | Action::Edit { .. }
                    | Action::RemoveLink { .. }
                    | Action::SaveEvidence { .. }
            )
        })
        .collect();
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(&entries)?,
    )?;
    Ok(())
}

/// Puts back everything a case removed or changed. Processes are not restarted.
pub fn restore(dir: &Path) -> anyhow::Result<Vec<String>> {
    let records = case::read_journal(dir)?;
    if records.is_empty() {
        anyhow::bail!("{}: no journal records (not a Quarry case?)", dir.display());
    }
    // Every action that was begun (done or interrupted), newest first.
    let mut begun: Vec<&Action> = Vec::new();
    for rec in &records {
        if rec.state == "begin" && !begun.contains(&&rec.action) {
            begun.push(&rec.action);
        }
    }
    let mut said = Vec::new();
    for a in begun.iter().rev() {
        match a {
            Action::Quarantine {
                original,
                stored,
                sha256,
                meta,
            } => {
                let src = dir.join(stored);
                let dst = Path::new(original);
                if !src.exists() {
                    said.push(format!(
                        "{}: still in place (the fix stopped before moving it)",
                        escape(original.as_bytes())
                    ));
                    continue;
                }
                let data = std::fs::read(&src)?;
                if crate::collect::modules::sha256_hex(&data) != *sha256 {
                    said.push(format!(
                        "{}: WARNING the quarantined copy does not match its recorded SHA-256",
                        escape(original.as_bytes())
                    ));
                }
                if dst.exists() {
                    let current = std::fs::read(dst).unwrap_or_default();
                    if current == data {
                        said.push(format!(
                            "{}: already present and identical",
                            escape(original.as_bytes())
                        ));
                        continue;
                    }
                    let aside = format!("{original}.quarry-conflict-{}", std::process::id());
                    let _ = case::set_attrs(dst, false, false);
                    std::fs::rename(dst, &aside)?;
                    said.push(format!(
                        "{}: a different file was there; kept as {}",
                        escape(original.as_bytes()),
                        escape(aside.as_bytes())
                    ));
                }
                if let Some(parent) = dst.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(dst, &data)?;
                meta.apply(dst)?;
                if meta.immutable || meta.append_only {
                    case::set_attrs(dst, meta.immutable, meta.append_only)?;
                }
                said.push(format!(
                    "restored {} ({} bytes, mode {:o})",
                    escape(original.as_bytes()),
                    data.len(),
                    meta.mode
                ));
            }
            Action::Edit {
                path,
                original_copy,
                original_sha256,
                edited_sha256,
                meta,
                removed,
            } => {
                let p = Path::new(path);
                let original = std::fs::read(dir.join(original_copy))?;
                let current = std::fs::read(p).unwrap_or_default();
                let cur_sha = crate::collect::modules::sha256_hex(&current);
                if cur_sha == *original_sha256 {
                    said.push(format!("{}: already as it was", escape(path.as_bytes())));
                    continue;
                }
                let _ = case::set_attrs(p, false, false);
                if cur_sha == *edited_sha256 || !p.exists() {
                    case::replace_content(p, &original, meta)?;
                    said.push(format!(
                        "restored {} ({} line(s) put back)",
                        escape(path.as_bytes()),
                        removed.len()
                    ));
                } else {
                    // Changed since the fix: put the lines back where they were.
                    let text = String::from_utf8_lossy(&current).into_owned();
                    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
                    for (n, content) in removed {
                        let i = (n - 1).min(lines.len());
                        lines.insert(i, content.clone());
                    }
                    let mut out = lines.join("\n");
                    out.push('\n');
                    case::replace_content(p, out.as_bytes(), meta)?;
                    said.push(format!("{}: changed since the fix; the removed lines were inserted back at their line numbers", escape(path.as_bytes())));
                }
                meta.apply(p)?;
                if meta.immutable || meta.append_only {
                    case::set_attrs(p, meta.immutable, meta.append_only)?;
                }
            }
            Action::RemoveLink { link, target }
                if Path::new(link).symlink_metadata().is_err() && !target.is_empty() =>
            {
                std::os::unix::fs::symlink(target, link)?;
                said.push(format!("re-enabled {}", escape(link.as_bytes())));
            }
            Action::Kill { pid, name } => said.push(format!(
                "PID {pid} {name} was killed; processes are not restarted"
            )),
            Action::Unmount { mount_point } => said.push(format!(
                "{} was unmounted; not mounted again",
                escape(mount_point.as_bytes())
            )),
            _ => {}
        }
    }
    // Record the restore in the journal.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("journal.jsonl"))?;
    let rec = case::Record {
        seq: records.len() as u64 + 1,
        time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        state: "done".into(),
        action: Action::Note {
            text: "restored".into(),
        },
        error: None,
    };
    use std::io::Write;
    f.write_all(&serde_json::to_vec(&rec)?)?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    Ok(said)
}

/// One line per case: id, when, what it did, whether it was restored.
pub fn cases(root: &Path) -> Vec<String> {
    case::list(root)
        .iter()
        .map(|dir| {
            let recs = case::read_journal(dir).unwrap_or_default();
            let when = recs.first().map(|r| r.time.clone()).unwrap_or_default();
            let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
            let mut restored = false;
            let mut complete = false;
            for r in recs.iter().filter(|r| r.state == "done") {
                let k = match &r.action {
                    Action::Kill { .. } => "killed",
                    Action::Quarantine { .. } => "quarantined",
                    Action::Edit { .. } => "edited",
                    Action::RemoveLink { .. } => "units disabled",
                    Action::Unmount { .. } => "unmounted",
                    Action::Note { text } if text == "restored" => {
                        restored = true;
                        continue;
                    }
                    Action::Close { .. } => {
                        complete = true;
                        continue;
                    }
                    _ => continue,
                };
                *counts.entry(k).or_default() += 1;
            }
            let what: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
            format!(
                "{}  {}  {}{}{}",
                dir.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                when,
                if what.is_empty() {
                    "nothing done".into()
                } else {
                    what.join(", ")
                },
                if complete { "" } else { "  [INTERRUPTED]" },
                if restored { "  [restored]" } else { "" }
            )
        })
        .collect()
}
