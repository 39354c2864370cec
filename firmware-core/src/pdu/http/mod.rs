//! The PDU's HTTP/1.1 server core, sans-IO: request bytes in, response bytes and
//! [`Intent`]s out. Interface-compatible with the real ENERGIS web API (docs/interfaces.md §5.3).
//!
//! # What it serves
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /api/status` | ENERGIS status JSON (channels, temperature, over-current) |
//! | `POST /api/control` | form `channel1=on&label1=NAS…`: a channel absent or not `on` is switched **off** (as the real device); labels are saved; 400 without a body; 503 `{"error":"Overcurrent lockout active - reduce load first"}` if it would switch an outlet on during a lockout, or SwitchTask refused with `OverCurrentLockout`; 409 if SwitchTask refused for another reason; else 200 `OK` |
//! | `GET /api/settings` | settings JSON (network, identity, versions, limits) |
//! | `POST /api/settings` | form `ip, gateway, subnet, dns, device_name, location, temp_unit` → `SaveConfig`; absent fields keep their value; network changes take effect after a reboot |
//! | `GET /metrics` | Prometheus text, ENERGIS metric names ([`metrics`]) |
//! | `GET /`, `/index.html` | a small HTML status page with an outlet form ([`page`]) |
//! | `OPTIONS` any known path | 204 with CORS allow headers (browser preflight) |
//!
//! `HEAD` is answered like `GET` without the body. Every reply carries `Connection: close`,
//! `Access-Control-Allow-Origin: *` and `Cache-Control: no-cache`; error bodies are
//! `{"error":"…"}`. Malformed requests are 400, unknown paths 404, a wrong method 405 (with
//! `Allow`), a body over [`Limits::max_body`] 413, a head over [`Limits::max_head`] or with more
//! than [`request::MAX_HEADERS`] lines 431, chunked bodies 400. Nothing panics on any input
//! (property-tested with arbitrary bytes).
//!
//! # Access
//!
//! GETs are open. POSTs need HTTP Basic credentials equal to `config.http.user`/`password`
//! (factory default `admin`/`energis`) when `config.http.auth_enabled`; missing or wrong
//! credentials are 401 with `WWW-Authenticate: Basic realm="ENERGIS"`, checked as soon as the
//! head is in (before the body). `auth_enabled = false` reproduces the real ENERGIS, which has
//! no authentication. The base64 of the `Authorization` header is decoded by a small hand-written
//! routine in [`request`].
//!
//! # Call order (the platform's runner)
//!
//! 1. Append received bytes to a request buffer of at least [`Limits::request_buffer_len`]
//!    bytes and call [`HttpServer::handle`] with everything received so far, a fresh
//!    [`Snapshot`] and a response buffer ([`RECOMMENDED_RESPONSE_LEN`] bytes fit every reply).
//! 2. [`Outcome::NeedMore`]: read more bytes and call again with the longer input (the head
//!    is simply parsed again; requests are small).
//! 3. [`Outcome::Reply`]`(n)`: send `out[..n]` and close the connection.
//! 4. [`Outcome::Apply`]`(pending)`: the real device answers control requests *after*
//!    switching, so do the same: forward every `pending.intents` entry to its owner task in
//!    order, collect the [`SwitchReply`] of each `Intent::Switch` (in order; synthesise
//!    `SwitchStatus::Busy` if a queue was full), take a fresh snapshot, then call
//!    `pending.followup.finish(&replies, &snapshot, out)` and send what it wrote.
//!
//! # Buffers
//!
//! Replies are rendered into the caller's `&mut [u8]`; nothing is allocated. The body is
//! written first behind a reserved head area, then the head (with the exact `Content-Length`)
//! is written in front of it. If a reply does not fit, the server answers a short 500 instead;
//! only if even that does not fit does it return [`HttpError::OutputTooSmall`].
use core::fmt::{self, Write};

pub mod json;
pub mod metrics;
pub mod page;
pub mod request;
pub mod writer;

pub use writer::SliceWriter;

use super::config::{HttpConfig, PduConfig};
use super::frontend::{Intent, OcpState, Snapshot};
use super::{Outlet, OutletMask, Source, SwitchOp, SwitchReply, SwitchRequest, SwitchStatus};
use request::{FormError, Method, RequestError};

/// A response buffer of this size fits every reply the server makes (the metrics page is the
/// largest, about 6 KiB).
pub const RECOMMENDED_RESPONSE_LEN: usize = 8 * 1024;

/// Bytes reserved in front of the body for the status line and headers.
const HEAD_RESERVE: usize = 384;

/// Most intents one request produces (offs, ons, saved configuration).
pub const MAX_INTENTS: usize = 3;

/// The body of the lockout refusal, exactly as the real device sends it.
pub const LOCKOUT_BODY: &str = "{\"error\":\"Overcurrent lockout active - reduce load first\"}";

/// Request size limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest request head (request line + headers); longer is 431.
    pub max_head: usize,
    /// Longest body; a larger `Content-Length` is 413.
    pub max_body: usize,
}

impl Default for Limits {
    /// 1 KiB of head and 1 KiB of body: the real device's forms are well under that.
    fn default() -> Self {
        Limits {
            max_head: 1024,
            max_body: 1024,
        }
    }
}

impl Limits {
    /// The request buffer a runner needs so that every request is either answered or refused
    /// before the buffer is full.
    pub const fn request_buffer_len(&self) -> usize {
        self.max_head.saturating_add(self.max_body)
    }
}

/// The status codes the server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// 200.
    Ok,
    /// 204 (preflight).
    NoContent,
    /// 400.
    BadRequest,
    /// 401.
    Unauthorized,
    /// 404.
    NotFound,
    /// 405.
    MethodNotAllowed,
    /// 409 (SwitchTask refused for a reason other than lockout).
    Conflict,
    /// 413.
    PayloadTooLarge,
    /// 431.
    HeaderFieldsTooLarge,
    /// 500 (the reply did not fit the response buffer).
    InternalServerError,
    /// 503 (over-current lockout, SwitchTask did not answer).
    ServiceUnavailable,
}

impl Status {
    /// The numeric code.
    pub const fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::NoContent => 204,
            Status::BadRequest => 400,
            Status::Unauthorized => 401,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::Conflict => 409,
            Status::PayloadTooLarge => 413,
            Status::HeaderFieldsTooLarge => 431,
            Status::InternalServerError => 500,
            Status::ServiceUnavailable => 503,
        }
    }
    /// The reason phrase.
    pub const fn reason(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::NoContent => "No Content",
            Status::BadRequest => "Bad Request",
            Status::Unauthorized => "Unauthorized",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::Conflict => "Conflict",
            Status::PayloadTooLarge => "Payload Too Large",
            Status::HeaderFieldsTooLarge => "Request Header Fields Too Large",
            Status::InternalServerError => "Internal Server Error",
            Status::ServiceUnavailable => "Service Unavailable",
        }
    }
}

/// The one failure [`HttpServer::handle`] cannot turn into an HTTP reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HttpError {
    /// The response buffer cannot hold even a short error reply (it needs a few hundred bytes;
    /// see [`RECOMMENDED_RESPONSE_LEN`]).
    OutputTooSmall,
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::OutputTooSmall => f.write_str("response buffer too small for any reply"),
        }
    }
}

impl core::error::Error for HttpError {}

/// What to do after [`HttpServer::handle`].
// `Apply` carries a configuration by value (no allocator to box it into); an outcome is
// moved once per request, so its size costs nothing that matters.
#[allow(clippy::large_enum_variant)]
#[must_use]
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The request is incomplete: read more bytes and call again with the whole input.
    NeedMore,
    /// A complete reply of this many bytes is at the start of the response buffer.
    Reply(usize),
    /// Run the intents, then render the reply with the follow-up (see the module docs).
    Apply(Pending),
}

/// Intents to forward before the reply can be written.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    /// Forward these, in order, to their owner tasks.
    pub intents: heapless::Vec<Intent, MAX_INTENTS>,
    /// Renders the reply once the intents ran.
    pub followup: Followup,
}

/// Renders the reply of a request whose intents ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Followup(Then);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// `/api/control`: `switches` switch intents were sent.
    Control { switches: usize },
    /// `/api/settings` POST.
    Settings { reboot_required: bool },
}

impl Followup {
    /// Writes the reply into `out`. `replies` are SwitchTask's answers to the `Intent::Switch`
    /// entries, in order; fewer replies than switch intents is answered 503. `snap` is the
    /// snapshot taken after the intents ran (today's replies do not show it; it keeps "apply,
    /// then render from the new state" the one call order for every endpoint).
    pub fn finish(
        &self,
        replies: &[SwitchReply],
        snap: &Snapshot,
        out: &mut [u8],
    ) -> Result<usize, HttpError> {
        let _ = snap;
        let result = match self.0 {
            Then::Control { switches } => {
                let mut refused = None;
                if replies.len() < switches {
                    refused = Some(SwitchStatus::Busy);
                }
                for r in replies.iter().take(switches) {
                    if r.status == SwitchStatus::OverCurrentLockout {
                        refused = Some(r.status);
                        break;
                    }
                    if r.status != SwitchStatus::Ok && refused.is_none() {
                        refused = Some(r.status);
                    }
                }
                match refused {
                    None => respond(out, Status::Ok, TEXT, &[], |w| w.write_str("OK\n")),
                    Some(SwitchStatus::OverCurrentLockout) => {
                        respond(out, Status::ServiceUnavailable, JSON, &[], |w| {
                            w.write_str(LOCKOUT_BODY)
                        })
                    }
                    Some(SwitchStatus::Busy) if replies.len() < switches => error_reply(
                        out,
                        Status::ServiceUnavailable,
                        "switch task did not answer",
                        &[],
                    ),
                    Some(status) => respond(out, Status::Conflict, JSON, &[], |w| {
                        write!(w, "{{\"error\":\"switch refused: {status:?}\"}}")
                    }),
                }
            }
            Then::Settings { reboot_required } => respond(out, Status::Ok, JSON, &[], |w| {
                write!(
                    w,
                    "{{\"status\":\"ok\",\"reboot_required\":{reboot_required}}}"
                )
            }),
        };
        or_fallback(result, out)
    }
}

const JSON: &str = "application/json; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";
const ALLOW_CORS: [(&str, &str); 2] = [
    ("Access-Control-Allow-Methods", "GET, HEAD, POST, OPTIONS"),
    (
        "Access-Control-Allow-Headers",
        "Authorization, Content-Type",
    ),
];

/// The endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Page,
    Status,
    Control,
    Settings,
    Metrics,
}

impl Route {
    fn from_path(path: &str) -> Option<Route> {
        Some(match path {
            "/" | "/index.html" => Route::Page,
            "/api/status" => Route::Status,
            "/api/control" => Route::Control,
            "/api/settings" => Route::Settings,
            "/metrics" => Route::Metrics,
            _ => return None,
        })
    }
    fn allow(self) -> &'static str {
        match self {
            Route::Control => "POST, OPTIONS",
            Route::Settings => "GET, HEAD, POST, OPTIONS",
            Route::Page | Route::Status | Route::Metrics => "GET, HEAD, OPTIONS",
        }
    }
    fn allows(self, m: Method) -> bool {
        match m {
            Method::Get | Method::Head => self != Route::Control,
            Method::Post => matches!(self, Route::Control | Route::Settings),
            Method::Options => true,
            Method::Other => false,
        }
    }
}

/// A request refused before it reached its endpoint.
#[derive(Debug, Clone, Copy)]
struct Refusal {
    status: Status,
    message: &'static str,
    allow: Option<&'static str>,
}

impl Refusal {
    const fn new(status: Status, message: &'static str) -> Self {
        Refusal {
            status,
            message,
            allow: None,
        }
    }
}

/// A complete, admitted request.
struct Admitted<'b> {
    method: Method,
    route: Route,
    body: &'b [u8],
}

enum Framed<'b> {
    NeedMore,
    Refused(Refusal),
    Ready(Admitted<'b>),
}

/// The HTTP server core: stateless per request except for a request counter.
#[derive(Debug, Clone, Default)]
pub struct HttpServer {
    limits: Limits,
    requests_total: u32,
}

impl HttpServer {
    /// A server with the given limits.
    pub fn new(limits: Limits) -> Self {
        HttpServer {
            limits,
            requests_total: 0,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Requests answered so far (`energis_http_requests_total`), wrapping.
    pub fn requests_total(&self) -> u32 {
        self.requests_total
    }

    /// Handles the bytes of one request received so far. See the module docs for the call order.
    pub fn handle(
        &mut self,
        input: &[u8],
        snap: &Snapshot,
        out: &mut [u8],
    ) -> Result<Outcome, HttpError> {
        let req = match self.frame(input, &snap.config.http) {
            Framed::NeedMore => return Ok(Outcome::NeedMore),
            Framed::Refused(r) => {
                self.requests_total = self.requests_total.wrapping_add(1);
                debug!("http: refused {}: {}", r.status.code(), r.message);
                return refuse(out, r).map(Outcome::Reply);
            }
            Framed::Ready(req) => req,
        };
        self.requests_total = self.requests_total.wrapping_add(1);
        let head_only = req.method == Method::Head;
        let rendered = match (req.method, req.route) {
            (Method::Options, _) => respond(out, Status::NoContent, TEXT, &ALLOW_CORS, |_| Ok(())),
            (Method::Post, Route::Control) => {
                return self.apply(control(req.body, snap), snap, out);
            }
            (Method::Post, Route::Settings) => {
                return self.apply(settings_post(req.body, snap), snap, out);
            }
            (_, Route::Status) => {
                respond(out, Status::Ok, JSON, &[], |w| json::write_status(w, snap))
            }
            (_, Route::Settings) => respond(out, Status::Ok, JSON, &[], |w| {
                json::write_settings(w, snap)
            }),
            (_, Route::Metrics) => respond(out, Status::Ok, metrics::CONTENT_TYPE, &[], |w| {
                metrics::write_metrics(w, snap, self.requests_total)
            }),
            (_, Route::Page) => respond(out, Status::Ok, HTML, &[], |w| page::write_page(w, snap)),
            (_, Route::Control) => refuse(
                out,
                Refusal::new(Status::MethodNotAllowed, "method not allowed"),
            ),
        };
        let rendered = rendered.map(|n| cut_head(out, n, head_only));
        or_fallback(rendered, out).map(Outcome::Reply)
    }

    fn apply(
        &self,
        pending: Result<Pending, Refusal>,
        snap: &Snapshot,
        out: &mut [u8],
    ) -> Result<Outcome, HttpError> {
        match pending {
            Err(r) => refuse(out, r).map(Outcome::Reply),
            Ok(p) if p.intents.is_empty() => p.followup.finish(&[], snap, out).map(Outcome::Reply),
            Ok(p) => Ok(Outcome::Apply(p)),
        }
    }

    /// Head parsing, routing, method, authentication and body framing.
    fn frame<'b>(&self, input: &'b [u8], http: &HttpConfig) -> Framed<'b> {
        let head = match request::parse_head(input, self.limits.max_head) {
            Ok(Some(h)) => h,
            Ok(None) => return Framed::NeedMore,
            Err(RequestError::HeadTooLarge) => {
                return Framed::Refused(Refusal::new(
                    Status::HeaderFieldsTooLarge,
                    "request head too large",
                ));
            }
            Err(RequestError::BadContentLength) => {
                return Framed::Refused(Refusal::new(Status::BadRequest, "invalid Content-Length"));
            }
            Err(RequestError::Malformed(why)) => {
                return Framed::Refused(Refusal::new(Status::BadRequest, why));
            }
        };
        let Some(route) = Route::from_path(head.path) else {
            return Framed::Refused(Refusal::new(Status::NotFound, "not found"));
        };
        if !route.allows(head.method) {
            return Framed::Refused(Refusal {
                status: Status::MethodNotAllowed,
                message: "method not allowed",
                allow: Some(route.allow()),
            });
        }
        if head.method == Method::Post
            && http.auth_enabled
            && !crate::basic_auth::matches(head.authorization, &http.user, &http.password)
        {
            return Framed::Refused(Refusal::new(
                Status::Unauthorized,
                "authentication required",
            ));
        }
        if head.transfer_encoding {
            return Framed::Refused(Refusal::new(
                Status::BadRequest,
                "chunked bodies are not supported",
            ));
        }
        let len = head.content_length.unwrap_or(0);
        if len > self.limits.max_body {
            return Framed::Refused(Refusal::new(Status::PayloadTooLarge, "body too large"));
        }
        let Some(end) = head.body_offset.checked_add(len) else {
            return Framed::Refused(Refusal::new(Status::PayloadTooLarge, "body too large"));
        };
        match input.get(head.body_offset..end) {
            Some(body) => Framed::Ready(Admitted {
                method: head.method,
                route,
                body,
            }),
            None => Framed::NeedMore,
        }
    }
}

/// `POST /api/control`.
fn control(body: &[u8], snap: &Snapshot) -> Result<Pending, Refusal> {
    if body.is_empty() {
        return Err(Refusal::new(Status::BadRequest, "Missing body"));
    }
    let mut want = OutletMask::NONE;
    let mut labels = snap.config.labels.clone();
    let mut labels_changed = false;
    for (raw_key, raw_value) in request::form_pairs(body) {
        let key: heapless::String<16> = match request::form_decode(raw_key) {
            Ok(k) => k,
            Err(FormError::TooLong) => continue,
            Err(_) => return Err(Refusal::new(Status::BadRequest, "malformed form body")),
        };
        if let Some(outlet) = numbered(&key, "channel") {
            let value: heapless::String<8> = match request::form_decode(raw_value) {
                Ok(v) => v,
                Err(FormError::TooLong) => heapless::String::new(),
                Err(_) => return Err(Refusal::new(Status::BadRequest, "malformed form body")),
            };
            if value.eq_ignore_ascii_case("on") {
                want = want.with(outlet, true);
            }
        } else if let Some(outlet) = numbered(&key, "label") {
            let value = match request::form_decode(raw_value) {
                Ok(v) => v,
                Err(FormError::TooLong) => {
                    return Err(Refusal::new(Status::BadRequest, "label too long"));
                }
                Err(_) => return Err(Refusal::new(Status::BadRequest, "malformed form body")),
            };
            if let Some(slot) = labels.get_mut(outlet.index())
                && *slot != value
            {
                *slot = value;
                labels_changed = true;
            }
        }
    }
    let current = snap.outlets;
    let to_on = OutletMask(want.0 & !current.0);
    let to_off = OutletMask(current.0 & !want.0);
    if to_on != OutletMask::NONE && snap.ocp.state == OcpState::Lockout {
        return Err(Refusal::new(Status::ServiceUnavailable, LOCKOUT_MESSAGE));
    }
    let mut intents = heapless::Vec::new();
    let mut switches = 0;
    // Offs first: a request that moves load between outlets never peaks above either state.
    for (mask, value) in [(to_off, false), (to_on, true)] {
        if mask != OutletMask::NONE {
            let mut req = SwitchRequest::new(Source::Net, SwitchOp::SetMask);
            req.mask = mask;
            req.value = value;
            let _ = intents.push(Intent::Switch(req));
            switches += 1;
        }
    }
    if labels_changed {
        let mut cfg: PduConfig = snap.config.clone();
        cfg.labels = labels;
        let _ = intents.push(Intent::SaveConfig(cfg));
    }
    Ok(Pending {
        intents,
        followup: Followup(Then::Control { switches }),
    })
}

const LOCKOUT_MESSAGE: &str = "Overcurrent lockout active - reduce load first";

/// `channel3` → outlet 3 (for `prefix` = `channel`).
fn numbered(key: &str, prefix: &str) -> Option<Outlet> {
    let n = key.strip_prefix(prefix)?;
    if n.len() != 1 {
        return None;
    }
    Outlet::new(n.parse().ok()?)
}

/// `POST /api/settings`.
fn settings_post(body: &[u8], snap: &Snapshot) -> Result<Pending, Refusal> {
    if body.is_empty() {
        return Err(Refusal::new(Status::BadRequest, "Missing body"));
    }
    fn bad<T>(m: &'static str) -> Result<T, Refusal> {
        Err(Refusal::new(Status::BadRequest, m))
    }
    let invalid = |m| Refusal::new(Status::BadRequest, m);
    let mut cfg = snap.config.clone();
    for (raw_key, raw_value) in request::form_pairs(body) {
        let key: heapless::String<16> = match request::form_decode(raw_key) {
            Ok(k) => k,
            Err(FormError::TooLong) => continue,
            Err(_) => return bad("malformed form body"),
        };
        let value: heapless::String<32> = match request::form_decode(raw_value) {
            Ok(v) => v,
            Err(FormError::TooLong) => return bad("field too long"),
            Err(_) => return bad("malformed form body"),
        };
        let ip = || writer::parse_ipv4(value.trim());
        match key.as_str() {
            "ip" => cfg.network.ip = ip().ok_or(invalid("invalid ip"))?,
            "gateway" => cfg.network.gateway = ip().ok_or(invalid("invalid gateway"))?,
            "subnet" => cfg.network.subnet = ip().ok_or(invalid("invalid subnet"))?,
            "dns" => cfg.network.dns = ip().ok_or(invalid("invalid dns"))?,
            "device_name" => cfg.identity.device_name = value,
            "location" => cfg.identity.location = value,
            "temp_unit" => {
                cfg.identity.temp_unit =
                    parse_temp_unit(&value).ok_or(invalid("invalid temp_unit"))?
            }
            _ => {}
        }
    }
    let reboot_required = cfg.network != snap.config.network;
    let mut intents = heapless::Vec::new();
    if cfg != snap.config {
        let _ = intents.push(Intent::SaveConfig(cfg));
    }
    Ok(Pending {
        intents,
        followup: Followup(Then::Settings { reboot_required }),
    })
}

/// `C`/`F`/`K` or `celsius`/`fahrenheit`/`kelvin`, any case.
pub fn parse_temp_unit(text: &str) -> Option<char> {
    let t = text.trim();
    for (unit, word) in [('C', "celsius"), ('F', "fahrenheit"), ('K', "kelvin")] {
        let mut single = [0u8; 4];
        if t.eq_ignore_ascii_case(unit.encode_utf8(&mut single)) || t.eq_ignore_ascii_case(word) {
            return Some(unit);
        }
    }
    None
}

/// Writes a complete response: status line, common headers, `extra`, then the body that
/// `body` writes. Fails only when the reply does not fit `out`.
fn respond(
    out: &mut [u8],
    status: Status,
    content_type: &str,
    extra: &[(&str, &str)],
    body: impl FnOnce(&mut SliceWriter<'_>) -> fmt::Result,
) -> Result<usize, HttpError> {
    let body_len = {
        let area = out
            .get_mut(HEAD_RESERVE..)
            .ok_or(HttpError::OutputTooSmall)?;
        let mut w = SliceWriter::new(area);
        body(&mut w).map_err(|_| HttpError::OutputTooSmall)?;
        w.len()
    };
    let mut head = [0u8; HEAD_RESERVE];
    let head_len = {
        let mut w = SliceWriter::new(&mut head);
        write!(
            w,
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\
             Access-Control-Allow-Origin: *\r\nCache-Control: no-cache\r\n",
            status.code(),
            status.reason(),
            content_type,
            body_len
        )
        .map_err(|_| HttpError::OutputTooSmall)?;
        for (name, value) in extra {
            write!(w, "{name}: {value}\r\n").map_err(|_| HttpError::OutputTooSmall)?;
        }
        w.write_str("\r\n").map_err(|_| HttpError::OutputTooSmall)?;
        w.len()
    };
    let body_end = HEAD_RESERVE
        .checked_add(body_len)
        .ok_or(HttpError::OutputTooSmall)?;
    out.copy_within(HEAD_RESERVE..body_end, head_len);
    out.get_mut(..head_len)
        .ok_or(HttpError::OutputTooSmall)?
        .copy_from_slice(head.get(..head_len).ok_or(HttpError::OutputTooSmall)?);
    Ok(head_len + body_len)
}

/// `{"error":"…"}` with the given status.
fn error_reply(
    out: &mut [u8],
    status: Status,
    message: &str,
    extra: &[(&str, &str)],
) -> Result<usize, HttpError> {
    respond(out, status, JSON, extra, |w| {
        write!(w, "{{\"error\":{}}}", json::JsonStr(message))
    })
}

fn refuse(out: &mut [u8], r: Refusal) -> Result<usize, HttpError> {
    if r.status == Status::ServiceUnavailable && r.message == LOCKOUT_MESSAGE {
        return respond(out, r.status, JSON, &[], |w| w.write_str(LOCKOUT_BODY));
    }
    let auth = [("WWW-Authenticate", "Basic realm=\"ENERGIS\"")];
    let allow;
    let extra: &[(&str, &str)] = match (r.status, r.allow) {
        (Status::Unauthorized, _) => &auth,
        (_, Some(methods)) => {
            allow = [("Allow", methods)];
            &allow
        }
        _ => &[],
    };
    error_reply(out, r.status, r.message, extra)
}

/// For `HEAD`: keep only the head of a rendered reply (its `Content-Length` stays the body's).
fn cut_head(out: &[u8], n: usize, head_only: bool) -> usize {
    if !head_only {
        return n;
    }
    out.get(..n)
        .and_then(|r| r.windows(4).position(|w| w == b"\r\n\r\n"))
        .map_or(n, |i| i + 4)
}

/// A reply that did not fit becomes a short 500.
fn or_fallback(result: Result<usize, HttpError>, out: &mut [u8]) -> Result<usize, HttpError> {
    match result {
        Ok(n) => Ok(n),
        Err(HttpError::OutputTooSmall) => {
            warn!(
                "http: reply does not fit the response buffer ({} bytes)",
                out.len()
            );
            error_reply(out, Status::InternalServerError, "response too large", &[])
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
