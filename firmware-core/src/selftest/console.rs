//! The ENERGIS console core: bytes in through the line editor, commands out as intents that
//! SwitchTask and StorageTask (the real cores, on a RAM EEPROM) answer, and the reply text.
use embassy_futures::block_on;

use super::storage::{reboot, store_on};
use super::switch::{forward, ready, snapshot};
use super::{Failure, Outcome, cases, check, check_eq, check_ok};
use crate::pdu::config::PduConfig;
use crate::pdu::console::{Console, Executed, LINE_MAX, RECOMMENDED_OUT_LEN};
use crate::pdu::eeprom::mock::MockEeprom;
use crate::pdu::frontend::{Intent, Snapshot};
use crate::pdu::storage::{StorageOp, StorageReply, StorageRequest};
use crate::pdu::{OutletMask, Source, SwitchOp};
use crate::time::Instant;

cases![
    set_ch_is_answered_after_switch_task_and_says_why_it_was_refused,
    a_saved_configuration_reaches_the_eeprom_and_survives_a_reboot,
    a_bad_line_gets_one_error_and_the_console_goes_on,
];

type Out = [u8; RECOMMENDED_OUT_LEN];

/// Type `line` and CR, byte by byte as a terminal sends it; the result of the line.
fn type_line(
    console: &mut Console,
    line: &str,
    snap: &Snapshot,
    out: &mut Out,
) -> Result<Executed, Failure> {
    for &b in line.as_bytes() {
        let early = check_ok!(console.push_byte(b, snap, out));
        check!(early.is_none(), "{line:?} ended before its CR");
    }
    Ok(check_ok!(check_ok!(console.push_byte(b'\r', snap, out))))
}

fn text(out: &Out, n: usize) -> Result<&str, Failure> {
    Ok(check_ok!(core::str::from_utf8(&out[..n])))
}

fn set_ch_is_answered_after_switch_task_and_says_why_it_was_refused() -> Outcome {
    let mut config = PduConfig::default();
    config.switch.interlock_groups[0] = OutletMask(0b0000_0110);
    let mut switch = ready(&config)?;
    let mut console = Console::new();
    let mut out = [0u8; RECOMMENDED_OUT_LEN];
    for (line, expect, now) in [
        ("SET_CH 2 ON", "CH2 = ON", 1_000),
        ("set_ch 3 on", "interlocked", 2_000),
    ] {
        let now = Instant::from_millis(now);
        let snap = snapshot(&switch, &config, now);
        let done = type_line(&mut console, line, &snap, &mut out)?;
        check_eq!(done.written, 0, "{line}: the reply waits for SwitchTask");
        let [Intent::Switch(request)] = done.intents.as_slice() else {
            check!(false, "{line}: intents {:?}", done.intents);
            return Ok(());
        };
        check_eq!(
            (request.source, request.op),
            (Source::Console, SwitchOp::Set)
        );
        let reply = forward(&mut switch, *request, now)?;
        let followup = check_ok!(done.followup);
        let n = check_ok!(followup.finish(&[reply], &mut out));
        let said = text(&out, n)?;
        check!(said.contains(expect), "{line}: {said:?}");
    }
    check_eq!(switch.relays(), OutletMask(0b0000_0010));
    Ok(())
}

fn a_saved_configuration_reaches_the_eeprom_and_survives_a_reboot() -> Outcome {
    let config = PduConfig::default();
    let switch = ready(&config)?;
    let snap = snapshot(&switch, &config, Instant::from_millis(500));
    let mut console = Console::new();
    let mut out = [0u8; RECOMMENDED_OUT_LEN];
    let set = type_line(
        &mut console,
        "CONFIG SET identity.device_name Rack 9",
        &snap,
        &mut out,
    )?;
    check!(
        set.intents.is_empty(),
        "nothing is saved before CONFIG SAVE"
    );
    let save = type_line(&mut console, "CONFIG SAVE", &snap, &mut out)?;
    let [Intent::SaveConfig(saved)] = save.intents.as_slice() else {
        check!(false, "CONFIG SAVE intents {:?}", save.intents);
        return Ok(());
    };
    check_eq!(saved.identity.device_name.as_str(), "Rack 9");
    // StorageTask's side of the intent.
    let mut store = store_on(MockEeprom::new());
    let request = StorageRequest {
        op: StorageOp::Save(saved.clone()),
        token: 7,
    };
    let reply = block_on(store.handle(request));
    check!(
        matches!(reply, StorageReply::Saved { token: 7, .. }),
        "{reply:?}"
    );
    let loaded = block_on(reboot(store).load());
    check_eq!(loaded.config.identity.device_name.as_str(), "Rack 9");
    check!(
        console.pending().is_none(),
        "the pending copy is gone once saved"
    );
    Ok(())
}

fn a_bad_line_gets_one_error_and_the_console_goes_on() -> Outcome {
    let config = PduConfig::default();
    let switch = ready(&config)?;
    let snap = snapshot(&switch, &config, Instant::from_millis(500));
    let mut console = Console::new();
    let mut out = [0u8; RECOMMENDED_OUT_LEN];
    // Too long for the line editor: refused once, at the CR.
    let mut errors = 0;
    for _ in 0..LINE_MAX + 10 {
        if let Some(done) = check_ok!(console.push_byte(b'x', &snap, &mut out)) {
            check!(false, "a line ended early: {:?}", text(&out, done.written));
        }
    }
    if let Some(done) = check_ok!(console.push_byte(b'\r', &snap, &mut out)) {
        errors += usize::from(text(&out, done.written)?.contains("[ERROR]"));
    }
    check_eq!(errors, 1, "one error line for the overlong line");
    for line in ["SET_CH 9 ON", "FROBNICATE", "SET_CH 2 MAYBE"] {
        let done = type_line(&mut console, line, &snap, &mut out)?;
        let said = text(&out, done.written)?;
        check!(said.contains("[ERROR]"), "{line}: {said:?}");
        check!(done.intents.is_empty(), "{line}: an intent from a bad line");
    }
    let done = type_line(&mut console, "GET_CH 1", &snap, &mut out)?;
    let said = text(&out, done.written)?;
    check!(
        !said.contains("[ERROR]") && said.contains("CH1"),
        "{said:?}"
    );
    Ok(())
}
