//! The live PDU twin driven by the real tools: net-snmp's `snmpget`/`snmpset`/`snmpwalk`/
//! `snmpbulkwalk`, `curl`, and `socat` on the console's pseudo-terminal. Every service binds
//! an ephemeral port; the ready file says where.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const OUTLET_1: &str = "1.3.6.1.4.1.19865.2.1.0";
const OUTLET_2: &str = "1.3.6.1.4.1.19865.2.2.0";

struct Twin {
    child: Child,
    ready: PathBuf,
    snmp: String,
    http: String,
    console: String,
}

impl Twin {
    fn start(name: &str, state_dir: &Path) -> Twin {
        let ready = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ready-{name}.json"));
        let _ = std::fs::remove_file(&ready);
        let mut child = Command::new(env!("CARGO_BIN_EXE_twin"))
            .args(["run", "--twin", "pdu", "--ephemeral-ports", "--ready-file"])
            .arg(&ready)
            .arg("--state-dir")
            .arg(state_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("twin starts");
        // The ready file appears once every service listens; not a timing assertion, a bound on
        // how long a broken build may hang the test.
        let deadline = Instant::now() + Duration::from_secs(60);
        let json = loop {
            if let Ok(text) = std::fs::read_to_string(&ready)
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            {
                break v;
            }
            if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
                let _ = child.kill();
                panic!("the live twin did not write {}", ready.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let field = |k: &str| json[k].as_str().expect(k).to_owned();
        Twin {
            ready,
            snmp: format!("udp:{}", field("pdu_snmp")),
            http: field("pdu_http"),
            console: field("pdu_console"),
            child,
        }
    }

    /// `quit` on stdin: the twin stops and flushes its EEPROM image.
    fn quit(mut self) -> String {
        let _ = self
            .child
            .stdin
            .as_mut()
            .expect("stdin")
            .write_all(b"quit\n");
        let mut stdout = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut out, &mut stdout);
        }
        let status = self.child.wait().expect("twin exits");
        assert!(status.success(), "{stdout}");
        stdout
    }

    fn snmp(&self, tool: &str, args: &[&str]) -> Output {
        Command::new(tool)
            .args(["-v2c", "-t", "2", "-r", "1", "-On"])
            .args(args.iter().take(2))
            .arg(&self.snmp)
            .args(args.iter().skip(2))
            .output()
            .unwrap_or_else(|e| panic!("{tool} must be installed (apt-get install snmp): {e}"))
    }

    fn curl(&self, args: &[&str]) -> String {
        let out = Command::new("curl")
            .args(["-s", "-i", "-m", "10"])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("curl must be installed: {e}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Send lines to the console PTY through socat and return what came back.
    fn console(&self, lines: &str, wait_s: f64) -> String {
        let mut child = Command::new("socat")
            .args(["-t", &wait_s.to_string(), "-"])
            .arg(format!("{},raw,echo=0", self.console))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("socat must be installed: {e}"));
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(lines.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("socat exits");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Twin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn state_dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn snmp_and_http_clients_read_and_switch_and_a_wrong_community_gets_no_write() {
    let twin = Twin::start("snmp", &state_dir("pdu-live-snmp"));

    let o = twin.snmp("snmpget", &["-c", "public", ".1.3.6.1.2.1.1.1.0"]);
    assert!(
        text(&o).contains("ENERGIS 10IN MANAGED PDU"),
        "{}",
        text(&o)
    );

    // Write community switches outlet 1 on; the answer echoes the value.
    let o = twin.snmp("snmpset", &["-c", "private", OUTLET_1, "i", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = twin.snmp("snmpget", &["-c", "public", OUTLET_1]);
    assert!(text(&o).contains("INTEGER: 1"), "{}", text(&o));

    // Read community: refused with noAccess, nothing switched.
    let o = twin.snmp("snmpset", &["-c", "public", OUTLET_2, "i", "1"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("noAccess"), "{}", text(&o));
    // Unknown community: no answer at all, nothing switched.
    let o = Command::new("snmpset")
        .args([
            "-v2c", "-t", "1", "-r", "0", "-c", "wrong", &twin.snmp, OUTLET_2, "i", "1",
        ])
        .output()
        .expect("snmpset runs");
    assert!(text(&o).contains("Timeout"), "{}", text(&o));
    let o = twin.snmp("snmpget", &["-c", "public", OUTLET_2]);
    assert!(text(&o).contains("INTEGER: 0"), "{}", text(&o));
    // Out of range value: wrongValue.
    let o = twin.snmp("snmpset", &["-c", "private", OUTLET_2, "i", "7"]);
    assert!(text(&o).contains("wrongValue"), "{}", text(&o));

    // Walks: the ten outlet objects, and the system group in bulk.
    let o = twin.snmp("snmpwalk", &["-c", "public", ".1.3.6.1.4.1.19865.2"]);
    let walk = text(&o);
    assert_eq!(walk.lines().count(), 10, "{walk}");
    assert!(
        walk.contains(".1.3.6.1.4.1.19865.2.1.0 = INTEGER: 1"),
        "{walk}"
    );
    let o = twin.snmp("snmpbulkwalk", &["-c", "public", ".1.3.6.1.2.1.1"]);
    let bulk = text(&o);
    assert!(
        bulk.contains(".1.3.6.1.2.1.1.6.0 = STRING: \"Wien\""),
        "{bulk}"
    );

    // HTTP: status shows outlet 1 on; control needs credentials and then switches.
    let status = twin.curl(&[&format!("http://{}/api/status", twin.http)]);
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(status.contains("\"state\":true"), "{status}");
    let url = format!("http://{}/api/control", twin.http);
    let denied = twin.curl(&["-d", "channel3=on", &url]);
    assert!(denied.starts_with("HTTP/1.1 401"), "{denied}");
    let ok = twin.curl(&["-u", "admin:energis", "-d", "channel3=on", &url]);
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let o = twin.snmp(
        "snmpget",
        &["-c", "public", OUTLET_1, ".1.3.6.1.4.1.19865.2.3.0"],
    );
    let t = text(&o);
    assert!(
        t.contains("19865.2.1.0 = INTEGER: 0"),
        "control switched the absent channel off: {t}"
    );
    assert!(t.contains("19865.2.3.0 = INTEGER: 1"), "{t}");
    let missing = twin.curl(&[&format!("http://{}/nope", twin.http)]);
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");

    twin.quit();
}

/// The voltage `snmpget` reads for an outlet (`19865.5.<ch>.1.0`, a string such as `"230.00"`).
fn volts(twin: &Twin, ch: u8) -> Option<f64> {
    let o = twin.snmp(
        "snmpget",
        &["-c", "public", &format!(".1.3.6.1.4.1.19865.5.{ch}.1.0")],
    );
    text(&o).split('"').nth(1)?.parse().ok()
}

#[test]
fn a_switched_off_outlet_reads_the_residue_behind_its_relay_as_on_a_real_energis() {
    let twin = Twin::start("meters", &state_dir("pdu-live-meters"));
    let o = twin.snmp("snmpset", &["-c", "private", OUTLET_2, "i", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    // The meters refresh one channel at a time: wait (bounded) until outlet 2 shows mains.
    let deadline = Instant::now() + Duration::from_secs(30);
    while volts(&twin, 2).is_none_or(|v| v < 200.0) {
        assert!(Instant::now() < deadline, "outlet 2 never read mains");
        std::thread::sleep(Duration::from_millis(200));
    }
    let off = volts(&twin, 1).expect("outlet 1 reads");
    assert!(
        (0.0..0.2).contains(&off),
        "outlet 1 is off but reads {off} V"
    );
    let status = twin.curl(&[&format!("http://{}/api/status", twin.http)]);
    let body = status.split("\r\n\r\n").nth(1).expect("a body");
    let json: serde_json::Value = serde_json::from_str(body).expect("status JSON");
    let v1 = json["channels"][0]["voltage"].as_f64().expect("voltage");
    assert!(v1 < 0.2, "/api/status: outlet 1 reads {v1} V");
    twin.quit();
}

#[test]
fn console_pty_answers_help_and_saved_configuration_survives_a_restart() {
    let dir = state_dir("pdu-live-console");
    let twin = Twin::start("console-1", &dir);
    let help = twin.console("HELP\r\n", 1.0);
    assert!(help.contains("ENERGIS PDU Console Commands"), "{help}");

    let saved = twin.console(
        "CONFIG SET identity.device_name livetest\r\nCONFIG SAVE\r\n",
        1.0,
    );
    assert!(!saved.contains("[ERROR]"), "{saved}");
    // The save lands within milliseconds of virtual time; the settings page shows it then.
    let settings = format!("http://{}/api/settings", twin.http);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !twin
        .curl(&[&settings])
        .contains("\"device_name\":\"livetest\"")
    {
        assert!(Instant::now() < deadline, "the saved name never showed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let stdout = twin.quit();
    assert!(stdout.contains("EEPROM saved"), "{stdout}");

    let twin = Twin::start("console-2", &dir);
    let page = twin.curl(&[&format!("http://{}/api/settings", twin.http)]);
    assert!(page.contains("\"device_name\":\"livetest\""), "{page}");
    twin.quit();
}

/// A v2c GET of sysDescr.0 with community `public`.
const GET_SYSDESCR: [u8; 40] = [
    0x30, 0x26, 0x02, 0x01, 0x01, 0x04, 0x06, b'p', b'u', b'b', b'l', b'i', b'c', 0xa0, 0x19, 0x02,
    0x01, 0x01, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00, 0x30, 0x0e, 0x30, 0x0c, 0x06, 0x08, 0x2b, 0x06,
    0x01, 0x02, 0x01, 0x01, 0x01, 0x00, 0x05, 0x00,
];

#[test]
fn a_udp_flood_does_not_stall_the_console() {
    let twin = Twin::start("flood", &state_dir("pdu-live-flood"));
    let target = twin.snmp.trim_start_matches("udp:").to_owned();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooder = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = sock.send_to(&GET_SYSDESCR, &target);
                sent += 1;
            }
            sent
        })
    };
    let reply = twin.console("SET_CH 4 ON\r\nHELP\r\n", 1.0);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = flooder.join().expect("flooder");
    assert!(sent > 1000, "the flood was a flood: {sent} datagrams");
    assert!(reply.contains("CH4 = ON"), "{reply}");
    assert!(reply.contains("ENERGIS PDU Console Commands"), "{reply}");
    // The agent still answers once the flood is over.
    let o = twin.snmp("snmpget", &["-c", "public", OUTLET_1]);
    assert!(text(&o).contains("INTEGER: 0"), "{}", text(&o));
    twin.quit();
}

#[test]
fn twin_console_pdu_talks_to_the_running_console_on_stdin_and_stdout() {
    let twin = Twin::start("stdio", &state_dir("pdu-live-stdio"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_twin"))
        .args(["console", "pdu", "--ready-file"])
        .arg(&twin.ready)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("twin console starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"SET_CH 6 ON\nHELP\n")
        .expect("write");
    let out = child.wait_with_output().expect("twin console exits");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("CH6 = ON"), "{stdout}");
    assert!(stdout.contains("ENERGIS PDU Console Commands"), "{stdout}");
    twin.quit();

    let refused = Command::new(env!("CARGO_BIN_EXE_twin"))
        .args(["console", "toaster", "--path", "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("twin runs");
    assert_eq!(refused.status.code(), Some(2));
}

/// A raw TCP client, for bytes curl cannot send: writes `chunks` (pausing `gap` between them,
/// ignoring write errors once the server has closed), then reads until the server closes. Panics
/// if the server keeps the connection open for 20 s.
fn raw_exchange(addr: &str, chunks: &[&[u8]], gap: Duration) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    for (i, c) in chunks.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(gap);
        }
        let _ = s.write_all(c);
    }
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => {}
        // A reset after the answer (the server closed with unread bytes) still ends the reply.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!(
            "the server kept the connection open ({e}); got {:?}",
            String::from_utf8_lossy(&out)
        ),
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Twin {
    /// Read state keys on the running twin through `state` on its stdin; the values are in what
    /// [`Twin::quit`] returns.
    fn ask_state(&mut self, keys: &str) {
        let line = format!("state pdu {keys}\n");
        let _ = self
            .child
            .stdin
            .as_mut()
            .expect("stdin")
            .write_all(line.as_bytes());
    }
}

#[test]
fn http_refuses_bad_bytes_huge_bodies_slow_clients_and_too_many_connections() {
    let mut twin = Twin::start("harden", &state_dir("pdu-live-harden"));
    // Every service is on loopback by default.
    let ready = std::fs::read_to_string(&twin.ready).expect("ready file");
    let json: serde_json::Value = serde_json::from_str(&ready).expect("json");
    for (name, addr) in json.as_object().expect("object") {
        if name != "pdu_console" {
            assert!(
                addr.as_str().unwrap_or("").starts_with("127.0.0.1:"),
                "{name}: {addr}"
            );
        }
    }

    // Bytes that cannot be HTTP (a TLS ClientHello's start): 400 and closed, at once.
    let tls = raw_exchange(
        &twin.http,
        &[&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00]],
        Duration::ZERO,
    );
    assert!(tls.starts_with("HTTP/1.1 400"), "{tls:?}");

    // A body announced at 99999999 bytes: 413 before the body is sent (had the server waited
    // for it, the idle timeout would answer 408 instead).
    let url = format!("http://{}/api/control", twin.http);
    let huge = twin.curl(&[
        "-u",
        "admin:energis",
        "-H",
        "Content-Length: 99999999",
        "--data-binary",
        "channel1=on",
        &url,
    ]);
    assert!(huge.starts_with("HTTP/1.1 413"), "{huge}");

    // A head that stops: 408 after the idle timeout, and closed.
    let idle = raw_exchange(
        &twin.http,
        &[b"GET /api/status HTTP/1.1\r\n"],
        Duration::ZERO,
    );
    assert!(idle.starts_with("HTTP/1.1 408"), "{idle:?}");
    // A head that trickles in, two bytes every 0.5 s (never idle for 2 s, 7.5 s in all): 408
    // at the read timeout.
    let trickle: Vec<&[u8]> = b"GET /api/status HTTP/1.1\r\nX-Slow".chunks(2).collect();
    let slow = raw_exchange(&twin.http, &trickle, Duration::from_millis(500));
    assert!(slow.starts_with("HTTP/1.1 408"), "{slow:?}");

    // Eight connections (the W5500's sockets) hold every slot: the ninth gets 503 at once.
    let held: Vec<_> = (0..8)
        .map(|_| std::net::TcpStream::connect(&twin.http).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let ninth = raw_exchange(
        &twin.http,
        &[b"GET /api/status HTTP/1.1\r\n\r\n"],
        Duration::ZERO,
    );
    assert!(ninth.starts_with("HTTP/1.1 503"), "{ninth:?}");
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    let ok = twin.curl(&[&format!("http://{}/api/status", twin.http)]);
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");

    twin.ask_state("http.malformed http.too_large http.timed_out http.refused_busy");
    let out = twin.quit();
    assert!(out.contains("pdu.http.malformed = 1"), "{out}");
    assert!(out.contains("pdu.http.too_large = 1"), "{out}");
    assert!(out.contains("pdu.http.timed_out = 2"), "{out}");
    assert!(out.contains("pdu.http.refused_busy = 1"), "{out}");
}
