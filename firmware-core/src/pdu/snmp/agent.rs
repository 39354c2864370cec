//! The sans-IO SNMP agent: a datagram in, a datagram (or nothing, or a switch request) out.
//!
//! Call order, for the platform's NetTask:
//! 1. A datagram arrives: `agent.handle_request(bytes, &snapshot, now, &mut out)`.
//!    * [`Outcome::Reply`]`(n)`: send `out[..n]` back to the sender.
//!    * [`Outcome::Drop`]`(reason)`: send nothing (already counted in [`Agent::stats`]).
//!    * [`Outcome::NeedsSwitch`]`(request)`: a SET passed validation; forward the request to
//!      SwitchTask (as `Intent::Switch`), wait for its reply, then call
//!      `agent.complete(&reply, &mut out)`, which answers again with an [`Outcome`]: a reply,
//!      or the next switch request when one SET carries several writes.
//! 2. While a SET waits for SwitchTask, [`Agent::pending_deadline`] says when to give up; at
//!    that instant call [`Agent::handle_timeout`], which answers the manager with `genErr`.
//!    A new `handle_request` while a SET is pending abandons it (counted): the platform serves
//!    one datagram at a time, so this only happens when it chose to move on.
//!
//! Access: the write community reads and writes, the read community only reads, any other
//! community gets no answer at all (no authenticationFailure trap). Communities come from
//! `snapshot.config.snmp` at each request, so a configuration change applies at once.
//!
//! Error mapping (RFC 1157 / RFC 3416; v2→v1 as in RFC 2576 section 4.4):
//!
//! | case | v1 | v2c |
//! | --- | --- | --- |
//! | GET of an unknown name | `noSuchName`, index | `noSuchObject` / `noSuchInstance` varbind |
//! | GETNEXT past the last object | `noSuchName`, index | `endOfMibView` varbind |
//! | SET with the read community | `noSuchName`, index 1 (what net-snmp's agent answers) | `noAccess`, index 1 |
//! | SET of an unknown name | `noSuchName` | `noCreation` |
//! | SET of a read-only object | `readOnly` | `notWritable` |
//! | SET value not an INTEGER | `badValue` | `wrongType` |
//! | SET INTEGER badly encoded | `badValue` | `wrongEncoding` |
//! | SET value out of range | `badValue` | `wrongValue` |
//! | SwitchTask refused the first write | `genErr` | `commitFailed` |
//! | SwitchTask refused a later write (earlier ones stay applied) | `genErr` | `undoFailed` |
//! | no reply from SwitchTask in time | `genErr` | `genErr` |
//! | response does not fit the buffer | `tooBig` (request varbinds echoed) | `tooBig` (no varbinds) |
//! | more than [`MAX_VARBINDS`] varbinds | `tooBig` | `tooBig` |
//! | more than [`MAX_SET_VARBINDS`] writes in one SET | `genErr` | `resourceUnavailable` |
//!
//! SET is all-or-nothing for everything the agent can check: every varbind is validated before
//! the first switch request leaves. SwitchTask can still refuse a write (interlock, over-current
//! lockout); writes already applied in the same PDU are not rolled back, which the v2c answer
//! states honestly as `undoFailed`.
//!
//! GETBULK (v2c only; a v1 GETBULK is dropped) returns as many varbinds as fit `out`, never a
//! partial one, and stops early once every repeater has reached `endOfMibView`.
use super::ber::BerError;
use super::message::{
    ErrorStatus, Header, Name, PDU_GET, PDU_GET_BULK, PDU_GET_NEXT, PDU_SET, RequestPdu,
    ResponseHeader, Value, VarBindList, Version, emit_response, emit_varbind,
};
use super::mib::{MibValue, OBJECT_COUNT, Object, SetRefusal};
use crate::pdu::config::SnmpConfig;
use crate::pdu::frontend::{Intent, Snapshot};
use crate::pdu::{OutletMask, SwitchReply, SwitchRequest, SwitchStatus};
use crate::time::{Duration, Instant};

/// Largest request the agent accepts: an Ethernet UDP payload (1500 − 20 − 8). Also the
/// recommended size of the response buffer.
pub const MAX_REQUEST_LEN: usize = 1472;
/// Most varbinds in one request; more is answered `tooBig`.
pub const MAX_VARBINDS: usize = 64;
/// Most writes one SET may carry (they are kept while SwitchTask acts).
pub const MAX_SET_VARBINDS: usize = 16;
/// Longest community the agent keeps for a pending SET (same bound as the configuration).
const MAX_COMMUNITY: usize = 32;
/// Slack on top of the switch requests' own timeouts before a pending SET is given up.
pub const SWITCH_REPLY_MARGIN: Duration = Duration::from_millis(500);

/// What the platform does with a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Outcome {
    /// Send the first `n` bytes of the response buffer to the sender.
    Reply(usize),
    /// Send nothing.
    Drop(DropReason),
    /// Forward this request to SwitchTask, then call [`Agent::complete`] with its reply.
    NeedsSwitch(SwitchRequest),
}

impl Outcome {
    /// The intent to forward, for [`Outcome::NeedsSwitch`].
    pub fn intent(&self) -> Option<Intent> {
        match *self {
            Outcome::NeedsSwitch(r) => Some(Intent::Switch(r)),
            _ => None,
        }
    }
}

/// Why no reply is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum DropReason {
    /// The community is neither the read nor the write community.
    BadCommunity,
    /// The datagram is not a well-formed SNMP message.
    ParseError(BerError),
    /// SNMP version other than v1 and v2c.
    UnsupportedVersion,
    /// A PDU an agent does not answer (Response, traps, Report, Inform; GetBulk in v1).
    UnsupportedPdu,
    /// The request is longer than [`MAX_REQUEST_LEN`], or not even a `tooBig` answer fits
    /// the response buffer.
    TooBig,
    /// [`Agent::complete`] without a pending SET, or with a reply whose token is not the one
    /// awaited.
    UnexpectedSwitchReply,
}

/// Counters for the platform to publish. All wrap at `u32::MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SnmpStats {
    /// Datagrams given to [`Agent::handle_request`].
    pub requests: u32,
    /// Responses produced (including error responses).
    pub replies: u32,
    /// Responses with a non-zero error-status.
    pub error_replies: u32,
    /// Dropped: unknown community.
    pub dropped_bad_community: u32,
    /// Dropped: malformed message.
    pub dropped_parse_error: u32,
    /// Dropped: SNMP version not v1/v2c.
    pub dropped_unsupported_version: u32,
    /// Dropped: PDU type the agent does not answer.
    pub dropped_unsupported_pdu: u32,
    /// Dropped: request too long, or response buffer too small even for `tooBig`.
    pub dropped_too_big: u32,
    /// Switch replies that matched no pending SET.
    pub unexpected_switch_replies: u32,
    /// Switch requests handed out.
    pub switch_requests: u32,
    /// Switch requests refused by SwitchTask or timed out.
    pub switch_failures: u32,
    /// Pending SETs abandoned by a newer request.
    pub abandoned_sets: u32,
}

/// Which community matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AccessLevel {
    Read,
    Write,
}

fn access_level(community: &[u8], cfg: &SnmpConfig) -> Option<AccessLevel> {
    // Write first: when both are configured the same, that community may write.
    if community == cfg.write_community.as_bytes() {
        Some(AccessLevel::Write)
    } else if community == cfg.read_community.as_bytes() {
        Some(AccessLevel::Read)
    } else {
        None
    }
}

/// The request fields every response repeats.
#[derive(Debug, Clone, Copy)]
struct Ctx<'a> {
    version: Version,
    community: &'a [u8],
    request_id: i32,
}

impl<'a> Ctx<'a> {
    fn header(&self, error_status: ErrorStatus, error_index: usize) -> ResponseHeader<'a> {
        ResponseHeader {
            version: self.version,
            community: self.community,
            request_id: self.request_id,
            error_status,
            error_index: u32::try_from(error_index).unwrap_or(u32::MAX),
        }
    }
}

/// One write of a validated SET.
#[derive(Debug, Clone, Copy)]
struct SetItem {
    object: Object,
    value: i32,
    request: Option<SwitchRequest>,
}

/// A SET waiting for SwitchTask.
#[derive(Debug, Clone)]
struct PendingSet {
    version: Version,
    community: heapless::Vec<u8, MAX_COMMUNITY>,
    request_id: i32,
    items: heapless::Vec<SetItem, MAX_SET_VARBINDS>,
    /// Index of the item whose switch request is out.
    current: usize,
    applied_any: bool,
    outlets: OutletMask,
    deadline: Instant,
}

/// The SNMP agent. Holds no buffers of its own beyond one pending SET; see the module docs
/// for the call order.
#[derive(Debug, Default)]
pub struct Agent {
    stats: SnmpStats,
    pending: Option<PendingSet>,
    next_token: u32,
}

impl Agent {
    /// A fresh agent.
    pub fn new() -> Self {
        Agent::default()
    }

    /// The counters.
    pub fn stats(&self) -> &SnmpStats {
        &self.stats
    }

    /// When a pending SET must be given up ([`Agent::handle_timeout`]), if one is pending.
    pub fn pending_deadline(&self) -> Option<Instant> {
        self.pending.as_ref().map(|p| p.deadline)
    }

    /// Handle one datagram. `out` receives the response; [`MAX_REQUEST_LEN`] bytes is enough
    /// for everything except the largest GETBULK answers, which are cut to fit.
    pub fn handle_request(
        &mut self,
        datagram: &[u8],
        snapshot: &Snapshot,
        now: Instant,
        out: &mut [u8],
    ) -> Outcome {
        self.stats.requests = self.stats.requests.wrapping_add(1);
        if self.pending.take().is_some() {
            self.stats.abandoned_sets = self.stats.abandoned_sets.wrapping_add(1);
            warn!("snmp: pending SET abandoned by a new request");
        }
        let outcome = self.dispatch(datagram, snapshot, now, out);
        if let Outcome::Drop(reason) = outcome {
            self.count_drop(reason);
        }
        outcome
    }

    fn count_drop(&mut self, reason: DropReason) {
        debug!("snmp: dropped: {:?}", reason);
        let s = &mut self.stats;
        let counter = match reason {
            DropReason::BadCommunity => &mut s.dropped_bad_community,
            DropReason::ParseError(_) => &mut s.dropped_parse_error,
            DropReason::UnsupportedVersion => &mut s.dropped_unsupported_version,
            DropReason::UnsupportedPdu => &mut s.dropped_unsupported_pdu,
            DropReason::TooBig => &mut s.dropped_too_big,
            DropReason::UnexpectedSwitchReply => &mut s.unexpected_switch_replies,
        };
        *counter = counter.wrapping_add(1);
    }

    fn dispatch(
        &mut self,
        datagram: &[u8],
        snap: &Snapshot,
        now: Instant,
        out: &mut [u8],
    ) -> Outcome {
        if datagram.len() > MAX_REQUEST_LEN {
            return Outcome::Drop(DropReason::TooBig);
        }
        let version = match Header::peek_version(datagram) {
            Ok(0) => Version::V1,
            Ok(1) => Version::V2c,
            Ok(_) => return Outcome::Drop(DropReason::UnsupportedVersion),
            Err(e) => return Outcome::Drop(DropReason::ParseError(e)),
        };
        let header = match Header::parse(datagram) {
            Ok(h) => h,
            Err(e) => return Outcome::Drop(DropReason::ParseError(e)),
        };
        let Some(access) = access_level(header.community, &snap.config.snmp) else {
            return Outcome::Drop(DropReason::BadCommunity);
        };
        match (header.pdu_tag, version) {
            (PDU_GET | PDU_GET_NEXT | PDU_SET, _) | (PDU_GET_BULK, Version::V2c) => {}
            _ => return Outcome::Drop(DropReason::UnsupportedPdu),
        }
        let pdu = match RequestPdu::parse(header.pdu) {
            Ok(p) => p,
            Err(e) => return Outcome::Drop(DropReason::ParseError(e)),
        };
        let ctx = Ctx {
            version,
            community: header.community,
            request_id: pdu.request_id,
        };
        let list = pdu.varbinds;
        if list.len() > MAX_VARBINDS {
            return self.too_big(&ctx, list.raw(), out);
        }
        match header.pdu_tag {
            PDU_GET => self.get(&ctx, &list, snap, out),
            PDU_GET_NEXT => self.get_next(&ctx, &list, snap, out),
            PDU_GET_BULK => self.get_bulk(&ctx, &list, pdu.field1, pdu.field2, snap, out),
            _ => self.set(&ctx, access, &list, now, out),
        }
    }

    /// Count a produced response and turn an emit failure into `tooBig`.
    fn finish(
        &mut self,
        result: Result<usize, BerError>,
        ctx: &Ctx<'_>,
        status: ErrorStatus,
        echo: &[u8],
        out: &mut [u8],
    ) -> Outcome {
        match result {
            Ok(n) => {
                self.count_reply(status);
                Outcome::Reply(n)
            }
            // Only `BufferFull` can come out of emitting.
            Err(_) => self.too_big(ctx, echo, out),
        }
    }

    fn count_reply(&mut self, status: ErrorStatus) {
        self.stats.replies = self.stats.replies.wrapping_add(1);
        if status != ErrorStatus::NoError {
            self.stats.error_replies = self.stats.error_replies.wrapping_add(1);
        }
    }

    /// The `tooBig` answer: v1 echoes the request's varbinds (RFC 1157 4.1.2), v2c sends none
    /// (RFC 3416 4.2.1). When even that does not fit, v1 falls back to no varbinds, then drop.
    fn too_big(&mut self, ctx: &Ctx<'_>, echo: &[u8], out: &mut [u8]) -> Outcome {
        let header = ctx.header(ErrorStatus::TooBig, 0);
        let echoed = match ctx.version {
            Version::V1 => emit_response(out, &header, |w| w.raw(echo)).ok(),
            Version::V2c => None,
        };
        match echoed.or_else(|| emit_response(out, &header, |_| Ok(())).ok()) {
            Some(n) => {
                self.count_reply(ErrorStatus::TooBig);
                Outcome::Reply(n)
            }
            None => Outcome::Drop(DropReason::TooBig),
        }
    }

    /// An error response that echoes the request's varbinds.
    fn error(
        &mut self,
        ctx: &Ctx<'_>,
        status: ErrorStatus,
        index: usize,
        list: &VarBindList<'_>,
        out: &mut [u8],
    ) -> Outcome {
        debug!("snmp: error {:?} at varbind {}", status, index);
        let res = emit_response(out, &ctx.header(status, index), |w| w.raw(list.raw()));
        self.finish(res, ctx, status, list.raw(), out)
    }

    fn get(
        &mut self,
        ctx: &Ctx<'_>,
        list: &VarBindList<'_>,
        snap: &Snapshot,
        out: &mut [u8],
    ) -> Outcome {
        if ctx.version == Version::V1
            && let Some(i) = list.iter().position(|vb| Object::find(&vb.name).is_none())
        {
            return self.error(ctx, ErrorStatus::NoSuchName, i + 1, list, out);
        }
        let res = emit_response(out, &ctx.header(ErrorStatus::NoError, 0), |w| {
            for vb in list.iter() {
                let name = Name::Raw(vb.name_raw);
                match Object::find(&vb.name) {
                    Some(o) => emit_object(w, name, o, snap)?,
                    None if Object::is_instance_of_known_type(&vb.name) => {
                        emit_varbind(w, name, &Value::NoSuchInstance)?
                    }
                    None => emit_varbind(w, name, &Value::NoSuchObject)?,
                }
            }
            Ok(())
        });
        self.finish(res, ctx, ErrorStatus::NoError, list.raw(), out)
    }

    fn get_next(
        &mut self,
        ctx: &Ctx<'_>,
        list: &VarBindList<'_>,
        snap: &Snapshot,
        out: &mut [u8],
    ) -> Outcome {
        if ctx.version == Version::V1
            && let Some(i) = list
                .iter()
                .position(|vb| Object::next_after(&vb.name).is_none())
        {
            return self.error(ctx, ErrorStatus::NoSuchName, i + 1, list, out);
        }
        let res = emit_response(out, &ctx.header(ErrorStatus::NoError, 0), |w| {
            for vb in list.iter() {
                match Object::next_after(&vb.name) {
                    Some(o) => emit_object(w, Name::Oid(&o.oid()), o, snap)?,
                    None => emit_varbind(w, Name::Raw(vb.name_raw), &Value::EndOfMibView)?,
                }
            }
            Ok(())
        });
        self.finish(res, ctx, ErrorStatus::NoError, list.raw(), out)
    }

    fn get_bulk(
        &mut self,
        ctx: &Ctx<'_>,
        list: &VarBindList<'_>,
        non_repeaters: i32,
        max_repetitions: i32,
        snap: &Snapshot,
        out: &mut [u8],
    ) -> Outcome {
        // RFC 3416 4.2.3: negative values count as zero.
        let n = usize::try_from(non_repeaters).unwrap_or(0).min(list.len());
        let m = usize::try_from(max_repetitions).unwrap_or(0);
        // Each repeater column as the index of its next object (OBJECT_COUNT = past the end).
        let mut columns: heapless::Vec<usize, MAX_VARBINDS> = heapless::Vec::new();
        for vb in list.iter().skip(n) {
            let start = Object::iter()
                .position(|o| o.oid() > vb.name)
                .unwrap_or(OBJECT_COUNT);
            // `list.len() <= MAX_VARBINDS` was checked by the caller.
            let _ = columns.push(start);
        }
        let last_oid = Object::nth(OBJECT_COUNT - 1).map(Object::oid);
        let res = emit_response(out, &ctx.header(ErrorStatus::NoError, 0), |w| {
            let full = |r: Result<(), BerError>| r.is_err();
            for vb in list.iter().take(n) {
                let r = match Object::next_after(&vb.name) {
                    Some(o) => emit_object(w, Name::Oid(&o.oid()), o, snap),
                    None => emit_varbind(w, Name::Raw(vb.name_raw), &Value::EndOfMibView),
                };
                if full(r) {
                    return Ok(());
                }
            }
            for rep in 0..m {
                if columns.is_empty() {
                    break;
                }
                let mut all_ended = true;
                for (start, vb) in columns.iter().zip(list.iter().skip(n)) {
                    let idx = start.saturating_add(rep);
                    let r = match Object::nth(idx) {
                        Some(o) => {
                            all_ended = false;
                            emit_object(w, Name::Oid(&o.oid()), o, snap)
                        }
                        // The column walked off the end: repeat its last name.
                        None => match (&last_oid, *start < OBJECT_COUNT) {
                            (Some(last), true) => {
                                emit_varbind(w, Name::Oid(last), &Value::EndOfMibView)
                            }
                            _ => emit_varbind(w, Name::Raw(vb.name_raw), &Value::EndOfMibView),
                        },
                    };
                    if full(r) {
                        return Ok(());
                    }
                }
                if all_ended {
                    break;
                }
            }
            Ok(())
        });
        self.finish(res, ctx, ErrorStatus::NoError, list.raw(), out)
    }

    fn set(
        &mut self,
        ctx: &Ctx<'_>,
        access: AccessLevel,
        list: &VarBindList<'_>,
        now: Instant,
        out: &mut [u8],
    ) -> Outcome {
        let v1 = ctx.version == Version::V1;
        let first = usize::from(!list.is_empty());
        if access == AccessLevel::Read {
            let status = if v1 {
                ErrorStatus::NoSuchName
            } else {
                ErrorStatus::NoAccess
            };
            return self.error(ctx, status, first, list, out);
        }
        if list.len() > MAX_SET_VARBINDS {
            let status = if v1 {
                ErrorStatus::GenErr
            } else {
                ErrorStatus::ResourceUnavailable
            };
            return self.error(ctx, status, 0, list, out);
        }
        let mut items: heapless::Vec<SetItem, MAX_SET_VARBINDS> = heapless::Vec::new();
        for (i, vb) in list.iter().enumerate() {
            let Some(object) = Object::find(&vb.name) else {
                let status = if v1 {
                    ErrorStatus::NoSuchName
                } else {
                    ErrorStatus::NoCreation
                };
                return self.error(ctx, status, i + 1, list, out);
            };
            let token = self.next_token;
            let plan = match object.plan_set(vb.value.tag, vb.value.content, token) {
                Ok(p) => p,
                Err(refusal) => {
                    let status = match (refusal, v1) {
                        (SetRefusal::NotWritable, true) => ErrorStatus::ReadOnly,
                        (SetRefusal::NotWritable, false) => ErrorStatus::NotWritable,
                        (_, true) => ErrorStatus::BadValue,
                        (SetRefusal::WrongType, false) => ErrorStatus::WrongType,
                        (SetRefusal::WrongEncoding, false) => ErrorStatus::WrongEncoding,
                        (SetRefusal::WrongValue, false) => ErrorStatus::WrongValue,
                    };
                    return self.error(ctx, status, i + 1, list, out);
                }
            };
            if plan.request.is_some() {
                self.next_token = self.next_token.wrapping_add(1);
            }
            // Cannot fail: at most MAX_SET_VARBINDS items, checked above.
            let _ = items.push(SetItem {
                object,
                value: plan.value,
                request: plan.request,
            });
        }
        let budget = items
            .iter()
            .filter_map(|it| it.request)
            .fold(SWITCH_REPLY_MARGIN, |acc, r| {
                acc + Duration::from_millis(u64::from(r.timeout_ms))
            });
        let mut community = heapless::Vec::new();
        // Cannot fail: the community matched a configured one, which is at most 32 bytes.
        let _ = community.extend_from_slice(ctx.community);
        self.pending = Some(PendingSet {
            version: ctx.version,
            community,
            request_id: ctx.request_id,
            items,
            current: 0,
            applied_any: false,
            outlets: OutletMask::NONE,
            deadline: now + budget,
        });
        self.advance(out)
    }

    /// Hand out the next switch request of the pending SET, or answer it when none is left.
    fn advance(&mut self, out: &mut [u8]) -> Outcome {
        let Some(mut p) = self.pending.take() else {
            return Outcome::Drop(DropReason::UnexpectedSwitchReply);
        };
        let next = p
            .items
            .iter()
            .enumerate()
            .skip(p.current)
            .find_map(|(i, it)| it.request.map(|r| (i, r)));
        if let Some((i, request)) = next {
            p.current = i;
            self.pending = Some(p);
            self.stats.switch_requests = self.stats.switch_requests.wrapping_add(1);
            return Outcome::NeedsSwitch(request);
        }
        let ctx = Ctx {
            version: p.version,
            community: &p.community,
            request_id: p.request_id,
        };
        let res = emit_response(out, &ctx.header(ErrorStatus::NoError, 0), |w| {
            for it in &p.items {
                let value = match it.object {
                    // The reply shows the outlet's state after the switch, like the real PDU.
                    Object::Outlet(o) if p.applied_any => i32::from(p.outlets.contains(o)),
                    _ => it.value,
                };
                emit_varbind(w, Name::Oid(&it.object.oid()), &Value::Integer(value))?;
            }
            Ok(())
        });
        self.finish(res, &ctx, ErrorStatus::NoError, &[], out)
    }

    /// Feed SwitchTask's reply to the request of the last [`Outcome::NeedsSwitch`].
    pub fn complete(&mut self, reply: &SwitchReply, out: &mut [u8]) -> Outcome {
        let awaited = self
            .pending
            .as_ref()
            .and_then(|p| p.items.get(p.current))
            .and_then(|it| it.request)
            .map(|r| r.token);
        if awaited != Some(reply.token) {
            self.count_drop(DropReason::UnexpectedSwitchReply);
            return Outcome::Drop(DropReason::UnexpectedSwitchReply);
        }
        if reply.status == SwitchStatus::Ok {
            if let Some(p) = self.pending.as_mut() {
                p.outlets = reply.state_bitmap;
                p.applied_any = true;
                p.current += 1;
            }
            return self.advance(out);
        }
        warn!("snmp: SET refused by SwitchTask: {:?}", reply.status);
        self.fail_pending(false, out)
    }

    /// Give up a pending SET whose deadline has passed; answers `genErr`. Returns `None`
    /// when nothing is pending or the deadline is still ahead.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut [u8]) -> Option<Outcome> {
        let deadline = self.pending_deadline()?;
        if now < deadline {
            return None;
        }
        warn!("snmp: SwitchTask did not answer a SET in time");
        Some(self.fail_pending(true, out))
    }

    fn fail_pending(&mut self, timed_out: bool, out: &mut [u8]) -> Outcome {
        let Some(p) = self.pending.take() else {
            return Outcome::Drop(DropReason::UnexpectedSwitchReply);
        };
        self.stats.switch_failures = self.stats.switch_failures.wrapping_add(1);
        let status = match (p.version, timed_out, p.applied_any) {
            (Version::V1, _, _) | (Version::V2c, true, _) => ErrorStatus::GenErr,
            (Version::V2c, false, false) => ErrorStatus::CommitFailed,
            (Version::V2c, false, true) => ErrorStatus::UndoFailed,
        };
        let ctx = Ctx {
            version: p.version,
            community: &p.community,
            request_id: p.request_id,
        };
        let res = emit_response(out, &ctx.header(status, p.current + 1), |w| {
            for it in &p.items {
                emit_varbind(w, Name::Oid(&it.object.oid()), &Value::Integer(it.value))?;
            }
            Ok(())
        });
        self.finish(res, &ctx, status, &[], out)
    }
}

/// Emit `object`'s current value under `name`.
fn emit_object(
    w: &mut super::ber::Writer<'_>,
    name: Name<'_>,
    object: Object,
    snap: &Snapshot,
) -> Result<(), BerError> {
    let value = object.read(snap);
    let v = match &value {
        MibValue::Integer(i) => Value::Integer(*i),
        MibValue::Text(s) => Value::OctetString(s.as_bytes()),
        MibValue::ObjectId(o) => Value::ObjectId(o),
        MibValue::TimeTicks(t) => Value::TimeTicks(*t),
    };
    emit_varbind(w, name, &v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdu::Outlet;
    use crate::pdu::SwitchOp;
    use crate::pdu::snmp::ber::{
        Oid, Reader, TAG_END_OF_MIB_VIEW, TAG_INTEGER, TAG_NO_SUCH_INSTANCE, TAG_NO_SUCH_OBJECT,
        TAG_NULL, TAG_OCTET_STRING, TAG_OID, TAG_SEQUENCE, TAG_TIMETICKS, Writer,
    };
    use crate::pdu::snmp::message::{PDU_RESPONSE, PDU_TRAP_V2, tests::NET_SNMP_V1_GET_SYSDESCR};
    use crate::pdu::snmp::mib;
    use crate::pdu::snmp::mib::tests::snapshot;
    use proptest::prelude::*;

    const V1: i64 = 0;
    const V2C: i64 = 1;
    const ENT: [u32; 7] = [1, 3, 6, 1, 4, 1, 19865];

    /// A value in a test request.
    #[derive(Clone, Debug)]
    enum Tv {
        Null,
        Int(i64),
        Str(&'static [u8]),
    }

    /// A value in a decoded response.
    #[derive(Clone, Debug, PartialEq)]
    enum Rv {
        Int(i64),
        Str(String),
        Oid(Vec<u32>),
        Ticks(u32),
        Null,
        NoSuchObject,
        NoSuchInstance,
        EndOfMibView,
        Other(u8, Vec<u8>),
    }

    #[derive(Debug)]
    struct Resp {
        version: i64,
        community: Vec<u8>,
        request_id: i64,
        status: i64,
        index: i64,
        vbs: Vec<(Vec<u32>, Rv)>,
    }

    fn ent(tail: &[u32]) -> Vec<u32> {
        let mut v = ENT.to_vec();
        v.extend_from_slice(tail);
        v
    }

    /// Test-side request encoder (uses the crate's writer; `message::tests` pins its bytes
    /// against a net-snmp capture).
    fn request(
        version: i64,
        community: &[u8],
        tag: u8,
        request_id: i64,
        f1: i64,
        f2: i64,
        vbs: &[(Vec<u32>, Tv)],
    ) -> Vec<u8> {
        let mut buf = vec![0u8; 4096];
        let mut w = Writer::new(&mut buf);
        let msg = w.begin().unwrap();
        w.int(TAG_INTEGER, version).unwrap();
        w.tlv(TAG_OCTET_STRING, community).unwrap();
        let pdu = w.begin().unwrap();
        w.int(TAG_INTEGER, request_id).unwrap();
        w.int(TAG_INTEGER, f1).unwrap();
        w.int(TAG_INTEGER, f2).unwrap();
        let list = w.begin().unwrap();
        for (name, value) in vbs {
            let vb = w.begin().unwrap();
            w.tlv(TAG_OID, &encode_oid(name)).unwrap();
            match value {
                Tv::Null => w.tlv(TAG_NULL, &[]).unwrap(),
                Tv::Int(i) => w.int(TAG_INTEGER, *i).unwrap(),
                Tv::Str(s) => w.tlv(TAG_OCTET_STRING, s).unwrap(),
            }
            w.end(vb, TAG_SEQUENCE).unwrap();
        }
        w.end(list, TAG_SEQUENCE).unwrap();
        w.end(pdu, tag).unwrap();
        w.end(msg, TAG_SEQUENCE).unwrap();
        let n = w.len();
        buf.truncate(n);
        buf
    }

    /// Test-side OID encoder (independent of `Oid::encode`; no length bound).
    fn encode_oid(arcs: &[u32]) -> Vec<u8> {
        let mut out = vec![(arcs[0] * 40 + arcs[1]) as u8];
        for &a in &arcs[2..] {
            let mut groups = vec![(a & 0x7F) as u8];
            let mut rest = a >> 7;
            while rest > 0 {
                groups.push((rest & 0x7F) as u8 | 0x80);
                rest >>= 7;
            }
            out.extend(groups.iter().rev());
        }
        out
    }

    fn get(version: i64, community: &[u8], names: &[Vec<u32>]) -> Vec<u8> {
        let vbs: Vec<_> = names.iter().map(|n| (n.clone(), Tv::Null)).collect();
        request(version, community, PDU_GET, 42, 0, 0, &vbs)
    }

    fn get_next(version: i64, names: &[Vec<u32>]) -> Vec<u8> {
        let vbs: Vec<_> = names.iter().map(|n| (n.clone(), Tv::Null)).collect();
        request(version, b"public", PDU_GET_NEXT, 43, 0, 0, &vbs)
    }

    fn bulk(non_rep: i64, max_rep: i64, names: &[Vec<u32>]) -> Vec<u8> {
        let vbs: Vec<_> = names.iter().map(|n| (n.clone(), Tv::Null)).collect();
        request(V2C, b"public", PDU_GET_BULK, 44, non_rep, max_rep, &vbs)
    }

    fn set(version: i64, community: &[u8], vbs: &[(Vec<u32>, Tv)]) -> Vec<u8> {
        request(version, community, PDU_SET, 45, 0, 0, vbs)
    }

    fn int_of(content: &[u8]) -> i64 {
        assert!(!content.is_empty() && content.len() <= 8, "bad INTEGER");
        let mut v = i64::from(content[0] as i8);
        for &b in &content[1..] {
            v = (v << 8) | i64::from(b);
        }
        v
    }

    /// Test-side response decoder; panics on anything that is not a well-formed Response.
    #[track_caller]
    fn decode(bytes: &[u8]) -> Resp {
        let mut outer = Reader::new(bytes);
        let msg = outer.expect(TAG_SEQUENCE).unwrap();
        outer.finish().unwrap();
        let mut r = Reader::new(msg);
        let version = int_of(r.expect(TAG_INTEGER).unwrap());
        let community = r.expect(TAG_OCTET_STRING).unwrap().to_vec();
        let pdu = r.expect(PDU_RESPONSE).unwrap();
        r.finish().unwrap();
        let mut p = Reader::new(pdu);
        let request_id = int_of(p.expect(TAG_INTEGER).unwrap());
        let status = int_of(p.expect(TAG_INTEGER).unwrap());
        let index = int_of(p.expect(TAG_INTEGER).unwrap());
        let mut list = Reader::new(p.expect(TAG_SEQUENCE).unwrap());
        p.finish().unwrap();
        let mut vbs = Vec::new();
        while !list.is_empty() {
            let mut vb = Reader::new(list.expect(TAG_SEQUENCE).unwrap());
            let name = Oid::decode(vb.expect(TAG_OID).unwrap()).unwrap();
            let v = vb.read().unwrap();
            vb.finish().unwrap();
            let value = match v.tag {
                TAG_INTEGER if (1..=8).contains(&v.content.len()) => Rv::Int(int_of(v.content)),
                TAG_OCTET_STRING => Rv::Str(String::from_utf8_lossy(v.content).into_owned()),
                TAG_OID => match Oid::decode(v.content) {
                    Ok(o) => Rv::Oid(o.arcs().to_vec()),
                    Err(_) => Rv::Other(TAG_OID, v.content.to_vec()),
                },
                TAG_TIMETICKS if (1..=8).contains(&v.content.len()) => {
                    Rv::Ticks(int_of(v.content) as u32)
                }
                // Empty content only: anything else is reported as `Other` and fails the
                // exact comparisons the tests make.
                TAG_NULL if v.content.is_empty() => Rv::Null,
                TAG_NO_SUCH_OBJECT if v.content.is_empty() => Rv::NoSuchObject,
                TAG_NO_SUCH_INSTANCE if v.content.is_empty() => Rv::NoSuchInstance,
                TAG_END_OF_MIB_VIEW if v.content.is_empty() => Rv::EndOfMibView,
                // Error responses echo whatever the request carried.
                t => Rv::Other(t, v.content.to_vec()),
            };
            vbs.push((name.arcs().to_vec(), value));
        }
        Resp {
            version,
            community,
            request_id,
            status,
            index,
            vbs,
        }
    }

    struct Bench {
        agent: Agent,
        snap: Snapshot,
        out: Vec<u8>,
    }

    fn bench() -> Bench {
        Bench {
            agent: Agent::new(),
            snap: snapshot(),
            out: vec![0; MAX_REQUEST_LEN],
        }
    }

    impl Bench {
        fn handle(&mut self, bytes: &[u8]) -> Outcome {
            self.agent.handle_request(
                bytes,
                &self.snap,
                Instant::from_millis(1_000),
                &mut self.out,
            )
        }

        #[track_caller]
        fn reply(&mut self, bytes: &[u8]) -> Resp {
            match self.handle(bytes) {
                Outcome::Reply(n) => decode(&self.out[..n]),
                other => panic!("expected a reply, got {other:?}"),
            }
        }

        #[track_caller]
        fn needs_switch(&mut self, bytes: &[u8]) -> SwitchRequest {
            match self.handle(bytes) {
                Outcome::NeedsSwitch(r) => r,
                other => panic!("expected a switch request, got {other:?}"),
            }
        }

        #[track_caller]
        fn complete(&mut self, reply: SwitchReply) -> Outcome {
            self.agent.complete(&reply, &mut self.out)
        }

        #[track_caller]
        fn complete_reply(&mut self, reply: SwitchReply) -> Resp {
            match self.complete(reply) {
                Outcome::Reply(n) => decode(&self.out[..n]),
                other => panic!("expected a reply, got {other:?}"),
            }
        }
    }

    fn ok(request: &SwitchRequest, bitmap: u8) -> SwitchReply {
        SwitchReply {
            status: SwitchStatus::Ok,
            state_bitmap: OutletMask(bitmap),
            fault_code: 0,
            token: request.token,
        }
    }

    fn refused(request: &SwitchRequest, status: SwitchStatus) -> SwitchReply {
        SwitchReply {
            status,
            state_bitmap: OutletMask(0),
            fault_code: 0,
            token: request.token,
        }
    }

    fn sys(n: u32) -> Vec<u32> {
        vec![1, 3, 6, 1, 2, 1, 1, n, 0]
    }

    fn outlet_oid(n: u32) -> Vec<u32> {
        ent(&[2, n, 0])
    }

    fn outlet(n: u8) -> Outlet {
        Outlet::new(n).unwrap()
    }

    #[test]
    fn net_snmp_v1_get_of_sys_descr_is_answered() {
        let mut b = bench();
        let r = b.reply(&NET_SNMP_V1_GET_SYSDESCR);
        assert_eq!(r.version, V1);
        assert_eq!(r.community, b"public");
        assert_eq!(r.request_id, 0x1234_5678);
        assert_eq!((r.status, r.index), (0, 0));
        assert_eq!(r.vbs, vec![(sys(1), Rv::Str(mib::SYS_DESCR.into()))]);
        assert_eq!(b.agent.stats().replies, 1);
    }

    #[test]
    fn get_returns_every_system_object_with_its_type() {
        let mut b = bench();
        let names: Vec<_> = (1..=7).map(sys).collect();
        let r = b.reply(&get(V2C, b"public", &names));
        assert_eq!(r.version, V2C);
        let values: Vec<Rv> = r.vbs.iter().map(|(_, v)| v.clone()).collect();
        assert_eq!(
            values,
            vec![
                Rv::Str("ENERGIS 10IN MANAGED PDU".into()),
                Rv::Oid(ENT.to_vec()),
                Rv::Ticks(12_345),
                Rv::Str(mib::SYS_CONTACT.into()),
                Rv::Str("SN-0001234".into()),
                Rv::Str("Wien".into()),
                Rv::Int(72),
            ]
        );
        let names_back: Vec<_> = r.vbs.iter().map(|(n, _)| n.clone()).collect();
        assert_eq!(names_back, names);
    }

    #[test]
    fn get_reads_outlets_and_meter_strings() {
        let mut b = bench();
        let r = b.reply(&get(
            V1,
            b"public",
            &[
                outlet_oid(1),
                outlet_oid(2),
                ent(&[5, 1, 1, 0]),
                ent(&[4, 1, 0]),
            ],
        ));
        let values: Vec<Rv> = r.vbs.into_iter().map(|(_, v)| v).collect();
        assert_eq!(
            values,
            vec![
                Rv::Int(1),
                Rv::Int(0),
                Rv::Str("233.57".into()),
                Rv::Str("192.168.0.22".into())
            ]
        );
    }

    #[test]
    fn request_id_is_echoed_including_negative_ones() {
        let mut b = bench();
        let bytes = request(V2C, b"public", PDU_GET, -5, 0, 0, &[(sys(7), Tv::Null)]);
        assert_eq!(b.reply(&bytes).request_id, -5);
    }

    #[test]
    fn v1_get_of_an_unknown_name_answers_no_such_name_with_its_index_and_echoes_the_request() {
        let mut b = bench();
        let r = b.reply(&get(V1, b"public", &[sys(1), ent(&[2, 0])]));
        assert_eq!((r.status, r.index), (ErrorStatus::NoSuchName as i64, 2));
        assert_eq!(
            r.vbs,
            vec![(sys(1), Rv::Null), (ent(&[2, 0]), Rv::Null)],
            "v1 error responses echo the request's varbinds"
        );
        assert_eq!(b.agent.stats().error_replies, 1);
    }

    #[test]
    fn v2c_get_of_unknown_names_answers_per_varbind_exceptions() {
        let mut b = bench();
        let r = b.reply(&get(
            V2C,
            b"public",
            &[ent(&[2, 0]), ent(&[2, 1, 5]), sys(7), vec![1, 3, 6, 1, 9]],
        ));
        assert_eq!((r.status, r.index), (0, 0));
        assert_eq!(
            r.vbs,
            vec![
                (ent(&[2, 0]), Rv::NoSuchObject),
                (ent(&[2, 1, 5]), Rv::NoSuchInstance),
                (sys(7), Rv::Int(72)),
                (vec![1, 3, 6, 1, 9], Rv::NoSuchObject),
            ]
        );
    }

    #[test]
    fn get_next_returns_the_lexicographic_successor() {
        let mut b = bench();
        let r = b.reply(&get_next(
            V2C,
            &[
                ent(&[2, 9, 0]),
                ent(&[2]),
                sys(7),
                vec![1, 3, 6, 1, 4, 1, 19865, 5, 8, 6, 0],
            ],
        ));
        let names: Vec<_> = r.vbs.iter().map(|(n, _)| n.clone()).collect();
        assert_eq!(
            names,
            vec![
                ent(&[2, 10, 0]),
                ent(&[2, 1, 0]),
                ent(&[1, 0]),
                ent(&[6, 1, 0])
            ]
        );
    }

    #[test]
    fn get_next_from_a_name_longer_than_32_arcs_still_moves_forward() {
        let mut b = bench();
        let mut long = ent(&[2, 3]);
        long.extend(std::iter::repeat_n(7, 40));
        let r = b.reply(&get_next(V2C, &[long]));
        assert_eq!(r.vbs[0].0, ent(&[2, 4, 0]));
    }

    #[track_caller]
    fn walk(version: i64) -> (Vec<Vec<u32>>, Resp) {
        let mut b = bench();
        let mut name = vec![1, 3, 6, 1];
        let mut seen = Vec::new();
        for _ in 0..=OBJECT_COUNT + 1 {
            let r = b.reply(&get_next(version, &[name.clone()]));
            if r.status != 0 || r.vbs[0].1 == Rv::EndOfMibView {
                return (seen, r);
            }
            let next = r.vbs[0].0.clone();
            assert!(next > name, "walk went backwards: {next:?} after {name:?}");
            seen.push(next.clone());
            name = next;
        }
        panic!("walk did not end");
    }

    #[test]
    fn v2c_walk_from_1_3_6_1_visits_every_object_in_order_and_ends_with_end_of_mib_view() {
        let (seen, last) = walk(V2C);
        let all: Vec<Vec<u32>> = Object::iter().map(|o| o.oid().arcs().to_vec()).collect();
        assert_eq!(seen, all);
        assert_eq!(last.status, 0);
        assert_eq!(last.vbs, vec![(ent(&[6, 11, 0]), Rv::EndOfMibView)]);
    }

    #[test]
    fn v1_walk_from_1_3_6_1_visits_every_object_in_order_and_ends_with_no_such_name() {
        let (seen, last) = walk(V1);
        assert_eq!(seen.len(), OBJECT_COUNT);
        assert_eq!(
            (last.status, last.index),
            (ErrorStatus::NoSuchName as i64, 1)
        );
        assert_eq!(last.vbs, vec![(ent(&[6, 11, 0]), Rv::Null)]);
    }

    #[test]
    fn get_bulk_answers_non_repeaters_once_then_repeaters_max_repetitions_times() {
        let mut b = bench();
        let r = b.reply(&bulk(1, 3, &[sys(0), ent(&[2]), ent(&[4])]));
        let names: Vec<_> = r.vbs.iter().map(|(n, _)| n.clone()).collect();
        assert_eq!(
            names,
            vec![
                sys(1),
                ent(&[2, 1, 0]),
                ent(&[4, 1, 0]),
                ent(&[2, 2, 0]),
                ent(&[4, 2, 0]),
                ent(&[2, 3, 0]),
                ent(&[4, 3, 0]),
            ]
        );
    }

    #[test]
    fn get_bulk_stops_once_every_repeater_reached_end_of_mib_view() {
        let mut b = bench();
        let r = b.reply(&bulk(0, 50, &[ent(&[6, 9, 0])]));
        assert_eq!(
            r.vbs,
            vec![
                (ent(&[6, 10, 0]), Rv::Int(1)),
                (ent(&[6, 11, 0]), Rv::Int(0)),
                (ent(&[6, 11, 0]), Rv::EndOfMibView),
            ]
        );
    }

    #[test]
    fn get_bulk_with_negative_fields_treats_them_as_zero() {
        let mut b = bench();
        let r = b.reply(&bulk(-3, -1, &[sys(0)]));
        assert_eq!(r.status, 0);
        assert!(r.vbs.is_empty());
    }

    #[test]
    fn get_bulk_never_exceeds_the_buffer_and_returns_whole_varbinds() {
        let request = bulk(0, 10_000, &[vec![1, 3, 6, 1]]);
        let mut previous = 0;
        for size in (60..=MAX_REQUEST_LEN).step_by(37) {
            let mut b = bench();
            b.out = vec![0; size];
            let r = match b.handle(&request) {
                Outcome::Reply(n) => {
                    assert!(n <= size);
                    decode(&b.out[..n])
                }
                other => panic!("size {size}: {other:?}"),
            };
            assert_eq!(r.status, 0);
            assert!(
                r.vbs.len() >= previous,
                "a larger buffer returned fewer varbinds"
            );
            previous = r.vbs.len();
            let all: Vec<Vec<u32>> = Object::iter().map(|o| o.oid().arcs().to_vec()).collect();
            let names: Vec<_> = r.vbs.iter().map(|(n, _)| n.clone()).collect();
            assert_eq!(names[..], all[..names.len().min(all.len())]);
        }
        assert!(previous > 20, "a full buffer should carry many varbinds");
    }

    #[test]
    fn v1_get_bulk_is_dropped() {
        let mut b = bench();
        let bytes = request(V1, b"public", PDU_GET_BULK, 1, 0, 5, &[(sys(0), Tv::Null)]);
        assert_eq!(b.handle(&bytes), Outcome::Drop(DropReason::UnsupportedPdu));
        assert_eq!(b.agent.stats().dropped_unsupported_pdu, 1);
    }

    #[test]
    fn unknown_community_gets_no_reply_and_is_counted() {
        let mut b = bench();
        assert_eq!(
            b.handle(&get(V2C, b"secret", &[sys(1)])),
            Outcome::Drop(DropReason::BadCommunity)
        );
        assert_eq!(b.agent.stats().dropped_bad_community, 1);
        assert_eq!(b.agent.stats().replies, 0);
    }

    #[test]
    fn write_community_may_read() {
        let mut b = bench();
        let r = b.reply(&get(V1, b"private", &[sys(7)]));
        assert_eq!(r.community, b"private");
        assert_eq!(r.vbs[0].1, Rv::Int(72));
    }

    #[test]
    fn communities_come_from_the_configuration() {
        let mut b = bench();
        b.snap.config.snmp.read_community.clear();
        b.snap.config.snmp.read_community.push_str("ro").unwrap();
        assert_eq!(
            b.handle(&get(V1, b"public", &[sys(7)])),
            Outcome::Drop(DropReason::BadCommunity)
        );
        assert_eq!(b.reply(&get(V1, b"ro", &[sys(7)])).status, 0);
    }

    #[test]
    fn set_with_the_read_community_is_refused_without_switching() {
        let mut b = bench();
        let vbs = [(outlet_oid(2), Tv::Int(1))];
        let r = b.reply(&set(V1, b"public", &vbs));
        assert_eq!((r.status, r.index), (ErrorStatus::NoSuchName as i64, 1));
        let r = b.reply(&set(V2C, b"public", &vbs));
        assert_eq!((r.status, r.index), (ErrorStatus::NoAccess as i64, 1));
        assert_eq!(r.vbs, vec![(outlet_oid(2), Rv::Int(1))]);
        assert_eq!(b.agent.stats().switch_requests, 0);
    }

    #[test]
    fn set_outlet_asks_switch_task_and_the_reply_shows_the_new_state() {
        let mut b = bench();
        let req = b.needs_switch(&set(V1, b"private", &[(outlet_oid(2), Tv::Int(1))]));
        assert_eq!(req.source, crate::pdu::Source::Net);
        assert_eq!(req.op, SwitchOp::Set);
        assert_eq!(req.channel, Some(outlet(2)));
        assert!(req.value);
        let r = b.complete_reply(ok(&req, 0b0000_0111));
        assert_eq!((r.status, r.index, r.request_id), (0, 0, 45));
        assert_eq!(r.vbs, vec![(outlet_oid(2), Rv::Int(1))]);
        assert_eq!(b.agent.pending_deadline(), None);
    }

    #[test]
    fn needs_switch_converts_to_a_switch_intent() {
        let mut b = bench();
        let outcome = b.handle(&set(V1, b"private", &[(outlet_oid(2), Tv::Int(0))]));
        let Some(Intent::Switch(r)) = outcome.intent() else {
            panic!("no intent from {outcome:?}");
        };
        assert!(!r.value);
    }

    #[test]
    fn all_off_all_on_and_ocp_reset_map_to_their_switch_ops() {
        let cases = [
            (ent(&[2, 9, 0]), SwitchOp::AllOff),
            (ent(&[2, 10, 0]), SwitchOp::AllOn),
            (ent(&[6, 11, 0]), SwitchOp::ResetOverCurrent),
        ];
        for (oid, op) in cases {
            let mut b = bench();
            let req = b.needs_switch(&set(V2C, b"private", &[(oid.clone(), Tv::Int(1))]));
            assert_eq!(req.op, op);
            let r = b.complete_reply(ok(&req, 0));
            assert_eq!(r.vbs, vec![(oid, Rv::Int(1))]);
        }
    }

    #[test]
    fn set_all_off_to_zero_is_a_no_op_answered_at_once() {
        let mut b = bench();
        let r = b.reply(&set(V2C, b"private", &[(ent(&[2, 9, 0]), Tv::Int(0))]));
        assert_eq!(r.status, 0);
        assert_eq!(b.agent.stats().switch_requests, 0);
    }

    #[test]
    fn set_of_a_read_only_object_answers_read_only_v1_and_not_writable_v2c() {
        let mut b = bench();
        let vbs = [(sys(5), Tv::Str(b"x"))];
        let r = b.reply(&set(V1, b"private", &vbs));
        assert_eq!((r.status, r.index), (ErrorStatus::ReadOnly as i64, 1));
        let r = b.reply(&set(V2C, b"private", &vbs));
        assert_eq!((r.status, r.index), (ErrorStatus::NotWritable as i64, 1));
    }

    #[test]
    fn set_of_an_unknown_name_answers_no_such_name_v1_and_no_creation_v2c() {
        let mut b = bench();
        let vbs = [(ent(&[2, 11, 0]), Tv::Int(1))];
        let r = b.reply(&set(V1, b"private", &vbs));
        assert_eq!((r.status, r.index), (ErrorStatus::NoSuchName as i64, 1));
        let r = b.reply(&set(V2C, b"private", &vbs));
        assert_eq!((r.status, r.index), (ErrorStatus::NoCreation as i64, 1));
    }

    #[test]
    fn set_with_a_wrong_type_or_value_answers_bad_value_v1_and_wrong_type_or_value_v2c() {
        let mut b = bench();
        let wrong_type = [(outlet_oid(1), Tv::Str(b"1"))];
        let wrong_value = [(outlet_oid(1), Tv::Int(2))];
        let status = |b: &mut Bench, v, vbs: &[(Vec<u32>, Tv)]| {
            let r = b.reply(&set(v, b"private", vbs));
            (r.status, r.index)
        };
        assert_eq!(
            status(&mut b, V1, &wrong_type),
            (ErrorStatus::BadValue as i64, 1)
        );
        assert_eq!(
            status(&mut b, V1, &wrong_value),
            (ErrorStatus::BadValue as i64, 1)
        );
        assert_eq!(
            status(&mut b, V2C, &wrong_type),
            (ErrorStatus::WrongType as i64, 1)
        );
        assert_eq!(
            status(&mut b, V2C, &wrong_value),
            (ErrorStatus::WrongValue as i64, 1)
        );
    }

    #[test]
    fn set_is_all_or_nothing_when_a_later_varbind_is_invalid() {
        let mut b = bench();
        let r = b.reply(&set(
            V2C,
            b"private",
            &[(outlet_oid(1), Tv::Int(0)), (sys(1), Tv::Int(1))],
        ));
        assert_eq!((r.status, r.index), (ErrorStatus::NotWritable as i64, 2));
        assert_eq!(b.agent.stats().switch_requests, 0);
        assert_eq!(b.agent.pending_deadline(), None);
    }

    #[test]
    fn set_of_two_outlets_switches_them_in_order_and_reports_both() {
        let mut b = bench();
        let first = b.needs_switch(&set(
            V2C,
            b"private",
            &[(outlet_oid(4), Tv::Int(1)), (outlet_oid(1), Tv::Int(0))],
        ));
        assert_eq!(first.channel, Some(outlet(4)));
        let Outcome::NeedsSwitch(second) = b.complete(ok(&first, 0b0000_1101)) else {
            panic!("second switch expected");
        };
        assert_eq!(second.channel, Some(outlet(1)));
        assert!(!second.value);
        assert_ne!(first.token, second.token);
        let r = b.complete_reply(ok(&second, 0b0000_1100));
        assert_eq!(
            r.vbs,
            vec![(outlet_oid(4), Rv::Int(1)), (outlet_oid(1), Rv::Int(0))]
        );
        assert_eq!(b.agent.stats().switch_requests, 2);
    }

    #[test]
    fn a_refused_switch_answers_commit_failed_v2c_and_gen_err_v1() {
        let mut b = bench();
        let req = b.needs_switch(&set(V2C, b"private", &[(outlet_oid(3), Tv::Int(1))]));
        let r = b.complete_reply(refused(&req, SwitchStatus::OverCurrentLockout));
        assert_eq!((r.status, r.index), (ErrorStatus::CommitFailed as i64, 1));
        assert_eq!(r.vbs, vec![(outlet_oid(3), Rv::Int(1))]);
        let req = b.needs_switch(&set(V1, b"private", &[(outlet_oid(3), Tv::Int(1))]));
        let r = b.complete_reply(refused(&req, SwitchStatus::Interlocked));
        assert_eq!((r.status, r.index), (ErrorStatus::GenErr as i64, 1));
        assert_eq!(b.agent.stats().switch_failures, 2);
    }

    #[test]
    fn a_refusal_after_an_applied_write_answers_undo_failed() {
        let mut b = bench();
        let first = b.needs_switch(&set(
            V2C,
            b"private",
            &[(outlet_oid(4), Tv::Int(1)), (outlet_oid(5), Tv::Int(1))],
        ));
        let Outcome::NeedsSwitch(second) = b.complete(ok(&first, 0b0000_1101)) else {
            panic!("second switch expected");
        };
        let r = b.complete_reply(refused(&second, SwitchStatus::OverCurrentLockout));
        assert_eq!((r.status, r.index), (ErrorStatus::UndoFailed as i64, 2));
    }

    #[test]
    fn a_switch_reply_with_a_foreign_token_is_ignored_and_the_set_keeps_waiting() {
        let mut b = bench();
        let req = b.needs_switch(&set(V2C, b"private", &[(outlet_oid(3), Tv::Int(1))]));
        let mut stray = ok(&req, 0);
        stray.token = req.token.wrapping_add(99);
        assert_eq!(
            b.complete(stray),
            Outcome::Drop(DropReason::UnexpectedSwitchReply)
        );
        assert_eq!(b.complete_reply(ok(&req, 0b100)).status, 0);
        assert_eq!(
            b.complete(ok(&req, 0)),
            Outcome::Drop(DropReason::UnexpectedSwitchReply),
            "no SET pending any more"
        );
        assert_eq!(b.agent.stats().unexpected_switch_replies, 2);
    }

    #[test]
    fn a_set_without_switch_reply_answers_gen_err_at_its_deadline() {
        let mut b = bench();
        let req = b.needs_switch(&set(V2C, b"private", &[(outlet_oid(3), Tv::Int(1))]));
        let deadline = b.agent.pending_deadline().unwrap();
        assert_eq!(
            deadline,
            Instant::from_millis(1_000)
                + Duration::from_millis(u64::from(req.timeout_ms))
                + SWITCH_REPLY_MARGIN
        );
        let before = Instant::from_micros(deadline.as_micros() - 1);
        assert_eq!(b.agent.handle_timeout(before, &mut b.out), None);
        let Some(Outcome::Reply(n)) = b.agent.handle_timeout(deadline, &mut b.out) else {
            panic!("timeout should answer");
        };
        let r = decode(&b.out[..n]);
        assert_eq!((r.status, r.index), (ErrorStatus::GenErr as i64, 1));
        assert_eq!(b.agent.pending_deadline(), None);
    }

    #[test]
    fn a_new_request_abandons_a_pending_set() {
        let mut b = bench();
        let req = b.needs_switch(&set(V2C, b"private", &[(outlet_oid(3), Tv::Int(1))]));
        let _ = b.reply(&get(V2C, b"public", &[sys(1)]));
        assert_eq!(b.agent.stats().abandoned_sets, 1);
        assert_eq!(
            b.complete(ok(&req, 0)),
            Outcome::Drop(DropReason::UnexpectedSwitchReply)
        );
    }

    #[test]
    fn versions_other_than_v1_and_v2c_are_dropped() {
        let mut b = bench();
        assert_eq!(
            b.handle(&get(3, b"public", &[sys(1)])),
            Outcome::Drop(DropReason::UnsupportedVersion)
        );
        // A real v3 header: version 3, then a SEQUENCE instead of a community.
        let v3 = [
            0x30, 0x0A, 0x02, 0x01, 0x03, 0x30, 0x05, 0x02, 0x03, 0x00, 0xFF, 0xE3,
        ];
        assert_eq!(b.handle(&v3), Outcome::Drop(DropReason::UnsupportedVersion));
        assert_eq!(b.agent.stats().dropped_unsupported_version, 2);
    }

    #[test]
    fn responses_and_traps_sent_to_the_agent_are_dropped() {
        let mut b = bench();
        for tag in [PDU_RESPONSE, PDU_TRAP_V2] {
            let bytes = request(V2C, b"public", tag, 1, 0, 0, &[(sys(1), Tv::Null)]);
            assert_eq!(b.handle(&bytes), Outcome::Drop(DropReason::UnsupportedPdu));
        }
    }

    #[test]
    fn malformed_and_oversized_datagrams_are_dropped_and_counted() {
        let mut b = bench();
        let mut truncated = NET_SNMP_V1_GET_SYSDESCR.to_vec();
        truncated.pop();
        assert!(matches!(
            b.handle(&truncated),
            Outcome::Drop(DropReason::ParseError(_))
        ));
        assert!(matches!(
            b.handle(&[]),
            Outcome::Drop(DropReason::ParseError(_))
        ));
        let huge = vec![0u8; MAX_REQUEST_LEN + 1];
        assert_eq!(b.handle(&huge), Outcome::Drop(DropReason::TooBig));
        let s = b.agent.stats();
        assert_eq!(
            (s.requests, s.dropped_parse_error, s.dropped_too_big),
            (3, 2, 1)
        );
    }

    #[test]
    fn a_response_that_does_not_fit_answers_too_big() {
        let names: Vec<_> = (1..=7).map(sys).collect();
        let mut b = bench();
        b.out = vec![0; 160];
        let r = b.reply(&get(V2C, b"public", &names));
        assert_eq!((r.status, r.index), (ErrorStatus::TooBig as i64, 0));
        assert!(r.vbs.is_empty(), "v2c tooBig carries no varbinds");
        let r = b.reply(&get(V1, b"public", &names));
        assert_eq!((r.status, r.index), (ErrorStatus::TooBig as i64, 0));
        assert_eq!(r.vbs.len(), 7, "v1 tooBig echoes the request");
        b.out = vec![0; 10];
        assert_eq!(
            b.handle(&get(V1, b"public", &names)),
            Outcome::Drop(DropReason::TooBig)
        );
    }

    #[test]
    fn more_varbinds_than_the_bound_answers_too_big() {
        let mut b = bench();
        let names: Vec<_> = (0..=MAX_VARBINDS).map(|_| sys(7)).collect();
        let r = b.reply(&get(V2C, b"public", &names));
        assert_eq!(r.status, ErrorStatus::TooBig as i64);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_any_reply_is_a_valid_response(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut b = bench();
            if let Outcome::Reply(n) = b.handle(&bytes) {
                prop_assert!(n <= b.out.len());
                decode(&b.out[..n]);
            }
        }

        #[test]
        fn mutated_valid_requests_never_panic(
            which in 0usize..5,
            edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..6),
        ) {
            let base = match which {
                0 => get(V1, b"public", &[sys(1), outlet_oid(2)]),
                1 => get_next(V2C, &[ent(&[5, 3])]),
                2 => bulk(1, 10, &[sys(0), ent(&[2])]),
                3 => set(V2C, b"private", &[(outlet_oid(2), Tv::Int(1)), (ent(&[2, 9, 0]), Tv::Int(1))]),
                _ => set(V1, b"private", &[(ent(&[6, 11, 0]), Tv::Int(1))]),
            };
            let mut bytes = base;
            for (pos, byte, kind) in edits {
                let len = bytes.len();
                match kind {
                    0 if len > 0 => bytes[pos % len] = byte,
                    1 => bytes.insert(pos % (len + 1), byte),
                    _ if len > 0 => { bytes.remove(pos % len); }
                    _ => {}
                }
            }
            let mut b = bench();
            match b.handle(&bytes) {
                Outcome::Reply(n) => { decode(&b.out[..n]); }
                Outcome::NeedsSwitch(r) => {
                    if let Outcome::Reply(n) = b.complete(ok(&r, 0)) {
                        decode(&b.out[..n]);
                    }
                }
                Outcome::Drop(_) => {}
            }
        }

        #[test]
        fn replies_never_exceed_the_response_buffer(
            which in 0usize..4,
            size in 0usize..400,
        ) {
            let names: Vec<_> = (1..=7).map(sys).collect();
            let request = match which {
                0 => get(V1, b"public", &names),
                1 => get(V2C, b"public", &names),
                2 => get_next(V1, &names),
                _ => bulk(1, 1_000, &[sys(0), vec![1, 3, 6, 1]]),
            };
            let mut b = bench();
            b.out = vec![0; size];
            match b.handle(&request) {
                Outcome::Reply(n) => {
                    prop_assert!(n <= size);
                    decode(&b.out[..n]);
                }
                Outcome::Drop(reason) => prop_assert_eq!(reason, DropReason::TooBig),
                Outcome::NeedsSwitch(_) => prop_assert!(false, "no SET here"),
            }
        }

        #[test]
        fn get_next_always_moves_strictly_forward(
            tail in proptest::collection::vec(0u32..20, 0..8),
        ) {
            let mut name = vec![1, 3, 6, 1, 4, 1, 19865];
            name.extend(tail);
            let mut b = bench();
            let r = b.reply(&get_next(V2C, &[name.clone()]));
            let (next, value) = &r.vbs[0];
            if *value != Rv::EndOfMibView {
                prop_assert!(*next > name);
                prop_assert!(Object::iter().all(|o| {
                    let a = o.oid().arcs().to_vec();
                    a <= name || a >= *next
                }), "skipped an object");
            }
        }
    }
}
