//! The status publisher: the retained `pump/controller/status` JSON, on a cadence that follows
//! the priority (30 s IDLE, 5 s DISPENSING, 1 s EMERGENCY).
//!
//! * [`Cadence`] + [`Ticker`] are the sans-IO timing: a priority change publishes at once and
//!   the new interval applies from there (the WebSocket feed uses the same ticker with its own
//!   cadence).
//! * [`StatusReport`] is one status, formatted by hand into a fixed buffer: the layout is flat,
//!   every string is ours or passed through [`write_json_safe`](super::stats), and floats need
//!   a `null` for NaN, which `serde-json-core` would not give us.
//! * [`StatusTask`] is the runner: it reads the latest [`PumpSnapshot`] (pump control sends it
//!   into an embassy-sync `Watch`), the platform's [`PlatformStats`], and pushes the status into
//!   the [`SharedOutbox`]: the normal lane, or the emergency lane in EMERGENCY (the only lane
//!   drained then).
use core::fmt::{self, Write};

use embassy_futures::select::select;
use embassy_sync::blocking_mutex::raw::RawMutex;
use embassy_sync::watch::{DynAnonReceiver, Receiver, Watch};

use super::command::HttpReply;
use super::governor::{Governor, Priority, Transition};
use super::outbox::{Lane, Message, PAYLOAD_MAX, SharedOutbox, fixed_topic, topic};
use super::stats::{PlatformStats, StatsReport, write_json_safe};
use super::{PUMPS, Pump, PumpStatus};
use crate::ports::{Clock, MqttQos};
use crate::time::{Duration, Instant};

/// One interval per priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Cadence {
    /// At IDLE.
    pub idle: Duration,
    /// At DISPENSING.
    pub dispensing: Duration,
    /// At EMERGENCY.
    pub emergency: Duration,
}

impl Cadence {
    /// Status publisher: 30 s, 5 s, 1 s.
    pub const STATUS: Cadence = Cadence {
        idle: Duration::from_secs(30),
        dispensing: Duration::from_secs(5),
        emergency: Duration::from_secs(1),
    };

    /// The interval at `p`.
    pub const fn interval(&self, p: Priority) -> Duration {
        match p {
            Priority::Idle => self.idle,
            Priority::Dispensing => self.dispensing,
            Priority::Emergency => self.emergency,
        }
    }
}

/// A periodic deadline whose period follows the priority.
///
/// Call order: [`handle_priority`](Self::handle_priority) with the current priority, then
/// [`poll`](Self::poll); sleep until [`next_deadline`](Self::next_deadline) (or a priority change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticker {
    cadence: Cadence,
    priority: Priority,
    next_due: Instant,
}

impl Ticker {
    /// A ticker at IDLE whose first tick is due at `now`.
    pub const fn new(cadence: Cadence, now: Instant) -> Self {
        Ticker {
            cadence,
            priority: Priority::Idle,
            next_due: now,
        }
    }

    /// Tell the ticker the current priority. A change makes a tick due at once, and the new
    /// interval counts from that tick.
    pub fn handle_priority(&mut self, p: Priority, now: Instant) {
        if p != self.priority {
            self.priority = p;
            self.next_due = now;
        }
    }

    /// Whether a tick is due at `now`; if so, schedules the next one.
    pub fn poll(&mut self, now: Instant) -> bool {
        if now < self.next_due {
            return false;
        }
        let interval = self.interval();
        let next = self.next_due + interval;
        // Keep a steady rate, but never schedule a burst to catch up after a long stall.
        self.next_due = if next > now { next } else { now + interval };
        true
    }

    /// When the next tick is due.
    pub fn next_deadline(&self) -> Instant {
        self.next_due
    }

    /// The interval at the current priority.
    pub fn interval(&self) -> Duration {
        self.cadence.interval(self.priority)
    }

    /// The priority last given.
    pub fn priority(&self) -> Priority {
        self.priority
    }
}

/// Longest machine-state name in a [`PumpSnapshot`].
pub const STATE_MAX: usize = 16;

/// What pump control reports for the status and the UI (sent into a `Watch`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PumpSnapshot {
    /// Per pump, in axis order X, Y, Z, A.
    pub pumps: [PumpStatus; PUMPS],
    /// The controller's state (`"idle"`, `"dispensing"`, `"hold"`, `"alarm"`, ...).
    pub state: heapless::String<STATE_MAX>,
}

impl PumpSnapshot {
    /// Whether any pump is moving.
    pub fn pumping(&self) -> bool {
        self.pumps.iter().any(|p| p.active)
    }
}

/// Write `v` with two decimals, or `null` when it is not finite (JSON has no NaN).
pub(crate) fn write_f32(w: &mut impl Write, v: f32) -> fmt::Result {
    if v.is_finite() {
        write!(w, "{v:.2}")
    } else {
        w.write_str("null")
    }
}

/// One status, as published on [`topic::STATUS`] and answered on `GET /api/status`.
#[derive(Debug, Clone, Copy)]
pub struct StatusReport<'a> {
    /// Milliseconds since boot (or since the Unix epoch if the platform knows the date).
    pub timestamp_ms: u64,
    /// System priority.
    pub priority: Priority,
    /// Pump control's snapshot.
    pub snapshot: &'a PumpSnapshot,
    /// Time since boot.
    pub uptime: Duration,
    /// Messages waiting in the MQTT outbox (both lanes).
    pub queue_depth: u16,
    /// The platform's task statistics and free memory.
    pub stats: &'a StatsReport,
}

impl StatusReport<'_> {
    /// ```json
    /// {"timestamp":1234,"priority":"IDLE","state":"idle",
    ///  "pumps":{"X":{"position":0.00,"active":false,"dispensed_ml":0.00},"Y":{..},"Z":{..},"A":{..}},
    ///  "uptime":1,"queueDepth":0,"freeHeap":null,"tasks":[...]}
    /// ```
    /// `uptime` is in seconds; `freeHeap` is `null` when the platform does not know it.
    /// With `tasks == false` the task list is left out.
    pub fn write_json(&self, w: &mut impl Write, tasks: bool) -> fmt::Result {
        write!(
            w,
            "{{\"timestamp\":{},\"priority\":\"{}\",\"state\":\"",
            self.timestamp_ms,
            self.priority.name()
        )?;
        write_json_safe(w, &self.snapshot.state)?;
        w.write_str("\",\"pumps\":{")?;
        for (i, (pump, s)) in Pump::ALL.iter().zip(&self.snapshot.pumps).enumerate() {
            if i > 0 {
                w.write_char(',')?;
            }
            write!(w, "\"{pump}\":{{\"position\":")?;
            write_f32(w, s.position_mm)?;
            write!(w, ",\"active\":{},\"dispensed_ml\":", s.active)?;
            write_f32(w, s.dispensed_ml)?;
            w.write_char('}')?;
        }
        write!(
            w,
            "}},\"uptime\":{},\"queueDepth\":{},\"freeHeap\":",
            self.uptime.as_secs(),
            self.queue_depth
        )?;
        match self.stats.free_memory {
            Some(m) => write!(w, "{m}")?,
            None => w.write_str("null")?,
        }
        if tasks {
            w.write_str(",\"tasks\":")?;
            self.stats.write_tasks_json(w)?;
        }
        w.write_char('}')
    }

    /// The `GET /api/status` reply (200); the task list is left out if it does not fit.
    pub fn http_reply(&self) -> HttpReply {
        let full = HttpReply::json(200, |w| self.write_json(w, true));
        if full.code == 200 {
            return full;
        }
        HttpReply::json(200, |w| self.write_json(w, false))
    }

    /// As a retained message: the emergency lane in EMERGENCY, else the normal lane. When the
    /// task list does not fit [`PAYLOAD_MAX`], it is left out (the rest always fits).
    pub fn to_message(&self) -> Message {
        let mut body: heapless::String<PAYLOAD_MAX> = heapless::String::new();
        if self.write_json(&mut body, true).is_err() {
            body.clear();
            // Without tasks the status is at most ~740 bytes (every float at -f32::MAX, every
            // counter at its maximum), inside PAYLOAD_MAX; the test below pins that.
            let _ = self.write_json(&mut body, false);
        }
        let lane = if self.priority == Priority::Emergency {
            Lane::Emergency
        } else {
            Lane::Normal
        };
        Message {
            topic: fixed_topic(topic::STATUS),
            payload: heapless::Vec::from_slice(body.as_bytes()).unwrap_or_default(),
            qos: MqttQos::AtMostOnce,
            retain: true,
            lane,
            kind: super::outbox::Kind::Telemetry,
        }
    }
}

/// Something that answers `GET /api/status` at the instant it is asked (the web server holds a
/// `&dyn StatusSource`, so it need not know the governor's or the outbox's sizes).
pub trait StatusSource {
    /// The status reply (200) at `now`.
    fn status_reply(&self, now: Instant) -> HttpReply;
}

/// The live state a status is made of: the same the [`StatusTask`] publishes.
pub struct StatusView<
    'a,
    M: RawMutex,
    S,
    const W: usize,
    const P: usize,
    const N: usize,
    const E: usize,
> {
    /// The governor.
    pub governor: &'a Governor<M, W>,
    /// Pump control's latest snapshot.
    pub pumps: &'a Watch<M, PumpSnapshot, P>,
    /// The outbox (for its depth).
    pub outbox: &'a SharedOutbox<M, N, E>,
    /// The platform's task statistics.
    pub platform: S,
    /// The instant uptime counts from.
    pub boot: Instant,
}

impl<M, S, const W: usize, const P: usize, const N: usize, const E: usize> StatusSource
    for StatusView<'_, M, S, W, P, N, E>
where
    M: RawMutex,
    S: PlatformStats,
{
    fn status_reply(&self, now: Instant) -> HttpReply {
        let snapshot = self.pumps.try_get().unwrap_or_default();
        let mut stats = StatsReport::default();
        self.platform.stats(&mut stats);
        let (normal, emergency) = self.outbox.with(|o| (o.len(), o.emergency_len()));
        StatusReport {
            timestamp_ms: now.as_millis(),
            priority: self.governor.get(),
            snapshot: &snapshot,
            uptime: now.saturating_since(self.boot),
            queue_depth: (normal + emergency) as u16,
            stats: &stats,
        }
        .http_reply()
    }
}

/// The status publisher task.
pub struct StatusTask<'a, M: RawMutex, C, S, const W: usize, const N: usize, const E: usize> {
    outbox: &'a SharedOutbox<M, N, E>,
    governor: &'a Governor<M, W>,
    changes: Receiver<'a, M, Transition, W>,
    pumps: DynAnonReceiver<'a, PumpSnapshot>,
    platform: S,
    clock: C,
    ticker: Ticker,
    boot: Instant,
}

impl<'a, M, C, S, const W: usize, const N: usize, const E: usize> StatusTask<'a, M, C, S, W, N, E>
where
    M: RawMutex,
    C: Clock,
    S: PlatformStats,
{
    /// A publisher whose first status goes out at once. `boot` is the instant uptime counts
    /// from. `None` when the governor has no receiver slot left.
    pub fn new(
        outbox: &'a SharedOutbox<M, N, E>,
        governor: &'a Governor<M, W>,
        pumps: DynAnonReceiver<'a, PumpSnapshot>,
        platform: S,
        clock: C,
        boot: Instant,
    ) -> Option<Self> {
        let changes = governor.changed()?;
        let now = clock.now();
        Some(StatusTask {
            outbox,
            governor,
            changes,
            pumps,
            platform,
            clock,
            ticker: Ticker::new(Cadence::STATUS, now),
            boot,
        })
    }

    /// Run forever.
    pub async fn run(&mut self) -> ! {
        loop {
            self.step().await;
        }
    }

    /// One turn: publish if due, then wait for the next deadline or a priority change.
    pub async fn step(&mut self) {
        let now = self.clock.now();
        self.ticker.handle_priority(self.governor.get(), now);
        if self.ticker.poll(now) {
            let snapshot = self.pumps.try_get().unwrap_or_default();
            let mut stats = StatsReport::default();
            self.platform.stats(&mut stats);
            let (normal, emergency) = self.outbox.with(|o| (o.len(), o.emergency_len()));
            let report = StatusReport {
                timestamp_ms: now.as_millis(),
                priority: self.ticker.priority(),
                snapshot: &snapshot,
                uptime: now - self.boot,
                queue_depth: (normal + emergency) as u16,
                stats: &stats,
            };
            let _ = self.outbox.push(report.to_message(), now);
        }
        let deadline = self.ticker.next_deadline();
        select(self.clock.sleep_until(deadline), self.changes.changed()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pump::governor::Reason;
    use crate::pump::outbox::testing::TestClock;
    use crate::pump::outbox::{Drain, DrainConfig};
    use crate::pump::stats::{NoStats, TaskStats};
    use embassy_sync::blocking_mutex::raw::NoopRawMutex;
    use embassy_sync::watch::Watch;

    fn s(v: u64) -> Instant {
        Instant::from_millis(v * 1000)
    }

    /// Tick times of `t` between `from` and `until` when the priority is `p`.
    fn ticks(t: &mut Ticker, p: Priority, from: Instant, until: Instant) -> Vec<u64> {
        let mut now = from;
        let mut out = Vec::new();
        t.handle_priority(p, now);
        while now < until {
            if t.poll(now) {
                out.push(now.as_millis());
            }
            now = t.next_deadline();
        }
        out
    }

    #[test]
    fn status_interval_follows_the_priority() {
        let mut t = Ticker::new(Cadence::STATUS, Instant::ZERO);
        assert_eq!(
            ticks(&mut t, Priority::Idle, s(0), s(61)),
            [0, 30_000, 60_000]
        );
        let mut t = Ticker::new(Cadence::STATUS, Instant::ZERO);
        t.handle_priority(Priority::Dispensing, s(0));
        assert_eq!(
            ticks(&mut t, Priority::Dispensing, s(0), s(16)),
            [0, 5_000, 10_000, 15_000]
        );
        let mut t = Ticker::new(Cadence::STATUS, Instant::ZERO);
        assert_eq!(
            ticks(&mut t, Priority::Emergency, s(0), s(3)),
            [0, 1_000, 2_000]
        );
    }

    #[test]
    fn a_priority_change_publishes_at_once_and_uses_the_new_interval() {
        let mut t = Ticker::new(Cadence::STATUS, Instant::ZERO);
        assert!(t.poll(s(0)));
        assert_eq!(t.next_deadline(), s(30));
        t.handle_priority(Priority::Emergency, s(7));
        assert!(t.poll(s(7)));
        assert_eq!(t.next_deadline(), s(8));
    }

    #[test]
    fn a_stalled_ticker_does_not_burst_to_catch_up() {
        let mut t = Ticker::new(Cadence::STATUS, Instant::ZERO);
        t.handle_priority(Priority::Emergency, s(0));
        assert!(t.poll(s(0)));
        assert!(t.poll(s(10)));
        assert!(!t.poll(s(10)));
        assert_eq!(t.next_deadline(), s(11));
    }

    fn snapshot() -> PumpSnapshot {
        let mut snap = PumpSnapshot::default();
        snap.pumps[0] = PumpStatus {
            position_mm: 12.5,
            active: true,
            dispensed_ml: 3.25,
        };
        snap.pumps[3].dispensed_ml = f32::NAN;
        snap.state.push_str("dispensing").unwrap();
        snap
    }

    #[test]
    fn status_json_has_every_field_and_pump() {
        let snap = snapshot();
        let mut stats = StatsReport {
            free_memory: Some(12_345),
            ..Default::default()
        };
        stats
            .tasks
            .push(TaskStats {
                name: "mqtt",
                core: Some(0),
                run_time: Duration::from_millis(7),
                queue_depth: 2,
                queue_capacity: 50,
            })
            .unwrap();
        let r = StatusReport {
            timestamp_ms: 61_000,
            priority: Priority::Dispensing,
            snapshot: &snap,
            uptime: Duration::from_secs(61),
            queue_depth: 2,
            stats: &stats,
        };
        let m = r.to_message();
        let json = core::str::from_utf8(&m.payload).unwrap();
        assert_eq!(
            json,
            "{\"timestamp\":61000,\"priority\":\"DISPENSING\",\"state\":\"dispensing\",\"pumps\":{\
             \"X\":{\"position\":12.50,\"active\":true,\"dispensed_ml\":3.25},\
             \"Y\":{\"position\":0.00,\"active\":false,\"dispensed_ml\":0.00},\
             \"Z\":{\"position\":0.00,\"active\":false,\"dispensed_ml\":0.00},\
             \"A\":{\"position\":0.00,\"active\":false,\"dispensed_ml\":null}},\
             \"uptime\":61,\"queueDepth\":2,\"freeHeap\":12345,\
             \"tasks\":[{\"name\":\"mqtt\",\"core\":0,\"runMs\":7,\"queue\":2,\"queueCap\":50}]}"
        );
        assert!(m.retain);
        assert_eq!((m.topic.as_str(), m.lane), (topic::STATUS, Lane::Normal));
    }

    #[test]
    fn status_goes_on_the_emergency_lane_in_emergency() {
        let snap = snapshot();
        let stats = StatsReport::default();
        let r = StatusReport {
            timestamp_ms: 0,
            priority: Priority::Emergency,
            snapshot: &snap,
            uptime: Duration::ZERO,
            queue_depth: 0,
            stats: &stats,
        };
        assert_eq!(r.to_message().lane, Lane::Emergency);
    }

    #[test]
    fn a_status_with_too_many_tasks_leaves_the_task_list_out() {
        let snap = PumpSnapshot {
            pumps: [PumpStatus {
                position_mm: -f32::MAX,
                active: true,
                dispensed_ml: -f32::MAX,
            }; PUMPS],
            state: heapless::String::try_from("x".repeat(STATE_MAX).as_str()).unwrap(),
        };
        let mut stats = StatsReport::default();
        while stats
            .tasks
            .push(TaskStats {
                name: "a_rather_long_task_name_for_the_test",
                core: Some(1),
                run_time: Duration::MAX,
                queue_depth: u16::MAX,
                queue_capacity: u16::MAX,
            })
            .is_ok()
        {}
        let r = StatusReport {
            timestamp_ms: u64::MAX,
            priority: Priority::Idle,
            snapshot: &snap,
            uptime: Duration::MAX,
            queue_depth: u16::MAX,
            stats: &stats,
        };
        let m = r.to_message();
        let json = core::str::from_utf8(&m.payload).unwrap();
        assert!(json.ends_with("\"freeHeap\":null}"), "{json}");
        let reply = r.http_reply();
        assert_eq!(reply.code, 200);
        assert!(reply.body.ends_with("\"freeHeap\":null}"));
    }

    #[test]
    fn status_task_publishes_the_latest_snapshot_and_speeds_up_on_emergency() {
        let outbox: SharedOutbox<NoopRawMutex, 50, 8> = SharedOutbox::new(DrainConfig::DEFAULT);
        let gov: Governor<NoopRawMutex, 2> = Governor::new();
        let watch: Watch<NoopRawMutex, PumpSnapshot, 1> = Watch::new();
        watch.sender().send(snapshot());
        let clock = TestClock::default();
        let mut t = StatusTask::new(
            &outbox,
            &gov,
            watch.dyn_anon_receiver(),
            NoStats,
            &clock,
            Instant::ZERO,
        )
        .unwrap();
        let step = |t: &mut StatusTask<'_, _, _, _, 2, 50, 8>| {
            assert!(embassy_futures::poll_once(core::pin::pin!(t.step())).is_ready());
        };
        step(&mut t);
        assert_eq!(clock.now(), s(30), "next IDLE status in 30 s");
        assert_eq!(outbox.with(|o| o.len()), 1);
        gov.emergency(Reason::EmergencyStop);
        step(&mut t);
        assert_eq!(clock.now(), s(31), "published at once, next in 1 s");
        let lanes = outbox.with(|o| (o.len(), o.emergency_len()));
        assert_eq!(lanes, (1, 1));
        let sent = outbox.with(|o| match o.poll_drain(Priority::Emergency, s(31)) {
            Drain::Send(q) => String::from_utf8(q.msg.payload.to_vec()).unwrap(),
            other => panic!("{other:?}"),
        });
        assert!(sent.contains("\"priority\":\"EMERGENCY\""), "{sent}");
        assert!(sent.contains("\"state\":\"dispensing\""), "{sent}");
    }
}
