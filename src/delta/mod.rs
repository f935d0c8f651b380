//! The delta engine: turns "a command ran in the application's
//! directory" into an idempotent, checksummed, verifiable delta; applies it
//! crash-safely on every server; rolls a leader's working copy back; streams
//! consistent snapshots. docs/DELTA.md is the design document.
//!
//! What it does not do: consensus, networking, or running the application.
//! The replication pipeline calls it (see [`Engine`] for the call order).
//!
//! Module map:
//! - [`tree`]: the file-tree interface; [`RealTree`] (real files, memmap2,
//!   inotify, fsync thread) and [`MemTree`] (in-memory, seeded crash
//!   semantics, for the simulator) implement it.
//! - [`index`]: per-page xxh3 hashes and the incremental state hash.
//! - [`format`]: the versioned, checksummed wire format of delta parts.
//! - [`meta`]: the durable applied-index record.
//! - [`engine`]: capture, apply, rollback, restart.
//! - [`snapshot`]: fuzzy copy + replay, chunked, resumable, atomic install.

pub mod checkpoint;
pub mod engine;
pub mod format;
pub mod index;
pub mod mem;
pub mod meta;
pub mod real;
pub mod snapshot;
pub mod tree;
pub mod writers;

pub use engine::{
    Applied, CaptureStats, Captured, Engine, EngineConfig, EngineError, Mode, OpenReport,
    RollbackStats, Status, LIVE_DIR,
};
pub use index::{StateHash, PAGE_BYTES};
pub use mem::MemTree;
pub use real::RealTree;
pub use snapshot::{InstallProgress, SnapshotInstall, SnapshotSource};
pub use tree::{Changes, FileTree, Kind, Meta, TreeError};
