//! The on-disk format of a ringlog: superblock, hard-state slots and records.
//!
//! What it does: encodes and decodes the fixed-layout structures, and checks
//! them (magic, version, bounds, xxh3 checksum seeded with the log's
//! `format_id`). Everything here is pure: no I/O, no allocation beyond the
//! returned values, and no panic on any input bytes (the fuzz target and the
//! "arbitrary bytes" property test feed it garbage).
//!
//! What it does not do: decide which record comes next in the log (that is
//! the recovery scan's job, in `recovery.rs`) or where records go (the
//! writer's job, in `ring.rs`).
//!
//! Layout of the disk (all offsets in bytes, `SECTOR_BYTES` = 4096):
//!
//! ```text
//! sector 0            superblock (copy A)
//! sector 1, 2         hard-state slots 0 and 1 (written alternately)
//! sector 3            superblock (copy B)
//! RING_OFFSET_BYTES.. segment 0, segment 1, ... segment N-1 (segment_bytes each)
//! ```
//!
//! A record (8-byte aligned, `RECORD_HEADER_BYTES` header then payload):
//!
//! ```text
//!  0 checksum      u64  xxh3-64, seed format_id, over bytes [8, 72 + payload_len)
//!  8 magic         u32  RECORD_MAGIC
//! 12 version       u8   FORMAT_VERSION
//! 13 kind          u8   RecordKind
//! 14 reserved      u16  zero
//! 16 payload_len   u32
//! 20 segment       u32  the ring segment the record was written to
//! 24 generation    u64  the segment's generation (bumped at every reuse)
//! 32 lsn           u64  log sequence number: every record, +1 along the chain
//! 40 index         u64  entry index (or the operation's index argument)
//! 48 term          u64  entry term (or the operation's term argument)
//! 56 durable_lsn   u64  every lsn <= this was durable when this was written
//! 64 prev_checksum u64  checksum of the previous record on the chain
//! 72 payload
//! ```
//!
//! Invariants: a record is *self-valid* iff its magic, version, kind,
//! reserved bits, length and checksum are right. The checksum is seeded with
//! a random per-log `format_id`, so a record from another log, or a client
//! payload crafted to look like a record, is never self-valid.

use crate::{EntryKind, HardState, Index, LogId, Term};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The unit of alignment of every write and read (O_DIRECT needs the
/// device's logical block size; 4096 covers every device with 512 or 4096
/// byte blocks).
pub const SECTOR_BYTES: usize = 4096;
/// Where the first segment starts.
pub const RING_OFFSET_BYTES: u64 = 4 * SECTOR_BYTES as u64;
/// Offsets of the two superblock copies.
pub const SUPERBLOCK_OFFSETS: [u64; 2] = [0, 3 * SECTOR_BYTES as u64];
/// Offsets of the two hard-state slots.
pub const HARD_STATE_OFFSETS: [u64; 2] = [SECTOR_BYTES as u64, 2 * SECTOR_BYTES as u64];

pub const FORMAT_VERSION: u8 = 1;
pub const RECORD_MAGIC: u32 = 0x474c_4752; // "RGLG" little-endian
pub const SUPERBLOCK_MAGIC: u32 = 0x4253_4752; // "RGSB"
pub const HARD_STATE_MAGIC: u32 = 0x5348_4752; // "RGHS"

pub const RECORD_HEADER_BYTES: usize = 72;
pub const CHECKPOINT_PAYLOAD_BYTES: usize = 56;
/// A checkpoint record, as it sits at the start of every segment.
pub const CHECKPOINT_RECORD_BYTES: usize = RECORD_HEADER_BYTES + CHECKPOINT_PAYLOAD_BYTES;
/// The largest payload the format can describe (the ring's configuration
/// usually sets a smaller limit: a record never spans two segments).
pub const PAYLOAD_BYTES_MAX: u32 = 1 << 30;

/// The smallest segment (16 sectors).
pub const SEGMENT_BYTES_MIN: u64 = 16 * SECTOR_BYTES as u64;
/// Bytes at the end of every segment that only control records (truncate,
/// release, reset) may use, so that releasing entries (which is how space
/// comes back) works even when entries have filled the ring.
pub const CONTROL_RESERVE_BYTES: u64 = 4 * SECTOR_BYTES as u64;

const SUPERBLOCK_BYTES: usize = 64;
const HARD_STATE_BYTES: usize = 48;

/// Rounds `value` up to a multiple of `align` (a power of two).
pub fn align_up(value: u64, align: u64) -> u64 {
    debug_assert!(align.is_power_of_two());
    (value + align - 1) & !(align - 1)
}

/// The bytes a record with `payload_len` payload bytes occupies.
pub fn record_bytes(payload_len: usize) -> usize {
    align_up((RECORD_HEADER_BYTES + payload_len) as u64, 8) as usize
}

/// What a record means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordKind {
    /// An entry of the log (the entry's kind is the record's kind).
    Noop = 1,
    Command = 2,
    Config = 3,
    /// Removes every entry at or after `index`.
    Truncate = 16,
    /// Releases every entry up to `index` (whose term is `term`).
    Release = 17,
    /// Replaces the log by an empty one that starts after `(index, term)`.
    Reset = 18,
    /// The first record of every segment: the state of the log at that point.
    Checkpoint = 19,
}

impl RecordKind {
    pub fn from_u8(value: u8) -> Option<RecordKind> {
        Some(match value {
            1 => RecordKind::Noop,
            2 => RecordKind::Command,
            3 => RecordKind::Config,
            16 => RecordKind::Truncate,
            17 => RecordKind::Release,
            18 => RecordKind::Reset,
            19 => RecordKind::Checkpoint,
            _ => return None,
        })
    }

    pub fn from_entry(kind: EntryKind) -> RecordKind {
        match kind {
            EntryKind::Noop => RecordKind::Noop,
            EntryKind::Command => RecordKind::Command,
            EntryKind::Config => RecordKind::Config,
        }
    }

    /// The entry kind, for records that carry an entry.
    pub fn entry_kind(self) -> Option<EntryKind> {
        match self {
            RecordKind::Noop => Some(EntryKind::Noop),
            RecordKind::Command => Some(EntryKind::Command),
            RecordKind::Config => Some(EntryKind::Config),
            _ => None,
        }
    }
}

/// A decoded record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub checksum: u64,
    pub kind: RecordKind,
    pub payload_len: u32,
    pub segment: u32,
    pub generation: u64,
    pub lsn: u64,
    pub index: Index,
    pub term: Term,
    pub durable_lsn: u64,
    pub prev_checksum: u64,
}

impl Header {
    /// Bytes the whole record occupies (header, payload, padding to 8).
    pub fn record_bytes(&self) -> usize {
        record_bytes(self.payload_len as usize)
    }
}

/// Why bytes are not a record. Never an error of the caller: garbage on
/// disk is expected (torn writes, stale records, pre-written zeros).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    Short,
    Magic,
    Version,
    Kind,
    Reserved,
    Length,
    Checksum,
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(raw)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(raw)
}

fn put_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(bytes: &mut [u8], at: usize, value: u64) {
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

/// Decodes a record header from the start of `bytes` without checking the
/// checksum (the payload may not have been read yet).
pub fn decode_header(bytes: &[u8]) -> Result<Header, DecodeError> {
    if bytes.len() < RECORD_HEADER_BYTES {
        return Err(DecodeError::Short);
    }
    if u32_at(bytes, 8) != RECORD_MAGIC {
        return Err(DecodeError::Magic);
    }
    if bytes[12] != FORMAT_VERSION {
        return Err(DecodeError::Version);
    }
    let kind = RecordKind::from_u8(bytes[13]).ok_or(DecodeError::Kind)?;
    if bytes[14] != 0 || bytes[15] != 0 {
        return Err(DecodeError::Reserved);
    }
    let payload_len = u32_at(bytes, 16);
    if payload_len > PAYLOAD_BYTES_MAX {
        return Err(DecodeError::Length);
    }
    if kind == RecordKind::Checkpoint && payload_len as usize != CHECKPOINT_PAYLOAD_BYTES {
        return Err(DecodeError::Length);
    }
    Ok(Header {
        checksum: u64_at(bytes, 0),
        kind,
        payload_len,
        segment: u32_at(bytes, 20),
        generation: u64_at(bytes, 24),
        lsn: u64_at(bytes, 32),
        index: u64_at(bytes, 40),
        term: u64_at(bytes, 48),
        durable_lsn: u64_at(bytes, 56),
        prev_checksum: u64_at(bytes, 64),
    })
}

/// Decodes and verifies a whole record at the start of `bytes`: returns its
/// header and payload.
pub fn decode_record(bytes: &[u8], format_id: u64) -> Result<(Header, &[u8]), DecodeError> {
    let header = decode_header(bytes)?;
    let end = RECORD_HEADER_BYTES + header.payload_len as usize;
    if bytes.len() < end {
        return Err(DecodeError::Short);
    }
    if xxh3_64_with_seed(&bytes[8..end], format_id) != header.checksum {
        return Err(DecodeError::Checksum);
    }
    Ok((header, &bytes[RECORD_HEADER_BYTES..end]))
}

/// Fields of a record the writer knows when it lays the record out.
#[derive(Clone, Copy, Debug)]
pub struct RecordFields {
    pub kind: RecordKind,
    pub segment: u32,
    pub generation: u64,
    pub lsn: u64,
    pub index: Index,
    pub term: Term,
}

/// Writes a record's header (without the fields sealed later: checksum,
/// durable_lsn, prev_checksum) followed by its payload into `out`, which
/// must be exactly `record_bytes(payload.len())` long. Every byte of `out`
/// is written (the padding with zeros).
pub fn encode_record(out: &mut [u8], fields: &RecordFields, payload: &[u8]) {
    assert_eq!(out.len(), record_bytes(payload.len()));
    assert!(payload.len() as u64 <= PAYLOAD_BYTES_MAX as u64);
    put_u64(out, 0, 0);
    put_u32(out, 8, RECORD_MAGIC);
    out[12] = FORMAT_VERSION;
    out[13] = fields.kind as u8;
    out[14] = 0;
    out[15] = 0;
    put_u32(out, 16, payload.len() as u32);
    put_u32(out, 20, fields.segment);
    put_u64(out, 24, fields.generation);
    put_u64(out, 32, fields.lsn);
    put_u64(out, 40, fields.index);
    put_u64(out, 48, fields.term);
    put_u64(out, 56, 0);
    put_u64(out, 64, 0);
    let end = RECORD_HEADER_BYTES + payload.len();
    out[RECORD_HEADER_BYTES..end].copy_from_slice(payload);
    out[end..].fill(0);
}

/// Fills in the fields known only when the record's flush starts, and the
/// checksum over everything; returns the checksum (the next record's
/// `prev_checksum`).
pub fn seal_record(record: &mut [u8], durable_lsn: u64, prev_checksum: u64, format_id: u64) -> u64 {
    let payload_len = u32_at(record, 16) as usize;
    let end = RECORD_HEADER_BYTES + payload_len;
    assert!(end <= record.len());
    put_u64(record, 56, durable_lsn);
    put_u64(record, 64, prev_checksum);
    let checksum = xxh3_64_with_seed(&record[8..end], format_id);
    put_u64(record, 0, checksum);
    checksum
}

/// The state of the log at a checkpoint (the first record of a segment),
/// and where recovery must start to rebuild it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub snapshot: LogId,
    pub last: LogId,
    /// The oldest segment in use when the checkpoint was written.
    pub head_segment: u64,
    /// That segment's generation and the lsn of its checkpoint.
    pub head_generation: u64,
    pub head_lsn: u64,
}

impl Checkpoint {
    pub fn encode(&self) -> [u8; CHECKPOINT_PAYLOAD_BYTES] {
        let mut out = [0u8; CHECKPOINT_PAYLOAD_BYTES];
        put_u64(&mut out, 0, self.snapshot.index);
        put_u64(&mut out, 8, self.snapshot.term);
        put_u64(&mut out, 16, self.last.index);
        put_u64(&mut out, 24, self.last.term);
        put_u64(&mut out, 32, self.head_segment);
        put_u64(&mut out, 40, self.head_generation);
        put_u64(&mut out, 48, self.head_lsn);
        out
    }

    pub fn decode(payload: &[u8]) -> Result<Checkpoint, DecodeError> {
        if payload.len() != CHECKPOINT_PAYLOAD_BYTES {
            return Err(DecodeError::Length);
        }
        Ok(Checkpoint {
            snapshot: LogId::new(u64_at(payload, 0), u64_at(payload, 8)),
            last: LogId::new(u64_at(payload, 16), u64_at(payload, 24)),
            head_segment: u64_at(payload, 32),
            head_generation: u64_at(payload, 40),
            head_lsn: u64_at(payload, 48),
        })
    }
}

/// The geometry and identity of a log, written once at format time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub format_id: u64,
    pub segment_bytes: u64,
    pub segment_count: u32,
}

impl Superblock {
    pub fn ring_bytes(&self) -> u64 {
        self.segment_bytes * self.segment_count as u64
    }

    pub fn disk_bytes(&self) -> u64 {
        RING_OFFSET_BYTES + self.ring_bytes()
    }

    /// Encodes into one sector.
    pub fn encode(&self) -> [u8; SECTOR_BYTES] {
        let mut out = [0u8; SECTOR_BYTES];
        put_u32(&mut out, 8, SUPERBLOCK_MAGIC);
        out[12] = FORMAT_VERSION;
        put_u64(&mut out, 16, self.format_id);
        put_u32(&mut out, 24, SECTOR_BYTES as u32);
        put_u32(&mut out, 28, self.segment_count);
        put_u64(&mut out, 32, self.segment_bytes);
        put_u64(&mut out, 40, RING_OFFSET_BYTES);
        let checksum = xxh3_64_with_seed(&out[8..SUPERBLOCK_BYTES], 0);
        put_u64(&mut out, 0, checksum);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Superblock, DecodeError> {
        if bytes.len() < SUPERBLOCK_BYTES {
            return Err(DecodeError::Short);
        }
        if u32_at(bytes, 8) != SUPERBLOCK_MAGIC {
            return Err(DecodeError::Magic);
        }
        if xxh3_64_with_seed(&bytes[8..SUPERBLOCK_BYTES], 0) != u64_at(bytes, 0) {
            return Err(DecodeError::Checksum);
        }
        if bytes[12] != FORMAT_VERSION {
            return Err(DecodeError::Version);
        }
        let sector = u32_at(bytes, 24) as usize;
        let ring_offset = u64_at(bytes, 40);
        let superblock = Superblock {
            format_id: u64_at(bytes, 16),
            segment_count: u32_at(bytes, 28),
            segment_bytes: u64_at(bytes, 32),
        };
        if sector != SECTOR_BYTES || ring_offset != RING_OFFSET_BYTES {
            return Err(DecodeError::Length);
        }
        if superblock.validate().is_err() {
            return Err(DecodeError::Length);
        }
        Ok(superblock)
    }

    /// Checks the geometry; the error says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.segment_count < 3 {
            return Err(format!(
                "segment_count is {}, at least 3 are needed (one is always kept free so that a \
                 checkpoint's head segment is never overwritten)",
                self.segment_count
            ));
        }
        if !self.segment_bytes.is_multiple_of(SECTOR_BYTES as u64)
            || self.segment_bytes < SEGMENT_BYTES_MIN
        {
            return Err(format!(
                "segment_bytes is {}, it must be a multiple of {SECTOR_BYTES} and at least \
                 {SEGMENT_BYTES_MIN}",
                self.segment_bytes,
            ));
        }
        if self.segment_bytes > 1 << 40 || self.segment_count > 1 << 20 {
            return Err(format!(
                "segment_bytes {} x segment_count {} is larger than supported",
                self.segment_bytes, self.segment_count
            ));
        }
        Ok(())
    }
}

/// One hard-state slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HardStateSlot {
    pub seq: u64,
    pub state: HardState,
}

impl HardStateSlot {
    pub fn encode(&self, format_id: u64) -> [u8; SECTOR_BYTES] {
        let mut out = [0u8; SECTOR_BYTES];
        put_u32(&mut out, 8, HARD_STATE_MAGIC);
        out[12] = FORMAT_VERSION;
        out[13] = u8::from(self.state.vote.is_some());
        put_u64(&mut out, 16, self.seq);
        put_u64(&mut out, 24, self.state.term);
        put_u64(&mut out, 32, self.state.vote.unwrap_or(0));
        put_u64(&mut out, 40, format_id);
        let checksum = xxh3_64_with_seed(&out[8..HARD_STATE_BYTES], format_id);
        put_u64(&mut out, 0, checksum);
        out
    }

    pub fn decode(bytes: &[u8], format_id: u64) -> Result<HardStateSlot, DecodeError> {
        if bytes.len() < HARD_STATE_BYTES {
            return Err(DecodeError::Short);
        }
        if u32_at(bytes, 8) != HARD_STATE_MAGIC {
            return Err(DecodeError::Magic);
        }
        if xxh3_64_with_seed(&bytes[8..HARD_STATE_BYTES], format_id) != u64_at(bytes, 0) {
            return Err(DecodeError::Checksum);
        }
        if bytes[12] != FORMAT_VERSION {
            return Err(DecodeError::Version);
        }
        if bytes[13] > 1 || u64_at(bytes, 40) != format_id {
            return Err(DecodeError::Reserved);
        }
        let vote = (bytes[13] == 1).then(|| u64_at(bytes, 32));
        Ok(HardStateSlot {
            seq: u64_at(bytes, 16),
            state: HardState {
                term: u64_at(bytes, 24),
                vote,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(lsn: u64) -> RecordFields {
        RecordFields {
            kind: RecordKind::Command,
            segment: 2,
            generation: 7,
            lsn,
            index: 11,
            term: 3,
        }
    }

    #[test]
    fn record_round_trips_and_every_flipped_bit_is_detected() {
        let payload = b"hello, ringlog";
        let mut buf = vec![0u8; record_bytes(payload.len())];
        encode_record(&mut buf, &fields(5), payload);
        let checksum = seal_record(&mut buf, 4, 99, 1234);
        let (header, body) = decode_record(&buf, 1234).expect("valid");
        assert_eq!(header.checksum, checksum);
        assert_eq!((header.lsn, header.index, header.term), (5, 11, 3));
        assert_eq!((header.durable_lsn, header.prev_checksum), (4, 99));
        assert_eq!(body, payload);
        let end = RECORD_HEADER_BYTES + payload.len();
        for bit in 0..end * 8 {
            let mut flipped = buf.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode_record(&flipped, 1234).is_err(),
                "bit {bit} undetected"
            );
        }
        assert_eq!(decode_record(&buf, 1235), Err(DecodeError::Checksum));
    }

    #[test]
    fn superblock_and_hard_state_round_trip() {
        let sb = Superblock {
            format_id: 42,
            segment_bytes: 1 << 20,
            segment_count: 4,
        };
        assert_eq!(Superblock::decode(&sb.encode()), Ok(sb));
        let slot = HardStateSlot {
            seq: 9,
            state: HardState {
                term: 4,
                vote: Some(0),
            },
        };
        assert_eq!(HardStateSlot::decode(&slot.encode(42), 42), Ok(slot));
        assert!(HardStateSlot::decode(&slot.encode(42), 43).is_err());
        assert!(HardStateSlot::decode(&[0u8; SECTOR_BYTES], 42).is_err());
    }

    #[test]
    fn checkpoint_round_trips() {
        let cp = Checkpoint {
            snapshot: LogId::new(3, 1),
            last: LogId::new(9, 2),
            head_segment: 1,
            head_generation: 5,
            head_lsn: 77,
        };
        assert_eq!(Checkpoint::decode(&cp.encode()), Ok(cp));
    }
}
