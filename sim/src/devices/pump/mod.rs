//! `kind = "pump"`: the pump controller twin.
//!
//! Wiring only: every task is a `firmware_core::pump` runner. The motion task ([`MotionTask`]
//! with [`PumpMotion`]) runs on the pump core against the simulated FluidNC board ([`board`]) over
//! a 115200 8N1 UART; the network core runs the event task ([`EventTask`]), the command task
//! ([`CommandTask`]), the MQTT task ([`MqttTask`]), the status publisher ([`StatusTask`]), the web
//! server ([`WebTask`], one per socket), the WebSocket feed ([`WsTask`]) and the radio task
//! ([`RadioTask`]), over the ports of [`net`], which also carries all of their traffic across
//! one WiFi link to a broker and to web clients ([`clients`]; real ones in [`live`]).
//!
//! Architecture options (`arch`):
//! * `option1`: ESP32, core 1 pump control, core 0 network, the governor ignored by the network
//!   (full rate while dispensing, one FIFO outbox);
//! * `option2`: the same with the governor (the production design);
//! * `option3`: two MCUs: a pump MCU (one core: motion + serial link) and a WiFi MCU (one core:
//!   serial link + network), joined by the firmware's framed link ([`LinkTask`]) over a
//!   simulated UART; the WiFi MCU's event task derives the priority from the snapshots it
//!   receives.
//!
//! Core and priority map (ESP32 names): on the network core the WiFi driver's background task
//! 23, the netif (lwIP's tcpip task) 18, events 6, the command task 5 (esp-mqtt's receive path)
//! and the MQTT task 5, status 4 and the web tasks 4, the WebSocket feed 3, the radio 2 (power
//! management is not urgent: the E-stop path and its alarm go first); on the pump core motion 20
//! and the 10 ms control tick 15; the option-3 link tasks at 10.
pub mod board;
pub mod clients;
pub mod compare;
pub mod live;
pub mod net;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use embassy_sync::blocking_mutex::raw::NoopRawMutex;
use embassy_sync::signal::Signal;
use embassy_sync::watch::Watch;
use embedded_io_async::{ErrorType, Read, Write};
use firmware_core::pump::arch::ArchOption;
use firmware_core::pump::command::{
    CommandOutcome, CommandStats, CommandTask, Limits, RecipeInfo, RestConfig,
};
use firmware_core::pump::dispense::{
    MotionChannels, MotionCommand, MotionConfig, MotionSnapshot, MotionTask, PumpEvent, PumpMotion,
    Recipe, RecipeStep,
};
use firmware_core::pump::estop::{EstopButton, EstopTrigger, LedPattern};
use firmware_core::pump::events::{EventTask, GovernorRole};
use firmware_core::pump::identity::Identity;
use firmware_core::pump::link::{
    LinkConfig, LinkEndpoint, LinkEvent, LinkSource, LinkTask, PumpSource, PumpToHost, QueueSink,
    QueueSource,
};
use firmware_core::pump::outbox::{DrainConfig, MqttTask, SharedOutbox, topic};
use firmware_core::pump::radio::{RadioTask, TxPower as FwTxPower, TxPowerLevels};
use firmware_core::pump::stats::NoStats;
use firmware_core::pump::status::{PumpSnapshot, StatusTask, StatusView};
use firmware_core::pump::web::{PAGE, WebConfig, WebContext, WebCounters, WebTask, WsHub};
use firmware_core::pump::ws::WsTask;
use firmware_core::pump::{DispenseRequest, Governor, Pump};
use firmware_core::queue::{FullPolicy, Queue};
use firmware_core::time::{Duration, Instant};
use serde::Deserialize;

use self::board::{Board, Probe, Tap};
use self::clients::WsClients;
use self::net::{Net, ObservedFeed, SimCommands, SimMqtt, SimRadio, SimSocket};
use super::{Device, DeviceSpec, StateValue, from_table, serde_duration};
use crate::kernel::{CoreId, Kernel, SimClock, TaskSpec};
use crate::periph::fluidnc::{FluidncBoard, FluidncConfig};
use crate::periph::uart::{self, UartConfig, UartLink, UartPort};
use crate::periph::wifi::{self, TxPower, WifiConfig};

/// Server sockets of the web port, one web task each: the WebSocket sessions and HTTP requests
/// served at once (the comparison runs up to 10 WebSocket clients).
pub const WEB_SOCKETS: usize = 12;
/// CPU time of one poll of a web task (parsing, formatting, the socket calls).
pub const WEB_POLL_COST: Duration = Duration::from_micros(50);

/// Architecture option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Dual core, governor disabled.
    Option1,
    /// Dual core with the governor (production).
    #[default]
    Option2,
    /// Two MCUs joined by a serial link.
    Option3,
}

impl Arch {
    /// The firmware's name for it.
    pub fn firmware(self) -> ArchOption {
        match self {
            Arch::Option1 => ArchOption::Option1,
            Arch::Option2 => ArchOption::Option2,
            Arch::Option3 => ArchOption::Option3,
        }
    }
    /// All options, in order.
    pub const ALL: [Arch; 3] = [Arch::Option1, Arch::Option2, Arch::Option3];
    /// Name as written in scenarios.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Option1 => "option1",
            Arch::Option2 => "option2",
            Arch::Option3 => "option3",
        }
    }
}

/// How the E-stop button reaches the motion task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EstopInput {
    /// A GPIO interrupt signals the motion task at the edge.
    #[default]
    Interrupt,
    /// A task samples the pin every `estop_poll` (a slower design, for comparison).
    Poll,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct WifiTable {
    #[serde(default, with = "opt_duration")]
    latency: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    jitter: Option<Duration>,
    #[serde(default)]
    loss: Option<f64>,
    #[serde(default)]
    rate_mbps: Option<f64>,
    /// The ESP32's transmit power (`"5dBm"`, `"WIFI_POWER_5dBm"`, …).
    #[serde(default)]
    tx_power: Option<String>,
}

mod opt_duration {
    use firmware_core::time::Duration;
    use serde::Deserializer;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::serde_duration::deserialize(d).map(Some)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyTable {
    /// The outbox's drain cycle while dispensing (the firmware's default is 100 ms).
    #[serde(default, with = "opt_duration")]
    drain_dispensing: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct DoseTable {
    pump: String,
    volume_ml: f32,
    flow_ml_min: f32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipeTable {
    name: String,
    /// Steps, each a list of doses run together.
    steps: Vec<Vec<DoseTable>>,
}

/// A checked `kind = "pump"` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PumpSpec {
    #[serde(default)]
    arch: Arch,
    #[serde(default)]
    wifi: Option<WifiTable>,
    #[serde(default)]
    policy: PolicyTable,
    #[serde(default)]
    estop_input: EstopInput,
    #[serde(default = "default_estop_poll", with = "serde_duration")]
    estop_poll: Duration,
    /// Calibration of every pump.
    #[serde(default = "default_ml_per_mm")]
    ml_per_mm: f32,
    /// WebSocket clients connected from the start.
    #[serde(default)]
    ws_clients: u32,
    #[serde(default, rename = "recipe")]
    recipes: Vec<RecipeTable>,
    /// The MQTT identity (`prefix`, `client_id`).
    #[serde(default)]
    mqtt: Option<MqttTable>,
    /// The governor's TX power per priority.
    #[serde(default)]
    tx_power_levels: Option<LevelsTable>,
    #[serde(skip)]
    checked_recipes: Vec<Recipe>,
    #[serde(skip)]
    checked_identity: Identity,
    #[serde(skip)]
    checked_levels: TxPowerLevels,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct MqttTable {
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LevelsTable {
    #[serde(default)]
    idle: Option<String>,
    #[serde(default)]
    dispensing: Option<String>,
    #[serde(default)]
    emergency: Option<String>,
}

/// A TX power level as scenarios write it (`"8.5dBm"`), in the firmware's quarter dBm.
fn level(text: &str) -> Result<FwTxPower, String> {
    let p: TxPower = text.parse().map_err(|_| {
        format!("tx power `{text}`: expected one of the ESP32's levels, e.g. 11dBm")
    })?;
    Ok(FwTxPower::from_quarter_dbm((p.dbm() * 4.0).round() as i8))
}

fn default_estop_poll() -> Duration {
    Duration::from_millis(10)
}
fn default_ml_per_mm() -> f32 {
    0.05
}

const ACTIONS: &str = "dispense, recipe, estop, resume, stop, mqtt.command, http, ws.connect, wifi, \
    wifi.disconnect, wifi.reconnect, wifi.load, broker.down, broker.up, fluidnc.alarm, \
    fluidnc.never_idle, fluidnc.disconnect, fluidnc.reconnect, fluidnc.garbage, fluidnc.stuck";

const STATES: &str = "priority, pump.<X|Y|Z|A>.active, pump.<X>.dispensed_ml, queue.depth, \
    queue.drops, queue.high_water, uart.last_tx, uart.lines, mqtt.delivered, mqtt.lost, \
    mqtt.connected, mqtt.first_after_estop, mqtt.retained_status, ws.frames, fluidnc.state, \
    resume.dispensed_ml, events.lost, commands.bad, commands.refused, control.missed, \
    control.max_late_us, led";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DispenseAction {
    pump: String,
    volume_ml: f32,
    flow_ml_min: f32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NameAction {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonAction {
    json: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpAction {
    #[serde(default = "get")]
    method: String,
    path: String,
    #[serde(default)]
    body: String,
    /// `user:password` for Basic auth.
    #[serde(default)]
    auth: Option<String>,
}

fn get() -> String {
    "GET".into()
}

impl HttpAction {
    /// The request a browser would send.
    fn request(&self) -> Vec<u8> {
        use base64::Engine as _;
        let auth = self.auth.as_deref().map_or(String::new(), |a| {
            format!(
                "Authorization: Basic {}\r\n",
                base64::engine::general_purpose::STANDARD.encode(a)
            )
        });
        format!(
            "{} {} HTTP/1.1\r\nHost: pump\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{}",
            self.method,
            self.path,
            self.body.len(),
            self.body
        )
        .into_bytes()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientsAction {
    clients: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadAction {
    /// Airtime fraction taken by other traffic (0 to 0.95).
    airtime: f64,
    /// CPU fraction of the network core the WiFi task spends on it.
    #[serde(default)]
    cpu: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlarmAction {
    #[serde(default = "one")]
    code: u8,
}
fn one() -> u8 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GarbageAction {
    #[serde(default = "default_garbage")]
    bytes: usize,
}
fn default_garbage() -> usize {
    48
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PumpAction {
    pump: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

fn pump_of(s: &str) -> Result<Pump, String> {
    let mut c = s.chars();
    match (c.next().and_then(Pump::from_axis), c.next()) {
        (Some(p), None) => Ok(p),
        _ => Err(format!("pump `{s}`: expected X, Y, Z or A")),
    }
}

fn dose(pump: &str, volume_ml: f32, flow_ml_min: f32) -> Result<DispenseRequest, String> {
    let pump = pump_of(pump)?;
    if !(volume_ml.is_finite() && volume_ml > 0.0) {
        return Err(format!("volume_ml must be above zero, got {volume_ml}"));
    }
    if !(flow_ml_min.is_finite() && flow_ml_min > 0.0) {
        return Err(format!("flow_ml_min must be above zero, got {flow_ml_min}"));
    }
    Ok(DispenseRequest {
        pump,
        volume_ml,
        flow_ml_min,
    })
}

impl PumpSpec {
    /// Parse and check a `pump` table.
    pub fn parse(table: &toml::Table) -> Result<Self, String> {
        let mut spec: PumpSpec = from_table(table)?;
        if !(spec.ml_per_mm.is_finite() && spec.ml_per_mm > 0.0) {
            return Err(format!(
                "ml_per_mm must be above zero, got {}",
                spec.ml_per_mm
            ));
        }
        if spec.estop_poll == Duration::ZERO {
            return Err("estop_poll must be above zero".into());
        }
        if let Some(w) = &spec.wifi {
            check_wifi(w)?;
        }
        let mut recipes = vec![demo_recipe()];
        for r in &spec.recipes {
            let name = heapless::String::try_from(r.name.as_str())
                .map_err(|_| format!("recipe name `{}` is too long (24 bytes max)", r.name))?;
            let mut steps = heapless::Vec::new();
            for s in &r.steps {
                let mut doses = heapless::Vec::new();
                for d in s {
                    doses
                        .push(dose(&d.pump, d.volume_ml, d.flow_ml_min)?)
                        .map_err(|_| format!("recipe `{}`: more than 4 doses in a step", r.name))?;
                }
                steps
                    .push(RecipeStep { doses })
                    .map_err(|_| format!("recipe `{}`: more than 16 steps", r.name))?;
            }
            recipes.retain(|x: &Recipe| x.name != name);
            recipes.push(Recipe { name, steps });
        }
        if recipes.len() > 8 {
            return Err("at most 8 recipes".into());
        }
        spec.checked_recipes = recipes;
        if let Some(m) = &spec.mqtt {
            let d = Identity::default();
            spec.checked_identity = Identity::new(
                m.prefix.as_deref().unwrap_or(d.prefix()),
                m.client_id.as_deref().unwrap_or(d.client_id()),
            )
            .map_err(|e| format!("mqtt: {e}"))?;
        }
        if let Some(l) = &spec.tx_power_levels {
            let mut levels = TxPowerLevels::DEFAULT;
            for (slot, text) in [
                (&mut levels.idle, &l.idle),
                (&mut levels.dispensing, &l.dispensing),
                (&mut levels.emergency, &l.emergency),
            ] {
                if let Some(t) = text {
                    *slot = level(t)?;
                }
            }
            spec.checked_levels = levels;
        }
        Ok(spec)
    }

    /// The same spec with another MQTT identity (a fleet member's).
    pub fn with_identity(mut self, identity: Identity) -> Self {
        self.checked_identity = identity;
        self
    }

    /// The MQTT identity.
    pub fn identity(&self) -> Identity {
        self.checked_identity.clone()
    }

    /// The governor's TX power levels.
    pub fn tx_levels(&self) -> TxPowerLevels {
        self.checked_levels
    }

    /// The same spec with another architecture option.
    pub fn with_arch(mut self, arch: Arch) -> Self {
        self.arch = arch;
        self
    }

    /// A default spec (option 2, no WebSocket clients).
    pub fn default_spec() -> Self {
        PumpSpec::parse(&toml::Table::new()).unwrap_or_else(|_| unreachable!())
    }

    fn drain(&self) -> DrainConfig {
        let mut d = DrainConfig::DEFAULT;
        if let Some(t) = self.policy.drain_dispensing {
            d.dispensing_cycle = t;
        }
        d
    }

    fn wifi_config(&self) -> WifiConfig {
        let mut c = WifiConfig::default();
        if let Some(w) = &self.wifi {
            apply_wifi(&mut c, w);
        }
        c
    }
}

fn check_wifi(w: &WifiTable) -> Result<(), String> {
    if let Some(l) = w.loss
        && !(0.0..=0.9).contains(&l)
    {
        return Err(format!("wifi loss must be 0 to 0.9, got {l}"));
    }
    if let Some(r) = w.rate_mbps
        && !(r.is_finite() && r > 0.0)
    {
        return Err(format!("wifi rate_mbps must be above zero, got {r}"));
    }
    if let Some(p) = &w.tx_power {
        p.parse::<TxPower>().map_err(|_| {
            format!("wifi tx_power `{p}`: expected one of the ESP32's levels, e.g. 5dBm")
        })?;
    }
    Ok(())
}

fn apply_wifi(c: &mut WifiConfig, w: &WifiTable) {
    if let Some(v) = w.latency {
        c.latency = v;
    }
    if let Some(v) = w.jitter {
        c.jitter = v;
    }
    if let Some(v) = w.loss {
        c.loss = v;
    }
    if let Some(v) = w.rate_mbps {
        c.bandwidth_bps = (v * 1e6) as u64;
    }
    if let Some(p) = w
        .tx_power
        .as_deref()
        .and_then(|p| p.parse::<TxPower>().ok())
    {
        c.tx_power = p;
    }
}

fn demo_recipe() -> Recipe {
    let mut steps = heapless::Vec::new();
    for pump in [Pump::X, Pump::Y] {
        let mut doses = heapless::Vec::new();
        let _ = doses.push(DispenseRequest {
            pump,
            volume_ml: 2.0,
            flow_ml_min: 10.0,
        });
        let _ = steps.push(RecipeStep { doses });
    }
    Recipe {
        name: heapless::String::try_from("demo").unwrap_or_default(),
        steps,
    }
}

impl DeviceSpec for PumpSpec {
    fn check_action(&self, verb: &str, params: &toml::Table) -> Result<(), String> {
        match verb {
            "dispense" => {
                let a: DispenseAction = from_table(params)?;
                dose(&a.pump, a.volume_ml, a.flow_ml_min).map(|_| ())
            }
            "recipe" => {
                let a: NameAction = from_table(params)?;
                if self
                    .checked_recipes
                    .iter()
                    .any(|r| r.name == a.name.as_str())
                {
                    Ok(())
                } else {
                    Err(format!("no recipe `{}`", a.name))
                }
            }
            "mqtt.command" => from_table::<JsonAction>(params).map(|_| ()),
            "http" => {
                let a: HttpAction = from_table(params)?;
                if !matches!(a.method.as_str(), "GET" | "POST") || !a.path.starts_with('/') {
                    return Err("http: method GET or POST, path starting with /".into());
                }
                Ok(())
            }
            "ws.connect" => from_table::<ClientsAction>(params).map(|_| ()),
            "wifi" => check_wifi(&from_table::<WifiTable>(params)?),
            "wifi.load" => {
                let a: LoadAction = from_table(params)?;
                if !(0.0..=0.95).contains(&a.airtime) || !(0.0..=0.95).contains(&a.cpu) {
                    return Err("airtime and cpu must be 0 to 0.95".into());
                }
                Ok(())
            }
            "fluidnc.alarm" => from_table::<AlarmAction>(params).map(|_| ()),
            "fluidnc.garbage" => from_table::<GarbageAction>(params).map(|_| ()),
            "fluidnc.stuck" => pump_of(&from_table::<PumpAction>(params)?.pump).map(|_| ()),
            "estop" | "resume" | "stop" | "wifi.disconnect" | "wifi.reconnect" | "broker.down"
            | "broker.up" | "fluidnc.never_idle" | "fluidnc.disconnect" | "fluidnc.reconnect" => {
                from_table::<Empty>(params).map(|_| ())
            }
            other => Err(format!("pump has no action `{other}` (actions: {ACTIONS})")),
        }
    }

    fn check_state(&self, key: &str) -> Result<(), String> {
        if let Some(rest) = key.strip_prefix("pump.") {
            let (p, field) = rest
                .split_once('.')
                .ok_or_else(|| format!("state `{key}`: expected pump.<X>.active|dispensed_ml"))?;
            pump_of(p)?;
            return match field {
                "active" | "dispensed_ml" => Ok(()),
                other => Err(format!("no pump state `{other}` (active, dispensed_ml)")),
            };
        }
        match key {
            "priority"
            | "queue.depth"
            | "queue.drops"
            | "queue.high_water"
            | "uart.last_tx"
            | "uart.lines"
            | "mqtt.delivered"
            | "mqtt.lost"
            | "mqtt.connected"
            | "mqtt.first_after_estop"
            | "mqtt.retained_status"
            | "ws.frames"
            | "fluidnc.state"
            | "resume.dispensed_ml"
            | "events.lost"
            | "commands.bad"
            | "commands.refused"
            | "control.missed"
            | "control.max_late_us"
            | "led"
            | "ws.sessions"
            | "ws.received"
            | "http.requests"
            | "http.ttfb_p50_ms"
            | "tcp.refused"
            | "tcp.overflow"
            | "commands.dropped"
            | "wifi.tx_power" => Ok(()),
            other => Err(format!("pump has no state `{other}` (states: {STATES})")),
        }
    }

    fn build(&self, name: &str, kernel: &mut Kernel) -> Box<dyn Device> {
        Box::new(build(self, name, kernel))
    }
}

/// The statics of one MCU's firmware (the sim keeps them in an `Rc` instead of `static`s).
pub struct Fw {
    /// The governor (on the WiFi MCU of option 3: the mirror of the pump MCU's).
    pub gov: Governor<NoopRawMutex, GOV_RECEIVERS>,
    /// The motion task's channels.
    pub channels: MotionChannels<NoopRawMutex>,
    /// The MQTT outbox.
    pub outbox: SharedOutbox<NoopRawMutex>,
    /// The snapshot the status publisher and the WebSocket feed read.
    pub pumps: Watch<NoopRawMutex, PumpSnapshot, 4>,
    /// Option 3, WiFi MCU: commands for the link. Full policy `RejectNew` (answered "refused").
    cmds: Queue<NoopRawMutex, MotionCommand, 8>,
    /// Option 3, WiFi MCU: what the link received. Full policy `DropOldest` (counted).
    up: Queue<NoopRawMutex, PumpToHost, 32>,
    /// Link state of this MCU's end (option 3).
    link_state: Signal<NoopRawMutex, LinkEvent>,
    /// The WebSocket feed's frames for every session.
    pub hub: WsHub<NoopRawMutex, WEB_SOCKETS>,
    /// The web server's counters.
    pub web: WebCounters<NoopRawMutex>,
}

/// Governor receivers: MQTT task, status publisher, WebSocket feed, radio, and the twin's
/// observer that puts each priority change on the timeline.
pub const GOV_RECEIVERS: usize = 5;

impl Fw {
    fn new(drain: DrainConfig) -> Self {
        Fw {
            gov: Governor::new(),
            channels: MotionChannels::new(),
            outbox: SharedOutbox::new(drain),
            pumps: Watch::new(),
            cmds: Queue::new(FullPolicy::RejectNew),
            up: Queue::new(FullPolicy::DropOldest),
            link_state: Signal::new(),
            hub: WsHub::new(),
            web: WebCounters::new(),
        }
    }

    /// Where this MCU's network side sends commands: pump control's queue, or the link's
    /// (option 3).
    fn command_queue(&self, three: bool) -> &Queue<NoopRawMutex, MotionCommand, 8> {
        if three {
            &self.cmds
        } else {
            &self.channels.commands
        }
    }
}

/// The event task's source, watched by the twin on the way (the `resume.dispensed_ml` state).
struct Observed<S> {
    inner: S,
    net: Rc<Net>,
}

impl<S: LinkSource<Item = PumpToHost>> LinkSource for Observed<S> {
    type Item = PumpToHost;
    async fn next(&mut self) -> PumpToHost {
        let m = self.inner.next().await;
        if let PumpToHost::Event(PumpEvent::Resumed { dispensed_ml }) = &m {
            self.net
                .counters
                .resumed_ml
                .set(dispensed_ml.iter().map(|&v| f64::from(v)).sum());
        }
        m
    }
}

/// Half of a UART port for tasks that take separate read and write halves.
///
/// The motion and link runners never read and write at the same time (the read future is
/// dropped before they write), so the shared borrow is never contended.
#[derive(Clone)]
pub struct Half(Rc<RefCell<UartPort>>);

impl ErrorType for Half {
    type Error = core::convert::Infallible;
}

impl Read for Half {
    #[allow(clippy::await_holding_refcell_ref)]
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        self.0.borrow_mut().read(buf).await
    }
}

impl Write for Half {
    #[allow(clippy::await_holding_refcell_ref)]
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.0.borrow_mut().write(buf).await
    }
    #[allow(clippy::await_holding_refcell_ref)]
    async fn flush(&mut self) -> Result<(), Self::Error> {
        self.0.borrow_mut().flush().await
    }
}

fn halves(p: UartPort) -> (Half, Half) {
    let h = Half(Rc::new(RefCell::new(p)));
    (h.clone(), h)
}

/// The running pump twin.
pub struct PumpDevice {
    name: String,
    arch: Arch,
    clock: SimClock,
    /// The firmware's shared state.
    pub fw: Rc<Fw>,
    /// The WiFi MCU's firmware in option 3 (else the same as `fw`).
    pub net_fw: Rc<Fw>,
    /// The network side.
    pub net: Rc<Net>,
    /// The simulated FluidNC board.
    pub board: Board,
    fluidnc_uart: UartLink,
    button: Rc<Cell<bool>>,
    estop_input: EstopInput,
    control: Rc<ControlStats>,
    /// The status LED's pattern, as the firmware drives it.
    led: Rc<Cell<LedPattern>>,
    /// The command task's counters.
    command_stats: Rc<Cell<CommandStats>>,
    /// The scenario's WebSocket clients.
    ws_clients: WsClients,
}

#[derive(Default)]
struct ControlStats {
    missed: Cell<u64>,
    max_late: Cell<Duration>,
}

/// Build the twin on `kernel`.
pub fn build(spec: &PumpSpec, name: &str, kernel: &mut Kernel) -> PumpDevice {
    let clock = kernel.clock();
    let tracer = kernel.tracer();
    let drain = spec.drain();
    let fw = Rc::new(Fw::new(drain));
    let (pump_core, net_core): (CoreId, CoreId) = match spec.arch {
        Arch::Option1 | Arch::Option2 => (
            kernel.add_core(format!("{name}.core1")),
            kernel.add_core(format!("{name}.core0")),
        ),
        Arch::Option3 => (
            kernel.add_core(format!("{name}.pumpmcu")),
            kernel.add_core(format!("{name}.wifimcu")),
        ),
    };
    // The FluidNC UART and the board.
    let (fluidnc_uart, mcu_port, board_port) = uart::link(
        kernel,
        &format!("{name}.uart"),
        UartConfig::new_8n1(115_200),
    )
    .unwrap_or_else(|_| unreachable!("115200 8N1 is a valid line"));
    let fluidnc = FluidncBoard::new(
        kernel,
        &format!("{name}.fluidnc"),
        FluidncConfig {
            ml_per_mm: [f64::from(spec.ml_per_mm); 4],
            ..FluidncConfig::default()
        },
    )
    .unwrap_or_else(|_| unreachable!("ml_per_mm was checked positive"));
    let probe = Rc::new(RefCell::new(Probe::default()));
    let tap = Tap::new(
        name,
        board_port,
        probe.clone(),
        clock.clone(),
        tracer.clone(),
    );
    fluidnc.spawn(kernel, tap).detach();
    let board = Board {
        board: fluidnc,
        probe,
    };

    // The motion task.
    let cfg = MotionConfig {
        ml_per_mm: [spec.ml_per_mm; 4],
        ..MotionConfig::default()
    };
    let recipes = spec.checked_recipes.clone();
    let (rx, tx) = halves(mcu_port);
    let f = fw.clone();
    let c = clock.clone();
    kernel
        .spawn(
            TaskSpec::on_core(
                format!("{name}.motion"),
                pump_core,
                20,
                Duration::from_micros(30),
            ),
            async move {
                let fw = f;
                let mut core = PumpMotion::new(&fw.gov, cfg);
                for r in recipes {
                    let _ = core.recipes_mut().insert(r);
                }
                let mut task = MotionTask::new(core, rx, tx, c, &fw.channels);
                task.run().await
            },
        )
        .detach();

    // The E-stop input and the control tick.
    let button = Rc::new(Cell::new(false));
    if spec.estop_input == EstopInput::Poll {
        let (f, c, b, period) = (fw.clone(), clock.clone(), button.clone(), spec.estop_poll);
        kernel
            .spawn(
                TaskSpec::on_core(
                    format!("{name}.estop_poll"),
                    pump_core,
                    25,
                    Duration::from_micros(5),
                ),
                async move {
                    let mut input = EstopButton::new();
                    loop {
                        c.sleep(period).await;
                        if input.handle_level(b.get()) {
                            f.channels.estop.signal(EstopTrigger::Button);
                        }
                    }
                },
            )
            .detach();
    }
    let control = Rc::new(ControlStats::default());
    {
        let (c, st) = (clock.clone(), control.clone());
        kernel
            .spawn(
                TaskSpec::on_core(
                    format!("{name}.control"),
                    pump_core,
                    15,
                    Duration::from_micros(40),
                ),
                async move {
                    let period = Duration::from_millis(10);
                    let mut due = Instant::ZERO;
                    loop {
                        due += period;
                        c.sleep_until(due).await;
                        let late = c.now().saturating_since(due);
                        if late > Duration::from_millis(1) {
                            st.missed.set(st.missed.get() + 1);
                        }
                        if late > st.max_late.get() {
                            st.max_late.set(late);
                        }
                    }
                },
            )
            .detach();
    }

    // Option 3: the serial link between the two MCUs.
    let net_fw = if spec.arch == Arch::Option3 {
        let host = Rc::new(Fw::new(drain));
        let (_link, a, b) = uart::link(
            kernel,
            &format!("{name}.link"),
            UartConfig::new_8n1(115_200),
        )
        .unwrap_or_else(|_| unreachable!("115200 8N1 is a valid line"));
        let (arx, atx) = halves(a);
        let (brx, btx) = halves(b);
        let (f, c) = (fw.clone(), clock.clone());
        kernel
            .spawn(
                TaskSpec::on_core(
                    format!("{name}.link_pump"),
                    pump_core,
                    10,
                    Duration::from_micros(20),
                ),
                async move {
                    let fw = f;
                    let Some(source) = PumpSource::new(&fw.channels) else {
                        return;
                    };
                    let mut t = LinkTask::new(
                        LinkEndpoint::new(LinkConfig::default(), 1),
                        arx,
                        atx,
                        c,
                        source,
                        QueueSink(&fw.channels.commands),
                        &fw.link_state,
                    );
                    t.run().await;
                },
            )
            .detach();
        let (h, c) = (host.clone(), clock.clone());
        kernel
            .spawn(
                TaskSpec::on_core(
                    format!("{name}.link_wifi"),
                    net_core,
                    10,
                    Duration::from_micros(20),
                ),
                async move {
                    let host = h;
                    let mut t = LinkTask::new(
                        LinkEndpoint::new(LinkConfig::default(), 2),
                        brx,
                        btx,
                        c,
                        QueueSource(&host.cmds),
                        QueueSink(&host.up),
                        &host.link_state,
                    );
                    t.run().await;
                },
            )
            .detach();
        host
    } else {
        fw.clone()
    };

    // The network side.
    let identity = spec.identity();
    let wifi = wifi::link(kernel, &format!("{name}.wifi"), spec.wifi_config())
        .unwrap_or_else(|_| unreachable!("the wifi table was checked"));
    let net = Rc::new(Net::new(
        name,
        clock.clone(),
        tracer.clone(),
        identity,
        wifi,
        spec.wifi_config(),
    ));
    let recipe_names: Rc<Vec<String>> = Rc::new(
        spec.checked_recipes
            .iter()
            .map(|r| r.name.as_str().to_owned())
            .collect(),
    );
    let three = spec.arch == Arch::Option3;
    type Task = std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;
    let mut net_task = |task: &str, prio: u8, cost: Duration, fut: Task| {
        kernel
            .spawn(
                TaskSpec::on_core(format!("{name}.{task}"), net_core, prio, cost),
                fut,
            )
            .detach();
    };
    let poll = Duration::from_micros(20);
    net_task("wifi", 23, poll, Box::pin(net.clone().wifi_load_task()));
    // lwIP's tcpip task sits just below the WiFi driver's.
    net_task(
        "netif",
        18,
        Duration::from_micros(10),
        Box::pin(net.clone().netif_task()),
    );
    // esp-mqtt hands received messages over in its own task, the one that publishes: the
    // command path shares the MQTT task's priority.
    let command_stats = Rc::new(Cell::new(CommandStats::default()));
    {
        let (f, n, names, st) = (
            net_fw.clone(),
            net.clone(),
            recipe_names.clone(),
            command_stats.clone(),
        );
        net_task(
            "cmd",
            5,
            poll,
            Box::pin(async move {
                let fw = f;
                let infos: Vec<RecipeInfo<'_>> =
                    names.iter().map(|n| RecipeInfo { name: n }).collect();
                let sink = fw.command_queue(three);
                let port = SimCommands { net: n.clone() };
                let mut t = CommandTask::new(port, sink, Limits::DEFAULT, &infos);
                let source = format!("{}.net", n.name);
                loop {
                    let outcome = t.step().await;
                    st.set(t.stats());
                    match outcome {
                        CommandOutcome::Submitted(_) => {}
                        CommandOutcome::Refused(_) => n
                            .tracer
                            .record(&source, "command refused: motion queue full"),
                        CommandOutcome::Bad(e) => {
                            n.tracer.record(&source, format!("bad command: {e}"))
                        }
                    }
                }
            }),
        );
    }
    let arch = spec.arch.firmware();
    {
        let (f, n, c) = (net_fw.clone(), net.clone(), clock.clone());
        net_task(
            "mqtt",
            5,
            poll,
            Box::pin(async move {
                let fw = f;
                let depth_of = fw.clone();
                let identity = n.identity.clone();
                let port = SimMqtt {
                    net: n,
                    outbox: Rc::new(move || depth_of.outbox.with(|o| o.len() + o.emergency_len())),
                };
                if let Some(mut t) = MqttTask::new(&fw.outbox, &fw.gov, port, c, arch, &identity) {
                    t.run().await;
                }
            }),
        );
    }
    {
        let (f, c) = (net_fw.clone(), clock.clone());
        net_task(
            "status",
            4,
            poll,
            Box::pin(async move {
                let fw = f;
                if let Some(mut t) = StatusTask::new(
                    &fw.outbox,
                    &fw.gov,
                    fw.pumps.dyn_anon_receiver(),
                    NoStats,
                    c,
                    Instant::ZERO,
                ) {
                    t.run().await;
                }
            }),
        );
    }
    // The web server: one task per socket, each parsing, answering and running its WebSocket
    // session on the network core.
    for i in 0..WEB_SOCKETS {
        let (f, n, c, names) = (
            net_fw.clone(),
            net.clone(),
            clock.clone(),
            recipe_names.clone(),
        );
        net_task(
            &format!("web{i}"),
            4,
            WEB_POLL_COST,
            Box::pin(async move {
                let fw = f;
                let infos: Vec<RecipeInfo<'_>> =
                    names.iter().map(|n| RecipeInfo { name: n }).collect();
                let status = StatusView {
                    governor: &fw.gov,
                    pumps: &fw.pumps,
                    outbox: &fw.outbox,
                    platform: NoStats,
                    boot: Instant::ZERO,
                };
                let ctx = WebContext::new(
                    WebConfig {
                        rest: RestConfig::default(),
                        recipes: &infos,
                        page: PAGE,
                    },
                    &status,
                    fw.command_queue(three),
                    &fw.hub,
                    &fw.web,
                );
                WebTask::new(SimSocket::new(n), c, &ctx).run().await
            }),
        );
    }
    {
        let (f, n, c) = (net_fw.clone(), net.clone(), clock.clone());
        net_task(
            "ws",
            3,
            poll,
            Box::pin(async move {
                let fw = f;
                let counters = fw.clone();
                let sink = ObservedFeed {
                    inner: &fw.hub,
                    net: n,
                    sessions: Rc::new(move || counters.web.get().open_sessions),
                    last: None,
                };
                if let Some(mut t) = WsTask::new(&fw.gov, fw.pumps.dyn_anon_receiver(), sink, c) {
                    t.run().await;
                }
            }),
        );
    }
    {
        // Power management is not urgent: the E-stop path and its alarm go first.
        let (f, n, c, levels) = (net_fw.clone(), net.clone(), clock.clone(), spec.tx_levels());
        net_task(
            "radio",
            2,
            poll,
            Box::pin(async move {
                let fw = f;
                if let Some(mut t) = RadioTask::new(&fw.gov, SimRadio { net: n }, c, levels) {
                    t.run().await;
                }
            }),
        );
    }
    // The event task: motion events and snapshots into the network side's outbox and watch.
    {
        let (f, pump_side, n, c) = (net_fw.clone(), fw.clone(), net.clone(), clock.clone());
        net_task(
            "events",
            6,
            poll,
            Box::pin(async move {
                let fw = f;
                if three {
                    let source = Observed {
                        inner: QueueSource(&fw.up),
                        net: n,
                    };
                    EventTask::new(
                        source,
                        &fw.outbox,
                        &fw.pumps,
                        &fw.gov,
                        GovernorRole::Mirror,
                        c,
                    )
                    .run()
                    .await
                } else {
                    let Some(source) = PumpSource::new(&pump_side.channels) else {
                        return;
                    };
                    let source = Observed {
                        inner: source,
                        net: n,
                    };
                    EventTask::new(
                        source,
                        &fw.outbox,
                        &fw.pumps,
                        &fw.gov,
                        GovernorRole::Local,
                        c,
                    )
                    .run()
                    .await
                }
            }),
        );
    }
    // The UI lag runs from a pump-side change the operator must see (a pump starting or
    // stopping, dispensing, emergency, alarm; not the running totals), measured by a free
    // observer, not firmware. The same observer watches the status LED the firmware drives.
    let led = Rc::new(Cell::new(LedPattern::default()));
    {
        let (f, n, l) = (fw.clone(), net.clone(), led.clone());
        let (tracer, source) = (kernel.tracer(), format!("{name}.led"));
        kernel
            .spawn(TaskSpec::world(format!("{name}.ui_lag")), async move {
                let fw = f;
                let Some(mut rx) = fw.channels.snapshot.receiver() else {
                    return;
                };
                let key = |s: &MotionSnapshot| {
                    (
                        s.pumps.map(|p| p.active),
                        s.dispensing,
                        s.emergency,
                        s.alarm.is_some(),
                    )
                };
                let mut last = None;
                loop {
                    let s = rx.changed().await;
                    if s.led != l.get() {
                        l.set(s.led);
                        tracer.record(&source, format!("led {:?}", s.led));
                    }
                    if last != Some(key(&s)) {
                        last = Some(key(&s));
                        n.snapshot_changed();
                    }
                }
            })
            .detach();
    }
    // Every priority change as an instant on the timeline (`<pump>.governor`), seen by a free
    // observer of the pump MCU's governor, as the firmware's own tasks see it.
    {
        let f = fw.clone();
        let (tracer, source) = (kernel.tracer(), format!("{name}.governor"));
        kernel
            .spawn(TaskSpec::world(format!("{name}.priority")), async move {
                let fw = f;
                let Some(mut rx) = fw.gov.changed() else {
                    return;
                };
                loop {
                    let t = rx.changed().await;
                    tracer.record(
                        &source,
                        format!("priority {} ({:?})", t.priority.name(), t.reason),
                    );
                }
            })
            .detach();
    }
    kernel
        .spawn(
            TaskSpec::world(format!("{name}.air")),
            net.clone().air_task(),
        )
        .detach();
    let mut ws_clients = WsClients::default();
    ws_clients.set(&net, spec.ws_clients);

    PumpDevice {
        name: name.to_owned(),
        arch: spec.arch,
        clock,
        fw,
        net_fw,
        net,
        board,
        fluidnc_uart,
        button,
        estop_input: spec.estop_input,
        control,
        led,
        command_stats,
        ws_clients,
    }
}

impl PumpDevice {
    /// The architecture option it runs.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// Hand a command to the motion task the way a local request does (console, UI).
    pub fn local_command(&self, cmd: MotionCommand) -> bool {
        self.fw.channels.commands.offer(cmd).is_queued()
    }

    /// Press the E-stop button.
    pub fn press_estop(&self) {
        self.board.probe.borrow_mut().estop_edge = Some(self.clock.now());
        self.net.broker.borrow_mut().watch_first = true;
        self.button.set(true);
        self.net
            .tracer
            .record(&format!("{}.estop", self.name), "button pressed");
        // With an interrupt the edge reaches the motion task at once; the polled input
        // finds it at its next sample.
        if self.estop_input == EstopInput::Interrupt {
            self.fw.channels.estop.signal(EstopTrigger::Button);
        }
    }
}

impl Device for PumpDevice {
    fn act(&mut self, verb: &str, params: &toml::Table) -> Result<(), String> {
        let now = self.clock.now();
        match verb {
            "dispense" => {
                let a: DispenseAction = from_table(params)?;
                let mut doses = heapless::Vec::new();
                let _ = doses.push(dose(&a.pump, a.volume_ml, a.flow_ml_min)?);
                self.board.probe.borrow_mut().command_sent = Some(now);
                if !self.local_command(MotionCommand::Dispense(doses)) {
                    return Err("the motion command queue is full".into());
                }
            }
            "recipe" => {
                let a: NameAction = from_table(params)?;
                let name = heapless::String::try_from(a.name.as_str())
                    .map_err(|_| "recipe name too long".to_owned())?;
                self.board.probe.borrow_mut().command_sent = Some(now);
                if !self.local_command(MotionCommand::StartRecipe(name)) {
                    return Err("the motion command queue is full".into());
                }
            }
            "stop" => {
                if !self.local_command(MotionCommand::Stop) {
                    return Err("the motion command queue is full".into());
                }
            }
            "estop" => self.press_estop(),
            "resume" => {
                self.button.set(false);
                if !self.local_command(MotionCommand::Resume) {
                    return Err("the motion command queue is full".into());
                }
            }
            "mqtt.command" => {
                let a: JsonAction = from_table(params)?;
                if a.json.contains("\"dispense\"") || a.json.contains("\"recipe\"") {
                    self.board.probe.borrow_mut().command_sent = Some(now);
                }
                self.net.command_from_client(a.json.into_bytes());
            }
            "http" => {
                let a: HttpAction = from_table(params)?;
                if a.method == "POST"
                    && (a.path.starts_with("/api/pump/start")
                        || a.path.starts_with("/api/recipe/start"))
                {
                    self.board.probe.borrow_mut().command_sent = Some(now);
                }
                clients::http(&self.net, a.request(), format!("{} {}", a.method, a.path));
            }
            "ws.connect" => {
                let a: ClientsAction = from_table(params)?;
                self.ws_clients.set(&self.net, a.clients);
            }
            "wifi" => {
                let a: WifiTable = from_table(params)?;
                apply_wifi(&mut self.net.wifi_base.borrow_mut(), &a);
                self.net.apply_wifi();
            }
            "wifi.load" => {
                let a: LoadAction = from_table(params)?;
                self.net.airtime.set(a.airtime);
                self.net.cpu_load.set(a.cpu);
                self.net.apply_wifi();
                self.net.load_kick.signal(());
            }
            "wifi.disconnect" => self.set_link("wifi", false),
            "wifi.reconnect" => self.set_link("wifi", true),
            "broker.down" => self.set_link("broker", false),
            "broker.up" => self.set_link("broker", true),
            "fluidnc.alarm" => self
                .board
                .board
                .raise_alarm(from_table::<AlarmAction>(params)?.code),
            "fluidnc.never_idle" => self.board.board.set_never_idle(true),
            "fluidnc.disconnect" => self.fluidnc_uart.disconnect(),
            "fluidnc.reconnect" => self.fluidnc_uart.reconnect(),
            "fluidnc.garbage" => self
                .board
                .board
                .inject_garbage(from_table::<GarbageAction>(params)?.bytes),
            "fluidnc.stuck" => {
                let p = pump_of(&from_table::<PumpAction>(params)?.pump)?;
                self.board.board.set_stuck(p.index(), true);
            }
            other => return Err(format!("no action `{other}`")),
        }
        Ok(())
    }

    fn state(&self, key: &str) -> Option<StateValue> {
        if let Some(rest) = key.strip_prefix("pump.") {
            let (p, field) = rest.split_once('.')?;
            let p = pump_of(p).ok()?;
            let s = self.net_fw.pumps.try_get().unwrap_or_default().pumps[p.index()];
            return match field {
                "active" => Some(StateValue::Bool(s.active)),
                "dispensed_ml" => Some(StateValue::Float(f64::from(s.dispensed_ml))),
                _ => None,
            };
        }
        let ob = self.net_fw.outbox.stats();
        let depth = self.net_fw.outbox.with(|o| o.len() + o.emergency_len());
        let b = self.net.broker.borrow();
        let int = |v: u64| Some(StateValue::Int(v as i64));
        match key {
            "priority" => Some(StateValue::Text(self.fw.gov.get().name().into())),
            "queue.depth" => int(depth as u64),
            "queue.drops" => int(u64::from(ob.dropped())),
            "queue.high_water" => int(u64::from(ob.high_water)),
            "uart.last_tx" => Some(StateValue::Text(self.board.probe.borrow().last_rx.clone())),
            "uart.lines" => int(self.board.probe.borrow().lines),
            "mqtt.delivered" => int(b.delivered),
            "mqtt.lost" => int(b.lost),
            "mqtt.connected" => Some(StateValue::Bool(self.net.mqtt_connected.get())),
            "mqtt.first_after_estop" => Some(StateValue::Text(
                b.first_after_estop.clone().unwrap_or_default(),
            )),
            "mqtt.retained_status" => Some(StateValue::Text(
                self.net
                    .identity
                    .topic(topic::STATUS)
                    .and_then(|t| b.retained.get(t.as_str()).cloned())
                    .unwrap_or_default(),
            )),
            "ws.frames" => int(u64::from(self.net_fw.web.get().frames)),
            "ws.sessions" => int(u64::from(self.net_fw.web.get().open_sessions)),
            "ws.received" => int(self.ws_clients.received()),
            "http.requests" => int(u64::from(self.net_fw.web.get().requests)),
            "http.ttfb_p50_ms" => Some(StateValue::Float(
                self.net
                    .ttfb_median()
                    .map_or(0.0, |d| d.as_micros() as f64 / 1000.0),
            )),
            "tcp.refused" => int(self.net.counters.tcp_refused.get()),
            "tcp.overflow" => int(self.net.counters.tcp_overflow.get()),
            "commands.dropped" => int(self.net.counters.commands_dropped.get()),
            "wifi.tx_power" => Some(StateValue::Text(
                self.net.wifi.config().tx_power.to_string(),
            )),
            "fluidnc.state" => Some(StateValue::Text(self.board.machine().into())),
            "resume.dispensed_ml" => Some(StateValue::Float(self.net.counters.resumed_ml.get())),
            "events.lost" => int(u64::from(self.fw.channels.events.stats().lost())),
            "commands.bad" => int(u64::from(self.command_stats.get().bad)),
            "commands.refused" => int(u64::from(
                self.command_stats.get().refused + self.net_fw.web.get().commands_refused,
            )),
            "control.missed" => int(self.control.missed.get()),
            "control.max_late_us" => int(self.control.max_late.get().as_micros()),
            "led" => Some(StateValue::Text(format!("{:?}", self.led.get()))),
            _ => None,
        }
    }
}

impl PumpDevice {
    fn set_link(&self, what: &str, up: bool) {
        match what {
            "wifi" if up => self.net.wifi.reconnect(),
            "wifi" => self.net.wifi.disconnect(),
            _ => {
                // What is in flight when the broker goes down is lost on arrival (counted).
                self.net.broker.borrow_mut().up = up;
            }
        }
        self.net.tracer.record(
            &format!("{}.net", self.name),
            format!("{what} {}", if up { "up" } else { "down" }),
        );
    }
}
