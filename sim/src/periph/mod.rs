//! Simulated buses and parts.
//!
//! This module owns the wires the firmware meets on the host: [`uart`] links (byte timing at the
//! baud rate, buffered TX, an idle-line receiver, seeded fault rules) and the [`i2c`] bus
//! (routing by 7-bit address to simulated parts, bit timing at the bus speed, NACK and stuck-bus
//! injection). Both run on the kernel's virtual clock and expose the ecosystem traits
//! (`embedded_io_async`, `embedded_hal_async::i2c::I2c`), so firmware drivers use them unchanged.
//!
//! The parts on them follow their datasheets: the ENERGIS PDU's [`mcp23017`] expanders,
//! [`eeprom`] (CAT24C256), [`hlw8032`] power meters behind their mux, and the [`panel`]
//! (buttons, relays, LEDs) that makes expander pins observable.
pub mod eeprom;
pub mod hlw8032;
pub mod i2c;
pub mod mcp23017;
pub mod panel;
pub mod uart;
