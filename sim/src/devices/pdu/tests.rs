//! Unit tests of the PDU twin: the SNMP manager codec, and whole-device runs whose traces are
//! checked directly (the behaviours themselves are pinned by `scenarios/pdu/`).
use std::path::Path;

use super::net::{decode_response, encode_request, parse_oid, render_response};
use crate::scenario::{load_str, run::run_test_keeping_events};

/// Run the first test of `toml` and return its trace as lines.
fn trace(toml: &str) -> Vec<String> {
    let cases = load_str(Path::new("inline.toml"), toml).expect("scenario loads");
    let r = run_test_keeping_events(&cases[0], None);
    assert!(r.errors.is_empty(), "errors: {:?}", r.errors);
    r.events
        .iter()
        .map(|e| format!("{} {} {}", e.at, e.source, e.text))
        .collect()
}

#[test]
fn snmp_request_round_trips_through_the_decoder() {
    let oid = parse_oid("1.3.6.1.2.1.1.1.0").unwrap();
    let bytes = encode_request(1, "public", 0xA0, 7, &oid, None).unwrap();
    // A request is not a response, but the decoder reads the same shape.
    let r = decode_response(&bytes).unwrap();
    assert_eq!(r.request_id, 7);
    assert_eq!(render_response(&r), "error=noError 1.3.6.1.2.1.1.1.0=NULL");
    assert!(parse_oid("1.x").is_err());
    assert!(decode_response(&[0x30, 0x80]).is_none());
}

const BUSY: &str = r#"
[[test]]
name = "busy"
duration = "3s"
[test.devices.pdu]
kind = "pdu"
[[test.step]]
at = "500ms"
do = "console"
line = "HELP"
[[test.step]]
at = "600ms"
do = "snmp.walk"
oid = "1.3.6.1.2.1.1"
[[test.step]]
at = "700ms"
do = "load"
channel = 1
watts = 500
[[test.step]]
at = "800ms"
do = "http"
method = "POST"
path = "/api/control"
body = "channel1=on"
auth = "admin:energis"
[[test.step]]
at = "900ms"
do = "snmp.set"
oid = "1.3.6.1.4.1.19865.2.1.0"
value = 1
community = "public"
[[test.expect]]
state = "pdu.powered"
equals = true
"#;

#[test]
fn a_run_is_a_pure_function_of_its_inputs() {
    assert_eq!(trace(BUSY), trace(BUSY));
}

#[test]
fn front_ends_answer_through_the_net_and_console_runners() {
    let t = trace(BUSY).join("\n");
    assert!(t.contains("pdu.console [ECHO]"), "HELP answered:\n{t}");
    assert!(
        t.contains("1.3.6.1.2.1.1.1.0=STRING ENERGIS"),
        "walk reads sysDescr:\n{t}"
    );
    assert!(t.contains("walk done"), "walk ends:\n{t}");
    assert!(
        t.contains("POST /api/control: HTTP/1.1 200"),
        "control:\n{t}"
    );
    // A SET with the read community is refused and switches nothing.
    assert!(
        t.contains("error=noAccess"),
        "read community cannot write:\n{t}"
    );
}

#[test]
fn a_full_inbox_refuses_the_newest_and_counts_it() {
    let inbox = super::net::Inbox::new(2);
    assert!(inbox.offer(1).is_ok());
    assert!(inbox.offer(2).is_ok());
    assert_eq!(inbox.offer(3), Err(3));
    let s = inbox.stats();
    assert_eq!((s.accepted, s.dropped, s.high_water), (2, 1, 2));
    assert_eq!(inbox.depth(), 2);
    inbox.clear();
    assert_eq!(inbox.depth(), 0);
}
