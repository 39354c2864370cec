//! `twin`: the Twinbench command line.
//!
//! * `twin run` (the default): the live twin, paced to the wall clock.
//! * `twin scenario <PATH>...`: run scenario files deterministically; exit 0 when all pass,
//!   1 when an expectation fails, 2 on invalid input.
//! * `twin console pdu --ready-file F`: a running twin's console on stdin/stdout.
//! * `twin sweep <PATH>... --seeds N`: rerun swept tests with fault schedules drawn from each
//!   seed; exit 0 when no run fails, 1 when one does, 2 on invalid input.
//! * `twin sweep-merge SHARD.json...`: the shards of a sweep as one report.
//! * `twin compare --seeds N`: the pump controller's architecture options side by side.
//! * `twin bench [--smoke]`: speed and memory figures with their goals, as JSON.
//! * `twin fleet --pdus N --pumps M [--shard K/N]`: many device twins live in one process.
use std::path::PathBuf;
use std::process::ExitCode;

use std::io::IsTerminal;

use clap::{Parser, Subcommand};
use firmware_core::time::{Duration, Instant};
use sim::live;
use sim::report::progress::{Progress, Verbosity, bad, good};
use sim::scenario::{self, TestCase, duration::parse_duration, report, run, suite};

#[derive(Parser)]
#[command(
    name = "twin",
    version,
    about = "Twinbench: a digital twin for the pump controller and the ENERGIS PDU"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Print only failures and summaries (no progress bar).
    #[arg(long, short, global = true)]
    quiet: bool,
    /// Print more: every expectation's observed value, per-run detail, firmware logs at `info`.
    #[arg(long, short, global = true, conflicts_with = "quiet")]
    verbose: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the live twin, paced to the wall clock.
    Run(RunArgs),
    /// Run scenario files or folders in virtual time.
    Scenario(ScenarioArgs),
    /// Rerun scenario tests that declare a `[test.sweep]` with fault schedules drawn from
    /// each seed; report the failure rate and how to replay each failure.
    Sweep(sim::scenario::sweep::SweepArgs),
    /// Merge the JSON reports of a sweep's shards into the report of the whole sweep.
    SweepMerge(sim::scenario::sweep::MergeArgs),
    /// Talk to a running twin's console on stdin/stdout (`twin console pdu --ready-file F`).
    Console(ConsoleArgs),
    /// Compare the pump controller's architecture options across seeds.
    Compare(sim::devices::pump::compare::CompareArgs),
    /// Measure speed and memory against the goals (JSON on stdout).
    Bench(sim::bench::BenchArgs),
    /// Run many independent device twins live in one process (one shard of a fleet).
    Fleet(live::fleet::FleetArgs),
}

#[derive(clap::Args)]
struct ConsoleArgs {
    /// The twin whose console to attach (`pdu`).
    twin: String,
    /// The ready file the running twin wrote (`twin run --ready-file`).
    #[arg(long, conflicts_with = "path")]
    ready_file: Option<PathBuf>,
    /// The console's pseudo-terminal, as printed by `twin run`.
    #[arg(long)]
    path: Option<PathBuf>,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Virtual seconds per wall second (0.1 … 100).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Stop after this much virtual time (e.g. `30s`); default: run until Ctrl-C.
    #[arg(long)]
    duration: Option<String>,
    /// Seed for every random choice.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Which twins to run (repeatable); default: every device twin (the kernel demo when
    /// there is none).
    #[arg(long = "twin")]
    twins: Vec<String>,
    /// Address every service binds to.
    #[arg(long, default_value = "127.0.0.1")]
    bind: std::net::IpAddr,
    /// Added to every default port, so several twins can run side by side.
    #[arg(long, default_value_t = 0)]
    port_offset: u16,
    /// Bind every service to a free port (the ready file says which).
    #[arg(long)]
    ephemeral_ports: bool,
    /// Write the services' addresses here as JSON once all are listening.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Keep device state (EEPROM images) here between runs.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Use this MQTT broker (`mqtt://host:port`) instead of the embedded one.
    #[arg(long)]
    broker: Option<String>,
    /// Pump controller architecture: option1, option2 or option3.
    #[arg(long)]
    arch: Option<String>,
    /// The embedded MQTT broker requires this user name and password, and the pump twin logs
    /// in with them (docs/security.md).
    #[arg(long, value_name = "USER:PASS", value_parser = live::MqttAuth::parse)]
    mqtt_auth: Option<live::MqttAuth>,
    /// Print core utilisation every virtual second.
    #[arg(long)]
    stats: bool,
    /// Write the run's timeline as a Chrome/Perfetto trace-event file (streamed while it runs).
    #[arg(long)]
    trace: Option<PathBuf>,
}

impl Default for RunArgs {
    fn default() -> Self {
        RunArgs {
            speed: 1.0,
            duration: None,
            seed: 0,
            twins: Vec::new(),
            bind: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            port_offset: 0,
            ephemeral_ports: false,
            ready_file: None,
            state_dir: None,
            broker: None,
            arch: None,
            mqtt_auth: None,
            stats: false,
            trace: None,
        }
    }
}

#[derive(clap::Args)]
struct ScenarioArgs {
    /// Scenario files or folders (searched for `*.toml`).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Override every test's seed (a swept test also draws its fault schedule from it).
    #[arg(long)]
    seed: Option<u64>,
    /// Write a JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write JUnit XML here.
    #[arg(long)]
    junit: Option<PathBuf>,
    /// Run only this test (`test` or `test/variant`), or else the tests whose names contain
    /// this text.
    #[arg(long = "test")]
    filter: Option<String>,
    /// Run this many tests at once (results are printed in file order all the same).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Write the run's timeline as a Chrome/Perfetto trace-event file (several tests: one file
    /// each, named after the test next to this path).
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Write one self-contained HTML page per run, with plots, and an index, into this folder.
    #[arg(long)]
    report: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Scenario and comparison runs record what the firmware logs in their trace already;
    // printing it too would bury the report. `RUST_LOG` still overrides.
    // rumqttd logs a client that connects and hangs up (a port probe) as an error: not news.
    let verbosity = Verbosity::from_flags(cli.quiet, cli.verbose);
    let default_filter = match (&cli.command, verbosity) {
        (
            Some(
                Command::Scenario(_) | Command::Sweep(_) | Command::Compare(_) | Command::Bench(_),
            ),
            Verbosity::Verbose,
        ) => "info",
        (
            Some(
                Command::Scenario(_)
                | Command::Sweep(_)
                | Command::SweepMerge(_)
                | Command::Compare(_)
                | Command::Bench(_),
            ),
            _,
        ) => "off",
        (_, Verbosity::Verbose) => "info,rumqttd=warn",
        _ => "warn,rumqttd=off",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    match cli.command.unwrap_or(Command::Run(RunArgs::default())) {
        Command::Scenario(args) => scenario_command(args, verbosity),
        Command::Sweep(args) => sweep_exit(sim::scenario::sweep::command(&args, verbosity)),
        Command::SweepMerge(args) => sweep_exit(sim::scenario::sweep::merge_command(&args)),
        Command::Compare(args) => match compare_command(&args, verbosity) {
            Ok(table) => {
                println!("{table}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Bench(args) => match sim::bench::command(&args, verbosity) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Fleet(args) => match live::fleet::command(&args) {
            Ok(report) => {
                if args.json.is_none() {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&report).unwrap_or_default()
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("twin fleet: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Console(args) => match console_command(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Run(args) => match run_command(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("twin run: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}

fn sweep_exit(r: Result<sim::scenario::sweep::Outcome, String>) -> ExitCode {
    use sim::scenario::sweep::Outcome;
    match r {
        Ok(Outcome::Passed) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn scenario_command(args: ScenarioArgs, verbosity: Verbosity) -> ExitCode {
    // Load and check everything first: an invalid file means nothing runs.
    let mut cases: Vec<TestCase> = Vec::new();
    let mut files: Vec<PathBuf> = Vec::new();
    let mut invalid = false;
    for path in &args.paths {
        let found = match scenario::collect_files(path) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("error: {}: {e}", path.display());
                invalid = true;
                continue;
            }
        };
        for file in found {
            match scenario::load_file_seeded(&file, args.seed) {
                Ok(c) => {
                    cases.extend(c);
                    files.push(file);
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    invalid = true;
                }
            }
        }
    }
    if invalid {
        eprintln!("no scenario was run: fix the files above first");
        return ExitCode::from(2);
    }
    if let Some(filter) = &args.filter {
        // An exact name picks that test alone (not its variants); otherwise a substring.
        let exact = cases.iter().any(|c| c.full_name() == *filter);
        cases.retain(|c| {
            let name = c.full_name();
            if exact {
                name == *filter
            } else {
                name.contains(filter.as_str())
            }
        });
        if cases.is_empty() {
            eprintln!("error: no test name contains `{filter}`");
            return ExitCode::from(2);
        }
    }
    if let Some(dir) = &args.report
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        eprintln!("error: cannot create {}: {e}", dir.display());
        return ExitCode::from(2);
    }
    let options = suite::SuiteOptions {
        seed: args.seed,
        jobs: args.jobs.max(1),
        trace: args.trace.clone(),
        report: args.report.clone(),
    };
    // Workers reload the files and must see the same cases: they keep exactly these.
    let wanted: Vec<(PathBuf, String)> = cases
        .iter()
        .map(|c| (c.file.clone(), c.full_name()))
        .collect();
    let mut progress = Progress::new(cases.len() as u64, "scenarios", verbosity);
    let mut write_failed = false;
    let finished = run_selected(&files, &cases, &wanted, &options, |case, f| {
        let r = &f.result;
        for e in &f.write_errors {
            eprintln!("error: {e}");
            write_failed = true;
        }
        let tag = match (r.passed, case.is_variant()) {
            (true, false) => good("ok  "),
            (true, true) => good("ok  (variant caught)"),
            (false, _) => bad("FAIL"),
        };
        if !r.passed || verbosity > Verbosity::Quiet {
            progress.line(&format!(
                "{tag} {} :: {}  [{} ms virtual, {} ms wall, seed {}, trace {:016x}]",
                case.file.display(),
                r.name,
                r.virtual_ms,
                r.wall_ms,
                r.seed,
                r.trace_hash
            ));
        }
        if verbosity == Verbosity::Verbose {
            for v in &r.verdicts {
                progress.line(&format!(
                    "       {} {}: {}",
                    if v.passed { "held" } else { "FAILED" },
                    v.label,
                    v.observed
                ));
            }
        }
        if !r.passed {
            progress.line(&report::explain_failure(case, r));
        }
        progress.step(&r.name);
    });
    progress.finish();
    let failed = finished.iter().filter(|f| !f.result.passed).count();
    println!("{} passed, {} failed", finished.len() - failed, failed);
    let write = |path: &PathBuf, text: String| {
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("error: cannot write {}: {e}", path.display());
            false
        } else {
            true
        }
    };
    let mut ok = !write_failed;
    let runs: Vec<(&TestCase, &run::TestResult)> = finished
        .iter()
        .filter_map(|f| Some((cases.get(f.index)?, &f.result)))
        .collect();
    if let Some(p) = &args.json {
        let text = serde_json::to_string_pretty(&report::json_report(&runs)).unwrap_or_default();
        ok &= write(p, text);
    }
    if let Some(p) = &args.junit {
        ok &= write(p, report::junit_report(&runs));
    }
    if let Some(dir) = &args.report {
        match suite::write_index(dir, &cases, &finished) {
            Ok(()) => {
                if verbosity > Verbosity::Quiet {
                    println!("report: {}", dir.join("index.html").display());
                }
            }
            Err(e) => {
                eprintln!(
                    "error: cannot write {}: {e}",
                    dir.join("index.html").display()
                );
                ok = false;
            }
        }
    }
    if !ok {
        ExitCode::from(2)
    } else if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Run the `wanted` tests of `files` (`cases` holds exactly those, in file order).
fn run_selected(
    files: &[PathBuf],
    cases: &[TestCase],
    wanted: &[(PathBuf, String)],
    options: &suite::SuiteOptions,
    done: impl FnMut(&TestCase, &suite::Finished),
) -> Vec<suite::Finished> {
    suite::run_suite(files, cases, wanted, options, done)
}

fn compare_command(
    args: &sim::devices::pump::compare::CompareArgs,
    verbosity: Verbosity,
) -> Result<String, sim::devices::pump::compare::CompareError> {
    use sim::devices::pump::{Arch, compare};
    let runs = args.seeds.saturating_mul(Arch::ALL.len() as u64);
    let mut progress = Progress::new(runs, "runs", verbosity).with_plain_steps();
    let (md, summary) = compare::command_with(args, &mut |label| progress.step(label))?;
    progress.finish();
    // The same table with a plot per metric, beside the Markdown and JSON.
    let options: Vec<&str> = Arch::ALL.iter().map(|a| a.name()).collect();
    let rows: Vec<Vec<(f64, f64)>> = summary.iter().map(|o| o.to_vec()).collect();
    let html = sim::report::html::compare_page(
        "Pump controller: architecture options compared",
        &compare::METRICS,
        &options,
        &rows,
    );
    let path = args.out.join("architecture-comparison.html");
    std::fs::write(&path, html).map_err(|source| compare::CompareError::Write {
        path: path.clone(),
        source,
    })?;
    if verbosity == Verbosity::Verbose {
        eprintln!("compare: wrote {}", args.out.display());
    }
    Ok(md)
}

fn console_command(args: ConsoleArgs) -> anyhow::Result<()> {
    use sim::devices::pdu::live::{attach_console, console_from_ready_file};
    if args.twin != "pdu" {
        anyhow::bail!("no console for twin `{}` (consoles: pdu)", args.twin);
    }
    let path = match (args.path, args.ready_file) {
        (Some(p), _) => p,
        (None, Some(ready)) => console_from_ready_file(&ready)?,
        (None, None) => anyhow::bail!("give --ready-file FILE or --path /dev/pts/N"),
    };
    attach_console(&path)
}

fn run_command(args: RunArgs) -> anyhow::Result<()> {
    if !sim::kernel::pacing::SPEED_RANGE.contains(&args.speed) {
        anyhow::bail!("--speed must be between 0.1 and 100");
    }
    let until = match &args.duration {
        Some(d) => Some(Instant::ZERO + parse_duration(d).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let all = live::twins();
    let known: Vec<&str> = all.iter().map(|t| t.name()).collect();
    for t in &args.twins {
        if !known.contains(&t.as_str()) {
            anyhow::bail!("no twin `{t}` (twins: {})", known.join(", "));
        }
    }
    let device_twins = all.iter().filter(|t| t.name() != "demo").count();
    let chosen: Vec<_> = all
        .into_iter()
        .filter(|t| {
            if args.twins.is_empty() {
                (t.name() == "demo") == (device_twins == 0)
            } else {
                args.twins.iter().any(|n| n == t.name())
            }
        })
        .collect();
    let options = live::LiveOptions {
        bind: args.bind,
        port_offset: args.port_offset,
        ephemeral_ports: args.ephemeral_ports,
        ready_file: args.ready_file,
        state_dir: args.state_dir,
        speed: args.speed,
        seed: args.seed,
        broker: args.broker,
        arch: args.arch,
        mqtt_auth: args.mqtt_auth,
    };
    live::run_traced(
        options,
        chosen,
        until,
        args.stats.then(|| Duration::from_secs(1)),
        args.trace.as_deref(),
    )
}
