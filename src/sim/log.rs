//! A simulated Raft log with crash semantics, for the simulator.
//!
//! What it does: implements [`LogStore`] in memory as an operation journal.
//! Every submitted operation changes the in-memory view at once; a group
//! commit (`begin_sync` then `complete_sync`) makes the operations submitted
//! before it durable; a crash keeps the durable image plus a random prefix
//! of the operations not yet synced, and may cut the last surviving append
//! short (a torn write, which the real log's checksums would detect and
//! discard at entry granularity).
//!
//! What it does not do: model bytes on a disk. The ringlog crate's own
//! simulated disk does that for the real log format.
//!
//! Invariants: the durable image is always the result of applying a prefix
//! of the submitted operations to the previous durable image; the hard
//! state is durable on return from `save_hard_state`.

use rand::Rng;
use ringlog::{Entry, HardState, Index, LogId, LogStore, StorageError, Term};
use std::collections::VecDeque;

#[derive(Clone, Debug, Default)]
struct Image {
    snapshot: LogId,
    entries: VecDeque<Entry>,
}

impl Image {
    fn last_id(&self) -> LogId {
        self.entries.back().map(|e| e.id()).unwrap_or(self.snapshot)
    }

    fn term(&self, index: Index) -> Option<Term> {
        if index == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        if index < self.snapshot.index {
            return None;
        }
        self.entries
            .get((index - self.snapshot.index - 1) as usize)
            .map(|e| e.term)
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Append(entries) => {
                assert_eq!(
                    entries[0].index,
                    self.last_id().index + 1,
                    "append must continue the log"
                );
                self.entries.extend(entries.iter().cloned());
            }
            Op::Truncate(index) => {
                assert!(*index > self.snapshot.index);
                let keep = (index - self.snapshot.index - 1) as usize;
                self.entries.truncate(keep);
            }
            Op::Release(index) => {
                let term = self.term(*index).expect("release inside the log");
                let drop = (index - self.snapshot.index) as usize;
                self.entries.drain(..drop);
                self.snapshot = LogId::new(*index, term);
            }
            Op::Reset(snapshot) => {
                self.entries.clear();
                self.snapshot = *snapshot;
            }
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Append(Vec<Entry>),
    Truncate(Index),
    Release(Index),
    Reset(LogId),
}

/// The simulated log of one server.
#[derive(Debug, Default)]
pub struct SimLog {
    current: Image,
    durable: Image,
    pending: VecDeque<Op>,
    hard: HardState,
    /// Entries appended since the simulator last drained them (for the
    /// log-matching checker), with the term of the entry before each batch.
    appended: Vec<(Term, Vec<Entry>)>,
    /// When set, every write fails with a full-disk error.
    pub full: bool,
}

impl SimLog {
    pub fn new() -> SimLog {
        SimLog::default()
    }

    /// Operations submitted and not yet covered by a completed sync.
    pub fn pending_ops(&self) -> usize {
        self.pending.len()
    }

    /// Starts a group commit covering every operation submitted so far;
    /// returns how many it covers.
    pub fn begin_sync(&self) -> usize {
        self.pending.len()
    }

    /// Completes a group commit that covered `ops` operations and returns
    /// the position that is now durable.
    pub fn complete_sync(&mut self, ops: usize) -> LogId {
        assert!(ops <= self.pending.len());
        for op in self.pending.drain(..ops) {
            self.durable.apply(&op);
        }
        self.durable.last_id()
    }

    /// The log a server finds on its disk after a crash.
    pub fn crash(mut self, rng: &mut impl Rng) -> SimLog {
        let survive = rng.gen_range(0..=self.pending.len());
        let ops: Vec<Op> = self.pending.drain(..).take(survive).collect();
        let count = ops.len();
        for (i, op) in ops.into_iter().enumerate() {
            let torn = i + 1 == count && rng.gen_bool(0.5);
            match op {
                Op::Append(entries) if torn => {
                    let keep = rng.gen_range(0..entries.len());
                    if keep > 0 {
                        self.durable.apply(&Op::Append(entries[..keep].to_vec()));
                    }
                }
                op => self.durable.apply(&op),
            }
        }
        SimLog {
            current: self.durable.clone(),
            durable: self.durable,
            pending: VecDeque::new(),
            hard: self.hard,
            appended: Vec::new(),
            full: false,
        }
    }

    /// The log after a power loss that keeps nothing unsynced.
    pub fn crash_losing_unsynced(mut self) -> SimLog {
        self.pending.clear();
        SimLog {
            current: self.durable.clone(),
            durable: self.durable,
            pending: VecDeque::new(),
            hard: self.hard,
            appended: Vec::new(),
            full: false,
        }
    }

    /// Entries appended since the last call, each batch with the term of
    /// the entry that precedes it.
    pub fn drain_appended(&mut self) -> Vec<(Term, Vec<Entry>)> {
        std::mem::take(&mut self.appended)
    }

    fn submit(&mut self, op: Op) -> Result<(), StorageError> {
        if self.full {
            return Err(StorageError::Full("simulated full disk".into()));
        }
        self.current.apply(&op);
        self.pending.push_back(op);
        Ok(())
    }
}

impl LogStore for SimLog {
    fn snapshot_id(&self) -> LogId {
        self.current.snapshot
    }

    fn last_id(&self) -> LogId {
        self.current.last_id()
    }

    fn term(&self, index: Index) -> Option<Term> {
        self.current.term(index)
    }

    fn entries(&self, lo: Index, hi: Index, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        let first = self.current.snapshot.index + 1;
        let last = self.current.last_id().index;
        if lo < first || hi > last + 1 {
            return Err(StorageError::Unavailable {
                index: lo,
                first,
                last,
            });
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        for index in lo..hi {
            let entry = &self.current.entries[(index - first) as usize];
            bytes += entry.size_bytes();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(entry.clone());
        }
        Ok(out)
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let prev_term = self.current.last_id().term;
        self.submit(Op::Append(entries.to_vec()))?;
        self.appended.push((prev_term, entries.to_vec()));
        Ok(())
    }

    fn truncate_from(&mut self, index: Index) -> Result<(), StorageError> {
        self.submit(Op::Truncate(index))
    }

    fn release_to(&mut self, index: Index) -> Result<(), StorageError> {
        self.submit(Op::Release(index))
    }

    fn reset(&mut self, snapshot: LogId) -> Result<(), StorageError> {
        self.submit(Op::Reset(snapshot))
    }

    fn hard_state(&self) -> HardState {
        self.hard
    }

    fn save_hard_state(&mut self, state: HardState) -> Result<(), StorageError> {
        if self.full {
            return Err(StorageError::Full("simulated full disk".into()));
        }
        self.hard = state;
        Ok(())
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
            data: Bytes::from(vec![index as u8]),
        }
    }

    #[test]
    fn unsynced_operations_can_be_lost_and_synced_ones_never_are() {
        for seed in 0..200 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut log = SimLog::new();
            log.append(&[entry(1, 1), entry(2, 1)]).unwrap();
            let ops = log.begin_sync();
            log.append(&[entry(3, 1), entry(4, 1)]).unwrap();
            assert_eq!(log.complete_sync(ops), LogId::new(2, 1));
            log.truncate_from(4).unwrap();
            let after = log.crash(&mut rng);
            let last = after.last_id().index;
            assert!((2..=4).contains(&last), "seed {seed}: last {last}");
        }
    }
}
