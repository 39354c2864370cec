//! `twin compare`: the three architecture options under one workload, across seeds.
//!
//! Each seed fixes a workload: WiFi background traffic (air and CPU share), WebSocket clients,
//! a series of dispense commands arriving over MQTT at random times, and one E-stop at a
//! random moment during a dose (resumed a few seconds later). The same workload runs on
//! options 1, 2 and 3 (the workload draws from its own stream, so the option never changes it).
//! Each run yields one value per metric (a per-run p50, p99, max, count or mean); the table
//! shows, per option, the mean of those values over the seeds with a 95 % confidence interval
//! (normal approximation, `1.96 · s / √n`).
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use firmware_core::time::{Duration, Instant};
use rand::Rng;

use super::{Arch, PumpDevice, PumpSpec, build};
use crate::devices::Device;
use crate::kernel::{History, Kernel, rng_for};

/// Why a comparison could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// No seeds asked for.
    #[error("--seeds must be at least 1")]
    NoSeeds,
    /// The output folder or a file in it could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// `twin compare` options.
#[derive(Debug, Clone, clap::Args)]
pub struct CompareArgs {
    /// Number of seeds (each runs all three options).
    #[arg(long, default_value_t = 20)]
    pub seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 1)]
    pub first_seed: u64,
    /// Virtual time per run, seconds.
    #[arg(long, default_value_t = 300)]
    pub seconds: u64,
    /// Folder for `architecture-comparison.json` and `.md`.
    #[arg(long, default_value = "target/compare")]
    pub out: PathBuf,
}

/// The metrics, in table order: (key, label, unit).
pub const METRICS: [(&str, &str, &str); 10] = [
    ("cmd_p50_ms", "pump-command latency p50", "ms"),
    ("cmd_p99_ms", "pump-command latency p99", "ms"),
    ("cmd_max_ms", "pump-command latency max", "ms"),
    ("estop_us", "E-stop latency (edge → `!` at FluidNC)", "µs"),
    (
        "missed",
        "missed pump-control deadlines (10 ms tick > 1 ms late)",
        "count",
    ),
    ("delivered", "MQTT messages delivered", "count"),
    (
        "dropped",
        "MQTT messages dropped (outbox + in flight)",
        "count",
    ),
    (
        "ui_lag_mean_ms",
        "UI update lag mean (pump start/stop, E-stop → WebSocket frame)",
        "ms",
    ),
    ("ui_lag_max_ms", "UI update lag max", "ms"),
    (
        "net_core_pct",
        "network core busy (WiFi MCU in option 3)",
        "%",
    ),
];

/// One run's values, in [`METRICS`] order.
pub type RunValues = [f64; METRICS.len()];

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn table(pairs: &[(&str, toml::Value)]) -> toml::Table {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// Run the workload of `seed` on `arch` for `seconds` and measure it.
pub fn run_once(arch: Arch, seed: u64, seconds: u64) -> RunValues {
    // The whole run's utilisation and series are read at the end: keep all of it.
    let mut kernel = Kernel::with_history(seed, History::ALL);
    let spec = PumpSpec::default_spec().with_arch(arch);
    let mut dev: PumpDevice = build(&spec, "cmp", &mut kernel);
    let mut rng = rng_for(seed, "compare.workload");
    let airtime = rng.random_range(0.3..0.7);
    let cpu = rng.random_range(0.3..0.7);
    let clients = rng.random_range(1..=10u32);
    let end = Instant::ZERO + Duration::from_secs(seconds);
    // The timeline: (time, action, params), sorted.
    let mut steps: Vec<(Instant, &str, toml::Table)> = vec![
        (
            Instant::from_millis(500),
            "wifi.load",
            table(&[
                ("airtime", toml::Value::Float(airtime)),
                ("cpu", toml::Value::Float(cpu)),
            ]),
        ),
        (
            Instant::from_millis(600),
            "ws.connect",
            table(&[("clients", toml::Value::Integer(i64::from(clients)))]),
        ),
    ];
    // Doses of 1–4 ml at 10 ml/min (6–24 s), a command every dose + 2–10 s.
    let mut t = Instant::from_millis(rng.random_range(1_000..3_000));
    let mut doses = Vec::new();
    while t + Duration::from_secs(30) < end {
        let pump = ["X", "Y", "Z", "A"][rng.random_range(0..4)];
        let ml = f64::from(rng.random_range(10..=40u32)) / 10.0;
        let json = format!(
            "{{\"cmd\":\"dispense\",\"pump\":\"{pump}\",\"volume_ml\":{ml},\"flow_ml_min\":10}}"
        );
        steps.push((
            t,
            "mqtt.command",
            table(&[("json", toml::Value::String(json))]),
        ));
        let dur = Duration::from_micros((ml * 6e6) as u64);
        doses.push((t, dur));
        t = t + dur + Duration::from_millis(rng.random_range(2_000..10_000));
    }
    // One E-stop inside a random dose, resumed 3 s later; the dose after it is dropped.
    if !doses.is_empty() {
        let (start, dur) = doses[rng.random_range(0..doses.len())];
        let at = start
            + Duration::from_millis(200)
            + Duration::from_micros(rng.random_range(0..dur.as_micros().max(1)));
        steps.push((at, "estop", toml::Table::new()));
        steps.push((at + Duration::from_secs(3), "resume", toml::Table::new()));
    }
    steps.sort_by_key(|s| s.0);
    for (at, verb, params) in &steps {
        kernel.run_until(*at);
        // The workload is generated valid; a refusal (queue full) is part of what is measured.
        let _ = dev.act(verb, params);
    }
    kernel.run_until(end);

    let series = |name: &str| -> Vec<f64> {
        kernel.with_trace(|t| {
            t.series(&format!("cmp.{name}"))
                .map(|s| s.iter().map(|(_, v)| *v).collect())
                .unwrap_or_default()
        })
    };
    let mut cmd = series("cmd.latency_ms");
    cmd.sort_by(f64::total_cmp);
    let estop = series("estop.latency_us");
    let lag = series("ws.lag_ms");
    let b = dev.net.broker.borrow();
    let dropped = f64::from(dev.net_fw.outbox.stats().dropped()) + b.lost as f64;
    [
        quantile(&cmd, 0.5),
        quantile(&cmd, 0.99),
        cmd.last().copied().unwrap_or(0.0),
        estop.iter().copied().fold(0.0, f64::max),
        dev.control.missed.get() as f64,
        b.delivered as f64,
        dropped,
        if lag.is_empty() {
            0.0
        } else {
            lag.iter().sum::<f64>() / lag.len() as f64
        },
        lag.iter().copied().fold(0.0, f64::max),
        kernel
            .core_stats()
            .iter()
            .find(|c| c.name == "cmp.core0" || c.name == "cmp.wifimcu")
            .map_or(0.0, |c| c.utilisation(Instant::ZERO, end) * 100.0),
    ]
}

/// Mean and 95 % half-width of `xs`.
pub fn mean_ci(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    if xs.is_empty() {
        return (0.0, 0.0);
    }
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, 1.96 * (var / n).sqrt())
}

/// The per-option results: `[option][metric] = (mean, ci)`.
pub type Summary = [[(f64, f64); METRICS.len()]; 3];

/// Run every option on every seed.
pub fn compare(first_seed: u64, seeds: u64, seconds: u64) -> Summary {
    compare_with(first_seed, seeds, seconds, &mut |_| {})
}

/// [`compare`], calling `on_run` with a label after each run (for a progress display).
pub fn compare_with(
    first_seed: u64,
    seeds: u64,
    seconds: u64,
    on_run: &mut dyn FnMut(&str),
) -> Summary {
    let mut out = [[(0.0, 0.0); METRICS.len()]; 3];
    for (oi, arch) in Arch::ALL.iter().enumerate() {
        let runs: Vec<RunValues> = (first_seed..first_seed + seeds)
            .map(|s| {
                let r = run_once(*arch, s, seconds);
                on_run(&format!("{} seed {s}", arch.name()));
                r
            })
            .collect();
        for (mi, slot) in out[oi].iter_mut().enumerate() {
            let xs: Vec<f64> = runs.iter().map(|r| r[mi]).collect();
            *slot = mean_ci(&xs);
        }
    }
    out
}

fn fmt_cell(v: (f64, f64)) -> String {
    let digits = if v.0.abs() >= 100.0 { 0 } else { 2 };
    format!("{:.*} ± {:.*}", digits, v.0, digits, v.1)
}

/// The Markdown table.
pub fn markdown(s: &Summary, args: &CompareArgs) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "`twin compare --seeds {} --first-seed {} --seconds {}`: mean over seeds ± 95 % CI.\n",
        args.seeds, args.first_seed, args.seconds
    );
    md.push_str(
        "| metric | option 1 (no governor) | option 2 (governor) | option 3 (two MCUs) |\n",
    );
    md.push_str("| --- | --- | --- | --- |\n");
    for (mi, (_, label, unit)) in METRICS.iter().enumerate() {
        let _ = writeln!(
            md,
            "| {label} ({unit}) | {} | {} | {} |",
            fmt_cell(s[0][mi]),
            fmt_cell(s[1][mi]),
            fmt_cell(s[2][mi])
        );
    }
    md
}

/// The JSON report.
pub fn json(s: &Summary, args: &CompareArgs) -> serde_json::Value {
    let mut options = serde_json::Map::new();
    for (oi, arch) in Arch::ALL.iter().enumerate() {
        let mut m = serde_json::Map::new();
        for (mi, (key, _, unit)) in METRICS.iter().enumerate() {
            m.insert(
                (*key).to_owned(),
                serde_json::json!({"mean": s[oi][mi].0, "ci95": s[oi][mi].1, "unit": unit}),
            );
        }
        options.insert(arch.name().to_owned(), serde_json::Value::Object(m));
    }
    serde_json::json!({
        "seeds": args.seeds,
        "first_seed": args.first_seed,
        "seconds": args.seconds,
        "options": options,
    })
}

fn write(path: &Path, text: &str) -> Result<(), CompareError> {
    std::fs::write(path, text).map_err(|source| CompareError::Write {
        path: path.to_owned(),
        source,
    })
}

/// `twin compare`: run, print the table, write JSON and Markdown to `args.out`.
pub fn command(args: &CompareArgs) -> Result<String, CompareError> {
    command_with(args, &mut |_| {}).map(|(md, _)| md)
}

/// [`command`], reporting each run to `on_run`, and returning the summary too (for the HTML
/// page of `sim::report::html::compare_page`).
pub fn command_with(
    args: &CompareArgs,
    on_run: &mut dyn FnMut(&str),
) -> Result<(String, Summary), CompareError> {
    if args.seeds == 0 {
        return Err(CompareError::NoSeeds);
    }
    let s = compare_with(args.first_seed, args.seeds, args.seconds, on_run);
    let md = markdown(&s, args);
    std::fs::create_dir_all(&args.out).map_err(|source| CompareError::Write {
        path: args.out.clone(),
        source,
    })?;
    write(&args.out.join("architecture-comparison.md"), &md)?;
    let j = serde_json::to_string_pretty(&json(&s, args)).unwrap_or_default();
    write(&args.out.join("architecture-comparison.json"), &j)?;
    Ok((md, s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_run() {
        assert_eq!(
            run_once(Arch::Option2, 5, 60),
            run_once(Arch::Option2, 5, 60)
        );
    }

    #[test]
    fn every_option_doses_and_measures_the_estop() {
        let s = compare(1, 3, 120);
        for o in &s {
            // Commands reached the board, and the E-stop was measured.
            assert!(o[0].0 > 0.0 && o[3].0 > 0.0, "{o:?}");
            assert!(o[5].0 > 10.0, "{o:?}");
        }
    }

    #[test]
    fn the_mean_and_ci_of_a_constant_are_exact() {
        assert_eq!(mean_ci(&[2.0, 2.0, 2.0]), (2.0, 0.0));
        assert_eq!(mean_ci(&[]), (0.0, 0.0));
    }
}
