//! `GET /metrics`: Prometheus text exposition (format 0.0.4) with the real ENERGIS metric
//! names, plus a few of ours (`energis_channel_power_factor`, `energis_ocp_*`,
//! `energis_switch_fault_safe`).
//!
//! Like the real device, a channel whose telemetry is stale reports 0 for its measurements and
//! `energis_channel_telemetry_valid 0`. Label values are escaped as the format requires.
use core::fmt::{self, Write};

use super::json::ocp_thresholds;
use super::writer::TextNum;
use crate::pdu::frontend::{OcpState, Snapshot, SwitchState};
use crate::pdu::{CHANNELS, ChannelTelemetry, Outlet};

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A Prometheus label value: `\`, `"` and newline escaped.
struct LabelValue<'a>(&'a str);

impl fmt::Display for LabelValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

fn family(w: &mut impl Write, name: &str, kind: &str, help: &str) -> fmt::Result {
    write!(w, "# HELP {name} {help}\n# TYPE {name} {kind}\n")
}

fn scalar(
    w: &mut impl Write,
    name: &str,
    kind: &str,
    help: &str,
    value: impl fmt::Display,
) -> fmt::Result {
    family(w, name, kind, help)?;
    writeln!(w, "{name} {value}")
}

fn per_channel(
    w: &mut impl Write,
    name: &str,
    kind: &str,
    help: &str,
    value: impl Fn(usize, &ChannelTelemetry) -> TextNum,
    snap: &Snapshot,
) -> fmt::Result {
    family(w, name, kind, help)?;
    for (i, t) in snap.telemetry.iter().enumerate().take(CHANNELS) {
        writeln!(w, "{name}{{ch=\"{}\"}} {}", i + 1, value(i, t))?;
    }
    Ok(())
}

/// Writes the whole exposition. `requests_total` is the HTTP server's request counter.
pub fn write_metrics(w: &mut impl Write, snap: &Snapshot, requests_total: u32) -> fmt::Result {
    scalar(
        w,
        "energis_up",
        "gauge",
        "1 if the metrics handler is healthy.",
        1,
    )?;
    family(
        w,
        "energis_build_info",
        "gauge",
        "Build and device identifiers.",
    )?;
    writeln!(
        w,
        "energis_build_info{{version=\"{}\",serial=\"{}\"}} 1",
        LabelValue(snap.firmware_version),
        LabelValue(&snap.serial)
    )?;
    scalar(
        w,
        "energis_uptime_seconds_total",
        "counter",
        "System uptime in seconds.",
        snap.uptime_ms / 1000,
    )?;
    scalar(
        w,
        "energis_internal_temperature_celsius",
        "gauge",
        "Internal temperature.",
        TextNum(snap.temperature_c, 3),
    )?;
    scalar(
        w,
        "energis_vusb_volts",
        "gauge",
        "USB rail voltage.",
        TextNum(snap.usb_v, 3),
    )?;
    scalar(
        w,
        "energis_vsupply_volts",
        "gauge",
        "12V supply rail voltage.",
        TextNum(snap.supply_v, 3),
    )?;
    scalar(
        w,
        "energis_http_requests_total",
        "counter",
        "Total HTTP requests served.",
        requests_total,
    )?;
    let on = |i: usize| Outlet::from_index(i).is_some_and(|o| snap.outlets.contains(o));
    let live = |t: &ChannelTelemetry, v: f32| if t.degraded { 0.0 } else { v };
    per_channel(
        w,
        "energis_channel_state",
        "gauge",
        "Relay state (1=ON, 0=OFF).",
        |i, _| TextNum(if on(i) { 1.0 } else { 0.0 }, 0),
        snap,
    )?;
    per_channel(
        w,
        "energis_channel_telemetry_valid",
        "gauge",
        "1 if telemetry for channel is fresh/valid.",
        |_, t| TextNum(if t.degraded { 0.0 } else { 1.0 }, 0),
        snap,
    )?;
    per_channel(
        w,
        "energis_channel_voltage_volts",
        "gauge",
        "Channel voltage.",
        |_, t| TextNum(live(t, t.voltage_v), 3),
        snap,
    )?;
    per_channel(
        w,
        "energis_channel_current_amps",
        "gauge",
        "Channel current.",
        |_, t| TextNum(live(t, t.current_a), 3),
        snap,
    )?;
    per_channel(
        w,
        "energis_channel_power_watts",
        "gauge",
        "Active power per channel.",
        |_, t| TextNum(live(t, t.power_w), 3),
        snap,
    )?;
    per_channel(
        w,
        "energis_channel_power_factor",
        "gauge",
        "Power factor per channel (0..1).",
        |_, t| TextNum(live(t, t.power_factor), 3),
        snap,
    )?;
    per_channel(
        w,
        "energis_channel_energy_watt_hours_total",
        "counter",
        "Accumulated energy per channel.",
        |_, t| TextNum(live(t, t.energy_wh), 3),
        snap,
    )?;
    let ocp = &snap.ocp;
    let (warn, crit, recover) = ocp_thresholds(ocp.limit_a);
    let state = match ocp.state {
        OcpState::Normal => 0,
        OcpState::Warning => 1,
        OcpState::Lockout => 2,
    };
    scalar(
        w,
        "energis_ocp_state",
        "gauge",
        "Over-current state: 0=normal, 1=warning, 2=lockout.",
        state,
    )?;
    scalar(
        w,
        "energis_ocp_total_current_amps",
        "gauge",
        "Sum of channel currents.",
        TextNum(ocp.total_current_a, 3),
    )?;
    scalar(
        w,
        "energis_ocp_limit_amps",
        "gauge",
        "Configured current limit.",
        TextNum(ocp.limit_a, 2),
    )?;
    scalar(
        w,
        "energis_ocp_warning_threshold_amps",
        "gauge",
        "Warning threshold.",
        TextNum(warn, 2),
    )?;
    scalar(
        w,
        "energis_ocp_critical_threshold_amps",
        "gauge",
        "Trip threshold.",
        TextNum(crit, 2),
    )?;
    scalar(
        w,
        "energis_ocp_recovery_threshold_amps",
        "gauge",
        "Lockout clears below this current.",
        TextNum(recover, 2),
    )?;
    scalar(
        w,
        "energis_ocp_switching_allowed",
        "gauge",
        "1 if switching outlets on is allowed.",
        u8::from(ocp.state != OcpState::Lockout),
    )?;
    scalar(
        w,
        "energis_ocp_trip_count_total",
        "counter",
        "Over-current trips since boot.",
        ocp.trip_count,
    )?;
    scalar(
        w,
        "energis_ocp_last_tripped_channel",
        "gauge",
        "Outlet switched off by the last trip (0 = none).",
        ocp.last_tripped_channel,
    )?;
    scalar(
        w,
        "energis_switch_fault_safe",
        "gauge",
        "1 if the switch task is in its fault-safe state.",
        u8::from(snap.switch_state == SwitchState::FaultSafe),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut s = heapless::String::<32>::new();
        write!(s, "{}", LabelValue("a\"b\\c\nd")).unwrap();
        assert_eq!(s.as_str(), "a\\\"b\\\\c\\nd");
    }
}
