//! Every change `quarry fix` and `quarry restore` make to the file system goes
//! through this module, and through file descriptors only.
//!
//! Quarry acts as root on a machine an attacker has been on. Any path string
//! resolved twice can be re-pointed in between (a symbolic link swapped in for
//! a file or for a directory on its path), so:
//! - a directory is opened with `openat2(RESOLVE_NO_SYMLINKS |
//!   RESOLVE_NO_MAGICLINKS)` from `/` (a component walk with `O_NOFOLLOW` on
//!   kernels before 5.6), and everything after that is relative to that
//!   descriptor: `renameat2(RENAME_NOREPLACE)`, `unlinkat`, `linkat`;
//! - a file is opened `O_NOFOLLOW | O_NONBLOCK | O_NOCTTY` inside it, must be
//!   a regular file, and is changed with `fchown`, `fchmod`, `futimens` and the
//!   attribute ioctl on that descriptor, never by path;
//! - new files are `O_TMPFILE` linked into place with `linkat`, or, where the
//!   file system has no `O_TMPFILE`, `O_CREAT | O_EXCL | O_NOFOLLOW` under a
//!   random 128-bit name;
//! - inside a case folder, paths are resolved with `RESOLVE_BENEATH`.
//!
//! Nothing else in `respond/` calls `std::fs` on a path of the inspected
//! machine.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, ResolveFlags, Stat};

/// An error with the path it is about.
pub fn err(path: &[u8], what: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{}: {what}", crate::escape::escape(path)))
}

fn with_path(path: &[u8], e: impl Into<io::Error>) -> io::Error {
    let e: io::Error = e.into();
    match e.raw_os_error() {
        Some(libc::ELOOP) => return err(path, "a symbolic link is on the path: not followed"),
        Some(libc::ENOTDIR) => {
            return err(
                path,
                "not a directory (or a symbolic link to one) on the path: not followed",
            )
        }
        _ => {}
    }
    io::Error::new(e.kind(), format!("{}: {e}", crate::escape::escape(path)))
}

/// Checks that a path is absolute and normalised: no empty, `.` or `..`
/// component, no NUL byte, no trailing slash.
pub fn check_normalised(path: &[u8]) -> io::Result<()> {
    if path.first() != Some(&b'/') || path.contains(&0) {
        return Err(err(path, "not an absolute path"));
    }
    if path == b"/" {
        return Ok(());
    }
    for c in path[1..].split(|b| *b == b'/') {
        if c.is_empty() || c == b"." || c == b".." {
            return Err(err(
                path,
                "not a normalised path (empty, . or .. component)",
            ));
        }
    }
    Ok(())
}

/// Splits a normalised absolute path into its parent and last component.
pub fn split(path: &[u8]) -> io::Result<(&[u8], &[u8])> {
    check_normalised(path)?;
    let i = path
        .iter()
        .rposition(|b| *b == b'/')
        .ok_or_else(|| err(path, "no parent"))?;
    let name = &path[i + 1..];
    if name.is_empty() {
        return Err(err(path, "no file name"));
    }
    let parent = if i == 0 { &path[..1] } else { &path[..i] };
    Ok((parent, name))
}

/// An open directory: the fixed point every action is relative to.
pub struct Dir {
    pub fd: OwnedFd,
    pub path: Vec<u8>,
    pub dev: u64,
    pub ino: u64,
    pub uid: u32,
    pub mode: u32,
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NOFOLLOW);

impl Dir {
    /// Opens a directory by absolute path without following any symbolic link.
    pub fn open(path: &[u8]) -> io::Result<Dir> {
        check_normalised(path)?;
        let root =
            rustix::fs::open("/", DIR_FLAGS, Mode::empty()).map_err(|e| with_path(b"/", e))?;
        let fd = if path == b"/" {
            root
        } else {
            let rel = &path[1..];
            match rustix::fs::openat2(
                &root,
                rel,
                DIR_FLAGS,
                Mode::empty(),
                ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
            ) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOSYS) => {
                    // Before Linux 5.6: one component at a time, O_NOFOLLOW.
                    let mut cur = root;
                    for c in rel.split(|b| *b == b'/') {
                        cur = rustix::fs::openat(&cur, c, DIR_FLAGS, Mode::empty())
                            .map_err(|e| with_path(path, e))?;
                    }
                    cur
                }
                Err(e) => return Err(with_path(path, e)),
            }
        };
        Dir::from_fd(fd, path)
    }

    fn from_fd(fd: OwnedFd, path: &[u8]) -> io::Result<Dir> {
        let st = rustix::fs::fstat(&fd).map_err(|e| with_path(path, e))?;
        Ok(Dir {
            fd,
            path: path.to_vec(),
            dev: st.st_dev,
            ino: st.st_ino,
            uid: st.st_uid,
            mode: st.st_mode & 0o7777,
        })
    }

    /// Opens a directory beneath this one (`RESOLVE_BENEATH`, no links).
    pub fn open_dir_beneath(&self, rel: &[u8]) -> io::Result<Dir> {
        let fd = beneath(&self.fd, rel, DIR_FLAGS).map_err(|e| with_path(&self.join(rel), e))?;
        Dir::from_fd(fd, &self.join(rel))
    }

    /// Creates a directory (mode 0700) in this one.
    pub fn mkdir(&self, name: &[u8]) -> io::Result<()> {
        rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(0o700))
            .map_err(|e| with_path(&self.join(name), e))
    }

    /// The path of an entry, for messages and journals.
    pub fn join(&self, name: &[u8]) -> Vec<u8> {
        let mut p = self.path.clone();
        if !p.ends_with(b"/") {
            p.push(b'/');
        }
        p.extend_from_slice(name);
        p
    }

    /// `lstat` of an entry; `None` when there is none.
    pub fn stat_entry(&self, name: &[u8]) -> io::Result<Option<Stat>> {
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(with_path(&self.join(name), e)),
        }
    }

    /// Opens a regular file in this directory for reading, never following a
    /// link, never blocking (a FIFO is refused).
    pub fn open_file(&self, name: &[u8]) -> io::Result<File> {
        open_regular_at(&self.fd, name, &self.join(name), false)
    }

    /// Opens a file beneath this directory (`RESOLVE_BENEATH`, no links).
    pub fn open_file_beneath(&self, rel: &[u8]) -> io::Result<File> {
        let path = self.join(rel);
        let fd = beneath(
            &self.fd,
            rel,
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        )
        .map_err(|e| with_path(&path, e))?;
        regular(fd, &path)
    }

    /// The target of a symbolic link in this directory.
    pub fn read_link(&self, name: &[u8]) -> io::Result<Vec<u8>> {
        rustix::fs::readlinkat(&self.fd, name, Vec::new())
            .map(|c| c.into_bytes())
            .map_err(|e| with_path(&self.join(name), e))
    }

    /// Creates a symbolic link; fails if the name exists.
    pub fn symlink(&self, target: &[u8], name: &[u8]) -> io::Result<()> {
        rustix::fs::symlinkat(target, &self.fd, name).map_err(|e| with_path(&self.join(name), e))
    }

    /// Removes an entry (not a directory).
    pub fn unlink(&self, name: &[u8]) -> io::Result<()> {
        rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())
            .map_err(|e| with_path(&self.join(name), e))
    }

    /// Moves an entry to another directory; never replaces what is there.
    pub fn rename_noreplace(&self, name: &[u8], to: &Dir, to_name: &[u8]) -> io::Result<()> {
        rustix::fs::renameat_with(&self.fd, name, &to.fd, to_name, RenameFlags::NOREPLACE)
            .map_err(|e| with_path(&self.join(name), e))
    }

    /// Flushes the directory (so a rename or link survives a crash).
    pub fn sync(&self) -> io::Result<()> {
        rustix::fs::fsync(&self.fd).map_err(|e| with_path(&self.path, e))
    }

    /// A new, unnamed file in this directory (mode 0600, owned by root).
    pub fn create_tmp(&self) -> io::Result<TmpFile> {
        match rustix::fs::openat(
            &self.fd,
            ".",
            OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => Ok(TmpFile {
                file: File::from(fd),
                name: None,
            }),
            Err(
                rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::ISDIR | rustix::io::Errno::INVAL,
            ) => {
                let name = random_name(b".quarry-tmp-")?;
                let fd = rustix::fs::openat(
                    &self.fd,
                    &name[..],
                    OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::WRONLY
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| with_path(&self.join(&name), e))?;
                Ok(TmpFile {
                    file: File::from(fd),
                    name: Some(name),
                })
            }
            Err(e) => Err(with_path(&self.path, e)),
        }
    }
}

fn beneath(dir: &OwnedFd, rel: &[u8], flags: OFlags) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat2(
        dir,
        rel,
        flags,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
}

fn open_regular_at(dir: &OwnedFd, name: &[u8], path: &[u8], write: bool) -> io::Result<File> {
    if name.contains(&b'/') || name.is_empty() || name == b"." || name == b".." {
        return Err(err(path, "not a plain file name"));
    }
    let access = if write { OFlags::RDWR } else { OFlags::RDONLY };
    let fd = rustix::fs::openat(
        dir,
        name,
        access | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| with_path(path, e))?;
    regular(fd, path)
}

fn regular(fd: OwnedFd, path: &[u8]) -> io::Result<File> {
    let st = rustix::fs::fstat(&fd).map_err(|e| with_path(path, e))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(err(path, "not a regular file: not touched"));
    }
    Ok(File::from(fd))
}

/// A random file name with a prefix: 128 bits from `getrandom`, so it cannot be
/// predicted and planted.
pub fn random_name(prefix: &[u8]) -> io::Result<Vec<u8>> {
    let mut r = [0u8; 16];
    let mut got = 0;
    while got < r.len() {
        let n = unsafe { libc::getrandom(r[got..].as_mut_ptr().cast(), r.len() - got, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        got += n as usize;
    }
    let mut name = prefix.to_vec();
    for b in r {
        name.extend_from_slice(format!("{b:02x}").as_bytes());
    }
    Ok(name)
}

/// A file being written, not yet in place.
pub struct TmpFile {
    pub file: File,
    /// The random name it has when the file system has no `O_TMPFILE`.
    name: Option<Vec<u8>>,
}

impl TmpFile {
    /// Writes all of `data` and flushes it to disk.
    pub fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)?;
        self.file.sync_all()
    }

    /// Gives the file `name` in `dir`. With `replace` an existing entry of that
    /// name (file or link: the entry itself, never what a link points to) is
    /// replaced atomically; without it the call fails if the name exists.
    pub fn link_into(self, dir: &Dir, name: &[u8], replace: bool) -> io::Result<File> {
        let path = dir.join(name);
        let placed = match &self.name {
            Some(n) => n.clone(),
            None => {
                // linkat(fd, "", ..., AT_EMPTY_PATH) needs CAP_DAC_READ_SEARCH;
                // root has it.
                let target = if replace {
                    random_name(b".quarry-tmp-")?
                } else {
                    name.to_vec()
                };
                rustix::fs::linkat(&self.file, "", &dir.fd, &target[..], AtFlags::EMPTY_PATH)
                    .map_err(|e| with_path(&path, e))?;
                if !replace {
                    dir.sync()?;
                    return Ok(self.file);
                }
                target
            }
        };
        let res = if replace {
            rustix::fs::renameat(&dir.fd, &placed[..], &dir.fd, name)
        } else {
            rustix::fs::renameat_with(&dir.fd, &placed[..], &dir.fd, name, RenameFlags::NOREPLACE)
        };
        if let Err(e) = res {
            let _ = dir.unlink(&placed);
            return Err(with_path(&path, e));
        }
        dir.sync()?;
        Ok(self.file)
    }
}

/// Reads a whole open file, at most `limit` bytes.
pub fn read_all(f: &File, limit: usize) -> io::Result<Vec<u8>> {
    crate::host::read_fd(f.as_fd(), limit)
}

/// The chattr immutable and append-only attributes of an open file.
pub fn get_attrs(f: &impl AsFd) -> io::Result<(bool, bool)> {
    let fl = rustix::fs::ioctl_getflags(f)?;
    Ok((
        fl.contains(rustix::fs::IFlags::IMMUTABLE),
        fl.contains(rustix::fs::IFlags::APPEND),
    ))
}

/// Sets or clears the immutable and append-only attributes of an open file.
pub fn set_attrs(f: &impl AsFd, immutable: bool, append_only: bool) -> io::Result<()> {
    use rustix::fs::IFlags;
    let mut fl = rustix::fs::ioctl_getflags(f)?;
    fl.set(IFlags::IMMUTABLE, immutable);
    fl.set(IFlags::APPEND, append_only);
    rustix::fs::ioctl_setflags(f, fl)?;
    Ok(())
}

/// Owner, then mode (chown clears setuid bits, so mode comes second), then
/// times, all on the open file.
pub fn apply_meta(
    f: &impl AsFd,
    uid: u32,
    gid: u32,
    mode: u32,
    atime: (i64, i64),
    mtime: (i64, i64),
) -> io::Result<()> {
    rustix::fs::fchown(
        f,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )?;
    rustix::fs::fchmod(f, Mode::from_raw_mode(mode & 0o7777))?;
    let ts = |(s, n): (i64, i64)| rustix::fs::Timespec {
        tv_sec: s,
        tv_nsec: n.clamp(0, 999_999_999) as _,
    };
    rustix::fs::futimens(
        f,
        &rustix::fs::Timestamps {
            last_access: ts(atime),
            last_modification: ts(mtime),
        },
    )?;
    Ok(())
}

/// Creates the missing folders of a normalised absolute path (mode 0700),
/// one component at a time, each opened without following a link.
pub fn make_dirs(path: &[u8]) -> io::Result<()> {
    check_normalised(path)?;
    let mut d = Dir::open(b"/")?;
    if path == b"/" {
        return Ok(());
    }
    for c in path[1..].split(|b| *b == b'/') {
        if d.stat_entry(c)?.is_none() {
            match d.mkdir(c) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        let fd = rustix::fs::openat(&d.fd, c, DIR_FLAGS, Mode::empty())
            .map_err(|e| with_path(&d.join(c), e))?;
        let p = d.join(c);
        d = Dir::from_fd(fd, &p)?;
    }
    Ok(())
}

/// Checks that a directory is private to root: owned by uid 0, a real
/// directory (not a link), with no permission for group or others (0700), on a
/// path of root-owned directories that nobody else can write.
pub fn check_private_dir(path: &[u8]) -> io::Result<Dir> {
    check_normalised(path)?;
    let mut prefix: Vec<u8> = b"/".to_vec();
    let comps: Vec<&[u8]> = if path == b"/" {
        vec![]
    } else {
        path[1..].split(|b| *b == b'/').collect()
    };
    let mut d = Dir::open(b"/")?;
    for (i, c) in comps.iter().enumerate() {
        if d.uid != 0 || d.mode & 0o022 != 0 {
            return Err(err(
                &d.path,
                format!(
                    "owned by uid {} with mode {:o}: someone other than root can change what lies under it",
                    d.uid, d.mode
                ),
            ));
        }
        if prefix.len() > 1 {
            prefix.push(b'/');
        }
        prefix.extend_from_slice(c);
        d = Dir::from_fd(
            rustix::fs::openat(&d.fd, *c, DIR_FLAGS, Mode::empty())
                .map_err(|e| with_path(&prefix, e))?,
            &prefix,
        )?;
        let _ = i;
    }
    if d.uid != 0 || d.mode & 0o077 != 0 {
        return Err(err(
            path,
            format!(
                "owned by uid {} with mode {:o}: a case folder must be root's alone (0700)",
                d.uid, d.mode
            ),
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_be_normalised() {
        assert!(check_normalised(b"/etc/cron.d/x").is_ok());
        assert!(check_normalised(b"/").is_ok());
        for bad in [
            &b"etc/x"[..],
            b"/etc/../x",
            b"/etc/./x",
            b"/etc//x",
            b"/etc/x/",
            b"/etc/\0x",
            b"",
        ] {
            assert!(check_normalised(bad).is_err(), "{bad:?}");
        }
        assert_eq!(split(b"/x").unwrap(), (&b"/"[..], &b"x"[..]));
        assert_eq!(split(b"/a/b").unwrap(), (&b"/a"[..], &b"b"[..]));
    }

    #[test]
    fn a_link_on_the_path_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("f"), b"x").unwrap();
        std::os::unix::fs::symlink(&real, d.path().join("link")).unwrap();
        let link = d.path().join("link");
        let e = Dir::open(link.as_os_str().as_encoded_bytes())
            .err()
            .unwrap();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let dir = Dir::open(real.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(read_all(&dir.open_file(b"f").unwrap(), 10).unwrap(), b"x");
        std::os::unix::fs::symlink(real.join("f"), real.join("l")).unwrap();
        assert!(dir.open_file(b"l").is_err());
        assert!(dir.open_file_beneath(b"../real/f").is_err());
    }

    #[test]
    fn temp_files_land_without_replacing() {
        let d = tempfile::tempdir().unwrap();
        let dir = Dir::open(d.path().as_os_str().as_encoded_bytes()).unwrap();
        let mut t = dir.create_tmp().unwrap();
        t.write_all(b"one").unwrap();
        t.link_into(&dir, b"a", false).unwrap();
        let mut t = dir.create_tmp().unwrap();
        t.write_all(b"two").unwrap();
        assert!(t.link_into(&dir, b"a", false).is_err());
        let mut t = dir.create_tmp().unwrap();
        t.write_all(b"three").unwrap();
        t.link_into(&dir, b"a", true).unwrap();
        assert_eq!(std::fs::read(d.path().join("a")).unwrap(), b"three");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
