//! Crash safety of apply, over the in-memory tree with POSIX crash
//! semantics: for every delta of a random history and for every step n of
//! its apply (each mutation and each sync), the follower crashes at step n
//! (losing a random subset of unsynced writes and entries), restarts,
//! re-applies from its durable applied index, and must converge on the
//! leader's bytes. A second crash during recovery is injected too.

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

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(24), ..ProptestConfig::default() })]

    #[test]
    fn crash_at_every_step_of_apply_then_reapply_converges(
        commands in prop::collection::vec(prop::collection::vec(app_op(), 1..5), 1..6),
        seed in any::<u64>(),
        second_crash in any::<u16>(),
    ) {
        let deltas = history(&commands, seed);
        let entries: Vec<Vec<u8>> = deltas.iter().flat_map(|(c, _)| c.parts.iter().map(|p| p.to_vec())).collect();
        // The follower before each delta, and the index of each delta's last part.
        let (mut follower, _) = Engine::open(MemTree::new(seed ^ 0xF), config()).unwrap();
        let mut applied = 0u64;
        for (k, (captured, want)) in deltas.iter().enumerate() {
            let last = applied + captured.parts.len() as u64;
            let pre_tree = follower.into_tree();
            for step in 0.. {
                let mut tree = pre_tree.clone();
                // Re-open on a copy of the durable pre-state (open itself must not crash here).
                tree.crash_after_ops(u64::MAX);
                let (mut engine, _) = Engine::open(tree, config()).unwrap();
                let start_ops = engine.tree().ops_total();
                engine.tree().crash_after_ops(step);
                match feed(&mut engine, &entries, applied + 1, last) {
                    Ok(()) => {
                        check(&mut engine, want, &format!("delta {k} without crash"));
                        if std::env::var("DELTA_CRASH_VERBOSE").is_ok() {
                            eprintln!("delta {k}: {} parts, converged after crashes at steps 0..{step}", captured.parts.len());
                        }
                        break;
                    }
                    Err(err) => prop_assert!(is_crash(&err), "unexpected error {err}"),
                }
                prop_assert!(engine.tree().ops_total() - start_ops <= step);
                // Crash, restart, maybe crash again during recovery, restart, re-apply.
                let mut tree = engine.into_tree();
                tree.crash();
                tree.crash_after_ops(second_crash as u64 % 40);
                let mut tree = match Engine::open_or_return(tree, config()) {
                    Err((err, tree)) => {
                        prop_assert!(is_crash(&err), "unexpected error in restart {err}");
                        tree
                    }
                    Ok((mut engine, report)) => {
                        if let Err(err) = feed(&mut engine, &entries, report.applied_index + 1, last) {
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
                feed(&mut engine, &entries, report.applied_index + 1, last).unwrap();
                prop_assert!(engine.status().can_lead());
                check(&mut engine, want, &format!("delta {k}, crash at step {step}"));
            }
            // Advance the follower without crashes.
            let (mut engine, _) = Engine::open(pre_tree, config()).unwrap();
            feed(&mut engine, &entries, applied + 1, last).unwrap();
            follower = engine;
            applied = last;
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
