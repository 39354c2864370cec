//! `twin fleet`: many independent device twins in one live process, optionally one shard of a
//! fleet spread over several processes and machines that share one external MQTT broker.
//!
//! Every device is built exactly as `twin run` builds it ([`Pdu::build_with`], the pump's
//! [`build`](crate::devices::pump::build)), on one live kernel started by [`Session`], with its
//! own name, seed stream and identity:
//!
//! * **MQTT**: each device has its own client (client id `pdu-0042` / `pump-0007`) and topic
//!   prefix (`fleet/pdu-0042/…`, `fleet/pump-0007/…`). A pump's firmware publishes as it does in
//!   `twin run` (its identity is a firmware setting, [`Identity`]), and takes commands on
//!   `fleet/pump-0007/command`. The ENERGIS PDU has no MQTT: the fleet gives each PDU an
//!   exporter task standing for an SNMP-to-MQTT gateway, which reads the device's state every
//!   `--pdu-every` (default 5 s, phase spread per device) and publishes
//!   `fleet/pdu-0042/telemetry` with a sequence number.
//! * **SNMP/HTTP**: per-device listeners (each PDU its SNMP agent and HTTP API, each pump its
//!   HTTP + WebSocket relay), on free ports by default or at `--port-base P` + 2 × the device's
//!   fleet index (PDU SNMP `P+2g`, PDU HTTP `P+2g+1`, pump HTTP `P+2g`; pumps are numbered after
//!   the PDUs). Per-device ports were chosen over a shared listener routing by path/community
//!   because a device then answers exactly as the single twin does (same URLs, same community
//!   strings, unmodified clients), and 2 000 devices need 3 000 sockets, well within the
//!   process's file limit. The addresses go to `--ready-file` as `pdu-0042_snmp`, … .
//! * **Left out** per device: the PDU console and the pump's bench FluidNC pseudo-terminal
//!   (thousands of PTYs would exhaust `/dev/pts`), and `act`/`state` on stdin.
//!
//! **Sharding**: `--shard K/N` keeps the device indices `i` with `i mod N = K − 1`, for the PDUs
//! and the pumps separately: disjoint, together covering the fleet, and the same on every
//! machine, so N processes given the same `--pdus`, `--pumps` and `--broker` run each device
//! exactly once.
//!
//! **Measured live**: messages the broker acknowledged per second, devices whose client is
//! connected, and pacing lag: a world task asks for a 10 ms virtual timer again and again and
//! compares the wall instant it runs at with the one it was due at (the earliest offset seen
//! between the two clocks is the anchor; pacing never runs virtual time ahead of it). This is
//! the one place besides the kernel's pacer that reads the wall clock, and it is live-only.
//!
//! **Bounded queues**: each device's messages wait for its MQTT client in a channel of
//! [`OUTBOX_CAPACITY`]; when it is full the newest is dropped and counted (`dropped` in the
//! report), the kernel thread never waits on a socket. Commands from the broker wait for the
//! kernel in the pump's [`TO_KERNEL_CAPACITY`] channel; a full one drops and counts.
use std::cell::{Cell, RefCell};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::rc::Rc;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::Context;
use firmware_core::pump::identity::Identity;
use firmware_core::time::{Duration, Instant};
use tokio::sync::mpsc;

use super::{LiveContext, LiveHandle, LiveOptions, LiveTwin, Session};
use crate::bench::proc_status_kb;
use crate::devices::Device;
use crate::devices::pdu::live::{serve_http, serve_snmp};
use crate::devices::pdu::{Pdu, PduSpec};
use crate::devices::pump::live::{
    TO_KERNEL_CAPACITY, ToKernel, accept_loop, spawn_kernel_side, start_embedded_broker_for,
};
use crate::devices::pump::{PumpSpec, build};
use crate::kernel::{History, Kernel, RunEnd, TaskSpec};
use crate::live::guard::ServiceStats;

/// Messages of one device waiting for its MQTT client.
pub const OUTBOX_CAPACITY: usize = 64;
/// How often the lag probe asks for a timer.
const PROBE_PERIOD: Duration = Duration::from_millis(10);

/// `twin fleet`'s options.
#[derive(clap::Args, Debug, Clone)]
pub struct FleetArgs {
    /// PDU twins in the whole fleet.
    #[arg(long, default_value_t = 0)]
    pub pdus: usize,
    /// Pump controller twins in the whole fleet.
    #[arg(long, default_value_t = 0)]
    pub pumps: usize,
    /// An external MQTT broker (`mqtt://host:port`) instead of the embedded one.
    #[arg(long)]
    pub broker: Option<String>,
    /// Stop after this much virtual time (e.g. `60s`); default: until Ctrl-C.
    #[arg(long)]
    pub duration: Option<String>,
    /// Run only shard K of N (`2/3`): the device indices i with i mod N = K − 1.
    #[arg(long, default_value = "1/1")]
    pub shard: Shard,
    /// Write the final report here as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Seed for every random choice (each device draws its own streams from it).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Virtual seconds per wall second.
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Topic root: devices publish under `ROOT/pdu-0042/…`.
    #[arg(long, default_value = "fleet")]
    pub topic_root: String,
    /// How often each PDU's exporter publishes its telemetry (virtual time).
    #[arg(long, default_value = "5s")]
    pub pdu_every: String,
    /// Address every service binds to.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: std::net::IpAddr,
    /// Per-device ports from here (see the module docs); default: free ports.
    #[arg(long)]
    pub port_base: Option<u16>,
    /// Write every device's service addresses here as JSON once all listen.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Print the summary every this much virtual time when not on a terminal.
    #[arg(long, default_value = "10s")]
    pub report_every: String,
}

/// One shard of a fleet: `index` of `count`, from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// Which shard, 1 ..= `count`.
    pub index: usize,
    /// How many shards share the fleet.
    pub count: usize,
}

impl Shard {
    /// Whether device index `i` (0-based, counted per kind) belongs to this shard.
    pub fn owns(&self, i: usize) -> bool {
        i % self.count == self.index - 1
    }
}

impl FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("--shard {s}: expected K/N with 1 <= K <= N, e.g. 2/3");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = k.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if index == 0 || count == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Which device a fleet member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An ENERGIS PDU.
    Pdu,
    /// A pump controller.
    Pump,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Pdu => "pdu",
            Kind::Pump => "pump",
        }
    }
}

/// A fleet member: its kind, its index among its kind, and its index in the whole fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// PDU or pump.
    pub kind: Kind,
    /// Index among the devices of its kind (the number in its name).
    pub index: usize,
    /// Index in the whole fleet (PDUs first), for `--port-base`.
    pub global: usize,
}

impl Member {
    /// `pdu-0042`: the device's name, MQTT client id and the last part of its topic prefix.
    pub fn name(&self) -> String {
        format!("{}-{:04}", self.kind.name(), self.index)
    }
}

/// The members of `shard` in a fleet of `pdus` PDUs and `pumps` pumps, PDUs first.
pub fn members(pdus: usize, pumps: usize, shard: Shard) -> Vec<Member> {
    let p = (0..pdus).filter(|&i| shard.owns(i)).map(|i| Member {
        kind: Kind::Pdu,
        index: i,
        global: i,
    });
    let q = (0..pumps).filter(|&i| shard.owns(i)).map(|i| Member {
        kind: Kind::Pump,
        index: i,
        global: pdus + i,
    });
    p.chain(q).collect()
}

/// A device's MQTT client, shared between the kernel side and the socket side.
#[derive(Default)]
struct Counters {
    /// Messages handed to the client.
    enqueued: AtomicU64,
    /// Messages the broker acknowledged (QoS 1).
    acked: AtomicU64,
    /// Messages dropped because the device's outbox was full.
    dropped: AtomicU64,
    /// Commands dropped because the kernel's channel was full.
    commands_dropped: AtomicU64,
    /// Commands received.
    commands: AtomicU64,
    /// Connected to the broker now.
    connected: AtomicBool,
}

/// One message for the broker.
struct Outgoing {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
}

/// Start `client_id`'s MQTT client on `io`: it publishes what arrives on the returned sender
/// (QoS 1, counted when acknowledged) and hands what arrives on `subscribe` to `on_command`.
fn spawn_client(
    io: &tokio::runtime::Handle,
    client_id: &str,
    host: &str,
    port: u16,
    subscribe: Option<String>,
    on_command: Box<dyn Fn(Vec<u8>) + Send + Sync>,
) -> (mpsc::Sender<Outgoing>, Arc<Counters>) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let counters = Arc::new(Counters::default());
    let (tx, mut outgoing) = mpsc::channel::<Outgoing>(OUTBOX_CAPACITY);
    let mut opts = MqttOptions::new(client_id, host, port);
    opts.set_keep_alive(std::time::Duration::from_secs(30));
    opts.set_max_packet_size(64 * 1024, 64 * 1024);
    let c = counters.clone();
    io.spawn(async move {
        let (client, mut events) = AsyncClient::new(opts, 16);
        let publisher = client.clone();
        tokio::spawn(async move {
            while let Some(m) = outgoing.recv().await {
                let _ = publisher
                    .publish(m.topic, QoS::AtLeastOnce, m.retain, m.payload)
                    .await;
            }
        });
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    c.connected.store(true, Ordering::Release);
                    if let Some(t) = &subscribe {
                        let _ = client.subscribe(t.as_str(), QoS::AtLeastOnce).await;
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    c.acked.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    c.commands.fetch_add(1, Ordering::Relaxed);
                    on_command(p.payload.to_vec());
                }
                Ok(_) => {}
                Err(_) => {
                    c.connected.store(false, Ordering::Release);
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            }
        }
    });
    (tx, counters)
}

/// Offer `m` to a device's client: a full outbox drops it (counted).
fn offer(tx: &mpsc::Sender<Outgoing>, counters: &Counters, m: Outgoing) {
    if tx.try_send(m).is_ok() {
        counters.enqueued.fetch_add(1, Ordering::Relaxed);
    } else {
        counters.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// A started member, for the report.
struct Running {
    member: Member,
    counters: Arc<Counters>,
    services: Vec<(String, String)>,
    /// Kept alive for the run (the PDU's exporter reads it too).
    _device: Box<dyn std::any::Any>,
}

/// Pacing lag, in wall microseconds: a log-scale histogram of the whole run (after warm-up) and
/// the samples of the current summary window.
#[derive(Default)]
struct Lag {
    histogram: Vec<u64>,
    window: Vec<u64>,
    max_us: u64,
    samples: u64,
}

/// Bucket `b` holds lags up to `1.05^b` µs (5 % resolution; 400 buckets reach 8 hours).
const LAG_BUCKETS: usize = 400;

fn lag_bucket(us: u64) -> usize {
    if us <= 1 {
        return 0;
    }
    (((us as f64).ln() / 1.05f64.ln()).ceil() as usize).min(LAG_BUCKETS - 1)
}

impl Lag {
    fn record(&mut self, us: u64, counted: bool) {
        if self.window.len() < 10_000 {
            self.window.push(us);
        }
        if counted {
            if self.histogram.is_empty() {
                self.histogram = vec![0; LAG_BUCKETS];
            }
            if let Some(b) = self.histogram.get_mut(lag_bucket(us)) {
                *b += 1;
            }
            self.max_us = self.max_us.max(us);
            self.samples += 1;
        }
    }

    /// The `q` quantile (0..1) of the run, as its bucket's upper bound.
    fn quantile(&self, q: f64) -> Option<u64> {
        let total: u64 = self.histogram.iter().sum();
        if total == 0 {
            return None;
        }
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (b, n) in self.histogram.iter().enumerate() {
            seen += n;
            if seen >= want {
                return Some((1.05f64.powi(b as i32)).ceil() as u64);
            }
        }
        Some(self.max_us)
    }

    /// p50 and p99 of the window, and start a new one.
    fn take_window(&mut self) -> Option<(u64, u64)> {
        let mut w = std::mem::take(&mut self.window);
        if w.is_empty() {
            return None;
        }
        w.sort_unstable();
        let at = |q: f64| w.get(((w.len() - 1) as f64 * q).round() as usize).copied();
        Some((at(0.5)?, at(0.99)?))
    }
}

/// Spawn the lag probe on `kernel`; samples before `warmup` (virtual) stay out of the run's
/// figures.
fn spawn_probe(kernel: &mut Kernel, speed: f64, warmup: Instant, lag: Rc<RefCell<Lag>>) {
    let clock = kernel.clock();
    kernel
        .spawn(TaskSpec::world("fleet.lag_probe"), async move {
            let wall0 = std::time::Instant::now();
            let mut anchor: Option<f64> = None;
            loop {
                clock.sleep(PROBE_PERIOD).await;
                let now = clock.now();
                let wall_us = wall0.elapsed().as_secs_f64() * 1e6;
                // Wall time minus the wall time virtual `now` was due at, up to the anchor.
                let offset = wall_us - now.as_micros() as f64 / speed;
                let a = *anchor.get_or_insert(offset);
                let a = a.min(offset);
                anchor = Some(a);
                lag.borrow_mut()
                    .record((offset - a).max(0.0) as u64, now >= warmup);
            }
        })
        .detach();
}

/// What the fleet twin shares with the command's loop.
#[derive(Default)]
struct State {
    running: Vec<Running>,
    rss_before_kb: u64,
    rss_after_build_kb: u64,
    broker: String,
}

/// The whole shard as one [`LiveTwin`], so [`Session`] starts it like any other.
struct FleetTwin {
    args: FleetArgs,
    pdu_every: Duration,
    members: Vec<Member>,
    state: Rc<RefCell<State>>,
}

struct FleetHandle;

impl LiveHandle for FleetHandle {}

impl LiveTwin for FleetTwin {
    fn name(&self) -> &'static str {
        "fleet"
    }

    fn start(&self, kernel: &mut Kernel, ctx: &LiveContext) -> anyhow::Result<Box<dyn LiveHandle>> {
        let (host, port) = match &self.args.broker {
            Some(url) => crate::devices::pump::live::parse_broker(url)?,
            None => {
                let want = std::net::SocketAddr::new(self.args.bind, 0);
                let a = start_embedded_broker_for(want, None, self.members.len() + 64)?;
                (a.ip().to_string(), a.port())
            }
        };
        ctx.services
            .announce("fleet_mqtt", format!("{host}:{port}"));
        let mut state = self.state.borrow_mut();
        state.broker = format!("mqtt://{host}:{port}");
        state.rss_before_kb = proc_status_kb("VmRSS:");
        let root = &self.args.topic_root;
        for m in &self.members {
            let name = m.name();
            let prefix = format!("{root}/{name}");
            let mut services = Vec::new();
            let addr = |offset: u16| {
                let port = match self.args.port_base {
                    Some(base) => {
                        let p = base as usize + 2 * m.global + offset as usize;
                        u16::try_from(p).map_err(|_| {
                            anyhow::anyhow!("--port-base {base}: {name} would need port {p}")
                        })?
                    }
                    None => 0,
                };
                Ok::<_, anyhow::Error>(std::net::SocketAddr::new(self.args.bind, port))
            };
            let running = match m.kind {
                Kind::Pdu => {
                    let mut table = toml::Table::new();
                    table.insert("device_name".into(), toml::Value::String(name.clone()));
                    let spec = PduSpec::parse(&table).map_err(anyhow::Error::msg)?;
                    let pdu = Rc::new(
                        Pdu::build_with(&spec, &name, kernel, None).map_err(anyhow::Error::msg)?,
                    );
                    let sh = pdu.shared().clone();
                    let snmp = ctx
                        .io
                        .block_on(tokio::net::UdpSocket::bind(addr(0)?))
                        .with_context(|| format!("{name}: binding SNMP"))?;
                    let http = ctx
                        .io
                        .block_on(tokio::net::TcpListener::bind(addr(1)?))
                        .with_context(|| format!("{name}: binding HTTP"))?;
                    services.push((format!("{name}_snmp"), snmp.local_addr()?.to_string()));
                    services.push((format!("{name}_http"), http.local_addr()?.to_string()));
                    ctx.io
                        .spawn(serve_snmp(Arc::new(snmp), sh.net_inbox.clone()));
                    ctx.io.spawn(serve_http(
                        http,
                        sh.net_inbox.clone(),
                        Arc::new(ServiceStats::default()),
                    ));
                    let (tx, counters) =
                        spawn_client(&ctx.io, &name, &host, port, None, Box::new(|_| {}));
                    spawn_exporter(
                        kernel,
                        pdu.clone(),
                        format!("{prefix}/telemetry"),
                        self.pdu_every,
                        m.index,
                        tx,
                        counters.clone(),
                    );
                    Running {
                        member: *m,
                        counters,
                        services,
                        _device: Box::new(pdu),
                    }
                }
                Kind::Pump => {
                    let identity = Identity::new(&prefix, &name)
                        .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
                    let spec = PumpSpec::default_spec().with_identity(identity.clone());
                    let dev = build(&spec, &name, kernel);
                    let (to_kernel, from_io) = mpsc::channel::<ToKernel>(TO_KERNEL_CAPACITY);
                    let commands = to_kernel.clone();
                    let dropped = Arc::new(AtomicU64::new(0));
                    let d = dropped.clone();
                    let (tx, counters) = spawn_client(
                        &ctx.io,
                        &name,
                        &host,
                        port,
                        Some(identity.command_topic().as_str().to_owned()),
                        Box::new(move |p| {
                            if commands.try_send(ToKernel::Mqtt(p)).is_err() {
                                d.fetch_add(1, Ordering::Relaxed);
                            }
                        }),
                    );
                    {
                        let tx = tx.clone();
                        let c = counters.clone();
                        dev.net.broker.borrow_mut().forward = Some(Box::new(move |m| {
                            offer(
                                &tx,
                                &c,
                                Outgoing {
                                    topic: m.topic.clone(),
                                    payload: m.payload.clone().into_bytes(),
                                    retain: m.retain,
                                },
                            );
                        }));
                    }
                    let listener = ctx
                        .io
                        .block_on(tokio::net::TcpListener::bind(addr(0)?))
                        .with_context(|| format!("{name}: binding HTTP"))?;
                    services.push((format!("{name}_http"), listener.local_addr()?.to_string()));
                    ctx.io.spawn(accept_loop(
                        listener,
                        to_kernel,
                        Arc::new(ServiceStats::default()),
                    ));
                    spawn_kernel_side(kernel, &dev, from_io);
                    // The command drops are the client's to report.
                    let c = counters.clone();
                    ctx.io.spawn(async move {
                        loop {
                            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                            c.commands_dropped
                                .store(dropped.load(Ordering::Relaxed), Ordering::Relaxed);
                        }
                    });
                    Running {
                        member: *m,
                        counters,
                        services,
                        _device: Box::new(dev),
                    }
                }
            };
            for (k, v) in &running.services {
                ctx.services.announce(k, v.clone());
            }
            state.running.push(running);
        }
        state.rss_after_build_kb = proc_status_kb("VmRSS:");
        Ok(Box::new(FleetHandle))
    }
}

/// The PDU's exporter: every `every` (the first after a phase spread over the fleet), the
/// device's state as JSON with a sequence number, to its client.
fn spawn_exporter(
    kernel: &mut Kernel,
    pdu: Rc<Pdu>,
    topic: String,
    every: Duration,
    index: usize,
    tx: mpsc::Sender<Outgoing>,
    counters: Arc<Counters>,
) {
    let clock = kernel.clock();
    let name = topic.clone();
    kernel
        .spawn(TaskSpec::world(format!("{name}.exporter")), async move {
            // Spread the devices over the period (a golden-ratio step, so any count spreads).
            let period = every.as_micros().max(1);
            let phase = ((index as u64).wrapping_mul(2_654_435_761) % period).max(1);
            clock.sleep(Duration::from_micros(phase)).await;
            let mut seq: u64 = 0;
            loop {
                seq += 1;
                let value = |k: &str| pdu.state(k).map(|v| v.to_string());
                let payload = serde_json::json!({
                    "seq": seq,
                    "t_ms": clock.now().as_micros() / 1000,
                    "relays": value("relays"),
                    "switch_state": value("switch_state"),
                    "powered": value("powered"),
                    "boots": value("boots"),
                    "snmp_requests": value("snmp.requests"),
                });
                offer(
                    &tx,
                    &counters,
                    Outgoing {
                        topic: topic.clone(),
                        payload: payload.to_string().into_bytes(),
                        retain: false,
                    },
                );
                clock.sleep(every).await;
            }
        })
        .detach();
}

/// CPU seconds (user + system) per thread name of this process, from `/proc/self/task`.
fn thread_cpu() -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ...`: comm may hold spaces, so split at the last `)`.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map_or("?", |(_, c)| c).to_owned();
        let f: Vec<&str> = rest.split_whitespace().collect();
        // Fields 14 and 15 (utime, stime) are the 12th and 13th after the `)`.
        let ticks: f64 = [11, 12]
            .iter()
            .filter_map(|&i| f.get(i).and_then(|v| v.parse::<f64>().ok()))
            .sum();
        *out.entry(comm).or_insert(0.0) += ticks / hz;
    }
    out
}

fn parse_time(what: &str, text: &str) -> anyhow::Result<Duration> {
    crate::scenario::duration::parse_duration(text)
        .map_err(|e| anyhow::anyhow!("--{what} {text}: {e}"))
}

/// Run `twin fleet`; returns the final report (also written to `--json`).
pub fn command(args: &FleetArgs) -> anyhow::Result<serde_json::Value> {
    if !crate::kernel::pacing::SPEED_RANGE.contains(&args.speed) {
        anyhow::bail!("--speed must be between 0.1 and 100");
    }
    if args.pdus + args.pumps == 0 {
        anyhow::bail!("give --pdus N and/or --pumps M (at least one device)");
    }
    if args.topic_root.is_empty() || args.topic_root.contains(['+', '#', '\0']) {
        anyhow::bail!("--topic-root {}: no wildcards, not empty", args.topic_root);
    }
    let until = match &args.duration {
        Some(d) => Some(Instant::ZERO + parse_time("duration", d)?),
        None => None,
    };
    let pdu_every = parse_time("pdu-every", &args.pdu_every)?;
    if pdu_every < Duration::from_millis(10) {
        anyhow::bail!("--pdu-every must be at least 10ms");
    }
    let report_every = parse_time("report-every", &args.report_every)?;
    let members = members(args.pdus, args.pumps, args.shard);
    let state = Rc::new(RefCell::new(State::default()));
    let options = LiveOptions {
        bind: args.bind,
        ephemeral_ports: true,
        ready_file: args.ready_file.clone(),
        speed: args.speed,
        seed: args.seed,
        broker: args.broker.clone(),
        ..LiveOptions::default()
    };
    let wall0 = std::time::Instant::now();
    let twin = FleetTwin {
        args: args.clone(),
        pdu_every,
        members: members.clone(),
        state: state.clone(),
    };
    let mut session = Session::start_with(options, vec![Box::new(twin)], History::NONE)?;
    let build_s = wall0.elapsed().as_secs_f64();
    let lag = Rc::new(RefCell::new(Lag::default()));
    // Leave the start (every device booting at once) out of the run's lag figures.
    let warmup = Instant::ZERO
        + until.map_or(Duration::from_secs(5), |u| {
            Duration::from_micros((u.as_micros() / 10).min(5_000_000))
        });
    spawn_probe(session.kernel(), args.speed, warmup, lag.clone());
    {
        let control = session.control();
        session.io().spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                control.interrupt();
            }
        });
    }
    let st = state.borrow();
    let total =
        |f: fn(&Counters) -> u64| -> u64 { st.running.iter().map(|r| f(&r.counters)).sum::<u64>() };
    let connected = || {
        st.running
            .iter()
            .filter(|r| r.counters.connected.load(Ordering::Acquire))
            .count()
    };
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.enable_steady_tick(std::time::Duration::from_millis(200));
        b
    });
    let line = format!(
        "twin fleet shard {}: {} devices ({} PDUs, {} pumps of {} + {}), broker {}, speed {}x, started in {:.1} s",
        args.shard,
        members.len(),
        members.iter().filter(|m| m.kind == Kind::Pdu).count(),
        members.iter().filter(|m| m.kind == Kind::Pump).count(),
        args.pdus,
        args.pumps,
        st.broker,
        args.speed,
        build_s,
    );
    match &bar {
        Some(b) => b.println(line),
        None => eprintln!("{line}"),
    }
    let step = Duration::from_secs(1);
    let until_or_max = until.unwrap_or(Instant::MAX);
    let mut next = Instant::ZERO + step;
    let last_acked = Cell::new(0u64);
    let last_wall = Cell::new(std::time::Instant::now());
    let mut since_report = Duration::ZERO;
    let run_wall = std::time::Instant::now();
    let end = loop {
        let end = session.run_until(next.min(until_or_max));
        let now = session.kernel().now();
        since_report = since_report + step;
        let acked = total(|c| c.acked.load(Ordering::Relaxed));
        let dt = last_wall.replace(std::time::Instant::now()).elapsed();
        let _ = dt;
        let window = lag.borrow_mut().take_window();
        let (p50, p99) = window.unwrap_or((0, 0));
        let summary = format!(
            "[{:>8}] devices {}/{} connected, {:.0} msg/s, lag p50 {:.1} ms p99 {:.1} ms",
            Duration::from_micros(now.as_micros()),
            connected(),
            members.len(),
            (acked - last_acked.replace(acked)) as f64 * args.speed
                / (step.as_micros() as f64 / 1e6),
            p50 as f64 / 1000.0,
            p99 as f64 / 1000.0,
        );
        match &bar {
            Some(b) => b.set_message(summary),
            None if since_report >= report_every => {
                eprintln!("{summary}");
                since_report = Duration::ZERO;
            }
            None => {}
        }
        if end != RunEnd::Reached || now >= until_or_max {
            break end;
        }
        next += step;
    };
    let run_wall_s = run_wall.elapsed().as_secs_f64();
    let virtual_end = session.kernel().now();
    // Let every client hand its last messages to the broker (at most 10 s).
    let flush_deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < flush_deadline
        && st.running.iter().any(|r| {
            r.counters.acked.load(Ordering::Acquire) < r.counters.enqueued.load(Ordering::Acquire)
        })
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let lag = lag.borrow();
    let devices = members.len().max(1) as f64;
    let rss_kb = proc_status_kb("VmRSS:");
    let report = serde_json::json!({
        "shard": args.shard.to_string(),
        "fleet": { "pdus": args.pdus, "pumps": args.pumps },
        "devices": members.len(),
        "broker": st.broker,
        "embedded_broker": args.broker.is_none(),
        "speed": args.speed,
        "seed": args.seed,
        "end": match end { RunEnd::Interrupted => "interrupted", _ => "end of run" },
        "virtual_s": virtual_end.as_micros() as f64 / 1e6,
        "wall_s": run_wall_s,
        "start_s": build_s,
        "messages": {
            "enqueued": total(|c| c.enqueued.load(Ordering::Relaxed)),
            "acked": total(|c| c.acked.load(Ordering::Relaxed)),
            "dropped": total(|c| c.dropped.load(Ordering::Relaxed)),
            "per_s": total(|c| c.acked.load(Ordering::Relaxed)) as f64 / run_wall_s.max(1e-9),
            "commands": total(|c| c.commands.load(Ordering::Relaxed)),
            "commands_dropped": total(|c| c.commands_dropped.load(Ordering::Relaxed)),
        },
        "connected": connected(),
        "lag_ms": {
            "p50": lag.quantile(0.5).map(|v| v as f64 / 1000.0),
            "p99": lag.quantile(0.99).map(|v| v as f64 / 1000.0),
            "max": lag.max_us as f64 / 1000.0,
            "samples": lag.samples,
            "warmup_s": warmup.as_micros() as f64 / 1e6,
            "probe_period_ms": PROBE_PERIOD.as_micros() as f64 / 1000.0,
        },
        "memory": {
            "rss_before_devices_mib": st.rss_before_kb as f64 / 1024.0,
            "rss_after_start_mib": st.rss_after_build_kb as f64 / 1024.0,
            "rss_end_mib": rss_kb as f64 / 1024.0,
            "peak_rss_mib": proc_status_kb("VmHWM:") as f64 / 1024.0,
            "per_device_mib": rss_kb.saturating_sub(st.rss_before_kb) as f64 / 1024.0 / devices,
        },
        "thread_cpu_s": thread_cpu(),
        "members": st.running.iter().map(|r| serde_json::json!({
            "name": r.member.name(),
            "kind": r.member.kind.name(),
            "index": r.member.index,
            "client_id": r.member.name(),
            "topic_prefix": format!("{}/{}", args.topic_root, r.member.name()),
            "services": r.services.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            "enqueued": r.counters.enqueued.load(Ordering::Relaxed),
            "acked": r.counters.acked.load(Ordering::Relaxed),
            "dropped": r.counters.dropped.load(Ordering::Relaxed),
        })).collect::<Vec<_>>(),
    });
    drop(st);
    session.shutdown()?;
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).context("report")?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_disjoint_and_cover_the_fleet() {
        for n in 1..=5 {
            let mut seen = vec![0u32; 23 + 17];
            for k in 1..=n {
                for m in members(23, 17, Shard { index: k, count: n }) {
                    seen[m.global] += 1;
                }
            }
            assert!(seen.iter().all(|&c| c == 1), "{n} shards: {seen:?}");
        }
    }

    #[test]
    fn bad_shards_say_why() {
        assert_eq!("2/3".parse::<Shard>(), Ok(Shard { index: 2, count: 3 }));
        for bad in ["0/2", "3/2", "1/0", "1", "a/b", ""] {
            let e = bad.parse::<Shard>().unwrap_err();
            assert!(e.contains("K/N"), "{bad}: {e}");
        }
    }

    #[test]
    fn names_are_valid_mqtt_identities() {
        let m = Member {
            kind: Kind::Pump,
            index: 7,
            global: 1007,
        };
        assert_eq!(m.name(), "pump-0007");
        assert!(Identity::new("fleet/pump-0007", &m.name()).is_ok());
    }

    #[test]
    fn lag_quantiles_come_from_the_histogram() {
        let mut l = Lag::default();
        for us in 1..=1000 {
            l.record(us, true);
        }
        let p50 = l.quantile(0.5).unwrap();
        let p99 = l.quantile(0.99).unwrap();
        assert!((475..=530).contains(&p50), "{p50}");
        assert!((940..=1050).contains(&p99), "{p99}");
        assert_eq!(l.take_window().map(|w| w.0), Some(501));
    }
}
