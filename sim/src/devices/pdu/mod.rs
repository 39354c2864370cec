//! `kind = "pdu"`: the ENERGIS PDU twin — the firmware of `firmware_core::pdu` on one simulated
//! RP2040 core, wired to simulated parts:
//!
//! * I2C1 (400 kHz): relay MCP23017 at 0x20 (relays on port A, meter mux on port B) and the
//!   CAT24C256 EEPROM at 0x50;
//! * I2C0 (400 kHz): display MCP23017s at 0x21 (channel/status LEDs) and 0x23 (selection LEDs);
//! * UART0 4800 8E1 from the bank of eight HLW8032 behind the 74HC4051 mux;
//! * the four panel buttons (MINUS, PLUS, SET, PWR).
//!
//! [`firmware`] assembles the tasks and boot, [`net`] holds the NetTask/ConsoleTask runners and
//! the scenario's SNMP manager, [`parts`] the simulated parts. The scenario vocabulary (options,
//! actions, states) is documented in `scenarios/README.md`.
pub mod firmware;
pub mod live;
pub mod net;
pub mod parts;

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, Waker};

use crate::periph::panel::Button;
use firmware_core::pdu::config::{INTERLOCK_GROUPS, PduConfig};
use firmware_core::pdu::frontend::OcpState;
use firmware_core::pdu::storage::{SLOT_A_ADDRESS, encode};
use firmware_core::pdu::{Outlet, OutletMask};
use firmware_core::time::Duration;
use serde::Deserialize;

use super::{Device, DeviceSpec, StateValue, from_table, serde_duration};
use crate::kernel::{Kernel, TaskSpec};
use crate::periph::eeprom::Cat24c256;
use crate::periph::i2c::{FAST_MODE_HZ, I2cBus};
use crate::periph::uart::{self, UartConfig};
use firmware::{Costs, Shared, TASKS, new_shared, spawn_device, state_name};
use net::{NetInput, ReplyTo, SnmpKind, encode_request, parse_oid, pdu_tag};
use parts::Parts;

/// The `pdu` device table. Every key is optional; configuration keys change the factory
/// defaults of [`PduConfig`] before the configuration is stored in the EEPROM.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PduSpec {
    /// `"config"` (default): the EEPROM holds this table's configuration; `"blank"`: nothing.
    #[serde(default)]
    eeprom: Option<String>,
    /// `switch.restore_on_boot`.
    restore_on_boot: Option<bool>,
    /// `switch.last_state`, as outlet numbers.
    last_state: Option<Vec<u8>>,
    /// `switch.safe_mask`, as outlet numbers.
    safe_mask: Option<Vec<u8>>,
    /// `switch.interlock_groups`: up to four lists of outlet numbers.
    interlock_groups: Option<Vec<Vec<u8>>>,
    /// `switch.min_toggle_ms`.
    min_toggle_ms: Option<u16>,
    /// `switch.max_simultaneous`.
    max_simultaneous: Option<u8>,
    /// `switch.priority_override`: rank per source (health, console, net, button, schedule).
    priority_override: Option<[u8; 5]>,
    /// `switch.i2c_fault_threshold`.
    i2c_fault_threshold: Option<u8>,
    /// `ocp.limit_a`.
    ocp_limit_a: Option<f32>,
    /// `health.heartbeat_timeout_ms`.
    heartbeat_timeout_ms: Option<u32>,
    /// `health.watchdog_ms`.
    watchdog_ms: Option<u32>,
    /// `identity.device_name`.
    device_name: Option<String>,
    /// `http.auth_enabled`.
    http_auth: Option<bool>,
    /// NetTask inbox capacity (default 16).
    net_queue: Option<usize>,
    /// NetTask serves at most one item per this period (default 1 ms; "0ms" = no pacing).
    #[serde(default, with = "opt_duration")]
    net_poll: Option<Duration>,
    /// CPU time per SNMP datagram (default 300 µs).
    #[serde(default, with = "opt_duration")]
    snmp_cost: Option<Duration>,
    /// Task priorities overriding the defaults (`{ net = 6 }`).
    priorities: Option<toml::Table>,
}

mod opt_duration {
    use firmware_core::time::Duration;
    use serde::Deserializer;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::serde_duration::deserialize(d).map(Some)
    }
}

fn mask(list: &[u8], what: &str) -> Result<OutletMask, String> {
    let mut m = OutletMask::NONE;
    for &n in list {
        let o = Outlet::new(n).ok_or_else(|| format!("{what}: outlet {n} is not 1..=8"))?;
        m = m.with(o, true);
    }
    Ok(m)
}

impl PduSpec {
    /// Parse and check a `pdu` table.
    pub fn parse(table: &toml::Table) -> Result<Self, String> {
        let spec: PduSpec = from_table(table)?;
        spec.config()?;
        spec.priorities()?;
        match spec.eeprom.as_deref() {
            None | Some("config") | Some("blank") => {}
            Some(other) => {
                return Err(format!(
                    "eeprom = `{other}`: expected \"config\" or \"blank\""
                ));
            }
        }
        if spec.net_queue == Some(0) {
            return Err("net_queue must be at least 1".into());
        }
        Ok(spec)
    }

    fn priorities(&self) -> Result<Vec<(String, u8)>, String> {
        let mut out = Vec::new();
        for (k, v) in self.priorities.iter().flatten() {
            if !TASKS.contains(&k.as_str()) {
                return Err(format!(
                    "priorities: no task `{k}` (tasks: {})",
                    TASKS.join(", ")
                ));
            }
            let p = v
                .as_integer()
                .and_then(|p| u8::try_from(p).ok())
                .ok_or_else(|| format!("priorities.{k}: expected 0..=255"))?;
            out.push((k.clone(), p));
        }
        Ok(out)
    }

    /// The configuration this table describes.
    pub fn config(&self) -> Result<PduConfig, String> {
        let mut c = PduConfig::default();
        if let Some(v) = self.restore_on_boot {
            c.switch.restore_on_boot = v;
        }
        if let Some(v) = &self.last_state {
            c.switch.last_state = mask(v, "last_state")?;
        }
        if let Some(v) = &self.safe_mask {
            c.switch.safe_mask = mask(v, "safe_mask")?;
        }
        if let Some(groups) = &self.interlock_groups {
            if groups.len() > INTERLOCK_GROUPS {
                return Err(format!(
                    "interlock_groups: at most {INTERLOCK_GROUPS} groups"
                ));
            }
            c.switch.interlock_groups = [OutletMask::NONE; INTERLOCK_GROUPS];
            for (i, g) in groups.iter().enumerate() {
                c.switch.interlock_groups[i] = mask(g, "interlock_groups")?;
            }
        }
        if let Some(v) = self.min_toggle_ms {
            c.switch.min_toggle_ms = v;
        }
        if let Some(v) = self.max_simultaneous {
            c.switch.max_simultaneous = v;
        }
        if let Some(v) = self.priority_override {
            c.switch.priority_override = v;
        }
        if let Some(v) = self.i2c_fault_threshold {
            c.switch.i2c_fault_threshold = v;
        }
        if let Some(v) = self.ocp_limit_a {
            if !(v.is_finite() && v > 0.0) {
                return Err("ocp_limit_a must be above zero".into());
            }
            c.ocp.limit_a = v;
        }
        if let Some(v) = self.heartbeat_timeout_ms {
            c.health.heartbeat_timeout_ms = v;
        }
        if let Some(v) = self.watchdog_ms {
            c.health.watchdog_ms = v;
        }
        if let Some(v) = &self.device_name {
            c.identity.device_name = heapless::String::try_from(v.as_str())
                .map_err(|_| "device_name: at most 32 bytes".to_owned())?;
        }
        if let Some(v) = self.http_auth {
            c.http.auth_enabled = v;
        }
        Ok(c)
    }
}

// ---------------------------------------------------------------------------------------------
// Actions

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Press {
    button: String,
    #[serde(default, with = "opt_duration")]
    hold: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsoleLine {
    line: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Snmp {
    oid: String,
    value: Option<i64>,
    community: Option<String>,
    version: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Http {
    #[serde(default)]
    method: Option<String>,
    path: String,
    #[serde(default)]
    body: Option<String>,
    /// `user:password` for Basic auth.
    auth: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadAction {
    channel: u8,
    watts: f32,
    pf: Option<f32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Nack {
    bus: String,
    address: u8,
    count: Option<u32>,
    #[serde(default, rename = "for", with = "opt_duration")]
    duration: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stuck {
    bus: String,
    #[serde(rename = "for", with = "serde_duration")]
    duration: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Silent {
    channel: u8,
    silent: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FailWrites {
    on: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PowerCut {
    after_bytes: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Hang {
    task: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Flood {
    rate: u32,
    #[serde(rename = "for", with = "serde_duration")]
    duration: Duration,
    oid: Option<String>,
    community: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Nothing {}

const ACTIONS: &str = "button.press, console, snmp.get, snmp.set, snmp.walk, http, load, \
    i2c.nack, i2c.stuck, meter.silent, eeprom.fail_writes, eeprom.power_cut, reboot, task.hang, \
    snmp.flood";

fn button_of(name: &str) -> Result<Button, String> {
    Button::parse(&name.to_ascii_lowercase())
        .ok_or_else(|| format!("button `{name}`: expected minus, plus, set or power"))
}

fn outlet(n: u8) -> Result<Outlet, String> {
    Outlet::new(n).ok_or_else(|| format!("channel {n} is not 1..=8"))
}

fn version_of(v: Option<&str>) -> Result<i64, String> {
    match v.unwrap_or("2c") {
        "1" => Ok(0),
        "2c" => Ok(1),
        other => Err(format!("version `{other}`: expected \"1\" or \"2c\"")),
    }
}

fn check_bus(bus: &str) -> Result<(), String> {
    match bus {
        "i2c0" | "i2c1" => Ok(()),
        other => Err(format!("bus `{other}`: expected i2c0 or i2c1")),
    }
}

fn check_action(verb: &str, params: &toml::Table) -> Result<(), String> {
    match verb {
        "button.press" => button_of(&from_table::<Press>(params)?.button).map(drop),
        "console" => from_table::<ConsoleLine>(params).map(drop),
        "snmp.get" | "snmp.set" | "snmp.walk" => {
            let a: Snmp = from_table(params)?;
            parse_oid(&a.oid)?;
            version_of(a.version.as_deref())?;
            if verb == "snmp.set" && a.value.is_none() {
                return Err("snmp.set needs `value`".into());
            }
            Ok(())
        }
        "http" => {
            let a: Http = from_table(params)?;
            if !a.path.starts_with('/') {
                return Err(format!("path `{}` must start with /", a.path));
            }
            Ok(())
        }
        "load" => {
            let a: LoadAction = from_table(params)?;
            outlet(a.channel)?;
            if !(a.watts.is_finite() && a.watts >= 0.0) {
                return Err("watts must be 0 or more".into());
            }
            Ok(())
        }
        "i2c.nack" => {
            let a: Nack = from_table(params)?;
            check_bus(&a.bus)?;
            if a.count.is_none() == a.duration.is_none() {
                return Err("i2c.nack needs exactly one of `count` and `for`".into());
            }
            if a.address > 0x7F {
                return Err(format!("address 0x{:02x} is not 7-bit", a.address));
            }
            Ok(())
        }
        "i2c.stuck" => check_bus(&from_table::<Stuck>(params)?.bus),
        "meter.silent" => outlet(from_table::<Silent>(params)?.channel).map(drop),
        "eeprom.fail_writes" => from_table::<FailWrites>(params).map(drop),
        "eeprom.power_cut" => from_table::<PowerCut>(params).map(drop),
        "reboot" => from_table::<Nothing>(params).map(drop),
        "task.hang" => {
            let a: Hang = from_table(params)?;
            if a.task == "boot" || !TASKS.contains(&a.task.as_str()) {
                return Err(format!(
                    "task `{}`: expected one of {}",
                    a.task,
                    TASKS[1..].join(", ")
                ));
            }
            Ok(())
        }
        "snmp.flood" => {
            let a: Flood = from_table(params)?;
            if a.rate == 0 || a.rate > 1_000_000 {
                return Err("rate must be 1..=1000000 per second".into());
            }
            if let Some(o) = &a.oid {
                parse_oid(o)?;
            }
            Ok(())
        }
        other => Err(format!("pdu has no action `{other}` (actions: {ACTIONS})")),
    }
}

// ---------------------------------------------------------------------------------------------
// States

const STATES: &str = "relay<N>, relays, led.fault, led.eth, led.pwr, led.ch<N>, led.sel<N>, switch_state, \
    ocp_state, meter.<N>.degraded, meter.<N>.power_w, meter.<N>.current_a, config.<key>, \
    last_state, config_source, boots, powered, net.accepted, net.dropped, net.high_water, snmp.<counter>, \
    flood.sent, flood.replies, flood.unaccounted, switch_q.<stat>, log_q.<stat>, health.hung, io_errors";

fn check_state(key: &str) -> Result<(), String> {
    let ok = match key {
        "relays" | "led.fault" | "led.eth" | "led.pwr" | "switch_state" | "ocp_state"
        | "last_state" | "config_source" | "boots" | "powered" | "net.accepted" | "net.dropped"
        | "net.high_water" | "flood.sent" | "flood.replies" | "flood.unaccounted"
        | "health.hung" | "io_errors" => true,
        k if k.starts_with("config.") => true,
        k if k.starts_with("snmp.") => SNMP_COUNTERS.contains(&&k[5..]),
        k if k.starts_with("switch_q.") || k.starts_with("log_q.") => {
            let field = k.split_once('.').map_or("", |(_, f)| f);
            QUEUE_FIELDS.contains(&field)
        }
        k if k.starts_with("relay") => k[5..].parse::<u8>().ok().and_then(Outlet::new).is_some(),
        k if k.starts_with("led.ch") || k.starts_with("led.sel") => {
            let n = k.trim_start_matches("led.ch").trim_start_matches("led.sel");
            n.parse::<u8>().ok().and_then(Outlet::new).is_some()
        }
        k if k.starts_with("meter.") => {
            let mut it = k[6..].splitn(2, '.');
            let ch = it
                .next()
                .and_then(|n| n.parse::<u8>().ok())
                .and_then(Outlet::new);
            ch.is_some() && matches!(it.next(), Some("degraded" | "power_w" | "current_a"))
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("pdu has no state `{key}` (states: {STATES})"))
    }
}

const SNMP_COUNTERS: &[&str] = &[
    "requests",
    "replies",
    "error_replies",
    "dropped_bad_community",
    "switch_failures",
];
const QUEUE_FIELDS: &[&str] = &["accepted", "rejected", "displaced", "high_water"];

impl DeviceSpec for PduSpec {
    fn check_action(&self, verb: &str, params: &toml::Table) -> Result<(), String> {
        check_action(verb, params)
    }

    fn check_state(&self, key: &str) -> Result<(), String> {
        check_state(key)
    }

    fn build(&self, name: &str, kernel: &mut Kernel) -> Box<dyn Device> {
        match Pdu::build_with(self, name, kernel, None) {
            Ok(pdu) => Box::new(pdu),
            // `parse` checked everything that can fail here; record it if that ever changes.
            Err(e) => {
                kernel.record(name, format!("cannot build: {e}"));
                Box::new(Unbuilt)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The device

type Job = Pin<Box<dyn Future<Output = ()>>>;

/// World-side jobs a scenario action starts (a button held, a flood): polled by one world task.
#[derive(Default)]
struct Jobs {
    queue: RefCell<Vec<Job>>,
    waker: RefCell<Option<Waker>>,
}

impl Jobs {
    fn push(&self, job: Job) {
        self.queue.borrow_mut().push(job);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

/// A device whose build failed (never expected after `parse`): no actions, no states.
struct Unbuilt;

impl Device for Unbuilt {
    fn act(&mut self, verb: &str, _params: &toml::Table) -> Result<(), String> {
        Err(format!("the device was not built, cannot `{verb}`"))
    }
    fn state(&self, _key: &str) -> Option<StateValue> {
        None
    }
}

/// A running PDU twin.
pub struct Pdu {
    sh: Rc<Shared>,
    jobs: Rc<Jobs>,
}

impl Pdu {
    /// Build the device for `spec` on `kernel`. `eeprom_file`, if given, holds the EEPROM image
    /// between runs (live mode): an existing image is used as it is; a missing one starts from
    /// the configuration of `spec`, as a factory-programmed part.
    pub fn build_with(
        spec: &PduSpec,
        name: &str,
        kernel: &mut Kernel,
        eeprom_file: Option<&std::path::Path>,
    ) -> Result<Pdu, String> {
        let config = spec.config()?;
        let priorities = spec.priorities()?;
        let (eeprom, fresh) = match eeprom_file {
            Some(path) => (
                Cat24c256::open(kernel, &format!("{name}.eeprom"), path)
                    .map_err(|e| e.to_string())?,
                !path.exists(),
            ),
            None => (Cat24c256::new(kernel, &format!("{name}.eeprom")), true),
        };
        Pdu::build(spec, name, kernel, config, &priorities, eeprom, fresh)
    }

    fn build(
        spec: &PduSpec,
        name: &str,
        kernel: &mut Kernel,
        config: PduConfig,
        priorities: &[(String, u8)],
        mut eeprom: Cat24c256,
        fresh: bool,
    ) -> Result<Pdu, String> {
        if fresh
            && spec.eeprom.as_deref() != Some("blank")
            && let Ok(record) = encode(&config, 1)
        {
            eeprom.preload(SLOT_A_ADDRESS, record.as_bytes());
        }
        let bus = |n: &str| I2cBus::new(kernel, &format!("{name}.{n}"), FAST_MODE_HZ);
        let i2c0 = bus("i2c0").map_err(|e| e.to_string())?;
        let i2c1 = bus("i2c1").map_err(|e| e.to_string())?;
        let (_link, mcu, meters) =
            uart::link(kernel, &format!("{name}.uart0"), UartConfig::new_8e1(4800))
                .map_err(|e| e.to_string())?;
        let parts = Parts::build(kernel, name, &i2c0, &i2c1, meters, eeprom)?;
        let costs = Costs {
            snmp: spec.snmp_cost.unwrap_or(Duration::from_micros(300)),
            http: Duration::from_micros(800),
            console_line: Duration::from_micros(200),
            net_poll: spec.net_poll.unwrap_or(Duration::from_millis(1)),
        };
        let sh = new_shared(
            name,
            kernel,
            parts,
            i2c0,
            i2c1,
            mcu,
            costs,
            spec.net_queue.unwrap_or(16),
            config,
        );
        spawn_device(kernel, sh.clone(), priorities);

        // Scenario jobs.
        let jobs = Rc::new(Jobs::default());
        let j = jobs.clone();
        kernel
            .spawn(TaskSpec::world(format!("{name}.jobs")), async move {
                poll_fn(|cx| {
                    *j.waker.borrow_mut() = Some(cx.waker().clone());
                    j.queue
                        .borrow_mut()
                        .retain_mut(|job| job.as_mut().poll(cx).is_pending());
                    Poll::<()>::Pending
                })
                .await;
            })
            .detach();

        // Telemetry: queue and drop counters sampled every 100 ms.
        let s = sh.clone();
        kernel
            .spawn(TaskSpec::world(format!("{name}.telemetry")), async move {
                loop {
                    s.clock.sleep(Duration::from_millis(100)).await;
                    let n = s.net_inbox.stats();
                    let t = &s.tracer;
                    t.sample(&format!("{}.net.dropped", s.name), n.dropped as f64);
                    t.sample(&format!("{}.net.accepted", s.name), n.accepted as f64);
                    if let Some(b) = s.board.get() {
                        let q = b.switch_q.stats();
                        t.sample(&format!("{}.switch_q.rejected", s.name), q.rejected as f64);
                        t.sample(
                            &format!("{}.switch_q.high_water", s.name),
                            f64::from(q.high_water),
                        );
                        let l = b.log.stats();
                        t.sample(&format!("{}.log_q.displaced", s.name), l.displaced as f64);
                    }
                }
            })
            .detach();
        Ok(Pdu { sh, jobs })
    }

    fn snmp(&self, verb: &str, a: Snmp) -> Result<(), String> {
        let oid = parse_oid(&a.oid)?;
        let version = version_of(a.version.as_deref())?;
        let kind = match verb {
            "snmp.set" => SnmpKind::Set,
            "snmp.walk" => SnmpKind::GetNext,
            _ => SnmpKind::Get,
        };
        let community = a.community.unwrap_or_else(|| {
            if kind == SnmpKind::Set {
                "private".into()
            } else {
                "public".into()
            }
        });
        let label = format!("{verb} {}", a.oid);
        let id = self.sh.next_token() as i32;
        let req = encode_request(version, &community, pdu_tag(kind), id, &oid, a.value)
            .ok_or_else(|| format!("cannot encode a request for {}", a.oid))?;
        let to = if kind == SnmpKind::GetNext {
            ReplyTo::Walk {
                label,
                prefix: oid,
                community,
                version,
            }
        } else {
            ReplyTo::Trace(label)
        };
        if self.sh.net_inbox.offer(NetInput::Snmp(req, to)).is_err() {
            self.sh.record("snmp", "request dropped: net inbox full");
        }
        Ok(())
    }

    fn http(&self, a: Http) {
        let method = a
            .method
            .unwrap_or_else(|| "GET".into())
            .to_ascii_uppercase();
        let body = a.body.unwrap_or_default();
        let mut req = format!("{method} {} HTTP/1.1\r\nHost: pdu\r\n", a.path);
        if let Some(auth) = &a.auth {
            req.push_str(&format!(
                "Authorization: Basic {}\r\n",
                base64(auth.as_bytes())
            ));
        }
        if !body.is_empty() || method == "POST" {
            req.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        req.push_str(&body);
        let label = format!("{method} {}", a.path);
        if self
            .sh
            .net_inbox
            .offer(NetInput::Http(req.into_bytes(), ReplyTo::Trace(label)))
            .is_err()
        {
            self.sh.record("http", "request dropped: net inbox full");
        }
    }

    fn bus(&self, name: &str) -> &I2cBus {
        if name == "i2c0" {
            &self.sh.i2c0
        } else {
            &self.sh.i2c1
        }
    }
}

/// Standard base64 (for the Basic auth header of scenario requests).
pub fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(T[((n >> (18 - 6 * i)) & 0x3F) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl Device for Pdu {
    fn act(&mut self, verb: &str, params: &toml::Table) -> Result<(), String> {
        let sh = &self.sh;
        match verb {
            "button.press" => {
                let a: Press = from_table(params)?;
                let button = button_of(&a.button)?;
                let hold = a.hold.unwrap_or(Duration::from_millis(100));
                let s = sh.clone();
                s.parts.buttons.press(button);
                self.jobs.push(Box::pin(async move {
                    s.clock.sleep(hold).await;
                    s.parts.buttons.release(button);
                }));
            }
            "console" => {
                let a: ConsoleLine = from_table(params)?;
                let mut bytes = a.line.into_bytes();
                bytes.extend_from_slice(b"\r\n");
                if sh.console_inbox.offer(bytes).is_err() {
                    sh.record("console", "input dropped: console inbox full");
                }
            }
            "snmp.get" | "snmp.set" | "snmp.walk" => self.snmp(verb, from_table(params)?)?,
            "http" => self.http(from_table(params)?),
            "load" => {
                let a: LoadAction = from_table(params)?;
                let o = outlet(a.channel)?;
                sh.parts
                    .meters
                    .set_load(
                        o.index(),
                        f64::from(a.watts),
                        f64::from(a.pf.unwrap_or(1.0)),
                    )
                    .map_err(|e| e.to_string())?;
            }
            "i2c.nack" => {
                let a: Nack = from_table(params)?;
                let bus = self.bus(&a.bus);
                match (a.count, a.duration) {
                    (Some(n), _) => bus.nack_next(a.address, n),
                    (None, Some(d)) => bus.nack_for(a.address, d),
                    (None, None) => return Err("i2c.nack needs `count` or `for`".into()),
                }
            }
            "i2c.stuck" => {
                let a: Stuck = from_table(params)?;
                self.bus(&a.bus).stick_for(a.duration);
            }
            "meter.silent" => {
                let a: Silent = from_table(params)?;
                let o = outlet(a.channel)?;
                let silent = a.silent.unwrap_or(true);
                sh.parts
                    .meters
                    .set_silent(o.index(), silent)
                    .map_err(|e| e.to_string())?;
            }
            "eeprom.fail_writes" => {
                let a: FailWrites = from_table(params)?;
                let on = a.on.unwrap_or(true);
                sh.parts.eeprom.borrow_mut().set_write_protect(on);
                sh.record("eeprom", format!("fault: write protect {on}"));
            }
            "eeprom.power_cut" => {
                let a: PowerCut = from_table(params)?;
                sh.parts.eeprom.borrow_mut().cut_power_after(a.after_bytes);
                sh.record(
                    "eeprom",
                    format!("fault: power cut after {} bytes", a.after_bytes),
                );
                let s = sh.clone();
                self.jobs.push(Box::pin(async move {
                    loop {
                        s.clock.sleep(Duration::from_micros(100)).await;
                        if !s.parts.eeprom.borrow().is_powered() {
                            s.request_reboot("power cut during an EEPROM write");
                            return;
                        }
                    }
                }));
            }
            "reboot" => sh.request_reboot("scenario power cycle"),
            "task.hang" => sh.hang(&from_table::<Hang>(params)?.task),
            "snmp.flood" => {
                let a: Flood = from_table(params)?;
                let oid = parse_oid(a.oid.as_deref().unwrap_or("1.3.6.1.2.1.1.1.0"))?;
                let community = a.community.unwrap_or_else(|| "public".into());
                let period = Duration::from_micros((1_000_000 / u64::from(a.rate)).max(1));
                let s = sh.clone();
                s.record(
                    "snmp",
                    format!("flood {} requests/s for {}", a.rate, a.duration),
                );
                self.jobs.push(Box::pin(async move {
                    let end = s.clock.now() + a.duration;
                    let mut next = s.clock.now();
                    while next < end {
                        let id = (s.flood_sent.get() & 0x7FFF_FFFF) as i32;
                        if let Some(req) =
                            encode_request(1, &community, pdu_tag(SnmpKind::Get), id, &oid, None)
                        {
                            s.flood_sent.set(s.flood_sent.get() + 1);
                            let _ = s.net_inbox.offer(NetInput::Snmp(req, ReplyTo::Count));
                        }
                        next += period;
                        s.clock.sleep_until(next).await;
                    }
                    let st = s.net_inbox.stats();
                    s.record(
                        "snmp",
                        format!(
                            "flood done: sent={} served={} dropped_at_inbox={}",
                            s.flood_sent.get(),
                            s.flood_replies.get(),
                            st.dropped
                        ),
                    );
                }));
            }
            other => return Err(format!("pdu has no action `{other}`")),
        }
        Ok(())
    }

    fn state(&self, key: &str) -> Option<StateValue> {
        let sh = &self.sh;
        let relay = sh.parts.relays.contacts();
        let leds = sh.parts.leds.state();
        let snap = sh.switch_snapshot();
        let v = match key {
            "relays" => StateValue::Int(i64::from(relay)),
            "led.fault" => StateValue::Bool(leds.fault),
            "led.eth" => StateValue::Bool(leds.eth),
            "led.pwr" => StateValue::Bool(leds.power),
            "switch_state" => StateValue::Text(match snap {
                Some(s) if sh.power.is_on() => state_name(s.state).to_owned(),
                _ => "OFF".to_owned(),
            }),
            "ocp_state" => StateValue::Text(
                match snap.map(|s| s.ocp.state).unwrap_or_default() {
                    OcpState::Normal => "Normal",
                    OcpState::Warning => "Warning",
                    OcpState::Lockout => "Lockout",
                }
                .to_owned(),
            ),
            "io_errors" => StateValue::Int(i64::from(snap.map_or(0, |s| s.io_errors))),
            "config_source" => StateValue::Text(sh.config_source.borrow().clone()),
            "last_state" => StateValue::Int(i64::from(sh.config.borrow().switch.last_state.0)),
            "boots" => StateValue::Int(i64::from(sh.boots.get())),
            "powered" => StateValue::Bool(sh.power.is_on()),
            "net.accepted" => StateValue::Int(sh.net_inbox.stats().accepted as i64),
            "net.dropped" => StateValue::Int(sh.net_inbox.stats().dropped as i64),
            "net.high_water" => StateValue::Int(sh.net_inbox.stats().high_water as i64),
            "flood.sent" => StateValue::Int(sh.flood_sent.get() as i64),
            "flood.replies" => StateValue::Int(sh.flood_replies.get() as i64),
            "flood.unaccounted" => StateValue::Int(
                sh.flood_sent.get() as i64
                    - sh.flood_replies.get() as i64
                    - sh.net_inbox.stats().dropped as i64
                    - sh.net_inbox.depth() as i64,
            ),
            "health.hung" => StateValue::Int(i64::from(
                sh.board
                    .get()
                    .and_then(|b| b.health.try_get())
                    .map_or(0, |h| h.hung),
            )),
            k if k.starts_with("config.") => return self.config_value(&k[7..]),
            k if k.starts_with("snmp.") => {
                let s = sh.snmp_stats.get();
                StateValue::Int(i64::from(match &k[5..] {
                    "requests" => s.requests,
                    "replies" => s.replies,
                    "error_replies" => s.error_replies,
                    "dropped_bad_community" => s.dropped_bad_community,
                    _ => s.switch_failures,
                }))
            }
            k if k.starts_with("switch_q.") || k.starts_with("log_q.") => {
                let b = sh.board.get()?;
                let (q, field) = k.split_once('.')?;
                let st = if q == "switch_q" {
                    b.switch_q.stats()
                } else {
                    b.log.stats()
                };
                StateValue::Int(i64::from(match field {
                    "accepted" => st.accepted,
                    "rejected" => st.rejected,
                    "displaced" => st.displaced,
                    _ => u32::from(st.high_water),
                }))
            }
            k if k.starts_with("led.ch") => {
                let o = Outlet::new(k[6..].parse().ok()?)?;
                StateValue::Bool(leds.channels & (1 << o.index()) != 0)
            }
            k if k.starts_with("led.sel") => {
                let o = Outlet::new(k[7..].parse().ok()?)?;
                StateValue::Bool(leds.selection & (1 << o.index()) != 0)
            }
            k if k.starts_with("relay") => {
                let o = Outlet::new(k[5..].parse().ok()?)?;
                StateValue::Bool(relay & (1 << o.index()) != 0)
            }
            k if k.starts_with("meter.") => {
                let (ch, field) = k[6..].split_once('.')?;
                let o = Outlet::new(ch.parse().ok()?)?;
                let t = sh.telemetry.get()[o.index()];
                match field {
                    "degraded" => StateValue::Bool(t.degraded),
                    "power_w" => StateValue::Float(f64::from(t.power_w)),
                    _ => StateValue::Float(f64::from(t.current_a)),
                }
            }
            _ => return None,
        };
        Some(v)
    }
}

impl Pdu {
    /// A configuration value as the console's `CONFIG GET` prints it.
    fn config_value(&self, key: &str) -> Option<StateValue> {
        let cfg = self.sh.config.borrow().clone();
        let mut snap = self.sh.board.get().map(|b| self.sh.snapshot(b))?;
        snap.config = cfg;
        let mut console = firmware_core::pdu::console::Console::new();
        let mut out = vec![0u8; 512];
        let e = console
            .execute(&format!("CONFIG GET {key}"), &snap, &mut out)
            .ok()?;
        let text = String::from_utf8_lossy(out.get(..e.written)?).to_string();
        let line = text.lines().next()?.trim();
        if line.contains("[ERROR]") {
            return None;
        }
        let value = line.split_once(" = ").map_or(line, |(_, v)| v).trim();
        Some(StateValue::Text(value.to_owned()))
    }

    /// The console's inbox and output, for live terminals.
    pub fn shared(&self) -> &Rc<Shared> {
        &self.sh
    }
}

#[cfg(test)]
mod tests;
