//! System CPU counters from `/proc/stat`.

use serde::Serialize;

use crate::host::Host;

/// Busy and total ticks of one CPU line of `/proc/stat`.
///
/// Columns (proc(5)): user nice system idle iowait irq softirq steal guest
/// guest_nice. "Busy" is user+nice+system+irq+softirq+steal — everything but
/// idle and iowait. guest and guest_nice are already included in user and nice,
/// so they are not added again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CpuTimes {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

impl CpuTimes {
    pub fn busy(&self) -> u64 {
        self.user + self.nice + self.system + self.irq + self.softirq + self.steal
    }
    pub fn total(&self) -> u64 {
        self.busy() + self.idle + self.iowait
    }
}

/// One reading of `/proc/stat`.
#[derive(Debug, Clone, Default)]
pub struct StatSnapshot {
    /// The aggregate `cpu` line.
    pub total: CpuTimes,
    /// `cpu0`, `cpu1`, ... in order.
    pub per_cpu: Vec<CpuTimes>,
    /// Boot time, seconds since the epoch (`btime`).
    pub boot_time: u64,
    /// Processes and threads created since boot (`processes`).
    pub forks: u64,
}

/// Reads `/proc/stat`.
pub fn read_stat(host: &Host) -> std::io::Result<StatSnapshot> {
    Ok(parse_stat(&host.read_text("/proc/stat")?))
}

/// Parses the text of `/proc/stat`.
pub fn parse_stat(text: &str) -> StatSnapshot {
    let mut snap = StatSnapshot::default();
    for line in text.lines() {
        let mut it = line.split_ascii_whitespace();
        let Some(key) = it.next() else { continue };
        if key == "btime" {
            snap.boot_time = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        } else if key == "processes" {
            snap.forks = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        } else if let Some(rest) = key.strip_prefix("cpu") {
            let v: Vec<u64> = it.map(|x| x.parse().unwrap_or(0)).collect();
            let g = |i: usize| v.get(i).copied().unwrap_or(0);
            let t = CpuTimes {
                user: g(0),
                nice: g(1),
                system: g(2),
                idle: g(3),
                iowait: g(4),
                irq: g(5),
                softirq: g(6),
                steal: g(7),
            };
            if rest.is_empty() {
                snap.total = t;
            } else {
                snap.per_cpu.push(t);
            }
        }
    }
    snap
}

/// The busy share (0-100 %) between two readings.
pub fn busy_percent(a: &CpuTimes, b: &CpuTimes) -> f64 {
    let total = b.total().saturating_sub(a.total());
    if total == 0 {
        return 0.0;
    }
    100.0 * b.busy().saturating_sub(a.busy()) as f64 / total as f64
}

/// CPU time used by every task on the machine, from the root cgroup
/// (nanoseconds): cgroup v1 `cpuacct.usage`, or cgroup v2 `cpu.stat`
/// `usage_usec` at the root of the hierarchy. A third, independent count to
/// compare with `/proc/stat`.
pub fn root_cgroup_usage_ns(host: &Host) -> Option<(u64, String)> {
    let mounts = super::mounts::read(host, "self");
    for m in &mounts {
        if m.fs_type == "cgroup" && m.super_options.split(',').any(|o| o == "cpuacct") {
            let path = format!("{}/cpuacct.usage", String::from_utf8_lossy(&m.mount_point));
            if let Some(v) = host
                .read_text(&path)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                return Some((v, path));
            }
        }
    }
    for m in &mounts {
        if m.fs_type == "cgroup2" {
            let path = format!("{}/cpu.stat", String::from_utf8_lossy(&m.mount_point));
            if let Ok(text) = host.read_text(&path) {
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("usage_usec ") {
                        if let Ok(us) = v.trim().parse::<u64>() {
                            return Some((us * 1000, path));
                        }
                    }
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_lines() {
        let s = parse_stat(
            "cpu  10 1 5 100 4 1 1 0 0 0\ncpu0 5 0 3 50 2 1 0 0 0 0\ncpu1 5 1 2 50 2 0 1 0 0 0\nintr 1\nbtime 1700000000\n",
        );
        assert_eq!(s.total.busy(), 18);
        assert_eq!(s.total.total(), 122);
        assert_eq!(s.per_cpu.len(), 2);
        assert_eq!(s.boot_time, 1_700_000_000);
        let mut b = s.total;
        b.user += 50;
        b.idle += 50;
        assert!((busy_percent(&s.total, &b) - 50.0).abs() < 1e-9);
    }
}
