//! What `quarry watch` already reported, so that each finding is reported once
//! when it appears, again when it changes, and as cleared when it goes; and a
//! restart of the daemon does not alert again on what it reported before.
//!
//! Kept in a small JSON file under a root-only folder (`/var/lib/quarry/watch`
//! by default, mode 0700 on a path only root can change), written through
//! descriptors as a new file renamed over the old one (respond::safe_fs): an
//! unprivileged user can neither read it nor steer the write.

use std::collections::BTreeMap;
use std::io;

use serde::{Deserialize, Serialize};

use crate::detect::{Finding, Severity};
use crate::respond::safe_fs;

/// Largest state file read (a few hundred findings take a few KiB).
const MAX_STATE: usize = 4 << 20;

/// The state file's name inside its folder.
pub const STATE_FILE: &str = "state.json";

/// What was reported about one finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub severity: Severity,
    /// Signal ids (process findings), sorted: a new signal is a change.
    pub signals: Vec<String>,
    pub title: String,
    pub first_seen: String,
}

/// Reported findings by key.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub reported: BTreeMap<String, Seen>,
}

/// What happened to one finding between two scans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    New,
    Changed,
    Cleared,
}

/// A stable key for a finding: its rule and what it is about (the process's
/// PID and executable, or the file), never its wording.
pub fn key(f: &Finding) -> String {
    let s = &f.subject;
    match (s.pid, &s.path) {
        (Some(pid), path) => format!("{}|pid={pid}|{}", f.rule, path.as_deref().unwrap_or("")),
        (None, Some(path)) => format!("{}|path={path}|{}", f.rule, line_of(f)),
        (None, None) => format!("{}|{}", f.rule, f.title),
    }
}

/// The line a start-up finding is about (several lines of one file are
/// several findings).
fn line_of(f: &Finding) -> String {
    f.evidence
        .iter()
        .find(|e| e.key == "line")
        .map(|e| e.value.split(':').next().unwrap_or("").to_string())
        .unwrap_or_default()
}

fn seen(f: &Finding, first_seen: &str) -> Seen {
    let mut signals: Vec<String> = f.signals.iter().map(|s| s.id.clone()).collect();
    signals.sort();
    signals.dedup();
    Seen {
        severity: f.severity,
        signals,
        title: f.title.clone(),
        first_seen: first_seen.to_string(),
    }
}

impl State {
    /// Compares a scan's findings with what was reported, updates the state,
    /// and returns the changes in order: new and changed findings (with the
    /// finding), then cleared ones (with what was last reported).
    /// A finding reported before, absent now and of a rule the scan did not
    /// `cover`, stays open: a light scan says nothing of module files.
    pub fn update<'a>(
        &mut self,
        findings: &'a [Finding],
        now: &str,
        covered: impl Fn(&str) -> bool,
    ) -> Vec<(Change, String, Option<&'a Finding>, Option<Seen>)> {
        let mut out = Vec::new();
        let mut current: BTreeMap<String, Seen> = BTreeMap::new();
        for f in findings {
            let k = key(f);
            let first = self
                .reported
                .get(&k)
                .map_or(now.to_string(), |s| s.first_seen.clone());
            let s = seen(f, &first);
            match self.reported.get(&k) {
                None => out.push((Change::New, k.clone(), Some(f), None)),
                Some(old) if old.severity != s.severity || old.signals != s.signals => {
                    out.push((Change::Changed, k.clone(), Some(f), Some(old.clone())))
                }
                Some(_) => {}
            }
            current.insert(k, s);
        }
        for (k, old) in &self.reported {
            if current.contains_key(k) {
                continue;
            }
            let rule = k.split('|').next().unwrap_or("");
            if covered(rule) {
                out.push((Change::Cleared, k.clone(), None, Some(old.clone())));
            } else {
                current.insert(k.clone(), old.clone());
            }
        }
        self.reported = current;
        self.version = 1;
        out
    }

    /// Loads the state from `dir` (a missing file is an empty state; a file
    /// that does not parse is reported and replaced).
    pub fn load(dir: &[u8]) -> io::Result<State> {
        let d = match safe_fs::check_private_dir(dir) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(State::default()),
            Err(e) => return Err(e),
        };
        let f = match d.open_file(STATE_FILE.as_bytes()) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(State::default()),
            Err(e) => return Err(e),
        };
        let data = safe_fs::read_all(&f, MAX_STATE)?;
        serde_json::from_slice(&data).map_err(|e| {
            safe_fs::err(
                &d.join(STATE_FILE.as_bytes()),
                format!("not a Quarry watch state ({e})"),
            )
        })
    }

    /// Saves the state into `dir` (created 0700 if missing).
    pub fn save(&self, dir: &[u8]) -> io::Result<()> {
        safe_fs::make_dirs(dir)?;
        let d = safe_fs::check_private_dir(dir)?;
        let mut t = d.create_tmp()?;
        t.write_all(&serde_json::to_vec(self).map_err(io::Error::other)?)?;
        t.link_into(&d, STATE_FILE.as_bytes(), true)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Subject;

    fn finding(rule: &str, pid: Option<i32>, sev: Severity) -> Finding {
        Finding {
            rule: rule.into(),
            severity: sev,
            verdict: None,
            title: format!("{rule} {pid:?}"),
            subject: Subject {
                pid,
                name: None,
                path: Some("/tmp/x".into()),
            },
            techniques: vec![],
            signals: vec![],
            score: None,
            evidence: vec![],
            remedies: vec![],
        }
    }

    #[test]
    fn new_changed_cleared() {
        let mut st = State::default();
        let a = vec![finding("miner.process", Some(7), Severity::Medium)];
        let c = st.update(&a, "t0", |_| true);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].0, Change::New);
        assert!(st.update(&a, "t1", |_| true).is_empty(), "reported once");
        let b = vec![finding("miner.process", Some(7), Severity::High)];
        let c = st.update(&b, "t2", |_| true);
        assert_eq!(c[0].0, Change::Changed);
        assert_eq!(st.reported.values().next().unwrap().first_seen, "t0");
        // A scan that did not cover the rule leaves it open.
        assert!(st.update(&[], "t3", |r| r != "miner.process").is_empty());
        assert_eq!(st.reported.len(), 1);
        let c = st.update(&[], "t4", |_| true);
        assert_eq!(c[0].0, Change::Cleared);
        assert!(st.reported.is_empty());
    }
}
