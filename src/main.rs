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
    /// Run only these checks (comma-separated): cpu, miner, hidden, preload, modules.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<scan::Check>,
    /// Extra rules files (TOML, docs/RULES.md), added to the built-in rules.
    #[arg(long = "rules", value_name = "FILE")]
    rules: Vec<PathBuf>,
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
    let host = Host::new(&a.root);
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
        ..ScanOptions::default()
    };
    let report = scan::run(&host, &rules, &opts)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match a.format {
        Format::Json => report::write_json(&mut out, &report)?,
        Format::Text => {
            let color = match a.color {
                ColorChoice::Always => true,
                ColorChoice::Never => false,
                ColorChoice::Auto => {
                    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
                }
            };
            report::write_text(&mut out, &report, color)?
        }
    }
    out.flush()?;
    let fail = report.findings.iter().any(|f| f.severity >= a.fail_on);
    Ok(u8::from(fail))
}

/// `quarry rules`.
fn cmd_rules(files: Vec<PathBuf>) -> anyhow::Result<u8> {
    if files.is_empty() {
        print!("{}", quarry::rules::DEFAULT_RULES);
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
