//! Mount tables (`/proc/PID/mountinfo`) and what serves each file system.
//!
//! A file on a FUSE mount is served by a program, usually an unprivileged
//! user's (`fusermount3`); a file on NFS, CIFS or 9p by another machine.
//! Either can leave a reader asleep in the kernel for good: a FUSE request a
//! server has read but never answers is waited for uninterruptibly
//! (fs/fuse/dev.c `request_wait_answer`: once the request is in user space,
//! not even SIGKILL ends the wait). Quarry therefore learns which file system
//! lies behind every executable, memory region, working directory and
//! configuration before it touches one, and never opens, reads, lists or
//! faults in what a user or another machine serves ([`Served::is_remote`]).
//!
//! The mount table is kernel-generated text, read without touching any of
//! the file systems it lists.

use crate::host::Host;

/// One line of mountinfo (proc(5)): `id parent maj:min root mountpoint opts
/// [optional...] - fstype source superopts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The mount's unique id (the same number `statx` reports as
    /// `stx_mnt_id` and fdinfo as `mnt_id`).
    pub id: u64,
    /// The device of the file system (`st_dev` of every file on it), as
    /// major and minor numbers.
    pub dev: (u32, u32),
    /// The mount point, with the kernel's octal escapes (`\040`) decoded,
    /// relative to the reading process's root.
    pub mount_point: Vec<u8>,
    /// The mounted directory of the source filesystem.
    pub root: Vec<u8>,
    pub fs_type: String,
    pub source: Vec<u8>,
    pub super_options: String,
    /// The line as the kernel wrote it (escaped form), for evidence.
    pub line: String,
}

/// Who serves a file system's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// The kernel itself, from local storage or memory (ext4, xfs, tmpfs,
    /// overlay, proc, ...).
    Local,
    /// A program through FUSE; `uid` is the user who mounted it
    /// (`user_id=` in the super options) when the kernel says.
    User { uid: Option<u32> },
    /// Another machine (NFS, CIFS/SMB, 9p, Ceph, AFS, virtiofs, ...).
    Network,
}

impl Served {
    /// True when reading may wait on someone other than the kernel.
    pub fn is_remote(self) -> bool {
        !matches!(self, Served::Local)
    }
}

/// File system types whose data another machine (or a hypervisor's daemon)
/// serves: Linux's fs/{nfs,smb/client,9p,ceph,afs,coda,orangefs,virtio_fs}
/// register these names; glusterfs, lustre and the cluster file systems wait
/// on other nodes too.
const NETWORK_FS: &[&str] = &[
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "9p",
    "ceph",
    "afs",
    "coda",
    "ncpfs",
    "orangefs",
    "pvfs2",
    "virtiofs",
    "glusterfs",
    "lustre",
    "gfs2",
    "ocfs2",
    "beegfs",
    "gpfs",
];

impl Mount {
    /// Who serves this mount's data (see [`Served`]). FUSE mounts are typed
    /// `fuse`, `fuseblk` or `fuse.NAME` (libfuse's fusermount3 sets the
    /// subtype: `fuse.sshfs`).
    pub fn served(&self) -> Served {
        classify(&self.fs_type, &self.super_options)
    }

    /// "a FUSE mount of uid 4242 at /tmp/x (fuse.trap)", for evidence.
    pub fn describe(&self) -> String {
        let at = crate::escape::escape(&self.mount_point);
        match self.served() {
            Served::User { uid } => format!(
                "a FUSE mount{} at {at} ({}), served by a program",
                uid.map(|u| format!(" of uid {u}")).unwrap_or_default(),
                crate::escape::escape_str(&self.fs_type)
            ),
            Served::Network => format!(
                "a network file system at {at} ({}, from {})",
                crate::escape::escape_str(&self.fs_type),
                crate::escape::escape(&self.source)
            ),
            Served::Local => format!("{at} ({})", crate::escape::escape_str(&self.fs_type)),
        }
    }
}

/// Who serves a file system of this type and super options.
pub fn classify(fs_type: &str, super_options: &str) -> Served {
    if fs_type == "fuse" || fs_type == "fuseblk" || fs_type.starts_with("fuse.") {
        let uid = super_options
            .split(',')
            .find_map(|o| o.strip_prefix("user_id="))
            .and_then(|u| u.parse().ok());
        return Served::User { uid };
    }
    let base = fs_type.split('.').next().unwrap_or(fs_type);
    if NETWORK_FS.contains(&base) {
        return Served::Network;
    }
    Served::Local
}

/// Reads `/proc/PID/mountinfo` (`pid` may be `self`).
pub fn read(host: &Host, pid: &str) -> Vec<Mount> {
    host.read_text(format!("/proc/{pid}/mountinfo"))
        .map(|t| parse(&t))
        .unwrap_or_default()
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            let (maj, min) = pre.get(2)?.split_once(':')?;
            Some(Mount {
                id: pre.first()?.parse().ok()?,
                dev: (maj.parse().ok()?, min.parse().ok()?),
                root: unescape(pre.get(3)?),
                mount_point: unescape(pre.get(4)?),
                fs_type: post.first()?.to_string(),
                source: unescape(post.get(1).unwrap_or(&"")),
                super_options: post.get(2).unwrap_or(&"").to_string(),
                line: line.to_string(),
            })
        })
        .collect()
}

/// Decodes `\NNN` octal escapes.
pub fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("x"), 8)
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// One mount namespace's table, looked up by mount id and by device.
#[derive(Debug, Clone, Default)]
pub struct MountTable {
    pub mounts: Vec<Mount>,
}

impl MountTable {
    /// The table of `pid`'s mount namespace (`self` for Quarry's).
    pub fn read(host: &Host, pid: &str) -> MountTable {
        MountTable {
            mounts: read(host, pid),
        }
    }

    pub fn by_id(&self, id: u64) -> Option<&Mount> {
        self.mounts.iter().find(|m| m.id == id)
    }

    /// A mount of the file system on device `dev` (several mounts may share
    /// one: bind mounts; they share who serves it too).
    pub fn by_dev(&self, dev: (u32, u32)) -> Option<&Mount> {
        self.mounts.iter().find(|m| m.dev == dev)
    }

    /// Mounts whose data someone other than the kernel serves.
    pub fn remote(&self) -> impl Iterator<Item = &Mount> {
        self.mounts.iter().filter(|m| m.served().is_remote())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_and_who_serves_them() {
        let m = parse("36 35 98:0 /mnt1 /mnt\\040x rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n412 25 0:5 /tmp/empty /proc/4242 rw,relatime shared:1 - tmpfs tmpfs rw\n77 25 0:61 / /tmp/trap rw,nosuid,nodev - fuse.trap trap rw,user_id=4242,group_id=4242\n78 25 0:62 / /mnt/nfs rw - nfs4 srv:/export rw,vers=4.2\n");
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].mount_point, b"/mnt x");
        assert_eq!(m[0].fs_type, "ext3");
        assert_eq!(m[0].id, 36);
        assert_eq!(m[0].dev, (98, 0));
        assert_eq!(m[0].served(), Served::Local);
        assert_eq!(m[2].served(), Served::User { uid: Some(4242) });
        assert!(m[2]
            .describe()
            .contains("FUSE mount of uid 4242 at /tmp/trap"));
        assert_eq!(m[3].served(), Served::Network);
        assert_eq!(classify("fuseblk", "rw"), Served::User { uid: None });
        assert_eq!(classify("fusectl", "rw"), Served::Local);
        let t = MountTable { mounts: m };
        assert_eq!(t.by_dev((0, 61)).map(|m| m.id), Some(77));
        assert_eq!(t.remote().count(), 2);
        // A line without the separator, or with a bad device, is skipped.
        assert!(parse("1 2 x:y / / rw - ext4 a b\ngarbage\n").is_empty());
    }
}
