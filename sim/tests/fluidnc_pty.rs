//! A G-code sender in character-counting mode on the live pump twin's bench FluidNC terminal
//! (`pump_fluidnc`): 301 short lines per round with a 128-byte receive budget and a `?` from a
//! second thread every second, three rounds, the last two with every core kept busy by spinning
//! threads. Every line must get exactly one answer, `ok`, and none may be merged with another
//! (a lost newline shows as `error:21` and a `Bad GCode` message naming both lines).
//!
//! Nothing here sleeps to wait for a result: answers are awaited with deadlines; the `?` thread
//! paces itself with a one-second receive timeout, as a sender's status timer would.
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// Grbl's receive buffer, the budget of a character-counting sender.
const BUDGET: usize = 128;
const LINES: usize = 300;
/// Generous: a round takes about ten seconds of virtual (and wall) time.
const ROUND_DEADLINE: Duration = Duration::from_secs(120);

struct Twin(Child);

impl Drop for Twin {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_twin() -> (Twin, String) {
    let ready = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ready-fluidnc-pty.json");
    let _ = std::fs::remove_file(&ready);
    let child = Command::new(env!("CARGO_BIN_EXE_twin"))
        .args(["run", "--twin", "pump", "--ephemeral-ports", "--ready-file"])
        .arg(&ready)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("twin starts");
    let twin = Twin(child);
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&ready)
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            && let Some(path) = v["pump_fluidnc"].as_str()
        {
            return (twin, path.to_owned());
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no ready file from the twin"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Short relative moves on all four axes, a deterministic mix of lengths and feeds.
fn program(round: usize) -> Vec<String> {
    let mut lines = vec!["G91".to_owned()];
    let mut x: u32 = 12_345 + round as u32;
    for i in 0..LINES {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let mm = 0.005 + f64::from((x >> 16) % 25) / 1000.0;
        let feed = [100, 150, 200][(x as usize >> 8) % 3];
        lines.push(format!("G1 {}{mm:.3} F{feed}", ['X', 'Y', 'Z', 'A'][i % 4]));
    }
    lines
}

/// What came back for one round.
struct Outcome {
    answers: Vec<String>,
    messages: Vec<String>,
    reports: usize,
}

/// Stream `lines` with character counting; answers come from `from_board` (one per line that
/// is `ok` or `error:N`), bracketed messages and status reports are collected alongside.
fn stream(port: &mut std::fs::File, from_board: &Receiver<String>, lines: &[String]) -> Outcome {
    let deadline = Instant::now() + ROUND_DEADLINE;
    let mut in_flight: VecDeque<usize> = VecDeque::new();
    let mut next = 0;
    let mut out = Outcome {
        answers: Vec::new(),
        messages: Vec::new(),
        reports: 0,
    };
    while out.answers.len() < lines.len() {
        while let Some(line) = lines.get(next) {
            let len = line.len() + 1;
            if in_flight.iter().sum::<usize>() + len > BUDGET {
                break;
            }
            port.write_all(format!("{line}\n").as_bytes())
                .expect("write a line");
            in_flight.push_back(len);
            next += 1;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match from_board.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok(l) if l == "ok" || l.starts_with("error:") => {
                in_flight.pop_front();
                out.answers.push(l);
            }
            Ok(l) if l.starts_with('<') => out.reports += 1,
            Ok(l) if l.starts_with('[') => out.messages.push(l),
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
            Err(e) => panic!(
                "{e:?} after {} answers to {next} lines sent ({} in flight, {} bytes): {:?}",
                out.answers.len(),
                in_flight.len(),
                in_flight.iter().sum::<usize>(),
                out.messages
            ),
        }
    }
    out
}

#[test]
fn a_character_counting_sender_gets_one_ok_per_line_even_on_a_busy_machine() {
    let (_twin, path) = start_twin();
    let mut port = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open the FluidNC terminal");
    let mut reader = port.try_clone().expect("clone");
    let mut poller = port.try_clone().expect("clone");
    let (to_sender, from_board) = channel::<String>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        let mut line = Vec::new();
        while let Ok(n) = reader.read(&mut buf) {
            for &b in buf.get(..n).unwrap_or(&[]) {
                if b == b'\n' {
                    let text = String::from_utf8_lossy(&line).trim().to_owned();
                    line.clear();
                    if to_sender.send(text).is_err() {
                        return;
                    }
                } else {
                    line.push(b);
                }
            }
        }
    });
    let (stop_poller, poller_stops) = channel::<()>();
    let poller_thread = std::thread::spawn(move || {
        while let Err(RecvTimeoutError::Timeout) = poller_stops.recv_timeout(Duration::from_secs(1))
        {
            if poller.write_all(b"?").is_err() {
                return;
            }
        }
    });
    // The banner and boot messages the board printed before anyone listened.
    port.write_all(b"\n").expect("write");
    let start = Instant::now();
    while from_board
        .recv_timeout(Duration::from_secs(5))
        .is_ok_and(|l| l != "ok")
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no ok for an empty line"
        );
    }

    let mut rounds = vec![stream(&mut port, &from_board, &program(0))];
    // Rounds 1 and 2 with every core kept busy.
    let spin = Arc::new(AtomicBool::new(true));
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let spinners: Vec<_> = (0..2 * cores)
        .map(|_| {
            let spin = spin.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while spin.load(Ordering::Relaxed) {
                    x = std::hint::black_box(
                        x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1),
                    );
                }
            })
        })
        .collect();
    for round in 1..3 {
        rounds.push(stream(&mut port, &from_board, &program(round)));
    }
    spin.store(false, Ordering::Relaxed);
    for s in spinners {
        let _ = s.join();
    }
    let _ = stop_poller.send(());
    let _ = poller_thread.join();
    let mut reports = 0;
    for (round, outcome) in rounds.iter().enumerate() {
        assert_eq!(
            outcome.answers.len(),
            LINES + 1,
            "round {round}: one answer per line"
        );
        let errors: Vec<_> = outcome.answers.iter().filter(|a| *a != "ok").collect();
        assert!(
            errors.is_empty(),
            "round {round}: {errors:?}, messages {:?}",
            outcome.messages
        );
        assert!(
            !outcome.messages.iter().any(|m| m.starts_with("[MSG:ERR")),
            "round {round}: {:?}",
            outcome.messages
        );
        reports += outcome.reports;
    }
    assert!(reports > 0, "the `?` thread's reports never came back");
}
