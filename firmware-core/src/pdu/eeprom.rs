//! Driver for the CAT24C256 I²C EEPROM (32 KiB, 64-byte pages) that holds the PDU's configuration.
//!
//! What the part demands and this driver does:
//! * **Two address bytes**, high byte first, after the control byte (`0x50` on ENERGIS).
//! * **Page writes wrap**: inside one write only the low 6 address bits advance, so bytes past a
//!   64-byte page boundary would overwrite the start of the same page. [`Cat24c256::write`] cuts
//!   every write into chunks that never cross a page boundary.
//! * **Write cycle**: after the STOP of a page write the part is busy for up to 5 ms and does not
//!   acknowledge its address. Instead of a fixed 5 ms wait (what ENERGIS does), the driver *ACK
//!   polls*: it addresses the part with a one-byte read until it answers (the datasheet polls
//!   with a write control byte, but address-only writes are not supported by every I²C
//!   controller, the RP2040's among them, and a busy part ignores reads alike), waiting
//!   [`Cat24c256::POLL_INTERVAL_US`] between attempts through `DelayNs`, and gives up after
//!   [`Cat24c256::MAX_POLLS`] attempts with [`EepromError::WriteTimeout`]. The bound matters: a
//!   part that never answers must not hang StorageTask.
//! * **Sequential reads** roll over from 0x7FFF to 0x0000; the driver refuses ranges past the end
//!   instead ([`EepromError::OutOfRange`]), since a rollover is never what the caller meant.
//!
//! Errors are values: the bus error is handed back inside [`EepromError::I2c`].
use core::fmt;

use embedded_hal_async::delay::DelayNs;
use embedded_hal_async::i2c::I2c;

/// The ENERGIS EEPROM's 7-bit address (A2..A0 tied low).
pub const DEFAULT_ADDRESS: u8 = 0x50;

/// Errors of [`Cat24c256`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum EepromError<E> {
    /// The bus reported an error (NACK, arbitration loss, …).
    I2c(E),
    /// The range runs past the end of the 32 KiB array.
    OutOfRange {
        /// First address asked for.
        address: u16,
        /// Number of bytes asked for.
        len: usize,
    },
    /// The part did not acknowledge within the ACK-polling bound after a page write.
    WriteTimeout {
        /// Start address of the page write that did not finish.
        address: u16,
    },
}

impl<E: fmt::Debug> fmt::Display for EepromError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EepromError::I2c(e) => write!(f, "i2c error: {e:?}"),
            EepromError::OutOfRange { address, len } => {
                write!(f, "{len} bytes at 0x{address:04X} run past the end")
            }
            EepromError::WriteTimeout { address } => {
                write!(f, "no ACK after the page write at 0x{address:04X}")
            }
        }
    }
}

impl<E: fmt::Debug> core::error::Error for EepromError<E> {}

/// A CAT24C256 (or 24LC256 / AT24C256: same geometry) on an async I²C bus.
pub struct Cat24c256<I2C, D> {
    i2c: I2C,
    delay: D,
    address: u8,
    stats: EepromStats,
}

/// Counters of a [`Cat24c256`], for telemetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct EepromStats {
    /// Page writes issued.
    pub page_writes: u32,
    /// ACK-polling attempts that were not acknowledged (the part was busy).
    pub busy_polls: u32,
    /// Bus errors returned to callers.
    pub errors: u32,
}

impl<I2C: I2c, D: DelayNs> Cat24c256<I2C, D> {
    /// Array size in bytes.
    pub const SIZE: usize = 32 * 1024;
    /// Page size in bytes.
    pub const PAGE: usize = 64;
    /// Wait between two ACK-polling attempts.
    pub const POLL_INTERVAL_US: u32 = 250;
    /// ACK-polling attempts before [`EepromError::WriteTimeout`]: 40 × 250 µs = 10 ms, twice the
    /// datasheet's 5 ms maximum write cycle.
    pub const MAX_POLLS: u32 = 40;

    /// A driver for the part at 7-bit `address` (see [`DEFAULT_ADDRESS`]).
    pub fn new(i2c: I2C, delay: D, address: u8) -> Self {
        Cat24c256 {
            i2c,
            delay,
            address,
            stats: EepromStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> EepromStats {
        self.stats
    }

    /// Give the bus and delay back.
    pub fn release(self) -> (I2C, D) {
        (self.i2c, self.delay)
    }

    fn check_range(address: u16, len: usize) -> Result<(), EepromError<I2C::Error>> {
        match usize::from(address).checked_add(len) {
            Some(end) if end <= Self::SIZE => Ok(()),
            _ => Err(EepromError::OutOfRange { address, len }),
        }
    }

    fn bus_error(&mut self, e: I2C::Error) -> EepromError<I2C::Error> {
        self.stats.errors = self.stats.errors.wrapping_add(1);
        EepromError::I2c(e)
    }

    /// Read `buf.len()` bytes from `address` (random read + sequential read).
    pub async fn read(
        &mut self,
        address: u16,
        buf: &mut [u8],
    ) -> Result<(), EepromError<I2C::Error>> {
        Self::check_range(address, buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        match self
            .i2c
            .write_read(self.address, &address.to_be_bytes(), buf)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => Err(self.bus_error(e)),
        }
    }

    /// Write `data` at `address`, one page-aligned chunk at a time, ACK polling after each.
    ///
    /// On an error, the chunks before the failing one are stored, the failing one may be partly
    /// stored, and nothing after it is written.
    pub async fn write(
        &mut self,
        address: u16,
        data: &[u8],
    ) -> Result<(), EepromError<I2C::Error>> {
        Self::check_range(address, data.len())?;
        let mut at = usize::from(address);
        let mut rest = data;
        while !rest.is_empty() {
            let room = Self::PAGE - at % Self::PAGE;
            let (chunk, tail) = rest.split_at(room.min(rest.len()));
            // `check_range` bounds `at` below SIZE, which fits u16.
            let chunk_addr = at as u16;
            let mut frame = [0u8; 2 + 64];
            let [hi, lo] = chunk_addr.to_be_bytes();
            frame[0] = hi;
            frame[1] = lo;
            frame[2..2 + chunk.len()].copy_from_slice(chunk);
            self.stats.page_writes = self.stats.page_writes.wrapping_add(1);
            if let Err(e) = self
                .i2c
                .write(self.address, &frame[..2 + chunk.len()])
                .await
            {
                return Err(self.bus_error(e));
            }
            self.wait_write_cycle(chunk_addr).await?;
            at += chunk.len();
            rest = tail;
        }
        Ok(())
    }

    /// ACK polling: address the part until it acknowledges, bounded by [`Self::MAX_POLLS`].
    async fn wait_write_cycle(&mut self, page_address: u16) -> Result<(), EepromError<I2C::Error>> {
        for _ in 0..Self::MAX_POLLS {
            // A current-address read of one byte: harmless, as every read here sets its
            // address first.
            let mut probe = [0u8; 1];
            if self.i2c.read(self.address, &mut probe).await.is_ok() {
                return Ok(());
            }
            self.stats.busy_polls = self.stats.busy_polls.wrapping_add(1);
            self.delay.delay_us(Self::POLL_INTERVAL_US).await;
        }
        self.stats.errors = self.stats.errors.wrapping_add(1);
        warn!("eeprom: no ACK after page write at 0x{:04X}", page_address);
        Err(EepromError::WriteTimeout {
            address: page_address,
        })
    }
}

#[cfg(any(test, feature = "selftest"))]
pub(crate) mod mock {
    //! A CAT24C256 that follows the datasheet, for tests of this driver and of StorageTask.
    use embedded_hal_async::i2c::{ErrorKind, ErrorType, I2c, NoAcknowledgeSource, Operation};

    /// What happens to the rest of the page being written when the power is cut.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum CutMode {
        /// Bytes before the cut are stored, the rest of the page keeps its old contents.
        Clean,
        /// Bytes before the cut are stored, the rest of the page reads as garbage.
        Garbage,
    }

    /// Mock part. `mem` is public so tests can inspect and damage it.
    pub struct MockEeprom {
        pub mem: [u8; 32 * 1024],
        pub address: u8,
        pointer: usize,
        /// Address attempts NACKed after each page write (the write cycle); 0 = always ready.
        pub busy_polls_per_write: u32,
        busy: u32,
        /// Bytes that may still reach the array before the power goes; `None` = no cut planned.
        pub power_budget: Option<usize>,
        pub cut_mode: CutMode,
        /// WP pin high: writes are acknowledged but nothing is stored.
        pub write_protect: bool,
        pub powered: bool,
        pub page_writes: u32,
        pub bytes_written: usize,
    }

    impl MockEeprom {
        pub fn new() -> Self {
            MockEeprom {
                mem: [0xFF; 32 * 1024],
                address: 0x50,
                pointer: 0,
                busy_polls_per_write: 0,
                busy: 0,
                power_budget: None,
                cut_mode: CutMode::Clean,
                write_protect: false,
                powered: true,
                page_writes: 0,
                bytes_written: 0,
            }
        }

        /// Cut the power after `n` more bytes reach the array.
        pub fn cut_after(&mut self, n: usize, mode: CutMode) {
            self.power_budget = Some(n);
            self.cut_mode = mode;
        }

        /// Power back on (a reboot): the pending cut is cleared, the array keeps its contents.
        pub fn power_on(&mut self) {
            self.powered = true;
            self.power_budget = None;
            self.busy = 0;
        }

        fn nack() -> ErrorKind {
            ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address)
        }

        /// Store a page write the way the part does at STOP: within one page, wrapping.
        fn commit(&mut self, start: usize, data: &[u8]) {
            self.page_writes += 1;
            self.busy = self.busy_polls_per_write;
            if self.write_protect {
                return;
            }
            let page = start & !63;
            for (i, b) in data.iter().enumerate() {
                let at = page | ((start + i) & 63);
                if let Some(budget) = self.power_budget.as_mut() {
                    if *budget == 0 {
                        self.powered = false;
                        if self.cut_mode == CutMode::Garbage {
                            for j in i..data.len() {
                                self.mem[page | ((start + j) & 63)] = 0xA5 ^ (j as u8);
                            }
                        }
                        return;
                    }
                    *budget -= 1;
                }
                self.mem[at] = *b;
                self.bytes_written += 1;
            }
            self.pointer = page | ((start + data.len()) & 63);
        }
    }

    impl ErrorType for MockEeprom {
        type Error = ErrorKind;
    }

    impl I2c for MockEeprom {
        async fn transaction(
            &mut self,
            address: u8,
            operations: &mut [Operation<'_>],
        ) -> Result<(), Self::Error> {
            if address != self.address || !self.powered {
                return Err(Self::nack());
            }
            if self.busy > 0 {
                self.busy -= 1;
                return Err(Self::nack());
            }
            let mut pending: Option<(usize, heapless::Vec<u8, 256>)> = None;
            for op in operations.iter_mut() {
                match op {
                    Operation::Write(bytes) => {
                        if bytes.len() >= 2 {
                            let start =
                                usize::from(u16::from_be_bytes([bytes[0], bytes[1]])) & 0x7FFF;
                            self.pointer = start;
                            let mut data = heapless::Vec::new();
                            // The part's page buffer holds 64 bytes; more wrap. Keep the last
                            // write to each position, like the part.
                            for b in &bytes[2..] {
                                if data.push(*b).is_err() {
                                    return Err(ErrorKind::Other);
                                }
                            }
                            pending = if data.is_empty() {
                                None
                            } else {
                                Some((start, data))
                            };
                        } else if bytes.len() == 1 {
                            // Only the high address byte: the part waits for the low one.
                            return Err(ErrorKind::Other);
                        }
                    }
                    Operation::Read(buf) => {
                        for b in buf.iter_mut() {
                            *b = self.mem[self.pointer];
                            self.pointer = (self.pointer + 1) & 0x7FFF;
                        }
                    }
                }
            }
            if let Some((start, data)) = pending {
                // Wrap inside the page: with more than 64 bytes only the last 64 survive, in
                // their wrapped positions; `commit` writes them in order, which gives the same.
                self.commit(start, &data);
            }
            Ok(())
        }
    }

    /// A delay that takes no time and counts calls.
    #[derive(Default)]
    pub struct NoDelay {
        pub calls: u32,
    }

    impl embedded_hal_async::delay::DelayNs for NoDelay {
        async fn delay_ns(&mut self, _ns: u32) {
            self.calls += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::mock::{MockEeprom, NoDelay};
    use super::*;
    use embassy_futures::block_on;

    type Eeprom = Cat24c256<MockEeprom, NoDelay>;

    fn eeprom() -> Eeprom {
        Cat24c256::new(MockEeprom::new(), NoDelay::default(), DEFAULT_ADDRESS)
    }

    fn pattern<const N: usize>(seed: u8) -> [u8; N] {
        core::array::from_fn(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
    }

    #[test]
    fn a_write_across_page_boundaries_lands_where_it_was_aimed() {
        let mut e = eeprom();
        let data: [u8; 200] = pattern(3);
        block_on(e.write(0x0030, &data)).unwrap();
        let mut back = [0u8; 200];
        block_on(e.read(0x0030, &mut back)).unwrap();
        assert_eq!(back, data);
        // 0x30..0x40, then 0x40, 0x80, 0xC0 (partial): four page writes, none wrapped.
        assert_eq!(e.stats().page_writes, 4);
        let (mock, _) = e.release();
        assert_eq!(mock.mem[0x2F], 0xFF);
        assert_eq!(mock.mem[0x30 + 200], 0xFF);
    }

    #[test]
    fn ack_polling_waits_out_the_write_cycle() {
        let mut e = eeprom();
        e.i2c.busy_polls_per_write = 5;
        block_on(e.write(0x0100, &pattern::<100>(1))).unwrap();
        assert_eq!(e.stats().busy_polls, 10);
        assert_eq!(e.delay.calls, 10);
    }

    #[test]
    fn a_part_that_never_answers_gives_a_write_timeout_not_a_hang() {
        let mut e = eeprom();
        e.i2c.busy_polls_per_write = 1_000;
        assert_eq!(
            block_on(e.write(0x0100, &[1, 2, 3])),
            Err(EepromError::WriteTimeout { address: 0x0100 })
        );
    }

    #[test]
    fn ranges_past_the_end_are_refused() {
        let mut e = eeprom();
        let mut buf = [0u8; 4];
        assert!(matches!(
            block_on(e.read(0x7FFE, &mut buf)),
            Err(EepromError::OutOfRange { .. })
        ));
        assert!(matches!(
            block_on(e.write(0xFFFF, &[1])),
            Err(EepromError::OutOfRange { .. })
        ));
        block_on(e.write(0x7FFC, &[9; 4])).unwrap();
    }

    proptest::proptest! {
        #[test]
        fn any_in_range_write_reads_back_and_touches_nothing_else(
            address in 0u16..0x8000, data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        ) {
            let mut e = eeprom();
            let fits = usize::from(address) + data.len() <= Eeprom::SIZE;
            let result = block_on(e.write(address, &data));
            proptest::prop_assert_eq!(result.is_ok(), fits);
            let (mock, _) = e.release();
            let start = usize::from(address);
            for (i, b) in mock.mem.iter().enumerate() {
                let expected = if fits && (start..start + data.len()).contains(&i) {
                    data[i - start]
                } else {
                    0xFF
                };
                proptest::prop_assert_eq!(*b, expected, "byte 0x{:04X}", i);
            }
        }
    }

    #[test]
    fn bus_errors_come_back_as_values() {
        let mut e = Cat24c256::new(MockEeprom::new(), NoDelay::default(), 0x51);
        let mut buf = [0u8; 1];
        assert!(matches!(
            block_on(e.read(0, &mut buf)),
            Err(EepromError::I2c(_))
        ));
        assert_eq!(e.stats().errors, 1);
    }
}
