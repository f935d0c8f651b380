//! The simulator's log: the real ringlog over a simulated disk.
//!
//! What it does: wraps [`RingLog`] over [`SimDisk`] (the same record
//! format, group commit, truncation, release and recovery code the servers
//! run, over an in-memory disk that loses unsynced writes and tears the last
//! one at a crash), and records what was appended so the simulator's
//! log-matching checker can see it.
//!
//! What it does not do: choose when group commits start or complete (the
//! simulator does, with simulated latencies) or when servers crash.
//!
//! It also keeps, for the simulator's trace, the log operations other than
//! appends (truncations, releases, resets, hard-state writes), and can
//! panic on a chosen append, to show how a panic inside a server reads.
//!
//! Invariants: one group commit in flight at a time (the cluster starts the
//! next one only after the previous completed); the hard state is durable on
//! return from `save_hard_state` (the ring writes and syncs its slot).

use rand::Rng;
use ringlog::sim::SimDisk;
use ringlog::{
    Entry, FlushTicket, Geometry, HardState, Index, LogId, LogStore, Options, RingLog,
    StorageError, Term,
};

/// Each simulated server's ring: 16 segments of 256 KiB.
pub const SIM_GEOMETRY: Geometry = Geometry {
    segment_bytes: 256 << 10,
    segment_count: 16,
};

fn options() -> Options {
    Options {
        cache_bytes_max: 1 << 20,
        unflushed_bytes_max: 2 << 20,
        flushes_in_flight_max: 1,
    }
}

/// A log operation other than an append, for the simulator's trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogOp {
    TruncateFrom(Index),
    ReleaseTo(Index),
    Reset(LogId),
    HardState(Term, Option<ringlog::NodeId>),
}

/// The simulated log of one server.
pub struct SimLog {
    ring: RingLog<SimDisk>,
    /// Entries appended since the simulator last drained them (for the
    /// log-matching checker), each batch with the term of the entry before it.
    appended: Vec<(Term, Vec<Entry>)>,
    /// Other operations since the simulator last drained them.
    ops: Vec<LogOp>,
    /// Test only: panic when an append reaches this index.
    panic_at: Option<Index>,
}

impl SimLog {
    /// A freshly formatted log on an empty simulated disk.
    pub fn new(seed: u64) -> SimLog {
        SimLog::with_geometry(seed, SIM_GEOMETRY)
    }

    /// A freshly formatted log of the given geometry (swarm testing draws
    /// small ones, so that logs fill and compaction and snapshots happen).
    pub fn with_geometry(seed: u64, geometry: Geometry) -> SimLog {
        let disk = SimDisk::new(geometry.disk_bytes());
        let ring = RingLog::format(disk, geometry, seed, options())
            .expect("formatting an empty simulated disk succeeds");
        SimLog {
            ring,
            appended: Vec::new(),
            ops: Vec::new(),
            panic_at: None,
        }
    }

    /// Test only: the append that reaches `index` panics (a bug planted in
    /// a server, to show what its trace looks like).
    pub fn inject_panic_at(&mut self, index: Option<Index>) {
        self.panic_at = index;
    }

    /// Operations other than appends since the last call.
    pub fn drain_ops(&mut self) -> Vec<LogOp> {
        std::mem::take(&mut self.ops)
    }

    /// Whether anything was submitted and not yet handed to a group commit.
    pub fn pending_ops(&self) -> usize {
        usize::from(self.ring.has_unflushed())
    }

    /// Starts a group commit of everything submitted so far: the writes
    /// reach the simulated disk, not yet synced.
    pub fn begin_sync(&mut self) -> Result<Option<FlushTicket>, StorageError> {
        self.ring.begin_flush()
    }

    /// Completes a group commit: returns the position now durable.
    pub fn complete_sync(&mut self, ticket: FlushTicket) -> Result<LogId, StorageError> {
        self.ring.complete_flush(ticket)
    }

    /// The log a server finds on its disk after a crash: unsynced writes
    /// lost (a random in-order subset kept, the last one maybe torn), then
    /// the real recovery scan.
    pub fn crash(self, rng: &mut impl Rng) -> Result<SimLog, StorageError> {
        let panic_at = self.panic_at;
        let mut disk = self.ring.into_disk();
        disk.crash(rng.gen());
        SimLog::reopen(disk, panic_at)
    }

    /// The log after a power loss that keeps nothing unsynced.
    pub fn crash_losing_unsynced(self) -> Result<SimLog, StorageError> {
        let panic_at = self.panic_at;
        let mut disk = self.ring.into_disk();
        disk.crash_losing_unsynced();
        SimLog::reopen(disk, panic_at)
    }

    fn reopen(disk: SimDisk, panic_at: Option<Index>) -> Result<SimLog, StorageError> {
        Ok(SimLog {
            ring: RingLog::open(disk, options())?,
            appended: Vec::new(),
            ops: Vec::new(),
            panic_at,
        })
    }

    /// Makes every later write fail as on a full disk (or not).
    pub fn set_full(&mut self, full: bool) {
        self.ring.disk_mut().set_full(full);
    }

    /// Entries appended since the last call, each batch with the term of
    /// the entry that precedes it.
    pub fn drain_appended(&mut self) -> Vec<(Term, Vec<Entry>)> {
        std::mem::take(&mut self.appended)
    }
}

impl LogStore for SimLog {
    fn snapshot_id(&self) -> LogId {
        self.ring.snapshot_id()
    }

    fn last_id(&self) -> LogId {
        self.ring.last_id()
    }

    fn term(&self, index: Index) -> Option<Term> {
        self.ring.term(index)
    }

    fn entries(&self, lo: Index, hi: Index, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        self.ring.entries(lo, hi, max_bytes)
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let prev_term = self.ring.last_id().term;
        if let (Some(at), Some(last)) = (self.panic_at, entries.last()) {
            assert!(
                last.index < at,
                "injected panic: an append reached entry {at}"
            );
        }
        self.ring.append(entries)?;
        self.appended.push((prev_term, entries.to_vec()));
        Ok(())
    }

    fn truncate_from(&mut self, index: Index) -> Result<(), StorageError> {
        self.ops.push(LogOp::TruncateFrom(index));
        self.ring.truncate_from(index)
    }

    fn release_to(&mut self, index: Index) -> Result<(), StorageError> {
        self.ops.push(LogOp::ReleaseTo(index));
        self.ring.release_to(index)
    }

    fn reset(&mut self, snapshot: LogId) -> Result<(), StorageError> {
        self.ops.push(LogOp::Reset(snapshot));
        self.ring.reset(snapshot)
    }

    fn has_room(&self, entries: &[Entry]) -> bool {
        self.ring.has_room(entries)
    }

    fn space_used_percent(&self) -> u8 {
        self.ring.space_used_percent()
    }

    fn entry_bytes(&self, lo: Index, hi: Index) -> Result<u64, StorageError> {
        self.ring.entry_bytes(lo, hi)
    }

    fn hard_state(&self) -> HardState {
        self.ring.hard_state()
    }

    fn save_hard_state(&mut self, state: HardState) -> Result<(), StorageError> {
        self.ops.push(LogOp::HardState(state.term, state.vote));
        self.ring.save_hard_state(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rand::SeedableRng;

    fn entry(index: Index, term: Term) -> Entry {
        Entry {
            index,
            term,
            kind: ringlog::EntryKind::Command,
            data: Bytes::from(vec![index as u8; 100]),
        }
    }

    #[test]
    fn synced_entries_survive_every_crash_and_unsynced_ones_may_not() {
        for seed in 0..100 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut log = SimLog::new(seed);
            let hard = HardState {
                term: 1,
                vote: None,
            };
            log.save_hard_state(hard).unwrap();
            log.append(&[entry(1, 1), entry(2, 1)]).unwrap();
            let ticket = log.begin_sync().unwrap().unwrap();
            log.append(&[entry(3, 1), entry(4, 1)]).unwrap();
            assert_eq!(log.complete_sync(ticket).unwrap(), LogId::new(2, 1));
            let after = log.crash(&mut rng).unwrap();
            let last = after.last_id().index;
            assert!((2..=4).contains(&last), "seed {seed}: last {last}");
        }
    }
}
