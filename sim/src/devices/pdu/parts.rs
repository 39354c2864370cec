//! The PDU's simulated parts, wired as on the ENERGIS board (docs/interfaces.md §5.1), from
//! `sim::periph`: the three MCP23017 expanders, the relays behind the relay expander's port A
//! (10 ms settle), the panel LEDs, the bouncing buttons, the CAT24C256 EEPROM and the bank of
//! eight HLW8032 behind the 74HC4051 mux (mains reaches a meter only through its relay contact).
use std::cell::RefCell;
use std::rc::Rc;

use crate::kernel::Kernel;
use crate::periph::eeprom::Cat24c256;
use crate::periph::hlw8032::{BankWiring, Hlw8032Bank};
use crate::periph::i2c::I2cBus;
use crate::periph::mcp23017::{Mcp23017, Port};
use crate::periph::panel::{Buttons, Leds, RELAY_SETTLE, Relays};
use crate::periph::uart::UartPort;

/// Shared handles on the parts, for the device, its actions and its states.
pub struct Parts {
    /// Relay expander 0x20 on I2C1 (relays on port A, meter mux on port B).
    pub relay: Rc<RefCell<Mcp23017>>,
    /// Display expander 0x21 on I2C0 (channel LEDs, FAULT/ETH/PWR).
    pub display: Rc<RefCell<Mcp23017>>,
    /// Selection expander 0x23 on I2C0.
    pub selection: Rc<RefCell<Mcp23017>>,
    /// The eight relays.
    pub relays: Relays,
    /// The panel LEDs.
    pub leds: Leds,
    /// The four buttons.
    pub buttons: Buttons,
    /// The EEPROM 0x50 on I2C1.
    pub eeprom: Rc<RefCell<Cat24c256>>,
    /// The meters.
    pub meters: Hlw8032Bank,
}

impl Parts {
    /// Build every part, put them on their buses and start their world tasks. `meter_port` is
    /// the chips' end of UART0.
    pub fn build(
        kernel: &mut Kernel,
        name: &str,
        i2c0: &I2cBus,
        i2c1: &I2cBus,
        meter_port: UartPort,
        eeprom: Cat24c256,
    ) -> Result<Parts, String> {
        let e = |e: crate::periph::i2c::I2cBusError| e.to_string();
        let relay = Mcp23017::new(kernel, &format!("{name}.mcp20"))
            .attach(i2c1, 0x20)
            .map_err(e)?;
        let display = Mcp23017::new(kernel, &format!("{name}.mcp21"))
            .attach(i2c0, 0x21)
            .map_err(e)?;
        let selection = Mcp23017::new(kernel, &format!("{name}.mcp23"))
            .attach(i2c0, 0x23)
            .map_err(e)?;
        let eeprom = eeprom.attach(i2c1, 0x50).map_err(e)?;
        // The meter mux on port B bits 0-3 switches 25 times a second: keep it out of the trace.
        relay.borrow_mut().set_trace_mask(0xF0FF);
        let relays = Relays::new(kernel, &format!("{name}.relays"), RELAY_SETTLE);
        relays.wire(&mut relay.borrow_mut(), Port::A);
        relays.spawn(kernel).detach();
        let leds = Leds::attach(
            kernel,
            &format!("{name}.leds"),
            &mut display.borrow_mut(),
            &mut selection.borrow_mut(),
        );
        let buttons = Buttons::new(kernel, &format!("{name}.buttons"));
        let meters = Hlw8032Bank::new(
            kernel,
            &format!("{name}.hlw"),
            BankWiring::with_relays(relay.borrow().pins(), relays.clone()),
        );
        meters.spawn(kernel, meter_port).detach();
        Ok(Parts {
            relay,
            display,
            selection,
            relays,
            leds,
            buttons,
            eeprom,
            meters,
        })
    }
}
