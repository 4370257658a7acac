//! The one place through which Quarry reads the machine.
//!
//! Every read of `/proc`, `/sys`, `/etc` or `/lib` goes through a [`Host`], which
//! knows the root directory (`/` by default, `--root DIR` otherwise). Tests point
//! it at fixture trees; an incident responder can point it at the mounted disk of
//! a compromised machine. Reads return raw bytes: names, command lines and link
//! targets are controlled by whoever started the process, so nothing here assumes
//! UTF-8 (see [`crate::escape`] for how they are printed).
//!
//! Directory listings use the `getdents64` system call directly (through
//! `rustix::fs::RawDir`), never libc's `readdir`: Quarry is linked statically, so
//! an `/etc/ld.so.preload` hider cannot hook it, and using the raw call makes that
//! independence explicit.

use std::ffi::OsStr;
use std::io;
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags, RawDir};

/// One entry of a directory listing, as `getdents64` returned it.
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// The raw file name (never `.` or `..`).
    pub name: Vec<u8>,
    /// The type the kernel reported in `d_type` (may be `Unknown` on some filesystems).
    pub file_type: FileType,
    /// The inode number.
    pub ino: u64,
}

/// The machine being inspected, seen from a root directory.
#[derive(Debug, Clone)]
pub struct Host {
    root: PathBuf,
}

impl Default for Host {
    fn default() -> Self {
        Host::new("/")
    }
}

impl Host {
    /// A host rooted at `root` (`/` for the running machine).
    pub fn new(root: impl Into<PathBuf>) -> Host {
        Host { root: root.into() }
    }

    /// The root directory every path is resolved against.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// True when this is the running machine (root `/`): only then do system-call
    /// probes (`kill(pid, 0)`, pidfds, ...) describe the same machine as the files.
    pub fn is_live(&self) -> bool {
        self.root == Path::new("/")
    }

    /// The real path of `path`, an absolute path on the inspected machine.
    pub fn path(&self, path: impl AsRef<Path>) -> PathBuf {
        let path = path.as_ref();
        let rel = path.strip_prefix("/").unwrap_or(path);
        if rel.as_os_str().is_empty() {
            return self.root.clone();
        }
        self.root.join(rel)
    }

    /// Reads a whole file.
    pub fn read(&self, path: impl AsRef<Path>) -> io::Result<Vec<u8>> {
        std::fs::read(self.path(path))
    }

    /// Reads a whole file as text, replacing invalid UTF-8 (for kernel-written
    /// files such as `/proc/stat`, never for process-controlled strings).
    pub fn read_text(&self, path: impl AsRef<Path>) -> io::Result<String> {
        let bytes = self.read(path)?;
        Ok(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// Reads at most `limit` bytes of a file (for files that may be huge).
    pub fn read_prefix(&self, path: impl AsRef<Path>, limit: usize) -> io::Result<Vec<u8>> {
        use std::io::Read;
        let file = std::fs::File::open(self.path(path))?;
        let mut buf = Vec::with_capacity(limit.min(64 * 1024));
        file.take(limit as u64).read_to_end(&mut buf)?;
        Ok(buf)
    }

    /// The raw target of a symbolic link (for `/proc/PID/exe`, `cwd`, `fd/N`).
    pub fn read_link(&self, path: impl AsRef<Path>) -> io::Result<Vec<u8>> {
        Ok(std::fs::read_link(self.path(path))?
            .into_os_string()
            .into_vec_bytes())
    }

    /// `stat` of a path (following links).
    pub fn stat(&self, path: impl AsRef<Path>) -> io::Result<rustix::fs::Stat> {
        Ok(rustix::fs::stat(self.path(path))?)
    }

    /// `lstat` of a path (not following links).
    pub fn lstat(&self, path: impl AsRef<Path>) -> io::Result<rustix::fs::Stat> {
        Ok(rustix::fs::lstat(self.path(path))?)
    }

    /// True if the path exists (without following a final link).
    pub fn exists(&self, path: impl AsRef<Path>) -> bool {
        self.lstat(path).is_ok()
    }

    /// Lists a directory with raw `getdents64`.
    pub fn list_dir(&self, path: impl AsRef<Path>) -> io::Result<Vec<DirEntry>> {
        list_dir_raw(&self.path(path))
    }

    /// Lists the numeric entries of a directory (PIDs in `/proc`, TIDs in `task/`).
    pub fn list_pids(&self, path: impl AsRef<Path>) -> io::Result<Vec<i32>> {
        let mut pids: Vec<i32> = self
            .list_dir(path)?
            .into_iter()
            .filter_map(|e| parse_pid(&e.name))
            .collect();
        pids.sort_unstable();
        Ok(pids)
    }
}

/// Parses a decimal PID from a directory name; `None` for anything else.
pub fn parse_pid(name: &[u8]) -> Option<i32> {
    if name.is_empty() || name.len() > 10 || !name.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(name)
        .ok()?
        .parse()
        .ok()
        .filter(|p| *p > 0)
}

/// Lists a directory with the `getdents64` system call.
pub fn list_dir_raw(path: &Path) -> io::Result<Vec<DirEntry>> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    // 32 KiB holds ~1,000 /proc entries per system call.
    let mut buf = vec![MaybeUninit::<u8>::uninit(); 32 * 1024];
    let mut dir = RawDir::new(&fd, &mut buf);
    let mut out = Vec::new();
    while let Some(entry) = dir.next() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        out.push(DirEntry {
            name: name.to_vec(),
            file_type: entry.file_type(),
            ino: entry.ino(),
        });
    }
    Ok(out)
}

/// Converts raw bytes into a path.
pub fn bytes_to_path(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(bytes))
}

trait IntoVecBytes {
    fn into_vec_bytes(self) -> Vec<u8>;
}

impl IntoVecBytes for std::ffi::OsString {
    fn into_vec_bytes(self) -> Vec<u8> {
        use std::os::unix::ffi::OsStringExt;
        self.into_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_joined_under_the_root() {
        let h = Host::new("/fixture");
        assert_eq!(
            h.path("/proc/1/stat"),
            PathBuf::from("/fixture/proc/1/stat")
        );
        assert_eq!(h.path("/"), PathBuf::from("/fixture"));
        assert!(!h.is_live());
        assert!(Host::default().is_live());
    }

    #[test]
    fn pid_names() {
        assert_eq!(parse_pid(b"123"), Some(123));
        assert_eq!(parse_pid(b"0"), None);
        assert_eq!(parse_pid(b"self"), None);
        assert_eq!(parse_pid(b"99999999999"), None);
    }

    #[test]
    fn lists_proc_with_getdents() {
        let pids = Host::default().list_pids("/proc").unwrap();
        assert!(pids.contains(&(std::process::id() as i32)));
    }
}
