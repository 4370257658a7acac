//! Indicator rules: the data behind the signature signals.
//!
//! Rules are TOML (format described in `docs/RULES.md`). The built-in set,
//! `rules/default.toml`, is compiled into the binary; `--rules FILE` adds more.
//! Every entry must say where its facts come from (`source`). A malformed file is
//! rejected with its path, line and column.

use std::collections::HashSet;
use std::fmt;
use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

/// The built-in rules, compiled into the binary.
pub fn default_rules() -> String {
    crate::collect::signatures::inflate(include_bytes!(concat!(
        env!("OUT_DIR"),
        "/default.toml.deflate"
    )))
}
/// The name reported for the built-in rules in errors and evidence.
pub const DEFAULT_RULES_NAME: &str = "<built-in rules/default.toml>";

/// What an indicator is matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Exact (case-insensitive) name of a miner: matched against the process name,
    /// argv[0]'s file name and the executable's file name.
    ProcessName,
    /// A case-insensitive substring of the command line (stratum URLs, pool names,
    /// miner options, algorithm names).
    Cmdline,
    /// A proof-of-work algorithm name, matched only as the value of the
    /// process's own algorithm option (`-a rx/0`, `--algo=rx/0`,
    /// `--algorithm rx`), never inside other words: a compiler's
    /// `-DXMRIG_ALGO_RANDOMX` or a file name is not a miner's option.
    Algorithm,
    /// A TCP port that mining pools commonly listen on (weak alone).
    PoolPort,
    /// A directory prefix where miners are dropped (world-writable or volatile).
    TempDir,
    /// A kernel thread name (prefix) that miners masquerade as.
    KernelThreadName,
    /// A known rootkit kernel module name (file name without extension).
    ModuleName,
    /// A directory where rootkit module files were found.
    ModuleDir,
    /// A libc function that preload rootkits hook to hide files or processes.
    HidingSymbol,
}

impl Kind {
    /// The stable signal id for matches of this kind.
    pub fn signal_id(self) -> &'static str {
        match self {
            Kind::ProcessName => "miner-name",
            Kind::Cmdline => "mining-cmdline",
            Kind::Algorithm => "mining-algorithm",
            Kind::PoolPort => "pool-port",
            Kind::TempDir => "exe-in-temp-dir",
            Kind::KernelThreadName => "kthread-name",
            Kind::ModuleName => "rootkit-module-name",
            Kind::ModuleDir => "rootkit-module-dir",
            Kind::HidingSymbol => "hiding-symbol",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    version: Spanned<u32>,
    #[serde(default)]
    indicator: Vec<RawIndicator>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIndicator {
    kind: Kind,
    values: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    weight: Option<Spanned<u32>>,
    #[serde(default)]
    technique: Option<Spanned<String>>,
    note: String,
    source: Spanned<String>,
}

/// One indicator entry.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Indicator {
    pub kind: Kind,
    /// Values, lower-cased for case-insensitive matching.
    pub values: Vec<String>,
    /// How much a match counts towards a verdict (see `detect::miner`).
    pub weight: u32,
    /// MITRE ATT&CK technique id.
    pub technique: String,
    /// One-line explanation for the report.
    pub note: String,
    /// Where the facts come from.
    pub source: String,
    /// Which file and line defined it.
    pub origin: String,
}

/// The loaded rule set.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub indicators: Vec<Indicator>,
}

/// A rules file that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub struct RulesError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for RulesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: invalid rules file: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// The highest rules format version this build understands.
pub const FORMAT_VERSION: u32 = 1;

impl Rules {
    /// The built-in rules.
    pub fn builtin() -> Rules {
        let mut r = Rules::default();
        r.add_str(&default_rules(), DEFAULT_RULES_NAME)
            .expect("built-in rules are valid (checked by a unit test)");
        r
    }

    /// Adds the rules in a file.
    pub fn add_file(&mut self, path: &Path) -> Result<(), RulesError> {
        let name = path.display().to_string();
        let text = std::fs::read(path).map_err(|e| RulesError {
            file: name.clone(),
            line: 0,
            column: 0,
            message: format!("cannot read: {e}"),
        })?;
        let text = String::from_utf8(text).map_err(|e| {
            let (line, column) = line_col(
                &String::from_utf8_lossy(e.as_bytes()),
                e.utf8_error().valid_up_to(),
            );
            RulesError {
                file: name.clone(),
                line,
                column,
                message: "not valid UTF-8".into(),
            }
        })?;
        self.add_str(&text, &name)
    }

    /// Adds the rules in a string; `name` is used in errors.
    pub fn add_str(&mut self, text: &str, name: &str) -> Result<(), RulesError> {
        let err = |span: Option<Range<usize>>, message: String| {
            let (line, column) = span.map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            RulesError {
                file: name.to_string(),
                line,
                column,
                message,
            }
        };
        let raw: RawFile = toml::from_str(text)
            .map_err(|e| err(e.span(), e.message().trim().replace('\n', " ")))?;
        if *raw.version.get_ref() != FORMAT_VERSION {
            return Err(err(
                Some(raw.version.span()),
                format!(
                    "unsupported format version {} (this Quarry reads version {FORMAT_VERSION})",
                    raw.version.get_ref()
                ),
            ));
        }
        for ind in raw.indicator {
            if ind.source.get_ref().trim().is_empty() {
                return Err(err(
                    Some(ind.source.span()),
                    "`source` must say where the indicator comes from".into(),
                ));
            }
            if ind.values.get_ref().is_empty() {
                return Err(err(Some(ind.values.span()), "`values` is empty".into()));
            }
            let mut values = Vec::new();
            let mut seen = HashSet::new();
            for v in ind.values.get_ref() {
                let s = v.get_ref().trim().to_ascii_lowercase();
                if s.is_empty() {
                    return Err(err(Some(v.span()), "empty value".into()));
                }
                if ind.kind == Kind::PoolPort && s.parse::<u16>().map_or(true, |p| p == 0) {
                    return Err(err(
                        Some(v.span()),
                        format!("pool-port value {s:?} is not a port number (1-65535)"),
                    ));
                }
                if matches!(ind.kind, Kind::TempDir | Kind::ModuleDir) && !s.starts_with('/') {
                    return Err(err(
                        Some(v.span()),
                        format!("directory {s:?} must be an absolute path"),
                    ));
                }
                if seen.insert(s.clone()) {
                    values.push(s);
                }
            }
            let technique = match ind.technique {
                Some(t) => {
                    let s = t.get_ref().trim().to_string();
                    let ok = s.len() >= 5
                        && s.starts_with('T')
                        && s[1..].chars().all(|c| c.is_ascii_digit() || c == '.');
                    if !ok {
                        return Err(err(
                            Some(t.span()),
                            format!("technique {s:?} is not a MITRE ATT&CK id like T1496"),
                        ));
                    }
                    s
                }
                None => default_technique(ind.kind).to_string(),
            };
            let weight = match ind.weight {
                Some(w) if *w.get_ref() > 10 => {
                    return Err(err(Some(w.span()), "weight must be 0 to 10".into()))
                }
                Some(w) => *w.get_ref(),
                None => default_weight(ind.kind),
            };
            let (line, _) = line_col(text, ind.values.span().start);
            self.indicators.push(Indicator {
                kind: ind.kind,
                values,
                weight,
                technique,
                note: ind.note,
                source: ind.source.into_inner(),
                origin: format!("{name}:{line}"),
            });
        }
        Ok(())
    }

    /// All indicators of a kind.
    pub fn of(&self, kind: Kind) -> impl Iterator<Item = &Indicator> {
        self.indicators.iter().filter(move |i| i.kind == kind)
    }

    /// All values of a kind.
    pub fn values(&self, kind: Kind) -> impl Iterator<Item = &str> {
        self.of(kind)
            .flat_map(|i| i.values.iter().map(String::as_str))
    }

    /// The indicator of `kind` whose value equals `needle` (case-insensitive).
    pub fn find_exact(&self, kind: Kind, needle: &str) -> Option<&Indicator> {
        let n = needle.to_ascii_lowercase();
        self.of(kind).find(|i| i.values.contains(&n))
    }

    /// Pool ports, parsed.
    pub fn pool_ports(&self) -> HashSet<u16> {
        self.values(Kind::PoolPort)
            .filter_map(|v| v.parse().ok())
            .collect()
    }
}

fn default_weight(kind: Kind) -> u32 {
    match kind {
        Kind::ProcessName => 3,
        Kind::Cmdline => 3,
        Kind::Algorithm => 2,
        Kind::PoolPort => 1,
        Kind::TempDir => 1,
        Kind::KernelThreadName => 0,
        Kind::ModuleName => 4,
        Kind::ModuleDir => 3,
        Kind::HidingSymbol => 1,
    }
}

fn default_technique(kind: Kind) -> &'static str {
    match kind {
        Kind::ProcessName | Kind::Cmdline | Kind::Algorithm | Kind::PoolPort => "T1496",
        Kind::TempDir => "T1074",
        Kind::KernelThreadName => "T1036.004",
        Kind::ModuleName | Kind::ModuleDir => "T1547.006",
        Kind::HidingSymbol => "T1574.006",
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |p| p + 1);
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_rules_load_and_cite_sources() {
        let r = Rules::builtin();
        assert!(r.find_exact(Kind::ProcessName, "minerd").is_some());
        assert!(r.find_exact(Kind::ProcessName, "TPLINK").is_some());
        assert!(r.pool_ports().contains(&3333));
        assert!(r.indicators.iter().all(|i| !i.source.is_empty()));
        assert!(r.values(Kind::ModuleName).any(|v| v == "iptable_mac"));
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let text = "version = 1\n\n[[indicator]]\nkind = \"cmdline\"\nvalues = [\"a\", ]]\n";
        let e = Rules::default().add_str(text, "x.toml").unwrap_err();
        assert_eq!(e.file, "x.toml");
        assert_eq!(e.line, 5, "{e}");
        assert!(e.column > 1, "{e}");
    }

    #[test]
    fn unknown_kind_points_at_the_value() {
        let text = "version = 1\n[[indicator]]\nkind = \"nonsense\"\nvalues = [\"a\"]\nnote = \"n\"\nsource = \"s\"\n";
        let e = Rules::default().add_str(text, "x.toml").unwrap_err();
        assert_eq!((e.line, e.column), (3, 8), "{e}");
        assert!(e.to_string().starts_with("x.toml:3:8: "), "{e}");
    }

    #[test]
    fn bad_port_and_missing_source() {
        let text = "version = 1\n[[indicator]]\nkind = \"pool-port\"\nvalues = [\"3333\", \"99999\"]\nnote = \"n\"\nsource = \"s\"\n";
        let e = Rules::default().add_str(text, "p.toml").unwrap_err();
        assert_eq!((e.line, e.column), (4, 19), "{e}");
        let text = "version = 1\n[[indicator]]\nkind = \"cmdline\"\nvalues = [\"x\"]\nnote = \"n\"\nsource = \" \"\n";
        let e = Rules::default().add_str(text, "s.toml").unwrap_err();
        assert_eq!(e.line, 6, "{e}");
    }

    #[test]
    fn wrong_version_is_rejected() {
        let e = Rules::default()
            .add_str("version = 7\n", "v.toml")
            .unwrap_err();
        assert_eq!((e.line, e.column), (1, 11), "{e}");
    }
}
