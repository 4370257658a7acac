//! A case folder: the journal, quarantined files, originals of edited files,
//! and evidence saved from processes.
//!
//! Layout (`/var/lib/quarry/cases/<id>/`, root's alone: 0700 on a path of
//! root-owned directories nobody else can write, checked before every use):
//! - `journal.jsonl` — one JSON object per line; every action is written
//!   (and fsync'd, file and folder) with all it needs to be undone *before* it
//!   is carried out, and marked done after. An interrupted fix leaves a journal
//!   from which `quarry restore` recovers.
//! - `manifest.json` — the same facts, one entry per file, for people.
//! - `files/NNN` — quarantined files, mode 0400 (never executable).
//! - `originals/NNN` — edited files as they were.
//! - `evidence/PID/` — executable, command line, environment, maps, status.
//!
//! Every file in the case is opened beneath the case folder's descriptor
//! (`RESOLVE_BENEATH`, no links): see [`super::safe_fs`].

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::safe_fs::{self, Dir};
use crate::host::BytePath;

/// Default folder that holds cases.
pub const DEFAULT_CASE_ROOT: &str = "/var/lib/quarry/cases";

/// Metadata of a file, kept so it can be put back exactly.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavedMeta {
    pub size: u64,
    /// Permission bits including setuid/setgid/sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds and nanoseconds since the epoch.
    pub atime: (i64, i64),
    pub mtime: (i64, i64),
    pub immutable: bool,
    pub append_only: bool,
    /// Device and inode of the file.
    #[serde(default)]
    pub dev_ino: (u64, u64),
}

impl SavedMeta {
    /// The metadata of an open file (never of a link: the file is opened with
    /// `O_NOFOLLOW`, so a link's own mode can never be recorded).
    pub fn of(f: &File) -> io::Result<SavedMeta> {
        let st = rustix::fs::fstat(f)?;
        let (immutable, append_only) = safe_fs::get_attrs(f).unwrap_or((false, false));
        Ok(SavedMeta {
            size: st.st_size as u64,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            atime: (st.st_atime, st.st_atime_nsec as i64),
            mtime: (st.st_mtime, st.st_mtime_nsec as i64),
            immutable,
            append_only,
            dev_ino: (st.st_dev, st.st_ino),
        })
    }

    /// Applies owner, mode and times to an open file (attributes are separate).
    /// Without `trusted`, setuid and setgid bits are not put back.
    pub fn apply(&self, f: &impl AsFd, trusted: bool) -> io::Result<()> {
        let mode = if trusted {
            self.mode
        } else {
            self.mode & !0o6000
        };
        safe_fs::apply_meta(f, self.uid, self.gid, mode, self.atime, self.mtime)
    }
}

/// Reads the immutable and append-only attributes of a path (see
/// [`crate::host::inode_attrs`]); for tests and reports.
pub use crate::host::inode_attrs as get_attrs;

/// Sets or clears the immutable and append-only attributes of a path, never
/// following a final link. For tests; `quarry fix` uses descriptors.
pub fn set_attrs(path: &Path, immutable: bool, append_only: bool) -> io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    safe_fs::set_attrs(&fd, immutable, append_only)
}

/// One journal record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub time: String,
    /// `begin`, `done` or `failed`.
    pub state: String,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An action, with everything needed to undo it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Action {
    /// The case was opened; the plan is in plan.json.
    Open {
        host: String,
        quarry_version: String,
    },
    Freeze {
        pid: i32,
        name: String,
    },
    SaveEvidence {
        pid: i32,
        dir: String,
        exe_sha256: Option<String>,
    },
    Kill {
        pid: i32,
        name: String,
    },
    /// Attributes cleared on a file so it can be moved or edited; `sha256` is
    /// the content they protected (restore sets them again only on that).
    ClearAttrs {
        path: BytePath,
        immutable: bool,
        append_only: bool,
        sha256: String,
    },
    Quarantine {
        original: BytePath,
        stored: String,
        sha256: String,
        meta: SavedMeta,
        /// Device and inode of the directory it was in.
        parent: (u64, u64),
    },
    Edit {
        path: BytePath,
        original_copy: String,
        original_sha256: String,
        edited_sha256: String,
        meta: SavedMeta,
        /// (1-based line number, content) of each removed line.
        removed: Vec<(usize, String)>,
        parent: (u64, u64),
    },
    RemoveLink {
        link: BytePath,
        target: BytePath,
        parent: (u64, u64),
    },
    Unmount {
        mount_point: String,
    },
    Note {
        text: String,
    },
    Close {
        summary: String,
    },
}

/// An open case.
pub struct Case {
    pub dir: Dir,
    pub id: String,
    journal: File,
    seq: u64,
    counter: u32,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Makes (if needed) and checks the case root: root's alone, 0700, on a path
/// nobody else can write. An existing root-owned folder that is more open is
/// tightened to 0700 (earlier versions made it 0755).
pub fn prepare_root(root: &Path) -> io::Result<Dir> {
    let bytes = root.as_os_str().as_encoded_bytes();
    safe_fs::make_dirs(bytes)?;
    let (parent, name) = safe_fs::split(bytes)?;
    let p = Dir::open(parent)?;
    if let Some(st) = p.stat_entry(name)? {
        if st.st_uid == 0 && st.st_mode & 0o170000 == 0o040000 && st.st_mode & 0o077 != 0 {
            let d = p.open_dir_beneath(name)?;
            rustix::fs::fchmod(&d.fd, rustix::fs::Mode::from_raw_mode(0o700))?;
        }
    }
    safe_fs::check_private_dir(bytes)
}

/// A case id: what `Case::create` makes (digits, `-`), nothing that could
/// name another folder.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !id.starts_with('-')
}

impl Case {
    /// Creates a new case folder under `root`.
    pub fn create(root: &Path) -> io::Result<Case> {
        let root_dir = prepare_root(root)?;
        let stamp = humantime::format_rfc3339_seconds(SystemTime::now())
            .to_string()
            .replace([':', '-'], "")
            .replace('T', "-")
            .trim_end_matches('Z')
            .to_string();
        let id = format!("{stamp}-{}", std::process::id());
        root_dir.mkdir(id.as_bytes())?;
        let dir = root_dir.open_dir_beneath(id.as_bytes())?;
        for sub in ["files", "originals", "evidence"] {
            dir.mkdir(sub.as_bytes())?;
        }
        let journal = create_in(&dir, b"journal.jsonl", 0o600, true)?;
        root_dir.sync()?;
        Ok(Case {
            dir,
            id,
            journal,
            seq: 0,
            counter: 0,
        })
    }

    /// Writes a record durably (file and folder fsync'd).
    fn write(&mut self, state: &str, action: &Action, error: Option<String>) -> io::Result<()> {
        self.seq += 1;
        let rec = Record {
            seq: self.seq,
            time: now_rfc3339(),
            state: state.into(),
            action: action.clone(),
            error,
        };
        let mut line = serde_json::to_vec(&rec)?;
        line.push(b'\n');
        self.journal.write_all(&line)?;
        self.journal.sync_all()?;
        self.dir.sync()
    }

    /// Journals the intent to act.
    pub fn begin(&mut self, action: &Action) -> io::Result<()> {
        self.write("begin", action, None)
    }

    /// Journals that an action completed.
    pub fn done(&mut self, action: &Action) -> io::Result<()> {
        self.write("done", action, None)
    }

    /// Journals that an action failed.
    pub fn failed(&mut self, action: &Action, e: &str) -> io::Result<()> {
        self.write("failed", action, Some(e.to_string()))
    }

    /// A fresh relative path inside the case (`files/001`, `originals/002`).
    pub fn slot(&mut self, sub: &str) -> String {
        self.counter += 1;
        format!("{sub}/{:03}", self.counter)
    }

    /// A sub-folder of the case (created if missing), e.g. `evidence/123`.
    pub fn subdir(&self, rel: &str) -> io::Result<Dir> {
        let mut cur = self.dir.open_dir_beneath(b".")?;
        for c in rel.split('/') {
            if cur.stat_entry(c.as_bytes())?.is_none() {
                cur.mkdir(c.as_bytes())?;
            }
            cur = cur.open_dir_beneath(c.as_bytes())?;
        }
        Ok(cur)
    }

    /// Writes a new file inside the case (mode 0400), durably.
    pub fn write_file(&self, rel: &str, data: &[u8]) -> io::Result<()> {
        let (dir, name) = match rel.rsplit_once('/') {
            Some((d, n)) => (self.subdir(d)?, n),
            None => (self.dir.open_dir_beneath(b".")?, rel),
        };
        let mut f = create_in(&dir, name.as_bytes(), 0o400, false)?;
        f.write_all(data)?;
        f.sync_all()?;
        dir.sync()
    }
}

/// Creates a file that must not exist yet (`O_EXCL`, no links).
fn create_in(dir: &Dir, name: &[u8], mode: u32, append: bool) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags};
    let mut flags =
        OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::WRONLY | OFlags::CLOEXEC;
    if append {
        flags |= OFlags::APPEND;
    }
    let fd = rustix::fs::openat(&dir.fd, name, flags, Mode::from_raw_mode(mode))
        .map_err(|e| safe_fs::err(&dir.join(name), e))?;
    Ok(File::from(fd))
}

/// Parses a journal. A crash can leave a torn last line, which is ignored; any
/// other line that does not parse means the journal is not Quarry's as written,
/// and it is refused.
pub fn parse_journal(text: &[u8]) -> io::Result<Vec<Record>> {
    let mut out = Vec::new();
    let lines: Vec<&[u8]> = text.split(|b| *b == b'\n').collect();
    let n = lines.len();
    for (i, l) in lines.iter().enumerate() {
        if l.is_empty() {
            continue;
        }
        match serde_json::from_slice::<Record>(l) {
            Ok(r) => out.push(r),
            // The last line, without its newline: torn by a crash.
            Err(_) if i + 1 == n => {}
            Err(e) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("journal.jsonl:{}: not a Quarry journal record: {e}", i + 1),
                ))
            }
        }
    }
    Ok(out)
}

/// Reads a case's journal.
pub fn read_journal(dir: &Dir) -> io::Result<Vec<Record>> {
    let f = dir.open_file_beneath(b"journal.jsonl")?;
    parse_journal(&safe_fs::read_all(&f, 64 * 1024 * 1024)?)
}

/// Opens an existing case by id under a checked case root.
pub fn open_case(root: &Path, id: &str) -> io::Result<Dir> {
    if !valid_id(id) {
        return Err(io::Error::other(format!(
            "{}: not a case id (`quarry cases` lists them)",
            crate::escape::escape(id.as_bytes())
        )));
    }
    let root_dir = safe_fs::check_private_dir(root.as_os_str().as_encoded_bytes())?;
    let d = root_dir.open_dir_beneath(id.as_bytes())?;
    if d.uid != 0 || d.mode & 0o077 != 0 {
        return Err(safe_fs::err(
            &d.path,
            format!(
                "owned by uid {} with mode {:o}: not a case Quarry made (cases are root's alone, 0700)",
                d.uid, d.mode
            ),
        ));
    }
    Ok(d)
}

/// Adds a file to an existing case (the scan after a fix).
pub fn add_file(root: &Path, id: &str, name: &str, data: &[u8]) -> io::Result<()> {
    let dir = open_case(root, id)?;
    let mut f = create_in(&dir, name.as_bytes(), 0o400, false)?;
    f.write_all(data)?;
    f.sync_all()?;
    dir.sync()
}

/// Case ids under `root`, oldest first (only folders, never links).
pub fn list(root: &Path) -> Vec<String> {
    let Ok(root_dir) = safe_fs::check_private_dir(root.as_os_str().as_encoded_bytes()) else {
        return Vec::new();
    };
    let mut v: Vec<String> = crate::host::list_dir_raw(root)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.file_type == rustix::fs::FileType::Directory)
        .filter_map(|e| String::from_utf8(e.name).ok())
        .filter(|id| valid_id(id))
        .filter(|id| {
            root_dir
                .open_dir_beneath(id.as_bytes())
                .is_ok_and(|d| d.open_file_beneath(b"journal.jsonl").is_ok())
        })
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journals_refuse_garbage_but_forgive_a_torn_end() {
        let rec = Record {
            seq: 1,
            time: "t".into(),
            state: "done".into(),
            action: Action::Note { text: "x".into() },
            error: None,
        };
        let line = serde_json::to_string(&rec).unwrap();
        let ok = format!("{line}\n{line}\n{{\"seq\":3,\"ti");
        assert_eq!(parse_journal(ok.as_bytes()).unwrap().len(), 2);
        let bad = format!("{line}\nnot json\n{line}\n");
        assert!(parse_journal(bad.as_bytes()).is_err());
    }

    #[test]
    fn ids_cannot_name_other_folders() {
        assert!(valid_id("20261126-203000-1234"));
        for bad in ["", "..", "../x", "/tmp/x", "a/b", "-rf", "x y"] {
            assert!(!valid_id(bad), "{bad}");
        }
    }
}
