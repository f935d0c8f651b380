//! Named scenarios for the replication pipeline (the fault model of
//! docs/REQUIREMENTS.md),
//! scripted against whole simulated servers running the ledger. Each runs
//! every checker: consensus safety after every event, identical committed
//! trees and the client history (I1 to I5) at the end. The `*_is_caught`
//! variants switch on a deliberate bug and show that the same scenario then
//! fails.

use bunker::raft::{Mutation, Options};
use bunker::replica::ReplicaMutation;
use bunker::sim::history::Outcome;
use bunker::sim::ledger::LedgerCommand;
use bunker::sim::{ReplicaSim, Status, Timing, Workload};
use ringlog::{LogStore, NodeId};

const MS: u64 = 1_000;
const SECOND: u64 = 1_000_000;

fn sim(seed: u64, mutation: ReplicaMutation) -> ReplicaSim {
    let workload = Workload {
        app_crash: 0.0,
        large: 0.0,
        mutation,
        ..Workload::default()
    };
    ReplicaSim::new(seed, 5, Options::default(), Timing::default(), workload)
}

fn others(sim: &ReplicaSim, id: NodeId) -> Vec<NodeId> {
    sim.ids().into_iter().filter(|&n| n != id).collect()
}

fn deposit(account: u64, amount: u64) -> LedgerCommand {
    LedgerCommand::Deposit { account, amount }
}

fn ok(outcome: &Option<Outcome>) -> bool {
    matches!(outcome, Some(Outcome::Ok { .. }))
}

/// Opens every client's session, then funds every account so transfers
/// can succeed.
fn fund(sim: &mut ReplicaSim, leader: NodeId) {
    assert!(sim.open_sessions(leader, SECOND), "sessions open");
    for account in 0..6 {
        let op = sim.submit(0, deposit(account, 500), leader);
        assert!(ok(&sim.wait_op(op, SECOND)), "funding account {account}");
    }
}

fn new_ready_leader(sim: &mut ReplicaSim, old: NodeId, bound_us: u64) -> NodeId {
    let deadline = sim.now_us + bound_us;
    let mut found = None;
    sim.run_until(deadline, |s| {
        found = s.ids().into_iter().find(|&n| {
            n != old
                && s.status(n) == Status::Up
                && s.replica(n).is_some_and(|r| r.is_ready_leader())
        });
        found.is_some()
    });
    found.expect("a new leader")
}

// ----- a deposed leader with a full pipeline -------------------------------

fn deposed_leader_with_full_pipeline(mutation: ReplicaMutation) -> (Vec<String>, usize) {
    let mut sim = sim(11, mutation);
    let old = sim.wait_for_ready_leader(2 * SECOND).expect("leader");
    fund(&mut sim, old);
    sim.isolate(old);
    let ops: Vec<usize> = (0..6)
        .map(|i| sim.submit(i, deposit(i as u64, 10), old))
        .collect();
    sim.run_for(50 * MS);
    let answered_by_old = ops
        .iter()
        .filter(|&&op| ok(&sim.history.operations[op].outcome))
        .count();
    let new = new_ready_leader(&mut sim, old, 3 * SECOND);
    for (i, &op) in ops.iter().enumerate() {
        if sim.history.operations[op].outcome.is_none() {
            sim.resend(i, new);
        }
    }
    for &op in &ops {
        sim.wait_op(op, SECOND);
    }
    (sim.converge_and_check(5 * SECOND), answered_by_old)
}

#[test]
fn deposed_leader_with_a_full_pipeline_answers_nothing_and_rolls_back() {
    let (violations, answered_by_old) = deposed_leader_with_full_pipeline(ReplicaMutation::None);
    assert_eq!(
        answered_by_old, 0,
        "a cut-off leader commits nothing, so answers nothing"
    );
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn releasing_responses_before_commit_is_caught() {
    let (violations, answered_by_old) =
        deposed_leader_with_full_pipeline(ReplicaMutation::ReleaseBeforeCommit);
    assert!(answered_by_old > 0);
    assert!(
        violations.iter().any(|v| v.starts_with("I1")),
        "{violations:#?}"
    );
}

// ----- two servers destroyed right after a response ------------------------

#[test]
fn two_servers_destroyed_at_once_right_after_a_response() {
    for seed in 0..8 {
        let mut sim = sim(100 + seed, ReplicaMutation::None);
        let leader = sim.wait_for_ready_leader(2 * SECOND).expect("leader");
        fund(&mut sim, leader);
        let op = sim.submit(1, deposit(3, 77), leader);
        assert!(ok(&sim.wait_op(op, SECOND)));
        // The leader and one follower vanish the instant the client heard.
        let follower = others(&sim, leader)[seed as usize % 4];
        sim.destroy(leader);
        sim.destroy(follower);
        let violations = sim.converge_and_check(5 * SECOND);
        assert!(violations.is_empty(), "seed {seed}: {violations:#?}");
    }
}

// ----- a retry after its session expired -----------------------------------

/// A client's command commits and is answered, the answer is lost, and
/// the client is then silent while enough new sessions open that the
/// leader expires its session (the table is bounded). Its retry must be
/// refused (`SessionExpired`), not run a second time (I4). Replica
/// seed 2065 found the double run: the table had forgotten the client,
/// so the retry looked like a new command.
fn retry_after_expiry(mutation: ReplicaMutation) -> (Vec<String>, bool) {
    let mut sim = sim(31, mutation);
    let leader = sim.wait_for_ready_leader(2 * SECOND).expect("leader");
    fund(&mut sim, leader);
    let op = sim.submit(1, deposit(2, 40), leader);
    assert!(ok(&sim.wait_op(op, SECOND)));
    let client = sim.history.operations[op].client;
    // More new sessions than the table holds (the simulator's is 12).
    for _ in 0..14 {
        sim.drop_session(3);
        assert!(sim.open_sessions(leader, SECOND), "a session opens");
    }
    sim.retry_answered(op, leader);
    sim.run_for(200 * MS);
    let told = sim.history.told_expired.contains(&client);
    (sim.converge_and_check(5 * SECOND), told)
}

#[test]
fn a_retry_after_its_session_expired_is_refused_not_run_again() {
    let (violations, told) = retry_after_expiry(ReplicaMutation::None);
    assert!(violations.is_empty(), "{violations:#?}");
    assert!(told, "the retry was told its session expired");
}

#[test]
fn running_a_retry_whose_session_expired_is_caught() {
    // Without the session check, the retry runs again and commits twice.
    let (violations, _) = retry_after_expiry(ReplicaMutation::SkipDedup);
    assert!(
        violations.iter().any(|v| v.starts_with("I4")),
        "{violations:#?}"
    );
}

// ----- a retry reaching a new leader that holds the entry uncommitted -------

fn retry_at_new_leader(mutation: ReplicaMutation) -> Vec<String> {
    let mut sim = sim(23, mutation);
    let old = sim.wait_for_ready_leader(2 * SECOND).expect("leader");
    fund(&mut sim, old);
    let f = others(&sim, old)[0];
    // Only f receives the leader's appends, and f's answers never return.
    for n in others(&sim, old) {
        if n != f {
            sim.net.set_blocked_both(old, n, true);
        }
    }
    sim.net.link_mut(f, old).blocked = true;
    let op = sim.submit(2, deposit(4, 33), old);
    sim.run_for(30 * MS);
    assert!(
        sim.history.operations[op].outcome.is_none(),
        "not committed, not answered"
    );
    let f_last = sim.replica(f).unwrap().raft().last_log_id();
    assert_eq!(
        f_last,
        sim.replica(old).unwrap().raft().last_log_id(),
        "f holds the entry"
    );
    sim.crash(old);
    // The others reach only f, so only f (which holds the entry) can win.
    sim.net.heal_all();
    let rest: Vec<NodeId> = others(&sim, old).into_iter().filter(|&n| n != f).collect();
    for &a in &rest {
        for &b in &rest {
            if a != b {
                sim.net.link_mut(a, b).blocked = true;
            }
        }
    }
    sim.run_for(150 * MS);
    for _ in 0..20 {
        if sim.replica(f).unwrap().is_ready_leader() {
            break;
        }
        sim.campaign(f);
        sim.run_for(30 * MS);
    }
    assert!(
        sim.replica(f).unwrap().is_ready_leader(),
        "f leads: {}",
        sim.describe()
    );
    sim.net.heal_all();
    // The client times out and retries, same sequence, at the new leader.
    sim.resend(2, f);
    assert!(ok(&sim.wait_op(op, 2 * SECOND)), "the retry is answered");
    sim.converge_and_check(5 * SECOND)
}

#[test]
fn retry_reaching_a_new_leader_that_holds_the_entry_is_executed_once() {
    let violations = retry_at_new_leader(ReplicaMutation::None);
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn skipping_deduplication_is_caught() {
    let violations = retry_at_new_leader(ReplicaMutation::SkipDedup);
    assert!(
        violations.iter().any(|v| v.starts_with("I4")),
        "{violations:#?}"
    );
}

// ----- the leader's application crashes mid-command --------------------------

fn application_crash(mutation: ReplicaMutation) -> (Vec<String>, Option<Outcome>) {
    let mut sim = sim(31, mutation);
    let leader = sim.wait_for_ready_leader(2 * SECOND).expect("leader");
    fund(&mut sim, leader);
    sim.workload.app_crash = 1.0;
    let op = sim.submit(
        3,
        LedgerCommand::Transfer {
            from: 1,
            to: 2,
            amount: 40,
        },
        leader,
    );
    let crashed = sim.wait_op(op, SECOND);
    sim.workload.app_crash = 0.0;
    for i in 0..4u64 {
        let op = sim.submit(
            3,
            LedgerCommand::Transfer {
                from: 1,
                to: 3,
                amount: 5 + i,
            },
            leader,
        );
        sim.wait_op(op, SECOND);
        let op = sim.submit(4, LedgerCommand::Balance { account: 1 }, leader);
        sim.wait_op(op, SECOND);
    }
    (sim.converge_and_check(5 * SECOND), crashed)
}

#[test]
fn application_crash_mid_command_leaves_nothing_behind() {
    let (violations, crashed) = application_crash(ReplicaMutation::None);
    assert_eq!(
        crashed,
        Some(Outcome::Failed),
        "the client hears the application failed"
    );
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn skipping_rollback_is_caught() {
    let (violations, _) = application_crash(ReplicaMutation::SkipRollback);
    assert!(
        violations.iter().any(|v| v.starts_with("I3")),
        "{violations:#?}"
    );
}

// ----- a follower crashes in the middle of applying a delta ------------------

#[test]
fn follower_crash_in_the_middle_of_applying_a_delta() {
    for ops_before_crash in [0, 1, 2, 3, 5, 8, 13, 21] {
        let mut sim = sim(40 + ops_before_crash, ReplicaMutation::None);
        let leader = sim.wait_for_ready_leader(2 * SECOND).expect("leader");
        fund(&mut sim, leader);
        let f = others(&sim, leader)[1];
        sim.crash_tree_after_ops(f, ops_before_crash);
        let op = sim.submit(
            0,
            LedgerCommand::Transfer {
                from: 2,
                to: 5,
                amount: 60,
            },
            leader,
        );
        assert!(ok(&sim.wait_op(op, SECOND)));
        sim.run_for(50 * MS);
        assert_ne!(
            sim.status(f),
            Status::Up,
            "the follower stopped on its storage failure"
        );
        sim.restart(f);
        let violations = sim.converge_and_check(5 * SECOND);
        assert!(
            violations.is_empty(),
            "crash after {ops_before_crash} ops: {violations:#?}"
        );
    }
}

// ----- a partitioned old leader asked for a read ----------------------------

/// The old leader keeps believing it leads (CheckQuorum is switched off, to
/// make the window as wide as possible): only the quorum check protects
/// its readers.
fn partitioned_old_leader_read(mutation: ReplicaMutation) -> (Vec<String>, Option<Outcome>) {
    let opts = Options {
        mutation: Mutation::SkipCheckQuorum,
        ..Options::default()
    };
    let workload = Workload {
        app_crash: 0.0,
        large: 0.0,
        mutation,
        ..Workload::default()
    };
    let mut sim = ReplicaSim::new(51, 5, opts, Timing::default(), workload);
    let old = sim.wait_for_ready_leader(2 * SECOND).expect("leader");
    fund(&mut sim, old);
    sim.isolate(old);
    let new = new_ready_leader(&mut sim, old, 3 * SECOND);
    let op = sim.submit(1, deposit(2, 250), new);
    assert!(ok(&sim.wait_op(op, SECOND)));
    sim.run_for(MS); // the read begins strictly after the write was answered
    let read = sim.submit(2, LedgerCommand::Balance { account: 2 }, old);
    sim.run_for(300 * MS);
    let outcome = sim.history.operations[read].outcome.clone();
    (sim.converge_and_check(5 * SECOND), outcome)
}

#[test]
fn partitioned_old_leader_does_not_answer_a_read() {
    let (violations, outcome) = partitioned_old_leader_read(ReplicaMutation::None);
    assert!(!ok(&outcome), "the old leader must not answer: {outcome:?}");
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn answering_reads_without_the_quorum_check_is_caught() {
    let (violations, outcome) = partitioned_old_leader_read(ReplicaMutation::ReadWithoutQuorum);
    assert!(ok(&outcome));
    assert!(
        violations.iter().any(|v| v.starts_with("I5")),
        "{violations:#?}"
    );
}

// ----- a new leader runs nothing before its barrier ------------------------

fn leader_change_under_load(mutation: ReplicaMutation) -> Vec<String> {
    let mut sim = sim(61, mutation);
    let old = sim.wait_for_ready_leader(2 * SECOND).expect("leader");
    fund(&mut sim, old);
    sim.start_clients();
    sim.run_for(300 * MS);
    sim.crash(old);
    sim.run_for(SECOND);
    sim.restart(old);
    sim.run_for(SECOND);
    sim.converge_and_check(5 * SECOND)
}

#[test]
fn leader_change_under_load_keeps_every_answer() {
    let violations = leader_change_under_load(ReplicaMutation::None);
    assert!(violations.is_empty(), "{violations:#?}");
}

// ----- durability from the log: checkpoints and replay ----------------------

/// Applying does not sync: a follower crash loses what its files held
/// beyond its last checkpoint (some of it, at random), and the restart
/// replays the log from the checkpoint. Seeds 0 and 1 crash a follower
/// under load, after several checkpoints, with a tail of applied entries
/// after the last one; seeds 2 and 3 crash it just after a checkpoint
/// covered everything it applied (the load stopped), so that nothing
/// after the checkpoint rewrites what the checkpoint should have kept.
fn follower_crash_after_checkpoints(mutation: ReplicaMutation) -> Vec<String> {
    let mut all = Vec::new();
    for seed in 0..4u64 {
        let mut sim = sim(70 + seed, mutation);
        let leader = sim.wait_for_ready_leader(2 * SECOND).expect("leader");
        fund(&mut sim, leader);
        sim.start_clients();
        let f = others(&sim, leader)[seed as usize % 4];
        // Under load for 1.5 s, or until the follower's log was released
        // past its checkpoint (which only a broken build does).
        let deadline = sim.now_us + 1500 * MS;
        sim.run_until(deadline, |s| {
            s.replica(f)
                .is_some_and(|r| r.raft().log().snapshot_id().index > r.engine().checkpoint_index())
        });
        if seed >= 2 {
            sim.clients_draining = true;
            let deadline = sim.now_us + 3 * SECOND;
            sim.run_until(deadline, |s| {
                s.replica(f).is_some_and(|r| {
                    r.engine().checkpoint_index() == r.engine().status().state_index
                        && !r.engine().checkpointing()
                        && s.clients.iter().all(|c| c.current.is_none())
                })
            });
        }
        sim.crash(f);
        sim.run_for(300 * MS);
        sim.restart(f);
        sim.run_for(SECOND);
        all.extend(sim.converge_and_check(5 * SECOND));
    }
    all
}

#[test]
fn follower_crash_after_checkpoints_replays_the_tail() {
    let violations = follower_crash_after_checkpoints(ReplicaMutation::None);
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn a_checkpoint_recorded_before_its_state_is_synced_is_caught() {
    let violations = follower_crash_after_checkpoints(ReplicaMutation::CheckpointBeforeSync);
    assert!(!violations.is_empty(), "the lost state went unnoticed");
}

#[test]
fn releasing_the_log_past_the_checkpoint_is_caught() {
    let violations = follower_crash_after_checkpoints(ReplicaMutation::ReleasePastCheckpoint);
    assert!(!violations.is_empty(), "the lost log tail went unnoticed");
}

// ----- servers still replaying their logs send snapshots -------------------

/// After a power failure the up-to-date servers replay their logs
/// (recovering) until the entries up to their logs' ends commit again, and
/// that needs a third server, which lags behind the log they released:
/// they must send it their state as it is, with its replay bound, and it
/// replays the same entries (replica swarm seed 876162315 stalled for ever
/// when recovering servers refused to send a snapshot).
#[test]
fn recovering_servers_catch_up_a_lagging_one_by_snapshot() {
    let (mut violations, mut recovering_installs) = (Vec::new(), 0);
    for seed in 0..4u64 {
        let mut sim = sim(90 + seed, ReplicaMutation::None);
        let leader = sim.wait_for_ready_leader(2 * SECOND).expect("leader");
        fund(&mut sim, leader);
        let rest = others(&sim, leader);
        let (lagging, up, gone) = (rest[0], rest[1], [rest[2], rest[3]]);
        sim.isolate(lagging);
        sim.start_clients();
        // Under load until the two that stay released their logs past
        // the lagging server's end.
        let deadline = sim.now_us + 3 * SECOND;
        sim.run_until(deadline, |s| {
            let lag_end = s
                .replica(lagging)
                .map_or(0, |r| r.raft().last_log_id().index);
            [leader, up].iter().all(|&n| {
                s.replica(n)
                    .is_some_and(|r| r.raft().log().snapshot_id().index > lag_end + 1)
            })
        });
        for n in gone {
            sim.destroy(n);
        }
        sim.crash(leader);
        sim.crash(up);
        sim.net.heal_all();
        sim.restart(leader);
        sim.restart(up);
        // The lagging server's first snapshot: taken from a server still
        // replaying its log, it is itself a state still being replayed.
        let installs = |s: &ReplicaSim| {
            s.replica(lagging)
                .map_or(0, |r| r.stats().snapshots_installed)
        };
        let before = installs(&sim);
        let deadline = sim.now_us + 5 * SECOND;
        sim.run_until(deadline, |s| installs(s) > before);
        if sim
            .replica(lagging)
            .is_some_and(|r| installs(&sim) > before && r.engine().status().recovering)
        {
            recovering_installs += 1;
        }
        violations.extend(sim.converge_and_check(10 * SECOND));
    }
    assert!(violations.is_empty(), "{violations:#?}");
    assert!(
        recovering_installs > 0,
        "no lagging server caught up from a state still being replayed"
    );
}

// ----- a command that changes more than a log can hold ---------------------

#[test]
fn a_command_that_changes_more_than_the_log_can_hold_is_refused() {
    // Rings of 6 x 64 KiB and parts of 16 KiB (replica seeds 152121006 and
    // 602545260): a delta is split into parts, and no part can leave a
    // follower's log before the last one applies. A delta near the ring's
    // size filled the rings of the survivors of two destroyed servers, and
    // the one that could win had no room for its barrier. A delta larger
    // than the uncommitted bound (a quarter of the usable log) is refused
    // and rolled back; one within it commits; the cluster keeps serving
    // after two servers are destroyed.
    let shape = bunker::sim::replicas::ReplicaShape {
        geometry: ringlog::Geometry {
            segment_bytes: 64 << 10,
            segment_count: 6,
        },
        entry_bytes_max: 32 << 10,
        engine: bunker::delta::engine::EngineConfig {
            max_part_bytes: 16 << 10,
            ..bunker::sim::replicas::ReplicaShape::default().engine
        },
        ..bunker::sim::replicas::ReplicaShape::default()
    };
    let workload = Workload {
        app_crash: 0.0,
        large: 0.0,
        ..Workload::default()
    };
    let trace = bunker::sim::trace::Trace::off();
    let mut sim = ReplicaSim::build(
        7,
        5,
        Options::default(),
        Timing::default(),
        workload,
        &shape,
        trace,
    );
    let leader = sim.wait_for_ready_leader(2 * SECOND).expect("leader");
    fund(&mut sim, leader);
    let huge = sim.submit(0, LedgerCommand::Large { kib: 100 }, leader);
    assert_eq!(
        sim.wait_op(huge, 2 * SECOND),
        Some(Outcome::Failed),
        "a 100 KiB delta does not fit a quarter of a 6 x 64 KiB ring"
    );
    let fits = sim.submit(1, LedgerCommand::Large { kib: 30 }, leader);
    assert!(ok(&sim.wait_op(fits, 2 * SECOND)), "a 30 KiB delta fits");
    let rest = others(&sim, leader);
    sim.destroy(rest[0]);
    sim.destroy(rest[1]);
    let after = sim.submit(2, deposit(3, 7), leader);
    assert!(ok(&sim.wait_op(after, 3 * SECOND)), "three survivors serve");
    let violations = sim.converge_and_check(10 * SECOND);
    assert!(violations.is_empty(), "{violations:#?}");
}
