//! The option-3 serial link: the pump MCU (no WiFi) and the WiFi MCU joined by a UART.
//!
//! Commands ([`MotionCommand`]) travel from the WiFi MCU to the pump MCU; events
//! ([`PumpEvent`]) and snapshots ([`MotionSnapshot`]) travel back, as [`PumpToHost`]. Each
//! message is one frame payload, encoded with `postcard` ([`encode`], [`decode`]).
//! [`LinkEndpoint`] is the sans-IO protocol; [`LinkTask`] runs one over a UART between a
//! [`LinkSource`] and a [`LinkSink`] (on the pump MCU: [`PumpSource`] and the motion task's
//! command queue; on the WiFi MCU: a command queue and a `PumpToHost` queue).
//!
//! # Frames
//! ```text
//! decoded frame:  kind:u8  session:u16le  seq:u8  ack:u8  payload[0..=MAX_PAYLOAD]  crc:u16le
//! on the wire:    COBS(decoded frame) 0x00
//! ```
//! * `kind` 1 = DATA (carries a payload), 2 = ACK (no payload).
//! * `session`: the sender's session id, fixed per boot (the platform supplies a boot counter
//!   or a random value). A frame with a new session id tells the receiver that its peer
//!   restarted (see below).
//! * `seq`: the DATA frame's sequence number (mod 256); 0 in an ACK.
//! * `ack`: cumulative acknowledgement, carried by *every* frame: the next sequence number the
//!   sender expects from its peer. DATA frames thereby piggyback acknowledgements.
//! * `crc`: CRC-16/IBM-3740 (CCITT-FALSE, from the `crc` crate) over everything before it.
//!
//! **Why COBS, written by hand.** A UART has no framing of its own and can drop or corrupt
//! bytes; COBS turns the frame into bytes without 0x00 so that 0x00 marks every frame end. A
//! receiver that lost sync (a dropped or corrupted byte) is back in step at the next 0x00,
//! whatever the payload holds. Its overhead is fixed (1 byte per 254, +1 delimiter), where SLIP
//! escaping can double a frame in the worst case, which matters for the bounded buffers here.
//! The encoder and the decoder are a few lines each and must run byte by byte into bounded
//! buffers with an error (never a panic) for any input, so they are written here rather than
//! pulled in as a dependency; postcard's COBS helpers only cover whole postcard messages.
//!
//! # Delivery
//! Go-back-N with a window of [`WINDOW`] frames. The receiver accepts only the next DATA frame
//! in sequence and acknowledges (cumulatively) every frame it receives, so a duplicate is
//! dropped and re-acknowledged, and an out-of-order frame (one was lost before it) is dropped.
//! The sender keeps un-acknowledged payloads and, when the oldest is not acknowledged within
//! [`LinkConfig::retransmit_timeout`], sends the whole window again. After
//! [`LinkConfig::max_retries`] such rounds without progress the link is declared down
//! ([`LinkEvent::Down`]); the payloads are *kept* and retried every
//! [`LinkConfig::probe_interval`] until the peer answers ([`LinkEvent::Up`]). Dropping them
//! could lose a command, and sending them again as new frames could run one twice; keeping
//! them preserves exactly-once, in-order delivery across any finite outage. While the window
//! is full, [`LinkEndpoint::send`] refuses with [`LinkError::WindowFull`] (back-pressure to the
//! caller). A receiver whose delivery queue is full does not accept (or acknowledge) the frame,
//! so the sender retries later: flow control without loss.
//!
//! **Restarts.** When a frame arrives with a session id different from the peer's last one, the
//! peer restarted: the receiver starts expecting sequence number 0 again, and the sender
//! renumbers its un-acknowledged payloads from 0 and sends them again. Payloads the old peer
//! had received but not acknowledged before it restarted may then arrive twice; a restart
//! cannot promise exactly-once without storage, and this is reported as
//! [`LinkEvent::PeerRestarted`].
use core::fmt;

use embassy_futures::select::{Either, Either3, select, select3};
use embassy_sync::blocking_mutex::raw::RawMutex;
use embassy_sync::signal::Signal;
use embassy_sync::watch::Receiver;
use embedded_io_async::{Read, Write};
use heapless::{Deque, Vec};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::dispense::{
    EVENT_QUEUE as EVENT_QUEUE_LEN, MotionChannels, MotionSnapshot, PumpEvent, SNAPSHOT_RECEIVERS,
};
use crate::ports::Clock;
use crate::queue::Queue;
use crate::time::{Duration, Instant};

pub use super::dispense::MotionCommand;

/// Largest payload of one frame.
pub const MAX_PAYLOAD: usize = 96;
/// Header bytes before the payload: kind, session (2), seq, ack.
const HEADER: usize = 5;
/// CRC bytes after the payload.
const CRC_LEN: usize = 2;
/// Largest decoded frame.
pub const MAX_FRAME: usize = HEADER + MAX_PAYLOAD + CRC_LEN;
/// Largest frame on the wire: COBS adds one byte per 254 plus one, and the 0x00 delimiter.
pub const MAX_WIRE: usize = MAX_FRAME + MAX_FRAME / 254 + 2;
/// Frames in flight (sent, not yet acknowledged). Must stay below 128 for mod-256 sequence
/// numbers.
pub const WINDOW: usize = 4;
/// Received payloads waiting for [`LinkEndpoint::poll_received`]. Full policy: further frames
/// are not accepted (nor acknowledged), so the peer retransmits them later.
pub const RX_QUEUE: usize = 8;
/// Link events waiting for [`LinkEndpoint::poll_event`]. Full policy: the oldest is dropped.
const EVENT_QUEUE: usize = 4;

const KIND_DATA: u8 = 1;
const KIND_ACK: u8 = 2;

const CRC: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_IBM_3740);

/// Errors of the frame codec and the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum LinkError {
    /// Fewer bytes than a header and a CRC.
    Truncated,
    /// The CRC does not match.
    BadCrc,
    /// Unknown frame kind, or an ACK with a payload.
    BadKind,
    /// A COBS code byte points past the end, or the input holds a 0x00.
    BadCobs,
    /// The output buffer is too small (or the payload exceeds [`MAX_PAYLOAD`]).
    TooLarge,
    /// The send window is full; try again after acknowledgements.
    WindowFull,
    /// A payload did not encode or decode as the expected message.
    Payload,
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LinkError::Truncated => "frame truncated",
            LinkError::BadCrc => "frame CRC mismatch",
            LinkError::BadKind => "bad frame kind",
            LinkError::BadCobs => "bad COBS encoding",
            LinkError::TooLarge => "frame too large",
            LinkError::WindowFull => "send window full",
            LinkError::Payload => "bad payload",
        })
    }
}

impl core::error::Error for LinkError {}

// ---------------------------------------------------------------------------------------------
// COBS

/// COBS-encode `src` into `dst` (no delimiter). Returns the encoded length.
pub fn cobs_encode(src: &[u8], dst: &mut [u8]) -> Result<usize, LinkError> {
    let mut code_at = 0usize;
    let mut out = 1usize;
    let mut code: u8 = 1;
    if dst.is_empty() {
        return Err(LinkError::TooLarge);
    }
    for &b in src {
        if b == 0 {
            *dst.get_mut(code_at).ok_or(LinkError::TooLarge)? = code;
            code_at = out;
            out += 1;
            code = 1;
            if out > dst.len() {
                return Err(LinkError::TooLarge);
            }
        } else {
            *dst.get_mut(out).ok_or(LinkError::TooLarge)? = b;
            out += 1;
            code += 1;
            if code == 0xFF {
                *dst.get_mut(code_at).ok_or(LinkError::TooLarge)? = code;
                code_at = out;
                out += 1;
                code = 1;
                if out > dst.len() {
                    return Err(LinkError::TooLarge);
                }
            }
        }
    }
    *dst.get_mut(code_at).ok_or(LinkError::TooLarge)? = code;
    Ok(out)
}

/// Decode a COBS block `src` (without delimiter) into `dst`. Returns the decoded length.
pub fn cobs_decode(src: &[u8], dst: &mut [u8]) -> Result<usize, LinkError> {
    let mut i = 0usize;
    let mut out = 0usize;
    while i < src.len() {
        let code = src[i];
        if code == 0 {
            return Err(LinkError::BadCobs);
        }
        let run = code as usize - 1;
        let end = i + 1 + run;
        let block = src.get(i + 1..end).ok_or(LinkError::BadCobs)?;
        if block.contains(&0) {
            return Err(LinkError::BadCobs);
        }
        dst.get_mut(out..out + run)
            .ok_or(LinkError::TooLarge)?
            .copy_from_slice(block);
        out += run;
        i = end;
        if code != 0xFF && i < src.len() {
            *dst.get_mut(out).ok_or(LinkError::TooLarge)? = 0;
            out += 1;
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Frame view and repr

/// Frame kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FrameKind {
    /// Carries a payload.
    Data,
    /// Acknowledgement only.
    Ack,
}

/// A checked view of a decoded frame (CRC, length and kind verified).
#[derive(Debug, Clone, Copy)]
pub struct Frame<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Check `buf` and wrap it.
    pub fn new_checked(buf: T) -> Result<Self, LinkError> {
        let b = buf.as_ref();
        if b.len() < HEADER + CRC_LEN {
            return Err(LinkError::Truncated);
        }
        if b.len() > MAX_FRAME {
            return Err(LinkError::TooLarge);
        }
        let (body, crc) = b.split_at(b.len() - CRC_LEN);
        if CRC.checksum(body) != u16::from_le_bytes([crc[0], crc[1]]) {
            return Err(LinkError::BadCrc);
        }
        match (b[0], body.len() - HEADER) {
            (KIND_DATA, _) | (KIND_ACK, 0) => Ok(Frame { buf }),
            _ => Err(LinkError::BadKind),
        }
    }
    fn b(&self) -> &[u8] {
        self.buf.as_ref()
    }
    /// The kind.
    pub fn kind(&self) -> FrameKind {
        if self.b()[0] == KIND_DATA {
            FrameKind::Data
        } else {
            FrameKind::Ack
        }
    }
    /// The sender's session id.
    pub fn session(&self) -> u16 {
        u16::from_le_bytes([self.b()[1], self.b()[2]])
    }
    /// Sequence number (DATA).
    pub fn seq(&self) -> u8 {
        self.b()[3]
    }
    /// Cumulative acknowledgement: the next sequence number the sender expects.
    pub fn ack(&self) -> u8 {
        self.b()[4]
    }
    /// The payload (empty for an ACK).
    pub fn payload(&self) -> &[u8] {
        let b = self.b();
        &b[HEADER..b.len() - CRC_LEN]
    }
}

/// A frame's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRepr<'a> {
    /// Kind.
    pub kind: FrameKind,
    /// Sender's session id.
    pub session: u16,
    /// Sequence number (0 for an ACK).
    pub seq: u8,
    /// Cumulative acknowledgement.
    pub ack: u8,
    /// Payload (empty for an ACK).
    pub payload: &'a [u8],
}

impl<'a> FrameRepr<'a> {
    /// Fields of a checked frame.
    pub fn parse<T: AsRef<[u8]>>(frame: &'a Frame<T>) -> FrameRepr<'a> {
        FrameRepr {
            kind: frame.kind(),
            session: frame.session(),
            seq: frame.seq(),
            ack: frame.ack(),
            payload: frame.payload(),
        }
    }

    /// Write the decoded frame (header, payload, CRC) into `buf`; returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, LinkError> {
        if self.payload.len() > MAX_PAYLOAD
            || (self.kind == FrameKind::Ack && !self.payload.is_empty())
        {
            return Err(LinkError::TooLarge);
        }
        let len = HEADER + self.payload.len() + CRC_LEN;
        let out = buf.get_mut(..len).ok_or(LinkError::TooLarge)?;
        let s = self.session.to_le_bytes();
        let kind = match self.kind {
            FrameKind::Data => KIND_DATA,
            FrameKind::Ack => KIND_ACK,
        };
        out[..HEADER].copy_from_slice(&[kind, s[0], s[1], self.seq, self.ack]);
        out[HEADER..len - CRC_LEN].copy_from_slice(self.payload);
        let crc = CRC.checksum(&out[..len - CRC_LEN]).to_le_bytes();
        out[len - CRC_LEN..].copy_from_slice(&crc);
        Ok(len)
    }

    /// The frame as wire bytes: COBS-encoded and 0x00-terminated.
    pub fn to_wire(&self) -> Result<Vec<u8, MAX_WIRE>, LinkError> {
        let mut frame = [0u8; MAX_FRAME];
        let n = self.emit(&mut frame)?;
        let mut wire = [0u8; MAX_WIRE];
        let m = cobs_encode(&frame[..n], &mut wire[..MAX_WIRE - 1])?;
        let mut v = Vec::new();
        v.extend_from_slice(&wire[..m])
            .map_err(|_| LinkError::TooLarge)?;
        v.push(0).map_err(|_| LinkError::TooLarge)?;
        Ok(v)
    }
}

/// Decode one wire block (COBS bytes without the delimiter) into a checked frame.
pub fn decode_wire(block: &[u8]) -> Result<Frame<Vec<u8, MAX_FRAME>>, LinkError> {
    let mut buf = [0u8; MAX_FRAME];
    let n = cobs_decode(block, &mut buf)?;
    let v = Vec::from_slice(&buf[..n]).map_err(|_| LinkError::TooLarge)?;
    Frame::new_checked(v)
}

// ---------------------------------------------------------------------------------------------
// Messages

/// What the pump MCU sends to the WiFi MCU.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum PumpToHost {
    /// A motion event.
    Event(PumpEvent),
    /// The latest snapshot.
    Snapshot(MotionSnapshot),
}

/// Encode a message into a payload.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8, MAX_PAYLOAD>, LinkError> {
    let mut buf = [0u8; MAX_PAYLOAD];
    let used = postcard::to_slice(msg, &mut buf).map_err(|_| LinkError::TooLarge)?;
    Vec::from_slice(used).map_err(|_| LinkError::TooLarge)
}

/// Decode a payload into a message.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, LinkError> {
    postcard::from_bytes(payload).map_err(|_| LinkError::Payload)
}

// ---------------------------------------------------------------------------------------------
// Endpoint

/// Timing and retry limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct LinkConfig {
    /// Time without progress before the window is sent again. At 115200 baud a full window of
    /// maximum frames takes ~40 ms to send.
    pub retransmit_timeout: Duration,
    /// Retransmission rounds without progress before the link is declared down.
    pub max_retries: u8,
    /// Interval of retransmissions while the link is down.
    pub probe_interval: Duration,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            retransmit_timeout: Duration::from_millis(100),
            max_retries: 8,
            probe_interval: Duration::from_millis(1_000),
        }
    }
}

/// Changes of the link's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum LinkEvent {
    /// The peer acknowledged again after the link was down.
    Up,
    /// [`LinkConfig::max_retries`] rounds passed without acknowledgement.
    Down,
    /// The peer's session id changed: it restarted.
    PeerRestarted,
}

/// Counters for telemetry. They wrap around.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct LinkStats {
    /// DATA frames sent for the first time.
    pub data_sent: u32,
    /// DATA frames sent again.
    pub retransmitted: u32,
    /// Payloads delivered to [`LinkEndpoint::poll_received`].
    pub delivered: u32,
    /// Frames that failed COBS, CRC or kind checks.
    pub bad_frames: u32,
    /// Wire blocks longer than [`MAX_WIRE`], discarded.
    pub overlong: u32,
    /// DATA frames dropped as duplicates or out of order.
    pub out_of_sequence: u32,
    /// DATA frames not accepted because the receive queue was full.
    pub rx_full: u32,
    /// Link events dropped because nobody polled them.
    pub events_dropped: u32,
}

#[derive(Debug, Clone)]
struct Unacked {
    seq: u8,
    payload: Vec<u8, MAX_PAYLOAD>,
    sent_before: bool,
}

/// One end of the framed serial link (sans-IO).
///
/// Call order: [`send`](Self::send) payloads and feed received bytes to
/// [`handle_bytes`](Self::handle_bytes); call [`handle_timeout`](Self::handle_timeout) when
/// [`poll_timeout`](Self::poll_timeout) passes; after each call drain
/// [`poll_transmit`](Self::poll_transmit) to the UART, then [`poll_received`](Self::poll_received)
/// and [`poll_event`](Self::poll_event).
#[derive(Debug)]
pub struct LinkEndpoint {
    cfg: LinkConfig,
    session: u16,
    peer_session: Option<u16>,
    // send side
    next_seq: u8,
    unacked: Deque<Unacked, WINDOW>,
    /// Index into `unacked` of the next frame to (re)transmit.
    to_send: usize,
    retransmit_at: Option<Instant>,
    retries: u8,
    up: bool,
    // receive side
    expected: u8,
    ack_pending: bool,
    block: Vec<u8, MAX_WIRE>,
    overflowed: bool,
    received: Deque<Vec<u8, MAX_PAYLOAD>, RX_QUEUE>,
    events: Deque<LinkEvent, EVENT_QUEUE>,
    stats: LinkStats,
}

impl LinkEndpoint {
    /// An endpoint whose frames carry `session` (a boot counter or random value: it must
    /// differ from the previous boot's).
    pub fn new(cfg: LinkConfig, session: u16) -> Self {
        LinkEndpoint {
            cfg,
            session,
            peer_session: None,
            next_seq: 0,
            unacked: Deque::new(),
            to_send: 0,
            retransmit_at: None,
            retries: 0,
            up: true,
            expected: 0,
            ack_pending: false,
            block: Vec::new(),
            overflowed: false,
            received: Deque::new(),
            events: Deque::new(),
            stats: LinkStats::default(),
        }
    }

    /// Queue `payload` for exactly-once, in-order delivery to the peer.
    pub fn send(&mut self, payload: &[u8], now: Instant) -> Result<(), LinkError> {
        let payload = Vec::from_slice(payload).map_err(|_| LinkError::TooLarge)?;
        self.unacked
            .push_back(Unacked {
                seq: self.next_seq,
                payload,
                sent_before: false,
            })
            .map_err(|_| LinkError::WindowFull)?;
        self.next_seq = self.next_seq.wrapping_add(1);
        if self.retransmit_at.is_none() {
            self.retransmit_at = Some(now + self.cfg.retransmit_timeout);
        }
        Ok(())
    }

    /// Encode and [`send`](Self::send) a message.
    pub fn send_message<T: Serialize>(&mut self, msg: &T, now: Instant) -> Result<(), LinkError> {
        let p = encode(msg)?;
        self.send(&p, now)
    }

    /// Whether [`send`](Self::send) would accept a payload now.
    pub fn can_send(&self) -> bool {
        !self.unacked.is_full()
    }

    /// Whether the peer acknowledges (false after [`LinkEvent::Down`] until [`LinkEvent::Up`]).
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Payloads sent and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.unacked.len()
    }

    /// The counters.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Feed bytes received from the UART.
    pub fn handle_bytes(&mut self, bytes: &[u8], now: Instant) {
        for &b in bytes {
            if b != 0 {
                if !self.overflowed && self.block.push(b).is_err() {
                    self.overflowed = true;
                }
                continue;
            }
            if self.overflowed {
                self.overflowed = false;
                self.stats.overlong = self.stats.overlong.wrapping_add(1);
            } else if !self.block.is_empty() {
                let block = core::mem::take(&mut self.block);
                match decode_wire(&block) {
                    Ok(frame) => self.handle_frame(&FrameRepr::parse(&frame), now),
                    Err(_) => self.stats.bad_frames = self.stats.bad_frames.wrapping_add(1),
                }
            }
            self.block.clear();
        }
    }

    fn handle_frame(&mut self, f: &FrameRepr<'_>, now: Instant) {
        match self.peer_session {
            Some(s) if s == f.session => {}
            Some(_) => {
                warn!("link: peer restarted");
                self.peer_session = Some(f.session);
                self.peer_restarted(now);
            }
            None => self.peer_session = Some(f.session),
        }
        self.handle_ack(f.ack, now);
        if f.kind == FrameKind::Data {
            self.ack_pending = true;
            if f.seq != self.expected {
                self.stats.out_of_sequence = self.stats.out_of_sequence.wrapping_add(1);
            } else if let Ok(p) = Vec::from_slice(f.payload) {
                if self.received.push_back(p).is_ok() {
                    self.expected = self.expected.wrapping_add(1);
                    self.stats.delivered = self.stats.delivered.wrapping_add(1);
                } else {
                    self.stats.rx_full = self.stats.rx_full.wrapping_add(1);
                }
            }
        }
    }

    fn peer_restarted(&mut self, now: Instant) {
        self.expected = 0;
        for (i, u) in self.unacked.iter_mut().enumerate() {
            u.seq = i as u8;
        }
        self.next_seq = self.unacked.len() as u8;
        self.to_send = 0;
        self.retries = 0;
        if !self.unacked.is_empty() {
            self.retransmit_at = Some(now + self.cfg.retransmit_timeout);
        }
        self.push_event(LinkEvent::PeerRestarted);
    }

    fn handle_ack(&mut self, ack: u8, now: Instant) {
        let Some(oldest) = self.unacked.front().map(|u| u.seq) else {
            return;
        };
        // How many of our frames the peer has now: must lie within what we sent.
        let n = ack.wrapping_sub(oldest) as usize;
        if n == 0 || n > self.unacked.len() {
            return;
        }
        for _ in 0..n {
            let _ = self.unacked.pop_front();
        }
        self.to_send = self.to_send.saturating_sub(n);
        self.retries = 0;
        self.retransmit_at = if self.unacked.is_empty() {
            None
        } else {
            Some(now + self.cfg.retransmit_timeout)
        };
        if !self.up {
            info!("link: up");
            self.up = true;
            self.push_event(LinkEvent::Up);
        }
    }

    /// The next frame for the UART: pending DATA frames (each carrying the current ack), else an
    /// ACK if one is owed.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8, MAX_WIRE>> {
        let ack = self.expected;
        if let Some(u) = self.unacked.get_mut(self.to_send) {
            let repr = FrameRepr {
                kind: FrameKind::Data,
                session: self.session,
                seq: u.seq,
                ack,
                payload: &u.payload,
            };
            if u.sent_before {
                self.stats.retransmitted = self.stats.retransmitted.wrapping_add(1);
            } else {
                self.stats.data_sent = self.stats.data_sent.wrapping_add(1);
            }
            u.sent_before = true;
            self.to_send += 1;
            self.ack_pending = false;
            // Cannot fail: payloads are bounded by MAX_PAYLOAD on the way in.
            return repr.to_wire().ok();
        }
        if self.ack_pending {
            self.ack_pending = false;
            return FrameRepr {
                kind: FrameKind::Ack,
                session: self.session,
                seq: 0,
                ack,
                payload: &[],
            }
            .to_wire()
            .ok();
        }
        None
    }

    /// The next payload received in order.
    #[must_use]
    pub fn poll_received(&mut self) -> Option<Vec<u8, MAX_PAYLOAD>> {
        self.received.pop_front()
    }

    /// The next link event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<LinkEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) wants to be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.retransmit_at
    }

    /// Handle the passage of time: retransmit the window when the oldest frame is overdue.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(at) = self.retransmit_at else { return };
        if now < at || self.unacked.is_empty() {
            return;
        }
        self.retries = self.retries.saturating_add(1);
        if self.up && self.retries > self.cfg.max_retries {
            warn!("link: down after {} retries", self.cfg.max_retries);
            self.up = false;
            self.push_event(LinkEvent::Down);
        }
        self.to_send = 0;
        self.retransmit_at = Some(
            now + if self.up {
                self.cfg.retransmit_timeout
            } else {
                self.cfg.probe_interval
            },
        );
    }

    fn push_event(&mut self, ev: LinkEvent) {
        if let Err(ev) = self.events.push_back(ev) {
            let _ = self.events.pop_front();
            let _ = self.events.push_back(ev);
            self.stats.events_dropped = self.stats.events_dropped.wrapping_add(1);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The runner

/// Where a [`LinkTask`] gets the messages it sends.
pub trait LinkSource {
    /// The message type.
    type Item: Serialize;
    /// Wait for the next message. MUST be cancel-safe: the task drops this future when another
    /// input wins, and no message may be lost then.
    fn next(&mut self) -> impl core::future::Future<Output = Self::Item>;
}

/// Where a [`LinkTask`] puts the messages it receives.
pub trait LinkSink {
    /// Whether [`put`](Self::put) would accept a message now. While it says no, received
    /// payloads stay in the endpoint, and once its queue is full the peer's frames are not
    /// acknowledged, so the peer retries later (flow control, nothing lost).
    fn has_room(&self) -> bool;
    /// Decode `payload` and deliver it.
    fn put(&mut self, payload: &[u8]) -> Result<(), LinkError>;
}

/// A [`LinkSource`] reading a [`Queue`].
pub struct QueueSource<'a, M: RawMutex, T, const N: usize>(pub &'a Queue<M, T, N>);

impl<M: RawMutex, T: Serialize, const N: usize> LinkSource for QueueSource<'_, M, T, N> {
    type Item = T;
    async fn next(&mut self) -> T {
        self.0.receive().await
    }
}

/// A [`LinkSink`] decoding payloads as `T` into a [`Queue`].
pub struct QueueSink<'a, M: RawMutex, T, const N: usize>(pub &'a Queue<M, T, N>);

impl<M: RawMutex, T: DeserializeOwned, const N: usize> LinkSink for QueueSink<'_, M, T, N> {
    fn has_room(&self) -> bool {
        self.0.len() < self.0.capacity()
    }
    fn put(&mut self, payload: &[u8]) -> Result<(), LinkError> {
        let msg = decode(payload)?;
        // has_room was checked and this task is the queue's only sender.
        let _ = self.0.offer(msg);
        Ok(())
    }
}

/// The pump MCU's [`LinkSource`]: motion events first, then snapshots when they change.
pub struct PumpSource<'a, M: RawMutex> {
    events: &'a Queue<M, PumpEvent, EVENT_QUEUE_LEN>,
    snapshot: Receiver<'a, M, MotionSnapshot, SNAPSHOT_RECEIVERS>,
}

impl<'a, M: RawMutex> PumpSource<'a, M> {
    /// A source over the motion task's channels, or `None` when no snapshot receiver is free.
    pub fn new(channels: &'a MotionChannels<M>) -> Option<Self> {
        Some(PumpSource {
            events: &channels.events,
            snapshot: channels.snapshot.receiver()?,
        })
    }
}

impl<M: RawMutex> LinkSource for PumpSource<'_, M> {
    type Item = PumpToHost;
    async fn next(&mut self) -> PumpToHost {
        match select(self.events.receive(), self.snapshot.changed()).await {
            Either::First(ev) => PumpToHost::Event(ev),
            Either::Second(snap) => PumpToHost::Snapshot(snap),
        }
    }
}

/// Runs a [`LinkEndpoint`] over a UART (`rx`, `tx` halves): messages from `source` are encoded
/// and sent, received payloads go to `sink`, link events to `state`.
///
/// On the pump MCU: `PumpSource` → link → `QueueSink<MotionCommand>` into
/// [`MotionChannels::commands`]. On the WiFi MCU: `QueueSource<MotionCommand>` → link →
/// `QueueSink<PumpToHost>`. `rx.read` MUST be cancel-safe (see
/// [`MotionTask`](super::dispense::MotionTask)).
pub struct LinkTask<'a, M: RawMutex, R, T, C, S, K> {
    endpoint: LinkEndpoint,
    rx: R,
    tx: T,
    clock: C,
    source: S,
    sink: K,
    state: &'a Signal<M, LinkEvent>,
    /// Messages that did not encode or decode (counted, never silent).
    bad_messages: u32,
}

impl<'a, M, R, T, C, S, K> LinkTask<'a, M, R, T, C, S, K>
where
    M: RawMutex,
    R: Read,
    T: Write,
    C: Clock,
    S: LinkSource,
    K: LinkSink,
{
    /// A task around `endpoint`.
    pub fn new(
        endpoint: LinkEndpoint,
        rx: R,
        tx: T,
        clock: C,
        source: S,
        sink: K,
        state: &'a Signal<M, LinkEvent>,
    ) -> Self {
        LinkTask {
            endpoint,
            rx,
            tx,
            clock,
            source,
            sink,
            state,
            bad_messages: 0,
        }
    }

    /// The endpoint (stats).
    pub fn endpoint(&self) -> &LinkEndpoint {
        &self.endpoint
    }

    /// Messages dropped because they did not encode or decode.
    pub fn bad_messages(&self) -> u32 {
        self.bad_messages
    }

    /// Run forever.
    pub async fn run(&mut self) -> ! {
        let mut buf = [0u8; 64];
        loop {
            while self.sink.has_room() {
                let Some(p) = self.endpoint.poll_received() else {
                    break;
                };
                if self.sink.put(&p).is_err() {
                    warn!("link: payload did not decode");
                    self.bad_messages = self.bad_messages.wrapping_add(1);
                }
            }
            while let Some(ev) = self.endpoint.poll_event() {
                self.state.signal(ev);
            }
            let mut wrote = false;
            while let Some(w) = self.endpoint.poll_transmit() {
                if self.tx.write_all(&w).await.is_err() {
                    warn!("link: uart write failed");
                }
                wrote = true;
            }
            if wrote && self.tx.flush().await.is_err() {
                warn!("link: uart flush failed");
            }
            let deadline = self.endpoint.poll_timeout().unwrap_or(Instant::MAX);
            let can_send = self.endpoint.can_send();
            let source = &mut self.source;
            let next = async move {
                if can_send {
                    source.next().await
                } else {
                    core::future::pending().await
                }
            };
            let input = select3(
                self.rx.read(&mut buf),
                next,
                self.clock.sleep_until(deadline),
            )
            .await;
            let now = self.clock.now();
            match input {
                Either3::First(Ok(n)) if n > 0 => {
                    self.endpoint.handle_bytes(buf.get(..n).unwrap_or(&[]), now)
                }
                Either3::First(_) => {
                    warn!("link: uart read failed");
                    self.clock.sleep(Duration::from_millis(1)).await;
                }
                Either3::Second(msg) => {
                    if self.endpoint.send_message(&msg, now).is_err() {
                        warn!("link: message did not encode");
                        self.bad_messages = self.bad_messages.wrapping_add(1);
                    }
                }
                Either3::Third(()) => self.endpoint.handle_timeout(now),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pump::{DispenseRequest, Pump};
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngSeed};

    fn ms(n: u64) -> Instant {
        Instant::from_millis(n)
    }

    #[test]
    fn cobs_round_trips_and_never_emits_zero() {
        let cases: [&[u8]; 5] = [&[], &[0], &[0, 0], &[1, 2, 0, 3], &[0x11; 300]];
        for src in cases {
            let mut enc = [0u8; 400];
            let n = cobs_encode(src, &mut enc).unwrap();
            assert!(!enc[..n].contains(&0));
            let mut dec = [0u8; 400];
            let m = cobs_decode(&enc[..n], &mut dec).unwrap();
            assert_eq!(&dec[..m], src);
        }
    }

    #[test]
    fn a_frame_round_trips_through_the_wire_format() {
        let repr = FrameRepr {
            kind: FrameKind::Data,
            session: 0x1234,
            seq: 7,
            ack: 3,
            payload: &[0, 1, 0, 2],
        };
        let wire = repr.to_wire().unwrap();
        assert_eq!(wire.last(), Some(&0));
        let frame = decode_wire(&wire[..wire.len() - 1]).unwrap();
        assert_eq!(FrameRepr::parse(&frame), repr);
    }

    #[test]
    fn a_corrupted_frame_is_rejected_by_its_crc() {
        let wire = FrameRepr {
            kind: FrameKind::Data,
            session: 1,
            seq: 0,
            ack: 0,
            payload: b"dose",
        }
        .to_wire()
        .unwrap();
        let mut bad = wire.clone();
        let i = bad.iter().position(|&b| b == b'd').unwrap();
        bad[i] ^= 0x10;
        assert_eq!(
            decode_wire(&bad[..bad.len() - 1]).err(),
            Some(LinkError::BadCrc)
        );
    }

    #[test]
    fn commands_and_events_fit_in_one_payload() {
        let cmd = MotionCommand::Dispense(
            Vec::from_slice(
                &[DispenseRequest {
                    pump: Pump::A,
                    volume_ml: 1.5,
                    flow_ml_min: 3.0,
                }; 4],
            )
            .unwrap(),
        );
        let p = encode(&cmd).unwrap();
        assert_eq!(decode::<MotionCommand>(&p), Ok(cmd));
        let snap = PumpToHost::Snapshot(MotionSnapshot::default());
        let p = encode(&snap).unwrap();
        assert_eq!(decode::<PumpToHost>(&p), Ok(snap));
        assert_eq!(
            decode::<MotionCommand>(&[0xFF, 0xFF]),
            Err(LinkError::Payload)
        );
    }

    /// Move every frame from `from` to `to` without faults.
    fn pump_frames(from: &mut LinkEndpoint, to: &mut LinkEndpoint, now: Instant) {
        while let Some(w) = from.poll_transmit() {
            to.handle_bytes(&w, now);
        }
    }

    #[test]
    fn a_duplicate_frame_is_delivered_once_and_acknowledged_again() {
        let mut a = LinkEndpoint::new(LinkConfig::default(), 1);
        let mut b = LinkEndpoint::new(LinkConfig::default(), 2);
        a.send(b"one", ms(0)).unwrap();
        let w = a.poll_transmit().unwrap();
        b.handle_bytes(&w, ms(1));
        b.handle_bytes(&w, ms(2));
        assert_eq!(b.poll_received().as_deref(), Some(&b"one"[..]));
        assert_eq!(b.poll_received(), None);
        assert_eq!(b.stats().out_of_sequence, 1);
        pump_frames(&mut b, &mut a, ms(3));
        assert_eq!(a.in_flight(), 0);
        assert_eq!(a.poll_timeout(), None);
    }

    #[test]
    fn a_lost_frame_is_retransmitted_after_the_timeout() {
        let cfg = LinkConfig::default();
        let mut a = LinkEndpoint::new(cfg, 1);
        let mut b = LinkEndpoint::new(cfg, 2);
        a.send(b"one", ms(0)).unwrap();
        let _lost = a.poll_transmit().unwrap();
        assert!(a.poll_transmit().is_none());
        let t = a.poll_timeout().unwrap();
        assert_eq!(t, ms(0) + cfg.retransmit_timeout);
        a.handle_timeout(t);
        pump_frames(&mut a, &mut b, t);
        assert_eq!(b.poll_received().as_deref(), Some(&b"one"[..]));
        assert_eq!(a.stats().retransmitted, 1);
    }

    #[test]
    fn the_window_bounds_what_is_in_flight() {
        let mut a = LinkEndpoint::new(LinkConfig::default(), 1);
        for i in 0..WINDOW {
            a.send(&[i as u8], ms(0)).unwrap();
        }
        assert_eq!(a.send(b"x", ms(0)), Err(LinkError::WindowFull));
        assert_eq!(
            a.send(&[0; MAX_PAYLOAD + 1], ms(0)),
            Err(LinkError::TooLarge)
        );
    }

    #[test]
    fn a_silent_peer_takes_the_link_down_and_an_answer_brings_it_up() {
        let cfg = LinkConfig::default();
        let mut a = LinkEndpoint::new(cfg, 1);
        let mut b = LinkEndpoint::new(cfg, 2);
        a.send(b"one", ms(0)).unwrap();
        let mut now = ms(0);
        let mut last = None;
        for _ in 0..=cfg.max_retries {
            now = a.poll_timeout().unwrap();
            a.handle_timeout(now);
            while let Some(w) = a.poll_transmit() {
                last = Some(w);
            }
        }
        assert_eq!(a.poll_event(), Some(LinkEvent::Down));
        assert!(!a.is_up());
        assert_eq!(a.poll_timeout(), Some(now + cfg.probe_interval));
        // The peer finally hears one retransmission and answers.
        b.handle_bytes(&last.unwrap(), now);
        pump_frames(&mut b, &mut a, now);
        assert_eq!(a.poll_event(), Some(LinkEvent::Up));
        assert_eq!(b.poll_received().as_deref(), Some(&b"one"[..]));
    }

    #[test]
    fn a_restarted_peer_is_resynchronised() {
        let cfg = LinkConfig::default();
        let mut a = LinkEndpoint::new(cfg, 1);
        let mut b = LinkEndpoint::new(cfg, 2);
        for i in 0..3u8 {
            a.send(&[i], ms(0)).unwrap();
            pump_frames(&mut a, &mut b, ms(0));
            pump_frames(&mut b, &mut a, ms(0));
        }
        while b.poll_received().is_some() {}
        // b loses power and comes back with a new session; a sends on.
        let mut b = LinkEndpoint::new(cfg, 3);
        b.send(b"hello", ms(10)).unwrap();
        pump_frames(&mut b, &mut a, ms(10));
        assert_eq!(a.poll_event(), Some(LinkEvent::PeerRestarted));
        a.send(b"after", ms(11)).unwrap();
        pump_frames(&mut a, &mut b, ms(11));
        assert_eq!(b.poll_received().as_deref(), Some(&b"after"[..]));
        assert_eq!(a.poll_received().as_deref(), Some(&b"hello"[..]));
    }

    /// What the lossy channel does to one frame.
    #[derive(Debug, Clone, Copy)]
    enum Fault {
        Pass,
        Drop,
        /// XOR the byte at (index mod len) with a non-zero value.
        Corrupt(usize, u8),
        /// Cut the frame short (its delimiter is lost too: it merges with the next frame).
        Truncate(usize),
    }

    fn fault() -> impl Strategy<Value = Fault> {
        prop_oneof![
            4 => Just(Fault::Pass),
            2 => Just(Fault::Drop),
            2 => (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Fault::Corrupt(i, x)),
            1 => any::<usize>().prop_map(Fault::Truncate),
        ]
    }

    /// Apply the next fault of `pattern` (or pass once it is used up) to a frame.
    fn channel(wire: &[u8], pattern: &[Fault], next: &mut usize) -> std::vec::Vec<u8> {
        let f = pattern.get(*next).copied().unwrap_or(Fault::Pass);
        *next += 1;
        let mut w = wire.to_vec();
        match f {
            Fault::Pass => w,
            Fault::Drop => std::vec::Vec::new(),
            Fault::Corrupt(i, x) => {
                let i = i % w.len();
                w[i] ^= x;
                w
            }
            Fault::Truncate(i) => {
                w.truncate(i % w.len());
                w
            }
        }
    }

    mod runner {
        use super::*;
        use crate::pump::dispense::AlarmKind;
        use crate::pump::estop::EstopTrigger;
        use crate::pump::test_support::{Pipe, PipeRx, PipeTx, TestClock};
        use crate::queue::FullPolicy;
        use core::cell::Cell;
        use embassy_futures::poll_once;
        use embassy_sync::blocking_mutex::raw::NoopRawMutex;

        #[test]
        fn commands_reach_the_pump_and_events_reach_the_wifi_mcu() {
            let cfg = LinkConfig::default();
            let (to_pump, to_host) = (Pipe::default(), Pipe::default());
            let now = Cell::new(0);
            let pump_ch = MotionChannels::<NoopRawMutex>::new();
            let host_cmds: Queue<NoopRawMutex, MotionCommand, 4> =
                Queue::new(FullPolicy::RejectNew);
            let host_in: Queue<NoopRawMutex, PumpToHost, 8> = Queue::new(FullPolicy::RejectNew);
            let sig_p: Signal<NoopRawMutex, LinkEvent> = Signal::new();
            let sig_h: Signal<NoopRawMutex, LinkEvent> = Signal::new();
            let mut pump = LinkTask::new(
                LinkEndpoint::new(cfg, 1),
                PipeRx(&to_pump),
                PipeTx(&to_host),
                TestClock(&now),
                PumpSource::new(&pump_ch).unwrap(),
                QueueSink(&pump_ch.commands),
                &sig_p,
            );
            let mut host = LinkTask::new(
                LinkEndpoint::new(cfg, 2),
                PipeRx(&to_host),
                PipeTx(&to_pump),
                TestClock(&now),
                QueueSource(&host_cmds),
                QueueSink(&host_in),
                &sig_h,
            );
            let (pump_run, host_run) = (pump.run(), host.run());
            let mut pump_run = core::pin::pin!(pump_run);
            let mut host_run = core::pin::pin!(host_run);
            assert!(
                host_cmds
                    .offer(MotionCommand::EmergencyStop(EstopTrigger::Remote))
                    .is_queued()
            );
            let alarm = PumpEvent::Alarm(AlarmKind::DispenseTimeout);
            assert!(pump_ch.events.offer(alarm.clone()).is_queued());
            pump_ch.snapshot.sender().send(MotionSnapshot::default());
            for _ in 0..20 {
                assert!(poll_once(host_run.as_mut()).is_pending());
                assert!(poll_once(pump_run.as_mut()).is_pending());
            }
            assert_eq!(
                pump_ch.commands.try_receive(),
                Some(MotionCommand::EmergencyStop(EstopTrigger::Remote))
            );
            assert_eq!(host_in.try_receive(), Some(PumpToHost::Event(alarm)));
            assert_eq!(
                host_in.try_receive(),
                Some(PumpToHost::Snapshot(MotionSnapshot::default()))
            );
            assert_eq!(host_in.try_receive(), None);
        }
    }

    proptest! {
        #![proptest_config(Config {
            cases: 128,
            // Fixed: a CRC-16 lets about 1 in 65536 random corruptions through, which a random
            // seed would turn into a rare flaky failure. The fixed seed still covers 128
            // different loss/corruption patterns, the same ones on every run.
            rng_seed: RngSeed::Fixed(0x7417_b3c4),
            failure_persistence: None,
            ..Config::default()
        })]

        #[test]
        fn the_link_delivers_every_payload_exactly_once_in_order_through_loss_and_corruption(
            a_to_b in proptest::collection::vec(fault(), 0..200),
            b_to_a in proptest::collection::vec(fault(), 0..200),
            count_ab in 1usize..40,
            count_ba in 0usize..20,
        ) {
            let cfg = LinkConfig::default();
            let mut a = LinkEndpoint::new(cfg, 0xA);
            let mut b = LinkEndpoint::new(cfg, 0xB);
            let (mut ia, mut ib) = (0usize, 0usize);
            let (mut sent_a, mut sent_b) = (0usize, 0usize);
            let (mut got_b, mut got_a) = (std::vec::Vec::new(), std::vec::Vec::new());
            let mut now = Instant::ZERO;
            let mut steps = 0;
            while got_b.len() < count_ab || got_a.len() < count_ba {
                steps += 1;
                prop_assert!(steps < 100_000, "no progress: livelock");
                while sent_a < count_ab && a.can_send() {
                    a.send(&(sent_a as u32).to_le_bytes(), now).unwrap();
                    sent_a += 1;
                }
                while sent_b < count_ba && b.can_send() {
                    b.send(&(sent_b as u32 + 1000).to_le_bytes(), now).unwrap();
                    sent_b += 1;
                }
                let mut moved = false;
                while let Some(w) = a.poll_transmit() {
                    b.handle_bytes(&channel(&w, &a_to_b, &mut ia), now);
                    moved = true;
                }
                while let Some(w) = b.poll_transmit() {
                    a.handle_bytes(&channel(&w, &b_to_a, &mut ib), now);
                    moved = true;
                }
                while let Some(p) = b.poll_received() {
                    got_b.push(u32::from_le_bytes(p[..].try_into().unwrap()));
                }
                while let Some(p) = a.poll_received() {
                    got_a.push(u32::from_le_bytes(p[..].try_into().unwrap()));
                }
                if !moved {
                    let next = [a.poll_timeout(), b.poll_timeout()].into_iter().flatten().min();
                    let Some(t) = next else {
                        return Err(TestCaseError::fail("stalled with nothing scheduled"));
                    };
                    now = now.max(t);
                    a.handle_timeout(now);
                    b.handle_timeout(now);
                }
            }
            let want_b: std::vec::Vec<u32> = (0..count_ab as u32).collect();
            let want_a: std::vec::Vec<u32> = (1000..1000 + count_ba as u32).collect();
            prop_assert_eq!(got_b, want_b);
            prop_assert_eq!(got_a, want_a);
        }

        #[test]
        fn the_frame_decoder_rejects_arbitrary_bytes_without_panicking(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let _ = decode_wire(&bytes);
            let _ = Frame::new_checked(&bytes[..]);
            let mut out = [0u8; 64];
            let _ = cobs_decode(&bytes, &mut out);
            let _ = cobs_encode(&bytes, &mut out);
            let mut e = LinkEndpoint::new(LinkConfig::default(), 1);
            e.handle_bytes(&bytes, Instant::ZERO);
            let _ = e.poll_transmit();
            let _ = decode::<MotionCommand>(&bytes);
            let _ = decode::<PumpToHost>(&bytes);
        }
    }
}
