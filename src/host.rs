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
    /// When set, `/proc/...` paths resolve under this directory instead of
    /// `ROOT/proc` (used for a private, freshly mounted procfs).
    proc_dir: Option<PathBuf>,
}

impl Default for Host {
    fn default() -> Self {
        Host::new("/")
    }
}

impl Host {
    /// A host rooted at `root` (`/` for the running machine).
    pub fn new(root: impl Into<PathBuf>) -> Host {
        Host {
            root: root.into(),
            proc_dir: None,
        }
    }

    /// A host whose `/proc` is `proc_dir` (everything else as `self`).
    pub fn with_proc_dir(&self, proc_dir: PathBuf) -> Host {
        Host {
            root: self.root.clone(),
            proc_dir: Some(proc_dir),
        }
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

    /// True when `/proc` is a private procfs (see [`FreshProc`]).
    pub fn is_fresh_proc(&self) -> bool {
        self.proc_dir.is_some()
    }

    /// The real path of `path`, an absolute path on the inspected machine.
    pub fn path(&self, path: impl AsRef<Path>) -> PathBuf {
        let path = path.as_ref();
        if let Some(dir) = &self.proc_dir {
            if let Ok(rest) = path.strip_prefix("/proc") {
                return dir.join(rest);
            }
        }
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

/// A private procfs instance, mounted nowhere.
///
/// Created with the new mount API (`fsopen("proc")` → `fsmount`), it is a
/// detached mount that exists only as a file descriptor of Quarry's: no
/// directory is created, no mount namespace is touched, nothing is left behind
/// when Quarry exits. Being a new procfs instance, it carries none of the bind
/// mounts an attacker put over `/proc/PID` in the host's `/proc`. Reads go
/// through `/proc/self/fd/N/...`. Needs root (CAP_SYS_ADMIN) and Linux ≥ 5.2.
pub struct FreshProc {
    _fd: rustix::fd::OwnedFd,
    host: Host,
}

impl FreshProc {
    /// Mounts a private procfs for reading through `host` (live host only).
    pub fn open(host: &Host) -> io::Result<FreshProc> {
        use rustix::fd::AsRawFd;
        use rustix::mount::{
            fsconfig_create, fsmount, fsopen, FsMountFlags, FsOpenFlags, MountAttrFlags,
        };
        if !host.is_live() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "not the live host",
            ));
        }
        let fs = fsopen("proc", FsOpenFlags::FSOPEN_CLOEXEC)?;
        fsconfig_create(&fs)?;
        let fd = fsmount(
            &fs,
            FsMountFlags::FSMOUNT_CLOEXEC,
            MountAttrFlags::MOUNT_ATTR_RDONLY
                | MountAttrFlags::MOUNT_ATTR_NOEXEC
                | MountAttrFlags::MOUNT_ATTR_NOSUID
                | MountAttrFlags::MOUNT_ATTR_NODEV,
        )?;
        let dir = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        Ok(FreshProc {
            host: host.with_proc_dir(dir),
            _fd: fd,
        })
    }

    /// The host view whose `/proc` is the private procfs.
    pub fn host(&self) -> &Host {
        &self.host
    }
}

impl std::fmt::Debug for FreshProc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FreshProc")
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

/// Ownership, mode and inode attributes of a file, as evidence.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct FileMeta {
    pub exists: bool,
    pub uid: Option<u32>,
    /// Permission bits, octal.
    pub mode: Option<String>,
    pub size: Option<u64>,
    /// `chattr +i`: cannot be changed, deleted or renamed, even by root.
    pub immutable: bool,
    /// `chattr +a`: can only be appended to.
    pub append_only: bool,
}

impl FileMeta {
    /// A short human description: `owner 0, mode 644, 1234 bytes, immutable`.
    pub fn describe(&self) -> String {
        if !self.exists {
            return "does not exist".into();
        }
        let mut parts = Vec::new();
        if let Some(u) = self.uid {
            parts.push(format!("owner uid {u}"));
        }
        if let Some(m) = &self.mode {
            parts.push(format!("mode {m}"));
        }
        if let Some(s) = self.size {
            parts.push(format!("{s} bytes"));
        }
        if self.immutable {
            parts.push("IMMUTABLE (chattr +i)".into());
        }
        if self.append_only {
            parts.push("APPEND-ONLY (chattr +a)".into());
        }
        parts.join(", ")
    }
}

impl Host {
    /// Owner, mode, size and the immutable/append-only attributes (read with
    /// the `FS_IOC_GETFLAGS` ioctl, as `lsattr` does) of a file.
    pub fn file_meta(&self, path: impl AsRef<Path>) -> FileMeta {
        let p = self.path(path);
        let Ok(st) = rustix::fs::stat(&p) else {
            return FileMeta::default();
        };
        let mut m = FileMeta {
            exists: true,
            uid: Some(st.st_uid),
            mode: Some(format!("{:o}", st.st_mode & 0o7777)),
            size: Some(st.st_size as u64),
            ..FileMeta::default()
        };
        let is_reg = FileType::from_raw_mode(st.st_mode) == FileType::RegularFile;
        let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
        if is_reg || is_dir {
            if let Ok((immutable, append_only)) = inode_attrs(&p) {
                m.immutable = immutable;
                m.append_only = append_only;
            }
        }
        m
    }
}

/// The immutable and append-only attributes of a file or directory (the
/// `FS_IOC_GETFLAGS` ioctl, as `lsattr` reads them). Does not follow a final
/// symlink and never blocks on a FIFO.
pub fn inode_attrs(path: &Path) -> io::Result<(bool, bool)> {
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let fd = rustix::fs::open(path, flags, Mode::empty())?;
    let f = rustix::fs::ioctl_getflags(&fd)?;
    Ok((
        f.contains(rustix::fs::IFlags::IMMUTABLE),
        f.contains(rustix::fs::IFlags::APPEND),
    ))
}
