//! The pump controller's network in the twin: the platform ports its firmware tasks run on, the
//! WiFi link they share, and what is at the far end of it (the broker, browsers, scenario
//! clients).
//!
//! Every decision is the firmware's (`firmware_core::pump::{outbox, events, command, web, ws,
//! radio}`); this module is what a board's network stack and radio driver would be:
//!
//! * **One WiFi link** (`sim::periph::wifi`) carries everything as [`Packet`]s: MQTT publishes
//!   up, command publishes down, and TCP segments of the web server's connections both ways. So
//!   HTTP, WebSocket and MQTT share the air, its latency, jitter, loss and bandwidth, and the
//!   WiFi driver's CPU time on the network core (a send charges the sending task, a receive the
//!   [`netif_task`](Net::netif_task)).
//! * **The netif task** (on the network core) takes what arrives down and hands it on: command
//!   payloads into a queue for the command task, TCP segments into the sockets.
//! * **Ports**: [`SimMqtt`] ([`MqttPort`]), [`SimCommands`] ([`CommandPort`]), [`SimSocket`]
//!   ([`TcpSocket`]), [`SimRadio`] ([`WifiRadio`]: the link's `tx_power`).
//! * **The far side** (world tasks, no CPU): [`air_task`](Net::air_task) takes what arrives up;
//!   publishes go to the fake broker of deterministic runs, which keeps retained messages and
//!   records each delivery as an event `<device>.mqtt` `<topic> <payload>` with its latency
//!   (`<device>.mqtt.latency_ms`, from the payload's `timestamp`); TCP segments go to the client
//!   of their connection ([`Net::connect`]): a scenario's HTTP or WebSocket client, or a live
//!   socket's relay.
//!
//! # TCP, simplified
//! A connection is opened by the client's `Open` segment arriving at the netif (no handshake
//! round trip), carries `Data` both ways, and ends with `Close` (either side) or `Reset`. A lost
//! packet is lost: there is no retransmission, so a lost segment shows as a stalled request (the
//! firmware's request timeout closes it). Bounds and their full policies, each counted in
//! [`NetCounters`]:
//!
//! | queue | bound | when full |
//! |---|---|---|
//! | accept backlog | [`BACKLOG`] connections | the new connection is reset (`tcp_refused`) |
//! | a socket's receive buffer | [`SOCKET_RX`] bytes | the connection is reset (`tcp_overflow`) |
//! | command payloads | [`COMMAND_QUEUE`] | the newest is dropped (`commands_dropped`) |
//! | the link's transmit queue | `WifiConfig::queue_packets` | a socket write waits and retries every [`TX_RETRY`]; a publish fails (the outbox retries) |
//! | a client's inbound segments | the client's own (live: [`super::live`]) | the connection is reset (`client_resets`) |
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

use embassy_futures::select::select;
use embassy_sync::blocking_mutex::raw::NoopRawMutex;
use embassy_sync::signal::Signal;
use firmware_core::ports::{MqttPort, MqttQos};
use firmware_core::pump::command::CommandPort;
use firmware_core::pump::identity::Identity;
use firmware_core::pump::outbox::topic;
use firmware_core::pump::radio::{TxPower as FwTxPower, WifiRadio};
use firmware_core::pump::web::TcpSocket;
use firmware_core::pump::ws::WsSink;
use firmware_core::time::{Duration, Instant};

use crate::kernel::{SimClock, Tracer};
use crate::periph::wifi::{TxPower, WifiConfig, WifiDirection, WifiLink, WifiSendError, WireSize};

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

/// A TCP connection of the web server, numbered by the far side.
pub type ConnId = u64;

/// A TCP segment, as far as the twin models one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// The client opens the connection.
    Open,
    /// Bytes.
    Data(Vec<u8>),
    /// An orderly close.
    Close,
    /// The connection is gone.
    Reset,
}

/// What crosses the WiFi link.
#[derive(Debug, Clone, PartialEq)]
pub enum Packet {
    /// An MQTT PUBLISH from the controller (up).
    Publish(Msg),
    /// A PUBLISH on the command topic, from the broker (down).
    Command(Vec<u8>),
    /// A TCP segment of connection `conn` (either way).
    Tcp {
        /// The connection.
        conn: ConnId,
        /// The segment.
        seg: Segment,
    },
}

/// IPv4 + TCP headers.
const TCP_IP: usize = 40;

impl WireSize for Packet {
    fn wire_len(&self) -> usize {
        match self {
            // Fixed header, topic length, topic, packet id, payload.
            Packet::Publish(m) => TCP_IP + 2 + 2 + m.topic.len() + 2 + m.payload.len(),
            Packet::Command(p) => TCP_IP + 2 + 2 + 24 + p.len(),
            Packet::Tcp {
                seg: Segment::Data(d),
                ..
            } => TCP_IP + d.len(),
            Packet::Tcp { .. } => TCP_IP,
        }
    }
}

/// Where delivered messages go besides the trace (the live twin's real broker).
pub type Forward = Box<dyn FnMut(&Msg)>;

/// The client end of a connection: takes each segment that arrives from the controller;
/// `false` when it cannot (gone, or its buffer is full), which resets the connection.
pub type ClientEnd = Box<dyn FnMut(Segment) -> bool>;

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

/// Connections waiting for a web task.
pub const BACKLOG: usize = 4;
/// A socket's receive buffer, bytes (embassy-net's sockets take their buffers from the board).
pub const SOCKET_RX: usize = 4096;
/// Command payloads waiting for the command task.
pub const COMMAND_QUEUE: usize = 8;
/// How long a socket write waits for room in the link's transmit queue before trying again.
pub const TX_RETRY: Duration = Duration::from_millis(1);
/// Largest TCP segment payload (Ethernet MTU less headers).
pub const MSS: usize = 1460;

/// Counters of the twin's network (see the module docs for what each full policy counts).
#[derive(Debug, Default)]
pub struct NetCounters {
    /// Publishes the link refused.
    pub publish_failures: Cell<u64>,
    /// Sum of the last `Resumed` event's amounts (seen by the event task's source).
    pub resumed_ml: Cell<f64>,
    /// Connections reset because the backlog was full.
    pub tcp_refused: Cell<u64>,
    /// Connections reset because a socket's receive buffer was full.
    pub tcp_overflow: Cell<u64>,
    /// Command payloads dropped because their queue was full.
    pub commands_dropped: Cell<u64>,
    /// Connections reset because their client could not take a segment.
    pub client_resets: Cell<u64>,
    /// Client segments the downlink refused (the connection was reset).
    pub client_send_failures: Cell<u64>,
}

fn bump(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

#[derive(Default)]
struct SockState {
    rx: VecDeque<u8>,
    eof: bool,
    reset: bool,
    reader: Option<Waker>,
}

/// The controller's side of TCP: the accept backlog and the open sockets.
#[derive(Default)]
struct Stack {
    backlog: VecDeque<ConnId>,
    sockets: BTreeMap<ConnId, SockState>,
    acceptors: Vec<Waker>,
    commands: VecDeque<Vec<u8>>,
    command_reader: Option<Waker>,
}

/// The far side's connections.
#[derive(Default)]
struct Far {
    next: ConnId,
    clients: BTreeMap<ConnId, ClientEnd>,
    /// When each connection opened, until its first byte of reply arrives.
    opened: BTreeMap<ConnId, Instant>,
    /// Time to the first byte of reply of the last [`TTFB_WINDOW`] connections.
    ttfb: VecDeque<Duration>,
}

/// Connections whose time to first byte [`Net::ttfb_median`] covers.
pub const TTFB_WINDOW: usize = 64;

/// What the platform side of the network knows and shares between its tasks.
pub struct Net {
    /// Device name (trace prefix).
    pub name: String,
    /// Clock.
    pub clock: SimClock,
    /// Trace.
    pub tracer: Tracer,
    /// The controller's MQTT identity (the topics the broker sees).
    pub identity: Identity,
    /// The WiFi link (`sim::periph::wifi`).
    pub wifi: WifiLink<Packet>,
    /// The link's settings before background traffic takes its share of the air.
    pub wifi_base: RefCell<WifiConfig>,
    /// Share of the air other stations take (0 to 0.95).
    pub airtime: Cell<f64>,
    /// Share of the network core the WiFi task spends on background traffic (0 to 0.95).
    pub cpu_load: Cell<f64>,
    /// The fake broker.
    pub broker: RefCell<Broker>,
    /// The first pump-side snapshot change not yet shown on the WebSocket.
    pub unshown_since: Cell<Option<Instant>>,
    /// MQTT session up (as the port last saw it).
    pub mqtt_connected: Cell<bool>,
    /// Counters.
    pub counters: NetCounters,
    /// Wakes the WiFi load task.
    pub load_kick: Kick,
    stack: RefCell<Stack>,
    far: RefCell<Far>,
}

/// Read the `"timestamp":<ms>` field the firmware writes into its payloads.
pub fn payload_timestamp(payload: &str) -> Option<Instant> {
    let rest = payload.split("\"timestamp\":").nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().map(Instant::from_millis)
}

impl Net {
    /// The network of device `name` over `wifi`.
    pub fn new(
        name: &str,
        clock: SimClock,
        tracer: Tracer,
        identity: Identity,
        wifi: WifiLink<Packet>,
        base: WifiConfig,
    ) -> Net {
        Net {
            name: name.to_owned(),
            clock,
            tracer,
            identity,
            wifi,
            wifi_base: RefCell::new(base),
            airtime: Cell::new(0.0),
            cpu_load: Cell::new(0.0),
            broker: RefCell::new(Broker::new()),
            unshown_since: Cell::new(None),
            mqtt_connected: Cell::new(true),
            counters: NetCounters::default(),
            load_kick: Signal::new(),
            stack: RefCell::new(Stack::default()),
            far: RefCell::new(Far::default()),
        }
    }

    fn metric(&self, what: &str) -> String {
        format!("{}.{what}", self.name)
    }

    /// The pump side published a new snapshot: the UI lag runs from now.
    pub fn snapshot_changed(&self) {
        if self.unshown_since.get().is_none() {
            self.unshown_since.set(Some(self.clock.now()));
        }
    }

    /// Apply the base settings with the background traffic's share of the air taken out (the
    /// radio's power stays as the firmware set it).
    pub fn apply_wifi(&self) {
        let mut c = self.wifi_base.borrow().clone();
        c.tx_power = self.wifi.config().tx_power;
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

    /// The client side of a command: the broker forwards it down the WiFi link at once (lost,
    /// and counted, when the broker is down or the link refuses it).
    pub fn command_from_client(&self, payload: Vec<u8>) {
        if !self.broker.borrow().up
            || self
                .wifi
                .send(WifiDirection::Down, Packet::Command(payload))
                .is_err()
        {
            self.broker.borrow_mut().lost += 1;
        }
    }

    // -----------------------------------------------------------------------------------------
    // The controller's side

    /// The netif task (network core): hands what arrives down to the command queue and the
    /// sockets (see the module docs for the bounds).
    pub async fn netif_task(self: Rc<Self>) {
        loop {
            // The receive charges this task the driver's CPU time.
            let packet = self.wifi.recv(WifiDirection::Down).await;
            let mut st = self.stack.borrow_mut();
            match packet {
                Packet::Command(p) => {
                    if st.commands.len() >= COMMAND_QUEUE {
                        bump(&self.counters.commands_dropped);
                        continue;
                    }
                    st.commands.push_back(p);
                    if let Some(w) = st.command_reader.take() {
                        w.wake();
                    }
                }
                Packet::Tcp { conn, seg } => {
                    if let Some(reset) = Self::segment_in(&mut st, conn, seg) {
                        bump(reset(&self.counters));
                        drop(st);
                        let _ = self.wifi.send(
                            WifiDirection::Up,
                            Packet::Tcp {
                                conn,
                                seg: Segment::Reset,
                            },
                        );
                    }
                }
                Packet::Publish(_) => {}
            }
        }
    }

    /// Deliver one segment to the stack; `Some(counter)` when the connection must be reset.
    #[allow(clippy::type_complexity)]
    fn segment_in(
        st: &mut Stack,
        conn: ConnId,
        seg: Segment,
    ) -> Option<fn(&NetCounters) -> &Cell<u64>> {
        match seg {
            Segment::Open => {
                if st.backlog.len() >= BACKLOG {
                    return Some(|c| &c.tcp_refused);
                }
                st.backlog.push_back(conn);
                st.sockets.insert(conn, SockState::default());
                for w in st.acceptors.drain(..) {
                    w.wake();
                }
            }
            Segment::Data(d) => {
                let sock = st.sockets.get_mut(&conn)?;
                if sock.rx.len() + d.len() > SOCKET_RX {
                    sock.reset = true;
                    if let Some(w) = sock.reader.take() {
                        w.wake();
                    }
                    return Some(|c| &c.tcp_overflow);
                }
                sock.rx.extend(d);
                if let Some(w) = sock.reader.take() {
                    w.wake();
                }
            }
            Segment::Close | Segment::Reset => {
                let sock = st.sockets.get_mut(&conn)?;
                if seg == Segment::Reset {
                    sock.reset = true;
                } else {
                    sock.eof = true;
                }
                if let Some(w) = sock.reader.take() {
                    w.wake();
                }
            }
        }
        None
    }

    // -----------------------------------------------------------------------------------------
    // The far side

    /// The far side's world task: what arrives up goes to the broker or to its connection's
    /// client.
    pub async fn air_task(self: Rc<Self>) {
        let source = self.metric("mqtt");
        let m_latency = self.metric("mqtt.latency_ms");
        let m_status = self.metric("status.interval_s");
        let status_topic = self.identity.topic(topic::STATUS).unwrap_or_default();
        loop {
            let packet = self.wifi.recv(WifiDirection::Up).await;
            let now = self.clock.now();
            let msg = match packet {
                Packet::Publish(m) => m,
                Packet::Tcp { conn, seg } => {
                    self.to_client(conn, seg);
                    continue;
                }
                Packet::Command(_) => continue,
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
            if msg.topic == status_topic.as_str() {
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

    fn to_client(&self, conn: ConnId, seg: Segment) {
        let ends = matches!(seg, Segment::Close | Segment::Reset);
        let mut far = self.far.borrow_mut();
        if let Segment::Data(_) = seg
            && let Some(t) = far.opened.remove(&conn)
        {
            if far.ttfb.len() == TTFB_WINDOW {
                far.ttfb.pop_front();
            }
            far.ttfb.push_back(self.clock.now().saturating_since(t));
        }
        if ends {
            far.opened.remove(&conn);
        }
        let Some(client) = far.clients.get_mut(&conn) else {
            return;
        };
        // The client only records what it got: it never calls back into the network here.
        let taken = client(seg);
        if ends {
            far.clients.remove(&conn);
        } else if !taken {
            far.clients.remove(&conn);
            drop(far);
            bump(&self.counters.client_resets);
            let _ = self.wifi.send(
                WifiDirection::Down,
                Packet::Tcp {
                    conn,
                    seg: Segment::Reset,
                },
            );
        }
    }

    /// Open a connection to the controller's web server; segments from it go to `end`.
    pub fn connect(&self, end: ClientEnd) -> ConnId {
        let conn = {
            let mut far = self.far.borrow_mut();
            far.next += 1;
            let id = far.next;
            far.clients.insert(id, end);
            far.opened.insert(id, self.clock.now());
            id
        };
        self.client_segment(conn, Segment::Open);
        conn
    }

    /// The median time from a connection's opening to the first byte of its reply at the client,
    /// over the last [`TTFB_WINDOW`] connections (virtual time; `None` before the first).
    pub fn ttfb_median(&self) -> Option<Duration> {
        let mut v: Vec<Duration> = self.far.borrow().ttfb.iter().copied().collect();
        v.sort();
        v.get(v.len() / 2).copied()
    }

    /// Send bytes from the client of `conn`.
    pub fn client_send(&self, conn: ConnId, bytes: Vec<u8>) {
        for chunk in bytes.chunks(MSS) {
            self.client_segment(conn, Segment::Data(chunk.to_vec()));
        }
    }

    /// The client of `conn` closes it (and hears nothing more from it).
    pub fn client_close(&self, conn: ConnId) {
        if self.far.borrow_mut().clients.remove(&conn).is_some() {
            self.client_segment(conn, Segment::Close);
        }
    }

    fn client_segment(&self, conn: ConnId, seg: Segment) {
        if self
            .wifi
            .send(WifiDirection::Down, Packet::Tcp { conn, seg })
            .is_err()
        {
            bump(&self.counters.client_send_failures);
            if let Some(mut c) = self.far.borrow_mut().clients.remove(&conn) {
                let _ = c(Segment::Reset);
            }
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
            bump(&net.counters.publish_failures);
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
        let packet = Packet::Publish(Msg {
            topic: topic.to_owned(),
            payload: String::from_utf8_lossy(payload).into_owned(),
            retain,
        });
        let size = packet.wire_len();
        // The send charges this task the driver's CPU time.
        match net.wifi.send(WifiDirection::Up, packet) {
            Ok(()) => {}
            Err(WifiSendError::QueueFull) => return Err(SendError::QueueFull),
            Err(WifiSendError::Disconnected) => return Err(SendError::WifiDown),
        }
        // The publish leaving the controller, on the timeline beside its delivery (`.mqtt`).
        net.tracer.record(
            &net.metric("mqtt.out"),
            format!("publish {topic} ({size} B, {qos:?})"),
        );
        if qos == MqttQos::AtLeastOnce {
            // Accepted once the PUBACK is back: the way there and back, bounded by the jitter.
            let c = net.wifi.config();
            net.clock
                .sleep(c.latency + c.latency + c.jitter + c.airtime(size))
                .await;
        }
        Ok(())
    }
}

/// The [`CommandPort`] of the twin: payloads the netif took off the downlink.
pub struct SimCommands {
    /// The network side.
    pub net: Rc<Net>,
}

/// CPU time of the MQTT client's receive path per command (esp-mqtt hands the payload over in
/// its own task).
const COMMAND_RX_COST: Duration = Duration::from_micros(80);

impl CommandPort for SimCommands {
    async fn receive(&mut self, buf: &mut [u8]) -> usize {
        let p = poll_fn(|cx| {
            let mut st = self.net.stack.borrow_mut();
            match st.commands.pop_front() {
                Some(p) => Poll::Ready(p),
                None => {
                    st.command_reader = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await;
        self.net.clock.charge(COMMAND_RX_COST);
        let n = p.len().min(buf.len());
        buf[..n].copy_from_slice(&p[..n]);
        if p.len() > buf.len() {
            buf.len() + 1
        } else {
            n
        }
    }
}

/// Why a [`SimSocket`] operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SocketError {
    /// The connection was reset (or never open).
    #[error("connection reset")]
    Reset,
}

impl embedded_io::Error for SocketError {
    fn kind(&self) -> embedded_io::ErrorKind {
        embedded_io::ErrorKind::ConnectionReset
    }
}

/// One server socket of the controller's web port (the [`TcpSocket`] a web task owns).
pub struct SimSocket {
    /// The network side.
    pub net: Rc<Net>,
    conn: Option<ConnId>,
}

impl SimSocket {
    /// A socket with no connection yet.
    pub fn new(net: Rc<Net>) -> Self {
        SimSocket { net, conn: None }
    }

    fn send_up(&self, conn: ConnId, seg: Segment) -> Result<(), WifiSendError> {
        self.net
            .wifi
            .send(WifiDirection::Up, Packet::Tcp { conn, seg })
    }
}

impl embedded_io_async::ErrorType for SimSocket {
    type Error = SocketError;
}

impl embedded_io_async::Read for SimSocket {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, SocketError> {
        let conn = self.conn.ok_or(SocketError::Reset)?;
        poll_fn(|cx| {
            let mut st = self.net.stack.borrow_mut();
            let Some(s) = st.sockets.get_mut(&conn) else {
                return Poll::Ready(Err(SocketError::Reset));
            };
            if !s.rx.is_empty() {
                let n = buf.len().min(s.rx.len());
                for (d, b) in buf.iter_mut().zip(s.rx.drain(..n)) {
                    *d = b;
                }
                return Poll::Ready(Ok(n));
            }
            if s.reset {
                return Poll::Ready(Err(SocketError::Reset));
            }
            if s.eof {
                return Poll::Ready(Ok(0));
            }
            s.reader = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

impl embedded_io_async::Write for SimSocket {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, SocketError> {
        let conn = self.conn.ok_or(SocketError::Reset)?;
        for chunk in buf.chunks(MSS) {
            loop {
                let reset = self
                    .net
                    .stack
                    .borrow()
                    .sockets
                    .get(&conn)
                    .is_none_or(|s| s.reset);
                if reset {
                    return Err(SocketError::Reset);
                }
                // The send charges this task the driver's CPU time.
                match self.send_up(conn, Segment::Data(chunk.to_vec())) {
                    Ok(()) => break,
                    Err(WifiSendError::QueueFull) => self.net.clock.sleep(TX_RETRY).await,
                    Err(WifiSendError::Disconnected) => return Err(SocketError::Reset),
                }
            }
        }
        Ok(buf.len())
    }

    async fn flush(&mut self) -> Result<(), SocketError> {
        Ok(())
    }
}

impl TcpSocket for SimSocket {
    async fn accept(&mut self) -> Result<(), SocketError> {
        let conn = poll_fn(|cx| {
            let mut st = self.net.stack.borrow_mut();
            match st.backlog.pop_front() {
                Some(c) => Poll::Ready(c),
                None => {
                    st.acceptors.push(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await;
        self.conn = Some(conn);
        Ok(())
    }

    async fn close(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let state = self.net.stack.borrow_mut().sockets.remove(&conn);
        if state.is_some_and(|s| !s.reset) {
            // Best effort, as a FIN: a lost or refused one leaves the client to time out.
            let _ = self.send_up(conn, Segment::Close);
        }
    }
}

/// The [`WifiRadio`] of the twin: the link's transmit power, rounded down to the ESP32's levels.
pub struct SimRadio {
    /// The network side.
    pub net: Rc<Net>,
}

impl WifiRadio for SimRadio {
    type Error = core::convert::Infallible;

    async fn set_tx_power(&mut self, power: FwTxPower) -> Result<(), Self::Error> {
        self.net
            .wifi
            .set_tx_power(TxPower::at_most(f64::from(power.dbm())));
        Ok(())
    }
}

/// The feed's sink in the twin: the firmware's hub, with the UI timing measured on the way
/// (`<device>.ws.interval_ms` between frames, `<device>.ws.lag_ms` from a pump-side change to
/// the next frame) while any session is open.
pub struct ObservedFeed<K> {
    /// The firmware's sink.
    pub inner: K,
    /// The network side.
    pub net: Rc<Net>,
    /// Open sessions now.
    pub sessions: Rc<dyn Fn() -> u32>,
    /// Last frame time.
    pub last: Option<Instant>,
}

impl<K: WsSink> WsSink for ObservedFeed<K> {
    async fn broadcast(&mut self, text: &str) {
        let net = &self.net;
        let now = net.clock.now();
        self.inner.broadcast(text).await;
        if (self.sessions)() == 0 {
            self.last = None;
            return;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_timestamp_is_read_back() {
        assert_eq!(
            payload_timestamp(r#"{"a":1,"timestamp":1234}"#),
            Some(Instant::from_millis(1234))
        );
        assert_eq!(payload_timestamp("{}"), None);
    }

    #[test]
    fn packets_have_a_size_on_the_air() {
        let data = Packet::Tcp {
            conn: 1,
            seg: Segment::Data(vec![0; 100]),
        };
        assert_eq!(data.wire_len(), 140);
        let open = Packet::Tcp {
            conn: 1,
            seg: Segment::Open,
        };
        assert_eq!(open.wire_len(), 40);
    }
}
