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
//! - [`demo`]: `bunker demo`, five real servers under a crash and the
//!   destruction of two, with every acknowledged command checked.
//! - [`check`]: the history checker of the fault-injection suite
//!   (linearizability against the accounts model, and invariants).
//! - [`faultnet`]: network faults for real processes (a private network
//!   namespace and iptables rules inside it).
//! - [`faultdisk`]: a small loop-mounted filesystem that tests fill up.
//! - [`nemesis`]: the randomized fault run against real servers
//!   (`bunker nemesis --seed S --seconds N`), checked epoch by epoch.
//! - [`accounts`]: the example application, built into the `bunker` executable.
//! - [`mapped`]: a test application that writes only through a shared mapping.
//! - [`wire`]: the versioned wire encoding of consensus messages.

pub mod accounts;
pub mod app;
pub mod blob;
pub mod check;
pub mod client;
pub mod delta;
pub mod demo;
pub mod faultdisk;
pub mod faultnet;
pub mod fuse;
pub mod mapped;
pub mod nemesis;
pub mod raft;
pub mod replica;
pub mod server;
pub mod sim;
pub mod transport;
pub mod wire;
