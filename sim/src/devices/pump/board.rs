//! The FluidNC motion board the pump twin talks to, as a world task on the far end of the
//! controller's UART.
//!
//! This is the twin's own compact model of the Grbl 1.1 / FluidNC serial side (reference
//! `protocols.md` §1): line protocol with `ok` / `error:N`, realtime `?` `!` `~` 0x18, status
//! reports `<State|MPos:x,y,z,a|FS:f,0>` answered on `?` and pushed on every state change, a
//! planner that runs `G1` moves one after another at their feed (no acceleration), feed hold with
//! a short deceleration, soft reset with the banner (and `ALARM:3` when reset while moving), and
//! `$X`. Fault knobs: an alarm mid-move, `Idle` that never comes, garbage bytes, a stuck axis.
//! The board also measures what only the far end of the wire can see: the E-stop latency (button
//! edge → `!` received) and the command latency (remote command → its `G1` received).
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

use embassy_futures::select::{Either3, select3};
use embassy_sync::blocking_mutex::raw::NoopRawMutex;
use embassy_sync::signal::Signal;
use embedded_io_async::{Read, Write};
use firmware_core::time::{Duration, Instant};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::kernel::{SimClock, Tracer};
use crate::periph::uart::UartPort;

/// Axes of the board (X Y Z A, one per pump).
pub const AXES: usize = 4;
/// Time a feed hold takes to decelerate to `Hold:0`.
pub const DECEL: Duration = Duration::from_millis(30);
/// Planner blocks the board buffers (Grbl's default is 16).
const PLANNER: usize = 16;
const BANNER: &str = "\r\nGrbl 3.9 [FluidNC v3.9.9 (noradio) '$' for help]\r\n";

/// The board's machine state, as it prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    /// Nothing to do.
    Idle,
    /// Moving.
    Run,
    /// Feed hold; `true` while still decelerating.
    Hold(bool),
    /// Alarm, locked until `$X` or a reset.
    Alarm,
}

impl Machine {
    fn name(self) -> &'static str {
        match self {
            Machine::Idle => "Idle",
            Machine::Run => "Run",
            Machine::Hold(true) => "Hold:1",
            Machine::Hold(false) => "Hold:0",
            Machine::Alarm => "Alarm",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Move {
    delta: [f64; AXES],
    feed: f64,
}

#[derive(Debug, Clone, Copy)]
struct Running {
    from: [f64; AXES],
    to: [f64; AXES],
    start: Instant,
    duration: Duration,
}

impl Running {
    fn at(&self, now: Instant) -> [f64; AXES] {
        let f = if self.duration == Duration::ZERO {
            1.0
        } else {
            (now.saturating_since(self.start).as_micros() as f64 / self.duration.as_micros() as f64)
                .min(1.0)
        };
        std::array::from_fn(|i| self.from[i] + (self.to[i] - self.from[i]) * f)
    }
    fn end(&self) -> Instant {
        self.start + self.duration
    }
}

/// Shared state of the board: what the world task and the scenario actions both touch.
pub struct BoardState {
    machine: Machine,
    pos: [f64; AXES],
    running: Option<Running>,
    /// Rest of a held move: target and time left.
    held: Option<([f64; AXES], Duration)>,
    hold_done: Option<Instant>,
    planner: VecDeque<Move>,
    relative: bool,
    feed: f64,
    line: Vec<u8>,
    out: Vec<u8>,
    /// Fault: the move ends but the board keeps reporting `Run`.
    pub never_idle: bool,
    /// Fault: these axes do not move (a stalled motor or a slipping pump head).
    pub stuck: [bool; AXES],
    /// The last line or realtime command received, for the `uart.last_tx` state.
    pub last_rx: String,
    /// Lines received.
    pub lines: u64,
    /// When the E-stop button was pressed, until the `!` arrives.
    pub estop_edge: Option<Instant>,
    /// When a remote command that should start motion was sent, until its `G1` arrives.
    pub command_sent: Option<Instant>,
}

/// The board's handle for the device: state, wake-up and trace names.
#[derive(Clone)]
pub struct Board {
    /// The state.
    pub state: Rc<RefCell<BoardState>>,
    kick: Rc<Signal<NoopRawMutex, ()>>,
    clock: SimClock,
    tracer: Tracer,
    source: Rc<str>,
    metric_estop: Rc<str>,
    metric_cmd: Rc<str>,
    rng: Rc<RefCell<ChaCha8Rng>>,
    /// `!` bytes received (every one, not only after a button edge).
    pub holds: Rc<Cell<u64>>,
}

impl Board {
    /// A board named `<device>.fluidnc` in the trace.
    pub fn new(device: &str, clock: SimClock, tracer: Tracer, rng: ChaCha8Rng) -> Board {
        Board {
            state: Rc::new(RefCell::new(BoardState {
                machine: Machine::Idle,
                pos: [0.0; AXES],
                running: None,
                held: None,
                hold_done: None,
                planner: VecDeque::new(),
                relative: false,
                feed: 0.0,
                line: Vec::new(),
                out: Vec::new(),
                never_idle: false,
                stuck: [false; AXES],
                last_rx: String::new(),
                lines: 0,
                estop_edge: None,
                command_sent: None,
            })),
            kick: Rc::new(Signal::new()),
            clock,
            tracer,
            source: format!("{device}.fluidnc").into(),
            metric_estop: format!("{device}.estop.latency_us").into(),
            metric_cmd: format!("{device}.cmd.latency_ms").into(),
            rng: Rc::new(RefCell::new(rng)),
            holds: Rc::new(Cell::new(0)),
        }
    }

    /// The machine state now.
    pub fn machine(&self) -> Machine {
        self.state.borrow().machine
    }

    /// Raise `ALARM:code` at once: motion stops where it is and the planner is flushed.
    pub fn alarm(&self, code: u16) {
        let now = self.clock.now();
        let mut st = self.state.borrow_mut();
        st.freeze(now);
        st.planner.clear();
        st.held = None;
        st.hold_done = None;
        st.machine = Machine::Alarm;
        st.out
            .extend_from_slice(format!("ALARM:{code}\r\n").as_bytes());
        drop(st);
        self.tracer.record(&self.source, format!("alarm {code}"));
        self.push_report();
        self.kick.signal(());
    }

    /// Send `n` random bytes (line noise, a wrong baud rate) to the controller.
    pub fn garbage(&self, n: usize) {
        let bytes: Vec<u8> = {
            let mut rng = self.rng.borrow_mut();
            (0..n).map(|_| rng.random()).collect()
        };
        self.state.borrow_mut().out.extend_from_slice(&bytes);
        self.tracer
            .record(&self.source, format!("{n} garbage bytes sent"));
        self.kick.signal(());
    }

    fn push_report(&self) {
        let now = self.clock.now();
        let mut st = self.state.borrow_mut();
        let r = st.report(now);
        st.out.extend_from_slice(r.as_bytes());
    }

    /// Run the board on `port` (its end of the UART). Never returns.
    pub async fn run(self, mut port: UartPort) {
        let mut buf = [0u8; 64];
        loop {
            let out = std::mem::take(&mut self.state.borrow_mut().out);
            if !out.is_empty() {
                let _ = port.write_all(&out).await;
            }
            let next = self.state.borrow().next_event().unwrap_or(Instant::MAX);
            match select3(
                port.read(&mut buf),
                self.clock.sleep_until(next),
                self.kick.wait(),
            )
            .await
            {
                Either3::First(Ok(n)) => {
                    for &b in buf.get(..n).unwrap_or(&[]) {
                        self.byte(b);
                    }
                }
                Either3::First(Err(_)) => {}
                Either3::Second(()) => self.tick(),
                Either3::Third(()) => {}
            }
            self.tick();
        }
    }

    /// Advance time-driven state: deceleration done, move done, next move started.
    fn tick(&self) {
        let now = self.clock.now();
        let mut changed = false;
        {
            let mut st = self.state.borrow_mut();
            if let Some(t) = st.hold_done
                && now >= t
            {
                st.hold_done = None;
                st.machine = Machine::Hold(false);
                changed = true;
            }
            if st.machine == Machine::Run
                && let Some(r) = st.running
                && now >= r.end()
            {
                st.pos = r.to;
                st.running = None;
                if st.never_idle {
                    // The fault: stay in Run forever, position at the target.
                } else if !st.start_next(now) {
                    st.machine = Machine::Idle;
                    changed = true;
                }
            }
        }
        if changed {
            self.push_report();
        }
    }

    fn byte(&self, b: u8) {
        let now = self.clock.now();
        match b {
            b'?' => self.push_report(),
            b'!' => {
                self.holds.set(self.holds.get() + 1);
                let edge = {
                    let mut st = self.state.borrow_mut();
                    st.last_rx = "!".into();
                    st.estop_edge.take()
                };
                if let Some(edge) = edge {
                    let us = now.saturating_since(edge).as_micros();
                    self.tracer.sample(&self.metric_estop, us as f64);
                    self.tracer
                        .record(&self.source, format!("rx ! ({us} us after the button)"));
                } else {
                    self.tracer.record(&self.source, "rx !");
                }
                let moving = {
                    let mut st = self.state.borrow_mut();
                    if st.machine == Machine::Run {
                        st.hold(now);
                        true
                    } else {
                        false
                    }
                };
                if moving {
                    self.push_report();
                }
            }
            b'~' => {
                self.tracer.record(&self.source, "rx ~");
                let resumed = {
                    let mut st = self.state.borrow_mut();
                    st.last_rx = "~".into();
                    st.resume(now)
                };
                if resumed {
                    self.push_report();
                }
            }
            0x18 => {
                self.tracer.record(&self.source, "rx reset");
                let mut st = self.state.borrow_mut();
                st.last_rx = "^X".into();
                let moving = matches!(st.machine, Machine::Run | Machine::Hold(true));
                st.freeze(now);
                st.planner.clear();
                st.held = None;
                st.hold_done = None;
                st.line.clear();
                st.relative = false;
                st.out.extend_from_slice(BANNER.as_bytes());
                if moving {
                    st.machine = Machine::Alarm;
                    st.out.extend_from_slice(b"ALARM:3\r\n");
                } else if st.machine != Machine::Alarm {
                    st.machine = Machine::Idle;
                }
            }
            b'\n' | b'\r' => {
                let line = std::mem::take(&mut self.state.borrow_mut().line);
                let text = String::from_utf8_lossy(&line).trim().to_owned();
                self.line(&text, now);
            }
            b if b >= 0x80 => {} // other realtime commands (overrides): ignored
            b => {
                let mut st = self.state.borrow_mut();
                if st.line.len() < 256 {
                    st.line.push(b);
                }
            }
        }
    }

    fn line(&self, text: &str, now: Instant) {
        let reply = {
            let mut st = self.state.borrow_mut();
            st.lines += 1;
            st.last_rx = text.to_owned();
            st.execute(text, now)
        };
        let moved = matches!(reply, Reply::Moved);
        if !text.is_empty() {
            self.tracer.record(&self.source, format!("rx {text}"));
        }
        if moved {
            let sent = self.state.borrow_mut().command_sent.take();
            if let Some(t) = sent {
                let ms = now.saturating_since(t).as_micros() as f64 / 1000.0;
                self.tracer.sample(&self.metric_cmd, ms);
            }
        }
        let mut st = self.state.borrow_mut();
        match reply {
            Reply::Ok | Reply::Moved => st.out.extend_from_slice(b"ok\r\n"),
            Reply::Error(n) => st
                .out
                .extend_from_slice(format!("error:{n}\r\n").as_bytes()),
        }
        if reply == Reply::Moved && st.running.is_none() && st.machine == Machine::Idle {
            st.start_next(now);
            let r = st.report(now);
            st.out.extend_from_slice(r.as_bytes());
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Reply {
    Ok,
    Moved,
    Error(u16),
}

impl BoardState {
    fn position(&self, now: Instant) -> [f64; AXES] {
        match (&self.running, self.machine) {
            (Some(r), Machine::Run) => r.at(now),
            _ => self.pos,
        }
    }

    fn freeze(&mut self, now: Instant) {
        self.pos = self.position(now);
        self.running = None;
    }

    fn report(&self, now: Instant) -> String {
        let p = self.position(now);
        let feed = match self.machine {
            Machine::Run => self.running.map_or(0.0, |r| {
                let d: f64 = (0..AXES).map(|i| (r.to[i] - r.from[i]).powi(2)).sum();
                d.sqrt() / (r.duration.as_micros() as f64 / 60e6).max(1e-9)
            }),
            _ => 0.0,
        };
        format!(
            "<{}|MPos:{:.3},{:.3},{:.3},{:.3}|FS:{:.0},0>\r\n",
            self.machine.name(),
            p[0],
            p[1],
            p[2],
            p[3],
            feed
        )
    }

    fn next_event(&self) -> Option<Instant> {
        let mut t = self.hold_done;
        if self.machine == Machine::Run
            && let Some(r) = &self.running
        {
            t = Some(t.map_or(r.end(), |t| t.min(r.end())));
        }
        t
    }

    fn start_next(&mut self, now: Instant) -> bool {
        let Some(m) = self.planner.pop_front() else {
            return false;
        };
        let from = self.pos;
        let to: [f64; AXES] = std::array::from_fn(|i| {
            if self.stuck[i] {
                from[i]
            } else {
                from[i] + m.delta[i]
            }
        });
        let len: f64 = m.delta.iter().map(|d| d * d).sum::<f64>().sqrt();
        let minutes = if m.feed > 0.0 { len / m.feed } else { 0.0 };
        self.running = Some(Running {
            from,
            to,
            start: now,
            duration: Duration::from_micros((minutes * 60e6) as u64),
        });
        self.machine = Machine::Run;
        true
    }

    fn hold(&mut self, now: Instant) {
        // Decelerate: the axes go on for half the deceleration time at the old speed.
        let stop_at = now + Duration::from_micros(DECEL.as_micros() / 2);
        if let Some(r) = self.running.take() {
            let p = r.at(stop_at);
            let left = r.end().saturating_since(stop_at);
            self.held = Some((r.to, left));
            self.pos = p;
        }
        self.machine = Machine::Hold(true);
        self.hold_done = Some(now + DECEL);
    }

    fn resume(&mut self, now: Instant) -> bool {
        if self.machine != Machine::Hold(false) {
            return false;
        }
        match self.held.take() {
            Some((to, left)) => {
                self.running = Some(Running {
                    from: self.pos,
                    to,
                    start: now,
                    duration: left,
                });
                self.machine = Machine::Run;
            }
            None => {
                if !self.start_next(now) {
                    self.machine = Machine::Idle;
                }
            }
        }
        true
    }

    fn execute(&mut self, text: &str, _now: Instant) -> Reply {
        if text.is_empty() {
            return Reply::Ok;
        }
        if let Some(rest) = text.strip_prefix('$') {
            if rest.eq_ignore_ascii_case("X") {
                if self.machine == Machine::Alarm {
                    self.machine = Machine::Idle;
                    self.out.extend_from_slice(b"[MSG:Caution: Unlocked]\r\n");
                }
                return Reply::Ok;
            }
            return Reply::Ok;
        }
        if self.machine == Machine::Alarm {
            return Reply::Error(9);
        }
        let mut words = [None::<f64>; AXES];
        let mut feed = None;
        let mut g92 = false;
        let upper = text.to_ascii_uppercase();
        let bytes = upper.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let letter = bytes[i];
            i += 1;
            if letter == b' ' {
                continue;
            }
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_digit() || matches!(bytes[i], b'.' | b'-'))
            {
                i += 1;
            }
            let Ok(v) = upper[start..i].parse::<f64>() else {
                return Reply::Error(2);
            };
            match letter {
                b'G' => match v as u32 {
                    // G0/G1: the pump firmware only ever moves in G1, and axis words move in the modal mode.
                    0 | 1 => {}
                    90 => self.relative = false,
                    91 => self.relative = true,
                    92 => g92 = true,
                    21 | 94 | 17 => {}
                    _ => return Reply::Error(20),
                },
                b'X' => words[0] = Some(v),
                b'Y' => words[1] = Some(v),
                b'Z' => words[2] = Some(v),
                b'A' => words[3] = Some(v),
                b'F' => feed = Some(v),
                b'M' | b'N' => {}
                _ => return Reply::Error(20),
            }
        }
        if let Some(f) = feed {
            self.feed = f;
        }
        if g92 || words.iter().all(Option::is_none) {
            return Reply::Ok;
        }
        if self.feed <= 0.0 {
            return Reply::Error(22);
        }
        if self.planner.len() >= PLANNER {
            // The real board would not read the line yet; the client's character counting keeps
            // it from ever getting here.
            return Reply::Error(24);
        }
        let base = self
            .planner
            .iter()
            .fold(self.running.map_or(self.pos, |r| r.to), |mut p, m| {
                for (a, d) in p.iter_mut().zip(m.delta) {
                    *a += d;
                }
                p
            });
        let delta: [f64; AXES] = std::array::from_fn(|k| match words[k] {
            Some(v) if self.relative => v,
            Some(v) => v - base[k],
            None => 0.0,
        });
        self.planner.push_back(Move {
            delta,
            feed: self.feed,
        });
        Reply::Moved
    }
}
