//! HTTP requests to the PDU (`pdu::http::HttpServer`), as NetTask hands them over: everything
//! received so far, at most `Limits::request_buffer_len` bytes.
//!
//! * Every reply is one complete HTTP/1.1 response (checked with `httparse`) whose
//!   `Content-Length` matches its body (a reply to `HEAD` may leave the body out), with a
//!   status code the server documents; JSON replies parse as JSON. This holds with the
//!   recommended response buffer and with a small one, where a reply that does not fit must
//!   become a short 500 rather than an error.
//! * A full request buffer is always answered: the server never asks for more bytes than the
//!   runner may keep.
//! * Intents come only from POSTs with the right credentials; a configuration it asks to save
//!   can be stored; the follow-up reply, whatever SwitchTask answered, is a valid response.
#![no_main]

use firmware_core::pdu::frontend::Intent;
use firmware_core::pdu::http::{HttpServer, Limits, Outcome, RECOMMENDED_RESPONSE_LEN};
use firmware_core::pdu::{SwitchReply, SwitchStatus};
use libfuzzer_sys::fuzz_target;
use twinbench_fuzz::{check_http_response, check_json, check_storable, snapshot};

/// Codes the module docs list.
const CODES: &[u16] = &[200, 204, 400, 401, 404, 405, 409, 413, 431, 500, 503];
/// base64("admin:energis"), the factory credentials.
const GOOD_AUTH: &[u8] = b"YWRtaW46ZW5lcmdpcw";
/// The smallest buffer the module docs promise a reply in ("a few hundred bytes").
const SMALL_OUT: usize = 640;

const STATUSES: [SwitchStatus; 12] = [
    SwitchStatus::Ok,
    SwitchStatus::Busy,
    SwitchStatus::Preempted,
    SwitchStatus::Denied,
    SwitchStatus::Interlocked,
    SwitchStatus::Timeout,
    SwitchStatus::TooManyToggles,
    SwitchStatus::OverCurrentLockout,
    SwitchStatus::BrownOut,
    SwitchStatus::FaultSafe,
    SwitchStatus::Invalid,
    SwitchStatus::IoError,
];

fn request_head(data: &[u8]) -> (bool, bool) {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let _ = req.parse(data);
    let head = req.method == Some("HEAD");
    let auth = req.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("authorization")
            && h.value.windows(GOOD_AUTH.len()).any(|w| w == GOOD_AUTH)
    });
    (head, auth)
}

#[track_caller]
fn check(reply: &[u8], head: bool) {
    let r = check_http_response(reply, head);
    assert!(CODES.contains(&r.code), "undocumented status {}", r.code);
    let json = reply
        .windows(16)
        .any(|w| w.eq_ignore_ascii_case(b"application/json"));
    if json && !r.body.is_empty() {
        check_json(r.body);
    }
}

fuzz_target!(|data: &[u8]| {
    let snap = snapshot();
    let limits = Limits::default();
    let input = &data[..data.len().min(limits.request_buffer_len())];
    let (head, authorized) = request_head(input);
    for out_len in [RECOMMENDED_RESPONSE_LEN, SMALL_OUT] {
        let mut server = HttpServer::new(limits);
        let mut out = vec![0u8; out_len];
        match server.handle(input, &snap, &mut out) {
            Err(e) => panic!("no reply in {out_len} bytes: {e}"),
            Ok(Outcome::NeedMore) => assert!(
                input.len() < limits.request_buffer_len(),
                "a full request buffer was not answered"
            ),
            Ok(Outcome::Reply(n)) => check(&out[..n], head),
            Ok(Outcome::Apply(pending)) => {
                assert!(authorized, "intents from a request without credentials");
                assert!(!pending.intents.is_empty());
                let mut switches = 0;
                for intent in &pending.intents {
                    match intent {
                        Intent::Switch(_) => switches += 1,
                        Intent::SaveConfig(cfg) => check_storable(cfg),
                        other => panic!("HTTP asked for {other:?}"),
                    }
                }
                // SwitchTask's answers: from the input, and sometimes fewer than asked for.
                let seed = input.last().copied().unwrap_or(0) as usize;
                let answered = switches - (seed >> 7).min(switches);
                let replies: Vec<SwitchReply> = pending
                    .intents
                    .iter()
                    .filter_map(|i| match i {
                        Intent::Switch(r) => Some(r),
                        _ => None,
                    })
                    .take(answered)
                    .enumerate()
                    .map(|(k, r)| SwitchReply {
                        status: STATUSES[(seed + k) % STATUSES.len()],
                        state_bitmap: r.mask,
                        fault_code: 0,
                        token: r.token,
                    })
                    .collect();
                match pending.followup.finish(&replies, &snap, &mut out) {
                    Ok(n) => check(&out[..n], false),
                    Err(e) => panic!("no follow-up reply in {out_len} bytes: {e}"),
                }
            }
        }
    }
});
