//! The `twin scenario` command as a user meets it: exit codes, error messages for bad files,
//! the JSON report, and reproducible trace hashes.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn twin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_twin"))
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .expect("twin runs")
}

/// A scratch file under the target folder (no fixed /tmp names, no clean-up races).
fn scratch(name: &str, text: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli");
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("scratch file");
    path
}

const GOOD_HEAD: &str = r#"
[[test]]
name = "t"
duration = "100ms"
[test.devices.board]
kind = "demo.cores"
cores = ["c0"]
[[test.devices.board.task]]
name = "tick"
core = "c0"
period = "10ms"
cost = "1ms"
"#;

#[track_caller]
fn assert_rejected(name: &str, body: &str, line: usize, needle: &str) {
    let path = scratch(name, &format!("{GOOD_HEAD}{body}"));
    let out = twin(&["scenario", path.to_str().expect("utf-8 path")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(
        err.contains(&format!("{name}:{line}:")),
        "no file:line `{name}:{line}` in: {err}"
    );
    assert!(err.contains(needle), "no `{needle}` in: {err}");
    assert!(err.contains("no scenario was run"), "{err}");
}

#[test]
fn unknown_step_verb_is_rejected_with_line_and_verb() {
    assert_rejected(
        "verb.toml",
        "[[test.step]]\nat = \"10ms\"\ndo = \"explode\"\n[[test.expect]]\nstate = \"board.tick.runs\"\nmin = 1\n",
        13,
        "explode",
    );
}

#[test]
fn bad_duration_is_rejected_with_line_and_text() {
    assert_rejected(
        "duration.toml",
        "[[test.step]]\nat = \"10 parsecs\"\ndo = \"set_cost\"\ntask = \"tick\"\ncost = \"1ms\"\n[[test.expect]]\nstate = \"board.tick.runs\"\nmin = 1\n",
        13,
        "10 parsecs",
    );
}

#[test]
fn missing_device_is_rejected_with_line_and_name() {
    assert_rejected(
        "device.toml",
        "[[test.step]]\nat = \"10ms\"\ndevice = \"pump\"\ndo = \"set_cost\"\ntask = \"tick\"\ncost = \"1ms\"\n[[test.expect]]\nstate = \"board.tick.runs\"\nmin = 1\n",
        13,
        "device `pump`",
    );
}

#[test]
fn unknown_key_is_rejected_with_line_and_key() {
    assert_rejected(
        "key.toml",
        "[[test.expect]]\nstate = \"board.tick.runs\"\nmin = 1\nwhithin = \"5ms\"\n",
        13,
        "whithin",
    );
}

#[test]
fn a_broken_file_stops_the_valid_ones_from_running() {
    let bad = scratch("broken.toml", "[[test]]\nname = 3\n");
    let out = twin(&[
        "scenario",
        "scenarios/kernel/cores.toml",
        bad.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ok "));
}

#[test]
fn a_failed_expectation_exits_1_and_prints_it_in_scenario_syntax() {
    let path = scratch(
        "fails.toml",
        &format!(
            "{GOOD_HEAD}[[test.expect]]\nlabel = \"too-many\"\nstate = \"board.tick.runs\"\nequals = 99\n"
        ),
    );
    let out = twin(&["scenario", path.to_str().expect("utf-8")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("label = \"too-many\""), "{stdout}");
    assert!(stdout.contains("# observed: value = 10"), "{stdout}");
    assert!(stdout.contains("0 passed, 1 failed"), "{stdout}");
}

fn report(seed: &str, name: &str) -> serde_json::Value {
    let json = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let out = twin(&[
        "scenario",
        "scenarios/kernel/jitter.toml",
        "--seed",
        seed,
        "--json",
        json.to_str().expect("utf-8"),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_str(&std::fs::read_to_string(json).expect("report written")).expect("json")
}

#[test]
fn the_same_seed_gives_the_same_trace_hash_and_another_seed_another() {
    let a = report("7", "a.json");
    let b = report("7", "b.json");
    let c = report("8", "c.json");
    let hash = |r: &serde_json::Value| r["scenarios"][0]["trace_hash"].as_str().map(str::to_owned);
    assert!(hash(&a).is_some());
    assert_eq!(hash(&a), hash(&b));
    assert_ne!(hash(&a), hash(&c));
}

#[test]
fn the_json_report_has_what_ci_reads() {
    let r = report("1", "fields.json");
    let s = &r["scenarios"][0];
    for key in [
        "name",
        "seed",
        "passed",
        "virtual_ms",
        "wall_ms",
        "trace_hash",
        "expectations",
    ] {
        assert!(!s[key].is_null(), "missing {key} in {s}");
    }
    assert_eq!(s["seed"], 1);
    assert_eq!(s["virtual_ms"], 1000);
    let e = &s["expectations"][0];
    assert_eq!(e["label"], "late-at-most-the-jitter");
    assert!(
        e["observed"]
            .as_str()
            .is_some_and(|o| o.starts_with("max = "))
    );
}

/// The failure printout shows the trace around the instant a verdict points at (the runner
/// keeps no trace in memory: it replays the failed test to capture those events).
#[test]
fn a_failure_shows_the_events_around_its_instant() {
    let path = scratch(
        "context.toml",
        "[[test]]\nname = \"t\"\nduration = \"100ms\"\n[test.devices.board]\nkind = \"demo.uart\"\nbaud = 115200\nperiod = \"10ms\"\n[[test.expect]]\nlabel = \"too-many\"\nevent = \"board.rx\"\ncontains = \"rx ok\"\nfrom = \"50ms\"\ncount = 99\n",
    );
    let out = twin(&["scenario", path.to_str().expect("utf-8")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("# trace around 51.736ms:"), "{stdout}");
    // Six events before the first hit and six from it on.
    let context: Vec<&str> = stdout.lines().filter(|l| l.contains("board.rx ")).collect();
    assert_eq!(context.len(), 9, "{stdout}");
    assert!(context[0].contains("rx ok seq=0") && context[4].contains("rx ok seq=4"));
}
