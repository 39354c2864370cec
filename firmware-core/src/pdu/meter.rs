//! MeterTask: reads the eight HLW8032 power meters, one at a time through the 74HC4051 mux.
//!
//! The eight chips share one UART RX line; the mux (select lines on the relay expander's port B)
//! decides whose TX gets through. The relay expander belongs to SwitchTask, so MeterTask never
//! touches it: it asks for a channel through a [`MeterMux`] (usually [`SwitchQueueMux`], which
//! offers a [`SwitchOp::MeterMux`] request to SwitchTask's queue and never waits for room, so
//! metering can never hold up switching).
//!
//! One channel per step, round robin, at most one selection per [`MeterSettings::tick`]
//! (25 Hz, like ENERGIS): select → settle (bytes still on the line belong to the previous chip
//! and are discarded) → listen until a valid frame arrives or [`MeterSettings::read_timeout`]
//! passes; a channel without a frame in time is marked `degraded` and keeps its last values.
//!
//! [`MeterCore`] is sans-IO and holds all of it: calibration, the 1 s rolling average, energy
//! integration (trapezoidal P×Δt, in f64 so small increments are not lost on a large total) and
//! the telemetry. Call order, all with the current instant:
//!
//! 1. [`MeterCore::poll`] says what to do next ([`MeterStep`]); it also applies deadlines that
//!    have passed.
//! 2. After [`MeterStep::Select`], select the chip and report with [`MeterCore::handle_selected`].
//! 3. During [`MeterStep::Listen`], feed UART bytes to [`MeterCore::handle_bytes`], read errors
//!    to [`MeterCore::handle_read_error`]; at its deadline call [`MeterCore::handle_timeout`]
//!    (or just [`poll`](MeterCore::poll) again).
//! 4. [`MeterCore::poll_telemetry`] returns the per-outlet telemetry when it changed.
//!
//! [`MeterTask`] is the thin runner over `embedded_io_async::Read` and a [`Clock`].
use core::future::Future;

use embassy_futures::select::{Either, select};
use embassy_sync::blocking_mutex::raw::RawMutex;
use embassy_sync::watch::Watch;
use heapless::Deque;

use super::config::ChannelCalibration;
use super::hlw8032::{FrameSync, Measurement, Reading};
use super::{CHANNELS, ChannelTelemetry, Outlet, OutletMask, Source, SwitchOp, SwitchRequest};
use crate::ports::Clock;
use crate::queue::{Offer, Queue};
use crate::time::{Duration, Instant};

/// Timing of the scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MeterSettings {
    /// Shortest time between two channel selections (40 ms = 25 Hz).
    pub tick: Duration,
    /// Time after a selection during which bytes are discarded (the mux settles, the UART
    /// drains the previous chip's bytes).
    pub settle: Duration,
    /// Time after settling within which a valid frame must arrive.
    pub read_timeout: Duration,
    /// Window of the rolling average.
    pub average_window: Duration,
    /// Samples further apart than this are not integrated into energy (the meter was silent;
    /// guessing the power in between would invent energy).
    pub max_energy_gap: Duration,
}

impl Default for MeterSettings {
    /// ENERGIS timing: 25 Hz, 60 ms settle, 250 ms read timeout, 1 s average.
    fn default() -> Self {
        MeterSettings {
            tick: Duration::from_millis(40),
            settle: Duration::from_millis(60),
            read_timeout: Duration::from_millis(250),
            average_window: Duration::from_secs(1),
            max_energy_gap: Duration::from_secs(5),
        }
    }
}

/// What the runner should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum MeterStep {
    /// Select this outlet's chip on the mux, then call [`MeterCore::handle_selected`].
    Select(Outlet),
    /// Read UART bytes for `channel` and feed them to [`MeterCore::handle_bytes`]; at `until`
    /// call [`MeterCore::handle_timeout`].
    Listen {
        /// The selected outlet.
        channel: Outlet,
        /// Deadline of the current phase.
        until: Instant,
    },
    /// Nothing to do before `until`; then poll again.
    Sleep {
        /// When to poll again.
        until: Instant,
    },
}

/// How a channel's turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TurnOutcome {
    /// A valid frame was read.
    Sampled(Outlet),
    /// No valid frame in time, or the mux could not be selected: the outlet is degraded.
    Degraded(Outlet),
}

/// Counters, for telemetry and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MeterStats {
    /// Valid frames used.
    pub frames: u32,
    /// Turns that ended without a valid frame.
    pub timeouts: u32,
    /// Well-formed frames the chip marked unusable (`0xAA`, coefficient storage abnormal).
    pub unusable_frames: u32,
    /// Bytes dropped during settling.
    pub settle_bytes: u32,
    /// UART read errors (parity, framing, overrun).
    pub read_errors: u32,
    /// Mux selections that failed.
    pub mux_failures: u32,
    /// Sample gaps longer than [`MeterSettings::max_energy_gap`], not integrated.
    pub energy_gaps: u32,
}

/// UART read errors tolerated in one listening phase before the runner just waits for the
/// deadline (a UART that errors at once, forever, must not spin the task).
const MAX_READ_ERRORS: u8 = 8;
/// Samples kept per channel for the rolling average; the oldest is dropped when full.
const AVERAGE_SAMPLES: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle {
        next_at: Instant,
    },
    Selecting(Outlet),
    Settling {
        channel: Outlet,
        until: Instant,
    },
    Listening {
        channel: Outlet,
        until: Instant,
        errors: u8,
    },
}

#[derive(Debug, Clone, Default)]
struct ChannelState {
    samples: Deque<(Instant, Reading), AVERAGE_SAMPLES>,
    last_sample: Option<(Instant, Reading)>,
    last_measurement: Option<Measurement>,
    energy_wh: f64,
    degraded: bool,
    on_since: Option<Instant>,
}

impl ChannelState {
    /// The outlet was switched off: an open contact carries no current, so readings taken while
    /// it was on must not linger in the average (over-current protection sums these currents,
    /// and the mux visits each outlet only about once a second).
    fn forget_load(&mut self) {
        let samples = self.samples.iter_mut().map(|(_, r)| r);
        for r in samples.chain(self.last_sample.as_mut().map(|(_, r)| r)) {
            r.current_a = 0.0;
            r.power_w = 0.0;
            r.power_factor = 0.0;
        }
    }

    fn average(&self, now: Instant, window: Duration) -> Option<Reading> {
        let mut sum = Reading::default();
        let mut n = 0u32;
        for (t, r) in self.samples.iter() {
            if now.saturating_since(*t) <= window {
                sum.voltage_v += r.voltage_v;
                sum.current_a += r.current_a;
                sum.power_w += r.power_w;
                sum.power_factor += r.power_factor;
                n += 1;
            }
        }
        if n == 0 {
            return self.last_sample.map(|(_, r)| r);
        }
        let k = n as f32;
        Some(Reading {
            voltage_v: sum.voltage_v / k,
            current_a: sum.current_a / k,
            power_w: sum.power_w / k,
            power_factor: sum.power_factor / k,
        })
    }
}

/// The sans-IO metering core. See the module docs for the call order.
#[derive(Debug, Clone)]
pub struct MeterCore {
    settings: MeterSettings,
    calibration: [ChannelCalibration; CHANNELS],
    channels: [ChannelState; CHANNELS],
    phase: Phase,
    next_index: usize,
    last_select: Option<Instant>,
    sync: FrameSync,
    stats: MeterStats,
    dirty: bool,
}

impl MeterCore {
    /// A core that starts with outlet 1 at once.
    pub fn new(settings: MeterSettings, calibration: [ChannelCalibration; CHANNELS]) -> Self {
        MeterCore {
            settings,
            calibration,
            channels: core::array::from_fn(|_| ChannelState::default()),
            phase: Phase::Idle {
                next_at: Instant::ZERO,
            },
            next_index: 0,
            last_select: None,
            sync: FrameSync::new(),
            stats: MeterStats::default(),
            dirty: false,
        }
    }

    /// Replace the calibration (console `CALIBRATE`, a loaded configuration). Applies to frames
    /// read from now on.
    pub fn set_calibration(&mut self, calibration: [ChannelCalibration; CHANNELS]) {
        self.calibration = calibration;
    }

    /// The relay state changed: outlets that came on start their uptime now.
    pub fn handle_outlets(&mut self, on: OutletMask, now: Instant) {
        for outlet in Outlet::all() {
            let ch = &mut self.channels[outlet.index()];
            match (on.contains(outlet), ch.on_since) {
                (true, None) => ch.on_since = Some(now),
                (false, Some(_)) => {
                    ch.on_since = None;
                    ch.forget_load();
                }
                _ => {}
            }
        }
        self.dirty = true;
    }

    /// What to do next. Applies any deadline that has passed first.
    pub fn poll(&mut self, now: Instant) -> MeterStep {
        if let Phase::Settling { channel, until } | Phase::Listening { channel, until, .. } =
            self.phase
            && now >= until
        {
            let _ = self.handle_timeout(channel, now);
        }
        match self.phase {
            Phase::Idle { next_at } if now >= next_at => {
                // `next_index` is always < CHANNELS.
                let channel = Outlet::from_index(self.next_index).unwrap_or(FIRST);
                self.phase = Phase::Selecting(channel);
                MeterStep::Select(channel)
            }
            Phase::Idle { next_at } => MeterStep::Sleep { until: next_at },
            Phase::Selecting(channel) => MeterStep::Select(channel),
            Phase::Settling { channel, until } => MeterStep::Listen { channel, until },
            Phase::Listening {
                channel,
                until,
                errors,
            } => {
                if errors >= MAX_READ_ERRORS {
                    MeterStep::Sleep { until }
                } else {
                    MeterStep::Listen { channel, until }
                }
            }
        }
    }

    /// The mux select for `channel` finished (`ok`) or failed. A failure ends the turn with
    /// the outlet degraded.
    pub fn handle_selected(
        &mut self,
        channel: Outlet,
        ok: bool,
        now: Instant,
    ) -> Option<TurnOutcome> {
        if self.phase != Phase::Selecting(channel) {
            return None;
        }
        self.last_select = Some(now);
        if ok {
            self.sync.reset();
            self.phase = Phase::Settling {
                channel,
                until: now + self.settings.settle,
            };
            None
        } else {
            self.stats.mux_failures = self.stats.mux_failures.wrapping_add(1);
            warn!("meter: mux select {} failed", channel);
            Some(self.degrade(channel, now))
        }
    }

    /// Bytes read from the UART while `channel` is selected.
    pub fn handle_bytes(
        &mut self,
        channel: Outlet,
        bytes: &[u8],
        now: Instant,
    ) -> Option<TurnOutcome> {
        match self.phase {
            Phase::Settling { channel: c, until } if c == channel => {
                if now < until {
                    self.stats.settle_bytes =
                        self.stats.settle_bytes.wrapping_add(bytes.len() as u32);
                    return None;
                }
                self.start_listening(channel, until);
            }
            Phase::Listening { channel: c, .. } if c == channel => {}
            _ => return None,
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            let (frame, used) = self.sync.push_slice(rest);
            rest = rest.get(used..).unwrap_or(&[]);
            let Some(frame) = frame else { break };
            match Measurement::parse_bytes(&frame) {
                Ok(m) => return Some(self.sample(channel, m, now)),
                Err(e) => {
                    self.stats.unusable_frames = self.stats.unusable_frames.wrapping_add(1);
                    debug!("meter: {} frame unusable: {:?}", channel, e);
                }
            }
        }
        None
    }

    /// The UART reported an error while `channel` is selected: the byte stream is broken, so
    /// the frame search starts over.
    pub fn handle_read_error(&mut self, channel: Outlet, _now: Instant) {
        self.stats.read_errors = self.stats.read_errors.wrapping_add(1);
        self.sync.reset();
        if let Phase::Listening {
            channel: c, errors, ..
        } = &mut self.phase
            && *c == channel
        {
            *errors = errors.saturating_add(1);
        }
    }

    /// The deadline of `channel`'s current phase may have passed: settling ends, or listening
    /// ends with the outlet degraded.
    pub fn handle_timeout(&mut self, channel: Outlet, now: Instant) -> Option<TurnOutcome> {
        match self.phase {
            Phase::Settling { channel: c, until } if c == channel && now >= until => {
                self.start_listening(channel, until);
                None
            }
            Phase::Listening {
                channel: c, until, ..
            } if c == channel && now >= until => {
                self.stats.timeouts = self.stats.timeouts.wrapping_add(1);
                debug!("meter: {} no frame in time", channel);
                Some(self.degrade(channel, now))
            }
            _ => None,
        }
    }

    fn start_listening(&mut self, channel: Outlet, settled_at: Instant) {
        self.phase = Phase::Listening {
            channel,
            until: settled_at + self.settings.read_timeout,
            errors: 0,
        };
    }

    fn end_turn(&mut self, channel: Outlet, now: Instant) {
        self.next_index = (channel.index() + 1) % CHANNELS;
        let earliest = self.last_select.map_or(now, |t| t + self.settings.tick);
        self.phase = Phase::Idle {
            next_at: earliest.max(now),
        };
        self.dirty = true;
    }

    fn degrade(&mut self, channel: Outlet, now: Instant) -> TurnOutcome {
        self.channels[channel.index()].degraded = true;
        self.end_turn(channel, now);
        TurnOutcome::Degraded(channel)
    }

    fn sample(&mut self, channel: Outlet, m: Measurement, now: Instant) -> TurnOutcome {
        self.stats.frames = self.stats.frames.wrapping_add(1);
        let reading = m.reading(&self.calibration[channel.index()]);
        let max_gap = self.settings.max_energy_gap;
        let ch = &mut self.channels[channel.index()];
        if let Some((t0, r0)) = ch.last_sample {
            let dt = now.saturating_since(t0);
            if dt <= max_gap {
                let hours = dt.as_micros() as f64 / 3_600_000_000.0;
                let mean_w = (f64::from(r0.power_w) + f64::from(reading.power_w)) / 2.0;
                ch.energy_wh += mean_w * hours;
            } else {
                self.stats.energy_gaps = self.stats.energy_gaps.wrapping_add(1);
            }
        }
        ch.last_sample = Some((now, reading));
        ch.last_measurement = Some(m);
        if ch.samples.is_full() {
            ch.samples.pop_front();
        }
        let _ = ch.samples.push_back((now, reading));
        ch.degraded = false;
        self.end_turn(channel, now);
        TurnOutcome::Sampled(channel)
    }

    /// Per-outlet telemetry at `now` (averages over the window ending at `now`).
    pub fn telemetry(&self, now: Instant) -> [ChannelTelemetry; CHANNELS] {
        core::array::from_fn(|i| {
            let ch = &self.channels[i];
            let avg = ch
                .average(now, self.settings.average_window)
                .unwrap_or_default();
            ChannelTelemetry {
                voltage_v: avg.voltage_v,
                current_a: avg.current_a,
                power_w: avg.power_w,
                power_factor: avg.power_factor,
                energy_wh: ch.energy_wh as f32,
                uptime_s: ch
                    .on_since
                    .map_or(0, |t| now.saturating_since(t).as_secs() as u32),
                // A channel never read yet is degraded too: it has no values at all.
                degraded: ch.degraded || ch.last_sample.is_none(),
            }
        })
    }

    /// The telemetry, if anything changed since the last call.
    pub fn poll_telemetry(&mut self, now: Instant) -> Option<[ChannelTelemetry; CHANNELS]> {
        if core::mem::take(&mut self.dirty) {
            Some(self.telemetry(now))
        } else {
            None
        }
    }

    /// The last raw registers of `outlet` (console `READ_HLW8032`).
    pub fn last_measurement(&self, outlet: Outlet) -> Option<Measurement> {
        self.channels[outlet.index()].last_measurement
    }

    /// Counters.
    pub fn stats(&self) -> MeterStats {
        self.stats
    }
}

const FIRST: Outlet = match Outlet::new(1) {
    Some(o) => o,
    None => panic!("outlet 1 exists"),
};

/// Per-outlet currents, amps, as SwitchTask's over-current protection consumes them.
pub fn currents(telemetry: &[ChannelTelemetry; CHANNELS]) -> [f32; CHANNELS] {
    core::array::from_fn(|i| telemetry[i].current_a)
}

/// Sum of the outlet currents, amps.
pub fn total_current(telemetry: &[ChannelTelemetry; CHANNELS]) -> f32 {
    telemetry.iter().map(|t| t.current_a).sum()
}

// ---------------------------------------------------------------------------------------------
// The runner and its two ports.

/// The mux could not be switched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum MuxError {
    /// SwitchTask's queue was full; the request was not sent.
    Busy,
    /// SwitchTask answered with an error.
    Refused,
}

impl core::fmt::Display for MuxError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MuxError::Busy => write!(f, "switch queue full"),
            MuxError::Refused => write!(f, "switch task refused the mux select"),
        }
    }
}

impl core::error::Error for MuxError {}

/// How MeterTask selects a chip on the mux.
///
/// # Contract
/// * `select` MUST NOT wait for the relay expander's queue to have room (switching is never
///   blocked by metering): it fails with [`MuxError::Busy`] instead.
/// * When it returns `Ok`, the selection MUST take effect within [`MeterSettings::settle`];
///   bytes read during settling are discarded anyway.
pub trait MeterMux {
    /// Select `channel`'s chip.
    fn select(&mut self, channel: Outlet) -> impl Future<Output = Result<(), MuxError>>;
}

/// Any `FnMut(Outlet) -> Result<(), MuxError>` selects synchronously (tests, a platform that
/// owns the mux pins directly).
impl<F: FnMut(Outlet) -> Result<(), MuxError>> MeterMux for F {
    fn select(&mut self, channel: Outlet) -> impl Future<Output = Result<(), MuxError>> {
        core::future::ready(self(channel))
    }
}

/// Selects the chip by offering a [`SwitchOp::MeterMux`] request to SwitchTask's queue. It does
/// not wait for the reply: the settle time covers SwitchTask's latency, and a select that did
/// not happen just yields no frame (the channel turns degraded) instead of a wrong one being
/// attributed, because bytes are only trusted after settling.
pub struct SwitchQueueMux<'a, M: RawMutex, const N: usize> {
    queue: &'a Queue<M, SwitchRequest, N>,
    token: u32,
}

impl<'a, M: RawMutex, const N: usize> SwitchQueueMux<'a, M, N> {
    /// Tokens of the requests count up from `first_token` (pick a range no other sender uses).
    pub fn new(queue: &'a Queue<M, SwitchRequest, N>, first_token: u32) -> Self {
        SwitchQueueMux {
            queue,
            token: first_token,
        }
    }
}

impl<M: RawMutex, const N: usize> MeterMux for SwitchQueueMux<'_, M, N> {
    fn select(&mut self, channel: Outlet) -> impl Future<Output = Result<(), MuxError>> {
        let mut request = SwitchRequest::new(Source::Schedule, SwitchOp::MeterMux);
        request.channel = Some(channel);
        request.token = self.token;
        self.token = self.token.wrapping_add(1);
        let result = match self.queue.offer(request) {
            Offer::Queued | Offer::Displaced(_) => Ok(()),
            Offer::Rejected(_) => Err(MuxError::Busy),
        };
        core::future::ready(result)
    }
}

/// Where MeterTask publishes telemetry (latest value wins).
pub trait TelemetrySink {
    /// New per-outlet telemetry.
    fn publish(&mut self, telemetry: &[ChannelTelemetry; CHANNELS]);
}

impl<F: FnMut(&[ChannelTelemetry; CHANNELS])> TelemetrySink for F {
    fn publish(&mut self, telemetry: &[ChannelTelemetry; CHANNELS]) {
        self(telemetry)
    }
}

/// Publishes to embassy-sync `Watch`es: the telemetry, and the currents for SwitchTask's
/// over-current protection.
pub struct WatchSink<'a, M: RawMutex, const N: usize, const K: usize> {
    /// Per-outlet telemetry (front-ends, health).
    pub telemetry: &'a Watch<M, [ChannelTelemetry; CHANNELS], N>,
    /// Per-outlet currents (SwitchTask's OCP).
    pub currents: &'a Watch<M, [f32; CHANNELS], K>,
}

impl<M: RawMutex, const N: usize, const K: usize> TelemetrySink for WatchSink<'_, M, N, K> {
    fn publish(&mut self, telemetry: &[ChannelTelemetry; CHANNELS]) {
        self.telemetry.sender().send(*telemetry);
        self.currents.sender().send(currents(telemetry));
    }
}

/// What MeterTask follows and reports besides its telemetry: the relay state (an open outlet
/// carries no load, and uptime counts from switch-on) and a heartbeat for HealthTask. The
/// platform implements it over SwitchTask's published state and its heartbeat board.
pub trait MeterLinks {
    /// The relay state now, if known.
    fn relays(&mut self) -> Option<OutletMask>;
    /// Called after every step.
    fn beat(&mut self, now: Instant);
}

/// No links: the relay state is never learned and nobody is told the task is alive.
pub struct NoLinks;

impl MeterLinks for NoLinks {
    fn relays(&mut self) -> Option<OutletMask> {
        None
    }
    fn beat(&mut self, _now: Instant) {}
}

/// The MeterTask runner: a UART, a clock, a mux port, a telemetry sink and the [`MeterLinks`]
/// around a [`MeterCore`].
pub struct MeterTask<U, C, X, S, L = NoLinks> {
    uart: U,
    clock: C,
    mux: X,
    sink: S,
    links: L,
    relays: Option<OutletMask>,
    core: MeterCore,
}

impl<U, C, X, S> MeterTask<U, C, X, S, NoLinks> {
    /// A runner without links (see [`with_links`](Self::with_links)).
    pub fn new(uart: U, clock: C, mux: X, sink: S, core: MeterCore) -> Self {
        MeterTask {
            uart,
            clock,
            mux,
            sink,
            links: NoLinks,
            relays: None,
            core,
        }
    }

    /// The same runner, following and reporting through `links`.
    pub fn with_links<L: MeterLinks>(self, links: L) -> MeterTask<U, C, X, S, L> {
        MeterTask {
            uart: self.uart,
            clock: self.clock,
            mux: self.mux,
            sink: self.sink,
            links,
            relays: self.relays,
            core: self.core,
        }
    }
}

impl<U, C, X, S, L> MeterTask<U, C, X, S, L>
where
    U: embedded_io_async::Read,
    C: Clock,
    X: MeterMux,
    S: TelemetrySink,
    L: MeterLinks,
{
    /// The core (calibration changes, relay state, stats).
    pub fn core_mut(&mut self) -> &mut MeterCore {
        &mut self.core
    }

    /// One step: select, read or sleep, then publish what changed.
    pub async fn step(&mut self) {
        let now = self.clock.now();
        match self.core.poll(now) {
            MeterStep::Select(channel) => {
                let ok = self.mux.select(channel).await.is_ok();
                let _ = self.core.handle_selected(channel, ok, self.clock.now());
            }
            MeterStep::Sleep { until } => self.clock.sleep_until(until).await,
            MeterStep::Listen { channel, until } => {
                let mut buf = [0u8; 32];
                match select(self.uart.read(&mut buf), self.clock.sleep_until(until)).await {
                    Either::First(Ok(n)) if n > 0 => {
                        let bytes = buf.get(..n).unwrap_or(&buf);
                        let _ = self.core.handle_bytes(channel, bytes, self.clock.now());
                    }
                    // An error or end of stream: counted; the core stops listening after a few.
                    Either::First(_) => self.core.handle_read_error(channel, self.clock.now()),
                    Either::Second(()) => {
                        let _ = self.core.handle_timeout(channel, self.clock.now());
                    }
                }
            }
        }
        let now = self.clock.now();
        if let Some(on) = self.links.relays()
            && self.relays != Some(on)
        {
            self.relays = Some(on);
            self.core.handle_outlets(on, now);
        }
        if let Some(t) = self.core.poll_telemetry(now) {
            self.sink.publish(&t);
        }
        self.links.beat(now);
    }

    /// Run forever.
    pub async fn run(&mut self) -> ! {
        loop {
            self.step().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdu::hlw8032::{FRAME_LEN, StateFlags};
    use crate::queue::FullPolicy;
    use core::cell::Cell;
    use embassy_sync::blocking_mutex::raw::NoopRawMutex;

    const CAL: ChannelCalibration = ChannelCalibration {
        kv: 1.88,
        ki: 1.0,
        v_offset: 0.0,
        i_offset: 0.0,
    };

    fn ch(n: u8) -> Outlet {
        Outlet::new(n).unwrap()
    }

    fn ms(n: u64) -> Instant {
        Instant::from_millis(n)
    }

    fn meter() -> MeterCore {
        MeterCore::new(MeterSettings::default(), [CAL; CHANNELS])
    }

    /// Frame bytes that read as `volts`, `amps`, `watts` with the default calibration.
    fn frame(volts: f32, amps: f32, watts: f32) -> [u8; FRAME_LEN] {
        Measurement {
            flags: StateFlags::default(),
            voltage_param: (volts / 1.88 * 1_000.0) as u32,
            voltage_reg: 1_000,
            current_param: (amps * 1_000.0) as u32,
            current_reg: 1_000,
            power_param: (watts / 1.88 * 1_000.0) as u32,
            power_reg: 1_000,
            data_update: 0x70,
            pf_reg: 0,
        }
        .to_bytes()
    }

    #[track_caller]
    fn assert_close(actual: f32, expected: f32) {
        assert!(
            (actual - expected).abs() <= 0.01 * expected.abs().max(0.1),
            "{actual} != {expected}"
        );
    }

    /// Run one full turn of `channel` starting at `at`: select, settle, deliver `bytes` 10 ms
    /// after settling. Returns the outcome and the time the turn ended.
    #[track_caller]
    fn turn(m: &mut MeterCore, channel: Outlet, at: Instant, bytes: &[u8]) -> Option<TurnOutcome> {
        assert_eq!(m.poll(at), MeterStep::Select(channel));
        assert_eq!(m.handle_selected(channel, true, at), None);
        let settled = at + Duration::from_millis(60);
        assert_eq!(
            m.poll(at),
            MeterStep::Listen {
                channel,
                until: settled
            }
        );
        m.handle_bytes(channel, bytes, settled + Duration::from_millis(10))
    }

    /// End the turns of outlets 2..=8 at once (mux select failed), from `at` ms, 10 ms apart.
    #[track_caller]
    fn skip_others(m: &mut MeterCore, at: u64) {
        for n in 2..=8 {
            let t = ms(at + 10 * u64::from(n));
            assert_eq!(m.poll(t), MeterStep::Select(ch(n)));
            let _ = m.handle_selected(ch(n), false, t);
        }
    }

    #[test]
    fn channels_are_read_in_turn_one_selection_per_tick_at_most() {
        let mut m = meter();
        let f = frame(230.0, 1.0, 200.0);
        assert_eq!(
            turn(&mut m, ch(1), ms(0), &f),
            Some(TurnOutcome::Sampled(ch(1)))
        );
        assert_eq!(
            turn(&mut m, ch(2), ms(70), &f),
            Some(TurnOutcome::Sampled(ch(2)))
        );
        // The third turn ends early (forced): the next select waits for the 40 ms tick.
        assert_eq!(m.poll(ms(140)), MeterStep::Select(ch(3)));
        assert_eq!(
            m.handle_selected(ch(3), false, ms(140)),
            Some(TurnOutcome::Degraded(ch(3)))
        );
        assert_eq!(m.poll(ms(150)), MeterStep::Sleep { until: ms(180) });
        assert_eq!(m.poll(ms(180)), MeterStep::Select(ch(4)));
    }

    #[test]
    fn bytes_during_settling_are_discarded_even_if_they_hold_a_frame() {
        let mut m = meter();
        assert_eq!(m.poll(ms(0)), MeterStep::Select(ch(1)));
        let _ = m.handle_selected(ch(1), true, ms(0));
        // A whole frame from the previously selected chip, still on the line.
        assert_eq!(
            m.handle_bytes(ch(1), &frame(230.0, 5.0, 1000.0), ms(30)),
            None
        );
        assert_eq!(m.stats().settle_bytes, 24);
        assert_eq!(m.stats().frames, 0);
        assert_eq!(
            m.handle_bytes(ch(1), &frame(230.0, 1.0, 200.0), ms(90)),
            Some(TurnOutcome::Sampled(ch(1)))
        );
        assert_close(m.telemetry(ms(90))[0].current_a, 1.0);
    }

    #[test]
    fn a_silent_channel_is_degraded_after_the_read_timeout_and_recovers_with_a_frame() {
        let mut m = meter();
        let f = frame(230.0, 2.0, 400.0);
        let _ = turn(&mut m, ch(1), ms(0), &f);
        // Walk round to channel 1 again, every other channel silent.
        let mut t = ms(70);
        for n in 2..=8 {
            assert_eq!(m.poll(t), MeterStep::Select(ch(n)));
            let _ = m.handle_selected(ch(n), true, t);
            assert_eq!(
                m.poll(t + Duration::from_millis(60)),
                MeterStep::Listen {
                    channel: ch(n),
                    until: t + Duration::from_millis(310)
                }
            );
            assert_eq!(
                m.poll(t + Duration::from_millis(309)),
                MeterStep::Listen {
                    channel: ch(n),
                    until: t + Duration::from_millis(310)
                }
            );
            assert_eq!(
                m.handle_timeout(ch(n), t + Duration::from_millis(310)),
                Some(TurnOutcome::Degraded(ch(n)))
            );
            t += Duration::from_millis(310);
        }
        let tel = m.poll_telemetry(t).unwrap();
        assert!(!tel[0].degraded);
        assert!(tel[1..].iter().all(|c| c.degraded));
        assert_eq!(m.stats().timeouts, 7);
        // Channel 1's values stay (stale is better than zero for OCP), flagged by `degraded` only
        // when its own read fails.
        assert_close(tel[0].current_a, 2.0);
        let _ = turn(&mut m, ch(1), t, &f);
        assert_eq!(
            turn(&mut m, ch(2), t + Duration::from_millis(100), &f),
            Some(TurnOutcome::Sampled(ch(2)))
        );
        assert!(!m.telemetry(t + Duration::from_millis(200))[1].degraded);
    }

    #[test]
    fn a_frame_is_found_after_garbage_and_a_torn_frame() {
        let mut m = meter();
        let f = frame(120.0, 3.0, 360.0);
        let mut stream = heapless::Vec::<u8, 80>::new();
        stream
            .extend_from_slice(&[0x00, 0x5A, 0x55, 0xF2, 0x5A])
            .unwrap();
        stream.extend_from_slice(&f[9..]).unwrap();
        stream.extend_from_slice(&f).unwrap();
        // Delivered in two reads that split the good frame.
        let _ = turn(&mut m, ch(1), ms(0), &stream[..30]);
        assert_eq!(
            m.handle_bytes(ch(1), &stream[30..], ms(80)),
            Some(TurnOutcome::Sampled(ch(1)))
        );
        let t = m.telemetry(ms(80))[0];
        assert_close(t.voltage_v, 120.0);
        assert_close(t.power_w, 360.0);
        assert_close(t.power_factor, 1.0);
    }

    #[test]
    fn unusable_frames_do_not_count_as_samples() {
        let mut m = meter();
        let mut bad = frame(230.0, 1.0, 100.0);
        bad[0] = 0xAA;
        bad[23] = crate::pdu::hlw8032::checksum(&bad[2..23]);
        assert_eq!(turn(&mut m, ch(1), ms(0), &bad), None);
        assert_eq!(m.stats().unusable_frames, 1);
        assert_eq!(
            m.handle_timeout(ch(1), ms(310)),
            Some(TurnOutcome::Degraded(ch(1)))
        );
    }

    #[test]
    fn values_are_averaged_over_the_last_second() {
        let mut m = MeterCore::new(
            MeterSettings {
                tick: Duration::ZERO,
                ..MeterSettings::default()
            },
            [CAL; CHANNELS],
        );
        // Channel 1 sampled at 70 ms (100 W) and, a round later, at 800 ms (300 W).
        let _ = turn(&mut m, ch(1), ms(0), &frame(230.0, 0.5, 100.0));
        skip_others(&mut m, 100);
        let _ = turn(&mut m, ch(1), ms(730), &frame(230.0, 1.5, 300.0));
        assert_close(m.telemetry(ms(800))[0].power_w, 200.0);
        assert_close(m.telemetry(ms(800))[0].current_a, 1.0);
        // Past the window of the first sample: only the second counts.
        assert_close(m.telemetry(ms(1_500))[0].power_w, 300.0);
        // Long past both: the last value holds.
        assert_close(m.telemetry(ms(60_000))[0].power_w, 300.0);
    }

    #[test]
    fn energy_integrates_power_over_time_and_skips_long_gaps() {
        let mut m = MeterCore::new(
            MeterSettings {
                tick: Duration::ZERO,
                ..MeterSettings::default()
            },
            [CAL; CHANNELS],
        );
        let f = frame(230.0, 2.0, 360.0);
        // Sample channel 1 every second for 10 s by reading only it (other turns forced short).
        let mut at = 0;
        for _ in 0..=10 {
            assert_eq!(
                turn(&mut m, ch(1), ms(at), &f),
                Some(TurnOutcome::Sampled(ch(1)))
            );
            skip_others(&mut m, at + 100);
            at += 1_000;
        }
        // 10 s at 360 W = 1 Wh.
        assert_close(m.telemetry(ms(at))[0].energy_wh, 1.0);
        // A 10 s silence is not integrated.
        let _ = turn(&mut m, ch(1), ms(at + 10_000), &f);
        assert_close(m.telemetry(ms(at + 10_100))[0].energy_wh, 1.0);
        assert_eq!(m.stats().energy_gaps, 1);
    }

    #[test]
    fn switching_an_outlet_off_drops_its_load_from_the_average_at_once() {
        let mut m = meter();
        m.handle_outlets(OutletMask(0b11), ms(0));
        let _ = turn(&mut m, ch(1), ms(100), &frame(230.0, 5.0, 1_150.0));
        let _ = turn(&mut m, ch(2), ms(200), &frame(230.0, 4.0, 920.0));
        assert_close(total_current(&m.telemetry(ms(300))), 9.0);
        // Outlet 2 opens; the meter has not been back to it, but its 4 A are gone.
        m.handle_outlets(OutletMask(0b01), ms(400));
        let t = m.telemetry(ms(500));
        assert_close(total_current(&t), 5.0);
        assert_close(t[1].power_w, 0.0);
        assert_close(t[1].voltage_v, 230.0);
    }

    #[test]
    fn uptime_counts_from_switch_on_and_currents_sum_for_ocp() {
        let mut m = meter();
        m.handle_outlets(OutletMask(0b01), ms(1_000));
        let _ = turn(&mut m, ch(1), ms(0), &frame(230.0, 4.0, 900.0));
        let _ = turn(&mut m, ch(2), ms(100), &frame(230.0, 2.5, 500.0));
        let t = m.telemetry(ms(6_500));
        assert_eq!((t[0].uptime_s, t[1].uptime_s), (5, 0));
        assert_close(total_current(&t), 6.5);
        assert_close(currents(&t)[1], 2.5);
        m.handle_outlets(OutletMask(0b10), ms(7_000));
        let t = m.telemetry(ms(9_000));
        assert_eq!((t[0].uptime_s, t[1].uptime_s), (0, 2));
    }

    #[test]
    fn a_uart_that_keeps_failing_makes_the_core_wait_for_the_deadline() {
        let mut m = meter();
        let _ = turn(&mut m, ch(1), ms(0), &[]);
        for _ in 0..MAX_READ_ERRORS {
            m.handle_read_error(ch(1), ms(80));
        }
        assert_eq!(m.poll(ms(80)), MeterStep::Sleep { until: ms(310) });
        assert_eq!(m.poll(ms(310)), MeterStep::Select(ch(2)));
        assert!(m.telemetry(ms(310))[0].degraded);
    }

    #[test]
    fn the_queue_mux_sends_a_meter_mux_request_and_never_waits() {
        let q: Queue<NoopRawMutex, SwitchRequest, 1> = Queue::new(FullPolicy::RejectNew);
        let mut mux = SwitchQueueMux::new(&q, 100);
        assert_eq!(embassy_futures::block_on(mux.select(ch(5))), Ok(()));
        assert_eq!(
            embassy_futures::block_on(mux.select(ch(6))),
            Err(MuxError::Busy)
        );
        let r = q.try_receive().unwrap();
        assert_eq!(
            (r.op, r.channel, r.token),
            (SwitchOp::MeterMux, Some(ch(5)), 100)
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Poll,
        Selected(bool),
        Bytes(std::vec::Vec<u8>),
        Frame(u8),
        ReadError,
        Timeout,
        Outlets(u8),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            Just(Op::Poll),
            any::<bool>().prop_map(Op::Selected),
            proptest::collection::vec(any::<u8>(), 0..60).prop_map(Op::Bytes),
            any::<u8>().prop_map(Op::Frame),
            Just(Op::ReadError),
            Just(Op::Timeout),
            any::<u8>().prop_map(Op::Outlets),
        ]
    }

    proptest::proptest! {
        /// Whatever the UART, mux and clock do, the core neither panics nor publishes
        /// non-finite or negative values, and never asks to wait for the past.
        #[test]
        fn the_core_survives_any_sequence_of_events(
            ops in proptest::collection::vec((op(), 0u64..400), 0..200),
        ) {
            let mut m = meter();
            let mut now = Instant::ZERO;
            let mut selected = ch(1);
            for (op, advance_ms) in ops {
                now += Duration::from_millis(advance_ms);
                match op {
                    Op::Poll => match m.poll(now) {
                        MeterStep::Select(c) => selected = c,
                        MeterStep::Sleep { until } => proptest::prop_assert!(until > now),
                        MeterStep::Listen { channel, .. } => {
                            proptest::prop_assert_eq!(channel, selected)
                        }
                    },
                    Op::Selected(ok) => {
                        let _ = m.handle_selected(selected, ok, now);
                    }
                    Op::Bytes(b) => {
                        let _ = m.handle_bytes(selected, &b, now);
                    }
                    Op::Frame(x) => {
                        let f = frame(f32::from(x) * 2.0, f32::from(x) / 10.0, f32::from(x) * 50.0);
                        let _ = m.handle_bytes(selected, &f, now);
                    }
                    Op::ReadError => m.handle_read_error(selected, now),
                    Op::Timeout => {
                        let _ = m.handle_timeout(selected, now);
                    }
                    Op::Outlets(mask) => m.handle_outlets(OutletMask(mask), now),
                }
                for t in m.telemetry(now) {
                    for x in [t.voltage_v, t.current_a, t.power_w, t.power_factor, t.energy_wh] {
                        proptest::prop_assert!(x.is_finite() && x >= 0.0, "{:?}", t);
                    }
                }
            }
        }
    }

    // ---- runner, against a virtual clock and a UART wired to the selected chip ----

    struct VirtualClock(Cell<Instant>);

    impl Clock for VirtualClock {
        fn now(&self) -> Instant {
            self.0.get()
        }
        async fn sleep_until(&self, deadline: Instant) {
            if deadline > self.0.get() {
                self.0.set(deadline);
            }
        }
    }

    /// Eight chips behind a mux: outlet 3's chip is dead, the others send a frame every 55 ms.
    struct MuxedUart<'a> {
        clock: &'a VirtualClock,
        selected: &'a Cell<Option<Outlet>>,
    }

    impl embedded_io_async::ErrorType for MuxedUart<'_> {
        type Error = core::convert::Infallible;
    }

    impl embedded_io_async::Read for MuxedUart<'_> {
        async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
            match self.selected.get() {
                Some(o) if o.number() != 3 => {
                    // A whole frame's worth of line time passes.
                    let now = self.clock.now();
                    self.clock.0.set(now + Duration::from_millis(55));
                    let f = frame(
                        230.0,
                        f32::from(o.number()) / 10.0,
                        23.0 * f32::from(o.number()),
                    );
                    let n = buf.len().min(FRAME_LEN);
                    buf[..n].copy_from_slice(&f[..n]);
                    Ok(n)
                }
                _ => core::future::pending().await,
            }
        }
    }

    /// Relay state the test sets; beats counted.
    struct Links<'a> {
        relays: &'a Cell<OutletMask>,
        beats: &'a Cell<u32>,
    }

    impl MeterLinks for Links<'_> {
        fn relays(&mut self) -> Option<OutletMask> {
            Some(self.relays.get())
        }
        fn beat(&mut self, _now: Instant) {
            self.beats.set(self.beats.get() + 1);
        }
    }

    #[test]
    fn the_runner_follows_the_relays_and_beats_every_step() {
        let clock = VirtualClock(Cell::new(Instant::ZERO));
        let selected = Cell::new(None);
        let uart = MuxedUart {
            clock: &clock,
            selected: &selected,
        };
        let mux = |o: Outlet| {
            selected.set(Some(o));
            Ok(())
        };
        let sink = |_: &[ChannelTelemetry; CHANNELS]| {};
        let (relays, beats) = (Cell::new(OutletMask(0b10)), Cell::new(0));
        let links = Links {
            relays: &relays,
            beats: &beats,
        };
        let mut task = MeterTask::new(uart, &clock, mux, sink, meter()).with_links(links);
        let mut steps = 0;
        embassy_futures::block_on(async {
            while clock.now() < ms(3_000) {
                task.step().await;
                steps += 1;
            }
        });
        assert_eq!(beats.get(), steps);
        let t = task.core_mut().telemetry(clock.now());
        // Outlet 2 has been on since the first step; outlet 1 never was.
        assert!(t[1].uptime_s >= 2, "{}", t[1].uptime_s);
        assert_eq!(t[0].uptime_s, 0);
        // Opening outlet 2 drops its load from the average at the next step.
        relays.set(OutletMask::NONE);
        embassy_futures::block_on(task.step());
        let t = task.core_mut().telemetry(clock.now());
        assert_close(t[1].current_a, 0.0);
    }

    #[test]
    fn the_runner_scans_all_outlets_publishes_telemetry_and_flags_the_dead_one() {
        let clock = VirtualClock(Cell::new(Instant::ZERO));
        let selected = Cell::new(None);
        let uart = MuxedUart {
            clock: &clock,
            selected: &selected,
        };
        let mux = |o: Outlet| {
            selected.set(Some(o));
            Ok(())
        };
        let telemetry: Watch<NoopRawMutex, [ChannelTelemetry; CHANNELS], 1> = Watch::new();
        let amps: Watch<NoopRawMutex, [f32; CHANNELS], 1> = Watch::new();
        let sink = WatchSink {
            telemetry: &telemetry,
            currents: &amps,
        };
        let mut task = MeterTask::new(uart, &clock, mux, sink, meter());
        embassy_futures::block_on(async {
            while clock.now() < ms(3_000) {
                task.step().await;
            }
        });
        let t = telemetry.try_get().unwrap();
        for o in Outlet::all() {
            let c = t[o.index()];
            if o.number() == 3 {
                assert!(c.degraded);
            } else {
                assert!(!c.degraded, "{o}");
                assert_close(c.voltage_v, 230.0);
                assert_close(c.current_a, f32::from(o.number()) / 10.0);
            }
        }
        let a = amps.try_get().unwrap();
        assert_close(a.iter().sum(), 3.3);
        assert!(task.core_mut().stats().frames >= 7);
    }
}
