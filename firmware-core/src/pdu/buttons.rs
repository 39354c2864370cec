//! ButtonTask: the four front-panel buttons (MINUS, PLUS, SET, PWR on GPIO12-15).
//!
//! The buttons are scanned every 5–10 ms (the one periodic loop here: the device really is
//! periodic). [`ButtonCore`] debounces each button (a level must be seen on `debounce_samples`
//! consecutive scans, 3 by default, i.e. 30 ms at 10 ms), detects long presses
//! (`ButtonMap::long_press_ms`, 2.5 s on ENERGIS) and turns presses into [`ButtonIntent`]s through
//! the [`ButtonMap`]:
//!
//! * A **long press fires while the button is still held**, as soon as the threshold passes; the
//!   release after it does nothing. A button whose long action is `None` fires its short action on
//!   release, however long it was held.
//! * PLUS / MINUS move the selection (wrapping 8 → 1 and 1 → 8); the selection goes to SwitchTask,
//!   which owns the selection LEDs (0x23).
//! * SET toggles the selected outlet: a `Toggle` [`SwitchRequest`] from `Source::Button`. Long SET
//!   clears the fault (FAULT LED, `FAULT_SAFE`): a `ClearFault` request.
//! * **PWR long press** (our definition; the real firmware leaves it open): every outlet goes to
//!   the safe state — a `SafeState` request, which switches off what is not in `SAFE_MASK` and holds
//!   SwitchTask in `FAULT_SAFE` — followed by [`ButtonIntent::PowerSleepRequest`] for the platform
//!   (on the board: dim the panel and wait for PWR; in the simulator: an event). Waking up and
//!   leaving the safe state is an explicit `ClearFault` (long SET, console `CLR_ERR`), so a power
//!   button bumped by accident cannot bring loads back on by itself.
use embassy_sync::blocking_mutex::raw::RawMutex;
use embassy_sync::signal::Signal;
use heapless::Deque;

use super::config::{ButtonAction, ButtonMap};
use super::health::{Heartbeats, TaskId};
use super::switch::{SwitchAux, offer_request};
use super::{CHANNELS, Outlet, Source, SwitchOp, SwitchRequest};
use crate::ports::Clock;
use crate::queue::Queue;
use crate::time::{Duration, Instant};

/// One of the four buttons; its bit in a pin sample is `1 << (button as u8)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Button {
    /// MINUS (GPIO12), bit 0.
    Minus = 0,
    /// PLUS (GPIO13), bit 1.
    Plus = 1,
    /// SET (GPIO14), bit 2.
    Set = 2,
    /// PWR (GPIO15), bit 3.
    Power = 3,
}

const BUTTONS: [Button; 4] = [Button::Minus, Button::Plus, Button::Set, Button::Power];

/// What a press asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ButtonIntent {
    /// Send to SwitchTask's request queue.
    Switch(SwitchRequest),
    /// The selection moved; send to SwitchTask's side inputs (selection LEDs).
    Selection(Outlet),
    /// Ask the platform to sleep (after the safe state was requested).
    PowerSleepRequest,
}

/// Samples the four button pins: bit `b` set = button `b` pressed (the platform inverts
/// active-low inputs). Any `FnMut() -> u8` is a sampler.
pub trait ButtonPins {
    /// Current pin levels.
    fn sample(&mut self) -> u8;
}

impl<F: FnMut() -> u8> ButtonPins for F {
    fn sample(&mut self) -> u8 {
        self()
    }
}

/// The sans-IO button logic. Call [`handle_scan`](Self::handle_scan) once per scan period, then
/// drain [`poll_intent`](Self::poll_intent).
#[derive(Debug, Clone)]
pub struct ButtonCore {
    map: ButtonMap,
    long_press: Duration,
    samples: u8,
    stable: u8,
    count: [u8; 4],
    pressed_at: [Option<Instant>; 4],
    long_done: u8,
    selection: Outlet,
    token: u32,
    intents: Deque<ButtonIntent, 8>,
    dropped: u32,
}

impl ButtonCore {
    /// A core with outlet 1 selected (announced as the first intent) and 3-sample debounce.
    pub fn new(map: &ButtonMap) -> Self {
        let mut core = ButtonCore {
            map: map.clone(),
            long_press: Duration::from_millis(u64::from(map.long_press_ms)),
            samples: 3,
            stable: 0,
            count: [0; 4],
            pressed_at: [None; 4],
            long_done: 0,
            selection: FIRST_OUTLET,
            token: 0,
            intents: Deque::new(),
            dropped: 0,
        };
        core.push(ButtonIntent::Selection(core.selection));
        core
    }

    /// Consecutive equal samples needed to accept a level (clamped to 1..=10).
    pub fn set_debounce_samples(&mut self, n: u8) {
        self.samples = n.clamp(1, 10);
    }

    /// The selected outlet.
    pub fn selection(&self) -> Outlet {
        self.selection
    }

    /// Intents dropped because nobody drained them (8 pending at most).
    pub fn dropped(&self) -> u32 {
        self.dropped
    }

    /// One scan: `pins` bit `b` = button `b` pressed.
    pub fn handle_scan(&mut self, pins: u8, now: Instant) {
        for b in BUTTONS {
            let i = b as usize;
            let bit = 1u8 << i;
            let raw = pins & bit != 0;
            let stable = self.stable & bit != 0;
            if raw == stable {
                self.count[i] = 0;
            } else {
                self.count[i] = self.count[i].saturating_add(1);
                if self.count[i] >= self.samples {
                    self.count[i] = 0;
                    self.stable ^= bit;
                    if raw {
                        self.pressed_at[i] = Some(now);
                        self.long_done &= !bit;
                    } else {
                        self.pressed_at[i] = None;
                        if self.long_done & bit == 0 {
                            debug!("button {}: short press", i);
                            self.act(self.actions(b).0);
                        }
                        self.long_done &= !bit;
                    }
                }
            }
            let (_, long) = self.actions(b);
            if let Some(t) = self.pressed_at[i]
                && long != ButtonAction::None
                && self.long_done & bit == 0
                && now.saturating_since(t) >= self.long_press
            {
                self.long_done |= bit;
                debug!("button {}: long press", i);
                self.act(long);
            }
        }
    }

    /// The next intent.
    #[must_use]
    pub fn poll_intent(&mut self) -> Option<ButtonIntent> {
        self.intents.pop_front()
    }

    fn actions(&self, b: Button) -> (ButtonAction, ButtonAction) {
        match b {
            Button::Minus => self.map.minus,
            Button::Plus => self.map.plus,
            Button::Set => self.map.set,
            Button::Power => self.map.power,
        }
    }

    fn act(&mut self, action: ButtonAction) {
        match action {
            ButtonAction::None => {}
            ButtonAction::SelectPrev | ButtonAction::SelectNext => {
                let i = self.selection.index();
                let next = if action == ButtonAction::SelectNext {
                    (i + 1) % CHANNELS
                } else {
                    (i + CHANNELS - 1) % CHANNELS
                };
                if let Some(o) = Outlet::from_index(next) {
                    self.selection = o;
                    self.push(ButtonIntent::Selection(o));
                }
            }
            ButtonAction::ToggleSelected => {
                let mut req = self.request(SwitchOp::Toggle);
                req.channel = Some(self.selection);
                self.push(ButtonIntent::Switch(req));
            }
            ButtonAction::ClearFault => {
                let req = self.request(SwitchOp::ClearFault);
                self.push(ButtonIntent::Switch(req));
            }
            ButtonAction::PowerSleep => {
                info!("button: power long press, safe state and sleep");
                let req = self.request(SwitchOp::SafeState);
                self.push(ButtonIntent::Switch(req));
                self.push(ButtonIntent::PowerSleepRequest);
            }
        }
    }

    fn request(&mut self, op: SwitchOp) -> SwitchRequest {
        self.token = self.token.wrapping_add(1);
        let mut req = SwitchRequest::new(Source::Button, op);
        req.token = self.token;
        req
    }

    fn push(&mut self, intent: ButtonIntent) {
        if self.intents.is_full() {
            self.intents.pop_front();
            self.dropped = self.dropped.wrapping_add(1);
        }
        let _ = self.intents.push_back(intent);
    }
}

// Evaluated at compile time: a `None` here would be a build error, never a run-time panic.
const FIRST_OUTLET: Outlet = match Outlet::new(1) {
    Some(o) => o,
    None => panic!("outlet 1 exists"),
};

/// The ButtonTask runner: scans every `scan_period` (10 ms default), forwards intents.
///
/// * Switch requests go through [`offer_request`]: a full SwitchTask queue drops the press
///   (counted in [`busy`](Self::busy) and the queue's stats) rather than blocking the scan.
/// * Selection changes go to SwitchTask's `aux` queue as [`SwitchAux::Selection`].
/// * Sleep requests are signalled on `sleep` for the platform.
pub struct ButtonTask<'a, P, C, M: RawMutex, const Q: usize, const A: usize> {
    core: ButtonCore,
    pins: P,
    clock: C,
    switch: &'a Queue<M, SwitchRequest, Q>,
    aux: &'a Queue<M, SwitchAux, A>,
    sleep: &'a Signal<M, ()>,
    heartbeat: Option<(&'a Heartbeats<M>, TaskId)>,
    scan_period: Duration,
    busy: u32,
}

impl<'a, P, C, M, const Q: usize, const A: usize> ButtonTask<'a, P, C, M, Q, A>
where
    P: ButtonPins,
    C: Clock,
    M: RawMutex,
{
    /// Assemble the task.
    pub fn new(
        core: ButtonCore,
        pins: P,
        clock: C,
        switch: &'a Queue<M, SwitchRequest, Q>,
        aux: &'a Queue<M, SwitchAux, A>,
        sleep: &'a Signal<M, ()>,
        heartbeat: Option<(&'a Heartbeats<M>, TaskId)>,
    ) -> Self {
        ButtonTask {
            core,
            pins,
            clock,
            switch,
            aux,
            sleep,
            heartbeat,
            scan_period: Duration::from_millis(10),
            busy: 0,
        }
    }

    /// Scan period, clamped to 5..=10 ms.
    pub fn set_scan_period(&mut self, period: Duration) {
        self.scan_period = period.clamp(Duration::from_millis(5), Duration::from_millis(10));
    }

    /// Presses lost to a full SwitchTask queue.
    pub fn busy(&self) -> u32 {
        self.busy
    }

    /// The core.
    pub fn core(&self) -> &ButtonCore {
        &self.core
    }

    /// One scan and the forwarding of its intents.
    pub fn scan(&mut self) {
        let now = self.clock.now();
        let pins = self.pins.sample();
        self.core.handle_scan(pins, now);
        while let Some(intent) = self.core.poll_intent() {
            match intent {
                ButtonIntent::Switch(req) => {
                    if offer_request(self.switch, req).is_err() {
                        self.busy = self.busy.wrapping_add(1);
                        warn!("button: switch queue full, press dropped");
                    }
                }
                ButtonIntent::Selection(o) => {
                    let _ = self.aux.offer(SwitchAux::Selection(Some(o)));
                }
                ButtonIntent::PowerSleepRequest => self.sleep.signal(()),
            }
        }
        if let Some((board, id)) = self.heartbeat {
            board.beat(id, now);
        }
    }

    /// Scan forever at the scan period (deadline-based, so the period does not drift).
    pub async fn run(&mut self) -> ! {
        let mut next = self.clock.now();
        loop {
            self.scan();
            next += self.scan_period;
            self.clock.sleep_until(next).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdu::config::PduConfig;
    use embassy_sync::blocking_mutex::raw::NoopRawMutex;
    use std::vec::Vec;

    const SET: u8 = 1 << 2;
    const PLUS: u8 = 1 << 1;
    const MINUS: u8 = 1;
    const PWR: u8 = 1 << 3;

    fn buttons() -> ButtonCore {
        let mut core = ButtonCore::new(&PduConfig::default().buttons);
        let _ = drain(&mut core);
        core
    }

    fn drain(core: &mut ButtonCore) -> Vec<ButtonIntent> {
        core::iter::from_fn(|| core.poll_intent()).collect()
    }

    /// Hold `pins` for `ms` milliseconds, scanning every 10 ms from `*t`.
    fn hold(core: &mut ButtonCore, t: &mut u64, pins: u8, ms: u64) -> Vec<ButtonIntent> {
        let end = *t + ms;
        while *t < end {
            core.handle_scan(pins, Instant::from_millis(*t));
            *t += 10;
        }
        drain(core)
    }

    fn press(core: &mut ButtonCore, t: &mut u64, pins: u8, ms: u64) -> Vec<ButtonIntent> {
        let mut out = hold(core, t, pins, ms);
        out.extend(hold(core, t, 0, 50));
        out
    }

    #[track_caller]
    fn only_switch(intents: &[ButtonIntent]) -> SwitchRequest {
        match intents {
            [ButtonIntent::Switch(r)] => *r,
            other => panic!("expected one switch request, got {other:?}"),
        }
    }

    #[test]
    fn short_set_toggles_the_selected_outlet() {
        let mut core = buttons();
        let mut t = 0;
        let req = only_switch(&press(&mut core, &mut t, SET, 100));
        assert_eq!(
            (req.source, req.op, req.channel),
            (Source::Button, SwitchOp::Toggle, Outlet::new(1))
        );
    }

    #[test]
    fn plus_and_minus_move_the_selection_and_wrap() {
        let mut core = buttons();
        let mut t = 0;
        assert_eq!(
            press(&mut core, &mut t, PLUS, 60),
            [ButtonIntent::Selection(Outlet::new(2).unwrap())]
        );
        press(&mut core, &mut t, MINUS, 60);
        assert_eq!(
            press(&mut core, &mut t, MINUS, 60),
            [ButtonIntent::Selection(Outlet::new(8).unwrap())]
        );
        let req = only_switch(&press(&mut core, &mut t, SET, 60));
        assert_eq!(req.channel, Outlet::new(8));
    }

    #[test]
    fn bounces_shorter_than_the_debounce_are_ignored() {
        let mut core = buttons();
        let mut t = 0;
        // Two samples pressed, then released: below the 3-sample debounce.
        for pins in [SET, SET, 0, SET, 0, 0, 0] {
            core.handle_scan(pins, Instant::from_millis(t));
            t += 10;
        }
        assert!(drain(&mut core).is_empty());
    }

    #[test]
    fn long_set_clears_the_fault_while_still_held_and_the_release_does_nothing() {
        let mut core = buttons();
        let mut t = 0;
        assert!(hold(&mut core, &mut t, SET, 2_400).is_empty());
        let req = only_switch(&hold(&mut core, &mut t, SET, 200));
        assert_eq!(req.op, SwitchOp::ClearFault);
        assert!(hold(&mut core, &mut t, 0, 100).is_empty());
    }

    #[test]
    fn long_power_orders_the_safe_state_then_asks_to_sleep() {
        let mut core = buttons();
        let mut t = 0;
        let intents = hold(&mut core, &mut t, PWR, 2_600);
        assert_eq!(intents.len(), 2, "{intents:?}");
        let ButtonIntent::Switch(req) = intents[0] else {
            panic!("{intents:?}");
        };
        assert_eq!((req.source, req.op), (Source::Button, SwitchOp::SafeState));
        assert_eq!(intents[1], ButtonIntent::PowerSleepRequest);
        // A short PWR press does nothing by default.
        assert!(press(&mut core, &mut t, PWR, 100).is_empty());
    }

    #[test]
    fn a_long_hold_of_a_button_without_long_action_acts_on_release() {
        let mut core = buttons();
        let mut t = 0;
        assert!(hold(&mut core, &mut t, PLUS, 3_000).is_empty());
        assert_eq!(
            hold(&mut core, &mut t, 0, 50),
            [ButtonIntent::Selection(Outlet::new(2).unwrap())]
        );
    }

    #[test]
    fn the_long_press_threshold_comes_from_the_button_map() {
        let mut map = PduConfig::default().buttons;
        map.long_press_ms = 500;
        let mut core = ButtonCore::new(&map);
        let _ = drain(&mut core);
        let mut t = 0;
        let req = only_switch(&hold(&mut core, &mut t, SET, 600));
        assert_eq!(req.op, SwitchOp::ClearFault);
    }

    struct StepClock(core::cell::Cell<Instant>);
    impl Clock for StepClock {
        fn now(&self) -> Instant {
            self.0.get()
        }
        async fn sleep_until(&self, deadline: Instant) {
            self.0.set(deadline);
        }
    }

    #[test]
    fn runner_sends_presses_to_switch_task_and_reports_busy() {
        let switch: Queue<NoopRawMutex, SwitchRequest, 1> =
            Queue::new(crate::queue::FullPolicy::RejectNew);
        let aux: Queue<NoopRawMutex, SwitchAux, 4> =
            Queue::new(crate::queue::FullPolicy::DropOldest);
        let sleep: Signal<NoopRawMutex, ()> = Signal::new();
        let level = core::cell::Cell::new(0u8);
        let clock = StepClock(core::cell::Cell::new(Instant::ZERO));
        let mut task = ButtonTask::new(
            ButtonCore::new(&PduConfig::default().buttons),
            || level.get(),
            &clock,
            &switch,
            &aux,
            &sleep,
            None,
        );
        let mut scan_for = |pins: u8, ms: u64| {
            level.set(pins);
            for _ in 0..ms / 10 {
                task.scan();
                clock.0.set(clock.0.get() + Duration::from_millis(10));
            }
        };
        scan_for(0, 20);
        scan_for(SET, 50);
        scan_for(0, 50);
        scan_for(SET, 50);
        scan_for(0, 50);
        assert_eq!(
            aux.try_receive(),
            Some(SwitchAux::Selection(Outlet::new(1)))
        );
        assert_eq!(switch.try_receive().map(|r| r.op), Some(SwitchOp::Toggle));
        assert_eq!(
            switch.try_receive(),
            None,
            "the second press found the queue full"
        );
        assert_eq!(task.busy(), 1);
    }

    proptest::proptest! {
        /// Contact bounce (never three pressed samples in a row) produces no action at all.
        #[test]
        fn bounce_never_produces_an_action(samples in proptest::collection::vec(0u8..16, 1..400)) {
            let mut core = buttons();
            let mut run = [0u8; 4];
            let mut t = 0;
            for pins in samples {
                // Break any run of three pressed samples of a button.
                let mut pins = pins;
                for (b, r) in run.iter_mut().enumerate() {
                    if pins & (1 << b) != 0 {
                        if *r == 2 {
                            pins &= !(1 << b);
                            *r = 0;
                        } else {
                            *r += 1;
                        }
                    } else {
                        *r = 0;
                    }
                }
                core.handle_scan(pins, Instant::from_millis(t));
                t += 10;
            }
            proptest::prop_assert!(drain(&mut core).is_empty());
        }

        /// Each debounced SET press gives exactly one toggle, whatever the hold time below the
        /// long-press threshold.
        #[test]
        fn each_clean_short_press_toggles_once(holds in proptest::collection::vec(30u64..2_400, 1..10)) {
            let mut core = buttons();
            let mut t = 0;
            let mut toggles = 0;
            for h in &holds {
                for i in press(&mut core, &mut t, SET, *h) {
                    if matches!(i, ButtonIntent::Switch(r) if r.op == SwitchOp::Toggle) {
                        toggles += 1;
                    }
                }
            }
            proptest::prop_assert_eq!(toggles, holds.len());
        }
    }
}
