//! User names from `/etc/passwd`, parsed by hand.
//!
//! Quarry is a static glibc binary: `getpwuid` may `dlopen` an NSS module and
//! crash, and it would trust the host's NSS configuration anyway. Reading the
//! file through [`Host`] also works on a mounted disk image.

use std::collections::HashMap;

use crate::host::Host;

/// A user account.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub home: String,
    pub shell: String,
}

/// uid → account, from `/etc/passwd` (empty if unreadable).
#[derive(Debug, Clone, Default)]
pub struct Users {
    by_uid: HashMap<u32, User>,
}

impl Users {
    pub fn load(host: &Host) -> Users {
        let text = host.read_text("/etc/passwd").unwrap_or_default();
        Users::parse(&text)
    }

    pub fn parse(text: &str) -> Users {
        let mut by_uid = HashMap::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 7 || f[0].starts_with('#') {
                continue;
            }
            if let Ok(uid) = f[2].parse() {
                by_uid.entry(uid).or_insert(User {
                    name: f[0].to_string(),
                    uid,
                    home: f[5].to_string(),
                    shell: f[6].to_string(),
                });
            }
        }
        Users { by_uid }
    }

    /// The name of a uid, or the number if it has no account.
    pub fn name(&self, uid: u32) -> String {
        self.by_uid
            .get(&uid)
            .map_or_else(|| uid.to_string(), |u| u.name.clone())
    }

    pub fn all(&self) -> impl Iterator<Item = &User> {
        self.by_uid.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn parses_passwd() {
        let u = Users::parse(
            "root:x:0:0:root:/root:/bin/bash\n# c\nbad\nwww:x:33:33::/var/www:/usr/sbin/nologin\n",
        );
        assert_eq!(u.name(0), "root");
        assert_eq!(u.name(33), "www");
        assert_eq!(u.name(1234), "1234");
    }
}
