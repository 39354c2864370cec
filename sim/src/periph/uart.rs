//! A full-duplex UART link on virtual time, with seeded fault rules.
//!
//! This module owns the wire between two serial ports: byte timing at the baud rate and frame
//! format, the transmit queue of each side, the receive FIFO of each side, the fault rules of
//! each direction and the counters that say where every byte went.
//!
//! # Timing
//! A byte takes `1 start + data + parity + stop` bit times ([`UartConfig::bits_per_byte`]); 8E1
//! at 4800 baud is 11 bits, 2291.67 µs. Bytes written while the transmitter is still busy leave
//! back to back, and the end of the n-th byte of such a burst is computed from the burst's start
//! (`start + n × bits × 10⁶ / baud`, rounded once), so rounding never accumulates.
//!
//! # Receiving without a timer per byte
//! Following DESIGN decision 9, bytes are not delivered one timer at a time. Each direction keeps
//! the bytes on the wire with their arrival instants and moves them into the receive FIFO lazily,
//! whenever someone looks (a read, a stats call, a fault change). A reader models an idle-line
//! (DMA) receiver: [`Read::read`] waits until at least one byte has arrived, then returns when
//! the burst it belongs to has fully arrived, `buf` is full, or the FIFO is full, whichever comes
//! first: one timer per read. A burst is a run of bytes with less than one idle character between
//! them (the gap a UART's IDLE flag needs). A waiting reader is handed the FIFO as soon as it
//! fills, so it loses bytes only if its task runs late (a busy core); when nobody reads, bytes
//! that find the FIFO (`rx_buffer` bytes) full are dropped, newest first, and counted as overrun.
//!
//! One deliberate difference from the `embedded-io` wording: a read that finds bytes already in
//! the FIFO while their burst is still arriving waits for the rest of the burst (up to `buf`), as
//! an idle-line receiver does, instead of returning the partial burst at once. Firmware that
//! parses frames gets whole frames in one read, which is what the board's DMA driver gives it too.
//!
//! # Faults
//! Each direction has one [`FaultRule`] and its own seeded RNG (turmoil-style rules as plain
//! method calls on [`UartLink`]). The fate of a byte is decided when it is written; a
//! [`UartLink::disconnect`] also cuts the bytes already on the wire. Every byte ends up counted in
//! exactly one of [`UartStats`]' `delivered`, `overrun`, `dropped`, `disconnected` or
//! `in_flight`; `corrupted` bytes are delivered and counted as both.
//!
//! Not modelled: parity and framing error flags (a corrupted byte arrives as data, as with a
//! driver that ignores the flags), break conditions, hardware flow control, a bounded TX queue
//! (writes never block).
use std::cell::RefCell;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, Waker};

use embedded_io_async::{ErrorType, Read, ReadReady, Write, WriteReady};
use firmware_core::time::{Duration, Instant};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::kernel::{Kernel, SimClock, Sleep, Tracer};

/// Parity bit of a UART frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    /// No parity bit.
    None,
    /// Even parity bit.
    Even,
    /// Odd parity bit.
    Odd,
}

/// Line settings shared by both ends of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UartConfig {
    /// Bits per second.
    pub baud: u32,
    /// Data bits per character, 5 to 8.
    pub data_bits: u8,
    /// Parity bit, if any.
    pub parity: Parity,
    /// Stop bits, 1 or 2.
    pub stop_bits: u8,
    /// Receive FIFO size in bytes, per side; bytes arriving into a full FIFO are overrun.
    pub rx_buffer: usize,
}

/// Why a [`UartConfig`] cannot describe a line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UartConfigError {
    /// A baud rate of zero would make every byte take forever.
    #[error("baud rate must be above zero")]
    ZeroBaud,
    /// UART characters carry 5 to 8 data bits.
    #[error("data bits must be 5 to 8, got {0}")]
    DataBits(u8),
    /// UART frames end with 1 or 2 stop bits.
    #[error("stop bits must be 1 or 2, got {0}")]
    StopBits(u8),
    /// A receiver needs room for at least one byte.
    #[error("the receive buffer must hold at least one byte")]
    ZeroRxBuffer,
}

impl UartConfig {
    /// 8 data bits, no parity, 1 stop bit, 256-byte receive FIFO.
    pub const fn new_8n1(baud: u32) -> Self {
        UartConfig {
            baud,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1,
            rx_buffer: 256,
        }
    }

    /// 8 data bits, even parity, 1 stop bit, 256-byte receive FIFO (the HLW8032's 4800 8E1).
    pub const fn new_8e1(baud: u32) -> Self {
        UartConfig {
            parity: Parity::Even,
            ..UartConfig::new_8n1(baud)
        }
    }

    /// Check that the settings describe a real line.
    pub fn validate(&self) -> Result<(), UartConfigError> {
        if self.baud == 0 {
            return Err(UartConfigError::ZeroBaud);
        }
        if !(5..=8).contains(&self.data_bits) {
            return Err(UartConfigError::DataBits(self.data_bits));
        }
        if !(1..=2).contains(&self.stop_bits) {
            return Err(UartConfigError::StopBits(self.stop_bits));
        }
        if self.rx_buffer == 0 {
            return Err(UartConfigError::ZeroRxBuffer);
        }
        Ok(())
    }

    /// Bits on the wire per byte: start + data + parity + stop.
    pub fn bits_per_byte(&self) -> u32 {
        let parity = if self.parity == Parity::None { 0 } else { 1 };
        1 + u32::from(self.data_bits) + parity + u32::from(self.stop_bits)
    }

    /// Time one byte occupies the wire, rounded to the nearest microsecond.
    pub fn byte_time(&self) -> Duration {
        self.burst_time(1)
    }

    /// Time `n` back-to-back bytes occupy the wire, computed exactly and rounded once.
    /// A zero baud rate gives [`Duration::MAX`].
    pub fn burst_time(&self, n: u64) -> Duration {
        if self.baud == 0 {
            return Duration::MAX;
        }
        let baud = u128::from(self.baud);
        let bit_us = u128::from(n) * u128::from(self.bits_per_byte()) * 1_000_000;
        let us = (bit_us + baud / 2) / baud;
        Duration::from_micros(u64::try_from(us).unwrap_or(u64::MAX))
    }

    /// Whether a gap between two arrivals holds at least one idle character, which ends a burst.
    fn is_idle_gap(&self, gap: Duration) -> bool {
        // Exact integer comparison of gap >= 2 × bits / baud: one character for the byte
        // itself, one for the idle line.
        u128::from(gap.as_micros()) * u128::from(self.baud)
            >= 2 * u128::from(self.bits_per_byte()) * 1_000_000
    }

    fn data_mask(&self) -> u8 {
        // Validated data bits are 5..=8, so the shift never overflows.
        (0xffu16 >> (8 - u32::from(self.data_bits.clamp(5, 8)))) as u8
    }
}

/// One direction of a link. Port A transmits `AtoB` and receives `BtoA`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From port A to port B.
    AtoB,
    /// From port B to port A.
    BtoA,
}

impl Direction {
    /// The opposite direction.
    pub fn reverse(self) -> Direction {
        match self {
            Direction::AtoB => Direction::BtoA,
            Direction::BtoA => Direction::AtoB,
        }
    }

    fn index(self) -> usize {
        match self {
            Direction::AtoB => 0,
            Direction::BtoA => 1,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::AtoB => "a->b",
            Direction::BtoA => "b->a",
        })
    }
}

/// What happens to the bytes of one direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FaultRule {
    /// Every byte arrives intact.
    Pass,
    /// Each byte is lost with `probability` (the line stays busy for its time, as with noise).
    Drop {
        /// Chance per byte, 0 to 1.
        probability: f64,
    },
    /// Each byte has one random data bit flipped with `probability`.
    Corrupt {
        /// Chance per byte, 0 to 1.
        probability: f64,
    },
    /// Each write arrives `extra` plus a uniform `0..=jitter` later (order is kept).
    Delay {
        /// Fixed extra latency.
        extra: Duration,
        /// Upper bound of the random extra latency, drawn once per write.
        jitter: Duration,
    },
    /// Every byte vanishes; setting it also cuts the bytes already on the wire.
    Disconnect,
}

impl FaultRule {
    /// Probabilities outside 0..=1 (or NaN) would panic the RNG; clamp them once, here.
    fn sanitized(self) -> FaultRule {
        let clean = |p: f64| if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
        match self {
            FaultRule::Drop { probability } => FaultRule::Drop {
                probability: clean(probability),
            },
            FaultRule::Corrupt { probability } => FaultRule::Corrupt {
                probability: clean(probability),
            },
            other => other,
        }
    }
}

impl fmt::Display for FaultRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultRule::Pass => f.write_str("pass"),
            FaultRule::Drop { probability } => write!(f, "drop p={probability:.3}"),
            FaultRule::Corrupt { probability } => write!(f, "corrupt p={probability:.3}"),
            FaultRule::Delay { extra, jitter } => write!(f, "delay {extra} jitter {jitter}"),
            FaultRule::Disconnect => f.write_str("disconnect"),
        }
    }
}

/// Where the bytes of one direction went. `sent = delivered + overrun + dropped + disconnected +
/// in_flight` at any time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UartStats {
    /// Bytes written by the transmitter.
    pub sent: u64,
    /// Bytes that reached the receive FIFO (including corrupted ones).
    pub delivered: u64,
    /// Bytes lost to a [`FaultRule::Drop`].
    pub dropped: u64,
    /// Bytes delivered with a flipped bit ([`FaultRule::Corrupt`]).
    pub corrupted: u64,
    /// Bytes that arrived while the receive FIFO was full.
    pub overrun: u64,
    /// Bytes lost to a disconnected line.
    pub disconnected: u64,
    /// Bytes on the wire now, not yet at the receiver.
    pub in_flight: u64,
}

impl fmt::Display for UartStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sent={} delivered={} dropped={} corrupted={} overrun={} disconnected={} in_flight={}",
            self.sent,
            self.delivered,
            self.dropped,
            self.corrupted,
            self.overrun,
            self.disconnected,
            self.in_flight
        )
    }
}

/// A byte on the wire: `None` is a byte lost to noise, which still keeps the line busy.
struct Flight {
    at: Instant,
    byte: Option<u8>,
}

/// One direction: a transmitter, the wire, and the receiver's FIFO.
struct Line {
    rule: FaultRule,
    rng: ChaCha8Rng,
    burst_start: Instant,
    burst_len: u64,
    tx_free_at: Instant,
    last_scheduled: Instant,
    in_flight: VecDeque<Flight>,
    rx: VecDeque<u8>,
    last_arrival: Option<Instant>,
    reader: Option<Waker>,
    stats: UartStats,
}

impl Line {
    fn new(rng: ChaCha8Rng) -> Self {
        Line {
            rule: FaultRule::Pass,
            rng,
            burst_start: Instant::ZERO,
            burst_len: 0,
            tx_free_at: Instant::ZERO,
            last_scheduled: Instant::ZERO,
            in_flight: VecDeque::new(),
            rx: VecDeque::new(),
            last_arrival: None,
            reader: None,
            stats: UartStats::default(),
        }
    }

    fn wake_reader(&mut self) {
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }
}

/// What a read should do now.
enum Plan {
    Ready,
    WaitForData,
    WaitUntil(Instant),
}

struct LinkState {
    name: String,
    config: UartConfig,
    connected: bool,
    lines: [Line; 2],
}

impl LinkState {
    fn line(&self, dir: Direction) -> &Line {
        &self.lines[dir.index()]
    }

    fn line_mut(&mut self, dir: Direction) -> &mut Line {
        &mut self.lines[dir.index()]
    }

    /// Move every byte that has arrived by `now` into the receive FIFO.
    fn settle(&mut self, dir: Direction, now: Instant) {
        let cap = self.config.rx_buffer;
        let line = self.line_mut(dir);
        while line.in_flight.front().is_some_and(|f| f.at <= now) {
            let Some(f) = line.in_flight.pop_front() else {
                break;
            };
            line.last_arrival = Some(f.at);
            let Some(byte) = f.byte else {
                continue;
            };
            if line.rx.len() < cap {
                line.rx.push_back(byte);
                line.stats.delivered += 1;
            } else {
                line.stats.overrun += 1;
            }
        }
    }

    /// Lose everything still on the wire in `dir` (a cable cut mid-frame). Returns the count.
    fn cut(&mut self, dir: Direction, now: Instant) -> u64 {
        self.settle(dir, now);
        let line = self.line_mut(dir);
        let mut lost = 0;
        for f in line.in_flight.drain(..) {
            // Noise-dropped bytes were counted when they were written.
            if f.byte.is_some() {
                lost += 1;
            }
        }
        line.stats.disconnected += lost;
        line.last_scheduled = now;
        line.wake_reader();
        lost
    }

    /// Queue `bytes` on the transmitter of `dir` at `now`, deciding each byte's fate.
    fn transmit(&mut self, dir: Direction, now: Instant, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let config = self.config;
        let connected = self.connected;
        let mask = config.data_mask();
        let spacing = Duration::from_micros(
            u64::from(config.bits_per_byte()) * 1_000_000 / u64::from(config.baud.max(1)),
        );
        let line = self.line_mut(dir);
        if line.tx_free_at <= now {
            line.burst_start = now;
            line.burst_len = 0;
        }
        let rule = line.rule;
        let cut = !connected || rule == FaultRule::Disconnect;
        let delay = match rule {
            FaultRule::Delay { extra, jitter } if !cut => {
                extra + Duration::from_micros(line.rng.random_range(0..=jitter.as_micros()))
            }
            _ => Duration::ZERO,
        };
        for &b in bytes {
            line.burst_len += 1;
            let end = line.burst_start + config.burst_time(line.burst_len);
            line.tx_free_at = end;
            line.stats.sent += 1;
            if cut {
                line.stats.disconnected += 1;
                continue;
            }
            let mut byte = Some(b & mask);
            match rule {
                FaultRule::Drop { probability } if line.rng.random_bool(probability) => {
                    byte = None;
                    line.stats.dropped += 1;
                }
                FaultRule::Corrupt { probability } if line.rng.random_bool(probability) => {
                    let bit = line.rng.random_range(0..config.data_bits.clamp(5, 8));
                    byte = Some((b & mask) ^ (1 << bit));
                    line.stats.corrupted += 1;
                }
                _ => {}
            }
            // A delay that shrinks between writes must not let bytes overtake: keep FIFO order
            // and at least the floor of a byte time between arrivals. Without a delay rule this
            // never moves a byte, since back-to-back ends are at least that far apart.
            let at = (end + delay).max(line.last_scheduled + spacing);
            line.last_scheduled = at;
            line.in_flight.push_back(Flight { at, byte });
        }
        line.wake_reader();
    }

    /// Decide what a read of up to `want` bytes on `dir` does, after [`Self::settle`].
    fn read_plan(&self, dir: Direction, want: usize) -> Plan {
        let line = self.line(dir);
        let cap = want.min(self.config.rx_buffer);
        if line.rx.len() >= cap {
            return Plan::Ready;
        }
        let mut have = line.rx.len();
        let mut prev = if have > 0 { line.last_arrival } else { None };
        let mut until = None;
        for f in &line.in_flight {
            if let Some(p) = prev
                && have > 0
                && self.config.is_idle_gap(f.at - p)
            {
                break;
            }
            prev = Some(f.at);
            if f.byte.is_some() {
                have += 1;
            }
            if have > 0 {
                until = Some(f.at);
            }
            if have >= cap {
                break;
            }
        }
        match until {
            Some(t) => Plan::WaitUntil(t),
            None if line.rx.is_empty() => Plan::WaitForData,
            None => Plan::Ready,
        }
    }
}

/// Build a link named `name` on `kernel`'s clock, trace and seed (one RNG stream per direction,
/// `uart:<name>:a->b` and `uart:<name>:b->a`).
///
/// ```
/// # use sim::kernel::Kernel;
/// # use sim::periph::uart::{self, UartConfig};
/// let kernel = Kernel::new(1);
/// let (link, mcu, meter) = uart::link(&kernel, "pdu.meter", UartConfig::new_8e1(4800))?;
/// # drop((link, mcu, meter));
/// # Ok::<(), uart::UartConfigError>(())
/// ```
pub fn link(
    kernel: &Kernel,
    name: &str,
    config: UartConfig,
) -> Result<(UartLink, UartPort, UartPort), UartConfigError> {
    let rngs = [
        kernel.rng(&format!("uart:{name}:{}", Direction::AtoB)),
        kernel.rng(&format!("uart:{name}:{}", Direction::BtoA)),
    ];
    UartLink::new(kernel.clock(), kernel.tracer(), rngs, name, config)
}

/// Control handle of a link: fault rules, disconnects and stats. Cheap to clone.
#[derive(Clone)]
pub struct UartLink {
    state: Rc<RefCell<LinkState>>,
    clock: SimClock,
    tracer: Tracer,
}

impl UartLink {
    /// Build a link from parts: `rngs[0]` drives the `AtoB` faults, `rngs[1]` the `BtoA` ones.
    /// Returns the control handle and the two ports (A, B).
    pub fn new(
        clock: SimClock,
        tracer: Tracer,
        rngs: [ChaCha8Rng; 2],
        name: &str,
        config: UartConfig,
    ) -> Result<(UartLink, UartPort, UartPort), UartConfigError> {
        config.validate()?;
        let [ab, ba] = rngs;
        let state = Rc::new(RefCell::new(LinkState {
            name: name.to_owned(),
            config,
            connected: true,
            lines: [Line::new(ab), Line::new(ba)],
        }));
        let port = |tx| UartPort {
            state: state.clone(),
            clock: clock.clone(),
            tx,
        };
        let (a, b) = (port(Direction::AtoB), port(Direction::BtoA));
        Ok((
            UartLink {
                state,
                clock,
                tracer,
            },
            a,
            b,
        ))
    }

    /// The link's name, also its trace source.
    pub fn name(&self) -> String {
        self.state.borrow().name.clone()
    }

    /// The line settings.
    pub fn config(&self) -> UartConfig {
        self.state.borrow().config
    }

    /// The rule in force for `dir`.
    pub fn fault(&self, dir: Direction) -> FaultRule {
        self.state.borrow().line(dir).rule
    }

    /// Apply `rule` to bytes written from now on in `dir` (`link.set_fault(Direction::AtoB,
    /// FaultRule::Drop { probability: 0.1 })`). Probabilities are clamped to 0..=1. The trace
    /// event carries the direction's counters up to the change, so a report can tell what
    /// happened under each rule.
    pub fn set_fault(&self, dir: Direction, rule: FaultRule) {
        let rule = rule.sanitized();
        let now = self.clock.now();
        let mut text = format!("{dir} fault {rule}, until now {}", self.stats(dir));
        let mut st = self.state.borrow_mut();
        st.line_mut(dir).rule = rule;
        if rule == FaultRule::Disconnect {
            let lost = st.cut(dir, now);
            text.push_str(&format!(", {lost} bytes on the wire lost"));
        }
        self.tracer.record(&st.name, text);
    }

    /// Set both directions back to [`FaultRule::Pass`] (a disconnect stays until
    /// [`Self::reconnect`]).
    pub fn clear_faults(&self) {
        self.set_fault(Direction::AtoB, FaultRule::Pass);
        self.set_fault(Direction::BtoA, FaultRule::Pass);
    }

    /// Pull the cable: bytes on the wire and bytes written until [`Self::reconnect`] vanish.
    pub fn disconnect(&self) {
        let now = self.clock.now();
        let mut st = self.state.borrow_mut();
        st.connected = false;
        let lost = st.cut(Direction::AtoB, now) + st.cut(Direction::BtoA, now);
        self.tracer.record(
            &st.name,
            format!("disconnected, {lost} bytes on the wire lost"),
        );
    }

    /// Plug the cable back in: bytes written from now on are delivered again.
    pub fn reconnect(&self) {
        let mut st = self.state.borrow_mut();
        st.connected = true;
        self.tracer.record(&st.name, "reconnected");
    }

    /// Whether the cable is plugged in (per-direction rules aside).
    pub fn is_connected(&self) -> bool {
        self.state.borrow().connected
    }

    /// Counters for `dir`, up to date with the current instant.
    pub fn stats(&self, dir: Direction) -> UartStats {
        let now = self.clock.now();
        let mut st = self.state.borrow_mut();
        st.settle(dir, now);
        let line = st.line(dir);
        UartStats {
            in_flight: line.in_flight.iter().filter(|f| f.byte.is_some()).count() as u64,
            ..line.stats
        }
    }
}

/// One end of a link, for a firmware driver: `embedded_io_async::{Read, Write}` plus
/// `ReadReady`/`WriteReady`. Never fails (errors are [`Infallible`]).
pub struct UartPort {
    state: Rc<RefCell<LinkState>>,
    clock: SimClock,
    tx: Direction,
}

impl UartPort {
    /// The direction this port transmits on (its reads come from the reverse).
    pub fn tx_direction(&self) -> Direction {
        self.tx
    }

    /// Split into a receive half and a transmit half, for drivers that take them separately
    /// (like a board's `BufferedUart::split`).
    pub fn split(self) -> (UartRx, UartTx) {
        let tx = UartPort {
            state: self.state.clone(),
            clock: self.clock.clone(),
            tx: self.tx,
        };
        (UartRx(self), UartTx(tx))
    }
}

/// The receive half of a [`UartPort`].
pub struct UartRx(UartPort);

/// The transmit half of a [`UartPort`].
pub struct UartTx(UartPort);

impl ErrorType for UartRx {
    type Error = Infallible;
}

impl ErrorType for UartTx {
    type Error = Infallible;
}

impl Read for UartRx {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
        self.0.read(buf).await
    }
}

impl ReadReady for UartRx {
    fn read_ready(&mut self) -> Result<bool, Infallible> {
        self.0.read_ready()
    }
}

impl Write for UartTx {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
        self.0.write(buf).await
    }
    async fn flush(&mut self) -> Result<(), Infallible> {
        self.0.flush().await
    }
}

impl WriteReady for UartTx {
    fn write_ready(&mut self) -> Result<bool, Infallible> {
        self.0.write_ready()
    }
}

impl ErrorType for UartPort {
    type Error = Infallible;
}

impl Read for UartPort {
    /// Wait for at least one byte, then for the rest of its burst, a full `buf` or a full FIFO
    /// (see the module docs).
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
        if buf.is_empty() {
            return Ok(0);
        }
        let rx = self.tx.reverse();
        let mut timer: Option<(Instant, Sleep)> = None;
        poll_fn(|cx| {
            let now = self.clock.now();
            let mut st = self.state.borrow_mut();
            st.settle(rx, now);
            let until = match st.read_plan(rx, buf.len()) {
                Plan::Ready => {
                    let line = st.line_mut(rx);
                    let n = buf.len().min(line.rx.len());
                    for (slot, b) in buf.iter_mut().zip(line.rx.drain(..n)) {
                        *slot = b;
                    }
                    return Poll::Ready(Ok(n));
                }
                Plan::WaitForData => None,
                Plan::WaitUntil(t) => Some(t),
            };
            // A write in this direction wakes us to recompute the deadline.
            st.line_mut(rx).reader = Some(cx.waker().clone());
            drop(st);
            match until {
                None => timer = None,
                Some(t) => {
                    if timer.as_ref().map(|(at, _)| *at) != Some(t) {
                        timer = Some((t, self.clock.sleep_until(t)));
                    }
                    if let Some((_, sleep)) = timer.as_mut()
                        && Pin::new(sleep).poll(cx).is_ready()
                    {
                        cx.waker().wake_by_ref();
                    }
                }
            }
            Poll::Pending
        })
        .await
    }
}

impl Write for UartPort {
    /// Queue all of `buf` behind the bytes already queued and return at once.
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
        let now = self.clock.now();
        self.state.borrow_mut().transmit(self.tx, now, buf);
        Ok(buf.len())
    }

    /// Wait until the last queued byte has left the transmitter.
    async fn flush(&mut self) -> Result<(), Infallible> {
        let until = self.state.borrow().line(self.tx).tx_free_at;
        self.clock.sleep_until(until).await;
        Ok(())
    }
}

impl ReadReady for UartPort {
    /// True when a read of any size would return without waiting.
    fn read_ready(&mut self) -> Result<bool, Infallible> {
        let rx = self.tx.reverse();
        let now = self.clock.now();
        let mut st = self.state.borrow_mut();
        st.settle(rx, now);
        Ok(matches!(st.read_plan(rx, usize::MAX), Plan::Ready))
    }
}

impl WriteReady for UartPort {
    /// Always true: the transmit queue is unbounded.
    fn write_ready(&mut self) -> Result<bool, Infallible> {
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{Kernel, TaskSpec};

    type Log = Rc<RefCell<Vec<(Instant, Vec<u8>)>>>;

    fn us(v: u64) -> Duration {
        Duration::from_micros(v)
    }
    fn at_us(v: u64) -> Instant {
        Instant::from_micros(v)
    }
    fn at_ms(v: u64) -> Instant {
        Instant::from_millis(v)
    }

    /// A kernel with the PDU meter's line, 4800 8E1.
    #[track_caller]
    fn meter_link(seed: u64, config: UartConfig) -> (Kernel, UartLink, UartPort, UartPort) {
        let k = Kernel::new(seed);
        let (link, a, b) = link(&k, "meter", config).expect("valid config");
        (k, link, a, b)
    }

    /// Spawn a reader on `port` that logs every read (time, bytes), reading `chunk` at a time.
    fn spawn_reader(k: &mut Kernel, mut port: UartPort, chunk: usize) -> Log {
        let log: Log = Rc::default();
        let l = log.clone();
        let clock = k.clock();
        k.spawn(TaskSpec::world("reader"), async move {
            let mut buf = vec![0u8; chunk];
            loop {
                let Ok(n) = port.read(&mut buf).await;
                l.borrow_mut().push((clock.now(), buf[..n].to_vec()));
            }
        })
        .detach();
        log
    }

    /// Spawn a writer that sends each `(time, bytes)` at its time.
    fn spawn_writer(k: &mut Kernel, mut port: UartPort, plan: Vec<(Instant, Vec<u8>)>) {
        let clock = k.clock();
        k.spawn(TaskSpec::world("writer"), async move {
            for (t, bytes) in plan {
                clock.sleep_until(t).await;
                let Ok(()) = port.write_all(&bytes).await;
            }
        })
        .detach();
    }

    /// The kernel stops at the last timer; a sleeper lets `run_until` reach its instant even
    /// when no reader is waiting.
    fn keep_time_moving(k: &mut Kernel, until: Instant) {
        let clock = k.clock();
        k.spawn(TaskSpec::world("time"), async move {
            clock.sleep_until(until).await
        })
        .detach();
    }

    fn frame(n: u8) -> Vec<u8> {
        (0..n).collect()
    }

    #[test]
    fn byte_time_follows_baud_rate_and_frame_format() {
        let e1 = UartConfig::new_8e1(4800);
        assert_eq!(e1.bits_per_byte(), 11);
        assert_eq!(e1.byte_time(), us(2292));
        assert_eq!(e1.burst_time(24), us(55_000));
        let n1 = UartConfig::new_8n1(115_200);
        assert_eq!(n1.bits_per_byte(), 10);
        assert_eq!(n1.byte_time(), us(87));
        // 1000 × 86.806 µs: rounding once, not per byte (which would give 87 000).
        assert_eq!(n1.burst_time(1000), us(86_806));
        let seven_o2 = UartConfig {
            data_bits: 7,
            parity: Parity::Odd,
            stop_bits: 2,
            ..UartConfig::new_8n1(9600)
        };
        assert_eq!(seven_o2.bits_per_byte(), 11);
    }

    #[test]
    fn split_halves_carry_both_directions_at_once() {
        let (mut k, _link, a, b) = meter_link(0, UartConfig::new_8n1(115_200));
        let (mut a_rx, mut a_tx) = a.split();
        let (mut b_rx, mut b_tx) = b.split();
        let got: Log = Rc::default();
        let (g1, c1) = (got.clone(), k.clock());
        k.spawn(TaskSpec::world("a-reader"), async move {
            let mut buf = [0u8; 8];
            let Ok(n) = a_rx.read(&mut buf).await;
            g1.borrow_mut().push((c1.now(), buf[..n].to_vec()));
        })
        .detach();
        let (g2, c2) = (got.clone(), k.clock());
        k.spawn(TaskSpec::world("b-reader"), async move {
            let mut buf = [0u8; 8];
            let Ok(n) = b_rx.read(&mut buf).await;
            g2.borrow_mut().push((c2.now(), buf[..n].to_vec()));
        })
        .detach();
        k.spawn(TaskSpec::world("writers"), async move {
            let Ok(()) = a_tx.write_all(b"ping").await;
            let Ok(()) = b_tx.write_all(b"pong").await;
        })
        .detach();
        k.run_until(at_ms(10));
        let got = got.borrow();
        // Four bytes at 86.8 us each, both ways at once.
        assert!(got.contains(&(at_us(347), b"ping".to_vec())), "{got:?}");
        assert!(got.contains(&(at_us(347), b"pong".to_vec())), "{got:?}");
    }

    #[test]
    fn invalid_settings_are_rejected_as_values() {
        let k = Kernel::new(0);
        let bad = [
            (UartConfig::new_8n1(0), UartConfigError::ZeroBaud),
            (
                UartConfig {
                    data_bits: 9,
                    ..UartConfig::new_8n1(9600)
                },
                UartConfigError::DataBits(9),
            ),
            (
                UartConfig {
                    stop_bits: 0,
                    ..UartConfig::new_8n1(9600)
                },
                UartConfigError::StopBits(0),
            ),
            (
                UartConfig {
                    rx_buffer: 0,
                    ..UartConfig::new_8n1(9600)
                },
                UartConfigError::ZeroRxBuffer,
            ),
        ];
        for (config, want) in bad {
            assert_eq!(link(&k, "bad", config).err(), Some(want));
        }
    }

    #[test]
    fn a_24_byte_burst_arrives_in_one_read_when_its_last_byte_lands() {
        let (mut k, _link, a, b) = meter_link(1, UartConfig::new_8e1(4800));
        let log = spawn_reader(&mut k, a, 64);
        spawn_writer(&mut k, b, vec![(at_ms(1), frame(24))]);
        k.run_until(at_ms(200));
        assert_eq!(*log.borrow(), vec![(at_us(56_000), frame(24))]);
        // One wake for the first write, one for the deadline, plus the first poll: no per-byte
        // timers (decision 9).
        let reader = &k.task_stats()[0];
        assert!(reader.polls <= 3, "reader polled {} times", reader.polls);
    }

    #[test]
    fn a_read_returns_when_its_buffer_is_full_and_the_rest_follows() {
        let config = UartConfig::new_8e1(4800);
        let (mut k, _link, a, b) = meter_link(1, config);
        let log = spawn_reader(&mut k, a, 8);
        spawn_writer(&mut k, b, vec![(Instant::ZERO, frame(24))]);
        k.run_until(at_ms(200));
        let times: Vec<_> = log.borrow().iter().map(|(t, _)| *t).collect();
        let want: Vec<_> = [8, 16, 24]
            .iter()
            .map(|&n| Instant::ZERO + config.burst_time(n))
            .collect();
        assert_eq!(times, want);
        let bytes: Vec<u8> = log.borrow().iter().flat_map(|(_, b)| b.clone()).collect();
        assert_eq!(bytes, frame(24));
    }

    #[test]
    fn writes_while_the_transmitter_is_busy_go_back_to_back_in_one_burst() {
        let config = UartConfig::new_8e1(4800);
        let (mut k, _link, a, b) = meter_link(1, config);
        let log = spawn_reader(&mut k, a, 64);
        // The second write comes 5 ms in, while the first 4 bytes (9.2 ms) are still leaving.
        spawn_writer(
            &mut k,
            b,
            vec![(Instant::ZERO, frame(4)), (at_ms(5), vec![4, 5, 6, 7])],
        );
        k.run_until(at_ms(200));
        assert_eq!(
            *log.borrow(),
            vec![(Instant::ZERO + config.burst_time(8), frame(8))]
        );
    }

    #[test]
    fn writes_separated_by_an_idle_line_are_separate_reads() {
        let config = UartConfig::new_8n1(115_200);
        let (mut k, _link, a, b) = meter_link(1, config);
        let log = spawn_reader(&mut k, a, 64);
        spawn_writer(
            &mut k,
            b,
            vec![(Instant::ZERO, frame(4)), (at_ms(10), vec![9, 9])],
        );
        k.run_until(at_ms(200));
        assert_eq!(
            *log.borrow(),
            vec![
                (Instant::ZERO + config.burst_time(4), frame(4)),
                (at_ms(10) + config.burst_time(2), vec![9, 9]),
            ]
        );
    }

    #[test]
    fn a_read_stops_at_an_idle_character_even_when_the_next_burst_is_on_the_wire() {
        let config = UartConfig::new_8n1(115_200);
        let (mut k, link, a, b) = meter_link(1, config);
        // A 20 ms delay puts both writes on the wire before the first arrives.
        link.set_fault(
            Direction::BtoA,
            FaultRule::Delay {
                extra: Duration::from_millis(20),
                jitter: Duration::ZERO,
            },
        );
        let log = spawn_reader(&mut k, a, 64);
        spawn_writer(
            &mut k,
            b,
            vec![(Instant::ZERO, frame(4)), (at_ms(10), vec![9, 9])],
        );
        k.run_until(at_ms(100));
        assert_eq!(
            *log.borrow(),
            vec![
                (at_ms(20) + config.burst_time(4), frame(4)),
                (at_ms(30) + config.burst_time(2), vec![9, 9]),
            ]
        );
    }

    #[test]
    fn flush_waits_until_the_last_byte_is_on_the_wire() {
        let config = UartConfig::new_8n1(115_200);
        let (mut k, _link, mut a, _b) = meter_link(1, config);
        let clock = k.clock();
        let times = Rc::new(RefCell::new(Vec::new()));
        let t = times.clone();
        k.spawn(TaskSpec::world("writer"), async move {
            clock.sleep_until(at_ms(1)).await;
            let Ok(()) = a.write_all(&frame(10)).await;
            t.borrow_mut().push(clock.now());
            let Ok(()) = a.flush().await;
            t.borrow_mut().push(clock.now());
        })
        .detach();
        k.run_until(at_ms(100));
        assert_eq!(*times.borrow(), vec![at_ms(1), at_ms(1) + us(868)]);
    }

    #[test]
    fn both_directions_run_at_once_and_independently() {
        let (mut k, link, a, b) = meter_link(1, UartConfig::new_8n1(9600));
        link.set_fault(Direction::AtoB, FaultRule::Disconnect);
        let (clock, ca) = (k.clock(), k.clock());
        let got_a = Rc::new(RefCell::new(Vec::new()));
        let g = got_a.clone();
        k.spawn(TaskSpec::world("a"), async move {
            let mut a = a;
            let Ok(()) = a.write_all(b"lost").await;
            let mut buf = [0u8; 16];
            let Ok(n) = a.read(&mut buf).await;
            g.borrow_mut().push((ca.now(), buf[..n].to_vec()));
        })
        .detach();
        k.spawn(TaskSpec::world("b"), async move {
            let mut b = b;
            let Ok(()) = b.write_all(b"pong").await;
            clock.sleep(Duration::from_secs(1)).await;
        })
        .detach();
        k.run_until(at_ms(100));
        let cfg = link.config();
        assert_eq!(
            *got_a.borrow(),
            vec![(Instant::ZERO + cfg.burst_time(4), b"pong".to_vec())]
        );
        assert_eq!(link.stats(Direction::AtoB).disconnected, 4);
        assert_eq!(link.stats(Direction::BtoA).delivered, 4);
    }

    /// Send 200 bytes in 10 bursts through `rule`; what arrived, when, and the stats.
    fn faulty_run(seed: u64, rule: FaultRule) -> (Vec<(Instant, Vec<u8>)>, UartStats) {
        let (mut k, link, a, b) = meter_link(seed, UartConfig::new_8n1(115_200));
        link.set_fault(Direction::BtoA, rule);
        let log = spawn_reader(&mut k, a, 64);
        let plan = (0..10u8)
            .map(|i| {
                (
                    at_ms(u64::from(i) * 10),
                    (0..20).map(|j| i * 20 + j).collect(),
                )
            })
            .collect();
        spawn_writer(&mut k, b, plan);
        k.run_until(at_ms(500));
        let got = log.borrow().clone();
        (got, link.stats(Direction::BtoA))
    }

    #[test]
    fn drop_rule_loses_bytes_reproducibly_per_seed() {
        let rule = FaultRule::Drop { probability: 0.2 };
        let (run1, stats) = faulty_run(7, rule);
        let (run2, _) = faulty_run(7, rule);
        let (other, _) = faulty_run(8, rule);
        assert_eq!(run1, run2);
        assert_ne!(run1, other);
        assert!(stats.dropped > 10 && stats.dropped < 80, "{stats:?}");
        assert_eq!(stats.sent, 200);
        assert_eq!(stats.delivered + stats.dropped, 200);
        let received: usize = run1.iter().map(|(_, b)| b.len()).sum();
        assert_eq!(received as u64, stats.delivered);
        // Survivors keep their order.
        let bytes: Vec<u8> = run1.iter().flat_map(|(_, b)| b.clone()).collect();
        assert!(bytes.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn corrupt_rule_flips_one_data_bit_reproducibly_per_seed() {
        let rule = FaultRule::Corrupt { probability: 0.3 };
        let (run1, stats) = faulty_run(7, rule);
        let (run2, _) = faulty_run(7, rule);
        let (other, _) = faulty_run(8, rule);
        assert_eq!(run1, run2);
        assert_ne!(run1, other);
        let bytes: Vec<u8> = run1.iter().flat_map(|(_, b)| b.clone()).collect();
        assert_eq!(bytes.len(), 200);
        let mut flipped = 0;
        for (i, b) in bytes.iter().enumerate() {
            let diff = (i as u8 ^ b).count_ones();
            assert!(diff <= 1, "byte {i} became {b}");
            flipped += diff as u64;
        }
        assert_eq!(flipped, stats.corrupted);
        assert!(stats.corrupted > 20, "{stats:?}");
    }

    #[test]
    fn delay_rule_shifts_arrival_by_extra_plus_bounded_jitter() {
        let config = UartConfig::new_8n1(115_200);
        let (mut k, link, a, b) = meter_link(3, config);
        link.set_fault(
            Direction::BtoA,
            FaultRule::Delay {
                extra: Duration::from_millis(10),
                jitter: us(500),
            },
        );
        let log = spawn_reader(&mut k, a, 64);
        spawn_writer(&mut k, b, vec![(Instant::ZERO, frame(4))]);
        k.run_until(at_ms(100));
        let log = log.borrow();
        assert_eq!(log.len(), 1);
        let (t, bytes) = &log[0];
        assert_eq!(bytes, &frame(4));
        let base = Instant::ZERO + config.burst_time(4) + Duration::from_millis(10);
        assert!(*t >= base && *t <= base + us(500), "arrived at {t}");
    }

    #[test]
    fn disconnect_loses_bytes_and_reconnect_restores_the_line() {
        let config = UartConfig::new_8e1(4800);
        let (mut k, link, a, b) = meter_link(1, config);
        let log = spawn_reader(&mut k, a, 64);
        // 24 bytes from t=0; the cable is pulled at 30 ms, mid-frame (13 bytes have landed).
        spawn_writer(
            &mut k,
            b,
            vec![
                (Instant::ZERO, frame(24)),
                (at_ms(100), vec![0xaa; 5]),
                (at_ms(300), vec![0x55; 3]),
            ],
        );
        k.run_until(at_ms(30));
        link.disconnect();
        assert!(!link.is_connected());
        k.run_until(at_ms(200));
        link.reconnect();
        k.run_until(at_ms(400));
        assert_eq!(
            *log.borrow(),
            vec![
                // The partial frame is handed over once the line stops mid-frame.
                (at_ms(30), frame(13)),
                (at_ms(300) + config.burst_time(3), vec![0x55; 3]),
            ]
        );
        let s = link.stats(Direction::BtoA);
        assert_eq!(s.disconnected, 11 + 5);
        assert_eq!(s.delivered, 13 + 3);
        k.with_trace(|t| {
            let texts: Vec<_> = t.events().iter().map(|e| e.text.as_str()).collect();
            assert!(texts.contains(&"disconnected, 11 bytes on the wire lost"));
            assert!(texts.contains(&"reconnected"));
        });
    }

    #[test]
    fn bytes_arriving_into_a_full_fifo_are_counted_as_overrun_and_the_newest_are_lost() {
        let config = UartConfig {
            rx_buffer: 16,
            ..UartConfig::new_8n1(115_200)
        };
        let (mut k, link, mut a, b) = meter_link(1, config);
        spawn_writer(&mut k, b, vec![(Instant::ZERO, frame(24))]);
        keep_time_moving(&mut k, at_ms(10));
        k.run_until(at_ms(10));
        let s = link.stats(Direction::BtoA);
        assert_eq!((s.delivered, s.overrun), (16, 8));
        let Ok(ready) = a.read_ready();
        assert!(ready);
        let got = Rc::new(RefCell::new(Vec::new()));
        let g = got.clone();
        k.spawn(TaskSpec::world("late reader"), async move {
            let mut buf = [0u8; 64];
            let Ok(n) = a.read(&mut buf).await;
            g.borrow_mut().extend_from_slice(&buf[..n]);
        })
        .detach();
        k.run_until(at_ms(20));
        assert_eq!(*got.borrow(), frame(16));
    }

    #[test]
    fn a_waiting_reader_is_handed_a_full_fifo_before_it_overruns() {
        let config = UartConfig {
            rx_buffer: 16,
            ..UartConfig::new_8n1(115_200)
        };
        let (mut k, link, a, b) = meter_link(1, config);
        let log = spawn_reader(&mut k, a, 64);
        spawn_writer(&mut k, b, vec![(Instant::ZERO, frame(24))]);
        k.run_until(at_ms(10));
        let log = log.borrow();
        let sizes: Vec<_> = log.iter().map(|(_, b)| b.len()).collect();
        assert_eq!(sizes, vec![16, 8]);
        assert_eq!(log[0].0, Instant::ZERO + config.burst_time(16));
        assert_eq!(link.stats(Direction::BtoA).overrun, 0);
    }

    #[test]
    fn read_ready_waits_for_the_end_of_the_burst_like_read_does() {
        let config = UartConfig::new_8e1(4800);
        let (mut k, _link, mut a, b) = meter_link(1, config);
        spawn_writer(&mut k, b, vec![(Instant::ZERO, frame(24))]);
        keep_time_moving(&mut k, at_ms(100));
        k.run_until(at_ms(30));
        // 13 bytes are in the FIFO, but a read would still wait for the other 11.
        let Ok(mid) = a.read_ready();
        assert!(!mid);
        k.run_until(Instant::ZERO + config.burst_time(24));
        let Ok(end) = a.read_ready();
        assert!(end);
        let Ok(w) = a.write_ready();
        assert!(w);
    }

    #[test]
    fn seven_data_bits_carry_only_the_low_seven_bits() {
        let config = UartConfig {
            data_bits: 7,
            ..UartConfig::new_8n1(9600)
        };
        let (mut k, _link, a, b) = meter_link(1, config);
        let log = spawn_reader(&mut k, a, 8);
        spawn_writer(&mut k, b, vec![(Instant::ZERO, vec![0xff, 0x41])]);
        k.run_until(at_ms(100));
        assert_eq!(log.borrow()[0].1, vec![0x7f, 0x41]);
    }

    #[test]
    fn fault_changes_are_traced() {
        let (k, link, _a, _b) = meter_link(1, UartConfig::new_8n1(9600));
        link.set_fault(Direction::AtoB, FaultRule::Drop { probability: 1.5 });
        assert_eq!(
            link.fault(Direction::AtoB),
            FaultRule::Drop { probability: 1.0 }
        );
        link.clear_faults();
        k.with_trace(|t| {
            let texts: Vec<_> = t
                .events()
                .iter()
                .map(|e| format!("{} {}", e.source, e.text))
                .collect();
            let zero = UartStats::default();
            assert_eq!(
                texts,
                vec![
                    format!("meter a->b fault drop p=1.000, until now {zero}"),
                    format!("meter a->b fault pass, until now {zero}"),
                    format!("meter b->a fault pass, until now {zero}"),
                ]
            );
        });
    }
}
