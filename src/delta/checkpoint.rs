//! Checkpoints: the committed state made durable, so that the log may
//! release the entries it holds.
//!
//! Applying a committed entry writes `base/` without syncing it: the log is
//! the durable copy of every entry (docs/DELTA.md §6). A checkpoint makes
//! the state durable at some index `X` and records `X` in `meta`:
//! 1. sync every file and directory of `base/` written since the previous
//!    checkpoint (asynchronously, on the tree's sync path);
//! 2. then write the `meta` record `{X, term, state hash}` and sync it;
//! 3. only then report `X`: the caller may release its log up to `X`.
//!
//! A crash at any point leaves `meta` naming an older checkpoint `C` (or
//! `X`), whose state was synced before `meta` named it; `base/` holds that
//! state plus any mix of the effects of entries after `C`, which recovery
//! replays from the log (`Engine::check_post_state`).
//!
//! What it does not do: decide when (the replication pipeline does, by
//! entries, bytes and time), or sync `live/` (never trusted after a restart).
//!
//! Invariants: at most one checkpoint in flight; `durable_index` only grows
//! (a snapshot install resets it to the installed index, which is larger);
//! no checkpoint is taken while the engine is diverged. A checkpoint taken
//! while the engine is recovering (replaying its log after a crash) records
//! the replay bound with it: the files may hold effects of committed
//! entries up to the bound, as after the crash, and a restart replays from
//! the checkpoint with the same tolerance. Refusing instead would keep the
//! log from being released until the replay ends, and the replay ends only
//! when the entries up to the bound commit again, which may need room in
//! this very log (replica swarm seed 360356974: two followers' rings full
//! of committed entries, a leader's barrier that could not fit).

use std::collections::BTreeSet;

use super::engine::{Engine, EngineError};
use super::meta::{self, MetaRecord, META_PATH};
use super::tree::FileTree;

/// Checkpoint bookkeeping of one engine.
#[derive(Debug)]
pub(crate) struct Checkpoints {
    durable_index: u64,
    /// Paths of `base/` written since the last checkpoint started.
    dirty_files: BTreeSet<String>,
    dirty_dirs: BTreeSet<String>,
    entries_since: u64,
    bytes_since: u64,
    inflight: Option<InFlight>,
}

#[derive(Debug)]
struct InFlight {
    record: MetaRecord,
    phase: Phase,
    /// A snapshot install replaced the state meanwhile: finish the sync,
    /// write nothing.
    abandoned: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Syncing the files and directories written since the last one.
    Data,
    /// Syncing the `meta` record that names it.
    Meta,
}

impl Checkpoints {
    pub(crate) fn new(durable_index: u64) -> Checkpoints {
        Checkpoints {
            durable_index,
            dirty_files: BTreeSet::new(),
            dirty_dirs: BTreeSet::new(),
            entries_since: 0,
            bytes_since: 0,
            inflight: None,
        }
    }

    /// An apply wrote `files` and changed the entries of `dirs` (tree paths).
    pub(crate) fn note_apply(&mut self, files: Vec<String>, dirs: Vec<String>, bytes: u64) {
        self.dirty_files.extend(files);
        self.dirty_dirs.extend(dirs);
        self.entries_since += 1;
        self.bytes_since += bytes;
    }

    /// The state at `index` was made durable by other means (a snapshot
    /// install, a bootstrap): it is the checkpoint now.
    pub(crate) fn reset_to(&mut self, index: u64) {
        assert!(index >= self.durable_index, "checkpoints only move forward");
        self.durable_index = index;
        self.dirty_files.clear();
        self.dirty_dirs.clear();
        self.entries_since = 0;
        self.bytes_since = 0;
        if let Some(inflight) = &mut self.inflight {
            inflight.abandoned = true;
        }
    }
}

impl<T: FileTree> Engine<T> {
    /// The index of the last durable checkpoint: the log may release
    /// entries up to here, and a restart replays the entries after it.
    pub fn checkpoint_index(&self) -> u64 {
        self.checkpoint.durable_index
    }

    /// Whole deltas applied, and their encoded bytes, since the last
    /// checkpoint started: what a crash now would make recovery replay.
    pub fn since_checkpoint(&self) -> (u64, u64) {
        (self.checkpoint.entries_since, self.checkpoint.bytes_since)
    }

    /// Whether a checkpoint is in flight.
    pub fn checkpointing(&self) -> bool {
        self.checkpoint.inflight.is_some()
    }

    /// Starts a checkpoint at the current state index, unless one is in
    /// flight, nothing was applied since the last one, or the engine is
    /// diverged. Returns whether it started.
    pub fn checkpoint_start(&mut self) -> Result<bool, EngineError> {
        let c = &self.checkpoint;
        if c.inflight.is_some() || self.diverged_at.is_some() || self.state_index <= c.durable_index
        {
            return Ok(false);
        }
        let record = MetaRecord {
            counter: 0, // Assigned when the record is written.
            applied_index: self.state_index,
            gen: self.gen,
            state_hash: self.committed.hash(),
            applied_term: self.state_term,
            replay_bound: if self.recovering {
                self.replay_bound
            } else {
                0
            },
        };
        let c = &mut self.checkpoint;
        let files: Vec<String> = std::mem::take(&mut c.dirty_files).into_iter().collect();
        let dirs: Vec<String> = std::mem::take(&mut c.dirty_dirs).into_iter().collect();
        c.entries_since = 0;
        c.bytes_since = 0;
        c.inflight = Some(InFlight {
            record,
            phase: Phase::Data,
            abandoned: false,
        });
        if self.config.test_checkpoint_before_sync {
            // The deliberate bug: the record first, the state never.
            return Ok(true);
        }
        self.tree.sync_start(files, dirs)?;
        Ok(true)
    }

    /// Advances the checkpoint in flight; returns its index once it is
    /// durable (then, and only then, the log may release up to it).
    pub fn checkpoint_poll(&mut self) -> Result<Option<u64>, EngineError> {
        if self.checkpoint.inflight.is_none() || !self.tree.sync_done()? {
            return Ok(None);
        }
        let inflight = self.checkpoint.inflight.as_mut().expect("checked above");
        match (inflight.phase, inflight.abandoned) {
            (_, true) => {
                self.checkpoint.inflight = None;
                Ok(None)
            }
            (Phase::Data, false) => {
                // Every file the state at the checkpoint needs is durable:
                // now the record that names it.
                self.meta_counter += 1;
                inflight.record.counter = self.meta_counter;
                inflight.phase = Phase::Meta;
                let record = inflight.record;
                meta::write_slot(&mut self.tree, &record)?;
                self.tree
                    .sync_start(vec![META_PATH.to_string()], Vec::new())?;
                Ok(None)
            }
            (Phase::Meta, false) => {
                let index = inflight.record.applied_index;
                assert!(index > self.checkpoint.durable_index);
                self.checkpoint.durable_index = index;
                self.checkpoint.inflight = None;
                Ok(Some(index))
            }
        }
    }
}
