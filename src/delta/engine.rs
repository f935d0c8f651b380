//! The delta engine: capture, apply, rollback and restart over a [`FileTree`].
//!
//! What it does (docs/DELTA.md has the full design and the arguments):
//! - keeps the committed state in `base.<gen>/` (at the applied index, named
//!   by the durable `meta` record) and the working copy in `live/`;
//! - [`Engine::capture`]: after a command ran in `live/`, returns the delta
//!   from the previous *speculative* state to the new one, found through
//!   change notification (which paths) and per-page xxh3 hashes (which pages),
//!   then a byte comparison of changed pages against the previous speculative
//!   content (which bytes);
//! - [`Engine::apply`]: applies a committed delta (or one part of a split
//!   delta) to `base/`, idempotently and crash-safely, syncs it through the
//!   tree's fsync path, verifies the post-state hash and persists the applied
//!   index; on a follower it also mirrors the delta into `live/`;
//! - [`Engine::rollback`]: brings `live/` back to the committed state at a cost
//!   proportional to the speculative changes;
//! - [`Engine::open`]: restart: reads `meta`, drops leftovers, re-indexes
//!   `base/` and rebuilds `live/` from it (never trusting an old `live/`).
//!
//! What it does not do: talk to peers, choose indexes, or run the
//! application. The caller (the replication pipeline) must keep the
//! application quiescent during `capture`, `rollback`, `open` and `apply` on a
//! server whose working copy mirrors the committed state.
//!
//! Invariants (asserted):
//! - `committed.hash()` is the hash of `base/` as written; after an apply it
//!   equals the delta's post hash, or the engine is diverged.
//! - `spec.hash()` is the hash of `live/` as last captured; when no capture is
//!   pending and no rollback is required, `spec == committed`.
//! - For every file path `p` in `spec`, page `i`'s speculative content is the
//!   overlay page if present, else `base/p`'s bytes below the overlay's
//!   `zero_from`, else zeros (the *overlay invariant*).

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};

use bytes::Bytes;

use super::format::{self, DecodeError, DeltaIdCheck, Encoder, Op, OpIter, PartHeader};
use super::index::{self, FileNode, Node, StateHash, StateIndex, EMPTY_STATE_HASH, PAGE_BYTES};
use super::meta::{self, MetaRecord, META_PATH};
use super::tree::{join, parent, Changes, FileTree, Kind, TreeError};

/// The working copy's directory.
pub const LIVE_DIR: &str = "live";
/// Where parts of a split delta wait for their last part (never synced).
pub const STAGE_DIR: &str = "stage";

/// Runs of equal bytes shorter than this between two changed runs are sent
/// anyway: a write record costs 13 bytes.
const RUN_GAP_BYTES_MAX: usize = 24;
/// Overlay tag of paths whose speculative changes are unknown (uncaptured
/// changes, or a foreign delta applied to `base/` only): rollback copies them
/// whole.
const TAG_UNKNOWN: u64 = u64::MAX;

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Upper bound of one encoded delta part, header included: at most the
    /// log's maximum entry size minus whatever the pipeline adds around it.
    pub max_part_bytes: usize,
    /// Payload bytes of one snapshot data chunk.
    pub snapshot_chunk_bytes: usize,
    /// Bound on the deltas a snapshot source buffers for replay while it
    /// copies; past it the snapshot is abandoned (and should be retried).
    pub snapshot_journal_bytes_max: u64,
    /// Test only: a deliberate bug, to prove the checkers catch it: write
    /// the checkpoint record before the state it names is synced.
    #[doc(hidden)]
    pub test_checkpoint_before_sync: bool,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            max_part_bytes: 4 << 20,
            snapshot_chunk_bytes: 1 << 20,
            snapshot_journal_bytes_max: 256 << 20,
            test_checkpoint_before_sync: false,
        }
    }
}

impl EngineConfig {
    fn validate(&self) -> Result<(), EngineError> {
        if !(format::PART_BYTES_MIN..=format::PART_BYTES_MAX).contains(&self.max_part_bytes) {
            return Err(EngineError::Config(
                "max_part_bytes outside [16 KiB, 1 GiB]",
            ));
        }
        if !(format::PART_BYTES_MIN..=format::PART_BYTES_MAX).contains(&self.snapshot_chunk_bytes) {
            return Err(EngineError::Config(
                "snapshot_chunk_bytes outside [16 KiB, 1 GiB]",
            ));
        }
        Ok(())
    }
}

/// Errors of the engine, by who is at fault.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The local disk (or the simulated crash).
    #[error(transparent)]
    Storage(TreeError),
    /// What the application changed cannot be told (see
    /// `TreeError::Untrackable`): the command fails, the server goes on.
    #[error("capture: {0}")]
    Untrackable(String),
    /// A committed entry (or snapshot chunk) does not decode: the peer that
    /// produced it, or the log storage, is at fault.
    #[error("entry {index}: corrupt delta: {source}")]
    Corrupt {
        index: u64,
        #[source]
        source: DecodeError,
    },
    /// This replica's committed state is not the one the delta was made
    /// from (`stage = "pre"`) or does not end where the leader's did
    /// (`"post"`). The caller must stop applying, refuse to lead and ask for
    /// a snapshot.
    #[error("replica diverged at entry {index} ({stage}-state hash {actual:#034x}, leader had {expected:#034x})")]
    Diverged {
        index: u64,
        stage: &'static str,
        expected: StateHash,
        actual: StateHash,
    },
    /// An earlier divergence stopped the engine; only a snapshot install
    /// clears it.
    #[error("replica is diverged since entry {index}; install a snapshot")]
    IsDiverged { index: u64 },
    /// The application left something the engine does not replicate.
    #[error("application created an unsupported {what} at {path:?}")]
    Unsupported { path: String, what: &'static str },
    /// A capture was asked while the working copy must first be rolled back.
    #[error("the working copy must be rolled back first")]
    RollbackRequired,
    /// Snapshot transfer problems (the peer, or a stale/abandoned transfer).
    #[error("snapshot: {0}")]
    Snapshot(String),
    /// A whole snapshot arrived, but the committed state here is already
    /// at or past its index, or this server's checkpoint is past it (the
    /// source's apply lagged its commit): the transfer is over, with
    /// nothing to install.
    #[error("snapshot at {index} is not ahead of the committed state at {state_index}")]
    SnapshotBehind { index: u64, state_index: u64 },
    #[error("bad engine configuration: {0}")]
    Config(&'static str),
}

impl From<TreeError> for EngineError {
    fn from(e: TreeError) -> EngineError {
        match e {
            TreeError::Untrackable(reason) => EngineError::Untrackable(reason),
            other => EngineError::Storage(other),
        }
    }
}

/// Where the working copy stands relative to the committed state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `live/` equals `base/`; applies are mirrored into `live/`.
    Mirrored,
    /// `live/` is ahead of `base/` by the pending captures.
    Speculative,
    /// `live/` holds changes that will never commit (a foreign delta was
    /// applied, or a capture failed): call [`Engine::rollback`].
    NeedsRollback,
}

/// A captured delta, ready to be proposed.
#[derive(Clone, Debug)]
pub struct Captured {
    /// The encoded parts, each at most `max_part_bytes`; propose them in
    /// order, one log entry each (they apply only when all have committed).
    pub parts: Vec<Bytes>,
    pub delta_id: u128,
    /// Speculative state hash before and after the command.
    pub pre_hash: StateHash,
    pub post_hash: StateHash,
    /// The capture's sequence number on this engine (1, 2, ...).
    pub seq: u64,
    pub stats: CaptureStats,
}

impl Captured {
    /// True when the command changed nothing (`pre_hash == post_hash` and no
    /// operations): such a delta need not be proposed as a state change.
    pub fn is_empty(&self) -> bool {
        self.stats.ops == 0
    }
}

/// What a capture examined and produced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureStats {
    pub paths_examined: u64,
    pub bytes_hashed: u64,
    pub pages_changed: u64,
    /// Bytes carried by write operations.
    pub data_bytes: u64,
    pub ops: u64,
    pub parts: u32,
    pub encoded_bytes: u64,
}

/// The result of [`Engine::apply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// A whole delta was applied, synced and verified; `own` when it was
    /// this engine's oldest pending capture.
    Delta { own: bool },
    /// A part of a split delta was staged; nothing changed yet.
    Staged,
    /// An orphan part (its delta was interrupted by a leader change); ignored.
    Skipped,
    /// The index was applied before; nothing done.
    AlreadyApplied,
}

/// A snapshot of the engine's position, for the pipeline and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// Every entry up to here has been given to the engine.
    pub applied_index: u64,
    /// `base/` holds the state at this index (below `applied_index` while
    /// parts of a split delta are staged).
    pub state_index: u64,
    /// The log term of the entry at `state_index`.
    pub state_term: u64,
    pub state_hash: StateHash,
    pub mode: Mode,
    pub pending_captures: usize,
    /// Set after a crash in the middle of an apply until that entry is
    /// re-applied.
    pub recovering: bool,
    /// Set by a divergence until a snapshot is installed.
    pub diverged_at: Option<u64>,
}

impl Status {
    /// A server may lead only with a verified, fully applied state.
    pub fn can_lead(&self) -> bool {
        self.diverged_at.is_none() && !self.recovering
    }
}

/// What a restart found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenReport {
    pub fresh: bool,
    pub applied_index: u64,
    /// The log term of the entry at `applied_index`.
    pub applied_term: u64,
    /// The files of `base/` do not hash to the recorded state: a crash hit an
    /// apply; the caller re-feeds entries after `applied_index`.
    pub recovering: bool,
    pub files: u64,
    pub bytes: u64,
}

/// Speculative content the overlay keeps for one path (see the invariant).
#[derive(Clone, Debug, Default)]
struct PathOverlay {
    /// Newest capture that changed the path ([`TAG_UNKNOWN`]: unknown).
    tag: u64,
    /// Speculative content of pages that may differ from `base/`.
    pages: BTreeMap<u64, (u64, Vec<u8>)>,
    /// Speculative bytes at or after this offset that are not in `pages` are
    /// zeros (set by a truncation, an extension or a re-creation).
    zero_from: Option<(u64, u64)>,
}

#[derive(Clone, Debug)]
struct PendingCapture {
    seq: u64,
    pre_hash: StateHash,
    post_hash: StateHash,
    paths: Vec<String>,
}

struct Staging {
    first_index: u64,
    header: PartHeader,
    next_part: u32,
    id_check: DeltaIdCheck,
}

/// Journal of whole deltas applied while a snapshot source is open.
#[derive(Debug, Default)]
pub(crate) struct Journal {
    pub(crate) snapshot_id: u64,
    pub(crate) entries: Vec<(u64, Vec<Vec<u8>>)>,
    pub(crate) bytes: u64,
    pub(crate) overflowed: bool,
}

/// See the module documentation.
pub struct Engine<T: FileTree> {
    pub(crate) tree: T,
    pub(crate) config: EngineConfig,
    pub(crate) gen: u64,
    pub(crate) base_dir: String,
    pub(crate) meta_counter: u64,
    pub(crate) applied_index: u64,
    pub(crate) state_index: u64,
    /// The log term of the entry at `state_index` (durable with `meta`).
    pub(crate) state_term: u64,
    /// The term of the entry being applied (set by `apply`).
    entry_term: u64,
    pub(crate) committed: StateIndex,
    spec: StateIndex,
    overlay: BTreeMap<String, PathOverlay>,
    unknown_rescan: BTreeSet<String>,
    pending: VecDeque<PendingCapture>,
    next_seq: u64,
    mode: Mode,
    pub(crate) recovering: bool,
    pub(crate) diverged_at: Option<u64>,
    staging: Option<Staging>,
    pub(crate) journal: Option<Journal>,
    /// Set by a storage error mid-apply: `committed` may not match the disk.
    index_stale: bool,
    /// Changes drained from the tree by `has_changes` and not yet captured.
    stashed: Changes,
    /// `has_changes` drained the tree and nothing ran since: the next drain
    /// needs only what was notified meanwhile (the pipeline's own writes).
    stash_fresh: bool,
    /// The durable checkpoint and the writes made since (`checkpoint.rs`).
    pub(crate) checkpoint: super::checkpoint::Checkpoints,
    /// While recovering, a post-state mismatch at an index below this one
    /// is a partly applied state still being replayed; at or above it, a
    /// divergence. The caller sets it to its log's last index at restart:
    /// nothing beyond it was ever applied. A checkpoint or an installed
    /// snapshot of a recovering state records its bound (`meta`).
    pub(crate) replay_bound: u64,
    /// The bound recorded in `meta` by a checkpoint or a snapshot install
    /// taken while recovering (0 if none): `set_replay_bound` never lowers
    /// the bound below it.
    recorded_bound: u64,
}

/// One path's effect during an apply (for re-indexing afterwards).
#[derive(Debug, Default)]
struct FileEffect {
    cur_size: u64,
    /// Content at or after this offset was reset to zeros by this delta.
    zero_from: u64,
    written_pages: BTreeSet<u64>,
}

/// Index changes an apply made, replayed on `spec` when mirroring.
#[derive(Debug)]
enum IndexEdit {
    RemoveTree(String),
    Set(String, Node),
}

impl<T: FileTree> Engine<T> {
    /// Opens (or initialises) the engine over `tree`: see the module docs.
    pub fn open(tree: T, config: EngineConfig) -> Result<(Engine<T>, OpenReport), EngineError> {
        Engine::open_or_return(tree, config).map_err(|(err, _)| err)
    }

    /// [`Engine::open`] that gives the tree back on failure, so that a
    /// simulator can crash the machine during a restart and try again.
    pub fn open_or_return(
        mut tree: T,
        config: EngineConfig,
    ) -> Result<(Engine<T>, OpenReport), (EngineError, T)> {
        if let Err(err) = config.validate() {
            return Err((err, tree));
        }
        let (record, fresh, committed) = match prepare_open(&mut tree) {
            Ok(prepared) => prepared,
            Err(err) => return Err((err, tree)),
        };
        let recovering =
            committed.hash() != record.state_hash || record.replay_bound > record.applied_index;
        let mut engine = Engine {
            tree,
            config,
            gen: record.gen,
            base_dir: base_dir_name(record.gen),
            meta_counter: record.counter,
            applied_index: record.applied_index,
            state_index: record.applied_index,
            state_term: record.applied_term,
            entry_term: record.applied_term,
            spec: committed.clone(),
            committed,
            overlay: BTreeMap::new(),
            unknown_rescan: BTreeSet::new(),
            pending: VecDeque::new(),
            next_seq: 1,
            mode: Mode::Mirrored,
            recovering,
            diverged_at: None,
            staging: None,
            journal: None,
            index_stale: false,
            stashed: Changes::default(),
            stash_fresh: false,
            checkpoint: super::checkpoint::Checkpoints::new(record.applied_index),
            replay_bound: u64::MAX,
            recorded_bound: record.replay_bound,
        };
        if let Err(err) = engine.rebuild_live() {
            return Err((err, engine.tree));
        }
        let (files, bytes) = engine
            .committed
            .iter()
            .fold((0, 0), |(f, b), (_, node)| match node {
                Node::File(file) => (f + 1, b + file.size_bytes),
                Node::Dir { .. } => (f, b),
            });
        let report = OpenReport {
            fresh,
            applied_index: record.applied_index,
            applied_term: record.applied_term,
            recovering,
            files,
            bytes,
        };
        Ok((engine, report))
    }

    /// Bootstrap: accepts whatever an operator placed in the committed
    /// directory ([`Engine::base_dir`]) while the engine was stopped as the
    /// state at index 0 (every server of a new cluster must be given the same
    /// files). Refused once any entry was applied.
    pub fn bootstrap_from_base(&mut self) -> Result<StateHash, EngineError> {
        if self.applied_index != 0 || self.state_index != 0 || !self.pending.is_empty() {
            return Err(EngineError::Config(
                "bootstrap is only allowed before the first entry",
            ));
        }
        let base = self.base_dir.clone();
        let committed = scan_tree(&mut self.tree, &base)?;
        let mut files = Vec::new();
        let mut dirs = vec![String::new(), base.clone()];
        for (path, node) in committed.iter() {
            match node {
                Node::File(_) => files.push(join(&base, path)),
                Node::Dir { .. } => dirs.push(join(&base, path)),
            }
        }
        self.tree.sync(&files, &dirs)?;
        self.meta_counter += 1;
        let hash = committed.hash();
        meta::write(
            &mut self.tree,
            &MetaRecord {
                counter: self.meta_counter,
                applied_index: 0,
                gen: self.gen,
                state_hash: hash,
                applied_term: 0,
                replay_bound: 0,
            },
        )?;
        self.committed = committed;
        self.recovering = false;
        self.checkpoint.reset_to(0);
        self.rebuild_live()?;
        Ok(hash)
    }

    /// The underlying tree (the application's directory is [`Engine::live_dir`]).
    pub fn tree(&mut self) -> &mut T {
        &mut self.tree
    }

    /// Gives the tree back (for a simulated crash and restart).
    pub fn into_tree(self) -> T {
        self.tree
    }

    /// The working copy's path in the tree, where the application runs.
    pub fn live_dir(&self) -> &'static str {
        LIVE_DIR
    }

    /// The committed state's path in the tree.
    pub fn base_dir(&self) -> &str {
        &self.base_dir
    }

    pub fn status(&self) -> Status {
        Status {
            applied_index: self.applied_index,
            state_index: self.state_index,
            state_term: self.state_term,
            state_hash: self.committed.hash(),
            mode: self.mode,
            pending_captures: self.pending.len(),
            recovering: self.recovering,
            diverged_at: self.diverged_at,
        }
    }

    /// Whether the application may have changed anything in `live/` since
    /// the last capture. `false` means certainly nothing (the command was a
    /// read); `true` means maybe (a write of identical bytes counts). Cheap:
    /// it only drains the change notifications, which the next capture uses.
    ///
    /// Files that may have changed without a notification (mapped, or
    /// open for writing) are compared with the speculative index, page by
    /// page: O(their size), so that a read by an application that keeps
    /// its files open stays a read.
    pub fn has_changes(&mut self) -> Result<bool, EngineError> {
        // The application ran since any earlier call: look at everything.
        self.stash_fresh = false;
        let changes = self.take_tree_changes_or_rescan()?;
        let mut changed = changes.notified();
        for path in &changes.suspects {
            if changed {
                break;
            }
            changed = self.differs_from_spec(path)?;
        }
        self.stashed = changes;
        // A capture right after a "changed" answer (the pipeline captures
        // at once, before the application runs again) needs only what was
        // notified since. After "unchanged" the next command runs first.
        self.stash_fresh = changed;
        Ok(changed)
    }

    /// Whether `live/path` differs from its speculative index entry (kind,
    /// mode, size or any page), without changing any state.
    fn differs_from_spec(&mut self, path: &str) -> Result<bool, EngineError> {
        check_name(path)?;
        let live_path = join(LIVE_DIR, path);
        let Some(live) = self.tree.stat(&live_path)? else {
            return Ok(self.spec.get(path).is_some());
        };
        let Some(Node::File(old)) = self.spec.get(path) else {
            return Ok(true);
        };
        if live.kind != Kind::File || live.links > 1 || live.mode != old.mode {
            return Ok(true);
        }
        let same = self.tree.with_file(&live_path, |bytes| {
            let size = bytes.len() as u64;
            size == old.size_bytes
                && index::hash_pages(bytes, 0, index::page_count(size)) == old.pages
        })?;
        Ok(!same)
    }

    /// Every change notified since the last call, including those stashed
    /// by `has_changes` (after which only notifications are new: the
    /// application has not run since).
    /// `take_tree_changes`, and if the tree cannot say what changed,
    /// everything is to be rescanned before the error is returned.
    fn take_tree_changes_or_rescan(&mut self) -> Result<Changes, EngineError> {
        self.take_tree_changes().map_err(|err| {
            self.mark_unknown(&Changes {
                rescan: [String::new()].into(),
                ..Changes::default()
            });
            err.into()
        })
    }

    fn take_tree_changes(&mut self) -> Result<Changes, TreeError> {
        let fresh = std::mem::take(&mut self.stash_fresh);
        let mut changes = std::mem::take(&mut self.stashed);
        let drained = if fresh {
            self.tree.take_notified()
        } else {
            self.tree.take_changes()
        };
        match drained {
            Ok(more) => {
                changes.merge(more);
                Ok(changes)
            }
            Err(err) => {
                // Keep what was stashed so it is not forgotten.
                self.stashed = changes;
                Err(err)
            }
        }
    }

    /// The speculative state hash (of `live/` as last captured).
    pub fn speculative_hash(&self) -> StateHash {
        self.spec.hash()
    }

    /// The committed index (read-only), e.g. for metrics.
    pub fn committed_index(&self) -> &StateIndex {
        &self.committed
    }

    fn check_not_diverged(&self) -> Result<(), EngineError> {
        match self.diverged_at {
            Some(index) => Err(EngineError::IsDiverged { index }),
            None => Ok(()),
        }
    }

    // ------------------------------------------------------------------
    // Capture
    // ------------------------------------------------------------------

    /// Returns the delta the application made in `live/` since the previous
    /// capture (or since the working copy last equalled the committed state).
    pub fn capture(&mut self) -> Result<Captured, EngineError> {
        self.check_not_diverged()?;
        if self.mode == Mode::NeedsRollback {
            return Err(EngineError::RollbackRequired);
        }
        let changes = self.take_tree_changes_or_rescan()?;
        match self.capture_changes(&changes) {
            Ok(captured) => Ok(captured),
            Err(err) => {
                self.mark_unknown(&changes);
                Err(err)
            }
        }
    }

    /// Marks paths whose speculative changes are unknown; only a rollback
    /// (which copies them whole) clears them.
    fn mark_unknown(&mut self, changes: &Changes) {
        for path in changes.paths.iter().chain(&changes.suspects) {
            self.overlay.entry(path.clone()).or_default().tag = TAG_UNKNOWN;
        }
        self.unknown_rescan.extend(changes.rescan.iter().cloned());
        self.mode = Mode::NeedsRollback;
    }

    fn capture_changes(&mut self, changes: &Changes) -> Result<Captured, EngineError> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let pre_hash = self.spec.hash();
        let mut stats = CaptureStats::default();
        let mut work: BTreeSet<String> = changes.paths.clone();
        work.extend(changes.suspects.iter().cloned());
        for root in &changes.rescan {
            self.expand_rescan(root, &mut work)?;
        }
        let mut removals: Vec<String> = Vec::new();
        let mut upserts: BTreeMap<String, Vec<OwnedOp>> = BTreeMap::new();
        let mut touched: Vec<String> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        while let Some(path) = work.pop_first() {
            if !seen.insert(path.clone()) {
                continue;
            }
            stats.paths_examined += 1;
            let mut ops = Vec::new();
            let changed =
                self.capture_path(seq, &path, &mut ops, &mut removals, &mut work, &mut stats)?;
            if changed {
                touched.push(path.clone());
            }
            if !ops.is_empty() {
                upserts.insert(path, ops);
            }
        }
        let post_hash = self.spec.hash();
        debug_assert_eq!(post_hash, self.spec.recompute_hash());
        let mut encoder = Encoder::new(self.config.max_part_bytes);
        removals.sort();
        for path in removals.iter().rev() {
            encoder.push(&Op::Remove { path });
        }
        for ops in upserts.values() {
            for op in ops {
                if let OwnedOp::Write { data, .. } = op {
                    stats.data_bytes += data.len() as u64;
                }
                encoder.push(&op.as_op());
            }
        }
        let (parts, delta_id, encoded) = encoder.finish(pre_hash, post_hash);
        stats.ops = encoded.ops;
        stats.parts = encoded.parts;
        stats.encoded_bytes = encoded.encoded_bytes;
        if encoded.ops > 0 {
            self.pending.push_back(PendingCapture {
                seq,
                pre_hash,
                post_hash,
                paths: touched,
            });
            self.mode = Mode::Speculative;
        } else {
            assert_eq!(
                pre_hash, post_hash,
                "no operations but the state hash moved"
            );
        }
        Ok(Captured {
            parts: parts.into_iter().map(Bytes::from).collect(),
            delta_id,
            pre_hash,
            post_hash,
            seq,
            stats,
        })
    }

    /// Adds to `work` every path under `root` in `live/` and in `spec`.
    fn expand_rescan(
        &mut self,
        root: &str,
        work: &mut BTreeSet<String>,
    ) -> Result<(), EngineError> {
        if !root.is_empty() {
            work.insert(root.to_string());
        }
        work.extend(self.spec.descendants(root).map(|(p, _)| p.clone()));
        let mut stack = vec![root.to_string()];
        while let Some(dir) = stack.pop() {
            match self.tree.stat(&join(LIVE_DIR, &dir))? {
                Some(m) if m.kind == Kind::Dir => {}
                _ => continue,
            }
            for name in self.tree.list(&join(LIVE_DIR, &dir))? {
                let child = join(&dir, &name);
                check_name(&child)?;
                work.insert(child.clone());
                stack.push(child);
            }
        }
        Ok(())
    }

    /// Compares one path of `live/` with the speculative index; emits ops and
    /// updates `spec` and the overlay. Returns whether anything changed.
    fn capture_path(
        &mut self,
        seq: u64,
        path: &str,
        ops: &mut Vec<OwnedOp>,
        removals: &mut Vec<String>,
        work: &mut BTreeSet<String>,
        stats: &mut CaptureStats,
    ) -> Result<bool, EngineError> {
        check_name(path)?;
        let live_path = join(LIVE_DIR, path);
        let live = self.tree.stat(&live_path)?;
        let spec_kind = match self.spec.get(path) {
            None => None,
            Some(Node::Dir { mode }) => Some((Kind::Dir, *mode)),
            Some(Node::File(file)) => Some((Kind::File, file.mode)),
        };
        let Some(live) = live else {
            if spec_kind.is_none() {
                return Ok(false);
            }
            removals.push(path.to_string());
            self.spec.remove_tree(path);
            self.overlay_mark_removed(seq, path);
            return Ok(true);
        };
        match live.kind {
            Kind::Symlink => return Err(unsupported(path, "symbolic link")),
            Kind::Special => {
                return Err(unsupported(path, "special file (fifo, socket or device)"))
            }
            Kind::File if live.links > 1 => return Err(unsupported(path, "hard-linked file")),
            _ => {}
        }
        match (live.kind, spec_kind) {
            (Kind::Dir, Some((Kind::Dir, mode))) => {
                if mode == live.mode {
                    return Ok(false);
                }
                ops.push(OwnedOp::SetMode {
                    path: path.to_string(),
                    mode: live.mode,
                });
                self.spec.insert(path, Node::Dir { mode: live.mode });
                self.overlay_touch(seq, path);
                Ok(true)
            }
            (Kind::Dir, other) => {
                if other.is_some() {
                    removals.push(path.to_string());
                    self.spec.remove_tree(path);
                }
                ops.push(OwnedOp::Mkdir {
                    path: path.to_string(),
                    mode: live.mode,
                });
                self.spec.insert(path, Node::Dir { mode: live.mode });
                self.overlay_mark_removed(seq, path);
                // Nothing under a new directory is known: look at all of it.
                for name in self.tree.list(&live_path)? {
                    work.insert(join(path, &name));
                }
                Ok(true)
            }
            (Kind::File, Some((Kind::File, _))) => {
                self.capture_file_in_place(seq, path, live.mode, ops, stats)
            }
            (Kind::File, other) => {
                if other.is_some() {
                    removals.push(path.to_string());
                    self.spec.remove_tree(path);
                }
                self.capture_new_file(seq, path, live.mode, ops, stats)?;
                Ok(true)
            }
            (Kind::Symlink | Kind::Special, _) => unreachable!("rejected above"),
        }
    }

    fn overlay_touch(&mut self, seq: u64, path: &str) -> &mut PathOverlay {
        let entry = self.overlay.entry(path.to_string()).or_default();
        if entry.tag != TAG_UNKNOWN {
            entry.tag = seq;
        }
        entry
    }

    /// The path was removed or replaced: whatever `base/` holds there is no
    /// longer its speculative content.
    fn overlay_mark_removed(&mut self, seq: u64, path: &str) {
        let entry = self.overlay_touch(seq, path);
        entry.pages.clear();
        entry.zero_from = Some((0, seq));
    }

    fn capture_new_file(
        &mut self,
        seq: u64,
        path: &str,
        mode: u32,
        ops: &mut Vec<OwnedOp>,
        stats: &mut CaptureStats,
    ) -> Result<(), EngineError> {
        let live_path = join(LIVE_DIR, path);
        let (node, runs, pages) = self.tree.with_file(&live_path, |bytes| {
            let node = FileNode::from_bytes(mode, bytes);
            let runs = nonzero_runs(bytes, 0, bytes.len());
            let pages: Vec<(u64, Vec<u8>)> = (0..index::page_count(bytes.len() as u64))
                .filter_map(|page| {
                    let range = page_range(page, bytes.len() as u64);
                    let content = &bytes[range];
                    (!is_zero(content)).then(|| (page, content.to_vec()))
                })
                .collect();
            let runs: Vec<(u64, Vec<u8>)> = runs
                .into_iter()
                .map(|(s, e)| (s as u64, bytes[s..e].to_vec()))
                .collect();
            (node, runs, pages)
        })?;
        stats.bytes_hashed += node.size_bytes;
        stats.pages_changed += node.pages.len() as u64;
        ops.push(OwnedOp::Create {
            path: path.to_string(),
            mode,
        });
        if node.size_bytes > 0 {
            ops.push(OwnedOp::SetSize {
                path: path.to_string(),
                size_bytes: node.size_bytes,
            });
        }
        for (offset, data) in runs {
            ops.push(OwnedOp::Write {
                path: path.to_string(),
                offset,
                data,
            });
        }
        self.spec.insert(path, Node::File(node));
        self.overlay_mark_removed(seq, path);
        let entry = self.overlay.get_mut(path).expect("just marked");
        for (page, content) in pages {
            entry.pages.insert(page, (seq, content));
        }
        Ok(())
    }

    fn capture_file_in_place(
        &mut self,
        seq: u64,
        path: &str,
        mode: u32,
        ops: &mut Vec<OwnedOp>,
        stats: &mut CaptureStats,
    ) -> Result<bool, EngineError> {
        let live_path = join(LIVE_DIR, path);
        let old = self.spec.file(path).expect("caller checked").clone_meta();
        // One pass over the live file: hash every page, pick the changed
        // ones, copy their new content.
        let old_hashes = &self.spec.file(path).expect("caller checked").pages;
        let (new_size, new_hashes, changed, new_pages) =
            self.tree.with_file(&live_path, |bytes| {
                let size = bytes.len() as u64;
                let hashes = index::hash_pages(bytes, 0, index::page_count(size));
                let changed: Vec<u64> = (0..hashes.len() as u64)
                    .filter(|&page| {
                        let i = page as usize;
                        i >= old_hashes.len()
                            || valid_len(page, old.size_bytes) != valid_len(page, size)
                            || old_hashes[i] != hashes[i]
                    })
                    .collect();
                let pages: Vec<Vec<u8>> = changed
                    .iter()
                    .map(|&page| bytes[page_range(page, size)].to_vec())
                    .collect();
                (size, hashes, changed, pages)
            })?;
        stats.bytes_hashed += new_size;
        if changed.is_empty() && new_size == old.size_bytes && mode == old.mode {
            return Ok(false); // A notification without a change (or a change undone).
        }
        stats.pages_changed += changed.len() as u64;
        let old_pages = self.speculative_pages(path, old.size_bytes, &changed)?;
        if new_size > old.size_bytes && old.size_bytes > 0 {
            // An extension zero-fills from the old size. Say where: a
            // replay after a crash may find the file already longer (a
            // later entry's effects reached the disk), and only a
            // truncation to the old size first makes the zeros exact.
            ops.push(OwnedOp::SetSize {
                path: path.to_string(),
                size_bytes: old.size_bytes,
            });
        }
        if new_size != old.size_bytes {
            ops.push(OwnedOp::SetSize {
                path: path.to_string(),
                size_bytes: new_size,
            });
        }
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for ((page, old_bytes), new_bytes) in changed.iter().zip(&old_pages).zip(&new_pages) {
            let start = page * PAGE_BYTES as u64;
            let overlap = old_bytes.len().min(new_bytes.len());
            for (s, e) in diff_runs(&old_bytes[..overlap], &new_bytes[..overlap]) {
                push_run(&mut runs, start + s as u64, start + e as u64);
            }
            // Bytes past the old size: SetSize zero-fills them first.
            for (s, e) in nonzero_runs(new_bytes, overlap, new_bytes.len()) {
                push_run(&mut runs, start + s as u64, start + e as u64);
            }
        }
        for (s, e) in runs {
            let data = page_bytes_range(&changed, &new_pages, s, e);
            ops.push(OwnedOp::Write {
                path: path.to_string(),
                offset: s,
                data,
            });
        }
        if mode != old.mode {
            ops.push(OwnedOp::SetMode {
                path: path.to_string(),
                mode,
            });
        }
        let hash_updates: Vec<(u64, u64)> = changed
            .iter()
            .map(|&p| (p, new_hashes[p as usize]))
            .collect();
        self.spec.edit_file(path, |file| {
            file.update(new_size, &hash_updates);
            file.mode = mode;
        });
        // Overlay: remember the new speculative content of changed pages.
        let entry = self.overlay_touch(seq, path);
        if new_size != old.size_bytes {
            let floor = old.size_bytes.min(new_size);
            let zero_from = entry.zero_from.map_or(floor, |(z, _)| z.min(floor));
            entry.zero_from = Some((zero_from, seq));
        }
        let zero_from = entry.zero_from.map_or(u64::MAX, |(z, _)| z);
        let count_new = index::page_count(new_size);
        entry.pages.retain(|&page, _| page < count_new);
        for (page, content) in changed.into_iter().zip(new_pages) {
            if page * PAGE_BYTES as u64 >= zero_from && is_zero(&content) {
                // Left to the zero-from claim, which this capture therefore
                // re-asserts: it may expire only once this capture applied.
                entry.pages.remove(&page);
                entry.zero_from = Some((zero_from, seq));
            } else {
                entry.pages.insert(page, (seq, content));
            }
        }
        Ok(true)
    }

    /// The previous speculative content of `pages` of `path` (a file of
    /// `size_bytes` in `spec`), per the overlay invariant. Pages at or beyond
    /// the old size come back empty.
    fn speculative_pages(
        &mut self,
        path: &str,
        size_bytes: u64,
        pages: &[u64],
    ) -> Result<Vec<Vec<u8>>, EngineError> {
        let overlay = self.overlay.get(path);
        let zero_from = overlay
            .and_then(|o| o.zero_from)
            .map_or(u64::MAX, |(z, _)| z);
        let mut out: Vec<Option<Vec<u8>>> = pages
            .iter()
            .map(|page| {
                let range = page_range_or_empty(*page, size_bytes);
                if range.is_empty() {
                    return Some(Vec::new());
                }
                overlay.and_then(|o| o.pages.get(page)).map(|(_, content)| {
                    assert_eq!(
                        content.len(),
                        range.len(),
                        "overlay page {page} of {path:?} has the wrong length"
                    );
                    content.clone()
                })
            })
            .collect();
        if out.iter().any(|o| o.is_none()) {
            let base_path = join(&self.base_dir, path);
            let base_is_file =
                matches!(self.tree.stat(&base_path)?, Some(m) if m.kind == Kind::File);
            let read = |bytes: &[u8], out: &mut Vec<Option<Vec<u8>>>| {
                for (slot, page) in out.iter_mut().zip(pages) {
                    if slot.is_some() {
                        continue;
                    }
                    let range = page_range_or_empty(*page, size_bytes);
                    let mut content = vec![0u8; range.len()];
                    let limit = (bytes.len() as u64).min(zero_from);
                    for (i, byte) in content.iter_mut().enumerate() {
                        let at = range.start + i;
                        if (at as u64) < limit {
                            *byte = bytes[at];
                        }
                    }
                    *slot = Some(content);
                }
            };
            if base_is_file {
                // Only the pages needed: the file may be large.
                for (slot, page) in out.iter_mut().zip(pages) {
                    if slot.is_some() {
                        continue;
                    }
                    let range = page_range_or_empty(*page, size_bytes);
                    let mut content = vec![0u8; range.len()];
                    let n = self
                        .tree
                        .read_at(&base_path, range.start as u64, &mut content)?;
                    // Past the base file's end, or the overlay's zero-from
                    // claim, the speculative content is zeros.
                    let limit = zero_from.saturating_sub(range.start as u64).min(n as u64) as usize;
                    content[limit..].fill(0);
                    *slot = Some(content);
                }
            } else {
                read(&[], &mut out);
            }
        }
        Ok(out.into_iter().map(|o| o.expect("filled")).collect())
    }

    // ------------------------------------------------------------------
    // Apply
    // ------------------------------------------------------------------

    /// Records that entry `index`, which carries no delta (a barrier, a
    /// configuration), was applied. An unfinished split delta is abandoned.
    pub fn advance(&mut self, index: u64, term: u64) {
        if index <= self.applied_index {
            return;
        }
        self.abandon_staging();
        self.applied_index = index;
        self.state_index = index;
        self.state_term = term;
    }

    fn abandon_staging(&mut self) {
        if self.staging.take().is_some() {
            self.state_index = self.applied_index;
        }
    }

    /// Applies committed entry `index`, which carries `part` (one part of a
    /// delta). Entries must be given in log order; re-giving an applied index
    /// is a no-op, so after a restart the caller simply re-feeds every entry
    /// after [`OpenReport::applied_index`].
    ///
    /// After an error, the engine forgets staged parts and entries after its
    /// state: re-feed from [`Status::state_index`] + 1 (after a storage
    /// error, once the disk works again; after `Diverged`, after a snapshot).
    ///
    /// `term` is the log term of entry `index`; the engine keeps it with the
    /// state so a restart knows the state's position in the log.
    pub fn apply(&mut self, index: u64, term: u64, part: &[u8]) -> Result<Applied, EngineError> {
        self.check_not_diverged()?;
        if index <= self.applied_index {
            return Ok(Applied::AlreadyApplied);
        }
        self.entry_term = term;
        let result = self.apply_part(index, part);
        if result.is_err() {
            self.staging = None;
            self.applied_index = self.state_index;
        }
        result
    }

    fn apply_part(&mut self, index: u64, part: &[u8]) -> Result<Applied, EngineError> {
        let (header, payload) =
            format::parse_part(part).map_err(|source| EngineError::Corrupt { index, source })?;
        if header.part_count == 1 {
            self.abandon_staging();
            let mut check = DeltaIdCheck::new(&header);
            check.update(payload);
            check
                .verify()
                .map_err(|source| EngineError::Corrupt { index, source })?;
            let parts = vec![part.to_vec()];
            let result = self.apply_whole(index, &header, PartSource::Memory(&parts));
            return self.after_storage_error(result);
        }
        let continues = matches!(&self.staging, Some(s)
            if s.header.delta_id == header.delta_id && s.next_part == header.part_no);
        if !continues {
            self.abandon_staging();
            if header.part_no != 0 {
                self.applied_index = index;
                self.state_index = index;
                self.state_term = self.entry_term;
                return Ok(Applied::Skipped);
            }
            remove_recursive(&mut self.tree, STAGE_DIR)?;
            self.tree.mkdir(STAGE_DIR, 0o700)?;
            self.staging = Some(Staging {
                first_index: index,
                header,
                next_part: 0,
                id_check: DeltaIdCheck::new(&header),
            });
        }
        let first_index = self
            .staging
            .as_ref()
            .expect("staging set above")
            .first_index;
        self.state_index = first_index - 1;
        if header.part_no + 1 < header.part_count {
            // Staged parts are never synced: until the last part applies, the
            // durable applied index stays before the first part, so a crash
            // makes the caller re-feed them from the log.
            let stage_path = join(STAGE_DIR, &header.part_no.to_string());
            self.tree.create_file(&stage_path, 0o600)?;
            self.tree.write_at(&stage_path, 0, part)?;
        }
        let staging = self.staging.as_mut().expect("staging set above");
        staging.id_check.update(payload);
        staging.next_part += 1;
        if header.part_no + 1 < header.part_count {
            self.applied_index = index;
            return Ok(Applied::Staged);
        }
        let staging = self.staging.take().expect("staging set above");
        staging
            .id_check
            .verify()
            .map_err(|source| EngineError::Corrupt { index, source })?;
        self.state_index = first_index - 1;
        let result = self.apply_whole(index, &header, PartSource::Staged { last: part });
        let result = self.after_storage_error(result);
        remove_recursive(&mut self.tree, STAGE_DIR)?;
        result
    }

    /// A storage error in the middle of an apply leaves `base/` (and a
    /// mirrored `live/`) partly written: the retry must skip the pre-state
    /// check (like a restart after a crash), and `live/` must be rebuilt by a
    /// rollback before the application runs again.
    fn after_storage_error(
        &mut self,
        result: Result<Applied, EngineError>,
    ) -> Result<Applied, EngineError> {
        if matches!(result, Err(EngineError::Storage(_))) {
            self.recovering = true;
            // The in-memory index may be ahead of the disk: the next apply
            // re-reads it first (a rare path, O(database)).
            self.index_stale = true;
            if self.mode == Mode::Mirrored {
                self.unknown_rescan.insert(String::new());
                self.mode = Mode::NeedsRollback;
            }
        }
        result
    }

    fn apply_whole(
        &mut self,
        index: u64,
        header: &PartHeader,
        parts: PartSource<'_>,
    ) -> Result<Applied, EngineError> {
        if self.index_stale {
            let base = self.base_dir.clone();
            self.committed = scan_tree(&mut self.tree, &base)?;
            self.index_stale = false;
        }
        let pre_actual = self.committed.hash();
        if !self.recovering && header.pre_hash != pre_actual {
            self.diverged_at = Some(index);
            return Err(EngineError::Diverged {
                index,
                stage: "pre",
                expected: header.pre_hash,
                actual: pre_actual,
            });
        }
        let own = header.pre_hash != header.post_hash
            && matches!(self.pending.front(), Some(p) if p.pre_hash == header.pre_hash && p.post_hash == header.post_hash);
        let mut mirror = self.mode == Mode::Mirrored;
        if mirror {
            // Changes the application made that nobody captured: live/ is
            // no longer a mirror and must be rolled back.
            let stray = self.take_tree_changes()?;
            if !stray.is_empty() {
                self.mark_unknown(&stray);
                mirror = false;
            }
        }
        let count = parts.count();
        let mut parts_bytes = 0u64;
        let mut edits: Vec<IndexEdit> = Vec::new();
        let mut effects: BTreeMap<String, FileEffect> = BTreeMap::new();
        let mut sync_dirs: BTreeSet<String> = BTreeSet::new();
        let mut journal_parts: Vec<Vec<u8>> = Vec::new();
        let mut touched: BTreeSet<String> = BTreeSet::new();
        for part_no in 0..count {
            let bytes = parts.get(&mut self.tree, part_no)?;
            parts_bytes += bytes.len() as u64;
            let (part_header, payload) = format::parse_part(&bytes)
                .map_err(|source| EngineError::Corrupt { index, source })?;
            if part_header.delta_id != header.delta_id || part_header.part_no as usize != part_no {
                return Err(EngineError::Corrupt {
                    index,
                    source: DecodeError::BadHeader("staged part does not belong to this delta"),
                });
            }
            for op in OpIter::new(payload) {
                let op = op.map_err(|source| EngineError::Corrupt { index, source })?;
                touched.insert(op.path().to_string());
                let base = self.base_dir.clone();
                apply_op(&mut self.tree, &base, &op)?;
                if mirror {
                    apply_op(&mut self.tree, LIVE_DIR, &op)?;
                }
                self.note_effect(&op, &mut edits, &mut effects, &mut sync_dirs);
            }
            if self.journal.is_some() {
                journal_parts.push(bytes.into_owned());
            }
        }
        // Re-index what the delta touched, from the files as written.
        let mut sync_files: Vec<String> = Vec::new();
        for (path, effect) in effects {
            let Some(Node::File(file)) = self.committed.get(&path) else {
                continue;
            };
            let base_path = join(&self.base_dir, &path);
            let mode = file.mode;
            let (size, updates) = self.rehash_touched(&base_path, &effect)?;
            if size != effect.cur_size {
                return Err(EngineError::Storage(TreeError::BadPath {
                    path: base_path,
                    reason: "file size after apply differs from the delta's",
                }));
            }
            self.committed
                .edit_file(&path, |f| f.update(size, &updates));
            let node = self.committed.get(&path).expect("edited").clone();
            debug_assert_eq!(
                node,
                Node::File(FileNode::from_bytes(
                    mode,
                    &self.tree.with_file(&base_path, |b| b.to_vec())?
                ))
            );
            edits.push(IndexEdit::Set(path.clone(), node));
            sync_files.push(base_path);
        }
        // No sync here: the log is the durable copy. The next checkpoint
        // syncs what this apply wrote (`checkpoint.rs`).
        let sync_dirs: Vec<String> = sync_dirs
            .into_iter()
            .map(|d| join(&self.base_dir, &d))
            .collect();
        self.checkpoint
            .note_apply(sync_files, sync_dirs, parts_bytes);
        self.check_post_state(index, header)?;
        self.applied_index = index;
        self.state_index = index;
        self.state_term = self.entry_term;
        if let Some(journal) = &mut self.journal {
            journal.bytes += journal_parts.iter().map(|p| p.len() as u64).sum::<u64>();
            journal.entries.push((index, journal_parts));
            if journal.bytes > self.config.snapshot_journal_bytes_max {
                journal.overflowed = true;
                journal.entries.clear();
            }
        }
        self.after_apply(own, mirror, &edits, touched, header);
        Ok(Applied::Delta { own })
    }

    /// The committed state after entry `index` must hash to the delta's
    /// post hash. While recovering from a crash, the files may still hold
    /// effects of later entries that were applied before the crash (none
    /// beyond the replay bound): a mismatch below the bound means "not
    /// caught up yet", the first match ends the recovery.
    fn check_post_state(&mut self, index: u64, header: &PartHeader) -> Result<(), EngineError> {
        let post_actual = self.committed.hash();
        if post_actual == header.post_hash {
            self.recovering = false;
            self.recorded_bound = 0;
            return Ok(());
        }
        if self.recovering && index < self.replay_bound {
            return Ok(());
        }
        self.diverged_at = Some(index);
        Err(EngineError::Diverged {
            index,
            stage: "post",
            expected: header.post_hash,
            actual: post_actual,
        })
    }

    /// See `replay_bound`: the last index of the caller's log at restart.
    pub fn set_replay_bound(&mut self, index: u64) {
        self.replay_bound = index.max(self.recorded_bound);
    }

    /// Bookkeeping of the working copy after `base/` moved forward.
    fn after_apply(
        &mut self,
        own: bool,
        mirror: bool,
        edits: &[IndexEdit],
        touched: BTreeSet<String>,
        header: &PartHeader,
    ) {
        if mirror {
            for edit in edits {
                match edit {
                    IndexEdit::RemoveTree(path) => self.spec.remove_tree(path),
                    IndexEdit::Set(path, node) => self.spec.insert(path, node.clone()),
                }
            }
            // Our own writes into live/ are not the application's changes.
            let _ = self.take_tree_changes();
            assert_eq!(
                self.spec.hash(),
                self.committed.hash(),
                "mirror out of step"
            );
            return;
        }
        if own {
            let done = self
                .pending
                .pop_front()
                .expect("own implies a pending capture");
            for path in &done.paths {
                let Some(entry) = self.overlay.get_mut(path) else {
                    continue;
                };
                if entry.tag != TAG_UNKNOWN && entry.tag <= done.seq {
                    self.overlay.remove(path);
                    continue;
                }
                if matches!(entry.zero_from, Some((_, tag)) if tag <= done.seq) {
                    entry.zero_from = None;
                }
                // A page at or past a live zero-from claim must stay: without
                // it the claim would read it as zeros.
                let claim = entry.zero_from.map_or(u64::MAX, |(z, _)| z);
                entry.pages.retain(|page, (tag, _)| {
                    *tag > done.seq || (page + 1) * PAGE_BYTES as u64 > claim
                });
            }
            if self.pending.is_empty() && self.mode == Mode::Speculative {
                assert!(
                    self.overlay.is_empty(),
                    "overlay left after the last pending capture applied"
                );
                assert_eq!(self.spec.hash(), self.committed.hash());
                self.mode = Mode::Mirrored;
            }
            return;
        }
        if header.pre_hash == header.post_hash && touched.is_empty() {
            return; // An empty delta changes nothing, speculation stays valid.
        }
        // A delta that is not ours landed under our speculation.
        for path in touched {
            let entry = self.overlay.entry(path).or_default();
            entry.tag = TAG_UNKNOWN;
        }
        self.mode = Mode::NeedsRollback;
    }

    /// Tracks what an applied operation did, for re-indexing and syncing.
    fn note_effect(
        &mut self,
        op: &Op<'_>,
        edits: &mut Vec<IndexEdit>,
        effects: &mut BTreeMap<String, FileEffect>,
        sync_dirs: &mut BTreeSet<String>,
    ) {
        let path = op.path();
        let ensure_file = |committed: &mut StateIndex,
                           edits: &mut Vec<IndexEdit>,
                           sync_dirs: &mut BTreeSet<String>| {
            if committed.file(path).is_none() {
                committed.remove_tree(path);
                edits.push(IndexEdit::RemoveTree(path.to_string()));
                let node = Node::File(FileNode::from_bytes(0o644, &[]));
                committed.insert(path, node.clone());
                edits.push(IndexEdit::Set(path.to_string(), node));
                sync_dirs.insert(parent(path).to_string());
            }
        };
        match *op {
            Op::Remove { .. } => {
                self.committed.remove_tree(path);
                edits.push(IndexEdit::RemoveTree(path.to_string()));
                effects.retain(|p, _| !super::tree::is_under(p, path));
                sync_dirs.insert(parent(path).to_string());
            }
            Op::Mkdir { mode, .. } => {
                if !matches!(self.committed.get(path), Some(Node::Dir { .. })) {
                    self.committed.remove_tree(path);
                    edits.push(IndexEdit::RemoveTree(path.to_string()));
                    effects.retain(|p, _| !super::tree::is_under(p, path));
                    sync_dirs.insert(parent(path).to_string());
                }
                self.ensure_parents_indexed(path, edits, sync_dirs);
                let node = Node::Dir { mode };
                self.committed.insert(path, node.clone());
                edits.push(IndexEdit::Set(path.to_string(), node));
                sync_dirs.insert(path.to_string());
            }
            Op::Create { mode, .. } => {
                self.committed.remove_tree(path);
                edits.push(IndexEdit::RemoveTree(path.to_string()));
                self.ensure_parents_indexed(path, edits, sync_dirs);
                let node = Node::File(FileNode::from_bytes(mode, &[]));
                self.committed.insert(path, node.clone());
                edits.push(IndexEdit::Set(path.to_string(), node));
                effects.retain(|p, _| !super::tree::is_under(p, path));
                effects.insert(path.to_string(), FileEffect::default());
                sync_dirs.insert(parent(path).to_string());
            }
            Op::SetSize { size_bytes, .. } => {
                self.ensure_parents_indexed(path, edits, sync_dirs);
                ensure_file(&mut self.committed, edits, sync_dirs);
                let effect = effect_for(&self.committed, effects, path);
                effect.zero_from = effect.zero_from.min(effect.cur_size).min(size_bytes);
                effect.cur_size = size_bytes;
            }
            Op::Write { offset, data, .. } => {
                self.ensure_parents_indexed(path, edits, sync_dirs);
                ensure_file(&mut self.committed, edits, sync_dirs);
                let effect = effect_for(&self.committed, effects, path);
                if data.is_empty() {
                    return;
                }
                if offset > effect.cur_size {
                    effect.zero_from = effect.zero_from.min(effect.cur_size);
                }
                let end = offset + data.len() as u64;
                effect.cur_size = effect.cur_size.max(end);
                let first = offset / PAGE_BYTES as u64;
                let last = (end - 1) / PAGE_BYTES as u64;
                effect.written_pages.extend(first..=last);
            }
            Op::SetMode { mode, .. } => match self.committed.get(path) {
                Some(Node::Dir { .. }) => {
                    let node = Node::Dir { mode };
                    self.committed.insert(path, node.clone());
                    edits.push(IndexEdit::Set(path.to_string(), node));
                    sync_dirs.insert(path.to_string());
                }
                Some(Node::File(_)) => {
                    self.committed.edit_file(path, |f| f.mode = mode);
                    effect_for(&self.committed, effects, path);
                }
                None => {}
            },
        }
    }

    /// Lenient application creates missing parents; index them too.
    fn ensure_parents_indexed(
        &mut self,
        path: &str,
        edits: &mut Vec<IndexEdit>,
        sync_dirs: &mut BTreeSet<String>,
    ) {
        let mut missing = Vec::new();
        let mut dir = parent(path);
        while !dir.is_empty() && !matches!(self.committed.get(dir), Some(Node::Dir { .. })) {
            missing.push(dir.to_string());
            dir = parent(dir);
        }
        for dir in missing.into_iter().rev() {
            self.committed.remove_tree(&dir);
            edits.push(IndexEdit::RemoveTree(dir.clone()));
            let node = Node::Dir { mode: 0o755 };
            self.committed.insert(&dir, node.clone());
            edits.push(IndexEdit::Set(dir.clone(), node));
            sync_dirs.insert(parent(&dir).to_string());
            sync_dirs.insert(dir);
        }
    }

    // ------------------------------------------------------------------
    // Rollback and rebuild
    // ------------------------------------------------------------------

    /// Brings `live/` back to exactly the committed state, dropping every
    /// pending capture. Cost: the speculative changes (pages of files changed
    /// in place; whole files for files created, removed or replaced).
    pub fn rollback(&mut self) -> Result<RollbackStats, EngineError> {
        let mut stats = RollbackStats::default();
        if self.mode != Mode::NeedsRollback && self.diverged_at.is_none() {
            // Capture what the application did since the last capture, so
            // that those changes are reverted page by page too. A failure
            // marks the paths unknown, which reverts them whole.
            let _ = self.capture();
        } else {
            match self.take_tree_changes() {
                Ok(changes) => self.mark_unknown(&changes),
                Err(_) => {
                    self.unknown_rescan.insert(String::new());
                }
            }
        }
        let live_ok = matches!(self.tree.stat(LIVE_DIR)?, Some(m) if m.kind == Kind::Dir);
        if !live_ok || self.unknown_rescan.contains("") {
            // Everything may have changed: a full copy is the cheapest
            // certain answer.
            self.rebuild_live()?;
            stats.bytes_copied = self.committed.iter().fold(0, |sum, (_, node)| match node {
                Node::File(file) => sum + file.size_bytes,
                Node::Dir { .. } => sum,
            });
            stats.paths = self.committed.len() as u64;
            return Ok(stats);
        }
        let mut targets: BTreeMap<String, bool> = BTreeMap::new();
        for (path, entry) in &self.overlay {
            // A path removed or re-created speculatively may be a new
            // directory over an old one: its old children must come back.
            let replaced = matches!(entry.zero_from, Some((0, _)));
            targets.insert(path.clone(), entry.tag == TAG_UNKNOWN || replaced);
        }
        for root in std::mem::take(&mut self.unknown_rescan) {
            targets.insert(root, true);
        }
        for (path, deep) in targets {
            self.revert_path(&path, deep, &mut stats)?;
        }
        self.overlay.clear();
        self.pending.clear();
        // Drain the notifications of the rollback's own writes. If the
        // application's files cannot be told, the tree reports everything
        // at the next drain: nothing is lost, and the next capture fails
        // or rescans.
        match self.take_tree_changes() {
            Ok(_) | Err(TreeError::Untrackable(_)) => {}
            Err(e) => return Err(e.into()),
        }
        assert_eq!(
            self.spec.hash(),
            self.committed.hash(),
            "rollback left the working copy index out of step"
        );
        self.mode = Mode::Mirrored;
        Ok(stats)
    }

    /// Makes `live/path` equal to `base/path` (recursively when `deep` or
    /// when the kinds differ).
    fn revert_path(
        &mut self,
        path: &str,
        deep: bool,
        stats: &mut RollbackStats,
    ) -> Result<(), EngineError> {
        stats.paths += 1;
        let live_path = join(LIVE_DIR, path);
        let base_path = join(&self.base_dir, path);
        let live = self.tree.stat(&live_path)?;
        match self.committed.get(path).cloned() {
            None => {
                if live.is_some() {
                    remove_recursive(&mut self.tree, &live_path)?;
                }
            }
            Some(Node::Dir { mode }) => {
                if !matches!(live, Some(m) if m.kind == Kind::Dir) {
                    if live.is_some() {
                        remove_recursive(&mut self.tree, &live_path)?;
                    }
                    self.ensure_live_parents(path)?;
                    self.copy_subtree_to_live(path, stats)?;
                } else {
                    if live.map(|m| m.mode) != Some(mode) {
                        self.tree.set_mode(&live_path, mode)?;
                    }
                    if deep {
                        let mut children: BTreeSet<String> = self
                            .tree
                            .list(&live_path)?
                            .into_iter()
                            .map(|n| join(path, &n))
                            .collect();
                        children.extend(
                            self.committed
                                .descendants(path)
                                .filter(|(p, _)| parent(p) == path)
                                .map(|(p, _)| p.clone()),
                        );
                        for child in children {
                            self.revert_path(&child, true, stats)?;
                        }
                    }
                }
            }
            Some(Node::File(file)) => {
                let in_place = !deep
                    && matches!(live, Some(m) if m.kind == Kind::File && m.links == 1)
                    && self.overlay.get(path).is_some_and(|o| o.tag != TAG_UNKNOWN);
                if in_place {
                    self.revert_file_in_place(path, &file, stats)?;
                } else {
                    if live.is_some() {
                        remove_recursive(&mut self.tree, &live_path)?;
                    }
                    self.ensure_live_parents(path)?;
                    self.tree.copy_file(&base_path, &live_path)?;
                    stats.bytes_copied += file.size_bytes;
                }
            }
        }
        self.spec.copy_subtree_from(&self.committed, path);
        Ok(())
    }

    fn revert_file_in_place(
        &mut self,
        path: &str,
        file: &FileNode,
        stats: &mut RollbackStats,
    ) -> Result<(), EngineError> {
        let live_path = join(LIVE_DIR, path);
        let base_path = join(&self.base_dir, path);
        let overlay = self.overlay.get(path).expect("checked by caller");
        let mut ranges: Vec<(u64, u64)> = overlay
            .pages
            .keys()
            .map(|&page| page_range_or_empty(page, file.size_bytes))
            .filter(|r| !r.is_empty())
            .map(|r| (r.start as u64, r.end as u64))
            .collect();
        if let Some((zero_from, _)) = overlay.zero_from {
            if zero_from < file.size_bytes {
                ranges.push((zero_from, file.size_bytes));
            }
        }
        let live_size = self.tree.stat(&live_path)?.map_or(0, |m| m.size_bytes);
        if live_size != file.size_bytes {
            self.tree.set_len(&live_path, file.size_bytes)?;
        }
        ranges.sort_unstable();
        // One read of the committed file for all ranges.
        let pieces: Option<Vec<(u64, Vec<u8>)>> = self.tree.with_file(&base_path, |bytes| {
            ranges
                .iter()
                .map(|&(start, end)| {
                    bytes
                        .get(start as usize..end as usize)
                        .map(|d| (start, d.to_vec()))
                })
                .collect()
        })?;
        let pieces = pieces.ok_or_else(|| {
            EngineError::Storage(TreeError::BadPath {
                path: base_path.clone(),
                reason: "committed file shorter than its index (changed behind the engine)",
            })
        })?;
        for (start, data) in pieces {
            self.tree.write_at(&live_path, start, &data)?;
            stats.bytes_copied += data.len() as u64;
        }
        if self.tree.stat(&live_path)?.map(|m| m.mode) != Some(file.mode) {
            self.tree.set_mode(&live_path, file.mode)?;
        }
        Ok(())
    }

    fn ensure_live_parents(&mut self, path: &str) -> Result<(), EngineError> {
        let mut missing = Vec::new();
        let mut dir = parent(path);
        while !dir.is_empty()
            && !matches!(self.tree.stat(&join(LIVE_DIR, dir))?, Some(m) if m.kind == Kind::Dir)
        {
            missing.push(dir.to_string());
            dir = parent(dir);
        }
        for dir in missing.into_iter().rev() {
            let mode = match self.committed.get(&dir) {
                Some(Node::Dir { mode }) => *mode,
                _ => 0o755,
            };
            let live_dir = join(LIVE_DIR, &dir);
            if self.tree.stat(&live_dir)?.is_some() {
                remove_recursive(&mut self.tree, &live_dir)?;
            }
            self.tree.mkdir(&live_dir, mode)?;
            self.tree.set_mode(&live_dir, mode)?;
        }
        Ok(())
    }

    /// Copies `base/path` (a directory) and everything under it into `live/`.
    fn copy_subtree_to_live(
        &mut self,
        path: &str,
        stats: &mut RollbackStats,
    ) -> Result<(), EngineError> {
        let entries: Vec<(String, Node)> = self
            .committed
            .subtree_paths(path)
            .into_iter()
            .map(|p| {
                let node = self.committed.get(&p).expect("listed").clone_shallow();
                (p, node)
            })
            .collect();
        for (p, node) in entries {
            let live_path = join(LIVE_DIR, &p);
            match node {
                Node::Dir { mode } => {
                    self.tree.mkdir(&live_path, mode)?;
                    self.tree.set_mode(&live_path, mode)?;
                }
                Node::File(file) => {
                    self.tree.copy_file(&join(&self.base_dir, &p), &live_path)?;
                    stats.bytes_copied += file.size_bytes;
                }
            }
        }
        Ok(())
    }

    /// Replaces `live/` by a copy of `base/` (restart, promotion after a
    /// snapshot install). Costs a full copy.
    pub(crate) fn rebuild_live(&mut self) -> Result<(), EngineError> {
        remove_recursive(&mut self.tree, LIVE_DIR)?;
        self.tree.mkdir(LIVE_DIR, 0o755)?;
        let mut stats = RollbackStats::default();
        let tops: Vec<String> = self
            .committed
            .iter()
            .filter(|(p, _)| !p.contains('/'))
            .map(|(p, _)| p.clone())
            .collect();
        for top in tops {
            match self.committed.get(&top) {
                Some(Node::Dir { .. }) => self.copy_subtree_to_live(&top, &mut stats)?,
                Some(Node::File(_)) => {
                    self.tree
                        .copy_file(&join(&self.base_dir, &top), &join(LIVE_DIR, &top))?;
                }
                None => unreachable!("listed"),
            }
        }
        self.spec = self.committed.clone();
        self.overlay.clear();
        self.unknown_rescan.clear();
        self.pending.clear();
        self.mode = Mode::Mirrored;
        self.tree.watch(LIVE_DIR)?;
        let _ = self.take_tree_changes()?;
        Ok(())
    }

    /// Installs a new committed directory (snapshot install): the caller has
    /// synced it and written `meta`; this switches the in-memory state.
    pub(crate) fn switch_base(
        &mut self,
        gen: u64,
        index: u64,
        term: u64,
        committed: StateIndex,
        bound: u64,
    ) -> Result<(), EngineError> {
        let old = std::mem::replace(&mut self.base_dir, base_dir_name(gen));
        self.gen = gen;
        self.committed = committed;
        self.applied_index = index;
        self.state_index = index;
        self.state_term = term;
        self.entry_term = term;
        // A state from a recovering source is exact once replayed to
        // `bound` (see `snapshot.rs`).
        self.recovering = bound > index;
        self.recorded_bound = bound;
        if self.recovering {
            self.replay_bound = bound;
        }
        self.diverged_at = None;
        self.staging = None;
        self.index_stale = false;
        // The installed state is durable and named by `meta`.
        self.checkpoint.reset_to(index);
        // A snapshot this server was sending described the old state.
        self.journal = None;
        remove_recursive(&mut self.tree, &old)?;
        remove_recursive(&mut self.tree, STAGE_DIR)?;
        self.rebuild_live()
    }
}

/// What a rollback did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RollbackStats {
    pub paths: u64,
    pub bytes_copied: u64,
}

/// Where the parts of a whole delta are read from during apply.
enum PartSource<'a> {
    Memory(&'a [Vec<u8>]),
    /// Parts `0..n-1` in `stage/`, the last one in memory.
    Staged {
        last: &'a [u8],
    },
}

impl PartSource<'_> {
    fn count(&self) -> usize {
        match self {
            PartSource::Memory(parts) => parts.len(),
            PartSource::Staged { last } => match format::parse_part(last) {
                Ok((header, _)) => header.part_count as usize,
                Err(_) => 1,
            },
        }
    }

    fn get<T: FileTree>(
        &self,
        tree: &mut T,
        part_no: usize,
    ) -> Result<std::borrow::Cow<'_, [u8]>, TreeError> {
        match self {
            PartSource::Memory(parts) => Ok(std::borrow::Cow::Borrowed(&parts[part_no])),
            PartSource::Staged { last } => {
                if part_no + 1 == self.count() {
                    return Ok(std::borrow::Cow::Borrowed(last));
                }
                let path = join(STAGE_DIR, &part_no.to_string());
                Ok(std::borrow::Cow::Owned(
                    tree.with_file(&path, |b| b.to_vec())?,
                ))
            }
        }
    }
}

/// An operation with owned data, collected during capture before encoding.
#[derive(Debug)]
enum OwnedOp {
    Mkdir {
        path: String,
        mode: u32,
    },
    Create {
        path: String,
        mode: u32,
    },
    SetSize {
        path: String,
        size_bytes: u64,
    },
    Write {
        path: String,
        offset: u64,
        data: Vec<u8>,
    },
    SetMode {
        path: String,
        mode: u32,
    },
}

impl OwnedOp {
    fn as_op(&self) -> Op<'_> {
        match self {
            OwnedOp::Mkdir { path, mode } => Op::Mkdir { path, mode: *mode },
            OwnedOp::Create { path, mode } => Op::Create { path, mode: *mode },
            OwnedOp::SetSize { path, size_bytes } => Op::SetSize {
                path,
                size_bytes: *size_bytes,
            },
            OwnedOp::Write { path, offset, data } => Op::Write {
                path,
                offset: *offset,
                data,
            },
            OwnedOp::SetMode { path, mode } => Op::SetMode { path, mode: *mode },
        }
    }
}

trait NodeExt {
    fn clone_shallow(&self) -> Node;
}

impl NodeExt for Node {
    /// A copy without page hashes (enough to copy a tree).
    fn clone_shallow(&self) -> Node {
        match self {
            Node::Dir { mode } => Node::Dir { mode: *mode },
            Node::File(file) => Node::File(file.clone_meta_node()),
        }
    }
}

trait FileNodeExt {
    fn clone_meta(&self) -> FileMetaOnly;
    fn clone_meta_node(&self) -> FileNode;
}

#[derive(Clone, Copy)]
struct FileMetaOnly {
    mode: u32,
    size_bytes: u64,
}

impl FileNodeExt for FileNode {
    fn clone_meta(&self) -> FileMetaOnly {
        FileMetaOnly {
            mode: self.mode,
            size_bytes: self.size_bytes,
        }
    }

    fn clone_meta_node(&self) -> FileNode {
        FileNode {
            mode: self.mode,
            size_bytes: self.size_bytes,
            pages: Vec::new(),
            content: self.content,
        }
    }
}

fn effect_for<'a>(
    committed: &StateIndex,
    effects: &'a mut BTreeMap<String, FileEffect>,
    path: &str,
) -> &'a mut FileEffect {
    effects.entry(path.to_string()).or_insert_with(|| {
        let size = committed.file(path).map_or(0, |f| f.size_bytes);
        FileEffect {
            cur_size: size,
            zero_from: size,
            written_pages: BTreeSet::new(),
        }
    })
}

/// New hashes of the pages an apply may have changed: written pages, the
/// pages at and after the lowest zero-reset offset. Unwritten whole pages
/// past that offset are zeros, so they are not read (a sparse extension
/// costs O(pages), not O(bytes)). Returns the file size and the updates.
impl<T: FileTree> Engine<T> {
    /// The new hashes of the pages of `base_path` an apply touched (see
    /// `pages_to_rehash`), reading only those pages.
    fn rehash_touched(
        &mut self,
        base_path: &str,
        effect: &FileEffect,
    ) -> Result<(u64, Vec<(u64, u64)>), EngineError> {
        let size = match self.tree.stat(base_path)? {
            Some(m) if m.kind == Kind::File => m.size_bytes,
            _ => {
                return Err(EngineError::Storage(TreeError::BadPath {
                    path: base_path.to_string(),
                    reason: "not a regular file after apply",
                }))
            }
        };
        let (zeros, read) = pages_to_rehash(size, effect);
        let mut out: Vec<(u64, u64)> = zeros
            .into_iter()
            .map(|p| (p, index::zero_page_hash()))
            .collect();
        let mut buf = vec![0u8; PAGE_BYTES];
        for page in read {
            let range = page_range(page, size);
            let n = self
                .tree
                .read_at(base_path, range.start as u64, &mut buf[..range.len()])?;
            if n != range.len() {
                return Err(EngineError::Storage(TreeError::BadPath {
                    path: base_path.to_string(),
                    reason: "file shorter than its size while re-hashing",
                }));
            }
            out.push((page, index::hash_pages(&buf[..n], 0, 1)[0]));
        }
        Ok((size, out))
    }
}

/// Pages of a file of `size` bytes whose hashes an apply changed: those it
/// zeroed whole (their hash is known without reading) and those to read.
fn pages_to_rehash(size: u64, effect: &FileEffect) -> (Vec<u64>, BTreeSet<u64>) {
    let count = index::page_count(size);
    let mut pages: BTreeSet<u64> = effect
        .written_pages
        .iter()
        .copied()
        .filter(|&p| p < count)
        .collect();
    let first_reset = effect.zero_from / PAGE_BYTES as u64;
    let mut zeros = Vec::new();
    for page in first_reset..count {
        let range = page_range(page, size);
        let whole_zero_region = range.start as u64 >= effect.zero_from && range.len() == PAGE_BYTES;
        if whole_zero_region && !pages.contains(&page) {
            zeros.push(page);
        } else {
            pages.insert(page);
        }
    }
    (zeros, pages)
}

/// Applies one operation under `root`, leniently (see the format docs).
pub(crate) fn apply_op<T: FileTree>(
    tree: &mut T,
    root: &str,
    op: &Op<'_>,
) -> Result<(), TreeError> {
    let path = join(root, op.path());
    match *op {
        Op::Remove { .. } => remove_recursive(tree, &path),
        Op::Mkdir { mode, .. } => {
            match tree.stat(&path)? {
                Some(m) if m.kind == Kind::Dir => {}
                Some(_) => {
                    tree.remove_file(&path)?;
                    make_parents(tree, &path)?;
                    tree.mkdir(&path, mode)?;
                }
                None => {
                    make_parents(tree, &path)?;
                    tree.mkdir(&path, mode)?;
                }
            }
            if tree.stat(&path)?.map(|m| m.mode) != Some(mode) {
                tree.set_mode(&path, mode)?;
            }
            Ok(())
        }
        Op::Create { mode, .. } => {
            if matches!(tree.stat(&path)?, Some(m) if m.kind != Kind::File) {
                remove_recursive(tree, &path)?;
            }
            make_parents(tree, &path)?;
            tree.create_file(&path, mode)
        }
        Op::SetSize { size_bytes, .. } => {
            match tree.stat(&path)? {
                // Already that size: nothing to do (and no metadata write).
                Some(m) if m.kind == Kind::File && m.size_bytes == size_bytes => Ok(()),
                _ => {
                    ensure_file(tree, &path)?;
                    tree.set_len(&path, size_bytes)
                }
            }
        }
        Op::Write { offset, data, .. } => {
            ensure_file(tree, &path)?;
            tree.write_at(&path, offset, data)
        }
        Op::SetMode { mode, .. } => match tree.stat(&path)? {
            Some(_) => tree.set_mode(&path, mode),
            None => Ok(()),
        },
    }
}

fn ensure_file<T: FileTree>(tree: &mut T, path: &str) -> Result<(), TreeError> {
    match tree.stat(path)? {
        Some(m) if m.kind == Kind::File => Ok(()),
        other => {
            if other.is_some() {
                remove_recursive(tree, path)?;
            }
            make_parents(tree, path)?;
            tree.create_file(path, 0o644)
        }
    }
}

fn make_parents<T: FileTree>(tree: &mut T, path: &str) -> Result<(), TreeError> {
    let mut missing = Vec::new();
    let mut dir = parent(path);
    while !dir.is_empty() {
        match tree.stat(dir)? {
            Some(m) if m.kind == Kind::Dir => break,
            Some(_) => {
                tree.remove_file(dir)?;
                missing.push(dir.to_string());
            }
            None => missing.push(dir.to_string()),
        }
        dir = parent(dir);
    }
    for dir in missing.into_iter().rev() {
        tree.mkdir(&dir, 0o755)?;
    }
    Ok(())
}

/// Removes whatever is at `path`, recursively; `Ok` when nothing is there.
pub(crate) fn remove_recursive<T: FileTree>(tree: &mut T, path: &str) -> Result<(), TreeError> {
    match tree.stat(path)? {
        None => Ok(()),
        Some(m) if m.kind == Kind::Dir => {
            for name in tree.list(path)? {
                remove_recursive(tree, &join(path, &name))?;
            }
            tree.remove_dir(path)
        }
        Some(_) => tree.remove_file(path),
    }
}

/// Builds the index of the tree under `root` by reading every file.
pub(crate) fn scan_tree<T: FileTree>(tree: &mut T, root: &str) -> Result<StateIndex, EngineError> {
    let mut index = StateIndex::new();
    let mut stack = vec![String::new()];
    while let Some(dir) = stack.pop() {
        for name in tree.list(&join(root, &dir))? {
            let rel = join(&dir, &name);
            check_name(&rel)?;
            let full = join(root, &rel);
            let Some(meta) = tree.stat(&full)? else {
                continue;
            };
            match meta.kind {
                Kind::Dir => {
                    index.insert(&rel, Node::Dir { mode: meta.mode });
                    stack.push(rel);
                }
                Kind::File => {
                    let node =
                        tree.with_file(&full, |bytes| FileNode::from_bytes(meta.mode, bytes))?;
                    index.insert(&rel, Node::File(node));
                }
                Kind::Symlink => return Err(unsupported(&rel, "symbolic link")),
                Kind::Special => {
                    return Err(unsupported(&rel, "special file (fifo, socket or device)"))
                }
            }
        }
    }
    Ok(index)
}

/// Restart steps before the engine exists: read (or create) the metadata,
/// drop leftovers, and index the committed directory.
fn prepare_open<T: FileTree>(tree: &mut T) -> Result<(MetaRecord, bool, StateIndex), EngineError> {
    let (record, fresh) = match meta::read(tree)? {
        Some(record) => (record, false),
        None => (init_fresh(tree)?, true),
    };
    let base_dir = base_dir_name(record.gen);
    for name in tree.list("")? {
        if name != META_PATH && name != base_dir {
            remove_recursive(tree, &name)?;
        }
    }
    match tree.stat(&base_dir)? {
        Some(m) if m.kind == Kind::Dir => {}
        _ => {
            return Err(EngineError::Storage(TreeError::BadPath {
                path: base_dir,
                reason: "metadata names a committed directory that is missing",
            }))
        }
    }
    let committed = scan_tree(tree, &base_dir)?;
    Ok((record, fresh, committed))
}

fn init_fresh<T: FileTree>(tree: &mut T) -> Result<MetaRecord, EngineError> {
    for name in tree.list("")? {
        remove_recursive(tree, &name)?;
    }
    let record = MetaRecord {
        counter: 0,
        applied_index: 0,
        gen: 0,
        state_hash: EMPTY_STATE_HASH,
        applied_term: 0,
        replay_bound: 0,
    };
    tree.mkdir(&base_dir_name(0), 0o755)?;
    tree.sync(&[], &[String::new(), base_dir_name(0)])?;
    meta::create(tree, &record)?;
    Ok(record)
}

pub(crate) fn base_dir_name(gen: u64) -> String {
    format!("base.{gen}")
}

fn check_name(path: &str) -> Result<(), EngineError> {
    super::tree::check_rel_path(path)
        .map_err(|_| unsupported(path, "file name (not a clean UTF-8 relative path)"))
}

fn unsupported(path: &str, what: &'static str) -> EngineError {
    EngineError::Unsupported {
        path: path.to_string(),
        what,
    }
}

/// Valid bytes of `page` in a file of `size` (0 past the end).
fn valid_len(page: u64, size: u64) -> u64 {
    let start = page * PAGE_BYTES as u64;
    size.saturating_sub(start).min(PAGE_BYTES as u64)
}

fn page_range(page: u64, size: u64) -> std::ops::Range<usize> {
    let start = (page as usize) * PAGE_BYTES;
    let end = (start + PAGE_BYTES).min(size as usize);
    assert!(start < end, "page {page} outside a file of {size} bytes");
    start..end
}

fn page_range_or_empty(page: u64, size: u64) -> std::ops::Range<usize> {
    let start = (page as usize) * PAGE_BYTES;
    let end = (start + PAGE_BYTES).min(size as usize);
    if start >= end {
        return 0..0;
    }
    start..end
}

fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| *b == 0)
}

/// Runs `[s, e)` where `old` and `new` differ (same length).
fn diff_runs(old: &[u8], new: &[u8]) -> Vec<(usize, usize)> {
    assert_eq!(old.len(), new.len());
    let mut runs = Vec::new();
    let mut i = 0;
    while i < old.len() {
        // Fast skip of equal 8-byte words.
        if i + 8 <= old.len() && old[i..i + 8] == new[i..i + 8] {
            i += 8;
            continue;
        }
        if old[i] == new[i] {
            i += 1;
            continue;
        }
        let start = i;
        while i < old.len() && old[i] != new[i] {
            i += 1;
        }
        runs.push((start, i));
    }
    runs
}

/// Runs of non-zero bytes in `bytes[from..to]`.
fn nonzero_runs(bytes: &[u8], from: usize, to: usize) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut i = from;
    while i < to {
        if i + 8 <= to && bytes[i..i + 8] == [0u8; 8] {
            i += 8;
            continue;
        }
        if bytes[i] == 0 {
            i += 1;
            continue;
        }
        let start = i;
        while i < to && bytes[i] != 0 {
            i += 1;
        }
        runs.push((start, i));
    }
    merge_runs(runs)
}

fn merge_runs(runs: Vec<(usize, usize)>) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for (s, e) in runs {
        match out.last_mut() {
            Some(last) if s <= last.1 + RUN_GAP_BYTES_MAX => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

fn push_run(runs: &mut Vec<(u64, u64)>, s: u64, e: u64) {
    match runs.last_mut() {
        Some(last) if s <= last.1 + RUN_GAP_BYTES_MAX as u64 => last.1 = last.1.max(e),
        _ => runs.push((s, e)),
    }
}

/// Bytes `[s, e)` of the file, gathered from the changed pages' new content.
/// Gaps merged between runs may span an unchanged page, which is then read
/// as absent: runs only merge within `RUN_GAP_BYTES_MAX`, and the bytes of
/// an unchanged page between two changed ones are never inside a run unless
/// both neighbours are changed pages, so every byte asked for is available.
fn page_bytes_range(pages: &[u64], contents: &[Vec<u8>], s: u64, e: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity((e - s) as usize);
    let mut at = s;
    while at < e {
        let page = at / PAGE_BYTES as u64;
        let i = pages
            .binary_search(&page)
            .expect("run bytes come from changed pages");
        let page_start = page * PAGE_BYTES as u64;
        let from = (at - page_start) as usize;
        let to = ((e - page_start) as usize).min(contents[i].len());
        assert!(from < to, "run beyond the page's valid bytes");
        out.extend_from_slice(&contents[i][from..to]);
        at = page_start + to as u64;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs() {
        assert_eq!(diff_runs(b"abcdef", b"abXdeY"), vec![(2, 3), (5, 6)]);
        assert_eq!(nonzero_runs(&[0, 1, 1, 0, 0], 0, 5), vec![(1, 3)]);
        let mut r = Vec::new();
        push_run(&mut r, 0, 1);
        push_run(&mut r, 10, 11);
        push_run(&mut r, 100, 101);
        assert_eq!(r, vec![(0, 11), (100, 101)]);
    }
}
