//! Stored configuration records (what StorageTask reads from the two EEPROM slots at boot).
//!
//! The input is two slot images: the first [`RECORD_LEN`] bytes are slot A, the rest slot B.
//! Slot B gets its CRC fixed up before decoding (and slot A is also tried so), so that the
//! fuzzer reaches the payload decoder and migration, which a CRC-32 would otherwise shut out.
//!
//! * A record that decodes re-encodes (as the current version, with its sequence number) into
//!   a record that decodes to the same configuration; a current-version record re-encodes to
//!   exactly its own bytes.
//! * Boot's choice between the slots is the valid one with the newer sequence number.
//! * Whatever configuration boot loads, the front-ends still answer with valid replies: the
//!   status and settings JSON parse, the metrics page fits its buffer. A record is outside
//!   bytes, so labels, names and communities in it are untrusted text.
#![no_main]

use crc::{CRC_32_ISO_HDLC, Crc};
use firmware_core::pdu::http::{HttpServer, Limits, Outcome, RECOMMENDED_RESPONSE_LEN};
use firmware_core::pdu::storage::{
    self, Choice, HEADER_LEN, MAX_PAYLOAD, RECORD_LEN, Slot, VERSION, seq_newer,
};
use libfuzzer_sys::fuzz_target;
use twinbench_fuzz::{check_http_response, check_json, check_storable, snapshot};

/// The record CRC (storage's module docs: CRC-32/ISO-HDLC over header and payload).
const CRC32: Crc<u32> = Crc::<u32>::new(&CRC_32_ISO_HDLC);

/// The slot with its CRC made right for what its header says, so that mutations reach the
/// payload decoder instead of stopping at the CRC (the raw slot still covers torn records).
fn with_valid_crc(slot: &[u8]) -> Vec<u8> {
    let mut fixed = slot.to_vec();
    let n = slot
        .get(10..12)
        .map_or(0, |b| usize::from(u16::from_le_bytes([b[0], b[1]])));
    let body = HEADER_LEN + n;
    if n <= MAX_PAYLOAD && fixed.len() >= body + 4 {
        let crc = CRC32.checksum(&fixed[..body]);
        fixed[body..body + 4].copy_from_slice(&crc.to_le_bytes());
    }
    fixed
}

fuzz_target!(|data: &[u8]| {
    let (raw_a, raw_b) = data.split_at(data.len().min(RECORD_LEN));
    // Slot A as it came (CRC and all), slot B with its CRC fixed up.
    let (a, fixed_b) = (raw_a, with_valid_crc(raw_b));
    let b = &fixed_b[..];
    let decoded_a = storage::decode(a);
    let decoded_b = storage::decode(b);
    if let Ok(d) = storage::decode(raw_b) {
        assert_eq!(
            Ok(&d),
            decoded_b.as_ref(),
            "fixing a valid CRC changed the record"
        );
    }
    if let Ok(d) = storage::decode(&with_valid_crc(raw_a)) {
        check_storable(&d.config);
    }
    for (bytes, decoded) in [(a, &decoded_a), (b, &decoded_b)] {
        let Ok(d) = decoded else { continue };
        check_storable(&d.config);
        let record = storage::encode(&d.config, d.seq).expect("a decoded configuration encodes");
        if d.version == VERSION {
            assert_eq!(
                record.as_bytes(),
                &bytes[..record.len()],
                "a current-version record does not re-encode to its own bytes"
            );
        }
    }

    let choice = storage::choose(decoded_a.clone(), decoded_b.clone());
    match (&decoded_a, &decoded_b, &choice) {
        (Ok(x), Ok(y), Choice::Slot(slot, _)) => {
            let newer_b = seq_newer(y.seq, x.seq);
            assert_eq!(*slot, if newer_b { Slot::B } else { Slot::A });
        }
        (Ok(_), Err(_), Choice::Slot(Slot::A, _)) | (Err(_), Ok(_), Choice::Slot(Slot::B, _)) => {}
        (Err(x), Err(y), Choice::Neither { a, b }) => assert!(x == a && y == b),
        other => panic!("choose picked wrongly: {other:?}"),
    }
    let loaded = choice.into_loaded();

    let mut snap = snapshot();
    snap.config = loaded.config;
    let mut server = HttpServer::new(Limits::default());
    let mut out = vec![0u8; RECOMMENDED_RESPONSE_LEN];
    for (path, json) in [
        ("/api/status", true),
        ("/api/settings", true),
        ("/metrics", false),
        ("/", false),
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: pdu\r\n\r\n");
        match server.handle(request.as_bytes(), &snap, &mut out) {
            Ok(Outcome::Reply(n)) => {
                let r = check_http_response(&out[..n], false);
                assert_eq!(r.code, 200, "GET {path} with a stored configuration");
                if json {
                    check_json(r.body);
                }
            }
            other => panic!("GET {path}: {other:?}"),
        }
    }
});
