//! The replica state machine. See the module documentation of
//! `crate::replica` for what it does and the order of calls.

use crate::delta::{
    Applied, Engine, EngineConfig, EngineError, FileTree, InstallProgress, Mode, SnapshotInstall,
    SnapshotSource, StateHash,
};
use crate::raft::{
    self, CoreError, Membership, Message, Options, ProposeError, Raft, ReadError, Role,
};
use crate::replica::entry::{ClientId, CommandEntry, ReplicaEntry, EXPIRED_PER_ENTRY_MAX};
use crate::replica::session::{self, Session, SessionError, SessionTable, SESSIONS_DIR};
use bytes::Bytes;
use ringlog::{EntryKind, Index, LogId, LogStore, NodeId, Term};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Log space use (percent of the ring) at which the applied prefix is
/// released whatever the entry count, and at which even the entries kept
/// for lagging followers go (they get a snapshot instead).
const LOG_SPACE_RELEASE_PERCENT: u8 = 50;
const LOG_SPACE_URGENT_PERCENT: u8 = 75;

/// Tunables of the pipeline. Every queue has a limit.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    /// Commands proposed and not yet committed, at most.
    pub pipeline_commands_max: usize,
    /// Requests waiting to run, at most (beyond: `Reply::Busy`).
    pub queued_requests_max: usize,
    /// Replies waiting for their quorum check, at most.
    pub pending_replies_max: usize,
    /// Client sessions kept; beyond, the leader expires the oldest.
    pub sessions_max: usize,
    /// Largest response an application may give.
    pub response_bytes_max: usize,
    /// Release the log prefix once this many entries are applied durably
    /// beyond the last release...
    pub compact_entries: u64,
    /// ...keeping this many for followers that lag a little.
    pub compact_keep_entries: u64,
    /// Start a checkpoint (sync the committed state, then record its
    /// index, so the log may release what precedes it) once this many
    /// whole deltas were applied since the last one...
    pub checkpoint_entries: u64,
    /// ...or this many delta bytes...
    pub checkpoint_bytes: u64,
    /// ...or this many ticks passed with anything applied. These bound the
    /// log tail a restart replays.
    pub checkpoint_ticks: u32,
    /// Snapshot chunks sent and not yet acknowledged.
    pub snapshot_chunks_in_flight: u64,
    /// Ticks without an acknowledgement before resending snapshot chunks.
    pub snapshot_stall_ticks: u32,
    /// Resends of one snapshot before giving up on that transfer.
    pub snapshot_stalls_max: u32,
    /// A diverged server asks its leader for a snapshot this often.
    pub snapshot_request_ticks: u32,
    /// Test-only: a deliberate bug, to prove the checkers catch it.
    #[doc(hidden)]
    pub mutation: ReplicaMutation,
}

/// Deliberate bugs in the pipeline, switched on only by tests and
/// `bunker-sim --replica-mutation`, to show the checkers catch them.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReplicaMutation {
    #[default]
    None,
    /// Answer a command as soon as it is proposed, not when it commits.
    ReleaseBeforeCommit,
    /// Never roll the working copy back.
    SkipRollback,
    /// Run commands as soon as this server leads, before its barrier.
    SkipBarrier,
    /// Run retried commands again instead of answering from the session.
    SkipDedup,
    /// Answer reads at once, without a quorum check or waiting for the
    /// pipeline.
    ReadWithoutQuorum,
    /// Write a checkpoint's record before the state it names is synced.
    CheckpointBeforeSync,
    /// Release the log up to what was applied, not to the checkpoint.
    ReleasePastCheckpoint,
}

impl std::fmt::Display for ReplicaMutation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReplicaMutation::None => "none",
            ReplicaMutation::ReleaseBeforeCommit => "release-before-commit",
            ReplicaMutation::SkipRollback => "skip-rollback",
            ReplicaMutation::SkipBarrier => "skip-barrier",
            ReplicaMutation::SkipDedup => "skip-dedup",
            ReplicaMutation::ReadWithoutQuorum => "read-without-quorum",
            ReplicaMutation::CheckpointBeforeSync => "checkpoint-before-sync",
            ReplicaMutation::ReleasePastCheckpoint => "release-past-checkpoint",
        })
    }
}

impl std::str::FromStr for ReplicaMutation {
    type Err = String;

    fn from_str(s: &str) -> Result<ReplicaMutation, String> {
        match s {
            "none" => Ok(ReplicaMutation::None),
            "release-before-commit" => Ok(ReplicaMutation::ReleaseBeforeCommit),
            "skip-rollback" => Ok(ReplicaMutation::SkipRollback),
            "skip-barrier" => Ok(ReplicaMutation::SkipBarrier),
            "skip-dedup" => Ok(ReplicaMutation::SkipDedup),
            "read-without-quorum" => Ok(ReplicaMutation::ReadWithoutQuorum),
            "checkpoint-before-sync" => Ok(ReplicaMutation::CheckpointBeforeSync),
            "release-past-checkpoint" => Ok(ReplicaMutation::ReleasePastCheckpoint),
            other => Err(format!(
                "unknown replica mutation {other:?}; expected none, release-before-commit, \
                 skip-rollback, skip-barrier, skip-dedup, read-without-quorum, \
                 checkpoint-before-sync or release-past-checkpoint"
            )),
        }
    }
}

impl Default for ReplicaConfig {
    fn default() -> ReplicaConfig {
        ReplicaConfig {
            pipeline_commands_max: 256,
            queued_requests_max: 4096,
            pending_replies_max: 4096,
            sessions_max: 100_000,
            response_bytes_max: 1 << 20,
            compact_entries: 10_000,
            compact_keep_entries: 1_000,
            checkpoint_entries: 10_000,
            checkpoint_bytes: 64 << 20,
            checkpoint_ticks: 200,
            snapshot_chunks_in_flight: 4,
            snapshot_stall_ticks: 20,
            snapshot_stalls_max: 10,
            snapshot_request_ticks: 20,
            mutation: ReplicaMutation::None,
        }
    }
}

/// Everything a replica is built from, besides its storage.
#[derive(Clone, Debug)]
pub struct ReplicaSetup {
    pub raft: Options,
    pub voters: Membership,
    pub engine: EngineConfig,
    pub replica: ReplicaConfig,
}

/// A client's command as the server received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The driver's handle for routing the reply (a connection, say).
    pub ctx: u64,
    /// The session the leader gave this client ([`OPEN_SEQ`] requests
    /// carry anything here; the reply echoes it).
    pub client: ClientId,
    /// Increases with every new command of this client, from 1; a retry
    /// reuses it. [`OPEN_SEQ`] asks for a new session.
    pub seq: u64,
    pub command: Bytes,
}

/// The sequence number of a request that opens a session: the leader
/// commits a new, empty session record and answers with its id (8 bytes,
/// little endian, see [`decode_session_id`]). Ids are the generation of
/// the committed entry that created them, so they are unique for the life
/// of the cluster and never handed out twice: a session that expired can
/// never be mistaken for a new one (the Raft dissertation, §6.3).
pub const OPEN_SEQ: u64 = 0;

/// The session id in the response to an [`OPEN_SEQ`] request.
pub fn decode_session_id(response: &[u8]) -> Option<ClientId> {
    let bytes: [u8; 8] = response.try_into().ok()?;
    Some(u64::from_le_bytes(bytes)).filter(|id| *id != 0)
}

/// What a client is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The command's response; its effects (if any) are committed.
    Ok { status: u8, response: Bytes },
    /// This server does not lead; try `leader` if known.
    NotLeader { leader: Option<NodeId> },
    /// The outcome is unknown (leadership changed while the command was in
    /// flight): retry with the same client id and sequence number.
    Unknown,
    /// The client already sent a later command; this one is not run.
    Stale { last_seq: u64 },
    /// Too many commands in flight; retry later.
    Busy,
    /// The application failed on this command (crashed, hung, refused, or
    /// made changes Bunker cannot replicate); nothing it did was kept.
    AppFailed { reason: String },
    /// This client's session does not exist (it expired, or it was never
    /// opened): the command was not run now. If an earlier attempt of it
    /// was sent, that attempt may have run before the session expired, and
    /// no server can tell any more.
    SessionExpired,
}

/// How the application's run of a command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecOutcome {
    /// The application answered (status 0 success, other values its own
    /// errors, which are still answers the client must see).
    Done { status: u8, response: Bytes },
    /// The application failed: crashed, timed out, or misbehaved.
    Failed { reason: String },
}

/// Messages between replicas: consensus messages and snapshot transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerMessage {
    Raft(Message),
    /// One chunk of snapshot transfer `snapshot` (unique per transfer),
    /// sent by the leader of `term`.
    SnapshotChunk {
        from: NodeId,
        to: NodeId,
        term: Term,
        snapshot: u64,
        seq: u64,
        data: Bytes,
    },
    /// The receiver needs chunk `next_seq` next.
    SnapshotAck {
        from: NodeId,
        to: NodeId,
        snapshot: u64,
        next_seq: u64,
    },
    /// A diverged replica asks its leader for a snapshot.
    SnapshotRequest {
        from: NodeId,
        to: NodeId,
    },
}

impl PeerMessage {
    pub fn from(&self) -> NodeId {
        match self {
            PeerMessage::Raft(m) => m.from,
            PeerMessage::SnapshotChunk { from, .. }
            | PeerMessage::SnapshotAck { from, .. }
            | PeerMessage::SnapshotRequest { from, .. } => *from,
        }
    }

    pub fn to(&self) -> NodeId {
        match self {
            PeerMessage::Raft(m) => m.to,
            PeerMessage::SnapshotChunk { to, .. }
            | PeerMessage::SnapshotAck { to, .. }
            | PeerMessage::SnapshotRequest { to, .. } => *to,
        }
    }
}

/// What the replica asks its driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    Send(PeerMessage),
    /// Run `command` in the working copy, then call `handle_executed(id, ..)`.
    /// `ctx` is the request's (for the driver's timings).
    Execute {
        id: u64,
        ctx: u64,
        command: Bytes,
    },
    /// Answer the request that carried `ctx`.
    Reply {
        ctx: u64,
        client: ClientId,
        seq: u64,
        reply: Reply,
    },
    /// Observation for checkers and metrics: entry `index` (of `term`) was
    /// applied; the committed state hash is now `state_hash` if the entry
    /// completed a state change.
    Applied {
        index: Index,
        term: Term,
        state_hash: Option<StateHash>,
    },
    /// Observation: this replica's state diverged from the leader's.
    Diverged {
        index: Index,
        reason: String,
    },
    /// Restart a long-running application before it runs anything else:
    /// the working copy changed under it (rollback, snapshot) or it is about
    /// to serve a new term from the committed state.
    ResetApplication,
}

/// Counters of one replica, for metrics.
#[derive(Clone, Debug, Default)]
pub struct ReplicaStats {
    pub commands_executed: u64,
    pub commands_proposed: u64,
    pub app_failures: u64,
    pub rollbacks: u64,
    pub entries_applied: u64,
    pub delta_bytes_proposed: u64,
    pub snapshots_sent: u64,
    pub snapshots_installed: u64,
    pub replies_ok: u64,
    pub replies_not_leader: u64,
    pub replies_unknown: u64,
    pub replies_busy: u64,
    pub replies_stale: u64,
    pub replies_session_expired: u64,
    pub replies_app_failed: u64,
}

/// A failure that stops this server incarnation (its storage failed or
/// holds an impossible state). Never a peer's or a client's fault.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error("delta engine: {0}")]
    Engine(#[from] EngineError),
    #[error("sessions: {0}")]
    Session(#[from] SessionError),
    #[error("log: {0}")]
    Log(#[from] ringlog::StorageError),
    #[error("replica stopped after an earlier fatal error")]
    Stopped,
}

/// A command proposed and not yet committed.
struct InFlight {
    client: ClientId,
    seq: u64,
    /// The index of its last entry (the one carrying the response).
    last_index: Index,
    status: u8,
    response: Bytes,
    waiters: Vec<u64>,
    /// Its entry committed and its waiters were answered; it stays here
    /// (naming the client's sequence in `spec`) until it is applied and
    /// the session table holds it.
    released: bool,
}

/// A reply waiting for its quorum check (and for earlier entries).
struct PendingReply {
    read_ctx: u64,
    waiters: Vec<(u64, ClientId, u64)>,
    reply: Reply,
    /// Entries up to here must be applied first.
    after_index: Index,
    /// Set when the quorum check passed: the commit index it confirmed.
    confirmed: Option<Index>,
}

/// What exists only while this server leads.
struct Leading {
    term: Term,
    /// The barrier entry's index, once it committed.
    barrier: Option<Index>,
    /// Barrier committed and applied: commands may run.
    ready: bool,
    inflight: VecDeque<InFlight>,
    /// Sessions speculatively updated by the pipeline: client -> seq.
    spec: BTreeMap<ClientId, u64>,
    /// Sessions expired by the pipeline, not yet committed.
    spec_expired: BTreeSet<ClientId>,
    generation: u64,
    replies: VecDeque<PendingReply>,
    /// A command failed after changing the working copy: run nothing until
    /// the pipeline committed, then roll back.
    draining: bool,
    last_proposed: Index,
}

struct Executing {
    id: u64,
    request: Request,
    /// Leadership was lost meanwhile: the result is discarded.
    orphan: bool,
}

struct Outgoing {
    peer: NodeId,
    /// Unique per transfer (the engine's snapshot id names a state and
    /// repeats when the state does).
    transfer: u64,
    source: SnapshotSource,
    term: Term,
    acked: u64,
    sent: u64,
    end_seq: Option<u64>,
    stall_ticks: u32,
    stalls: u32,
}

struct Incoming {
    from: NodeId,
    snapshot: u64,
    install: SnapshotInstall,
    /// Chunks that arrived ahead of the next one (the network reorders),
    /// at most `snapshot_chunks_in_flight` of them.
    ahead: BTreeMap<u64, Bytes>,
}

/// One server's replica. See the module documentation.
pub struct Replica<L: LogStore, T: FileTree> {
    id: NodeId,
    cfg: ReplicaConfig,
    raft: Raft<L>,
    engine: Engine<T>,
    sessions: SessionTable,
    /// Every committed entry up to here was given to the engine.
    applied: Index,
    leading: Option<Leading>,
    queue: VecDeque<Request>,
    executing: Option<Executing>,
    next_exec: u64,
    next_read: u64,
    /// Roll the working copy back as soon as the application is quiet.
    rollback_due: bool,
    /// The session table waits for the recovery of an interrupted apply.
    sessions_stale: bool,
    diverged: Option<Index>,
    ticks_since_request: u32,
    /// Ticks since the last checkpoint started.
    ticks_since_checkpoint: u32,
    /// The core's `room_refusals` when last looked at; while the log is
    /// pressed (it refused something since), checkpoints and releases
    /// are urgent.
    room_refusals_seen: u64,
    log_pressed: bool,
    outgoing: Option<Outgoing>,
    next_transfer: u64,
    snapshot_queue: VecDeque<NodeId>,
    incoming: Option<Incoming>,
    effects: VecDeque<Effect>,
    stats: ReplicaStats,
    stopped: bool,
}

const APPLY_BATCH_BYTES: u64 = 4 << 20;

impl<L: LogStore, T: FileTree> Replica<L, T> {
    /// Opens server `id`'s replica over its log and its file tree (both as
    /// found on disk; new ones start empty).
    pub fn open(
        id: NodeId,
        setup: &ReplicaSetup,
        log: L,
        tree: T,
        seed: u64,
    ) -> Result<Replica<L, T>, ReplicaError> {
        let mut engine_config = setup.engine.clone();
        engine_config.test_checkpoint_before_sync |=
            setup.replica.mutation == ReplicaMutation::CheckpointBeforeSync;
        let (mut engine, report) = Engine::open(tree, engine_config)?;
        let applied = LogId::new(report.applied_index, report.applied_term);
        let raft = Raft::new(
            id,
            setup.raft.clone(),
            setup.voters.clone(),
            log,
            applied,
            seed,
        )?;
        // Entries after the checkpoint may have reached the files before a
        // crash; none beyond the log's end did (only entries committed and
        // durable here are applied).
        engine.set_replay_bound(raft.last_log_id().index);
        let mut replica = Replica {
            id,
            cfg: setup.replica.clone(),
            raft,
            engine,
            sessions: SessionTable::default(),
            applied: report.applied_index,
            leading: None,
            queue: VecDeque::new(),
            executing: None,
            next_exec: 1,
            next_read: 1,
            rollback_due: false,
            sessions_stale: report.recovering,
            diverged: None,
            ticks_since_request: 0,
            ticks_since_checkpoint: 0,
            room_refusals_seen: 0,
            log_pressed: false,
            outgoing: None,
            next_transfer: seed << 20,
            snapshot_queue: VecDeque::new(),
            incoming: None,
            effects: VecDeque::new(),
            stats: ReplicaStats::default(),
            stopped: false,
        };
        if !report.recovering {
            // While recovering, the committed files hold a partly applied
            // delta (a session record may be torn): the sessions are read
            // once the interrupted entry has been applied again.
            replica.reload_sessions()?;
        }
        replica.drain_raft()?;
        Ok(replica)
    }

    // ----- queries -------------------------------------------------------

    pub fn id(&self) -> NodeId {
        self.id
    }
    pub fn raft(&self) -> &Raft<L> {
        &self.raft
    }
    /// The consensus core, for the driver's group commits (`log_mut`) only.
    pub fn raft_mut(&mut self) -> &mut Raft<L> {
        &mut self.raft
    }
    pub fn engine(&self) -> &Engine<T> {
        &self.engine
    }
    /// The delta engine, for the driver to run the application in the
    /// working copy (`tree()`, `live_dir()`) while an `Execute` is out.
    pub fn engine_mut(&mut self) -> &mut Engine<T> {
        &mut self.engine
    }
    pub fn into_parts(self) -> (L, T) {
        (self.raft.into_log(), self.engine.into_tree())
    }
    pub fn sessions(&self) -> &SessionTable {
        &self.sessions
    }
    pub fn applied_index(&self) -> Index {
        self.applied
    }
    pub fn is_leader(&self) -> bool {
        self.raft.role() == Role::Leader
    }
    /// Leads with its barrier committed and applied: commands run.
    pub fn is_ready_leader(&self) -> bool {
        self.leading.as_ref().is_some_and(|l| l.ready)
    }
    pub fn diverged(&self) -> Option<Index> {
        self.diverged
    }
    pub fn executing(&self) -> bool {
        self.executing.is_some()
    }
    /// Snapshot transfers in progress, for traces and status pages.
    pub fn snapshot_status(&self) -> String {
        let out = self.outgoing.as_ref().map(|o| {
            format!(
                "to {} acked {} sent {} end {:?} stalls {}",
                o.peer, o.acked, o.sent, o.end_seq, o.stalls
            )
        });
        let inc = self
            .incoming
            .as_ref()
            .map(|i| format!("from {} next {}", i.from, i.install.next_seq()));
        format!("out {out:?} queue {:?} in {inc:?}", self.snapshot_queue)
    }

    pub fn stats(&self) -> &ReplicaStats {
        &self.stats
    }

    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    // ----- events --------------------------------------------------------

    pub fn handle_tick(&mut self) -> Result<(), ReplicaError> {
        self.guard(|r| {
            r.raft.handle_tick()?;
            r.drain_raft()?;
            r.tick_snapshots()?;
            r.tick_checkpoint()?;
            if r.diverged.is_some() {
                r.ticks_since_request += 1;
                if r.ticks_since_request >= r.cfg.snapshot_request_ticks {
                    r.ticks_since_request = 0;
                    if let Some(leader) = r.raft.leader_id() {
                        r.send(PeerMessage::SnapshotRequest {
                            from: r.id,
                            to: leader,
                        });
                    }
                }
            }
            Ok(())
        })
    }

    pub fn handle_message(&mut self, msg: PeerMessage) -> Result<(), ReplicaError> {
        self.guard(|r| {
            if msg.to() != r.id {
                return Ok(());
            }
            match msg {
                PeerMessage::Raft(m) => {
                    r.raft.handle_message(m)?;
                    r.drain_raft()
                }
                PeerMessage::SnapshotChunk {
                    from,
                    term,
                    snapshot,
                    seq,
                    data,
                    ..
                } => r.on_snapshot_chunk(from, term, snapshot, seq, data),
                PeerMessage::SnapshotAck {
                    from,
                    snapshot,
                    next_seq,
                    ..
                } => r.on_snapshot_ack(from, snapshot, next_seq),
                PeerMessage::SnapshotRequest { from, .. } => {
                    if r.raft.is_leader() {
                        r.start_snapshot(from)?;
                    }
                    Ok(())
                }
            }
        })
    }

    /// The log is durable up to `id`.
    pub fn handle_log_durable(&mut self, id: LogId) -> Result<(), ReplicaError> {
        self.guard(|r| {
            r.raft.handle_log_durable(id)?;
            r.drain_raft()
        })
    }

    /// A client's command arrived.
    pub fn handle_request(&mut self, request: Request) -> Result<(), ReplicaError> {
        self.guard(|r| {
            if r.leading.is_none() {
                let leader = r.raft.leader_id();
                r.reply(&request, Reply::NotLeader { leader });
                return Ok(());
            }
            if r.queue.len() >= r.cfg.queued_requests_max {
                r.reply(&request, Reply::Busy);
                return Ok(());
            }
            r.queue.push_back(request);
            r.pump()
        })
    }

    /// The application finished running command `id`.
    pub fn handle_executed(&mut self, id: u64, outcome: ExecOutcome) -> Result<(), ReplicaError> {
        self.guard(|r| {
            let Some(executing) = r.executing.take() else {
                return Ok(());
            };
            assert_eq!(executing.id, id, "one execution at a time");
            if executing.orphan || r.leading.is_none() {
                r.rollback_if_due()?;
                return Ok(());
            }
            let request = executing.request;
            match outcome {
                ExecOutcome::Failed { reason } => {
                    r.stats.app_failures += 1;
                    r.command_failed(request, reason)?
                }
                ExecOutcome::Done { response, .. } if response.len() > r.cfg.response_bytes_max => {
                    let reason = format!(
                        "response of {} bytes exceeds the limit of {}",
                        response.len(),
                        r.cfg.response_bytes_max
                    );
                    r.command_failed(request, reason)?;
                }
                ExecOutcome::Done { status, response } => {
                    let changed = match r.engine.has_changes() {
                        Ok(changed) => changed,
                        Err(e @ EngineError::Untrackable(_)) => {
                            r.command_failed(request, e.to_string())?;
                            return r.pump();
                        }
                        Err(e) => return Err(e.into()),
                    };
                    if changed {
                        r.propose_command(request, status, response)?;
                    } else {
                        // A read: answered after a quorum check started
                        // now, and after every entry proposed before it.
                        let after = r.leading.as_ref().map_or(0, |l| l.last_proposed);
                        let waiter = (request.ctx, request.client, request.seq);
                        r.reply_after_quorum(vec![waiter], Reply::Ok { status, response }, after)?;
                    }
                }
            }
            r.pump()
        })
    }

    // ----- plumbing ------------------------------------------------------

    fn guard(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<(), ReplicaError>,
    ) -> Result<(), ReplicaError> {
        if self.stopped {
            return Err(ReplicaError::Stopped);
        }
        let result = f(self);
        if result.is_err() {
            self.stopped = true;
        } else {
            self.assert_invariants();
        }
        result
    }

    fn assert_invariants(&self) {
        // The state machine never runs ahead of what the core reported
        // committed (committed and durable here): compaction releases the
        // log only up to what was applied, and the core releases only what
        // it reported.
        assert!(
            self.applied <= self.raft.commit_reported(),
            "applied {} beyond the reported commit {}",
            self.applied,
            self.raft.commit_reported()
        );
        assert!(
            self.raft.log().snapshot_id().index
                <= self.applied.max(self.engine.status().state_index)
        );
        assert!(self.leading.is_some() == (self.raft.role() == Role::Leader) || self.stopped);
    }

    fn send(&mut self, msg: PeerMessage) {
        self.effects.push_back(Effect::Send(msg));
    }

    fn count_reply(&mut self, reply: &Reply) {
        let s = &mut self.stats;
        match reply {
            Reply::Ok { .. } => s.replies_ok += 1,
            Reply::NotLeader { .. } => s.replies_not_leader += 1,
            Reply::Unknown => s.replies_unknown += 1,
            Reply::Busy => s.replies_busy += 1,
            Reply::Stale { .. } => s.replies_stale += 1,
            Reply::AppFailed { .. } => s.replies_app_failed += 1,
            Reply::SessionExpired => s.replies_session_expired += 1,
        }
    }

    fn reply(&mut self, request: &Request, reply: Reply) {
        self.count_reply(&reply);
        self.effects.push_back(Effect::Reply {
            ctx: request.ctx,
            client: request.client,
            seq: request.seq,
            reply,
        });
    }

    fn reply_to(&mut self, waiter: (u64, ClientId, u64), reply: Reply) {
        self.count_reply(&reply);
        self.effects.push_back(Effect::Reply {
            ctx: waiter.0,
            client: waiter.1,
            seq: waiter.2,
            reply,
        });
    }

    fn reload_sessions(&mut self) -> Result<(), ReplicaError> {
        let base = self.engine.base_dir().to_string();
        self.sessions = SessionTable::load(self.engine.tree(), &base)?;
        Ok(())
    }

    /// Carries out the consensus core's effects.
    fn drain_raft(&mut self) -> Result<(), ReplicaError> {
        while let Some(effect) = self.raft.poll_effect() {
            match effect {
                raft::Effect::Send(m) => self.send(PeerMessage::Raft(m)),
                raft::Effect::BecameLeader { term } => self.became_leader(term)?,
                raft::Effect::BarrierPassed { index, .. } => {
                    if let Some(l) = self.leading.as_mut() {
                        l.barrier = Some(index);
                    }
                    self.check_ready()?;
                }
                raft::Effect::LostLeadership { .. } => self.lost_leadership()?,
                raft::Effect::Committed { index } => {
                    self.release_committed(index);
                    self.apply_committed(index)?
                }
                raft::Effect::EntriesDiscarded { .. } => {}
                raft::Effect::ReadReady { ctx, index } => {
                    if let Some(l) = self.leading.as_mut() {
                        if let Some(p) = l.replies.iter_mut().find(|p| p.read_ctx == ctx) {
                            p.confirmed = Some(index);
                        }
                    }
                    self.release_replies();
                }
                raft::Effect::ReadFailed { ctx } => {
                    if let Some(l) = self.leading.as_mut() {
                        if let Some(pos) = l.replies.iter().position(|p| p.read_ctx == ctx) {
                            let p = l.replies.remove(pos).expect("position is valid");
                            for w in p.waiters {
                                self.reply_to(w, Reply::Unknown);
                            }
                        }
                    }
                }
                raft::Effect::SnapshotNeeded { to } => self.start_snapshot(to)?,
            }
        }
        Ok(())
    }

    // ----- leadership ----------------------------------------------------

    fn became_leader(&mut self, term: Term) -> Result<(), ReplicaError> {
        assert!(self.leading.is_none());
        assert!(self.executing.is_none(), "followers run no commands");
        self.leading = Some(Leading {
            term,
            barrier: None,
            ready: false,
            inflight: VecDeque::new(),
            spec: BTreeMap::new(),
            spec_expired: BTreeSet::new(),
            generation: self.sessions.generation(),
            replies: VecDeque::new(),
            draining: false,
            last_proposed: self.raft.last_log_id().index,
        });
        self.check_ready()
    }

    /// Ready once the barrier committed and everything up to it is applied,
    /// with a working copy equal to the committed state.
    fn check_ready(&mut self) -> Result<(), ReplicaError> {
        let applied = self.applied;
        let Some(l) = self.leading.as_ref() else {
            return Ok(());
        };
        let skip_barrier = self.cfg.mutation == ReplicaMutation::SkipBarrier;
        if l.ready || (!skip_barrier && l.barrier.is_none_or(|b| applied < b)) {
            return Ok(());
        }
        if self.diverged.is_some() || !self.engine.status().can_lead() {
            self.raft.set_electable(false)?;
            return self.drain_raft();
        }
        let mode = self.engine.status().mode;
        let skip = self.cfg.mutation == ReplicaMutation::SkipRollback && mode == Mode::Speculative;
        if mode != Mode::Mirrored && !skip {
            self.rollback_working_copy()?;
        }
        let generation = self.sessions.generation();
        let l = self.leading.as_mut().expect("leading");
        l.ready = true;
        l.generation = generation;
        // The application starts this term from the committed state.
        self.effects.push_back(Effect::ResetApplication);
        self.pump()
    }

    /// Leadership ended: nothing the pipeline holds can be answered any
    /// more, and the working copy goes back to the committed state.
    fn lost_leadership(&mut self) -> Result<(), ReplicaError> {
        let Some(l) = self.leading.take() else {
            return Ok(());
        };
        let leader = self.raft.leader_id();
        for request in std::mem::take(&mut self.queue) {
            // Never run: certainly no effect.
            self.reply(&request, Reply::NotLeader { leader });
        }
        for f in l.inflight {
            for ctx in f.waiters {
                self.reply_to((ctx, f.client, f.seq), Reply::Unknown);
            }
        }
        for p in l.replies {
            for w in p.waiters {
                self.reply_to(w, Reply::Unknown);
            }
        }
        if let Some(executing) = self.executing.as_mut() {
            executing.orphan = true;
            let request = executing.request.clone();
            self.reply(&request, Reply::Unknown);
        }
        if let Some(out) = self.outgoing.take() {
            self.engine.snapshot_end(out.source);
        }
        self.snapshot_queue.clear();
        self.rollback_due = true;
        self.rollback_if_due()
    }

    /// Returns the working copy to the committed state, and asks the
    /// driver to restart a long-running application, whose memory may hold
    /// state that is no longer in its files.
    fn rollback_working_copy(&mut self) -> Result<(), ReplicaError> {
        self.engine.rollback()?;
        self.stats.rollbacks += 1;
        self.effects.push_back(Effect::ResetApplication);
        Ok(())
    }

    fn rollback_if_due(&mut self) -> Result<(), ReplicaError> {
        if self.rollback_due && self.executing.is_none() {
            self.rollback_due = false;
            if self.diverged.is_none() && self.cfg.mutation != ReplicaMutation::SkipRollback {
                self.rollback_working_copy()?;
            }
        }
        Ok(())
    }

    // ----- the pipeline --------------------------------------------------

    /// Starts the next command if the pipeline can take one.
    fn pump(&mut self) -> Result<(), ReplicaError> {
        loop {
            let Some(l) = self.leading.as_ref() else {
                return Ok(());
            };
            if !l.ready || l.draining || self.executing.is_some() {
                return Ok(());
            }
            if l.inflight.len() >= self.cfg.pipeline_commands_max {
                return Ok(());
            }
            let Some(request) = self.queue.pop_front() else {
                return Ok(());
            };
            if request.seq == OPEN_SEQ {
                // Nothing runs: the entry holds the new session's record,
                // and the next request can start at once.
                self.propose_command(request, 0, Bytes::new())?;
                continue;
            }
            let dedup = self.cfg.mutation != ReplicaMutation::SkipDedup;
            let spec_seq = l.spec.get(&request.client).copied().filter(|_| dedup);
            let committed = self.sessions.get(request.client).cloned().filter(|_| dedup);
            if dedup && spec_seq.is_none() {
                if l.spec_expired.contains(&request.client) {
                    // An entry in the pipeline expires this session, and it
                    // may yet be rolled back: ask the client to come back.
                    self.reply(&request, Reply::Busy);
                    continue;
                }
                if committed.is_none() {
                    // Expired (or never opened): running the command could
                    // run a retry a second time (I4). The answer comes
                    // from the committed state, so, like a read's (I5), it
                    // waits for a quorum check in this term: a leader cut
                    // off from a newer one may not know the session yet
                    // (replica swarm seed 949194531).
                    let after = self.leading.as_ref().map_or(0, |l| l.last_proposed);
                    let waiter = (request.ctx, request.client, request.seq);
                    self.reply_after_quorum(vec![waiter], Reply::SessionExpired, after)?;
                    continue;
                }
            }
            if spec_seq == Some(request.seq) {
                // A retry of a command still in the pipeline: wait for it.
                let l = self.leading.as_mut().expect("leading");
                let f = l
                    .inflight
                    .iter_mut()
                    .rev()
                    .find(|f| f.client == request.client && f.seq == request.seq)
                    .expect("speculative sessions name in-flight commands");
                if f.released {
                    // Committed in this term: its response is final.
                    let reply = Reply::Ok {
                        status: f.status,
                        response: f.response.clone(),
                    };
                    self.reply(&request, reply);
                } else {
                    f.waiters.push(request.ctx);
                }
                continue;
            }
            if let Some(s) = committed.as_ref().filter(|s| s.seq == request.seq) {
                // A retry of a committed command: its original response.
                let reply = Reply::Ok {
                    status: s.status,
                    response: s.response.clone(),
                };
                let waiter = (request.ctx, request.client, request.seq);
                self.reply_after_quorum(vec![waiter], reply, 0)?;
                continue;
            }
            let last_seq = spec_seq.into_iter().chain(committed.map(|s| s.seq)).max();
            if let Some(last_seq) = last_seq.filter(|&last| request.seq < last) {
                self.reply(&request, Reply::Stale { last_seq });
                continue;
            }
            let id = self.next_exec;
            self.next_exec += 1;
            self.stats.commands_executed += 1;
            self.effects.push_back(Effect::Execute {
                id,
                ctx: request.ctx,
                command: request.command.clone(),
            });
            self.executing = Some(Executing {
                id,
                request,
                orphan: false,
            });
            return Ok(());
        }
    }

    /// The command changed the working copy: record the client's session
    /// beside its changes, capture the delta and propose it.
    fn propose_command(
        &mut self,
        request: Request,
        status: u8,
        response: Bytes,
    ) -> Result<(), ReplicaError> {
        let l = self.leading.as_mut().expect("leading");
        l.generation += 1;
        let generation = l.generation;
        // An open request gets the new session, named by this entry's
        // generation, and its id as the response.
        let opening = request.seq == OPEN_SEQ;
        let client = if opening { generation } else { request.client };
        let response = if opening {
            Bytes::copy_from_slice(&generation.to_le_bytes())
        } else {
            response
        };
        assert!(client != 0 || !opening, "generations start at 1");
        let expired = self.choose_expired(client);
        let session = Session {
            seq: request.seq,
            status,
            response: response.clone(),
            generation,
        };
        if let Err(e) = self.write_session(client, &session, &expired) {
            let reason = format!("recording the session failed: {e}");
            return self.command_failed(request, reason);
        }
        let captured = match self.engine.capture() {
            Ok(c) => c,
            Err(
                e @ (EngineError::Storage(_)
                | EngineError::Config(_)
                | EngineError::IsDiverged { .. }),
            ) => {
                return Err(e.into());
            }
            Err(e) => return self.command_failed(request, e.to_string()),
        };
        let count = captured.parts.len();
        assert!(
            count >= 1,
            "the session record alone makes the delta non-empty"
        );
        let mut payloads = Vec::with_capacity(count);
        for (i, part) in captured.parts.into_iter().enumerate() {
            let entry = if i + 1 < count {
                ReplicaEntry::Part { part }
            } else {
                ReplicaEntry::Command(CommandEntry {
                    client,
                    seq: request.seq,
                    status,
                    generation,
                    response: response.clone(),
                    expired: expired.clone(),
                    part,
                })
            };
            payloads.push(entry.encode());
        }
        let delta_bytes: u64 = payloads.iter().map(|p| p.len() as u64).sum();
        match self.raft.propose_batch(&payloads) {
            Ok(range) => {
                self.stats.commands_proposed += 1;
                self.stats.delta_bytes_proposed += delta_bytes;
                let l = self.leading.as_mut().expect("leading");
                l.last_proposed = range.last.index;
                l.spec.insert(client, request.seq);
                l.spec_expired.extend(expired);
                let early = self.cfg.mutation == ReplicaMutation::ReleaseBeforeCommit;
                l.inflight.push_back(InFlight {
                    client,
                    seq: request.seq,
                    last_index: range.last.index,
                    status,
                    response: response.clone(),
                    waiters: if early { Vec::new() } else { vec![request.ctx] },
                    released: false,
                });
                if early {
                    self.reply(&request, Reply::Ok { status, response });
                }
                self.drain_raft()
            }
            Err(ProposeError::Fatal(e)) => Err(e.into()),
            Err(ProposeError::NotLeader { .. }) => {
                // Cannot happen while leading; treat as lost.
                self.reply(&request, Reply::Unknown);
                self.rollback_due = true;
                Ok(())
            }
            Err(
                e @ (ProposeError::Backpressure { .. }
                | ProposeError::TooLarge { .. }
                | ProposeError::LogFull),
            ) => {
                // The working copy holds a delta that will never be
                // proposed: undo it once the pipeline has committed.
                self.leading.as_mut().expect("leading").draining = true;
                let after = self.leading.as_ref().map_or(0, |l| l.last_proposed);
                let waiter = (request.ctx, request.client, request.seq);
                let reason = match e {
                    ProposeError::TooLarge {
                        size_bytes,
                        max_bytes,
                    } => format!(
                        "not proposed: the command changed {size_bytes} bytes, more than the \
                         {max_bytes} one command may change (a quarter of the log's space; \
                         raise log.segment_mib or log.segment_count)"
                    ),
                    e => format!("not proposed: {e}"),
                };
                let reply = Reply::AppFailed { reason };
                self.reply_after_quorum(vec![waiter], reply, after)?;
                self.finish_drain()
            }
        }
    }

    /// Writes `client`'s session record (and removes expired ones) in the
    /// working copy, so that they join the command's delta.
    fn write_session(
        &mut self,
        client: ClientId,
        session: &Session,
        expired: &[ClientId],
    ) -> Result<(), crate::delta::TreeError> {
        let live = self.engine.live_dir();
        let tree = self.engine.tree();
        tree.mkdir(&format!("{live}/.bunker"), 0o755)?;
        tree.mkdir(&format!("{live}/{SESSIONS_DIR}"), 0o755)?;
        let path = format!("{live}/{}", session::record_path(client));
        let record = session::encode_record(session);
        tree.create_file(&path, 0o644)?;
        tree.write_at(&path, 0, &record)?;
        for &gone in expired {
            tree.remove_file(&format!("{live}/{}", session::record_path(gone)))?;
        }
        Ok(())
    }

    /// The sessions to expire with a new record for `client`: the oldest
    /// committed ones, when the table would exceed its limit.
    fn choose_expired(&self, client: ClientId) -> Vec<ClientId> {
        let Some(l) = self.leading.as_ref() else {
            return Vec::new();
        };
        let committed = self.sessions.len();
        let spec_new = l
            .spec
            .keys()
            .chain(std::iter::once(&client))
            .filter(|c| self.sessions.get(**c).is_none())
            .collect::<BTreeSet<_>>()
            .len();
        let live = committed + spec_new - l.spec_expired.len().min(committed);
        if live <= self.cfg.sessions_max {
            return Vec::new();
        }
        let excess = (live - self.cfg.sessions_max).min(EXPIRED_PER_ENTRY_MAX);
        self.sessions
            .oldest()
            .filter(|c| *c != client && !l.spec.contains_key(c) && !l.spec_expired.contains(c))
            .take(excess)
            .collect()
    }

    /// The application failed on `request`: undo whatever it did once the
    /// commands before it have committed, and tell the client.
    fn command_failed(&mut self, request: Request, reason: String) -> Result<(), ReplicaError> {
        let l = self.leading.as_mut().expect("leading");
        l.draining = true;
        let after = l.last_proposed;
        let waiter = (request.ctx, request.client, request.seq);
        self.reply_after_quorum(vec![waiter], Reply::AppFailed { reason }, after)?;
        self.finish_drain()
    }

    /// After a failure: once nothing of the pipeline is in flight, roll the
    /// working copy back to the committed state and resume.
    fn finish_drain(&mut self) -> Result<(), ReplicaError> {
        let Some(l) = self.leading.as_ref() else {
            return Ok(());
        };
        if !l.draining || !l.inflight.is_empty() || self.executing.is_some() {
            return Ok(());
        }
        if self.cfg.mutation != ReplicaMutation::SkipRollback {
            self.rollback_working_copy()?;
        }
        let generation = self.sessions.generation();
        let l = self.leading.as_mut().expect("leading");
        l.draining = false;
        l.spec.clear();
        l.spec_expired.clear();
        l.generation = generation;
        Ok(())
    }

    /// Answers `waiters` with `reply` once a quorum check started now has
    /// passed and entries up to `after_index` are applied (I5: no stale
    /// answers).
    fn reply_after_quorum(
        &mut self,
        waiters: Vec<(u64, ClientId, u64)>,
        reply: Reply,
        after_index: Index,
    ) -> Result<(), ReplicaError> {
        if self.cfg.mutation == ReplicaMutation::ReadWithoutQuorum {
            for w in waiters {
                self.reply_to(w, reply.clone());
            }
            return Ok(());
        }
        let pending = self.leading.as_ref().map_or(0, |l| l.replies.len());
        if pending >= self.cfg.pending_replies_max {
            for w in waiters {
                self.reply_to(w, Reply::Busy);
            }
            return Ok(());
        }
        let read_ctx = self.next_read;
        self.next_read += 1;
        match self.raft.read_index(read_ctx) {
            Ok(()) => {
                let l = self.leading.as_mut().expect("leading");
                l.replies.push_back(PendingReply {
                    read_ctx,
                    waiters,
                    reply,
                    after_index,
                    confirmed: None,
                });
                self.drain_raft()?;
                self.release_replies();
                Ok(())
            }
            Err(ReadError::Fatal(e)) => Err(e.into()),
            Err(ReadError::Busy) => {
                for w in waiters {
                    self.reply_to(w, Reply::Busy);
                }
                Ok(())
            }
            Err(ReadError::NotLeader { .. } | ReadError::BarrierPending) => {
                for w in waiters {
                    self.reply_to(w, Reply::Unknown);
                }
                Ok(())
            }
        }
    }

    /// Output commit (invariant I1, docs/REQUIREMENTS.md): entries up to `index` are committed (on a
    /// majority, durably, and in this leader's term for its own entries):
    /// their responses leave now, before this server applies them. The
    /// response was computed when the command ran; applying it changes no
    /// byte of it.
    fn release_committed(&mut self, index: Index) {
        let Some(l) = self.leading.as_mut() else {
            return;
        };
        let mut done = Vec::new();
        for f in l.inflight.iter_mut() {
            if f.last_index > index {
                break;
            }
            if !f.released {
                f.released = true;
                let reply = Reply::Ok {
                    status: f.status,
                    response: f.response.clone(),
                };
                for ctx in f.waiters.drain(..) {
                    done.push(((ctx, f.client, f.seq), reply.clone()));
                }
            }
        }
        for (waiter, reply) in done {
            self.reply_to(waiter, reply);
        }
        self.release_replies();
    }

    /// Replies that waited for a quorum check and for the entries proposed
    /// before them to commit (a read's answer was computed on a working
    /// copy that held those entries: it may leave once they committed).
    fn release_replies(&mut self) {
        let committed = self.raft.commit_reported();
        let Some(l) = self.leading.as_mut() else {
            return;
        };
        let mut done = Vec::new();
        l.replies.retain(|p| match p.confirmed {
            Some(index) if committed >= index.max(p.after_index) => {
                done.push((p.waiters.clone(), p.reply.clone()));
                false
            }
            _ => true,
        });
        for (waiters, reply) in done {
            for w in waiters {
                self.reply_to(w, reply.clone());
            }
        }
    }

    // ----- applying committed entries ------------------------------------

    fn apply_committed(&mut self, up_to: Index) -> Result<(), ReplicaError> {
        while self.applied < up_to && self.diverged.is_none() {
            let entries = self
                .raft
                .entries(self.applied + 1, up_to + 1, APPLY_BATCH_BYTES)?;
            for entry in entries {
                assert_eq!(entry.index, self.applied + 1, "entries apply in order");
                match entry.kind {
                    EntryKind::Noop | EntryKind::Config => {
                        self.engine.advance(entry.index, entry.term);
                        self.applied = entry.index;
                        self.effects.push_back(Effect::Applied {
                            index: entry.index,
                            term: entry.term,
                            state_hash: None,
                        });
                    }
                    EntryKind::Command => {
                        if !self.apply_command(entry.index, entry.term, &entry.data)? {
                            return Ok(());
                        }
                    }
                }
            }
        }
        self.release_replies();
        if self.sessions_stale && !self.engine.status().recovering {
            self.sessions_stale = false;
            self.reload_sessions()?;
        }
        if !self.raft.electable() && self.diverged.is_none() && self.engine.status().can_lead() {
            // A crash in the middle of an apply is repaired once the entry
            // is applied again: this server may lead again.
            self.raft.set_electable(true)?;
            self.drain_raft()?;
        }
        self.check_ready()?;
        self.finish_drain()?;
        self.maybe_compact()?;
        self.pump()
    }

    /// Applies one command entry; returns false if the replica diverged.
    fn apply_command(
        &mut self,
        index: Index,
        term: Term,
        data: &Bytes,
    ) -> Result<bool, ReplicaError> {
        let decoded = match ReplicaEntry::decode(data) {
            Ok(d) => d,
            Err(e) => {
                self.diverge(index, format!("entry {index} does not decode: {e}"))?;
                return Ok(false);
            }
        };
        let applied = match self.engine.apply(index, term, decoded.part()) {
            Ok(a) => a,
            Err(
                e @ (EngineError::Diverged { .. }
                | EngineError::IsDiverged { .. }
                | EngineError::Corrupt { .. }),
            ) => {
                self.diverge(index, e.to_string())?;
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        };
        self.applied = index;
        // While recovering from a crash the files may still hold effects of
        // later entries: no verified state to report yet.
        let status = self.engine.status();
        let state_hash = (matches!(applied, Applied::Delta { .. }) && !status.recovering)
            .then_some(status.state_hash);
        self.effects.push_back(Effect::Applied {
            index,
            term,
            state_hash,
        });
        if let ReplicaEntry::Command(c) = decoded {
            self.sessions.record(
                c.client,
                Session {
                    seq: c.seq,
                    status: c.status,
                    response: c.response.clone(),
                    generation: c.generation,
                },
            );
            for gone in &c.expired {
                self.sessions.expire(*gone);
            }
            self.command_committed(index, term, &c);
        }
        Ok(true)
    }

    /// Output commit: the leader releases the response of its own command.
    fn command_committed(&mut self, index: Index, term: Term, c: &CommandEntry) {
        let Some(l) = self.leading.as_mut() else {
            return;
        };
        for gone in &c.expired {
            l.spec_expired.remove(gone);
        }
        let Some(front) = l.inflight.front() else {
            return;
        };
        if front.last_index != index {
            assert!(
                front.last_index > index,
                "in-flight commands commit in order"
            );
            return;
        }
        assert_eq!(term, l.term, "a leader's own entries carry its term");
        let f = l.inflight.pop_front().expect("front exists");
        if l.spec.get(&f.client) == Some(&f.seq) {
            l.spec.remove(&f.client);
        }
        // Normally answered at commit already (`release_committed`).
        for ctx in f.waiters {
            let reply = Reply::Ok {
                status: f.status,
                response: f.response.clone(),
            };
            self.reply_to((ctx, f.client, f.seq), reply);
        }
    }

    /// Divergence: stop applying, refuse to lead, ask for a snapshot.
    fn diverge(&mut self, index: Index, reason: String) -> Result<(), ReplicaError> {
        self.diverged = Some(index);
        self.effects.push_back(Effect::Diverged { index, reason });
        self.raft.set_electable(false)?;
        self.ticks_since_request = self.cfg.snapshot_request_ticks;
        self.drain_raft()
    }

    /// Releases the log prefix that the state holds durably: every
    /// `compact_entries` entries, or sooner when the log's space fills up
    /// (entries can be large: a count alone let the ring fill, found by
    /// the nemesis), keeping `compact_keep_entries` for followers that lag a
    /// little unless the space is nearly gone.
    /// Advances the checkpoint in flight, and starts one when enough was
    /// applied since the last (entries, bytes, time) or the log needs room.
    fn tick_checkpoint(&mut self) -> Result<(), ReplicaError> {
        self.ticks_since_checkpoint = self.ticks_since_checkpoint.saturating_add(1);
        if self.engine.checkpoint_poll()?.is_some() {
            self.maybe_compact()?;
        }
        if self.raft.room_refusals() > self.room_refusals_seen {
            self.room_refusals_seen = self.raft.room_refusals();
            self.log_pressed = true;
        }
        let pressed =
            self.log_pressed || self.raft.log().space_used_percent() >= LOG_SPACE_RELEASE_PERCENT;
        let (entries, bytes) = self.engine.since_checkpoint();
        let due = entries >= self.cfg.checkpoint_entries
            || bytes >= self.cfg.checkpoint_bytes
            || (entries > 0 && self.ticks_since_checkpoint >= self.cfg.checkpoint_ticks)
            || (entries > 0 && pressed);
        if due && self.engine.checkpoint_start()? {
            self.ticks_since_checkpoint = 0;
        }
        // Also when nothing was applied or checkpointed lately: a server
        // restarted with a full log may have nothing to apply until its
        // log takes more entries.
        self.maybe_compact()
    }

    fn maybe_compact(&mut self) -> Result<(), ReplicaError> {
        // Only what a checkpoint made durable in the state may leave the
        // log: a restart replays the entries after the checkpoint.
        let durable = if self.cfg.mutation == ReplicaMutation::ReleasePastCheckpoint {
            self.engine.status().state_index.min(self.applied)
        } else {
            self.engine.checkpoint_index().min(self.applied)
        };
        let released = self.raft.log().snapshot_id().index;
        let used = self.raft.log().space_used_percent();
        let keep = if used >= LOG_SPACE_URGENT_PERCENT || self.log_pressed {
            0
        } else {
            self.cfg.compact_keep_entries
        };
        let pressed = used >= LOG_SPACE_RELEASE_PERCENT || self.log_pressed;
        let due = durable > released + self.cfg.compact_entries + keep
            || (pressed && durable > released + keep);
        if due {
            self.raft.compact(durable - keep)?;
            self.log_pressed = false;
            self.drain_raft()?;
        }
        Ok(())
    }

    // ----- snapshots -----------------------------------------------------

    fn start_snapshot(&mut self, to: NodeId) -> Result<(), ReplicaError> {
        if self.outgoing.as_ref().is_some_and(|o| o.peer == to) || self.snapshot_queue.contains(&to)
        {
            return Ok(());
        }
        if self.outgoing.is_some() {
            self.snapshot_queue.push_back(to);
            return Ok(());
        }
        let source = match self.engine.snapshot_begin() {
            Ok(s) => s,
            // Not possible now (recovering or diverged): the core retries.
            Err(EngineError::Snapshot(_) | EngineError::IsDiverged { .. }) => {
                self.raft.handle_snapshot_failed(to)?;
                return self.drain_raft();
            }
            Err(e) => return Err(e.into()),
        };
        self.next_transfer = self.next_transfer.wrapping_add(1);
        self.stats.snapshots_sent += 1;
        self.outgoing = Some(Outgoing {
            peer: to,
            transfer: self.next_transfer,
            source,
            term: self.raft.term(),
            acked: 0,
            sent: 0,
            end_seq: None,
            stall_ticks: 0,
            stalls: 0,
        });
        self.send_chunks()
    }

    fn send_chunks(&mut self) -> Result<(), ReplicaError> {
        loop {
            let Some(out) = self.outgoing.as_mut() else {
                return Ok(());
            };
            if out.sent >= out.acked + self.cfg.snapshot_chunks_in_flight
                || out.end_seq.is_some_and(|e| out.sent > e)
            {
                return Ok(());
            }
            let Some(chunk) = self.engine.snapshot_next(&mut out.source)? else {
                out.end_seq = Some(out.sent.saturating_sub(1));
                return Ok(());
            };
            let msg = PeerMessage::SnapshotChunk {
                from: self.id,
                to: out.peer,
                term: out.term,
                snapshot: out.transfer,
                seq: out.sent,
                data: Bytes::from(chunk),
            };
            out.sent += 1;
            self.send(msg);
        }
    }

    fn on_snapshot_ack(
        &mut self,
        from: NodeId,
        snapshot: u64,
        next_seq: u64,
    ) -> Result<(), ReplicaError> {
        let Some(out) = self.outgoing.as_mut() else {
            return Ok(());
        };
        if out.peer != from || out.transfer != snapshot {
            return Ok(());
        }
        if next_seq == 0 && out.acked > 0 {
            // The receiver starts over: so do we.
            self.engine.snapshot_rewind(&mut out.source, 0)?;
            out.sent = 0;
            out.acked = 0;
            out.end_seq = None;
            out.stall_ticks = 0;
            return self.send_chunks();
        }
        if next_seq <= out.acked || next_seq > out.sent {
            // A late, duplicated or reordered acknowledgement: chunks lost
            // in between are resent when the transfer stalls.
            return Ok(());
        }
        out.stall_ticks = 0;
        out.acked = next_seq;
        self.raft.handle_snapshot_progress(from);
        let out = self.outgoing.as_mut().expect("outgoing");
        if out.end_seq.is_some_and(|end| out.acked > end) {
            let out = self.outgoing.take().expect("outgoing");
            self.engine.snapshot_end(out.source);
            if let Some(next) = self.snapshot_queue.pop_front() {
                return self.start_snapshot(next);
            }
            return Ok(());
        }
        self.send_chunks()
    }

    fn tick_snapshots(&mut self) -> Result<(), ReplicaError> {
        let Some(out) = self.outgoing.as_ref() else {
            return Ok(());
        };
        let caught_up = self
            .raft
            .follower_match(out.peer)
            .is_some_and(|m| m >= out.source.start_index());
        if caught_up || !self.raft.is_leader() {
            // The log brought the peer past the snapshot: it is not needed.
            let out = self.outgoing.take().expect("outgoing");
            self.engine.snapshot_end(out.source);
            if let Some(next) = self.snapshot_queue.pop_front() {
                return self.start_snapshot(next);
            }
            return Ok(());
        }
        let out = self.outgoing.as_mut().expect("outgoing");
        out.stall_ticks += 1;
        if out.stall_ticks < self.cfg.snapshot_stall_ticks {
            return Ok(());
        }
        out.stall_ticks = 0;
        out.stalls += 1;
        if out.stalls > self.cfg.snapshot_stalls_max {
            let out = self.outgoing.take().expect("outgoing");
            self.engine.snapshot_end(out.source);
            self.raft.handle_snapshot_failed(out.peer)?;
            self.drain_raft()?;
            if let Some(next) = self.snapshot_queue.pop_front() {
                return self.start_snapshot(next);
            }
            return Ok(());
        }
        let acked = out.acked;
        self.engine.snapshot_rewind(&mut out.source, acked)?;
        out.sent = acked;
        out.end_seq = None;
        self.send_chunks()
    }

    fn on_snapshot_chunk(
        &mut self,
        from: NodeId,
        term: Term,
        snapshot: u64,
        seq: u64,
        data: Bytes,
    ) -> Result<(), ReplicaError> {
        if !self.raft.accept_snapshot(from, term)? {
            return self.drain_raft();
        }
        self.drain_raft()?;
        let fresh = !self
            .incoming
            .as_ref()
            .is_some_and(|i| i.from == from && i.snapshot == snapshot);
        if fresh {
            if seq != 0 {
                return self.ack_snapshot(from, snapshot, 0);
            }
            // `snapshot` names the transfer; the engine's own snapshot id
            // is in the chunk's header.
            let Ok((_, engine_id, _, _)) = crate::delta::snapshot::parse_chunk(&data) else {
                return self.ack_snapshot(from, snapshot, 0);
            };
            let install = match self.engine.install_begin(engine_id) {
                Ok(install) => install,
                Err(EngineError::Storage(e)) => return Err(EngineError::Storage(e).into()),
                Err(_) => return Ok(()),
            };
            self.incoming = Some(Incoming {
                from,
                snapshot,
                install,
                ahead: BTreeMap::new(),
            });
        }
        let window = self.cfg.snapshot_chunks_in_flight;
        let incoming = self.incoming.as_mut().expect("incoming");
        let next = incoming.install.next_seq();
        if seq != next {
            if seq > next && seq < next + window {
                incoming.ahead.insert(seq, data);
            }
            return self.ack_snapshot(from, snapshot, next);
        }
        let mut chunk = data;
        loop {
            let incoming = self.incoming.as_mut().expect("incoming");
            match self.engine.install_chunk(&mut incoming.install, &chunk) {
                Ok(InstallProgress::NeedMore { next_seq }) => {
                    let incoming = self.incoming.as_mut().expect("incoming");
                    incoming.ahead.retain(|&s, _| s >= next_seq);
                    match incoming.ahead.remove(&next_seq) {
                        Some(more) => chunk = more,
                        None => return self.ack_snapshot(from, snapshot, next_seq),
                    }
                }
                Ok(InstallProgress::Installed { index, term, .. }) => {
                    let next = incoming.install.next_seq();
                    self.incoming = None;
                    self.installed(LogId::new(index, term))?;
                    return self.ack_snapshot(from, snapshot, next);
                }
                Err(EngineError::Storage(e)) => return Err(EngineError::Storage(e).into()),
                Err(EngineError::SnapshotBehind { .. }) => {
                    // Nothing to install: this server is already past the
                    // source's state (whose apply lagged its commit). The
                    // transfer is over (an acknowledgement past its end);
                    // the leader's appends carry on from this server's log.
                    // Starting over would resend the same state for ever
                    // (replica swarm seed 602550638).
                    let next = incoming.install.next_seq();
                    self.incoming = None;
                    return self.ack_snapshot(from, snapshot, next);
                }
                Err(_) => {
                    // A bad chunk: start over.
                    self.incoming = None;
                    return self.ack_snapshot(from, snapshot, 0);
                }
            }
        }
    }

    fn ack_snapshot(
        &mut self,
        to: NodeId,
        snapshot: u64,
        next_seq: u64,
    ) -> Result<(), ReplicaError> {
        self.send(PeerMessage::SnapshotAck {
            from: self.id,
            to,
            snapshot,
            next_seq,
        });
        Ok(())
    }

    /// A snapshot at `at` is installed in the committed state.
    fn installed(&mut self, at: LogId) -> Result<(), ReplicaError> {
        let membership = self.raft.membership().clone();
        self.raft.handle_snapshot_installed(at, membership)?;
        self.stats.snapshots_installed += 1;
        self.effects.push_back(Effect::ResetApplication);
        self.applied = self.applied.max(at.index);
        let status = self.engine.status();
        // A state from a source still replaying its log after a crash is
        // exact only once replayed here too: its session records may be
        // torn (read once it is exact) and its hash is not the index's.
        if status.recovering {
            self.sessions_stale = true;
        } else {
            self.reload_sessions()?;
        }
        if self.diverged.take().is_some() {
            self.raft.set_electable(true)?;
        }
        self.effects.push_back(Effect::Applied {
            index: at.index,
            term: at.term,
            state_hash: (!status.recovering).then_some(status.state_hash),
        });
        self.drain_raft()?;
        // Entries after the snapshot that the log already holds, as far as
        // the core reported them committed (durable here too).
        let commit = self.raft.commit_reported();
        if commit > self.applied {
            self.apply_committed(commit)?;
        }
        Ok(())
    }
}
