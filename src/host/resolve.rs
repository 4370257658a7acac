//! Opening a path without ever waiting on a file system somebody serves.
//!
//! A path walk looks up each component in its directory; in a FUSE
//! directory that lookup is a request to the program serving it, which may
//! never answer (see [`super::mount`]). So paths are walked here one
//! component at a time, with `O_PATH | O_NOFOLLOW` (which opens nothing,
//! only finds), and before anything is looked up *in* a directory, or an
//! object is opened for reading, its file system is checked with
//! `statx(AT_STATX_DONT_SYNC)`: attributes from the kernel's cache, "don't
//! synchronize anything with the server" (statx(2); fs/fuse/dir.c
//! `fuse_update_get_attr` and fs/nfs/inode.c `nfs_getattr` honour it). The
//! device it reports is looked up in the mount tables ([`Classifier`]);
//! what a user or another machine serves, or what no mount table lists, is
//! refused with the reason.
//!
//! Symbolic links are followed by hand inside `root` (absolute targets and
//! `..` never leave it: the semantics of `openat2(RESOLVE_IN_ROOT)`), so a
//! process's path means what it means to that process when `root` is its
//! `/proc/PID/root`, and the path actually resolved is known.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Statx, StatxFlags};

use super::mount::{MountTable, Served};

/// Most symbolic links followed in one path (Linux's own limit, MAXSYMLINKS
/// in include/linux/namei.h, is 40).
const MAX_LINKS: usize = 40;

/// Most components walked in one path.
const MAX_COMPONENTS: usize = 256;

/// What the attributes Quarry asks `statx` for.
fn mask() -> StatxFlags {
    StatxFlags::TYPE
        | StatxFlags::MODE
        | StatxFlags::UID
        | StatxFlags::GID
        | StatxFlags::INO
        | StatxFlags::SIZE
        | StatxFlags::MTIME
        | StatxFlags::CTIME
        | StatxFlags::NLINK
        | StatxFlags::MNT_ID
}

/// `statx` of what `fd` is, from the kernel's cached attributes only: no
/// request reaches a FUSE server or an NFS server.
pub fn statx_cached(fd: impl AsFd) -> io::Result<Statx> {
    Ok(rustix::fs::statx(
        fd,
        "",
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW | AtFlags::STATX_DONT_SYNC,
        mask(),
    )?)
}

/// `statx` of a path, not following a final link, from cached attributes.
/// Only safe when every directory on the way is known to be local.
pub fn lstatx_cached(path: &std::ffi::CStr) -> io::Result<Statx> {
    Ok(rustix::fs::statx(
        rustix::fs::CWD,
        path,
        AtFlags::SYMLINK_NOFOLLOW | AtFlags::STATX_DONT_SYNC,
        mask(),
    )?)
}

/// The device of a statx result.
pub fn dev_of(st: &Statx) -> (u32, u32) {
    (st.stx_dev_major, st.stx_dev_minor)
}

/// Why a path was not opened.
#[derive(Debug)]
pub enum Refused {
    /// It lies on (or its walk would enter) a file system a user or another
    /// machine serves: `mount` describes it, `at` is the path up to there.
    Remote {
        served: Served,
        mount: String,
        at: Vec<u8>,
    },
    /// Its file system is in no mount table Quarry can read (lazily
    /// unmounted, or of a namespace out of reach): not trusted.
    UnknownFs { dev: (u32, u32), at: Vec<u8> },
    /// An ordinary error (missing, not a directory, too many links...).
    Io(io::Error),
}

impl Refused {
    /// A plain sentence for evidence and errors.
    pub fn describe(&self) -> String {
        match self {
            Refused::Remote { mount, at, .. } => format!(
                "{} is on {mount}: not read (a read there waits on whoever serves it, maybe for ever)",
                crate::escape::escape(at)
            ),
            Refused::UnknownFs { dev, at } => format!(
                "{} is on a file system no mount table lists (device {}:{}; lazily unmounted, or out of reach): not read",
                crate::escape::escape(at),
                dev.0,
                dev.1
            ),
            Refused::Io(e) => e.to_string(),
        }
    }

    /// True when the refusal is about who serves the file, not an error.
    pub fn is_remote(&self) -> bool {
        matches!(self, Refused::Remote { .. } | Refused::UnknownFs { .. })
    }
}

impl From<io::Error> for Refused {
    fn from(e: io::Error) -> Self {
        Refused::Io(e)
    }
}

impl From<rustix::io::Errno> for Refused {
    fn from(e: rustix::io::Errno) -> Self {
        Refused::Io(e.into())
    }
}

impl From<Refused> for io::Error {
    fn from(r: Refused) -> io::Error {
        match r {
            Refused::Io(e) => e,
            other => io::Error::new(io::ErrorKind::PermissionDenied, other.describe()),
        }
    }
}

/// Says who serves the file system of a device, from mount tables: Quarry's
/// own and those of the processes whose files it opens. A device no table
/// lists makes it read the tables again once.
#[derive(Debug, Clone)]
pub struct Classifier {
    inner: Arc<Mutex<ClassifierState>>,
}

#[derive(Debug)]
struct ClassifierState {
    /// (whose table: `self` or a PID, the table).
    tables: Vec<(String, MountTable)>,
    /// Devices of the kernel's internal memory file systems (memfd and
    /// SysV shared memory live on an internal tmpfs mount, hugetlb memfds on
    /// an internal hugetlbfs mount) that no mount table lists.
    internal: Vec<(u32, u32)>,
    /// Unknown devices the tables were read again for.
    reread_for: std::collections::HashSet<(u32, u32)>,
    host: super::Host,
}

/// Most times one classifier reads every mount table again (each a few
/// hundred microseconds per table on a machine with containers).
const MAX_REREADS: usize = 32;

/// The answer of [`Classifier::check`] for what a table said of `dev`.
fn verdict(served: Option<(Served, String)>, dev: (u32, u32), at: &[u8]) -> Result<(), Refused> {
    match served {
        Some((Served::Local, _)) => Ok(()),
        Some((served, mount)) => Err(Refused::Remote {
            served,
            mount,
            at: at.to_vec(),
        }),
        None => Err(Refused::UnknownFs {
            dev,
            at: at.to_vec(),
        }),
    }
}

impl Classifier {
    /// A classifier reading mount tables through `host`.
    pub fn new(host: &super::Host) -> Classifier {
        let mut internal = Vec::new();
        for flags in [
            rustix::fs::MemfdFlags::CLOEXEC,
            rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::HUGETLB,
        ] {
            if let Ok(fd) = rustix::fs::memfd_create("quarry-probe", flags) {
                if let Ok(st) = rustix::fs::fstat(&fd) {
                    let dev = (rustix::fs::major(st.st_dev), rustix::fs::minor(st.st_dev));
                    internal.push(dev);
                }
            }
        }
        Classifier {
            inner: Arc::new(Mutex::new(ClassifierState {
                tables: vec![("self".into(), MountTable::read(host, "self"))],
                internal,
                reread_for: Default::default(),
                host: host.clone(),
            })),
        }
    }

    /// A classifier with fixed tables (tests, fixtures).
    pub fn fixed(tables: Vec<MountTable>) -> Classifier {
        Classifier {
            inner: Arc::new(Mutex::new(ClassifierState {
                tables: tables.into_iter().map(|t| ("fixed".into(), t)).collect(),
                internal: Vec::new(),
                reread_for: Default::default(),
                host: super::Host::new("/nonexistent"),
            })),
        }
    }

    /// Adds the mount table of `pid`'s namespace (once).
    pub fn add_process(&self, pid: i32) {
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let key = pid.to_string();
        if s.tables.iter().any(|(k, _)| *k == key) {
            return;
        }
        let t = MountTable::read(&s.host, &key);
        s.tables.push((key, t));
    }

    /// Who serves device `dev`, with the mount's description; `None` if no
    /// table lists it even after reading them again. The tables are read
    /// again at most once per unknown device and [`MAX_REREADS`] times in
    /// all: overlayfs and detached mounts give devices no table will ever
    /// list, and a walk meets them on every component.
    pub fn served(&self, dev: (u32, u32)) -> Option<(Served, String)> {
        if let Some(hit) = self.served_known(dev) {
            return Some(hit);
        }
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if s.reread_for.len() >= MAX_REREADS || !s.reread_for.insert(dev) {
            return None;
        }
        // A mount made since the tables were read: read them again.
        let host = s.host.clone();
        for (k, t) in s.tables.iter_mut() {
            if k != "fixed" {
                *t = MountTable::read(&host, k);
            }
        }
        drop(s);
        self.served_known(dev)
    }

    /// `Ok` when data on device `dev` is the kernel's to give; the refusal
    /// (naming `at`) otherwise.
    pub fn check(&self, dev: (u32, u32), at: &[u8]) -> Result<(), Refused> {
        verdict(self.served(dev), dev, at)
    }

    /// [`Classifier::check`] for what `st` describes. A device no table
    /// lists is judged by the mount the file was reached through
    /// (`stx_mnt_id`): overlayfs gives the files it passes through from its
    /// layers devices of their own (the layers' or private ones), which no
    /// mount table names, while the overlay mount itself is listed. The
    /// tables are read again only when neither is known.
    pub fn check_stat(&self, st: &Statx, at: &[u8]) -> Result<(), Refused> {
        let dev = dev_of(st);
        let has_mnt_id = st.stx_mask & rustix::fs::StatxFlags::MNT_ID.bits() != 0;
        let by_mount = || {
            has_mnt_id
                .then(|| self.served_by_mount(st.stx_mnt_id))
                .flatten()
        };
        let served = self
            .served_known(dev)
            .or_else(by_mount)
            .or_else(|| self.served(dev))
            .or_else(by_mount);
        verdict(served, dev, at)
    }

    /// Who serves the mount with id `id` (mount ids are unique across
    /// namespaces). An overlay is as trustworthy as the worst of its layers,
    /// each judged by the mount its path lies on in the same table (a layer
    /// on a FUSE mount is served by whoever serves that mount).
    fn served_by_mount(&self, id: u64) -> Option<(Served, String)> {
        let s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for (_, t) in &s.tables {
            let Some(m) = t.by_id(id) else { continue };
            let own = (m.served(), m.describe());
            if m.fs_type != "overlay" {
                return Some(own);
            }
            for layer in overlay_layers(&m.super_options) {
                let under = t
                    .mounts
                    .iter()
                    .filter(|o| o.id != m.id && layer.starts_with(&o.mount_point))
                    .filter(|o| {
                        o.mount_point == b"/"
                            || layer.len() == o.mount_point.len()
                            || layer[o.mount_point.len()] == b'/'
                    })
                    .max_by_key(|o| o.mount_point.len());
                if let Some(o) = under.filter(|o| o.served().is_remote()) {
                    return Some((
                        o.served(),
                        format!(
                            "{} (a layer of the overlay at {})",
                            o.describe(),
                            crate::escape::escape(&m.mount_point)
                        ),
                    ));
                }
            }
            return Some(own);
        }
        None
    }

    /// Who serves device `dev`, without reading the tables again (for the
    /// regions of a memory map: hundreds per process).
    pub fn served_known(&self, dev: (u32, u32)) -> Option<(Served, String)> {
        let s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if s.internal.contains(&dev) {
            return Some((
                Served::Local,
                "the kernel's internal memory file system".into(),
            ));
        }
        s.tables
            .iter()
            .find_map(|(_, t)| t.by_dev(dev))
            .map(|m| (m.served(), m.describe()))
    }
}

/// An object found by [`open_in`]: an `O_PATH` descriptor, its cached
/// attributes, and the path it was reached by inside the root, every link
/// resolved.
#[derive(Debug)]
pub struct Found {
    pub fd: OwnedFd,
    pub stat: Statx,
    pub real: Vec<u8>,
}

impl Found {
    pub fn file_type(&self) -> FileType {
        FileType::from_raw_mode(self.stat.stx_mode as u32)
    }

    /// Opens the object for reading (through `/proc/self/fd/N`, the very
    /// inode found), never blocking on a FIFO or taking a terminal. Refuses
    /// what is not a regular file.
    pub fn open_read(&self) -> io::Result<OwnedFd> {
        if self.file_type() != FileType::RegularFile {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: not a regular file (a FIFO, socket or device is never read)",
                    crate::escape::escape(&self.real)
                ),
            ));
        }
        reopen(&self.fd)
    }
}

/// Opens an `O_PATH` descriptor for reading through its magic link.
pub fn reopen(fd: &OwnedFd) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        format!("/proc/self/fd/{}", fd.as_raw_fd()),
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens `O_PATH` what `path` names beneath `root`, one component at a
/// time (see the module documentation). `follow_last`: whether a final
/// symbolic link is followed. `root_name` is how the root is named in
/// refusals (empty for `/`).
pub fn open_in(
    root: BorrowedFd<'_>,
    path: &[u8],
    follow_last: bool,
    classes: &Classifier,
) -> Result<Found, Refused> {
    let root_stat = statx_cached(root)?;
    classes.check_stat(&root_stat, b"/")?;
    // The directories from the root down, with their names.
    let mut stack: Vec<(OwnedFd, Vec<u8>)> = Vec::new();
    let mut todo: std::collections::VecDeque<Vec<u8>> = components(path).collect();
    let mut links = 0usize;
    let mut walked = 0usize;
    let real = |stack: &Vec<(OwnedFd, Vec<u8>)>| -> Vec<u8> {
        if stack.is_empty() {
            return b"/".to_vec();
        }
        let mut p = Vec::new();
        for (_, n) in stack {
            p.push(b'/');
            p.extend_from_slice(n);
        }
        p
    };
    let mut current: Option<(OwnedFd, Statx, Vec<u8>)> = None;
    while let Some(comp) = todo.pop_front() {
        walked += 1;
        if walked > MAX_COMPONENTS {
            return Err(Refused::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "path too long",
            )));
        }
        // What was found last is a directory we go into.
        if let Some((fd, _, name)) = current.take() {
            stack.push((fd, name));
        }
        if comp == b".." {
            stack.pop();
            continue;
        }
        let dir: BorrowedFd = stack.last().map_or(root, |(fd, _)| fd.as_fd());
        let fd = rustix::fs::openat(
            dir,
            comp.as_slice(),
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = statx_cached(&fd)?;
        let mut at = real(&stack);
        if at != b"/" {
            at.push(b'/');
        }
        at.extend_from_slice(&comp);
        classes.check_stat(&st, &at)?;
        let ft = FileType::from_raw_mode(st.stx_mode as u32);
        if ft == FileType::Symlink && (follow_last || !todo.is_empty()) {
            links += 1;
            if links > MAX_LINKS {
                return Err(Refused::Io(io::Error::from_raw_os_error(libc_eloop())));
            }
            let target = rustix::fs::readlinkat(&fd, "", Vec::new())?.into_bytes();
            if target.starts_with(b"/") {
                stack.clear();
            }
            for c in components(&target).collect::<Vec<_>>().into_iter().rev() {
                todo.push_front(c);
            }
            continue;
        }
        if !todo.is_empty() && ft != FileType::Directory {
            return Err(Refused::Io(io::Error::from_raw_os_error(libc_enotdir())));
        }
        current = Some((fd, st, comp));
    }
    match current {
        Some((fd, stat, name)) => {
            let mut r = real(&stack);
            if r != b"/" {
                r.push(b'/');
            }
            r.extend_from_slice(&name);
            Ok(Found { fd, stat, real: r })
        }
        None => {
            // The path named a directory on the stack (or the root).
            let r = real(&stack);
            let fd = match stack.pop() {
                Some((fd, _)) => fd,
                None => rustix::io::fcntl_dupfd_cloexec(root, 0)?,
            };
            let stat = statx_cached(&fd)?;
            Ok(Found { fd, stat, real: r })
        }
    }
}

fn libc_eloop() -> i32 {
    rustix::io::Errno::LOOP.raw_os_error()
}

fn libc_enotdir() -> i32 {
    rustix::io::Errno::NOTDIR.raw_os_error()
}

/// The components of a path, without empty ones and `.`.
fn components(path: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    path.split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(<[u8]>::to_vec)
}

/// The layer paths an overlay's options name (`lowerdir=a:b`, `upperdir=`;
/// `\:` escapes a colon in a path).
fn overlay_layers(options: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for o in options.split(',') {
        let v = o
            .strip_prefix("lowerdir=")
            .or_else(|| o.strip_prefix("upperdir="))
            .or_else(|| o.strip_prefix("lowerdir+="));
        let Some(v) = v else { continue };
        let mut cur = Vec::new();
        let b = v.as_bytes();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'\\' if i + 1 < b.len() => {
                    cur.push(b[i + 1]);
                    i += 1;
                }
                b':' => out.push(std::mem::take(&mut cur)),
                c => cur.push(c),
            }
            i += 1;
        }
        out.push(super::mount::unescape(&String::from_utf8_lossy(&cur)));
    }
    out.retain(|l| !l.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn local() -> Classifier {
        // Every device of this test's files is whatever /proc/self/mountinfo
        // lists: a real classifier on the live machine.
        Classifier::new(&super::super::Host::new("/"))
    }

    #[test]
    fn overlay_layers_are_split_and_unescaped() {
        assert_eq!(
            overlay_layers("rw,lowerdir=/a:/b\\:c,upperdir=/u/x,workdir=/w,uuid=on"),
            vec![b"/a".to_vec(), b"/b:c".to_vec(), b"/u/x".to_vec()]
        );
        assert!(overlay_layers("rw,relatime").is_empty());
    }

    #[test]
    fn walks_links_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("usr/local/bin")).unwrap();
        std::fs::write(r.join("usr/local/bin/config.json"), b"{}").unwrap();
        // An absolute link resolves inside the root, not on the host.
        symlink("/usr/local/bin", r.join("bin")).unwrap();
        symlink("../../../../../../usr/local/bin/config.json", r.join("up")).unwrap();
        let root = rustix::fs::open(r, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let c = local();
        let f = open_in(root.as_fd(), b"/bin/config.json", true, &c).unwrap();
        assert_eq!(f.real, b"/usr/local/bin/config.json");
        assert_eq!(f.file_type(), FileType::RegularFile);
        let f = open_in(root.as_fd(), b"up", true, &c).unwrap();
        assert_eq!(f.real, b"/usr/local/bin/config.json");
        let f = open_in(root.as_fd(), b"bin", false, &c).unwrap();
        assert_eq!(f.file_type(), FileType::Symlink);
        assert_eq!(f.real, b"/bin");
        let f = open_in(root.as_fd(), b"/usr/./local/..", true, &c).unwrap();
        assert_eq!(f.real, b"/usr");
        let f = open_in(root.as_fd(), b"/", true, &c).unwrap();
        assert_eq!(f.real, b"/");
        assert!(open_in(root.as_fd(), b"/nope/x", true, &c).is_err());
        symlink("loop", r.join("loop")).unwrap();
        assert!(open_in(root.as_fd(), b"/loop", true, &c).is_err());
        let mut data = Vec::new();
        let fd = open_in(root.as_fd(), b"/bin/config.json", true, &c)
            .unwrap()
            .open_read()
            .unwrap();
        data.extend(super::super::read_fd(&fd, 100).unwrap());
        assert_eq!(data, b"{}");
    }

    #[test]
    fn refuses_what_no_table_lists() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), b"x").unwrap();
        let root =
            rustix::fs::open(d.path(), OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let empty = Classifier::fixed(vec![]);
        let e = open_in(root.as_fd(), b"f", true, &empty).unwrap_err();
        assert!(e.is_remote(), "{e:?}");
        assert!(e.describe().contains("no mount table lists"));
    }
}
