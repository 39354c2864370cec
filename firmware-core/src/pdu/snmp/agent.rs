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
