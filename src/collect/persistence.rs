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
    /// Its bytes (at most 1 MiB), less long runs of NULs.
    pub content: Vec<u8>,
    /// SHA-256 of the whole file, when all of it was read: what `quarry fix`
    /// pins before it acts on the file (`None`: fix leaves it alone).
    pub sha256: Option<String>,
}

/// Largest start-up file read (bigger ones are not scripts a person wrote).
const MAX_FILE: usize = 1024 * 1024;

/// Most bytes of start-up files kept in all: memory follows what is kept,
/// and an unprivileged user's 400 sparse 1 MiB unit files once took a scan
/// to 419 MB (issue 21). System places are read before users' homes; past
/// the budget, files are listed with no content and the report says so.
pub const MAX_TOTAL: usize = 16 * 1024 * 1024;

/// Bytes read at a time.
const CHUNK: usize = 16 * 1024;

/// A run of NUL bytes at least this long is not kept: no start-up file's
/// text has one, and a sparse file is nothing else. (Lines after it are
/// kept: cron reads on past NULs, so they are not the end of the text.)
const NUL_RUN: usize = 16;

/// Reads a start-up file: its bytes up to [`MAX_FILE`], less runs of
/// [`NUL_RUN`] or more NULs, kept within what is left of `budget`, and the
/// SHA-256 of the whole file when all of it was read. True when the budget
/// cut it.
fn read_text(
    host: &Host,
    p: &std::path::Path,
    budget: &mut usize,
) -> std::io::Result<(Vec<u8>, Option<String>, bool)> {
    use sha2::Digest;
    if *budget == 0 {
        return Ok((Vec::new(), None, true));
    }
    let fd = host.open_file(p)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    let mut hash = sha2::Sha256::new();
    let (mut read, mut nuls, mut ended) = (0usize, 0usize, false);
    while read < MAX_FILE {
        let want = CHUNK.min(MAX_FILE - read);
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
        read += n;
        hash.update(&buf[..n]);
        for &b in &buf[..n] {
            if b == 0 {
                nuls += 1;
                continue;
            }
            if nuls > 0 && nuls < NUL_RUN {
                out.extend(std::iter::repeat_n(0u8, nuls));
            }
            nuls = 0;
            out.push(b);
        }
        if out.len() >= *budget {
            break;
        }
    }
    if nuls > 0 && nuls < NUL_RUN {
        out.extend(std::iter::repeat_n(0u8, nuls));
    }
    // At the end of the file only if one more read says so (a file of
    // exactly MAX_FILE bytes is whole).
    if !ended {
        ended = matches!(rustix::io::read(&fd, &mut buf[..1]), Ok(0));
    }
    let cut = out.len() > *budget;
    out.truncate(*budget);
    out.shrink_to_fit();
    *budget -= out.len();
    let whole = ended && !cut;
    Ok((
        out,
        whole.then(|| super::modules::hex(&hash.finalize())),
        cut,
    ))
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
        if let Ok((content, sha256, cut)) = read_text(host, &p, &mut budget) {
            starved += usize::from(cut);
            out.push(PersistFile {
                path,
                kind,
                meta,
                content,
                sha256,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_nul_runs_are_dropped_lines_after_them_kept_and_the_whole_file_hashed() {
        let d = tempfile::tempdir().unwrap();
        let host = Host::new(d.path());
        let mut data = b"* * * * * root /bin/true\n".to_vec();
        data.extend([0u8; 100]);
        data.extend(b"\n* * * * * root /tmp/x\n\0\0\0end");
        std::fs::write(d.path().join("tab"), &data).unwrap();
        let mut budget = MAX_TOTAL;
        let (text, sha, cut) = read_text(&host, std::path::Path::new("/tab"), &mut budget).unwrap();
        assert_eq!(
            text,
            b"* * * * * root /bin/true\n\n* * * * * root /tmp/x\n\0\0\0end".to_vec()
        );
        assert_eq!(sha.unwrap(), crate::collect::modules::sha256_hex(&data));
        assert!(!cut);
        assert_eq!(budget, MAX_TOTAL - text.len());
        // A sparse file keeps nothing; a file past the budget is cut and
        // pinned to nothing.
        let f = std::fs::File::create(d.path().join("sparse")).unwrap();
        f.set_len(1 << 20).unwrap();
        let (text, sha, _) =
            read_text(&host, std::path::Path::new("/sparse"), &mut budget).unwrap();
        assert!(text.is_empty());
        assert!(sha.is_some());
        let mut small = 10;
        let (text, sha, cut) = read_text(&host, std::path::Path::new("/tab"), &mut small).unwrap();
        assert_eq!(text.len(), 10);
        assert!(cut && sha.is_none());
        assert_eq!(small, 0);
    }
}
