//! What the front-ends (console, SNMP, HTTP) read and what they ask for.
//!
//! Front-ends are sans-IO: they get a [`Snapshot`] of the PDU (filled by the platform from the
//! tasks' latest-value telemetry) and a request, and answer with a reply plus [`Intent`]s that the
//! runner forwards to the owning task (SwitchTask, StorageTask, HealthTask). A front-end never
//! touches a peripheral or another task's state directly.
use super::config::PduConfig;
use super::{CHANNELS, ChannelTelemetry, OutletMask, SwitchRequest};

/// Over-current protection state, as SwitchTask reports it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct OcpStatus {
    /// `Normal`, `Warning` (≥ limit−1.0 A) or `Lockout` (tripped at ≥ limit−0.5 A).
    pub state: OcpState,
    /// Sum of channel currents, amps.
    pub total_current_a: f32,
    /// Configured limit, amps.
    pub limit_a: f32,
    /// Outlet switched off by the last trip (0 = none).
    pub last_tripped_channel: u8,
    /// Trips since boot.
    pub trip_count: u32,
    /// Uptime at the last trip, ms.
    pub last_trip_ms: u64,
}

/// Over-current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum OcpState {
    /// Below the warning threshold.
    #[default]
    Normal,
    /// Above the warning threshold.
    Warning,
    /// Tripped: switching on is refused until recovery or reset.
    Lockout,
}

/// SwitchTask's state machine state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SwitchState {
    /// Expanders not initialised yet.
    #[default]
    Init,
    /// Normal operation.
    Ready,
    /// A fault put the outlets in the safe state; switching is refused until cleared.
    FaultSafe,
}

/// Everything a front-end may show, at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Milliseconds since boot.
    pub uptime_ms: u64,
    /// Relay state.
    pub outlets: OutletMask,
    /// SwitchTask state.
    pub switch_state: SwitchState,
    /// Latest per-outlet measurements.
    pub telemetry: [ChannelTelemetry; CHANNELS],
    /// Over-current protection.
    pub ocp: OcpStatus,
    /// Die temperature, °C.
    pub temperature_c: f32,
    /// 12 V rail, volts.
    pub supply_v: f32,
    /// USB rail, volts.
    pub usb_v: f32,
    /// Serial number (`SN-…`).
    pub serial: heapless::String<16>,
    /// Firmware version string.
    pub firmware_version: &'static str,
    /// The configuration in force.
    pub config: PduConfig,
}

/// What a front-end asks the rest of the PDU to do after answering.
// No allocator to box the configuration into; intents are rare and moved once, so the size of
// `SaveConfig` costs nothing that matters.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Intent {
    /// Send to SwitchTask.
    Switch(SwitchRequest),
    /// Replace the configuration and persist it through StorageTask.
    SaveConfig(PduConfig),
    /// Restore factory defaults (console `RFS`).
    FactoryReset,
    /// Reboot the device.
    Reboot,
    /// Clear the error log and fault LED (console `CLR_ERR`).
    ClearErrors,
}
