//! The loaded-module views: `/proc/modules`, `/sys/module`, kallsyms and
//! tracefs tags, `vmallocinfo`, the taint mask and the kernel log.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::host::Host;

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
    /// A second read past an early end of `/proc/vmallocinfo` found more:
    /// something cut the file short.
    pub vmalloc_resumed: bool,
    /// A function that prints `/proc/vmallocinfo` (`s_show`, `*vmalloc*`) is
    /// hooked (set by the scan from tracefs `enabled_functions`): its counts
    /// may be filtered.
    pub vmalloc_printer_hooked: bool,
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
pub fn read_loaded(host: &Host, force_tracefs: bool) -> Loaded {
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
    // Kernel lists are read with fixed-size preads past short reads: a filter
    // that ends a read early does not end Quarry's.
    if let Ok((text, _)) = host.read_kernel_text("/proc/kallsyms") {
        l.kallsyms_readable = true;
        l.kallsyms = bracket_tags(&text);
    }
    if let Ok((text, resumed)) = host.read_kernel_text("/proc/vmallocinfo") {
        l.vmalloc_load_module = Some(text.lines().filter(|x| x.contains("load_module")).count());
        l.vmalloc_resumed = resumed;
    }
    l.tainted = host
        .read_text("/proc/sys/kernel/tainted")
        .ok()
        .and_then(|t| t.trim().parse().ok());
    if let Some(lines) = read_kmsg(host) {
        l.kmsg_readable = true;
        l.kmsg = module_log_lines(&lines);
    }
    // tracefs `available_filter_functions` is large, and reading it has
    // tripped a kernel WARN_ON_ONCE (taint W) on 6.12: read only when another
    // view already points at a module the list does not show.
    if force_tracefs || l.points_at_unlisted() {
        read_tracefs(host, &mut l);
    }
    l
}

impl Loaded {
    /// True when a cheap view shows a module `/proc/modules` does not list,
    /// more `load_module` allocations than listed modules, or module taint no
    /// listed module carries.
    pub fn points_at_unlisted(&self) -> bool {
        let unlisted = |n: &String| !self.proc_modules.contains_key(n);
        let taint_unexplained = self.tainted.is_some_and(|mask| {
            let explained: BTreeSet<char> = self
                .proc_modules
                .values()
                .flat_map(|m| m.taint.chars())
                .collect();
            TAINT_FLAGS.iter().any(|(bit, c, _)| {
                mask & (1u64 << bit) != 0 && "OEPF".contains(*c) && !explained.contains(c)
            })
        });
        self.sys_module.keys().any(unlisted)
            || self.kallsyms.iter().any(unlisted)
            || self.kmsg.iter().any(|(n, _)| unlisted(n))
            || self
                .vmalloc_load_module
                .is_some_and(|n| n > self.proc_modules.len())
            || taint_unexplained
    }
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
        if let Ok((text, _)) = host.read_kernel_text(&p) {
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
    let m = crate::host::PrivateMount::open("tracefs")?;
    let (bytes, _) = crate::host::read_kernel_file(
        &m.path("available_filter_functions"),
        crate::host::MAX_READ,
    )?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The kernel log's records (message text only), read without blocking.
pub fn read_kmsg(host: &Host) -> Option<Vec<String>> {
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
