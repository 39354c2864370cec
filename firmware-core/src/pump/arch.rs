//! The three architecture options of the pump controller, as configuration of one code base.
//!
//! The twin runs all three for comparison (`docs/architecture-comparison.md`). What an option
//! changes on the network side is gathered in [`NetPolicy`]; the rest of the network code reads
//! only that, so the three options are the same tasks with different settings, not three
//! implementations:
//!
//! | | option 1 | option 2 (production) | option 3 |
//! |---|---|---|---|
//! | MCUs | one, dual core | one, dual core | pump MCU (no WiFi) + WiFi MCU |
//! | network runs on | the pump MCU, core 0 | the pump MCU, core 0 | the WiFi MCU |
//! | MQTT drain while DISPENSING | IDLE rate (10 / 10 ms) | 1 / 100 ms | IDLE rate |
//! | MQTT drain in EMERGENCY | everything, IDLE rate | emergency lane only | emergency lane only |
//! | priority comes from | (ignored) | the local [`Governor`](super::Governor) | the serial link |
//!
//! Option 1 is "no priority management": the network tasks ignore the governor for rates, so
//! they compete with pump control for the CPU during a dispense. The emergency lane still goes
//! first because it is how the outbox is built, not a governor decision. In option 3 the pump
//! MCU has no network at all; the WiFi MCU learns the priority and pump status over the framed
//! serial link (`pump::link`), and since dispensing no longer shares a CPU with WiFi, it need
//! not throttle while dispensing; it still keeps the broker channel for alarms in an emergency.
//!
//! The status and WebSocket cadences (30 s / 5 s / 1 s, 1 / 5 / 10 Hz) follow the pump's real
//! priority in every option: they are what the user sees, not throttling.
use core::fmt;

use super::Priority;

/// One of the pump controller's three architectures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(serde::Serialize, serde::Deserialize)]
pub enum ArchOption {
    /// Dual core, no priority management: network at full rate during dispensing.
    Option1,
    /// Dual core with the priority governor (the production design).
    #[default]
    Option2,
    /// Two MCUs: the pump MCU without WiFi, a WiFi MCU for MQTT/WebSocket, a serial link between.
    Option3,
}

/// Where the network tasks learn the system priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PrioritySource {
    /// The governor on the same MCU.
    LocalGovernor,
    /// Status frames from the pump MCU over the serial link; the WiFi MCU mirrors them into its
    /// own governor.
    SerialLink,
}

/// What an [`ArchOption`] means for the network side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct NetPolicy {
    /// MQTT/WebSocket/REST run on the pump MCU (options 1 and 2). When `false` the pump MCU
    /// starts no network task and only writes the serial link.
    pub network_on_pump_mcu: bool,
    /// The MQTT drain slows to 1 message per 100 ms while dispensing.
    pub throttle_while_dispensing: bool,
    /// In EMERGENCY only the emergency lane is drained.
    pub emergency_lane_only_in_emergency: bool,
    /// Where the priority comes from.
    pub priority_source: PrioritySource,
}

impl ArchOption {
    /// All options, in order.
    pub const ALL: [ArchOption; 3] = [
        ArchOption::Option1,
        ArchOption::Option2,
        ArchOption::Option3,
    ];

    /// The network-side settings of this option.
    pub const fn net_policy(self) -> NetPolicy {
        match self {
            ArchOption::Option1 => NetPolicy {
                network_on_pump_mcu: true,
                throttle_while_dispensing: false,
                emergency_lane_only_in_emergency: false,
                priority_source: PrioritySource::LocalGovernor,
            },
            ArchOption::Option2 => NetPolicy {
                network_on_pump_mcu: true,
                throttle_while_dispensing: true,
                emergency_lane_only_in_emergency: true,
                priority_source: PrioritySource::LocalGovernor,
            },
            ArchOption::Option3 => NetPolicy {
                network_on_pump_mcu: false,
                throttle_while_dispensing: false,
                emergency_lane_only_in_emergency: true,
                priority_source: PrioritySource::SerialLink,
            },
        }
    }

    /// The priority the MQTT drain applies when the system is at `system`.
    pub const fn drain_priority(self, system: Priority) -> Priority {
        let p = self.net_policy();
        match system {
            Priority::Dispensing if !p.throttle_while_dispensing => Priority::Idle,
            Priority::Emergency if !p.emergency_lane_only_in_emergency => Priority::Idle,
            other => other,
        }
    }

    /// Short name, as in scenario files and the visual (`"option1"`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            ArchOption::Option1 => "option1",
            ArchOption::Option2 => "option2",
            ArchOption::Option3 => "option3",
        }
    }
}

impl fmt::Display for ArchOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option1_drains_at_idle_rate_whatever_the_governor_says() {
        for p in [Priority::Idle, Priority::Dispensing, Priority::Emergency] {
            assert_eq!(ArchOption::Option1.drain_priority(p), Priority::Idle);
        }
    }

    #[test]
    fn option2_drains_at_the_governor_priority() {
        for p in [Priority::Idle, Priority::Dispensing, Priority::Emergency] {
            assert_eq!(ArchOption::Option2.drain_priority(p), p);
        }
    }

    #[test]
    fn option3_keeps_emergency_only_but_does_not_throttle_dispensing() {
        let o = ArchOption::Option3;
        assert_eq!(o.drain_priority(Priority::Dispensing), Priority::Idle);
        assert_eq!(o.drain_priority(Priority::Emergency), Priority::Emergency);
        assert!(!o.net_policy().network_on_pump_mcu);
        assert_eq!(o.net_policy().priority_source, PrioritySource::SerialLink);
    }
}
