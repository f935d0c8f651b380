//! A bounded run of the randomized simulator, as part of the test suite:
//! every seed goes through the safety, liveness and convergence phases with
//! every checker on. `BUNKER_SIM_SEEDS` sets how many seeds (default: 2000
//! with optimizations, 200 without); `bunker-sim` runs longer ranges.
//!
//! The fixed set: consensus seeds 0..2000 with swarm testing (each seed
//! draws its configuration and fault mix, as it did before swarm testing
//! covered the fault mix too), replica seeds 0..40 with the fixed
//! configuration plus 0..20 with swarm testing, the regression seeds, and
//! the properties of the trace (a seed runs the same with and without it,
//! a panic in a server is reported with its time, server, backtrace and
//! last events).

use bunker::sim::{run_seed, RunConfig};

fn seed_count() -> u64 {
    let default = if cfg!(debug_assertions) { 200 } else { 2000 };
    std::env::var("BUNKER_SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn randomized_seeds_pass_every_checker() {
    let seeds = seed_count();
    let cfg = RunConfig::default();
    let jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as u64;
    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..jobs)
            .map(|job| {
                let cfg = &cfg;
                scope.spawn(move || {
                    let mut failures = Vec::new();
                    let mut seed = job;
                    while seed < seeds {
                        let report = run_seed(seed, cfg);
                        if let Some(v) = report.violations.first() {
                            failures.push(format!(
                                "seed {seed}: {v} | replay: cargo run --release --bin bunker-sim -- --seeds {seed} --swarm --trace"
                            ));
                        }
                        seed += jobs;
                    }
                    failures
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("worker"))
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Consensus seeds with swarm testing that once failed. 535725260: a
/// leader proposed entries just before its CheckQuorum period ended and
/// counted a follower that held its whole log as not keeping up (it owed
/// the entries still in flight), stepped down, and two leaders took turns
/// until the liveness bound; a follower now owes only what the log held
/// when the period began (the engine test
/// `check_quorum_does_not_count_entries_proposed_during_the_period`).
/// 475334837: the only server with an up-to-date log ran a slow clock,
/// and every vote request of a candidate that could not win (it reached
/// only two voters) reset that server's election timer, so it never
/// campaigned; a refused vote no longer resets the timer
/// (`a_denied_vote_does_not_reset_the_election_timer`).
#[test]
fn consensus_regression_seeds() {
    let cfg = RunConfig::default();
    const SEEDS: &[u64] = &[535_725_260, 475_334_837];
    for &seed in SEEDS {
        let report = run_seed(seed, &cfg);
        assert!(
            report.violations.is_empty(),
            "seed {seed}: {:?} | replay: cargo run --release --bin bunker-sim -- --seeds {seed} --swarm --trace",
            report.violations.first().map(|v| &v.what)
        );
    }
}

/// One seed reproduces a whole run: the same seed twice gives the same
/// events, elections, acknowledgements and violations.
#[test]
fn a_seed_replays_exactly() {
    let cfg = RunConfig::default();
    for seed in [3, 77, 1234] {
        let a = run_seed(seed, &cfg);
        let b = run_seed(seed, &cfg);
        assert_eq!(a.stats.events, b.stats.events, "seed {seed}");
        assert_eq!(a.stats.elections, b.stats.elections, "seed {seed}");
        assert_eq!(a.stats.acked, b.stats.acked, "seed {seed}");
        assert_eq!(a.stats.crashes, b.stats.crashes, "seed {seed}");
        assert_eq!(a.recovery_us, b.recovery_us, "seed {seed}");
        assert_eq!(a.sim_us, b.sim_us, "seed {seed}");
        assert_eq!(a.violations, b.violations, "seed {seed}");
        assert!(a.stats.events > 10_000, "seed {seed} ran for real");
    }
}

/// The replica simulator (whole servers, the ledger, retrying clients and
/// the history checker) over a bounded number of seeds:
/// `BUNKER_REPLICA_SEEDS` (default 40 with optimizations, 4 without).
#[test]
fn replica_seeds_pass_every_checker() {
    use bunker::sim::{run_replica_seed, ReplicaRunConfig};
    let default = if cfg!(debug_assertions) { 4 } else { 40 };
    let seeds: u64 = std::env::var("BUNKER_REPLICA_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    let cfg = ReplicaRunConfig {
        safety_us: 3_000_000,
        ..ReplicaRunConfig::default()
    };
    let jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as u64;
    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..jobs)
            .map(|job| {
                let cfg = &cfg;
                scope.spawn(move || {
                    let mut failures = Vec::new();
                    let mut seed = job;
                    while seed < seeds {
                        let report = run_replica_seed(seed, cfg);
                        if let Some(v) = report.violations.first() {
                            failures.push(format!(
                                "seed {seed}: {v} | replay: cargo run --release --bin bunker-sim -- --layer replica --ticks 300 --seeds {seed} --no-swarm --trace"
                            ));
                        }
                        seed += jobs;
                    }
                    failures
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("worker"))
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Replica seeds that once failed, kept as regressions. 2065 (I1: a retry
/// whose session had expired ran a second time) led to sessions opened by
/// the cluster and `SessionExpired`; the clients' session handling changed
/// how the seed unfolds, so `tests/replica_scenarios.rs` scripts the exact
/// case as well. 939 and 1956: a simulated client took the `AppFailed`
/// answer to an attempt it had already given up on, while its retry
/// committed the command; clients now take only the answer to their
/// latest attempt (as the client library does), and the checker still
/// holds the earlier answers to I1. 9707076: a follower whose log syncs
/// lagged behind the commit index it had heard installed a snapshot at an
/// index between the two, applied on to the commit index and released its
/// log past what the core had reported committed (a panic in
/// `Raft::compact`); the engine test
/// `a_snapshot_between_the_reported_commit_and_the_commit_moves_the_report`
/// scripts the same state.
#[test]
fn replica_regression_seeds() {
    use bunker::sim::{run_replica_seed, ReplicaRunConfig};
    let cfg = ReplicaRunConfig {
        safety_us: 3_000_000,
        ..ReplicaRunConfig::default()
    };
    const SEEDS: &[u64] = &[939, 1956, 2065, 9707076];
    for &seed in SEEDS {
        let report = run_replica_seed(seed, &cfg);
        assert!(
            report.violations.is_empty(),
            "seed {seed}: {:?} | replay: cargo run --release --bin bunker-sim -- --layer replica --ticks 300 --seeds {seed} --no-swarm --trace",
            report.violations.first().map(|v| &v.what)
        );
    }
}

/// Replica seeds with swarm testing: each draws its log size, compaction,
/// batch and part sizes, pipeline limits, workload and fault mix.
/// `BUNKER_REPLICA_SWARM_SEEDS` (default 20 with optimizations, 2 without),
/// and swarm seed 700067 as a regression: a barrier's apply moved the
/// engine's state index without a durable write, the log was released up
/// to it, and the server could not restart after a crash (the log is now
/// released only up to a checkpoint, which is durable). 876162001: twelve
/// large entries proposed while no majority answered filled every
/// follower's small ring, and none could take the barrier that would
/// commit them (the leader now bounds its uncommitted bytes). 876162315:
/// the two up-to-date servers restarted after a power failure and were
/// still replaying their logs, the third live one needed a snapshot, and
/// a recovering server refused to send one, so nothing could commit (a
/// recovering state is now sent with its replay bound). 808903010 (on the
/// build before the election-timer fix): a server paused since a client's
/// previous session answered that session's sequence 10, attempt 1, and
/// the simulated client, at sequence 10 attempt 1 of a new session, took
/// it (an I1 report against a correct cluster); clients now match the
/// session too. 360356974: two followers restarted after a power failure
/// with rings full of committed entries above their checkpoint, and had
/// nothing to apply until their logs took more entries: nothing released
/// their logs (the release looked only at the ring's fill percentage,
/// and ran only after applies and checkpoints). A refused append now
/// makes the release urgent, the release runs every tick, and a server
/// still replaying its log may checkpoint (with its replay bound).
/// 602550638: a leader whose apply lagged its commit sent a follower
/// already past it a snapshot; the follower refused it as not ahead and
/// asked for it again from the start, for ever (the transfer now ends).
/// 152121006 and 602545260: a large command's delta, split into parts of
/// 16 KiB, nearly filled 6 x 64 KiB rings (no part leaves a log before the
/// last one applies); after two servers were destroyed, the only server
/// that could win had no room for its barrier (a proposal larger than the
/// uncommitted bound is now refused). 404534515: a server still replaying
/// its log after a crash had checkpointed past the snapshot that a leader
/// whose apply lagged sent it, and installing it panicked ("checkpoints
/// only move forward"; a snapshot behind the checkpoint is now refused).
/// 404526511: a leader kept its office with a follower whose snapshot
/// chunks were all lost while its heartbeat responses got through, and
/// its lease kept the three connected servers from electing a leader (a
/// transfer counts for CheckQuorum only while it moves).
#[test]
fn replica_swarm_seeds_pass_every_checker() {
    use bunker::sim::{run_replica_seed, ReplicaRunConfig};
    let default = if cfg!(debug_assertions) { 2 } else { 20 };
    let seeds: u64 = std::env::var("BUNKER_REPLICA_SWARM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    let cfg = ReplicaRunConfig {
        safety_us: 3_000_000,
        swarm: true,
        ..ReplicaRunConfig::default()
    };
    let failures: Vec<String> = (0..seeds)
        .chain([
            700_067,
            876_162_001,
            876_162_315,
            808_903_010,
            360_356_974,
            602_550_638,
            152_121_006,
            602_545_260,
            404_534_515,
            404_526_511,
        ])
        .filter_map(|seed| {
            let report = run_replica_seed(seed, &cfg);
            report.violations.first().map(|v| {
                format!(
                    "seed {seed}: {v} ({}) | replay: cargo run --release --bin bunker-sim -- --layer replica --ticks 300 --seeds {seed} --swarm --trace",
                    report.config
                )
            })
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Tracing records on the side: the same seed runs the same events with
/// the trace on and off, in both simulators.
#[test]
fn a_seed_runs_the_same_with_and_without_the_trace() {
    use bunker::sim::{run_replica_seed, ReplicaRunConfig};
    for seed in [5, 4242] {
        let off = RunConfig::default();
        let on = RunConfig {
            trace: true,
            ..RunConfig::default()
        };
        let (a, b) = (run_seed(seed, &off), run_seed(seed, &on));
        assert_eq!(a.stats.events, b.stats.events, "seed {seed}");
        assert_eq!(a.stats.acked, b.stats.acked, "seed {seed}");
        assert_eq!(a.sim_us, b.sim_us, "seed {seed}");
        assert_eq!(a.violations, b.violations, "seed {seed}");
        assert!(a.trace.is_empty());
        assert!(b.trace.iter().any(|l| l.contains(" recv ")), "seed {seed}");
        for swarm in [false, true] {
            let off = ReplicaRunConfig {
                safety_us: 1_000_000,
                swarm,
                ..ReplicaRunConfig::default()
            };
            let on = ReplicaRunConfig {
                trace: true,
                ..off.clone()
            };
            let (a, b) = (run_replica_seed(seed, &off), run_replica_seed(seed, &on));
            assert_eq!(a.stats.events, b.stats.events, "seed {seed}");
            assert_eq!(a.stats.writes_acked, b.stats.writes_acked, "seed {seed}");
            assert_eq!(a.sim_us, b.sim_us, "seed {seed}");
            assert_eq!(a.violations, b.violations, "seed {seed}");
            assert_eq!(a.config, b.config, "seed {seed}");
        }
    }
}

/// A panic inside a server (here planted in its log, below the consensus
/// core) is a violation at the simulated time and on the server where it
/// happened; the trace shows the events before it and the backtrace.
#[test]
fn a_panic_in_a_server_explains_itself() {
    use bunker::sim::{run_replica_seed, ReplicaRunConfig};
    let cfg = RunConfig {
        trace: true,
        trace_events: 50,
        inject_panic: Some((3, 200)),
        ..RunConfig::default()
    };
    let report = run_seed(7, &cfg);
    let v = &report.violations[0];
    assert!(v.what.contains("injected panic"), "{v}");
    assert_eq!(v.server, Some(3), "{v}");
    assert!(v.at_us > 0, "{v}");
    let panic = report.panic.as_ref().expect("a panic report");
    assert!(panic.backtrace.contains("Raft"), "{}", panic.backtrace);
    let text = report.trace.join("\n");
    assert!(text.contains("last 50 events"), "{text}");
    assert!(text.contains("backtrace"), "{text}");
    let cfg = ReplicaRunConfig {
        safety_us: 1_000_000,
        trace: true,
        inject_panic: Some((2, 100)),
        ..ReplicaRunConfig::default()
    };
    let report = run_replica_seed(7, &cfg);
    let v = &report.violations[0];
    assert!(
        v.what.contains("injected panic") && v.server == Some(2),
        "{v}"
    );
    let panic = report.panic.as_ref().expect("a panic report");
    assert!(panic.backtrace.contains("Replica"), "{}", panic.backtrace);
}
