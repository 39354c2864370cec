//! The twin runs the firmware's code, so the simulator must not answer for the device: this test
//! fails if the device wiring (`sim/src/devices/**`) or a board crate (`firmware/**`) builds an
//! MQTT payload or an HTTP/WebSocket reply of its own. Those belong in `firmware-core`.
//!
//! What it looks for, outside comments and `#[cfg(test)]` code:
//! * an HTTP status line in a literal (`HTTP/1.1 200`, `HTTP/1.0 404`): a reply;
//! * a JSON object literal (`"{\"error\":…"`, `r#"{"ok":…"#`, `"{{\"event\":…"` in a format
//!   string), except a client's command (`{"cmd":…}`), which is what the far side of the link
//!   legitimately writes;
//! * `json!(`, serde_json's builder, and `tungstenite`, a WebSocket framing of its own.
//!
//! [`PENDING`] lists the known leftovers of the PDU half of the one-firmware work: each entry is
//! a file and the literal it may still hold. Delete an entry when the code it names moves to
//! `firmware-core`; the test also fails when an entry no longer matches anything, so the list
//! cannot go stale.
use std::path::{Path, PathBuf};

/// Known pending violations: (file under the repository root, text of the offending literal).
const PENDING: &[(&str, &str)] = &[
    // The PDU's NetTask platform glue still answers undecodable and failing requests itself
    // (issue 9, PDU half): pending its move into firmware-core.
    ("sim/src/devices/pdu/net.rs", "HTTP/1.1 400"),
    ("sim/src/devices/pdu/net.rs", "HTTP/1.1 500"),
];

/// Files under `sim/src/devices` that are not device wiring: the architecture comparison writes
/// its own report (the twin's results as JSON, not anything the device says).
const NOT_WIRING: &[&str] = &["sim/src/devices/pump/compare.rs"];

/// One finding: file, line number, what matched.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Finding {
    file: String,
    line: usize,
    what: String,
}

/// Scan one file's text (see the module docs).
fn scan(file: &str, text: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        if line.starts_with("#[cfg(test)]") {
            break;
        }
        if line.starts_with("//") {
            continue;
        }
        let mut hit = |what: String| {
            out.push(Finding {
                file: file.to_owned(),
                line: i + 1,
                what,
            })
        };
        if let Some(s) = status_line(line) {
            hit(s);
        }
        if let Some(k) = json_object(line) {
            hit(k);
        }
        for word in ["json!(", "tungstenite"] {
            if line.contains(word) {
                hit(word.to_owned());
            }
        }
    }
    out
}

/// `HTTP/1.x NNN` anywhere in the line.
fn status_line(line: &str) -> Option<String> {
    let mut rest = line;
    while let Some(at) = rest.find("HTTP/1.") {
        let tail = &rest[at..];
        let b = tail.as_bytes();
        if b.len() >= 12
            && (b[7] == b'0' || b[7] == b'1')
            && b[8] == b' '
            && b[9..12].iter().all(u8::is_ascii_digit)
        {
            return Some(tail[..12].to_owned());
        }
        rest = &tail[7..];
    }
    None
}

/// A JSON object literal's opening (`{"key":`, escaped or raw, in a format string or not) whose
/// first key is not `cmd`.
fn json_object(line: &str) -> Option<String> {
    for open in ["{\\\"", "{{\\\"", "{\""] {
        let mut rest = line;
        while let Some(at) = rest.find(open) {
            let after = &rest[at + open.len()..];
            let key: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let tail = &after[key.len()..];
            let closes = tail.starts_with("\\\":") || tail.starts_with("\":");
            if !key.is_empty() && closes && key != "cmd" {
                return Some(format!("{open}{key}"));
            }
            rest = &rest[at + open.len()..];
        }
    }
    None
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            // Board crates build into their own target folders.
            if p.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs")
            // A device's test module file is test code.
            && p.file_name().is_none_or(|n| n != "tests.rs")
        {
            out.push(p);
        }
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("sim is inside the repository")
        .to_path_buf()
}

#[test]
fn device_wiring_and_boards_build_no_payloads_or_replies_of_their_own() {
    let root = repo();
    let mut files = Vec::new();
    rust_files(&root.join("sim/src/devices"), &mut files);
    rust_files(&root.join("firmware"), &mut files);
    assert!(files.len() > 10, "found only {} files to scan", files.len());
    let mut findings = Vec::new();
    for f in &files {
        let rel = f
            .strip_prefix(&root)
            .unwrap_or(f)
            .to_string_lossy()
            .replace('\\', "/");
        if NOT_WIRING.contains(&rel.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap_or_default();
        findings.extend(scan(&rel, &text));
    }
    let mut used = vec![false; PENDING.len()];
    let unexpected: Vec<&Finding> = findings
        .iter()
        .filter(|f| {
            let pending = PENDING
                .iter()
                .position(|(file, what)| f.file == *file && f.what.starts_with(what));
            if let Some(i) = pending {
                used[i] = true;
            }
            pending.is_none()
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "the simulator builds device payloads or replies of its own (they belong in \
         firmware-core):\n{unexpected:#?}"
    );
    let stale: Vec<_> = PENDING
        .iter()
        .zip(&used)
        .filter(|(_, u)| !**u)
        .map(|(p, _)| p)
        .collect();
    assert!(
        stale.is_empty(),
        "PENDING entries that match nothing any more (delete them): {stale:?}"
    );
}

#[test]
fn the_scan_catches_planted_replies_and_payloads_and_lets_glue_pass() {
    let planted = r##"
fn reply() -> String {
    format!("HTTP/1.1 200 OK\r\n\r\n{{\"ok\":true}}")
}
fn payload(ts: u64) -> String {
    format!("{{\"event\":\"STARTED\",\"timestamp\":{ts}}}")
}
fn raw() -> &'static str { r#"{"error":"nope"}"# }
fn built() -> String { serde_json::json!({"a": 1}).to_string() }
"##;
    let found: Vec<String> = scan("planted.rs", planted)
        .into_iter()
        .map(|f| format!("{}:{}", f.line, f.what))
        .collect();
    assert_eq!(
        found,
        [
            "3:HTTP/1.1 200",
            "3:{\\\"ok",
            "6:{\\\"event",
            "8:{\"error",
            "9:{\"a",
            "9:json!(",
        ]
    );
    let glue = r##"
// A comment may say HTTP/1.1 200 or {"error":"x"}.
fn command() -> Vec<u8> { br#"{"cmd":"stop"}"#.to_vec() }
fn request(path: &str) -> String { format!("GET {path} HTTP/1.1\r\nHost: pump\r\n\r\n") }
#[cfg(test)]
mod tests { const R: &str = "HTTP/1.1 404 Not Found"; }
"##;
    assert_eq!(scan("glue.rs", glue), []);
}
