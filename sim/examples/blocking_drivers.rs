//! Point blocking drivers from crates.io at the simulated ENERGIS parts.
//!
//! `port-expander` switches relays on the simulated MCP23017 and `eeprom24x` stores a record in
//! the simulated CAT24C256, on one 400 kHz I2C bus, while a firmware-style task keeps running on
//! the same kernel. The drivers are the crates' own, unchanged: `sim::periph::blocking` gives
//! them `embedded_hal::i2c::I2c` and `DelayNs` that run the kernel while they wait.
//!
//! ```sh
//! cargo run -p sim --example blocking_drivers
//! ```
use std::cell::Cell;
use std::rc::Rc;

use embedded_storage::{ReadStorage as _, Storage as _};
use firmware_core::time::Duration;
use sim::kernel::{Kernel, TaskSpec};
use sim::periph::blocking::BlockingKernel;
use sim::periph::eeprom::{self, Cat24c256};
use sim::periph::i2c::{FAST_MODE_HZ, I2cBus};
use sim::periph::mcp23017::Mcp23017;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut kernel = Kernel::new(1);
    let bus = I2cBus::new(&kernel, "i2c1", FAST_MODE_HZ)?;
    let relays = Mcp23017::new(&kernel, "relays").attach(&bus, 0x20)?;
    let memory = Cat24c256::new(&kernel, "eeprom").attach(&bus, eeprom::DEFAULT_ADDRESS)?;
    // Something else living on the kernel: it keeps running while the drivers wait.
    let heartbeats = Rc::new(Cell::new(0u32));
    let (beats, clock) = (heartbeats.clone(), kernel.clock());
    kernel
        .spawn(TaskSpec::world("heartbeat"), async move {
            loop {
                clock.sleep(Duration::from_millis(1)).await;
                beats.set(beats.get() + 1);
            }
        })
        .detach();

    let sim = BlockingKernel::new(kernel);
    let mut expander =
        port_expander::Mcp23x17::new_mcp23017(sim.wrap(bus.clone()), false, false, false);
    let pins = expander.split();
    let mut relay1 = pins.gpa0.into_output().map_err(|e| format!("{e:?}"))?;
    let mut relay3 = pins.gpa2.into_output().map_err(|e| format!("{e:?}"))?;
    relay1.set_high().map_err(|e| format!("{e:?}"))?;
    relay3.set_high().map_err(|e| format!("{e:?}"))?;
    println!(
        "relay pins after port-expander: {:#06x} at {}",
        relays.borrow().pin_levels(),
        sim.kernel().now()
    );

    let driver =
        eeprom24x::Eeprom24x::new_24x256(sim.wrap(bus.clone()), eeprom24x::SlaveAddr::default());
    let mut storage = eeprom24x::Storage::new(driver, sim.delay());
    let record = b"relay_state=0x05;restore_on_boot=1";
    storage
        .write(0x02F0, record)
        .map_err(|e| format!("{e:?}"))?;
    let mut back = vec![0u8; record.len()];
    storage
        .read(0x02F0, &mut back)
        .map_err(|e| format!("{e:?}"))?;
    println!(
        "eeprom24x wrote and read back {:?} at {}; the part holds {:?}",
        String::from_utf8_lossy(&back),
        sim.kernel().now(),
        String::from_utf8_lossy(&memory.borrow().contents()[0x02F0..0x02F0 + record.len()]),
    );
    println!(
        "the heartbeat task ran {} times meanwhile; bus: {:?}",
        heartbeats.get(),
        bus.all_stats()
    );
    Ok(())
}
