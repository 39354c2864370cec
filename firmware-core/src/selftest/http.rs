//! The PDU's HTTP server core: a browser's requests in, replies out, and `/api/control`
//! answered only after SwitchTask (the real core) acted on its intents.
use super::switch::{forward, ready, snapshot};
use super::{Failure, Outcome, cases, check, check_eq, check_ok};
use crate::pdu::config::PduConfig;
use crate::pdu::frontend::{Intent, Snapshot};
use crate::pdu::http::{HttpServer, Limits, Outcome as Http, RECOMMENDED_RESPONSE_LEN};
use crate::pdu::{OutletMask, SwitchReply};
use crate::time::Instant;

cases![
    a_control_post_switches_through_switch_task_then_answers,
    status_json_shows_what_the_relays_do,
    requests_without_credentials_or_too_big_are_refused_before_acting,
];

type Out = [u8; RECOMMENDED_RESPONSE_LEN];

/// `admin:energis`, the factory credentials.
const AUTH: &str = "Authorization: Basic YWRtaW46ZW5lcmdpcw==\r\n";

fn post(path: &str, headers: &str, body: &str) -> Result<heapless::String<512>, Failure> {
    let mut r = heapless::String::new();
    check!(
        core::fmt::write(
            &mut r,
            format_args!(
                "POST {path} HTTP/1.1\r\nHost: pdu\r\n{headers}Content-Type: \
                 application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
        .is_ok(),
        "request too long for the test buffer"
    );
    Ok(r)
}

fn status_of(out: &[u8]) -> Result<u16, Failure> {
    let line = check_ok!(out.get(9..12));
    let code = check_ok!(core::str::from_utf8(line));
    Ok(check_ok!(code.parse::<u16>()))
}

fn reply<'o>(
    server: &mut HttpServer,
    request: &str,
    snap: &Snapshot,
    out: &'o mut Out,
) -> Result<&'o str, Failure> {
    match check_ok!(server.handle(request.as_bytes(), snap, out)) {
        Http::Reply(n) => Ok(check_ok!(core::str::from_utf8(&out[..n]))),
        other => {
            check!(false, "expected a reply at once, got {other:?}");
            Ok("")
        }
    }
}

fn a_control_post_switches_through_switch_task_then_answers() -> Outcome {
    let config = PduConfig::default();
    let mut switch = ready(&config)?;
    let mut server = HttpServer::new(Limits::default());
    let mut out = [0u8; RECOMMENDED_RESPONSE_LEN];
    let now = Instant::from_millis(1_000);
    let request = post("/api/control", AUTH, "channel1=on&channel3=on&label3=NAS")?;
    // Fed in two pieces, as TCP may deliver it.
    let (head, _) = request.as_bytes().split_at(20);
    let snap = snapshot(&switch, &config, now);
    check_eq!(
        check_ok!(server.handle(head, &snap, &mut out)),
        Http::NeedMore
    );
    let Http::Apply(pending) = check_ok!(server.handle(request.as_bytes(), &snap, &mut out)) else {
        check!(false, "a control POST must wait for SwitchTask");
        return Ok(());
    };
    let mut replies: heapless::Vec<SwitchReply, 4> = heapless::Vec::new();
    let mut saved_label = false;
    for intent in &pending.intents {
        match intent {
            Intent::Switch(request) => {
                let reply = forward(&mut switch, *request, now)?;
                check!(replies.push(reply).is_ok());
            }
            Intent::SaveConfig(c) => saved_label = c.labels[2].as_str() == "NAS",
            other => check!(false, "unexpected intent {other:?}"),
        }
    }
    check!(saved_label, "the label is saved");
    check_eq!(switch.relays(), OutletMask(0b0000_0101));
    let after = snapshot(&switch, &config, now);
    let n = check_ok!(pending.followup.finish(&replies, &after, &mut out));
    check_eq!(status_of(&out[..n])?, 200);
    Ok(())
}

fn status_json_shows_what_the_relays_do() -> Outcome {
    let mut config = PduConfig::default();
    config.switch.safe_mask = OutletMask(0b0100_0001);
    let switch = ready(&config)?;
    let snap = snapshot(&switch, &config, Instant::from_millis(2_000));
    let mut server = HttpServer::new(Limits::default());
    let mut out = [0u8; RECOMMENDED_RESPONSE_LEN];
    let text = reply(
        &mut server,
        "GET /api/status HTTP/1.1\r\nHost: pdu\r\n\r\n",
        &snap,
        &mut out,
    )?;
    check!(text.starts_with("HTTP/1.1 200"), "{text}");
    check!(text.contains("application/json"));
    check_eq!(text.matches("\"state\":true").count(), 2, "{text}");
    check_eq!(text.matches("\"state\":false").count(), 6);
    check!(text.contains("\"voltage\":230"), "{text}");
    // The Content-Length header is exact.
    let (head, body) = check_ok!(text.split_once("\r\n\r\n"));
    let mut length: heapless::String<32> = heapless::String::new();
    check!(core::fmt::write(&mut length, format_args!("Content-Length: {}", body.len())).is_ok());
    check!(head.contains(length.as_str()), "{head}");
    Ok(())
}

fn requests_without_credentials_or_too_big_are_refused_before_acting() -> Outcome {
    let config = PduConfig::default();
    let switch = ready(&config)?;
    let snap = snapshot(&switch, &config, Instant::from_millis(2_000));
    let mut server = HttpServer::new(Limits::default());
    let mut out = [0u8; RECOMMENDED_RESPONSE_LEN];
    let no_auth = post("/api/control", "", "channel1=on")?;
    let text = reply(&mut server, &no_auth, &snap, &mut out)?;
    check!(text.starts_with("HTTP/1.1 401"), "{text}");
    check!(text.contains("WWW-Authenticate: Basic"), "{text}");
    // A Content-Length over the limit is refused from the head alone.
    let huge = "POST /api/control HTTP/1.1\r\nHost: pdu\r\nAuthorization: Basic \
                YWRtaW46ZW5lcmdpcw==\r\nContent-Length: 999999\r\n\r\n";
    let text = reply(&mut server, huge, &snap, &mut out)?;
    check!(text.starts_with("HTTP/1.1 413"), "{text}");
    let text = reply(&mut server, "BREW /pot HTTP/1.1\r\n\r\n", &snap, &mut out)?;
    check!(text.starts_with("HTTP/1.1 4"), "{text}");
    let text = reply(
        &mut server,
        "GET /nowhere HTTP/1.1\r\n\r\n",
        &snap,
        &mut out,
    )?;
    check!(text.starts_with("HTTP/1.1 404"), "{text}");
    Ok(())
}
