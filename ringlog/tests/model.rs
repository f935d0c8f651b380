//! Property test: random sequences of append, truncate, release, reset,
//! flush (begin, complete), hard-state saves, reads and crashes, run against
//! the real ring log over the simulated disk and checked against a simple
//! model after every step and every recovery.

mod common;

use common::*;
use proptest::prelude::*;
use ringlog::sim::SimDisk;
use ringlog::{HardState, LogId, LogStore, RingLog, StorageError};

#[derive(Clone, Debug)]
enum Step {
    Append {
        count: usize,
        len: usize,
        term_bump: bool,
    },
    Truncate {
        back: u64,
    },
    Release {
        keep: u64,
    },
    Reset {
        ahead: i64,
    },
    BeginFlush,
    CompleteFlush,
    SaveHardState {
        vote: Option<u64>,
    },
    Read {
        lo: u64,
        span: u64,
        max_bytes: u64,
    },
    Crash {
        seed: u64,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (1usize..6, prop_oneof![0usize..100, 0usize..3000, 5000usize..20000], any::<bool>())
            .prop_map(|(count, len, term_bump)| Step::Append { count, len, term_bump }),
        2 => (1u64..6).prop_map(|back| Step::Truncate { back }),
        2 => (0u64..8).prop_map(|keep| Step::Release { keep }),
        1 => (-3i64..4).prop_map(|ahead| Step::Reset { ahead }),
        5 => Just(Step::BeginFlush),
        5 => Just(Step::CompleteFlush),
        1 => proptest::option::of(1u64..6).prop_map(|vote| Step::SaveHardState { vote }),
        3 => (0u64..30, 0u64..30, 1u64..20000).prop_map(|(lo, span, max_bytes)| Step::Read { lo, span, max_bytes }),
        2 => any::<u64>().prop_map(|seed| Step::Crash { seed }),
    ]
}

struct Harness {
    log: Option<RingLog<SimDisk>>,
    model: Model,
    hard: HardState,
    in_flight: Vec<ringlog::FlushTicket>,
    salt: u64,
    crashes: u64,
    moves: u64,
}

impl Harness {
    fn log(&mut self) -> &mut RingLog<SimDisk> {
        self.log.as_mut().expect("open")
    }

    fn check_view(&mut self) {
        let log = self.log.as_ref().expect("open");
        assert_eq!(log.snapshot_id(), self.model.view.snapshot);
        assert_eq!(log.last_id(), self.model.view.last_id());
        let last = self.model.view.last_id().index;
        let lo = self.model.view.snapshot.index;
        for index in lo.saturating_sub(1)..=last + 1 {
            assert_eq!(
                log.term(index),
                self.model.view.term(index),
                "term({index})"
            );
        }
        // The byte count from record sizes never undercounts the payloads.
        if last > lo {
            let entries = log.entries(lo + 1, last + 1, u64::MAX).expect("entries");
            let payload: u64 = entries.iter().map(|e| e.data.len() as u64).sum();
            let counted = log.entry_bytes(lo + 1, last + 1).expect("entry_bytes");
            assert!(counted >= payload, "{counted} < {payload}");
        }
        assert!(log.entry_bytes(last + 1, last + 2).is_err());
    }

    fn run(&mut self, step: Step) -> Result<(), TestCaseError> {
        let options = small_options(8 << 10);
        match step {
            Step::Append {
                count,
                len,
                term_bump,
            } => {
                let last = self.model.view.last_id();
                let term = (last.term + u64::from(term_bump))
                    .max(self.hard.term)
                    .max(1);
                if term > self.hard.term {
                    // The core makes a term durable before it appends in it.
                    self.hard = HardState { term, vote: None };
                    let hard = self.hard;
                    self.log().save_hard_state(hard).expect("save");
                }
                self.salt += 1;
                let entries: Vec<_> = (0..count as u64)
                    .map(|i| entry(last.index + 1 + i, term, len, self.salt))
                    .collect();
                match self.log().append(&entries) {
                    Ok(()) => self.model.submit(Op::Append(entries)),
                    Err(StorageError::Full(_)) => {}
                    Err(e) => return Err(TestCaseError::fail(format!("append: {e}"))),
                }
            }
            Step::Truncate { back } => {
                let (snap, last) = (
                    self.model.view.snapshot.index,
                    self.model.view.last_id().index,
                );
                if last > snap {
                    let index = last.saturating_sub(back - 1).max(snap + 1);
                    match self.log().truncate_from(index) {
                        Ok(()) => self.model.submit(Op::Truncate(index)),
                        Err(StorageError::Full(_)) => {}
                        Err(e) => return Err(TestCaseError::fail(format!("truncate: {e}"))),
                    }
                }
            }
            Step::Release { keep } => {
                let (snap, last) = (
                    self.model.view.snapshot.index,
                    self.model.view.last_id().index,
                );
                let index = last.saturating_sub(keep).max(snap);
                if index > snap {
                    match self.log().release_to(index) {
                        Ok(()) => self.model.submit(Op::Release(index)),
                        Err(StorageError::Full(_)) => {}
                        Err(e) => return Err(TestCaseError::fail(format!("release: {e}"))),
                    }
                }
            }
            Step::Reset { ahead } => {
                let last = self.model.view.last_id();
                // A snapshot ahead of the log (the usual install) or behind it.
                let index = (last.index as i64 + ahead).max(0) as u64;
                let snapshot = LogId::new(index, self.hard.term.max(last.term));
                match self.log().reset(snapshot) {
                    Ok(()) => self.model.submit(Op::Reset(snapshot)),
                    Err(StorageError::Full(_)) => {}
                    Err(e) => return Err(TestCaseError::fail(format!("reset: {e}"))),
                }
            }
            Step::BeginFlush => {
                if self.log().flushes_in_flight() < options.flushes_in_flight_max {
                    if let Some(ticket) = self.log().begin_flush().expect("begin_flush") {
                        self.model.begin_flush(ticket.0);
                        self.in_flight.push(ticket);
                    }
                }
            }
            Step::CompleteFlush => {
                if !self.in_flight.is_empty() {
                    let ticket = self.in_flight.remove(0);
                    let durable = self.log().complete_flush(ticket).expect("complete_flush");
                    self.model.complete_flush(ticket.0);
                    let expected = self.model.pending.iter().fold(
                        self.model.durable.clone(),
                        |mut s, (op, t)| {
                            if t.is_some_and(|t| t <= ticket.0) {
                                s.apply(op);
                            }
                            s
                        },
                    );
                    prop_assert_eq!(durable, expected.last_id());
                    prop_assert_eq!(durable, self.model.durable.last_id());
                }
            }
            Step::SaveHardState { vote } => {
                let state = HardState {
                    term: self.hard.term + 1,
                    vote,
                };
                self.log().save_hard_state(state).expect("save");
                self.hard = state;
            }
            Step::Read {
                lo,
                span,
                max_bytes,
            } => {
                let view = &self.model.view;
                let first = view.snapshot.index + 1;
                let last = view.last_id().index;
                if last >= first {
                    let lo = first + lo % (last - first + 1);
                    let hi = (lo + 1 + span).min(last + 1);
                    let got = self
                        .log
                        .as_ref()
                        .unwrap()
                        .entries(lo, hi, max_bytes)
                        .expect("read");
                    let mut expected = Vec::new();
                    let mut bytes = 0;
                    for e in &view.entries[(lo - first) as usize..(hi - first) as usize] {
                        bytes += e.size_bytes();
                        if !expected.is_empty() && bytes > max_bytes {
                            break;
                        }
                        expected.push(e.clone());
                    }
                    prop_assert_eq!(got, expected);
                }
            }
            Step::Crash { seed } => {
                self.moves += self.log.as_ref().unwrap().stats().segment_moves;
                let mut disk = self.log.take().unwrap().into_disk();
                disk.crash(seed);
                self.crashes += 1;
                let log = match RingLog::open(disk, options) {
                    Ok(log) => log,
                    Err(e) => return Err(TestCaseError::fail(format!("recovery failed: {e}"))),
                };
                let state = read_state(&log);
                let allowed = self.model.crash_states();
                prop_assert!(
                    allowed.contains(&state),
                    "recovered snapshot {} last {} is not a prefix state; allowed: {:?}",
                    state.snapshot,
                    state.last_id(),
                    allowed
                        .iter()
                        .map(|s| (s.snapshot, s.last_id()))
                        .collect::<Vec<_>>()
                );
                prop_assert_eq!(log.hard_state(), self.hard);
                self.model = Model::new(state);
                self.in_flight.clear();
                self.log = Some(log);
            }
        }
        self.check_view();
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn ring_log_matches_the_model(steps in proptest::collection::vec(step(), 1..200)) {
        let log = new_log(SMALL, small_options(8 << 10));
        let mut harness = Harness {
            model: Model::new(State::empty()),
            hard: log.hard_state(),
            log: Some(log),
            in_flight: Vec::new(),
            salt: 0,
            crashes: 0,
            moves: 0,
        };
        for step in steps {
            harness.run(step)?;
        }
        // A final clean shutdown: flush everything, crash, nothing is lost.
        let log = harness.log();
        while log.flushes_in_flight() > 0 || log.has_unflushed() {
            log.flush().expect("flush");
        }
        let stats = log.stats();
        let (last, snapshot) = (log.last_id(), log.snapshot_id());
        if std::env::var("RINGLOG_MODEL_STATS").is_ok() {
            eprintln!(
                "crashes {} flushes {} segment moves {} last {} snapshot {}",
                harness.crashes, stats.flushes, harness.moves + stats.segment_moves, last, snapshot
            );
        }
        harness.in_flight.clear();
        let pending = std::mem::take(&mut harness.model.pending);
        for (op, _) in pending {
            harness.model.durable.apply(&op);
        }
        let mut disk = harness.log.take().unwrap().into_disk();
        disk.crash(0);
        let log = RingLog::open(disk, small_options(8 << 10)).expect("recovery");
        prop_assert_eq!(read_state(&log), harness.model.durable.clone());
    }
}
