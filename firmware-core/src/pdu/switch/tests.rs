//! Behaviour tests of [`SwitchCore`] and [`SwitchTask`].
use super::*;
use crate::pdu::config::PduConfig;
use std::vec::Vec as StdVec;

pub(super) fn ms(v: u64) -> Instant {
    Instant::from_millis(v)
}

pub(super) fn ch(n: u8) -> Outlet {
    Outlet::new(n).expect("outlet in range")
}

pub(super) fn policy() -> SwitchPolicy {
    PduConfig::default().switch
}

pub(super) fn ocp() -> OcpConfig {
    OcpConfig { limit_a: 10.0 }
}

/// Perform every pending write successfully; returns the relay values written.
#[track_caller]
pub(super) fn settle(core: &mut SwitchCore, now: Instant) -> StdVec<u8> {
    let mut relay = StdVec::new();
    for _ in 0..20 {
        core.handle_timeout(now);
        let Some(w) = core.poll_write(now) else {
            return relay;
        };
        if (w.expander, w.port) == (Expander::Relay, Port::A) {
            relay.push(w.value);
        }
        core.handle_io_result(w, IoOutcome::Done, now);
    }
    panic!("writes never settle");
}

fn switch_with(policy: SwitchPolicy) -> SwitchCore {
    let mut core = SwitchCore::new(policy.clone(), &ocp());
    core.boot(&policy, &ocp(), ms(0));
    settle(&mut core, ms(0));
    let _ = drain_replies(&mut core);
    let _ = drain_events(&mut core);
    core
}

fn switch_ready() -> SwitchCore {
    switch_with(policy())
}

fn drain_replies(core: &mut SwitchCore) -> StdVec<(Source, SwitchReply)> {
    core::iter::from_fn(|| core.poll_reply()).collect()
}

fn drain_events(core: &mut SwitchCore) -> StdVec<SwitchEvent> {
    core::iter::from_fn(|| core.poll_event()).collect()
}

/// Handle `req` at `now`, settle the writes, and return the single reply.
#[track_caller]
fn send(core: &mut SwitchCore, req: SwitchRequest, now: Instant) -> SwitchReply {
    core.handle_request(req, now);
    settle(core, now);
    let replies = drain_replies(core);
    assert_eq!(replies.len(), 1, "expected one reply, got {replies:?}");
    replies[0].1
}

/// Handle `req` and expect no reply yet (deferred).
#[track_caller]
fn send_deferred(core: &mut SwitchCore, req: SwitchRequest, now: Instant) {
    core.handle_request(req, now);
    settle(core, now);
    let replies = drain_replies(core);
    assert!(replies.is_empty(), "expected deferral, got {replies:?}");
}

fn set(source: Source, n: u8, on: bool) -> SwitchRequest {
    SwitchRequest::set(source, ch(n), on)
}

fn op(source: Source, op: SwitchOp) -> SwitchRequest {
    SwitchRequest::new(source, op)
}

#[track_caller]
fn assert_status(reply: SwitchReply, status: SwitchStatus, code: u16) {
    assert_eq!(
        (reply.status, reply.fault_code),
        (status, code),
        "reply {reply:?}"
    );
}

fn currents(total: f32) -> [f32; CHANNELS] {
    let mut c = [0.0; CHANNELS];
    c[0] = total;
    c
}

// ----- state machine ------------------------------------------------------------------------

#[test]
fn boot_applies_safe_mask_and_enters_ready() {
    let mut p = policy();
    p.safe_mask = OutletMask(0b0000_0101);
    let mut core = SwitchCore::new(p.clone(), &ocp());
    assert_eq!(core.state(), SwitchState::Init);
    core.boot(&p, &ocp(), ms(0));
    assert_eq!(core.state(), SwitchState::Ready);
    assert_eq!(settle(&mut core, ms(0)), [0b0000_0101]);
    assert_eq!(core.relays_written(), Some(OutletMask(0b101)));
    assert!(
        drain_events(&mut core).contains(&SwitchEvent::StateChanged {
            state: SwitchState::Ready,
            fault_code: 0
        })
    );
}

#[test]
fn boot_with_a_safe_mask_that_breaks_a_group_falls_back_to_all_off() {
    let mut p = policy();
    p.safe_mask = OutletMask(0b11);
    p.interlock_groups[0] = OutletMask(0b11);
    let core = switch_with(p);
    assert_eq!(core.relays(), OutletMask::NONE);
}

#[test]
fn requests_before_boot_wait_and_run_after_boot() {
    let mut core = SwitchCore::new(policy(), &ocp());
    core.handle_request(set(Source::Console, 3, true), ms(0));
    assert!(drain_replies(&mut core).is_empty());
    core.boot(&policy(), &ocp(), ms(50));
    settle(&mut core, ms(50));
    let replies = drain_replies(&mut core);
    // Boot's first relay write marks every outlet as just changed, so the request waits out
    // the minimum toggle interval.
    assert!(replies.is_empty(), "{replies:?}");
    settle(&mut core, ms(150));
    let replies = drain_replies(&mut core);
    assert_eq!(replies.len(), 1);
    assert_status(replies[0].1, SwitchStatus::Ok, 0);
    assert!(core.relays().contains(ch(3)));
}

#[test]
fn requests_before_boot_time_out_when_boot_never_comes() {
    let mut core = SwitchCore::new(policy(), &ocp());
    let mut req = set(Source::Net, 1, true);
    req.timeout_ms = 200;
    core.handle_request(req, ms(0));
    assert_eq!(core.poll_timeout(), Some(ms(200)));
    core.handle_timeout(ms(200));
    let replies = drain_replies(&mut core);
    assert_status(replies[0].1, SwitchStatus::Timeout, reason::NOT_READY);
}

#[test]
fn query_answers_the_state_without_switching() {
    let mut core = switch_ready();
    let r = send(&mut core, op(Source::Net, SwitchOp::Query), ms(500));
    assert_status(r, SwitchStatus::Ok, 0);
    assert_eq!(r.state_bitmap, OutletMask::NONE);
}

// ----- switching ----------------------------------------------------------------------------

#[test]
fn set_switches_one_relay_and_the_channel_led_follows() {
    let mut core = switch_ready();
    let mut req = set(Source::Console, 2, true);
    req.token = 77;
    core.handle_request(req, ms(500));
    assert!(
        drain_replies(&mut core).is_empty(),
        "the reply waits for the relay write"
    );
    let w = core.poll_write(ms(500)).expect("relay write");
    assert_eq!(
        w,
        PortWrite {
            expander: Expander::Relay,
            port: Port::A,
            value: 0b10
        }
    );
    core.handle_io_result(w, IoOutcome::Done, ms(500));
    let led = core.poll_write(ms(500)).expect("LED write");
    assert_eq!(
        (led.expander, led.port, led.value),
        (Expander::Display, Port::A, 0b10)
    );
    core.handle_io_result(led, IoOutcome::Done, ms(500));
    let replies = drain_replies(&mut core);
    assert_eq!(replies[0].0, Source::Console);
    assert_eq!(replies[0].1.token, 77);
    assert_eq!(replies[0].1.state_bitmap, OutletMask(0b10));
}

#[test]
fn toggle_inverts_the_channel() {
    let mut core = switch_ready();
    let mut t = op(Source::Button, SwitchOp::Toggle);
    t.channel = Some(ch(4));
    assert_eq!(send(&mut core, t, ms(500)).state_bitmap, OutletMask(0b1000));
    assert_eq!(send(&mut core, t, ms(700)).state_bitmap, OutletMask::NONE);
}

#[test]
fn set_without_a_channel_is_invalid() {
    let mut core = switch_ready();
    let r = send(&mut core, op(Source::Net, SwitchOp::Set), ms(500));
    assert_status(r, SwitchStatus::Invalid, reason::INVALID);
}

#[test]
fn set_mask_and_all_off_switch_several_outlets() {
    let mut core = switch_ready();
    let mut m = op(Source::Net, SwitchOp::SetMask);
    m.mask = OutletMask(0b0110_0001);
    m.value = true;
    assert_eq!(
        send(&mut core, m, ms(500)).state_bitmap,
        OutletMask(0b0110_0001)
    );
    let r = send(&mut core, op(Source::Net, SwitchOp::AllOff), ms(700));
    assert_eq!(r.state_bitmap, OutletMask::NONE);
}

// ----- interlocks ---------------------------------------------------------------------------

#[test]
fn deny_list_refuses_that_source_only() {
    let mut p = policy();
    p.deny[Source::Net.rank() as usize] = OutletMask(0b1);
    let mut core = switch_with(p);
    let r = send(&mut core, set(Source::Net, 1, true), ms(500));
    assert_status(r, SwitchStatus::Denied, reason::DENY_LIST);
    let r = send(&mut core, set(Source::Console, 1, true), ms(500));
    assert_status(r, SwitchStatus::Ok, 0);
}

#[test]
fn mutual_exclusion_group_refuses_a_second_outlet_on() {
    let mut p = policy();
    p.interlock_groups[1] = OutletMask(0b0011_0000);
    let mut core = switch_with(p);
    assert_status(
        send(&mut core, set(Source::Console, 5, true), ms(500)),
        SwitchStatus::Ok,
        0,
    );
    let r = send(&mut core, set(Source::Console, 6, true), ms(500));
    assert_status(r, SwitchStatus::Interlocked, reason::INTERLOCK_GROUP);
    // Off then on is fine.
    send(&mut core, set(Source::Console, 5, false), ms(700));
    let r = send(&mut core, set(Source::Console, 6, true), ms(700));
    assert_status(r, SwitchStatus::Ok, 0);
    assert_eq!(r.state_bitmap, OutletMask(0b0010_0000));
}

#[test]
fn all_on_is_refused_as_a_whole_when_it_would_break_a_group() {
    let mut p = policy();
    p.interlock_groups[0] = OutletMask(0b11);
    let mut core = switch_with(p);
    let r = send(&mut core, op(Source::Console, SwitchOp::AllOn), ms(500));
    assert_status(r, SwitchStatus::Interlocked, reason::INTERLOCK_GROUP);
    assert_eq!(core.relays(), OutletMask::NONE);
}

#[test]
fn a_second_toggle_too_soon_is_deferred_until_the_minimum_interval() {
    let mut core = switch_ready();
    send(&mut core, set(Source::Console, 1, true), ms(500));
    send_deferred(&mut core, set(Source::Console, 1, false), ms(530));
    assert_eq!(core.poll_timeout(), Some(ms(600)));
    settle(&mut core, ms(599));
    assert!(drain_replies(&mut core).is_empty());
    settle(&mut core, ms(600));
    let replies = drain_replies(&mut core);
    assert_status(replies[0].1, SwitchStatus::Ok, 0);
    assert_eq!(core.relays(), OutletMask::NONE);
}

#[test]
fn a_too_soon_toggle_times_out_when_its_timeout_is_shorter() {
    let mut core = switch_ready();
    send(&mut core, set(Source::Console, 1, true), ms(500));
    let mut again = set(Source::Console, 1, false);
    again.timeout_ms = 20;
    let r = send(&mut core, again, ms(530));
    assert_status(r, SwitchStatus::Timeout, reason::MIN_TOGGLE_INTERVAL);
    assert!(core.relays().contains(ch(1)));
}

#[test]
fn one_request_switching_on_more_than_the_maximum_is_refused() {
    let mut p = policy();
    p.max_simultaneous = 2;
    let mut core = switch_with(p);
    let r = send(&mut core, op(Source::Console, SwitchOp::AllOn), ms(500));
    assert_status(r, SwitchStatus::TooManyToggles, reason::SIMULTANEOUS_LIMIT);
    // Switching everything off is never limited.
    let mut m = op(Source::Console, SwitchOp::SetMask);
    m.mask = OutletMask(0b11);
    m.value = true;
    send(&mut core, m, ms(500));
    let r = send(&mut core, op(Source::Console, SwitchOp::AllOff), ms(700));
    assert_status(r, SwitchStatus::Ok, 0);
}

#[test]
fn switch_ons_beyond_the_maximum_within_one_window_wait_for_the_window() {
    let mut p = policy();
    p.max_simultaneous = 2;
    let mut core = switch_with(p);
    send(&mut core, set(Source::Console, 1, true), ms(500));
    send(&mut core, set(Source::Console, 2, true), ms(520));
    send_deferred(&mut core, set(Source::Console, 3, true), ms(540));
    // Outlet 1 leaves the 100 ms window at 600.
    assert_eq!(core.poll_timeout(), Some(ms(600)));
    settle(&mut core, ms(600));
    assert_status(
        drain_replies(&mut core)[0].1,
        SwitchStatus::Ok,
        reason::NONE,
    );
    assert_eq!(core.relays(), OutletMask(0b111));
}

// ----- priority -----------------------------------------------------------------------------

#[test]
fn a_lower_priority_request_on_a_claimed_outlet_is_preempted() {
    let mut core = switch_ready();
    send(&mut core, set(Source::Console, 3, true), ms(500));
    let r = send(&mut core, set(Source::Button, 3, false), ms(800));
    assert_status(r, SwitchStatus::Preempted, reason::CLAIMED_BY_HIGHER);
    assert!(core.relays().contains(ch(3)));
    // Other outlets are not claimed.
    let r = send(&mut core, set(Source::Button, 4, true), ms(800));
    assert_status(r, SwitchStatus::Ok, 0);
}

#[test]
fn a_higher_priority_request_takes_over_the_claim() {
    let mut core = switch_ready();
    send(&mut core, set(Source::Button, 3, true), ms(500));
    let r = send(&mut core, set(Source::Net, 3, false), ms(700));
    assert_status(r, SwitchStatus::Ok, 0);
    let r = send(&mut core, set(Source::Button, 3, true), ms(900));
    assert_status(r, SwitchStatus::Preempted, reason::CLAIMED_BY_HIGHER);
}

#[test]
fn the_claim_expires_after_the_hold_window() {
    let mut core = switch_ready();
    send(&mut core, set(Source::Console, 3, true), ms(500));
    let r = send(&mut core, set(Source::Schedule, 3, false), ms(1_500));
    assert_status(r, SwitchStatus::Ok, 0);
}

#[test]
fn a_deferred_console_request_preempts_a_later_button_request() {
    let mut core = switch_ready();
    send(&mut core, set(Source::Console, 1, true), ms(500));
    send_deferred(&mut core, set(Source::Console, 1, false), ms(550));
    let r = send(&mut core, set(Source::Button, 1, false), ms(560));
    assert_status(r, SwitchStatus::Preempted, reason::CLAIMED_BY_HIGHER);
}

#[test]
fn priority_override_reorders_sources() {
    let mut p = policy();
    // Button ranks above Console.
    p.priority_override = [0, 3, 2, 1, 4];
    let mut core = switch_with(p);
    send(&mut core, set(Source::Button, 3, true), ms(500));
    let r = send(&mut core, set(Source::Console, 3, false), ms(700));
    assert_status(r, SwitchStatus::Preempted, reason::CLAIMED_BY_HIGHER);
}

// ----- over-current -------------------------------------------------------------------------

#[test]
fn over_current_warns_then_trips_the_last_outlet_switched_on() {
    let mut core = switch_ready();
    send(&mut core, set(Source::Console, 2, true), ms(500));
    send(&mut core, set(Source::Console, 7, true), ms(600));
    send(&mut core, set(Source::Console, 4, true), ms(700));
    core.handle_currents(&currents(9.2), ms(1_000));
    assert_eq!(core.ocp_status().state, OcpState::Warning);
    core.handle_currents(&currents(9.5), ms(1_100));
    let ocp = core.ocp_status();
    assert_eq!(ocp.state, OcpState::Lockout);
    assert_eq!(ocp.last_tripped_channel, 4);
    assert_eq!(ocp.trip_count, 1);
    assert_eq!(settle(&mut core, ms(1_100)), [0b0100_0010]);
    assert!(core.snapshot().fault_led);
    assert!(drain_events(&mut core).contains(&SwitchEvent::OverCurrent {
        state: OcpState::Lockout,
        total_a: 9.5,
        tripped: Some(ch(4)),
    }));
}

#[test]
fn lockout_refuses_switching_on_but_allows_off() {
    let mut core = switch_ready();
    send(&mut core, set(Source::Console, 2, true), ms(500));
    send(&mut core, set(Source::Console, 3, true), ms(500));
    core.handle_currents(&currents(9.6), ms(1_000));
    settle(&mut core, ms(1_000));
    let r = send(&mut core, set(Source::Health, 5, true), ms(1_200));
    assert_status(r, SwitchStatus::OverCurrentLockout, reason::OCP_LOCKOUT);
    let r = send(&mut core, set(Source::Console, 2, false), ms(1_200));
    assert_status(r, SwitchStatus::Ok, 0);
}

#[test]
fn over_current_recovers_only_below_limit_minus_one_and_a_half() {
    let mut core = switch_ready();
    core.handle_currents(&currents(9.7), ms(100));
    core.handle_currents(&currents(8.6), ms(200));
    assert_eq!(core.ocp_status().state, OcpState::Lockout);
    core.handle_currents(&currents(8.4), ms(300));
    assert_eq!(core.ocp_status().state, OcpState::Normal);
    let r = send(&mut core, set(Source::Console, 1, true), ms(400));
    assert_status(r, SwitchStatus::Ok, 0);
}

#[test]
fn oc_reset_ends_the_lockout() {
    let mut core = switch_ready();
    core.handle_currents(&currents(9.7), ms(100));
    let r = send(
        &mut core,
        op(Source::Console, SwitchOp::ResetOverCurrent),
        ms(200),
    );
    assert_status(r, SwitchStatus::Ok, 0);
    assert_eq!(core.ocp_status().state, OcpState::Normal);
}

#[test]
fn still_over_the_trip_level_trips_the_next_outlet_after_the_retrip_delay() {
    let mut core = switch_ready();
    send(&mut core, set(Source::Console, 1, true), ms(500));
    send(&mut core, set(Source::Console, 2, true), ms(600));
    core.handle_currents(&currents(9.8), ms(1_000));
    settle(&mut core, ms(1_000));
    core.handle_currents(&currents(9.8), ms(1_500));
    assert_eq!(core.relays(), OutletMask(0b01));
    core.handle_currents(&currents(9.8), ms(2_000));
    assert_eq!(core.relays(), OutletMask::NONE);
    assert_eq!(core.ocp_status().trip_count, 2);
}

#[test]
fn garbage_currents_count_as_zero() {
    let mut core = switch_ready();
    let mut c = [f32::NAN; CHANNELS];
    c[1] = f32::INFINITY;
    c[2] = -50.0;
    core.handle_currents(&c, ms(100));
    assert_eq!(core.ocp_status().state, OcpState::Normal);
    assert_eq!(core.ocp_status().total_current_a, 0.0);
}

#[test]
fn brown_out_guard_refuses_switching_on() {
    let mut p = policy();
    p.brownout_mv = 11_000;
    let mut core = switch_with(p);
    let r = send(&mut core, set(Source::Console, 1, true), ms(500));
    assert_status(r, SwitchStatus::Ok, 0);
    core.handle_supply_mv(10_500);
    let r = send(&mut core, set(Source::Console, 2, true), ms(700));
    assert_status(r, SwitchStatus::BrownOut, reason::BROWN_OUT);
    let r = send(&mut core, set(Source::Console, 1, false), ms(700));
    assert_status(r, SwitchStatus::Ok, 0);
    core.handle_supply_mv(12_000);
    let r = send(&mut core, set(Source::Console, 2, true), ms(800));
    assert_status(r, SwitchStatus::Ok, 0);
}

// ----- safe state and faults ----------------------------------------------------------------

#[test]
fn safe_state_switches_off_outlets_outside_the_safe_mask_and_holds() {
    let mut p = policy();
    p.safe_mask = OutletMask(0b0000_0001);
    let mut core = switch_with(p);
    let mut m = op(Source::Console, SwitchOp::SetMask);
    m.mask = OutletMask(0b0000_0110);
    m.value = true;
    send(&mut core, m, ms(500));
    let r = send(&mut core, op(Source::Health, SwitchOp::SafeState), ms(600));
    assert_eq!(r.state_bitmap, OutletMask(0b1));
    assert_eq!(core.state(), SwitchState::FaultSafe);
    assert_eq!(
        core.snapshot().fault_code,
        reason::SAFE_STATE_REQUESTED + Source::Health.rank() as u16
    );
    let r = send(&mut core, set(Source::Console, 3, true), ms(2_000));
    assert_status(r, SwitchStatus::FaultSafe, reason::FAULT_SAFE);
    let r = send(
        &mut core,
        op(Source::Console, SwitchOp::ClearFault),
        ms(2_000),
    );
    assert_status(r, SwitchStatus::Ok, 0);
    assert_eq!(core.state(), SwitchState::Ready);
    let r = send(&mut core, set(Source::Console, 3, true), ms(2_000));
    assert_status(r, SwitchStatus::Ok, 0);
}

#[test]
fn safe_state_never_switches_an_outlet_on() {
    let mut p = policy();
    p.safe_mask = OutletMask(0b1111_0000);
    let mut core = switch_with(p);
    assert_eq!(core.relays(), OutletMask(0b1111_0000));
    send(&mut core, set(Source::Console, 8, false), ms(500));
    send(&mut core, op(Source::Button, SwitchOp::SafeState), ms(600));
    assert_eq!(core.relays(), OutletMask(0b0111_0000));
}

#[test]
fn entering_fault_safe_cancels_deferred_requests() {
    let mut core = switch_ready();
    send(&mut core, set(Source::Console, 1, true), ms(500));
    send_deferred(&mut core, set(Source::Console, 1, false), ms(550));
    core.handle_request(op(Source::Health, SwitchOp::SafeState), ms(560));
    let replies = drain_replies(&mut core);
    assert_eq!(replies.len(), 2);
    assert_status(replies[0].1, SwitchStatus::FaultSafe, reason::FAULT_SAFE);
    assert_eq!(core.stats().deferred, 0);
}

#[test]
fn fault_led_follows_fault_safe_and_clears_with_clear_fault() {
    let mut core = switch_ready();
    core.handle_request(op(Source::Health, SwitchOp::SafeState), ms(500));
    let mut status_led = None;
    while let Some(w) = core.poll_write(ms(500)) {
        if (w.expander, w.port) == (Expander::Display, Port::B) {
            status_led = Some(w.value);
        }
        core.handle_io_result(w, IoOutcome::Done, ms(500));
    }
    assert_eq!(status_led, Some(LED_FAULT | LED_PWR));
    core.handle_request(op(Source::Button, SwitchOp::ClearFault), ms(600));
    let w = core.poll_write(ms(600)).expect("status LED write");
    assert_eq!((w.expander, w.value), (Expander::Display, LED_PWR));
}

#[test]
fn i2c_errors_in_a_row_enter_fault_safe() {
    let mut p = policy();
    p.i2c_fault_threshold = 3;
    p.safe_mask = OutletMask::NONE;
    let mut core = switch_with(p);
    send(&mut core, set(Source::Console, 1, true), ms(500));
    core.set_eth_link(true);
    let mut now = ms(600);
    for _ in 0..3 {
        let w = core.poll_write(now).expect("a write to try");
        core.handle_io_result(w, IoOutcome::Failed(1), now);
        now += IO_RETRY;
    }
    assert_eq!(core.state(), SwitchState::FaultSafe);
    assert_eq!(core.snapshot().fault_code, reason::I2C_FAULT_THRESHOLD);
    assert_eq!(core.relays(), OutletMask::NONE);
    assert_eq!(core.stats().io_errors, 3);
    assert!(
        drain_events(&mut core).contains(&SwitchEvent::StateChanged {
            state: SwitchState::FaultSafe,
            fault_code: reason::I2C_FAULT_THRESHOLD
        })
    );
}

#[test]
fn a_failed_relay_write_answers_io_error_and_is_retried_later() {
    let mut core = switch_ready();
    core.handle_request(set(Source::Net, 2, true), ms(500));
    let w = core.poll_write(ms(500)).expect("relay write");
    core.handle_io_result(w, IoOutcome::Failed(1), ms(500));
    let replies = drain_replies(&mut core);
    assert_status(replies[0].1, SwitchStatus::IoError, reason::I2C_ERROR);
    assert_eq!(core.poll_write(ms(505)), None, "backing off");
    assert_eq!(core.poll_timeout(), Some(ms(510)));
    let again = core.poll_write(ms(510)).expect("retry");
    assert_eq!(again, w);
    core.handle_io_result(again, IoOutcome::Done, ms(510));
    assert_eq!(core.relays_written(), Some(OutletMask(0b10)));
    assert_eq!(core.stats().io_errors_in_row, 0);
}

#[test]
fn requests_wait_while_a_relay_write_is_outstanding() {
    let mut core = switch_ready();
    core.handle_request(set(Source::Net, 2, true), ms(500));
    let w = core.poll_write(ms(500)).expect("relay write");
    core.handle_io_result(w, IoOutcome::Failed(1), ms(500));
    let _ = drain_replies(&mut core);
    core.handle_request(set(Source::Net, 3, true), ms(502));
    assert!(drain_replies(&mut core).is_empty());
    settle(&mut core, ms(510));
    let replies = drain_replies(&mut core);
    assert_status(replies[0].1, SwitchStatus::Ok, 0);
    assert_eq!(core.relays_written(), Some(OutletMask(0b110)));
}

// ----- mux, LEDs, queue ---------------------------------------------------------------------

#[test]
fn meter_mux_selects_the_channel_on_relay_port_b() {
    let mut core = switch_ready();
    let mut m = op(Source::Schedule, SwitchOp::MeterMux);
    m.channel = Some(ch(6));
    core.handle_request(m, ms(100));
    let w = core.poll_write(ms(100)).expect("mux write");
    assert_eq!((w.expander, w.port, w.value), (Expander::Relay, Port::B, 5));
    core.handle_io_result(w, IoOutcome::Done, ms(100));
    assert_status(drain_replies(&mut core)[0].1, SwitchStatus::Ok, 0);
    m.channel = None;
    core.handle_request(m, ms(120));
    assert_eq!(core.poll_write(ms(120)).map(|w| w.value), Some(MUX_EN_N));
}

#[test]
fn selection_leds_show_the_selected_outlet() {
    let mut core = switch_ready();
    core.handle_selection(Some(ch(3)));
    let w = core.poll_write(ms(0)).expect("selection write");
    assert_eq!(
        (w.expander, w.port, w.value),
        (Expander::Selection, Port::A, 0b100)
    );
}

#[test]
fn a_full_deferred_list_answers_busy() {
    let mut core = switch_ready();
    for n in 1..=8 {
        send(&mut core, set(Source::Console, n, true), ms(500));
    }
    for i in 0..DEFERRED_CAPACITY {
        let n = (i % 8) as u8 + 1;
        send_deferred(&mut core, set(Source::Console, n, false), ms(510));
    }
    let mut extra = set(Source::Console, 1, false);
    extra.token = 9;
    let r = send(&mut core, extra, ms(510));
    assert_status(r, SwitchStatus::Busy, reason::DEFER_FULL);
    assert_eq!(r.token, 9);
}

#[test]
fn offer_request_turns_a_full_queue_into_a_busy_reply() {
    use crate::queue::{FullPolicy, Queue};
    use embassy_sync::blocking_mutex::raw::NoopRawMutex;
    let q: Queue<NoopRawMutex, SwitchRequest, 1> = Queue::new(FullPolicy::RejectNew);
    assert!(offer_request(&q, set(Source::Net, 1, true)).is_ok());
    let mut second = set(Source::Net, 2, true);
    second.token = 5;
    let busy = offer_request(&q, second).unwrap_err();
    assert_status(busy, SwitchStatus::Busy, reason::QUEUE_FULL);
    assert_eq!(busy.token, 5);
    assert_eq!(q.stats().rejected, 1);
}

#[test]
fn boot_from_applies_the_safe_mask_then_restores_only_when_asked() {
    let mut cfg = crate::pdu::config::PduConfig::default();
    cfg.switch.safe_mask = OutletMask(0b1000_0000);
    cfg.switch.last_state = OutletMask(0b0000_0011);
    let (mut core, restored) = SwitchCore::boot_from(&cfg, ms(0));
    assert_eq!(restored, None);
    for t in (0..500).step_by(10) {
        settle(&mut core, ms(t));
    }
    assert_eq!(core.relays(), OutletMask(0b1000_0000));

    cfg.switch.restore_on_boot = true;
    let (mut core, restored) = SwitchCore::boot_from(&cfg, ms(0));
    assert!(restored.is_some_and(|n| n > 0));
    for t in (0..500).step_by(10) {
        settle(&mut core, ms(t));
    }
    assert_eq!(core.snapshot().state, SwitchState::Ready);
    assert_eq!(core.relays(), OutletMask(0b0000_0011));
}

#[test]
fn restore_brings_outlets_back_no_more_at_once_than_the_maximum() {
    let mut p = policy();
    p.max_simultaneous = 2;
    p.safe_mask = OutletMask(0b1000_0000);
    let mut core = SwitchCore::new(p.clone(), &ocp());
    core.boot(&p, &ocp(), ms(0));
    let queued = core.restore(OutletMask(0b0001_0111), ms(0));
    assert_eq!(queued, 5, "the switch-off and one request per outlet");
    let mut applied = StdVec::new();
    for t in (0..1_000).step_by(10) {
        applied.extend(settle(&mut core, ms(t)));
    }
    assert_eq!(core.relays(), OutletMask(0b0001_0111));
    for pair in applied.windows(2) {
        let on = pair[1] & !pair[0];
        assert!(on.count_ones() <= 2, "{applied:?}");
    }
    let replies = drain_replies(&mut core);
    assert!(replies.iter().all(|(s, r)| *s == Source::Schedule
        && r.token == RESTORE_TOKEN
        && r.status == SwitchStatus::Ok));
}

#[test]
fn a_trip_cancels_a_switch_on_whose_write_has_not_landed() {
    let mut core = switch_ready();
    send(&mut core, set(Source::Console, 1, true), ms(500));
    core.handle_request(set(Source::Console, 2, true), ms(600));
    let w = core.poll_write(ms(600)).expect("relay write");
    core.handle_io_result(w, IoOutcome::Failed(1), ms(600));
    core.handle_currents(&currents(9.9), ms(605));
    // Outlet 2 never reached the relays; outlet 1 is the last one really on.
    assert_eq!(core.relays(), OutletMask::NONE);
    assert_eq!(settle(&mut core, ms(610)), [0]);
    assert_eq!(core.ocp_status().last_tripped_channel, 1);
}

mod runner {
    use super::*;
    use crate::pdu::mcp23017::tests::FakeBus;
    use crate::ports::Clock;
    use crate::queue::{FullPolicy, Queue};
    use core::cell::Cell;
    use embassy_futures::block_on;
    use embassy_sync::blocking_mutex::raw::NoopRawMutex;
    use embassy_sync::signal::Signal;
    use embassy_sync::watch::Watch;

    struct TestClock(Cell<Instant>);
    impl Clock for TestClock {
        fn now(&self) -> Instant {
            self.0.get()
        }
        async fn sleep_until(&self, deadline: Instant) {
            // Virtual time: jump to the deadline.
            if self.0.get() < deadline {
                self.0.set(deadline);
            }
        }
    }

    #[test]
    fn switch_task_writes_the_relay_latch_replies_and_publishes() {
        let requests: Queue<NoopRawMutex, SwitchRequest, 4> = Queue::new(FullPolicy::RejectNew);
        let console: Queue<NoopRawMutex, SwitchReply, 4> = Queue::new(FullPolicy::DropOldest);
        let currents: Signal<NoopRawMutex, [f32; CHANNELS]> = Signal::new();
        let aux: Queue<NoopRawMutex, SwitchAux, 4> = Queue::new(FullPolicy::DropOldest);
        let published: Watch<NoopRawMutex, SwitchSnapshot, 2> = Watch::new();
        let beats: crate::pdu::health::Heartbeats<NoopRawMutex> =
            crate::pdu::health::Heartbeats::new();
        let log: Queue<NoopRawMutex, crate::pdu::logger::LogEvent, 8> =
            Queue::new(FullPolicy::DropOldest);
        let events: Queue<NoopRawMutex, SwitchEvent, 8> = Queue::new(FullPolicy::DropOldest);
        let links = SwitchLinks {
            requests: &requests,
            replies: [None, Some(&console), None, None, None],
            currents: &currents,
            aux: &aux,
            published: &published,
            events: Some(&events),
            heartbeat: Some((&beats, crate::pdu::health::TaskId::SWITCH)),
            log: Some(&log),
        };
        let mut core = SwitchCore::new(policy(), &ocp());
        core.boot(&policy(), &ocp(), ms(0));
        let clock = TestClock(Cell::new(ms(0)));
        let mut task = SwitchTask::new(
            core,
            FakeBus::default(),
            FakeBus::default(),
            FakeBus::default(),
            links,
            &clock,
        );
        block_on(task.init());
        clock.0.set(ms(500));
        let mut req = SwitchRequest::set(Source::Console, ch(3), true);
        req.token = 42;
        offer_request(&requests, req).expect("room in the queue");
        block_on(task.step());
        let reply = console.try_receive().expect("a reply for the console");
        assert_eq!((reply.status, reply.token), (SwitchStatus::Ok, 42));
        assert_eq!(task.relay.shadow(Port::A), 0b100);
        assert_eq!(task.display.shadow(Port::A), 0b100);
        assert_eq!(task.display.shadow(Port::B), LED_PWR);
        let snap = published.try_get().expect("published");
        assert_eq!(snap.relays, OutletMask(0b100));
        assert!(beats.read()[2].is_some());
        let logged = log.try_receive().expect("the answer is logged");
        assert_eq!(
            (logged.source, logged.op, logged.status),
            ("console", "SET", "OK")
        );

        aux.offer(SwitchAux::Selection(Some(ch(2))))
            .is_queued()
            .then_some(())
            .unwrap();
        block_on(task.step());
        assert_eq!(task.selection.shadow(Port::A), 0b10);

        currents.signal(currents_of(9.6));
        block_on(task.step());
        assert_eq!(task.relay.shadow(Port::A), 0);
        assert_eq!(
            published.try_get().map(|s| s.ocp.state),
            Some(OcpState::Lockout)
        );
        let announced: StdVec<SwitchEvent> = core::iter::from_fn(|| events.try_receive()).collect();
        assert_eq!(
            announced.first(),
            Some(&SwitchEvent::StateChanged {
                state: SwitchState::Ready,
                fault_code: 0
            })
        );
        assert!(announced.iter().any(|e| matches!(
            e,
            SwitchEvent::OverCurrent {
                state: OcpState::Lockout,
                tripped: Some(o),
                ..
            } if *o == ch(3)
        )));
    }

    fn currents_of(a: f32) -> [f32; CHANNELS] {
        super::currents(a)
    }

    #[test]
    fn a_dead_relay_bus_ends_in_fault_safe() {
        let requests: Queue<NoopRawMutex, SwitchRequest, 4> = Queue::new(FullPolicy::RejectNew);
        let currents: Signal<NoopRawMutex, [f32; CHANNELS]> = Signal::new();
        let aux: Queue<NoopRawMutex, SwitchAux, 4> = Queue::new(FullPolicy::DropOldest);
        let published: Watch<NoopRawMutex, SwitchSnapshot, 2> = Watch::new();
        let links: SwitchLinks<'_, NoopRawMutex, 4, 1, 4, 2> = SwitchLinks {
            requests: &requests,
            replies: [None; 5],
            currents: &currents,
            aux: &aux,
            published: &published,
            events: None,
            heartbeat: None,
            log: None,
        };
        let mut core = SwitchCore::new(policy(), &ocp());
        core.boot(&policy(), &ocp(), ms(0));
        let clock = TestClock(Cell::new(ms(0)));
        let dead = FakeBus {
            dead: true,
            ..FakeBus::default()
        };
        let mut task = SwitchTask::new(
            core,
            dead,
            FakeBus::default(),
            FakeBus::default(),
            links,
            &clock,
        );
        block_on(task.init());
        for _ in 0..6 {
            block_on(task.step());
        }
        assert_eq!(task.core().state(), SwitchState::FaultSafe);
        let snap = published.try_get().expect("published");
        assert_eq!(snap.fault_code, reason::I2C_FAULT_THRESHOLD);
        assert!(snap.fault_led);
        assert_eq!(task.display.shadow(Port::B) & LED_FAULT, LED_FAULT);
    }
}

#[test]
fn a_healthy_display_does_not_hide_a_dead_relay_expander() {
    let mut p = policy();
    p.i2c_fault_threshold = 3;
    let mut core = switch_with(p);
    send(&mut core, set(Source::Console, 1, true), ms(500));
    let mut now = ms(600);
    core.handle_request(set(Source::Console, 2, true), now);
    for i in 0..3 {
        // Something new for the display each round.
        core.set_eth_link(i % 2 == 0);
        while let Some(w) = core.poll_write(now) {
            let outcome = if w.expander == Expander::Relay {
                IoOutcome::Failed(1)
            } else {
                IoOutcome::Done
            };
            core.handle_io_result(w, outcome, now);
        }
        now += IO_RETRY;
    }
    assert_eq!(core.state(), SwitchState::FaultSafe);
}

#[test]
fn a_console_request_during_restore_does_not_cancel_the_other_restored_outlets() {
    // Found by `twin sweep scenarios/pdu/storage_sweep.toml` (seed 36): SAFE_MASK outlet 3,
    // restore outlets 1 and 2, and a console `SET_CH 2 ON` while the restore waits.
    let mut p = policy();
    p.safe_mask = OutletMask(0b0000_0100);
    p.min_toggle_ms = 80;
    let mut core = SwitchCore::new(p.clone(), &ocp());
    core.boot(&p, &ocp(), ms(0));
    core.restore(OutletMask(0b0000_0011), ms(0));
    // The SAFE_MASK write lands 13 ms after boot (an I2C write on the board), so both restore
    // requests wait for it; the console asks 83 ms after boot, before outlet 3 may toggle again.
    let w = core.poll_write(ms(0)).expect("the SAFE_MASK write");
    core.handle_io_result(w, IoOutcome::Done, ms(13));
    let mut t = 13;
    while t < 83 {
        settle(&mut core, ms(t));
        t += 10;
    }
    core.handle_request(set(Source::Console, 2, true), ms(83));
    while t < 2_000 {
        settle(&mut core, ms(t));
        t += 10;
    }
    let replies = drain_replies(&mut core);
    assert_eq!(core.relays(), OutletMask(0b0000_0011), "{replies:?}");
}
