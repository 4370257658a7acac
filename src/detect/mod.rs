//! Detectors: each turns snapshots into [`Finding`]s with a stable rule id, a
//! severity, evidence and a MITRE ATT&CK technique.

pub mod cpu;
pub mod entry;
pub mod hidden;
pub mod hooks;
pub mod miner;
pub mod modules;
pub mod persistence;
pub mod preload;

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::host::{BytePath, FileId};

/// How bad a finding is. Ordered: `Info < Low < Medium < High < Critical`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "info" => Severity::Info,
            "low" => Severity::Low,
            "medium" => Severity::Medium,
            "high" => Severity::High,
            "critical" => Severity::Critical,
            _ => {
                return Err(format!(
                    "unknown severity {s:?} (info, low, medium, high, critical)"
                ))
            }
        })
    }
}

/// A MITRE ATT&CK technique.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Technique {
    pub id: String,
    pub name: String,
}

impl Technique {
    pub fn new(id: &str) -> Technique {
        Technique {
            id: id.to_string(),
            name: technique_name(id).to_string(),
        }
    }
}

/// Names of the ATT&CK techniques Quarry reports.
pub fn technique_name(id: &str) -> &'static str {
    match id {
        "T1496" => "Resource Hijacking",
        "T1036" => "Masquerading",
        "T1036.004" => "Masquerade Task or Service",
        "T1036.005" => "Match Legitimate Name or Location",
        "T1070.004" => "Indicator Removal: File Deletion",
        "T1620" => "Reflective Code Loading",
        "T1074" => "Data Staged",
        "T1564.001" => "Hidden Files and Directories",
        "T1571" => "Non-Standard Port",
        "T1014" => "Rootkit",
        "T1547.006" => "Kernel Modules and Extensions",
        "T1574.006" => "Dynamic Linker Hijacking",
        "T1564" => "Hide Artifacts",
        "T1222.002" => "Linux File and Directory Permissions Modification",
        "T1037.004" => "Boot or Logon Initialization Scripts: RC Scripts",
        "T1546.004" => "Event Triggered Execution: Unix Shell Configuration Modification",
        "T1098.004" => "Account Manipulation: SSH Authorized Keys",
        "T1053.003" => "Scheduled Task/Job: Cron",
        "T1543.002" => "Create or Modify System Process: Systemd Service",
        "T1190" => "Exploit Public-Facing Application",
        "T1505.003" => "Server Software Component: Web Shell",
        "T1078" => "Valid Accounts",
        "T1110.001" => "Brute Force: Password Guessing",
        "T1021.004" => "Remote Services: SSH",
        "T1610" => "Deploy Container",
        "T1609" => "Container Administration Command",
        "T1613" => "Container and Resource Discovery",
        "T1574.007" => "Hijack Execution Flow: Path Interception by PATH Environment Variable",
        _ => "",
    }
}

/// One piece of evidence: a named fact the user can check by hand.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evidence {
    pub key: String,
    /// Escaped, printable, one line.
    pub value: String,
}

impl Evidence {
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Evidence {
        Evidence {
            key: key.into(),
            value: value.into(),
        }
    }
}

/// A single reason that counts towards a process verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Signal {
    /// Stable id, e.g. `miner-name`, `exe-deleted`.
    pub id: String,
    /// How much it counts (see `detect::miner`).
    pub weight: u32,
    /// Plain explanation, escaped.
    pub detail: String,
    pub technique: Technique,
    /// Where the indicator comes from (rules entries), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Whether the signal rests on the process's own evidence (what its
    /// executable and memory hold, its own command line and sockets, files
    /// it names or holds open) or on its surroundings (a name, a folder, a
    /// file nearby, what restarts it): see [`Basis`].
    pub basis: Basis,
}

/// What a signal rests on. `quarry fix` acts by default only on verdicts
/// whose own evidence alone reaches "suspicious" (respond::plan): ambient
/// signals may make a process suspicious, never alone get it killed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Basis {
    /// The process's own evidence.
    #[default]
    Own,
    /// Its surroundings: who else could have made them so is not known.
    Ambient,
}

/// The subject of a finding.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Subject {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// Escaped process name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Escaped path (executable, file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// Stable rule id, e.g. `miner.process`.
    pub rule: String,
    pub severity: Severity,
    /// For process findings: `malicious` or `suspicious`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// One line a tired administrator understands (escaped).
    pub title: String,
    pub subject: Subject,
    pub techniques: Vec<Technique>,
    /// Signals that add up to the verdict (process findings).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub signals: Vec<Signal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<u32>,
    pub evidence: Vec<Evidence>,
    /// What `quarry fix` would do about it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remedies: Vec<Remedy>,
}

/// One remediation step a finding asks for; `quarry fix` turns them into a plan.
///
/// Files carry the identity the scan saw (`id`, filled in by the scan through
/// the host layer): `quarry fix` acts only on an object that still has it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Remedy {
    /// Freeze, save evidence of, and kill a process (and what restarts it).
    /// `starttime` (clock ticks after boot) guards against PID reuse.
    StopProcess { pid: i32, starttime: u64 },
    /// Move a file into the case folder. `direct` is true when the file itself
    /// is the evidence (a miner's executable, a hooking preload library, a
    /// module named like a rootkit), false when it is only linked to one; only
    /// direct evidence may act in a system directory without `--force`.
    QuarantineFile {
        path: BytePath,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<FileId>,
        direct: bool,
        /// What the detector judged: the SHA-256 of the content it read, or
        /// the process whose executable it is. The pin must agree.
        #[serde(skip_serializing_if = "Judged::is_none")]
        judged: Judged,
    },
    /// Remove one line from a file (crontab, shell start-up file).
    RemoveLine {
        path: BytePath,
        line: usize,
        content: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<FileId>,
        #[serde(skip_serializing_if = "Judged::is_none")]
        judged: Judged,
    },
    /// Disable a systemd unit (remove its .wants/.requires links).
    DisableUnit { path: BytePath },
    /// Remove an entry from /etc/ld.so.preload.
    RemovePreloadEntry { entry: BytePath },
    /// Unmount something mounted over /proc/PID.
    Unmount { mount_point: String },
    /// A file the finding names that `quarry fix` cannot reach, with the
    /// reason (it lives only in a container's mount namespace, or on a file
    /// system a user serves): the plan says so instead of acting on a host
    /// file that only shares the name.
    Unreachable { path: BytePath, why: String },
}

/// What a detector judged about a file a remedy names, so that the identity
/// pinned for `quarry fix` is that of the very object judged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Judged {
    #[default]
    None,
    /// The SHA-256 of the content the detector read.
    Content(String),
    /// The executable of this process (compared through `/proc/PID/exe`).
    ExeOf(i32),
}

impl Judged {
    pub fn is_none(&self) -> bool {
        *self == Judged::None
    }
}

impl Remedy {
    /// The file a remedy acts on, if any.
    pub fn file(&self) -> Option<&BytePath> {
        match self {
            Remedy::QuarantineFile { path, .. } | Remedy::RemoveLine { path, .. } => Some(path),
            _ => None,
        }
    }
}
