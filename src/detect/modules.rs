//! Kernel-module findings: module files outside the module tree, hidden loaded
//! modules, unexplained taint, and log lines of modules no longer listed.

use std::collections::BTreeSet;

use super::{Evidence, Finding, Severity, Signal, Subject, Technique};
use crate::collect::modules::{self, Loaded, ModuleFile, TAINT_FLAGS};
use crate::escape::escape;
use crate::host::Host;
use crate::rules::{Kind, Rules};

/// Findings for module files.
///
/// Severity follows what is known of the file (see [`modules::place`]):
/// critical when named like a known rootkit module or in a known rootkit
/// place; info for a package's file that still matches its checksum; low for
/// DKMS builds, build directories, files a package owns, and modules signed by
/// a key the running kernel holds; high for anything else built for the
/// running kernel (it could be loaded here); medium when it was built for
/// another kernel. A kernel module tree (one directory per kernel version, as
/// an extracted kernel package has) is one finding, not thousands; inside it,
/// an unsigned module built for the running kernel is still reported alone.
pub fn file_findings(files: &[ModuleFile], rules: &Rules, release: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut trees: std::collections::BTreeMap<Vec<u8>, Vec<&ModuleFile>> = Default::default();
    for m in files {
        let signals = known_signals(m, rules);
        let signed = m.signature.as_ref().is_some_and(|s| !s.damaged);
        if signals.is_empty()
            && m.place.kind == "tree"
            && (signed || !m.place.built_for_running_kernel)
        {
            if let Some(root) = &m.place.root_raw {
                trees.entry(root.clone()).or_default().push(m);
                continue;
            }
        }
        out.push(file_finding(m, signals, release));
    }
    for (root, ms) in trees {
        out.push(tree_finding(&root, &ms, release));
    }
    out
}

/// Signals from the rules: a known rootkit module name, a known rootkit place.
fn known_signals(m: &ModuleFile, rules: &Rules) -> Vec<Signal> {
    let path = String::from_utf8_lossy(&m.path).into_owned();
    let file_name = path.rsplit('/').next().unwrap_or("");
    let stem = file_name
        .split(".ko")
        .next()
        .unwrap_or(file_name)
        .to_ascii_lowercase();
    let mut signals = Vec::new();
    let modname = m
        .modinfo
        .get("name")
        .and_then(|v| v.first())
        .map(|s| s.to_ascii_lowercase());
    for cand in [Some(stem.clone()), modname].into_iter().flatten() {
        if let Some(ind) = rules.find_exact(Kind::ModuleName, &cand) {
            signals.push(Signal {
                id: ind.kind.signal_id().into(),
                weight: ind.weight,
                detail: format!("module name \"{}\": {}", escape(cand.as_bytes()), ind.note),
                technique: Technique::new(&ind.technique),
                source: Some(format!("{} ({})", ind.source, ind.origin)),
                basis: super::Basis::Ambient,
            });
            break;
        }
    }
    let lower = path.to_ascii_lowercase();
    for ind in rules.of(Kind::ModuleDir) {
        if let Some(d) = ind.values.iter().find(|d| lower.starts_with(d.as_str())) {
            signals.push(Signal {
                id: ind.kind.signal_id().into(),
                weight: ind.weight,
                detail: format!("under {d}: {}", ind.note),
                technique: Technique::new(&ind.technique),
                source: Some(format!("{} ({})", ind.source, ind.origin)),
                basis: super::Basis::Ambient,
            });
        }
    }
    signals
}

/// The signature, in words.
fn signature_words(m: &ModuleFile) -> String {
    match &m.signature {
        None => "unsigned".into(),
        Some(s) if s.damaged => {
            format!("a {} signature that is truncated or does not parse", s.kind)
        }
        Some(s) => format!(
            "signed ({}) by {}{}, key id {}",
            s.kind,
            s.signer.as_deref().unwrap_or("an unnamed signer"),
            if m.place.signer_trusted {
                " (the running kernel holds a key of that name)"
            } else {
                " (the running kernel holds no key of that name)"
            },
            s.key_id.as_deref().unwrap_or("?")
        ),
    }
}

/// Severity and the reason in words.
fn judge(m: &ModuleFile, known: bool, release: &str) -> (Severity, String) {
    let p = &m.place;
    let built_for = modules::vermagic_release(m).unwrap_or("an unknown kernel");
    if known {
        return (
            Severity::Critical,
            "named like a known rootkit module, or in a known rootkit place".into(),
        );
    }
    if let Some(pkg) = &p.package {
        return match p.package_checksum_ok {
            Some(true) => (
                Severity::Info,
                format!("installed by the package {pkg}, and its content matches the package's checksum"),
            ),
            Some(false) => (
                Severity::High,
                format!("installed by the package {pkg}, but its content no longer matches the package's checksum"),
            ),
            None => (
                Severity::Low,
                format!("installed by the package {pkg} (no checksum recorded to compare)"),
            ),
        };
    }
    match p.kind {
        "dkms" => return (Severity::Low, "a module built by DKMS".into()),
        "build" => {
            return (
                Severity::Low,
                "a module being built here (kbuild files beside it)".into(),
            )
        }
        _ => {}
    }
    if p.signer_trusted {
        return (
            Severity::Low,
            "signed by a key the running kernel holds".into(),
        );
    }
    if p.built_for_running_kernel {
        (
            Severity::High,
            format!("{}, owned by no package, and built for the running kernel {release}: it could be loaded here", signature_words(m)),
        )
    } else {
        (
            Severity::Medium,
            format!("{}, owned by no package, built for {built_for}, not the running kernel {release}: it cannot be loaded here as it is", signature_words(m)),
        )
    }
}

fn file_finding(m: &ModuleFile, signals: Vec<Signal>, release: &str) -> Finding {
    let path = String::from_utf8_lossy(&m.path).into_owned();
    let file_name = path.rsplit('/').next().unwrap_or("");
    let known = !signals.is_empty();
    let (severity, why) = judge(m, known, release);
    let what = if m.named_as_module {
        "Kernel module file"
    } else if file_name.ends_with(".o") {
        "Kernel module object (a module being built here)"
    } else {
        "Kernel module disguised as an ordinary file"
    };
    let mut evidence = vec![
        Evidence::new("path", escape(&m.path)),
        Evidence::new("severity", format!("{severity}: {why}")),
        Evidence::new("identification", m.identification.clone()),
        Evidence::new("file", m.meta.describe()),
        Evidence::new("signature", signature_words(m)),
        Evidence::new(
            "package",
            match (&m.place.package, m.place.package_checksum_ok) {
                (Some(p), Some(true)) => format!("{p} (content matches its MD5 checksum)"),
                (Some(p), Some(false)) => format!("{p} (content does NOT match its MD5 checksum)"),
                (Some(p), None) => format!("{p} (no checksum recorded)"),
                (None, _) if m.place.packages_checked => {
                    "no installed package owns it (dpkg)".into()
                }
                (None, _) => "not checked (no dpkg database; rpm databases are not read)".into(),
            },
        ),
        Evidence::new(
            "place",
            match (&m.place.kind, &m.place.root) {
                (k, Some(r)) => format!("{k} {r}"),
                (k, None) => k.to_string(),
            },
        ),
    ];
    if let Some(h) = &m.sha256 {
        evidence.push(Evidence::new("sha256", h.clone()));
    }
    for key in [
        "name",
        "vermagic",
        "license",
        "author",
        "description",
        "depends",
        "srcversion",
    ] {
        if let Some(v) = m.modinfo.get(key) {
            evidence.push(Evidence::new(format!("modinfo {key}"), v.join(", ")));
        }
    }
    if m.modinfo.is_empty() {
        evidence.push(Evidence::new("modinfo", "no .modinfo section"));
    }
    evidence.push(Evidence::new(
        "check by hand",
        format!(
            "file {0}; modinfo {0}; tail -c 28 {0}; dpkg -S {0}",
            escape(&m.path)
        ),
    ));
    Finding {
        remedies: vec![super::Remedy::QuarantineFile {
            path: crate::host::BytePath::new(m.path.clone()),
            id: None,
            direct: known,
            judged: m
                .sha256
                .clone()
                .map_or(super::Judged::None, super::Judged::Content),
        }],
        rule: "module.file".into(),
        severity,
        verdict: None,
        title: format!(
            "{what} {} outside the kernel's module tree: {why}",
            escape(&m.path)
        ),
        subject: Subject {
            path: Some(escape(&m.path)),
            name: m.modinfo.get("name").and_then(|v| v.first()).cloned(),
            ..Subject::default()
        },
        techniques: vec![Technique::new("T1547.006"), Technique::new("T1014")],
        score: None,
        signals,
        evidence,
    }
}

/// One finding for a whole kernel module tree.
fn tree_finding(root: &[u8], ms: &[&ModuleFile], release: &str) -> Finding {
    let version = ms
        .first()
        .and_then(|m| m.place.version.clone())
        .unwrap_or_default();
    let mut signers: std::collections::BTreeMap<String, usize> = Default::default();
    for m in ms {
        let k = match &m.signature {
            None => "unsigned".to_string(),
            Some(s) if s.damaged => "damaged signature".into(),
            Some(s) => format!(
                "signed by {}{}",
                s.signer.as_deref().unwrap_or("an unnamed signer"),
                if m.place.signer_trusted {
                    " (a key the running kernel holds)"
                } else {
                    ""
                }
            ),
        };
        *signers.entry(k).or_default() += 1;
    }
    let signer_words: Vec<String> = signers.iter().map(|(k, n)| format!("{k}: {n}")).collect();
    let loadable = ms.iter().any(|m| m.place.built_for_running_kernel);
    let here = if loadable {
        format!("built for the running kernel {release}")
    } else {
        format!("built for {version}, not the running kernel {release}: not loadable here")
    };
    let mut evidence = vec![
        Evidence::new("tree", escape(root)),
        Evidence::new("kernel version", escape(version.as_bytes())),
        Evidence::new("modules", ms.len().to_string()),
        Evidence::new("signatures", signer_words.join("; ")),
        Evidence::new(
            "severity",
            "low: a directory of modules for one kernel version (modules.dep or modules.order), as an extracted kernel package has; an unsigned module in it built for the running kernel would be reported on its own",
        ),
    ];
    for m in ms.iter().take(3) {
        evidence.push(Evidence::new("for example", escape(&m.path)));
    }
    evidence.push(Evidence::new(
        "check by hand",
        format!(
            "find {0} -name '*.ko*' | wc -l; ls {0}/modules.*",
            escape(root)
        ),
    ));
    Finding {
        rule: "module.tree".into(),
        severity: Severity::Low,
        verdict: None,
        title: format!(
            "Kernel module tree for {} under {}: {} modules ({}), {here}",
            escape(version.as_bytes()),
            escape(root),
            ms.len(),
            signer_words.join(", ")
        ),
        subject: Subject {
            path: Some(escape(root)),
            ..Subject::default()
        },
        techniques: vec![Technique::new("T1547.006")],
        signals: vec![],
        score: None,
        evidence,
        remedies: vec![],
    }
}

/// Findings for loaded modules.
pub fn loaded_findings(host: &Host, l: &Loaded) -> Vec<Finding> {
    let mut out = Vec::new();
    if !l.applicable {
        return out;
    }
    // Re-read the list: a module loaded during the scan is not hidden.
    let listed_now = host
        .read_text("/proc/modules")
        .map(|t| modules::parse_proc_modules(&t))
        .unwrap_or_default();
    let listed = |n: &str| l.proc_modules.contains_key(n) || listed_now.contains_key(n);
    let mut names: BTreeSet<&String> = l.sys_module.keys().collect();
    names.extend(l.kallsyms.iter());
    if let Some(t) = &l.tracefs {
        names.extend(t.iter());
    }
    // More load_module allocations than listed modules: memory no listed
    // module owns (on 6.1; newer kernels allocate per section via execmem, so
    // this is supporting evidence only, never a finding by itself).
    let vmalloc = l
        .vmalloc_load_module
        .filter(|n| *n > l.proc_modules.len() || l.vmalloc_printer_hooked)
        .map(|n| {
            Evidence::new(
                "vmallocinfo",
                format!(
                    "{n} load_module allocations for {} listed modules (/proc/vmallocinfo){}",
                    l.proc_modules.len(),
                    if l.vmalloc_printer_hooked {
                        "; the function that prints it (s_show) is hooked, so this count is filtered"
                    } else {
                        ""
                    }
                ),
            )
        });
    // The kernel log says a module tainted the kernel, but the taint mask
    // is clear: something reset it (rootkits do, to hide their load).
    let tainting_logged = l
        .kmsg
        .iter()
        .any(|(_, line)| line.contains("taints kernel") || line.contains("tainting kernel"));
    let taint_reset = (tainting_logged && l.tainted == Some(0)).then(|| {
        Evidence::new(
            "taint reset",
            "the kernel log says a module tainted the kernel, yet /proc/sys/kernel/tainted is 0: the flags were cleared",
        )
    });
    let mut hidden = BTreeSet::new();
    for name in names {
        if listed(name) {
            continue;
        }
        let mut seen = Vec::new();
        let mut missed = vec!["/proc/modules (lsmod)".to_string()];
        if l.sys_module.contains_key(name) {
            seen.push(format!("/sys/module/{name}"));
        } else {
            missed.push("/sys/module".into());
        }
        if l.kallsyms.contains(name) {
            seen.push("/proc/kallsyms".into());
        } else if l.kallsyms_readable {
            missed.push("/proc/kallsyms".into());
        }
        match &l.tracefs {
            Some(t) if t.contains(name) => seen.push("tracefs available_filter_functions".into()),
            Some(_) => missed.push("tracefs".into()),
            None => {}
        }
        let log: Vec<&String> = l
            .kmsg
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, line)| line)
            .collect();
        if !log.is_empty() {
            seen.push("kernel log".into());
        }
        hidden.insert(name.clone());
        let mut evidence = vec![
            Evidence::new("module", escape(name.as_bytes())),
            Evidence::new("seen by", seen.join(", ")),
            Evidence::new("missed by", missed.join(", ")),
        ];
        if let Some(t) = l.sys_module.get(name) {
            evidence.push(Evidence::new(
                "taint",
                if t.is_empty() {
                    "none".into()
                } else {
                    format!("{t} (/sys/module/{name}/taint)")
                },
            ));
        }
        for line in log {
            evidence.push(Evidence::new("kernel log", line.clone()));
        }
        if let Some(m) = l.tainted {
            evidence.push(Evidence::new(
                "kernel taint",
                if m == 0 {
                    "0 (none)".to_string()
                } else {
                    format!("{m} = {}", modules::taint_letters(m))
                },
            ));
        }
        evidence.extend(taint_reset.clone());
        evidence.extend(vmalloc.clone());
        if l.tracefs.is_some() {
            evidence.push(Evidence::new(
                "note",
                "tracefs available_filter_functions was read because another view already pointed at a hidden module; on some kernels (seen on 6.12) that read trips a WARN_ON_ONCE, which sets taint W",
            ));
        }
        evidence.push(Evidence::new(
            "check by hand",
            format!("grep -w {name} /proc/modules; ls /sys/module/{name}; grep '\\[{name}\\]' /proc/kallsyms"),
        ));
        out.push(Finding {
            remedies: Vec::new(),
            rule: "module.hidden".into(),
            severity: Severity::Critical,
            verdict: Some("malicious".into()),
            title: format!(
                "Kernel module \"{}\" is loaded but hidden from lsmod and /proc/modules (seen by {})",
                escape(name.as_bytes()),
                seen.join(", ")
            ),
            subject: Subject {
                name: Some(escape(name.as_bytes())),
                ..Subject::default()
            },
            techniques: vec![Technique::new("T1014"), Technique::new("T1547.006")],
            signals: vec![],
            score: None,
            evidence,
        });
    }
    // More load_module allocations than listed modules, and no hidden module
    // named by any view: a module that erased its name everywhere (its
    // /sys/module entry, kallsyms). On kernels with one allocation per module
    // (6.1 and earlier) the difference is the number hidden; kernels that
    // allocate per section give several per module, and the count is not used
    // there (more than twice the listed count, or far more).
    if let Some(n) = l.vmalloc_load_module {
        let listed_n = l.proc_modules.len();
        let per_module = listed_n == 0 || n < 2 * listed_n;
        if hidden.is_empty() && n > listed_n && n - listed_n <= 8 && per_module {
            let k = n - listed_n;
            let mut evidence = vec![Evidence::new(
                "vmallocinfo",
                format!("{n} load_module allocations for {listed_n} listed modules (/proc/vmallocinfo, read with fixed-size preads)"),
            )];
            if l.vmalloc_resumed {
                evidence.push(Evidence::new(
                    "filtered read",
                    "/proc/vmallocinfo ended early and a second read at the same offset found more: something filters it",
                ));
            }
            if let Some(m) = l.tainted {
                evidence.push(Evidence::new(
                    "kernel taint",
                    format!("{m} = {}", modules::taint_letters(m)),
                ));
            }
            evidence.push(Evidence::new(
                "check by hand",
                "grep -c load_module /proc/vmallocinfo; wc -l < /proc/modules",
            ));
            out.push(Finding {
                remedies: Vec::new(),
                rule: "module.hidden".into(),
                severity: Severity::Critical,
                verdict: Some("malicious".into()),
                title: format!(
                    "{k} kernel module(s) loaded but hidden everywhere, name unknown: {n} module allocations in /proc/vmallocinfo for {listed_n} listed modules"
                ),
                subject: Subject::default(),
                techniques: vec![Technique::new("T1014"), Technique::new("T1547.006")],
                signals: vec![],
                score: None,
                evidence,
            });
        }
    }
    // Taint that no listed module explains.
    if let Some(mask) = l.tainted {
        let explained: BTreeSet<char> = l
            .proc_modules
            .values()
            .flat_map(|m| m.taint.chars())
            .collect();
        let unexplained: Vec<(char, &str)> = TAINT_FLAGS
            .iter()
            .filter(|(bit, c, _)| {
                mask & (1u64 << bit) != 0 && "OEPF".contains(*c) && !explained.contains(c)
            })
            .map(|(_, c, d)| (*c, *d))
            .collect();
        if !unexplained.is_empty() {
            let letters: String = unexplained.iter().map(|(c, _)| *c).collect();
            let mut evidence = vec![
                Evidence::new(
                    "kernel taint",
                    format!(
                        "{mask} = {} (/proc/sys/kernel/tainted)",
                        modules::taint_letters(mask)
                    ),
                ),
                Evidence::new(
                    "unexplained",
                    unexplained
                        .iter()
                        .map(|(c, d)| format!("{c}: {d}"))
                        .collect::<Vec<_>>()
                        .join("; "),
                ),
                Evidence::new(
                    "listed modules",
                    format!(
                        "{} in /proc/modules, none carries {letters}",
                        l.proc_modules.len()
                    ),
                ),
            ];
            for (n, line) in &l.kmsg {
                if !listed(n) {
                    evidence.push(Evidence::new("kernel log", line.clone()));
                }
            }
            evidence.extend(vmalloc.clone());
            out.push(Finding {
                remedies: Vec::new(),
                rule: "module.taint-unexplained".into(),
                severity: Severity::High,
                verdict: None,
                title: format!(
                    "The kernel is tainted {letters} but no listed module explains it: a hidden module (or one unloaded since boot; taint stays until reboot)"
                ),
                subject: Subject::default(),
                techniques: vec![Technique::new("T1014")],
                signals: vec![],
                score: None,
                evidence,
            });
        }
    }
    // Log lines of modules that are not listed and not already reported.
    let mut logged: BTreeSet<&String> = BTreeSet::new();
    for (n, _) in &l.kmsg {
        if !listed(n) && !hidden.contains(n) {
            logged.insert(n);
        }
    }
    for n in logged {
        let lines: Vec<Evidence> = l
            .kmsg
            .iter()
            .filter(|(m, _)| m == n)
            .map(|(_, line)| Evidence::new("kernel log", line.clone()))
            .collect();
        out.push(Finding {
            remedies: Vec::new(),
            rule: "module.log-unlisted".into(),
            severity: Severity::Medium,
            verdict: None,
            title: format!(
                "The kernel log shows out-of-tree or unsigned module \"{}\" being loaded, and it is no longer listed (unloaded, or hidden)",
                escape(n.as_bytes())
            ),
            subject: Subject {
                name: Some(escape(n.as_bytes())),
                ..Subject::default()
            },
            techniques: vec![Technique::new("T1547.006")],
            signals: vec![],
            score: None,
            evidence: lines,
        });
    }
    out
}
