//! Content signatures in YARA syntax: Quarry's built-in rules
//! (`rules/miner.yar`, compiled into the binary) and the user's (`--yara
//! FILE|DIR`), matched with yara-x, VirusTotal's YARA in Rust.
//!
//! Why yara-x and not libyara (the `yara` crate): both were built and measured
//! on this project's machines (BENCHMARKS.md, "Content signatures"). libyara
//! builds in seconds and is small, but it is C parsing bytes an attacker
//! controls (process memory, packed executables) as root; yara-x is memory
//! safe, maintained as YARA's successor, and matched our rules at a speed
//! that keeps the per-process budget. Its cost is build time and binary size,
//! paid once.
//!
//! Each rule's `meta` gives its `weight` in the miner score (default 3),
//! `technique` (ATT&CK, default T1496), `description` and `source`. A rule
//! with `scope = "file"` is matched against executables only (a packer mark
//! means nothing in unpacked memory).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

/// The built-in rules' text (`rules/miner.yar`), stored deflated by build.rs
/// so that Quarry's own file never holds the strings they look for.
pub fn builtin() -> String {
    inflate(include_bytes!(concat!(
        env!("OUT_DIR"),
        "/miner.yar.deflate"
    )))
}

/// A rules file build.rs deflated.
pub fn inflate(data: &[u8]) -> String {
    use std::io::Read;
    let mut s = String::new();
    flate2::read::DeflateDecoder::new(data)
        .read_to_string(&mut s)
        .expect("built-in rules are valid deflate and UTF-8 (build.rs)");
    s
}

/// Weight of a user rule that does not give one: suspicious alone,
/// malicious with any other signal.
pub const DEFAULT_WEIGHT: u32 = 3;

/// Longest matched bytes kept as evidence.
const EVIDENCE_BYTES: usize = 96;

/// Most matches kept per pattern: a rule needs a few to fire, evidence needs
/// one; a hostile region full of one string must not cost time or memory.
const MAX_MATCHES_PER_PATTERN: usize = 16;

/// Per-buffer time limit: a pathological region (or rule) cannot stall a scan.
const SCAN_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a buffer came from.
#[derive(Debug, Clone)]
pub enum Place {
    /// An executable file (offsets are file offsets).
    File,
    /// A memory region starting at `start` (offsets become addresses);
    /// `writable` regions hold data (heap, stack, buffers), the others code
    /// and constants the process carries (unpacked code lands there).
    Memory {
        start: u64,
        label: String,
        writable: bool,
    },
}

/// One rule that matched one buffer.
/// One memory region inside a buffer given to [`Signatures::scan_memory`].
#[derive(Debug, Clone)]
pub struct Part {
    /// Where the region's bytes start in the buffer.
    pub offset: usize,
    /// Its address in the process.
    pub start: u64,
    pub label: String,
    pub writable: bool,
}

/// Zero bytes left between two regions in one buffer: longer than any
/// string of the built-in rules, so no match spans two regions.
pub const PART_GAP: usize = 256;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Match {
    pub rule: String,
    /// Where the rule comes from: "built-in" or the user's file.
    pub origin: String,
    pub weight: u32,
    pub technique: String,
    pub description: String,
    /// The first matching string: its identifier, escaped bytes, and where
    /// ("file offset 0x1f2e0", or an address and its region: "0x7f.. ([heap])").
    pub string: String,
    pub data: String,
    pub at: String,
    /// Found in writable process memory (data it holds or read, not code).
    pub in_data: bool,
}

/// Compiled rules.
pub struct Signatures {
    rules: yara_x::Rules,
    /// Origin of each namespace ("built-in" or a user file), by index: the
    /// namespace of the n-th source is "nN".
    origins: Vec<String>,
    /// Number of rules compiled, built-in and user.
    pub count: usize,
}

impl std::fmt::Debug for Signatures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signatures({} rules)", self.count)
    }
}

/// A rule file that did not compile: the message names file:line:col.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RuleError(pub String);

/// The rule files of `--yara PATH`: the file itself, or the `.yar`/`.yara`
/// files of a folder (sorted, not recursive).
pub fn rule_files(path: &Path) -> Result<Vec<PathBuf>, RuleError> {
    let meta =
        std::fs::metadata(path).map_err(|e| RuleError(format!("{}: {e}", path.display())))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| RuleError(format!("{}: {e}", path.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yar" || x == "yara"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(RuleError(format!(
            "{}: no .yar or .yara files in this folder",
            path.display()
        )));
    }
    Ok(files)
}

impl Signatures {
    /// The built-in rules and the user's rule files.
    pub fn compile(user: &[PathBuf]) -> Result<Signatures, RuleError> {
        let mut compiler = yara_x::Compiler::new();
        let mut sources: Vec<(String, String)> = vec![("built-in".into(), builtin())];
        for f in user {
            for file in rule_files(f)? {
                let text = std::fs::read_to_string(&file)
                    .map_err(|e| RuleError(format!("{}: {e}", file.display())))?;
                sources.push((file.display().to_string(), text));
            }
        }
        let mut origins = Vec::new();
        for (origin, text) in &sources {
            // One namespace per file: two users' files may reuse a rule name.
            compiler.new_namespace(&format!("n{}", origins.len()));
            compiler
                .add_source(yara_x::SourceCode::from(text.as_str()).with_origin(origin.as_str()))
                .map_err(|e| RuleError(e.to_string()))?;
            origins.push(origin.clone());
        }
        let rules = compiler.build();
        Ok(Signatures {
            count: rules.iter().len(),
            rules,
            origins,
        })
    }

    /// Matches every rule against one buffer.
    pub fn scan(&self, data: &[u8], place: Place) -> Vec<Match> {
        let regions = match place {
            Place::File => return self.scan_parts(data, None),
            Place::Memory {
                start,
                label,
                writable,
            } => vec![Part {
                offset: 0,
                start,
                label,
                writable,
            }],
        };
        self.scan_parts(data, Some(&regions))
    }

    /// Matches one buffer that holds several memory regions one after the
    /// other (`parts`, by their offset in `data`, ascending), in one matcher
    /// pass: thousands of small regions cost one scan, not thousands. The
    /// caller leaves a gap of [`PART_GAP`] zero bytes between regions so no
    /// string spans two; each match is placed in its own region.
    pub fn scan_memory(&self, data: &[u8], parts: &[Part]) -> Vec<Match> {
        self.scan_parts(data, Some(parts))
    }

    fn scan_parts(&self, data: &[u8], parts: Option<&[Part]>) -> Vec<Match> {
        let mut scanner = yara_x::Scanner::new(&self.rules);
        scanner
            .set_timeout(SCAN_TIMEOUT)
            .max_matches_per_pattern(MAX_MATCHES_PER_PATTERN);
        let Ok(results) = scanner.scan(data) else {
            return Vec::new();
        };
        let part_of = |off: usize| -> Option<&Part> {
            let parts = parts?;
            let i = parts.partition_point(|p| p.offset <= off);
            parts.get(i.checked_sub(1)?)
        };
        let mut out = Vec::new();
        for r in results.matching_rules() {
            let mut weight = DEFAULT_WEIGHT;
            let (mut technique, mut description) = ("T1496".to_string(), String::new());
            let mut file_only = false;
            for (k, v) in r.metadata() {
                match (k, v) {
                    ("weight", yara_x::MetaValue::Integer(w)) => weight = w.clamp(0, 10) as u32,
                    ("technique", yara_x::MetaValue::String(s)) => technique = s.to_string(),
                    ("description", yara_x::MetaValue::String(s)) => description = s.to_string(),
                    ("scope", yara_x::MetaValue::String("file")) => file_only = true,
                    _ => {}
                }
            }
            if file_only && parts.is_some() {
                continue;
            }
            let first = r
                .patterns()
                .find_map(|p| p.matches().next().map(|m| (p.identifier(), m)));
            let (string, data, at, writable) = match first {
                Some((id, m)) => {
                    let bytes = &m.data()[..m.data().len().min(EVIDENCE_BYTES)];
                    let mut d = crate::escape::escape(bytes);
                    if m.data().len() > EVIDENCE_BYTES {
                        d.push('…');
                    }
                    let off = m.range().start;
                    let at = match part_of(off) {
                        None => format!("file offset {off:#x}"),
                        Some(p) => {
                            format!("{:#x} ({})", p.start + (off - p.offset) as u64, p.label)
                        }
                    };
                    (
                        id.to_string(),
                        d,
                        at,
                        part_of(off).is_some_and(|p| p.writable),
                    )
                }
                None => (String::new(), String::new(), String::new(), false),
            };
            let origin = r
                .namespace()
                .strip_prefix('n')
                .and_then(|i| self.origins.get(i.parse::<usize>().ok()?))
                .cloned()
                .unwrap_or_else(|| "built-in".into());
            out.push(Match {
                in_data: writable,
                rule: r.identifier().to_string(),
                origin,
                weight,
                technique,
                description,
                string,
                data,
                at,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(data: &[u8], place: Place) -> Vec<String> {
        let s = Signatures::compile(&[]).unwrap();
        s.scan(data, place).into_iter().map(|m| m.rule).collect()
    }

    #[test]
    fn builtin_rules_compile_and_match_a_live_job() {
        let blob = "07".repeat(38);
        let job = format!(
            r#"{{"result":{{"job":{{"blob":"{blob}","job_id":"j1","target":"b88d0600"}}}}}}"#
        );
        let mem = Place::Memory {
            start: 0x1000,
            label: "[heap]".into(),
            writable: true,
        };
        assert_eq!(hits(job.as_bytes(), mem.clone()), ["quarry_stratum_job"]);
        // Source code names the fields but holds no blob: nothing.
        let src = br#"doc["blob"] = blob; if (json["job_id"].IsString()) ... "seed_hash""#;
        assert!(hits(src, mem.clone()).is_empty());
        let wallet = format!("4{}", "A".repeat(94));
        let login =
            format!(r#"{{"id":1,"method":"login","params":{{"login":"{wallet}","pass":"x"}}}}"#);
        assert_eq!(
            hits(login.as_bytes(), mem.clone()),
            ["quarry_stratum_login"]
        );
        // A packer mark counts in a file, not in memory.
        let mut elf = b"\x7fELF".to_vec();
        elf.extend_from_slice(b"....UPX!....UPX!....");
        assert_eq!(hits(&elf, Place::File), ["quarry_upx_packed"]);
        assert!(hits(&elf, mem).is_empty());
    }

    #[test]
    fn algorithm_words_need_a_table() {
        let mem = Place::Memory {
            start: 0,
            label: "anonymous".into(),
            writable: false,
        };
        assert!(hits(b"-DXMRIG_ALGO_RANDOMX rx/0 cn/r", mem.clone()).is_empty());
        let table = b"\0rx/0\0rx/wow\0cn/r\0cn/half\0argon2/chukwa\0";
        assert_eq!(hits(table, mem), ["quarry_algorithm_table"]);
    }
}
