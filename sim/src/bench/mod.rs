//! `twin bench`: the speed and memory figures of issue #14, each with its goal beside it.
//!
//! Every figure is measured here, in one run, as `docs/performance.md` reports them:
//! * speed-up (virtual seconds per second) of the pump's one-hour load
//!   (`scenarios/pump/load.toml`), the PDU over 24 hours with eight metered outlets on and its
//!   buttons scanned, and both devices together on one kernel; measured per second of this
//!   thread's CPU time (what one quiet core would take) and per wall second;
//! * the scenario folder's wall time with one and two jobs;
//! * the memory of one more PDU twin and one more pump twin, and the CPU per device-second;
//! * the peak RSS of a seven-virtual-day PDU run;
//! * the same periodic workload (a 1 ms task) on the kernel and on a tokio current-thread
//!   runtime with paused time, the reference the kernel is measured against.
//!
//! Memory is measured in child processes (`twin bench --child …`, reading `/proc/self/status`),
//! so one figure's allocations never inflate another's. `--smoke` runs every figure on short
//! workloads in a few seconds, for CI: its numbers are not the figures, but the harness runs.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;

use firmware_core::time::{Duration, Instant};
use serde::Serialize;

use crate::devices::DeviceSpec;
use crate::kernel::{History, Kernel, TaskSpec};
use crate::report::progress::{Progress, Verbosity};
use crate::scenario::{self, TestCase, run, suite};

/// The pump's one-hour load scenario.
const PUMP_LOAD: &str = include_str!("../../../scenarios/pump/load.toml");
const PUMP_LOAD_TEST: &str = "one_hour_of_dispensing_under_heavy_wifi_traffic_loses_nothing";

/// A PDU with every outlet on and metered, for `{duration}`.
const PDU_DAY: &str = r#"
[[test]]
name = "pdu_metered_day"
duration = "{duration}"
[test.devices.pdu]
kind = "pdu"
restore_on_boot = true
last_state = [1, 2, 3, 4, 5, 6, 7, 8]
{loads}
[[test.expect]]
label = "all-on"
state = "pdu.relays"
equals = 255
"#;

/// The PDU day and the pump's dispense under load, on one kernel.
const BOTH: &str = r#"
[[test]]
name = "both_devices"
duration = "{duration}"
[test.devices.pdu]
kind = "pdu"
restore_on_boot = true
last_state = [1, 2, 3, 4, 5, 6, 7, 8]
[test.devices.pump]
kind = "pump"
ws_clients = 3
{loads}
[[test.step]]
at = "1s"
device = "pump"
do = "wifi.load"
airtime = 0.6
cpu = 0.4
[[test.step]]
at = "5s"
device = "pump"
do = "dispense"
pump = "X"
volume_ml = 600.0
flow_ml_min = 10.0
[[test.expect]]
label = "all-on"
state = "pdu.relays"
equals = 255
"#;

fn loads(device: Option<&str>) -> String {
    (1..=8)
        .map(|ch| {
            let dev = device
                .map(|d| format!("device = \"{d}\"\n"))
                .unwrap_or_default();
            format!(
                "[[test.step]]\nat = \"1s\"\n{dev}do = \"load\"\nchannel = {ch}\nwatts = {}\n",
                40 * ch
            )
        })
        .collect()
}

fn workload(template: &str, duration: &str, device: Option<&str>) -> Result<TestCase, String> {
    let text = template
        .replace("{duration}", duration)
        .replace("{loads}", &loads(device));
    let cases = scenario::load_str(Path::new("<bench>"), &text).map_err(|e| e.to_string())?;
    cases.into_iter().next().ok_or_else(|| "no test".to_owned())
}

fn pump_load(seconds: u64) -> Result<TestCase, String> {
    let cases = scenario::load_str(Path::new("scenarios/pump/load.toml"), PUMP_LOAD)
        .map_err(|e| e.to_string())?;
    let mut case = cases
        .into_iter()
        .find(|c| c.full_name() == PUMP_LOAD_TEST)
        .ok_or("the pump's one-hour load test is missing")?;
    case.duration = Duration::from_secs(seconds);
    Ok(case)
}

/// CPU time of the calling thread.
fn thread_cpu() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the call only writes it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Wall and CPU seconds of `f`.
fn timed<R>(f: impl FnOnce() -> R) -> (R, f64, f64) {
    let wall = std::time::Instant::now();
    let cpu = thread_cpu();
    let r = f();
    (
        r,
        wall.elapsed().as_secs_f64(),
        (thread_cpu() - cpu).as_secs_f64(),
    )
}

/// One figure and its goal.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// What it measures.
    pub name: String,
    /// The measurement.
    pub value: f64,
    /// Its unit.
    pub unit: String,
    /// The goal, as `>= N` or `<= N` (none for context figures).
    pub goal: Option<String>,
    /// Whether the goal is met (none without a goal, or in a smoke run).
    pub meets: Option<bool>,
    /// How it was measured.
    pub note: String,
}

fn figure(
    name: &str,
    value: f64,
    unit: &str,
    goal: Option<(&str, f64)>,
    note: &str,
    smoke: bool,
) -> Figure {
    let meets = goal.filter(|_| !smoke).map(|(op, g)| match op {
        ">=" => value >= g,
        _ => value <= g,
    });
    Figure {
        name: name.to_owned(),
        value: (value * 1000.0).round() / 1000.0,
        unit: unit.to_owned(),
        goal: goal.map(|(op, g)| format!("{op} {g}")),
        meets,
        note: note.to_owned(),
    }
}

/// `twin bench` options.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Short workloads, a few seconds in all (CI): checks the harness, not the goals.
    #[arg(long)]
    pub smoke: bool,
    /// Also write the JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The scenario folder timed with `--jobs 1` and `--jobs 2`.
    #[arg(long, default_value = "scenarios")]
    pub scenarios: PathBuf,
    /// Internal: run one measured workload in this process and print its figures as JSON.
    #[arg(long, hide = true)]
    pub child: Option<String>,
    /// Internal: the child's virtual seconds, or number of twins.
    #[arg(long, hide = true, default_value_t = 0)]
    pub n: u64,
}

/// What a child process reports.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct ChildReport {
    /// Resident set at the end, KiB.
    pub rss_kb: u64,
    /// Peak resident set, KiB.
    pub hwm_kb: u64,
    /// Wall seconds of the workload.
    pub wall_s: f64,
    /// CPU seconds of the workload.
    pub cpu_s: f64,
}

/// A `/proc/self/status` figure in KiB (`VmRSS:`, `VmHWM:`), 0 where there is none.
pub(crate) fn proc_status_kb(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn spec_of(kind: &str) -> Result<Rc<dyn DeviceSpec>, String> {
    let text = format!(
        "[[test]]\nname = \"t\"\nduration = \"1s\"\n[test.devices.d]\nkind = \"{kind}\"\n[[test.expect]]\nstate = \"kernel.core.d.cpu.busy_us\"\nmin = 0\n"
    );
    let cases = scenario::load_str(Path::new("<bench>"), &text).map_err(|e| e.to_string())?;
    let case = cases.into_iter().next().ok_or("no test")?;
    case.devices
        .into_iter()
        .next()
        .map(|(_, s)| s)
        .ok_or_else(|| "no device".to_owned())
}

/// Run a child workload (`twin bench --child KIND --n N`) and report it.
pub fn child(kind: &str, n: u64) -> Result<ChildReport, String> {
    let (_, wall_s, cpu_s) = match kind {
        // A PDU with its outlets metered for `n` virtual seconds.
        "pdu-run" => {
            let case = workload(PDU_DAY, &format!("{n}s"), None)?;
            timed(|| {
                run::run_test(&case, None);
            })
        }
        // `n` live-like twins (recent history kept), each run for a virtual minute.
        "pdu-twins" | "pump-twins" => {
            let spec = spec_of(kind.trim_end_matches("-twins"))?;
            let mut held = Vec::new();
            let r = timed(|| {
                for i in 0..n {
                    let mut k = Kernel::with_history(i, History::RECENT);
                    let dev = spec.build("d", &mut k);
                    k.run_for(Duration::from_secs(60));
                    held.push((k, dev));
                }
            });
            let report = ChildReport {
                rss_kb: proc_status_kb("VmRSS:"),
                hwm_kb: proc_status_kb("VmHWM:"),
                wall_s: r.1,
                cpu_s: r.2,
            };
            drop(held);
            return Ok(report);
        }
        other => return Err(format!("unknown child workload `{other}`")),
    };
    Ok(ChildReport {
        rss_kb: proc_status_kb("VmRSS:"),
        hwm_kb: proc_status_kb("VmHWM:"),
        wall_s,
        cpu_s,
    })
}

/// Run `twin bench --child kind --n n` in a fresh process.
pub fn spawn_child(kind: &str, n: u64) -> Result<ChildReport, String> {
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let out = Command::new(exe)
        .args(["bench", "--child", kind, "--n", &n.to_string()])
        .output()
        .map_err(|e| format!("starting the child: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "child {kind} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("child {kind} said: {e}"))
}

/// A 1 ms periodic task for `seconds` on the kernel; returns (wall, cpu) seconds.
fn kernel_periodic(seconds: u64) -> (f64, f64) {
    let mut k = Kernel::with_history(1, History::NONE);
    let core = k.add_core("core0");
    let clock = k.clock();
    k.spawn(
        TaskSpec::on_core("tick", core, 1, Duration::from_micros(20)),
        async move {
            let mut next = Instant::ZERO;
            loop {
                next += Duration::from_millis(1);
                clock.sleep_until(next).await;
            }
        },
    )
    .detach();
    let ((), w, c) = timed(|| {
        k.run_until(Instant::ZERO + Duration::from_secs(seconds));
    });
    (w, c)
}

/// The same task on a tokio current-thread runtime with paused time.
fn tokio_periodic(seconds: u64) -> Result<(f64, f64), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let ((), w, c) = timed(|| {
        rt.block_on(async {
            let start = tokio::time::Instant::now();
            let end = start + std::time::Duration::from_secs(seconds);
            let mut next = start;
            while next < end {
                next += std::time::Duration::from_millis(1);
                tokio::time::sleep_until(next).await;
            }
        });
    });
    Ok((w, c))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Measure every figure. See the module docs.
pub fn bench(args: &BenchArgs, verbosity: Verbosity) -> Result<serde_json::Value, String> {
    let smoke = args.smoke;
    let mut figures = Vec::new();
    let mut progress = Progress::new(8, "bench", verbosity).with_plain_steps();

    // Speed of the three device workloads, on this thread.
    let (pump_s, pdu_s, both_s) = if smoke {
        (60, 600, 60)
    } else {
        (3620, 86_400, 3600)
    };
    let speed = |case: &TestCase| {
        let (r, wall, cpu) = timed(|| run::run_test(case, None));
        (r, wall, cpu, case.duration.as_micros() as f64 / 1e6)
    };
    let (r, wall, cpu, virt) = speed(&pump_load(pump_s)?);
    let pump_cpu_per_dev_s = cpu / virt;
    let note = format!(
        "scenarios/pump/load.toml, {virt} virtual s: {wall:.2} s wall, {cpu:.2} s CPU; passed = {}",
        r.passed
    );
    figures.push(figure(
        "pump 1 h load speed-up",
        virt / cpu,
        "x (virtual s per CPU s)",
        Some((">=", 20_000.0)),
        &note,
        smoke,
    ));
    figures.push(figure(
        "pump 1 h load speed-up, wall",
        virt / wall,
        "x (virtual s per wall s)",
        None,
        &note,
        smoke,
    ));
    progress.step("pump");
    let (r, wall, cpu, virt) = speed(&workload(PDU_DAY, &format!("{pdu_s}s"), None)?);
    let pdu_cpu_per_dev_s = cpu / virt;
    let note = format!(
        "PDU, 8 outlets on and metered, buttons scanned, {virt} virtual s: {wall:.2} s wall, {cpu:.2} s CPU; passed = {}",
        r.passed
    );
    figures.push(figure(
        "PDU 24 h speed-up",
        virt / cpu,
        "x (virtual s per CPU s)",
        Some((">=", 20_000.0)),
        &note,
        smoke,
    ));
    figures.push(figure(
        "PDU 24 h speed-up, wall",
        virt / wall,
        "x (virtual s per wall s)",
        None,
        &note,
        smoke,
    ));
    progress.step("pdu");
    let (r, wall, cpu, virt) = speed(&workload(BOTH, &format!("{both_s}s"), Some("pdu"))?);
    let note = format!(
        "PDU day + pump load on one kernel, {virt} virtual s: {wall:.2} s wall, {cpu:.2} s CPU; passed = {}",
        r.passed
    );
    figures.push(figure(
        "both devices 1 h speed-up",
        virt / cpu,
        "x (virtual s per CPU s)",
        Some((">=", 8_000.0)),
        &note,
        smoke,
    ));
    figures.push(figure(
        "CPU per device-second, pump",
        pump_cpu_per_dev_s * 1e6,
        "µs",
        None,
        "from the pump load run",
        smoke,
    ));
    figures.push(figure(
        "CPU per device-second, PDU",
        pdu_cpu_per_dev_s * 1e6,
        "µs",
        None,
        "from the PDU day run",
        smoke,
    ));
    figures.push(figure(
        "CPU per device-second, both",
        cpu / virt / 2.0 * 1e6,
        "µs",
        None,
        "from the two-device run",
        smoke,
    ));
    progress.step("both");

    // The kernel against tokio's paused clock, same workload.
    let secs = if smoke { 60 } else { 3600 };
    let (kw, kc) = kernel_periodic(secs);
    let (tw, tc) = tokio_periodic(secs)?;
    let note = format!(
        "1 ms periodic task, {secs} virtual s: kernel {kw:.2} s wall / {kc:.2} s CPU, tokio {tw:.2} s wall / {tc:.2} s CPU"
    );
    figures.push(figure(
        "kernel vs tokio paused clock",
        tc / kc,
        "x (tokio CPU / kernel CPU)",
        Some((">=", 4.0)),
        &note,
        smoke,
    ));
    figures.push(figure(
        "kernel 1 ms task speed-up",
        secs as f64 / kc,
        "x (virtual s per CPU s)",
        None,
        &note,
        smoke,
    ));
    progress.step("tokio");

    // The scenario folder with one and two jobs.
    if args.scenarios.is_dir() {
        let files = scenario::collect_files(&args.scenarios).map_err(|e| e.to_string())?;
        let mut cases = Vec::new();
        for f in &files {
            cases.extend(scenario::load_file(f).map_err(|e| e.to_string())?);
        }
        if smoke {
            cases.retain(|c| c.duration <= Duration::from_secs(5));
        }
        let wanted: Vec<(PathBuf, String)> = cases
            .iter()
            .map(|c| (c.file.clone(), c.full_name()))
            .collect();
        let mut walls = Vec::new();
        for jobs in [1, 2] {
            let options = suite::SuiteOptions {
                jobs,
                ..Default::default()
            };
            let t = std::time::Instant::now();
            let done = suite::run_suite(&files, &cases, &wanted, &options, |_, _| {});
            walls.push(t.elapsed().as_secs_f64());
            if done.len() != cases.len() {
                return Err(format!(
                    "{jobs} jobs ran {} of {} tests",
                    done.len(),
                    cases.len()
                ));
            }
        }
        let note = format!("{} tests of {}", cases.len(), args.scenarios.display());
        figures.push(figure(
            "scenario folder, --jobs 1",
            walls[0],
            "s wall",
            None,
            &note,
            smoke,
        ));
        figures.push(figure(
            "scenario folder, --jobs 2",
            walls[1],
            "s wall",
            None,
            &note,
            smoke,
        ));
        figures.push(figure(
            "scenario folder, jobs 2 / jobs 1",
            walls[1] / walls[0],
            "ratio",
            None,
            &note,
            smoke,
        ));
    }
    progress.step("scenarios");

    // Memory per twin: N more twins, in a fresh process each.
    let n = if smoke { 4 } else { 50 };
    for kind in ["pdu", "pump"] {
        let base = spawn_child(&format!("{kind}-twins"), 0)?;
        let many = spawn_child(&format!("{kind}-twins"), n)?;
        let per = many.rss_kb.saturating_sub(base.rss_kb) as f64 / n as f64;
        let note = format!(
            "RSS of {n} twins (each a kernel with the live history, run 60 virtual s) minus none: {} − {} KiB",
            many.rss_kb, base.rss_kb
        );
        figures.push(figure(
            &format!("memory per {kind} twin"),
            per / 1024.0,
            "MiB",
            Some(("<=", 2.0)),
            &note,
            smoke,
        ));
        progress.step(kind);
    }

    // Peak RSS of a 7-virtual-day PDU scenario.
    let days = if smoke { 3600 } else { 7 * 86_400 };
    let c = spawn_child("pdu-run", days)?;
    let note = format!(
        "PDU day workload for {days} virtual s in a child process: {:.1} s wall, {:.1} s CPU",
        c.wall_s, c.cpu_s
    );
    figures.push(figure(
        "PDU 7 days peak RSS",
        c.hwm_kb as f64 / 1024.0,
        "MiB",
        Some(("<=", 100.0)),
        &note,
        smoke,
    ));
    progress.step("7 days");
    progress.finish();

    Ok(serde_json::json!({
        "smoke": smoke,
        "machine": {
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "load_average_at_end": load_average(),
        },
        "figures": figures,
    }))
}

/// `twin bench`: print the JSON (and write it to `--json`).
pub fn command(args: &BenchArgs, verbosity: Verbosity) -> Result<String, String> {
    if let Some(kind) = &args.child {
        let r = child(kind, args.n)?;
        return serde_json::to_string(&r).map_err(|e| e.to_string());
    }
    let report = bench(args, verbosity)?;
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    if let Some(p) = &args.json {
        std::fs::write(p, &text).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    }
    Ok(text)
}
