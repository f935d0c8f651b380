//! A simulated disk: deterministic, in memory, with crash semantics.
//!
//! What it does: implements [`Disk`] over the medium (`durable`) and the
//! list of pending writes: a write joins the list at once (reads see it,
//! laid over the medium); completing a job (`wait`) moves that job's writes
//! to the medium, as a sync does. A crash keeps
//! the medium plus a prefix (in submission order) of the pending writes,
//! the last of which may be torn (only a prefix of its bytes, or of its
//! sectors, reaches the medium). Faults can be injected: a full disk (every
//! write fails with [`StorageError::Full`]) and bit flips on the medium.
//!
//! What it does not do: spawn threads, keep time, or reorder writes. The
//! simulator decides when a job completes by calling `RingLog::complete_flush`.
//!
//! Invariants: `durable` is the zeroed image plus every completed job and
//! durable write, in order; what a read sees is `durable` with every pending
//! write laid over it in submission order.

use crate::disk::{AlignedBuf, Disk, FlushJob};
use crate::format::SECTOR_BYTES;
use crate::StorageError;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, VecDeque};

#[derive(Clone, Debug)]
struct PendingWrite {
    ticket: u64,
    offset: u64,
    data: AlignedBuf,
}

/// Buffers kept for reuse by the ring log's staging (saves allocations).
const SPARE_BUFFERS_MAX: usize = 4;

/// The medium: sparse, one entry per sector ever written (absent sectors
/// read as zeros), so a large simulated disk costs only what is written.
#[derive(Clone, Debug, Default)]
struct Medium {
    size_bytes: u64,
    sectors: BTreeMap<u64, Box<[u8; SECTOR_BYTES]>>,
}

impl Medium {
    fn new(size_bytes: u64) -> Medium {
        Medium {
            size_bytes,
            sectors: BTreeMap::new(),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut at = 0;
        while at < data.len() {
            let position = offset + at as u64;
            let sector = position / SECTOR_BYTES as u64;
            let within = (position % SECTOR_BYTES as u64) as usize;
            let count = (SECTOR_BYTES - within).min(data.len() - at);
            let bytes = self
                .sectors
                .entry(sector)
                .or_insert_with(|| Box::new([0; SECTOR_BYTES]));
            bytes[within..within + count].copy_from_slice(&data[at..at + count]);
            at += count;
        }
    }

    fn read(&self, offset: u64, out: &mut [u8]) {
        let mut at = 0;
        while at < out.len() {
            let position = offset + at as u64;
            let sector = position / SECTOR_BYTES as u64;
            let within = (position % SECTOR_BYTES as u64) as usize;
            let count = (SECTOR_BYTES - within).min(out.len() - at);
            match self.sectors.get(&sector) {
                Some(bytes) => out[at..at + count].copy_from_slice(&bytes[within..within + count]),
                None => out[at..at + count].fill(0),
            }
            at += count;
        }
    }
}

/// How much of the pending writes a crash keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrashPlan {
    /// How many pending writes (a prefix, in submission order) reach the medium.
    pub keep_writes: usize,
    /// If set, the last kept write is torn: only this many of its leading
    /// bytes reach the medium.
    pub torn_bytes: Option<usize>,
}

/// Counters for tests and the simulator's statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimDiskStats {
    pub writes: u64,
    pub syncs: u64,
    pub bytes_written: u64,
    pub crashes: u64,
}

/// A simulated disk (see the module documentation).
#[derive(Clone, Debug)]
pub struct SimDisk {
    durable: Medium,
    pending: VecDeque<PendingWrite>,
    spare: Vec<AlignedBuf>,
    jobs: VecDeque<u64>,
    full: bool,
    stats: SimDiskStats,
}

impl SimDisk {
    /// A disk of `size_bytes` zero bytes (a whole number of sectors).
    pub fn new(size_bytes: u64) -> SimDisk {
        assert_eq!(size_bytes % SECTOR_BYTES as u64, 0);
        SimDisk {
            durable: Medium::new(size_bytes),
            pending: VecDeque::new(),
            spare: Vec::new(),
            jobs: VecDeque::new(),
            full: false,
            stats: SimDiskStats::default(),
        }
    }

    /// While set, every write fails as on a full disk.
    pub fn set_full(&mut self, full: bool) {
        self.full = full;
    }

    pub fn stats(&self) -> SimDiskStats {
        self.stats
    }

    /// `(offset, length)` of every write not yet covered by a completed sync,
    /// in submission order.
    pub fn pending_writes(&self) -> Vec<(u64, usize)> {
        self.pending
            .iter()
            .map(|w| (w.offset, w.data.len()))
            .collect()
    }

    /// Flips one bit on the medium.
    pub fn flip_bit(&mut self, offset: u64, bit: u8) {
        assert!(bit < 8);
        let mut byte = [0u8];
        self.durable.read(offset, &mut byte);
        byte[0] ^= 1 << bit;
        self.durable.write(offset, &byte);
    }

    /// A disk whose medium holds `image` (a whole number of sectors), for
    /// fuzzing and tests that craft disk contents.
    pub fn from_image(image: Vec<u8>) -> SimDisk {
        assert_eq!(image.len() % SECTOR_BYTES, 0);
        let mut durable = Medium::new(image.len() as u64);
        for (i, sector) in image.chunks(SECTOR_BYTES).enumerate() {
            if sector.iter().any(|&b| b != 0) {
                durable.write((i * SECTOR_BYTES) as u64, sector);
            }
        }
        SimDisk {
            durable,
            pending: VecDeque::new(),
            spare: Vec::new(),
            jobs: VecDeque::new(),
            full: false,
            stats: SimDiskStats::default(),
        }
    }

    /// The medium's bytes (pending writes are not on it).
    pub fn into_image(self) -> Vec<u8> {
        let mut image = vec![0; self.durable.size_bytes as usize];
        self.durable.read(0, &mut image);
        image
    }

    /// The bytes on the medium (for tests).
    pub fn durable_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        self.durable.read(offset, &mut out);
        out
    }

    /// A power loss or kill -9 with a random outcome drawn from `seed`: a
    /// random prefix of the pending writes survives, the last one maybe torn
    /// at a byte or at a sector boundary.
    pub fn crash(&mut self, seed: u64) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let keep_writes = rng.gen_range(0..=self.pending.len());
        let torn_bytes = if keep_writes > 0 && rng.gen_bool(0.5) {
            let len = self.pending[keep_writes - 1].data.len();
            Some(if rng.gen_bool(0.5) {
                rng.gen_range(0..len / SECTOR_BYTES) * SECTOR_BYTES
            } else {
                rng.gen_range(0..len)
            })
        } else {
            None
        };
        self.crash_with(CrashPlan {
            keep_writes,
            torn_bytes,
        });
    }

    /// A power loss that keeps nothing that was not synced.
    pub fn crash_losing_unsynced(&mut self) {
        self.crash_with(CrashPlan {
            keep_writes: 0,
            torn_bytes: None,
        });
    }

    /// A crash with a chosen outcome (for exhaustive crash tests).
    pub fn crash_with(&mut self, plan: CrashPlan) {
        assert!(plan.keep_writes <= self.pending.len());
        for (i, write) in self.pending.drain(..).take(plan.keep_writes).enumerate() {
            let mut len = write.data.len();
            if i + 1 == plan.keep_writes {
                if let Some(torn) = plan.torn_bytes {
                    assert!(torn < len, "a torn write keeps less than all of it");
                    len = torn;
                }
            }
            self.durable
                .write(write.offset, &write.data.as_slice()[..len]);
        }
        self.pending.clear();
        self.jobs.clear();
        self.stats.crashes += 1;
    }

    fn check_range(&self, offset: u64, len: usize) -> Result<(), StorageError> {
        let aligned =
            offset.is_multiple_of(SECTOR_BYTES as u64) && len.is_multiple_of(SECTOR_BYTES);
        assert!(aligned, "unaligned access at {offset} of {len} bytes");
        if offset + len as u64 > self.durable.size_bytes {
            return Err(StorageError::Io {
                path: "simulated disk".into(),
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "access at {offset}+{len} past the end {}",
                        self.durable.size_bytes
                    ),
                ),
            });
        }
        Ok(())
    }

    fn full_error(&self) -> StorageError {
        StorageError::Full("simulated disk is full (injected fault)".into())
    }

    fn make_durable(&mut self, up_to_ticket: Option<u64>) {
        while let Some(write) = self.pending.front() {
            if up_to_ticket.is_some_and(|t| write.ticket > t) {
                break;
            }
            let write = self.pending.pop_front().expect("front exists");
            self.durable.write(write.offset, write.data.as_slice());
            if self.spare.len() < SPARE_BUFFERS_MAX {
                self.spare.push(write.data);
            }
        }
        self.stats.syncs += 1;
    }
}

impl Disk for SimDisk {
    fn size_bytes(&self) -> u64 {
        self.durable.size_bytes
    }

    fn read(&self, offset: u64, buf: &mut AlignedBuf) -> Result<(), StorageError> {
        self.check_range(offset, buf.len())?;
        let (start, end) = (offset as usize, offset as usize + buf.len());
        let out = buf.as_mut_slice();
        self.durable.read(offset, out);
        // Pending writes, in order, over the medium.
        for write in &self.pending {
            let (w_start, w_end) = (
                write.offset as usize,
                write.offset as usize + write.data.len(),
            );
            let (lo, hi) = (start.max(w_start), end.min(w_end));
            if lo < hi {
                out[lo - start..hi - start]
                    .copy_from_slice(&write.data.as_slice()[lo - w_start..hi - w_start]);
            }
        }
        Ok(())
    }

    fn write_durable(&mut self, offset: u64, buf: &AlignedBuf) -> Result<(), StorageError> {
        self.check_range(offset, buf.len())?;
        if self.full {
            return Err(self.full_error());
        }
        self.durable.write(offset, buf.as_slice());
        self.stats.writes += 1;
        self.stats.syncs += 1;
        self.stats.bytes_written += buf.len() as u64;
        Ok(())
    }

    fn submit(&mut self, job: FlushJob) -> Result<(), StorageError> {
        job.assert_valid(self.size_bytes());
        assert!(
            self.jobs.back().is_none_or(|&t| t < job.ticket),
            "tickets increase"
        );
        if self.full {
            return Err(self.full_error());
        }
        for write in job.stages.into_iter().flatten() {
            self.check_range(write.offset, write.buf.len())?;
            self.stats.writes += 1;
            self.stats.bytes_written += write.buf.len() as u64;
            self.pending.push_back(PendingWrite {
                ticket: job.ticket,
                offset: write.offset,
                data: write.buf,
            });
        }
        self.jobs.push_back(job.ticket);
        Ok(())
    }

    fn wait(&mut self, ticket: u64) -> Result<(), StorageError> {
        assert_eq!(self.jobs.front(), Some(&ticket), "jobs complete in order");
        self.jobs.pop_front();
        self.make_durable(Some(ticket));
        Ok(())
    }

    fn try_complete(&mut self) -> Option<Result<u64, StorageError>> {
        None
    }

    fn sync_all(&mut self) -> Result<(), StorageError> {
        self.make_durable(None);
        Ok(())
    }

    fn spare_buffer(&mut self) -> Option<AlignedBuf> {
        self.spare.pop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::Write;

    fn job(ticket: u64, offset: u64, byte: u8) -> FlushJob {
        let mut buf = AlignedBuf::zeroed(2 * SECTOR_BYTES);
        buf.as_mut_slice().fill(byte);
        FlushJob {
            ticket,
            stages: vec![vec![Write { offset, buf }]],
        }
    }

    #[test]
    fn crash_keeps_completed_jobs_and_a_prefix_of_the_rest() {
        let mut disk = SimDisk::new(16 * SECTOR_BYTES as u64);
        disk.submit(job(1, 0, 1)).unwrap();
        disk.wait(1).unwrap();
        disk.submit(job(2, 8192, 2)).unwrap();
        disk.submit(job(3, 16384, 3)).unwrap();
        disk.crash_with(CrashPlan {
            keep_writes: 2,
            torn_bytes: Some(100),
        });
        assert!(disk.durable_bytes(0, 8192).iter().all(|&b| b == 1));
        assert!(disk.durable_bytes(8192, 8192).iter().all(|&b| b == 2));
        assert!(disk.durable_bytes(16384, 100).iter().all(|&b| b == 3));
        assert!(disk.durable_bytes(16484, 8092).iter().all(|&b| b == 0));
    }

    #[test]
    fn full_disk_rejects_writes() {
        let mut disk = SimDisk::new(4 * SECTOR_BYTES as u64);
        disk.set_full(true);
        assert!(matches!(
            disk.submit(job(1, 0, 1)),
            Err(StorageError::Full(_))
        ));
    }
}
