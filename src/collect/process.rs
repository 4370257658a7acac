//! Processes, read from `/proc/PID/*` by hand.
//!
//! Why not the `procfs` crate: its `stat` parser turns the process name into a
//! lossy UTF-8 `String`, and Quarry must keep hostile names byte-exact (they are
//! evidence, and escaping must be lossless). The formats read here are small and
//! stable (proc(5)); each constant below says where it comes from.

use std::collections::BTreeMap;
use std::io;

use serde::Serialize;

use crate::host::Host;

/// Names of shell programs (a watchdog loop or a cron line runs through one).
pub const SHELLS: &[&str] = &["sh", "bash", "dash", "ash", "zsh", "ksh"];

/// `PF_KTHREAD` in `/proc/PID/stat` field 9 (`flags`): set for kernel threads
/// (include/linux/sched.h). Kernel threads have no user-space executable.
pub const PF_KTHREAD: u32 = 0x0020_0000;

/// The fields of `/proc/PID/stat` Quarry uses (proc(5) numbering in comments).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProcStat {
    /// (1) pid
    pub pid: i32,
    /// (2) comm, raw bytes, at most 15 (TASK_COMM_LEN - 1)
    #[serde(skip)]
    pub comm: Vec<u8>,
    /// (3) state character
    pub state: char,
    /// (4) ppid
    pub ppid: i32,
    /// (5) pgrp: a process group keeps its PID held in the kernel's PID
    /// allocator after its leader exits
    pub pgrp: i32,
    /// (6) session: likewise
    pub session: i32,
    /// (9) flags (PF_*)
    pub flags: u32,
    /// (14) utime, clock ticks, all threads
    pub utime: u64,
    /// (15) stime
    pub stime: u64,
    /// (16) cutime: user time of waited-for children
    pub cutime: u64,
    /// (17) cstime
    pub cstime: u64,
    /// (19) nice
    pub nice: i64,
    /// (20) num_threads
    pub num_threads: i64,
    /// (22) starttime, clock ticks after boot
    pub starttime: u64,
}

impl ProcStat {
    /// utime + stime.
    pub fn cpu_ticks(&self) -> u64 {
        self.utime + self.stime
    }
    /// cutime + cstime.
    pub fn child_ticks(&self) -> u64 {
        self.cutime + self.cstime
    }
    pub fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }
}

/// Parses `/proc/PID/stat`. The name is between the first `(` and the *last*
/// `)`: a process can put `)` and spaces in its own name.
pub fn parse_stat(buf: &[u8]) -> Option<ProcStat> {
    let open = buf.iter().position(|b| *b == b'(')?;
    let close = buf.iter().rposition(|b| *b == b')')?;
    if close < open {
        return None;
    }
    let pid = std::str::from_utf8(&buf[..open])
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let comm = buf[open + 1..close].to_vec();
    let rest = std::str::from_utf8(buf.get(close + 2..)?).ok()?;
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    // f[0] is field 3, so field n is f[n - 3].
    let num = |n: usize| -> Option<u64> { f.get(n - 3)?.parse().ok() };
    let int = |n: usize| -> Option<i64> { f.get(n - 3)?.parse().ok() };
    Some(ProcStat {
        pid,
        comm,
        state: f.first()?.chars().next()?,
        ppid: int(4)? as i32,
        pgrp: int(5)? as i32,
        session: int(6)? as i32,
        flags: num(9)? as u32,
        utime: num(14)?,
        stime: num(15)?,
        cutime: int(16)?.max(0) as u64,
        cstime: int(17)?.max(0) as u64,
        nice: int(19)?,
        num_threads: int(20)?,
        starttime: num(22)?,
    })
}

/// Reads `/proc/PID/stat` (or `/proc/PID/task/TID/stat`).
pub fn read_stat(host: &Host, path: &str) -> io::Result<ProcStat> {
    let buf = host.read(path)?;
    parse_stat(&buf).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad stat"))
}

/// What `/proc/PID/exe` points to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exe {
    /// The link target exactly as the kernel gave it.
    pub link: Vec<u8>,
    /// The path without the kernel's " (deleted)" suffix.
    pub path: Vec<u8>,
    /// The file was unlinked while the process runs.
    pub deleted: bool,
    /// The executable is an anonymous memory file (`memfd_create`): no file on disk.
    pub memfd: bool,
    /// For a memfd on the live host: whether it is sealed against writing
    /// (`F_GET_SEALS`). Sealed memfds are what runc and systemd use.
    pub memfd_sealed: Option<bool>,
}

impl Exe {
    /// Interprets a link target.
    pub fn from_link(link: Vec<u8>) -> Exe {
        const DELETED: &[u8] = b" (deleted)";
        let (path, deleted) = match link.strip_suffix(DELETED) {
            Some(p) => (p.to_vec(), true),
            None => (link.clone(), false),
        };
        let memfd = path.starts_with(b"/memfd:");
        Exe {
            link,
            path,
            deleted,
            memfd,
            memfd_sealed: None,
        }
    }

    /// The file name (last path component).
    pub fn file_name(&self) -> &[u8] {
        if self.memfd {
            return &self.path[b"/memfd:".len()..];
        }
        basename(&self.path)
    }
}

/// The last component of a path.
pub fn basename(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// Why a piece of a process could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadError {
    /// EACCES/EPERM: not visible to this user.
    PermissionDenied,
    /// ENOENT/ESRCH: gone, or a kernel thread (no exe).
    Missing,
    Other,
}

impl From<&io::Error> for ReadError {
    fn from(e: &io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::PermissionDenied => ReadError::PermissionDenied,
            io::ErrorKind::NotFound => ReadError::Missing,
            _ if e.raw_os_error() == Some(rustix::io::Errno::SRCH.raw_os_error()) => {
                ReadError::Missing
            }
            _ => ReadError::Other,
        }
    }
}

/// One process as Quarry saw it.
#[derive(Debug, Clone)]
pub struct Process {
    pub pid: i32,
    pub stat: ProcStat,
    /// Owner (uid of the `/proc/PID` directory, which is the effective uid).
    pub uid: Option<u32>,
    /// argv, raw; empty for kernel threads and zombies.
    pub cmdline: Vec<Vec<u8>>,
    pub exe: Result<Exe, ReadError>,
    /// CPU share over the sampling interval, % of one CPU (like `top`), all
    /// threads summed.
    pub cpu_percent: f64,
    /// CPU ticks used during the interval.
    pub cpu_ticks_in_interval: u64,
    /// CPU over its whole life (its own threads, not children), % of one CPU,
    /// and its age in seconds: what a process paused while it is watched
    /// cannot hide from the sample's counters.
    pub lifetime: Option<(f64, f64)>,
    /// Read through a private procfs because the host's `/proc/PID` could not
    /// be read (something is mounted over it, or it is hidden from listings).
    pub recovered: bool,
}

impl Process {
    /// Reads a process; `None` if it vanished.
    pub fn read(host: &Host, pid: i32) -> Option<Process> {
        let dir = format!("/proc/{pid}");
        let stat = read_stat(host, &format!("{dir}/stat")).ok()?;
        let uid = host.stat(&dir).ok().map(|s| s.st_uid);
        let cmdline = host
            .read(format!("{dir}/cmdline"))
            .map(|b| split_nul(&b))
            .unwrap_or_default();
        let exe = match host.read_link(format!("{dir}/exe")) {
            Ok(link) => {
                let mut exe = Exe::from_link(link);
                if exe.memfd && host.is_live() {
                    exe.memfd_sealed = memfd_sealed(pid);
                }
                Ok(exe)
            }
            Err(e) => Err(ReadError::from(&e)),
        };
        Some(Process {
            pid,
            stat,
            uid,
            cmdline,
            exe,
            cpu_percent: 0.0,
            cpu_ticks_in_interval: 0,
            lifetime: None,
            recovered: false,
        })
    }

    pub fn name(&self) -> &[u8] {
        &self.stat.comm
    }

    /// argv[0], if any.
    pub fn argv0(&self) -> Option<&[u8]> {
        self.cmdline.first().map(Vec::as_slice)
    }

    pub fn is_kernel_thread(&self) -> bool {
        self.stat.is_kernel_thread()
    }

    /// The command line joined by spaces, lower-cased, for substring rules.
    pub fn cmdline_lower(&self) -> String {
        let joined = self.cmdline.join(&b' ');
        String::from_utf8_lossy(&joined).to_lowercase()
    }
}

/// Splits a NUL-separated buffer (`cmdline`, `environ`).
/// The value of one `Key:` line of `/proc/PID/status` (proc(5)), trimmed.
pub fn status_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|r| r.strip_prefix(':'))
            .map(str::trim)
    })
}

/// The path names in `/proc/PID/maps` (proc(5): address, perms, offset,
/// device, inode, then the path, which may hold spaces; the kernel appends
/// " (deleted)" to a deleted file's path).
pub fn mapped_paths(maps: &[u8]) -> std::collections::BTreeSet<Vec<u8>> {
    parse_maps(maps)
        .into_iter()
        .filter(|r| r.path.starts_with(b"/"))
        .map(|r| match r.path.strip_suffix(b" (deleted)") {
            Some(p) => p.to_vec(),
            None => r.path,
        })
        .collect()
}

/// One memory region of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    /// `rwxp` or `rwxs` (private or shared).
    pub perms: [u8; 4],
    /// The device of the mapped file (major, minor); (0, 0) for anonymous
    /// memory.
    pub dev: (u32, u32),
    pub inode: u64,
    /// The mapped file, `[heap]`, `[stack]`..., or empty for anonymous memory.
    pub path: Vec<u8>,
}

impl Region {
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// How evidence names it: its path, or "anonymous".
    pub fn label(&self) -> String {
        if self.path.is_empty() {
            "anonymous".into()
        } else {
            crate::escape::escape(&self.path)
        }
    }
}

/// Parses `/proc/PID/maps` (proc(5): `start-end perms offset dev inode path`,
/// the path padded with spaces and free to hold spaces itself).
pub fn parse_maps(maps: &[u8]) -> Vec<Region> {
    let mut out = Vec::new();
    for line in maps.split(|b| *b == b'\n') {
        let mut fields: Vec<&[u8]> = Vec::with_capacity(5);
        let mut rest = line;
        for _ in 0..5 {
            rest = rest.trim_ascii_start();
            let i = rest
                .iter()
                .position(|b| b.is_ascii_whitespace())
                .unwrap_or(rest.len());
            fields.push(&rest[..i]);
            rest = &rest[i..];
        }
        let hex = |b: &[u8]| u64::from_str_radix(std::str::from_utf8(b).ok()?, 16).ok();
        let Some((lo, hi)) = fields[0]
            .iter()
            .position(|b| *b == b'-')
            .and_then(|d| Some((hex(&fields[0][..d])?, hex(&fields[0][d + 1..])?)))
        else {
            continue;
        };
        let (Ok(perms), Some(inode)) = (
            <[u8; 4]>::try_from(fields[1]),
            std::str::from_utf8(fields[4])
                .ok()
                .and_then(|s| s.parse().ok()),
        ) else {
            continue;
        };
        let dev = std::str::from_utf8(fields[3])
            .ok()
            .and_then(|d| d.split_once(':'))
            .and_then(|(a, b)| {
                Some((
                    u32::from_str_radix(a, 16).ok()?,
                    u32::from_str_radix(b, 16).ok()?,
                ))
            })
            .unwrap_or((0, 0));
        out.push(Region {
            start: lo,
            end: hi,
            perms,
            dev,
            inode,
            path: rest.trim_ascii_start().to_vec(),
        });
    }
    out
}

pub fn split_nul(buf: &[u8]) -> Vec<Vec<u8>> {
    let buf = buf.strip_suffix(b"\0").unwrap_or(buf);
    if buf.is_empty() {
        return Vec::new();
    }
    buf.split(|b| *b == 0).map(<[u8]>::to_vec).collect()
}

/// Whether the memfd behind `/proc/PID/exe` is sealed against writes.
fn memfd_sealed(pid: i32) -> Option<bool> {
    use rustix::fs::{Mode, OFlags, SealFlags};
    let fd = rustix::fs::open(
        format!("/proc/{pid}/exe"),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let seals = rustix::fs::fcntl_get_seals(&fd).ok()?;
    Some(seals.intersects(SealFlags::WRITE | SealFlags::FUTURE_WRITE))
}

/// A light first pass: pid → stat, for CPU deltas.
pub fn read_all_stats(host: &Host, pids: &[i32]) -> BTreeMap<i32, ProcStat> {
    pids.iter()
        .filter_map(|&pid| Some((pid, read_stat(host, &format!("/proc/{pid}/stat")).ok()?)))
        .collect()
}

/// The first 12 characters of a container id, as `docker ps` shows it. Counted
/// in characters, never bytes: a cgroup name is chosen by whoever created it.
fn short_id(id: &str) -> String {
    id.chars().take(12).collect()
}

/// The systemd unit and container of a process, from `/proc/PID/cgroup`.
///
/// Uses the v2 line (`0::/path`) or, on v1, the `name=systemd` hierarchy. The
/// unit is the innermost `*.service` / `*.scope` / `*.slice` component; a
/// container is recognised from docker, containerd, podman (libpod), LXC and
/// Kubernetes path conventions.
pub fn cgroup_context(text: &[u8]) -> (Option<String>, Option<String>) {
    let text = String::from_utf8_lossy(text);
    let mut path = None;
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(id), Some(ctl), Some(p)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if id == "0" && ctl.is_empty() && p != "/" {
            path = Some(p.to_string());
            break;
        }
        if ctl == "name=systemd" {
            path = Some(p.to_string());
        }
    }
    let Some(path) = path else {
        return (None, None);
    };
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let unit = comps
        .iter()
        .rev()
        .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
        .or_else(|| comps.iter().rev().find(|c| c.ends_with(".slice")))
        .map(|c| crate::escape::escape(c.as_bytes()));
    let mut container = None;
    for (i, c) in comps.iter().enumerate() {
        for (prefix, kind) in [
            ("docker-", "docker"),
            ("libpod-", "podman"),
            ("cri-containerd-", "containerd"),
        ] {
            if let Some(id) = c
                .strip_prefix(prefix)
                .and_then(|r| r.strip_suffix(".scope"))
            {
                container = Some(format!("{kind} {}", short_id(id)));
            }
        }
        if (*c == "docker" || *c == "lxc" || *c == "lxc.payload") && i + 1 < comps.len() {
            let id = comps[i + 1];
            container = Some(format!(
                "{} {}",
                c.trim_end_matches(".payload"),
                short_id(id)
            ));
        }
        if let Some(name) = c.strip_prefix("lxc.payload.") {
            container = Some(format!("lxc {name}"));
        }
        if c.starts_with("kubepods") && container.is_none() {
            container = Some("kubernetes pod".into());
        }
    }
    (unit, container.map(|c| crate::escape::escape(c.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_units_and_containers() {
        // Multibyte names (a delegated subtree) never split a character.
        let (_, c) = cgroup_context("0::/docker/ééééééééééééé\n".as_bytes());
        assert_eq!(c.as_deref(), Some("docker éééééééééééé"));
        let (u, c) = cgroup_context(b"0::/system.slice/nginx.service\n");
        assert_eq!(u.as_deref(), Some("nginx.service"));
        assert!(c.is_none());
        let (u, c) = cgroup_context(
            b"12:pids:/x\n1:name=systemd:/system.slice/docker-0123456789abcdef.scope\n0::/\n",
        );
        assert_eq!(u.as_deref(), Some("docker-0123456789abcdef.scope"));
        assert_eq!(c.as_deref(), Some("docker 0123456789ab"));
        let (_, c) = cgroup_context(b"0::/lxc.payload.web1/init.scope\n");
        assert_eq!(c.as_deref(), Some("lxc web1"));
    }

    #[test]
    fn maps_and_status_fields() {
        let m = mapped_paths(b"7f00-7f01 r-xp 00000000 08:01 123   /usr/lib/a b.so\n7f01-7f02 rw-p 0 00:00 0 \n7f02-7f03 r-xp 0 08:01 9 /tmp/x.so (deleted)\n");
        assert!(m.contains(b"/usr/lib/a b.so".as_slice()));
        assert!(m.contains(b"/tmp/x.so".as_slice()));
        assert_eq!(m.len(), 2);
        assert_eq!(status_field("Name:\tx\nTgid:\t42\n", "Tgid"), Some("42"));
        assert_eq!(status_field("TgidX: 1\n", "Tgid"), None);
    }

    #[test]
    fn stat_with_hostile_name() {
        let line = b"4242 (a) b\n\x1b[31m) R 1 4242 4242 0 -1 4194560 1 0 0 0 250 50 7 3 20 0 3 0 12345 1000 10 18446744073709551615\n";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.pid, 4242);
        assert_eq!(s.comm, b"a) b\n\x1b[31m");
        assert_eq!(s.state, 'R');
        assert_eq!(s.ppid, 1);
        assert_eq!((s.utime, s.stime, s.cutime, s.cstime), (250, 50, 7, 3));
        assert_eq!(s.num_threads, 3);
        assert_eq!(s.starttime, 12345);
        assert!(!s.is_kernel_thread());
    }

    #[test]
    fn kernel_thread_flag() {
        let s = parse_stat(b"2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 1 0 0")
            .unwrap();
        assert!(s.is_kernel_thread());
    }

    #[test]
    fn exe_links() {
        let e = Exe::from_link(b"/var/tmp/tplink (deleted)".to_vec());
        assert!(e.deleted && !e.memfd);
        assert_eq!(e.file_name(), b"tplink");
        let m = Exe::from_link(b"/memfd:xmrig (deleted)".to_vec());
        assert!(m.memfd && m.deleted);
        assert_eq!(m.file_name(), b"xmrig");
    }

    #[test]
    fn nul_split() {
        assert_eq!(split_nul(b"a\0b c\0"), vec![b"a".to_vec(), b"b c".to_vec()]);
        assert!(split_nul(b"").is_empty());
    }

    #[test]
    fn reads_self() {
        let p = Process::read(&Host::default(), std::process::id() as i32).unwrap();
        assert!(p.exe.is_ok());
        assert!(!p.cmdline.is_empty());
    }
}
