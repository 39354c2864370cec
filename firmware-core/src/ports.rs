//! The few traits of our own that a platform implements for the firmware.
//!
//! Everything else a task touches is an ecosystem trait: `embedded_hal_async::i2c::I2c` for I2C
//! parts, `embedded_hal_async::delay::DelayNs` for short busy waits inside drivers,
//! `embedded_io_async::{Read, Write}` for UARTs. Each port is a contract: the MUST clauses below
//! are what the firmware relies on, and what a new platform (a board, the simulator) has to keep.
use core::future::Future;

use crate::time::{Duration, Instant};

/// Monotonic time and waiting for it.
///
/// On a board this wraps `embassy_time` (`Instant::now()`, `Timer::at`); in the simulator it is
/// the kernel's virtual clock, so a whole day of firmware time can pass in a second of wall time.
///
/// # Contract
/// * `now()` MUST be monotonic: never smaller than an earlier result on the same clock.
/// * `now()` MUST NOT block or yield, and MUST be cheap enough to call on every event.
/// * `sleep_until(t)` MUST NOT complete before `now() >= t`, and SHOULD complete as soon as it is.
///   A deadline in the past completes at once (it still MAY yield once).
/// * Dropping an unfinished `sleep_until` future MUST cancel it without side effects, so a task
///   can `select` between a queue and a deadline and loop.
/// * Clones MUST share one timeline.
pub trait Clock {
    /// The current instant.
    fn now(&self) -> Instant;

    /// Wait until `deadline`.
    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()>;

    /// Wait for `d` from now.
    fn sleep(&self, d: Duration) -> impl Future<Output = ()> {
        self.sleep_until(self.now() + d)
    }
}

impl<C: Clock> Clock for &C {
    fn now(&self) -> Instant {
        (**self).now()
    }
    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> {
        (**self).sleep_until(deadline)
    }
}
