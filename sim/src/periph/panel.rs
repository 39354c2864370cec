//! The ENERGIS front panel and outlets as observable parts: push buttons with contact bounce,
//! relays with a settle time, and LEDs.
//!
//! This module owns what the firmware's outputs become in the world and what the world's
//! hands feed back (docs/interfaces.md §5.1):
//! * [`Relays`]: eight contacts behind the ULN2803 on the relay expander's port A (0x20). A
//!   coil change at instant `t` moves the contact at `t + settle` (10 ms by default,
//!   [`RELAY_SETTLE`]); a coil that reverts before the contact has moved cancels the move (the
//!   armature never got there). Contact bounce within the settle time is not modelled as
//!   chatter: the contact state is "open" until it has settled closed. Each settled move is a
//!   trace event `relay CHn closed` / `relay CHn opened` when [`Relays::spawn`] runs its task.
//! * [`Leds`]: channel LEDs (display expander 0x21 port A), FAULT / ETH / PWR (0x21 port B bits
//!   0-2) and selection LEDs (0x23 port A); a high pin lights its LED. [`Leds::attach`] traces
//!   every change (`led CH3 on`, `led FAULT off`).
//! * [`Buttons`]: MINUS, PLUS, SET, PWR on RP2040 GPIO 12-15, active low (pressed pulls the pin
//!   to ground against a pull-up). A press or release settles after a seeded 1-5 ms during
//!   which the contact bounces 1-4 times (stream `buttons:<name>`), so a debouncer sees real
//!   edges and the same seed gives the same edges.
//!
//! Channels are numbered 0-7 in the API (bit n of a port = outlet n + 1) and CH1-CH8 in the
//! trace, as printed on the front panel.
use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::rc::Rc;

use embassy_futures::select::select;
use embassy_sync::blocking_mutex::raw::NoopRawMutex;
use embassy_sync::signal::Signal;
use firmware_core::time::{Duration, Instant};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::mcp23017::{Mcp23017, PinLevels, Port};
use crate::kernel::{JoinHandle, Kernel, SimClock, TaskSpec, Tracer};

/// Outlets, relays and channel LEDs.
pub const CHANNELS: usize = 8;
/// Default time from a coil change to a settled contact.
pub const RELAY_SETTLE: Duration = Duration::from_millis(10);

/// What the relays did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Coil changes seen.
    pub coil_changes: u64,
    /// Settled contact moves, per channel.
    pub operations: [u64; CHANNELS],
    /// Moves cancelled because the coil reverted before the contact settled.
    pub cancelled: u64,
}

struct RelayState {
    name: String,
    settle: Duration,
    coils: u8,
    contacts: u8,
    /// Per channel: contact moves still to happen, as (instant, closed), in time order.
    pending: [VecDeque<(Instant, bool)>; CHANNELS],
    stats: RelayStats,
}

impl RelayState {
    /// Apply every move due at `now`, tracing each; returns the next move's instant.
    fn settle(&mut self, now: Instant, tracer: &Tracer) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for ch in 0..CHANNELS {
            while let Some(&(at, closed)) = self.pending[ch].front() {
                if at > now {
                    next = Some(next.map_or(at, |n| n.min(at)));
                    break;
                }
                self.pending[ch].pop_front();
                let bit = 1u8 << ch;
                if closed {
                    self.contacts |= bit;
                } else {
                    self.contacts &= !bit;
                }
                self.stats.operations[ch] += 1;
                let word = if closed { "closed" } else { "opened" };
                tracer.record(&self.name, format!("relay CH{} {word}", ch + 1));
            }
        }
        next
    }
}

/// The eight outlet relays. Cheap to clone; clones share the relays.
#[derive(Clone)]
pub struct Relays {
    state: Rc<RefCell<RelayState>>,
    changed: Rc<Signal<NoopRawMutex, ()>>,
    tracer: Tracer,
    clock: SimClock,
}

impl Relays {
    /// Eight open relays named `name` (trace source) that settle in `settle`
    /// (`let relays = Relays::new(&k, "pdu.relays", RELAY_SETTLE);`).
    pub fn new(kernel: &Kernel, name: &str, settle: Duration) -> Self {
        Relays {
            state: Rc::new(RefCell::new(RelayState {
                name: name.to_owned(),
                settle,
                coils: 0,
                contacts: 0,
                pending: Default::default(),
                stats: RelayStats::default(),
            })),
            changed: Rc::new(Signal::new()),
            tracer: kernel.tracer(),
            clock: kernel.clock(),
        }
    }

    /// Drive the coils from `port` of an expander: every pin change there reaches
    /// [`Self::drive`] (`relays.wire(&mut relay_mcp.borrow_mut(), Port::A);`).
    pub fn wire(&self, mcp: &mut Mcp23017, port: Port) {
        let me = self.clone();
        me.drive(self.clock.now(), port.of(mcp.pin_levels()));
        mcp.on_change(Box::new(move |at, old, new| {
            if port.of(old) != port.of(new) {
                me.drive(at, port.of(new));
            }
        }));
    }

    /// The coils are now `coils` (bit n = outlet n + 1 energised) from instant `at`.
    pub fn drive(&self, at: Instant, coils: u8) {
        let mut st = self.state.borrow_mut();
        if coils == st.coils {
            return;
        }
        st.stats.coil_changes += 1;
        let changed = coils ^ st.coils;
        st.coils = coils;
        let settle = st.settle;
        for ch in 0..CHANNELS {
            if changed & (1 << ch) == 0 {
                continue;
            }
            let closed = coils & (1 << ch) != 0;
            let contact_now = st.contacts & (1 << ch) != 0;
            let q = &mut st.pending[ch];
            let before = q.len();
            q.retain(|(t, _)| *t <= at);
            let cancelled = (before - q.len()) as u64;
            let contact_then = q.back().map_or(contact_now, |(_, c)| *c);
            if closed != contact_then {
                st.pending[ch].push_back((at + settle, closed));
            }
            st.stats.cancelled += cancelled;
        }
        drop(st);
        self.changed.signal(());
    }

    /// Settled contact states now (bit n = outlet n + 1 closed).
    pub fn contacts(&self) -> u8 {
        let now = self.clock.now();
        let mut st = self.state.borrow_mut();
        st.settle(now, &self.tracer);
        st.contacts
    }

    /// Whether outlet `ch` (0-7) has its contact closed now.
    pub fn is_closed(&self, ch: usize) -> bool {
        ch < CHANNELS && self.contacts() & (1 << ch) != 0
    }

    /// Coil drive now (bit n = outlet n + 1).
    pub fn coils(&self) -> u8 {
        self.state.borrow().coils
    }

    /// Counters.
    pub fn stats(&self) -> RelayStats {
        self.contacts();
        self.state.borrow().stats
    }

    /// Run the world task that settles contacts on time and traces each move. Without it,
    /// contacts still settle when read, but their trace events come late.
    pub fn spawn(&self, kernel: &mut Kernel) -> JoinHandle<()> {
        let me = self.clone();
        let name = self.state.borrow().name.clone();
        kernel.spawn(TaskSpec::world(name), async move {
            loop {
                let next = {
                    let now = me.clock.now();
                    me.state.borrow_mut().settle(now, &me.tracer)
                };
                match next {
                    Some(t) => {
                        select(me.clock.sleep_until(t), me.changed.wait()).await;
                    }
                    None => me.changed.wait().await,
                }
            }
        })
    }
}

/// Every LED at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LedState {
    /// Channel LEDs, bit n = outlet n + 1.
    pub channels: u8,
    /// Selection LEDs, bit n = outlet n + 1.
    pub selection: u8,
    /// FAULT LED.
    pub fault: bool,
    /// ETH LED.
    pub eth: bool,
    /// PWR LED.
    pub power: bool,
}

impl LedState {
    fn from_pins(display: u16, selection: u16) -> Self {
        let status = Port::B.of(display);
        LedState {
            channels: Port::A.of(display),
            selection: Port::A.of(selection),
            fault: status & 0x01 != 0,
            eth: status & 0x02 != 0,
            power: status & 0x04 != 0,
        }
    }

    /// `(name, lit)` for every LED, in panel order, for traces and scenario states.
    pub fn named(&self) -> Vec<(String, bool)> {
        let mut v: Vec<(String, bool)> = (0..CHANNELS)
            .map(|ch| (format!("CH{}", ch + 1), self.channels & (1 << ch) != 0))
            .collect();
        v.extend(
            (0..CHANNELS).map(|ch| (format!("SEL{}", ch + 1), self.selection & (1 << ch) != 0)),
        );
        v.push(("FAULT".to_owned(), self.fault));
        v.push(("ETH".to_owned(), self.eth));
        v.push(("PWR".to_owned(), self.power));
        v
    }
}

/// The panel LEDs, read from the display (0x21) and selection (0x23) expanders' pins.
#[derive(Debug, Clone)]
pub struct Leds {
    display: PinLevels,
    selection: PinLevels,
}

impl Leds {
    /// LEDs on these pins, without tracing (`Leds::new(mcp21.borrow().pins(), mcp23.borrow().pins())`).
    pub fn new(display: PinLevels, selection: PinLevels) -> Self {
        Leds { display, selection }
    }

    /// LEDs on these expanders, tracing every change under `name`
    /// (`Leds::attach(&k, "pdu.leds", &mut mcp21.borrow_mut(), &mut mcp23.borrow_mut())`).
    pub fn attach(
        kernel: &Kernel,
        name: &str,
        display: &mut Mcp23017,
        selection: &mut Mcp23017,
    ) -> Self {
        let leds = Leds::new(display.pins(), selection.pins());
        let last = Rc::new(RefCell::new(leds.state()));
        for mcp in [display, selection] {
            let (leds, last, tracer, name) =
                (leds.clone(), last.clone(), kernel.tracer(), name.to_owned());
            mcp.on_change(Box::new(move |_, _, _| {
                let now = leds.state();
                let before = std::mem::replace(&mut *last.borrow_mut(), now);
                for ((led, was), (_, is)) in before.named().into_iter().zip(now.named()) {
                    if was != is {
                        let word = if is { "on" } else { "off" };
                        tracer.record(&name, format!("led {led} {word}"));
                    }
                }
            }));
        }
        leds
    }

    /// Every LED now.
    pub fn state(&self) -> LedState {
        LedState::from_pins(self.display.get(), self.selection.get())
    }
}

/// A front-panel button.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Button {
    /// MINUS, GPIO 12.
    Minus,
    /// PLUS, GPIO 13.
    Plus,
    /// SET, GPIO 14.
    Set,
    /// PWR, GPIO 15.
    Power,
}

impl Button {
    /// All buttons, in GPIO order.
    pub const ALL: [Button; 4] = [Button::Minus, Button::Plus, Button::Set, Button::Power];

    /// The RP2040 GPIO it is wired to.
    pub fn gpio(self) -> u8 {
        12 + self.index() as u8
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Parse a name as printed on the panel (`minus`, `plus`, `set`, `pwr`/`power`), any case.
    pub fn parse(name: &str) -> Option<Button> {
        match name.to_ascii_lowercase().as_str() {
            "minus" => Some(Button::Minus),
            "plus" => Some(Button::Plus),
            "set" => Some(Button::Set),
            "pwr" | "power" => Some(Button::Power),
            _ => None,
        }
    }
}

impl fmt::Display for Button {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Button::Minus => "MINUS",
            Button::Plus => "PLUS",
            Button::Set => "SET",
            Button::Power => "PWR",
        })
    }
}

/// What the buttons did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ButtonStats {
    /// Presses.
    pub presses: u64,
    /// Releases.
    pub releases: u64,
    /// Bounce edges generated (each bounce is two edges).
    pub bounce_edges: u64,
}

struct ButtonState {
    name: String,
    rng: ChaCha8Rng,
    /// Logical state after the last press/release.
    held: [bool; 4],
    /// Contact level history per button as (from, pressed); the front is the level in force.
    edges: [VecDeque<(Instant, bool)>; 4],
    stats: ButtonStats,
}

impl ButtonState {
    fn contact(&mut self, i: usize, now: Instant) -> bool {
        let q = &mut self.edges[i];
        while q.len() > 1 && q[1].0 <= now {
            q.pop_front();
        }
        match q.front() {
            Some(&(t, pressed)) if t <= now => pressed,
            // Nothing in force yet: the level before the first edge.
            Some(&(_, pressed)) => !pressed,
            None => false,
        }
    }
}

/// The four panel buttons with seeded contact bounce. Cheap to clone; clones share them.
#[derive(Clone)]
pub struct Buttons {
    state: Rc<RefCell<ButtonState>>,
    tracer: Tracer,
    clock: SimClock,
}

impl Buttons {
    /// Four released buttons named `name` (trace source), bouncing from the RNG stream
    /// `buttons:<name>` (`let buttons = Buttons::new(&k, "pdu.buttons");`).
    pub fn new(kernel: &Kernel, name: &str) -> Self {
        Buttons {
            state: Rc::new(RefCell::new(ButtonState {
                name: name.to_owned(),
                rng: kernel.rng(&format!("buttons:{name}")),
                held: [false; 4],
                edges: Default::default(),
                stats: ButtonStats::default(),
            })),
            tracer: kernel.tracer(),
            clock: kernel.clock(),
        }
    }

    /// Press `button` now (nothing happens if it is held already).
    pub fn press(&self, button: Button) {
        self.set(button, true);
    }

    /// Release `button` now (nothing happens if it is not held).
    pub fn release(&self, button: Button) {
        self.set(button, false);
    }

    fn set(&self, button: Button, pressed: bool) {
        let now = self.clock.now();
        let mut st = self.state.borrow_mut();
        let i = button.index();
        if st.held[i] == pressed {
            return;
        }
        st.held[i] = pressed;
        // Settle the history up to now, then forget a bounce still to come.
        st.contact(i, now);
        st.edges[i].retain(|(t, _)| *t <= now);
        let settle_us: u64 = st.rng.random_range(1_000..=5_000);
        let bounces: usize = st.rng.random_range(1..=4);
        let mut times: Vec<u64> = (0..2 * bounces)
            .map(|_| st.rng.random_range(1..settle_us))
            .collect();
        times.sort_unstable();
        times.dedup();
        // An odd count after dedup would end on the wrong level: drop the last.
        if times.len() % 2 == 1 {
            times.pop();
        }
        let q = &mut st.edges[i];
        q.push_back((now, pressed));
        for (k, t) in times.iter().enumerate() {
            let level = if k % 2 == 0 { !pressed } else { pressed };
            q.push_back((now + Duration::from_micros(*t), level));
        }
        st.stats.bounce_edges += times.len() as u64;
        if pressed {
            st.stats.presses += 1;
        } else {
            st.stats.releases += 1;
        }
        let word = if pressed { "pressed" } else { "released" };
        self.tracer
            .record(&st.name, format!("button {button} {word}"));
    }

    /// Whether `button`'s contact is closed now (bounce included).
    pub fn is_pressed(&self, button: Button) -> bool {
        let now = self.clock.now();
        self.state.borrow_mut().contact(button.index(), now)
    }

    /// Whether `button` is held (the hand's intent, no bounce).
    pub fn is_held(&self, button: Button) -> bool {
        self.state.borrow().held[button.index()]
    }

    /// The GPIO level of `button` now: low (`false`) while its contact is closed.
    pub fn pin_level(&self, button: Button) -> bool {
        !self.is_pressed(button)
    }

    /// The four GPIO levels now, bit n = [`Button::ALL`]`[n]` (all high when idle: `0x0F`).
    pub fn levels(&self) -> u8 {
        Button::ALL
            .iter()
            .enumerate()
            .fold(0, |acc, (n, b)| acc | (u8::from(self.pin_level(*b)) << n))
    }

    /// Which contacts are closed now, bit n = [`Button::ALL`]`[n]`: the sample the firmware's
    /// `ButtonPins` wants (the board inverts the active-low pins)
    /// (`let pins = move || buttons.pressed_mask();`).
    pub fn pressed_mask(&self) -> u8 {
        !self.levels() & 0x0F
    }

    /// Counters.
    pub fn stats(&self) -> ButtonStats {
        self.state.borrow().stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::periph::i2c::{FAST_MODE_HZ, I2cBus};
    use embedded_hal_async::i2c::I2c;

    fn at_ms(v: u64) -> Instant {
        Instant::from_millis(v)
    }

    /// Write `bytes` to the expander at `addr` at `at` from a world task.
    fn write_at(k: &mut Kernel, bus: &I2cBus, addr: u8, at: Instant, bytes: Vec<u8>) {
        let mut bus = bus.clone();
        let clock = k.clock();
        k.spawn(TaskSpec::world("ctl"), async move {
            clock.sleep_until(at).await;
            let _ = bus.write(addr, &bytes).await;
        })
        .detach();
    }

    #[test]
    fn relay_contacts_close_one_settle_time_after_the_coil() {
        let mut k = Kernel::new(0);
        let bus = I2cBus::new(&k, "i2c1", FAST_MODE_HZ).expect("bus");
        let mcp = Mcp23017::new(&k, "mcp20")
            .attach(&bus, 0x20)
            .expect("attach");
        let relays = Relays::new(&k, "relays", RELAY_SETTLE);
        relays.wire(&mut mcp.borrow_mut(), Port::A);
        relays.spawn(&mut k).detach();
        write_at(&mut k, &bus, 0x20, at_ms(0), vec![0x00, 0x00]); // IODIRA outputs
        write_at(&mut k, &bus, 0x20, at_ms(1), vec![0x14, 0x04]); // CH3 on
        k.run_until(at_ms(10));
        assert_eq!(relays.coils(), 0x04);
        assert!(!relays.is_closed(2), "still moving");
        k.run_until(at_ms(12));
        assert!(relays.is_closed(2));
        write_at(&mut k, &bus, 0x20, at_ms(20), vec![0x14, 0x00]);
        k.run_until(at_ms(40));
        assert_eq!(relays.contacts(), 0);
        k.with_trace(|t| {
            let ev: Vec<_> = t
                .events()
                .iter()
                .filter(|e| e.source == "relays")
                .map(|e| (e.at.as_micros(), e.text.clone()))
                .collect();
            // The coil changes when the OLAT byte ends: 1 ms + 3 bytes at 400 kHz (68 µs).
            assert_eq!(
                ev,
                vec![
                    (11_068, "relay CH3 closed".to_owned()),
                    (30_068, "relay CH3 opened".to_owned())
                ]
            );
        });
        assert_eq!(relays.stats().operations[2], 2);
    }

    #[test]
    fn a_coil_pulse_shorter_than_the_settle_time_never_closes_the_contact() {
        let mut k = Kernel::new(0);
        let relays = Relays::new(&k, "relays", RELAY_SETTLE);
        relays.drive(at_ms(0), 0x01);
        relays.drive(at_ms(5), 0x00);
        relays.spawn(&mut k).detach();
        k.run_until(at_ms(50));
        assert_eq!(relays.contacts(), 0);
        assert_eq!(relays.stats().operations[0], 0);
        assert_eq!(relays.stats().cancelled, 1);
    }

    #[test]
    fn leds_follow_the_display_and_selection_expanders() {
        let mut k = Kernel::new(0);
        let bus = I2cBus::new(&k, "i2c0", FAST_MODE_HZ).expect("bus");
        let d = Mcp23017::new(&k, "mcp21")
            .attach(&bus, 0x21)
            .expect("attach");
        let s = Mcp23017::new(&k, "mcp23")
            .attach(&bus, 0x23)
            .expect("attach");
        let leds = Leds::attach(&k, "leds", &mut d.borrow_mut(), &mut s.borrow_mut());
        write_at(&mut k, &bus, 0x21, at_ms(0), vec![0x00, 0x00, 0x00]);
        write_at(&mut k, &bus, 0x23, at_ms(0), vec![0x00, 0x00]);
        write_at(&mut k, &bus, 0x21, at_ms(1), vec![0x14, 0x81, 0x05]);
        write_at(&mut k, &bus, 0x23, at_ms(1), vec![0x14, 0x02]);
        k.run_until(at_ms(5));
        assert_eq!(
            leds.state(),
            LedState {
                channels: 0x81,
                selection: 0x02,
                fault: true,
                eth: false,
                power: true
            }
        );
        k.with_trace(|t| {
            let ev: Vec<_> = t
                .events()
                .iter()
                .filter(|e| e.source == "leds")
                .map(|e| e.text.as_str())
                .collect();
            assert_eq!(
                ev,
                vec![
                    "led CH1 on",
                    "led CH8 on",
                    "led FAULT on",
                    "led PWR on",
                    "led SEL2 on"
                ]
            );
        });
    }

    /// A kernel whose clock advances on `run_until` even with no other task (the kernel stops
    /// at the last timer when nothing is left to run).
    fn ticking_kernel(seed: u64) -> Kernel {
        let mut k = Kernel::new(seed);
        let clock = k.clock();
        k.spawn(TaskSpec::world("clock"), async move {
            clock.sleep_until(Instant::from_millis(60_000)).await;
        })
        .detach();
        k
    }

    /// Sample SET's pin every 10 µs for 8 ms after a press at 1 ms; return the edges.
    fn press_edges(seed: u64) -> Vec<(u64, bool)> {
        let mut k = ticking_kernel(seed);
        let buttons = Buttons::new(&k, "buttons");
        k.run_until(at_ms(1));
        buttons.press(Button::Set);
        let mut edges = Vec::new();
        let mut last = true;
        for step in 0..=800 {
            k.run_until(at_ms(1) + Duration::from_micros(step * 10));
            let level = buttons.pin_level(Button::Set);
            if level != last {
                edges.push((k.now().as_micros(), level));
                last = level;
            }
        }
        assert!(buttons.is_held(Button::Set));
        edges
    }

    #[test]
    fn a_press_bounces_then_settles_low_reproducibly_per_seed() {
        let a = press_edges(5);
        assert_eq!(a, press_edges(5));
        assert_ne!(a, press_edges(6));
        // Starts low at once, bounces at least once, ends low within 5 ms.
        assert_eq!(a.first(), Some(&(1_000, false)));
        assert!(a.len() >= 3, "{a:?}");
        let (t, level) = *a.last().expect("edges");
        assert!(!level);
        assert!(t <= 6_000, "{a:?}");
    }

    #[test]
    fn released_buttons_read_high_and_counters_count() {
        let mut k = ticking_kernel(1);
        let buttons = Buttons::new(&k, "buttons");
        assert_eq!(buttons.levels(), 0x0F);
        buttons.press(Button::Plus);
        buttons.press(Button::Plus);
        k.run_until(at_ms(10));
        assert_eq!(buttons.levels(), 0x0D);
        buttons.release(Button::Plus);
        k.run_until(at_ms(20));
        assert_eq!(buttons.levels(), 0x0F);
        let s = buttons.stats();
        assert_eq!((s.presses, s.releases), (1, 1));
        assert!(s.bounce_edges >= 4);
        assert_eq!(Button::parse("PWR"), Some(Button::Power));
        assert_eq!(Button::Set.gpio(), 14);
    }

    /// Press and release PLUS once and scan with the firmware's ButtonCore every `scan` with
    /// `samples` debounce; count the selection moves it reports.
    fn selection_moves(scan: Duration, samples: u8) -> usize {
        use firmware_core::pdu::buttons::{ButtonCore, ButtonIntent};
        use firmware_core::pdu::config::PduConfig;
        let mut k = ticking_kernel(3);
        let buttons = Buttons::new(&k, "buttons");
        let mut core = ButtonCore::new(&PduConfig::default().buttons);
        core.set_debounce_samples(samples);
        // The core announces the initial selection first.
        while core.poll_intent().is_some() {}
        let mut moves = 0;
        let mut t = Instant::ZERO;
        while t < at_ms(200) {
            if t == at_ms(20) {
                buttons.press(Button::Plus);
            }
            if t == at_ms(120) {
                buttons.release(Button::Plus);
            }
            core.handle_scan(buttons.pressed_mask(), t);
            while let Some(i) = core.poll_intent() {
                if matches!(i, ButtonIntent::Selection(_)) {
                    moves += 1;
                }
            }
            t += scan;
            k.run_until(t);
        }
        moves
    }

    #[test]
    fn the_firmware_debouncer_sees_one_press_where_a_raw_reader_sees_the_bounces() {
        assert_eq!(selection_moves(Duration::from_millis(10), 3), 1);
        assert!(selection_moves(Duration::from_micros(50), 1) > 1);
    }
}
