//! Issue 9: verdicts on what a program does, not what it is called.
//!
//! A renamed miner (tests/c/fakeminer.c, our own imitation) reads its pool and
//! wallet from a config.json beside it, logs in to a fake stratum pool on
//! 127.0.0.1 and keeps the job in memory; a watchdog loop and a cron line
//! restart it. Quarry must call it a miner by its config, its memory and its
//! restarters, and `fix` must end it for good. Ordinary busy work (compilers
//! with miner-looking defines, compressors, interpreters) must stay below
//! medium.
//!
//! Tests that plant files or run `fix` re-run themselves in their own mount
//! and PID namespace (`sandboxed!`, tests/common) and scope `fix --yes` with
//! `--only` to their own PIDs and files.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// A wallet-shaped test string (95 base58 characters starting with 4); not a
/// real address.
fn wallet() -> String {
    format!("4{}", &"QuarryTestWa11et".repeat(6)[..94])
}

/// A fake stratum pool on 127.0.0.1: answers every `login` with a job (a
/// 76-byte hashing blob in hex, as Monero pools send) and keeps the
/// connection open. Returns its port.
fn fake_pool() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                let mut line = String::new();
                while r.read_line(&mut line).unwrap_or(0) > 0 {
                    if line.contains("\"login\"") {
                        let blob = "0707".repeat(38);
                        let reply = format!(
                            "{{\"id\":1,\"jsonrpc\":\"2.0\",\"error\":null,\"result\":{{\"id\":\"q1\",\"job\":{{\"blob\":\"{blob}\",\"job_id\":\"quarry-job-1\",\"target\":\"b88d0600\",\"algo\":\"rx/0\",\"height\":3100000,\"{seed}\":\"{}\"}},\"status\":\"OK\"}}}}\n",
                            "ab".repeat(32),
                            seed = seed_field(),
                        );
                        let _ = w.write_all(reply.as_bytes());
                    }
                    line.clear();
                }
            });
        }
    });
    port
}

/// Protocol words built at run time: this test's own executable must not hold
/// the strings Quarry's signatures look for (when the project lives under
/// /tmp, the test program itself is a process in a temporary place).
fn seed_field() -> String {
    ["seed", "hash"].join("_")
}

/// A comment line naming stratum methods and an algorithm table, as miner
/// source code does (built at run time, see [`seed_field`]).
fn miner_source_comment() -> String {
    let methods: Vec<String> = ["subscribe", "authorize", "submit"]
        .iter()
        .map(|m| ["mining", m].join("."))
        .collect();
    let algos: Vec<String> = [
        ("rx", "0"),
        ("rx", "wow"),
        ("cn", "r"),
        ("cn", "half"),
        ("argon2", "chukwa"),
    ]
    .iter()
    .map(|(a, b)| [*a, *b].join("/"))
    .collect();
    format!(
        "// {} \"{}\" {}\n",
        methods.join(" "),
        seed_field(),
        algos.join(" ")
    )
}

fn config(port: u16) -> String {
    format!(
        "{{\"autosave\":false,\"cpu\":{{\"enabled\":true}},\"threads\":1,\"pools\":[{{\"url\":\"127.0.0.1:{port}\",\"user\":\"{}\",\"pass\":\"x\",\"algo\":\"rx/0\"}}]}}\n",
        wallet()
    )
}

fn fakeminer() -> std::path::PathBuf {
    compile("fakeminer", &["-pthread"])
}

fn wait_for(path: &str) -> i32 {
    let t = Instant::now();
    loop {
        if let Some(p) = pids_running(path).first() {
            return *p;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{path} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Plants `exe` (a copy of `src`), starts it under a watchdog shell loop and
/// writes a cron line restarting it; returns the watchdog's guard.
fn plant_with_restarters(
    src: &std::path::Path,
    exe: &str,
    cron: &str,
    cron_line: &str,
) -> ProcGuard {
    std::fs::create_dir_all(std::path::Path::new(exe).parent().unwrap()).unwrap();
    std::fs::copy(src, exe).unwrap();
    std::fs::set_permissions(exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all("/etc/cron.d").unwrap();
    std::fs::write(cron, cron_line).unwrap();
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        &format!("echo ready $$; while true; do {exe} >/dev/null 2>&1; sleep 1; done"),
    ]);
    start(cmd)
}

/// `fix --yes` scoped to `only`, then: nothing runs `exe` for 10 s.
fn fix_for_good(only: &str, exe: &str) -> String {
    let (status, text) = fix(&["--yes", "--interval", "1", "--only", only], &[]);
    assert!(status.success(), "fix failed:\n{text}");
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        assert!(pids_running(exe).is_empty(), "{exe} runs again:\n{text}");
        std::thread::sleep(Duration::from_millis(250));
    }
    text
}

#[test]
fn renamed_miner_with_its_pool_in_a_config_file_is_found_and_fixed_for_good() {
    sandboxed!("renamed_miner_with_its_pool_in_a_config_file_is_found_and_fixed_for_good");
    const EXE: &str = "/usr/local/bin/systemd-helper";
    const CFG: &str = "/usr/local/bin/config.json";
    const CRON: &str = "/etc/cron.d/quarry-helper";
    let port = fake_pool();
    std::fs::create_dir_all("/usr/local/bin").unwrap();
    std::fs::write(CFG, config(port)).unwrap();
    let _w = plant_with_restarters(
        &fakeminer(),
        EXE,
        CRON,
        &format!("* * * * * root pgrep -x systemd-helper >/dev/null || {EXE}\n"),
    );
    let pid = wait_for(EXE);
    std::thread::sleep(Duration::from_millis(700));

    let s = scan(&["--interval", "1"]);
    let f = s
        .miner(pid)
        .unwrap_or_else(|| panic!("no finding for the renamed miner:\n{:#}", s.json));
    assert_eq!(f["severity"], "high", "{f:#}");
    let ids = s.signal_ids(pid);
    for want in ["miner-config", "content-signature", "restarted"] {
        assert!(
            ids.iter().any(|i| i == want),
            "{want} missing: {ids:?}\n{f:#}"
        );
    }
    let text = f.to_string();
    assert!(text.contains("quarry_stratum_job"), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(text.contains(&wallet()), "{text}");
    assert!(
        text.contains(CRON) && text.contains("watchdog PID"),
        "{text}"
    );
    // The cron line is linked to it and critical.
    let cron = s
        .findings()
        .iter()
        .find(|x| x["subject"]["path"] == CRON)
        .unwrap_or_else(|| panic!("{:#}", s.json));
    assert_eq!(cron["severity"], "critical", "{cron:#}");
    assert_eq!(s.code, 1, "{:#}", s.json);

    let out = fix_for_good(&format!("{pid},{CFG},{CRON}"), EXE);
    assert!(!std::path::Path::new(EXE).exists(), "{out}");
    assert!(
        !std::path::Path::new(CFG).exists(),
        "config not quarantined:\n{out}"
    );
}

#[test]
fn busy_loop_with_a_hidden_name_and_restarters_is_a_miner() {
    sandboxed!("busy_loop_with_a_hidden_name_and_restarters_is_a_miner");
    const EXE: &str = "/tmp/.ice-unix-minerd";
    const CRON: &str = "/etc/cron.d/quarry-ice";
    let _w = plant_with_restarters(&burner(), EXE, CRON, &format!("* * * * * root {EXE}\n"));
    let pid = wait_for(EXE);
    std::thread::sleep(Duration::from_millis(500));
    let s = scan(&["--interval", "1"]);
    let f = s.miner(pid).unwrap_or_else(|| panic!("{:#}", s.json));
    assert_eq!(f["severity"], "high", "{f:#}");
    assert!(s.signal_ids(pid).iter().any(|i| i == "restarted"), "{f:#}");

    // Killed during a scan, it is back within the sample: the restart is seen.
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid).unwrap(),
            rustix::process::Signal::KILL,
        );
    });
    let s = scan(&["--interval", "2.5"]);
    killer.join().unwrap();
    let again = *pids_running(EXE).first().expect("the watchdog restarts it");
    assert_ne!(again, pid);
    let f = s.miner(again).unwrap_or_else(|| panic!("{:#}", s.json));
    let seen = f["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == "restart seen")
        .unwrap_or_else(|| panic!("no restart seen: {f:#}"));
    assert!(
        seen["value"].as_str().unwrap().contains("a restart"),
        "{seen}"
    );
    fix_for_good(&format!("{again},{CRON}"), EXE);
}

#[test]
fn fileless_miner_is_judged_by_its_memory_and_named_by_argv0() {
    sandboxed!("fileless_miner_is_judged_by_its_memory_and_named_by_argv0");
    let port = fake_pool();
    std::fs::create_dir_all("/tmp/q").unwrap();
    std::fs::write("/tmp/q/c.json", config(port)).unwrap();
    let mut cmd = Command::new(fakeminer());
    cmd.arg0("kthelper")
        .args(["--memfd", "x", "-c", "/tmp/q/c.json", "--hold-config"]);
    let g = start(cmd);
    std::thread::sleep(Duration::from_millis(700));
    let s = scan(&["--interval", "1"]);
    let f = s.miner(g.pid).unwrap_or_else(|| panic!("{:#}", s.json));
    assert_eq!(f["severity"], "high", "{f:#}");
    let ids = s.signal_ids(g.pid);
    assert!(ids.iter().any(|i| i == "content-signature"), "{ids:?}");
    assert!(ids.iter().any(|i| i == "fileless-busy"), "{ids:?}");
    let title = f["title"].as_str().unwrap();
    assert!(title.contains("\"kthelper\""), "{title}");

    // A CPU burner fexecve'd from an unsealed memfd: no pool, no config.
    let mut cmd = Command::new(burner());
    cmd.args(["--memfd", "y"]);
    let b = start(cmd);
    std::thread::sleep(Duration::from_millis(500));
    let s = scan(&["--interval", "1"]);
    let f = s.miner(b.pid).unwrap_or_else(|| panic!("{:#}", s.json));
    assert_eq!(f["severity"], "high", "{f:#}");
}

/// Runs `cmd` (busy work), scans during it, and asserts that no finding at
/// medium or above names any of its processes.
fn no_alarm(what: &str, mut cmd: Command) {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{what}: {e}"));
    std::thread::sleep(Duration::from_millis(600));
    let s = scan(&["--interval", "1", "--only", "miner,preload"]);
    let _ = child.kill();
    let _ = child.wait();
    for f in s.findings() {
        let sev = f["severity"].as_str().unwrap_or("");
        if f["rule"] == "miner.process"
            || f["rule"]
                .as_str()
                .unwrap_or("")
                .starts_with("rootkit.preload")
        {
            assert!(
                !matches!(sev, "medium" | "high" | "critical"),
                "{what}: false alarm {f:#}"
            );
        }
    }
}

#[test]
fn ordinary_busy_work_is_not_a_miner() {
    sandboxed!("ordinary_busy_work_is_not_a_miner");
    // A C++ compile of miner-like source with miner defines.
    let dir = std::path::Path::new("/tmp/quarry-build");
    std::fs::create_dir_all(dir).unwrap();
    let mut src = miner_source_comment();
    for i in 0..4000 {
        src.push_str(&format!(
            "template<int N> struct S{i} {{ static int f() {{ return N * {i} + S{i}<N-1>::f(); }} }};\ntemplate<> struct S{i}<0> {{ static int f() {{ return 0; }} }};\nint g{i}() {{ return S{i}<40>::f(); }}\n"
        ));
    }
    std::fs::write(dir.join("randomx.cpp"), &src).unwrap();
    let mut cxx = Command::new("g++");
    cxx.current_dir(dir).args([
        "-O2",
        "-DXMRIG_ALGO_RANDOMX",
        "-DXMRIG_FEATURE_HTTP",
        "-c",
        "randomx.cpp",
        "-o",
        "randomx.o",
    ]);
    no_alarm("g++ -DXMRIG_ALGO_RANDOMX", cxx);

    // cargo build of a small crate under /tmp.
    let krate = dir.join("crate");
    std::fs::create_dir_all(krate.join("src")).unwrap();
    std::fs::write(
        krate.join("Cargo.toml"),
        "[package]\nname = \"busy\"\nversion = \"0.1.0\"\nedition = \"2021\"\n[dependencies]\n",
    )
    .unwrap();
    let mut rs = String::from("fn main() { println!(\"{}\", f0()); }\n");
    for i in 0..3000 {
        rs.push_str(&format!(
            "#[inline(never)] fn f{i}() -> u64 {{ (0..{i}u64).map(|x| x.wrapping_mul(31)).sum::<u64>() + {} }}\n",
            if i < 2999 { format!("f{}()", i + 1) } else { "0".into() }
        ));
    }
    std::fs::write(krate.join("src/main.rs"), rs).unwrap();
    let mut cargo = Command::new("cargo");
    cargo
        .current_dir(&krate)
        .args(["build", "--release", "--offline"])
        .env("CARGO_TARGET_DIR", krate.join("target"));
    no_alarm("cargo build in /tmp", cargo);

    // Compressors and interpreters burning CPU.
    let mut xz = Command::new("sh");
    xz.args(["-c", "head -c 200000000 /dev/urandom | xz -9 > /dev/null"]);
    no_alarm("xz -9", xz);
    let mut py = Command::new("python3");
    py.args(["-c", "while True: pass"]);
    no_alarm("python busy loop", py);
    for (what, prog, args) in [
        ("node busy loop", "node", vec!["-e", "for(;;){}"]),
        (
            "java busy loop",
            "java",
            vec!["-Xmx64m", "/tmp/quarry-build/Busy.java"],
        ),
    ] {
        if Command::new(prog).arg("--version").output().is_err() {
            eprintln!("SKIPPED {what}: {prog} is not installed");
            continue;
        }
        if prog == "java" {
            std::fs::write(
                "/tmp/quarry-build/Busy.java",
                "public class Busy { public static void main(String[] a) { long x = 0; while (true) { x++; } } }\n",
            )
            .unwrap();
        }
        let mut c = Command::new(prog);
        c.args(args);
        no_alarm(what, c);
    }
    if Command::new("stress-ng").arg("--version").output().is_ok() {
        let mut c = Command::new("stress-ng");
        c.args(["--cpu", "1", "--timeout", "10"]);
        no_alarm("stress-ng --cpu", c);
    } else {
        eprintln!("SKIPPED stress-ng: not installed");
    }
}

#[test]
fn miner_in_its_own_namespaces_is_shown_with_them() {
    sandboxed!("miner_in_its_own_namespaces_is_shown_with_them");
    const EXE: &str = "/tmp/qns/m";
    std::fs::create_dir_all("/tmp/qns").unwrap();
    std::fs::copy(fakeminer(), EXE).unwrap();
    std::fs::write("/tmp/qns/config.json", config(3333)).unwrap();
    // A thread in a new network namespace: its loopback, a fake pool on
    // 127.0.0.1:3333 there, and the miner started from it in a new PID
    // namespace too (children inherit the thread's namespaces).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: only the network namespace of this thread changes; it
        // shares no file-system state that NEWNET would split.
        unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }.unwrap();
        assert!(Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .unwrap()
            .success());
        let l = TcpListener::bind("127.0.0.1:3333").unwrap();
        let child = Command::new("unshare")
            .args([
                "--pid",
                "--fork",
                "--mount-proc",
                EXE,
                "-c",
                "/tmp/qns/config.json",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        tx.send(child).unwrap();
        for s in l.incoming().flatten() {
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) > 0 {
                let blob = "0707".repeat(38);
                let _ = w.write_all(
                    format!("{{\"id\":1,\"result\":{{\"job\":{{\"blob\":\"{blob}\",\"job_id\":\"j\"}}}}}}\n")
                        .as_bytes(),
                );
            }
            std::mem::forget(w); // keep the connection open
        }
    });
    let mut child = rx.recv().unwrap();
    let pid = wait_for(EXE);
    std::thread::sleep(Duration::from_millis(700));
    let s = scan(&["--interval", "1"]);
    let _ = child.kill();
    let _ = child.wait();
    let f = s.miner(pid).unwrap_or_else(|| panic!("{:#}", s.json));
    assert_eq!(f["severity"], "high", "{f:#}");
    let pool = s.signal(pid, "pool-port");
    assert!(
        pool["detail"]
            .as_str()
            .unwrap()
            .contains("network namespace net:["),
        "{pool:#}"
    );
    let ns = f["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == "namespace")
        .unwrap_or_else(|| panic!("{f:#}"));
    let v = ns["value"].as_str().unwrap();
    assert!(
        v.contains("NSpid") && v.contains(&format!("nsenter -t {pid} -n")),
        "{v}"
    );
    for q in pids_running(EXE) {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(q).unwrap(),
            rustix::process::Signal::KILL,
        );
    }
}

/// Issue 21 item 5: load never decides what is inspected or walked. Two
/// burners peg both CPUs; a renamed miner imitation (its config beside it,
/// no restarters) gets what CPU is left. The full default scan finds it HIGH
/// and the module walk completes, with a cold cache (the sandbox's is empty)
/// and then a warm one.
#[test]
fn renamed_miner_on_a_machine_two_burners_peg_is_high_cold_and_warm() {
    sandboxed!("renamed_miner_on_a_machine_two_burners_peg_is_high_cold_and_warm");
    const EXE: &str = "/usr/local/bin/cloud-agent";
    let port = fake_pool();
    std::fs::create_dir_all("/usr/local/bin").unwrap();
    // Two hashing threads, as a miner runs one per core: beside two burners
    // it gets about one CPU. (A one-thread miner squeezed under half a CPU
    // by the load is not inspected yet: issue 23, attention the sample does
    // not decide.)
    std::fs::write(
        "/usr/local/bin/config.json",
        config(port).replace("\"threads\":1", "\"threads\":2"),
    )
    .unwrap();
    std::fs::copy(fakeminer(), EXE).unwrap();
    std::fs::set_permissions(EXE, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _burners: Vec<ProcGuard> = (0..2).map(|_| start(Command::new(burner()))).collect();
    let miner = start(Command::new(EXE));
    std::thread::sleep(Duration::from_millis(500));
    for cache in ["cold", "warm"] {
        let t = Instant::now();
        let s = scan(&[]);
        eprintln!("{cache} cache, both CPUs pegged: {:?}", t.elapsed());
        let f = s
            .miner(miner.pid)
            .unwrap_or_else(|| panic!("{cache}: no finding for the renamed miner:\n{:#}", s.json));
        assert_eq!(f["severity"], "high", "{cache}: {f:#}");
        let ids = s.signal_ids(miner.pid);
        assert!(ids.iter().any(|i| i == "miner-config"), "{cache}: {ids:?}");
        let walk = &s.json["modules"]["walk"];
        assert!(walk["truncated"].is_null(), "{cache}: walk cut: {walk:#}");
        assert!(
            !s.json["limitations"].as_array().unwrap().iter().any(|l| l
                .as_str()
                .unwrap()
                .contains("cut short")
                || l.as_str().unwrap().contains("--timeout")),
            "{cache}: {:#}",
            s.json["limitations"]
        );
        // The burners are busy, not miners.
        for b in &_burners {
            assert!(
                s.miner(b.pid).is_none_or(|f| f["severity"] != "high"),
                "{cache}: a burner called a miner"
            );
        }
    }
}
