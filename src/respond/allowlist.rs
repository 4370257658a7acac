//! What a fix must never touch, from `--allowlist FILE` (default
//! `/etc/quarry/allowlist.toml` when it exists):
//!
//! ```toml
//! pids = [1234]
//! paths = ["/opt/vendor/"]            # files never quarantined or edited (prefixes)
//!
//! [[executable]]                      # processes never stopped
//! path = "/opt/vendor/bin/agent"
//! sha256 = "…"                        # optional: only this exact build
//! ```
//!
//! Process names are not accepted: a name is the attacker's to choose (a miner
//! renamed `backup-agent` would be allowlisted). A file that still has a
//! `names` entry is refused with its line and column.

use std::path::Path;

use serde::Deserialize;

use crate::collect::process::Process;
use crate::host::Host;

/// One allowlisted executable.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Executable {
    pub path: String,
    #[serde(default)]
    pub sha256: Option<String>,
}

/// The allowlist.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Allowlist {
    pub pids: Vec<i32>,
    pub paths: Vec<String>,
    pub executables: Vec<Executable>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    pids: Vec<i32>,
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    executable: Vec<Executable>,
    #[serde(default)]
    names: Option<toml::Spanned<toml::Value>>,
}

impl Allowlist {
    /// Reads and checks an allowlist file; errors name `file:line:col`.
    pub fn load(path: &Path) -> anyhow::Result<Allowlist> {
        let bytes = crate::host::read_regular(path, 1024 * 1024)
            .map_err(|e| anyhow::anyhow!("{}: cannot read allowlist: {e}", path.display()))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            anyhow::anyhow!("{}: the allowlist is not UTF-8 text: {e}", path.display())
        })?;
        Allowlist::parse(&text).map_err(|(line, col, msg)| {
            anyhow::anyhow!("{}:{line}:{col}: invalid allowlist: {msg}", path.display())
        })
    }

    /// Parses allowlist text; errors are (line, column, message).
    pub fn parse(text: &str) -> Result<Allowlist, (usize, usize, String)> {
        let f: File = toml::from_str(text).map_err(|e| {
            let (line, col) = e
                .span()
                .map_or((1, 1), |s| crate::rules::line_col(text, s.start));
            (line, col, e.message().to_string())
        })?;
        if let Some(n) = &f.names {
            let (line, col) = crate::rules::line_col(text, n.span().start);
            return Err((
                line,
                col,
                "process names are not accepted (a miner can take any name): allowlist an [[executable]] by path, optionally with its sha256".into(),
            ));
        }
        for (i, e) in f.executable.iter().enumerate() {
            if !e.path.starts_with('/') {
                let at = text.match_indices(&e.path).next().map_or(0, |(o, _)| o);
                let (line, col) = crate::rules::line_col(text, at);
                return Err((
                    line,
                    col,
                    format!("executable {}: the path must be absolute", i + 1),
                ));
            }
            if let Some(h) = &e.sha256 {
                if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                    let at = text.find(h.as_str()).unwrap_or(0);
                    let (line, col) = crate::rules::line_col(text, at);
                    return Err((line, col, "sha256 must be 64 hex digits".into()));
                }
            }
        }
        Ok(Allowlist {
            pids: f.pids,
            paths: f.paths,
            executables: f.executable,
        })
    }

    /// True when a file path is under an allowlisted path.
    pub fn allows_path(&self, p: &[u8]) -> bool {
        self.paths.iter().any(|a| {
            let a = a.trim_end_matches('/').as_bytes();
            p == a || (p.starts_with(a) && p.get(a.len()) == Some(&b'/'))
        })
    }

    /// Why a process is allowlisted, if it is: by PID, or by its executable's
    /// exact path (and SHA-256, read through `/proc/PID/exe`, when given).
    pub fn allows_process(&self, host: &Host, p: &Process) -> Option<&'static str> {
        if self.pids.contains(&p.pid) {
            return Some("allowlisted PID");
        }
        let exe = p.exe.as_ref().ok()?;
        for e in &self.executables {
            if exe.deleted || exe.path != e.path.as_bytes() {
                continue;
            }
            match &e.sha256 {
                None => return Some("allowlisted executable"),
                Some(h) => {
                    let link = format!("/proc/{}/exe", p.pid);
                    if host.sha256_of(link.as_bytes()).as_deref() == Some(h.as_str()) {
                        return Some("allowlisted executable (SHA-256 matches)");
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_refused_with_a_position() {
        let e = Allowlist::parse("pids = [1]\nnames = [\"agent\"]\n").unwrap_err();
        assert_eq!((e.0, e.1), (2, 9), "{e:?}");
        assert!(e.2.contains("names are not accepted"));
        let e = Allowlist::parse("[[executable]]\npath = \"agent\"\n").unwrap_err();
        assert_eq!(e.0, 2);
        let e = Allowlist::parse("[[executable]]\npath = \"/a\"\nsha256 = \"zz\"\n").unwrap_err();
        assert_eq!(e.0, 3);
        let a =
            Allowlist::parse("paths = [\"/opt/v/\"]\n[[executable]]\npath = \"/opt/v/agent\"\n")
                .unwrap();
        assert!(a.allows_path(b"/opt/v/x"));
        assert!(a.allows_path(b"/opt/v"));
        assert!(!a.allows_path(b"/opt/vx"));
    }
}
