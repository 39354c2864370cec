//! The PDU's configuration: one value type, its factory defaults, and nothing about storage.
//!
//! StorageTask persists it (versioned, CRC-checked records, two slots); the console, HTTP
//! settings and SNMP read and change it; boot hands the parts to each task. Strings are bounded
//! `heapless` strings so the whole configuration is a fixed-size value.
use heapless::String;
use serde::{Deserialize, Serialize};

use super::{CHANNELS, OutletMask};

/// Number of mutual-exclusion groups.
pub const INTERLOCK_GROUPS: usize = 4;
/// Number of request sources with their own deny list (see [`super::Source`]).
pub const SOURCES: usize = 5;

/// Everything the PDU keeps across power cycles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PduConfig {
    /// IP settings.
    pub network: NetworkConfig,
    /// Name, location and units shown by HTTP/SNMP.
    pub identity: IdentityConfig,
    /// Safe state, interlocks and restore policy for SwitchTask.
    pub switch: SwitchPolicy,
    /// Over-current protection.
    pub ocp: OcpConfig,
    /// What each front-panel button does.
    pub buttons: ButtonMap,
    /// Per-channel HLW8032 calibration.
    pub calibration: [ChannelCalibration; CHANNELS],
    /// Log verbosity.
    pub logging: LoggingConfig,
    /// Heartbeat timeouts and fault thresholds for HealthTask.
    pub health: HealthThresholds,
    /// Outlet labels.
    pub labels: [String<32>; CHANNELS],
    /// SNMP communities.
    pub snmp: SnmpConfig,
    /// HTTP access.
    pub http: HttpConfig,
}

/// IPv4 settings (static; `dhcp` is stored for compatibility with the real device).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    /// MAC address.
    pub mac: [u8; 6],
    /// Address.
    pub ip: [u8; 4],
    /// Subnet mask.
    pub subnet: [u8; 4],
    /// Default gateway.
    pub gateway: [u8; 4],
    /// DNS server.
    pub dns: [u8; 4],
    /// Use DHCP instead of the static address.
    pub dhcp: bool,
}

/// Shown by `/api/settings`, SNMP `sysName`/`sysLocation`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityConfig {
    /// Device name.
    pub device_name: String<32>,
    /// Location.
    pub location: String<32>,
    /// Temperature unit: `C`, `F` or `K`.
    pub temp_unit: char,
}

/// SwitchTask's policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchPolicy {
    /// Outlets that stay ON in the safe state (all others off). `NONE` = `ALL_OFF`.
    pub safe_mask: OutletMask,
    /// At boot, after the safe state, restore `last_state`.
    pub restore_on_boot: bool,
    /// Relay state saved for `restore_on_boot`.
    pub last_state: OutletMask,
    /// Mutual-exclusion groups: at most one outlet of a group may be on.
    pub interlock_groups: [OutletMask; INTERLOCK_GROUPS],
    /// Per-source deny lists, indexed by [`super::Source::rank`].
    pub deny: [OutletMask; SOURCES],
    /// Minimum time between two toggles of one outlet, ms (ENERGIS hardware: 50–100).
    pub min_toggle_ms: u16,
    /// Most outlets a single request may switch at once.
    pub max_simultaneous: u8,
    /// Supply voltage below which relays are not switched, millivolts (0 = off).
    pub brownout_mv: u16,
    /// I2C errors in a row that send SwitchTask to `FAULT_SAFE`.
    pub i2c_fault_threshold: u8,
    /// Optional priority override: rank per source (index = default rank); identity by default.
    pub priority_override: [u8; SOURCES],
}

/// Over-current protection on the sum of channel currents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OcpConfig {
    /// Limit in amps (10 A EU, 15 A US). Warning at limit−1.0, trip at limit−0.5,
    /// recovery below limit−1.5.
    pub limit_a: f32,
}

/// An action a button press can trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ButtonAction {
    /// Nothing.
    None,
    /// Move the selection to the previous outlet.
    SelectPrev,
    /// Move the selection to the next outlet.
    SelectNext,
    /// Toggle the selected outlet.
    ToggleSelected,
    /// Clear the fault LED / fault state.
    ClearFault,
    /// All outputs to the safe state and ask the platform to sleep.
    PowerSleep,
}

/// Short and long press actions of the four buttons.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ButtonMap {
    /// MINUS: (short, long).
    pub minus: (ButtonAction, ButtonAction),
    /// PLUS: (short, long).
    pub plus: (ButtonAction, ButtonAction),
    /// SET: (short, long).
    pub set: (ButtonAction, ButtonAction),
    /// PWR: (short, long).
    pub power: (ButtonAction, ButtonAction),
    /// Long-press threshold, ms.
    pub long_press_ms: u16,
}

/// HLW8032 calibration of one channel (ENERGIS defaults: Kv 1.88, Ki 1.0, no offsets).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ChannelCalibration {
    /// Voltage divider factor.
    pub kv: f32,
    /// Current shunt factor.
    pub ki: f32,
    /// Volts subtracted after scaling.
    pub v_offset: f32,
    /// Amps subtracted after scaling.
    pub i_offset: f32,
}

/// Log verbosity, 0 = errors only … 4 = trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggingConfig {
    /// Level.
    pub level: u8,
}

/// HealthTask's thresholds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthThresholds {
    /// A task that has not sent a heartbeat for this long is declared hung, ms.
    pub heartbeat_timeout_ms: u32,
    /// Hardware watchdog timeout, ms.
    pub watchdog_ms: u32,
}

/// SNMP access.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnmpConfig {
    /// Community for GET/GETNEXT/GETBULK.
    pub read_community: String<32>,
    /// Community for SET (also reads).
    pub write_community: String<32>,
}

/// HTTP access.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpConfig {
    /// When false, POSTs need no credentials (as on the real ENERGIS).
    pub auth_enabled: bool,
    /// Basic-auth user.
    pub user: String<16>,
    /// Basic-auth password.
    pub password: String<32>,
}

fn s<const N: usize>(text: &str) -> String<N> {
    let mut out = String::new();
    for c in text.chars() {
        if out.push(c).is_err() {
            break;
        }
    }
    out
}

impl Default for PduConfig {
    /// Factory defaults, matching the real ENERGIS where it has a value.
    fn default() -> Self {
        PduConfig {
            network: NetworkConfig {
                mac: [0x02, 0x45, 0x4E, 0x00, 0x00, 0x01],
                ip: [192, 168, 0, 22],
                subnet: [255, 255, 255, 0],
                gateway: [192, 168, 0, 1],
                dns: [8, 8, 8, 8],
                dhcp: false,
            },
            identity: IdentityConfig {
                device_name: s("ENERGIS"),
                location: s("Wien"),
                temp_unit: 'C',
            },
            switch: SwitchPolicy {
                safe_mask: OutletMask::NONE,
                restore_on_boot: false,
                last_state: OutletMask::NONE,
                interlock_groups: [OutletMask::NONE; INTERLOCK_GROUPS],
                deny: [OutletMask::NONE; SOURCES],
                min_toggle_ms: 100,
                max_simultaneous: 8,
                brownout_mv: 0,
                i2c_fault_threshold: 5,
                priority_override: [0, 1, 2, 3, 4],
            },
            ocp: OcpConfig { limit_a: 10.0 },
            buttons: ButtonMap {
                minus: (ButtonAction::SelectPrev, ButtonAction::None),
                plus: (ButtonAction::SelectNext, ButtonAction::None),
                set: (ButtonAction::ToggleSelected, ButtonAction::ClearFault),
                power: (ButtonAction::None, ButtonAction::PowerSleep),
                long_press_ms: 2_500,
            },
            calibration: [ChannelCalibration {
                kv: 1.88,
                ki: 1.0,
                v_offset: 0.0,
                i_offset: 0.0,
            }; CHANNELS],
            logging: LoggingConfig { level: 2 },
            health: HealthThresholds {
                heartbeat_timeout_ms: 2_000,
                watchdog_ms: 5_000,
            },
            labels: core::array::from_fn(|_| String::new()),
            snmp: SnmpConfig {
                read_community: s("public"),
                write_community: s("private"),
            },
            http: HttpConfig {
                auth_enabled: true,
                user: s("admin"),
                password: s("energis"),
            },
        }
    }
}
