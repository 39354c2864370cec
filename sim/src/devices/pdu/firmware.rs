//! The ENERGIS firmware assembled on the kernel: the board's statics, boot, and one kernel task
//! per firmware task on the RP2040's single simulated core.
//!
//! # Statics
//! On the board, queues, watches and the heartbeat board are `static`s the tasks borrow for
//! `'static`. Here each power-on makes a fresh [`Board`] and `Box::leak`s it (a few KiB per
//! boot), so the firmware runners borrow it exactly as they borrow the board's statics.
//!
//! # Power and boot
//! Every firmware task is a kernel task that lives as long as the device: it waits for power
//! and for boot, builds its runner from the booted [`Board`], and runs it until the power goes
//! (the runner's future is dropped, as a reset stops a task mid-instruction). The boot task
//! does what the ENERGIS `main` does: make the statics, load the configuration (factory
//! defaults with the logged reason when no slot is valid), boot SwitchCore with `SAFE_MASK`
//! applied, restore the saved outputs if `restore_on_boot`, then release the other tasks.
//!
//! # Priorities (higher runs first; one core, preemptive)
//! | task | priority | why |
//! | --- | --- | --- |
//! | boot | 8 | runs once before anything else |
//! | health | 7 | fault policy must act even when everything else is busy |
//! | switch | 6 | owns the relays; every front-end waits on it |
//! | console | 5 | the operator's local channel outranks the network |
//! | net | 4 | SNMP/HTTP; paced to one item per `net_poll` so a flood cannot starve what is below |
//! | button | 3 | 10 ms scan |
//! | meter | 2 | 25 Hz, never blocks switching |
//! | storage, logger | 1 | slow, deferrable work |
use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};

use embassy_futures::select::{Either3, select, select3};
use embassy_sync::blocking_mutex::raw::NoopRawMutex;
use embassy_sync::signal::Signal;
use embassy_sync::watch::Watch;
use firmware_core::pdu::buttons::{ButtonCore, ButtonTask};
use firmware_core::pdu::config::PduConfig;
use firmware_core::pdu::eeprom::{Cat24c256, DEFAULT_ADDRESS};
use firmware_core::pdu::frontend::{Snapshot, SwitchState};
use firmware_core::pdu::health::{
    HealthCore, HealthEvent, HealthPlatform, HealthStatus, HealthTask, Heartbeats, TaskId,
};
use firmware_core::pdu::logger::{LogEvent, LogPort, LoggerCore, LoggerTask};
use firmware_core::pdu::meter::{
    MeterCore, MeterLinks, MeterSettings, MeterTask, SwitchQueueMux, currents,
};
use firmware_core::pdu::snmp::SnmpStats;
use firmware_core::pdu::storage::{
    LoadSource, Storage, StorageLinks, StorageOp, StorageReply, StorageRequest, StorageTask,
};
use firmware_core::pdu::switch::{
    EventPort, SwitchAux, SwitchCore, SwitchEvent, SwitchLinks, SwitchSnapshot, SwitchTask,
};
use firmware_core::pdu::{CHANNELS, ChannelTelemetry, OutletMask, SwitchReply, SwitchRequest};
use firmware_core::queue::{FullPolicy, Queue};
use firmware_core::time::{Duration, Instant};

use super::net::{ConsoleInput, Inbox, NetInput, console_task, net_task};
use super::parts::Parts;
use crate::kernel::{CoreId, Kernel, SimClock, TaskSpec, Tracer};
use crate::periph::i2c::I2cBus;
use crate::periph::uart::UartPort;

type M = NoopRawMutex;
/// SwitchTask's request queue (RejectNew: senders get `Busy`).
pub type SwitchQ = Queue<M, SwitchRequest, 16>;
/// A reply queue of one source (DropOldest).
pub type ReplyQ = Queue<M, SwitchReply, 4>;
/// SwitchTask's side inputs (DropOldest).
pub type AuxQ = Queue<M, SwitchAux, 8>;
/// The log queue (DropOldest).
pub type LogQ = Queue<M, LogEvent, 32>;
/// StorageTask's requests (RejectNew: a refused save is reported; a reboot request waits).
pub type StorageQ = Queue<M, StorageRequest, 4>;
/// StorageTask's replies (DropOldest; no front-end waits for one yet, the trace records them).
pub type StorageReplyQ = Queue<M, StorageReply, 4>;

/// The board's statics for one power-on.
pub struct Board {
    /// SwitchTask requests.
    pub switch_q: SwitchQ,
    /// Replies to the console.
    pub console_replies: ReplyQ,
    /// Replies to NetTask.
    pub net_replies: ReplyQ,
    /// Side inputs.
    pub aux: AuxQ,
    /// Channel currents for over-current protection.
    pub currents: Signal<M, [f32; CHANNELS]>,
    /// SwitchTask's published state.
    pub published: Watch<M, SwitchSnapshot, 2>,
    /// HealthTask's published state.
    pub health: Watch<M, HealthStatus, 2>,
    /// HealthTask's announcements.
    pub health_events: Queue<M, HealthEvent, 8>,
    /// Heartbeats.
    pub beats: Heartbeats<M>,
    /// Log events.
    pub log: LogQ,
    /// StorageTask requests.
    pub storage_q: StorageQ,
    /// StorageTask replies.
    pub storage_replies: StorageReplyQ,
    /// ButtonTask's sleep request.
    pub sleep: Signal<M, ()>,
}

impl Board {
    fn new() -> Self {
        Board {
            switch_q: Queue::new(FullPolicy::RejectNew),
            console_replies: Queue::new(FullPolicy::DropOldest),
            net_replies: Queue::new(FullPolicy::DropOldest),
            aux: Queue::new(FullPolicy::DropOldest),
            currents: Signal::new(),
            published: Watch::new(),
            health: Watch::new(),
            health_events: Queue::new(FullPolicy::DropOldest),
            beats: Heartbeats::new(),
            log: Queue::new(FullPolicy::DropOldest),
            storage_q: Queue::new(FullPolicy::RejectNew),
            storage_replies: Queue::new(FullPolicy::DropOldest),
            sleep: Signal::new(),
        }
    }
}

/// CPU cost of the firmware's work (per poll, or per served item).
#[derive(Debug, Clone, Copy)]
pub struct Costs {
    /// Per SNMP datagram.
    pub snmp: Duration,
    /// Per HTTP request.
    pub http: Duration,
    /// Per console line.
    pub console_line: Duration,
    /// NetTask serves at most one item per this period (0: no pacing).
    pub net_poll: Duration,
}

/// Task names, in heartbeat-slot order where they have one.
pub const TASKS: &[&str] = &[
    "boot", "health", "switch", "console", "net", "button", "meter", "storage", "logger",
];

/// Power state of the device.
#[derive(Default)]
pub struct Power {
    generation: Cell<u64>,
    on: Cell<bool>,
    booted: Cell<Option<u64>>,
    wakers: RefCell<Vec<Waker>>,
}

impl Power {
    fn wake(&self) {
        for w in self.wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }
    fn switch(&self, on: bool) {
        self.generation.set(self.generation.get() + 1);
        self.on.set(on);
        self.booted.set(None);
        self.wake();
    }
    fn mark_booted(&self, generation: u64) {
        if self.generation.get() == generation {
            self.booted.set(Some(generation));
            self.wake();
        }
    }
    /// Whether the device is powered.
    pub fn is_on(&self) -> bool {
        self.on.get()
    }
    async fn until(&self, f: impl Fn(&Power) -> Option<u64>) -> u64 {
        poll_fn(|cx| match f(self) {
            Some(v) => Poll::Ready(v),
            None => {
                register(&self.wakers, cx.waker());
                Poll::Pending
            }
        })
        .await
    }
    /// Wait for power, as the boot task does.
    async fn powered(&self) -> u64 {
        self.until(|p| p.on.get().then(|| p.generation.get())).await
    }
    async fn booted(&self) -> u64 {
        self.until(|p| p.booted.get()).await
    }
    async fn changed(&self, generation: u64) {
        self.until(|p| (p.generation.get() != generation).then_some(0))
            .await;
    }
}

/// Remember `waker` once: a task that is polled again while still waiting (it selects over
/// other futures too) must not add itself again, or the list grows with every poll.
fn register(wakers: &RefCell<Vec<Waker>>, waker: &Waker) {
    let mut list = wakers.borrow_mut();
    if !list.iter().any(|w| w.will_wake(waker)) {
        list.push(waker.clone());
    }
}

/// Everything the device's tasks share across power cycles.
pub struct Shared {
    /// Device name (trace prefix).
    pub name: String,
    /// Virtual clock.
    pub clock: SimClock,
    /// Trace.
    pub tracer: Tracer,
    /// The parts.
    pub parts: Parts,
    /// I2C0 (display expanders).
    pub i2c0: I2cBus,
    /// I2C1 (relay expander, EEPROM).
    pub i2c1: I2cBus,
    /// The MCU end of the meter UART, while no MeterTask holds it.
    pub meter_uart: RefCell<Option<UartPort>>,
    /// Power.
    pub power: Power,
    /// The statics of the current power-on.
    pub board: Cell<Option<&'static Board>>,
    /// The booted SwitchCore, for SwitchTask.
    switch_core: RefCell<Option<SwitchCore>>,
    /// The configuration store after boot's load, for StorageTask.
    storage_slot: RefCell<Option<StorageBox>>,
    /// Configuration in force.
    pub config: RefCell<PduConfig>,
    /// Where it came from at the last boot.
    pub config_source: RefCell<String>,
    /// Latest telemetry from MeterTask.
    pub telemetry: Cell<[ChannelTelemetry; CHANNELS]>,
    /// NetTask's inbox.
    pub net_inbox: Arc<Inbox<NetInput>>,
    /// ConsoleTask's inbox.
    pub console_inbox: Arc<Inbox<ConsoleInput>>,
    /// Terminals attached to the console output.
    pub console_sinks: RefCell<Vec<ConsoleSink>>,
    /// Tasks told to hang (until the next power-on).
    pub hung: RefCell<Vec<String>>,
    hang_wakers: RefCell<Vec<Waker>>,
    /// When the boot of the current power-on started.
    pub boot_at: Cell<Instant>,
    /// Boots so far.
    pub boots: Cell<u32>,
    /// Last watchdog feed.
    pub last_feed: Cell<Instant>,
    /// Costs.
    pub costs: Costs,
    /// Agent counters.
    pub snmp_stats: Cell<SnmpStats>,
    /// Flood replies served.
    pub flood_replies: Cell<u64>,
    /// Flood datagrams offered.
    pub flood_sent: Cell<u64>,
    tokens: Cell<u32>,
    reboot: Cell<bool>,
    reboot_wakers: RefCell<Vec<Waker>>,
}

type StorageBox = Storage<I2cBus, SimClock>;

/// A terminal attached to the console output.
pub type ConsoleSink = Box<dyn FnMut(&[u8])>;

impl Shared {
    /// Record a trace event from `<device>.<what>`.
    pub fn record(&self, what: &str, text: impl Into<String>) {
        self.tracer.record(&format!("{}.{what}", self.name), text);
    }

    /// A fresh correlation token.
    pub fn next_token(&self) -> u32 {
        let t = self.tokens.get().wrapping_add(1);
        self.tokens.set(t);
        t
    }

    /// Ask for a power cycle (done by the supervisor task, keeping the EEPROM).
    pub fn request_reboot(&self, why: &str) {
        self.record("power", format!("reboot: {why}"));
        self.reboot.set(true);
        for w in self.reboot_wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Make task `name` stop (no more work, no more heartbeats) until the next power-on.
    pub fn hang(&self, name: &str) {
        self.hung.borrow_mut().push(name.to_owned());
        self.record("health", format!("task {name} hangs"));
        for w in self.hang_wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }

    async fn hang_of(&self, name: &str) {
        poll_fn(|cx| {
            if self.hung.borrow().iter().any(|h| h == name) {
                Poll::Ready(())
            } else {
                register(&self.hang_wakers, cx.waker());
                Poll::Pending
            }
        })
        .await
    }

    /// SwitchTask's latest published state.
    pub fn switch_snapshot(&self) -> Option<SwitchSnapshot> {
        self.board.get().and_then(|b| b.published.try_get())
    }

    /// The front-ends' view of the PDU now.
    pub fn snapshot(&self, b: &Board) -> Snapshot {
        let sw = b.published.try_get().unwrap_or_default();
        let mut serial = heapless::String::new();
        let _ = serial.push_str("SN-TWIN0001");
        Snapshot {
            uptime_ms: (self.clock.now() - self.boot_at.get()).as_micros() / 1_000,
            outlets: sw.relays,
            switch_state: sw.state,
            telemetry: self.telemetry.get(),
            ocp: sw.ocp,
            temperature_c: 34.5,
            supply_v: 12.0,
            usb_v: 5.0,
            serial,
            firmware_version: "twin-1.0.0",
            config: self.config.borrow().clone(),
        }
    }

    /// Send console output to the trace (one event per reply) and every terminal.
    pub fn console_out(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(bytes);
        let lines: Vec<&str> = text
            .split("\r\n")
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        // HELP is long: the trace keeps its first lines.
        let shown: Vec<&str> = lines.iter().take(4).copied().collect();
        let more = if lines.len() > 4 {
            format!(" | … {} more lines", lines.len() - 4)
        } else {
            String::new()
        };
        self.record("console", format!("{}{more}", shown.join(" | ")));
        for sink in self.console_sinks.borrow_mut().iter_mut() {
            sink(bytes);
        }
    }
}

/// The MeterTask's UART: takes the port from [`Shared::meter_uart`] and gives it back when the
/// task is dropped (power off), so the next boot's MeterTask finds it.
struct UartLease {
    port: Option<UartPort>,
    home: Rc<Shared>,
}

impl Drop for UartLease {
    fn drop(&mut self) {
        if let Some(p) = self.port.take() {
            *self.home.meter_uart.borrow_mut() = Some(p);
        }
    }
}

impl embedded_io_async::ErrorType for UartLease {
    type Error = embedded_io_async::ErrorKind;
}

impl embedded_io_async::Read for UartLease {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        match self.port.as_mut() {
            Some(p) => p
                .read(buf)
                .await
                .map_err(|_| embedded_io_async::ErrorKind::Other),
            None => Err(embedded_io_async::ErrorKind::NotConnected),
        }
    }
}

/// SwitchTask's announcements, recorded in the trace.
struct TraceEvents(Rc<Shared>);

impl EventPort for TraceEvents {
    fn announce(&self, event: SwitchEvent) {
        let text = match event {
            SwitchEvent::StateChanged { state, fault_code } => {
                format!("state {} fault=0x{fault_code:x}", state_name(state))
            }
            SwitchEvent::OverCurrent {
                state,
                total_a,
                tripped,
            } => format!(
                "ocp {state:?} total={total_a:.2}A tripped={}",
                tripped.map_or("-".to_owned(), |o| o.to_string())
            ),
            SwitchEvent::IoError { expander, in_row } => {
                format!("i2c error {expander:?} in_row={in_row}")
            }
        };
        self.0.record("switch", text);
    }
}

/// Upper-case state name.
pub fn state_name(s: SwitchState) -> &'static str {
    match s {
        SwitchState::Init => "INIT",
        SwitchState::Ready => "READY",
        SwitchState::FaultSafe => "FAULT_SAFE",
    }
}

/// Log events of the meter mux are routine (25 per second) and stay out of the log queue.
struct LogFilter(&'static LogQ);

impl LogPort for LogFilter {
    fn log(&self, event: LogEvent) {
        if event.op == "METER_MUX" && event.status == "OK" {
            return;
        }
        let _ = self.0.offer(event);
    }
}

/// LoggerTask's sink: each line becomes a trace event.
struct TraceSink(Rc<Shared>);

impl embedded_io_async::ErrorType for TraceSink {
    type Error = core::convert::Infallible;
}

impl embedded_io_async::Write for TraceSink {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        let text = String::from_utf8_lossy(buf);
        self.0.record("log", text.trim_end().to_owned());
        Ok(buf.len())
    }
    async fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// The platform half of HealthTask: the watchdog feed.
struct SimHealth(Rc<Shared>);

impl HealthPlatform for SimHealth {
    fn feed_watchdog(&mut self) {
        self.0.last_feed.set(self.0.clock.now());
    }
    fn stack_free_bytes(&mut self, _task: TaskId) -> Option<u32> {
        None
    }
    fn heap_free_bytes(&mut self) -> Option<u32> {
        None
    }
}

/// Task priorities and per-poll costs.
pub fn task_params(name: &str) -> (u8, Duration) {
    let us = Duration::from_micros;
    match name {
        "boot" => (8, us(500)),
        "health" => (7, us(20)),
        "switch" => (6, us(40)),
        "console" => (5, us(30)),
        "net" => (4, us(20)),
        "button" => (3, us(15)),
        "meter" => (2, us(60)),
        _ => (1, us(50)),
    }
}

/// Build the shared state and spawn every task of the device.
pub fn spawn_device(kernel: &mut Kernel, sh: Rc<Shared>, priorities: &[(String, u8)]) {
    let core = kernel.add_core(format!("{}.cpu", sh.name));
    for &task in TASKS {
        let (mut prio, cost) = task_params(task);
        if let Some((_, p)) = priorities.iter().find(|(n, _)| n == task) {
            prio = *p;
        }
        spawn_slot(kernel, core, &sh, task, prio, cost);
    }
    // The supervisor: power-on at time zero, power cycles on request.
    let s = sh.clone();
    kernel
        .spawn(TaskSpec::world(format!("{}.power", sh.name)), async move {
            s.power.switch(true);
            loop {
                poll_fn(|cx| {
                    if s.reboot.replace(false) {
                        Poll::Ready(())
                    } else {
                        register(&s.reboot_wakers, cx.waker());
                        Poll::Pending
                    }
                })
                .await;
                power_off(&s);
                s.clock.sleep(Duration::from_millis(100)).await;
                s.parts.eeprom.borrow_mut().power_on();
                s.power.switch(true);
            }
        })
        .detach();
    // The hardware watchdog.
    let s = sh.clone();
    kernel
        .spawn(
            TaskSpec::world(format!("{}.watchdog", sh.name)),
            async move {
                loop {
                    s.clock.sleep(Duration::from_millis(100)).await;
                    if s.power.booted.get().is_none() {
                        continue;
                    }
                    let period =
                        Duration::from_millis(u64::from(s.config.borrow().health.watchdog_ms));
                    let since = s.clock.now() - s.last_feed.get().max(s.boot_at.get());
                    if period > Duration::ZERO && since > period {
                        s.request_reboot("watchdog reset");
                        s.last_feed.set(s.clock.now());
                    }
                }
            },
        )
        .detach();
}

fn power_off(sh: &Rc<Shared>) {
    sh.power.switch(false);
    sh.board.set(None);
    sh.hung.borrow_mut().clear();
    sh.net_inbox.clear();
    sh.console_inbox.clear();
    // The expanders lose power: every pin back to its power-on state (relays drop out).
    sh.parts.relay.borrow_mut().reset();
    sh.parts.display.borrow_mut().reset();
    sh.parts.selection.borrow_mut().reset();
    sh.parts.eeprom.borrow_mut().set_power(false);
    sh.telemetry.set([ChannelTelemetry::default(); CHANNELS]);
    sh.record("power", "off");
}

fn spawn_slot(
    kernel: &mut Kernel,
    core: CoreId,
    sh: &Rc<Shared>,
    task: &'static str,
    prio: u8,
    cost: Duration,
) {
    let sh = sh.clone();
    let name = format!("{}.{task}", sh.name);
    kernel
        .spawn(TaskSpec::on_core(name, core, prio, cost), async move {
            loop {
                let generation = if task == "boot" {
                    sh.power.powered().await
                } else {
                    sh.power.booted().await
                };
                let run = run_task(task, sh.clone(), generation);
                match select3(run, sh.power.changed(generation), sh.hang_of(task)).await {
                    Either3::Third(()) => sh.power.changed(generation).await,
                    Either3::First(()) if task == "boot" => sh.power.changed(generation).await,
                    _ => {}
                }
            }
        })
        .detach();
}

async fn run_task(task: &'static str, sh: Rc<Shared>, generation: u64) {
    match task {
        "boot" => boot(sh, generation).await,
        other => {
            let Some(b) = sh.board.get() else { return };
            match other {
                "health" => health_task(sh, b).await,
                "switch" => switch_task(sh, b).await,
                "console" => console_task(sh, b).await,
                "net" => net_task(sh, b).await,
                "button" => button_task(sh, b).await,
                "meter" => meter_task(sh, b).await,
                "storage" => storage_task(sh, b).await,
                _ => logger_task(sh, b).await,
            }
        }
    }
}

async fn boot(sh: Rc<Shared>, generation: u64) {
    let now = sh.clock.now();
    sh.boot_at.set(now);
    sh.last_feed.set(now);
    sh.boots.set(sh.boots.get() + 1);
    let board: &'static Board = Box::leak(Box::new(Board::new()));
    let mut storage = Storage::new(Cat24c256::new(
        sh.i2c1.clone(),
        sh.clock.clone(),
        DEFAULT_ADDRESS,
    ));
    let loaded = storage.load().await;
    let source = match loaded.source {
        LoadSource::Stored { slot, seq, version } => {
            format!("stored slot {slot:?} seq {seq} v{version}")
        }
        LoadSource::Defaults(reason) => format!("factory defaults ({reason:?})"),
    };
    sh.record("boot", format!("configuration: {source}"));
    *sh.config_source.borrow_mut() = source;
    let cfg = loaded.config;
    let now = sh.clock.now();
    let (core, restored) = SwitchCore::boot_from(&cfg, now);
    sh.record(
        "boot",
        format!("SAFE_MASK 0x{:02x} applied", cfg.switch.safe_mask.0),
    );
    if let Some(n) = restored {
        sh.record(
            "boot",
            format!(
                "restore_on_boot: restoring 0x{:02x} ({n} requests)",
                cfg.switch.last_state.0
            ),
        );
    }
    *sh.config.borrow_mut() = cfg;
    *sh.switch_core.borrow_mut() = Some(core);
    *sh.storage_slot.borrow_mut() = Some(storage);
    sh.board.set(Some(board));
    sh.power.mark_booted(generation);
}

async fn switch_task(sh: Rc<Shared>, b: &'static Board) {
    let Some(core) = sh.switch_core.borrow_mut().take() else {
        return;
    };
    let events: &'static TraceEvents = Box::leak(Box::new(TraceEvents(sh.clone())));
    let log: &'static LogFilter = Box::leak(Box::new(LogFilter(&b.log)));
    let links = SwitchLinks {
        requests: &b.switch_q,
        replies: [
            None,
            Some(&b.console_replies),
            Some(&b.net_replies),
            None,
            None,
        ],
        currents: &b.currents,
        aux: &b.aux,
        published: &b.published,
        events: Some(events),
        heartbeat: Some((&b.beats, TaskId::SWITCH)),
        log: Some(log),
    };
    let mut task = SwitchTask::new(
        core,
        sh.i2c1.clone(),
        sh.i2c0.clone(),
        sh.i2c0.clone(),
        links,
        sh.clock.clone(),
    );
    task.run().await;
}

async fn storage_task(sh: Rc<Shared>, b: &'static Board) {
    let Some(storage) = sh.storage_slot.borrow_mut().take() else {
        return;
    };
    let config = sh.config.borrow().clone();
    let mut task = StorageTask::new(storage, &b.storage_q, &b.storage_replies)
        .with_links(BoardStorageLinks(sh.clone(), b), config);
    task.serve(&sh.clock).await;
}

/// StorageTask follows SwitchTask's published relays, beats on the board's heartbeats, records
/// its answers in the trace, publishes the configuration in force, and asks the supervisor for
/// the power cycle of a reboot request.
struct BoardStorageLinks(Rc<Shared>, &'static Board);

impl StorageLinks for BoardStorageLinks {
    fn relays(&mut self) -> Option<OutletMask> {
        self.0.switch_snapshot().map(|s| s.relays)
    }
    fn beat(&mut self, now: Instant) {
        self.1.beats.beat(TaskId::STORAGE, now);
    }
    fn replied(&mut self, _request: &StorageOp, reply: &StorageReply) {
        let text = match reply {
            StorageReply::Saved { saved, token } => format!(
                "saved slot {:?} seq {} token={token}",
                saved.slot, saved.seq
            ),
            StorageReply::Failed { error, token } => {
                format!("save failed: {error:?} token={token}")
            }
            StorageReply::Loaded { loaded, .. } => format!("loaded: {:?}", loaded.source),
            StorageReply::Flushed { token } => {
                format!("accepted requests stored, reboot token={token}")
            }
        };
        self.0.record("storage", text);
    }
    fn stored(&mut self, config: &PduConfig) {
        *self.0.config.borrow_mut() = config.clone();
    }
    fn reboot(&mut self) {
        self.0.request_reboot("reboot requested");
    }
}

async fn health_task(sh: Rc<Shared>, b: &'static Board) {
    let cfg = sh.config.borrow().clone();
    let mut core = HealthCore::new(&cfg.health, sh.clock.now());
    for id in [
        TaskId::SWITCH,
        TaskId::BUTTON,
        TaskId::METER,
        TaskId::NET,
        TaskId::CONSOLE,
        TaskId::STORAGE,
    ] {
        core.watch(id, None);
    }
    let mut task = HealthTask::new(
        core,
        SimHealth(sh.clone()),
        sh.clock.clone(),
        &b.beats,
        &b.switch_q,
        &b.health,
        Some(&b.health_events),
    );
    let announce = async {
        loop {
            let text = match b.health_events.receive().await {
                HealthEvent::TaskHung(t) => format!("task {t} hung"),
                HealthEvent::TaskRecovered(t) => format!("task {t} recovered"),
                HealthEvent::SafeStateOrdered => "SAFE_STATE ordered".to_owned(),
                HealthEvent::LowStack { task, free } => format!("task {task} stack low: {free} B"),
                HealthEvent::LowHeap { free } => format!("heap low: {free} B"),
            };
            sh.record("health", text);
        }
    };
    let _ = select(task.run(), announce).await;
}

async fn button_task(sh: Rc<Shared>, b: &'static Board) {
    let cfg = sh.config.borrow().clone();
    let buttons = sh.parts.buttons.clone();
    let mut task = ButtonTask::new(
        ButtonCore::new(&cfg.buttons),
        move || buttons.pressed_mask(),
        sh.clock.clone(),
        &b.switch_q,
        &b.aux,
        &b.sleep,
        Some((&b.beats, TaskId::BUTTON)),
    );
    let sleep = async {
        loop {
            b.sleep.wait().await;
            sh.record("button", "PowerSleepRequest");
        }
    };
    let _ = select(task.run(), sleep).await;
}

async fn meter_task(sh: Rc<Shared>, b: &'static Board) {
    let port = sh.meter_uart.borrow_mut().take();
    let uart = UartLease {
        port,
        home: sh.clone(),
    };
    let cfg = sh.config.borrow().clone();
    let s = sh.clone();
    let sink = move |t: &[ChannelTelemetry; CHANNELS]| {
        s.telemetry.set(*t);
        b.currents.signal(currents(t));
    };
    MeterTask::new(
        uart,
        sh.clock.clone(),
        SwitchQueueMux::new(&b.switch_q, 0x4000_0000),
        sink,
        MeterCore::new(MeterSettings::default(), cfg.calibration),
    )
    .with_links(BoardMeterLinks(b))
    .run()
    .await
}

/// MeterTask follows SwitchTask's published relays and beats on the board's heartbeats.
struct BoardMeterLinks(&'static Board);

impl MeterLinks for BoardMeterLinks {
    fn relays(&mut self) -> Option<OutletMask> {
        self.0.published.try_get().map(|s| s.relays)
    }
    fn beat(&mut self, now: Instant) {
        self.0.beats.beat(TaskId::METER, now);
    }
}

async fn logger_task(sh: Rc<Shared>, b: &'static Board) {
    let level = sh.config.borrow().logging.level;
    let mut task = LoggerTask::new(
        LoggerCore::new(level),
        TraceSink(sh.clone()),
        sh.clock.clone(),
        &b.log,
    );
    task.run().await;
}

/// Create the shared state of a device (not yet spawned).
#[allow(clippy::too_many_arguments)]
pub fn new_shared(
    name: &str,
    kernel: &Kernel,
    parts: Parts,
    i2c0: I2cBus,
    i2c1: I2cBus,
    meter_uart: UartPort,
    costs: Costs,
    net_queue: usize,
    initial: PduConfig,
) -> Rc<Shared> {
    Rc::new(Shared {
        name: name.to_owned(),
        clock: kernel.clock(),
        tracer: kernel.tracer(),
        parts,
        i2c0,
        i2c1,
        meter_uart: RefCell::new(Some(meter_uart)),
        power: Power::default(),
        board: Cell::new(None),
        switch_core: RefCell::new(None),
        storage_slot: RefCell::new(None),
        config: RefCell::new(initial),
        config_source: RefCell::new(String::new()),
        telemetry: Cell::new([ChannelTelemetry::default(); CHANNELS]),
        net_inbox: Arc::new(Inbox::new(net_queue)),
        console_inbox: Arc::new(Inbox::new(64)),
        console_sinks: RefCell::new(Vec::new()),
        hung: RefCell::new(Vec::new()),
        hang_wakers: RefCell::new(Vec::new()),
        boot_at: Cell::new(Instant::ZERO),
        boots: Cell::new(0),
        last_feed: Cell::new(Instant::ZERO),
        costs,
        snmp_stats: Cell::new(SnmpStats::default()),
        flood_replies: Cell::new(0),
        flood_sent: Cell::new(0),
        tokens: Cell::new(0),
        reboot: Cell::new(false),
        reboot_wakers: RefCell::new(Vec::new()),
    })
}
