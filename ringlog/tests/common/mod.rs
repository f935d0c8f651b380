//! A simple model of the log's semantics, shared by the crash and property
//! tests: the in-memory view, the durable state, and the operations that
//! were submitted but not yet made durable (each tagged with the flush that
//! carries it, once one does).

#![allow(dead_code)]

use bytes::Bytes;
use ringlog::sim::SimDisk;
use ringlog::{Entry, EntryKind, Geometry, Index, LogId, LogStore, Options, RingLog, Term};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    pub snapshot: LogId,
    pub entries: Vec<Entry>,
}

impl State {
    pub fn empty() -> State {
        State {
            snapshot: LogId::ZERO,
            entries: Vec::new(),
        }
    }

    pub fn last_id(&self) -> LogId {
        self.entries.last().map(|e| e.id()).unwrap_or(self.snapshot)
    }

    pub fn term(&self, index: Index) -> Option<Term> {
        if index == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        if index < self.snapshot.index || index > self.last_id().index {
            return None;
        }
        Some(self.entries[(index - self.snapshot.index - 1) as usize].term)
    }

    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::Append(entries) => {
                assert_eq!(entries[0].index, self.last_id().index + 1);
                self.entries.extend(entries.iter().cloned());
            }
            Op::Truncate(index) => {
                self.entries
                    .truncate((index - self.snapshot.index - 1) as usize);
            }
            Op::Release(index) => {
                let term = self.term(*index).expect("in the log");
                self.entries.drain(..(index - self.snapshot.index) as usize);
                self.snapshot = LogId::new(*index, term);
            }
            Op::Reset(snapshot) => {
                self.entries.clear();
                self.snapshot = *snapshot;
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Append(Vec<Entry>),
    Truncate(Index),
    Release(Index),
    Reset(LogId),
}

/// The model: what the log must show now, and what it may show after a crash.
#[derive(Clone, Debug)]
pub struct Model {
    pub view: State,
    pub durable: State,
    /// Submitted, not durable; `Some(ticket)` once a flush carries it.
    pub pending: Vec<(Op, Option<u64>)>,
}

impl Model {
    pub fn new(state: State) -> Model {
        Model {
            view: state.clone(),
            durable: state,
            pending: Vec::new(),
        }
    }

    pub fn submit(&mut self, op: Op) {
        self.view.apply(&op);
        self.pending.push((op, None));
    }

    pub fn begin_flush(&mut self, ticket: u64) {
        for (_, t) in self.pending.iter_mut() {
            if t.is_none() {
                *t = Some(ticket);
            }
        }
    }

    pub fn complete_flush(&mut self, ticket: u64) {
        while let Some((op, Some(t))) = self.pending.first().cloned() {
            if t > ticket {
                break;
            }
            self.durable.apply(&op);
            self.pending.remove(0);
        }
    }

    /// Every state a crash may leave: the durable state plus a prefix of the
    /// operations handed to a flush, the last append maybe cut short.
    pub fn crash_states(&self) -> Vec<State> {
        let mut out = vec![self.durable.clone()];
        let mut state = self.durable.clone();
        for (op, ticket) in &self.pending {
            if ticket.is_none() {
                break;
            }
            if let Op::Append(entries) = op {
                for keep in 1..entries.len() {
                    let mut partial = state.clone();
                    partial.apply(&Op::Append(entries[..keep].to_vec()));
                    out.push(partial);
                }
            }
            state.apply(op);
            out.push(state.clone());
        }
        out
    }
}

/// Reads the whole state of a log through the `LogStore` interface.
pub fn read_state<L: LogStore>(log: &L) -> State {
    let snapshot = log.snapshot_id();
    let last = log.last_id().index;
    let mut entries = Vec::new();
    let mut next = snapshot.index + 1;
    while next <= last {
        let batch = log
            .entries(next, last + 1, 64 << 10)
            .expect("entries readable");
        assert!(!batch.is_empty());
        next += batch.len() as u64;
        entries.extend(batch);
    }
    State { snapshot, entries }
}

/// A deterministic payload for an entry.
pub fn entry(index: Index, term: Term, len: usize, salt: u64) -> Entry {
    let seed = index.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ term ^ salt.rotate_left(17);
    let data: Vec<u8> = (0..len)
        .map(|i| (seed.wrapping_add(i as u64 * 31) >> 3) as u8)
        .collect();
    Entry {
        index,
        term,
        kind: EntryKind::Command,
        data: Bytes::from(data),
    }
}

pub const SMALL: Geometry = Geometry {
    segment_bytes: 64 << 10,
    segment_count: 4,
};

pub fn small_options(cache_bytes_max: u64) -> Options {
    Options {
        cache_bytes_max,
        unflushed_bytes_max: 1 << 20,
        flushes_in_flight_max: 2,
    }
}

pub fn new_log(geometry: Geometry, options: Options) -> RingLog<SimDisk> {
    let disk = SimDisk::new(geometry.disk_bytes());
    RingLog::format(disk, geometry, 0x5eed, options).expect("format")
}
