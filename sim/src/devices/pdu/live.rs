//! The PDU twin's live services: the SNMP agent on UDP (default port 1161), the ENERGIS HTTP
//! API on TCP (default 8080) and the console on a pseudo-terminal, all feeding the same NetTask
//! and ConsoleTask runners as scenarios do.
//!
//! Sockets live on the live runtime's tokio threads; they reach the device through the
//! thread-safe [`Inbox`](crate::kernel::inbox::Inbox)es, whose wakes reach the kernel's thread. NetTask's
//! inbox is bounded (full policy: refuse the newest, counted in `net.dropped`): a refused SNMP
//! datagram gets no answer (as a full W5500 socket buffer), a refused HTTP connection gets 503.
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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::net::{Inbox, NetInput, ReplyTo};
use super::{Pdu, PduSpec};
use crate::kernel::{Kernel, TaskSpec};
use crate::live::pty::Pty;
use crate::live::{LiveContext, LiveHandle, LiveTwin};
use crate::periph::eeprom::Cat24c256;
use firmware_core::time::Duration;

/// Default SNMP port (161 needs root).
pub const SNMP_PORT: u16 = 1161;
/// Default HTTP port.
pub const HTTP_PORT: u16 = 8080;
/// Name of the EEPROM image under `--state-dir`.
pub const EEPROM_FILE: &str = "pdu-eeprom.bin";
/// Largest HTTP request the live server reads (head and body).
const MAX_HTTP: usize = 8 * 1024;
/// How long a client waits for the device before giving up.
const REPLY_TIMEOUT: StdDuration = StdDuration::from_secs(10);

/// `twin run --twin pdu`.
pub struct PduTwin;

/// The running live PDU: keeps the PTY open and flushes the EEPROM at shutdown.
struct PduHandle {
    eeprom: Rc<RefCell<Cat24c256>>,
    state_file: Option<PathBuf>,
    pty: Option<Pty>,
    device: Pdu,
}

impl LiveHandle for PduHandle {
    fn device(&mut self) -> Option<&mut dyn crate::devices::Device> {
        Some(&mut self.device)
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
        ctx.io.spawn(serve_http(http, sh.net_inbox.clone()));

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

pub(crate) async fn serve_http(listener: TcpListener, inbox: Arc<Inbox<NetInput>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(serve_connection(stream, inbox.clone()));
    }
}

/// Read one request: the head, then `Content-Length` bytes of body.
async fn read_request(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return (!buf.is_empty()).then_some(buf);
        }
        buf.extend_from_slice(chunk.get(..n)?);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(buf.get(..end)?).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len || buf.len() > MAX_HTTP {
                return Some(buf);
            }
        }
        if buf.len() > MAX_HTTP {
            return Some(buf);
        }
    }
}

async fn serve_connection(mut stream: TcpStream, inbox: Arc<Inbox<NetInput>>) {
    let Ok(Some(request)) = tokio::time::timeout(REPLY_TIMEOUT, read_request(&mut stream)).await
    else {
        return;
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let reply = if inbox
        .offer(NetInput::Http(request, ReplyTo::Live(tx)))
        .is_ok()
    {
        match tokio::time::timeout(REPLY_TIMEOUT, rx).await {
            Ok(Ok(bytes)) => bytes,
            _ => busy("device did not answer"),
        }
    } else {
        busy("net task busy")
    };
    let _ = stream.write_all(&reply).await;
    let _ = stream.shutdown().await;
}

fn busy(why: &str) -> Vec<u8> {
    let body = format!("{{\"error\":\"{why}\"}}");
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
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
