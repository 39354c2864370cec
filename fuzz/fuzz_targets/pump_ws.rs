//! WebSocket text messages from the pump's web UI (`pump::ws::WsSession::handle_text`).
//!
//! * A session without credentials refuses every message; one with credentials decides
//!   exactly as the MQTT command parser does (one parser for both ways in).
//! * Every refusal's reply frame is JSON `{"error": <the error's text>}`, never cut short.
//! * The feed frame the UI receives is JSON with four pumps, whatever the dispensed volumes
//!   are (the last bytes of the input become them: NaN and infinities included).
#![no_main]

use firmware_core::pump::command::{Limits, RecipeInfo, parse_command};
use firmware_core::pump::governor::Priority;
use firmware_core::pump::status::PumpSnapshot;
use firmware_core::pump::ws::{WsError, WsSession, frame};
use firmware_core::time::Instant;
use libfuzzer_sys::fuzz_target;
use twinbench_fuzz::check_json;

const RECIPES: &[RecipeInfo<'static>] = &[RecipeInfo { name: "mojito" }];

#[track_caller]
fn check_reply(e: &WsError) {
    let reply = e.reply();
    let v = check_json(reply.as_bytes());
    assert_eq!(v["error"].as_str(), Some(e.to_string().as_str()), "{reply}");
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits::DEFAULT;
    let viewer = WsSession { control: false };
    let controller = WsSession { control: true };

    let refused = viewer.handle_text(data, &limits, RECIPES);
    assert_eq!(refused, Err(WsError::Unauthorized));
    check_reply(&WsError::Unauthorized);

    let answer = controller.handle_text(data, &limits, RECIPES);
    assert_eq!(
        answer,
        parse_command(data, &limits, RECIPES).map_err(WsError::Command)
    );
    if let Err(e) = &answer {
        check_reply(e);
    }

    let mut snap = PumpSnapshot::default();
    let floats = data
        .rchunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()));
    for (pump, (v, b)) in snap.pumps.iter_mut().zip(floats.zip(data.iter().rev())) {
        pump.dispensed_ml = v;
        pump.position_mm = -v;
        pump.active = b & 1 == 1;
    }
    let millis = data
        .iter()
        .fold(0u64, |a, &b| a.rotate_left(8) ^ u64::from(b));
    for p in [Priority::Idle, Priority::Dispensing, Priority::Emergency] {
        let text = frame(Instant::from_millis(millis), p, &snap);
        let v = check_json(text.as_bytes());
        assert_eq!(v["pumps"].as_object().map(|o| o.len()), Some(4), "{text}");
        assert_eq!(v["pumping"].as_bool(), Some(snap.pumping()));
    }
});
