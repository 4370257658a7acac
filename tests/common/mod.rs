//! Shared harness for Quarry's scenario tests.
//!
//! Scenario tests change the whole machine (they start miners, mount over
//! /proc, edit /etc): they take [`lock`], a process-wide mutex plus an `flock`
//! on a file in /tmp, so that neither threads of one test binary nor parallel
//! test binaries (nextest) see each other's miners. Everything a test creates
//! is owned by a guard that removes it on `Drop`, also when the test fails.

#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};

use serde_json::Value;

pub const QUARRY: &str = env!("CARGO_BIN_EXE_quarry");

/// True when running as root.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Skips the calling test (returning early) unless running as root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !common::is_root() {
            eprintln!(
                "SKIPPED {}: needs root (CI runs the tests as root)",
                module_path!()
            );
            return;
        }
    };
}

/// Serialises scenario tests, within and across test binaries.
pub struct ScenarioLock {
    _guard: MutexGuard<'static, ()>,
    _file: File,
}

pub fn lock() -> ScenarioLock {
    static M: Mutex<()> = Mutex::new(());
    let guard = M.lock().unwrap_or_else(|e| e.into_inner());
    let file = File::create("/tmp/quarry-scenario-tests.lock").expect("lock file");
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).expect("flock");
    ScenarioLock {
        _guard: guard,
        _file: file,
    }
}

/// Places a sandboxed test may write, overlaid (reads see the host, writes
/// land in a tmpfs that vanishes with the test's mount namespace).
pub const OVERLAID: &[&str] = &[
    "/etc",
    "/usr/local",
    "/usr/lib/udev",
    "/opt",
    "/srv",
    "/var/spool",
    "/var/lib",
    "/var/cache",
    "/home",
    "/root",
];

/// Places a sandboxed test gets empty and private (fresh tmpfs).
pub const PRIVATE: &[&str] = &["/tmp", "/var/tmp", "/dev/shm"];

/// Quarry's own state places, each an empty private tmpfs (mode 0700) in
/// every sandbox: what an earlier `quarry fix`, `watch` or scan left on the
/// host is neither read into a test's verdicts nor changed.
pub const QUARRY_STATE: &[&str] = &["/var/lib/quarry", "/var/cache/quarry"];

/// Runs the calling test again inside its own mount and PID namespace
/// (`unshare --mount --pid --fork --mount-proc`, propagation private), where
/// [`OVERLAID`] places are overlays on a tmpfs and [`PRIVATE`] places are
/// fresh tmpfs. Returns false in the outer process (after the inner run
/// passed; the caller returns) and true inside, where the test goes on. The
/// outer process holds the scenario lock. Nothing the test writes or Quarry
/// changes there reaches the host: `quarry fix` sees only the test's processes
/// (the PID namespace) and files (the overlays).
pub fn sandbox(test: &str) -> bool {
    sandbox_with(test, false, true)
}

/// [`sandbox`] in a mount namespace only: the test sees the host's processes
/// (and Quarry accounts the host's CPU), so it must not run `fix`.
pub fn sandbox_mounts(test: &str, clean: bool) -> bool {
    sandbox_with(test, clean, false)
}

/// Places emptied (fresh tmpfs) in a "clean machine" sandbox, on top of
/// [`PRIVATE`]: where anything on the host (another project's files, the test
/// suite's own canaries) would be judged by a scan.
pub const EMPTIED: &[&str] = &[
    "/opt",
    "/srv",
    "/home",
    "/root",
    "/usr/local",
    "/etc/cron.d",
    "/var/spool/cron",
];

/// [`sandbox`], where the machine also looks freshly installed: [`EMPTIED`]
/// places are empty.
pub fn sandbox_clean(test: &str) -> bool {
    sandbox_with(test, true, true)
}

fn sandbox_with(test: &str, clean: bool, pid_ns: bool) -> bool {
    if let Some(v) = std::env::var_os("QUARRY_SANDBOX") {
        enter_sandbox(v == "clean");
        return true;
    }
    let _l = lock();
    let exe = std::env::current_exe().unwrap();
    let ns: &[&str] = if pid_ns {
        &["--mount", "--pid", "--fork", "--mount-proc"]
    } else {
        &["--mount"]
    };
    let out = Command::new("unshare")
        .args(ns)
        .args(["--propagation", "private"])
        .arg(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("QUARRY_SANDBOX", if clean { "clean" } else { "1" })
        .stdin(Stdio::null())
        .output()
        .expect("unshare (util-linux) must be installed");
    // The inner harness's own summary must not count twice in tests/run.sh.
    let text = String::from_utf8_lossy(&out.stdout).replace("test result:", "sandbox result:");
    print!("{text}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "sandboxed test {test} failed ({})",
        out.status
    );
    false
}

/// Skips the test unless root, then runs it in a clean-machine sandbox (see
/// [`sandbox_clean`]).
#[macro_export]
macro_rules! sandboxed_clean {
    ($name:expr) => {
        require_root!();
        if !common::sandbox_clean($name) {
            return;
        }
    };
}

/// Skips the test unless root, then runs it in a mount-only sandbox (see
/// [`sandbox_mounts`]); `clean` as in [`sandbox_clean`].
#[macro_export]
macro_rules! sandboxed_mounts {
    ($name:expr, $clean:expr) => {
        require_root!();
        if !common::sandbox_mounts($name, $clean) {
            return;
        }
    };
}

/// Skips the test unless root, then runs it in a sandbox (see [`sandbox`]).
#[macro_export]
macro_rules! sandboxed {
    ($name:expr) => {
        require_root!();
        if !common::sandbox($name) {
            return;
        }
    };
}

fn enter_sandbox(clean: bool) {
    use rustix::mount::{
        mount, mount_change, unmount, MountFlags, MountPropagationFlags, UnmountFlags,
    };
    // The project (sources, target, the quarry binary) may itself live under
    // a place the sandbox covers (a CI clone in /tmp): keep a detached copy
    // of its mount tree to put back on top at the end.
    let project = Path::new(env!("CARGO_MANIFEST_DIR"));
    let keep = rustix::mount::open_tree(
        rustix::fs::CWD,
        project,
        rustix::mount::OpenTreeFlags::OPEN_TREE_CLONE
            | rustix::mount::OpenTreeFlags::AT_RECURSIVE
            | rustix::mount::OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .expect("open_tree of the project folder");
    // Belt and braces: nothing mounted here propagates to the host.
    mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .unwrap();
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sandbox-scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    mount("tmpfs", &scratch, "tmpfs", MountFlags::empty(), None).unwrap();
    for (i, d) in OVERLAID.iter().enumerate() {
        if !Path::new(d).is_dir() {
            continue;
        }
        let (u, w) = (scratch.join(format!("{i}u")), scratch.join(format!("{i}w")));
        std::fs::create_dir(&u).unwrap();
        std::fs::create_dir(&w).unwrap();
        let data = format!(
            "lowerdir={d},upperdir={},workdir={}",
            u.display(),
            w.display()
        );
        let data = std::ffi::CString::new(data).unwrap();
        mount(
            "overlay",
            *d,
            "overlay",
            MountFlags::empty(),
            Some(data.as_c_str()),
        )
        .unwrap_or_else(|e| panic!("overlay on {d}: {e}"));
    }
    // The scratch tmpfs leaves the tree (the overlays keep it alive), so no
    // scan walks the upper directories.
    unmount(&scratch, UnmountFlags::DETACH).unwrap();
    let fresh_tmpfs = |dirs: &[&str], mode: &std::ffi::CStr| {
        for d in dirs.iter().filter(|d| Path::new(d).is_dir()) {
            mount("tmpfs", *d, "tmpfs", MountFlags::empty(), Some(mode)).unwrap();
        }
    };
    fresh_tmpfs(PRIVATE, c"mode=1777");
    if clean {
        fresh_tmpfs(EMPTIED, c"mode=755");
    }
    // Quarry's own state (cases, the watch state, the module cache) starts
    // empty in every sandbox: a machine where `quarry fix` ran before has
    // cases of its own under /var/lib/quarry, and the overlay would show
    // them (issue 28). The folders are made in the overlays, never on the host.
    for d in QUARRY_STATE {
        std::fs::create_dir_all(d).unwrap();
        mount("tmpfs", *d, "tmpfs", MountFlags::empty(), Some(c"mode=700")).unwrap();
    }
    if !project.join("Cargo.toml").exists() {
        std::fs::create_dir_all(project).unwrap();
        rustix::mount::move_mount(
            &keep,
            "",
            rustix::fs::CWD,
            project,
            rustix::mount::MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .expect("putting the project folder back");
    }
}

/// Compiles a C file from tests/c once per test binary and returns the program.
pub fn compile(name: &str, extra: &[&str]) -> PathBuf {
    compile_as(name, name, extra)
}

/// [`compile`] of tests/c/`name`.c into a program called `out_name` (one
/// source, several builds: static and not).
pub fn compile_as(name: &str, out_name: &str, extra: &[&str]) -> PathBuf {
    // Built under target/tmp (CARGO_TARGET_TMPDIR): nothing is left in /tmp.
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/c")
        .join(format!("{name}.c"));
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("quarry-test-{out_name}"));
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == out_name) {
        let st = Command::new("cc")
            .args(["-O1", "-Wall", "-o"])
            .arg(&out)
            .arg(&src)
            .args(extra)
            .status()
            .expect("cc must be installed to build test programs");
        assert!(st.success(), "compiling {}", src.display());
        built.push(out_name.to_string());
    }
    out
}

/// The kernel release tests/c/fakemod.c names in its vermagic by default.
pub const FAKEMOD_RELEASE: &str = "6.1.0-quarry-test";

/// Builds tests/c/fakemod.c as a module named `name` for kernel `release`
/// (creating the parent folders).
pub fn build_module(name: &str, release: &str, out: &Path) {
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let st = Command::new("cc")
        .arg("-c")
        .arg(format!("-DMODNAME=\"{name}\""))
        .arg(format!("-DVERMAGIC=\"{release}\""))
        .arg("-o")
        .arg(out)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/fakemod.c"))
        .status()
        .expect("cc must be installed to build test programs");
    assert!(st.success(), "building {}", out.display());
}

/// The CPU burner (tests/c/burner.c).
pub fn burner() -> PathBuf {
    compile("burner", &["-pthread"])
}

/// The CPU burner linked statically: it runs in a root of its own.
pub fn static_burner() -> PathBuf {
    compile_as("burner", "burner-static", &["-pthread", "-static"])
}

/// SIGKILLs a PID on drop (a daemonised child no guard holds).
pub struct KillGuard(pub i32);

impl Drop for KillGuard {
    fn drop(&mut self) {
        if let Some(p) = rustix::process::Pid::from_raw(self.0) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
    }
}

/// Removes a path (file or directory tree) on drop.
pub struct PathGuard(pub PathBuf);

impl Drop for PathGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Copies the burner to `dest` (creating parent directories) and guards it.
pub fn install_burner(dest: &str) -> PathGuard {
    let dest = PathBuf::from(dest);
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    // A leftover of an earlier, interrupted run may be immutable.
    let _ = quarry::respond::case::set_attrs(&dest, false, false);
    let _ = std::fs::remove_file(&dest);
    std::fs::copy(burner(), &dest).unwrap();
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755)).unwrap();
    PathGuard(dest)
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct ProcGuard {
    pub child: Child,
    pub pid: i32,
    /// Kept open: a program (or its children) that prints again must not die
    /// of SIGPIPE.
    _stdout: BufReader<std::process::ChildStdout>,
}

impl Drop for ProcGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a program and waits for its "ready PID" line. The reported PID is
/// the program's own (it may have re-executed itself).
pub fn start(mut cmd: Command) -> ProcGuard {
    cmd.stdout(Stdio::piped()).stdin(Stdio::null());
    let mut child = cmd.spawn().expect("spawn");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    let mut reader = BufReader::new(stdout);
    reader.read_line(&mut line).unwrap();
    let pid = line
        .trim()
        .strip_prefix("ready ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| {
            let _ = child.kill();
            panic!("program did not become ready: {line:?}")
        });
    ProcGuard {
        child,
        pid,
        _stdout: reader,
    }
}

/// The result of a `quarry scan --format json`.
pub struct Scan {
    pub code: i32,
    pub json: Value,
    pub stderr: String,
}

impl Scan {
    pub fn findings(&self) -> &Vec<Value> {
        self.json["findings"].as_array().expect("findings array")
    }

    /// The miner finding for a PID, if any.
    pub fn miner(&self, pid: i32) -> Option<&Value> {
        self.findings()
            .iter()
            .find(|f| f["rule"] == "miner.process" && f["subject"]["pid"] == pid)
    }

    /// Signal ids of the miner finding for a PID.
    pub fn signal_ids(&self, pid: i32) -> Vec<String> {
        self.miner(pid)
            .map(|f| {
                f["signals"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s["id"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// One signal of the miner finding for a PID.
    pub fn signal(&self, pid: i32, id: &str) -> &Value {
        self.miner(pid)
            .and_then(|f| f["signals"].as_array())
            .and_then(|v| v.iter().find(|s| s["id"] == id))
            .unwrap_or_else(|| panic!("no {id} signal for PID {pid}: {:#}", self.json["findings"]))
    }

    pub fn malicious_pids(&self) -> Vec<i64> {
        self.findings()
            .iter()
            .filter(|f| f["verdict"] == "malicious")
            .filter_map(|f| f["subject"]["pid"].as_i64())
            .collect()
    }
}

/// The module cache of Quarry runs outside a sandbox (inside one,
/// `/var/cache/quarry` is already a private tmpfs): the suite's own, so the
/// machine's cache is neither read into a verdict nor changed
/// (tests/run.sh removes it at the end).
pub const SUITE_CACHE: &str = "/tmp/quarry-suite-cache";

/// A `quarry` command. Outside a sandbox it uses [`SUITE_CACHE`].
pub fn command() -> Command {
    let mut c = Command::new(QUARRY);
    if std::env::var_os("QUARRY_SANDBOX").is_none() {
        c.env("QUARRY_CACHE_DIR", SUITE_CACHE);
    }
    c
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `quarry watch` ticking and scanning every 0.5 s, serving metrics on
/// 127.0.0.1:`port`.
pub fn watch_command(port: u16) -> Command {
    let mut c = command();
    c.args(["watch", "--interval", "0.5", "--scan-interval", "0.5"])
        .arg("--metrics-addr")
        .arg(format!("127.0.0.1:{port}"));
    c
}

/// Runs `quarry scan --format json` with extra arguments.
pub fn scan(args: &[&str]) -> Scan {
    let out = command()
        .arg("scan")
        .args(["--format", "json"])
        .args(args)
        .output()
        .expect("run quarry");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "quarry printed no JSON ({e}); stderr: {stderr}; stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    Scan {
        code: out.status.code().unwrap_or(-1),
        json,
        stderr,
    }
}

/// Runs quarry with arbitrary arguments; returns (exit code, stdout bytes, stderr).
pub fn quarry(args: &[&str]) -> (i32, Vec<u8>, String) {
    let out = command().args(args).output().expect("run quarry");
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes a file in a fixture tree, creating directories.
pub fn put(root: &Path, path: &str, content: &str) {
    let p = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

/// A mount (e.g. a bind mount over /proc/PID), lazily unmounted on drop.
pub struct MountGuard(pub PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

/// Restores /etc/ld.so.preload (or its absence) on drop; declare it after the
/// guard of the library it names, so it is restored before the library goes.
pub struct PreloadGuard(pub Option<Vec<u8>>);

impl PreloadGuard {
    /// Remembers the current /etc/ld.so.preload.
    pub fn save() -> PreloadGuard {
        PreloadGuard(std::fs::read("/etc/ld.so.preload").ok())
    }
}

impl Drop for PreloadGuard {
    fn drop(&mut self) {
        let p = Path::new("/etc/ld.so.preload");
        let _ = quarry::respond::case::set_attrs(p, false, false);
        match &self.0 {
            Some(orig) => {
                let _ = std::fs::write(p, orig);
            }
            None => {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// The files every fixture root needs: CPU counters, uptime, kernel facts.
pub fn base_fixture() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    put(
        r,
        "proc/stat",
        "cpu  100 0 100 1000 0 0 0 0 0 0\ncpu0 100 0 100 1000 0 0 0 0 0 0\nbtime 1700000000\n",
    );
    put(r, "proc/uptime", "1000.0 900.0\n");
    put(r, "proc/sys/kernel/hostname", "fixture\n");
    put(r, "proc/sys/kernel/osrelease", "6.1.0-fixture\n");
    put(r, "proc/sys/kernel/pid_max", "32768\n");
    put(r, "proc/sys/kernel/tainted", "0\n");
    put(r, "proc/self/mountinfo", "");
    d
}

/// Builds the ld.so.preload readdir hider (tests/c/hider.c) into `lib`,
/// hiding processes named `hide`.
pub fn build_hider(lib: &Path, hide: &str) {
    let st = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1"])
        .arg(format!("-DHIDE=\"{hide}\""))
        .arg("-o")
        .arg(lib)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/hider.c"))
        .arg("-ldl")
        .status()
        .expect("cc");
    assert!(st.success(), "building the hider");
}

/// PIDs whose executable is `path` (deleted or not).
pub fn pids_running(path: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(l) = std::fs::read_link(format!("/proc/{pid}/exe")) {
            let l = l.to_string_lossy().into_owned();
            if l == path || l == format!("{path} (deleted)") {
                out.push(pid);
            }
        }
    }
    out
}

/// Runs `quarry fix ARGS` with extra environment; its status and output.
pub fn fix(args: &[&str], env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let out = command()
        .arg("fix")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text)
}
