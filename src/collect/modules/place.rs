//! Where a module file lies and who put it there: a kernel module tree (one
//! directory per kernel version, with `modules.dep` or `modules.order`, as
//! depmod(8) writes), a DKMS tree (`/var/lib/dkms/<module>/<version>/`, dkms(8)),
//! a build directory (`Module.symvers` or `<name>.mod.c` beside it, as kbuild
//! leaves them); the package that installed it and whether its content still
//! matches the package's checksum; whether it was built for the running
//! kernel (vermagic); whether the kernel holds a key named like its signer.

use std::collections::HashMap;

use super::identify::{vermagic_release, ModuleFile};
use crate::collect::packages::Packages;
use crate::escape::escape;
use crate::host::{bytes_to_path, Host};

/// What classification needs to know of the machine.
pub struct Context {
    /// The running kernel's release (`/proc/sys/kernel/osrelease`).
    pub release: String,
    /// Names of the asymmetric keys in the kernel's keyrings (`/proc/keys`).
    pub key_names: Vec<String>,
    pub packages: Packages,
}

impl Context {
    /// The running kernel, its keys, and the packages owning `files`.
    pub fn load(host: &Host, files: &[ModuleFile]) -> Context {
        // Only these files are looked up: every spelling of each.
        let wanted: std::collections::HashSet<Vec<u8>> = files
            .iter()
            .flat_map(|m| crate::collect::packages::spellings(&m.path))
            .collect();
        Context {
            release: host
                .read_text("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            key_names: key_names(&host.read_text("/proc/keys").unwrap_or_default()),
            packages: Packages::load_where(host, |p| wanted.contains(p)),
        }
    }
}

/// Names of asymmetric keys in `/proc/keys` (keyrings(7)): the type column
/// reads `asymmetri` (cut to 9 characters), and an X.509 key's description is
/// `<subject CN>: <key identifier>` followed by the subtype.
pub fn key_names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        // id flags usage expiry perm uid gid type description
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.len() < 9 || words[7] != "asymmetri" {
            continue;
        }
        let desc_start = line
            .find(" asymmetri ")
            .map(|i| i + " asymmetri ".len())
            .unwrap_or(line.len());
        let desc = &line[desc_start..];
        if let Some((cn, _)) = desc.split_once(": ") {
            out.push(cn.trim().to_string());
        }
    }
    out
}

/// Marker files of a kernel module tree (depmod(8)).
const TREE_MARKERS: &[&str] = &["modules.dep", "modules.order", "modules.builtin"];

/// Fills in [`ModuleFile::place`] for every file.
pub fn classify(host: &Host, files: &mut [ModuleFile], ctx: &Context) {
    // Tree roots found per directory, so a tree of thousands costs a few stats.
    let mut tree_of: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
    for m in files.iter_mut() {
        let path = m.path.clone();
        let parent = match path.iter().rposition(|b| *b == b'/') {
            Some(i) if i > 0 => path[..i].to_vec(),
            _ => b"/".to_vec(),
        };
        let built_for_here =
            !ctx.release.is_empty() && vermagic_release(m) == Some(ctx.release.as_str());
        let p = &mut m.place;
        p.kind = "loose";
        if let Some(rest) = path.strip_prefix(b"/var/lib/dkms/".as_slice()) {
            let comps: Vec<&[u8]> = rest.splitn(3, |b| *b == b'/').collect();
            if comps.len() == 3 {
                p.kind = "dkms";
                let root = [b"/var/lib/dkms/".as_slice(), comps[0], b"/", comps[1]].concat();
                p.root = Some(escape(&root));
                p.root_raw = Some(root);
            }
        }
        if p.kind == "loose" {
            if let Some(root) = tree_root(host, &parent, &mut tree_of) {
                p.kind = "tree";
                p.version = root
                    .rsplit(|b| *b == b'/')
                    .next()
                    .map(|v| String::from_utf8_lossy(v).into_owned());
                p.root = Some(escape(&root));
                p.root_raw = Some(root);
            }
        }
        if p.kind == "loose" {
            let name = path.rsplit(|b| *b == b'/').next().unwrap_or_default();
            let stem = name.split(|b| *b == b'.').next().unwrap_or_default();
            let beside =
                |n: &[u8]| host.exists(bytes_to_path(&[&parent, b"/".as_slice(), n].concat()));
            if beside(b"Module.symvers")
                || beside(&[stem, b".mod.c"].concat())
                || beside(&[stem, b".mod"].concat())
            {
                p.kind = "build";
                p.root = Some(escape(&parent));
                p.root_raw = Some(parent.clone());
            }
        }
        p.packages_checked = ctx.packages.checked();
        if let Some(pkg) = ctx.packages.owner(&path) {
            p.package = Some(pkg.to_string());
            p.package_checksum_ok = ctx.packages.md5_matches(host, pkg, &path);
        }
        p.built_for_running_kernel = built_for_here;
        m.place.signer_trusted = m
            .signature
            .as_ref()
            .and_then(|s| s.signer.as_ref())
            .is_some_and(|s| ctx.key_names.iter().any(|k| k == s));
    }
}

/// The kernel module tree a directory lies in: the nearest ancestor (at most
/// 8 levels up) that holds a depmod marker file.
fn tree_root(
    host: &Host,
    dir: &[u8],
    cache: &mut HashMap<Vec<u8>, Option<Vec<u8>>>,
) -> Option<Vec<u8>> {
    let mut chain = Vec::new();
    let mut scratch = Vec::new();
    let mut cur = dir.to_vec();
    let mut found = None;
    for _ in 0..8 {
        if let Some(c) = cache.get(&cur) {
            found = c.clone();
            break;
        }
        chain.push(cur.clone());
        // The module's own directory was listed by the walk, which checked
        // it is local: a name there is looked up with one statx. Above it,
        // every step is checked (host::resolve).
        let first = chain.len() == 1;
        if TREE_MARKERS.iter().any(|m| {
            let marker = [&cur, b"/".as_slice(), m.as_bytes()].concat();
            if first {
                host.stat_bytes(&marker, false, &mut scratch).is_ok()
            } else {
                host.exists(bytes_to_path(&marker))
            }
        }) {
            found = Some(cur.clone());
            break;
        }
        match cur.iter().rposition(|b| *b == b'/') {
            Some(i) if i > 0 => cur.truncate(i),
            _ => break,
        }
    }
    for d in chain {
        cache.insert(d, found.clone());
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asymmetric_key_names() {
        let t = "1d2e0f1b I------     1 perm 1f010000     0     0 asymmetri Debian Secure Boot CA: 6ccece7e4c6c0d1f6149f3dd27dfcc5cbb419ea1: X509.rsa bb419ea1 []\n373a0e41 I------     1 perm 1f0b0000     0     0 keyring   .builtin_trusted_keys: 1\n";
        assert_eq!(key_names(t), vec!["Debian Secure Boot CA".to_string()]);
    }
}
