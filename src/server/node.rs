//! The event loop of one server: the replica driven by real I/O.
//!
//! What it does: one thread owns the replica and waits, with
//! `crossbeam_channel::Select`, on four sources: events from the transport
//! (peer messages, client requests), the ringlog I/O thread's completions,
//! the application adapter's results, and a ticker. After every event it
//! carries out the replica's effects (messages to the transport, commands to
//! the adapter, replies to clients), starts a group commit if one is due,
//! and updates the metrics.
//!
//! What it does not do: block on I/O. Sending is a non-blocking hand-off to
//! the transport's queues; the application runs on the adapter's thread;
//! the log writes on its I/O thread. The only synchronous storage work on
//! this thread is the delta engine's capture and apply (page-cache reads and
//! writes, and the apply's fsync, which is on the engine's fsync thread but
//! waited for here: deltas are applied in order).

use crate::delta::RealTree;
use crate::replica::{
    ClientId, Effect, ExecOutcome, PeerMessage, Replica, ReplicaError, Reply, Request,
};
use crate::server::metrics::{KindLabel, Metrics, PeerLabel, PeerStatus, Status};
use bytes::Bytes;
use crossbeam_channel::{Receiver, Select};
use ringlog::uring::UringDisk;
use ringlog::{NodeId, RingLog};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub type ServerReplica = Replica<RingLog<UringDisk>, RealTree>;

/// Where the replica's messages to peers go (the transport).
pub trait PeerOut {
    /// Hands `msg` to the transport without blocking (it may drop it).
    fn send(&self, msg: PeerMessage);
}

/// Where replies to clients go (the transport's client side).
pub trait ClientOut {
    fn reply(&self, ctx: u64, client: ClientId, seq: u64, reply: Reply);
}

/// The application adapter.
pub trait AppRunner {
    /// Starts running `command` in `workdir`; the outcome arrives on
    /// `outcomes()` as `(id, outcome)`.
    fn start(&mut self, id: u64, command: Bytes, workdir: &std::path::Path);
    /// Restarts a long-running application before its next command.
    fn restart(&mut self);
    fn outcomes(&self) -> &Receiver<(u64, ExecOutcome)>;
}

/// What the transport delivers to the event loop.
#[derive(Debug)]
pub enum Event {
    Peer(PeerMessage),
    Request(Request),
    /// Stop the loop (signal, test).
    Shutdown,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("replica stopped: {0}")]
    Replica(#[from] ReplicaError),
    #[error("log: {0}")]
    Log(#[from] ringlog::StorageError),
}

pub struct Node<P: PeerOut, C: ClientOut, A: AppRunner> {
    pub replica: ServerReplica,
    peers: P,
    clients: C,
    app: A,
    events: Receiver<Event>,
    tick: Duration,
    metrics: Arc<Metrics>,
    status: Arc<Mutex<Status>>,
    /// Arrival of requests waiting for their reply (for commit latency).
    arrivals: HashMap<u64, Instant>,
    flushes: VecDeque<Instant>,
    /// The request being run and when it started.
    executing: Option<(u64, Instant)>,
    /// When each request's run was captured and proposed (by ctx).
    proposed: HashMap<u64, Instant>,
    started: Instant,
    was_leader: bool,
    seen: crate::replica::ReplicaStats,
    seen_sync_paths: ringlog::uring::SyncPathCounts,
}

/// Requests whose arrival time is tracked, at most (the pipeline bounds
/// them anyway; this bounds the map if replies go missing).
const ARRIVALS_MAX: usize = 1 << 16;

impl<P: PeerOut, C: ClientOut, A: AppRunner> Node<P, C, A> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        replica: ServerReplica,
        peers: P,
        clients: C,
        app: A,
        events: Receiver<Event>,
        tick: Duration,
        metrics: Arc<Metrics>,
        status: Arc<Mutex<Status>>,
    ) -> Self {
        Node {
            replica,
            peers,
            clients,
            app,
            events,
            tick,
            metrics,
            status,
            arrivals: HashMap::new(),
            flushes: VecDeque::new(),
            executing: None,
            proposed: HashMap::new(),
            started: Instant::now(),
            was_leader: false,
            seen: Default::default(),
            seen_sync_paths: Default::default(),
        }
    }

    /// Runs until a `Shutdown` event or a fatal error.
    pub fn run(&mut self) -> Result<(), NodeError> {
        let ticker = crossbeam_channel::tick(self.tick);
        let completions = self.replica.raft().log().disk().completions().clone();
        let outcomes = self.app.outcomes().clone();
        let events = self.events.clone();
        loop {
            let mut select = Select::new();
            let i_events = select.recv(&events);
            let i_log = select.recv(&completions);
            let i_app = select.recv(&outcomes);
            let i_tick = select.recv(&ticker);
            let ready = select.ready();
            if ready == i_events {
                // Take everything queued: one pass of effects and one group
                // commit serve the whole batch.
                let mut batch = 0;
                while let Ok(event) = events.try_recv() {
                    match event {
                        Event::Shutdown => return Ok(()),
                        Event::Peer(msg) => {
                            let t = Instant::now();
                            self.replica.handle_message(msg)?;
                            self.observe("message", t);
                        }
                        Event::Request(request) => {
                            if self.arrivals.len() < ARRIVALS_MAX {
                                self.arrivals.insert(request.ctx, Instant::now());
                            }
                            let t = Instant::now();
                            self.replica.handle_request(request)?;
                            self.observe("request", t);
                        }
                    }
                    self.carry_out()?;
                    batch += 1;
                    if batch >= 256 {
                        break;
                    }
                }
            } else if ready == i_log {
                // Readiness only: poll_durable consumes the completions.
                if let Some(durable) = self.replica.raft_mut().log_mut().poll_durable()? {
                    while self.flushes.len() > self.replica.raft().log().flushes_in_flight() {
                        if let Some(t) = self.flushes.pop_front() {
                            self.metrics
                                .sync_latency_seconds
                                .observe(t.elapsed().as_secs_f64());
                        }
                    }
                    let t = Instant::now();
                    self.replica.handle_log_durable(durable)?;
                    self.observe("log_durable", t);
                }
            } else if ready == i_app {
                if let Ok((id, outcome)) = outcomes.try_recv() {
                    let ran = self.executing.take();
                    if let Some((_, t)) = ran {
                        self.metrics
                            .execute_seconds
                            .observe(t.elapsed().as_secs_f64());
                    }
                    let capture = Instant::now();
                    self.replica.handle_executed(id, outcome)?;
                    let now = Instant::now();
                    self.metrics
                        .capture_seconds
                        .observe(now.duration_since(capture).as_secs_f64());
                    if let Some((ctx, _)) = ran {
                        if self.proposed.len() < ARRIVALS_MAX {
                            self.proposed.insert(ctx, now);
                        }
                    }
                }
            } else if ready == i_tick {
                let _ = ticker.try_recv();
                let t = Instant::now();
                self.replica.handle_tick()?;
                self.observe("tick", t);
                self.publish();
            }
            self.carry_out()?;
        }
    }

    fn observe(&self, kind: &str, since: Instant) {
        self.metrics
            .handle_seconds
            .get_or_create(&KindLabel { kind: kind.into() })
            .observe(since.elapsed().as_secs_f64());
    }

    /// Carries out the replica's effects and starts a group commit if due.
    fn carry_out(&mut self) -> Result<(), NodeError> {
        while let Some(effect) = self.replica.poll_effect() {
            match effect {
                Effect::Send(msg) => self.peers.send(msg),
                Effect::Execute { id, ctx, command } => {
                    let live = self.replica.engine().live_dir().to_string();
                    let workdir = self.replica.engine_mut().tree().path(&live);
                    let now = Instant::now();
                    if let Some(t) = self.arrivals.get(&ctx) {
                        self.metrics
                            .queue_seconds
                            .observe(now.duration_since(*t).as_secs_f64());
                    }
                    self.executing = Some((ctx, now));
                    self.app.start(id, command, &workdir);
                }
                Effect::Reply {
                    ctx,
                    client,
                    seq,
                    reply,
                } => {
                    if let Some(t) = self.arrivals.remove(&ctx) {
                        if matches!(reply, Reply::Ok { .. }) {
                            self.metrics
                                .commit_latency_seconds
                                .observe(t.elapsed().as_secs_f64());
                        }
                    }
                    if let Some(t) = self.proposed.remove(&ctx) {
                        if matches!(reply, Reply::Ok { .. }) {
                            self.metrics
                                .commit_wait_seconds
                                .observe(t.elapsed().as_secs_f64());
                        }
                    }
                    let kind = reply_kind(&reply);
                    self.metrics
                        .replies
                        .get_or_create(&KindLabel { kind: kind.into() })
                        .inc();
                    self.clients.reply(ctx, client, seq, reply);
                }
                Effect::ResetApplication => self.app.restart(),
                Effect::Applied { .. } => {}
                Effect::Diverged { index, reason } => {
                    tracing::error!(index, %reason, "this replica diverged from the leader; refusing to lead, asking for a snapshot");
                }
            }
        }
        let log = self.replica.raft_mut().log_mut();
        if log.flush_due() && log.begin_flush()?.is_some() {
            self.flushes.push_back(Instant::now());
        }
        Ok(())
    }

    /// Updates gauges, counters and the status document.
    fn publish(&mut self) {
        let m = &self.metrics;
        let raft = self.replica.raft();
        let role = match raft.role() {
            crate::raft::Role::Follower => 0,
            crate::raft::Role::PreCandidate => 1,
            crate::raft::Role::Candidate => 2,
            crate::raft::Role::Leader => 3,
        };
        m.role.set(role);
        m.term.set(raft.term() as i64);
        m.commit_index.set(raft.commit_index() as i64);
        m.applied_index.set(self.replica.applied_index() as i64);
        let checkpoint = self.replica.engine().checkpoint_index();
        m.checkpoint_index.set(checkpoint as i64);
        let last = raft.last_log_id().index;
        m.last_log_index.set(last as i64);
        m.leader.set(raft.leader_id().unwrap_or(0) as i64);
        let leader = raft.is_leader();
        if leader && !self.was_leader {
            m.elections_won.inc();
        }
        self.was_leader = leader;
        let mut peers = Vec::new();
        for &peer in raft.membership().voters() {
            if peer == raft.id() {
                continue;
            }
            if let Some(matched) = raft.follower_match(peer) {
                let label = PeerLabel {
                    peer: peer.to_string(),
                };
                m.peer_match.get_or_create(&label).set(matched as i64);
                m.peer_lag
                    .get_or_create(&label)
                    .set(last.saturating_sub(matched) as i64);
                peers.push(PeerStatus {
                    id: peer,
                    match_index: matched,
                    lag: last.saturating_sub(matched),
                });
            }
        }
        let stats = self.replica.stats().clone();
        let seen = &self.seen;
        m.delta_bytes
            .inc_by(stats.delta_bytes_proposed - seen.delta_bytes_proposed);
        m.rollbacks.inc_by(stats.rollbacks - seen.rollbacks);
        m.entries_applied
            .inc_by(stats.entries_applied - seen.entries_applied);
        m.snapshots_sent
            .inc_by(stats.snapshots_sent - seen.snapshots_sent);
        m.snapshots_installed
            .inc_by(stats.snapshots_installed - seen.snapshots_installed);
        m.app_failures
            .inc_by(stats.app_failures - seen.app_failures);
        self.seen = stats;
        let paths = self.replica.raft().log().disk().sync_path_counts();
        for (kind, now, before) in [
            ("fdatasync", paths.fdatasync, self.seen_sync_paths.fdatasync),
            ("dsync", paths.dsync, self.seen_sync_paths.dsync),
        ] {
            m.log_flushes
                .get_or_create(&KindLabel { kind: kind.into() })
                .inc_by(now - before);
        }
        self.seen_sync_paths = paths;
        let status = Status {
            id: raft.id(),
            role: format!("{:?}", raft.role()).to_lowercase(),
            term: raft.term(),
            leader: raft.leader_id(),
            commit_index: raft.commit_index(),
            applied_index: self.replica.applied_index(),
            checkpoint_index: checkpoint,
            last_log_index: last,
            state_hash: format!("{:032x}", self.replica.engine().status().state_hash),
            diverged: self.replica.diverged(),
            peers,
            uptime_s: self.started.elapsed().as_secs(),
        };
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = status;
    }
}

fn reply_kind(reply: &Reply) -> &'static str {
    match reply {
        Reply::Ok { .. } => "ok",
        Reply::NotLeader { .. } => "not_leader",
        Reply::Unknown => "unknown",
        Reply::Stale { .. } => "stale",
        Reply::Busy => "busy",
        Reply::AppFailed { .. } => "app_failed",
        Reply::SessionExpired => "session_expired",
    }
}

/// The id this node gives itself in logs.
pub fn node_label(id: NodeId) -> String {
    format!("node-{id}")
}
