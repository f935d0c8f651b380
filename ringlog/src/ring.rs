//! The ring log: a [`LogStore`] over any [`Disk`].
//!
//! What it does: keeps the in-memory view of the log (a small index slot
//! per live entry, and a bounded cache of recent entries), lays every
//! submitted operation out at once as a record in a staging buffer, and
//! turns the staged records into one group commit when the driver calls
//! [`RingLog::begin_flush`]. [`RingLog::complete_flush`] (simulator, or a
//! blocking server) or [`RingLog::poll_durable`] (event loop) report the
//! position that became durable. Reads of old entries go to the disk.
//!
//! What it does not do: I/O scheduling (the disk does it), recovery (see
//! `recovery.rs`, which [`RingLog::open`] calls), or deciding when to flush
//! (the driver does: the simulator explicitly, a server whenever no flush
//! is in flight and something is staged).
//!
//! Invariants:
//! - The log is a journal of records along a hash chain (`lsn` +1 and
//!   `prev_checksum` per record). Records are only appended; nothing in use
//!   is ever overwritten. Each flush starts at a sector boundary, so a torn
//!   write never damages a record that an earlier flush made durable.
//! - Segments `head..=tail` (in ring order) are in use; the writer only
//!   moves into `tail + 1`, and only if `tail + 2` is not the head, so the
//!   head named by the newest checkpoint is never overwritten.
//! - A move into a new segment starts a new stage of the flush: its writes
//!   are issued after everything before it is synced.
//! - Every entry that is not durable is in the cache; the cache is a suffix
//!   of the log and holds at most `cache_bytes_max` of durable entries.

use crate::disk::{AlignedBuf, Disk, FlushJob, Write};
use crate::format::{
    align_up, encode_record, record_bytes, seal_record, Checkpoint, HardStateSlot, RecordFields,
    RecordKind, Superblock, CHECKPOINT_RECORD_BYTES, CONTROL_RESERVE_BYTES, HARD_STATE_OFFSETS,
    PAYLOAD_BYTES_MAX, RECORD_HEADER_BYTES, RING_OFFSET_BYTES, SECTOR_BYTES, SUPERBLOCK_OFFSETS,
};
use crate::recovery;
use crate::{Entry, HardState, Index, LogId, LogStore, StorageError, Term};
use std::collections::VecDeque;

/// The geometry of a new log (fixed for its lifetime).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Bytes per segment: a multiple of 4096, at least 64 KiB.
    pub segment_bytes: u64,
    /// Segments in the ring: at least 3 (one is always kept free).
    pub segment_count: u32,
}

impl Geometry {
    /// The bytes a disk must have for this geometry.
    pub fn disk_bytes(&self) -> u64 {
        RING_OFFSET_BYTES + self.segment_bytes * self.segment_count as u64
    }

    /// The largest entry payload this geometry stores (a record never spans
    /// two segments).
    pub fn entry_payload_bytes_max(&self) -> u64 {
        let usable = self
            .segment_bytes
            .saturating_sub(CONTROL_RESERVE_BYTES)
            .saturating_sub(record_bytes(crate::format::CHECKPOINT_PAYLOAD_BYTES) as u64)
            .saturating_sub(RECORD_HEADER_BYTES as u64 + 8);
        usable.min(PAYLOAD_BYTES_MAX as u64)
    }
}

/// Limits of a running log (may change between restarts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Bytes of durable entries kept in memory for reads (entries not yet
    /// durable are always kept, on top of this).
    pub cache_bytes_max: u64,
    /// Bytes of entry records submitted and not yet handed to a flush; an
    /// append past it fails with `StorageError::Full` (the driver must flush).
    pub unflushed_bytes_max: u64,
    /// Flushes submitted and not yet complete (1 = classic group commit).
    pub flushes_in_flight_max: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            cache_bytes_max: 64 << 20,
            unflushed_bytes_max: 64 << 20,
            flushes_in_flight_max: 1,
        }
    }
}

/// Where an entry's record is, per live entry (the per-entry memory cost).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    pub term: Term,
    pub lsn: u64,
    /// Absolute disk offset of the record.
    pub offset: u64,
    /// Bytes of the record (header, payload, padding).
    pub len: u32,
}

/// Per segment: its generation and the lsn of its checkpoint record, for
/// the segments in use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SegmentState {
    pub generation: u64,
    pub checkpoint_lsn: u64,
}

/// A contiguous run of staged records within one segment: one write.
struct Chunk {
    offset: u64,
    buf: AlignedBuf,
}

struct StagedRecord {
    chunk: usize,
    at: usize,
    len: usize,
    lsn: u64,
}

/// A group commit in flight.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    ticket: u64,
    last_lsn: u64,
    last_id: LogId,
}

/// A group commit handed to the disk; complete it with
/// [`RingLog::complete_flush`] (in order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlushTicket(pub u64);

/// What recovery rebuilt (see `recovery.rs`).
pub(crate) struct RecoveredLog {
    pub snapshot: LogId,
    pub slots: VecDeque<Slot>,
    pub segments: Vec<SegmentState>,
    pub head: u32,
    pub tail: u32,
    pub write_offset: u64,
    pub next_lsn: u64,
    pub last_checksum: u64,
    pub next_generation: u64,
}

/// Counters for metrics and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStats {
    pub flushes: u64,
    pub flushed_bytes: u64,
    pub disk_reads: u64,
    pub segment_moves: u64,
}

/// Bunker's durable Raft log over the disk `D` (see the module invariants).
pub struct RingLog<D: Disk> {
    disk: D,
    superblock: Superblock,
    options: Options,
    snapshot: LogId,
    slots: VecDeque<Slot>,
    cache: VecDeque<Entry>,
    cache_bytes: u64,
    hard: HardState,
    hard_seq: u64,
    segments: Vec<SegmentState>,
    head: u32,
    tail: u32,
    write_offset: u64,
    next_lsn: u64,
    next_generation: u64,
    last_checksum: u64,
    chunks: Vec<Chunk>,
    staged: Vec<StagedRecord>,
    staged_entry_bytes: u64,
    durable_lsn: u64,
    durable_id: LogId,
    in_flight: VecDeque<InFlight>,
    next_ticket: u64,
    failed: Option<String>,
    stats: RingStats,
}

fn corrupt(what: String) -> StorageError {
    StorageError::Corrupt(what)
}

impl<D: Disk> RingLog<D> {
    /// Writes an empty log onto `disk` (anything on it is forgotten: records
    /// of an earlier log fail the checksum seeded with the new `format_id`)
    /// and opens it.
    pub fn format(
        mut disk: D,
        geometry: Geometry,
        format_id: u64,
        options: Options,
    ) -> Result<RingLog<D>, StorageError> {
        let superblock = Superblock {
            format_id,
            segment_bytes: geometry.segment_bytes,
            segment_count: geometry.segment_count,
        };
        superblock.validate().map_err(|e| StorageError::Io {
            path: "ringlog configuration".into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        })?;
        if disk.size_bytes() < superblock.disk_bytes() {
            return Err(StorageError::Full(format!(
                "the disk has {} bytes, the log needs {}",
                disk.size_bytes(),
                superblock.disk_bytes()
            )));
        }
        // Order: the first checkpoint, then the hard state, then the
        // superblocks. A valid superblock therefore implies the rest exists.
        let mut first = AlignedBuf::zeroed(SECTOR_BYTES);
        let checkpoint = Checkpoint {
            snapshot: LogId::ZERO,
            last: LogId::ZERO,
            head_segment: 0,
            head_generation: 1,
            head_lsn: 1,
        };
        let fields = RecordFields {
            kind: RecordKind::Checkpoint,
            segment: 0,
            generation: 1,
            lsn: 1,
            index: 0,
            term: 0,
        };
        let record = &mut first.as_mut_slice()[..CHECKPOINT_RECORD_BYTES];
        encode_record(record, &fields, &checkpoint.encode());
        seal_record(record, 0, 0, format_id);
        disk.write_durable(RING_OFFSET_BYTES, &first)?;
        let mut slot = AlignedBuf::zeroed(SECTOR_BYTES);
        let state = HardStateSlot {
            seq: 1,
            state: HardState::default(),
        };
        slot.as_mut_slice()
            .copy_from_slice(&state.encode(format_id));
        disk.write_durable(HARD_STATE_OFFSETS[1], &slot)?;
        disk.write_durable(HARD_STATE_OFFSETS[0], &AlignedBuf::zeroed(SECTOR_BYTES))?;
        let mut sb = AlignedBuf::zeroed(SECTOR_BYTES);
        sb.as_mut_slice().copy_from_slice(&superblock.encode());
        for offset in SUPERBLOCK_OFFSETS {
            disk.write_durable(offset, &sb)?;
        }
        RingLog::open(disk, options)
    }

    /// Recovers the log on `disk`: the durable entries and hard state, or
    /// `StorageError::Corrupt` naming what is damaged.
    pub fn open(mut disk: D, options: Options) -> Result<RingLog<D>, StorageError> {
        assert!(options.flushes_in_flight_max >= 1);
        let superblock = recovery::read_superblock(&disk)?;
        let (hard_seq, hard) = recovery::read_hard_state(&disk, &superblock)?;
        let recovered = recovery::recover(&disk, &superblock)?;
        let last = recovered
            .slots
            .back()
            .map(|s| {
                LogId::new(
                    recovered.snapshot.index + recovered.slots.len() as u64,
                    s.term,
                )
            })
            .unwrap_or(recovered.snapshot);
        if last.term > hard.term {
            return Err(corrupt(format!(
                "the log holds entry {last} of a term later than the durable term {}: the \
                 hard-state slots are damaged",
                hard.term
            )));
        }
        // What recovery read may sit only in a volatile cache after a process
        // crash: make it durable before building on it.
        disk.sync_all()?;
        let durable_lsn = recovered.next_lsn - 1;
        let log = RingLog {
            disk,
            superblock,
            options,
            snapshot: recovered.snapshot,
            slots: recovered.slots,
            cache: VecDeque::new(),
            cache_bytes: 0,
            hard,
            hard_seq,
            segments: recovered.segments,
            head: recovered.head,
            tail: recovered.tail,
            write_offset: recovered.write_offset,
            next_lsn: recovered.next_lsn,
            next_generation: recovered.next_generation,
            last_checksum: recovered.last_checksum,
            chunks: Vec::new(),
            staged: Vec::new(),
            staged_entry_bytes: 0,
            durable_lsn,
            durable_id: last,
            in_flight: VecDeque::new(),
            next_ticket: 1,
            failed: None,
            stats: RingStats::default(),
        };
        log.assert_invariants();
        Ok(log)
    }

    /// Gives the disk back (to crash it in the simulator, or to close it).
    /// Staged and in-flight writes are abandoned, as in a crash.
    pub fn into_disk(self) -> D {
        self.disk
    }

    pub fn disk(&self) -> &D {
        &self.disk
    }

    pub fn disk_mut(&mut self) -> &mut D {
        &mut self.disk
    }

    pub fn geometry(&self) -> Geometry {
        Geometry {
            segment_bytes: self.superblock.segment_bytes,
            segment_count: self.superblock.segment_count,
        }
    }

    pub fn stats(&self) -> RingStats {
        self.stats
    }

    /// The last position reported durable.
    pub fn durable_id(&self) -> LogId {
        self.durable_id
    }

    /// Whether operations were submitted since the last `begin_flush`.
    pub fn has_unflushed(&self) -> bool {
        !self.staged.is_empty()
    }

    /// Flushes handed to the disk and not yet complete.
    pub fn flushes_in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether `begin_flush` may be called now (something is staged and
    /// fewer than `flushes_in_flight_max` flushes are in flight).
    pub fn flush_due(&self) -> bool {
        self.has_unflushed() && self.in_flight.len() < self.options.flushes_in_flight_max
    }

    /// Bytes of memory the in-memory index and cache use now (not counting
    /// staging buffers): the bound documented in docs/RINGLOG.md.
    pub fn memory_bytes(&self) -> u64 {
        (self.slots.capacity() * std::mem::size_of::<Slot>()) as u64
            + self.cache_bytes
            + (self.cache.capacity() * std::mem::size_of::<Entry>()) as u64
    }

    /// Starts a group commit of every operation submitted so far: hands
    /// their records to the disk (one write per segment touched, usually
    /// one) and returns its ticket, or `None` if nothing was submitted.
    /// The driver must call it only when `flushes_in_flight()` is below
    /// `flushes_in_flight_max`.
    pub fn begin_flush(&mut self) -> Result<Option<FlushTicket>, StorageError> {
        self.check_failed()?;
        assert!(
            self.in_flight.len() < self.options.flushes_in_flight_max,
            "begin_flush with {} flushes in flight",
            self.in_flight.len()
        );
        if self.staged.is_empty() {
            return Ok(None);
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let job = self.seal(ticket);
        let bytes = job.bytes();
        if let Err(e) = self.disk.submit(job) {
            return Err(self.fail(e));
        }
        self.stats.flushes += 1;
        self.stats.flushed_bytes += bytes;
        self.in_flight.push_back(InFlight {
            ticket,
            last_lsn: self.next_lsn - 1,
            last_id: self.last_id(),
        });
        Ok(Some(FlushTicket(ticket)))
    }

    /// Waits for the oldest flush in flight (`ticket`) and returns the log
    /// position that is now durable. The simulator calls it when its
    /// simulated sync completes; a blocking driver right after `begin_flush`.
    pub fn complete_flush(&mut self, ticket: FlushTicket) -> Result<LogId, StorageError> {
        self.check_failed()?;
        let front = self.in_flight.front().copied();
        assert_eq!(
            front.map(|f| f.ticket),
            Some(ticket.0),
            "flushes complete in order"
        );
        if let Err(e) = self.disk.wait(ticket.0) {
            return Err(self.fail(e));
        }
        Ok(self.on_flush_complete(ticket.0))
    }

    /// Collects the flushes the disk completed since the last call, without
    /// blocking; returns the newest durable position if any completed.
    pub fn poll_durable(&mut self) -> Result<Option<LogId>, StorageError> {
        self.check_failed()?;
        let mut newest = None;
        while let Some(done) = self.disk.try_complete() {
            match done {
                Ok(ticket) => newest = Some(self.on_flush_complete(ticket)),
                Err(e) => return Err(self.fail(e)),
            }
        }
        Ok(newest)
    }

    /// Submits a flush of everything and waits for every flush in flight:
    /// a blocking convenience for tools and tests.
    pub fn flush(&mut self) -> Result<LogId, StorageError> {
        while let Some(front) = self.in_flight.front().copied() {
            self.complete_flush(FlushTicket(front.ticket))?;
        }
        if let Some(ticket) = self.begin_flush()? {
            self.complete_flush(ticket)?;
        }
        Ok(self.durable_id)
    }

    fn on_flush_complete(&mut self, ticket: u64) -> LogId {
        let done = self.in_flight.pop_front().expect("a flush in flight");
        assert_eq!(done.ticket, ticket, "flushes complete in order");
        assert!(done.last_lsn >= self.durable_lsn);
        self.durable_lsn = done.last_lsn;
        self.durable_id = done.last_id;
        self.evict();
        done.last_id
    }

    fn check_failed(&self) -> Result<(), StorageError> {
        match &self.failed {
            None => Ok(()),
            Some(why) => Err(StorageError::Io {
                path: "ringlog".into(),
                source: std::io::Error::other(format!(
                    "an earlier write failed ({why}); the log refuses further writes: restart \
                     the server so that it recovers from the disk"
                )),
            }),
        }
    }

    /// After a failed write or sync nothing about the disk's state can be
    /// trusted (fsyncgate): the log stops and the server must restart.
    fn fail(&mut self, error: StorageError) -> StorageError {
        self.failed = Some(error.to_string());
        error
    }

    // ----- layout ---------------------------------------------------------

    fn segment_start(&self, segment: u32) -> u64 {
        RING_OFFSET_BYTES + segment as u64 * self.superblock.segment_bytes
    }

    fn segment_of(&self, offset: u64) -> u32 {
        assert!(offset >= RING_OFFSET_BYTES);
        ((offset - RING_OFFSET_BYTES) / self.superblock.segment_bytes) as u32
    }

    fn next_segment(&self, segment: u32) -> u32 {
        (segment + 1) % self.superblock.segment_count
    }

    /// Whether the writer may move from `tail` into `tail + 1`.
    fn may_move(&self, tail: u32) -> bool {
        let next = self.next_segment(tail);
        next != self.head && self.next_segment(next) != self.head
    }

    /// Whether records of these sizes fit in the ring now: a dry run of
    /// `place`, conservative about the head (which only moves forward).
    fn fits(&self, sizes: &[usize], reserve_bytes: u64) -> bool {
        let mut offset = self.write_offset;
        let mut tail = self.tail;
        for &need in sizes {
            let end = self.segment_start(tail) + self.superblock.segment_bytes - reserve_bytes;
            if offset + need as u64 > end {
                if !self.may_move(tail) {
                    return false;
                }
                tail = self.next_segment(tail);
                offset = self.segment_start(tail) + CHECKPOINT_RECORD_BYTES as u64;
            }
            offset += need as u64;
        }
        true
    }

    /// Lays one record out in the staging buffer; returns its lsn and offset.
    fn place(&mut self, kind: RecordKind, index: Index, term: Term, payload: &[u8]) -> (u64, u64) {
        let need = record_bytes(payload.len()) as u64;
        let reserve = if kind.entry_kind().is_some() {
            CONTROL_RESERVE_BYTES
        } else {
            0
        };
        let end = self.segment_start(self.tail) + self.superblock.segment_bytes - reserve;
        if self.write_offset + need > end {
            self.move_to_next_segment();
        }
        self.place_here(kind, index, term, payload)
    }

    fn place_here(
        &mut self,
        kind: RecordKind,
        index: Index,
        term: Term,
        payload: &[u8],
    ) -> (u64, u64) {
        let need = record_bytes(payload.len());
        let offset = self.write_offset;
        let segment_end = self.segment_start(self.tail) + self.superblock.segment_bytes;
        assert!(
            offset + need as u64 <= segment_end,
            "a record never spans segments"
        );
        assert_eq!(offset % 8, 0);
        let continues = self
            .chunks
            .last()
            .is_some_and(|c| c.offset + c.buf.len() as u64 == offset);
        if !continues {
            assert_eq!(
                offset % SECTOR_BYTES as u64,
                0,
                "a chunk starts on a sector"
            );
            let mut buf = self.disk.spare_buffer().unwrap_or_default();
            buf.clear();
            self.chunks.push(Chunk { offset, buf });
        }
        let lsn = self.next_lsn;
        self.next_lsn += 1;
        let chunk_index = self.chunks.len() - 1;
        let chunk = &mut self.chunks[chunk_index];
        let at = chunk.buf.len();
        let fields = RecordFields {
            kind,
            segment: self.tail,
            generation: self.segments[self.tail as usize].generation,
            lsn,
            index,
            term,
        };
        encode_record(chunk.buf.extend_for_overwrite(need), &fields, payload);
        self.staged.push(StagedRecord {
            chunk: chunk_index,
            at,
            len: need,
            lsn,
        });
        self.write_offset += need as u64;
        (lsn, offset)
    }

    fn move_to_next_segment(&mut self) {
        assert!(
            self.may_move(self.tail),
            "capacity was checked before placing"
        );
        let next = self.next_segment(self.tail);
        self.tail = next;
        self.write_offset = self.segment_start(next);
        let generation = self.next_generation;
        self.next_generation += 1;
        self.segments[next as usize] = SegmentState {
            generation,
            checkpoint_lsn: self.next_lsn,
        };
        self.update_head();
        let head_state = self.segments[self.head as usize];
        let checkpoint = Checkpoint {
            snapshot: self.snapshot,
            last: self.last_id(),
            head_segment: self.head as u64,
            head_generation: head_state.generation,
            head_lsn: head_state.checkpoint_lsn,
        };
        let last = self.last_id();
        let (lsn, _) = self.place_here(
            RecordKind::Checkpoint,
            last.index,
            last.term,
            &checkpoint.encode(),
        );
        assert_eq!(lsn, self.segments[next as usize].checkpoint_lsn);
        self.stats.segment_moves += 1;
    }

    /// Moves the head to the segment of the first live entry (or the tail
    /// if the log is empty). The head only moves forward.
    fn update_head(&mut self) {
        let head = match self.slots.front() {
            Some(slot) => self.segment_of(slot.offset),
            None => self.tail,
        };
        let count = self.superblock.segment_count;
        let distance = |from: u32, to: u32| (to + count - from) % count;
        assert!(
            distance(self.head, head) <= distance(self.head, self.tail),
            "the head moves forward within the segments in use"
        );
        self.head = head;
    }

    /// Seals the staged records (durability hint, chain, checksums), pads
    /// the last chunk to a sector, and makes the flush job: one stage per
    /// chunk, since a chunk after the first starts a new segment.
    fn seal(&mut self, ticket: u64) -> FlushJob {
        let format_id = self.superblock.format_id;
        let mut stage_hint = self.durable_lsn;
        let mut current_chunk = 0;
        for record in &self.staged {
            if record.chunk != current_chunk {
                // The previous stage is synced before this one's writes.
                stage_hint = record.lsn - 1;
                current_chunk = record.chunk;
            }
            let bytes = &mut self.chunks[record.chunk].buf.as_mut_slice()
                [record.at..record.at + record.len];
            self.last_checksum = seal_record(bytes, stage_hint, self.last_checksum, format_id);
        }
        self.staged.clear();
        self.staged_entry_bytes = 0;
        let mut stages = Vec::new();
        for mut chunk in self.chunks.drain(..) {
            chunk.buf.pad_to_sector();
            stages.push(vec![Write {
                offset: chunk.offset,
                buf: chunk.buf,
            }]);
        }
        let segment_end = self.segment_start(self.tail) + self.superblock.segment_bytes;
        self.write_offset = align_up(self.write_offset, SECTOR_BYTES as u64).min(segment_end);
        FlushJob { ticket, stages }
    }

    // ----- cache ------------------------------------------------------------

    fn slot(&self, index: Index) -> &Slot {
        assert!(index > self.snapshot.index);
        &self.slots[(index - self.snapshot.index - 1) as usize]
    }

    fn cache_first(&self) -> Index {
        self.last_id().index + 1 - self.cache.len() as u64
    }

    /// Drops the oldest durable entries while the cache is over its budget.
    fn evict(&mut self) {
        while self.cache_bytes > self.options.cache_bytes_max {
            let Some(front) = self.cache.front() else {
                break;
            };
            if self.slot(front.index).lsn > self.durable_lsn {
                break;
            }
            self.cache_bytes -= front.size_bytes();
            self.cache.pop_front();
        }
    }

    fn read_from_disk(
        &self,
        lo: Index,
        hi: Index,
        max_bytes: u64,
        out: &mut Vec<Entry>,
    ) -> Result<(), StorageError> {
        // One read covers a run of records in one segment, up to 1 MiB (or
        // one record, if larger).
        const READ_BYTES_MAX: u64 = 1 << 20;
        let first = *self.slot(lo);
        let segment = self.segment_of(first.offset);
        let start = first.offset - first.offset % SECTOR_BYTES as u64;
        let mut end = first.offset + first.len as u64;
        let mut count = 1;
        let mut bytes = 0u64;
        while lo + count < hi {
            let slot = self.slot(lo + count);
            let slot_end = slot.offset + slot.len as u64;
            bytes += slot.len as u64;
            if self.segment_of(slot.offset) != segment
                || slot_end - start > READ_BYTES_MAX
                || bytes > max_bytes
            {
                break;
            }
            end = end.max(slot_end);
            count += 1;
        }
        let mut buf = AlignedBuf::zeroed((align_up(end, SECTOR_BYTES as u64) - start) as usize);
        self.disk.read(start, &mut buf)?;
        let generation = self.segments[segment as usize].generation;
        for index in lo..lo + count {
            let slot = self.slot(index);
            let at = (slot.offset - start) as usize;
            let bytes = &buf.as_slice()[at..at + slot.len as usize];
            let entry = recovery::decode_entry(
                bytes,
                self.superblock.format_id,
                index,
                slot,
                segment,
                generation,
            )
            .map_err(|why| {
                corrupt(format!(
                    "entry {index} at disk offset {}: {why}",
                    slot.offset
                ))
            })?;
            out.push(entry);
        }
        Ok(())
    }

    pub(crate) fn assert_invariants(&self) {
        let count = self.superblock.segment_count;
        assert!(self.head < count && self.tail < count);
        assert!(self.write_offset >= self.segment_start(self.tail));
        assert!(self.write_offset <= self.segment_start(self.tail) + self.superblock.segment_bytes);
        assert!(self.cache.len() <= self.slots.len());
        if let Some(front) = self.slots.front() {
            let segment = self.segment_of(front.offset);
            let distance = |from: u32, to: u32| (to + count - from) % count;
            assert!(distance(segment, self.tail) <= distance(self.head, self.tail));
        }
    }
}

impl<D: Disk> LogStore for RingLog<D> {
    fn snapshot_id(&self) -> LogId {
        self.snapshot
    }

    fn has_room(&self, entries: &[Entry]) -> bool {
        let sizes: Vec<usize> = entries.iter().map(|e| record_bytes(e.data.len())).collect();
        let bytes: u64 = sizes.iter().map(|s| *s as u64).sum();
        self.staged_entry_bytes + bytes <= self.options.unflushed_bytes_max
            && self.fits(&sizes, CONTROL_RESERVE_BYTES)
    }

    fn entry_bytes(&self, lo: Index, hi: Index) -> Result<u64, StorageError> {
        let (first, last) = (self.snapshot.index + 1, self.last_id().index);
        if lo >= hi {
            return Ok(0);
        }
        if lo < first || hi > last + 1 {
            return Err(StorageError::Unavailable {
                index: lo,
                first,
                last,
            });
        }
        // Record sizes (header, payload, padding): an upper bound of the
        // payloads, from memory.
        Ok((lo..hi).map(|i| u64::from(self.slot(i).len)).sum())
    }

    fn space_used_percent(&self) -> u8 {
        let count = self.superblock.segment_count;
        let in_use = (self.tail + count - self.head) % count + 1;
        (u64::from(in_use) * 100 / u64::from(count.max(1))).min(100) as u8
    }

    fn last_id(&self) -> LogId {
        match self.slots.back() {
            Some(slot) => LogId::new(self.snapshot.index + self.slots.len() as u64, slot.term),
            None => self.snapshot,
        }
    }

    fn term(&self, index: Index) -> Option<Term> {
        if index == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        if index < self.snapshot.index || index > self.last_id().index {
            return None;
        }
        Some(self.slot(index).term)
    }

    fn entries(&self, lo: Index, hi: Index, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        let first = self.snapshot.index + 1;
        let last = self.last_id().index;
        if lo >= hi {
            return Ok(Vec::new());
        }
        if lo < first || hi > last + 1 {
            return Err(StorageError::Unavailable {
                index: lo,
                first,
                last,
            });
        }
        let mut out = Vec::new();
        let mut bytes = 0u64;
        let cache_first = self.cache_first();
        let mut index = lo;
        while index < hi {
            if index >= cache_first {
                let entry = &self.cache[(index - cache_first) as usize];
                assert_eq!(entry.index, index);
                bytes += entry.size_bytes();
                if !out.is_empty() && bytes > max_bytes {
                    break;
                }
                out.push(entry.clone());
                index += 1;
                continue;
            }
            let before = out.len();
            let budget = max_bytes.saturating_sub(bytes);
            self.read_from_disk(index, hi.min(cache_first), budget, &mut out)?;
            let mut full = false;
            let mut kept = before;
            for entry in &out[before..] {
                bytes += entry.size_bytes();
                if kept > 0 && bytes > max_bytes {
                    full = true;
                    break;
                }
                kept += 1;
            }
            out.truncate(kept);
            index = lo + out.len() as u64;
            if full {
                break;
            }
        }
        assert!(!out.is_empty());
        Ok(out)
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        self.check_failed()?;
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let last = self.last_id();
        assert_eq!(first.index, last.index + 1, "append continues the log");
        let mut term = last.term;
        let mut sizes = Vec::with_capacity(entries.len());
        let mut entry_bytes = 0u64;
        let payload_max = self.geometry().entry_payload_bytes_max();
        for (i, entry) in entries.iter().enumerate() {
            assert_eq!(
                entry.index,
                first.index + i as u64,
                "entries are contiguous"
            );
            assert!(entry.term >= term, "terms never decrease along the log");
            term = entry.term;
            if entry.data.len() as u64 > payload_max {
                return Err(StorageError::Full(format!(
                    "entry {} is {} bytes, more than the largest record this log stores ({} \
                     bytes for {}-byte segments): raise segment_bytes or split the command",
                    entry.index,
                    entry.data.len(),
                    payload_max,
                    self.superblock.segment_bytes
                )));
            }
            sizes.push(record_bytes(entry.data.len()));
            entry_bytes += record_bytes(entry.data.len()) as u64;
        }
        if self.staged_entry_bytes + entry_bytes > self.options.unflushed_bytes_max {
            return Err(StorageError::Full(format!(
                "{} bytes of entries are submitted and not yet flushed (limit {}): the driver \
                 must flush before appending more",
                self.staged_entry_bytes + entry_bytes,
                self.options.unflushed_bytes_max
            )));
        }
        if !self.fits(&sizes, CONTROL_RESERVE_BYTES) {
            return Err(StorageError::Full(format!(
                "the log ring is full ({} of {} segments of {} bytes in use, entries {}..={}): \
                 take a snapshot and release the log prefix, or format a larger log",
                (self.tail + self.superblock.segment_count - self.head)
                    % self.superblock.segment_count
                    + 1,
                self.superblock.segment_count,
                self.superblock.segment_bytes,
                self.snapshot.index + 1,
                last.index
            )));
        }
        for entry in entries {
            let kind = RecordKind::from_entry(entry.kind);
            let (lsn, offset) = self.place(kind, entry.index, entry.term, &entry.data);
            self.slots.push_back(Slot {
                term: entry.term,
                lsn,
                offset,
                len: record_bytes(entry.data.len()) as u32,
            });
            self.cache_bytes += entry.size_bytes();
            self.cache.push_back(entry.clone());
        }
        self.staged_entry_bytes += entry_bytes;
        self.update_head();
        self.evict();
        Ok(())
    }

    fn truncate_from(&mut self, index: Index) -> Result<(), StorageError> {
        self.check_failed()?;
        let last = self.last_id();
        assert!(
            self.snapshot.index < index && index <= last.index,
            "truncate_from({index}) outside the log ({}, {}]",
            self.snapshot.index,
            last.index
        );
        self.place_control(RecordKind::Truncate, index, 0)?;
        let keep = (index - self.snapshot.index - 1) as usize;
        self.slots.truncate(keep);
        while self.cache.back().is_some_and(|e| e.index >= index) {
            let entry = self.cache.pop_back().expect("back exists");
            self.cache_bytes -= entry.size_bytes();
        }
        assert!(self.cache.back().is_none_or(|e| e.index + 1 == index));
        self.update_head();
        Ok(())
    }

    fn release_to(&mut self, index: Index) -> Result<(), StorageError> {
        self.check_failed()?;
        if index == self.snapshot.index {
            return Ok(());
        }
        let Some(term) = self.term(index).filter(|_| index > self.snapshot.index) else {
            panic!(
                "release_to({index}) outside the log {}..={}",
                self.snapshot,
                self.last_id()
            );
        };
        self.place_control(RecordKind::Release, index, term)?;
        let drop = (index - self.snapshot.index) as usize;
        self.slots.drain(..drop);
        while self.cache.front().is_some_and(|e| e.index <= index) {
            let entry = self.cache.pop_front().expect("front exists");
            self.cache_bytes -= entry.size_bytes();
        }
        self.snapshot = LogId::new(index, term);
        self.update_head();
        Ok(())
    }

    fn reset(&mut self, snapshot: LogId) -> Result<(), StorageError> {
        self.check_failed()?;
        self.place_control(RecordKind::Reset, snapshot.index, snapshot.term)?;
        self.slots.clear();
        self.cache.clear();
        self.cache_bytes = 0;
        self.snapshot = snapshot;
        self.update_head();
        Ok(())
    }

    fn hard_state(&self) -> HardState {
        self.hard
    }

    fn save_hard_state(&mut self, state: HardState) -> Result<(), StorageError> {
        self.check_failed()?;
        let seq = self.hard_seq + 1;
        let slot = HardStateSlot { seq, state };
        let mut buf = AlignedBuf::zeroed(SECTOR_BYTES);
        buf.as_mut_slice()
            .copy_from_slice(&slot.encode(self.superblock.format_id));
        // Slots alternate, so a torn write leaves the other slot intact.
        let offset = HARD_STATE_OFFSETS[(seq % 2) as usize];
        if let Err(e) = self.disk.write_durable(offset, &buf) {
            return Err(self.fail(e));
        }
        self.hard_seq = seq;
        self.hard = state;
        Ok(())
    }
}

impl<D: Disk> RingLog<D> {
    /// Places a control record (truncate, release, reset), which may use
    /// the reserve at the end of each segment.
    fn place_control(
        &mut self,
        kind: RecordKind,
        index: Index,
        term: Term,
    ) -> Result<(), StorageError> {
        if !self.fits(&[record_bytes(0)], 0) {
            return Err(StorageError::Full(format!(
                "the log ring is full even for a {kind:?} record: take a snapshot and reset the \
                 log, or format a larger log"
            )));
        }
        self.place(kind, index, term, &[]);
        Ok(())
    }
}
