//! The CAT24C256 I²C EEPROM (32 KiB, 64-byte pages), as a part on an
//! [`I2cBus`], with its contents kept in a file between runs.
//!
//! This module owns the array, the address pointer, the page buffer and the write cycle.
//!
//! # Protocol (docs/interfaces.md §4)
//! * A write transaction carries two address bytes (high first; bit 15 is "don't care" on a
//!   32 KiB part) and then data. Data bytes go into the page buffer: only the low 6 address
//!   bits advance, so a write past the end of a 64-byte page wraps to its start.
//! * The self-timed **write cycle** starts at the STOP of a transaction that carried data and
//!   lasts [`WRITE_CYCLE`] (5 ms, the datasheet maximum). During it the part does not
//!   acknowledge its address, for reads as well as writes: ACK polling with a one-byte read
//!   (what the firmware driver does) sees NACKs until the cycle ends. An address-only write
//!   (the dummy write of a random read) starts no cycle.
//! * Reads return the byte at the pointer and advance it across pages, rolling over from
//!   0x7FFF to 0x0000. After a write the pointer rests after the last byte written (within the
//!   page, wrapped).
//! * **WP** high: data bytes are acknowledged but nothing is stored and no cycle starts.
//!
//! # Power cut
//! [`Cat24c256::cut_power_after`] arms a countdown of bytes to program. The write cycle that
//! reaches zero programs the buffered bytes in address order up to the countdown, leaves the
//! rest of the page **as it was** (our choice: a torn page keeps its old tail, the case a
//! two-slot store with checksums must survive), and the part then loses power: it answers
//! nothing until [`Cat24c256::power_on`]. The array itself is non-volatile and survives.
//!
//! # Persistence
//! [`Cat24c256::open`] loads a raw 32 KiB image (a missing file gives an erased part, all
//! 0xFF; any other size is an error) and [`Cat24c256::save`] writes it back (to a temporary
//! file first, then renamed, so a crash never leaves half an image). Saving is explicit: the
//! device calls it on shutdown or after writes in live mode.
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use firmware_core::time::{Duration, Instant};

use super::i2c::{Ack, I2cBus, I2cBusError, I2cDevice};
use crate::kernel::{Kernel, Tracer};

/// Array size in bytes.
pub const SIZE: usize = 32 * 1024;
/// Page size in bytes.
pub const PAGE: usize = 64;
/// Self-timed write cycle (tWR, datasheet maximum).
pub const WRITE_CYCLE: Duration = Duration::from_millis(5);
/// ENERGIS's address for the part (A2..A0 low).
pub const DEFAULT_ADDRESS: u8 = 0x50;

const ADDRESS_MASK: u16 = (SIZE - 1) as u16;

/// Why an EEPROM image could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum EepromFileError {
    /// Reading or writing the image file failed.
    #[error("EEPROM image {path}: {source}")]
    Io {
        /// The image file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a 32 KiB image (a different part, or not an image at all).
    #[error("EEPROM image {path} is {len} bytes, expected {SIZE}")]
    WrongSize {
        /// The image file.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// [`Cat24c256::save`] on a part made without a file.
    #[error("this EEPROM has no image file to save to")]
    NoFile,
}

/// What the part did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EepromStats {
    /// Transactions it acknowledged.
    pub transactions: u64,
    /// Address phases it did not acknowledge because a write cycle was running.
    pub busy_nacks: u64,
    /// Address phases it did not acknowledge because it had no power.
    pub unpowered_nacks: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Write cycles run.
    pub write_cycles: u64,
    /// Bytes programmed into the array.
    pub bytes_programmed: u64,
    /// Data bytes accepted while WP was high, and so never stored.
    pub protected_bytes: u64,
    /// Page-buffer writes that wrapped to the start of the page.
    pub page_wraps: u64,
    /// Power cuts that tore a write.
    pub power_cuts: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Read transaction, or nothing addressed.
    Idle,
    /// Next written byte is the high address byte.
    AddrHigh,
    /// Next written byte is the low address byte.
    AddrLow,
    /// Next written bytes are data.
    Data,
}

/// A simulated CAT24C256. Attach it to a bus with [`Cat24c256::attach`].
pub struct Cat24c256 {
    name: String,
    tracer: Tracer,
    mem: Vec<u8>,
    path: Option<PathBuf>,
    pointer: u16,
    phase: Phase,
    /// Bytes latched for the next write cycle, as (address, value), in arrival order; a
    /// byte written twice to one address keeps its last value.
    page: Vec<(u16, u8)>,
    busy_until: Instant,
    write_protect: bool,
    powered: bool,
    cut_after: Option<u64>,
    dirty: bool,
    /// Whether the current transaction's address was acknowledged.
    acked: bool,
    stats: EepromStats,
}

impl Cat24c256 {
    /// An erased part (all 0xFF) with no image file, named `name` (its trace source).
    pub fn new(kernel: &Kernel, name: &str) -> Self {
        Cat24c256 {
            name: name.to_owned(),
            tracer: kernel.tracer(),
            mem: vec![0xFF; SIZE],
            path: None,
            pointer: 0,
            phase: Phase::Idle,
            page: Vec::with_capacity(PAGE),
            busy_until: Instant::ZERO,
            write_protect: false,
            powered: true,
            cut_after: None,
            dirty: false,
            acked: false,
            stats: EepromStats::default(),
        }
    }

    /// A part whose contents live in the raw image at `path`: loaded now if the file exists
    /// (else erased), written back by [`Self::save`]
    /// (`Cat24c256::open(&k, "pdu.eeprom", state_dir.join("pdu-eeprom.bin"))?`).
    pub fn open(
        kernel: &Kernel,
        name: &str,
        path: impl Into<PathBuf>,
    ) -> Result<Self, EepromFileError> {
        let path = path.into();
        let mut part = Cat24c256::new(kernel, name);
        match std::fs::read(&path) {
            Ok(bytes) if bytes.len() == SIZE => part.mem = bytes,
            Ok(bytes) => {
                return Err(EepromFileError::WrongSize {
                    path,
                    len: bytes.len() as u64,
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(EepromFileError::Io { path, source }),
        }
        part.path = Some(path);
        Ok(part)
    }

    /// Share the part and put it on `bus` at `address`
    /// (`let eeprom = Cat24c256::new(&k, "pdu.eeprom").attach(&i2c1, 0x50)?;`).
    pub fn attach(self, bus: &I2cBus, address: u8) -> Result<Rc<RefCell<Cat24c256>>, I2cBusError> {
        let part = Rc::new(RefCell::new(self));
        bus.attach(address, part.clone())?;
        Ok(part)
    }

    /// Write the array to its image file, creating its folder if needed. Clears
    /// [`Self::is_dirty`].
    pub fn save(&mut self) -> Result<(), EepromFileError> {
        let Some(path) = self.path.clone() else {
            return Err(EepromFileError::NoFile);
        };
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let io = |source| EepromFileError::Io {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        std::fs::write(&tmp, &self.mem).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        self.dirty = false;
        Ok(())
    }

    /// The image file, if the part has one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Whether bytes were programmed since the last load or save.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// The whole array (for inspection; the bus is the firmware's way in).
    pub fn contents(&self) -> &[u8] {
        &self.mem
    }

    /// Overwrite bytes from `address` directly (a pre-programmed part in a test or scenario).
    /// Bytes past the end are ignored.
    pub fn preload(&mut self, address: u16, data: &[u8]) {
        let start = usize::from(address & ADDRESS_MASK);
        let end = (start + data.len()).min(SIZE);
        self.mem[start..end].copy_from_slice(&data[..end - start]);
        self.dirty = true;
    }

    /// Drive the WP pin: high (`true`) refuses to store writes.
    pub fn set_write_protect(&mut self, on: bool) {
        self.write_protect = on;
        self.tracer
            .record(&self.name, format!("write protect {}", on_off(on)));
    }

    /// Arm a power cut: the part programs `bytes` more bytes, then loses power in the middle
    /// of the write cycle that reaches the count (see the module docs). 0 cuts at the next
    /// write cycle before any byte is programmed.
    pub fn cut_power_after(&mut self, bytes: u64) {
        self.cut_after = Some(bytes);
        self.tracer
            .record(&self.name, format!("fault power cut after {bytes} bytes"));
    }

    /// Power the part up again after a cut (or cut it now with `false`).
    pub fn set_power(&mut self, on: bool) {
        self.powered = on;
        self.phase = Phase::Idle;
        self.page.clear();
        self.busy_until = Instant::ZERO;
        self.tracer
            .record(&self.name, format!("power {}", on_off(on)));
    }

    /// Power the part up again after a cut.
    pub fn power_on(&mut self) {
        self.set_power(true);
    }

    /// Whether the part has power.
    pub fn is_powered(&self) -> bool {
        self.powered
    }

    /// Disarm the power cut and lift WP.
    pub fn clear_faults(&mut self) {
        self.cut_after = None;
        self.write_protect = false;
        self.tracer.record(&self.name, "faults cleared");
    }

    /// Whether a write cycle is running at `now`.
    pub fn is_busy(&self, now: Instant) -> bool {
        now < self.busy_until
    }

    /// Counters.
    pub fn stats(&self) -> EepromStats {
        self.stats
    }

    /// Run the write cycle for the latched page at `now`.
    fn program(&mut self, now: Instant) {
        let mut bytes = std::mem::take(&mut self.page);
        if bytes.is_empty() {
            return;
        }
        self.stats.write_cycles += 1;
        self.busy_until = now + WRITE_CYCLE;
        bytes.sort_by_key(|(a, _)| *a);
        let mut written = 0u64;
        for &(addr, value) in &bytes {
            if let Some(left) = self.cut_after.as_mut() {
                if *left == 0 {
                    break;
                }
                *left -= 1;
            }
            self.mem[usize::from(addr)] = value;
            written += 1;
        }
        self.stats.bytes_programmed += written;
        self.tracer.record(
            &self.name,
            format!("write cycle 0x{:04x} {written} bytes", bytes[0].0),
        );
        if written > 0 {
            self.dirty = true;
        }
        if self.cut_after == Some(0) {
            self.cut_after = None;
            self.powered = false;
            self.stats.power_cuts += 1;
            self.tracer.record(
                &self.name,
                format!(
                    "power cut during the write at 0x{:04x}: {written} of {} bytes programmed",
                    bytes[0].0,
                    bytes.len()
                ),
            );
        }
        bytes.clear();
        self.page = bytes;
    }
}

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

impl I2cDevice for Cat24c256 {
    fn start(&mut self, now: Instant, _address: u8, read: bool) -> Ack {
        if !self.powered {
            self.stats.unpowered_nacks += 1;
            return Ack::Nack;
        }
        if self.is_busy(now) {
            self.stats.busy_nacks += 1;
            return Ack::Nack;
        }
        self.acked = true;
        if read {
            // A repeated START into a read after address bytes: the dummy write is over.
            self.phase = Phase::Idle;
        } else {
            self.phase = Phase::AddrHigh;
            self.page.clear();
        }
        Ack::Ack
    }

    fn write(&mut self, _now: Instant, byte: u8) -> Ack {
        match self.phase {
            Phase::Idle => return Ack::Nack,
            Phase::AddrHigh => {
                self.pointer = (u16::from(byte) << 8) & ADDRESS_MASK;
                self.phase = Phase::AddrLow;
            }
            Phase::AddrLow => {
                self.pointer = (self.pointer & 0xFF00) | u16::from(byte);
                self.phase = Phase::Data;
            }
            Phase::Data => {
                if self.write_protect {
                    self.stats.protected_bytes += 1;
                    return Ack::Ack;
                }
                let addr = self.pointer;
                match self.page.iter_mut().find(|(a, _)| *a == addr) {
                    Some(slot) => slot.1 = byte,
                    None => self.page.push((addr, byte)),
                }
                let page_base = addr & !(PAGE as u16 - 1);
                let next = page_base | ((addr + 1) & (PAGE as u16 - 1));
                if next == page_base {
                    self.stats.page_wraps += 1;
                }
                self.pointer = next;
            }
        }
        Ack::Ack
    }

    fn read(&mut self, _now: Instant) -> u8 {
        let v = self.mem[usize::from(self.pointer)];
        self.pointer = (self.pointer + 1) & ADDRESS_MASK;
        self.stats.bytes_read += 1;
        v
    }

    fn stop(&mut self, now: Instant) {
        if std::mem::take(&mut self.acked) {
            self.stats.transactions += 1;
        }
        if self.phase == Phase::Data {
            self.program(now);
        }
        self.page.clear();
        self.phase = Phase::Idle;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::TaskSpec;
    use crate::periph::i2c::FAST_MODE_HZ;
    use embedded_hal_async::i2c::{ErrorKind, I2c, NoAcknowledgeSource};
    use firmware_core::pdu::eeprom::Cat24c256 as Driver;

    const A: u8 = DEFAULT_ADDRESS;
    const NACK: ErrorKind = ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address);

    fn setup() -> (Kernel, I2cBus, Rc<RefCell<Cat24c256>>) {
        let k = Kernel::new(3);
        let bus = I2cBus::new(&k, "i2c1", FAST_MODE_HZ).expect("bus");
        let ee = Cat24c256::new(&k, "eeprom")
            .attach(&bus, A)
            .expect("attach");
        (k, bus, ee)
    }

    #[derive(Clone)]
    enum Op {
        At(u64),
        W(Vec<u8>),
        Wr(Vec<u8>, usize),
        R(usize),
    }

    /// Run `ops` on a world task; each result with the instant (µs) it completed.
    fn run(k: &mut Kernel, bus: &I2cBus, ops: Vec<Op>) -> Vec<(u64, Result<Vec<u8>, ErrorKind>)> {
        let out: Rc<RefCell<Vec<_>>> = Rc::default();
        let o = out.clone();
        let mut bus = bus.clone();
        let clock = k.clock();
        k.spawn(TaskSpec::world("ctl"), async move {
            for op in ops {
                let r = match op {
                    Op::At(us) => {
                        clock.sleep_until(Instant::from_micros(us)).await;
                        continue;
                    }
                    Op::W(d) => bus.write(A, &d).await.map(|()| vec![]),
                    Op::Wr(d, n) => {
                        let mut b = vec![0; n];
                        bus.write_read(A, &d, &mut b).await.map(|()| b)
                    }
                    Op::R(n) => {
                        let mut b = vec![0; n];
                        bus.read(A, &mut b).await.map(|()| b)
                    }
                };
                o.borrow_mut().push((clock.now().as_micros(), r));
            }
        })
        .detach();
        k.run_for(Duration::from_millis(100));
        out.take()
    }

    fn results(r: Vec<(u64, Result<Vec<u8>, ErrorKind>)>) -> Vec<Result<Vec<u8>, ErrorKind>> {
        r.into_iter().map(|(_, r)| r).collect()
    }

    #[test]
    fn a_page_write_past_the_page_end_wraps_to_the_page_start() {
        let (mut k, bus, ee) = setup();
        // 4 bytes from 0x013E: 0x013E, 0x013F, then 0x0100, 0x0101.
        run(&mut k, &bus, vec![Op::W(vec![0x01, 0x3E, 1, 2, 3, 4])]);
        let e = ee.borrow();
        assert_eq!(e.contents()[0x13E..0x140], [1, 2]);
        assert_eq!(e.contents()[0x100..0x102], [3, 4]);
        assert_eq!(e.contents()[0x140], 0xFF, "next page untouched");
        assert_eq!(e.stats().page_wraps, 1);
        assert_eq!(e.stats().bytes_programmed, 4);
    }

    #[test]
    fn the_part_nacks_reads_and_writes_during_the_5ms_write_cycle() {
        let (mut k, bus, ee) = setup();
        // Write 0x0000 ← 7: 4 bytes = 36 bits = 90 µs; the cycle runs 90..5090 µs. The part
        // answers (or not) when its address byte ends, 23 µs after a transaction starts.
        let r = run(
            &mut k,
            &bus,
            vec![
                Op::W(vec![0, 0, 7]),
                Op::R(1),
                Op::W(vec![0, 0]),
                Op::At(5_066),
                Op::R(1),
                Op::At(5_067),
                Op::Wr(vec![0, 0], 1),
            ],
        );
        assert_eq!(r[0], (90, Ok(vec![])));
        assert_eq!(r[1].1, Err(NACK));
        assert_eq!(r[2].1, Err(NACK));
        assert_eq!(r[3].1, Err(NACK));
        assert_eq!(r[4].1, Ok(vec![7]));
        let s = ee.borrow().stats();
        assert_eq!((s.transactions, s.busy_nacks, s.write_cycles), (2, 3, 1));
    }

    #[test]
    fn an_address_only_write_starts_no_write_cycle() {
        let (mut k, bus, ee) = setup();
        let r = run(&mut k, &bus, vec![Op::W(vec![0, 5]), Op::R(1)]);
        assert_eq!(results(r), vec![Ok(vec![]), Ok(vec![0xFF])]);
        assert_eq!(ee.borrow().stats().write_cycles, 0);
    }

    #[test]
    fn sequential_reads_cross_pages_and_roll_over_at_the_end() {
        let (mut k, bus, ee) = setup();
        ee.borrow_mut().preload(0x7FFE, &[0xAA, 0xBB]);
        ee.borrow_mut().preload(0x0000, &[0x11, 0x22]);
        ee.borrow_mut().preload(0x003F, &[0x33, 0x44]);
        let r = run(
            &mut k,
            &bus,
            vec![
                Op::Wr(vec![0x7F, 0xFE], 4),
                Op::Wr(vec![0x00, 0x3F], 2),
                Op::R(1),
            ],
        );
        assert_eq!(
            results(r),
            vec![
                Ok(vec![0xAA, 0xBB, 0x11, 0x22]),
                Ok(vec![0x33, 0x44]),
                Ok(vec![0xFF])
            ]
        );
    }

    #[test]
    fn the_top_address_bit_is_ignored() {
        let (mut k, bus, ee) = setup();
        ee.borrow_mut().preload(0x1234, &[0x5C]);
        let r = run(&mut k, &bus, vec![Op::Wr(vec![0x92, 0x34], 1)]);
        assert_eq!(results(r), vec![Ok(vec![0x5C])]);
    }

    #[test]
    fn write_protect_acks_but_stores_nothing() {
        let (mut k, bus, ee) = setup();
        ee.borrow_mut().set_write_protect(true);
        let r = run(
            &mut k,
            &bus,
            vec![Op::W(vec![0, 0x10, 1, 2]), Op::Wr(vec![0, 0x10], 2)],
        );
        assert_eq!(results(r), vec![Ok(vec![]), Ok(vec![0xFF, 0xFF])]);
        let s = ee.borrow().stats();
        assert_eq!((s.protected_bytes, s.write_cycles), (2, 0));
    }

    #[test]
    fn a_power_cut_programs_exactly_n_bytes_then_the_part_goes_silent() {
        let (mut k, bus, ee) = setup();
        ee.borrow_mut().preload(0x0200, &[0x00; 8]);
        ee.borrow_mut().cut_power_after(3);
        let r = run(
            &mut k,
            &bus,
            vec![
                Op::W(vec![0x02, 0x00, 1, 2, 3, 4, 5]),
                Op::At(20_000),
                Op::R(1),
            ],
        );
        assert_eq!(r[1].1, Err(NACK));
        {
            let e = ee.borrow();
            assert_eq!(e.contents()[0x200..0x208], [1, 2, 3, 0, 0, 0, 0, 0]);
            assert!(!e.is_powered());
            assert_eq!(e.stats().power_cuts, 1);
        }
        ee.borrow_mut().power_on();
        let r = run(&mut k, &bus, vec![Op::Wr(vec![0x02, 0x00], 4)]);
        assert_eq!(results(r), vec![Ok(vec![1, 2, 3, 0])]);
    }

    #[test]
    fn a_power_cut_counts_bytes_across_writes() {
        let (mut k, bus, ee) = setup();
        ee.borrow_mut().cut_power_after(5);
        run(
            &mut k,
            &bus,
            vec![
                Op::W(vec![0, 0, 1, 2, 3]),
                Op::At(10_000),
                Op::W(vec![0, 0x40, 4, 5, 6]),
            ],
        );
        let e = ee.borrow();
        assert_eq!(e.contents()[0..3], [1, 2, 3]);
        assert_eq!(e.contents()[0x40..0x43], [4, 5, 0xFF]);
        assert!(!e.is_powered());
    }

    #[test]
    fn the_image_survives_a_save_and_reopen() {
        // CARGO_TARGET_TMPDIR exists only for integration tests; a per-process folder under the
        // system temp dir keeps parallel runs apart.
        let dir = std::env::temp_dir().join(format!("twinbench-eeprom-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join("pdu.bin");
        let k = Kernel::new(0);
        let mut a = Cat24c256::open(&k, "eeprom", &path).expect("missing file = erased");
        assert!(a.contents().iter().all(|b| *b == 0xFF));
        a.preload(0x7FFE, &[0xA5, 0x5A]);
        assert!(a.is_dirty());
        a.save().expect("save");
        assert!(!a.is_dirty());
        let b = Cat24c256::open(&k, "eeprom", &path).expect("reopen");
        assert_eq!(b.contents()[0x7FFE..], [0xA5, 0x5A]);
        assert_eq!(b.contents(), a.contents());

        std::fs::write(&path, [0u8; 100]).expect("write");
        let e = Cat24c256::open(&k, "eeprom", &path).err();
        assert!(
            matches!(e, Some(EepromFileError::WrongSize { len: 100, .. })),
            "{e:?}"
        );
        let mut none = Cat24c256::new(&k, "eeprom");
        assert!(matches!(none.save(), Err(EepromFileError::NoFile)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_firmware_driver_writes_and_reads_back_across_pages_with_ack_polling() {
        let (mut k, bus, ee) = setup();
        let clock = k.clock();
        type Done = Option<(Vec<u8>, u32)>;
        let done: Rc<RefCell<Done>> = Rc::default();
        let d = done.clone();
        let data: Vec<u8> = (0..100u8).collect();
        let expect = data.clone();
        k.spawn(TaskSpec::world("storage"), async move {
            let mut drv = Driver::new(bus, clock, A);
            if drv.write(0x0030, &data).await.is_err() {
                return;
            }
            let mut back = vec![0; data.len()];
            if drv.read(0x0030, &mut back).await.is_err() {
                return;
            }
            *d.borrow_mut() = Some((back, drv.stats().busy_polls));
        })
        .detach();
        k.run_for(Duration::from_millis(100));
        let (back, busy_polls) = done.take().expect("driver finished");
        assert_eq!(back, expect);
        // Three chunks (16 + 64 + 20 bytes), each waited out by polling.
        assert_eq!(ee.borrow().stats().write_cycles, 3);
        assert!(busy_polls >= 3 * 19, "{busy_polls} busy polls");
    }

    /// Run the firmware's StorageTask core on `bus`: load, then save `saves` configurations
    /// (ignoring errors); returns what load found.
    fn storage_run(
        k: &mut Kernel,
        bus: &I2cBus,
        saves: Vec<firmware_core::pdu::config::PduConfig>,
    ) -> firmware_core::pdu::storage::Loaded {
        use firmware_core::pdu::storage::Storage;
        let out = Rc::new(RefCell::new(None));
        let o = out.clone();
        let (bus, clock) = (bus.clone(), k.clock());
        k.spawn(TaskSpec::world("storage"), async move {
            let mut storage = Storage::new(Driver::new(bus, clock, A));
            let loaded = storage.load().await;
            for c in &saves {
                let _ = storage.save(c).await;
            }
            *o.borrow_mut() = Some(loaded);
        })
        .detach();
        k.run_for(Duration::from_secs(2));
        out.take().expect("storage finished")
    }

    #[test]
    fn a_power_cut_in_a_save_keeps_the_previous_configuration_across_a_restart() {
        use firmware_core::pdu::config::PduConfig;
        use firmware_core::pdu::storage::{LoadSource, Slot};
        let dir = std::env::temp_dir().join(format!("twinbench-storage-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join("pdu.bin");
        let _ = std::fs::remove_file(&path);
        let first = PduConfig::default();
        let mut second = PduConfig::default();
        second.network.ip = [10, 0, 0, 7];

        let mut k = Kernel::new(4);
        let bus = I2cBus::new(&k, "i2c1", FAST_MODE_HZ).expect("bus");
        let ee = Cat24c256::open(&k, "eeprom", &path)
            .expect("open")
            .attach(&bus, A)
            .expect("attach");
        // Save 1 goes whole to slot A; save 2 (slot B) is cut 100 bytes in.
        let fresh = storage_run(&mut k, &bus, vec![first.clone()]);
        assert!(matches!(fresh.source, LoadSource::Defaults(_)));
        ee.borrow_mut().cut_power_after(100);
        storage_run(&mut k, &bus, vec![second]);
        assert!(!ee.borrow().is_powered());
        ee.borrow_mut().save().expect("save image");

        // Next run: the part comes back from its file.
        let mut k = Kernel::new(4);
        let bus = I2cBus::new(&k, "i2c1", FAST_MODE_HZ).expect("bus");
        Cat24c256::open(&k, "eeprom", &path)
            .expect("reopen")
            .attach(&bus, A)
            .expect("attach");
        let loaded = storage_run(&mut k, &bus, vec![]);
        assert_eq!(loaded.config, first);
        assert!(
            matches!(
                loaded.source,
                LoadSource::Stored {
                    slot: Slot::A,
                    seq: 1,
                    ..
                }
            ),
            "{:?}",
            loaded.source
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
