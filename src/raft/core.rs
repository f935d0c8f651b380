//! The Raft state machine of one server. See the module documentation of
//! `crate::raft` for the order of calls.

use crate::raft::effect::Effect;
use crate::raft::membership::Membership;
use crate::raft::message::{AppendResult, Body, Message};
use crate::raft::options::{Mutation, Options};
use crate::raft::progress::{Progress, ProgressState};
use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ringlog::{Entry, EntryKind, HardState, Index, LogId, LogStore, NodeId, StorageError, Term};
use std::collections::{BTreeMap, VecDeque};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Follower,
    /// Asking for pre-votes; the term has not been incremented (thesis §9.6).
    PreCandidate,
    Candidate,
    Leader,
}

/// A failure that stops this server incarnation: the storage failed or
/// holds an impossible state. Never caused by a peer.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("storage failed: {0}")]
    Storage(#[from] StorageError),
    #[error("the durable state is inconsistent: {0}")]
    Inconsistent(String),
    #[error("this core stopped after an earlier fatal error")]
    Stopped,
    #[error("invalid options: {0}")]
    Options(#[from] crate::raft::options::OptionsError),
}

#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error("not the leader (leader hint: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error(
        "too much uncommitted ({uncommitted} entries, or their bytes at the bound); retry later"
    )]
    Backpressure { uncommitted: u64 },
    #[error("{size_bytes} bytes to propose exceed the maximum of {max_bytes}")]
    TooLarge { size_bytes: u64, max_bytes: u64 },
    #[error("the log has no room now (its applied prefix is not yet released); retry later")]
    LogFull,
    #[error(transparent)]
    Fatal(#[from] CoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("not the leader (leader hint: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("the leader has not committed an entry of its term yet; retry after BarrierPassed")]
    BarrierPending,
    #[error("too many reads waiting for their quorum check")]
    Busy,
    #[error(transparent)]
    Fatal(#[from] CoreError),
}

#[derive(Clone, Debug)]
struct PendingRead {
    ctx: u64,
    index: Index,
    seq: u64,
}

/// State that exists only while this server leads.
struct LeaderState {
    progress: BTreeMap<NodeId, Progress>,
    barrier: Index,
    barrier_passed: bool,
    /// Quorum-check sequence number; carried by every message to followers.
    seq: u64,
    reads: VecDeque<PendingRead>,
    check_quorum_elapsed: u32,
    uncommitted: Uncommitted,
    /// The last index of the log when the current CheckQuorum period
    /// began: a follower keeps up if it holds that much by the period's
    /// end (entries proposed during the period are not yet owed).
    period_last: Index,
    heartbeat_elapsed: u32,
}

/// The payload bytes of this leader's log above the commit index, entry by
/// entry: a follower's log must hold them all (with room for the next
/// leader's barrier), so a leader bounds them (`uncommitted_bytes_max`) as
/// well as their count.
struct Uncommitted {
    sizes: VecDeque<(Index, u64)>,
    bytes: u64,
}

impl Uncommitted {
    fn push(&mut self, index: Index, bytes: u64) {
        debug_assert!(self.sizes.back().is_none_or(|&(last, _)| last < index));
        self.sizes.push_back((index, bytes));
        self.bytes += bytes;
    }

    /// Forgets the entries up to `commit`, which no longer count.
    fn commit_to(&mut self, commit: Index) {
        while let Some(&(index, bytes)) = self.sizes.front() {
            if index > commit {
                break;
            }
            self.sizes.pop_front();
            self.bytes -= bytes;
        }
    }
}

/// The configurations in force: the one at the start of the log, and the
/// `Config` entries above it (a configuration takes effect when appended).
struct Configs {
    base: Membership,
    in_log: Vec<(Index, Membership)>,
}

impl Configs {
    fn current(&self) -> &Membership {
        self.in_log.last().map(|(_, m)| m).unwrap_or(&self.base)
    }

    fn truncate_from(&mut self, index: Index) {
        self.in_log.retain(|(i, _)| *i < index);
    }

    fn release_to(&mut self, index: Index) {
        while self.in_log.first().is_some_and(|(i, _)| *i <= index) {
            let (_, m) = self.in_log.remove(0);
            self.base = m;
        }
    }
}

/// One server's consensus state machine.
pub struct Raft<L: LogStore> {
    id: NodeId,
    opts: Options,
    log: L,
    rng: ChaCha8Rng,
    term: Term,
    vote: Option<NodeId>,
    role: Role,
    leader_id: Option<NodeId>,
    /// Highest index known committed.
    commit: Index,
    /// Highest index reported in `Effect::Committed` (min of commit and durable).
    commit_reported: Index,
    /// Highest index durable in this server's log (and present in it).
    durable: Index,
    /// Highest index known to match the current leader's log.
    verified: Index,
    /// Highest match index acknowledged to the current leader.
    acked: Index,
    /// Highest quorum-check sequence number seen from the current leader.
    leader_seq: u64,
    configs: Configs,
    election_elapsed: u32,
    /// Appends and proposals refused, whole or in part, for lack of log
    /// space: the layer above releases the log prefix urgently when it
    /// grows (the ring's fill percentage alone can look low while large
    /// entries no longer fit).
    room_refusals: u64,
    election_timeout: u32,
    /// Ticks since a leader of the current term was last heard from.
    leader_contact_elapsed: u32,
    votes: BTreeMap<NodeId, bool>,
    leader: Option<LeaderState>,
    effects: VecDeque<Effect>,
    stopped: bool,
    /// False while the layer above cannot serve as leader (its state
    /// diverged or is being repaired): this server then neither campaigns
    /// nor stays leader, but still votes and replicates.
    electable: bool,
}

impl<L: LogStore> Raft<L> {
    /// Builds the core of server `id` over a recovered `log`.
    ///
    /// `voters` is the bootstrap configuration, used when neither the log
    /// nor the snapshot carries one. `applied` is the position the state
    /// machine holds durably: it is committed, and the log is reconciled
    /// with it (a snapshot installed just before a crash may be ahead of it).
    pub fn new(
        id: NodeId,
        opts: Options,
        voters: Membership,
        mut log: L,
        applied: LogId,
        seed: u64,
    ) -> Result<Raft<L>, CoreError> {
        opts.validate()?;
        let snapshot = log.snapshot_id();
        if applied.index < snapshot.index {
            return Err(CoreError::Inconsistent(format!(
                "the log was released up to {snapshot} but the state machine holds only {applied}"
            )));
        }
        if log.term(applied.index) != Some(applied.term) {
            // The state machine is ahead of the log or the log holds a stale
            // suffix there: committed state wins, the log restarts after it.
            log.reset(applied)?;
        }
        let hard = log.hard_state();
        let configs = Configs {
            base: voters,
            in_log: scan_configs(&log)?,
        };
        let mut raft = Raft {
            id,
            opts,
            rng: ChaCha8Rng::seed_from_u64(seed),
            term: hard.term,
            vote: hard.vote,
            role: Role::Follower,
            leader_id: None,
            commit: applied.index,
            commit_reported: applied.index,
            durable: log.last_id().index,
            verified: applied.index,
            acked: 0,
            leader_seq: 0,
            configs,
            election_elapsed: 0,
            room_refusals: 0,
            election_timeout: 0,
            leader_contact_elapsed: u32::MAX,
            votes: BTreeMap::new(),
            leader: None,
            effects: VecDeque::new(),
            stopped: false,
            electable: true,
            log,
        };
        raft.reset_election_timer();
        raft.assert_invariants();
        Ok(raft)
    }

    // ----- queries -------------------------------------------------------

    pub fn id(&self) -> NodeId {
        self.id
    }
    pub fn term(&self) -> Term {
        self.term
    }
    pub fn vote(&self) -> Option<NodeId> {
        self.vote
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }
    pub fn leader_id(&self) -> Option<NodeId> {
        self.leader_id
    }
    /// Ticks since the election timer was last reset.
    pub fn election_elapsed(&self) -> u32 {
        self.election_elapsed
    }

    /// How many appends and proposals the log refused, whole or in part,
    /// for lack of space (see the field).
    pub fn room_refusals(&self) -> u64 {
        self.room_refusals
    }
    pub fn commit_index(&self) -> Index {
        self.commit
    }
    /// Entries up to here were reported committed (`Effect::Committed`):
    /// committed and durable in this server's log. The state machine
    /// applies no further and may release no further (`compact`).
    pub fn commit_reported(&self) -> Index {
        self.commit_reported
    }
    pub fn durable_index(&self) -> Index {
        self.durable
    }
    pub fn last_log_id(&self) -> LogId {
        self.log.last_id()
    }
    pub fn membership(&self) -> &Membership {
        self.configs.current()
    }
    /// Whether this leader's barrier entry has committed.
    pub fn barrier_passed(&self) -> bool {
        self.leader.as_ref().is_some_and(|l| l.barrier_passed)
    }
    pub fn log(&self) -> &L {
        &self.log
    }
    /// The log, for the driver's group-commit calls. The driver must not
    /// append, truncate, release or reset through it.
    pub fn log_mut(&mut self) -> &mut L {
        &mut self.log
    }
    pub fn into_log(self) -> L {
        self.log
    }
    /// Committed entries for the state machine, `[lo, hi)`, bounded by bytes.
    pub fn entries(
        &self,
        lo: Index,
        hi: Index,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.log.entries(lo, hi, max_bytes)
    }
    /// The match index of a follower, as this leader sees it.
    pub fn follower_match(&self, peer: NodeId) -> Option<Index> {
        self.leader.as_ref()?.progress.get(&peer).map(|p| p.matched)
    }

    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    // ----- events --------------------------------------------------------

    /// One unit of time passed.
    pub fn handle_tick(&mut self) -> Result<(), CoreError> {
        self.guard(|raft| {
            raft.leader_contact_elapsed = raft.leader_contact_elapsed.saturating_add(1);
            match raft.role {
                Role::Leader => raft.tick_leader(),
                Role::Follower | Role::PreCandidate | Role::Candidate => {
                    raft.election_elapsed += 1;
                    if raft.election_elapsed >= raft.election_timeout {
                        raft.campaign_pre_vote()?;
                    }
                    Ok(())
                }
            }
        })
    }

    /// A message from a peer arrived.
    pub fn handle_message(&mut self, msg: Message) -> Result<(), CoreError> {
        self.guard(|raft| raft.step(msg))
    }

    /// The log is durable up to `id` (a group commit completed). Positions
    /// that no longer name an entry of the log (it was truncated since) are
    /// ignored.
    pub fn handle_log_durable(&mut self, id: LogId) -> Result<(), CoreError> {
        self.guard(|raft| {
            if id.index <= raft.durable || raft.log.term(id.index) != Some(id.term) {
                return Ok(());
            }
            raft.durable = id.index;
            assert!(raft.durable <= raft.log.last_id().index);
            if raft.role == Role::Leader {
                raft.maybe_commit()?;
            } else {
                raft.ack_leader();
            }
            raft.report_commit();
            Ok(())
        })
    }

    /// A snapshot (or a piece of one) arrived from `from`, sent as leader of
    /// `term`. Returns whether the layer above may install it: it applies
    /// the term rules of Raft §7 (InstallSnapshot) first, so a stale leader
    /// steps down before anything replaces its state, and it accepts only
    /// the current leader's snapshots. The layer above still checks that the
    /// snapshot is ahead of what it holds.
    pub fn accept_snapshot(&mut self, from: NodeId, term: Term) -> Result<bool, CoreError> {
        self.guard(|raft| {
            if term < raft.term || from == raft.id || !raft.configs.current().contains(from) {
                return Ok(false);
            }
            if term > raft.term || raft.role != Role::Follower {
                if raft.role == Role::Leader && term == raft.term {
                    return Ok(false); // two leaders in one term: impossible from correct peers
                }
                raft.become_follower(term, Some(from))?;
            }
            if raft.leader_id.is_none() {
                raft.leader_id = Some(from);
            }
            if raft.leader_id != Some(from) {
                return Ok(false);
            }
            raft.leader_contact_elapsed = 0;
            raft.election_elapsed = 0;
            Ok(true)
        })
    }

    /// The layer above installed, durably, a snapshot of the state machine
    /// at `id` with configuration `membership` (after `accept_snapshot`
    /// said so). The log keeps the entries after `id` if it holds `id`
    /// itself, and restarts empty after `id` otherwise.
    pub fn handle_snapshot_installed(
        &mut self,
        id: LogId,
        membership: Membership,
    ) -> Result<(), CoreError> {
        self.guard(|raft| {
            // The state machine already holds `id`: nothing to learn. The
            // test is against what was *reported*, not against `commit`: a
            // follower may know that entries up to `commit` are committed
            // before its own log holds them durably, and a snapshot that
            // lands in between moves the state machine past the report.
            if id.index <= raft.commit_reported {
                return Ok(());
            }
            if raft.log.term(id.index) == Some(id.term) {
                raft.log.release_to(id.index)?;
                raft.configs.release_to(id.index);
                raft.durable = raft.durable.max(id.index);
            } else if raft.role == Role::Leader {
                // A leader holds every committed entry (Raft §5.4), so a
                // committed snapshot it lacks means a broken invariant.
                return Err(CoreError::Inconsistent(format!(
                    "leader of term {} lacks the committed snapshot point {id}",
                    raft.term
                )));
            } else {
                raft.log.reset(id)?;
                raft.configs = Configs {
                    base: membership,
                    in_log: Vec::new(),
                };
                raft.durable = id.index;
                // Nothing after `id` is left to be committed.
                raft.commit = id.index;
            }
            raft.commit = raft.commit.max(id.index);
            raft.commit_reported = id.index;
            raft.verified = raft.verified.max(id.index);
            raft.ack_leader();
            raft.assert_invariants();
            Ok(())
        })
    }

    /// The layer above delivered another part of the snapshot to `peer`
    /// (an acknowledged chunk). A follower in snapshot transfer counts for
    /// CheckQuorum only while its transfer moves: one whose chunks are
    /// lost while its heartbeats get through kept a leader that could not
    /// commit in office, and its lease kept the others from electing one
    /// (replica swarm seed 404526511).
    pub fn handle_snapshot_progress(&mut self, peer: NodeId) {
        let Some(pr) = self
            .leader
            .as_mut()
            .and_then(|leader| leader.progress.get_mut(&peer))
        else {
            return;
        };
        if matches!(pr.state, ProgressState::Snapshot { .. }) {
            pr.snapshot_progressed = true;
        }
    }

    /// The layer above could not deliver a snapshot to `peer`.
    pub fn handle_snapshot_failed(&mut self, peer: NodeId) -> Result<(), CoreError> {
        self.guard(|raft| {
            let Some(leader) = raft.leader.as_mut() else {
                return Ok(());
            };
            let Some(pr) = leader.progress.get_mut(&peer) else {
                return Ok(());
            };
            if matches!(pr.state, ProgressState::Snapshot { .. }) {
                let next = pr.matched + 1;
                pr.reset_to_probe(next);
            }
            Ok(())
        })
    }

    // ----- requests ------------------------------------------------------

    /// Appends a command to the log of this leader and starts replicating it.
    /// Returns its position; it is committed when `Effect::Committed` covers
    /// it and no `EntriesDiscarded`/`LostLeadership` intervened.
    pub fn propose(&mut self, data: Bytes) -> Result<LogId, ProposeError> {
        let ids = self.propose_batch(std::slice::from_ref(&data))?;
        Ok(ids.last)
    }

    /// Appends several commands in one log submission.
    pub fn propose_batch(&mut self, batch: &[Bytes]) -> Result<ProposedRange, ProposeError> {
        if self.stopped {
            return Err(CoreError::Stopped.into());
        }
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader_id,
            });
        }
        assert!(!batch.is_empty());
        let last = self.log.last_id();
        let uncommitted = last.index - self.commit;
        if uncommitted + batch.len() as u64 > self.opts.uncommitted_entries_max {
            return Err(ProposeError::Backpressure { uncommitted });
        }
        let bytes: u64 = batch.iter().map(|d| d.len() as u64).sum();
        // A batch larger than the bound could never commit: followers keep
        // its entries (a split delta cannot be released before its last
        // part applies) until their logs have no room left for the barrier
        // of the next leader (replica seeds 152121006, 602545260). It is
        // refused for good, not pushed back.
        if bytes > self.opts.uncommitted_bytes_max {
            return Err(ProposeError::TooLarge {
                size_bytes: bytes,
                max_bytes: self.opts.uncommitted_bytes_max,
            });
        }
        let leader = self.leader.as_ref().expect("leader state");
        if leader.uncommitted.bytes + bytes > self.opts.uncommitted_bytes_max {
            return Err(ProposeError::Backpressure { uncommitted });
        }
        if let Some(big) = batch
            .iter()
            .find(|d| d.len() as u64 > self.opts.entry_bytes_max)
        {
            return Err(ProposeError::TooLarge {
                size_bytes: big.len() as u64,
                max_bytes: self.opts.entry_bytes_max,
            });
        }
        let entries: Vec<Entry> = batch
            .iter()
            .enumerate()
            .map(|(i, data)| Entry {
                index: last.index + 1 + i as u64,
                term: self.term,
                kind: EntryKind::Command,
                data: data.clone(),
            })
            .collect();
        if self.prefix_that_fits(&entries) < entries.len() {
            self.room_refusals += 1;
            return Err(ProposeError::LogFull);
        }
        let range = ProposedRange {
            first: entries[0].id(),
            last: entries[entries.len() - 1].id(),
        };
        self.guard(|raft| raft.leader_append(&entries))?;
        Ok(range)
    }

    /// Starts a ReadIndex quorum check (Raft thesis §6.4): `ReadReady` comes
    /// once a majority confirmed this leadership after this call.
    pub fn read_index(&mut self, ctx: u64) -> Result<(), ReadError> {
        if self.stopped {
            return Err(CoreError::Stopped.into());
        }
        let commit = self.commit;
        let quorum = self.configs.current().quorum();
        let Some(leader) = self.leader.as_mut() else {
            return Err(ReadError::NotLeader {
                leader: self.leader_id,
            });
        };
        if !leader.barrier_passed {
            return Err(ReadError::BarrierPending);
        }
        if leader.reads.len() >= self.opts.pending_reads_max {
            return Err(ReadError::Busy);
        }
        leader.seq += 1;
        leader.reads.push_back(PendingRead {
            ctx,
            index: commit,
            seq: leader.seq,
        });
        if quorum == 1 {
            self.process_reads();
        } else {
            self.broadcast_heartbeat();
        }
        Ok(())
    }

    /// Says whether this server may lead. A server that may not stops
    /// campaigning and, if it leads, steps down at once (its followers elect
    /// another leader after their election timeout).
    pub fn set_electable(&mut self, electable: bool) -> Result<(), CoreError> {
        self.guard(|raft| {
            raft.electable = electable;
            if !electable && raft.role != Role::Follower {
                let term = raft.term;
                raft.become_follower(term, None)?;
            }
            Ok(())
        })
    }

    pub fn electable(&self) -> bool {
        self.electable
    }

    /// The state machine holds entries up to `index` durably: the log may
    /// release them.
    pub fn compact(&mut self, index: Index) -> Result<(), CoreError> {
        self.guard(|raft| {
            assert!(
                index <= raft.commit_reported,
                "compacting past what was applied"
            );
            if index > raft.log.snapshot_id().index {
                raft.log.release_to(index)?;
                raft.configs.release_to(index);
            }
            Ok(())
        })
    }

    // ----- internals: plumbing -------------------------------------------

    fn guard<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, CoreError>,
    ) -> Result<T, CoreError> {
        if self.stopped {
            return Err(CoreError::Stopped);
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
        let last = self.log.last_id();
        let snapshot = self.log.snapshot_id();
        assert!(snapshot.index <= last.index);
        assert!(self.commit_reported <= self.commit);
        assert!(self.commit_reported <= self.durable.max(snapshot.index));
        assert!(
            snapshot.index <= self.commit_reported,
            "released {} beyond what was reported committed {}",
            snapshot.index,
            self.commit_reported
        );
        assert!(
            self.durable <= last.index,
            "durable {} beyond last {}",
            self.durable,
            last
        );
        assert!(
            self.commit <= last.index,
            "commit {} beyond last {}",
            self.commit,
            last
        );
        assert_eq!(self.role == Role::Leader, self.leader.is_some());
        if self.role == Role::Leader {
            assert_eq!(self.leader_id, Some(self.id));
            assert_eq!(self.vote, Some(self.id));
        }
    }

    fn send(&mut self, to: NodeId, body: Body) {
        assert_ne!(to, self.id);
        self.effects.push_back(Effect::Send(Message {
            from: self.id,
            to,
            term: self.term,
            body,
        }));
    }

    fn persist_hard_state(&mut self) -> Result<(), CoreError> {
        self.log.save_hard_state(HardState {
            term: self.term,
            vote: self.vote,
        })?;
        Ok(())
    }

    fn reset_election_timer(&mut self) {
        let min = self.opts.election_ticks_min;
        self.election_elapsed = 0;
        self.election_timeout = self.rng.gen_range(min..2 * min);
    }

    fn peers(&self) -> Vec<NodeId> {
        self.configs
            .current()
            .voters()
            .iter()
            .copied()
            .filter(|&v| v != self.id)
            .collect()
    }

    /// Leader stickiness: a server that heard from a live leader within the
    /// minimum election timeout does not help depose it.
    fn in_lease(&self) -> bool {
        match self.role {
            Role::Leader => true,
            _ => {
                self.leader_id.is_some()
                    && self.leader_contact_elapsed < self.opts.election_ticks_min
            }
        }
    }

    fn log_up_to_date(&self, candidate_last: LogId) -> bool {
        let ours = self.log.last_id();
        (candidate_last.term, candidate_last.index) >= (ours.term, ours.index)
    }

    /// Moves to `term` (if higher) as a follower of `leader` (if known).
    /// The new term is durable before this returns.
    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) -> Result<(), CoreError> {
        assert!(term >= self.term);
        if term > self.term {
            self.term = term;
            self.vote = None;
            self.persist_hard_state()?;
            self.verified = self.commit;
            self.acked = 0;
            self.leader_seq = 0;
        }
        if let Some(leader_state) = self.leader.take() {
            for read in leader_state.reads {
                self.effects.push_back(Effect::ReadFailed { ctx: read.ctx });
            }
            self.effects
                .push_back(Effect::LostLeadership { term: self.term });
        }
        if self.leader_id != leader {
            self.acked = 0;
        }
        let kept_waiting = self.role == Role::Follower && leader.is_none();
        self.role = Role::Follower;
        self.leader_id = leader;
        self.votes.clear();
        // A follower that only learns a higher term (from a vote request
        // it may deny, or a stale answer) keeps its election timer (Raft
        // §5.2: only a leader's message or a granted vote resets it).
        // Otherwise a candidate that cannot win, timing out faster than a
        // server that could, would hold that server back for ever (swarm
        // seed 475334837: a slow clock on the only up-to-date server).
        if !kept_waiting {
            self.reset_election_timer();
        }
        Ok(())
    }

    // ----- internals: elections (Raft §5.2, thesis §9.6) -----------------

    fn campaign_pre_vote(&mut self) -> Result<(), CoreError> {
        self.reset_election_timer();
        if !self.configs.current().contains(self.id) || !self.electable {
            return Ok(());
        }
        assert!(self.role != Role::Leader);
        self.role = Role::PreCandidate;
        self.leader_id = None;
        self.votes.clear();
        self.votes.insert(self.id, true);
        if self.votes_won() {
            return self.campaign_vote();
        }
        let last_log = self.log.last_id();
        let term = self.term + 1;
        for peer in self.peers() {
            self.effects.push_back(Effect::Send(Message {
                from: self.id,
                to: peer,
                term,
                body: Body::PreVote { last_log },
            }));
        }
        Ok(())
    }

    fn campaign_vote(&mut self) -> Result<(), CoreError> {
        self.term += 1;
        self.vote = Some(self.id);
        self.persist_hard_state()?;
        self.verified = self.commit;
        self.acked = 0;
        self.leader_seq = 0;
        self.role = Role::Candidate;
        self.leader_id = None;
        self.votes.clear();
        self.votes.insert(self.id, true);
        self.reset_election_timer();
        if self.votes_won() {
            return self.become_leader();
        }
        let last_log = self.log.last_id();
        for peer in self.peers() {
            self.send(peer, Body::Vote { last_log });
        }
        Ok(())
    }

    fn votes_won(&self) -> bool {
        let granted = self.votes.values().filter(|&&g| g).count();
        granted >= self.configs.current().quorum()
    }

    fn votes_lost(&self) -> bool {
        let membership = self.configs.current();
        let rejected = self.votes.values().filter(|&&g| !g).count();
        rejected > membership.voters().len() - membership.quorum()
    }

    fn become_leader(&mut self) -> Result<(), CoreError> {
        assert_eq!(self.role, Role::Candidate);
        assert_eq!(self.vote, Some(self.id));
        let last = self.log.last_id();
        let barrier = Entry {
            index: last.index + 1,
            term: self.term,
            kind: EntryKind::Noop,
            data: Bytes::new(),
        };
        if !self.log.has_room(std::slice::from_ref(&barrier)) {
            self.room_refusals += 1;
            // Every append of commands keeps room for a barrier
            // (`prefix_that_fits`), so this needs a log that filled with
            // barriers alone; rather than stop, do not lead: this term
            // gets no leader from here, and a later election may.
            return self.become_follower(self.term, None);
        }
        // Entries of earlier terms above the commit index count against
        // this leader's bound until they commit, which they all do at once,
        // with this leader's barrier (Raft §5.4.2): one sum stands for them,
        // from the log's record sizes, without reading the entries.
        let mut uncommitted = Uncommitted {
            sizes: VecDeque::new(),
            bytes: 0,
        };
        if self.commit < last.index {
            let bytes = self.log.entry_bytes(self.commit + 1, last.index + 1)?;
            uncommitted.push(last.index, bytes);
        }
        let progress = self
            .peers()
            .into_iter()
            .map(|p| (p, Progress::new(last.index + 1)))
            .collect();
        self.role = Role::Leader;
        self.leader_id = Some(self.id);
        self.votes.clear();
        self.leader = Some(LeaderState {
            progress,
            barrier: last.index + 1,
            barrier_passed: false,
            seq: 0,
            reads: VecDeque::new(),
            check_quorum_elapsed: 0,
            uncommitted,
            period_last: last.index + 1,
            heartbeat_elapsed: 0,
        });
        self.effects
            .push_back(Effect::BecameLeader { term: self.term });
        self.leader_append(&[barrier])
    }

    /// How many of `entries` (a leader's proposal or a follower's batch)
    /// the log can take now. Command entries must leave room for one
    /// barrier after them, so that a server whose log holds uncommitted
    /// commands can still become leader and commit them (it needs an entry
    /// of its own term: Raft §5.4.2); barriers alone need only their own
    /// room.
    fn prefix_that_fits(&self, entries: &[Entry]) -> usize {
        let fits = |n: usize| {
            let mut batch = entries[..n].to_vec();
            if batch.iter().any(|e| e.kind != EntryKind::Noop) {
                batch.push(Entry {
                    index: entries[n - 1].index + 1,
                    term: entries[n - 1].term,
                    kind: EntryKind::Noop,
                    data: Bytes::new(),
                });
            }
            self.log.has_room(&batch)
        };
        if entries.is_empty() || fits(entries.len()) {
            return entries.len();
        }
        // Room is monotone in the length: the longest prefix that fits.
        let (mut lo, mut hi) = (0, entries.len());
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo
    }

    fn handle_pre_vote(&mut self, msg: &Message, last_log: LogId) {
        // A pre-vote changes nothing here: it only predicts a real vote.
        let granted = msg.term > self.term && !self.in_lease() && self.log_up_to_date(last_log);
        let term = if granted { msg.term } else { self.term };
        self.effects.push_back(Effect::Send(Message {
            from: self.id,
            to: msg.from,
            term,
            body: Body::PreVoteResponse { granted },
        }));
    }

    fn handle_vote(&mut self, msg: &Message, last_log: LogId) -> Result<(), CoreError> {
        assert_eq!(msg.term, self.term);
        let free = self.vote.is_none() || self.vote == Some(msg.from);
        let granted = free && self.role != Role::Leader && self.log_up_to_date(last_log);
        if granted {
            self.vote = Some(msg.from);
            if self.opts.mutation != Mutation::ForgetVote {
                self.persist_hard_state()?;
            }
            self.reset_election_timer();
        }
        self.send(msg.from, Body::VoteResponse { granted });
        Ok(())
    }

    fn handle_vote_response(
        &mut self,
        from: NodeId,
        granted: bool,
        pre: bool,
    ) -> Result<(), CoreError> {
        let expected = if pre {
            Role::PreCandidate
        } else {
            Role::Candidate
        };
        if self.role != expected {
            return Ok(());
        }
        self.votes.entry(from).or_insert(granted);
        if self.votes_won() {
            return if pre {
                self.campaign_vote()
            } else {
                self.become_leader()
            };
        }
        if self.votes_lost() {
            let term = self.term;
            self.become_follower(term, None)?;
        }
        Ok(())
    }

    // ----- internals: dispatch and terms (Raft §5.1) ----------------------

    fn step(&mut self, msg: Message) -> Result<(), CoreError> {
        if msg.to != self.id || msg.from == self.id || !self.configs.current().contains(msg.from) {
            return Ok(());
        }
        if msg.term > self.term {
            match &msg.body {
                Body::PreVote { last_log } => {
                    let last_log = *last_log;
                    self.handle_pre_vote(&msg, last_log);
                    return Ok(());
                }
                Body::PreVoteResponse { granted: true } => {
                    if msg.term == self.term + 1 {
                        return self.handle_vote_response(msg.from, true, true);
                    }
                    return Ok(());
                }
                Body::Vote { .. } if self.in_lease() => return Ok(()),
                Body::Append { .. } | Body::Heartbeat { .. } => {
                    self.become_follower(msg.term, Some(msg.from))?;
                }
                _ => self.become_follower(msg.term, None)?,
            }
        } else if msg.term < self.term {
            return self.answer_stale(&msg);
        }
        assert_eq!(msg.term, self.term);
        match msg.body {
            Body::PreVote { last_log } => {
                self.handle_pre_vote(&msg, last_log);
                Ok(())
            }
            Body::PreVoteResponse { granted } => {
                // A granted pre-vote carries the term it was asked for, one
                // above ours: a granted one at our own term answers an older
                // campaign and must not count. Rejections count against us.
                if granted {
                    return Ok(());
                }
                self.handle_vote_response(msg.from, false, true)
            }
            Body::Vote { last_log } => self.handle_vote(&msg, last_log),
            Body::VoteResponse { granted } => self.handle_vote_response(msg.from, granted, false),
            Body::Append {
                prev,
                entries,
                commit,
                seq,
            } => self.handle_append(msg.from, prev, entries, commit, seq),
            Body::AppendResponse { result, seq } => {
                self.handle_append_response(msg.from, result, seq)
            }
            Body::Heartbeat { commit, seq } => self.handle_heartbeat(msg.from, commit, seq),
            Body::HeartbeatResponse { match_index, seq } => {
                self.handle_heartbeat_response(msg.from, match_index, seq)
            }
        }
    }

    /// A message from an older term. A stale leader (or a candidate) learns
    /// our term from the answer and steps down; this is also how a server
    /// that raised its term while partitioned gets the cluster past it.
    fn answer_stale(&mut self, msg: &Message) -> Result<(), CoreError> {
        match msg.body {
            Body::Append { prev, .. } => {
                let result = AppendResult::Reject {
                    rejected_prev: prev.index,
                    hint_index: prev.index,
                    hint_term: None,
                };
                self.send(msg.from, Body::AppendResponse { result, seq: 0 });
            }
            Body::Heartbeat { .. } => {
                self.send(
                    msg.from,
                    Body::HeartbeatResponse {
                        match_index: 0,
                        seq: 0,
                    },
                );
            }
            Body::PreVote { .. } => {
                self.send(msg.from, Body::PreVoteResponse { granted: false });
            }
            Body::Vote { .. } => {
                self.send(msg.from, Body::VoteResponse { granted: false });
            }
            _ => {}
        }
        Ok(())
    }

    // ----- internals: follower side of replication (Raft §5.3) -----------

    fn note_leader(&mut self, from: NodeId, seq: u64) -> Result<bool, CoreError> {
        match self.role {
            Role::Leader => return Ok(false), // two leaders in one term: impossible from correct peers
            Role::PreCandidate | Role::Candidate => self.become_follower(self.term, Some(from))?,
            Role::Follower => {
                if self.leader_id != Some(from) {
                    if self.leader_id.is_some() {
                        return Ok(false); // a second leader in one term: drop
                    }
                    self.leader_id = Some(from);
                    self.acked = 0;
                }
            }
        }
        self.leader_contact_elapsed = 0;
        self.election_elapsed = 0;
        self.leader_seq = self.leader_seq.max(seq);
        Ok(true)
    }

    fn handle_append(
        &mut self,
        from: NodeId,
        prev: LogId,
        entries: Vec<Entry>,
        leader_commit: Index,
        seq: u64,
    ) -> Result<(), CoreError> {
        if !entries_well_formed(prev, &entries, self.term) || !self.note_leader(from, seq)? {
            return Ok(());
        }
        let snapshot = self.log.snapshot_id();
        let (prev, entries) = if prev.index < snapshot.index {
            // Everything up to the snapshot is committed and matches: skip
            // the entries it covers, after checking the one at its edge.
            let skip = (snapshot.index - prev.index) as usize;
            if skip <= entries.len() && entries[skip - 1].id() != snapshot {
                return Ok(()); // conflicts with committed state: a faulty peer
            }
            (snapshot, entries.into_iter().skip(skip).collect::<Vec<_>>())
        } else {
            (prev, entries)
        };
        match self.log.term(prev.index) {
            None => {
                let hint_index = self.log.last_id().index + 1;
                let result = AppendResult::Reject {
                    rejected_prev: prev.index,
                    hint_index,
                    hint_term: None,
                };
                self.send(
                    from,
                    Body::AppendResponse {
                        result,
                        seq: self.leader_seq,
                    },
                );
                return Ok(());
            }
            Some(term) if term != prev.term => {
                let hint_index = self.first_index_of_term(prev.index, term);
                let result = AppendResult::Reject {
                    rejected_prev: prev.index,
                    hint_index,
                    hint_term: Some(term),
                };
                self.send(
                    from,
                    Body::AppendResponse {
                        result,
                        seq: self.leader_seq,
                    },
                );
                return Ok(());
            }
            Some(_) => {}
        }
        let mut end = prev.index + entries.len() as u64;
        let new_from = entries
            .iter()
            .position(|e| self.log.term(e.index) != Some(e.term));
        if let Some(pos) = new_from {
            let first = entries[pos].index;
            if first <= self.log.last_id().index {
                if first <= self.commit {
                    return Ok(()); // would overwrite a committed entry: a faulty peer
                }
                // The conflicting suffix goes first: its room is this
                // batch's (a full ring of stale entries must not refuse
                // the entries that replace them).
                self.truncate_from(first)?;
            }
            // A full log is backpressure, not a failure: take the prefix
            // that fits (keeping room for a barrier) and acknowledge that
            // much; the leader sends the rest again, and room comes back
            // as this server applies, checkpoints and releases its prefix.
            let fits = self.prefix_that_fits(&entries[pos..]);
            if fits < entries.len() - pos {
                self.room_refusals += 1;
            }
            if fits == 0 {
                return Ok(());
            }
            self.append_entries(&entries[pos..pos + fits])?;
            end = entries[pos + fits - 1].index;
        }
        self.verified = self.verified.max(end);
        let commit = leader_commit.min(end);
        if commit > self.commit {
            self.commit = commit;
        }
        self.report_commit();
        self.ack_leader_now(end);
        Ok(())
    }

    fn handle_heartbeat(
        &mut self,
        from: NodeId,
        leader_commit: Index,
        seq: u64,
    ) -> Result<(), CoreError> {
        if !self.note_leader(from, seq)? {
            return Ok(());
        }
        let commit = leader_commit.min(self.verified);
        if commit > self.commit {
            self.commit = commit;
            self.report_commit();
        }
        let match_index = self.match_index();
        self.send(
            from,
            Body::HeartbeatResponse {
                match_index,
                seq: self.leader_seq,
            },
        );
        Ok(())
    }

    /// What this follower can acknowledge: durable and matching the leader.
    fn match_index(&self) -> Index {
        if self.opts.mutation == Mutation::AckBeforeDurable {
            return self.verified;
        }
        self.durable.min(self.verified)
    }

    /// Answers an append at once if everything it carried is already
    /// acknowledgeable; otherwise `ack_leader` answers when it is durable.
    fn ack_leader_now(&mut self, end: Index) {
        let Some(leader) = self.leader_id else { return };
        let match_index = self.match_index();
        if match_index >= end {
            self.acked = self.acked.max(match_index);
            let result = AppendResult::Success { match_index };
            self.send(
                leader,
                Body::AppendResponse {
                    result,
                    seq: self.leader_seq,
                },
            );
        }
    }

    fn ack_leader(&mut self) {
        let Some(leader) = self.leader_id else { return };
        if self.role != Role::Follower {
            return;
        }
        let match_index = self.match_index();
        if match_index > self.acked {
            self.acked = match_index;
            let result = AppendResult::Success { match_index };
            self.send(
                leader,
                Body::AppendResponse {
                    result,
                    seq: self.leader_seq,
                },
            );
        }
    }

    fn first_index_of_term(&self, from: Index, term: Term) -> Index {
        let floor = self.commit.max(self.log.snapshot_id().index);
        let mut index = from;
        while index > floor + 1 && self.log.term(index - 1) == Some(term) {
            index -= 1;
        }
        index
    }

    fn truncate_from(&mut self, index: Index) -> Result<(), CoreError> {
        assert!(index > self.commit, "truncating committed entry {index}");
        assert!(
            self.role != Role::Leader,
            "a leader never truncates its log"
        );
        self.log.truncate_from(index)?;
        self.configs.truncate_from(index);
        self.durable = self.durable.min(index - 1);
        self.effects
            .push_back(Effect::EntriesDiscarded { from: index });
        Ok(())
    }

    fn append_entries(&mut self, entries: &[Entry]) -> Result<(), CoreError> {
        assert_eq!(entries[0].index, self.log.last_id().index + 1);
        self.log.append(entries)?;
        for entry in entries.iter().filter(|e| e.kind == EntryKind::Config) {
            // A malformed configuration from a peer is ignored rather than
            // trusted; leaders only write well-formed ones.
            if let Ok(m) = Membership::decode(&entry.data) {
                self.configs.in_log.push((entry.index, m));
            }
        }
        if self.opts.mutation == Mutation::AckBeforeDurable && self.role == Role::Leader {
            self.durable = self.log.last_id().index;
        }
        Ok(())
    }

    fn report_commit(&mut self) {
        let ready = self.commit.min(self.durable).max(self.commit_reported);
        if ready > self.commit_reported {
            self.commit_reported = ready;
            self.effects.push_back(Effect::Committed { index: ready });
        }
    }

    // ----- internals: leader side of replication -------------------------

    fn leader_append(&mut self, entries: &[Entry]) -> Result<(), CoreError> {
        assert_eq!(self.role, Role::Leader);
        self.append_entries(entries)?;
        let leader = self.leader.as_mut().expect("leader state");
        for e in entries {
            leader.uncommitted.push(e.index, e.data.len() as u64);
        }
        // Every entry above the commit index is counted, up to the last.
        let counted = &leader.uncommitted.sizes;
        assert_eq!(
            counted.back().map(|&(index, _)| index),
            Some(self.log.last_id().index)
        );
        assert!(counted
            .front()
            .is_some_and(|&(index, _)| index > self.commit));
        for peer in self.peers() {
            self.send_append(peer)?;
        }
        self.maybe_commit()
    }

    fn tick_leader(&mut self) -> Result<(), CoreError> {
        let quorum = self.configs.current().quorum();
        let opts = self.opts.clone();
        let leader = self.leader.as_mut().expect("leader state");
        leader.check_quorum_elapsed += 1;
        if leader.check_quorum_elapsed >= opts.election_ticks_min {
            leader.check_quorum_elapsed = 0;
            let owed = leader.period_last;
            leader.period_last = self.log.last_id().index;
            let active = 1 + leader.progress.values().filter(|p| p.kept_up(owed)).count();
            for pr in leader.progress.values_mut() {
                pr.start_period();
            }
            if active < quorum && opts.mutation != Mutation::SkipCheckQuorum {
                // CheckQuorum (thesis §6.2): a leader cut off from a majority
                // steps down so that clients and peers stop waiting on it,
                // and so that its followers leave its lease and can elect a
                // leader that does reach a majority.
                let term = self.term;
                return self.become_follower(term, None);
            }
        }
        let mut resend = Vec::new();
        for (&peer, pr) in leader.progress.iter_mut() {
            if !pr.outstanding() {
                continue;
            }
            pr.stall_ticks += 1;
            let limit = match pr.state {
                ProgressState::Snapshot { .. } => opts.snapshot_ticks_max,
                _ => opts.retransmit_ticks,
            };
            if pr.stall_ticks >= limit {
                let next = pr.matched + 1;
                pr.reset_to_probe(next);
                resend.push(peer);
            }
        }
        for peer in resend {
            self.send_append(peer)?;
        }
        let leader = self.leader.as_mut().expect("leader state");
        leader.heartbeat_elapsed += 1;
        if leader.heartbeat_elapsed >= opts.heartbeat_ticks {
            leader.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
        Ok(())
    }

    fn broadcast_heartbeat(&mut self) {
        let Some(leader) = self.leader.as_ref() else {
            return;
        };
        let seq = leader.seq;
        let commit = self.commit;
        for peer in self.peers() {
            self.send(peer, Body::Heartbeat { commit, seq });
        }
    }

    /// Sends what `peer` is missing, within its window.
    fn send_append(&mut self, peer: NodeId) -> Result<(), CoreError> {
        loop {
            let last = self.log.last_id().index;
            let snapshot = self.log.snapshot_id();
            let leader = self.leader.as_mut().expect("leader state");
            let seq = leader.seq;
            let Some(pr) = leader.progress.get_mut(&peer) else {
                return Ok(());
            };
            match pr.state {
                ProgressState::Snapshot { .. } => return Ok(()),
                ProgressState::Probe if pr.probe_sent => return Ok(()),
                ProgressState::Replicate if pr.inflight.len() >= self.opts.inflight_appends_max => {
                    return Ok(())
                }
                ProgressState::Replicate if pr.next > last => return Ok(()),
                _ => {}
            }
            let prev_index = pr.next - 1;
            let Some(prev_term) = self.log.term(prev_index) else {
                assert!(prev_index < snapshot.index);
                pr.state = ProgressState::Snapshot {
                    index: snapshot.index,
                };
                pr.stall_ticks = 0;
                pr.snapshot_progressed = true;
                self.effects.push_back(Effect::SnapshotNeeded { to: peer });
                return Ok(());
            };
            let entries = if pr.next <= last {
                let hi = (last + 1).min(pr.next + self.opts.batch_entries_max as u64);
                self.log.entries(pr.next, hi, self.opts.batch_bytes_max)?
            } else {
                Vec::new()
            };
            let sent_last = entries.last().map(|e| e.index);
            let leader = self.leader.as_mut().expect("leader state");
            let pr = leader.progress.get_mut(&peer).expect("progress");
            let replicate = pr.state == ProgressState::Replicate;
            if replicate {
                let sent_last = sent_last.expect("replicate sends entries");
                pr.next = sent_last + 1;
                pr.inflight.push_back(sent_last);
            } else {
                pr.probe_sent = true;
            }
            let prev = LogId::new(prev_index, prev_term);
            let commit = self.commit;
            self.send(
                peer,
                Body::Append {
                    prev,
                    entries,
                    commit,
                    seq,
                },
            );
            if !replicate {
                return Ok(());
            }
        }
    }

    fn handle_append_response(
        &mut self,
        from: NodeId,
        result: AppendResult,
        seq: u64,
    ) -> Result<(), CoreError> {
        let last = self.log.last_id().index;
        let Some(leader) = self.leader.as_mut() else {
            return Ok(());
        };
        let Some(pr) = leader.progress.get_mut(&from) else {
            return Ok(());
        };
        pr.recent_active = true;
        pr.acked_seq = pr.acked_seq.max(seq);
        match result {
            AppendResult::Success { match_index } => {
                if match_index > last {
                    return Ok(()); // acknowledges entries we never sent: a faulty peer
                }
                pr.advance(match_index);
                match pr.state {
                    ProgressState::Probe => {
                        pr.state = ProgressState::Replicate;
                        pr.next = pr.matched + 1;
                        pr.probe_sent = false;
                    }
                    ProgressState::Snapshot { index } if pr.matched >= index => {
                        pr.state = ProgressState::Replicate;
                        pr.next = pr.matched + 1;
                    }
                    _ => {}
                }
                self.maybe_commit()?;
                self.process_reads();
            }
            AppendResult::Reject {
                rejected_prev,
                hint_index,
                hint_term,
            } => {
                if rejected_prev < pr.matched || rejected_prev >= pr.next {
                    return Ok(()); // stale: answers an append we already moved past
                }
                if matches!(pr.state, ProgressState::Snapshot { .. }) {
                    return Ok(());
                }
                let next = match hint_term {
                    Some(term) => self
                        .last_index_of_term(term, rejected_prev)
                        .map(|i| i + 1)
                        .unwrap_or(hint_index),
                    None => hint_index,
                };
                let leader = self.leader.as_mut().expect("leader state");
                let pr = leader.progress.get_mut(&from).expect("progress");
                let next = next.clamp(pr.matched + 1, rejected_prev.max(pr.matched + 1));
                pr.reset_to_probe(next);
            }
        }
        self.send_append(from)
    }

    fn handle_heartbeat_response(
        &mut self,
        from: NodeId,
        match_index: Index,
        seq: u64,
    ) -> Result<(), CoreError> {
        let last = self.log.last_id().index;
        let Some(leader) = self.leader.as_mut() else {
            return Ok(());
        };
        let Some(pr) = leader.progress.get_mut(&from) else {
            return Ok(());
        };
        pr.recent_active = true;
        pr.acked_seq = pr.acked_seq.max(seq);
        if match_index <= last {
            pr.advance(match_index);
            if let ProgressState::Snapshot { index } = pr.state {
                if pr.matched >= index {
                    pr.state = ProgressState::Replicate;
                    pr.next = pr.matched + 1;
                }
            }
        }
        if pr.state == ProgressState::Probe {
            pr.probe_sent = false; // the follower is alive: probe again now
        }
        self.maybe_commit()?;
        self.process_reads();
        self.send_append(from)
    }

    /// The last index at or below `at` whose term is `term`, if any.
    fn last_index_of_term(&self, term: Term, at: Index) -> Option<Index> {
        let floor = self.log.snapshot_id().index;
        let mut index = at.min(self.log.last_id().index);
        loop {
            match self.log.term(index) {
                Some(t) if t == term => return Some(index),
                Some(t) if t < term => return None,
                _ if index <= floor => return None,
                _ => index -= 1,
            }
        }
    }

    /// Raft §5.3/§5.4.2: the commit index is the highest index durable on a
    /// majority, and only an entry of the current term is committed by
    /// counting replicas (earlier entries commit with it).
    fn maybe_commit(&mut self) -> Result<(), CoreError> {
        let Some(leader) = self.leader.as_ref() else {
            return Ok(());
        };
        let membership = self.configs.current();
        let mut matches: Vec<Index> = membership
            .voters()
            .iter()
            .map(|v| {
                if *v == self.id {
                    self.durable
                } else {
                    leader.progress.get(v).map(|p| p.matched).unwrap_or(0)
                }
            })
            .collect();
        matches.sort_unstable_by(|a, b| b.cmp(a));
        let quorum_index = matches[membership.quorum() - 1];
        if quorum_index <= self.commit {
            return Ok(());
        }
        let own_term = self.log.term(quorum_index) == Some(self.term);
        if !own_term && self.opts.mutation != Mutation::CommitOlderTerms {
            return Ok(());
        }
        self.commit = quorum_index;
        let term = self.term;
        let leader = self.leader.as_mut().expect("leader state");
        leader.uncommitted.commit_to(quorum_index);
        if !leader.barrier_passed && self.commit >= leader.barrier {
            leader.barrier_passed = true;
            let index = leader.barrier;
            self.effects
                .push_back(Effect::BarrierPassed { term, index });
        }
        self.report_commit();
        Ok(())
    }

    fn process_reads(&mut self) {
        let quorum = self.configs.current().quorum();
        let Some(leader) = self.leader.as_mut() else {
            return;
        };
        while let Some(read) = leader.reads.front() {
            let acks = 1 + leader
                .progress
                .values()
                .filter(|p| p.acked_seq >= read.seq)
                .count();
            if acks < quorum {
                break;
            }
            self.effects.push_back(Effect::ReadReady {
                ctx: read.ctx,
                index: read.index,
            });
            leader.reads.pop_front();
        }
    }
}

/// The positions of a batch appended by `Raft::propose_batch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProposedRange {
    pub first: LogId,
    pub last: LogId,
}

/// Entries from a peer must continue `prev` without gaps, with terms that
/// never decrease and never exceed the sender's term.
fn entries_well_formed(prev: LogId, entries: &[Entry], term: Term) -> bool {
    let mut expected = LogId::new(prev.index + 1, prev.term);
    for entry in entries {
        if entry.index != expected.index || entry.term < expected.term || entry.term > term {
            return false;
        }
        expected = LogId::new(entry.index + 1, entry.term);
    }
    prev.term <= term
}

/// Finds the `Config` entries in a recovered log.
fn scan_configs<L: LogStore>(log: &L) -> Result<Vec<(Index, Membership)>, CoreError> {
    const SCAN_BATCH_BYTES: u64 = 4 << 20;
    let mut configs = Vec::new();
    let last = log.last_id().index;
    let mut next = log.snapshot_id().index + 1;
    while next <= last {
        let batch = log.entries(next, last + 1, SCAN_BATCH_BYTES)?;
        let Some(tail) = batch.last() else {
            return Err(CoreError::Inconsistent(format!(
                "log returned no entry at {next}"
            )));
        };
        next = tail.index + 1;
        for entry in batch.iter().filter(|e| e.kind == EntryKind::Config) {
            let m = Membership::decode(&entry.data).map_err(|e| {
                CoreError::Inconsistent(format!("configuration entry {}: {e}", entry.index))
            })?;
            configs.push((entry.index, m));
        }
    }
    Ok(configs)
}
