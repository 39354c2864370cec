//! Checks shared by the fuzz targets: a PDU snapshot to answer from, and oracles for what the
//! firmware writes back (HTTP replies, JSON bodies, storable configurations).
//!
//! Each oracle is written against a parser this project did not write (`httparse` for
//! responses, `serde_json` for JSON) or against the firmware's own codec in the other
//! direction, so a target checks the reply, not the code that produced it. A failed check
//! panics: that is how a libFuzzer target reports a finding.
use firmware_core::pdu::config::PduConfig;
use firmware_core::pdu::frontend::{OcpStatus, Snapshot, SwitchState};
use firmware_core::pdu::storage;
use firmware_core::pdu::{CHANNELS, ChannelTelemetry, OutletMask};

/// A running PDU as the front-ends see it: outlets 1 and 3 on, one loaded channel, factory
/// configuration (HTTP authentication on, communities `public`/`private`).
pub fn snapshot() -> Snapshot {
    let mut telemetry = [ChannelTelemetry::default(); CHANNELS];
    telemetry[0] = ChannelTelemetry {
        voltage_v: 230.4,
        current_a: 0.42,
        power_w: 96.5,
        power_factor: 0.93,
        energy_wh: 1234.0,
        uptime_s: 3600,
        degraded: false,
    };
    let mut serial = heapless::String::new();
    let _ = serial.push_str("SN-0001234");
    Snapshot {
        uptime_ms: 123_456,
        outlets: OutletMask(0b0000_0101),
        switch_state: SwitchState::Ready,
        telemetry,
        ocp: OcpStatus {
            limit_a: 10.0,
            total_current_a: 0.42,
            ..OcpStatus::default()
        },
        temperature_c: 27.0,
        supply_v: 12.1,
        usb_v: 5.0,
        serial,
        firmware_version: "1.1.0",
        config: PduConfig::default(),
    }
}

/// A complete HTTP/1.1 response, as a client reads it.
pub struct Response<'a> {
    /// The status code.
    pub code: u16,
    /// The body (empty when a reply to `HEAD` left it out).
    pub body: &'a [u8],
}

/// Check that `bytes` is exactly one complete HTTP/1.1 response: a status line with a 3-digit
/// code and a reason, headers, and a `Content-Length` that matches the body. A reply to `HEAD`
/// (`head_only`) may leave the body out; its `Content-Length` is then the one a GET would have.
#[track_caller]
pub fn check_http_response(bytes: &[u8], head_only: bool) -> Response<'_> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!(
            "reply is not a complete HTTP response ({other:?}): {:?}",
            String::from_utf8_lossy(bytes)
        ),
    };
    assert_eq!(resp.version, Some(1), "reply is not HTTP/1.1");
    let code = resp.code.expect("status code");
    assert!((100..=599).contains(&code), "status code {code}");
    assert!(
        resp.reason.is_some_and(|r| !r.is_empty()),
        "status line without a reason phrase"
    );
    let lengths: Vec<usize> = resp
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| {
            std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .expect("Content-Length is a number")
        })
        .collect();
    assert_eq!(lengths.len(), 1, "exactly one Content-Length header");
    let body = &bytes[head_len..];
    if !(head_only && body.is_empty()) {
        assert_eq!(
            lengths[0],
            body.len(),
            "Content-Length does not match the body: {:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    Response { code, body }
}

/// Check that `body` is one JSON value and return it.
#[track_caller]
pub fn check_json(body: &[u8]) -> serde_json::Value {
    match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => panic!(
            "body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(body)
        ),
    }
}

/// Check that a configuration a front-end asks to save can be stored: it encodes into a slot,
/// the record decodes, and the decoded configuration encodes to the same bytes (compared as
/// bytes: calibration factors may be NaN, which `==` would call different).
#[track_caller]
pub fn check_storable(config: &PduConfig) {
    let record = match storage::encode(config, 7) {
        Ok(r) => r,
        Err(e) => panic!("a configuration the firmware accepted cannot be stored: {e}"),
    };
    let decoded = match storage::decode(record.as_bytes()) {
        Ok(d) => d,
        Err(e) => panic!("a record the firmware wrote does not decode: {e}"),
    };
    assert_eq!(decoded.seq, 7);
    assert_eq!(decoded.version, storage::VERSION);
    let again = storage::encode(&decoded.config, 7).expect("re-encoding a decoded record");
    assert_eq!(
        again.as_bytes(),
        record.as_bytes(),
        "a stored configuration does not survive a save/load cycle"
    );
}
