//! Miner configuration files: where a renamed miner keeps its pool and wallet.
//!
//! A miner that moved its pool out of its command line still needs it
//! somewhere it can read at start. Quarry looks, for one process, in:
//! - files named on its command line (`-c FILE`, `--config FILE`,
//!   `--config=FILE`), relative to its working directory;
//! - the regular files it holds open (`/proc/PID/fd`);
//! - its working directory and its executable's directory, for the names
//!   miners read by default ([`DEFAULT_NAMES`]).
//!
//! Every path is the process's own: resolved beneath its `/proc/PID/root`
//! (a container's `/usr/local/bin/config.json` is the container's file, never
//! the host's of the same name), never on a file system a user or another
//! machine serves ([`crate::host::resolve`]), read as a regular file only,
//! at most [`MAX_CONFIG`] bytes, and parsed as JSON with serde_json (its
//! recursion limit bounds hostile nesting).
//!
//! A file counts only when it looks like what mining software reads: a pool
//! address (a stratum URL, or `host:port`) with a user (the wallet or
//! worker), in XMRig's `pools[]` or cpuminer's top-level shape with a miner
//! key beside it ([`parse_pools`]). And it is evidence about the process only
//! when it belongs to it ([`MinerConfig::foreign`]): owned by root or by the
//! process's user and writable by nobody else. A pool config another user
//! wrote into `/tmp` says something about that user, not about a root
//! process that happens to work in `/tmp`.

use serde::Serialize;

use crate::host::proc_root::ProcRoot;
use crate::host::{BytePath, Host};

/// Configuration names miners look for by default: XMRig (`config.json`,
/// xmrig.com/docs/miner/config), cpuminer-multi (`cpuminer-conf.json`).
pub const DEFAULT_NAMES: &[&str] = &["config.json", "cpuminer-conf.json"];

/// Largest configuration read. XMRig's full default config is about 4 KiB;
/// one with hundreds of pools is well under this.
pub const MAX_CONFIG: usize = 1 << 20;

/// Most open files looked at per process (a busy server process can hold
/// thousands; a miner holds a handful).
const MAX_FDS: usize = 256;

/// One pool entry of a miner configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pool {
    pub url: String,
    pub user: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algo: Option<String>,
}

/// How a configuration is bound to the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Bound {
    /// Its command line names it (`-c FILE`).
    Named,
    /// It holds it open.
    HeldOpen,
    /// It lies beside the process's own executable, in its own root.
    BesideExecutable,
    /// It lies in the process's working directory.
    WorkingDirectory,
}

impl Bound {
    /// How it was found, in words.
    pub fn words(self) -> &'static str {
        match self {
            Bound::Named => "named on its command line",
            Bound::HeldOpen => "held open",
            Bound::BesideExecutable => "beside its executable",
            Bound::WorkingDirectory => "in its working directory",
        }
    }

    /// True when the process itself points at the file (it names it or
    /// holds it open): its own evidence, not a file that only lies nearby.
    pub fn is_own(self) -> bool {
        matches!(self, Bound::Named | Bound::HeldOpen)
    }
}

/// A miner configuration file found for a process.
#[derive(Debug, Clone, Serialize)]
pub struct MinerConfig {
    /// The file as the process sees it (in its own root).
    pub path: BytePath,
    /// The same inode as a path in Quarry's mount namespace (what `fix` pins
    /// and acts on); `None` when no host path leads to it (a container's
    /// file no host mount shows, or a deleted one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_path: Option<BytePath>,
    /// How it is bound to the process.
    pub found: Bound,
    pub pools: Vec<Pool>,
    /// SHA-256 of the bytes judged (what `fix` pins the file to).
    pub sha256: String,
    /// Owner and permission bits.
    pub uid: u32,
    pub mode: u32,
    /// Device and inode of the file.
    #[serde(skip)]
    pub dev_ino: (u64, u64),
    /// Why the file is not the process's own evidence, if it is not: owned
    /// by another user, or writable by others ("owned by uid 4242, not by
    /// the process's user root").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub foreign: Option<String>,
    /// Its directory is writable by every user (a sticky /tmp): a file
    /// there is never enough alone.
    pub open_directory: bool,
    /// Where it lives, when that is not Quarry's own root ("its own mount
    /// namespace mnt:[...]").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
}

/// What the search met besides configurations: files that could not be
/// read for who serves them, in words.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Search {
    pub configs: Vec<MinerConfig>,
    pub not_read: Vec<String>,
    /// A file its command line names that does not exist (any more).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub named_missing: Option<String>,
}

/// Whether a pool address looks like one: a stratum URL
/// (`stratum+tcp://`, `stratum+ssl://`, `stratum2+tcp://`, ...) or XMRig's
/// `host:port` with no scheme. `https://example.org` is not a pool.
pub fn pool_like(url: &str) -> bool {
    let u = url.trim().to_ascii_lowercase();
    if u.starts_with("stratum") {
        return u
            .split_once("://")
            .is_some_and(|(scheme, rest)| !scheme.contains('/') && !rest.is_empty());
    }
    if u.contains("://") || u.contains(char::is_whitespace) || u.contains('/') {
        return false;
    }
    u.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
}

/// Keys only mining software reads beside a top-level pool (cpuminer's
/// flat shape; XMRig's `pools[]` is specific by itself).
const MINER_KEYS: &[&str] = &[
    "algo",
    "algorithm",
    "coin",
    "threads",
    "cpu-priority",
    "donate-level",
    "rig-id",
    "randomx",
    "cpu",
    "pass",
];

/// Pools in a JSON text: XMRig's `pools[]` (`url`, `user`, `algo`/`coin`) or
/// cpuminer's top-level `url` and `user` with a miner key beside them.
/// Entries need a pool-like address ([`pool_like`]) and a user.
pub fn parse_pools(text: &[u8]) -> Vec<Pool> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(text) else {
        return Vec::new();
    };
    let entry = |o: &serde_json::Value| -> Option<Pool> {
        let s = |k: &str| o.get(k).and_then(|x| x.as_str()).map(str::to_string);
        let url = s("url").filter(|u| pool_like(u))?;
        let user = s("user").filter(|u| !u.trim().is_empty())?;
        Some(Pool {
            url,
            user,
            algo: s("algo").or_else(|| s("coin")),
        })
    };
    let mut pools: Vec<Pool> = v
        .get("pools")
        .and_then(|p| p.as_array())
        .map(|a| a.iter().filter_map(entry).collect())
        .unwrap_or_default();
    if pools.is_empty() && MINER_KEYS.iter().any(|k| v.get(k).is_some()) {
        pools.extend(entry(&v));
    }
    pools
}

/// The file named by `-c`, `--config` or `--config=` in a command line.
pub fn config_option(argv: &[Vec<u8>]) -> Option<Vec<u8>> {
    let mut it = argv.iter().skip(1);
    while let Some(a) = it.next() {
        if a == b"-c" || a == b"--config" {
            return it.next().cloned();
        }
        if let Some(v) = a.strip_prefix(b"--config=") {
            return Some(v.to_vec());
        }
    }
    None
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if name.starts_with(b"/") {
        return name.to_vec();
    }
    let mut p = dir.to_vec();
    if !p.ends_with(b"/") {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

fn parent(path: &[u8]) -> Option<&[u8]> {
    let i = path.iter().rposition(|b| *b == b'/')?;
    Some(if i == 0 { b"/" } else { &path[..i] })
}

/// Miner configurations of one process (see the module doc), looked up in
/// its own root. `exe_view` is its executable's path as it sees it (a file,
/// not a memfd); `uid` its real user.
pub fn find(
    host: &Host,
    root: &ProcRoot,
    argv: &[Vec<u8>],
    exe_view: Option<&[u8]>,
    uid: Option<u32>,
) -> Search {
    let pid = root.pid;
    let mut out = Search::default();
    let cwd = root.find_link("cwd").ok().map(|f| f.real);
    // (path as the process sees it, how it is bound, fd link if held)
    let mut tried: Vec<(Vec<u8>, Bound, Option<String>)> = Vec::new();
    if let Some(c) = config_option(argv) {
        let shown = match (&cwd, c.starts_with(b"/")) {
            (Some(d), false) => join(d, &c),
            _ => c.clone(),
        };
        tried.push((shown, Bound::Named, None));
    }
    if let Ok(fds) = host.list_dir(format!("/proc/{pid}/fd")) {
        for e in fds.iter().take(MAX_FDS) {
            let n = String::from_utf8_lossy(&e.name).into_owned();
            let Ok(link) = host.read_link(format!("/proc/{pid}/fd/{n}")) else {
                continue;
            };
            let shown = root.view_of(&link);
            // Only files on a disk or a memfd: never /proc, /sys or /dev.
            let ok = shown.starts_with(b"/")
                && ![&b"/proc/"[..], b"/sys/", b"/dev/"]
                    .iter()
                    .any(|p| shown.starts_with(p));
            if ok {
                tried.push((shown, Bound::HeldOpen, Some(format!("fd/{n}"))));
            }
        }
    }
    for name in DEFAULT_NAMES {
        if let Some(d) = &cwd {
            tried.push((join(d, name.as_bytes()), Bound::WorkingDirectory, None));
        }
        if let Some(d) = exe_view.and_then(parent) {
            tried.push((join(d, name.as_bytes()), Bound::BesideExecutable, None));
        }
    }
    for (shown, bound, fd) in tried {
        if out
            .configs
            .iter()
            .any(|c| c.path.as_bytes() == shown.as_slice())
        {
            continue;
        }
        // A named or held file is followed as the process would; a default
        // name only when it is the file itself, not a link to elsewhere.
        let found = match &fd {
            Some(which) => root.find_link(which),
            None => root.find(&shown, bound == Bound::Named),
        };
        let f = match found {
            Ok(f) => f,
            Err(r) => {
                if r.is_remote() {
                    let what = r.describe();
                    if !out.not_read.contains(&what) {
                        out.not_read.push(what);
                    }
                } else if bound == Bound::Named {
                    out.named_missing = Some(format!(
                        "{} (named by -c on its command line): {}",
                        crate::escape::escape(&shown),
                        r.describe()
                    ));
                }
                continue;
            }
        };
        let Ok(fd_read) = f.open_read() else {
            continue;
        };
        let Ok(data) = crate::host::read_fd(&fd_read, MAX_CONFIG) else {
            continue;
        };
        // Cheap test before parsing: a pool config names a url.
        if !data.windows(5).any(|w| w == b"\"url\"") {
            continue;
        }
        let pools = parse_pools(&data);
        if pools.is_empty() {
            continue;
        }
        let st = &f.stat;
        let mode = st.stx_mode as u32 & 0o7777;
        let foreign = foreign_owner(st.stx_uid, st.stx_gid, mode, uid);
        let open_directory = parent(&f.real)
            .and_then(|d| root.find(d, true).ok())
            .is_some_and(|d| d.stat.stx_mode & 0o002 != 0);
        let host_path = root.host_path(&f).map(BytePath::new);
        out.configs.push(MinerConfig {
            path: BytePath::new(if fd.is_some() { shown } else { f.real.clone() }),
            host_path,
            found: bound,
            pools,
            sha256: crate::collect::modules::sha256_hex(&data),
            uid: st.stx_uid,
            mode,
            dev_ino: (
                rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor),
                st.stx_ino,
            ),
            foreign,
            open_directory,
            root: (!root.is_same()).then(|| root.describe()),
        });
    }
    out
}

/// Why a file with this owner and mode is not a process's own (its user is
/// `uid`), if it is not: it must be root's or the process user's, and
/// writable by nobody else.
pub fn foreign_owner(owner: u32, group: u32, mode: u32, uid: Option<u32>) -> Option<String> {
    if owner != 0 && Some(owner) != uid {
        return Some(format!(
            "owned by uid {owner}, not by the process's user{}",
            uid.map(|u| format!(" (uid {u})")).unwrap_or_default()
        ));
    }
    if mode & 0o002 != 0 {
        return Some(format!("writable by every user (mode {mode:o})"));
    }
    if mode & 0o020 != 0 && group != 0 {
        return Some(format!(
            "writable by the members of group {group} (mode {mode:o})"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xmrig_and_cpuminer_shapes() {
        let x = br#"{"autosave":true,"cpu":true,"pools":[{"url":"pool.example:3333","user":"4AAA","pass":"x","algo":"rx/0"},{"url":"","user":"w"},{"url":"https://pool.example","user":"w"}]}"#;
        let p = parse_pools(x);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].url, "pool.example:3333");
        assert_eq!(p[0].algo.as_deref(), Some("rx/0"));
        let c = br#"{"url":"stratum+tcp://p:3333","user":"w","pass":"x","algo":"cryptonight"}"#;
        assert_eq!(parse_pools(c).len(), 1);
        // Ordinary JSON with a url but no user, or not JSON at all: nothing.
        assert!(parse_pools(br#"{"url":"https://example.org","name":"x"}"#).is_empty());
        assert!(parse_pools(br#"{"pools":[{"url":"a"}]"#).is_empty());
        assert!(parse_pools(&[b'['; 100_000]).is_empty());
        // Any JSON with a url and a user is not a miner's config: a web
        // address, or a pool-like one with nothing a miner reads beside it.
        assert!(
            parse_pools(br#"{"url":"https://example.org","user":"bob","pass":"x"}"#).is_empty()
        );
        assert!(parse_pools(br#"{"url":"db.internal:5432","user":"app"}"#).is_empty());
        assert!(pool_like("stratum+ssl://pool.example:443"));
        assert!(pool_like("pool.example:3333"));
        assert!(!pool_like("pool.example"));
        assert!(!pool_like("stratum+tcp://"));
        assert!(!pool_like("http://pool.example:80"));
    }

    #[test]
    fn config_options() {
        let argv = |v: &[&str]| v.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>();
        assert_eq!(
            config_option(&argv(&["x", "-c", "a.json"])),
            Some(b"a.json".to_vec())
        );
        assert_eq!(
            config_option(&argv(&["x", "--config=/b"])),
            Some(b"/b".to_vec())
        );
        assert_eq!(config_option(&argv(&["-c", "x"])), None);
        assert_eq!(join(b"/w", b"c.json"), b"/w/c.json".to_vec());
        assert_eq!(join(b"/", b"c.json"), b"/c.json".to_vec());
        assert_eq!(parent(b"/usr/bin/x"), Some(&b"/usr/bin"[..]));
        assert_eq!(parent(b"/x"), Some(&b"/"[..]));
    }

    #[test]
    fn owners() {
        assert_eq!(foreign_owner(0, 0, 0o644, Some(0)), None);
        assert_eq!(foreign_owner(4242, 4242, 0o644, Some(4242)), None);
        assert!(foreign_owner(4242, 4242, 0o644, Some(0))
            .unwrap()
            .contains("uid 4242"));
        assert!(foreign_owner(0, 0, 0o666, Some(0)).is_some());
        assert!(foreign_owner(0, 50, 0o664, Some(0)).is_some());
        assert_eq!(foreign_owner(0, 0, 0o664, Some(0)), None);
    }
}
