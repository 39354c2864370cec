//! `GET /`: a small self-contained status page (plain HTML, no scripts, no external resources).
//!
//! The outlet form posts to `/api/control` with one checkbox per outlet, which matches the
//! control endpoint's semantics exactly: a checked box sends `channelN=on`, an unchecked one
//! sends nothing and so switches the outlet off. With authentication on, the browser asks for
//! the credentials when the POST is answered 401.
use core::fmt::{self, Write};

use super::json::{ocp_state_name, system_status};
use super::writer::{TextNum, temperature_in};
use crate::pdu::Outlet;
use crate::pdu::frontend::Snapshot;

/// Text escaped for HTML element content and attribute values.
struct Html<'a>(&'a str);

impl fmt::Display for Html<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '&' => f.write_str("&amp;")?,
                '<' => f.write_str("&lt;")?,
                '>' => f.write_str("&gt;")?,
                '"' => f.write_str("&quot;")?,
                '\'' => f.write_str("&#39;")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Writes the page.
pub fn write_page(w: &mut impl Write, snap: &Snapshot) -> fmt::Result {
    let id = &snap.config.identity;
    write!(
        w,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{} - ENERGIS PDU</title>\
         <style>body{{font-family:sans-serif;margin:1em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #999;padding:.2em .6em;text-align:right}}</style></head><body>",
        Html(&id.device_name)
    )?;
    write!(
        w,
        "<h1>{}</h1><p>{} &middot; {} &middot; firmware {} &middot; up {} s</p>",
        Html(&id.device_name),
        Html(&id.location),
        Html(&snap.serial),
        Html(snap.firmware_version),
        snap.uptime_ms / 1000
    )?;
    w.write_str(
        "<form method=\"post\" action=\"/api/control\"><table><tr><th>Outlet</th><th>Label</th>\
         <th>On</th><th>V</th><th>A</th><th>W</th></tr>",
    )?;
    for o in Outlet::all() {
        let i = o.index();
        let label = snap.config.labels.get(i).map(|l| l.as_str()).unwrap_or("");
        let checked = if snap.outlets.contains(o) {
            " checked"
        } else {
            ""
        };
        write!(
            w,
            "<tr><td>{}</td><td>{}</td><td><input type=\"checkbox\" name=\"channel{}\" value=\"on\"{}></td>",
            o.number(),
            Html(label),
            o.number(),
            checked
        )?;
        match snap.telemetry.get(i) {
            Some(t) if !t.degraded => write!(
                w,
                "<td>{}</td><td>{}</td><td>{}</td></tr>",
                TextNum(t.voltage_v, 1),
                TextNum(t.current_a, 3),
                TextNum(t.power_w, 1)
            )?,
            _ => w.write_str("<td>-</td><td>-</td><td>-</td></tr>")?,
        }
    }
    let (temp, unit) = temperature_in(id.temp_unit, snap.temperature_c);
    write!(
        w,
        "</table><p><button type=\"submit\">Apply</button></p></form>\
         <p>Status: {} &middot; over-current: {}, {} A of {} A &middot; temperature {} {}</p>\
         <p><a href=\"/api/status\">/api/status</a> &middot; <a href=\"/api/settings\">/api/settings</a> \
         &middot; <a href=\"/metrics\">/metrics</a></p></body></html>",
        system_status(snap.ocp.state),
        ocp_state_name(snap.ocp.state),
        TextNum(snap.ocp.total_current_a, 2),
        TextNum(snap.ocp.limit_a, 1),
        TextNum(temp, 1),
        unit
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_text_is_escaped() {
        let mut s = heapless::String::<64>::new();
        write!(s, "{}", Html("<b>\"A&B's\"</b>")).unwrap();
        assert_eq!(s.as_str(), "&lt;b&gt;&quot;A&amp;B&#39;s&quot;&lt;/b&gt;");
    }
}
