//! The entry stage of a scan: how it got in. Doors left open (`entry.*`
//! findings), the lineage and door of every case process, and the case's
//! timeline.

use crate::collect::{self, Snapshot};
use crate::detect::{self, Finding};
use crate::escape::escape;
use crate::host::Host;

/// Rules whose findings make a case: what got in and what keeps it.
fn is_case(f: &Finding) -> bool {
    f.rule.starts_with("miner.") && f.verdict.is_some()
        || f.rule == "hidden.process"
        || f.rule.starts_with("persistence.")
        || f.rule == "entry.redis-write"
        || f.rule == "kernel.hook" && f.subject.pid.is_some()
}

/// How it got in: doors left open (`entry.*` findings), the lineage and door
/// of every case process (added to its findings' evidence), and the case's
/// timeline. Returns the new findings, the report section and notes.
pub(super) fn entry_stage(
    host: &Host,
    snap: &Snapshot,
    persist: &[collect::persistence::PersistFile],
    findings: &mut [Finding],
) -> (Vec<Finding>, detect::entry::EntryReport, Vec<String>) {
    use detect::entry;
    let doors = collect::entry::collect(host, snap);
    let case: Vec<usize> = (0..findings.len())
        .filter(|&i| is_case(&findings[i]))
        .collect();
    let root_pw = doors
        .sshd
        .as_ref()
        .is_some_and(|s| !s.conf.root_password_logins().is_empty());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    // Login records are read only when they can answer something: a case,
    // or an SSH door whose use they show.
    let logins = (!case.is_empty() || root_pw).then(|| collect::entry::logins::read(host, now));
    let out = detect::entry::findings(&doors, persist, logins.as_ref(), &snap.users);
    let mut report = entry::EntryReport::default();
    let mut notes: Vec<String> = doors
        .notes
        .iter()
        .map(|n| format!("configuration not understood: {n}"))
        .collect();
    let redis_written: Vec<usize> = (0..out.len())
        .filter(|&i| out[i].rule == "entry.redis-write")
        .collect();
    if case.is_empty() && redis_written.is_empty() {
        return (out, report, notes);
    }
    // Lineage of each case process, once per PID.
    let mut pids: Vec<i32> = case
        .iter()
        .filter_map(|&i| findings[i].subject.pid)
        .collect();
    pids.sort();
    pids.dedup();
    let mut traces = Vec::new();
    for pid in pids {
        let t = collect::entry::lineage::trace(host, snap, pid);
        let rules: Vec<String> = findings
            .iter()
            .filter(|f| f.subject.pid == Some(pid) && is_case(f))
            .map(|f| f.rule.clone())
            .collect();
        let o = entry::origin(&t, rules, &snap.users, logins.as_ref());
        for f in findings
            .iter_mut()
            .filter(|f| f.subject.pid == Some(pid) && is_case(f))
        {
            entry::annotate(f, &o);
        }
        report.origins.push(o);
        traces.push(t);
    }
    // The files of the case, with what each is.
    let mut files: Vec<(String, crate::host::FileMeta, &'static str)> = Vec::new();
    for o in &report.origins {
        if let Some(Ok(exe)) = snap.processes.get(&o.pid).map(|p| p.exe.as_ref()) {
            if !exe.memfd && !exe.deleted {
                files.push((
                    escape(&exe.path),
                    host.file_meta(crate::host::bytes_to_path(&exe.path)),
                    "written (the executable)",
                ));
            }
        }
    }
    // A Redis dump is named as such first (it is also a start-up entry).
    for f in redis_written
        .iter()
        .map(|&i| &out[i])
        .chain(case.iter().map(|&i| &findings[i]))
    {
        let Some(path) = &f.subject.path else {
            continue;
        };
        if let Some(pf) = persist.iter().find(|p| escape(&p.path) == *path) {
            if !files.iter().any(|(p, _, _)| p == path) {
                let what = if f.rule == "entry.redis-write" {
                    "written (a Redis dump)"
                } else {
                    "changed (start-up entry)"
                };
                files.push((path.clone(), pf.meta.clone(), what));
            }
        }
    }
    // When each open door's service started: the door was open since then.
    let mut door_rules: std::collections::BTreeMap<i32, Vec<&str>> = Default::default();
    for f in out.iter().filter(|f| f.rule.starts_with("entry.")) {
        if let Some(pid) = f.subject.pid {
            let rules = door_rules.entry(pid).or_default();
            if !rules.contains(&f.rule.as_str()) {
                rules.push(&f.rule);
            }
        }
    }
    let mut door_events = Vec::new();
    for (pid, rules) in door_rules {
        let Some(p) = snap.processes.get(&pid) else {
            continue;
        };
        let l = collect::entry::lineage::link(snap, p);
        if let Some(start) = l.start {
            door_events.push(entry::Event::new(
                start,
                entry::RANK_START,
                format!(
                    "PID {} {} started, serving an open door [{}]",
                    l.pid,
                    l.name,
                    rules.join(", ")
                ),
                format!("process start time (ps -o lstart= -p {})", l.pid),
            ));
        }
    }
    report.timeline = entry::timeline(
        &report.origins,
        &traces,
        &files,
        logins.as_ref(),
        &door_events,
    );
    if logins.as_ref().is_some_and(|l| l.files.is_empty()) {
        notes.push("no login records (/var/log/wtmp, btmp, auth.log, secure) could be read: logins are missing from the timeline; on a journald-only machine, `journalctl -u ssh` shows them".into());
    }
    (out, report, notes)
}
