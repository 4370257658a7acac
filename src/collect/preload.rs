//! Userland rootkits: `/etc/ld.so.preload`, `LD_PRELOAD` / `LD_LIBRARY_PATH`
//! in process environments, and what each preloaded library exports.
//!
//! Quarry itself is static, so none of this can affect its own view; it reports
//! what the host's dynamically linked tools (`ps`, `top`, `ls`) are exposed to.

use std::collections::{BTreeMap, BTreeSet};

use object::{Object, ObjectSymbol};

use super::process::split_nul;
use crate::host::{bytes_to_path, FileMeta, Host};

/// What Quarry learned about one preloaded library.
#[derive(Debug, Clone, Default)]
pub struct Library {
    pub meta: FileMeta,
    /// Dynamic symbols it defines (exports).
    pub exports: BTreeSet<String>,
    /// Why it could not be parsed, if it could not.
    pub elf_error: Option<String>,
    /// Printable strings (≥ 3 bytes) of its data, to match against process names.
    pub strings: BTreeSet<Vec<u8>>,
    /// PIDs that have it mapped (`/proc/PID/maps`).
    pub mapped_by: Vec<i32>,
    /// SHA-256 of the content judged (when it was read whole).
    pub sha256: Option<String>,
    /// The installed package that owns it (dpkg), and whether its content
    /// matches the package's MD5 checksum.
    pub package: Option<(String, Option<bool>)>,
}

/// `LD_PRELOAD` or `LD_LIBRARY_PATH` in a process's environment.
#[derive(Debug, Clone)]
pub struct EnvEntry {
    pub pid: i32,
    pub var: &'static str,
    pub value: Vec<u8>,
    /// Directories of the value that lie in a build tree (a cargo `target/`
    /// beside a `Cargo.toml`, or a CMake build folder with `CMakeCache.txt`)
    /// owned by the process's own user: what `cargo build` or `cmake --build`
    /// set, not a hijack.
    pub own_build_dirs: Vec<Vec<u8>>,
}

/// The userland-rootkit picture.
#[derive(Debug, Clone, Default)]
pub struct Preload {
    pub ld_so_preload: FileMeta,
    /// Entries of `/etc/ld.so.preload` (separated by whitespace or `:`).
    pub entries: Vec<Vec<u8>>,
    pub env: Vec<EnvEntry>,
    /// Every library named by an entry or by `LD_PRELOAD`, by path.
    pub libs: BTreeMap<Vec<u8>, Library>,
    /// Processes whose environment could not be read.
    pub env_unreadable: usize,
}

/// Largest library Quarry parses (a preload hider is a few KiB to a few MiB).
const MAX_LIB_SIZE: usize = 64 * 1024 * 1024;

/// Collects the picture for the given PIDs.
pub fn collect(host: &Host, pids: &[i32]) -> Preload {
    let mut p = Preload {
        ld_so_preload: host.file_meta("/etc/ld.so.preload"),
        ..Preload::default()
    };
    if p.ld_so_preload.exists {
        let text = host.read("/etc/ld.so.preload").unwrap_or_default();
        p.entries = split_preload(&text);
    }
    for &pid in pids {
        match host.read(format!("/proc/{pid}/environ")) {
            Ok(env) => {
                for kv in split_nul(&env) {
                    for var in ["LD_PRELOAD", "LD_LIBRARY_PATH"] {
                        if let Some(v) = kv.strip_prefix(format!("{var}=").as_bytes()) {
                            if !v.is_empty() {
                                p.env.push(EnvEntry {
                                    pid,
                                    var,
                                    value: v.to_vec(),
                                    own_build_dirs: if var == "LD_LIBRARY_PATH" {
                                        own_build_dirs(host, pid, v)
                                    } else {
                                        Vec::new()
                                    },
                                });
                            }
                        }
                    }
                }
            }
            Err(_) => p.env_unreadable += 1,
        }
    }
    let mut paths: BTreeSet<Vec<u8>> = p.entries.iter().cloned().collect();
    for e in p.env.iter().filter(|e| e.var == "LD_PRELOAD") {
        paths.extend(split_preload(&e.value));
    }
    let packages = (!paths.is_empty()).then(|| super::packages::Packages::load(host));
    for path in paths {
        let mut lib = inspect_library(host, &path);
        if let Some(pk) = &packages {
            // The real path: a package lists /usr/lib/..., an entry may name a link.
            let real = std::fs::canonicalize(host.path(bytes_to_path(&path)))
                .ok()
                .and_then(|r| {
                    r.strip_prefix(host.root())
                        .ok()
                        .map(|x| [b"/".as_slice(), x.as_os_str().as_encoded_bytes()].concat())
                })
                .unwrap_or_else(|| path.clone());
            if let Some(owner) = pk.owner(&real).or_else(|| pk.owner(&path)) {
                let ok = pk.md5_matches(host, owner, &real);
                lib.package = Some((owner.to_string(), ok));
            }
        }
        p.libs.insert(path, lib);
    }
    if !p.libs.is_empty() {
        for &pid in pids {
            let Ok(maps) = host.read(format!("/proc/{pid}/maps")) else {
                continue;
            };
            let mapped = super::process::mapped_paths(&maps);
            for (path, lib) in p.libs.iter_mut() {
                if mapped.contains(path) {
                    lib.mapped_by.push(pid);
                }
            }
        }
    }
    p
}

/// The directories of a `LD_LIBRARY_PATH` value that lie in a build tree
/// owned by the process's real user (see [`EnvEntry::own_build_dirs`]).
fn own_build_dirs(host: &Host, pid: i32, value: &[u8]) -> Vec<Vec<u8>> {
    let Some(uid) = host
        .read_text(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            super::process::status_field(&t, "Uid")
                .and_then(|v| v.split_whitespace().next().map(str::to_string))
        })
        .and_then(|u| u.parse::<u32>().ok())
    else {
        return Vec::new();
    };
    value
        .split(|b| *b == b':')
        .filter(|d| !d.is_empty())
        .filter(|d| {
            let d = bytes_to_path(d);
            let owned = |p: &std::path::Path| host.lstat(p).is_ok_and(|st| st.st_uid == uid);
            owned(&d)
                && d.ancestors().take(8).any(|a| {
                    let cargo = a.file_name().is_some_and(|n| n == "target")
                        && a.parent()
                            .is_some_and(|p| host.exists(p.join("Cargo.toml")));
                    let cmake = host.exists(a.join("CMakeCache.txt"));
                    (cargo || cmake) && owned(a)
                })
        })
        .map(<[u8]>::to_vec)
        .collect()
}

/// Splits `ld.so.preload` / `LD_PRELOAD` text into paths (ld.so(8): separated
/// by spaces, tabs, newlines or colons; `#` starts a comment in the file).
pub fn split_preload(text: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for line in text.split(|b| *b == b'\n') {
        let line = match line.iter().position(|b| *b == b'#') {
            Some(i) => &line[..i],
            None => line,
        };
        for w in line.split(|b| matches!(b, b' ' | b'\t' | b':' | b'\r')) {
            if !w.is_empty() && !out.iter().any(|x: &Vec<u8>| x == w) {
                out.push(w.to_vec());
            }
        }
    }
    out
}

fn inspect_library(host: &Host, path: &[u8]) -> Library {
    let p = bytes_to_path(path);
    let mut lib = Library {
        meta: host.file_meta(&p),
        ..Library::default()
    };
    if !lib.meta.exists {
        return lib;
    }
    let data = match host.read_prefix(&p, MAX_LIB_SIZE) {
        Ok(d) => d,
        Err(e) => {
            lib.elf_error = Some(format!("cannot read: {e}"));
            return lib;
        }
    };
    if data.len() < MAX_LIB_SIZE {
        lib.sha256 = Some(super::modules::sha256_hex(&data));
    }
    match elf_exports(&data) {
        Ok(exports) => lib.exports = exports,
        Err(e) => lib.elf_error = Some(e),
    }
    lib.strings = printable_strings(&data, 3);
    lib
}

/// The dynamic symbols an ELF object defines (what a preloaded library
/// overrides).
pub fn elf_exports(data: &[u8]) -> Result<BTreeSet<String>, String> {
    let obj = object::File::parse(data).map_err(|e| format!("not a valid ELF object: {e}"))?;
    let mut out = BTreeSet::new();
    for sym in obj.dynamic_symbols() {
        if sym.is_definition() {
            if let Ok(name) = sym.name() {
                out.insert(name.to_string());
            }
        }
    }
    Ok(out)
}

/// Printable ASCII runs of at least `min` bytes (like `strings`).
pub fn printable_strings(data: &[u8], min: usize) -> BTreeSet<Vec<u8>> {
    data.split(|b| !(0x20..0x7f).contains(b))
        .filter(|s| s.len() >= min && s.len() <= 256)
        .map(<[u8]>::to_vec)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preload_file_syntax() {
        let e = split_preload(b"/lib/a.so /lib/b.so:/lib/c.so\n# comment /x.so\n\t/lib/a.so\n");
        assert_eq!(
            e,
            vec![
                b"/lib/a.so".to_vec(),
                b"/lib/b.so".to_vec(),
                b"/lib/c.so".to_vec()
            ]
        );
    }

    #[test]
    fn strings_are_found() {
        let s = printable_strings(b"\x00\x01minerd\x00ab\x00/tmp/x\xff", 3);
        assert!(s.contains(b"minerd".as_slice()));
        assert!(s.contains(b"/tmp/x".as_slice()));
        assert!(!s.contains(b"ab".as_slice()));
    }
}
