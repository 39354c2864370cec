//! The configuration store on a RAM model of the CAT24C256 (the driver tests' datasheet mock):
//! records through postcard and CRC on the target's own byte order and alignment, StorageTask's
//! request interface, power cuts in the middle of a save, and a damaged slot.
use embassy_futures::block_on;

use super::{Failure, Outcome, cases, check, check_eq, check_ok};
use crate::pdu::config::PduConfig;
use crate::pdu::eeprom::mock::{CutMode, MockEeprom, NoDelay};
use crate::pdu::eeprom::{Cat24c256, DEFAULT_ADDRESS};
use crate::pdu::storage::{
    LoadSource, RECORD_LEN, SLOT_A_ADDRESS, SLOT_B_ADDRESS, Slot, Storage, StorageOp, StorageReply,
    StorageRequest, decode, encode,
};
use crate::pdu::{OutletMask, storage};

cases![
    a_configuration_round_trips_through_a_record,
    the_task_interface_saves_loads_and_resets_across_reboots,
    a_power_cut_mid_save_keeps_the_old_configuration,
    a_damaged_slot_falls_back_to_the_other_one,
];

pub(super) type Store = Storage<MockEeprom, NoDelay>;

pub(super) fn store_on(part: MockEeprom) -> Store {
    Storage::new(Cat24c256::new(part, NoDelay::default(), DEFAULT_ADDRESS))
}

/// Power off and on: the same part, a fresh firmware.
pub(super) fn reboot(store: Store) -> Store {
    let (mut part, _) = store.release().release();
    part.power_on();
    store_on(part)
}

/// A configuration that differs from the defaults in every section.
fn rack(name: &str, ip: u8) -> Result<PduConfig, Failure> {
    let mut c = PduConfig::default();
    c.identity.device_name = check_ok!(heapless::String::try_from(name));
    c.labels[7] = check_ok!(heapless::String::try_from(name));
    c.network.ip = [10, 0, 0, ip];
    c.switch.safe_mask = OutletMask(ip);
    c.switch.interlock_groups[1] = OutletMask(0b1100_0000);
    c.calibration[3].kv = 1.5 + f32::from(ip) / 100.0;
    c.ocp.limit_a = 15.0;
    Ok(c)
}

fn request(op: StorageOp, token: u32) -> StorageRequest {
    StorageRequest { op, token }
}

fn a_configuration_round_trips_through_a_record() -> Outcome {
    let config = rack("rack-12", 42)?;
    let record = check_ok!(encode(&config, 0xFFFF_FFFE));
    check!(
        record.len() <= RECORD_LEN,
        "record of {} bytes",
        record.len()
    );
    let decoded = check_ok!(decode(record.slot_image()));
    check_eq!(decoded.seq, 0xFFFF_FFFE);
    check_eq!(decoded.version, storage::VERSION);
    check!(
        decoded.config == config,
        "the decoded configuration differs"
    );
    // One flipped bit anywhere in the record is caught by the CRC or the framing.
    for at in [0, record.len() / 2, record.len() - 1] {
        let mut image = *record.slot_image();
        image[at] ^= 0x04;
        check!(decode(&image).is_err(), "a flip at byte {at} was accepted");
    }
    Ok(())
}

fn the_task_interface_saves_loads_and_resets_across_reboots() -> Outcome {
    let mut store = store_on(MockEeprom::new());
    let reply = block_on(store.handle(request(StorageOp::Load, 1)));
    let StorageReply::Loaded { token: 1, loaded } = reply else {
        check!(false, "load answered {reply:?}");
        return Ok(());
    };
    check!(
        matches!(loaded.source, LoadSource::Defaults(_)),
        "{:?}",
        loaded.source
    );

    let config = rack("rack-3", 3)?;
    let reply = block_on(store.handle(request(StorageOp::Save(config.clone()), 2)));
    check!(
        matches!(reply, StorageReply::Saved { token: 2, .. }),
        "{reply:?}"
    );

    let mut store = reboot(store);
    let reply = block_on(store.handle(request(StorageOp::Load, 3)));
    let StorageReply::Loaded { loaded, .. } = reply else {
        check!(false, "load answered {reply:?}");
        return Ok(());
    };
    check!(
        loaded.config == config,
        "the saved configuration did not come back"
    );

    let reply = block_on(store.handle(request(StorageOp::FactoryReset, 4)));
    check!(
        matches!(reply, StorageReply::Saved { token: 4, .. }),
        "{reply:?}"
    );
    let loaded = block_on(reboot(store).load());
    check!(
        loaded.config == PduConfig::default(),
        "factory defaults not in force"
    );
    check!(
        matches!(loaded.source, LoadSource::Stored { seq: 2, .. }),
        "a reset is stored like any save: {:?}",
        loaded.source
    );
    Ok(())
}

fn a_power_cut_mid_save_keeps_the_old_configuration() -> Outcome {
    let old = rack("old", 1)?;
    let new = rack("new", 2)?;
    let len = check_ok!(encode(&new, 2)).len();
    // At the first byte, inside the first page, at a page boundary, and one byte short.
    for cut in [0, 10, 64, len - 1] {
        for mode in [CutMode::Clean, CutMode::Garbage] {
            let mut store = store_on(MockEeprom::new());
            check_ok!(block_on(store.save(&old)));
            let mut part = reboot(store).release().release().0;
            part.cut_after(cut, mode);
            let mut store = store_on(part);
            let _ = block_on(store.load());
            let reply = block_on(store.handle(request(StorageOp::Save(new.clone()), 9)));
            check!(
                matches!(reply, StorageReply::Failed { token: 9, .. }),
                "cut after {cut} ({mode:?}): the save answered {reply:?}"
            );
            let loaded = block_on(reboot(store).load());
            check!(
                loaded.config == old,
                "cut after {cut} ({mode:?}): loaded {:?}",
                loaded.source
            );
        }
    }
    Ok(())
}

fn a_damaged_slot_falls_back_to_the_other_one() -> Outcome {
    let mut store = store_on(MockEeprom::new());
    let first = rack("first", 1)?;
    let second = rack("second", 2)?;
    check_eq!(check_ok!(block_on(store.save(&first))).slot, Slot::A);
    check_eq!(check_ok!(block_on(store.save(&second))).slot, Slot::B);
    let (mut part, _) = store.release().release();
    // Rot in slot B's payload: the older slot A is used.
    part.mem[usize::from(SLOT_B_ADDRESS) + 40] ^= 0xFF;
    part.power_on();
    let mut store = store_on(part);
    let loaded = block_on(store.load());
    check!(loaded.config == first, "loaded {:?}", loaded.source);
    check!(
        matches!(
            loaded.source,
            LoadSource::Stored {
                slot: Slot::A,
                seq: 1,
                ..
            }
        ),
        "{:?}",
        loaded.source
    );
    // The next save must not reuse slot A's place in the sequence: it goes to B with seq 2 or
    // later, and wins.
    let third = rack("third", 3)?;
    let saved = check_ok!(block_on(store.save(&third)));
    check_eq!(saved.slot, Slot::B);
    check!(saved.seq >= 2, "seq {}", saved.seq);
    let (mut part, _) = store.release().release();
    // Both slots damaged: factory defaults, and a reason instead of a panic.
    part.mem[usize::from(SLOT_A_ADDRESS) + 20] ^= 0x01;
    part.mem[usize::from(SLOT_B_ADDRESS) + 20] ^= 0x01;
    let loaded = block_on(store_on(part).load());
    check!(
        matches!(loaded.source, LoadSource::Defaults(_)),
        "{:?}",
        loaded.source
    );
    Ok(())
}
