//! Scenario clients of the pump's web server, at the far end of the WiFi link: what a browser
//! does, driven by scenario actions (`http`, `ws.connect`). They write requests and read replies
//! like any client; every answer comes from the firmware's web tasks across the link.
//!
//! * [`http`]: one request per connection; the reply is traced as `<device>.http`
//!   `<METHOD> <path>: <status line> <body>` and its latency (connection opened → reply closed,
//!   virtual time) sampled as `<device>.http.latency_ms`.
//! * [`WsClients`]: WebSocket clients that upgrade `/ws` and read the feed (counted per client).
use std::cell::{Cell, RefCell};
use std::rc::Rc;

use super::net::{ConnId, Net, Segment};

/// Send one HTTP request from a new connection (see the module docs).
pub fn http(net: &Rc<Net>, request: Vec<u8>, label: String) {
    let started = net.clock.now();
    let (clock, tracer) = (net.clock.clone(), net.tracer.clone());
    let (source, metric) = (
        format!("{}.http", net.name),
        format!("{}.http.latency_ms", net.name),
    );
    let mut reply = Vec::new();
    let conn = net.connect(Box::new(move |seg| {
        match seg {
            Segment::Data(d) => reply.extend_from_slice(&d),
            Segment::Close | Segment::Reset => {
                let text = String::from_utf8_lossy(&reply);
                let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
                let status = head.lines().next().unwrap_or("");
                let line = if status.is_empty() {
                    format!("{label}: no reply")
                } else {
                    format!("{label}: {status} {body}")
                };
                tracer.record(&source, line);
                let ms = clock.now().saturating_since(started).as_micros() as f64 / 1000.0;
                tracer.sample(&metric, ms);
            }
            Segment::Open => {}
        }
        true
    }));
    net.client_send(conn, request);
}

/// The upgrade request every scenario WebSocket client sends (the RFC's sample key).
const UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: pump\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

#[derive(Default)]
struct Client {
    buf: Vec<u8>,
    upgraded: bool,
    frames: u64,
    open: bool,
}

impl Client {
    /// Take bytes from the server: the `101` head, then unmasked server frames.
    fn take(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        if !self.upgraded {
            let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                return;
            };
            // The status code of the reply's status line.
            self.upgraded = self.buf.get(9..12) == Some(b"101".as_slice());
            self.buf.drain(..end + 4);
        }
        loop {
            let (len, at) = match self.buf.as_slice() {
                [_, 126, a, b, ..] => (usize::from(u16::from_be_bytes([*a, *b])), 4),
                [_, n, ..] if *n < 126 => (usize::from(*n), 2),
                _ => return,
            };
            if self.buf.len() < at + len {
                return;
            }
            if self.buf[0] & 0x0F == 0x1 {
                self.frames += 1;
            }
            self.buf.drain(..at + len);
        }
    }
}

/// The scenario's WebSocket clients.
#[derive(Default)]
pub struct WsClients {
    clients: Vec<(ConnId, Rc<RefCell<Client>>)>,
    /// Frames received by every client.
    received: Rc<Cell<u64>>,
}

impl WsClients {
    /// Open or close clients until `n` are connected.
    pub fn set(&mut self, net: &Rc<Net>, n: u32) {
        self.clients.retain(|(_, c)| c.borrow().open);
        while self.clients.len() > n as usize {
            if let Some((conn, _)) = self.clients.pop() {
                net.client_close(conn);
            }
        }
        while self.clients.len() < n as usize {
            let client = Rc::new(RefCell::new(Client {
                open: true,
                ..Client::default()
            }));
            let (c, received) = (client.clone(), self.received.clone());
            let conn = net.connect(Box::new(move |seg| {
                let mut c = c.borrow_mut();
                match seg {
                    Segment::Data(d) => {
                        let before = c.frames;
                        c.take(&d);
                        received.set(received.get() + c.frames - before);
                    }
                    Segment::Close | Segment::Reset => c.open = false,
                    Segment::Open => {}
                }
                true
            }));
            net.client_send(conn, UPGRADE.to_vec());
            self.clients.push((conn, client));
        }
    }

    /// Clients asked for and still connected.
    pub fn connected(&self) -> u32 {
        self.clients.iter().filter(|(_, c)| c.borrow().open).count() as u32
    }

    /// Text frames received by all clients.
    pub fn received(&self) -> u64 {
        self.received.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_reads_the_upgrade_then_counts_frames_split_anywhere() {
        let mut bytes = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n".to_vec();
        bytes.extend([0x81, 2, b'{', b'}']);
        bytes.extend([0x81, 126, 0, 200]);
        bytes.extend([b'x'; 200]);
        for cut in [1, 7, 60, 63, 100] {
            let mut c = Client::default();
            c.take(&bytes[..cut]);
            c.take(&bytes[cut..]);
            assert!(c.upgraded);
            assert_eq!(c.frames, 2, "cut at {cut}");
        }
    }
}
