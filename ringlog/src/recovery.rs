//! Recovery: rebuilds a ring log's state from its disk after a crash.
//!
//! What it does, in order:
//! 1. reads the superblock (two copies) and the hard-state slots (the valid
//!    slot with the highest sequence number wins);
//! 2. reads the checkpoint at the start of every segment and takes the
//!    self-valid one with the highest lsn: it names the head segment, where
//!    replay starts;
//! 3. replays the chain of records from the head's checkpoint: each next
//!    record must have the next lsn, the previous record's checksum, and the
//!    current segment and generation, and sits either right after the
//!    previous record, at the next sector boundary (a new flush), or at the
//!    start of the next segment (a checkpoint). The chain ends at the first
//!    place where none of the three candidates is valid: a torn or lost tail;
//! 4. scans every sector of the ring for a self-valid record that says (its
//!    `durable_lsn`) that a record past the chain's end was durable when it
//!    was written. Such a record proves the chain was cut by damage, not by
//!    a crash: recovery reports `StorageError::Corrupt` instead of silently
//!    truncating committed entries.
//!
//! What it does not do: repair. A corrupt log stays as it is on disk, so an
//! operator (or a later repair from peers) can inspect it.
//!
//! Limits (documented in docs/RINGLOG.md): damage inside the last flush is
//! indistinguishable from a torn write of that flush, which was never
//! acknowledged unless its sync completed.
//!
//! Invariants: recovery never writes; it never panics on any disk contents.

use crate::disk::{AlignedBuf, Disk};
use crate::format::{
    align_up, decode_record, Checkpoint, HardStateSlot, Header, RecordKind, Superblock,
    CHECKPOINT_RECORD_BYTES, HARD_STATE_OFFSETS, RECORD_HEADER_BYTES, RING_OFFSET_BYTES,
    SECTOR_BYTES, SUPERBLOCK_OFFSETS,
};
use crate::ring::{RecoveredLog, SegmentState, Slot};
use crate::{Entry, HardState, Index, LogId, StorageError, Term};
use bytes::Bytes;
use std::collections::VecDeque;

fn corrupt(what: String) -> StorageError {
    StorageError::Corrupt(what)
}

fn read_sector<D: Disk>(disk: &D, offset: u64) -> Result<AlignedBuf, StorageError> {
    let mut buf = AlignedBuf::zeroed(SECTOR_BYTES);
    disk.read(offset, &mut buf)?;
    Ok(buf)
}

/// Reads and checks the superblock.
pub(crate) fn read_superblock<D: Disk>(disk: &D) -> Result<Superblock, StorageError> {
    if disk.size_bytes() < RING_OFFSET_BYTES {
        return Err(StorageError::Io {
            path: "ringlog".into(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "the disk has only {} bytes: it holds no ringlog",
                    disk.size_bytes()
                ),
            ),
        });
    }
    let copies = [
        read_sector(disk, SUPERBLOCK_OFFSETS[0])?,
        read_sector(disk, SUPERBLOCK_OFFSETS[1])?,
    ];
    let decoded = [
        Superblock::decode(copies[0].as_slice()),
        Superblock::decode(copies[1].as_slice()),
    ];
    let superblock = match decoded {
        [Ok(a), Ok(b)] if a != b => {
            return Err(corrupt(format!(
                "the two superblock copies disagree ({a:?} and {b:?})"
            )))
        }
        [Ok(a), _] | [_, Ok(a)] => a,
        [Err(_), Err(_)] => {
            let blank = copies.iter().all(|c| c.as_slice().iter().all(|&b| b == 0));
            if blank {
                return Err(StorageError::Io {
                    path: "ringlog".into(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "no ringlog superblock: the log was never formatted (format it first)",
                    ),
                });
            }
            return Err(corrupt("both superblock copies are damaged".into()));
        }
    };
    if disk.size_bytes() < superblock.disk_bytes() {
        return Err(corrupt(format!(
            "the superblock describes {} bytes but the disk has {}",
            superblock.disk_bytes(),
            disk.size_bytes()
        )));
    }
    Ok(superblock)
}

/// Reads the hard-state slots: the valid one with the highest sequence.
pub(crate) fn read_hard_state<D: Disk>(
    disk: &D,
    superblock: &Superblock,
) -> Result<(u64, HardState), StorageError> {
    let mut best: Option<HardStateSlot> = None;
    for offset in HARD_STATE_OFFSETS {
        let sector = read_sector(disk, offset)?;
        if let Ok(slot) = HardStateSlot::decode(sector.as_slice(), superblock.format_id) {
            if best.is_none_or(|b| slot.seq > b.seq) {
                best = Some(slot);
            }
        }
    }
    // Format writes a valid slot before the superblock, and slots are
    // written alternately: one valid slot always remains unless damaged.
    let best =
        best.ok_or_else(|| corrupt("both hard-state slots (term, vote) are damaged".into()))?;
    Ok((best.seq, best.state))
}

/// Decodes and checks one entry record read back from disk.
pub(crate) fn decode_entry(
    bytes: &[u8],
    format_id: u64,
    index: Index,
    slot: &Slot,
    segment: u32,
    generation: u64,
) -> Result<Entry, String> {
    let (header, payload) = decode_record(bytes, format_id).map_err(|e| format!("{e:?}"))?;
    let kind = header.kind.entry_kind().ok_or("not an entry record")?;
    let expected = (slot.lsn, index, slot.term, segment, generation);
    let found = (
        header.lsn,
        header.index,
        header.term,
        header.segment,
        header.generation,
    );
    if expected != found {
        return Err(format!(
            "record is (lsn, index, term, segment, generation) {found:?}, expected {expected:?}"
        ));
    }
    Ok(Entry {
        index,
        term: header.term,
        kind,
        data: Bytes::copy_from_slice(payload),
    })
}

/// What the sector starts of a segment say (see step 4 of the module doc).
#[derive(Clone, Copy, Debug, Default)]
struct SectorSummary {
    /// The record with the highest `durable_lsn`: (durable_lsn, lsn, offset in segment).
    vouching: Option<(u64, u64, usize)>,
    generation_max: u64,
}

/// Reads whole segments, one at a time, and summarises each segment's
/// sector starts the first time it is read (so that recovery reads the
/// ring about once).
struct SegmentReader<'a, D: Disk> {
    disk: &'a D,
    superblock: Superblock,
    loaded: Option<u32>,
    buf: AlignedBuf,
    summaries: Vec<Option<SectorSummary>>,
}

impl<'a, D: Disk> SegmentReader<'a, D> {
    fn new(disk: &'a D, superblock: Superblock) -> Self {
        SegmentReader {
            disk,
            superblock,
            loaded: None,
            buf: AlignedBuf::zeroed(superblock.segment_bytes as usize),
            summaries: vec![None; superblock.segment_count as usize],
        }
    }

    fn start(&self, segment: u32) -> u64 {
        RING_OFFSET_BYTES + segment as u64 * self.superblock.segment_bytes
    }

    fn load(&mut self, segment: u32) -> Result<&[u8], StorageError> {
        if self.loaded != Some(segment) {
            self.loaded = None;
            self.disk.read(self.start(segment), &mut self.buf)?;
            self.loaded = Some(segment);
            if self.summaries[segment as usize].is_none() {
                self.summaries[segment as usize] =
                    Some(summarise(self.buf.as_slice(), self.superblock.format_id));
            }
        }
        Ok(self.buf.as_slice())
    }
}

fn summarise(bytes: &[u8], format_id: u64) -> SectorSummary {
    let mut summary = SectorSummary::default();
    for at in (0..bytes.len()).step_by(SECTOR_BYTES) {
        let Some((header, _)) = decode_at(bytes, at, format_id) else {
            continue;
        };
        summary.generation_max = summary.generation_max.max(header.generation);
        if summary
            .vouching
            .is_none_or(|(d, _, _)| header.durable_lsn > d)
        {
            summary.vouching = Some((header.durable_lsn, header.lsn, at));
        }
    }
    summary
}

/// The log state while replaying. Entries `(snapshot, phantom_last]` were
/// recorded before the replay's first checkpoint: their records may be
/// overwritten, so they must all be dead when replay ends.
struct Replay {
    snapshot: LogId,
    phantom_last: Index,
    phantom_last_term: Option<Term>,
    slots: VecDeque<Slot>,
}

impl Replay {
    fn base(&self) -> Index {
        self.snapshot.index.max(self.phantom_last)
    }

    fn last_index(&self) -> Index {
        self.base() + self.slots.len() as u64
    }

    fn last_term(&self) -> Option<Term> {
        match self.slots.back() {
            Some(slot) => Some(slot.term),
            None if self.phantom_last > self.snapshot.index => self.phantom_last_term,
            None => Some(self.snapshot.term),
        }
    }

    fn apply(&mut self, header: &Header, payload: &[u8], offset: u64) -> Result<(), String> {
        let last = self.last_index();
        match header.kind {
            RecordKind::Noop | RecordKind::Command | RecordKind::Config => {
                if header.index != last + 1 {
                    return Err(format!(
                        "entry {} does not follow entry {last}",
                        header.index
                    ));
                }
                if self.last_term().is_some_and(|t| header.term < t) {
                    return Err(format!(
                        "entry {} has a term lower than its predecessor",
                        header.index
                    ));
                }
                self.slots.push_back(Slot {
                    term: header.term,
                    lsn: header.lsn,
                    offset,
                    len: header.record_bytes() as u32,
                });
            }
            RecordKind::Truncate => {
                let index = header.index;
                if index <= self.snapshot.index || index > last {
                    return Err(format!("truncation at {index} outside the log"));
                }
                if index > self.base() {
                    self.slots.truncate((index - self.base() - 1) as usize);
                } else {
                    self.slots.clear();
                    self.phantom_last = index - 1;
                    self.phantom_last_term = None;
                }
            }
            RecordKind::Release => {
                let (index, term) = (header.index, header.term);
                if index <= self.snapshot.index || index > last {
                    return Err(format!("release to {index} outside the log"));
                }
                if index > self.base() {
                    let drop = (index - self.base()) as usize;
                    if self.slots[drop - 1].term != term {
                        return Err(format!(
                            "release to {index}@t{term}: the entry has another term"
                        ));
                    }
                    self.slots.drain(..drop);
                    self.phantom_last = index;
                }
                self.snapshot = LogId::new(index, term);
            }
            RecordKind::Reset => {
                self.slots.clear();
                self.snapshot = LogId::new(header.index, header.term);
                self.phantom_last = header.index;
            }
            RecordKind::Checkpoint => {
                let checkpoint = Checkpoint::decode(payload).map_err(|e| format!("{e:?}"))?;
                let term_ok = self.last_term().is_none_or(|t| t == checkpoint.last.term);
                if checkpoint.snapshot != self.snapshot || checkpoint.last.index != last || !term_ok
                {
                    return Err(format!(
                        "checkpoint says snapshot {} last {}, the replay has snapshot {} last {last}",
                        checkpoint.snapshot, checkpoint.last, self.snapshot
                    ));
                }
                if self.slots.is_empty() && self.phantom_last > self.snapshot.index {
                    self.phantom_last_term = Some(checkpoint.last.term);
                }
            }
        }
        Ok(())
    }
}

fn decode_at(segment_bytes: &[u8], at: usize, format_id: u64) -> Option<(Header, &[u8])> {
    if at + RECORD_HEADER_BYTES > segment_bytes.len() {
        return None;
    }
    decode_record(&segment_bytes[at..], format_id).ok()
}

/// Where the chain stands during replay.
struct Cursor {
    segment: u32,
    generation: u64,
    /// Offset within the segment just after the last record.
    pos: usize,
    expect_lsn: u64,
    prev_checksum: u64,
}

/// Rebuilds the log (see the module documentation).
pub(crate) fn recover<D: Disk>(
    disk: &D,
    superblock: &Superblock,
) -> Result<RecoveredLog, StorageError> {
    let count = superblock.segment_count;
    let format_id = superblock.format_id;
    let segment_bytes = superblock.segment_bytes;
    let start = |segment: u32| RING_OFFSET_BYTES + segment as u64 * segment_bytes;

    // 1. The newest self-valid checkpoint.
    let mut newest: Option<(Header, Checkpoint)> = None;
    for segment in 0..count {
        let sector = read_sector(disk, start(segment))?;
        let Ok((header, payload)) = decode_record(sector.as_slice(), format_id) else {
            continue;
        };
        if header.kind != RecordKind::Checkpoint || header.segment != segment {
            continue;
        }
        let Ok(checkpoint) = Checkpoint::decode(payload) else {
            continue;
        };
        if newest.is_none_or(|(h, _)| header.lsn > h.lsn) {
            newest = Some((header, checkpoint));
        }
    }
    let Some((newest_header, newest_checkpoint)) = newest else {
        return Err(corrupt("no segment starts with a valid checkpoint".into()));
    };

    // 2. Its head: where replay starts.
    let head = newest_checkpoint.head_segment;
    let head_header = (head < count as u64)
        .then(|| read_sector(disk, start(head as u32)))
        .transpose()?
        .and_then(|sector| {
            decode_record(sector.as_slice(), format_id)
                .ok()
                .map(|(h, p)| (h, Checkpoint::decode(p)))
        });
    let (head_header, head_checkpoint) = match head_header {
        Some((h, Ok(cp)))
            if h.kind == RecordKind::Checkpoint
                && h.lsn == newest_checkpoint.head_lsn
                && h.generation == newest_checkpoint.head_generation
                && h.segment as u64 == head =>
        {
            (h, cp)
        }
        _ => {
            return Err(corrupt(format!(
                "the newest checkpoint (segment {}, lsn {}) names segment {head} (generation {}, \
                 lsn {}) as the start of the log, but that segment's checkpoint is damaged or \
                 overwritten",
                newest_header.segment,
                newest_header.lsn,
                newest_checkpoint.head_generation,
                newest_checkpoint.head_lsn
            )))
        }
    };

    // 3. Replay the chain.
    let head = head as u32;
    let mut segments = vec![SegmentState::default(); count as usize];
    segments[head as usize] = SegmentState {
        generation: head_header.generation,
        checkpoint_lsn: head_header.lsn,
    };
    let mut replay = Replay {
        snapshot: head_checkpoint.snapshot,
        phantom_last: head_checkpoint.last.index,
        phantom_last_term: Some(head_checkpoint.last.term),
        slots: VecDeque::new(),
    };
    if head_checkpoint.last.index < head_checkpoint.snapshot.index {
        return Err(corrupt(format!(
            "checkpoint at segment {head} has its last entry before its snapshot"
        )));
    }
    let mut cursor = Cursor {
        segment: head,
        generation: head_header.generation,
        pos: CHECKPOINT_RECORD_BYTES,
        expect_lsn: head_header.lsn + 1,
        prev_checksum: head_header.checksum,
    };
    let mut reached_newest = head_header.lsn == newest_header.lsn;
    let mut reader = SegmentReader::new(disk, *superblock);
    let mut moves = 0u32;
    loop {
        let bytes = reader.load(cursor.segment)?;
        let aligned = align_up(cursor.pos as u64, SECTOR_BYTES as u64) as usize;
        let mut found = None;
        for at in [cursor.pos, aligned] {
            let Some((header, payload)) = decode_at(bytes, at, format_id) else {
                continue;
            };
            let chained = header.lsn == cursor.expect_lsn
                && header.prev_checksum == cursor.prev_checksum
                && header.generation == cursor.generation
                && header.segment == cursor.segment
                && header.kind != RecordKind::Checkpoint
                && at + header.record_bytes() <= bytes.len();
            if chained {
                found = Some((header, payload.to_vec(), at));
                break;
            }
        }
        if let Some((header, payload, at)) = found {
            let offset = start(cursor.segment) + at as u64;
            replay.apply(&header, &payload, offset).map_err(|why| {
                corrupt(format!(
                    "record lsn {} at disk offset {offset}: {why}",
                    header.lsn
                ))
            })?;
            cursor.pos = at + header.record_bytes();
            cursor.expect_lsn += 1;
            cursor.prev_checksum = header.checksum;
            continue;
        }
        // Not in this segment: a checkpoint at the start of the next one?
        let next = (cursor.segment + 1) % count;
        let bytes = reader.load(next)?;
        let Some((header, payload)) = decode_at(bytes, 0, format_id) else {
            break;
        };
        let chained = header.kind == RecordKind::Checkpoint
            && header.lsn == cursor.expect_lsn
            && header.prev_checksum == cursor.prev_checksum
            && header.segment == next
            && header.generation > cursor.generation;
        if !chained {
            break;
        }
        moves += 1;
        if moves >= count {
            return Err(corrupt("the chain of records wraps the whole ring".into()));
        }
        let offset = start(next);
        replay.apply(&header, payload, offset).map_err(|why| {
            corrupt(format!(
                "checkpoint lsn {} at disk offset {offset}: {why}",
                header.lsn
            ))
        })?;
        segments[next as usize] = SegmentState {
            generation: header.generation,
            checkpoint_lsn: header.lsn,
        };
        reached_newest |= header.lsn == newest_header.lsn;
        cursor = Cursor {
            segment: next,
            generation: header.generation,
            pos: CHECKPOINT_RECORD_BYTES,
            expect_lsn: header.lsn + 1,
            prev_checksum: header.checksum,
        };
    }
    let end_lsn = cursor.expect_lsn - 1;
    let end_offset = start(cursor.segment) + cursor.pos as u64;
    if !reached_newest {
        return Err(corrupt(format!(
            "the chain of records from segment {head} ends at lsn {end_lsn} (disk offset \
             {end_offset}) before the newest checkpoint (lsn {}, segment {}): a record in between \
             is damaged",
            newest_header.lsn, newest_header.segment
        )));
    }

    // 4. Does any record claim a durable record past the chain's end?
    let mut generation_max = 0;
    for segment in 0..count {
        if reader.summaries[segment as usize].is_none() {
            reader.load(segment)?;
        }
        let summary = reader.summaries[segment as usize].expect("summarised on load");
        generation_max = generation_max.max(summary.generation_max);
        if let Some((durable_lsn, lsn, at)) = summary.vouching.filter(|v| v.0 > end_lsn) {
            return Err(corrupt(format!(
                "the log's chain of records ends at lsn {end_lsn} (disk offset {end_offset}), \
                 but the record at disk offset {} (lsn {lsn}) was written after lsn \
                 {durable_lsn} was durable: a durable record is damaged, and truncating here \
                 would lose committed entries",
                start(segment) + at as u64,
            )));
        }
    }
    if replay.phantom_last > replay.snapshot.index {
        return Err(corrupt(format!(
            "entries {}..={} are in the log but their records were overwritten",
            replay.snapshot.index + 1,
            replay.phantom_last
        )));
    }
    let tail = cursor.segment;
    let tail_end = start(tail) + segment_bytes;
    let write_offset = align_up(end_offset, SECTOR_BYTES as u64).min(tail_end);
    let head = match replay.slots.front() {
        Some(slot) => ((slot.offset - RING_OFFSET_BYTES) / segment_bytes) as u32,
        None => tail,
    };
    Ok(RecoveredLog {
        snapshot: replay.snapshot,
        slots: replay.slots,
        segments,
        head,
        tail,
        write_offset,
        next_lsn: end_lsn + 1,
        last_checksum: cursor.prev_checksum,
        next_generation: generation_max + 1,
    })
}
