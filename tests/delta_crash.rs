//! Crash safety of apply and checkpoints, over the in-memory tree with
//! POSIX crash semantics. Applies are not synced (the log is the durable
//! copy); a checkpoint syncs what was written and then records its index.
//! A crash anywhere leaves the last checkpoint's state plus any mix of the
//! effects of later entries; replaying the log from the checkpoint must
//! reach the leader's bytes from every such state (random crashes and, for
//! short histories, every subset of the unsynced mutations).

mod delta_common;

use bunker::delta::mem::Listing;
use bunker::delta::{Captured, Engine, EngineConfig, EngineError, MemTree, TreeError};
use delta_common::*;
use proptest::prelude::*;

fn config() -> EngineConfig {
    EngineConfig {
        max_part_bytes: 16 * 1024,
        ..EngineConfig::default()
    }
}

/// Produces a history of deltas with the leader, and the expected state after each.
fn history(commands: &[Vec<AppOp>], seed: u64) -> Vec<(Captured, Listing)> {
    let (mut leader, _) = Engine::open(MemTree::new(seed), config()).unwrap();
    let mut out = Vec::new();
    let mut index = 0u64;
    let setup = [setup_ops()];
    for ops in setup.iter().chain(commands) {
        let mut app = MemApp {
            tree: leader.tree(),
            root: "live",
        };
        for op in ops {
            run_op(&mut app, op);
        }
        let captured = leader.capture().unwrap();
        for part in &captured.parts {
            index += 1;
            leader.apply(index, 1, part).unwrap();
        }
        let want = list(leader.tree(), "live");
        out.push((captured, want));
    }
    out
}

/// Feeds entries `from..` of the flattened history (parts are entries).
fn feed(
    engine: &mut Engine<MemTree>,
    entries: &[Vec<u8>],
    from: u64,
    upto: u64,
) -> Result<(), EngineError> {
    for index in from..=upto {
        engine.apply(index, 1, &entries[index as usize - 1])?;
    }
    Ok(())
}

fn is_crash(err: &EngineError) -> bool {
    matches!(err, EngineError::Storage(TreeError::Crashed))
}

fn check(engine: &mut Engine<MemTree>, want: &Listing, what: &str) {
    let base = engine.base_dir().to_string();
    assert_same(&format!("{what}: base"), &list(engine.tree(), &base), want);
    assert_same(&format!("{what}: live"), &list(engine.tree(), "live"), want);
}

/// Makes a checkpoint of `engine` durable (its sync runs at the first
/// poll on the in-memory tree), as the pipeline's tick does.
fn checkpoint(engine: &mut Engine<MemTree>) -> Result<(), EngineError> {
    if engine.checkpoint_start()? {
        while engine.checkpoint_poll()?.is_none() {}
    }
    Ok(())
}

/// Applies entries `from..=upto` with the pipeline's checkpoint pump: a
/// checkpoint starts after every `every` entries and advances one step
/// after each later entry. Returns the last index applied.
fn feed_with_checkpoints(
    engine: &mut Engine<MemTree>,
    entries: &[Vec<u8>],
    from: u64,
    upto: u64,
    every: u64,
    applied: &mut u64,
) -> Result<(), EngineError> {
    for index in from..=upto {
        engine.apply(index, 1, &entries[index as usize - 1])?;
        *applied = index;
        engine.checkpoint_poll()?;
        if index % every == 0 {
            engine.checkpoint_start()?;
        }
    }
    Ok(())
}

/// The committed state after the delta that ends at `index`.
fn want_at(deltas: &[(Captured, Listing)], index: u64) -> &Listing {
    let mut end = 0;
    for (captured, want) in deltas {
        end += captured.parts.len() as u64;
        if end >= index {
            return want;
        }
    }
    &deltas.last().expect("a history").1
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(48), ..ProptestConfig::default() })]

    /// Durability comes from the log: applies are not synced, checkpoints
    /// sync the state and then record it. A crash anywhere in a run of
    /// applies and checkpoints (mid-write, mid-checkpoint, mid-record)
    /// leaves the last checkpoint's state plus any mix of later effects
    /// (a random subset of unsynced writes, entries and modes, the last
    /// kept write maybe torn); a second crash may hit the restart or the
    /// replay. Replaying the entries after the checkpoint converges on
    /// the leader's bytes, with the post-state checks on again.
    #[test]
    fn crash_anywhere_then_replay_from_the_checkpoint_converges(
        commands in prop::collection::vec(prop::collection::vec(app_op(), 1..5), 1..8),
        seed in any::<u64>(),
        every in 1u64..5,
        crash_at in any::<u32>(),
        second_crash in any::<u16>(),
    ) {
        let deltas = history(&commands, seed);
        let entries: Vec<Vec<u8>> = deltas.iter().flat_map(|(c, _)| c.parts.iter().map(|p| p.to_vec())).collect();
        let last = entries.len() as u64;
        // Count the steps of a run without a crash, then crash at one.
        let (mut dry, _) = Engine::open(MemTree::new(seed ^ 0xF), config()).unwrap();
        let start = dry.tree().ops_total();
        feed_with_checkpoints(&mut dry, &entries, 1, last, every, &mut 0).unwrap();
        let steps = dry.tree().ops_total() - start;
        let (mut follower, _) = Engine::open(MemTree::new(seed ^ 0xF), config()).unwrap();
        follower.tree().crash_after_ops(u64::from(crash_at) % (steps + 1));
        let mut applied = 0;
        if let Err(err) = feed_with_checkpoints(&mut follower, &entries, 1, last, every, &mut applied) {
            prop_assert!(is_crash(&err), "unexpected error {err}");
        }
        let checkpoint = follower.checkpoint_index();
        prop_assert!(checkpoint <= applied);
        // The log held every entry up to the one being applied.
        let bound = (applied + 1).min(last);
        let mut tree = follower.into_tree();
        tree.crash();
        tree.crash_after_ops(u64::from(second_crash) % 60);
        let mut tree = match Engine::open_or_return(tree, config()) {
            Err((err, tree)) => {
                prop_assert!(is_crash(&err), "unexpected error in restart {err}");
                tree
            }
            Ok((mut engine, report)) => {
                prop_assert!(report.applied_index >= checkpoint, "a durable checkpoint was lost");
                engine.set_replay_bound(bound);
                if let Err(err) = feed_with_checkpoints(&mut engine, &entries, report.applied_index + 1, last, every, &mut 0) {
                    prop_assert!(is_crash(&err), "unexpected error in recovery {err}");
                }
                engine.into_tree()
            }
        };
        if tree.is_crashed() {
            tree.crash();
        }
        tree.crash_after_ops(u64::MAX);
        let (mut engine, report) = Engine::open(tree, config()).unwrap();
        prop_assert!(report.applied_index <= last);
        engine.set_replay_bound(last);
        feed(&mut engine, &entries, report.applied_index + 1, last).unwrap();
        prop_assert!(engine.status().can_lead(), "recovered and verified");
        check(&mut engine, want_at(&deltas, last), "after replay");
    }

    /// A server still replaying its log after a crash sends its state as
    /// it is, with its replay bound: the receiver installs it as a
    /// recovering state (and, restarted, keeps the bound from `meta`), and
    /// replaying the same entries reaches the leader's bytes on both.
    #[test]
    fn a_snapshot_of_a_recovering_state_replays_to_the_same_bytes(
        commands in prop::collection::vec(prop::collection::vec(app_op(), 1..4), 2..6),
        seed in any::<u64>(),
        restart_receiver in any::<bool>(),
    ) {
        let deltas = history(&commands, seed);
        let entries: Vec<Vec<u8>> = deltas.iter().flat_map(|(c, _)| c.parts.iter().map(|p| p.to_vec())).collect();
        let last = entries.len() as u64;
        let setup_end = deltas[0].0.parts.len() as u64;
        let (mut source, _) = Engine::open(MemTree::new(seed ^ 0xA), config()).unwrap();
        feed(&mut source, &entries, 1, setup_end).unwrap();
        checkpoint(&mut source).unwrap();
        feed(&mut source, &entries, setup_end + 1, last).unwrap();
        let mut tree = source.into_tree();
        tree.crash();
        let (mut source, report) = Engine::open(tree, config()).unwrap();
        prop_assert_eq!(report.applied_index, setup_end);
        source.set_replay_bound(last);
        let recovering = source.status().recovering;
        let (mut receiver, _) = Engine::open(MemTree::new(seed ^ 0xB), config()).unwrap();
        let mut snapshot = source.snapshot_begin().unwrap();
        let mut install = receiver.install_begin(snapshot.id()).unwrap();
        while let Some(chunk) = source.snapshot_next(&mut snapshot).unwrap() {
            receiver.install_chunk(&mut install, &chunk).unwrap();
        }
        source.snapshot_end(snapshot);
        prop_assert_eq!(receiver.status().recovering, recovering);
        prop_assert_eq!(receiver.status().can_lead(), !recovering);
        if restart_receiver {
            let (engine, report) = Engine::open(receiver.into_tree(), config()).unwrap();
            prop_assert_eq!(report.recovering, recovering);
            receiver = engine;
            // Its own log ends at the snapshot: the bound from `meta` holds.
            receiver.set_replay_bound(setup_end);
        }
        feed(&mut source, &entries, setup_end + 1, last).unwrap();
        feed(&mut receiver, &entries, setup_end + 1, last).unwrap();
        prop_assert!(receiver.status().can_lead(), "recovered and verified");
        check(&mut source, want_at(&deltas, last), "source after replay");
        check(&mut receiver, want_at(&deltas, last), "receiver after replay");
    }

    /// For short histories, every state a crash can leave: each subset of
    /// the unsynced mutations made since the checkpoint (file data, sizes,
    /// modes, directory entries; a rename kept or lost whole) is tried,
    /// and replaying from the checkpoint reaches the leader's bytes from
    /// each. Longer histories sample 1,024 subsets.
    #[test]
    fn every_crash_state_of_a_short_history_replays_to_the_same_bytes(
        commands in prop::collection::vec(prop::collection::vec(app_op(), 1..3), 1..4),
        seed in any::<u64>(),
    ) {
        let deltas = history(&commands, seed);
        let entries: Vec<Vec<u8>> = deltas.iter().flat_map(|(c, _)| c.parts.iter().map(|p| p.to_vec())).collect();
        let last = entries.len() as u64;
        let setup_end = deltas[0].0.parts.len() as u64;
        let (mut follower, _) = Engine::open(MemTree::new(seed ^ 0xD), config()).unwrap();
        feed(&mut follower, &entries, 1, setup_end).unwrap();
        checkpoint(&mut follower).unwrap();
        feed(&mut follower, &entries, setup_end + 1, last).unwrap();
        let tree = follower.into_tree();
        let n = tree.unsynced_count();
        let masks: Vec<u64> = if n <= 10 {
            (0..1u64 << n).collect()
        } else {
            let mut x = seed | 1;
            (0..1024).map(|_| { x ^= x << 13; x ^= x >> 7; x ^= x << 17; x }).collect()
        };
        for mask in masks {
            let mut crashed = tree.clone();
            crashed.crash_with(&mut |i| i >= 64 || mask >> i & 1 == 1);
            let (mut engine, report) = Engine::open(crashed, config()).unwrap();
            prop_assert_eq!(report.applied_index, setup_end);
            engine.set_replay_bound(last);
            feed(&mut engine, &entries, setup_end + 1, last).unwrap();
            prop_assert!(engine.status().can_lead());
            check(&mut engine, want_at(&deltas, last), &format!("crash state {mask:#x} of {n} mutations"));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(16), ..ProptestConfig::default() })]

    /// A storage failure in the middle of an apply (the tree loses what was
    /// not synced but the process lives on), then a retry on the same engine,
    /// converges too; the working copy is rebuilt by a rollback.
    #[test]
    fn storage_error_mid_apply_then_retry_converges(
        commands in prop::collection::vec(prop::collection::vec(app_op(), 1..5), 1..4),
        seed in any::<u64>(),
        fail_at in 0u64..60,
    ) {
        let deltas = history(&commands, seed);
        let entries: Vec<Vec<u8>> = deltas.iter().flat_map(|(c, _)| c.parts.iter().map(|p| p.to_vec())).collect();
        let (mut follower, _) = Engine::open(MemTree::new(seed ^ 0xE), config()).unwrap();
        follower.tree().crash_after_ops(fail_at);
        let last = entries.len() as u64;
        let mut next = 1u64;
        while next <= last {
            match follower.apply(next, 1, &entries[next as usize - 1]) {
                Ok(_) => next += 1,
                Err(err) => {
                    prop_assert!(is_crash(&err), "unexpected error {err}");
                    follower.tree().crash();
                    // Re-feed from the first part of the interrupted delta.
                    next = follower.status().state_index + 1;
                }
            }
        }
        follower.rollback().unwrap();
        let want = &deltas.last().unwrap().1;
        check(&mut follower, want, "after storage error and retry");
    }
}

/// A server still replaying its log after a crash may checkpoint (with
/// its replay bound) and release its log up to that checkpoint; a
/// snapshot older than the checkpoint (from a leader whose apply lags its
/// commit) must be refused, not installed: installing it would move the
/// checkpoint back below entries the log no longer holds (replica swarm
/// seed 404534515 panicked on "checkpoints only move forward").
#[test]
fn a_snapshot_behind_the_checkpoint_of_a_recovering_server_is_refused() {
    let write = |f, seed| AppOp::Write {
        f,
        offset: 0,
        len: 700,
        seed,
    };
    let commands = vec![vec![write(0, 1)], vec![write(1, 2)], vec![write(0, 3)]];
    let deltas = history(&commands, 7);
    let entries: Vec<Vec<u8>> = deltas
        .iter()
        .flat_map(|(c, _)| c.parts.iter().map(|p| p.to_vec()))
        .collect();
    let ends: Vec<u64> = deltas
        .iter()
        .scan(0, |end, (c, _)| {
            *end += c.parts.len() as u64;
            Some(*end)
        })
        .collect();
    let (old, checkpointed, last) = (ends[1], ends[2], ends[3]);

    // The source: its state (and snapshot) at `old`.
    let (mut source, _) = Engine::open(MemTree::new(1), config()).unwrap();
    feed(&mut source, &entries, 1, old).unwrap();

    // The receiver: checkpointed at `checkpointed`, crashed after applying
    // up to `last`, reopened and still replaying, with a checkpoint taken
    // while recovering.
    let (mut receiver, _) = Engine::open(MemTree::new(2), config()).unwrap();
    feed(&mut receiver, &entries, 1, old).unwrap();
    checkpoint(&mut receiver).unwrap();
    feed(&mut receiver, &entries, old + 1, last).unwrap();
    let mut tree = receiver.into_tree();
    // Every unsynced write survives: the files hold the last delta's
    // effects, so the replay of the second one does not end the recovery.
    tree.crash_with(&mut |_| true);
    let (mut receiver, _) = Engine::open(tree, config()).unwrap();
    receiver.set_replay_bound(last);
    feed(&mut receiver, &entries, old + 1, checkpointed).unwrap();
    assert!(receiver.status().recovering, "replaying up to {last}");
    checkpoint(&mut receiver).unwrap();
    assert_eq!(receiver.checkpoint_index(), checkpointed);

    let mut snapshot = source.snapshot_begin().unwrap();
    let mut install = receiver.install_begin(snapshot.id()).unwrap();
    let mut outcome = Ok(());
    while let Some(chunk) = source.snapshot_next(&mut snapshot).unwrap() {
        if let Err(e) = receiver.install_chunk(&mut install, &chunk) {
            outcome = Err(e);
            break;
        }
    }
    source.snapshot_end(snapshot);
    assert!(
        matches!(outcome, Err(EngineError::SnapshotBehind { index, .. }) if index == old),
        "{outcome:?}"
    );
    assert_eq!(receiver.checkpoint_index(), checkpointed, "kept");
    // It finishes its replay from its own log.
    feed(&mut receiver, &entries, checkpointed + 1, last).unwrap();
    assert!(receiver.status().can_lead(), "recovered and verified");
    check(
        &mut receiver,
        &deltas.last().unwrap().1,
        "receiver after replay",
    );
}
