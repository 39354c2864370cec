//! The live pump twin: the deterministic device on the wall clock, with real services.
//!
//! * **MQTT**: an embedded `rumqttd` (default port 1883 + offset) or `--broker mqtt://host:port`.
//!   The twin's own `rumqttc` client stands for the far end of the WiFi link: every message the
//!   firmware's MQTT task gets through the simulated WiFi reaches the fake broker's delivery
//!   point and is republished to the real broker (retain flag kept); messages on
//!   `pump/controller/command` come back through the simulated WiFi downlink to the firmware's
//!   command parser.
//! * **HTTP + WebSocket** (default port 8081 + offset): a relay. Each TCP connection becomes a
//!   connection across the simulated WiFi link to the firmware's web tasks on the network core
//!   (`firmware_core::pump::web`): the bytes a browser sends cross the link down, the firmware
//!   reads, parses and answers them (the page, the REST API, `/api/status` at the virtual instant
//!   the request is complete, WebSocket sessions with the feed), and its bytes cross the link up
//!   and go back to the browser. Nothing here reads HTTP; the relay only watches the first bytes
//!   of a connection for a dispense request, to start the twin's command-latency probe.
//!
//! * **FluidNC pseudo-terminal** (`pump_fluidnc`, a `/dev/pts/N` path): a bench FluidNC board of
//!   the same configuration (same simulated part, its own instance) on a 115200 baud simulated
//!   UART, bridged to a PTY so that a G-code sender (or `picocom`) can talk to the simulated
//!   board directly. It is not the pump's board: that one's UART belongs to the controller, and a
//!   second host on it would break the controller's character counting.
//!
//! Sockets live on the live runtime's threads; they reach the kernel through one bounded channel
//! read by a world task ([`TO_KERNEL_CAPACITY`]; a full channel makes the socket side wait, so
//! nothing is lost), and the kernel reaches each connection through its own bounded channel
//! ([`TO_CLIENT_CAPACITY`] chunks; when a client does not read and its channel fills, its
//! connection is reset and counted, so it cannot stall the kernel or the other clients). The
//! relay to the real broker drops and counts when full; the counts are printed at shutdown.
//! Nothing here runs in deterministic mode.
//!
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration as StdDuration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::net::{ConnId, Msg, Net, Segment};
use super::{Arch, PumpDevice, PumpSpec, build};
use crate::kernel::{Kernel, TaskSpec};
use crate::live::guard::{self, Refuse503, ServiceStats};
use crate::live::pty::Pty;
use crate::live::{LiveContext, LiveHandle, LiveTwin};

/// What the sockets ask of the kernel.
#[derive(Debug)]
pub(crate) enum ToKernel {
    /// A payload published on the command topic.
    Mqtt(Vec<u8>),
    /// A browser connected; the kernel's answers for it go to `to_client` (`None`: closed).
    Open {
        id: u64,
        to_client: mpsc::Sender<Option<Vec<u8>>>,
    },
    /// Bytes from browser `id`.
    Data { id: u64, bytes: Vec<u8> },
    /// Browser `id` closed its side.
    Close { id: u64 },
}

/// Requests from the sockets waiting for the kernel.
pub(crate) const TO_KERNEL_CAPACITY: usize = 256;
/// Deliveries waiting for the relay to the real broker.
const TO_BROKER_CAPACITY: usize = 1024;
/// Chunks from the controller waiting for one browser's socket.
const TO_CLIENT_CAPACITY: usize = 64;

/// `twin run --twin pump`.
pub struct PumpTwin;

/// The running live pump: keeps the bench terminal open and reports what the relays dropped.
struct Handle {
    _pty: Option<Pty>,
    broker_dropped: Arc<AtomicU64>,
    device: PumpDevice,
    http: Arc<ServiceStats>,
}

impl LiveHandle for Handle {
    fn device(&mut self) -> Option<&mut dyn crate::devices::Device> {
        Some(&mut self.device)
    }
    fn live_state(&self, key: &str) -> Option<crate::devices::StateValue> {
        self.http.state("http", key)
    }
    fn shutdown(&mut self) -> anyhow::Result<()> {
        println!("pump: http relay {}", self.http.summary());
        let c = &self.device.net.counters;
        println!(
            "pump: messages the broker relay dropped (queue full): {}; web connections reset: \
             {} (backlog full), {} (receive buffer full), {} (client not reading)",
            self.broker_dropped.load(Ordering::Relaxed),
            c.tcp_refused.get(),
            c.tcp_overflow.get(),
            c.client_resets.get(),
        );
        Ok(())
    }
}

pub(crate) fn parse_broker(url: &str) -> anyhow::Result<(String, u16)> {
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
        .unwrap_or(url);
    let (host, port) = rest
        .rsplit_once(':')
        .with_context(|| format!("--broker {url}: expected mqtt://host:port"))?;
    let port = port
        .trim_end_matches('/')
        .parse()
        .with_context(|| format!("--broker {url}: bad port"))?;
    Ok((host.to_owned(), port))
}

fn free_port(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    if addr.port() != 0 {
        return Ok(addr);
    }
    // rumqttd cannot tell which port it bound for port 0: take a free one and hand it over
    // (racy in principle, fine on loopback).
    let l = StdListener::bind(addr).context("finding a free port for the broker")?;
    l.local_addr().context("free port")
}

/// Largest MQTT packet the embedded broker and the twin's client accept, bytes: the firmware's
/// largest publish (`outbox::PAYLOAD_MAX` payload, `outbox::TOPIC_MAX` topic, and the fixed
/// header, topic length and packet id) with room to spare; command payloads
/// (`command::PAYLOAD_MAX`) fit too. rumqttd closes a connection that sends a larger packet.
pub const MQTT_PACKET_MAX: usize = 1024;
const _: () = assert!(
    firmware_core::pump::outbox::PAYLOAD_MAX + firmware_core::pump::outbox::TOPIC_MAX + 9
        <= MQTT_PACKET_MAX
        && firmware_core::pump::command::PAYLOAD_MAX <= MQTT_PACKET_MAX
);
/// Clients the embedded broker takes at once (the twin's relay and a few observers); rumqttd
/// refuses the connection above it.
pub const MQTT_CONNECTIONS: usize = 32;
/// Unacknowledged QoS 1 publishes per connection: the outbox's lane capacity
/// (`outbox::DEFAULT_CAPACITY`).
pub const MQTT_INFLIGHT: usize = firmware_core::pump::outbox::DEFAULT_CAPACITY;
/// The router's log per subscription filter: `MQTT_SEGMENTS` segments of `MQTT_SEGMENT` bytes
/// (256 KiB), the oldest dropped when full; a slow subscriber skips what fell off.
pub const MQTT_SEGMENT: usize = 64 * 1024;
/// See [`MQTT_SEGMENT`].
pub const MQTT_SEGMENTS: usize = 4;

fn start_embedded_broker(
    addr: SocketAddr,
    auth: Option<&crate::live::MqttAuth>,
) -> anyhow::Result<SocketAddr> {
    start_embedded_broker_for(addr, auth, MQTT_CONNECTIONS)
}

/// The embedded broker, accepting up to `max_connections` clients (`twin fleet` needs one per
/// device; a twin, [`MQTT_CONNECTIONS`]).
pub(crate) fn start_embedded_broker_for(
    addr: SocketAddr,
    auth: Option<&crate::live::MqttAuth>,
    max_connections: usize,
) -> anyhow::Result<SocketAddr> {
    use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
    use std::collections::HashMap;
    let addr = free_port(addr)?;
    let conn = ConnectionSettings {
        connection_timeout_ms: 5000,
        max_payload_size: MQTT_PACKET_MAX,
        max_inflight_count: MQTT_INFLIGHT,
        // With credentials, rumqttd closes a connection whose CONNECT does not carry them.
        auth: auth.map(|a| HashMap::from([(a.user.clone(), a.password.clone())])),
        external_auth: None,
        dynamic_filters: true,
    };
    let v4 = HashMap::from([(
        "1".to_string(),
        ServerSettings {
            name: "v4".into(),
            listen: addr,
            tls: None,
            next_connection_delay_ms: 0,
            connections: conn,
        },
    )]);
    let cfg = Config {
        id: 0,
        router: RouterConfig {
            max_connections,
            max_outgoing_packet_count: 200,
            max_segment_size: MQTT_SEGMENT,
            max_segment_count: MQTT_SEGMENTS,
            ..Default::default()
        },
        v4: Some(v4),
        ..Default::default()
    };
    let mut broker = Broker::new(cfg);
    std::thread::Builder::new()
        .name("twin-rumqttd".into())
        .spawn(move || {
            // No shutdown API: the broker's threads end with the process.
            if let Err(e) = broker.start() {
                eprintln!("embedded MQTT broker stopped: {e}");
            }
        })
        .context("starting the broker thread")?;
    // Announce only once it listens.
    for _ in 0..100 {
        if std::net::TcpStream::connect_timeout(&addr, StdDuration::from_millis(50)).is_ok() {
            return Ok(addr);
        }
        std::thread::sleep(StdDuration::from_millis(20));
    }
    anyhow::bail!("the embedded MQTT broker did not start listening on {addr}")
}

impl LiveTwin for PumpTwin {
    fn name(&self) -> &'static str {
        "pump"
    }

    fn start(&self, kernel: &mut Kernel, ctx: &LiveContext) -> anyhow::Result<Box<dyn LiveHandle>> {
        let arch = match ctx.options.arch.as_deref() {
            None | Some("option2") => Arch::Option2,
            Some("option1") => Arch::Option1,
            Some("option3") => Arch::Option3,
            Some(other) => anyhow::bail!("--arch {other}: expected option1, option2 or option3"),
        };
        let spec = PumpSpec::default_spec().with_arch(arch);
        let dev = build(&spec, "pump", kernel);

        // MQTT.
        let (host, port) = match &ctx.options.broker {
            Some(url) => parse_broker(url)?,
            None => {
                let a =
                    start_embedded_broker(ctx.options.addr(1883), ctx.options.mqtt_auth.as_ref())?;
                (a.ip().to_string(), a.port())
            }
        };
        ctx.services.announce("pump_mqtt", format!("{host}:{port}"));
        let auth = ctx.options.mqtt_auth.clone();
        // Sockets to kernel: bounded, and senders wait for room (back-pressure, nothing lost).
        let (to_kernel, from_io) = mpsc::channel::<ToKernel>(TO_KERNEL_CAPACITY);
        // Kernel to the real broker: bounded; when full the message is dropped and counted
        // (the kernel thread must never wait on a socket).
        let (to_broker, mut outgoing) = mpsc::channel::<Msg>(TO_BROKER_CAPACITY);
        let broker_dropped = Arc::new(AtomicU64::new(0));
        {
            let dropped = broker_dropped.clone();
            dev.net.broker.borrow_mut().forward = Some(Box::new(move |m: &Msg| {
                if to_broker.try_send(m.clone()).is_err() {
                    dropped.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        {
            let to_kernel = to_kernel.clone();
            let client_id = dev.net.identity.client_id().to_owned();
            let command_topic = dev.net.identity.command_topic();
            ctx.io.spawn(async move {
                use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
                // The relay stands for the controller's own MQTT session: its client id.
                let mut opts = MqttOptions::new(client_id, host, port);
                opts.set_keep_alive(std::time::Duration::from_secs(30));
                opts.set_max_packet_size(MQTT_PACKET_MAX, MQTT_PACKET_MAX);
                if let Some(a) = auth {
                    opts.set_credentials(a.user, a.password);
                }
                let (client, mut events) = AsyncClient::new(opts, 256);
                let publisher = client.clone();
                tokio::spawn(async move {
                    while let Some(m) = outgoing.recv().await {
                        let _ = publisher
                            .publish(m.topic, QoS::AtLeastOnce, m.retain, m.payload.into_bytes())
                            .await;
                    }
                });
                loop {
                    match events.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            let _ = client
                                .subscribe(command_topic.as_str(), QoS::AtLeastOnce)
                                .await;
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let _ = to_kernel.send(ToKernel::Mqtt(p.payload.to_vec())).await;
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
                    }
                }
            });
        }

        // HTTP + WebSocket: a relay into the simulated WiFi link.
        let http_addr = ctx.options.addr(8081);
        let listener = ctx
            .io
            .block_on(TcpListener::bind(http_addr))
            .with_context(|| format!("binding the pump HTTP server on {http_addr}"))?;
        let bound = listener.local_addr().context("HTTP address")?;
        ctx.services.announce("pump_http", bound.to_string());
        let http_stats = Arc::new(ServiceStats::default());
        ctx.io
            .spawn(accept_loop(listener, to_kernel, http_stats.clone()));

        let pty = match start_fluidnc_pty(kernel) {
            Ok((path, pty)) => {
                ctx.services.announce("pump_fluidnc", path);
                Some(pty)
            }
            Err(e) => {
                eprintln!("pump: no FluidNC pseudo-terminal: {e:#}");
                None
            }
        };

        spawn_kernel_side(kernel, &dev, from_io);
        Ok(Box::new(Handle {
            _pty: pty,
            broker_dropped,
            device: dev,
            http: http_stats,
        }))
    }
}

/// Open a PTY and bridge it to a bench FluidNC board; returns the terminal's path.
///
/// Input from the terminal waits for room (back-pressure, nothing lost: a flood from a G-code
/// sender stalls its writes, as a UART without room would); output to it drops what nobody reads
/// (see [`Pty`]).
fn start_fluidnc_pty(kernel: &mut Kernel) -> anyhow::Result<(String, Pty)> {
    use crate::periph::fluidnc::{FluidncBoard, FluidncConfig};
    use crate::periph::uart::{self, UartConfig};
    use embedded_io_async::{Read as _, Write as _};

    let (_link, board_port, host_port) =
        uart::link(kernel, "pump.bench.uart", UartConfig::new_8n1(115_200))
            .context("bench UART")?;
    let board = FluidncBoard::new(kernel, "pump.bench.fluidnc", FluidncConfig::default())
        .context("bench board")?;
    board.spawn(kernel, board_port).detach();

    let (to_board, mut from_pty) = mpsc::channel::<Vec<u8>>(PTY_INPUT_CHUNKS);
    let pty = Pty::open("pump-fluidnc", move |bytes| {
        to_board.blocking_send(bytes).is_ok()
    })
    .context("pseudo-terminal")?;
    let out = pty.output();
    let (mut rx, mut tx) = host_port.split();
    kernel
        .spawn(TaskSpec::world("pump.bench.pty_in"), async move {
            while let Some(bytes) = from_pty.recv().await {
                let _ = tx.write_all(&bytes).await;
            }
        })
        .detach();
    kernel
        .spawn(TaskSpec::world("pump.bench.pty_out"), async move {
            let mut buf = [0u8; 256];
            loop {
                if let Ok(n) = rx.read(&mut buf).await
                    && n > 0
                {
                    // A G-code sender counts every `ok`: wait for the terminal rather than
                    // drop (the UART's receive FIFO holds the rest meanwhile).
                    out.send_wait(buf[..n].to_vec()).await;
                }
            }
        })
        .detach();
    Ok((pty.path().to_owned(), pty))
}

/// Chunks typed into the FluidNC terminal that may wait for the simulated UART.
const PTY_INPUT_CHUNKS: usize = 64;

/// The kernel side: requests from the sockets, as clients at the far end of the WiFi link.
pub(crate) fn spawn_kernel_side(
    kernel: &mut Kernel,
    dev: &PumpDevice,
    mut from_io: mpsc::Receiver<ToKernel>,
) {
    let net = dev.net.clone();
    let probe = dev.board.probe.clone();
    let clock = kernel.clock();
    kernel
        .spawn(TaskSpec::world("pump.live"), async move {
            let mut conns: BTreeMap<u64, ConnId> = BTreeMap::new();
            while let Some(msg) = from_io.recv().await {
                match msg {
                    ToKernel::Mqtt(payload) => net.command_from_client(payload),
                    ToKernel::Open { id, to_client } => {
                        conns.insert(id, open(&net, to_client));
                    }
                    ToKernel::Data { id, bytes } => {
                        if let Some(&conn) = conns.get(&id) {
                            if starts_a_dose(&bytes) {
                                probe.borrow_mut().command_sent = Some(clock.now());
                            }
                            net.client_send(conn, bytes);
                        }
                    }
                    ToKernel::Close { id } => {
                        if let Some(conn) = conns.remove(&id) {
                            net.client_close(conn);
                        }
                    }
                }
            }
        })
        .detach();
}

/// Whether the first bytes of a connection are a dispense or recipe request (the probe's start).
fn starts_a_dose(bytes: &[u8]) -> bool {
    bytes.starts_with(b"POST /api/pump/start") || bytes.starts_with(b"POST /api/recipe/start")
}

/// A connection across the link whose answers go to the browser's channel; a full channel (the
/// browser does not read) resets it.
fn open(net: &Rc<Net>, to_client: mpsc::Sender<Option<Vec<u8>>>) -> ConnId {
    net.connect(Box::new(move |seg| match seg {
        Segment::Data(d) => to_client.try_send(Some(d)).is_ok(),
        Segment::Close | Segment::Reset => {
            let _ = to_client.try_send(None);
            true
        }
        Segment::Open => true,
    }))
}

/// Connections relayed at once: the controller's web sockets plus its accept backlog, all it can
/// hold. More get 503 from the relay at once (`state pump http.refused_busy`; see
/// [`crate::live::guard`]), so a flood of connections costs neither file descriptors nor tasks
/// without bound. A failing `accept` backs off instead of spinning.
pub const RELAY_CONNECTIONS: usize = super::WEB_SOCKETS + super::net::BACKLOG;

/// Accept browsers and relay each one's bytes.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    to_kernel: mpsc::Sender<ToKernel>,
    stats: Arc<ServiceStats>,
) {
    let mut next = 0u64;
    guard::accept_loop(
        listener,
        RELAY_CONNECTIONS,
        stats,
        Refuse503,
        move |stream: TcpStream, slot| {
            next += 1;
            // The relay must not add the host's delays to what the link model takes: small
            // WebSocket frames go out at once.
            let _ = stream.set_nodelay(true);
            relay(stream, next, to_kernel.clone(), slot)
        },
    )
    .await;
}

async fn relay(
    mut stream: TcpStream,
    id: u64,
    to_kernel: mpsc::Sender<ToKernel>,
    _slot: guard::Slot,
) {
    let (to_client, mut from_kernel) = mpsc::channel(TO_CLIENT_CAPACITY);
    if to_kernel
        .send(ToKernel::Open { id, to_client })
        .await
        .is_err()
    {
        return;
    }
    let (mut rd, mut wr) = stream.split();
    let mut buf = [0u8; 1460];
    let mut reading = true;
    loop {
        tokio::select! {
            n = rd.read(&mut buf), if reading => match n {
                Ok(0) | Err(_) => {
                    reading = false;
                    let _ = to_kernel.send(ToKernel::Close { id }).await;
                }
                Ok(n) => {
                    let bytes = buf[..n].to_vec();
                    if to_kernel.send(ToKernel::Data { id, bytes }).await.is_err() {
                        return;
                    }
                }
            },
            m = from_kernel.recv() => match m {
                Some(Some(bytes)) => {
                    if wr.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                // The controller closed (or reset) the connection, or the kernel is gone.
                Some(None) | None => break,
            },
        }
    }
    let _ = wr.shutdown().await;
    if reading {
        let _ = to_kernel.send(ToKernel::Close { id }).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_parse_and_bad_ones_say_why() {
        assert_eq!(
            parse_broker("mqtt://127.0.0.1:1884").unwrap(),
            ("127.0.0.1".to_owned(), 1884)
        );
        assert!(parse_broker("mqtt://nohost").is_err());
        assert!(parse_broker("mqtt://h:notaport").is_err());
    }
}
