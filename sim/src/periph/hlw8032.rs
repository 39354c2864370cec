//! Eight HLW8032 power-metering chips behind a 74HC4051 mux on one UART, as on ENERGIS.
//!
//! This module owns the chips' measurement model (mains voltage with seeded noise, a load in
//! watts and a power factor per outlet that draws current only while the outlet is powered),
//! their registers and frames, the PF energy pulse counters, the mux, and the fault knobs.
//!
//! # The chip (docs/interfaces.md §3)
//! A chip transmits a 24-byte frame continuously at 4800 baud 8E1: 24 × 11 bits = 55 ms per
//! frame, back to back. Multi-byte fields are big-endian:
//!
//! | byte  | field |
//! |-------|-------|
//! | 0     | state REG: 0x55 normal; 0xF0 \| flags (bit3 voltage, bit2 current, bit1 power REG overflow, bit0 coefficients abnormal); 0xAA not calibrated |
//! | 1     | check REG 0x5A |
//! | 2-4, 5-7 | voltage parameter, voltage REG |
//! | 8-10, 11-13 | current parameter, current REG |
//! | 14-16, 17-19 | power parameter, power REG |
//! | 20    | data update REG: bit7 PF carry (toggles when the PF REG wraps), bit6 voltage, bit5 current, bit4 power updated |
//! | 21-22 | PF REG: energy pulse counter |
//! | 23    | checksum: low byte of the sum of bytes 2..=22 |
//!
//! The REGs are periods, so they are the parameters scaled by the inverse of the quantity:
//! `VolREG = VolPar × Kv / V`, `CurREG = CurPar × Ki / I`, `PowREG = PowPar × Kv × Ki / P`
//! (the inverse of the readers' `V = VolPar / VolREG × Kv` …). A REG that does not fit 24 bits
//! overflowed: it reads 0xFFFFFF and its state flag is set. This module builds frames with its
//! own code from that table, not with the firmware's encoder, so tests that decode them with
//! `firmware_core::pdu::hlw8032` check two independent readings of the datasheet.
//!
//! What a chip reports:
//! * **Under load** (≥ 5 W): state 0x55, update 0x71.
//! * **Below ~5 W**: the power REG is not refreshed: update 0x61 (power bit clear), and the REG
//!   holds the value of the last period that was refreshed, as on the chip. Before any refresh
//!   since power-up it holds the overflow value 0xFFFFFF, flagged as a power REG overflow (the
//!   held value is what the flag describes).
//! * **No load** (outlet off or 0 W): current and power REGs at 0xFFFFFF, state **0xF2** (power
//!   overflow only, as real no-load frames show: the chip keeps measuring a little noise
//!   current and does not flag it), update 0x61.
//! * **No mains** (voltage 0): the voltage REG overflows too: state 0xFA, update bit6 clear.
//! * **PF REG**: every chip counts energy all the time, selected or not, at
//!   `PowPar × Kv × Ki / 10⁶` joules per pulse (libdriver's "pulses per kWh" inverted); the
//!   16-bit counter wraps and each wrap toggles bit7 of the update REG.
//!
//! Low-nibble bit 0 of the update REG is set as in every captured frame (its meaning is not
//! documented).
//!
//! # The mux and the line
//! Select lines A, B, C and the active-low EN come from the relay expander's port B bits 0-3
//! ([`BankWiring`]). The chips run in step: every [`FRAME_PERIOD`] each one measures and lays
//! out a frame. The bank writes the line in chunks of [`DEFAULT_CHUNK`] bytes, each at the
//! instant its first byte starts (one timer per chunk, not per byte; the UART times the bytes,
//! back to back), taking the bytes at that offset from whichever chip the mux passes at that
//! instant. A switch in the middle of a frame thus cuts the old chip's frame and continues with
//! the new chip's, mid-frame, as on the board, within one chunk (≈ 9.2 ms). Whole-frame writes
//! (one timer per frame) would let the old chip's frame run on for up to 55 ms after a switch,
//! long enough for a reader that settles for 60 ms to take it for the new chip's. EN high or a
//! silent chip leaves the line idle. The bank assumes its line runs at 4800 baud 8E1, as the
//! chip does.
//!
//! # Faults and counters
//! Per chip: a corrupted byte ([`Hlw8032Bank::corrupt_frames`], seeded position and bit
//! pattern), a wrong checksum ([`Hlw8032Bank::bad_checksum_frames`]), silence
//! ([`Hlw8032Bank::set_silent`]), failed calibration (state 0xAA,
//! [`Hlw8032Bank::set_uncalibrated`]); for the bank, a mux stuck on one chip
//! ([`Hlw8032Bank::stick_mux`]). Frame faults apply to frames that start on the line with
//! their chip selected. Every fault change is a trace event; [`ChipStats`] and [`BankStats`]
//! count what happened.
use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;

use embedded_io_async::Write;
use firmware_core::time::Duration;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::mcp23017::{PinLevels, Port};
use super::panel::Relays;
use super::uart::UartPort;
use crate::kernel::{JoinHandle, Kernel, SimClock, TaskSpec, Tracer};

/// Chips on the bank, one per outlet.
pub const CHIPS: usize = 8;
/// Bytes per frame.
pub const FRAME_LEN: usize = 24;
/// One frame on the wire: 24 characters of 11 bits (8E1) at 4800 baud.
pub const FRAME_PERIOD: Duration = Duration::from_micros(55_000);
/// Bytes written per wake-up by default: ≈ 9.2 ms of line time, the mux's worst-case lag.
pub const DEFAULT_CHUNK: usize = 4;
/// Below this the chip stops refreshing its power REG.
pub const MIN_UPDATED_POWER_W: f64 = 5.0;

const REG_MAX: u32 = 0x00FF_FFFF;

/// What a meter reads behind an open relay: a real ENERGIS reports about 0.06 V on a switched-off
/// outlet (coupling across the open contact into the voltage divider), not 0 and not mains. With
/// the default coefficients that is a voltage REG of about 5.9 million, inside the 24-bit range,
/// so the frame carries a valid, tiny reading rather than an overflow flag.
pub const OPEN_CONTACT_VOLTS: f64 = 0.06;
const CHECK: u8 = 0x5A;
const STATE_NORMAL: u8 = 0x55;
const STATE_UNCALIBRATED: u8 = 0xAA;
const UPDATE_CARRY: u8 = 0x80;
const UPDATE_V: u8 = 0x40;
const UPDATE_I: u8 = 0x20;
const UPDATE_P: u8 = 0x10;
const UPDATE_LOW: u8 = 0x01;

/// The factory coefficients in a chip and the board's scaling factors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChipCoefficients {
    /// Voltage parameter (24 bits).
    pub voltage_param: u32,
    /// Current parameter (24 bits).
    pub current_param: u32,
    /// Power parameter (24 bits).
    pub power_param: u32,
    /// Voltage divider factor: 4 × 470 kΩ over 1 kΩ → 1.88.
    pub kv: f64,
    /// Current factor, 1 / (shunt Ω × 1000): 1 mΩ → 1.0.
    pub ki: f64,
}

impl Default for ChipCoefficients {
    /// Typical factory values (as seen in captured frames) with ENERGIS's Kv = 1.88, Ki = 1.0.
    fn default() -> Self {
        ChipCoefficients {
            voltage_param: 189_192,
            current_param: 16_172,
            power_param: 5_035_300,
            kv: 1.88,
            ki: 1.0,
        }
    }
}

impl ChipCoefficients {
    /// Energy one PF pulse stands for, joules.
    pub fn joules_per_pulse(&self) -> f64 {
        f64::from(self.power_param) * self.kv * self.ki / 1e6
    }
}

/// How many frames a fault lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeat {
    /// The next `n` frames that reach the line.
    Next(u32),
    /// Until [`Hlw8032Bank::clear_faults`].
    UntilCleared,
}

impl Repeat {
    /// Whether the fault applies to this frame; consumes one count.
    fn take(slot: &mut Option<Repeat>) -> bool {
        match slot {
            None => false,
            Some(Repeat::UntilCleared) => true,
            Some(Repeat::Next(n)) => {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    *slot = None;
                }
                true
            }
        }
    }
}

impl fmt::Display for Repeat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Repeat::Next(n) => write!(f, "next {n} frames"),
            Repeat::UntilCleared => f.write_str("until cleared"),
        }
    }
}

/// Why the bank refused a setting.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HlwError {
    /// Chips are numbered 0-7.
    #[error("no HLW8032 channel {0} (0-7)")]
    Channel(usize),
    /// A load is a finite, non-negative number of watts.
    #[error("load must be a finite number of watts ≥ 0, got {0}")]
    Watts(f64),
    /// A power factor is above 0 and at most 1.
    #[error("power factor must be in (0, 1], got {0}")]
    PowerFactor(f64),
    /// Mains voltage and its noise are finite and non-negative.
    #[error("voltage and noise must be finite and ≥ 0, got {0}")]
    Voltage(f64),
    /// A chunk holds 1 to 24 bytes.
    #[error("chunk must be 1 to 24 bytes, got {0}")]
    Chunk(usize),
    /// Kv and Ki are finite and above zero; parameters fit 24 bits and are above zero.
    #[error("bad coefficients: {0}")]
    Coefficients(String),
}

/// What one chip did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChipStats {
    /// Frames produced (every period, selected or not).
    pub frames: u64,
    /// Frames that started on the line (the mux may have cut them short).
    pub sent: u64,
    /// Frames sent with a corrupted byte.
    pub corrupted: u64,
    /// Frames sent with a wrong checksum.
    pub bad_checksums: u64,
    /// Frame periods that began with it selected but silent.
    pub silent: u64,
    /// PF REG wraps.
    pub pf_wraps: u64,
}

/// What the bank did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BankStats {
    /// Frame periods elapsed.
    pub periods: u64,
    /// Frames that started on the line.
    pub frames_sent: u64,
    /// Bytes written to the UART.
    pub bytes_sent: u64,
    /// Chunks with the line idle (mux disabled or the chip silent).
    pub idle_chunks: u64,
    /// Times the chip reaching the line changed.
    pub mux_changes: u64,
}

/// The board wiring the bank reads: the mux select lines and whether each outlet is powered.
pub struct BankWiring {
    /// Returns the relay expander's port B: bits 0-2 select, bit 3 is the active-low EN.
    pub mux: Box<dyn Fn() -> u8>,
    /// Whether outlet `ch` (0-7) has mains on it (its relay contact is closed).
    pub powered: Box<dyn Fn(usize) -> bool>,
}

impl BankWiring {
    /// Mux from port B and outlets from port A of one expander's pins (coil drive, no contact
    /// settle time): `BankWiring::from_pins(relay_mcp.borrow().pins())`.
    pub fn from_pins(pins: PinLevels) -> Self {
        let p = pins.clone();
        BankWiring {
            mux: Box::new(move || p.port(Port::B)),
            powered: Box::new(move |ch| ch < 8 && pins.port(Port::A) & (1 << ch) != 0),
        }
    }
}

impl BankWiring {
    /// Mux from port B of the relay expander's pins, outlets powered while their relay contact
    /// is closed (settle time included): the ENERGIS wiring
    /// (`BankWiring::with_relays(relay_mcp.borrow().pins(), relays.clone())`).
    pub fn with_relays(pins: PinLevels, relays: Relays) -> Self {
        BankWiring {
            mux: Box::new(move || pins.port(Port::B)),
            powered: Box::new(move |ch| relays.is_closed(ch)),
        }
    }
}

/// The chip the mux passes for a port B value: `None` when EN (bit 3) is high.
pub fn mux_channel(port_b: u8) -> Option<usize> {
    if port_b & 0x08 != 0 {
        None
    } else {
        Some(usize::from(port_b & 0x07))
    }
}

/// The registers of one frame, before framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registers {
    /// State REG.
    pub state: u8,
    /// Voltage parameter.
    pub voltage_param: u32,
    /// Voltage REG.
    pub voltage_reg: u32,
    /// Current parameter.
    pub current_param: u32,
    /// Current REG.
    pub current_reg: u32,
    /// Power parameter.
    pub power_param: u32,
    /// Power REG.
    pub power_reg: u32,
    /// Data update REG.
    pub update: u8,
    /// PF REG.
    pub pf: u16,
}

impl Registers {
    /// The 24 bytes on the wire (the part's own frame builder, see the module docs).
    pub fn frame(&self) -> [u8; FRAME_LEN] {
        let mut f = [0u8; FRAME_LEN];
        f[0] = self.state;
        f[1] = CHECK;
        let fields = [
            self.voltage_param,
            self.voltage_reg,
            self.current_param,
            self.current_reg,
            self.power_param,
            self.power_reg,
        ];
        for (i, v) in fields.iter().enumerate() {
            let v = (*v).min(REG_MAX);
            let at = 2 + 3 * i;
            f[at] = (v >> 16) as u8;
            f[at + 1] = (v >> 8) as u8;
            f[at + 2] = v as u8;
        }
        f[20] = self.update;
        f[21] = (self.pf >> 8) as u8;
        f[22] = self.pf as u8;
        f[23] = f[2..23].iter().fold(0u8, |s, b| s.wrapping_add(*b));
        f
    }
}

#[derive(Debug, Clone, Default)]
struct ChipFaults {
    corrupt: Option<Repeat>,
    bad_checksum: Option<Repeat>,
    silent: bool,
    uncalibrated: bool,
}

#[derive(Debug, Clone)]
struct Chip {
    coeff: ChipCoefficients,
    load_w: f64,
    pf: f64,
    pulses: f64,
    pf_reg: u16,
    carry: bool,
    /// The power REG as last refreshed; what a frame carries while the update bit is clear.
    power_reg: u32,
    faults: ChipFaults,
    stats: ChipStats,
}

/// A period register for `param × scale / quantity`, or `None` when it overflows 24 bits.
fn period_reg(param: u32, scale: f64, quantity: f64) -> Option<u32> {
    if quantity <= 0.0 {
        return None;
    }
    let reg = (f64::from(param) * scale / quantity).round();
    if reg.is_finite() && reg >= 1.0 && reg <= f64::from(REG_MAX) {
        Some(reg as u32)
    } else {
        None
    }
}

impl Chip {
    fn new(coeff: ChipCoefficients) -> Self {
        Chip {
            coeff,
            load_w: 0.0,
            pf: 1.0,
            pulses: 0.0,
            pf_reg: 0,
            carry: false,
            power_reg: REG_MAX,
            faults: ChipFaults::default(),
            stats: ChipStats::default(),
        }
    }

    /// One measurement period: count energy and produce the registers.
    fn tick(&mut self, volts: f64, powered: bool, period: Duration) -> Registers {
        let c = self.coeff;
        let watts = if powered && volts > 0.0 {
            self.load_w
        } else {
            0.0
        };
        self.pulses += watts * period.as_micros() as f64 / 1e6 / c.joules_per_pulse();
        let whole = self.pulses.floor();
        self.pulses -= whole;
        // Whole pulses per period stay far below 2^16 for any load a 24-bit REG can show.
        let (pf, wrapped) = self.pf_reg.overflowing_add(whole.min(65_535.0) as u16);
        self.pf_reg = pf;
        if wrapped {
            self.carry = !self.carry;
            self.stats.pf_wraps += 1;
        }
        self.stats.frames += 1;

        let mut state_flags = 0u8;
        let mut update = UPDATE_LOW;
        let voltage_reg = match period_reg(c.voltage_param, c.kv, volts) {
            Some(r) => {
                update |= UPDATE_V;
                r
            }
            None => {
                state_flags |= 0x08;
                REG_MAX
            }
        };
        let amps = if watts > 0.0 {
            watts / (volts * self.pf)
        } else {
            0.0
        };
        let current_reg = match period_reg(c.current_param, c.ki, amps) {
            Some(r) => r,
            // No current: the period overflows, but real chips keep measuring noise and do not
            // flag it (no-load frames read 0xF2).
            None if watts <= 0.0 => REG_MAX,
            None => {
                state_flags |= 0x04;
                REG_MAX
            }
        };
        if state_flags & 0x08 == 0 {
            update |= UPDATE_I;
        }
        let power_reg = match period_reg(c.power_param, c.kv * c.ki, watts) {
            Some(r) if watts >= MIN_UPDATED_POWER_W => {
                update |= UPDATE_P;
                self.power_reg = r;
                r
            }
            // Below the threshold no period completes: the REG keeps the last one.
            Some(_) => {
                if self.power_reg == REG_MAX {
                    state_flags |= 0x02;
                }
                self.power_reg
            }
            None => {
                state_flags |= 0x02;
                self.power_reg = REG_MAX;
                REG_MAX
            }
        };
        if self.carry {
            update |= UPDATE_CARRY;
        }
        let state = if self.faults.uncalibrated {
            STATE_UNCALIBRATED
        } else if state_flags == 0 {
            STATE_NORMAL
        } else {
            0xF0 | state_flags
        };
        Registers {
            state,
            voltage_param: c.voltage_param,
            voltage_reg,
            current_param: c.current_param,
            current_reg,
            power_param: c.power_param,
            power_reg,
            update,
            pf: self.pf_reg,
        }
    }
}

struct BankState {
    name: String,
    chips: Vec<Chip>,
    volts: f64,
    noise_v: f64,
    rng: ChaCha8Rng,
    wiring: BankWiring,
    stuck: Option<usize>,
    last_source: Option<usize>,
    last_frames: Vec<Option<Registers>>,
    /// This period's bytes per chip, faults applied.
    current: Vec<[u8; FRAME_LEN]>,
    chunk: usize,
    stats: BankStats,
    stopped: bool,
}

impl BankState {
    fn chip(&mut self, ch: usize) -> Result<&mut Chip, HlwError> {
        self.chips.get_mut(ch).ok_or(HlwError::Channel(ch))
    }

    fn source(&self) -> Option<usize> {
        self.stuck.or_else(|| mux_channel((self.wiring.mux)()))
    }

    /// Start of a frame period: every chip measures and lays out its frame.
    fn start_period(&mut self, period: Duration) {
        self.stats.periods += 1;
        let source = self.source();
        for ch in 0..CHIPS {
            let noise = if self.noise_v > 0.0 {
                self.rng.random_range(-self.noise_v..=self.noise_v)
            } else {
                0.0
            };
            let powered = (self.wiring.powered)(ch);
            // Each meter measures behind its relay: mains while the contact is closed, only the
            // residue across the open contact otherwise. The noise is drawn either way, so the
            // other channels see the same random sequence whatever the relays do.
            let volts = if powered {
                (self.volts + noise).max(0.0)
            } else {
                OPEN_CONTACT_VOLTS
            };
            let regs = self.chips[ch].tick(volts, powered, period);
            self.last_frames[ch] = Some(regs);
            let mut bytes = regs.frame();
            // Faults count frames that start on the line.
            let chip = &mut self.chips[ch];
            if source == Some(ch) && !chip.faults.silent {
                if Repeat::take(&mut chip.faults.bad_checksum) {
                    bytes[FRAME_LEN - 1] = bytes[FRAME_LEN - 1].wrapping_add(1);
                    chip.stats.bad_checksums += 1;
                }
                if Repeat::take(&mut chip.faults.corrupt) {
                    let at = self.rng.random_range(0..FRAME_LEN);
                    let mask: u8 = self.rng.random_range(1..=255);
                    bytes[at] ^= mask;
                    chip.stats.corrupted += 1;
                }
            }
            self.current[ch] = bytes;
        }
    }

    /// The bytes `offset..offset + len` of this period that reach the line now, if any.
    fn chunk(&mut self, offset: usize, len: usize) -> Option<Vec<u8>> {
        let source = self.source();
        if source != self.last_source {
            self.stats.mux_changes += 1;
            self.last_source = source;
        }
        let Some(ch) = source else {
            self.stats.idle_chunks += 1;
            return None;
        };
        let chip = &mut self.chips[ch];
        if chip.faults.silent {
            if offset == 0 {
                chip.stats.silent += 1;
            }
            self.stats.idle_chunks += 1;
            return None;
        }
        if offset == 0 {
            chip.stats.sent += 1;
            self.stats.frames_sent += 1;
        }
        let end = (offset + len).min(FRAME_LEN);
        self.stats.bytes_sent += (end - offset) as u64;
        Some(self.current[ch][offset..end].to_vec())
    }
}

/// The eight chips, the mux and their UART. Cheap to clone; clones share the bank.
#[derive(Clone)]
pub struct Hlw8032Bank {
    state: Rc<RefCell<BankState>>,
    tracer: Tracer,
    clock: SimClock,
}

impl Hlw8032Bank {
    /// A bank named `name` (trace source) reading `wiring`, at 230 V ± 1 V noise, no loads.
    /// Each chip's factory parameters spread ±2 % around [`ChipCoefficients::default`], drawn
    /// from the RNG stream `hlw8032:<name>`, which also drives the noise and the corruption
    /// (`let meters = Hlw8032Bank::new(&k, "pdu.hlw", BankWiring::from_pins(pins));`).
    pub fn new(kernel: &Kernel, name: &str, wiring: BankWiring) -> Self {
        let mut rng = kernel.rng(&format!("hlw8032:{name}"));
        let chips = (0..CHIPS)
            .map(|_| {
                let base = ChipCoefficients::default();
                let mut spread = |v: u32| (f64::from(v) * rng.random_range(0.98..=1.02)) as u32;
                Chip::new(ChipCoefficients {
                    voltage_param: spread(base.voltage_param),
                    current_param: spread(base.current_param),
                    power_param: spread(base.power_param),
                    ..base
                })
            })
            .collect();
        Hlw8032Bank {
            state: Rc::new(RefCell::new(BankState {
                name: name.to_owned(),
                chips,
                volts: 230.0,
                noise_v: 1.0,
                rng,
                wiring,
                stuck: None,
                last_source: None,
                last_frames: vec![None; CHIPS],
                current: vec![[0; FRAME_LEN]; CHIPS],
                chunk: DEFAULT_CHUNK,
                stats: BankStats::default(),
                stopped: false,
            })),
            tracer: kernel.tracer(),
            clock: kernel.clock(),
        }
    }

    /// Start transmitting on `port` (the chip side of the meter link, 4800 8E1) from now, on a
    /// world task. Detach the handle or keep it; the task ends after [`Self::shutdown`].
    pub fn spawn(&self, kernel: &mut Kernel, mut port: UartPort) -> JoinHandle<()> {
        let state = self.state.clone();
        let clock = self.clock.clone();
        let name = self.state.borrow().name.clone();
        kernel.spawn(TaskSpec::world(name), async move {
            let t0 = clock.now();
            // Byte `n` of the endless stream starts at t0 + n × 11 bits / 4800 baud; each chunk
            // is written at (or a fraction of a µs before) the moment its first byte starts,
            // so the line stays busy back to back.
            let period_us = FRAME_PERIOD.as_micros();
            let mut byte: u64 = 0;
            loop {
                let at = t0 + Duration::from_micros(byte * period_us / FRAME_LEN as u64);
                clock.sleep_until(at).await;
                let offset = (byte % FRAME_LEN as u64) as usize;
                let (chunk, len) = {
                    let mut st = state.borrow_mut();
                    if st.stopped {
                        return;
                    }
                    if offset == 0 {
                        st.start_period(FRAME_PERIOD);
                    }
                    let len = st.chunk.min(FRAME_LEN - offset);
                    (st.chunk(offset, len), len)
                };
                if let Some(bytes) = chunk {
                    // The link's writes never fail.
                    let _ = port.write(&bytes).await;
                }
                byte += len as u64;
            }
        })
    }

    /// Bytes written per wake-up (1-24, default [`DEFAULT_CHUNK`]): the mux takes effect at
    /// chunk boundaries, so smaller chunks follow it more closely at the cost of more timers.
    pub fn set_chunk_bytes(&self, bytes: usize) -> Result<(), HlwError> {
        if !(1..=FRAME_LEN).contains(&bytes) {
            return Err(HlwError::Chunk(bytes));
        }
        self.state.borrow_mut().chunk = bytes;
        Ok(())
    }

    /// Stop transmitting at the next frame period (the bank loses power).
    pub fn shutdown(&self) {
        let mut st = self.state.borrow_mut();
        st.stopped = true;
        self.tracer.record(&st.name, "shutdown");
    }

    /// Put a load on outlet `ch` (0-7 = outlets 1-8): `watts` of active power at power factor
    /// `pf`. It draws only while the outlet is powered (`meters.set_load(2, 100.0, 0.95)?`).
    pub fn set_load(&self, ch: usize, watts: f64, pf: f64) -> Result<(), HlwError> {
        if !watts.is_finite() || watts < 0.0 {
            return Err(HlwError::Watts(watts));
        }
        if !(pf > 0.0 && pf <= 1.0) {
            return Err(HlwError::PowerFactor(pf));
        }
        let mut st = self.state.borrow_mut();
        let chip = st.chip(ch)?;
        chip.load_w = watts;
        chip.pf = pf;
        let text = format!("CH{} load {watts:.1} W pf {pf:.2}", ch + 1);
        self.tracer.record(&st.name, text);
        Ok(())
    }

    /// Outlet `ch`'s configured load as (watts, power factor), drawn or not.
    pub fn load(&self, ch: usize) -> Result<(f64, f64), HlwError> {
        let mut st = self.state.borrow_mut();
        let chip = st.chip(ch)?;
        Ok((chip.load_w, chip.pf))
    }

    /// Mains voltage (RMS) and the ± range of its per-frame noise.
    pub fn set_voltage(&self, volts: f64, noise_v: f64) -> Result<(), HlwError> {
        for v in [volts, noise_v] {
            if !v.is_finite() || v < 0.0 {
                return Err(HlwError::Voltage(v));
            }
        }
        let mut st = self.state.borrow_mut();
        st.volts = volts;
        st.noise_v = noise_v;
        let text = format!("mains {volts:.1} V ± {noise_v:.1} V");
        self.tracer.record(&st.name, text);
        Ok(())
    }

    /// Replace chip `ch`'s coefficients.
    pub fn set_coefficients(&self, ch: usize, coeff: ChipCoefficients) -> Result<(), HlwError> {
        let params = [coeff.voltage_param, coeff.current_param, coeff.power_param];
        if params.iter().any(|p| *p == 0 || *p > REG_MAX) {
            return Err(HlwError::Coefficients(format!(
                "parameters must be 1..=0xFFFFFF, got {params:?}"
            )));
        }
        if !(coeff.kv.is_finite() && coeff.kv > 0.0 && coeff.ki.is_finite() && coeff.ki > 0.0) {
            return Err(HlwError::Coefficients(format!(
                "Kv and Ki must be above 0, got {} and {}",
                coeff.kv, coeff.ki
            )));
        }
        self.state.borrow_mut().chip(ch)?.coeff = coeff;
        Ok(())
    }

    /// Chip `ch`'s coefficients.
    pub fn coefficients(&self, ch: usize) -> Result<ChipCoefficients, HlwError> {
        Ok(self.state.borrow_mut().chip(ch)?.coeff)
    }

    /// The registers chip `ch` produced in the last period (before faults), if any yet.
    pub fn last_registers(&self, ch: usize) -> Option<Registers> {
        self.state.borrow().last_frames.get(ch).copied().flatten()
    }

    /// The chip whose frames reach the line now (`None`: mux disabled).
    pub fn selected(&self) -> Option<usize> {
        let st = self.state.borrow();
        st.stuck.or_else(|| mux_channel((st.wiring.mux)()))
    }

    /// Corrupt one seeded byte of chip `ch`'s frames.
    pub fn corrupt_frames(&self, ch: usize, repeat: Repeat) -> Result<(), HlwError> {
        self.set_fault(ch, &format!("corrupt {repeat}"), |f| {
            f.corrupt = Some(repeat)
        })
    }

    /// Send chip `ch`'s frames with a wrong checksum.
    pub fn bad_checksum_frames(&self, ch: usize, repeat: Repeat) -> Result<(), HlwError> {
        self.set_fault(ch, &format!("bad checksum {repeat}"), |f| {
            f.bad_checksum = Some(repeat)
        })
    }

    /// Make chip `ch` stop (or resume) transmitting.
    pub fn set_silent(&self, ch: usize, silent: bool) -> Result<(), HlwError> {
        self.set_fault(ch, &format!("silent {silent}"), |f| f.silent = silent)
    }

    /// Make chip `ch` report failed calibration (state 0xAA) or stop doing so.
    pub fn set_uncalibrated(&self, ch: usize, on: bool) -> Result<(), HlwError> {
        self.set_fault(ch, &format!("uncalibrated {on}"), |f| f.uncalibrated = on)
    }

    fn set_fault(
        &self,
        ch: usize,
        what: &str,
        apply: impl FnOnce(&mut ChipFaults),
    ) -> Result<(), HlwError> {
        let mut st = self.state.borrow_mut();
        apply(&mut st.chip(ch)?.faults);
        self.tracer
            .record(&st.name, format!("fault CH{} {what}", ch + 1));
        Ok(())
    }

    /// Stick the mux on chip `ch` whatever the select lines say, or free it (`None`).
    pub fn stick_mux(&self, ch: Option<usize>) -> Result<(), HlwError> {
        if let Some(c) = ch
            && c >= CHIPS
        {
            return Err(HlwError::Channel(c));
        }
        let mut st = self.state.borrow_mut();
        st.stuck = ch;
        let text = match ch {
            Some(c) => format!("fault mux stuck on CH{}", c + 1),
            None => "fault mux free".to_owned(),
        };
        self.tracer.record(&st.name, text);
        Ok(())
    }

    /// Remove every fault.
    pub fn clear_faults(&self) {
        let mut st = self.state.borrow_mut();
        st.stuck = None;
        for c in &mut st.chips {
            c.faults = ChipFaults::default();
        }
        self.tracer.record(&st.name, "faults cleared");
    }

    /// Chip `ch`'s counters.
    pub fn chip_stats(&self, ch: usize) -> Result<ChipStats, HlwError> {
        Ok(self.state.borrow_mut().chip(ch)?.stats)
    }

    /// The bank's counters.
    pub fn stats(&self) -> BankStats {
        self.state.borrow().stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::periph::uart::{self, UartConfig, UartLink};
    use embedded_io_async::Read;
    use firmware_core::pdu::config::ChannelCalibration;
    use firmware_core::pdu::hlw8032::{FrameSync, Measurement, Reading};
    use firmware_core::time::Instant;

    type FrameLog = Rc<RefCell<Vec<(Instant, [u8; FRAME_LEN])>>>;

    const CAL: ChannelCalibration = ChannelCalibration {
        kv: 1.88,
        ki: 1.0,
        v_offset: 0.0,
        i_offset: 0.0,
    };

    struct Rig {
        k: Kernel,
        bank: Hlw8032Bank,
        link: UartLink,
        /// Relay port A, mux port B.
        pins: PinLevels,
        frames: FrameLog,
        raw: Rc<RefCell<Vec<u8>>>,
    }

    /// A bank on a 4800 8E1 link, all relays on, mux on `select`, with an MCU-side reader that
    /// logs every frame the firmware's resync finds.
    fn rig(select: u8) -> Rig {
        let mut k = Kernel::new(7);
        let pins = PinLevels::new(0x00FF | u16::from(select) << 8);
        let bank = Hlw8032Bank::new(&k, "hlw", BankWiring::from_pins(pins.clone()));
        let (link, mut mcu, chip_side) =
            uart::link(&k, "meter", UartConfig::new_8e1(4800)).expect("link");
        bank.spawn(&mut k, chip_side).detach();
        let frames: FrameLog = Rc::default();
        let raw: Rc<RefCell<Vec<u8>>> = Rc::default();
        let (f, r) = (frames.clone(), raw.clone());
        let clock = k.clock();
        k.spawn(TaskSpec::world("mcu"), async move {
            let mut sync = FrameSync::new();
            // One frame's worth per read: frames are back to back, one endless burst, so a read
            // returns when its buffer is full.
            let mut buf = [0u8; FRAME_LEN];
            loop {
                let Ok(n) = mcu.read(&mut buf).await;
                r.borrow_mut().extend_from_slice(&buf[..n]);
                for b in &buf[..n] {
                    if let Some(frame) = sync.push(*b) {
                        f.borrow_mut().push((clock.now(), frame));
                    }
                }
            }
        })
        .detach();
        Rig {
            k,
            bank,
            link,
            pins,
            frames,
            raw,
        }
    }

    fn readings(r: &Rig) -> Vec<Reading> {
        r.frames
            .borrow()
            .iter()
            .map(|(_, f)| Measurement::parse_bytes(f).expect("valid").reading(&CAL))
            .collect()
    }

    #[track_caller]
    fn near(actual: f32, expected: f64, tolerance: f64) {
        let a = f64::from(actual);
        assert!(
            (a - expected).abs() <= tolerance,
            "{a} not within {tolerance} of {expected}"
        );
    }

    #[test]
    fn frames_decode_to_the_configured_load_with_the_firmware_codec() {
        let mut r = rig(2);
        r.bank.set_load(2, 1000.0, 0.9).expect("load");
        r.k.run_until(Instant::from_millis(1_000));
        // Back to back: 19 frames written in the first second, and the line never idle: 1 s
        // holds 436 whole characters of 2291.67 µs.
        assert_eq!(r.link.stats(uart::Direction::BtoA).delivered, 436);
        let frames = r.frames.borrow().clone();
        assert_eq!(frames.len(), 18);
        assert_eq!(frames[0].0, Instant::from_micros(55_000));
        assert_eq!(frames[1].0 - frames[0].0, FRAME_PERIOD);
        for (_, f) in &frames {
            assert_eq!(f[0], 0x55);
            assert_eq!(f[1], 0x5A);
            assert_eq!(f[20] & 0x7F, 0x71);
        }
        for rd in readings(&r) {
            near(rd.voltage_v, 230.0, 1.2);
            near(rd.power_w, 1000.0, 1000.0 * 0.002);
            near(rd.current_a, 1000.0 / (230.0 * 0.9), 0.04);
            near(rd.power_factor, 0.9, 0.01);
        }
        let v: Vec<f32> = readings(&r).iter().map(|x| x.voltage_v).collect();
        assert!(v.windows(2).any(|w| w[0] != w[1]), "voltage has noise");
        assert_eq!(r.bank.chip_stats(2).expect("ch").sent, 19);
        assert_eq!(r.bank.chip_stats(5).expect("ch").sent, 0);
        assert_eq!(r.bank.chip_stats(5).expect("ch").frames, 19);
    }

    #[test]
    fn an_unloaded_or_switched_off_outlet_reports_power_overflow() {
        let mut r = rig(0);
        r.bank.set_load(0, 500.0, 1.0).expect("load");
        r.pins.set(0x00FE); // relay 1 off, mux on chip 0
        r.k.run_until(Instant::from_millis(200));
        for (_, f) in r.frames.borrow().iter() {
            assert_eq!(f[0], 0xF2);
            assert_eq!(f[20], 0x61);
            assert_eq!(f[17..20], [0xFF, 0xFF, 0xFF]);
        }
        assert!(!r.frames.borrow().is_empty());
        for rd in readings(&r) {
            // Behind the open contact: the residue a real ENERGIS shows, not mains.
            near(rd.voltage_v, OPEN_CONTACT_VOLTS, 0.005);
            near(rd.power_w, 0.0, 0.0);
            near(rd.current_a, 0.0, 0.002);
        }
    }

    #[test]
    fn below_the_power_threshold_the_power_register_holds_its_last_refreshed_value() {
        let mut r = rig(1);
        r.bank.set_load(1, 500.0, 1.0).expect("load");
        r.k.run_until(Instant::from_millis(200));
        let at_500w = r.frames.borrow().last().expect("frames").1;
        assert_eq!((at_500w[0], at_500w[20] & 0x7F), (0x55, 0x71));
        r.bank.set_load(1, 3.0, 1.0).expect("load");
        r.frames.borrow_mut().clear();
        r.k.run_until(Instant::from_millis(400));
        // The frame on the line at the change was measured before it.
        let settled = Instant::from_millis(200) + FRAME_PERIOD.saturating_mul(2);
        let frames: Vec<_> = r
            .frames
            .borrow()
            .iter()
            .filter(|(t, _)| *t >= settled)
            .cloned()
            .collect();
        assert!(frames.len() >= 2);
        for (_, f) in &frames {
            // Power bit clear, no overflow, and the 500 W period still in the power REG, while
            // the current REG follows the 3 W load.
            assert_eq!((f[0], f[20] & 0x7F), (0x55, 0x61));
            assert_eq!(f[17..20], at_500w[17..20]);
            assert_ne!(f[11..14], at_500w[11..14]);
        }
    }

    #[test]
    fn a_small_load_from_power_up_holds_the_overflow_value_and_its_flag() {
        let mut r = rig(1);
        r.bank.set_load(1, 3.0, 1.0).expect("load");
        r.k.run_until(Instant::from_millis(200));
        let f = r.frames.borrow()[0].1;
        assert_eq!((f[0], f[20]), (0xF2, 0x61));
        assert_eq!(f[17..20], [0xFF, 0xFF, 0xFF]);
    }

    #[test]
    fn no_mains_sets_the_voltage_overflow_flag() {
        let mut r = rig(1);
        r.bank.set_voltage(0.0, 0.0).expect("volts");
        r.k.run_until(Instant::from_millis(200));
        let f = r.frames.borrow()[0].1;
        assert_eq!((f[0], f[20] & 0x40), (0xFA, 0));
    }

    #[test]
    fn the_mux_passes_only_the_selected_chip() {
        let mut r = rig(5);
        for ch in 0..CHIPS {
            r.bank
                .set_load(ch, 100.0 * (ch + 1) as f64, 1.0)
                .expect("load");
        }
        r.k.run_until(Instant::from_millis(300));
        r.pins.set(0x00FF | 0x0100); // select chip 1
        r.k.run_until(Instant::from_millis(700));
        let frames = r.frames.borrow().clone();
        let watts = |at: u64| {
            frames
                .iter()
                .filter(|(t, _)| *t > Instant::from_millis(at))
                .map(|(_, f)| {
                    Measurement::parse_bytes(f)
                        .expect("ok")
                        .reading(&CAL)
                        .power_w
                })
                .next()
                .expect("a frame")
        };
        near(watts(0), 600.0, 1.0);
        // The first whole frame after the switch comes from chip 1.
        near(watts(360), 200.0, 1.0);
        assert_eq!(r.bank.selected(), Some(1));
        assert_eq!(r.bank.stats().mux_changes, 2);
    }

    #[test]
    fn a_mid_frame_switch_passes_the_new_chip_from_the_next_chunk() {
        let mut r = rig(5);
        r.bank.set_load(5, 500.0, 1.0).expect("load");
        r.bank.set_load(1, 100.0, 1.0).expect("load");
        r.k.run_until(Instant::from_millis(20));
        r.pins.set(0x00FF | 0x0100);
        r.k.run_until(Instant::from_millis(50));
        // Period 0 is still the latest: chunks at 0, 9.2 and 18.3 ms came from chip 5, the
        // ones from 27.5 ms on from chip 1, cut into at the same byte offset.
        let five = r.bank.last_registers(5).expect("frame").frame();
        let one = r.bank.last_registers(1).expect("frame").frame();
        // The reader takes 24 bytes at a time: let the frame finish.
        r.k.run_until(Instant::from_millis(56));
        let raw = r.raw.borrow().clone();
        assert!(raw.len() >= 20, "{} bytes", raw.len());
        assert_eq!(raw[..12], five[..12]);
        assert_eq!(raw[12..20], one[12..20]);
        assert!(r.frames.borrow().is_empty(), "the mixed frame is not valid");
    }

    #[test]
    fn mux_disabled_leaves_the_line_idle() {
        let mut r = rig(0x08);
        r.k.run_until(Instant::from_millis(300));
        assert!(r.raw.borrow().is_empty());
        assert_eq!(r.bank.selected(), None);
        assert!(r.bank.stats().idle_chunks >= 5 * 6);
    }

    #[test]
    fn a_stuck_mux_keeps_passing_one_chip() {
        let mut r = rig(0);
        r.bank.set_load(0, 100.0, 1.0).expect("load");
        r.bank.set_load(4, 400.0, 1.0).expect("load");
        r.bank.stick_mux(Some(4)).expect("stick");
        r.k.run_until(Instant::from_millis(300));
        for rd in readings(&r) {
            near(rd.power_w, 400.0, 1.0);
        }
        assert!(!r.frames.borrow().is_empty());
        assert_eq!(r.bank.stick_mux(Some(8)), Err(HlwError::Channel(8)));
    }

    #[test]
    fn a_silent_chip_sends_nothing() {
        let mut r = rig(3);
        r.bank.set_silent(3, true).expect("silent");
        r.k.run_until(Instant::from_millis(300));
        assert!(r.raw.borrow().is_empty());
        assert_eq!(r.link.stats(uart::Direction::BtoA).delivered, 0);
        assert!(r.bank.chip_stats(3).expect("ch").silent >= 5);
        r.bank.set_silent(3, false).expect("speak");
        r.k.run_until(Instant::from_millis(500));
        assert!(!r.frames.borrow().is_empty());
    }

    #[test]
    fn corrupted_and_bad_checksum_frames_fail_the_check_for_their_count() {
        let mut r = rig(6);
        r.bank.set_load(6, 200.0, 1.0).expect("load");
        r.bank
            .bad_checksum_frames(6, Repeat::Next(2))
            .expect("fault");
        r.k.run_until(Instant::from_millis(55 * 4 + 10));
        // Frames 1-2 bad, 3-4 good (the 4th has fully arrived).
        assert_eq!(r.frames.borrow().len(), 2);
        let raw = r.raw.borrow().clone();
        let first = &raw[..FRAME_LEN];
        let sum = first[2..23].iter().fold(0u8, |s, b| s.wrapping_add(*b));
        assert_eq!(first[23], sum.wrapping_add(1));
        assert_eq!(r.bank.chip_stats(6).expect("ch").bad_checksums, 2);

        r.bank
            .corrupt_frames(6, Repeat::UntilCleared)
            .expect("fault");
        let before = r.frames.borrow().len();
        r.k.run_until(Instant::from_millis(1_000));
        let corrupted = r.bank.chip_stats(6).expect("ch").corrupted;
        assert!(corrupted >= 10);
        // A flipped byte breaks the frame, unless it hit a field the checksum does not cover
        // with a still-valid value (a state byte of 0xFx): allow a rare one through.
        assert!(
            r.frames.borrow().len() - before <= 2,
            "{:?}",
            r.frames.borrow().len()
        );
        r.bank.clear_faults();
        r.k.run_until(Instant::from_millis(1_200));
        assert!(r.frames.borrow().len() - before >= 2);
    }

    #[test]
    fn an_uncalibrated_chip_reports_0xaa() {
        let mut r = rig(0);
        r.bank.set_uncalibrated(0, true).expect("fault");
        r.k.run_until(Instant::from_millis(200));
        let f = r.frames.borrow()[0].1;
        assert_eq!(f[0], 0xAA);
        assert!(Measurement::parse_bytes(&f).is_err());
    }

    #[test]
    fn the_pf_counter_follows_energy_and_toggles_the_carry_on_wrap() {
        let mut chip = Chip::new(ChipCoefficients::default());
        chip.load_w = 1000.0;
        let jpp = chip.coeff.joules_per_pulse();
        // 10 s at 1 kW.
        let periods = 10_000_000 / FRAME_PERIOD.as_micros();
        let mut last = None;
        for _ in 0..periods {
            last = Some(chip.tick(230.0, true, FRAME_PERIOD));
        }
        let expected = (periods as f64 * 0.055 * 1000.0 / jpp).floor();
        assert_eq!(f64::from(last.expect("ticked").pf), expected);
        assert_eq!(last.expect("ticked").update & UPDATE_CARRY, 0);
        // Run until the 16-bit counter wraps.
        let mut wrapped_at = None;
        for i in 0..200_000 {
            let regs = chip.tick(230.0, true, FRAME_PERIOD);
            if regs.update & UPDATE_CARRY != 0 {
                wrapped_at = Some((i, regs.pf));
                break;
            }
        }
        let (_, pf) = wrapped_at.expect("the counter wrapped");
        assert!(pf < 10, "just after the wrap, got {pf}");
        assert_eq!(chip.stats.pf_wraps, 1);
        // No energy while unpowered.
        let before = chip.pf_reg;
        chip.tick(230.0, false, FRAME_PERIOD);
        assert_eq!(chip.pf_reg, before);
    }

    #[test]
    fn bad_settings_are_errors() {
        let r = rig(0);
        assert_eq!(r.bank.set_load(8, 1.0, 1.0), Err(HlwError::Channel(8)));
        assert!(r.bank.set_load(0, -1.0, 1.0).is_err());
        assert!(r.bank.set_load(0, f64::NAN, 1.0).is_err());
        assert!(r.bank.set_load(0, 1.0, 0.0).is_err());
        assert!(r.bank.set_load(0, 1.0, 1.5).is_err());
        assert!(r.bank.set_voltage(-1.0, 0.0).is_err());
        let bad = ChipCoefficients {
            kv: 0.0,
            ..ChipCoefficients::default()
        };
        assert!(r.bank.set_coefficients(0, bad).is_err());
    }

    #[test]
    fn the_relay_expander_selects_the_chip_and_its_relay_gates_the_load() {
        use crate::periph::i2c::{FAST_MODE_HZ, I2cBus};
        use crate::periph::mcp23017::Mcp23017;
        use crate::periph::panel::{RELAY_SETTLE, Relays};
        use embedded_hal_async::i2c::I2c;

        let mut k = Kernel::new(9);
        let bus = I2cBus::new(&k, "i2c1", FAST_MODE_HZ).expect("bus");
        let mcp = Mcp23017::new(&k, "mcp20")
            .attach(&bus, 0x20)
            .expect("attach");
        let relays = Relays::new(&k, "relays", RELAY_SETTLE);
        relays.wire(&mut mcp.borrow_mut(), Port::A);
        relays.spawn(&mut k).detach();
        let pins = mcp.borrow().pins();
        let bank = Hlw8032Bank::new(&k, "hlw", BankWiring::with_relays(pins, relays.clone()));
        bank.set_load(2, 500.0, 1.0).expect("load");
        let (_link, mut mcu, chip_side) =
            uart::link(&k, "meter", UartConfig::new_8e1(4800)).expect("link");
        bank.spawn(&mut k, chip_side).detach();
        let frames: FrameLog = Rc::default();
        let f = frames.clone();
        let clock = k.clock();
        k.spawn(TaskSpec::world("mcu"), async move {
            let mut sync = FrameSync::new();
            let mut buf = [0u8; FRAME_LEN];
            loop {
                let Ok(n) = mcu.read(&mut buf).await;
                for b in &buf[..n] {
                    if let Some(frame) = sync.push(*b) {
                        f.borrow_mut().push((clock.now(), frame));
                    }
                }
            }
        })
        .detach();
        // ENERGIS init: byte mode, all outputs; then outlet 3 on and the mux on chip 2.
        let mut b = bus.clone();
        let c = k.clock();
        k.spawn(TaskSpec::world("switch"), async move {
            for w in [
                [0x0A, 0x20],
                [0x00, 0x00],
                [0x01, 0x00],
                [0x15, 0x02],
                [0x14, 0x04],
            ] {
                let _ = b.write(0x20, &w).await;
            }
            c.sleep_until(Instant::from_millis(500)).await;
            let _ = b.write(0x20, &[0x14, 0x00]).await;
        })
        .detach();
        k.run_until(Instant::from_millis(1_000));
        let frames = frames.borrow();
        let at = |t: u64| {
            frames
                .iter()
                .filter(|(at, _)| *at > Instant::from_millis(t))
                .map(|(_, f)| *f)
                .next()
                .expect("a frame")
        };
        // At power-on port B floats low: the mux passes chip 0 until the init selects chip 2
        // a fraction of a millisecond later, mid-frame. That first frame is a mix of both
        // chips and fails its checksum; the next one is chip 2's.
        assert_eq!(frames[0].0, Instant::from_millis(110));
        let on = Measurement::parse_bytes(&at(100))
            .expect("valid")
            .reading(&CAL);
        near(on.power_w, 500.0, 1.0);
        assert_eq!(at(600)[0], 0xF2, "relay opened at 510 ms");
        assert_eq!(bank.selected(), Some(2));
    }

    proptest::proptest! {
        /// Any load an outlet can carry (up to 16 A), decoded by the firmware's codec, reads
        /// back what was configured within the REGs' resolution.
        #[test]
        fn the_firmware_decodes_any_realistic_load(
            volts in 90.0f64..260.0,
            amps in 0.05f64..16.0,
            pf in 0.3f64..=1.0,
        ) {
            let watts = volts * amps * pf;
            proptest::prop_assume!(watts >= MIN_UPDATED_POWER_W);
            let mut chip = Chip::new(ChipCoefficients::default());
            chip.load_w = watts;
            chip.pf = pf;
            let frame = chip.tick(volts, true, FRAME_PERIOD).frame();
            let rd = Measurement::parse_bytes(&frame).expect("valid").reading(&CAL);
            proptest::prop_assert!((f64::from(rd.voltage_v) - volts).abs() <= volts * 0.002);
            proptest::prop_assert!((f64::from(rd.power_w) - watts).abs() <= watts * 0.002);
            proptest::prop_assert!((f64::from(rd.current_a) - amps).abs() <= amps * 0.002 + 0.001);
            proptest::prop_assert!((f64::from(rd.power_factor) - pf).abs() <= 0.01);
        }
    }

    type Telemetry = [firmware_core::pdu::ChannelTelemetry; firmware_core::pdu::CHANNELS];

    /// The firmware's MeterTask against the bank for 10 s: (trace hash, last telemetry).
    fn meter_task_run(seed: u64) -> (u64, Telemetry) {
        use firmware_core::pdu::meter::{MeterCore, MeterSettings, MeterTask, MuxError};
        use firmware_core::pdu::{CHANNELS as OUTLETS, Outlet};

        let mut k = Kernel::new(seed);
        let pins = PinLevels::new(0x08FF); // all relays on, mux disabled until selected
        let bank = Hlw8032Bank::new(&k, "hlw", BankWiring::from_pins(pins.clone()));
        for ch in 0..CHIPS {
            bank.set_load(ch, 100.0 * (ch + 1) as f64, 0.8)
                .expect("load");
        }
        bank.set_silent(6, true).expect("fault");
        let (_link, mcu, chip_side) =
            uart::link(&k, "meter", UartConfig::new_8e1(4800)).expect("link");
        bank.spawn(&mut k, chip_side).detach();
        let latest: Rc<RefCell<Option<Telemetry>>> = Rc::default();
        let l = latest.clone();
        let tracer = k.tracer();
        let mux = move |o: Outlet| -> Result<(), MuxError> {
            // Port B bits 0-2 = select, bit 3 = EN (low = enabled).
            pins.set((pins.get() & 0x00FF) | (o.index() as u16) << 8);
            Ok(())
        };
        let sink = move |t: &Telemetry| {
            tracer.sample("power_w.1", f64::from(t[0].power_w));
            *l.borrow_mut() = Some(*t);
        };
        let core = MeterCore::new(MeterSettings::default(), [CAL; OUTLETS]);
        let mut task = MeterTask::new(mcu, k.clock(), mux, sink, core);
        k.spawn(TaskSpec::world("meter-task"), async move {
            task.run().await;
        })
        .detach();
        k.run_until(Instant::from_millis(10_000));
        let t = latest.borrow().expect("telemetry published");
        (k.with_trace(|tr| tr.hash()), t)
    }

    #[test]
    fn the_firmware_meter_task_reads_every_outlet_through_the_mux() {
        let (_, t) = meter_task_run(11);
        for (ch, tel) in t.iter().enumerate() {
            if ch == 6 {
                assert!(tel.degraded, "the silent chip's outlet is degraded");
                continue;
            }
            let watts = 100.0 * (ch + 1) as f64;
            assert!(!tel.degraded, "outlet {} degraded", ch + 1);
            near(tel.power_w, watts, watts * 0.003);
            near(tel.voltage_v, 230.0, 1.0);
            near(tel.current_a, watts / (230.0 * 0.8), 0.02 * watts / 184.0);
            near(tel.power_factor, 0.8, 0.01);
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_meter_readings_and_trace() {
        let (hash, t) = meter_task_run(21);
        let (hash2, t2) = meter_task_run(21);
        assert_eq!(hash, hash2);
        assert_eq!(t, t2);
        let (hash3, t3) = meter_task_run(22);
        assert_ne!(hash, hash3, "the voltage noise follows the seed");
        assert_ne!(t, t3);
    }

    #[test]
    fn the_frame_builder_follows_the_datasheet_layout() {
        let regs = Registers {
            state: 0x55,
            voltage_param: 0x01_02_03,
            voltage_reg: 0x04_05_06,
            current_param: 0x07_08_09,
            current_reg: 0x0A_0B_0C,
            power_param: 0x0D_0E_0F,
            power_reg: 0x10_11_12,
            update: 0x71,
            pf: 0x1314,
        };
        let f = regs.frame();
        assert_eq!(f[..2], [0x55, 0x5A]);
        assert_eq!(f[2..20], (1..=0x12).collect::<Vec<u8>>()[..]);
        assert_eq!(f[20..23], [0x71, 0x13, 0x14]);
        let sum: u32 = (1..=0x12u32).sum::<u32>() + 0x71 + 0x13 + 0x14;
        assert_eq!(f[23], sum as u8);
    }
}
