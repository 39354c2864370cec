//! `twin`: the Twinbench command line.
//!
//! * `twin run` (the default): the live twin, paced to the wall clock.
//! * `twin scenario <PATH>...`: run scenario files deterministically; exit 0 when all pass,
//!   1 when an expectation fails, 2 on invalid input.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use firmware_core::time::{Duration, Instant};
use sim::kernel::{Kernel, Pacing};
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
}

#[derive(clap::Args, Default)]
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
    /// Run the devices of this scenario file's first test instead of the built-in demo.
    #[arg(long)]
    scenario: Option<PathBuf>,
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run(RunArgs {
        speed: 1.0,
        ..RunArgs::default()
    })) {
        Command::Scenario(args) => scenario_command(args),
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

const DEMO: &str = r#"
[[test]]
name = "live demo"
duration = "1h"
[test.devices.demo]
kind = "demo.cores"
cores = ["core0", "core1"]
[[test.devices.demo.task]]
name = "control"
core = "core0"
priority = 9
period = "10ms"
cost = "500us"
[[test.devices.demo.task]]
name = "network"
core = "core0"
priority = 1
period = "100ms"
cost = "20ms"
[[test.devices.demo.task]]
name = "ui"
core = "core1"
priority = 5
period = "50ms"
cost = "5ms"
[[test.expect]]
state = "kernel.core.demo.core0.busy_us"
min = 0
"#;

fn run_command(args: RunArgs) -> anyhow::Result<()> {
    if !(0.1..=100.0).contains(&args.speed) {
        anyhow::bail!("--speed must be between 0.1 and 100");
    }
    let case = match &args.scenario {
        Some(path) => scenario::load_file(path)?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("no test in {}", path.display()))?,
        None => scenario::load_str(std::path::Path::new("<built-in demo>"), DEMO)?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("built-in demo has no test"))?,
    };
    let until = match &args.duration {
        Some(d) => Instant::ZERO + parse_duration(d).map_err(anyhow::Error::msg)?,
        None => Instant::MAX,
    };
    let mut kernel = Kernel::new(args.seed);
    kernel.set_pacing(Pacing::Live { speed: args.speed });
    let mut devices = Vec::new();
    for (name, spec) in &case.devices {
        devices.push(spec.build(name, &mut kernel));
    }
    println!(
        "Twinbench live twin: {} device(s) [{}], speed {}x, seed {}. Ctrl-C stops.",
        case.devices.len(),
        case.devices
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        args.speed,
        args.seed
    );
    let mut next_report = Duration::from_secs(1);
    loop {
        let t = Instant::ZERO + next_report;
        let stop = t >= until;
        kernel.run_until(if stop { until } else { t });
        let since = Instant::from_micros(kernel.now().as_micros().saturating_sub(1_000_000));
        let cores: Vec<String> = kernel
            .core_stats()
            .iter()
            .map(|c| {
                format!(
                    "{} {:>5.1}%",
                    c.name,
                    100.0 * c.utilisation(since, kernel.now())
                )
            })
            .collect();
        println!(
            "[{:>10}] {}",
            Duration::from_micros(kernel.now().as_micros()),
            cores.join("  ")
        );
        if stop {
            return Ok(());
        }
        next_report = next_report + Duration::from_secs(1);
    }
}
