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

use rustix::fd::AsFd;
use rustix::fs::{FileType, Mode, OFlags, RawDir};

pub mod mount;
pub mod proc_root;
pub mod procmem;
pub mod resolve;

pub use resolve::{Classifier, Found, Refused};

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
    /// The live machine seen through a root other than `/` (a container with
    /// the host's root mounted at `/host` and the host's PID namespace): see
    /// [`Host::open`].
    live: bool,
    /// When set, `/proc/...` paths resolve under this directory instead of
    /// `ROOT/proc` (used for a private, freshly mounted procfs).
    proc_dir: Option<PathBuf>,
    /// Who serves each file system (built on first use, shared by clones).
    classes: std::sync::Arc<std::sync::OnceLock<Classifier>>,
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
            live: false,
            proc_dir: None,
            classes: Default::default(),
        }
    }

    /// A host whose `/proc` is `proc_dir` (everything else as `self`).
    pub fn with_proc_dir(&self, proc_dir: PathBuf) -> Host {
        Host {
            root: self.root.clone(),
            live: self.live,
            proc_dir: Some(proc_dir),
            classes: self.classes.clone(),
        }
    }

    /// The root directory every path is resolved against.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// True when this is the running machine (root `/`): only then do system-call
    /// probes (`kill(pid, 0)`, pidfds, ...) describe the same machine as the files.
    pub fn is_live(&self) -> bool {
        self.live || self.root == Path::new("/")
    }

    /// The machine under `root`, as the command line's `--root` names it.
    ///
    /// When `ROOT/proc` is a procfs of Quarry's own PID namespace (a
    /// Kubernetes pod with `hostPID: true` and the host's root mounted at
    /// `/host`), the host is live: processes are read through that procfs,
    /// system-call probes and memory reads describe the same machine, and
    /// files are read under `root`. Otherwise `root` is an offline tree (a
    /// fixture or a mounted disk) and only its files are judged.
    pub fn open(root: impl Into<PathBuf>) -> Host {
        let root: PathBuf = root.into();
        if root == Path::new("/") {
            return Host::new(root);
        }
        let ns = |p: PathBuf| std::fs::read_link(p).ok();
        let mine = ns(PathBuf::from("/proc/self/ns/pid"));
        let theirs = ns(root.join("proc/self/ns/pid"));
        if mine.is_some() && mine == theirs {
            let proc_dir = root.join("proc");
            Host {
                root,
                live: true,
                proc_dir: Some(proc_dir),
                classes: Default::default(),
            }
        } else {
            Host::new(root)
        }
    }

    /// True when `/proc` is a private procfs (see [`FreshProc`]).
    pub fn is_fresh_proc(&self) -> bool {
        self.proc_dir.is_some() && !self.live
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

    /// Who serves each file system of this machine: the live kernel's mount
    /// tables (an offline root is a tree mounted on the live machine, so its
    /// files are judged by the same tables).
    pub fn classes(&self) -> &Classifier {
        self.classes
            .get_or_init(|| Classifier::new(&Host::new("/").with_live_proc(self)))
    }

    /// A host for reading mount tables: the live `/proc` this host reads
    /// processes through.
    fn with_live_proc(mut self, of: &Host) -> Host {
        if of.live {
            self.proc_dir = of.proc_dir.clone();
        }
        self
    }

    /// Finds what `path` names (an absolute path on the inspected machine)
    /// without ever waiting on a file system somebody serves: kernel files
    /// under `/proc` and `/sys` directly (a process's `exe`, `fd/N`, `cwd`
    /// and `root` links are followed and what they lead to is checked; no
    /// path may go on below `cwd`, `root` or `fd/N`: that is resolved in the
    /// process's own root, see [`proc_root`]), everything else one component
    /// at a time inside the root ([`resolve::open_in`]). `follow`: whether
    /// a final symbolic link is followed.
    pub fn find(&self, path: impl AsRef<Path>, follow: bool) -> Result<Found, Refused> {
        let path = path.as_ref();
        let bytes = path.as_os_str().as_bytes();
        if is_kernel_path(bytes) {
            let magic = magic_link(bytes);
            if magic == Magic::Below {
                return Err(Refused::Io(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{}: a path below a process's cwd, root or open file is resolved in the process's own root",
                        crate::escape::escape(bytes)
                    ),
                )));
            }
            let nofollow = if follow {
                OFlags::empty()
            } else {
                OFlags::NOFOLLOW
            };
            let fd = rustix::fs::open(
                self.path(path),
                OFlags::PATH | OFlags::CLOEXEC | nofollow,
                Mode::empty(),
            )
            .map_err(|e| io_err(e, bytes))?;
            let stat = resolve::statx_cached(&fd)?;
            if magic == Magic::Last {
                self.classes().check_stat(&stat, bytes)?;
            }
            return Ok(Found {
                fd,
                stat,
                real: bytes.to_vec(),
            });
        }
        let root = rustix::fs::open(
            &self.root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err(e, self.root.as_os_str().as_bytes()))?;
        resolve::open_in(root.as_fd(), bytes, follow, self.classes()).map_err(|r| match r {
            Refused::Io(e) => Refused::Io(io::Error::new(
                e.kind(),
                format!("{}: {e}", crate::escape::escape(bytes)),
            )),
            other => other,
        })
    }

    /// Opens a file for reading through [`Host::find`] (following links):
    /// a regular file only, never blocking.
    pub fn open_file(&self, path: impl AsRef<Path>) -> io::Result<rustix::fd::OwnedFd> {
        let path = path.as_ref();
        let bytes = path.as_os_str().as_bytes();
        if is_kernel_path(bytes) && magic_link(bytes) == Magic::No {
            return open_regular(&self.path(path), OFlags::empty());
        }
        self.find(path, true)?.open_read()
    }

    /// Reads a whole file (at most [`MAX_READ`] bytes), never blocking and
    /// never waiting on a file system somebody serves: see [`Host::find`].
    pub fn read(&self, path: impl AsRef<Path>) -> io::Result<Vec<u8>> {
        self.read_prefix(path, MAX_READ)
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

    /// Reads at most `limit` bytes of a file (for files that may be huge),
    /// never blocking: see [`read_regular`].
    pub fn read_prefix(&self, path: impl AsRef<Path>, limit: usize) -> io::Result<Vec<u8>> {
        let path = path.as_ref();
        let bytes = path.as_os_str().as_bytes();
        if is_kernel_path(bytes) && magic_link(bytes) == Magic::No {
            if self.is_live() {
                if let Some((dir, which)) = procmem::strings_of(bytes) {
                    procmem::check(self, dir, which)?;
                }
            }
            return read_regular(&self.path(path), limit);
        }
        let fd = self.open_file(path)?;
        read_fd(&fd, limit).map_err(|e| io_err_io(e, bytes))
    }

    /// Reads at most `limit` bytes of a file whose directories the caller
    /// already checked are local (the module walk lists them first): the
    /// final object is found `O_PATH` without following a link, its file
    /// system checked, then read.
    pub fn read_prefix_direct(&self, path: &[u8], limit: usize) -> io::Result<Vec<u8>> {
        let f = self.find_direct(path, false)?;
        let fd = f.open_read()?;
        read_fd(&fd, limit)
    }

    /// Finds a path whose directories the caller already checked (see
    /// [`Host::read_prefix_direct`]): one `O_PATH` open and a cached
    /// `statx`, and the final object's file system checked.
    pub fn find_direct(&self, path: &[u8], follow: bool) -> Result<Found, Refused> {
        let p = self.path(bytes_to_path(path));
        let flags = OFlags::PATH
            | OFlags::CLOEXEC
            | if follow {
                OFlags::empty()
            } else {
                OFlags::NOFOLLOW
            };
        let fd = rustix::fs::open(&p, flags, Mode::empty()).map_err(|e| io_err(e, path))?;
        let stat = resolve::statx_cached(&fd)?;
        self.classes().check_stat(&stat, path)?;
        Ok(Found {
            fd,
            stat,
            real: path.to_vec(),
        })
    }

    /// Lists a directory whose parents the caller already checked (the module
    /// walk): found `O_PATH`, its file system checked, then listed.
    pub fn list_dir_direct(&self, path: &[u8]) -> Result<Vec<DirEntry>, Refused> {
        let f = self.find_direct(path, true)?;
        if f.file_type() != FileType::Directory {
            return Err(Refused::Io(io::Error::from(rustix::io::Errno::NOTDIR)));
        }
        Ok(list_fd(&reopen_dir(&f.fd)?)?)
    }

    /// Reads the last `limit` bytes of a regular file (a log can be gigabytes
    /// after a brute-force storm; its newest records are at the end). The
    /// flag says whether the start was cut.
    pub fn read_tail(&self, path: impl AsRef<Path>, limit: usize) -> io::Result<(Vec<u8>, bool)> {
        let fd = self.open_file(path)?;
        let size = rustix::fs::fstat(&fd)?.st_size.max(0) as u64;
        let start = size.saturating_sub(limit as u64);
        let mut buf = vec![0u8; (size - start) as usize];
        let n = pread_all(&fd, &mut buf, start);
        buf.truncate(n);
        Ok((buf, start > 0))
    }

    /// Reads a kernel-generated list with [`read_kernel_file`] (fixed-size
    /// `pread`s past short reads), as text. The flag says whether a read past
    /// an early end of file found more.
    pub fn read_kernel_text(&self, path: impl AsRef<Path>) -> io::Result<(String, bool)> {
        let (bytes, resumed) = read_kernel_file(&self.path(path), MAX_READ)?;
        Ok((
            match String::from_utf8(bytes) {
                Ok(s) => s,
                Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
            },
            resumed,
        ))
    }

    /// True when Quarry runs in a child PID namespace, or reads the procfs
    /// of one: the initial namespace's `/proc/…/ns/pid` has the fixed inode
    /// [`PROC_PID_INIT_INO`], and both Quarry's own and that of PID 1 of the
    /// procfs read are compared with it. `NSpid` (proc(5)) is not enough: a
    /// procfs mounted in the child namespace shows one level only (as
    /// `unshare --pid --fork --mount-proc` and `docker run` mount it), and
    /// every scan there cried "kernel rootkit" at the host's CPU (issue 22).
    /// `NSpid` is the answer only where the namespace files are unreadable.
    pub fn in_child_pid_namespace(&self) -> bool {
        let inos: Vec<u64> = ["/proc/self/ns/pid", "/proc/1/ns/pid"]
            .iter()
            .filter_map(|p| rustix::fs::stat(self.path(p)).ok())
            .map(|st| st.st_ino)
            .collect();
        if !inos.is_empty() {
            return inos.iter().any(|i| *i != PROC_PID_INIT_INO);
        }
        self.read_text("/proc/self/status").is_ok_and(|t| {
            crate::collect::process::status_field(&t, "NSpid")
                .is_some_and(|v| v.split_whitespace().count() > 1)
        })
    }

    /// Device, inode and size of what a path names (following links); `None`
    /// unless it is a regular file.
    pub fn ident(&self, path: &[u8]) -> Option<(u64, u64, u64)> {
        let f = self.find(bytes_to_path(path), true).ok()?;
        (f.file_type() == FileType::RegularFile).then_some((
            rustix::fs::makedev(f.stat.stx_dev_major, f.stat.stx_dev_minor),
            f.stat.stx_ino,
            f.stat.stx_size,
        ))
    }

    /// SHA-256 of a regular file (following links), up to [`MAX_HASHED`].
    pub fn sha256_of(&self, path: &[u8]) -> Option<String> {
        let data = self.read_prefix(bytes_to_path(path), MAX_HASHED).ok()?;
        Some(crate::collect::modules::sha256_hex(&data))
    }

    /// The identity of a regular file as the scan judged it (device, inode,
    /// size, mtime, SHA-256 of the content), with the path it really is (every
    /// symbolic link resolved). `quarry fix` acts on a file only if the object
    /// it opens still has this identity. `None` if the path is not a regular
    /// file (or the host is not the live machine, where fix cannot act).
    pub fn file_id(&self, path: &[u8]) -> Option<FileId> {
        if !self.is_live() {
            return None;
        }
        let found = self.find(bytes_to_path(path), true).ok()?;
        let real = found.real.clone();
        let fd = found.open_read().ok()?;
        let st = rustix::fs::fstat(&fd).ok()?;
        let data = read_fd(&fd, MAX_HASHED).ok()?;
        if data.len() as i64 != st.st_size {
            return None; // larger than we hash, or changing under us
        }
        Some(FileId {
            path: BytePath(real),
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size as u64,
            mtime: (st.st_mtime, st.st_mtime_nsec as i64),
            sha256: crate::collect::modules::sha256_hex(&data),
        })
    }

    /// The raw target of a symbolic link (for `/proc/PID/exe`, `cwd`, `fd/N`).
    pub fn read_link(&self, path: impl AsRef<Path>) -> io::Result<Vec<u8>> {
        let path = path.as_ref();
        let bytes = path.as_os_str().as_bytes();
        if is_kernel_path(bytes) && magic_link(bytes) != Magic::Below {
            // A process's links are the kernel's names (d_path): reading
            // them asks no file system.
            return Ok(std::fs::read_link(self.path(path))
                .map_err(|e| io_err_io(e, bytes))?
                .into_os_string()
                .into_vec_bytes());
        }
        let f = self.find(path, false)?;
        Ok(rustix::fs::readlinkat(&f.fd, "", Vec::new())
            .map_err(|e| io_err(e, bytes))?
            .into_bytes())
    }

    /// `stat` of a path (following links), found through [`Host::find`].
    pub fn stat(&self, path: impl AsRef<Path>) -> io::Result<rustix::fs::Stat> {
        let f = self.find(path, true)?;
        Ok(rustix::fs::fstat(&f.fd)?)
    }

    /// `lstat` of a path (not following links), found through [`Host::find`].
    pub fn lstat(&self, path: impl AsRef<Path>) -> io::Result<rustix::fs::Stat> {
        let f = self.find(path, false)?;
        Ok(rustix::fs::fstat(&f.fd)?)
    }

    /// `statx` (`follow`) of a path given as bytes, from the kernel's cached
    /// attributes only (`AT_STATX_DONT_SYNC`: no request to a FUSE or NFS
    /// server), built in `scratch` with its NUL: no allocation once
    /// `scratch` has grown. The module walk stats some 40,000 paths per
    /// scan; building a `PathBuf` twice for each showed in its profile.
    /// Safe from a served file system only when every directory on the way
    /// is known to be local: the walk checks each before it lists it.
    pub fn stat_bytes(
        &self,
        path: &[u8],
        follow: bool,
        scratch: &mut Vec<u8>,
    ) -> io::Result<rustix::fs::Statx> {
        let flags = |follow: bool| {
            rustix::fs::AtFlags::STATX_DONT_SYNC
                | if follow {
                    rustix::fs::AtFlags::empty()
                } else {
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW
                }
        };
        let mask = rustix::fs::StatxFlags::BASIC_STATS;
        if self.proc_dir.is_some() && (path == b"/proc" || path.starts_with(b"/proc/")) {
            let p = self.path(bytes_to_path(path));
            return Ok(rustix::fs::statx(rustix::fs::CWD, p, flags(follow), mask)?);
        }
        let root = self.root.as_os_str().as_bytes();
        let rel = path.strip_prefix(b"/").unwrap_or(path);
        scratch.clear();
        scratch.extend_from_slice(root);
        if !rel.is_empty() {
            if !scratch.ends_with(b"/") {
                scratch.push(b'/');
            }
            scratch.extend_from_slice(rel);
        }
        scratch.push(0);
        let c = std::ffi::CStr::from_bytes_with_nul(scratch)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in a path"))?;
        Ok(rustix::fs::statx(rustix::fs::CWD, c, flags(follow), mask)?)
    }

    /// True if the path exists (without following a final link).
    pub fn exists(&self, path: impl AsRef<Path>) -> bool {
        self.lstat(path).is_ok()
    }

    /// Lists a directory with raw `getdents64`, found through [`Host::find`].
    pub fn list_dir(&self, path: impl AsRef<Path>) -> io::Result<Vec<DirEntry>> {
        let path = path.as_ref();
        let bytes = path.as_os_str().as_bytes();
        if is_kernel_path(bytes) && magic_link(bytes) == Magic::No {
            return list_dir_raw(&self.path(path));
        }
        let f = self.find(path, true)?;
        if f.file_type() != FileType::Directory {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{}: not a directory", crate::escape::escape(bytes)),
            ));
        }
        list_fd(&reopen_dir(&f.fd)?)
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

impl Host {
    /// Opens `/proc/PID/mem` for reading another process's memory (live host
    /// only: needs ptrace access, PTRACE_MODE_ATTACH_FSCREDS, proc(5)).
    pub fn open_mem(&self, pid: i32) -> io::Result<rustix::fd::OwnedFd> {
        if !self.is_live() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "process memory is readable only on the live machine",
            ));
        }
        let path = self.path(format!("/proc/{pid}/mem"));
        rustix::fs::open(&path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("{}: {e}", path.display()),
            )
        })
    }
}

/// Fills `buf` from `fd` at `offset` with `pread`, continuing past short reads;
/// stops at the first error (an unmapped or unreadable page of process memory
/// answers EIO) or end of file. Returns the bytes read.
pub fn pread_all(fd: impl rustix::fd::AsFd, buf: &mut [u8], offset: u64) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match rustix::io::pread(&fd, &mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => break,
        }
    }
    got
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
    _mount: PrivateMount,
    host: Host,
}

impl FreshProc {
    /// Mounts a private procfs for reading through `host` (live host only).
    pub fn open(host: &Host) -> io::Result<FreshProc> {
        if !host.is_live() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "not the live host",
            ));
        }
        let mount = PrivateMount::open("proc")?;
        let dir = mount.dir();
        Ok(FreshProc {
            host: host.with_proc_dir(dir),
            _mount: mount,
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

/// A private instance of a kernel filesystem (`tracefs`, `debugfs`), mounted
/// nowhere: like [`FreshProc`], a detached mount that exists only as Quarry's
/// file descriptor. Used where the machine has none mounted (many servers
/// mount neither), so that the kernel's own records of hooks can be read
/// without changing the machine.
pub struct PrivateMount {
    fd: rustix::fd::OwnedFd,
    fs_type: &'static str,
}

impl PrivateMount {
    /// Mounts a read-only, detached instance of `fs_type` (root, Linux ≥ 5.2).
    pub fn open(fs_type: &'static str) -> io::Result<PrivateMount> {
        use rustix::mount::{
            fsconfig_create, fsmount, fsopen, FsMountFlags, FsOpenFlags, MountAttrFlags,
        };
        let ctx = |e: rustix::io::Errno| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("a private {fs_type} mount (fsopen): {e}"),
            )
        };
        let fs = fsopen(fs_type, FsOpenFlags::FSOPEN_CLOEXEC).map_err(ctx)?;
        fsconfig_create(&fs).map_err(ctx)?;
        let fd = fsmount(
            &fs,
            FsMountFlags::FSMOUNT_CLOEXEC,
            MountAttrFlags::MOUNT_ATTR_RDONLY
                | MountAttrFlags::MOUNT_ATTR_NOEXEC
                | MountAttrFlags::MOUNT_ATTR_NOSUID
                | MountAttrFlags::MOUNT_ATTR_NODEV,
        )
        .map_err(ctx)?;
        Ok(PrivateMount { fd, fs_type })
    }

    /// The mount's root directory (`/proc/self/fd/N`).
    pub fn dir(&self) -> PathBuf {
        use rustix::fd::AsRawFd;
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// The path of `rel` inside the mount (through `/proc/self/fd/N`).
    pub fn path(&self, rel: &str) -> PathBuf {
        use rustix::fd::AsRawFd;
        PathBuf::from(format!(
            "/proc/self/fd/{}/{}",
            self.fd.as_raw_fd(),
            rel.trim_start_matches('/')
        ))
    }

    /// How evidence names a file read through it.
    pub fn describe(&self, rel: &str) -> String {
        format!("{} (a private {} mount)", rel, self.fs_type)
    }
}

impl std::fmt::Debug for PrivateMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateMount({})", self.fs_type)
    }
}

/// Chunk size of [`read_kernel_file`]: fixed, so that a hook that recognises
/// readers by their buffer size sees nothing unusual (busybox and coreutils
/// read 4 KiB to 128 KiB).
/// The inode number of the initial PID namespace's `ns/pid` file
/// (`PROC_PID_INIT_INO` in include/linux/proc_ns.h, fixed since Linux 3.8).
pub const PROC_PID_INIT_INO: u64 = 0xEFFF_FFFC;

pub const KERNEL_READ_CHUNK: usize = 16 * 1024;

/// Reads a kernel-generated file (`/proc/vmallocinfo`, `/proc/kallsyms`,
/// tracefs lists) with `pread` at explicit offsets in fixed-size chunks,
/// continuing past short reads. An early end of file is tested once more
/// with a one-page read at the same offset: a filter that ends a read where
/// its own line would start is then read past. Returns the bytes and whether
/// such a second read found more (evidence of a filter).
pub fn read_kernel_file(path: &Path, limit: usize) -> io::Result<(Vec<u8>, bool)> {
    let fd = open_regular(path, OFlags::empty())
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; KERNEL_READ_CHUNK];
    let mut resumed = false;
    let mut eagain = 0;
    while out.len() < limit {
        let want = KERNEL_READ_CHUNK.min(limit - out.len());
        match rustix::io::pread(&fd, &mut buf[..want], out.len() as u64) {
            Ok(0) => {
                // One more, smaller read at the same offset.
                match rustix::io::pread(&fd, &mut buf[..4096.min(want)], out.len() as u64) {
                    Ok(n) if n > 0 => {
                        resumed = true;
                        out.extend_from_slice(&buf[..n]);
                    }
                    _ => break,
                }
            }
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) if eagain < 3 => eagain += 1,
            Err(e) => {
                return Err(io::Error::new(
                    io::Error::from(e).kind(),
                    format!("{}: {e}", path.display()),
                ))
            }
        }
    }
    Ok((out, resumed))
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
    list_fd(&fd)
}

/// Opens an `O_PATH` directory descriptor for listing.
fn reopen_dir(fd: &rustix::fd::OwnedFd) -> io::Result<rustix::fd::OwnedFd> {
    use rustix::fd::AsRawFd;
    Ok(rustix::fs::open(
        format!("/proc/self/fd/{}", fd.as_raw_fd()),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Lists an open directory with the `getdents64` system call.
pub fn list_fd(fd: &rustix::fd::OwnedFd) -> io::Result<Vec<DirEntry>> {
    // 32 KiB holds ~1,000 /proc entries per system call.
    let mut buf = vec![MaybeUninit::<u8>::uninit(); 32 * 1024];
    let mut dir = RawDir::new(fd, &mut buf);
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

/// Largest file [`Host::read`] returns whole: every file Quarry reads whole is
/// a kernel interface or a small configuration file; a bigger one is cut here
/// rather than filling memory.
pub const MAX_READ: usize = 64 * 1024 * 1024;

/// Largest file whose SHA-256 pins its identity for `quarry fix` (miners,
/// libraries, scripts and modules are far smaller).
pub const MAX_HASHED: usize = 256 * 1024 * 1024;

/// Opens a file for reading without ever blocking or taking a terminal:
/// `O_NONBLOCK` (a FIFO planted where a start-up file should be opens at once
/// instead of waiting for a writer), `O_NOCTTY`, and then `fstat` must show a
/// regular file (a FIFO, socket or device is refused with `EINVAL`). `extra`
/// adds flags such as `O_NOFOLLOW`.
///
/// Reads made by the scan follow a final symbolic link (a start-up file that is
/// a link is judged by what it points to); every action of `quarry fix` opens
/// with `O_NOFOLLOW` through `respond::safe_fs` instead.
pub fn open_regular(path: &Path, extra: OFlags) -> io::Result<rustix::fd::OwnedFd> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC | extra,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{}: not a regular file (a FIFO, socket or device is never read)",
                path.display()
            ),
        ));
    }
    Ok(fd)
}

/// Reads at most `limit` bytes of a regular file (see [`open_regular`]).
pub fn read_regular(path: &Path, limit: usize) -> io::Result<Vec<u8>> {
    let fd = open_regular(path, OFlags::empty())?;
    read_fd(&fd, limit)
}

/// Reads at most `limit` bytes from a file descriptor. Continues past short
/// reads (a kernel file may return less than asked before its end) until a
/// read returns 0 or the limit is reached.
pub fn read_fd(fd: impl rustix::fd::AsFd, limit: usize) -> io::Result<Vec<u8>> {
    // The result grows as needed and is trimmed: hundreds of small files
    // (start-up files, unit files) must not each keep a 64 KiB allocation.
    let mut out = Vec::new();
    let mut buf = vec![0u8; limit.clamp(1, 64 * 1024)];
    while out.len() < limit {
        let want = buf.len().min(limit - out.len());
        match rustix::io::read(&fd, &mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => break,
            Err(e) => return Err(e.into()),
        }
    }
    out.shrink_to_fit();
    Ok(out)
}

/// A path kept as the kernel's bytes, from the kernel to the action. In JSON it
/// is a string when it is valid UTF-8, and an array of bytes otherwise, so a
/// journal read back names exactly the same file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BytePath(pub Vec<u8>);

impl BytePath {
    pub fn new(b: impl Into<Vec<u8>>) -> BytePath {
        BytePath(b.into())
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    pub fn to_path(&self) -> PathBuf {
        bytes_to_path(&self.0)
    }
    /// Escaped for display (see [`crate::escape`]).
    pub fn display(&self) -> String {
        crate::escape::escape(&self.0)
    }
}

impl serde::Serialize for BytePath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(t) => s.serialize_str(t),
            Err(_) => self.0.serialize(s),
        }
    }
}

impl<'de> serde::Deserialize<'de> for BytePath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Text(String),
            Bytes(Vec<u8>),
        }
        Ok(BytePath(match Repr::deserialize(d)? {
            Repr::Text(t) => t.into_bytes(),
            Repr::Bytes(b) => b,
        }))
    }
}

/// What the scan saw of a file it asks `quarry fix` to act on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct FileId {
    /// The file's real path, every symbolic link resolved.
    pub path: BytePath,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    /// Seconds and nanoseconds since the epoch.
    pub mtime: (i64, i64),
    pub sha256: String,
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
    fn magic_links_of_processes() {
        assert_eq!(magic_link(b"/proc/12/exe"), Magic::Last);
        assert_eq!(magic_link(b"/proc/self/fd/3"), Magic::Last);
        assert_eq!(magic_link(b"/proc/12/task/13/cwd"), Magic::Last);
        assert_eq!(magic_link(b"/proc/12/cwd/config.json"), Magic::Below);
        assert_eq!(magic_link(b"/proc/12/root/etc/passwd"), Magic::Below);
        assert_eq!(magic_link(b"/proc/12/fd/3/x"), Magic::Below);
        assert_eq!(magic_link(b"/proc/12/stat"), Magic::No);
        assert_eq!(magic_link(b"/proc/self/fd/7/12/stat"), Magic::Below);
        assert_eq!(magic_link(b"/proc/stat"), Magic::No);
        assert_eq!(magic_link(b"/etc/passwd"), Magic::No);
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
    /// Last content change and last inode change (seconds since the epoch),
    /// for the case's timeline. Both can be forged by their owner (`touch`,
    /// or a changed clock); the timeline says which it quotes.
    #[serde(skip)]
    pub mtime: Option<i64>,
    #[serde(skip)]
    pub ctime: Option<i64>,
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
        let Ok(found) = self.find(path, true) else {
            return FileMeta::default();
        };
        let Ok(st) = rustix::fs::fstat(&found.fd) else {
            return FileMeta::default();
        };
        let mut m = FileMeta {
            exists: true,
            uid: Some(st.st_uid),
            mode: Some(format!("{:o}", st.st_mode & 0o7777)),
            size: Some(st.st_size as u64),
            mtime: Some(st.st_mtime),
            ctime: Some(st.st_ctime),
            ..FileMeta::default()
        };
        let is_reg = FileType::from_raw_mode(st.st_mode) == FileType::RegularFile;
        let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
        if is_reg || is_dir {
            if let Ok((immutable, append_only)) = reopen_attrs(&found.fd) {
                m.immutable = immutable;
                m.append_only = append_only;
            }
        }
        m
    }
}

/// The immutable and append-only attributes of what an `O_PATH` descriptor
/// names (a regular file or directory on a checked file system).
fn reopen_attrs(fd: &rustix::fd::OwnedFd) -> io::Result<(bool, bool)> {
    use rustix::fd::AsRawFd;
    inode_attrs(Path::new(&format!("/proc/self/fd/{}", fd.as_raw_fd())))
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

/// True for paths of the kernel's own file systems (procfs, sysfs), read
/// directly: nothing there is served by a user or another machine.
fn is_kernel_path(path: &[u8]) -> bool {
    path == b"/proc" || path == b"/sys" || path.starts_with(b"/proc/") || path.starts_with(b"/sys/")
}

/// Where a `/proc` path meets a process's magic links.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Magic {
    /// It does not.
    No,
    /// It ends in one (`/proc/PID/exe`, `cwd`, `root`, `fd/N`,
    /// `map_files/X`): what it leads to is checked.
    Last,
    /// It goes on below `cwd`, `root` or `fd/N`: refused.
    Below,
}

fn magic_link(path: &[u8]) -> Magic {
    let Some(rest) = path.strip_prefix(b"/proc/") else {
        return Magic::No;
    };
    let comps: Vec<&[u8]> = rest
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty())
        .collect();
    let is_pid = |c: &[u8]| c == b"self" || c == b"thread-self" || parse_pid(c).is_some();
    if !comps.first().is_some_and(|c| is_pid(c)) {
        return Magic::No;
    }
    let mut i = 1;
    if comps.get(i) == Some(&&b"task"[..])
        && comps.get(i + 1).is_some_and(|c| parse_pid(c).is_some())
    {
        i += 2;
    }
    let tail = &comps[i.min(comps.len())..];
    match tail {
        [b"exe"] | [b"cwd"] | [b"root"] => Magic::Last,
        [b"fd" | b"map_files", _] => Magic::Last,
        [b"cwd" | b"root", _, ..] | [b"fd" | b"map_files", _, _, ..] => Magic::Below,
        _ => Magic::No,
    }
}

/// An I/O error naming its (escaped) path.
pub(crate) fn io_err(e: rustix::io::Errno, path: &[u8]) -> io::Error {
    io::Error::new(
        io::Error::from(e).kind(),
        format!("{}: {e}", crate::escape::escape(path)),
    )
}

fn io_err_io(e: io::Error, path: &[u8]) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", crate::escape::escape(path)))
}
