//! The pump controller's network side in the twin: the WiFi link, the MQTT outbox and its
//! governed drain, the status publisher, the WebSocket feed, the command parser, and the fake
//! MQTT broker of deterministic runs.
//!
//! The policies follow DESIGN "Device A": an outbox of 50 messages drained 10 per 10 ms at
//! `IDLE`, 1 per 100 ms while `DISPENSING`, and only emergency messages at `EMERGENCY`
//! (emergency messages have a lane of their own, ahead of everything queued, so the alarm is
//! delivered first and nothing is reordered behind it); status every 30 s / 5 s / 1 s;
//! WebSocket frames at 1 / 5 / 10 Hz. With the governor disabled (architecture option 1) every
//! task behaves as at `IDLE` and the alarm waits in the one FIFO like any other message.
//!
//! **Queue full policies.** The outbox's normal lane drops its oldest message to make room
//! (the newest news matters most), counted in `dropped` and published on
//! `pump/controller/queue/status`. The emergency lane holds [`URGENT_CAP`] messages and drops
//! its oldest likewise (counted in the same counter); it only fills if the broker is unreachable
//! through several emergencies. Commands from MQTT that the motion queue refuses are answered
//! on `pump/controller/command/error` and counted (`commands_refused`).
//!
//! **WiFi.** Each publish charges CPU to the calling task (driver + lwIP + MQTT framing) and
//! occupies the air for its bytes at the link rate, stretched by background traffic; it
//! arrives after the link latency plus seeded jitter, and a lost segment costs a TCP
//! retransmission timeout (TCP never loses data, it is only late). Arrivals keep their order.
//! A disconnected WiFi or a broker that is down refuses the publish: the message stays queued
//! and the MQTT task retries after its reconnect back-off.
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::rc::Rc;

use embassy_futures::select::{Either, select};
use embassy_sync::blocking_mutex::raw::NoopRawMutex;
use embassy_sync::signal::Signal;
use firmware_core::pump::dispense::{AlarmKind, MotionCommand, MotionSnapshot, PumpEvent};
use firmware_core::pump::estop::EstopTrigger;
use firmware_core::pump::{DispenseRequest, Priority, Pump};
use firmware_core::time::{Duration, Instant};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::kernel::{SimClock, Tracer};

/// Capacity of the emergency lane of the outbox.
pub const URGENT_CAP: usize = 8;
/// Topic of the retained status.
pub const TOPIC_STATUS: &str = "pump/controller/status";
/// Topic of alarms.
pub const TOPIC_ALARM: &str = "pump/controller/alarm";
/// Topic of the queue report.
pub const TOPIC_QUEUE: &str = "pump/controller/queue/status";
/// Topic the controller takes commands on.
pub const TOPIC_COMMAND: &str = "pump/controller/command";

type Kick = Signal<NoopRawMutex, ()>;
/// Where delivered messages go besides the trace (the live twin's real broker).
pub type Forward = Box<dyn FnMut(&Msg)>;
/// Where WebSocket frames go (the live twin's server).
pub type FrameSink = Box<dyn FnMut(&str)>;

/// One MQTT message on its way out.
#[derive(Debug, Clone, PartialEq)]
pub struct Msg {
    /// Topic.
    pub topic: String,
    /// JSON payload.
    pub payload: String,
    /// Retained at the broker.
    pub retain: bool,
    /// Goes in the emergency lane.
    pub urgent: bool,
    /// When it entered the outbox.
    pub queued_at: Instant,
}

/// Outbox counters, published on the queue topic and read by scenarios.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OutboxStats {
    /// Messages accepted.
    pub enqueued: u64,
    /// Messages handed to the WiFi link.
    pub sent: u64,
    /// Messages dropped to make room (both lanes).
    pub dropped: u64,
    /// Largest depth seen.
    pub high_water: usize,
}

/// The bounded MQTT outbox (see the module docs for its lanes and full policy).
#[derive(Debug)]
pub struct Outbox {
    normal: VecDeque<Msg>,
    urgent: VecDeque<Msg>,
    capacity: usize,
    lanes: bool,
    /// Counters.
    pub stats: OutboxStats,
}

impl Outbox {
    /// An outbox of `capacity` messages; `lanes` false puts emergency messages in the one FIFO.
    pub fn new(capacity: usize, lanes: bool) -> Self {
        Outbox {
            normal: VecDeque::new(),
            urgent: VecDeque::new(),
            capacity: capacity.max(1),
            lanes,
            stats: OutboxStats::default(),
        }
    }

    /// Messages queued.
    pub fn depth(&self) -> usize {
        self.normal.len() + self.urgent.len()
    }

    /// Free places in the normal lane.
    pub fn spaces(&self) -> usize {
        self.capacity.saturating_sub(self.normal.len())
    }

    /// Queue `msg`, dropping the oldest of its lane when full.
    pub fn offer(&mut self, msg: Msg) {
        let (lane, cap) = if msg.urgent && self.lanes {
            (&mut self.urgent, URGENT_CAP)
        } else {
            (&mut self.normal, self.capacity)
        };
        if lane.len() >= cap {
            lane.pop_front();
            self.stats.dropped += 1;
        }
        lane.push_back(msg);
        self.stats.enqueued += 1;
        self.stats.high_water = self.stats.high_water.max(self.depth());
    }

    /// The next message allowed at `prio`, without removing it.
    pub fn peek(&self, prio: Priority) -> Option<&Msg> {
        self.urgent.front().or(match prio {
            Priority::Emergency => None,
            _ => self.normal.front(),
        })
    }

    /// Remove what [`peek`](Self::peek) showed.
    pub fn pop(&mut self, prio: Priority) -> Option<Msg> {
        if let Some(m) = self.urgent.pop_front() {
            return Some(m);
        }
        match prio {
            Priority::Emergency => None,
            _ => self.normal.pop_front(),
        }
    }
}

/// WiFi link settings (the `wifi` table of the device and the `wifi` action).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WifiConfig {
    /// One-way latency to the broker.
    pub latency: Duration,
    /// Uniform extra latency, drawn per message.
    pub jitter: Duration,
    /// Chance that a message's segment is lost and retransmitted.
    pub loss: f64,
    /// TCP retransmission timeout.
    pub rto: Duration,
    /// Link rate, bits per second.
    pub rate_bps: f64,
    /// CPU per message (driver, lwIP, MQTT framing).
    pub cpu_per_msg: Duration,
    /// CPU per kilobyte of payload.
    pub cpu_per_kb: Duration,
}

impl Default for WifiConfig {
    fn default() -> Self {
        WifiConfig {
            latency: Duration::from_millis(4),
            jitter: Duration::from_millis(2),
            loss: 0.0,
            rto: Duration::from_millis(200),
            rate_bps: 6e6,
            cpu_per_msg: Duration::from_micros(250),
            cpu_per_kb: Duration::from_micros(200),
        }
    }
}

/// Why a publish did not leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The station is not associated.
    #[error("wifi disconnected")]
    WifiDown,
    /// The broker does not accept the connection.
    #[error("broker unreachable")]
    BrokerDown,
}

/// The WiFi link model.
pub struct Wifi {
    /// Settings.
    pub cfg: WifiConfig,
    /// Associated with the access point.
    pub connected: bool,
    /// Airtime fraction taken by other stations (0 to 0.95).
    pub airtime: f64,
    /// CPU fraction of core 0 that background traffic costs (the WiFi task's share).
    pub cpu_load: f64,
    medium_free: Instant,
    last_arrival: Instant,
    rng: ChaCha8Rng,
}

impl Wifi {
    /// A connected link.
    pub fn new(cfg: WifiConfig, rng: ChaCha8Rng) -> Self {
        Wifi {
            cfg,
            connected: true,
            airtime: 0.0,
            cpu_load: 0.0,
            medium_free: Instant::ZERO,
            last_arrival: Instant::ZERO,
            rng,
        }
    }

    /// CPU a message of `bytes` costs its sender.
    pub fn cpu_cost(&self, bytes: usize) -> Duration {
        self.cfg.cpu_per_msg
            + Duration::from_micros(self.cfg.cpu_per_kb.as_micros() * bytes as u64 / 1024)
    }

    /// When a message of `bytes` sent at `now` arrives.
    pub fn transmit(&mut self, now: Instant, bytes: usize) -> Instant {
        let share = (1.0 - self.airtime.clamp(0.0, 0.95)).max(0.05);
        let air = Duration::from_micros(
            ((bytes as f64 + 60.0) * 8.0 / self.cfg.rate_bps / share * 1e6) as u64,
        );
        let start = if self.medium_free > now {
            self.medium_free
        } else {
            now
        };
        self.medium_free = start + air;
        let jitter = match self.cfg.jitter.as_micros() {
            0 => 0,
            j => self.rng.random_range(0..=j),
        };
        let mut arrival = self.medium_free + self.cfg.latency + Duration::from_micros(jitter);
        let loss = self.cfg.loss.clamp(0.0, 0.9) + self.airtime.clamp(0.0, 0.95) * 0.02;
        while self.rng.random_bool(loss) {
            arrival += self.cfg.rto;
        }
        if arrival < self.last_arrival {
            arrival = self.last_arrival;
        }
        self.last_arrival = arrival;
        arrival
    }
}

/// What a deterministic run's broker saw.
#[derive(Default)]
pub struct Broker {
    /// Accepting connections.
    pub up: bool,
    /// Messages on their way in.
    pub inbound: VecDeque<(Instant, Msg)>,
    /// Commands on their way to the controller.
    downlink: VecDeque<(Instant, String)>,
    /// Retained messages by topic.
    pub retained: BTreeMap<String, String>,
    /// Messages delivered.
    pub delivered: u64,
    /// Messages lost in flight when the broker went down.
    pub lost: u64,
    /// Last status delivery.
    last_status: Option<Instant>,
    /// Set on a button edge; the first topic delivered after it lands in `first_after_estop`.
    pub watch_first: bool,
    /// See `watch_first`.
    pub first_after_estop: Option<String>,
    /// Messages delivered per topic.
    pub per_topic: BTreeMap<String, u64>,
    /// Live subscribers (the live twin forwards deliveries to the real broker).
    pub forward: Option<Forward>,
}

impl Broker {
    /// A broker that is up, with nothing retained.
    pub fn new() -> Self {
        Broker {
            up: true,
            ..Broker::default()
        }
    }
}

/// Counters of the network tasks.
#[derive(Debug, Default)]
pub struct NetCounters {
    /// WebSocket frames sent (per client).
    pub ws_frames: Cell<u64>,
    /// Commands parsed from MQTT.
    pub commands: Cell<u64>,
    /// Commands that did not parse.
    pub commands_bad: Cell<u64>,
    /// Commands the motion queue refused.
    pub commands_refused: Cell<u64>,
    /// Publish attempts refused by the link.
    pub publish_failures: Cell<u64>,
    /// Sum of the last `Resumed` event's amounts.
    pub resumed_ml: Cell<f64>,
}

/// What the network side knows and shares between its tasks.
pub struct Net {
    /// Device name (trace prefix).
    pub name: String,
    /// Clock.
    pub clock: SimClock,
    /// Trace.
    pub tracer: Tracer,
    /// The outbox.
    pub outbox: RefCell<Outbox>,
    /// The WiFi link.
    pub wifi: RefCell<Wifi>,
    /// The fake broker.
    pub broker: RefCell<Broker>,
    /// Whether the governor throttles the network (options 2 and 3).
    pub governed: bool,
    /// The priority as the network side sees it.
    pub priority: Cell<Priority>,
    /// The latest snapshot as the network side sees it.
    pub snapshot: Cell<MotionSnapshot>,
    /// The first snapshot change not yet shown on the WebSocket.
    pub unshown_since: Cell<Option<Instant>>,
    /// WebSocket clients connected.
    pub ws_clients: Cell<u32>,
    /// MQTT session up.
    pub mqtt_connected: Cell<bool>,
    /// Counters.
    pub counters: NetCounters,
    /// Commands received from the broker, not yet parsed.
    pub inbox: RefCell<VecDeque<String>>,
    /// Wakes the MQTT task (new message, priority change, reconnect).
    pub mqtt_kick: Kick,
    /// Wakes the status task on a priority change.
    pub status_kick: Kick,
    /// Wakes the WebSocket task on a priority change or a new client.
    pub ws_kick: Kick,
    /// Wakes the broker (a new message in flight).
    pub broker_kick: Kick,
    /// Wakes the command task.
    pub cmd_kick: Kick,
    /// Hands a parsed command to the motion side; false when refused.
    pub submit: RefCell<Box<dyn FnMut(MotionCommand) -> bool>>,
    /// What a live WebSocket server sends to its clients, if one runs.
    pub ws_sink: RefCell<Option<FrameSink>>,
    /// Per-lane policy timing.
    pub timing: NetTiming,
}

/// The network tasks' periods, by priority.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NetTiming {
    /// Status interval at IDLE, DISPENSING, EMERGENCY.
    pub status: [Duration; 3],
    /// WebSocket frame period at IDLE, DISPENSING, EMERGENCY.
    pub ws: [Duration; 3],
    /// Outbox drain: messages per cycle and cycle length at IDLE and DISPENSING.
    pub drain: [(u32, Duration); 2],
    /// MQTT reconnect back-off.
    pub reconnect: Duration,
    /// CPU to build a status or WebSocket frame.
    pub cpu_frame: Duration,
}

impl Default for NetTiming {
    fn default() -> Self {
        NetTiming {
            status: [
                Duration::from_secs(30),
                Duration::from_secs(5),
                Duration::from_secs(1),
            ],
            ws: [
                Duration::from_millis(1000),
                Duration::from_millis(200),
                Duration::from_millis(100),
            ],
            drain: [
                (10, Duration::from_millis(10)),
                (1, Duration::from_millis(100)),
            ],
            reconnect: Duration::from_secs(2),
            cpu_frame: Duration::from_micros(150),
        }
    }
}

fn level(p: Priority) -> usize {
    match p {
        Priority::Idle => 0,
        Priority::Dispensing => 1,
        Priority::Emergency => 2,
    }
}

impl Net {
    /// The priority the throttled tasks obey: the real one, or `IDLE` without the governor.
    pub fn throttle(&self) -> Priority {
        if self.governed {
            self.priority.get()
        } else {
            Priority::Idle
        }
    }

    fn metric(&self, what: &str) -> String {
        format!("{}.{what}", self.name)
    }

    /// Queue a message (the firmware side of a publish).
    pub fn enqueue(&self, topic: &str, payload: String, retain: bool, urgent: bool) {
        let depth = {
            let mut ob = self.outbox.borrow_mut();
            ob.offer(Msg {
                topic: topic.to_owned(),
                payload,
                retain,
                urgent,
                queued_at: self.clock.now(),
            });
            ob.depth()
        };
        self.tracer
            .sample(&self.metric("queue.depth"), depth as f64);
        self.mqtt_kick.signal(());
    }

    /// A new priority seen by the bridge: wake the throttled tasks.
    pub fn set_priority(&self, p: Priority) {
        if self.priority.replace(p) != p {
            self.tracer
                .record(&self.metric("net"), format!("priority {}", p.name()));
            self.mqtt_kick.signal(());
            self.status_kick.signal(());
            self.ws_kick.signal(());
        }
    }

    /// A new snapshot seen by the bridge.
    pub fn set_snapshot(&self, s: MotionSnapshot) {
        if self.snapshot.replace(s) != s && self.unshown_since.get().is_none() {
            self.unshown_since.set(Some(self.clock.now()));
        }
    }

    /// Turn a motion event into its MQTT message.
    pub fn publish_event(&self, ev: &PumpEvent) {
        if let PumpEvent::Resumed { dispensed_ml } = ev {
            self.counters
                .resumed_ml
                .set(dispensed_ml.iter().map(|&v| f64::from(v)).sum());
        }
        let (topic, payload) = event_message(ev);
        let urgent = matches!(ev, PumpEvent::Alarm(_)) || ev.is_emergency();
        self.enqueue(topic, payload, false, urgent);
    }

    /// The status JSON.
    pub fn status_json(&self) -> String {
        let s = self.snapshot.get();
        let mut out = format!(
            "{{\"state\":\"{}\",\"pumps\":{{",
            self.priority.get().name()
        );
        for p in Pump::ALL {
            let st = s.pumps[p.index()];
            let _ = write!(
                out,
                "{}\"{}\":{{\"position\":{:.3},\"active\":{},\"dispensed_ml\":{:.3}}}",
                if p.index() == 0 { "" } else { "," },
                p.axis(),
                st.position_mm,
                st.active,
                st.dispensed_ml
            );
        }
        let ob = self.outbox.borrow();
        let _ = write!(
            out,
            "}},\"queueDepth\":{},\"dropped\":{},\"uptime_s\":{}}}",
            ob.depth(),
            ob.stats.dropped,
            self.clock.now().as_millis() / 1000
        );
        out
    }

    fn queue_json(&self) -> String {
        let ob = self.outbox.borrow();
        format!(
            "{{\"queueDepth\":{},\"queueSpaces\":{},\"dropped\":{}}}",
            ob.depth(),
            ob.spaces(),
            ob.stats.dropped
        )
    }

    /// The MQTT task: drains the outbox through WiFi at the governed rate.
    pub async fn mqtt_task(self: Rc<Self>) {
        loop {
            let prio = self.throttle();
            let (budget, period) = match prio {
                Priority::Idle => self.timing.drain[0],
                Priority::Dispensing => self.timing.drain[1],
                Priority::Emergency => (u32::MAX, self.timing.drain[0].1),
            };
            let mut sent = 0;
            let mut failed = false;
            while sent < budget {
                let Some(msg) = self.outbox.borrow().peek(prio).cloned() else {
                    break;
                };
                match self.send(&msg) {
                    Ok(()) => {
                        let _ = self.outbox.borrow_mut().pop(prio);
                        sent += 1;
                    }
                    Err(e) => {
                        failed = true;
                        self.counters
                            .publish_failures
                            .set(self.counters.publish_failures.get() + 1);
                        if self.mqtt_connected.replace(false) {
                            self.tracer
                                .record(&self.metric("net"), format!("mqtt disconnected: {e}"));
                        }
                        break;
                    }
                }
            }
            if sent > 0 {
                let depth = self.outbox.borrow().depth();
                self.tracer
                    .sample(&self.metric("queue.depth"), depth as f64);
                self.outbox.borrow_mut().stats.sent += u64::from(sent);
            }
            if failed {
                self.clock.sleep(self.timing.reconnect).await;
                if self.link_ok().is_ok() {
                    self.mqtt_connected.set(true);
                    self.tracer.record(&self.metric("net"), "mqtt connected");
                    // A new session: publish the retained status again.
                    let s = self.status_json();
                    self.enqueue(TOPIC_STATUS, s, true, false);
                }
                continue;
            }
            if sent == 0 {
                self.mqtt_kick.wait().await;
                continue;
            }
            self.clock.sleep(period).await;
        }
    }

    fn link_ok(&self) -> Result<(), SendError> {
        if !self.wifi.borrow().connected {
            return Err(SendError::WifiDown);
        }
        if !self.broker.borrow().up {
            return Err(SendError::BrokerDown);
        }
        Ok(())
    }

    fn send(&self, msg: &Msg) -> Result<(), SendError> {
        self.link_ok()?;
        let bytes = msg.topic.len() + msg.payload.len() + 4;
        let mut wifi = self.wifi.borrow_mut();
        self.clock.charge(wifi.cpu_cost(bytes));
        let arrival = wifi.transmit(self.clock.now(), bytes);
        drop(wifi);
        self.broker
            .borrow_mut()
            .inbound
            .push_back((arrival, msg.clone()));
        self.broker_kick.signal(());
        Ok(())
    }

    /// The status publisher.
    pub async fn status_task(self: Rc<Self>) {
        let mut last = self.clock.now();
        let s = self.status_json();
        self.enqueue(TOPIC_STATUS, s, true, false);
        loop {
            let prio = self.throttle();
            let next = last + self.timing.status[level(prio)];
            if let Either::Second(()) =
                select(self.clock.sleep_until(next), self.status_kick.wait()).await
            {
                continue;
            }
            last = self.clock.now();
            self.clock.charge(self.timing.cpu_frame);
            let s = self.status_json();
            let urgent = prio == Priority::Emergency;
            self.enqueue(TOPIC_STATUS, s, true, urgent);
            if prio == Priority::Idle {
                let q = self.queue_json();
                self.enqueue(TOPIC_QUEUE, q, false, false);
            }
        }
    }

    /// The WebSocket feed.
    pub async fn ws_task(self: Rc<Self>) {
        let mut last = self.clock.now();
        let mut last_frame: Option<Instant> = None;
        loop {
            let next = last + self.timing.ws[level(self.throttle())];
            if let Either::Second(()) =
                select(self.clock.sleep_until(next), self.ws_kick.wait()).await
            {
                continue;
            }
            let now = self.clock.now();
            last = now;
            let clients = self.ws_clients.get();
            if clients == 0 {
                last_frame = None;
                continue;
            }
            let frame = self.ws_frame();
            let cost = self.wifi.borrow().cpu_cost(frame.len());
            self.clock
                .charge(self.timing.cpu_frame + cost.saturating_mul(u64::from(clients)));
            self.counters
                .ws_frames
                .set(self.counters.ws_frames.get() + u64::from(clients));
            if let Some(prev) = last_frame {
                self.tracer.sample(
                    &self.metric("ws.interval_ms"),
                    now.saturating_since(prev).as_micros() as f64 / 1000.0,
                );
            }
            last_frame = Some(now);
            if let Some(since) = self.unshown_since.take() {
                self.tracer.sample(
                    &self.metric("ws.lag_ms"),
                    now.saturating_since(since).as_micros() as f64 / 1000.0,
                );
            }
            if let Some(sink) = self.ws_sink.borrow_mut().as_mut() {
                sink(&frame);
            }
        }
    }

    /// A WebSocket frame (small JSON).
    pub fn ws_frame(&self) -> String {
        let s = self.snapshot.get();
        let mut out = format!(
            "{{\"priority\":\"{}\",\"queue\":{},\"pumps\":[",
            self.priority.get().name(),
            self.outbox.borrow().depth()
        );
        for p in Pump::ALL {
            let st = s.pumps[p.index()];
            let _ = write!(
                out,
                "{}{{\"pump\":\"{}\",\"active\":{},\"ml\":{:.2}}}",
                if p.index() == 0 { "" } else { "," },
                p.axis(),
                st.active,
                st.dispensed_ml
            );
        }
        out.push_str("]}");
        out
    }

    /// The command task: parses what arrives on the command topic and hands it to motion.
    pub async fn cmd_task(self: Rc<Self>) {
        loop {
            let next = self.inbox.borrow_mut().pop_front();
            let Some(text) = next else {
                self.cmd_kick.wait().await;
                continue;
            };
            self.clock.charge(Duration::from_micros(80));
            match parse_command(&text) {
                Ok(cmd) => {
                    self.counters.commands.set(self.counters.commands.get() + 1);
                    if !(self.submit.borrow_mut())(cmd) {
                        self.counters
                            .commands_refused
                            .set(self.counters.commands_refused.get() + 1);
                        self.enqueue(
                            "pump/controller/command/error",
                            "{\"error\":\"busy\"}".into(),
                            false,
                            false,
                        );
                    }
                }
                Err(e) => {
                    self.counters
                        .commands_bad
                        .set(self.counters.commands_bad.get() + 1);
                    self.tracer
                        .record(&self.metric("net"), format!("bad command: {e}"));
                    self.enqueue(
                        "pump/controller/command/error",
                        format!("{{\"error\":{}}}", json_string(&e)),
                        false,
                        false,
                    );
                }
            }
        }
    }

    /// The client side of a command: published to the broker now, delivered to the controller
    /// after the WiFi latency.
    pub fn command_from_client(&self, payload: String) {
        let lat = self.wifi.borrow().cfg.latency;
        self.broker
            .borrow_mut()
            .downlink
            .push_back((self.clock.now() + lat, payload));
        self.broker_kick.signal(());
    }

    /// The broker world task (deterministic runs): delivers what arrives, keeps retained
    /// messages, records `mqtt` events and latency.
    pub async fn broker_task(self: Rc<Self>) {
        let source = self.metric("mqtt");
        let m_latency = self.metric("mqtt.latency_ms");
        let m_status = self.metric("status.interval_s");
        loop {
            let now = self.clock.now();
            loop {
                let due = {
                    let mut b = self.broker.borrow_mut();
                    match b.inbound.front() {
                        Some((t, _)) if *t <= now => b.inbound.pop_front(),
                        _ => None,
                    }
                };
                let Some((_, msg)) = due else { break };
                let mut b = self.broker.borrow_mut();
                if !b.up {
                    b.lost += 1;
                    continue;
                }
                b.delivered += 1;
                *b.per_topic.entry(msg.topic.clone()).or_insert(0) += 1;
                if msg.retain {
                    b.retained.insert(msg.topic.clone(), msg.payload.clone());
                }
                if b.watch_first {
                    b.watch_first = false;
                    b.first_after_estop = Some(msg.topic.clone());
                }
                if msg.topic == TOPIC_STATUS {
                    if let Some(prev) = b.last_status {
                        self.tracer.sample(
                            &m_status,
                            now.saturating_since(prev).as_micros() as f64 / 1e6,
                        );
                    }
                    b.last_status = Some(now);
                }
                if let Some(f) = b.forward.as_mut() {
                    f(&msg);
                }
                drop(b);
                self.tracer.sample(
                    &m_latency,
                    now.saturating_since(msg.queued_at).as_micros() as f64 / 1000.0,
                );
                self.tracer
                    .record(&source, format!("{} {}", msg.topic, msg.payload));
            }
            loop {
                let due = {
                    let mut b = self.broker.borrow_mut();
                    match b.downlink.front() {
                        Some((t, _)) if *t <= now => b.downlink.pop_front(),
                        _ => None,
                    }
                };
                let Some((_, text)) = due else { break };
                if self.wifi.borrow().connected && self.broker.borrow().up {
                    self.inbox.borrow_mut().push_back(text);
                    self.cmd_kick.signal(());
                } else {
                    self.broker.borrow_mut().lost += 1;
                }
            }
            let next = {
                let b = self.broker.borrow();
                let a = b.inbound.front().map(|(t, _)| *t);
                let d = b.downlink.front().map(|(t, _)| *t);
                match (a, d) {
                    (Some(a), Some(d)) => a.min(d),
                    (a, d) => a.or(d).unwrap_or(Instant::MAX),
                }
            };
            select(self.clock.sleep_until(next), self.broker_kick.wait()).await;
        }
    }

    /// Background WiFi traffic: the WiFi driver task burns `cpu_load` of its core.
    pub async fn wifi_load_task(self: Rc<Self>, kick: Rc<Kick>) {
        let tick = Duration::from_millis(10);
        loop {
            let load = self.wifi.borrow().cpu_load;
            if load <= 0.0 {
                kick.wait().await;
                continue;
            }
            self.clock.charge(Duration::from_micros(
                (tick.as_micros() as f64 * load.min(0.95)) as u64,
            ));
            select(self.clock.sleep(tick), kick.wait()).await;
        }
    }
}

/// JSON string literal of `s`.
pub fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

fn per_pump_json(v: &[f32; 4]) -> String {
    format!(
        "{{\"X\":{:.3},\"Y\":{:.3},\"Z\":{:.3},\"A\":{:.3}}}",
        v[0], v[1], v[2], v[3]
    )
}

/// The topic and payload of a motion event.
pub fn event_message(ev: &PumpEvent) -> (&'static str, String) {
    match ev {
        PumpEvent::Alarm(kind) => {
            let extra = match kind {
                AlarmKind::EmergencyStop { trigger } => {
                    format!(",\"trigger\":\"{}\"", trigger.name())
                }
                other => format!(",\"detail\":{}", json_string(&other.to_string())),
            };
            (
                TOPIC_ALARM,
                format!("{{\"eventType\":\"{}\"{extra}}}", kind.event_type()),
            )
        }
        PumpEvent::DispenseStarted {
            id,
            volume_ml,
            expected_ms,
            ..
        } => (
            "pump/controller/dispense/event",
            format!(
                "{{\"event\":\"STARTED\",\"id\":{id},\"volume_ml\":{},\"expected_ms\":{expected_ms}}}",
                per_pump_json(volume_ml)
            ),
        ),
        PumpEvent::DispenseProgress { id, dispensed_ml } => (
            "pump/controller/dispense/event",
            format!(
                "{{\"event\":\"PROGRESS\",\"id\":{id},\"dispensed_ml\":{}}}",
                per_pump_json(dispensed_ml)
            ),
        ),
        PumpEvent::DispenseComplete {
            id,
            dispensed_ml,
            duration_ms,
        } => (
            "pump/controller/dispense/complete",
            format!(
                "{{\"id\":{id},\"dispensed_ml\":{},\"duration_ms\":{duration_ms}}}",
                per_pump_json(dispensed_ml)
            ),
        ),
        PumpEvent::DispenseAborted {
            id,
            dispensed_ml,
            cause,
        } => (
            "pump/controller/dispense/event",
            format!(
                "{{\"event\":\"ABORTED\",\"id\":{id},\"dispensed_ml\":{},\"cause\":{}}}",
                per_pump_json(dispensed_ml),
                json_string(&format!("{cause:?}"))
            ),
        ),
        PumpEvent::RateClamped {
            pump,
            requested_mm_min,
            applied_mm_min,
        } => (
            "pump/controller/dispense/event",
            format!(
                "{{\"event\":\"RATE_CLAMPED\",\"pump\":\"{pump}\",\"requested\":{requested_mm_min:.1},\"applied\":{applied_mm_min:.1}}}"
            ),
        ),
        PumpEvent::Resumed { dispensed_ml } => (
            "pump/controller/dispense/event",
            format!(
                "{{\"event\":\"RESUMED\",\"dispensed_ml\":{}}}",
                per_pump_json(dispensed_ml)
            ),
        ),
        PumpEvent::Rejected(e) => (
            "pump/controller/dispense/event",
            format!(
                "{{\"event\":\"REJECTED\",\"error\":{}}}",
                json_string(&e.to_string())
            ),
        ),
        PumpEvent::RecipeStarted { name, steps } => (
            "pump/controller/recipe/start",
            format!("{{\"name\":{},\"steps\":{steps}}}", json_string(name)),
        ),
        PumpEvent::RecipeStep { name, step } => (
            "pump/controller/recipe/step",
            format!("{{\"name\":{},\"step\":{step}}}", json_string(name)),
        ),
        PumpEvent::RecipeComplete { name } => (
            "pump/controller/recipe/complete",
            format!("{{\"name\":{}}}", json_string(name)),
        ),
        PumpEvent::RecipeAborted { name, step } => (
            "pump/controller/recipe/complete",
            format!(
                "{{\"name\":{},\"aborted_at_step\":{step}}}",
                json_string(name)
            ),
        ),
    }
}

/// Parse a command JSON: `{"cmd":"dispense","pump":"X","volume_ml":5,"flow_ml_min":10}`,
/// `{"cmd":"recipe","name":"…"}`, `{"cmd":"stop"}`, `{"cmd":"estop"}`, `{"cmd":"resume"}`.
/// `"flowRate"` is accepted for `flow_ml_min` (the seed UI's name).
pub fn parse_command(text: &str) -> Result<MotionCommand, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let cmd = v
        .get("cmd")
        .and_then(|c| c.as_str())
        .ok_or("missing \"cmd\"")?;
    match cmd {
        "dispense" => {
            let pump = v
                .get("pump")
                .and_then(|p| p.as_str())
                .and_then(|p| p.chars().next())
                .and_then(Pump::from_axis)
                .ok_or("\"pump\" must be X, Y, Z or A")?;
            let num = |k: &str| v.get(k).and_then(serde_json::Value::as_f64);
            let volume_ml = num("volume_ml").ok_or("missing \"volume_ml\"")? as f32;
            let flow_ml_min = num("flow_ml_min")
                .or_else(|| num("flowRate"))
                .ok_or("missing \"flow_ml_min\"")? as f32;
            let mut doses = heapless::Vec::new();
            let _ = doses.push(DispenseRequest {
                pump,
                volume_ml,
                flow_ml_min,
            });
            Ok(MotionCommand::Dispense(doses))
        }
        "recipe" => {
            let name = v
                .get("name")
                .and_then(|n| n.as_str())
                .ok_or("missing \"name\"")?;
            let name = heapless::String::try_from(name).map_err(|_| "recipe name too long")?;
            Ok(MotionCommand::StartRecipe(name))
        }
        "stop" => Ok(MotionCommand::Stop),
        "estop" => Ok(MotionCommand::EmergencyStop(EstopTrigger::Remote)),
        "resume" => Ok(MotionCommand::Resume),
        other => Err(format!("unknown command {}", json_string(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, urgent: bool) -> Msg {
        Msg {
            topic: topic.into(),
            payload: String::new(),
            retain: false,
            urgent,
            queued_at: Instant::ZERO,
        }
    }

    #[test]
    fn outbox_puts_emergency_messages_first_and_holds_the_rest_in_emergency() {
        let mut ob = Outbox::new(4, true);
        ob.offer(msg("a", false));
        ob.offer(msg("alarm", true));
        assert_eq!(
            ob.pop(Priority::Emergency).map(|m| m.topic),
            Some("alarm".into())
        );
        assert_eq!(ob.pop(Priority::Emergency), None);
        assert_eq!(ob.pop(Priority::Idle).map(|m| m.topic), Some("a".into()));
    }

    #[test]
    fn outbox_without_lanes_keeps_one_fifo() {
        let mut ob = Outbox::new(4, false);
        ob.offer(msg("a", false));
        ob.offer(msg("alarm", true));
        assert_eq!(ob.pop(Priority::Idle).map(|m| m.topic), Some("a".into()));
    }

    #[test]
    fn a_full_outbox_drops_its_oldest_and_counts_it() {
        let mut ob = Outbox::new(2, true);
        for t in ["a", "b", "c"] {
            ob.offer(msg(t, false));
        }
        assert_eq!(ob.stats.dropped, 1);
        assert_eq!(ob.pop(Priority::Idle).map(|m| m.topic), Some("b".into()));
    }

    #[test]
    fn commands_parse_and_bad_ones_say_why() {
        assert!(matches!(
            parse_command(r#"{"cmd":"dispense","pump":"y","volume_ml":2,"flowRate":10}"#),
            Ok(MotionCommand::Dispense(_))
        ));
        assert_eq!(parse_command(r#"{"cmd":"stop"}"#), Ok(MotionCommand::Stop));
        assert!(parse_command("{").unwrap_err().contains("not JSON"));
        assert!(
            parse_command(r#"{"cmd":"dispense","pump":"Q"}"#)
                .unwrap_err()
                .contains("pump")
        );
        assert!(
            parse_command(r#"{"cmd":"fly"}"#)
                .unwrap_err()
                .contains("unknown")
        );
    }
}
