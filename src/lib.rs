//! Bunker: passive replication of an opaque, non-deterministic,
//! file-backed application over a Raft log.
//!
//! - [`raft`]: the sans-IO consensus core.
//! - [`sim`]: the deterministic simulator that drives the real core through
//!   crashes, torn writes, partitions and selective packet loss.
//! - [`wire`]: the versioned wire encoding of consensus messages.

pub mod raft;
pub mod sim;
pub mod wire;
