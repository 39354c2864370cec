//! The pump controller's dispense state machine (`PumpMotion`) against a scripted FluidNC: a
//! dose from request to G-code to completion, the governor's priority, and the E-stop.
use core::fmt::Write as _;

use embassy_sync::blocking_mutex::raw::NoopRawMutex;

use super::{Failure, Outcome, cases, check, check_eq, check_ok};
use crate::pump::dispense::{AbortCause, AlarmKind, MotionConfig, PumpEvent, PumpMotion};
use crate::pump::estop::EstopTrigger;
use crate::pump::{DispenseRequest, Governor, Priority, Pump};
use crate::time::Instant;

cases![
    a_dose_becomes_one_move_completes_on_idle_and_governs_priority,
    an_estop_sends_feed_hold_first_and_latches_until_resume,
];

type Gov = Governor<NoopRawMutex, 1>;
type Motion<'g> = PumpMotion<'g, NoopRawMutex, 1>;

const BANNER: &str = "\nGrbl 3.9 [FluidNC v3.9.9 (noradio) '$' for help]\n";

fn ms(v: u64) -> Instant {
    Instant::from_millis(v)
}

/// 1 ml at 6 ml/min on X: 20 mm at 120 mm/min with the default 0.05 ml/mm, 10 s.
fn one_ml_on_x() -> DispenseRequest {
    DispenseRequest {
        pump: Pump::X,
        volume_ml: 1.0,
        flow_ml_min: 6.0,
    }
}

/// Everything the core wants to send, as text (`^` for the 0x18 reset byte).
fn wire(m: &mut Motion<'_>) -> Result<heapless::String<128>, Failure> {
    let mut out = heapless::String::new();
    while let Some(t) = m.poll_transmit() {
        for &b in t.bytes() {
            check!(
                out.push(if b == 0x18 { '^' } else { char::from(b) })
                    .is_ok()
            );
        }
    }
    Ok(out)
}

/// A FluidNC status report with X at `x` mm.
fn report(m: &mut Motion<'_>, state: &str, x: f32, now: Instant) -> Outcome {
    let mut r: heapless::String<96> = heapless::String::new();
    check!(writeln!(r, "<{state}|MPos:{x:.3},0.000,0.000,0.000|FS:0,0>").is_ok());
    m.handle_bytes(r.as_bytes(), now);
    Ok(())
}

fn feed(m: &mut Motion<'_>, text: &str, now: Instant) {
    m.handle_bytes(text.as_bytes(), now);
}

/// A core whose dose on X has been sent and acknowledged.
fn dispensing(gov: &Gov) -> Result<Motion<'_>, Failure> {
    let mut m = Motion::new(gov, MotionConfig::default());
    let id = check_ok!(m.dispense(&[one_ml_on_x()], ms(0)));
    check_eq!(id, 1);
    check_eq!(wire(&mut m)?.as_str(), "?", "a fresh report before moving");
    report(&mut m, "Idle", 0.0, ms(10))?;
    check_eq!(wire(&mut m)?.as_str(), "G91 G1 X20.000 F120.000\n");
    feed(&mut m, "ok\n", ms(20));
    Ok(m)
}

fn a_dose_becomes_one_move_completes_on_idle_and_governs_priority() -> Outcome {
    let gov = Gov::new();
    let mut m = dispensing(&gov)?;
    check_eq!(gov.get(), Priority::Dispensing);
    let mut started = false;
    while let Some(e) = m.poll_event() {
        started |= matches!(
            e,
            PumpEvent::DispenseStarted {
                id: 1,
                expected_ms: 10_000,
                ..
            }
        );
    }
    check!(started, "no DispenseStarted with the expected 10 s");
    report(&mut m, "Run", 10.0, ms(5_000))?;
    check!(m.is_busy());
    report(&mut m, "Idle", 20.0, ms(10_100))?;
    let mut complete = None;
    while let Some(e) = m.poll_event() {
        if let PumpEvent::DispenseComplete {
            id, dispensed_ml, ..
        } = e
        {
            complete = Some((id, dispensed_ml));
        }
    }
    check_eq!(complete, Some((1, [1.0, 0.0, 0.0, 0.0])));
    check_eq!(gov.get(), Priority::Idle, "priority back to IDLE");
    check!(!m.is_busy());
    Ok(())
}

fn an_estop_sends_feed_hold_first_and_latches_until_resume() -> Outcome {
    let gov = Gov::new();
    let mut m = dispensing(&gov)?;
    report(&mut m, "Run", 8.0, ms(4_000))?;
    while m.poll_event().is_some() {}
    m.estop(EstopTrigger::Button, ms(4_001));
    let mut sent = wire(&mut m)?;
    check!(sent.starts_with('!'), "feed hold first: {sent:?}");
    check_eq!(gov.get(), Priority::Emergency);
    check_eq!(
        m.poll_event(),
        Some(PumpEvent::Alarm(AlarmKind::EmergencyStop {
            trigger: EstopTrigger::Button
        })),
        "the alarm is the first event"
    );
    // The controller decelerates, is reset and unlocked.
    report(&mut m, "Hold:1", 8.05, ms(4_010))?;
    report(&mut m, "Hold:0", 8.06, ms(4_040))?;
    check!(sent.push_str(&wire(&mut m)?).is_ok());
    feed(&mut m, BANNER, ms(4_050));
    check!(sent.push_str(&wire(&mut m)?).is_ok());
    feed(&mut m, "[MSG:INFO: Caution: Unlocked]\nok\n", ms(4_060));
    check!(sent.push_str(&wire(&mut m)?).is_ok());
    report(&mut m, "Idle", 8.06, ms(4_070))?;
    check!(sent.push_str(&wire(&mut m)?).is_ok());
    check_eq!(
        sent.as_str(),
        "!?^$X\n?",
        "hold, report, reset, unlock, report"
    );
    let mut aborted = false;
    while let Some(e) = m.poll_event() {
        aborted |= matches!(
            e,
            PumpEvent::DispenseAborted {
                cause: AbortCause::Alarm(AlarmKind::EmergencyStop { .. }),
                ..
            }
        );
    }
    check!(aborted, "the dose is reported aborted");
    // Latched: no new dose, and EMERGENCY holds, until resume.
    check!(m.dispense(&[one_ml_on_x()], ms(5_000)).is_err());
    check_eq!(gov.get(), Priority::Emergency);
    check_ok!(m.resume(ms(6_000)));
    check_eq!(gov.get(), Priority::Idle);
    let mut resumed = None;
    while let Some(e) = m.poll_event() {
        if let PumpEvent::Resumed { dispensed_ml } = e {
            resumed = Some(dispensed_ml[0]);
        }
    }
    let x = check_ok!(resumed);
    check!(
        (x - 8.06 * 0.05).abs() < 1e-3,
        "dispensed before the stop: {x}"
    );
    Ok(())
}
