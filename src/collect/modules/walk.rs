//! The module-file walk: bounded in depth, entries and time, on every CPU.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::cache::{key_of, Cache, DirCache, DirRecord, Judged, Key, SeenDir, RACY_SECONDS};
use super::identify::{elf_type, inspect, inspect_shell, shell_from_statx, ModuleFile};
use crate::host::{bytes_to_path, Host};

/// Where the walk looks by default (`--module-path` replaces it).
pub const DEFAULT_WALK_ROOTS: &[&str] = &[
    "/lib/udev",
    "/tmp",
    "/var/tmp",
    "/dev/shm",
    "/etc",
    "/root",
    "/usr/lib",
    "/usr/local",
    "/home",
    "/opt",
    "/srv",
    "/var/lib",
];

/// Directories never walked: the kernels' own module trees (package-managed,
/// every installed kernel's), debug symbols, and virtual filesystems.
const SKIP_DIRS: &[&str] = &[
    "/lib/modules",
    "/usr/lib/modules",
    "/usr/lib/debug",
    "/proc",
    "/sys",
    // Container engines' image layers and volumes: whole filesystems of
    // other machines, judged when those containers run, not as files here.
    "/var/lib/docker",
    "/var/lib/containerd",
    "/var/lib/containers",
    // Package databases: lists and checksums, no programs.
    "/var/lib/dpkg",
    "/var/lib/apt",
];

/// Limits of the walk, so a huge disk cannot stall a scan.
#[derive(Debug, Clone)]
pub struct WalkLimits {
    pub max_depth: usize,
    pub max_entries: usize,
    pub max_time: Duration,
    /// When a walk still running is raised from nice 19 back to 0: the end
    /// of the CPU sample it runs beside (the scan sets it).
    pub raise_after: Duration,
}

impl Default for WalkLimits {
    fn default() -> Self {
        WalkLimits {
            max_depth: 16,
            max_entries: 400_000,
            max_time: Duration::from_secs(10),
            raise_after: RAISE_AFTER,
        }
    }
}

/// Largest file sniffed for an ELF header when its name does not say `.ko`.
const MAX_SNIFF_SIZE: u64 = 16 * 1024 * 1024;

/// Statistics of the walk.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WalkStats {
    pub roots: Vec<String>,
    pub dirs: usize,
    pub files: usize,
    pub sniffed: usize,
    /// Directories whose listing came from the cache (unchanged since a
    /// previous walk listed them), not read again.
    pub dirs_cached: usize,
    /// Files read and judged in this walk.
    pub inspected: usize,
    /// Files whose judgement came from the cache (not read).
    pub cached: usize,
    #[serde(skip)]
    seen_modules: Vec<(Key, Judged)>,
    #[serde(skip)]
    seen_not: Vec<Key>,
    #[serde(skip)]
    seen_dirs: Vec<SeenDir>,
    pub truncated: Option<String>,
    /// Directories and files not walked because a user or another machine
    /// serves them (FUSE, NFS, ...), in words.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_walked: Vec<String>,
    /// Who serves each device met (per worker).
    #[serde(skip)]
    devs: Vec<((u32, u32, u64), bool)>,
    pub elapsed_ms: f64,
}

/// A directory to walk (raw path bytes) and its depth.
type DirItem = (Vec<u8>, usize);

/// What every directory of one walk is judged with.
#[derive(Clone, Copy)]
struct Walker<'a> {
    host: &'a Host,
    cache: &'a Cache,
    dir_cache: &'a DirCache,
    racy_before: u64,
    limits: &'a WalkLimits,
    skip: &'a [Vec<u8>],
    deadline: Instant,
}

/// A worker's reusable path buffers: a candidate's path, and any path with
/// its NUL for a stat.
#[derive(Default)]
struct Scratch {
    path: Vec<u8>,
    c: Vec<u8>,
}

/// The directories waiting for a worker, and how many workers wait.
struct Queue {
    dirs: Vec<DirItem>,
    idle: usize,
}

/// The walk's shared queue. Each worker walks depth-first from its own stack
/// and hands half of it over only when another worker is idle: a shared
/// queue touched for every directory cost a lock, and a wake-up, per
/// directory (63,000 futex calls for 29,000 directories in one profile).
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// `Queue::idle`, readable without the lock.
    idle: AtomicUsize,
    stop: AtomicBool,
    workers: usize,
}

impl Shared {
    /// The next directory from the shared queue, waiting while other workers
    /// may still add some; `None` when the walk is over (every worker idle
    /// with nothing queued) or stopped.
    fn take(&self) -> Option<DirItem> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return None;
            }
            if let Some(item) = q.dirs.pop() {
                return Some(item);
            }
            q.idle += 1;
            self.idle.store(q.idle, Ordering::Relaxed);
            if q.idle == self.workers {
                // Every worker is here with an empty stack: nothing is left.
                self.stop.store(true, Ordering::Relaxed);
                self.wake.notify_all();
                return None;
            }
            q = self.wake.wait(q).unwrap_or_else(|e| e.into_inner());
            q.idle -= 1;
            self.idle.store(q.idle, Ordering::Relaxed);
        }
    }

    /// Hands the older half of a worker's stack (the shallower directories,
    /// the larger subtrees) to idle workers, if any.
    fn offer(&self, local: &mut Vec<DirItem>) {
        if local.len() < 2 || self.idle.load(Ordering::Relaxed) == 0 {
            return;
        }
        let half: Vec<DirItem> = local.drain(..local.len() / 2).collect();
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.dirs.extend(half);
        self.wake.notify_all();
    }

    /// Stops every worker (a limit was reached).
    fn halt(&self) {
        let _q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        self.stop.store(true, Ordering::Relaxed);
        self.wake.notify_all();
    }
}

/// Finds kernel module files under `roots`, on every CPU: each worker walks
/// from its own stack and shares through [`Shared`] when another is idle (the
/// walk is bound by `getdents64` and `stat` system calls, which run in
/// parallel). Writes the caches before returning.
pub fn find_files(
    host: &Host,
    roots: &[String],
    limits: &WalkLimits,
) -> (Vec<ModuleFile>, WalkStats) {
    let (out, stats, save) = find_files_deferred(host, roots, limits);
    save.write();
    (out, stats)
}

/// The caches a walk updates, left to write after its results are handed
/// over: the scan judges them meanwhile (writing megabytes of directory
/// listings was on the critical path of an `--interval 0` scan).
pub struct PendingSave {
    cache: Cache,
    dir_cache: DirCache,
    seen_modules: Vec<(Key, Judged)>,
    seen_not: Vec<Key>,
    /// `None` when the walk was cut short (what it did not see is kept).
    seen_dirs: Option<Vec<SeenDir>>,
    modules_changed: bool,
}

impl PendingSave {
    pub fn write(self) {
        if let Some(dirs) = self.seen_dirs {
            self.dir_cache.save(dirs);
        }
        if self.modules_changed {
            self.cache.save(self.seen_modules, self.seen_not);
        }
    }
}

/// The walk's niceness during the CPU sample (the lowest priority).
const WALK_NICE: i32 = 19;

/// When a walk still running is raised back to nice 0, unless the scan
/// says (the end of its sample).
pub const RAISE_AFTER: Duration = Duration::from_secs(2);

/// Sets the calling thread's niceness (setpriority(2) with `PRIO_PROCESS`
/// and a thread id acts on that thread alone on Linux). Raising it back
/// needs CAP_SYS_NICE; without it the thread stays where it was.
fn set_thread_nice(nice: i32) {
    let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice);
}

/// [`find_files`], with the caches written by the caller through the
/// returned [`PendingSave`].
pub fn find_files_deferred(
    host: &Host,
    roots: &[String],
    limits: &WalkLimits,
) -> (Vec<ModuleFile>, WalkStats, PendingSave) {
    let t0 = Instant::now();
    let cache = Cache::load(host);
    let dir_cache = DirCache::load(host);
    // Directories whose times are this recent are listed, not stored.
    let racy_before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        .saturating_sub(RACY_SECONDS * 1_000_000_000);
    // Roots inside other roots (after resolving links: /lib/udev is
    // /usr/lib/udev on merged-/usr systems) are walked under their own name,
    // which is the path an administrator knows, and skipped in the outer
    // walk. Inside a tree no link is followed, so no directory needs a stat to
    // be recognised twice.
    let canon: Vec<Option<std::path::PathBuf>> = roots
        .iter()
        .map(|r| host.find(r, true).ok().map(|f| bytes_to_path(&f.real)))
        .collect();
    let mut start: Vec<DirItem> = Vec::new();
    let mut skip: Vec<Vec<u8>> = Vec::new();
    for (i, r) in roots.iter().enumerate() {
        let Some(c) = &canon[i] else { continue };
        if canon[..i].iter().any(|o| o.as_ref() == Some(c)) {
            continue; // the same directory named twice
        }
        start.push((r.as_bytes().to_vec(), 0usize));
        for (j, o) in canon.iter().enumerate() {
            let Some(o) = o else { continue };
            if j != i && o != c {
                if let Ok(rest) = o.strip_prefix(c) {
                    // roots[j] lies inside r: r's walk skips it.
                    let mut s = r.trim_end_matches('/').as_bytes().to_vec();
                    s.push(b'/');
                    s.extend_from_slice(rest.as_os_str().as_encoded_bytes());
                    skip.push(s);
                }
            }
        }
    }
    start.reverse();
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4);
    let shared = Shared {
        queue: Mutex::new(Queue {
            dirs: start,
            idle: 0,
        }),
        wake: Condvar::new(),
        idle: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        workers,
    };
    let entries_seen = AtomicUsize::new(0);
    let truncated: Mutex<Option<String>> = Mutex::new(None);

    let worker = || {
        // The walk runs during the CPU sample: at the lowest priority, so it
        // takes only CPU the machine's own work leaves idle (per-thread nice,
        // setpriority(2) on the thread id). Past the sample it is raised
        // back, so a machine at 100 % (a miner's doing) cannot starve it: at
        // nice 19 beside two busy CPUs it was cut at 10 s (issue 21).
        set_thread_nice(WALK_NICE);
        let mut raised = false;
        let mut out = Vec::new();
        let mut stats = WalkStats::default();
        let mut local: Vec<DirItem> = Vec::new();
        let mut scratch = Scratch::default();
        let deadline = t0 + limits.max_time;
        // A limit reached by any worker stops every worker, whatever is left
        // on its own stack.
        while let Some((dir, depth)) = local
            .pop()
            .filter(|_| !shared.stop.load(Ordering::Relaxed))
            .or_else(|| shared.take())
        {
            if !raised && t0.elapsed() >= limits.raise_after {
                set_thread_nice(0);
                raised = true;
            }
            let finished = walk_one(
                &Walker {
                    host,
                    cache: &cache,
                    dir_cache: &dir_cache,
                    racy_before,
                    limits,
                    skip: &skip,
                    deadline,
                },
                &dir,
                depth,
                &mut scratch,
                &mut local,
                &mut out,
                &mut stats,
            );
            let total = entries_seen.fetch_add(stats.files, Ordering::Relaxed) + stats.files;
            stats.files = 0;
            if total > limits.max_entries || !finished || t0.elapsed() > limits.max_time {
                let why = if total > limits.max_entries {
                    format!("stopped after {} entries", limits.max_entries)
                } else {
                    format!("stopped after {:.0} s", limits.max_time.as_secs_f64())
                };
                truncated
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(why);
                shared.halt();
                break;
            }
            shared.offer(&mut local);
        }
        (out, stats)
    };
    let results: Vec<(Vec<ModuleFile>, WalkStats)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers).map(|_| s.spawn(worker)).collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    let mut stats = WalkStats {
        roots: roots.to_vec(),
        files: entries_seen.load(Ordering::Relaxed),
        truncated: truncated.into_inner().unwrap_or_else(|e| e.into_inner()),
        ..WalkStats::default()
    };
    let mut out = Vec::new();
    let (mut seen_modules, mut seen_not, mut seen_dirs) = (Vec::new(), Vec::new(), Vec::new());
    for (files, st) in results {
        out.extend(files);
        stats.dirs += st.dirs;
        stats.sniffed += st.sniffed;
        stats.inspected += st.inspected;
        stats.cached += st.cached;
        stats.dirs_cached += st.dirs_cached;
        seen_modules.extend(st.seen_modules);
        seen_not.extend(st.seen_not);
        seen_dirs.extend(st.seen_dirs);
        for n in st.not_walked {
            if !stats.not_walked.contains(&n) {
                stats.not_walked.push(n);
            }
        }
    }
    let save = PendingSave {
        modules_changed: stats.inspected > 0 || stats.cached != seen_modules.len() + seen_not.len(),
        seen_dirs: stats.truncated.is_none().then_some(seen_dirs),
        cache,
        dir_cache,
        seen_modules,
        seen_not,
    };
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out.dedup_by(|a, b| a.path == b.path);
    stats.elapsed_ms = t0.elapsed().as_secs_f64() * 1e3;
    (out, stats, save)
}

/// Lists one directory: module candidates into `out`, subdirectories into
/// `subdirs`. Paths stay bytes: a directory named with invalid UTF-8 is walked
/// like any other. Returns false when the deadline passed inside the directory
/// (a directory of millions of entries cannot stall the scan).
fn walk_one(
    w: &Walker,
    dir: &[u8],
    depth: usize,
    scratch: &mut Scratch,
    subdirs: &mut Vec<DirItem>,
    out: &mut Vec<ModuleFile>,
    stats: &mut WalkStats,
) -> bool {
    let Walker {
        host,
        cache,
        dir_cache,
        racy_before,
        limits,
        skip,
        deadline,
    } = *w;
    let skipped = |s: &[u8]| dir == s || (dir.starts_with(s) && dir.get(s.len()) == Some(&b'/'));
    if SKIP_DIRS.iter().any(|s| skipped(s.as_bytes()))
        || (depth > 0 && skip.iter().any(|s| skipped(s)))
    {
        return true;
    }
    let join = |name: &[u8]| {
        let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
        join_into(&mut p, dir, name);
        p
    };
    // A candidate's path, built in one buffer reused for every candidate.
    let mut cand = std::mem::take(&mut scratch.path);
    // The directory itself (a root may be a link: followed, as the listing
    // would). Unchanged since a walk listed it: its listing is reused.
    let st = host.stat_bytes(dir, true, &mut scratch.c).ok();
    // A directory a user or another machine serves is never listed: its
    // listing would wait on them (host::mount).
    if st.as_ref().is_some_and(|st| !local(host, st, dir, stats)) {
        scratch.path = cand;
        return true;
    }
    if let Some(rec) = st.as_ref().and_then(|st| dir_cache.get(st)) {
        stats.dirs += 1;
        stats.dirs_cached += 1;
        stats.files += rec.entries() as usize;
        if depth < limits.max_depth {
            subdirs.extend(rec.subdirs().map(|n| (join(n), depth + 1)));
        }
        for name in rec.candidates() {
            join_into(&mut cand, dir, name);
            if let Some(m) = inspect_candidate(host, cache, &cand, name, &mut scratch.c, stats) {
                out.push(m);
            }
        }
        scratch.path = cand;
        let k = key_of(st.as_ref().expect("stat above"));
        stats.seen_dirs.push(((k[0], k[1]), None)); // reused as it is
        return true;
    }
    let entries = match host.list_dir_direct(dir) {
        Ok(e) => e,
        Err(r) => {
            if r.is_remote() {
                note_served(stats, r.describe());
            }
            scratch.path = cand;
            return true;
        }
    };
    stats.dirs += 1;
    let mut rec = DirRecord {
        mtime: 0,
        ctime: 0,
        entries: entries.len() as u32,
        subdirs: Vec::new(),
        candidates: Vec::new(),
    };
    for (i, e) in entries.iter().enumerate() {
        if i % 4096 == 4095 && Instant::now() > deadline {
            return false;
        }
        stats.files += 1;
        let name = &e.name[..];
        use rustix::fs::FileType;
        match e.file_type {
            FileType::Directory => {
                rec.subdirs.push(name.to_vec());
                if depth < limits.max_depth {
                    subdirs.push((join(name), depth + 1));
                }
            }
            FileType::RegularFile | FileType::Unknown if worth_a_look(name) => {
                rec.candidates.push(name.to_vec());
                join_into(&mut cand, dir, name);
                if let Some(m) = inspect_candidate(host, cache, &cand, name, &mut scratch.c, stats)
                {
                    out.push(m);
                }
            }
            _ => {}
        }
    }
    scratch.path = cand;
    // Stored only when its times are older than the racy window, and
    // unchanged across the listing.
    if let (Some(before), Ok(after)) = (st, host.stat_bytes(dir, true, &mut scratch.c)) {
        let (kb, ka) = (key_of(&before), key_of(&after));
        if kb == ka && ka[3] < racy_before && ka[4] < racy_before {
            rec.mtime = ka[3];
            rec.ctime = ka[4];
            stats.seen_dirs.push(((ka[0], ka[1]), Some(rec)));
        }
    }
    true
}

/// Whether what `st` describes lies on a file system the kernel serves
/// (remembered per device for the worker); a served one is noted once.
fn local(host: &Host, st: &rustix::fs::Statx, path: &[u8], stats: &mut WalkStats) -> bool {
    // By device and mount: overlayfs gives the files it passes through
    // devices of their own, judged by the overlay mount (Classifier::check_stat).
    let dev = (st.stx_dev_major, st.stx_dev_minor, st.stx_mnt_id);
    if let Some((_, ok)) = stats.devs.iter().find(|(d, _)| *d == dev) {
        return *ok;
    }
    let ok = match host.classes().check_stat(st, path) {
        Ok(()) => true,
        Err(r) => {
            note_served(stats, r.describe());
            false
        }
    };
    stats.devs.push((dev, ok));
    ok
}

fn note_served(stats: &mut WalkStats, what: String) {
    if stats.not_walked.len() < 16 && !stats.not_walked.contains(&what) {
        stats.not_walked.push(what);
    }
}

/// `dir/name` into `out` (cleared first).
fn join_into(out: &mut Vec<u8>, dir: &[u8], name: &[u8]) {
    out.clear();
    out.extend_from_slice(dir);
    if !out.ends_with(b"/") {
        out.push(b'/');
    }
    out.extend_from_slice(name);
}

fn compression_of(name: &[u8]) -> Option<Option<&'static str>> {
    if name.ends_with(b".ko") {
        Some(None)
    } else if name.ends_with(b".ko.xz") {
        Some(Some("xz"))
    } else if name.ends_with(b".ko.zst") {
        Some(Some("zstd"))
    } else if name.ends_with(b".ko.gz") {
        Some(Some("gzip"))
    } else {
        None
    }
}

/// Whether a file name is worth a look: a module name, or a name that looks
/// like a program or object (no extension, a hidden name, `.o`/`.so`/`.bin`-
/// like) — not the hundreds of thousands of scripts, headers and data files
/// under /usr/lib. Deciding from the name avoids a stat (and even building the
/// path) for most files.
fn worth_a_look(name: &[u8]) -> bool {
    if compression_of(name).is_some() {
        return true;
    }
    let ext = name
        .iter()
        .rposition(|b| *b == b'.')
        .map(|i| &name[i + 1..]);
    ext.is_none()
        || name.starts_with(b".")
        || name.windows(4).any(|w| w == b".so.")
        || matches!(
            ext,
            Some(b"o" | b"so" | b"bin" | b"mod" | b"dat" | b"tmp" | b"cache")
        )
}

fn inspect_candidate(
    host: &Host,
    cache: &Cache,
    path: &[u8],
    name: &[u8],
    scratch: &mut Vec<u8>,
    stats: &mut WalkStats,
) -> Option<ModuleFile> {
    let st = host.stat_bytes(path, false, scratch).ok()?;
    if !local(host, &st, path, stats) {
        return None;
    }
    let key = key_of(&st);
    if let Some(j) = cache.module(&key) {
        stats.cached += 1;
        let named = compression_of(name).is_some();
        let mut m = match j.attrs {
            Some(attrs) => shell_from_statx(path, named, &st, attrs),
            None => inspect_shell(host, path, named),
        };
        j.apply(&mut m);
        stats.seen_modules.push((key, j.clone()));
        return Some(m);
    }
    if let Some(compression) = compression_of(name) {
        stats.inspected += 1;
        let m = inspect(host, path, compression, true);
        stats.seen_modules.push((key, Judged::of(&m)));
        return Some(m);
    }
    let size = st.stx_size;
    if !(64..=MAX_SNIFF_SIZE).contains(&size) || st.stx_mode as u32 & 0o170000 != 0o100000 {
        return None;
    }
    if cache.is_not_module(&key) {
        stats.cached += 1;
        stats.seen_not.push(key);
        return None;
    }
    stats.sniffed += 1;
    let head = host.read_prefix_direct(path, 20).ok()?;
    if head.len() < 20 || &head[..4] != b"\x7fELF" || elf_type(&head) != Some(1) {
        stats.seen_not.push(key);
        return None;
    }
    stats.inspected += 1;
    let m = inspect(host, path, None, false);
    if m.modinfo.is_empty() {
        stats.seen_not.push(key);
        return None;
    }
    stats.seen_modules.push((key, Judged::of(&m)));
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree of `width`^`depth` directories, each with one module-like name.
    fn tree(at: &std::path::Path, width: usize, depth: usize) -> usize {
        let mut made = 0;
        if depth == 0 {
            return made;
        }
        for i in 0..width {
            let d = at.join(format!("d{i}"));
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("x.ko"), b"not really a module").unwrap();
            made += 1 + tree(&d, width, depth - 1);
        }
        made
    }

    #[test]
    fn every_worker_ends_and_every_directory_is_walked_once() {
        let t = tempfile::tempdir().unwrap();
        let dirs = tree(t.path(), 4, 5); // 1,364 directories
        let root = t.path().to_string_lossy().into_owned();
        // The same root twice is walked once.
        let (found, stats) = find_files(
            &Host::new("/"),
            &[root.clone(), root.clone()],
            &WalkLimits::default(),
        );
        assert_eq!(stats.dirs, dirs + 1);
        assert_eq!(found.len(), dirs);
        assert_eq!(stats.files, 2 * dirs);
        assert!(stats.truncated.is_none());
    }

    #[test]
    fn a_limit_stops_every_worker() {
        let t = tempfile::tempdir().unwrap();
        let dirs = tree(t.path(), 6, 5); // 9,330 directories
        let root = t.path().to_string_lossy().into_owned();
        let limits = WalkLimits {
            max_entries: 2000,
            ..WalkLimits::default()
        };
        let (_, stats) = find_files(&Host::new("/"), &[root], &limits);
        assert_eq!(
            stats.truncated.as_deref(),
            Some("stopped after 2000 entries")
        );
        // Each worker stops after the directory it is in (2,000 entries are
        // about 1,000 directories here), not after its own stack.
        assert!(
            stats.dirs < 1500,
            "{} of {dirs} directories walked",
            stats.dirs
        );
    }
}
