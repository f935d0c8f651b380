//! ringlog: Bunker's durable Raft log.
//!
//! What it does: defines the log's vocabulary ([`Entry`], [`LogId`],
//! [`HardState`]) and the [`LogStore`] interface through which the sans-IO
//! consensus core reads and submits writes to the log of one server.
//!
//! What it does not do: decide anything about consensus. The core decides
//! *what* to write; a `LogStore` only stores it and later reports, through the
//! driver, how far the log is durable.
//!
//! Invariants every implementation keeps:
//! - The log is a contiguous run of entries `(snapshot.index, last.index]`
//!   whose terms never decrease.
//! - `append`, `truncate_from`, `release_to` and `reset` are *submissions*:
//!   they change the in-memory view at once, and become durable in the order
//!   they were submitted. A crash keeps a prefix of the submitted operations
//!   (possibly cutting the last append short), never a later operation
//!   without an earlier one.
//! - `save_hard_state` is durable when it returns.
//!
//! The implementation: [`RingLog`] (module `ring`) keeps the log as a
//! journal of checksummed, hash-chained records in a ring of preallocated
//! segments, over any [`Disk`]: the simulated [`sim::SimDisk`] or the
//! production [`uring::UringDisk`] (O_DIRECT, io_uring, a dedicated I/O
//! thread). `format` is the on-disk format, `recovery` rebuilds the log after
//! a crash. docs/RINGLOG.md describes the format, recovery and the choices.

pub mod adaptive;
pub mod disk;
pub mod format;
mod recovery;
pub mod ring;
pub mod sim;
pub mod uring;

pub use disk::{AlignedBuf, Disk, FlushJob, Write};
pub use ring::{FlushTicket, Geometry, Options, RingLog, RingStats};

use bytes::Bytes;

/// A Raft term.
pub type Term = u64;
/// A log index. Index 0 is the empty log; the first entry has index 1.
pub type Index = u64;
/// A server's identity within a cluster (1-based in configurations).
pub type NodeId = u64;

/// The position of an entry: its index and the term it was created in.
/// By the Raft log matching property, a `LogId` names a whole log prefix.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogId {
    pub index: Index,
    pub term: Term,
}

impl LogId {
    pub const ZERO: LogId = LogId { index: 0, term: 0 };

    pub fn new(index: Index, term: Term) -> LogId {
        LogId { index, term }
    }
}

impl std::fmt::Display for LogId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@t{}", self.index, self.term)
    }
}

/// What an entry carries. The core gives meaning to `Noop` and `Config`;
/// `Command` payloads are opaque to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EntryKind {
    /// Appended by every new leader at the start of its term (the barrier).
    Noop = 1,
    /// A replicated command (for Bunker: a delta, a response and a session update).
    Command = 2,
    /// A cluster configuration (the voters), encoded by the core.
    Config = 3,
}

impl EntryKind {
    pub fn from_u8(value: u8) -> Option<EntryKind> {
        match value {
            1 => Some(EntryKind::Noop),
            2 => Some(EntryKind::Command),
            3 => Some(EntryKind::Config),
            _ => None,
        }
    }
}

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub index: Index,
    pub term: Term,
    pub kind: EntryKind,
    pub data: Bytes,
}

impl Entry {
    pub fn id(&self) -> LogId {
        LogId::new(self.index, self.term)
    }

    /// Bytes this entry occupies in batches and caches (payload plus a fixed
    /// overhead for the header), used for every byte limit on entries.
    pub fn size_bytes(&self) -> u64 {
        const ENTRY_OVERHEAD_BYTES: u64 = 32;
        self.data.len() as u64 + ENTRY_OVERHEAD_BYTES
    }
}

/// The state Raft must keep durable before it sends any message that depends
/// on it (Raft §5.1, Figure 2 "persistent state").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: Term,
    pub vote: Option<NodeId>,
}

/// Failures of the storage under a log. Always the storage's fault (or the
/// operator's: full disk, permissions), never a peer's.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "log corruption detected: {0}; this server must not serve or vote until it is repaired"
    )]
    Corrupt(String),
    #[error("entry {index} is not in the log (log holds {first}..={last})")]
    Unavailable {
        index: Index,
        first: Index,
        last: Index,
    },
    #[error("storage is full: {0}")]
    Full(String),
}

/// The log of one server, as the consensus core sees it.
///
/// Reads are synchronous and answered from memory or from disk. Writes are
/// submissions (see the crate invariants); the driver learns when they are
/// durable and tells the core with the log position that became durable.
pub trait LogStore {
    /// The position the log starts after: everything up to it is in the
    /// snapshot (or is the empty log, `LogId::ZERO`).
    fn snapshot_id(&self) -> LogId;

    /// The last entry's position, or `snapshot_id()` when the log is empty.
    fn last_id(&self) -> LogId;

    /// The term of the entry at `index`, for `index` in
    /// `[snapshot_id().index, last_id().index]`; `None` outside.
    fn term(&self, index: Index) -> Option<Term>;

    /// Entries `[lo, hi)`, at least one if `lo < hi` (even if it alone is
    /// larger than `max_bytes`), then as many as fit in `max_bytes`.
    fn entries(&self, lo: Index, hi: Index, max_bytes: u64) -> Result<Vec<Entry>, StorageError>;

    /// Submits entries that continue the log: the first has index
    /// `last_id().index + 1`.
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError>;

    /// Submits the removal of every entry at or after `index`
    /// (`snapshot_id().index < index <= last_id().index`).
    fn truncate_from(&mut self, index: Index) -> Result<(), StorageError>;

    /// Submits the release of every entry up to and including `index`, which
    /// the state machine holds durably. `index` must be in the log.
    fn release_to(&mut self, index: Index) -> Result<(), StorageError>;

    /// Submits the replacement of the whole log by an empty log that starts
    /// after `snapshot` (a snapshot was installed).
    fn reset(&mut self, snapshot: LogId) -> Result<(), StorageError>;

    /// Whether `append(entries)` would find room now (the ring is not too
    /// full and not too much is waiting for a flush). A full log is a
    /// transient condition the core answers with backpressure (a leader
    /// refuses the proposal, a follower does not acknowledge) instead of a
    /// fatal error; the room comes back as applied entries are released.
    fn has_room(&self, entries: &[Entry]) -> bool {
        let _ = entries;
        true
    }

    /// The bytes entries `[lo, hi)` take: at least their payloads (a store
    /// may count its records' headers and padding too), for `lo..hi`
    /// within the log. The default reads the entries; a store that knows
    /// its records' sizes answers without reading them.
    fn entry_bytes(&self, lo: Index, hi: Index) -> Result<u64, StorageError> {
        let entries = self.entries(lo, hi, u64::MAX)?;
        Ok(entries.iter().map(|e| e.data.len() as u64).sum())
    }

    /// How full the log's space is, in percent (0 for a log without a
    /// fixed capacity): the replica releases the prefix early when it rises.
    fn space_used_percent(&self) -> u8 {
        0
    }

    /// The durable term and vote.
    fn hard_state(&self) -> HardState;

    /// Makes `state` durable before returning.
    fn save_hard_state(&mut self, state: HardState) -> Result<(), StorageError>;
}
