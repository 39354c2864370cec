//! ENERGIS PDU on the RP2040: creates the peripherals, the queues and the tasks of
//! `firmware-core`'s PDU. The firmware logic lives there; see `README.md` for what is wired.
#![no_std]
#![no_main]

use board_clock::EmbassyClock;
use embassy_embedded_hal::shared_bus::asynch::i2c::I2cDevice;
use embassy_executor::Spawner;
use embassy_rp::bind_interrupts;
use embassy_rp::i2c::{self, I2c};
use embassy_rp::peripherals::{I2C1, UART0};
use embassy_rp::uart::{self, BufferedInterruptHandler, BufferedUartRx};
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex as Cs;
use embassy_sync::mutex::Mutex;
use embassy_sync::watch::Watch;
use embassy_time::Delay;
use firmware_core::pdu::eeprom::{Cat24c256, DEFAULT_ADDRESS};
use firmware_core::pdu::meter::{MeterCore, MeterSettings, MeterTask, SwitchQueueMux, WatchSink};
use firmware_core::pdu::storage::{Storage, StorageReply, StorageRequest, StorageTask};
use firmware_core::pdu::{CHANNELS, ChannelTelemetry, SwitchRequest};
use firmware_core::queue::{FullPolicy, Queue};
use panic_halt as _;
use static_cell::StaticCell;

bind_interrupts!(struct Irqs {
    I2C1_IRQ => i2c::InterruptHandler<I2C1>;
    UART0_IRQ => BufferedInterruptHandler<UART0>;
});

/// I2C1: the relay expander (0x20, SwitchTask's) and the configuration EEPROM (0x50).
type I2c1Bus = Mutex<Cs, I2c<'static, I2C1, i2c::Async>>;
type I2c1Device = I2cDevice<'static, Cs, I2c<'static, I2C1, i2c::Async>>;

const SWITCH_QUEUE: usize = 8;
const STORAGE_QUEUE: usize = 4;
/// Telemetry readers: console, HTTP, SNMP, health.
const TELEMETRY_READERS: usize = 4;
/// Current readers: SwitchTask's over-current protection.
const CURRENT_READERS: usize = 1;
/// MeterTask's mux requests use tokens from here up, clear of the front-ends' tokens.
const METER_TOKENS: u32 = 0x8000_0000;

static SWITCH_REQUESTS: Queue<Cs, SwitchRequest, SWITCH_QUEUE> = Queue::new(FullPolicy::RejectNew);
static STORAGE_REQUESTS: Queue<Cs, StorageRequest, STORAGE_QUEUE> =
    Queue::new(FullPolicy::RejectNew);
static STORAGE_REPLIES: Queue<Cs, StorageReply, STORAGE_QUEUE> = Queue::new(FullPolicy::DropOldest);
static TELEMETRY: Watch<Cs, [ChannelTelemetry; CHANNELS], TELEMETRY_READERS> = Watch::new();
static CURRENTS: Watch<Cs, [f32; CHANNELS], CURRENT_READERS> = Watch::new();

type Storer = StorageTask<'static, Cs, I2c1Device, Delay, STORAGE_QUEUE, STORAGE_QUEUE>;
type Meter = MeterTask<
    BufferedUartRx,
    EmbassyClock,
    SwitchQueueMux<'static, Cs, SWITCH_QUEUE>,
    WatchSink<'static, Cs, TELEMETRY_READERS, CURRENT_READERS>,
>;

#[embassy_executor::task]
async fn storage_task(mut task: Storer) -> ! {
    task.run().await
}

#[embassy_executor::task]
async fn meter_task(mut task: Meter) -> ! {
    task.run().await
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let p = embassy_rp::init(Default::default());

    // I2C1 on GPIO 2 (SDA) / 3 (SCL), shared: the EEPROM now, the relay expander with SwitchTask.
    let mut i2c_config = i2c::Config::default();
    i2c_config.frequency = 400_000;
    static I2C1_BUS: StaticCell<I2c1Bus> = StaticCell::new();
    let i2c1 = I2C1_BUS.init(Mutex::new(I2c::new_async(
        p.I2C1, p.PIN_3, p.PIN_2, Irqs, i2c_config,
    )));

    // Boot: the configuration comes first; the meter's calibration is part of it.
    let eeprom = Cat24c256::new(I2cDevice::new(i2c1), Delay, DEFAULT_ADDRESS);
    let mut storage = Storage::new(eeprom);
    let config = storage.load().await.config;

    // The eight HLW8032s share UART0 RX (GPIO 1) through the 74HC4051: 4800 baud, 8E1, receive only.
    let mut uart_config = uart::Config::default();
    uart_config.baudrate = 4800;
    uart_config.parity = uart::Parity::ParityEven;
    static METER_RX: StaticCell<[u8; 64]> = StaticCell::new();
    let meter_rx = BufferedUartRx::new(p.UART0, Irqs, p.PIN_1, METER_RX.init([0; 64]), uart_config);
    let meter = MeterTask::new(
        meter_rx,
        EmbassyClock,
        SwitchQueueMux::new(&SWITCH_REQUESTS, METER_TOKENS),
        WatchSink {
            telemetry: &TELEMETRY,
            currents: &CURRENTS,
        },
        MeterCore::new(MeterSettings::default(), config.calibration),
    );

    let storer = StorageTask::new(storage, &STORAGE_REQUESTS, &STORAGE_REPLIES);
    spawner.spawn(storage_task(storer).expect("storage task spawned once"));
    spawner.spawn(meter_task(meter).expect("meter task spawned once"));
}
