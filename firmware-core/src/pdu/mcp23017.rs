//! `Mcp23017<I2C>`: the MCP23017 16-bit I2C GPIO expander, driven the way ENERGIS drives it.
//!
//! The PDU has three of them (relays + meter mux at 0x20, channel/status LEDs at 0x21, selection
//! LEDs at 0x23), all owned by SwitchTask. The driver keeps what the real firmware
//! (`drivers/MCP23017_driver.c`) does, so the simulated part sees the same bus traffic:
//!
//! * [`Mcp23017::init`]: IOCON = 0x20 (BANK=0, SEQOP=1 byte mode) written at both 0x0A and 0x0B,
//!   IODIRA/B = 0x00 (all outputs), GPPUA/B = 0, OLATA/B read back into the shadow registers,
//!   then the shadows written back to OLATA/B.
//! * Every access is single-register: a write is `[reg, value]`, a read is `[reg]` then a
//!   repeated-start one-byte read.
//! * Outputs are written to OLATA/B; the driver keeps a shadow of both latches so a caller can do
//!   read-modify-write of a few bits ([`Mcp23017::update_port`]) without reading the chip.
//! * Each access is tried up to [`Mcp23017::retries`] times (3 by default, as on ENERGIS).
//!
//! Hand-written rather than taken from a crate (`port-expander`, `mcp230xx`): those are blocking
//! embedded-hal drivers with their own access patterns, while the twin's simulated MCP23017 is
//! checked against the ENERGIS bus traffic, so this driver reproduces it transaction for
//! transaction on `embedded_hal_async`.
//!
//! I2C errors are values: every failed attempt is counted in [`McpStats`] and the last failure is
//! returned as [`McpError`]; nothing here panics. Deciding what a run of errors means
//! (`FAULT_SAFE`) is SwitchTask's business, not the driver's.
use core::fmt;

use embedded_hal_async::i2c::{Error as _, ErrorKind, I2c};

/// MCP23017 register addresses with IOCON.BANK = 0 (A/B interleaved), the layout ENERGIS uses.
pub mod reg {
    /// Port A direction (1 = input).
    pub const IODIRA: u8 = 0x00;
    /// Port B direction (1 = input).
    pub const IODIRB: u8 = 0x01;
    /// Configuration register (also at 0x0B).
    pub const IOCON: u8 = 0x0A;
    /// Configuration register, second address.
    pub const IOCON_B: u8 = 0x0B;
    /// Port A pull-ups.
    pub const GPPUA: u8 = 0x0C;
    /// Port B pull-ups.
    pub const GPPUB: u8 = 0x0D;
    /// Port A pin levels (write = OLATA).
    pub const GPIOA: u8 = 0x12;
    /// Port B pin levels (write = OLATB).
    pub const GPIOB: u8 = 0x13;
    /// Port A output latch.
    pub const OLATA: u8 = 0x14;
    /// Port B output latch.
    pub const OLATB: u8 = 0x15;
}

/// IOCON value ENERGIS writes: BANK=0, SEQOP=1 (byte mode: no address auto-increment).
pub const IOCON_INIT: u8 = 0x20;

/// One of the two 8-bit ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Port {
    /// GPA0..7.
    A,
    /// GPB0..7.
    B,
}

impl Port {
    /// The port's output latch register.
    pub const fn olat(self) -> u8 {
        match self {
            Port::A => reg::OLATA,
            Port::B => reg::OLATB,
        }
    }
    const fn index(self) -> usize {
        match self {
            Port::A => 0,
            Port::B => 1,
        }
    }
}

/// An I2C access to the expander failed on every attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub struct McpError {
    /// The expander's 7-bit address.
    pub address: u8,
    /// The register being accessed.
    pub register: u8,
    /// What the bus reported on the last attempt.
    pub kind: McpErrorKind,
}

/// The bus error, reduced to what the firmware distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum McpErrorKind {
    /// The expander did not acknowledge (absent, held in reset, or its address NACKed).
    NoAcknowledge,
    /// Arbitration lost or bus error (stuck line, glitch).
    Bus,
    /// Any other error the HAL reports.
    Other,
}

impl McpError {
    /// A small numeric code for replies and logs: 1 NACK, 2 bus, 3 other.
    pub const fn code(&self) -> u16 {
        match self.kind {
            McpErrorKind::NoAcknowledge => 1,
            McpErrorKind::Bus => 2,
            McpErrorKind::Other => 3,
        }
    }
}

impl fmt::Display for McpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            McpErrorKind::NoAcknowledge => "no acknowledge",
            McpErrorKind::Bus => "bus error",
            McpErrorKind::Other => "I2C error",
        };
        write!(
            f,
            "MCP23017 0x{:02X} register 0x{:02X}: {}",
            self.address, self.register, what
        )
    }
}

impl core::error::Error for McpError {}

/// Counters of one expander, for health and telemetry. They wrap at `u32::MAX`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct McpStats {
    /// Successful register accesses.
    pub accesses: u32,
    /// Failed attempts, retries included.
    pub failed_attempts: u32,
    /// Accesses that failed on every attempt (returned as an error).
    pub failed_accesses: u32,
}

/// An MCP23017 on an `embedded_hal_async` I2C bus (or a shared-bus device handle).
pub struct Mcp23017<I2C> {
    i2c: I2C,
    address: u8,
    olat: [u8; 2],
    retries: u8,
    stats: McpStats,
}

impl<I2C: I2c> Mcp23017<I2C> {
    /// A driver for the expander at 7-bit `address` (0x20..=0x27). Nothing is sent until
    /// [`init`](Self::init). Shadows start at the power-on value 0.
    pub fn new(i2c: I2C, address: u8) -> Self {
        Mcp23017 {
            i2c,
            address,
            olat: [0; 2],
            retries: 3,
            stats: McpStats::default(),
        }
    }

    /// Attempts per access (at least 1).
    pub fn retries(&self) -> u8 {
        self.retries
    }

    /// Set the attempts per access; 0 is taken as 1.
    pub fn set_retries(&mut self, attempts: u8) {
        self.retries = attempts.max(1);
    }

    /// The 7-bit address.
    pub fn address(&self) -> u8 {
        self.address
    }

    /// The counters.
    pub fn stats(&self) -> McpStats {
        self.stats
    }

    /// The shadow of a port's output latch (what the driver last wrote or read back).
    pub fn shadow(&self, port: Port) -> u8 {
        self.olat[port.index()]
    }

    /// The bus, back (for tests and for a platform that rebuilds the driver).
    pub fn release(self) -> I2C {
        self.i2c
    }

    /// Configure the expander as ENERGIS does (see the module docs). On success the shadows hold
    /// the latches as read back and have been written back unchanged.
    pub async fn init(&mut self) -> Result<(), McpError> {
        self.write_reg(reg::IOCON, IOCON_INIT).await?;
        self.write_reg(reg::IOCON_B, IOCON_INIT).await?;
        self.write_reg(reg::IODIRA, 0x00).await?;
        self.write_reg(reg::IODIRB, 0x00).await?;
        self.write_reg(reg::GPPUA, 0x00).await?;
        self.write_reg(reg::GPPUB, 0x00).await?;
        self.olat[0] = self.read_reg(reg::OLATA).await?;
        self.olat[1] = self.read_reg(reg::OLATB).await?;
        self.write_reg(reg::OLATA, self.olat[0]).await?;
        self.write_reg(reg::OLATB, self.olat[1]).await?;
        Ok(())
    }

    /// Write a port's output latch; the shadow follows only when the write succeeded.
    pub async fn write_port(&mut self, port: Port, value: u8) -> Result<(), McpError> {
        self.write_reg(port.olat(), value).await?;
        self.olat[port.index()] = value;
        Ok(())
    }

    /// Read-modify-write on the shadow: the bits in `mask` take the value of `bits`.
    pub async fn update_port(&mut self, port: Port, mask: u8, bits: u8) -> Result<(), McpError> {
        let value = (self.olat[port.index()] & !mask) | (bits & mask);
        self.write_port(port, value).await
    }

    /// Single-register write `[reg, value]`, with retries.
    pub async fn write_reg(&mut self, register: u8, value: u8) -> Result<(), McpError> {
        let mut last = McpErrorKind::Other;
        for _ in 0..self.retries.max(1) {
            match self.i2c.write(self.address, &[register, value]).await {
                Ok(()) => {
                    self.stats.accesses = self.stats.accesses.wrapping_add(1);
                    return Ok(());
                }
                Err(e) => {
                    self.stats.failed_attempts = self.stats.failed_attempts.wrapping_add(1);
                    last = classify(e.kind());
                }
            }
        }
        Err(self.fail(register, last))
    }

    /// Single-register read: `[reg]`, repeated start, one byte; with retries.
    pub async fn read_reg(&mut self, register: u8) -> Result<u8, McpError> {
        let mut last = McpErrorKind::Other;
        for _ in 0..self.retries.max(1) {
            let mut buf = [0u8; 1];
            match self
                .i2c
                .write_read(self.address, &[register], &mut buf)
                .await
            {
                Ok(()) => {
                    self.stats.accesses = self.stats.accesses.wrapping_add(1);
                    return Ok(buf[0]);
                }
                Err(e) => {
                    self.stats.failed_attempts = self.stats.failed_attempts.wrapping_add(1);
                    last = classify(e.kind());
                }
            }
        }
        Err(self.fail(register, last))
    }

    fn fail(&mut self, register: u8, kind: McpErrorKind) -> McpError {
        self.stats.failed_accesses = self.stats.failed_accesses.wrapping_add(1);
        let err = McpError {
            address: self.address,
            register,
            kind,
        };
        warn!(
            "mcp23017 0x{:x} reg 0x{:x}: access failed ({})",
            self.address,
            register,
            err.code()
        );
        err
    }
}

fn classify(kind: ErrorKind) -> McpErrorKind {
    match kind {
        ErrorKind::NoAcknowledge(_) => McpErrorKind::NoAcknowledge,
        ErrorKind::Bus | ErrorKind::ArbitrationLoss => McpErrorKind::Bus,
        _ => McpErrorKind::Other,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use embassy_futures::block_on;
    use embedded_hal_async::i2c::{ErrorType, NoAcknowledgeSource, Operation};

    /// A register-level fake MCP23017 bus: one chip per address in 0x20..=0x27, a NACK budget.
    #[derive(Debug, Default)]
    pub(crate) struct FakeBus {
        pub regs: [[u8; 0x16]; 8],
        /// Every transaction: (address, first byte written, optional second byte).
        pub log: std::vec::Vec<(u8, u8, Option<u8>)>,
        /// The next `nack` transactions fail.
        pub nack: u32,
        /// Fail everything from now on.
        pub dead: bool,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct FakeError;
    impl embedded_hal_async::i2c::Error for FakeError {
        fn kind(&self) -> ErrorKind {
            ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address)
        }
    }
    impl ErrorType for FakeBus {
        type Error = FakeError;
    }
    impl I2c for FakeBus {
        async fn transaction(
            &mut self,
            address: u8,
            operations: &mut [Operation<'_>],
        ) -> Result<(), FakeError> {
            if self.dead || self.nack > 0 || !(0x20..=0x27).contains(&address) {
                self.nack = self.nack.saturating_sub(1);
                return Err(FakeError);
            }
            let chip = &mut self.regs[usize::from(address - 0x20)];
            let mut pointer = 0usize;
            for op in operations.iter_mut() {
                match op {
                    Operation::Write(bytes) => {
                        pointer = usize::from(bytes[0]);
                        self.log.push((address, bytes[0], bytes.get(1).copied()));
                        if let Some(v) = bytes.get(1) {
                            chip[pointer] = *v;
                            // GPIO writes land in OLAT.
                            if pointer == 0x12 || pointer == 0x13 {
                                chip[pointer + 2] = *v;
                            }
                        }
                    }
                    Operation::Read(buf) => buf[0] = chip[pointer],
                }
            }
            Ok(())
        }
    }

    #[test]
    fn init_writes_the_energis_sequence_and_keeps_latches() {
        let mut bus = FakeBus::default();
        bus.regs[0][0x14] = 0x05;
        bus.regs[0][0x00] = 0xFF;
        let mut mcp = Mcp23017::new(bus, 0x20);
        block_on(mcp.init()).unwrap();
        assert_eq!(mcp.shadow(Port::A), 0x05);
        let bus = mcp.release();
        let seq: std::vec::Vec<_> = bus.log.iter().map(|(_, r, v)| (*r, *v)).collect();
        assert_eq!(
            seq,
            [
                (0x0A, Some(0x20)),
                (0x0B, Some(0x20)),
                (0x00, Some(0)),
                (0x01, Some(0)),
                (0x0C, Some(0)),
                (0x0D, Some(0)),
                (0x14, None),
                (0x15, None),
                (0x14, Some(0x05)),
                (0x15, Some(0)),
            ]
        );
        assert_eq!(bus.regs[0][0x00], 0);
    }

    #[test]
    fn update_port_modifies_only_masked_bits_of_the_shadow() {
        let mut mcp = Mcp23017::new(FakeBus::default(), 0x20);
        block_on(mcp.write_port(Port::B, 0b1010_0000)).unwrap();
        block_on(mcp.update_port(Port::B, 0x0F, 0x0B)).unwrap();
        assert_eq!(mcp.shadow(Port::B), 0b1010_1011);
        assert_eq!(mcp.release().regs[0][0x15], 0b1010_1011);
    }

    #[test]
    fn a_transient_nack_is_retried_and_counted() {
        let bus = FakeBus {
            nack: 2,
            ..FakeBus::default()
        };
        let mut mcp = Mcp23017::new(bus, 0x21);
        block_on(mcp.write_port(Port::A, 0x81)).unwrap();
        let s = mcp.stats();
        assert_eq!(
            (s.accesses, s.failed_attempts, s.failed_accesses),
            (1, 2, 0)
        );
        assert_eq!(mcp.shadow(Port::A), 0x81);
    }

    #[test]
    fn a_dead_bus_returns_an_error_value_and_keeps_the_shadow() {
        let bus = FakeBus {
            dead: true,
            ..FakeBus::default()
        };
        let mut mcp = Mcp23017::new(bus, 0x23);
        let err = block_on(mcp.write_port(Port::A, 0xFF)).unwrap_err();
        assert_eq!(err.kind, McpErrorKind::NoAcknowledge);
        assert_eq!(err.register, reg::OLATA);
        assert_eq!(mcp.shadow(Port::A), 0);
        assert!(block_on(mcp.init()).is_err());
        let s = mcp.stats();
        assert_eq!((s.failed_attempts, s.failed_accesses), (6, 2));
    }

    proptest::proptest! {
        #[test]
        fn the_shadow_always_matches_the_latch_whatever_the_bus_does(
            ops in proptest::collection::vec((proptest::bool::ANY, proptest::num::u8::ANY, 0u32..5), 1..40),
        ) {
            let mut mcp = Mcp23017::new(FakeBus::default(), 0x20);
            let mut failures = 0u32;
            for (port_b, value, nack) in ops {
                let port = if port_b { Port::B } else { Port::A };
                let before = mcp.shadow(port);
                mcp.i2c.nack = nack;
                let result = block_on(mcp.write_port(port, value));
                // 3 attempts: up to 2 NACKs are absorbed by the retries.
                proptest::prop_assert_eq!(result.is_ok(), nack < 3);
                if result.is_err() {
                    failures += 1;
                    proptest::prop_assert_eq!(mcp.shadow(port), before);
                } else {
                    proptest::prop_assert_eq!(mcp.shadow(port), value);
                }
                mcp.i2c.nack = 0;
                let latch = block_on(mcp.read_reg(port.olat()));
                proptest::prop_assert_eq!(latch, Ok(mcp.shadow(port)));
            }
            proptest::prop_assert_eq!(mcp.stats().failed_accesses, failures);
        }
    }
}
