//! Bytes on the option-3 serial link between the WiFi MCU and the pump MCU (`pump::link`).
//!
//! * Each 0x00-delimited block that decodes is a frame whose fields emit back to exactly its
//!   decoded bytes and whose wire form decodes to the same fields; a COBS block that decodes
//!   re-encodes to one that decodes to the same bytes.
//! * A payload that decodes as a `MotionCommand` or a `PumpToHost` re-encodes to a canonical
//!   payload that decodes and encodes to itself.
//! * An endpoint fed the stream (while it has frames of its own in flight) keeps its window,
//!   sends only well-formed frames of its own session and delivers payloads within bounds.
//! * Two endpoints joined by a channel that drops and corrupts frames as the input says
//!   deliver every payload exactly once and in order once the channel heals: the protocol's
//!   promise without restarts.
#![no_main]

use std::collections::VecDeque;

use firmware_core::pump::link::{
    self, FrameRepr, LinkConfig, LinkEndpoint, MAX_FRAME, MAX_PAYLOAD, MAX_WIRE, MotionCommand,
    PumpToHost, WINDOW, cobs_decode, cobs_encode, decode_wire,
};
use firmware_core::time::{Duration, Instant};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

#[track_caller]
fn check_payload<T: Serialize + DeserializeOwned>(payload: &[u8]) {
    let Ok(msg) = link::decode::<T>(payload) else {
        return;
    };
    let canonical = link::encode(&msg).expect("a decoded message re-encodes");
    let again: T = link::decode(&canonical).expect("a canonical payload decodes");
    assert_eq!(
        link::encode(&again).expect("encodes"),
        canonical,
        "a canonical payload is not stable"
    );
}

#[track_caller]
fn check_own_frame(wire: &[u8], session: u16) {
    assert!(wire.len() <= MAX_WIRE);
    let (last, block) = wire.split_last().expect("a frame is not empty");
    assert_eq!(*last, 0, "a frame without its delimiter");
    assert!(!block.contains(&0), "a 0x00 inside a frame");
    let frame = decode_wire(block).expect("an endpoint's own frame decodes");
    assert_eq!(FrameRepr::parse(&frame).session, session);
}

fn check_block(block: &[u8]) {
    let mut decoded = [0u8; MAX_WIRE * 2];
    if let Ok(n) = cobs_decode(block, &mut decoded) {
        let mut wire = [0u8; MAX_WIRE * 3];
        let m = cobs_encode(&decoded[..n], &mut wire).expect("re-encodes");
        let mut again = [0u8; MAX_WIRE * 2];
        let k = cobs_decode(&wire[..m], &mut again).expect("own COBS decodes");
        assert_eq!(&again[..k], &decoded[..n], "COBS round trip");
    }
    let Ok(frame) = decode_wire(block) else {
        return;
    };
    let repr = FrameRepr::parse(&frame);
    let mut buf = [0u8; MAX_FRAME];
    let n = repr.emit(&mut buf).expect("a decoded frame emits");
    let mut raw = [0u8; MAX_FRAME];
    let len = cobs_decode(block, &mut raw).expect("decoded once");
    assert_eq!(
        &buf[..n],
        &raw[..len],
        "emit differs from the decoded frame"
    );
    let wire = repr.to_wire().expect("a decoded frame has a wire form");
    let back = decode_wire(&wire[..wire.len() - 1]).expect("own wire form decodes");
    assert_eq!(FrameRepr::parse(&back), repr);
    check_payload::<MotionCommand>(repr.payload);
    check_payload::<PumpToHost>(repr.payload);
}

/// One endpoint with frames of its own in flight, fed the input as the peer's bytes.
fn feed_endpoint(data: &[u8]) {
    let mut ep = LinkEndpoint::new(LinkConfig::default(), 1);
    let mut now = Instant::ZERO;
    for i in 0..3u8 {
        ep.send(&[i; 8], now).expect("window has room");
    }
    for chunk in data.split_inclusive(|&b| b == 0) {
        now += Duration::from_millis(30);
        ep.handle_bytes(chunk, now);
        if ep.poll_timeout().is_some_and(|t| t <= now) {
            ep.handle_timeout(now);
        }
        while let Some(wire) = ep.poll_transmit() {
            check_own_frame(&wire, 1);
        }
        while let Some(p) = ep.poll_received() {
            assert!(p.len() <= MAX_PAYLOAD);
        }
        while ep.poll_event().is_some() {}
        assert!(ep.in_flight() <= WINDOW);
    }
}

/// What the channel does with one frame, from two bits of the input.
fn fate(pattern: &[u8], n: usize) -> u8 {
    pattern
        .get(n / 4)
        .map_or(0, |b| (b >> ((n % 4) * 2)) & 0b11)
}

/// Two endpoints over a lossy channel; then a clean channel until everything is delivered.
///
/// When no frame moves, time jumps to the next timeout (as a sleeping runner would), so an
/// outage of any length costs a bounded number of rounds: while the link is down the sender
/// probes only once a second.
fn lossy_pair(pattern: &[u8]) {
    const MESSAGES: u16 = 24;
    let mut a = LinkEndpoint::new(LinkConfig::default(), 0xA);
    let mut b = LinkEndpoint::new(LinkConfig::default(), 0xB);
    let mut now = Instant::ZERO;
    let (mut next, mut got) = (0u16, Vec::new());
    let mut frame_no = 0usize;
    let lossy_frames = pattern.len() * 4;
    for _round in 0..20_000 {
        while next < MESSAGES && a.can_send() {
            a.send(&next.to_le_bytes(), now).expect("room");
            next += 1;
        }
        let mut to_b = VecDeque::new();
        let mut to_a = VecDeque::new();
        while let Some(w) = a.poll_transmit() {
            to_b.push_back(w);
        }
        while let Some(w) = b.poll_transmit() {
            to_a.push_back(w);
        }
        let moved = !to_a.is_empty() || !to_b.is_empty();
        for (queue, dst) in [(&mut to_b, &mut b), (&mut to_a, &mut a)] {
            for mut wire in queue.drain(..) {
                let f = if frame_no < lossy_frames {
                    fate(pattern, frame_no)
                } else {
                    0
                };
                frame_no += 1;
                match f {
                    1 => continue,
                    2 => {
                        let i = frame_no % wire.len().max(1);
                        wire[i] ^= 0x5A;
                    }
                    _ => {}
                }
                dst.handle_bytes(&wire, now);
            }
        }
        while let Some(p) = b.poll_received() {
            got.push(u16::from_le_bytes([p[0], p[1]]));
        }
        while a.poll_event().is_some() || b.poll_event().is_some() {}
        if got.len() == usize::from(MESSAGES) && a.in_flight() == 0 {
            break;
        }
        if !moved {
            let Some(t) = [a.poll_timeout(), b.poll_timeout()]
                .into_iter()
                .flatten()
                .min()
            else {
                panic!("stalled with nothing scheduled (pattern {pattern:02x?})");
            };
            now = now.max(t);
            a.handle_timeout(now);
            b.handle_timeout(now);
        }
    }
    let want: Vec<u16> = (0..MESSAGES).collect();
    assert_eq!(
        got, want,
        "not exactly once, in order (pattern {pattern:02x?})"
    );
}

fuzz_target!(|data: &[u8]| {
    for block in data.split(|&b| b == 0) {
        check_block(block);
    }
    feed_endpoint(data);
    lossy_pair(&data[..data.len().min(64)]);
});
