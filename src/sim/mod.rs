//! The deterministic cluster simulator.
//!
//! What it does: runs five (or any small number of) servers built from the
//! real consensus core over simulated logs, a simulated network and
//! simulated clocks, all driven by one seeded event queue, so that one seed
//! reproduces a whole run. It injects the faults of the fault model
//! (docs/REQUIREMENTS.md; `nemesis`),
//! checks the Raft safety properties after every event (`checker`), and
//! runs each seed through a safety phase, a liveness phase and a
//! convergence phase (`run`). Scenario tests script faults by hand through
//! the same `Sim` API.
//!
//! What it does not do: touch real time, files, sockets or threads. The
//! only source of randomness is the run's seed.
//!
//! Modules:
//! - `cluster`: the event loop, servers, clients and fault primitives;
//! - `network`: per-direction links with loss, duplication, delay, blocking
//!   and message-type-selective loss;
//! - `log`: a log with crash semantics (unsynced writes lost or torn);
//! - `app`: the state machine (a running hash of applied entries);
//! - `checker`: one checker per invariant;
//! - `nemesis`: random faults;
//! - `run`: the phases of one seed.
//! - `replicas`, `replica_run`: the same for whole replicas (consensus,
//!   ringlog, delta engine, pipeline) running the simulated `ledger`
//!   application, with clients that retry; `history` checks what the
//!   clients saw (invariants I1 to I5, docs/REQUIREMENTS.md);
//! - `trace`: the flight recorder both simulators write to (the last
//!   events of every layer, frozen at the first violation) and the capture
//!   of panics (message, location, backtrace) with the run's state intact;
//! - `swarm`: each seed's own configuration and fault mix, drawn from the
//!   seed (swarm testing).

pub mod app;
pub mod checker;
pub mod cluster;
pub mod history;
pub mod ledger;
pub mod log;
pub mod nemesis;
pub mod network;
pub mod replica_run;
pub mod replicas;
pub mod run;
pub mod swarm;
pub mod trace;

pub use checker::{Checker, Violation};
pub use cluster::{Sim, Stats, Status, Timing};
pub use nemesis::{FaultConfig, Nemesis};
pub use network::{Link, Network, Packet, PacketKind};
pub use replica_run::{run_replica_seed, ReplicaRunConfig, ReplicaRunReport};
pub use replicas::{ReplicaSim, Workload};
pub use run::{run_seed, RunConfig, RunReport};
