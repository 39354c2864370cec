use super::*;
use crate::pdu::frontend::{OcpStatus, SwitchState};
use crate::pdu::{CHANNELS, ChannelTelemetry};
use proptest::prelude::*;

/// `admin:energis`
const GOOD_AUTH: &str = "Authorization: Basic YWRtaW46ZW5lcmdpcw==\r\n";
/// `admin:wrong`
const BAD_AUTH: &str = "Authorization: Basic YWRtaW46d3Jvbmc=\r\n";

fn telemetry(v: f32, a: f32) -> ChannelTelemetry {
    ChannelTelemetry {
        voltage_v: v,
        current_a: a,
        power_w: v * a,
        power_factor: 1.0,
        energy_wh: 12.5,
        uptime_s: 60,
        degraded: false,
    }
}

/// Outlets 1 and 3 on, 230 V everywhere, 0.5 A on the on outlets, OCP normal.
pub(crate) fn snapshot() -> Snapshot {
    let mut telemetry = [telemetry(230.0, 0.0); CHANNELS];
    telemetry[0] = self::telemetry(230.0, 0.5);
    telemetry[2] = self::telemetry(230.0, 0.5);
    let mut config = PduConfig::default();
    config.labels[0] = heapless::String::try_from("NAS").unwrap();
    Snapshot {
        uptime_ms: 123_456,
        outlets: OutletMask(0b0000_0101),
        switch_state: SwitchState::Ready,
        telemetry,
        ocp: OcpStatus {
            state: OcpState::Normal,
            total_current_a: 1.0,
            limit_a: 10.0,
            last_tripped_channel: 0,
            trip_count: 0,
            last_trip_ms: 0,
        },
        temperature_c: 31.25,
        supply_v: 12.1,
        usb_v: 5.0,
        serial: heapless::String::try_from("SN-0167663").unwrap(),
        firmware_version: "1.1.0",
        config,
    }
}

pub(crate) fn locked_out() -> Snapshot {
    let mut s = snapshot();
    s.ocp.state = OcpState::Lockout;
    s.ocp.trip_count = 1;
    s
}

fn auth_off() -> Snapshot {
    let mut s = snapshot();
    s.config.http.auth_enabled = false;
    s
}

struct Reply {
    status: u16,
    head: heapless::String<512>,
    body: heapless::String<8192>,
}

impl Reply {
    #[track_caller]
    fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|l| {
            let (n, v) = l.split_once(": ")?;
            n.eq_ignore_ascii_case(name).then_some(v)
        })
    }
}

#[track_caller]
fn parse_reply(bytes: &[u8]) -> Reply {
    let text = core::str::from_utf8(bytes).expect("reply is UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("reply has a head");
    let status = head
        .get(9..12)
        .expect("status code")
        .parse()
        .expect("numeric status");
    let reply = Reply {
        status,
        head: heapless::String::try_from(head).unwrap(),
        body: heapless::String::try_from(body).unwrap(),
    };
    assert_eq!(
        reply.header("Connection"),
        Some("close"),
        "every reply closes"
    );
    assert_eq!(
        reply.header("Access-Control-Allow-Origin"),
        Some("*"),
        "every reply allows CORS"
    );
    let len: usize = reply
        .header("Content-Length")
        .expect("Content-Length")
        .parse()
        .unwrap();
    if !head.starts_with("HTTP/1.1 204") && len != body.len() {
        // HEAD replies keep the GET body's length with no body.
        assert_eq!(
            body.len(),
            0,
            "Content-Length {len} but body of {}",
            body.len()
        );
    }
    reply
}

/// Sends one complete request; expects a direct reply.
#[track_caller]
fn get_reply(server: &mut HttpServer, req: &str, snap: &Snapshot) -> Reply {
    let mut out = [0u8; RECOMMENDED_RESPONSE_LEN];
    match server.handle(req.as_bytes(), snap, &mut out) {
        Ok(Outcome::Reply(n)) => parse_reply(&out[..n]),
        other => panic!("expected a reply, got {other:?}"),
    }
}

#[track_caller]
fn reply(req: &str, snap: &Snapshot) -> Reply {
    get_reply(&mut HttpServer::default(), req, snap)
}

#[track_caller]
fn pending(req: &str, snap: &Snapshot) -> Pending {
    let mut out = [0u8; RECOMMENDED_RESPONSE_LEN];
    match HttpServer::default().handle(req.as_bytes(), snap, &mut out) {
        Ok(Outcome::Apply(p)) => p,
        other => panic!("expected intents, got {other:?}"),
    }
}

#[track_caller]
fn finish(p: &Pending, replies: &[SwitchReply], snap: &Snapshot) -> Reply {
    let mut out = [0u8; RECOMMENDED_RESPONSE_LEN];
    let n = p.followup.finish(replies, snap, &mut out).expect("fits");
    parse_reply(&out[..n])
}

pub(crate) fn ok_reply(state: u8) -> SwitchReply {
    SwitchReply {
        status: SwitchStatus::Ok,
        state_bitmap: OutletMask(state),
        fault_code: 0,
        token: 0,
    }
}

fn post(path: &str, auth: &str, body: &str) -> heapless::String<1024> {
    let mut s = heapless::String::new();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: pdu\r\n{auth}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    s
}

fn switch_requests(p: &Pending) -> heapless::Vec<SwitchRequest, 3> {
    p.intents
        .iter()
        .filter_map(|i| match i {
            Intent::Switch(r) => Some(*r),
            _ => None,
        })
        .collect()
}

// ---- GET /api/status ----

#[test]
fn status_reports_channels_temperature_and_overcurrent() {
    let r = reply("GET /api/status HTTP/1.1\r\nHost: pdu\r\n\r\n", &snapshot());
    assert_eq!(r.status, 200);
    assert!(
        r.header("Content-Type")
            .unwrap()
            .starts_with("application/json")
    );
    let b = r.body.as_str();
    assert!(b.starts_with(
        "{\"channels\":[{\"voltage\":230.00,\"current\":0.50,\"uptime\":60,\"power\":115.00,\"state\":true,\"label\":\"NAS\"},"
    ), "{b}");
    assert!(b.contains("{\"voltage\":230.00,\"current\":0.00,\"uptime\":60,\"power\":0.00,\"state\":false,\"label\":\"\"}"));
    assert_eq!(b.matches("\"voltage\"").count(), 8);
    assert!(b.contains(
        "\"internalTemperature\":31.25,\"temperatureUnit\":\"°C\",\"systemStatus\":\"OK\""
    ));
    assert!(b.ends_with(
        "\"overcurrent\":{\"state\":\"NORMAL\",\"total_current_a\":1.00,\"limit_a\":10.00,\"warning_threshold_a\":9.00,\
         \"critical_threshold_a\":9.50,\"recovery_threshold_a\":8.50,\"switching_allowed\":true,\"trip_count\":0,\"region\":\"EU\"}}"
    ), "{b}");
}

#[test]
fn status_shows_lockout_and_zeroes_stale_channels() {
    let mut s = locked_out();
    s.telemetry[0].degraded = true;
    s.config.identity.temp_unit = 'F';
    let r = reply("GET /api/status HTTP/1.1\r\n\r\n", &s);
    let b = r.body.as_str();
    assert!(b.starts_with("{\"channels\":[{\"voltage\":0.00,\"current\":0.00,\"uptime\":0,\"power\":0.00,\"state\":true"));
    assert!(b.contains("\"systemStatus\":\"LOCKOUT\""));
    assert!(b.contains("\"state\":\"LOCKOUT\""));
    assert!(b.contains("\"switching_allowed\":false,\"trip_count\":1"));
    assert!(b.contains("\"internalTemperature\":88.25,\"temperatureUnit\":\"°F\""));
}

#[test]
fn status_escapes_labels_in_json() {
    let mut s = snapshot();
    s.config.labels[1] = heapless::String::try_from("a\"b\\c").unwrap();
    let r = reply("GET /api/status HTTP/1.1\r\n\r\n", &s);
    assert!(r.body.contains("\"label\":\"a\\\"b\\\\c\""));
}

#[test]
fn get_ignores_the_query_string() {
    assert_eq!(
        reply("GET /api/status?x=1 HTTP/1.1\r\n\r\n", &snapshot()).status,
        200
    );
}

#[test]
fn head_sends_the_head_without_the_body() {
    let r = reply("HEAD /api/status HTTP/1.1\r\n\r\n", &snapshot());
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert!(
        r.header("Content-Length")
            .unwrap()
            .parse::<usize>()
            .unwrap()
            > 100
    );
}

// ---- POST /api/control ----

#[test]
fn control_switches_listed_on_and_everything_else_off() {
    // 1 and 3 are on; ask for 1 and 2: 3 goes off, 2 goes on, 1 stays.
    let p = pending(
        &post(
            "/api/control",
            GOOD_AUTH,
            "channel1=on&channel2=on&channel3=off",
        ),
        &snapshot(),
    );
    let reqs = switch_requests(&p);
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        (reqs[0].op, reqs[0].mask, reqs[0].value),
        (SwitchOp::SetMask, OutletMask(0b100), false)
    );
    assert_eq!(
        (reqs[1].op, reqs[1].mask, reqs[1].value),
        (SwitchOp::SetMask, OutletMask(0b010), true)
    );
    assert!(reqs.iter().all(|r| r.source == Source::Net));
    let r = finish(&p, &[ok_reply(0b001), ok_reply(0b011)], &snapshot());
    assert_eq!(r.status, 200);
    assert_eq!(r.body.as_str(), "OK\n");
}

#[test]
fn control_without_changes_answers_ok_at_once() {
    let r = reply(
        &post("/api/control", GOOD_AUTH, "channel1=on&channel3=on"),
        &snapshot(),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body.as_str(), "OK\n");
}

#[test]
fn control_accepts_a_form_split_over_reads() {
    let req = post("/api/control", GOOD_AUTH, "channel1=on&channel3=on");
    let mut server = HttpServer::default();
    let mut out = [0u8; RECOMMENDED_RESPONSE_LEN];
    let bytes = req.as_bytes();
    for cut in [10, bytes.len() - 30, bytes.len() - 1] {
        assert_eq!(
            server.handle(&bytes[..cut], &snapshot(), &mut out),
            Ok(Outcome::NeedMore),
            "cut {cut}"
        );
    }
    assert!(matches!(
        server.handle(bytes, &snapshot(), &mut out),
        Ok(Outcome::Reply(_))
    ));
    assert_eq!(
        server.requests_total(),
        1,
        "partial reads are not counted as requests"
    );
}

#[test]
fn control_saves_changed_labels() {
    let p = pending(
        &post(
            "/api/control",
            GOOD_AUTH,
            "channel1=on&channel3=on&label2=Rack+Fan%21",
        ),
        &snapshot(),
    );
    assert_eq!(p.intents.len(), 1);
    match &p.intents[0] {
        Intent::SaveConfig(cfg) => {
            assert_eq!(cfg.labels[1].as_str(), "Rack Fan!");
            assert_eq!(cfg.labels[0].as_str(), "NAS");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(finish(&p, &[], &snapshot()).status, 200);
}

#[test]
fn control_without_body_is_bad_request() {
    let r = reply(
        "POST /api/control HTTP/1.1\r\nAuthorization: Basic YWRtaW46ZW5lcmdpcw==\r\n\r\n",
        &snapshot(),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.body.as_str(), "{\"error\":\"Missing body\"}");
}

#[test]
fn control_with_bad_escape_or_overlong_label_is_bad_request() {
    assert_eq!(
        reply(
            &post("/api/control", GOOD_AUTH, "channel1=%zz"),
            &snapshot()
        )
        .status,
        400
    );
    let long = "label1=0123456789012345678901234567890123456789";
    assert_eq!(
        reply(&post("/api/control", GOOD_AUTH, long), &snapshot()).status,
        400
    );
}

#[test]
fn control_switching_on_during_lockout_is_refused_503() {
    let r = reply(
        &post(
            "/api/control",
            GOOD_AUTH,
            "channel1=on&channel2=on&channel3=on",
        ),
        &locked_out(),
    );
    assert_eq!(r.status, 503);
    assert_eq!(
        r.body.as_str(),
        "{\"error\":\"Overcurrent lockout active - reduce load first\"}"
    );
}

#[test]
fn control_switching_off_during_lockout_is_allowed() {
    let p = pending(
        &post("/api/control", GOOD_AUTH, "channel1=on"),
        &locked_out(),
    );
    let reqs = switch_requests(&p);
    assert_eq!(reqs.len(), 1);
    assert_eq!((reqs[0].mask, reqs[0].value), (OutletMask(0b100), false));
}

#[test]
fn control_answers_503_when_switch_task_reports_lockout() {
    let p = pending(
        &post(
            "/api/control",
            GOOD_AUTH,
            "channel1=on&channel2=on&channel3=on",
        ),
        &snapshot(),
    );
    let mut refused = ok_reply(0b101);
    refused.status = SwitchStatus::OverCurrentLockout;
    let r = finish(&p, &[refused], &snapshot());
    assert_eq!(r.status, 503);
    assert!(r.body.contains("Overcurrent lockout"));
}

#[test]
fn control_answers_409_when_switch_task_refuses_otherwise() {
    let p = pending(
        &post(
            "/api/control",
            GOOD_AUTH,
            "channel1=on&channel2=on&channel3=on",
        ),
        &snapshot(),
    );
    let mut refused = ok_reply(0b101);
    refused.status = SwitchStatus::Interlocked;
    let r = finish(&p, &[refused], &snapshot());
    assert_eq!(r.status, 409);
    assert!(r.body.contains("Interlocked"));
}

#[test]
fn control_answers_503_when_switch_task_is_silent() {
    let p = pending(
        &post(
            "/api/control",
            GOOD_AUTH,
            "channel1=on&channel2=on&channel3=on",
        ),
        &snapshot(),
    );
    assert_eq!(finish(&p, &[], &snapshot()).status, 503);
}

// ---- auth ----

#[test]
fn post_without_credentials_is_401_with_challenge() {
    let r = reply(&post("/api/control", "", "channel1=on"), &snapshot());
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("WWW-Authenticate"),
        Some("Basic realm=\"ENERGIS\"")
    );
}

#[test]
fn post_with_wrong_credentials_is_401() {
    let r = reply(&post("/api/settings", BAD_AUTH, "location=x"), &snapshot());
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("WWW-Authenticate"),
        Some("Basic realm=\"ENERGIS\"")
    );
}

#[test]
fn post_with_configured_credentials_is_accepted() {
    let mut s = snapshot();
    s.config.http.user = heapless::String::try_from("ops").unwrap();
    s.config.http.password = heapless::String::try_from("s3cret").unwrap();
    // ops:s3cret
    let auth = "Authorization: Basic b3BzOnMzY3JldA==\r\n";
    assert_eq!(
        reply(&post("/api/control", auth, "channel1=on&channel3=on"), &s).status,
        200
    );
    assert_eq!(
        reply(
            &post("/api/control", GOOD_AUTH, "channel1=on&channel3=on"),
            &s
        )
        .status,
        401
    );
}

#[test]
fn post_without_credentials_is_accepted_when_auth_is_off() {
    let r = reply(
        &post("/api/control", "", "channel1=on&channel3=on"),
        &auth_off(),
    );
    assert_eq!(r.status, 200);
}

#[test]
fn auth_is_checked_before_the_body_arrives() {
    let req = "POST /api/control HTTP/1.1\r\nContent-Length: 500\r\n\r\nchan";
    assert_eq!(reply(req, &snapshot()).status, 401);
}

#[test]
fn gets_need_no_credentials() {
    for path in ["/", "/api/status", "/api/settings", "/metrics"] {
        let mut req = heapless::String::<64>::new();
        write!(req, "GET {path} HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(reply(&req, &snapshot()).status, 200, "{path}");
    }
}

// ---- settings ----

#[test]
fn settings_get_reports_network_identity_and_limits() {
    let b = reply("GET /api/settings HTTP/1.1\r\n\r\n", &snapshot()).body;
    for part in [
        "\"ip\":\"192.168.0.22\"",
        "\"gateway\":\"192.168.0.1\"",
        "\"subnet\":\"255.255.255.0\"",
        "\"dns\":\"8.8.8.8\"",
        "\"mac\":\"02:45:4E:00:00:01\"",
        "\"device_name\":\"ENERGIS\"",
        "\"location\":\"Wien\"",
        "\"temp_unit\":\"C\"",
        "\"temperature\":31.25",
        "\"serial_number\":\"SN-0167663\"",
        "\"firmware_version\":\"1.1.0\"",
        "\"hardware_version\":\"1.1.0\"",
        "\"device_region\":\"EU\"",
        "\"current_limit\":10.0",
        "\"warning_limit\":9.0",
        "\"critical_limit\":9.5",
    ] {
        assert!(b.contains(part), "{part} missing in {b}");
    }
}

#[test]
fn settings_post_saves_the_changed_configuration() {
    let body = "ip=10.0.0.5&gateway=10.0.0.1&subnet=255.0.0.0&dns=1.1.1.1&device_name=PDU+7&location=Lab&temp_unit=fahrenheit";
    let p = pending(&post("/api/settings", GOOD_AUTH, body), &snapshot());
    let Some(Intent::SaveConfig(cfg)) = p.intents.first() else {
        panic!("{:?}", p.intents)
    };
    assert_eq!(cfg.network.ip, [10, 0, 0, 5]);
    assert_eq!(cfg.network.gateway, [10, 0, 0, 1]);
    assert_eq!(cfg.network.subnet, [255, 0, 0, 0]);
    assert_eq!(cfg.network.dns, [1, 1, 1, 1]);
    assert_eq!(cfg.identity.device_name.as_str(), "PDU 7");
    assert_eq!(cfg.identity.location.as_str(), "Lab");
    assert_eq!(cfg.identity.temp_unit, 'F');
    let r = finish(&p, &[], &snapshot());
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body.as_str(),
        "{\"status\":\"ok\",\"reboot_required\":true}"
    );
}

#[test]
fn settings_post_keeps_absent_fields() {
    let p = pending(
        &post("/api/settings", GOOD_AUTH, "location=Basement"),
        &snapshot(),
    );
    let Some(Intent::SaveConfig(cfg)) = p.intents.first() else {
        panic!()
    };
    assert_eq!(cfg.network, snapshot().config.network);
    assert_eq!(cfg.identity.device_name.as_str(), "ENERGIS");
    assert!(
        finish(&p, &[], &snapshot())
            .body
            .contains("\"reboot_required\":false")
    );
}

#[test]
fn settings_post_rejects_invalid_fields() {
    for body in [
        "ip=300.1.1.1",
        "dns=abc",
        "temp_unit=X",
        "device_name=0123456789012345678901234567890123",
    ] {
        assert_eq!(
            reply(&post("/api/settings", GOOD_AUTH, body), &snapshot()).status,
            400,
            "{body}"
        );
    }
    assert_eq!(
        reply(&post("/api/settings", GOOD_AUTH, ""), &snapshot()).status,
        400
    );
}

// ---- metrics and page ----

#[test]
fn metrics_use_energis_names_with_help_and_type() {
    let mut server = HttpServer::default();
    let r = get_reply(&mut server, "GET /metrics HTTP/1.1\r\n\r\n", &snapshot());
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some(metrics::CONTENT_TYPE));
    let b = r.body.as_str();
    for line in [
        "# HELP energis_up 1 if the metrics handler is healthy.",
        "# TYPE energis_up gauge",
        "energis_up 1",
        "energis_build_info{version=\"1.1.0\",serial=\"SN-0167663\"} 1",
        "# TYPE energis_uptime_seconds_total counter",
        "energis_uptime_seconds_total 123",
        "energis_http_requests_total 1",
        "energis_channel_state{ch=\"1\"} 1",
        "energis_channel_state{ch=\"2\"} 0",
        "energis_channel_telemetry_valid{ch=\"8\"} 1",
        "energis_channel_voltage_volts{ch=\"1\"} 230.000",
        "energis_channel_current_amps{ch=\"3\"} 0.500",
        "energis_channel_power_watts{ch=\"1\"} 115.000",
        "# TYPE energis_channel_energy_watt_hours_total counter",
        "energis_channel_energy_watt_hours_total{ch=\"1\"} 12.500",
        "energis_ocp_state 0",
        "energis_ocp_limit_amps 10.00",
        "energis_ocp_switching_allowed 1",
        "energis_ocp_trip_count_total 0",
    ] {
        assert!(b.lines().any(|l| l == line), "missing {line:?} in\n{b}");
    }
    // Every sample's family has HELP and TYPE lines.
    for l in b.lines().filter(|l| !l.starts_with('#')) {
        let name = l.split(['{', ' ']).next().unwrap();
        let mut help = heapless::String::<96>::new();
        write!(help, "# HELP {name} ").unwrap();
        let mut typ = heapless::String::<96>::new();
        write!(typ, "# TYPE {name} ").unwrap();
        assert!(
            b.contains(help.as_str()) && b.contains(typ.as_str()),
            "{name}"
        );
    }
}

#[test]
fn status_page_lists_outlets_and_posts_to_control() {
    let r = reply("GET / HTTP/1.1\r\n\r\n", &snapshot());
    assert_eq!(r.status, 200);
    assert!(r.header("Content-Type").unwrap().starts_with("text/html"));
    let b = r.body.as_str();
    assert!(b.starts_with("<!DOCTYPE html>"));
    assert!(b.contains("action=\"/api/control\""));
    assert!(b.contains("name=\"channel1\" value=\"on\" checked"));
    assert!(b.contains("name=\"channel2\" value=\"on\">"));
    assert!(!b.contains("http://") && !b.contains("https://") && !b.contains("<script"));
}

// ---- errors ----

#[test]
fn unknown_path_is_404() {
    assert_eq!(reply("GET /nope HTTP/1.1\r\n\r\n", &snapshot()).status, 404);
    assert_eq!(
        reply(&post("/nope", GOOD_AUTH, "a=b"), &snapshot()).status,
        404
    );
}

#[test]
fn wrong_method_is_405_with_allow() {
    let r = reply("GET /api/control HTTP/1.1\r\n\r\n", &snapshot());
    assert_eq!(r.status, 405);
    assert_eq!(r.header("Allow"), Some("POST, OPTIONS"));
    let r = reply("DELETE /api/status HTTP/1.1\r\n\r\n", &snapshot());
    assert_eq!(r.status, 405);
    assert_eq!(
        reply(&post("/metrics", GOOD_AUTH, "x"), &snapshot()).status,
        405
    );
}

#[test]
fn options_preflight_is_204_with_cors_headers() {
    let r = reply("OPTIONS /api/control HTTP/1.1\r\n\r\n", &snapshot());
    assert_eq!(r.status, 204);
    assert!(
        r.header("Access-Control-Allow-Headers")
            .unwrap()
            .contains("Authorization")
    );
}

#[test]
fn malformed_requests_are_400() {
    for req in [
        "GARBAGE\r\n\r\n",
        "GET /api/status HTTP/9.9\r\n\r\n",
        "GET /api/status HTTP/1.1\r\nBad Header\r\n\r\n",
        "POST /api/control HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
        "POST /api/control HTTP/1.1\r\nTransfer-Encoding: chunked\r\nAuthorization: Basic YWRtaW46ZW5lcmdpcw==\r\n\r\n",
    ] {
        assert_eq!(reply(req, &snapshot()).status, 400, "{req:?}");
    }
}

#[test]
fn oversized_body_is_413_and_oversized_head_431() {
    let req = "POST /api/control HTTP/1.1\r\nAuthorization: Basic YWRtaW46ZW5lcmdpcw==\r\nContent-Length: 5000\r\n\r\n";
    assert_eq!(reply(req, &snapshot()).status, 413);
    let mut big = heapless::String::<2048>::new();
    big.push_str("GET /api/status HTTP/1.1\r\nX-Pad: ").unwrap();
    while big.len() < 1100 {
        big.push('a').unwrap();
    }
    assert_eq!(reply(&big, &snapshot()).status, 431);
}

#[test]
fn reply_that_does_not_fit_becomes_500_and_tiny_buffer_is_an_error() {
    let mut out = [0u8; 700];
    let mut server = HttpServer::default();
    let n = match server.handle(b"GET /metrics HTTP/1.1\r\n\r\n", &snapshot(), &mut out) {
        Ok(Outcome::Reply(n)) => n,
        other => panic!("{other:?}"),
    };
    assert_eq!(parse_reply(&out[..n]).status, 500);
    let mut tiny = [0u8; 64];
    assert_eq!(
        server.handle(b"GET /metrics HTTP/1.1\r\n\r\n", &snapshot(), &mut tiny),
        Err(HttpError::OutputTooSmall)
    );
}

#[test]
fn every_reply_fits_the_recommended_buffer_in_the_worst_case() {
    let mut s = snapshot();
    for l in s.config.labels.iter_mut() {
        *l = heapless::String::try_from("\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}\u{1}").unwrap();
    }
    for path in ["/", "/api/status", "/api/settings", "/metrics"] {
        let mut req = heapless::String::<64>::new();
        write!(req, "GET {path} HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(reply(&req, &s).status, 200, "{path}");
    }
}

proptest! {
    #[test]
    fn handler_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
        let mut out = [0u8; 2048];
        let mut server = HttpServer::default();
        let _ = server.handle(&bytes, &snapshot(), &mut out);
    }

    #[test]
    fn handler_never_panics_on_arbitrary_forms(body in proptest::collection::vec(any::<u8>(), 0..300), settings in any::<bool>()) {
        let path = if settings { "/api/settings" } else { "/api/control" };
        let mut req = heapless::Vec::<u8, 1024>::new();
        let mut head = heapless::String::<256>::new();
        write!(head, "POST {path} HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).unwrap();
        req.extend_from_slice(head.as_bytes()).unwrap();
        req.extend_from_slice(&body).unwrap();
        let mut out = [0u8; 2048];
        match HttpServer::default().handle(&req, &auth_off(), &mut out) {
            Ok(Outcome::Reply(n)) => { let _ = parse_reply(&out[..n]); }
            Ok(Outcome::Apply(p)) => {
                let replies = [ok_reply(0); 2];
                let n = p.followup.finish(&replies, &snapshot(), &mut out).unwrap();
                let _ = parse_reply(&out[..n]);
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn every_prefix_of_a_valid_request_needs_more_bytes(which in 0usize..4, body in "(channel[1-8]=on&|label[1-8]=[a-z+]{0,8}&){1,6}") {
        let req = match which {
            0 => post("/api/control", GOOD_AUTH, &body),
            1 => post("/api/settings", GOOD_AUTH, "location=Lab&temp_unit=K"),
            2 => heapless::String::try_from("GET /api/status HTTP/1.1\r\nHost: pdu\r\n\r\n").unwrap(),
            _ => heapless::String::try_from("GET /metrics HTTP/1.1\r\nAccept: */*\r\n\r\n").unwrap(),
        };
        let bytes = req.as_bytes();
        let mut server = HttpServer::default();
        let mut out = [0u8; RECOMMENDED_RESPONSE_LEN];
        for cut in 0..bytes.len() {
            prop_assert_eq!(server.handle(&bytes[..cut], &snapshot(), &mut out), Ok(Outcome::NeedMore), "cut {}", cut);
        }
        let whole = server.handle(bytes, &snapshot(), &mut out);
        prop_assert!(matches!(whole, Ok(Outcome::Reply(_)) | Ok(Outcome::Apply(_))), "{:?}", whole);
        prop_assert_eq!(server.requests_total(), 1);
    }

    #[test]
    fn control_never_switches_on_during_lockout(body in "(channel[1-8]=(on|off)&){0,8}") {
        let req = post("/api/control", "", &body);
        let mut s = locked_out();
        s.config.http.auth_enabled = false;
        let mut out = [0u8; 2048];
        match HttpServer::default().handle(req.as_bytes(), &s, &mut out) {
            Ok(Outcome::Apply(p)) => prop_assert!(switch_requests(&p).iter().all(|r| !r.value)),
            Ok(Outcome::Reply(_)) => {}
            other => prop_assert!(false, "{:?}", other),
        }
    }
}
