//! Snapshots: a fuzzy copy streamed while the source keeps capturing and
//! applying, with lost chunks resumed, installs a tree byte-identical to the
//! source's committed state at the END index, after which the receiver
//! follows the log like any follower. Over the in-memory and the real tree.

mod delta_common;

use bunker::delta::mem::Listing;
use bunker::delta::{
    Engine, EngineConfig, EngineError, FileTree, InstallProgress, MemTree, RealTree,
};
use delta_common::*;
use proptest::prelude::*;

fn config() -> EngineConfig {
    EngineConfig {
        max_part_bytes: 16 * 1024,
        snapshot_chunk_bytes: 16 * 1024,
        ..EngineConfig::default()
    }
}

fn base_listing<T: FileTree>(engine: &mut Engine<T>) -> Listing {
    let base = engine.base_dir().to_string();
    list(engine.tree(), &base)
}

/// Runs one command on the source and commits it at once; returns its parts.
fn command<T: FileTree>(
    source: &mut Engine<T>,
    index: &mut u64,
    ops: &[AppOp],
    run_app: &mut dyn FnMut(&mut Engine<T>, &[AppOp]),
) -> Vec<(u64, Vec<u8>)> {
    run_app(source, ops);
    let captured = source.capture().unwrap();
    let mut entries = Vec::new();
    for part in &captured.parts {
        *index += 1;
        source.apply(*index, 1, part).unwrap();
        entries.push((*index, part.to_vec()));
    }
    entries
}

fn scenario<T: FileTree>(
    source: &mut Engine<T>,
    receiver: &mut Engine<T>,
    before: &[Vec<AppOp>],
    during: &[Vec<AppOp>],
    drops: &[bool],
    run_app: &mut dyn FnMut(&mut Engine<T>, &[AppOp]),
) {
    let mut index = 0u64;
    let mut log: Vec<(u64, Vec<u8>)> = Vec::new();
    for ops in std::iter::once(&setup_ops()).chain(before) {
        log.extend(command(source, &mut index, ops, run_app));
    }
    let mut snapshot = source.snapshot_begin().unwrap();
    let mut install = receiver.install_begin(snapshot.id()).unwrap();
    let mut during = during.iter();
    let mut chunk_no = 0usize;
    let (end_index, end_listing) = loop {
        // The source keeps working between chunks.
        if chunk_no % 2 == 1 {
            if let Some(ops) = during.next() {
                log.extend(command(source, &mut index, ops, run_app));
            }
        }
        let chunk = source
            .snapshot_next(&mut snapshot)
            .unwrap()
            .expect("END comes before the stream ends");
        chunk_no += 1;
        if drops.get(chunk_no).copied().unwrap_or(false) {
            // Lost in transit: a later chunk arrives out of order and is
            // refused; the sender resumes where the receiver is.
            let next = source.snapshot_next(&mut snapshot).unwrap();
            if let Some(next) = next {
                assert!(matches!(
                    receiver.install_chunk(&mut install, &next),
                    Err(EngineError::Snapshot(_))
                ));
            }
            source
                .snapshot_rewind(&mut snapshot, install.next_seq())
                .unwrap();
            continue;
        }
        match receiver.install_chunk(&mut install, &chunk).unwrap() {
            InstallProgress::NeedMore { .. } => {}
            InstallProgress::Installed { index: at, .. } => break (at, base_listing(source)),
        }
    };
    source.snapshot_end(snapshot);
    assert!(end_index <= index);
    assert_eq!(receiver.status().state_index, end_index);
    // The snapshot stands at the state the source had when its copy ended;
    // when that is the source's current state, compare the bytes now (the
    // installed hash was verified either way, and the catch-up below
    // compares the bytes in every case).
    if end_index == index {
        assert_same("installed snapshot", &base_listing(receiver), &end_listing);
    }
    assert_same(
        "receiver live after install",
        &list(receiver.tree(), "live"),
        &base_listing(receiver),
    );
    // The receiver now follows the log from the END index on.
    for ops in during {
        log.extend(command(source, &mut index, ops, run_app));
    }
    for (at, part) in log.iter().filter(|(at, _)| *at > end_index) {
        receiver.apply(*at, 1, part).unwrap();
    }
    let want = base_listing(source);
    assert_same("receiver after catching up", &base_listing(receiver), &want);
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

fn commands(max: usize) -> impl Strategy<Value = Vec<Vec<AppOp>>> {
    prop::collection::vec(prop::collection::vec(app_op(), 1..5), 0..max)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(48), ..ProptestConfig::default() })]

    #[test]
    fn mem_tree_snapshot_equals_source(
        before in commands(6),
        during in commands(12),
        drops in prop::collection::vec(prop::bool::weighted(0.15), 0..40),
        seed in any::<u64>(),
    ) {
        let (mut source, _) = Engine::open(MemTree::new(seed), config()).unwrap();
        let (mut receiver, _) = Engine::open(MemTree::new(seed ^ 2), config()).unwrap();
        scenario(&mut source, &mut receiver, &before, &during, &drops, &mut mem_app);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(12), ..ProptestConfig::default() })]

    #[test]
    fn real_tree_snapshot_equals_source(
        before in commands(4),
        during in commands(8),
        drops in prop::collection::vec(prop::bool::weighted(0.15), 0..40),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (mut source, _) = Engine::open(RealTree::open(&dir.path().join("s")).unwrap(), config()).unwrap();
        let (mut receiver, _) = Engine::open(RealTree::open(&dir.path().join("r")).unwrap(), config()).unwrap();
        scenario(&mut source, &mut receiver, &before, &during, &drops, &mut real_app);
    }
}

/// A diverged replica refuses to apply and recovers through a snapshot.
#[test]
fn divergence_is_reported_and_cleared_by_a_snapshot() {
    let (mut leader, _) = Engine::open(MemTree::new(1), config()).unwrap();
    let (mut follower, _) = Engine::open(MemTree::new(2), config()).unwrap();
    let mut index = 0u64;
    let first = command(&mut leader, &mut index, &setup_ops(), &mut mem_app);
    for (at, part) in &first {
        follower.apply(*at, 1, part).unwrap();
    }
    assert!(follower.checkpoint_start().unwrap());
    while follower.checkpoint_poll().unwrap().is_none() {}
    // Bit rot on the follower's committed copy, behind the engine's back.
    let base = follower.base_dir().to_string();
    follower
        .tree()
        .write_at(&format!("{base}/a"), 3, b"!")
        .unwrap();
    let (mut follower, report) = Engine::open(follower.into_tree(), config()).unwrap();
    assert!(report.recovering, "the restart notices the hash mismatch");
    assert!(!follower.status().can_lead());
    // Its log ended at the checkpoint: no later entry can explain the
    // mismatch.
    follower.set_replay_bound(report.applied_index);
    let second = command(
        &mut leader,
        &mut index,
        &[AppOp::Write {
            f: 1,
            offset: 0,
            len: 10,
            seed: 9,
        }],
        &mut mem_app,
    );
    let err = follower.apply(second[0].0, 1, &second[0].1).unwrap_err();
    assert!(
        matches!(err, EngineError::Diverged { stage: "post", .. }),
        "{err}"
    );
    assert!(matches!(
        follower.apply(second[0].0 + 1, 1, &second[0].1),
        Err(EngineError::IsDiverged { .. })
    ));
    assert!(!follower.status().can_lead());
    // Snapshot from the leader.
    let mut snapshot = leader.snapshot_begin().unwrap();
    let mut install = follower.install_begin(snapshot.id()).unwrap();
    while let Some(chunk) = leader.snapshot_next(&mut snapshot).unwrap() {
        follower.install_chunk(&mut install, &chunk).unwrap();
    }
    assert!(follower.status().can_lead());
    assert_same(
        "after snapshot",
        &base_listing(&mut follower),
        &base_listing(&mut leader),
    );
}
