//! The PDU twin's live services: the SNMP agent on UDP (default port 1161), the ENERGIS HTTP
//! API on TCP (default 8080) and the console on a pseudo-terminal, all feeding the same NetTask
//! and ConsoleTask runners as scenarios do.
//!
//! Sockets live on the live runtime's tokio threads; they reach the device through the
//! thread-safe [`Inbox`](crate::kernel::inbox::Inbox)es, whose wakes reach the kernel's thread. NetTask's
//! inbox is bounded (full policy: refuse the newest, counted in `net.dropped`): a refused SNMP
//! datagram gets no answer (as a full W5500 socket buffer), a refused HTTP connection gets 503.
//!
//! HTTP limits (counters under `state pdu http.*`, [`ServiceStats`]): at most
//! [`HTTP_CONNECTIONS`] connections are served at once (more get 503 at once), a failing
//! `accept()` backs off ([`crate::live::guard`]); a request is handed to NetTask as soon as the
//! firmware's own head parser says it can be answered, so bytes that cannot be HTTP get the
//! firmware's 400, a `Content-Length` above its limit 413 and too many headers 431 without
//! waiting for more; a request incomplete after [`READ_TIMEOUT`], or silent for
//! [`IDLE_TIMEOUT`], gets 408. Every answer closes the connection.
//! The console has its own inbox and a higher task priority, so a UDP flood cannot stall it.
//!
//! The EEPROM image lives in `<state-dir>/pdu-eeprom.bin`: read at start (a missing file means a
//! factory-fresh device with the default configuration stored) and written back at shutdown.
use std::cell::RefCell;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use anyhow::Context;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::net::{Inbox, NetInput, ReplyTo};
use super::{Pdu, PduSpec};
use crate::devices::StateValue;
use crate::kernel::{Kernel, TaskSpec};
use crate::live::guard::{Refuse503, ServiceStats, Slot, accept_loop, busy_reply, timeout_reply};
use crate::live::pty::Pty;
use crate::live::{LiveContext, LiveHandle, LiveTwin};
use crate::periph::eeprom::Cat24c256;
use firmware_core::pdu::http::Limits;
use firmware_core::pdu::http::request::{RequestError, parse_head};
use firmware_core::time::Duration;

/// Default SNMP port (161 needs root).
pub const SNMP_PORT: u16 = 1161;
/// Default HTTP port.
pub const HTTP_PORT: u16 = 8080;
/// Name of the EEPROM image under `--state-dir`.
pub const EEPROM_FILE: &str = "pdu-eeprom.bin";
/// How long a client waits for the device before giving up (503).
const REPLY_TIMEOUT: StdDuration = StdDuration::from_secs(10);
/// HTTP connections served at once: the W5500 has 8 hardware sockets. Above it: 503 at once
/// (see [`crate::live::guard`]), counted in `http.refused_busy`.
pub const HTTP_CONNECTIONS: usize = 8;
/// Time from the connection to a request the firmware can answer; then 408 (`http.timed_out`).
pub const READ_TIMEOUT: StdDuration = StdDuration::from_secs(5);
/// Longest silence while a request is incomplete; then 408 (`http.timed_out`).
pub const IDLE_TIMEOUT: StdDuration = StdDuration::from_secs(2);
/// How long writing an answer may take (a client that does not read loses it).
const WRITE_TIMEOUT: StdDuration = StdDuration::from_secs(5);

/// `twin run --twin pdu`.
pub struct PduTwin;

/// The running live PDU: keeps the PTY open and flushes the EEPROM at shutdown.
struct PduHandle {
    eeprom: Rc<RefCell<Cat24c256>>,
    state_file: Option<PathBuf>,
    pty: Option<Pty>,
    device: Pdu,
    http: Arc<ServiceStats>,
}

impl LiveHandle for PduHandle {
    fn device(&mut self) -> Option<&mut dyn crate::devices::Device> {
        Some(&mut self.device)
    }
    fn live_state(&self, key: &str) -> Option<StateValue> {
        self.http.state("http", key)
    }
    fn shutdown(&mut self) -> anyhow::Result<()> {
        let sh = self.device.shared();
        let net = sh.net_inbox.stats();
        let console = sh.console_inbox.stats();
        println!(
            "pdu: net inbox accepted {} refused {} (high water {}); console inbox accepted {} refused {}; console output chunks dropped {}",
            net.accepted,
            net.dropped,
            net.high_water,
            console.accepted,
            console.dropped,
            self.pty.as_ref().map_or(0, |p| p.output().dropped()),
        );
        println!("pdu: http {}", self.http.summary());
        if let Some(path) = &self.state_file {
            self.eeprom.borrow_mut().save()?;
            println!("pdu: EEPROM saved to {}", path.display());
        }
        Ok(())
    }
}

impl LiveTwin for PduTwin {
    fn name(&self) -> &'static str {
        "pdu"
    }

    fn start(&self, kernel: &mut Kernel, ctx: &LiveContext) -> anyhow::Result<Box<dyn LiveHandle>> {
        let spec = PduSpec::parse(&toml::Table::new()).map_err(anyhow::Error::msg)?;
        let state_file = match &ctx.options.state_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                Some(dir.join(EEPROM_FILE))
            }
            None => None,
        };
        let device = Pdu::build_with(&spec, "pdu", kernel, state_file.as_deref())
            .map_err(anyhow::Error::msg)?;
        let sh = device.shared().clone();
        if state_file.is_some() {
            // Write the image back a second after writes, so a killed process loses little.
            let s = sh.clone();
            kernel
                .spawn(TaskSpec::world("pdu.eeprom-flush"), async move {
                    loop {
                        s.clock.sleep(Duration::from_secs(1)).await;
                        let mut part = s.parts.eeprom.borrow_mut();
                        if part.is_dirty()
                            && let Err(e) = part.save()
                        {
                            eprintln!("pdu: {e}");
                        }
                    }
                })
                .detach();
        }

        let snmp = ctx
            .io
            .block_on(UdpSocket::bind(ctx.options.addr(SNMP_PORT)))
            .context("binding the SNMP socket")?;
        let http = ctx
            .io
            .block_on(TcpListener::bind(ctx.options.addr(HTTP_PORT)))
            .context("binding the HTTP listener")?;
        ctx.services
            .announce("pdu_snmp", snmp.local_addr()?.to_string());
        ctx.services
            .announce("pdu_http", http.local_addr()?.to_string());
        ctx.io
            .spawn(serve_snmp(Arc::new(snmp), sh.net_inbox.clone()));
        let http_stats = Arc::new(ServiceStats::default());
        ctx.io
            .spawn(serve_http(http, sh.net_inbox.clone(), http_stats.clone()));

        let inbox = sh.console_inbox.clone();
        // A full console inbox refuses the chunk (counted by the inbox).
        let pty = match Pty::open("pdu-console", move |bytes| {
            let _ = inbox.offer(bytes);
            true
        }) {
            Ok(pty) => {
                ctx.services.announce("pdu_console", pty.path());
                let out = pty.output();
                sh.console_sinks
                    .borrow_mut()
                    .push(Box::new(move |bytes: &[u8]| out.send(bytes.to_vec())));
                Some(pty)
            }
            Err(e) => {
                eprintln!("pdu: no console pseudo-terminal: {e}");
                None
            }
        };
        Ok(Box::new(PduHandle {
            eeprom: sh.parts.eeprom.clone(),
            state_file,
            pty,
            device,
            http: http_stats,
        }))
    }
}

pub(crate) async fn serve_snmp(sock: Arc<UdpSocket>, inbox: Arc<Inbox<NetInput>>) {
    let mut buf = vec![0u8; 2048];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let datagram = buf.get(..n).unwrap_or(&[]).to_vec();
        // A full inbox drops the datagram (counted by the inbox); the manager retries.
        if inbox
            .offer(NetInput::Snmp(datagram, ReplyTo::Live(tx)))
            .is_ok()
        {
            let sock = sock.clone();
            tokio::spawn(async move {
                if let Ok(Ok(reply)) = tokio::time::timeout(REPLY_TIMEOUT, rx).await {
                    let _ = sock.send_to(&reply, peer).await;
                }
            });
        }
    }
}

pub(crate) async fn serve_http(
    listener: TcpListener,
    inbox: Arc<Inbox<NetInput>>,
    stats: Arc<ServiceStats>,
) {
    let st = stats.clone();
    accept_loop(
        listener,
        HTTP_CONNECTIONS,
        stats,
        Refuse503,
        move |stream, slot| serve_connection(stream, inbox.clone(), st.clone(), slot),
    )
    .await;
}

/// How reading a request ended.
#[derive(Debug, PartialEq, Eq)]
enum Received {
    /// Bytes the firmware can answer: a complete request, or one it refuses (400, 413, 431)
    /// without reading the rest.
    Request(Vec<u8>),
    /// No complete request in time: answer 408.
    TimedOut,
    /// The client closed before sending anything.
    Closed,
}

/// Whether the firmware's server can answer `buf` as it is (see [`Received::Request`]): framed with
/// the firmware's own head parser and the limits NetTask's server uses, so the glue never waits
/// for bytes the firmware would not read.
fn answerable(buf: &[u8]) -> bool {
    let limits = Limits::default();
    match parse_head(buf, limits.max_head) {
        Ok(None) => false,
        Err(_) => true,
        Ok(Some(head)) => {
            let len = head.content_length.unwrap_or(0);
            head.transfer_encoding
                || len > limits.max_body
                || buf.len() >= head.body_offset.saturating_add(len)
        }
    }
}

/// Read one request: until [`answerable`], within [`READ_TIMEOUT`] overall and [`IDLE_TIMEOUT`]
/// between bytes.
async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Received {
    let deadline = tokio::time::Instant::now() + READ_TIMEOUT;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let idle = tokio::time::Instant::now() + IDLE_TIMEOUT;
        let n = match tokio::time::timeout_at(idle.min(deadline), stream.read(&mut chunk)).await {
            Err(_) => return Received::TimedOut,
            Ok(Err(_)) | Ok(Ok(0)) if buf.is_empty() => return Received::Closed,
            // A half-closed request: let the firmware answer what there is (400 if partial).
            Ok(Err(_)) | Ok(Ok(0)) => return Received::Request(buf),
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
        // The firmware's request buffer; `answerable` is true before it fills in practice.
        if answerable(&buf) || buf.len() >= Limits::default().request_buffer_len() {
            return Received::Request(buf);
        }
    }
}

/// What the answer to `request` will be refused for, before the device sees it (counted).
fn classify(request: &[u8], stats: &ServiceStats) {
    let limits = Limits::default();
    match parse_head(request, limits.max_head) {
        Err(RequestError::HeadTooLarge) => ServiceStats::bump(&stats.too_large),
        Err(_) => ServiceStats::bump(&stats.malformed),
        Ok(Some(h)) if h.content_length.unwrap_or(0) > limits.max_body => {
            ServiceStats::bump(&stats.too_large)
        }
        _ => {}
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    inbox: Arc<Inbox<NetInput>>,
    stats: Arc<ServiceStats>,
    _slot: Slot,
) {
    let request = match read_request(&mut stream).await {
        Received::Request(r) => r,
        Received::Closed => return,
        Received::TimedOut => {
            ServiceStats::bump(&stats.timed_out);
            let _ = tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&timeout_reply())).await;
            let _ = stream.shutdown().await;
            return;
        }
    };
    classify(&request, &stats);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let reply = if inbox
        .offer(NetInput::Http(request, ReplyTo::Live(tx)))
        .is_ok()
    {
        match tokio::time::timeout(REPLY_TIMEOUT, rx).await {
            Ok(Ok(bytes)) => bytes,
            _ => busy_reply("device did not answer"),
        }
    } else {
        busy_reply("net task busy")
    };
    // A client that does not read its answer loses it after WRITE_TIMEOUT.
    let _ = tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&reply)).await;
    let _ = stream.shutdown().await;
}

/// The console path a running twin announced in its ready file (`pdu_console`).
pub fn console_from_ready_file(ready: &Path) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(ready)
        .with_context(|| format!("reading the ready file {}", ready.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", ready.display()))?;
    json.get("pdu_console")
        .and_then(|v| v.as_str())
        .map(PathBuf::from)
        .with_context(|| format!("{} names no pdu_console", ready.display()))
}

/// `twin console pdu`: bridge this process's stdin and stdout to the console pseudo-terminal at
/// `path`. Bytes typed go to the console as they are (it ends lines at CR, LF or CR LF); its
/// replies are copied to stdout. Returns one second after stdin closes, so the last replies
/// arrive first.
pub fn attach_console(path: &Path) -> anyhow::Result<()> {
    let port = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening the console {}", path.display()))?;
    // SAFETY: termios is plain data; tcgetattr fills it from a valid, open fd.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(port.as_raw_fd(), &mut t) == 0 {
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(port.as_raw_fd(), libc::TCSANOW, &t);
        }
    }
    let mut from_console = port.try_clone()?;
    std::thread::Builder::new()
        .name("console-out".into())
        .spawn(move || {
            let mut buf = [0u8; 512];
            let mut stdout = std::io::stdout();
            while let Ok(n) = from_console.read(&mut buf) {
                if n == 0
                    || stdout.write_all(buf.get(..n).unwrap_or(&[])).is_err()
                    || stdout.flush().is_err()
                {
                    return;
                }
            }
        })?;
    let mut to_console = port;
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 512];
    loop {
        let n = stdin.read(&mut buf)?;
        if n == 0 {
            break;
        }
        to_console.write_all(buf.get(..n).unwrap_or(&[]))?;
    }
    std::thread::sleep(StdDuration::from_secs(1));
    Ok(())
}
