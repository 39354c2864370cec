//! The WebSocket feed of the web UI: what to send, how often, and what the UI may send back.
//!
//! The upgrade handshake and the framing are the web server's ([`super::web`],
//! [`super::websocket`]); this module produces and consumes the text payloads:
//!
//! * [`WsFeed`]: one small JSON frame ([`write_frame`]) at 1 Hz IDLE, 5 Hz DISPENSING, 10 Hz
//!   EMERGENCY; a priority change sends a frame at once.
//! * [`WsSession`]: the commands a UI session sends (`{"cmd":"start",...}`, `stop`, `estop`,
//!   `resume`, `recipe`; the same JSON as MQTT, see [`parse_command`]). A session may control
//!   the pumps only if its upgrade request carried valid Basic credentials
//!   ([`HttpOutcome::WebSocket`](super::command::HttpOutcome::WebSocket)); otherwise it is a
//!   read-only feed and every command gets `{"error":"credentials required"}`.
//! * [`WsTask`]: the runner, over a [`WsSink`] the platform implements (broadcast one text
//!   frame to every open session).
use core::fmt::{self, Write};
use core::future::Future;

use embassy_futures::select::select;
use embassy_sync::blocking_mutex::raw::RawMutex;
use embassy_sync::watch::{DynAnonReceiver, Receiver};

use super::command::{Command, CommandError, Limits, RecipeInfo, parse_command};
use super::governor::{Governor, Priority, Transition};
use super::status::{Cadence, PumpSnapshot, Ticker, write_f32};
use super::{PUMPS, Pump};
use crate::ports::Clock;
use crate::time::{Duration, Instant};

/// Longest feed frame, bytes.
pub const FRAME_MAX: usize = 384;

/// The feed rates: 1 Hz, 5 Hz, 10 Hz.
pub const WS_CADENCE: Cadence = Cadence {
    idle: Duration::from_millis(1000),
    dispensing: Duration::from_millis(200),
    emergency: Duration::from_millis(100),
};

/// A feed frame:
/// `{"t":1200,"priority":"DISPENSING","pumping":true,"pumps":{"X":{"active":true,"ml":1.25},...}}`
/// (`t` in ms since boot, `ml` dispensed since boot). `pumping` is true when any pump moves.
pub fn write_frame(
    w: &mut impl Write,
    now: Instant,
    priority: Priority,
    snapshot: &PumpSnapshot,
) -> fmt::Result {
    write!(
        w,
        "{{\"t\":{},\"priority\":\"{}\",\"pumping\":{},\"pumps\":{{",
        now.as_millis(),
        priority.name(),
        snapshot.pumping()
    )?;
    for (i, (pump, s)) in Pump::ALL
        .iter()
        .zip(&snapshot.pumps)
        .take(PUMPS)
        .enumerate()
    {
        if i > 0 {
            w.write_char(',')?;
        }
        write!(w, "\"{pump}\":{{\"active\":{},\"ml\":", s.active)?;
        write_f32(w, s.dispensed_ml)?;
        w.write_char('}')?;
    }
    w.write_str("}}")
}

/// A feed frame as an owned string.
pub fn frame(
    now: Instant,
    priority: Priority,
    snapshot: &PumpSnapshot,
) -> heapless::String<FRAME_MAX> {
    let mut s = heapless::String::new();
    // Bounded: 4 pumps with floats of at most 43 characters each fit FRAME_MAX (tested).
    let _ = write_frame(&mut s, now, priority, snapshot);
    s
}

/// Feed timing (sans-IO): [`handle_priority`](Self::handle_priority), then
/// [`poll`](Self::poll); sleep until [`next_deadline`](Self::next_deadline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsFeed {
    ticker: Ticker,
}

impl WsFeed {
    /// A feed whose first frame is due at `now`.
    pub const fn new(now: Instant) -> Self {
        WsFeed {
            ticker: Ticker::new(WS_CADENCE, now),
        }
    }

    /// Tell the feed the current priority; a change sends a frame at once.
    pub fn handle_priority(&mut self, p: Priority, now: Instant) {
        self.ticker.handle_priority(p, now);
    }

    /// The frame to send now, if one is due.
    pub fn poll(
        &mut self,
        now: Instant,
        snapshot: &PumpSnapshot,
    ) -> Option<heapless::String<FRAME_MAX>> {
        self.ticker
            .poll(now)
            .then(|| frame(now, self.ticker.priority(), snapshot))
    }

    /// When the next frame is due.
    pub fn next_deadline(&self) -> Instant {
        self.ticker.next_deadline()
    }
}

/// Why a UI command was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum WsError {
    /// The session's upgrade carried no valid credentials.
    Unauthorized,
    /// The command itself is bad.
    Command(CommandError),
}

impl fmt::Display for WsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WsError::Unauthorized => f.write_str("credentials required"),
            WsError::Command(e) => e.fmt(f),
        }
    }
}

impl core::error::Error for WsError {}

impl WsError {
    /// The reply frame `{"error":"..."}`.
    pub fn reply(&self) -> heapless::String<96> {
        let mut s = heapless::String::new();
        // Our messages are short and need no escaping.
        let _ = write!(s, "{{\"error\":\"{self}\"}}");
        s
    }
}

/// One open WebSocket session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct WsSession {
    /// The session may send commands (its upgrade carried valid credentials).
    pub control: bool,
}

impl WsSession {
    /// A text frame from the UI: a [`Command`] for pump control, or an error to send back
    /// ([`WsError::reply`]).
    pub fn handle_text(
        &self,
        text: &[u8],
        limits: &Limits,
        recipes: &[RecipeInfo<'_>],
    ) -> Result<Command, WsError> {
        if !self.control {
            return Err(WsError::Unauthorized);
        }
        parse_command(text, limits, recipes).map_err(WsError::Command)
    }
}

/// Sends one text frame to every open WebSocket session (the platform's server).
///
/// # Contract
/// * `broadcast` MUST complete in bounded time: a slow or dead client is the platform's to drop
///   or skip, never a reason to stall the feed.
/// * Frames are latest-value telemetry: the sink MAY drop a frame for a client whose previous
///   frame is still unsent, but MUST NOT reorder frames for one client.
pub trait WsSink {
    /// Send `text` to every session.
    fn broadcast(&mut self, text: &str) -> impl Future<Output = ()>;
}

/// The WebSocket feed task: a frame per tick of [`WsFeed`], from the latest [`PumpSnapshot`].
pub struct WsTask<'a, M: RawMutex, C, K, const W: usize> {
    governor: &'a Governor<M, W>,
    changes: Receiver<'a, M, Transition, W>,
    pumps: DynAnonReceiver<'a, PumpSnapshot>,
    sink: K,
    clock: C,
    feed: WsFeed,
}

impl<'a, M: RawMutex, C: Clock, K: WsSink, const W: usize> WsTask<'a, M, C, K, W> {
    /// A feed task; `None` when the governor has no receiver slot left.
    pub fn new(
        governor: &'a Governor<M, W>,
        pumps: DynAnonReceiver<'a, PumpSnapshot>,
        sink: K,
        clock: C,
    ) -> Option<Self> {
        let changes = governor.changed()?;
        let now = clock.now();
        Some(WsTask {
            governor,
            changes,
            pumps,
            sink,
            clock,
            feed: WsFeed::new(now),
        })
    }

    /// The sink (tests and the simulator inspect it).
    pub fn sink(&self) -> &K {
        &self.sink
    }

    /// Run forever.
    pub async fn run(&mut self) -> ! {
        loop {
            self.step().await;
        }
    }

    /// One turn: send a frame if due, then wait for the next deadline or a priority change.
    pub async fn step(&mut self) {
        let now = self.clock.now();
        self.feed.handle_priority(self.governor.get(), now);
        let snapshot = self.pumps.try_get().unwrap_or_default();
        if let Some(text) = self.feed.poll(now, &snapshot) {
            self.sink.broadcast(&text).await;
        }
        let deadline = self.feed.next_deadline();
        select(self.clock.sleep_until(deadline), self.changes.changed()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pump::PumpStatus;
    use crate::pump::governor::Reason;
    use crate::pump::outbox::testing::TestClock;
    use embassy_sync::blocking_mutex::raw::NoopRawMutex;
    use embassy_sync::watch::Watch;
    use proptest::prelude::*;

    fn ms(v: u64) -> Instant {
        Instant::from_millis(v)
    }

    /// Frames sent in `[from, until)` at priority `p`.
    fn frames(p: Priority, from: Instant, until: Instant) -> usize {
        let mut f = WsFeed::new(from);
        f.handle_priority(p, from);
        let snap = PumpSnapshot::default();
        let mut now = from;
        let mut n = 0;
        while now < until {
            n += f.poll(now, &snap).is_some() as usize;
            now = f.next_deadline();
        }
        n
    }

    #[test]
    fn ws_rate_follows_the_priority() {
        assert_eq!(frames(Priority::Idle, ms(0), ms(10_000)), 10);
        assert_eq!(frames(Priority::Dispensing, ms(0), ms(10_000)), 50);
        assert_eq!(frames(Priority::Emergency, ms(0), ms(10_000)), 100);
    }

    #[test]
    fn ws_sends_a_frame_at_once_when_the_priority_changes() {
        let mut f = WsFeed::new(ms(0));
        let snap = PumpSnapshot::default();
        assert!(f.poll(ms(0), &snap).is_some());
        assert!(f.poll(ms(300), &snap).is_none());
        f.handle_priority(Priority::Emergency, ms(300));
        let text = f.poll(ms(300), &snap).unwrap();
        assert!(text.contains("\"priority\":\"EMERGENCY\""));
        assert_eq!(f.next_deadline(), ms(400));
    }

    #[test]
    fn frame_carries_priority_pumping_and_per_pump_activity() {
        let mut snap = PumpSnapshot::default();
        snap.pumps[1] = PumpStatus {
            position_mm: 3.0,
            active: true,
            dispensed_ml: 1.25,
        };
        assert_eq!(
            frame(ms(1200), Priority::Dispensing, &snap).as_str(),
            "{\"t\":1200,\"priority\":\"DISPENSING\",\"pumping\":true,\"pumps\":{\
             \"X\":{\"active\":false,\"ml\":0.00},\"Y\":{\"active\":true,\"ml\":1.25},\
             \"Z\":{\"active\":false,\"ml\":0.00},\"A\":{\"active\":false,\"ml\":0.00}}}"
        );
    }

    #[test]
    fn frame_fits_with_extreme_values() {
        let snap = PumpSnapshot {
            pumps: [PumpStatus {
                position_mm: 0.0,
                active: false,
                dispensed_ml: -f32::MAX,
            }; PUMPS],
            ..Default::default()
        };
        let f = frame(Instant::MAX, Priority::Dispensing, &snap);
        assert!(f.ends_with("}}"), "{f}");
    }

    #[test]
    fn ws_control_needs_an_authorized_session() {
        let ro = WsSession { control: false };
        let rw = WsSession { control: true };
        let stop = br#"{"cmd":"stop"}"#;
        assert_eq!(
            ro.handle_text(stop, &Limits::DEFAULT, &[]),
            Err(WsError::Unauthorized)
        );
        assert_eq!(
            WsError::Unauthorized.reply().as_str(),
            r#"{"error":"credentials required"}"#
        );
        assert_eq!(
            rw.handle_text(stop, &Limits::DEFAULT, &[]),
            Ok(Command::Stop)
        );
        assert_eq!(
            rw.handle_text(br#"{"cmd":"estop"}"#, &Limits::DEFAULT, &[]),
            Ok(Command::EmergencyStop)
        );
        assert_eq!(
            rw.handle_text(b"{", &Limits::DEFAULT, &[]),
            Err(WsError::Command(CommandError::BadJson))
        );
    }

    proptest! {
        #[test]
        fn ws_commands_reject_arbitrary_bytes_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = WsSession { control: true }.handle_text(&bytes, &Limits::DEFAULT, &[]);
        }
    }

    #[derive(Default)]
    struct Sink(Vec<String>);

    impl WsSink for Sink {
        async fn broadcast(&mut self, text: &str) {
            self.0.push(text.to_string());
        }
    }

    #[test]
    fn ws_task_broadcasts_at_the_dispensing_rate() {
        let gov: Governor<NoopRawMutex, 1> = Governor::new();
        let watch: Watch<NoopRawMutex, PumpSnapshot, 1> = Watch::new();
        let clock = TestClock::default();
        let mut t = WsTask::new(&gov, watch.dyn_anon_receiver(), Sink::default(), &clock).unwrap();
        gov.request(Priority::Dispensing, Reason::DispenseStarted);
        while clock.now() < ms(1000) {
            assert!(embassy_futures::poll_once(core::pin::pin!(t.step())).is_ready());
        }
        assert_eq!(t.sink().0.len(), 5);
        assert!(t.sink().0.iter().all(|f| f.contains("DISPENSING")));
    }
}
