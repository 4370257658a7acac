//! How it got in (issue 13): the door each miner came through (its lineage),
//! doors still open (`entry.*` findings, with the config line to change), and
//! the case's timeline.
//!
//! Everything is judged from local evidence: configuration files, this
//! machine's sockets, process ancestry, environments, cgroups and login
//! records. Nothing connects anywhere.

use serde::Serialize;

use super::{Evidence, Finding, Judged, Remedy, Severity, Subject, Technique};
use crate::collect::entry::lineage::{Link, Trace};
use crate::collect::entry::logins::{self, Logins};
use crate::collect::entry::{Doors, Service};
use crate::collect::persistence::{PersistFile, PersistKind};

/// Failed logins that make a burst: this many within [`BURST_WINDOW`]
/// seconds. Scanners try a few passwords a second; a person mistyping never
/// reaches twenty in ten minutes.
pub const BURST_MIN: usize = 20;
pub const BURST_WINDOW: i64 = 600;
/// How far before the first event of a case logins are looked for.
pub const LOOKBACK: i64 = 7 * 86400;
/// Most events in a timeline (the newest are kept).
pub const MAX_EVENTS: usize = 24;

/// What a process in a chain is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The process the finding is about.
    Subject,
    Shell,
    Interpreter,
    Downloader,
    /// Starts another program and gets out of the way (nohup, sudo, …).
    Launcher,
    /// PID 1 or a user's service manager.
    Init,
    /// The first process that is none of the above: the likely door.
    Door,
    /// Above the door.
    Above,
}

const SHELLS: &[&str] = &[
    "sh", "bash", "dash", "ash", "zsh", "ksh", "mksh", "fish", "csh", "tcsh", "busybox",
];
const INTERPRETERS: &[&str] = &[
    "python", "python2", "python3", "perl", "ruby", "node", "nodejs", "lua", "php", "tclsh", "awk",
    "gawk", "mawk",
];
const DOWNLOADERS: &[&str] = &[
    "curl", "wget", "tftp", "ftp", "nc", "ncat", "netcat", "socat",
];
const LAUNCHERS: &[&str] = &[
    "nohup",
    "setsid",
    "env",
    "timeout",
    "sudo",
    "su",
    "runuser",
    "xargs",
    "flock",
    "stdbuf",
    "nice",
    "ionice",
    "chrt",
    "taskset",
    "start-stop-daemon",
    "screen",
    "tmux",
    "script",
];

fn is_in(list: &[&str], name: &str) -> bool {
    list.contains(&name)
        || list.iter().any(|l| {
            name.strip_prefix(l).is_some_and(|v| {
                !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            })
        })
}

/// The role of an ancestor, from its executable's name.
pub fn role(l: &Link) -> Role {
    let n = l.exe_base.as_str();
    if l.pid == 1 || (n == "systemd" && l.argv.iter().any(|a| a == "--user")) {
        Role::Init
    } else if is_in(SHELLS, n) {
        Role::Shell
    } else if is_in(INTERPRETERS, n) {
        Role::Interpreter
    } else if is_in(DOWNLOADERS, n) {
        Role::Downloader
    } else if is_in(LAUNCHERS, n) {
        Role::Launcher
    } else {
        Role::Door
    }
}

/// A door: how the process likely came in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Door {
    /// `redis`, `java-app`, `web-server`, `postgres`, `container`, `ssh`,
    /// `cron`, `kubelet`, `service`, `process`, `unknown`.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// One line, escaped.
    pub summary: String,
    pub technique: Technique,
    /// How the door was found (`ancestor`, `cgroup`, `environment`, `session`).
    pub found_by: &'static str,
}

/// One process of a lineage, for the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChainLink {
    pub pid: i32,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    pub role: Role,
}

/// Where one process came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Origin {
    pub pid: i32,
    /// The findings about this process (rules).
    pub rules: Vec<String>,
    pub chain: Vec<ChainLink>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub door: Option<Door>,
    /// What else survives: environment, cgroup, session (escaped lines).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub context: Vec<String>,
}

/// One event of the case.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Seconds since the epoch.
    pub epoch: i64,
    /// RFC 3339, UTC.
    pub time: String,
    /// What happened, escaped.
    pub what: String,
    /// Where it was read, and how to check it.
    pub source: String,
    /// Order within one second: a login, then a process start, then what
    /// the process wrote (times have a resolution of one second).
    #[serde(skip)]
    pub rank: u8,
}

/// [`Event::rank`]s.
pub const RANK_LOGIN: u8 = 0;
pub const RANK_START: u8 = 1;
pub const RANK_FILE: u8 = 2;

impl Event {
    pub fn new(epoch: i64, rank: u8, what: String, source: String) -> Event {
        Event {
            epoch,
            time: rfc3339(epoch),
            what,
            source,
            rank,
        }
    }
}

/// The answer to "how did it get here".
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EntryReport {
    pub origins: Vec<Origin>,
    pub timeline: Vec<Event>,
}

impl EntryReport {
    pub fn is_empty(&self) -> bool {
        self.origins.is_empty() && self.timeline.is_empty()
    }
}

/// The Java application a `java` process runs, from its command line.
pub fn java_app(argv: &[String]) -> String {
    let has = |s: &str| argv.iter().any(|a| a.contains(s));
    if has("org.apache.catalina.startup.Bootstrap") || has("-Dcatalina.base") {
        "Tomcat".into()
    } else if has("weblogic.Server") || has("-Dweblogic.") {
        "WebLogic".into()
    } else if has("jenkins.war") || has("-DJENKINS_HOME") {
        "Jenkins".into()
    } else if has("confluence") || has("com.atlassian.confluence") {
        "Confluence".into()
    } else if has("org.elasticsearch.bootstrap") {
        "Elasticsearch".into()
    } else if has("org.apache.hadoop.yarn") {
        "Hadoop YARN".into()
    } else if has("org.apache.activemq") {
        "ActiveMQ".into()
    } else if let Some(i) = argv.iter().position(|a| a == "-jar") {
        let jar = argv.get(i + 1).map(String::as_str).unwrap_or("?");
        let jar = jar.rsplit('/').next().unwrap_or(jar);
        format!("the Java application {}", crate::escape::escape_str(jar))
    } else {
        let main = argv
            .iter()
            .skip(1)
            .find(|a| !a.starts_with('-') && a.contains('.') && !a.contains('/'));
        match main {
            Some(m) => format!("the Java application {}", crate::escape::escape_str(m)),
            None => "a Java application".into(),
        }
    }
}

/// `the container docker 0123456789ab (web), image nginx:1.25`.
fn container_what(t: &Trace) -> String {
    match &t.container {
        Some(c) => format!(
            "the container {}{}{}",
            c.label,
            c.name
                .as_ref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default(),
            c.image
                .as_ref()
                .map(|i| format!(", image {i}"))
                .unwrap_or_default()
        ),
        None => "a container".into(),
    }
}

/// The source address `SSH_CONNECTION` claims: the process's own
/// environment, which its owner can set to anything.
fn ssh_claim(t: &Trace) -> Option<String> {
    t.ssh_connection
        .as_deref()
        .and_then(|c| c.split_whitespace().next())
        .map(str::to_string)
}

/// Seconds around a process's start within which a login record
/// corroborates it (a login takes a moment before its shell starts
/// anything; the record may also be written a moment after).
const LOGIN_SLACK: i64 = 60;

/// The SSH source address of a process, when a source its user cannot
/// write corroborates it: the logind session it runs in (root's
/// /run/systemd/sessions), or a login record sshd wrote (wtmp, not a syslog
/// line) for its real user from that address before it started. The
/// address and how it was verified; `None` when only the environment claims
/// it.
fn ssh_verified(
    t: &Trace,
    users: &crate::collect::users::Users,
    logins: Option<&Logins>,
) -> Option<(String, String)> {
    let ip = ssh_claim(t)?;
    if let Some(s) = &t.session {
        if s.remote_host.as_deref() == Some(ip.as_str()) {
            return Some((ip, format!("its logind session {} ({})", s.id, s.file)));
        }
    }
    let subject = t.chain.first()?;
    let user = subject.uid.map(|u| users.name(u))?;
    let start = subject.start?;
    let r = logins?.records.iter().rev().find(|r| {
        r.ok && !r.forgeable()
            && r.from == ip
            && r.user == user
            && r.time <= start + LOGIN_SLACK
            && r.time >= start - LOOKBACK
    })?;
    Some((ip, format!("a login record sshd wrote ({})", r.source())))
}

/// The process's real user, never its environment's `USER`.
fn real_user(t: &Trace, users: &crate::collect::users::Users) -> String {
    t.chain.first().map_or("?".into(), |s| user_of(s, users))
}

fn user_of(l: &Link, users: &crate::collect::users::Users) -> String {
    l.uid
        .map_or_else(|| "?".into(), |u| crate::escape::escape_str(&users.name(u)))
}

/// A door from a process name (the first ancestor that is not a shell,
/// interpreter, downloader or launcher).
fn door_from_ancestor(
    l: &Link,
    t: &Trace,
    users: &crate::collect::users::Users,
    logins: Option<&Logins>,
) -> Door {
    let n = l.exe_base.as_str();
    let d = |kind, summary: String, tech: &str| Door {
        kind,
        pid: Some(l.pid),
        summary,
        technique: Technique::new(tech),
        found_by: "ancestor",
    };
    match n {
        "redis-server" => d(
            "redis",
            format!(
                "Redis (redis-server, PID {}): a command from the network ran it; unauthenticated Redis is the classic door (CONFIG SET dir + SAVE, or MODULE LOAD)",
                l.pid
            ),
            "T1190",
        ),
        "java" => {
            let app = java_app(&l.argv);
            d(
                "java-app",
                format!("{app} (java, PID {}): an exploited web application ran it", l.pid),
                "T1190",
            )
        }
        n if n.starts_with("php-fpm")
            || matches!(n, "apache2" | "httpd" | "nginx" | "lighttpd" | "caddy" | "uwsgi" | "gunicorn") =>
        {
            d(
                "web-server",
                format!(
                    "the web server {} (PID {}, user {}): a web shell or an exploited web application ran it",
                    crate::escape::escape_str(n),
                    l.pid,
                    user_of(l, users)
                ),
                "T1505.003",
            )
        }
        "postgres" | "postmaster" => d(
            "postgres",
            format!(
                "PostgreSQL (PID {}): a database login ran a program (COPY … FROM PROGRAM), usually through a weak or default password",
                l.pid
            ),
            "T1190",
        ),
        "mysqld" | "mariadbd" => d(
            "mysql",
            format!("MySQL/MariaDB (PID {}): a user-defined function ran a program", l.pid),
            "T1190",
        ),
        n if n.starts_with("containerd-shim")
            || matches!(n, "dockerd" | "containerd" | "runc" | "crun" | "conmon") =>
        {
            d(
                "container",
                format!(
                    "{}, started through {} (PID {}): a malicious image, or an exposed Docker API or kubelet",
                    container_what(t),
                    crate::escape::escape_str(n),
                    l.pid
                ),
                "T1610",
            )
        }
        "sshd" | "sshd-session" => {
            let from = match (ssh_verified(t, users, logins), ssh_claim(t)) {
                (Some((ip, how)), _) => format!("from {ip} (verified by {how})"),
                (None, Some(ip)) => format!(
                    "from an address not verified ({ip} is only claimed by its own environment, which its owner can set)"
                ),
                (None, None) => "from an unknown address".into(),
            };
            d(
                "ssh",
                format!(
                    "an SSH login as {} {from} (sshd, PID {})",
                    real_user(t, users),
                    l.pid
                ),
                "T1078",
            )
        }
        "cron" | "crond" | "atd" | "anacron" => d(
            "cron",
            format!(
                "started by {} (PID {}): persistence, not the door; the first entry came earlier (see the timeline)",
                crate::escape::escape_str(n),
                l.pid
            ),
            "T1053.003",
        ),
        "kubelet" => d(
            "kubelet",
            format!("the kubelet (PID {}): a command run in a pod through its API", l.pid),
            "T1609",
        ),
        _ => d(
            "process",
            format!(
                "started by {} (PID {}, {})",
                l.name,
                l.pid,
                l.exe.as_deref().unwrap_or("executable unreadable")
            ),
            "T1190",
        ),
    }
}

/// The door, from a trace: the first real ancestor, or, for a process
/// re-parented to PID 1, what survives (container, environment, unit,
/// session).
pub fn door(
    t: &Trace,
    users: &crate::collect::users::Users,
    logins: Option<&Logins>,
) -> Option<Door> {
    // An ancestor names a door only when its name can be believed: its
    // executable is a file only root can change. A user's own program
    // named `java` or `sshd` is passed over like a shell.
    let first_real = t.chain.iter().skip(1).find(|l| match role(l) {
        Role::Shell | Role::Interpreter | Role::Downloader | Role::Launcher => false,
        Role::Door => l.exe_trusted,
        _ => true,
    });
    if let Some(l) = first_real.filter(|l| role(l) == Role::Door) {
        return Some(door_from_ancestor(l, t, users, logins));
    }
    // Orphaned (or started by init): what still tells.
    let ctx = |kind, summary: String, tech: &str, found_by| Door {
        kind,
        pid: None,
        summary,
        technique: Technique::new(tech),
        found_by,
    };
    if t.container.is_some() {
        return Some(ctx(
            "container",
            format!(
                "{} (from its cgroup): a malicious image, or an exposed Docker API or kubelet",
                container_what(t)
            ),
            "T1610",
            "cgroup",
        ));
    }
    // SSH_CONNECTION survives re-parenting, but its owner can write it:
    // it names the door only when a source the user cannot write agrees.
    if let Some((from, how)) = ssh_verified(t, users, logins) {
        return Some(ctx(
            "ssh",
            format!(
                "an SSH login as {} from {from} (SSH_CONNECTION in its environment, kept after it left the session, verified by {how})",
                real_user(t, users)
            ),
            "T1078",
            "environment",
        ));
    }
    if let Some(s) = &t.session {
        return Some(ctx(
            if s.service.as_deref() == Some("sshd") {
                "ssh"
            } else {
                "session"
            },
            format!(
                "login session {} of {} from {} (service {}; {})",
                s.id,
                s.user.as_deref().unwrap_or("?"),
                s.remote_host.as_deref().unwrap_or("a local terminal"),
                s.service.as_deref().unwrap_or("?"),
                s.file
            ),
            "T1078",
            "session",
        ));
    }
    if let Some(u) = &t.unit {
        let base = u.trim_end_matches(".service");
        let (kind, tech, what) = match base {
            "redis" | "redis-server" => (
                "redis",
                "T1190",
                "Redis's service: a command from the network ran it",
            ),
            "cron" | "crond" => (
                "cron",
                "T1053.003",
                "cron's service: persistence, not the door",
            ),
            "ssh" | "sshd" => ("ssh", "T1078", "the SSH daemon's service"),
            "docker" | "containerd" => ("container", "T1610", "the container engine's service"),
            "postgresql" => ("postgres", "T1190", "PostgreSQL's service"),
            b if b.starts_with("php") && b.contains("fpm")
                || matches!(
                    b,
                    "apache2" | "httpd" | "nginx" | "tomcat" | "tomcat9" | "tomcat10" | "jenkins"
                ) =>
            {
                (
                    "web-server",
                    "T1505.003",
                    "a web service: a web shell or an exploited application",
                )
            }
            _ if u.ends_with(".service") => ("service", "T1543.002", "a system service"),
            _ => return None,
        };
        return Some(ctx(
            kind,
            format!("started inside {u} ({what}); its parent is gone (cgroup membership survives re-parenting)"),
            tech,
            "cgroup",
        ));
    }
    if let Some(l) = &t.session_leader {
        if role(l) == Role::Door && l.exe_trusted {
            let mut d = door_from_ancestor(l, t, users, logins);
            d.found_by = "session";
            return Some(d);
        }
    }
    None
}

/// Lineage and context lines for a trace.
pub fn origin(
    t: &Trace,
    rules: Vec<String>,
    users: &crate::collect::users::Users,
    logins: Option<&Logins>,
) -> Origin {
    let door = door(t, users, logins);
    let door_pid = door.as_ref().and_then(|d| d.pid);
    let mut past_door = false;
    let chain = t
        .chain
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let r = if i == 0 {
                Role::Subject
            } else if past_door {
                Role::Above
            } else if Some(l.pid) == door_pid {
                past_door = true;
                Role::Door
            } else {
                match role(l) {
                    Role::Door if !l.exe_trusted && door_pid.is_some() => Role::Launcher,
                    Role::Door => Role::Above,
                    r => r,
                }
            };
            ChainLink {
                pid: l.pid,
                name: l.name.clone(),
                exe: l.exe.clone(),
                role: r,
            }
        })
        .collect();
    let mut context = Vec::new();
    if let Some(c) = &t.ssh_connection {
        let verified = ssh_verified(t, users, logins)
            .map(|(_, how)| format!("verified by {how}"))
            .unwrap_or_else(|| {
                "unverified: no login session or login record sshd wrote agrees".into()
            });
        context.push(format!(
            "SSH_CONNECTION={c} claimed by its own environment (its owner can set it; {verified})"
        ));
    }
    if let Some(u) = &t.env_user {
        let real = real_user(t, users);
        if *u != real {
            context.push(format!(
                "USER={u} claimed by its own environment; it runs as {real}"
            ));
        }
    }
    if let Some(u) = &t.sudo_user {
        context.push(format!(
            "SUDO_USER={u} claimed by its own environment (its owner can set it)"
        ));
    }
    for l in t.chain.iter().skip(1) {
        if role(l) == Role::Door && !l.exe_trusted {
            context.push(format!(
                "PID {} {} runs {}, {}: its name says nothing of what program it is (not taken as the door)",
                l.pid,
                l.name,
                l.exe.as_deref().unwrap_or("an unreadable executable"),
                match l.exe_owner {
                    Some(u) if u != 0 => format!("a file of uid {u}, not a program only root can change"),
                    Some(_) => "a file others can change".into(),
                    None => "which could not be checked".into(),
                }
            ));
        }
    }
    if let Some(u) = &t.unit {
        context.push(format!("cgroup unit {u}"));
    }
    if t.container.is_some() {
        context.push(container_what(t));
    }
    if let Some(s) = &t.session {
        context.push(format!(
            "login session {} ({}): user {}, from {}, service {}",
            s.id,
            s.file,
            s.user.as_deref().unwrap_or("?"),
            s.remote_host.as_deref().unwrap_or("-"),
            s.service.as_deref().unwrap_or("?")
        ));
    }
    if let Some(l) = &t.session_leader {
        context.push(format!(
            "session leader PID {} {} ({})",
            l.pid, l.name, l.cmdline
        ));
    }
    Origin {
        pid: t.chain.first().map_or(0, |l| l.pid),
        rules,
        chain,
        door,
        context,
    }
}

/// The lineage as one evidence line: `4711 kdevtmpfsi ← 4700 sh ← 1200 java`.
pub fn chain_line(o: &Origin) -> String {
    o.chain
        .iter()
        .map(|l| format!("{} {}", l.pid, l.name))
        .collect::<Vec<_>>()
        .join(" ← ")
}

/// Adds the lineage and door to a finding's evidence.
pub fn annotate(f: &mut Finding, o: &Origin) {
    f.evidence.push(Evidence::new("lineage", chain_line(o)));
    match &o.door {
        Some(d) => f.evidence.push(Evidence::new("came in through", d.summary.clone())),
        None => f.evidence.push(Evidence::new(
            "came in through",
            "not known: re-parented to PID 1 with no SSH environment, login session, container or service cgroup left; see the timeline",
        )),
    }
    let pids: Vec<String> = o.chain.iter().map(|l| l.pid.to_string()).collect();
    f.evidence.push(Evidence::new(
        "check lineage",
        format!(
            "ps -o pid,ppid,user,lstart,args -p {}; tr '\\0' '\\n' < /proc/{}/environ | grep -E '^(SSH_|SUDO_USER|USER)'; cat /proc/{}/cgroup",
            pids.join(","),
            o.pid,
            o.pid
        ),
    ));
}

fn finding(
    rule: &str,
    severity: Severity,
    title: String,
    subject: Subject,
    tech: &[&str],
    evidence: Vec<Evidence>,
    harden: String,
) -> Finding {
    let mut evidence = evidence;
    evidence.push(Evidence::new("harden", harden));
    Finding {
        rule: rule.into(),
        severity,
        verdict: None,
        title,
        subject,
        techniques: tech.iter().map(|t| Technique::new(t)).collect(),
        signals: Vec::new(),
        score: None,
        evidence,
        remedies: Vec::new(),
    }
}

fn listen_str(l: &[(std::net::IpAddr, u16)]) -> String {
    l.iter()
        .map(|(a, p)| match a {
            std::net::IpAddr::V6(a) => format!("[{a}]:{p}"),
            std::net::IpAddr::V4(a) => format!("{a}:{p}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn svc_subject<C>(s: &Service<C>, name: &str) -> Subject {
    Subject {
        pid: Some(s.pid),
        name: Some(name.into()),
        path: Some(s.exe.clone()),
    }
}

/// Whether a directory is where cron or sshd read from (a Redis whose
/// working directory is one of these has been told to write there).
fn is_attack_dir(d: &str) -> bool {
    d.starts_with("/var/spool/cron")
        || d.starts_with("/etc/cron")
        || d.ends_with("/.ssh")
        || d == "/etc/init.d"
        || d.starts_with("/etc/systemd")
        || d.starts_with("/etc/profile.d")
}

/// The RDB file signature: `REDIS` and a four-digit format version
/// (rdb.h `RDB_VERSION`; `REDIS0009`…`REDIS0012` in Redis 5–7.4).
pub fn rdb_header(content: &[u8]) -> Option<&[u8]> {
    let h = content.get(..9)?;
    (h.starts_with(b"REDIS") && h[5..].iter().all(u8::is_ascii_digit)).then_some(h)
}

/// `entry.*` findings for doors left open.
pub fn findings(
    doors: &Doors,
    persist: &[PersistFile],
    logins: Option<&Logins>,
    users: &crate::collect::users::Users,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for r in &doors.redis {
        let exposed = r.exposed();
        let conf = r.conf.conf.as_ref();
        if let Some(cwd) = r.conf.cwd.as_deref().filter(|c| is_attack_dir(c)) {
            out.push(finding(
                "entry.redis-write",
                Severity::Critical,
                format!("Redis (PID {}) has been told to save its database into {cwd}: the Redis-to-cron / authorized_keys attack", r.pid),
                svc_subject(r, "redis-server"),
                &["T1190", "T1053.003"],
                vec![
                    Evidence::new("working directory", format!("{cwd} (CONFIG SET dir changes it; Redis's own is {})", conf.and_then(|c| c.dir.as_ref()).map_or("/var/lib/redis".into(), |d| d.value.clone()))),
                    Evidence::new("check", format!(
                        "ls -l /proc/{}/cwd; redis-cli -h {} -p {} CONFIG GET dir",
                        r.pid,
                        r.listen.first().map_or("127.0.0.1".into(), |l| l.0.to_string()),
                        r.listen.first().map_or(6379, |l| l.1)
                    )),
                ],
                "restart redis-server (its dir returns to the configured one), then close the door below".into(),
            ));
        }
        let Some(c) = conf else { continue };
        if exposed.is_empty() || c.password.is_some() || c.protected_mode.value != "no" {
            continue;
        }
        let pm = c
            .protected_mode
            .source
            .as_ref()
            .map_or("default".into(), |s| s.to_string());
        out.push(finding(
            "entry.redis",
            Severity::Critical,
            format!(
                "Redis (PID {}) takes commands from anyone on {}: no password, protected mode off",
                r.pid,
                listen_str(&exposed)
            ),
            svc_subject(r, "redis-server"),
            &["T1190"],
            vec![
                Evidence::new("listening", format!("{} (the kernel's socket table)", listen_str(&r.listen))),
                Evidence::new("protected-mode", format!("no ({pm})")),
                Evidence::new("password", format!("none: no requirepass and no password for the default user in {}", c.file)),
                Evidence::new("bind", c.bind.as_ref().map_or("not set (every interface)".into(), |b| format!("{} ({})", b.value, b.source.as_ref().map_or("default".into(), |s| s.to_string())))),
                Evidence::new("check", format!("ss -ltnp 'sport = :{}'; grep -nE '^(bind|protected-mode|requirepass|user) ' {}", c.port, c.file)),
            ],
            format!("in {}: `bind 127.0.0.1 -::1`, `protected-mode yes`, `requirepass <a long random secret>` (and `rename-command CONFIG \"\"`); then restart redis-server. The running server may also have been changed with CONFIG SET.", c.file),
        ));
    }
    for f in persist.iter().filter(|f| {
        matches!(
            f.kind,
            PersistKind::Crontab | PersistKind::CronScript | PersistKind::SshKeys
        )
    }) {
        let Some(h) = rdb_header(&f.content) else {
            continue;
        };
        let path = crate::escape::escape(&f.path);
        let what = if f.kind == PersistKind::SshKeys {
            "authorized_keys file"
        } else {
            "crontab"
        };
        let mut fi = finding(
            "entry.redis-write",
            Severity::Critical,
            format!("the {what} {path} is a Redis database dump: written by an unauthenticated Redis (CONFIG SET dir + SAVE)"),
            Subject { pid: None, name: None, path: Some(path.clone()) },
            &["T1190", if f.kind == PersistKind::SshKeys { "T1098.004" } else { "T1053.003" }],
            vec![
                Evidence::new("header", format!("{} (the RDB file signature, first 9 bytes)", crate::escape::escape(h))),
                Evidence::new("file", f.meta.describe()),
                Evidence::new("check", format!("head -c 9 {path}; echo; strings {path}")),
            ],
            "close the Redis door (entry.redis); the whole file is the attacker's: it is quarantined".into(),
        );
        fi.remedies.push(Remedy::QuarantineFile {
            path: crate::host::BytePath::new(f.path.clone()),
            id: None,
            direct: true,
            judged: Judged::Content(f.sha256.clone().unwrap_or_default()),
        });
        out.push(fi);
    }
    for d in &doors.docker {
        let tls = d.conf.tlsverify.as_ref().is_some_and(|t| t.0);
        if tls {
            continue;
        }
        for h in &d.conf.tcp_hosts {
            let (sev, reach) = if h.loopback {
                (
                    Severity::High,
                    "every local user (and anything that can make this machine connect to itself)",
                )
            } else {
                (Severity::Critical, "anyone who reaches it")
            };
            out.push(finding(
                "entry.docker",
                sev,
                format!("the Docker API is served on {} without TLS client verification: {reach} is root here", h.uri),
                svc_subject(d, "dockerd"),
                &["T1610", "T1190"],
                vec![
                    Evidence::new("address", format!("{} ({})", h.uri, h.source)),
                    Evidence::new("tlsverify", d.conf.tlsverify.as_ref().map_or("not set".into(), |t| format!("{} ({})", t.0, t.1))),
                    Evidence::new("listening", if d.listen.is_empty() { "no TCP socket seen".into() } else { listen_str(&d.listen) }),
                    Evidence::new("check", format!("tr '\\0' ' ' < /proc/{}/cmdline; cat /etc/docker/daemon.json", d.pid)),
                ],
                format!("remove {} from {} (keep `unix:///var/run/docker.sock`), or set `\"tlsverify\": true` with tlscacert/tlscert/tlskey in /etc/docker/daemon.json; restart docker", h.uri, h.source),
            ));
        }
    }
    for k in &doors.kubelet {
        let c = &k.conf;
        if c.anonymous.value
            && c.authorization_mode
                .value
                .eq_ignore_ascii_case("AlwaysAllow")
        {
            out.push(finding(
                "entry.kubelet",
                Severity::Critical,
                format!("the kubelet (PID {}) lets anonymous requests run commands in every pod (anonymous auth, AlwaysAllow)", k.pid),
                svc_subject(k, "kubelet"),
                &["T1609", "T1190"],
                vec![
                    Evidence::new("anonymous auth", format!("true ({})", c.anonymous.source)),
                    Evidence::new("authorization mode", format!("{} ({})", c.authorization_mode.value, c.authorization_mode.source)),
                    Evidence::new("listening", listen_str(&k.listen)),
                    Evidence::new("check", format!("tr '\\0' ' ' < /proc/{}/cmdline{}", k.pid, c.config_file.as_ref().map(|f| format!("; grep -A2 -E 'anonymous|authorization' {}", crate::escape::escape_str(f))).unwrap_or_default())),
                ],
                format!("set `authentication.anonymous.enabled: false` and `authorization.mode: Webhook` in {} (or --anonymous-auth=false --authorization-mode=Webhook); restart the kubelet", c.config_file.as_deref().map_or("the kubelet config".into(), crate::escape::escape_str)),
            ));
        }
        if c.read_only_port.value != 0 {
            out.push(finding(
                "entry.kubelet",
                Severity::Medium,
                format!("the kubelet (PID {}) serves its unauthenticated read-only port {}: pods, their environments and secrets passed as variables are readable by anyone", k.pid, c.read_only_port.value),
                svc_subject(k, "kubelet"),
                &["T1613"],
                vec![
                    Evidence::new("read-only port", format!("{} ({})", c.read_only_port.value, c.read_only_port.source)),
                    Evidence::new("check", format!("tr '\\0' ' ' < /proc/{}/cmdline", k.pid)),
                ],
                "set `readOnlyPort: 0` (or --read-only-port=0); restart the kubelet".into(),
            ));
        }
    }
    for y in &doors.yarn {
        let c = &y.conf;
        let host_part = c
            .webapp
            .0
            .rsplit_once(':')
            .map_or(c.webapp.0.as_str(), |(h, _)| h);
        let loopback = host_part == "localhost"
            || host_part
                .parse::<std::net::IpAddr>()
                .is_ok_and(|a| a.is_loopback());
        if c.auth.0 != "simple" || (loopback && y.exposed().is_empty()) {
            continue;
        }
        out.push(finding(
            "entry.yarn",
            Severity::Critical,
            format!("the YARN ResourceManager (PID {}) accepts applications from anyone on {}: simple authentication", y.pid, c.webapp.0),
            svc_subject(y, "ResourceManager"),
            &["T1190"],
            vec![
                Evidence::new("authentication", format!("{} ({})", c.auth.0, c.auth.1)),
                Evidence::new("web address", format!("{} ({})", c.webapp.0, c.webapp.1)),
                Evidence::new("listening", listen_str(&y.listen)),
            ],
            "set `hadoop.security.authentication` to `kerberos` in core-site.xml, or bind `yarn.resourcemanager.webapp.address` to a private address behind a firewall; restart the ResourceManager".into(),
        ));
    }
    if let Some(s) = &doors.sshd {
        let bursts = logins
            .map(|l| logins::bursts(&l.records, BURST_WINDOW, BURST_MIN))
            .unwrap_or_default();
        let storm = bursts.last().map(|b| {
            format!(
                "{} failed logins between {} and {} (most from {})",
                b.failures,
                rfc3339(b.start),
                rfc3339(b.end),
                b.sources()
            )
        });
        let root_ok: Vec<String> = logins
            .map(|l| {
                l.records
                    .iter()
                    .filter(|r| {
                        r.ok && r.user == "root" && r.method.as_deref() != Some("publickey")
                    })
                    .rev()
                    .take(3)
                    .map(|r| format!("{} from {} ({})", rfc3339(r.time), r.from, r.source()))
                    .collect()
            })
            .unwrap_or_default();
        let doors_rp = s.conf.root_password_logins();
        for (when, prl, pa) in &doors_rp {
            let src = |v: &crate::collect::entry::sshd::Value| {
                v.source
                    .as_ref()
                    .map_or("default".into(), |s| s.to_string())
            };
            let mut ev = vec![
                Evidence::new("PermitRootLogin", format!("yes ({})", src(prl))),
                Evidence::new("PasswordAuthentication", format!("yes ({})", src(pa))),
                Evidence::new("listening", listen_str(&s.listen)),
            ];
            if let Some(w) = when {
                ev.push(Evidence::new(
                    "for connections matching",
                    format!("Match {w}"),
                ));
            }
            if let Some(st) = &storm {
                ev.push(Evidence::new("password guessing", st.clone()));
            }
            if !root_ok.is_empty() {
                ev.push(Evidence::new(
                    "root logins with a password",
                    root_ok.join("; "),
                ));
            }
            ev.push(Evidence::new(
                "check",
                "sshd -T | grep -Ei '^(permitrootlogin|passwordauthentication)'; lastb | head"
                    .to_string(),
            ));
            let file = prl
                .source
                .as_ref()
                .map_or("/etc/ssh/sshd_config".into(), |s| s.file.clone());
            out.push(finding(
                "entry.ssh",
                if s.exposed().is_empty() { Severity::Medium } else { Severity::High },
                format!(
                    "SSH lets root log in with a password{}{}",
                    when.as_ref().map(|w| format!(" (Match {w})")).unwrap_or_default(),
                    if storm.is_some() { ", under a password-guessing storm" } else { "" }
                ),
                svc_subject(s, "sshd"),
                &["T1110.001", "T1021.004"],
                ev,
                format!("set `PermitRootLogin prohibit-password` (or `no`) and `PasswordAuthentication no` in {file}; reload sshd; change root's password"),
            ));
        }
        if doors_rp.is_empty() && s.conf.password_authentication.value == "yes" {
            if let Some(st) = &storm {
                out.push(finding(
                    "entry.ssh",
                    Severity::Medium,
                    "SSH accepts passwords under a password-guessing storm".into(),
                    svc_subject(s, "sshd"),
                    &["T1110.001"],
                    vec![
                        Evidence::new("PasswordAuthentication", format!("yes ({})", s.conf.password_authentication.source.as_ref().map_or("default".into(), |s| s.to_string()))),
                        Evidence::new("password guessing", st.clone()),
                        Evidence::new("check", "lastb | head; grep 'Failed password' /var/log/auth.log | tail"),
                    ],
                    "set `PasswordAuthentication no` in /etc/ssh/sshd_config (keys only), or rate-limit with fail2ban; reload sshd".into(),
                ));
            }
        }
    }
    for d in &doors.path_dirs {
        out.push(finding(
            "entry.path",
            Severity::High,
            format!(
                "{} is in root's PATH and is {}: anyone can plant a command root will run",
                d.path, d.why
            ),
            Subject {
                pid: None,
                name: None,
                path: Some(d.path.clone()),
            },
            &["T1574.007"],
            vec![
                Evidence::new(
                    "directory",
                    format!("owner uid {}, mode {:o}", d.uid, d.mode),
                ),
                Evidence::new("in PATH from", d.trusted_by.join(", ")),
                Evidence::new("check", format!("ls -ld {}", d.path)),
            ],
            format!(
                "remove {} from root's PATH in {}, or `chown root: {} && chmod go-w {}`",
                d.path,
                d.trusted_by.join(", "),
                d.path,
                d.path
            ),
        ));
    }
    for d in &doors.cron_dirs {
        out.push(finding(
            "entry.cron-dir",
            Severity::High,
            format!("{} is {}: anyone who can write it can schedule commands as root", d.path, d.why),
            Subject { pid: None, name: None, path: Some(d.path.clone()) },
            &["T1053.003"],
            vec![
                Evidence::new("place", format!("owner uid {}, mode {:o}", d.uid, d.mode)),
                Evidence::new("check", format!("ls -ld {}", d.path)),
            ],
            format!("`chown root: {p} && chmod go-w {p}` (Debian's /var/spool/cron/crontabs is root:crontab 1730)", p = d.path),
        ));
    }
    let _ = users;
    out
}

/// RFC 3339 in UTC, seconds.
pub fn rfc3339(t: i64) -> String {
    let st = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64);
    humantime::format_rfc3339_seconds(st).to_string()
}

/// Builds the timeline of a case: the findings' files and processes, the
/// doors, and the logins before the first of them.
pub fn timeline(
    origins: &[Origin],
    traces: &[Trace],
    files: &[(String, crate::host::FileMeta, &'static str)],
    logins: Option<&Logins>,
    doors: &[Event],
) -> Vec<Event> {
    let mut ev: Vec<Event> = Vec::new();
    fn push(ev: &mut Vec<Event>, e: Event) {
        if e.epoch > 0 && !ev.iter().any(|x| x.epoch == e.epoch && x.what == e.what) {
            ev.push(e);
        }
    }
    let mut subject_starts = Vec::new();
    for (o, t) in origins.iter().zip(traces) {
        for l in &t.chain {
            if l.pid == o.pid {
                subject_starts.extend(l.start);
            }
            let interesting = l.pid == o.pid || o.door.as_ref().and_then(|d| d.pid) == Some(l.pid);
            if let (true, Some(s)) = (interesting, l.start) {
                push(
                    &mut ev,
                    Event::new(
                        s,
                        RANK_START,
                        format!(
                            "PID {} {} started{}",
                            l.pid,
                            l.name,
                            if l.pid == o.pid { "" } else { " (the door)" }
                        ),
                        format!(
                            "process start time (/proc/{}/stat field 22; ps -o lstart= -p {})",
                            l.pid, l.pid
                        ),
                    ),
                );
            }
        }
    }
    for (path, meta, what) in files {
        if let Some(m) = meta.mtime {
            push(
                &mut ev,
                Event::new(
                    m,
                    RANK_FILE,
                    format!("{path} {what}"),
                    format!("file modification time (stat -c %y {path}; its owner can forge it)"),
                ),
            );
        }
        if let (Some(c), Some(m)) = (meta.ctime, meta.mtime) {
            if c > m + 2 {
                push(
                    &mut ev,
                    Event::new(
                        c,
                        RANK_FILE,
                        format!("{path}: inode changed (renamed, chmod, chattr or touched)"),
                        format!("inode change time (stat -c %z {path})"),
                    ),
                );
            }
        }
    }
    // The case begins when its first process started (file times can be
    // forged or old); without a process, at its first file event.
    let first = subject_starts
        .iter()
        .copied()
        .min()
        .or(ev.iter().map(|e| e.epoch).min());
    if let (Some(first), Some(l)) = (first, logins) {
        let from = first - LOOKBACK;
        // The last successful login before the case began.
        // A syslog line agreeing with a wtmp record is that record; a
        // syslog line alone is shown as the claim it is.
        let corroborated = |r: &logins::Login| {
            !r.forgeable()
                || l.records.iter().any(|w| {
                    !w.forgeable()
                        && w.ok
                        && w.user == r.user
                        && w.from == r.from
                        && (w.time - r.time).abs() <= 5
                })
        };
        if let Some(r) = l
            .records
            .iter()
            .rev()
            .filter(|r| r.ok && r.time <= first && r.time >= from)
            .max_by_key(|r| (corroborated(r), r.time))
        {
            let r = match (corroborated(r), r.forgeable()) {
                (true, true) => l
                    .records
                    .iter()
                    .find(|w| {
                        !w.forgeable()
                            && w.ok
                            && w.user == r.user
                            && w.from == r.from
                            && (w.time - r.time).abs() <= 5
                    })
                    .unwrap_or(r),
                _ => r,
            };
            push(
                &mut ev,
                Event::new(
                    r.time,
                    RANK_LOGIN,
                    format!(
                        "{}login {} from {}{}",
                        if r.forgeable() { "claimed " } else { "" },
                        r.user,
                        if r.from.is_empty() {
                            "a local terminal"
                        } else {
                            &r.from
                        },
                        r.method
                            .as_ref()
                            .map(|m| format!(" ({m})"))
                            .unwrap_or_default()
                    ),
                    if r.forgeable() {
                        format!(
                            "{} (last -F / journalctl -u ssh): a syslog line, which any user can send (logger -t sshd); unverified, no login record sshd wrote agrees",
                            r.source()
                        )
                    } else {
                        format!("{} (last -F / journalctl -u ssh)", r.source())
                    },
                ),
            );
        }
        for b in logins::bursts(&l.records, BURST_WINDOW, BURST_MIN)
            .iter()
            .filter(|b| b.end >= from && b.start <= first)
        {
            push(
                &mut ev,
                Event::new(
                    b.start,
                    RANK_LOGIN,
                    format!(
                        "{} failed logins until {} from {}",
                        b.failures,
                        rfc3339(b.end),
                        b.sources()
                    ),
                    "failed-login records (lastb / grep 'Failed password')".into(),
                ),
            );
        }
    }
    for d in doors {
        push(&mut ev, d.clone());
    }
    ev.sort_by(|a, b| (a.epoch, a.rank, &a.what).cmp(&(b.epoch, b.rank, &b.what)));
    if ev.len() > MAX_EVENTS {
        ev.drain(..ev.len() - MAX_EVENTS);
    }
    ev
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::users::Users;

    fn l(pid: i32, exe: &str, argv: &[&str]) -> Link {
        Link {
            pid,
            name: exe.into(),
            exe: Some(format!("/usr/bin/{exe}")),
            exe_base: exe.into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            cmdline: argv.join(" "),
            uid: Some(0),
            start: Some(1_800_000_000 + pid as i64),
            exe_trusted: true,
            exe_owner: Some(0),
        }
    }

    #[test]
    fn the_first_real_ancestor_is_the_door() {
        let t = Trace {
            chain: vec![
                l(4711, "kdevtmpfsi", &["kdevtmpfsi"]),
                l(4700, "sh", &["sh", "-c", "curl x|sh"]),
                l(4690, "curl", &["curl"]),
                l(
                    1200,
                    "java",
                    &[
                        "java",
                        "-Dcatalina.base=/opt/tomcat",
                        "org.apache.catalina.startup.Bootstrap",
                        "start",
                    ],
                ),
                l(1, "systemd", &["/sbin/init"]),
            ],
            ..Trace::default()
        };
        let o = origin(&t, vec!["miner.process".into()], &Users::default(), None);
        let d = o.door.as_ref().unwrap();
        assert_eq!(d.kind, "java-app");
        assert!(
            d.summary.starts_with("Tomcat (java, PID 1200)"),
            "{}",
            d.summary
        );
        let roles: Vec<Role> = o.chain.iter().map(|c| c.role).collect();
        assert_eq!(
            roles,
            vec![
                Role::Subject,
                Role::Shell,
                Role::Downloader,
                Role::Door,
                Role::Above
            ]
        );
        assert_eq!(
            chain_line(&o),
            "4711 kdevtmpfsi ← 4700 sh ← 4690 curl ← 1200 java ← 1 systemd"
        );
    }

    #[test]
    fn an_orphan_keeps_its_ssh_environment() {
        let t = Trace {
            chain: vec![l(4711, "xmr", &["xmr"]), l(1, "systemd", &["/sbin/init"])],
            ssh_connection: Some("203.0.113.7 51234 10.0.0.5 22".into()),
            env_user: Some("root".into()),
            unit: Some("session-4.scope".into()),
            ..Trace::default()
        };
        // The environment alone names no door: its owner could write it.
        assert!(door(&t, &Users::default(), None).is_none());
        let o = origin(&t, vec![], &Users::default(), None);
        assert!(
            o.context.iter().any(|c| c.contains("unverified")),
            "{:?}",
            o.context
        );
        // A login record sshd wrote for the same user and address agrees.
        let logins = Logins {
            records: vec![logins::Login {
                time: 1_800_000_000 + 4711 - 30,
                user: "root".into(),
                from: "203.0.113.7".into(),
                ok: true,
                method: None,
                file: "/var/log/wtmp",
                line: None,
            }],
            ..Logins::default()
        };
        let users = Users::parse("root:x:0:0:root:/root:/bin/bash\n");
        let d = door(&t, &users, Some(&logins)).unwrap();
        assert_eq!(d.kind, "ssh");
        assert_eq!(d.found_by, "environment");
        assert!(
            d.summary.contains("as root from 203.0.113.7"),
            "{}",
            d.summary
        );
        // A syslog line (anyone can send one with logger) does not.
        let mut forged = logins.clone();
        forged.records[0].file = "/var/log/auth.log";
        forged.records[0].line = Some(7);
        assert!(door(&t, &users, Some(&forged)).is_none());
    }

    #[test]
    fn a_users_program_named_java_is_not_tomcat() {
        let mut fake = l(
            1200,
            "java",
            &["java", "org.apache.catalina.startup.Bootstrap"],
        );
        fake.exe_trusted = false;
        fake.exe_owner = Some(4242);
        let t = Trace {
            chain: vec![
                l(4711, "xmr", &["xmr"]),
                fake,
                l(1, "systemd", &["/sbin/init"]),
            ],
            ..Trace::default()
        };
        let o = origin(&t, vec![], &Users::default(), None);
        assert!(o.door.is_none(), "{:?}", o.door);
        assert!(
            o.context.iter().any(|c| c.contains("uid 4242")),
            "{:?}",
            o.context
        );
    }

    #[test]
    fn an_orphan_in_a_service_cgroup() {
        let t = Trace {
            chain: vec![l(4711, "xmr", &["xmr"]), l(1, "systemd", &["/sbin/init"])],
            unit: Some("redis-server.service".into()),
            ..Trace::default()
        };
        let d = door(&t, &Users::default(), None).unwrap();
        assert_eq!((d.kind, d.found_by), ("redis", "cgroup"));
        let t = Trace {
            chain: vec![l(4711, "xmr", &["xmr"]), l(1, "systemd", &["/sbin/init"])],
            ..Trace::default()
        };
        assert!(door(&t, &Users::default(), None).is_none());
    }

    #[test]
    fn java_applications() {
        let a = |v: &[&str]| java_app(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            a(&["java", "-jar", "/usr/share/jenkins/jenkins.war"]),
            "Jenkins"
        );
        assert_eq!(a(&["java", "weblogic.Server"]), "WebLogic");
        assert_eq!(
            a(&["java", "-jar", "/opt/app/billing.jar"]),
            "the Java application billing.jar"
        );
        assert_eq!(
            a(&["java", "-Xmx1g", "com.example.Main"]),
            "the Java application com.example.Main"
        );
    }

    #[test]
    fn rdb_signature() {
        assert!(rdb_header(b"REDIS0011\xfa\tredis-ver").is_some());
        assert!(rdb_header(b"REDIS rocks").is_none());
        assert!(rdb_header(b"* * * * * curl").is_none());
    }

    #[test]
    fn roles_with_versions() {
        assert_eq!(role(&l(5, "python3.11", &[])), Role::Interpreter);
        assert_eq!(role(&l(5, "bash", &[])), Role::Shell);
        assert_eq!(role(&l(5, "redis-server", &[])), Role::Door);
        assert_eq!(role(&l(1, "systemd", &[])), Role::Init);
    }
}
