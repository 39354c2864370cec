//! [`firmware_core::ports::Clock`] on `embassy-time`, for the board crates.
//!
//! The library never picks a time driver or a tick rate: the board's HAL provides the driver
//! (embassy-rp's `time-driver`, esp-rtos), and this adapter only converts between
//! `embassy_time::Instant` and firmware-core's microsecond [`Instant`].
#![no_std]

use embassy_time::Timer;
use firmware_core::ports::Clock;
use firmware_core::time::Instant;

/// The embassy-time clock. Zero-sized: every copy reads the one driver, so clones share one
/// timeline as the port's contract asks.
#[derive(Debug, Clone, Copy, Default)]
pub struct EmbassyClock;

impl Clock for EmbassyClock {
    fn now(&self) -> Instant {
        Instant::from_micros(embassy_time::Instant::now().as_micros())
    }

    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> {
        // `Instant::MAX` ("never") and anything past embassy-time's range wait forever instead
        // of overflowing the tick conversion.
        let at = embassy_time::Instant::try_from_micros(deadline.as_micros())
            .unwrap_or(embassy_time::Instant::MAX);
        Timer::at(at)
    }
}
