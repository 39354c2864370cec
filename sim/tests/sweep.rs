//! `twin sweep` end to end: the E-stop and EEPROM sweeps pass, shards merge into the unsharded
//! report, and a printed replay command reproduces its run through the real `twin` binary.
//! With `--features broken-firmware` (`cargo xtask ci` runs that too) the E-stop sweep must
//! catch the deliberately broken firmware, and the replay command must reproduce the failure.
use std::path::{Path, PathBuf};
use std::process::Command;

use sim::scenario::sweep::{self, Shard, SweepReport, Target};

fn scenarios() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios")
}

fn target(file: &str) -> Target {
    let path = scenarios().join(file);
    let mut t = sweep::targets(&[path], None).expect("a swept test");
    assert_eq!(t.len(), 1, "one swept test in {file}");
    t.remove(0)
}

fn estop() -> Target {
    target("pump/estop_sweep.toml")
}

#[cfg(not(feature = "broken-firmware"))]
fn storage() -> Target {
    target("pdu/storage_sweep.toml")
}

fn twin(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_twin"))
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .expect("twin runs");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Run a replay command as printed (`cargo run … -- scenario …`) with the `twin` binary of
/// this build.
fn replay(command: &str) -> (i32, String) {
    let args: Vec<String> = command
        .split_once(" -- ")
        .map(|(_, a)| a)
        .expect("a `cargo run … -- args` command")
        .split_whitespace()
        .map(|a| a.trim_matches('\'').to_owned())
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    twin(&args)
}

fn run(targets: &[Target], seeds: &[u64]) -> Vec<Vec<sweep::SeedRun>> {
    sweep::run_sweep(targets, seeds, 2, |_, _| {}).expect("the sweep runs")
}

#[cfg(not(feature = "broken-firmware"))]
mod sound {
    use super::*;

    /// The test command's share of the 1,000-seed sweep (figures for 1,000 in
    /// docs/performance.md).
    const SEEDS: u64 = 60;

    #[test]
    fn the_estop_and_eeprom_sweeps_find_no_failure() {
        let targets = [estop(), storage()];
        let seeds: Vec<u64> = (0..SEEDS).collect();
        let runs = run(&targets, &seeds);
        let report = SweepReport::new(&targets, runs, 0, SEEDS, Shard::ALL);
        for t in &report.tests {
            assert_eq!(t.runs, SEEDS);
            assert_eq!(
                t.failures,
                0,
                "{}: {}; first: {:?}",
                t.test,
                t.summary(),
                t.results.iter().find(|r| !r.passed)
            );
        }
        // The schedules differ between seeds (the sweep explores), so the traces do.
        let hashes: std::collections::BTreeSet<&str> = report.tests[0]
            .results
            .iter()
            .map(|r| r.trace_hash.as_str())
            .collect();
        assert!(
            hashes.len() as u64 > SEEDS / 2,
            "{} distinct runs",
            hashes.len()
        );
    }

    #[test]
    fn two_shards_merged_equal_the_unsharded_sweep_through_the_cli() {
        let dir = std::env::temp_dir().join(format!("twin-sweep-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = "scenarios/pdu/storage_sweep.toml";
        let p = |n: &str| dir.join(n).display().to_string();
        let (code, out) = twin(&[
            "sweep",
            file,
            "--seeds",
            "6",
            "--first-seed",
            "10",
            "--jobs",
            "2",
            "--json",
            &p("all.json"),
            "--junit",
            &p("all.xml"),
        ]);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("0 of 6 runs failed"), "{out}");
        assert!(
            out.contains("95 % Wilson interval 0.00 % – 39.03 %"),
            "{out}"
        );
        for k in ["1", "2"] {
            let (code, out) = twin(&[
                "sweep",
                file,
                "--seeds",
                "6",
                "--first-seed",
                "10",
                "--shard",
                &format!("{k}/2"),
                "--json",
                &p(&format!("s{k}.json")),
            ]);
            assert_eq!(code, 0, "{out}");
            assert!(out.contains("0 of 3 runs failed"), "{out}");
        }
        // One shard alone is not the sweep.
        let (code, out) = twin(&["sweep-merge", &p("s1.json")]);
        assert_eq!(code, 2, "{out}");
        assert!(out.contains("shards missing: [2] of 2"), "{out}");
        let (code, out) = twin(&[
            "sweep-merge",
            &p("s2.json"),
            &p("s1.json"),
            "--json",
            &p("merged.json"),
            "--junit",
            &p("merged.xml"),
        ]);
        assert_eq!(code, 0, "{out}");
        let read = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap();
        let all: serde_json::Value = serde_json::from_str(&read("all.json")).unwrap();
        let merged: serde_json::Value = serde_json::from_str(&read("merged.json")).unwrap();
        assert_eq!(all, merged);
        assert_eq!(read("all.xml"), read("merged.xml"));
        assert_eq!(read("all.xml").matches("<testcase").count(), 6);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_sweep_run_is_replayed_exactly_by_twin_scenario_with_its_seed() {
        let t = estop();
        let seed = 17;
        let r = sweep::run_seed(&t, seed).unwrap();
        let cmd = sweep::replay_command(&t, seed);
        let (code, out) = replay(&cmd);
        assert_eq!(code, 0, "{out}");
        assert!(
            out.contains(&format!("trace {}", r.trace_hash)),
            "`{cmd}` printed another run than the sweep's {}:\n{out}",
            r.trace_hash
        );
        // And `--only-seed` is the same run.
        let (code, out) = twin(&[
            "-v",
            "sweep",
            "scenarios/pump/estop_sweep.toml",
            "--only-seed",
            "17",
        ]);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains(&format!("trace {}", r.trace_hash)), "{out}");
    }

    #[test]
    fn a_file_without_a_sweep_is_refused() {
        let (code, out) = twin(&["sweep", "scenarios/pdu/boot.toml"]);
        assert_eq!(code, 2, "{out}");
        assert!(out.contains("no test with a [test.sweep]"), "{out}");
    }
}

#[cfg(feature = "broken-firmware")]
mod broken {
    use super::*;

    #[test]
    fn the_estop_sweep_catches_the_dropped_edge_and_its_replay_reproduces_it() {
        let t = estop();
        let seeds: Vec<u64> = (0..100).collect();
        let runs = run(std::slice::from_ref(&t), &seeds);
        let report = SweepReport::new(std::slice::from_ref(&t), runs, 0, 100, Shard::ALL);
        let tr = &report.tests[0];
        eprintln!("broken-firmware estop sweep: {}", tr.summary());
        let failed = tr
            .results
            .iter()
            .find(|r| !r.passed)
            .unwrap_or_else(|| panic!("the sweep missed the broken E-stop: {}", tr.summary()));
        assert!(failed.failed.iter().any(|l| l == "feed-hold"), "{failed:?}");
        let cmd = failed.replay.as_deref().expect("a replay command");
        assert!(cmd.contains("--features broken-firmware"), "{cmd}");
        let (code, out) = replay(cmd);
        assert_eq!(code, 1, "`{cmd}` did not fail:\n{out}");
        assert!(
            out.contains(&format!("trace {}", failed.trace_hash)),
            "`{cmd}` is not the failing run {}:\n{out}",
            failed.trace_hash
        );
        assert!(out.contains("feed-hold"), "{out}");
    }
}
