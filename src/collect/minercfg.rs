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
//! Every file is read through the host layer as a regular file only (never a
//! FIFO or device), at most [`MAX_CONFIG`] bytes, and parsed as JSON with
//! serde_json (its recursion limit bounds hostile nesting). A file counts only
//! when it holds at least one pool with both an address and a user (the
//! wallet): that shape is what mining software reads, and nothing else.

use serde::Serialize;

use crate::host::{bytes_to_path, BytePath, Host};

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

/// A miner configuration file found for a process.
#[derive(Debug, Clone, Serialize)]
pub struct MinerConfig {
    /// The file as the process sees it (absolute, from `/proc/PID/cwd`, the
    /// executable's folder or an open file's link).
    pub path: BytePath,
    /// How it was found: "command line", "open file" or "beside executable"...
    pub found: &'static str,
    pub pools: Vec<Pool>,
    /// SHA-256 of the bytes judged (what `fix` pins the file to).
    pub sha256: String,
}

/// Pools in a JSON text: XMRig's `pools[]` (`url`, `user`, `algo`/`coin`) or
/// cpuminer's top-level `url` and `user`. Entries without both an address and
/// a user are ignored.
pub fn parse_pools(text: &[u8]) -> Vec<Pool> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(text) else {
        return Vec::new();
    };
    let entry = |o: &serde_json::Value| -> Option<Pool> {
        let s = |k: &str| o.get(k).and_then(|x| x.as_str()).map(str::to_string);
        let url = s("url").filter(|u| !u.trim().is_empty())?;
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
    if pools.is_empty() {
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

/// Miner configurations of one process (see the module doc). `exe` is the
/// executable's path on disk, if it is a file.
pub fn find(host: &Host, pid: i32, argv: &[Vec<u8>], exe: Option<&[u8]>) -> Vec<MinerConfig> {
    let cwd = host.read_link(format!("/proc/{pid}/cwd")).ok();
    // (path as the process sees it, path to read through, how found)
    let mut tried: Vec<(Vec<u8>, Vec<u8>, &'static str)> = Vec::new();
    if let Some(c) = config_option(argv) {
        let shown = match &cwd {
            Some(d) => join(d, &c),
            None => c.clone(),
        };
        // Read through the process's own working directory link, so a
        // relative name means what it means to the process.
        let via = join(format!("/proc/{pid}/cwd").as_bytes(), &c);
        let via = if c.starts_with(b"/") { c.clone() } else { via };
        tried.push((shown, via, "command line"));
    }
    if let Ok(fds) = host.list_dir(format!("/proc/{pid}/fd")) {
        for e in fds.iter().take(MAX_FDS) {
            let fd = format!("/proc/{pid}/fd/{}", String::from_utf8_lossy(&e.name));
            let Ok(link) = host.read_link(&fd) else {
                continue;
            };
            let shown = link.strip_suffix(b" (deleted)").unwrap_or(&link).to_vec();
            // Only files on a disk or a memfd: never /proc, /sys or /dev.
            let ok = (shown.starts_with(b"/") || shown.starts_with(b"/memfd:"))
                && ![&b"/proc/"[..], b"/sys/", b"/dev/"]
                    .iter()
                    .any(|p| shown.starts_with(p));
            if ok {
                tried.push((shown, fd.into_bytes(), "open file"));
            }
        }
    }
    for name in DEFAULT_NAMES {
        if let Some(d) = &cwd {
            tried.push((
                join(d, name.as_bytes()),
                format!("/proc/{pid}/cwd/{name}").into_bytes(),
                "working directory",
            ));
        }
        if let Some(d) = exe.and_then(parent) {
            let p = join(d, name.as_bytes());
            tried.push((p.clone(), p, "beside the executable"));
        }
    }
    let mut out: Vec<MinerConfig> = Vec::new();
    for (shown, via, found) in tried {
        if out.iter().any(|c| c.path.as_bytes() == shown.as_slice()) {
            continue;
        }
        let Ok(data) = host.read_prefix(bytes_to_path(&via), MAX_CONFIG) else {
            continue;
        };
        // Cheap test before parsing: a pool config names a url.
        if !data.windows(5).any(|w| w == b"\"url\"") {
            continue;
        }
        let pools = parse_pools(&data);
        if !pools.is_empty() {
            out.push(MinerConfig {
                path: BytePath::new(shown),
                found,
                pools,
                sha256: crate::collect::modules::sha256_hex(&data),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xmrig_and_cpuminer_shapes() {
        let x = br#"{"autosave":true,"cpu":true,"pools":[{"url":"pool.example:3333","user":"4AAA","pass":"x","algo":"rx/0"},{"url":"","user":"w"}]}"#;
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
}
