//! `demo.i2c`: a task polls a temperature-sensor-like part over a simulated I2C bus.
//!
//! The part at `address` answers a register-pointer write followed by a two-byte read (a new
//! reading each time). The poller traces `read ok value=N` and `read failed: <error>`; the
//! bus's fault knobs make the part NACK or the bus stick.
use std::cell::{Cell, RefCell};
use std::rc::Rc;

use embedded_hal_async::i2c::I2c;
use firmware_core::time::{Duration, Instant};
use serde::Deserialize;

use crate::devices::{Device, DeviceSpec, StateValue, from_table, serde_duration};
use crate::kernel::{Kernel, TaskSpec};
use crate::periph::i2c::{Ack, FAST_MODE_HZ, I2cBus, I2cDevice};

/// The `demo.i2c` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct I2cDemoSpec {
    /// 7-bit address of the sensor.
    #[serde(default = "default_address")]
    address: u8,
    #[serde(with = "serde_duration")]
    period: Duration,
}

fn default_address() -> u8 {
    0x48
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Nack {
    #[serde(default)]
    count: Option<u32>,
    #[serde(default, with = "opt_duration")]
    r#for: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stuck {
    #[serde(with = "serde_duration")]
    r#for: Duration,
}

mod opt_duration {
    use firmware_core::time::Duration;
    use serde::Deserializer;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        crate::devices::serde_duration::deserialize(d).map(Some)
    }
}

impl Nack {
    fn check(&self) -> Result<(), String> {
        match (self.count, self.r#for) {
            (Some(_), None) | (None, Some(_)) => Ok(()),
            _ => Err("nack needs exactly one of `count` or `for`".to_owned()),
        }
    }
}

impl I2cDemoSpec {
    /// Parse and check a `demo.i2c` table.
    pub fn parse(table: &toml::Table) -> Result<Self, String> {
        let spec: I2cDemoSpec = from_table(table)?;
        if spec.address > 0x7F {
            return Err(format!(
                "address {:#x} is not a 7-bit address",
                spec.address
            ));
        }
        if spec.period == Duration::ZERO {
            return Err("period must be above zero".to_owned());
        }
        Ok(spec)
    }
}

/// The sensor: a register pointer and a reading that advances on every read transaction.
#[derive(Default)]
struct Sensor {
    pointer: u8,
    reading: u16,
    next_byte: u8,
}

impl I2cDevice for Sensor {
    fn start(&mut self, _now: Instant, _address: u8, read: bool) -> Ack {
        if read {
            self.reading = self.reading.wrapping_add(1);
            self.next_byte = 0;
        }
        Ack::Ack
    }
    fn write(&mut self, _now: Instant, byte: u8) -> Ack {
        self.pointer = byte;
        Ack::Ack
    }
    fn read(&mut self, _now: Instant) -> u8 {
        let [hi, lo] = self.reading.to_be_bytes();
        let b = if self.next_byte == 0 { hi } else { lo };
        self.next_byte = self.next_byte.wrapping_add(1);
        b
    }
    fn stop(&mut self, _now: Instant) {}
}

#[derive(Default)]
struct Counters {
    ok: Cell<u64>,
    failed: Cell<u64>,
    value: Cell<u16>,
}

impl DeviceSpec for I2cDemoSpec {
    fn check_action(&self, verb: &str, params: &toml::Table) -> Result<(), String> {
        match verb {
            "nack" => from_table::<Nack>(params)?.check(),
            "stuck" => from_table::<Stuck>(params).map(|_| ()),
            other => Err(format!(
                "demo.i2c has no action `{other}` (actions: nack, stuck)"
            )),
        }
    }

    fn check_state(&self, key: &str) -> Result<(), String> {
        match key {
            "reads.ok" | "reads.failed" | "value" | "bus.nacks" => Ok(()),
            other => Err(format!(
                "no state `{other}` (states: reads.ok, reads.failed, value, bus.nacks)"
            )),
        }
    }

    fn build(&self, name: &str, kernel: &mut Kernel) -> Box<dyn Device> {
        let counters = Rc::new(Counters::default());
        let bus = I2cBus::new(kernel, &format!("{name}.i2c"), FAST_MODE_HZ).ok();
        if let Some(bus) = &bus {
            let sensor: Rc<RefCell<dyn I2cDevice>> = Rc::new(RefCell::new(Sensor::default()));
            let _ = bus.attach(self.address, sensor);
            let core = kernel.add_core(format!("{name}.mcu"));
            let (clock, tracer) = (kernel.clock(), kernel.tracer());
            let (mut i2c, c, period, address) =
                (bus.clone(), counters.clone(), self.period, self.address);
            let source = format!("{name}.poller");
            kernel
                .spawn(
                    TaskSpec::on_core(format!("{name}.poller"), core, 1, Duration::from_micros(10)),
                    async move {
                        let mut due = Instant::ZERO;
                        loop {
                            due += period;
                            clock.sleep_until(due).await;
                            let mut buf = [0u8; 2];
                            match i2c.write_read(address, &[0x00], &mut buf).await {
                                Ok(()) => {
                                    let v = u16::from_be_bytes(buf);
                                    c.ok.set(c.ok.get() + 1);
                                    c.value.set(v);
                                    tracer.record(&source, format!("read ok value={v}"));
                                }
                                Err(e) => {
                                    c.failed.set(c.failed.get() + 1);
                                    tracer.record(&source, format!("read failed: {e:?}"));
                                }
                            }
                        }
                    },
                )
                .detach();
        }
        Box::new(I2cDemo {
            bus,
            address: self.address,
            counters,
        })
    }
}

struct I2cDemo {
    bus: Option<I2cBus>,
    address: u8,
    counters: Rc<Counters>,
}

impl Device for I2cDemo {
    fn act(&mut self, verb: &str, params: &toml::Table) -> Result<(), String> {
        let bus = self.bus.as_ref().ok_or("the bus could not be built")?;
        match verb {
            "nack" => {
                let a: Nack = from_table(params)?;
                match (a.count, a.r#for) {
                    (Some(n), _) => bus.nack_next(self.address, n),
                    (None, Some(d)) => bus.nack_for(self.address, d),
                    (None, None) => return Err("nack needs `count` or `for`".to_owned()),
                }
            }
            "stuck" => bus.stick_for(from_table::<Stuck>(params)?.r#for),
            other => return Err(format!("no action `{other}`")),
        }
        Ok(())
    }

    fn state(&self, key: &str) -> Option<StateValue> {
        let c = &self.counters;
        let n = |v: u64| Some(StateValue::Int(v as i64));
        match key {
            "reads.ok" => n(c.ok.get()),
            "reads.failed" => n(c.failed.get()),
            "value" => n(u64::from(c.value.get())),
            "bus.nacks" => n(self.bus.as_ref()?.stats(self.address).nacks),
            _ => None,
        }
    }
}
