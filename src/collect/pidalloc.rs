//! The PID allocator's view: which PIDs the kernel holds, asked without any
//! lookup by PID.
//!
//! A rootkit that hooks every lookup by PID (`kill`, `getpgid`, `/proc/PID`,
//! `pidfd_open`, `find_pid_ns`) still cannot make the allocator hand out a PID
//! that a hidden task holds. `clone3()` with `set_tid` (Linux 5.5) asks for one
//! exact PID: the kernel answers `EEXIST` when the PID is taken
//! (`alloc_pid()` in kernel/pid.c: `idr_alloc()` → `-ENOSPC` → `-EEXIST`).
//!
//! No process is ever created. The probe runs in a forked helper whose file
//! descriptor table is full (`RLIMIT_NOFILE` lowered to the descriptors it
//! already has) and asks for `CLONE_PIDFD`: in `copy_process()` the pidfd is
//! allocated *after* `alloc_pid()`, so a free PID fails with `EMFILE` and is
//! released at once, while a held PID fails earlier with `EEXIST`. Should a
//! kernel ever create the child anyway, the child's first instruction is
//! `exit` (see [`clone3_probe`]) and the helper reaps it.
//!
//! Cost, measured (BENCHMARKS.md §9): one probe is one failed `clone3`, a few
//! microseconds; only PIDs that no other view explains are probed.

use std::time::{Duration, Instant};

/// Why the allocator could not be asked.
#[derive(Debug, Clone)]
pub struct NotApplicable(pub String);

/// The answer for a set of PIDs.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    /// PIDs the allocator holds.
    pub held: Vec<i32>,
    /// PIDs asked.
    pub probed: usize,
    /// Children the kernel created despite the full descriptor table (should
    /// be 0; each exited at once).
    pub created: usize,
    /// Quarry's own helper processes (held while they ran: not hidden).
    pub helpers: Vec<i32>,
    pub took: Duration,
    /// The deadline stopped the helpers before they had asked about every PID.
    pub cut: bool,
}

// Outcome codes written by the helper, one byte per PID.
const UNASKED: u8 = 0;
const FREE: u8 = 1;
const HELD: u8 = 2;
const CREATED: u8 = 3;
const NO_CLONE3: u8 = 4;
const DENIED: u8 = 5;
const OTHER: u8 = 6;

/// `struct clone_args` (include/uapi/linux/sched.h), version 2 (size 88).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Asks the allocator about each PID (all in Quarry's own PID namespace),
/// split over `workers` helpers. Needs root (CAP_SYS_ADMIN or
/// CAP_CHECKPOINT_RESTORE for `set_tid`), x86-64 and Linux ≥ 5.5.
pub fn probe(
    pids: &[i32],
    workers: usize,
    deadline: Option<Instant>,
) -> Result<Answer, NotApplicable> {
    let t0 = Instant::now();
    if pids.is_empty() {
        return Ok(Answer::default());
    }
    if !cfg!(target_arch = "x86_64") {
        return Err(NotApplicable(
            "the PID-allocator probe is implemented for x86-64 only".into(),
        ));
    }
    let codes = SharedBytes::new(pids.len())
        .map_err(|e| NotApplicable(format!("mmap for the PID-allocator probe: {e}")))?;
    let workers = workers.clamp(1, 8).min(pids.len());
    let chunk = pids.len().div_ceil(workers);
    let mut children = Vec::new();
    for w in 0..workers {
        let lo = w * chunk;
        let hi = ((w + 1) * chunk).min(pids.len());
        if lo >= hi {
            break;
        }
        // SAFETY: the child only makes raw system calls on memory that exists
        // before the fork (no allocation, no locks) and ends with _exit.
        let child = unsafe { libc::fork() };
        if child < 0 {
            break;
        }
        if child == 0 {
            // SAFETY: see above; `codes` is a shared mapping of pids.len() bytes.
            unsafe { helper(&pids[lo..hi], codes.ptr.add(lo)) };
        }
        children.push(child);
    }
    let cut = wait_helpers(&children, deadline);
    let mut a = Answer {
        helpers: children,
        cut,
        ..Answer::default()
    };
    let bytes = codes.as_slice();
    let mut refused = None;
    for (i, &code) in bytes.iter().enumerate() {
        match code {
            HELD if !a.helpers.contains(&pids[i]) => a.held.push(pids[i]),
            FREE => {}
            CREATED => a.created += 1,
            NO_CLONE3 => refused = Some("clone3() is not available (ENOSYS: kernel before 5.3, or a seccomp filter)"),
            DENIED => refused = Some("clone3() with set_tid was refused (EPERM: needs CAP_SYS_ADMIN in this PID namespace's user namespace)"),
            OTHER => refused = Some("clone3() with set_tid gave an unexpected error (kernel before 5.5?)"),
            UNASKED if !cut => refused = Some("a PID-allocator helper did not finish"),
            _ => {}
        }
        if code != UNASKED {
            a.probed += 1;
        }
    }
    if let Some(r) = refused {
        if a.held.is_empty() && a.probed < pids.len() / 2 {
            return Err(NotApplicable(r.into()));
        }
    }
    a.took = t0.elapsed();
    Ok(a)
}

/// Waits for the helpers; at the deadline, kills the ones still asking
/// (their PIDs not reached stay unasked). True when some were killed.
fn wait_helpers(children: &[i32], deadline: Option<Instant>) -> bool {
    let mut left: Vec<i32> = children.to_vec();
    let mut cut = false;
    while !left.is_empty() {
        left.retain(|&c| {
            let mut status = 0;
            let flags = if deadline.is_some() { libc::WNOHANG } else { 0 };
            // SAFETY: waiting for our own child; `status` is a valid int.
            let r = unsafe { libc::waitpid(c, &mut status, flags) };
            r == 0
        });
        if left.is_empty() {
            break;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            for &c in &left {
                // SAFETY: our own child, not yet waited for (its PID is ours).
                unsafe { libc::kill(c, libc::SIGKILL) };
                let mut status = 0;
                // SAFETY: as above.
                unsafe { libc::waitpid(c, &mut status, 0) };
            }
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cut
}

/// The forked helper: fills its descriptor table, then asks about each PID.
///
/// # Safety
/// Runs in a child of a multi-threaded process: raw system calls only.
/// `out` must point at `pids.len()` writable shared bytes.
unsafe fn helper(pids: &[i32], out: *mut u8) -> ! {
    // Descriptors 0, 1 and 2 open (onto one another, or a new pipe), then a
    // soft limit of 3: the kernel has no free descriptor for a pidfd.
    let mut any = -1;
    for fd in 0..3 {
        if libc::fcntl(fd, libc::F_GETFD) >= 0 {
            any = fd;
        }
    }
    if any < 0 {
        let mut p = [0i32; 2];
        if libc::pipe(p.as_mut_ptr()) != 0 {
            libc::_exit(1);
        }
        any = p[0];
    }
    for fd in 0..3 {
        if libc::fcntl(fd, libc::F_GETFD) < 0 {
            libc::dup2(any, fd);
        }
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    lim.rlim_cur = 3;
    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
        libc::_exit(1);
    }
    let mut pidfd: i32 = -1;
    for (i, &pid) in pids.iter().enumerate() {
        let tid: i32 = pid;
        let args = CloneArgs {
            flags: (libc::CLONE_VM
                | libc::CLONE_FS
                | libc::CLONE_FILES
                | libc::CLONE_SIGHAND
                | libc::CLONE_SYSVSEM
                | libc::CLONE_PIDFD) as u64,
            pidfd: &mut pidfd as *mut i32 as u64,
            exit_signal: libc::SIGCHLD as u64,
            set_tid: &tid as *const i32 as u64,
            set_tid_size: 1,
            ..CloneArgs::default()
        };
        let r = clone3_probe(&args);
        let code = match r {
            r if r > 0 => {
                let mut st = 0;
                libc::waitpid(r as i32, &mut st, libc::__WALL);
                if pidfd >= 0 {
                    libc::close(pidfd);
                    pidfd = -1;
                }
                CREATED
            }
            r if r == -(libc::EEXIST as isize) => HELD,
            r if r == -(libc::EMFILE as isize) => FREE,
            r if r == -(libc::ENOSYS as isize) => NO_CLONE3,
            r if r == -(libc::EPERM as isize) => DENIED,
            _ => OTHER,
        };
        *out.add(i) = code;
        if matches!(code, NO_CLONE3 | DENIED | OTHER) {
            break;
        }
    }
    libc::_exit(0)
}

/// `clone3(args)`. The new task, if one is ever created, shares the helper's
/// memory and stack, so its first and only instruction path is `exit(0)`
/// straight after the system call, touching no memory at all.
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_probe(args: &CloneArgs) -> isize {
    let ret: isize;
    std::arch::asm!(
        "syscall",
        "test rax, rax",
        "jnz 2f",
        "mov eax, 60",
        "xor edi, edi",
        "syscall",
        "2:",
        inlateout("rax") libc::SYS_clone3 as isize => ret,
        inlateout("rdi") args as *const CloneArgs as usize => _,
        in("rsi") std::mem::size_of::<CloneArgs>(),
        lateout("rcx") _,
        lateout("r11") _,
        options(nostack),
    );
    ret
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn clone3_probe(_args: &CloneArgs) -> isize {
    -(libc::ENOSYS as isize)
}

/// An anonymous shared mapping the helpers write their answers into.
struct SharedBytes {
    ptr: *mut u8,
    len: usize,
}

impl SharedBytes {
    fn new(len: usize) -> std::io::Result<SharedBytes> {
        // SAFETY: a fresh anonymous mapping; checked for MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(SharedBytes { ptr: p.cast(), len })
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is len bytes, zero-filled, alive while self is;
        // the helpers that wrote it have exited.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for SharedBytes {
    fn drop(&mut self) {
        // SAFETY: unmapping what new() mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PID 1 and Quarry's own PID are held; a PID beyond every running task
    /// is not (when run as root on x86-64; otherwise not applicable).
    #[test]
    fn held_and_free() {
        let me = std::process::id() as i32;
        let pid_max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(32768);
        let free = (2..pid_max)
            .rev()
            .find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
            .unwrap();
        match probe(&[1, me, free], 2, None) {
            Ok(a) => {
                assert_eq!(a.probed, 3);
                assert_eq!(a.created, 0, "a child was created");
                assert!(a.held.contains(&1), "{a:?}");
                assert!(a.held.contains(&me), "{a:?}");
                assert!(!a.held.contains(&free), "{a:?}");
            }
            Err(e) => {
                assert!(!rustix::process::geteuid().is_root(), "as root: {}", e.0);
            }
        }
    }
}

#[cfg(test)]
mod cost {
    /// `cargo test --release --lib pidalloc::cost -- --ignored --nocapture`:
    /// the time to ask about every PID from 2 to pid_max (bench/rootkit.sh).
    #[test]
    #[ignore]
    fn whole_range() {
        let pid_max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let pids: Vec<i32> = (2..pid_max).collect();
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let a = super::probe(&pids, workers, None).unwrap();
        println!(
            "pid_max {pid_max}: {} probed, {} held, {} created, {:.1} ms ({:.2} µs per PID)",
            a.probed,
            a.held.len(),
            a.created,
            a.took.as_secs_f64() * 1e3,
            a.took.as_secs_f64() * 1e6 / a.probed as f64
        );
    }
}
