//! The sans-IO FluidNC core: bytes in, bytes out, deadlines, and the motion model.
use std::collections::VecDeque;
use std::fmt::Write as _;

use firmware_core::time::{Duration, Instant};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::gcode::{self, MotionMode, NonModal, code};
use super::motion::{Profile, limit_by_axes, secs_since};

/// Number of axes (X, Y, Z, A: pumps 1 to 4).
pub const AXES: usize = 4;
/// Axis letters in report order.
pub const AXIS_NAMES: [char; AXES] = ['X', 'Y', 'Z', 'A'];
/// FluidNC's shortest auto-report interval (`$RI` below it is raised to it).
pub const MIN_REPORT_INTERVAL: Duration = Duration::from_millis(50);

/// Settings of the simulated board. The defaults are the pump's `btt_rodent_uart.yaml`.
#[derive(Debug, Clone, PartialEq)]
pub struct FluidncConfig {
    /// Per-axis `max_rate_mm_per_min`.
    pub max_rate_mm_min: [f64; AXES],
    /// Per-axis `acceleration_mm_per_sec2`.
    pub accel_mm_s2: [f64; AXES],
    /// Pump calibration: millilitres per millimetre of axis travel.
    pub ml_per_mm: [f64; AXES],
    /// `report_interval_ms` of the UART channel; `None` turns auto-reporting off.
    pub report_interval: Option<Duration>,
    /// Usable planner blocks (Grbl: 16-slot ring, 15 usable).
    pub planner_blocks: usize,
    /// Receive buffer, bytes. Bytes arriving when it is full are lost and counted as overrun.
    pub rx_buffer: usize,
    /// Longest line, bytes (`Channel::maxLine`); longer lines answer `error:11`.
    pub max_line: usize,
    /// `verbose_errors`: a `[MSG:ERR: …]` line follows each `error:N`.
    pub verbose_errors: bool,
    /// The start-up banner, printed after an empty line at power-up and after every reset.
    pub banner: String,
    /// At power-up, print the UART channel's `[MSG:RST]` and `[EXP:ID]` before the banner.
    pub boot_messages: bool,
    /// Time from power-up to the banner; bytes received meanwhile are ignored (counted).
    pub boot_time: Duration,
}

impl Default for FluidncConfig {
    fn default() -> Self {
        FluidncConfig {
            max_rate_mm_min: [200.0; AXES],
            accel_mm_s2: [100.0; AXES],
            ml_per_mm: [0.05; AXES],
            report_interval: Some(Duration::from_millis(75)),
            planner_blocks: 15,
            rx_buffer: 128,
            max_line: 255,
            verbose_errors: true,
            banner: "Grbl 3.9 [FluidNC v3.9.9 (noradio) '$' for help]".to_owned(),
            boot_messages: true,
            boot_time: Duration::ZERO,
        }
    }
}

/// Why a [`FluidncConfig`] cannot describe a machine.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FluidncConfigError {
    /// Rates, accelerations and calibrations must be positive and finite.
    #[error("{what} of axis {axis} must be a positive number, got {value}")]
    NotPositive {
        /// Which setting.
        what: &'static str,
        /// Axis letter.
        axis: char,
        /// The bad value.
        value: f64,
    },
    /// The planner needs at least one block.
    #[error("planner_blocks must be at least 1")]
    NoPlanner,
    /// The receive buffer and the line must hold at least one byte.
    #[error("rx_buffer and max_line must be at least 1")]
    NoBuffer,
}

impl FluidncConfig {
    /// Check the settings.
    pub fn validate(&self) -> Result<(), FluidncConfigError> {
        for (what, values) in [
            ("max_rate_mm_min", &self.max_rate_mm_min),
            ("accel_mm_s2", &self.accel_mm_s2),
            ("ml_per_mm", &self.ml_per_mm),
        ] {
            for (i, &v) in values.iter().enumerate() {
                if !(v.is_finite() && v > 0.0) {
                    return Err(FluidncConfigError::NotPositive {
                        what,
                        axis: AXIS_NAMES[i],
                        value: v,
                    });
                }
            }
        }
        if self.planner_blocks == 0 {
            return Err(FluidncConfigError::NoPlanner);
        }
        if self.rx_buffer == 0 || self.max_line == 0 {
            return Err(FluidncConfigError::NoBuffer);
        }
        Ok(())
    }
}

/// The machine state (what a report's first field says, before faults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineState {
    /// Nothing running.
    Idle,
    /// Executing (or stalled on) a block.
    Run,
    /// Feed hold; `complete` once decelerated to rest.
    Hold {
        /// `Hold:0` when true, `Hold:1` while decelerating.
        complete: bool,
    },
    /// Alarm: G-code locked until `$X`.
    Alarm,
    /// G-code check mode (`$C`): lines are parsed and answered, nothing moves.
    Check,
}

impl MachineState {
    /// The name as printed in a report.
    pub fn name(self) -> &'static str {
        match self {
            MachineState::Idle => "Idle",
            MachineState::Run => "Run",
            MachineState::Hold { complete: true } => "Hold:0",
            MachineState::Hold { complete: false } => "Hold:1",
            MachineState::Alarm => "Alarm",
            MachineState::Check => "Check",
        }
    }
}

/// Counters of the board; every byte that is not acted on lands in one of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FluidncStats {
    /// Lines executed (each answered by `ok` or `error:N`).
    pub lines: u64,
    /// `ok` responses.
    pub oks: u64,
    /// `error:N` responses.
    pub errors: u64,
    /// Bytes lost because the receive buffer was full.
    pub overrun: u64,
    /// Bytes ignored while booting or unresponsive.
    pub ignored: u64,
    /// Status reports sent (asked and pushed).
    pub reports: u64,
    /// Soft resets.
    pub resets: u64,
    /// Alarms raised.
    pub alarms: u64,
    /// Realtime bytes without a modelled action (overrides, macros, 0x80-0xFF).
    pub realtime_ignored: u64,
    /// Bytes of output suppressed while unresponsive.
    pub output_suppressed: u64,
    /// Garbage bytes injected into the output.
    pub garbage: u64,
    /// Times a line waited for a free planner block before its `ok`.
    pub planner_waits: u64,
}

/// What an observer (the twin, a scenario) can read.
#[derive(Debug, Clone, PartialEq)]
pub struct FluidncSnapshot {
    /// State name as a report would print it now (faults included).
    pub state: &'static str,
    /// Machine position, mm.
    pub mpos: [f64; AXES],
    /// Work position (MPos − WCO), mm.
    pub wpos: [f64; AXES],
    /// Actual feed, mm/min.
    pub feed_mm_min: f64,
    /// Net millilitres each pump has moved since power-on (reverse travel counts negative).
    pub dispensed_ml: [f64; AXES],
    /// Planner blocks in use (the executing one included).
    pub planner_used: usize,
    /// Bytes waiting in the receive buffer.
    pub rx_used: usize,
    /// Counters.
    pub stats: FluidncStats,
}

#[derive(Debug, Clone)]
struct PlannedBlock {
    target: [f64; AXES],
    /// Cruise limit along the vector, mm/s.
    vmax: f64,
    /// Acceleration along the vector, mm/s².
    accel: f64,
}

#[derive(Debug, Clone)]
struct Exec {
    from: [f64; AXES],
    unit: [f64; AXES],
    t0: Instant,
    profile: Profile,
    end_at: Instant,
    /// A feed-hold deceleration rather than the block's own profile.
    stopping: bool,
}

impl Exec {
    fn position(&self, now: Instant) -> [f64; AXES] {
        let s = self.profile.distance_at(secs_since(now, self.t0));
        std::array::from_fn(|i| self.from[i] + self.unit[i] * s)
    }
    fn speed(&self, now: Instant) -> f64 {
        self.profile.speed_at(secs_since(now, self.t0))
    }
}

#[derive(Debug, Clone)]
enum Pending {
    /// A parsed move waiting for a free planner block.
    Block(PlannedBlock),
    /// `G4`: waits for the planner to empty, then for `secs`.
    Dwell { secs: f64, until: Option<Instant> },
}

/// The simulated FluidNC board, sans-IO.
///
/// Call order: feed received bytes with [`handle_bytes`](Self::handle_bytes) and the passage of
/// time with [`handle_deadline`](Self::handle_deadline) whenever [`poll_deadline`](Self::poll_deadline)
/// is reached; after each call drain [`poll_output`](Self::poll_output) to the UART and
/// [`poll_trace`](Self::poll_trace) to the trace. Fault methods take `now` too. Every input first
/// brings the motion up to `now`, so `now` must never go backwards.
pub struct FluidncSim {
    cfg: FluidncConfig,
    rng: ChaCha8Rng,
    state: MachineState,
    /// Machine position when no block is executing (or where the executing one started).
    pos: [f64; AXES],
    /// Travel before the last power cycle, mm, for the dispensed totals.
    travel_before: [f64; AXES],
    planner: VecDeque<PlannedBlock>,
    planned_pos: [f64; AXES],
    exec: Option<Exec>,
    pending: Option<Pending>,
    incremental: bool,
    motion_mode: MotionMode,
    feed: f64,
    wco: [f64; AXES],
    rx: VecDeque<u8>,
    line: Vec<u8>,
    line_overflow: bool,
    out: Vec<u8>,
    trace: Vec<String>,
    report_interval: Option<Duration>,
    last_auto: Option<&'static str>,
    next_auto: Instant,
    wco_counter: u32,
    ovr_counter: u32,
    booting_until: Option<Instant>,
    stuck: [bool; AXES],
    never_idle: bool,
    show_run: bool,
    alarm_at: Option<(Instant, u8)>,
    unresponsive: bool,
    /// `$C` toggled check mode off: the reset follows the line's `ok`.
    reset_after_line: bool,
    last_now: Instant,
    stats: FluidncStats,
}

impl FluidncSim {
    /// A board powered on at `now`; its boot output is ready in [`poll_output`](Self::poll_output)
    /// (at once, or after `boot_time`). `rng` drives injected garbage.
    pub fn new(
        cfg: FluidncConfig,
        rng: ChaCha8Rng,
        now: Instant,
    ) -> Result<FluidncSim, FluidncConfigError> {
        cfg.validate()?;
        let mut sim = FluidncSim {
            report_interval: cfg.report_interval,
            cfg,
            rng,
            state: MachineState::Idle,
            pos: [0.0; AXES],
            travel_before: [0.0; AXES],
            planner: VecDeque::new(),
            planned_pos: [0.0; AXES],
            exec: None,
            pending: None,
            incremental: false,
            motion_mode: MotionMode::Rapid,
            feed: 0.0,
            wco: [0.0; AXES],
            rx: VecDeque::new(),
            line: Vec::new(),
            line_overflow: false,
            out: Vec::new(),
            trace: Vec::new(),
            last_auto: Some("Idle"),
            next_auto: now,
            wco_counter: 0,
            ovr_counter: 0,
            booting_until: None,
            stuck: [false; AXES],
            never_idle: false,
            show_run: false,
            alarm_at: None,
            unresponsive: false,
            reset_after_line: false,
            last_now: now,
            stats: FluidncStats::default(),
        };
        sim.power_on(now);
        Ok(sim)
    }

    /// Cut and restore power at `now`: everything is lost (position back to 0, planner, modal
    /// state, faults that live in the board), except the dispensed totals, and the board boots.
    pub fn power_cycle(&mut self, now: Instant) {
        self.advance(now);
        let p = self.position(now);
        for (t, p) in self.travel_before.iter_mut().zip(p) {
            *t += p;
        }
        self.pos = [0.0; AXES];
        self.exec = None;
        self.state = MachineState::Idle;
        self.show_run = false;
        self.alarm_at = None;
        self.report_interval = self.cfg.report_interval;
        self.last_auto = Some("Idle");
        self.unresponsive = false;
        self.flush_for_reset();
        self.trace.push("power cycle".to_owned());
        self.power_on(now);
    }

    fn power_on(&mut self, now: Instant) {
        if self.cfg.boot_messages {
            self.emit("\n[MSG:RST]\n[EXP:ID]\n");
        }
        if self.cfg.boot_time > Duration::ZERO {
            self.booting_until = Some(now + self.cfg.boot_time);
        } else {
            self.boot_done();
        }
    }

    fn boot_done(&mut self) {
        self.booting_until = None;
        self.print_banner();
        self.trace.push("booted".to_owned());
    }

    // --- observation ------------------------------------------------------------------------

    /// The configuration.
    pub fn config(&self) -> &FluidncConfig {
        &self.cfg
    }

    /// The machine state (without the never-idle fault's disguise).
    pub fn state(&self) -> MachineState {
        self.state
    }

    /// Machine position at `now` (which must not be before the last input).
    pub fn position(&self, now: Instant) -> [f64; AXES] {
        match &self.exec {
            Some(e) => e.position(now.min(e.end_at)),
            None => self.pos,
        }
    }

    /// Net dispensed millilitres per pump at `now` (travel × `ml_per_mm`).
    pub fn dispensed_ml(&self, now: Instant) -> [f64; AXES] {
        let p = self.position(now);
        std::array::from_fn(|i| (self.travel_before[i] + p[i]) * self.cfg.ml_per_mm[i])
    }

    /// The counters.
    pub fn stats(&self) -> FluidncStats {
        self.stats
    }

    /// A snapshot at `now` (brings the motion up to `now` first).
    pub fn snapshot(&mut self, now: Instant) -> FluidncSnapshot {
        self.advance(now);
        let mpos = self.position(now);
        FluidncSnapshot {
            state: self.display_state(),
            mpos,
            wpos: std::array::from_fn(|i| mpos[i] - self.wco[i]),
            feed_mm_min: self.feed_now(now),
            dispensed_ml: self.dispensed_ml(now),
            planner_used: self.planner.len(),
            rx_used: self.rx.len(),
            stats: self.stats,
        }
    }

    // --- sans-IO interface ------------------------------------------------------------------

    /// Bytes received from the host at `now`.
    pub fn handle_bytes(&mut self, bytes: &[u8], now: Instant) {
        self.advance(now);
        if self.unresponsive || self.booting_until.is_some() {
            self.stats.ignored += bytes.len() as u64;
            return;
        }
        for &b in bytes {
            match b {
                b'?' => self.emit_report(now),
                b'!' => self.feed_hold(now),
                b'~' => self.cycle_start(now),
                0x18 => self.soft_reset(now),
                0x80..=0xff => self.stats.realtime_ignored += 1,
                _ => {
                    if self.rx.len() < self.cfg.rx_buffer {
                        self.rx.push_back(b);
                    } else {
                        self.stats.overrun += 1;
                    }
                }
            }
            self.process_rx(now);
        }
        self.auto_report(now);
    }

    /// When [`handle_deadline`](Self::handle_deadline) wants to be called.
    #[must_use]
    pub fn poll_deadline(&self) -> Option<Instant> {
        self.next_event()
    }

    /// Handle the passage of time up to `now`.
    pub fn handle_deadline(&mut self, now: Instant) {
        self.advance(now);
    }

    /// Everything the board has printed since the last call. Not bounded by itself: a runner
    /// drains it after every input, as the board's UART driver would.
    #[must_use]
    pub fn poll_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Trace events since the last call (state changes, alarms, errors, resets, faults).
    #[must_use]
    pub fn poll_trace(&mut self) -> Vec<String> {
        std::mem::take(&mut self.trace)
    }

    // --- faults -----------------------------------------------------------------------------

    /// Stall the motor of `axis` (0..4) at `now`: a block moving that axis stops advancing and
    /// the board keeps reporting `Run`. `false` frees it; the block then goes on from rest.
    pub fn set_stuck(&mut self, axis: usize, stuck: bool, now: Instant) {
        self.advance(now);
        let Some(slot) = self.stuck.get_mut(axis) else {
            return;
        };
        if *slot == stuck {
            return;
        }
        *slot = stuck;
        self.trace.push(format!(
            "fault: motor {} {}",
            AXIS_NAMES[axis],
            if stuck { "stuck" } else { "free" }
        ));
        if stuck {
            if let Some(e) = &self.exec
                && e.unit[axis].abs() > 1e-12
                && !e.stopping
            {
                self.pos = e.position(now);
                self.exec = None;
            }
        } else if self.state == MachineState::Run && self.exec.is_none() {
            self.start_next(now);
        }
        self.settle(now);
    }

    /// With `on`, the board never reports `Idle` again after motion ends: it stays `Run`.
    pub fn set_never_idle(&mut self, on: bool, now: Instant) {
        self.advance(now);
        self.never_idle = on;
        if !on {
            self.show_run = false;
        }
        self.trace.push(format!(
            "fault: never idle {}",
            if on { "on" } else { "off" }
        ));
        self.settle(now);
    }

    /// Raise `ALARM:code` at `now`: motion stops where it is, the planner is flushed, G-code is
    /// locked until `$X`.
    pub fn raise_alarm(&mut self, code: u8, now: Instant) {
        self.advance(now);
        self.alarm(code, now);
        self.settle(now);
    }

    /// Raise `ALARM:code` at `at` (replaces an earlier schedule).
    pub fn schedule_alarm(&mut self, code: u8, at: Instant, now: Instant) {
        self.advance(now);
        self.alarm_at = Some((at, code));
        self.settle(now);
    }

    /// With `on`, the board stops answering: received bytes are ignored and nothing is printed
    /// (counted), while the motion it already has goes on. A cable pull is the UART link's
    /// `disconnect`.
    pub fn set_unresponsive(&mut self, on: bool, now: Instant) {
        self.advance(now);
        self.unresponsive = on;
        self.trace.push(format!(
            "fault: unresponsive {}",
            if on { "on" } else { "off" }
        ));
    }

    /// Put `n` random bytes (seeded) into the output stream, as line noise would.
    pub fn inject_garbage(&mut self, n: usize, now: Instant) {
        self.advance(now);
        let bytes: Vec<u8> = (0..n).map(|_| self.rng.random()).collect();
        self.inject_output(&bytes, now);
    }

    /// Put `bytes` into the output stream as they are.
    pub fn inject_output(&mut self, bytes: &[u8], now: Instant) {
        self.advance(now);
        self.stats.garbage += bytes.len() as u64;
        self.trace
            .push(format!("fault: {} garbage bytes", bytes.len()));
        self.emit_bytes(bytes);
    }

    // --- time -------------------------------------------------------------------------------

    fn next_event(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut min = |x: Instant| t = Some(t.map_or(x, |t| t.min(x)));
        if let Some(b) = self.booting_until {
            min(b);
        }
        if let Some(e) = &self.exec {
            min(e.end_at);
        }
        if let Some((at, _)) = self.alarm_at {
            min(at);
        }
        if let Some(Pending::Dwell { until: Some(u), .. }) = &self.pending {
            min(*u);
        }
        if self.report_interval.is_some() && is_motion(self.display_state()) {
            min(self.next_auto);
        }
        t
    }

    /// Bring everything up to `now`, firing what was due in time order.
    fn advance(&mut self, now: Instant) {
        let now = now.max(self.last_now);
        self.last_now = now;
        while let Some(t) = self.next_event().filter(|&t| t <= now) {
            self.fire(t);
        }
    }

    fn fire(&mut self, t: Instant) {
        if self.booting_until.is_some_and(|b| b <= t) {
            self.boot_done();
        }
        if self.exec.as_ref().is_some_and(|e| e.end_at <= t) {
            self.finish_exec(t);
        }
        if let Some((at, code)) = self.alarm_at
            && at <= t
        {
            self.alarm_at = None;
            self.alarm(code, t);
        }
        self.settle(t);
    }

    /// After anything changed at `t`: resume waiting lines and push reports that are due.
    fn settle(&mut self, t: Instant) {
        self.process_rx(t);
        self.auto_report(t);
    }

    fn display_state(&self) -> &'static str {
        if self.show_run && self.state == MachineState::Idle {
            return "Run";
        }
        self.state.name()
    }

    fn set_state(&mut self, s: MachineState) {
        if self.state == s {
            return;
        }
        let was_running = self.state == MachineState::Run;
        self.state = s;
        self.trace.push(s.name().to_owned());
        if s == MachineState::Idle && was_running && self.never_idle {
            self.show_run = true;
            self.trace.push("fault: Idle reported as Run".to_owned());
        }
    }

    fn auto_report(&mut self, t: Instant) {
        let Some(iv) = self.report_interval else {
            return;
        };
        let name = self.display_state();
        let due = is_motion(name) && self.next_auto <= t;
        if self.last_auto != Some(name) || due {
            self.last_auto = Some(name);
            self.next_auto = t + iv;
            self.emit_report(t);
        }
    }

    // --- motion -----------------------------------------------------------------------------

    fn feed_now(&self, now: Instant) -> f64 {
        self.exec.as_ref().map_or(0.0, |e| e.speed(now) * 60.0)
    }

    /// Start the front block if the machine may move.
    fn start_next(&mut self, t: Instant) {
        if !matches!(self.state, MachineState::Idle | MachineState::Run) || self.exec.is_some() {
            return;
        }
        while let Some(b) = self.planner.front().cloned() {
            let delta: [f64; AXES] = std::array::from_fn(|i| b.target[i] - self.pos[i]);
            let len = delta.iter().map(|d| d * d).sum::<f64>().sqrt();
            if len < 1e-9 {
                self.pos = b.target;
                self.planner.pop_front();
                continue;
            }
            self.set_state(MachineState::Run);
            let unit: [f64; AXES] = std::array::from_fn(|i| delta[i] / len);
            if (0..AXES).any(|i| self.stuck[i] && unit[i].abs() > 1e-12) {
                // Stalled: stays Run with no progress until the motor is freed.
                return;
            }
            let profile = Profile::rest_to_rest(len, b.vmax, b.accel);
            self.exec = Some(Exec {
                from: self.pos,
                unit,
                t0: t,
                end_at: t + profile.duration(),
                profile,
                stopping: false,
            });
            return;
        }
        if self.state == MachineState::Run {
            self.set_state(MachineState::Idle);
        }
    }

    fn finish_exec(&mut self, t: Instant) {
        let Some(e) = self.exec.take() else {
            return;
        };
        if e.stopping {
            self.pos = e.position(e.end_at);
            self.set_state(MachineState::Hold { complete: true });
            return;
        }
        match self.planner.pop_front() {
            Some(b) => self.pos = b.target,
            None => self.pos = e.position(e.end_at),
        }
        self.start_next(t);
    }

    fn feed_hold(&mut self, now: Instant) {
        match self.state {
            MachineState::Idle => self.set_state(MachineState::Hold { complete: true }),
            MachineState::Run => {
                let Some(e) = self.exec.take() else {
                    // Stalled: nothing to decelerate.
                    self.set_state(MachineState::Hold { complete: true });
                    return;
                };
                let here = e.position(now);
                let v = e.speed(now);
                let left =
                    (e.profile.d_total - e.profile.distance_at(secs_since(now, e.t0))).max(0.0);
                let a = if v > 0.0 && v * v / (2.0 * e.profile.a) > left && left > 0.0 {
                    // Never overshoot the block's end through rounding.
                    v * v / (2.0 * left)
                } else {
                    e.profile.a
                };
                let profile = Profile::stop_from(v, a);
                self.pos = here;
                if profile.duration() == Duration::ZERO {
                    self.set_state(MachineState::Hold { complete: true });
                    return;
                }
                self.exec = Some(Exec {
                    from: here,
                    unit: e.unit,
                    t0: now,
                    end_at: now + profile.duration(),
                    profile,
                    stopping: true,
                });
                self.set_state(MachineState::Hold { complete: false });
            }
            // Nothing moves in check mode, so there is nothing to hold.
            MachineState::Hold { .. } | MachineState::Alarm | MachineState::Check => {}
        }
    }

    fn cycle_start(&mut self, now: Instant) {
        if self.state == (MachineState::Hold { complete: true }) {
            // Resume from rest: back to Run, or Idle when nothing is left.
            if self.planner.is_empty() {
                self.set_state(MachineState::Idle);
            } else {
                self.set_state(MachineState::Run);
                self.start_next(now);
            }
        }
    }

    fn alarm(&mut self, code: u8, t: Instant) {
        self.pos = self.position(t);
        self.exec = None;
        self.planner.clear();
        self.planned_pos = self.pos;
        if let Some(Pending::Block(_) | Pending::Dwell { .. }) = self.pending.take() {
            // Grbl's wait for a planner slot returns on abort and the line is acknowledged.
            self.respond(Ok(()));
        }
        self.stats.alarms += 1;
        self.emit(&format!(
            "[MSG:INFO: ALARM: {}]\nALARM:{code}\n",
            alarm_name(code)
        ));
        self.trace.push(format!("ALARM:{code}"));
        self.set_state(MachineState::Alarm);
    }

    fn soft_reset(&mut self, now: Instant) {
        self.stats.resets += 1;
        self.trace.push("reset".to_owned());
        let moving = matches!(
            self.state,
            MachineState::Run | MachineState::Hold { complete: false }
        );
        self.pos = self.position(now);
        self.exec = None;
        self.pending = None;
        if moving {
            self.stats.alarms += 1;
            self.emit("[MSG:INFO: ALARM: Abort Cycle]\nALARM:3\n");
            self.trace.push("ALARM:3".to_owned());
            self.set_state(MachineState::Alarm);
        } else if self.state != MachineState::Alarm {
            self.set_state(MachineState::Idle);
        }
        self.show_run = false;
        self.flush_for_reset();
        self.print_banner();
    }

    fn flush_for_reset(&mut self) {
        self.planner.clear();
        self.planned_pos = self.pos;
        self.pending = None;
        self.rx.clear();
        self.line.clear();
        self.line_overflow = false;
        self.incremental = false;
        self.motion_mode = MotionMode::Rapid;
        self.feed = 0.0;
        self.wco = [0.0; AXES];
        self.wco_counter = 0;
        self.ovr_counter = 0;
    }

    fn print_banner(&mut self) {
        let banner = format!("\n{}\n", self.cfg.banner);
        self.emit(&banner);
        if self.state == MachineState::Alarm {
            self.emit("[MSG:'$H'|'$X' to unlock]\n");
        }
    }

    // --- lines ------------------------------------------------------------------------------

    /// Move bytes from the receive buffer into lines and execute them, until the buffer is
    /// empty or a line waits for the planner.
    fn process_rx(&mut self, t: Instant) {
        loop {
            if !self.try_finish_pending(t) {
                return;
            }
            let Some(b) = self.rx.pop_front() else {
                return;
            };
            match b {
                b'\n' | b'\r' => {
                    let line = std::mem::take(&mut self.line);
                    let overflow = std::mem::replace(&mut self.line_overflow, false);
                    self.execute_line(&line, overflow, t);
                }
                0x08 => {
                    self.line.pop();
                }
                _ if self.line.len() < self.cfg.max_line => self.line.push(b),
                _ => self.line_overflow = true,
            }
        }
    }

    /// Whether nothing is pending any more (so the next line may be read).
    fn try_finish_pending(&mut self, t: Instant) -> bool {
        match self.pending.take() {
            None => true,
            Some(Pending::Block(b)) => {
                if self.planner.len() < self.cfg.planner_blocks {
                    self.enqueue(b, t);
                    self.respond(Ok(()));
                    true
                } else {
                    self.pending = Some(Pending::Block(b));
                    false
                }
            }
            Some(Pending::Dwell { secs, until }) => match until {
                Some(u) if u <= t => {
                    self.respond(Ok(()));
                    true
                }
                Some(u) => {
                    self.pending = Some(Pending::Dwell {
                        secs,
                        until: Some(u),
                    });
                    false
                }
                None => {
                    let idle = self.planner.is_empty()
                        && self.exec.is_none()
                        && !matches!(self.state, MachineState::Hold { .. });
                    let until = idle
                        .then(|| t + Duration::from_micros((secs * 1e6).ceil() as u64))
                        .filter(|&u| u > t);
                    if idle && until.is_none() {
                        self.respond(Ok(()));
                        return true;
                    }
                    self.pending = Some(Pending::Dwell { secs, until });
                    false
                }
            },
        }
    }

    fn enqueue(&mut self, b: PlannedBlock, t: Instant) {
        self.planned_pos = b.target;
        self.planner.push_back(b);
        self.start_next(t);
    }

    fn respond(&mut self, r: Result<(), u8>) {
        self.stats.lines += 1;
        match r {
            Ok(()) => {
                self.stats.oks += 1;
                self.emit("ok\n");
            }
            Err(c) => {
                self.stats.errors += 1;
                self.emit(&format!("error:{c}\n"));
                if self.cfg.verbose_errors {
                    self.emit(&format!("[MSG:ERR: {}]\n", code::text(c)));
                }
            }
        }
    }

    fn execute_line(&mut self, raw: &[u8], overflow: bool, t: Instant) {
        if overflow {
            self.trace.push("error:11 line overflow".to_owned());
            self.respond(Err(code::OVERFLOW));
            return;
        }
        let line = gcode::normalize(raw);
        let r = if line.is_empty() {
            Ok(())
        } else if line.starts_with('$') {
            self.system_command(&line, t)
        } else if self.state == MachineState::Alarm {
            Err(code::LOCKED)
        } else {
            match self.gcode(&line, t) {
                Ok(true) => return, // waits for the planner: answered later
                Ok(false) => Ok(()),
                Err(c) => {
                    if self.cfg.verbose_errors {
                        self.emit(&format!("[MSG:ERR: Bad GCode: {line}]\n"));
                    }
                    Err(c)
                }
            }
        };
        if let Err(c) = r {
            self.trace.push(format!("error:{c} `{line}`"));
        }
        self.respond(r);
        if std::mem::take(&mut self.reset_after_line) {
            // FluidNC answers `$C` first, then aborts: the reset ends check mode and
            // restores the modal state the checked lines changed.
            self.soft_reset(t);
        }
    }

    /// Execute a G-code line. `Ok(true)` when its answer waits (planner full or dwell).
    fn gcode(&mut self, line: &str, t: Instant) -> Result<bool, u8> {
        let b = gcode::parse(line)?;
        // Check before changing any modal state, like Grbl's parser.
        let motion = b.motion.unwrap_or(self.motion_mode);
        let moves = b.has_axes() && b.non_modal.is_none();
        let feed = b.feed.unwrap_or(self.feed);
        if moves && motion == MotionMode::Linear && feed <= 0.0 {
            return Err(code::UNDEFINED_FEED);
        }
        if let Some(m) = b.motion {
            self.motion_mode = m;
        }
        if let Some(f) = b.feed {
            self.feed = f;
        }
        if let Some(inc) = b.incremental {
            self.incremental = inc;
        }
        match b.non_modal {
            Some(NonModal::SetOffset) => {
                let here = self.planned_pos;
                for ((w, h), v) in self.wco.iter_mut().zip(here).zip(b.axes) {
                    if let Some(v) = v {
                        *w = h - v;
                    }
                }
                self.wco_counter = 0;
                return Ok(false);
            }
            Some(NonModal::ClearOffset) => {
                self.wco = [0.0; AXES];
                self.wco_counter = 0;
                return Ok(false);
            }
            // Check mode skips the dwell (Grbl's `mc_dwell` returns at once).
            Some(NonModal::Dwell) if self.state == MachineState::Check => return Ok(false),
            Some(NonModal::Dwell) => {
                let secs = b.p.unwrap_or(0.0);
                self.pending = Some(Pending::Dwell { secs, until: None });
                return Ok(!self.try_finish_pending(t));
            }
            None => {}
        }
        if !moves {
            return Ok(false);
        }
        let target: [f64; AXES] = std::array::from_fn(|i| match b.axes[i] {
            Some(v) if self.incremental => self.planned_pos[i] + v,
            Some(v) => v + self.wco[i],
            None => self.planned_pos[i],
        });
        let delta: [f64; AXES] = std::array::from_fn(|i| target[i] - self.planned_pos[i]);
        let len = delta.iter().map(|d| d * d).sum::<f64>().sqrt();
        if len < 1e-9 {
            return Ok(false);
        }
        let unit: [f64; AXES] = std::array::from_fn(|i| delta[i] / len);
        let rates: [f64; AXES] = std::array::from_fn(|i| self.cfg.max_rate_mm_min[i] / 60.0);
        let axis_limit = limit_by_axes(&unit, &rates);
        let vmax = match motion {
            MotionMode::Rapid => axis_limit,
            MotionMode::Linear => (feed / 60.0).min(axis_limit),
        };
        let accel = limit_by_axes(&unit, &self.cfg.accel_mm_s2);
        let block = PlannedBlock {
            target,
            vmax,
            accel,
        };
        self.planned_pos = target;
        if self.state == MachineState::Check {
            // The parser's position follows the checked program; the machine stays put.
            return Ok(false);
        }
        if self.planner.len() < self.cfg.planner_blocks {
            self.enqueue(block, t);
            Ok(false)
        } else {
            self.stats.planner_waits += 1;
            self.pending = Some(Pending::Block(block));
            Ok(true)
        }
    }

    fn system_command(&mut self, line: &str, t: Instant) -> Result<(), u8> {
        let cmd = &line[1..];
        let busy = matches!(self.state, MachineState::Run | MachineState::Hold { .. });
        let at_rest = matches!(
            self.state,
            MachineState::Idle | MachineState::Alarm | MachineState::Check
        );
        if let Some(v) = cmd
            .strip_prefix("RI=")
            .or_else(|| cmd.strip_prefix("REPORT/INTERVAL="))
        {
            let ms: u64 = v.parse().map_err(|_| code::BAD_NUMBER)?;
            self.report_interval = match ms {
                0 => None,
                ms => Some(Duration::from_millis(ms).max(MIN_REPORT_INTERVAL)),
            };
            self.last_auto = None;
            self.next_auto = t;
            self.trace.push(format!("report interval {ms} ms"));
            return Ok(());
        }
        match cmd {
            "" => {
                self.emit("[HLP:$$ $+ $# $S $L $G $I $N $x=val $Nx=line $J=line $SLP $C $X $H $F=file $E=err ~ ! ? ctrl-x]\n");
                Ok(())
            }
            "RI" | "REPORT/INTERVAL" => {
                let ms = self.report_interval.map_or(0, |d| d.as_millis());
                self.emit(&format!("$Report/Interval={ms}\n"));
                Ok(())
            }
            "X" => {
                if self.state == MachineState::Alarm {
                    self.emit("[MSG:INFO: Caution: Unlocked]\n");
                    self.set_state(MachineState::Idle);
                }
                Ok(())
            }
            "H" => Err(code::SETTING_DISABLED),
            "C" => {
                if self.state == MachineState::Check {
                    self.emit("[MSG:INFO: Disabled]\n");
                    self.trace.push("check mode off".to_owned());
                    self.reset_after_line = true;
                    Ok(())
                } else if self.state == MachineState::Idle {
                    self.set_state(MachineState::Check);
                    self.emit("[MSG:INFO: Enabled]\n");
                    Ok(())
                } else {
                    // Check mode starts only from Idle, alarm locks included.
                    Err(code::IDLE_ERROR)
                }
            }
            "G" => {
                let text = format!(
                    "[GC:{} G54 G17 G21 {} G94 M5 M9 T0 F{} S0]\n",
                    if self.motion_mode == MotionMode::Rapid {
                        "G0"
                    } else {
                        "G1"
                    },
                    if self.incremental { "G91" } else { "G90" },
                    fmt_num(self.feed, 0)
                );
                self.emit(&text);
                Ok(())
            }
            "$" if busy => Err(code::IDLE_ERROR),
            "$" => {
                self.print_settings();
                Ok(())
            }
            "I" | "#" if !at_rest => Err(code::IDLE_ERROR),
            "I" => {
                let text = format!(
                    "[VER:3.9 FluidNC v3.9.9:]\n[OPT:PH,{},{}]\n",
                    self.cfg.planner_blocks, self.cfg.rx_buffer
                );
                self.emit(&text);
                Ok(())
            }
            "#" => {
                // Grbl's `report_ngc_parameters` order. Only G92 is modelled; the coordinate
                // systems, stored positions, tool offset and probe read as after a reset.
                let zero = fmt_axes(&[0.0; AXES]);
                let mut text = String::new();
                for name in ["G54", "G55", "G56", "G57", "G58", "G59", "G28", "G30"] {
                    let _ = writeln!(text, "[{name}:{zero}]");
                }
                let _ = writeln!(text, "[G92:{}]", fmt_axes(&self.wco));
                let _ = writeln!(text, "[TLO:0.000]\n[PRB:{zero}:0]");
                self.emit(&text);
                Ok(())
            }
            _ => Err(code::INVALID_STATEMENT),
        }
    }

    fn print_settings(&mut self) {
        let mut s = String::from(
            "$10=1\n$11=0.010\n$12=0.002\n$13=0\n$20=0\n$21=0\n$22=0\n$23=0\n$30=1000\n$32=0\n",
        );
        for (base, values) in [
            (100, [80.0; AXES]),
            (110, self.cfg.max_rate_mm_min),
            (120, self.cfg.accel_mm_s2),
            (130, [1000.0; AXES]),
        ] {
            for (i, v) in values.iter().enumerate() {
                let _ = writeln!(s, "${}={}", base + i, fmt_num(*v, 3));
            }
        }
        self.emit(&s);
    }

    // --- output -----------------------------------------------------------------------------

    fn emit_report(&mut self, now: Instant) {
        let mpos = self.position(now);
        let moving = is_motion(self.display_state());
        let mut r = format!(
            "<{}|MPos:{}|FS:{},0",
            self.display_state(),
            fmt_axes(&mpos),
            fmt_num(self.feed_now(now), 0)
        );
        if self.wco_counter == 0 {
            let _ = write!(r, "|WCO:{}", fmt_axes(&self.wco));
            self.wco_counter = if moving { 29 } else { 9 };
        } else {
            self.wco_counter -= 1;
            if self.ovr_counter == 0 {
                r.push_str("|Ov:100,100,100");
                self.ovr_counter = if moving { 19 } else { 9 };
            } else {
                self.ovr_counter -= 1;
            }
        }
        r.push_str(">\n");
        self.stats.reports += 1;
        self.emit(&r);
    }

    fn emit(&mut self, s: &str) {
        self.emit_bytes(s.as_bytes());
    }

    fn emit_bytes(&mut self, b: &[u8]) {
        if self.unresponsive {
            self.stats.output_suppressed += b.len() as u64;
        } else {
            self.out.extend_from_slice(b);
        }
    }
}

fn is_motion(state: &str) -> bool {
    matches!(state, "Run" | "Hold:1")
}

/// FluidNC's alarm names (Protocol.cpp `AlarmNames`).
fn alarm_name(code: u8) -> &'static str {
    match code {
        1 => "Hard Limit",
        2 => "Soft Limit",
        3 => "Abort Cycle",
        4 => "Probe Fail Initial",
        5 => "Probe Fail Contact",
        6 => "Homing Fail Reset",
        7 => "Homing Fail Door",
        8 => "Homing Fail Pulloff",
        9 => "Homing Fail Approach",
        10 => "Spindle Control",
        11 => "Control Pin Initially On",
        12 => "Ambiguous Switch",
        13 => "Hard Stop",
        14 => "Unhomed",
        15 => "Init",
        _ => "Unknown",
    }
}

/// `{:.N}` without a negative zero.
fn fmt_num(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$}");
    if s.starts_with('-') && s[1..].bytes().all(|b| b == b'0' || b == b'.') {
        s[1..].to_owned()
    } else {
        s
    }
}

fn fmt_axes(v: &[f64; AXES]) -> String {
    v.iter()
        .map(|x| fmt_num(*x, 3))
        .collect::<Vec<_>>()
        .join(",")
}
