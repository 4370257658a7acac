//! Reading a process's argument and environment strings without faulting
//! in a page somebody serves.
//!
//! `/proc/PID/cmdline` and `/proc/PID/environ` are not kernel copies: the
//! kernel reads them out of the process's own memory (fs/proc/base.c
//! `get_mm_cmdline`, `environ_read` → `access_remote_vm`), between the
//! addresses fields 48–51 of `/proc/PID/stat` give. A process can map a file
//! over those pages (`mmap(MAP_FIXED)` over its own stack), and if the file
//! is on a FUSE mount its owner serves and never answers, the read sleeps
//! for good in `filemap_fault` — in every tool that lists processes.
//!
//! So before those files are read, the pages are looked up in
//! `/proc/PID/pagemap` (which walks page tables and faults nothing in:
//! Documentation/admin-guide/mm/pagemap.rst): a present anonymous page or a
//! swapped one is the kernel's to give. Anything else (not present yet, or
//! backed by a file or shared memory) is checked against the process's
//! memory map: every region under the strings must be anonymous or on a
//! file system the kernel serves.

use std::io;

use rustix::fs::{Mode, OFlags};

use super::Host;

/// Pagemap entry bits (pagemap.rst): page present, swapped, file-page or
/// shared-anonymous.
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAP: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;

/// Most pages of one string area looked up (ARG_MAX-sized command lines
/// are 512 pages; the kernel reads at most what the range holds).
const MAX_PAGES: u64 = 1024;

/// Which of a process's string areas a procfs file reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strings {
    /// `cmdline`: the argument area (and the environment area, which
    /// `get_mm_cmdline` also reads when a process rewrote its arguments).
    Arguments,
    /// `environ`.
    Environment,
}

/// What `/proc/.../cmdline` or `/proc/.../environ` path reads, with the
/// process's directory (`/proc/PID` or `/proc/PID/task/TID`).
pub fn strings_of(path: &[u8]) -> Option<(&[u8], Strings)> {
    let (dir, which) = if let Some(d) = path.strip_suffix(b"/cmdline") {
        (d, Strings::Arguments)
    } else if let Some(d) = path.strip_suffix(b"/environ") {
        (d, Strings::Environment)
    } else {
        return None;
    };
    let rest = dir.strip_prefix(b"/proc/")?;
    let first = rest.split(|b| *b == b'/').next()?;
    (first == b"self" || super::parse_pid(first).is_some()).then_some((dir, which))
}

/// `Ok` when reading the strings of the process at `dir` cannot wait on a
/// file system somebody serves; the reason otherwise.
pub fn check(host: &Host, dir: &[u8], which: Strings) -> io::Result<()> {
    let dir = std::str::from_utf8(dir).map_err(|_| io::ErrorKind::InvalidInput)?;
    let stat = super::read_regular(&host.path(format!("{dir}/stat")), 4096)?;
    let Some(ranges) = areas(&stat, which) else {
        return Ok(()); // a kernel thread or a zombie: nothing to read
    };
    let pagemap = rustix::fs::open(
        host.path(format!("{dir}/pagemap")),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let page = rustix::param::page_size() as u64;
    let mut unsure = false;
    for &(start, end) in &ranges {
        if end <= start {
            continue;
        }
        let first = start / page;
        let n = ((end - 1) / page - first + 1).min(MAX_PAGES);
        let mut buf = vec![0u8; (n * 8) as usize];
        let got = super::pread_all(&pagemap, &mut buf, first * 8);
        if got < buf.len() {
            unsure = true;
            break;
        }
        for e in buf.chunks_exact(8) {
            let v = u64::from_le_bytes(e.try_into().expect("8 bytes"));
            let kernels = (v & PM_PRESENT != 0 && v & PM_FILE == 0) || v & PM_SWAP != 0;
            if !kernels {
                unsure = true;
            }
        }
    }
    if !unsure {
        return Ok(());
    }
    // Some page may come from a file: every region under the strings must
    // be anonymous or on a file system the kernel serves.
    let maps = super::read_regular(&host.path(format!("{dir}/maps")), super::MAX_READ)?;
    let regions = crate::collect::process::parse_maps(&maps);
    for &(start, end) in &ranges {
        for r in regions.iter().filter(|r| r.start < end && r.end > start) {
            if r.dev == (0, 0) {
                continue;
            }
            if let Err(refused) = host.classes().check(r.dev, &r.path) {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{dir}: its {} lie in memory mapped from a file: {}",
                        match which {
                            Strings::Arguments => "command line strings",
                            Strings::Environment => "environment strings",
                        },
                        refused.describe()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The address ranges a read of `which` touches, from `/proc/PID/stat`
/// fields 48–51 (arg_start, arg_end, env_start, env_end; proc(5), Linux
/// 3.5+); `None` when they are zero (kernel threads, zombies) or absent.
fn areas(stat: &[u8], which: Strings) -> Option<Vec<(u64, u64)>> {
    let close = stat.iter().rposition(|b| *b == b')')?;
    let rest = std::str::from_utf8(stat.get(close + 2..)?).ok()?;
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    // f[0] is field 3.
    let num = |n: usize| -> Option<u64> { f.get(n - 3)?.parse().ok() };
    let (a0, a1, e0, e1) = (num(48)?, num(49)?, num(50)?, num(51)?);
    if a0 == 0 && e0 == 0 {
        return None;
    }
    Some(match which {
        Strings::Arguments => vec![(a0, a1), (e0, e1)],
        Strings::Environment => vec![(e0, e1)],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_files_read_process_memory() {
        assert_eq!(
            strings_of(b"/proc/12/cmdline"),
            Some((&b"/proc/12"[..], Strings::Arguments))
        );
        assert_eq!(
            strings_of(b"/proc/12/task/13/environ"),
            Some((&b"/proc/12/task/13"[..], Strings::Environment))
        );
        assert_eq!(strings_of(b"/proc/cmdline"), None);
        assert_eq!(strings_of(b"/etc/environ"), None);
    }

    #[test]
    fn own_strings_are_the_kernels() {
        let h = Host::default();
        check(&h, b"/proc/self", Strings::Arguments).unwrap();
        check(&h, b"/proc/self", Strings::Environment).unwrap();
    }
}
