//! HTTP requests to the pump controller's REST API (`pump::command::handle_http`).
//!
//! * Every reply the handler makes writes out as one complete HTTP/1.1 response (checked with
//!   `httparse`) whose `Content-Length` matches its body, and the body is JSON.
//! * Commands come only from requests that carried the right Basic credentials; a dispense
//!   stays inside the limits.
//! * A request the handler finds incomplete stays incomplete for every shorter prefix too: it
//!   never answers a prefix and then asks for more of the same request.
#![no_main]

use firmware_core::pump::command::{
    Command, HttpOutcome, HttpReply, RecipeInfo, RestConfig, handle_http,
};
use libfuzzer_sys::fuzz_target;
use twinbench_fuzz::{check_http_response, check_json};

const RECIPES: &[RecipeInfo<'static>] = &[
    RecipeInfo { name: "mojito" },
    RecipeInfo { name: "gin tonic" },
];

/// base64("admin:pumpctl"), the factory credentials.
const GOOD_AUTH: &[u8] = b"YWRtaW46cHVtcGN0bA";

#[track_caller]
fn check_reply(r: &HttpReply) {
    let mut out = vec![0u8; 2048];
    let n = r.write_to(&mut out).expect("a reply fits 2 KiB");
    let resp = check_http_response(&out[..n], false);
    assert_eq!(resp.code, r.code);
    check_json(resp.body);
}

/// Whether the request head carries an `Authorization` header with the factory credentials.
fn has_credentials(data: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    if req.parse(data).is_err() {
        return false;
    }
    req.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("authorization")
            && h.value.windows(GOOD_AUTH.len()).any(|w| w == GOOD_AUTH)
    })
}

fuzz_target!(|data: &[u8]| {
    let config = RestConfig::default();
    let outcome = handle_http(data, &config, RECIPES);
    match &outcome {
        HttpOutcome::Incomplete => {
            // A runner reads in chunks; a shorter read must not have been answered already.
            for cut in [data.len() / 2, data.len().saturating_sub(1)] {
                assert_eq!(
                    handle_http(&data[..cut], &config, RECIPES),
                    HttpOutcome::Incomplete,
                    "a prefix of an incomplete request was answered"
                );
            }
        }
        HttpOutcome::Respond(r) => check_reply(r),
        HttpOutcome::Execute(command, r) => {
            assert_eq!(r.code, 202);
            check_reply(r);
            assert!(
                has_credentials(data),
                "a command without credentials: {command:?}"
            );
            if let Command::StartDispense(d) = command {
                let l = config.limits;
                assert!(d.volume_ml > 0.0 && d.volume_ml <= l.max_volume_ml, "{d:?}");
                assert!(
                    d.flow_ml_min > 0.0 && d.flow_ml_min <= l.max_flow_ml_min,
                    "{d:?}"
                );
            }
        }
        HttpOutcome::Status | HttpOutcome::Page => {}
        HttpOutcome::WebSocket { control } => {
            assert!(
                !control || has_credentials(data),
                "control without credentials"
            );
        }
    }
});
