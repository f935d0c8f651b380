//! The replica simulator: whole Bunker servers (consensus core, ringlog,
//! delta engine, replication pipeline) running the simulated ledger
//! application on simulated file trees, with simulated clients that time
//! out and retry across failovers.
//!
//! What it does: a discrete-event simulation like `cluster::Sim`, one seed
//! reproducing everything: network faults, group commits, crashes of the
//! log *and* the file tree (unsynced data and directory entries lost),
//! application runs that take time or crash midway, the application's own
//! non-determinism (each server's random generator and clock). After every
//! event it runs the consensus checkers (election safety, log matching,
//! leader completeness, state machine safety with state hashes, durable
//! hard state); `history` checks what clients saw at the end.
//!
//! What it does not do: choose faults (the nemesis does, through
//! `FaultTarget`) or run phases (`replica_run` does).

use crate::delta::mem::listing;
use crate::delta::{EngineConfig, MemTree};
use crate::raft::{Membership, Options, Role};
use crate::replica::{
    ClientId, Effect, ExecOutcome, PeerMessage, Replica, ReplicaConfig, ReplicaEntry, ReplicaError,
    ReplicaSetup, Reply, Request, OPEN_SEQ,
};
use crate::sim::checker::Checker;
use crate::sim::cluster::{Status, Timing};
use crate::sim::history::{CommittedCommand, History, Operation, Outcome};
use crate::sim::ledger::{self, Fate, LedgerCommand, ACCOUNTS};
use crate::sim::log::SimLog;
use crate::sim::nemesis::FaultTarget;
use crate::sim::network::{Network, PacketKind};
use crate::sim::queue::EventQueue;
use crate::sim::trace::{describe_message, Trace};
use bytes::Bytes;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ringlog::{FlushTicket, LogStore, NodeId, Term};

type SimReplica = Replica<SimLog, MemTree>;

pub struct RNode {
    pub id: NodeId,
    pub status: Status,
    pub replica: Option<SimReplica>,
    disk: Option<(SimLog, MemTree)>,
    incarnation: u64,
    pub tick_us: u64,
    sync: Option<FlushTicket>,
    inbox: Vec<PeerMessage>,
    /// The application's own randomness on this server.
    app_rng: ChaCha8Rng,
    leading: Option<Term>,
    /// Term, role and snapshot counters last written to the trace.
    traced: Option<(Term, Role, u64, u64)>,
}

#[derive(Debug)]
enum Event {
    Deliver(PeerMessage),
    Tick {
        node: NodeId,
        incarnation: u64,
    },
    SyncDone {
        node: NodeId,
        incarnation: u64,
    },
    Restart {
        node: NodeId,
        incarnation: u64,
    },
    Resume {
        node: NodeId,
        incarnation: u64,
    },
    ExecDone {
        node: NodeId,
        incarnation: u64,
        id: u64,
        outcome: ExecOutcome,
    },
    Request {
        node: NodeId,
        request: Request,
    },
    Reply {
        client: usize,
        /// Which send of the request this answers (low 16 bits).
        attempt: u32,
        session: ClientId,
        seq: u64,
        reply: Reply,
        commit: u64,
    },
    Timer(u64),
}

impl Event {
    /// The server that handles the event (none for clients and timers).
    fn server(&self) -> Option<NodeId> {
        match self {
            Event::Deliver(msg) => Some(msg.to()),
            Event::Tick { node, .. }
            | Event::SyncDone { node, .. }
            | Event::Restart { node, .. }
            | Event::Resume { node, .. }
            | Event::ExecDone { node, .. }
            | Event::Request { node, .. } => Some(*node),
            Event::Reply { .. } | Event::Timer(_) => None,
        }
    }
}

/// A simulated client: one command at a time, retried with the same
/// sequence number until it gets an answer.
pub struct SimClient {
    /// The session the cluster gave this client; 0 before it has one.
    pub id: ClientId,
    pub seq: u64,
    /// The operation in flight: its index in the history.
    pub current: Option<usize>,
    /// Waiting for a session to open (before `current` can start).
    pub opening: bool,
    /// Sends of the operation in flight so far.
    attempts: u32,
    target: Option<NodeId>,
    deadline_us: u64,
}

#[derive(Clone, Debug, Default)]
pub struct ReplicaStats {
    pub events: u64,
    pub elections: u64,
    pub requests: u64,
    pub answered: u64,
    pub writes_acked: u64,
    pub reads_acked: u64,
    pub app_failures: u64,
    pub retries: u64,
    pub crashes: u64,
    pub destroyed: u64,
    pub pauses: u64,
    pub snapshots_installed: u64,
    pub entries_applied: u64,
}

/// How the simulated application and clients behave.
#[derive(Clone, Debug)]
pub struct Workload {
    pub clients: usize,
    /// A client retries after this long without an answer.
    pub client_timeout_us: u64,
    /// Each retry of a command waits twice as long as the one before (up
    /// to a second, or the timeout if longer), as a client should: with a fixed timeout
    /// shorter than the cluster's latency under load, a client that takes
    /// only its latest attempt's answer never completes.
    pub retry_backoff: bool,
    /// Chance that one run of the application crashes midway.
    pub app_crash: f64,
    /// Chance that a command writes a large blob (a multi-entry delta).
    pub large: f64,
    /// A client takes a new identity after this many commands (sessions
    /// come and go, so the leader expires old ones).
    pub commands_per_identity: u64,
    /// Test only: a deliberate bug in the pipeline.
    pub mutation: crate::replica::ReplicaMutation,
}

impl Default for Workload {
    fn default() -> Workload {
        Workload {
            clients: 6,
            client_timeout_us: 300_000,
            retry_backoff: false,
            app_crash: 0.01,
            large: 0.01,
            commands_per_identity: 100,
            mutation: crate::replica::ReplicaMutation::None,
        }
    }
}

/// The servers' configuration in a replica run: what swarm testing varies
/// beyond `Options`, `Timing` and `Workload`. The default is the fixed
/// configuration every replica seed ran before swarm testing.
#[derive(Clone, Debug)]
pub struct ReplicaShape {
    /// Each server's ring log.
    pub geometry: ringlog::Geometry,
    /// Largest entry (overrides `Options::entry_bytes_max`).
    pub entry_bytes_max: u64,
    pub engine: EngineConfig,
    /// The pipeline's limits (its `mutation` comes from the workload).
    pub replica: ReplicaConfig,
}

impl Default for ReplicaShape {
    fn default() -> ReplicaShape {
        ReplicaShape {
            geometry: crate::sim::log::SIM_GEOMETRY,
            entry_bytes_max: 64 << 10,
            engine: EngineConfig {
                max_part_bytes: 32 << 10,
                snapshot_chunk_bytes: 16 << 10,
                snapshot_journal_bytes_max: 16 << 20,
                test_checkpoint_before_sync: false,
            },
            replica: ReplicaConfig {
                pipeline_commands_max: 64,
                queued_requests_max: 256,
                pending_replies_max: 256,
                sessions_max: 12,
                response_bytes_max: 4096,
                compact_entries: 64,
                compact_keep_entries: 16,
                checkpoint_entries: 48,
                checkpoint_bytes: 256 << 10,
                checkpoint_ticks: 50,
                snapshot_chunks_in_flight: 4,
                snapshot_stall_ticks: 10,
                snapshot_stalls_max: 10,
                snapshot_request_ticks: 10,
                mutation: crate::replica::ReplicaMutation::None,
            },
        }
    }
}

pub struct ReplicaSim {
    pub seed: u64,
    pub rng: ChaCha8Rng,
    pub now_us: u64,
    queue: EventQueue<Event>,
    nodes: Vec<RNode>,
    pub net: Network,
    pub checker: Checker,
    pub history: History,
    pub stats: ReplicaStats,
    pub timing: Timing,
    pub workload: Workload,
    setup: ReplicaSetup,
    pub clients: Vec<SimClient>,
    /// Clients send to these servers.
    pub client_targets: Vec<NodeId>,
    pub clients_on: bool,
    /// Clients finish (and retry) what they started but start nothing new.
    pub clients_draining: bool,
    fired: Vec<u64>,
    /// The recent events of every layer (recorded only when on).
    pub trace: Trace,
    /// Commands of appended entries not yet committed, by (index, term).
    appended_commands: std::collections::HashMap<(u64, Term), CommittedCommand>,
}

/// Timer ids at or above this are client turns.
const TIMER_CLIENT_BASE: u64 = 1_000;

impl ReplicaSim {
    pub fn new(
        seed: u64,
        nodes: usize,
        opts: Options,
        timing: Timing,
        workload: Workload,
    ) -> ReplicaSim {
        let shape = ReplicaShape::default();
        ReplicaSim::build(seed, nodes, opts, timing, workload, &shape, Trace::off())
    }

    /// A simulation of servers configured as `shape`, recording into
    /// `trace` from the first event.
    pub fn build(
        seed: u64,
        nodes: usize,
        opts: Options,
        timing: Timing,
        workload: Workload,
        shape: &ReplicaShape,
        trace: Trace,
    ) -> ReplicaSim {
        let voters = Membership::new(1..=nodes as NodeId).expect("valid membership");
        // As a server sets it, unless the caller asked for less.
        let bound = crate::sim::swarm::uncommitted_bytes_max(shape.geometry);
        let opts = Options {
            entry_bytes_max: shape.entry_bytes_max,
            uncommitted_bytes_max: opts.uncommitted_bytes_max.min(bound),
            ..opts
        };
        let setup = ReplicaSetup {
            raft: opts,
            voters,
            engine: shape.engine.clone(),
            replica: ReplicaConfig {
                mutation: workload.mutation,
                ..shape.replica.clone()
            },
        };
        let rng = ChaCha8Rng::seed_from_u64(seed);
        let clients = (0..workload.clients)
            .map(|_| SimClient {
                id: 0,
                seq: 0,
                current: None,
                opening: false,
                attempts: 0,
                target: None,
                deadline_us: 0,
            })
            .collect();
        let mut sim = ReplicaSim {
            seed,
            rng,
            now_us: 0,
            queue: EventQueue::new(),
            nodes: Vec::new(),
            net: Network::new(nodes),
            checker: Checker::new(),
            history: History::default(),
            stats: ReplicaStats::default(),
            timing,
            workload,
            setup,
            clients,
            client_targets: (1..=nodes as NodeId).collect(),
            clients_on: false,
            clients_draining: false,
            fired: Vec::new(),
            trace,
            appended_commands: std::collections::HashMap::new(),
        };
        for id in 1..=nodes as NodeId {
            let salt = seed ^ id.wrapping_mul(0x2545_F491_4F6C_DD1D);
            sim.nodes.push(RNode {
                id,
                status: Status::Crashed,
                replica: None,
                disk: Some((
                    SimLog::with_geometry(salt, shape.geometry),
                    MemTree::new(salt ^ 0xF00D),
                )),
                incarnation: 0,
                tick_us: sim.timing.tick_us,
                sync: None,
                inbox: Vec::new(),
                app_rng: ChaCha8Rng::seed_from_u64(salt ^ 0xA11),
                leading: None,
                traced: None,
            });
            sim.start(id);
        }
        sim
    }

    // ----- queries -------------------------------------------------------

    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    pub fn node(&self, id: NodeId) -> &RNode {
        &self.nodes[(id - 1) as usize]
    }

    fn node_mut(&mut self, id: NodeId) -> &mut RNode {
        &mut self.nodes[(id - 1) as usize]
    }

    pub fn replica(&self, id: NodeId) -> Option<&SimReplica> {
        self.node(id).replica.as_ref()
    }

    pub fn status(&self, id: NodeId) -> Status {
        self.node(id).status
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter(|n| n.status == Status::Up)
            .filter_map(|n| n.replica.as_ref())
            .filter(|r| r.raft().role() == Role::Leader)
            .max_by_key(|r| r.raft().term())
            .map(|r| r.id())
    }

    pub fn alive(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|n| n.status != Status::Destroyed)
            .map(|n| n.id)
            .collect()
    }

    pub fn applied(&self, id: NodeId) -> Option<u64> {
        self.replica(id).map(|r| r.applied_index())
    }

    pub fn take_fired(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.fired)
    }

    // ----- the event loop ------------------------------------------------

    fn schedule(&mut self, delay_us: u64, event: Event) {
        self.queue.push(self.now_us + delay_us, event);
    }

    pub fn set_timer(&mut self, delay_us: u64, id: u64) {
        self.schedule(delay_us, Event::Timer(id));
    }

    /// Starts the clients: each takes a turn every `turn_us` on average.
    pub fn start_clients(&mut self) {
        self.clients_on = true;
        for i in 0..self.clients.len() {
            let delay = self.rng.gen_range(1..2_000);
            self.set_timer(delay, TIMER_CLIENT_BASE + i as u64);
        }
    }

    pub fn step(&mut self) -> bool {
        let Some((at_us, event)) = self.queue.pop() else {
            return false;
        };
        assert!(at_us >= self.now_us, "time never goes backwards");
        self.now_us = at_us;
        self.checker.set_now(self.now_us);
        self.checker.set_server(event.server());
        self.stats.events += 1;
        if let Some(why) = super::over_budget(self.stats.events, self.now_us, self.queue.len()) {
            self.checker.fail(why);
            self.queue.clear();
            return false;
        }
        self.dispatch(event);
        if self.trace.on() && !self.checker.violations.is_empty() {
            // The ring ends where the run first went wrong.
            let what = self.checker.violations[0].what.clone();
            let server = self.checker.violations[0].server;
            self.trace.record(self.now_us, server, "VIOLATION", || what);
            self.trace.freeze();
        }
        true
    }

    fn dispatch(&mut self, event: Event) {
        match event {
            Event::Deliver(msg) => self.deliver(msg),
            Event::Tick { node, incarnation } => self.on_tick(node, incarnation),
            Event::SyncDone { node, incarnation } => self.on_sync_done(node, incarnation),
            Event::Restart { node, incarnation } => {
                let n = self.node(node);
                if n.incarnation == incarnation && n.status == Status::Crashed {
                    self.start(node);
                }
            }
            Event::Resume { node, incarnation } => {
                let n = self.node(node);
                if n.incarnation == incarnation && n.status == Status::Paused {
                    self.resume(node);
                }
            }
            Event::ExecDone {
                node,
                incarnation,
                id,
                outcome,
            } => self.on_exec_done(node, incarnation, id, outcome),
            Event::Request { node, request } => self.on_request(node, request),
            Event::Reply {
                client,
                attempt,
                session,
                seq,
                reply,
                commit,
            } => {
                // The latest send of the client's current session (an open
                // answers with the new session's id): attempt numbers
                // restart with every command, and sequence numbers with
                // every session, so an answer from a server paused since an
                // earlier session can carry the same pair (replica swarm
                // seed 808903010).
                let latest = self.clients.get(client).is_some_and(|c| {
                    let same_session = c.id == session || (c.id == 0 && seq == OPEN_SEQ);
                    c.attempts & 0xFFFF == attempt && same_session
                });
                let now = self.now_us;
                self.trace.record(now, None, "answer", || {
                    let taken = if latest {
                        "taken"
                    } else {
                        "ignored (earlier attempt or session)"
                    };
                    format!(
                        "client {client} seq {seq} attempt {attempt}: {} ({taken})",
                        describe_reply(&reply)
                    )
                });
                if latest {
                    self.on_reply(client, seq, reply, commit);
                } else {
                    self.on_earlier_reply(session, seq, reply);
                }
            }
            Event::Timer(id) if id >= TIMER_CLIENT_BASE => {
                let client = (id - TIMER_CLIENT_BASE) as usize;
                if self.clients_on {
                    self.client_turn(client);
                    let delay = self.rng.gen_range(500..3_000);
                    self.set_timer(delay, id);
                }
            }
            Event::Timer(id) => self.fired.push(id),
        }
    }

    pub fn run_until(
        &mut self,
        deadline_us: u64,
        mut done: impl FnMut(&ReplicaSim) -> bool,
    ) -> bool {
        while self.now_us < deadline_us {
            if done(self) {
                return true;
            }
            if !self.step() {
                break;
            }
        }
        done(self)
    }

    pub fn run_for(&mut self, duration_us: u64) {
        let deadline = self.now_us + duration_us;
        self.run_until(deadline, |_| false);
    }

    fn deliver(&mut self, msg: PeerMessage) {
        let to = msg.to();
        if self.trace.on() {
            let kind = match self.node(to).status {
                Status::Up => "recv",
                Status::Paused => "queued",
                Status::Crashed | Status::Destroyed => "lost",
            };
            self.trace
                .record(self.now_us, Some(to), kind, || describe_peer(&msg));
        }
        match self.node(to).status {
            Status::Up => {}
            Status::Paused => {
                const INBOX_MESSAGES_MAX: usize = 4096;
                let node = self.node_mut(to);
                if node.inbox.len() < INBOX_MESSAGES_MAX {
                    node.inbox.push(msg);
                }
                return;
            }
            Status::Crashed | Status::Destroyed => return,
        }
        let result = self.replica_mut(to).handle_message(msg);
        self.after(to, result);
    }

    fn replica_mut(&mut self, id: NodeId) -> &mut SimReplica {
        self.node_mut(id).replica.as_mut().expect("running")
    }

    fn on_tick(&mut self, id: NodeId, incarnation: u64) {
        let node = self.node(id);
        if node.incarnation != incarnation
            || matches!(node.status, Status::Crashed | Status::Destroyed)
        {
            return;
        }
        let (tick_us, paused) = (node.tick_us, node.status == Status::Paused);
        self.schedule(
            tick_us,
            Event::Tick {
                node: id,
                incarnation,
            },
        );
        if paused {
            return;
        }
        let result = self.replica_mut(id).handle_tick();
        self.after(id, result);
    }

    fn on_sync_done(&mut self, id: NodeId, incarnation: u64) {
        let node = self.node(id);
        if node.incarnation != incarnation {
            return;
        }
        if node.status == Status::Paused {
            self.schedule(
                self.timing.tick_us,
                Event::SyncDone {
                    node: id,
                    incarnation,
                },
            );
            return;
        }
        let node = self.node_mut(id);
        let ticket = node.sync.take().expect("a sync is in flight");
        let replica = node.replica.as_mut().expect("running");
        let result = match replica.raft_mut().log_mut().complete_sync(ticket) {
            Ok(durable) => {
                let result = replica.handle_log_durable(durable);
                let now = self.now_us;
                self.trace
                    .record(now, Some(id), "synced", || format!("durable to {durable}"));
                result
            }
            Err(e) => Err(e.into()),
        };
        self.after(id, result);
    }

    fn on_exec_done(&mut self, id: NodeId, incarnation: u64, exec: u64, outcome: ExecOutcome) {
        let node = self.node(id);
        if node.incarnation != incarnation {
            return;
        }
        if node.status == Status::Paused {
            self.schedule(
                self.timing.tick_us,
                Event::ExecDone {
                    node: id,
                    incarnation,
                    id: exec,
                    outcome,
                },
            );
            return;
        }
        let now = self.now_us;
        self.trace
            .record(now, Some(id), "executed", || match &outcome {
                ExecOutcome::Done { status, response } => {
                    format!(
                        "run {exec} done: status {status}, {} response bytes",
                        response.len()
                    )
                }
                ExecOutcome::Failed { reason } => format!("run {exec} failed: {reason}"),
            });
        let result = self.replica_mut(id).handle_executed(exec, outcome);
        self.after(id, result);
    }

    fn on_request(&mut self, id: NodeId, request: Request) {
        if self.node(id).status != Status::Up {
            return; // lost: the client will time out
        }
        self.stats.requests += 1;
        let now = self.now_us;
        self.trace.record(now, Some(id), "request", || {
            format!(
                "client {} of session {:x} seq {} ({} bytes)",
                request.ctx >> 48,
                request.client,
                request.seq,
                request.command.len()
            )
        });
        let result = self.replica_mut(id).handle_request(request);
        self.after(id, result);
    }

    /// Carries out `id`'s effects, runs the checkers, starts group commits.
    fn after(&mut self, id: NodeId, result: Result<(), ReplicaError>) {
        self.checker.set_server(Some(id));
        if let Err(e) = result {
            let now = self.now_us;
            self.trace
                .record(now, Some(id), "stop", || format!("the replica stops: {e}"));
            let storage = matches!(
                &e,
                ReplicaError::Core(crate::raft::CoreError::Storage(_))
                    | ReplicaError::Log(_)
                    | ReplicaError::Engine(crate::delta::EngineError::Storage(_))
                    | ReplicaError::Session(crate::replica::session::SessionError::Tree(_))
            );
            if !storage {
                self.checker.fail(format!("server {id} stopped: {e}"));
            }
            self.crash(id);
            return;
        }
        loop {
            let Some(effect) = self
                .node_mut(id)
                .replica
                .as_mut()
                .and_then(|r| r.poll_effect())
            else {
                break;
            };
            self.on_effect(id, effect);
            if self.node(id).replica.is_none() {
                return;
            }
        }
        self.observe(id);
    }

    /// Consensus checkers and group commit scheduling after `id` acted.
    fn observe(&mut self, id: NodeId) {
        let node = self.node_mut(id);
        let Some(replica) = node.replica.as_mut() else {
            return;
        };
        let raft = replica.raft();
        let (term, vote, role) = (raft.term(), raft.vote(), raft.role());
        let new_leader = role == Role::Leader && node.leading != Some(term);
        node.leading = (role == Role::Leader).then_some(term);
        let appended = replica.raft_mut().log_mut().drain_appended();
        let ops = replica.raft_mut().log_mut().drain_ops();
        let mut start_sync = false;
        if node.sync.is_none() && replica.raft().log().pending_ops() > 0 {
            match replica.raft_mut().log_mut().begin_sync() {
                Ok(ticket) => {
                    start_sync = ticket.is_some();
                    node.sync = ticket;
                }
                Err(e) => {
                    let now = self.now_us;
                    self.trace
                        .record(now, Some(id), "stop", || format!("group commit fails: {e}"));
                    self.crash(id);
                    return;
                }
            }
        }
        let incarnation = node.incarnation;
        if self.trace.on() {
            self.trace_observe(id, &appended, &ops, start_sync);
        }
        self.checker.hard_state(id, term, vote);
        self.note_appended(&appended);
        for (prev_term, entries) in appended {
            self.checker.appended(id, prev_term, &entries);
        }
        if new_leader {
            self.stats.elections += 1;
            self.checker.became_leader(id, term);
            let replica = self.nodes[(id - 1) as usize]
                .replica
                .as_ref()
                .expect("running");
            let log = replica.raft().log();
            self.checker
                .check_leader_log(id, term, log.snapshot_id(), |i| log.term(i));
        }
        if start_sync {
            let latency = self
                .rng
                .gen_range(self.timing.sync_us_min..=self.timing.sync_us_max);
            self.schedule(
                latency,
                Event::SyncDone {
                    node: id,
                    incarnation,
                },
            );
        }
    }

    /// Writes what a call into `id` did to its log, its term and role and
    /// its snapshot transfers, when they changed, to the trace.
    fn trace_observe(
        &mut self,
        id: NodeId,
        appended: &[(Term, Vec<ringlog::Entry>)],
        ops: &[crate::sim::log::LogOp],
        sync_started: bool,
    ) {
        let now = self.now_us;
        let node = &mut self.nodes[(id - 1) as usize];
        let Some(replica) = node.replica.as_ref() else {
            return;
        };
        let (raft, stats) = (replica.raft(), replica.stats());
        let seen = node.traced.unwrap_or((0, Role::Follower, 0, 0));
        let state = (
            raft.term(),
            raft.role(),
            stats.snapshots_sent,
            stats.snapshots_installed,
        );
        node.traced = Some(state);
        if (seen.0, seen.1) != (state.0, state.1) {
            let (commit, last) = (raft.commit_index(), raft.last_log_id());
            self.trace.record(now, Some(id), "role", || {
                format!("{:?} t{} commit {commit} last {last}", state.1, state.0)
            });
        }
        if state.2 > seen.2 || state.3 > seen.3 {
            let status = replica.snapshot_status();
            let applied = replica.applied_index();
            let kind = if state.3 > seen.3 {
                "snap-inst"
            } else {
                "snap-send"
            };
            self.trace.record(now, Some(id), kind, || {
                format!("applied {applied}: {status}")
            });
        }
        let sync_to = raft.last_log_id();
        crate::sim::trace::record_log_ops(&mut self.trace, now, id, appended, ops);
        if sync_started {
            self.trace.record(now, Some(id), "sync", || {
                format!("group commit up to {sync_to}")
            });
        }
    }

    fn on_effect(&mut self, id: NodeId, effect: Effect) {
        if self.trace.on() {
            self.trace_effect(id, &effect);
        }
        match effect {
            Effect::Send(msg) => self.send(msg),
            Effect::Execute {
                id: exec, command, ..
            } => self.execute(id, exec, command),
            Effect::Reply {
                ctx,
                client: session,
                seq,
                reply,
            } => {
                let client = (ctx >> 48) as usize;
                let attempt = ((ctx >> 32) & 0xFFFF) as u32;
                let delay = self.rng.gen_range(50..2_000);
                // Responses leave at commit, before the entry is applied:
                // the replying server's reported commit is part of the
                // committed index the answer may reflect.
                let reported = self.replica(id).map_or(0, |r| r.raft().commit_reported());
                let commit = self.history.commit_index.max(reported);
                self.schedule(
                    delay,
                    Event::Reply {
                        client,
                        attempt,
                        session,
                        seq,
                        reply,
                        commit,
                    },
                );
            }
            Effect::Applied {
                index,
                term,
                state_hash,
            } => {
                self.stats.entries_applied += 1;
                let node_term = self.replica(id).map_or(0, |r| r.raft().term());
                self.checker
                    .applied_position(id, node_term, index, term, state_hash);
                self.history.note_commit(index);
                self.record_committed(id, index, term);
            }
            Effect::ResetApplication => {}
            Effect::Diverged { index, reason } => {
                self.checker.fail(format!(
                    "I2: server {id} diverged at entry {index}: {reason}"
                ));
            }
        }
    }

    fn trace_effect(&mut self, id: NodeId, effect: &Effect) {
        let now = self.now_us;
        let (kind, detail) = match effect {
            Effect::Send(_) => return,
            Effect::Execute {
                id: exec, command, ..
            } => (
                "execute",
                format!("run {exec}: {} command bytes", command.len()),
            ),
            Effect::Reply {
                ctx,
                client,
                seq,
                reply,
            } => (
                "reply",
                format!(
                    "to client {} session {client:x} seq {seq}: {}",
                    ctx >> 48,
                    describe_reply(reply)
                ),
            ),
            Effect::Applied {
                index,
                term,
                state_hash,
            } => (
                "apply",
                match state_hash {
                    Some(h) => format!("entry {index} (term {term}), state {h:x}"),
                    None => format!("entry {index} (term {term}), no new state (a barrier, or a part of a larger delta)"),
                },
            ),
            Effect::ResetApplication => ("app-reset", "application restarted".to_string()),
            Effect::Diverged { index, reason } => {
                ("diverged", format!("at entry {index}: {reason}"))
            }
        };
        self.trace.record(now, Some(id), kind, || detail);
    }

    /// Records the command a committed entry carries, for the history.
    ///
    /// The command comes from what the servers appended (a server may
    /// apply an entry and release it from its log in the same call, when
    /// its log is small or fills), keyed by index and term, which identify
    /// an entry's content (log matching, checked on every append).
    fn record_committed(&mut self, id: NodeId, index: u64, term: Term) {
        if self.history.committed.contains_key(&index) {
            return;
        }
        if let Some(c) = self.appended_commands.remove(&(index, term)) {
            return self.history.committed_command(c);
        }
        // Appended and applied in the same call: not drained yet, but still
        // in the applying server's log.
        let Some(replica) = self.replica(id) else {
            return;
        };
        let Ok(entries) = replica.raft().entries(index, index + 1, u64::MAX) else {
            return;
        };
        let Some(entry) = entries.first() else { return };
        if entry.kind != ringlog::EntryKind::Command {
            return;
        }
        if let Ok(ReplicaEntry::Command(c)) = ReplicaEntry::decode(&entry.data) {
            self.history.committed_command(CommittedCommand {
                index,
                client: c.client,
                seq: c.seq,
                status: c.status,
                response: c.response.to_vec(),
                expired: c.expired,
            });
        }
    }

    /// Keeps the commands of newly appended entries until they commit.
    fn note_appended(&mut self, appended: &[(Term, Vec<ringlog::Entry>)]) {
        for entry in appended.iter().flat_map(|(_, entries)| entries) {
            let key = (entry.index, entry.term);
            if entry.kind != ringlog::EntryKind::Command
                || self.history.committed.contains_key(&entry.index)
                || self.appended_commands.contains_key(&key)
            {
                continue;
            }
            if let Ok(ReplicaEntry::Command(c)) = ReplicaEntry::decode(&entry.data) {
                let command = CommittedCommand {
                    index: entry.index,
                    client: c.client,
                    seq: c.seq,
                    status: c.status,
                    response: c.response.to_vec(),
                    expired: c.expired,
                };
                self.appended_commands.insert(key, command);
            }
        }
    }

    fn send(&mut self, msg: PeerMessage) {
        let msg = match msg {
            PeerMessage::Raft(m) => {
                // Consensus messages cross the network in their wire encoding.
                let mut buf = bytes::BytesMut::new();
                crate::wire::encode(&m, &mut buf);
                match crate::wire::decode(buf.freeze()) {
                    Ok(decoded) => PeerMessage::Raft(decoded),
                    Err(e) => {
                        self.checker.fail(format!("wire: undecodable message: {e}"));
                        return;
                    }
                }
            }
            other => other,
        };
        let kind = match &msg {
            PeerMessage::Raft(m) => PacketKind::Raft(m.kind()),
            _ => PacketKind::Snapshot,
        };
        let delays = self
            .net
            .route_parts(msg.from(), msg.to(), kind, &mut self.rng);
        if self.trace.on() && delays.len() != 1 {
            let kind = if delays.is_empty() { "drop" } else { "dup" };
            let now = self.now_us;
            self.trace
                .record(now, Some(msg.from()), kind, || describe_peer(&msg));
        }
        for delay in delays {
            self.schedule(delay, Event::Deliver(msg.clone()));
        }
    }

    /// Runs the ledger in `id`'s working copy; the answer comes back after
    /// a simulated run time.
    fn execute(&mut self, id: NodeId, exec: u64, command: bytes::Bytes) {
        let crash = self.rng.gen_bool(self.workload.app_crash);
        let latency = self.rng.gen_range(50..3_000);
        let now_us = self.now_us;
        let node = &mut self.nodes[(id - 1) as usize];
        let incarnation = node.incarnation;
        let replica = node.replica.as_mut().expect("running");
        let live = replica.engine().live_dir().to_string();
        let fate = if crash {
            Fate::CrashMidway
        } else {
            Fate::Normal
        };
        let outcome = ledger::execute(
            replica.engine_mut().tree(),
            &live,
            &command,
            now_us,
            &mut node.app_rng,
            fate,
        );
        if matches!(outcome, ExecOutcome::Failed { .. }) {
            self.stats.app_failures += 1;
        }
        self.schedule(
            latency,
            Event::ExecDone {
                node: id,
                incarnation,
                id: exec,
                outcome,
            },
        );
    }

    // ----- clients -------------------------------------------------------

    fn pick_command(&mut self) -> LedgerCommand {
        let account = |rng: &mut ChaCha8Rng| rng.gen_range(0..ACCOUNTS);
        if self.rng.gen_bool(self.workload.large) {
            return LedgerCommand::Large {
                kib: self.rng.gen_range(20..120),
            };
        }
        match self.rng.gen_range(0..10) {
            0..=2 => LedgerCommand::Deposit {
                account: account(&mut self.rng),
                amount: self.rng.gen_range(1..100),
            },
            3..=6 => {
                let from = account(&mut self.rng);
                let to = (from + self.rng.gen_range(1..ACCOUNTS)) % ACCOUNTS;
                LedgerCommand::Transfer {
                    from,
                    to,
                    amount: self.rng.gen_range(1..60),
                }
            }
            7..=8 => LedgerCommand::Balance {
                account: account(&mut self.rng),
            },
            _ => LedgerCommand::Sum,
        }
    }

    fn client_turn(&mut self, i: usize) {
        let now = self.now_us;
        let busy = self.clients[i].current.is_some() || self.clients[i].opening;
        match self.clients[i].current {
            _ if busy && now < self.clients[i].deadline_us => {}
            None if self.clients_draining => {
                // Nothing new; a session being opened is no longer needed.
                self.clients[i].opening = false;
            }
            _ if busy => {
                // No answer in time: retry, same sequence, another server.
                self.trace.record(now, None, "timeout", || {
                    format!("client {i} retries seq {}", self.clients[i].seq)
                });
                self.stats.retries += 1;
                self.clients[i].target = None;
                self.send_current(i);
            }
            _ => {
                let client = &mut self.clients[i];
                if client.seq >= self.workload.commands_per_identity {
                    // A new identity: sessions come and go.
                    client.id = 0;
                }
                if client.id == 0 {
                    client.opening = true;
                    client.seq = 0;
                    return self.send_current(i);
                }
                let command = self.pick_command();
                if self.trace.on() {
                    let (seq, what) = (self.clients[i].seq + 1, format!("{command:?}"));
                    self.trace.record(now, None, "invoke", || {
                        format!("client {i} seq {seq}: {what}")
                    });
                }
                let client = &mut self.clients[i];
                client.seq += 1;
                client.attempts = 0;
                self.history.operations.push(Operation {
                    client: client.id,
                    seq: client.seq,
                    command,
                    invoked_us: now,
                    completed_us: None,
                    outcome: None,
                    commit_at_completion: 0,
                });
                client.current = Some(self.history.operations.len() - 1);
                self.send_current(i);
            }
        }
    }

    fn send_current(&mut self, i: usize) {
        let (client, seq, command) = match self.clients[i].current {
            _ if self.clients[i].opening => (0, OPEN_SEQ, Bytes::new()),
            Some(op) => {
                let o = &self.history.operations[op];
                (o.client, o.seq, o.command.encode())
            }
            None => return,
        };
        // A client starts at one of its targets and follows redirects to
        // any server that is not destroyed.
        let target = match self.clients[i].target {
            Some(t) if self.node(t).status != Status::Destroyed => t,
            _ => *self.client_targets.choose(&mut self.rng).expect("targets"),
        };
        let c = &mut self.clients[i];
        c.target = Some(target);
        let timeout = self.workload.client_timeout_us;
        let wait = if self.workload.retry_backoff {
            // Doubling, up to a second (or the timeout, if longer).
            (timeout << c.attempts.min(4)).min(timeout.max(1_000_000))
        } else {
            timeout
        };
        c.deadline_us = self.now_us + wait;
        c.attempts = c.attempts.wrapping_add(1);
        // The client takes only the answer to its latest send, as the
        // client library does: it drops the connection of an attempt it
        // gives up on, so an earlier attempt's answer never reaches it.
        let attempt = u64::from(c.attempts & 0xFFFF);
        let request = Request {
            ctx: ((i as u64) << 48) | (attempt << 32) | (seq & 0xFFFF_FFFF),
            client,
            seq,
            command,
        };
        let delay = self.rng.gen_range(50..2_000);
        self.schedule(
            delay,
            Event::Request {
                node: target,
                request,
            },
        );
    }

    fn on_reply(&mut self, i: usize, seq: u64, reply: Reply, commit: u64) {
        if seq == OPEN_SEQ {
            return self.on_open_reply(i, reply);
        }
        let Some(op) = self.clients.get(i).and_then(|c| c.current) else {
            return;
        };
        if self.history.operations[op].seq != seq {
            return; // an answer to an earlier attempt of an earlier command
        }
        let outcome = match reply {
            Reply::Ok { status, response } => Outcome::Ok {
                status,
                response: response.to_vec(),
            },
            Reply::AppFailed { .. } => Outcome::Failed,
            Reply::NotLeader { leader } => {
                self.clients[i].target = leader;
                self.stats.retries += 1;
                return self.send_current(i);
            }
            Reply::Unknown | Reply::Busy => {
                self.clients[i].target = None;
                self.stats.retries += 1;
                return self.send_current(i);
            }
            Reply::Stale { last_seq } => {
                self.checker.fail(format!(
                    "client {:x} got Stale (last {last_seq}) for its current sequence {seq}",
                    self.clients[i].id
                ));
                return;
            }
            Reply::SessionExpired => {
                // Sent once: refused before running. Sent more than once: an
                // earlier attempt may have run, so the outcome is unknown.
                let client = &mut self.clients[i];
                self.history.told_expired.push(client.id);
                let once = client.attempts == 1;
                client.id = 0;
                client.current = None;
                let o = &mut self.history.operations[op];
                if o.outcome.is_none() {
                    o.completed_us = Some(self.now_us);
                    o.outcome = once.then_some(Outcome::Failed);
                }
                return;
            }
        };
        self.stats.answered += 1;
        let o = &mut self.history.operations[op];
        match &outcome {
            Outcome::Ok { .. } if o.command.writes() => self.stats.writes_acked += 1,
            Outcome::Ok { .. } => self.stats.reads_acked += 1,
            Outcome::Failed => {}
        }
        o.outcome = Some(outcome);
        o.completed_us = Some(self.now_us);
        o.commit_at_completion = commit;
        let client = &mut self.clients[i];
        client.current = None;
    }

    /// An answer to an attempt the client has given up on: the client never
    /// sees it, but what it states must still be true, so the checker
    /// gets the responses and the expiries.
    fn on_earlier_reply(&mut self, session: ClientId, seq: u64, reply: Reply) {
        if seq == OPEN_SEQ {
            return;
        }
        match reply {
            Reply::Ok { status, response } => {
                self.history
                    .earlier_answers
                    .push((session, seq, status, response.to_vec()));
            }
            Reply::SessionExpired => self.history.told_expired.push(session),
            _ => {}
        }
    }

    /// The answer to a client's request for a session.
    fn on_open_reply(&mut self, i: usize, reply: Reply) {
        if !self.clients.get(i).is_some_and(|c| c.opening) {
            return; // an answer to an earlier attempt: that session stays unused
        }
        match reply {
            Reply::Ok { response, .. } => match crate::replica::decode_session_id(&response) {
                Some(id) => {
                    let client = &mut self.clients[i];
                    client.id = id;
                    client.opening = false;
                    client.seq = 0;
                }
                None => self
                    .checker
                    .fail(format!("a session opened with the response {response:?}")),
            },
            Reply::NotLeader { leader } => {
                self.clients[i].target = leader;
                self.stats.retries += 1;
                self.send_current(i);
            }
            // Not proposed (a full pipeline or log), or the outcome is
            // unknown: an open is always safe to send again.
            Reply::Unknown | Reply::Busy | Reply::AppFailed { .. } => {
                self.clients[i].target = None;
                self.stats.retries += 1;
                self.send_current(i);
            }
            other => self
                .checker
                .fail(format!("opening a session was answered {other:?}")),
        }
    }

    // ----- faults --------------------------------------------------------

    fn start(&mut self, id: NodeId) {
        let seed = self.seed ^ (id << 48) ^ self.node(id).incarnation.wrapping_mul(0x9E37_79B9);
        let setup = self.setup.clone();
        let node = self.node_mut(id);
        assert_eq!(node.status, Status::Crashed);
        let (log, tree) = node.disk.take().expect("a crashed server keeps its disk");
        match Replica::open(id, &setup, log, tree, seed) {
            Ok(replica) => {
                let (last, applied) = (replica.raft().last_log_id(), replica.applied_index());
                node.replica = Some(replica);
                node.status = Status::Up;
                node.incarnation += 1;
                node.sync = None;
                node.leading = None;
                node.traced = None;
                let (incarnation, tick_us) = (node.incarnation, node.tick_us);
                let now = self.now_us;
                self.trace.record(now, Some(id), "start", || {
                    format!("incarnation {incarnation}: log to {last}, applied {applied}")
                });
                let phase = self.rng.gen_range(0..tick_us);
                self.schedule(
                    phase,
                    Event::Tick {
                        node: id,
                        incarnation,
                    },
                );
                self.after(id, Ok(()));
            }
            Err(e) => {
                self.checker
                    .fail(format!("server {id} cannot restart: {e}"));
                self.node_mut(id).status = Status::Destroyed;
            }
        }
    }

    /// Crashes a server: the log and the file tree lose what was not synced.
    pub fn crash(&mut self, id: NodeId) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.rng.gen());
        let node = self.node_mut(id);
        if !matches!(node.status, Status::Up | Status::Paused) {
            return;
        }
        let (log, mut tree) = node.replica.take().expect("running").into_parts();
        tree.crash();
        node.status = Status::Crashed;
        node.incarnation += 1;
        node.inbox.clear();
        node.leading = None;
        node.sync = None;
        let recovered = log.crash(&mut rng);
        let now = self.now_us;
        let kept = recovered.as_ref().map(|l| l.last_id());
        self.trace.record(now, Some(id), "crash", || match kept {
            Ok(last) => format!("crash; log recovers to {last}, tree loses unsynced changes"),
            Err(e) => format!("crash; the log does not recover: {e}"),
        });
        let node = self.node_mut(id);
        match recovered {
            Ok(log) => node.disk = Some((log, tree)),
            Err(e) => {
                node.status = Status::Destroyed;
                self.checker.fail(format!(
                    "server {id}'s log does not recover after a crash: {e}"
                ));
            }
        }
        self.stats.crashes += 1;
    }

    pub fn restart_after(&mut self, id: NodeId, delay_us: u64) {
        let incarnation = self.node(id).incarnation;
        self.schedule(
            delay_us,
            Event::Restart {
                node: id,
                incarnation,
            },
        );
    }

    pub fn restart(&mut self, id: NodeId) {
        if self.node(id).status == Status::Crashed {
            self.start(id);
        }
    }

    pub fn destroy(&mut self, id: NodeId) {
        let node = self.node_mut(id);
        if node.status == Status::Destroyed {
            return;
        }
        node.status = Status::Destroyed;
        node.replica = None;
        node.disk = None;
        node.inbox.clear();
        node.leading = None;
        node.incarnation += 1;
        self.stats.destroyed += 1;
        self.checker.forget(id);
        let now = self.now_us;
        self.trace
            .record(now, Some(id), "destroy", || "destroyed, disk gone".into());
    }

    pub fn pause(&mut self, id: NodeId, duration_us: u64) {
        let node = self.node_mut(id);
        if node.status != Status::Up {
            return;
        }
        node.status = Status::Paused;
        let incarnation = node.incarnation;
        self.stats.pauses += 1;
        let now = self.now_us;
        self.trace
            .record(now, Some(id), "pause", || format!("for {duration_us}us"));
        self.schedule(
            duration_us,
            Event::Resume {
                node: id,
                incarnation,
            },
        );
    }

    pub fn resume(&mut self, id: NodeId) {
        let node = self.node_mut(id);
        if node.status != Status::Paused {
            return;
        }
        node.status = Status::Up;
        let queued = node.inbox.len();
        let now = self.now_us;
        self.trace.record(now, Some(id), "resume", || {
            format!("{queued} messages queued")
        });
        let node = self.node_mut(id);
        for msg in std::mem::take(&mut node.inbox) {
            self.schedule(1, Event::Deliver(msg));
        }
    }

    pub fn set_clock_rate(&mut self, id: NodeId, rate: f64) {
        let tick_us = (self.timing.tick_us as f64 / rate.clamp(0.1, 10.0)) as u64;
        self.node_mut(id).tick_us = tick_us.max(1);
    }

    pub fn clock_jump(&mut self, id: NodeId, ticks: u32) {
        for _ in 0..ticks {
            if self.node(id).status != Status::Up {
                return;
            }
            let result = self.replica_mut(id).handle_tick();
            self.after(id, result);
        }
    }

    // ----- helpers for scripted scenarios ---------------------------------

    /// Runs until some server leads with its barrier committed and applied.
    pub fn wait_for_ready_leader(&mut self, bound_us: u64) -> Option<NodeId> {
        let deadline = self.now_us + bound_us;
        let mut found = None;
        self.run_until(deadline, |sim| {
            found = sim.ids().into_iter().find(|&n| {
                sim.status(n) == Status::Up && sim.replica(n).is_some_and(|r| r.is_ready_leader())
            });
            found.is_some()
        });
        found
    }

    /// Client `i` sends a new command to `target`; returns the operation's
    /// index in the history.
    ///
    /// The client must have a session ([`ReplicaSim::open_sessions`]).
    pub fn submit(&mut self, i: usize, command: LedgerCommand, target: NodeId) -> usize {
        let client = &mut self.clients[i];
        assert!(
            client.id != 0,
            "client {i} has no session: open_sessions first"
        );
        client.seq += 1;
        client.attempts = 0;
        self.history.operations.push(Operation {
            client: client.id,
            seq: client.seq,
            command,
            invoked_us: self.now_us,
            completed_us: None,
            outcome: None,
            commit_at_completion: 0,
        });
        let op = self.history.operations.len() - 1;
        client.current = Some(op);
        client.target = Some(target);
        self.send_current(i);
        op
    }

    /// Every client without a session opens one through `target`; false if
    /// some could not within `bound_us`.
    pub fn open_sessions(&mut self, target: NodeId, bound_us: u64) -> bool {
        for i in 0..self.clients.len() {
            if self.clients[i].id == 0 {
                self.clients[i].opening = true;
                self.clients[i].target = Some(target);
                self.send_current(i);
            }
        }
        let deadline = self.now_us + bound_us;
        self.run_until(deadline, |sim| sim.clients.iter().all(|c| c.id != 0))
    }

    /// Client `i` drops its session; the next `open_sessions` gives it a
    /// new one.
    pub fn drop_session(&mut self, i: usize) {
        let client = &mut self.clients[i];
        assert!(
            client.current.is_none() && !client.opening,
            "client {i} is busy"
        );
        client.id = 0;
    }

    /// The client of operation `op` sends it again (same session and
    /// sequence), as if the answer it got had been lost.
    pub fn retry_answered(&mut self, op: usize, target: NodeId) {
        let o = &self.history.operations[op];
        let i = self
            .clients
            .iter()
            .position(|c| c.id == o.client && c.seq == o.seq && c.current.is_none())
            .expect("the operation is its client's last, and the client is idle");
        self.clients[i].current = Some(op);
        self.clients[i].target = Some(target);
        self.send_current(i);
    }

    /// Client `i` sends its current command again (same sequence) to `target`.
    pub fn resend(&mut self, i: usize, target: NodeId) {
        self.clients[i].target = Some(target);
        self.send_current(i);
    }

    /// Runs until operation `op` is answered; returns its outcome.
    pub fn wait_op(&mut self, op: usize, bound_us: u64) -> Option<Outcome> {
        let deadline = self.now_us + bound_us;
        self.run_until(deadline, |sim| sim.history.operations[op].outcome.is_some());
        self.history.operations[op].outcome.clone()
    }

    /// Makes `id` start an election now (its clock jumps until it asks for
    /// pre-votes).
    pub fn campaign(&mut self, id: NodeId) {
        for _ in 0..2 * self.setup.raft.election_ticks_min {
            let Some(r) = self.replica(id) else { return };
            if r.raft().role() == Role::Leader {
                return;
            }
            self.clock_jump(id, 1);
            let Some(r) = self.replica(id) else { return };
            if r.raft().role() == Role::PreCandidate && r.raft().election_elapsed() == 0 {
                return;
            }
        }
    }

    /// Cuts every link to and from `id`.
    pub fn isolate(&mut self, id: NodeId) {
        for other in self.ids() {
            if other != id {
                self.net.set_blocked_both(id, other, true);
            }
        }
    }

    /// Test only: `id`'s log panics when an append reaches `index` (a bug
    /// planted in a server, to show what its trace looks like).
    pub fn inject_panic_at(&mut self, id: NodeId, index: u64) {
        let node = self.node_mut(id);
        if let Some(r) = node.replica.as_mut() {
            r.raft_mut().log_mut().inject_panic_at(Some(index));
        } else if let Some((log, _)) = node.disk.as_mut() {
            log.inject_panic_at(Some(index));
        }
    }

    /// The `n`-th file-tree operation from now on `id` fails as a crash
    /// (the server then stops, as on a real crash mid-write).
    pub fn crash_tree_after_ops(&mut self, id: NodeId, n: u64) {
        if let Some(r) = self.node_mut(id).replica.as_mut() {
            r.engine_mut().tree().crash_after_ops(n);
        }
    }

    /// Heals everything, restarts every server that is not destroyed, waits
    /// until they all stand at the same index, then runs every end-of-run
    /// check. Returns the violations.
    pub fn converge_and_check(&mut self, bound_us: u64) -> Vec<String> {
        self.clients_on = false;
        self.net.heal_all();
        for n in self.alive() {
            match self.status(n) {
                Status::Crashed => self.restart(n),
                Status::Paused => self.resume(n),
                _ => {}
            }
        }
        // Any client with a session (one between identities has none).
        let writer = self
            .clients
            .iter()
            .position(|c| c.id != 0 && c.current.is_none());
        if let (Some(leader), Some(writer)) = (self.wait_for_ready_leader(bound_us), writer) {
            // A last write makes every server apply everything before it.
            let op = self.submit(
                writer,
                LedgerCommand::Deposit {
                    account: 1,
                    amount: 1,
                },
                leader,
            );
            self.wait_op(op, bound_us);
        }
        let deadline = self.now_us + bound_us;
        self.run_until(deadline, |sim| {
            let alive = sim.alive();
            let first = sim.applied(alive[0]);
            first.is_some_and(|f| f >= sim.history.commit_index)
                && alive.iter().all(|&n| sim.applied(n) == first)
        });
        self.check_trees_identical();
        let mut violations: Vec<String> = self
            .checker
            .violations
            .iter()
            .map(|v| v.what.clone())
            .collect();
        violations.extend(self.history.check());
        violations
    }

    /// One line per server, for traces.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let state = match node.replica.as_ref() {
                Some(r) => {
                    let raft = r.raft();
                    format!(
                        "{:?} t{} lead {:?} commit {} durable {} last {} snap {} applied {} ready {} exec {} diverged {:?} mode {:?} {}",
                        raft.role(),
                        raft.term(),
                        raft.leader_id(),
                        raft.commit_index(),
                        raft.durable_index(),
                        raft.last_log_id(),
                        raft.log().snapshot_id(),
                        r.applied_index(),
                        r.is_ready_leader(),
                        r.executing(),
                        r.diverged(),
                        r.engine().status().mode,
                        r.snapshot_status(),
                    )
                }
                None => String::new(),
            };
            out.push_str(&format!("[{} {:?} {state}] ", node.id, node.status));
        }
        out
    }

    /// I2 at the end: every surviving server's committed tree is byte for
    /// byte the same, and they all stand at the same index.
    pub fn check_trees_identical(&mut self) {
        let mut reference: Option<(NodeId, u64, crate::delta::mem::Listing)> = None;
        for id in self.alive() {
            let Some(replica) = self.nodes[(id - 1) as usize].replica.as_mut() else {
                continue;
            };
            let base = replica.engine().base_dir().to_string();
            let applied = replica.applied_index();
            let tree = replica.engine_mut().tree();
            let Ok(files) = listing(tree, &base) else {
                self.checker
                    .fail(format!("server {id}'s committed tree cannot be listed"));
                continue;
            };
            match &reference {
                None => reference = Some((id, applied, files)),
                Some((other, at, theirs)) => {
                    if *at == applied && *theirs != files {
                        self.checker.fail(format!(
                            "I2: servers {other} and {id} hold different committed trees at index {applied}"
                        ));
                    }
                }
            }
        }
    }
}

/// One line for a message between replicas.
fn describe_peer(msg: &PeerMessage) -> String {
    match msg {
        PeerMessage::Raft(m) => describe_message(m),
        PeerMessage::SnapshotChunk {
            from,
            to,
            term,
            snapshot,
            seq,
            data,
        } => format!(
            "SnapChunk {from}->{to} t{term} transfer {snapshot:x} chunk {seq} ({} bytes)",
            data.len()
        ),
        PeerMessage::SnapshotAck {
            from,
            to,
            snapshot,
            next_seq,
        } => format!("SnapAck {from}->{to} transfer {snapshot:x} next {next_seq}"),
        PeerMessage::SnapshotRequest { from, to } => format!("SnapRequest {from}->{to}"),
    }
}

/// A reply, without its response bytes.
fn describe_reply(reply: &Reply) -> String {
    match reply {
        Reply::Ok { status, response } => {
            format!("Ok status {status} ({} bytes)", response.len())
        }
        other => format!("{other:?}"),
    }
}

impl FaultTarget for ReplicaSim {
    fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }
    fn trace(&mut self) -> &mut Trace {
        &mut self.trace
    }
    fn now_us(&self) -> u64 {
        self.now_us
    }
    fn net(&mut self) -> &mut Network {
        &mut self.net
    }
    fn net_ref(&self) -> &Network {
        &self.net
    }
    fn ids(&self) -> Vec<NodeId> {
        ReplicaSim::ids(self)
    }
    fn status(&self, id: NodeId) -> Status {
        ReplicaSim::status(self, id)
    }
    fn leader(&self) -> Option<NodeId> {
        ReplicaSim::leader(self)
    }
    fn alive(&self) -> Vec<NodeId> {
        ReplicaSim::alive(self)
    }
    fn election_us(&self) -> u64 {
        self.setup.raft.election_ticks_min as u64 * self.timing.tick_us
    }
    fn election_ticks_min(&self) -> u32 {
        self.setup.raft.election_ticks_min
    }
    fn crash(&mut self, id: NodeId) {
        ReplicaSim::crash(self, id)
    }
    fn restart_after(&mut self, id: NodeId, delay_us: u64) {
        ReplicaSim::restart_after(self, id, delay_us)
    }
    fn pause(&mut self, id: NodeId, duration_us: u64) {
        ReplicaSim::pause(self, id, duration_us)
    }
    fn destroy(&mut self, id: NodeId) {
        ReplicaSim::destroy(self, id)
    }
    fn set_clock_rate(&mut self, id: NodeId, rate: f64) {
        ReplicaSim::set_clock_rate(self, id, rate)
    }
    fn clock_jump(&mut self, id: NodeId, ticks: u32) {
        ReplicaSim::clock_jump(self, id, ticks)
    }
}
