//! Durable metadata of the committed state: which index it is at, its state
//! hash, and which `base.<gen>` directory holds it.
//!
//! What it does: stores one small record in two checksummed slots of the file
//! `meta` (at offsets 0 and 4096, so one torn sector cannot damage both), and
//! writes the slot the previous write did not use, so an update is atomic: a
//! crash leaves either the old or the new record readable. One write and one
//! sync per update, no rename.
//!
//! What it does not do: keep the files in step with the record; the engine
//! syncs the files of `base.<gen>` *before* it writes the record that names
//! their state (docs/DELTA.md, crash safety).

use xxhash_rust::xxh3::xxh3_64;

use super::index::StateHash;
use super::tree::{FileTree, TreeError};

pub const META_PATH: &str = "meta";
const MAGIC: u32 = u32::from_le_bytes(*b"BKMT");
const VERSION: u16 = 3;
/// Version 2 records (no replay bound) are still read.
const VERSION_2: u16 = 2;
const RECORD_BYTES: usize = 72;
const RECORD_BYTES_V2: usize = 64;
const SLOT_STRIDE: u64 = 4096;

/// The record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetaRecord {
    /// Increases by one at every write; the larger valid slot wins.
    pub counter: u64,
    /// The log index the committed state is at.
    pub applied_index: u64,
    /// Which `base.<gen>` directory holds the committed state.
    pub gen: u64,
    /// The state hash of that directory at `applied_index`.
    pub state_hash: StateHash,
    /// The log term of the entry at `applied_index` (0 for index 0), so that
    /// a restarted server knows the position of its state in the log even
    /// when its log no longer holds that entry.
    pub applied_term: u64,
    /// 0, or the state was recorded (checkpoint, or snapshot install from
    /// another server) while still being replayed after a crash: it may
    /// hold effects of committed entries up to this index, and is exact
    /// only once they are applied again (the engine is recovering until a
    /// post-state hash matches).
    pub replay_bound: u64,
}

impl MetaRecord {
    fn encode(&self) -> [u8; RECORD_BYTES] {
        let mut b = [0u8; RECORD_BYTES];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        b[8..16].copy_from_slice(&self.counter.to_le_bytes());
        b[16..24].copy_from_slice(&self.applied_index.to_le_bytes());
        b[24..32].copy_from_slice(&self.gen.to_le_bytes());
        b[32..48].copy_from_slice(&self.state_hash.to_le_bytes());
        b[48..56].copy_from_slice(&self.applied_term.to_le_bytes());
        b[56..64].copy_from_slice(&self.replay_bound.to_le_bytes());
        let checksum = xxh3_64(&b[..64]);
        b[64..72].copy_from_slice(&checksum.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<MetaRecord> {
        if b.get(0..4)? != MAGIC.to_le_bytes() {
            return None;
        }
        let version = u16::from_le_bytes([*b.get(4)?, *b.get(5)?]);
        let (b, checksum_at) = match version {
            VERSION => (b.get(..RECORD_BYTES)?, 64),
            VERSION_2 => (b.get(..RECORD_BYTES_V2)?, 56),
            _ => return None,
        };
        let u64_at = |at: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(a)
        };
        if xxh3_64(&b[..checksum_at]) != u64_at(checksum_at) {
            return None;
        }
        let mut hash = [0u8; 16];
        hash.copy_from_slice(&b[32..48]);
        Some(MetaRecord {
            counter: u64_at(8),
            applied_index: u64_at(16),
            gen: u64_at(24),
            state_hash: u128::from_le_bytes(hash),
            applied_term: u64_at(48),
            replay_bound: if version == VERSION { u64_at(56) } else { 0 },
        })
    }
}

/// Reads the newest valid record; `Ok(None)` when the file is missing or
/// holds no valid slot (a fresh server, or a crash during its first start).
pub fn read<T: FileTree>(tree: &mut T) -> Result<Option<MetaRecord>, TreeError> {
    match tree.stat(META_PATH)? {
        None => return Ok(None),
        Some(meta) if meta.kind != super::tree::Kind::File => {
            return Err(TreeError::BadPath {
                path: META_PATH.to_string(),
                reason: "metadata is not a regular file",
            })
        }
        Some(_) => {}
    }
    tree.with_file(META_PATH, |bytes| {
        let slot = |i: u64| {
            let at = (i * SLOT_STRIDE) as usize;
            bytes.get(at..).and_then(MetaRecord::decode)
        };
        match (slot(0), slot(1)) {
            (Some(a), Some(b)) => Some(if a.counter >= b.counter { a } else { b }),
            (a, b) => a.or(b),
        }
    })
}

/// Creates the metadata file with `record` in slot 0 and makes it durable
/// (file and root entry).
pub fn create<T: FileTree>(tree: &mut T, record: &MetaRecord) -> Result<(), TreeError> {
    tree.create_file(META_PATH, 0o600)?;
    tree.write_at(META_PATH, 0, &record.encode())?;
    tree.sync(&[META_PATH.to_string()], &[String::new()])
}

/// Writes `record` into the slot of its counter's parity and syncs it.
pub fn write<T: FileTree>(tree: &mut T, record: &MetaRecord) -> Result<(), TreeError> {
    write_slot(tree, record)?;
    tree.sync(&[META_PATH.to_string()], &[])
}

/// Writes `record` into its slot without syncing it (the caller syncs).
pub fn write_slot<T: FileTree>(tree: &mut T, record: &MetaRecord) -> Result<(), TreeError> {
    let offset = (record.counter % 2) * SLOT_STRIDE;
    tree.write_at(META_PATH, offset, &record.encode())
}

#[cfg(test)]
mod tests {
    use super::super::mem::MemTree;
    use super::*;

    #[test]
    fn newest_valid_slot_wins_and_torn_slot_falls_back() {
        let mut tree = MemTree::new(3);
        let mut record = MetaRecord {
            counter: 0,
            applied_index: 0,
            gen: 0,
            state_hash: 0,
            applied_term: 0,
            replay_bound: 0,
        };
        create(&mut tree, &record).unwrap();
        for i in 1..5u64 {
            record.counter = i;
            record.applied_index = i * 10;
            write(&mut tree, &record).unwrap();
            assert_eq!(read(&mut tree).unwrap(), Some(record));
        }
        // Tear the newest slot: the previous record is read.
        let newest = (record.counter % 2) * SLOT_STRIDE;
        tree.write_at(META_PATH, newest + 20, &[0xFF]).unwrap();
        assert_eq!(read(&mut tree).unwrap().unwrap().applied_index, 30);
    }

    #[test]
    fn a_version_2_record_reads_with_no_replay_bound() {
        let record = MetaRecord {
            counter: 7,
            applied_index: 42,
            gen: 3,
            state_hash: 0x1234,
            applied_term: 5,
            replay_bound: 99,
        };
        let mut v2 = record.encode();
        v2[4..6].copy_from_slice(&VERSION_2.to_le_bytes());
        let checksum = xxh3_64(&v2[..56]);
        v2[56..64].copy_from_slice(&checksum.to_le_bytes());
        let read = MetaRecord::decode(&v2[..RECORD_BYTES_V2]).expect("a valid v2 record");
        assert_eq!(
            read,
            MetaRecord {
                replay_bound: 0,
                ..record
            }
        );
        assert_eq!(MetaRecord::decode(&record.encode()), Some(record));
    }
}
