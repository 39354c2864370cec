//! The MQTT outbox: every message the pump controller publishes waits here, and the MQTT task
//! drains it at the rate the priority allows.
//!
//! # Shape
//! * [`Outbox`] is the sans-IO core: [`Outbox::push`] in, [`Outbox::poll_drain`] out (the next
//!   message to publish, or the instant to come back), then [`Outbox::sent`] or
//!   [`Outbox::failed`] with the publish result. A message stays queued until it is sent, so
//!   when the broker is unreachable it is retried (with a backoff), never lost silently.
//! * [`SharedOutbox`] puts an outbox behind a blocking mutex with a wake-up [`Signal`], so any
//!   task (pump control, the E-stop handler, the status publisher) can push, and only the
//!   [`MqttTask`] publishes. Nobody publishes around it: the design sketch's button handler
//!   did, and so bypassed both the queue and the drain policy.
//!
//! # Lanes
//! Two fixed-size lanes ([`Lane`]): the *emergency* lane (alarms, and status while in EMERGENCY)
//! always drains first, at any priority, without a rate limit; the *normal* lane drains in
//! order, at the priority's rate. An emergency message therefore never waits behind normal
//! ones, and the normal lane is never reordered: it is simply not drained in EMERGENCY. (The
//! sketch's emergency drain popped normal messages and pushed them back at the tail, which
//! reordered them and could spin forever.)
//!
//! # Drain policy ([`DrainConfig`])
//! | priority | normal lane | emergency lane |
//! |---|---|---|
//! | IDLE | up to 10 messages per 10 ms cycle | at once |
//! | DISPENSING | 1 message per 100 ms | at once |
//! | EMERGENCY | held (kept, in order) | at once |
//!
//! A cycle starts at the first send after the previous cycle ended, or when the priority
//! changes (so a new rate applies at once). A failed publish sets a retry deadline with an
//! exponential backoff (100 ms doubling to 5 s) that holds both lanes; a success resets it.
//!
//! # Full policy (per lane), every drop counted in [`OutboxStats`]
//! 1. If the lane holds a [`Kind::Telemetry`] message (status, queue status), the **oldest
//!    telemetry** message is dropped: a newer one of its kind supersedes it anyway.
//! 2. Otherwise, if the new message is telemetry, the **new message** is dropped: telemetry
//!    never displaces an event or an alarm.
//! 3. Otherwise (lane full of events, new event) the **oldest event** is dropped: the newest
//!    news wins, as in the crate's [`FullPolicy::DropOldest`](crate::queue::FullPolicy).
//!
//! # Memory
//! Entries are fixed size (topic in a `heapless::String<64>`, payload in a
//! `heapless::Vec<u8, 768>`), so the outbox is one static block with no allocation per message
//! (the sketch `malloc`ed each one and fragmented the heap). The default outbox (50 + 8 entries)
//! is about 50 KiB; a board short of RAM picks smaller `N`/`E` or [`PAYLOAD_MAX`].
use core::cell::RefCell;
use core::fmt::{self, Write};

use embassy_futures::select::{Either3, select3};
use embassy_sync::blocking_mutex::Mutex as BlockingMutex;
use embassy_sync::blocking_mutex::raw::RawMutex;
use embassy_sync::signal::Signal;
use embassy_sync::watch::Receiver;
use heapless::Deque;

use super::arch::ArchOption;
use super::governor::{Governor, Priority, Transition};
use super::identity::Identity;
use crate::ports::{Clock, MqttPort, MqttQos};
use crate::time::{Duration, Instant};

/// Longest topic, bytes.
pub const TOPIC_MAX: usize = 64;
/// Longest payload, bytes.
pub const PAYLOAD_MAX: usize = 768;
/// Normal-lane capacity of the default outbox (the sketch's 50-entry FreeRTOS queue).
pub const DEFAULT_CAPACITY: usize = 50;
/// Emergency-lane capacity of the default outbox.
pub const EMERGENCY_CAPACITY: usize = 8;

/// The topics the pump controller publishes and subscribes to, under its
/// [`Identity`](super::identity::Identity)'s prefix (`pump/controller/` by default): a message
/// carries one of these, and the MQTT task prefixes it when it publishes.
pub mod topic {
    /// Retained status JSON.
    pub const STATUS: &str = "status";
    /// Alarms (E-stop, machine alarm), emergency lane.
    pub const ALARM: &str = "alarm";
    /// Outbox health.
    pub const QUEUE_STATUS: &str = "queue/status";
    /// Dispense events (started, stopped).
    pub const DISPENSE_EVENT: &str = "dispense/event";
    /// Dispense completed.
    pub const DISPENSE_COMPLETE: &str = "dispense/complete";
    /// Recipe started.
    pub const RECIPE_START: &str = "recipe/start";
    /// Recipe completed.
    pub const RECIPE_COMPLETE: &str = "recipe/complete";
    /// Commands in (subscribed).
    pub const COMMAND: &str = "command";
    /// Every topic above.
    pub const ALL: [&str; 8] = [
        STATUS,
        ALARM,
        QUEUE_STATUS,
        DISPENSE_EVENT,
        DISPENSE_COMPLETE,
        RECIPE_START,
        RECIPE_COMPLETE,
        COMMAND,
    ];
}

/// Which lane a message waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Lane {
    /// Drained in order at the priority's rate; held in EMERGENCY.
    Normal,
    /// Drained first, at once, at any priority.
    Emergency,
}

/// What a message is, for the full policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Kind {
    /// One-off news (alarm, dispense event): dropped only when the lane is full of events.
    Event,
    /// Periodic state (status, queue status): a newer one supersedes it, so it is dropped first.
    Telemetry,
}

/// Why a message could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum MessageError {
    /// The topic is longer than [`TOPIC_MAX`].
    TopicTooLong,
    /// The payload is longer than [`PAYLOAD_MAX`].
    PayloadTooLong,
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MessageError::TopicTooLong => "MQTT topic too long",
            MessageError::PayloadTooLong => "MQTT payload too long",
        })
    }
}

impl core::error::Error for MessageError {}

/// One MQTT message, fixed size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic under the controller's prefix (one of [`topic`]'s).
    pub topic: heapless::String<TOPIC_MAX>,
    /// Payload bytes (JSON for every topic we publish).
    pub payload: heapless::Vec<u8, PAYLOAD_MAX>,
    /// QoS to publish with.
    pub qos: MqttQos,
    /// Retained on the broker.
    pub retain: bool,
    /// Lane.
    pub lane: Lane,
    /// Kind, for the full policy.
    pub kind: Kind,
}

impl Message {
    /// A message with every field given.
    pub fn new(
        topic: &str,
        payload: &[u8],
        qos: MqttQos,
        retain: bool,
        lane: Lane,
        kind: Kind,
    ) -> Result<Message, MessageError> {
        let mut t = heapless::String::new();
        t.push_str(topic).map_err(|_| MessageError::TopicTooLong)?;
        let p = heapless::Vec::from_slice(payload).map_err(|_| MessageError::PayloadTooLong)?;
        Ok(Message {
            topic: t,
            payload: p,
            qos,
            retain,
            lane,
            kind,
        })
    }

    /// An alarm: emergency lane, QoS 1, not retained.
    pub fn alarm(topic: &str, payload: &[u8]) -> Result<Message, MessageError> {
        Self::new(
            topic,
            payload,
            MqttQos::AtLeastOnce,
            false,
            Lane::Emergency,
            Kind::Event,
        )
    }

    /// An event: normal lane, QoS 1, not retained.
    pub fn event(topic: &str, payload: &[u8]) -> Result<Message, MessageError> {
        Self::new(
            topic,
            payload,
            MqttQos::AtLeastOnce,
            false,
            Lane::Normal,
            Kind::Event,
        )
    }

    /// Telemetry: QoS 0 in `lane`, retained or not.
    pub fn telemetry(
        topic: &str,
        payload: &[u8],
        retain: bool,
        lane: Lane,
    ) -> Result<Message, MessageError> {
        Self::new(
            topic,
            payload,
            MqttQos::AtMostOnce,
            retain,
            lane,
            Kind::Telemetry,
        )
    }
}

/// An alarm on [`topic::ALARM`] (emergency lane, QoS 1):
/// `{"eventType":"EMERGENCY_STOP","trigger":"Button","timestamp":1234}` (ms since boot).
///
/// The E-stop handler pushes this into the [`SharedOutbox`] (never publishes itself); the MQTT
/// task sends it ahead of everything queued. Characters of `event_type` / `trigger` that would
/// need JSON escaping are replaced by `_`; names longer than the payload are cut.
pub fn alarm_message(event_type: &str, trigger: &str, now: Instant) -> Message {
    let mut s: heapless::String<PAYLOAD_MAX> = heapless::String::new();
    let r: fmt::Result = (|| {
        s.write_str("{\"eventType\":\"")?;
        super::stats::write_json_safe(&mut s, event_type)?;
        s.write_str("\",\"trigger\":\"")?;
        super::stats::write_json_safe(&mut s, trigger)?;
        write!(s, "\",\"timestamp\":{}}}", now.as_millis())
    })();
    if r.is_err() {
        s.clear();
        let _ = write!(
            s,
            "{{\"eventType\":\"ALARM\",\"timestamp\":{}}}",
            now.as_millis()
        );
    }
    Message {
        topic: fixed_topic(topic::ALARM),
        payload: heapless::Vec::from_slice(s.as_bytes()).unwrap_or_default(),
        qos: MqttQos::AtLeastOnce,
        retain: false,
        lane: Lane::Emergency,
        kind: Kind::Event,
    }
}

/// Identity of a queued message, for [`Outbox::sent`] / [`Outbox::failed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MsgId(pub u32);

/// A message in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// Identity (increases with every push).
    pub id: MsgId,
    /// When it was pushed.
    pub queued_at: Instant,
    /// The message.
    pub msg: Message,
}

/// What [`Outbox::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[must_use = "a drop is counted, but the caller may want to log it"]
pub enum Pushed {
    /// Queued; nothing dropped.
    Queued(MsgId),
    /// Queued; an older message of this kind was dropped to make room.
    Displaced {
        /// The new message.
        id: MsgId,
        /// What was dropped.
        dropped: Kind,
    },
    /// The lane was full of events and the new message was telemetry: it was dropped.
    DroppedNew,
}

/// The outbox's counters. They wrap at `u32::MAX`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct OutboxStats {
    /// Messages pushed (queued or dropped).
    pub pushed: u32,
    /// Messages published.
    pub sent: u32,
    /// Publish attempts that failed (messages kept for retry).
    pub failed: u32,
    /// Normal-lane messages dropped by the full policy.
    pub dropped_normal: u32,
    /// Emergency-lane messages dropped by the full policy.
    pub dropped_emergency: u32,
    /// Of all drops, how many were telemetry.
    pub dropped_telemetry: u32,
    /// Of all drops, how many were events.
    pub dropped_events: u32,
    /// Largest normal-lane depth seen.
    pub high_water: u16,
}

impl OutboxStats {
    /// Every dropped message.
    pub fn dropped(&self) -> u32 {
        self.dropped_normal.wrapping_add(self.dropped_emergency)
    }
}

/// The drain rates (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DrainConfig {
    /// Cycle length at IDLE.
    pub idle_cycle: Duration,
    /// Normal messages per IDLE cycle.
    pub idle_budget: u16,
    /// Cycle length at DISPENSING.
    pub dispensing_cycle: Duration,
    /// Normal messages per DISPENSING cycle.
    pub dispensing_budget: u16,
    /// First retry delay after a failed publish.
    pub retry_min: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
}

impl DrainConfig {
    /// IDLE 10 per 10 ms, DISPENSING 1 per 100 ms, retry 100 ms doubling to 5 s.
    pub const DEFAULT: DrainConfig = DrainConfig {
        idle_cycle: Duration::from_millis(10),
        idle_budget: 10,
        dispensing_cycle: Duration::from_millis(100),
        dispensing_budget: 1,
        retry_min: Duration::from_millis(100),
        retry_max: Duration::from_secs(5),
    };

    /// `(cycle, budget)` for the normal lane at `p`; `None` in EMERGENCY (held).
    pub const fn rate(&self, p: Priority) -> Option<(Duration, u16)> {
        match p {
            Priority::Idle => Some((self.idle_cycle, self.idle_budget)),
            Priority::Dispensing => Some((self.dispensing_cycle, self.dispensing_budget)),
            Priority::Emergency => None,
        }
    }
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What [`Outbox::poll_drain`] asks of the MQTT task.
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub enum Drain<'a> {
    /// Publish this message now, then report [`Outbox::sent`] or [`Outbox::failed`].
    Send(&'a Queued),
    /// Nothing may be sent before this instant (rate limit or retry backoff); come back then,
    /// or earlier on a push or a priority change.
    WaitUntil(Instant),
    /// Nothing sendable at this priority: wait for a push or a priority change.
    Idle,
}

/// Outbox health, published on [`topic::QUEUE_STATUS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct QueueHealth {
    /// Messages in the normal lane.
    pub depth: u16,
    /// Free entries in the normal lane.
    pub spaces: u16,
    /// Messages in the emergency lane.
    pub emergency_depth: u16,
    /// Messages dropped since boot.
    pub drops: u32,
    /// Age of the oldest queued message (zero when empty).
    pub oldest_age: Duration,
    /// The normal lane is more than 80 % full.
    pub warning: bool,
}

impl QueueHealth {
    /// `{"queueDepth":3,"queueSpaces":47,"emergencyDepth":0,"drops":0,"oldestAgeMs":12,"warning":false}`
    pub fn write_json(&self, w: &mut impl Write) -> fmt::Result {
        write!(
            w,
            "{{\"queueDepth\":{},\"queueSpaces\":{},\"emergencyDepth\":{},\"drops\":{},\
             \"oldestAgeMs\":{},\"warning\":{}}}",
            self.depth,
            self.spaces,
            self.emergency_depth,
            self.drops,
            self.oldest_age.as_millis(),
            self.warning
        )
    }

    /// As a telemetry message on the normal lane.
    pub fn to_message(&self) -> Message {
        let mut s: heapless::String<160> = heapless::String::new();
        // 160 bytes hold the longest possible rendering (all fields at their maxima).
        let _ = self.write_json(&mut s);
        Message {
            topic: fixed_topic(topic::QUEUE_STATUS),
            payload: heapless::Vec::from_slice(s.as_bytes()).unwrap_or_default(),
            qos: MqttQos::AtMostOnce,
            retain: false,
            lane: Lane::Normal,
            kind: Kind::Telemetry,
        }
    }
}

/// A topic constant of ours as a fixed string (they are all shorter than [`TOPIC_MAX`]).
pub(crate) fn fixed_topic(t: &str) -> heapless::String<TOPIC_MAX> {
    let mut s = heapless::String::new();
    let _ = s.push_str(t);
    s
}

#[derive(Debug, Clone, Copy)]
struct Cycle {
    start: Instant,
    priority: Priority,
    sent: u16,
}

/// The sans-IO outbox: `N` normal entries, `E` emergency entries.
///
/// Call order: [`push`](Self::push) at any time; the MQTT task loops on
/// [`poll_drain`](Self::poll_drain), publishes what it gets, and reports the result with
/// [`sent`](Self::sent) or [`failed`](Self::failed) before polling again.
pub struct Outbox<const N: usize = DEFAULT_CAPACITY, const E: usize = EMERGENCY_CAPACITY> {
    normal: Deque<Queued, N>,
    emergency: Deque<Queued, E>,
    next_id: u32,
    stats: OutboxStats,
    config: DrainConfig,
    cycle: Option<Cycle>,
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl<const N: usize, const E: usize> Default for Outbox<N, E> {
    fn default() -> Self {
        Self::new(DrainConfig::DEFAULT)
    }
}

impl<const N: usize, const E: usize> Outbox<N, E> {
    /// An empty outbox. `const`, so it can live in a `static`.
    pub const fn new(config: DrainConfig) -> Self {
        Outbox {
            normal: Deque::new(),
            emergency: Deque::new(),
            next_id: 0,
            stats: OutboxStats {
                pushed: 0,
                sent: 0,
                failed: 0,
                dropped_normal: 0,
                dropped_emergency: 0,
                dropped_telemetry: 0,
                dropped_events: 0,
                high_water: 0,
            },
            config,
            cycle: None,
            retry_at: None,
            backoff: config.retry_min,
        }
    }

    /// Queue `msg`, applying the full policy of the module docs when its lane is full.
    pub fn push(&mut self, msg: Message, now: Instant) -> Pushed {
        self.stats.pushed = self.stats.pushed.wrapping_add(1);
        let id = MsgId(self.next_id);
        self.next_id = self.next_id.wrapping_add(1);
        let lane = msg.lane;
        let entry = Queued {
            id,
            queued_at: now,
            msg,
        };
        let outcome = match lane {
            Lane::Normal => push_lane(&mut self.normal, entry),
            Lane::Emergency => push_lane(&mut self.emergency, entry),
        };
        let dropped = match outcome {
            Pushed::Queued(_) => None,
            Pushed::Displaced { dropped, .. } => Some(dropped),
            Pushed::DroppedNew => Some(Kind::Telemetry),
        };
        if let Some(kind) = dropped {
            let s = &mut self.stats;
            match lane {
                Lane::Normal => s.dropped_normal = s.dropped_normal.wrapping_add(1),
                Lane::Emergency => s.dropped_emergency = s.dropped_emergency.wrapping_add(1),
            }
            match kind {
                Kind::Telemetry => s.dropped_telemetry = s.dropped_telemetry.wrapping_add(1),
                Kind::Event => s.dropped_events = s.dropped_events.wrapping_add(1),
            }
            warn!("outbox: {:?} lane full, dropped a {:?} message", lane, kind);
        }
        self.stats.high_water = self.stats.high_water.max(self.normal.len() as u16);
        outcome
    }

    /// The next message to publish at `priority`, or when to come back.
    pub fn poll_drain(&mut self, priority: Priority, now: Instant) -> Drain<'_> {
        let sendable = !self.emergency.is_empty()
            || (priority != Priority::Emergency && !self.normal.is_empty());
        if !sendable {
            return Drain::Idle;
        }
        if let Some(at) = self.retry_at
            && now < at
        {
            return Drain::WaitUntil(at);
        }
        if let Some(front) = self.emergency.front() {
            return Drain::Send(front);
        }
        let Some((period, budget)) = self.config.rate(priority) else {
            return Drain::Idle;
        };
        let cycle = match self.cycle {
            Some(c) if c.priority == priority && now < c.start + period => c,
            _ => Cycle {
                start: now,
                priority,
                sent: 0,
            },
        };
        self.cycle = Some(cycle);
        if cycle.sent >= budget {
            return Drain::WaitUntil(cycle.start + period);
        }
        match self.normal.front() {
            Some(front) => Drain::Send(front),
            None => Drain::Idle,
        }
    }

    /// `id` was published: remove it and count it against the cycle's budget.
    pub fn sent(&mut self, id: MsgId, _now: Instant) {
        self.retry_at = None;
        self.backoff = self.config.retry_min;
        if remove_id(&mut self.emergency, id) {
            self.stats.sent = self.stats.sent.wrapping_add(1);
        } else if remove_id(&mut self.normal, id) {
            self.stats.sent = self.stats.sent.wrapping_add(1);
            if let Some(c) = self.cycle.as_mut() {
                c.sent = c.sent.saturating_add(1);
            }
        }
        // Else it was dropped by the full policy while in flight: it was counted there.
    }

    /// Publishing `id` failed: keep it queued and hold the drain until the backoff expires.
    pub fn failed(&mut self, _id: MsgId, now: Instant) {
        self.stats.failed = self.stats.failed.wrapping_add(1);
        self.retry_at = Some(now + self.backoff);
        self.backoff = self.backoff.saturating_mul(2).min(self.config.retry_max);
    }

    /// Counters.
    pub fn stats(&self) -> OutboxStats {
        self.stats
    }

    /// Messages in the normal lane.
    pub fn len(&self) -> usize {
        self.normal.len()
    }

    /// Messages in the emergency lane.
    pub fn emergency_len(&self) -> usize {
        self.emergency.len()
    }

    /// Whether both lanes are empty.
    pub fn is_empty(&self) -> bool {
        self.normal.is_empty() && self.emergency.is_empty()
    }

    /// Normal-lane capacity.
    pub const fn capacity(&self) -> usize {
        N
    }

    /// Health for [`topic::QUEUE_STATUS`].
    pub fn health(&self, now: Instant) -> QueueHealth {
        let oldest = [self.normal.front(), self.emergency.front()]
            .into_iter()
            .flatten()
            .map(|q| q.queued_at)
            .min();
        let depth = self.normal.len();
        QueueHealth {
            depth: depth as u16,
            spaces: (N - depth) as u16,
            emergency_depth: self.emergency.len() as u16,
            drops: self.stats.dropped(),
            oldest_age: oldest.map_or(Duration::ZERO, |t| now - t),
            warning: depth * 5 > N * 4,
        }
    }

    /// Queued messages, emergency lane first, each lane in drain order (for the visual).
    pub fn iter(&self) -> impl Iterator<Item = &Queued> {
        self.emergency.iter().chain(self.normal.iter())
    }
}

/// Push into one lane with the full policy of the module docs.
fn push_lane<const C: usize>(lane: &mut Deque<Queued, C>, entry: Queued) -> Pushed {
    let id = entry.id;
    if !lane.is_full() {
        // Cannot fail: there is room.
        let _ = lane.push_back(entry);
        return Pushed::Queued(id);
    }
    let victim = lane.iter().position(|q| q.msg.kind == Kind::Telemetry).or(
        if entry.msg.kind == Kind::Telemetry {
            None
        } else {
            Some(0)
        },
    );
    let Some(victim) = victim else {
        return Pushed::DroppedNew;
    };
    let dropped = lane.get(victim).map_or(Kind::Event, |q| q.msg.kind);
    remove_at(lane, victim);
    let _ = lane.push_back(entry);
    Pushed::Displaced { id, dropped }
}

fn remove_at<const C: usize>(lane: &mut Deque<Queued, C>, index: usize) {
    if index == 0 {
        lane.pop_front();
        return;
    }
    let mut i = 0;
    lane.retain(|_| {
        let keep = i != index;
        i += 1;
        keep
    });
}

fn remove_id<const C: usize>(lane: &mut Deque<Queued, C>, id: MsgId) -> bool {
    if lane.front().is_some_and(|q| q.id == id) {
        lane.pop_front();
        return true;
    }
    match lane.iter().position(|q| q.id == id) {
        Some(i) => {
            remove_at(lane, i);
            true
        }
        None => false,
    }
}

/// Publishes the outbox health on [`topic::QUEUE_STATUS`]: every `interval` at IDLE (the
/// sketch's "idle priority" report), and at once, at any priority, when the normal lane goes
/// above 80 % full (once per excursion).
#[derive(Debug, Clone, Copy)]
pub struct HealthReporter {
    interval: Duration,
    next_due: Instant,
    warned: bool,
}

impl HealthReporter {
    /// Default period of the IDLE report.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

    /// A reporter whose first periodic report is due at `first_due`.
    pub const fn new(interval: Duration, first_due: Instant) -> Self {
        HealthReporter {
            interval,
            next_due: first_due,
            warned: false,
        }
    }

    /// A health message to push now, if one is due.
    pub fn poll(
        &mut self,
        health: &QueueHealth,
        priority: Priority,
        now: Instant,
    ) -> Option<Message> {
        if health.warning && !self.warned {
            self.warned = true;
            warn!(
                "outbox above 80 % full: {} queued, {} dropped",
                health.depth, health.drops
            );
            return Some(health.to_message());
        }
        if !health.warning {
            self.warned = false;
        }
        if priority == Priority::Idle && now >= self.next_due {
            self.next_due = now + self.interval;
            return Some(health.to_message());
        }
        None
    }

    /// When the next periodic report is due at `priority` (`None`: not at this priority).
    pub fn next_deadline(&self, priority: Priority) -> Option<Instant> {
        (priority == Priority::Idle).then_some(self.next_due)
    }
}

/// An [`Outbox`] shared between tasks: any task pushes, the [`MqttTask`] drains.
///
/// `M` is `CriticalSectionRawMutex` when pushers run on another core or in an interrupt,
/// `NoopRawMutex` when everything shares one executor.
pub struct SharedOutbox<
    M: RawMutex,
    const N: usize = DEFAULT_CAPACITY,
    const E: usize = EMERGENCY_CAPACITY,
> {
    inner: BlockingMutex<M, RefCell<Outbox<N, E>>>,
    pushed: Signal<M, ()>,
}

impl<M: RawMutex, const N: usize, const E: usize> SharedOutbox<M, N, E> {
    /// An empty shared outbox. `const`, so it can live in a `static`.
    pub const fn new(config: DrainConfig) -> Self {
        SharedOutbox {
            inner: BlockingMutex::new(RefCell::new(Outbox::new(config))),
            pushed: Signal::new(),
        }
    }

    /// Queue `msg` and wake the MQTT task. Never waits.
    pub fn push(&self, msg: Message, now: Instant) -> Pushed {
        let r = self.with(|o| o.push(msg, now));
        self.pushed.signal(());
        r
    }

    /// Run `f` on the outbox under the lock. `f` must not push through `self` (it would
    /// re-borrow the `RefCell` and panic); it gets the outbox itself for that.
    pub fn with<R>(&self, f: impl FnOnce(&mut Outbox<N, E>) -> R) -> R {
        self.inner.lock(|cell| f(&mut cell.borrow_mut()))
    }

    /// Health for [`topic::QUEUE_STATUS`].
    pub fn health(&self, now: Instant) -> QueueHealth {
        self.with(|o| o.health(now))
    }

    /// Counters.
    pub fn stats(&self) -> OutboxStats {
        self.with(|o| o.stats())
    }
}

// Short-lived, on the task's stack: boxing would need an allocator.
#[allow(clippy::large_enum_variant)]
enum Next {
    Send(Queued),
    Wait(Option<Instant>),
}

/// The MQTT task: drains a [`SharedOutbox`] into an [`MqttPort`] at the rate the governor's
/// priority allows (as mapped by the [`ArchOption`]), and publishes the outbox health.
///
/// It waits on deadlines, pushes and governor changes, never on a polling tick, so an idle
/// outbox costs nothing.
pub struct MqttTask<'a, M: RawMutex, P, C, const W: usize, const N: usize, const E: usize> {
    outbox: &'a SharedOutbox<M, N, E>,
    governor: &'a Governor<M, W>,
    changes: Receiver<'a, M, Transition, W>,
    port: P,
    clock: C,
    arch: ArchOption,
    identity: &'a Identity,
    health: HealthReporter,
}

impl<'a, M, P, C, const W: usize, const N: usize, const E: usize> MqttTask<'a, M, P, C, W, N, E>
where
    M: RawMutex,
    P: MqttPort,
    C: Clock,
{
    /// A task over `outbox` and `port`, publishing under `identity`'s prefix; `None` when the
    /// governor has no receiver slot left.
    pub fn new(
        outbox: &'a SharedOutbox<M, N, E>,
        governor: &'a Governor<M, W>,
        port: P,
        clock: C,
        arch: ArchOption,
        identity: &'a Identity,
    ) -> Option<Self> {
        let changes = governor.changed()?;
        let first = clock.now() + HealthReporter::DEFAULT_INTERVAL;
        Some(MqttTask {
            outbox,
            governor,
            changes,
            port,
            clock,
            arch,
            identity,
            health: HealthReporter::new(HealthReporter::DEFAULT_INTERVAL, first),
        })
    }

    /// The port (tests and the simulator inspect it).
    pub fn port(&self) -> &P {
        &self.port
    }

    /// Run forever.
    pub async fn run(&mut self) -> ! {
        loop {
            self.step().await;
        }
    }

    /// One turn: publish one message, or wait for the next deadline, push or priority change.
    pub async fn step(&mut self) {
        let now = self.clock.now();
        let priority = self.arch.drain_priority(self.governor.get());
        let health = self.outbox.health(now);
        if let Some(msg) = self.health.poll(&health, priority, now) {
            let _ = self.outbox.with(|o| o.push(msg, now));
        }
        let next = self.outbox.with(|o| match o.poll_drain(priority, now) {
            Drain::Send(q) => Next::Send(q.clone()),
            Drain::WaitUntil(t) => Next::Wait(Some(t)),
            Drain::Idle => Next::Wait(None),
        });
        match next {
            Next::Send(q) => {
                let m = &q.msg;
                // Every suffix of ours fits under the longest prefix (tested in `identity`); a
                // topic that still does not fit is published as it is rather than lost.
                let full = self.identity.topic(&m.topic);
                let topic = full.as_deref().unwrap_or(m.topic.as_str());
                let r = self.port.publish(topic, &m.payload, m.qos, m.retain).await;
                let now = self.clock.now();
                match r {
                    Ok(()) => self.outbox.with(|o| o.sent(q.id, now)),
                    Err(_) => {
                        // The port logs its own error details: `P::Error` need not be
                        // `defmt::Format`.
                        warn!("mqtt: publish to {} failed, will retry", m.topic.as_str());
                        self.outbox.with(|o| o.failed(q.id, now));
                    }
                }
            }
            Next::Wait(deadline) => {
                let deadline = match (deadline, self.health.next_deadline(priority)) {
                    (Some(a), Some(b)) => Some(if a < b { a } else { b }),
                    (a, b) => a.or(b),
                };
                let sleep = async {
                    match deadline {
                        Some(t) => self.clock.sleep_until(t).await,
                        None => core::future::pending::<()>().await,
                    }
                };
                match select3(sleep, self.outbox.pushed.wait(), self.changes.changed()).await {
                    Either3::First(()) | Either3::Second(()) => {}
                    Either3::Third(t) => debug!("mqtt: priority now {}", t.priority.name()),
                }
            }
        }
    }
}

/// Test support shared by the pump network modules' tests.
#[cfg(test)]
pub(crate) mod testing {
    use core::cell::Cell;
    use core::future::Future;

    use crate::ports::Clock;
    use crate::time::Instant;

    /// A virtual clock whose sleeps complete at once by jumping to the deadline, so a runner's
    /// `step()` is ready after one poll unless it waits on something else.
    #[derive(Default)]
    pub(crate) struct TestClock {
        pub(crate) now: Cell<Instant>,
    }

    impl Clock for TestClock {
        fn now(&self) -> Instant {
            self.now.get()
        }
        fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> {
            if deadline > self.now.get() {
                self.now.set(deadline);
            }
            core::future::ready(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::TestClock;
    use super::*;
    use embassy_sync::blocking_mutex::raw::NoopRawMutex;
    use proptest::prelude::*;

    const T0: Instant = Instant::ZERO;

    fn ms(v: u64) -> Instant {
        Instant::from_millis(v)
    }

    #[track_caller]
    fn normal(n: u32) -> Message {
        let mut p: heapless::String<16> = heapless::String::new();
        write!(p, "{n}").unwrap();
        Message::event(topic::DISPENSE_EVENT, p.as_bytes()).unwrap()
    }

    fn telemetry(n: u32) -> Message {
        let mut m = normal(n);
        m.kind = Kind::Telemetry;
        m.topic = fixed_topic(topic::STATUS);
        m
    }

    fn alarm(n: u32) -> Message {
        let mut m = normal(n);
        m.lane = Lane::Emergency;
        m.topic = fixed_topic(topic::ALARM);
        m
    }

    fn label(q: &Queued) -> (Lane, u32) {
        let n = core::str::from_utf8(&q.msg.payload)
            .unwrap()
            .parse()
            .unwrap();
        (q.msg.lane, n)
    }

    /// Drain `o` at `p` from `from` until `until` (exclusive), publishing instantly.
    /// Returns what was sent with its send time. Bounded, so a livelock fails the test.
    fn drain<const N: usize, const E: usize>(
        o: &mut Outbox<N, E>,
        p: Priority,
        from: Instant,
        until: Instant,
    ) -> Vec<(Instant, Lane, u32)> {
        let mut now = from;
        let mut out = Vec::new();
        for _ in 0..10_000 {
            if now >= until {
                return out;
            }
            match o.poll_drain(p, now) {
                Drain::Send(q) => {
                    let (lane, n) = label(q);
                    let id = q.id;
                    out.push((now, lane, n));
                    o.sent(id, now);
                }
                Drain::WaitUntil(t) => {
                    assert!(t > now, "a deadline in the past would spin");
                    now = t;
                }
                Drain::Idle => return out,
            }
        }
        panic!("drain did not settle: livelock");
    }

    fn outbox() -> Outbox<50, 8> {
        Outbox::default()
    }

    #[test]
    fn emergency_alarm_never_waits_behind_normal_messages() {
        let mut o = outbox();
        for n in 0..30 {
            assert!(matches!(o.push(normal(n), T0), Pushed::Queued(_)));
        }
        let _ = o.push(alarm(99), T0);
        let sent = drain(&mut o, Priority::Dispensing, T0, ms(1));
        assert_eq!(
            sent.first().map(|s| (s.1, s.2)),
            Some((Lane::Emergency, 99))
        );
    }

    #[test]
    fn alarm_is_sent_at_once_even_when_the_cycle_budget_is_spent() {
        let mut o = outbox();
        for n in 0..5 {
            let _ = o.push(normal(n), T0);
        }
        let sent = drain(&mut o, Priority::Dispensing, T0, ms(50));
        assert_eq!(sent.len(), 1, "DISPENSING budget: one per 100 ms");
        let _ = o.push(alarm(7), ms(50));
        assert!(
            matches!(o.poll_drain(Priority::Dispensing, ms(50)), Drain::Send(q) if q.msg.lane == Lane::Emergency)
        );
    }

    #[test]
    fn emergency_drains_only_the_emergency_lane_and_keeps_normal_order() {
        let mut o = outbox();
        for n in 0..10 {
            let _ = o.push(normal(n), T0);
        }
        let _ = o.push(alarm(100), T0);
        let _ = o.push(alarm(101), T0);
        let sent = drain(&mut o, Priority::Emergency, T0, ms(1000));
        let lanes: Vec<_> = sent.iter().map(|s| (s.1, s.2)).collect();
        assert_eq!(lanes, [(Lane::Emergency, 100), (Lane::Emergency, 101)]);
        assert_eq!(o.len(), 10, "normal messages are held, not dropped");
        let after: Vec<u32> = drain(&mut o, Priority::Idle, ms(1000), ms(2000))
            .iter()
            .map(|s| s.2)
            .collect();
        assert_eq!(after, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn idle_sends_ten_per_ten_millisecond_cycle() {
        let mut o = outbox();
        for n in 0..50 {
            let _ = o.push(normal(n), T0);
        }
        let sent = drain(&mut o, Priority::Idle, T0, ms(100));
        assert_eq!(sent.len(), 50);
        for w in 0..5u64 {
            let in_window = sent
                .iter()
                .filter(|s| s.0 >= ms(w * 10) && s.0 < ms(w * 10 + 10))
                .count();
            assert_eq!(in_window, 10, "window {w}");
        }
        let order: Vec<u32> = sent.iter().map(|s| s.2).collect();
        assert_eq!(order, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn dispensing_sends_one_per_hundred_milliseconds() {
        let mut o = outbox();
        for n in 0..50 {
            let _ = o.push(normal(n), T0);
        }
        let sent = drain(&mut o, Priority::Dispensing, T0, ms(1000));
        assert_eq!(sent.len(), 10);
        let times: Vec<Instant> = sent.iter().map(|s| s.0).collect();
        assert_eq!(times, (0..10).map(|i| ms(i * 100)).collect::<Vec<_>>());
    }

    #[test]
    fn a_priority_change_applies_the_new_rate_at_once() {
        let mut o = outbox();
        for n in 0..20 {
            let _ = o.push(normal(n), T0);
        }
        assert_eq!(drain(&mut o, Priority::Dispensing, T0, ms(10)).len(), 1);
        assert!(matches!(
            o.poll_drain(Priority::Dispensing, ms(10)),
            Drain::WaitUntil(t) if t == ms(100)
        ));
        assert_eq!(drain(&mut o, Priority::Idle, ms(10), ms(20)).len(), 10);
    }

    #[test]
    fn nothing_is_dropped_while_the_outbox_has_room() {
        let mut o = outbox();
        for n in 0..50 {
            assert_eq!(o.push(normal(n), T0), Pushed::Queued(MsgId(n)));
        }
        for n in 0..8 {
            assert!(matches!(o.push(alarm(n), T0), Pushed::Queued(_)));
        }
        assert_eq!(o.stats().dropped(), 0);
        assert_eq!((o.len(), o.emergency_len()), (50, 8));
    }

    #[test]
    fn a_full_lane_drops_the_oldest_telemetry_first_and_counts_it() {
        let mut o: Outbox<4, 2> = Outbox::default();
        let _ = o.push(normal(0), T0);
        let _ = o.push(telemetry(1), T0);
        let _ = o.push(normal(2), T0);
        let _ = o.push(telemetry(3), T0);
        assert!(matches!(
            o.push(normal(4), T0),
            Pushed::Displaced {
                dropped: Kind::Telemetry,
                ..
            }
        ));
        let left: Vec<u32> = o.iter().map(|q| label(q).1).collect();
        assert_eq!(left, [0, 2, 3, 4]);
        let s = o.stats();
        assert_eq!(
            (s.dropped_normal, s.dropped_telemetry, s.dropped()),
            (1, 1, 1)
        );
    }

    #[test]
    fn telemetry_never_displaces_an_event() {
        let mut o: Outbox<3, 2> = Outbox::default();
        for n in 0..3 {
            let _ = o.push(normal(n), T0);
        }
        assert_eq!(o.push(telemetry(9), T0), Pushed::DroppedNew);
        let left: Vec<u32> = o.iter().map(|q| label(q).1).collect();
        assert_eq!(left, [0, 1, 2]);
        assert_eq!(o.stats().dropped_telemetry, 1);
    }

    #[test]
    fn a_lane_full_of_events_drops_the_oldest_event() {
        let mut o: Outbox<3, 2> = Outbox::default();
        for n in 0..4 {
            let _ = o.push(normal(n), T0);
        }
        let left: Vec<u32> = o.iter().map(|q| label(q).1).collect();
        assert_eq!(left, [1, 2, 3]);
        let _ = o.push(alarm(10), T0);
        let _ = o.push(alarm(11), T0);
        let _ = o.push(alarm(12), T0);
        let s = o.stats();
        assert_eq!(
            (s.dropped_normal, s.dropped_emergency, s.dropped_events),
            (1, 1, 2)
        );
    }

    #[test]
    fn a_failed_publish_keeps_the_message_and_retries_after_a_backoff() {
        let mut o = outbox();
        let _ = o.push(normal(0), T0);
        let id = match o.poll_drain(Priority::Idle, T0) {
            Drain::Send(q) => q.id,
            other => panic!("{other:?}"),
        };
        o.failed(id, T0);
        assert_eq!(
            o.poll_drain(Priority::Idle, ms(1)),
            Drain::WaitUntil(ms(100))
        );
        o.failed(id, ms(100));
        assert_eq!(
            o.poll_drain(Priority::Idle, ms(150)),
            Drain::WaitUntil(ms(300))
        );
        assert_eq!(o.len(), 1);
        let sent = drain(&mut o, Priority::Idle, ms(300), ms(400));
        assert_eq!(sent.len(), 1);
        assert_eq!(o.stats().failed, 2);
        // A success resets the backoff.
        let _ = o.push(normal(1), ms(400));
        if let Drain::Send(q) = o.poll_drain(Priority::Idle, ms(400)) {
            let id = q.id;
            o.failed(id, ms(400));
        }
        assert_eq!(
            o.poll_drain(Priority::Idle, ms(401)),
            Drain::WaitUntil(ms(500))
        );
    }

    #[test]
    fn an_unreachable_broker_keeps_messages_bounded_and_sends_them_in_order_later() {
        let mut o = outbox();
        let mut now = T0;
        for n in 0..60 {
            let _ = o.push(normal(n), now);
            if let Drain::Send(q) = o.poll_drain(Priority::Idle, now) {
                let id = q.id;
                o.failed(id, now);
            }
            now += Duration::from_secs(1);
        }
        let s = o.stats();
        assert_eq!((o.len(), s.dropped_normal, s.sent), (50, 10, 0));
        assert!(s.failed > 0);
        let sent: Vec<u32> = drain(&mut o, Priority::Idle, now, now + Duration::from_secs(1))
            .iter()
            .map(|s| s.2)
            .collect();
        assert_eq!(sent, (10..60).collect::<Vec<_>>());
    }

    #[test]
    fn health_reports_depth_drops_age_and_warns_above_80_percent() {
        let mut o: Outbox<10, 2> = Outbox::default();
        for n in 0..8 {
            let _ = o.push(normal(n), ms(n as u64));
        }
        let h = o.health(ms(100));
        assert_eq!((h.depth, h.spaces, h.drops, h.warning), (8, 2, 0, false));
        assert_eq!(h.oldest_age, Duration::from_millis(100));
        let _ = o.push(normal(8), ms(100));
        assert!(o.health(ms(100)).warning);
        let mut s: heapless::String<160> = heapless::String::new();
        o.health(ms(100)).write_json(&mut s).unwrap();
        assert_eq!(
            s.as_str(),
            "{\"queueDepth\":9,\"queueSpaces\":1,\"emergencyDepth\":0,\"drops\":0,\
             \"oldestAgeMs\":100,\"warning\":true}"
        );
    }

    #[test]
    fn health_reporter_warns_once_per_excursion_and_reports_periodically_at_idle() {
        let mut r = HealthReporter::new(Duration::from_secs(10), ms(10_000));
        let mut o: Outbox<10, 2> = Outbox::default();
        assert!(r.poll(&o.health(T0), Priority::Idle, T0).is_none());
        for n in 0..9 {
            let _ = o.push(normal(n), T0);
        }
        let h = o.health(T0);
        let m = r.poll(&h, Priority::Dispensing, T0).expect("warning");
        assert_eq!(m.topic.as_str(), topic::QUEUE_STATUS);
        assert!(r.poll(&h, Priority::Dispensing, T0).is_none(), "once");
        assert!(
            r.poll(&h, Priority::Dispensing, ms(20_000)).is_none(),
            "not periodic unless IDLE"
        );
        assert!(r.poll(&h, Priority::Idle, ms(20_000)).is_some());
        assert_eq!(r.next_deadline(Priority::Idle), Some(ms(30_000)));
    }

    #[test]
    fn queue_health_message_fits_at_the_extremes() {
        let h = QueueHealth {
            depth: u16::MAX,
            spaces: u16::MAX,
            emergency_depth: u16::MAX,
            drops: u32::MAX,
            oldest_age: Duration::MAX,
            warning: false,
        };
        let m = h.to_message();
        assert!(m.payload.ends_with(b"\"warning\":false}"));
    }

    #[test]
    fn alarm_message_is_an_emergency_event_with_the_sketch_fields() {
        let m = alarm_message("EMERGENCY_STOP", "Button", ms(1234));
        assert_eq!(
            (m.topic.as_str(), m.lane, m.kind),
            (topic::ALARM, Lane::Emergency, Kind::Event)
        );
        assert_eq!(
            core::str::from_utf8(&m.payload).unwrap(),
            r#"{"eventType":"EMERGENCY_STOP","trigger":"Button","timestamp":1234}"#
        );
        let long = "x".repeat(2 * PAYLOAD_MAX);
        let m = alarm_message(&long, "\"", ms(1));
        assert_eq!(
            core::str::from_utf8(&m.payload).unwrap(),
            r#"{"eventType":"ALARM","timestamp":1}"#
        );
    }

    #[test]
    fn oversized_messages_are_refused_not_truncated() {
        assert_eq!(
            Message::event(topic::ALARM, &[b'x'; PAYLOAD_MAX + 1]),
            Err(MessageError::PayloadTooLong)
        );
        assert_eq!(
            Message::event(&"t".repeat(TOPIC_MAX + 1), b"{}"),
            Err(MessageError::TopicTooLong)
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(bool, bool),
        Drain(u8, bool),
        Advance(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<bool>(), any::<bool>()).prop_map(|(e, t)| Op::Push(e, t)),
            (0u8..3, any::<bool>()).prop_map(|(p, ok)| Op::Drain(p, ok)),
            (0u16..200).prop_map(Op::Advance),
        ]
    }

    proptest! {
        #[test]
        fn outbox_accounts_for_every_message_and_keeps_lane_order(ops in proptest::collection::vec(op(), 0..300)) {
            let mut o: Outbox<6, 3> = Outbox::default();
            let mut now = T0;
            let mut last_sent = [None::<MsgId>; 2];
            let mut n = 0;
            for op in ops {
                match op {
                    Op::Push(emergency, tele) => {
                        let mut m = if emergency { alarm(n) } else { normal(n) };
                        if tele { m.kind = Kind::Telemetry; }
                        n += 1;
                        let _ = o.push(m, now);
                    }
                    Op::Drain(p, ok) => {
                        let p = [Priority::Idle, Priority::Dispensing, Priority::Emergency][p as usize];
                        let emergency_waiting = o.emergency_len() > 0;
                        if let Drain::Send(q) = o.poll_drain(p, now) {
                            let (id, lane) = (q.id, q.msg.lane);
                            prop_assert!(lane == Lane::Emergency || !emergency_waiting);
                            prop_assert!(p != Priority::Emergency || lane == Lane::Emergency);
                            if ok {
                                let li = (lane == Lane::Emergency) as usize;
                                prop_assert!(last_sent[li] < Some(id), "lane order");
                                last_sent[li] = Some(id);
                                o.sent(id, now);
                            } else {
                                o.failed(id, now);
                            }
                        }
                    }
                    Op::Advance(d) => now += Duration::from_millis(d as u64),
                }
                let s = o.stats();
                prop_assert!(o.len() <= 6 && o.emergency_len() <= 3);
                prop_assert_eq!(s.pushed, s.sent + s.dropped() + (o.len() + o.emergency_len()) as u32);
            }
        }
    }

    // ---- runner ----

    #[derive(Default)]
    struct TestPort {
        published: Vec<(String, String, Instant)>,
        fail_next: u32,
        clock: Option<&'static TestClock>,
    }

    impl MqttPort for TestPort {
        type Error = &'static str;
        async fn publish(
            &mut self,
            topic: &str,
            payload: &[u8],
            _qos: MqttQos,
            _retain: bool,
        ) -> Result<(), &'static str> {
            if self.fail_next > 0 {
                self.fail_next -= 1;
                return Err("broker unreachable");
            }
            let now = self.clock.map_or(T0, |c| c.now());
            self.published.push((
                topic.to_string(),
                String::from_utf8_lossy(payload).into_owned(),
                now,
            ));
            Ok(())
        }
    }

    type Gov = Governor<NoopRawMutex, 2>;
    type Shared = SharedOutbox<NoopRawMutex, 50, 8>;

    fn leak<T>(t: T) -> &'static T {
        Box::leak(Box::new(t))
    }

    fn task(
        arch: ArchOption,
    ) -> (
        &'static Shared,
        &'static Gov,
        &'static TestClock,
        MqttTask<'static, NoopRawMutex, TestPort, &'static TestClock, 2, 50, 8>,
    ) {
        let shared: &'static Shared = leak(SharedOutbox::new(DrainConfig::DEFAULT));
        let gov: &'static Gov = leak(Governor::new());
        let clock: &'static TestClock = leak(TestClock::default());
        let port = TestPort {
            clock: Some(clock),
            ..Default::default()
        };
        let t = MqttTask::new(shared, gov, port, clock, arch, leak(Identity::default())).unwrap();
        (shared, gov, clock, t)
    }

    /// Step the runner until the clock reaches `until` or it blocks (nothing to do and no
    /// deadline: the test clock completes every sleep at once, so pending means blocked).
    fn steps(
        t: &mut MqttTask<'static, NoopRawMutex, TestPort, &'static TestClock, 2, 50, 8>,
        until: Instant,
        clock: &TestClock,
    ) {
        for _ in 0..10_000 {
            if clock.now() >= until {
                return;
            }
            let step = core::pin::pin!(t.step());
            if embassy_futures::poll_once(step).is_pending() {
                return;
            }
        }
        panic!("runner did not reach {until}: livelock");
    }

    #[test]
    fn runner_publishes_the_alarm_before_the_backlog_and_retries_when_the_broker_is_down() {
        let (shared, gov, clock, mut t) = task(ArchOption::Option2);
        gov.request(
            Priority::Dispensing,
            super::super::governor::Reason::DispenseStarted,
        );
        for n in 0..5 {
            let _ = shared.push(normal(n), T0);
        }
        let _ = shared.push(alarm(42), T0);
        t.port.fail_next = 1;
        steps(&mut t, ms(550), clock);
        let p = &t.port().published;
        assert_eq!(
            p[0].0, "pump/controller/alarm",
            "published under the prefix"
        );
        assert_eq!(
            p[0].2,
            ms(100),
            "first attempt failed, retried after 100 ms"
        );
        let normals: Vec<&str> = p[1..].iter().map(|m| m.1.as_str()).collect();
        assert_eq!(normals, ["0", "1", "2", "3", "4"]);
        assert_eq!(shared.stats().failed, 1);
    }

    #[test]
    fn option1_sends_at_idle_rate_while_dispensing_and_option2_throttles() {
        let count = |arch| {
            let (shared, gov, clock, mut t) = task(arch);
            gov.request(
                Priority::Dispensing,
                super::super::governor::Reason::DispenseStarted,
            );
            for n in 0..40 {
                let _ = shared.push(normal(n), T0);
            }
            steps(&mut t, ms(300), clock);
            t.port().published.iter().filter(|m| m.2 < ms(300)).count()
        };
        assert_eq!(count(ArchOption::Option1), 40);
        assert_eq!(count(ArchOption::Option2), 3);
    }

    #[test]
    fn runner_waits_without_spinning_when_nothing_is_queued() {
        let (shared, _gov, _clock, mut t) = task(ArchOption::Option2);
        let _ = shared; // nothing pushed
        // The only deadline is the periodic health report (IDLE): the step sleeps until it.
        assert!(embassy_futures::poll_once(core::pin::pin!(t.step())).is_ready());
        assert_eq!(
            t.clock.now(),
            Instant::ZERO + HealthReporter::DEFAULT_INTERVAL
        );
        assert!(embassy_futures::poll_once(core::pin::pin!(t.step())).is_ready());
        assert_eq!(t.port().published[0].0, "pump/controller/queue/status");
    }
}
