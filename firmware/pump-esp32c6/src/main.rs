//! Pump controller on the ESP32-C6: creates the peripherals, the shared state and the tasks of
//! `firmware-core`'s pump side. The firmware logic lives there; see `README.md` for what is wired.
#![no_std]
#![no_main]

use board_clock::EmbassyClock;
use embassy_executor::Spawner;
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex as Cs;
use esp_backtrace as _;
use esp_hal::Async;
use esp_hal::clock::CpuClock;
use esp_hal::gpio::{Input, InputConfig, Pull};
use esp_hal::timer::timg::TimerGroup;
use esp_hal::uart::{self, Uart, UartRx, UartTx};
use firmware_core::pump::Governor;
use firmware_core::pump::dispense::{MotionChannels, MotionConfig, MotionTask, PumpMotion};
use firmware_core::pump::estop::{EstopButton, EstopTrigger};

esp_bootloader_esp_idf::esp_app_desc!();

/// Tasks that may wait on governor changes: MQTT outbox, status publisher, WebSocket feed, LEDs.
const GOVERNOR_WATCHERS: usize = 4;

static GOVERNOR: Governor<Cs, GOVERNOR_WATCHERS> = Governor::new();
static MOTION: MotionChannels<Cs> = MotionChannels::new();

type Motion = MotionTask<
    'static,
    Cs,
    GOVERNOR_WATCHERS,
    UartRx<'static, Async>,
    UartTx<'static, Async>,
    EmbassyClock,
>;

#[embassy_executor::task]
async fn motion_task(mut task: Motion) -> ! {
    task.run().await
}

/// The E-stop input (active low): every press edge signals the motion task, which sends the
/// feed hold `!` before anything else. A button held at boot counts as a press.
#[embassy_executor::task]
async fn estop_task(mut pin: Input<'static>) -> ! {
    let mut button = EstopButton::new();
    loop {
        if button.handle_level(pin.is_low()) {
            MOTION.estop.signal(EstopTrigger::Button);
        }
        pin.wait_for_any_edge().await;
    }
}

#[esp_rtos::main]
async fn main(spawner: Spawner) -> ! {
    let p = esp_hal::init(esp_hal::Config::default().with_cpu_clock(CpuClock::max()));
    esp_rtos::start(TimerGroup::new(p.TIMG0).timer0, p.FROM_CPU_INTR0);

    // FluidNC on UART1: TX GPIO 4, RX GPIO 5, 115200 8N1 (FluidNC's default).
    let fluidnc = Uart::new(p.UART1, uart::Config::default().with_baudrate(115_200))
        .expect("UART1 configuration is valid")
        .with_tx(p.GPIO4)
        .with_rx(p.GPIO5)
        .into_async();
    let (rx, tx) = fluidnc.split();
    let core = PumpMotion::new(&GOVERNOR, MotionConfig::default());
    let motion = MotionTask::new(core, rx, tx, EmbassyClock, &MOTION);

    // E-stop on GPIO 9 (the DevKitC-1's BOOT button), pulled up, pressed = low.
    let estop = Input::new(p.GPIO9, InputConfig::default().with_pull(Pull::Up));

    spawner.spawn(motion_task(motion).expect("motion task spawned once"));
    spawner.spawn(estop_task(estop).expect("estop task spawned once"));
    // The network side (WiFi, MQTT, WebSocket) is not wired yet; main has nothing else to do.
    core::future::pending().await
}
