//! An I2C bus on virtual time, routing by 7-bit address to simulated parts.
//!
//! This module owns the bus: which part answers which address, the bus clock, who holds the bus,
//! the injected faults and the per-address counters. Parts implement [`I2cDevice`], a byte-level
//! view of the protocol (address phase, data bytes with ACK/NACK, STOP), so each part can follow
//! its datasheet: an EEPROM NACKs its address during a write cycle, an expander auto-increments
//! its register pointer.
//!
//! # Protocol
//! [`I2cBus`] implements `embedded_hal_async::i2c::I2c` with the contract's framing: a START and
//! the address at the first operation, a repeated START and the address again where the
//! direction changes, adjacent operations of the same direction merged into one phase, a STOP at
//! the end or after the first NACK.
//!
//! # Timing
//! Every byte, address bytes included, takes 9 bit times (8 data + ACK) at the bus clock; START,
//! repeated START and STOP add nothing at microsecond resolution. A transaction's duration is
//! rounded once from its bit count. The part sees the whole transaction at once, when it starts,
//! with each call's `now` set to the instant that byte completes on the wire; the caller gets the
//! result when virtual time reaches the end. One timer per transaction (DESIGN decision 9). Only
//! one transaction holds the bus at a time; others wait for it, as behind a shared-bus mutex.
//!
//! # Faults
//! Plain method calls, each traced: NACK an address for a duration, for the next N transactions
//! or with a probability (one seeded RNG per bus), and a stuck bus (SDA held low) that fails
//! every transaction with a bus error for a duration. A failed transaction still takes the time
//! of its address byte, so a firmware retry loop cannot spin forever at one instant.
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use embedded_hal_async::i2c::{
    ErrorKind, ErrorType, I2c, NoAcknowledgeSource, Operation, SevenBitAddress,
};
use firmware_core::time::{Duration, Instant};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::kernel::{Kernel, SimClock, Tracer};

/// Standard-mode bus clock, 100 kHz.
pub const STANDARD_MODE_HZ: u32 = 100_000;
/// Fast-mode bus clock, 400 kHz.
pub const FAST_MODE_HZ: u32 = 400_000;

/// Bit times per byte on the wire: 8 data bits and the ACK bit.
const BITS_PER_BYTE: u64 = 9;

/// The receiver's answer in the ACK bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// SDA pulled low: byte accepted.
    Ack,
    /// SDA left high: address not answered or byte refused.
    Nack,
}

/// A simulated part on the bus, driven byte by byte.
///
/// Call order per transaction: `start` (after START or a repeated START), then `write` or `read`
/// per data byte of that phase, possibly another `start` for a repeated START, and `stop` once at
/// the end. `stop` also follows a NACK (the controller sends STOP), and is called only if `start`
/// was. `now` is the instant the byte (or condition) completes on the wire; parts MUST use it
/// rather than a clock, since the bus calls them ahead of virtual time (see the module docs).
pub trait I2cDevice {
    /// Address phase: the controller addressed this part (`address`, useful for parts that
    /// decode some address bits, like a 24C16's block select) for `read` or write.
    /// A part may NACK, e.g. an EEPROM busy with its write cycle.
    fn start(&mut self, now: Instant, address: u8, read: bool) -> Ack;
    /// The controller wrote `byte`; the part ACKs or NACKs it. A NACK ends the transaction.
    fn write(&mut self, now: Instant, byte: u8) -> Ack;
    /// The controller reads a byte.
    fn read(&mut self, now: Instant) -> u8;
    /// STOP condition: the transaction is over.
    fn stop(&mut self, now: Instant);
}

/// Why the bus refused a setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum I2cBusError {
    /// 7-bit addresses go up to 0x7f.
    #[error("0x{0:02x} is not a 7-bit address")]
    InvalidAddress(u8),
    /// Two parts answering one address would collide on the bus.
    #[error("address 0x{0:02x} already has a part attached")]
    AddressInUse(u8),
    /// A zero bus clock would make every byte take forever.
    #[error("bus clock must be above zero")]
    ZeroSpeed,
}

/// What happened at one address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct I2cStats {
    /// Transactions addressed to it.
    pub transactions: u64,
    /// Data bytes transferred (written and ACKed, or read), address bytes excluded.
    pub bytes: u64,
    /// Transactions that ended in a NACK (address or data, injected or from the part).
    pub nacks: u64,
    /// Transactions that failed with a bus error (stuck bus).
    pub bus_errors: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct NackFault {
    until: Option<Instant>,
    next: u32,
    probability: f64,
}

struct BusState {
    name: String,
    speed_hz: u32,
    devices: BTreeMap<u8, Rc<RefCell<dyn I2cDevice>>>,
    nacks: BTreeMap<u8, NackFault>,
    stuck_until: Option<Instant>,
    busy_until: Instant,
    rng: ChaCha8Rng,
    stats: BTreeMap<u8, I2cStats>,
}

impl BusState {
    /// Whether an injected fault NACKs `address` at `now`; consumes one "next N" count.
    /// Returns the NACK decision and whether a counted fault just ran out.
    fn injected_nack(&mut self, address: u8, now: Instant) -> (bool, bool) {
        let Some(f) = self.nacks.get_mut(&address) else {
            return (false, false);
        };
        let mut nack = f.until.is_some_and(|t| now < t);
        let mut ran_out = false;
        if f.next > 0 {
            f.next -= 1;
            nack = true;
            ran_out = f.next == 0;
        }
        // Rolled on every transaction while set, so the sequence does not depend on other faults.
        if f.probability > 0.0 && self.rng.random_bool(f.probability) {
            nack = true;
        }
        (nack, ran_out)
    }
}

/// The bus: attach parts, inject faults, read stats, and use it as the firmware's
/// `embedded_hal_async::i2c::I2c` (7-bit addresses). Cheap to clone; clones share the bus.
#[derive(Clone)]
pub struct I2cBus {
    state: Rc<RefCell<BusState>>,
    clock: SimClock,
    tracer: Tracer,
}

fn check_address(address: u8) -> Result<(), I2cBusError> {
    if address > 0x7f {
        return Err(I2cBusError::InvalidAddress(address));
    }
    Ok(())
}

/// `bits` bit times at `hz`, rounded once to the nearest microsecond.
fn bits_time(bits: u64, hz: u32) -> Duration {
    let hz = u128::from(hz.max(1));
    let us = (u128::from(bits) * 1_000_000 + hz / 2) / hz;
    Duration::from_micros(u64::try_from(us).unwrap_or(u64::MAX))
}

impl I2cBus {
    /// A bus named `name` at `speed_hz` on `kernel`'s clock and trace, with the RNG stream
    /// `i2c:<name>` (`I2cBus::new(&kernel, "pdu.i2c0", FAST_MODE_HZ)?`).
    pub fn new(kernel: &Kernel, name: &str, speed_hz: u32) -> Result<I2cBus, I2cBusError> {
        let rng = kernel.rng(&format!("i2c:{name}"));
        I2cBus::with_parts(kernel.clock(), kernel.tracer(), rng, name, speed_hz)
    }

    /// A bus from parts, for callers that hold a clock and tracer rather than the kernel.
    pub fn with_parts(
        clock: SimClock,
        tracer: Tracer,
        rng: ChaCha8Rng,
        name: &str,
        speed_hz: u32,
    ) -> Result<I2cBus, I2cBusError> {
        if speed_hz == 0 {
            return Err(I2cBusError::ZeroSpeed);
        }
        Ok(I2cBus {
            state: Rc::new(RefCell::new(BusState {
                name: name.to_owned(),
                speed_hz,
                devices: BTreeMap::new(),
                nacks: BTreeMap::new(),
                stuck_until: None,
                busy_until: Instant::ZERO,
                rng,
                stats: BTreeMap::new(),
            })),
            clock,
            tracer,
        })
    }

    /// Put `device` on the bus at `address` (`bus.attach(0x20, expander.clone())?`).
    pub fn attach(
        &self,
        address: u8,
        device: Rc<RefCell<dyn I2cDevice>>,
    ) -> Result<(), I2cBusError> {
        check_address(address)?;
        let mut st = self.state.borrow_mut();
        if st.devices.contains_key(&address) {
            return Err(I2cBusError::AddressInUse(address));
        }
        st.devices.insert(address, device);
        Ok(())
    }

    /// Take the part at `address` off the bus (unplugged, powered off); it NACKs from now on.
    pub fn detach(&self, address: u8) -> Option<Rc<RefCell<dyn I2cDevice>>> {
        self.state.borrow_mut().devices.remove(&address)
    }

    /// The bus clock in Hz.
    pub fn speed_hz(&self) -> u32 {
        self.state.borrow().speed_hz
    }

    /// Change the bus clock for the transactions that start from now on.
    pub fn set_speed_hz(&self, speed_hz: u32) -> Result<(), I2cBusError> {
        if speed_hz == 0 {
            return Err(I2cBusError::ZeroSpeed);
        }
        self.state.borrow_mut().speed_hz = speed_hz;
        Ok(())
    }

    /// Time one byte (9 bits) takes at the current clock, rounded.
    pub fn byte_time(&self) -> Duration {
        bits_time(BITS_PER_BYTE, self.speed_hz())
    }

    /// NACK `address` in the address phase until `d` from now (`bus.nack_for(0x50,
    /// Duration::from_millis(5))`).
    pub fn nack_for(&self, address: u8, d: Duration) {
        let until = self.clock.now() + d;
        let mut st = self.state.borrow_mut();
        st.nacks.entry(address).or_default().until = Some(until);
        self.tracer.record(
            &st.name,
            format!("fault 0x{address:02x} nack until {}", until),
        );
    }

    /// NACK `address` in the address phase for its next `n` transactions.
    pub fn nack_next(&self, address: u8, n: u32) {
        let mut st = self.state.borrow_mut();
        st.nacks.entry(address).or_default().next = n;
        self.tracer.record(
            &st.name,
            format!("fault 0x{address:02x} nack next {n} transactions"),
        );
    }

    /// NACK `address` in the address phase with `probability` per transaction (clamped to
    /// 0..=1; 0 turns it off), drawn from the bus's seeded RNG.
    pub fn nack_probability(&self, address: u8, probability: f64) {
        let p = if probability.is_nan() {
            0.0
        } else {
            probability.clamp(0.0, 1.0)
        };
        let mut st = self.state.borrow_mut();
        st.nacks.entry(address).or_default().probability = p;
        self.tracer.record(
            &st.name,
            format!("fault 0x{address:02x} nack probability {p:.3}"),
        );
    }

    /// Hold the bus stuck (SDA low) for `d` from now: every transaction fails with a bus error.
    pub fn stick_for(&self, d: Duration) {
        let until = self.clock.now() + d;
        let mut st = self.state.borrow_mut();
        st.stuck_until = Some(until);
        self.tracer
            .record(&st.name, format!("fault bus stuck until {until}"));
    }

    /// Remove every injected fault.
    pub fn clear_faults(&self) {
        let mut st = self.state.borrow_mut();
        st.nacks.clear();
        st.stuck_until = None;
        self.tracer.record(&st.name, "faults cleared");
    }

    /// Counters for `address` (all zero if it was never addressed).
    pub fn stats(&self, address: u8) -> I2cStats {
        self.state
            .borrow()
            .stats
            .get(&address)
            .copied()
            .unwrap_or_default()
    }

    /// Counters of every address ever addressed, in address order.
    pub fn all_stats(&self) -> Vec<(u8, I2cStats)> {
        self.state
            .borrow()
            .stats
            .iter()
            .map(|(a, s)| (*a, *s))
            .collect()
    }

    /// Play one transaction against the bus and its part, starting at `start`.
    /// Returns the bits it put on the wire and its result.
    fn play(
        &self,
        address: u8,
        operations: &mut [Operation<'_>],
        start: Instant,
    ) -> (u64, Result<(), ErrorKind>) {
        let mut st = self.state.borrow_mut();
        let hz = st.speed_hz;
        let at = |bits: u64| start + bits_time(bits, hz);
        st.stats.entry(address).or_default().transactions += 1;
        if st.stuck_until.is_some_and(|t| start < t) {
            st.stats.entry(address).or_default().bus_errors += 1;
            return (BITS_PER_BYTE, Err(ErrorKind::Bus));
        }
        let (injected, ran_out) = st.injected_nack(address, start);
        if ran_out {
            self.tracer
                .record(&st.name, format!("fault 0x{address:02x} nack over"));
        }
        let device = st.devices.get(&address).cloned();
        drop(st);
        let nack_address = Err(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address));
        let (bits, bytes, result) = match device {
            None => (BITS_PER_BYTE, 0, nack_address),
            Some(_) if injected => (BITS_PER_BYTE, 0, nack_address),
            Some(device) => {
                // Only a part that calls back into the bus while being driven could hold this
                // borrow; answer with an error instead of panicking.
                let Ok(mut dev) = device.try_borrow_mut() else {
                    return (BITS_PER_BYTE, Err(ErrorKind::Other));
                };
                drive(&mut *dev, address, operations, at)
            }
        };
        let mut st = self.state.borrow_mut();
        let stats = st.stats.entry(address).or_default();
        stats.bytes += bytes;
        if matches!(result, Err(ErrorKind::NoAcknowledge(_))) {
            stats.nacks += 1;
        }
        (bits, result)
    }
}

/// Drive `dev` through the operations. Returns bits on the wire, data bytes moved, result.
fn drive(
    dev: &mut dyn I2cDevice,
    address: u8,
    operations: &mut [Operation<'_>],
    at: impl Fn(u64) -> Instant,
) -> (u64, u64, Result<(), ErrorKind>) {
    let mut bits = 0;
    let mut bytes = 0;
    let mut result = Ok(());
    let mut phase: Option<bool> = None;
    'ops: for op in operations.iter_mut() {
        let read = matches!(op, Operation::Read(_));
        if phase != Some(read) {
            // START, or a repeated START where the direction changes.
            bits += BITS_PER_BYTE;
            // A NACK after a repeated START is an address NACK too.
            if dev.start(at(bits), address, read) == Ack::Nack {
                result = Err(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address));
                break;
            }
            phase = Some(read);
        }
        match op {
            Operation::Write(data) => {
                for &b in data.iter() {
                    bits += BITS_PER_BYTE;
                    if dev.write(at(bits), b) == Ack::Nack {
                        result = Err(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Data));
                        break 'ops;
                    }
                    bytes += 1;
                }
            }
            Operation::Read(buf) => {
                for slot in buf.iter_mut() {
                    bits += BITS_PER_BYTE;
                    *slot = dev.read(at(bits));
                    bytes += 1;
                }
            }
        }
    }
    dev.stop(at(bits));
    (bits, bytes, result)
}

impl ErrorType for I2cBus {
    type Error = ErrorKind;
}

impl I2c<SevenBitAddress> for I2cBus {
    /// Wait for the bus, play the transaction, and return when its last bit is on the wire.
    /// An address above 0x7f fails at once with [`ErrorKind::Other`]; no operations is a no-op.
    async fn transaction(
        &mut self,
        address: SevenBitAddress,
        operations: &mut [Operation<'_>],
    ) -> Result<(), ErrorKind> {
        if check_address(address).is_err() {
            return Err(ErrorKind::Other);
        }
        if operations.is_empty() {
            return Ok(());
        }
        // Another handle may hold the bus; whoever runs first after it frees takes it.
        loop {
            let free = self.state.borrow().busy_until;
            if self.clock.now() >= free {
                break;
            }
            self.clock.sleep_until(free).await;
        }
        let start = self.clock.now();
        let (bits, result) = self.play(address, operations, start);
        let end = start + bits_time(bits, self.speed_hz());
        self.state.borrow_mut().busy_until = end;
        self.clock.sleep_until(end).await;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::TaskSpec;

    type Results = Rc<RefCell<Vec<(Instant, Result<Vec<u8>, ErrorKind>)>>>;

    /// A 16-register part: the first written byte sets the pointer, later bytes write registers,
    /// reads auto-increment. NACKs its address until `busy_until`, and a pointer past the end.
    #[derive(Default)]
    struct RegFile {
        regs: [u8; 16],
        ptr: usize,
        expect_ptr: bool,
        busy_until: Instant,
        log: Vec<String>,
        last_stop: Option<Instant>,
    }

    impl I2cDevice for RegFile {
        fn start(&mut self, now: Instant, _address: u8, read: bool) -> Ack {
            if now < self.busy_until {
                return Ack::Nack;
            }
            self.log.push(if read { "SR" } else { "SW" }.to_owned());
            self.expect_ptr = !read;
            Ack::Ack
        }
        fn write(&mut self, _now: Instant, byte: u8) -> Ack {
            if self.expect_ptr {
                if usize::from(byte) >= self.regs.len() {
                    return Ack::Nack;
                }
                self.ptr = usize::from(byte);
                self.expect_ptr = false;
            } else {
                self.regs[self.ptr] = byte;
                self.ptr = (self.ptr + 1) % self.regs.len();
            }
            Ack::Ack
        }
        fn read(&mut self, _now: Instant) -> u8 {
            let v = self.regs[self.ptr];
            self.ptr = (self.ptr + 1) % self.regs.len();
            v
        }
        fn stop(&mut self, now: Instant) {
            self.log.push("P".to_owned());
            self.last_stop = Some(now);
        }
    }

    fn at_us(v: u64) -> Instant {
        Instant::from_micros(v)
    }
    fn at_ms(v: u64) -> Instant {
        Instant::from_millis(v)
    }

    /// A fast-mode bus with register files at 0x20 and 0x21.
    fn bus_with_two_parts(
        seed: u64,
    ) -> (Kernel, I2cBus, Rc<RefCell<RegFile>>, Rc<RefCell<RegFile>>) {
        let k = Kernel::new(seed);
        let bus = I2cBus::new(&k, "i2c0", FAST_MODE_HZ).expect("valid speed");
        let (p20, p21) = (
            Rc::new(RefCell::new(RegFile::default())),
            Rc::new(RefCell::new(RegFile::default())),
        );
        bus.attach(0x20, p20.clone()).expect("free address");
        bus.attach(0x21, p21.clone()).expect("free address");
        (k, bus, p20, p21)
    }

    /// One step of a scripted controller.
    #[derive(Clone)]
    enum Step {
        At(Instant),
        Write(u8, Vec<u8>),
        WriteRead(u8, Vec<u8>, usize),
    }

    /// Run `steps` on a world task; log (end time, read bytes or error) per transaction.
    fn run_script(k: &mut Kernel, bus: &I2cBus, steps: Vec<Step>) -> Results {
        let results: Results = Rc::default();
        let r = results.clone();
        let mut bus = bus.clone();
        let clock = k.clock();
        k.spawn(TaskSpec::world("controller"), async move {
            for step in steps {
                let out = match step {
                    Step::At(t) => {
                        clock.sleep_until(t).await;
                        continue;
                    }
                    Step::Write(addr, data) => bus.write(addr, &data).await.map(|()| Vec::new()),
                    Step::WriteRead(addr, data, n) => {
                        let mut buf = vec![0; n];
                        bus.write_read(addr, &data, &mut buf).await.map(|()| buf)
                    }
                };
                r.borrow_mut().push((clock.now(), out));
            }
        })
        .detach();
        results
    }

    fn outcomes(results: &Results) -> Vec<Result<Vec<u8>, ErrorKind>> {
        results.borrow().iter().map(|(_, r)| r.clone()).collect()
    }

    const NACK_ADDRESS: ErrorKind = ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address);

    #[test]
    fn transactions_reach_the_part_at_their_address() {
        let (mut k, bus, p20, p21) = bus_with_two_parts(0);
        let results = run_script(
            &mut k,
            &bus,
            vec![
                Step::Write(0x20, vec![3, 0xaa, 0xab]),
                Step::Write(0x21, vec![3, 0xbb]),
                Step::WriteRead(0x20, vec![3], 2),
                Step::WriteRead(0x21, vec![3], 1),
            ],
        );
        k.run_until(at_ms(10));
        assert_eq!(
            outcomes(&results),
            vec![Ok(vec![]), Ok(vec![]), Ok(vec![0xaa, 0xab]), Ok(vec![0xbb])]
        );
        assert_eq!(p20.borrow().regs[3..5], [0xaa, 0xab]);
        assert_eq!(p21.borrow().regs[3..5], [0xbb, 0]);
        let s = bus.stats(0x20);
        assert_eq!((s.transactions, s.bytes, s.nacks), (2, 6, 0));
    }

    #[test]
    fn an_address_nobody_answers_is_nacked_after_the_address_byte() {
        let (mut k, bus, _, _) = bus_with_two_parts(0);
        let results = run_script(&mut k, &bus, vec![Step::Write(0x42, vec![1, 2, 3])]);
        k.run_until(at_ms(10));
        // 9 bits at 400 kHz = 22.5 us, rounded to 23.
        assert_eq!(*results.borrow(), vec![(at_us(23), Err(NACK_ADDRESS))]);
        assert_eq!(bus.stats(0x42).nacks, 1);
    }

    #[test]
    fn write_read_uses_one_repeated_start_and_one_stop() {
        let (mut k, bus, p20, _) = bus_with_two_parts(0);
        let mut b = bus.clone();
        k.spawn(TaskSpec::world("controller"), async move {
            let mut buf = [0u8; 2];
            // Adjacent writes share one phase; the read after them needs a repeated START.
            let mut ops = [
                Operation::Write(&[5]),
                Operation::Write(&[7, 8]),
                Operation::Write(&[5]),
                Operation::Read(&mut buf),
            ];
            let _ = b.transaction(0x20, &mut ops).await;
        })
        .detach();
        k.run_until(at_ms(10));
        let p = p20.borrow();
        assert_eq!(p.log, vec!["SW", "SR", "P"]);
        // Pointer 5, data 7 8, then "5" written as data to register 7 (no new START, so no new
        // pointer byte), then the read continues at register 8.
        assert_eq!(p.regs[5..8], [7, 8, 5]);
    }

    #[test]
    fn a_part_that_refuses_a_byte_ends_the_transfer_with_a_data_nack() {
        let (mut k, bus, p20, _) = bus_with_two_parts(0);
        let results = run_script(&mut k, &bus, vec![Step::Write(0x20, vec![0x40, 1])]);
        k.run_until(at_ms(10));
        // Address and the refused pointer byte: 18 bits = 45 us; the second byte is never sent.
        assert_eq!(
            *results.borrow(),
            vec![(
                at_us(45),
                Err(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Data))
            )]
        );
        assert_eq!(p20.borrow().log, vec!["SW", "P"]);
        assert_eq!(bus.stats(0x20).nacks, 1);
    }

    #[test]
    fn a_busy_part_nacks_its_address() {
        let (mut k, bus, p20, _) = bus_with_two_parts(0);
        p20.borrow_mut().busy_until = at_ms(5);
        let results = run_script(
            &mut k,
            &bus,
            vec![
                Step::Write(0x20, vec![0, 1]),
                Step::At(at_ms(5)),
                Step::Write(0x20, vec![0, 1]),
            ],
        );
        k.run_until(at_ms(10));
        assert_eq!(outcomes(&results), vec![Err(NACK_ADDRESS), Ok(vec![])]);
    }

    #[test]
    fn injected_nacks_last_n_transactions_then_the_part_answers_again() {
        let (mut k, bus, _, _) = bus_with_two_parts(0);
        bus.nack_next(0x20, 2);
        let steps = vec![Step::WriteRead(0x20, vec![0], 1); 3];
        let results = run_script(&mut k, &bus, steps);
        k.run_until(at_ms(10));
        assert_eq!(
            outcomes(&results),
            vec![Err(NACK_ADDRESS), Err(NACK_ADDRESS), Ok(vec![0])]
        );
        assert_eq!(bus.stats(0x20).nacks, 2);
        // The other part is untouched.
        assert_eq!(bus.stats(0x21), I2cStats::default());
        k.with_trace(|t| {
            let texts: Vec<_> = t.events().iter().map(|e| e.text.as_str()).collect();
            assert_eq!(
                texts,
                vec![
                    "fault 0x20 nack next 2 transactions",
                    "fault 0x20 nack over"
                ]
            );
        });
    }

    #[test]
    fn nack_for_a_duration_ends_on_time() {
        let (mut k, bus, _, _) = bus_with_two_parts(0);
        bus.nack_for(0x21, Duration::from_millis(5));
        let results = run_script(
            &mut k,
            &bus,
            vec![
                Step::Write(0x21, vec![0]),
                Step::At(at_us(4_999)),
                Step::Write(0x21, vec![0]),
                Step::At(at_ms(5)),
                Step::Write(0x21, vec![0]),
            ],
        );
        k.run_until(at_ms(10));
        assert_eq!(
            outcomes(&results),
            vec![Err(NACK_ADDRESS), Err(NACK_ADDRESS), Ok(vec![])]
        );
    }

    /// 64 reads of 0x20 under a NACK probability; which ones failed.
    fn nack_pattern(seed: u64) -> Vec<bool> {
        let (mut k, bus, _, _) = bus_with_two_parts(seed);
        bus.nack_probability(0x20, 0.5);
        let results = run_script(&mut k, &bus, vec![Step::WriteRead(0x20, vec![0], 1); 64]);
        k.run_until(at_ms(100));
        outcomes(&results).iter().map(Result::is_err).collect()
    }

    #[test]
    fn probabilistic_nacks_are_reproducible_per_seed() {
        let a = nack_pattern(11);
        assert_eq!(a.len(), 64);
        assert_eq!(a, nack_pattern(11));
        assert_ne!(a, nack_pattern(12));
        let failed = a.iter().filter(|f| **f).count();
        assert!((16..=48).contains(&failed), "{failed} of 64 failed");
    }

    #[test]
    fn a_stuck_bus_fails_every_transaction_until_it_frees() {
        let (mut k, bus, _, _) = bus_with_two_parts(0);
        bus.stick_for(Duration::from_millis(10));
        let results = run_script(
            &mut k,
            &bus,
            vec![
                Step::Write(0x20, vec![0]),
                Step::Write(0x21, vec![0]),
                Step::At(at_ms(10)),
                Step::Write(0x20, vec![0]),
            ],
        );
        k.run_until(at_ms(20));
        assert_eq!(
            outcomes(&results),
            vec![Err(ErrorKind::Bus), Err(ErrorKind::Bus), Ok(vec![])]
        );
        // Failures still take an address byte of time: no zero-time retry loops.
        assert_eq!(results.borrow()[0].0, at_us(23));
        assert_eq!(bus.stats(0x20).bus_errors, 1);
        assert_eq!(bus.stats(0x21).bus_errors, 1);
    }

    #[test]
    fn transactions_take_nine_bit_times_per_byte_at_the_bus_clock() {
        let (mut k, bus, p20, _) = bus_with_two_parts(0);
        // Address W, pointer, address R, 2 data bytes: 5 bytes, 45 bits.
        let results = run_script(&mut k, &bus, vec![Step::WriteRead(0x20, vec![0], 2)]);
        k.run_until(at_ms(10));
        // 45 bits / 400 kHz = 112.5 us, rounded once.
        assert_eq!(results.borrow()[0].0, at_us(113));
        assert_eq!(p20.borrow().last_stop, Some(at_us(113)));
        assert_eq!(bus.byte_time(), Duration::from_micros(23));

        bus.set_speed_hz(STANDARD_MODE_HZ).expect("valid speed");
        let results = run_script(
            &mut k,
            &bus,
            vec![Step::At(at_ms(1)), Step::WriteRead(0x20, vec![0], 2)],
        );
        k.run_until(at_ms(10));
        assert_eq!(results.borrow()[0].0, at_ms(1) + Duration::from_micros(450));
    }

    #[test]
    fn two_controllers_take_turns_on_the_bus() {
        let (mut k, bus, _, _) = bus_with_two_parts(0);
        let first = run_script(&mut k, &bus, vec![Step::Write(0x20, vec![0, 1, 2])]);
        let second = run_script(&mut k, &bus, vec![Step::Write(0x21, vec![0, 1, 2])]);
        k.run_until(at_ms(10));
        // 4 bytes each = 36 bits = 90 us; the second waits for the first.
        assert_eq!(first.borrow()[0].0, at_us(90));
        assert_eq!(second.borrow()[0].0, at_us(180));
    }

    #[test]
    fn bad_addresses_and_speeds_are_errors_not_panics() {
        let (mut k, bus, _, _) = bus_with_two_parts(0);
        let part = Rc::new(RefCell::new(RegFile::default()));
        assert_eq!(
            bus.attach(0x80, part.clone()),
            Err(I2cBusError::InvalidAddress(0x80))
        );
        assert_eq!(bus.attach(0x20, part), Err(I2cBusError::AddressInUse(0x20)));
        assert_eq!(bus.set_speed_hz(0), Err(I2cBusError::ZeroSpeed));
        assert!(I2cBus::new(&k, "bad", 0).is_err());
        let results = run_script(&mut k, &bus, vec![Step::Write(0x90, vec![0])]);
        k.run_until(at_ms(1));
        assert_eq!(outcomes(&results), vec![Err(ErrorKind::Other)]);
    }

    #[test]
    fn a_detached_part_stops_answering() {
        let (mut k, bus, _, _) = bus_with_two_parts(0);
        assert!(bus.detach(0x21).is_some());
        let results = run_script(&mut k, &bus, vec![Step::Write(0x21, vec![0])]);
        k.run_until(at_ms(1));
        assert_eq!(outcomes(&results), vec![Err(NACK_ADDRESS)]);
    }
}
