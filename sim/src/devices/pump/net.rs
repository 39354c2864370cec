//! The pump controller's network side in the twin: the platform ports the firmware's network
//! tasks run on, and the fake MQTT broker of deterministic runs.
//!
//! The firmware's own tasks do the work (`firmware_core::pump::{outbox, status, ws, command}`):
//! the MQTT task drains the outbox by the governor's priority, the status publisher and the
//! WebSocket feed keep their cadence. This module supplies what a board would: an
//! [`MqttPort`] over the WiFi model ([`SimMqtt`]), a [`WsSink`] that charges the network core per
//! client ([`SimWs`]), the task that turns motion events into outbox messages ([`event_message`]),
//! and the command task that hands subscribed payloads to the firmware's parser.
//!
//! **WiFi.** Publishes go up and commands come down the packet link of `sim::periph::wifi`,
//! which charges the calling task the driver's CPU time (the MQTT task on a publish, the command
//! task on a receive), queues packets for the air, and delivers them after latency and seeded
//! jitter, or loses them. Background traffic takes a share of the link's bandwidth (`airtime`)
//! and of the network core (the WiFi task's `cpu_load`). A QoS 1 publish returns after the way
//! there and back (the PUBACK). A disconnected link, a full driver queue or a broker that is down
//! refuses the publish at once: the outbox keeps the message and retries with its backoff.
//!
//! **Broker.** A world task that takes what arrives, keeps retained messages, and records each
//! delivery as an event `<device>.mqtt` `<topic> <payload>`, with the delivery latency (from
//! the `timestamp` the firmware writes into status, alarm and event payloads) as
//! `<device>.mqtt.latency_ms`.
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::rc::Rc;

use embassy_futures::select::select;
use embassy_sync::blocking_mutex::raw::NoopRawMutex;
use embassy_sync::signal::Signal;
use firmware_core::ports::{MqttPort, MqttQos};
use firmware_core::pump::command::{self, Command, Limits, RecipeInfo};
use firmware_core::pump::dispense::{AlarmKind, MotionCommand, MotionSnapshot, PumpEvent};
use firmware_core::pump::estop::EstopTrigger;
use firmware_core::pump::outbox::{Message, SharedOutbox, alarm_message, topic};
use firmware_core::pump::status::PumpSnapshot;
use firmware_core::pump::ws::WsSink;
use firmware_core::time::{Duration, Instant};

use crate::kernel::{SimClock, Tracer};
use crate::periph::wifi::{WifiConfig, WifiDirection, WifiLink, WifiSendError};

type Kick = Signal<NoopRawMutex, ()>;

/// One MQTT message as the broker sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Msg {
    /// Topic.
    pub topic: String,
    /// Payload (JSON text from the firmware).
    pub payload: String,
    /// Retained at the broker.
    pub retain: bool,
}

/// Where delivered messages go besides the trace (the live twin's real broker).
pub type Forward = Box<dyn FnMut(&Msg)>;
/// Where WebSocket frames go (the live twin's server).
pub type FrameSink = Box<dyn FnMut(&str)>;

/// Why a publish did not leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The station is not associated.
    #[error("wifi disconnected")]
    WifiDown,
    /// The WiFi driver's transmit queue is full.
    #[error("wifi transmit queue full")]
    QueueFull,
    /// The broker does not accept the connection.
    #[error("broker unreachable")]
    BrokerDown,
}

/// What a deterministic run's broker saw.
#[derive(Default)]
pub struct Broker {
    /// Accepting connections.
    pub up: bool,
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

/// Counters of the network side.
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
    /// Publishes the link refused.
    pub publish_failures: Cell<u64>,
    /// Sum of the last `Resumed` event's amounts.
    pub resumed_ml: Cell<f64>,
}

/// What the platform side of the network knows and shares between its tasks.
pub struct Net {
    /// Device name (trace prefix).
    pub name: String,
    /// Clock.
    pub clock: SimClock,
    /// Trace.
    pub tracer: Tracer,
    /// The WiFi link (`sim::periph::wifi`).
    pub wifi: WifiLink,
    /// The link's settings before background traffic takes its share of the air.
    pub wifi_base: RefCell<WifiConfig>,
    /// Share of the air other stations take (0 to 0.95).
    pub airtime: Cell<f64>,
    /// Share of the network core the WiFi task spends on background traffic (0 to 0.95).
    pub cpu_load: Cell<f64>,
    /// The fake broker.
    pub broker: RefCell<Broker>,
    /// The latest motion snapshot seen by the network side (for states and the UI).
    pub snapshot: Cell<MotionSnapshot>,
    /// The first pump-side snapshot change not yet shown on the WebSocket.
    pub unshown_since: Cell<Option<Instant>>,
    /// WebSocket clients connected.
    pub ws_clients: Cell<u32>,
    /// MQTT session up (as the port last saw it).
    pub mqtt_connected: Cell<bool>,
    /// Counters.
    pub counters: NetCounters,
    /// Wakes the WiFi load task.
    pub load_kick: Kick,
    /// Hands a parsed command to the motion side; false when refused.
    pub submit: RefCell<Box<dyn FnMut(MotionCommand) -> bool>>,
    /// What a live WebSocket server sends to its clients, if one runs.
    pub ws_sink: RefCell<Option<FrameSink>>,
    /// Recipe names, for the command parser.
    pub recipes: Vec<String>,
}

/// An MQTT PUBLISH as it crosses the WiFi link (the twin's framing: JSON of topic, payload,
/// retain; the size is close to the real packet's).
pub fn encode_packet(topic: &str, payload: &[u8], retain: bool) -> Vec<u8> {
    serde_json::json!({
        "t": topic,
        "p": String::from_utf8_lossy(payload),
        "r": retain,
    })
    .to_string()
    .into_bytes()
}

/// The message in a packet from [`encode_packet`].
pub fn decode_packet(bytes: &[u8]) -> Option<Msg> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    Some(Msg {
        topic: v.get("t")?.as_str()?.to_owned(),
        payload: v.get("p")?.as_str()?.to_owned(),
        retain: v.get("r")?.as_bool()?,
    })
}

/// Read the `"timestamp":<ms>` field the firmware writes into its payloads.
pub fn payload_timestamp(payload: &str) -> Option<Instant> {
    let rest = payload.split("\"timestamp\":").nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().map(Instant::from_millis)
}

impl Net {
    fn metric(&self, what: &str) -> String {
        format!("{}.{what}", self.name)
    }

    /// A new snapshot seen by the bridge.
    pub fn set_snapshot(&self, s: MotionSnapshot) {
        self.snapshot.set(s);
    }

    /// The pump side published a new snapshot: the UI lag runs from now.
    pub fn snapshot_changed(&self) {
        if self.unshown_since.get().is_none() {
            self.unshown_since.set(Some(self.clock.now()));
        }
    }

    /// Apply the base settings with the background traffic's share of the air taken out.
    pub fn apply_wifi(&self) {
        let mut c = self.wifi_base.borrow().clone();
        let share = (1.0 - self.airtime.get().clamp(0.0, 0.95)).max(0.05);
        c.bandwidth_bps = ((c.bandwidth_bps as f64 * share) as u64).max(1);
        let _ = self.wifi.set_config(c);
    }

    fn link_ok(&self) -> Result<(), SendError> {
        if !self.wifi.is_connected() {
            return Err(SendError::WifiDown);
        }
        if !self.broker.borrow().up {
            return Err(SendError::BrokerDown);
        }
        Ok(())
    }

    /// The command task: hands what arrives on the command topic to the firmware's parser and
    /// the result to motion.
    pub async fn cmd_task(self: Rc<Self>) {
        let infos: Vec<RecipeInfo<'_>> = self
            .recipes
            .iter()
            .map(|n| RecipeInfo { name: n.as_str() })
            .collect();
        loop {
            // The receive charges this task the driver's CPU time.
            let bytes = self.wifi.recv(WifiDirection::Down).await;
            let text = String::from_utf8_lossy(&bytes).into_owned();
            self.clock.charge(Duration::from_micros(80));
            let parsed = command::parse_command(text.as_bytes(), &Limits::DEFAULT, &infos);
            match parsed.map(to_motion) {
                Ok(Some(cmd)) => {
                    self.counters.commands.set(self.counters.commands.get() + 1);
                    if !(self.submit.borrow_mut())(cmd) {
                        self.counters
                            .commands_refused
                            .set(self.counters.commands_refused.get() + 1);
                        self.tracer
                            .record(&self.metric("net"), "command refused: motion queue full");
                    }
                }
                Ok(None) | Err(_) => {
                    self.counters
                        .commands_bad
                        .set(self.counters.commands_bad.get() + 1);
                    self.tracer
                        .record(&self.metric("net"), format!("bad command: {text}"));
                }
            }
        }
    }

    /// The client side of a command: the broker forwards it down the WiFi link at once (lost,
    /// and counted, when the broker is down or the link refuses it).
    pub fn command_from_client(&self, payload: String) {
        if !self.broker.borrow().up
            || self
                .wifi
                .send(WifiDirection::Down, payload.into_bytes())
                .is_err()
        {
            self.broker.borrow_mut().lost += 1;
        }
    }

    /// The broker world task (deterministic runs): takes what arrives over the WiFi uplink,
    /// keeps retained messages, records `mqtt` events and latency.
    pub async fn broker_task(self: Rc<Self>) {
        let source = self.metric("mqtt");
        let m_latency = self.metric("mqtt.latency_ms");
        let m_status = self.metric("status.interval_s");
        loop {
            let packet = self.wifi.recv(WifiDirection::Up).await;
            let now = self.clock.now();
            let Some(msg) = decode_packet(&packet) else {
                self.broker.borrow_mut().lost += 1;
                continue;
            };
            let created = payload_timestamp(&msg.payload);
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
            if msg.topic == topic::STATUS {
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
            if let Some(t) = created {
                self.tracer.sample(
                    &m_latency,
                    now.saturating_since(t).as_micros() as f64 / 1000.0,
                );
            }
            self.tracer
                .record(&source, format!("{} {}", msg.topic, msg.payload));
        }
    }

    /// Background WiFi traffic: the WiFi driver task burns `cpu_load` of its core.
    pub async fn wifi_load_task(self: Rc<Self>) {
        let tick = Duration::from_millis(10);
        loop {
            let load = self.cpu_load.get();
            if load <= 0.0 {
                self.load_kick.wait().await;
                continue;
            }
            self.clock.charge(Duration::from_micros(
                (tick.as_micros() as f64 * load.min(0.95)) as u64,
            ));
            select(self.clock.sleep(tick), self.load_kick.wait()).await;
        }
    }
}

/// The firmware's command as a motion command (`None` for commands motion does not know).
pub(crate) fn to_motion(c: Command) -> Option<MotionCommand> {
    Some(match c {
        Command::StartDispense(d) => {
            let mut doses = heapless::Vec::new();
            let _ = doses.push(d);
            MotionCommand::Dispense(doses)
        }
        Command::StartRecipe(name) => {
            MotionCommand::StartRecipe(heapless::String::try_from(name.as_str()).ok()?)
        }
        Command::Stop => MotionCommand::Stop,
        Command::EmergencyStop => MotionCommand::EmergencyStop(EstopTrigger::Remote),
        Command::Resume => MotionCommand::Resume,
        _ => return None,
    })
}

/// The [`MqttPort`] of the twin: publishes through the WiFi model to the broker.
pub struct SimMqtt {
    /// The network side.
    pub net: Rc<Net>,
    /// The outbox, to sample its depth as messages leave.
    pub outbox: Rc<dyn Fn() -> usize>,
}

impl MqttPort for SimMqtt {
    type Error = SendError;

    async fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: MqttQos,
        retain: bool,
    ) -> Result<(), SendError> {
        let net = &self.net;
        if let Err(e) = net.link_ok() {
            net.counters
                .publish_failures
                .set(net.counters.publish_failures.get() + 1);
            if net.mqtt_connected.replace(false) {
                net.tracer
                    .record(&net.metric("net"), format!("mqtt disconnected: {e}"));
            }
            return Err(e);
        }
        if !net.mqtt_connected.replace(true) {
            net.tracer.record(&net.metric("net"), "mqtt connected");
        }
        net.tracer
            .sample(&net.metric("queue.depth"), (self.outbox)() as f64);
        let packet = encode_packet(topic, payload, retain);
        // The send charges this task the driver's CPU time.
        match net.wifi.send(WifiDirection::Up, packet) {
            Ok(()) => {}
            Err(WifiSendError::QueueFull) => return Err(SendError::QueueFull),
            Err(WifiSendError::Disconnected) => return Err(SendError::WifiDown),
        }
        if qos == MqttQos::AtLeastOnce {
            // Accepted once the PUBACK is back: the way there and back, bounded by the jitter.
            let c = net.wifi.config();
            net.clock
                .sleep(c.latency + c.latency + c.jitter + c.airtime(payload.len() + 64))
                .await;
        }
        Ok(())
    }
}

/// The [`WsSink`] of the twin: charges the network core per client, measures frame intervals
/// and the UI lag, and hands frames to a live server when one runs.
pub struct SimWs {
    /// The network side.
    pub net: Rc<Net>,
    /// Last frame time.
    pub last: Option<Instant>,
}

impl WsSink for SimWs {
    async fn broadcast(&mut self, text: &str) {
        let net = &self.net;
        let now = net.clock.now();
        if let Some(sink) = net.ws_sink.borrow_mut().as_mut() {
            sink(text);
        }
        let clients = net.ws_clients.get();
        if clients == 0 {
            self.last = None;
            return;
        }
        let cost = net.wifi.config().cpu_cost(text.len() + 6);
        net.clock.charge(cost.saturating_mul(u64::from(clients)));
        net.counters
            .ws_frames
            .set(net.counters.ws_frames.get() + u64::from(clients));
        if let Some(prev) = self.last {
            net.tracer.sample(
                &net.metric("ws.interval_ms"),
                now.saturating_since(prev).as_micros() as f64 / 1000.0,
            );
        }
        self.last = Some(now);
        if let Some(since) = net.unshown_since.take() {
            net.tracer.sample(
                &net.metric("ws.lag_ms"),
                now.saturating_since(since).as_micros() as f64 / 1000.0,
            );
        }
    }
}

/// The status snapshot the firmware's publisher and feed read, from a motion snapshot.
pub fn pump_snapshot(s: &MotionSnapshot) -> PumpSnapshot {
    let state = if s.emergency {
        "Emergency".to_owned()
    } else if let Some(a) = s.alarm {
        format!("Alarm {}", a.event_type())
    } else {
        s.machine
            .map_or_else(|| "Unknown".to_owned(), |m| format!("{m:?}"))
    };
    let mut st = heapless::String::new();
    for c in state.chars() {
        if st.push(c).is_err() {
            break;
        }
    }
    PumpSnapshot {
        pumps: s.pumps,
        state: st,
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

/// The outbox message for a motion event. Alarms go to the emergency lane (the E-stop alarm is
/// the firmware's [`alarm_message`]); everything else is an event in the normal lane, except
/// `RESUMED`, which leaves EMERGENCY and goes with the alarms.
pub fn event_message(ev: &PumpEvent, now: Instant) -> Option<Message> {
    let ts = now.as_millis();
    let (t, body): (&str, String) = match ev {
        PumpEvent::Alarm(AlarmKind::EmergencyStop { trigger }) => {
            return Some(alarm_message("EMERGENCY_STOP", trigger.name(), now));
        }
        PumpEvent::Alarm(kind) => {
            let payload = format!(
                "{{\"eventType\":\"{}\",\"detail\":{},\"timestamp\":{ts}}}",
                kind.event_type(),
                json_string(&kind.to_string())
            );
            return Message::alarm(topic::ALARM, payload.as_bytes()).ok();
        }
        PumpEvent::Resumed { dispensed_ml } => {
            let payload = format!(
                "{{\"event\":\"RESUMED\",\"dispensed_ml\":{},\"timestamp\":{ts}}}",
                per_pump_json(dispensed_ml)
            );
            return Message::alarm(topic::DISPENSE_EVENT, payload.as_bytes()).ok();
        }
        PumpEvent::DispenseStarted {
            id,
            volume_ml,
            expected_ms,
            ..
        } => (
            topic::DISPENSE_EVENT,
            format!(
                "{{\"event\":\"STARTED\",\"id\":{id},\"volume_ml\":{},\"expected_ms\":{expected_ms}",
                per_pump_json(volume_ml)
            ),
        ),
        PumpEvent::DispenseProgress { id, dispensed_ml } => (
            topic::DISPENSE_EVENT,
            format!(
                "{{\"event\":\"PROGRESS\",\"id\":{id},\"dispensed_ml\":{}",
                per_pump_json(dispensed_ml)
            ),
        ),
        PumpEvent::DispenseComplete {
            id,
            dispensed_ml,
            duration_ms,
        } => (
            topic::DISPENSE_COMPLETE,
            format!(
                "{{\"id\":{id},\"dispensed_ml\":{},\"duration_ms\":{duration_ms}",
                per_pump_json(dispensed_ml)
            ),
        ),
        PumpEvent::DispenseAborted {
            id,
            dispensed_ml,
            cause,
        } => (
            topic::DISPENSE_EVENT,
            format!(
                "{{\"event\":\"ABORTED\",\"id\":{id},\"dispensed_ml\":{},\"cause\":{}",
                per_pump_json(dispensed_ml),
                json_string(&format!("{cause:?}"))
            ),
        ),
        PumpEvent::RateClamped {
            pump,
            requested_mm_min,
            applied_mm_min,
        } => (
            topic::DISPENSE_EVENT,
            format!(
                "{{\"event\":\"RATE_CLAMPED\",\"pump\":\"{pump}\",\"requested\":{requested_mm_min:.1},\"applied\":{applied_mm_min:.1}"
            ),
        ),
        PumpEvent::Rejected(e) => (
            topic::DISPENSE_EVENT,
            format!(
                "{{\"event\":\"REJECTED\",\"error\":{}",
                json_string(&e.to_string())
            ),
        ),
        PumpEvent::RecipeStarted { name, steps } => (
            topic::RECIPE_START,
            format!("{{\"name\":{},\"steps\":{steps}", json_string(name)),
        ),
        PumpEvent::RecipeStep { name, step } => (
            topic::RECIPE_START,
            format!("{{\"name\":{},\"step\":{step}", json_string(name)),
        ),
        PumpEvent::RecipeComplete { name } => (
            topic::RECIPE_COMPLETE,
            format!("{{\"name\":{}", json_string(name)),
        ),
        PumpEvent::RecipeAborted { name, step } => (
            topic::RECIPE_COMPLETE,
            format!(
                "{{\"name\":{},\"aborted_at_step\":{step}",
                json_string(name)
            ),
        ),
    };
    let mut body = body;
    let _ = write!(body, ",\"timestamp\":{ts}}}");
    Message::event(t, body.as_bytes()).ok()
}

/// Push a motion event into the firmware's outbox (every drop is counted by the outbox).
pub fn push_event(outbox: &SharedOutbox<NoopRawMutex>, net: &Net, ev: &PumpEvent) {
    if let PumpEvent::Resumed { dispensed_ml } = ev {
        net.counters
            .resumed_ml
            .set(dispensed_ml.iter().map(|&v| f64::from(v)).sum());
    }
    let now = net.clock.now();
    match event_message(ev, now) {
        Some(m) => {
            let _ = outbox.push(m, now);
        }
        None => net
            .tracer
            .record(&net.metric("net"), "event too large for an MQTT message"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use firmware_core::pump::Pump;

    #[test]
    fn the_payload_timestamp_is_read_back() {
        assert_eq!(
            payload_timestamp(r#"{"a":1,"timestamp":1234}"#),
            Some(Instant::from_millis(1234))
        );
        assert_eq!(payload_timestamp("{}"), None);
    }

    #[test]
    fn alarms_take_the_emergency_lane_and_events_the_normal_one() {
        use firmware_core::pump::outbox::Lane;
        let now = Instant::from_millis(5);
        let alarm = event_message(
            &PumpEvent::Alarm(AlarmKind::EmergencyStop {
                trigger: EstopTrigger::Button,
            }),
            now,
        )
        .unwrap();
        assert_eq!(alarm.lane, Lane::Emergency);
        let ev = event_message(
            &PumpEvent::DispenseProgress {
                id: 1,
                dispensed_ml: [1.0, 0.0, 0.0, 0.0],
            },
            now,
        )
        .unwrap();
        assert_eq!(ev.lane, Lane::Normal);
        let text = String::from_utf8(ev.payload.to_vec()).unwrap();
        assert!(
            serde_json::from_str::<serde_json::Value>(&text).is_ok(),
            "{text}"
        );
        let _ = Pump::X;
    }
}
