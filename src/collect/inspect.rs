//! What a process carries: content signatures in its executable and its
//! private memory, and the miner configuration it reads.
//!
//! Names and command lines are the attacker's to choose; the code a miner runs
//! and the job it holds are not. For each process the scan selects (any miner
//! signal, or at least 50% of one CPU over the sample), Quarry:
//! - matches the signatures ([`super::signatures`]) against the executable,
//!   read through `/proc/PID/exe` so deleted and memfd executables work;
//! - matches them against the process's private memory: the regions of
//!   `/proc/PID/maps` that are readable, private and either anonymous, the
//!   heap, the stack, or the executable's own data, read with `pread` on
//!   `/proc/PID/mem`. Of regions larger than [`MAX_REGION`] (a RandomX dataset
//!   is 2080 MiB, its cache 256 MiB) only the first [`HUGE_REGION_HEAD`] is
//!   read, and at most [`MEM_BUDGET`]
//!   bytes are read per process; the evidence says what was skipped;
//! - looks for its miner configuration ([`super::minercfg`]).
//!
//! Memory is read only on the live machine (`/proc/PID/mem` of an offline
//! root means nothing) and needs ptrace access (root, and not
//! `kernel.yama.ptrace_scope = 3`); when denied, the evidence says so.

use std::collections::HashMap;

use serde::Serialize;

use super::minercfg::{self, MinerConfig};
use super::process::{parse_maps, Region};
use super::signatures::{Match, Signatures};
use crate::host::proc_root::ProcRoot;
use crate::host::{Found, Host};

/// Largest single memory region read. Miners' jobs, configs and unpacked code
/// live in the heap and small anonymous regions; the huge regions are hash
/// datasets (RandomX: 2080 MiB dataset, 256 MiB cache, per the RandomX
/// specification) whose bytes say nothing.
pub const MAX_REGION: u64 = 64 << 20;

/// How much of a region larger than [`MAX_REGION`] is read: its start.
pub const HUGE_REGION_HEAD: u64 = 4 << 20;

/// Most memory bytes read per process: bounds the added scan time (about
/// 10 ms per process at the measured matching speed, BENCHMARKS.md).
pub const MEM_BUDGET: u64 = 24 << 20;

/// Where a package manager installs programs (Filesystem Hierarchy
/// Standard 3.0: /usr, /opt, and the merged-/usr aliases /bin, /sbin, /lib*).
const PACKAGE_PLACES: &[&str] = &["/usr/", "/bin/", "/sbin/", "/lib", "/opt/"];

/// Largest executable matched (XMRig's static build is about 8 MiB).
pub const MAX_EXE: usize = 64 << 20;

/// Whether a region is one Quarry reads: readable, private, and anonymous,
/// heap, stack, or the executable's own data. Shared libraries and other
/// mapped files are files (judged as files elsewhere); kernel pages (`[vvar]`,
/// `[vdso]`, `[vsyscall]`) are the same in every process.
pub fn wanted_region(r: &Region, exe_path: Option<&[u8]>) -> bool {
    if r.perms[0] != b'r' || r.perms[3] != b'p' {
        return false;
    }
    if r.path.is_empty() || r.path == b"[heap]" || r.path.starts_with(b"[stack") {
        return true;
    }
    // The executable's writable data (unpacked code of some packers lands in
    // anonymous regions, covered above).
    exe_path.is_some_and(|e| r.path == e && r.perms[1] == b'w')
}

/// Where a process lives, when it is not where Quarry runs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Namespaces {
    /// Its network namespace (`net:[INODE]`) when it differs from Quarry's.
    pub netns: Option<String>,
    /// Its `NSpid` line (its PID in each nested PID namespace, outermost
    /// first) when it is in a child PID namespace.
    pub nspid: Option<String>,
    /// Its container and systemd unit, from `/proc/PID/cgroup`.
    pub container: Option<String>,
    pub unit: Option<String>,
}

/// The namespaces of `pid` (live machine only: an offline root's namespace
/// links mean nothing to this kernel).
fn namespaces(host: &Host, pid: i32, own_net: Option<&[u8]>) -> Namespaces {
    let mut ns = Namespaces::default();
    if !host.is_live() {
        return ns;
    }
    if let Ok(n) = host.read_link(format!("/proc/{pid}/ns/net")) {
        if Some(n.as_slice()) != own_net {
            ns.netns = Some(crate::escape::escape(&n));
        }
    }
    if let Ok(st) = host.read_text(format!("/proc/{pid}/status")) {
        ns.nspid = super::process::status_field(&st, "NSpid")
            .filter(|v| v.split_whitespace().count() > 1)
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "));
    }
    if let Ok(cg) = host.read(format!("/proc/{pid}/cgroup")) {
        (ns.unit, ns.container) = super::process::cgroup_context(&cg);
    }
    ns
}

/// What was found in one process.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Inspection {
    /// Signature matches in the executable file.
    pub exe_matches: Vec<Match>,
    /// Bytes of the executable matched (0 if unreadable).
    pub exe_bytes: u64,
    /// SHA-256 of the executable as read (when read whole), so that linking
    /// start-up lines to it needs no second read.
    pub exe_sha256: Option<String>,
    /// Why the executable was not matched, if it was not.
    pub exe_note: Option<String>,
    /// Signature matches in memory.
    pub mem_matches: Vec<Match>,
    /// Memory bytes read and matched, in how many regions.
    pub mem_bytes: u64,
    pub mem_regions: usize,
    /// What was not read, in words (huge regions, the budget, a denial).
    pub mem_skipped: Vec<String>,
    /// Miner configurations it reads.
    pub configs: Vec<MinerConfig>,
    /// A file its command line names (`-c FILE`) that does not exist.
    pub config_missing: Option<String>,
    /// What was not read because a user or another machine serves it (its
    /// executable, a memory region, a configuration), in words.
    pub not_read: Vec<String>,
    /// The executable is on a file system a user or another machine serves
    /// (in words): a hiding place of its own, and not read.
    pub exe_served: Option<String>,
    /// The executable as the process sees it, and the same inode as a path
    /// in Quarry's mount namespace (what `fix` quarantines); `None` when no
    /// host path leads to it.
    pub exe_view: Option<crate::host::BytePath>,
    pub exe_host: Option<crate::host::BytePath>,
    /// Where its files live when that is not Quarry's own root (a chroot or
    /// a container's mount namespace), in words.
    pub root: Option<String>,
    /// The process runs Quarry's own executable (device and inode): its
    /// memory holds Quarry's compiled rules, so memory matches are listed but
    /// not counted; everything else about it is judged.
    pub quarry_exe: bool,
    /// Its namespaces, when they are not Quarry's (a container's miner talks
    /// to its pool from its own network namespace).
    pub namespaces: Namespaces,
    /// What restarts it, linked by its exact executable (never by name):
    /// watchdog ancestors and start-up lines, in words.
    pub restarters: Vec<String>,
    /// The process was started during the sample by a linked watchdog.
    pub restart_seen: Option<String>,
    /// The dpkg package that installed the executable's path, and whether the
    /// file still matches the package's checksum (`None`: no checksum
    /// recorded, or the executable was replaced since). Looked up only when
    /// something in memory matched, or for a deleted executable.
    pub exe_package: Option<(String, Option<bool>)>,
    /// Time spent on this process, microseconds.
    pub took_us: u64,
}

/// What matching one executable gave: matches, bytes read, SHA-256.
type ExeResult = (Vec<Match>, u64, Option<String>);

/// Inspects the given processes of the snapshot.
pub fn inspect(
    host: &Host,
    sigs: &Signatures,
    snap: &super::Snapshot,
    pids: &[i32],
    deadline: Option<std::time::Instant>,
) -> HashMap<i32, Inspection> {
    let mut out = HashMap::new();
    let mut packages: Option<super::packages::Packages> = None;
    let own_net = host.read_link("/proc/self/ns/net").ok();
    let quarry_itself = host
        .is_live()
        .then(|| host.ident(b"/proc/self/exe"))
        .flatten();
    // Executables shared by several processes are matched once.
    let mut exe_cache: HashMap<(u64, u64, u64), ExeResult> = HashMap::new();
    for pid in pids {
        // The scan's deadline: the processes not reached are named by the
        // scan as not inspected.
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            break;
        }
        let Some(p) = snap.processes.get(pid) else {
            continue;
        };
        let t = std::time::Instant::now();
        let mapped_exe = p.exe.as_ref().ok().map(|e| e.link.as_slice());
        let mut ins = Inspection::default();
        let root = ProcRoot::open(host, *pid).ok();
        if let Some(r) = root.as_ref().filter(|r| !r.is_same()) {
            ins.root = Some(r.describe());
        }
        let exe_link = format!("/proc/{pid}/exe");
        // The executable, found through its link and checked for who serves
        // it before it is opened.
        let exe = match host.find(&exe_link, true) {
            Ok(f) => Some(f),
            Err(r) => {
                if r.is_remote() {
                    ins.exe_served = Some(r.describe());
                    ins.not_read.push(format!("executable: {}", r.describe()));
                }
                ins.exe_note = Some(format!("{exe_link}: {}", r.describe()));
                None
            }
        };
        let key = exe.as_ref().map(|f| {
            (
                rustix::fs::makedev(f.stat.stx_dev_major, f.stat.stx_dev_minor),
                f.stat.stx_ino,
                f.stat.stx_size,
            )
        });
        if let (Some(f), Some(r)) = (&exe, &root) {
            if let Ok(target) = host.read_link(&exe_link) {
                let view = r.view_of(&target);
                ins.exe_view = Some(crate::host::BytePath::new(view.clone()));
                let f2 = Found {
                    fd: match rustix::io::fcntl_dupfd_cloexec(&f.fd, 0) {
                        Ok(fd) => fd,
                        Err(_) => continue,
                    },
                    stat: f.stat,
                    real: view,
                };
                if !p.exe.as_ref().is_ok_and(|e| e.deleted || e.memfd) {
                    ins.exe_host = r.host_path(&f2).map(crate::host::BytePath::new);
                }
            }
        }
        ins.quarry_exe = key.is_some() && key == quarry_itself;
        if let Some(hit) = key.and_then(|k| exe_cache.get(&k)) {
            (ins.exe_matches, ins.exe_bytes, ins.exe_sha256) = hit.clone();
        } else if let Some(f) = &exe {
            match f
                .open_read()
                .and_then(|fd| crate::host::read_fd(&fd, MAX_EXE))
            {
                Ok(data) => {
                    ins.exe_matches = sigs.scan(&data, super::signatures::Place::File);
                    ins.exe_bytes = data.len() as u64;
                    if data.len() < MAX_EXE {
                        ins.exe_sha256 = Some(crate::collect::modules::sha256_hex(&data));
                    }
                    if let Some(k) = key {
                        exe_cache.insert(
                            k,
                            (
                                ins.exe_matches.clone(),
                                ins.exe_bytes,
                                ins.exe_sha256.clone(),
                            ),
                        );
                    }
                }
                Err(e) => ins.exe_note = Some(format!("{exe_link}: {e}")),
            }
        }
        if host.is_live() {
            read_memory(host, sigs, *pid, mapped_exe, &mut ins);
        }
        if let Some(r) = &root {
            let exe_view = p
                .exe
                .as_ref()
                .ok()
                .filter(|e| !e.memfd)
                .and(ins.exe_view.as_ref())
                .map(|v| v.as_bytes().to_vec());
            let found = minercfg::find(host, r, &p.cmdline, exe_view.as_deref(), p.uid);
            ins.configs = found.configs;
            ins.config_missing = found.named_missing;
            ins.not_read.extend(found.not_read);
        }
        ins.namespaces = namespaces(host, *pid, own_net.as_deref());
        let dogs = watchdogs(host, snap, *pid);
        // A restart seen during the sample: the process was not there at the
        // first reading, and its parent is a watchdog that runs its exact
        // executable and was there all along.
        let new_here = snap
            .first
            .get(pid)
            .is_none_or(|f| f.starttime != p.stat.starttime);
        let parent_dog =
            dogs.iter().any(|(w, _)| *w == p.stat.ppid) && snap.first.contains_key(&p.stat.ppid);
        if new_here && parent_dog {
            ins.restart_seen = Some(format!(
                "PID {pid} started during the {:.1} s sample, by its watchdog PID {} which was running before it: a restart",
                snap.elapsed.as_secs_f64(),
                p.stat.ppid
            ));
        }
        ins.restarters = dogs
            .into_iter()
            .map(|(w, how)| {
                let name = snap
                    .processes
                    .get(&w)
                    .map(|q| crate::escape::escape(q.name()))
                    .unwrap_or_default();
                format!("watchdog PID {w} ({name}), an ancestor whose command line runs {how}")
            })
            .collect();
        let deleted = p.exe.as_ref().is_ok_and(|e| e.deleted && !e.memfd);
        // dpkg installs only under these; loading its lists costs ~100 ms.
        let installable = p.exe.as_ref().is_ok_and(|e| {
            PACKAGE_PLACES
                .iter()
                .any(|d| e.path.starts_with(d.as_bytes()))
        });
        if installable && (!ins.mem_matches.is_empty() || deleted) {
            let pk = packages.get_or_insert_with(|| super::packages::Packages::load(host));
            if let Ok(e) = &p.exe {
                if let Some(owner) = pk.owner(&e.path) {
                    let ok = if deleted {
                        None
                    } else {
                        pk.md5_matches(host, owner, &e.path)
                    };
                    ins.exe_package = Some((owner.to_string(), ok));
                }
            }
        }
        ins.took_us = t.elapsed().as_micros() as u64;
        out.insert(*pid, ins);
    }
    out
}

/// Ancestors of `pid` whose command line runs its exact executable (the same
/// path, or a path to the same file), e.g. `sh -c 'while :; do /tmp/m; done'`,
/// with how they name it. Names never link: a miner called `sleep` must not
/// make every shell running `sleep` its watchdog.
pub fn watchdogs(host: &Host, snap: &super::Snapshot, pid: i32) -> Vec<(i32, String)> {
    let Some(Ok(exe)) = snap.processes.get(&pid).map(|p| p.exe.as_ref()) else {
        return Vec::new();
    };
    if exe.memfd {
        return Vec::new();
    }
    let exe_id = host
        .ident(format!("/proc/{pid}/exe").as_bytes())
        .map(|(d, i, _)| (d, i));
    let mut out = Vec::new();
    let mut cur = snap.processes.get(&pid).map(|p| p.stat.ppid);
    for _ in 0..32 {
        let Some(ppid) = cur.filter(|p| *p > 1) else {
            break;
        };
        let Some(q) = snap.processes.get(&ppid) else {
            break;
        };
        cur = Some(q.stat.ppid);
        let cmd = String::from_utf8_lossy(&q.cmdline.join(&b' ')).into_owned();
        let how = super::persistence::executed_words(&cmd)
            .iter()
            .find_map(|w| {
                if w.as_bytes() == exe.path.as_slice() {
                    return Some(format!(
                        "its exact path {}",
                        crate::escape::escape(w.as_bytes())
                    ));
                }
                let same = w.starts_with('/')
                    && exe_id.is_some()
                    && host.ident(w.as_bytes()).map(|(d, i, _)| (d, i)) == exe_id;
                same.then(|| {
                    format!(
                        "{}, the same file (device and inode)",
                        crate::escape::escape(w.as_bytes())
                    )
                })
            });
        if let Some(how) = how {
            out.push((ppid, how));
        }
    }
    out
}

/// Bytes gathered into one buffer before the matcher runs over them: small
/// regions are matched together (one pass for thousands of them).
const CHUNK: usize = 8 << 20;

/// The order in which regions are read until the budget is spent: where a
/// miner keeps its pool job and configuration first (the heap, then small
/// anonymous regions such as thread arenas' used parts, smallest first), the
/// stack and the executable's data next, a huge region's head last.
fn priority(r: &Region) -> (u8, u64) {
    let rank = if r.path == b"[heap]" {
        0
    } else if r.len() > MAX_REGION {
        4
    } else if r.path.is_empty() {
        1
    } else if r.path.starts_with(b"[stack") {
        2
    } else {
        3
    };
    (rank, r.len())
}

fn read_memory(host: &Host, sigs: &Signatures, pid: i32, exe: Option<&[u8]>, ins: &mut Inspection) {
    let maps = match host.read(format!("/proc/{pid}/maps")) {
        Ok(m) => parse_maps(&m),
        Err(e) => {
            ins.mem_skipped
                .push(format!("/proc/{pid}/maps unreadable: {e}"));
            return;
        }
    };
    let mem = match host.open_mem(pid) {
        Ok(f) => f,
        Err(e) => {
            ins.mem_skipped.push(format!(
                "/proc/{pid}/mem unreadable ({e}): memory not inspected"
            ));
            return;
        }
    };
    let classes = host.classes();
    let mut wanted: Vec<&Region> = Vec::new();
    let mut served_devs: Vec<((u32, u32), bool)> = Vec::new();
    for r in maps.iter().filter(|r| wanted_region(r, exe)) {
        // A region mapped from a file is read from that file where it was
        // never written: a page a FUSE server never serves would hold the
        // read for good (filemap_fault under /proc/PID/mem). Such regions
        // are named, not read.
        if r.dev != (0, 0) {
            let ok = match served_devs.iter().find(|(d, _)| *d == r.dev) {
                Some((_, ok)) => *ok,
                None => {
                    let ok = match classes.check(r.dev, &r.path) {
                        Ok(()) => true,
                        Err(refused) => {
                            ins.not_read.push(format!(
                                "memory region {:#x}-{:#x}: {}",
                                r.start,
                                r.end,
                                refused.describe()
                            ));
                            false
                        }
                    };
                    served_devs.push((r.dev, ok));
                    ok
                }
            };
            if !ok {
                continue;
            }
        }
        wanted.push(r);
    }
    wanted.sort_by_key(|r| priority(r));
    let mut budget = MEM_BUDGET;
    let (mut over_budget, mut over_bytes) = (0usize, 0u64);
    let mut buf: Vec<u8> = Vec::new();
    let mut parts: Vec<super::signatures::Part> = Vec::new();
    let flush =
        |buf: &mut Vec<u8>, parts: &mut Vec<super::signatures::Part>, ins: &mut Inspection| {
            if !parts.is_empty() {
                ins.mem_matches.extend(sigs.scan_memory(buf, parts));
            }
            buf.clear();
            parts.clear();
        };
    for r in wanted {
        // A huge region is read only at its start, where a heap keeps its
        // first allocations (configuration, pool job); a hash dataset's
        // bytes past that say nothing.
        let want = if r.len() > MAX_REGION {
            ins.mem_skipped.push(format!(
                "{} region {:#x}-{:#x} ({} MiB) read only in its first {} MiB (larger than {} MiB, as a hash dataset is)",
                r.label(),
                r.start,
                r.end,
                r.len() >> 20,
                HUGE_REGION_HEAD >> 20,
                MAX_REGION >> 20
            ));
            HUGE_REGION_HEAD
        } else {
            r.len()
        };
        if want > budget {
            over_budget += 1;
            over_bytes += want;
            continue;
        }
        budget -= want;
        if buf.len() + want as usize > CHUNK && !parts.is_empty() {
            flush(&mut buf, &mut parts, ins);
        }
        let at = buf.len();
        buf.resize(at + want as usize, 0);
        let n = crate::host::pread_all(&mem, &mut buf[at..], r.start);
        buf.truncate(at + n);
        if n == 0 {
            continue;
        }
        ins.mem_bytes += n as u64;
        ins.mem_regions += 1;
        parts.push(super::signatures::Part {
            offset: at,
            start: r.start,
            label: r.label(),
            writable: r.perms[1] == b'w',
        });
        buf.resize(buf.len() + super::signatures::PART_GAP, 0);
    }
    flush(&mut buf, &mut parts, ins);
    if over_budget > 0 {
        ins.mem_skipped.push(format!(
            "{over_budget} regions ({} MiB) beyond the {} MiB read per process",
            over_bytes >> 20,
            MEM_BUDGET >> 20
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines() {
        let text =
            b"55d0c0a00000-55d0c0a21000 rw-p 00000000 00:00 0                          [heap]\n\
7f00aa000000-7f01aa000000 rw-p 00000000 00:00 0 \n\
7f01bb000000-7f01bb001000 r-xp 00002000 fe:01 131 /usr/lib/x86_64-linux-gnu/libc.so.6\n\
7f01cc000000-7f01cc001000 rw-p 00003000 fe:01 99 /tmp/.x/my miner (deleted)\n\
garbage line\n";
        let m = parse_maps(text);
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].path, b"[heap]");
        assert!(m[1].path.is_empty());
        assert_eq!(m[1].len(), 0x1_0000_0000);
        assert_eq!(m[3].path, b"/tmp/.x/my miner (deleted)");
        assert!(wanted_region(&m[0], None));
        assert!(wanted_region(&m[1], None));
        assert!(!wanted_region(&m[2], None));
        assert!(wanted_region(&m[3], Some(b"/tmp/.x/my miner (deleted)")));
        assert!(!wanted_region(&m[3], Some(b"/usr/bin/x")));
    }
}
