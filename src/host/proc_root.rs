//! A process's files as the process sees them: in its own root and mount
//! namespace.
//!
//! A container's miner that names `/usr/local/bin/config.json` means the
//! file in *its* root, not the host's file of the same name. The kernel
//! names a process's executable, working directory and open files
//! (`readlink /proc/PID/exe`) relative to the reader's root when it can, and
//! relative to the process's own namespace root when the file is out of the
//! reader's reach: the same string can name two different files. So every
//! path of a process is resolved here beneath a descriptor of its
//! `/proc/PID/root`, one component at a time and checked for who serves it
//! ([`super::resolve`]), and an object found there is mapped back to a path
//! in Quarry's own mount namespace only when that path leads to the very
//! same inode ([`ProcRoot::host_path`]). `quarry fix` acts on that path or
//! on nothing.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{Mode, OFlags};

use super::mount::MountTable;
use super::resolve::{self, Classifier, Found, Refused};
use super::Host;

/// How a process's root relates to Quarry's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootKind {
    /// The same mount namespace and root: its paths are Quarry's paths.
    Same,
    /// The same mount namespace, a different root (`chroot`): its path `P`
    /// is Quarry's `PREFIX/P`.
    Chroot(Vec<u8>),
    /// Another mount namespace (a container): its paths mean nothing on the
    /// host without the mount tables.
    OtherNamespace,
}

/// The root of one process, held open.
#[derive(Debug)]
pub struct ProcRoot {
    pub pid: i32,
    root: OwnedFd,
    pub kind: RootKind,
    /// `mnt:[INODE]` of the process's mount namespace.
    pub mnt_ns: Option<String>,
    classes: Classifier,
    host: Host,
    /// The process's own mount table (read when first needed).
    table: std::cell::OnceCell<MountTable>,
}

impl ProcRoot {
    /// Opens `pid`'s root (live machine only).
    pub fn open(host: &Host, pid: i32) -> io::Result<ProcRoot> {
        if !host.is_live() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a process's root is reachable only on the live machine",
            ));
        }
        let link = format!("/proc/{pid}/root");
        // O_PATH through the magic link: the root directory itself, opened
        // without any request to its file system.
        let root = rustix::fs::open(
            host.path(&link),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("{link}: {e}")))?;
        let mnt_ns = host.read_link(format!("/proc/{pid}/ns/mnt")).ok();
        let own_ns = host.read_link("/proc/self/ns/mnt").ok();
        let kind = if mnt_ns.is_some() && mnt_ns == own_ns {
            match host.read_link(&link) {
                Ok(r) if r == b"/" => RootKind::Same,
                Ok(r) => RootKind::Chroot(r),
                Err(_) => RootKind::OtherNamespace,
            }
        } else {
            RootKind::OtherNamespace
        };
        let classes = host.classes().clone();
        if kind == RootKind::OtherNamespace {
            classes.add_process(pid);
        }
        Ok(ProcRoot {
            pid,
            root,
            kind,
            mnt_ns: mnt_ns.map(|n| crate::escape::escape(&n)),
            classes,
            host: host.clone(),
            table: std::cell::OnceCell::new(),
        })
    }

    /// True when the process sees the files Quarry sees.
    pub fn is_same(&self) -> bool {
        self.kind == RootKind::Same
    }

    fn table(&self) -> &MountTable {
        self.table
            .get_or_init(|| MountTable::read(&self.host, &self.pid.to_string()))
    }

    /// The path as the process sees it, from a link the kernel wrote for
    /// Quarry (`/proc/PID/exe`, `cwd`, `fd/N`): a chroot's prefix removed.
    pub fn view_of(&self, link: &[u8]) -> Vec<u8> {
        let link = link.strip_suffix(b" (deleted)").unwrap_or(link);
        if let RootKind::Chroot(prefix) = &self.kind {
            if let Some(rest) = link.strip_prefix(prefix.as_slice()) {
                if rest.is_empty() {
                    return b"/".to_vec();
                }
                if rest.starts_with(b"/") {
                    return rest.to_vec();
                }
            }
        }
        link.to_vec()
    }

    /// Finds a path as the process sees it (absolute: relative paths are
    /// joined to its working directory by the caller) beneath its root.
    pub fn find(&self, path: &[u8], follow: bool) -> Result<Found, Refused> {
        resolve::open_in(self.root.as_fd(), path, follow, &self.classes)
    }

    /// Finds what one of the process's links leads to (`exe`, `cwd`,
    /// `fd/N`), checked for who serves it; `real` is the path as the
    /// process sees it.
    pub fn find_link(&self, which: &str) -> Result<Found, Refused> {
        let link = format!("/proc/{}/{which}", self.pid);
        let mut f = self.host.find(&link, true)?;
        if let Ok(target) = self.host.read_link(&link) {
            f.real = self.view_of(&target);
        }
        Ok(f)
    }

    /// Where an object found for this process lives in Quarry's mount
    /// namespace: a path that leads, without a symbolic link, to the same
    /// device and inode. `None` when no such path exists (a container's
    /// file no mount of the host shows, or a deleted one).
    pub fn host_path(&self, f: &Found) -> Option<Vec<u8>> {
        let want = (resolve::dev_of(&f.stat), f.stat.stx_ino);
        let same = |candidate: &[u8]| {
            self.host
                .find(crate::host::bytes_to_path(candidate), false)
                .ok()
                .is_some_and(|g| (resolve::dev_of(&g.stat), g.stat.stx_ino) == want)
        };
        let candidate = match &self.kind {
            RootKind::Same => f.real.clone(),
            RootKind::Chroot(prefix) => {
                let mut p = prefix.clone();
                if f.real != b"/" {
                    p.extend_from_slice(&f.real);
                }
                p
            }
            RootKind::OtherNamespace => self.map_through_mounts(f)?,
        };
        same(&candidate).then_some(candidate)
    }

    /// The host path of an object in another mount namespace: its mount
    /// (by `stx_mnt_id` in the process's table) gives the file system and
    /// the directory of it mounted there; a host mount of the same file
    /// system whose mounted directory contains that one gives the path.
    fn map_through_mounts(&self, f: &Found) -> Option<Vec<u8>> {
        let theirs = self.table();
        let m = theirs.by_id(f.stat.stx_mnt_id)?;
        let rel = strip_dir(&f.real, &m.mount_point)?;
        let mut in_fs = m.root.clone();
        push_rel(&mut in_fs, rel);
        let ours = MountTable::read(&Host::new("/"), "self");
        // The deepest host mount of that file system whose directory
        // contains the file.
        ours.mounts
            .iter()
            .filter(|h| h.dev == m.dev)
            .filter_map(|h| {
                let below = strip_dir(&in_fs, &h.root)?;
                let mut p = h.mount_point.clone();
                push_rel(&mut p, below);
                Some((h.root.len(), p))
            })
            .max_by_key(|(l, _)| *l)
            .map(|(_, p)| p)
    }

    /// "PID 4711's own root (mount namespace mnt:[4026532]...)" for evidence.
    pub fn describe(&self) -> String {
        match &self.kind {
            RootKind::Same => "Quarry's own root".into(),
            RootKind::Chroot(p) => format!("its chroot {}", crate::escape::escape(p)),
            RootKind::OtherNamespace => format!(
                "its own mount namespace {}",
                self.mnt_ns.as_deref().unwrap_or("?")
            ),
        }
    }
}

/// `path` below directory `dir` ("" when equal), if it is below it.
fn strip_dir<'a>(path: &'a [u8], dir: &[u8]) -> Option<&'a [u8]> {
    if dir == b"/" {
        return Some(path.strip_prefix(b"/").unwrap_or(path));
    }
    let rest = path.strip_prefix(dir)?;
    if rest.is_empty() {
        return Some(rest);
    }
    rest.strip_prefix(b"/")
}

fn push_rel(p: &mut Vec<u8>, rel: &[u8]) {
    if rel.is_empty() {
        return;
    }
    if !p.ends_with(b"/") {
        p.push(b'/');
    }
    p.extend_from_slice(rel);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_below_directories() {
        assert_eq!(strip_dir(b"/a/b/c", b"/a"), Some(&b"b/c"[..]));
        assert_eq!(strip_dir(b"/a/b", b"/"), Some(&b"a/b"[..]));
        assert_eq!(strip_dir(b"/ab/c", b"/a"), None);
        assert_eq!(strip_dir(b"/a", b"/a"), Some(&b""[..]));
        let mut p = b"/srv".to_vec();
        push_rel(&mut p, b"ctr/usr");
        assert_eq!(p, b"/srv/ctr/usr");
    }

    #[test]
    fn own_process_is_the_same_root() {
        let h = Host::default();
        let me = std::process::id() as i32;
        let r = ProcRoot::open(&h, me).unwrap();
        assert!(r.is_same());
        let exe = r.find_link("exe").unwrap();
        let host = r.host_path(&exe).unwrap();
        let link = std::fs::read_link("/proc/self/exe").unwrap();
        assert_eq!(host, link.as_os_str().as_encoded_bytes());
        let f = r.find(b"/proc/self/stat", true);
        assert!(f.is_ok());
    }
}
