//! `twin run` as a user starts it: the ready file, a clean stop by duration and by `quit`.
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

fn twin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_twin"))
}

#[test]
fn twin_run_writes_the_ready_file_and_stops_at_the_duration() {
    let ready = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ready-demo.json");
    let _ = std::fs::remove_file(&ready);
    let out = twin()
        .args([
            "run",
            "--twin",
            "demo",
            "--speed",
            "100",
            "--duration",
            "2s",
        ])
        .args(["--ephemeral-ports", "--ready-file"])
        .arg(&ready)
        .stdin(Stdio::null())
        .output()
        .expect("twin runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("stopped at 2.000000s (end of run)"),
        "{stdout}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ready).expect("ready file")).expect("json");
    assert!(json.is_object());
}

#[test]
fn quit_on_stdin_stops_the_live_twin() {
    let mut child = twin()
        .args(["run", "--twin", "demo"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("twin starts");
    child
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(b"speed 50\nquit\n")
        .expect("write");
    let out = child.wait_with_output().expect("twin exits");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("(interrupted)"), "{stdout}");
}

#[test]
fn an_unknown_twin_is_refused() {
    let out = twin()
        .args(["run", "--twin", "toaster"])
        .stdin(Stdio::null())
        .output()
        .expect("twin runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no twin `toaster`"));
}

#[test]
fn stdin_runs_scenario_actions_and_reads_states_on_the_live_device() {
    let mut child = twin()
        .args(["run", "--twin", "demo", "--speed", "100"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("twin starts");
    child
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(
            b"act demo set_cost task=control cost=\"3ms\"\n\
              act demo set_cost task=nosuch cost=\"3ms\"\n\
              act demo launch\n\
              state demo control.runs nosuch\n\
              state toaster x\n\
              quit\n",
        )
        .expect("write");
    let out = child.wait_with_output().expect("twin exits");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    let at = lines
        .iter()
        .position(|l| *l == "ok")
        .unwrap_or_else(|| panic!("the first act answers ok:\n{stdout}"));
    let rest = &lines[at + 1..];
    assert!(
        rest[0].starts_with("error: ") && rest[0].contains("nosuch"),
        "{stdout}"
    );
    assert!(
        rest[1].starts_with("error: ") && rest[1].contains("launch"),
        "{stdout}"
    );
    assert!(rest[2].starts_with("demo.control.runs = "), "{stdout}");
    assert_eq!(rest[3], "demo.nosuch: no such state", "{stdout}");
    assert!(rest[4].contains("no twin `toaster`"), "{stdout}");
}
