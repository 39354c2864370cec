//! The live pump twin as its users meet it: `mosquitto_sub` sees the retained status and the
//! E-stop alarm, a WebSocket client gets frames at the feed's rate, a headless Chromium presses
//! Start on the twin's page and sees the pump go active, `curl` and a WebSocket client wait
//! longer for the controller when its WiFi and network core are loaded, and a G-code sender on
//! the FluidNC pseudo-terminal gets answers.
//!
//! Needs the Debian packages `mosquitto-clients` and `chromium` (`cargo xtask` installs them
//! when run as root). Every service binds an ephemeral port; rates are checked by counting frames
//! over a window with generous bounds, never by wall-time assertions.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// The running twin, killed on drop.
struct Twin {
    child: Child,
    http: String,
    mqtt_host: String,
    mqtt_port: String,
}

impl Drop for Twin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_twin(tag: &str) -> Twin {
    start_twin_with(tag, &[], Stdio::null(), Stdio::null())
}

fn start_twin_with(tag: &str, extra: &[&str], stdin: Stdio, stdout: Stdio) -> Twin {
    let ready = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ready-pump-{tag}.json"));
    let _ = std::fs::remove_file(&ready);
    let child = Command::new(env!("CARGO_BIN_EXE_twin"))
        .args(["run", "--twin", "pump", "--ephemeral-ports", "--ready-file"])
        .arg(&ready)
        .args(extra)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
        .expect("twin starts");
    let start = Instant::now();
    let json = loop {
        if let Ok(text) = std::fs::read_to_string(&ready)
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        {
            break v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no ready file from the twin"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // The ready file gives plain `host:port`s, like the PDU's.
    let http = format!("http://{}", json["pump_http"].as_str().expect("pump_http"));
    let mqtt = json["pump_mqtt"].as_str().expect("pump_mqtt");
    let (host, port) = mqtt
        .trim_start_matches("mqtt://")
        .rsplit_once(':')
        .expect("host:port");
    Twin {
        child,
        http,
        mqtt_host: host.to_owned(),
        mqtt_port: port.to_owned(),
    }
}

fn tool(name: &str) -> Command {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{name}` is not installed: apt-get install -y mosquitto-clients chromium"
    );
    Command::new(name)
}

/// A raw HTTP request; returns the status code and body.
fn http(base: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let addr = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).expect("connect to the twin's HTTP server");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    // admin:pumpctl
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic YWRtaW46cHVtcGN0bA==\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (code, body)
}

fn mosquitto_sub(t: &Twin, topic: &str, count: u32, wait_s: u32) -> Child {
    tool("mosquitto_sub")
        .args(["-h", &t.mqtt_host, "-p", &t.mqtt_port, "-t", topic])
        .args(["-C", &count.to_string(), "-W", &wait_s.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub starts")
}

#[test]
fn mosquitto_sub_sees_the_retained_status_and_the_estop_alarm() {
    let t = start_twin("mqtt");
    let out = mosquitto_sub(&t, "pump/controller/status", 1, 20)
        .wait_with_output()
        .expect("mosquitto_sub");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\"priority\":\"IDLE\"") && text.contains("\"pumps\""),
        "retained status: {text:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The alarm is not retained: subscribe first, then press E-stop (again until it arrives, in
    // case the subscription was not in place yet).
    let sub = mosquitto_sub(&t, "pump/controller/alarm", 1, 30);
    std::thread::sleep(Duration::from_millis(1500));
    let (code, body) = http(&t.http, "POST", "/api/estop", "");
    assert_eq!(code, 202, "{body}");
    let out = sub.wait_with_output().expect("mosquitto_sub");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\"eventType\":\"EMERGENCY_STOP\""),
        "alarm: {text:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The status report follows within a moment.
    let start = Instant::now();
    loop {
        let (code, body) = http(&t.http, "GET", "/api/status", "");
        assert_eq!(code, 200);
        if body.contains("\"priority\":\"EMERGENCY\"") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Frames received on `/ws` during `window`.
async fn count_frames(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    window: Duration,
) -> usize {
    let end = tokio::time::Instant::now() + window;
    let mut n = 0;
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(end, ws.next()).await {
        if matches!(&m, Message::Text(t) if t.contains("\"priority\"")) {
            n += 1;
        }
    }
    n
}

#[test]
fn the_websocket_feed_runs_at_1hz_idle_and_5hz_dispensing() {
    let t = start_twin("ws");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let url = format!("{}/ws", t.http.replace("http://", "ws://"));
        let (mut ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("WebSocket connects");
        // Idle: 1 Hz, so 4 s hold about 4 frames.
        let idle = count_frames(&mut ws, Duration::from_secs(4)).await;
        assert!((2..=7).contains(&idle), "idle frames in 4 s: {idle}");
        // Dispensing (20 ml at 10 ml/min runs two minutes): 5 Hz, about 20 frames in 4 s.
        let (code, body) = http(
            &t.http,
            "POST",
            "/api/pump/start",
            r#"{"pump":"X","volume_ml":20,"flow_ml_min":10}"#,
        );
        assert_eq!(code, 202, "{body}");
        let _ = count_frames(&mut ws, Duration::from_millis(500)).await;
        let busy = count_frames(&mut ws, Duration::from_secs(4)).await;
        assert!(
            busy >= 2 * idle && (10..=30).contains(&busy),
            "dispensing frames in 4 s: {busy} (idle {idle})"
        );
        let _ = ws.close(None).await;
    });
}

/// The user-data directory for one Chromium run.
fn fresh_dir(tag: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("chromium-{tag}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("profile dir");
    d
}

/// Evaluate `expr` in the page over the DevTools protocol and return its value.
async fn evaluate<S>(ws: &mut S, id: &mut u64, expr: &str) -> serde_json::Value
where
    S: futures_util::Sink<Message>
        + futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + Unpin,
{
    *id += 1;
    let msg = serde_json::json!({
        "id": *id,
        "method": "Runtime.evaluate",
        "params": {"expression": expr, "returnByValue": true},
    });
    let _ = ws.send(Message::text(msg.to_string())).await;
    while let Some(Ok(m)) = ws.next().await {
        if let Message::Text(t) = m
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&t)
            && v["id"] == serde_json::json!(*id)
        {
            return v["result"]["result"]["value"].clone();
        }
    }
    serde_json::Value::Null
}

#[test]
fn headless_chromium_presses_start_and_sees_the_pump_go_active() {
    let t = start_twin("page");
    let profile = fresh_dir("page");
    let mut chrome = tool("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("{}/", t.http))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium starts");
    let result = std::panic::catch_unwind(|| {
        // Chromium writes the port it chose to DevToolsActivePort.
        let start = Instant::now();
        let port = loop {
            if let Ok(text) = std::fs::read_to_string(profile.join("DevToolsActivePort"))
                && let Some(p) = text.lines().next().filter(|p| !p.is_empty())
            {
                break p.to_owned();
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no DevTools port"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        // The page target's WebSocket.
        let ws_url = loop {
            let (_, body) = http(&format!("http://127.0.0.1:{port}"), "GET", "/json/list", "");
            let list: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let page = list.as_array().and_then(|a| {
                a.iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_owned))
            });
            if let Some(u) = page {
                break u;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "no page target");
            std::thread::sleep(Duration::from_millis(200));
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (mut ws, _) = tokio_tungstenite::connect_async(ws_url)
                .await
                .expect("DevTools connects");
            let mut id = 0;
            // Wait for the page's feed, then press Start.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let frames = evaluate(
                    &mut ws,
                    &mut id,
                    "window.twinTest ? window.twinTest.frames() : 0",
                )
                .await;
                if frames.as_u64().unwrap_or(0) > 0 {
                    break;
                }
                assert!(Instant::now() < deadline, "the page never got a frame");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            assert!(
                !evaluate(&mut ws, &mut id, "window.twinTest.active('X')")
                    .await
                    .as_bool()
                    .unwrap_or(true)
            );
            evaluate(&mut ws, &mut id, "window.twinTest.press('start')").await;
            loop {
                if evaluate(&mut ws, &mut id, "window.twinTest.active('X')")
                    .await
                    .as_bool()
                    == Some(true)
                {
                    break;
                }
                if Instant::now() > deadline {
                    let reply = evaluate(&mut ws, &mut id, "document.getElementById('reply').textContent + ' ' + JSON.stringify(window.twinTest.frames())").await;
                    panic!("pump X never showed active; page says {reply}");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let row = evaluate(
                &mut ws,
                &mut id,
                "document.getElementById('pump-X').className",
            )
            .await;
            assert_eq!(row, serde_json::json!("active"));
        });
    });
    let _ = chrome.kill();
    let _ = chrome.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// Wall seconds `curl` takes for `GET /api/status`, `n` times.
fn curl_status_times(t: &Twin, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let out = tool("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}"])
                .arg(format!("{}/api/status", t.http))
                .output()
                .expect("curl runs");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let (code, secs) = text.split_once(' ').expect("curl's -w output");
            assert_eq!(code, "200", "curl: {text}");
            secs.trim().parse().expect("a time")
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Wall seconds from sending a command on an authorized WebSocket to its reply, `n` times.
async fn ws_command_times(http: &str, n: usize) -> Vec<f64> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("{}/ws", http.replace("http://", "ws://"));
    let mut req = url.into_client_request().expect("request");
    req.headers_mut().insert(
        "Authorization",
        "Basic YWRtaW46cHVtcGN0bA==".parse().expect("header"),
    );
    // No Nagle delay on the client's small frames either.
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(req, None, true)
        .await
        .expect("WebSocket connects");
    let mut times = Vec::new();
    for _ in 0..n {
        let sent = Instant::now();
        ws.send(Message::text(r#"{"cmd":"resume"}"#))
            .await
            .expect("send");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match tokio::time::timeout_at(deadline, ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) if t.contains("\"ok\"") => break,
                Ok(Some(Ok(_))) => {}
                other => panic!("no reply to the command: {other:?}"),
            }
        }
        times.push(sent.elapsed().as_secs_f64());
    }
    let _ = ws.close(None).await;
    times
}

/// A line typed on the twin's standard input, and the twin's answer lines until one starts
/// with `until`.
fn ask(
    stdin: &mut std::process::ChildStdin,
    lines: &std::sync::mpsc::Receiver<String>,
    line: &str,
    until: &str,
) -> String {
    writeln!(stdin, "{line}").expect("the twin's stdin");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(l) if l.starts_with(until) => return l,
            Ok(_) => {}
            Err(_) => panic!("no answer to `{line}`"),
        }
    }
}

#[test]
fn curl_and_a_websocket_client_wait_longer_when_the_wifi_and_the_network_core_are_loaded() {
    // Quarter speed: every virtual millisecond the controller spends is four wall milliseconds, so
    // the client's own overhead on a busy machine weighs less against what is measured.
    let mut t = start_twin_with("load", &["--speed", "0.25"], Stdio::piped(), Stdio::piped());
    let mut stdin = t.child.stdin.take().expect("stdin");
    let stdout = t.child.stdout.take().expect("stdout");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let virtual_ttfb = |stdin: &mut _| -> f64 {
        let l = ask(
            stdin,
            &lines,
            "state pump http.ttfb_p50_ms",
            "pump.http.ttfb_p50_ms",
        );
        l.rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("a number")
    };

    let quiet_curl = median(curl_status_times(&t, 31));
    let quiet_ws = median(rt.block_on(ws_command_times(&t.http, 21)));
    let quiet_virtual = virtual_ttfb(&mut stdin);

    let ok = ask(
        &mut stdin,
        &lines,
        "act pump wifi.load airtime=0.95 cpu=0.95",
        "ok",
    );
    assert_eq!(ok, "ok");
    // The median covers the last 64 connections: 70 loaded ones replace the quiet ones.
    let loaded_curl = median(curl_status_times(&t, 70));
    let loaded_ws = median(rt.block_on(ws_command_times(&t.http, 21)));
    let loaded_virtual = virtual_ttfb(&mut stdin);

    println!(
        "time to first byte (virtual ms) {quiet_virtual} -> {loaded_virtual}; curl median \
         {quiet_curl:.4} s -> {loaded_curl:.4} s; WebSocket command median {quiet_ws:.4} s -> \
         {loaded_ws:.4} s"
    );
    // The twin's own measure, in virtual time: the firmware answers later under load.
    assert!(
        loaded_virtual > 2.0 * quiet_virtual && quiet_virtual > 0.0,
        "time to first byte (virtual ms): quiet {quiet_virtual}, loaded {loaded_virtual}"
    );
    // And the clients see it.
    assert!(
        loaded_curl > 1.5 * quiet_curl,
        "curl /api/status median: quiet {quiet_curl:.4} s, loaded {loaded_curl:.4} s"
    );
    assert!(
        loaded_ws > 1.5 * quiet_ws,
        "WebSocket command reply median: quiet {quiet_ws:.4} s, loaded {loaded_ws:.4} s"
    );
}

#[test]
fn a_gcode_sender_on_the_pseudo_terminal_talks_to_a_simulated_fluidnc() {
    let t = start_twin("pty");
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("ready-pump-pty.json"),
        )
        .expect("ready file"),
    )
    .expect("json");
    let path = json["pump_fluidnc"]
        .as_str()
        .expect("pump_fluidnc")
        .to_owned();
    let mut port = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open the pty");
    let mut reader = port.try_clone().expect("clone");
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    port.write_all(b"G91 G1 X1 F200\n?").expect("write");
    let mut seen = String::new();
    let start = Instant::now();
    while !(seen.contains("ok") && seen.contains("<Run|")) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the board did not answer: {seen:?}"
        );
        if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
    drop(t);
}
