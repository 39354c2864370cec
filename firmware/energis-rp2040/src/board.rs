//! The RP2040's side of the ports that firmware-core's PDU tasks leave to the platform.
use embassy_rp::gpio::Input;
use embassy_rp::watchdog::Watchdog;
use embassy_time::Duration;
use firmware_core::pdu::buttons::ButtonPins;
use firmware_core::pdu::health::{HealthPlatform, TaskId};

/// The four front-panel buttons, MINUS, PLUS, SET, PWR (GPIO 12-15), active low.
pub struct FrontPanel(pub [Input<'static>; 4]);

impl ButtonPins for FrontPanel {
    fn sample(&mut self) -> u8 {
        self.0
            .iter()
            .enumerate()
            .fold(0, |bits, (i, pin)| bits | (u8::from(pin.is_low()) << i))
    }
}

/// HealthTask's platform: the RP2040 watchdog. No stack painting and no heap, so no watermarks.
pub struct Health {
    watchdog: Watchdog,
    period: Duration,
}

impl Health {
    /// The RP2040 watchdog counts at most 0xFF_FFFF / 2 µs (erratum RP2040-E1).
    const MAX_PERIOD_MS: u32 = 8_388;

    /// Start `watchdog` with the configured period (clamped to what the chip can count).
    pub fn start(mut watchdog: Watchdog, period_ms: u32) -> Self {
        let period = Duration::from_millis(u64::from(period_ms.clamp(1, Self::MAX_PERIOD_MS)));
        watchdog.start(period);
        Health { watchdog, period }
    }
}

impl HealthPlatform for Health {
    fn feed_watchdog(&mut self) {
        self.watchdog.feed(self.period);
    }
    fn stack_free_bytes(&mut self, _task: TaskId) -> Option<u32> {
        None
    }
    fn heap_free_bytes(&mut self) -> Option<u32> {
        None
    }
}
