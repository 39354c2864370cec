//! [`SwitchTask`]: the async shell around [`SwitchCore`], plus the helpers callers use to reach it.
use embassy_futures::select::{Either4, select4};
use embassy_sync::blocking_mutex::raw::RawMutex;
use embassy_sync::signal::Signal;
use embassy_sync::watch::Watch;
use embedded_hal_async::i2c::I2c;

use super::{Expander, IoOutcome, PortWrite, SwitchCore, SwitchEvent, SwitchSnapshot, reason};
use crate::pdu::config::SOURCES;
use crate::pdu::health::{Heartbeats, TaskId};
use crate::pdu::logger::{LogEvent, LogPort};
use crate::pdu::mcp23017::{Mcp23017, McpStats};
use crate::pdu::{
    CHANNELS, Outlet, OutletMask, SwitchOp, SwitchReply, SwitchRequest, SwitchStatus,
};
use crate::ports::Clock;
use crate::queue::{Offer, Queue};
use crate::time::Duration;

/// Side inputs of SwitchTask that are not switch requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SwitchAux {
    /// The front panel's selected outlet (ButtonTask), shown on the selection LEDs.
    Selection(Option<Outlet>),
    /// Supply voltage for the brown-out guard, millivolts (platform ADC).
    SupplyMv(u16),
    /// Ethernet link up/down (NetTask), shown on the ETH LED.
    EthLink(bool),
}

/// Everything SwitchTask talks to besides its expanders.
///
/// * `requests`: [`Queue`] with [`FullPolicy::RejectNew`](crate::queue::FullPolicy::RejectNew);
///   callers use [`offer_request`] so a full queue becomes a `Busy` reply and never a wait.
/// * `replies`: one queue per [`Source`](crate::pdu::Source), indexed by `Source::rank()`
///   (`None`: that source's replies are discarded). `DropOldest` is the sensible policy: a caller
///   that does not read its replies loses the stale ones, counted in the queue stats.
/// * `currents`: MeterTask's latest per-channel currents (amps), for over-current protection.
/// * `aux`: [`SwitchAux`] inputs (selection, supply, Ethernet link); `DropOldest`.
/// * `published`: the latest [`SwitchSnapshot`] for anyone (Net, Console, Health, the simulator).
/// * `events`: optional announcements ([`SwitchEvent`]: state changes, trips, I2C errors), e.g.
///   a `Queue<M, SwitchEvent, N>` (`DropOldest`) that Net/Console drain.
/// * `heartbeat`: optional HealthTask heartbeat slot.
/// * `log`: optional log port (LoggerTask's queue); every answered request is logged with the
///   time it took.
pub struct SwitchLinks<
    'a,
    M: RawMutex,
    const Q: usize,
    const R: usize,
    const A: usize,
    const W: usize,
> {
    /// Incoming requests.
    pub requests: &'a Queue<M, SwitchRequest, Q>,
    /// Reply queue per source rank.
    pub replies: [Option<&'a Queue<M, SwitchReply, R>>; SOURCES],
    /// Latest channel currents.
    pub currents: &'a Signal<M, [f32; CHANNELS]>,
    /// Side inputs.
    pub aux: &'a Queue<M, SwitchAux, A>,
    /// Published state.
    pub published: &'a Watch<M, SwitchSnapshot, W>,
    /// Announcements.
    pub events: Option<&'a dyn EventPort>,
    /// Heartbeat board and this task's slot.
    pub heartbeat: Option<(&'a Heartbeats<M>, TaskId)>,
    /// Operational log.
    pub log: Option<&'a dyn LogPort>,
}

/// The SwitchTask runner: owns the relay expander (0x20 on `I2C1`) and the two display expanders
/// (0x21 and 0x23 on `I2C0`; pass two handles to the shared bus, e.g. embassy-embedded-hal's
/// `I2cDevice`).
///
/// The core should be booted before the runner starts (`SwitchCore::boot`, then
/// `SwitchCore::restore` if wanted); [`run`](Self::run) initialises the expanders and then writes
/// whatever the core wants.
pub struct SwitchTask<
    'a,
    I2C0,
    I2C1,
    C,
    M: RawMutex,
    const Q: usize,
    const R: usize,
    const A: usize,
    const W: usize,
> {
    core: SwitchCore,
    pub(super) relay: Mcp23017<I2C1>,
    pub(super) display: Mcp23017<I2C0>,
    pub(super) selection: Mcp23017<I2C0>,
    links: SwitchLinks<'a, M, Q, R, A, W>,
    clock: C,
    published: Option<SwitchSnapshot>,
    beat_every: Duration,
}

impl<'a, I2C0, I2C1, C, M, const Q: usize, const R: usize, const A: usize, const W: usize>
    SwitchTask<'a, I2C0, I2C1, C, M, Q, R, A, W>
where
    I2C0: I2c,
    I2C1: I2c,
    C: Clock,
    M: RawMutex,
{
    /// Assemble the task. `display_bus` and `selection_bus` are two handles to I2C0.
    pub fn new(
        core: SwitchCore,
        relay_bus: I2C1,
        display_bus: I2C0,
        selection_bus: I2C0,
        links: SwitchLinks<'a, M, Q, R, A, W>,
        clock: C,
    ) -> Self {
        SwitchTask {
            core,
            relay: Mcp23017::new(relay_bus, Expander::Relay.address()),
            display: Mcp23017::new(display_bus, Expander::Display.address()),
            selection: Mcp23017::new(selection_bus, Expander::Selection.address()),
            links,
            clock,
            published: None,
            beat_every: Duration::from_millis(500),
        }
    }

    /// The core (state, stats).
    pub fn core(&self) -> &SwitchCore {
        &self.core
    }

    /// The expanders' counters: relay (0x20), display (0x21), selection (0x23).
    pub fn expander_stats(&self) -> [McpStats; 3] {
        [
            self.relay.stats(),
            self.display.stats(),
            self.selection.stats(),
        ]
    }

    /// The core, for boot-time calls.
    pub fn core_mut(&mut self) -> &mut SwitchCore {
        &mut self.core
    }

    /// How often to send a heartbeat when nothing else happens (default 500 ms).
    pub fn set_heartbeat_interval(&mut self, every: Duration) {
        self.beat_every = every;
    }

    /// Initialise the three expanders (ENERGIS sequence) and write the core's state.
    pub async fn init(&mut self) {
        let chips = [Expander::Relay, Expander::Display, Expander::Selection];
        for chip in chips {
            let result = match chip {
                Expander::Relay => self.relay.init().await,
                Expander::Display => self.display.init().await,
                Expander::Selection => self.selection.init().await,
            };
            let outcome = match result {
                Ok(()) => IoOutcome::Done,
                Err(e) => IoOutcome::Failed(e.code()),
            };
            self.core
                .handle_init_result(chip, outcome, self.clock.now());
        }
        self.flush().await;
    }

    /// Wait for one input (request, currents, side input, or the next deadline), handle it and
    /// perform the resulting writes, replies and publication.
    pub async fn step(&mut self) {
        let now = self.clock.now();
        let wake = self
            .core
            .poll_timeout()
            .map_or(now + self.beat_every, |t| t.min(now + self.beat_every));
        let links = &self.links;
        let input = select4(
            links.requests.receive(),
            links.currents.wait(),
            links.aux.receive(),
            self.clock.sleep_until(wake),
        )
        .await;
        let now = self.clock.now();
        match input {
            Either4::First(req) => self.core.handle_request(req, now),
            Either4::Second(currents) => self.core.handle_currents(&currents, now),
            Either4::Third(aux) => match aux {
                SwitchAux::Selection(s) => self.core.handle_selection(s),
                SwitchAux::SupplyMv(mv) => self.core.handle_supply_mv(mv),
                SwitchAux::EthLink(up) => self.core.set_eth_link(up),
            },
            Either4::Fourth(()) => {}
        }
        self.flush().await;
    }

    /// Initialise, then serve forever.
    pub async fn run(&mut self) -> ! {
        self.init().await;
        loop {
            self.step().await;
        }
    }

    /// Deadlines, writes, replies, events, publication, heartbeat.
    async fn flush(&mut self) {
        loop {
            self.core.handle_timeout(self.clock.now());
            let Some(write) = self.core.poll_write(self.clock.now()) else {
                break;
            };
            let outcome = self.apply(write).await;
            self.core.handle_io_result(write, outcome, self.clock.now());
        }
        while let Some(answer) = self.core.poll_answer() {
            let slot = self
                .links
                .replies
                .get(usize::from(answer.source.rank()))
                .copied();
            if let Some(Some(q)) = slot {
                // Full reply queues drop per their policy; the queue's stats count it.
                let _ = q.offer(answer.reply);
            }
            if let Some(log) = self.links.log {
                log.log(LogEvent::switch(&answer, self.clock.now()));
            }
        }
        while let Some(event) = self.core.poll_event() {
            if let Some(port) = self.links.events {
                port.announce(event);
            }
        }
        let snap = self.core.snapshot();
        if self.published != Some(snap) {
            self.links.published.sender().send(snap);
            self.published = Some(snap);
        }
        if let Some((board, id)) = self.links.heartbeat {
            board.beat(id, self.clock.now());
        }
    }

    async fn apply(&mut self, w: PortWrite) -> IoOutcome {
        let result = match w.expander {
            Expander::Relay => self.relay.write_port(w.port, w.value).await,
            Expander::Display => self.display.write_port(w.port, w.value).await,
            Expander::Selection => self.selection.write_port(w.port, w.value).await,
        };
        match result {
            Ok(()) => IoOutcome::Done,
            Err(e) => IoOutcome::Failed(e.code()),
        }
    }
}

/// Where SwitchTask announces [`SwitchEvent`]s; implemented by `Queue<M, SwitchEvent, N>` (a
/// full queue applies its policy and counts the loss).
pub trait EventPort {
    /// Announce `event` without waiting.
    fn announce(&self, event: SwitchEvent);
}

impl<M: RawMutex, const N: usize> EventPort for Queue<M, SwitchEvent, N> {
    fn announce(&self, event: SwitchEvent) {
        let _ = self.offer(event);
    }
}

/// The `Busy` reply a caller gets when SwitchTask's request queue is full.
pub fn reply_busy(req: &SwitchRequest) -> SwitchReply {
    SwitchReply {
        status: SwitchStatus::Busy,
        state_bitmap: OutletMask::NONE,
        fault_code: reason::QUEUE_FULL,
        token: req.token,
    }
}

/// Offer `req` to SwitchTask without waiting. `Err` carries the `Busy` reply to hand to the
/// caller's client when the queue is full (the queue counts the refusal).
pub fn offer_request<M: RawMutex, const N: usize>(
    queue: &Queue<M, SwitchRequest, N>,
    req: SwitchRequest,
) -> Result<(), SwitchReply> {
    match queue.offer(req) {
        Offer::Queued | Offer::Displaced(_) => Ok(()),
        Offer::Rejected(req) => Err(reply_busy(&req)),
    }
}

/// Upper-case name of an op, for logs and the console.
pub const fn op_name(op: SwitchOp) -> &'static str {
    match op {
        SwitchOp::Set => "SET",
        SwitchOp::Toggle => "TOGGLE",
        SwitchOp::SetMask => "SET_MASK",
        SwitchOp::AllOff => "ALL_OFF",
        SwitchOp::AllOn => "ALL_ON",
        SwitchOp::SafeState => "SAFE_STATE",
        SwitchOp::Query => "QUERY",
        SwitchOp::ResetOverCurrent => "OC_RESET",
        SwitchOp::ClearFault => "CLEAR_FAULT",
        SwitchOp::MeterMux => "METER_MUX",
    }
}

/// Upper-case name of a status, for logs and the console.
pub const fn status_name(status: SwitchStatus) -> &'static str {
    match status {
        SwitchStatus::Ok => "OK",
        SwitchStatus::Busy => "BUSY",
        SwitchStatus::Preempted => "PREEMPTED",
        SwitchStatus::Denied => "DENIED",
        SwitchStatus::Interlocked => "INTERLOCKED",
        SwitchStatus::Timeout => "TIMEOUT",
        SwitchStatus::TooManyToggles => "TOO_MANY_TOGGLES",
        SwitchStatus::OverCurrentLockout => "OC_LOCKOUT",
        SwitchStatus::BrownOut => "BROWN_OUT",
        SwitchStatus::FaultSafe => "FAULT_SAFE",
        SwitchStatus::Invalid => "INVALID",
        SwitchStatus::IoError => "IO_ERROR",
    }
}
