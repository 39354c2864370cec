//! SwitchTask: the owner of the relays, the meter mux and the front-panel LEDs.
//!
//! [`SwitchCore`] is the sans-IO policy engine; [`SwitchTask`] is the thin runner that owns the
//! three [`Mcp23017`](super::mcp23017::Mcp23017) expanders and feeds the core.
//!
//! # State machine
//! `INIT → READY → FAULT_SAFE`. The core starts in [`SwitchState::Init`]; requests that arrive
//! then are deferred (they wait up to their `timeout_ms`). [`SwitchCore::boot`] applies the
//! configured `SAFE_MASK` and enters `READY`; [`SwitchCore::restore`] then brings back the saved
//! outlets, in steps that respect every interlock. `FAULT_SAFE` is entered by a `SafeState`
//! request (from any source; HealthTask's fault policy, the PWR button) or by
//! `i2c_fault_threshold` I2C write errors in a row on one expander (counted per chip, so a
//! healthy display bus cannot hide a dead relay bus; failed writes are retried after
//! [`IO_RETRY`], [`IO_RETRY_FAULT`] once in `FAULT_SAFE`). Entering it switches off every outlet not in
//! `SAFE_MASK` (outlets in it *stay* as they are: the safe state never switches anything on),
//! cancels deferred requests, lights the FAULT LED and is announced as a [`SwitchEvent`] and in the
//! published [`SwitchSnapshot`]. In `FAULT_SAFE` only `Query`, `MeterMux`, `ResetOverCurrent`,
//! `SafeState` and `ClearFault` act; everything else is answered [`SwitchStatus::FaultSafe`].
//! `ClearFault` (console `CLR_ERR`, long SET press) returns to `READY` and clears the FAULT LED.
//!
//! # Arbitration and interlocks
//! A request is all-or-nothing: either every outlet it names is switched, or none. Checks, in
//! order, for a request that would change the relays (reason codes in [`reason`]):
//!
//! 1. **Priority claims** (`Preempted`): each outlet carries a claim — the source that last acted
//!    on it, or that has a request deferred on it — held for [`CLAIM_HOLD`] after it acted (or after
//!    the deferred request's earliest execution time). A request from a source of *lower* priority
//!    (`Health > Console > Net > Button > Schedule`, or `SwitchPolicy::priority_override`) that
//!    would change a claimed outlet is answered `Preempted` at once. Equal or higher priority takes
//!    the claim over. So a button press cannot undo what the console did a moment ago, and a
//!    deferred console request cannot be overtaken by a schedule.
//! 2. **Deny lists** (`Denied`): `SwitchPolicy::deny[source.rank()]` names outlets that source may
//!    not switch, on or off.
//! 3. For outlets being switched **on** only (switching off is always allowed, it is the safe
//!    direction): mutual-exclusion groups (`Interlocked`), the over-current lockout
//!    (`OverCurrentLockout`), the brown-out guard (`BrownOut`: supply below `brownout_mv`, when the
//!    platform reports the supply; no reading means no guard), and a request that alone switches on
//!    more than `max_simultaneous` outlets (`TooManyToggles`).
//! 4. **Timing** (deferral): an outlet may change at most once per `min_toggle_ms`, and at most
//!    `max_simultaneous` outlets may switch on within one `min_toggle_ms` window (inrush). A request
//!    that is too early is *deferred* until it is allowed and then checked again from the top; if
//!    that time lies beyond its `timeout_ms` it is answered `Timeout` at once. While a relay write
//!    is outstanding (an I2C error is being retried) relay requests are deferred too, so timing is
//!    always measured on what the relays really did. `max_simultaneous = 0` means no limit.
//!
//! Safety actions — the safe state and an over-current trip — only ever switch outlets off and
//! skip the checks above. Replies for requests that changed the relays are sent once the relay
//! write landed (`Ok`) or failed (`IoError`; the core keeps retrying the write).
//!
//! # Over-current protection
//! On the sum of the channel currents (from MeterTask, [`SwitchCore::handle_currents`]): `Warning`
//! at ≥ limit − 1.0 A; at ≥ limit − 0.5 A a **trip** switches off the outlet switched on last and
//! enters `Lockout`, where switching on is refused; still above the trip level
//! [`OCP_RETRIP`] after a trip, the next most recent outlet goes off. Recovery below
//! limit − 1.5 A, or `ResetOverCurrent`, ends the lockout. A trip also lights the FAULT LED until
//! `ClearFault`.
//!
//! # Wiring (boot)
//! 1. `let mut core = SwitchCore::new(cfg.switch.clone(), &cfg.ocp);`
//!    `core.boot(&cfg.switch, &cfg.ocp, now);` and, if `cfg.switch.restore_on_boot`,
//!    `core.restore(cfg.switch.last_state, now);`.
//! 2. Make the queues: requests (`RejectNew`; everyone sends with [`offer_request`]), one reply
//!    queue per source that wants replies (`DropOldest`), the [`SwitchAux`] queue, a
//!    `Signal<[f32; 8]>` that MeterTask signals with the channel currents, a `Watch` for
//!    [`SwitchSnapshot`], optionally an event queue, the heartbeat board and a log port.
//! 3. `SwitchTask::new(core, i2c1, i2c0_a, i2c0_b, links, clock).run().await` — it initialises the
//!    expanders the ENERGIS way and then writes the boot state.
//!
//! Saving `last_state` when the relays change is StorageTask's job: it can follow
//! [`SwitchSnapshot::relays`] on the `Watch`.
mod runner;

pub use runner::{
    EventPort, SwitchAux, SwitchLinks, SwitchTask, offer_request, op_name, reply_busy, status_name,
};

use heapless::{Deque, Vec};

use super::config::{OcpConfig, PduConfig, SwitchPolicy};
use super::frontend::{OcpState, OcpStatus, SwitchState};
use super::mcp23017::Port;
use super::{
    CHANNELS, Outlet, OutletMask, Source, SwitchOp, SwitchReply, SwitchRequest, SwitchStatus,
};
use crate::time::{Duration, Instant};

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

/// Reason and fault codes carried in [`SwitchReply::fault_code`] and [`SwitchSnapshot::fault_code`].
pub mod reason {
    /// Nothing to report.
    pub const NONE: u16 = 0;
    /// `Preempted`: a higher-priority source holds a claim on an outlet of the request.
    pub const CLAIMED_BY_HIGHER: u16 = 1;
    /// `Denied`: an outlet is on the source's deny list.
    pub const DENY_LIST: u16 = 2;
    /// `Interlocked`: another outlet of a mutual-exclusion group is (or would be) on.
    pub const INTERLOCK_GROUP: u16 = 3;
    /// `Timeout`: the minimum toggle interval would not pass before the request's timeout.
    pub const MIN_TOGGLE_INTERVAL: u16 = 4;
    /// `TooManyToggles` (a single request switches on too many outlets), or `Timeout` when the
    /// simultaneous-switch window would not free up in time.
    pub const SIMULTANEOUS_LIMIT: u16 = 5;
    /// `OverCurrentLockout`.
    pub const OCP_LOCKOUT: u16 = 6;
    /// `BrownOut`.
    pub const BROWN_OUT: u16 = 7;
    /// `FaultSafe`: the request was refused (or cancelled) because of `FAULT_SAFE`.
    pub const FAULT_SAFE: u16 = 8;
    /// `Invalid`: e.g. `Set` without a channel.
    pub const INVALID: u16 = 9;
    /// `IoError`: the relay expander write failed (it is retried).
    pub const I2C_ERROR: u16 = 10;
    /// `Busy`: SwitchTask's request queue was full.
    pub const QUEUE_FULL: u16 = 11;
    /// `Busy`: too many deferred requests already.
    pub const DEFER_FULL: u16 = 12;
    /// `Timeout`: SwitchTask was still in `INIT`.
    pub const NOT_READY: u16 = 13;
    /// `Timeout`: a relay write was outstanding for the whole timeout.
    pub const IO_PENDING: u16 = 14;
    /// Fault code of `FAULT_SAFE` entered by a `SafeState` request: this plus the source's rank.
    pub const SAFE_STATE_REQUESTED: u16 = 0x100;
    /// Fault code of `FAULT_SAFE` entered after `i2c_fault_threshold` I2C errors in a row.
    pub const I2C_FAULT_THRESHOLD: u16 = 0x110;
}

/// How long an outlet stays claimed by the source that acted on it (see the module docs).
pub const CLAIM_HOLD: Duration = Duration::from_millis(1_000);
/// While in lockout and still above the trip level, how long before the next outlet is tripped.
pub const OCP_RETRIP: Duration = Duration::from_millis(1_000);
/// Delay before an I2C write is retried after an error.
pub const IO_RETRY: Duration = Duration::from_millis(10);
/// Delay between retries while in `FAULT_SAFE`.
pub const IO_RETRY_FAULT: Duration = Duration::from_millis(1_000);
/// Deferred requests held at once; one more is answered `Busy` ([`reason::DEFER_FULL`]). A boot
/// restore may defer one request per outlet plus its switch-off ([`SwitchCore::restore`]), and
/// four more stay free for the console, the network and the buttons meanwhile.
pub const DEFERRED_CAPACITY: usize = CHANNELS + 5;
/// Replies waiting for [`SwitchCore::poll_reply`]; when full the oldest is dropped and counted.
pub const REPLY_CAPACITY: usize = 16;
/// Events waiting for [`SwitchCore::poll_event`]; when full the oldest is dropped and counted.
pub const EVENT_CAPACITY: usize = 8;
/// Token of the requests [`SwitchCore::restore`] generates (source `Schedule`).
pub const RESTORE_TOKEN: u32 = u32::MAX;

/// Relay expander port B: meter mux select lines A/B/C (bits 0-2) and active-low EN (bit 3).
pub const MUX_EN_N: u8 = 0x08;
/// Display expander port B: FAULT LED.
pub const LED_FAULT: u8 = 0x01;
/// Display expander port B: ETH LED.
pub const LED_ETH: u8 = 0x02;
/// Display expander port B: PWR LED.
pub const LED_PWR: u8 = 0x04;

/// The three expanders SwitchTask owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Expander {
    /// 0x20 on I2C1: relays (port A), meter mux (port B).
    Relay,
    /// 0x21 on I2C0: channel LEDs (port A), FAULT/ETH/PWR (port B).
    Display,
    /// 0x23 on I2C0: selection LEDs (port A).
    Selection,
}

impl Expander {
    /// The expander's 7-bit I2C address.
    pub const fn address(self) -> u8 {
        match self {
            Expander::Relay => 0x20,
            Expander::Display => 0x21,
            Expander::Selection => 0x23,
        }
    }
}

/// A latch write the runner must perform ([`SwitchCore::poll_write`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PortWrite {
    /// Which chip.
    pub expander: Expander,
    /// Which port.
    pub port: Port,
    /// The whole latch value.
    pub value: u8,
}

/// Result of a [`PortWrite`], fed back with [`SwitchCore::handle_io_result`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum IoOutcome {
    /// The write was acknowledged.
    Done,
    /// The write failed (after the driver's retries); the code is for logs.
    Failed(u16),
}

/// Something other tasks, the console and the network should hear about.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SwitchEvent {
    /// The state machine moved; `fault_code` says why (see [`reason`]).
    StateChanged {
        /// The new state.
        state: SwitchState,
        /// Why.
        fault_code: u16,
    },
    /// The over-current state changed, or an outlet was tripped.
    OverCurrent {
        /// The new over-current state.
        state: OcpState,
        /// Summed current, amps.
        total_a: f32,
        /// The outlet switched off by this trip, if any.
        tripped: Option<Outlet>,
    },
    /// An expander write failed.
    IoError {
        /// Which chip.
        expander: Expander,
        /// Errors in a row so far.
        in_row: u8,
    },
}

/// SwitchTask's published state, for Net, Console, Health and the simulator.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SwitchSnapshot {
    /// State machine state.
    pub state: SwitchState,
    /// Relay state as decided (what the relay latch holds or is being written to).
    pub relays: OutletMask,
    /// Over-current protection.
    pub ocp: OcpStatus,
    /// Fault code of the last `FAULT_SAFE` entry (0 after `ClearFault`).
    pub fault_code: u16,
    /// The FAULT LED is lit.
    pub fault_led: bool,
    /// Selected outlet (front panel).
    pub selection: Option<Outlet>,
    /// I2C write errors since boot.
    pub io_errors: u32,
}

/// A reply with the request it answers, from [`SwitchCore::poll_answer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SwitchAnswer {
    /// Who asked (whose reply queue it goes to).
    pub source: Source,
    /// What was asked.
    pub op: SwitchOp,
    /// The outlet named by the request.
    pub channel: Option<Outlet>,
    /// From the request's arrival to its answer.
    pub waited: Duration,
    /// The reply.
    pub reply: SwitchReply,
}

/// Counters of the core, for telemetry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SwitchStats {
    /// I2C write errors since boot.
    pub io_errors: u32,
    /// I2C write errors in a row now, on the worst expander.
    pub io_errors_in_row: u8,
    /// Replies dropped because nobody polled them.
    pub replies_dropped: u32,
    /// Events dropped because nobody polled them.
    pub events_dropped: u32,
    /// Requests deferred now.
    pub deferred: u8,
}

#[derive(Debug, Clone, Copy)]
struct Claim {
    rank: u8,
    until: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Deferred {
    ask: Ask,
    /// Answer `Timeout` at this instant at the latest.
    deadline: Instant,
    /// Check again at this instant.
    ready_at: Instant,
}

/// A request and when it arrived.
#[derive(Debug, Clone, Copy)]
struct Ask {
    req: SwitchRequest,
    received: Instant,
}

enum Verdict {
    Reply(SwitchStatus, u16),
    /// Answered when the pending write lands.
    Parked,
    Defer(Instant, u16),
    Apply(OutletMask),
}

// Latch slots the core keeps an image of.
const SLOT_RELAY: usize = 0;
const SLOT_MUX: usize = 1;
const SLOT_LEDS: usize = 2;
const SLOT_STATUS: usize = 3;
const SLOT_SELECT: usize = 4;
const SLOTS: [(Expander, Port); 5] = [
    (Expander::Relay, Port::A),
    (Expander::Relay, Port::B),
    (Expander::Display, Port::A),
    (Expander::Display, Port::B),
    (Expander::Selection, Port::A),
];

/// The sans-IO switch engine. See the module docs for the policy.
///
/// # Call order
/// Feed inputs with `handle_request`, `handle_currents`, `handle_supply_mv`, `handle_selection`,
/// `set_eth_link`; call [`handle_timeout`](Self::handle_timeout) whenever
/// [`poll_timeout`](Self::poll_timeout) has passed (calling it more often is harmless). After
/// every input drain [`poll_write`](Self::poll_write) — perform each write and report it with
/// [`handle_io_result`](Self::handle_io_result) before asking for the next — then
/// [`poll_reply`](Self::poll_reply) and [`poll_event`](Self::poll_event).
#[derive(Debug, Clone)]
pub struct SwitchCore {
    state: SwitchState,
    policy: SwitchPolicy,
    ocp_limit: f32,
    relays: OutletMask,
    desired: [u8; 5],
    written: [Option<u8>; 5],
    in_flight: Option<usize>,
    retry_at: [Instant; 5],
    last_change: [Option<Instant>; CHANNELS],
    last_on: [Option<Instant>; CHANNELS],
    on_seq: [u32; CHANNELS],
    seq: u32,
    claims: [Option<Claim>; CHANNELS],
    deferred: Vec<Deferred, DEFERRED_CAPACITY>,
    parked: Vec<Ask, DEFERRED_CAPACITY>,
    replies: Deque<SwitchAnswer, REPLY_CAPACITY>,
    now: Instant,
    events: Deque<SwitchEvent, EVENT_CAPACITY>,
    ocp: OcpStatus,
    last_trip_at: Option<Instant>,
    supply_mv: Option<u16>,
    fault_code: u16,
    fault_led: bool,
    eth_link: bool,
    selection: Option<Outlet>,
    /// Errors in a row per expander (relay, display, selection): a healthy chip's successes must
    /// not hide a dead one.
    in_row: [u8; 3],
    stats: SwitchStats,
}

impl SwitchCore {
    /// A core in `INIT` with the given policy; relays off, nothing to write until [`boot`](Self::boot).
    pub fn new(policy: SwitchPolicy, ocp: &OcpConfig) -> Self {
        SwitchCore {
            state: SwitchState::Init,
            policy,
            ocp_limit: ocp.limit_a,
            relays: OutletMask::NONE,
            desired: [0, MUX_EN_N, 0, 0, 0],
            written: [Some(0), Some(MUX_EN_N), Some(0), Some(0), Some(0)],
            in_flight: None,
            retry_at: [Instant::ZERO; 5],
            last_change: [None; CHANNELS],
            last_on: [None; CHANNELS],
            on_seq: [0; CHANNELS],
            seq: 0,
            claims: [None; CHANNELS],
            deferred: Vec::new(),
            parked: Vec::new(),
            now: Instant::ZERO,
            replies: Deque::new(),
            events: Deque::new(),
            ocp: OcpStatus {
                limit_a: ocp.limit_a,
                ..OcpStatus::default()
            },
            last_trip_at: None,
            supply_mv: None,
            fault_code: reason::NONE,
            fault_led: false,
            eth_link: false,
            selection: None,
            in_row: [0; 3],
            stats: SwitchStats::default(),
        }
    }

    /// Boot: take the policy, apply `SAFE_MASK` and enter `READY`. Every latch is written afresh
    /// (the expanders' contents are unknown). A `SAFE_MASK` that breaks a mutual-exclusion group or
    /// switches on more than `max_simultaneous` outlets is not applied: boot uses `ALL_OFF` and
    /// logs a warning. Requests deferred during `INIT` are checked at the next
    /// [`handle_timeout`](Self::handle_timeout).
    pub fn boot(&mut self, policy: &SwitchPolicy, ocp: &OcpConfig, now: Instant) {
        self.now = self.now.max(now);
        self.policy = policy.clone();
        self.set_ocp(ocp);
        let safe = self.policy.safe_mask;
        let valid = self.groups_ok(safe) && !self.exceeds_max(safe.count());
        let start = if valid {
            safe
        } else {
            warn!(
                "switch: SAFE_MASK {} violates interlocks, booting ALL_OFF",
                safe.0
            );
            OutletMask::NONE
        };
        self.relays = start;
        for o in start.iter() {
            self.mark_on(o, now);
        }
        self.written = [None; 5];
        self.in_flight = None;
        self.desired[SLOT_RELAY] = start.0;
        self.refresh_leds();
        self.set_state(SwitchState::Ready, reason::NONE);
        for d in self.deferred.iter_mut() {
            d.ready_at = now;
        }
        info!("switch: READY, safe mask {}", start.0);
    }

    /// The boot sequence for a loaded configuration, as every platform runs it: a core in
    /// `READY` with `SAFE_MASK` applied ([`boot`](Self::boot)), then the saved outlets restored
    /// when `restore_on_boot` is set ([`restore`](Self::restore)). Returns the core and, when
    /// restoring, how many restore requests were queued.
    pub fn boot_from(config: &PduConfig, now: Instant) -> (SwitchCore, Option<usize>) {
        let mut core = SwitchCore::new(config.switch.clone(), &config.ocp);
        core.boot(&config.switch, &config.ocp, now);
        let restored = config
            .switch
            .restore_on_boot
            .then(|| core.restore(config.switch.last_state, now));
        (core, restored)
    }

    /// Bring back `mask` after boot (`restore_on_boot`): outlets not in it go off, then each outlet
    /// in it comes on by a request of its own, so the inrush limit (`max_simultaneous` within
    /// `min_toggle_ms`) spaces them and a higher-priority source that takes one outlet over
    /// meanwhile (a console `SET_CH`) preempts the restore of that outlet only, never of the others
    /// (found by a seeded fault sweep). Generated as `Schedule` requests with token
    /// [`RESTORE_TOKEN`], so every interlock applies and their replies appear at `poll_reply`.
    /// Returns how many requests were queued (the rest, if the deferred list is full, are answered
    /// `Busy`).
    pub fn restore(&mut self, mask: OutletMask, now: Instant) -> usize {
        let mut off = SwitchRequest::new(Source::Schedule, SwitchOp::SetMask);
        off.mask = OutletMask(!mask.0);
        off.token = RESTORE_TOKEN;
        off.timeout_ms = self.restore_timeout_ms(mask);
        let mut queued = usize::from(self.admit(off, now));
        for o in mask.iter() {
            let mut on = off;
            on.mask = OutletMask::NONE.with(o, true);
            on.value = true;
            queued += usize::from(self.admit(on, now));
        }
        queued
    }

    fn restore_timeout_ms(&self, mask: OutletMask) -> u32 {
        let steps = mask.count() + 2;
        u32::from(self.policy.min_toggle_ms)
            .saturating_add(10)
            .saturating_mul(steps)
            .saturating_add(1_000)
    }

    /// Replace the policy at run time. Nothing is switched: a new interlock only constrains what
    /// comes next.
    pub fn set_policy(&mut self, policy: &SwitchPolicy) {
        self.policy = policy.clone();
    }

    /// Replace the over-current configuration.
    pub fn set_ocp(&mut self, ocp: &OcpConfig) {
        self.ocp_limit = ocp.limit_a;
        self.ocp.limit_a = ocp.limit_a;
    }

    /// The state machine state.
    pub fn state(&self) -> SwitchState {
        self.state
    }
    /// The relay state as decided.
    pub fn relays(&self) -> OutletMask {
        self.relays
    }
    /// The relay state the expander acknowledged last (`None` before the first write after boot).
    pub fn relays_written(&self) -> Option<OutletMask> {
        self.written[SLOT_RELAY].map(OutletMask)
    }
    /// Over-current protection status.
    pub fn ocp_status(&self) -> OcpStatus {
        self.ocp
    }
    /// The policy in force.
    pub fn policy(&self) -> &SwitchPolicy {
        &self.policy
    }
    /// Counters.
    pub fn stats(&self) -> SwitchStats {
        let mut s = self.stats;
        s.deferred = self.deferred.len() as u8;
        s
    }
    /// Everything worth publishing.
    pub fn snapshot(&self) -> SwitchSnapshot {
        SwitchSnapshot {
            state: self.state,
            relays: self.relays,
            ocp: self.ocp,
            fault_code: self.fault_code,
            fault_led: self.fault_led,
            selection: self.selection,
            io_errors: self.stats.io_errors,
        }
    }

    /// A request from any task. The answer comes out of [`poll_reply`](Self::poll_reply), now or
    /// (deferred, or waiting for the relay write) later.
    pub fn handle_request(&mut self, req: SwitchRequest, now: Instant) {
        trace!(
            "switch: request {} from {} tok {} tag {}",
            op_name(req.op),
            req.source.rank(),
            req.token,
            req.policy_tag
        );
        self.admit(req, now);
    }

    /// Evaluate a fresh request; true when it was deferred or acted on.
    fn admit(&mut self, req: SwitchRequest, now: Instant) -> bool {
        self.now = self.now.max(now);
        let deadline = now + Duration::from_millis(u64::from(req.timeout_ms));
        let ask = Ask { req, received: now };
        match self.evaluate(&ask, now) {
            Verdict::Reply(status, code) => {
                self.reply(&ask, status, code);
                false
            }
            Verdict::Parked => true,
            Verdict::Apply(target) => {
                self.apply(&ask, target, now);
                true
            }
            Verdict::Defer(ready_at, why) => self.defer(ask, deadline, ready_at, why, now),
        }
    }

    fn defer(
        &mut self,
        ask: Ask,
        deadline: Instant,
        ready_at: Instant,
        why: u16,
        now: Instant,
    ) -> bool {
        // Waiting for boot: look again at the deadline (or as soon as `boot` runs).
        let ready_at = if why == reason::NOT_READY {
            deadline
        } else {
            ready_at
        };
        let req = ask.req;
        if ready_at > deadline {
            self.reply(&ask, SwitchStatus::Timeout, why);
            return false;
        }
        let entry = Deferred {
            ask,
            deadline,
            ready_at,
        };
        if self.deferred.push(entry).is_err() {
            self.reply(&ask, SwitchStatus::Busy, reason::DEFER_FULL);
            return false;
        }
        if let Some(target) = self.target(&req) {
            let hold = ready_at.max(now) + CLAIM_HOLD;
            self.claim(req.source, target.0 ^ self.relays.0, hold);
        }
        debug!("switch: deferred tok {} reason {}", req.token, why);
        true
    }

    /// Re-check deferred requests that are due and time out the expired ones.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        let mut i = 0;
        // Each entry is looked at once per call, so a re-deferral cannot loop here.
        let mut budget = self.deferred.len();
        while i < self.deferred.len() && budget > 0 {
            budget -= 1;
            let d = self.deferred[i];
            if now < d.ready_at && now < d.deadline {
                i += 1;
                continue;
            }
            self.deferred.remove(i);
            match self.evaluate(&d.ask, now) {
                Verdict::Reply(status, code) => self.reply(&d.ask, status, code),
                Verdict::Parked => {}
                Verdict::Apply(target) => self.apply(&d.ask, target, now),
                Verdict::Defer(ready_at, why) => {
                    if now >= d.deadline || ready_at > d.deadline {
                        self.reply(&d.ask, SwitchStatus::Timeout, why);
                    } else {
                        // Put it back where it was, so order among deferred requests is kept.
                        let back = Deferred { ready_at, ..d };
                        let at = i.min(self.deferred.len());
                        if self.deferred.insert(at, back).is_err() {
                            self.reply(&d.ask, SwitchStatus::Busy, why);
                        } else {
                            i += 1;
                        }
                    }
                }
            }
        }
        self.expire_claims(now);
    }

    /// When [`handle_timeout`](Self::handle_timeout) has work next: a deferred request or a
    /// write retry. `None` when nothing is waiting.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let deferred = self
            .deferred
            .iter()
            .map(|d| d.ready_at.min(d.deadline))
            .min();
        let retry = self
            .in_flight
            .is_none()
            .then(|| {
                (0..SLOTS.len())
                    .filter(|&s| self.written[s] != Some(self.desired[s]))
                    .map(|s| self.retry_at[s])
                    .min()
            })
            .flatten();
        match (deferred, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Summed-current over-current protection. Call with MeterTask's latest per-channel currents
    /// (amps); non-finite or negative values count as 0.
    pub fn handle_currents(&mut self, currents: &[f32; CHANNELS], now: Instant) {
        self.now = self.now.max(now);
        let total: f32 = currents
            .iter()
            .map(|c| if c.is_finite() && *c > 0.0 { *c } else { 0.0 })
            .sum();
        let limit = self.ocp_limit;
        self.ocp.total_current_a = total;
        let trip_level = limit - 0.5;
        match self.ocp.state {
            OcpState::Lockout => {
                if total < limit - 1.5 {
                    info!("switch: over-current recovered");
                    self.set_ocp_state(OcpState::Normal, None);
                } else if total >= trip_level
                    && self
                        .last_trip_at
                        .is_none_or(|t| now.saturating_since(t) >= OCP_RETRIP)
                {
                    self.trip(now);
                }
            }
            state => {
                if total >= trip_level {
                    self.trip(now);
                } else {
                    let new = if total >= limit - 1.0 {
                        OcpState::Warning
                    } else {
                        OcpState::Normal
                    };
                    if new != state {
                        self.set_ocp_state(new, None);
                    }
                }
            }
        }
    }

    /// The supply voltage, for the brown-out guard.
    pub fn handle_supply_mv(&mut self, mv: u16) {
        self.supply_mv = Some(mv);
    }

    /// The front panel's selected outlet (from ButtonTask), mirrored on the selection LEDs.
    pub fn handle_selection(&mut self, selection: Option<Outlet>) {
        self.selection = selection;
        self.desired[SLOT_SELECT] = selection.map_or(0, |o| 1 << o.index());
    }

    /// The Ethernet link state, mirrored on the ETH LED.
    pub fn set_eth_link(&mut self, up: bool) {
        self.eth_link = up;
        self.refresh_leds();
    }

    /// The next latch write to perform, if any (relays first, then mux, then LEDs). `None` while a
    /// write is in flight or a retry is not due yet.
    #[must_use]
    pub fn poll_write(&mut self, now: Instant) -> Option<PortWrite> {
        if self.in_flight.is_some() {
            return None;
        }
        // A chip that failed waits out its back-off without holding up the others.
        let slot = (0..SLOTS.len())
            .find(|&s| self.written[s] != Some(self.desired[s]) && now >= self.retry_at[s])?;
        self.in_flight = Some(slot);
        let (expander, port) = SLOTS[slot];
        Some(PortWrite {
            expander,
            port,
            value: self.desired[slot],
        })
    }

    /// Report the outcome of the write [`poll_write`](Self::poll_write) handed out last.
    pub fn handle_io_result(&mut self, write: PortWrite, outcome: IoOutcome, now: Instant) {
        self.now = self.now.max(now);
        let Some(slot) = SLOTS
            .iter()
            .position(|s| *s == (write.expander, write.port))
        else {
            return;
        };
        if self.in_flight == Some(slot) {
            self.in_flight = None;
        }
        match outcome {
            IoOutcome::Done => {
                self.in_row[write.expander as usize] = 0;
                self.stats.io_errors_in_row = self.in_row.iter().copied().max().unwrap_or(0);
                let before = self.written[slot];
                self.written[slot] = Some(write.value);
                if slot == SLOT_RELAY {
                    let old = before.unwrap_or(!write.value);
                    for o in OutletMask(old ^ write.value).iter() {
                        self.last_change[o.index()] = Some(now);
                        if write.value & (1 << o.index()) != 0 {
                            self.last_on[o.index()] = Some(now);
                        }
                    }
                    self.refresh_leds();
                }
                if self.relay_settled() {
                    self.flush_parked(SwitchStatus::Ok, reason::NONE);
                }
            }
            IoOutcome::Failed(code) => self.io_failed(write.expander, slot, code, now),
        }
    }

    fn io_failed(&mut self, expander: Expander, slot: usize, code: u16, now: Instant) {
        self.stats.io_errors = self.stats.io_errors.wrapping_add(1);
        let in_row = &mut self.in_row[expander as usize];
        *in_row = in_row.saturating_add(1);
        let in_row = *in_row;
        self.stats.io_errors_in_row = self.in_row.iter().copied().max().unwrap_or(0);
        let wait = if self.state == SwitchState::FaultSafe {
            IO_RETRY_FAULT
        } else {
            IO_RETRY
        };
        self.retry_at[slot] = now + wait;
        warn!(
            "switch: write to 0x{:x} failed (code {}), {} in a row",
            expander.address(),
            code,
            in_row
        );
        self.event(SwitchEvent::IoError { expander, in_row });
        if slot == SLOT_RELAY || slot == SLOT_MUX {
            self.flush_parked(SwitchStatus::IoError, reason::I2C_ERROR);
        }
        let threshold = self.policy.i2c_fault_threshold.max(1);
        if in_row >= threshold && self.state != SwitchState::FaultSafe {
            self.enter_fault_safe(reason::I2C_FAULT_THRESHOLD, now);
        }
    }

    /// The expanders' initialisation outcome (the runner's `Mcp23017::init`). A failure counts
    /// as an I2C error and makes the core rewrite that chip's latches.
    pub fn handle_init_result(&mut self, expander: Expander, outcome: IoOutcome, now: Instant) {
        let mut first = None;
        for (slot, s) in SLOTS.iter().enumerate() {
            if s.0 == expander {
                self.written[slot] = None;
                first = first.or(Some(slot));
            }
        }
        if let (IoOutcome::Failed(code), Some(slot)) = (outcome, first) {
            self.io_failed(expander, slot, code, now);
        }
    }

    /// The next reply, with the source it is for.
    #[must_use]
    pub fn poll_reply(&mut self) -> Option<(Source, SwitchReply)> {
        self.poll_answer().map(|a| (a.source, a.reply))
    }

    /// The next reply with what it answered and how long that took (for the log). Same queue
    /// as [`poll_reply`](Self::poll_reply): use one or the other.
    #[must_use]
    pub fn poll_answer(&mut self) -> Option<SwitchAnswer> {
        self.replies.pop_front()
    }

    /// The next event to announce.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<SwitchEvent> {
        self.events.pop_front()
    }

    // ----- decisions -----------------------------------------------------------------------

    fn rank(&self, source: Source) -> u8 {
        self.policy
            .priority_override
            .get(usize::from(source.rank()))
            .copied()
            .unwrap_or(source.rank())
    }

    fn target(&self, req: &SwitchRequest) -> Option<OutletMask> {
        let r = self.relays;
        Some(match req.op {
            SwitchOp::Set => r.with(req.channel?, req.value),
            SwitchOp::Toggle => {
                let ch = req.channel?;
                r.with(ch, !r.contains(ch))
            }
            SwitchOp::SetMask if req.value => OutletMask(r.0 | req.mask.0),
            SwitchOp::SetMask => OutletMask(r.0 & !req.mask.0),
            SwitchOp::AllOff => OutletMask::NONE,
            SwitchOp::AllOn => OutletMask::ALL,
            _ => return None,
        })
    }

    fn evaluate(&mut self, ask: &Ask, now: Instant) -> Verdict {
        use SwitchStatus as S;
        let req = &ask.req;
        if self.state == SwitchState::Init && req.op != SwitchOp::Query {
            return Verdict::Defer(Instant::MAX, reason::NOT_READY);
        }
        match req.op {
            SwitchOp::Query => return Verdict::Reply(S::Ok, self.fault_code),
            SwitchOp::MeterMux => {
                // Channel n selects HLW8032 n (A/B/C = index, EN low); no channel disables the mux.
                self.desired[SLOT_MUX] = req.channel.map_or(MUX_EN_N, |ch| ch.index() as u8);
                if !self.relay_settled() {
                    self.park(*ask);
                    return Verdict::Parked;
                }
                // Back to what the latch holds: earlier requests waiting for a write are done too.
                self.flush_parked(S::Ok, reason::NONE);
                return Verdict::Reply(S::Ok, reason::NONE);
            }
            SwitchOp::ResetOverCurrent => {
                if self.ocp.state == OcpState::Lockout {
                    info!("switch: over-current lockout reset");
                    self.set_ocp_state(OcpState::Normal, None);
                }
                return Verdict::Reply(S::Ok, reason::NONE);
            }
            SwitchOp::ClearFault => {
                self.fault_led = false;
                if self.state == SwitchState::FaultSafe {
                    self.in_row = [0; 3];
                    self.stats.io_errors_in_row = 0;
                    self.fault_code = reason::NONE;
                    self.set_state(SwitchState::Ready, reason::NONE);
                }
                self.refresh_leds();
                return Verdict::Reply(S::Ok, reason::NONE);
            }
            SwitchOp::SafeState => {
                let code = reason::SAFE_STATE_REQUESTED + u16::from(req.source.rank());
                self.enter_fault_safe(code, now);
                return Verdict::Reply(S::Ok, code);
            }
            _ => {}
        }
        let Some(target) = self.target(req) else {
            return Verdict::Reply(S::Invalid, reason::INVALID);
        };
        if self.state == SwitchState::FaultSafe {
            return Verdict::Reply(S::FaultSafe, reason::FAULT_SAFE);
        }
        let changed = OutletMask(target.0 ^ self.relays.0);
        if changed == OutletMask::NONE {
            return Verdict::Reply(S::Ok, reason::NONE);
        }
        let rank = self.rank(req.source);
        let claimed = changed
            .iter()
            .any(|o| self.claims[o.index()].is_some_and(|c| c.until > now && c.rank < rank));
        if claimed {
            return Verdict::Reply(S::Preempted, reason::CLAIMED_BY_HIGHER);
        }
        let deny = self
            .policy
            .deny
            .get(usize::from(req.source.rank()))
            .copied()
            .unwrap_or_default();
        if deny.0 & changed.0 != 0 {
            return Verdict::Reply(S::Denied, reason::DENY_LIST);
        }
        let on = OutletMask(target.0 & !self.relays.0);
        if on != OutletMask::NONE {
            if !self.groups_ok(target) {
                return Verdict::Reply(S::Interlocked, reason::INTERLOCK_GROUP);
            }
            if self.ocp.state == OcpState::Lockout {
                return Verdict::Reply(S::OverCurrentLockout, reason::OCP_LOCKOUT);
            }
            let brownout = self.policy.brownout_mv;
            if brownout > 0 && self.supply_mv.is_some_and(|mv| mv < brownout) {
                return Verdict::Reply(S::BrownOut, reason::BROWN_OUT);
            }
            if self.exceeds_max(on.count()) {
                return Verdict::Reply(S::TooManyToggles, reason::SIMULTANEOUS_LIMIT);
            }
        }
        if !self.relay_settled() {
            let retry = self.retry_at[SLOT_RELAY].max(self.retry_at[SLOT_MUX]);
            return Verdict::Defer(retry.max(now), reason::IO_PENDING);
        }
        let min = Duration::from_millis(u64::from(self.policy.min_toggle_ms));
        let toggle_ready = changed
            .iter()
            .filter_map(|o| self.last_change[o.index()])
            .map(|t| t + min)
            .max()
            .unwrap_or(Instant::ZERO);
        if toggle_ready > now {
            return Verdict::Defer(toggle_ready, reason::MIN_TOGGLE_INTERVAL);
        }
        if let Some(ready) = self.window_ready(on.count(), now) {
            return Verdict::Defer(ready, reason::SIMULTANEOUS_LIMIT);
        }
        Verdict::Apply(target)
    }

    /// When `wanted` more outlets may switch on, if not now (inrush window = `min_toggle_ms`).
    fn window_ready(&self, wanted: u32, now: Instant) -> Option<Instant> {
        let max = u32::from(self.policy.max_simultaneous);
        if max == 0 || wanted == 0 {
            return None;
        }
        let window = self.window();
        let mut recent: Vec<Instant, CHANNELS> = self
            .last_on
            .iter()
            .flatten()
            .filter(|t| **t + window > now)
            .copied()
            .collect();
        let in_window = recent.len() as u32;
        let excess = (in_window + wanted).checked_sub(max).filter(|e| *e > 0)?;
        recent.sort_unstable();
        // The `excess` oldest ones must leave the window first.
        let idx = usize::try_from(excess - 1).ok()?;
        recent.get(idx).map(|t| *t + window)
    }

    fn window(&self) -> Duration {
        Duration::from_millis(u64::from(self.policy.min_toggle_ms)).max(Duration::from_micros(1))
    }

    fn exceeds_max(&self, on: u32) -> bool {
        let max = u32::from(self.policy.max_simultaneous);
        max != 0 && on > max
    }

    fn groups_ok(&self, mask: OutletMask) -> bool {
        self.policy
            .interlock_groups
            .iter()
            .all(|g| (g.0 & mask.0).count_ones() <= 1)
    }

    fn apply(&mut self, ask: &Ask, target: OutletMask, now: Instant) {
        let req = &ask.req;
        let changed = OutletMask(target.0 ^ self.relays.0);
        for o in changed.iter() {
            self.last_change[o.index()] = Some(now);
            if target.contains(o) {
                self.mark_on(o, now);
            }
        }
        self.claim(req.source, changed.0, now + CLAIM_HOLD);
        debug!(
            "switch: {} by {}: {} -> {}",
            op_name(req.op),
            req.source.rank(),
            self.relays.0,
            target.0
        );
        self.relays = target;
        self.desired[SLOT_RELAY] = target.0;
        if self.relay_settled() {
            self.flush_parked(SwitchStatus::Ok, reason::NONE);
            self.reply(ask, SwitchStatus::Ok, reason::NONE);
        } else {
            self.park(*ask);
        }
    }

    fn mark_on(&mut self, o: Outlet, now: Instant) {
        self.seq = self.seq.wrapping_add(1);
        self.on_seq[o.index()] = self.seq;
        self.last_on[o.index()] = Some(now);
        self.last_change[o.index()] = Some(now);
    }

    fn claim(&mut self, source: Source, outlets: u8, until: Instant) {
        let rank = self.rank(source);
        for o in OutletMask(outlets).iter() {
            let slot = &mut self.claims[o.index()];
            let keep = slot.is_some_and(|c| c.rank < rank && c.until > until);
            if !keep {
                *slot = Some(Claim { rank, until });
            }
        }
    }

    fn expire_claims(&mut self, now: Instant) {
        for c in self.claims.iter_mut() {
            if c.is_some_and(|c| c.until <= now) {
                *c = None;
            }
        }
    }

    // ----- safety ----------------------------------------------------------------------------

    fn trip(&mut self, now: Instant) {
        // Pending switch-ons are cancelled: only what the relays really hold can stay on.
        let held = self.written[SLOT_RELAY].unwrap_or(self.relays.0);
        let mut relays = OutletMask(self.relays.0 & held);
        let victim = relays.iter().max_by_key(|o| self.on_seq[o.index()]);
        if let Some(v) = victim {
            relays = relays.with(v, false);
        }
        self.set_relays_safety(relays);
        self.flush_parked(SwitchStatus::OverCurrentLockout, reason::OCP_LOCKOUT);
        self.last_trip_at = Some(now);
        self.ocp.trip_count = self.ocp.trip_count.wrapping_add(1);
        self.ocp.last_trip_ms = now.as_millis();
        self.ocp.last_tripped_channel = victim.map_or(0, Outlet::number);
        self.fault_led = true;
        self.refresh_leds();
        warn!(
            "switch: over-current trip, outlet {} off",
            self.ocp.last_tripped_channel
        );
        self.set_ocp_state(OcpState::Lockout, victim);
    }

    fn enter_fault_safe(&mut self, code: u16, _now: Instant) {
        let held = self.written[SLOT_RELAY].unwrap_or(self.relays.0);
        let relays = OutletMask(self.relays.0 & held & self.policy.safe_mask.0);
        self.set_relays_safety(relays);
        self.flush_parked(SwitchStatus::FaultSafe, reason::FAULT_SAFE);
        // Oldest first, so replies come out in arrival order.
        let cancelled = core::mem::take(&mut self.deferred);
        for d in cancelled {
            self.reply(&d.ask, SwitchStatus::FaultSafe, reason::FAULT_SAFE);
        }
        self.fault_code = code;
        self.fault_led = true;
        self.refresh_leds();
        error!("switch: FAULT_SAFE (code 0x{:x})", code);
        self.set_state(SwitchState::FaultSafe, code);
    }

    /// Safety actions switch off only; they do not touch claims or timing checks, but the relay
    /// write that follows is timed like any other.
    fn set_relays_safety(&mut self, relays: OutletMask) {
        self.relays = relays;
        self.desired[SLOT_RELAY] = relays.0;
    }

    // ----- outputs ---------------------------------------------------------------------------

    fn relay_settled(&self) -> bool {
        self.written[SLOT_RELAY] == Some(self.desired[SLOT_RELAY])
            && self.written[SLOT_MUX] == Some(self.desired[SLOT_MUX])
    }

    fn refresh_leds(&mut self) {
        self.desired[SLOT_LEDS] = self.written[SLOT_RELAY].unwrap_or(0);
        let mut status = 0;
        if self.fault_led || self.state == SwitchState::FaultSafe {
            status |= LED_FAULT;
        }
        if self.eth_link {
            status |= LED_ETH;
        }
        if self.state != SwitchState::Init {
            status |= LED_PWR;
        }
        self.desired[SLOT_STATUS] = status;
    }

    fn set_state(&mut self, state: SwitchState, fault_code: u16) {
        if self.state != state {
            self.state = state;
            self.refresh_leds();
            self.event(SwitchEvent::StateChanged { state, fault_code });
        }
    }

    fn set_ocp_state(&mut self, state: OcpState, tripped: Option<Outlet>) {
        self.ocp.state = state;
        self.event(SwitchEvent::OverCurrent {
            state,
            total_a: self.ocp.total_current_a,
            tripped,
        });
    }

    fn park(&mut self, ask: Ask) {
        if let Err(ask) = self.parked.push(ask) {
            // Cannot happen with the runner (it drains writes between requests); answer now.
            self.reply(&ask, SwitchStatus::Ok, reason::NONE);
        }
    }

    fn flush_parked(&mut self, status: SwitchStatus, code: u16) {
        let parked = core::mem::take(&mut self.parked);
        for ask in parked {
            self.reply(&ask, status, code);
        }
    }

    fn reply(&mut self, ask: &Ask, status: SwitchStatus, code: u16) {
        let reply = SwitchReply {
            status,
            state_bitmap: self.relays,
            fault_code: code,
            token: ask.req.token,
        };
        if self.replies.is_full() {
            self.replies.pop_front();
            self.stats.replies_dropped = self.stats.replies_dropped.wrapping_add(1);
        }
        let _ = self.replies.push_back(SwitchAnswer {
            source: ask.req.source,
            op: ask.req.op,
            channel: ask.req.channel,
            waited: self.now.saturating_since(ask.received),
            reply,
        });
    }

    fn event(&mut self, e: SwitchEvent) {
        if self.events.is_full() {
            self.events.pop_front();
            self.stats.events_dropped = self.stats.events_dropped.wrapping_add(1);
        }
        let _ = self.events.push_back(e);
    }
}
