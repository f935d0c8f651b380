//! Named scenarios: the fault patterns of docs/REQUIREMENTS.md, scripted by
//! hand against the real consensus core in the deterministic simulator. Each
//! test checks its own expectations, and every checker of the simulator runs
//! under it (election safety, log matching, leader completeness, state
//! machine safety, durable hard state, linearizable reads).
//!
//! The `*_is_caught` tests switch on a deliberate bug (`Mutation`) and show
//! that the same scenario then fails.

use bunker::raft::{Body, Mutation, Options, Role};
use bunker::sim::{Packet, Sim, Status};
use ringlog::{LogId, LogStore, NodeId};

const MS: u64 = 1_000;
const SECOND: u64 = 1_000_000;

fn options(mutation: Mutation) -> Options {
    Options {
        mutation,
        ..Options::default()
    }
}

fn others(sim: &Sim, id: NodeId) -> Vec<NodeId> {
    sim.ids().into_iter().filter(|&n| n != id).collect()
}

fn assert_clean(sim: &Sim) {
    assert!(
        sim.checker.violations.is_empty(),
        "violations: {:#?}",
        sim.checker.violations
    );
}

fn is_append_from(packet: &Packet, from: NodeId) -> bool {
    matches!(packet, Packet::Raft(m) if m.from == from && matches!(m.body, Body::Append { .. }))
}

fn is_pre_vote_from(packet: &Packet, senders: &[NodeId]) -> bool {
    matches!(packet, Packet::Raft(m) if senders.contains(&m.from) && matches!(m.body, Body::PreVote { .. }))
}

/// Heals everything, restarts what is down, and checks that every
/// survivor applies every acknowledged proposal.
fn converge(sim: &mut Sim) {
    sim.clear_filter();
    sim.net.heal_all();
    for n in sim.alive() {
        match sim.status(n) {
            Status::Crashed => sim.restart(n),
            Status::Paused => sim.resume(n),
            _ => {}
        }
    }
    let leader = sim
        .wait_for_leader(5 * SECOND)
        .expect("a leader after healing");
    sim.propose_acked(leader, 2 * SECOND)
        .expect("progress after healing");
    let target = sim.acked_max_index();
    let deadline = sim.now_us + 5 * SECOND;
    let caught_up = sim.run_until(deadline, |s| {
        s.alive().iter().all(|&n| s.applied(n).index >= target)
    });
    assert!(caught_up, "survivors did not catch up: {}", sim.describe());
    sim.check_acked();
    assert_clean(sim);
}

// ----- Raft §5.4.2, Figure 8 -------------------------------------------

/// Raft §5.4.2, Figure 8: a leader must not commit an entry of an older
/// term by counting replicas. Returns the simulation after step (d).
fn figure8(mutation: Mutation) -> (Sim, LogId, bool) {
    let opts = Options {
        batch_entries_max: 1,
        ..options(mutation)
    };
    let mut sim = Sim::scenario(8, opts);
    let s1 = sim.wait_for_leader(2 * SECOND).expect("initial leader");
    sim.propose_acked(s1, SECOND)
        .expect("a first committed entry");
    let rest = others(&sim, s1);
    let (s2, s3, s4, s5) = (rest[0], rest[1], rest[2], rest[3]);

    // (a) s1 leads; its new entry reaches s2 only.
    sim.net.partition(&[vec![s1, s2], vec![s3, s4, s5]]);
    let e = sim.propose(s1).expect("s1 accepts the entry");
    sim.run_for(20 * MS);
    assert_eq!(sim.raft(s2).unwrap().last_log_id(), e, "(a) s2 holds e");

    // (b) s5 is elected by s3 and s4, appends an entry of its own term at
    // the same index, and crashes before replicating it.
    sim.set_filter(move |p| !is_append_from(p, s5) && !is_pre_vote_from(p, &[s3, s4]));
    sim.run_for(150 * MS);
    sim.campaign(s5);
    let deadline = sim.now_us + SECOND;
    assert!(
        sim.run_until(deadline, |s| s.raft(s5).unwrap().is_leader()),
        "(b) s5 elected"
    );
    sim.run_for(10 * MS);
    let s5_entry = sim.raft(s5).unwrap().last_log_id();
    assert_eq!(
        s5_entry.index,
        e.index,
        "(b) s5 entry sits at e index: e {e}, {}",
        sim.describe()
    );
    assert!(s5_entry.term > e.term);
    assert_eq!(sim.raft(s5).unwrap().durable_index(), e.index);
    sim.crash(s5);

    // (c) s1 is elected again, in a later term, and copies e to s3, but
    // nothing after e reaches anyone.
    sim.net.heal_all();
    let cut = e.index;
    sim.set_filter(move |p| {
        if is_pre_vote_from(p, &[s2, s3, s4]) {
            return false;
        }
        match p {
            Packet::Raft(m) => match &m.body {
                Body::Append { entries, .. } if m.from == s1 => {
                    entries.iter().all(|x| x.index <= cut)
                }
                _ => true,
            },
            _ => true,
        }
    });
    sim.run_for(150 * MS);
    for _ in 0..10 {
        if sim.raft(s1).unwrap().is_leader() {
            break;
        }
        sim.campaign(s1);
        sim.run_for(20 * MS);
    }
    let s1_raft = sim.raft(s1).unwrap();
    assert!(
        s1_raft.is_leader(),
        "(c) s1 elected again: {}",
        sim.describe()
    );
    assert!(s1_raft.term() > s5_entry.term);
    sim.run_for(100 * MS);
    let holders = sim
        .ids()
        .into_iter()
        .filter(|&n| {
            sim.raft(n)
                .is_some_and(|r| r.log().term(e.index) == Some(e.term))
        })
        .count();
    assert!(holders >= 3, "(c) e is on a majority: {}", sim.describe());
    let committed_old = sim.raft(s1).unwrap().commit_index() >= e.index;

    // (d) s1 crashes; s5 restarts and is elected with s2, s3, s4 (its last
    // term is higher) and replicates its own entry at e's index.
    sim.crash(s1);
    sim.restart(s5);
    sim.set_filter(move |p| !is_pre_vote_from(p, &[s2, s3, s4]));
    sim.run_for(150 * MS);
    for _ in 0..10 {
        if sim.raft(s5).unwrap().is_leader() {
            break;
        }
        sim.campaign(s5);
        sim.run_for(20 * MS);
    }
    assert!(
        sim.raft(s5).unwrap().is_leader(),
        "(d) s5 elected again: {}",
        sim.describe()
    );
    sim.run_for(200 * MS);
    (sim, e, committed_old)
}

#[test]
fn figure8_leader_does_not_commit_older_term_entries_by_counting() {
    let (mut sim, e, committed_old) = figure8(Mutation::None);
    assert!(!committed_old, "s1 counted replicas of an older-term entry");
    assert_clean(&sim);
    // s5's entry won the index: e was never committed, so that is allowed.
    assert_ne!(sim.checker.committed_term(e.index), Some(e.term));
    converge(&mut sim);
}

#[test]
fn figure8_commit_rule_mutation_is_caught() {
    let (sim, _, committed_old) = figure8(Mutation::CommitOlderTerms);
    assert!(committed_old, "the mutation makes s1 commit e in (c)");
    assert!(
        sim.checker
            .violations
            .iter()
            .any(|v| v.what.contains("state machine safety")
                || v.what.contains("leader completeness")),
        "the checkers must catch the overwritten committed entry: {:#?}",
        sim.checker.violations
    );
}

// ----- CheckQuorum (Raft thesis §6.2) ----------------------------------

/// A leader that can send but not receive keeps its followers in its lease
/// with heartbeats. It must step down (CheckQuorum) so they can elect
/// another leader. Returns whether a proposal committed after the fault.
fn leader_can_send_but_not_receive(mutation: Mutation) -> (Sim, bool) {
    let mut sim = Sim::scenario(21, options(mutation));
    let old = sim.wait_for_leader(2 * SECOND).expect("initial leader");
    for p in others(&sim, old) {
        sim.net.link_mut(p, old).blocked = true;
    }
    let deadline = sim.now_us + 3 * SECOND;
    let elected = sim.run_until(deadline, |s| {
        s.leader()
            .is_some_and(|l| l != old && s.raft(l).is_some_and(|r| r.barrier_passed()))
    });
    let progress = elected && {
        let new = sim.leader().expect("new leader");
        sim.propose_acked(new, SECOND).is_some()
    };
    (sim, progress)
}

#[test]
fn leader_that_can_send_but_not_receive_steps_down() {
    let (mut sim, progress) = leader_can_send_but_not_receive(Mutation::None);
    assert!(progress, "no progress: {}", sim.describe());
    assert_clean(&sim);
    converge(&mut sim);
}

#[test]
fn skipping_check_quorum_is_caught_by_a_leader_that_cannot_receive() {
    let (sim, progress) = leader_can_send_but_not_receive(Mutation::SkipCheckQuorum);
    assert!(
        !progress,
        "without CheckQuorum the cluster must stall: {}",
        sim.describe()
    );
}

/// Leader 4 reaches only server 2 while server 5 is down: 2 stays in 4's
/// lease until 4 steps down for lack of a quorum; then 1, 2, 3 elect.
fn leader_reaching_only_one_peer(mutation: Mutation) -> (Sim, bool) {
    let mut sim = Sim::scenario(46, options(mutation));
    let four = sim.wait_for_leader(2 * SECOND).expect("initial leader");
    let rest = others(&sim, four);
    let (two, five) = (rest[0], rest[3]);
    sim.crash(five);
    for &p in &rest {
        if p != two {
            sim.net.set_blocked_both(four, p, true);
        }
    }
    let deadline = sim.now_us + 4 * SECOND;
    let elected = sim.run_until(deadline, |s| {
        s.leader()
            .is_some_and(|l| l != four && s.raft(l).is_some_and(|r| r.barrier_passed()))
    });
    let progress = elected && {
        let new = sim.leader().expect("new leader");
        sim.propose_acked(new, SECOND).is_some()
    };
    (sim, progress)
}

#[test]
fn leader_reaching_only_one_peer_while_another_is_down() {
    let (mut sim, progress) = leader_reaching_only_one_peer(Mutation::None);
    assert!(progress, "no progress: {}", sim.describe());
    converge(&mut sim);
}

#[test]
fn skipping_check_quorum_is_caught_by_a_leader_reaching_one_peer() {
    let (_, progress) = leader_reaching_only_one_peer(Mutation::SkipCheckQuorum);
    assert!(!progress);
}

/// Regression (seed 9908 of an early build): the leader reaches one healthy
/// follower x, and a follower y over a link that loses every append but
/// carries heartbeats. Counting y's heartbeat answers, the leader believed
/// it had a quorum, could never commit, and its lease on x stopped x, a and
/// b (fully connected) from electing. CheckQuorum now counts only followers
/// that keep up.
#[test]
fn leader_kept_alive_by_a_follower_that_loses_only_appends() {
    let mut sim = Sim::scenario(9908, Options::default());
    let leader = sim.wait_for_leader(2 * SECOND).expect("initial leader");
    let rest = others(&sim, leader);
    let (x, y, a, b) = (rest[0], rest[1], rest[2], rest[3]);
    sim.net.partition(&[vec![x, a, b]]);
    sim.net.set_blocked_both(leader, x, false);
    sim.net.set_blocked_both(leader, y, false);
    sim.net
        .link_mut(leader, y)
        .drop_kinds
        .push(bunker::sim::PacketKind::Raft(
            bunker::raft::MessageKind::Append,
        ));
    // Clients keep sending through x; the leader cannot commit them.
    let mut elected = false;
    for _ in 0..100 {
        sim.propose(x);
        sim.run_for(50 * MS);
        elected = [x, a, b]
            .iter()
            .any(|&n| sim.raft(n).unwrap().barrier_passed());
        if elected {
            break;
        }
    }
    assert!(elected, "x, a and b elect a leader: {}", sim.describe());
    let new = sim.leader().expect("leader");
    let new = if [x, a, b].contains(&new) {
        new
    } else {
        sim.wait_for_new_leader(leader, SECOND).unwrap()
    };
    sim.propose_acked(new, SECOND).expect("progress");
    converge(&mut sim);
}

// ----- PreVote and stickiness (Raft thesis §9.6) -----------------------

#[test]
fn candidate_that_can_send_but_not_receive_does_not_disrupt() {
    let mut sim = Sim::scenario(33, Options::default());
    let leader = sim.wait_for_leader(2 * SECOND).expect("initial leader");
    let term = sim.raft(leader).unwrap().term();
    let c = others(&sim, leader)[0];
    let c_term = sim.raft(c).unwrap().term();
    for p in others(&sim, c) {
        sim.net.link_mut(p, c).blocked = true;
    }
    for _ in 0..20 {
        sim.run_for(100 * MS);
        assert!(
            sim.propose_acked(leader, SECOND).is_some(),
            "progress with c cut off"
        );
    }
    assert_eq!(
        sim.raft(leader).unwrap().term(),
        term,
        "the leader kept its term"
    );
    assert!(sim.raft(leader).unwrap().is_leader());
    assert_eq!(sim.raft(c).unwrap().term(), c_term, "PreVote kept c's term");
    sim.net.heal_all();
    converge(&mut sim);
    assert_eq!(
        sim.raft(leader).unwrap().term(),
        term,
        "rejoining caused no election"
    );
}

#[test]
fn partitioned_server_with_higher_term_rejoins() {
    let mut sim = Sim::scenario(44, Options::default());
    let leader = sim.wait_for_leader(2 * SECOND).expect("initial leader");
    sim.propose_acked(leader, SECOND).expect("progress");
    let x = others(&sim, leader)[0];
    // With the leader gone, x wins pre-votes again and again, but its real
    // vote requests never arrive: only x's term rises.
    sim.crash(leader);
    sim.set_filter(move |p| match p {
        Packet::Raft(m) => {
            !(matches!(m.body, Body::Vote { .. })
                || (m.from != x && matches!(m.body, Body::PreVote { .. })))
        }
        _ => true,
    });
    sim.run_for(150 * MS);
    let before = sim.max_term();
    for _ in 0..4 {
        sim.campaign(x);
        sim.run_for(10 * MS);
    }
    let x_term = sim.raft(x).unwrap().term();
    assert!(
        x_term >= before + 3,
        "x's term rose to {x_term} (others at {before})"
    );
    sim.isolate(x);
    sim.clear_filter();
    sim.restart(leader);
    let new = sim
        .wait_for_leader(3 * SECOND)
        .expect("the rest elect a leader");
    assert!(sim.raft(new).unwrap().term() < x_term);
    sim.propose_acked(new, SECOND).expect("progress without x");
    // x rejoins with the highest term: one election later, x follows.
    sim.net.heal_all();
    let deadline = sim.now_us + 5 * SECOND;
    let settled = sim.run_until(deadline, |s| {
        s.leader().is_some_and(|l| {
            s.raft(l).unwrap().term() > x_term && s.raft(l).unwrap().barrier_passed()
        })
    });
    assert!(settled, "no leader above x's term: {}", sim.describe());
    converge(&mut sim);
    assert_eq!(sim.raft(x).unwrap().role(), Role::Follower);
}

// ----- partial partitions ----------------------------------------------

#[test]
fn clique_with_two_servers_reaching_one_member_each() {
    let mut sim = Sim::scenario(123, Options::default());
    // 1-2-3 clique; 4 reaches only 2; 5 reaches only 3.
    sim.net.partition(&[vec![1, 2, 3]]);
    sim.net.set_blocked_both(4, 2, false);
    sim.net.set_blocked_both(5, 3, false);
    let leader = sim.wait_for_leader(3 * SECOND).expect("a leader");
    sim.run_for(SECOND);
    let leader = sim.leader().unwrap_or(leader);
    assert!(
        [1, 2, 3].contains(&leader),
        "leader {leader} is in the clique"
    );
    let term = sim.raft(leader).unwrap().term();
    for _ in 0..20 {
        assert!(
            sim.propose_acked(leader, SECOND).is_some(),
            "progress in the clique"
        );
        sim.run_for(100 * MS);
    }
    assert_eq!(
        sim.raft(leader).unwrap().term(),
        term,
        "4 and 5 cause no elections"
    );
    converge(&mut sim);
}

#[test]
fn majorities_ring_makes_progress() {
    let mut sim = Sim::scenario(5, Options::default());
    // Each server reaches only its two ring neighbours.
    let ring = [1, 3, 5, 2, 4];
    sim.net.partition(&[]);
    for i in 0..ring.len() {
        sim.net
            .set_blocked_both(ring[i], ring[(i + 1) % ring.len()], false);
    }
    let leader = sim
        .wait_for_leader(5 * SECOND)
        .expect("a leader in the ring");
    sim.run_for(SECOND);
    let leader = sim.leader().unwrap_or(leader);
    let mut acked = 0;
    for _ in 0..20 {
        let l = sim.leader().unwrap_or(leader);
        if sim.propose_acked(l, SECOND).is_some() {
            acked += 1;
        }
    }
    assert!(
        acked >= 15,
        "only {acked} of 20 proposals committed in the ring"
    );
    assert_clean(&sim);
    converge(&mut sim);
}

// ----- crashes and destruction -----------------------------------------

#[test]
fn two_servers_destroyed_at_once_right_after_a_commit() {
    for seed in 0..20 {
        let mut sim = Sim::scenario(1000 + seed, Options::default());
        let leader = sim.wait_for_leader(2 * SECOND).expect("initial leader");
        for _ in 0..5 {
            sim.propose_acked(leader, SECOND).expect("progress");
        }
        let at = sim
            .propose_acked(leader, SECOND)
            .expect("the last acknowledged entry");
        // Destroy the leader and a follower that holds the entry, at once.
        let holder = others(&sim, leader)
            .into_iter()
            .find(|&n| sim.raft(n).is_some_and(|r| r.durable_index() >= at.index))
            .expect("a follower holds the acknowledged entry");
        sim.destroy(leader);
        sim.destroy(holder);
        let new = sim
            .wait_for_leader(3 * SECOND)
            .expect("three survivors elect");
        sim.propose_acked(new, SECOND)
            .expect("progress with three servers");
        assert_eq!(
            sim.checker.committed_term(at.index),
            Some(at.term),
            "seed {seed}"
        );
        converge(&mut sim);
    }
}

/// The leader's own write is durable, the followers' acknowledgements are
/// lost, and the leader crashes. The followers hold the entry durably, so
/// the next leader has it and commits it (Raft §5.4.1).
#[test]
fn leader_crash_between_its_sync_and_the_acknowledgements() {
    let mut sim = Sim::scenario(91, Options::default());
    let leader = sim.wait_for_leader(2 * SECOND).expect("initial leader");
    sim.propose_acked(leader, SECOND).expect("progress");
    sim.set_filter(move |p| match p {
        Packet::Raft(m) => !(m.to == leader && matches!(m.body, Body::AppendResponse { .. })),
        _ => true,
    });
    let at = sim.propose(leader).expect("proposal");
    let deadline = sim.now_us + SECOND;
    assert!(
        sim.run_until(deadline, |s| s.raft(leader).unwrap().durable_index()
            >= at.index)
    );
    sim.run_for(5 * MS);
    assert!(
        sim.raft(leader).unwrap().commit_index() < at.index,
        "no acknowledgement arrived"
    );
    sim.crash(leader);
    sim.clear_filter();
    let new = sim.wait_for_leader(3 * SECOND).expect("a new leader");
    sim.propose_acked(new, SECOND).expect("progress");
    assert_eq!(
        sim.checker.committed_term(at.index),
        Some(at.term),
        "the entry survives"
    );
    converge(&mut sim);
}

/// Same crash point, but the followers never received the entry: it is
/// lost, which is allowed because no client was told it committed, and the
/// old leader drops it from its log when it rejoins.
#[test]
fn leader_crash_after_its_sync_before_replication() {
    let mut sim = Sim::scenario(92, Options::default());
    let leader = sim.wait_for_leader(2 * SECOND).expect("initial leader");
    sim.propose_acked(leader, SECOND).expect("progress");
    sim.set_filter(move |p| !is_append_from(p, leader));
    let at = sim.propose(leader).expect("proposal");
    let deadline = sim.now_us + SECOND;
    assert!(
        sim.run_until(deadline, |s| s.raft(leader).unwrap().durable_index()
            >= at.index)
    );
    sim.crash(leader);
    sim.clear_filter();
    let new = sim.wait_for_leader(3 * SECOND).expect("a new leader");
    for _ in 0..3 {
        sim.propose_acked(new, SECOND).expect("progress");
    }
    assert_ne!(sim.checker.committed_term(at.index), Some(at.term));
    converge(&mut sim);
    assert!(sim.acked().iter().all(|a| a.at != at), "never acknowledged");
}

/// A leader with a full pipeline is cut off; the majority elects another
/// leader; none of the old pipeline was acknowledged, and the old leader
/// discards it when it rejoins.
#[test]
fn deposed_leader_with_pending_pipeline() {
    let mut sim = Sim::scenario(17, Options::default());
    let old = sim.wait_for_leader(2 * SECOND).expect("initial leader");
    sim.propose_acked(old, SECOND).expect("progress");
    sim.isolate(old);
    let pending: Vec<LogId> = (0..50).filter_map(|_| sim.propose(old)).collect();
    assert_eq!(pending.len(), 50);
    let new = sim
        .wait_for_new_leader(old, 3 * SECOND)
        .expect("a new leader");
    for _ in 0..10 {
        sim.propose_acked(new, SECOND).expect("progress");
    }
    let deadline = sim.now_us + SECOND;
    let deposed = sim.run_until(deadline, |s| !s.raft(old).unwrap().is_leader());
    assert!(deposed, "CheckQuorum deposes the cut-off leader");
    converge(&mut sim);
    for p in &pending {
        assert!(
            sim.acked().iter().all(|a| a.at != *p),
            "{p} was never acknowledged"
        );
        assert_ne!(
            sim.checker.committed_term(p.index),
            Some(p.term),
            "{p} was discarded"
        );
    }
}

/// Regression (seed 18185 of an early build): a paused leader woke up to a
/// snapshot from the leader of a newer term and replaced its log while it
/// still believed it led. Snapshots now obey the term rules of Raft §7: the
/// stale leader steps down first.
#[test]
fn stale_leader_receives_a_snapshot_from_a_newer_leader() {
    let mut sim = Sim::scenario(18185, Options::default());
    let old = sim.wait_for_leader(2 * SECOND).expect("initial leader");
    sim.propose_acked(old, SECOND).expect("progress");
    sim.pause(old, 10 * SECOND);
    let new = sim
        .wait_for_new_leader(old, 3 * SECOND)
        .expect("a new leader");
    // Only snapshots reach the old leader: it wakes up to one first.
    sim.set_filter(move |p| p.to() != old || matches!(p, Packet::Snapshot { .. }));
    for _ in 0..3 * sim.compact_entries {
        sim.propose_acked(new, SECOND).expect("progress");
    }
    let deadline = sim.now_us + SECOND;
    sim.run_until(deadline, |s| {
        s.raft(new).unwrap().log().snapshot_id().index > 0
    });
    sim.run_for(SECOND);
    sim.resume(old);
    sim.run_for(100 * MS);
    assert_ne!(sim.raft(old).unwrap().role(), Role::Leader);
    assert_clean(&sim);
    converge(&mut sim);
}

// ----- durability of term and vote (Raft §5.1, Figure 2) ---------------

/// A follower votes, crashes and restarts: its vote must survive, or it
/// could vote for a second candidate in the same term.
fn vote_survives_crash(mutation: Mutation) -> Sim {
    let mut sim = Sim::scenario(77, options(mutation));
    let leader = sim.wait_for_leader(2 * SECOND).expect("initial leader");
    let rest = others(&sim, leader);
    let candidate = rest[0];
    // Only the candidate campaigns.
    sim.set_filter(move |p| match p {
        Packet::Raft(m) => m.from == candidate || !matches!(m.body, Body::PreVote { .. }),
        _ => true,
    });
    sim.crash(leader);
    sim.run_for(150 * MS);
    sim.campaign(candidate);
    let deadline = sim.now_us + SECOND;
    let voter = move |s: &Sim| {
        s.ids()
            .into_iter()
            .find(|&n| n != candidate && s.raft(n).is_some_and(|r| r.vote() == Some(candidate)))
    };
    assert!(
        sim.run_until(deadline, |s| voter(s).is_some()),
        "{}",
        sim.describe()
    );
    let voter = voter(&sim).expect("a voter");
    sim.crash(voter);
    sim.restart(voter);
    sim.run_for(10 * MS);
    sim.clear_filter();
    sim
}

#[test]
fn vote_survives_a_crash() {
    let mut sim = vote_survives_crash(Mutation::None);
    assert_clean(&sim);
    converge(&mut sim);
}

#[test]
fn forgetting_the_vote_is_caught() {
    let sim = vote_survives_crash(Mutation::ForgetVote);
    assert!(sim
        .checker
        .violations
        .iter()
        .any(|v| v.what.contains("vote")));
}

/// Followers that acknowledge before their write is durable let a leader
/// answer a client for an entry that a power loss then erases everywhere.
/// Returns the simulation and whether the client got its answer before the
/// power loss.
fn ack_then_power_loss(mutation: Mutation) -> (Sim, bool) {
    let mut sim = Sim::scenario(55, options(mutation));
    let leader = sim.wait_for_leader(3 * SECOND).expect("initial leader");
    sim.propose_acked(leader, SECOND).expect("progress");
    sim.timing.sync_us_min = 50 * MS;
    sim.timing.sync_us_max = 60 * MS;
    let rest = others(&sim, leader);
    let (a, b) = (rest[0], rest[1]);
    // Only a and b get the entry.
    sim.set_filter(move |p| match p {
        Packet::Raft(m) => {
            !(m.from == leader && matches!(m.body, Body::Append { .. }) && ![a, b].contains(&m.to))
        }
        _ => true,
    });
    let at = sim.propose(leader).expect("proposal");
    let deadline = sim.now_us + 40 * MS;
    let acked = sim.run_until(deadline, |s| s.acked().iter().any(|x| x.at == at));
    // The leader and both followers lose power before their syncs complete.
    for n in [leader, a, b] {
        sim.crash_losing_unsynced(n);
    }
    sim.clear_filter();
    sim.timing.sync_us_min = 100;
    sim.timing.sync_us_max = 2 * MS;
    for n in [leader, a, b] {
        sim.restart_after(n, 10 * MS);
    }
    if let Some(l) = sim.wait_for_leader(5 * SECOND) {
        for _ in 0..3 {
            sim.propose_acked(l, SECOND);
        }
    }
    sim.run_for(SECOND);
    sim.check_acked();
    (sim, acked)
}

#[test]
fn acknowledgements_wait_for_durability() {
    let (mut sim, acked) = ack_then_power_loss(Mutation::None);
    assert!(!acked, "nothing is acknowledged before a majority synced");
    assert_clean(&sim);
    converge(&mut sim);
}

#[test]
fn acknowledging_before_durable_is_caught() {
    let (sim, acked) = ack_then_power_loss(Mutation::AckBeforeDurable);
    assert!(acked, "the mutation answers the client early");
    assert!(
        sim.checker.violations.iter().any(
            |v| v.what.contains("lost acknowledged") || v.what.contains("state machine safety")
        ),
        "{:#?}",
        sim.checker.violations
    );
}
