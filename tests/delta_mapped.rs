//! Writes through a shared mapping are captured by the inotify backend.
//!
//! `bunker mapped serve` keeps one file mapped `MAP_SHARED` for its whole
//! life and stores into the mapping only: no `write(2)`, no `msync`, no
//! close, so inotify reports nothing after the file's creation. The engine
//! must still capture every command's change (the tree names the files the
//! application's processes map shared and writable), a follower applying
//! the deltas must end byte-identical, and a read must stay a read.

use bunker::app::Adapter;
use bunker::delta::{Applied, Engine, EngineConfig, RealTree};
use bunker::replica::ExecOutcome;
use bunker::server::config::{AppConfig, AppMode};
use bunker::server::node::AppRunner;
use bytes::Bytes;
use std::path::Path;
use std::time::Duration;

fn adapter() -> Adapter {
    let cfg = AppConfig {
        mode: AppMode::Serve,
        command: vec![
            env!("CARGO_BIN_EXE_bunker").to_string(),
            "mapped".into(),
            "serve".into(),
        ],
        timeout_ms: 10_000,
        response_bytes_max: 64 * 1024,
        sandbox: false,
    };
    Adapter::new(&cfg).expect("adapter")
}

fn run(adapter: &mut Adapter, id: u64, command: &str, dir: &Path) -> (u8, String) {
    adapter.start(id, Bytes::from(command.to_string()), dir);
    let (got, outcome) = adapter
        .outcomes()
        .recv_timeout(Duration::from_secs(60))
        .expect("an outcome");
    assert_eq!(got, id);
    match outcome {
        ExecOutcome::Done { status, response } => {
            (status, String::from_utf8_lossy(&response).into_owned())
        }
        ExecOutcome::Failed { reason } => panic!("{command}: the application failed: {reason}"),
    }
}

#[test]
fn every_store_through_a_shared_mapping_is_captured_and_replicated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut leader, _) = Engine::open(
        RealTree::open(&dir.path().join("leader")).unwrap(),
        EngineConfig::default(),
    )
    .expect("leader");
    let (mut follower, _) = Engine::open(
        RealTree::open(&dir.path().join("follower")).unwrap(),
        EngineConfig::default(),
    )
    .expect("follower");
    let live = dir.path().join("leader").join(leader.live_dir());
    let mut app = adapter();
    let mut index = 0;
    for i in 1..=40u64 {
        let (status, response) = run(&mut app, i, &format!("put key{i} value{i}"), &live);
        assert_eq!((status, response.as_str()), (0, "ok"));
        assert!(
            leader.has_changes().expect("has_changes"),
            "put {i}: a store through the mapping is a change"
        );
        let captured = leader.capture().expect("capture");
        assert!(!captured.is_empty(), "put {i}: the delta holds the store");
        for part in &captured.parts {
            index += 1;
            assert_eq!(
                leader.apply(index, 1, part).expect("leader apply"),
                Applied::Delta { own: true }
            );
            assert_eq!(
                follower.apply(index, 1, part).expect("follower apply"),
                Applied::Delta { own: false }
            );
        }
        // A read changes nothing and is no delta.
        let (status, value) = run(&mut app, 1000 + i, &format!("get key{i}"), &live);
        assert_eq!((status, value), (0, format!("value{i}")));
        assert!(
            !leader.has_changes().expect("has_changes"),
            "get {i} is a read"
        );
    }
    let want = std::fs::read(live.join("mapped.kv")).expect("leader's file");
    let base = dir
        .path()
        .join("follower")
        .join(follower.base_dir())
        .join("mapped.kv");
    assert_eq!(
        std::fs::read(base).expect("follower's file"),
        want,
        "byte-identical"
    );
    assert_eq!(follower.status().state_hash, leader.status().state_hash);
}
