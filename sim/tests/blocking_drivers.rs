//! Blocking drivers from crates.io, unchanged, against the simulated parts: `port-expander`'s
//! MCP23017 driver on `sim::periph::mcp23017` and `eeprom24x` on `sim::periph::eeprom`, both on
//! one simulated I2C bus, through `sim::periph::blocking`.
use embedded_storage::{ReadStorage as _, Storage as _};
use firmware_core::time::Instant;
use sim::kernel::Kernel;
use sim::periph::blocking::{BlockingError, BlockingKernel};
use sim::periph::eeprom::{self, Cat24c256};
use sim::periph::i2c::{FAST_MODE_HZ, I2cBus};
use sim::periph::mcp23017::{Mcp23017, Port, Register};

struct Bench {
    sim: BlockingKernel,
    bus: I2cBus,
    expander: std::rc::Rc<std::cell::RefCell<Mcp23017>>,
    memory: std::rc::Rc<std::cell::RefCell<Cat24c256>>,
}

/// ENERGIS's relay bus: the MCP23017 at 0x20 and the CAT24C256 at 0x50, at 400 kHz.
fn bench() -> Bench {
    let kernel = Kernel::new(7);
    let bus = I2cBus::new(&kernel, "i2c1", FAST_MODE_HZ).expect("bus");
    let expander = Mcp23017::new(&kernel, "mcp")
        .attach(&bus, 0x20)
        .expect("attach");
    let memory = Cat24c256::new(&kernel, "eeprom")
        .attach(&bus, eeprom::DEFAULT_ADDRESS)
        .expect("attach");
    Bench {
        sim: BlockingKernel::new(kernel),
        bus,
        expander,
        memory,
    }
}

#[test]
fn port_expander_drives_and_reads_the_simulated_mcp23017() {
    let b = bench();
    let mut mcp =
        port_expander::Mcp23x17::new_mcp23017(b.sim.wrap(b.bus.clone()), false, false, false);
    let pins = mcp.split();
    let mut relay1 = pins.gpa0.into_output().expect("gpa0 as output");
    let mut relay8 = pins.gpa7.into_output().expect("gpa7 as output");
    let mut button = pins.gpb3.into_input().expect("gpb3 as input");
    button.enable_pull_up(true).expect("pull-up");

    relay1.set_high().expect("set");
    relay8.set_high().expect("set");
    let part = b.expander.borrow();
    assert_eq!(part.register(Register::Iodir, Port::A), 0x7E);
    assert_eq!(part.register(Register::Olat, Port::A), 0x81);
    assert_eq!(part.pin_levels() & 0x00FF, 0x81);
    drop(part);
    relay8.set_low().expect("clear");
    assert_eq!(b.expander.borrow().pin_levels() & 0x00FF, 0x01);

    // The input reads what the board drives, through the part's GPIO register.
    assert!(button.is_high().expect("read"), "pull-up, nothing driving");
    b.expander.borrow_mut().set_input(11, Some(false));
    assert!(button.is_low().expect("read"));
    assert!(b.expander.borrow().stats().transactions > 8);
    // Every transaction took its time on the bus.
    assert!(b.sim.kernel().now() > Instant::ZERO);
}

#[test]
fn eeprom24x_storage_writes_across_pages_and_waits_out_each_write_cycle() {
    let b = bench();
    let driver = eeprom24x::Eeprom24x::new_24x256(
        b.sim.wrap(b.bus.clone()),
        eeprom24x::SlaveAddr::default(),
    );
    let mut storage = eeprom24x::Storage::new(driver, b.sim.delay());
    let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
    // From 0x0130: 16 bytes to the page end, then four full pages, then 28 bytes.
    storage.write(0x0130, &data).expect("storage write");
    assert_eq!(
        &b.memory.borrow().contents()[0x0130..0x0130 + 300],
        &data[..]
    );
    // Six page writes of address + 2 pointer bytes + 16, 64, 64, 64, 64 and 28 data bytes at
    // 9 bits a byte and 400 kHz (428 + 4 × 1508 + 698 µs), each followed by the driver's 5 ms.
    assert_eq!(
        b.sim.kernel().now(),
        Instant::from_micros(428 + 4 * 1508 + 698 + 6 * 5_000)
    );
    let mut back = vec![0u8; 300];
    storage.read(0x0130, &mut back).expect("storage read");
    assert_eq!(back, data);
}

#[test]
fn eeprom24x_without_a_delay_meets_the_write_cycle_nack() {
    let b = bench();
    let mut driver = eeprom24x::Eeprom24x::new_24x256(
        b.sim.wrap(b.bus.clone()),
        eeprom24x::SlaveAddr::default(),
    );
    driver.write_byte(0x0042, 0x5A).expect("write");
    // The part is programming for 5 ms and does not acknowledge its address.
    match driver.read_byte(0x0042) {
        Err(eeprom24x::Error::I2C(BlockingError::Inner(
            embedded_hal::i2c::ErrorKind::NoAcknowledge(_),
        ))) => {}
        other => panic!("expected a NACK during the write cycle, got {other:?}"),
    }
    embedded_hal::delay::DelayNs::delay_ms(&mut b.sim.delay(), 5);
    assert_eq!(driver.read_byte(0x0042).expect("read"), 0x5A);
}

#[test]
fn both_drivers_share_the_bus_and_the_kernel() {
    let b = bench();
    let mut mcp =
        port_expander::Mcp23x17::new_mcp23017(b.sim.wrap(b.bus.clone()), false, false, false);
    let pins = mcp.split();
    let mut led = pins.gpa2.into_output().expect("output");
    let mut storage = eeprom24x::Storage::new(
        eeprom24x::Eeprom24x::new_24x256(
            b.sim.wrap(b.bus.clone()),
            eeprom24x::SlaveAddr::default(),
        ),
        b.sim.delay(),
    );
    for round in 0u8..4 {
        led.toggle().expect("toggle");
        storage
            .write(u32::from(round) * 64, &[round; 64])
            .expect("write");
    }
    assert_eq!(b.expander.borrow().pin_levels() & 0x04, 0);
    let contents = b.memory.borrow().contents()[..256].to_vec();
    assert!(
        contents
            .chunks(64)
            .enumerate()
            .all(|(i, c)| c.iter().all(|&x| x == i as u8))
    );
    let mcp_stats = b.bus.stats(0x20);
    let eeprom_stats = b.bus.stats(eeprom::DEFAULT_ADDRESS);
    assert_eq!(
        eeprom_stats.nacks, 0,
        "the storage driver's delays cover every write cycle"
    );
    assert!(mcp_stats.transactions >= 6 && eeprom_stats.transactions == 4);
}
