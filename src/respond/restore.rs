//! `quarry restore` and `quarry cases`: put back what a case removed.
//!
//! Restore trusts nothing but its own case. The case is found by id under a
//! case root that is root's alone (see [`super::case::open_case`]); every
//! journal field is checked before use: `stored` and copies resolve beneath
//! the case folder, originals are absolute and normalised, and a setuid or
//! setgid mode or a chattr attribute is put back only on bytes whose SHA-256
//! matches the journal. A file is never written through a link or onto one;
//! if the directory a file was in is not the one recorded (device and inode),
//! that item is refused and the rest goes on.

use std::collections::BTreeMap;
use std::path::Path;

use super::case::{self, Action, Record};
use super::execute::replace_content;
use super::safe_fs::{self, Dir};
use crate::host::{BytePath, MAX_HASHED};

/// Opens the directory a journal names, if it is still the one recorded.
fn recorded_dir(path: &BytePath, parent: (u64, u64)) -> Result<(Dir, Vec<u8>), String> {
    let (p, name) = safe_fs::split(path.as_bytes()).map_err(|e| format!("refused: {e}"))?;
    let dir = Dir::open(p).map_err(|e| format!("refused: {e}"))?;
    if (dir.dev, dir.ino) != parent {
        return Err(format!(
            "refused: {} is not the directory the fix took it from (device and inode differ)",
            crate::escape::escape(p)
        ));
    }
    Ok((dir, name.to_vec()))
}

/// Checks a path inside the case (`files/001`): relative, no `..`.
fn case_rel(rel: &str) -> Result<&[u8], String> {
    let ok = !rel.is_empty()
        && !rel.starts_with('/')
        && rel
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(rel.as_bytes())
    } else {
        Err(format!(
            "refused: {} is not a path inside the case",
            crate::escape::escape(rel.as_bytes())
        ))
    }
}

/// Puts back everything a case removed or changed. Processes are not restarted.
pub fn restore(root: &Path, id: &str) -> anyhow::Result<Vec<String>> {
    let case_dir = case::open_case(root, id)?;
    let records = case::read_journal(&case_dir)?;
    if records.is_empty() {
        anyhow::bail!("{id}: no journal records (not a Quarry case?)");
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
        let line = match a {
            Action::Quarantine {
                original,
                stored,
                sha256,
                meta,
                parent,
            } => restore_file(&case_dir, original, stored, sha256, meta, *parent),
            Action::Edit {
                path,
                original_copy,
                original_sha256,
                edited_sha256,
                meta,
                removed,
                parent,
            } => restore_edit(
                &case_dir,
                path,
                original_copy,
                original_sha256,
                edited_sha256,
                meta,
                removed,
                *parent,
            ),
            Action::ClearAttrs {
                path,
                immutable,
                append_only,
                sha256,
            } => reset_attrs(path, *immutable, *append_only, sha256),
            Action::RemoveLink {
                link,
                target,
                parent,
            } => (|| {
                let (dir, name) = recorded_dir(link, *parent)?;
                if dir.stat_entry(&name).map_err(|e| e.to_string())?.is_some() {
                    return Ok(format!("{}: already present", link.display()));
                }
                dir.symlink(target.as_bytes(), &name)
                    .map_err(|e| e.to_string())?;
                Ok(format!("re-enabled {}", link.display()))
            })(),
            Action::Kill { pid, name } => Ok(format!(
                "PID {pid} {name} was killed; processes are not restarted"
            )),
            Action::Unmount { mount_point } => Ok(format!(
                "{} was unmounted; not mounted again",
                crate::escape::escape(mount_point.as_bytes())
            )),
            _ => continue,
        };
        said.push(line.unwrap_or_else(|e| e));
    }
    append_record(
        &case_dir,
        &records,
        Action::Note {
            text: "restored".into(),
        },
    )?;
    Ok(said)
}

fn append_record(dir: &Dir, records: &[Record], action: Action) -> anyhow::Result<()> {
    use std::io::Write;
    let fd = rustix::fs::openat2(
        &dir.fd,
        "journal.jsonl",
        rustix::fs::OFlags::WRONLY
            | rustix::fs::OFlags::APPEND
            | rustix::fs::OFlags::NOFOLLOW
            | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
        rustix::fs::ResolveFlags::BENEATH | rustix::fs::ResolveFlags::NO_SYMLINKS,
    )?;
    let mut f = std::fs::File::from(fd);
    let rec = Record {
        seq: records.len() as u64 + 1,
        time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        state: "done".into(),
        action,
        error: None,
    };
    f.write_all(&serde_json::to_vec(&rec)?)?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    Ok(())
}

/// Reads a file of the case, checked against its recorded SHA-256.
/// `Ok(None)` when the file is not in the case (the fix stopped before it).
fn case_bytes(case_dir: &Dir, rel: &str, sha256: &str) -> Result<Option<(Vec<u8>, bool)>, String> {
    let rel = case_rel(rel)?;
    let f = match case_dir.open_file_beneath(rel) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("refused: {e}")),
    };
    let data = safe_fs::read_all(&f, MAX_HASHED).map_err(|e| e.to_string())?;
    let trusted = crate::collect::modules::sha256_hex(&data) == sha256;
    Ok(Some((data, trusted)))
}

fn restore_file(
    case_dir: &Dir,
    original: &BytePath,
    stored: &str,
    sha256: &str,
    meta: &case::SavedMeta,
    parent: (u64, u64),
) -> Result<String, String> {
    let shown = original.display();
    let (data, trusted) = match case_bytes(case_dir, stored, sha256) {
        Ok(Some(x)) => x,
        Ok(None) => {
            return Ok(format!(
                "{shown}: still in place (the fix stopped before moving it)"
            ))
        }
        Err(e) => return Err(format!("{shown}: {e}")),
    };
    let (dir, name) = recorded_dir(original, parent).map_err(|e| format!("{shown}: {e}"))?;
    let mut notes = String::new();
    if !trusted {
        notes.push_str("; WARNING the quarantined copy does not match its recorded SHA-256: restored without setuid/setgid bits or attributes");
    }
    match dir.stat_entry(&name).map_err(|e| e.to_string())? {
        None => {}
        Some(st) if st.st_mode & 0o170000 == 0o100000 => {
            let cur = dir
                .open_file(&name)
                .and_then(|f| safe_fs::read_all(&f, MAX_HASHED))
                .map_err(|e| format!("{shown}: {e}"))?;
            if cur == data {
                return Ok(format!("{shown}: already present and identical"));
            }
            let aside = safe_fs::random_name(&[&name[..], b".quarry-conflict-"].concat())
                .map_err(|e| e.to_string())?;
            dir.rename_noreplace(&name, &dir, &aside)
                .map_err(|e| format!("{shown}: {e}"))?;
            notes.push_str(&format!(
                "; a different file was there, kept as {}",
                crate::escape::escape(&dir.join(&aside))
            ));
        }
        Some(_) => {
            return Err(format!(
                "{shown}: refused: something that is not a regular file (a link, a directory) is there now; not written"
            ))
        }
    }
    let write = || -> std::io::Result<()> {
        let mut t = dir.create_tmp()?;
        t.write_all(&data)?;
        meta.apply(&t.file, trusted)?;
        // Attributes go last, on the descriptor: the kernel refuses to link
        // an immutable file into place.
        let f = t.link_into(&dir, &name, false)?;
        if trusted && (meta.immutable || meta.append_only) {
            safe_fs::set_attrs(&f, meta.immutable, meta.append_only)?;
        }
        Ok(())
    };
    write().map_err(|e| format!("{shown}: {e}"))?;
    Ok(format!(
        "restored {shown} ({} bytes, mode {:o}){notes}",
        data.len(),
        if trusted {
            meta.mode
        } else {
            meta.mode & !0o6000
        }
    ))
}

#[allow(clippy::too_many_arguments)]
fn restore_edit(
    case_dir: &Dir,
    path: &BytePath,
    original_copy: &str,
    original_sha256: &str,
    edited_sha256: &str,
    meta: &case::SavedMeta,
    removed: &[(usize, String)],
    parent: (u64, u64),
) -> Result<String, String> {
    let shown = path.display();
    let (original, trusted) = case_bytes(case_dir, original_copy, original_sha256)
        .map_err(|e| format!("{shown}: {e}"))?
        .ok_or_else(|| format!("{shown}: refused: the kept original is missing from the case"))?;
    if !trusted {
        return Err(format!(
            "{shown}: refused: the kept original does not match its recorded SHA-256"
        ));
    }
    let (dir, name) = recorded_dir(path, parent).map_err(|e| format!("{shown}: {e}"))?;
    let f = match dir.open_file(&name) {
        Ok(f) => f,
        Err(e) => {
            return Err(format!(
                "{shown}: refused: {e} (a restore never writes through a link or recreates a removed file)"
            ))
        }
    };
    let current = safe_fs::read_all(&f, MAX_HASHED).map_err(|e| e.to_string())?;
    let cur_sha = crate::collect::modules::sha256_hex(&current);
    if cur_sha == original_sha256 {
        return Ok(format!("{shown}: already as it was"));
    }
    let _ = safe_fs::set_attrs(&f, false, false);
    let (content, what) = if cur_sha == edited_sha256 {
        (
            original,
            format!("restored {shown} ({} line(s) put back)", removed.len()),
        )
    } else {
        // Changed since the fix: put the lines back where they were.
        let mut lines: Vec<Vec<u8>> = current.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
        if lines.last().is_some_and(Vec::is_empty) {
            lines.pop();
        }
        for (n, content) in removed {
            let i = n.saturating_sub(1).min(lines.len());
            lines.insert(i, content.as_bytes().to_vec());
        }
        let mut out = lines.join(&b'\n');
        out.push(b'\n');
        (
            out,
            format!("{shown}: changed since the fix; the removed lines were inserted back at their line numbers"),
        )
    };
    replace_content(&dir, &name, &f, &content, meta).map_err(|e| format!("{shown}: {e}"))?;
    if meta.immutable || meta.append_only {
        if let Ok(f2) = dir.open_file(&name) {
            let _ = safe_fs::set_attrs(&f2, meta.immutable, meta.append_only);
        }
    }
    Ok(what)
}

/// Undoes a `ClearAttrs` on a file whose content is still the one protected.
fn reset_attrs(
    path: &BytePath,
    immutable: bool,
    append_only: bool,
    sha256: &str,
) -> Result<String, String> {
    let shown = path.display();
    let (p, name) = safe_fs::split(path.as_bytes()).map_err(|e| e.to_string())?;
    let Ok(dir) = Dir::open(p) else {
        return Ok(format!(
            "{shown}: attributes not set again (its folder is gone)"
        ));
    };
    let Ok(f) = dir.open_file(name) else {
        return Ok(format!(
            "{shown}: attributes not set again (no regular file there)"
        ));
    };
    let data = safe_fs::read_all(&f, MAX_HASHED).map_err(|e| e.to_string())?;
    if crate::collect::modules::sha256_hex(&data) != sha256 {
        return Ok(format!(
            "{shown}: attributes not set again (the content is not the one they protected)"
        ));
    }
    safe_fs::set_attrs(&f, immutable, append_only).map_err(|e| format!("{shown}: {e}"))?;
    Ok(format!(
        "{shown}: chattr {} set again",
        if immutable { "+i" } else { "+a" }
    ))
}

/// One line per case: id, when, what it did, whether it was restored.
pub fn cases(root: &Path) -> Vec<String> {
    case::list(root)
        .iter()
        .map(|id| {
            let recs = case::open_case(root, id)
                .and_then(|d| case::read_journal(&d))
                .unwrap_or_default();
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
                "{id}  {when}  {}{}{}",
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
