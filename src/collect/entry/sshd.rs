//! `sshd_config`: the two settings that make SSH a door for password
//! guessing, with `Include` and `Match` followed as sshd does.
//!
//! Hand-written: the format is a keyword and its arguments per line, and no
//! crate reads the *server* file with sshd's rules (sshd_config(5)):
//! - keywords are case-insensitive, `Keyword value` or `Keyword=value`;
//! - for most keywords the **first** value obtained wins;
//! - `Include` splices files in place (globs, relative to `/etc/ssh`, sorted);
//! - a `Match` line starts a block that lasts to the next `Match` or the end
//!   of the file (a block opened in an included file ends with that file);
//!   inside it, the first value again wins over the global one for a
//!   connection that matches.

use super::include::{Includes, MAX_FILE_BYTES};
use crate::host::Host;

/// OpenSSH's defaults (sshd_config(5), since OpenSSH 7.0 for PermitRootLogin).
pub const DEFAULT_PERMIT_ROOT_LOGIN: &str = "prohibit-password";
pub const DEFAULT_PASSWORD_AUTHENTICATION: &str = "yes";

/// Deepest `Include` nesting followed (sshd itself stops at 16).
const MAX_DEPTH: usize = 16;

/// Where a value came from: `file:line`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub file: String,
    pub line: usize,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// One setting's value: lower-cased, with where it was set (`None`: default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub value: String,
    pub source: Option<Source>,
}

/// A `Match` block's values for the two settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchBlock {
    /// The criteria, as written (`User root`, `Address 10.0.0.0/8`).
    pub criteria: String,
    pub source: Source,
    pub permit_root_login: Option<Value>,
    pub password_authentication: Option<Value>,
}

/// What the configuration says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshdConfig {
    pub permit_root_login: Value,
    pub password_authentication: Value,
    pub matches: Vec<MatchBlock>,
    /// Files read, in order.
    pub files: Vec<String>,
    /// `file:line:col: problem` for lines that could not be understood.
    pub errors: Vec<String>,
}

impl SshdConfig {
    /// Whether a `Match` block can apply to a connection as root: `all`, a
    /// `User`/`Group` pattern list that admits root, or criteria about the
    /// connection (address, host, port), which some connection may meet.
    pub fn may_apply_to_root(m: &MatchBlock) -> bool {
        let words: Vec<&str> = m.criteria.split_whitespace().collect();
        let mut i = 0;
        while i < words.len() {
            let key = words[i].to_ascii_lowercase();
            if key == "all" {
                i += 1;
                continue;
            }
            let Some(arg) = words.get(i + 1) else {
                return false;
            };
            let ok = match key.as_str() {
                "user" => pattern_list_matches(arg, "root"),
                "group" => pattern_list_matches(arg, "root"),
                // Connection criteria: some connection can meet them.
                _ => true,
            };
            if !ok {
                return false;
            }
            i += 2;
        }
        true
    }

    /// Every way root may log in with a password: `(where, PermitRootLogin
    /// source, PasswordAuthentication source)`; `where` is `None` for the
    /// global setting, else the `Match` criteria.
    pub fn root_password_logins(&self) -> Vec<(Option<String>, Value, Value)> {
        let mut out = Vec::new();
        let global = (
            self.permit_root_login.clone(),
            self.password_authentication.clone(),
        );
        if global.0.value == "yes" && global.1.value == "yes" {
            out.push((None, global.0.clone(), global.1.clone()));
        }
        for m in self.matches.iter().filter(|m| Self::may_apply_to_root(m)) {
            let prl = m.permit_root_login.clone().unwrap_or(global.0.clone());
            let pa = m
                .password_authentication
                .clone()
                .unwrap_or(global.1.clone());
            if (m.permit_root_login.is_some() || m.password_authentication.is_some())
                && prl.value == "yes"
                && pa.value == "yes"
                && !(prl == global.0 && pa == global.1 && !out.is_empty())
            {
                out.push((Some(m.criteria.clone()), prl, pa));
            }
        }
        out
    }
}

/// sshd's pattern lists (ssh_config(5) PATTERNS): comma-separated globs with
/// `*` and `?`, a leading `!` negates; a negated match wins.
pub fn pattern_list_matches(list: &str, name: &str) -> bool {
    let mut any = false;
    for pat in list.split(',') {
        let (neg, pat) = match pat.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, pat),
        };
        if glob(pat.as_bytes(), name.as_bytes()) {
            if neg {
                return false;
            }
            any = true;
        }
    }
    any
}

/// `*` and `?` wildcards.
pub fn glob(pat: &[u8], s: &[u8]) -> bool {
    match (pat.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&pat[1..], s) || (!s.is_empty() && glob(pat, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&pat[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => glob(&pat[1..], &s[1..]),
        _ => false,
    }
}

struct Parser<'a> {
    host: &'a Host,
    cfg: SshdConfig,
    includes: Includes,
    /// Index into `cfg.matches` of the open block.
    current: Option<usize>,
}

/// Reads `/etc/ssh/sshd_config` (and what it includes). `None` when the file
/// does not exist.
pub fn read(host: &Host) -> Option<SshdConfig> {
    let main = "/etc/ssh/sshd_config";
    let text = host.read_prefix(main, MAX_FILE_BYTES).ok()?;
    Some(parse(host, main, &String::from_utf8_lossy(&text)))
}

/// Parses configuration text as if it were `/etc/ssh/sshd_config` (fixtures;
/// includes are read from `host`).
pub fn parse(host: &Host, name: &str, text: &str) -> SshdConfig {
    let mut p = Parser {
        host,
        cfg: SshdConfig {
            permit_root_login: Value {
                value: DEFAULT_PERMIT_ROOT_LOGIN.into(),
                source: None,
            },
            password_authentication: Value {
                value: DEFAULT_PASSWORD_AUTHENTICATION.into(),
                source: None,
            },
            matches: Vec::new(),
            files: Vec::new(),
            errors: Vec::new(),
        },
        current: None,
        includes: Includes::default(),
    };
    let mut set = (false, false);
    if p.includes.enter(name, None).is_ok() {
        p.includes.read(text.len());
        p.file(name, text.as_bytes(), 0, &mut set);
        p.includes.leave();
    }
    p.cfg.errors.extend(p.includes.summary());
    p.cfg
}

impl Parser<'_> {
    fn file(&mut self, name: &str, text: &[u8], depth: usize, set: &mut (bool, bool)) {
        self.cfg.files.push(crate::escape::escape_str(name));
        let outer = self.current;
        let text = String::from_utf8_lossy(text);
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let split = line
                .find(|c: char| c.is_whitespace() || c == '=')
                .unwrap_or(line.len());
            let key = line[..split].to_ascii_lowercase();
            let rest = line[split..].trim_start_matches(|c: char| c.is_whitespace() || c == '=');
            let rest = rest.trim();
            let src = Source {
                file: crate::escape::escape_str(name),
                line: n + 1,
            };
            if rest.is_empty() {
                let col = raw.len() - raw.trim_start().len() + 1;
                self.cfg.errors.push(format!(
                    "{}:{}:{col}: {} has no value",
                    src.file,
                    src.line,
                    crate::escape::escape_str(&line[..split])
                ));
                continue;
            }
            match key.as_str() {
                "match" => {
                    self.cfg.matches.push(MatchBlock {
                        criteria: crate::escape::escape_str(rest),
                        source: src,
                        permit_root_login: None,
                        password_authentication: None,
                    });
                    self.current = Some(self.cfg.matches.len() - 1);
                }
                "include" => {
                    let col = raw.len() - raw.trim_start().len() + 1;
                    if depth >= MAX_DEPTH {
                        let e = self.includes.error(format!(
                            "{src}:{col}: Include nested deeper than {MAX_DEPTH} levels"
                        ));
                        self.cfg.errors.extend(e);
                        continue;
                    }
                    for pat in rest.split_whitespace() {
                        let col = raw.find(pat).map_or(col, |c| c + 1);
                        for path in self.expand(pat) {
                            if let Err(e) = self.includes.enter(&path, Some((&src, col))) {
                                self.cfg.errors.extend(e);
                                continue;
                            }
                            if let Ok(t) = self.host.read_prefix(&path, self.includes.room()) {
                                self.includes.read(t.len());
                                let saved = self.current;
                                self.file(&path, &t, depth + 1, set);
                                self.current = saved;
                            }
                            self.includes.leave();
                        }
                    }
                }
                "permitrootlogin" | "passwordauthentication" => {
                    let v = Value {
                        value: rest
                            .split_whitespace()
                            .next()
                            .unwrap_or("")
                            .to_ascii_lowercase(),
                        source: Some(src),
                    };
                    let root = key == "permitrootlogin";
                    match self.current {
                        Some(i) => {
                            let m = &mut self.cfg.matches[i];
                            let slot = if root {
                                &mut m.permit_root_login
                            } else {
                                &mut m.password_authentication
                            };
                            if slot.is_none() {
                                *slot = Some(v);
                            }
                        }
                        None => {
                            let (slot, done) = if root {
                                (&mut self.cfg.permit_root_login, &mut set.0)
                            } else {
                                (&mut self.cfg.password_authentication, &mut set.1)
                            };
                            if !*done {
                                *slot = v;
                                *done = true;
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        // A block opened in this file ends with it.
        self.current = outer;
    }

    /// An `Include` argument: relative to `/etc/ssh`, globbed in the last
    /// component (the form distributions use: `sshd_config.d/*.conf`), sorted.
    fn expand(&self, pat: &str) -> Vec<String> {
        let full = if pat.starts_with('/') {
            pat.to_string()
        } else {
            format!("/etc/ssh/{pat}")
        };
        if !full.contains(['*', '?']) {
            return vec![full];
        }
        let (dir, file_pat) = full.rsplit_once('/').unwrap_or(("/", &full));
        let mut out: Vec<String> = self
            .host
            .list_dir(dir)
            .unwrap_or_default()
            .into_iter()
            .filter(|e| glob(file_pat.as_bytes(), &e.name) && !e.name.starts_with(b"."))
            .filter_map(|e| String::from_utf8(e.name).ok())
            .map(|n| format!("{dir}/{n}"))
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_host() -> (tempfile::TempDir, Host) {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc/ssh/sshd_config.d")).unwrap();
        let h = Host::new(d.path());
        (d, h)
    }

    #[test]
    fn debian_default_is_not_a_root_password_door() {
        let (_d, h) = fixture_host();
        let text = include_str!("../../../tests/fixtures/entry/sshd_config.debian");
        let c = parse(&h, "/etc/ssh/sshd_config", text);
        assert_eq!(c.permit_root_login.value, "prohibit-password");
        assert!(c.permit_root_login.source.is_none());
        assert_eq!(c.password_authentication.value, "yes");
        assert!(c.root_password_logins().is_empty());
        assert!(c.errors.is_empty(), "{:?}", c.errors);
    }

    #[test]
    fn first_value_wins_and_includes_come_first() {
        let (d, h) = fixture_host();
        std::fs::write(
            d.path().join("etc/ssh/sshd_config.d/10-cloud.conf"),
            "PermitRootLogin yes\nPasswordAuthentication yes\n",
        )
        .unwrap();
        let text = "Include /etc/ssh/sshd_config.d/*.conf\nPermitRootLogin no\n";
        let c = parse(&h, "/etc/ssh/sshd_config", text);
        assert_eq!(c.permit_root_login.value, "yes");
        let src = c.permit_root_login.source.as_ref().unwrap();
        assert_eq!(src.to_string(), "/etc/ssh/sshd_config.d/10-cloud.conf:1");
        let doors = c.root_password_logins();
        assert_eq!(doors.len(), 1);
        assert!(doors[0].0.is_none());
    }

    #[test]
    fn match_blocks_open_the_door_for_some_connections_only() {
        let (_d, h) = fixture_host();
        let text = "PermitRootLogin no\nPasswordAuthentication no\n\
                    Match User deploy\n  PasswordAuthentication yes\n\
                    Match Address 10.0.0.0/8\n  PermitRootLogin yes\n  PasswordAuthentication yes\n\
                    Match User !root,*\n  PermitRootLogin yes\n  PasswordAuthentication yes\n";
        let c = parse(&h, "/etc/ssh/sshd_config", text);
        assert_eq!(c.matches.len(), 3);
        let doors = c.root_password_logins();
        assert_eq!(doors.len(), 1, "{doors:?}");
        assert_eq!(doors[0].0.as_deref(), Some("Address 10.0.0.0/8"));
        assert_eq!(doors[0].1.source.as_ref().unwrap().line, 6);
    }

    #[test]
    fn a_match_block_in_an_included_file_ends_with_it() {
        let (d, h) = fixture_host();
        std::fs::write(
            d.path().join("etc/ssh/sshd_config.d/50-sftp.conf"),
            "Match Group sftp\n  PasswordAuthentication no\n",
        )
        .unwrap();
        let text =
            "Include sshd_config.d/*.conf\nPermitRootLogin=yes\nPasswordAuthentication yes\n";
        let c = parse(&h, "/etc/ssh/sshd_config", text);
        assert_eq!(c.permit_root_login.value, "yes");
        assert_eq!(c.permit_root_login.source.as_ref().unwrap().line, 2);
        assert_eq!(c.root_password_logins().len(), 1);
    }

    #[test]
    fn a_keyword_without_value_is_reported_with_its_position() {
        let (_d, h) = fixture_host();
        let c = parse(&h, "/etc/ssh/sshd_config", "Port 22\n  PermitRootLogin\n");
        assert_eq!(
            c.errors,
            vec!["/etc/ssh/sshd_config:2:3: PermitRootLogin has no value"]
        );
    }

    #[test]
    fn an_include_loop_ends_with_its_position() {
        // Root's sshd_config including itself three times per level made
        // 3^16 reads before include loops were caught (issue 21).
        let (d, h) = fixture_host();
        let text = "Include /etc/ssh/sshd_config /etc/ssh/sshd_config\nInclude sshd_config\nPermitRootLogin yes\n";
        std::fs::write(d.path().join("etc/ssh/sshd_config"), text).unwrap();
        let t = std::time::Instant::now();
        let c = read(&h).unwrap();
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(c.permit_root_login.value, "yes");
        assert_eq!(c.errors.len(), 3, "{:?}", c.errors);
        assert!(
            c.errors[0].starts_with(
                "/etc/ssh/sshd_config:1:9: include of /etc/ssh/sshd_config loops back"
            ),
            "{:?}",
            c.errors
        );
        assert!(
            c.errors[2].starts_with("/etc/ssh/sshd_config:2:9:"),
            "{:?}",
            c.errors
        );
        // Distinct files that include each other without looping still end.
        for n in 0..40 {
            std::fs::write(
                d.path().join(format!("etc/ssh/sshd_config.d/{n}.conf")),
                "Include sshd_config.d/*.conf\n",
            )
            .unwrap();
        }
        std::fs::write(
            d.path().join("etc/ssh/sshd_config"),
            "Include sshd_config.d/*.conf\n",
        )
        .unwrap();
        let c = read(&h).unwrap();
        assert!(c.files.len() <= super::super::include::MAX_FILES);
        assert!(c.errors.len() <= super::super::include::MAX_ERRORS + 1);
        assert!(
            c.errors
                .last()
                .unwrap()
                .ends_with("more include errors not listed"),
            "{:?}",
            c.errors
        );
    }

    #[test]
    fn pattern_lists() {
        assert!(pattern_list_matches("root", "root"));
        assert!(pattern_list_matches("adm*,r?ot", "root"));
        assert!(!pattern_list_matches("!root,*", "root"));
        assert!(!pattern_list_matches("deploy", "root"));
    }
}
