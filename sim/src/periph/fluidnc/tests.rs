//! The board driven over a simulated UART by a small host, on the kernel's virtual clock.
use std::cell::RefCell;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::rc::Rc;

use embassy_futures::select::{Either, select};
use embassy_sync::blocking_mutex::raw::NoopRawMutex;
use embassy_sync::signal::Signal;
use embedded_io_async::{ErrorType, Read, Write};
use firmware_core::time::{Duration, Instant};

use super::*;
use crate::kernel::{Kernel, TaskSpec};
use crate::periph::uart::{self, Direction, UartConfig, UartLink};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The host end of the link: a relay task owns the UART port, writes what the test (or a
/// firmware task) queues, and keeps every received byte with its arrival time.
#[derive(Clone)]
struct Host {
    to_board: Rc<RefCell<Vec<u8>>>,
    out_kick: Rc<Signal<NoopRawMutex, ()>>,
    from_board: Rc<RefCell<VecDeque<u8>>>,
    in_kick: Rc<Signal<NoopRawMutex, ()>>,
    log: Rc<RefCell<Vec<(Instant, u8)>>>,
}

impl Host {
    fn send(&self, bytes: &[u8]) {
        self.to_board.borrow_mut().extend_from_slice(bytes);
        self.out_kick.signal(());
    }

    /// Received lines (without `\n`) with the arrival time of their last byte.
    fn lines(&self) -> Vec<(Instant, String)> {
        let mut out = Vec::new();
        let mut cur = Vec::new();
        for &(t, b) in self.log.borrow().iter() {
            if b == b'\n' {
                out.push((t, String::from_utf8_lossy(&cur).into_owned()));
                cur.clear();
            } else {
                cur.push(b);
            }
        }
        out
    }

    fn texts(&self) -> Vec<String> {
        self.lines().into_iter().map(|(_, l)| l).collect()
    }

    fn clear(&self) {
        self.log.borrow_mut().clear();
    }
}

struct Bench {
    k: Kernel,
    link: UartLink,
    board: FluidncBoard,
    host: Host,
}

impl Bench {
    fn new(cfg: FluidncConfig) -> Bench {
        let mut k = Kernel::new(7);
        let (link, host_port, board_port) =
            uart::link(&k, "fluidnc.uart", UartConfig::new_8n1(115_200)).unwrap();
        let board = FluidncBoard::new(&k, "fluidnc", cfg).unwrap();
        board.spawn(&mut k, board_port).detach();
        let host = Host {
            to_board: Rc::default(),
            out_kick: Rc::new(Signal::new()),
            from_board: Rc::default(),
            in_kick: Rc::new(Signal::new()),
            log: Rc::default(),
        };
        let h = host.clone();
        let clock = k.clock();
        k.spawn(TaskSpec::world("host"), async move {
            let mut port = host_port;
            let mut buf = [0u8; 256];
            loop {
                let out = std::mem::take(&mut *h.to_board.borrow_mut());
                if !out.is_empty() {
                    let Ok(()) = port.write_all(&out).await;
                }
                match select(port.read(&mut buf), h.out_kick.wait()).await {
                    Either::First(Ok(n)) => {
                        // A read returns at the end of a burst; its bytes came back to back.
                        let now = clock.now();
                        let wire = UartConfig::new_8n1(115_200);
                        h.log
                            .borrow_mut()
                            .extend(buf[..n].iter().enumerate().map(|(i, &b)| {
                                let later = wire.burst_time((n - 1 - i) as u64);
                                (Instant::from_micros(now.as_micros() - later.as_micros()), b)
                            }));
                        h.from_board.borrow_mut().extend(&buf[..n]);
                        h.in_kick.signal(());
                    }
                    Either::First(Err(e)) => match e {},
                    Either::Second(()) => {}
                }
            }
        })
        .detach();
        k.run_for(ms(20));
        Bench {
            k,
            link,
            board,
            host,
        }
    }

    fn default() -> Bench {
        Bench::new(FluidncConfig::default())
    }

    /// A bench with auto-reporting off, for exact transcripts.
    fn quiet() -> Bench {
        Bench::new(FluidncConfig {
            report_interval: None,
            ..FluidncConfig::default()
        })
    }

    fn run(&mut self, d: Duration) {
        self.k.run_for(d);
    }

    fn send(&mut self, bytes: &[u8]) {
        self.host.send(bytes);
        self.k.run_for(Duration::ZERO);
    }

    /// Send a line and give it 20 ms for the answer.
    fn line(&mut self, line: &str) {
        self.send(format!("{line}\n").as_bytes());
        self.run(ms(20));
    }

    fn now(&self) -> Instant {
        self.k.now()
    }

    fn events(&self) -> Vec<(Instant, String)> {
        self.k.with_trace(|t| {
            t.events()
                .iter()
                .filter(|e| e.source == "fluidnc")
                .map(|e| (e.at, e.text.clone()))
                .collect()
        })
    }
}

/// The status reports among `lines`, each with the instant its first byte started on the wire
/// (when the board printed it, unless it queued behind other output).
fn reports(lines: &[(Instant, String)]) -> Vec<(Instant, String)> {
    let uart = UartConfig::new_8n1(115_200);
    lines
        .iter()
        .filter(|(_, l)| l.starts_with('<'))
        .map(|(t, l)| {
            let wire = uart.burst_time(l.len() as u64 + 1);
            (
                Instant::from_micros(t.as_micros() - wire.as_micros()),
                l.clone(),
            )
        })
        .collect()
}

#[track_caller]
fn assert_near(a: Instant, b: Instant, tol: Duration) {
    let d = if a > b { a - b } else { b - a };
    assert!(d <= tol, "{a} vs {b}");
}

fn state_of(report: &str) -> &str {
    report
        .trim_start_matches('<')
        .split('|')
        .next()
        .unwrap_or("")
}

fn mpos_of(report: &str) -> Vec<f64> {
    let field = report
        .split('|')
        .find_map(|f| f.strip_prefix("MPos:"))
        .unwrap_or("");
    field.split(',').filter_map(|v| v.parse().ok()).collect()
}

const BANNER: &str = "Grbl 3.9 [FluidNC v3.9.9 (noradio) '$' for help]";

#[test]
fn the_banner_follows_power_up_and_every_soft_reset() {
    let mut b = Bench::quiet();
    assert_eq!(b.host.texts(), ["", "[MSG:RST]", "[EXP:ID]", "", BANNER]);
    b.host.clear();
    b.send(&[0x18]);
    b.run(ms(10));
    assert_eq!(b.host.texts(), ["", BANNER]);
    assert!(b.events().iter().any(|(_, e)| e == "reset"));
}

#[test]
fn each_line_gets_one_ok_and_crlf_gets_two() {
    let mut b = Bench::quiet();
    b.host.clear();
    b.line("G90");
    assert_eq!(b.host.texts(), ["ok"]);
    b.host.clear();
    b.send(b"G91\r\n");
    b.run(ms(20));
    assert_eq!(b.host.texts(), ["ok", "ok"]);
    b.host.clear();
    b.send(b"\n\r");
    b.run(ms(20));
    assert_eq!(b.host.texts(), ["ok", "ok"]);
    assert_eq!(b.board.snapshot().stats.oks, 5);
}

#[test]
fn g1_without_any_feed_is_error_22_and_moves_nothing() {
    let mut b = Bench::quiet();
    b.host.clear();
    b.line("G1 X10");
    assert_eq!(
        b.host.texts(),
        [
            "[MSG:ERR: Bad GCode: G1X10]",
            "error:22",
            "[MSG:ERR: Undefined feed rate]"
        ]
    );
    b.run(ms(500));
    assert_eq!(b.board.snapshot().mpos, [0.0; 4]);
    // Once F is set it is modal.
    b.host.clear();
    b.line("G1 F100");
    b.line("G1 X0.1");
    assert_eq!(b.host.texts(), ["ok", "ok"]);
}

#[test]
fn errors_without_verbose_mode_are_bare_codes() {
    let mut b = Bench::new(FluidncConfig {
        verbose_errors: false,
        report_interval: None,
        ..FluidncConfig::default()
    });
    b.host.clear();
    for line in ["G1 X10", "$Q", "G2 X1", "X1X2", "1X"] {
        b.line(line);
    }
    let long = "G1".to_owned() + &"0".repeat(300);
    b.line(&long);
    b.run(ms(50));
    assert_eq!(
        b.host.texts(),
        [
            "error:22", "error:3", "error:20", "error:25", "error:1", "error:11"
        ]
    );
}

#[test]
fn a_move_at_300_is_clamped_to_200_and_takes_distance_over_rate_plus_one_ramp() {
    let mut b = Bench::default();
    b.host.clear();
    let sent = b.now();
    b.send(b"G91 G1 X10 F300\n");
    b.run(ms(4_000));
    let lines = b.host.lines();
    assert_eq!(lines[0].1, "ok");
    let reps = reports(&lines);
    let states: Vec<&str> = reps.iter().map(|(_, r)| state_of(r)).collect();
    assert_eq!(states.first(), Some(&"Run"));
    assert_eq!(states.last(), Some(&"Idle"));
    // Every Run report shows a feed at or below the axis limit, and the cruise is 200.
    for (_, r) in &reps {
        let fs: f64 = r
            .split('|')
            .find_map(|f| f.strip_prefix("FS:"))
            .and_then(|f| f.split(',').next())
            .and_then(|f| f.trim_end_matches('>').parse().ok())
            .unwrap();
        assert!(fs <= 200.0, "{r}");
    }
    assert!(reps.iter().any(|(_, r)| r.contains("FS:200,0")));
    let (idle_at, idle) = reps.last().unwrap();
    assert_eq!(mpos_of(idle), [10.0, 0.0, 0.0, 0.0]);
    // 16 bytes to the board at 115200 baud, then 3.0333 s of motion, then the report's bytes.
    let uart = UartConfig::new_8n1(115_200);
    let start = sent + uart.burst_time(16);
    let motion = Profile::rest_to_rest(10.0, 200.0 / 60.0, 100.0).duration();
    assert_eq!(motion, Duration::from_micros(3_033_334));
    assert_near(*idle_at, start + motion, ms(1));
    // The trace says when the board itself changed state.
    let ev = b.events();
    assert!(ev.contains(&(start, "Run".to_owned())));
    assert!(ev.contains(&(start + motion, "Idle".to_owned())));
}

#[test]
fn reports_are_pushed_every_75ms_while_moving_and_once_on_each_change() {
    let mut b = Bench::default();
    b.host.clear();
    b.send(b"G91 G1 X1 F200\n");
    b.run(ms(1_000));
    let reps = reports(&b.host.lines());
    let run: Vec<_> = reps.iter().filter(|(_, r)| state_of(r) == "Run").collect();
    // 1 mm at 3.333 mm/s is 333 ms (+ 33 ms of ramp): reports at 0, 75, …, 300, 375?
    let motion = Profile::rest_to_rest(1.0, 200.0 / 60.0, 100.0).duration();
    let expected_run = motion.as_micros().div_ceil(75_000);
    assert_eq!(run.len() as u64, expected_run, "{reps:?}");
    for w in run.windows(2) {
        assert_near(w[0].0 + ms(75), w[1].0, ms(1));
    }
    let idle: Vec<_> = reps.iter().filter(|(_, r)| state_of(r) == "Idle").collect();
    assert_eq!(idle.len(), 1, "no reports while idle, except the change");
}

#[test]
fn the_report_interval_can_be_changed_and_turned_off() {
    let mut b = Bench::default();
    b.line("$RI=200");
    b.host.clear();
    b.send(b"G91 G1 X3 F200\n");
    b.run(ms(1_500));
    let run: Vec<_> = reports(&b.host.lines())
        .into_iter()
        .filter(|(_, r)| state_of(r) == "Run")
        .collect();
    for w in run.windows(2) {
        assert_near(w[0].0 + ms(200), w[1].0, ms(1));
    }
    assert!(run.len() >= 4, "{run:?}");
    b.line("$Report/Interval=0");
    b.host.clear();
    b.send(b"G91 G1 X1 F200\n");
    b.run(ms(1_000));
    assert!(reports(&b.host.lines()).is_empty());
    b.line("$RI=10");
    b.line("$RI");
    assert!(b.host.texts().contains(&"$Report/Interval=50".to_owned()));
}

#[test]
fn a_question_mark_gets_a_report_at_once_without_an_ok() {
    let mut b = Bench::quiet();
    b.host.clear();
    b.send(b"?");
    b.run(ms(10));
    assert_eq!(
        b.host.texts(),
        ["<Idle|MPos:0.000,0.000,0.000,0.000|FS:0,0|WCO:0.000,0.000,0.000,0.000>"]
    );
    b.host.clear();
    b.send(b"?");
    b.run(ms(10));
    assert_eq!(
        b.host.texts(),
        ["<Idle|MPos:0.000,0.000,0.000,0.000|FS:0,0|Ov:100,100,100>"]
    );
}

#[test]
fn feed_hold_decelerates_through_hold_1_to_hold_0_over_v2_over_2a_and_resume_finishes() {
    let mut b = Bench::default();
    b.send(b"G91 G1 X10 F200\n");
    b.run(ms(1_000));
    let before = b.board.snapshot().mpos[0];
    b.host.clear();
    b.send(b"!");
    b.run(ms(10));
    assert_eq!(state_of(&reports(&b.host.lines())[0].1), "Hold:1");
    b.run(ms(100));
    let reps = reports(&b.host.lines());
    let hold0 = reps.iter().find(|(_, r)| state_of(r) == "Hold:0").unwrap();
    let stopped = mpos_of(&hold0.1)[0];
    let v = 200.0 / 60.0;
    let decel = v * v / 200.0; // 0.0556 mm
    // The `!` took one byte time to arrive; position moved v × 87 µs meanwhile.
    let expected = before + v * 87e-6 + decel;
    assert!(
        (stopped - expected).abs() < 0.002,
        "{stopped} vs {expected}"
    );
    // Held: no more motion, no reports after Hold:0.
    b.host.clear();
    b.run(ms(1_000));
    assert!(b.host.texts().is_empty());
    assert_eq!(b.board.snapshot().state, "Hold:0");
    // `~` resumes and the move completes to its target.
    b.send(b"~");
    b.run(ms(4_000));
    let reps = reports(&b.host.lines());
    assert_eq!(state_of(&reps[0].1), "Run");
    assert_eq!(mpos_of(&reps.last().unwrap().1), [10.0, 0.0, 0.0, 0.0]);
    assert_eq!(state_of(&reps.last().unwrap().1), "Idle");
}

#[test]
fn feed_hold_in_idle_is_hold_0_and_resume_in_hold_1_is_ignored() {
    let mut b = Bench::default();
    b.send(b"!");
    b.run(ms(10));
    assert_eq!(b.board.snapshot().state, "Hold:0");
    b.send(b"~");
    b.run(ms(10));
    assert_eq!(b.board.snapshot().state, "Idle");
    b.send(b"G91 G1 X5 F200\n");
    b.run(ms(500));
    b.send(b"!~");
    b.run(ms(10));
    assert_eq!(b.board.snapshot().state, "Hold:1");
    b.run(ms(100));
    assert_eq!(b.board.snapshot().state, "Hold:0");
}

#[test]
fn reset_while_moving_raises_alarm_3_then_the_banner_and_x_unlocks() {
    let mut b = Bench::quiet();
    b.line("G91 G1 X10 F200");
    b.run(ms(1_000));
    b.host.clear();
    b.send(&[0x18]);
    b.run(ms(20));
    assert_eq!(
        b.host.texts(),
        [
            "[MSG:INFO: ALARM: Abort Cycle]",
            "ALARM:3",
            "",
            BANNER,
            "[MSG:'$H'|'$X' to unlock]"
        ]
    );
    let at_reset = b.board.snapshot();
    assert_eq!(at_reset.state, "Alarm");
    assert!(at_reset.mpos[0] > 3.0 && at_reset.mpos[0] < 4.0);
    b.run(ms(1_000));
    assert_eq!(
        b.board.snapshot().mpos,
        at_reset.mpos,
        "nothing left to run"
    );
    // Locked: G-code is refused, `$` commands work, `$X` unlocks.
    b.host.clear();
    b.line("G91 G1 X1 F100");
    b.line("$X");
    assert_eq!(
        b.host.texts(),
        [
            "error:9",
            "[MSG:ERR: Alarm lock]",
            "[MSG:INFO: Caution: Unlocked]",
            "ok"
        ]
    );
    assert_eq!(b.board.snapshot().state, "Idle");
    // The reset restored the modal state: F is undefined again.
    b.host.clear();
    b.line("G1 X1");
    assert!(b.host.texts().contains(&"error:22".to_owned()));
    assert!(b.events().iter().any(|(_, e)| e == "ALARM:3"));
}

#[test]
fn reset_when_idle_or_fully_held_raises_no_alarm() {
    let mut b = Bench::quiet();
    b.line("G91 G1 X10 F200");
    b.run(ms(500));
    b.send(b"!");
    b.run(ms(100));
    b.host.clear();
    b.send(&[0x18]);
    b.run(ms(20));
    assert_eq!(b.host.texts(), ["", BANNER]);
    assert_eq!(b.board.snapshot().state, "Idle");
}

#[test]
fn a_full_planner_delays_the_ok_until_a_block_finishes() {
    let mut b = Bench::quiet();
    b.line("G91 F200");
    b.host.clear();
    // 16 short moves of 1 mm (≈0.33 s each); the 16th finds 15 blocks planned.
    for _ in 0..16 {
        b.send(b"G1 X1\n");
    }
    b.run(ms(100));
    assert_eq!(b.host.texts().len(), 15, "{:?}", b.host.texts());
    let snap = b.board.snapshot();
    assert_eq!(snap.planner_used, 15);
    assert_eq!(snap.stats.planner_waits, 1);
    let first_block = Profile::rest_to_rest(1.0, 200.0 / 60.0, 100.0).duration();
    b.run(first_block);
    assert_eq!(b.host.texts().len(), 16);
    b.run(ms(10_000));
    assert_eq!(b.board.snapshot().mpos[0], 16.0);
}

#[test]
fn bytes_beyond_the_receive_buffer_are_lost_and_counted() {
    let mut b = Bench::quiet();
    b.line("G91 F200");
    for _ in 0..15 {
        b.send(b"G1 X1\n");
    }
    b.run(ms(50));
    // The planner is full: the next line waits and the buffer fills behind it.
    let flood = b"G1 X1\n".repeat(30);
    b.send(&flood);
    b.run(ms(50));
    let s = b.board.snapshot();
    assert_eq!(s.rx_used, 128);
    assert_eq!(s.stats.overrun, 180 - 6 - 128);
    let metric =
        b.k.with_trace(|t| t.series("fluidnc.rx_overrun").map(|v| v.to_vec()));
    assert_eq!(metric.unwrap_or_default().last().map(|s| s.1), Some(46.0));
    // Realtime bytes still work while the buffer is full.
    b.host.clear();
    b.send(b"?");
    b.run(ms(10));
    assert!(b.host.texts()[0].starts_with("<Run|"));
}

#[test]
fn g92_sets_the_work_offset_and_reports_stay_in_machine_position() {
    let mut b = Bench::quiet();
    b.line("G1 X2 F200");
    b.run(ms(1_500));
    b.line("G92 X0");
    b.line("G90 G1 X1");
    b.run(ms(1_500));
    let s = b.board.snapshot();
    assert_eq!(s.mpos[0], 3.0);
    assert_eq!(s.wpos[0], 1.0);
    b.host.clear();
    b.send(b"?");
    b.run(ms(10));
    assert!(b.host.texts()[0].contains("MPos:3.000,") && b.host.texts()[0].contains("WCO:2.000"));
}

#[test]
fn dollar_commands_answer_like_fluidnc() {
    let mut b = Bench::quiet();
    b.host.clear();
    b.line("$G");
    b.line("G91 G1 F150");
    b.line("$G");
    b.line("$I");
    b.line("$H");
    let t = b.host.texts();
    assert_eq!(t[0], "[GC:G0 G54 G17 G21 G90 G94 M5 M9 T0 F0 S0]");
    assert_eq!(t[3], "[GC:G1 G54 G17 G21 G91 G94 M5 M9 T0 F150 S0]");
    assert!(t.contains(&"[OPT:PH,15,128]".to_owned()));
    assert!(t.contains(&"error:5".to_owned()));
    b.host.clear();
    b.line("$$");
    b.run(ms(50));
    let t = b.host.texts();
    assert!(t.contains(&"$110=200.000".to_owned()) && t.contains(&"$123=100.000".to_owned()));
    assert_eq!(t.last().map(String::as_str), Some("ok"));
    // `$$` needs the machine at rest.
    b.line("G1 X5");
    b.host.clear();
    b.line("$$");
    assert_eq!(b.host.texts()[0], "error:8");
}

#[test]
fn check_mode_answers_every_line_without_moving_and_toggling_it_off_resets() {
    let mut b = Bench::quiet();
    b.host.clear();
    b.line("$C");
    assert_eq!(b.host.texts(), ["[MSG:INFO: Enabled]", "ok"]);
    b.host.clear();
    b.send(b"?");
    b.run(ms(10));
    assert_eq!(state_of(&b.host.texts()[0]), "Check");
    // Parsed and answered at once, errors included; no planner, no dwell, no motion.
    b.host.clear();
    b.line("G91 G1 X5 F100");
    b.line("G4 P10");
    b.line("G1 G0 X1");
    b.line("G1 Y2");
    let t = b.host.texts();
    assert_eq!(t.iter().filter(|l| *l == "ok").count(), 3, "{t:?}");
    assert!(t.contains(&"error:21".to_owned()), "{t:?}");
    b.line("$G");
    assert!(
        b.host
            .texts()
            .contains(&"[GC:G1 G54 G17 G21 G91 G94 M5 M9 T0 F100 S0]".to_owned())
    );
    b.run(ms(2_000));
    let snap = b.board.snapshot();
    assert_eq!(
        (snap.state, snap.mpos, snap.planner_used),
        ("Check", [0.0; 4], 0)
    );
    assert_eq!(snap.dispensed_ml, [0.0; 4]);
    // `$C` again: `ok`, then the reset's banner; Idle with the modal state of a reset.
    b.host.clear();
    b.line("$C");
    assert_eq!(b.host.texts(), ["[MSG:INFO: Disabled]", "ok", "", BANNER]);
    b.host.clear();
    b.line("$G");
    assert_eq!(
        b.host.texts()[0],
        "[GC:G0 G54 G17 G21 G90 G94 M5 M9 T0 F0 S0]"
    );
    assert_eq!(b.board.snapshot().state, "Idle");
    assert!(b.events().iter().any(|(_, e)| e == "Check"));
}

#[test]
fn check_mode_starts_only_from_idle() {
    let mut b = Bench::quiet();
    b.line("G1 X5 F100");
    b.host.clear();
    b.line("$C");
    assert_eq!(b.host.texts()[0], "error:8");
    b.board.raise_alarm(1);
    b.run(ms(10));
    b.host.clear();
    b.line("$C");
    assert_eq!(b.host.texts()[0], "error:8");
    b.line("$X");
    b.host.clear();
    b.line("$C");
    assert_eq!(b.host.texts(), ["[MSG:INFO: Enabled]", "ok"]);
    // A reset also leaves check mode, without an alarm.
    b.host.clear();
    b.send(&[0x18]);
    b.run(ms(20));
    assert!(!b.host.texts().iter().any(|l| l.starts_with("ALARM")));
    assert_eq!(b.board.snapshot().state, "Idle");
}

#[test]
fn the_offsets_report_lists_every_grbl_parameter_line() {
    let mut b = Bench::quiet();
    b.line("G1 X2 F200");
    b.run(ms(1_500));
    b.line("G92 X0");
    b.host.clear();
    b.line("$#");
    // 11 lines take 30 ms on the wire.
    b.run(ms(50));
    let zero = "0.000,0.000,0.000,0.000";
    let mut want: Vec<String> = ["G54", "G55", "G56", "G57", "G58", "G59", "G28", "G30"]
        .iter()
        .map(|n| format!("[{n}:{zero}]"))
        .collect();
    want.push("[G92:2.000,0.000,0.000,0.000]".to_owned());
    want.push("[TLO:0.000]".to_owned());
    want.push(format!("[PRB:{zero}:0]"));
    want.push("ok".to_owned());
    assert_eq!(b.host.texts(), want);
}

#[test]
fn dispensed_volume_follows_the_calibration_and_counts_partial_moves() {
    let mut b = Bench::new(FluidncConfig {
        ml_per_mm: [0.05, 0.1, 0.05, 0.05],
        report_interval: None,
        ..FluidncConfig::default()
    });
    b.line("G91 G1 X20 Y10 F200");
    b.run(ms(10_000));
    let s = b.board.snapshot();
    assert!(
        (s.dispensed_ml[0] - 1.0).abs() < 1e-9,
        "{:?}",
        s.dispensed_ml
    );
    assert!((s.dispensed_ml[1] - 1.0).abs() < 1e-9);
    // A move cut short by a reset counts what it moved.
    b.line("G1 X100");
    b.run(ms(3_000));
    b.send(&[0x18]);
    b.run(ms(10));
    let cut = b.board.snapshot();
    assert!(
        cut.dispensed_ml[0] > 1.4 && cut.dispensed_ml[0] < 1.6,
        "{cut:?}"
    );
    // A power cycle zeroes the position but not the totals.
    b.board.power_cycle();
    b.run(ms(10));
    let after = b.board.snapshot();
    assert_eq!(after.mpos, [0.0; 4]);
    assert_eq!(after.dispensed_ml, cut.dispensed_ml);
    let samples =
        b.k.with_trace(|t| t.series("fluidnc.X.dispensed_ml").map(<[_]>::len));
    assert!(samples.unwrap_or(0) >= 2);
}

#[test]
fn a_stuck_motor_stops_the_position_but_the_board_still_says_run() {
    let mut b = Bench::default();
    b.line("G91 G1 X10 F200");
    b.run(ms(1_000));
    b.board.set_stuck(0, true);
    let at = b.board.snapshot().mpos;
    b.host.clear();
    b.run(ms(5_000));
    let reps = reports(&b.host.lines());
    assert!(reps.len() > 60);
    assert!(reps.iter().all(|(_, r)| state_of(r) == "Run"));
    let printed = format!("MPos:{:.3},0.000,0.000,0.000|", at[0]);
    assert!(
        reps.iter().all(|(_, r)| r.contains(&printed)),
        "{printed} {reps:?}"
    );
    // Freed, it finishes the move.
    b.board.set_stuck(0, false);
    b.run(ms(4_000));
    let s = b.board.snapshot();
    assert_eq!((s.state, s.mpos[0]), ("Idle", 10.0));
}

#[test]
fn the_never_idle_fault_keeps_reporting_run_after_the_motion_ends() {
    let mut b = Bench::default();
    b.board.set_never_idle(true);
    b.line("G91 G1 X1 F200");
    b.run(ms(2_000));
    b.host.clear();
    b.send(b"?");
    b.run(ms(1_000));
    let reps = reports(&b.host.lines());
    assert!(reps.len() > 10, "periodic reports go on");
    assert!(reps.iter().all(|(_, r)| state_of(r) == "Run"));
    assert!(reps.iter().all(|(_, r)| mpos_of(r)[0] == 1.0));
    assert!(
        b.events()
            .iter()
            .any(|(_, e)| e == "fault: Idle reported as Run")
    );
    b.board.set_never_idle(false);
    b.run(ms(10));
    assert_eq!(b.board.snapshot().state, "Idle");
}

#[test]
fn an_alarm_at_a_chosen_time_stops_the_motion_and_locks_g_code() {
    let mut b = Bench::default();
    b.line("G91 G1 X10 F200");
    let at = b.now() + ms(1_500);
    b.board.schedule_alarm(1, at);
    b.host.clear();
    b.run(ms(3_000));
    let lines = b.host.lines();
    let (t, _) = lines.iter().find(|(_, l)| l == "ALARM:1").unwrap();
    assert!(*t > at && *t < at + ms(5), "{t}");
    assert!(lines.iter().any(|(_, l)| l.starts_with("<Alarm|")));
    let s = b.board.snapshot();
    assert_eq!(s.state, "Alarm");
    b.run(ms(3_000));
    assert_eq!(b.board.snapshot().mpos, s.mpos);
    assert!(
        b.events()
            .iter()
            .any(|(e_at, e)| *e_at == at && e == "ALARM:1")
    );
}

#[test]
fn garbage_and_an_unresponsive_board_are_counted() {
    let mut b = Bench::quiet();
    b.host.clear();
    b.board.inject_garbage(40);
    b.run(ms(10));
    assert_eq!(b.host.log.borrow().len(), 40);
    assert_eq!(b.board.snapshot().stats.garbage, 40);
    b.board.set_unresponsive(true);
    b.host.clear();
    b.line("G90");
    b.send(b"?");
    b.run(ms(50));
    assert!(b.host.log.borrow().is_empty());
    assert_eq!(b.board.snapshot().stats.ignored, 5);
    b.board.set_unresponsive(false);
    b.line("G90");
    assert_eq!(b.host.texts(), ["ok"]);
}

#[test]
fn a_pulled_cable_loses_the_bytes_both_ways() {
    let mut b = Bench::quiet();
    b.link.disconnect();
    b.host.clear();
    b.line("G90");
    assert!(b.host.texts().is_empty());
    assert_eq!(b.link.stats(Direction::AtoB).disconnected, 4);
    b.link.reconnect();
    b.line("G90");
    assert_eq!(b.host.texts(), ["ok"]);
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    let run = || {
        let mut b = Bench::default();
        b.line("G91 G1 X2 Y1 F300");
        b.board.inject_garbage(8);
        b.run(ms(500));
        b.send(b"!");
        b.run(ms(500));
        b.send(&[0x18]);
        b.run(ms(100));
        b.k.with_trace(|t| t.hash())
    };
    assert_eq!(run(), run());
}

// ---------------------------------------------------------------------------------------------
// The sans-IO core on its own: exact instants

mod core {
    use super::*;
    use rand::SeedableRng;

    fn sim() -> FluidncSim {
        let rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut s = FluidncSim::new(FluidncConfig::default(), rng, Instant::ZERO).unwrap();
        let _ = s.poll_output();
        s
    }

    /// Run the core's deadlines up to `until`; every printed line with the instant it was printed.
    fn drive(s: &mut FluidncSim, until: Instant) -> Vec<(Instant, String)> {
        let mut out = Vec::new();
        while let Some(t) = s.poll_deadline().filter(|&t| t <= until) {
            s.handle_deadline(t);
            let text = String::from_utf8(s.poll_output()).unwrap();
            out.extend(text.lines().map(|l| (t, l.to_owned())));
        }
        out
    }

    #[test]
    fn run_reports_come_exactly_every_interval_and_idle_exactly_at_the_end() {
        let mut s = sim();
        let t0 = Instant::from_millis(10);
        s.handle_bytes(b"G91 G1 X1 F300\n", t0);
        let first = String::from_utf8(s.poll_output()).unwrap();
        assert!(first.starts_with("ok\n<Run|MPos:0.000,"), "{first}");
        let out = drive(&mut s, Instant::from_millis(2_000));
        let motion = Profile::rest_to_rest(1.0, 200.0 / 60.0, 100.0).duration();
        let (runs, rest): (Vec<_>, Vec<_>) = out.iter().partition(|(_, l)| l.starts_with("<Run"));
        for (i, (t, _)) in runs.iter().enumerate() {
            assert_eq!(*t, t0 + ms(75 * (i as u64 + 1)));
        }
        assert_eq!(runs.len() as u64, motion.as_micros() / 75_000);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].0, t0 + motion);
        assert!(
            rest[0]
                .1
                .starts_with("<Idle|MPos:1.000,0.000,0.000,0.000|FS:0,0")
        );
        assert_eq!(s.poll_deadline(), None, "idle costs nothing");
    }

    #[test]
    fn a_hold_takes_v_over_a_and_a_multi_axis_move_keeps_each_axis_within_its_rate() {
        let mut s = sim();
        s.handle_bytes(b"G91 G1 X30 Y40 F6000\n", Instant::ZERO);
        let _ = s.poll_output();
        // 3:4 vector at 6000 is clamped by Y: 200 / 0.8 = 250 mm/min along the vector.
        let snap = s.snapshot(Instant::from_millis(1_000));
        assert!(
            (snap.feed_mm_min - 250.0).abs() < 1e-9,
            "{}",
            snap.feed_mm_min
        );
        let _ = s.poll_output();
        let t = Instant::from_millis(1_000);
        s.handle_bytes(b"!", t);
        assert!(
            String::from_utf8(s.poll_output())
                .unwrap()
                .starts_with("<Hold:1|")
        );
        let out = drive(&mut s, Instant::from_millis(2_000));
        let hold0: Vec<_> = out
            .iter()
            .filter(|(_, l)| l.starts_with("<Hold:0"))
            .collect();
        assert_eq!(hold0.len(), 1);
        // Along the vector the acceleration is limited by Y too: 100 / 0.8 = 125 mm/s².
        let v = 250.0 / 60.0;
        let stop = Duration::from_micros((v / 125.0 * 1e6f64).ceil() as u64);
        assert_eq!(hold0[0].0, t + stop);
    }

    #[test]
    fn reset_while_still_decelerating_is_an_abort_and_a_reset_in_alarm_stays_in_alarm() {
        let mut s = sim();
        s.handle_bytes(b"G91 G1 X10 F200\n", Instant::ZERO);
        let t = Instant::from_millis(500);
        s.handle_bytes(b"!", t);
        assert_eq!(s.state(), MachineState::Hold { complete: false });
        s.handle_bytes(&[0x18], t + ms(10));
        assert_eq!(s.state(), MachineState::Alarm);
        let out = String::from_utf8(s.poll_output()).unwrap();
        assert!(out.contains("ALARM:3\n"), "{out}");
        s.handle_bytes(&[0x18], t + ms(20));
        assert_eq!(s.state(), MachineState::Alarm);
        let out = String::from_utf8(s.poll_output()).unwrap();
        assert!(
            !out.contains("ALARM:3") && out.contains("'$X' to unlock"),
            "{out}"
        );
    }

    #[test]
    fn a_dwell_answers_after_the_planner_empties_and_its_time() {
        let mut s = sim();
        s.handle_bytes(b"G91 G1 X1 F200\nG4 P0.5\n", Instant::ZERO);
        assert_eq!(
            String::from_utf8(s.poll_output())
                .unwrap()
                .matches("ok")
                .count(),
            1
        );
        let motion = Profile::rest_to_rest(1.0, 200.0 / 60.0, 100.0).duration();
        let out = drive(&mut s, Instant::from_millis(5_000));
        let oks: Vec<_> = out.iter().filter(|(_, l)| l == "ok").collect();
        assert_eq!(oks.len(), 1);
        assert_eq!(oks[0].0, Instant::ZERO + motion + ms(500));
    }

    #[test]
    fn cr_and_lf_each_end_a_line() {
        let mut s = sim();
        s.handle_bytes(b"G90\r\nG91\rG90\n", Instant::ZERO);
        assert_eq!(s.poll_output(), b"ok\nok\nok\nok\n");
    }
}

proptest::proptest! {
    #[test]
    fn the_core_survives_any_bytes_and_keeps_its_buffers_bounded(
        chunks in proptest::collection::vec(
            (proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80), 0u64..200),
            0..40,
        ),
    ) {
        use rand::SeedableRng;
        let rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let mut s = FluidncSim::new(FluidncConfig::default(), rng, Instant::ZERO).unwrap();
        let mut now = Instant::ZERO;
        for (bytes, dt) in &chunks {
            now += ms(*dt);
            s.handle_bytes(bytes, now);
            s.handle_bytes(b"G91 G1 X0.5 F300\n", now);
            if let Some(d) = s.poll_deadline().filter(|&d| d <= now) {
                s.handle_deadline(d);
            }
            let _ = s.poll_output();
            let snap = s.snapshot(now);
            proptest::prop_assert!(snap.planner_used <= 15);
            proptest::prop_assert!(snap.rx_used <= 128);
            proptest::prop_assert!(snap.mpos.iter().all(|v| v.is_finite()));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The firmware's own motion task against the board

mod firmware {
    use super::*;
    use embassy_sync::blocking_mutex::raw::NoopRawMutex;
    use firmware_core::pump::dispense::{
        MotionChannels, MotionCommand, MotionConfig, MotionTask, PumpEvent, PumpMotion,
    };
    use firmware_core::pump::estop::EstopTrigger;
    use firmware_core::pump::{DispenseRequest, Governor, Pump};

    struct HostRx(Host);
    struct HostTx(Host);
    impl ErrorType for HostRx {
        type Error = Infallible;
    }
    impl ErrorType for HostTx {
        type Error = Infallible;
    }
    impl Read for HostRx {
        /// Cancel-safe: bytes leave the queue only when the read completes.
        async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
            loop {
                {
                    let mut q = self.0.from_board.borrow_mut();
                    if !q.is_empty() {
                        let n = buf.len().min(q.len());
                        for (slot, b) in buf.iter_mut().zip(q.drain(..n)) {
                            *slot = b;
                        }
                        return Ok(n);
                    }
                }
                self.0.in_kick.wait().await;
            }
        }
    }
    impl Write for HostTx {
        async fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
            self.0.send(buf);
            Ok(buf.len())
        }
        async fn flush(&mut self) -> Result<(), Infallible> {
            Ok(())
        }
    }

    type Channels = MotionChannels<NoopRawMutex>;

    fn start(b: &mut Bench) -> &'static Channels {
        let gov: &'static Governor<NoopRawMutex, 1> = Box::leak(Box::new(Governor::new()));
        let ch: &'static Channels = Box::leak(Box::new(MotionChannels::new()));
        let core = PumpMotion::new(gov, MotionConfig::default());
        let mut task = MotionTask::new(
            core,
            HostRx(b.host.clone()),
            HostTx(b.host.clone()),
            b.k.clock(),
            ch,
        );
        b.k.spawn(TaskSpec::world("motion"), async move {
            task.run().await;
        })
        .detach();
        ch
    }

    fn drain(ch: &Channels) -> Vec<PumpEvent> {
        std::iter::from_fn(|| ch.events.try_receive()).collect()
    }

    fn dose(ml: f32, flow: f32) -> MotionCommand {
        MotionCommand::Dispense(
            heapless::Vec::from_slice(&[DispenseRequest {
                pump: Pump::X,
                volume_ml: ml,
                flow_ml_min: flow,
            }])
            .unwrap(),
        )
    }

    #[test]
    fn the_firmware_doses_5_ml_and_the_board_pumps_5_ml() {
        let mut b = Bench::default();
        let ch = start(&mut b);
        b.run(ms(10));
        // 5 ml at 0.05 ml/mm is 100 mm; 10 ml/min is 200 mm/min: 30 s.
        assert!(ch.commands.offer(dose(5.0, 10.0)).is_queued());
        b.run(ms(40_000));
        let events = drain(ch);
        let done = events.iter().find_map(|e| match e {
            PumpEvent::DispenseComplete {
                dispensed_ml,
                duration_ms,
                ..
            } => Some((*dispensed_ml, *duration_ms)),
            _ => None,
        });
        let (ml, duration_ms) = done.unwrap_or_else(|| panic!("no completion: {events:?}"));
        assert!((ml[0] - 5.0).abs() < 1e-3, "{ml:?}");
        assert!((30_000..30_300).contains(&duration_ms), "{duration_ms}");
        let board = b.board.snapshot();
        assert!((board.dispensed_ml[0] - 5.0).abs() < 1e-9);
        assert_eq!(board.state, "Idle");
    }

    #[test]
    fn the_firmware_estop_leaves_the_board_idle_with_no_motion_left() {
        let mut b = Bench::default();
        let ch = start(&mut b);
        b.run(ms(10));
        assert!(ch.commands.offer(dose(5.0, 10.0)).is_queued());
        b.run(ms(5_000));
        ch.estop.signal(EstopTrigger::Button);
        b.run(ms(2_000));
        let stopped = b.board.snapshot();
        assert_eq!(
            stopped.state, "Idle",
            "the stop sequence resets and unlocks"
        );
        assert!(
            stopped.mpos[0] > 15.0 && stopped.mpos[0] < 17.0,
            "{stopped:?}"
        );
        b.run(ms(30_000));
        assert_eq!(b.board.snapshot().mpos, stopped.mpos);
        let events = drain(ch);
        let aborted = events.iter().find_map(|e| match e {
            PumpEvent::DispenseAborted { dispensed_ml, .. } => Some(*dispensed_ml),
            _ => None,
        });
        let ml = aborted.unwrap_or_else(|| panic!("no abort: {events:?}"));
        assert!(
            (f64::from(ml[0]) - stopped.dispensed_ml[0]).abs() < 1e-3,
            "{ml:?}"
        );
        // The board saw `!` first and never a resume.
        let ev = b.events();
        let texts: Vec<&str> = ev.iter().map(|(_, e)| e.as_str()).collect();
        let hold = texts.iter().position(|e| *e == "Hold:1").unwrap();
        let reset = texts.iter().position(|e| *e == "reset").unwrap();
        assert!(hold < reset, "{texts:?}");
    }
}
