//! Kernel modules: module files on disk, and the loaded-module views.
//!
//! Files: a bounded walk of the places malware drops modules, identifying each
//! candidate natively (what `file` prints) and reading its `.modinfo`,
//! compressed modules included (xz, zstd and gzip are decoded in pure Rust).
//!
//! Loaded modules, from independent views that a module unlinking itself from
//! the kernel's list does not clean up (shared/ioc-notes.md, tested on Debian
//! 6.1 and 6.12 kernels): `/proc/modules`, `/sys/module/*/initstate`, module
//! tags in `/proc/kallsyms`, tracefs `available_filter_functions`,
//! `/proc/vmallocinfo`, the taint mask and the kernel log.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::time::{Duration, Instant};

use object::{Object, ObjectSection};
use serde::Serialize;

use crate::host::{bytes_to_path, FileMeta, Host};

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
];

/// Directories never walked: the kernels' own module trees (package-managed,
/// every installed kernel's), debug symbols, and virtual filesystems.
const SKIP_DIRS: &[&str] = &[
    "/lib/modules",
    "/usr/lib/modules",
    "/usr/lib/debug",
    "/proc",
    "/sys",
];

/// Limits of the walk, so a huge disk cannot stall a scan.
#[derive(Debug, Clone)]
pub struct WalkLimits {
    pub max_depth: usize,
    pub max_entries: usize,
    pub max_time: Duration,
}

impl Default for WalkLimits {
    fn default() -> Self {
        WalkLimits {
            max_depth: 16,
            max_entries: 400_000,
            max_time: Duration::from_secs(10),
        }
    }
}

/// Largest file inspected (a kernel module is rarely over a few MiB).
const MAX_MODULE_SIZE: u64 = 64 * 1024 * 1024;
/// Largest file sniffed for an ELF header when its name does not say `.ko`.
const MAX_SNIFF_SIZE: u64 = 16 * 1024 * 1024;

/// A kernel module file found on disk.
#[derive(Debug, Clone, Serialize)]
pub struct ModuleFile {
    #[serde(skip)]
    pub path: Vec<u8>,
    pub meta: FileMeta,
    /// What `file` would say, e.g. "ELF 64-bit LSB relocatable, x86-64".
    pub identification: String,
    /// `xz`, `zstd` or `gzip` for compressed modules.
    pub compression: Option<&'static str>,
    /// `.modinfo` fields (name, vermagic, license, author, description, depends, ...).
    pub modinfo: BTreeMap<String, Vec<String>>,
    pub sha256: Option<String>,
    /// True when the name ends in `.ko*`; false when found by content.
    pub named_as_module: bool,
}

/// Statistics of the walk.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WalkStats {
    pub roots: Vec<String>,
    pub dirs: usize,
    pub files: usize,
    pub sniffed: usize,
    pub truncated: Option<String>,
    pub elapsed_ms: f64,
}

/// A directory to walk (raw path bytes) and its depth.
type DirItem = (Vec<u8>, usize);

/// Finds kernel module files under `roots`, on every CPU: workers share a
/// queue of directories (the walk is bound by `getdents64` and `stat` system
/// calls, which run in parallel).
pub fn find_files(
    host: &Host,
    roots: &[String],
    limits: &WalkLimits,
) -> (Vec<ModuleFile>, WalkStats) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Condvar, Mutex};

    let t0 = Instant::now();
    // Roots inside other roots (after resolving links: /lib/udev is
    // /usr/lib/udev on merged-/usr systems) are walked under their own name,
    // which is the path an administrator knows, and skipped in the outer
    // walk. Inside a tree no link is followed, so no directory needs a stat to
    // be recognised twice.
    let canon: Vec<Option<std::path::PathBuf>> = roots
        .iter()
        .map(|r| std::fs::canonicalize(host.path(r)).ok())
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
    // (queue, workers busy with a directory)
    let queue: Mutex<(Vec<DirItem>, usize)> = Mutex::new((start, 0));
    let wake = Condvar::new();
    let entries_seen = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let truncated: Mutex<Option<String>> = Mutex::new(None);
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4);

    let worker = || {
        let mut out = Vec::new();
        let mut stats = WalkStats::default();
        loop {
            let (dir, depth) = {
                let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if stop.load(Ordering::Relaxed) {
                        return (out, stats);
                    }
                    if let Some(item) = q.0.pop() {
                        q.1 += 1;
                        break item;
                    }
                    if q.1 == 0 {
                        wake.notify_all();
                        return (out, stats);
                    }
                    q = wake.wait(q).unwrap_or_else(|e| e.into_inner());
                }
            };
            let mut subdirs = Vec::new();
            let deadline = t0 + limits.max_time;
            let finished = walk_one(
                host,
                &dir,
                depth,
                limits,
                &skip,
                deadline,
                &mut subdirs,
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
                stop.store(true, Ordering::Relaxed);
            }
            let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
            q.0.extend(subdirs);
            q.1 -= 1;
            wake.notify_all();
        }
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
    for (files, st) in results {
        out.extend(files);
        stats.dirs += st.dirs;
        stats.sniffed += st.sniffed;
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out.dedup_by(|a, b| a.path == b.path);
    stats.elapsed_ms = t0.elapsed().as_secs_f64() * 1e3;
    (out, stats)
}

/// Lists one directory: module candidates into `out`, subdirectories into
/// `subdirs`. Paths stay bytes: a directory named with invalid UTF-8 is walked
/// like any other. Returns false when the deadline passed inside the directory
/// (a directory of millions of entries cannot stall the scan).
#[allow(clippy::too_many_arguments)]
fn walk_one(
    host: &Host,
    dir: &[u8],
    depth: usize,
    limits: &WalkLimits,
    skip: &[Vec<u8>],
    deadline: Instant,
    subdirs: &mut Vec<DirItem>,
    out: &mut Vec<ModuleFile>,
    stats: &mut WalkStats,
) -> bool {
    let skipped = |s: &[u8]| dir == s || (dir.starts_with(s) && dir.get(s.len()) == Some(&b'/'));
    if SKIP_DIRS.iter().any(|s| skipped(s.as_bytes()))
        || (depth > 0 && skip.iter().any(|s| skipped(s)))
    {
        return true;
    }
    let Ok(entries) = host.list_dir(bytes_to_path(dir)) else {
        return true;
    };
    stats.dirs += 1;
    let join = |name: &[u8]| {
        let mut p = dir.to_vec();
        if !p.ends_with(b"/") {
            p.push(b'/');
        }
        p.extend_from_slice(name);
        p
    };
    for (i, e) in entries.iter().enumerate() {
        if i % 4096 == 4095 && Instant::now() > deadline {
            return false;
        }
        stats.files += 1;
        let name = &e.name[..];
        use rustix::fs::FileType;
        match e.file_type {
            FileType::Directory if depth < limits.max_depth => {
                subdirs.push((join(name), depth + 1))
            }
            FileType::RegularFile | FileType::Unknown if worth_a_look(name) => {
                if let Some(m) = inspect_candidate(host, &join(name), name, stats) {
                    out.push(m);
                }
            }
            _ => {}
        }
    }
    true
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
    path: &[u8],
    name: &[u8],
    stats: &mut WalkStats,
) -> Option<ModuleFile> {
    if let Some(compression) = compression_of(name) {
        return Some(inspect(host, path, compression, true));
    }
    let st = host.lstat(bytes_to_path(path)).ok()?;
    let size = st.st_size as u64;
    if !(64..=MAX_SNIFF_SIZE).contains(&size) || st.st_mode & 0o170000 != 0o100000 {
        return None;
    }
    stats.sniffed += 1;
    let head = host.read_prefix(bytes_to_path(path), 20).ok()?;
    if head.len() < 20 || &head[..4] != b"\x7fELF" || elf_type(&head) != Some(1) {
        return None;
    }
    let m = inspect(host, path, None, false);
    (!m.modinfo.is_empty()).then_some(m)
}

/// `e_type` of an ELF header (1 = relocatable).
fn elf_type(h: &[u8]) -> Option<u16> {
    let b = [*h.get(16)?, *h.get(17)?];
    Some(if h.get(5) == Some(&2) {
        u16::from_be_bytes(b)
    } else {
        u16::from_le_bytes(b)
    })
}

/// Reads, decompresses and identifies one module file.
pub fn inspect(
    host: &Host,
    path: &[u8],
    compression: Option<&'static str>,
    named: bool,
) -> ModuleFile {
    let mut m = ModuleFile {
        path: path.to_vec(),
        meta: host.file_meta(bytes_to_path(path)),
        identification: String::new(),
        compression,
        modinfo: BTreeMap::new(),
        sha256: None,
        named_as_module: named,
    };
    let raw = match host.read_prefix(bytes_to_path(path), MAX_MODULE_SIZE as usize) {
        Ok(r) => r,
        Err(e) => {
            m.identification = format!("unreadable: {e}");
            return m;
        }
    };
    m.sha256 = Some(sha256_hex(&raw));
    let data = match decompress(&raw, compression) {
        Ok(d) => d,
        Err(e) => {
            m.identification = format!(
                "{} data that does not decompress: {e}",
                compression.unwrap_or("?")
            );
            return m;
        }
    };
    m.identification = identify(&data);
    if let Some(c) = compression {
        m.identification = format!("{c}-compressed {}", m.identification);
    }
    m.modinfo = modinfo(&data);
    m
}

/// Hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn decompress(raw: &[u8], compression: Option<&str>) -> Result<Vec<u8>, String> {
    let limit = MAX_MODULE_SIZE;
    let mut out = Vec::new();
    match compression {
        None => return Ok(raw.to_vec()),
        Some("gzip") => {
            flate2::read::GzDecoder::new(raw)
                .take(limit)
                .read_to_end(&mut out)
                .map_err(|e| e.to_string())?;
        }
        Some("zstd") => {
            let mut input = raw;
            let dec =
                ruzstd::decoding::StreamingDecoder::new(&mut input).map_err(|e| e.to_string())?;
            dec.take(limit)
                .read_to_end(&mut out)
                .map_err(|e| e.to_string())?;
        }
        Some("xz") => {
            // lzma-rs has no output limit of its own: a writer that refuses
            // past the limit stops it (a 1 MiB bomb unpacks to gigabytes).
            let mut input = std::io::BufReader::new(raw);
            let mut w = Capped {
                out: &mut out,
                limit: limit as usize,
            };
            if let Err(e) = lzma_rs::xz_decompress(&mut input, &mut w) {
                if w.out.len() < limit as usize {
                    return Err(format!("{e:?}"));
                }
            }
        }
        Some(other) => return Err(format!("unknown compression {other}")),
    }
    Ok(out)
}

/// A writer that keeps at most `limit` bytes and then fails, which stops a
/// decompressor that has no limit of its own.
struct Capped<'a> {
    out: &'a mut Vec<u8>,
    limit: usize,
}

impl std::io::Write for Capped<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = self.limit - self.out.len();
        if room == 0 {
            return Err(std::io::Error::other("decompressed size limit reached"));
        }
        let n = buf.len().min(room);
        self.out.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Identifies a file from its header, in the words `file` uses.
pub fn identify(data: &[u8]) -> String {
    if data.len() < 20 || &data[..4] != b"\x7fELF" {
        return "not an ELF object".into();
    }
    let class = match data[4] {
        1 => "32-bit",
        2 => "64-bit",
        _ => "unknown-class",
    };
    let order = match data[5] {
        1 => "LSB",
        2 => "MSB",
        _ => "unknown-endian",
    };
    let be = data[5] == 2;
    let half = |i: usize| {
        let b = [data[i], data[i + 1]];
        if be {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    };
    let kind = match half(16) {
        1 => "relocatable",
        2 => "executable",
        3 => "shared object",
        4 => "core file",
        _ => "unknown type",
    };
    let machine = match half(18) {
        3 => "Intel 80386",
        8 => "MIPS",
        20 => "PowerPC",
        21 => "64-bit PowerPC",
        22 => "IBM S/390",
        40 => "ARM",
        62 => "x86-64",
        183 => "ARM aarch64",
        243 => "UCB RISC-V",
        258 => "LoongArch",
        _ => "unknown machine",
    };
    format!("ELF {class} {order} {kind}, {machine}")
}

/// The `.modinfo` section as key → values.
pub fn modinfo(data: &[u8]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let Ok(obj) = object::File::parse(data) else {
        return out;
    };
    let Some(sec) = obj.section_by_name(".modinfo") else {
        return out;
    };
    let Ok(bytes) = sec.data() else { return out };
    for item in bytes.split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let s = crate::escape::escape(item);
        if let Some((k, v)) = s.split_once('=') {
            out.entry(k.to_string()).or_default().push(v.to_string());
        }
    }
    out
}

/// One line of `/proc/modules`.
#[derive(Debug, Clone, Serialize)]
pub struct ListedModule {
    pub state: String,
    /// Taint letters in parentheses, e.g. `OE`.
    pub taint: String,
}

/// The loaded-module views.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Loaded {
    /// False on a kernel without loadable-module support.
    pub applicable: bool,
    pub reason: Option<String>,
    pub proc_modules: BTreeMap<String, ListedModule>,
    /// Loadable modules in /sys/module (those with `initstate`) → taint.
    pub sys_module: BTreeMap<String, String>,
    pub kallsyms: BTreeSet<String>,
    pub kallsyms_readable: bool,
    pub tracefs: Option<BTreeSet<String>>,
    pub tracefs_source: Option<String>,
    /// `load_module` allocations in /proc/vmallocinfo.
    pub vmalloc_load_module: Option<usize>,
    pub tainted: Option<u64>,
    /// (module name, log line) from the kernel log.
    pub kmsg: Vec<(String, String)>,
    pub kmsg_readable: bool,
}

/// Kernel taint flags (Documentation/admin-guide/tainted-kernels.rst): bit,
/// letter, meaning.
pub const TAINT_FLAGS: &[(u32, char, &str)] = &[
    (0, 'P', "proprietary module was loaded"),
    (1, 'F', "module was force loaded"),
    (2, 'S', "kernel running on an out of specification system"),
    (3, 'R', "module was force unloaded"),
    (4, 'M', "processor reported a Machine Check Exception"),
    (5, 'B', "bad page referenced or unexpected page flags"),
    (6, 'U', "taint requested by userspace application"),
    (7, 'D', "kernel died recently (OOPS or BUG)"),
    (8, 'A', "an ACPI table was overridden by user"),
    (9, 'W', "kernel issued a warning"),
    (10, 'C', "staging driver was loaded"),
    (11, 'I', "workaround for bug in platform firmware applied"),
    (12, 'O', "externally-built (out-of-tree) module was loaded"),
    (13, 'E', "unsigned module was loaded"),
    (14, 'L', "soft lockup occurred"),
    (15, 'K', "kernel has been live patched"),
    (16, 'X', "auxiliary taint, defined for and used by distros"),
    (
        17,
        'T',
        "kernel was built with the struct randomization plugin",
    ),
    (18, 'N', "an in-kernel test has been run"),
    (
        19,
        'J',
        "userspace used a mutating debug operation in fwctl",
    ),
];

/// The letters of a taint mask, e.g. `OE`.
pub fn taint_letters(mask: u64) -> String {
    TAINT_FLAGS
        .iter()
        .filter(|(bit, _, _)| mask & (1u64 << bit) != 0)
        .map(|(_, c, _)| *c)
        .collect()
}

/// Reads every loaded-module view.
pub fn read_loaded(host: &Host) -> Loaded {
    let mut l = Loaded::default();
    let Ok(text) = host.read_text("/proc/modules") else {
        l.reason = Some(
            "this kernel has no loadable-module support (/proc/modules does not exist): loaded-module checks are not applicable".into(),
        );
        return l;
    };
    l.applicable = true;
    l.proc_modules = parse_proc_modules(&text);
    if let Ok(entries) = host.list_dir("/sys/module") {
        for e in entries {
            let name = String::from_utf8_lossy(&e.name).into_owned();
            // Built-in modules have no initstate; loadable ones do.
            if host.exists(format!("/sys/module/{name}/initstate")) {
                let taint = host
                    .read_text(format!("/sys/module/{name}/taint"))
                    .map(|t| t.trim().to_string())
                    .unwrap_or_default();
                l.sys_module.insert(name, taint);
            }
        }
    }
    if let Ok(text) = host.read_text("/proc/kallsyms") {
        l.kallsyms_readable = true;
        l.kallsyms = bracket_tags(&text);
    }
    read_tracefs(host, &mut l);
    if let Ok(text) = host.read_text("/proc/vmallocinfo") {
        l.vmalloc_load_module = Some(text.lines().filter(|x| x.contains("load_module")).count());
    }
    l.tainted = host
        .read_text("/proc/sys/kernel/tainted")
        .ok()
        .and_then(|t| t.trim().parse().ok());
    if let Some(lines) = read_kmsg(host) {
        l.kmsg_readable = true;
        l.kmsg = module_log_lines(&lines);
    }
    l
}

pub fn parse_proc_modules(text: &str) -> BTreeMap<String, ListedModule> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_ascii_whitespace().collect();
            let name = f.first()?.to_string();
            let taint = f
                .iter()
                .find(|x| x.starts_with('(') && x.ends_with(')'))
                .map(|x| x.trim_matches(|c| c == '(' || c == ')').to_string())
                .unwrap_or_default();
            Some((
                name,
                ListedModule {
                    state: f.get(4).unwrap_or(&"").to_string(),
                    taint,
                },
            ))
        })
        .collect()
}

/// Module names in `[name]` tags at the ends of lines (kallsyms, tracefs),
/// without the kernel's pseudo-modules (`[bpf]`, `[__builtin__ftrace]`, ...).
pub fn bracket_tags(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim_end();
        if let Some(rest) = line.strip_suffix(']') {
            if let Some(i) = rest.rfind('[') {
                let name = &rest[i + 1..];
                if !name.is_empty()
                    && name != "bpf"
                    && !name.starts_with("__builtin")
                    && !out.contains(name)
                {
                    out.insert(name.to_string());
                }
            }
        }
    }
    out
}

/// tracefs `available_filter_functions`: from a mounted tracefs, or from a
/// private, detached tracefs mount (nothing is left mounted).
fn read_tracefs(host: &Host, l: &mut Loaded) {
    for dir in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        let p = format!("{dir}/available_filter_functions");
        if let Ok(text) = host.read_text(&p) {
            l.tracefs = Some(bracket_tags(&text));
            l.tracefs_source = Some(p);
            return;
        }
    }
    if host.is_live() {
        if let Ok(text) = private_tracefs() {
            l.tracefs = Some(bracket_tags(&text));
            l.tracefs_source = Some("a private tracefs mount (fsopen)".into());
        }
    }
}

fn private_tracefs() -> std::io::Result<String> {
    use rustix::fd::AsRawFd;
    use rustix::mount::{
        fsconfig_create, fsmount, fsopen, FsMountFlags, FsOpenFlags, MountAttrFlags,
    };
    let fs = fsopen("tracefs", FsOpenFlags::FSOPEN_CLOEXEC)?;
    fsconfig_create(&fs)?;
    let fd = fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_RDONLY,
    )?;
    std::fs::read_to_string(format!(
        "/proc/self/fd/{}/available_filter_functions",
        fd.as_raw_fd()
    ))
}

/// The kernel log's records (message text only), read without blocking.
fn read_kmsg(host: &Host) -> Option<Vec<String>> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        host.path("/dev/kmsg"),
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let is_char = rustix::fs::fstat(&fd)
        .map(|s| {
            rustix::fs::FileType::from_raw_mode(s.st_mode) == rustix::fs::FileType::CharacterDevice
        })
        .unwrap_or(false);
    let mut lines = Vec::new();
    if is_char {
        // /dev/kmsg returns one record per read; EAGAIN at the end; EPIPE when
        // a record was overwritten (skip it).
        let mut buf = vec![0u8; 8192];
        for _ in 0..200_000 {
            match rustix::io::read(&fd, &mut buf) {
                Ok(0) => break,
                Ok(n) => lines.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(rustix::io::Errno::PIPE) | Err(rustix::io::Errno::INTR) => continue,
                Err(_) => break,
            }
        }
    } else {
        // A fixture file: one record per line.
        let text = host.read_text("/dev/kmsg").ok()?;
        lines.extend(text.lines().map(str::to_string));
    }
    Some(
        lines
            .into_iter()
            .map(|rec| {
                let first = rec.lines().next().unwrap_or("").to_string();
                match first.split_once(';') {
                    Some((_, msg)) => msg.to_string(),
                    None => first,
                }
            })
            .collect(),
    )
}

/// Log lines that name a module as it is loaded and taints the kernel.
pub fn module_log_lines(lines: &[String]) -> Vec<(String, String)> {
    const MARKERS: &[&str] = &[
        "loading out-of-tree module taints kernel",
        "module verification failed",
        "module license",
        "module is from the staging directory",
    ];
    let mut out = Vec::new();
    for l in lines {
        if let Some((name, rest)) = l.split_once(": ") {
            let name = name.trim();
            if !name.is_empty()
                && !name.contains(' ')
                && MARKERS.iter().any(|m| rest.starts_with(m))
            {
                out.push((name.to_string(), crate::escape::escape_str(l)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifies_elf_headers() {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        h[5] = 1;
        h[16] = 1;
        h[18] = 62;
        assert_eq!(identify(&h), "ELF 64-bit LSB relocatable, x86-64");
        assert_eq!(identify(b"#!/bin/sh\n"), "not an ELF object");
    }

    #[test]
    fn taint_and_tags() {
        assert_eq!(taint_letters((1 << 12) | (1 << 13)), "OE");
        let t = bracket_tags("ffff t foo\t[rootkit]\nffff t bar\t[bpf]\nffff T baz\n");
        assert_eq!(
            t.into_iter().collect::<Vec<_>>(),
            vec!["rootkit".to_string()]
        );
        let m = parse_proc_modules(
            "ext4 1 0 - Live 0x0\nhideme 16384 0 - Live 0xffffffffc0000000 (OE)\n",
        );
        assert_eq!(m["hideme"].taint, "OE");
        assert_eq!(m["ext4"].taint, "");
    }

    #[test]
    fn log_lines() {
        let l = module_log_lines(&[
            "diamorphine: loading out-of-tree module taints kernel.".into(),
            "diamorphine: module verification failed: signature and/or required key missing - tainting kernel".into(),
            "usb 1-1: new device".into(),
        ]);
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].0, "diamorphine");
    }
}
