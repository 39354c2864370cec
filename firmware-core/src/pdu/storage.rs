//! StorageTask: the PDU configuration on the EEPROM, versioned, checksummed, in two slots.
//!
//! This module owns the persistent [`PduConfig`]: the record format, the choice between the two
//! slots at boot, schema migration, and the task that serves load/save requests. It is the only
//! user of the [`Cat24c256`] driver.
//!
//! # Record format
//!
//! One record per slot, little-endian, [`RECORD_LEN`] bytes at most:
//!
//! | bytes        | field                                                       |
//! |--------------|-------------------------------------------------------------|
//! | 0..4         | magic `PDUC`                                                |
//! | 4..6         | schema version ([`VERSION`] now; 1 is migrated on load)     |
//! | 6..10        | sequence number (newer = larger, modulo 2³²)                |
//! | 10..12       | payload length `n`                                          |
//! | 12..12+n     | payload: the configuration, `postcard`-encoded              |
//! | 12+n..16+n   | CRC-32 (ISO-HDLC) of bytes `0..12+n`                        |
//!
//! The payload is serde/postcard so that adding a field is a new struct, not hand-written byte
//! offsets; the header is hand-laid because it must be readable before the version is known.
//!
//! # Why a torn write never loses the configuration
//!
//! Saves alternate between slot A and slot B: a save always overwrites the slot that does *not*
//! hold the configuration in force, with the next sequence number, and reads it back. At boot
//! both slots are decoded and [`choose`] takes the valid one with the newer sequence number. A
//! power cut during a save can only damage the slot being written; its CRC then fails (or it
//! still holds its older record), and the other slot, untouched, wins. Only when neither slot
//! holds a valid record does boot fall back to factory defaults, and it says why
//! ([`DefaultsReason`]).
//!
//! # EEPROM map
//!
//! The slots live at [`SLOT_A_ADDRESS`] and [`SLOT_B_ADDRESS`] (1 KiB each, page-aligned), clear
//! of the regions the real ENERGIS firmware uses below 0x2100 and of its magic at 0x7FFE.
use core::fmt;

use crc::{CRC_32_ISO_HDLC, Crc};
use embassy_futures::select::{Either, select};
use embassy_sync::blocking_mutex::raw::RawMutex;
use embedded_hal_async::delay::DelayNs;
use embedded_hal_async::i2c::I2c;
use heapless::String;
use serde::{Deserialize, Serialize};

use super::config::{
    ButtonMap, ChannelCalibration, INTERLOCK_GROUPS, IdentityConfig, NetworkConfig, PduConfig,
    SOURCES, SwitchPolicy,
};
use super::eeprom::{Cat24c256, EepromError};
use super::{CHANNELS, OutletMask};
use crate::ports::Clock;
use crate::queue::Queue;
use crate::time::{Duration, Instant};

/// Schema version written by this firmware.
pub const VERSION: u16 = 2;
/// Record magic, `PDUC`.
pub const MAGIC: [u8; 4] = *b"PDUC";
/// Bytes before the payload.
pub const HEADER_LEN: usize = 12;
/// Bytes after the payload (the CRC).
pub const TRAILER_LEN: usize = 4;
/// Largest record; also the size of a slot.
pub const RECORD_LEN: usize = 1024;
/// Largest payload.
pub const MAX_PAYLOAD: usize = RECORD_LEN - HEADER_LEN - TRAILER_LEN;
/// EEPROM address of slot A.
pub const SLOT_A_ADDRESS: u16 = 0x4000;
/// EEPROM address of slot B.
pub const SLOT_B_ADDRESS: u16 = 0x4400;

const CRC32: Crc<u32> = Crc::<u32>::new(&CRC_32_ISO_HDLC);

/// Why a stored record cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum RecordError {
    /// Shorter than its header and trailer say.
    Truncated,
    /// Erased (all `0xFF` magic): nothing was ever stored here.
    Blank,
    /// The magic is wrong: not a configuration record.
    BadMagic,
    /// A schema version this firmware does not know.
    UnsupportedVersion(u16),
    /// The payload length is larger than a slot.
    BadLength(u16),
    /// The CRC does not match: a torn or corrupted write.
    Crc {
        /// CRC stored in the record.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
    /// The CRC matched but the payload is not a configuration of its version.
    Payload,
    /// The configuration does not fit in [`MAX_PAYLOAD`] bytes (encoding).
    TooLarge,
    /// The slot could not be read from the EEPROM.
    Unreadable,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Truncated => write!(f, "record truncated"),
            RecordError::Blank => write!(f, "slot is blank"),
            RecordError::BadMagic => write!(f, "not a configuration record"),
            RecordError::UnsupportedVersion(v) => write!(f, "unsupported schema version {v}"),
            RecordError::BadLength(n) => write!(f, "payload length {n} exceeds the slot"),
            RecordError::Crc { stored, computed } => {
                write!(f, "crc 0x{stored:08X}, computed 0x{computed:08X}")
            }
            RecordError::Payload => write!(f, "payload does not decode"),
            RecordError::TooLarge => write!(f, "configuration too large for a slot"),
            RecordError::Unreadable => write!(f, "slot unreadable"),
        }
    }
}

impl core::error::Error for RecordError {}

/// A decoded record.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The configuration, migrated to the current schema.
    pub config: PduConfig,
    /// The record's sequence number.
    pub seq: u32,
    /// The schema version it was stored with (less than [`VERSION`] = migrated).
    pub version: u16,
}

/// An encoded record: a slot image whose first [`len`](Self::len) bytes matter.
#[derive(Clone)]
pub struct Record {
    bytes: [u8; RECORD_LEN],
    len: usize,
}

impl Record {
    /// The bytes to store.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or(&self.bytes)
    }
    /// Number of bytes to store.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Always false: a record has at least a header and a CRC.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The whole slot image (unused tail `0xFF`).
    pub fn slot_image(&self) -> &[u8; RECORD_LEN] {
        &self.bytes
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Record({} bytes)", self.len)
    }
}

fn encode_versioned<T: Serialize>(
    value: &T,
    version: u16,
    seq: u32,
) -> Result<Record, RecordError> {
    let mut bytes = [0xFFu8; RECORD_LEN];
    let (header, rest) = bytes.split_at_mut(HEADER_LEN);
    let payload_area = rest.get_mut(..MAX_PAYLOAD).ok_or(RecordError::TooLarge)?;
    let n = postcard::to_slice(value, payload_area)
        .map_err(|_| RecordError::TooLarge)?
        .len();
    header[0..4].copy_from_slice(&MAGIC);
    header[4..6].copy_from_slice(&version.to_le_bytes());
    header[6..10].copy_from_slice(&seq.to_le_bytes());
    // n <= MAX_PAYLOAD < u16::MAX
    header[10..12].copy_from_slice(&(n as u16).to_le_bytes());
    let body = HEADER_LEN + n;
    let crc = CRC32.checksum(&bytes[..body]);
    bytes[body..body + TRAILER_LEN].copy_from_slice(&crc.to_le_bytes());
    Ok(Record {
        bytes,
        len: body + TRAILER_LEN,
    })
}

/// Encode `config` as a current-version record with sequence number `seq`.
pub fn encode(config: &PduConfig, seq: u32) -> Result<Record, RecordError> {
    encode_versioned(config, VERSION, seq)
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(*b.get(at..)?.first_chunk::<2>()?))
}
fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(*b.get(at..)?.first_chunk::<4>()?))
}

fn payload_as<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, RecordError> {
    match postcard::take_from_bytes::<T>(payload) {
        Ok((value, [])) => Ok(value),
        _ => Err(RecordError::Payload),
    }
}

/// Decode a record from the start of `bytes` (a slot image; bytes after the record are ignored),
/// migrating older schema versions.
pub fn decode(bytes: &[u8]) -> Result<Decoded, RecordError> {
    let magic = bytes.get(0..4).ok_or(RecordError::Truncated)?;
    if magic == [0xFF; 4] {
        return Err(RecordError::Blank);
    }
    if magic != MAGIC {
        return Err(RecordError::BadMagic);
    }
    let version = le_u16(bytes, 4).ok_or(RecordError::Truncated)?;
    let seq = le_u32(bytes, 6).ok_or(RecordError::Truncated)?;
    let n = le_u16(bytes, 10).ok_or(RecordError::Truncated)?;
    if usize::from(n) > MAX_PAYLOAD {
        return Err(RecordError::BadLength(n));
    }
    let body = HEADER_LEN + usize::from(n);
    let covered = bytes.get(..body).ok_or(RecordError::Truncated)?;
    let stored = le_u32(bytes, body).ok_or(RecordError::Truncated)?;
    let computed = CRC32.checksum(covered);
    if stored != computed {
        return Err(RecordError::Crc { stored, computed });
    }
    let payload = covered.get(HEADER_LEN..).ok_or(RecordError::Truncated)?;
    let config = match version {
        1 => payload_as::<PduConfigV1>(payload)?.migrate(),
        VERSION => payload_as::<PduConfig>(payload)?,
        other => return Err(RecordError::UnsupportedVersion(other)),
    };
    Ok(Decoded {
        config,
        seq,
        version,
    })
}

/// Whether sequence number `a` is newer than `b`, modulo 2³² (serial-number arithmetic, so the
/// counter may wrap after four billion saves).
pub const fn seq_newer(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// One of the two slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Slot {
    /// At [`SLOT_A_ADDRESS`].
    A,
    /// At [`SLOT_B_ADDRESS`].
    B,
}

impl Slot {
    /// The slot's EEPROM address.
    pub const fn address(self) -> u16 {
        match self {
            Slot::A => SLOT_A_ADDRESS,
            Slot::B => SLOT_B_ADDRESS,
        }
    }
    /// The other slot.
    pub const fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

/// What boot found in the two slots.
// Built once per boot and consumed at once; no allocator to box the configuration into.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    /// This slot holds the newest valid record.
    Slot(Slot, Decoded),
    /// Neither slot is valid; why not, per slot.
    Neither {
        /// Slot A's fault.
        a: RecordError,
        /// Slot B's fault.
        b: RecordError,
    },
}

/// The valid slot with the newer sequence number (A on a tie, which a correct writer never
/// produces).
pub fn choose(a: Result<Decoded, RecordError>, b: Result<Decoded, RecordError>) -> Choice {
    match (a, b) {
        (Ok(a), Ok(b)) => {
            if seq_newer(b.seq, a.seq) {
                Choice::Slot(Slot::B, b)
            } else {
                Choice::Slot(Slot::A, a)
            }
        }
        (Ok(a), Err(_)) => Choice::Slot(Slot::A, a),
        (Err(_), Ok(b)) => Choice::Slot(Slot::B, b),
        (Err(a), Err(b)) => Choice::Neither { a, b },
    }
}

/// Why boot runs on factory defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DefaultsReason {
    /// Both slots are erased: a new device.
    Blank,
    /// Neither slot holds a valid record.
    Invalid {
        /// Slot A's fault.
        a: RecordError,
        /// Slot B's fault.
        b: RecordError,
    },
}

/// Where the loaded configuration came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum LoadSource {
    /// A stored record.
    Stored {
        /// Which slot.
        slot: Slot,
        /// Its sequence number.
        seq: u32,
        /// The schema version it was stored with (older than [`VERSION`] = migrated).
        version: u16,
    },
    /// Factory defaults.
    Defaults(DefaultsReason),
}

/// A loaded configuration and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The configuration to run with.
    pub config: PduConfig,
    /// Its origin.
    pub source: LoadSource,
}

impl Choice {
    /// The configuration to run with: the chosen record, or factory defaults with the reason.
    pub fn into_loaded(self) -> Loaded {
        match self {
            Choice::Slot(slot, d) => Loaded {
                config: d.config,
                source: LoadSource::Stored {
                    slot,
                    seq: d.seq,
                    version: d.version,
                },
            },
            Choice::Neither { a, b } => Loaded {
                config: PduConfig::default(),
                source: LoadSource::Defaults(
                    if a == RecordError::Blank && b == RecordError::Blank {
                        DefaultsReason::Blank
                    } else {
                        DefaultsReason::Invalid { a, b }
                    },
                ),
            },
        }
    }
}

/// Where the next save goes, given the record in force (`None`: no valid record).
pub const fn next_save(current: Option<(Slot, u32)>) -> (Slot, u32) {
    match current {
        Some((slot, seq)) => (slot.other(), seq.wrapping_add(1)),
        None => (Slot::A, 1),
    }
}

// ---------------------------------------------------------------------------------------------
// Schema version 1, kept only to read old records.

/// Schema version 1 of the switch policy: no brown-out guard, fault threshold or priority
/// override yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchPolicyV1 {
    /// As in [`SwitchPolicy::safe_mask`].
    pub safe_mask: OutletMask,
    /// As in [`SwitchPolicy::restore_on_boot`].
    pub restore_on_boot: bool,
    /// As in [`SwitchPolicy::last_state`].
    pub last_state: OutletMask,
    /// As in [`SwitchPolicy::interlock_groups`].
    pub interlock_groups: [OutletMask; INTERLOCK_GROUPS],
    /// As in [`SwitchPolicy::deny`].
    pub deny: [OutletMask; SOURCES],
    /// As in [`SwitchPolicy::min_toggle_ms`].
    pub min_toggle_ms: u16,
    /// As in [`SwitchPolicy::max_simultaneous`].
    pub max_simultaneous: u8,
}

/// Schema version 1 of the configuration: what the first release stored. Over-current limit,
/// logging, health thresholds, SNMP communities and HTTP credentials did not exist yet and take
/// their factory defaults on migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PduConfigV1 {
    /// IP settings.
    pub network: NetworkConfig,
    /// Name and location.
    pub identity: IdentityConfig,
    /// Switch policy, version 1.
    pub switch: SwitchPolicyV1,
    /// Button map.
    pub buttons: ButtonMap,
    /// Per-channel calibration.
    pub calibration: [ChannelCalibration; CHANNELS],
    /// Outlet labels.
    pub labels: [String<32>; CHANNELS],
}

impl PduConfigV1 {
    /// The version-2 configuration: every v1 field kept, new fields at factory defaults.
    pub fn migrate(self) -> PduConfig {
        let d = PduConfig::default();
        PduConfig {
            network: self.network,
            identity: self.identity,
            switch: SwitchPolicy {
                safe_mask: self.switch.safe_mask,
                restore_on_boot: self.switch.restore_on_boot,
                last_state: self.switch.last_state,
                interlock_groups: self.switch.interlock_groups,
                deny: self.switch.deny,
                min_toggle_ms: self.switch.min_toggle_ms,
                max_simultaneous: self.switch.max_simultaneous,
                ..d.switch
            },
            buttons: self.buttons,
            calibration: self.calibration,
            labels: self.labels,
            ..d
        }
    }
}

/// Encode a version-1 record (for tests and for the simulator to seed an "old" EEPROM image).
pub fn encode_v1(config: &PduConfigV1, seq: u32) -> Result<Record, RecordError> {
    encode_versioned(config, 1, seq)
}

// ---------------------------------------------------------------------------------------------
// The storage over the EEPROM driver.

/// Why a save failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum SaveError<E> {
    /// The EEPROM failed.
    Eeprom(EepromError<E>),
    /// The configuration could not be encoded.
    Record(RecordError),
    /// The bytes read back differ from those written (write-protected or failing part).
    Verify {
        /// The slot written.
        slot: Slot,
    },
}

impl<E: fmt::Debug> fmt::Display for SaveError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SaveError::Eeprom(e) => write!(f, "eeprom: {e}"),
            SaveError::Record(e) => write!(f, "record: {e}"),
            SaveError::Verify { slot } => write!(f, "slot {slot:?} did not read back as written"),
        }
    }
}

impl<E: fmt::Debug> core::error::Error for SaveError<E> {}

impl<E> From<EepromError<E>> for SaveError<E> {
    fn from(e: EepromError<E>) -> Self {
        SaveError::Eeprom(e)
    }
}

/// A completed save.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Saved {
    /// The slot written.
    pub slot: Slot,
    /// The record's sequence number.
    pub seq: u32,
}

/// The configuration store: two slots on a [`Cat24c256`].
pub struct Storage<I2C, D> {
    eeprom: Cat24c256<I2C, D>,
    /// The slot and sequence number of the record in force; `None` until a load found one.
    current: Option<(Slot, u32)>,
    /// Whether `current` reflects what the slots hold (false after a failed read).
    known: bool,
}

impl<I2C: I2c, D: DelayNs> Storage<I2C, D> {
    /// A store on `eeprom`. Call [`load`](Self::load) first.
    pub fn new(eeprom: Cat24c256<I2C, D>) -> Self {
        Storage {
            eeprom,
            current: None,
            known: false,
        }
    }

    /// The driver (for its stats).
    pub fn eeprom(&self) -> &Cat24c256<I2C, D> {
        &self.eeprom
    }

    /// Give the driver back.
    pub fn release(self) -> Cat24c256<I2C, D> {
        self.eeprom
    }

    async fn read_slot(&mut self, slot: Slot) -> Result<Decoded, RecordError> {
        let mut image = [0u8; RECORD_LEN];
        match self.eeprom.read(slot.address(), &mut image).await {
            Ok(()) => decode(&image),
            Err(e) => {
                let failure = StorageFailure::from(SaveError::Eeprom(e));
                warn!("storage: reading slot {:?} failed: {:?}", slot, failure);
                Err(RecordError::Unreadable)
            }
        }
    }

    async fn scan(&mut self) -> Choice {
        let a = self.read_slot(Slot::A).await;
        let b = self.read_slot(Slot::B).await;
        let unreadable = a == Err(RecordError::Unreadable) || b == Err(RecordError::Unreadable);
        let choice = choose(a, b);
        self.current = match &choice {
            Choice::Slot(slot, d) => Some((*slot, d.seq)),
            Choice::Neither { .. } => None,
        };
        self.known = !unreadable;
        choice
    }

    /// Read both slots and return the newest valid configuration, or factory defaults and why.
    pub async fn load(&mut self) -> Loaded {
        let loaded = self.scan().await.into_loaded();
        match &loaded.source {
            LoadSource::Stored { slot, seq, version } => info!(
                "storage: loaded slot {:?} seq {} (schema v{})",
                slot, seq, version
            ),
            LoadSource::Defaults(reason) => {
                warn!("storage: factory defaults: {:?}", reason)
            }
        }
        loaded
    }

    /// Store `config` in the slot not in force, with the next sequence number, and read it back.
    /// On any error the previous configuration stays in force.
    pub async fn save(&mut self, config: &PduConfig) -> Result<Saved, SaveError<I2C::Error>> {
        if !self.known {
            // A slot we could not read may hold a newer record than we know of: learn the
            // sequence numbers before choosing where to write, or refuse.
            self.scan().await;
            if !self.known {
                return Err(SaveError::Record(RecordError::Unreadable));
            }
        }
        let (slot, seq) = next_save(self.current);
        let record = encode(config, seq).map_err(SaveError::Record)?;
        self.eeprom.write(slot.address(), record.as_bytes()).await?;
        let mut back = [0u8; RECORD_LEN];
        let back = back.get_mut(..record.len()).unwrap_or(&mut []);
        self.eeprom.read(slot.address(), back).await?;
        if back != record.as_bytes() {
            warn!("storage: slot {:?} read back differently", slot);
            return Err(SaveError::Verify { slot });
        }
        self.current = Some((slot, seq));
        info!("storage: saved slot {:?} seq {}", slot, seq);
        Ok(Saved { slot, seq })
    }
}

// ---------------------------------------------------------------------------------------------
// The task.

/// What a [`StorageRequest`] asks for.
// A configuration is a few hundred bytes and moved once per request; no allocator to box it.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum StorageOp {
    /// Read the configuration in force from the EEPROM.
    Load,
    /// Persist this configuration.
    Save(PduConfig),
    /// Persist factory defaults (console `RFS`).
    FactoryReset,
    /// Reboot once every request accepted before this one is served (see [`StorageTask`]).
    Reboot,
}

/// A request to StorageTask; `token` comes back in the reply.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRequest {
    /// What to do.
    pub op: StorageOp,
    /// Caller's correlation token.
    pub token: u32,
}

/// Why a save failed, without the bus's error type (for replies and telemetry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum StorageFailure {
    /// The bus reported an error.
    Bus,
    /// The EEPROM did not finish a write cycle.
    WriteTimeout,
    /// The record did not read back as written.
    Verify,
    /// The configuration could not be encoded, or the slots could not be read.
    Record(RecordError),
}

impl<E> From<SaveError<E>> for StorageFailure {
    fn from(e: SaveError<E>) -> Self {
        match e {
            SaveError::Eeprom(EepromError::WriteTimeout { .. }) => StorageFailure::WriteTimeout,
            SaveError::Eeprom(_) => StorageFailure::Bus,
            SaveError::Verify { .. } => StorageFailure::Verify,
            SaveError::Record(r) => StorageFailure::Record(r),
        }
    }
}

/// StorageTask's answer.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum StorageReply {
    /// Answer to [`StorageOp::Load`].
    Loaded {
        /// The request's token.
        token: u32,
        /// The configuration and its origin.
        loaded: Loaded,
    },
    /// A save or factory reset is stored.
    Saved {
        /// The request's token.
        token: u32,
        /// Where.
        saved: Saved,
    },
    /// Answer to [`StorageOp::Reboot`]: every request before it is served.
    Flushed {
        /// The request's token.
        token: u32,
    },
    /// A save or factory reset failed; the previous configuration stays in force.
    Failed {
        /// The request's token.
        token: u32,
        /// Why.
        error: StorageFailure,
    },
}

impl StorageReply {
    /// The token of the request this answers.
    pub fn token(&self) -> u32 {
        match self {
            StorageReply::Loaded { token, .. }
            | StorageReply::Saved { token, .. }
            | StorageReply::Flushed { token }
            | StorageReply::Failed { token, .. } => *token,
        }
    }
}

impl<I2C: I2c, D: DelayNs> Storage<I2C, D> {
    /// Serve one request.
    pub async fn handle(&mut self, request: StorageRequest) -> StorageReply {
        let token = request.token;
        let result = match request.op {
            StorageOp::Load => {
                return StorageReply::Loaded {
                    token,
                    loaded: self.load().await,
                };
            }
            StorageOp::Save(config) => self.save(&config).await,
            StorageOp::FactoryReset => self.save(&PduConfig::default()).await,
            StorageOp::Reboot => return StorageReply::Flushed { token },
        };
        match result {
            Ok(saved) => StorageReply::Saved { token, saved },
            Err(e) => {
                let error = StorageFailure::from(e);
                error!("storage: save failed: {:?}", error);
                StorageReply::Failed { token, error }
            }
        }
    }
}

/// What StorageTask tells and asks the rest of the firmware, besides its queues.
///
/// On the board: the relay state comes from SwitchTask's published snapshot, the heartbeat goes
/// to HealthTask's board, `stored` updates the configuration other tasks read, `reboot` resets
/// the MCU. Every method has a do-nothing default, so a platform implements what it has.
///
/// # Contract
/// * No method may block or yield: the runner calls them between EEPROM transactions.
/// * `reboot` is called only after every request accepted before the [`StorageOp::Reboot`] has
///   been served and answered; the platform resets at once (it need not return).
pub trait StorageLinks {
    /// The relays SwitchTask drives now (`None` before its first publish).
    fn relays(&mut self) -> Option<OutletMask> {
        None
    }
    /// The task is alive at `now` (called at least every [`IDLE_BEAT`] and after each request).
    fn beat(&mut self, _now: Instant) {}
    /// A request was served; `reply` is what went (or was offered) to the reply queue.
    fn replied(&mut self, _request: &StorageOp, _reply: &StorageReply) {}
    /// `config` is stored and now the configuration in force.
    fn stored(&mut self, _config: &PduConfig) {}
    /// Reset the device: everything accepted before the reboot request is stored.
    fn reboot(&mut self) {}
}

/// No links: nobody follows the relays, beats, or reboots.
pub struct NoLinks;

impl StorageLinks for NoLinks {}

/// How often the runner beats while no request arrives, and how often it looks at the relays.
pub const IDLE_BEAT: Duration = Duration::from_millis(250);
/// How long the relays must stay unchanged before `last_state` is saved for `restore_on_boot`
/// (so a burst of toggles costs one EEPROM write, not one per toggle).
pub const LAST_STATE_SETTLE: Duration = Duration::from_secs(1);
/// Tokens of the saves StorageTask makes by itself (`last_state`) have this bit set, so they
/// never collide with a caller's token.
pub const OWN_TOKEN: u32 = 0x8000_0000;

/// Decides when the relay state is saved as `last_state` for `restore_on_boot`: once the relays
/// differ from the stored `last_state` and have stayed the same for [`LAST_STATE_SETTLE`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LastStateFollower {
    /// The relay state seen last, and since when it has been unchanged.
    seen: Option<(OutletMask, Instant)>,
}

impl LastStateFollower {
    /// A follower that has seen nothing yet.
    pub const fn new() -> Self {
        LastStateFollower { seen: None }
    }

    /// Look at the relays at `now`; returns the mask to save as `last_state`, if it is time.
    pub fn observe(
        &mut self,
        relays: Option<OutletMask>,
        now: Instant,
        policy: &SwitchPolicy,
    ) -> Option<OutletMask> {
        let relays = match relays {
            Some(r) if policy.restore_on_boot && r != policy.last_state => r,
            _ => {
                self.seen = None;
                return None;
            }
        };
        match self.seen {
            Some((mask, since)) if mask == relays => {
                if now.saturating_since(since) >= LAST_STATE_SETTLE {
                    self.seen = None;
                    Some(relays)
                } else {
                    None
                }
            }
            _ => {
                self.seen = Some((relays, now));
                None
            }
        }
    }
}

/// The StorageTask runner: serves [`StorageRequest`]s one at a time, in the order they were
/// accepted, answers on `replies`, and (with [`serve`](Self::serve)) beats its heartbeat and
/// saves `last_state` once the relays have settled.
///
/// Senders use [`Queue::offer`] on a `RejectNew` request queue (a refused save is answered by the
/// sender as busy) or [`Queue::send`]. Replies are offered to `replies`; with several clients,
/// each picks its own by token. A reply that finds the queue full is lost and counted by the
/// queue's stats (use `DropOldest` so the newest answers survive).
///
/// # Reboots never drop an accepted request
/// A firmware reboot (console `REBOOT`, `RFS`, HTTP/SNMP reboot) is a [`StorageOp::Reboot`]
/// *request* on the same queue, sent with [`Queue::send`] (it waits for room rather than being
/// refused). The queue is FIFO, so by the time the runner serves it every save and factory reset
/// accepted before it is written and verified; only then does it call
/// [`StorageLinks::reboot`]. This is what the ENERGIS firmware's `storage_load_defaults` does
/// before its reset. A power cut or watchdog reset is not a request and can still interrupt a
/// save, which the two-slot record format survives.
pub struct StorageTask<'a, M: RawMutex, I2C, D, const RQ: usize, const RP: usize, L = NoLinks> {
    storage: Storage<I2C, D>,
    requests: &'a Queue<M, StorageRequest, RQ>,
    replies: &'a Queue<M, StorageReply, RP>,
    links: L,
    config: PduConfig,
    follower: LastStateFollower,
    own_tokens: u32,
}

impl<'a, M: RawMutex, I2C: I2c, D: DelayNs, const RQ: usize, const RP: usize>
    StorageTask<'a, M, I2C, D, RQ, RP, NoLinks>
{
    /// A task over `storage`. Boot usually calls [`Storage::load`] before handing it over.
    pub fn new(
        storage: Storage<I2C, D>,
        requests: &'a Queue<M, StorageRequest, RQ>,
        replies: &'a Queue<M, StorageReply, RP>,
    ) -> Self {
        StorageTask {
            storage,
            requests,
            replies,
            links: NoLinks,
            config: PduConfig::default(),
            follower: LastStateFollower::new(),
            own_tokens: 0,
        }
    }

    /// The same task with `links`, starting from `config`, the configuration boot loaded (it is
    /// what `restore_on_boot` and `last_state` are judged against).
    pub fn with_links<L: StorageLinks>(
        self,
        links: L,
        config: PduConfig,
    ) -> StorageTask<'a, M, I2C, D, RQ, RP, L> {
        StorageTask {
            storage: self.storage,
            requests: self.requests,
            replies: self.replies,
            links,
            config,
            follower: self.follower,
            own_tokens: self.own_tokens,
        }
    }
}

impl<'a, M: RawMutex, I2C: I2c, D: DelayNs, const RQ: usize, const RP: usize, L: StorageLinks>
    StorageTask<'a, M, I2C, D, RQ, RP, L>
{
    /// The configuration in force, as far as this task knows.
    pub fn config(&self) -> &PduConfig {
        &self.config
    }

    /// The links (for tests and telemetry).
    pub fn links(&self) -> &L {
        &self.links
    }

    /// Serve one request: store it, answer it, tell the links, reboot if it asked to.
    pub async fn serve_request(&mut self, request: StorageRequest) {
        let stored = match &request.op {
            StorageOp::Save(c) => Some(c.clone()),
            StorageOp::FactoryReset => Some(PduConfig::default()),
            StorageOp::Load | StorageOp::Reboot => None,
        };
        let reboot = request.op == StorageOp::Reboot;
        let op = request.op.clone();
        let reply = self.storage.handle(request).await;
        self.links.replied(&op, &reply);
        if let (Some(config), StorageReply::Saved { .. }) = (stored, &reply) {
            self.links.stored(&config);
            self.config = config;
        }
        if let crate::queue::Offer::Rejected(r) = self.replies.offer(reply) {
            warn!("storage: reply {} dropped, reply queue full", r.token());
        }
        if reboot {
            info!("storage: every accepted request served, rebooting");
            self.links.reboot();
        }
    }

    /// Serve one request from the queue (waits for it).
    pub async fn step(&mut self) {
        let request = self.requests.receive().await;
        self.serve_request(request).await;
    }

    /// Serve requests forever (no heartbeat, no `last_state` following: see
    /// [`serve`](Self::serve)).
    pub async fn run(&mut self) -> ! {
        loop {
            self.step().await;
        }
    }

    /// The whole task: serve requests, beat at least every [`IDLE_BEAT`], and save the relay
    /// state as `last_state` when `restore_on_boot` is on and the relays have settled
    /// ([`LastStateFollower`]).
    pub async fn serve<C: Clock>(&mut self, clock: &C) -> ! {
        loop {
            let request = match select(self.requests.receive(), clock.sleep(IDLE_BEAT)).await {
                Either::First(r) => Some(r),
                Either::Second(()) => None,
            };
            self.links.beat(clock.now());
            if let Some(request) = request {
                self.serve_request(request).await;
                self.links.beat(clock.now());
            }
            let relays = self.links.relays();
            if let Some(mask) = self
                .follower
                .observe(relays, clock.now(), &self.config.switch)
            {
                let mut next = self.config.clone();
                next.switch.last_state = mask;
                self.own_tokens = self.own_tokens.wrapping_add(1);
                let token = OWN_TOKEN | (self.own_tokens & !OWN_TOKEN);
                self.serve_request(StorageRequest {
                    op: StorageOp::Save(next),
                    token,
                })
                .await;
                self.links.beat(clock.now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdu::eeprom::DEFAULT_ADDRESS;
    use crate::pdu::eeprom::mock::{CutMode, MockEeprom, NoDelay};
    use crate::queue::FullPolicy;
    use embassy_futures::block_on;
    use embassy_sync::blocking_mutex::raw::NoopRawMutex;
    use proptest::prelude::*;

    type TestStorage = Storage<MockEeprom, NoDelay>;

    fn storage_on(mock: MockEeprom) -> TestStorage {
        Storage::new(Cat24c256::new(mock, NoDelay::default(), DEFAULT_ADDRESS))
    }

    fn blank_storage() -> TestStorage {
        storage_on(MockEeprom::new())
    }

    /// Power off and on: the same part, a fresh firmware.
    fn reboot(s: TestStorage) -> TestStorage {
        let (mut mock, _) = s.release().release();
        mock.power_on();
        storage_on(mock)
    }

    fn mock_of(s: TestStorage) -> MockEeprom {
        s.release().release().0
    }

    /// A configuration that differs from the defaults and from other `named` ones everywhere a
    /// byte could land.
    fn named(name: &str, ip: u8) -> PduConfig {
        let mut c = PduConfig::default();
        c.identity.device_name = String::try_from(name).unwrap();
        c.network.ip[3] = ip;
        c.labels[2] = String::try_from(name).unwrap();
        c.calibration[7].kv = 1.5 + f32::from(ip) / 100.0;
        c.http.password = String::try_from(name).unwrap();
        c.switch.safe_mask = OutletMask(ip);
        c
    }

    fn largest() -> PduConfig {
        let mut c = PduConfig::default();
        let fill = |n: usize| -> String<32> { (0..n).map(|_| 'x').collect() };
        c.labels = core::array::from_fn(|_| fill(32));
        c.identity.device_name = fill(32);
        c.identity.location = fill(32);
        c.identity.temp_unit = '\u{10FFFF}';
        c.snmp.read_community = fill(32);
        c.snmp.write_community = fill(32);
        c.http.user = (0..16).map(|_| 'u').collect();
        c.http.password = fill(32);
        c.health.heartbeat_timeout_ms = u32::MAX;
        c.health.watchdog_ms = u32::MAX;
        c.switch.min_toggle_ms = u16::MAX;
        c.switch.brownout_mv = u16::MAX;
        c
    }

    fn v1_config() -> PduConfigV1 {
        let d = named("legacy", 77);
        PduConfigV1 {
            network: d.network,
            identity: d.identity,
            switch: SwitchPolicyV1 {
                safe_mask: OutletMask(0x81),
                restore_on_boot: true,
                last_state: OutletMask(0x0F),
                interlock_groups: [
                    OutletMask(0x03),
                    OutletMask::NONE,
                    OutletMask::NONE,
                    OutletMask(0xC0),
                ],
                deny: [OutletMask::NONE; SOURCES],
                min_toggle_ms: 75,
                max_simultaneous: 3,
            },
            buttons: d.buttons,
            calibration: d.calibration,
            labels: d.labels,
        }
    }

    #[track_caller]
    fn assert_stored(loaded: &Loaded, slot: Slot, seq: u32) {
        match loaded.source {
            LoadSource::Stored {
                slot: s, seq: q, ..
            } => assert_eq!((s, q), (slot, seq)),
            other => panic!("expected slot {slot:?} seq {seq}, got {other:?}"),
        }
    }

    #[test]
    fn a_record_round_trips_with_its_sequence_number() {
        let c = named("rack-7", 42);
        let r = encode(&c, 9).unwrap();
        let d = decode(r.slot_image()).unwrap();
        assert_eq!((d.config, d.seq, d.version), (c, 9, VERSION));
        assert_eq!(decode(r.as_bytes()).unwrap().seq, 9);
    }

    #[test]
    fn the_largest_configuration_fits_a_slot() {
        let r = encode(&largest(), 1).unwrap();
        assert!(r.len() <= RECORD_LEN, "{}", r.len());
        assert_eq!(decode(r.as_bytes()).unwrap().config, largest());
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let r = encode(&named("x", 1), 5).unwrap();
        let mut bytes = *r.slot_image();
        for i in 0..r.len() {
            for bit in 0..8 {
                bytes[i] ^= 1 << bit;
                assert!(
                    decode(&bytes).is_err(),
                    "flip at byte {i} bit {bit} accepted"
                );
                bytes[i] ^= 1 << bit;
            }
        }
    }

    #[test]
    fn malformed_records_name_their_fault() {
        assert_eq!(decode(&[0xFF; 64]), Err(RecordError::Blank));
        assert_eq!(decode(&[0x00; 64]), Err(RecordError::BadMagic));
        assert_eq!(decode(b"PDU"), Err(RecordError::Truncated));
        let r = encode(&PduConfig::default(), 1).unwrap();
        assert_eq!(
            decode(&r.as_bytes()[..r.len() - 1]),
            Err(RecordError::Truncated)
        );
        let mut b = *r.slot_image();
        b[10..12].copy_from_slice(&2000u16.to_le_bytes());
        assert_eq!(decode(&b), Err(RecordError::BadLength(2000)));
        let mut b = *r.slot_image();
        b[HEADER_LEN + 3] ^= 0x40;
        assert!(matches!(decode(&b), Err(RecordError::Crc { .. })));
        let future = encode_versioned(&PduConfig::default(), 3, 1).unwrap();
        assert_eq!(
            decode(future.as_bytes()),
            Err(RecordError::UnsupportedVersion(3))
        );
        // A good CRC over a payload that is not a configuration.
        let junk = encode_versioned(&[1u8, 2, 3], VERSION, 1).unwrap();
        assert_eq!(decode(junk.as_bytes()), Err(RecordError::Payload));
    }

    #[test]
    fn a_version_1_record_is_migrated_keeping_its_fields() {
        let v1 = v1_config();
        let d = decode(encode_v1(&v1, 4).unwrap().as_bytes()).unwrap();
        assert_eq!((d.version, d.seq), (1, 4));
        let c = d.config;
        assert_eq!(c.network, v1.network);
        assert_eq!(c.identity, v1.identity);
        assert_eq!(c.labels, v1.labels);
        assert_eq!(c.switch.safe_mask, OutletMask(0x81));
        assert_eq!(c.switch.interlock_groups, v1.switch.interlock_groups);
        assert_eq!((c.switch.min_toggle_ms, c.switch.max_simultaneous), (75, 3));
        let d = PduConfig::default();
        assert_eq!(c.switch.i2c_fault_threshold, d.switch.i2c_fault_threshold);
        assert_eq!(
            (c.snmp, c.http, c.health, c.ocp),
            (d.snmp, d.http, d.health, d.ocp)
        );
    }

    #[test]
    fn the_newer_valid_slot_wins_even_across_sequence_wrap() {
        let rec = |seq| decode(encode(&PduConfig::default(), seq).unwrap().as_bytes());
        assert!(matches!(choose(rec(1), rec(2)), Choice::Slot(Slot::B, _)));
        assert!(matches!(choose(rec(7), rec(6)), Choice::Slot(Slot::A, _)));
        assert!(matches!(
            choose(rec(u32::MAX), rec(0)),
            Choice::Slot(Slot::B, _)
        ));
        assert!(matches!(
            choose(rec(3), Err(RecordError::BadMagic)),
            Choice::Slot(Slot::A, _)
        ));
        assert!(matches!(
            choose(Err(RecordError::Blank), rec(3)),
            Choice::Slot(Slot::B, _)
        ));
        assert_eq!(next_save(Some((Slot::B, u32::MAX))), (Slot::A, 0));
        assert_eq!(next_save(None), (Slot::A, 1));
    }

    #[test]
    fn defaults_are_used_only_when_neither_slot_is_valid_and_say_why() {
        let blank = choose(Err(RecordError::Blank), Err(RecordError::Blank)).into_loaded();
        assert_eq!(blank.config, PduConfig::default());
        assert_eq!(blank.source, LoadSource::Defaults(DefaultsReason::Blank));
        let bad = choose(Err(RecordError::Blank), Err(RecordError::Payload)).into_loaded();
        assert_eq!(
            bad.source,
            LoadSource::Defaults(DefaultsReason::Invalid {
                a: RecordError::Blank,
                b: RecordError::Payload
            })
        );
    }

    #[test]
    fn saves_alternate_slots_and_the_last_one_loads_after_reboot() {
        let mut s = blank_storage();
        let first = block_on(s.load());
        assert_eq!(first.source, LoadSource::Defaults(DefaultsReason::Blank));
        assert_eq!(
            block_on(s.save(&named("one", 1))),
            Ok(Saved {
                slot: Slot::A,
                seq: 1
            })
        );
        assert_eq!(
            block_on(s.save(&named("two", 2))),
            Ok(Saved {
                slot: Slot::B,
                seq: 2
            })
        );
        assert_eq!(
            block_on(s.save(&named("three", 3))),
            Ok(Saved {
                slot: Slot::A,
                seq: 3
            })
        );
        let mut s = reboot(s);
        let loaded = block_on(s.load());
        assert_stored(&loaded, Slot::A, 3);
        assert_eq!(loaded.config, named("three", 3));
        assert_eq!(
            block_on(s.save(&named("four", 4))),
            Ok(Saved {
                slot: Slot::B,
                seq: 4
            })
        );
    }

    #[test]
    fn a_v1_record_on_the_part_loads_migrated_and_is_rewritten_as_v2() {
        let mut mock = MockEeprom::new();
        let r = encode_v1(&v1_config(), 10).unwrap();
        let a = usize::from(SLOT_A_ADDRESS);
        mock.mem[a..a + r.len()].copy_from_slice(r.as_bytes());
        let mut s = storage_on(mock);
        let loaded = block_on(s.load());
        assert_eq!(
            loaded.source,
            LoadSource::Stored {
                slot: Slot::A,
                seq: 10,
                version: 1
            }
        );
        assert_eq!(
            block_on(s.save(&loaded.config)),
            Ok(Saved {
                slot: Slot::B,
                seq: 11
            })
        );
        let loaded_again = block_on(reboot(s).load());
        assert_eq!(
            loaded_again.source,
            LoadSource::Stored {
                slot: Slot::B,
                seq: 11,
                version: VERSION
            }
        );
        assert_eq!(loaded_again.config, loaded.config);
    }

    #[test]
    fn saves_survive_ack_polling_during_the_write_cycle() {
        let mut mock = MockEeprom::new();
        mock.busy_polls_per_write = 7;
        let mut s = storage_on(mock);
        block_on(s.save(&named("busy", 9))).unwrap();
        assert!(s.eeprom().stats().busy_polls > 0);
        assert_eq!(block_on(reboot(s).load()).config, named("busy", 9));
    }

    #[test]
    fn a_write_protected_part_fails_verification_and_keeps_the_old_configuration() {
        let mut s = blank_storage();
        block_on(s.save(&named("old", 1))).unwrap();
        let mut mock = mock_of(s);
        mock.write_protect = true;
        let mut s = storage_on(mock);
        assert_stored(&block_on(s.load()), Slot::A, 1);
        assert_eq!(
            block_on(s.save(&named("new", 2))),
            Err(SaveError::Verify { slot: Slot::B })
        );
        assert_eq!(block_on(reboot(s).load()).config, named("old", 1));
    }

    #[test]
    fn a_save_after_a_failed_read_never_reuses_an_older_sequence_number() {
        let mut s = blank_storage();
        block_on(s.save(&named("a", 1))).unwrap();
        block_on(s.save(&named("b", 2))).unwrap(); // B holds seq 2
        let mut mock = mock_of(s);
        mock.powered = false; // the bus is dead during boot's load
        let mut s = storage_on(mock);
        let loaded = block_on(s.load());
        assert!(matches!(
            loaded.source,
            LoadSource::Defaults(DefaultsReason::Invalid { .. })
        ));
        assert_eq!(
            block_on(s.save(&named("c", 3))),
            Err(SaveError::Record(RecordError::Unreadable))
        );
        let mut mock = mock_of(s);
        mock.power_on();
        let mut s = storage_on(mock);
        s.known = false;
        assert_eq!(
            block_on(s.save(&named("c", 3))),
            Ok(Saved {
                slot: Slot::A,
                seq: 3
            })
        );
        assert_eq!(block_on(reboot(s).load()).config, named("c", 3));
    }

    /// The done-when test: a power cut after every possible number of written bytes of a save
    /// leaves a part from which the next boot loads the old or the new configuration, never
    /// garbage and never defaults.
    #[test]
    fn a_power_cut_at_any_byte_of_a_save_loads_the_old_or_the_new_configuration() {
        let older = named("older", 1);
        let old = named("old", 2);
        let new = named("brand-new", 3);
        let len = encode(&new, 3).unwrap().len();
        for mode in [CutMode::Clean, CutMode::Garbage] {
            let (mut saw_old, mut saw_new) = (0, 0);
            for n in 0..=len {
                let mut s = blank_storage();
                block_on(s.save(&older)).unwrap(); // slot A, seq 1
                block_on(s.save(&old)).unwrap(); // slot B, seq 2: in force
                let mut s = reboot(s);
                assert_stored(&block_on(s.load()), Slot::B, 2);
                let mut mock = mock_of(s);
                mock.cut_after(n, mode);
                let mut s = storage_on(mock);
                block_on(s.load());
                let outcome = block_on(s.save(&new));

                let loaded = block_on(reboot(s).load());
                assert!(
                    matches!(loaded.source, LoadSource::Stored { .. }),
                    "{mode:?} cut after {n} bytes: {:?}",
                    loaded.source
                );
                if loaded.config == new {
                    saw_new += 1;
                } else {
                    assert_eq!(loaded.config, old, "{mode:?} cut after {n} bytes");
                    assert!(
                        outcome.is_err(),
                        "{mode:?}: save reported Ok but old config loads"
                    );
                    saw_old += 1;
                }
                if n == len {
                    assert_eq!(
                        outcome,
                        Ok(Saved {
                            slot: Slot::A,
                            seq: 3
                        })
                    );
                }
            }
            // Every cut before the last byte tears the record.
            assert_eq!((saw_old, saw_new), (len, 1), "{mode:?}");
        }
    }

    #[test]
    fn the_task_answers_load_save_and_factory_reset_with_the_token() {
        let requests: Queue<NoopRawMutex, StorageRequest, 4> = Queue::new(FullPolicy::RejectNew);
        let replies: Queue<NoopRawMutex, StorageReply, 4> = Queue::new(FullPolicy::DropOldest);
        let mut task = StorageTask::new(blank_storage(), &requests, &replies);
        let ops = [
            StorageOp::Save(named("t", 5)),
            StorageOp::FactoryReset,
            StorageOp::Load,
        ];
        for (token, op) in ops.into_iter().enumerate() {
            assert!(
                requests
                    .offer(StorageRequest {
                        op,
                        token: token as u32
                    })
                    .is_queued()
            );
            block_on(task.step());
        }
        assert_eq!(
            replies.try_receive(),
            Some(StorageReply::Saved {
                token: 0,
                saved: Saved {
                    slot: Slot::A,
                    seq: 1
                }
            })
        );
        assert_eq!(
            replies.try_receive(),
            Some(StorageReply::Saved {
                token: 1,
                saved: Saved {
                    slot: Slot::B,
                    seq: 2
                }
            })
        );
        match replies.try_receive() {
            Some(StorageReply::Loaded { token: 2, loaded }) => {
                assert_eq!(loaded.config, PduConfig::default());
                assert_stored(&loaded, Slot::B, 2);
            }
            other => panic!("{other:?}"),
        }
    }

    /// Links that write down what the runner told them, in order.
    #[derive(Default)]
    struct Recorder {
        log: std::vec::Vec<std::string::String>,
        relays: Option<OutletMask>,
    }

    impl StorageLinks for Recorder {
        fn relays(&mut self) -> Option<OutletMask> {
            self.relays
        }
        fn replied(&mut self, _request: &StorageOp, reply: &StorageReply) {
            self.log.push(std::format!("reply {}", reply.token()));
        }
        fn stored(&mut self, config: &PduConfig) {
            self.log
                .push(std::format!("stored {}", config.identity.device_name));
        }
        fn reboot(&mut self) {
            self.log.push("reboot".into());
        }
    }

    #[test]
    fn a_reboot_request_runs_only_after_every_request_accepted_before_it_is_stored() {
        let requests: Queue<NoopRawMutex, StorageRequest, 4> = Queue::new(FullPolicy::RejectNew);
        let replies: Queue<NoopRawMutex, StorageReply, 4> = Queue::new(FullPolicy::DropOldest);
        let mut task = StorageTask::new(blank_storage(), &requests, &replies)
            .with_links(Recorder::default(), PduConfig::default());
        let mut configured = named("rack-9", 9);
        configured.identity.device_name = String::try_from("rack-9").unwrap();
        // CONFIG SAVE, then RFS (a factory reset and a reboot), as the console sends them.
        for (token, op) in [
            StorageOp::Save(configured),
            StorageOp::FactoryReset,
            StorageOp::Reboot,
        ]
        .into_iter()
        .enumerate()
        {
            assert!(
                requests
                    .offer(StorageRequest {
                        op,
                        token: token as u32
                    })
                    .is_queued()
            );
        }
        while !requests.is_empty() {
            block_on(task.step());
        }
        assert_eq!(
            task.links().log,
            [
                "reply 0",
                "stored rack-9",
                "reply 1",
                "stored ENERGIS",
                "reply 2",
                "reboot"
            ]
        );
        assert_eq!(replies.len(), 3);
        assert_eq!(task.config(), &PduConfig::default());
        // What the reboot finds on the part: the factory reset, not the save before it.
        let StorageTask { storage, .. } = task;
        let loaded = block_on(reboot(storage).load());
        assert_stored(&loaded, Slot::B, 2);
        assert_eq!(loaded.config, PduConfig::default());
    }

    fn restoring(last: u8) -> SwitchPolicy {
        let mut p = PduConfig::default().switch;
        p.restore_on_boot = true;
        p.last_state = OutletMask(last);
        p
    }

    #[test]
    fn last_state_is_saved_once_the_relays_have_settled_for_a_second() {
        let mut f = LastStateFollower::new();
        let p = restoring(0x01);
        let at = Instant::from_millis;
        assert_eq!(f.observe(Some(OutletMask(0x03)), at(0), &p), None);
        assert_eq!(f.observe(Some(OutletMask(0x03)), at(999), &p), None);
        assert_eq!(
            f.observe(Some(OutletMask(0x03)), at(1000), &p),
            Some(OutletMask(0x03))
        );
        // A change restarts the wait; toggling back to what is stored cancels it.
        assert_eq!(f.observe(Some(OutletMask(0x07)), at(1100), &p), None);
        assert_eq!(f.observe(Some(OutletMask(0x0F)), at(1900), &p), None);
        assert_eq!(f.observe(Some(OutletMask(0x0F)), at(2500), &p), None);
        assert_eq!(f.observe(Some(OutletMask(0x01)), at(2600), &p), None);
        assert_eq!(f.observe(Some(OutletMask(0x01)), at(9000), &p), None);
    }

    #[test]
    fn last_state_is_never_saved_without_restore_on_boot_or_a_relay_state() {
        let mut f = LastStateFollower::new();
        let mut p = restoring(0x00);
        p.restore_on_boot = false;
        let at = Instant::from_millis;
        for t in [0, 1000, 5000] {
            assert_eq!(f.observe(Some(OutletMask(0xFF)), at(t), &p), None);
            assert_eq!(f.observe(None, at(t), &restoring(0)), None);
        }
    }

    #[test]
    fn the_task_saves_the_settled_relays_with_its_own_token() {
        struct Tick(core::cell::Cell<u64>);
        impl Clock for Tick {
            fn now(&self) -> Instant {
                Instant::from_micros(self.0.get())
            }
            async fn sleep_until(&self, deadline: Instant) {
                // Yield once, so the test's stop condition runs between the runner's wakes.
                embassy_futures::yield_now().await;
                self.0.set(self.0.get().max(deadline.as_micros()));
            }
        }
        let requests: Queue<NoopRawMutex, StorageRequest, 4> = Queue::new(FullPolicy::RejectNew);
        let replies: Queue<NoopRawMutex, StorageReply, 4> = Queue::new(FullPolicy::DropOldest);
        let mut config = PduConfig::default();
        config.switch.restore_on_boot = true;
        let links = Recorder {
            relays: Some(OutletMask(0x05)),
            ..Recorder::default()
        };
        let mut task =
            StorageTask::new(blank_storage(), &requests, &replies).with_links(links, config);
        let clock = Tick(core::cell::Cell::new(0));
        let serve = task.serve(&clock);
        let stop = async {
            while replies.is_empty() {
                embassy_futures::yield_now().await;
            }
        };
        block_on(select(serve, stop));
        assert!(clock.now() >= Instant::ZERO + LAST_STATE_SETTLE);
        match replies.try_receive() {
            Some(StorageReply::Saved { token, saved }) => {
                assert_eq!(token, OWN_TOKEN | 1);
                assert_eq!(
                    saved,
                    Saved {
                        slot: Slot::A,
                        seq: 1
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(task.config().switch.last_state, OutletMask(0x05));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_record_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..1100)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn a_valid_header_over_arbitrary_payload_is_rejected_not_panicked(
            payload in proptest::collection::vec(any::<u8>(), 0..900), version in 0u16..4, seq: u32,
        ) {
            let mut b = heapless::Vec::<u8, 1100>::new();
            b.extend_from_slice(&MAGIC).unwrap();
            b.extend_from_slice(&version.to_le_bytes()).unwrap();
            b.extend_from_slice(&seq.to_le_bytes()).unwrap();
            b.extend_from_slice(&(payload.len() as u16).to_le_bytes()).unwrap();
            b.extend_from_slice(&payload).unwrap();
            let crc = CRC32.checksum(&b);
            b.extend_from_slice(&crc.to_le_bytes()).unwrap();
            // Good CRC, arbitrary payload: any outcome but a panic; a success must re-encode.
            if let Ok(d) = decode(&b) {
                prop_assert_eq!(d.seq, seq);
                prop_assert!(encode(&d.config, seq).is_ok());
            }
        }
    }
}
