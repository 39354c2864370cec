//! Commands in: MQTT `pump/controller/command` JSON, WebSocket UI text, and the REST API.
//!
//! Every way in ends as a [`Command`] that pump control (`pump::dispense`, `pump::estop`)
//! consumes; this module only parses, validates and authorizes. Everything here takes untrusted
//! bytes and returns an error value, never a panic:
//!
//! * [`parse_command`] takes `{"cmd":"start","pump":"X","volume_ml":5,"flow_ml_min":60}`,
//!   `{"cmd":"stop"}`, `{"cmd":"estop"}`, `{"cmd":"resume"}`, `{"cmd":"recipe","name":"..."}`.
//! * [`handle_http`] turns one HTTP/1.1 request (parsed with `httparse`) to an [`HttpOutcome`]:
//!
//! | request | auth | outcome |
//! |---|---|---|
//! | `GET /`, `GET /index.html` | open | [`HttpOutcome::Page`]: the caller answers with the UI page |
//! | `GET /api/status` | open | [`HttpOutcome::Status`]: the caller answers with the status JSON |
//! | `GET /api/recipes` | open | `{"recipes":["a","b"]}` |
//! | `POST /api/pump/start` `{"pump","volume_ml","flow_ml_min"}` | Basic | [`Command::StartDispense`] |
//! | `POST /api/stop` | Basic | [`Command::Stop`] |
//! | `POST /api/estop` | Basic | [`Command::EmergencyStop`] |
//! | `POST /api/resume` | Basic | [`Command::Resume`] |
//! | `POST /api/recipe/start/<name>` | Basic | [`Command::StartRecipe`] (404 for an unknown name) |
//! | `GET /ws` | open, control needs Basic | [`HttpOutcome::WebSocket`]: the platform upgrades |
//!
//! Errors are JSON `{"error":"..."}` with 400 (bad JSON or values), 401 (control without valid
//! credentials), 404 (unknown path or recipe), 405 (wrong method), 413 (body above
//! [`BODY_MAX`]) and 431 (more than [`HEADERS_MAX`] header lines). The seed's `{"pump","flowRate"}` is accepted with `flowRate` as an alias of
//! `flow_ml_min`; `volume_ml` is still required, since the controller doses volumes and has no
//! unbounded "run until stopped" mode.
//!
//! JSON goes through `serde-json-core`, after a nesting-depth check: the parser recurses into
//! nested arrays and objects it skips, and a payload of a few thousand `[` must not overflow an
//! MCU stack. Basic credentials are checked by [`crate::basic_auth`].
use core::fmt::{self, Write};

use embassy_sync::blocking_mutex::raw::RawMutex;

use super::dispense::MotionCommand;
use super::estop::EstopTrigger;
use super::{DispenseRequest, Pump};
use crate::queue::Queue;

/// Longest recipe name.
pub const RECIPE_NAME_MAX: usize = 32;
/// Largest request body accepted (413 above).
pub const BODY_MAX: usize = 512;
/// Largest reply body.
pub const REPLY_MAX: usize = 1024;
/// Deepest JSON nesting accepted.
pub const JSON_DEPTH_MAX: usize = 4;
/// Headers parsed per request; more is a 400. A browser's `fetch` sends about twenty (the
/// `sec-ch-ua*` and `sec-fetch-*` families alone are seven), so 16 was too few.
pub const HEADERS_MAX: usize = 32;

/// A recipe name.
pub type RecipeName = heapless::String<RECIPE_NAME_MAX>;

/// What a user asked the pump controller to do.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Command {
    /// Dose one volume through one pump.
    StartDispense(DispenseRequest),
    /// Run a stored recipe by name (checked against the caller's recipe list).
    StartRecipe(RecipeName),
    /// Stop dispensing (orderly: feed hold and clear).
    Stop,
    /// Emergency stop: same path as the button.
    EmergencyStop,
    /// Leave EMERGENCY.
    Resume,
}

impl Command {
    /// Short name, as echoed in replies (`"start"`, `"recipe"`, `"stop"`, `"estop"`, `"resume"`).
    pub fn name(&self) -> &'static str {
        match self {
            Command::StartDispense(_) => "start",
            Command::StartRecipe(_) => "recipe",
            Command::Stop => "stop",
            Command::EmergencyStop => "estop",
            Command::Resume => "resume",
        }
    }
}

/// Bounds on what a command may ask.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Limits {
    /// Largest volume of one dispense, ml.
    pub max_volume_ml: f32,
    /// Largest flow, ml/min.
    pub max_flow_ml_min: f32,
}

impl Limits {
    /// 500 ml, 300 ml/min.
    pub const DEFAULT: Limits = Limits {
        max_volume_ml: 500.0,
        max_flow_ml_min: 300.0,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What this module needs to know about a recipe: its name. Pump control owns the recipes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecipeInfo<'a> {
    /// The name, as used in commands and URLs.
    pub name: &'a str,
}

/// Why a command was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum CommandError {
    /// Not JSON, not an object, too deeply nested, or a field of the wrong type.
    BadJson,
    /// `cmd` is not one we know.
    UnknownCommand,
    /// A required field is missing.
    MissingField(&'static str),
    /// `pump` is not X, Y, Z or A.
    UnknownPump,
    /// `volume_ml` is not in (0, max].
    VolumeOutOfRange,
    /// `flow_ml_min` is not in (0, max].
    FlowOutOfRange,
    /// No recipe by that name.
    UnknownRecipe,
    /// The recipe name is longer than [`RECIPE_NAME_MAX`] or badly escaped.
    BadRecipeName,
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::BadJson => f.write_str("malformed JSON"),
            CommandError::UnknownCommand => {
                f.write_str("unknown cmd (expected start, stop, estop, resume or recipe)")
            }
            CommandError::MissingField(name) => write!(f, "missing field: {name}"),
            CommandError::UnknownPump => f.write_str("unknown pump (expected X, Y, Z or A)"),
            CommandError::VolumeOutOfRange => f.write_str("volume_ml out of range"),
            CommandError::FlowOutOfRange => f.write_str("flow_ml_min out of range"),
            CommandError::UnknownRecipe => f.write_str("unknown recipe"),
            CommandError::BadRecipeName => f.write_str("bad recipe name"),
        }
    }
}

impl core::error::Error for CommandError {}

#[derive(serde::Deserialize)]
struct RawCommand<'a> {
    #[serde(borrow, default)]
    cmd: Option<&'a str>,
    #[serde(borrow, default)]
    pump: Option<&'a str>,
    #[serde(default)]
    volume_ml: Option<f32>,
    #[serde(default)]
    flow_ml_min: Option<f32>,
    #[serde(default, rename = "flowRate")]
    flow_rate: Option<f32>,
    #[serde(borrow, default)]
    name: Option<&'a str>,
}

/// Deserialize after checking the nesting depth (see the module docs).
fn from_json<'a, T: serde::Deserialize<'a>>(json: &'a [u8]) -> Result<T, CommandError> {
    check_depth(json)?;
    match serde_json_core::from_slice::<T>(json) {
        Ok((v, used))
            if json
                .get(used..)
                .is_some_and(|rest| rest.iter().all(u8::is_ascii_whitespace)) =>
        {
            Ok(v)
        }
        _ => Err(CommandError::BadJson),
    }
}

fn check_depth(json: &[u8]) -> Result<(), CommandError> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in json {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > JSON_DEPTH_MAX {
                    return Err(CommandError::BadJson);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

fn dispense(
    pump: Option<&str>,
    volume_ml: Option<f32>,
    flow_ml_min: Option<f32>,
    limits: &Limits,
) -> Result<DispenseRequest, CommandError> {
    let pump = pump.ok_or(CommandError::MissingField("pump"))?;
    let mut chars = pump.chars();
    let pump = match (chars.next(), chars.next()) {
        (Some(c), None) => Pump::from_axis(c).ok_or(CommandError::UnknownPump)?,
        _ => return Err(CommandError::UnknownPump),
    };
    let volume_ml = volume_ml.ok_or(CommandError::MissingField("volume_ml"))?;
    let flow_ml_min = flow_ml_min.ok_or(CommandError::MissingField("flow_ml_min"))?;
    // `!(x > 0)` also refuses NaN.
    if !(volume_ml > 0.0 && volume_ml <= limits.max_volume_ml) {
        return Err(CommandError::VolumeOutOfRange);
    }
    if !(flow_ml_min > 0.0 && flow_ml_min <= limits.max_flow_ml_min) {
        return Err(CommandError::FlowOutOfRange);
    }
    Ok(DispenseRequest {
        pump,
        volume_ml,
        flow_ml_min,
    })
}

fn recipe(name: &str, recipes: &[RecipeInfo<'_>]) -> Result<RecipeName, CommandError> {
    let mut n = RecipeName::new();
    n.push_str(name).map_err(|_| CommandError::BadRecipeName)?;
    if recipes.iter().any(|r| r.name == name) {
        Ok(n)
    } else {
        Err(CommandError::UnknownRecipe)
    }
}

/// Parse a JSON command (MQTT `pump/controller/command`, WebSocket UI text).
pub fn parse_command(
    json: &[u8],
    limits: &Limits,
    recipes: &[RecipeInfo<'_>],
) -> Result<Command, CommandError> {
    let raw: RawCommand<'_> = from_json(json)?;
    match raw.cmd.ok_or(CommandError::MissingField("cmd"))? {
        "start" | "dispense" => dispense(
            raw.pump,
            raw.volume_ml,
            raw.flow_ml_min.or(raw.flow_rate),
            limits,
        )
        .map(Command::StartDispense),
        "stop" => Ok(Command::Stop),
        "estop" => Ok(Command::EmergencyStop),
        "resume" => Ok(Command::Resume),
        "recipe" => {
            let name = raw.name.ok_or(CommandError::MissingField("name"))?;
            recipe(name, recipes).map(Command::StartRecipe)
        }
        _ => Err(CommandError::UnknownCommand),
    }
}

impl Command {
    /// The request for pump control (`pump::dispense`); `None` for a command it does not take.
    pub fn to_motion(&self) -> Option<MotionCommand> {
        Some(match self {
            Command::StartDispense(d) => {
                let mut doses = heapless::Vec::new();
                // One dose always fits the PUMPS-long list.
                let _ = doses.push(*d);
                MotionCommand::Dispense(doses)
            }
            Command::StartRecipe(name) => {
                MotionCommand::StartRecipe(heapless::String::try_from(name.as_str()).ok()?)
            }
            Command::Stop => MotionCommand::Stop,
            Command::EmergencyStop => MotionCommand::EmergencyStop(EstopTrigger::Remote),
            Command::Resume => MotionCommand::Resume,
        })
    }
}

/// Where parsed commands go: pump control's command queue (options 1 and 2), or the queue the
/// serial link sends from (option 3).
pub trait CommandSink {
    /// Hand `cmd` over; `false` when it was refused (the queue is full).
    fn submit(&self, cmd: MotionCommand) -> bool;
}

impl<M: RawMutex, const N: usize> CommandSink for Queue<M, MotionCommand, N> {
    fn submit(&self, cmd: MotionCommand) -> bool {
        self.offer(cmd).is_queued()
    }
}

impl<K: CommandSink + ?Sized> CommandSink for &K {
    fn submit(&self, cmd: MotionCommand) -> bool {
        (**self).submit(cmd)
    }
}

/// Largest command payload the command task takes; longer ones are refused as bad JSON.
pub const PAYLOAD_MAX: usize = BODY_MAX;

/// The platform's MQTT client, receive side: the payloads published on the command topic
/// ([`Identity::command_topic`](super::identity::Identity::command_topic)), which it subscribes
/// to itself.
///
/// # Contract
/// * `receive` waits for the next payload and copies it into `buf`, returning its length; a
///   payload longer than `buf` MUST be reported as `buf.len() + 1` or more (it is refused), never
///   cut silently into something that might parse.
/// * Payloads come in the order the broker delivered them.
pub trait CommandPort {
    /// Wait for the next command payload.
    fn receive(&mut self, buf: &mut [u8]) -> impl core::future::Future<Output = usize>;
}

/// What the command task did with one payload.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandOutcome {
    /// Parsed and handed to pump control.
    Submitted(Command),
    /// Parsed, but pump control's queue was full.
    Refused(Command),
    /// Did not parse (or longer than [`PAYLOAD_MAX`]).
    Bad(CommandError),
}

/// Counters of the command task (read by telemetry and the twin).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct CommandStats {
    /// Commands handed to pump control.
    pub submitted: u32,
    /// Commands refused because the queue was full.
    pub refused: u32,
    /// Payloads that did not parse.
    pub bad: u32,
}

/// The command task: MQTT command payloads through [`parse_command`] into pump control.
pub struct CommandTask<'a, P, K> {
    port: P,
    sink: K,
    limits: Limits,
    recipes: &'a [RecipeInfo<'a>],
    stats: CommandStats,
    buf: [u8; PAYLOAD_MAX],
}

impl<'a, P: CommandPort, K: CommandSink> CommandTask<'a, P, K> {
    /// A task reading `port`, knowing `recipes` by name, submitting to `sink`.
    pub fn new(port: P, sink: K, limits: Limits, recipes: &'a [RecipeInfo<'a>]) -> Self {
        CommandTask {
            port,
            sink,
            limits,
            recipes,
            stats: CommandStats::default(),
            buf: [0; PAYLOAD_MAX],
        }
    }

    /// The counters.
    pub fn stats(&self) -> CommandStats {
        self.stats
    }

    /// Run forever.
    pub async fn run(&mut self) -> ! {
        loop {
            self.step().await;
        }
    }

    /// Take the next payload and act on it.
    pub async fn step(&mut self) -> CommandOutcome {
        let n = self.port.receive(&mut self.buf).await;
        let parsed = match self.buf.get(..n) {
            Some(bytes) => parse_command(bytes, &self.limits, self.recipes),
            None => Err(CommandError::BadJson),
        };
        let outcome = match parsed {
            Ok(c) => match c.to_motion().map(|m| self.sink.submit(m)) {
                Some(true) => CommandOutcome::Submitted(c),
                Some(false) => CommandOutcome::Refused(c),
                None => CommandOutcome::Bad(CommandError::UnknownCommand),
            },
            Err(e) => CommandOutcome::Bad(e),
        };
        let s = &mut self.stats;
        match &outcome {
            CommandOutcome::Submitted(_) => s.submitted = s.submitted.wrapping_add(1),
            CommandOutcome::Refused(c) => {
                s.refused = s.refused.wrapping_add(1);
                warn!("command: {} refused, motion queue full", c.name());
            }
            CommandOutcome::Bad(e) => {
                s.bad = s.bad.wrapping_add(1);
                warn!("command: bad payload: {}", e);
            }
        }
        outcome
    }
}

/// HTTP Basic credentials for control requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    user: heapless::String<32>,
    password: heapless::String<32>,
}

impl Default for Credentials {
    /// `admin` / `pumpctl`.
    fn default() -> Self {
        // Both fit: 5 and 7 bytes.
        Credentials::new("admin", "pumpctl").unwrap_or(Credentials {
            user: heapless::String::new(),
            password: heapless::String::new(),
        })
    }
}

impl Credentials {
    /// Credentials, or `None` if either part is longer than 32 bytes or the user has a `:`.
    pub fn new(user: &str, password: &str) -> Option<Credentials> {
        if user.contains(':') {
            return None;
        }
        let mut c = Credentials {
            user: heapless::String::new(),
            password: heapless::String::new(),
        };
        c.user.push_str(user).ok()?;
        c.password.push_str(password).ok()?;
        Some(c)
    }

    /// Whether an `Authorization` header value carries these credentials (`Basic <base64>`).
    pub fn check(&self, authorization: &[u8]) -> bool {
        crate::basic_auth::matches(Some(authorization), &self.user, &self.password)
    }
}

/// REST settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RestConfig {
    /// Who may control the pumps.
    pub credentials: Credentials,
    /// Command bounds.
    pub limits: Limits,
}

impl Default for RestConfig {
    fn default() -> Self {
        RestConfig {
            credentials: Credentials::default(),
            limits: Limits::DEFAULT,
        }
    }
}

/// A JSON reply with its status code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    /// HTTP status code.
    pub code: u16,
    /// JSON body.
    pub body: heapless::String<REPLY_MAX>,
}

/// The reply did not fit the output buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ReplyTooLong;

impl fmt::Display for ReplyTooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HTTP reply larger than the output buffer")
    }
}

impl core::error::Error for ReplyTooLong {}

impl HttpReply {
    /// A reply whose body `write` renders; a body longer than [`REPLY_MAX`] becomes a 500.
    pub fn json(
        code: u16,
        write: impl FnOnce(&mut heapless::String<REPLY_MAX>) -> fmt::Result,
    ) -> HttpReply {
        let mut body = heapless::String::new();
        if write(&mut body).is_ok() {
            return HttpReply { code, body };
        }
        HttpReply::error(500, "reply too long")
    }

    /// `{"error":"<message>"}`; `message` is ours (no characters that need escaping).
    pub fn error(code: u16, message: impl fmt::Display) -> HttpReply {
        let mut body = heapless::String::new();
        // Our messages are short; on overflow the body is cut, never the status code.
        let _ = write!(body, "{{\"error\":\"{message}\"}}");
        HttpReply { code, body }
    }

    /// The reason phrase of [`code`](Self::code).
    pub fn reason(&self) -> &'static str {
        match self.code {
            200 => "OK",
            202 => "Accepted",
            400 => "Bad Request",
            401 => "Unauthorized",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            413 => "Payload Too Large",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            _ => "Internal Server Error",
        }
    }

    /// The whole HTTP/1.1 response (status line, headers, body) into `out`; returns its length.
    /// A 401 carries `WWW-Authenticate: Basic realm="pump"` so browsers ask for credentials.
    pub fn write_to(&self, out: &mut [u8]) -> Result<usize, ReplyTooLong> {
        struct Cursor<'a> {
            out: &'a mut [u8],
            len: usize,
        }
        impl Write for Cursor<'_> {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                let end = self.len.checked_add(s.len()).ok_or(fmt::Error)?;
                let dst = self.out.get_mut(self.len..end).ok_or(fmt::Error)?;
                dst.copy_from_slice(s.as_bytes());
                self.len = end;
                Ok(())
            }
        }
        let mut c = Cursor { out, len: 0 };
        let auth = if self.code == 401 {
            "WWW-Authenticate: Basic realm=\"pump\"\r\n"
        } else {
            ""
        };
        write!(
            c,
            "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n{auth}\r\n{}",
            self.code,
            self.reason(),
            self.body.len(),
            self.body
        )
        .map_err(|_| ReplyTooLong)?;
        Ok(c.len)
    }
}

/// What the platform does with one HTTP request.
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub enum HttpOutcome {
    /// The request is not complete yet: read more bytes and call again with all of them. If the
    /// buffer is already full, answer [`HttpReply::error`] 413.
    Incomplete,
    /// Answer with this reply.
    Respond(HttpReply),
    /// Hand the command to pump control, then answer with the reply (202).
    Execute(Command, HttpReply),
    /// `GET /api/status`: answer 200 with the status JSON (`pump::status`).
    Status,
    /// `GET /` or `GET /index.html`: answer 200 with the UI page (`pump::web`).
    Page,
    /// `GET /ws`: upgrade to a WebSocket (the platform's handshake); `control` says whether the
    /// request carried valid credentials, i.e. whether the session may send commands.
    WebSocket {
        /// The session may send commands.
        control: bool,
    },
}

#[derive(serde::Deserialize)]
struct RawStart<'a> {
    #[serde(borrow, default)]
    pump: Option<&'a str>,
    #[serde(default)]
    volume_ml: Option<f32>,
    #[serde(default)]
    flow_ml_min: Option<f32>,
    #[serde(default, rename = "flowRate")]
    flow_rate: Option<f32>,
}

/// Handle one HTTP request (all bytes received so far). See the module docs for the routes.
pub fn handle_http(request: &[u8], config: &RestConfig, recipes: &[RecipeInfo<'_>]) -> HttpOutcome {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(request) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return HttpOutcome::Incomplete,
        // More than HEADERS_MAX header lines: 431, as the PDU answers.
        Err(httparse::Error::TooManyHeaders) => {
            return HttpOutcome::Respond(HttpReply::error(431, "too many headers"));
        }
        Err(_) => return HttpOutcome::Respond(HttpReply::error(400, "malformed HTTP request")),
    };
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return HttpOutcome::Respond(HttpReply::error(400, "malformed HTTP request"));
    };
    let path = target.split_once('?').map_or(target, |(p, _)| p);

    enum Route<'p> {
        Page,
        Status,
        Recipes,
        Ws,
        Start,
        Simple(Command),
        Recipe(&'p str),
    }
    let (route, want) = match path {
        "/" | "/index.html" => (Route::Page, "GET"),
        "/api/status" => (Route::Status, "GET"),
        "/api/recipes" => (Route::Recipes, "GET"),
        "/ws" => (Route::Ws, "GET"),
        "/api/pump/start" => (Route::Start, "POST"),
        "/api/stop" => (Route::Simple(Command::Stop), "POST"),
        "/api/estop" => (Route::Simple(Command::EmergencyStop), "POST"),
        "/api/resume" => (Route::Simple(Command::Resume), "POST"),
        p => match p.strip_prefix("/api/recipe/start/") {
            Some(name) => (Route::Recipe(name), "POST"),
            None => return HttpOutcome::Respond(HttpReply::error(404, "not found")),
        },
    };
    if method != want {
        return HttpOutcome::Respond(HttpReply::error(405, "method not allowed"));
    }

    let mut content_length: Option<usize> = None;
    let mut authorized = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let parsed = core::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok());
            match parsed {
                Some(n) if content_length.is_none_or(|c| c == n) => content_length = Some(n),
                _ => return HttpOutcome::Respond(HttpReply::error(400, "bad Content-Length")),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return HttpOutcome::Respond(HttpReply::error(400, "chunked bodies are not supported"));
        } else if h.name.eq_ignore_ascii_case("authorization") {
            authorized = config.credentials.check(h.value);
        }
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > BODY_MAX {
        return HttpOutcome::Respond(HttpReply::error(413, "body too large"));
    }

    match route {
        Route::Page => return HttpOutcome::Page,
        Route::Status => return HttpOutcome::Status,
        Route::Recipes => return HttpOutcome::Respond(recipes_reply(recipes)),
        Route::Ws => {
            return HttpOutcome::WebSocket {
                control: authorized,
            };
        }
        _ => {}
    }
    if !authorized {
        return HttpOutcome::Respond(HttpReply::error(401, "credentials required"));
    }
    let Some(body) = head_len
        .checked_add(body_len)
        .and_then(|end| request.get(head_len..end))
    else {
        return HttpOutcome::Incomplete;
    };
    let command = match route {
        Route::Start => from_json::<RawStart<'_>>(body).and_then(|raw| {
            dispense(
                raw.pump,
                raw.volume_ml,
                raw.flow_ml_min.or(raw.flow_rate),
                &config.limits,
            )
            .map(Command::StartDispense)
        }),
        Route::Simple(c) => Ok(c),
        Route::Recipe(raw_name) => percent_decode(raw_name)
            .and_then(|n| recipe(&n, recipes))
            .map(Command::StartRecipe),
        Route::Page | Route::Status | Route::Recipes | Route::Ws => {
            Err(CommandError::UnknownCommand)
        }
    };
    match command {
        Ok(c) => {
            let reply = HttpReply::json(202, |w| write!(w, "{{\"accepted\":\"{}\"}}", c.name()));
            HttpOutcome::Execute(c, reply)
        }
        Err(e @ CommandError::UnknownRecipe) => HttpOutcome::Respond(HttpReply::error(404, e)),
        Err(e) => HttpOutcome::Respond(HttpReply::error(400, e)),
    }
}

fn recipes_reply(recipes: &[RecipeInfo<'_>]) -> HttpReply {
    HttpReply::json(200, |w| {
        w.write_str("{\"recipes\":[")?;
        for (i, r) in recipes.iter().enumerate() {
            if i > 0 {
                w.write_char(',')?;
            }
            w.write_char('"')?;
            super::stats::write_json_safe(w, r.name)?;
            w.write_char('"')?;
        }
        w.write_str("]}")
    })
}

fn percent_decode(s: &str) -> Result<RecipeName, CommandError> {
    let mut bytes: heapless::Vec<u8, RECIPE_NAME_MAX> = heapless::Vec::new();
    let mut it = s.bytes();
    while let Some(b) = it.next() {
        let b = if b == b'%' {
            let hi = it.next().and_then(|c| (c as char).to_digit(16));
            let lo = it.next().and_then(|c| (c as char).to_digit(16));
            match (hi, lo) {
                (Some(h), Some(l)) => (h * 16 + l) as u8,
                _ => return Err(CommandError::BadRecipeName),
            }
        } else {
            b
        };
        bytes.push(b).map_err(|_| CommandError::BadRecipeName)?;
    }
    let s = core::str::from_utf8(&bytes).map_err(|_| CommandError::BadRecipeName)?;
    let mut out = RecipeName::new();
    out.push_str(s).map_err(|_| CommandError::BadRecipeName)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RECIPES: &[RecipeInfo<'static>] = &[
        RecipeInfo { name: "mojito" },
        RecipeInfo { name: "gin tonic" },
    ];
    // base64("admin:pumpctl")
    const AUTH: &str = "Authorization: Basic YWRtaW46cHVtcGN0bA==\r\n";

    #[track_caller]
    fn cmd(json: &str) -> Result<Command, CommandError> {
        parse_command(json.as_bytes(), &Limits::DEFAULT, RECIPES)
    }

    fn http(req: &str) -> HttpOutcome {
        handle_http(req.as_bytes(), &RestConfig::default(), RECIPES)
    }

    fn post(path: &str, auth: bool, body: &str) -> HttpOutcome {
        let auth = if auth { AUTH } else { "" };
        http(&format!(
            "POST {path} HTTP/1.1\r\nHost: pump\r\n{auth}Content-Length: {}\r\n\r\n{body}",
            body.len()
        ))
    }

    #[track_caller]
    fn error_code(o: HttpOutcome) -> (u16, String) {
        match o {
            HttpOutcome::Respond(r) => (r.code, r.body.as_str().to_string()),
            other => panic!("expected an error reply, got {other:?}"),
        }
    }

    #[test]
    fn mqtt_start_command_becomes_a_dispense_request() {
        assert_eq!(
            cmd(r#"{"cmd":"start","pump":"X","volume_ml":5,"flow_ml_min":60}"#),
            Ok(Command::StartDispense(DispenseRequest {
                pump: Pump::X,
                volume_ml: 5.0,
                flow_ml_min: 60.0
            }))
        );
    }

    #[test]
    fn simple_commands_and_recipes_parse() {
        assert_eq!(cmd(r#"{"cmd":"stop"}"#), Ok(Command::Stop));
        assert_eq!(
            cmd(r#" {"cmd":"estop","extra":[1,{"a":2}]} "#),
            Ok(Command::EmergencyStop)
        );
        assert_eq!(cmd(r#"{"cmd":"resume"}"#), Ok(Command::Resume));
        assert_eq!(
            cmd(r#"{"cmd":"recipe","name":"mojito"}"#),
            Ok(Command::StartRecipe(
                RecipeName::try_from("mojito").unwrap()
            ))
        );
    }

    #[test]
    fn bad_commands_get_a_specific_error() {
        assert_eq!(cmd("not json"), Err(CommandError::BadJson));
        assert_eq!(
            cmd(r#"{"cmd":"stop"} trailing"#),
            Err(CommandError::BadJson)
        );
        assert_eq!(cmd(r#"{"cmd":"fly"}"#), Err(CommandError::UnknownCommand));
        assert_eq!(
            cmd(r#"{"pump":"X"}"#),
            Err(CommandError::MissingField("cmd"))
        );
        assert_eq!(
            cmd(r#"{"cmd":"start","pump":"Q","volume_ml":5,"flow_ml_min":60}"#),
            Err(CommandError::UnknownPump)
        );
        assert_eq!(
            cmd(r#"{"cmd":"start","pump":"XY","volume_ml":5,"flow_ml_min":60}"#),
            Err(CommandError::UnknownPump)
        );
        assert_eq!(
            cmd(r#"{"cmd":"start","pump":"X","volume_ml":0,"flow_ml_min":60}"#),
            Err(CommandError::VolumeOutOfRange)
        );
        assert_eq!(
            cmd(r#"{"cmd":"start","pump":"X","volume_ml":501,"flow_ml_min":60}"#),
            Err(CommandError::VolumeOutOfRange)
        );
        assert_eq!(
            cmd(r#"{"cmd":"start","pump":"X","volume_ml":5,"flow_ml_min":-1}"#),
            Err(CommandError::FlowOutOfRange)
        );
        assert_eq!(
            cmd(r#"{"cmd":"start","pump":"X","volume_ml":5}"#),
            Err(CommandError::MissingField("flow_ml_min"))
        );
        assert_eq!(
            cmd(r#"{"cmd":"recipe","name":"negroni"}"#),
            Err(CommandError::UnknownRecipe)
        );
        assert_eq!(
            cmd(r#"{"cmd":"start","pump":5}"#),
            Err(CommandError::BadJson)
        );
    }

    #[test]
    fn deeply_nested_json_is_refused_before_the_parser_recurses() {
        let deep = format!(
            "{{\"cmd\":\"stop\",\"x\":{}{}}}",
            "[".repeat(5000),
            "]".repeat(5000)
        );
        assert_eq!(cmd(&deep), Err(CommandError::BadJson));
        // Brackets inside strings do not count.
        assert_eq!(
            cmd(r#"{"cmd":"stop","note":"[[[[[[[[\"[["}"#),
            Ok(Command::Stop)
        );
    }

    #[test]
    fn status_and_recipes_are_open_to_everyone() {
        assert_eq!(
            http("GET /api/status HTTP/1.1\r\nHost: p\r\n\r\n"),
            HttpOutcome::Status
        );
        let (code, body) = error_code(http("GET /api/recipes?x=1 HTTP/1.1\r\n\r\n"));
        assert_eq!(
            (code, body.as_str()),
            (200, r#"{"recipes":["mojito","gin tonic"]}"#)
        );
    }

    #[test]
    fn control_requires_basic_credentials() {
        let body = r#"{"pump":"X","volume_ml":5,"flow_ml_min":60}"#;
        assert_eq!(error_code(post("/api/pump/start", false, body)).0, 401);
        assert_eq!(error_code(post("/api/stop", false, "")).0, 401);
        assert_eq!(
            error_code(post("/api/recipe/start/mojito", false, "")).0,
            401
        );
        let wrong = "POST /api/stop HTTP/1.1\r\nAuthorization: Basic YWRtaW46d3Jvbmc=\r\n\r\n";
        assert_eq!(error_code(http(wrong)).0, 401);
        match post("/api/pump/start", true, body) {
            HttpOutcome::Execute(Command::StartDispense(r), reply) => {
                assert_eq!((r.pump, reply.code), (Pump::X, 202));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            post("/api/stop", true, ""),
            HttpOutcome::Execute(Command::Stop, _)
        ));
    }

    #[test]
    fn a_browser_sized_request_is_served() {
        // What Chromium's fetch() sent for the UI's Start button, header for header.
        let req = "POST /api/stop HTTP/1.1\r\nHost: 127.0.0.1:8081\r\nConnection: keep-alive\r\n\
            Content-Length: 0\r\nsec-ch-ua-platform: \"Linux\"\r\nAuthorization: Basic YWRtaW46cHVtcGN0bA==\r\n\
            User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0\r\nsec-ch-ua: \"Chromium\";v=\"156\"\r\n\
            Content-Type: application/json\r\nsec-ch-ua-mobile: ?0\r\nAccept: */*\r\n\
            Origin: http://127.0.0.1:8081\r\nSec-Fetch-Site: same-origin\r\nSec-Fetch-Mode: cors\r\n\
            Sec-Fetch-Dest: empty\r\nReferer: http://127.0.0.1:8081/\r\n\
            Accept-Encoding: gzip, deflate, br, zstd\r\nAccept-Language: en-US,en;q=0.9\r\n\r\n";
        assert!(matches!(http(req), HttpOutcome::Execute(Command::Stop, _)));
    }

    #[test]
    fn configured_credentials_replace_the_default() {
        let config = RestConfig {
            credentials: Credentials::new("op", "s3cret").unwrap(),
            ..RestConfig::default()
        };
        let with = |auth: &str| {
            let r = format!("POST /api/stop HTTP/1.1\r\nAuthorization: {auth}\r\n\r\n");
            handle_http(r.as_bytes(), &config, RECIPES)
        };
        assert!(matches!(
            with("basic b3A6czNjcmV0"),
            HttpOutcome::Execute(Command::Stop, _)
        ));
        assert_eq!(error_code(with("Basic YWRtaW46cHVtcGN0bA==")).0, 401);
    }

    #[test]
    fn websocket_upgrade_grants_control_only_with_credentials() {
        assert_eq!(
            http("GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"),
            HttpOutcome::WebSocket { control: false }
        );
        assert_eq!(
            http(&format!("GET /ws HTTP/1.1\r\n{AUTH}\r\n")),
            HttpOutcome::WebSocket { control: true }
        );
    }

    #[test]
    fn seed_flow_rate_is_an_alias_and_volume_stays_required() {
        match post(
            "/api/pump/start",
            true,
            r#"{"pump":"y","volume_ml":2.5,"flowRate":30}"#,
        ) {
            HttpOutcome::Execute(Command::StartDispense(r), _) => {
                assert_eq!((r.pump, r.volume_ml, r.flow_ml_min), (Pump::Y, 2.5, 30.0));
            }
            other => panic!("{other:?}"),
        }
        let (code, body) = error_code(post(
            "/api/pump/start",
            true,
            r#"{"pump":"X","flowRate":30}"#,
        ));
        assert_eq!(
            (code, body.as_str()),
            (400, r#"{"error":"missing field: volume_ml"}"#)
        );
    }

    #[test]
    fn rest_errors_use_the_right_status_codes() {
        assert_eq!(error_code(http("GET /nope HTTP/1.1\r\n\r\n")).0, 404);
        assert_eq!(http("GET / HTTP/1.1\r\n\r\n"), HttpOutcome::Page);
        assert_eq!(error_code(http("POST / HTTP/1.1\r\n\r\n")).0, 405);
        assert_eq!(error_code(http("GET /api/stop HTTP/1.1\r\n\r\n")).0, 405);
        assert_eq!(error_code(http("POST /api/status HTTP/1.1\r\n\r\n")).0, 405);
        assert_eq!(error_code(post("/api/pump/start", true, "{bad")).0, 400);
        assert_eq!(
            error_code(post(
                "/api/pump/start",
                true,
                r#"{"pump":"X","volume_ml":5,"flow_ml_min":9999}"#
            )),
            (400, r#"{"error":"flow_ml_min out of range"}"#.to_string())
        );
        let (code, body) = error_code(post("/api/recipe/start/negroni", true, ""));
        assert_eq!(
            (code, body.as_str()),
            (404, r#"{"error":"unknown recipe"}"#)
        );
        let big = format!("POST /api/pump/start HTTP/1.1\r\n{AUTH}Content-Length: 100000\r\n\r\n");
        assert_eq!(error_code(http(&big)).0, 413);
        assert_eq!(error_code(http("garbage\r\n\r\n")).0, 400);
        let many: String = (0..HEADERS_MAX + 1)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        let (code, body) = error_code(http(&format!("GET /api/status HTTP/1.1\r\n{many}")));
        assert_eq!(
            (code, body.as_str()),
            (431, r#"{"error":"too many headers"}"#)
        );
        let fits: String = (0..HEADERS_MAX).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            http(&format!("GET /api/status HTTP/1.1\r\n{fits}\r\n")),
            HttpOutcome::Status
        );
    }

    #[test]
    fn recipe_names_in_urls_are_percent_decoded() {
        match post("/api/recipe/start/gin%20tonic", true, "") {
            HttpOutcome::Execute(Command::StartRecipe(n), _) => assert_eq!(n.as_str(), "gin tonic"),
            other => panic!("{other:?}"),
        }
        assert_eq!(error_code(post("/api/recipe/start/gin%2", true, "")).0, 400);
    }

    #[test]
    fn partial_requests_ask_for_more_bytes() {
        assert_eq!(http("GET /api/sta"), HttpOutcome::Incomplete);
        let head =
            format!("POST /api/pump/start HTTP/1.1\r\n{AUTH}Content-Length: 20\r\n\r\n{{\"pump\"");
        assert_eq!(http(&head), HttpOutcome::Incomplete);
    }

    #[test]
    fn replies_are_complete_http_responses() {
        let r = HttpReply::error(401, CommandError::UnknownPump);
        let mut buf = [0u8; 256];
        let n = r.write_to(&mut buf).unwrap();
        let text = core::str::from_utf8(&buf[..n]).unwrap();
        assert!(text.starts_with("HTTP/1.1 401 Unauthorized\r\n"));
        assert!(text.contains("WWW-Authenticate: Basic realm=\"pump\"\r\n"));
        assert!(text.ends_with("\r\n\r\n{\"error\":\"unknown pump (expected X, Y, Z or A)\"}"));
        assert_eq!(r.write_to(&mut [0u8; 20]), Err(ReplyTooLong));
    }

    struct Payloads(std::collections::VecDeque<Vec<u8>>);

    impl CommandPort for Payloads {
        async fn receive(&mut self, buf: &mut [u8]) -> usize {
            let p = self.0.pop_front().unwrap_or_default();
            let n = p.len().min(buf.len());
            buf[..n].copy_from_slice(&p[..n]);
            if p.len() > buf.len() {
                buf.len() + 1
            } else {
                n
            }
        }
    }

    #[test]
    fn the_command_task_submits_counts_refusals_and_bad_payloads() {
        use crate::queue::FullPolicy;
        use embassy_sync::blocking_mutex::raw::NoopRawMutex;
        let q: Queue<NoopRawMutex, MotionCommand, 1> = Queue::new(FullPolicy::RejectNew);
        let payloads = [
            br#"{"cmd":"estop"}"#.to_vec(),
            br#"{"cmd":"stop"}"#.to_vec(),
            b"{".to_vec(),
            vec![b' '; PAYLOAD_MAX + 10],
        ];
        let mut t = CommandTask::new(
            Payloads(payloads.into_iter().collect()),
            &q,
            Limits::DEFAULT,
            RECIPES,
        );
        let mut step = || match embassy_futures::poll_once(core::pin::pin!(t.step())) {
            core::task::Poll::Ready(o) => o,
            core::task::Poll::Pending => panic!("pending"),
        };
        assert_eq!(step(), CommandOutcome::Submitted(Command::EmergencyStop));
        assert_eq!(step(), CommandOutcome::Refused(Command::Stop));
        assert_eq!(step(), CommandOutcome::Bad(CommandError::BadJson));
        assert_eq!(step(), CommandOutcome::Bad(CommandError::BadJson));
        assert_eq!(
            t.stats(),
            CommandStats {
                submitted: 1,
                refused: 1,
                bad: 2
            }
        );
        assert_eq!(
            q.try_receive(),
            Some(MotionCommand::EmergencyStop(EstopTrigger::Remote))
        );
    }

    proptest! {
        #[test]
        fn command_parser_rejects_arbitrary_bytes_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert!(parse_command(&bytes, &Limits::DEFAULT, RECIPES).is_err());
        }

        #[test]
        fn command_parser_survives_json_like_input(s in r#"[{}\[\]":,a-z0-9 .\-eE\\]{0,120}"#) {
            let _ = parse_command(s.as_bytes(), &Limits::DEFAULT, RECIPES);
        }

        #[test]
        fn http_handler_rejects_arbitrary_bytes_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let outcome = handle_http(&bytes, &RestConfig::default(), RECIPES);
            prop_assert!(!matches!(outcome, HttpOutcome::Execute(..)));
        }

        #[test]
        fn http_handler_survives_request_like_input(
            method in "(GET|POST|PUT)",
            path in "/(api/(status|recipes|stop|pump/start|recipe/start/[a-z%0-9]{0,40})|ws|x)",
            clen in proptest::option::of(0usize..2000),
            auth in any::<bool>(),
            body in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut req = format!("{method} {path} HTTP/1.1\r\n").into_bytes();
            if auth { req.extend_from_slice(AUTH.as_bytes()); }
            if let Some(n) = clen { req.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes()); }
            req.extend_from_slice(b"\r\n");
            req.extend_from_slice(&body);
            let outcome = handle_http(&req, &RestConfig::default(), RECIPES);
            if !auth {
                prop_assert!(!matches!(outcome, HttpOutcome::Execute(..)), "control without credentials");
            }
        }
    }
}
