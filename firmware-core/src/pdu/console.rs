//! ConsoleTask's core, sans-IO: the ENERGIS command-line interface (docs/interfaces.md §5.4) plus
//! our configuration, logging and health commands.
//!
//! Three layers, each usable on its own:
//!
//! 1. [`LineEditor`]: bytes in, lines out. CR, LF and CRLF end a line; backspace (0x08) and
//!    DEL (0x7F) remove the last character; a tab counts as a space. A line longer than
//!    [`LINE_MAX`] bytes, one that is not UTF-8, or one containing another control character
//!    (for example the ESC of an arrow key) comes out as a [`LineError`] when it ends. Typed
//!    characters are not echoed (as with the real device's USB-CDC console, the terminal's
//!    local echo shows them).
//! 2. [`Command::parse`]: a line to a [`Command`], or a [`ParseError`] that says what is wrong
//!    and prints the usage. Command names and keywords (`ALL`, `ON`, `OFF`, …) are
//!    case-insensitive; free text (names, communities, passwords) keeps its case.
//! 3. [`Console::execute`]: runs a command against a [`Snapshot`], writes the reply into the
//!    caller's buffer and returns [`Intent`]s; [`Console::push_byte`] chains all three.
//!
//! # Reply format
//!
//! Every reply line is `\t[ECHO] <text>\r\n` (the real device's prefix); error lines are
//! `\t[ERROR] <text>\r\n`. An empty line produces no reply.
//!
//! # Call order (the platform's runner)
//!
//! For each received byte call [`Console::push_byte`]. When it returns an [`Executed`]: send
//! `out[..written]` at once, forward `intents` in order to their owner tasks, collect the
//! [`SwitchReply`] of each `Intent::Switch` (synthesise `SwitchStatus::Busy` if a queue was
//! full), and if there is a `followup`, call [`Followup::finish`] with those replies and send
//! what it writes. So, as on the real device, `SET_CH 1 ON` answers `CH1 = ON` only after the
//! switch happened, and answers an error line if SwitchTask refused (e.g. lockout).
//!
//! # Configuration edits
//!
//! `CONFIG SET`, `LOG_LEVEL <n>`, `SET_COMMUNITY` and `SET_HTTP_AUTH` change a *pending copy*
//! of the configuration (made from the snapshot at the first edit); `CONFIG SAVE` emits
//! `Intent::SaveConfig` with it, `CONFIG DISCARD` drops it, `CONFIG GET` shows it. The
//! ENERGIS commands that the real device stores at once (`SET_IP`, `SET_SN`, `SET_GW`,
//! `SET_DNS`, `CONFIG_NETWORK`, `CALIBRATE`) still save at once, so scripts written for the
//! real device (`SET_IP …` then `REBOOT`) keep working: they save the configuration in force
//! with only that change, and apply the same change to the pending copy if there is one. The
//! network commands say "takes effect after reboot", like the real one. A pending copy is
//! not rebased on later changes from HTTP or SNMP: `CONFIG SAVE` writes what it holds.
//!
//! # `CALIBRATE <ch> <V> <I>`
//!
//! The meter reports `reading = raw × k − offset`. With the outlet's present reading and the
//! reference value from a trusted meter, the new factor is `k × (ref + offset) / (reading +
//! offset)`, so the same raw value then reads `ref`. A reference of 0 instead sets the offset
//! to `raw × k` (zero calibration, outlet off or unloaded). The reading must be valid
//! (not degraded) and, for a non-zero reference, at least 1 V / 0.01 A; the new factor must
//! be finite and in (0, 100).
use core::fmt::{self, Write};

use super::config::{ChannelCalibration, PduConfig};
use super::frontend::{Intent, OcpState, Snapshot, SwitchState};
use super::http::json::{HARDWARE_VERSION, ocp_state_name, ocp_thresholds, region};
use super::http::writer::{Ipv4, Mac, SliceWriter, TextNum, parse_ipv4};
use super::{
    CHANNELS, Outlet, OutletMask, Source, SwitchOp, SwitchReply, SwitchRequest, SwitchStatus,
};

/// Longest line, in bytes (the real device's line buffer is 128 bytes).
pub const LINE_MAX: usize = 128;

/// An output buffer of this size fits every reply (HELP is the longest, about 2.5 KiB).
pub const RECOMMENDED_OUT_LEN: usize = 4096;

/// Most intents one command produces.
pub const MAX_INTENTS: usize = 2;

/// A complete input line.
pub type Line = heapless::String<LINE_MAX>;

// ---------------------------------------------------------------------------------------------
// Line editor
// ---------------------------------------------------------------------------------------------

/// Why an input line was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum LineError {
    /// Longer than the editor's capacity.
    TooLong,
    /// Not valid UTF-8.
    InvalidUtf8,
    /// Contains a control character other than tab, backspace or DEL.
    ControlCharacter,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineError::TooLong => write!(f, "line too long (max {LINE_MAX} characters)"),
            LineError::InvalidUtf8 => f.write_str("line is not valid UTF-8"),
            LineError::ControlCharacter => f.write_str("line contains a control character"),
        }
    }
}

impl core::error::Error for LineError {}

/// Assembles bytes into lines of at most `N` bytes.
#[derive(Debug, Clone, Default)]
pub struct LineEditor<const N: usize> {
    buf: heapless::Vec<u8, N>,
    too_long: bool,
    control: bool,
    after_cr: bool,
}

impl<const N: usize> LineEditor<N> {
    /// An empty editor.
    pub const fn new() -> Self {
        LineEditor {
            buf: heapless::Vec::new(),
            too_long: false,
            control: false,
            after_cr: false,
        }
    }

    /// Feeds one byte; returns the line (or why it was rejected) when the byte ends one.
    pub fn push(&mut self, byte: u8) -> Option<Result<heapless::String<N>, LineError>> {
        let after_cr = core::mem::replace(&mut self.after_cr, false);
        match byte {
            // The LF of a CRLF: the CR already ended the line.
            b'\n' if after_cr => None,
            b'\r' | b'\n' => {
                self.after_cr = byte == b'\r';
                Some(self.take())
            }
            0x08 | 0x7F => {
                if !self.too_long {
                    // Remove one whole UTF-8 character: continuation bytes, then its lead byte.
                    while let Some(b) = self.buf.pop() {
                        if b & 0xC0 != 0x80 {
                            break;
                        }
                    }
                }
                None
            }
            b'\t' => {
                self.store(b' ');
                None
            }
            0x00..=0x1F => {
                self.control = true;
                None
            }
            other => {
                self.store(other);
                None
            }
        }
    }

    fn store(&mut self, byte: u8) {
        if !self.too_long && self.buf.push(byte).is_err() {
            self.too_long = true;
        }
    }

    fn take(&mut self) -> Result<heapless::String<N>, LineError> {
        let bytes = core::mem::take(&mut self.buf);
        let too_long = core::mem::take(&mut self.too_long);
        let control = core::mem::take(&mut self.control);
        if too_long {
            Err(LineError::TooLong)
        } else if control {
            Err(LineError::ControlCharacter)
        } else {
            heapless::String::from_utf8(bytes).map_err(|_| LineError::InvalidUtf8)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

/// One outlet or all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// One outlet.
    One(Outlet),
    /// All outlets.
    All,
}

impl Target {
    fn outlets(self) -> impl Iterator<Item = Outlet> {
        Outlet::all().filter(move |o| match self {
            Target::One(x) => *o == x,
            Target::All => true,
        })
    }
}

/// Which network setting a `SET_*` command changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetField {
    /// `SET_IP`.
    Ip,
    /// `SET_SN` (subnet mask).
    Subnet,
    /// `SET_GW`.
    Gateway,
    /// `SET_DNS`.
    Dns,
}

/// `SET_COMMUNITY read|write`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Community {
    /// The read community.
    Read,
    /// The write community.
    Write,
}

/// `SET_HTTP_AUTH` argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpAuthArg<'a> {
    /// Require credentials.
    On,
    /// No credentials (the real ENERGIS).
    Off,
    /// Require these credentials (and turn authentication on).
    Credentials(&'a str, &'a str),
}

/// A parsed console command. Text arguments borrow the line.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Command<'a> {
    /// `HELP` or `?`.
    Help,
    /// `SYSINFO`.
    SysInfo,
    /// `GET_TEMP`.
    GetTemp,
    /// `GET_SUPPLY`.
    GetSupply,
    /// `GET_USB`.
    GetUsb,
    /// `SET_CH <1-8|ALL> <0|1|ON|OFF>`.
    SetCh(Target, bool),
    /// `GET_CH <1-8|ALL>`.
    GetCh(Target),
    /// `OC_STATUS`.
    OcStatus,
    /// `OC_RESET`.
    OcReset,
    /// `READ_HLW8032 [ch|ALL]`.
    ReadHlw(Target),
    /// `CALIBRATE <ch> <V> <I>`.
    Calibrate(Outlet, f32, f32),
    /// `SHOW_CALIB [ch|ALL]`.
    ShowCalib(Target),
    /// `NETINFO`.
    NetInfo,
    /// `SET_IP`, `SET_SN`, `SET_GW`, `SET_DNS`.
    SetNet(NetField, [u8; 4]),
    /// `CONFIG_NETWORK <ip$sn$gw$dns>`.
    ConfigNetwork([[u8; 4]; 4]),
    /// `CLR_ERR`.
    ClrErr,
    /// `RFS` (factory reset).
    Rfs,
    /// `REBOOT`.
    Reboot,
    /// `CONFIG GET [key]` (no key: all keys).
    ConfigGet(Option<&'a str>),
    /// `CONFIG SET <key> <value>` (the value is the rest of the line).
    ConfigSet(&'a str, &'a str),
    /// `CONFIG SAVE`.
    ConfigSave,
    /// `CONFIG DISCARD`.
    ConfigDiscard,
    /// `LOG_LEVEL [0-4]` (no level: show it).
    LogLevel(Option<u8>),
    /// `HEALTH`.
    Health,
    /// `SET_COMMUNITY <read|write> <text>`.
    SetCommunity(Community, &'a str),
    /// `SET_HTTP_AUTH <on|off|user pass>`.
    SetHttpAuth(HttpAuthArg<'a>),
}

/// Why a line is not a valid command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseError {
    /// The line is empty.
    Empty,
    /// No such command.
    Unknown,
    /// Wrong arguments; says what is wrong and how the command is used.
    Invalid {
        /// What is wrong.
        what: &'static str,
        /// The usage line.
        usage: &'static str,
    },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Empty => f.write_str("empty command"),
            ParseError::Unknown => f.write_str("unknown command (type HELP)"),
            ParseError::Invalid { what, usage } => write!(f, "{what}. Usage: {usage}"),
        }
    }
}

impl core::error::Error for ParseError {}

const USAGE_SET_CH: &str = "SET_CH <1-8|ALL> <0|1|ON|OFF>";
const USAGE_GET_CH: &str = "GET_CH <1-8|ALL>";
const USAGE_READ: &str = "READ_HLW8032 [1-8|ALL]";
const USAGE_CAL: &str = "CALIBRATE <1-8> <volts> <amps>";
const USAGE_SHOW_CAL: &str = "SHOW_CALIB [1-8|ALL]";
const USAGE_NETWORK: &str = "CONFIG_NETWORK <ip$subnet$gateway$dns>";
const USAGE_CONFIG: &str =
    "CONFIG GET [key] | CONFIG SET <key> <value> | CONFIG SAVE | CONFIG DISCARD";
const USAGE_LOG: &str = "LOG_LEVEL [0-4]";
const USAGE_COMMUNITY: &str = "SET_COMMUNITY <read|write> <text>";
const USAGE_HTTP_AUTH: &str = "SET_HTTP_AUTH <on|off|user password>";

/// Command table: name, usage, description (also the HELP text).
const HELP: &[(&str, &str)] = &[
    ("HELP | ?", "Show this help"),
    ("SYSINFO", "Show system information"),
    ("GET_TEMP", "Read die temperature"),
    ("GET_SUPPLY", "Read 12V supply voltage"),
    ("GET_USB", "Read USB supply voltage"),
    ("HEALTH", "Show task and fault health"),
    ("REBOOT", "Reboot system"),
    ("RFS", "Reset to factory settings and reboot"),
    ("CLR_ERR", "Clear error LED and switch fault"),
    (USAGE_SET_CH, "Set relay channel(s)"),
    (USAGE_GET_CH, "Get relay channel state(s)"),
    ("OC_STATUS", "Show overcurrent protection status"),
    ("OC_RESET", "Clear an overcurrent lockout"),
    (USAGE_READ, "Read power data"),
    (USAGE_CAL, "Calibrate channel against a reference"),
    (USAGE_SHOW_CAL, "Show calibration data"),
    ("NETINFO", "Show network information"),
    ("SET_IP <ip>", "Set IP address (after reboot)"),
    ("SET_SN <mask>", "Set subnet mask (after reboot)"),
    ("SET_GW <gw>", "Set gateway (after reboot)"),
    ("SET_DNS <dns>", "Set DNS server (after reboot)"),
    (USAGE_NETWORK, "Set all network settings (after reboot)"),
    (
        "CONFIG GET [key]",
        "Show configuration (all keys without key)",
    ),
    ("CONFIG SET <key> <value>", "Change pending configuration"),
    ("CONFIG SAVE", "Save pending configuration"),
    ("CONFIG DISCARD", "Drop pending configuration"),
    (USAGE_LOG, "Show or set log level (pending)"),
    (USAGE_COMMUNITY, "Set SNMP community (pending)"),
    (USAGE_HTTP_AUTH, "Set HTTP authentication (pending)"),
];

fn invalid(what: &'static str, usage: &'static str) -> ParseError {
    ParseError::Invalid { what, usage }
}

fn parse_target(
    arg: Option<&str>,
    usage: &'static str,
    default_all: bool,
) -> Result<Target, ParseError> {
    match arg {
        None if default_all => Ok(Target::All),
        None => Err(invalid("missing channel", usage)),
        Some(a) if a.eq_ignore_ascii_case("ALL") => Ok(Target::All),
        Some(a) => parse_outlet(a)
            .map(Target::One)
            .ok_or(invalid("invalid channel (1-8 or ALL)", usage)),
    }
}

fn parse_outlet(arg: &str) -> Option<Outlet> {
    if arg.len() > 2 || !arg.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Outlet::new(arg.parse().ok()?)
}

fn parse_on_off(arg: &str) -> Option<bool> {
    match arg {
        "1" => Some(true),
        "0" => Some(false),
        a if a.eq_ignore_ascii_case("ON") => Some(true),
        a if a.eq_ignore_ascii_case("OFF") => Some(false),
        _ => None,
    }
}

fn parse_finite(arg: &str) -> Option<f32> {
    arg.parse::<f32>().ok().filter(|v| v.is_finite())
}

/// Splits off the first whitespace-separated word; returns it and the trimmed rest.
fn split_word(text: &str) -> (&str, &str) {
    let text = text.trim_start();
    match text.find(|c: char| c.is_ascii_whitespace()) {
        Some(i) => {
            let (word, rest) = text.split_at(i);
            (word, rest.trim())
        }
        None => (text, ""),
    }
}

impl<'a> Command<'a> {
    /// Parses one line (surrounding whitespace ignored).
    pub fn parse(line: &'a str) -> Result<Command<'a>, ParseError> {
        let (name, rest) = split_word(line.trim());
        if name.is_empty() {
            return Err(ParseError::Empty);
        }
        let mut args = rest.split_ascii_whitespace();
        let mut arg = || args.next();
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        let cmd = if is("HELP") || name == "?" {
            Command::Help
        } else if is("SYSINFO") {
            Command::SysInfo
        } else if is("GET_TEMP") {
            Command::GetTemp
        } else if is("GET_SUPPLY") {
            Command::GetSupply
        } else if is("GET_USB") {
            Command::GetUsb
        } else if is("SET_CH") {
            let target = parse_target(arg(), USAGE_SET_CH, false)?;
            let value = arg().ok_or(invalid("missing value", USAGE_SET_CH))?;
            let on = parse_on_off(value)
                .ok_or(invalid("invalid value (0, 1, ON or OFF)", USAGE_SET_CH))?;
            Command::SetCh(target, on)
        } else if is("GET_CH") {
            Command::GetCh(parse_target(arg(), USAGE_GET_CH, false)?)
        } else if is("OC_STATUS") {
            Command::OcStatus
        } else if is("OC_RESET") {
            Command::OcReset
        } else if is("READ_HLW8032") {
            Command::ReadHlw(parse_target(arg(), USAGE_READ, true)?)
        } else if is("CALIBRATE") {
            let ch = arg()
                .and_then(parse_outlet)
                .ok_or(invalid("invalid channel (1-8)", USAGE_CAL))?;
            let v = arg()
                .and_then(parse_finite)
                .ok_or(invalid("invalid voltage", USAGE_CAL))?;
            let i = arg()
                .and_then(parse_finite)
                .ok_or(invalid("invalid current", USAGE_CAL))?;
            if !(0.0..=400.0).contains(&v) {
                return Err(invalid("voltage out of range (0-400 V)", USAGE_CAL));
            }
            if !(0.0..=100.0).contains(&i) {
                return Err(invalid("current out of range (0-100 A)", USAGE_CAL));
            }
            Command::Calibrate(ch, v, i)
        } else if is("SHOW_CALIB") {
            Command::ShowCalib(parse_target(arg(), USAGE_SHOW_CAL, true)?)
        } else if is("NETINFO") {
            Command::NetInfo
        } else if let Some((field, usage)) = [
            ("SET_IP", NetField::Ip, "SET_IP <a.b.c.d>"),
            ("SET_SN", NetField::Subnet, "SET_SN <a.b.c.d>"),
            ("SET_GW", NetField::Gateway, "SET_GW <a.b.c.d>"),
            ("SET_DNS", NetField::Dns, "SET_DNS <a.b.c.d>"),
        ]
        .into_iter()
        .find(|(n, _, _)| is(n))
        .map(|(_, f, u)| (f, u))
        {
            let addr = arg()
                .and_then(parse_ipv4)
                .ok_or(invalid("invalid address", usage))?;
            Command::SetNet(field, addr)
        } else if is("CONFIG_NETWORK") {
            let spec = arg().ok_or(invalid("missing settings", USAGE_NETWORK))?;
            let mut parts = spec.split('$');
            let mut addrs = [[0u8; 4]; 4];
            for slot in addrs.iter_mut() {
                *slot = parts
                    .next()
                    .and_then(parse_ipv4)
                    .ok_or(invalid("invalid address", USAGE_NETWORK))?;
            }
            if parts.next().is_some() {
                return Err(invalid("too many addresses", USAGE_NETWORK));
            }
            Command::ConfigNetwork(addrs)
        } else if is("CLR_ERR") {
            Command::ClrErr
        } else if is("RFS") {
            Command::Rfs
        } else if is("REBOOT") {
            Command::Reboot
        } else if is("CONFIG") {
            let (sub, rest) = split_word(rest);
            if sub.eq_ignore_ascii_case("GET") {
                let (key, extra) = split_word(rest);
                if !extra.is_empty() {
                    return Err(invalid("too many arguments", USAGE_CONFIG));
                }
                Command::ConfigGet((!key.is_empty()).then_some(key))
            } else if sub.eq_ignore_ascii_case("SET") {
                let (key, value) = split_word(rest);
                if key.is_empty() {
                    return Err(invalid("missing key", USAGE_CONFIG));
                }
                Command::ConfigSet(key, value)
            } else if sub.eq_ignore_ascii_case("SAVE") && rest.is_empty() {
                Command::ConfigSave
            } else if sub.eq_ignore_ascii_case("DISCARD") && rest.is_empty() {
                Command::ConfigDiscard
            } else {
                return Err(invalid("invalid subcommand", USAGE_CONFIG));
            }
        } else if is("LOG_LEVEL") {
            match arg() {
                None => Command::LogLevel(None),
                Some(a) => match a.parse::<u8>() {
                    Ok(l) if l <= 4 && a.len() == 1 => Command::LogLevel(Some(l)),
                    _ => return Err(invalid("invalid level (0-4)", USAGE_LOG)),
                },
            }
        } else if is("HEALTH") {
            Command::Health
        } else if is("SET_COMMUNITY") {
            let which = match arg() {
                Some(a) if a.eq_ignore_ascii_case("read") => Community::Read,
                Some(a) if a.eq_ignore_ascii_case("write") => Community::Write,
                _ => return Err(invalid("expected read or write", USAGE_COMMUNITY)),
            };
            let text = arg().ok_or(invalid("missing community", USAGE_COMMUNITY))?;
            Command::SetCommunity(which, text)
        } else if is("SET_HTTP_AUTH") {
            match (arg(), arg()) {
                (Some(a), None) if a.eq_ignore_ascii_case("on") => {
                    Command::SetHttpAuth(HttpAuthArg::On)
                }
                (Some(a), None) if a.eq_ignore_ascii_case("off") => {
                    Command::SetHttpAuth(HttpAuthArg::Off)
                }
                (Some(u), Some(p)) => Command::SetHttpAuth(HttpAuthArg::Credentials(u, p)),
                _ => {
                    return Err(invalid(
                        "expected on, off or user and password",
                        USAGE_HTTP_AUTH,
                    ));
                }
            }
        } else {
            return Err(ParseError::Unknown);
        };
        // Commands without (more) arguments reject trailing words, so typos do not pass silently.
        let takes_rest = matches!(
            cmd,
            Command::ConfigGet(_)
                | Command::ConfigSet(..)
                | Command::ConfigSave
                | Command::ConfigDiscard
        );
        if !takes_rest && arg().is_some() {
            return Err(invalid("too many arguments", usage_of(&cmd)));
        }
        Ok(cmd)
    }
}

fn usage_of(cmd: &Command<'_>) -> &'static str {
    match cmd {
        Command::SetCh(..) => USAGE_SET_CH,
        Command::GetCh(_) => USAGE_GET_CH,
        Command::ReadHlw(_) => USAGE_READ,
        Command::Calibrate(..) => USAGE_CAL,
        Command::ShowCalib(_) => USAGE_SHOW_CAL,
        Command::ConfigNetwork(_) => USAGE_NETWORK,
        Command::LogLevel(_) => USAGE_LOG,
        Command::SetCommunity(..) => USAGE_COMMUNITY,
        Command::SetHttpAuth(_) => USAGE_HTTP_AUTH,
        Command::SetNet(..) => "SET_IP|SET_SN|SET_GW|SET_DNS <a.b.c.d>",
        _ => "the command takes no arguments",
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration keys
// ---------------------------------------------------------------------------------------------

/// Keys of `CONFIG GET/SET`, besides `label.1` … `label.8`.
pub const CONFIG_KEYS: &[&str] = &[
    "network.ip",
    "network.subnet",
    "network.gateway",
    "network.dns",
    "network.mac",
    "network.dhcp",
    "identity.device_name",
    "identity.location",
    "identity.temp_unit",
    "ocp.limit_a",
    "logging.level",
    "snmp.read_community",
    "snmp.write_community",
    "http.auth_enabled",
    "http.user",
    "http.password",
    "switch.safe_mask",
    "switch.restore_on_boot",
    "switch.min_toggle_ms",
    "switch.max_simultaneous",
    "switch.brownout_mv",
    "switch.i2c_fault_threshold",
    "health.heartbeat_timeout_ms",
    "health.watchdog_ms",
    "buttons.long_press_ms",
];

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

fn label_index(key: &str) -> Option<usize> {
    key.get(..6).filter(|p| p.eq_ignore_ascii_case("label."))?;
    parse_outlet(key.get(6..)?).map(|o| o.index())
}

/// Writes the value of `key`; `Ok(false)` if there is no such key.
fn write_key(w: &mut impl Write, cfg: &PduConfig, key: &str) -> Result<bool, fmt::Error> {
    if let Some(i) = label_index(key) {
        write!(w, "{}", cfg.labels.get(i).map(|l| l.as_str()).unwrap_or(""))?;
        return Ok(true);
    }
    let Some(key) = CONFIG_KEYS.iter().find(|k| k.eq_ignore_ascii_case(key)) else {
        return Ok(false);
    };
    let (n, id, sw) = (&cfg.network, &cfg.identity, &cfg.switch);
    match *key {
        "network.ip" => write!(w, "{}", Ipv4(n.ip)),
        "network.subnet" => write!(w, "{}", Ipv4(n.subnet)),
        "network.gateway" => write!(w, "{}", Ipv4(n.gateway)),
        "network.dns" => write!(w, "{}", Ipv4(n.dns)),
        "network.mac" => write!(w, "{}", Mac(n.mac)),
        "network.dhcp" => w.write_str(on_off(n.dhcp)),
        "identity.device_name" => w.write_str(&id.device_name),
        "identity.location" => w.write_str(&id.location),
        "identity.temp_unit" => w.write_char(id.temp_unit),
        "ocp.limit_a" => write!(w, "{}", TextNum(cfg.ocp.limit_a, 1)),
        "logging.level" => write!(w, "{}", cfg.logging.level),
        "snmp.read_community" => w.write_str(&cfg.snmp.read_community),
        "snmp.write_community" => w.write_str(&cfg.snmp.write_community),
        "http.auth_enabled" => w.write_str(on_off(cfg.http.auth_enabled)),
        "http.user" => w.write_str(&cfg.http.user),
        "http.password" => w.write_str("********"),
        "switch.safe_mask" => write!(w, "0x{:02X}", sw.safe_mask.0),
        "switch.restore_on_boot" => w.write_str(on_off(sw.restore_on_boot)),
        "switch.min_toggle_ms" => write!(w, "{}", sw.min_toggle_ms),
        "switch.max_simultaneous" => write!(w, "{}", sw.max_simultaneous),
        "switch.brownout_mv" => write!(w, "{}", sw.brownout_mv),
        "switch.i2c_fault_threshold" => write!(w, "{}", sw.i2c_fault_threshold),
        "health.heartbeat_timeout_ms" => write!(w, "{}", cfg.health.heartbeat_timeout_ms),
        "health.watchdog_ms" => write!(w, "{}", cfg.health.watchdog_ms),
        "buttons.long_press_ms" => write!(w, "{}", cfg.buttons.long_press_ms),
        _ => return Ok(false),
    }?;
    Ok(true)
}

/// Why a `CONFIG SET` value was refused.
type SetError = &'static str;

fn parse_bool(v: &str) -> Result<bool, SetError> {
    for (t, b) in [
        ("on", true),
        ("off", false),
        ("1", true),
        ("0", false),
        ("true", true),
        ("false", false),
    ] {
        if v.eq_ignore_ascii_case(t) {
            return Ok(b);
        }
    }
    Err("expected on or off")
}

fn parse_range<T: core::str::FromStr + PartialOrd>(
    v: &str,
    lo: T,
    hi: T,
    msg: SetError,
) -> Result<T, SetError> {
    v.parse::<T>()
        .ok()
        .filter(|x| *x >= lo && *x <= hi)
        .ok_or(msg)
}

fn parse_mac(v: &str) -> Result<[u8; 6], SetError> {
    let mut mac = [0u8; 6];
    let mut parts = v.split(':');
    for b in mac.iter_mut() {
        let p = parts
            .next()
            .filter(|p| p.len() == 2)
            .ok_or("expected XX:XX:XX:XX:XX:XX")?;
        *b = u8::from_str_radix(p, 16).map_err(|_| "expected XX:XX:XX:XX:XX:XX")?;
    }
    if parts.next().is_some() {
        return Err("expected XX:XX:XX:XX:XX:XX");
    }
    Ok(mac)
}

fn parse_mask(v: &str) -> Result<OutletMask, SetError> {
    let parsed = match v.get(..2) {
        Some(p) if p.eq_ignore_ascii_case("0x") => {
            v.get(2..).and_then(|h| u8::from_str_radix(h, 16).ok())
        }
        _ => v.parse::<u8>().ok(),
    };
    parsed.map(OutletMask).ok_or("expected 0-255 or 0x00-0xFF")
}

/// Free text: at most `N` bytes, no control characters; `spaces` whether blanks are allowed.
fn text<const N: usize>(
    v: &str,
    min: usize,
    spaces: bool,
) -> Result<heapless::String<N>, SetError> {
    if v.len() < min {
        return Err("too short");
    }
    if v.chars()
        .any(|c| c.is_control() || (!spaces && c.is_whitespace()))
    {
        return Err(if spaces {
            "control characters not allowed"
        } else {
            "spaces not allowed"
        });
    }
    heapless::String::try_from(v).map_err(|_| "too long")
}

/// Applies `CONFIG SET key value` to `cfg`.
fn set_key(cfg: &mut PduConfig, key: &str, v: &str) -> Result<(), SetError> {
    if let Some(i) = label_index(key) {
        let label = text::<32>(v, 0, true)?;
        if let Some(slot) = cfg.labels.get_mut(i) {
            *slot = label;
        }
        return Ok(());
    }
    let Some(key) = CONFIG_KEYS.iter().find(|k| k.eq_ignore_ascii_case(key)) else {
        return Err("unknown key (CONFIG GET lists them)");
    };
    let ip = || parse_ipv4(v).ok_or("expected a.b.c.d");
    match *key {
        "network.ip" => cfg.network.ip = ip()?,
        "network.subnet" => cfg.network.subnet = ip()?,
        "network.gateway" => cfg.network.gateway = ip()?,
        "network.dns" => cfg.network.dns = ip()?,
        "network.mac" => cfg.network.mac = parse_mac(v)?,
        "network.dhcp" => cfg.network.dhcp = parse_bool(v)?,
        "identity.device_name" => cfg.identity.device_name = text(v, 1, true)?,
        "identity.location" => cfg.identity.location = text(v, 0, true)?,
        "identity.temp_unit" => {
            cfg.identity.temp_unit = super::http::parse_temp_unit(v).ok_or("expected C, F or K")?
        }
        "ocp.limit_a" => {
            cfg.ocp.limit_a = parse_finite(v)
                .filter(|a| (1.0..=32.0).contains(a))
                .ok_or("expected 1.0-32.0 A")?
        }
        "logging.level" => cfg.logging.level = parse_range(v, 0, 4, "expected 0-4")?,
        "snmp.read_community" => cfg.snmp.read_community = text(v, 1, false)?,
        "snmp.write_community" => cfg.snmp.write_community = text(v, 1, false)?,
        "http.auth_enabled" => cfg.http.auth_enabled = parse_bool(v)?,
        "http.user" => cfg.http.user = user_name(v)?,
        "http.password" => cfg.http.password = text(v, 1, true)?,
        "switch.safe_mask" => cfg.switch.safe_mask = parse_mask(v)?,
        "switch.restore_on_boot" => cfg.switch.restore_on_boot = parse_bool(v)?,
        "switch.min_toggle_ms" => {
            cfg.switch.min_toggle_ms = parse_range(v, 0, 10_000, "expected 0-10000 ms")?
        }
        "switch.max_simultaneous" => {
            cfg.switch.max_simultaneous = parse_range(v, 1, CHANNELS as u8, "expected 1-8")?
        }
        "switch.brownout_mv" => {
            cfg.switch.brownout_mv = parse_range(v, 0, 15_000, "expected 0-15000 mV")?
        }
        "switch.i2c_fault_threshold" => {
            cfg.switch.i2c_fault_threshold = parse_range(v, 1, 255, "expected 1-255")?
        }
        "health.heartbeat_timeout_ms" => {
            cfg.health.heartbeat_timeout_ms =
                parse_range(v, 100, 600_000, "expected 100-600000 ms")?
        }
        "health.watchdog_ms" => {
            cfg.health.watchdog_ms = parse_range(v, 100, 600_000, "expected 100-600000 ms")?
        }
        "buttons.long_press_ms" => {
            cfg.buttons.long_press_ms = parse_range(v, 100, 10_000, "expected 100-10000 ms")?
        }
        _ => return Err("unknown key (CONFIG GET lists them)"),
    }
    Ok(())
}

/// An HTTP user name: 1-16 bytes, no blanks, no `:` (Basic auth's separator).
fn user_name(v: &str) -> Result<heapless::String<16>, SetError> {
    if v.contains(':') {
        return Err("':' not allowed");
    }
    text(v, 1, false)
}

// ---------------------------------------------------------------------------------------------
// Executor
// ---------------------------------------------------------------------------------------------

/// The one failure the console cannot turn into a reply line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConsoleError {
    /// The output buffer cannot hold even a short error line.
    OutputTooSmall,
}

impl fmt::Display for ConsoleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConsoleError::OutputTooSmall => f.write_str("console output buffer too small"),
        }
    }
}

impl core::error::Error for ConsoleError {}

/// The result of one line.
#[must_use]
#[derive(Debug, Clone, PartialEq)]
pub struct Executed {
    /// Reply bytes at the start of the output buffer, to send now.
    pub written: usize,
    /// Forward these, in order, to their owner tasks.
    pub intents: heapless::Vec<Intent, MAX_INTENTS>,
    /// Call [`Followup::finish`] once the switch intents were answered.
    pub followup: Option<Followup>,
}

/// Renders the part of a reply that depends on SwitchTask's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Followup(Then);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    SetCh(Target, bool),
    OcReset,
    ClrErr,
}

/// Human text for a refusal.
fn refusal(status: SwitchStatus) -> &'static str {
    match status {
        SwitchStatus::Ok => "ok",
        SwitchStatus::Busy => "switch task busy",
        SwitchStatus::Preempted => "preempted by a higher-priority request",
        SwitchStatus::Denied => "denied for the console",
        SwitchStatus::Interlocked => "interlocked with another outlet",
        SwitchStatus::Timeout => "toggled too recently (timed out)",
        SwitchStatus::TooManyToggles => "too many outlets at once",
        SwitchStatus::OverCurrentLockout => "overcurrent lockout active - reduce load first",
        SwitchStatus::BrownOut => "supply too low (brown-out guard)",
        SwitchStatus::FaultSafe => "switch in FAULT_SAFE (CLR_ERR first)",
        SwitchStatus::Invalid => "invalid request",
        SwitchStatus::IoError => "relay expander I/O error",
    }
}

impl Followup {
    /// Writes the rest of the reply into `out`. `replies` are SwitchTask's answers to the
    /// `Intent::Switch` entries, in order (missing answers read as "switch task busy").
    pub fn finish(&self, replies: &[SwitchReply], out: &mut [u8]) -> Result<usize, ConsoleError> {
        let status = replies.first().map_or(SwitchStatus::Busy, |r| r.status);
        render(out, |o| match (self.0, status) {
            (Then::SetCh(Target::One(ch), on), SwitchStatus::Ok) => o.echo(format_args!(
                "CH{} = {}",
                ch.number(),
                if on { "ON" } else { "OFF" }
            )),
            (Then::SetCh(Target::All, on), SwitchStatus::Ok) => o.echo(format_args!(
                "All channels set to {}",
                if on { "ON" } else { "OFF" }
            )),
            (Then::SetCh(Target::One(ch), _), s) => o.error(format_args!(
                "CH{} not switched: {}",
                ch.number(),
                refusal(s)
            )),
            (Then::SetCh(Target::All, _), s) => {
                o.error(format_args!("Channels not switched: {}", refusal(s)))
            }
            (Then::OcReset, SwitchStatus::Ok) => {
                o.echo(format_args!("Overcurrent lockout cleared"))
            }
            (Then::OcReset, s) => o.error(format_args!(
                "Overcurrent lockout not cleared: {}",
                refusal(s)
            )),
            (Then::ClrErr, SwitchStatus::Ok) => o.echo(format_args!("Error LED cleared")),
            (Then::ClrErr, s) => o.error(format_args!(
                "Error LED cleared; switch fault not cleared: {}",
                refusal(s)
            )),
        })
    }
}

/// Reply lines with the device's prefixes.
struct Out<'w, 'b> {
    w: &'w mut SliceWriter<'b>,
}

impl Out<'_, '_> {
    fn echo(&mut self, args: fmt::Arguments<'_>) -> fmt::Result {
        write!(self.w, "\t[ECHO] {args}\r\n")
    }
    fn error(&mut self, args: fmt::Arguments<'_>) -> fmt::Result {
        write!(self.w, "\t[ERROR] {args}\r\n")
    }
}

/// Runs `body` into `out`; a reply that does not fit becomes one error line.
fn render(
    out: &mut [u8],
    body: impl FnOnce(&mut Out<'_, '_>) -> fmt::Result,
) -> Result<usize, ConsoleError> {
    let mut w = SliceWriter::new(out);
    if body(&mut Out { w: &mut w }).is_ok() {
        return Ok(w.len());
    }
    let mut w = SliceWriter::new(out);
    match (Out { w: &mut w }).error(format_args!("reply too long for the output buffer")) {
        Ok(()) => Ok(w.len()),
        Err(_) => Err(ConsoleError::OutputTooSmall),
    }
}

/// ConsoleTask's core: the line editor and the pending configuration.
#[derive(Debug, Clone, Default)]
pub struct Console {
    editor: LineEditor<LINE_MAX>,
    pending: Option<PduConfig>,
}

impl Console {
    /// A console with an empty line and no pending configuration.
    pub fn new() -> Self {
        Self::default()
    }

    /// The pending configuration, if `CONFIG SET` (or a shorthand) changed one.
    pub fn pending(&self) -> Option<&PduConfig> {
        self.pending.as_ref()
    }

    /// Feeds one received byte; when it completes a line, executes it (or writes the line
    /// error) and returns what to send and forward.
    pub fn push_byte(
        &mut self,
        byte: u8,
        snap: &Snapshot,
        out: &mut [u8],
    ) -> Result<Option<Executed>, ConsoleError> {
        match self.editor.push(byte) {
            None => Ok(None),
            Some(Ok(line)) => self.execute(&line, snap, out).map(Some),
            Some(Err(e)) => {
                warn!("console: rejected line: {}", e);
                let written = render(out, |o| o.error(format_args!("{e}")))?;
                Ok(Some(Executed {
                    written,
                    intents: heapless::Vec::new(),
                    followup: None,
                }))
            }
        }
    }

    /// Executes one line.
    pub fn execute(
        &mut self,
        line: &str,
        snap: &Snapshot,
        out: &mut [u8],
    ) -> Result<Executed, ConsoleError> {
        let mut intents = heapless::Vec::new();
        let mut followup = None;
        let cmd = match Command::parse(line) {
            Ok(c) => c,
            Err(ParseError::Empty) => {
                return Ok(Executed {
                    written: 0,
                    intents,
                    followup,
                });
            }
            Err(e) => {
                let written = render(out, |o| o.error(format_args!("{e}")))?;
                return Ok(Executed {
                    written,
                    intents,
                    followup,
                });
            }
        };
        // The keyword only: arguments can be secrets (`SET_HTTP_AUTH`, `SET_COMMUNITY`).
        debug!("console: {}", line.split_whitespace().next().unwrap_or(""));
        let mut intent = |i: Intent| {
            let _ = intents.push(i);
        };
        let written = match cmd {
            Command::SetCh(target, on) => {
                let req = match target {
                    Target::One(ch) => SwitchRequest::set(Source::Console, ch, on),
                    Target::All => SwitchRequest::new(
                        Source::Console,
                        if on {
                            SwitchOp::AllOn
                        } else {
                            SwitchOp::AllOff
                        },
                    ),
                };
                intent(Intent::Switch(req));
                followup = Some(Followup(Then::SetCh(target, on)));
                0
            }
            Command::OcReset => {
                intent(Intent::Switch(SwitchRequest::new(
                    Source::Console,
                    SwitchOp::ResetOverCurrent,
                )));
                followup = Some(Followup(Then::OcReset));
                0
            }
            Command::ClrErr => {
                intent(Intent::Switch(SwitchRequest::new(
                    Source::Console,
                    SwitchOp::ClearFault,
                )));
                intent(Intent::ClearErrors);
                followup = Some(Followup(Then::ClrErr));
                0
            }
            Command::Reboot => {
                let dropped = self.pending.take().is_some();
                intent(Intent::Reboot);
                render(out, |o| {
                    if dropped {
                        o.echo(format_args!("Unsaved configuration changes discarded"))?;
                    }
                    o.echo(format_args!("Rebooting system..."))
                })?
            }
            Command::Rfs => {
                self.pending = None;
                intent(Intent::FactoryReset);
                intent(Intent::Reboot);
                render(out, |o| {
                    o.echo(format_args!("Restoring factory settings and rebooting..."))
                })?
            }
            Command::SetNet(field, addr) => {
                let apply = |cfg: &mut PduConfig| match field {
                    NetField::Ip => cfg.network.ip = addr,
                    NetField::Subnet => cfg.network.subnet = addr,
                    NetField::Gateway => cfg.network.gateway = addr,
                    NetField::Dns => cfg.network.dns = addr,
                };
                intent(Intent::SaveConfig(self.save_now(snap, apply)));
                let what = match field {
                    NetField::Ip => "IP address",
                    NetField::Subnet => "Subnet mask",
                    NetField::Gateway => "Gateway",
                    NetField::Dns => "DNS server",
                };
                render(out, |o| {
                    o.echo(format_args!(
                        "{what} set to {} (takes effect after reboot)",
                        Ipv4(addr)
                    ))
                })?
            }
            Command::ConfigNetwork([ip, sn, gw, dns]) => {
                intent(Intent::SaveConfig(self.save_now(snap, |cfg| {
                    cfg.network.ip = ip;
                    cfg.network.subnet = sn;
                    cfg.network.gateway = gw;
                    cfg.network.dns = dns;
                })));
                render(out, |o| {
                    o.echo(format_args!(
                        "Network configured: IP={} SN={} GW={} DNS={} (takes effect after reboot)",
                        Ipv4(ip),
                        Ipv4(sn),
                        Ipv4(gw),
                        Ipv4(dns)
                    ))
                })?
            }
            Command::Calibrate(ch, volts, amps) => match calibrate(snap, ch, volts, amps) {
                Ok(cal) => {
                    intent(Intent::SaveConfig(self.save_now(snap, |cfg| {
                        if let Some(slot) = cfg.calibration.get_mut(ch.index()) {
                            *slot = cal;
                        }
                    })));
                    render(out, |o| {
                        o.echo(format_args!(
                            "CH{} calibrated: {}",
                            ch.number(),
                            CalibText(&cal)
                        ))
                    })?
                }
                Err(why) => render(out, |o| {
                    o.error(format_args!("CH{} not calibrated: {why}", ch.number()))
                })?,
            },
            Command::ConfigSet(key, value) => {
                let mut cfg = self.pending.clone().unwrap_or_else(|| snap.config.clone());
                match set_key(&mut cfg, key, value) {
                    Ok(()) => {
                        self.pending = Some(cfg);
                        render(out, |o| {
                            o.echo(format_args!("{key} set (pending; CONFIG SAVE to apply)"))
                        })?
                    }
                    Err(why) => render(out, |o| o.error(format_args!("{key}: {why}")))?,
                }
            }
            Command::LogLevel(Some(level)) => self.set_pending(snap, out, "Log level", |c| {
                c.logging.level = level;
                Ok(())
            })?,
            Command::SetCommunity(which, value) => {
                let name = match which {
                    Community::Read => "snmp.read_community",
                    Community::Write => "snmp.write_community",
                };
                self.set_pending(snap, out, "SNMP community", |c| set_key(c, name, value))?
            }
            Command::SetHttpAuth(arg) => {
                self.set_pending(snap, out, "HTTP authentication", |c| match arg {
                    HttpAuthArg::On => {
                        c.http.auth_enabled = true;
                        Ok(())
                    }
                    HttpAuthArg::Off => {
                        c.http.auth_enabled = false;
                        Ok(())
                    }
                    HttpAuthArg::Credentials(user, pass) => {
                        c.http.user = user_name(user)?;
                        c.http.password = text(pass, 1, false)?;
                        c.http.auth_enabled = true;
                        Ok(())
                    }
                })?
            }
            Command::ConfigSave => match self.pending.take() {
                Some(cfg) => {
                    intent(Intent::SaveConfig(cfg));
                    render(out, |o| o.echo(format_args!("Configuration saved")))?
                }
                None => render(out, |o| o.echo(format_args!("Nothing to save")))?,
            },
            Command::ConfigDiscard => {
                let had = self.pending.take().is_some();
                render(out, |o| {
                    o.echo(format_args!(
                        "{}",
                        if had {
                            "Pending changes discarded"
                        } else {
                            "Nothing to discard"
                        }
                    ))
                })?
            }
            other => {
                let pending = self.pending.as_ref();
                render(out, |o| show(o, other, snap, pending))?
            }
        };
        Ok(Executed {
            written,
            intents,
            followup,
        })
    }

    /// The configuration in force with one change, for commands that save at once; the same
    /// change is applied to the pending copy so a later `CONFIG SAVE` does not undo it.
    fn save_now(&mut self, snap: &Snapshot, change: impl Fn(&mut PduConfig)) -> PduConfig {
        if let Some(p) = self.pending.as_mut() {
            change(p);
        }
        let mut cfg = snap.config.clone();
        change(&mut cfg);
        cfg
    }

    fn set_pending(
        &mut self,
        snap: &Snapshot,
        out: &mut [u8],
        what: &str,
        change: impl FnOnce(&mut PduConfig) -> Result<(), SetError>,
    ) -> Result<usize, ConsoleError> {
        let mut cfg = self.pending.clone().unwrap_or_else(|| snap.config.clone());
        match change(&mut cfg) {
            Ok(()) => {
                self.pending = Some(cfg);
                render(out, |o| {
                    o.echo(format_args!("{what} set (pending; CONFIG SAVE to apply)"))
                })
            }
            Err(why) => render(out, |o| o.error(format_args!("{what}: {why}"))),
        }
    }
}

/// The new calibration of `ch` so that its present reading becomes the references.
fn calibrate(
    snap: &Snapshot,
    ch: Outlet,
    volts: f32,
    amps: f32,
) -> Result<ChannelCalibration, &'static str> {
    let t = snap.telemetry.get(ch.index()).ok_or("no such channel")?;
    if t.degraded {
        return Err("no valid reading (meter degraded)");
    }
    let old = *snap
        .config
        .calibration
        .get(ch.index())
        .ok_or("no such channel")?;
    let mut cal = old;
    // raw × k = reading + offset
    let v_raw = t.voltage_v + old.v_offset;
    let i_raw = t.current_a + old.i_offset;
    if volts == 0.0 {
        cal.v_offset = v_raw;
    } else {
        if !v_raw.is_finite() || v_raw < 1.0 {
            return Err("voltage reading below 1 V");
        }
        cal.kv = old.kv * (volts + old.v_offset) / v_raw;
    }
    if amps == 0.0 {
        cal.i_offset = i_raw;
    } else {
        if !i_raw.is_finite() || i_raw < 0.01 {
            return Err("current reading below 0.01 A (apply a load)");
        }
        cal.ki = old.ki * (amps + old.i_offset) / i_raw;
    }
    let sane = |k: f32| k.is_finite() && k > 0.0 && k < 100.0;
    if !sane(cal.kv) || !sane(cal.ki) || !cal.v_offset.is_finite() || !cal.i_offset.is_finite() {
        return Err("resulting factor out of range");
    }
    Ok(cal)
}

struct CalibText<'a>(&'a ChannelCalibration);

impl fmt::Display for CalibText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0;
        write!(
            f,
            "Kv={} Ki={} Voff={} V Ioff={} A",
            TextNum(c.kv, 4),
            TextNum(c.ki, 4),
            TextNum(c.v_offset, 3),
            TextNum(c.i_offset, 3)
        )
    }
}

fn switch_state_name(s: SwitchState) -> &'static str {
    match s {
        SwitchState::Init => "INIT",
        SwitchState::Ready => "READY",
        SwitchState::FaultSafe => "FAULT_SAFE",
    }
}

/// Read-only commands.
fn show(
    o: &mut Out<'_, '_>,
    cmd: Command<'_>,
    snap: &Snapshot,
    pending: Option<&PduConfig>,
) -> fmt::Result {
    let cfg = &snap.config;
    match cmd {
        Command::Help => {
            o.echo(format_args!("=== ENERGIS PDU Console Commands ==="))?;
            for (usage, what) in HELP {
                o.echo(format_args!("{usage:<40} {what}"))?;
            }
            o.echo(format_args!("====================================="))
        }
        Command::SysInfo => {
            o.echo(format_args!("=== System Information ==="))?;
            o.echo(format_args!("Device Serial: {}", snap.serial))?;
            o.echo(format_args!("Firmware Ver: {}", snap.firmware_version))?;
            o.echo(format_args!("Hardware Ver: {HARDWARE_VERSION}"))?;
            o.echo(format_args!("Device Name: {}", cfg.identity.device_name))?;
            o.echo(format_args!("Uptime: {} s", snap.uptime_ms / 1000))?;
            o.echo(format_args!(
                "Switch State: {}",
                switch_state_name(snap.switch_state)
            ))?;
            o.echo(format_args!("USB Voltage: {} V", TextNum(snap.usb_v, 2)))?;
            o.echo(format_args!("12V Supply: {} V", TextNum(snap.supply_v, 2)))?;
            o.echo(format_args!(
                "Die Temperature: {} °C",
                TextNum(snap.temperature_c, 2)
            ))?;
            o.echo(format_args!("Log Level: {}", cfg.logging.level))?;
            o.echo(format_args!("=========================="))
        }
        Command::GetTemp => o.echo(format_args!(
            "Die Temperature: {} °C",
            TextNum(snap.temperature_c, 2)
        )),
        Command::GetSupply => o.echo(format_args!("12V Supply: {} V", TextNum(snap.supply_v, 2))),
        Command::GetUsb => o.echo(format_args!("USB Voltage: {} V", TextNum(snap.usb_v, 2))),
        Command::GetCh(target) => {
            for ch in target.outlets() {
                let on = snap.outlets.contains(ch);
                o.echo(format_args!(
                    "CH{}: {}",
                    ch.number(),
                    if on { "ON" } else { "OFF" }
                ))?;
            }
            Ok(())
        }
        Command::OcStatus => {
            let ocp = &snap.ocp;
            let (warn, crit, recover) = ocp_thresholds(ocp.limit_a);
            o.echo(format_args!("=== Overcurrent Protection ==="))?;
            o.echo(format_args!("State: {}", ocp_state_name(ocp.state)))?;
            o.echo(format_args!(
                "Total Current: {} A",
                TextNum(ocp.total_current_a, 2)
            ))?;
            o.echo(format_args!(
                "Limit: {} A ({})",
                TextNum(ocp.limit_a, 2),
                region(ocp.limit_a)
            ))?;
            o.echo(format_args!("Warning At: {} A", TextNum(warn, 2)))?;
            o.echo(format_args!("Trip At: {} A", TextNum(crit, 2)))?;
            o.echo(format_args!("Recovery Below: {} A", TextNum(recover, 2)))?;
            let allowed = ocp.state != OcpState::Lockout;
            o.echo(format_args!(
                "Switching Allowed: {}",
                if allowed { "YES" } else { "NO" }
            ))?;
            o.echo(format_args!("Trip Count: {}", ocp.trip_count))?;
            match ocp.last_tripped_channel {
                0 => o.echo(format_args!("Last Tripped Channel: none"))?,
                n => o.echo(format_args!(
                    "Last Tripped Channel: CH{n} at {} ms",
                    ocp.last_trip_ms
                ))?,
            }
            o.echo(format_args!("=============================="))
        }
        Command::ReadHlw(target) => {
            for ch in target.outlets() {
                match snap.telemetry.get(ch.index()) {
                    Some(t) if !t.degraded => o.echo(format_args!(
                        "CH{}: V={} V, I={} A, P={} W, PF={}, E={} Wh",
                        ch.number(),
                        TextNum(t.voltage_v, 2),
                        TextNum(t.current_a, 3),
                        TextNum(t.power_w, 2),
                        TextNum(t.power_factor, 3),
                        TextNum(t.energy_wh, 3)
                    ))?,
                    _ => o.echo(format_args!(
                        "CH{}: No valid telemetry data available",
                        ch.number()
                    ))?,
                }
            }
            Ok(())
        }
        Command::ShowCalib(target) => {
            for ch in target.outlets() {
                if let Some(c) = cfg.calibration.get(ch.index()) {
                    o.echo(format_args!("CH{}: {}", ch.number(), CalibText(c)))?;
                }
            }
            Ok(())
        }
        Command::NetInfo => {
            let n = &cfg.network;
            o.echo(format_args!("=== Network Information ==="))?;
            o.echo(format_args!("IP: {}", Ipv4(n.ip)))?;
            o.echo(format_args!("Subnet: {}", Ipv4(n.subnet)))?;
            o.echo(format_args!("Gateway: {}", Ipv4(n.gateway)))?;
            o.echo(format_args!("DNS: {}", Ipv4(n.dns)))?;
            o.echo(format_args!("MAC: {}", Mac(n.mac)))?;
            o.echo(format_args!("DHCP: {}", if n.dhcp { "ON" } else { "OFF" }))?;
            o.echo(format_args!("==========================="))
        }
        Command::ConfigGet(key) => {
            let shown = pending.unwrap_or(cfg);
            match key {
                Some(key) => {
                    let mut value = heapless::String::<64>::new();
                    if write_key(&mut value, shown, key)? {
                        o.echo(format_args!("{key} = {value}"))
                    } else {
                        o.error(format_args!("{key}: unknown key (CONFIG GET lists them)"))
                    }
                }
                None => {
                    if pending.is_some() {
                        o.echo(format_args!(
                            "(unsaved changes pending; CONFIG SAVE to apply)"
                        ))?;
                    }
                    for key in CONFIG_KEYS {
                        let mut value = heapless::String::<64>::new();
                        write_key(&mut value, shown, key)?;
                        o.echo(format_args!("{key} = {value}"))?;
                    }
                    for (i, label) in shown.labels.iter().enumerate() {
                        o.echo(format_args!("label.{} = {}", i + 1, label))?;
                    }
                    Ok(())
                }
            }
        }
        Command::LogLevel(None) => o.echo(format_args!(
            "Log level: {}",
            pending.unwrap_or(cfg).logging.level
        )),
        Command::Health => {
            let valid = snap.telemetry.iter().filter(|t| !t.degraded).count();
            o.echo(format_args!("=== Health ==="))?;
            o.echo(format_args!(
                "Switch: {}",
                switch_state_name(snap.switch_state)
            ))?;
            o.echo(format_args!("Meter: {valid}/{CHANNELS} channels valid"))?;
            o.echo(format_args!(
                "Overcurrent: {} ({} A of {} A)",
                ocp_state_name(snap.ocp.state),
                TextNum(snap.ocp.total_current_a, 2),
                TextNum(snap.ocp.limit_a, 2)
            ))?;
            o.echo(format_args!("12V Supply: {} V", TextNum(snap.supply_v, 2)))?;
            o.echo(format_args!(
                "Die Temperature: {} °C",
                TextNum(snap.temperature_c, 2)
            ))?;
            o.echo(format_args!("Uptime: {} s", snap.uptime_ms / 1000))?;
            o.echo(format_args!(
                "Pending Config: {}",
                if pending.is_some() { "yes" } else { "no" }
            ))?;
            o.echo(format_args!("=============="))
        }
        // Commands with side effects are handled by `Console::execute`.
        _ => o.error(format_args!("internal: command not handled")),
    }
}

#[cfg(test)]
mod tests;
