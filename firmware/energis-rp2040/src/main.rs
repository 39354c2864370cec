//! ENERGIS PDU on the RP2040: creates the peripherals, the queues and the tasks of
//! `firmware-core`'s PDU. The firmware logic lives there; see `README.md` for what is wired.
#![no_std]
#![no_main]

mod board;

use board_clock::EmbassyClock;
use embassy_embedded_hal::shared_bus::asynch::i2c::I2cDevice;
use embassy_executor::Spawner;
use embassy_rp::gpio::{AnyPin, Input, Level, Output, Pull};
use embassy_rp::i2c::{self, I2c};
use embassy_rp::peripherals::{I2C0, I2C1, UART0};
use embassy_rp::uart::{self, BufferedInterruptHandler, BufferedUartRx};
use embassy_rp::watchdog::Watchdog;
use embassy_rp::{Peri, bind_interrupts};
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex as Cs;
use embassy_sync::mutex::Mutex;
use embassy_sync::signal::Signal;
use embassy_sync::watch::Watch;
use embassy_time::Delay;
use firmware_core::pdu::buttons::{ButtonCore, ButtonTask};
use firmware_core::pdu::config::SOURCES;
use firmware_core::pdu::eeprom::{Cat24c256, DEFAULT_ADDRESS};
use firmware_core::pdu::health::{HealthCore, HealthStatus, HealthTask};
use firmware_core::pdu::health::{Heartbeats, TaskId};
use firmware_core::pdu::meter::{
    self, MeterCore, MeterLinks, MeterSettings, MeterTask, SwitchQueueMux,
};
use firmware_core::pdu::storage::{Storage, StorageReply, StorageRequest, StorageTask};
use firmware_core::pdu::switch::{SwitchAux, SwitchCore, SwitchLinks, SwitchSnapshot, SwitchTask};
use firmware_core::pdu::{CHANNELS, ChannelTelemetry, OutletMask, SwitchRequest};
use firmware_core::ports::Clock;
use firmware_core::queue::{FullPolicy, Queue};
use firmware_core::time::Instant;
use panic_halt as _;
use static_cell::StaticCell;

use board::{FrontPanel, Health};

bind_interrupts!(struct Irqs {
    I2C0_IRQ => i2c::InterruptHandler<I2C0>;
    I2C1_IRQ => i2c::InterruptHandler<I2C1>;
    UART0_IRQ => BufferedInterruptHandler<UART0>;
});

/// I2C0: the display (0x21) and selection (0x23) LED expanders.
type I2c0Device = I2cDevice<'static, Cs, I2c<'static, I2C0, i2c::Async>>;
/// I2C1: the relay expander (0x20) and the configuration EEPROM (0x50).
type I2c1Device = I2cDevice<'static, Cs, I2c<'static, I2C1, i2c::Async>>;

const SWITCH_QUEUE: usize = 8;
const REPLY_QUEUE: usize = 4;
const AUX_QUEUE: usize = 4;
const STORAGE_QUEUE: usize = 4;
const EVENT_QUEUE: usize = 4;
/// Readers of the latest values: console, HTTP, SNMP, health.
const READERS: usize = 4;
/// MeterTask's mux requests use tokens from here up, clear of the front-ends' tokens.
const METER_TOKENS: u32 = 0x8000_0000;

static SWITCH_REQUESTS: Queue<Cs, SwitchRequest, SWITCH_QUEUE> = Queue::new(FullPolicy::RejectNew);
static SWITCH_AUX: Queue<Cs, SwitchAux, AUX_QUEUE> = Queue::new(FullPolicy::DropOldest);
static SWITCH_STATE: Watch<Cs, SwitchSnapshot, READERS> = Watch::new();
static STORAGE_REQUESTS: Queue<Cs, StorageRequest, STORAGE_QUEUE> =
    Queue::new(FullPolicy::RejectNew);
static STORAGE_REPLIES: Queue<Cs, StorageReply, STORAGE_QUEUE> = Queue::new(FullPolicy::DropOldest);
static TELEMETRY: Watch<Cs, [ChannelTelemetry; CHANNELS], READERS> = Watch::new();
static CURRENTS: Signal<Cs, [f32; CHANNELS]> = Signal::new();
static HEARTBEATS: Heartbeats<Cs> = Heartbeats::new();
static HEALTH: Watch<Cs, HealthStatus, READERS> = Watch::new();
/// The PWR long press asks the platform to dim the panel and sleep (not acted on yet).
static SLEEP: Signal<Cs, ()> = Signal::new();

/// MeterTask's telemetry sink. SwitchTask takes the currents from a `Signal`, which
/// `meter::WatchSink` does not offer, so the board publishes both itself.
fn publish_telemetry(telemetry: &[ChannelTelemetry; CHANNELS]) {
    TELEMETRY.sender().send(*telemetry);
    CURRENTS.signal(meter::currents(telemetry));
}

type Switch = SwitchTask<
    'static,
    I2c0Device,
    I2c1Device,
    EmbassyClock,
    Cs,
    SWITCH_QUEUE,
    REPLY_QUEUE,
    AUX_QUEUE,
    READERS,
>;
type Storer = StorageTask<'static, Cs, I2c1Device, Delay, STORAGE_QUEUE, STORAGE_QUEUE>;
type Meter = MeterTask<
    BufferedUartRx,
    EmbassyClock,
    SwitchQueueMux<'static, Cs, SWITCH_QUEUE>,
    fn(&[ChannelTelemetry; CHANNELS]),
    MeterFollowsSwitch,
>;
type Buttons = ButtonTask<'static, FrontPanel, EmbassyClock, Cs, SWITCH_QUEUE, AUX_QUEUE>;
type Monitor = HealthTask<'static, Health, EmbassyClock, Cs, SWITCH_QUEUE, READERS, EVENT_QUEUE>;

#[embassy_executor::task]
async fn switch_task(mut task: Switch) -> ! {
    task.run().await
}

#[embassy_executor::task]
async fn storage_task(mut task: Storer) -> ! {
    task.run().await
}

/// MeterTask follows SwitchTask's published relays (uptime, and a load switched off leaves the
/// over-current sum at once) and beats for HealthTask.
struct MeterFollowsSwitch;

impl MeterLinks for MeterFollowsSwitch {
    fn relays(&mut self) -> Option<OutletMask> {
        SWITCH_STATE.try_get().map(|s| s.relays)
    }
    fn beat(&mut self, now: Instant) {
        HEARTBEATS.beat(TaskId::METER, now);
    }
}

#[embassy_executor::task]
async fn meter_task(mut task: Meter) -> ! {
    task.run().await
}

#[embassy_executor::task]
async fn button_task(mut task: Buttons) -> ! {
    task.run().await
}

#[embassy_executor::task]
async fn health_task(mut task: Monitor) -> ! {
    task.run().await
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let p = embassy_rp::init(Default::default());
    let clock = EmbassyClock;

    // The expanders' reset lines (GPIO 23: relay, GPIO 24: LEDs) are held high for good.
    static MCP_RESET: StaticCell<[Output<'static>; 2]> = StaticCell::new();
    MCP_RESET.init([
        Output::new(p.PIN_23, Level::High),
        Output::new(p.PIN_24, Level::High),
    ]);

    // Both buses at 400 kHz, shared through embassy-embedded-hal's `I2cDevice`.
    let mut i2c_config = i2c::Config::default();
    i2c_config.frequency = 400_000;
    static I2C0_BUS: StaticCell<Mutex<Cs, I2c<'static, I2C0, i2c::Async>>> = StaticCell::new();
    static I2C1_BUS: StaticCell<Mutex<Cs, I2c<'static, I2C1, i2c::Async>>> = StaticCell::new();
    let i2c0 = I2C0_BUS.init(Mutex::new(I2c::new_async(
        p.I2C0, p.PIN_5, p.PIN_4, Irqs, i2c_config,
    )));
    let i2c1 = I2C1_BUS.init(Mutex::new(I2c::new_async(
        p.I2C1, p.PIN_3, p.PIN_2, Irqs, i2c_config,
    )));

    // Boot: load the configuration, apply SAFE_MASK, then restore the saved outlets if asked.
    let eeprom = Cat24c256::new(I2cDevice::new(i2c1), Delay, DEFAULT_ADDRESS);
    let mut storage = Storage::new(eeprom);
    let config = storage.load().await.config;
    let (switch, _) = SwitchCore::boot_from(&config, clock.now());

    let links = SwitchLinks {
        requests: &SWITCH_REQUESTS,
        replies: [None; SOURCES], // no front-end reads replies yet
        currents: &CURRENTS,
        aux: &SWITCH_AUX,
        published: &SWITCH_STATE,
        events: None,
        heartbeat: Some((&HEARTBEATS, TaskId::SWITCH)),
        log: None,
    };
    let (relay_bus, display_bus, selection_bus) = (
        I2cDevice::new(i2c1),
        I2cDevice::new(i2c0),
        I2cDevice::new(i2c0),
    );
    let switch = SwitchTask::new(switch, relay_bus, display_bus, selection_bus, links, clock);

    // The eight HLW8032s share UART0 RX (GPIO 1) through the 74HC4051: 4800 baud, 8E1, receive only.
    let mut uart_config = uart::Config::default();
    uart_config.baudrate = 4800;
    uart_config.parity = uart::Parity::ParityEven;
    static METER_RX: StaticCell<[u8; 64]> = StaticCell::new();
    let meter_rx = BufferedUartRx::new(p.UART0, Irqs, p.PIN_1, METER_RX.init([0; 64]), uart_config);
    let meter = MeterTask::new(
        meter_rx,
        clock,
        SwitchQueueMux::new(&SWITCH_REQUESTS, METER_TOKENS),
        publish_telemetry as fn(&_),
        MeterCore::new(MeterSettings::default(), config.calibration),
    )
    .with_links(MeterFollowsSwitch);

    let pins: [Peri<'static, AnyPin>; 4] = [
        p.PIN_12.into(),
        p.PIN_13.into(),
        p.PIN_14.into(),
        p.PIN_15.into(),
    ];
    let buttons = ButtonTask::new(
        ButtonCore::new(&config.buttons),
        FrontPanel(pins.map(|pin| Input::new(pin, Pull::Up))),
        clock,
        &SWITCH_REQUESTS,
        &SWITCH_AUX,
        &SLEEP,
        Some((&HEARTBEATS, TaskId::BUTTON)),
    );

    // The watchdog is fed only while every task that beats is alive.
    let mut monitor = HealthCore::new(&config.health, clock.now());
    monitor.watch(TaskId::SWITCH, None);
    monitor.watch(TaskId::BUTTON, None);
    monitor.watch(TaskId::METER, None);
    let watchdog = Health::start(Watchdog::new(p.WATCHDOG), config.health.watchdog_ms);
    let health = HealthTask::new(
        monitor,
        watchdog,
        clock,
        &HEARTBEATS,
        &SWITCH_REQUESTS,
        &HEALTH,
        None, // no front-end reads health events yet
    );

    let storer = StorageTask::new(storage, &STORAGE_REQUESTS, &STORAGE_REPLIES);
    spawner.spawn(switch_task(switch).expect("spawned once"));
    spawner.spawn(storage_task(storer).expect("spawned once"));
    spawner.spawn(meter_task(meter).expect("spawned once"));
    spawner.spawn(button_task(buttons).expect("spawned once"));
    spawner.spawn(health_task(health).expect("spawned once"));
}
