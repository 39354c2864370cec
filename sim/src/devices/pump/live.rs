//! The live pump twin: the deterministic device on the wall clock, with real services.
//!
//! * **MQTT**: an embedded `rumqttd` (default port 1883 + offset) or `--broker mqtt://host:port`.
//!   The twin's own `rumqttc` client stands for the far end of the WiFi link: every message the
//!   firmware's MQTT task gets through the simulated WiFi reaches the fake broker's delivery
//!   point and is republished to the real broker (retain flag kept); messages on
//!   `pump/controller/command` come back through the simulated WiFi downlink to the firmware's
//!   command parser.
//! * **HTTP + WebSocket** (default port 8081 + offset): each request goes to the firmware's
//!   `pump::command::handle_http` (routing, validation, Basic auth `admin`/`pumpctl`); `GET /`
//!   serves the page; `GET /api/status` answers the firmware's status report; `GET /ws` upgrades
//!   and streams the firmware's WebSocket frames at the feed's rate (the number of connected
//!   clients is the device's `ws_clients`, so their CPU cost lands on the network core); text
//!   from a session with credentials is parsed as a command.
//!
//! Sockets live on the live runtime's threads; they reach the kernel through a bounded channel
//! read by a world task (its wakes cross threads; a full channel makes the socket side wait), and
//! the kernel reaches them through bounded channels too (the relay to the real broker drops and
//! counts when full; the count is printed at shutdown). Nothing here runs in deterministic mode.
//!
//! * **FluidNC pseudo-terminal** (`pump_fluidnc`, a `/dev/pts/N` path): a bench FluidNC board of
//!   the same configuration (same simulated part, its own instance) on a 115200 baud simulated
//!   UART, bridged to a PTY so that a G-code sender (or `picocom`) can talk to the simulated
//!   board directly. It is not the pump's board: that one's UART belongs to the controller, and a
//!   second host on it would break the controller's character counting.
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};

use super::net::{Msg, to_motion};
use super::{Arch, PumpDevice, PumpSpec, build};
use crate::kernel::{Kernel, TaskSpec};
use crate::live::pty::Pty;
use crate::live::{LiveContext, LiveHandle, LiveTwin};
use firmware_core::pump::command::{
    self, Command, HttpOutcome, HttpReply, Limits, RecipeInfo, RestConfig,
};
use firmware_core::pump::stats::StatsReport;
use firmware_core::pump::status::StatusReport;
use firmware_core::time::{Duration, Instant};

/// The page the twin serves at `/`.
pub const PAGE: &str = include_str!("page.html");

/// What the sockets ask of the kernel.
#[derive(Debug)]
enum ToKernel {
    /// A command parsed by the firmware's REST or WebSocket path.
    Command(Command),
    /// A payload published on the command topic.
    Mqtt(String),
    /// A WebSocket client came (+1) or went (−1).
    WsClients(i32),
}

/// Requests from the sockets waiting for the kernel.
const TO_KERNEL_CAPACITY: usize = 256;
/// Deliveries waiting for the relay to the real broker.
const TO_BROKER_CAPACITY: usize = 1024;

/// `twin run --twin pump`.
pub struct PumpTwin;

/// The running live pump: keeps the bench terminal open and reports what the relay to the real
/// broker had to drop.
struct Handle {
    _pty: Option<Pty>,
    broker_dropped: Arc<AtomicU64>,
    device: PumpDevice,
}

impl LiveHandle for Handle {
    fn device(&mut self) -> Option<&mut dyn crate::devices::Device> {
        Some(&mut self.device)
    }
    fn shutdown(&mut self) -> anyhow::Result<()> {
        println!(
            "pump: messages the broker relay dropped (queue full): {}",
            self.broker_dropped.load(Ordering::Relaxed)
        );
        Ok(())
    }
}

fn parse_broker(url: &str) -> anyhow::Result<(String, u16)> {
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

fn start_embedded_broker(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
    use std::collections::HashMap;
    let addr = free_port(addr)?;
    let conn = ConnectionSettings {
        connection_timeout_ms: 5000,
        max_payload_size: 20480,
        max_inflight_count: 100,
        auth: None,
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
            max_connections: 1000,
            max_outgoing_packet_count: 200,
            max_segment_size: 100 << 20,
            max_segment_count: 10,
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
        let recipes: Vec<String> = spec
            .checked_recipes
            .iter()
            .map(|r| r.name.as_str().to_owned())
            .collect();

        // MQTT.
        let (host, port) = match &ctx.options.broker {
            Some(url) => parse_broker(url)?,
            None => {
                let a = start_embedded_broker(ctx.options.addr(1883))?;
                (a.ip().to_string(), a.port())
            }
        };
        ctx.services.announce("pump_mqtt", format!("{host}:{port}"));
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
            ctx.io.spawn(async move {
                use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
                let mut opts = MqttOptions::new("pump-twin", host, port);
                opts.set_keep_alive(std::time::Duration::from_secs(30));
                opts.set_max_packet_size(64 * 1024, 64 * 1024);
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
                                .subscribe(
                                    firmware_core::pump::outbox::topic::COMMAND,
                                    QoS::AtLeastOnce,
                                )
                                .await;
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let text = String::from_utf8_lossy(&p.payload).into_owned();
                            let _ = to_kernel.send(ToKernel::Mqtt(text)).await;
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
                    }
                }
            });
        }

        // HTTP + WebSocket.
        let (frames, _) = broadcast::channel::<String>(64);
        {
            let frames = frames.clone();
            *dev.net.ws_sink.borrow_mut() = Some(Box::new(move |f: &str| {
                let _ = frames.send(f.to_owned());
            }));
        }
        let status = Arc::new(Mutex::new(String::from("{}")));
        let http_addr = ctx.options.addr(8081);
        let listener = ctx
            .io
            .block_on(TcpListener::bind(http_addr))
            .with_context(|| format!("binding the pump HTTP server on {http_addr}"))?;
        let bound = listener.local_addr().context("HTTP address")?;
        ctx.services.announce("pump_http", bound.to_string());
        let server = Server {
            config: Arc::new(RestConfig::default()),
            recipes: Arc::new(recipes),
            status: status.clone(),
            frames,
            to_kernel,
        };
        ctx.io.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = server.clone();
                tokio::spawn(async move {
                    let _ = s.serve(stream).await;
                });
            }
        });

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

        spawn_kernel_side(kernel, &dev, from_io, status);
        Ok(Box::new(Handle {
            _pty: pty,
            broker_dropped,
            device: dev,
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

/// The kernel side: requests from the sockets, and the status report for `GET /api/status`.
fn spawn_kernel_side(
    kernel: &mut Kernel,
    dev: &PumpDevice,
    mut from_io: mpsc::Receiver<ToKernel>,
    status: Arc<Mutex<String>>,
) {
    let net = dev.net.clone();
    let probe = dev.board.probe.clone();
    let clock = kernel.clock();
    kernel
        .spawn(TaskSpec::world("pump.live"), async move {
            while let Some(msg) = from_io.recv().await {
                match msg {
                    ToKernel::Mqtt(text) => net.command_from_client(text),
                    ToKernel::Command(c) => {
                        if let Some(cmd) = to_motion(c) {
                            if matches!(
                                cmd,
                                firmware_core::pump::dispense::MotionCommand::Dispense(_)
                            ) {
                                probe.borrow_mut().command_sent = Some(clock.now());
                            }
                            let _ = (net.submit.borrow_mut())(cmd);
                        }
                    }
                    ToKernel::WsClients(delta) => {
                        let n = (i64::from(net.ws_clients.get()) + i64::from(delta)).max(0);
                        net.ws_clients.set(n as u32);
                    }
                }
            }
        })
        .detach();
    let clock = kernel.clock();
    let (fw, net_fw) = (dev.fw.clone(), dev.net_fw.clone());
    kernel
        .spawn(TaskSpec::world("pump.live_status"), async move {
            let mut pumps = net_fw.pumps.dyn_anon_receiver();
            loop {
                let now = clock.now();
                let snapshot = pumps.try_get().unwrap_or_default();
                let (normal, emergency) = net_fw.outbox.with(|o| (o.len(), o.emergency_len()));
                let stats = StatsReport::default();
                let report = StatusReport {
                    timestamp_ms: now.as_millis(),
                    priority: fw.gov.get(),
                    snapshot: &snapshot,
                    uptime: now - Instant::ZERO,
                    queue_depth: (normal + emergency) as u16,
                    stats: &stats,
                };
                let mut text = String::new();
                if report.write_json(&mut text, false).is_ok()
                    && let Ok(mut s) = status.lock()
                {
                    *s = text;
                }
                clock.sleep(Duration::from_millis(200)).await;
            }
        })
        .detach();
}

#[derive(Clone)]
struct Server {
    config: Arc<RestConfig>,
    recipes: Arc<Vec<String>>,
    status: Arc<Mutex<String>>,
    frames: broadcast::Sender<String>,
    to_kernel: mpsc::Sender<ToKernel>,
}

const REQUEST_MAX: usize = 8 * 1024;

impl Server {
    async fn serve(&self, mut stream: TcpStream) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
            if is_page_request(&buf) {
                return write_raw(
                    &mut stream,
                    200,
                    "text/html; charset=utf-8",
                    PAGE.as_bytes(),
                )
                .await;
            }
            let infos: Vec<RecipeInfo<'_>> = self
                .recipes
                .iter()
                .map(|n| RecipeInfo { name: n.as_str() })
                .collect();
            match command::handle_http(&buf, &self.config, &infos) {
                HttpOutcome::Incomplete if buf.len() < REQUEST_MAX => continue,
                HttpOutcome::Incomplete => {
                    return write_reply(&mut stream, &HttpReply::error(413, "request too large"))
                        .await;
                }
                HttpOutcome::Respond(r) => return write_reply(&mut stream, &r).await,
                HttpOutcome::Execute(cmd, r) => {
                    let _ = self.to_kernel.send(ToKernel::Command(cmd)).await;
                    return write_reply(&mut stream, &r).await;
                }
                HttpOutcome::Status => {
                    let body = self.status.lock().map(|s| s.clone()).unwrap_or_default();
                    return write_raw(&mut stream, 200, "application/json", body.as_bytes()).await;
                }
                HttpOutcome::WebSocket { control } => {
                    return self.websocket(stream, &buf, control).await;
                }
            }
        }
    }

    async fn websocket(
        &self,
        mut stream: TcpStream,
        req: &[u8],
        control: bool,
    ) -> std::io::Result<()> {
        use tokio_tungstenite::tungstenite::Message;
        use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
        use tokio_tungstenite::tungstenite::protocol::Role;
        let Some(key) = header(req, "sec-websocket-key") else {
            return write_reply(
                &mut stream,
                &HttpReply::error(400, "missing Sec-WebSocket-Key"),
            )
            .await;
        };
        let accept = derive_accept_key(key.as_bytes());
        let head = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await?;
        let ws =
            tokio_tungstenite::WebSocketStream::from_raw_socket(stream, Role::Server, None).await;
        let (mut tx, mut rx) = ws.split();
        let mut frames = self.frames.subscribe();
        let _ = self.to_kernel.send(ToKernel::WsClients(1)).await;
        let limits = Limits::DEFAULT;
        loop {
            tokio::select! {
                f = frames.recv() => match f {
                    Ok(text) => {
                        if tx.send(Message::text(text)).await.is_err() {
                            break;
                        }
                    }
                    // A slow client skips frames (latest-value telemetry).
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                m = rx.next() => match m {
                    Some(Ok(Message::Text(t))) => {
                        let infos: Vec<RecipeInfo<'_>> = self
                            .recipes
                            .iter()
                            .map(|n| RecipeInfo { name: n.as_str() })
                            .collect();
                        let reply = if !control {
                            "{\"error\":\"control needs credentials\"}".to_owned()
                        } else {
                            match command::parse_command(t.as_bytes(), &limits, &infos) {
                                Ok(c) => {
                                    let name = c.name();
                                    let _ = self.to_kernel.send(ToKernel::Command(c)).await;
                                    format!("{{\"ok\":\"{name}\"}}")
                                }
                                Err(e) => format!("{{\"error\":\"{e:?}\"}}"),
                            }
                        };
                        if tx.send(Message::text(reply)).await.is_err() {
                            break;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                },
            }
        }
        let _ = self.to_kernel.send(ToKernel::WsClients(-1)).await;
        Ok(())
    }
}

fn is_page_request(buf: &[u8]) -> bool {
    buf.starts_with(b"GET / ") || buf.starts_with(b"GET /index.html ")
}

fn header<'a>(req: &'a [u8], name: &str) -> Option<&'a str> {
    let text = std::str::from_utf8(req).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

async fn write_reply(stream: &mut TcpStream, r: &HttpReply) -> std::io::Result<()> {
    let mut out = vec![0u8; 2048];
    match r.write_to(&mut out) {
        Ok(n) => stream.write_all(&out[..n]).await,
        Err(_) => {
            write_raw(
                stream,
                500,
                "application/json",
                b"{\"error\":\"reply too long\"}",
            )
            .await
        }
    }
}

async fn write_raw(
    stream: &mut TcpStream,
    code: u16,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let reason = if code == 200 { "OK" } else { "Error" };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await
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

    #[test]
    fn headers_are_found_case_insensitively() {
        let req = b"GET /ws HTTP/1.1\r\nSec-WebSocket-Key: abc==\r\n\r\n";
        assert_eq!(header(req, "sec-websocket-key"), Some("abc=="));
        assert_eq!(header(req, "x"), None);
    }
}
