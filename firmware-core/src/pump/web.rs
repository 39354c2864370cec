//! The web server: the UI page, the REST API and the WebSocket sessions, over TCP sockets.
//!
//! The platform supplies sockets ([`TcpSocket`]: embassy-net's `TcpSocket` on the board, the
//! twin's simulated sockets across its WiFi model); each [`WebTask`] owns one and serves one
//! connection at a time on it, so the number of tasks the platform spawns is the number of
//! clients served at once (a further connection waits in the platform's accept backlog). What a
//! request means is [`handle_http`]'s (routing, validation, Basic auth); this module reads the
//! request, answers it and runs WebSocket sessions:
//!
//! * `GET /`: the page ([`PAGE`], in flash on the board);
//! * `GET /api/status`: the status at the instant the request is complete
//!   ([`StatusSource`], the same report the status publisher sends);
//! * control requests: the command goes to pump control ([`CommandSink`]); a full command queue
//!   answers 503 `{"error":"motion queue full"}` instead of the 202;
//! * `GET /ws`: the `101 Switching Protocols` handshake ([`websocket::accept_key`]), then a
//!   session: every feed frame the [`WsTask`](super::ws::WsTask) broadcasts through the
//!   [`WsHub`] goes out as a text frame, and text from the client is a command
//!   ([`WsSession::handle_text`]), answered `{"ok":"<cmd>"}` or `{"error":"…"}`.
//!
//! # Limits (each counted in [`WebStats`])
//! * A request (head and body) must fit [`REQUEST_MAX`] (431 if the head does not, 413 if the
//!   body does not; more than `HEADERS_MAX` header lines is 431 at once) and arrive within
//!   [`REQUEST_TIMEOUT`] of the connection (408 otherwise), so a client that sends nothing
//!   cannot hold a socket.
//! * A WebSocket frame from a client carries at most [`WS_PAYLOAD_MAX`] bytes (close 1009).
//! * At most `S` sessions hold a [`WsHub`] receiver; a further upgrade is refused with 503.
//! * The feed is latest-value: a session whose socket is slow skips frames (it always sends
//!   the newest), so a client that never reads costs its own socket and nobody else's.
//!
//! Every reply closes the connection (`Connection: close`): one request per connection keeps each
//! task a simple loop, and the UI's requests are few.
use core::cell::Cell;
use core::fmt::Write as _;
use core::future::Future;

use embassy_futures::select::{Either, select};
use embassy_sync::blocking_mutex::Mutex as BlockingMutex;
use embassy_sync::blocking_mutex::raw::RawMutex;
use embassy_sync::watch::Watch;
use embedded_io_async::{Read, Write};

use super::command::{CommandSink, HttpOutcome, HttpReply, RecipeInfo, RestConfig, handle_http};
use super::status::StatusSource;
use super::websocket::{self, Opcode};
use super::ws::{FRAME_MAX, WsSession, WsSink};
use crate::ports::Clock;
use crate::time::Duration;

/// The UI page.
pub const PAGE: &str = include_str!("page.html");

/// Largest request, head and body, bytes.
pub const REQUEST_MAX: usize = 2048;
/// Time from the connection to a complete request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest WebSocket frame payload a client may send, bytes.
pub const WS_PAYLOAD_MAX: usize = 512;
/// Largest response written from the task's buffer (status and JSON replies).
const TX_MAX: usize = 1280;

/// One server socket of the platform's TCP stack, listening on the web port.
///
/// # Contract
/// * `accept` waits for the next connection on the web port; `Err` means the stack failed (the
///   task backs off before trying again).
/// * `read` returns `Ok(0)` once the client has closed its side; it MUST be cancel-safe (the
///   task races it against the feed and its timeout): bytes not returned stay in the socket.
/// * `write` may wait while the link is busy, and MUST fail (not wait forever) when the
///   connection is gone.
/// * `close` sends what was written, then closes; the socket can `accept` again afterwards.
pub trait TcpSocket: Read + Write {
    /// Wait for a connection.
    fn accept(&mut self) -> impl Future<Output = Result<(), Self::Error>>;
    /// Close the connection.
    fn close(&mut self) -> impl Future<Output = ()>;
}

/// How long a task waits after a failed `accept` (the stack is out of resources).
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The web server's counters. They wrap at `u32::MAX`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct WebStats {
    /// Connections accepted.
    pub connections: u32,
    /// Requests answered (with any status).
    pub requests: u32,
    /// Requests refused with 408 (too slow) or 413 (too large).
    pub refused: u32,
    /// Commands handed to pump control (REST and WebSocket).
    pub commands: u32,
    /// Commands refused because pump control's queue was full.
    pub commands_refused: u32,
    /// WebSocket sessions opened.
    pub sessions: u32,
    /// WebSocket sessions open now.
    pub open_sessions: u32,
    /// Upgrades refused because every session slot was taken.
    pub sessions_refused: u32,
    /// Feed frames written to sessions (one per session per frame).
    pub frames: u32,
    /// Sessions closed for a bad or oversized frame.
    pub bad_frames: u32,
    /// `accept` failures.
    pub accept_errors: u32,
}

/// The feed's frames, for every open session: the sink the [`WsTask`](super::ws::WsTask)
/// broadcasts into, latest value only (see the module docs).
pub struct WsHub<M: RawMutex, const S: usize> {
    frames: Watch<M, heapless::String<FRAME_MAX>, S>,
}

impl<M: RawMutex, const S: usize> Default for WsHub<M, S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: RawMutex, const S: usize> WsHub<M, S> {
    /// A hub with room for `S` sessions. `const`, so it can live in a `static`.
    pub const fn new() -> Self {
        WsHub {
            frames: Watch::new(),
        }
    }
}

impl<M: RawMutex, const S: usize> WsSink for &WsHub<M, S> {
    async fn broadcast(&mut self, text: &str) {
        // Feed frames are built in a FRAME_MAX string, so they always fit.
        let frame = heapless::String::try_from(text).unwrap_or_default();
        self.frames.sender().send(frame);
    }
}

/// What the web server is configured with.
pub struct WebConfig<'a> {
    /// Credentials and command limits.
    pub rest: RestConfig,
    /// The recipes commands may name.
    pub recipes: &'a [RecipeInfo<'a>],
    /// The page served at `/`.
    pub page: &'a str,
}

/// The [`WebStats`] every web task of a device counts into.
pub struct WebCounters<M: RawMutex>(BlockingMutex<M, Cell<WebStats>>);

impl<M: RawMutex> Default for WebCounters<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: RawMutex> WebCounters<M> {
    /// Zeroed counters. `const`, so they can live in a `static`.
    pub const fn new() -> Self {
        WebCounters(BlockingMutex::new(Cell::new(WebStats {
            connections: 0,
            requests: 0,
            refused: 0,
            commands: 0,
            commands_refused: 0,
            sessions: 0,
            open_sessions: 0,
            sessions_refused: 0,
            frames: 0,
            bad_frames: 0,
            accept_errors: 0,
        })))
    }

    /// The counters now.
    pub fn get(&self) -> WebStats {
        self.0.lock(Cell::get)
    }

    fn update(&self, f: impl FnOnce(&mut WebStats)) {
        self.0.lock(|c| {
            let mut s = c.get();
            f(&mut s);
            c.set(s);
        });
    }
}

/// Everything a web task works with besides its socket: configuration, where status and
/// commands go, the feed, the shared counters. Only references: each task may hold its own.
pub struct WebContext<'a, M: RawMutex, const S: usize> {
    config: WebConfig<'a>,
    status: &'a dyn StatusSource,
    commands: &'a dyn CommandSink,
    hub: &'a WsHub<M, S>,
    stats: &'a WebCounters<M>,
}

impl<'a, M: RawMutex, const S: usize> WebContext<'a, M, S> {
    /// The server's context.
    pub fn new(
        config: WebConfig<'a>,
        status: &'a dyn StatusSource,
        commands: &'a dyn CommandSink,
        hub: &'a WsHub<M, S>,
        stats: &'a WebCounters<M>,
    ) -> Self {
        WebContext {
            config,
            status,
            commands,
            hub,
            stats,
        }
    }

    /// The counters.
    pub fn stats(&self) -> WebStats {
        self.stats.get()
    }

    fn count(&self, f: impl FnOnce(&mut WebStats)) {
        self.stats.update(f);
    }

    /// Hand a command to pump control; `false` (counted) when the queue is full.
    fn submit(&self, c: &super::command::Command) -> bool {
        let ok = c.to_motion().is_some_and(|m| self.commands.submit(m));
        self.count(|s| {
            if ok {
                s.commands = s.commands.wrapping_add(1);
            } else {
                s.commands_refused = s.commands_refused.wrapping_add(1);
            }
        });
        ok
    }
}

/// Why serving a connection ended early (the socket failed or the client went away).
struct Gone;

/// One server socket's task (see the module docs).
pub struct WebTask<'a, M: RawMutex, T, C, const S: usize> {
    socket: T,
    clock: C,
    ctx: &'a WebContext<'a, M, S>,
    rx: [u8; REQUEST_MAX],
    tx: [u8; TX_MAX],
}

impl<'a, M: RawMutex, T: TcpSocket, C: Clock, const S: usize> WebTask<'a, M, T, C, S> {
    /// A task serving `socket`.
    pub fn new(socket: T, clock: C, ctx: &'a WebContext<'a, M, S>) -> Self {
        WebTask {
            socket,
            clock,
            ctx,
            rx: [0; REQUEST_MAX],
            tx: [0; TX_MAX],
        }
    }

    /// Run forever.
    pub async fn run(&mut self) -> ! {
        loop {
            self.step().await;
        }
    }

    /// Accept one connection, serve it, close it.
    pub async fn step(&mut self) {
        if self.socket.accept().await.is_err() {
            self.ctx
                .count(|s| s.accept_errors = s.accept_errors.wrapping_add(1));
            self.clock.sleep(ACCEPT_BACKOFF).await;
            return;
        }
        self.ctx
            .count(|s| s.connections = s.connections.wrapping_add(1));
        let _ = self.serve().await;
        self.socket.close().await;
    }

    async fn serve(&mut self) -> Result<(), Gone> {
        let deadline = self.clock.now() + REQUEST_TIMEOUT;
        let mut len = 0;
        let outcome = loop {
            if len == self.rx.len() {
                self.ctx.count(|s| s.refused = s.refused.wrapping_add(1));
                // A head that does not fit is 431 (as the PDU answers), a body 413.
                let head_done = self.rx.windows(4).any(|w| w == b"\r\n\r\n");
                let reply = if head_done {
                    HttpReply::error(413, "request too large")
                } else {
                    HttpReply::error(431, "request head too large")
                };
                return self.reply(&reply).await;
            }
            let read = select(
                self.socket.read(&mut self.rx[len..]),
                self.clock.sleep_until(deadline),
            )
            .await;
            match read {
                Either::First(Ok(0)) | Either::First(Err(_)) => return Err(Gone),
                Either::First(Ok(n)) => len += n,
                Either::Second(()) => {
                    self.ctx.count(|s| s.refused = s.refused.wrapping_add(1));
                    return self.reply(&HttpReply::error(408, "request timeout")).await;
                }
            }
            let cfg = &self.ctx.config;
            match handle_http(&self.rx[..len], &cfg.rest, cfg.recipes) {
                HttpOutcome::Incomplete => continue,
                other => break other,
            }
        };
        match outcome {
            HttpOutcome::Incomplete => Ok(()),
            HttpOutcome::Respond(r) => self.reply(&r).await,
            HttpOutcome::Execute(c, r) => {
                if self.ctx.submit(&c) {
                    self.reply(&r).await
                } else {
                    self.reply(&HttpReply::error(503, "motion queue full"))
                        .await
                }
            }
            HttpOutcome::Status => {
                let r = self.ctx.status.status_reply(self.clock.now());
                self.reply(&r).await
            }
            HttpOutcome::Page => self.page().await,
            HttpOutcome::WebSocket { control } => self.upgrade(len, control).await,
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), Gone> {
        self.socket.write_all(bytes).await.map_err(|_| Gone)
    }

    async fn reply(&mut self, r: &HttpReply) -> Result<(), Gone> {
        self.ctx.count(|s| s.requests = s.requests.wrapping_add(1));
        let n = match r.write_to(&mut self.tx) {
            Ok(n) => n,
            Err(_) => HttpReply::error(500, "reply too long")
                .write_to(&mut self.tx)
                .unwrap_or(0),
        };
        self.socket.write_all(&self.tx[..n]).await.map_err(|_| Gone)
    }

    async fn page(&mut self) -> Result<(), Gone> {
        self.ctx.count(|s| s.requests = s.requests.wrapping_add(1));
        let page = self.ctx.config.page;
        let mut head: heapless::String<160> = heapless::String::new();
        // 160 bytes hold the head with any page length.
        let _ = write!(
            head,
            "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n\r\n",
            page.len()
        );
        self.write(head.as_bytes()).await?;
        self.write(page.as_bytes()).await
    }

    /// The `101` handshake, then the session; `len` bytes of the request are in `rx`.
    async fn upgrade(&mut self, len: usize, control: bool) -> Result<(), Gone> {
        let (key, head_len) = match upgrade_key(&self.rx[..len]) {
            Some(k) => k,
            None => {
                return self
                    .reply(&HttpReply::error(400, "missing Sec-WebSocket-Key"))
                    .await;
            }
        };
        let Some(mut feed) = self.ctx.hub.frames.receiver() else {
            self.ctx
                .count(|s| s.sessions_refused = s.sessions_refused.wrapping_add(1));
            return self
                .reply(&HttpReply::error(503, "too many WebSocket sessions"))
                .await;
        };
        let accept = websocket::accept_key(&key);
        let mut head: heapless::String<160> = heapless::String::new();
        let _ = write!(
            head,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            core::str::from_utf8(&accept).unwrap_or("")
        );
        self.write(head.as_bytes()).await?;
        self.ctx.count(|s| {
            s.sessions = s.sessions.wrapping_add(1);
            s.open_sessions = s.open_sessions.wrapping_add(1);
        });
        // Bytes after the request head are the client's first frames.
        self.rx.copy_within(head_len..len, 0);
        let r = self
            .session(len - head_len, WsSession { control }, &mut feed)
            .await;
        self.ctx
            .count(|s| s.open_sessions = s.open_sessions.saturating_sub(1));
        r
    }

    async fn session(
        &mut self,
        mut len: usize,
        session: WsSession,
        feed: &mut embassy_sync::watch::Receiver<'_, M, heapless::String<FRAME_MAX>, S>,
    ) -> Result<(), Gone> {
        loop {
            // Every complete frame in the buffer first.
            loop {
                match websocket::decode(&mut self.rx[..len], WS_PAYLOAD_MAX) {
                    Ok(Some(d)) => {
                        let end = self.frame(d, session).await?;
                        if end {
                            return Ok(());
                        }
                        self.rx.copy_within(d.end..len, 0);
                        len -= d.end;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.ctx
                            .count(|s| s.bad_frames = s.bad_frames.wrapping_add(1));
                        return self.send_close(e.close_code()).await;
                    }
                }
            }
            match select(self.socket.read(&mut self.rx[len..]), feed.changed()).await {
                Either::First(Ok(0)) | Either::First(Err(_)) => return Err(Gone),
                Either::First(Ok(n)) => len += n,
                Either::Second(frame) => {
                    send_frame(
                        &mut self.socket,
                        &mut self.tx,
                        Opcode::Text,
                        frame.as_bytes(),
                    )
                    .await?;
                    self.ctx.count(|s| s.frames = s.frames.wrapping_add(1));
                }
            }
        }
    }

    /// Act on one client frame; `true` when the session ends.
    async fn frame(&mut self, d: websocket::Decoded, session: WsSession) -> Result<bool, Gone> {
        let payload = &self.rx[d.start..d.end];
        match d.opcode {
            Opcode::Text => {
                let cfg = &self.ctx.config;
                let mut reply: heapless::String<128> = heapless::String::new();
                // Every reply of ours is shorter than 128 bytes.
                let _ = match session.handle_text(payload, &cfg.rest.limits, cfg.recipes) {
                    Ok(c) if self.ctx.submit(&c) => write!(reply, "{{\"ok\":\"{}\"}}", c.name()),
                    Ok(_) => reply.write_str("{\"error\":\"motion queue full\"}"),
                    Err(e) => reply.write_str(&e.reply()),
                };
                send_frame(
                    &mut self.socket,
                    &mut self.tx,
                    Opcode::Text,
                    reply.as_bytes(),
                )
                .await?;
                Ok(false)
            }
            Opcode::Ping => {
                send_frame(&mut self.socket, &mut self.tx, Opcode::Pong, payload).await?;
                Ok(false)
            }
            Opcode::Close => {
                let code = match payload {
                    [a, b, ..] => u16::from_be_bytes([*a, *b]),
                    _ => 1000,
                };
                self.send_close(code).await?;
                Ok(true)
            }
            // Binary frames mean nothing to the UI; pongs answer nothing we sent.
            Opcode::Binary | Opcode::Pong | Opcode::Continuation => Ok(false),
        }
    }

    async fn send_close(&mut self, code: u16) -> Result<(), Gone> {
        send_frame(
            &mut self.socket,
            &mut self.tx,
            Opcode::Close,
            &code.to_be_bytes(),
        )
        .await
    }
}

/// Write one unmasked server frame through the task's transmit buffer.
async fn send_frame<T: Write>(
    socket: &mut T,
    tx: &mut [u8; TX_MAX],
    opcode: Opcode,
    payload: &[u8],
) -> Result<(), Gone> {
    let mut h = [0u8; websocket::HEADER_MAX];
    let hl = websocket::encode_header(opcode, payload.len(), &mut h);
    let total = hl + payload.len();
    // Frames of ours are at most FRAME_MAX + a header, well inside TX_MAX.
    let frame = tx.get_mut(..total).ok_or(Gone)?;
    frame[..hl].copy_from_slice(&h[..hl]);
    frame[hl..].copy_from_slice(payload);
    socket.write_all(frame).await.map_err(|_| Gone)
}

/// The `Sec-WebSocket-Key` of an upgrade request, and the length of the request head.
fn upgrade_key(request: &[u8]) -> Option<(heapless::Vec<u8, 64>, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; super::command::HEADERS_MAX];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(request) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    let key = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"))?;
    let key = heapless::Vec::from_slice(key.value.trim_ascii()).ok()?;
    Some((key, head_len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pump::dispense::MotionCommand;
    use crate::pump::outbox::testing::TestClock;
    use crate::queue::{FullPolicy, Queue};
    use crate::time::Instant;
    use core::convert::Infallible;
    use embassy_sync::blocking_mutex::raw::NoopRawMutex;
    use std::collections::VecDeque;

    /// A socket with one connection whose client sends `input` (then nothing, or EOF).
    #[derive(Default)]
    struct Sock {
        input: VecDeque<u8>,
        eof: bool,
        out: Vec<u8>,
        accepted: bool,
        closed: bool,
    }

    impl embedded_io_async::ErrorType for Sock {
        type Error = Infallible;
    }

    impl Read for Sock {
        async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
            if self.input.is_empty() {
                if self.eof {
                    return Ok(0);
                }
                core::future::pending::<()>().await;
            }
            let n = buf.len().min(self.input.len());
            for b in buf.iter_mut().take(n) {
                *b = self.input.pop_front().unwrap_or(0);
            }
            Ok(n)
        }
    }

    impl Write for Sock {
        async fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
            self.out.extend_from_slice(buf);
            Ok(buf.len())
        }
        async fn flush(&mut self) -> Result<(), Infallible> {
            Ok(())
        }
    }

    impl TcpSocket for Sock {
        async fn accept(&mut self) -> Result<(), Infallible> {
            if core::mem::replace(&mut self.accepted, true) {
                core::future::pending::<()>().await;
            }
            Ok(())
        }
        async fn close(&mut self) {
            self.closed = true;
        }
    }

    struct Status;
    impl StatusSource for Status {
        fn status_reply(&self, now: Instant) -> HttpReply {
            HttpReply::json(200, |w| write!(w, "{{\"t\":{}}}", now.as_millis()))
        }
    }

    type Q = Queue<NoopRawMutex, MotionCommand, 1>;
    const AUTH: &str = "Authorization: Basic YWRtaW46cHVtcGN0bA==\r\n";

    fn ctx<'a>(q: &'a Q, hub: &'a WsHub<NoopRawMutex, 2>) -> WebContext<'a, NoopRawMutex, 2> {
        let counters: &'static WebCounters<NoopRawMutex> = Box::leak(Box::default());
        WebContext::new(
            WebConfig {
                rest: RestConfig::default(),
                recipes: &[],
                page: "<p>hi</p>",
            },
            &Status,
            q,
            hub,
            counters,
        )
    }

    /// A clock at 1.5 s whose sleeps never end (the timeout test uses `TestClock`, which jumps).
    struct Still;
    impl Clock for Still {
        fn now(&self) -> Instant {
            Instant::from_millis(1500)
        }
        fn sleep_until(&self, _: Instant) -> impl Future<Output = ()> {
            core::future::pending()
        }
    }

    /// Serve one connection of `input` to the end (or until it waits), return the output.
    fn serve(ctx: &WebContext<'_, NoopRawMutex, 2>, input: &[u8], eof: bool) -> (String, bool) {
        serve_with(ctx, input, eof, Still)
    }

    fn serve_with(
        ctx: &WebContext<'_, NoopRawMutex, 2>,
        input: &[u8],
        eof: bool,
        clock: impl Clock,
    ) -> (String, bool) {
        let sock = Sock {
            input: input.iter().copied().collect(),
            eof,
            ..Default::default()
        };
        let mut t = WebTask::new(sock, &clock, ctx);
        let _ = embassy_futures::poll_once(core::pin::pin!(t.step()));
        (
            String::from_utf8_lossy(&t.socket.out).into_owned(),
            t.socket.closed,
        )
    }

    #[test]
    fn status_is_answered_at_the_instant_the_request_is_complete() {
        let (q, hub) = (Q::new(FullPolicy::RejectNew), WsHub::new());
        let c = ctx(&q, &hub);
        let (out, closed) = serve(&c, b"GET /api/status HTTP/1.1\r\nHost: p\r\n\r\n", false);
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.ends_with("{\"t\":1500}"), "{out}");
        assert!(closed);
        let (page, _) = serve(&c, b"GET / HTTP/1.1\r\n\r\n", false);
        assert!(
            page.contains("text/html") && page.ends_with("<p>hi</p>"),
            "{page}"
        );
        assert_eq!(c.stats().requests, 2);
    }

    #[test]
    fn control_goes_to_pump_control_and_a_full_queue_answers_503() {
        let (q, hub) = (Q::new(FullPolicy::RejectNew), WsHub::new());
        let c = ctx(&q, &hub);
        let stop = format!("POST /api/stop HTTP/1.1\r\n{AUTH}\r\n");
        let (out, _) = serve(&c, stop.as_bytes(), false);
        assert!(out.starts_with("HTTP/1.1 202 Accepted"), "{out}");
        let (out, _) = serve(&c, stop.as_bytes(), false);
        assert!(out.starts_with("HTTP/1.1 503 Service Unavailable"), "{out}");
        assert!(out.ends_with("{\"error\":\"motion queue full\"}"));
        assert_eq!((c.stats().commands, c.stats().commands_refused), (1, 1));
        assert_eq!(q.try_receive(), Some(MotionCommand::Stop));
        let (out, _) = serve(&c, b"POST /api/stop HTTP/1.1\r\n\r\n", false);
        assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    }

    #[test]
    fn a_slow_or_oversized_request_is_refused() {
        let (q, hub) = (Q::new(FullPolicy::RejectNew), WsHub::new());
        let c = ctx(&q, &hub);
        let (out, closed) = serve_with(&c, b"GET /api/sta", false, TestClock::default());
        assert!(out.starts_with("HTTP/1.1 408"), "{out}");
        assert!(closed);
        let big = format!(
            "GET /api/status HTTP/1.1\r\nX: {}\r\n",
            "a".repeat(REQUEST_MAX)
        );
        let (out, _) = serve(&c, big.as_bytes(), false);
        assert!(
            out.starts_with("HTTP/1.1 431"),
            "a head that does not fit: {out}"
        );
        let (out, _) = serve(&c, b"GET /api/sta", true);
        assert_eq!(out, "", "a client that hangs up gets nothing");
        assert_eq!(c.stats().refused, 2);
    }

    fn masked_text(payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut f = vec![0x81, 0x80 | payload.len() as u8];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    #[test]
    fn a_websocket_session_gets_the_feed_and_its_commands_answered() {
        let (q, hub) = (Q::new(FullPolicy::RejectNew), WsHub::new());
        let c = ctx(&q, &hub);
        let mut req = format!(
            "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{AUTH}\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .into_bytes();
        req.extend(masked_text(br#"{"cmd":"estop"}"#));
        let clock = TestClock::default();
        let sock = Sock {
            input: req.into_iter().collect(),
            ..Default::default()
        };
        let mut t = WebTask::new(sock, &clock, &c);
        {
            let mut step = core::pin::pin!(t.step());
            assert!(embassy_futures::poll_once(step.as_mut()).is_pending());
            let mut h = &hub;
            let _ = embassy_futures::poll_once(core::pin::pin!(h.broadcast("{\"t\":1}")));
            assert!(embassy_futures::poll_once(step.as_mut()).is_pending());
        }
        let out = t.socket.out.clone();
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
            ),
            "{text}"
        );
        let frames = &out[text.find("\r\n\r\n").unwrap() + 4..];
        let reply = br#"{"ok":"estop"}"#;
        assert_eq!(frames[..2], [0x81, reply.len() as u8]);
        assert_eq!(&frames[2..2 + reply.len()], reply);
        assert_eq!(&frames[2 + reply.len()..], b"\x81\x07{\"t\":1}");
        let s = c.stats();
        assert_eq!(
            (s.sessions, s.open_sessions, s.frames, s.commands),
            (1, 1, 1, 1)
        );
    }

    #[test]
    fn a_read_only_session_is_told_it_needs_credentials() {
        let (q, hub) = (Q::new(FullPolicy::RejectNew), WsHub::new());
        let c = ctx(&q, &hub);
        let mut req =
            b"GET /ws HTTP/1.1\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".to_vec();
        req.extend(masked_text(br#"{"cmd":"stop"}"#));
        req.extend([0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]);
        let (out, closed) = serve(&c, &req, false);
        let body = &out[out.find("\r\n\r\n").unwrap() + 4..];
        assert!(
            body.contains(r#"{"error":"credentials required"}"#),
            "{body}"
        );
        // The close (1000 = 0x03e8) is echoed; 0xe8 alone is not UTF-8.
        assert!(
            out.ends_with("\u{fffd}\u{2}\u{3}\u{fffd}"),
            "the close is echoed"
        );
        assert!(closed);
        assert_eq!(c.stats().open_sessions, 0);
        assert!(q.is_empty());
    }
}
