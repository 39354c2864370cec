//! `cargo xtask ci`: every check a newcomer or CI runs, on a fresh machine.
//!
//! It installs what it needs itself (rustup targets and components; the Debian packages of the
//! tools the live tests use, when run as root), then runs formatting,
//! clippy, every test (which include each scenario file), the scenario suite through the `twin`
//! CLI with JSON and JUnit reports, a smoke run of `twin bench`, the firmware-core cross builds,
//! the target test lane under QEMU ([`qemu`]), the two board firmwares with their size report
//! ([`size`]) and, when the nightly toolchain is there, a short run of every fuzz target
//! ([`fuzz_smoke`]). Steps stop at the first failure and the exit code says so.
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

mod qemu;
mod size;

/// Targets firmware-core must build for: RP2040, ESP32-C3, ESP32-C6.
const TARGETS: &[&str] = &[
    "thumbv6m-none-eabi",
    "riscv32imc-unknown-none-elf",
    "riscv32imac-unknown-none-elf",
];

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        // Single steps of `ci`, for working on them.
        Some("qemu") => qemu::lane(std::path::Path::new(".")),
        Some("size") => board_sizes(),
        Some("fuzz") => fuzz_smoke(&target_dir().join("ci"), &args[1..]),
        _ => {
            eprintln!("usage: cargo xtask ci | qemu | size | fuzz [TARGET…]");
            return std::process::ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Board crates under `firmware/`, built in release as they would be flashed.
const BOARDS: &[&str] = &["energis-rp2040", "pump-esp32c6"];

/// Programs the live tests drive the twin with, and the Debian package of each.
const TOOLS: &[(&str, &str)] = &[
    ("snmpget", "snmp"),
    ("curl", "curl"),
    ("mosquitto_sub", "mosquitto-clients"),
    // The broker the two-shard fleet test shares (`sim/tests/fleet.rs`).
    ("mosquitto", "mosquitto"),
    ("socat", "socat"),
    ("picocom", "picocom"),
    ("chromium", "chromium"),
    // The target test lane (`qemu`). Installing these from bookworm removes a preinstalled
    // backports `qemu-utils` (qemu-img) if there is one; nothing here needs qemu-img.
    ("qemu-system-arm", "qemu-system-arm"),
    ("qemu-system-riscv32", "qemu-system-misc"),
    // `script` gives the progress-bar test its pseudo-terminal.
    ("script", "bsdutils"),
];

fn ci() -> Result<()> {
    let started = Instant::now();
    ensure_toolchain()?;
    ensure_tools()?;
    step("format", "cargo", &["fmt", "--all", "--", "--check"])?;
    step(
        "clippy",
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    step("tests", "cargo", &["test", "--workspace"])?;
    let reports = target_dir().join("ci");
    std::fs::create_dir_all(&reports).context("creating the report folder")?;
    let json = reports.join("scenarios.json");
    let junit = reports.join("scenarios.xml");
    step(
        "scenario suite",
        "cargo",
        &[
            "run",
            "--quiet",
            "-p",
            "sim",
            "--",
            "scenario",
            "scenarios",
            "--json",
            path_str(&json)?,
            "--junit",
            path_str(&junit)?,
        ],
    )?;
    // The sweeps must catch a deliberately broken firmware (a dropped E-stop edge, saves that
    // overwrite the record in force), and the replay command they print must reproduce it.
    // Only sim and firmware-core rebuild with the feature; two test binaries run.
    step(
        "sweeps against the broken firmware",
        "cargo",
        &[
            "test",
            "-p",
            "sim",
            "--features",
            "broken-firmware",
            "--test",
            "sweep",
            "--test",
            "power_cut",
        ],
    )?;
    // A few seconds of every benchmark figure, so the harness cannot rot (`twin bench` is the
    // full run; its figures are in docs/performance.md).
    step(
        "bench smoke",
        "cargo",
        &[
            "run",
            "--quiet",
            "-p",
            "sim",
            "--",
            "bench",
            "--smoke",
            "--quiet",
            "--json",
            path_str(&reports.join("bench-smoke.json"))?,
        ],
    )?;
    for target in TARGETS {
        step(
            &format!("firmware-core for {target}"),
            "cargo",
            &["build", "-p", "firmware-core", "--target", target],
        )?;
    }
    // The `defmt` log backend (boards with a probe) must keep compiling too.
    step(
        "firmware-core with defmt",
        "cargo",
        &[
            "check",
            "-p",
            "firmware-core",
            "--features",
            "defmt",
            "--target",
            "thumbv6m-none-eabi",
        ],
    )?;
    // firmware-core's self-tests on the boards' ISAs, in QEMU (a crate of its own, like the boards).
    qemu::lane(std::path::Path::new("."))?;
    // The board crates are workspaces of their own, each with its target in .cargo/config.toml.
    for board in BOARDS {
        step_in(
            &format!("board firmware {board}"),
            &std::path::Path::new("firmware").join(board),
            "cargo",
            &["build", "--release"],
        )?;
    }
    board_sizes()?;
    fuzz_smoke(&reports, &[])?;
    println!(
        "xtask ci: all checks passed in {:.0} s (reports in {})",
        started.elapsed().as_secs_f64(),
        reports.display()
    );
    Ok(())
}

/// How long the smoke runs each fuzz target. The campaign behind `docs/fuzzing.md` runs them
/// far longer; this only catches a target that crashes at once or no longer builds.
const FUZZ_SECONDS: u32 = 20;

/// Every target is built with this feature: `scenario_file` needs the simulator.
const FUZZ_FEATURES: &str = "scenario";

/// Build every fuzz target (cargo-fuzz, nightly) and run each for [`FUZZ_SECONDS`] from its
/// seed corpus in `fuzz/corpus/<target>` (plus the scenario suite for `scenario_file`). New
/// inputs go to a scratch corpus under the report folder, so the repository's seeds stay as they
/// are; a crash fails the step and leaves its input in `fuzz/artifacts/<target>/`. `only`
/// narrows the run to some targets (`cargo xtask fuzz pdu_http`); empty means all.
fn fuzz_smoke(reports: &std::path::Path, only: &[String]) -> Result<()> {
    let toolchains = output("rustup", &["toolchain", "list"])?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        println!("xtask: no nightly toolchain, so no fuzz smoke (rustup toolchain add nightly)");
        return Ok(());
    }
    let listed = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !listed {
        step(
            "install cargo-fuzz",
            "cargo",
            &["install", "cargo-fuzz", "--locked"],
        )?;
    }
    let fuzz_dir = std::path::Path::new("fuzz");
    // cargo-fuzz would build inside fuzz/target; keep it with the other build output.
    let target = std::path::absolute(target_dir().join("fuzz")).context("fuzz target dir")?;
    let target = path_str(&target)?.to_owned();
    let common = ["--features", FUZZ_FEATURES, "--target-dir", &target];
    let mut build = vec!["+nightly", "fuzz", "build", "--debug-assertions"];
    build.extend(common);
    step_in("fuzz build", fuzz_dir, "cargo", &build)?;
    let list = Command::new("cargo")
        .args(["+nightly", "fuzz", "list"])
        .current_dir(fuzz_dir)
        .output()
        .context("listing fuzz targets")?;
    let names = String::from_utf8_lossy(&list.stdout).into_owned();
    if !list.status.success() || names.trim().is_empty() {
        bail!("cargo fuzz list found no fuzz targets");
    }
    let scratch_root = std::path::absolute(reports.join("fuzz-corpus")).context("scratch dir")?;
    let max_time = format!("-max_total_time={FUZZ_SECONDS}");
    for name in names.split_whitespace() {
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        let scratch = scratch_root.join(name);
        // A fresh scratch corpus each run: the smoke starts from the seeds, like CI.
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch).context("creating a scratch corpus")?;
        let seeds = format!("corpus/{name}");
        let mut args = vec!["+nightly", "fuzz", "run", "--debug-assertions", name];
        args.extend(common);
        args.extend([path_str(&scratch)?, &seeds]);
        if name == "scenario_file" {
            args.extend([
                "../scenarios/kernel",
                "../scenarios/pdu",
                "../scenarios/pump",
            ]);
        }
        args.extend(["--", &max_time]);
        step_in(&format!("fuzz {name}"), fuzz_dir, "cargo", &args)?;
    }
    Ok(())
}

/// Add the rustup targets and components the checks need, if missing.
fn ensure_toolchain() -> Result<()> {
    let installed = output("rustup", &["target", "list", "--installed"])?;
    let missing: Vec<&str> = TARGETS
        .iter()
        .copied()
        .filter(|t| !installed.lines().any(|l| l.trim() == *t))
        .collect();
    if !missing.is_empty() {
        let mut args = vec!["target", "add"];
        args.extend(&missing);
        step("rustup targets", "rustup", &args)?;
    }
    let components = output("rustup", &["component", "list", "--installed"])?;
    for c in ["rustfmt", "clippy"] {
        if !components.lines().any(|l| l.starts_with(c)) {
            step(
                &format!("rustup component {c}"),
                "rustup",
                &["component", "add", c],
            )?;
        }
    }
    Ok(())
}

/// Install the Debian packages of missing tools when running as root; otherwise say which are
/// missing (the tests that need them then fail and name them).
fn ensure_tools() -> Result<()> {
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(bin, _)| !on_path(bin))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let root = output("id", &["-u"])?.trim() == "0";
    if !root {
        println!(
            "xtask: not root, so not installing {}; the live tests need them",
            missing.join(" ")
        );
        return Ok(());
    }
    // Wait for another apt/dpkg instead of failing half-way (seen on these machines).
    let lock = "DPkg::Lock::Timeout=600";
    step("apt-get update", "apt-get", &["-o", lock, "-q", "update"])?;
    let mut args = vec!["-o", lock, "-q", "-y", "install", "--no-install-recommends"];
    args.extend(&missing);
    step_env(
        "apt-get install",
        "apt-get",
        &args,
        &[("DEBIAN_FRONTEND", "noninteractive")],
    )
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(bin).is_file()))
}

fn step(name: &str, program: &str, args: &[&str]) -> Result<()> {
    run_step(name, None, program, args, &[])
}

fn step_in(name: &str, dir: &std::path::Path, program: &str, args: &[&str]) -> Result<()> {
    run_step(name, Some(dir), program, args, &[])
}

fn step_env(name: &str, program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    run_step(name, None, program, args, env)
}

fn run_step(
    name: &str,
    dir: Option<&std::path::Path>,
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<()> {
    let place = dir
        .map(|d| format!("(in {}) ", d.display()))
        .unwrap_or_default();
    println!("==> {name}: {place}{program} {}", args.join(" "));
    let t = Instant::now();
    let mut command = Command::new(program);
    command.args(args).envs(env.iter().copied());
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let status = command
        .status()
        .with_context(|| format!("starting {program}"))?;
    println!("<== {name}: {:.1} s", t.elapsed().as_secs_f64());
    if !status.success() {
        bail!("step `{name}` failed ({status})");
    }
    Ok(())
}

fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("starting {program}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(Into::into)
        .unwrap_or_else(|| std::path::PathBuf::from("target"))
}

/// The size report of the board images built by `ci` (or by hand in `firmware/<board>`).
fn board_sizes() -> Result<()> {
    size::report(|budget| {
        crate_target_dir(&std::path::Path::new("firmware").join(budget.board))
            .join(budget.target)
            .join("release")
            .join(budget.board)
    })
}

/// The target folder cargo uses for a crate outside the workspace, built in `dir`
/// (`CARGO_TARGET_DIR` is relative to where cargo runs).
fn crate_target_dir(dir: &std::path::Path) -> std::path::PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(target) => dir.join(target),
        None => dir.join("target"),
    }
}

fn path_str(p: &std::path::Path) -> Result<&str> {
    p.to_str().context("report path is not UTF-8")
}
