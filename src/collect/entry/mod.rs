//! Doors a miner comes in through, judged from this machine's own files and
//! sockets (issue 13): the services gangs scan for (Redis, the Docker API,
//! the kubelet, YARN, SSH with root passwords), login records, and
//! directories root trusts that others can write. Nothing here connects to
//! anything; `detect::entry` turns it into `entry.*` findings, lineages and
//! a timeline.

pub mod docker;
pub mod include;
pub mod kubelet;
pub mod lineage;
pub mod logins;
pub mod redis;
pub mod sshd;
pub mod yarn;

use std::collections::HashSet;
use std::net::IpAddr;

use crate::collect::net::socket_owners;
use crate::collect::process::{split_nul, Process, SHELLS};
use crate::collect::Snapshot;
use crate::host::Host;

/// `st` of a listening TCP socket in /proc/net/tcp (include/net/tcp_states.h).
pub const TCP_LISTEN: u8 = 10;

/// A running service and the addresses it listens on.
#[derive(Debug, Clone)]
pub struct Service<C> {
    pub pid: i32,
    /// Executable path, escaped.
    pub exe: String,
    pub listen: Vec<(IpAddr, u16)>,
    pub conf: C,
}

impl<C> Service<C> {
    /// Listening on an address other than loopback.
    pub fn exposed(&self) -> Vec<(IpAddr, u16)> {
        self.listen
            .iter()
            .copied()
            .filter(|(a, _)| !a.is_loopback())
            .collect()
    }
}

/// A running Redis server: its configuration and working directory
/// (`CONFIG SET dir` changes the process's working directory: a Redis whose
/// cwd is a cron or `.ssh` directory has been used to write there).
#[derive(Debug, Clone)]
pub struct Redis {
    pub conf: Option<redis::RedisConf>,
    pub cwd: Option<String>,
}

/// A directory root trusts that others can write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeakDir {
    /// Escaped.
    pub path: String,
    pub uid: u32,
    pub mode: u32,
    /// `world-writable`, `owned by uid 1000`, `relative entry`.
    pub why: String,
    /// Where the directory is trusted from (`/etc/environment`, …).
    pub trusted_by: Vec<String>,
}

/// Everything collected about doors.
#[derive(Debug, Clone, Default)]
pub struct Doors {
    pub redis: Vec<Service<Redis>>,
    pub docker: Vec<Service<docker::DockerConf>>,
    pub kubelet: Vec<Service<kubelet::KubeletConf>>,
    pub yarn: Vec<Service<yarn::YarnConf>>,
    /// The SSH daemon (listener) and its configuration.
    pub sshd: Option<Service<sshd::SshdConfig>>,
    pub path_dirs: Vec<WeakDir>,
    pub cron_dirs: Vec<WeakDir>,
    /// Configuration lines that could not be read: `file:line:col: problem`.
    pub notes: Vec<String>,
}

/// What kind of service a process is, from its executable's name (set by
/// the package that installed it; a miner calling itself `redis-server` only
/// gets its non-existent configuration read).
fn kind(p: &Process) -> Option<&'static str> {
    p.exe.as_ref().ok()?;
    let name = lineage::program_name(p);
    Some(match name.as_bytes() {
        b"redis-server" => "redis",
        b"dockerd" => "docker",
        b"kubelet" => "kubelet",
        b"sshd" => "sshd",
        b"java"
            if p.cmdline.iter().any(|a| {
                a.as_slice() == b"org.apache.hadoop.yarn.server.resourcemanager.ResourceManager"
            }) =>
        {
            "yarn"
        }
        _ => return None,
    })
}

/// Reads a text file through the host, with the limit every config read uses.
fn read_text(host: &Host, path: &str) -> Option<String> {
    host.read_prefix(path, 1 << 20)
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Collects the doors of this machine.
pub fn collect(host: &Host, snap: &Snapshot) -> Doors {
    let mut d = Doors::default();
    let listening: Vec<&crate::collect::net::Socket> = snap
        .sockets
        .iter()
        .filter(|s| s.state == TCP_LISTEN)
        .collect();
    let services: Vec<(&Process, &'static str)> = snap
        .processes
        .values()
        .filter_map(|p| Some((p, kind(p)?)))
        .collect();
    let pids: Vec<i32> = services.iter().map(|(p, _)| p.pid).collect();
    let wanted: HashSet<u64> = listening.iter().map(|s| s.inode).collect();
    let owners = if pids.is_empty() || wanted.is_empty() {
        Default::default()
    } else {
        socket_owners(host, &pids, &wanted)
    };
    let listen_of = |pid: i32| -> Vec<(IpAddr, u16)> {
        let mut v: Vec<(IpAddr, u16)> = listening
            .iter()
            .filter(|s| owners.get(&s.inode).is_some_and(|o| o.contains(&pid)))
            .map(|s| (s.local, s.local_port))
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let exe_of = |p: &Process| {
        p.exe
            .as_ref()
            .map(|e| crate::escape::escape(&e.link))
            .unwrap_or_default()
    };
    let environ = |pid: i32| {
        host.read(format!("/proc/{pid}/environ"))
            .map(|b| split_nul(&b))
            .unwrap_or_default()
    };
    let mut sshd_listener = None;
    for (p, k) in services {
        let listen = listen_of(p.pid);
        fn svc<C>(p: &Process, exe: String, listen: &[(IpAddr, u16)], conf: C) -> Service<C> {
            Service {
                pid: p.pid,
                exe,
                listen: listen.to_vec(),
                conf,
            }
        }
        match k {
            "redis" => {
                let ports: Vec<u16> = listen.iter().map(|l| l.1).collect();
                let confs: Vec<redis::RedisConf> = redis::candidate_files(host, &p.cmdline)
                    .iter()
                    .filter_map(|f| redis::read(host, f))
                    .collect();
                // The file whose port the server listens on, else the first.
                let conf = confs
                    .iter()
                    .find(|c| ports.contains(&c.port))
                    .or(confs.first())
                    .cloned();
                if let Some(c) = &conf {
                    d.notes.extend(c.errors.iter().cloned());
                }
                let cwd = host
                    .read_link(format!("/proc/{}/cwd", p.pid))
                    .ok()
                    .map(|l| crate::escape::escape(&l));
                d.redis
                    .push(svc(p, exe_of(p), &listen, Redis { conf, cwd }));
            }
            "docker" => {
                let json = read_text(host, "/etc/docker/daemon.json");
                let c = docker::judge(
                    &p.cmdline,
                    json.as_deref().map(|t| ("/etc/docker/daemon.json", t)),
                );
                d.notes.extend(c.errors.iter().cloned());
                d.docker.push(svc(p, exe_of(p), &listen, c));
            }
            "kubelet" => {
                let path = kubelet::config_path(&p.cmdline);
                let text = path.as_deref().and_then(|f| read_text(host, f));
                let c = kubelet::judge(&p.cmdline, path.as_deref().zip(text.as_deref()));
                d.notes.extend(c.errors.iter().cloned());
                d.kubelet.push(svc(p, exe_of(p), &listen, c));
            }
            "yarn" => {
                let env = environ(p.pid);
                let dir = yarn::conf_dirs(&env).into_iter().find(|dir| {
                    host.exists(format!("{dir}/yarn-site.xml"))
                        || host.exists(format!("{dir}/core-site.xml"))
                });
                let (core, site) = match &dir {
                    Some(dir) => {
                        let cp = format!("{dir}/core-site.xml");
                        let yp = format!("{dir}/yarn-site.xml");
                        let core = read_text(host, &cp).map(|t| (cp, t));
                        let site = read_text(host, &yp).map(|t| (yp, t));
                        (core, site)
                    }
                    None => (None, None),
                };
                let c = yarn::judge(
                    core.as_ref().map(|(p, t)| (p.as_str(), t.as_str())),
                    site.as_ref().map(|(p, t)| (p.as_str(), t.as_str())),
                );
                d.notes.extend(c.errors.iter().cloned());
                d.yarn.push(svc(p, exe_of(p), &listen, c));
            }
            "sshd" if !listen.is_empty() && sshd_listener.is_none() => {
                sshd_listener = Some((p.pid, exe_of(p), listen));
            }
            _ => {}
        }
    }
    if let Some((pid, exe, listen)) = sshd_listener {
        if let Some(conf) = sshd::read(host) {
            d.notes.extend(conf.errors.iter().cloned());
            d.sshd = Some(Service {
                pid,
                exe,
                listen,
                conf,
            });
        }
    }
    d.path_dirs = weak_path_dirs(host, snap);
    d.cron_dirs = weak_dirs(
        host,
        CRON_PLACES
            .iter()
            .map(|p| (p.to_string(), vec!["cron".to_string()])),
    );
    d
}

/// Where cron reads jobs from: writable by another user, they are that
/// user's way to run anything as root.
pub const CRON_PLACES: &[&str] = &[
    "/etc/crontab",
    "/etc/cron.d",
    "/etc/cron.hourly",
    "/etc/cron.daily",
    "/etc/cron.weekly",
    "/etc/cron.monthly",
    "/var/spool/cron",
    "/var/spool/cron/crontabs",
];

/// Judges places: world-writable, or owned by someone other than root.
/// The sticky bit does not help: it stops deleting others' files, not
/// adding a new one.
fn weak_dirs(host: &Host, places: impl Iterator<Item = (String, Vec<String>)>) -> Vec<WeakDir> {
    let mut out = Vec::new();
    for (path, trusted_by) in places {
        if !path.starts_with('/') {
            out.push(WeakDir {
                path: crate::escape::escape_str(&path),
                uid: 0,
                mode: 0,
                why: "relative entry (resolved against whatever directory root is in)".into(),
                trusted_by,
            });
            continue;
        }
        let Ok(st) = host.stat(&path) else {
            continue;
        };
        let mode = st.st_mode & 0o7777;
        let why = if mode & 0o002 != 0 {
            "world-writable".to_string()
        } else if st.st_uid != 0 {
            format!("owned by uid {}", st.st_uid)
        } else {
            continue;
        };
        out.push(WeakDir {
            path: crate::escape::escape_str(&path),
            uid: st.st_uid,
            mode,
            why,
            trusted_by,
        });
    }
    out
}

/// Root shells whose environment is read for `PATH`.
const MAX_SHELLS: usize = 32;

/// The directories in root's `PATH`, with where each comes from: the files
/// that set it (`/etc/environment`, `/etc/login.defs` ENV_SUPATH, sudo's
/// `secure_path`, `/etc/crontab`, root's shell start-up files) and the
/// environments of root's running shells.
pub fn root_path_dirs(host: &Host, snap: &Snapshot) -> Vec<(String, Vec<String>)> {
    let mut found: Vec<(String, Vec<String>)> = Vec::new();
    let mut add = |value: &str, source: &str| {
        for dir in value.split(':') {
            let dir = dir.trim_matches(|c| c == '"' || c == '\'');
            if dir.contains('$') {
                continue; // `$PATH` itself, or a variable
            }
            let dir = if dir.is_empty() { "." } else { dir };
            let dir = if dir.len() > 1 {
                dir.trim_end_matches('/')
            } else {
                dir
            };
            match found.iter_mut().find(|(d, _)| d == dir) {
                Some((_, s)) if !s.iter().any(|x| x == source) => s.push(source.to_string()),
                Some(_) => {}
                None => found.push((dir.to_string(), vec![source.to_string()])),
            }
        }
    };
    let assignments = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| {
                let l = l.trim();
                let l = l.strip_prefix("export ").unwrap_or(l).trim();
                let v = l.strip_prefix("PATH=")?;
                Some(v.trim_matches(|c| c == '"' || c == '\'').to_string())
            })
            .collect()
    };
    for f in [
        "/etc/environment",
        "/etc/crontab",
        "/root/.profile",
        "/root/.bashrc",
        "/root/.bash_profile",
    ] {
        if let Some(t) = read_text(host, f) {
            for v in assignments(&t) {
                add(&v, f);
            }
        }
    }
    if let Some(t) = read_text(host, "/etc/login.defs") {
        for l in t.lines() {
            let mut w = l.split_whitespace();
            if w.next() == Some("ENV_SUPATH") {
                if let Some(v) = w.next().and_then(|v| v.strip_prefix("PATH=")) {
                    add(v, "/etc/login.defs ENV_SUPATH");
                }
            }
        }
    }
    if let Some(t) = read_text(host, "/etc/sudoers") {
        for l in t.lines() {
            if let Some(v) = l.trim().strip_prefix("Defaults").and_then(|r| {
                let r = r.trim_start();
                r.strip_prefix("secure_path=")
            }) {
                add(v.trim_matches('"'), "/etc/sudoers secure_path");
            }
        }
    }
    // Root's running shells show the PATH root really uses; a few suffice
    // (a machine can run thousands of identical shells).
    let shells = snap.processes.values().filter(|p| {
        p.uid == Some(0)
            && p.exe
                .as_ref()
                .is_ok_and(|e| SHELLS.contains(&String::from_utf8_lossy(e.file_name()).as_ref()))
    });
    for p in shells.take(MAX_SHELLS) {
        if let Ok(b) = host.read(format!("/proc/{}/environ", p.pid)) {
            if let Some(v) = lineage::env_value(&split_nul(&b), "PATH") {
                add(&v, &format!("environment of root's shell PID {}", p.pid));
            }
        }
    }
    found
}

fn weak_path_dirs(host: &Host, snap: &Snapshot) -> Vec<WeakDir> {
    weak_dirs(host, root_path_dirs(host, snap).into_iter())
}
