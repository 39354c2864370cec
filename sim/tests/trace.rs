//! `twin scenario --trace`: the timeline file a user opens in Perfetto or `chrome://tracing`.
//!
//! The file is read back with `serde_json` and checked against the Trace Event Format: a JSON
//! array of event objects, each with the fields its phase requires, timestamps in virtual
//! microseconds; a named track for every simulated core and task; and the E-stop's `!` at the
//! FluidNC board within one control tick of the button edge.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

const ESTOP_FILE: &str = "scenarios/pump/estop.toml";
const ESTOP_TEST: &str =
    "estop_during_dispense_holds_at_once_alarms_first_and_resume_reports_the_dose";
/// The pump firmware's control tick.
const CONTROL_TICK_US: u64 = 10_000;

fn root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn write_trace(name: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_file(&path);
    let out = Command::new(env!("CARGO_BIN_EXE_twin"))
        .args([
            "scenario", ESTOP_FILE, "--test", ESTOP_TEST, "--quiet", "--trace",
        ])
        .arg(&path)
        .current_dir(root())
        .output()
        .expect("twin runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&path).expect("trace written");
    match serde_json::from_str::<Value>(&text).expect("the trace is well-formed JSON") {
        Value::Array(events) => events,
        other => panic!("the JSON Array Format needs an array, got {other}"),
    }
}

#[track_caller]
fn field<'a>(ev: &'a Value, key: &str) -> &'a Value {
    ev.get(key)
        .unwrap_or_else(|| panic!("event without `{key}`: {ev}"))
}

/// Every event has what its phase needs (Trace Event Format: `name`, `ph`, `pid`, `tid`, `ts`
/// in microseconds; `dur` for complete events; `s` scope for instants; numeric `args` for
/// counters; `args.name` for names).
fn check_format(events: &[Value]) {
    assert!(events.len() > 1000, "only {} events", events.len());
    for ev in events {
        assert!(field(ev, "name").is_string(), "{ev}");
        assert!(
            field(ev, "pid").is_u64() && field(ev, "tid").is_u64(),
            "{ev}"
        );
        assert!(
            field(ev, "ts").is_u64(),
            "ts must be whole microseconds: {ev}"
        );
        match field(ev, "ph").as_str() {
            Some("X") => assert!(field(ev, "dur").is_u64(), "{ev}"),
            Some("i") => assert!(
                matches!(field(ev, "s").as_str(), Some("t" | "p" | "g")),
                "{ev}"
            ),
            Some("C") => {
                let args = field(ev, "args").as_object().expect("counter args");
                assert!(
                    !args.is_empty() && args.values().all(Value::is_number),
                    "{ev}"
                );
            }
            Some("M") => {
                let name = field(ev, "name").as_str().unwrap_or_default();
                assert!(
                    ["process_name", "thread_name", "thread_sort_index"].contains(&name),
                    "{ev}"
                );
                assert!(field(ev, "args").is_object(), "{ev}");
            }
            other => panic!("unexpected phase {other:?}: {ev}"),
        }
    }
}

/// Thread names by (pid, tid).
fn tracks(events: &[Value]) -> BTreeMap<(u64, u64), String> {
    events
        .iter()
        .filter(|e| e["ph"] == "M" && e["name"] == "thread_name")
        .map(|e| {
            (
                (
                    e["pid"].as_u64().unwrap_or(0),
                    e["tid"].as_u64().unwrap_or(0),
                ),
                e["args"]["name"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// The cores and tasks of the test's devices, from the kernel itself.
fn kernel_names() -> (Vec<String>, Vec<String>) {
    let cases = sim::scenario::load_file(&root().join(ESTOP_FILE)).expect("loads");
    let case = cases
        .iter()
        .find(|c| c.full_name() == ESTOP_TEST)
        .expect("the test exists");
    let mut k = sim::kernel::Kernel::new(case.seed);
    let _devices: Vec<_> = case
        .devices
        .iter()
        .map(|(n, s)| s.build(n, &mut k))
        .collect();
    k.run_for(firmware_core::time::Duration::from_millis(100));
    (
        k.core_stats().into_iter().map(|c| c.name).collect(),
        k.task_stats().into_iter().map(|t| t.name).collect(),
    )
}

#[test]
fn the_estop_trace_is_a_valid_timeline_with_every_core_and_task_and_the_feed_hold_in_time() {
    let events = write_trace("estop.trace.json");
    check_format(&events);

    let names: BTreeSet<String> = tracks(&events).into_values().collect();
    let (cores, tasks) = kernel_names();
    assert!(!cores.is_empty() && !tasks.is_empty());
    for n in cores.iter().chain(&tasks) {
        assert!(names.contains(n), "no track for `{n}` (tracks: {names:?})");
    }

    // Each core's track shows the tasks that ran on it, in virtual microseconds within the run.
    let by_track = tracks(&events);
    let core_track = by_track
        .iter()
        .find(|(_, n)| *n == &cores[0])
        .map(|(k, _)| *k)
        .expect("core track");
    let slices: Vec<&Value> = events
        .iter()
        .filter(|e| {
            e["ph"] == "X"
                && (e["pid"].as_u64(), e["tid"].as_u64())
                    == (Some(core_track.0), Some(core_track.1))
        })
        .collect();
    assert!(
        slices.len() > 100,
        "{} slices on {}",
        slices.len(),
        cores[0]
    );
    assert!(
        slices
            .iter()
            .all(|e| tasks.iter().any(|t| e["name"] == t.as_str()))
    );
    let last_ts = events
        .iter()
        .filter_map(|e| e["ts"].as_u64())
        .max()
        .unwrap_or(0);
    assert!(
        (44_000_000..=45_000_000).contains(&last_ts),
        "the 45 s run ends at {last_ts} µs"
    );

    // The task tracks carry their waits, named by why.
    let waits: BTreeSet<&str> = events
        .iter()
        .filter(|e| e["ph"] == "X" && e["cat"] == "sched")
        .filter_map(|e| e["name"].as_str())
        .collect();
    for w in ["run", "delay", "queue"] {
        assert!(waits.contains(w), "no `{w}` slices: {waits:?}");
    }

    // The button edge (step at 27013 ms) and the feed hold at the board.
    let instant = |source: &str, text: &str| -> Vec<u64> {
        let track: Vec<(u64, u64)> = by_track
            .iter()
            .filter(|(_, n)| n.as_str() == source)
            .map(|(k, _)| *k)
            .collect();
        events
            .iter()
            .filter(|e| e["ph"] == "i")
            .filter(|e| {
                track.contains(&(
                    e["pid"].as_u64().unwrap_or(0),
                    e["tid"].as_u64().unwrap_or(0),
                ))
            })
            .filter(|e| e["name"].as_str().is_some_and(|n| n.starts_with(text)))
            .filter_map(|e| e["ts"].as_u64())
            .collect()
    };
    let edge = instant("pump.estop", "button pressed");
    assert_eq!(edge, vec![27_013_000], "the edge, in virtual µs");
    let hold = instant("pump.fluidnc", "rx !");
    assert_eq!(hold.len(), 1, "{hold:?}");
    assert!(
        hold[0] >= edge[0] && hold[0] - edge[0] <= CONTROL_TICK_US,
        "`!` {} µs after the edge",
        hold[0] - edge[0]
    );
    let cat = events
        .iter()
        .find(|e| {
            e["ph"] == "i"
                && e["ts"] == hold[0]
                && e["name"].as_str().is_some_and(|n| n.starts_with("rx !"))
        })
        .map(|e| e["cat"].clone());
    assert_eq!(cat, Some(Value::from("uart")));

    // The other instants a timeline reader looks for, each in its category: the governor's
    // priority changes (EMERGENCY at the edge), the controller's publishes beside their
    // deliveries, and FluidNC's `?` polls.
    let in_category = |cat: &str, text: &str| -> Vec<u64> {
        events
            .iter()
            .filter(|e| e["ph"] == "i" && e["cat"] == cat)
            .filter(|e| e["name"].as_str().is_some_and(|n| n.starts_with(text)))
            .filter_map(|e| e["ts"].as_u64())
            .collect()
    };
    let emergency = in_category("priority", "priority EMERGENCY");
    assert_eq!(emergency.len(), 1, "{emergency:?}");
    assert!(
        emergency[0] >= edge[0] && emergency[0] <= hold[0],
        "{emergency:?}"
    );
    assert_eq!(in_category("priority", "priority DISPENSING").len(), 1);
    assert_eq!(in_category("priority", "priority IDLE").len(), 1);
    let alarm_out = in_category("mqtt", "publish pump/controller/alarm");
    let alarm_in = in_category("mqtt", "pump/controller/alarm");
    assert_eq!((alarm_out.len(), alarm_in.len()), (1, 1));
    assert!(
        alarm_out[0] < alarm_in[0],
        "published before it is delivered"
    );
    assert!(!in_category("uart", "rx ?").is_empty(), "the status polls");

    // Counters: the outbox depth and the cores' load.
    let counters: BTreeSet<&str> = events
        .iter()
        .filter(|e| e["ph"] == "C")
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(counters.contains("pump.queue.depth"), "{counters:?}");
    assert!(
        counters.iter().any(|c| c.starts_with("load pump.")),
        "{counters:?}"
    );
}

#[test]
fn writing_a_trace_leaves_the_run_unchanged() {
    let hash = |trace: bool| -> String {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("hash.trace.json");
        let json = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("hash-{trace}.json"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_twin"));
        cmd.args([
            "scenario", ESTOP_FILE, "--test", ESTOP_TEST, "--quiet", "--json",
        ])
        .arg(&json)
        .current_dir(root());
        if trace {
            cmd.arg("--trace").arg(&path);
        }
        assert!(cmd.output().expect("twin runs").status.success());
        let r: Value =
            serde_json::from_str(&std::fs::read_to_string(&json).expect("report")).expect("json");
        r["scenarios"][0]["trace_hash"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(hash(false), hash(true));
}
