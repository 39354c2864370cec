//! Bytes typed on the PDU's UART console (`pdu::console::Console::push_byte`), byte by byte,
//! with the console's intents carried out on the snapshot it answers from.
//!
//! * Every reply is UTF-8 made of whole lines `\t[ECHO] …\r\n` or `\t[ERROR] …\r\n`, and fits
//!   the buffer; the follow-up after SwitchTask's answer is made of the same lines.
//! * A configuration the console saves (`CONFIG SAVE`, `SET_IP`, `CALIBRATE`, …) can be
//!   stored and loaded back unchanged, and the next commands see it.
//! * Only CR and LF end a line (and get an answer); a configuration left pending when the input
//!   ends can be stored too.
#![no_main]

use firmware_core::pdu::config::PduConfig;
use firmware_core::pdu::console::{Console, RECOMMENDED_OUT_LEN};
use firmware_core::pdu::frontend::Intent;
use firmware_core::pdu::{OutletMask, SwitchOp, SwitchReply, SwitchStatus};
use libfuzzer_sys::fuzz_target;
use twinbench_fuzz::{check_storable, snapshot};

#[track_caller]
fn check_lines(reply: &[u8]) {
    let text = std::str::from_utf8(reply).expect("console reply is UTF-8");
    assert!(text.is_empty() || text.ends_with("\r\n"), "{text:?}");
    for line in text.split_terminator("\r\n") {
        assert!(
            line.starts_with("\t[ECHO] ") || line.starts_with("\t[ERROR] "),
            "reply line without the device's prefix: {line:?}"
        );
        assert!(!line.contains(['\r', '\n']), "broken reply line: {line:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut snap = snapshot();
    let mut console = Console::new();
    let mut out = vec![0u8; RECOMMENDED_OUT_LEN];
    for &b in data {
        let executed = match console.push_byte(b, &snap, &mut out) {
            Ok(None) => continue,
            Ok(Some(e)) => e,
            Err(e) => panic!("no reply: {e}"),
        };
        assert!(matches!(b, b'\r' | b'\n'), "a line ended on byte {b:#04x}");
        assert!(executed.written <= out.len());
        check_lines(&out[..executed.written]);

        let mut replies = Vec::new();
        for intent in &executed.intents {
            match intent {
                Intent::Switch(req) => {
                    let state = match req.op {
                        SwitchOp::Set => req
                            .channel
                            .map_or(snap.outlets, |ch| snap.outlets.with(ch, req.value)),
                        SwitchOp::AllOn => OutletMask(0xFF),
                        SwitchOp::AllOff => OutletMask::NONE,
                        _ => snap.outlets,
                    };
                    snap.outlets = state;
                    replies.push(SwitchReply {
                        status: if b == b'\n' {
                            SwitchStatus::Ok
                        } else {
                            SwitchStatus::Busy
                        },
                        state_bitmap: state,
                        fault_code: 0,
                        token: req.token,
                    });
                }
                Intent::SaveConfig(cfg) => {
                    check_storable(cfg);
                    snap.config = cfg.clone();
                }
                Intent::FactoryReset => snap.config = PduConfig::default(),
                Intent::Reboot | Intent::ClearErrors => {}
            }
        }
        if let Some(followup) = executed.followup {
            let n = followup
                .finish(&replies, &mut out)
                .expect("a follow-up fits the recommended buffer");
            assert!(n > 0, "a switch command answered nothing");
            check_lines(&out[..n]);
        }
    }
    if let Some(pending) = console.pending() {
        check_storable(pending);
    }
});
