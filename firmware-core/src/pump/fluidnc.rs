//! The FluidNC (Grbl 1.1 dialect) serial protocol: line codec, status-report parser, and a
//! sans-IO client that streams G-code with character counting.
//!
//! What this module owns:
//!
//! * [`parse_line`] turns one line from the controller → [`Line`]. Only `ok` and `error:N` are
//!   *responses*; status reports `<…>`, `[MSG:…]`, `[GC:…]`, `ALARM:N`, `$n=v` and the banner
//!   after a reset (`Grbl 3.9 [FluidNC v3.9.9 …]`) are push messages and never count as one.
//! * [`StatusReport::parse`] parses a status report `<State|MPos:x,y,z,a|FS:f,s|WCO:…|…>`.
//! * [`Client`] is the sans-IO core. [`Client::send_line`] queues a line; [`Client::poll_transmit`]
//!   hands out realtime bytes first (they bypass the controller's line buffer), then lines, but
//!   only while the un-acknowledged lines (each counted with its newline) stay below the
//!   controller's 128-byte receive buffer. [`Client::handle_bytes`] feeds received bytes and
//!   produces [`ClientEvent`]s.
//! * [`flush_transmit`] is the thin async shell that writes what the client has to say to an
//!   `embedded_io_async::Write`. The motion task ([`super::dispense::MotionTask`]) owns the
//!   read side and the clock.
//!
//! Lines are sent with a bare LF, never CRLF: FluidNC's UART channels end a line on CR *and* on
//! LF, so CRLF would produce a second `ok` for the empty line and break the response count.
//!
//! After a soft reset (0x18) the controller empties its receive buffer, so un-acknowledged lines
//! are forgotten and lines queued afterwards are held back until the banner arrives (or
//! [`ClientConfig::reset_timeout`] passes): a late `ok` for a line from before the reset must not
//! be counted against the `$X` that follows it.
use core::fmt;
use core::str::FromStr;

use embedded_io_async::Write;
use heapless::{Deque, Vec};

use crate::time::{Duration, Instant};

/// The controller's serial receive buffer (Grbl `RX_BUFFER_SIZE`, FluidNC's UART FIFO).
pub const RX_BUFFER: usize = 128;
/// Longest line [`Client::send_line`] accepts, without its newline: the line plus LF must be
/// below [`RX_BUFFER`] on its own, or it could never be sent.
pub const MAX_LINE: usize = RX_BUFFER - 2;
/// Longest line accepted from the controller; longer lines are discarded and counted.
pub const MAX_RX_LINE: usize = 256;
/// Axes a status report may carry and the client keeps (X, Y, Z, A: the four pumps).
pub const AXES: usize = 4;
/// Most axis values in a position field (XYZABC); extra axes beyond [`AXES`] are parsed and dropped.
const MAX_REPORTED_AXES: usize = 6;

/// Lines queued but not yet transmitted. Full policy: [`Client::send_line`] refuses with
/// [`SendError::QueueFull`] (the caller learns it was refused).
const PENDING_LINES: usize = 8;
/// Lines transmitted and not yet answered. 128 bytes of buffer hold at most 64 lines (`"\n"` alone
/// is 1 byte, but we never send lines that short in bulk); a full table simply holds back sending.
const IN_FLIGHT_LINES: usize = 16;
/// Queued realtime bytes. Duplicates of an already queued byte are merged.
const REALTIME_QUEUE: usize = 8;
/// Events waiting for [`Client::poll_event`]. Full policy: the oldest event is dropped and counted
/// in [`ClientStats::events_dropped`].
const EVENT_QUEUE: usize = 16;

// ---------------------------------------------------------------------------------------------
// Realtime bytes

/// A realtime command byte: acted on at once by the controller, never buffered, never answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Realtime {
    /// `?`: request a status report.
    StatusQuery,
    /// `!`: feed hold (decelerate and suspend).
    FeedHold,
    /// `~`: cycle start / resume.
    CycleStart,
    /// 0x18 (Ctrl-X): soft reset; flushes the planner and the receive buffer.
    SoftReset,
}

impl Realtime {
    /// The byte on the wire.
    pub const fn byte(self) -> u8 {
        match self {
            Realtime::StatusQuery => b'?',
            Realtime::FeedHold => b'!',
            Realtime::CycleStart => b'~',
            Realtime::SoftReset => 0x18,
        }
    }
}

/// Whether the controller would intercept `b` as a realtime command (it must not appear in a line).
fn is_realtime_byte(b: u8) -> bool {
    matches!(b, b'?' | b'!' | b'~' | 0x18) || b >= 0x80
}

// ---------------------------------------------------------------------------------------------
// Incoming lines

/// One line received from the controller.
#[derive(Debug, Clone, PartialEq)]
pub enum Line<'a> {
    /// `ok`: the oldest un-answered line was accepted.
    Ok,
    /// `error:N`: the oldest un-answered line was rejected with code N.
    Error(u16),
    /// `ALARM:N`: the controller entered the alarm state (push message, not a response).
    Alarm(u16),
    /// A `<…>` status report.
    Status(StatusReport),
    /// `[MSG:…]`: the text inside.
    Message(&'a str),
    /// `[GC:…]`: the modal state inside.
    Gcode(&'a str),
    /// Any other `[TAG:…]` feedback line (`[VER:…]`, `[OPT:…]`, `[HLP:…]`, `[EXP:ID]`, …).
    Feedback(&'a str),
    /// The start-up banner printed after power-up and every soft reset (`Grbl …`).
    Banner(&'a str),
    /// A `$n=v` or `$Name=v` setting line.
    Setting(&'a str),
    /// Any other printable text: not a response; logged and ignored.
    Other(&'a str),
}

/// Why a received line could not be understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum LineError {
    /// The line is empty (after trimming CR/LF and spaces).
    Empty,
    /// The line is not ASCII/UTF-8 text, or holds control characters.
    NotText,
    /// `error:` or `ALARM:` without a valid number.
    BadCode,
    /// `[…` without the closing `]`.
    UnterminatedBracket,
    /// A `<…>` status report that does not parse.
    Status(StatusError),
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineError::Empty => f.write_str("empty line"),
            LineError::NotText => f.write_str("line is not printable text"),
            LineError::BadCode => f.write_str("error/alarm code is not a number"),
            LineError::UnterminatedBracket => f.write_str("'[' without ']'"),
            LineError::Status(e) => write!(f, "bad status report: {e}"),
        }
    }
}

impl core::error::Error for LineError {}

fn parse_code(s: &str) -> Result<u16, LineError> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(LineError::BadCode);
    }
    s.parse::<u16>().map_err(|_| LineError::BadCode)
}

/// Parse one line from the controller (without or with its trailing CR/LF).
pub fn parse_line(bytes: &[u8]) -> Result<Line<'_>, LineError> {
    let text = core::str::from_utf8(bytes).map_err(|_| LineError::NotText)?;
    let text = text.trim_matches(|c: char| c == '\r' || c == '\n' || c == ' ');
    if text.is_empty() {
        return Err(LineError::Empty);
    }
    if text.chars().any(|c| c.is_control()) {
        return Err(LineError::NotText);
    }
    if text == "ok" {
        return Ok(Line::Ok);
    }
    if let Some(code) = text.strip_prefix("error:") {
        return parse_code(code).map(Line::Error);
    }
    if let Some(code) = text.strip_prefix("ALARM:") {
        return parse_code(code).map(Line::Alarm);
    }
    if text.starts_with('<') {
        return StatusReport::parse(text)
            .map(Line::Status)
            .map_err(LineError::Status);
    }
    if let Some(rest) = text.strip_prefix('[') {
        let inner = rest
            .strip_suffix(']')
            .ok_or(LineError::UnterminatedBracket)?;
        if let Some(msg) = inner.strip_prefix("MSG:") {
            return Ok(Line::Message(msg));
        }
        if let Some(gc) = inner.strip_prefix("GC:") {
            return Ok(Line::Gcode(gc));
        }
        return Ok(Line::Feedback(inner));
    }
    if text.starts_with("Grbl ") || text.starts_with("Grbl\t") {
        return Ok(Line::Banner(text));
    }
    if text.starts_with('$') && text.contains('=') {
        return Ok(Line::Setting(text));
    }
    Ok(Line::Other(text))
}

// ---------------------------------------------------------------------------------------------
// Status report

/// The machine state at the start of a status report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(serde::Serialize, serde::Deserialize)]
pub enum MachineState {
    /// Nothing moving, nothing queued.
    Idle,
    /// Executing motion.
    Run,
    /// Feed hold: `Hold:0` complete (can resume), `Hold:1` still decelerating.
    Hold(u8),
    /// Jogging.
    Jog,
    /// Alarm: G-code locked out until `$X` or a reset.
    Alarm,
    /// Safety door `Door:0..3`.
    Door(u8),
    /// Check mode (`$C`).
    Check,
    /// Homing.
    Home,
    /// Sleeping (`$SLP`).
    Sleep,
    /// FluidNC starting up.
    Starting,
}

impl MachineState {
    /// Whether the machine is (or may be) executing motion: anything but Idle, Alarm, Sleep,
    /// Check and a completed hold.
    pub const fn is_moving(self) -> bool {
        matches!(
            self,
            MachineState::Run | MachineState::Jog | MachineState::Home | MachineState::Hold(1)
        )
    }

    fn parse(s: &str) -> Result<MachineState, StatusError> {
        let (name, sub) = match s.split_once(':') {
            Some((n, sub)) => (n, Some(sub)),
            None => (s, None),
        };
        let sub_code = |sub: Option<&str>| -> Result<u8, StatusError> {
            match sub {
                None => Ok(0),
                Some(d) if d.len() == 1 && d.as_bytes()[0].is_ascii_digit() => {
                    Ok(d.as_bytes()[0] - b'0')
                }
                Some(_) => Err(StatusError::BadState),
            }
        };
        let state = match name {
            "Idle" => MachineState::Idle,
            "Run" => MachineState::Run,
            "Hold" => MachineState::Hold(sub_code(sub)?),
            "Jog" => MachineState::Jog,
            "Alarm" => MachineState::Alarm,
            "Door" => MachineState::Door(sub_code(sub)?),
            "Check" => MachineState::Check,
            "Home" => MachineState::Home,
            "Sleep" => MachineState::Sleep,
            "Starting" => MachineState::Starting,
            _ => return Err(StatusError::BadState),
        };
        if sub.is_some() && !matches!(state, MachineState::Hold(_) | MachineState::Door(_)) {
            return Err(StatusError::BadState);
        }
        Ok(state)
    }
}

/// Why a status report did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum StatusError {
    /// Not of the form `<…>`.
    NotFramed,
    /// Unknown machine state.
    BadState,
    /// No `MPos:`/`WPos:` field, or it is not the second field.
    MissingPosition,
    /// A number that does not parse or is not finite.
    BadNumber,
    /// More axis values than a controller can have.
    TooManyAxes,
}

impl fmt::Display for StatusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StatusError::NotFramed => "not enclosed in <>",
            StatusError::BadState => "unknown machine state",
            StatusError::MissingPosition => "no MPos/WPos field",
            StatusError::BadNumber => "bad number",
            StatusError::TooManyAxes => "too many axes",
        })
    }
}

impl core::error::Error for StatusError {}

/// Which coordinate system a report's position is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PositionKind {
    /// `MPos:` machine position.
    Machine,
    /// `WPos:` work position (= MPos − WCO).
    Work,
}

/// A parsed `<…>` status report. Axes the report does not carry read as 0.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct StatusReport {
    /// The machine state.
    pub state: MachineState,
    /// Which position the report carried.
    pub position_kind: PositionKind,
    /// The position, mm, first [`AXES`] axes (X, Y, Z, A).
    pub position: [f32; AXES],
    /// Number of axes the report carried.
    pub axes: u8,
    /// `FS:`/`F:` actual feed, mm/min, if present.
    pub feed_mm_min: Option<f32>,
    /// `WCO:` work coordinate offset, if present in this report.
    pub wco: Option<[f32; AXES]>,
}

fn parse_number(s: &str) -> Result<f32, StatusError> {
    // `f32::from_str` accepts "inf"/"nan"/"1e5"; the controller prints plain decimals only.
    if s.is_empty()
        || s.len() > 16
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-' || b == b'+')
    {
        return Err(StatusError::BadNumber);
    }
    match f32::from_str(s) {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(StatusError::BadNumber),
    }
}

fn parse_axes(s: &str) -> Result<([f32; AXES], u8), StatusError> {
    let mut out = [0.0; AXES];
    let mut n = 0usize;
    for part in s.split(',') {
        if n >= MAX_REPORTED_AXES {
            return Err(StatusError::TooManyAxes);
        }
        let v = parse_number(part)?;
        if let Some(slot) = out.get_mut(n) {
            *slot = v;
        }
        n += 1;
    }
    Ok((out, n as u8))
}

impl StatusReport {
    /// Parse a report line `<State|MPos:…|…>` (surrounding whitespace allowed).
    pub fn parse(text: &str) -> Result<StatusReport, StatusError> {
        let inner = text
            .trim()
            .strip_prefix('<')
            .and_then(|t| t.strip_suffix('>'))
            .ok_or(StatusError::NotFramed)?;
        let mut fields = inner.split('|');
        let state = MachineState::parse(fields.next().unwrap_or(""))?;
        let pos_field = fields.next().ok_or(StatusError::MissingPosition)?;
        let (position_kind, values) = if let Some(v) = pos_field.strip_prefix("MPos:") {
            (PositionKind::Machine, v)
        } else if let Some(v) = pos_field.strip_prefix("WPos:") {
            (PositionKind::Work, v)
        } else {
            return Err(StatusError::MissingPosition);
        };
        let (position, axes) = parse_axes(values)?;
        let mut report = StatusReport {
            state,
            position_kind,
            position,
            axes,
            feed_mm_min: None,
            wco: None,
        };
        for field in fields {
            if let Some(fs) = field
                .strip_prefix("FS:")
                .or_else(|| field.strip_prefix("F:"))
            {
                let feed = fs.split(',').next().unwrap_or("");
                report.feed_mm_min = Some(parse_number(feed)?);
            } else if let Some(w) = field.strip_prefix("WCO:") {
                report.wco = Some(parse_axes(w)?.0);
            }
            // Bf:, Ov:, Pn:, A:, Ln: … are not needed by the pump and are skipped.
        }
        Ok(report)
    }

    /// The machine position, converting a work position with `wco` (the latest known offset).
    /// `None` for a `WPos` report when no offset is known yet.
    pub fn machine_position(&self, wco: Option<[f32; AXES]>) -> Option<[f32; AXES]> {
        match self.position_kind {
            PositionKind::Machine => Some(self.position),
            PositionKind::Work => {
                let wco = self.wco.or(wco)?;
                Some(core::array::from_fn(|i| self.position[i] + wco[i]))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Line assembly

/// Collects received bytes into lines ended by LF or CR (either one; empty lines are skipped).
///
/// Full policy: a line longer than [`MAX_RX_LINE`] is discarded up to its end and reported once.
#[derive(Debug, Default)]
struct LineAssembler {
    buf: Vec<u8, MAX_RX_LINE>,
    overflowed: bool,
}

enum Assembled {
    Nothing,
    Line,
    Overlong,
}

impl LineAssembler {
    fn push(&mut self, b: u8) -> Assembled {
        if b == b'\n' || b == b'\r' {
            if self.overflowed {
                self.overflowed = false;
                self.buf.clear();
                return Assembled::Overlong;
            }
            return if self.buf.is_empty() {
                Assembled::Nothing
            } else {
                Assembled::Line
            };
        }
        if !self.overflowed && self.buf.push(b).is_err() {
            self.overflowed = true;
        }
        Assembled::Nothing
    }
}

// ---------------------------------------------------------------------------------------------
// Client

/// Identifies a line handed to [`Client::send_line`]; its answer carries the same tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct LineTag(pub u32);

/// What [`Client::poll_event`] reports.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ClientEvent {
    /// The line was accepted (`ok`).
    Ok(LineTag),
    /// The line was rejected (`error:N`).
    Error {
        /// The rejected line.
        tag: LineTag,
        /// Grbl/FluidNC error code.
        code: u16,
    },
    /// `ALARM:N` arrived.
    Alarm(u16),
    /// A status report arrived. Its `position` is already converted to machine coordinates when
    /// the offset is known (see [`StatusReport::machine_position`]).
    Status(StatusReport),
    /// The start-up banner arrived: the controller was reset (by us or by itself). Lines not yet
    /// answered were lost.
    Reset,
    /// A line queued or transmitted before [`Client::soft_reset`] that will never be answered.
    Dropped(LineTag),
}

/// Why [`Client::send_line`] refused a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum SendError {
    /// Longer than [`MAX_LINE`].
    TooLong,
    /// Holds a newline, a control character, or a realtime byte (`?`, `!`, `~`, ≥ 0x80) that the
    /// controller would intercept.
    InvalidByte,
    /// The pending-line queue is full; try again after some lines were answered.
    QueueFull,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SendError::TooLong => "line too long",
            SendError::InvalidByte => "line holds a control or realtime byte",
            SendError::QueueFull => "send queue full",
        })
    }
}

impl core::error::Error for SendError {}

/// Counters for telemetry. They wrap around.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ClientStats {
    /// Lines transmitted.
    pub lines_sent: u32,
    /// `ok`/`error` responses matched to a line.
    pub responses: u32,
    /// Responses that matched no line (e.g. after a reset), ignored.
    pub unexpected_responses: u32,
    /// Status reports received.
    pub status_reports: u32,
    /// Received lines that did not parse.
    pub parse_errors: u32,
    /// Received lines longer than [`MAX_RX_LINE`], discarded.
    pub overlong_lines: u32,
    /// Events dropped because nobody polled them.
    pub events_dropped: u32,
    /// Banners seen (controller resets).
    pub resets: u32,
}

/// Timing knobs of the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ClientConfig {
    /// After [`Client::soft_reset`], how long to hold queued lines back waiting for the banner.
    pub reset_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            reset_timeout: Duration::from_millis(1_500),
        }
    }
}

#[derive(Debug, Clone)]
struct PendingLine {
    tag: LineTag,
    text: Vec<u8, RX_BUFFER>,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    tag: LineTag,
    len: u8,
}

/// A chunk for the UART, from [`Client::poll_transmit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// One realtime byte.
    Realtime(u8),
    /// A line with its LF.
    Line(Vec<u8, RX_BUFFER>),
}

impl Transmit {
    /// The bytes to write.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Transmit::Realtime(b) => core::slice::from_ref(b),
            Transmit::Line(v) => v,
        }
    }
}

/// The sans-IO FluidNC client.
///
/// Call order: feed received bytes to [`handle_bytes`](Self::handle_bytes); call
/// [`handle_timeout`](Self::handle_timeout) when [`poll_timeout`](Self::poll_timeout) passes;
/// after any input or request, drain [`poll_transmit`](Self::poll_transmit) to the UART and
/// [`poll_event`](Self::poll_event) to the owner.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    rx: LineAssembler,
    realtime: Deque<u8, REALTIME_QUEUE>,
    pending: Deque<PendingLine, PENDING_LINES>,
    in_flight: Deque<InFlight, IN_FLIGHT_LINES>,
    in_flight_bytes: usize,
    events: Deque<ClientEvent, EVENT_QUEUE>,
    next_tag: u32,
    wco: Option<[f32; AXES]>,
    last_status: Option<StatusReport>,
    /// Set by [`Client::soft_reset`]: lines wait until the banner or this deadline.
    reset_deadline: Option<Instant>,
    stats: ClientStats,
}

impl Default for Client {
    fn default() -> Self {
        Client::new(ClientConfig::default())
    }
}

impl Client {
    /// A client with nothing queued.
    pub fn new(config: ClientConfig) -> Self {
        Client {
            config,
            rx: LineAssembler::default(),
            realtime: Deque::new(),
            pending: Deque::new(),
            in_flight: Deque::new(),
            in_flight_bytes: 0,
            events: Deque::new(),
            next_tag: 0,
            wco: None,
            last_status: None,
            reset_deadline: None,
            stats: ClientStats::default(),
        }
    }

    /// Queue `line` (without newline; LF is added). Returns the tag its answer will carry.
    pub fn send_line(&mut self, line: &str) -> Result<LineTag, SendError> {
        let bytes = line.as_bytes();
        if bytes.len() > MAX_LINE {
            return Err(SendError::TooLong);
        }
        if bytes
            .iter()
            .any(|&b| b < 0x20 || b == 0x7F || is_realtime_byte(b))
        {
            return Err(SendError::InvalidByte);
        }
        if self.pending.is_full() {
            return Err(SendError::QueueFull);
        }
        let mut text: Vec<u8, RX_BUFFER> = Vec::new();
        // Cannot fail: MAX_LINE + 1 < RX_BUFFER.
        let _ = text.extend_from_slice(bytes);
        let _ = text.push(b'\n');
        let tag = LineTag(self.next_tag);
        self.next_tag = self.next_tag.wrapping_add(1);
        let _ = self.pending.push_back(PendingLine { tag, text });
        Ok(tag)
    }

    /// Queue a realtime byte. It goes out before any line. A byte already queued is not queued
    /// twice.
    pub fn send_realtime(&mut self, rt: Realtime) {
        let b = rt.byte();
        if self.realtime.iter().any(|&q| q == b) {
            return;
        }
        if self.realtime.push_back(b).is_err() {
            // Only four distinct bytes exist and duplicates merge, so this cannot happen.
            warn!("fluidnc: realtime queue full");
        }
    }

    /// Put a feed hold `!` at the very front of the output, ahead of every queued byte and line,
    /// and drop the lines not yet transmitted (they would be motion nobody wants any more).
    /// Their tags are reported as [`ClientEvent::Dropped`].
    pub fn feed_hold_now(&mut self) {
        let b = Realtime::FeedHold.byte();
        let mut rest: Deque<u8, REALTIME_QUEUE> = Deque::new();
        let _ = rest.push_back(b);
        while let Some(q) = self.realtime.pop_front() {
            if q != b && q != Realtime::CycleStart.byte() {
                let _ = rest.push_back(q);
            }
        }
        self.realtime = rest;
        self.drop_pending();
    }

    /// Soft reset (0x18): flushes the controller's planner and receive buffer. Every line queued
    /// or un-answered is reported [`ClientEvent::Dropped`]; lines queued after this call wait for
    /// the banner (or [`ClientConfig::reset_timeout`]).
    pub fn soft_reset(&mut self, now: Instant) {
        self.send_realtime(Realtime::SoftReset);
        self.drop_pending();
        while let Some(f) = self.in_flight.pop_front() {
            self.push_event(ClientEvent::Dropped(f.tag));
        }
        self.in_flight_bytes = 0;
        self.wco = None;
        self.reset_deadline = Some(now + self.config.reset_timeout);
    }

    fn drop_pending(&mut self) {
        while let Some(p) = self.pending.pop_front() {
            self.push_event(ClientEvent::Dropped(p.tag));
        }
    }

    /// The next chunk to write: realtime bytes first, then lines while the controller's receive
    /// buffer has room for them (character counting).
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if let Some(b) = self.realtime.pop_front() {
            return Some(Transmit::Realtime(b));
        }
        if self.reset_deadline.is_some() {
            return None;
        }
        let next = self.pending.front()?;
        let len = next.text.len();
        if self.in_flight_bytes + len >= RX_BUFFER || self.in_flight.is_full() {
            return None;
        }
        let line = self.pending.pop_front()?;
        let _ = self.in_flight.push_back(InFlight {
            tag: line.tag,
            len: len as u8,
        });
        self.in_flight_bytes += len;
        self.stats.lines_sent = self.stats.lines_sent.wrapping_add(1);
        Some(Transmit::Line(line.text))
    }

    /// The next event for the owner.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) wants to be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.reset_deadline
    }

    /// Handle the passage of time: give up waiting for a banner after a reset.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(d) = self.reset_deadline
            && now >= d
        {
            warn!("fluidnc: no banner after reset, sending anyway");
            self.reset_deadline = None;
        }
    }

    /// Feed bytes received from the controller.
    pub fn handle_bytes(&mut self, bytes: &[u8], now: Instant) {
        let _ = now;
        for &b in bytes {
            match self.rx.push(b) {
                Assembled::Nothing => {}
                Assembled::Overlong => {
                    self.stats.overlong_lines = self.stats.overlong_lines.wrapping_add(1);
                }
                Assembled::Line => {
                    let line = core::mem::take(&mut self.rx.buf);
                    self.handle_line(&line);
                }
            }
        }
    }

    fn handle_line(&mut self, raw: &[u8]) {
        let line = match parse_line(raw) {
            Ok(l) => l,
            Err(LineError::Empty) => return,
            Err(e) => {
                warn!("fluidnc: unparsable line: {}", e);
                self.stats.parse_errors = self.stats.parse_errors.wrapping_add(1);
                return;
            }
        };
        match line {
            Line::Ok => self.response(None),
            Line::Error(code) => self.response(Some(code)),
            Line::Alarm(code) => {
                warn!("fluidnc: ALARM:{}", code);
                self.push_event(ClientEvent::Alarm(code));
            }
            Line::Status(mut report) => {
                self.stats.status_reports = self.stats.status_reports.wrapping_add(1);
                if let Some(w) = report.wco {
                    self.wco = Some(w);
                }
                if let Some(m) = report.machine_position(self.wco) {
                    report.position = m;
                    report.position_kind = PositionKind::Machine;
                }
                self.last_status = Some(report);
                self.push_event(ClientEvent::Status(report));
            }
            Line::Banner(_) => {
                info!("fluidnc: controller reset (banner)");
                self.stats.resets = self.stats.resets.wrapping_add(1);
                while let Some(f) = self.in_flight.pop_front() {
                    self.push_event(ClientEvent::Dropped(f.tag));
                }
                self.in_flight_bytes = 0;
                self.wco = None;
                self.reset_deadline = None;
                self.push_event(ClientEvent::Reset);
            }
            Line::Message(m) => debug!("fluidnc: [MSG:{}]", m),
            Line::Gcode(_) | Line::Feedback(_) | Line::Setting(_) | Line::Other(_) => {}
        }
    }

    fn response(&mut self, error: Option<u16>) {
        if self.reset_deadline.is_some() {
            // An answer to a line from before our reset: the line is already reported dropped.
            self.stats.unexpected_responses = self.stats.unexpected_responses.wrapping_add(1);
            return;
        }
        let Some(f) = self.in_flight.pop_front() else {
            self.stats.unexpected_responses = self.stats.unexpected_responses.wrapping_add(1);
            return;
        };
        self.in_flight_bytes = self.in_flight_bytes.saturating_sub(f.len as usize);
        self.stats.responses = self.stats.responses.wrapping_add(1);
        self.push_event(match error {
            None => ClientEvent::Ok(f.tag),
            Some(code) => ClientEvent::Error { tag: f.tag, code },
        });
    }

    fn push_event(&mut self, ev: ClientEvent) {
        if let Err(ev) = self.events.push_back(ev) {
            let _ = self.events.pop_front();
            self.stats.events_dropped = self.stats.events_dropped.wrapping_add(1);
            let _ = self.events.push_back(ev);
        }
    }

    /// Bytes of un-answered lines, newlines included (always below [`RX_BUFFER`]).
    pub fn in_flight_bytes(&self) -> usize {
        self.in_flight_bytes
    }

    /// Whether any line is queued or un-answered.
    pub fn has_outstanding_lines(&self) -> bool {
        !self.pending.is_empty() || !self.in_flight.is_empty()
    }

    /// The most recent status report (position in machine coordinates when known).
    pub fn last_status(&self) -> Option<&StatusReport> {
        self.last_status.as_ref()
    }

    /// Forget the last status report, e.g. so that only a report received from now on counts.
    pub fn clear_last_status(&mut self) {
        self.last_status = None;
    }

    /// The counters.
    pub fn stats(&self) -> ClientStats {
        self.stats
    }
}

/// Write everything the client has queued to `tx`, realtime bytes first, then flush.
///
/// Each chunk is written whole; a line is at most [`RX_BUFFER`] bytes (about 11 ms at 115200
/// baud), which bounds how long a realtime byte queued meanwhile waits.
pub async fn flush_transmit<W: Write>(client: &mut Client, tx: &mut W) -> Result<(), W::Error> {
    let mut wrote = false;
    while let Some(chunk) = client.poll_transmit() {
        tx.write_all(chunk.bytes()).await?;
        wrote = true;
    }
    if wrote {
        tx.flush().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: Instant = Instant::ZERO;

    #[track_caller]
    fn drain(c: &mut Client) -> std::vec::Vec<u8> {
        let mut out = std::vec::Vec::new();
        while let Some(t) = c.poll_transmit() {
            out.extend_from_slice(t.bytes());
        }
        out
    }

    fn events(c: &mut Client) -> std::vec::Vec<ClientEvent> {
        core::iter::from_fn(|| c.poll_event()).collect()
    }

    #[test]
    fn responses_and_push_messages_are_told_apart() {
        assert_eq!(parse_line(b"ok\r\n"), Ok(Line::Ok));
        assert_eq!(parse_line(b"error:22"), Ok(Line::Error(22)));
        assert_eq!(parse_line(b"ALARM:3"), Ok(Line::Alarm(3)));
        assert_eq!(
            parse_line(b"[MSG:INFO: Caution: Unlocked]"),
            Ok(Line::Message("INFO: Caution: Unlocked"))
        );
        assert_eq!(
            parse_line(b"[GC:G0 G54 G17 G21 G90 G94 M5 M9 T0 F0 S0]"),
            Ok(Line::Gcode("G0 G54 G17 G21 G90 G94 M5 M9 T0 F0 S0"))
        );
        assert!(matches!(
            parse_line(b"Grbl 3.9 [FluidNC v3.9.9 (noradio) '$' for help]"),
            Ok(Line::Banner(_))
        ));
        assert_eq!(parse_line(b"$10=1"), Ok(Line::Setting("$10=1")));
        assert_eq!(parse_line(b"error:x"), Err(LineError::BadCode));
        assert_eq!(
            parse_line(b"[MSG:oops"),
            Err(LineError::UnterminatedBracket)
        );
    }

    #[test]
    fn status_report_parses_state_position_and_feed() {
        let r = StatusReport::parse("<Run|MPos:1.500,0.000,-2.250,3.000|FS:200,0|WCO:0,0,0,0>")
            .unwrap();
        assert_eq!(r.state, MachineState::Run);
        assert_eq!(r.position, [1.5, 0.0, -2.25, 3.0]);
        assert_eq!(r.axes, 4);
        assert_eq!(r.feed_mm_min, Some(200.0));
        assert_eq!(r.wco, Some([0.0; 4]));
        for (text, state) in [
            ("Idle", MachineState::Idle),
            ("Hold:0", MachineState::Hold(0)),
            ("Hold:1", MachineState::Hold(1)),
            ("Jog", MachineState::Jog),
            ("Alarm", MachineState::Alarm),
            ("Door:2", MachineState::Door(2)),
            ("Check", MachineState::Check),
            ("Home", MachineState::Home),
            ("Sleep", MachineState::Sleep),
        ] {
            let line = std::format!("<{text}|MPos:0.000,0.000,0.000|FS:0,0>");
            assert_eq!(StatusReport::parse(&line).unwrap().state, state, "{line}");
        }
    }

    #[test]
    fn status_report_rejects_malformed_fields() {
        assert_eq!(
            StatusReport::parse("<Idle|FS:0,0>"),
            Err(StatusError::MissingPosition)
        );
        assert_eq!(
            StatusReport::parse("<Walk|MPos:0,0,0>"),
            Err(StatusError::BadState)
        );
        assert_eq!(
            StatusReport::parse("<Idle|MPos:0,nan,0>"),
            Err(StatusError::BadNumber)
        );
        assert_eq!(
            StatusReport::parse("<Idle|MPos:0,0,0"),
            Err(StatusError::NotFramed)
        );
        assert_eq!(
            StatusReport::parse("<Run:1|MPos:0,0,0>"),
            Err(StatusError::BadState)
        );
    }

    #[test]
    fn work_position_is_converted_with_the_last_offset() {
        let mut c = Client::default();
        c.handle_bytes(b"<Idle|WPos:1.000,2.000,0,0|FS:0,0|WCO:10.000,0,0,1>\n", T0);
        c.handle_bytes(b"<Idle|WPos:2.000,2.000,0,0|FS:0,0>\n", T0);
        let st = c.last_status().unwrap();
        assert_eq!(st.position, [12.0, 2.0, 0.0, 1.0]);
        assert_eq!(st.position_kind, PositionKind::Machine);
    }

    #[test]
    fn crlf_from_the_controller_gives_one_response_per_line() {
        let mut c = Client::default();
        let a = c.send_line("G90").unwrap();
        let b = c.send_line("G91").unwrap();
        let _ = drain(&mut c);
        c.handle_bytes(b"ok\r\nok\r\n", T0);
        assert_eq!(events(&mut c), [ClientEvent::Ok(a), ClientEvent::Ok(b)]);
        assert_eq!(c.stats().unexpected_responses, 0);
    }

    #[test]
    fn lines_go_out_with_lf_only() {
        let mut c = Client::default();
        c.send_line("G91 G1 X10 F100").unwrap();
        assert_eq!(drain(&mut c), b"G91 G1 X10 F100\n");
    }

    #[test]
    fn character_counting_keeps_unanswered_bytes_below_128() {
        let mut c = Client::default();
        let line = "G1 X1.000 Y1.000 Z1.000 A1.000 F100.000"; // 39 + LF = 40 bytes
        let tags: std::vec::Vec<_> = (0..4).map(|_| c.send_line(line).unwrap()).collect();
        let out = drain(&mut c);
        assert_eq!(
            out.len(),
            120,
            "three lines fit, the fourth would reach 160"
        );
        assert_eq!(c.in_flight_bytes(), 120);
        c.handle_bytes(b"ok\n", T0);
        assert_eq!(events(&mut c), [ClientEvent::Ok(tags[0])]);
        assert_eq!(drain(&mut c).len(), 40);
        assert!(c.in_flight_bytes() < RX_BUFFER);
    }

    #[test]
    fn push_messages_do_not_consume_a_response() {
        let mut c = Client::default();
        let tag = c.send_line("G1 X1 F10").unwrap();
        let _ = drain(&mut c);
        c.handle_bytes(
            b"<Run|MPos:0.5,0,0,0|FS:10,0>\n[MSG:INFO: hi]\nALARM:1\n[GC:G91]\nerror:9\n",
            T0,
        );
        let ev = events(&mut c);
        assert!(matches!(ev[0], ClientEvent::Status(_)));
        assert_eq!(ev[1], ClientEvent::Alarm(1));
        assert_eq!(ev[2], ClientEvent::Error { tag, code: 9 });
        assert_eq!(c.in_flight_bytes(), 0);
    }

    #[test]
    fn realtime_bytes_jump_the_line_queue_and_are_not_counted() {
        let mut c = Client::default();
        c.send_line("G1 X1 F10").unwrap();
        c.send_realtime(Realtime::StatusQuery);
        c.send_realtime(Realtime::StatusQuery);
        assert_eq!(drain(&mut c), b"?G1 X1 F10\n");
        assert_eq!(c.in_flight_bytes(), 10);
    }

    #[test]
    fn feed_hold_now_goes_first_and_drops_unsent_lines() {
        let mut c = Client::default();
        c.send_realtime(Realtime::StatusQuery);
        c.send_realtime(Realtime::CycleStart);
        let tag = c.send_line("G1 X1 F10").unwrap();
        c.feed_hold_now();
        assert_eq!(drain(&mut c), b"!?");
        assert_eq!(events(&mut c), [ClientEvent::Dropped(tag)]);
    }

    #[test]
    fn lines_after_a_soft_reset_wait_for_the_banner_and_ignore_stale_oks() {
        let mut c = Client::default();
        let old = c.send_line("G1 X1 F10").unwrap();
        let _ = drain(&mut c);
        c.soft_reset(T0);
        let unlock = c.send_line("$X").unwrap();
        assert_eq!(drain(&mut c), [0x18]);
        assert_eq!(events(&mut c), [ClientEvent::Dropped(old)]);
        c.handle_bytes(b"ok\n", T0); // the old line's answer, late
        assert!(events(&mut c).is_empty());
        c.handle_bytes(b"\nGrbl 3.9 [FluidNC v3.9.9 (noradio) '$' for help]\n", T0);
        assert_eq!(events(&mut c), [ClientEvent::Reset]);
        assert_eq!(drain(&mut c), b"$X\n");
        c.handle_bytes(b"[MSG:INFO: Caution: Unlocked]\nok\n", T0);
        assert_eq!(events(&mut c), [ClientEvent::Ok(unlock)]);
    }

    #[test]
    fn a_missing_banner_stops_holding_lines_at_the_reset_timeout() {
        let mut c = Client::default();
        c.soft_reset(T0);
        c.send_line("$X").unwrap();
        assert_eq!(drain(&mut c), [0x18]);
        let deadline = c.poll_timeout().unwrap();
        c.handle_timeout(deadline);
        assert_eq!(drain(&mut c), b"$X\n");
    }

    #[test]
    fn send_line_refuses_what_the_controller_would_misread() {
        let mut c = Client::default();
        assert_eq!(c.send_line("G1 X1\nG1"), Err(SendError::InvalidByte));
        assert_eq!(c.send_line("G1 X1 ! "), Err(SendError::InvalidByte));
        assert_eq!(
            c.send_line(core::str::from_utf8(&[b'G'; MAX_LINE + 1]).unwrap()),
            Err(SendError::TooLong)
        );
        for _ in 0..PENDING_LINES {
            c.send_line("G4 P0").unwrap();
        }
        assert_eq!(c.send_line("G4 P0"), Err(SendError::QueueFull));
    }

    #[test]
    fn overlong_received_lines_are_discarded_and_counted() {
        let mut c = Client::default();
        let tag = c.send_line("$X").unwrap();
        let _ = drain(&mut c);
        let junk = [b'x'; MAX_RX_LINE + 10];
        c.handle_bytes(&junk, T0);
        c.handle_bytes(b"\nok\n", T0);
        assert_eq!(c.stats().overlong_lines, 1);
        assert_eq!(events(&mut c), [ClientEvent::Ok(tag)]);
    }

    proptest! {
        #[test]
        fn parse_line_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_line(&bytes);
        }

        #[test]
        fn status_parser_rejects_garbage_without_panicking(
            s in "<[A-Za-z:0-9]{0,8}(\\|[A-Za-z]{0,4}:[-0-9.,a-z]{0,30}){0,4}>?"
        ) {
            let _ = StatusReport::parse(&s);
        }

        #[test]
        fn status_parser_rejects_arbitrary_text_without_panicking(s in any::<std::string::String>()) {
            let framed = std::format!("<{s}>");
            prop_assert!(StatusReport::parse(&s).is_err() || s.starts_with('<'));
            let _ = StatusReport::parse(&framed);
        }

        #[test]
        fn client_survives_arbitrary_bytes_and_keeps_the_count_bounded(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..20),
            sends in 0usize..12,
        ) {
            let mut c = Client::default();
            for _ in 0..sends {
                let _ = c.send_line("G91 G1 X1.000 F100");
            }
            for chunk in &chunks {
                let _ = drain(&mut c);
                c.handle_bytes(chunk, T0);
                let _ = events(&mut c);
                prop_assert!(c.in_flight_bytes() < RX_BUFFER);
            }
        }
    }
}
