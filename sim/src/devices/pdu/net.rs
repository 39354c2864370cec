//! The sim-side NetTask and ConsoleTask runners: they feed SNMP datagrams, HTTP requests and
//! console bytes into the firmware's sans-IO front-ends (`firmware_core::pdu::{snmp, http,
//! console}`) and forward the front-ends' `Intent`s to SwitchTask and StorageTask.
//!
//! Input reaches them through an [`Inbox`] (`sim::kernel::inbox`): a bounded, thread-safe queue
//! (live sockets push from the tokio threads, scenario actions from the kernel thread) whose full
//! policy is **reject the newest** — a datagram that finds the inbox full is dropped and counted in
//! [`InboxStats::dropped`], as a W5500 socket buffer overflows; an HTTP connection is answered
//! 503 by the live layer. NetTask serves at most one item per `net_poll` (the ENERGIS main loop
//! polls its sockets once per tick), so a flood costs a bounded share of the CPU.
//!
//! Also here: a tiny SNMP manager (request encoder on the firmware's BER writer, response
//! decoder on its reader) for scenario actions.
use std::fmt::Write as _;
use std::rc::Rc;

use embassy_futures::select::{Either, select};
use firmware_core::pdu::console::{Console, RECOMMENDED_OUT_LEN};
use firmware_core::pdu::frontend::Intent;
use firmware_core::pdu::health::TaskId;
use firmware_core::pdu::http::{self, HttpServer, Limits, RECOMMENDED_RESPONSE_LEN};
use firmware_core::pdu::snmp::ber::{
    Oid, Reader, TAG_INTEGER, TAG_OCTET_STRING, TAG_OID, TAG_SEQUENCE, Writer, decode_i32,
    decode_u32,
};
use firmware_core::pdu::snmp::message::{PDU_GET, PDU_GET_NEXT, PDU_SET};
use firmware_core::pdu::snmp::{Agent, Outcome};
use firmware_core::pdu::storage::{StorageOp, StorageRequest};
use firmware_core::pdu::switch::offer_request;
use firmware_core::pdu::{SwitchReply, SwitchRequest};
use firmware_core::time::Duration;

use super::firmware::{Board, ReplyQ, Shared};
pub use crate::kernel::inbox::{Inbox, InboxStats};

/// Where a NetTask answer goes.
pub enum ReplyTo {
    /// Decode it and record it as a trace event with this label.
    Trace(String),
    /// Count it only (floods).
    Count,
    /// A walk step: record, and ask for the next object while it is under `prefix`.
    Walk {
        /// Label of the walk's events.
        label: String,
        /// The subtree walked.
        prefix: Vec<u32>,
        /// Community of the walk.
        community: String,
        /// 0 = v1, 1 = v2c.
        version: i64,
    },
    /// A live client waits for the bytes.
    Live(tokio::sync::oneshot::Sender<Vec<u8>>),
}

/// Something for NetTask to serve.
pub enum NetInput {
    /// An SNMP datagram.
    Snmp(Vec<u8>, ReplyTo),
    /// A complete HTTP request.
    Http(Vec<u8>, ReplyTo),
}

/// Something for the console.
pub type ConsoleInput = Vec<u8>;

/// Encode an SNMP request (`pdu` = GET/GETNEXT/SET tag) with one varbind.
pub fn encode_request(
    version: i64,
    community: &str,
    pdu: u8,
    request_id: i32,
    oid: &[u32],
    value: Option<i64>,
) -> Option<Vec<u8>> {
    let oid = Oid::from_arcs(oid)?;
    let mut buf = [0u8; 512];
    let mut w = Writer::new(&mut buf);
    let body = (|| {
        let msg = w.begin()?;
        w.int(TAG_INTEGER, version)?;
        w.tlv(TAG_OCTET_STRING, community.as_bytes())?;
        let p = w.begin()?;
        w.int(TAG_INTEGER, i64::from(request_id))?;
        w.int(TAG_INTEGER, 0)?;
        w.int(TAG_INTEGER, 0)?;
        let list = w.begin()?;
        let vb = w.begin()?;
        w.oid(&oid)?;
        match value {
            Some(v) => w.int(TAG_INTEGER, v)?,
            None => w.tlv(0x05, &[])?,
        }
        w.end(vb, TAG_SEQUENCE)?;
        w.end(list, TAG_SEQUENCE)?;
        w.end(p, pdu)?;
        w.end(msg, TAG_SEQUENCE)
    })();
    body.ok()?;
    let n = w.len();
    Some(buf[..n].to_vec())
}

/// A decoded SNMP response.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// Request id.
    pub request_id: i32,
    /// Error status (0 = noError).
    pub error_status: i32,
    /// Error index.
    pub error_index: i32,
    /// Varbinds: OID and rendered value.
    pub varbinds: Vec<(Vec<u32>, String)>,
}

/// RFC 3416 error-status names.
pub fn error_name(status: i32) -> &'static str {
    const NAMES: [&str; 19] = [
        "noError",
        "tooBig",
        "noSuchName",
        "badValue",
        "readOnly",
        "genErr",
        "noAccess",
        "wrongType",
        "wrongLength",
        "wrongEncoding",
        "wrongValue",
        "noCreation",
        "inconsistentValue",
        "resourceUnavailable",
        "commitFailed",
        "undoFailed",
        "authorizationError",
        "notWritable",
        "inconsistentName",
    ];
    usize::try_from(status)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
        .unwrap_or("unknown")
}

/// Decode a response datagram.
pub fn decode_response(bytes: &[u8]) -> Option<Response> {
    let mut top = Reader::new(bytes);
    let mut msg = Reader::new(top.expect(TAG_SEQUENCE).ok()?);
    msg.read_i32().ok()?;
    msg.expect(TAG_OCTET_STRING).ok()?;
    let pdu = msg.read().ok()?;
    let mut p = Reader::new(pdu.content);
    let request_id = p.read_i32().ok()?;
    let error_status = p.read_i32().ok()?;
    let error_index = p.read_i32().ok()?;
    let mut list = Reader::new(p.expect(TAG_SEQUENCE).ok()?);
    let mut varbinds = Vec::new();
    while !list.is_empty() {
        let mut vb = Reader::new(list.expect(TAG_SEQUENCE).ok()?);
        let oid = Oid::decode(vb.expect(TAG_OID).ok()?).ok()?;
        let v = vb.read().ok()?;
        let text = match v.tag {
            TAG_INTEGER => format!("INTEGER {}", decode_i32(v.content).unwrap_or(0)),
            TAG_OCTET_STRING => format!("STRING {}", String::from_utf8_lossy(v.content)),
            TAG_OID => format!(
                "OID {}",
                Oid::decode(v.content)
                    .map(|o| o.to_string())
                    .unwrap_or_default()
            ),
            0x41..=0x43 => format!("UINT {}", decode_u32(v.content).unwrap_or(0)),
            0x80 => "noSuchObject".to_owned(),
            0x81 => "noSuchInstance".to_owned(),
            0x82 => "endOfMibView".to_owned(),
            0x05 => "NULL".to_owned(),
            t => format!("tag 0x{t:02x}"),
        };
        varbinds.push((oid.arcs().to_vec(), text));
    }
    Some(Response {
        request_id,
        error_status,
        error_index,
        varbinds,
    })
}

/// Render a response as one trace line: `error=noError 1.3.6.1...=INTEGER 1`.
pub fn render_response(r: &Response) -> String {
    let mut s = format!("error={}", error_name(r.error_status));
    if r.error_status != 0 {
        let _ = write!(s, " index={}", r.error_index);
    }
    for (oid, v) in &r.varbinds {
        let dotted: Vec<String> = oid.iter().map(u32::to_string).collect();
        let _ = write!(s, " {}={}", dotted.join("."), v);
    }
    s
}

/// Parse a dotted OID (`1.3.6.1.2.1.1.1.0`, a leading dot allowed).
pub fn parse_oid(text: &str) -> Result<Vec<u32>, String> {
    let arcs: Result<Vec<u32>, _> = text
        .trim_start_matches('.')
        .split('.')
        .map(str::parse::<u32>)
        .collect();
    match arcs {
        Ok(a) if a.len() >= 2 && Oid::from_arcs(&a).is_some() => Ok(a),
        _ => Err(format!("`{text}` is not a dotted OID")),
    }
}

/// PDU tags by action.
pub const fn pdu_tag(kind: SnmpKind) -> u8 {
    match kind {
        SnmpKind::Get => PDU_GET,
        SnmpKind::GetNext => PDU_GET_NEXT,
        SnmpKind::Set => PDU_SET,
    }
}

/// Request kinds the scenario manager sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnmpKind {
    /// GET.
    Get,
    /// GETNEXT.
    GetNext,
    /// SET.
    Set,
}

/// Forward intents to their owner tasks; returns SwitchTask's replies to the switch intents, in
/// order. A full SwitchTask queue answers `Busy` at once; a reply that does not come within the
/// request's timeout plus 500 ms is missing (the front-end renders it as busy).
pub async fn forward(
    sh: &Rc<Shared>,
    b: &'static Board,
    replies: &ReplyQ,
    intents: &[Intent],
) -> Vec<SwitchReply> {
    let mut out = Vec::new();
    for intent in intents {
        match intent {
            Intent::Switch(req) => {
                if let Some(r) = switch_and_wait(sh, b, replies, *req).await {
                    out.push(r);
                }
            }
            Intent::SaveConfig(cfg) => {
                let token = sh.next_token();
                let req = StorageRequest {
                    op: StorageOp::Save(cfg.clone()),
                    token,
                };
                if b.storage_q.offer(req).is_queued() {
                    sh.record("storage", format!("save requested token={token}"));
                } else {
                    sh.record("storage", "save refused: storage queue full");
                }
            }
            Intent::FactoryReset => {
                let req = StorageRequest {
                    op: StorageOp::FactoryReset,
                    token: sh.next_token(),
                };
                if !b.storage_q.offer(req).is_queued() {
                    sh.record("storage", "factory reset refused: storage queue full");
                }
            }
            Intent::Reboot => {
                // Through StorageTask's queue, behind every save accepted before it: the reboot
                // happens once they are stored (it waits for room rather than being refused).
                let token = sh.next_token();
                sh.record("storage", format!("reboot requested token={token}"));
                b.storage_q
                    .send(StorageRequest {
                        op: StorageOp::Reboot,
                        token,
                    })
                    .await;
            }
            Intent::ClearErrors => sh.record("health", "errors cleared"),
        }
    }
    out
}

async fn switch_and_wait(
    sh: &Rc<Shared>,
    b: &'static Board,
    replies: &ReplyQ,
    req: SwitchRequest,
) -> Option<SwitchReply> {
    if let Err(busy) = offer_request(&b.switch_q, req) {
        return Some(busy);
    }
    let clock = sh.clock.clone();
    let deadline =
        clock.now() + Duration::from_millis(u64::from(req.timeout_ms)) + Duration::from_millis(500);
    loop {
        match select(replies.receive(), clock.sleep_until(deadline)).await {
            Either::First(r) if r.token == req.token => return Some(r),
            Either::First(_) => continue,
            Either::Second(()) => return None,
        }
    }
}

/// Beat interval of the net and console runners while idle.
const IDLE_BEAT: Duration = Duration::from_millis(250);

/// NetTask: serve the net inbox, one item per `net_poll`.
pub async fn net_task(sh: Rc<Shared>, b: &'static Board) {
    let mut agent = Agent::new();
    let mut server = HttpServer::new(Limits::default());
    let mut out = vec![0u8; RECOMMENDED_RESPONSE_LEN];
    let clock = sh.clock.clone();
    loop {
        let item = match select(sh.net_inbox.recv(), clock.sleep(IDLE_BEAT)).await {
            Either::First(item) => item,
            Either::Second(()) => {
                b.beats.beat(TaskId::NET, clock.now());
                continue;
            }
        };
        let started = clock.now();
        b.beats.beat(TaskId::NET, started);
        match item {
            NetInput::Snmp(datagram, to) => {
                clock.charge(sh.costs.snmp);
                let snap = sh.snapshot(b);
                let mut outcome = agent.handle_request(&datagram, &snap, clock.now(), &mut out);
                let reply = loop {
                    match outcome {
                        Outcome::Reply(n) => break Some(out.get(..n).unwrap_or(&[]).to_vec()),
                        Outcome::Drop(reason) => {
                            sh.record("net", format!("snmp dropped: {reason:?}"));
                            break None;
                        }
                        Outcome::NeedsSwitch(req) => {
                            match switch_and_wait(&sh, b, &b.net_replies, req).await {
                                Some(r) => outcome = agent.complete(&r, &mut out),
                                None => {
                                    let at = agent.pending_deadline().unwrap_or(clock.now());
                                    clock.sleep_until(at).await;
                                    match agent.handle_timeout(clock.now(), &mut out) {
                                        Some(o) => outcome = o,
                                        None => break None,
                                    }
                                }
                            }
                        }
                    }
                };
                sh.snmp_stats.set(*agent.stats());
                deliver_snmp(&sh, reply, to);
            }
            NetInput::Http(request, to) => {
                clock.charge(sh.costs.http);
                let snap = sh.snapshot(b);
                let bytes = match server.handle(&request, &snap, &mut out) {
                    Ok(http::Outcome::Reply(n)) => out.get(..n).unwrap_or(&[]).to_vec(),
                    Ok(http::Outcome::NeedMore) => {
                        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n".to_vec()
                    }
                    Ok(http::Outcome::Apply(pending)) => {
                        let replies = forward(&sh, b, &b.net_replies, &pending.intents).await;
                        let snap = sh.snapshot(b);
                        match pending.followup.finish(&replies, &snap, &mut out) {
                            Ok(n) => out.get(..n).unwrap_or(&[]).to_vec(),
                            Err(e) => format!("HTTP/1.1 500 {e}\r\n\r\n").into_bytes(),
                        }
                    }
                    Err(e) => format!("HTTP/1.1 500 {e}\r\n\r\n").into_bytes(),
                };
                deliver_http(&sh, bytes, to);
            }
        }
        if sh.costs.net_poll > Duration::ZERO {
            clock.sleep_until(started + sh.costs.net_poll).await;
        }
    }
}

fn deliver_snmp(sh: &Rc<Shared>, reply: Option<Vec<u8>>, to: ReplyTo) {
    match to {
        ReplyTo::Count => {
            if reply.is_some() {
                sh.flood_replies.set(sh.flood_replies.get() + 1);
            }
        }
        ReplyTo::Trace(label) => {
            let text = match reply.as_deref().map(decode_response) {
                None => "no reply".to_owned(),
                Some(None) => "undecodable reply".to_owned(),
                Some(Some(r)) => render_response(&r),
            };
            sh.record("snmp", format!("{label}: {text}"));
        }
        ReplyTo::Walk {
            label,
            prefix,
            community,
            version,
        } => {
            let Some(r) = reply.as_deref().and_then(decode_response) else {
                sh.record("snmp", format!("{label}: walk ended without a reply"));
                return;
            };
            let next = r.varbinds.first().map(|(oid, _)| oid.clone());
            match next {
                Some(oid) if oid.starts_with(&prefix) && r.error_status == 0 => {
                    sh.record("snmp", format!("{label}: {}", render_response(&r)));
                    let id = sh.next_token() as i32;
                    if let Some(req) =
                        encode_request(version, &community, PDU_GET_NEXT, id, &oid, None)
                    {
                        let to = ReplyTo::Walk {
                            label: label.clone(),
                            prefix,
                            community,
                            version,
                        };
                        if sh.net_inbox.offer(NetInput::Snmp(req, to)).is_err() {
                            sh.record("snmp", format!("{label}: walk step dropped, inbox full"));
                        }
                    }
                }
                _ => sh.record("snmp", format!("{label}: walk done")),
            }
        }
        ReplyTo::Live(tx) => {
            if let Some(bytes) = reply {
                let _ = tx.send(bytes);
            }
        }
    }
}

fn deliver_http(sh: &Rc<Shared>, bytes: Vec<u8>, to: ReplyTo) {
    match to {
        ReplyTo::Live(tx) => {
            let _ = tx.send(bytes);
        }
        ReplyTo::Trace(label) | ReplyTo::Walk { label, .. } => {
            let text = String::from_utf8_lossy(&bytes);
            let status = text.lines().next().unwrap_or("").to_owned();
            let body = text.split("\r\n\r\n").nth(1).unwrap_or("").trim();
            let body: String = body.chars().take(200).collect();
            sh.record("http", format!("{label}: {status} {body}"));
        }
        ReplyTo::Count => {}
    }
}

/// ConsoleTask: bytes in, reply lines out (to the trace and to every attached terminal).
pub async fn console_task(sh: Rc<Shared>, b: &'static Board) {
    let mut console = Console::new();
    let mut out = vec![0u8; RECOMMENDED_OUT_LEN];
    let clock = sh.clock.clone();
    loop {
        let bytes = match select(sh.console_inbox.recv(), clock.sleep(IDLE_BEAT)).await {
            Either::First(bytes) => bytes,
            Either::Second(()) => {
                b.beats.beat(TaskId::CONSOLE, clock.now());
                continue;
            }
        };
        b.beats.beat(TaskId::CONSOLE, clock.now());
        for byte in bytes {
            let snap = sh.snapshot(b);
            let executed = match console.push_byte(byte, &snap, &mut out) {
                Ok(Some(e)) => e,
                Ok(None) => continue,
                Err(e) => {
                    sh.record("console", format!("console error: {e}"));
                    continue;
                }
            };
            clock.charge(sh.costs.console_line);
            sh.console_out(out.get(..executed.written).unwrap_or(&[]));
            let replies = forward(&sh, b, &b.console_replies, &executed.intents).await;
            if let Some(f) = executed.followup {
                match f.finish(&replies, &mut out) {
                    Ok(n) => sh.console_out(out.get(..n).unwrap_or(&[])),
                    Err(e) => sh.record("console", format!("console error: {e}")),
                }
            }
            b.beats.beat(TaskId::CONSOLE, clock.now());
        }
    }
}
