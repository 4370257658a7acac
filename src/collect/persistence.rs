//! Places that start programs again: cron, systemd, init scripts, shell
//! start-up files, SSH keys. Read as text through [`Host`], with their
//! attributes (an immutable crontab is a classic miner self-defence).

use super::process::SHELLS;
use serde::Serialize;

use super::users::Users;
use crate::host::{FileMeta, Host};

/// What kind of start-up place a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PersistKind {
    /// A crontab (system or per-user): lines are jobs.
    Crontab,
    /// A script run by cron (cron.hourly etc.): the whole file runs.
    CronScript,
    /// A systemd unit, timer or drop-in.
    SystemdUnit,
    /// /etc/rc.local or an /etc/init.d script.
    InitScript,
    /// A shell start-up file (profile, bashrc).
    ShellStartup,
    /// SSH authorized_keys.
    SshKeys,
}

impl PersistKind {
    pub fn rule(self) -> &'static str {
        match self {
            PersistKind::Crontab | PersistKind::CronScript => "persistence.cron",
            PersistKind::SystemdUnit => "persistence.systemd",
            PersistKind::InitScript => "persistence.init",
            PersistKind::ShellStartup => "persistence.shell",
            PersistKind::SshKeys => "persistence.ssh",
        }
    }
    pub fn technique(self) -> &'static str {
        match self {
            PersistKind::Crontab | PersistKind::CronScript => "T1053.003",
            PersistKind::SystemdUnit => "T1543.002",
            PersistKind::InitScript => "T1037.004",
            PersistKind::ShellStartup => "T1546.004",
            PersistKind::SshKeys => "T1098.004",
        }
    }
}

/// One start-up file.
#[derive(Debug, Clone)]
pub struct PersistFile {
    /// The path, as the kernel's bytes (a name need not be UTF-8).
    pub path: Vec<u8>,
    pub kind: PersistKind,
    pub meta: FileMeta,
    pub content: Vec<u8>,
}

/// Largest start-up file read (bigger ones are not scripts a person wrote).
const MAX_FILE: usize = 1024 * 1024;

/// Most bytes of start-up files kept in all: memory follows what was read,
/// and an unprivileged user's 400 sparse 1 MiB unit files once took a scan
/// to 419 MB (issue 21). Past it, files are still listed, with no content.
pub const MAX_TOTAL: usize = 16 * 1024 * 1024;

/// Bytes read at a time: a file is read no further than its first NUL
/// (text ends there for cron, systemd and the shells; a sparse file is all
/// NULs).
const CHUNK: usize = 16 * 1024;

/// Reads a start-up file's text: up to its first NUL, [`MAX_FILE`] and
/// what is left of `budget`; true when the budget cut it.
fn read_text(
    host: &Host,
    p: &std::path::Path,
    budget: &mut usize,
) -> std::io::Result<(Vec<u8>, bool)> {
    let fd = host.open_file(p)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    let limit = MAX_FILE.min(*budget);
    let mut ended = false;
    while out.len() < limit {
        let want = CHUNK.min(limit - out.len());
        let n = match rustix::io::read(&fd, &mut buf[..want]) {
            Ok(0) => {
                ended = true;
                break;
            }
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => break,
            Err(e) => return Err(crate::host::io_err(e, p.as_os_str().as_encoded_bytes())),
        };
        if let Some(z) = buf[..n].iter().position(|b| *b == 0) {
            out.extend_from_slice(&buf[..z]);
            ended = true;
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out.shrink_to_fit();
    *budget -= out.len();
    let cut = !ended && limit < MAX_FILE && out.len() == limit;
    Ok((out, cut))
}

/// Collects every start-up file, and says when [`MAX_TOTAL`] cut their text.
pub fn collect(host: &Host, users: &Users) -> (Vec<PersistFile>, Option<String>) {
    let mut out = Vec::new();
    let mut budget = MAX_TOTAL;
    let mut starved = 0usize;
    let mut add = |path: Vec<u8>, kind: PersistKind| {
        if out.iter().any(|f: &PersistFile| f.path == path) {
            return;
        }
        let p = crate::host::bytes_to_path(&path);
        let meta = host.file_meta(&p);
        if !meta.exists {
            return;
        }
        if let Ok((content, cut)) = read_text(host, &p, &mut budget) {
            starved += usize::from(cut);
            out.push(PersistFile {
                path,
                kind,
                meta,
                content,
            });
        }
    };
    let files_in = |dir: &[u8]| -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = host
            .list_dir(crate::host::bytes_to_path(dir))
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.file_type != rustix::fs::FileType::Directory)
            .map(|e| [dir, b"/", &e.name].concat())
            .collect();
        v.sort();
        v
    };
    add(b"/etc/crontab".to_vec(), PersistKind::Crontab);
    for f in files_in(b"/etc/cron.d") {
        add(f, PersistKind::Crontab);
    }
    for d in [
        "/etc/cron.hourly",
        "/etc/cron.daily",
        "/etc/cron.weekly",
        "/etc/cron.monthly",
    ] {
        for f in files_in(d.as_bytes()) {
            add(f, PersistKind::CronScript);
        }
    }
    for d in [
        "/var/spool/cron",
        "/var/spool/cron/crontabs",
        "/var/spool/cron/tabs",
    ] {
        for f in files_in(d.as_bytes()) {
            add(f, PersistKind::Crontab);
        }
    }
    let mut unit_dirs: Vec<String> = [
        "/etc/systemd/system",
        "/run/systemd/system",
        "/usr/lib/systemd/system",
        "/lib/systemd/system",
        "/etc/systemd/user",
        "/usr/lib/systemd/user",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let homes: Vec<String> = {
        let mut h: Vec<String> = users
            .all()
            .filter(|u| u.uid == 0 || u.home.starts_with("/home/"))
            .map(|u| u.home.clone())
            .collect();
        h.push("/root".into());
        h.sort();
        h.dedup();
        h
    };
    for home in &homes {
        unit_dirs.push(format!("{home}/.config/systemd/user"));
    }
    for dir in unit_dirs {
        // Units and one level of drop-in / .wants directories.
        for e in host.list_dir(&dir).unwrap_or_default() {
            let name = &e.name[..];
            let path = [dir.as_bytes(), b"/", name].concat();
            if e.file_type == rustix::fs::FileType::Directory {
                if name.ends_with(b".d") {
                    for f in files_in(&path) {
                        if f.ends_with(b".conf") {
                            add(f, PersistKind::SystemdUnit);
                        }
                    }
                }
            } else if e.file_type == rustix::fs::FileType::RegularFile
                && (name.ends_with(b".service")
                    || name.ends_with(b".timer")
                    || name.ends_with(b".path")
                    || name.ends_with(b".socket"))
            {
                add(path, PersistKind::SystemdUnit);
            }
        }
    }
    add(b"/etc/rc.local".to_vec(), PersistKind::InitScript);
    for f in files_in(b"/etc/init.d") {
        add(f, PersistKind::InitScript);
    }
    for f in ["/etc/profile", "/etc/bash.bashrc", "/etc/environment"] {
        add(f.as_bytes().to_vec(), PersistKind::ShellStartup);
    }
    for f in files_in(b"/etc/profile.d") {
        add(f, PersistKind::ShellStartup);
    }
    for home in &homes {
        for f in [
            ".bashrc",
            ".profile",
            ".bash_profile",
            ".bash_login",
            ".zshrc",
        ] {
            add(
                format!("{home}/{f}").into_bytes(),
                PersistKind::ShellStartup,
            );
        }
        for f in [".ssh/authorized_keys", ".ssh/authorized_keys2"] {
            add(format!("{home}/{f}").into_bytes(), PersistKind::SshKeys);
        }
    }
    let note = (starved > 0).then(|| {
        format!(
            "start-up files: their text is read up to {} MiB in all; {starved} file(s) past it were judged on a part or none of their text",
            MAX_TOTAL >> 20
        )
    });
    (out, note)
}

/// The last path component of a command word.
fn command_name(w: &str) -> &str {
    w.rsplit('/').next().unwrap_or(w)
}

/// Words of a shell command line that are executed: the first word of each
/// command (after `;`, `&&`, `||`, `|`, `(`, `` ` ``, `$(`, `then`, `do`, ...),
/// the word after a wrapper (`nohup`, `exec`, `setsid`, `nice`, `sudo`, `env`),
/// and the script a shell is given (`sh /tmp/x.sh`).
pub fn executed_words(cmd: &str) -> Vec<String> {
    let mut spaced = cmd.replace("$(", " ; ");
    for sep in ["&&", "||", ";", "|", "(", ")", "`", "&"] {
        spaced = spaced.replace(sep, " ; ");
    }
    const KEYWORDS: &[&str] = &[
        "then", "do", "else", "elif", "if", "while", "until", "!", "{",
    ];
    const WRAPPERS: &[&str] = &[
        "nohup", "exec", "setsid", "nice", "sudo", "env", "time", "timeout", "busybox", "stdbuf",
        "ionice", "chrt", "taskset",
    ];
    let mut out = Vec::new();
    let mut at_start = true;
    let mut after_shell = false;
    for w in spaced.split_whitespace() {
        let w = w.trim_matches(|c| c == '"' || c == '\'');
        if w == ";" {
            at_start = true;
            after_shell = false;
            continue;
        }
        if at_start {
            if KEYWORDS.contains(&w) || w.contains('=') && !w.starts_with('/') {
                continue; // keyword or VAR=value prefix
            }
            out.push(w.to_string());
            at_start = WRAPPERS.contains(&command_name(w)) || w.starts_with('-');
            after_shell = SHELLS.contains(&command_name(w));
            continue;
        }
        if after_shell
            && (w == "-c" || w.ends_with('c') && w.starts_with('-') && !w.starts_with("--"))
        {
            at_start = true; // `sh -c 'CMD'`: CMD is a command line
            after_shell = false;
            continue;
        }
        if after_shell && !w.starts_with('-') {
            out.push(w.to_string()); // the script a shell runs
            after_shell = false;
        }
    }
    out
}
