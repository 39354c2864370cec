//! Device A: the peristaltic pump controller (ESP32 + FluidNC).
//!
//! Four pumps are FluidNC axes X, Y, Z, A. Pump control sets the [`governor::Governor`]'s
//! priority; every network task reads it and throttles itself. This module holds the vocabulary
//! the pump tasks share; each task lives in its own submodule.

pub mod arch;
pub mod command;
pub mod dispense;
pub mod estop;
pub mod events;
pub mod fluidnc;
pub mod governor;
pub mod identity;
pub mod link;
pub mod outbox;
pub mod radio;
pub mod stats;
pub mod status;
#[cfg(test)]
mod test_support;
pub mod web;
pub mod websocket;
pub mod ws;

use core::fmt;

pub use governor::{Governor, Priority};

/// Number of pumps.
pub const PUMPS: usize = 4;

/// One of the four pumps, named after its FluidNC axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(serde::Serialize, serde::Deserialize)]
pub enum Pump {
    /// Pump 1, axis X.
    X,
    /// Pump 2, axis Y.
    Y,
    /// Pump 3, axis Z.
    Z,
    /// Pump 4, axis A.
    A,
}

impl Pump {
    /// All pumps in axis order.
    pub const ALL: [Pump; PUMPS] = [Pump::X, Pump::Y, Pump::Z, Pump::A];

    /// 0-based index in axis order.
    pub const fn index(self) -> usize {
        self as usize
    }
    /// The pump at `i` (0..4).
    pub const fn from_index(i: usize) -> Option<Pump> {
        match i {
            0 => Some(Pump::X),
            1 => Some(Pump::Y),
            2 => Some(Pump::Z),
            3 => Some(Pump::A),
            _ => None,
        }
    }
    /// The G-code axis letter.
    pub const fn axis(self) -> char {
        match self {
            Pump::X => 'X',
            Pump::Y => 'Y',
            Pump::Z => 'Z',
            Pump::A => 'A',
        }
    }
    /// The pump for an axis letter (either case), as used in commands (`"pump": "X"`).
    pub fn from_axis(c: char) -> Option<Pump> {
        match c.to_ascii_uppercase() {
            'X' => Some(Pump::X),
            'Y' => Some(Pump::Y),
            'Z' => Some(Pump::Z),
            'A' => Some(Pump::A),
            _ => None,
        }
    }
}

impl fmt::Display for Pump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.axis())
    }
}

/// A dose: `volume_ml` at `flow_ml_min` through `pump`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(serde::Serialize, serde::Deserialize)]
pub struct DispenseRequest {
    /// Which pump.
    pub pump: Pump,
    /// Volume, millilitres (> 0).
    pub volume_ml: f32,
    /// Flow, millilitres per minute (> 0).
    pub flow_ml_min: f32,
}

/// What the status publisher and the UI show per pump.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(serde::Serialize, serde::Deserialize)]
pub struct PumpStatus {
    /// Machine position of the axis, mm.
    pub position_mm: f32,
    /// The pump is moving.
    pub active: bool,
    /// Millilitres dispensed since boot.
    pub dispensed_ml: f32,
}
