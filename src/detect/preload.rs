//! Userland rootkit findings: preloaded libraries that hook hiding functions.

use std::collections::BTreeSet;

use super::{Evidence, Finding, Remedy, Severity, Subject, Technique};
use crate::collect::preload::Preload;
use crate::collect::Snapshot;
use crate::escape::escape;
use crate::rules::{Kind, Rules};

/// Findings for `/etc/ld.so.preload` entries and `LD_PRELOAD` / temporary
/// `LD_LIBRARY_PATH` environments.
///
/// Severity: a preloaded library that exports libc functions used for hiding
/// (`readdir`, `fopen`, `stat`, …) is `critical`; any other `/etc/ld.so.preload`
/// entry is `high` (rare on servers, and it runs inside every program);
/// `LD_PRELOAD` in one process's environment is `medium` (debuggers and
/// profilers use it) unless the library hooks hiding functions.
/// `LD_LIBRARY_PATH` is reported only when it points into a temporary
/// directory (`medium`): it is common and legitimate elsewhere.
pub fn findings(pre: &Preload, snap: &Snapshot, rules: &Rules) -> Vec<Finding> {
    let hiding: BTreeSet<&str> = rules.values(Kind::HidingSymbol).collect();
    let mut out = Vec::new();
    let hooks_of = |path: &[u8]| -> Vec<String> {
        pre.libs
            .get(path)
            .map(|l| {
                l.exports
                    .iter()
                    .filter(|s| hiding.contains(s.as_str()))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    };
    for entry in &pre.entries {
        let lib = pre.libs.get(entry).cloned().unwrap_or_default();
        let hooks = hooks_of(entry);
        let mut ev = vec![
            Evidence::new(
                "file",
                format!("/etc/ld.so.preload: {}", pre.ld_so_preload.describe()),
            ),
            Evidence::new("entry", escape(entry)),
            Evidence::new("library", lib.meta.describe()),
        ];
        if !hooks.is_empty() {
            ev.push(Evidence::new("hooks", hooks.join(", ")));
        }
        if let Some(e) = &lib.elf_error {
            ev.push(Evidence::new("elf", e.clone()));
        }
        // Names of running processes written inside the library: what it hides.
        let mut targets = Vec::new();
        for p in snap.processes.values() {
            let exe_name = p.exe.as_ref().ok().map(|e| e.file_name().to_vec());
            let names = [Some(p.name().to_vec()), exe_name];
            if names
                .iter()
                .flatten()
                .any(|n| n.len() >= 3 && lib.strings.contains(n))
            {
                targets.push(format!("PID {} {}", p.pid, escape(p.name())));
            }
        }
        if !targets.is_empty() {
            ev.push(Evidence::new(
                "names inside it",
                format!("the library contains the names of running processes, likely hidden from ps: {}", targets.join(", ")),
            ));
        }
        if !lib.mapped_by.is_empty() {
            ev.push(Evidence::new("mapped by", pid_list(&lib.mapped_by)));
        }
        if let Some((pkg, ok)) = &lib.package {
            ev.push(Evidence::new(
                "package",
                format!(
                    "{pkg} ({})",
                    match ok {
                        Some(true) => "content matches its MD5 checksum",
                        Some(false) => "content does NOT match its MD5 checksum",
                        None => "no checksum recorded",
                    }
                ),
            ));
        }
        // A packaged preload tool (snoopy, libeatmydata), unchanged, that
        // exports no hiding function and names no running process, is not a
        // rootkit: reported low, with its package.
        let packaged_benign = hooks.is_empty()
            && targets.is_empty()
            && lib
                .package
                .as_ref()
                .is_some_and(|(_, ok)| *ok == Some(true));
        let sev = if packaged_benign {
            Severity::Low
        } else if hooks.is_empty() {
            Severity::High
        } else {
            Severity::Critical
        };
        let mut remedies = vec![Remedy::RemovePreloadEntry {
            entry: crate::host::BytePath::new(entry.clone()),
        }];
        if lib.meta.exists {
            remedies.push(Remedy::QuarantineFile {
                path: crate::host::BytePath::new(entry.clone()),
                id: None,
                direct: !hooks.is_empty(),
                judged: lib
                    .sha256
                    .clone()
                    .map_or(super::Judged::None, super::Judged::Content),
            });
        }
        out.push(Finding {
            remedies,
            rule: "rootkit.preload".into(),
            severity: sev,
            verdict: None,
            title: if packaged_benign {
                format!(
                    "/etc/ld.so.preload loads {} from the package {} (unchanged; it overrides no hiding function): a packaged preload tool, not a rootkit",
                    escape(entry),
                    lib.package.as_ref().map_or(String::new(), |(p, _)| escape(p.as_bytes()))
                )
            } else if hooks.is_empty() {
                format!(
                    "/etc/ld.so.preload loads {} into every dynamically linked program",
                    escape(entry)
                )
            } else {
                format!(
                    "/etc/ld.so.preload loads {} into every program and it overrides {}: a userland rootkit that hides files or processes from ps, top and ls",
                    escape(entry),
                    hooks.join(", ")
                )
            },
            subject: Subject {
                path: Some(escape(entry)),
                ..Subject::default()
            },
            techniques: vec![Technique::new("T1574.006"), Technique::new("T1014")],
            signals: vec![],
            score: None,
            evidence: ev,
        });
    }
    if pre.ld_so_preload.exists && (pre.ld_so_preload.immutable || pre.ld_so_preload.append_only) {
        out.push(Finding {
            remedies: Vec::new(),
            rule: "rootkit.preload-protected".into(),
            severity: Severity::High,
            verdict: None,
            title: "/etc/ld.so.preload is protected with chattr so it cannot be edited or removed"
                .into(),
            subject: Subject {
                path: Some("/etc/ld.so.preload".into()),
                ..Subject::default()
            },
            techniques: vec![Technique::new("T1222.002")],
            signals: vec![],
            score: None,
            evidence: vec![Evidence::new("file", pre.ld_so_preload.describe())],
        });
    }
    // LD_PRELOAD / LD_LIBRARY_PATH in environments, grouped by value.
    // (variable, value) → (PIDs, directories of it in their own build tree)
    type Group<'a> = (Vec<i32>, &'a [Vec<u8>]);
    let mut groups: std::collections::BTreeMap<(&str, &[u8]), Group> = Default::default();
    for e in &pre.env {
        groups
            .entry((e.var, &e.value))
            .or_insert((Vec::new(), &e.own_build_dirs))
            .0
            .push(e.pid);
    }
    let temp: Vec<&str> = rules.values(Kind::TempDir).collect();
    for ((var, value), (pids, build_dirs)) in groups {
        // A build tool's LD_LIBRARY_PATH into its user's own build tree is
        // not a hijack (cargo sets it for build scripts and tests).
        let in_temp = value
            .split(|b| *b == b':')
            .filter(|d| !build_dirs.iter().any(|b| b == d))
            .any(|d| {
                let p = String::from_utf8_lossy(d).to_ascii_lowercase();
                temp.iter()
                    .any(|t| p.starts_with(t) || format!("{p}/").starts_with(t))
            });
        let (sev, title) = if var == "LD_PRELOAD" {
            let hooks: Vec<String> = crate::collect::preload::split_preload(value)
                .iter()
                .flat_map(|l| hooks_of(l))
                .collect();
            if hooks.is_empty() {
                (
                    if in_temp {
                        Severity::High
                    } else {
                        Severity::Medium
                    },
                    format!(
                        "LD_PRELOAD={} is set in {} process(es)",
                        escape(value),
                        pids.len()
                    ),
                )
            } else {
                (
                    Severity::Critical,
                    format!(
                        "LD_PRELOAD={} in {} process(es) overrides {}: a userland rootkit",
                        escape(value),
                        pids.len(),
                        hooks.join(", ")
                    ),
                )
            }
        } else if in_temp {
            (
                Severity::Medium,
                format!(
                    "LD_LIBRARY_PATH={} makes {} process(es) load libraries from a temporary directory",
                    escape(value),
                    pids.len()
                ),
            )
        } else {
            continue;
        };
        out.push(Finding {
            remedies: Vec::new(),
            rule: "rootkit.preload-env".into(),
            severity: sev,
            verdict: None,
            title,
            subject: Subject::default(),
            techniques: vec![Technique::new("T1574.006")],
            signals: vec![],
            score: None,
            evidence: vec![
                Evidence::new("variable", format!("{var}={}", escape(value))),
                Evidence::new("processes", pid_list(&pids)),
                Evidence::new(
                    "check by hand",
                    format!("tr '\\0' '\\n' < /proc/{}/environ | grep ^LD_", pids[0]),
                ),
            ],
        });
    }
    out
}

fn pid_list(pids: &[i32]) -> String {
    let shown: Vec<String> = pids.iter().take(20).map(i32::to_string).collect();
    let more = pids.len().saturating_sub(20);
    if more > 0 {
        format!("PIDs {} and {more} more", shown.join(" "))
    } else {
        format!("PIDs {}", shown.join(" "))
    }
}
