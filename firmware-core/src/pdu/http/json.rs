//! The JSON bodies of `/api/status` and `/api/settings`, in the real ENERGIS shape.
//!
//! Written by hand with `write!` rather than through `serde-json-core`: the device prints
//! numbers with fixed decimals (`"voltage": 230.12`), which serde would print with full float
//! precision, and the field set is small and flat. Strings from the configuration (labels,
//! names) go through [`JsonStr`], which escapes quotes, backslashes and control characters.
use core::fmt::{self, Write};

use super::writer::{Ipv4, JsonNum, Mac, temperature_in};
use crate::pdu::frontend::{OcpState, Snapshot};

/// The hardware version reported by `/api/settings` (ENERGIS 1.1.0 boards).
pub const HARDWARE_VERSION: &str = "1.1.0";

/// A string written as a JSON string literal, quotes included.
#[derive(Debug, Clone, Copy)]
pub struct JsonStr<'a>(pub &'a str);

impl fmt::Display for JsonStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if (c as u32) < 0x20 || c == '\u{7f}' => write!(f, "\\u{:04x}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        f.write_char('"')
    }
}

/// `OK`, `WARNING` or `LOCKOUT` (the status handler's `systemStatus`).
pub fn system_status(state: OcpState) -> &'static str {
    match state {
        OcpState::Normal => "OK",
        OcpState::Warning => "WARNING",
        OcpState::Lockout => "LOCKOUT",
    }
}

/// `NORMAL`, `WARNING` or `LOCKOUT` (the over-current object's `state`).
pub fn ocp_state_name(state: OcpState) -> &'static str {
    match state {
        OcpState::Normal => "NORMAL",
        OcpState::Warning => "WARNING",
        OcpState::Lockout => "LOCKOUT",
    }
}

/// Region from the configured limit: 15 A boards are the US variant, 10 A the EU one.
pub fn region(limit_a: f32) -> &'static str {
    if limit_a >= 12.5 { "US" } else { "EU" }
}

/// OCP thresholds derived from the limit: (warning, critical/trip, recovery), amps.
pub fn ocp_thresholds(limit_a: f32) -> (f32, f32, f32) {
    (limit_a - 1.0, limit_a - 0.5, limit_a - 1.5)
}

/// Writes the `/api/status` body. Channels with stale telemetry report zeros, as the real
/// device does; `state` is the relay state.
pub fn write_status(w: &mut impl Write, snap: &Snapshot) -> fmt::Result {
    w.write_str("{\"channels\":[")?;
    for (i, t) in snap.telemetry.iter().enumerate() {
        let on = crate::pdu::Outlet::from_index(i).is_some_and(|o| snap.outlets.contains(o));
        let (v, a, p, up) = if t.degraded {
            (0.0, 0.0, 0.0, 0)
        } else {
            (t.voltage_v, t.current_a, t.power_w, t.uptime_s)
        };
        let label = snap.config.labels.get(i).map(|l| l.as_str()).unwrap_or("");
        if i > 0 {
            w.write_char(',')?;
        }
        write!(
            w,
            "{{\"voltage\":{},\"current\":{},\"uptime\":{},\"power\":{},\"state\":{},\"label\":{}}}",
            JsonNum(v, 2),
            JsonNum(a, 2),
            up,
            JsonNum(p, 2),
            on,
            JsonStr(label)
        )?;
    }
    let (temp, unit) = temperature_in(snap.config.identity.temp_unit, snap.temperature_c);
    let ocp = &snap.ocp;
    let (warn, crit, recover) = ocp_thresholds(ocp.limit_a);
    write!(
        w,
        "],\"internalTemperature\":{},\"temperatureUnit\":{},\"systemStatus\":{},",
        JsonNum(temp, 2),
        JsonStr(unit),
        JsonStr(system_status(ocp.state))
    )?;
    write!(
        w,
        "\"overcurrent\":{{\"state\":{},\"total_current_a\":{},\"limit_a\":{},\
         \"warning_threshold_a\":{},\"critical_threshold_a\":{},\"recovery_threshold_a\":{},\
         \"switching_allowed\":{},\"trip_count\":{},\"region\":{}}}}}",
        JsonStr(ocp_state_name(ocp.state)),
        JsonNum(ocp.total_current_a, 2),
        JsonNum(ocp.limit_a, 2),
        JsonNum(warn, 2),
        JsonNum(crit, 2),
        JsonNum(recover, 2),
        ocp.state != OcpState::Lockout,
        ocp.trip_count,
        JsonStr(region(ocp.limit_a))
    )
}

/// Writes the `/api/settings` body.
pub fn write_settings(w: &mut impl Write, snap: &Snapshot) -> fmt::Result {
    let cfg = &snap.config;
    let net = &cfg.network;
    let id = &cfg.identity;
    let mut unit = [0u8; 4];
    let unit = id.temp_unit.encode_utf8(&mut unit);
    let (temp, _) = temperature_in(id.temp_unit, snap.temperature_c);
    let limit = cfg.ocp.limit_a;
    let (warn, crit, _) = ocp_thresholds(limit);
    write!(
        w,
        "{{\"ip\":\"{}\",\"gateway\":\"{}\",\"subnet\":\"{}\",\"dns\":\"{}\",\"mac\":\"{}\",",
        Ipv4(net.ip),
        Ipv4(net.gateway),
        Ipv4(net.subnet),
        Ipv4(net.dns),
        Mac(net.mac)
    )?;
    write!(
        w,
        "\"device_name\":{},\"location\":{},\"temp_unit\":{},\"temperature\":{},",
        JsonStr(&id.device_name),
        JsonStr(&id.location),
        JsonStr(unit),
        JsonNum(temp, 2)
    )?;
    write!(
        w,
        "\"serial_number\":{},\"firmware_version\":{},\"hardware_version\":{},\
         \"device_region\":{},\"current_limit\":{},\"warning_limit\":{},\"critical_limit\":{}}}",
        JsonStr(&snap.serial),
        JsonStr(snap.firmware_version),
        JsonStr(HARDWARE_VERSION),
        JsonStr(region(limit)),
        JsonNum(limit, 1),
        JsonNum(warn, 1),
        JsonNum(crit, 1)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_escape_quotes_backslashes_and_controls() {
        let mut s = heapless::String::<64>::new();
        write!(s, "{}", JsonStr("a\"b\\c\nd\u{1}é")).unwrap();
        assert_eq!(s.as_str(), "\"a\\\"b\\\\c\\nd\\u0001é\"");
    }

    #[test]
    fn thresholds_follow_the_limit() {
        assert_eq!(ocp_thresholds(10.0), (9.0, 9.5, 8.5));
        assert_eq!(region(10.0), "EU");
        assert_eq!(region(15.0), "US");
    }
}
