//! What `twin scenario` prints, on a terminal and off one; and its report pages.
//!
//! On a terminal (a pseudo-terminal made by `script`, from util-linux) a progress bar with an
//! ETA is drawn and the verdicts are coloured; through a pipe there is neither, and the JSON and
//! JUnit reports never carry either. `--report` writes a self-contained page per run whose plots
//! carry the run's data.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const FILES: [&str; 2] = ["scenarios/kernel", "scenarios/pdu/flood.toml"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("output");
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir.join(name)
}

#[test]
fn the_progress_bar_and_colours_show_on_a_terminal() {
    let twin = env!("CARGO_BIN_EXE_twin");
    let command = format!("{twin} scenario {}", FILES.join(" "));
    let out = Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .current_dir(root())
        .stdin(Stdio::null())
        .output()
        .expect("`script` (util-linux) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(" scenarios (ETA "),
        "no progress bar in: {text}"
    );
    assert!(
        text.contains("\x1b[32mok"),
        "no colour on a terminal: {text}"
    );
    assert!(text.contains("passed, 0 failed"), "{text}");
}

#[test]
fn off_a_terminal_there_is_no_bar_no_colour_and_the_reports_are_clean() {
    let json = scratch("plain.json");
    let junit = scratch("plain.xml");
    let out = Command::new(env!("CARGO_BIN_EXE_twin"))
        .arg("scenario")
        .args(FILES)
        .arg("--json")
        .arg(&json)
        .arg("--junit")
        .arg(&junit)
        .current_dir(root())
        .stdin(Stdio::null())
        .output()
        .expect("twin runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    for (what, text) in [
        ("stdout", stdout.to_string()),
        ("stderr", stderr.to_string()),
        ("json", std::fs::read_to_string(&json).expect("json report")),
        (
            "junit",
            std::fs::read_to_string(&junit).expect("junit report"),
        ),
    ] {
        assert!(!text.contains("ETA"), "a progress bar in {what}: {text}");
        assert!(
            !text.contains('\x1b'),
            "an escape sequence in {what}: {text}"
        );
        assert!(!text.contains('\r'), "a carriage return in {what}: {text}");
    }
    // Plain lines, one per test, and the summary.
    assert!(
        stdout.lines().filter(|l| l.starts_with("ok ")).count() > 10,
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("valid JSON");
    assert_eq!(report["failed"], 0);
}

#[test]
fn quiet_prints_only_the_summary() {
    let out = Command::new(env!("CARGO_BIN_EXE_twin"))
        .args(["scenario", "scenarios/kernel", "--quiet"])
        .current_dir(root())
        .output()
        .expect("twin runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert_eq!(stdout.trim().lines().count(), 1, "{stdout}");
    assert!(stdout.contains("passed, 0 failed"));
}

/// The number of points of each `<polyline>` in an SVG page.
fn polyline_points(html: &str) -> Vec<usize> {
    html.split("<polyline")
        .skip(1)
        .filter_map(|p| {
            let pts = p.split("points=\"").nth(1)?.split('"').next()?;
            Some(pts.split_whitespace().count())
        })
        .collect()
}

fn report_of(file: &str, test: &str, dir: &str) -> String {
    let dir = scratch(dir);
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(env!("CARGO_BIN_EXE_twin"))
        .args(["scenario", file, "--test", test, "--quiet", "--report"])
        .arg(&dir)
        .current_dir(root())
        .output()
        .expect("twin runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let index = std::fs::read_to_string(dir.join("index.html")).expect("index page");
    let page = index
        .split("href=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the index links the run's page")
        .to_owned();
    let html = std::fs::read_to_string(dir.join(page)).expect("run page");
    // Self-contained: nothing to fetch, nothing to run.
    assert!(!html.contains("<script"), "a script in the page");
    assert!(!html.contains("src=\""), "something to load in the page");
    assert!(!html.contains("<link"), "a stylesheet link in the page");
    assert!(html.contains(test));
    html
}

#[test]
fn a_pump_report_plots_cores_queues_and_latency_histograms_with_data() {
    let html = report_of(
        "scenarios/pump/estop.toml",
        "estop_during_dispense_holds_at_once_alarms_first_and_resume_reports_the_dose",
        "pump-report",
    );
    for needle in [
        "Core utilisation",
        "pump.queue.depth",
        "pump.mqtt.latency_ms",
        "histogram",
        "CDF",
        "dispensed (ml) of pump",
        "estop-latency",
        "max = ",
    ] {
        assert!(html.contains(needle), "no `{needle}` in the page");
    }
    let svgs = html.matches("<svg").count();
    assert!(svgs >= 8, "{svgs} plots");
    let lines = polyline_points(&html);
    assert!(lines.iter().filter(|&&n| n >= 50).count() >= 4, "{lines:?}");
    // The histogram's bars.
    assert!(html.matches("<rect").count() > 20);
}

#[test]
fn a_pdu_report_plots_relays_and_meter_readings_with_data() {
    let html = report_of(
        "scenarios/pdu/protection.toml",
        "over_current_trips_the_last_channel_and_locks_out_until_recovery",
        "pdu-report",
    );
    for needle in [
        "Relays of pdu",
        "meter power (W) of pdu",
        "Core utilisation",
    ] {
        assert!(html.contains(needle), "no `{needle}` in the page");
    }
    let lines = polyline_points(&html);
    assert!(lines.iter().filter(|&&n| n >= 50).count() >= 3, "{lines:?}");
}
