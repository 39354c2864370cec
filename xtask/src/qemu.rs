//! The target test lane: firmware-core's self-tests as a no_std binary under QEMU.
//!
//! `firmware/qemu-tests` is built for each ISA and run with the cargo runner of its
//! `.cargo/config.toml` (read from there, so the QEMU command lines live in one place and
//! `cargo run --release --target …` in that folder does the same by hand). The image is run
//! directly, not through `cargo run`, so that waiting for another cargo's lock does not count
//! against the deadline. This module adds what CI needs around it:
//!
//! * a **deadline** per run: QEMU is started in its own process group and the group is killed
//!   when the deadline passes (the runner wraps QEMU in `timeout` as well, for runs by hand), so
//!   a hung case fails the lane instead of stalling CI;
//! * a **verdict** from the exit code *and* the output: the run must end with
//!   `N passed, 0 failed` and N > 0, and both ISAs must run the same N;
//! * a **check of the lane itself**: builds with the `force-fail` feature (one extra case with
//!   a failing check) must exit non-zero and name that case, and a build with `force-hang`
//!   must be ended by the deadline.
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use wait_timeout::ChildExt as _;

/// The QEMU stand-ins for the boards' ISAs: Cortex-M0 (RP2040), riscv32imac (ESP32-C6).
pub const TARGETS: &[&str] = &["thumbv6m-none-eabi", "riscv32imac-unknown-none-elf"];

/// Where the test binary's crate is, relative to the repository root.
const CRATE: &str = "firmware/qemu-tests";

/// A whole run takes well under a second; this is generous for a loaded 2-core machine.
const RUN_DEADLINE: Duration = Duration::from_secs(60);

/// Deadline for the deliberately hanging build.
const HANG_DEADLINE: Duration = Duration::from_secs(10);

/// The forced failure's case name, as the binary prints it.
const FORCED_FAILURE: &str = "lane::forced_failure";

/// How one run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The process exited with this code.
    Exited(i32),
    /// Killed by a signal (no exit code).
    Signalled,
    /// Killed by us at the deadline.
    TimedOut,
}

/// One run of the test binary.
#[derive(Debug)]
pub struct Run {
    /// How it ended.
    pub end: End,
    /// Its standard output, line by line.
    pub lines: Vec<String>,
}

/// The `N passed, M failed` line, if the run printed one.
pub fn summary(lines: &[String]) -> Option<(u32, u32)> {
    lines.iter().rev().find_map(|line| {
        let (passed, failed) = line.trim().split_once(" passed, ")?;
        let failed = failed.strip_suffix(" failed")?;
        Some((passed.parse().ok()?, failed.parse().ok()?))
    })
}

/// Judge a normal run: exit 0, and a summary with cases and no failure. Returns the count.
pub fn judge_pass(target: &str, run: &Run) -> Result<u32> {
    let counted = summary(&run.lines);
    match (&run.end, counted) {
        (End::Exited(0), Some((passed, 0))) if passed > 0 => Ok(passed),
        (End::TimedOut, _) => bail!("{target}: the self-tests did not finish in time (hung?)"),
        (end, Some((passed, failed))) => {
            bail!("{target}: {failed} self-test(s) failed, {passed} passed ({end:?})")
        }
        (end, None) => bail!("{target}: the self-tests printed no summary ({end:?})"),
    }
}

/// Judge a `force-fail` run: non-zero exit, the forced case named as failed with its check's
/// location, the other `expected_passed` cases passed.
pub fn judge_forced_failure(target: &str, run: &Run, expected_passed: u32) -> Result<()> {
    let failed_line = format!("test {FORCED_FAILURE} ... FAILED");
    let at = run.lines.iter().position(|l| l.trim() == failed_line);
    let location = at
        .and_then(|i| run.lines.get(i + 1))
        .is_some_and(|l| l.contains("src/main.rs:"));
    ensure!(
        matches!(run.end, End::Exited(code) if code != 0),
        "{target}: a failing check did not fail the run ({:?})",
        run.end
    );
    ensure!(
        at.is_some() && location,
        "{target}: the failing case was not named with its location"
    );
    ensure!(
        summary(&run.lines) == Some((expected_passed, 1)),
        "{target}: expected `{expected_passed} passed, 1 failed`, got {:?}",
        summary(&run.lines)
    );
    Ok(())
}

/// Run the lane on every ISA, then check that it reports failures and hangs.
pub fn lane(root: &Path) -> Result<()> {
    let dir = root.join(CRATE);
    // The crate is outside the workspace, so the workspace's fmt and clippy steps miss it.
    super::step_in(
        "qemu-tests format",
        &dir,
        "cargo",
        &["fmt", "--", "--check"],
    )?;
    super::step_in(
        "qemu-tests clippy",
        &dir,
        "cargo",
        &[
            "clippy",
            "--release",
            "--target",
            TARGETS[0],
            "--features",
            "force-fail,force-hang",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    let mut counts = Vec::new();
    for target in TARGETS {
        build(&dir, target, None)?;
        let run = run(&dir, target, None, RUN_DEADLINE)?;
        counts.push((*target, judge_pass(target, &run)?));
    }
    if let [(first, n), rest @ ..] = counts.as_slice()
        && let Some((other, m)) = rest.iter().find(|(_, m)| m != n)
    {
        bail!("{first} ran {n} self-tests but {other} ran {m}");
    }
    for (target, passed) in &counts {
        build(&dir, target, Some("force-fail"))?;
        let run = run(&dir, target, Some("force-fail"), RUN_DEADLINE)?;
        judge_forced_failure(target, &run, *passed)?;
        println!("    {target}: a failing check fails the run and is named: ok");
    }
    // One ISA is enough to show the deadline ends a hung run: it is the same code path.
    let target = TARGETS[0];
    build(&dir, target, Some("force-hang"))?;
    let hung = run(&dir, target, Some("force-hang"), HANG_DEADLINE)?;
    ensure!(
        hung.end == End::TimedOut,
        "{target}: a hanging case was not ended by the deadline ({:?})",
        hung.end
    );
    println!("    {target}: a hanging case is ended at the deadline: ok");
    Ok(())
}

fn cargo_args<'a>(verb: &'a str, target: &'a str, feature: Option<&'a str>) -> Vec<&'a str> {
    let mut args = vec![verb, "--release", "--target", target];
    if let Some(feature) = feature {
        args.extend(["--features", feature]);
    }
    args
}

fn build(dir: &Path, target: &str, feature: Option<&str>) -> Result<()> {
    let args = cargo_args("build", target, feature);
    super::step_in(
        &format!("qemu-tests build for {target}"),
        dir,
        "cargo",
        &args,
    )
}

/// The runner command of `target` in the crate's `.cargo/config.toml`, split into words.
fn runner(dir: &Path, target: &str) -> Result<Vec<String>> {
    let path = dir.join(".cargo/config.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let config: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let runner = config
        .get("target")
        .and_then(|t| t.get(target))
        .and_then(|t| t.get("runner"))
        .and_then(toml::Value::as_str)
        .with_context(|| format!("{} has no runner for {target}", path.display()))?;
    Ok(runner.split_whitespace().map(str::to_owned).collect())
}

/// Run the built image with the runner and a deadline; stdout is echoed.
fn run(dir: &Path, target: &str, feature: Option<&str>, deadline: Duration) -> Result<Run> {
    let elf = super::crate_target_dir(dir)
        .join(target)
        .join("release")
        .join("qemu-tests");
    let runner = runner(dir, target)?;
    let (program, args) = runner.split_first().context("empty runner")?;
    let label = feature.map(|f| format!(" ({f})")).unwrap_or_default();
    println!(
        "==> qemu-tests on {target}{label}: {} {}",
        runner.join(" "),
        elf.display()
    );
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .arg(&elf)
        .stdout(Stdio::piped())
        // Its own process group, so the deadline ends QEMU too, not only `timeout`.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let stdout = child.stdout.take().context("child stdout")?;
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .inspect(|line| println!("    {line}"))
            .collect::<Vec<_>>()
    });
    let end = match child
        .wait_timeout(deadline)
        .context("waiting for the run")?
    {
        Some(status) => status.code().map_or(End::Signalled, End::Exited),
        None => {
            kill_group(child.id())?;
            child.wait().context("reaping the killed run")?;
            End::TimedOut
        }
    };
    let lines = reader
        .join()
        .map_err(|_| anyhow::anyhow!("output reader panicked"))?;
    println!(
        "<== qemu-tests on {target}: {:?} after {:.1} s",
        end,
        started.elapsed().as_secs_f64()
    );
    Ok(Run { end, lines })
}

fn kill_group(pid: u32) -> Result<()> {
    let status = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .status()
        .context("starting kill")?;
    ensure!(status.success(), "kill -KILL -{pid} failed ({status})");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(end: End, text: &str) -> Run {
        Run {
            end,
            lines: text.lines().map(str::to_owned).collect(),
        }
    }

    const PASS: &str = "firmware-core self-tests on riscv32imac\n\
                        test core_types::a ... ok\n\
                        test core_types::b ... ok\n\
                        2 passed, 0 failed\n";

    const FORCED: &str = "test core_types::a ... ok\n\
                          test core_types::b ... ok\n\
                          test lane::forced_failure ... FAILED\n    \
                          src/main.rs:86: two + two == 5: left 4, right 5\n\
                          2 passed, 1 failed\n";

    #[test]
    fn a_clean_run_passes_with_its_count() {
        assert_eq!(judge_pass("t", &run(End::Exited(0), PASS)).unwrap(), 2);
    }

    #[test]
    fn a_failure_a_missing_summary_a_hang_or_no_cases_fail_the_lane() {
        assert!(judge_pass("t", &run(End::Exited(1), FORCED)).is_err());
        // Exit 0 is not enough: the summary must be there and say no failure.
        assert!(judge_pass("t", &run(End::Exited(0), "test a ... ok\n")).is_err());
        assert!(judge_pass("t", &run(End::Exited(0), "0 passed, 0 failed\n")).is_err());
        assert!(judge_pass("t", &run(End::Exited(0), "1 passed, 1 failed\n")).is_err());
        let hung = judge_pass("t", &run(End::TimedOut, "test a ... ok\n")).unwrap_err();
        assert!(hung.to_string().contains("did not finish"), "{hung}");
        assert!(judge_pass("t", &run(End::Exited(101), "panicked at x\n")).is_err());
    }

    #[test]
    fn the_forced_failure_must_be_named_located_and_fail_the_exit_code() {
        judge_forced_failure("t", &run(End::Exited(1), FORCED), 2).unwrap();
        // Exit 0 despite the failure: the lane would not catch failures.
        assert!(judge_forced_failure("t", &run(End::Exited(0), FORCED), 2).is_err());
        // Not named.
        let anonymous = FORCED.replace("lane::forced_failure", "x");
        assert!(judge_forced_failure("t", &run(End::Exited(1), &anonymous), 2).is_err());
        // Cases went missing.
        assert!(judge_forced_failure("t", &run(End::Exited(1), FORCED), 3).is_err());
    }

    #[test]
    fn the_summary_is_the_last_such_line() {
        let lines: Vec<String> = ["3 passed, 0 failed", "noise", "4 passed, 2 failed"]
            .map(String::from)
            .into();
        assert_eq!(summary(&lines), Some((4, 2)));
        assert_eq!(summary(&["passed, failed".to_owned()]), None);
    }
}
