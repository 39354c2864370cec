//! `twin`: the Twinbench command line.
//!
//! * `twin run` (the default): the live twin, paced to the wall clock.
//! * `twin scenario <PATH>...`: run scenario files deterministically; exit 0 when all pass,
//!   1 when an expectation fails, 2 on invalid input.
//! * `twin console pdu --ready-file F`: a running twin's console on stdin/stdout.
//! * `twin compare --seeds N`: the pump controller's architecture options side by side.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use firmware_core::time::{Duration, Instant};
use sim::live;
use sim::scenario::{self, TestCase, duration::parse_duration, report, run};

#[derive(Parser)]
#[command(
    name = "twin",
    version,
    about = "Twinbench: a digital twin for the pump controller and the ENERGIS PDU"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the live twin, paced to the wall clock.
    Run(RunArgs),
    /// Run scenario files or folders in virtual time.
    Scenario(ScenarioArgs),
    /// Talk to a running twin's console on stdin/stdout (`twin console pdu --ready-file F`).
    Console(ConsoleArgs),
    /// Compare the pump controller's architecture options across seeds.
    Compare(sim::devices::pump::compare::CompareArgs),
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
    /// Print core utilisation every virtual second.
    #[arg(long)]
    stats: bool,
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
            stats: false,
        }
    }
}

#[derive(clap::Args)]
struct ScenarioArgs {
    /// Scenario files or folders (searched for `*.toml`).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Override every test's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Write a JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write JUnit XML here.
    #[arg(long)]
    junit: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Scenario and comparison runs record what the firmware logs in their trace already;
    // printing it too would bury the report. `RUST_LOG` still overrides.
    // rumqttd logs a client that connects and hangs up (a port probe) as an error: not news.
    let default_filter = match cli.command {
        Some(Command::Scenario(_) | Command::Compare(_)) => "off",
        _ => "warn,rumqttd=off",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command.unwrap_or(Command::Run(RunArgs::default())) {
        Command::Scenario(args) => scenario_command(args),
        Command::Compare(args) => match sim::devices::pump::compare::command(&args) {
            Ok(table) => {
                println!("{table}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
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

fn scenario_command(args: ScenarioArgs) -> ExitCode {
    // Load and check everything first: an invalid file means nothing runs.
    let mut cases: Vec<TestCase> = Vec::new();
    let mut invalid = false;
    for path in &args.paths {
        let files = match scenario::collect_files(path) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("error: {}: {e}", path.display());
                invalid = true;
                continue;
            }
        };
        for file in files {
            match scenario::load_file(&file) {
                Ok(c) => cases.extend(c),
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
    let results = run::run_all(&cases, args.seed);
    let runs: Vec<(&TestCase, &run::TestResult)> = cases.iter().zip(&results).collect();
    for (case, r) in &runs {
        let tag = match (r.passed, case.is_variant()) {
            (true, false) => "ok  ",
            (true, true) => "ok  (variant caught)",
            (false, _) => "FAIL",
        };
        println!(
            "{tag} {} :: {}  [{} ms virtual, {} ms wall, seed {}, trace {:016x}]",
            case.file.display(),
            r.name,
            r.virtual_ms,
            r.wall_ms,
            r.seed,
            r.trace_hash
        );
        if !r.passed {
            println!("{}", report::explain_failure(case, r));
        }
    }
    let failed = results.iter().filter(|r| !r.passed).count();
    println!("{} passed, {} failed", results.len() - failed, failed);
    let write = |path: &PathBuf, text: String| {
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("error: cannot write {}: {e}", path.display());
            false
        } else {
            true
        }
    };
    let mut ok = true;
    if let Some(p) = &args.json {
        let text = serde_json::to_string_pretty(&report::json_report(&runs)).unwrap_or_default();
        ok &= write(p, text);
    }
    if let Some(p) = &args.junit {
        ok &= write(p, report::junit_report(&runs));
    }
    if !ok {
        ExitCode::from(2)
    } else if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
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
    };
    live::run(
        options,
        chosen,
        until,
        args.stats.then(|| Duration::from_secs(1)),
    )
}
