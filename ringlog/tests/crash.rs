//! Crash-recovery tests at every write boundary: after every submission and
//! every flush of a scripted run, the disk is copied and crashed in every
//! way the crash model allows (each prefix of the pending writes, the last
//! one whole or torn at every sector boundary and at odd byte offsets); the
//! recovered log must be the durable state plus a prefix of the operations
//! handed to a flush, never anything else, and never "corrupt".

mod common;

use common::*;
use ringlog::sim::{CrashPlan, SimDisk};
use ringlog::{FlushTicket, HardState, LogId, LogStore, RingLog, StorageError};

struct Run {
    log: RingLog<SimDisk>,
    model: Model,
    in_flight: Vec<FlushTicket>,
    hard: HardState,
    plans_checked: u64,
}

impl Run {
    fn new() -> Run {
        let mut log = new_log(SMALL, small_options(4 << 10));
        let hard = HardState {
            term: 5,
            vote: Some(1),
        };
        log.save_hard_state(hard).unwrap();
        Run {
            log,
            model: Model::new(State::empty()),
            in_flight: Vec::new(),
            hard,
            plans_checked: 0,
        }
    }

    /// Every crash outcome of the disk as it is now.
    fn check_every_crash(&mut self) {
        let pending = self.log.disk().pending_writes();
        let allowed = self.model.crash_states();
        let mut plans = vec![CrashPlan {
            keep_writes: 0,
            torn_bytes: None,
        }];
        for (i, &(_, len)) in pending.iter().enumerate() {
            plans.push(CrashPlan {
                keep_writes: i + 1,
                torn_bytes: None,
            });
            let mut cuts: Vec<usize> = (0..len).step_by(4096).collect();
            cuts.extend((1..len).step_by(1531));
            for torn in cuts {
                plans.push(CrashPlan {
                    keep_writes: i + 1,
                    torn_bytes: Some(torn),
                });
            }
        }
        for plan in plans {
            let mut disk = self.log.disk().clone();
            disk.crash_with(plan);
            let log = match RingLog::open(disk, small_options(4 << 10)) {
                Ok(log) => log,
                Err(e) => panic!("recovery after {plan:?} failed: {e}"),
            };
            let state = read_state(&log);
            assert!(
                allowed.contains(&state),
                "after {plan:?}: recovered snapshot {} last {}, allowed {:?}",
                state.snapshot,
                state.last_id(),
                allowed
                    .iter()
                    .map(|s| (s.snapshot, s.last_id()))
                    .collect::<Vec<_>>()
            );
            assert_eq!(log.hard_state(), self.hard);
            self.plans_checked += 1;
        }
    }

    fn append(&mut self, count: u64, len: usize, term: u64) {
        if term > self.hard.term {
            // The core makes a term durable before it appends in it.
            self.hard = HardState { term, vote: None };
            self.log.save_hard_state(self.hard).unwrap();
        }
        let last = self.model.view.last_id();
        let entries: Vec<_> = (1..=count)
            .map(|i| entry(last.index + i, term, len, 7))
            .collect();
        self.log.append(&entries).unwrap();
        self.model.submit(Op::Append(entries));
        self.check_every_crash();
    }

    fn truncate(&mut self, index: u64) {
        self.log.truncate_from(index).unwrap();
        self.model.submit(Op::Truncate(index));
        self.check_every_crash();
    }

    fn release(&mut self, index: u64) {
        self.log.release_to(index).unwrap();
        self.model.submit(Op::Release(index));
        self.check_every_crash();
    }

    fn reset(&mut self, snapshot: LogId) {
        self.log.reset(snapshot).unwrap();
        self.model.submit(Op::Reset(snapshot));
        self.check_every_crash();
    }

    fn begin(&mut self) {
        if let Some(ticket) = self.log.begin_flush().unwrap() {
            self.model.begin_flush(ticket.0);
            self.in_flight.push(ticket);
        }
        self.check_every_crash();
    }

    fn complete(&mut self) {
        let ticket = self.in_flight.remove(0);
        let durable = self.log.complete_flush(ticket).unwrap();
        self.model.complete_flush(ticket.0);
        assert_eq!(durable, self.model.durable.last_id());
        self.check_every_crash();
    }
}

#[test]
fn crash_at_every_write_boundary_with_torn_and_lost_writes() {
    let mut run = Run::new();
    // Small appends, two flushes in flight at once.
    run.append(3, 100, 5);
    run.begin();
    run.append(2, 3000, 5);
    run.begin();
    run.complete();
    run.append(1, 10, 5);
    run.complete();
    run.begin();
    run.complete();
    // A batch that fills the first segment and moves to the next (two
    // stages in one flush), with a truncation inside the unflushed part.
    run.append(6, 9000, 5);
    run.truncate(8);
    run.append(4, 9000, 5);
    run.begin();
    run.complete();
    assert!(run.log.stats().segment_moves >= 1);
    assert!(run.plans_checked > 100, "{} plans", run.plans_checked);
}

#[test]
fn crash_during_truncation_release_and_segment_reuse() {
    let mut run = Run::new();
    let mut term = 5;
    // Lap the ring several times: append, flush, release the prefix so the
    // segments come back, and crash-check everything in between.
    for round in 0..10u64 {
        run.append(5, 7000, term);
        run.begin();
        if round % 3 == 1 {
            let last = run.model.view.last_id().index;
            run.truncate(last - 1);
            term += 1;
            run.append(2, 500, term);
        }
        run.complete();
        let last = run.model.view.last_id().index;
        run.release(last - 2);
        run.begin();
        run.append(1, 100, term);
        run.complete();
    }
    assert!(run.log.stats().segment_moves >= 8, "{:?}", run.log.stats());
    // Reset, then crash in the flush that carries it.
    let last = run.model.view.last_id();
    run.reset(LogId::new(last.index + 10, term));
    run.begin();
    run.append(2, 100, term);
    run.begin();
    run.complete();
    run.complete();
}

#[test]
fn full_disk_fails_the_flush_and_the_log_recovers_to_a_prefix() {
    let mut run = Run::new();
    run.append(3, 100, 5);
    run.begin();
    run.complete();
    run.append(3, 100, 5);
    run.log.disk_mut().set_full(true);
    let err = run.log.begin_flush().unwrap_err();
    assert!(matches!(err, StorageError::Full(_)), "{err}");
    // The log refuses everything after a failed write.
    assert!(run.log.append(&[entry(7, 5, 1, 0)]).is_err());
    assert!(run
        .log
        .save_hard_state(HardState {
            term: 6,
            vote: None
        })
        .is_err());
    let mut disk = run.log.into_disk();
    disk.set_full(false);
    disk.crash(3);
    let log = RingLog::open(disk, small_options(4 << 10)).unwrap();
    assert_eq!(read_state(&log), run.model.durable);
}

#[test]
fn a_full_ring_rejects_appends_until_the_prefix_is_released() {
    let mut log = new_log(SMALL, small_options(1 << 20));
    log.save_hard_state(HardState {
        term: 1,
        vote: None,
    })
    .unwrap();
    let mut index = 1;
    let mut used = log.space_used_percent();
    let err = loop {
        // `has_room` predicts `append` exactly: the core relies on it to
        // turn a full ring into backpressure instead of a fatal error.
        let room = log.has_room(&[entry(index, 1, 5000, 0)]);
        match log.append(&[entry(index, 1, 5000, 0)]) {
            Ok(()) => {
                assert!(room, "has_room said no but entry {index} fit");
                index += 1;
            }
            Err(e) => {
                assert!(!room, "has_room said yes but entry {index} did not fit");
                break e;
            }
        }
        log.flush().unwrap();
        assert!(log.space_used_percent() >= used, "space use only grows");
        used = log.space_used_percent();
    };
    assert!(
        matches!(err, StorageError::Full(ref why) if why.contains("ring is full")),
        "{err}"
    );
    assert!(used >= 50, "a full ring reports {used}% used");
    let last = log.last_id();
    assert_eq!(last.index, index - 1);
    // Releasing works even when the ring is full, and frees segments.
    log.release_to(last.index - 1).unwrap();
    log.flush().unwrap();
    assert!(log.has_room(&[entry(index, 1, 5000, 0)]));
    assert!(log.space_used_percent() < used, "a release frees space");
    for _ in 0..20 {
        log.append(&[entry(index, 1, 5000, 0)]).unwrap();
        log.flush().unwrap();
        index += 1;
        let last = log.last_id().index;
        log.release_to(last - 1).unwrap();
    }
    log.flush().unwrap();
    let state = read_state(&log);
    let mut disk = log.into_disk();
    disk.crash(1);
    let log = RingLog::open(disk, small_options(1 << 20)).unwrap();
    assert_eq!(read_state(&log), state);
}

#[test]
fn reads_of_old_entries_come_from_disk_with_a_small_cache() {
    let mut log = new_log(SMALL, small_options(0));
    log.save_hard_state(HardState {
        term: 2,
        vote: None,
    })
    .unwrap();
    let entries: Vec<_> = (1..=20)
        .map(|i| entry(i, 2, 1000 + i as usize, 1))
        .collect();
    log.append(&entries).unwrap();
    log.flush().unwrap();
    assert_eq!(log.entries(1, 21, u64::MAX).unwrap(), entries);
    assert_eq!(log.entries(5, 9, 0).unwrap(), entries[4..5].to_vec());
    assert_eq!(log.entries(5, 9, 2100).unwrap(), entries[4..6].to_vec());
    assert!(
        log.memory_bytes() < 4096,
        "cache evicted: {}",
        log.memory_bytes()
    );
    assert!(matches!(
        log.entries(0, 3, 10),
        Err(StorageError::Unavailable { .. })
    ));
    assert!(matches!(
        log.entries(3, 23, 10),
        Err(StorageError::Unavailable { .. })
    ));
}

/// Random scripts (seeded, reproducible), with every crash outcome checked
/// after every step: the exhaustive check of the scripted tests above over
/// many more shapes of log (ring laps, truncations into flushed data,
/// releases and resets in flight, two flushes in flight).
#[test]
fn crash_at_every_write_boundary_of_random_scripts() {
    use rand::{Rng, SeedableRng};
    let mut plans = 0;
    for seed in 0..24u64 {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut run = Run::new();
        let mut term = 5;
        for _ in 0..40 {
            let (snapshot, last) = (
                run.model.view.snapshot.index,
                run.model.view.last_id().index,
            );
            match rng.gen_range(0..10) {
                0..=3 => {
                    let len = [10, 700, 5000, 12000][rng.gen_range(0..4)];
                    let count = rng.gen_range(1..4u64);
                    let entries: Vec<_> = (1..=count)
                        .map(|i| entry(last + i, term, len, seed))
                        .collect();
                    match run.log.append(&entries) {
                        Ok(()) => {
                            run.model.submit(Op::Append(entries));
                            run.check_every_crash();
                        }
                        Err(StorageError::Full(_)) => {
                            // Make room as a snapshot would.
                            if last > snapshot {
                                run.release(last);
                            }
                        }
                        Err(e) => panic!("seed {seed}: {e}"),
                    }
                }
                4 if last > snapshot => {
                    let index = rng.gen_range(snapshot + 1..=last);
                    run.truncate(index);
                    term += 1;
                    run.hard = HardState { term, vote: None };
                    run.log.save_hard_state(run.hard).unwrap();
                }
                5 if last > snapshot => {
                    let index = rng.gen_range(snapshot + 1..=last);
                    run.release(index);
                }
                6 if rng.gen_bool(0.3) => {
                    run.reset(LogId::new(last + rng.gen_range(0..3), term));
                }
                7 | 8 if run.log.flushes_in_flight() < 2 => run.begin(),
                _ if !run.in_flight.is_empty() => run.complete(),
                _ => run.begin(),
            }
        }
        plans += run.plans_checked;
    }
    assert!(plans > 10_000, "{plans} crash outcomes checked");
}

/// A device may persist the sectors of one unsynced write out of order. A
/// record that survives behind a lost sector is an orphan: after recovery
/// the log re-uses its lsn, and when a new record ends exactly where the
/// orphan starts, only the hash chain tells the orphan from a continuation.
#[test]
fn an_orphan_behind_a_lost_sector_is_never_taken_for_the_next_record() {
    let header = ringlog::format::RECORD_HEADER_BYTES;
    let mut log = new_log(SMALL, small_options(1 << 20));
    log.save_hard_state(HardState {
        term: 1,
        vote: None,
    })
    .unwrap();
    // Records of 2048, 2048, 4096 and 2048 bytes from a sector boundary: the
    // fourth starts exactly at the start of the flush's third sector.
    let sizes = [2048 - header, 2048 - header, 4096 - header, 2048 - header];
    let old: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| entry(i as u64 + 1, 1, len, 1))
        .collect();
    log.append(&old).unwrap();
    let _ticket = log.begin_flush().unwrap().unwrap();
    let (flush_offset, _) = log.disk().pending_writes()[0];
    let mut disk = log.into_disk();
    // The whole write reached the medium except its second sector.
    disk.crash_with(CrashPlan {
        keep_writes: 1,
        torn_bytes: None,
    });
    let mut image = disk.into_image();
    let lost = (flush_offset + 4096) as usize;
    image[lost..lost + 4096].fill(0);
    let mut log = RingLog::open(SimDisk::from_image(image), small_options(1 << 20)).unwrap();
    assert_eq!(log.last_id().index, 2, "the chain ends at the lost sector");
    // Entry 3 again, same size, other content: it ends where the orphan
    // (old entry 4, with the lsn the next record gets) begins.
    let new3 = entry(3, 1, sizes[2], 2);
    log.append(std::slice::from_ref(&new3)).unwrap();
    log.flush().unwrap();
    let mut disk = log.into_disk();
    disk.crash(0);
    let log = RingLog::open(disk, small_options(1 << 20)).unwrap();
    let state = read_state(&log);
    assert_eq!(
        state.last_id().index,
        3,
        "the orphan must not be taken as entry 4"
    );
    assert_eq!(state.entries[2], new3);
}
