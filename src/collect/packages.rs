//! Which installed package owns a file.
//!
//! dpkg keeps one list per package, `/var/lib/dpkg/info/<package>[:arch].list`,
//! one path per line, every path the package installed (dpkg(1), "FILES").
//! Paths there are as the package shipped them: on a merged-/usr system a
//! package may list `/lib/x` for what is really `/usr/lib/x`, so a path is
//! looked up under both spellings.
//!
//! rpm keeps its database in Berkeley DB, NDB or SQLite files
//! (`/var/lib/rpm`, `/usr/lib/sysimage/rpm`); Quarry does not parse them: on
//! such a host ownership is reported as "not checked" and the system
//! directories stay protected by place.

use std::collections::HashMap;

use crate::host::Host;

/// Package ownership of files.
#[derive(Debug, Default)]
pub struct Packages {
    /// Path → package, from dpkg's lists; `None` when there is no dpkg database.
    dpkg: Option<HashMap<Vec<u8>, String>>,
    /// An rpm database exists (its contents are not read).
    pub rpm_present: bool,
}

/// Merged-/usr aliases: a path under one is the same file under the other.
const MERGED: &[(&[u8], &[u8])] = &[
    (b"/usr/bin/", b"/bin/"),
    (b"/usr/sbin/", b"/sbin/"),
    (b"/usr/lib/", b"/lib/"),
    (b"/usr/lib64/", b"/lib64/"),
];

/// `path` under every merged-/usr spelling (itself first).
pub fn spellings(path: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![path.to_vec()];
    for (usr, short) in MERGED {
        if let Some(rest) = path.strip_prefix(*usr) {
            out.push([short, rest].concat());
        } else if let Some(rest) = path.strip_prefix(*short) {
            out.push([usr, rest].concat());
        }
    }
    out
}

impl Packages {
    /// Reads dpkg's file lists (and notes an rpm database).
    pub fn load(host: &Host) -> Packages {
        Packages::load_where(host, |_| true)
    }

    /// [`Packages::load`], keeping only the paths `keep` accepts: the lists
    /// hold every installed file (141,000 here, 8.7 MB), and a map of them
    /// all took 105 ms a scan where only the module files were looked up.
    pub fn load_where(host: &Host, keep: impl Fn(&[u8]) -> bool) -> Packages {
        let mut p = Packages {
            rpm_present: host.exists("/var/lib/rpm/rpmdb.sqlite")
                || host.exists("/var/lib/rpm/Packages")
                || host.exists("/var/lib/rpm/Packages.db")
                || host.exists("/usr/lib/sysimage/rpm"),
            ..Packages::default()
        };
        let Ok(entries) = host.list_dir("/var/lib/dpkg/info") else {
            return p;
        };
        let mut map = HashMap::new();
        for e in entries {
            let Some(pkg) = e.name.strip_suffix(b".list") else {
                continue;
            };
            let pkg = String::from_utf8_lossy(pkg).into_owned();
            let mut path = b"/var/lib/dpkg/info/".to_vec();
            path.extend_from_slice(&e.name);
            let Ok(text) = host.read(crate::host::bytes_to_path(&path)) else {
                continue;
            };
            for line in text.split(|b| *b == b'\n') {
                if line.starts_with(b"/") && line.len() > 1 && keep(line) {
                    map.entry(line.to_vec()).or_insert_with(|| pkg.clone());
                }
            }
        }
        p.dpkg = Some(map);
        p
    }

    /// A fixture from (path, package) pairs.
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Packages {
        Packages {
            dpkg: Some(
                pairs
                    .iter()
                    .map(|(f, p)| (f.as_bytes().to_vec(), p.to_string()))
                    .collect(),
            ),
            rpm_present: false,
        }
    }

    /// True when some package database was read.
    pub fn checked(&self) -> bool {
        self.dpkg.is_some()
    }

    /// Whether a file still matches the MD5 checksum its package recorded
    /// (`/var/lib/dpkg/info/<package>.md5sums`, "md5  path" without the
    /// leading slash); `None` when the package records none for it.
    pub fn md5_matches(&self, host: &Host, package: &str, path: &[u8]) -> Option<bool> {
        use md5::{Digest, Md5};
        let sums = host
            .read(format!("/var/lib/dpkg/info/{package}.md5sums"))
            .ok()?;
        let spellings = spellings(path);
        let want = sums.split(|b| *b == b'\n').find_map(|l| {
            let (sum, p) = (l.get(..32)?, l.get(34..)?);
            spellings
                .iter()
                .any(|s| s.get(1..) == Some(p))
                .then(|| String::from_utf8_lossy(sum).into_owned())
        })?;
        let data = host
            .read_prefix(crate::host::bytes_to_path(path), crate::host::MAX_HASHED)
            .ok()?;
        let got: String = Md5::digest(&data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Some(got == want)
    }

    /// The package that installed `path`, under any merged-/usr spelling.
    pub fn owner(&self, path: &[u8]) -> Option<&str> {
        let map = self.dpkg.as_ref()?;
        if let Some(p) = map.get(path) {
            return Some(p);
        }
        for (usr, short) in MERGED {
            let alias = if let Some(rest) = path.strip_prefix(*usr) {
                [short, rest].concat()
            } else if let Some(rest) = path.strip_prefix(*short) {
                [usr, rest].concat()
            } else {
                continue;
            };
            if let Some(p) = map.get(&alias) {
                return Some(p);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_under_both_spellings() {
        let p = Packages::from_pairs(&[("/lib/systemd/system/cron.service", "cron")]);
        assert_eq!(
            p.owner(b"/usr/lib/systemd/system/cron.service"),
            Some("cron")
        );
        assert_eq!(p.owner(b"/lib/systemd/system/cron.service"), Some("cron"));
        assert_eq!(p.owner(b"/tmp/x"), None);
    }

    #[test]
    fn this_machine_has_dpkg_lists() {
        let p = Packages::load(&Host::default());
        if std::path::Path::new("/var/lib/dpkg/info").exists() {
            assert!(p.checked());
            assert!(p.owner(b"/bin/sh").is_some() || p.owner(b"/usr/bin/sh").is_some());
        }
    }
}
