//! Device B: the ENERGIS power-distribution unit (RP2040).
//!
//! One owner task per peripheral; tasks talk only through [`crate::queue`] queues. This module
//! holds the vocabulary every PDU task shares: outlets, request sources and their priority, the
//! switch request/reply pair, and per-channel telemetry. Each task lives in its own submodule.

pub mod buttons;
pub mod config;
pub mod console;
pub mod eeprom;
pub mod frontend;
pub mod health;
pub mod hlw8032;
pub mod http;
pub mod logger;
pub mod mcp23017;
pub mod meter;
pub mod snmp;
pub mod storage;
pub mod switch;

use core::fmt;

/// Number of switched outlets (relays) on the PDU.
pub const CHANNELS: usize = 8;

/// An outlet number, 1-based as printed on the front panel and used by SNMP, HTTP and the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Outlet(u8);

impl Outlet {
    /// Outlet `n` (1..=8), or `None` when out of range.
    pub const fn new(n: u8) -> Option<Outlet> {
        if n >= 1 && n as usize <= CHANNELS {
            Some(Outlet(n))
        } else {
            None
        }
    }
    /// From a 0-based index (0..8), or `None` when out of range.
    pub const fn from_index(i: usize) -> Option<Outlet> {
        if i < CHANNELS {
            Some(Outlet(i as u8 + 1))
        } else {
            None
        }
    }
    /// The 1-based number.
    pub const fn number(self) -> u8 {
        self.0
    }
    /// The 0-based index (bit position in an [`OutletMask`]).
    pub const fn index(self) -> usize {
        self.0 as usize - 1
    }
    /// Every outlet, in order.
    pub fn all() -> impl Iterator<Item = Outlet> {
        (1..=CHANNELS as u8).map(Outlet)
    }
}

impl fmt::Display for Outlet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CH{}", self.0)
    }
}

/// A set of outlets, bit `i` = outlet `i + 1` (the relay expander's port A layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(serde::Serialize, serde::Deserialize)]
pub struct OutletMask(pub u8);

impl OutletMask {
    /// No outlet.
    pub const NONE: OutletMask = OutletMask(0);
    /// All eight outlets.
    pub const ALL: OutletMask = OutletMask(0xFF);

    /// Whether `outlet` is in the set.
    pub const fn contains(self, outlet: Outlet) -> bool {
        self.0 & (1 << outlet.index()) != 0
    }
    /// The set with `outlet` added or removed.
    pub const fn with(self, outlet: Outlet, on: bool) -> OutletMask {
        let bit = 1 << outlet.index();
        OutletMask(if on { self.0 | bit } else { self.0 & !bit })
    }
    /// Number of outlets in the set.
    pub const fn count(self) -> u32 {
        self.0.count_ones()
    }
    /// The outlets in the set, in order.
    pub fn iter(self) -> impl Iterator<Item = Outlet> {
        Outlet::all().filter(move |o| self.contains(*o))
    }
}

/// Who asked for a switch operation. The order of the variants is the arbitration priority:
/// `Health` wins over everything, `Schedule` yields to everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Source {
    /// HealthTask (fault policy, safe state).
    Health,
    /// The UART console.
    Console,
    /// SNMP or HTTP.
    Net,
    /// Front-panel buttons.
    Button,
    /// Timed actions (boot restore, schedules).
    Schedule,
}

impl Source {
    /// Priority rank: 0 is the highest.
    pub const fn rank(self) -> u8 {
        self as u8
    }
    /// Whether `self` outranks `other`.
    pub fn outranks(self, other: Source) -> bool {
        self.rank() < other.rank()
    }
}

/// What a switch request asks SwitchTask to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SwitchOp {
    /// Set `channel` to `value`.
    Set,
    /// Invert `channel`.
    Toggle,
    /// Set the outlets in `mask` to `value`, leave the others.
    SetMask,
    /// Switch every outlet off.
    AllOff,
    /// Switch every outlet on (subject to interlocks).
    AllOn,
    /// Apply the configured safe state (`SAFE_MASK` or all off) and hold it.
    SafeState,
    /// Read the state only.
    Query,
    /// Clear an over-current lockout (console `OC_RESET`, SNMP `ocpReset`).
    ResetOverCurrent,
    /// Leave `FAULT_SAFE` once the fault is cleared (console `CLR_ERR`).
    ClearFault,
    /// Select the HLW8032 of `channel` on the 74HC4051 meter mux (relay expander port B bits
    /// 0-3: A, B, C, active-low EN). MeterTask's way to reach the mux, which SwitchTask owns;
    /// never touches a relay, so priorities and interlocks do not apply.
    MeterMux,
}

/// A request to SwitchTask. `token` is echoed in the reply so a caller can match them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SwitchRequest {
    /// Who asks; decides priority.
    pub source: Source,
    /// What to do.
    pub op: SwitchOp,
    /// The outlet for `Set` / `Toggle`.
    pub channel: Option<Outlet>,
    /// On or off for `Set` / `SetMask`.
    pub value: bool,
    /// Outlets for `SetMask`.
    pub mask: OutletMask,
    /// Caller's correlation token.
    pub token: u32,
    /// How long the request may wait (deferred by an interlock) before it is answered `Timeout`.
    pub timeout_ms: u32,
    /// Free tag for policy extensions (logged, echoed nowhere else).
    pub policy_tag: u8,
}

impl SwitchRequest {
    /// A request with no channel, no mask, value off, token 0 and a 1 s timeout.
    pub const fn new(source: Source, op: SwitchOp) -> Self {
        SwitchRequest {
            source,
            op,
            channel: None,
            value: false,
            mask: OutletMask::NONE,
            token: 0,
            timeout_ms: 1_000,
            policy_tag: 0,
        }
    }
    /// `Set` of one outlet.
    pub const fn set(source: Source, channel: Outlet, on: bool) -> Self {
        let mut r = Self::new(source, SwitchOp::Set);
        r.channel = Some(channel);
        r.value = on;
        r
    }
}

/// How SwitchTask answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SwitchStatus {
    /// Done; `state_bitmap` is the new relay state.
    Ok,
    /// The request queue was full; nothing was done.
    Busy,
    /// A higher-priority request on the same outlet is pending or just acted.
    Preempted,
    /// The outlet is on a deny list for this source.
    Denied,
    /// Another outlet of the same mutual-exclusion group is on.
    Interlocked,
    /// Too soon after the outlet's last toggle; deferred until the timeout ran out.
    Timeout,
    /// More simultaneous toggles than allowed.
    TooManyToggles,
    /// Switching on is locked out by over-current protection.
    OverCurrentLockout,
    /// Supply too low to switch relays (brown-out guard).
    BrownOut,
    /// SwitchTask is in `FAULT_SAFE`; only `Health` safe-state and `ClearFault` act.
    FaultSafe,
    /// The request was malformed (e.g. `Set` without a channel).
    Invalid,
    /// The expander did not answer; `fault_code` says more.
    IoError,
}

/// SwitchTask's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SwitchReply {
    /// The outcome.
    pub status: SwitchStatus,
    /// Relay state after the request.
    pub state_bitmap: OutletMask,
    /// 0 or a fault/reason code (documented in the switch module).
    pub fault_code: u16,
    /// The request's token.
    pub token: u32,
}

/// Latest measurements of one outlet, published by MeterTask.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ChannelTelemetry {
    /// RMS voltage, volts (1 s rolling average).
    pub voltage_v: f32,
    /// RMS current, amps (1 s rolling average).
    pub current_a: f32,
    /// Active power, watts (1 s rolling average).
    pub power_w: f32,
    /// Power factor 0..=1.
    pub power_factor: f32,
    /// Energy since boot, watt-hours.
    pub energy_wh: f32,
    /// Seconds this outlet has been on since it was last switched on.
    pub uptime_s: u32,
    /// No valid frame arrived in time: values are stale.
    pub degraded: bool,
}
