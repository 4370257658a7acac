//! The `quarry` command: a small dispatch over the library.
//!
//! Exit codes follow grep's convention: 0 when nothing at or above `--fail-on`
//! was found, 1 when something was, 2 on error.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use quarry::detect::Severity;
use quarry::host::Host;
use quarry::report::{self, ColorChoice, Format};
use quarry::rules::Rules;
use quarry::scan::{self, ScanOptions};

/// Quarry: what is eating the CPU, is it a cryptominer, is something hiding it.
#[derive(Parser)]
#[command(name = "quarry", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sample the CPU, judge every process, and report miners with evidence.
    Scan(ScanArgs),
    /// Check a rules file (or print the built-in rules).
    Rules {
        /// Rules files to check; with none, print the built-in rules.
        files: Vec<PathBuf>,
    },
    /// Remove what the scan found, for good: a dry run unless --yes.
    Fix(FixArgs),
    /// Put back everything a fix removed or changed (a case id or folder).
    Restore {
        /// Case id (from `quarry cases`), found under --case-root only.
        case: String,
        /// Folder that holds cases.
        #[arg(long, default_value = quarry::respond::case::DEFAULT_CASE_ROOT)]
        case_root: PathBuf,
    },
    /// Keep watching: light sampling, full scans on triggers, JSON lines and Prometheus metrics.
    Watch(WatchArgs),
    /// Print the man page or shell completions (for packaging).
    #[command(hide = true)]
    Generate {
        /// man, bash, zsh or fish.
        #[arg(value_enum)]
        what: Generated,
    },
    /// List the cases fixes created.
    Cases {
        /// Folder that holds cases.
        #[arg(long, default_value = quarry::respond::case::DEFAULT_CASE_ROOT)]
        case_root: PathBuf,
    },
}

#[derive(clap::Args)]
struct FixArgs {
    /// Carry out the plan (without it, only print it).
    #[arg(long)]
    yes: bool,
    /// Act only on these findings: PIDs, rule ids, rule prefixes or file paths (comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Also act on findings that are only suspicious or not proven, on package-owned and system files, and on plans over 25 files.
    #[arg(long)]
    force: bool,
    /// Processes and files never to touch (TOML; default /etc/quarry/allowlist.toml if present).
    #[arg(long)]
    allowlist: Option<PathBuf>,
    /// Folder that holds cases.
    #[arg(long, default_value = quarry::respond::case::DEFAULT_CASE_ROOT)]
    case_root: PathBuf,
    /// Sampling interval of the scans, in seconds.
    #[arg(long, default_value_t = 1.0, value_parser = parse_interval)]
    interval: f64,
    /// Extra rules files.
    #[arg(long = "rules", value_name = "FILE")]
    rules: Vec<PathBuf>,
    /// YARA rule files or folders of .yar/.yara files (repeatable), added to the built-in content signatures.
    #[arg(long = "yara", value_name = "FILE|DIR")]
    yara: Vec<PathBuf>,
    /// Deadline of the scan fix acts on, in seconds (0: none); what it did
    /// not finish is said, and fix acts only on what was judged.
    #[arg(long, default_value_t = 60.0, value_parser = parse_timeout)]
    timeout: f64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Exit 1 when the scan after the fix still finds something at or above this.
    #[arg(long, default_value = "high")]
    fail_on: Severity,
}

/// What `quarry generate` prints.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Generated {
    Man,
    Bash,
    Zsh,
    Fish,
}

/// Prints the man page (clap_mangen) or a shell's completions (clap_complete),
/// generated from the same clap definitions as `--help`, so they never drift.
fn cmd_generate(what: Generated) -> anyhow::Result<u8> {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    let mut out = std::io::stdout().lock();
    match what {
        Generated::Man => clap_mangen::Man::new(cmd).render(&mut out)?,
        Generated::Bash => {
            clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, "quarry", &mut out)
        }
        Generated::Zsh => {
            clap_complete::generate(clap_complete::Shell::Zsh, &mut cmd, "quarry", &mut out)
        }
        Generated::Fish => {
            clap_complete::generate(clap_complete::Shell::Fish, &mut cmd, "quarry", &mut out)
        }
    }
    Ok(0)
}

#[derive(clap::Args)]
struct WatchArgs {
    /// Root directory of the machine (a container with the host's root at /host and hostPID: --root /host).
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Seconds between light samples (/proc/stat, each process's stat, new processes).
    #[arg(long, default_value_t = 5.0, value_parser = parse_interval)]
    interval: f64,
    /// Machine CPU busy share (%) that, held for --sustain, triggers a full scan.
    #[arg(long, default_value_t = 70.0)]
    cpu_threshold: f64,
    /// Seconds the CPU must stay at or above --cpu-threshold before a full scan.
    #[arg(long, default_value_t = 60.0, value_parser = parse_interval)]
    sustain: f64,
    /// Seconds between deep scans (hidden-process sweep and module walk).
    #[arg(long, default_value_t = 3600.0, value_parser = parse_seconds)]
    deep_every: f64,
    /// While findings are open, seconds between scans that can clear them.
    #[arg(long, default_value_t = 30.0, value_parser = parse_interval)]
    recheck: f64,
    /// CPU sample of each full scan, in seconds.
    #[arg(long, default_value_t = 1.0, value_parser = parse_interval)]
    scan_interval: f64,
    /// Address of the Prometheus endpoint (GET /metrics), or "none".
    #[arg(long, default_value = "127.0.0.1:9745")]
    metrics_addr: String,
    /// Root-only folder that remembers what was reported (survives restarts).
    #[arg(long, default_value = "/var/lib/quarry/watch")]
    state_dir: PathBuf,
    /// Findings below this severity are counted in metrics but not emitted as events.
    #[arg(long, default_value = "low")]
    min_severity: Severity,
    /// Extra rules files (TOML, docs/RULES.md).
    #[arg(long = "rules", value_name = "FILE")]
    rules: Vec<PathBuf>,
    /// YARA rule files or folders (repeatable), added to the built-in content signatures.
    #[arg(long = "yara", value_name = "FILE|DIR")]
    yara: Vec<PathBuf>,
}

#[derive(clap::Args)]
struct ScanArgs {
    /// Root directory of the machine to inspect (a fixture tree or a mounted disk).
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Sampling interval in seconds.
    #[arg(long, default_value_t = 1.0, value_parser = parse_interval)]
    interval: f64,
    /// Machine CPU busy share (%) at which the CPU is called abnormal.
    #[arg(long, default_value_t = 70.0)]
    cpu_threshold: f64,
    /// How many top CPU consumers to show.
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Colour: auto (only on a terminal), always, never.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    color: ColorChoice,
    /// Exit 1 when a finding at or above this severity is found.
    #[arg(long, default_value = "high")]
    fail_on: Severity,
    /// Where to look for kernel module files (repeatable; replaces the default list).
    #[arg(long = "module-path", value_name = "DIR")]
    module_paths: Vec<String>,
    /// Run only these checks (comma-separated): cpu, miner, hidden, preload, modules, persistence.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<scan::Check>,
    /// Extra rules files (TOML, docs/RULES.md), added to the built-in rules.
    #[arg(long = "rules", value_name = "FILE")]
    rules: Vec<PathBuf>,
    /// YARA rule files or folders of .yar/.yara files (repeatable), added to the built-in content signatures.
    #[arg(long = "yara", value_name = "FILE|DIR")]
    yara: Vec<PathBuf>,
    /// Whole-scan deadline in seconds (0: none). Stages not begun by then are
    /// skipped and the report says what was not finished.
    #[arg(long, default_value_t = 60.0, value_parser = parse_timeout)]
    timeout: f64,
    /// Also read the rootkit views when nothing points at a rootkit: ask the
    /// kernel's PID allocator about every PID no view explains (clone3
    /// set_tid; about 4 µs per PID) and read the scheduler's task list.
    #[arg(long)]
    deep: bool,
}

/// The built-in and the user's YARA rules, compiled before the scan so that a
/// bad rule file stops Quarry with its file:line:col (`None` without `--yara`:
/// the scan compiles the built-in rules only if a process needs them).
fn user_signatures(
    paths: &[PathBuf],
) -> anyhow::Result<Option<std::sync::Arc<quarry::collect::signatures::Signatures>>> {
    if paths.is_empty() {
        return Ok(None);
    }
    let s = quarry::collect::signatures::Signatures::compile(paths)
        .map_err(|e| anyhow::anyhow!("--yara: {e}"))?;
    Ok(Some(std::sync::Arc::new(s)))
}

/// A number of seconds up to a week (for --deep-every).
fn parse_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(1.0..=604_800.0).contains(&v) {
        return Err("must be between 1 and 604800 seconds".into());
    }
    Ok(v)
}

/// `quarry watch`: runs until SIGTERM or SIGINT, then exits 0.
fn cmd_watch(a: &WatchArgs) -> anyhow::Result<u8> {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let rules = load_rules(&a.rules)?;
    let metrics_addr = match a.metrics_addr.as_str() {
        "none" => None,
        s => Some(
            s.parse()
                .map_err(|e| anyhow::anyhow!("--metrics-addr {s:?}: {e} (an IP:port, or none)"))?,
        ),
    };
    let opts = quarry::watch::WatchOptions {
        interval: Duration::from_secs_f64(a.interval.max(0.1)),
        cpu_threshold: a.cpu_threshold,
        sustain: Duration::from_secs_f64(a.sustain),
        deep_every: Duration::from_secs_f64(a.deep_every),
        recheck: Duration::from_secs_f64(a.recheck.max(1.0)),
        scan_interval: Duration::from_secs_f64(a.scan_interval),
        metrics_addr,
        state_dir: a.state_dir.clone(),
        min_severity: a.min_severity,
        scan: ScanOptions {
            signatures: user_signatures(&a.yara)?,
            // Nobody waits on watch's scans, but a stuck one must end:
            // well inside the QuarryScanStuck alert's 10 minutes.
            timeout: Some(Duration::from_secs(300)),
            ..ScanOptions::default()
        },
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    quarry::watch::run(
        &Host::open(&a.root),
        &rules,
        &opts,
        stop,
        std::io::stdout().lock(),
    )?;
    Ok(0)
}

/// A `--timeout` in seconds: 0 (none) up to a day.
fn parse_timeout(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(0.0..=86_400.0).contains(&v) {
        return Err("must be between 0 (no deadline) and 86400 seconds".into());
    }
    Ok(v)
}

/// The scan deadline a `--timeout` asks for.
fn timeout(secs: f64) -> Option<Duration> {
    (secs > 0.0).then(|| Duration::from_secs_f64(secs))
}

fn parse_interval(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(0.0..=3600.0).contains(&v) {
        return Err("the interval must be between 0 and 3600 seconds".into());
    }
    Ok(v)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "quarry: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Scan(args) => cmd_scan(args),
        Command::Rules { files } => cmd_rules(files),
        Command::Fix(a) => cmd_fix(a),
        Command::Restore { case, case_root } => cmd_restore(&case, &case_root),
        Command::Watch(a) => cmd_watch(&a),
        Command::Generate { what } => cmd_generate(what),
        Command::Cases { case_root } => {
            let lines = quarry::respond::cases(&case_root);
            if lines.is_empty() {
                println!("no cases in {}", case_root.display());
            }
            for l in lines {
                println!("{l}");
            }
            Ok(0)
        }
    }
}

fn load_rules(files: &[PathBuf]) -> anyhow::Result<Rules> {
    let mut rules = Rules::builtin();
    for f in files {
        rules.add_file(f)?;
    }
    Ok(rules)
}

/// `quarry scan`.
fn cmd_scan(a: ScanArgs) -> anyhow::Result<u8> {
    let rules = load_rules(&a.rules)?;
    let host = Host::open(&a.root);
    if !host.path("/proc/stat").exists() {
        anyhow::bail!(
            "{} has no proc/stat: not a Linux root directory (or /proc is not mounted there)",
            a.root.display()
        );
    }
    let opts = ScanOptions {
        interval: Duration::from_secs_f64(a.interval),
        cpu_threshold: a.cpu_threshold,
        top: a.top,
        checks: if a.only.is_empty() {
            scan::Check::ALL.to_vec()
        } else {
            a.only.clone()
        },
        module_roots: if a.module_paths.is_empty() {
            ScanOptions::default().module_roots
        } else {
            a.module_paths.clone()
        },
        signatures: user_signatures(&a.yara)?,
        deep: a.deep,
        timeout: timeout(a.timeout),
        ..ScanOptions::default()
    };
    let report = scan::run(&host, &rules, &opts)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let written = match a.format {
        Format::Json => report::write_json(&mut out, &report),
        Format::Text => {
            let color = match a.color {
                ColorChoice::Always => true,
                ColorChoice::Never => false,
                ColorChoice::Auto => {
                    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
                }
            };
            report::write_text(&mut out, &report, color)
        }
    }
    .and_then(|()| out.flush());
    // A reader that stopped reading (`quarry scan | head`) ends the output,
    // not the verdict: the exit code still says what was found.
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other?,
    }
    let fail = report.findings.iter().any(|f| f.severity >= a.fail_on);
    Ok(u8::from(fail))
}

/// `quarry rules`.
fn cmd_rules(files: Vec<PathBuf>) -> anyhow::Result<u8> {
    if files.is_empty() {
        print!("{}", quarry::rules::default_rules());
        return Ok(0);
    }
    let rules = load_rules(&files)?;
    println!(
        "ok: {} indicators ({} built in)",
        rules.indicators.len(),
        Rules::builtin().indicators.len()
    );
    Ok(0)
}

/// `quarry fix`.
fn cmd_fix(a: FixArgs) -> anyhow::Result<u8> {
    use quarry::respond;
    if !rustix::process::geteuid().is_root() {
        anyhow::bail!("quarry fix needs root: it stops processes and moves files (run `quarry scan` to look without changing anything)");
    }
    let rules = load_rules(&a.rules)?;
    let allowlist = match &a.allowlist {
        Some(p) => respond::Allowlist::load(p)?,
        None if std::path::Path::new("/etc/quarry/allowlist.toml").exists() => {
            respond::Allowlist::load(std::path::Path::new("/etc/quarry/allowlist.toml"))?
        }
        None => respond::Allowlist::default(),
    };
    let host = Host::default();
    let opts = ScanOptions {
        interval: Duration::from_secs_f64(a.interval),
        pin_files: true,
        signatures: user_signatures(&a.yara)?,
        timeout: timeout(a.timeout),
        ..ScanOptions::default()
    };
    let (report, snap) = scan::run_full(&host, &rules, &opts)?;
    let fix_opts = respond::FixOptions {
        only: a.only.clone(),
        force: a.force,
        allowlist,
    };
    let plan = respond::plan(&host, &report.findings, &snap, &fix_opts);
    let json = a.format == Format::Json;
    if !json {
        print!("{}", respond::describe(&plan));
    }
    if !a.yes || plan.is_empty() {
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({ "plan": plan, "dry_run": true })
                )?
            );
        } else if !plan.is_empty() {
            println!(
                "\nDry run: nothing was changed. Run again with --yes to carry out this plan."
            );
        }
        return Ok(u8::from(!plan.is_empty()));
    }
    let outcome = respond::execute(&host, &plan, &a.case_root, &report)?;
    if !json {
        println!("\nDone in {:.1} ms ({}):", outcome.act_ms, outcome.case_dir);
        for d in &outcome.done {
            println!("  ok: {d}");
        }
        for f in &outcome.failed {
            println!("  FAILED: {f}");
        }
        for f in &outcome.skipped {
            println!("  not touched: {f}");
        }
    }
    // Verify: give restarters a chance to show themselves, then scan again.
    std::thread::sleep(Duration::from_secs(2));
    let after = scan::run(&host, &rules, &opts)?;
    respond::case::add_file(
        &a.case_root,
        &outcome.case_id,
        "scan-after.json",
        &serde_json::to_vec_pretty(&after)?,
    )?;
    // What this fix would act on again is what it failed to remove; other
    // findings are outside its scope and only listed.
    let (remaining, outside): (Vec<&quarry::detect::Finding>, Vec<_>) = after
        .findings
        .iter()
        .filter(|f| f.severity >= a.fail_on)
        .partition(|f| respond::plan::in_scope(f, &fix_opts));
    let respawned: Vec<String> = plan
        .processes
        .iter()
        .filter(|p| !p.exe.as_bytes().is_empty())
        .filter_map(|p| {
            let exe = p.exe.display();
            let running: Vec<i32> = after
                .top
                .iter()
                .filter(|t| {
                    t.exe.as_deref().map(|e| e.trim_end_matches(" (deleted)")) == Some(exe.as_str())
                })
                .map(|t| t.pid)
                .collect();
            (!running.is_empty()).then(|| format!("{exe} is running again as PID {running:?}"))
        })
        .collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "plan": plan, "dry_run": false, "outcome": outcome,
                "remaining": remaining, "respawned": respawned,
                "outside_scope": outside,
            }))?
        );
    } else {
        println!(
            "\nScan after the fix: {} finding(s) at or above {} in its scope",
            remaining.len(),
            a.fail_on
        );
        for f in &remaining {
            println!(
                "  {} {}  [{}]",
                f.severity.as_str().to_uppercase(),
                f.title,
                f.rule
            );
        }
        for r in &respawned {
            println!("  RESPAWNED: {r}");
        }
        if !outside.is_empty() {
            println!(
                "  ({} other finding(s) at or above {} are outside this fix's scope: see `quarry scan`)",
                outside.len(),
                a.fail_on
            );
        }
        if a.case_root == std::path::Path::new(quarry::respond::case::DEFAULT_CASE_ROOT) {
            println!("Undo everything with: quarry restore {}", outcome.case_id);
        } else {
            println!(
                "Undo everything with: quarry restore --case-root {} {}",
                a.case_root.display(),
                outcome.case_id
            );
        }
    }
    Ok(u8::from(
        !remaining.is_empty() || !respawned.is_empty() || !outcome.failed.is_empty(),
    ))
}

/// `quarry restore`: a case is found by id under the case root, never in
/// the current directory (a folder anyone can write there is not a case).
fn cmd_restore(case: &str, root: &std::path::Path) -> anyhow::Result<u8> {
    if !rustix::process::geteuid().is_root() {
        anyhow::bail!("quarry restore needs root: it puts back files with their owners");
    }
    let id = match case.rsplit_once('/') {
        // A full path is accepted only when it names a case under the root.
        Some((dir, id)) if std::path::Path::new(dir) == root => id,
        Some(_) => anyhow::bail!(
            "{}: cases are found by id under {} (use --case-root for another root; `quarry cases` lists them)",
            quarry::escape::escape(case.as_bytes()),
            root.display()
        ),
        None => case,
    };
    for line in quarry::respond::restore(root, id)? {
        println!("{line}");
    }
    Ok(0)
}
