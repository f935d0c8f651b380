//! Bunker: passive replication of an opaque, non-deterministic,
//! file-backed application over a Raft log.
//!
//! - [`raft`]: the sans-IO consensus core.
//! - [`delta`]: the delta engine: capture, apply, rollback and snapshot of
//!   the application's file tree.
//! - [`replica`]: the replication pipeline (speculative execution, output
//!   commit, rollback, sessions) joining the core, the log and the engine.
//! - [`sim`]: the deterministic simulator that drives the real core through
//!   crashes, torn writes, partitions and selective packet loss.
//! - [`server`]: `bunker serve`: the replica over real files, sockets and processes.
//! - [`wire`]: the versioned wire encoding of consensus messages.

pub mod check;
pub mod delta;
pub mod raft;
pub mod replica;
pub mod server;
pub mod sim;
pub mod wire;
