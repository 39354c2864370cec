//! Memory stays flat: the same PDU run (eight outlets on and metered) at two lengths ends at
//! nearly the same peak RSS, measured from `/proc` in a child process (`twin bench --child`).
//! Before the trace was bounded and the PDU's waits registered their wakers once, the longer
//! run grew by tens of MB.
use std::process::Command;

#[derive(serde::Deserialize)]
struct Child {
    hwm_kb: u64,
}

fn peak_kb(virtual_s: u64) -> u64 {
    let out = Command::new(env!("CARGO_BIN_EXE_twin"))
        .args(["bench", "--child", "pdu-run", "--n", &virtual_s.to_string()])
        .output()
        .expect("twin runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Child>(&out.stdout)
        .expect("the child's JSON")
        .hwm_kb
}

/// Allowed difference between the two runs.
const SLACK_KB: u64 = 4 * 1024;

#[test]
fn a_pdu_run_four_times_longer_peaks_within_a_few_mb() {
    let short = peak_kb(1800);
    let long = peak_kb(7200);
    assert!(
        long <= short + SLACK_KB,
        "30 min peaked at {short} KiB, 2 h at {long} KiB"
    );
}

#[test]
fn the_bench_smoke_reports_every_figure_with_its_goal() {
    let out = Command::new(env!("CARGO_BIN_EXE_twin"))
        .args(["bench", "--smoke", "--quiet"])
        .current_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .expect("twin runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let figures = r["figures"].as_array().expect("figures");
    let names: Vec<&str> = figures.iter().filter_map(|f| f["name"].as_str()).collect();
    for want in [
        "pump 1 h load speed-up",
        "PDU 24 h speed-up",
        "both devices 1 h speed-up",
        "kernel vs tokio paused clock",
        "scenario folder, --jobs 2",
        "memory per pdu twin",
        "memory per pump twin",
        "PDU 7 days peak RSS",
        "CPU per device-second, pdu",
    ] {
        assert!(
            names.iter().any(|n| n.eq_ignore_ascii_case(want)),
            "no `{want}` in {names:?}"
        );
    }
    for f in figures {
        assert!(
            f["value"]
                .as_f64()
                .is_some_and(|v| v.is_finite() && v >= 0.0),
            "{f}"
        );
    }
    let with_goals = figures.iter().filter(|f| f["goal"].is_string()).count();
    assert!(with_goals >= 7, "{with_goals} figures with a goal");
}
