//! A loopback SPI bus on virtual time: MISO wired to MOSI, so every word clocked out comes back.
//!
//! This module owns the bus timing (8 clocks per byte at the bus clock, one timer per
//! operation, rounded once), who holds the bus, and its counters. None of the twins' parts
//! speaks SPI yet (the ENERGIS W5500 is modelled above the wire, as sockets); the loopback is
//! what the SPI side of [`blocking`](super::blocking) and a driver's SPI plumbing can be tested
//! against. It implements `embedded_hal_async::spi::SpiBus<u8>` and, with its chip select
//! managed by the bus itself, `SpiDevice<u8>` (a `DelayNs` operation waits on the kernel's
//! clock).
//!
//! Words read while nothing is written (a `read`, or the tail of an unequal `transfer`) come
//! back as the 0x00 the bus clocks out, which is what a real loopback wire returns for the
//! dummy bytes of `embedded-hal`'s contract.
use std::cell::RefCell;
use std::convert::Infallible;
use std::rc::Rc;

use embedded_hal_async::spi::{ErrorType, Operation, SpiBus, SpiDevice};
use firmware_core::time::{Duration, Instant};

use crate::kernel::{Kernel, SimClock};

/// What went over the loopback.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpiStats {
    /// Bytes clocked (each one out and back in).
    pub bytes: u64,
    /// Operations (reads, writes, transfers; each operation of a device transaction).
    pub operations: u64,
    /// Device transactions (chip select asserted, then released).
    pub transactions: u64,
}

struct State {
    hz: u32,
    busy_until: Instant,
    stats: SpiStats,
}

/// The loopback bus. Cheap to clone; clones share the wire.
#[derive(Clone)]
pub struct SpiLoopback {
    state: Rc<RefCell<State>>,
    clock: SimClock,
}

/// Why the loopback refused a setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiError {
    /// A zero clock would make every byte take forever.
    #[error("SPI clock must be above zero")]
    ZeroClock,
}

impl SpiLoopback {
    /// A loopback clocked at `hz` on `kernel`'s clock (`SpiLoopback::new(&k, 1_000_000)?`).
    pub fn new(kernel: &Kernel, hz: u32) -> Result<SpiLoopback, SpiError> {
        if hz == 0 {
            return Err(SpiError::ZeroClock);
        }
        Ok(SpiLoopback {
            state: Rc::new(RefCell::new(State {
                hz,
                busy_until: Instant::ZERO,
                stats: SpiStats::default(),
            })),
            clock: kernel.clock(),
        })
    }

    /// The counters.
    pub fn stats(&self) -> SpiStats {
        self.state.borrow().stats
    }

    /// Time `bytes` take on the wire, rounded once to the microsecond.
    pub fn wire_time(&self, bytes: usize) -> Duration {
        let hz = u128::from(self.state.borrow().hz);
        let bits = bytes as u128 * 8;
        let us = (bits * 1_000_000 + hz / 2) / hz;
        Duration::from_micros(u64::try_from(us).unwrap_or(u64::MAX))
    }

    /// Wait for the wire, occupy it for `bytes`, and return when they are clocked.
    async fn clock_bytes(&self, bytes: usize) {
        loop {
            let free = self.state.borrow().busy_until;
            if self.clock.now() >= free {
                break;
            }
            self.clock.sleep_until(free).await;
        }
        let end = self.clock.now() + self.wire_time(bytes);
        {
            let mut st = self.state.borrow_mut();
            st.busy_until = end;
            st.stats.bytes += bytes as u64;
            st.stats.operations += 1;
        }
        self.clock.sleep_until(end).await;
    }
}

impl ErrorType for SpiLoopback {
    type Error = Infallible;
}

impl SpiBus<u8> for SpiLoopback {
    async fn read(&mut self, words: &mut [u8]) -> Result<(), Infallible> {
        words.fill(0);
        self.clock_bytes(words.len()).await;
        Ok(())
    }

    async fn write(&mut self, words: &[u8]) -> Result<(), Infallible> {
        self.clock_bytes(words.len()).await;
        Ok(())
    }

    async fn transfer(&mut self, read: &mut [u8], write: &[u8]) -> Result<(), Infallible> {
        for (i, slot) in read.iter_mut().enumerate() {
            *slot = write.get(i).copied().unwrap_or(0);
        }
        self.clock_bytes(read.len().max(write.len())).await;
        Ok(())
    }

    async fn transfer_in_place(&mut self, words: &mut [u8]) -> Result<(), Infallible> {
        self.clock_bytes(words.len()).await;
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Infallible> {
        let until = self.state.borrow().busy_until;
        self.clock.sleep_until(until).await;
        Ok(())
    }
}

impl SpiDevice<u8> for SpiLoopback {
    async fn transaction(
        &mut self,
        operations: &mut [Operation<'_, u8>],
    ) -> Result<(), Infallible> {
        self.state.borrow_mut().stats.transactions += 1;
        for op in operations.iter_mut() {
            match op {
                Operation::Read(words) => SpiBus::read(self, words).await?,
                Operation::Write(words) => SpiBus::write(self, words).await?,
                Operation::Transfer(read, write) => SpiBus::transfer(self, read, write).await?,
                Operation::TransferInPlace(words) => SpiBus::transfer_in_place(self, words).await?,
                Operation::DelayNs(ns) => {
                    let us = u64::from(*ns).div_ceil(1_000);
                    self.clock.sleep(Duration::from_micros(us)).await;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::periph::blocking::BlockingKernel;

    #[test]
    fn what_goes_out_comes_back_after_eight_clocks_a_byte() {
        use embedded_hal::spi::SpiBus as _;
        let k = Kernel::new(1);
        let spi = SpiLoopback::new(&k, 1_000_000).expect("clock");
        let sim = BlockingKernel::new(k);
        let mut bus = sim.wrap(spi.clone());
        let mut read = [0u8; 6];
        bus.transfer(&mut read, b"W5500").expect("transfer");
        assert_eq!(&read, b"W5500\0");
        // Six bytes at 1 MHz: 48 µs.
        assert_eq!(sim.kernel().now(), Instant::from_micros(48));
        let mut words = *b"echo";
        bus.transfer_in_place(&mut words).expect("in place");
        assert_eq!(&words, b"echo");
        bus.read(&mut words).expect("read");
        assert_eq!(words, [0; 4]);
        assert_eq!(sim.kernel().now(), Instant::from_micros(48 + 32 + 32));
        assert_eq!(spi.stats().bytes, 14);
    }

    #[test]
    fn a_device_transaction_runs_its_operations_and_delays_in_order() {
        use embedded_hal::spi::SpiDevice as _;
        let k = Kernel::new(1);
        let spi = SpiLoopback::new(&k, 8_000_000).expect("clock");
        let sim = BlockingKernel::new(k);
        let mut dev = sim.wrap(spi.clone());
        let mut back = [0u8; 2];
        dev.transaction(&mut [
            embedded_hal::spi::Operation::Write(&[0x0f, 0x00]),
            embedded_hal::spi::Operation::DelayNs(10_000),
            embedded_hal::spi::Operation::Transfer(&mut back, &[0xA5, 0x5A]),
        ])
        .expect("transaction");
        assert_eq!(back, [0xA5, 0x5A]);
        // 2 µs + 10 µs + 2 µs.
        assert_eq!(sim.kernel().now(), Instant::from_micros(14));
        let s = spi.stats();
        assert_eq!((s.transactions, s.operations, s.bytes), (1, 2, 4));
    }

    #[test]
    fn a_zero_clock_is_refused() {
        let k = Kernel::new(1);
        assert_eq!(SpiLoopback::new(&k, 0).err(), Some(SpiError::ZeroClock));
    }
}
