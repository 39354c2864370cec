//! The MCP23017 16-bit I²C GPIO expander, as a part on an [`I2cBus`].
//!
//! This module owns the expander's registers and pins: the full register map in both address
//! layouts (IOCON.BANK = 0, interleaved A/B, and BANK = 1, one bank per port), the power-on
//! values, the address pointer (IOCON.SEQOP), what a GPIO read returns (pin levels, IPOL applied
//! to inputs) against what an OLAT read returns (the latch), interrupt-on-change flags and
//! captures, and the levels of the sixteen pins as the board sees them.
//!
//! # Pins
//! An output pin (IODIR bit 0) drives its OLAT bit. An input pin reads the level something
//! outside drives on it ([`Mcp23017::set_input`]); an undriven input reads high with its GPPU
//! pull-up and low without (a floating CMOS input has no defined level; low keeps tests
//! repeatable). Pin `n` is bit `n` of a `u16`: bits 0-7 are GPA0-7, bits 8-15 GPB0-7.
//!
//! Who drives what on ENERGIS (docs/interfaces.md §5.1): 0x20 port A = relays 1-8, port B bits 0-3 =
//! HLW8032 mux A/B/C/EN; 0x21 port A = channel LEDs, port B = FAULT/ETH/PWR LEDs; 0x23 port A =
//! selection LEDs. Relays, LEDs and the meter mux watch the levels through a [`PinLevels`]
//! handle (a shared snapshot, readable while the part is on the bus) or a change observer
//! ([`Mcp23017::on_change`]); each change is also a trace event `pins A=0x.. B=0x..`.
//!
//! # Address pointer
//! The first data byte of a write sets the pointer; later bytes write registers. With SEQOP = 0
//! the pointer advances after every byte and rolls over to 0x00 after the last register (0x15
//! in BANK = 0, 0x1A in BANK = 1; in BANK = 1 the unimplemented addresses 0x0B-0x0F between the
//! banks are stepped through, read as 0x00 and ignore writes, our literal reading of "rolls over
//! to address zero after the last register"). With SEQOP = 1 (byte mode) the pointer toggles
//! between the A/B pair in BANK = 0 and stays put in BANK = 1. A write to IOCON that flips
//! BANK takes effect for the next byte; the pointer keeps its numeric value.
//!
//! # Interrupts
//! An input pin with GPINTEN set raises an interrupt when it differs from DEFVAL (INTCON = 1)
//! or from its previous level (INTCON = 0). The first such event sets INTF and copies the port
//! into INTCAP; later events wait until a read of GPIO or INTCAP of that port clears it (a pin
//! still differing from DEFVAL raises it again at once). [`Mcp23017::int_pin`] gives the
//! INTA/INTB levels with MIRROR and INTPOL applied (ODR is not modelled: open-drain reads as
//! active-low push-pull).
//!
//! # Faults and counters
//! NACKs and a stuck bus are bus faults ([`I2cBus::nack_next`](super::i2c::I2cBus::nack_next),
//! [`stick_for`](super::i2c::I2cBus::stick_for)); the part adds a register that reads back
//! wrong ([`Mcp23017::set_readback_fault`]). [`McpStats`] counts transactions, register reads
//! and writes, faulted reads, pin changes and resets.
//!
//! Not modelled: the GPA7/GPB7 output-only erratum, the SPI sibling's HAEN, slew rate.
use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::Rc;

use firmware_core::time::Instant;

use super::i2c::{Ack, I2cBus, I2cBusError, I2cDevice};
use crate::kernel::{Kernel, SimClock, Tracer};

/// One of the expander's two 8-bit ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Port {
    /// GPA0-7, pins 0-7.
    A,
    /// GPB0-7, pins 8-15.
    B,
}

impl Port {
    fn index(self) -> usize {
        match self {
            Port::A => 0,
            Port::B => 1,
        }
    }
    /// The port's byte out of a 16-pin word.
    pub fn of(self, pins: u16) -> u8 {
        match self {
            Port::A => pins as u8,
            Port::B => (pins >> 8) as u8,
        }
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Port::A => "A",
            Port::B => "B",
        })
    }
}

/// A register of one port, independent of the address layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Register {
    /// Direction, 1 = input. POR 0xFF.
    Iodir,
    /// Input polarity inversion.
    Ipol,
    /// Interrupt-on-change enable.
    Gpinten,
    /// Interrupt compare value.
    Defval,
    /// Interrupt control: 1 = compare with DEFVAL, 0 = with the previous level.
    Intcon,
    /// Configuration (one register, at two addresses).
    Iocon,
    /// Pull-ups.
    Gppu,
    /// Interrupt flags (read-only).
    Intf,
    /// Interrupt capture (read-only).
    Intcap,
    /// Read: pin levels; write: the output latch.
    Gpio,
    /// Output latch.
    Olat,
}

impl Register {
    /// Every register, in address order within a port.
    pub const ALL: [Register; 11] = [
        Register::Iodir,
        Register::Ipol,
        Register::Gpinten,
        Register::Defval,
        Register::Intcon,
        Register::Iocon,
        Register::Gppu,
        Register::Intf,
        Register::Intcap,
        Register::Gpio,
        Register::Olat,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// Power-on value.
    pub fn por_value(self) -> u8 {
        if self == Register::Iodir { 0xFF } else { 0x00 }
    }

    /// The register's address for `port` in the given layout (`bank1` = IOCON.BANK set).
    pub fn address(self, port: Port, bank1: bool) -> u8 {
        let i = self.index() as u8;
        let p = port.index() as u8;
        if bank1 { p * 0x10 + i } else { i * 2 + p }
    }

    /// The register and port at `address` in the given layout, if one is implemented there.
    pub fn decode(address: u8, bank1: bool) -> Option<(Register, Port)> {
        let (i, port) = if bank1 {
            let port = match address & 0xF0 {
                0x00 => Port::A,
                0x10 => Port::B,
                _ => return None,
            };
            (usize::from(address & 0x0F), port)
        } else {
            let port = if address & 1 == 0 { Port::A } else { Port::B };
            (usize::from(address / 2), port)
        };
        Register::ALL.get(i).map(|r| (*r, port))
    }
}

/// IOCON bits.
mod iocon {
    pub const BANK: u8 = 0x80;
    pub const MIRROR: u8 = 0x40;
    pub const SEQOP: u8 = 0x20;
    pub const INTPOL: u8 = 0x02;
    /// Bit 0 is unimplemented and reads 0.
    pub const WRITABLE: u8 = 0xFE;
}

/// Last register address in each layout, where sequential access rolls over.
const LAST_BANK0: u8 = 0x15;
const LAST_BANK1: u8 = 0x1A;

/// What one expander did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct McpStats {
    /// Transactions that reached the part (ended by a STOP).
    pub transactions: u64,
    /// Data bytes written to registers (pointer bytes excluded).
    pub register_writes: u64,
    /// Register bytes read.
    pub register_reads: u64,
    /// Reads that returned a wrong value because of [`Mcp23017::set_readback_fault`].
    pub faulty_reads: u64,
    /// Times the pin levels changed.
    pub pin_changes: u64,
    /// RESET pulses.
    pub resets: u64,
    /// Interrupts raised (INTF set from clear), per port A, B.
    pub interrupts: [u64; 2],
}

/// A shared, always readable snapshot of an expander's sixteen pin levels (bit n = pin n).
/// Cheap to clone; it never borrows the part, so it can be read while the part is on the bus.
#[derive(Debug, Clone, Default)]
pub struct PinLevels(Rc<Cell<u16>>);

impl PinLevels {
    /// A snapshot holder with all pins low, for wiring parts to something other than an
    /// expander in tests (`let mux = PinLevels::default(); mux.set(0x0300);`).
    pub fn new(levels: u16) -> Self {
        PinLevels(Rc::new(Cell::new(levels)))
    }
    /// All sixteen levels.
    pub fn get(&self) -> u16 {
        self.0.get()
    }
    /// One port's levels.
    pub fn port(&self, port: Port) -> u8 {
        port.of(self.get())
    }
    /// One pin's level (pins 0-15; higher pins read low).
    pub fn pin(&self, pin: u8) -> bool {
        pin < 16 && self.get() & (1 << pin) != 0
    }
    /// Overwrite the levels (the expander does this; tests may too).
    pub fn set(&self, levels: u16) {
        self.0.set(levels);
    }
}

/// Called with (instant, old levels, new levels) when the pins change. Observers run while the
/// part is borrowed by the bus: they MUST NOT borrow the part.
pub type PinObserver = Box<dyn FnMut(Instant, u16, u16)>;

/// A simulated MCP23017. Attach it to a bus with [`Mcp23017::attach`].
pub struct Mcp23017 {
    name: String,
    tracer: Tracer,
    clock: SimClock,
    /// `regs[register][port]`; IOCON is kept equal in both ports.
    regs: [[u8; 2]; 11],
    pointer: u8,
    expect_pointer: bool,
    /// Level driven from outside on each pin, and which pins are driven.
    in_level: u16,
    in_driven: u16,
    /// Input levels at the last interrupt evaluation (INTCON = 0 compares with these).
    last_inputs: u16,
    pins: PinLevels,
    observers: Vec<PinObserver>,
    trace_mask: u16,
    readback_fault: Option<(Register, Port, u8)>,
    stats: McpStats,
}

impl Mcp23017 {
    /// An expander at power-on named `name` (its trace source, e.g. `pdu.mcp20`).
    pub fn new(kernel: &Kernel, name: &str) -> Self {
        let mut m = Mcp23017 {
            name: name.to_owned(),
            tracer: kernel.tracer(),
            clock: kernel.clock(),
            regs: [[0; 2]; 11],
            pointer: 0,
            expect_pointer: false,
            in_level: 0,
            in_driven: 0,
            last_inputs: 0,
            pins: PinLevels::default(),
            observers: Vec::new(),
            trace_mask: 0xFFFF,
            readback_fault: None,
            stats: McpStats::default(),
        };
        m.load_por();
        m.pins.set(m.compute_pins());
        m.last_inputs = m.pins.get();
        m
    }

    /// Make a part, share it and put it on `bus` at `address`
    /// (`let relay = Mcp23017::new(&k, "pdu.mcp20").attach(&i2c1, 0x20)?;`).
    pub fn attach(self, bus: &I2cBus, address: u8) -> Result<Rc<RefCell<Mcp23017>>, I2cBusError> {
        let part = Rc::new(RefCell::new(self));
        bus.attach(address, part.clone())?;
        Ok(part)
    }

    /// The trace source name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn load_por(&mut self) {
        for r in Register::ALL {
            self.regs[r.index()] = [r.por_value(); 2];
        }
        self.pointer = 0;
        self.expect_pointer = false;
    }

    /// Pulse the RESET pin: every register back to its power-on value.
    pub fn reset(&mut self) {
        let now = self.clock.now();
        self.load_por();
        self.stats.resets += 1;
        self.tracer.record(&self.name, "reset");
        self.refresh_pins(now);
    }

    /// A register's current value, as the part holds it (no fault applied, no side effect).
    pub fn register(&self, reg: Register, port: Port) -> u8 {
        self.regs[reg.index()][port.index()]
    }

    /// A handle on the pin levels (see [`PinLevels`]).
    pub fn pins(&self) -> PinLevels {
        self.pins.clone()
    }

    /// The sixteen pin levels now.
    pub fn pin_levels(&self) -> u16 {
        self.pins.get()
    }

    /// Call `observer` on every pin change from now on
    /// (`mcp.on_change(Box::new(move |at, old, new| relays.command(at, new as u8)))`).
    pub fn on_change(&mut self, observer: PinObserver) {
        self.observers.push(observer);
    }

    /// Which pins' changes make trace events (default all). The ENERGIS meter mux switches 25
    /// times a second, so a device may leave port B bits 0-3 of 0x20 out: `0xF0FF`.
    pub fn set_trace_mask(&mut self, mask: u16) {
        self.trace_mask = mask;
    }

    /// Drive input pin `pin` (0-15) high or low from outside, or release it (`None`).
    /// Pins above 15 are ignored.
    pub fn set_input(&mut self, pin: u8, level: Option<bool>) {
        if pin > 15 {
            return;
        }
        let bit = 1u16 << pin;
        match level {
            Some(l) => {
                self.in_driven |= bit;
                if l {
                    self.in_level |= bit;
                } else {
                    self.in_level &= !bit;
                }
            }
            None => self.in_driven &= !bit,
        }
        let now = self.clock.now();
        self.refresh_pins(now);
    }

    /// Make register `reg` of `port` read back XORed with `xor` until [`Self::clear_faults`]
    /// (a flaky bond wire, a part that lies). Writes still store the right value.
    pub fn set_readback_fault(&mut self, reg: Register, port: Port, xor: u8) {
        self.readback_fault = Some((reg, port, xor));
        self.tracer.record(
            &self.name,
            format!("fault {reg:?}{port} reads back xor 0x{xor:02x}"),
        );
    }

    /// Remove the part's own faults (bus faults are cleared on the bus).
    pub fn clear_faults(&mut self) {
        self.readback_fault = None;
        self.tracer.record(&self.name, "faults cleared");
    }

    /// Counters.
    pub fn stats(&self) -> McpStats {
        self.stats
    }

    /// The level of INTA (`Port::A`) or INTB, with MIRROR and INTPOL applied.
    pub fn int_pin(&self, port: Port) -> bool {
        let flags = self.regs[Register::Intf.index()];
        let iocon = self.iocon();
        let active = if iocon & iocon::MIRROR != 0 {
            flags[0] | flags[1] != 0
        } else {
            flags[port.index()] != 0
        };
        // INTPOL = 1: active high; 0: active low.
        active == (iocon & iocon::INTPOL != 0)
    }

    fn iocon(&self) -> u8 {
        self.regs[Register::Iocon.index()][0]
    }

    fn bank1(&self) -> bool {
        self.iocon() & iocon::BANK != 0
    }

    fn word(&self, reg: Register) -> u16 {
        let [a, b] = self.regs[reg.index()];
        u16::from(a) | u16::from(b) << 8
    }

    fn compute_pins(&self) -> u16 {
        let dir = self.word(Register::Iodir);
        let olat = self.word(Register::Olat);
        let pullup = self.word(Register::Gppu);
        let inputs = (self.in_level & self.in_driven) | (pullup & !self.in_driven);
        (olat & !dir) | (inputs & dir)
    }

    /// Recompute the pin levels; trace, notify and evaluate interrupts if they changed.
    fn refresh_pins(&mut self, now: Instant) {
        let old = self.pins.get();
        let new = self.compute_pins();
        if new != old {
            self.pins.set(new);
            self.stats.pin_changes += 1;
            if (old ^ new) & self.trace_mask != 0 {
                self.tracer.record(
                    &self.name,
                    format!("pins A=0x{:02x} B=0x{:02x}", new as u8, (new >> 8) as u8),
                );
            }
            for obs in &mut self.observers {
                obs(now, old, new);
            }
        }
        self.evaluate_interrupts();
    }

    fn gpio_value(&self, port: Port) -> u8 {
        let p = port.index();
        let levels = port.of(self.pins.get());
        let inverted = self.regs[Register::Ipol.index()][p] & self.regs[Register::Iodir.index()][p];
        levels ^ inverted
    }

    fn evaluate_interrupts(&mut self) {
        let levels = self.pins.get();
        for port in [Port::A, Port::B] {
            let p = port.index();
            let enabled =
                self.regs[Register::Gpinten.index()][p] & self.regs[Register::Iodir.index()][p];
            let now_l = port.of(levels);
            let prev = port.of(self.last_inputs);
            let intcon = self.regs[Register::Intcon.index()][p];
            let defval = self.regs[Register::Defval.index()][p];
            let cause = enabled & ((intcon & (now_l ^ defval)) | (!intcon & (now_l ^ prev)));
            if cause != 0 && self.regs[Register::Intf.index()][p] == 0 {
                self.regs[Register::Intf.index()][p] = cause;
                self.regs[Register::Intcap.index()][p] = self.gpio_value(port);
                self.stats.interrupts[p] += 1;
            }
        }
        self.last_inputs = levels;
    }

    fn clear_interrupt(&mut self, port: Port) {
        self.regs[Register::Intf.index()][port.index()] = 0;
        // A pin still differing from DEFVAL raises the interrupt again at once.
        let saved = self.last_inputs;
        self.evaluate_interrupts();
        self.last_inputs = saved;
    }

    fn read_register(&mut self, address: u8) -> u8 {
        let Some((reg, port)) = Register::decode(address, self.bank1()) else {
            return 0;
        };
        let value = match reg {
            Register::Gpio => {
                let v = self.gpio_value(port);
                self.clear_interrupt(port);
                v
            }
            Register::Intcap => {
                let v = self.register(reg, port);
                self.clear_interrupt(port);
                v
            }
            _ => self.register(reg, port),
        };
        match self.readback_fault {
            Some((r, p, xor)) if r == reg && p == port => {
                self.stats.faulty_reads += 1;
                value ^ xor
            }
            _ => value,
        }
    }

    fn write_register(&mut self, now: Instant, address: u8, value: u8) {
        let Some((reg, port)) = Register::decode(address, self.bank1()) else {
            return;
        };
        match reg {
            Register::Intf | Register::Intcap => return,
            Register::Iocon => {
                self.regs[reg.index()] = [value & iocon::WRITABLE; 2];
                return;
            }
            // A GPIO write goes to the latch.
            Register::Gpio => self.regs[Register::Olat.index()][port.index()] = value,
            _ => self.regs[reg.index()][port.index()] = value,
        }
        if matches!(
            reg,
            Register::Iodir | Register::Gpio | Register::Olat | Register::Gppu
        ) {
            self.refresh_pins(now);
        } else {
            self.evaluate_interrupts();
        }
    }

    fn advance_pointer(&mut self) {
        let iocon = self.iocon();
        let bank1 = iocon & iocon::BANK != 0;
        if iocon & iocon::SEQOP == 0 {
            let last = if bank1 { LAST_BANK1 } else { LAST_BANK0 };
            self.pointer = if self.pointer >= last {
                0
            } else {
                self.pointer + 1
            };
        } else if !bank1 && self.pointer <= LAST_BANK0 {
            self.pointer ^= 1;
        }
    }
}

impl I2cDevice for Mcp23017 {
    fn start(&mut self, _now: Instant, _address: u8, read: bool) -> Ack {
        self.expect_pointer = !read;
        Ack::Ack
    }

    fn write(&mut self, now: Instant, byte: u8) -> Ack {
        if self.expect_pointer {
            self.pointer = byte;
            self.expect_pointer = false;
        } else {
            self.stats.register_writes += 1;
            self.write_register(now, self.pointer, byte);
            self.advance_pointer();
        }
        Ack::Ack
    }

    fn read(&mut self, _now: Instant) -> u8 {
        self.stats.register_reads += 1;
        let v = self.read_register(self.pointer);
        self.advance_pointer();
        v
    }

    fn stop(&mut self, _now: Instant) {
        self.stats.transactions += 1;
        self.expect_pointer = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::TaskSpec;
    use crate::periph::i2c::FAST_MODE_HZ;
    use embedded_hal_async::i2c::{ErrorKind, I2c};
    use firmware_core::time::Duration;

    const ADDR: u8 = 0x20;

    fn setup() -> (Kernel, I2cBus, Rc<RefCell<Mcp23017>>) {
        let k = Kernel::new(1);
        let bus = I2cBus::new(&k, "i2c1", FAST_MODE_HZ).expect("bus");
        let mcp = Mcp23017::new(&k, "mcp20")
            .attach(&bus, ADDR)
            .expect("attach");
        (k, bus, mcp)
    }

    enum Op {
        W(Vec<u8>),
        Wr(Vec<u8>, usize),
        R(usize),
    }

    type Out = Rc<RefCell<Vec<Result<Vec<u8>, ErrorKind>>>>;

    /// Run `ops` as a controller on a world task and return each result.
    fn run(k: &mut Kernel, bus: &I2cBus, ops: Vec<Op>) -> Vec<Result<Vec<u8>, ErrorKind>> {
        let out: Out = Rc::default();
        let o = out.clone();
        let mut bus = bus.clone();
        k.spawn(TaskSpec::world("ctl"), async move {
            for op in ops {
                let r = match op {
                    Op::W(d) => bus.write(ADDR, &d).await.map(|()| vec![]),
                    Op::Wr(d, n) => {
                        let mut b = vec![0; n];
                        bus.write_read(ADDR, &d, &mut b).await.map(|()| b)
                    }
                    Op::R(n) => {
                        let mut b = vec![0; n];
                        bus.read(ADDR, &mut b).await.map(|()| b)
                    }
                };
                o.borrow_mut().push(r);
            }
        })
        .detach();
        k.run_for(Duration::from_millis(50));
        out.take()
    }

    #[test]
    fn power_on_values_read_sequentially_in_bank0() {
        let (mut k, bus, _) = setup();
        let r = run(&mut k, &bus, vec![Op::Wr(vec![0x00], 0x16)]);
        let mut expect = vec![0u8; 0x16];
        expect[0] = 0xFF;
        expect[1] = 0xFF;
        assert_eq!(r, vec![Ok(expect)]);
    }

    #[test]
    fn sequential_reads_roll_over_after_the_last_register() {
        let (mut k, bus, mcp) = setup();
        mcp.borrow_mut().regs[Register::Olat.index()] = [0xA1, 0xB2];
        let r = run(&mut k, &bus, vec![Op::Wr(vec![0x14], 3)]);
        assert_eq!(r, vec![Ok(vec![0xA1, 0xB2, 0xFF])]);
    }

    #[test]
    fn bank1_layout_puts_each_port_in_its_own_block() {
        let (mut k, bus, mcp) = setup();
        let r = run(
            &mut k,
            &bus,
            vec![
                // IOCON = BANK at 0x0A (bank 0 address), then IODIRB = 0x0F at bank-1 0x10.
                Op::W(vec![0x0A, 0x80]),
                Op::W(vec![0x10, 0x0F]),
                Op::W(vec![0x0A, 0x55]), // OLATA in bank 1
                Op::W(vec![0x1A, 0x66]), // OLATB in bank 1
                Op::Wr(vec![0x05], 1),   // IOCON at 0x05
                Op::Wr(vec![0x15], 1),   // and at 0x15
                Op::Wr(vec![0x00], 0x0B),
            ],
        );
        let m = mcp.borrow();
        assert_eq!(m.register(Register::Iodir, Port::B), 0x0F);
        assert_eq!(m.register(Register::Olat, Port::A), 0x55);
        assert_eq!(m.register(Register::Olat, Port::B), 0x66);
        assert_eq!(r[4], Ok(vec![0x80]));
        assert_eq!(r[5], Ok(vec![0x80]));
        // Port A block: IODIRA POR 0xFF … OLATA 0x55 at 0x0A.
        let block = r[6].clone().expect("read");
        assert_eq!(block[0], 0xFF);
        assert_eq!(block[5], 0x80);
        assert_eq!(block[0x0A], 0x55);
        for (addr, reg, port) in [
            (0x00, Register::Iodir, Port::A),
            (0x15, Register::Iocon, Port::B),
            (0x1A, Register::Olat, Port::B),
        ] {
            assert_eq!(Register::decode(addr, true), Some((reg, port)));
            assert_eq!(reg.address(port, true), addr);
        }
        assert_eq!(Register::decode(0x0B, true), None);
        assert_eq!(Register::decode(0x16, false), None);
    }

    #[test]
    fn bank1_sequential_reads_roll_over_after_0x1a() {
        let (mut k, bus, mcp) = setup();
        mcp.borrow_mut().regs[Register::Iocon.index()] = [0x80; 2];
        mcp.borrow_mut().regs[Register::Olat.index()] = [0x11, 0x22];
        let r = run(&mut k, &bus, vec![Op::Wr(vec![0x19], 3)]);
        // GPIOB (pins: port B all inputs, undriven, no pull-up → 0), OLATB, then IODIRA.
        assert_eq!(r, vec![Ok(vec![0x00, 0x22, 0xFF])]);
    }

    #[test]
    fn byte_mode_toggles_between_the_a_b_pair_in_bank0() {
        let (mut k, bus, mcp) = setup();
        // SEQOP=1, all outputs, then OLATA/OLATB via repeated writes in byte mode.
        let r = run(
            &mut k,
            &bus,
            vec![
                Op::W(vec![0x0A, 0x20]),
                Op::W(vec![0x00, 0x00, 0x00]),
                Op::W(vec![0x14, 0x01, 0x02, 0x03]),
                Op::Wr(vec![0x12], 4),
            ],
        );
        let m = mcp.borrow();
        assert_eq!(m.register(Register::Iodir, Port::A), 0x00);
        assert_eq!(m.register(Register::Iodir, Port::B), 0x00);
        // 0x14 ← 1, 0x15 ← 2, 0x14 ← 3.
        assert_eq!(m.register(Register::Olat, Port::A), 0x03);
        assert_eq!(m.register(Register::Olat, Port::B), 0x02);
        assert_eq!(r[3], Ok(vec![0x03, 0x02, 0x03, 0x02]));
    }

    #[test]
    fn byte_mode_stays_on_one_register_in_bank1() {
        let (mut k, bus, mcp) = setup();
        mcp.borrow_mut().regs[Register::Iocon.index()] = [0xA0; 2];
        let r = run(
            &mut k,
            &bus,
            vec![Op::W(vec![0x0A, 1, 2, 3]), Op::Wr(vec![0x0A], 3)],
        );
        assert_eq!(mcp.borrow().register(Register::Olat, Port::A), 3);
        assert_eq!(r[1], Ok(vec![3, 3, 3]));
    }

    #[test]
    fn gpio_write_goes_to_the_latch_and_drives_only_output_pins() {
        let (mut k, bus, mcp) = setup();
        mcp.borrow_mut().set_input(3, Some(true));
        let r = run(
            &mut k,
            &bus,
            vec![
                Op::W(vec![0x00, 0xF0]), // GPA0-3 outputs, GPA4-7 inputs
                Op::W(vec![0x12, 0xA5]), // GPIOA write → OLATA
                Op::Wr(vec![0x14], 1),   // OLATA: the latch
                Op::Wr(vec![0x12], 1),   // GPIOA: the pins
            ],
        );
        assert_eq!(mcp.borrow().register(Register::Olat, Port::A), 0xA5);
        assert_eq!(r[2], Ok(vec![0xA5]));
        // Outputs 0-3 drive 0x5; inputs 4-7 are undriven and read low.
        assert_eq!(r[3], Ok(vec![0x05]));
        assert_eq!(mcp.borrow().pin_levels() & 0xFF, 0x05);
    }

    #[test]
    fn input_pins_read_the_driven_level_the_pullup_and_ipol() {
        let (mut k, bus, mcp) = setup();
        {
            let mut m = mcp.borrow_mut();
            m.set_input(8, Some(true));
            m.set_input(9, Some(false));
        }
        let r = run(
            &mut k,
            &bus,
            vec![
                Op::Wr(vec![0x13], 1),
                Op::W(vec![0x0D, 0x04]), // GPPUB bit 2
                Op::W(vec![0x03, 0x01]), // IPOLB bit 0
                Op::Wr(vec![0x13], 1),
                // An output pin ignores IPOL and the driven level.
                Op::W(vec![0x01, 0xFE, 0x01]), // IODIRB bit0 output; IPOLA (next) junk
                Op::W(vec![0x15, 0x00]),
                Op::Wr(vec![0x13], 1),
            ],
        );
        assert_eq!(r[0], Ok(vec![0x01]));
        assert_eq!(r[3], Ok(vec![0x04])); // bit0 inverted to 0, pull-up bit2
        assert_eq!(r[6], Ok(vec![0x04]));
    }

    #[test]
    fn a_register_can_read_back_wrong_and_counts_it() {
        let (mut k, bus, mcp) = setup();
        mcp.borrow_mut()
            .set_readback_fault(Register::Olat, Port::A, 0x01);
        let r = run(
            &mut k,
            &bus,
            vec![Op::W(vec![0x14, 0x80]), Op::Wr(vec![0x14], 2)],
        );
        assert_eq!(r[1], Ok(vec![0x81, 0x00]));
        assert_eq!(mcp.borrow().register(Register::Olat, Port::A), 0x80);
        assert_eq!(mcp.borrow().stats().faulty_reads, 1);
        mcp.borrow_mut().clear_faults();
        let r = run(&mut k, &bus, vec![Op::Wr(vec![0x14], 1)]);
        assert_eq!(r[0], Ok(vec![0x80]));
    }

    #[test]
    fn pin_changes_reach_observers_the_snapshot_and_the_trace() {
        let (mut k, bus, mcp) = setup();
        let seen: Rc<RefCell<Vec<(u16, u16)>>> = Rc::default();
        let s = seen.clone();
        mcp.borrow_mut()
            .on_change(Box::new(move |_, old, new| s.borrow_mut().push((old, new))));
        let pins = mcp.borrow().pins();
        run(
            &mut k,
            &bus,
            vec![Op::W(vec![0x00, 0x00]), Op::W(vec![0x14, 0x08])],
        );
        assert_eq!(pins.port(Port::A), 0x08);
        assert!(pins.pin(3));
        assert_eq!(*seen.borrow(), vec![(0x0000, 0x0008)]);
        k.with_trace(|t| {
            assert!(t.events().iter().any(|e| e.text == "pins A=0x08 B=0x00"));
        });
        let st = mcp.borrow().stats();
        assert_eq!(
            (st.transactions, st.register_writes, st.pin_changes),
            (2, 2, 1)
        );
    }

    #[test]
    fn reset_restores_power_on_values() {
        let (mut k, bus, mcp) = setup();
        run(
            &mut k,
            &bus,
            vec![Op::W(vec![0x0A, 0x20]), Op::W(vec![0x00, 0x00, 0x00])],
        );
        mcp.borrow_mut().reset();
        let m = mcp.borrow();
        for r in Register::ALL {
            assert_eq!(m.register(r, Port::A), r.por_value(), "{r:?}");
            assert_eq!(m.register(r, Port::B), r.por_value(), "{r:?}");
        }
        assert_eq!(m.stats().resets, 1);
    }

    #[test]
    fn interrupt_on_change_captures_and_clears_on_gpio_read() {
        let (mut k, bus, mcp) = setup();
        run(
            &mut k,
            &bus,
            vec![Op::W(vec![0x04, 0x01])], // GPINTENA bit 0, compare with previous
        );
        assert!(
            mcp.borrow().int_pin(Port::A),
            "INTA idles high (active low)"
        );
        mcp.borrow_mut().set_input(0, Some(true));
        assert!(!mcp.borrow().int_pin(Port::A));
        assert!(mcp.borrow().int_pin(Port::B));
        let r = run(
            &mut k,
            &bus,
            vec![Op::Wr(vec![0x0E], 1), Op::Wr(vec![0x10], 1), Op::R(1)],
        );
        // INTFA = bit 0, INTCAPA = 0x01 (the read clears), then the pointer is at 0x11.
        assert_eq!(r, vec![Ok(vec![0x01]), Ok(vec![0x01]), Ok(vec![0x00])]);
        assert!(mcp.borrow().int_pin(Port::A));
        assert_eq!(mcp.borrow().stats().interrupts, [1, 0]);
    }

    #[test]
    fn bus_nack_and_stuck_bus_faults_apply_to_the_expander() {
        let (mut k, bus, _mcp) = setup();
        bus.nack_next(ADDR, 1);
        bus.stick_for(Duration::from_micros(20));
        let r = run(
            &mut k,
            &bus,
            vec![
                Op::Wr(vec![0x00], 1),
                Op::Wr(vec![0x00], 1),
                Op::Wr(vec![0x00], 1),
            ],
        );
        assert_eq!(r[0], Err(ErrorKind::Bus));
        assert!(matches!(r[1], Err(ErrorKind::NoAcknowledge(_))));
        assert_eq!(r[2], Ok(vec![0xFF]));
    }

    #[test]
    fn the_firmware_driver_initialises_the_part_and_drives_its_pins() {
        use firmware_core::pdu::mcp23017::{Mcp23017 as Driver, McpErrorKind, Port as FwPort};
        let (mut k, bus, mcp) = setup();
        mcp.borrow_mut()
            .set_readback_fault(Register::Olat, Port::B, 0x80);
        let out: Rc<RefCell<Vec<String>>> = Rc::default();
        let o = out.clone();
        let b = bus.clone();
        k.spawn(TaskSpec::world("switch"), async move {
            let mut drv = Driver::new(b.clone(), ADDR);
            let log = |s: String| o.borrow_mut().push(s);
            log(format!("init {:?}", drv.init().await.map_err(|e| e.kind)));
            log(format!(
                "write {:?}",
                drv.write_port(FwPort::A, 0x5A).await.is_ok()
            ));
            log(format!("olata {:?}", drv.read_reg(0x14).await.ok()));
            // Two NACKs, then the third attempt gets through.
            b.nack_next(ADDR, 2);
            log(format!(
                "retry {:?}",
                drv.write_port(FwPort::B, 0x02).await.is_ok()
            ));
            b.nack_next(ADDR, 3);
            let e = drv.write_port(FwPort::B, 0x03).await.map_err(|e| e.kind);
            log(format!(
                "gives up {:?}",
                e == Err(McpErrorKind::NoAcknowledge)
            ));
            log(format!("stats {:?}", drv.stats()));
        })
        .detach();
        k.run_for(Duration::from_millis(50));
        let m = mcp.borrow();
        assert_eq!(m.register(Register::Iocon, Port::A), 0x20);
        assert_eq!(m.register(Register::Iodir, Port::A), 0x00);
        assert_eq!(m.register(Register::Iodir, Port::B), 0x00);
        assert_eq!(m.pin_levels(), 0x025A);
        let out = out.borrow();
        // init read OLATB back through the fault (0x80) and wrote that back, as the real
        // read-back-then-write init would; the later write to port B replaced it.
        assert_eq!(out[0], "init Ok(())");
        assert_eq!(out[1..4], ["write true", "olata Some(90)", "retry true"]);
        assert_eq!(out[4], "gives up true");
        assert!(
            out[5].contains("failed_attempts: 5") && out[5].contains("failed_accesses: 1"),
            "{}",
            out[5]
        );
        assert_eq!(m.stats().faulty_reads, 1);
    }
}
