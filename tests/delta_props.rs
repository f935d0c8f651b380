//! Property tests of the delta engine with a random application, over the
//! in-memory tree (the simulator's) and over real files (inotify, memmap2,
//! fsync thread): a follower that applies the leader's captured deltas holds
//! byte-identical files; the leader's own committed state follows; rollback
//! restores the committed state exactly; the state hashes are those of the
//! trees.

mod delta_common;

use std::collections::VecDeque;

use bunker::delta::mem::Listing;
use bunker::delta::{Applied, Captured, Engine, EngineConfig, FileTree, MemTree, Mode, RealTree};
use delta_common::*;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Step {
    /// The application runs a command; the leader captures it.
    Cmd(Vec<AppOp>),
    /// The oldest captured delta commits: leader and follower apply it.
    Commit,
    /// The application changes things, then leadership is lost.
    Rollback(Vec<AppOp>),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => prop::collection::vec(app_op(), 1..6).prop_map(Step::Cmd),
        3 => Just(Step::Commit),
        1 => prop::collection::vec(app_op(), 0..4).prop_map(Step::Rollback),
    ]
}

fn config() -> EngineConfig {
    EngineConfig {
        // Small parts so that big writes exercise split deltas.
        max_part_bytes: 16 * 1024,
        snapshot_chunk_bytes: 16 * 1024,
        ..EngineConfig::default()
    }
}

fn base_listing<T: FileTree>(engine: &mut Engine<T>) -> Listing {
    let base = engine.base_dir().to_string();
    list(engine.tree(), &base)
}

fn commit<T: FileTree>(
    leader: &mut Engine<T>,
    follower: &mut Engine<T>,
    index: &mut u64,
    captured: &Captured,
    want: &Listing,
) {
    let count = captured.parts.len();
    for (i, part) in captured.parts.iter().enumerate() {
        *index += 1;
        let on_leader = leader.apply(*index, 1, part).expect("leader apply");
        let on_follower = follower.apply(*index, 1, part).expect("follower apply");
        if i + 1 < count {
            assert_eq!(on_leader, Applied::Staged);
            assert_eq!(on_follower, Applied::Staged);
        } else {
            assert_eq!(
                on_leader,
                Applied::Delta {
                    own: !captured.is_empty()
                }
            );
            assert_eq!(on_follower, Applied::Delta { own: false });
        }
    }
    assert_same("leader base after commit", &base_listing(leader), want);
    assert_same("follower base after apply", &base_listing(follower), want);
    assert_same(
        "follower live (mirror) after apply",
        &list(follower.tree(), "live"),
        want,
    );
    assert_eq!(follower.status().state_hash, hash_of(want));
    assert_eq!(leader.status().state_hash, hash_of(want));
}

fn scenario<T: FileTree>(
    leader: &mut Engine<T>,
    follower: &mut Engine<T>,
    steps: &[Step],
    run_app: &mut dyn FnMut(&mut Engine<T>, &[AppOp]),
) {
    let mut queue: VecDeque<(Captured, Listing)> = VecDeque::new();
    let mut index = 0u64;
    let setup = [Step::Cmd(setup_ops())];
    for step in setup.iter().chain(steps) {
        match step {
            Step::Cmd(ops) => {
                let before = leader.speculative_hash();
                run_app(leader, ops);
                let captured = leader.capture().expect("capture");
                let live = list(leader.tree(), "live");
                assert_eq!(
                    captured.pre_hash, before,
                    "delta must start at the previous speculative state"
                );
                assert_eq!(
                    captured.post_hash,
                    hash_of(&live),
                    "post hash is the hash of the working copy"
                );
                assert!(captured
                    .parts
                    .iter()
                    .all(|p| p.len() <= config().max_part_bytes));
                queue.push_back((captured, live));
            }
            Step::Commit => {
                if let Some((captured, want)) = queue.pop_front() {
                    commit(leader, follower, &mut index, &captured, &want);
                }
            }
            Step::Rollback(ops) => {
                run_app(leader, ops);
                leader.rollback().expect("rollback");
                queue.clear();
                let base = base_listing(leader);
                assert_same(
                    "leader live after rollback",
                    &list(leader.tree(), "live"),
                    &base,
                );
                assert_eq!(leader.status().mode, Mode::Mirrored);
                assert_eq!(leader.speculative_hash(), hash_of(&base));
            }
        }
    }
    while let Some((captured, want)) = queue.pop_front() {
        commit(leader, follower, &mut index, &captured, &want);
    }
    assert_eq!(leader.status().mode, Mode::Mirrored);
    let base = base_listing(leader);
    assert_same(
        "leader live at the end",
        &list(leader.tree(), "live"),
        &base,
    );
}

fn mem_app(engine: &mut Engine<MemTree>, ops: &[AppOp]) {
    let mut app = MemApp {
        tree: engine.tree(),
        root: "live",
    };
    for op in ops {
        run_op(&mut app, op);
    }
}

fn real_app(engine: &mut Engine<RealTree>, ops: &[AppOp]) {
    let root = engine.tree().path("live");
    let mut app = RealApp { root: &root };
    for op in ops {
        run_op(&mut app, op);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(64), ..ProptestConfig::default() })]

    #[test]
    fn mem_tree_capture_apply_rollback(steps in prop::collection::vec(step(), 1..40), seed in any::<u64>()) {
        let (mut leader, _) = Engine::open(MemTree::new(seed), config()).unwrap();
        let (mut follower, _) = Engine::open(MemTree::new(seed ^ 1), config()).unwrap();
        scenario(&mut leader, &mut follower, &steps, &mut mem_app);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(24), ..ProptestConfig::default() })]

    #[test]
    fn real_tree_capture_apply_rollback(steps in prop::collection::vec(step(), 1..30)) {
        let dir = tempfile::tempdir().unwrap();
        let (mut leader, _) = Engine::open(RealTree::open(&dir.path().join("leader")).unwrap(), config()).unwrap();
        let (mut follower, _) = Engine::open(RealTree::open(&dir.path().join("follower")).unwrap(), config()).unwrap();
        scenario(&mut leader, &mut follower, &steps, &mut real_app);
    }
}

/// Writes within one timestamp tick and equal-size overwrites are caught by
/// notification and page hashes, not by mtime.
#[test]
fn same_tick_equal_size_overwrite_is_captured() {
    let dir = tempfile::tempdir().unwrap();
    let (mut leader, _) = Engine::open(RealTree::open(dir.path()).unwrap(), config()).unwrap();
    let live = leader.tree().path("live");
    std::fs::write(live.join("db"), vec![1u8; 10_000]).unwrap();
    let first = leader.capture().unwrap();
    assert!(!first.is_empty());
    for round in 0..50u8 {
        // Same size, same (coarse) mtime tick: only the content differs.
        let mut bytes = vec![1u8; 10_000];
        bytes[5000] = round.wrapping_add(2);
        std::fs::write(live.join("db"), &bytes).unwrap();
        let captured = leader.capture().unwrap();
        assert_eq!(
            captured.stats.data_bytes, 1,
            "round {round}: exactly the changed byte"
        );
        assert_ne!(captured.pre_hash, captured.post_hash);
    }
}

/// A sparse extension of a large size costs pages, not bytes, and the delta
/// stays small.
#[test]
fn sparse_extension_delta_is_small() {
    let (mut leader, _) = Engine::open(MemTree::new(7), config()).unwrap();
    let (mut follower, _) = Engine::open(MemTree::new(8), config()).unwrap();
    leader.tree().create_file("live/f", 0o644).unwrap();
    leader.tree().write_at("live/f", 0, b"hello").unwrap();
    leader.tree().set_len("live/f", 64 << 20).unwrap();
    leader
        .tree()
        .write_at("live/f", (64 << 20) - 3, b"end")
        .unwrap();
    let captured = leader.capture().unwrap();
    assert!(captured.stats.encoded_bytes < 400, "{:?}", captured.stats);
    for part in &captured.parts {
        follower.apply(1, 1, part).unwrap();
    }
    let want = list(leader.tree(), "live");
    assert_same("follower", &list(follower.tree(), "live"), &want);
}
