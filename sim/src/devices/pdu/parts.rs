//! The PDU's simulated parts as the twin wires them: MCP23017 expanders, the CAT24C256 EEPROM,
//! the bank of eight HLW8032 meters behind the 74HC4051 mux, and the front-panel buttons.
//!
//! These are deliberately small register-level models, enough for the firmware to run against
//! (the full datasheet models with bounce, relay settle time and file persistence belong to
//! `sim::periph`). Each keeps the state a scenario reads (latches, EEPROM array) and offers the
//! fault knobs the `pdu` kind exposes.
use std::cell::{Cell, RefCell};
use std::rc::Rc;

use firmware_core::pdu::hlw8032::{Measurement, StateFlags, UPDATE_POWER};
use firmware_core::time::{Duration, Instant};

use crate::kernel::Tracer;
use crate::periph::i2c::{Ack, I2cDevice};

/// An MCP23017 with IOCON.BANK = 0: 22 registers, a register pointer, optional auto-increment.
pub struct Mcp23017Part {
    name: String,
    tracer: Tracer,
    regs: [u8; 0x16],
    pointer: u8,
    /// Bytes written in the current transaction (the first one is the register address).
    written: usize,
}

impl Mcp23017Part {
    /// A part in its power-on state, tracing latch changes as `name`.
    pub fn new(name: &str, tracer: Tracer) -> Self {
        let mut p = Mcp23017Part {
            name: name.to_owned(),
            tracer,
            regs: [0; 0x16],
            pointer: 0,
            written: 0,
        };
        p.power_on_reset();
        p
    }

    /// Power-on reset: every pin an input, latches zero (relays released, LEDs dark).
    pub fn power_on_reset(&mut self) {
        self.regs = [0; 0x16];
        self.regs[0] = 0xFF;
        self.regs[1] = 0xFF;
        self.pointer = 0;
    }

    /// The level driven on port A (0 where a pin is an input).
    pub fn out_a(&self) -> u8 {
        self.regs[0x14] & !self.regs[0x00]
    }

    /// The level driven on port B.
    pub fn out_b(&self) -> u8 {
        self.regs[0x15] & !self.regs[0x01]
    }

    fn store(&mut self, reg: u8, value: u8) {
        let reg = match reg {
            0x12 => 0x14,
            0x13 => 0x15,
            0x0B => 0x0A,
            r => r,
        };
        let i = usize::from(reg);
        if i >= self.regs.len() {
            return;
        }
        let (before_a, before_b) = (self.out_a(), self.out_b());
        self.regs[i] = value;
        if reg == 0x0A {
            self.regs[0x0B] = value;
        }
        let (a, b) = (self.out_a(), self.out_b());
        if a != before_a {
            self.tracer
                .record(&self.name, format!("port A 0x{before_a:02x} -> 0x{a:02x}"));
        }
        if b != before_b && !self.name.ends_with("relay") {
            self.tracer
                .record(&self.name, format!("port B 0x{before_b:02x} -> 0x{b:02x}"));
        }
    }

    fn sequential(&self) -> bool {
        self.regs[0x0A] & 0x20 == 0
    }

    fn advance(&mut self) {
        if self.sequential() {
            self.pointer = (self.pointer + 1) % 0x16;
        }
    }
}

impl I2cDevice for Mcp23017Part {
    fn start(&mut self, _now: Instant, _address: u8, _read: bool) -> Ack {
        self.written = 0;
        Ack::Ack
    }
    fn write(&mut self, _now: Instant, byte: u8) -> Ack {
        if self.written == 0 {
            self.pointer = byte % 0x16;
        } else {
            self.store(self.pointer, byte);
            self.advance();
        }
        self.written += 1;
        Ack::Ack
    }
    fn read(&mut self, _now: Instant) -> u8 {
        let v = match self.pointer {
            0x12 => self.out_a(),
            0x13 => self.out_b(),
            p => self.regs.get(usize::from(p)).copied().unwrap_or(0),
        };
        self.advance();
        v
    }
    fn stop(&mut self, _now: Instant) {}
}

/// Fault knobs of the EEPROM.
#[derive(Debug, Clone, Copy, Default)]
struct EepromFaults {
    /// Page writes still to refuse (data bytes NACKed, nothing stored).
    fail_writes: u32,
    /// Data bytes that may still be stored before the power is cut.
    cut_after: Option<u64>,
}

/// A CAT24C256: 32 KiB, 64-byte pages that wrap, a 5 ms write cycle during which the part NACKs
/// its address, and two fault knobs (refused writes, power cut after N bytes).
pub struct Eeprom {
    mem: Vec<u8>,
    pointer: u16,
    addr_bytes: u8,
    page: Vec<(u16, u8)>,
    busy_until: Instant,
    faults: EepromFaults,
    failing: bool,
    /// Set when a power cut fired; the device polls it and power-cycles.
    pub cut_fired: Rc<Cell<bool>>,
    stored_bytes: u64,
}

/// Write cycle time (datasheet maximum).
pub const WRITE_CYCLE: Duration = Duration::from_millis(5);

impl Eeprom {
    /// A blank (all 0xFF) part.
    pub fn new() -> Self {
        Eeprom {
            mem: vec![0xFF; 32 * 1024],
            pointer: 0,
            addr_bytes: 0,
            page: Vec::new(),
            busy_until: Instant::ZERO,
            faults: EepromFaults::default(),
            failing: false,
            cut_fired: Rc::new(Cell::new(false)),
            stored_bytes: 0,
        }
    }

    /// The array.
    pub fn contents(&self) -> &[u8] {
        &self.mem
    }

    /// Write `bytes` at `at` directly (factory programming).
    pub fn program(&mut self, at: usize, bytes: &[u8]) {
        let end = (at + bytes.len()).min(self.mem.len());
        if let (Some(dst), Some(src)) = (
            self.mem.get_mut(at..end),
            bytes.get(..end.saturating_sub(at)),
        ) {
            dst.copy_from_slice(src);
        }
    }

    /// Refuse the next `n` page writes.
    pub fn fail_writes(&mut self, n: u32) {
        self.faults.fail_writes = n;
    }

    /// Cut the device's power after `n` more stored bytes.
    pub fn power_cut_after(&mut self, n: u64) {
        self.faults.cut_after = Some(n);
    }

    /// Power lost: an unfinished page is lost, the pointer resets.
    pub fn power_off(&mut self) {
        self.page.clear();
        self.addr_bytes = 0;
        self.busy_until = Instant::ZERO;
    }
}

impl Default for Eeprom {
    fn default() -> Self {
        Self::new()
    }
}

impl I2cDevice for Eeprom {
    fn start(&mut self, now: Instant, _address: u8, read: bool) -> Ack {
        if now < self.busy_until || self.cut_fired.get() {
            return Ack::Nack;
        }
        if !read {
            self.addr_bytes = 0;
            self.page.clear();
            self.failing = false;
        }
        Ack::Ack
    }
    fn write(&mut self, _now: Instant, byte: u8) -> Ack {
        if self.addr_bytes < 2 {
            self.pointer = if self.addr_bytes == 0 {
                u16::from(byte & 0x7F) << 8
            } else {
                self.pointer | u16::from(byte)
            };
            self.addr_bytes += 1;
            if self.addr_bytes == 2 && self.faults.fail_writes > 0 {
                self.failing = true;
            }
            return Ack::Ack;
        }
        if self.failing {
            return Ack::Nack;
        }
        // Page wrap: the low 6 bits roll over inside the page.
        let base = self.pointer & !0x3F;
        let offset = (self.pointer as usize + self.page.len()) & 0x3F;
        self.page.push((base + offset as u16, byte));
        Ack::Ack
    }
    fn read(&mut self, _now: Instant) -> u8 {
        let v = self
            .mem
            .get(usize::from(self.pointer))
            .copied()
            .unwrap_or(0xFF);
        self.pointer = (self.pointer + 1) & 0x7FFF;
        v
    }
    fn stop(&mut self, now: Instant) {
        if self.failing {
            self.faults.fail_writes = self.faults.fail_writes.saturating_sub(1);
            self.failing = false;
            self.page.clear();
            return;
        }
        if self.page.is_empty() {
            return;
        }
        for (at, b) in std::mem::take(&mut self.page) {
            if let Some(left) = self.faults.cut_after.as_mut() {
                if *left == 0 {
                    self.cut_fired.set(true);
                    self.faults.cut_after = None;
                    break;
                }
                *left -= 1;
            }
            if let Some(slot) = self.mem.get_mut(usize::from(at)) {
                *slot = b;
            }
            self.stored_bytes += 1;
        }
        self.busy_until = now + WRITE_CYCLE;
    }
}

/// One outlet's load as the meter sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    /// Active power drawn when the relay is on, watts.
    pub watts: f32,
    /// Power factor.
    pub pf: f32,
}

impl Default for Load {
    fn default() -> Self {
        Load {
            watts: 0.0,
            pf: 1.0,
        }
    }
}

/// Mains voltage the meters see.
pub const MAINS_V: f32 = 230.0;

/// The HLW8032 frame for `load` on an outlet whose relay is `on` (calibration Kv 1.88, Ki 1.0).
pub fn hlw_frame(load: Load, on: bool) -> [u8; 24] {
    let kv = 1.88f32;
    let vparam = 200_000u32;
    let vreg = (vparam as f32 * kv / MAINS_V).round() as u32;
    let (watts, pf) = if on {
        (load.watts, load.pf)
    } else {
        (0.0, 1.0)
    };
    let pf = pf.clamp(0.05, 1.0);
    let amps = if watts > 0.0 {
        watts / (MAINS_V * pf)
    } else {
        0.0
    };
    let iparam = 100_000u32;
    let ireg = if amps > 0.0 {
        (iparam as f32 / amps).round() as u32
    } else {
        0
    };
    let pparam = 5_000_000u32;
    let preg = if watts > 0.0 {
        (pparam as f32 * kv / watts).round() as u32
    } else {
        0
    };
    Measurement {
        flags: StateFlags::from_state(0x55),
        voltage_param: vparam,
        voltage_reg: vreg,
        current_param: iparam,
        current_reg: ireg,
        power_param: pparam,
        power_reg: preg,
        data_update: if watts > 0.0 { UPDATE_POWER } else { 0 },
        pf_reg: 0,
    }
    .to_bytes()
}

/// The HLW8032 bank: per-channel loads and silence knobs.
#[derive(Debug, Default)]
pub struct MeterBank {
    /// Loads per outlet.
    pub loads: [Load; 8],
    /// Outlets whose chip sends nothing.
    pub silent: [bool; 8],
}

/// The four panel buttons, as levels the ButtonTask samples (bit = pressed).
#[derive(Debug, Default)]
pub struct Panel {
    /// Pressed buttons, bit per `firmware_core::pdu::buttons::Button`.
    pub pressed: Cell<u8>,
}

/// Shared handles on the parts, for the device and its actions.
pub struct Parts {
    /// Relay expander 0x20 (I2C1).
    pub relay: Rc<RefCell<Mcp23017Part>>,
    /// Display expander 0x21 (I2C0).
    pub display: Rc<RefCell<Mcp23017Part>>,
    /// Selection expander 0x23 (I2C0).
    pub selection: Rc<RefCell<Mcp23017Part>>,
    /// EEPROM 0x50 (I2C1).
    pub eeprom: Rc<RefCell<Eeprom>>,
    /// Meter bank.
    pub meters: Rc<RefCell<MeterBank>>,
    /// Buttons.
    pub panel: Rc<Panel>,
}
