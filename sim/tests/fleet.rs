//! `twin fleet` as a fleet spread over machines uses it: two shard processes (`--shard 1/2` and
//! `--shard 2/2`) against one Mosquitto broker, started here on a free port, and `mosquitto_sub`
//! checking that every device's messages arrive, each exactly once, from one shard only.
//!
//! Needs the Debian packages `mosquitto` and `mosquitto-clients` (`cargo xtask` installs them
//! when run as root). Nothing here asserts on wall time.
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A child process, killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn find(name: &str) -> PathBuf {
    let dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    dirs.iter()
        .chain([PathBuf::from("/usr/sbin")].iter())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` is not installed: apt-get install -y mosquitto mosquitto-clients")
        })
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("address").port()
}

/// Mosquitto on a free port, with a subscriber to `fleet/#` whose lines are collected.
fn start_broker(dir: &Path) -> (Killed, u16) {
    let port = free_port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_queued_messages 100000\nmax_inflight_messages 0\n"
        ),
    )
    .expect("write mosquitto.conf");
    let child = Command::new(find("mosquitto"))
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto starts");
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "mosquitto does not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (Killed(child), port)
}

fn start_subscriber(port: u16) -> (Killed, Arc<Mutex<Vec<String>>>) {
    let mut child = Command::new(find("mosquitto_sub"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", "fleet/#", "-t", "probe", "-v", "-q", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_sub starts");
    let out = child.stdout.take().expect("stdout");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if let Ok(mut v) = l.lock() {
                v.push(line);
            }
        }
    });
    // Subscribed once a probe comes back.
    let start = Instant::now();
    loop {
        let _ = Command::new(find("mosquitto_pub"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-t", "probe", "-m", "x"])
            .status();
        std::thread::sleep(Duration::from_millis(200));
        if lines.lock().map(|v| !v.is_empty()).unwrap_or(false) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "mosquitto_sub never subscribed"
        );
    }
    (Killed(child), lines)
}

fn run_shard(shard: &str, port: u16, json: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_twin"))
        .args(["fleet", "--pdus", "3", "--pumps", "3", "--shard", shard])
        .args(["--broker", &format!("mqtt://127.0.0.1:{port}")])
        .args(["--duration", "20s", "--speed", "4", "--pdu-every", "2s"])
        .arg("--json")
        .arg(json)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("twin fleet starts")
}

fn wait_ok(mut child: Child, what: &str) {
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let status = child.wait().expect("wait");
    assert!(status.success(), "{what} failed: {status}\n{err}");
}

#[test]
fn two_shards_share_one_mosquitto_and_every_device_arrives_exactly_once() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fleet-shards");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("test dir");
    let (_broker, port) = start_broker(&dir);
    let (sub, lines) = start_subscriber(port);

    let json = [dir.join("shard1.json"), dir.join("shard2.json")];
    let a = run_shard("1/2", port, &json[0]);
    let b = run_shard("2/2", port, &json[1]);
    wait_ok(a, "shard 1/2");
    wait_ok(b, "shard 2/2");
    // The shards waited for the broker's acknowledgements; give the subscriber a moment.
    std::thread::sleep(Duration::from_secs(1));
    drop(sub);

    // Which shard ran which device, and how many messages the broker acknowledged for it.
    let mut owner: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for (s, path) in json.iter().enumerate() {
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("report")).expect("JSON");
        assert_eq!(
            report["messages"]["dropped"],
            0,
            "shard {}: {report}",
            s + 1
        );
        for m in report["members"].as_array().expect("members") {
            let name = m["name"].as_str().expect("name").to_owned();
            let acked = m["acked"].as_u64().expect("acked");
            assert_eq!(m["enqueued"].as_u64(), Some(acked), "{name}: flushed");
            let before = owner.insert(name.clone(), (s, acked));
            assert!(before.is_none(), "{name} ran in both shards");
        }
    }
    let all: BTreeSet<String> = (0..3)
        .flat_map(|i| [format!("pdu-{i:04}"), format!("pump-{i:04}")])
        .collect();
    assert_eq!(
        owner.keys().cloned().collect::<BTreeSet<_>>(),
        all,
        "together the shards run the whole fleet"
    );
    assert!(
        owner.values().any(|v| v.0 == 0) && owner.values().any(|v| v.0 == 1),
        "both shards ran devices: {owner:?}"
    );

    // What the subscriber saw, per device.
    let lines = lines.lock().expect("lines").clone();
    let mut received: BTreeMap<String, u64> = BTreeMap::new();
    let mut seqs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for line in lines.iter().filter(|l| l.starts_with("fleet/")) {
        let (topic, payload) = line.split_once(' ').unwrap_or((line, ""));
        let device = topic
            .split('/')
            .nth(1)
            .expect("fleet/<device>/…")
            .to_owned();
        *received.entry(device.clone()).or_default() += 1;
        if topic.ends_with("/telemetry") {
            let v: serde_json::Value = serde_json::from_str(payload).expect("telemetry JSON");
            seqs.entry(device)
                .or_default()
                .push(v["seq"].as_u64().expect("seq"));
        }
    }
    for (name, (shard, acked)) in &owner {
        let got = received.get(name).copied().unwrap_or(0);
        assert!(*acked > 0, "{name} (shard {}) published nothing", shard + 1);
        assert_eq!(
            got,
            *acked,
            "{name}: the broker acknowledged {acked} messages from shard {}, the subscriber got {got}",
            shard + 1
        );
    }
    for i in 0..3 {
        let name = format!("pdu-{i:04}");
        let s = seqs.get(&name).cloned().unwrap_or_default();
        let want: Vec<u64> = (1..=s.len() as u64).collect();
        assert_eq!(s, want, "{name}: each telemetry message once, in order");
        assert!(s.len() >= 5, "{name}: 20 virtual s at one every 2 s: {s:?}");
    }
    let mut f = std::fs::File::create(dir.join("received.txt")).expect("log");
    let _ = f.write_all(lines.join("\n").as_bytes());
}
