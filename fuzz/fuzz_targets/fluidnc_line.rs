//! What a FluidNC board sends the pump controller: reply lines for `pump::fluidnc::parse_line`
//! and, as a byte stream, for the motion task's sans-IO `Client`.
//!
//! The input is the controller's output. Three bytes a controller never sends stand for what
//! the firmware does meanwhile: 0x18 soft reset, 0x19 feed hold, 0x1A time passes beyond the
//! reset timeout. The client keeps lines queued, so responses have something to answer.
//!
//! * Every line parses or is refused with an error; a status report holds finite numbers.
//! * The client never has more un-answered bytes than the controller's receive buffer
//!   (character counting), never sends a line without its LF or with a byte the controller
//!   would take as a realtime command, and reports each line's outcome at most once and only
//!   for lines it was given.
#![no_main]

use std::collections::BTreeSet;

use firmware_core::pump::fluidnc::{
    Client, ClientEvent, Line, RX_BUFFER, StatusReport, Transmit, parse_line,
};
use firmware_core::time::{Duration, Instant};
use libfuzzer_sys::fuzz_target;

const LINES: &[&str] = &["G91", "G1 X1.25 F60", "G1 Y-0.5 Z2 F120.5", "$X", "G4 P0.1"];

#[track_caller]
fn check_report(r: &StatusReport) {
    assert!(r.position.iter().all(|v| v.is_finite()), "{r:?}");
    assert!(r.feed_mm_min.is_none_or(f32::is_finite), "{r:?}");
    assert!(
        r.wco.is_none_or(|w| w.iter().all(|v| v.is_finite())),
        "{r:?}"
    );
    assert!(r.axes <= 6, "{r:?}");
}

struct Harness {
    client: Client,
    now: Instant,
    issued: BTreeSet<u32>,
    settled: BTreeSet<u32>,
    next_line: usize,
}

impl Harness {
    fn top_up(&mut self) {
        while let Ok(tag) = self.client.send_line(LINES[self.next_line % LINES.len()]) {
            self.issued.insert(tag.0);
            self.next_line += 1;
        }
    }

    fn drain(&mut self) {
        while let Some(t) = self.client.poll_transmit() {
            if let Transmit::Line(bytes) = &t {
                let (last, body) = bytes.split_last().expect("a line is not empty");
                assert_eq!(*last, b'\n', "a line sent without its LF");
                assert!(
                    body.iter()
                        .all(|&b| (0x20..0x7F).contains(&b) && !b"?!~".contains(&b)),
                    "a line holds a control or realtime byte: {body:?}"
                );
            }
            assert!(
                self.client.in_flight_bytes() < RX_BUFFER,
                "receive buffer overrun"
            );
        }
        while let Some(ev) = self.client.poll_event() {
            let tag = match ev {
                ClientEvent::Ok(tag)
                | ClientEvent::Error { tag, .. }
                | ClientEvent::Dropped(tag) => tag,
                ClientEvent::Status(r) => {
                    check_report(&r);
                    continue;
                }
                ClientEvent::Alarm(_) | ClientEvent::Reset => continue,
            };
            assert!(
                self.issued.contains(&tag.0),
                "an outcome for a line never sent: {tag:?}"
            );
            assert!(self.settled.insert(tag.0), "a line settled twice: {tag:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    for line in data.split(|&b| b == b'\n') {
        if let Ok(Line::Status(r)) = parse_line(line) {
            check_report(&r);
        }
    }

    let mut h = Harness {
        client: Client::default(),
        now: Instant::ZERO,
        issued: BTreeSet::new(),
        settled: BTreeSet::new(),
        next_line: 0,
    };
    h.top_up();
    h.drain();
    for chunk in data.chunk_by(|a, _| !matches!(a, b'\n' | b'\r' | 0x18..=0x1A)) {
        h.now += Duration::from_millis(3);
        for &b in chunk {
            match b {
                0x18 => h.client.soft_reset(h.now),
                0x19 => h.client.feed_hold_now(),
                0x1A => {
                    h.now += Duration::from_millis(2_000);
                    h.client.handle_timeout(h.now);
                }
                _ => h.client.handle_bytes(&[b], h.now),
            }
        }
        if let Some(deadline) = h.client.poll_timeout()
            && deadline <= h.now
        {
            h.client.handle_timeout(h.now);
        }
        h.drain();
        h.top_up();
        h.drain();
        assert!(h.client.in_flight_bytes() < RX_BUFFER);
    }
    if let Some(r) = h.client.last_status() {
        check_report(r);
    }
});
