//! Devices a scenario can place: the two twins (added by later issues) and the kernel
//! demonstrations. A device kind is a [`DeviceSpec`] parsed from its scenario table, checked
//! before anything runs, then built into a running [`Device`] on a kernel.
pub mod demo;
pub mod pdu;
pub mod pump;

use std::fmt;

use crate::kernel::Kernel;

/// A value a device reports for a state key (`state = "board.led"` in a scenario).
#[derive(Debug, Clone, PartialEq)]
pub enum StateValue {
    /// On/off, true/false.
    Bool(bool),
    /// A count or an integer reading.
    Int(i64),
    /// A measurement.
    Float(f64),
    /// Anything else.
    Text(String),
}

impl StateValue {
    /// The numeric value, if it has one.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            StateValue::Int(v) => Some(*v as f64),
            StateValue::Float(v) => Some(*v),
            StateValue::Bool(b) => Some(f64::from(u8::from(*b))),
            StateValue::Text(_) => None,
        }
    }

    /// Whether it equals a value written in a scenario file.
    pub fn matches(&self, expected: &toml::Value) -> bool {
        match (self, expected) {
            (StateValue::Bool(a), toml::Value::Boolean(b)) => a == b,
            (StateValue::Text(a), toml::Value::String(b)) => a == b,
            (StateValue::Bool(a), toml::Value::String(b)) => {
                (b.eq_ignore_ascii_case("on") && *a) || (b.eq_ignore_ascii_case("off") && !*a)
            }
            (v, toml::Value::Integer(b)) => v.as_f64() == Some(*b as f64),
            (v, toml::Value::Float(b)) => v.as_f64().is_some_and(|a| (a - b).abs() < 1e-9),
            _ => false,
        }
    }
}

impl fmt::Display for StateValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateValue::Bool(v) => write!(f, "{v}"),
            StateValue::Int(v) => write!(f, "{v}"),
            StateValue::Float(v) => write!(f, "{v}"),
            StateValue::Text(v) => write!(f, "{v:?}"),
        }
    }
}

/// A device kind's checked configuration. Everything a scenario file says about the device is
/// validated here, before any test runs.
pub trait DeviceSpec {
    /// Check that `verb` with `params` is an action this device understands.
    fn check_action(&self, verb: &str, params: &toml::Table) -> Result<(), String>;
    /// Check that `key` names a state this device reports.
    fn check_state(&self, key: &str) -> Result<(), String>;
    /// Create the device on `kernel`, spawning its tasks. `name` prefixes its trace sources
    /// and metrics.
    fn build(&self, name: &str, kernel: &mut Kernel) -> Box<dyn Device>;
}

/// A running device.
pub trait Device {
    /// Perform a scenario action (already checked by [`DeviceSpec::check_action`]).
    fn act(&mut self, verb: &str, params: &toml::Table) -> Result<(), String>;
    /// Read a state key (already checked by [`DeviceSpec::check_state`]).
    fn state(&self, key: &str) -> Option<StateValue>;
}

/// Every device kind, for error messages.
pub const KINDS: &[&str] = &["demo.cores", "demo.i2c", "demo.uart", "pdu", "pump"];

/// Parse a device table of kind `kind`.
pub fn parse_spec(kind: &str, table: &toml::Table) -> Result<Box<dyn DeviceSpec>, String> {
    match kind {
        "demo.cores" => Ok(Box::new(demo::CoresSpec::parse(table)?)),
        "demo.i2c" => Ok(Box::new(demo::I2cDemoSpec::parse(table)?)),
        "demo.uart" => Ok(Box::new(demo::UartDemoSpec::parse(table)?)),
        "pdu" => Ok(Box::new(pdu::PduSpec::parse(table)?)),
        "pump" => Ok(Box::new(pump::PumpSpec::parse(table)?)),
        other => Err(format!(
            "unknown device kind `{other}` (known: {})",
            KINDS.join(", ")
        )),
    }
}

/// Deserialize a device's or an action's table into `T`, with serde's message on failure.
pub fn from_table<T: serde::de::DeserializeOwned>(table: &toml::Table) -> Result<T, String> {
    toml::Value::Table(table.clone())
        .try_into()
        .map_err(|e: toml::de::Error| e.message().to_owned())
}

/// A `serde` adapter for durations written as strings (`"1.5s"`).
pub mod serde_duration {
    use firmware_core::time::Duration;
    use serde::{Deserialize, Deserializer};

    /// Deserialize `"250us"`-style text.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        crate::scenario::duration::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}
