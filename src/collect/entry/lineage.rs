//! Where a process came from: its ancestors, and what survives when it was
//! re-parented to PID 1 (its environment, its cgroup, its login session).
//! Judged in `detect::entry`; this only reads.

use std::collections::BTreeMap;

use crate::collect::process::{cgroup_context, split_nul, Process};
use crate::collect::Snapshot;
use crate::escape::{escape, escape_args};
use crate::host::Host;

/// Longest ancestor chain followed (a loop or a forged PPID stops earlier).
const MAX_DEPTH: usize = 32;

/// One process of a chain.
#[derive(Debug, Clone, Default)]
pub struct Link {
    pub pid: i32,
    /// `comm`, escaped.
    pub name: String,
    /// The executable's path, escaped.
    pub exe: Option<String>,
    /// The executable's file name, raw (for matching, never printed).
    pub exe_base: String,
    /// argv, lossy (for matching, never printed).
    pub argv: Vec<String>,
    /// The command line, escaped and shortened, for evidence.
    pub cmdline: String,
    pub uid: Option<u32>,
    /// Start time, seconds since the epoch.
    pub start: Option<i64>,
    /// Its executable is a file only root can change (owned by root, not
    /// writable by group or others): only then does its name say what
    /// program it is. A user's copy of a shell named `java` is not Tomcat.
    pub exe_trusted: bool,
    /// Who owns its executable, when it is not trusted (for the report).
    pub exe_owner: Option<u32>,
}

/// A login session from `/run/systemd/sessions/ID` (logind).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    pub user: Option<String>,
    pub remote_host: Option<String>,
    pub service: Option<String>,
    pub file: String,
}

/// A container the process runs in, from its cgroup and the engine's files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Container {
    /// `docker 0123456789ab`, as `cgroup_context` names it.
    pub label: String,
    pub name: Option<String>,
    pub image: Option<String>,
    /// Where name and image were read.
    pub source: Option<String>,
}

/// Everything known about a process's origin.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    /// The process itself first, then its parent, up to PID 1.
    pub chain: Vec<Link>,
    /// `SSH_CONNECTION` (client address, port, server address, port) from
    /// the environment, which a daemonised process keeps.
    pub ssh_connection: Option<String>,
    /// `USER`/`LOGNAME` from the environment.
    pub env_user: Option<String>,
    /// `SUDO_USER` from the environment.
    pub sudo_user: Option<String>,
    pub unit: Option<String>,
    pub container: Option<Container>,
    pub session: Option<Session>,
    /// The session leader, when it is not in the chain and still runs.
    pub session_leader: Option<Link>,
}

/// Multi-call executables: one file, a program per name it is started as
/// (Debian's `/usr/bin/redis-server` is a link to `redis-check-rdb`).
const MULTI_CALL: &[&[u8]] = &[b"redis-check-rdb", b"redis-check-aof", b"busybox"];

/// The program a process runs: its executable's file name, or for a
/// multi-call executable the name it was started as (`comm`).
pub fn program_name(p: &Process) -> String {
    match p.exe.as_ref() {
        Ok(e) if !MULTI_CALL.contains(&e.file_name()) => {
            String::from_utf8_lossy(e.file_name()).into_owned()
        }
        _ => String::from_utf8_lossy(&p.stat.comm).into_owned(),
    }
}

/// One process as a link.
pub fn link(snap: &Snapshot, p: &Process) -> Link {
    let start = (snap.stat1.boot_time > 0).then(|| {
        snap.stat1.boot_time as i64 + (p.stat.starttime / snap.ticks_per_second.max(1)) as i64
    });
    let exe = p.exe.as_ref().ok();
    let mut cmdline = escape_args(&p.cmdline);
    if cmdline.chars().count() > 240 {
        cmdline = cmdline.chars().take(240).collect::<String>() + "…";
    }
    Link {
        pid: p.pid,
        name: escape(&p.stat.comm),
        exe: exe.map(|e| escape(&e.link)),
        exe_base: program_name(p),
        argv: p
            .cmdline
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
        cmdline,
        uid: p.uid,
        start,
        exe_trusted: false,
        exe_owner: None,
    }
}

/// Whether a process's executable is a file only root can change, and its
/// owner: read through the checked link (a file on a FUSE mount is not read,
/// and not trusted).
pub fn exe_trust(host: &Host, pid: i32) -> (bool, Option<u32>) {
    match host.find(format!("/proc/{pid}/exe"), true) {
        Ok(f) => {
            let mode = f.stat.stx_mode as u32;
            (
                f.stat.stx_uid == 0 && mode & 0o022 == 0,
                Some(f.stat.stx_uid),
            )
        }
        Err(_) => (false, None),
    }
}

/// The value of `KEY` in a NUL-separated environment.
pub fn env_value(environ: &[Vec<u8>], key: &str) -> Option<String> {
    environ.iter().find_map(|e| {
        let v = e.strip_prefix(key.as_bytes())?.strip_prefix(b"=")?;
        Some(escape(v))
    })
}

/// A docker container's full ID from a cgroup file
/// (`…/docker-ID.scope` or `…/docker/ID`).
pub fn docker_id(cgroup: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(cgroup);
    for comp in text.lines().flat_map(|l| l.split('/')) {
        let id = comp
            .strip_prefix("docker-")
            .and_then(|c| c.strip_suffix(".scope"))
            .unwrap_or(comp);
        if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Some(id.to_string());
        }
    }
    None
}

/// Name and image of a docker container, from the engine's own record
/// (`/var/lib/docker/containers/ID/config.v2.json`).
pub fn docker_container(host: &Host, id: &str) -> (Option<String>, Option<String>, String) {
    let path = format!("/var/lib/docker/containers/{id}/config.v2.json");
    let v: Option<serde_json::Value> = host
        .read_prefix(&path, 4 << 20)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let get = |ptr: &str| {
        v.as_ref()
            .and_then(|v| v.pointer(ptr))
            .and_then(|s| s.as_str())
            .map(|s| crate::escape::escape_str(s.trim_start_matches('/')))
    };
    (get("/Name"), get("/Config/Image"), path)
}

/// A logind session record (`KEY=value` lines).
pub fn session(host: &Host, id: &str) -> Option<Session> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    let file = format!("/run/systemd/sessions/{id}");
    let text = host.read_text(&file).ok()?;
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .map(crate::escape::escape_str)
    };
    Some(Session {
        id: id.to_string(),
        user: get("USER"),
        remote_host: get("REMOTE_HOST"),
        service: get("SERVICE"),
        file,
    })
}

/// Traces one process.
pub fn trace(host: &Host, snap: &Snapshot, pid: i32) -> Trace {
    let mut t = Trace::default();
    let procs: &BTreeMap<i32, Process> = &snap.processes;
    let mut cur = procs.get(&pid);
    if cur.is_none() {
        t.chain.push(Link {
            pid,
            name: "?".into(),
            ..Link::default()
        });
    }
    while let Some(p) = cur {
        if t.chain.len() >= MAX_DEPTH || t.chain.iter().any(|l| l.pid == p.pid) {
            break;
        }
        let mut l = link(snap, p);
        (l.exe_trusted, l.exe_owner) = exe_trust(host, p.pid);
        t.chain.push(l);
        if p.pid <= 1 || p.stat.ppid <= 0 {
            break;
        }
        cur = procs.get(&p.stat.ppid);
    }
    let environ = host
        .read(format!("/proc/{pid}/environ"))
        .map(|b| split_nul(&b))
        .unwrap_or_default();
    t.ssh_connection =
        env_value(&environ, "SSH_CONNECTION").or_else(|| env_value(&environ, "SSH_CLIENT"));
    t.env_user = env_value(&environ, "USER").or_else(|| env_value(&environ, "LOGNAME"));
    t.sudo_user = env_value(&environ, "SUDO_USER");
    if let Ok(cg) = host.read(format!("/proc/{pid}/cgroup")) {
        let (unit, container) = cgroup_context(&cg);
        if let Some(s) = unit
            .as_deref()
            .and_then(|u| u.strip_prefix("session-")?.strip_suffix(".scope"))
        {
            t.session = session(host, s);
        }
        t.unit = unit;
        if let Some(label) = container {
            let mut c = Container {
                label,
                ..Container::default()
            };
            if let Some(id) = docker_id(&cg) {
                let (name, image, src) = docker_container(host, &id);
                if name.is_some() || image.is_some() {
                    c.source = Some(src);
                }
                c.name = name;
                c.image = image;
            }
            t.container = Some(c);
        }
    }
    if let Some(p) = procs.get(&pid) {
        let sid = p.stat.session;
        if sid > 1 && !t.chain.iter().any(|l| l.pid == sid) {
            t.session_leader = procs.get(&sid).map(|s| {
                let mut l = link(snap, s);
                (l.exe_trusted, l.exe_owner) = exe_trust(host, s.pid);
                l
            });
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_ids_from_cgroup_paths() {
        let id = "a".repeat(64);
        assert_eq!(
            docker_id(format!("0::/system.slice/docker-{id}.scope\n").as_bytes()),
            Some(id.clone())
        );
        assert_eq!(
            docker_id(format!("4:pids:/docker/{id}\n").as_bytes()),
            Some(id)
        );
        assert_eq!(docker_id(b"0::/user.slice/session-3.scope\n"), None);
    }

    #[test]
    fn env_values_are_escaped() {
        let env = vec![
            b"SSH_CONNECTION=203.0.113.7 5123 10.0.0.5 22".to_vec(),
            b"USER=r\x1bt".to_vec(),
        ];
        assert_eq!(
            env_value(&env, "SSH_CONNECTION").as_deref(),
            Some("203.0.113.7 5123 10.0.0.5 22")
        );
        assert_eq!(env_value(&env, "USER").as_deref(), Some("r\\x1bt"));
        assert_eq!(env_value(&env, "USE"), None);
    }
}
