//! SwitchTask's policy engine (`SwitchCore`): priorities, interlocks, over-current protection
//! and the safe state, driven through its sans-IO interface as the runner drives it, with every
//! relay write acknowledged. The helpers here also stand in for SwitchTask behind the
//! front-ends' cases (console, HTTP, SNMP).
use super::{Failure, Outcome, cases, check, check_eq, check_ok};
use crate::pdu::ChannelTelemetry;
use crate::pdu::config::PduConfig;
use crate::pdu::frontend::{OcpState, Snapshot, SwitchState};
use crate::pdu::mcp23017::Port;
use crate::pdu::switch::{CLAIM_HOLD, Expander, IoOutcome, SwitchCore, reason};
use crate::pdu::{
    CHANNELS, Outlet, OutletMask, Source, SwitchOp, SwitchReply, SwitchRequest, SwitchStatus,
};
use crate::time::Instant;

cases![
    an_interlock_group_allows_one_outlet_on_and_always_allows_off,
    a_lower_priority_source_cannot_undo_a_fresh_console_action,
    over_current_trips_the_last_outlet_switched_on_and_locks_out,
    the_safe_state_keeps_only_the_safe_mask_and_refuses_until_cleared,
];

fn ms(v: u64) -> Instant {
    Instant::from_millis(v)
}

fn outlet(n: u8) -> Result<Outlet, Failure> {
    Ok(check_ok!(Outlet::new(n)))
}

/// A core booted with `config` and its boot writes done.
pub(super) fn ready(config: &PduConfig) -> Result<SwitchCore, Failure> {
    let (mut core, _) = SwitchCore::boot_from(config, ms(0));
    settle(&mut core, ms(0))?;
    while core.poll_reply().is_some() {}
    while core.poll_event().is_some() {}
    check_eq!(core.state(), SwitchState::Ready);
    Ok(core)
}

/// Acknowledge every write the core asks for, as the runner does after each input; returns the
/// last relay latch value written.
pub(super) fn settle(core: &mut SwitchCore, now: Instant) -> Result<Option<u8>, Failure> {
    let mut relay = None;
    for _ in 0..32 {
        core.handle_timeout(now);
        let Some(write) = core.poll_write(now) else {
            return Ok(relay);
        };
        if (write.expander, write.port) == (Expander::Relay, Port::A) {
            relay = Some(write.value);
        }
        core.handle_io_result(write, IoOutcome::Done, now);
    }
    check!(false, "the writes never settle");
    Ok(relay)
}

/// Hand `request` to the core at `now`, settle, and return its one reply.
fn ask(
    core: &mut SwitchCore,
    request: SwitchRequest,
    now: Instant,
) -> Result<SwitchReply, Failure> {
    core.handle_request(request, now);
    settle(core, now)?;
    let (source, reply) = check_ok!(core.poll_reply());
    check_eq!(source, request.source);
    check_eq!(reply.token, request.token);
    check!(core.poll_reply().is_none(), "more than one reply");
    Ok(reply)
}

/// What a front-end's runner does with an `Intent::Switch`: SwitchTask's reply to `request`.
pub(super) fn forward(
    core: &mut SwitchCore,
    request: SwitchRequest,
    now: Instant,
) -> Result<SwitchReply, Failure> {
    ask(core, request, now)
}

/// The front-ends' view of a PDU running `core` with `config`.
pub(super) fn snapshot(core: &SwitchCore, config: &PduConfig, now: Instant) -> Snapshot {
    let mut serial = heapless::String::new();
    let _ = serial.push_str("SN-0000042");
    let mut telemetry = [ChannelTelemetry::default(); CHANNELS];
    for (i, t) in telemetry.iter_mut().enumerate() {
        t.voltage_v = 230.0;
        t.current_a = if core.relays().0 & (1 << i) != 0 {
            0.25
        } else {
            0.0
        };
        t.power_w = 230.0 * t.current_a;
    }
    Snapshot {
        uptime_ms: now.as_millis(),
        outlets: core.relays(),
        switch_state: core.state(),
        telemetry,
        ocp: core.ocp_status(),
        temperature_c: 31.5,
        supply_v: 12.0,
        usb_v: 5.0,
        serial,
        firmware_version: "selftest",
        config: config.clone(),
    }
}

fn set(source: Source, n: u8, on: bool, token: u32) -> Result<SwitchRequest, Failure> {
    let mut r = SwitchRequest::set(source, outlet(n)?, on);
    r.token = token;
    Ok(r)
}

fn an_interlock_group_allows_one_outlet_on_and_always_allows_off() -> Outcome {
    let mut config = PduConfig::default();
    config.switch.interlock_groups[0] = OutletMask(0b0000_0011);
    let mut core = ready(&config)?;
    let r = ask(&mut core, set(Source::Net, 1, true, 1)?, ms(1_000))?;
    check_eq!(
        (r.status, r.state_bitmap),
        (SwitchStatus::Ok, OutletMask(0b01))
    );
    let r = ask(&mut core, set(Source::Net, 2, true, 2)?, ms(2_000))?;
    check_eq!(
        (r.status, r.fault_code),
        (SwitchStatus::Interlocked, reason::INTERLOCK_GROUP)
    );
    check_eq!(
        core.relays(),
        OutletMask(0b01),
        "a refusal switches nothing"
    );
    // Outlets outside the group are free, and switching off is the safe direction.
    let r = ask(&mut core, set(Source::Net, 5, true, 3)?, ms(3_000))?;
    check_eq!(r.status, SwitchStatus::Ok);
    let r = ask(&mut core, set(Source::Net, 1, false, 4)?, ms(4_000))?;
    check_eq!(r.status, SwitchStatus::Ok);
    let r = ask(&mut core, set(Source::Net, 2, true, 5)?, ms(5_000))?;
    check_eq!(
        (r.status, r.state_bitmap),
        (SwitchStatus::Ok, OutletMask(0b1_0010))
    );
    check_eq!(
        core.relays_written(),
        Some(OutletMask(0b1_0010)),
        "the latch holds it"
    );
    Ok(())
}

fn a_lower_priority_source_cannot_undo_a_fresh_console_action() -> Outcome {
    let mut core = ready(&PduConfig::default())?;
    let t = ms(1_000);
    check_eq!(
        ask(&mut core, set(Source::Console, 3, true, 1)?, t)?.status,
        SwitchStatus::Ok
    );
    let r = ask(&mut core, set(Source::Button, 3, false, 2)?, ms(1_200))?;
    check_eq!(
        (r.status, r.fault_code),
        (SwitchStatus::Preempted, reason::CLAIMED_BY_HIGHER)
    );
    // Once the claim has expired the button may act.
    let after = t + CLAIM_HOLD;
    let r = ask(&mut core, set(Source::Button, 3, false, 3)?, after)?;
    check_eq!(
        (r.status, r.state_bitmap),
        (SwitchStatus::Ok, OutletMask::NONE)
    );
    Ok(())
}

fn over_current_trips_the_last_outlet_switched_on_and_locks_out() -> Outcome {
    let mut core = ready(&PduConfig::default())?; // limit 10 A: trip at 9.5 A
    check_eq!(
        ask(&mut core, set(Source::Net, 1, true, 1)?, ms(1_000))?.status,
        SwitchStatus::Ok
    );
    check_eq!(
        ask(&mut core, set(Source::Net, 4, true, 2)?, ms(2_000))?.status,
        SwitchStatus::Ok
    );
    let mut currents = [0.0f32; CHANNELS];
    currents[0] = 4.0;
    currents[3] = 5.8;
    core.handle_currents(&currents, ms(3_000));
    let relay = settle(&mut core, ms(3_000))?;
    check_eq!(
        relay,
        Some(0b0000_0001),
        "outlet 4, switched on last, goes off"
    );
    let ocp = core.ocp_status();
    check_eq!(
        (ocp.state, ocp.last_tripped_channel, ocp.trip_count),
        (OcpState::Lockout, 4, 1)
    );
    let r = ask(&mut core, set(Source::Console, 2, true, 3)?, ms(4_000))?;
    check_eq!(
        (r.status, r.fault_code),
        (SwitchStatus::OverCurrentLockout, reason::OCP_LOCKOUT)
    );
    // The load is gone: below limit − 1.5 A the lockout ends.
    currents[3] = 0.0;
    core.handle_currents(&currents, ms(5_000));
    settle(&mut core, ms(5_000))?;
    check_eq!(core.ocp_status().state, OcpState::Normal);
    check_eq!(
        ask(&mut core, set(Source::Console, 2, true, 4)?, ms(6_000))?.status,
        SwitchStatus::Ok
    );
    Ok(())
}

fn the_safe_state_keeps_only_the_safe_mask_and_refuses_until_cleared() -> Outcome {
    let mut config = PduConfig::default();
    config.switch.safe_mask = OutletMask(0b1000_0001);
    let mut core = ready(&config)?;
    check_eq!(
        core.relays(),
        OutletMask(0b1000_0001),
        "boot applies the safe mask"
    );
    let mut all_on = SwitchRequest::new(Source::Console, SwitchOp::AllOn);
    all_on.token = 1;
    check_eq!(
        ask(&mut core, all_on, ms(1_000))?.state_bitmap,
        OutletMask::ALL
    );
    let mut safe = SwitchRequest::new(Source::Health, SwitchOp::SafeState);
    safe.token = 2;
    let r = ask(&mut core, safe, ms(2_000))?;
    check_eq!(
        r.state_bitmap,
        OutletMask(0b1000_0001),
        "the safe state only switches off"
    );
    check_eq!(core.state(), SwitchState::FaultSafe);
    check!(core.snapshot().fault_led);
    let r = ask(&mut core, set(Source::Console, 2, true, 3)?, ms(3_000))?;
    check_eq!(
        (r.status, r.fault_code),
        (SwitchStatus::FaultSafe, reason::FAULT_SAFE)
    );
    let mut clear = SwitchRequest::new(Source::Console, SwitchOp::ClearFault);
    clear.token = 4;
    check_eq!(ask(&mut core, clear, ms(4_000))?.status, SwitchStatus::Ok);
    check_eq!(core.state(), SwitchState::Ready);
    check_eq!(
        ask(&mut core, set(Source::Console, 2, true, 5)?, ms(5_000))?.status,
        SwitchStatus::Ok
    );
    Ok(())
}
