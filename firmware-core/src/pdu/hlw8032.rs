//! HLW8032 power-meter frames: the 24-byte codec, calibration, and stream resynchronisation.
//!
//! The HLW8032 transmits one frame about every 50 ms on its TX line (4800 baud, 8E1; the UART
//! parity and framing are the platform's business, this module only sees bytes). The layout,
//! all multi-byte fields big-endian:
//!
//! | byte  | field                                              |
//! |-------|----------------------------------------------------|
//! | 0     | state REG: `0x55`, `0xAA` or `0xFx` (flag nibble)  |
//! | 1     | check REG, always `0x5A`                           |
//! | 2-4   | voltage parameter (factory coefficient)            |
//! | 5-7   | voltage REG (a period: larger = lower voltage)     |
//! | 8-10  | current parameter                                  |
//! | 11-13 | current REG                                        |
//! | 14-16 | power parameter                                    |
//! | 17-19 | power REG                                          |
//! | 20    | data update REG                                    |
//! | 21-22 | PF REG (energy pulse counter)                      |
//! | 23    | checksum: low byte of the sum of bytes 2..=22      |
//!
//! The codec follows the smoltcp shape: [`Hlw8032Frame`] is a checked view over bytes,
//! [`Measurement`] the parsed representation with [`Measurement::parse`] and
//! [`Measurement::emit`] (the simulator's HLW8032 part emits with the same code the firmware
//! parses with). [`Measurement::reading`] turns registers into volts, amps, watts and power factor
//! with a [`ChannelCalibration`]. [`FrameSync`] finds frames in a byte stream that starts in the
//! middle of a frame or carries garbage (the mux has just switched chips, a byte was lost).
//!
//! The frame is hand-decoded rather than with a serde format: it is a fixed binary layout with
//! 24-bit fields and a sum checksum that no serde format describes.
use core::fmt;

use super::config::ChannelCalibration;

/// Length of one frame in bytes.
pub const FRAME_LEN: usize = 24;
/// Value of the check REG (byte 1).
pub const CHECK_BYTE: u8 = 0x5A;
/// State REG: normal, all registers valid.
pub const STATE_NORMAL: u8 = 0x55;
/// State REG: the chip's calibration failed; its coefficients are unusable.
pub const STATE_NOT_CALIBRATED: u8 = 0xAA;

/// Largest 24-bit register value.
const REG_MAX: u32 = 0x00FF_FFFF;

/// Plausibility limits (ENERGIS clamps anything above them to zero: a glitch, not a load).
const MAX_VOLTS: f32 = 400.0;
const MAX_AMPS: f32 = 100.0;
const MAX_WATTS: f32 = 40_000.0;

mod field {
    use core::ops::Range;
    pub const STATE: usize = 0;
    pub const CHECK: usize = 1;
    pub const VOLTAGE_PARAM: Range<usize> = 2..5;
    pub const VOLTAGE_REG: Range<usize> = 5..8;
    pub const CURRENT_PARAM: Range<usize> = 8..11;
    pub const CURRENT_REG: Range<usize> = 11..14;
    pub const POWER_PARAM: Range<usize> = 14..17;
    pub const POWER_REG: Range<usize> = 17..20;
    pub const DATA_UPDATE: usize = 20;
    pub const PF_REG: Range<usize> = 21..23;
    pub const CHECKSUM: usize = 23;
    /// Bytes covered by the checksum.
    pub const SUMMED: Range<usize> = 2..23;
}

/// Why bytes are not an HLW8032 frame, or a frame holds no usable measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum FrameError {
    /// Fewer than [`FRAME_LEN`] bytes.
    Truncated,
    /// Byte 0 is none of `0x55`, `0xAA`, `0xFx`.
    BadState(u8),
    /// Byte 1 is not `0x5A`.
    BadCheckByte(u8),
    /// Byte 23 does not match the sum of bytes 2..=22.
    Checksum {
        /// What the bytes sum to.
        computed: u8,
        /// What the frame carries.
        received: u8,
    },
    /// State `0xAA`: the chip's calibration failed, its coefficients are unusable.
    NotCalibrated,
    /// State flag bit 0: the chip's coefficient storage is abnormal.
    CoefficientsAbnormal,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Truncated => write!(f, "frame shorter than {FRAME_LEN} bytes"),
            FrameError::BadState(b) => write!(f, "bad state byte 0x{b:02X}"),
            FrameError::BadCheckByte(b) => write!(f, "check byte 0x{b:02X}, expected 0x5A"),
            FrameError::Checksum { computed, received } => write!(
                f,
                "checksum 0x{received:02X}, bytes sum to 0x{computed:02X}"
            ),
            FrameError::NotCalibrated => write!(f, "chip reports failed calibration (0xAA)"),
            FrameError::CoefficientsAbnormal => write!(f, "chip coefficient storage abnormal"),
        }
    }
}

impl core::error::Error for FrameError {}

/// Whether `b` is a state REG value a frame may start with.
pub const fn is_state_byte(b: u8) -> bool {
    b == STATE_NORMAL || b == STATE_NOT_CALIBRATED || b & 0xF0 == 0xF0
}

/// Low byte of the sum of `bytes`: the frame checksum over bytes 2..=22.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
}

/// A read/write view of an HLW8032 frame in a byte buffer.
///
/// [`new_checked`](Self::new_checked) guarantees the length, so the accessors never index out
/// of range; it also checks the state byte, the `0x5A` check byte and the checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hlw8032Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Hlw8032Frame<T> {
    /// Wrap `buffer` without checking anything but its length (for [`Measurement::emit`]).
    pub fn new_unchecked(buffer: T) -> Result<Self, FrameError> {
        if buffer.as_ref().len() < FRAME_LEN {
            return Err(FrameError::Truncated);
        }
        Ok(Hlw8032Frame { buffer })
    }

    /// Wrap `buffer` if it starts with a well-formed frame (extra bytes after it are ignored).
    pub fn new_checked(buffer: T) -> Result<Self, FrameError> {
        let frame = Self::new_unchecked(buffer)?;
        frame.check()?;
        Ok(frame)
    }

    /// Check the state byte, check byte and checksum.
    pub fn check(&self) -> Result<(), FrameError> {
        let state = self.state();
        if !is_state_byte(state) {
            return Err(FrameError::BadState(state));
        }
        let check = self.bytes()[field::CHECK];
        if check != CHECK_BYTE {
            return Err(FrameError::BadCheckByte(check));
        }
        let computed = self.computed_checksum();
        let received = self.checksum();
        if computed != received {
            return Err(FrameError::Checksum { computed, received });
        }
        Ok(())
    }

    fn bytes(&self) -> &[u8; FRAME_LEN] {
        // The constructors guarantee at least FRAME_LEN bytes.
        match self.buffer.as_ref().first_chunk::<FRAME_LEN>() {
            Some(b) => b,
            None => &[0; FRAME_LEN],
        }
    }

    fn u24(&self, r: core::ops::Range<usize>) -> u32 {
        self.bytes()[r]
            .iter()
            .fold(0u32, |acc, b| (acc << 8) | u32::from(*b))
    }

    /// State REG (byte 0).
    pub fn state(&self) -> u8 {
        self.bytes()[field::STATE]
    }
    /// Voltage parameter.
    pub fn voltage_param(&self) -> u32 {
        self.u24(field::VOLTAGE_PARAM)
    }
    /// Voltage REG.
    pub fn voltage_reg(&self) -> u32 {
        self.u24(field::VOLTAGE_REG)
    }
    /// Current parameter.
    pub fn current_param(&self) -> u32 {
        self.u24(field::CURRENT_PARAM)
    }
    /// Current REG.
    pub fn current_reg(&self) -> u32 {
        self.u24(field::CURRENT_REG)
    }
    /// Power parameter.
    pub fn power_param(&self) -> u32 {
        self.u24(field::POWER_PARAM)
    }
    /// Power REG.
    pub fn power_reg(&self) -> u32 {
        self.u24(field::POWER_REG)
    }
    /// Data update REG (byte 20).
    pub fn data_update(&self) -> u8 {
        self.bytes()[field::DATA_UPDATE]
    }
    /// PF REG: the 16-bit energy pulse counter.
    pub fn pf_reg(&self) -> u16 {
        self.u24(field::PF_REG) as u16
    }
    /// Checksum byte as received.
    pub fn checksum(&self) -> u8 {
        self.bytes()[field::CHECKSUM]
    }
    /// Checksum the bytes call for.
    pub fn computed_checksum(&self) -> u8 {
        checksum(&self.bytes()[field::SUMMED])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Hlw8032Frame<T> {
    fn bytes_mut(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }
    fn set_u24(&mut self, r: core::ops::Range<usize>, v: u32) {
        let be = v.min(REG_MAX).to_be_bytes();
        if let Some(dst) = self.bytes_mut().get_mut(r) {
            dst.copy_from_slice(&be[1..]);
        }
    }
    fn set_byte(&mut self, i: usize, v: u8) {
        if let Some(b) = self.bytes_mut().get_mut(i) {
            *b = v;
        }
    }
    /// Recompute and store the checksum.
    pub fn fill_checksum(&mut self) {
        let c = self.computed_checksum();
        self.set_byte(field::CHECKSUM, c);
    }
}

/// The state REG decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct StateFlags {
    /// Bit 3 of a `0xFx` state: the voltage period overflowed (no or very low voltage).
    pub voltage_overflow: bool,
    /// Bit 2: the current period overflowed (no or very low current).
    pub current_overflow: bool,
    /// Bit 1: the power period overflowed (power ≈ 0, typical at no load).
    pub power_overflow: bool,
    /// Bit 0: coefficient storage abnormal.
    pub coefficients_abnormal: bool,
}

impl StateFlags {
    /// From a state byte that passed [`is_state_byte`] (`0x55` and `0xAA` have no flags).
    pub const fn from_state(b: u8) -> StateFlags {
        if b & 0xF0 == 0xF0 {
            StateFlags {
                voltage_overflow: b & 0x08 != 0,
                current_overflow: b & 0x04 != 0,
                power_overflow: b & 0x02 != 0,
                coefficients_abnormal: b & 0x01 != 0,
            }
        } else {
            StateFlags {
                voltage_overflow: false,
                current_overflow: false,
                power_overflow: false,
                coefficients_abnormal: false,
            }
        }
    }

    /// The state byte for these flags: `0x55` when none is set, else `0xF0 | flags`.
    pub const fn to_state(self) -> u8 {
        let nibble = (self.voltage_overflow as u8) << 3
            | (self.current_overflow as u8) << 2
            | (self.power_overflow as u8) << 1
            | self.coefficients_abnormal as u8;
        if nibble == 0 {
            STATE_NORMAL
        } else {
            0xF0 | nibble
        }
    }
}

/// Data update REG bit 6: the voltage REG was updated.
pub const UPDATE_VOLTAGE: u8 = 0x40;
/// Data update REG bit 5: the current REG was updated.
pub const UPDATE_CURRENT: u8 = 0x20;
/// Data update REG bit 4: the power REG was updated (clear below ~5 W).
pub const UPDATE_POWER: u8 = 0x10;
/// Data update REG bit 7: toggles each time the PF REG wraps.
pub const UPDATE_PF_CARRY: u8 = 0x80;

/// The registers of one usable frame (the parsed representation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Measurement {
    /// Overflow flags from the state REG.
    pub flags: StateFlags,
    /// Voltage parameter (24 bits).
    pub voltage_param: u32,
    /// Voltage REG (24 bits).
    pub voltage_reg: u32,
    /// Current parameter (24 bits).
    pub current_param: u32,
    /// Current REG (24 bits).
    pub current_reg: u32,
    /// Power parameter (24 bits).
    pub power_param: u32,
    /// Power REG (24 bits).
    pub power_reg: u32,
    /// Data update REG.
    pub data_update: u8,
    /// PF REG.
    pub pf_reg: u16,
}

/// Calibrated values of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Reading {
    /// RMS voltage, volts.
    pub voltage_v: f32,
    /// RMS current, amps.
    pub current_a: f32,
    /// Active power, watts.
    pub power_w: f32,
    /// Power factor, 0..=1 (0 when there is no apparent power).
    pub power_factor: f32,
}

impl Measurement {
    /// Parse a checked frame. Frames the chip itself marks unusable (`0xAA`, coefficient
    /// storage abnormal) are errors; overflow flags are kept and zero their quantity in
    /// [`reading`](Self::reading).
    pub fn parse<T: AsRef<[u8]>>(frame: &Hlw8032Frame<T>) -> Result<Measurement, FrameError> {
        frame.check()?;
        let state = frame.state();
        if state == STATE_NOT_CALIBRATED {
            return Err(FrameError::NotCalibrated);
        }
        let flags = StateFlags::from_state(state);
        if flags.coefficients_abnormal {
            return Err(FrameError::CoefficientsAbnormal);
        }
        Ok(Measurement {
            flags,
            voltage_param: frame.voltage_param(),
            voltage_reg: frame.voltage_reg(),
            current_param: frame.current_param(),
            current_reg: frame.current_reg(),
            power_param: frame.power_param(),
            power_reg: frame.power_reg(),
            data_update: frame.data_update(),
            pf_reg: frame.pf_reg(),
        })
    }

    /// Parse the first [`FRAME_LEN`] bytes of `bytes`.
    pub fn parse_bytes(bytes: &[u8]) -> Result<Measurement, FrameError> {
        Self::parse(&Hlw8032Frame::new_checked(bytes)?)
    }

    /// Write this measurement as a frame (with check byte and checksum) into `frame`.
    /// Registers wider than 24 bits are saturated.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut Hlw8032Frame<T>) {
        frame.set_byte(field::STATE, self.flags.to_state());
        frame.set_byte(field::CHECK, CHECK_BYTE);
        frame.set_u24(field::VOLTAGE_PARAM, self.voltage_param);
        frame.set_u24(field::VOLTAGE_REG, self.voltage_reg);
        frame.set_u24(field::CURRENT_PARAM, self.current_param);
        frame.set_u24(field::CURRENT_REG, self.current_reg);
        frame.set_u24(field::POWER_PARAM, self.power_param);
        frame.set_u24(field::POWER_REG, self.power_reg);
        frame.set_byte(field::DATA_UPDATE, self.data_update);
        let pf = self.pf_reg.to_be_bytes();
        frame.set_byte(field::PF_REG.start, pf[0]);
        frame.set_byte(field::PF_REG.start + 1, pf[1]);
        frame.fill_checksum();
    }

    /// This measurement as a 24-byte frame.
    pub fn to_bytes(&self) -> [u8; FRAME_LEN] {
        let mut buf = [0u8; FRAME_LEN];
        if let Ok(mut frame) = Hlw8032Frame::new_unchecked(&mut buf[..]) {
            self.emit(&mut frame);
        }
        buf
    }

    /// Volts, amps, watts and power factor with `cal`.
    ///
    /// `V = VolPar / VolREG × Kv − v_offset`, `I = CurPar / CurREG × Ki − i_offset`,
    /// `P = PowPar / PowREG × Kv × Ki`, `PF = P / (V × I)` clamped to 0..=1.
    ///
    /// Like ENERGIS, voltage and current come from their registers whatever the overflow flags
    /// say (an overflowed period is a huge REG and reads as nearly zero by itself; real no-load
    /// frames carry `0xFA`, and zeroing the voltage on bit 3 would show 0 V on an idle outlet).
    /// Power is zero when its period overflowed or the power update bit is clear (below ~5 W the
    /// chip stops updating the power REG). A zero REG reads as zero, implausible values
    /// (V > 400, I > 100, P > 40 kW) read as zero as on ENERGIS, and offsets never drive a value
    /// below zero.
    pub fn reading(&self, cal: &ChannelCalibration) -> Reading {
        let ratio = |param: u32, reg: u32| -> f32 {
            if reg == 0 {
                0.0
            } else {
                param as f32 / reg as f32
            }
        };
        let finite_or_zero = |x: f32| if x.is_finite() { x } else { 0.0 };
        let mut v =
            finite_or_zero(ratio(self.voltage_param, self.voltage_reg) * cal.kv - cal.v_offset);
        let mut i =
            finite_or_zero(ratio(self.current_param, self.current_reg) * cal.ki - cal.i_offset);
        let mut p = if self.flags.power_overflow || self.data_update & UPDATE_POWER == 0 {
            0.0
        } else {
            finite_or_zero(ratio(self.power_param, self.power_reg) * cal.kv * cal.ki)
        };
        if !(0.0..=MAX_VOLTS).contains(&v) {
            v = 0.0;
        }
        if !(0.0..=MAX_AMPS).contains(&i) {
            i = 0.0;
        }
        if !(0.0..=MAX_WATTS).contains(&p) {
            p = 0.0;
        }
        let s = v * i;
        let pf = if s > 0.0 {
            (p / s).clamp(0.0, 1.0)
        } else {
            0.0
        };
        Reading {
            voltage_v: v,
            current_a: i,
            power_w: p,
            power_factor: pf,
        }
    }
}

/// Counters of a [`FrameSync`], for telemetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SyncStats {
    /// Well-formed frames found.
    pub frames: u32,
    /// Bytes skipped while looking for a frame start.
    pub skipped: u32,
}

/// Finds frames in a byte stream that may start mid-frame or carry garbage.
///
/// It keeps a sliding window of the last [`FRAME_LEN`] bytes and reports a frame as soon as the
/// window holds one that passes [`Hlw8032Frame::new_checked`]; the window is then emptied, so a
/// frame is never reported twice and bytes are never reused across frames. Memory is fixed: the
/// window is the whole state, and the oldest byte falls out when a new one comes in (the full
/// policy; it is counted in [`SyncStats::skipped`]).
#[derive(Debug, Clone)]
pub struct FrameSync {
    window: [u8; FRAME_LEN],
    len: usize,
    stats: SyncStats,
}

impl Default for FrameSync {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameSync {
    /// An empty window.
    pub const fn new() -> Self {
        FrameSync {
            window: [0; FRAME_LEN],
            len: 0,
            stats: SyncStats {
                frames: 0,
                skipped: 0,
            },
        }
    }

    /// Forget buffered bytes (after the mux switched to another chip).
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Counters.
    pub fn stats(&self) -> SyncStats {
        self.stats
    }

    /// Feed one byte; returns the frame it completes, if any.
    pub fn push(&mut self, byte: u8) -> Option<[u8; FRAME_LEN]> {
        if self.len < FRAME_LEN {
            if let Some(slot) = self.window.get_mut(self.len) {
                *slot = byte;
            }
            self.len += 1;
        } else {
            self.window.rotate_left(1);
            self.window[FRAME_LEN - 1] = byte;
            self.stats.skipped = self.stats.skipped.wrapping_add(1);
        }
        if self.len == FRAME_LEN && Hlw8032Frame::new_checked(&self.window[..]).is_ok() {
            self.len = 0;
            self.stats.frames = self.stats.frames.wrapping_add(1);
            return Some(self.window);
        }
        None
    }

    /// Feed `bytes` up to and including the first byte that completes a frame. Returns the
    /// frame and how many bytes were consumed; the rest is left to the caller.
    pub fn push_slice(&mut self, bytes: &[u8]) -> (Option<[u8; FRAME_LEN]>, usize) {
        for (n, b) in bytes.iter().enumerate() {
            if let Some(frame) = self.push(*b) {
                return (Some(frame), n + 1);
            }
        }
        (None, bytes.len())
    }
}

/// The first well-formed frame in `bytes`: its offset and a view of it.
pub fn find_frame(bytes: &[u8]) -> Option<(usize, Hlw8032Frame<&[u8]>)> {
    (0..bytes.len().saturating_sub(FRAME_LEN - 1)).find_map(|start| {
        let rest = bytes.get(start..)?;
        Hlw8032Frame::new_checked(rest).ok().map(|f| (start, f))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cal() -> ChannelCalibration {
        ChannelCalibration {
            kv: 1.88,
            ki: 1.0,
            v_offset: 0.0,
            i_offset: 0.0,
        }
    }

    /// A frame for 230 V, 2 A, 400 W (with the default calibration), all registers updated.
    fn loaded() -> Measurement {
        Measurement {
            flags: StateFlags::default(),
            voltage_param: 230_000,
            voltage_reg: 1_880,
            current_param: 20_000,
            current_reg: 10_000,
            power_param: 4_000_000,
            power_reg: 18_800,
            data_update: 0x71,
            pf_reg: 0x1234,
        }
    }

    #[track_caller]
    fn assert_close(actual: f32, expected: f32) {
        assert!(
            (actual - expected).abs() < 1e-3 * expected.abs().max(1.0),
            "{actual} != {expected}"
        );
    }

    #[test]
    fn emitted_frame_parses_back_to_the_same_measurement() {
        let m = loaded();
        let bytes = m.to_bytes();
        assert_eq!(bytes[0], 0x55);
        assert_eq!(bytes[1], 0x5A);
        assert_eq!(Measurement::parse_bytes(&bytes), Ok(m));
    }

    #[test]
    fn a_real_no_load_frame_decodes_to_zero_power() {
        // 0xF2 (power overflow) as seen from a real chip with nothing plugged in.
        let mut m = loaded();
        m.flags = StateFlags::from_state(0xF2);
        m.data_update = 0x61;
        let bytes = m.to_bytes();
        assert_eq!(bytes[0], 0xF2);
        let r = Measurement::parse_bytes(&bytes).unwrap().reading(&cal());
        assert_close(r.voltage_v, 230.0);
        assert_eq!(r.power_w, 0.0);
        assert_eq!(r.power_factor, 0.0);
        // 0xFA (voltage-overflow bit too), also seen at no load: the voltage still reads.
        m.flags = StateFlags::from_state(0xFA);
        let r = Measurement::parse_bytes(&m.to_bytes())
            .unwrap()
            .reading(&cal());
        assert_close(r.voltage_v, 230.0);
        assert_eq!(r.power_w, 0.0);
    }

    #[test]
    fn power_below_the_update_threshold_reads_as_zero() {
        let mut m = loaded();
        m.data_update = 0x61; // power REG not updated
        let r = m.reading(&cal());
        assert_close(r.current_a, 2.0);
        assert_eq!(r.power_w, 0.0);
    }

    #[test]
    fn calibration_scales_voltage_current_and_power() {
        let r = loaded().reading(&cal());
        assert_close(r.voltage_v, 230.0);
        assert_close(r.current_a, 2.0);
        assert_close(r.power_w, 400.0);
        assert_close(r.power_factor, 400.0 / 460.0);
        let offsets = ChannelCalibration {
            kv: 1.88,
            ki: 2.0,
            v_offset: 1.0,
            i_offset: 0.5,
        };
        let r = loaded().reading(&offsets);
        assert_close(r.voltage_v, 229.0);
        assert_close(r.current_a, 3.5);
        assert_close(r.power_w, 800.0);
    }

    #[test]
    fn zero_registers_and_implausible_values_read_as_zero_not_infinity() {
        let mut m = loaded();
        m.voltage_reg = 0;
        m.current_reg = 1; // 20 000 A
        let r = m.reading(&cal());
        assert_eq!((r.voltage_v, r.current_a, r.power_factor), (0.0, 0.0, 0.0));
    }

    #[test]
    fn checksum_is_the_low_byte_of_the_sum_of_bytes_2_to_22() {
        let bytes = loaded().to_bytes();
        let sum: u32 = bytes[2..23].iter().map(|b| u32::from(*b)).sum();
        assert_eq!(bytes[23], sum as u8);
        let mut bad = bytes;
        bad[10] ^= 0x01;
        assert!(matches!(
            Measurement::parse_bytes(&bad),
            Err(FrameError::Checksum { .. })
        ));
    }

    #[test]
    fn malformed_frames_are_rejected_with_the_reason() {
        let good = loaded().to_bytes();
        assert_eq!(
            Measurement::parse_bytes(&good[..23]),
            Err(FrameError::Truncated)
        );
        let mut b = good;
        b[0] = 0x12;
        assert_eq!(
            Measurement::parse_bytes(&b),
            Err(FrameError::BadState(0x12))
        );
        let mut b = good;
        b[1] = 0x5B;
        assert_eq!(
            Measurement::parse_bytes(&b),
            Err(FrameError::BadCheckByte(0x5B))
        );
        let mut b = good;
        b[0] = STATE_NOT_CALIBRATED;
        assert_eq!(Measurement::parse_bytes(&b), Err(FrameError::NotCalibrated));
        let mut b = good;
        b[0] = 0xF1;
        assert_eq!(
            Measurement::parse_bytes(&b),
            Err(FrameError::CoefficientsAbnormal)
        );
    }

    #[test]
    fn sync_finds_a_frame_after_garbage_and_a_partial_frame() {
        let frame = loaded().to_bytes();
        let mut stream = heapless::Vec::<u8, 96>::new();
        stream.extend_from_slice(&[0x5A, 0x55, 0x00, 0xF2]).unwrap();
        stream.extend_from_slice(&frame[7..]).unwrap(); // tail of a frame we joined late
        stream.extend_from_slice(&frame).unwrap();
        let mut sync = FrameSync::new();
        let (found, used) = sync.push_slice(&stream);
        assert_eq!(found, Some(frame));
        assert_eq!(used, stream.len());
        assert_eq!(sync.stats().skipped, (stream.len() - FRAME_LEN) as u32);
        assert_eq!(
            find_frame(&stream).map(|(at, _)| at),
            Some(stream.len() - 24)
        );
    }

    #[test]
    fn sync_reports_back_to_back_frames_once_each() {
        let a = loaded().to_bytes();
        let mut m = loaded();
        m.pf_reg += 1;
        let b = m.to_bytes();
        let mut sync = FrameSync::new();
        let frames: heapless::Vec<[u8; 24], 4> =
            a.iter().chain(&b).filter_map(|x| sync.push(*x)).collect();
        assert_eq!(frames.as_slice(), &[a, b]);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = Measurement::parse_bytes(&bytes);
            let _ = find_frame(&bytes);
            let mut sync = FrameSync::new();
            for b in &bytes {
                if let Some(f) = sync.push(*b) {
                    prop_assert!(Hlw8032Frame::new_checked(&f[..]).is_ok());
                }
            }
        }

        #[test]
        fn arbitrary_registers_round_trip_through_a_frame(
            v in 0u32..=REG_MAX, vr in 0u32..=REG_MAX, c in 0u32..=REG_MAX, cr in 0u32..=REG_MAX,
            p in 0u32..=REG_MAX, pr in 0u32..=REG_MAX, upd: u8, pf: u16, flags in 0u8..16,
        ) {
            let m = Measurement {
                flags: StateFlags::from_state(0xF0 | (flags & 0x0E)),
                voltage_param: v, voltage_reg: vr, current_param: c, current_reg: cr,
                power_param: p, power_reg: pr, data_update: upd, pf_reg: pf,
            };
            prop_assert_eq!(Measurement::parse_bytes(&m.to_bytes()), Ok(m));
            let r = m.reading(&cal());
            prop_assert!(r.voltage_v.is_finite() && r.current_a >= 0.0 && (0.0..=1.0).contains(&r.power_factor));
        }

        #[test]
        fn a_frame_is_found_behind_any_garbage(garbage in proptest::collection::vec(any::<u8>(), 0..60)) {
            let frame = loaded().to_bytes();
            let mut sync = FrameSync::new();
            // No 0x5A in the garbage: then no window starting in it can pass the check byte,
            // and the test stays deterministic.
            let garbage: std::vec::Vec<u8> = garbage.into_iter().map(|b| if b == CHECK_BYTE { 0 } else { b }).collect();
            let mut found = heapless::Vec::<[u8; 24], 8>::new();
            for b in garbage.iter().chain(&frame) {
                if let Some(f) = sync.push(*b) {
                    let _ = found.push(f);
                }
            }
            prop_assert_eq!(found.as_slice(), &[frame]);
        }
    }
}
