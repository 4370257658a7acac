//! A case folder: the journal, quarantined files, originals of edited files,
//! and evidence saved from processes.
//!
//! Layout (`/var/lib/quarry/cases/<id>/`, mode 0700):
//! - `journal.jsonl` — one JSON object per line; every action is written
//!   (and fsync'd, file and folder) with all it needs to be undone *before* it
//!   is carried out, and marked done after. An interrupted fix leaves a journal
//!   from which `quarry restore` recovers.
//! - `manifest.json` — the same facts, one entry per file, for people.
//! - `files/NNN` — quarantined files, mode 0400 (never executable).
//! - `originals/NNN` — edited files as they were.
//! - `evidence/PID/` — executable, command line, environment, maps, status.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::collect::modules::sha256_hex;

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
}

impl SavedMeta {
    pub fn of(path: &Path) -> io::Result<SavedMeta> {
        let m = fs::symlink_metadata(path)?;
        let (immutable, append_only) = get_attrs(path).unwrap_or((false, false));
        Ok(SavedMeta {
            size: m.size(),
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            atime: (m.atime(), m.atime_nsec()),
            mtime: (m.mtime(), m.mtime_nsec()),
            immutable,
            append_only,
        })
    }

    /// Applies owner, mode and times (not attributes: see [`set_attrs`]).
    pub fn apply(&self, path: &Path) -> io::Result<()> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))?;
        fs::set_permissions(path, fs::Permissions::from_mode(self.mode))?;
        let t = |(s, n): (i64, i64)| {
            UNIX_EPOCH + std::time::Duration::new(s.max(0) as u64, n.clamp(0, 999_999_999) as u32)
        };
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_times(
            fs::FileTimes::new()
                .set_accessed(t(self.atime))
                .set_modified(t(self.mtime)),
        )?;
        Ok(())
    }
}

/// Reads the immutable and append-only attributes (see [`inode_attrs`]).
pub use crate::host::inode_attrs as get_attrs;

/// Sets or clears the immutable and append-only attributes.
pub fn set_attrs(path: &Path, immutable: bool, append_only: bool) -> io::Result<()> {
    use rustix::fs::IFlags;
    let f = File::open(path)?;
    let mut fl = rustix::fs::ioctl_getflags(&f)?;
    fl.set(IFlags::IMMUTABLE, immutable);
    fl.set(IFlags::APPEND, append_only);
    rustix::fs::ioctl_setflags(&f, fl)?;
    Ok(())
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
    /// Attributes cleared on a file so it can be moved or edited.
    ClearAttrs {
        path: String,
        immutable: bool,
        append_only: bool,
    },
    Quarantine {
        original: String,
        stored: String,
        sha256: String,
        meta: SavedMeta,
    },
    Edit {
        path: String,
        original_copy: String,
        original_sha256: String,
        edited_sha256: String,
        meta: SavedMeta,
        /// (1-based line number, content) of each removed line.
        removed: Vec<(usize, String)>,
    },
    RemoveLink {
        link: String,
        target: String,
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
    pub dir: PathBuf,
    pub id: String,
    journal: File,
    seq: u64,
    counter: u32,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Case {
    /// Creates a new case folder under `root`.
    pub fn create(root: &Path) -> io::Result<Case> {
        fs::create_dir_all(root)?;
        let stamp = humantime::format_rfc3339_seconds(SystemTime::now())
            .to_string()
            .replace([':', '-'], "")
            .replace('T', "-")
            .trim_end_matches('Z')
            .to_string();
        let id = format!("{stamp}-{}", std::process::id());
        let dir = root.join(&id);
        fs::create_dir(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        for sub in ["files", "originals", "evidence"] {
            fs::create_dir(dir.join(sub))?;
        }
        let journal = OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(0o600)
            .open(dir.join("journal.jsonl"))?;
        fsync_dir(root)?;
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
        fsync_dir(&self.dir)
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

    /// Writes a file inside the case (mode 0400).
    pub fn write_file(&self, rel: &str, data: &[u8]) -> io::Result<()> {
        let p = self.dir.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut f = OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o400)
            .open(&p)?;
        f.write_all(data)?;
        f.sync_all()
    }
}

/// Reads a case's journal.
pub fn read_journal(dir: &Path) -> io::Result<Vec<Record>> {
    let text = fs::read_to_string(dir.join("journal.jsonl"))?;
    // A crash can leave a torn last line: ignore what does not parse.
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// Moves a file into the case: rename if on the same filesystem, otherwise
/// copy, fsync and remove. Returns the SHA-256 of the content.
pub fn move_into(src: &Path, dst: &Path) -> io::Result<String> {
    let data = fs::read(src)?;
    let sha = sha256_hex(&data);
    match fs::rename(src, dst) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let mut f = OpenOptions::new()
                .create_new(true)
                .write(true)
                .mode(0o400)
                .open(dst)?;
            f.write_all(&data)?;
            f.sync_all()?;
            fs::remove_file(src)?;
        }
        Err(e) => return Err(e),
    }
    fs::set_permissions(dst, fs::Permissions::from_mode(0o400))?;
    File::open(dst)?.sync_all()?;
    if let Some(parent) = dst.parent() {
        fsync_dir(parent)?;
    }
    if let Some(parent) = src.parent() {
        let _ = fsync_dir(parent);
    }
    Ok(sha)
}

/// Replaces a file's content atomically (temp file + rename), keeping owner
/// and mode.
pub fn replace_content(path: &Path, data: &[u8], meta: &SavedMeta) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.quarry-tmp-{}", std::process::id()));
    {
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::os::unix::fs::chown(&tmp, Some(meta.uid), Some(meta.gid))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(meta.mode))?;
    fs::rename(&tmp, path)?;
    fsync_dir(dir)
}

/// Case folders under `root`, newest last.
pub fn list(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(root)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.join("journal.jsonl").exists())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
