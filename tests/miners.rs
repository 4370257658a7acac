//! Issue 2 scenarios: real miner imitations are flagged, ordinary busy
//! processes are not, and hostile names cannot forge the report.

mod common;

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::Command;

use common::*;

/// Asserts a PID has a malicious miner finding with the given signals.
fn assert_malicious(scan: &Scan, pid: i32, signals: &[&str]) {
    let f = scan.miner(pid).unwrap_or_else(|| {
        panic!(
            "no miner finding for PID {pid}: {:#}",
            scan.json["findings"]
        )
    });
    assert_eq!(f["verdict"], "malicious", "{f:#}");
    assert_eq!(f["severity"], "high", "{f:#}");
    let ids = scan.signal_ids(pid);
    for s in signals {
        assert!(
            ids.iter().any(|i| i == s),
            "signal {s} missing for PID {pid}: {ids:?}"
        );
    }
    assert!(
        f["techniques"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == "T1496"),
        "{f:#}"
    );
    assert_eq!(scan.code, 1, "findings must give exit code 1");
}

#[test]
fn minerd_in_tmp() {
    sandboxed!("minerd_in_tmp");
    let _file = install_burner("/tmp/minerd");
    let m = start(Command::new("/tmp/minerd"));
    let s = scan(&[]);
    assert_malicious(&s, m.pid, &["miner-name", "exe-in-temp-dir", "high-cpu"]);
    let f = s.miner(m.pid).unwrap();
    assert_eq!(f["subject"]["path"], "/tmp/minerd");
    // The top consumers list shows it with its context.
    let top = s.json["top"].as_array().unwrap();
    let t = top.iter().find(|t| t["pid"] == m.pid).expect("in top list");
    assert_eq!(t["verdict"], "malicious");
    assert_eq!(t["exe_state"], "file");
    assert!(!t["parents"].as_array().unwrap().is_empty());
}

#[test]
fn deleted_tplink_in_var_tmp() {
    sandboxed!("deleted_tplink_in_var_tmp");
    let file = install_burner("/var/tmp/tplink");
    let m = start(Command::new("/var/tmp/tplink"));
    std::fs::remove_file(&file.0).unwrap();
    let s = scan(&[]);
    assert_malicious(&s, m.pid, &["miner-name", "exe-deleted", "exe-in-temp-dir"]);
    let f = s.miner(m.pid).unwrap();
    assert_eq!(f["subject"]["path"], "/var/tmp/tplink (deleted)");
    let t = s.json["top"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["pid"] == m.pid)
        .cloned();
    assert_eq!(t.unwrap()["exe_state"], "deleted");
}

#[test]
fn memfd_executed_miner() {
    sandboxed!("memfd_executed_miner");
    let mut cmd = Command::new(burner());
    cmd.args(["--memfd", "kdevtmpfsi"]);
    let m = start(cmd);
    let s = scan(&[]);
    assert_malicious(&s, m.pid, &["exe-memfd", "miner-name", "high-cpu"]);
    let memfd = s.signal(m.pid, "exe-memfd");
    assert!(
        memfd["detail"].as_str().unwrap().contains("not sealed"),
        "{memfd:#}"
    );
    assert_eq!(
        s.miner(m.pid).unwrap()["subject"]["path"],
        "/memfd:kdevtmpfsi (deleted)"
    );
}

#[test]
fn kworker_masquerade_in_hidden_dir() {
    sandboxed!("kworker_masquerade_in_hidden_dir");
    let _dir = PathGuard("/tmp/.quarry-test-hidden".into());
    let _f = install_burner("/tmp/.quarry-test-hidden/.cache/sysd");
    let mut cmd = Command::new("/tmp/.quarry-test-hidden/.cache/sysd");
    cmd.arg0("[kworker/0:2]").args(["--name", "[kworker/0:2]"]);
    let m = start(cmd);
    let s = scan(&[]);
    assert_malicious(
        &s,
        m.pid,
        &["kthread-masquerade", "exe-hidden-dir", "exe-in-temp-dir"],
    );
    assert_eq!(s.miner(m.pid).unwrap()["subject"]["name"], "[kworker/0:2]");
}

#[test]
fn dev_shm_miner_connected_to_fake_pool() {
    sandboxed!("dev_shm_miner_connected_to_fake_pool");
    let pool = TcpListener::bind("127.0.0.1:3333").expect("port 3333 free for the fake pool");
    let _f = install_burner("/dev/shm/dbus-helper");
    let wallet = format!(
        "4{}",
        "9AbCdEfGhJkLmNpQrStUvWxYz"
            .repeat(4)
            .chars()
            .take(94)
            .collect::<String>()
    );
    let mut cmd = Command::new("/dev/shm/dbus-helper");
    cmd.args([
        "-o",
        "stratum+tcp://127.0.0.1:3333",
        "-u",
        &wallet,
        "--connect",
        "3333",
    ]);
    let m = start(cmd);
    let (_conn, _) = pool.accept().unwrap();
    let s = scan(&[]);
    assert_malicious(
        &s,
        m.pid,
        &[
            "mining-cmdline",
            "wallet-address",
            "pool-port",
            "exe-in-temp-dir",
        ],
    );
    let port = s.signal(m.pid, "pool-port");
    assert!(
        port["detail"].as_str().unwrap().contains("127.0.0.1:3333"),
        "{port:#}"
    );
}

#[test]
fn ordinary_busy_processes_are_not_flagged() {
    sandboxed_clean!("ordinary_busy_processes_are_not_flagged");
    // A busy loop named like a compiler under /usr/local/bin, and one in /tmp
    // (a build running from /tmp is not a miner).
    let _dir = PathGuard("/tmp/quarry-build-test".into());
    let _a = install_burner("/usr/local/bin/cc1plus");
    let _b = install_burner("/tmp/quarry-build-test/cc1");
    let a = start(Command::new("/usr/local/bin/cc1plus"));
    let b = start(Command::new("/tmp/quarry-build-test/cc1"));
    // Compiling a miner's own sources (issue 9): its defines and file names
    // name the algorithm, but they are not the process's algorithm option.
    let _c = install_burner("/tmp/quarry-build-test/cc1plus");
    let c = start({
        let mut cmd = Command::new("/tmp/quarry-build-test/cc1plus");
        cmd.args([
            "-quiet",
            "-DXMRIG_ALGO_RANDOMX",
            "-DXMRIG_ALGO_ARGON2",
            "src/crypto/randomx/randomx.cpp",
            "-o",
            "/tmp/ccX.s",
        ]);
        cmd
    });
    let s = scan(&[]);
    assert!(
        s.miner(c.pid).is_none(),
        "a compile of randomx.cpp flagged: {:#}",
        s.json["findings"]
    );
    assert!(
        s.miner(a.pid).is_none(),
        "cc1plus flagged: {:#}",
        s.json["findings"]
    );
    let bf = s.miner(b.pid);
    assert!(bf.is_none_or(|f| f["verdict"] != "malicious"), "{bf:?}");
    // Nothing on this machine is malicious: not the test runner, cargo,
    // rustc, or the system daemons.
    assert!(s.malicious_pids().is_empty(), "{:#}", s.json["findings"]);
    assert_eq!(s.code, 0, "{:#}", s.json["findings"]);
}

#[test]
fn clean_machine_exits_zero() {
    sandboxed_mounts!("clean_machine_exits_zero", true);
    let s = scan(&["--interval", "0.5"]);
    assert_eq!(s.code, 0, "{:#}", s.json["findings"]);
    assert!(s.malicious_pids().is_empty());
    assert_eq!(s.json["schema"], "quarry.scan");
    assert_eq!(s.json["schema_version"], 1);
}

#[test]
fn hostile_names_cannot_forge_the_report() {
    sandboxed!("hostile_names_cannot_forge_the_report");
    let _f = install_burner("/tmp/minerd");
    let mut cmd = Command::new("/tmp/minerd");
    use std::os::unix::ffi::OsStrExt;
    let evil_arg =
        std::ffi::OsStr::from_bytes(b"\x1b[2J\x1b[32mclean\nHIGH     forged finding\n\xff\xfe");
    cmd.arg0(std::ffi::OsStr::from_bytes(b"mine\x1b]0;title\x07\n"))
        .arg(evil_arg)
        .args(["--name", "ev\x1b[31mil\nx"]);
    let m = start(cmd);
    let (code, out, _) = quarry(&["scan", "--color", "never", "--top", "40"]);
    assert_eq!(code, 1);
    assert!(!out.contains(&0x1b), "raw ESC in the report");
    let text = String::from_utf8(out).expect("report is valid UTF-8");
    assert!(
        !text
            .lines()
            .any(|l| l.trim_start().starts_with("HIGH     forged")),
        "a process forged a line:\n{text}"
    );
    assert!(
        text.contains("\\x1b[2J\\x1b[32mclean\\nHIGH     forged finding\\n\\xff\\xfe"),
        "{text}"
    );
    assert!(
        text.contains(&format!("PID {} \"ev\\x1b[31mil\\nx\"", m.pid)),
        "{text}"
    );
    // JSON stays valid and lossless-escaped too.
    let s = scan(&[]);
    let f = s.miner(m.pid).expect("still judged");
    assert_eq!(f["subject"]["name"], "ev\\x1b[31mil\\nx");
    // Colour is only used when asked for.
    let (_, colored, _) = quarry(&["scan", "--color", "always", "--interval", "0.2"]);
    assert!(colored.contains(&0x1b));
}

#[test]
fn broken_rules_file_gives_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "version = 1\n\n[[indicator]]\nkind = \"process-name\"\nvalues = [\"a\" \"b\"]\nnote = \"x\"\nsource = \"y\"\n",
    )
    .unwrap();
    let (code, _, err) = quarry(&["scan", "--rules", p.to_str().unwrap(), "--interval", "0"]);
    assert_eq!(code, 2, "{err}");
    let want = format!("{}:5:15:", p.display());
    assert!(err.contains(&want), "want {want} in: {err}");
    // `quarry rules FILE` checks without scanning.
    let (code, _, err) = quarry(&["rules", p.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains(&want), "{err}");
    // A valid extra rule is used: name a harmless process as a miner.
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "version = 1\n[[indicator]]\nkind = \"process-name\"\nvalues = [\"quarry-nothing\"]\nnote = \"test\"\nsource = \"test\"\n",
    )
    .unwrap();
    let (code, out, err) = quarry(&["rules", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(String::from_utf8_lossy(&out).starts_with("ok: "));
}

#[test]
fn binary_is_static() {
    use object::Object;
    let data = std::fs::read(QUARRY).unwrap();
    let obj = object::File::parse(&*data).unwrap();
    // No PT_INTERP: the ELF has no program interpreter, so ld.so (and with it
    // /etc/ld.so.preload and LD_PRELOAD) never runs.
    if let object::File::Elf64(elf) = &obj {
        use object::read::elf::ProgramHeader;
        let endian = elf.endian();
        for ph in elf.elf_program_headers() {
            assert_ne!(
                ph.p_type(endian),
                object::elf::PT_INTERP,
                "binary has PT_INTERP"
            );
        }
    } else {
        panic!("not ELF64");
    }
    // No undefined dynamic symbols: nothing is resolved from a shared library.
    assert!(
        obj.imports().unwrap().next().is_none(),
        "binary imports symbols"
    );
    assert!(
        !data.windows(7).any(|w| w == b"libnss_"),
        "binary references libnss_ (static NSS would crash)"
    );
}

#[test]
fn not_root_says_what_it_cannot_see_and_goes_on() {
    sandboxed!("not_root_says_what_it_cannot_see_and_goes_on");
    let _f = install_burner("/tmp/quarry-test-busy");
    let b = start(Command::new("/tmp/quarry-test-busy"));
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            QUARRY,
            "scan",
            "--format",
            "json",
            "--interval",
            "0.3",
        ])
        .output()
        .expect("setpriv (util-linux)");
    let code = out.status.code().unwrap();
    assert!(
        code == 0 || code == 1,
        "exit {code}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["host"]["euid"], 65534);
    let lim = json["limitations"].to_string();
    assert!(lim.contains("not running as root"), "{lim}");
    assert!(lim.contains("private procfs"), "{lim}");
    // Root's busy process is still listed, with what could not be read said so.
    let top = json["top"].as_array().unwrap();
    let t = top
        .iter()
        .find(|t| t["pid"] == b.pid)
        .unwrap_or_else(|| panic!("{top:#?}"));
    assert_eq!(t["user"], "root");
    assert_eq!(t["exe_state"], "unreadable");
}

/// Kills a whole process group on drop.
struct GroupGuard(i32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pg) = rustix::process::Pid::from_raw(self.0) {
            let _ = rustix::process::kill_process_group(pg, rustix::process::Signal::KILL);
        }
    }
}

#[test]
fn miner_in_another_network_namespace_is_tied_to_its_pool() {
    sandboxed!("miner_in_another_network_namespace_is_tied_to_its_pool");
    let _f = install_burner("/dev/shm/quarry-netns-miner");
    // A container-like network namespace with its own loopback, a fake pool
    // on 127.0.0.1:3333 inside it, and the miner connected to it.
    let script = format!(
        "ip link set lo up && {{ {} --listen 3333 >/dev/null & }}; sleep 0.3; exec /dev/shm/quarry-netns-miner --connect 3333",
        burner().display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["-n", "sh", "-c", &script]).process_group(0);
    let m = start(cmd);
    let _group = GroupGuard(m.child.id() as i32);
    let own_ns = std::fs::read_link("/proc/self/ns/net").unwrap();
    let its_ns = std::fs::read_link(format!("/proc/{}/ns/net", m.pid)).unwrap();
    assert_ne!(
        own_ns, its_ns,
        "the miner is not in its own network namespace"
    );
    let s = scan(&[]);
    let ids = s.signal_ids(m.pid);
    assert!(
        ids.iter().any(|i| i == "pool-port"),
        "{ids:?}: {:#}",
        s.json["findings"]
    );
    let port = s.signal(m.pid, "pool-port");
    assert!(
        port["detail"].as_str().unwrap().contains("127.0.0.1:3333"),
        "{port:#}"
    );
}

/// Issue 9: kernel-thread masquerade is judged on argv[0] and the name against
/// the kernel's own thread naming; `kdevtmpfsi` (a miner's name) is not the
/// `kdevtmpfs` thread, and one name never fires two signals.
#[test]
fn kernel_thread_masquerade_is_judged_on_argv0() {
    sandboxed!("kernel_thread_masquerade_is_judged_on_argv0");
    let _f = install_burner("/tmp/q/kdevtmpfsi");
    let masq = start({
        let mut c = Command::new("/tmp/q/kdevtmpfsi");
        c.arg0("[kworker/0:1]");
        c
    });
    let plain = start(Command::new("/tmp/q/kdevtmpfsi"));
    let s = scan(&["--interval", "0.3"]);
    let ids = s.signal_ids(masq.pid);
    assert!(ids.contains(&"miner-name".to_string()), "{ids:?}");
    let k = s.signal(masq.pid, "kthread-masquerade");
    assert!(
        k["detail"]
            .as_str()
            .unwrap()
            .contains("argv[0] \"[kworker/0:1]\""),
        "{k:#}"
    );
    let ids = s.signal_ids(plain.pid);
    assert!(ids.contains(&"miner-name".to_string()), "{ids:?}");
    assert!(!ids.contains(&"kthread-masquerade".to_string()), "{ids:?}");
}
