//! Role changes: a deposed leader with a pending pipeline sees a foreign
//! delta commit, must roll back, and then follows; a restart never trusts the
//! working copy; unsupported file kinds are refused and rolled back.

mod delta_common;

use bunker::delta::mem::Listing;
use bunker::delta::{
    Applied, Engine, EngineConfig, EngineError, FileTree, MemTree, Mode, RealTree,
};
use delta_common::*;
use proptest::prelude::*;

fn config() -> EngineConfig {
    EngineConfig {
        max_part_bytes: 16 * 1024,
        ..EngineConfig::default()
    }
}

fn base_listing<T: FileTree>(engine: &mut Engine<T>) -> Listing {
    let base = engine.base_dir().to_string();
    list(engine.tree(), &base)
}

fn run(engine: &mut Engine<MemTree>, ops: &[AppOp]) {
    let mut app = MemApp {
        tree: engine.tree(),
        root: "live",
    };
    for op in ops {
        run_op(&mut app, op);
    }
}

fn apply_all(engine: &mut Engine<MemTree>, index: &mut u64, parts: &[bytes::Bytes]) -> Applied {
    let mut last = Applied::Skipped;
    for part in parts {
        *index += 1;
        last = engine.apply(*index, 1, part).unwrap();
    }
    last
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(64), ..ProptestConfig::default() })]

    #[test]
    fn deposed_leader_rolls_back_then_follows(
        old_leader_cmds in prop::collection::vec(prop::collection::vec(app_op(), 1..5), 1..5),
        new_leader_cmds in prop::collection::vec(prop::collection::vec(app_op(), 1..5), 1..4),
        committed_before in 0usize..3,
        seed in any::<u64>(),
    ) {
        let (mut a, _) = Engine::open(MemTree::new(seed), config()).unwrap();
        let (mut b, _) = Engine::open(MemTree::new(seed ^ 3), config()).unwrap();
        let (mut ia, mut ib) = (0u64, 0u64);
        // A leads: the setup command commits everywhere.
        run(&mut a, &setup_ops());
        let setup = a.capture().unwrap();
        apply_all(&mut a, &mut ia, &setup.parts);
        apply_all(&mut b, &mut ib, &setup.parts);
        // A runs a pipeline; some of it commits, the rest is speculative.
        let mut captured = Vec::new();
        for ops in &old_leader_cmds {
            run(&mut a, ops);
            captured.push(a.capture().unwrap());
        }
        for c in captured.iter().take(committed_before) {
            let applied = apply_all(&mut a, &mut ia, &c.parts);
            prop_assert!(matches!(applied, Applied::Delta { .. }), "{:?}", applied);
            apply_all(&mut b, &mut ib, &c.parts);
        }
        // A is deposed; B leads (its working copy mirrors its committed state).
        prop_assert_eq!(b.status().mode, Mode::Mirrored);
        prop_assert!(b.status().can_lead());
        let mut new_leader_nonempty = false;
        for ops in &new_leader_cmds {
            run(&mut b, ops);
            let c = b.capture().unwrap();
            new_leader_nonempty |= !c.is_empty();
            apply_all(&mut b, &mut ib, &c.parts);
            let on_a = apply_all(&mut a, &mut ia, &c.parts);
            if !c.is_empty() {
                prop_assert_eq!(on_a, Applied::Delta { own: false });
            }
        }
        prop_assert_eq!(base_listing(&mut a), base_listing(&mut b));
        let pending_left = captured.len() > committed_before
            && captured[committed_before..].iter().any(|c| !c.is_empty());
        if pending_left && new_leader_nonempty {
            prop_assert_eq!(a.status().mode, Mode::NeedsRollback);
        }
        if a.status().mode == Mode::NeedsRollback {
            prop_assert!(matches!(a.capture(), Err(EngineError::RollbackRequired)));
        }
        a.rollback().unwrap();
        let want = base_listing(&mut a);
        assert_same("deposed leader after rollback", &list(a.tree(), "live"), &want);
        // A follows B from now on, mirrored.
        run(&mut b, &[AppOp::Write { f: 0, offset: 5, len: 100, seed: 1 }]);
        let c = b.capture().unwrap();
        apply_all(&mut b, &mut ib, &c.parts);
        apply_all(&mut a, &mut ia, &c.parts);
        let want = base_listing(&mut b);
        assert_same("old leader base", &base_listing(&mut a), &want);
        assert_same("old leader live", &list(a.tree(), "live"), &want);
    }
}

/// A crash of a leader with speculative changes: the restart rebuilds the
/// working copy from the committed state only.
#[test]
fn restart_never_trusts_the_working_copy() {
    let (mut leader, _) = Engine::open(MemTree::new(11), config()).unwrap();
    let mut index = 0;
    run(&mut leader, &setup_ops());
    let setup = leader.capture().unwrap();
    apply_all(&mut leader, &mut index, &setup.parts);
    assert!(leader.checkpoint_start().unwrap());
    while leader.checkpoint_poll().unwrap().is_none() {}
    assert_eq!(leader.checkpoint_index(), index);
    run(
        &mut leader,
        &[
            AppOp::Big {
                f: 2,
                kib: 50,
                seed: 3,
            },
            AppOp::Remove { f: 0 },
        ],
    );
    let _speculative = leader.capture().unwrap();
    let want = base_listing(&mut leader);
    let mut tree = leader.into_tree();
    tree.crash();
    let (mut leader, report) = Engine::open(tree, config()).unwrap();
    assert_eq!(report.applied_index, index);
    assert!(!report.recovering);
    assert_same("base after restart", &base_listing(&mut leader), &want);
    assert_same("live after restart", &list(leader.tree(), "live"), &want);
    assert_eq!(leader.status().mode, Mode::Mirrored);
}

/// Symlinks and hard links are refused (inotify cannot follow them), and the
/// rollback removes them.
#[test]
fn unsupported_kinds_are_refused_and_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let (mut leader, _) = Engine::open(RealTree::open(dir.path()).unwrap(), config()).unwrap();
    let live = leader.tree().path("live");
    std::fs::write(live.join("data"), b"x").unwrap();
    leader.capture().unwrap();
    std::os::unix::fs::symlink("data", live.join("link")).unwrap();
    let err = leader.capture().unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::Unsupported {
                what: "symbolic link",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(leader.status().mode, Mode::NeedsRollback);
    leader.rollback().unwrap();
    assert!(std::fs::symlink_metadata(live.join("link")).is_err());
    assert!(
        std::fs::symlink_metadata(live.join("data")).is_err(),
        "never committed"
    );
    std::fs::write(live.join("data"), b"y").unwrap();
    std::fs::hard_link(live.join("data"), live.join("alias")).unwrap();
    let err = leader.capture().unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::Unsupported {
                what: "hard-linked file",
                ..
            }
        ),
        "{err}"
    );
    leader.rollback().unwrap();
    assert_eq!(std::fs::read_dir(&live).unwrap().count(), 0);
}
