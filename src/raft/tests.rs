//! Engine tests: one core, driven by hand, with the exact effects it must
//! produce. Each test names the part of the Raft paper (Ongaro and
//! Ousterhout, 2014) or of Ongaro's thesis (2014) it checks.

use crate::raft::{AppendResult, Body, Effect, Membership, Message, Mutation, Options, Raft, Role};
use crate::sim::log::SimLog;
use bytes::Bytes;
use ringlog::{Entry, EntryKind, HardState, LogId, LogStore, NodeId, Term};

fn core_with(id: NodeId, voters: &[NodeId], opts: Options) -> Raft<SimLog> {
    let membership = Membership::new(voters.iter().copied()).unwrap();
    Raft::new(id, opts, membership, SimLog::new(id), LogId::ZERO, 7).unwrap()
}

fn core(id: NodeId) -> Raft<SimLog> {
    core_with(id, &[1, 2, 3], Options::default())
}

fn drain(r: &mut Raft<SimLog>) -> Vec<Effect> {
    std::iter::from_fn(|| r.poll_effect()).collect()
}

fn sent(effects: &[Effect]) -> Vec<Message> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

fn msg(from: NodeId, to: NodeId, term: Term, body: Body) -> Message {
    Message {
        from,
        to,
        term,
        body,
    }
}

fn entry(index: u64, term: Term) -> Entry {
    Entry {
        index,
        term,
        kind: EntryKind::Command,
        data: Bytes::from(vec![index as u8; 4]),
    }
}

/// Ticks until the election timer fires (at most twice the minimum).
fn time_out(r: &mut Raft<SimLog>) -> Vec<Effect> {
    let mut effects = Vec::new();
    for _ in 0..2 * Options::default().election_ticks_min {
        r.handle_tick().unwrap();
        effects.extend(drain(r));
        if r.role() != Role::Follower {
            break;
        }
    }
    effects
}

/// Makes the log durable up to its last entry, as a group commit would.
fn sync(r: &mut Raft<SimLog>) -> Vec<Effect> {
    if let Some(ticket) = r.log_mut().begin_sync().unwrap() {
        let durable = r.log_mut().complete_sync(ticket).unwrap();
        r.handle_log_durable(durable).unwrap();
    }
    drain(r)
}

/// Elects server 1 of {1, 2, 3} in term 1 with a vote from 2.
fn leader() -> Raft<SimLog> {
    let mut r = core(1);
    time_out(&mut r);
    r.handle_message(msg(2, 1, 1, Body::PreVoteResponse { granted: true }))
        .unwrap();
    drain(&mut r);
    r.handle_message(msg(2, 1, 1, Body::VoteResponse { granted: true }))
        .unwrap();
    drain(&mut r);
    assert_eq!(r.role(), Role::Leader);
    r
}

#[test]
fn election_timeout_starts_a_pre_vote_without_changing_the_term() {
    // Thesis §9.6: a pre-candidate asks whether it could win before it
    // disrupts anyone with a higher term.
    let mut r = core(1);
    let effects = time_out(&mut r);
    assert_eq!(r.role(), Role::PreCandidate);
    assert_eq!(r.term(), 0);
    assert_eq!(r.log().hard_state(), HardState::default());
    let last_log = LogId::ZERO;
    assert_eq!(
        sent(&effects),
        vec![
            msg(1, 2, 1, Body::PreVote { last_log }),
            msg(1, 3, 1, Body::PreVote { last_log }),
        ]
    );
}

#[test]
fn winning_the_pre_vote_persists_term_and_vote_before_asking_for_votes() {
    // Raft §5.2 and Figure 2: currentTerm and votedFor are durable before
    // the RequestVote RPCs that depend on them leave.
    let mut r = core(1);
    time_out(&mut r);
    r.handle_message(msg(2, 1, 1, Body::PreVoteResponse { granted: true }))
        .unwrap();
    let effects = drain(&mut r);
    assert_eq!(r.role(), Role::Candidate);
    assert_eq!(
        r.log().hard_state(),
        HardState {
            term: 1,
            vote: Some(1)
        }
    );
    let last_log = LogId::ZERO;
    assert_eq!(
        sent(&effects),
        vec![
            msg(1, 2, 1, Body::Vote { last_log }),
            msg(1, 3, 1, Body::Vote { last_log })
        ]
    );
}

#[test]
fn a_granted_pre_vote_from_an_older_round_does_not_count() {
    let mut r = core(1);
    time_out(&mut r);
    // A granted pre-vote carries the term asked for (1); one at our own
    // term (0) answers something else and must not elect us.
    r.handle_message(msg(2, 1, 0, Body::PreVoteResponse { granted: true }))
        .unwrap();
    assert_eq!(r.role(), Role::PreCandidate);
}

#[test]
fn new_leader_appends_its_barrier_and_reports_when_it_commits() {
    // Raft §5.4.2 and §8: a leader commits an entry of its own term first.
    let mut r = leader();
    assert_eq!(r.last_log_id(), LogId::new(1, 1));
    let barrier = r.log().entries(1, 2, u64::MAX).unwrap();
    assert_eq!(barrier[0].kind, EntryKind::Noop);
    // The follower's acknowledgement alone is not a majority with an
    // undurable leader log: nothing commits until the leader's write lands.
    let ack = AppendResult::Success { match_index: 1 };
    r.handle_message(msg(
        2,
        1,
        1,
        Body::AppendResponse {
            result: ack,
            seq: 0,
        },
    ))
    .unwrap();
    assert!(drain(&mut r)
        .iter()
        .all(|e| !matches!(e, Effect::Committed { .. })));
    let effects = sync(&mut r);
    assert!(effects.contains(&Effect::BarrierPassed { term: 1, index: 1 }));
    assert!(effects.contains(&Effect::Committed { index: 1 }));
    assert!(r.barrier_passed());
}

#[test]
fn follower_acknowledges_only_durable_entries() {
    // Raft §5.3 with durability: an acknowledgement promises the entries
    // survive a crash of the follower.
    let mut r = core(2);
    let append = Body::Append {
        prev: LogId::ZERO,
        entries: vec![entry(1, 1)],
        commit: 0,
        seq: 3,
    };
    r.handle_message(msg(1, 2, 1, append)).unwrap();
    let effects = drain(&mut r);
    assert!(
        sent(&effects).is_empty(),
        "no acknowledgement before the sync: {effects:?}"
    );
    assert_eq!(
        r.log().hard_state(),
        HardState {
            term: 1,
            vote: None
        }
    );
    let effects = sync(&mut r);
    let ack = AppendResult::Success { match_index: 1 };
    assert_eq!(
        sent(&effects),
        vec![msg(
            2,
            1,
            1,
            Body::AppendResponse {
                result: ack,
                seq: 3
            }
        )]
    );
}

#[test]
fn ack_before_durable_mutation_acknowledges_early() {
    let opts = Options {
        mutation: Mutation::AckBeforeDurable,
        ..Options::default()
    };
    let mut r = core_with(2, &[1, 2, 3], opts);
    let append = Body::Append {
        prev: LogId::ZERO,
        entries: vec![entry(1, 1)],
        commit: 0,
        seq: 0,
    };
    r.handle_message(msg(1, 2, 1, append)).unwrap();
    assert_eq!(
        sent(&drain(&mut r)).len(),
        1,
        "the mutation must be observable"
    );
}

#[test]
fn leader_does_not_commit_an_older_term_entry_by_counting_replicas() {
    // Raft §5.4.2, Figure 8 (c): entry 2 of term 1 is on a majority, but the
    // leader of term 3 may not commit it until an entry of term 3 commits.
    let mut log = SimLog::new(1);
    log.append(&[entry(1, 1), entry(2, 1)]).unwrap();
    log.save_hard_state(HardState {
        term: 2,
        vote: None,
    })
    .unwrap();
    let ticket = log.begin_sync().unwrap().unwrap();
    log.complete_sync(ticket).unwrap();
    for (mutation, commits_old) in [(Mutation::None, false), (Mutation::CommitOlderTerms, true)] {
        let membership = Membership::new([1, 2, 3]).unwrap();
        let mut cloned = SimLog::new(2);
        cloned
            .append(&log.entries(1, 3, u64::MAX).unwrap())
            .unwrap();
        cloned.save_hard_state(log.hard_state()).unwrap();
        let ticket = cloned.begin_sync().unwrap().unwrap();
        let durable = cloned.complete_sync(ticket).unwrap();
        let opts = Options {
            mutation,
            ..Options::default()
        };
        let mut r = Raft::new(1, opts, membership, cloned, LogId::ZERO, 1).unwrap();
        r.handle_log_durable(durable).unwrap();
        time_out(&mut r);
        r.handle_message(msg(2, 1, 3, Body::PreVoteResponse { granted: true }))
            .unwrap();
        r.handle_message(msg(2, 1, 3, Body::VoteResponse { granted: true }))
            .unwrap();
        drain(&mut r);
        assert!(r.is_leader());
        assert_eq!(r.term(), 3);
        // Follower 2 holds entry 2 (of term 1) but not the barrier (3@t3).
        let ack = AppendResult::Success { match_index: 2 };
        r.handle_message(msg(
            2,
            1,
            3,
            Body::AppendResponse {
                result: ack,
                seq: 0,
            },
        ))
        .unwrap();
        drain(&mut r);
        assert_eq!(r.commit_index() >= 2, commits_old, "mutation {mutation:?}");
    }
}

#[test]
fn follower_truncates_a_conflicting_suffix() {
    // Raft §5.3: an existing entry that conflicts with a new one is deleted
    // with all that follow it.
    let mut r = core(2);
    let append = Body::Append {
        prev: LogId::ZERO,
        entries: vec![entry(1, 1), entry(2, 1)],
        commit: 1,
        seq: 0,
    };
    r.handle_message(msg(1, 2, 1, append)).unwrap();
    sync(&mut r);
    let append = Body::Append {
        prev: LogId::new(1, 1),
        entries: vec![entry(2, 2)],
        commit: 1,
        seq: 0,
    };
    r.handle_message(msg(3, 2, 2, append)).unwrap();
    let effects = drain(&mut r);
    assert!(effects.contains(&Effect::EntriesDiscarded { from: 2 }));
    assert_eq!(r.last_log_id(), LogId::new(2, 2));
    assert_eq!(r.durable_index(), 1, "the new entry is not durable yet");
}

#[test]
fn rejection_carries_the_conflicting_term_for_fast_backtracking() {
    // Raft §5.3, the optimization at the end: the follower names the term of
    // its conflicting entry and the first index it holds for that term.
    let mut r = core(2);
    let entries = vec![entry(1, 1), entry(2, 1), entry(3, 1)];
    r.handle_message(msg(
        1,
        2,
        1,
        Body::Append {
            prev: LogId::ZERO,
            entries,
            commit: 0,
            seq: 0,
        },
    ))
    .unwrap();
    sync(&mut r);
    let probe = Body::Append {
        prev: LogId::new(3, 2),
        entries: vec![],
        commit: 0,
        seq: 0,
    };
    r.handle_message(msg(3, 2, 2, probe)).unwrap();
    let reject = AppendResult::Reject {
        rejected_prev: 3,
        hint_index: 1,
        hint_term: Some(1),
    };
    assert_eq!(
        sent(&drain(&mut r)),
        vec![msg(
            2,
            3,
            2,
            Body::AppendResponse {
                result: reject,
                seq: 0
            }
        )]
    );
}

#[test]
fn follower_in_lease_ignores_votes_and_denies_pre_votes() {
    // Thesis §4.2.3 / §9.6: a server that heard from its leader within the
    // minimum election timeout does not help depose it.
    let mut r = core(2);
    r.handle_message(msg(1, 2, 1, Body::Heartbeat { commit: 0, seq: 0 }))
        .unwrap();
    drain(&mut r);
    r.handle_message(msg(
        3,
        2,
        2,
        Body::PreVote {
            last_log: LogId::new(5, 1),
        },
    ))
    .unwrap();
    assert_eq!(
        sent(&drain(&mut r)),
        vec![msg(2, 3, 1, Body::PreVoteResponse { granted: false })]
    );
    r.handle_message(msg(
        3,
        2,
        2,
        Body::Vote {
            last_log: LogId::new(5, 1),
        },
    ))
    .unwrap();
    assert!(sent(&drain(&mut r)).is_empty());
    assert_eq!(r.term(), 1, "the vote request did not raise the term");
}

#[test]
fn a_denied_vote_does_not_reset_the_election_timer() {
    // Raft §5.2: a follower's election timer restarts when it hears from
    // the leader or grants a vote, not when a candidate it refuses raises
    // the term; else a candidate that cannot win, timing out faster, would
    // keep the only server that can win from ever campaigning.
    let mut r = core(3);
    let append = Body::Append {
        prev: LogId::ZERO,
        entries: vec![entry(1, 1)],
        commit: 0,
        seq: 0,
    };
    r.handle_message(msg(1, 3, 1, append)).unwrap();
    sync(&mut r);
    // A higher term from a stale answer: no leader any more, no lease.
    r.handle_message(msg(2, 3, 2, Body::VoteResponse { granted: false }))
        .unwrap();
    let waited = Options::default().election_ticks_min - 1;
    for _ in 0..waited {
        r.handle_tick().unwrap();
    }
    drain(&mut r);
    assert_eq!(r.election_elapsed(), waited);
    r.handle_message(msg(
        2,
        3,
        3,
        Body::Vote {
            last_log: LogId::ZERO,
        },
    ))
    .unwrap();
    assert!(sent(&drain(&mut r)).contains(&msg(3, 2, 3, Body::VoteResponse { granted: false })));
    assert_eq!(r.role(), Role::Follower);
    assert_eq!(
        r.election_elapsed(),
        waited,
        "the refused candidate did not reset the timer"
    );
    // A granted vote does.
    r.handle_message(msg(
        1,
        3,
        4,
        Body::Vote {
            last_log: LogId::new(1, 1),
        },
    ))
    .unwrap();
    assert!(sent(&drain(&mut r)).contains(&msg(3, 1, 4, Body::VoteResponse { granted: true })));
    assert_eq!(r.election_elapsed(), 0);
}

#[test]
fn vote_is_granted_once_per_term_and_only_to_an_up_to_date_log() {
    // Raft §5.2 (one vote per term) and §5.4.1 (election restriction).
    let mut r = core(3);
    let append = Body::Append {
        prev: LogId::ZERO,
        entries: vec![entry(1, 1)],
        commit: 0,
        seq: 0,
    };
    r.handle_message(msg(1, 3, 1, append)).unwrap();
    sync(&mut r);
    for _ in 0..2 * Options::default().election_ticks_min {
        r.handle_tick().unwrap();
    }
    drain(&mut r);
    r.handle_message(msg(
        2,
        3,
        2,
        Body::Vote {
            last_log: LogId::ZERO,
        },
    ))
    .unwrap();
    let denied = msg(3, 2, 2, Body::VoteResponse { granted: false });
    assert!(sent(&drain(&mut r)).contains(&denied), "stale log denied");
    r.handle_message(msg(
        1,
        3,
        2,
        Body::Vote {
            last_log: LogId::new(1, 1),
        },
    ))
    .unwrap();
    assert!(sent(&drain(&mut r)).contains(&msg(3, 1, 2, Body::VoteResponse { granted: true })));
    assert_eq!(
        r.log().hard_state(),
        HardState {
            term: 2,
            vote: Some(1)
        }
    );
    r.handle_message(msg(
        2,
        3,
        2,
        Body::Vote {
            last_log: LogId::new(1, 1),
        },
    ))
    .unwrap();
    assert!(sent(&drain(&mut r)).contains(&msg(3, 2, 2, Body::VoteResponse { granted: false })));
}

#[test]
fn stale_leader_learns_the_newer_term_and_steps_down() {
    // Raft §5.1: a server with a stale term reverts to follower on seeing a
    // newer one.
    let mut r = leader();
    let reject = AppendResult::Reject {
        rejected_prev: 0,
        hint_index: 0,
        hint_term: None,
    };
    r.handle_message(msg(
        2,
        1,
        5,
        Body::AppendResponse {
            result: reject,
            seq: 0,
        },
    ))
    .unwrap();
    let effects = drain(&mut r);
    assert!(effects.contains(&Effect::LostLeadership { term: 5 }));
    assert_eq!(r.role(), Role::Follower);
    assert_eq!(r.term(), 5);
    assert_eq!(
        r.log().hard_state(),
        HardState {
            term: 5,
            vote: None
        }
    );
}

#[test]
fn read_index_waits_for_a_quorum_to_confirm_leadership() {
    // Thesis §6.4: a read is served at the commit index once a majority has
    // acknowledged a heartbeat sent after the read arrived.
    let mut r = leader();
    r.handle_message(msg(
        2,
        1,
        1,
        Body::AppendResponse {
            result: AppendResult::Success { match_index: 1 },
            seq: 0,
        },
    ))
    .unwrap();
    sync(&mut r);
    r.read_index(42).unwrap();
    let effects = drain(&mut r);
    let heartbeats = sent(&effects);
    assert_eq!(heartbeats.len(), 2);
    assert!(heartbeats
        .iter()
        .all(|m| matches!(m.body, Body::Heartbeat { seq: 1, .. })));
    // An answer to an older heartbeat does not confirm the read.
    r.handle_message(msg(
        2,
        1,
        1,
        Body::HeartbeatResponse {
            match_index: 1,
            seq: 0,
        },
    ))
    .unwrap();
    assert!(!drain(&mut r)
        .iter()
        .any(|e| matches!(e, Effect::ReadReady { .. })));
    r.handle_message(msg(
        3,
        1,
        1,
        Body::HeartbeatResponse {
            match_index: 1,
            seq: 1,
        },
    ))
    .unwrap();
    assert!(drain(&mut r).contains(&Effect::ReadReady { ctx: 42, index: 1 }));
}

#[test]
fn check_quorum_does_not_count_entries_proposed_during_the_period() {
    // Thesis §6.2: CheckQuorum deposes a leader that a majority no longer
    // follows. A follower that held the whole log when the period began
    // and answered throughout still follows, even if the leader proposed
    // an entry just before the period ended and its acknowledgement is in
    // flight.
    let mut r = leader();
    let ack = |r: &mut Raft<SimLog>, body: Body| {
        r.handle_message(msg(2, 1, 1, body)).unwrap();
        drain(r);
    };
    ack(
        &mut r,
        Body::AppendResponse {
            result: AppendResult::Success { match_index: 1 },
            seq: 0,
        },
    );
    sync(&mut r);
    let period = Options::default().election_ticks_min;
    // Ends the period in which the barrier was acknowledged: follower 2
    // holds the leader's whole log from here.
    for _ in 0..period {
        r.handle_tick().unwrap();
        drain(&mut r);
        ack(
            &mut r,
            Body::HeartbeatResponse {
                match_index: 1,
                seq: 0,
            },
        );
    }
    assert_eq!(r.role(), Role::Leader);
    for tick in 0..period {
        if tick == period - 1 {
            r.propose(Bytes::from_static(b"late")).unwrap();
            sync(&mut r);
        }
        r.handle_tick().unwrap();
        drain(&mut r);
        if tick < period - 1 {
            ack(
                &mut r,
                Body::HeartbeatResponse {
                    match_index: 1,
                    seq: 0,
                },
            );
        }
    }
    assert_eq!(
        r.role(),
        Role::Leader,
        "a follower owed only the late entry still follows"
    );
    // A follower that neither answers nor takes the late entry in the next
    // period no longer counts, and the leader steps down.
    for _ in 0..period {
        r.handle_tick().unwrap();
        drain(&mut r);
    }
    assert_eq!(r.role(), Role::Follower);
}

#[test]
fn uncommitted_bytes_are_bounded_and_a_larger_proposal_is_refused() {
    // Every follower's log must hold the leader's uncommitted entries and
    // a new leader's barrier (§5.4.2 needs an entry of the new term): the
    // leader bounds their bytes, and refuses for good a proposal that
    // alone exceeds the bound (it could never be held with that room).
    let opts = Options {
        uncommitted_bytes_max: 100,
        ..Options::default()
    };
    let mut r = core_with(1, &[1, 2, 3], opts);
    time_out(&mut r);
    r.handle_message(msg(2, 1, 1, Body::PreVoteResponse { granted: true }))
        .unwrap();
    r.handle_message(msg(2, 1, 1, Body::VoteResponse { granted: true }))
        .unwrap();
    drain(&mut r);
    assert_eq!(r.role(), Role::Leader);
    let big = [Bytes::from(vec![1u8; 60]), Bytes::from(vec![1u8; 41])];
    assert!(matches!(
        r.propose_batch(&big),
        Err(crate::raft::ProposeError::TooLarge {
            size_bytes: 101,
            max_bytes: 100
        })
    ));
    assert_eq!(r.log().last_id().index, 1, "nothing of it was appended");
    r.propose(Bytes::from(vec![1u8; 100])).unwrap();
    assert!(matches!(
        r.propose(Bytes::from_static(b"x")),
        Err(crate::raft::ProposeError::Backpressure { .. })
    ));
    // Once a majority holds everything, the bound frees up.
    sync(&mut r);
    r.handle_message(msg(
        2,
        1,
        1,
        Body::AppendResponse {
            result: AppendResult::Success { match_index: 2 },
            seq: 0,
        },
    ))
    .unwrap();
    drain(&mut r);
    assert_eq!(r.commit_index(), 2);
    r.propose(Bytes::from(vec![2u8; 60])).unwrap();
    r.propose(Bytes::from(vec![3u8; 40])).unwrap();
    assert!(r.propose(Bytes::from_static(b"y")).is_err());
}

#[test]
fn read_index_is_refused_before_the_barrier_commits() {
    let mut r = leader();
    assert!(matches!(
        r.read_index(1),
        Err(crate::raft::ReadError::BarrierPending)
    ));
}

#[test]
fn malformed_append_is_dropped() {
    let mut r = core(2);
    // Entry indexes do not follow prev.
    let bad = Body::Append {
        prev: LogId::ZERO,
        entries: vec![entry(2, 1)],
        commit: 9,
        seq: 0,
    };
    r.handle_message(msg(1, 2, 1, bad)).unwrap();
    // Entry term above the sender's term.
    let bad = Body::Append {
        prev: LogId::ZERO,
        entries: vec![entry(1, 7)],
        commit: 0,
        seq: 0,
    };
    r.handle_message(msg(1, 2, 1, bad)).unwrap();
    assert_eq!(r.last_log_id(), LogId::ZERO);
    assert_eq!(r.commit_index(), 0);
}

#[test]
fn lagging_follower_behind_the_released_prefix_needs_a_snapshot() {
    // Raft §7: entries a follower needs were released after a snapshot.
    let mut r = leader();
    let ack = AppendResult::Success { match_index: 1 };
    r.handle_message(msg(
        3,
        1,
        1,
        Body::AppendResponse {
            result: ack,
            seq: 0,
        },
    ))
    .unwrap();
    for _ in 0..5 {
        r.propose(Bytes::from_static(b"x")).unwrap();
    }
    drain(&mut r);
    let ack = AppendResult::Success { match_index: 6 };
    r.handle_message(msg(
        2,
        1,
        1,
        Body::AppendResponse {
            result: ack,
            seq: 0,
        },
    ))
    .unwrap();
    sync(&mut r);
    assert_eq!(r.commit_index(), 6);
    r.compact(6).unwrap();
    // Follower 3 lost the appends after entry 1 and rejects the next one.
    let reject = AppendResult::Reject {
        rejected_prev: 1,
        hint_index: 2,
        hint_term: None,
    };
    r.handle_message(msg(
        3,
        1,
        1,
        Body::AppendResponse {
            result: reject,
            seq: 0,
        },
    ))
    .unwrap();
    assert!(drain(&mut r).contains(&Effect::SnapshotNeeded { to: 3 }));
}

#[test]
fn a_stale_leader_steps_down_before_accepting_a_snapshot() {
    // Raft §7 InstallSnapshot obeys the term rules of §5.1.
    let mut r = leader();
    assert!(r.accept_snapshot(2, 2).unwrap());
    assert_eq!(r.role(), Role::Follower);
    assert_eq!(r.term(), 2);
    assert!(!r.accept_snapshot(3, 1).unwrap(), "older term refused");
    let membership = Membership::new([1, 2, 3]).unwrap();
    r.handle_snapshot_installed(LogId::new(10, 2), membership)
        .unwrap();
    assert_eq!(r.commit_index(), 10);
    assert_eq!(r.last_log_id(), LogId::new(10, 2));
}

#[test]
fn a_snapshot_between_the_reported_commit_and_the_commit_moves_the_report() {
    // Raft §7 with durability: a follower learns that entries are committed
    // (the leader's commit index) before its own log holds them durably, so
    // it reports them to the state machine only later. A snapshot that
    // lands in between puts the state machine past the report: the core
    // must move the report with it, or the state machine's next `compact`
    // releases entries the core never reported (replica seed 9707076).
    let mut r = core(2);
    let append = Body::Append {
        prev: LogId::ZERO,
        entries: (1..=10).map(|i| entry(i, 1)).collect(),
        commit: 10,
        seq: 1,
    };
    r.handle_message(msg(1, 2, 1, append)).unwrap();
    let effects = drain(&mut r);
    assert!(
        !effects
            .iter()
            .any(|e| matches!(e, Effect::Committed { .. })),
        "nothing is reported before the log is durable: {effects:?}"
    );
    assert_eq!(r.commit_index(), 10);
    assert_eq!(r.commit_reported(), 0);

    assert!(r.accept_snapshot(1, 1).unwrap());
    let membership = Membership::new([1, 2, 3]).unwrap();
    r.handle_snapshot_installed(LogId::new(8, 1), membership)
        .unwrap();
    assert_eq!(r.commit_reported(), 8, "the state machine holds 8");
    assert_eq!(r.commit_index(), 10, "what the leader said still holds");
    assert_eq!(r.log().snapshot_id(), LogId::new(8, 1));
    assert_eq!(r.last_log_id(), LogId::new(10, 1), "9 and 10 are kept");
    // The state machine may release what it holds.
    r.compact(8).unwrap();
    // Once the log is durable, the rest is reported, once.
    let effects = sync(&mut r);
    let reported: Vec<&Effect> = effects
        .iter()
        .filter(|e| matches!(e, Effect::Committed { .. }))
        .collect();
    assert_eq!(reported, vec![&Effect::Committed { index: 10 }]);
    // A snapshot the state machine already passed changes nothing.
    let membership = Membership::new([1, 2, 3]).unwrap();
    r.handle_snapshot_installed(LogId::new(9, 1), membership)
        .unwrap();
    assert_eq!(r.commit_reported(), 10);
    assert_eq!(r.log().snapshot_id(), LogId::new(8, 1));
}

proptest::proptest! {
    /// Whatever peers send, the core neither panics nor breaks its own
    /// invariants (which it asserts after every call).
    #[test]
    fn arbitrary_peer_messages_never_panic(
        script in proptest::collection::vec((0u8..8, 1u64..4, 0u64..6, 0u64..8, 0u64..6, 0usize..4), 1..200)
    ) {
        let mut r = core(1);
        for (kind, from, term, index, entry_term, count) in script {
            let prev = LogId::new(index, entry_term);
            let entries: Vec<Entry> = (0..count as u64).map(|i| entry(index + 1 + i, entry_term + i / 2)).collect();
            let body = match kind {
                0 => Body::PreVote { last_log: prev },
                1 => Body::PreVoteResponse { granted: index % 2 == 0 },
                2 => Body::Vote { last_log: prev },
                3 => Body::VoteResponse { granted: index % 2 == 0 },
                4 => Body::Append { prev, entries, commit: index, seq: entry_term },
                5 => Body::AppendResponse {
                    result: if count % 2 == 0 {
                        AppendResult::Success { match_index: index }
                    } else {
                        AppendResult::Reject { rejected_prev: index, hint_index: entry_term, hint_term: Some(term) }
                    },
                    seq: index,
                },
                6 => Body::Heartbeat { commit: index, seq: entry_term },
                _ => Body::HeartbeatResponse { match_index: index, seq: entry_term },
            };
            r.handle_message(msg(from, 1, term, body)).unwrap();
            if index % 3 == 0 {
                r.handle_tick().unwrap();
            }
            if index % 4 == 0 {
                sync(&mut r);
            }
            drain(&mut r);
        }
    }
}

#[test]
fn a_follower_whose_snapshot_transfer_stalls_does_not_keep_a_leader_in_office() {
    // Thesis §6.2 with Raft §7: a follower in snapshot transfer counts for
    // CheckQuorum while its transfer moves. One whose chunks are all lost
    // while its heartbeat responses get through must not: the leader
    // could never commit with it, and its lease would keep the others
    // from electing a leader that can.
    let in_office = |transfer_moves: bool| -> Role {
        let mut r = leader();
        let append_ok = |r: &mut Raft<SimLog>, from: NodeId, match_index: u64| {
            let result = AppendResult::Success { match_index };
            r.handle_message(msg(from, 1, 1, Body::AppendResponse { result, seq: 0 }))
                .unwrap();
        };
        append_ok(&mut r, 3, 1);
        for _ in 0..5 {
            r.propose(Bytes::from_static(b"x")).unwrap();
        }
        drain(&mut r);
        append_ok(&mut r, 2, 6);
        sync(&mut r);
        r.compact(6).unwrap();
        let result = AppendResult::Reject {
            rejected_prev: 1,
            hint_index: 2,
            hint_term: None,
        };
        r.handle_message(msg(3, 1, 1, Body::AppendResponse { result, seq: 0 }))
            .unwrap();
        assert!(drain(&mut r).contains(&Effect::SnapshotNeeded { to: 3 }));
        // Follower 2 falls silent; follower 3 answers every heartbeat.
        for _ in 0..2 * Options::default().election_ticks_min {
            r.handle_tick().unwrap();
            drain(&mut r);
            let body = Body::HeartbeatResponse {
                match_index: 1,
                seq: 0,
            };
            r.handle_message(msg(3, 1, 1, body)).unwrap();
            if transfer_moves {
                r.handle_snapshot_progress(3);
            }
            drain(&mut r);
        }
        r.role()
    };
    assert_eq!(in_office(true), Role::Leader, "a moving transfer counts");
    assert_eq!(in_office(false), Role::Follower, "a stalled one does not");
}
