//! Two on-chip parts of the RP2040 that the ENERGIS firmware reads for its health report: the
//! core voltage regulator block (`VREG_AND_CHIP_RESET`) and the 12-bit ADC with its temperature
//! sensor, at register level.
//!
//! This module owns their registers (reset values, read-only and self-clearing bits), what the
//! registers say about the analog world (the regulator's output from VSEL, the brown-out
//! threshold, ADC codes from input voltages and the die temperature) and the board-side knobs
//! that set that world (the voltages on the ADC pins, the die temperature, the ADC reference, a
//! seeded noise). Figures are from the RP2040 datasheet (§2.10 "Core supply regulator", §4.9
//! "ADC and temperature sensor"); the board's dividers (12 V ÷ 11 on ADC3, VUSB ÷ 2 on ADC0) are
//! the ENERGIS schematic's, wired by whoever places the parts.
//!
//! Both parts are sans-IO: a firmware platform calls [`VregAndChipReset::read`] /
//! [`VregAndChipReset::write`] and [`Adc::read`] / [`Adc::write`] with register offsets from the
//! block's base address ([`VREG_BASE`], [`ADC_BASE`]), as its register accesses would hit the
//! bus, and passes `now` where timing matters (an ADC conversion takes 96 ADC clocks, 2 µs at
//! 48 MHz). Helpers ([`Adc::sample`], [`VregAndChipReset::core_voltage`], …) do what the Pico
//! SDK's `adc_read` or a board's health code would, for wiring that does not need the registers.
//!
//! # VREG_AND_CHIP_RESET
//! | offset | register | bits |
//! |--------|----------|------|
//! | 0x0 | VREG | 12 ROK (RO: in regulation), 7:4 VSEL (reset 0b1011 = 1.10 V), 1 HIZ, 0 EN (reset 1) |
//! | 0x4 | BOD | 7:4 VSEL (reset 0b1001 = 0.860 V), 0 EN (reset 1) |
//! | 0x8 | CHIP_RESET | 24 PSM_RESTART_FLAG (RW), 20 HAD_PSM_RESTART, 16 HAD_RUN, 8 HAD_POR (RO) |
//!
//! VSEL 0b0000-0b0101 all give 0.80 V, then 0.85 V to 1.30 V in 50 mV steps; the brown-out
//! threshold is `0.473 V + 0.043 V × VSEL`. A regulator that is off (EN = 0) or in high-impedance
//! mode (HIZ = 1) drives nothing, so ROK reads 0 and [`VregAndChipReset::core_voltage`] is `None`
//! (the core then lives on an external supply, or dies). ROK follows at once: the regulator's
//! settling time after a VSEL change is not modelled. [`VregAndChipReset::brownout`] says
//! whether the detector would hold the chip in reset; acting on it is the board's business.
//!
//! A reader that masks the low nibble of VREG instead of bits 7:4 gets `1` from the reset value
//! `0x000010b1` (EN), which is how a firmware computing `0.85 + 0.05 × vsel` reports 0.90 V on a
//! board that really runs at 1.10 V; the part gives the register as the silicon does, and such a
//! firmware reproduces its own reading.
//!
//! # ADC
//! | offset | register | modelled |
//! |--------|----------|----------|
//! | 0x00 | CS | 0 EN, 1 TS_EN, 2 START_ONCE (self-clearing), 3 START_MANY, 8 READY (RO), 9 ERR (RO, always 0), 10 ERR_STICKY (write 1 to clear), 14:12 AINSEL, 20:16 RROBIN |
//! | 0x04 | RESULT | 11:0, the last completed conversion |
//! | 0x08 | FCS | stored and read back; the FIFO itself is not modelled |
//! | 0x10 | DIV | 23:8 INT, 7:0 FRAC: START_MANY paces conversions every `1 + INT + FRAC/256` clocks (never faster than 96) |
//!
//! FIFO, INTR, INTE, INTF and INTS answer [`RegisterError::Unmodelled`] rather than a made-up
//! value. Channels 0-3 are GPIO26-29, channel 4 the temperature sensor, which reads
//! `0.706 V - 1.721 mV/°C × (T - 27 °C)` while TS_EN is set and 0 V otherwise. A conversion samples
//! its channel when it starts and its result is `round(V / ADC_AVDD × 4096)`, clamped to 0..=4095,
//! plus a uniform seeded noise of up to ±`noise_lsb`. Round-robin moves AINSEL to the next enabled
//! channel after every conversion, as the datasheet says. The ADC's own non-linearity (the
//! datasheet's DNL spikes near codes 512, 1536, 2560, 3584) is not modelled.
use firmware_core::time::{Duration, Instant};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Base address of `VREG_AND_CHIP_RESET`.
pub const VREG_BASE: u32 = 0x4006_4000;
/// Base address of the ADC.
pub const ADC_BASE: u32 = 0x4004_c000;

/// Why a register access was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// No register at this offset of the block.
    #[error("no register at offset 0x{0:02x}")]
    NoRegister(u32),
    /// The register exists on the chip but this model does not implement it.
    #[error("register at offset 0x{0:02x} is not modelled")]
    Unmodelled(u32),
    /// Accesses are 32-bit and word-aligned.
    #[error("offset 0x{0:02x} is not word-aligned")]
    Unaligned(u32),
}

/// Why a board-side setting was refused.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum AdcInputError {
    /// The ADC has channels 0 to 4 (4 is the temperature sensor, not a pin).
    #[error("ADC channel {0} is not a pin (0-3)")]
    NotAPin(u8),
    /// Voltages and temperatures must be finite numbers.
    #[error("{0} must be a finite number")]
    NotFinite(&'static str),
}

/// `VREG_AND_CHIP_RESET` register offsets.
pub mod vreg_reg {
    /// The regulator's control and status.
    pub const VREG: u32 = 0x0;
    /// The brown-out detector.
    pub const BOD: u32 = 0x4;
    /// Why the chip last came out of reset.
    pub const CHIP_RESET: u32 = 0x8;
}

/// Regulator in regulation (read-only).
pub const VREG_ROK: u32 = 1 << 12;
/// Regulator output voltage select field.
pub const VREG_VSEL_MASK: u32 = 0xf << 4;
/// Regulator high-impedance mode.
pub const VREG_HIZ: u32 = 1 << 1;
/// Regulator enable.
pub const VREG_EN: u32 = 1 << 0;
/// The VREG register after power-on (ROK excluded: it is status, not storage).
pub const VREG_RESET: u32 = (0xb << 4) | VREG_EN;
/// The BOD register after power-on: threshold 0.860 V, enabled.
pub const BOD_RESET: u32 = (0x9 << 4) | 1;
/// CHIP_RESET: the last reset came from the power-on reset or the brown-out detector.
pub const CHIP_RESET_HAD_POR: u32 = 1 << 8;
/// CHIP_RESET: the last reset came from the RUN pin.
pub const CHIP_RESET_HAD_RUN: u32 = 1 << 16;
/// CHIP_RESET: the last reset came from a power-on state machine restart (debugger).
pub const CHIP_RESET_HAD_PSM_RESTART: u32 = 1 << 20;
/// CHIP_RESET: a debugger-requested restart, kept across it (read/write).
pub const CHIP_RESET_PSM_RESTART_FLAG: u32 = 1 << 24;

/// The regulator output for a VSEL value (datasheet table; values above 15 are masked).
pub fn vsel_voltage(vsel: u8) -> f64 {
    match vsel & 0xf {
        0..=5 => 0.80,
        v => 0.85 + 0.05 * f64::from(v - 6),
    }
}

/// The brown-out threshold for a BOD VSEL value (values above 15 are masked).
pub fn bod_threshold(vsel: u8) -> f64 {
    0.473 + 0.043 * f64::from(vsel & 0xf)
}

/// What caused a reset, for [`VregAndChipReset::reset`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetCause {
    /// Power applied, or the brown-out detector released the chip.
    PowerOn,
    /// The RUN pin was pulled low.
    RunPin,
    /// A debugger restarted the power-on state machine.
    PsmRestart,
}

/// The `VREG_AND_CHIP_RESET` block. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VregAndChipReset {
    vreg: u32,
    bod: u32,
    chip_reset: u32,
}

impl Default for VregAndChipReset {
    fn default() -> Self {
        Self::new()
    }
}

impl VregAndChipReset {
    /// The block just after power-on.
    pub fn new() -> Self {
        VregAndChipReset {
            vreg: VREG_RESET,
            bod: BOD_RESET,
            chip_reset: CHIP_RESET_HAD_POR,
        }
    }

    /// A reset of the chip from `cause`: the regulator and BOD keep their settings only across a
    /// RUN-pin or PSM reset (they sit in the always-on domain); a power-on reset restores them.
    pub fn reset(&mut self, cause: ResetCause) {
        let flag = self.chip_reset & CHIP_RESET_PSM_RESTART_FLAG;
        self.chip_reset = match cause {
            ResetCause::PowerOn => {
                self.vreg = VREG_RESET;
                self.bod = BOD_RESET;
                CHIP_RESET_HAD_POR
            }
            ResetCause::RunPin => CHIP_RESET_HAD_RUN | flag,
            ResetCause::PsmRestart => CHIP_RESET_HAD_PSM_RESTART | flag,
        };
    }

    /// Read the register at `offset` from [`VREG_BASE`].
    pub fn read(&self, offset: u32) -> Result<u32, RegisterError> {
        check_aligned(offset)?;
        match offset {
            vreg_reg::VREG => Ok(self.vreg | if self.regulation_ok() { VREG_ROK } else { 0 }),
            vreg_reg::BOD => Ok(self.bod),
            vreg_reg::CHIP_RESET => Ok(self.chip_reset),
            _ => Err(RegisterError::NoRegister(offset)),
        }
    }

    /// Write the register at `offset`; read-only and reserved bits are ignored, as on the chip.
    pub fn write(&mut self, offset: u32, value: u32) -> Result<(), RegisterError> {
        check_aligned(offset)?;
        match offset {
            vreg_reg::VREG => self.vreg = value & (VREG_VSEL_MASK | VREG_HIZ | VREG_EN),
            vreg_reg::BOD => self.bod = value & ((0xf << 4) | 1),
            vreg_reg::CHIP_RESET => {
                self.chip_reset = (self.chip_reset & !CHIP_RESET_PSM_RESTART_FLAG)
                    | (value & CHIP_RESET_PSM_RESTART_FLAG);
            }
            _ => return Err(RegisterError::NoRegister(offset)),
        }
        Ok(())
    }

    /// The VREG VSEL field (bits 7:4).
    pub fn vsel(&self) -> u8 {
        ((self.vreg & VREG_VSEL_MASK) >> 4) as u8
    }

    /// Set the VSEL field, as the SDK's `vreg_set_voltage` does (values above 15 are masked).
    pub fn set_vsel(&mut self, vsel: u8) {
        self.vreg = (self.vreg & !VREG_VSEL_MASK) | (u32::from(vsel & 0xf) << 4);
    }

    /// Whether the regulator drives its output (enabled and not in high-impedance mode); ROK.
    pub fn regulation_ok(&self) -> bool {
        self.vreg & VREG_EN != 0 && self.vreg & VREG_HIZ == 0
    }

    /// The regulator's output voltage, or `None` when it does not drive its output.
    pub fn core_voltage(&self) -> Option<f64> {
        self.regulation_ok().then(|| vsel_voltage(self.vsel()))
    }

    /// The brown-out threshold, or `None` when the detector is off.
    pub fn bod_threshold(&self) -> Option<f64> {
        (self.bod & 1 != 0).then(|| bod_threshold(((self.bod >> 4) & 0xf) as u8))
    }

    /// Whether the brown-out detector holds the chip in reset: enabled, and the core voltage
    /// (the regulator's, or `external` when it does not drive its output) below the threshold.
    pub fn brownout(&self, external: Option<f64>) -> bool {
        let supply = self.core_voltage().or(external).unwrap_or(0.0);
        self.bod_threshold().is_some_and(|t| supply < t)
    }
}

fn check_aligned(offset: u32) -> Result<(), RegisterError> {
    if !offset.is_multiple_of(4) {
        return Err(RegisterError::Unaligned(offset));
    }
    Ok(())
}

/// ADC register offsets.
pub mod adc_reg {
    /// Control and status.
    pub const CS: u32 = 0x00;
    /// The last conversion.
    pub const RESULT: u32 = 0x04;
    /// FIFO control and status.
    pub const FCS: u32 = 0x08;
    /// FIFO data (not modelled).
    pub const FIFO: u32 = 0x0c;
    /// Clock divider for START_MANY.
    pub const DIV: u32 = 0x10;
    /// Raw interrupts (not modelled).
    pub const INTR: u32 = 0x14;
    /// Interrupt enable (not modelled).
    pub const INTE: u32 = 0x18;
    /// Interrupt force (not modelled).
    pub const INTF: u32 = 0x1c;
    /// Interrupt status (not modelled).
    pub const INTS: u32 = 0x20;
}

/// CS: power the ADC on.
pub const ADC_CS_EN: u32 = 1 << 0;
/// CS: power the temperature sensor on.
pub const ADC_CS_TS_EN: u32 = 1 << 1;
/// CS: start one conversion (self-clearing).
pub const ADC_CS_START_ONCE: u32 = 1 << 2;
/// CS: convert back to back.
pub const ADC_CS_START_MANY: u32 = 1 << 3;
/// CS: the ADC is powered and idle (read-only).
pub const ADC_CS_READY: u32 = 1 << 8;
/// CS: the last conversion had an error (read-only).
pub const ADC_CS_ERR: u32 = 1 << 9;
/// CS: a conversion error happened since the last clear (write 1 to clear).
pub const ADC_CS_ERR_STICKY: u32 = 1 << 10;
/// CS: the channel to convert.
pub const ADC_CS_AINSEL_MASK: u32 = 0x7 << 12;
/// CS: channels to visit round-robin, one bit each.
pub const ADC_CS_RROBIN_MASK: u32 = 0x1f << 16;

/// Channels: four pins and the temperature sensor.
pub const ADC_CHANNELS: u8 = 5;
/// The temperature sensor's channel.
pub const TEMPERATURE_CHANNEL: u8 = 4;
/// The ADC clock, 48 MHz from the USB PLL.
pub const ADC_CLOCK_HZ: u64 = 48_000_000;
/// Clocks per conversion.
pub const CONVERSION_CLOCKS: u64 = 96;
/// Largest code.
pub const FULL_SCALE: u16 = 4095;

/// Temperature-sensor voltage at `celsius` (datasheet: 0.706 V at 27 °C, −1.721 mV/°C).
pub fn temperature_sensor_volts(celsius: f64) -> f64 {
    0.706 - (celsius - 27.0) * 0.001721
}

/// The datasheet's conversion of a temperature-sensor code to °C at reference `vref`.
pub fn celsius_from_code(code: u16, vref: f64) -> f64 {
    27.0 - (volts_from_code(code, vref) - 0.706) / 0.001721
}

/// The input voltage a code stands for, at reference `vref` (`code × vref / 4096`).
pub fn volts_from_code(code: u16, vref: f64) -> f64 {
    f64::from(code) * vref / 4096.0
}

/// The 12-bit code for `volts` at reference `vref`, rounded and clamped.
pub fn code_from_volts(volts: f64, vref: f64) -> u16 {
    if !(volts.is_finite() && vref > 0.0) {
        return 0;
    }
    (volts / vref * 4096.0)
        .round()
        .clamp(0.0, f64::from(FULL_SCALE)) as u16
}

/// A conversion in progress or the back-to-back run of START_MANY.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Conversion {
    Idle,
    /// One conversion of `channel`, sampled at start, done at `done`.
    Once {
        done: Instant,
        code: u16,
    },
    /// Back-to-back conversions since `since`, one every `period`.
    Many {
        since: Instant,
        period: Duration,
        counted: u64,
    },
}

/// The RP2040 ADC. See the module docs.
pub struct Adc {
    cs: u32,
    result: u16,
    fcs: u32,
    div: u32,
    conversion: Conversion,
    pins: [f64; 4],
    die_celsius: f64,
    vref: f64,
    noise_lsb: u16,
    rng: ChaCha8Rng,
    conversions: u64,
}

impl Adc {
    /// An ADC after reset: off, 3.3 V reference, pins at 0 V, the die at 27 °C, no noise. `rng`
    /// drives the noise (give it a stream of its own, e.g. `kernel.rng("rp2040:adc")`).
    pub fn new(rng: ChaCha8Rng) -> Self {
        Adc {
            cs: 0,
            result: 0,
            fcs: 0,
            div: 0,
            conversion: Conversion::Idle,
            pins: [0.0; 4],
            die_celsius: 27.0,
            vref: 3.3,
            noise_lsb: 0,
            rng,
            conversions: 0,
        }
    }

    // --- the board side -------------------------------------------------------------------

    /// The voltage on ADC pin `channel` (0-3 = GPIO26-29), after the board's divider.
    pub fn set_pin_volts(&mut self, channel: u8, volts: f64) -> Result<(), AdcInputError> {
        if !volts.is_finite() {
            return Err(AdcInputError::NotFinite("pin voltage"));
        }
        let slot = self
            .pins
            .get_mut(usize::from(channel))
            .ok_or(AdcInputError::NotAPin(channel))?;
        *slot = volts;
        Ok(())
    }

    /// The die temperature the sensor sees.
    pub fn set_die_celsius(&mut self, celsius: f64) -> Result<(), AdcInputError> {
        if !celsius.is_finite() {
            return Err(AdcInputError::NotFinite("die temperature"));
        }
        self.die_celsius = celsius;
        Ok(())
    }

    /// The reference, ADC_AVDD (3.3 V on ENERGIS and most boards).
    pub fn set_vref(&mut self, volts: f64) -> Result<(), AdcInputError> {
        if !(volts.is_finite() && volts > 0.0) {
            return Err(AdcInputError::NotFinite("reference voltage"));
        }
        self.vref = volts;
        Ok(())
    }

    /// The reference in use.
    pub fn vref(&self) -> f64 {
        self.vref
    }

    /// Add a uniform seeded noise of up to ±`lsb` codes to every conversion (0 turns it off).
    pub fn set_noise_lsb(&mut self, lsb: u16) {
        self.noise_lsb = lsb;
    }

    /// Conversions completed since power-on (START_MANY ones counted up to the last read).
    pub fn conversions(&self) -> u64 {
        self.conversions
    }

    // --- registers --------------------------------------------------------------------------

    /// Read the register at `offset` from [`ADC_BASE`] at `now`.
    pub fn read(&mut self, offset: u32, now: Instant) -> Result<u32, RegisterError> {
        check_aligned(offset)?;
        self.advance(now);
        match offset {
            adc_reg::CS => {
                let ready = self.cs & ADC_CS_EN != 0
                    && matches!(self.conversion, Conversion::Idle | Conversion::Many { .. });
                Ok(self.cs | if ready { ADC_CS_READY } else { 0 })
            }
            adc_reg::RESULT => Ok(u32::from(self.result)),
            adc_reg::FCS => Ok(self.fcs),
            adc_reg::DIV => Ok(self.div),
            adc_reg::FIFO | adc_reg::INTR | adc_reg::INTE | adc_reg::INTF | adc_reg::INTS => {
                Err(RegisterError::Unmodelled(offset))
            }
            _ => Err(RegisterError::NoRegister(offset)),
        }
    }

    /// Write the register at `offset` at `now`.
    pub fn write(&mut self, offset: u32, value: u32, now: Instant) -> Result<(), RegisterError> {
        check_aligned(offset)?;
        self.advance(now);
        match offset {
            adc_reg::CS => self.write_cs(value, now),
            adc_reg::FCS => self.fcs = value & 0x0f0f_000f,
            adc_reg::DIV => self.div = value & 0x00ff_ffff,
            adc_reg::RESULT => {}
            adc_reg::FIFO | adc_reg::INTR | adc_reg::INTE | adc_reg::INTF | adc_reg::INTS => {
                return Err(RegisterError::Unmodelled(offset));
            }
            _ => return Err(RegisterError::NoRegister(offset)),
        }
        Ok(())
    }

    fn write_cs(&mut self, value: u32, now: Instant) {
        let kept =
            ADC_CS_EN | ADC_CS_TS_EN | ADC_CS_START_MANY | ADC_CS_AINSEL_MASK | ADC_CS_RROBIN_MASK;
        let was_many = self.cs & ADC_CS_START_MANY != 0;
        self.cs = value & kept;
        let enabled = self.cs & ADC_CS_EN != 0;
        if !enabled {
            self.conversion = Conversion::Idle;
            return;
        }
        let many = self.cs & ADC_CS_START_MANY != 0;
        if many && !was_many {
            self.conversion = Conversion::Many {
                since: now,
                period: self.many_period(),
                counted: 0,
            };
            return;
        }
        if !many && was_many {
            self.conversion = Conversion::Idle;
        }
        // A start while a conversion runs is ignored, as the hardware only starts when READY.
        if value & ADC_CS_START_ONCE != 0 && self.conversion == Conversion::Idle {
            let code = self.convert_now();
            self.conversion = Conversion::Once {
                done: now + conversion_time(CONVERSION_CLOCKS),
                code,
            };
        }
    }

    fn many_period(&self) -> Duration {
        let int = u64::from((self.div >> 8) & 0xffff);
        let frac = u64::from(self.div & 0xff);
        // DIV = 0 converts back to back; a smaller period than one conversion is not possible.
        let clocks256 = if int == 0 && frac == 0 {
            CONVERSION_CLOCKS * 256
        } else {
            ((1 + int) * 256 + frac).max(CONVERSION_CLOCKS * 256)
        };
        Duration::from_micros((clocks256 * 1_000_000).div_ceil(ADC_CLOCK_HZ * 256))
    }

    /// Complete what has finished by `now`.
    fn advance(&mut self, now: Instant) {
        match self.conversion {
            Conversion::Idle => {}
            Conversion::Once { done, code } => {
                if now >= done {
                    self.finish(code);
                    self.conversion = Conversion::Idle;
                }
            }
            Conversion::Many {
                since,
                period,
                counted,
            } => {
                let due = (now - since).as_micros() / period.as_micros().max(1);
                // Each conversion samples the inputs as they are now: the board's inputs are
                // piecewise constant between two register accesses, so only the last few matter.
                let skip = due
                    .saturating_sub(counted)
                    .saturating_sub(u64::from(ADC_CHANNELS));
                self.conversions += skip;
                for _ in (counted + skip)..due {
                    let code = self.convert_now();
                    self.finish(code);
                }
                self.conversion = Conversion::Many {
                    since,
                    period,
                    counted: due,
                };
            }
        }
    }

    fn finish(&mut self, code: u16) {
        self.result = code;
        self.conversions += 1;
        self.advance_round_robin();
    }

    fn advance_round_robin(&mut self) {
        let rrobin = (self.cs & ADC_CS_RROBIN_MASK) >> 16;
        if rrobin == 0 {
            return;
        }
        let current = self.ainsel();
        let next = (1..=u32::from(ADC_CHANNELS))
            .map(|i| (u32::from(current) + i) % u32::from(ADC_CHANNELS))
            .find(|ch| rrobin & (1 << ch) != 0)
            .unwrap_or(u32::from(current));
        self.cs = (self.cs & !ADC_CS_AINSEL_MASK) | (next << 12);
    }

    fn ainsel(&self) -> u8 {
        ((self.cs & ADC_CS_AINSEL_MASK) >> 12) as u8
    }

    /// The code of a conversion of AINSEL started now.
    fn convert_now(&mut self) -> u16 {
        let ch = self.ainsel();
        let volts = match ch {
            TEMPERATURE_CHANNEL if self.cs & ADC_CS_TS_EN != 0 => {
                temperature_sensor_volts(self.die_celsius)
            }
            // The sensor's bias is off: nothing drives the input.
            TEMPERATURE_CHANNEL => 0.0,
            // AINSEL 5-7 select nothing on the RP2040.
            ch => self.pins.get(usize::from(ch)).copied().unwrap_or(0.0),
        };
        let code = i32::from(code_from_volts(volts, self.vref));
        let noise = if self.noise_lsb > 0 {
            let n = i32::from(self.noise_lsb);
            self.rng.random_range(-n..=n)
        } else {
            0
        };
        (code + noise).clamp(0, i32::from(FULL_SCALE)) as u16
    }

    // --- helpers ------------------------------------------------------------------------------

    /// What the Pico SDK's `adc_select_input(channel)` + `adc_read()` return, at `now`: power the
    /// ADC (and the sensor, for channel 4) if needed, convert once and wait the 2 µs. Returns the
    /// code and the instant the result is ready.
    pub fn sample(&mut self, channel: u8, now: Instant) -> Result<(u16, Instant), AdcInputError> {
        if channel >= ADC_CHANNELS {
            return Err(AdcInputError::NotAPin(channel));
        }
        let mut cs = self.cs | ADC_CS_EN;
        if channel == TEMPERATURE_CHANNEL {
            cs |= ADC_CS_TS_EN;
        }
        cs = (cs & !(ADC_CS_AINSEL_MASK | ADC_CS_START_MANY)) | (u32::from(channel) << 12);
        self.advance(now);
        self.conversion = Conversion::Idle;
        self.cs = cs;
        self.write_cs(cs | ADC_CS_START_ONCE, now);
        let done = now + conversion_time(CONVERSION_CLOCKS);
        self.advance(done);
        Ok((self.result, done))
    }
}

/// Time of `clocks` ADC clocks, rounded up to the microsecond.
fn conversion_time(clocks: u64) -> Duration {
    Duration::from_micros((clocks * 1_000_000).div_ceil(ADC_CLOCK_HZ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::rng_for;

    fn at_us(us: u64) -> Instant {
        Instant::from_micros(us)
    }

    fn adc() -> Adc {
        Adc::new(rng_for(1, "rp2040:adc"))
    }

    #[test]
    fn the_regulator_comes_out_of_power_on_at_1_10_v_and_in_regulation() {
        let v = VregAndChipReset::new();
        assert_eq!(v.read(vreg_reg::VREG), Ok(0x0000_10b1));
        assert_eq!(v.vsel(), 0b1011);
        assert!((v.core_voltage().expect("regulating") - 1.10).abs() < 1e-9);
        assert_eq!(v.read(vreg_reg::BOD), Ok(0x91));
        assert!((v.bod_threshold().expect("on") - 0.860).abs() < 1e-9);
        assert_eq!(v.read(vreg_reg::CHIP_RESET), Ok(CHIP_RESET_HAD_POR));
        assert!(!v.brownout(None));
    }

    #[test]
    fn vsel_follows_the_datasheet_table() {
        let table = [
            (0b0000, 0.80),
            (0b0101, 0.80),
            (0b0110, 0.85),
            (0b0111, 0.90),
            (0b1011, 1.10),
            (0b1111, 1.30),
        ];
        let mut v = VregAndChipReset::new();
        for (vsel, volts) in table {
            v.write(vreg_reg::VREG, (vsel << 4) | VREG_EN)
                .expect("write");
            let got = v.core_voltage().expect("regulating");
            assert!((got - volts).abs() < 1e-9, "vsel {vsel:04b}: {got}");
            assert_eq!(v.vsel(), vsel as u8);
        }
    }

    #[test]
    fn rok_is_read_only_and_clears_when_the_regulator_is_off_or_floating() {
        let mut v = VregAndChipReset::new();
        // Writing ROK or reserved bits changes nothing.
        v.write(vreg_reg::VREG, VREG_RESET | VREG_ROK | 0xffff_0000)
            .expect("write");
        assert_eq!(v.read(vreg_reg::VREG), Ok(0x0000_10b1));
        v.write(vreg_reg::VREG, VREG_RESET | VREG_HIZ)
            .expect("write");
        assert_eq!(v.read(vreg_reg::VREG).map(|r| r & VREG_ROK), Ok(0));
        assert_eq!(v.core_voltage(), None);
        v.write(vreg_reg::VREG, 0xb << 4).expect("write");
        assert_eq!(v.core_voltage(), None);
        // Floating regulator: the BOD watches whatever supplies the core from outside.
        assert!(v.brownout(None));
        assert!(!v.brownout(Some(1.1)));
    }

    #[test]
    fn a_core_voltage_below_the_bod_threshold_is_a_brownout() {
        let mut v = VregAndChipReset::new();
        v.write(vreg_reg::BOD, (0xf << 4) | 1).expect("write"); // 1.118 V
        assert!(v.brownout(None), "1.10 V under a 1.118 V threshold");
        v.write(vreg_reg::BOD, 0xf << 4).expect("write"); // detector off
        assert!(!v.brownout(None));
        assert_eq!(v.bod_threshold(), None);
    }

    #[test]
    fn masking_the_low_nibble_reads_the_enable_bit_which_is_how_0_90_v_gets_reported() {
        let v = VregAndChipReset::new();
        let raw = v.read(vreg_reg::VREG).expect("read");
        let low_nibble = raw & 0xf;
        assert_eq!(low_nibble, 1);
        assert!((0.85 + 0.05 * f64::from(low_nibble) - 0.90).abs() < 1e-9);
        assert!((0.85 + 0.05 * f64::from(v.vsel()) - 1.40).abs() < 1e-9);
    }

    #[test]
    fn resets_say_where_they_came_from_and_only_power_on_restores_the_regulator() {
        let mut v = VregAndChipReset::new();
        v.set_vsel(0b1101);
        v.write(
            vreg_reg::CHIP_RESET,
            CHIP_RESET_PSM_RESTART_FLAG | CHIP_RESET_HAD_RUN,
        )
        .expect("write");
        v.reset(ResetCause::RunPin);
        assert_eq!(
            v.read(vreg_reg::CHIP_RESET),
            Ok(CHIP_RESET_HAD_RUN | CHIP_RESET_PSM_RESTART_FLAG)
        );
        assert_eq!(v.vsel(), 0b1101);
        v.reset(ResetCause::PowerOn);
        assert_eq!(v.read(vreg_reg::CHIP_RESET), Ok(CHIP_RESET_HAD_POR));
        assert_eq!(v.vsel(), 0b1011);
    }

    #[test]
    fn bad_offsets_are_errors_not_values() {
        let mut v = VregAndChipReset::new();
        assert_eq!(v.read(0xc), Err(RegisterError::NoRegister(0xc)));
        assert_eq!(v.write(0x2, 0), Err(RegisterError::Unaligned(0x2)));
        let mut a = adc();
        assert_eq!(
            a.read(adc_reg::FIFO, Instant::ZERO),
            Err(RegisterError::Unmodelled(adc_reg::FIFO))
        );
        assert_eq!(
            a.read(0x24, Instant::ZERO),
            Err(RegisterError::NoRegister(0x24))
        );
        assert_eq!(a.set_pin_volts(4, 1.0), Err(AdcInputError::NotAPin(4)));
        assert!(a.set_pin_volts(0, f64::NAN).is_err());
        assert!(a.sample(5, Instant::ZERO).is_err());
    }

    #[test]
    fn the_temperature_sensor_reads_27_c_as_0_706_v_and_follows_the_datasheet_slope() {
        let mut a = adc();
        let (code, ready) = a.sample(TEMPERATURE_CHANNEL, at_us(10)).expect("sample");
        assert_eq!(code, code_from_volts(0.706, 3.3));
        assert_eq!(code, 876);
        assert_eq!(ready, at_us(12));
        assert!((celsius_from_code(code, 3.3) - 27.0).abs() < 0.5);
        for t in [-20.0, 45.0, 85.0] {
            a.set_die_celsius(t).expect("finite");
            let (code, _) = a.sample(TEMPERATURE_CHANNEL, at_us(100)).expect("sample");
            // One LSB is 0.8 mV, about half a degree.
            assert!((celsius_from_code(code, 3.3) - t).abs() < 0.5, "{t} °C");
        }
    }

    #[test]
    fn the_sensor_reads_nothing_until_ts_en_is_set() {
        let mut a = adc();
        let cs = ADC_CS_EN | (u32::from(TEMPERATURE_CHANNEL) << 12);
        a.write(adc_reg::CS, cs | ADC_CS_START_ONCE, Instant::ZERO)
            .expect("write");
        assert_eq!(a.read(adc_reg::RESULT, at_us(5)), Ok(0));
        a.write(adc_reg::CS, cs | ADC_CS_TS_EN | ADC_CS_START_ONCE, at_us(5))
            .expect("write");
        assert_eq!(a.read(adc_reg::RESULT, at_us(10)), Ok(876));
    }

    #[test]
    fn a_conversion_takes_96_clocks_and_ready_says_so() {
        let mut a = adc();
        a.set_pin_volts(0, 2.5).expect("volts"); // VUSB 5 V over ENERGIS's ÷2
        assert_eq!(a.read(adc_reg::CS, Instant::ZERO), Ok(0));
        a.write(adc_reg::CS, ADC_CS_EN, Instant::ZERO)
            .expect("write");
        assert_eq!(
            a.read(adc_reg::CS, Instant::ZERO),
            Ok(ADC_CS_EN | ADC_CS_READY)
        );
        a.write(adc_reg::CS, ADC_CS_EN | ADC_CS_START_ONCE, at_us(100))
            .expect("write");
        // START_ONCE clears itself; READY drops for the 2 µs of the conversion.
        assert_eq!(a.read(adc_reg::CS, at_us(101)), Ok(ADC_CS_EN));
        assert_eq!(a.read(adc_reg::RESULT, at_us(101)), Ok(0));
        assert_eq!(
            a.read(adc_reg::CS, at_us(102)),
            Ok(ADC_CS_EN | ADC_CS_READY)
        );
        let code = a.read(adc_reg::RESULT, at_us(102)).expect("read") as u16;
        assert_eq!(code, 3103);
        assert!((volts_from_code(code, 3.3) * 2.0 - 5.0).abs() < 0.002);
    }

    #[test]
    fn the_12_v_rail_through_its_divider_and_a_clamped_overvoltage() {
        let mut a = adc();
        a.set_pin_volts(3, 12.0 / 11.0).expect("volts");
        let (code, _) = a.sample(3, Instant::ZERO).expect("sample");
        assert!((volts_from_code(code, 3.3) * 11.0 - 12.0).abs() < 0.01);
        a.set_pin_volts(3, 4.0).expect("volts");
        assert_eq!(a.sample(3, Instant::ZERO).expect("sample").0, FULL_SCALE);
    }

    #[test]
    fn round_robin_visits_the_enabled_channels_in_order_and_moves_ainsel() {
        let mut a = adc();
        for ch in 0..4 {
            a.set_pin_volts(ch, 0.5 + f64::from(ch) * 0.5)
                .expect("volts");
        }
        let rrobin = (1 | (1 << 2) | (1 << 4)) << 16;
        let cs = ADC_CS_EN | ADC_CS_TS_EN | rrobin;
        a.write(adc_reg::CS, cs, Instant::ZERO).expect("write");
        let mut seen = Vec::new();
        let mut t = 0;
        for _ in 0..4 {
            let ainsel = (a.read(adc_reg::CS, at_us(t)).expect("cs") >> 12) & 7;
            a.write(
                adc_reg::CS,
                (cs & !ADC_CS_AINSEL_MASK) | (ainsel << 12) | ADC_CS_START_ONCE,
                at_us(t),
            )
            .expect("start");
            t += 2;
            seen.push((ainsel, a.read(adc_reg::RESULT, at_us(t)).expect("result")));
        }
        let want = [
            (0, u32::from(code_from_volts(0.5, 3.3))),
            (2, u32::from(code_from_volts(1.5, 3.3))),
            (4, 876),
            (0, u32::from(code_from_volts(0.5, 3.3))),
        ];
        assert_eq!(seen, want);
    }

    #[test]
    fn start_many_converts_back_to_back_at_the_divider_pace() {
        let mut a = adc();
        a.set_pin_volts(1, 1.0).expect("volts");
        a.write(adc_reg::DIV, 47_999 << 8, Instant::ZERO)
            .expect("div"); // 1 kS/s
        a.write(
            adc_reg::CS,
            ADC_CS_EN | (1 << 12) | ADC_CS_START_MANY,
            Instant::ZERO,
        )
        .expect("cs");
        assert_eq!(a.read(adc_reg::RESULT, at_us(999)), Ok(0));
        assert_eq!(
            a.read(adc_reg::RESULT, at_us(1_000)),
            Ok(u32::from(code_from_volts(1.0, 3.3)))
        );
        a.set_pin_volts(1, 2.0).expect("volts");
        assert_eq!(
            a.read(adc_reg::RESULT, at_us(10_000)),
            Ok(u32::from(code_from_volts(2.0, 3.3)))
        );
        assert_eq!(a.conversions(), 10);
    }

    #[test]
    fn noise_is_bounded_and_the_same_for_the_same_seed() {
        let run = |seed| {
            let mut a = Adc::new(rng_for(seed, "rp2040:adc"));
            a.set_noise_lsb(3);
            a.set_pin_volts(2, 1.65).expect("volts");
            (0..50)
                .map(|i| a.sample(2, at_us(i * 10)).expect("sample").0)
                .collect::<Vec<_>>()
        };
        let (one, again, other) = (run(1), run(1), run(2));
        assert_eq!(one, again);
        assert_ne!(one, other);
        let mid = code_from_volts(1.65, 3.3);
        assert!(one.iter().all(|c| c.abs_diff(mid) <= 3));
        assert!(one.iter().any(|c| *c != mid));
    }
}
