//! The HLW8032 power-meter codec: frames out and back, calibration arithmetic in `f32` (soft
//! float on both boards), and finding frames in a noisy byte stream.
use super::{Outcome, cases, check, check_eq, check_ok};
use crate::pdu::config::ChannelCalibration;
use crate::pdu::hlw8032::{
    FRAME_LEN, FrameError, FrameSync, Measurement, StateFlags, UPDATE_CURRENT, UPDATE_POWER,
    UPDATE_VOLTAGE,
};

cases![
    a_measurement_survives_the_wire_and_reads_as_calibrated_units,
    damaged_frames_are_refused_with_their_fault,
    the_frame_finder_skips_garbage_and_damaged_frames,
];

/// 230 V, 0.5 A, 115 W on the ENERGIS calibration (Kv 1.88, Ki 1.0).
fn load_230v_half_amp() -> Measurement {
    Measurement {
        flags: StateFlags::default(),
        voltage_param: 2_446_800,
        voltage_reg: 20_000,
        current_param: 50_000,
        current_reg: 100_000,
        power_param: 6_117_000,
        power_reg: 100_000,
        data_update: UPDATE_VOLTAGE | UPDATE_CURRENT | UPDATE_POWER,
        pf_reg: 0x1234,
    }
}

fn energis_calibration() -> ChannelCalibration {
    ChannelCalibration {
        kv: 1.88,
        ki: 1.0,
        v_offset: 0.0,
        i_offset: 0.0,
    }
}

fn close(a: f32, b: f32, tolerance: f32) -> bool {
    (a - b).abs() <= tolerance
}

fn a_measurement_survives_the_wire_and_reads_as_calibrated_units() -> Outcome {
    let m = load_230v_half_amp();
    let bytes = m.to_bytes();
    check_eq!(bytes[0], 0x55, "state byte of a frame without flags");
    check_eq!(bytes[1], 0x5A, "check byte");
    let back = check_ok!(Measurement::parse_bytes(&bytes));
    check_eq!(back, m);
    let r = back.reading(&energis_calibration());
    check!(close(r.voltage_v, 230.0, 0.01), "voltage {}", r.voltage_v);
    check!(close(r.current_a, 0.5, 0.0001), "current {}", r.current_a);
    check!(close(r.power_w, 115.0, 0.01), "power {}", r.power_w);
    check!(close(r.power_factor, 1.0, 0.001), "pf {}", r.power_factor);
    // Below ~5 W the chip stops updating the power REG: the reading must say 0 W, not the
    // stale register.
    let stale = Measurement {
        data_update: UPDATE_VOLTAGE | UPDATE_CURRENT,
        ..m
    };
    check_eq!(stale.reading(&energis_calibration()).power_w, 0.0);
    Ok(())
}

fn damaged_frames_are_refused_with_their_fault() -> Outcome {
    let good = load_230v_half_amp().to_bytes();
    check_eq!(
        Measurement::parse_bytes(&good[..FRAME_LEN - 1]),
        Err(FrameError::Truncated)
    );
    let mut flipped = good;
    flipped[9] ^= 0x10;
    check!(
        matches!(
            Measurement::parse_bytes(&flipped),
            Err(FrameError::Checksum { .. })
        ),
        "a flipped bit passed: {:?}",
        Measurement::parse_bytes(&flipped)
    );
    let mut no_check_byte = good;
    no_check_byte[1] = 0x00;
    check_eq!(
        Measurement::parse_bytes(&no_check_byte),
        Err(FrameError::BadCheckByte(0x00))
    );
    Ok(())
}

fn the_frame_finder_skips_garbage_and_damaged_frames() -> Outcome {
    let good = load_230v_half_amp().to_bytes();
    let mut damaged = good;
    damaged[23] = damaged[23].wrapping_add(1);
    let mut stream = heapless::Vec::<u8, 96>::new();
    for part in [
        &[0x00, 0x13, 0x5A, 0x55, 0xFF, 0x01, 0x02][..],
        &damaged,
        &good,
        &[0x55],
    ] {
        check!(stream.extend_from_slice(part).is_ok());
    }
    let mut sync = FrameSync::new();
    let (frame, used) = sync.push_slice(&stream);
    let frame = check_ok!(frame);
    check_eq!(frame, good);
    check_eq!(
        used,
        7 + FRAME_LEN * 2,
        "the frame ends where the good one ends"
    );
    // The rest is a lone state byte: no second frame, nothing reused.
    let (again, _) = sync.push_slice(&stream[used..]);
    check_eq!(again, None);
    let stats = sync.stats();
    check_eq!(stats.frames, 1);
    check_eq!(
        stats.skipped,
        7 + FRAME_LEN as u32,
        "garbage and the damaged frame"
    );
    Ok(())
}
