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
