//! The scheduler's own task list: debugfs `sched/debug`.
//!
//! `print_rq()` in kernel/sched/debug.c walks every thread of every process
//! (`for_each_process_thread`) and prints those of each CPU's run queue: its
//! state, name, PID and the CPU time it has used (`sum-exec`, milliseconds).
//! It never looks a task up by PID, so a hook on `find_pid_ns`, `/proc/PID` or
//! `kill` does not remove a task from it. Quarry reads it to recover what it
//! can of a task that every lookup denies.
//!
//! The columns changed across kernels (6.6's EEVDF added `eligible`,
//! `deadline`, `slice`), so values are found by the header's column names.
//! The task name is printed `%15s` (right-aligned in 15 columns, the longest a
//! name can be) and may hold spaces: it is cut by position, not by words.

use std::collections::BTreeMap;

use crate::host::{Host, PrivateMount};

/// Where the file is: a mounted debugfs, else a private one.
pub const SCHED_DEBUG: &str = "/sys/kernel/debug/sched/debug";
/// The same file on kernels before 5.13 (procfs).
pub const SCHED_DEBUG_OLD: &str = "/proc/sched_debug";

/// One task line.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedTask {
    pub pid: i32,
    /// The task's name, raw (attacker-controlled: escape before printing).
    pub comm: Vec<u8>,
    /// `R`, `S`, `D`, ... (`task_state_to_char`).
    pub state: char,
    /// Running on a CPU at the moment of the read (`>R`).
    pub current: bool,
    /// CPU time used since it started, in milliseconds.
    pub sum_exec_ms: Option<f64>,
    /// The CPU whose section listed it.
    pub cpu: Option<u32>,
}

/// Parses the file: every task line of every CPU section, by PID (a thread
/// is listed by its thread ID).
pub fn parse(text: &[u8]) -> BTreeMap<i32, SchedTask> {
    let mut out = BTreeMap::new();
    let mut columns: Vec<String> = Vec::new();
    let mut cpu = None;
    for line in text.split(|b| *b == b'\n') {
        if let Some(rest) = line.strip_prefix(b"cpu#") {
            cpu = std::str::from_utf8(rest)
                .ok()
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok());
            continue;
        }
        let text_line = String::from_utf8_lossy(line);
        let words: Vec<&str> = text_line.split_whitespace().collect();
        if words.len() > 3 && words[0] == "S" && words[1] == "task" {
            // The header: the names of the values after the task name.
            columns = words[2..].iter().map(|w| w.to_string()).collect();
            continue;
        }
        if columns.is_empty() || line.len() < 20 {
            continue;
        }
        let (prefix, comm, rest) = (&line[..2], &line[3..18], &line[18..]);
        let current = prefix == b">R";
        let state = match prefix {
            [b' ', c] if c.is_ascii_alphabetic() => *c as char,
            b">R" => 'R',
            _ => continue,
        };
        if line[2] != b' ' {
            continue;
        }
        let rest = String::from_utf8_lossy(rest);
        let values: Vec<&str> = rest.split_whitespace().collect();
        let value = |name: &str| {
            columns
                .iter()
                .position(|c| c == name)
                .and_then(|i| values.get(i))
        };
        let Some(pid) = value("PID").and_then(|v| v.parse::<i32>().ok()) else {
            continue;
        };
        let comm: Vec<u8> = {
            let start = comm.iter().position(|b| *b != b' ').unwrap_or(comm.len());
            comm[start..].to_vec()
        };
        out.insert(
            pid,
            SchedTask {
                pid,
                comm,
                state,
                current,
                sum_exec_ms: value("sum-exec").and_then(|v| v.parse().ok()),
                cpu,
            },
        );
    }
    out
}

/// Reads the scheduler's task list: from the mounted debugfs, the old procfs
/// file, or a private debugfs mount. Returns the tasks and where they were
/// read, or why they could not be.
pub fn read(
    host: &Host,
    debugfs: Option<&PrivateMount>,
) -> Result<(BTreeMap<i32, SchedTask>, String), String> {
    for p in [SCHED_DEBUG, SCHED_DEBUG_OLD] {
        if let Ok((text, _)) = host.read_kernel_text(p) {
            return Ok((parse(text.as_bytes()), p.to_string()));
        }
    }
    match debugfs {
        Some(m) if host.is_live() => {
            let path = m.path("sched/debug");
            crate::host::read_kernel_file(&path, crate::host::MAX_READ)
                .map(|(b, _)| (parse(&b), m.describe("sched/debug")))
                .map_err(|e| format!("sched/debug: {e}"))
        }
        _ => Err(
            "debugfs is not available (not mounted, and no private mount: not root, or lockdown)"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kernel 6.18 (EEVDF columns), captured on the build machine.
    const V618: &str = "cpu#0, 2100.000 MHz\n  .nr_running                    : 1\n\nrunnable tasks:\n \
 S            task   PID       vruntime   eligible    deadline             slice          sum-exec      switches  prio         wait-time        sum-sleep       sum-block  node   group-id  group-path\n\
-------------------------------------------------------------------------------------------------------------\n \
 S     process_api     1  51262104.120336   E    51262104.259293           1.400000       228.738299       662     110         0.000000         0.000000         0.000000   0      0        /\n\
>R tokio-rt-worker    75  51563164.115823   E    51563164.250581           1.400000     58792.610814     30954     110         0.000000         0.000000         0.000000   0      0        /\n \
 S   a b c d e f g  4242  51563164.115823   E    51563164.250581           1.400000         1.500000     30954     110         0.000000         0.000000         0.000000   0      0        /\n";

    /// Kernel 6.1 (CFS columns).
    const V61: &str = "cpu#1, 2000.000 MHz\nrunnable tasks:\n \
 S            task   PID         tree-key  switches  prio     wait-time             sum-exec        sum-sleep\n\
-------------------------------------------------------------------------------------------------------------\n \
 S        kthreadd     2       -86.409467        20   120         0.000000         0.307425         0.000000 0 0 /\n\
>R          burner   123     10002.000000       140   120         0.000000      4512.250000         0.000000 0 0 /\n";

    #[test]
    fn eevdf_columns() {
        let t = parse(V618.as_bytes());
        assert_eq!(t.len(), 3);
        assert_eq!(t[&1].comm, b"process_api");
        assert_eq!(t[&1].state, 'S');
        assert_eq!(t[&1].cpu, Some(0));
        assert_eq!(t[&75].sum_exec_ms, Some(58792.610814));
        assert!(t[&75].current);
        // A name with spaces is cut by position.
        assert_eq!(t[&4242].comm, b"a b c d e f g");
    }

    #[test]
    fn cfs_columns() {
        let t = parse(V61.as_bytes());
        assert_eq!(t[&123].comm, b"burner");
        assert_eq!(t[&123].sum_exec_ms, Some(4512.25));
        assert_eq!(t[&2].sum_exec_ms, Some(0.307425));
        assert_eq!(t[&123].cpu, Some(1));
    }

    /// Captured in the QEMU test (tests/fixtures/kernel/6.1): the burner and
    /// the module's kernel thread, hidden by a find_pid_ns hook, are listed.
    #[test]
    fn real_kernel_lists_hidden_tasks() {
        let t = parse(include_bytes!(
            "../../tests/fixtures/kernel/6.1/sched_debug.ftrace2"
        ));
        let burner = t.values().find(|x| x.comm == b"burner").expect("burner");
        assert_eq!(burner.state, 'R');
        assert!(burner.pid < 300);
        assert!(burner.sum_exec_ms.unwrap() > 500.0);
        assert!(t.values().any(|x| x.comm == b"qtest_kworker"));
        assert_eq!(t[&1].comm, b"init");
        assert!(t.len() > 20);
    }

    #[test]
    fn garbage_is_ignored() {
        assert!(parse(b"runnable tasks:\n S task\n\xff\xfe\n>R\n").is_empty());
    }
}
