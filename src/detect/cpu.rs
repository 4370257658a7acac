//! The machine-level CPU verdict: is the CPU abnormally busy, and who is using it?

use serde::Serialize;

use super::{Evidence, Finding, Severity, Subject, Technique};
use crate::collect::Snapshot;
use crate::escape::escape;

/// The CPU picture over the sampling interval.
#[derive(Debug, Clone, Serialize)]
pub struct CpuVerdict {
    /// Whole-machine busy share, % of all CPUs.
    pub busy_percent: f64,
    pub per_cpu_percent: Vec<f64>,
    pub interval_seconds: f64,
    pub threshold_percent: f64,
    pub abnormal: bool,
    /// Sum of visible processes' CPU over the interval, % of all CPUs.
    pub visible_percent: f64,
    /// Quarry's own CPU over the interval (its module walk runs during the
    /// sample), % of all CPUs, left out of `busy_percent`.
    pub quarry_percent: f64,
}

/// Computes the verdict and, when abnormal, a `cpu.abnormal` finding.
/// `me` is Quarry's own PID on the live host: its CPU is not the machine's.
pub fn assess(snap: &Snapshot, threshold: f64, me: Option<i32>) -> (CpuVerdict, Option<Finding>) {
    let cpus = snap.host.cpus.max(1) as f64;
    let own = me
        .and_then(|pid| snap.processes.get(&pid))
        .map_or(0.0, |p| p.cpu_percent / cpus);
    let busy = (snap.busy_percent() - own).max(0.0);
    let visible: f64 = snap.processes.values().map(|p| p.cpu_percent).sum::<f64>() / cpus;
    let v = CpuVerdict {
        busy_percent: busy,
        per_cpu_percent: snap.per_cpu_percent(),
        interval_seconds: snap.elapsed.as_secs_f64(),
        threshold_percent: threshold,
        // Below 0.1 s a few clock ticks decide the share: no verdict.
        abnormal: busy >= threshold && snap.elapsed.as_millis() >= 100,
        visible_percent: visible.min(100.0),
        quarry_percent: own,
    };
    if !v.abnormal {
        return (v, None);
    }
    let mut top: Vec<_> = snap
        .processes
        .values()
        .filter(|p| Some(p.pid) != me)
        .collect();
    top.sort_by(|a, b| b.cpu_percent.total_cmp(&a.cpu_percent));
    let mut evidence = vec![
        Evidence::new(
            "busy",
            format!(
                "{busy:.1}% of {} CPUs over {:.2} s (/proc/stat, less Quarry's own {own:.1}%)",
                snap.host.cpus, v.interval_seconds
            ),
        ),
        Evidence::new("threshold", format!("{threshold:.0}%")),
    ];
    for p in top.iter().take(3).filter(|p| p.cpu_percent >= 1.0) {
        evidence.push(Evidence::new(
            "consumer",
            format!(
                "PID {} {} {:.1}% of one CPU",
                p.pid,
                escape(p.name()),
                p.cpu_percent
            ),
        ));
    }
    let f = Finding {
        remedies: Vec::new(),
        rule: "cpu.abnormal".into(),
        severity: Severity::Low,
        verdict: None,
        title: format!(
            "CPU is {busy:.0}% busy (threshold {threshold:.0}%); see the top consumers and any miner findings"
        ),
        subject: Subject::default(),
        techniques: vec![Technique::new("T1496")],
        signals: vec![],
        score: None,
        evidence,
    };
    (v, Some(f))
}
