//! The kernel's own records of hooks attached to its functions.
//!
//! - tracefs `enabled_functions`: every function with an ftrace callback
//!   attached, its flags (`R` saves registers, `I` may change the return
//!   address: the flag a rootkit needs to replace a function), and the
//!   callback's trampoline and function, printed with `%pS`. A callback inside
//!   a module the kernel no longer lists has no symbol: it prints as a bare
//!   address (kernel/trace/ftrace.c, `t_show()`).
//! - tracefs `touched_functions` (Linux 6.4+): every function that has ever
//!   had a callback since boot; a hook removed before the scan stays here.
//! - debugfs `kprobes/list`: every kprobe and kretprobe (kernel/kprobes.c,
//!   `report_probe()`).
//! - tracefs `kprobe_events`, `current_tracer`: what tracing users asked for,
//!   which explains their hooks.
//!
//! All are read with [`Host::read_kernel_text`] (fixed-size `pread`s past
//! short reads). `available_filter_functions` is not read here: it is large
//! and on some kernels reading it trips a `WARN_ON_ONCE` (taint W).

use crate::host::{Host, PrivateMount};

/// One line of `enabled_functions`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EnabledFunction {
    /// The hooked function, e.g. `__x64_sys_kill` (without `[module]`).
    pub function: String,
    /// The module the hooked function belongs to, if any.
    pub function_module: Option<String>,
    /// Number of callbacks attached.
    pub count: u32,
    /// `I`: a callback may modify the instruction pointer (replace the function).
    pub ipmodify: bool,
    /// `D`: a direct call (BPF trampolines).
    pub direct: bool,
    /// The callback: `tramp: ADDR (FUNC)` or `->FUNC`, as printed.
    pub owner: Option<String>,
    /// The module `[name]` the callback belongs to, if the kernel could name it.
    pub owner_module: Option<String>,
    /// The callback resolves to no symbol (a bare address).
    pub owner_unnamed: bool,
    /// The raw line.
    pub line: String,
}

/// One kprobe line.
#[derive(Debug, Clone, PartialEq)]
pub struct Kprobe {
    /// `k` (kprobe), `r` (kretprobe), `p`.
    pub kind: String,
    /// `symbol+0xoff`.
    pub target: String,
    pub module: Option<String>,
    pub flags: Vec<String>,
    pub line: String,
}

/// What was read.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    /// `None` when tracefs could not be read at all.
    pub enabled: Option<Vec<EnabledFunction>>,
    pub enabled_source: Option<String>,
    /// Functions ever hooked since boot (6.4+), if the file exists.
    pub touched: Option<Vec<String>>,
    pub kprobes: Option<Vec<Kprobe>>,
    pub kprobe_events: Vec<String>,
    pub current_tracer: Option<String>,
    /// Livepatches applied (`/sys/kernel/livepatch`).
    pub livepatches: Vec<String>,
    /// Why a view could not be read.
    pub notes: Vec<String>,
}

/// Parses `enabled_functions`.
pub fn parse_enabled(text: &str) -> Vec<EnabledFunction> {
    let mut out: Vec<EnabledFunction> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        // A continuation (`\tdirect-->...` on its own line) belongs to the previous entry.
        if line.starts_with('\t') || line.starts_with(' ') {
            if let Some(last) = out.last_mut() {
                last.line.push_str(line);
                if line.contains("direct-->") {
                    last.direct = true;
                }
            }
            continue;
        }
        let (head, tail) = match line.find(" (") {
            Some(i) => (&line[..i], &line[i + 2..]),
            None => (line, ""),
        };
        let (function, function_module) = split_module(head.trim());
        let mut e = EnabledFunction {
            function,
            function_module,
            line: line.to_string(),
            ..EnabledFunction::default()
        };
        if let Some(close) = tail.find(')') {
            e.count = tail[..close].trim().parse().unwrap_or(0);
            let rest = &tail[close + 1..];
            let flags = rest.split('\t').next().unwrap_or("");
            let flags: Vec<&str> = flags
                .split_whitespace()
                .take_while(|w| w.len() == 1 || *w == "M")
                .collect();
            e.ipmodify = flags.contains(&"I");
            e.direct = flags.contains(&"D") || rest.contains("direct-->");
            e.owner = owner_text(rest);
        }
        if let Some(o) = &e.owner {
            e.owner_module = bracket_module(o);
            e.owner_unnamed = owner_unnamed(o);
        }
        out.push(e);
    }
    out
}

/// `name [module]` → (`name`, `Some(module)`).
fn split_module(s: &str) -> (String, Option<String>) {
    match (s.rfind(" ["), s.ends_with(']')) {
        (Some(i), true) => (s[..i].to_string(), Some(s[i + 2..s.len() - 1].to_string())),
        _ => (s.to_string(), None),
    }
}

fn bracket_module(s: &str) -> Option<String> {
    let open = s.rfind('[')?;
    let close = s[open..].find(']')? + open;
    let m = &s[open + 1..close];
    (!m.is_empty() && m != "bpf" && !m.starts_with("__builtin")).then(|| m.to_string())
}

/// The callback part: `tramp: ADDR (FUNC)` and/or ` ->FUNC`.
fn owner_text(rest: &str) -> Option<String> {
    if let Some(i) = rest.find("tramp:") {
        return Some(rest[i..].trim().to_string());
    }
    rest.find("->").map(|i| rest[i..].trim().to_string())
}

/// True when the callback function (inside the parentheses after `tramp:`)
/// is a bare address: no symbol, so no listed module or kernel code owns it.
fn owner_unnamed(owner: &str) -> bool {
    let func = match (owner.find('('), owner.rfind(')')) {
        (Some(a), Some(b)) if b > a => &owner[a + 1..b],
        _ => return false,
    };
    let func = func.trim();
    func.starts_with("0x") && func[2..].chars().all(|c| c.is_ascii_hexdigit())
        || func.chars().all(|c| c.is_ascii_hexdigit()) && func.len() >= 8
}

/// Parses `kprobes/list`.
pub fn parse_kprobes(text: &str) -> Vec<Kprobe> {
    text.lines()
        .filter_map(|line| {
            let w: Vec<&str> = line.split_whitespace().collect();
            if w.len() < 3 {
                return None;
            }
            let mut module = None;
            let mut flags = Vec::new();
            for x in &w[3..] {
                if x.starts_with('[') {
                    for f in x.split(']').filter(|f| !f.is_empty()) {
                        flags.push(f.trim_start_matches('[').to_string());
                    }
                } else {
                    module = Some(x.to_string());
                }
            }
            Some(Kprobe {
                kind: w[1].to_string(),
                target: w[2].to_string(),
                module,
                flags,
                line: line.to_string(),
            })
        })
        .collect()
}

/// Reads every view: from the mounted tracefs/debugfs, else private mounts.
pub fn read(host: &Host, tracefs: Option<&PrivateMount>, debugfs: Option<&PrivateMount>) -> Hooks {
    let mut h = Hooks::default();
    // tracefs: mounted (either place), else private.
    let mut base: Option<(String, bool)> = None;
    for dir in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if host.exists(format!("{dir}/enabled_functions")) {
            base = Some((dir.to_string(), false));
            break;
        }
    }
    let try_trace = |rel: &str| -> Result<(String, String), String> {
        match &base {
            Some((dir, _)) => {
                let p = format!("{dir}/{rel}");
                host.read_kernel_text(&p)
                    .map(|(t, _)| (t, p))
                    .map_err(|e| e.to_string())
            }
            None => {
                let m = tracefs
                    .filter(|_| host.is_live())
                    .ok_or("no tracefs is mounted, and none could be mounted privately")?;
                crate::host::read_kernel_file(&m.path(rel), crate::host::MAX_READ)
                    .map(|(b, _)| (String::from_utf8_lossy(&b).into_owned(), m.describe(rel)))
                    .map_err(|e| {
                        if e.kind() == std::io::ErrorKind::PermissionDenied {
                            "a private tracefs mount: operation not permitted (a kernel in lockdown refuses tracefs)".to_string()
                        } else {
                            format!("a private tracefs mount: {e}")
                        }
                    })
            }
        }
    };
    let read_trace = |rel: &str| try_trace(rel).ok();
    match try_trace("enabled_functions") {
        Ok((text, src)) => {
            h.enabled = Some(parse_enabled(&text));
            h.enabled_source = Some(src);
        }
        Err(e) => h.notes.push(format!(
            "tracefs enabled_functions could not be read ({e}): ftrace hooks are not checked"
        )),
    }
    if let Some((text, _)) = read_trace("touched_functions") {
        h.touched = Some(
            text.lines()
                .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                .collect(),
        );
    }
    if let Some((text, _)) = read_trace("kprobe_events") {
        h.kprobe_events = text.lines().map(str::to_string).collect();
    }
    h.current_tracer = read_trace("current_tracer").map(|(t, _)| t.trim().to_string());
    // kprobes: debugfs.
    let kp = host
        .read_kernel_text("/sys/kernel/debug/kprobes/list")
        .ok()
        .map(|(t, _)| t)
        .or_else(|| {
            let m = debugfs.filter(|_| host.is_live())?;
            crate::host::read_kernel_file(&m.path("kprobes/list"), crate::host::MAX_READ)
                .ok()
                .map(|(b, _)| String::from_utf8_lossy(&b).into_owned())
        });
    h.kprobes = kp.map(|t| parse_kprobes(&t));
    if let Ok(entries) = host.list_dir("/sys/kernel/livepatch") {
        h.livepatches = entries
            .into_iter()
            .map(|e| String::from_utf8_lossy(&e.name).into_owned())
            .collect();
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enabled_lines() {
        let t = "__x64_sys_kill (1) R I   \ttramp: 0xffffffffc0205000 (0xffffffffc01f2010) ->ftrace_ops_assist_func+0x0/0xf0\n\
schedule (1)    \ttramp: 0xffffffffc0209000 (function_trace_call+0x0/0x150) ->function_trace_call+0x0/0x150\n\
vfs_read (1) R I   \ttramp: 0xffffffffc020b000 (fh_thunk+0x0/0x30 [lp_mod]) ->ftrace_ops_assist_func+0x0/0xf0\n\
tcp_v4_connect [nf] (2)          ->ftrace_ops_list_func+0x0/0x1a0\n";
        let e = parse_enabled(t);
        assert_eq!(e.len(), 4);
        assert_eq!(e[0].function, "__x64_sys_kill");
        assert!(e[0].ipmodify && e[0].owner_unnamed);
        assert_eq!(e[0].count, 1);
        assert!(!e[1].ipmodify && !e[1].owner_unnamed);
        assert_eq!(e[2].owner_module.as_deref(), Some("lp_mod"));
        assert_eq!(e[3].function_module.as_deref(), Some("nf"));
        assert_eq!(e[3].count, 2);
        assert!(e[3]
            .owner
            .as_deref()
            .unwrap()
            .contains("ftrace_ops_list_func"));
    }

    #[test]
    fn kprobe_lines() {
        let k = parse_kprobes(
            "ffffffff8110f0e0  k  do_sys_openat2+0x0    [FTRACE]\nffffffffc0001000  r  foo+0x4  rk [DISABLED][FTRACE]\n",
        );
        assert_eq!(k.len(), 2);
        assert_eq!(k[0].target, "do_sys_openat2+0x0");
        assert_eq!(k[0].flags, vec!["FTRACE"]);
        assert_eq!(k[1].module.as_deref(), Some("rk"));
        assert_eq!(k[1].flags, vec!["DISABLED", "FTRACE"]);
    }
}
