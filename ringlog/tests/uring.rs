//! The production driver on real files: O_DIRECT, io_uring on the I/O
//! thread, group commit reported through the completion channel, and the
//! clear errors. Tests that need io_uring or O_DIRECT check availability
//! first and say why they skip.

mod common;

use common::*;
use ringlog::uring::{
    create_log, io_uring_available, o_direct_supported, open_log, SyncMode, UringOptions,
};
use ringlog::{Geometry, HardState, LogStore, Options, StorageError};
use std::path::Path;

const GEOMETRY: Geometry = Geometry {
    segment_bytes: 256 << 10,
    segment_count: 4,
};

/// A directory on a filesystem that accepts O_DIRECT, or why there is none.
fn direct_dir() -> Result<tempfile::TempDir, String> {
    io_uring_available().map_err(|e| format!("io_uring unavailable: {e}"))?;
    let dir = tempfile::tempdir_in(std::env::temp_dir()).map_err(|e| e.to_string())?;
    o_direct_supported(dir.path())
        .map_err(|e| format!("O_DIRECT unsupported in {}: {e}", dir.path().display()))?;
    Ok(dir)
}

macro_rules! require_direct_dir {
    () => {
        match testenv::require(direct_dir()) {
            Some(dir) => dir,
            None => return,
        }
    };
}

fn options() -> Options {
    Options {
        cache_bytes_max: 16 << 10,
        unflushed_bytes_max: 1 << 20,
        flushes_in_flight_max: 2,
    }
}

fn round_trip(mode: SyncMode) {
    let dir = require_direct_dir!();
    let path = dir.path().join("log");
    let uring = UringOptions {
        sync_mode: mode,
        ..UringOptions::default()
    };
    let mut log = create_log(&path, GEOMETRY, options(), uring).unwrap();
    log.save_hard_state(HardState {
        term: 2,
        vote: Some(3),
    })
    .unwrap();
    let mut model = Model::new(State::empty());
    let mut index = 1;
    for round in 0..40u64 {
        let entries: Vec<_> = (0..3)
            .map(|i| entry(index + i, 2, 2000 + 9000 * (round % 5) as usize, round))
            .collect();
        index += 3;
        log.append(&entries).unwrap();
        model.submit(Op::Append(entries));
        if round % 3 == 2 {
            let last = log.last_id().index;
            log.release_to(last - 4).unwrap();
            model.submit(Op::Release(last - 4));
        }
        log.flush().unwrap();
    }
    assert!(
        log.stats().segment_moves >= 4,
        "the ring wrapped: {:?}",
        log.stats()
    );
    let state = read_state(&log);
    assert_eq!(state, model.view);
    let used = log.disk().sync_path_counts();
    match mode {
        SyncMode::Fdatasync => assert_eq!(used.dsync, 0, "{used:?}"),
        SyncMode::Dsync => assert_eq!(used.fdatasync, 0, "{used:?}"),
        SyncMode::Adaptive => assert!(used.dsync > 0 && used.fdatasync > 0, "{used:?}"),
    }
    drop(log);
    let log = open_log(&path, options(), uring).unwrap();
    assert_eq!(read_state(&log), model.view);
    assert_eq!(
        log.hard_state(),
        HardState {
            term: 2,
            vote: Some(3)
        }
    );
}

#[test]
fn round_trip_with_dsync_writes() {
    round_trip(SyncMode::Dsync);
}

#[test]
fn round_trip_with_write_then_fdatasync() {
    round_trip(SyncMode::Fdatasync);
}

/// The adaptive mode switches paths flush by flush: the log written by
/// both must read back whole, and both paths must have been used (the
/// chooser learns each before it compares them).
#[test]
fn round_trip_with_the_adaptive_choice() {
    round_trip(SyncMode::Adaptive);
}

#[test]
fn an_event_loop_learns_durability_from_the_completion_channel() {
    let dir = require_direct_dir!();
    let path = dir.path().join("log");
    let mut log = create_log(&path, GEOMETRY, options(), UringOptions::default()).unwrap();
    log.save_hard_state(HardState {
        term: 1,
        vote: None,
    })
    .unwrap();
    let mut durable = log.durable_id();
    for i in 1..=50u64 {
        log.append(&[entry(i, 1, 64, 0)]).unwrap();
        if log.flush_due() {
            log.begin_flush().unwrap();
        }
        // Non-blocking poll, as a server's event loop does between events.
        if let Some(id) = log.poll_durable().unwrap() {
            assert!(id >= durable);
            durable = id;
        }
    }
    while durable.index < 50 {
        // Wait for the I/O thread's report as an event loop would (select on
        // the channel), then collect it.
        let mut select = crossbeam_channel::Select::new();
        select.recv(log.disk().completions());
        // A generous bound only so that a broken driver fails instead of hanging.
        let ready = select.ready_timeout(std::time::Duration::from_secs(60));
        assert!(ready.is_ok(), "no completion within 60 s");
        if let Some(id) = log.poll_durable().unwrap() {
            durable = id;
        }
        if log.flush_due() {
            log.begin_flush().unwrap();
        }
    }
    assert_eq!(durable, log.last_id());
}

#[test]
fn o_direct_refused_by_tmpfs_is_a_clear_error() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        testenv::skip("/dev/shm does not exist");
        return;
    }
    if testenv::require(io_uring_available().map_err(|e| format!("io_uring unavailable: {e}")))
        .is_none()
    {
        return;
    }
    let dir = tempfile::tempdir_in(shm).unwrap();
    // Kernels before 6.6 refuse O_DIRECT on tmpfs; later ones accept it, and
    // the driver then refuses tmpfs itself, since it is not durable.
    let path = dir.path().join("log");
    let err = create_log(&path, GEOMETRY, options(), UringOptions::default())
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    if o_direct_supported(dir.path()).is_ok() {
        assert!(
            text.contains("tmpfs") && text.contains("not durable"),
            "{text}"
        );
    } else {
        assert!(text.contains("O_DIRECT") && text.contains("ext4"), "{text}");
    }
    assert!(!path.exists(), "nothing is left behind");
    // Benchmarks may still ask for it explicitly.
    let volatile = UringOptions {
        allow_volatile_fs: true,
        ..UringOptions::default()
    };
    if o_direct_supported(dir.path()).is_ok() {
        drop(create_log(&path, GEOMETRY, options(), volatile).unwrap());
    }
}

#[test]
fn missing_directory_and_existing_file_are_clear_errors() {
    let dir = require_direct_dir!();
    let path = dir.path().join("no/such/dir/log");
    let err = create_log(&path, GEOMETRY, options(), UringOptions::default())
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("directory does not exist"),
        "{err}"
    );
    let path = dir.path().join("log");
    drop(create_log(&path, GEOMETRY, options(), UringOptions::default()).unwrap());
    let err = create_log(&path, GEOMETRY, options(), UringOptions::default())
        .err()
        .expect("refused");
    assert!(err.to_string().contains("already exists"), "{err}");
    let err = open_log(
        &dir.path().join("other"),
        options(),
        UringOptions::default(),
    )
    .err()
    .expect("refused");
    assert!(err.to_string().contains("create one first"), "{err}");
}

#[test]
fn wrong_permissions_are_a_clear_error() {
    let dir = require_direct_dir!();
    // SAFETY: a plain getter.
    let path = if unsafe { libc::geteuid() } == 0 {
        // Root bypasses file modes; sysfs refuses new files even to root.
        std::path::PathBuf::from("/sys/ringlog-permission-test")
    } else {
        use std::os::unix::fs::PermissionsExt;
        let locked = dir.path().join("locked");
        std::fs::create_dir(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o500)).unwrap();
        locked.join("log")
    };
    let err = create_log(&path, GEOMETRY, options(), UringOptions::default())
        .err()
        .expect("refused");
    assert!(err.to_string().contains("permission denied"), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn a_log_larger_than_the_geometry_allows_is_refused_before_any_io() {
    let dir = require_direct_dir!();
    let geometry = Geometry {
        segment_bytes: 64 << 10,
        segment_count: 2,
    };
    let err = create_log(
        &dir.path().join("log"),
        geometry,
        options(),
        UringOptions::default(),
    )
    .err()
    .expect("refused");
    assert!(matches!(err, StorageError::Io { .. }), "{err}");
    assert!(err.to_string().contains("segment_count"), "{err}");
}
