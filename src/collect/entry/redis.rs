//! `redis.conf`: what decides whether anyone who reaches the port can write
//! files as the Redis user (`CONFIG SET dir` + `SAVE`, the Redis-to-cron and
//! Redis-to-authorized_keys attacks).
//!
//! Hand-written: a directive per line, arguments split as Redis does
//! (`sdssplitargs`: whitespace, `"…"` with backslash escapes, `'…'`); the last
//! value wins; `include` splices a file in place. The password itself is never
//! kept, only whether one is set and where.

use super::include::{Includes, MAX_FILE_BYTES};
use super::sshd::Source;
use crate::host::Host;

/// Deepest `include` nesting followed.
const MAX_DEPTH: usize = 8;

/// A setting's value and where it was set (`None`: Redis's default): the
/// same shape as an sshd_config value.
pub use super::sshd::Value as Setting;

/// What one configuration file (with its includes) says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConf {
    pub file: String,
    pub port: u16,
    /// `bind` (None: every interface, Redis's default before 7 without a
    /// shipped config).
    pub bind: Option<Setting>,
    /// `protected-mode` (default `yes`).
    pub protected_mode: Setting,
    /// Where a password for the default user is set (`requirepass`, or a
    /// `user default … >password` ACL line).
    pub password: Option<Source>,
    /// `dir`: where `SAVE` writes.
    pub dir: Option<Setting>,
    pub errors: Vec<String>,
}

impl RedisConf {
    fn new(file: &str) -> RedisConf {
        RedisConf {
            file: crate::escape::escape_str(file),
            port: 6379,
            bind: None,
            protected_mode: Setting {
                value: "yes".into(),
                source: None,
            },
            password: None,
            dir: None,
            errors: Vec::new(),
        }
    }
}

/// Splits a line into arguments as Redis does; `Err(column)` for an
/// unbalanced quote.
pub fn split_args(line: &str) -> Result<Vec<String>, usize> {
    let mut out = Vec::new();
    let mut chars = line.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut cur = String::new();
        let mut quote = None;
        while let Some(&(_, c)) = chars.peek() {
            match quote {
                None if c.is_whitespace() => break,
                None if c == '"' || c == '\'' => {
                    quote = Some(c);
                    chars.next();
                }
                None => {
                    cur.push(c);
                    chars.next();
                }
                Some(q) if c == q => {
                    quote = None;
                    chars.next();
                }
                Some('"') if c == '\\' => {
                    chars.next();
                    match chars.next() {
                        Some((_, 'n')) => cur.push('\n'),
                        Some((_, 't')) => cur.push('\t'),
                        Some((_, e)) => cur.push(e),
                        None => return Err(start + 1),
                    }
                }
                Some(_) => {
                    cur.push(c);
                    chars.next();
                }
            }
        }
        if quote.is_some() {
            return Err(start + 1);
        }
        out.push(cur);
    }
    Ok(out)
}

/// Parses a configuration (includes read through `host`).
pub fn parse(host: &Host, name: &str, text: &str) -> RedisConf {
    let mut c = RedisConf::new(name);
    let mut inc = Includes::default();
    if inc.enter(name, None).is_ok() {
        inc.read(text.len());
        apply(host, &mut c, &mut inc, name, text, 0);
        inc.leave();
    }
    c.errors.extend(inc.summary());
    c
}

/// Reads one configuration file.
pub fn read(host: &Host, path: &str) -> Option<RedisConf> {
    let text = host.read_prefix(path, MAX_FILE_BYTES).ok()?;
    Some(parse(host, path, &String::from_utf8_lossy(&text)))
}

fn apply(host: &Host, c: &mut RedisConf, inc: &mut Includes, name: &str, text: &str, depth: usize) {
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let src = Source {
            file: crate::escape::escape_str(name),
            line: n + 1,
        };
        let args = match split_args(raw) {
            Ok(a) => a,
            Err(col) => {
                c.errors.push(format!(
                    "{}:{}:{col}: unbalanced quotes",
                    src.file, src.line
                ));
                continue;
            }
        };
        let Some(key) = args.first().map(|k| k.to_ascii_lowercase()) else {
            continue;
        };
        let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
        match key.as_str() {
            "port" => match arg(1).parse() {
                Ok(p) => c.port = p,
                Err(_) => {
                    let col = raw.find(arg(1)).unwrap_or(0) + 1;
                    c.errors.push(format!(
                        "{}:{}:{col}: port {:?} is not a number",
                        src.file,
                        src.line,
                        crate::escape::escape_str(arg(1))
                    ));
                }
            },
            "bind" => {
                c.bind = Some(Setting {
                    value: crate::escape::escape_str(&args[1..].join(" ")),
                    source: Some(src),
                })
            }
            "protected-mode" => {
                c.protected_mode = Setting {
                    value: arg(1).to_ascii_lowercase(),
                    source: Some(src),
                }
            }
            "requirepass" => c.password = (!arg(1).is_empty()).then_some(src),
            "user" if arg(1) == "default" => {
                // ACL rules apply in order: `nopass` clears passwords,
                // `>pw`/`#hash` add one, `resetpass` clears, `off` disables.
                let mut has = c.password.is_some();
                let mut off = false;
                for r in &args[2..] {
                    match r.as_str() {
                        "nopass" | "resetpass" | "reset" => has = false,
                        "off" => off = true,
                        "on" => off = false,
                        r if r.starts_with('>') || r.starts_with('#') => has = true,
                        _ => {}
                    }
                }
                c.password = (has || off).then_some(src);
            }
            "dir" => {
                c.dir = Some(Setting {
                    value: crate::escape::escape_str(arg(1)),
                    source: Some(src),
                })
            }
            "include" => {
                let path = arg(1).to_string();
                let col = raw.find(arg(1)).unwrap_or(0) + 1;
                if depth >= MAX_DEPTH {
                    c.errors.extend(inc.error(format!(
                        "{src}:{col}: include nested deeper than {MAX_DEPTH} levels; not followed"
                    )));
                    continue;
                }
                if let Err(e) = inc.enter(&path, Some((&src, col))) {
                    c.errors.extend(e);
                    continue;
                }
                if let Ok(t) = host.read_prefix(&path, inc.room()) {
                    inc.read(t.len());
                    apply(host, c, inc, &path, &String::from_utf8_lossy(&t), depth + 1);
                }
                inc.leave();
            }
            _ => {}
        }
    }
}

/// Configuration files to consider for a running server: a `.conf` argument
/// on its command line (present when `set-proc-title` is off), then the
/// places distributions use.
pub fn candidate_files(host: &Host, cmdline: &[Vec<u8>]) -> Vec<String> {
    let mut out: Vec<String> = cmdline
        .iter()
        .skip(1)
        .filter(|a| a.ends_with(b".conf"))
        .filter_map(|a| String::from_utf8(a.clone()).ok())
        .collect();
    for p in [
        "/etc/redis/redis.conf",
        "/etc/redis.conf",
        "/usr/local/etc/redis.conf",
    ] {
        out.push(p.into());
    }
    let mut more: Vec<String> = host
        .list_dir("/etc/redis")
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.name.ends_with(b".conf"))
        .filter_map(|e| String::from_utf8(e.name).ok())
        .map(|n| format!("/etc/redis/{n}"))
        .collect();
    more.sort();
    out.extend(more);
    out.dedup();
    let mut seen = std::collections::HashSet::new();
    out.retain(|p| seen.insert(p.clone()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> (tempfile::TempDir, Host) {
        let d = tempfile::tempdir().unwrap();
        let h = Host::new(d.path());
        (d, h)
    }

    #[test]
    fn an_include_loop_ends_with_its_position() {
        // A fake redis-server's config including itself 16 times per level
        // grew to 292 MB in 90 s before include loops were caught (issue 21).
        let (d, h) = host();
        std::fs::create_dir_all(d.path().join("etc/redis")).unwrap();
        let mut text = String::from("port 6390\n");
        for _ in 0..16 {
            text.push_str("include   /etc/redis/redis.conf\n");
        }
        std::fs::write(d.path().join("etc/redis/redis.conf"), &text).unwrap();
        let c = read(&h, "/etc/redis/redis.conf").unwrap();
        assert_eq!(c.port, 6390);
        assert_eq!(c.errors.len(), 9, "{:?}", c.errors);
        assert_eq!(c.errors[8], "8 more include errors not listed");
        assert!(
            c.errors[0].starts_with(
                "/etc/redis/redis.conf:2:11: include of /etc/redis/redis.conf loops back"
            ),
            "{:?}",
            c.errors
        );
    }

    #[test]
    fn hardened_config() {
        let (_d, h) = host();
        let text = include_str!("../../../tests/fixtures/entry/redis.conf.hardened");
        let c = parse(&h, "/etc/redis/redis.conf", text);
        assert_eq!(c.protected_mode.value, "yes");
        assert_eq!(c.bind.as_ref().unwrap().value, "127.0.0.1 -::1");
        assert!(c.password.is_some());
        assert_eq!(c.dir.as_ref().unwrap().value, "/var/lib/redis");
        assert!(c.errors.is_empty(), "{:?}", c.errors);
    }

    #[test]
    fn open_config_and_last_value_wins_through_includes() {
        let (d, h) = host();
        std::fs::create_dir_all(d.path().join("etc/redis")).unwrap();
        std::fs::write(
            d.path().join("etc/redis/local.conf"),
            "protected-mode no\nrequirepass \"\"\n",
        )
        .unwrap();
        let text = include_str!("../../../tests/fixtures/entry/redis.conf.open");
        let c = parse(&h, "/etc/redis/redis.conf", text);
        assert_eq!(c.protected_mode.value, "no");
        assert_eq!(
            c.protected_mode.source.as_ref().unwrap().file,
            "/etc/redis/local.conf"
        );
        assert!(c.password.is_none());
        assert_eq!(c.port, 6380);
    }

    #[test]
    fn acl_default_user() {
        let (_d, h) = host();
        let c = parse(&h, "r.conf", "user default on nopass ~* +@all\n");
        assert!(c.password.is_none());
        let c = parse(&h, "r.conf", "user default on >s3cret ~* +@all\n");
        assert_eq!(c.password.as_ref().unwrap().line, 1);
        let c = parse(&h, "r.conf", "requirepass x\nuser default on nopass\n");
        assert!(c.password.is_none());
    }

    #[test]
    fn bad_lines_carry_their_position() {
        let (_d, h) = host();
        let c = parse(&h, "r.conf", "port 63x9\ndir \"/tmp\n");
        assert_eq!(
            c.errors,
            vec![
                "r.conf:1:6: port \"63x9\" is not a number",
                "r.conf:2:5: unbalanced quotes"
            ]
        );
    }

    #[test]
    fn splits_like_redis() {
        assert_eq!(
            split_args(r#"bind "10.0.0.1"  '::1' a\b"#).unwrap(),
            vec!["bind", "10.0.0.1", "::1", r"a\b"]
        );
        assert_eq!(split_args(r#"x "a\"b""#).unwrap(), vec!["x", "a\"b"]);
    }
}
