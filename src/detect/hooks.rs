//! `kernel.hook`: kernel functions hooked by code nothing explains.
//!
//! A hook is explained when the kernel names a listed module as its owner, or
//! when it is one of the kernel's own users and that user is active: a
//! livepatch (`klp_ftrace_handler`), a running function tracer
//! (`current_tracer`), a kprobe asked for in `kprobe_events`, a BPF
//! trampoline (direct call). Anything else (above all a callback with no
//! symbol at all, which is code of a module the kernel no longer lists) is a
//! finding: critical when it hooks what a rootkit needs (system calls, `/proc`,
//! directory listings, PID lookups, network listings, the kernel log),
//! high otherwise.

use std::collections::{BTreeMap, BTreeSet};

use super::{Evidence, Finding, Severity, Subject, Technique};
use crate::collect::hooks::{EnabledFunction, Hooks};
use crate::escape::escape_str;

/// Function-name patterns a process or module hider must hook: system-call
/// entry points, procfs and PID lookups, directory listings, socket listings,
/// module and log views. (Sources: the hook tables of public 6.x rootkits as
/// described in issue 10; kernel names from fs/proc, kernel/pid.c,
/// net/ipv4/tcp_ipv4.c.)
const SENSITIVE_PREFIXES: &[&str] = &[
    "__x64_sys_",
    "__ia32_sys_",
    "__arm64_sys_",
    "__do_sys_",
    "__se_sys_",
    "ksys_",
    "proc_",
    "pid_",
    "find_pid",
    "find_vpid",
    "find_task",
    "find_ge_pid",
    "next_tgid",
    "filldir",
    "iterate_dir",
    "vfs_read",
    "tcp4_seq",
    "tcp6_seq",
    "udp4_seq",
    "udp6_seq",
    "tcp_seq",
    "udp_seq",
    "inet_diag",
    "inet_sk_diag",
    "packet_rcv",
    "tpacket_rcv",
    "devkmsg",
    "kallsyms",
    "s_show",
    "cgroup_procs",
    "cgroup_threads",
    "load_module",
    "do_init_module",
    "m_show",
    "kill_pid",
    "do_send_sig",
    "audit_",
    "security_",
];

/// Callback functions of the kernel's own ftrace users.
const TRACER_CALLBACKS: &[&str] = &[
    "function_trace_call",
    "function_stack_trace_call",
    "function_graph",
    "ftrace_graph",
    "perf_ftrace_function_call",
    "fprobe",
    "stack_trace_call",
    "trace_selftest",
];

/// Whether a hooked function is one a hider needs.
pub fn is_sensitive(function: &str) -> bool {
    SENSITIVE_PREFIXES.iter().any(|p| function.starts_with(p))
}

/// Why a hook is explained, or `None`.
fn explanation(e: &EnabledFunction, hooks: &Hooks, listed: &BTreeSet<String>) -> Option<String> {
    if e.owner_unnamed {
        return None;
    }
    let owner = e.owner.as_deref().unwrap_or("");
    if let Some(m) = &e.owner_module {
        return listed
            .contains(m)
            .then(|| format!("callback in listed module {m}"));
    }
    if owner.contains("klp_ftrace_handler") && !hooks.livepatches.is_empty() {
        return Some(format!("livepatch {}", hooks.livepatches.join(", ")));
    }
    if TRACER_CALLBACKS.iter().any(|t| owner.contains(t)) {
        let tracer = hooks.current_tracer.as_deref().unwrap_or("?");
        return Some(format!(
            "the kernel's tracer (current_tracer {tracer}, or perf)"
        ));
    }
    if owner.contains("kprobe_ftrace_handler") || owner.contains("arm_kprobe") {
        let asked = hooks
            .kprobe_events
            .iter()
            .any(|k| k.contains(e.function.as_str()));
        return asked.then(|| "a kprobe in kprobe_events".to_string());
    }
    if e.direct || owner.contains("bpf_trampoline") || owner.contains("[bpf]") {
        return Some("a BPF trampoline (see the BPF program list)".into());
    }
    // Several callbacks share the list function; without an IPMODIFY one
    // nothing replaces the function (tracers, perf, BPF kprobe_multi).
    if !e.ipmodify && (owner.contains("ftrace_ops_list_func") || owner.is_empty()) {
        return Some("shared ftrace callbacks, none may change the function".into());
    }
    if !e.ipmodify && owner.contains("ftrace_ops_assist_func") {
        return Some("a callback that cannot change the function".into());
    }
    None
}

/// `kernel.hook` findings: one per callback owner.
pub fn findings(hooks: &Hooks, listed: &BTreeSet<String>) -> Vec<Finding> {
    let mut out = Vec::new();
    let Some(enabled) = &hooks.enabled else {
        return out;
    };
    // Group unexplained hooks by their callback (one rootkit, one owner).
    let mut by_owner: BTreeMap<String, Vec<&EnabledFunction>> = BTreeMap::new();
    for e in enabled {
        if explanation(e, hooks, listed).is_none() {
            let key = owner_key(e);
            by_owner.entry(key).or_default().push(e);
        }
    }
    let source = hooks
        .enabled_source
        .clone()
        .unwrap_or_else(|| "enabled_functions".into());
    for (owner, list) in by_owner {
        let sensitive: Vec<&str> = list
            .iter()
            .map(|e| e.function.as_str())
            .filter(|f| is_sensitive(f))
            .collect();
        let unnamed = list.iter().any(|e| e.owner_unnamed);
        let ipmodify = list.iter().filter(|e| e.ipmodify).count();
        let severity = if !sensitive.is_empty() && (unnamed || ipmodify > 0) {
            Severity::Critical
        } else {
            Severity::High
        };
        let names: Vec<String> = list.iter().map(|e| escape_str(&e.function)).collect();
        let shown: Vec<&str> = if sensitive.is_empty() {
            names.iter().take(8).map(String::as_str).collect()
        } else {
            sensitive.iter().take(8).copied().collect()
        };
        let who = if unnamed {
            "code with no symbol (a module the kernel no longer lists)".to_string()
        } else if let Some(m) = list.iter().find_map(|e| e.owner_module.clone()) {
            format!(
                "module \"{}\", which /proc/modules does not list",
                escape_str(&m)
            )
        } else {
            "a callback no listed module or kernel tracer explains".to_string()
        };
        let mut evidence = vec![
            Evidence::new(
                "hooked functions",
                format!(
                    "{} ({} may replace the function: ftrace IPMODIFY)",
                    names.join(" "),
                    ipmodify
                ),
            ),
            Evidence::new("callback", escape_str(&owner)),
        ];
        if !sensitive.is_empty() {
            evidence.push(Evidence::new(
                "what a hider needs",
                format!(
                    "{} of them are system calls, /proc, PID-lookup, listing or log functions",
                    sensitive.len()
                ),
            ));
        }
        for e in list.iter().take(12) {
            evidence.push(Evidence::new("enabled_functions", escape_str(&e.line)));
        }
        if list.len() > 12 {
            evidence.push(Evidence::new(
                "enabled_functions",
                format!("... {} more lines", list.len() - 12),
            ));
        }
        evidence.push(Evidence::new("read from", escape_str(&source)));
        evidence.push(Evidence::new(
            "check by hand",
            "mount -t tracefs none /sys/kernel/tracing 2>/dev/null; cat /sys/kernel/tracing/enabled_functions (empty on a machine nobody traces)",
        ));
        out.push(Finding {
            remedies: Vec::new(),
            rule: "kernel.hook".into(),
            severity,
            verdict: (severity == Severity::Critical).then(|| "malicious".to_string()),
            title: format!(
                "{} kernel function(s) hooked through ftrace by {who}: {}{}",
                list.len(),
                shown.join(", "),
                if list.len() > shown.len() {
                    ", ..."
                } else {
                    ""
                }
            ),
            subject: Subject::default(),
            techniques: vec![Technique::new("T1014"), Technique::new("T1547.006")],
            signals: vec![],
            score: None,
            evidence,
        });
    }
    // Functions hooked at some time since boot but not now (6.4+).
    if let Some(touched) = &hooks.touched {
        let now: BTreeSet<&str> = enabled.iter().map(|e| e.function.as_str()).collect();
        let gone: Vec<&String> = touched
            .iter()
            .filter(|f| is_sensitive(f) && !now.contains(f.as_str()))
            .collect();
        if !gone.is_empty() && hooks.current_tracer.as_deref().is_none_or(|t| t == "nop") {
            let names: Vec<String> = gone.iter().take(12).map(|f| escape_str(f)).collect();
            out.push(Finding {
                remedies: Vec::new(),
                rule: "kernel.hook-past".into(),
                severity: Severity::Medium,
                verdict: None,
                title: format!(
                    "{} system-call or /proc function(s) were hooked through ftrace earlier since boot: {}",
                    gone.len(),
                    names.join(", ")
                ),
                subject: Subject::default(),
                techniques: vec![Technique::new("T1014")],
                signals: vec![],
                score: None,
                evidence: vec![Evidence::new(
                    "check by hand",
                    "cat /sys/kernel/tracing/touched_functions; cat /sys/kernel/tracing/enabled_functions",
                )],
            });
        }
    }
    // kprobes on what a hider needs, not asked for through kprobe_events.
    if let Some(kp) = &hooks.kprobes {
        let odd: Vec<_> = kp
            .iter()
            .filter(|k| {
                let sym = k.target.split('+').next().unwrap_or("");
                is_sensitive(sym)
                    && !k.flags.iter().any(|f| f == "GONE" || f == "DISABLED")
                    && !hooks.kprobe_events.iter().any(|e| e.contains(sym))
            })
            .collect();
        if !odd.is_empty() {
            let mut evidence: Vec<Evidence> = odd
                .iter()
                .take(12)
                .map(|k| Evidence::new("kprobes/list", escape_str(&k.line)))
                .collect();
            evidence.push(Evidence::new(
                "check by hand",
                "mount -t debugfs none /sys/kernel/debug 2>/dev/null; cat /sys/kernel/debug/kprobes/list; cat /sys/kernel/tracing/kprobe_events",
            ));
            out.push(Finding {
                remedies: Vec::new(),
                rule: "kernel.hook".into(),
                severity: Severity::High,
                verdict: None,
                title: format!(
                    "{} kprobe(s) on system-call or /proc functions that no tracing user asked for: {}",
                    odd.len(),
                    odd.iter()
                        .take(6)
                        .map(|k| escape_str(&k.target))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                subject: Subject::default(),
                techniques: vec![Technique::new("T1014")],
                signals: vec![],
                score: None,
                evidence,
            });
        }
    }
    out
}

/// A process holding a BPF program, for evidence: PID, name, executable.
pub struct Holder {
    pub pid: i32,
    pub fd: i32,
    /// Stopping it (and quarantining its executable) releases the program
    /// unless it is pinned or attached through a pinned link.
    pub remedies: Vec<super::Remedy>,
    pub name: String,
    pub exe: String,
}

/// BPF programs that call what only a rootkit (or a debugging session)
/// needs: `bpf_probe_write_user` writes into a process's memory (eBPF
/// process hiders patch `getdents64` results with it); `bpf_override_return`
/// makes a kernel function fail. Both on a tracing program are critical. The
/// processes holding the program are named as its loaders.
pub fn bpf_findings(
    progs: &crate::collect::bpf::Programs,
    holders: &BTreeMap<u32, Vec<Holder>>,
    kmsg_warnings: &[String],
    uptime_seconds: Option<f64>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for p in &progs.programs {
        let dangerous: Vec<&String> = p
            .helpers
            .iter()
            .filter(|h| *h == "bpf_probe_write_user" || *h == "bpf_override_return")
            .collect();
        if dangerous.is_empty() || !p.is_tracing() {
            continue;
        }
        let held = holders.get(&p.id).map(Vec::as_slice).unwrap_or(&[]);
        let who: Vec<String> = held
            .iter()
            .map(|h| format!("PID {} \"{}\" ({})", h.pid, h.name, h.exe))
            .collect();
        let mut evidence = vec![
            Evidence::new(
                "program",
                format!(
                    "id {} \"{}\", type {}, loaded by uid {}",
                    p.id,
                    p.name,
                    p.type_name(),
                    p.uid
                ),
            ),
            Evidence::new(
                "helpers",
                dangerous
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        ];
        if let Some(up) = uptime_seconds {
            let age = (up - p.load_time_ns as f64 / 1e9).max(0.0);
            evidence.push(Evidence::new("loaded", format!("{age:.0} s ago")));
        }
        if who.is_empty() {
            evidence.push(Evidence::new(
                "held by",
                "no visible process holds it (pinned in bpffs, attached and released, or its loader is hidden)",
            ));
        } else {
            evidence.push(Evidence::new("held by", who.join("; ")));
        }
        for w in kmsg_warnings.iter().take(4) {
            evidence.push(Evidence::new("kernel log", escape_str(w)));
        }
        evidence.push(Evidence::new(
            "check by hand",
            format!(
                "bpftool prog show id {0}; bpftool prog dump xlated id {0} | grep -E 'probe_write_user|override_return'{1}",
                p.id,
                held.first()
                    .map_or(String::new(), |h| format!("; ls -l /proc/{}/fd | grep bpf", h.pid))
            ),
        ));
        out.push(Finding {
            remedies: held.iter().flat_map(|h| h.remedies.iter().cloned()).collect(),
            rule: "kernel.hook".into(),
            severity: Severity::Critical,
            verdict: Some("malicious".into()),
            title: format!(
                "BPF program \"{}\" ({}, id {}) calls {}: it can rewrite what system calls return to processes, as eBPF rootkits do{}",
                p.name,
                p.type_name(),
                p.id,
                dangerous.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" and "),
                if who.is_empty() {
                    String::new()
                } else {
                    format!("; loaded and held by {}", who.join(", "))
                }
            ),
            subject: held
                .first()
                .map(|h| Subject {
                    pid: Some(h.pid),
                    name: Some(h.name.clone()),
                    path: Some(h.exe.clone()),
                })
                .unwrap_or_default(),
            techniques: vec![Technique::new("T1014"), Technique::new("T1562")],
            signals: vec![],
            score: None,
            evidence,
        });
    }
    out
}

/// The callback's identity: the text inside the parentheses after `tramp:`
/// (its function), else the whole owner text.
fn owner_key(e: &EnabledFunction) -> String {
    let o = e.owner.as_deref().unwrap_or("(no callback shown)");
    match (o.find('('), o.find(')')) {
        (Some(a), Some(b)) if b > a => o[a + 1..b].to_string(),
        _ => o.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::hooks::parse_enabled;

    fn hooks(text: &str) -> Hooks {
        Hooks {
            enabled: Some(parse_enabled(text)),
            current_tracer: Some("nop".into()),
            ..Hooks::default()
        }
    }

    #[test]
    fn unnamed_callback_on_syscalls_is_critical() {
        let h = hooks("__x64_sys_kill (1) R I   \ttramp: 0xffffffffc0205000 (0xffffffffc01f2010) ->ftrace_ops_assist_func+0x0/0xf0\n\
__x64_sys_getdents64 (1) R I   \ttramp: 0xffffffffc0206000 (0xffffffffc01f2010) ->ftrace_ops_assist_func+0x0/0xf0\n");
        let f = findings(&h, &BTreeSet::new());
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].severity, Severity::Critical);
        assert!(f[0].title.contains("__x64_sys_kill"), "{}", f[0].title);
        assert!(f[0].title.contains("2 kernel function"), "{}", f[0].title);
    }

    #[test]
    fn listed_module_and_tracers_are_explained() {
        let h = hooks("vfs_read (1) R I   \ttramp: 0xffffffffc020b000 (fh_thunk+0x0/0x30 [lp_mod]) ->ftrace_ops_assist_func+0x0/0xf0\n\
schedule (1)    \ttramp: 0xffffffffc0209000 (function_trace_call+0x0/0x150) ->function_trace_call+0x0/0x150\n\
do_exit (2)          ->ftrace_ops_list_func+0x0/0x1a0\n");
        let listed: BTreeSet<String> = ["lp_mod".to_string()].into();
        assert!(findings(&h, &listed).is_empty());
        // The same module unlisted: a finding naming it.
        let f = findings(&h, &BTreeSet::new());
        assert_eq!(f.len(), 1);
        assert!(f[0].title.contains("lp_mod"));
    }

    /// Captured from Debian's 6.1 kernel in the QEMU test with
    /// tests/vm/module/qtest_ftrace.c loaded (tests/fixtures/kernel/6.1).
    const FTRACE1: &str = include_str!("../../tests/fixtures/kernel/6.1/enabled_functions.ftrace1");
    const FTRACE2: &str = include_str!("../../tests/fixtures/kernel/6.1/enabled_functions.ftrace2");
    const KPROBE: &str =
        include_str!("../../tests/fixtures/kernel/6.1/enabled_functions.kprobe_event_enabled");
    const CLEAN: &str = include_str!("../../tests/fixtures/kernel/6.1/enabled_functions.clean");

    #[test]
    fn real_kernel_rootkit_hooks() {
        let f = findings(&hooks(FTRACE1), &BTreeSet::new());
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].severity, Severity::Critical);
        for name in ["__x64_sys_kill", "__x64_sys_getdents64", "proc_pid_lookup"] {
            assert!(
                f[0].evidence.iter().any(|e| e.value.contains(name)),
                "{name}"
            );
        }
        assert!(f[0].title.contains("qtest_ftrace"), "{}", f[0].title);
        let f = findings(&hooks(FTRACE2), &BTreeSet::new());
        assert_eq!(f.len(), 1);
        assert!(f[0].title.contains("find_pid_ns"), "{}", f[0].title);
        // The same module, listed: explained.
        let listed: BTreeSet<String> = ["qtest_ftrace".to_string()].into();
        assert!(findings(&hooks(FTRACE1), &listed).is_empty());
        assert!(findings(&hooks(CLEAN), &BTreeSet::new()).is_empty());
    }

    #[test]
    fn real_kernel_kprobe_event_is_explained() {
        let mut h = hooks(KPROBE);
        h.kprobe_events = vec!["p:kprobes/myprobe do_sys_openat2".into()];
        assert!(findings(&h, &BTreeSet::new()).is_empty());
        // Not asked for by any tracing user: reported (high: not a hider's function).
        h.kprobe_events.clear();
        let f = findings(&h, &BTreeSet::new());
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].severity, Severity::High);
    }

    #[test]
    fn empty_list_is_quiet() {
        assert!(findings(&hooks(""), &BTreeSet::new()).is_empty());
        assert!(findings(&Hooks::default(), &BTreeSet::new()).is_empty());
    }
}
