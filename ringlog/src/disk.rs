//! The small disk interface under a ring log, and an aligned buffer type.
//!
//! What it does: defines [`Disk`], the only way the ring log touches
//! storage, so the same format, recovery and indexing code runs over the
//! simulated disk ([`crate::sim::SimDisk`], single-threaded, deterministic)
//! and over the production driver ([`crate::uring::UringDisk`], O_DIRECT and
//! io_uring on a dedicated I/O thread). TigerBeetle's `Storage` type
//! parameter is the model.
//!
//! What it does not do: interpret bytes. A disk is a flat array of sectors.
//!
//! Invariants every implementation keeps:
//! - Offsets and lengths of reads and writes are multiples of
//!   [`SECTOR_BYTES`], and buffers are [`AlignedBuf`]s (aligned to 4096).
//! - The stages of a [`FlushJob`] are carried out in order: the writes of a
//!   stage are issued only after the previous stage's sync completed.
//! - Jobs complete in submission order; a job is complete when all its
//!   stages' writes and syncs are.
//! - `read` sees every write submitted before it (the ring log only reads
//!   ranges that are durable, or that it wrote and synced).

use crate::format::SECTOR_BYTES;
use crate::StorageError;

#[repr(C, align(4096))]
#[derive(Clone, Copy)]
struct Block([u8; SECTOR_BYTES]);

/// A byte buffer whose start is aligned to 4096 bytes, as O_DIRECT needs.
/// Its capacity grows in whole sectors; its length is any byte count.
#[derive(Clone, Default)]
pub struct AlignedBuf {
    blocks: Vec<Block>,
    len: usize,
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

impl AlignedBuf {
    pub fn new() -> AlignedBuf {
        AlignedBuf::default()
    }

    /// A buffer of `len_bytes` zero bytes.
    pub fn zeroed(len_bytes: usize) -> AlignedBuf {
        let mut buf = AlignedBuf::new();
        buf.extend_zeroed(len_bytes);
        buf
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        assert!(self.len <= self.blocks.len() * SECTOR_BYTES);
        // SAFETY: `blocks` is a contiguous allocation of plain bytes at least
        // `len` long (asserted above); `Block` has no padding or invariants.
        unsafe { std::slice::from_raw_parts(self.blocks.as_ptr().cast::<u8>(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        assert!(self.len <= self.blocks.len() * SECTOR_BYTES);
        // SAFETY: as in `as_slice`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.blocks.as_mut_ptr().cast::<u8>(), self.len) }
    }

    /// Appends `count` zero bytes and returns them for the caller to fill.
    pub fn extend_zeroed(&mut self, count: usize) -> &mut [u8] {
        let slice = self.extend_for_overwrite(count);
        slice.fill(0);
        slice
    }

    /// Appends `count` bytes of unspecified (but initialized) content, for a
    /// caller that overwrites all of them: a reused buffer skips the memset.
    pub fn extend_for_overwrite(&mut self, count: usize) -> &mut [u8] {
        let start = self.len;
        let end = start + count;
        let blocks = end.div_ceil(SECTOR_BYTES);
        if blocks > self.blocks.len() {
            self.blocks.resize(blocks, Block([0; SECTOR_BYTES]));
        }
        self.len = end;
        &mut self.as_mut_slice()[start..end]
    }

    /// Bytes this buffer can hold without growing.
    pub fn capacity(&self) -> usize {
        self.blocks.capacity() * SECTOR_BYTES
    }

    /// Pads with zeros to a whole number of sectors.
    pub fn pad_to_sector(&mut self) {
        let padded = self.len.div_ceil(SECTOR_BYTES) * SECTOR_BYTES;
        self.extend_zeroed(padded - self.len);
        assert_eq!(self.len % SECTOR_BYTES, 0);
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }
}

/// One write of a flush: whole sectors at a sector-aligned offset.
#[derive(Debug)]
pub struct Write {
    pub offset: u64,
    pub buf: AlignedBuf,
}

/// One group commit: stages of writes, each followed by a sync.
#[derive(Debug)]
pub struct FlushJob {
    pub ticket: u64,
    pub stages: Vec<Vec<Write>>,
}

impl FlushJob {
    /// Checks the alignment preconditions every disk relies on.
    pub fn assert_valid(&self, disk_bytes: u64) {
        for write in self.stages.iter().flatten() {
            assert_eq!(
                write.offset % SECTOR_BYTES as u64,
                0,
                "unaligned write offset"
            );
            assert_eq!(write.buf.len() % SECTOR_BYTES, 0, "unaligned write length");
            assert!(!write.buf.is_empty(), "empty write");
            assert!(
                write.offset + write.buf.len() as u64 <= disk_bytes,
                "write past the end"
            );
        }
    }

    pub fn bytes(&self) -> u64 {
        self.stages
            .iter()
            .flatten()
            .map(|w| w.buf.len() as u64)
            .sum()
    }
}

/// The storage under a ring log (see the module invariants).
pub trait Disk {
    /// The size of the disk in bytes.
    fn size_bytes(&self) -> u64;

    /// Reads `buf.len()` bytes at `offset` (both sector multiples).
    fn read(&self, offset: u64, buf: &mut AlignedBuf) -> Result<(), StorageError>;

    /// Writes `buf` at `offset` and makes it durable before returning
    /// (used for the superblock and the hard-state slots).
    fn write_durable(&mut self, offset: u64, buf: &AlignedBuf) -> Result<(), StorageError>;

    /// Submits a group commit. Returns at once for an asynchronous disk.
    fn submit(&mut self, job: FlushJob) -> Result<(), StorageError>;

    /// Waits until the job `ticket` (the oldest incomplete one) completes.
    fn wait(&mut self, ticket: u64) -> Result<(), StorageError>;

    /// The ticket of the oldest job that completed since the last call, if
    /// any, without blocking. A simulated disk completes jobs only in
    /// `wait` (the simulator decides when), so it returns `None`.
    fn try_complete(&mut self) -> Option<Result<u64, StorageError>>;

    /// Makes every write submitted so far durable (used after recovery).
    fn sync_all(&mut self) -> Result<(), StorageError>;

    /// A buffer of a completed job to reuse for staging, if the disk keeps
    /// them (saves the allocation, page faults and zeroing of large flushes).
    fn spare_buffer(&mut self) -> Option<AlignedBuf> {
        None
    }
}
