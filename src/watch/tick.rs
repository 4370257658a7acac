//! The cheap, continuous part of `quarry watch`: every interval it reads
//! `/proc/stat`, lists `/proc`, reads each process's `stat`, and reads the
//! command line and executable of new processes only. From that it gives the
//! machine's busy share, the share no visible process accounts for, the new
//! processes that carry a miner signal, and the PIDs that went away.

use std::collections::HashMap;
use std::io;

use crate::collect::process::{read_stat, Process};
use crate::collect::{cpu, Snapshot};
use crate::detect::miner;
use crate::host::Host;
use crate::rules::Rules;

/// One tick's result.
#[derive(Debug, Default)]
pub struct TickResult {
    /// Share of all CPUs busy since the previous tick (0..1).
    pub busy: f64,
    /// Share of all CPUs busy that no listed process's time explains (0..1).
    pub unexplained: f64,
    /// New processes with a miner signal: (PID, escaped name, signal ids).
    pub suspects: Vec<(i32, String, Vec<String>)>,
    /// PIDs listed at the previous tick and gone now.
    pub gone: Vec<i32>,
    /// Processes listed.
    pub processes: usize,
}

/// The light sampler's memory between ticks.
pub struct Ticker {
    prev_stat: Option<cpu::StatSnapshot>,
    /// PID → (start time, own ticks, waited-for children's ticks).
    prev: HashMap<i32, (u64, u64, u64)>,
    me: i32,
}

impl Ticker {
    pub fn new() -> Ticker {
        Ticker {
            prev_stat: None,
            prev: HashMap::new(),
            me: std::process::id() as i32,
        }
    }

    /// Takes one reading and compares it with the previous one (the first
    /// reading only sets the baseline: every process is "known").
    pub fn tick(&mut self, host: &Host, rules: &Rules) -> io::Result<TickResult> {
        let stat = cpu::read_stat(host)?;
        let pids = host.list_pids("/proc")?;
        let first = self.prev_stat.is_none();
        let mut r = TickResult {
            processes: pids.len(),
            ..TickResult::default()
        };
        let mut now: HashMap<i32, (u64, u64, u64)> = HashMap::with_capacity(pids.len());
        let mut explained = 0u64;
        let mut fresh = Vec::new();
        for pid in &pids {
            let Ok(st) = read_stat(host, &format!("/proc/{pid}/stat")) else {
                continue;
            };
            let cur = (st.starttime, st.cpu_ticks(), st.child_ticks());
            match self.prev.get(pid) {
                Some(p) if p.0 == cur.0 => {
                    explained += cur.1.saturating_sub(p.1) + cur.2.saturating_sub(p.2);
                }
                _ => {
                    explained += cur.1 + cur.2;
                    if !first && *pid != self.me && !st.is_kernel_thread() {
                        fresh.push(*pid);
                    }
                }
            }
            now.insert(*pid, cur);
        }
        if let Some(prev) = &self.prev_stat {
            let total = stat.total.total().saturating_sub(prev.total.total());
            let busy = stat.total.busy().saturating_sub(prev.total.busy());
            if total > 0 {
                r.busy = busy as f64 / total as f64;
                r.unexplained = busy.saturating_sub(explained) as f64 / total as f64;
            }
            r.gone = self
                .prev
                .keys()
                .filter(|p| !now.contains_key(p))
                .copied()
                .collect();
        }
        // New processes: judged on what they are (name, command line,
        // executable place); CPU comes with the next full scan.
        let empty = Snapshot::default();
        for pid in fresh {
            let Some(p) = Process::read(host, pid) else {
                continue;
            };
            if p.stat.ppid == self.me {
                continue; // Quarry's own helpers
            }
            let sig = miner::signals(&empty, rules, &p, &[]);
            let ids: Vec<String> = sig
                .iter()
                .filter(|s| !(s.id == "exe-memfd" && s.weight <= 1))
                .map(|s| s.id.clone())
                .collect();
            if !ids.is_empty() {
                r.suspects.push((pid, crate::escape::escape(p.name()), ids));
            }
        }
        self.prev = now;
        self.prev_stat = Some(stat);
        Ok(r)
    }
}

impl Default for Ticker {
    fn default() -> Self {
        Ticker::new()
    }
}
