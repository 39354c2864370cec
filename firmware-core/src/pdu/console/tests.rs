use super::*;
use crate::pdu::http::tests::{locked_out, ok_reply, snapshot};
use proptest::prelude::*;

struct Run {
    text: heapless::String<RECOMMENDED_OUT_LEN>,
    intents: heapless::Vec<Intent, MAX_INTENTS>,
    followup: Option<Followup>,
}

impl Run {
    /// The reply lines without prefix and line ending; errors keep an `ERROR: ` marker.
    fn lines(&self) -> heapless::Vec<heapless::String<128>, 64> {
        self.text
            .split_terminator("\r\n")
            .map(|l| {
                let mut s = heapless::String::new();
                if let Some(t) = l.strip_prefix("\t[ECHO] ") {
                    s.push_str(t).unwrap();
                } else if let Some(t) = l.strip_prefix("\t[ERROR] ") {
                    s.push_str("ERROR: ").unwrap();
                    s.push_str(t).unwrap();
                } else {
                    panic!("line without prefix: {l:?}");
                }
                s
            })
            .collect()
    }
    #[track_caller]
    fn has(&self, line: &str) -> bool {
        self.lines().iter().any(|l| l == line)
    }
    #[track_caller]
    fn error(&self) -> bool {
        self.text.contains("\t[ERROR] ")
    }
    #[track_caller]
    fn saved(&self) -> &PduConfig {
        match self.intents.iter().find_map(|i| match i {
            Intent::SaveConfig(c) => Some(c),
            _ => None,
        }) {
            Some(c) => c,
            None => panic!("no SaveConfig in {:?}", self.intents),
        }
    }
    #[track_caller]
    fn finish(&self, replies: &[SwitchReply]) -> heapless::String<512> {
        let mut out = [0u8; 512];
        let n = self
            .followup
            .expect("a follow-up")
            .finish(replies, &mut out)
            .unwrap();
        heapless::String::try_from(core::str::from_utf8(&out[..n]).unwrap()).unwrap()
    }
}

#[track_caller]
fn run_on(console: &mut Console, line: &str, snap: &Snapshot) -> Run {
    let mut out = [0u8; RECOMMENDED_OUT_LEN];
    let e = console.execute(line, snap, &mut out).expect("fits");
    Run {
        text: heapless::String::try_from(core::str::from_utf8(&out[..e.written]).unwrap()).unwrap(),
        intents: e.intents,
        followup: e.followup,
    }
}

#[track_caller]
fn run(line: &str) -> Run {
    run_on(&mut Console::new(), line, &snapshot())
}

fn refused(status: SwitchStatus) -> SwitchReply {
    let mut r = ok_reply(0);
    r.status = status;
    r
}

// ---- line editor ----

fn feed<const N: usize>(
    ed: &mut LineEditor<N>,
    bytes: &[u8],
) -> heapless::Vec<Result<heapless::String<N>, LineError>, 8> {
    bytes.iter().filter_map(|&b| ed.push(b)).collect()
}

#[test]
fn editor_ends_lines_on_cr_lf_and_crlf_once() {
    let mut ed = LineEditor::<16>::new();
    let lines = feed(&mut ed, b"a\rb\nc\r\nd\n\re");
    let texts: heapless::Vec<&str, 8> =
        lines.iter().map(|l| l.as_ref().unwrap().as_str()).collect();
    // "d\n\r": LF ends "d", then CR ends an empty line (LF-CR is not one ending).
    assert_eq!(texts.as_slice(), ["a", "b", "c", "d", ""]);
}

#[test]
fn editor_backspace_removes_whole_characters() {
    let mut ed = LineEditor::<16>::new();
    let lines = feed(&mut ed, "abä\x08\x08x\x7f\x7f\x7fy\r".as_bytes());
    assert_eq!(lines[0].as_ref().unwrap().as_str(), "y");
}

#[test]
fn editor_turns_tabs_into_spaces() {
    let mut ed = LineEditor::<16>::new();
    assert_eq!(
        feed(&mut ed, b"GET_CH\t1\r")[0].as_ref().unwrap().as_str(),
        "GET_CH 1"
    );
}

#[test]
fn editor_rejects_overlong_lines_and_recovers() {
    let mut ed = LineEditor::<4>::new();
    let lines = feed(&mut ed, b"abcdef\x08\x08\x08\rok\r");
    assert_eq!(lines[0], Err(LineError::TooLong));
    assert_eq!(lines[1].as_ref().unwrap().as_str(), "ok");
    // exactly full is fine
    assert_eq!(
        feed(&mut ed, b"abcd\r")[0].as_ref().unwrap().as_str(),
        "abcd"
    );
}

#[test]
fn editor_rejects_invalid_utf8_and_control_characters() {
    let mut ed = LineEditor::<16>::new();
    let lines = feed(&mut ed, b"a\xffb\r\x1b[A\rfine\r");
    assert_eq!(lines[0], Err(LineError::InvalidUtf8));
    assert_eq!(lines[1], Err(LineError::ControlCharacter));
    assert_eq!(lines[2].as_ref().unwrap().as_str(), "fine");
}

#[test]
fn push_byte_executes_lines_and_reports_line_errors() {
    let mut c = Console::new();
    let mut out = [0u8; 512];
    let s = snapshot();
    let mut results = heapless::Vec::<(usize, heapless::String<256>), 4>::new();
    for &b in b"get_ch 1\r\n\xff\r\n" {
        if let Some(e) = c.push_byte(b, &s, &mut out).unwrap() {
            let text = heapless::String::try_from(core::str::from_utf8(&out[..e.written]).unwrap())
                .unwrap();
            results.push((e.intents.len(), text)).unwrap();
        }
    }
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].1.as_str(), "\t[ECHO] CH1: ON\r\n");
    assert_eq!(
        results[1].1.as_str(),
        "\t[ERROR] line is not valid UTF-8\r\n"
    );
}

// ---- parsing ----

#[test]
fn commands_are_case_insensitive() {
    assert_eq!(
        Command::parse("set_ch all On"),
        Ok(Command::SetCh(Target::All, true))
    );
    assert_eq!(
        Command::parse("  Get_Ch 3  "),
        Ok(Command::GetCh(Target::One(Outlet::new(3).unwrap())))
    );
    assert_eq!(Command::parse("help"), Ok(Command::Help));
    assert_eq!(Command::parse("?"), Ok(Command::Help));
}

#[test]
fn malformed_commands_are_parse_errors() {
    for (line, expected) in [
        ("", ParseError::Empty),
        ("   ", ParseError::Empty),
        ("FROB", ParseError::Unknown),
        ("SET_CH", invalid("missing channel", USAGE_SET_CH)),
        (
            "SET_CH 9 ON",
            invalid("invalid channel (1-8 or ALL)", USAGE_SET_CH),
        ),
        (
            "SET_CH 0 ON",
            invalid("invalid channel (1-8 or ALL)", USAGE_SET_CH),
        ),
        ("SET_CH 1", invalid("missing value", USAGE_SET_CH)),
        (
            "SET_CH 1 maybe",
            invalid("invalid value (0, 1, ON or OFF)", USAGE_SET_CH),
        ),
        (
            "SET_CH 1 ON extra",
            invalid("too many arguments", USAGE_SET_CH),
        ),
        (
            "GET_CH x",
            invalid("invalid channel (1-8 or ALL)", USAGE_GET_CH),
        ),
        ("CALIBRATE 1 230", invalid("invalid current", USAGE_CAL)),
        ("CALIBRATE 1 nan 1", invalid("invalid voltage", USAGE_CAL)),
        (
            "CALIBRATE 1 500 1",
            invalid("voltage out of range (0-400 V)", USAGE_CAL),
        ),
        (
            "CALIBRATE 1 230 -1",
            invalid("current out of range (0-100 A)", USAGE_CAL),
        ),
        (
            "SET_IP 1.2.3",
            invalid("invalid address", "SET_IP <a.b.c.d>"),
        ),
        (
            "CONFIG_NETWORK 1.2.3.4$255.0.0.0$1.2.3.1",
            invalid("invalid address", USAGE_NETWORK),
        ),
        (
            "CONFIG_NETWORK 1.2.3.4$255.0.0.0$1.2.3.1$8.8.8.8$x",
            invalid("too many addresses", USAGE_NETWORK),
        ),
        ("CONFIG", invalid("invalid subcommand", USAGE_CONFIG)),
        ("CONFIG SET", invalid("missing key", USAGE_CONFIG)),
        (
            "CONFIG SAVE now",
            invalid("invalid subcommand", USAGE_CONFIG),
        ),
        ("LOG_LEVEL 5", invalid("invalid level (0-4)", USAGE_LOG)),
        (
            "SET_COMMUNITY all x",
            invalid("expected read or write", USAGE_COMMUNITY),
        ),
        (
            "SET_HTTP_AUTH",
            invalid("expected on, off or user and password", USAGE_HTTP_AUTH),
        ),
        (
            "REBOOT now",
            invalid("too many arguments", "the command takes no arguments"),
        ),
    ] {
        assert_eq!(Command::parse(line), Err(expected), "{line:?}");
    }
}

#[test]
fn malformed_command_replies_with_error_and_usage() {
    let r = run("SET_CH 9 ON");
    assert_eq!(
        r.text.as_str(),
        "\t[ERROR] invalid channel (1-8 or ALL). Usage: SET_CH <1-8|ALL> <0|1|ON|OFF>\r\n"
    );
    assert!(r.intents.is_empty());
    assert!(run("NOPE").has("ERROR: unknown command (type HELP)"));
}

#[test]
fn empty_line_produces_nothing() {
    let r = run("   ");
    assert!(r.text.is_empty() && r.intents.is_empty() && r.followup.is_none());
}

// ---- commands ----

#[test]
fn help_lists_every_command() {
    let r = run("HELP");
    for name in [
        "SYSINFO",
        "GET_TEMP",
        "SET_CH",
        "GET_CH",
        "OC_STATUS",
        "OC_RESET",
        "READ_HLW8032",
        "CALIBRATE",
        "SHOW_CALIB",
        "NETINFO",
        "SET_IP",
        "SET_SN",
        "SET_GW",
        "SET_DNS",
        "CONFIG_NETWORK",
        "CLR_ERR",
        "RFS",
        "REBOOT",
        "CONFIG GET",
        "CONFIG SET",
        "CONFIG SAVE",
        "LOG_LEVEL",
        "HEALTH",
        "SET_COMMUNITY",
        "SET_HTTP_AUTH",
    ] {
        assert!(r.text.contains(name), "{name} missing from HELP");
    }
    assert!(!r.error());
}

#[test]
fn sysinfo_shows_identity_and_rails() {
    let r = run("SYSINFO");
    assert!(r.has("Device Serial: SN-0167663"));
    assert!(r.has("Firmware Ver: 1.1.0"));
    assert!(r.has("12V Supply: 12.10 V"));
    assert!(r.has("Uptime: 123 s"));
    assert!(r.has("Switch State: READY"));
}

#[test]
fn get_temp_supply_and_usb_read_the_snapshot() {
    assert!(run("GET_TEMP").has("Die Temperature: 31.25 °C"));
    assert!(run("GET_SUPPLY").has("12V Supply: 12.10 V"));
    assert!(run("GET_USB").has("USB Voltage: 5.00 V"));
}

#[test]
fn set_ch_sends_a_console_switch_request_and_replies_after() {
    let r = run("SET_CH 2 ON");
    assert!(r.text.is_empty(), "the reply waits for SwitchTask");
    let Intent::Switch(req) = r.intents[0] else {
        panic!()
    };
    assert_eq!(
        req,
        SwitchRequest::set(Source::Console, Outlet::new(2).unwrap(), true)
    );
    assert_eq!(
        r.finish(&[ok_reply(0b111)]).as_str(),
        "\t[ECHO] CH2 = ON\r\n"
    );
}

#[test]
fn set_ch_all_uses_all_on_and_all_off() {
    for (line, op, text) in [
        (
            "SET_CH ALL 1",
            SwitchOp::AllOn,
            "\t[ECHO] All channels set to ON\r\n",
        ),
        (
            "SET_CH all off",
            SwitchOp::AllOff,
            "\t[ECHO] All channels set to OFF\r\n",
        ),
    ] {
        let r = run(line);
        let Intent::Switch(req) = r.intents[0] else {
            panic!()
        };
        assert_eq!((req.source, req.op), (Source::Console, op));
        assert_eq!(r.finish(&[ok_reply(0)]).as_str(), text);
    }
}

#[test]
fn set_ch_reports_lockout_refusal() {
    let r = run_on(&mut Console::new(), "SET_CH 2 ON", &locked_out());
    let text = r.finish(&[refused(SwitchStatus::OverCurrentLockout)]);
    assert_eq!(
        text.as_str(),
        "\t[ERROR] CH2 not switched: overcurrent lockout active - reduce load first\r\n"
    );
    assert!(
        r.finish(&[]).contains("switch task busy"),
        "a missing answer is reported, not assumed ok"
    );
}

#[test]
fn get_ch_reads_relay_state() {
    assert_eq!(run("GET_CH 1").text.as_str(), "\t[ECHO] CH1: ON\r\n");
    assert_eq!(run("GET_CH 2").text.as_str(), "\t[ECHO] CH2: OFF\r\n");
    let all = run("GET_CH ALL");
    assert_eq!(all.lines().len(), 8);
    assert!(all.has("CH3: ON") && all.has("CH8: OFF"));
}

#[test]
fn oc_status_shows_state_thresholds_and_trips() {
    let r = run("OC_STATUS");
    assert!(r.has("State: NORMAL"));
    assert!(r.has("Limit: 10.00 A (EU)"));
    assert!(r.has("Trip At: 9.50 A"));
    assert!(r.has("Switching Allowed: YES"));
    let mut s = locked_out();
    s.ocp.last_tripped_channel = 3;
    s.ocp.last_trip_ms = 5000;
    let r = run_on(&mut Console::new(), "oc_status", &s);
    assert!(r.has("State: LOCKOUT"));
    assert!(r.has("Switching Allowed: NO"));
    assert!(r.has("Last Tripped Channel: CH3 at 5000 ms"));
}

#[test]
fn oc_reset_asks_switch_task_and_confirms() {
    let r = run("OC_RESET");
    let Intent::Switch(req) = r.intents[0] else {
        panic!()
    };
    assert_eq!(
        (req.source, req.op),
        (Source::Console, SwitchOp::ResetOverCurrent)
    );
    assert_eq!(
        r.finish(&[ok_reply(0)]).as_str(),
        "\t[ECHO] Overcurrent lockout cleared\r\n"
    );
}

#[test]
fn read_hlw8032_prints_measurements_or_no_data() {
    let mut s = snapshot();
    s.telemetry[1].degraded = true;
    let r = run_on(&mut Console::new(), "READ_HLW8032", &s);
    assert_eq!(r.lines().len(), 8);
    assert!(r.has("CH1: V=230.00 V, I=0.500 A, P=115.00 W, PF=1.000, E=12.500 Wh"));
    assert!(r.has("CH2: No valid telemetry data available"));
    assert_eq!(run("READ_HLW8032 3").lines().len(), 1);
}

#[test]
fn calibrate_scales_factors_so_the_reading_matches_the_reference() {
    // CH1 reads 230 V / 0.5 A with Kv 1.88, Ki 1.0, no offsets.
    let r = run("CALIBRATE 1 235 0.55");
    let cal = r.saved().calibration[0];
    assert!((cal.kv - 1.88 * 235.0 / 230.0).abs() < 1e-4, "{cal:?}");
    assert!((cal.ki - 1.1).abs() < 1e-4, "{cal:?}");
    assert!(
        r.text
            .starts_with("\t[ECHO] CH1 calibrated: Kv=1.9209 Ki=1.1000"),
        "{}",
        r.text
    );
    assert_eq!(r.saved().calibration[1], snapshot().config.calibration[1]);
}

#[test]
fn calibrate_with_zero_reference_sets_the_offset() {
    let r = run("CALIBRATE 2 230 0");
    let cal = r.saved().calibration[1];
    assert!((cal.i_offset - 0.0).abs() < 1e-6 && (cal.kv - 1.88).abs() < 1e-4);
    let r = run("CALIBRATE 1 0 0");
    let cal = r.saved().calibration[0];
    assert!((cal.v_offset - 230.0).abs() < 1e-3 && (cal.i_offset - 0.5).abs() < 1e-6);
}

#[test]
fn calibrate_refuses_without_a_usable_reading() {
    let r = run("CALIBRATE 2 230 1");
    assert!(
        r.error() && r.intents.is_empty(),
        "CH2 has no current: {}",
        r.text
    );
    let mut s = snapshot();
    s.telemetry[0].degraded = true;
    let r = run_on(&mut Console::new(), "CALIBRATE 1 230 0.5", &s);
    assert!(r.has("ERROR: CH1 not calibrated: no valid reading (meter degraded)"));
}

#[test]
fn show_calib_prints_factors() {
    assert_eq!(
        run("SHOW_CALIB 1").text.as_str(),
        "\t[ECHO] CH1: Kv=1.8800 Ki=1.0000 Voff=0.000 V Ioff=0.000 A\r\n"
    );
    assert_eq!(run("SHOW_CALIB").lines().len(), 8);
    assert_eq!(run("SHOW_CALIB all").lines().len(), 8);
}

#[test]
fn netinfo_shows_addresses() {
    let r = run("NETINFO");
    assert!(r.has("IP: 192.168.0.22"));
    assert!(r.has("Subnet: 255.255.255.0"));
    assert!(r.has("Gateway: 192.168.0.1"));
    assert!(r.has("DNS: 8.8.8.8"));
    assert!(r.has("MAC: 02:45:4E:00:00:01"));
}

#[test]
fn network_set_commands_save_at_once_and_take_effect_after_reboot() {
    for (line, check) in [
        (
            "SET_IP 10.0.0.5",
            (|c: &PduConfig| c.network.ip == [10, 0, 0, 5]) as fn(&PduConfig) -> bool,
        ),
        ("SET_SN 255.255.0.0", |c| {
            c.network.subnet == [255, 255, 0, 0]
        }),
        ("SET_GW 10.0.0.1", |c| c.network.gateway == [10, 0, 0, 1]),
        ("SET_DNS 1.1.1.1", |c| c.network.dns == [1, 1, 1, 1]),
    ] {
        let r = run(line);
        assert!(check(r.saved()), "{line}");
        assert!(r.text.contains("(takes effect after reboot)"), "{line}");
    }
}

#[test]
fn config_network_sets_all_four() {
    let r = run("CONFIG_NETWORK 10.1.2.3$255.255.255.0$10.1.2.1$9.9.9.9");
    let n = &r.saved().network;
    assert_eq!(
        (n.ip, n.subnet, n.gateway, n.dns),
        (
            [10, 1, 2, 3],
            [255, 255, 255, 0],
            [10, 1, 2, 1],
            [9, 9, 9, 9]
        )
    );
    assert!(r.text.contains("takes effect after reboot"));
}

#[test]
fn clr_err_clears_fault_and_error_log() {
    let r = run("CLR_ERR");
    assert!(matches!(
        r.intents[0],
        Intent::Switch(SwitchRequest {
            op: SwitchOp::ClearFault,
            source: Source::Console,
            ..
        })
    ));
    assert_eq!(r.intents[1], Intent::ClearErrors);
    assert_eq!(
        r.finish(&[ok_reply(0)]).as_str(),
        "\t[ECHO] Error LED cleared\r\n"
    );
}

#[test]
fn rfs_and_reboot_emit_their_intents() {
    let r = run("RFS");
    assert_eq!(r.intents.as_slice(), [Intent::FactoryReset, Intent::Reboot]);
    let r = run("reboot");
    assert_eq!(r.intents.as_slice(), [Intent::Reboot]);
    assert!(r.has("Rebooting system..."));
}

#[test]
fn config_set_edits_a_pending_copy_until_saved() {
    let mut c = Console::new();
    let s = snapshot();
    let r = run_on(&mut c, "CONFIG SET identity.device_name Rack PDU 2", &s);
    assert!(r.intents.is_empty(), "nothing saved yet");
    assert!(r.has("identity.device_name set (pending; CONFIG SAVE to apply)"));
    assert!(
        run_on(&mut c, "CONFIG GET identity.device_name", &s)
            .has("identity.device_name = Rack PDU 2")
    );
    let r = run_on(&mut c, "CONFIG SAVE", &s);
    assert_eq!(r.saved().identity.device_name.as_str(), "Rack PDU 2");
    assert!(c.pending().is_none());
    assert!(run_on(&mut c, "CONFIG SAVE", &s).has("Nothing to save"));
}

#[test]
fn config_discard_drops_pending_changes() {
    let mut c = Console::new();
    let s = snapshot();
    let _ = run_on(&mut c, "CONFIG SET ocp.limit_a 15", &s);
    assert!(run_on(&mut c, "CONFIG DISCARD", &s).has("Pending changes discarded"));
    assert!(run_on(&mut c, "CONFIG GET ocp.limit_a", &s).has("ocp.limit_a = 10.0"));
}

#[test]
fn config_set_validates_values_and_keys() {
    for line in [
        "CONFIG SET network.ip 1.2.3",
        "CONFIG SET ocp.limit_a 100",
        "CONFIG SET ocp.limit_a inf",
        "CONFIG SET logging.level 9",
        "CONFIG SET http.user a:b",
        "CONFIG SET snmp.read_community two words",
        "CONFIG SET identity.device_name 0123456789012345678901234567890123",
        "CONFIG SET switch.max_simultaneous 0",
        "CONFIG SET network.mac 02:45:4E:00:00",
        "CONFIG SET no.such.key 1",
        "CONFIG SET label.9 x",
    ] {
        let mut c = Console::new();
        let r = run_on(&mut c, line, &snapshot());
        assert!(r.error(), "{line} accepted: {}", r.text);
        assert!(c.pending().is_none(), "{line} left a pending copy");
    }
}

#[test]
fn config_set_accepts_every_listed_key() {
    let mut c = Console::new();
    let s = snapshot();
    for line in [
        "CONFIG SET network.ip 10.0.0.2",
        "CONFIG SET network.subnet 255.0.0.0",
        "CONFIG SET network.gateway 10.0.0.1",
        "CONFIG SET network.dns 10.0.0.53",
        "CONFIG SET network.mac 02:45:4e:00:00:02",
        "CONFIG SET network.dhcp on",
        "CONFIG SET identity.device_name PDU",
        "CONFIG SET identity.location Lab 3",
        "CONFIG SET identity.temp_unit k",
        "CONFIG SET ocp.limit_a 15",
        "CONFIG SET logging.level 4",
        "CONFIG SET snmp.read_community ro",
        "CONFIG SET snmp.write_community rw",
        "CONFIG SET http.auth_enabled off",
        "CONFIG SET http.user ops",
        "CONFIG SET http.password pass word",
        "CONFIG SET switch.safe_mask 0x81",
        "CONFIG SET switch.restore_on_boot true",
        "CONFIG SET switch.min_toggle_ms 75",
        "CONFIG SET switch.max_simultaneous 4",
        "CONFIG SET switch.brownout_mv 10500",
        "CONFIG SET switch.i2c_fault_threshold 3",
        "CONFIG SET health.heartbeat_timeout_ms 3000",
        "CONFIG SET health.watchdog_ms 8000",
        "CONFIG SET buttons.long_press_ms 2000",
        "CONFIG SET LABEL.2 Fan & Pump",
    ] {
        let r = run_on(&mut c, line, &s);
        assert!(!r.error(), "{line}: {}", r.text);
    }
    let cfg = run_on(&mut c, "CONFIG SAVE", &s).saved().clone();
    assert_eq!(cfg.network.mac, [2, 0x45, 0x4e, 0, 0, 2]);
    assert!(cfg.network.dhcp);
    assert_eq!(cfg.identity.location.as_str(), "Lab 3");
    assert_eq!(cfg.identity.temp_unit, 'K');
    assert_eq!(cfg.ocp.limit_a, 15.0);
    assert_eq!(cfg.http.password.as_str(), "pass word");
    assert_eq!(cfg.switch.safe_mask, OutletMask(0x81));
    assert_eq!(cfg.switch.brownout_mv, 10_500);
    assert_eq!(cfg.buttons.long_press_ms, 2_000);
    assert_eq!(cfg.labels[1].as_str(), "Fan & Pump");
}

#[test]
fn config_get_lists_all_keys_and_hides_the_password() {
    let r = run("CONFIG GET");
    assert_eq!(r.lines().len(), CONFIG_KEYS.len() + CHANNELS);
    assert!(r.has("network.ip = 192.168.0.22"));
    assert!(r.has("http.password = ********"));
    assert!(r.has("label.1 = NAS"));
    assert!(!r.text.contains("energis"));
    assert!(run("CONFIG GET bogus").error());
}

#[test]
fn network_commands_also_update_the_pending_copy() {
    let mut c = Console::new();
    let s = snapshot();
    let _ = run_on(&mut c, "CONFIG SET identity.location Basement", &s);
    let r = run_on(&mut c, "SET_IP 10.9.9.9", &s);
    assert_eq!(
        r.saved().identity.location.as_str(),
        "Wien",
        "only the network change is saved at once"
    );
    let r = run_on(&mut c, "CONFIG SAVE", &s);
    assert_eq!(
        r.saved().network.ip,
        [10, 9, 9, 9],
        "a later CONFIG SAVE does not undo SET_IP"
    );
    assert_eq!(r.saved().identity.location.as_str(), "Basement");
}

#[test]
fn log_level_shows_and_sets_pending() {
    let mut c = Console::new();
    let s = snapshot();
    assert!(run_on(&mut c, "LOG_LEVEL", &s).has("Log level: 2"));
    let r = run_on(&mut c, "LOG_LEVEL 4", &s);
    assert!(r.intents.is_empty());
    assert_eq!(c.pending().unwrap().logging.level, 4);
    assert!(run_on(&mut c, "LOG_LEVEL", &s).has("Log level: 4"));
}

#[test]
fn health_summarises_switch_meter_and_ocp() {
    let mut s = snapshot();
    s.telemetry[4].degraded = true;
    let r = run_on(&mut Console::new(), "HEALTH", &s);
    assert!(r.has("Switch: READY"));
    assert!(r.has("Meter: 7/8 channels valid"));
    assert!(r.has("Overcurrent: NORMAL (1.00 A of 10.00 A)"));
}

#[test]
fn set_community_changes_pending_snmp_config() {
    let mut c = Console::new();
    let s = snapshot();
    let _ = run_on(&mut c, "SET_COMMUNITY read monitor", &s);
    let _ = run_on(&mut c, "set_community WRITE admin42", &s);
    let p = c.pending().unwrap();
    assert_eq!(p.snmp.read_community.as_str(), "monitor");
    assert_eq!(p.snmp.write_community.as_str(), "admin42");
    let long = "SET_COMMUNITY read 012345678901234567890123456789012";
    assert!(run_on(&mut Console::new(), long, &s).error());
}

#[test]
fn set_http_auth_switches_and_sets_credentials() {
    let mut c = Console::new();
    let s = snapshot();
    let _ = run_on(&mut c, "SET_HTTP_AUTH off", &s);
    assert!(!c.pending().unwrap().http.auth_enabled);
    let _ = run_on(&mut c, "SET_HTTP_AUTH ops secret", &s);
    let p = c.pending().unwrap();
    assert!(p.http.auth_enabled);
    assert_eq!(
        (p.http.user.as_str(), p.http.password.as_str()),
        ("ops", "secret")
    );
    assert!(run_on(&mut Console::new(), "SET_HTTP_AUTH a:b pw", &s).error());
}

#[test]
fn reply_that_does_not_fit_becomes_one_error_line() {
    let mut out = [0u8; 100];
    let e = Console::new()
        .execute("HELP", &snapshot(), &mut out)
        .unwrap();
    assert_eq!(
        &out[..e.written],
        b"\t[ERROR] reply too long for the output buffer\r\n"
    );
    let mut tiny = [0u8; 8];
    assert_eq!(
        Console::new().execute("HELP", &snapshot(), &mut tiny),
        Err(ConsoleError::OutputTooSmall)
    );
}

#[test]
fn every_command_fits_the_recommended_buffer() {
    for line in [
        "HELP",
        "SYSINFO",
        "CONFIG GET",
        "OC_STATUS",
        "READ_HLW8032",
        "SHOW_CALIB",
        "HEALTH",
        "NETINFO",
    ] {
        let r = run(line);
        assert!(!r.error(), "{line}: {}", r.text);
    }
}

proptest! {
    #[test]
    fn editor_and_console_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut c = Console::new();
        let s = snapshot();
        let mut out = [0u8; RECOMMENDED_OUT_LEN];
        for b in bytes {
            if let Ok(Some(e)) = c.push_byte(b, &s, &mut out) {
                prop_assert!(e.written <= out.len());
                if let Some(f) = e.followup {
                    let _ = f.finish(&[ok_reply(0)], &mut out);
                }
            }
        }
    }

    #[test]
    fn parser_never_panics_on_command_like_lines(
        name in "(?i)(set_ch|get_ch|calibrate|config|config_network|set_ip|log_level|set_community|set_http_auth|read_hlw8032|show_calib)",
        args in "[ -~]{0,60}",
    ) {
        let mut line = heapless::String::<128>::new();
        let _ = write!(line, "{name} {args}");
        let _ = Command::parse(&line);
        let mut out = [0u8; RECOMMENDED_OUT_LEN];
        let _ = Console::new().execute(&line, &snapshot(), &mut out);
    }

    #[test]
    fn lines_never_exceed_capacity(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut ed = LineEditor::<16>::new();
        for b in bytes {
            if let Some(Ok(line)) = ed.push(b) {
                prop_assert!(line.len() <= 16);
                prop_assert!(!line.contains(['\r', '\n']));
            }
        }
    }
}
