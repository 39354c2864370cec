//! SNMP datagrams to the PDU's agent (`pdu::snmp::agent::Agent`), with SETs carried through
//! SwitchTask's answers (taken from the input) or through the reply timeout.
//!
//! * A reply always fits the buffer it was written into, in the recommended buffer and in a
//!   small one (where `tooBig` answers are made).
//! * When `snmp-parser` (rusticata's, an independent decoder) reads the request as SNMPv1 or
//!   v2c, it also reads the reply: same version and community, a Response PDU with the
//!   request-id echoed; a successful GET answers the names asked for, in order.
//! * A SET asks SwitchTask for something only with the write community.
#![no_main]

use firmware_core::pdu::snmp::agent::{Agent, MAX_REQUEST_LEN, Outcome};
use firmware_core::pdu::{SwitchReply, SwitchStatus};
use firmware_core::time::Instant;
use libfuzzer_sys::fuzz_target;
use snmp_parser::{PduType, SnmpMessage, SnmpPdu, parse_snmp_v1, parse_snmp_v2c};
use twinbench_fuzz::snapshot;

/// A buffer too small for most replies: `tooBig` and the fallbacks get exercised.
const SMALL_OUT: usize = 96;

fn parse(bytes: &[u8]) -> Option<SnmpMessage<'_>> {
    parse_snmp_v1(bytes)
        .or_else(|_| parse_snmp_v2c(bytes))
        .ok()
        .map(|(_, m)| m)
}

#[track_caller]
fn check_reply(request: Option<&SnmpMessage<'_>>, reply: &[u8]) {
    let Some(request) = request else { return };
    let Some(response) = parse(reply) else {
        panic!("snmp-parser cannot read the reply {reply:02x?} to {request:?}");
    };
    assert_eq!(response.version, request.version);
    assert_eq!(response.community, request.community);
    assert_eq!(response.pdu_type(), PduType::Response);
    let (SnmpPdu::Generic(resp), req_id) = (&response.pdu, request_id(request)) else {
        panic!("a reply that is not a generic PDU: {response:?}");
    };
    assert_eq!(Some(resp.req_id), req_id, "request-id not echoed");
    if let SnmpPdu::Generic(req) = &request.pdu
        && req.pdu_type == PduType::GetRequest
        && resp.err.0 == 0
    {
        let asked: Vec<_> = req.var.iter().map(|v| &v.oid).collect();
        let answered: Vec<_> = resp.var.iter().map(|v| &v.oid).collect();
        assert_eq!(answered, asked, "a GET answered other names");
    }
}

fn request_id(m: &SnmpMessage<'_>) -> Option<u32> {
    match &m.pdu {
        SnmpPdu::Generic(p) => Some(p.req_id),
        SnmpPdu::Bulk(p) => Some(p.req_id),
        SnmpPdu::TrapV1(_) => None,
    }
}

const STATUSES: [SwitchStatus; 4] = [
    SwitchStatus::Ok,
    SwitchStatus::Interlocked,
    SwitchStatus::OverCurrentLockout,
    SwitchStatus::Ok,
];

fuzz_target!(|data: &[u8]| {
    let snap = snapshot();
    let request = parse(data);
    let now = Instant::from_millis(1_000);
    for out_len in [MAX_REQUEST_LEN, SMALL_OUT] {
        let mut agent = Agent::new();
        let mut out = vec![0u8; out_len];
        let mut outcome = agent.handle_request(data, &snap, now, &mut out);
        // SwitchTask's answers come from the input's last bytes; 0xFF means "no answer".
        let mut answers = data.iter().rev();
        for _ in 0..64 {
            match outcome {
                Outcome::Reply(n) => {
                    assert!(
                        n <= out.len(),
                        "reply of {n} bytes in a {out_len}-byte buffer"
                    );
                    check_reply(request.as_ref(), &out[..n]);
                    break;
                }
                Outcome::Drop(_) => break,
                Outcome::NeedsSwitch(req) => {
                    assert!(
                        request.as_ref().is_none_or(|r| r.community == "private"),
                        "a switch request without the write community"
                    );
                    let deadline = agent.pending_deadline().expect("a SET is pending");
                    assert!(deadline > now);
                    match answers.next().copied() {
                        Some(0xFF) | None => {
                            let before = Instant::from_micros(deadline.as_micros() - 1);
                            assert_eq!(agent.handle_timeout(before, &mut out), None);
                            outcome = agent
                                .handle_timeout(deadline, &mut out)
                                .expect("a SET past its deadline is answered");
                        }
                        Some(b) => {
                            let reply = SwitchReply {
                                status: STATUSES[usize::from(b) % STATUSES.len()],
                                state_bitmap: req.mask,
                                fault_code: 0,
                                token: req.token,
                            };
                            let foreign = SwitchReply {
                                token: req.token.wrapping_add(1),
                                ..reply
                            };
                            assert!(matches!(
                                agent.complete(&foreign, &mut out),
                                Outcome::Drop(_)
                            ));
                            outcome = agent.complete(&reply, &mut out);
                        }
                    }
                }
            }
        }
        assert!(agent.pending_deadline().is_none() || matches!(outcome, Outcome::NeedsSwitch(_)));
    }
});
