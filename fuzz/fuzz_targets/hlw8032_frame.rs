//! HLW8032 meter bytes (what MeterTask reads from the 4800 baud UART behind the mux).
//!
//! * A frame that parses re-emits to its canonical bytes (state `0xF0`, "no flags", is written
//!   as `0x55`), and the re-emitted frame parses to the same measurement.
//! * A reading is finite and inside the plausibility limits whatever the registers and the
//!   calibration (the calibration comes from the input too: it is a stored record).
//! * `FrameSync` over the stream reports only well-formed frames, never overlapping, and its
//!   first frame is the one `find_frame` finds; feeding it in slices finds the same frames.
#![no_main]

use firmware_core::pdu::config::{ChannelCalibration, PduConfig};
use firmware_core::pdu::hlw8032::{FRAME_LEN, FrameSync, Hlw8032Frame, Measurement, find_frame};
use libfuzzer_sys::fuzz_target;

fn calibration(bytes: &[u8]) -> ChannelCalibration {
    let f = |i: usize| {
        bytes
            .get(i * 4..i * 4 + 4)
            .and_then(|b| b.try_into().ok())
            .map_or(1.0, f32::from_le_bytes)
    };
    ChannelCalibration {
        kv: f(0),
        ki: f(1),
        v_offset: f(2),
        i_offset: f(3),
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Measurement::parse_bytes(data) {
        let mut canonical: [u8; FRAME_LEN] = data[..FRAME_LEN].try_into().unwrap();
        if canonical[0] == 0xF0 {
            canonical[0] = 0x55;
        }
        assert_eq!(m.to_bytes(), canonical, "re-emitted frame differs");
        assert_eq!(Measurement::parse_bytes(&m.to_bytes()), Ok(m));

        for cal in [
            PduConfig::default().calibration[0],
            calibration(&data[FRAME_LEN..]),
        ] {
            let r = m.reading(&cal);
            for (name, v, max) in [
                ("voltage", r.voltage_v, 400.0),
                ("current", r.current_a, 100.0),
                ("power", r.power_w, 40_000.0),
                ("power factor", r.power_factor, 1.0),
            ] {
                assert!(
                    v.is_finite() && (0.0..=max).contains(&v),
                    "{name} {v} outside 0..={max} ({m:?}, {cal:?})"
                );
            }
        }
    }

    let mut sync = FrameSync::new();
    let mut frames = Vec::new();
    let mut last_end = 0;
    for (i, &b) in data.iter().enumerate() {
        if let Some(frame) = sync.push(b) {
            assert!(Hlw8032Frame::new_checked(&frame[..]).is_ok());
            assert_eq!(
                &data[i + 1 - FRAME_LEN..=i],
                &frame[..],
                "not the stream's bytes"
            );
            assert!(i + 1 - FRAME_LEN >= last_end, "frames overlap");
            last_end = i + 1;
            frames.push(frame);
        }
    }
    assert_eq!(sync.stats().frames as usize, frames.len());
    match find_frame(data) {
        Some((offset, _)) => assert_eq!(
            frames.first().map(|f| &f[..]),
            Some(&data[offset..offset + FRAME_LEN])
        ),
        None => assert!(frames.is_empty()),
    }

    let mut sliced = FrameSync::new();
    let mut rest = data;
    let mut again = Vec::new();
    while !rest.is_empty() {
        let (frame, used) = sliced.push_slice(rest);
        assert!(used > 0 && used <= rest.len());
        again.extend(frame);
        rest = &rest[used..];
    }
    assert_eq!(again, frames, "push_slice and push disagree");
});
