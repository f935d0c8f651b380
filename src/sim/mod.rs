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
//! - `queue`: the event queue both simulators run on;
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
mod queue;
pub mod replica_run;
pub mod replicas;
pub mod run;
pub mod swarm;
pub mod trace;

pub use checker::{Checker, Violation};

/// Events a seed may take: a base plus a million per simulated second, a
/// hundred times and more what seeds take (4,000 to 6,000 per simulated
/// second). A seed past it is caught in a storm of events (a livelock at
/// one instant, a queue that only grows) and reports it as a violation
/// instead of running the machine out of memory.
pub const SEED_EVENTS_BASE: u64 = 5_000_000;
pub const SEED_EVENTS_PER_SIM_SECOND: u64 = 1_000_000;
/// Events scheduled and not yet run, at most (typical seeds hold a few
/// thousand).
pub const QUEUED_EVENTS_MAX: usize = 2_000_000;

/// Why a run must stop now, if its event counts are past the bounds above.
pub fn over_budget(events: u64, now_us: u64, queued: usize) -> Option<String> {
    let events_max = SEED_EVENTS_BASE + now_us / 1_000_000 * SEED_EVENTS_PER_SIM_SECOND;
    if events > events_max {
        return Some(format!(
            "runaway: {events} events by {now_us}us (bound {events_max}): a storm of events"
        ));
    }
    if queued > QUEUED_EVENTS_MAX {
        return Some(format!(
            "runaway: {queued} events queued at {now_us}us (bound {QUEUED_EVENTS_MAX})"
        ));
    }
    None
}
pub use cluster::{Sim, Stats, Status, Timing};
pub use nemesis::{FaultConfig, Nemesis};
pub use network::{Link, Network, Packet, PacketKind};
pub use replica_run::{run_replica_seed, ReplicaRunConfig, ReplicaRunReport};
pub use replicas::{ReplicaSim, Workload};
pub use run::{run_seed, RunConfig, RunReport};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_budget_stops_only_runaway_seeds() {
        // A typical seed: 50,000 events over 15 simulated seconds.
        assert_eq!(over_budget(50_000, 15_000_000, 3_000), None);
        // A storm at one instant, and a queue that only grows.
        assert!(over_budget(SEED_EVENTS_BASE + 1, 0, 10).is_some());
        assert!(over_budget(1_000, 1_000, QUEUED_EVENTS_MAX + 1).is_some());
        // Long runs get a budget in proportion to their simulated time.
        let hour_us = 3_600 * 1_000_000;
        assert_eq!(over_budget(20_000_000, hour_us, 3_000), None);
    }
}
