//! Carrying out a plan: freeze → evidence → kill → unmount → edits → unit
//! links → quarantine, each step journaled durably before it is done.
//!
//! Every file step opens the object through [`safe_fs`] (no link followed on
//! any component), checks that it is still the object the scan judged (device,
//! inode, size, mtime, SHA-256: otherwise "changed since the scan: not
//! touched"), and acts on that descriptor.

use std::fs::File;
use std::path::Path;

use serde::Serialize;

use super::case::{Action, Case, SavedMeta};
use super::plan::{Plan, PlannedEdit, PlannedFile};
use super::safe_fs::{self, Dir};
use crate::escape::escape;
use crate::host::{BytePath, FileId, Host, MAX_HASHED};

/// What a fix did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    pub case_dir: String,
    pub case_id: String,
    pub done: Vec<String>,
    pub failed: Vec<String>,
    /// Targets that were not the object the scan judged, left alone.
    pub skipped: Vec<String>,
    /// Time spent acting (from opening the case to closing it), ms.
    pub act_ms: f64,
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

/// Test hook: `QUARRY_FIX_PAUSE=PATH` makes a fix stop after planning,
/// create `PATH.ready`, and wait (at most 60 s) for `PATH.go`, so a test can
/// play the attacker who changes files between the scan and the fix. Never
/// set it on a real incident.
fn pause_hook() {
    let Some(p) = std::env::var_os("QUARRY_FIX_PAUSE") else {
        return;
    };
    let p = std::path::PathBuf::from(p);
    let with = |ext: &str| {
        let mut s = p.clone().into_os_string();
        s.push(ext);
        std::path::PathBuf::from(s)
    };
    let _ = std::fs::write(with(".ready"), b"");
    let t = std::time::Instant::now();
    while !with(".go").exists() && t.elapsed() < std::time::Duration::from_secs(60) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

struct Runner {
    case: Case,
    out: Outcome,
    done_count: usize,
    /// Set when a journal record could not be written: nothing more is done,
    /// since restore could not undo it.
    journal_broken: bool,
}

impl Runner {
    /// Journals, runs, journals. A step whose journal record cannot be written
    /// is not carried out, and neither is anything after it.
    fn step(
        &mut self,
        action: Action,
        f: impl FnOnce(&mut Case) -> std::io::Result<Action>,
    ) -> bool {
        let label = action_label(&action);
        if self.journal_broken {
            self.out.failed.push(format!(
                "{label}: not done (the journal could not be written)"
            ));
            return false;
        }
        if let Err(e) = self.case.begin(&action) {
            self.journal_broken = true;
            self.out
                .failed
                .push(format!("{label}: not done: journal write failed: {e}"));
            return false;
        }
        match f(&mut self.case) {
            Ok(final_action) => {
                if let Err(e) = self.case.done(&final_action) {
                    self.journal_broken = true;
                    self.out
                        .failed
                        .push(format!("{label}: done, but the journal write failed: {e}"));
                    return true;
                }
                self.out.done.push(label);
                self.done_count += 1;
                crash_hook(self.done_count);
                true
            }
            Err(e) => {
                if let Err(je) = self.case.failed(&action, &e.to_string()) {
                    self.journal_broken = true;
                    self.out
                        .failed
                        .push(format!("{label}: journal write failed: {je}"));
                }
                self.out.failed.push(format!("{label}: {e}"));
                false
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
            format!("cleared chattr attributes of {}", path.display())
        }
        Action::Quarantine { original, .. } => format!("quarantined {}", original.display()),
        Action::Edit { path, removed, .. } => {
            format!("removed {} line(s) from {}", removed.len(), path.display())
        }
        Action::RemoveLink { link, .. } => format!("removed unit link {}", link.display()),
        Action::Unmount { mount_point } => format!("unmounted {}", escape(mount_point.as_bytes())),
        Action::Note { text } => text.clone(),
        Action::Open { .. } => "opened the case".into(),
        Action::Close { .. } => "closed the case".into(),
    }
}

/// A pinned file, open: its directory, name, descriptor, content, metadata.
type Pinned = (Dir, Vec<u8>, File, Vec<u8>, SavedMeta);

/// Opens the file a plan names and checks it is still what the scan judged.
/// When it is not (or is gone), says so in the outcome and returns `None`.
fn open_pinned(out: &mut Outcome, id: &FileId) -> Option<Pinned> {
    match try_open_pinned(id) {
        Ok(Some(p)) => Some(p),
        Ok(None) => {
            out.done
                .push(format!("{} is already gone", id.path.display()));
            None
        }
        Err(why) => {
            out.skipped.push(why);
            None
        }
    }
}

fn try_open_pinned(id: &FileId) -> Result<Option<Pinned>, String> {
    let (parent, name) = safe_fs::split(id.path.as_bytes()).map_err(|e| e.to_string())?;
    let dir = Dir::open(parent).map_err(|e| e.to_string())?;
    if dir.stat_entry(name).map_err(|e| e.to_string())?.is_none() {
        return Ok(None);
    }
    let f = dir.open_file(name).map_err(|e| e.to_string())?;
    let meta = SavedMeta::of(&f).map_err(|e| e.to_string())?;
    let changed = |what: &str| {
        format!(
            "{}: changed since the scan ({what}): not touched",
            id.path.display()
        )
    };
    if meta.dev_ino != (id.dev, id.ino) {
        return Err(changed("another file is there now"));
    }
    if meta.size != id.size || meta.mtime != id.mtime {
        return Err(changed("size or modification time differ"));
    }
    let data = safe_fs::read_all(&f, MAX_HASHED).map_err(|e| e.to_string())?;
    if crate::collect::modules::sha256_hex(&data) != id.sha256 {
        return Err(changed("content differs"));
    }
    Ok(Some((dir, name.to_vec(), f, data, meta)))
}

/// Carries out a plan, journaling every step into a new case under `case_root`.
pub fn execute(
    host: &Host,
    plan: &Plan,
    case_root: &Path,
    before: &impl Serialize,
) -> anyhow::Result<Outcome> {
    use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};
    pause_hook();
    let t0 = std::time::Instant::now();
    let case = Case::create(case_root)?;
    case.write_file("plan.json", &serde_json::to_vec_pretty(plan)?)?;
    case.write_file("scan-before.json", &serde_json::to_vec_pretty(before)?)?;
    let mut r = Runner {
        out: Outcome {
            case_dir: String::from_utf8_lossy(&case.dir.path).into_owned(),
            case_id: case.id.clone(),
            ..Outcome::default()
        },
        case,
        done_count: 0,
        journal_broken: false,
    };
    let open = Action::Open {
        host: host
            .read_text("/proc/sys/kernel/hostname")
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
        let now = crate::collect::process::read_stat(host, &format!("/proc/{}/stat", p.pid))
            .ok()
            .or_else(|| {
                let fresh = crate::host::FreshProc::open(host).ok()?;
                crate::collect::process::read_stat(fresh.host(), &format!("/proc/{}/stat", p.pid))
                    .ok()
            });
        if now.map(|s| s.starttime) != Some(p.starttime) {
            r.out.skipped.push(format!(
                "PID {} is no longer the process the scan saw: not touched",
                p.pid
            ));
            continue;
        }
        fds.push((p, fd));
    }
    // 2. Freeze everything before killing anything.
    for (p, fd) in &fds {
        let a = Action::Freeze {
            pid: p.pid,
            name: p.name.clone(),
        };
        let a2 = a.clone();
        r.step(a, |_| {
            pidfd_send_signal(fd, Signal::STOP)?;
            Ok(a2)
        });
    }
    // 3. Evidence, read through the host layer (a private procfs when a mount
    //    covers /proc/PID).
    for (p, _) in &fds {
        let dir = format!("evidence/{}", p.pid);
        let a = Action::SaveEvidence {
            pid: p.pid,
            dir: dir.clone(),
            exe_sha256: None,
        };
        r.step(a, |case| {
            let proc_dir = format!("/proc/{}", p.pid);
            let fresh = if host.exists(format!("{proc_dir}/stat")) {
                None
            } else {
                crate::host::FreshProc::open(host).ok()
            };
            let h = fresh.as_ref().map_or(host, |f| f.host());
            let mut sha = None;
            if let Ok(exe) = h.read_prefix(format!("{proc_dir}/exe"), MAX_HASHED) {
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
                if let Ok(data) = h.read(format!("{proc_dir}/{f}")) {
                    case.write_file(&format!("{dir}/{f}"), &data)?;
                }
            }
            if let Ok(l) = h.read_link(format!("{proc_dir}/exe")) {
                case.write_file(&format!("{dir}/exe.link"), &l)?;
            }
            Ok(Action::SaveEvidence {
                pid: p.pid,
                dir: dir.clone(),
                exe_sha256: sha,
            })
        });
    }
    // 4. Kill through the pidfds, then wait for each to exit.
    for (p, fd) in &fds {
        let a = Action::Kill {
            pid: p.pid,
            name: p.name.clone(),
        };
        let a2 = a.clone();
        r.step(a, |_| {
            pidfd_send_signal(fd, Signal::KILL)?;
            let mut pfd = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
            let timeout = rustix::event::Timespec {
                tv_sec: 5,
                tv_nsec: 0,
            };
            rustix::event::poll(&mut pfd, Some(&timeout))?;
            Ok(a2)
        });
    }
    // 5. Unmount covers over /proc/PID (the plan only holds /proc/PID paths).
    for m in &plan.unmounts {
        let a = Action::Unmount {
            mount_point: m.clone(),
        };
        let a2 = a.clone();
        r.step(a, |_| {
            rustix::mount::unmount(m.as_str(), rustix::mount::UnmountFlags::DETACH)?;
            Ok(a2)
        });
    }
    // 6. /etc/ld.so.preload entries, then line removals.
    let mut edits: Vec<PlannedEdit> = plan.edits.clone();
    if !plan.preload_entries.is_empty() {
        if let Some(id) = host.file_id(b"/etc/ld.so.preload") {
            if let Ok(text) = host.read("/etc/ld.so.preload") {
                let mut lines = Vec::new();
                for (i, line) in text.split(|b| *b == b'\n').enumerate() {
                    let words = crate::collect::preload::split_preload(line);
                    if words
                        .iter()
                        .any(|w| plan.preload_entries.iter().any(|e| e.as_bytes() == w))
                    {
                        lines.push((i + 1, String::from_utf8_lossy(line).into_owned()));
                    }
                }
                edits.push(PlannedEdit {
                    named: BytePath::new(&b"/etc/ld.so.preload"[..]),
                    id,
                    lines,
                });
            }
        }
    }
    for e in &edits {
        edit_file(&mut r, e);
    }
    // 7. systemd units: remove the links that enable them.
    for unit in &plan.units {
        let name = unit
            .as_bytes()
            .rsplit(|b| *b == b'/')
            .next()
            .unwrap_or_default()
            .to_vec();
        for (dir_path, link_name) in unit_links(host, &name) {
            remove_link(&mut r, &dir_path, &link_name);
        }
    }
    // 8. Quarantine.
    for q in &plan.quarantine {
        quarantine(&mut r, q);
    }
    let summary = format!(
        "{} actions done, {} failed, {} not touched",
        r.out.done.len(),
        r.out.failed.len(),
        r.out.skipped.len()
    );
    r.step(
        Action::Close {
            summary: summary.clone(),
        },
        |_| Ok(Action::Close { summary }),
    );
    write_manifest(&r.case)?;
    r.out.act_ms = t0.elapsed().as_secs_f64() * 1e3;
    Ok(r.out)
}

fn clear_attrs(r: &mut Runner, path: &BytePath, f: &File, meta: &SavedMeta, sha256: &str) -> bool {
    let a = Action::ClearAttrs {
        path: path.clone(),
        immutable: meta.immutable,
        append_only: meta.append_only,
        sha256: sha256.to_string(),
    };
    let a2 = a.clone();
    r.step(a, |_| {
        safe_fs::set_attrs(f, false, false)?;
        Ok(a2)
    })
}

/// Moves a pinned file into the case.
fn quarantine(r: &mut Runner, q: &PlannedFile) {
    let path = &q.id.path;
    let Some((dir, name, f, data, meta)) = open_pinned(&mut r.out, &q.id) else {
        return;
    };
    // A file with other hard links is someone else's file too (moving this
    // name and making the inode 0400 would change it under its other names).
    if rustix::fs::fstat(&f).is_ok_and(|st| st.st_nlink > 1) {
        r.out.skipped.push(format!(
            "{}: has other hard links (another name for the same file): not touched",
            path.display()
        ));
        return;
    }
    let sha = q.id.sha256.clone();
    if (meta.immutable || meta.append_only) && !clear_attrs(r, path, &f, &meta, &sha) {
        return;
    }
    let stored = r.case.slot("files");
    let action = Action::Quarantine {
        original: path.clone(),
        stored: stored.clone(),
        sha256: sha,
        meta,
        parent: (dir.dev, dir.ino),
    };
    let a2 = action.clone();
    r.step(action, |case| {
        let files = case.subdir("files")?;
        let slot = stored.rsplit('/').next().unwrap_or_default().as_bytes();
        match dir.rename_noreplace(&name, &files, slot) {
            Ok(()) => {
                // The entry moved must be the file checked; if the name was
                // swapped in between, put it back and stop.
                let st = files.stat_entry(slot)?;
                let fst = rustix::fs::fstat(&f)?;
                if st.map(|s| (s.st_dev, s.st_ino)) != Some((fst.st_dev, fst.st_ino)) {
                    let _ = files.rename_noreplace(slot, &dir, &name);
                    return Err(safe_fs::err(
                        path.as_bytes(),
                        "replaced while being moved: put back, not touched",
                    ));
                }
                rustix::fs::fchmod(&f, rustix::fs::Mode::from_raw_mode(0o400))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
                // Another file system: copy the checked bytes, then unlink the
                // name only if it still is the checked file.
                let mut t = files.create_tmp()?;
                t.write_all(&data)?;
                rustix::fs::fchmod(&t.file, rustix::fs::Mode::from_raw_mode(0o400))?;
                drop(t.link_into(&files, slot, false)?);
                let fst = rustix::fs::fstat(&f)?;
                let now = dir.stat_entry(&name)?;
                if now.map(|s| (s.st_dev, s.st_ino)) != Some((fst.st_dev, fst.st_ino)) {
                    return Err(safe_fs::err(
                        path.as_bytes(),
                        "replaced while being copied: the copy is kept, the new file is not touched",
                    ));
                }
                dir.unlink(&name)?;
            }
            Err(e) => return Err(e),
        }
        files.sync()?;
        dir.sync()?;
        Ok(a2)
    });
}

/// Removes lines from a pinned file, keeping the original in the case. The new
/// content is written to a fresh file in the same directory and renamed over
/// the name; owner and mode are those of the file itself (never of a link).
fn edit_file(r: &mut Runner, e: &PlannedEdit) {
    let path = &e.id.path;
    let Some((dir, name, f, original, meta)) = open_pinned(&mut r.out, &e.id) else {
        return;
    };
    let mut all: Vec<&[u8]> = original.split_inclusive(|b| *b == b'\n').collect();
    let mut removed = Vec::new();
    for (lineno, content) in &e.lines {
        let strip = |l: &[u8]| l.strip_suffix(b"\n").unwrap_or(l).to_vec();
        let idx = if lineno
            .checked_sub(1)
            .and_then(|i| all.get(i))
            .map(|l| strip(l))
            .as_deref()
            == Some(content.as_bytes())
        {
            Some(lineno - 1)
        } else {
            all.iter().position(|l| strip(l) == content.as_bytes())
        };
        if let Some(i) = idx {
            if !removed.iter().any(|(n, _)| *n == i + 1) {
                removed.push((i + 1, content.clone()));
            }
        }
    }
    if removed.is_empty() {
        r.out
            .done
            .push(format!("{}: the lines were already gone", path.display()));
        return;
    }
    removed.sort();
    for (i, _) in removed.iter().rev() {
        all.remove(i - 1);
    }
    let edited: Vec<u8> = all.concat();
    let copy = r.case.slot("originals");
    if let Err(err) = r.case.write_file(&copy, &original) {
        r.out.failed.push(format!(
            "{}: cannot keep the original: {err}",
            path.display()
        ));
        return;
    }
    if (meta.immutable || meta.append_only) && !clear_attrs(r, path, &f, &meta, &e.id.sha256) {
        return;
    }
    let action = Action::Edit {
        path: path.clone(),
        original_copy: copy,
        original_sha256: e.id.sha256.clone(),
        edited_sha256: crate::collect::modules::sha256_hex(&edited),
        meta: meta.clone(),
        removed,
        parent: (dir.dev, dir.ino),
    };
    let a2 = action.clone();
    r.step(action, |_| {
        replace_content(&dir, &name, &f, &edited, &meta)?;
        Ok(a2)
    });
}

/// Replaces the content of `name` in `dir`, which must still be the open
/// file `f`: a new file (owner, mode and times of `meta`) renamed over it.
pub fn replace_content(
    dir: &Dir,
    name: &[u8],
    f: &File,
    data: &[u8],
    meta: &SavedMeta,
) -> std::io::Result<()> {
    let mut t = dir.create_tmp()?;
    t.write_all(data)?;
    meta.apply(&t.file, true)?;
    let fst = rustix::fs::fstat(f)?;
    let now = dir.stat_entry(name)?;
    if now.map(|s| (s.st_dev, s.st_ino)) != Some((fst.st_dev, fst.st_ino)) {
        return Err(safe_fs::err(
            &dir.join(name),
            "replaced while being edited: not touched",
        ));
    }
    t.link_into(dir, name, true)?;
    Ok(())
}

/// Removes one systemd link (only if it is a link).
fn remove_link(r: &mut Runner, dir_path: &[u8], name: &[u8]) {
    let Ok(dir) = Dir::open(dir_path) else { return };
    let link = BytePath::new(dir.join(name));
    let is_link = dir
        .stat_entry(name)
        .ok()
        .flatten()
        .is_some_and(|s| s.st_mode & 0o170000 == 0o120000);
    if !is_link {
        return;
    }
    let target = BytePath::new(dir.read_link(name).unwrap_or_default());
    let a = Action::RemoveLink {
        link,
        target,
        parent: (dir.dev, dir.ino),
    };
    let a2 = a.clone();
    r.step(a, |_| {
        dir.unlink(name)?;
        dir.sync()?;
        Ok(a2)
    });
}

/// Links in systemd's `.wants` / `.requires` directories that point to a
/// unit, and an alias link of that name: (directory, link name).
fn unit_links(host: &Host, unit: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for base in ["/etc/systemd/system", "/etc/systemd/user"] {
        for d in host.list_dir(base).unwrap_or_default() {
            if d.file_type == rustix::fs::FileType::Directory
                && (d.name.ends_with(b".wants") || d.name.ends_with(b".requires"))
            {
                let mut dir = base.as_bytes().to_vec();
                dir.push(b'/');
                dir.extend_from_slice(&d.name);
                out.push((dir, unit.to_vec()));
            }
        }
        out.push((base.as_bytes().to_vec(), unit.to_vec()));
    }
    out
}

/// Writes `manifest.json`: one entry per quarantined or edited file.
pub fn write_manifest(case: &Case) -> anyhow::Result<()> {
    let records = super::case::read_journal(&case.dir)?;
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
    case.write_file("manifest.json", &serde_json::to_vec_pretty(&entries)?)?;
    Ok(())
}
