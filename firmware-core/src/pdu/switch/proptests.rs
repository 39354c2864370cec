//! Property tests: whatever the mix of sources, requests, currents, supply readings and I2C
//! failures, the relay states actually written never break a mutual-exclusion group, the minimum
//! toggle interval, the simultaneous switch-on limit, the over-current lockout or `FAULT_SAFE`, and
//! every request is answered exactly once.
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::vec::Vec as StdVec;

use super::tests::{ch, ms};
use super::*;
use crate::pdu::config::{INTERLOCK_GROUPS, PduConfig, SOURCES};

#[derive(Debug, Clone)]
enum Action {
    Request(SwitchRequest),
    /// Amps per channel while it is on (the harness zeroes the channels that are off).
    Currents([f32; CHANNELS]),
    Supply(u16),
    /// The next `n` writes fail.
    FailWrites(u8),
    Idle,
}

fn source() -> impl Strategy<Value = Source> {
    prop_oneof![
        Just(Source::Health),
        Just(Source::Console),
        Just(Source::Net),
        Just(Source::Button),
        Just(Source::Schedule),
    ]
}

fn switch_op() -> impl Strategy<Value = SwitchOp> {
    prop_oneof![
        6 => Just(SwitchOp::Set),
        4 => Just(SwitchOp::Toggle),
        3 => Just(SwitchOp::SetMask),
        1 => Just(SwitchOp::AllOff),
        1 => Just(SwitchOp::AllOn),
        1 => Just(SwitchOp::SafeState),
        1 => Just(SwitchOp::Query),
        1 => Just(SwitchOp::ResetOverCurrent),
        1 => Just(SwitchOp::ClearFault),
        1 => Just(SwitchOp::MeterMux),
    ]
}

fn request() -> impl Strategy<Value = SwitchRequest> {
    (
        source(),
        switch_op(),
        prop::option::weighted(0.95, 1u8..=8),
        any::<bool>(),
        any::<u8>(),
        0u32..400,
    )
        .prop_map(|(source, op, channel, value, mask, timeout_ms)| {
            let mut r = SwitchRequest::new(source, op);
            r.channel = channel.and_then(Outlet::new);
            r.value = value;
            r.mask = OutletMask(mask);
            r.timeout_ms = timeout_ms;
            r
        })
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        8 => request().prop_map(Action::Request),
        3 => prop::array::uniform8(0.0f32..4.0).prop_map(Action::Currents),
        1 => prop_oneof![Just(10_000u16), Just(12_000u16)].prop_map(Action::Supply),
        1 => (1u8..4).prop_map(Action::FailWrites),
        1 => Just(Action::Idle),
    ]
}

fn small_mask() -> impl Strategy<Value = OutletMask> {
    prop_oneof![
        3 => Just(OutletMask::NONE),
        2 => any::<u8>().prop_map(OutletMask),
    ]
}

prop_compose! {
    fn switch_policy()(
        min_toggle_ms in prop_oneof![Just(0u16), 1u16..150],
        max_simultaneous in 1u8..=8,
        groups in prop::array::uniform4(small_mask()),
        deny in prop::array::uniform5(prop_oneof![4 => Just(OutletMask::NONE), 1 => any::<u8>().prop_map(OutletMask)]),
        safe_mask in any::<u8>(),
        brownout in prop_oneof![Just(0u16), Just(11_000u16)],
        threshold in 1u8..=5,
        priority_override in Just([0u8, 1, 2, 3, 4]),
    ) -> SwitchPolicy {
        let mut p = PduConfig::default().switch;
        p.min_toggle_ms = min_toggle_ms;
        p.max_simultaneous = max_simultaneous;
        p.interlock_groups = groups;
        p.deny = deny;
        p.safe_mask = OutletMask(safe_mask);
        p.brownout_mv = brownout;
        p.i2c_fault_threshold = threshold;
        p.priority_override = priority_override;
        let _ = (INTERLOCK_GROUPS, SOURCES);
        p
    }
}

/// One relay transition as the hardware saw it.
#[derive(Debug, Clone, Copy)]
struct Transition {
    outlet: usize,
    on: bool,
    at: Instant,
    exempt: bool,
}

struct Harness {
    core: SwitchCore,
    policy: SwitchPolicy,
    now: Instant,
    hw: u8,
    fail: u8,
    safety_pending: bool,
    transitions: StdVec<Transition>,
    last_change: [Instant; CHANNELS],
    answers: BTreeMap<u32, u32>,
    next_token: u32,
}

impl Harness {
    fn new(policy: SwitchPolicy, limit_a: f32) -> Self {
        let ocp = OcpConfig { limit_a };
        let mut core = SwitchCore::new(policy.clone(), &ocp);
        core.boot(&policy, &ocp, Instant::ZERO);
        let mut h = Harness {
            core,
            policy,
            now: Instant::ZERO,
            hw: 0,
            fail: 0,
            safety_pending: false,
            transitions: StdVec::new(),
            last_change: [Instant::ZERO; CHANNELS],
            answers: BTreeMap::new(),
            next_token: 1,
        };
        h.drive(false);
        // Boot's own state is the starting point, not a transition under test.
        h.transitions.clear();
        h
    }

    fn step(&mut self, dt_ms: u64, action: &Action) -> Result<(), TestCaseError> {
        self.now += Duration::from_millis(dt_ms);
        let before = (self.core.state(), self.core.ocp_status());
        let mut safety = false;
        match action {
            Action::Request(req) => {
                let mut req = *req;
                req.token = self.next_token;
                self.next_token += 1;
                self.answers.insert(req.token, 0);
                safety = req.op == SwitchOp::SafeState;
                self.core.handle_request(req, self.now);
            }
            Action::Currents(amps) => {
                let mut c = [0.0; CHANNELS];
                for (i, a) in amps.iter().enumerate() {
                    if self.hw & (1 << i) != 0 {
                        c[i] = *a;
                    }
                }
                self.core.handle_currents(&c, self.now);
            }
            Action::Supply(mv) => self.core.handle_supply_mv(*mv),
            Action::FailWrites(n) => self.fail = *n,
            Action::Idle => {}
        }
        let after = self.core.ocp_status();
        let tripped = after.trip_count != before.1.trip_count;
        let first = self.transitions.len();
        safety |= tripped;
        self.safety_pending |= safety;
        let fault_entered = self.drive(self.safety_pending);
        if fault_entered {
            self.safety_pending = true;
            // The write that brought the safe state may land in a later step.
        }
        let new = &self.transitions[first..];
        let state = self.core.state();
        let ocp_after = self.core.ocp_status().state;
        let switched_on = new.iter().any(|t| t.on);
        prop_assert!(
            !(switched_on && ocp_after == OcpState::Lockout),
            "switched on while locked out: {new:?}"
        );
        let plain_request =
            matches!(action, Action::Request(r) if r.op != SwitchOp::ResetOverCurrent);
        prop_assert!(
            !(switched_on && before.1.state == OcpState::Lockout && plain_request),
            "a request switched on during a lockout: {new:?}"
        );
        prop_assert!(
            !(switched_on && state == SwitchState::FaultSafe),
            "switched on in FAULT_SAFE: {new:?}"
        );
        if state == SwitchState::FaultSafe {
            let outside = self.core.relays().0 & !self.policy.safe_mask.0;
            prop_assert!(
                outside == 0,
                "FAULT_SAFE keeps outlets {outside:#010b} outside SAFE_MASK on"
            );
        }
        if self.core.relays_written() == Some(self.core.relays()) {
            self.safety_pending = false;
        }
        self.collect_replies()
    }

    /// Perform writes until none is due; returns whether FAULT_SAFE was entered meanwhile.
    fn drive(&mut self, exempt: bool) -> bool {
        let was_fault = self.core.state() == SwitchState::FaultSafe;
        for _ in 0..64 {
            self.core.handle_timeout(self.now);
            let Some(w) = self.core.poll_write(self.now) else {
                break;
            };
            let outcome = if self.fail > 0 {
                self.fail -= 1;
                IoOutcome::Failed(1)
            } else {
                IoOutcome::Done
            };
            let fault_now = self.core.state() == SwitchState::FaultSafe;
            if outcome == IoOutcome::Done && (w.expander, w.port) == (Expander::Relay, Port::A) {
                let changed = self.hw ^ w.value;
                for i in 0..CHANNELS {
                    if changed & (1 << i) != 0 {
                        self.transitions.push(Transition {
                            outlet: i,
                            on: w.value & (1 << i) != 0,
                            at: self.now,
                            exempt: exempt || fault_now,
                        });
                    }
                }
                self.hw = w.value;
            }
            self.core.handle_io_result(w, outcome, self.now);
        }
        !was_fault && self.core.state() == SwitchState::FaultSafe
    }

    fn collect_replies(&mut self) -> Result<(), TestCaseError> {
        while let Some((_, reply)) = self.core.poll_reply() {
            let count = self.answers.get_mut(&reply.token);
            prop_assert!(count.is_some(), "reply to an unknown token: {reply:?}");
            if let Some(c) = count {
                *c += 1;
                prop_assert!(*c == 1, "token answered twice: {reply:?}");
            }
        }
        Ok(())
    }

    fn check_history(&self) -> Result<(), TestCaseError> {
        let min = Duration::from_millis(u64::from(self.policy.min_toggle_ms));
        let window = min.max(Duration::from_micros(1));
        let max = usize::from(self.policy.max_simultaneous);
        let mut last = self.last_change.map(Some);
        let mut hw = 0u8;
        for (k, t) in self.transitions.iter().enumerate() {
            hw = if t.on {
                hw | (1 << t.outlet)
            } else {
                hw & !(1 << t.outlet)
            };
            for g in &self.policy.interlock_groups {
                prop_assert!(
                    (hw & g.0).count_ones() <= 1 || !t.on,
                    "group {:#010b} broken by {t:?} (relays {hw:#010b})",
                    g.0
                );
            }
            if let Some(prev) = last[t.outlet] {
                let early = t.at.saturating_since(prev) < min;
                prop_assert!(
                    !early || (!t.on && t.exempt),
                    "outlet {} changed {} after the previous change ({t:?})",
                    t.outlet + 1,
                    t.at.saturating_since(prev)
                );
            }
            last[t.outlet] = Some(t.at);
            if t.on {
                let recent = self.transitions[..=k]
                    .iter()
                    .filter(|o| o.on && o.at + window > t.at)
                    .count();
                prop_assert!(
                    recent <= max,
                    "{recent} outlets switched on within {window} (max {max}) at {}",
                    t.at
                );
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn no_request_mix_breaks_an_interlock_or_goes_unanswered(
        policy in switch_policy(),
        limit_a in 4.0f32..16.0,
        steps in prop::collection::vec((0u64..120, action()), 1..120),
    ) {
        let mut h = Harness::new(policy, limit_a);
        // The boot state itself respects the groups.
        for g in &h.policy.interlock_groups {
            prop_assert!((h.hw & g.0).count_ones() <= 1);
        }
        for (dt, a) in &steps {
            h.step(*dt, a)?;
        }
        // Let every deferred request and write retry run out.
        h.fail = 0;
        for _ in 0..20 {
            h.step(500, &Action::Idle)?;
        }
        h.check_history()?;
        let unanswered: StdVec<_> = h.answers.iter().filter(|(_, c)| **c != 1).collect();
        prop_assert!(unanswered.is_empty(), "unanswered tokens: {unanswered:?}");
    }

    #[test]
    fn lockout_holds_until_recovery_or_reset(
        amps in prop::collection::vec(0.0f32..14.0, 1..40),
        requests in prop::collection::vec((1u8..=8, any::<bool>()), 1..40),
    ) {
        let mut p = PduConfig::default().switch;
        p.min_toggle_ms = 0;
        let mut h = Harness::new(p, 10.0);
        let mut locked = false;
        for (a, (n, on)) in amps.iter().zip(requests.iter()) {
            let mut c = [0.0; CHANNELS];
            c[0] = *a;
            h.now += Duration::from_millis(10);
            h.core.handle_currents(&c, h.now);
            if *a >= 9.5 {
                locked = true;
            } else if *a < 8.5 {
                locked = false;
            }
            prop_assert_eq!(h.core.ocp_status().state == OcpState::Lockout, locked);
            h.step(0, &Action::Request(SwitchRequest::set(Source::Health, ch(*n), *on)))?;
        }
        h.check_history()?;
        let _ = ms(0);
    }
}
