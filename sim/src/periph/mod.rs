//! Simulated buses and parts.
//!
//! This module owns the wires the firmware meets on the host: [`uart`] links (byte timing at the
//! baud rate, buffered TX, an idle-line receiver, seeded fault rules) and the [`i2c`] bus
//! (routing by 7-bit address to simulated parts, bit timing at the bus speed, NACK and stuck-bus
//! injection). Both run on the kernel's virtual clock and expose the ecosystem traits
//! (`embedded_io_async`, `embedded_hal_async::i2c::I2c`), so firmware drivers use them unchanged.
//! An [`spi`] loopback stands in for SPI parts. [`blocking`] turns any of them (and the clock)
//! into blocking `embedded-hal` 1.0 / `embedded-io` peripherals that run the kernel while they
//! wait, for blocking drivers from crates.io.
//!
//! The ENERGIS PDU's parts follow their datasheets: the [`mcp23017`] expanders, the [`eeprom`]
//! (CAT24C256), the [`hlw8032`] power meters behind their mux, and the [`panel`] (buttons,
//! relays, LEDs) that makes expander pins observable. The [`rp2040`] module models two on-chip
//! parts of the PDU's MCU at register level: the core voltage regulator (with the brown-out
//! detector and the reset cause) and the ADC with its temperature sensor.
//!
//! The pump controller's parts: the [`fluidnc`] motion board (Grbl protocol, motion, fluid model,
//! faults) on a UART, and the [`wifi`] link between the ESP32 and the network (latency, jitter,
//! loss with TX power, bandwidth, disconnects, the driver's CPU cost).
pub mod blocking;
pub mod eeprom;
pub mod fluidnc;
pub mod hlw8032;
pub mod i2c;
pub mod mcp23017;
pub mod panel;
pub mod rp2040;
pub mod spi;
pub mod uart;
pub mod wifi;
