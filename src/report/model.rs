//! The report model: what a scan found and saw, as the text and JSON
//! renderers print it (docs/JSON-SCHEMA.md).

use serde::Serialize;

use crate::collect;
use crate::detect::{self, cpu::CpuVerdict, Finding, Severity};

/// What the module checks saw (for the report).
#[derive(Debug, Clone, Serialize)]
pub struct ModulesSummary {
    /// False on a kernel without loadable-module support.
    pub loaded_checks_applicable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_applicable_reason: Option<String>,
    pub listed: usize,
    pub sys_module_loadable: usize,
    pub kallsyms_tagged: usize,
    pub tracefs_tagged: Option<usize>,
    pub vmalloc_load_module: Option<usize>,
    pub tainted: Option<u64>,
    pub taint_flags: String,
    pub module_files: usize,
    pub walk: collect::modules::WalkStats,
}

/// What the cross-view census saw (for the report).
/// The kernel's task counts (`nr_threads` from /proc/loadavg and
/// sysinfo(2), before and after the listing) against the tasks listed.
#[derive(Debug, Clone, Serialize)]
pub struct TaskCountsSummary {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loadavg: Option<[u64; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sysinfo: Option<[u16; 2]>,
    pub created: u64,
    pub visible: u64,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disagreement: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CensusSummary {
    /// Why the PID-space sweep ran, or why it did not.
    pub sweep: String,
    /// The kernel's task counts against the listing (initial PID namespace,
    /// live machine).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_counts: Option<TaskCountsSummary>,
    pub pid_max: i32,
    /// The part of the PID space that can be in use, and why
    /// (collect::census::PidSpace): sweeps not pointed at a rootkit, and the
    /// allocator probe's first pass, stop at `upto`.
    pub pid_space: PidSpaceSummary,
    /// The highest PID the sweep asked about (0: no sweep).
    pub swept_upto: i32,
    pub listed_processes: usize,
    pub threads: usize,
    pub cgroup_hierarchies: Vec<String>,
    pub probed: bool,
    pub probe_answers: usize,
    pub private_procfs: bool,
    pub hidden: usize,
    /// TCP/UDP sockets whose inode no visible process holds (kernel sockets
    /// legitimately have none).
    pub orphan_sockets: usize,
    pub orphan_unix_sockets: usize,
    pub probe_ms: f64,
    pub census_ms: f64,
    /// The PID-allocator probe (clone3 set_tid), when it ran: PIDs asked,
    /// PIDs held that nothing explains, milliseconds; or why it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocator: Option<AllocatorSummary>,
    /// Where the scheduler's task list was read, when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sched_source: Option<String>,
    /// Functions with an ftrace callback (tracefs enabled_functions), if readable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hooked_functions: Option<usize>,
    /// kprobes registered (debugfs kprobes/list), if readable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kprobes: Option<usize>,
    /// Whether TCP sockets were compared between /proc/net/tcp{,6} and inet_diag.
    pub inet_diag_compared: bool,
    /// BPF programs loaded (bpf() BPF_PROG_GET_NEXT_ID), on the live host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bpf_programs: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PidSpaceSummary {
    pub upto: i32,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct AllocatorSummary {
    /// Why it ran: `unexplained CPU`, `a kernel hook`, `--deep`.
    pub reason: String,
    pub probed: usize,
    pub held_unexplained: usize,
    pub ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_applicable: Option<String>,
}

/// The JSON schema name and version (docs/JSON-SCHEMA.md).
pub const SCHEMA: &str = "quarry.scan";
pub const SCHEMA_VERSION: u32 = 1;

/// A top CPU consumer, with the context an administrator needs.
#[derive(Debug, Clone, Serialize)]
pub struct TopProcess {
    pub pid: i32,
    pub user: String,
    pub uid: Option<u32>,
    pub cpu_percent: f64,
    pub threads: i64,
    pub name: String,
    pub exe: Option<String>,
    /// `file`, `deleted`, `memory-only`, `kernel-thread` or `unreadable`.
    pub exe_state: &'static str,
    pub cmdline: String,
    pub cwd: Option<String>,
    pub age_seconds: Option<u64>,
    pub parents: Vec<Parent>,
    pub unit: Option<String>,
    pub container: Option<String>,
    /// `malicious` / `suspicious` when a miner finding names this process.
    pub verdict: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Parent {
    pub pid: i32,
    pub name: String,
}

/// Counts for the summary line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub malicious: usize,
    pub suspicious: usize,
    pub findings: usize,
    pub highest: Option<Severity>,
    /// The text report's VERDICT line (every number in it is one a finding
    /// states).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub verdict: String,
}

/// The whole result of a scan.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub schema_version: u32,
    pub quarry_version: &'static str,
    pub started: String,
    pub host: collect::HostInfo,
    pub cpu: CpuVerdict,
    pub top: Vec<TopProcess>,
    pub findings: Vec<Finding>,
    pub summary: Summary,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub census: Option<CensusSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_accounting: Option<detect::hidden::CpuAccounting>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modules: Option<ModulesSummary>,
    /// How it got in: each case process's lineage and door, and the case's
    /// timeline (only when there is a case).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<detect::entry::EntryReport>,
    pub limitations: Vec<String>,
    pub timing: collect::Timing,
}
