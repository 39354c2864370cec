//! The SNMP agent core: BER requests built and responses read with the crate's own codec, a
//! SET carried out by SwitchTask (the real core), and access by community.
use super::switch::{forward, ready, snapshot};
use super::{Failure, Outcome, cases, check, check_eq, check_ok};
use crate::pdu::OutletMask;
use crate::pdu::config::PduConfig;
use crate::pdu::snmp::agent::{Agent, DropReason, MAX_REQUEST_LEN, Outcome as Snmp};
use crate::pdu::snmp::ber::{
    Oid, Reader, TAG_INTEGER, TAG_NULL, TAG_OCTET_STRING, TAG_OID, TAG_SEQUENCE, Writer,
};
use crate::pdu::snmp::message::{PDU_GET, PDU_RESPONSE, PDU_SET};
use crate::time::Instant;

cases![
    get_reads_an_outlet_and_set_switches_it_through_switch_task,
    unknown_communities_and_garbage_get_no_answer,
];

/// The ENERGIS outlet-state object of outlet `n`: 1.3.6.1.4.1.19865.2.`n`.0.
fn outlet_oid(n: u32) -> Result<Oid, Failure> {
    Ok(check_ok!(Oid::from_arcs(&[
        1, 3, 6, 1, 4, 1, 19865, 2, n, 0
    ])))
}

/// A v2c request with one varbind (`value` None = NULL).
fn request(
    community: &[u8],
    pdu_tag: u8,
    id: i64,
    name: &Oid,
    value: Option<i64>,
    buf: &mut [u8],
) -> Result<usize, Failure> {
    let mut w = Writer::new(buf);
    let msg = check_ok!(w.begin());
    check_ok!(w.int(TAG_INTEGER, 1));
    check_ok!(w.tlv(TAG_OCTET_STRING, community));
    let pdu = check_ok!(w.begin());
    check_ok!(w.int(TAG_INTEGER, id));
    check_ok!(w.int(TAG_INTEGER, 0));
    check_ok!(w.int(TAG_INTEGER, 0));
    let list = check_ok!(w.begin());
    let vb = check_ok!(w.begin());
    check_ok!(w.oid(name));
    match value {
        Some(v) => check_ok!(w.int(TAG_INTEGER, v)),
        None => check_ok!(w.tlv(TAG_NULL, &[])),
    }
    check_ok!(w.end(vb, TAG_SEQUENCE));
    check_ok!(w.end(list, TAG_SEQUENCE));
    check_ok!(w.end(pdu, pdu_tag));
    check_ok!(w.end(msg, TAG_SEQUENCE));
    Ok(w.len())
}

/// Request id, error status and the one varbind's INTEGER value of a v2c response.
fn response(bytes: &[u8]) -> Result<(i32, i32, i32), Failure> {
    let mut top = Reader::new(bytes);
    let mut msg = Reader::new(check_ok!(top.expect(TAG_SEQUENCE)));
    check_ok!(top.finish());
    check_eq!(check_ok!(msg.read_i32()), 1, "version v2c");
    check_ok!(msg.expect(TAG_OCTET_STRING));
    let pdu = check_ok!(msg.read());
    check_eq!(pdu.tag, PDU_RESPONSE);
    let mut pdu = Reader::new(pdu.content);
    let id = check_ok!(pdu.read_i32());
    let status = check_ok!(pdu.read_i32());
    let _index = check_ok!(pdu.read_i32());
    let mut list = Reader::new(check_ok!(pdu.expect(TAG_SEQUENCE)));
    let mut vb = Reader::new(check_ok!(list.expect(TAG_SEQUENCE)));
    check!(list.is_empty(), "one varbind");
    check_ok!(vb.expect(TAG_OID));
    Ok((id, status, check_ok!(vb.read_i32())))
}

fn get_reads_an_outlet_and_set_switches_it_through_switch_task() -> Outcome {
    let config = PduConfig::default();
    let mut switch = ready(&config)?;
    let mut agent = Agent::new();
    let (mut req, mut out) = ([0u8; 256], [0u8; MAX_REQUEST_LEN]);
    let now = Instant::from_millis(1_000);

    let n = request(b"public", PDU_GET, 7, &outlet_oid(2)?, None, &mut req)?;
    let snap = snapshot(&switch, &config, now);
    let Snmp::Reply(len) = agent.handle_request(&req[..n], &snap, now, &mut out) else {
        check!(false, "a GET is answered at once");
        return Ok(());
    };
    check_eq!(response(&out[..len])?, (7, 0, 0), "outlet 2 is off");

    let n = request(b"private", PDU_SET, -9, &outlet_oid(2)?, Some(1), &mut req)?;
    let Snmp::NeedsSwitch(ask) = agent.handle_request(&req[..n], &snap, now, &mut out) else {
        check!(false, "a SET goes to SwitchTask");
        return Ok(());
    };
    check!(
        agent.pending_deadline().is_some(),
        "the SET waits with a deadline"
    );
    let reply = forward(&mut switch, ask, now)?;
    let Snmp::Reply(len) = agent.complete(&reply, &mut out) else {
        check!(false, "the SET is answered once SwitchTask replied");
        return Ok(());
    };
    check_eq!(response(&out[..len])?, (-9, 0, 1), "noError, outlet 2 on");
    check_eq!(switch.relays(), OutletMask(0b0000_0010));

    // A SET with the read community is refused (v2c noAccess = 6) and switches nothing.
    let n = request(b"public", PDU_SET, 10, &outlet_oid(3)?, Some(1), &mut req)?;
    let snap = snapshot(&switch, &config, now);
    let Snmp::Reply(len) = agent.handle_request(&req[..n], &snap, now, &mut out) else {
        check!(false, "a refused SET is answered");
        return Ok(());
    };
    // The request's varbind is echoed with the error.
    check_eq!(response(&out[..len])?, (10, 6, 1));
    check_eq!(switch.relays(), OutletMask(0b0000_0010));
    Ok(())
}

fn unknown_communities_and_garbage_get_no_answer() -> Outcome {
    let config = PduConfig::default();
    let switch = ready(&config)?;
    let snap = snapshot(&switch, &config, Instant::ZERO);
    let mut agent = Agent::new();
    let (mut req, mut out) = ([0u8; 256], [0u8; MAX_REQUEST_LEN]);
    let n = request(b"guess", PDU_GET, 1, &outlet_oid(1)?, None, &mut req)?;
    check_eq!(
        agent.handle_request(&req[..n], &snap, Instant::ZERO, &mut out),
        Snmp::Drop(DropReason::BadCommunity)
    );
    for garbage in [
        &[][..],
        &[0x30],
        &[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF],
        &req[..n - 3],
    ] {
        let outcome = agent.handle_request(garbage, &snap, Instant::ZERO, &mut out);
        check!(
            matches!(outcome, Snmp::Drop(DropReason::ParseError(_))),
            "{garbage:?}: {outcome:?}"
        );
    }
    let stats = agent.stats();
    check_eq!(
        (
            stats.requests,
            stats.dropped_bad_community,
            stats.dropped_parse_error,
            stats.replies
        ),
        (5, 1, 4, 0),
        "every drop is counted"
    );
    Ok(())
}
