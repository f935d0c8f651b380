//! The simulated cluster: servers running the real consensus core over
//! simulated logs, a simulated network and a simulated clock, driven by one
//! seeded event queue.
//!
//! What it does: a discrete-event simulation. Every source of
//! non-determinism (message delays and losses, disk sync latency, crash
//! points, torn writes, clock rates, client timing, the core's own election
//! RNG) draws from generators seeded by the run's seed, so a seed replays a
//! run exactly. After every event the checkers (`checker.rs`) look at what
//! changed.
//!
//! What it does not do: choose faults (the nemesis in `nemesis.rs` and the
//! scenarios do, through the public fault methods here) or decide pass/fail
//! for a whole run (`run.rs` does).

use crate::raft::{Effect, Membership, Options, Raft, Role};
use crate::sim::app::{entry_digest, AppState};
use crate::sim::checker::Checker;
use crate::sim::log::{LogOp, SimLog};
use crate::sim::network::{Network, Packet};
use crate::sim::queue::EventQueue;
use crate::sim::trace::{describe_message, Trace};
use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ringlog::{Index, LogId, LogStore, NodeId, Term};
use std::collections::HashMap;

/// Life of a simulated server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Up,
    /// Stopped (SIGSTOP): no ticks, packets wait in its socket buffer.
    Paused,
    /// Crashed: volatile state gone, disk waits for the restart.
    Crashed,
    /// Destroyed for ever: disk gone too.
    Destroyed,
}

pub struct Node {
    pub id: NodeId,
    pub status: Status,
    pub raft: Option<Raft<SimLog>>,
    /// The disk while the server is down.
    disk: Option<SimLog>,
    /// The state machine (applied atomically and durably).
    pub app: AppState,
    incarnation: u64,
    /// Simulated microseconds per tick of this server's clock.
    pub tick_us: u64,
    /// The group commit in flight, if any.
    sync: Option<ringlog::FlushTicket>,
    inbox: Vec<Packet>,
    /// The term this server leads, as its effects announced.
    leading: Option<Term>,
    pending: Vec<Proposal>,
    /// Term and role last written to the trace (when tracing).
    traced: Option<(Term, Role)>,
}

#[derive(Clone, Debug)]
struct Proposal {
    id: u64,
    at: LogId,
    created_us: u64,
}

/// A proposal whose commit was reported to its client.
#[derive(Clone, Debug)]
pub struct Acked {
    pub proposal: u64,
    pub at: LogId,
    pub digest: u64,
    pub created_us: u64,
    pub acked_us: u64,
}

#[derive(Clone, Debug)]
struct ReadCheck {
    node: NodeId,
    /// The highest index acknowledged to any client before the read began.
    acked_before: Index,
}

#[derive(Debug)]
enum Event {
    Deliver(Packet),
    Tick { node: NodeId, incarnation: u64 },
    SyncDone { node: NodeId, incarnation: u64 },
    Restart { node: NodeId, incarnation: u64 },
    Resume { node: NodeId, incarnation: u64 },
    Timer(u64),
}

impl Event {
    /// The server that handles the event.
    fn server(&self) -> Option<NodeId> {
        match self {
            Event::Deliver(packet) => Some(packet.to()),
            Event::Tick { node, .. }
            | Event::SyncDone { node, .. }
            | Event::Restart { node, .. }
            | Event::Resume { node, .. } => Some(*node),
            Event::Timer(_) => None,
        }
    }
}

/// Counters of one run.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub events: u64,
    pub elections: u64,
    pub proposals: u64,
    pub acked: u64,
    pub reads_ok: u64,
    pub crashes: u64,
    pub destroyed: u64,
    pub pauses: u64,
    pub snapshots_sent: u64,
    pub snapshots_installed: u64,
    pub truncations: u64,
}

/// Timing of the simulated hardware.
#[derive(Clone, Debug)]
pub struct Timing {
    /// Nominal microseconds per core tick.
    pub tick_us: u64,
    pub sync_us_min: u64,
    pub sync_us_max: u64,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            tick_us: 10_000,
            sync_us_min: 100,
            sync_us_max: 2_000,
        }
    }
}

/// A packet filter for scenarios: return false to drop the packet.
pub type PacketFilter = Box<dyn FnMut(&Packet) -> bool>;

pub struct Sim {
    pub seed: u64,
    pub rng: ChaCha8Rng,
    pub now_us: u64,
    queue: EventQueue<Event>,
    nodes: Vec<Node>,
    pub net: Network,
    pub checker: Checker,
    pub stats: Stats,
    pub opts: Options,
    pub timing: Timing,
    membership: Membership,
    /// Compact a log once it holds this many applied entries.
    pub compact_entries: u64,
    pub filter: Option<PacketFilter>,
    acked: Vec<Acked>,
    /// The highest index in `acked` (read at every client read).
    acked_max: Index,
    reads: HashMap<u64, ReadCheck>,
    next_id: u64,
    /// Timers fired since the owner last drained them (nemesis, clients).
    fired: Vec<u64>,
    /// The recent events of every layer (recorded only when on).
    pub trace: Trace,
}

impl Sim {
    pub fn new(seed: u64, nodes: usize, opts: Options, timing: Timing) -> Sim {
        Sim::build(
            seed,
            nodes,
            opts,
            timing,
            crate::sim::log::SIM_GEOMETRY,
            Trace::off(),
        )
    }

    /// A simulation whose servers' logs have `geometry`, recording into
    /// `trace` from the first event.
    pub fn build(
        seed: u64,
        nodes: usize,
        opts: Options,
        timing: Timing,
        geometry: ringlog::Geometry,
        trace: Trace,
    ) -> Sim {
        assert!((1..=9).contains(&nodes));
        let membership = Membership::new(1..=nodes as NodeId).expect("valid membership");
        let mut sim = Sim {
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed),
            now_us: 0,
            queue: EventQueue::new(),
            nodes: Vec::new(),
            net: Network::new(nodes),
            checker: Checker::new(),
            stats: Stats::default(),
            opts,
            timing,
            membership: membership.clone(),
            compact_entries: 64,
            filter: None,
            acked: Vec::new(),
            acked_max: 0,
            reads: HashMap::new(),
            next_id: 1,
            fired: Vec::new(),
            trace,
        };
        for id in 1..=nodes as NodeId {
            let salt = seed ^ id.wrapping_mul(0x2545_F491_4F6C_DD1D);
            sim.nodes.push(Node {
                id,
                status: Status::Crashed,
                raft: None,
                disk: Some(SimLog::with_geometry(salt, geometry)),
                app: AppState::new(membership.clone()),
                incarnation: 0,
                tick_us: sim.timing.tick_us,
                sync: None,
                inbox: Vec::new(),
                leading: None,
                pending: Vec::new(),
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

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[(id - 1) as usize]
    }

    fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    pub fn raft(&self, id: NodeId) -> Option<&Raft<SimLog>> {
        self.node(id).raft.as_ref()
    }

    pub fn status(&self, id: NodeId) -> Status {
        self.node(id).status
    }

    /// The running server that leads the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter(|n| n.status == Status::Up)
            .filter_map(|n| n.raft.as_ref())
            .filter(|r| r.role() == Role::Leader)
            .max_by_key(|r| r.term())
            .map(|r| r.id())
    }

    pub fn acked(&self) -> &[Acked] {
        &self.acked
    }

    pub fn acked_max_index(&self) -> Index {
        self.acked_max
    }

    pub fn alive(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|n| n.status != Status::Destroyed)
            .map(|n| n.id)
            .collect()
    }

    pub fn take_fired(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.fired)
    }

    // ----- the event loop ------------------------------------------------

    fn schedule(&mut self, delay_us: u64, event: Event) {
        self.queue.push(self.now_us + delay_us, event);
    }

    /// Arms a timer; its id shows up in `take_fired` when it fires.
    pub fn set_timer(&mut self, delay_us: u64, id: u64) {
        self.schedule(delay_us, Event::Timer(id));
    }

    /// Processes the next event; false when nothing is scheduled.
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
            Event::Deliver(packet) => self.deliver(packet),
            Event::Tick { node, incarnation } => self.on_tick(node, incarnation),
            Event::SyncDone { node, incarnation } => self.on_sync_done(node, incarnation),
            Event::Restart { node, incarnation } => {
                if self.node(node).incarnation == incarnation
                    && self.node(node).status == Status::Crashed
                {
                    self.start(node);
                }
            }
            Event::Resume { node, incarnation } => {
                if self.node(node).incarnation == incarnation
                    && self.node(node).status == Status::Paused
                {
                    self.resume(node);
                }
            }
            Event::Timer(id) => self.fired.push(id),
        }
    }

    /// Runs until `deadline_us` or until `done` holds; returns whether `done` held.
    pub fn run_until(&mut self, deadline_us: u64, mut done: impl FnMut(&Sim) -> bool) -> bool {
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

    fn deliver(&mut self, packet: Packet) {
        let to = packet.to();
        if self.trace.on() {
            let status = self.node(to).status;
            let kind = match status {
                Status::Up => "recv",
                Status::Paused => "queued",
                Status::Crashed | Status::Destroyed => "lost",
            };
            self.trace
                .record(self.now_us, Some(to), kind, || describe_packet(&packet));
        }
        match self.node(to).status {
            Status::Up => {}
            Status::Paused => {
                const INBOX_PACKETS_MAX: usize = 4096;
                let node = self.node_mut(to);
                if node.inbox.len() < INBOX_PACKETS_MAX {
                    node.inbox.push(packet);
                }
                return;
            }
            Status::Crashed | Status::Destroyed => return,
        }
        match packet {
            Packet::Raft(msg) => {
                let result = self
                    .node_mut(to)
                    .raft
                    .as_mut()
                    .expect("up")
                    .handle_message(msg);
                self.after(to, result);
            }
            Packet::Snapshot {
                from, term, state, ..
            } => self.install_snapshot(to, from, term, state),
        }
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
        let result = self.node_mut(id).raft.as_mut().expect("up").handle_tick();
        self.after(id, result);
    }

    fn on_sync_done(&mut self, id: NodeId, incarnation: u64) {
        let node = self.node(id);
        if node.incarnation != incarnation {
            return;
        }
        if node.status == Status::Paused {
            // The process sees the completion only when it runs again.
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
        let raft = node.raft.as_mut().expect("up");
        let result = match raft.log_mut().complete_sync(ticket) {
            Ok(durable) => {
                let now = self.now_us;
                self.trace
                    .record(now, Some(id), "synced", || format!("durable to {durable}"));
                let raft = self.node_mut(id).raft.as_mut().expect("up");
                raft.handle_log_durable(durable)
            }
            Err(e) => Err(e.into()),
        };
        self.after(id, result);
    }

    /// Carries out the effects of the last call into `id`'s core, runs the
    /// checkers on what changed, and starts a group commit if one is due.
    fn after(&mut self, id: NodeId, result: Result<(), crate::raft::CoreError>) {
        self.checker.set_server(Some(id));
        if let Err(e) = result {
            return self.stop(id, e);
        }
        loop {
            let Some(effect) = self
                .node_mut(id)
                .raft
                .as_mut()
                .and_then(|r| r.poll_effect())
            else {
                break;
            };
            self.on_effect(id, effect);
            if self.node(id).raft.is_none() {
                return;
            }
        }
        let node = self.node_mut(id);
        let Some(raft) = node.raft.as_mut() else {
            return;
        };
        let (term, vote) = (raft.term(), raft.vote());
        let appended = raft.log_mut().drain_appended();
        let ops = raft.log_mut().drain_ops();
        let mut start_sync = false;
        if node.sync.is_none() && raft.log().pending_ops() > 0 {
            match raft.log_mut().begin_sync() {
                Ok(ticket) => {
                    start_sync = ticket.is_some();
                    node.sync = ticket;
                }
                Err(e) => {
                    // The disk failed: the server stops (fail-stop).
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
            self.trace_after(id, &appended, &ops, start_sync);
        }
        self.checker.hard_state(id, term, vote);
        for (prev_term, entries) in appended {
            self.checker.appended(id, prev_term, &entries);
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

    /// `id`'s core reported an error: a storage failure stops the server
    /// (fail-stop) and is no violation; anything else the core reports is.
    fn stop(&mut self, id: NodeId, e: crate::raft::CoreError) {
        let now = self.now_us;
        self.trace
            .record(now, Some(id), "stop", || format!("the core stops: {e}"));
        if !matches!(e, crate::raft::CoreError::Storage(_)) {
            self.checker.fail(format!("server {id} stopped: {e}"));
        }
        self.crash(id);
    }

    /// Writes what a call into `id`'s core did to its log, and its term and
    /// role if they changed, to the trace.
    fn trace_after(
        &mut self,
        id: NodeId,
        appended: &[(Term, Vec<ringlog::Entry>)],
        ops: &[LogOp],
        sync_started: bool,
    ) {
        let now = self.now_us;
        let node = &mut self.nodes[(id - 1) as usize];
        let Some(raft) = node.raft.as_ref() else {
            return;
        };
        let state = (raft.term(), raft.role());
        if node.traced != Some(state) {
            node.traced = Some(state);
            let (commit, last) = (raft.commit_index(), raft.last_log_id());
            self.trace.record(now, Some(id), "role", || {
                format!("{:?} t{} commit {commit} last {last}", state.1, state.0)
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
        match effect {
            Effect::Send(msg) => {
                // Every message crosses the simulated network in its wire
                // encoding, as it would cross a real one.
                let mut buf = bytes::BytesMut::new();
                crate::wire::encode(&msg, &mut buf);
                match crate::wire::decode(buf.freeze()) {
                    Ok(decoded) => self.send(Packet::Raft(decoded)),
                    Err(e) => self.checker.fail(format!(
                        "wire: server {id} sent an undecodable message: {e}"
                    )),
                }
            }
            Effect::BecameLeader { term } => {
                self.stats.elections += 1;
                self.node_mut(id).leading = Some(term);
                self.checker.became_leader(id, term);
                let raft = self.nodes[(id - 1) as usize].raft.as_ref().expect("up");
                let snapshot = raft.log().snapshot_id();
                let log = raft.log();
                self.checker
                    .check_leader_log(id, term, snapshot, |i| log.term(i));
            }
            Effect::LostLeadership { .. } => {
                let node = self.node_mut(id);
                node.leading = None;
                node.pending.clear();
            }
            Effect::Committed { index } => self.apply_committed(id, index),
            Effect::EntriesDiscarded { from } => {
                let now = self.now_us;
                self.trace.record(now, Some(id), "discard", || {
                    format!("pending proposals from {from} discarded")
                });
                self.stats.truncations += 1;
                self.node_mut(id).pending.retain(|p| p.at.index < from);
            }
            Effect::SnapshotNeeded { to } => {
                self.stats.snapshots_sent += 1;
                let node = self.node(id);
                let (state, term) = (node.app.clone(), node.raft.as_ref().expect("up").term());
                let (now, at) = (self.now_us, state.applied);
                self.trace.record(now, Some(id), "snap-send", || {
                    format!("snapshot at {at} to {to} (term {term})")
                });
                self.send(Packet::Snapshot {
                    from: id,
                    to,
                    term,
                    state,
                });
            }
            Effect::ReadReady { ctx, index } => self.check_read(ctx, index),
            Effect::ReadFailed { ctx } => {
                self.reads.remove(&ctx);
            }
            Effect::BarrierPassed { .. } => {}
        }
    }

    fn send(&mut self, packet: Packet) {
        if let Some(filter) = self.filter.as_mut() {
            if !filter(&packet) {
                return;
            }
        }
        let delays = self.net.route(&packet, &mut self.rng);
        if self.trace.on() && delays.len() != 1 {
            let kind = if delays.is_empty() { "drop" } else { "dup" };
            let now = self.now_us;
            self.trace
                .record(now, Some(packet.from()), kind, || describe_packet(&packet));
        }
        for delay in delays {
            self.schedule(delay, Event::Deliver(packet.clone()));
        }
    }

    fn apply_committed(&mut self, id: NodeId, index: Index) {
        const APPLY_BATCH_BYTES: u64 = 1 << 20;
        loop {
            let node = self.node(id);
            let next = node.app.applied.index + 1;
            if next > index {
                break;
            }
            let raft = node.raft.as_ref().expect("up");
            let entries = match raft.entries(next, index + 1, APPLY_BATCH_BYTES) {
                Ok(entries) => entries,
                Err(e) => {
                    self.checker.fail(format!(
                        "server {id} cannot read committed entry {next}: {e}"
                    ));
                    return;
                }
            };
            let term = raft.term();
            let first = next;
            for entry in entries {
                let node = self.node_mut(id);
                node.app.apply(&entry);
                let hash = node.app.hash;
                self.checker.applied(id, term, &entry, hash);
            }
            let (now, applied) = (self.now_us, self.node(id).app.clone());
            self.trace.record(now, Some(id), "apply", || {
                format!("{first}..={} hash {:016x}", applied.applied, applied.hash)
            });
        }
        self.ack_proposals(id, index);
        self.maybe_compact(id);
    }

    fn ack_proposals(&mut self, id: NodeId, index: Index) {
        let node = self.node_mut(id);
        let Some(term) = node.leading else { return };
        let (done, rest): (Vec<Proposal>, Vec<Proposal>) = std::mem::take(&mut node.pending)
            .into_iter()
            .partition(|p| p.at.index <= index);
        node.pending = rest;
        for p in done {
            if p.at.term != term {
                continue;
            }
            let digest = self.checker.committed_digest(p.at.index);
            if self.checker.committed_term(p.at.index) != Some(p.at.term) {
                self.checker.fail(format!(
                    "server {id} acknowledged proposal {} at {} which is not what committed",
                    p.id, p.at
                ));
                continue;
            }
            self.stats.acked += 1;
            let now = self.now_us;
            self.trace.record(now, Some(id), "ack", || {
                format!("proposal {} at {} acknowledged", p.id, p.at)
            });
            self.acked_max = self.acked_max.max(p.at.index);
            self.acked.push(Acked {
                proposal: p.id,
                at: p.at,
                digest: digest.unwrap_or(0),
                created_us: p.created_us,
                acked_us: self.now_us,
            });
        }
    }

    /// Releases the log prefix the state machine holds: every
    /// `compact_entries` entries, or as soon as half the log's space is in
    /// use (as the replica does: small logs fill before the count).
    fn maybe_compact(&mut self, id: NodeId) {
        const SPACE_RELEASE_PERCENT: u8 = 50;
        let compact_entries = self.compact_entries;
        let keep = self.rng.gen_range(0..compact_entries / 2 + 1);
        let node = self.node_mut(id);
        let applied = node.app.applied.index;
        let raft = node.raft.as_mut().expect("up");
        let released = raft.log().snapshot_id().index;
        let filling = raft.log().space_used_percent() >= SPACE_RELEASE_PERCENT;
        if filling && applied > released {
            let result = raft.compact(applied);
            self.after(id, result);
        } else if applied.saturating_sub(released) > compact_entries {
            let result = raft.compact(applied - keep);
            self.after(id, result);
        }
    }

    fn install_snapshot(&mut self, id: NodeId, from: NodeId, term: Term, state: AppState) {
        let raft = self.node_mut(id).raft.as_mut().expect("up");
        match raft.accept_snapshot(from, term) {
            Ok(true) if state.applied.index > raft.commit_index() => {}
            Ok(_) => return self.after(id, Ok(())),
            Err(e) => return self.after(id, Err(e)),
        }
        if state.applied.index <= self.node(id).app.applied.index {
            return self.after(id, Ok(()));
        }
        self.stats.snapshots_installed += 1;
        let now = self.now_us;
        self.trace.record(now, Some(id), "snap-inst", || {
            format!("installed snapshot at {} from {from}", state.applied)
        });
        self.checker.installed(id, state.applied, state.hash);
        let node = self.node_mut(id);
        node.app = state.clone();
        let result = node
            .raft
            .as_mut()
            .expect("up")
            .handle_snapshot_installed(state.applied, state.membership);
        self.after(id, result);
    }

    fn check_read(&mut self, ctx: u64, index: Index) {
        let Some(read) = self.reads.remove(&ctx) else {
            return;
        };
        if index < read.acked_before {
            self.checker.fail(format!(
                "stale read: server {} confirmed read {ctx} at index {index}, but {} was acknowledged before it began",
                read.node, read.acked_before
            ));
        } else {
            self.stats.reads_ok += 1;
        }
    }

    // ----- clients -------------------------------------------------------

    /// A client sends a new command to `via` (or to the leader it names).
    /// Returns the position if a leader accepted it.
    pub fn propose(&mut self, via: NodeId) -> Option<LogId> {
        let target = self.redirect(via)?;
        let id = self.next_id;
        self.next_id += 1;
        let filler = self.rng.gen_range(0..64usize);
        let mut data = id.to_le_bytes().to_vec();
        data.extend((0..filler).map(|i| (i as u8) ^ (id as u8)));
        let now_us = self.now_us;
        self.checker.set_server(Some(target));
        let node = self.node_mut(target);
        let raft = node.raft.as_mut()?;
        match raft.propose(Bytes::from(data)) {
            Ok(at) => {
                node.pending.push(Proposal {
                    id,
                    at,
                    created_us: now_us,
                });
                self.trace.record(now_us, Some(target), "propose", || {
                    format!("proposal {id} at {at} (client via {via})")
                });
                self.stats.proposals += 1;
                self.after(target, Ok(()));
                Some(at)
            }
            Err(crate::raft::ProposeError::Fatal(e)) => {
                self.after(target, Err(e));
                None
            }
            Err(_) => None,
        }
    }

    /// A client asks `via` (or the leader it names) for a linearizable read.
    pub fn read(&mut self, via: NodeId) -> bool {
        let Some(target) = self.redirect(via) else {
            return false;
        };
        let ctx = self.next_id;
        self.next_id += 1;
        let acked_before = self.acked_max_index();
        self.checker.set_server(Some(target));
        let Some(raft) = self.node_mut(target).raft.as_mut() else {
            return false;
        };
        match raft.read_index(ctx) {
            Ok(()) => {
                let now = self.now_us;
                self.trace.record(now, Some(target), "read", || {
                    format!("read {ctx} begins, acknowledged before {acked_before}")
                });
                self.reads.insert(
                    ctx,
                    ReadCheck {
                        node: target,
                        acked_before,
                    },
                );
                self.after(target, Ok(()));
                true
            }
            Err(_) => false,
        }
    }

    /// Where a client that contacted `via` ends up: `via` if it leads, else
    /// the leader `via` names, if that one is running.
    fn redirect(&self, via: NodeId) -> Option<NodeId> {
        let raft = self
            .node(via)
            .raft
            .as_ref()
            .filter(|_| self.node(via).status == Status::Up)?;
        if raft.is_leader() {
            return Some(via);
        }
        let hint = raft.leader_id()?;
        let leader = self.node(hint);
        (leader.status == Status::Up && leader.raft.as_ref()?.is_leader()).then_some(hint)
    }

    // ----- faults --------------------------------------------------------

    /// Starts (or restarts) a server from its disk.
    fn start(&mut self, id: NodeId) {
        let seed = self.seed ^ (id << 48) ^ self.node(id).incarnation.wrapping_mul(0x9E37_79B9);
        let opts = self.opts.clone();
        let membership = self.membership.clone();
        let node = self.node_mut(id);
        assert!(matches!(node.status, Status::Crashed));
        let log = node.disk.take().expect("a crashed server keeps its disk");
        let applied = node.app.applied;
        match Raft::new(id, opts, membership, log, applied, seed) {
            Ok(raft) => {
                let (last, snap) = (raft.log().last_id(), raft.log().snapshot_id());
                node.raft = Some(raft);
                node.status = Status::Up;
                node.incarnation += 1;
                node.sync = None;
                node.leading = None;
                node.traced = None;
                let (incarnation, tick_us) = (node.incarnation, node.tick_us);
                let now = self.now_us;
                self.trace.record(now, Some(id), "start", || {
                    format!("incarnation {incarnation}: log {snap}..{last}, applied {applied}")
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

    /// Crashes a running or paused server (kill -9); unsynced writes may be
    /// lost or torn. It stays down until `restart`.
    pub fn crash(&mut self, id: NodeId) {
        self.crash_with(id, false);
    }

    /// Crashes a server and loses every write it had not synced.
    pub fn crash_losing_unsynced(&mut self, id: NodeId) {
        self.crash_with(id, true);
    }

    fn crash_with(&mut self, id: NodeId, lose_all: bool) {
        self.checker.set_server(Some(id));
        let mut rng = ChaCha8Rng::seed_from_u64(self.rng.gen());
        let node = self.node_mut(id);
        if !matches!(node.status, Status::Up | Status::Paused) {
            return;
        }
        let log = node.raft.take().expect("running").into_log();
        let recovered = if lose_all {
            log.crash_losing_unsynced()
        } else {
            log.crash(&mut rng)
        };
        node.status = Status::Crashed;
        let now = self.now_us;
        let kept = recovered.as_ref().map(|l| l.last_id());
        self.trace.record(now, Some(id), "crash", || match kept {
            Ok(last) => format!("crash (losing unsynced: {lose_all}); log recovers to {last}"),
            Err(e) => format!("crash; the log does not recover: {e}"),
        });
        let node = self.node_mut(id);
        match recovered {
            Ok(log) => node.disk = Some(log),
            Err(e) => {
                // Recovery refused the disk: report it; the server cannot
                // come back without repair, like a destroyed one.
                node.status = Status::Destroyed;
                self.checker.fail(format!(
                    "server {id}'s log does not recover after a crash: {e}"
                ));
            }
        }
        let node = self.node_mut(id);
        node.incarnation += 1;
        node.inbox.clear();
        node.pending.clear();
        node.leading = None;
        node.sync = None;
        self.stats.crashes += 1;
    }

    /// Restarts a crashed server after `delay_us`.
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

    /// Destroys a server for ever: process and disk.
    pub fn destroy(&mut self, id: NodeId) {
        let node = self.node_mut(id);
        if node.status == Status::Destroyed {
            return;
        }
        node.status = Status::Destroyed;
        node.raft = None;
        node.disk = None;
        node.inbox.clear();
        node.pending.clear();
        node.leading = None;
        node.incarnation += 1;
        self.stats.destroyed += 1;
        self.checker.forget(id);
        let now = self.now_us;
        self.trace
            .record(now, Some(id), "destroy", || "destroyed, disk gone".into());
    }

    /// Stops a server's process for `duration_us` (SIGSTOP, then SIGCONT).
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
        let inbox = std::mem::take(&mut node.inbox);
        let (now, queued) = (self.now_us, inbox.len());
        self.trace.record(now, Some(id), "resume", || {
            format!("{queued} packets queued")
        });
        for packet in inbox {
            self.schedule(1, Event::Deliver(packet));
        }
    }

    /// The server's clock runs at `rate` times the nominal speed.
    pub fn set_clock_rate(&mut self, id: NodeId, rate: f64) {
        let tick_us = (self.timing.tick_us as f64 / rate.clamp(0.1, 10.0)) as u64;
        self.node_mut(id).tick_us = tick_us.max(1);
    }

    /// The server's clock jumps forward by `ticks` at once.
    pub fn clock_jump(&mut self, id: NodeId, ticks: u32) {
        for _ in 0..ticks {
            if self.node(id).status != Status::Up {
                return;
            }
            let result = self.node_mut(id).raft.as_mut().expect("up").handle_tick();
            self.after(id, result);
        }
    }

    /// The commit position every running server agrees has been applied.
    pub fn applied(&self, id: NodeId) -> LogId {
        self.node(id).app.applied
    }

    /// Final check of acknowledged proposals against the committed record
    /// and the servers that survive.
    pub fn check_acked(&mut self) {
        let acked = std::mem::take(&mut self.acked);
        for a in &acked {
            let term = self.checker.committed_term(a.at.index);
            let digest = self.checker.committed_digest(a.at.index);
            if term != Some(a.at.term) || digest != Some(a.digest) {
                self.checker.fail(format!(
                    "lost acknowledged proposal {} at {}: committed record has term {term:?}",
                    a.proposal, a.at
                ));
            }
        }
        let acked_max = acked.iter().map(|a| a.at.index).max().unwrap_or(0);
        for id in self.alive() {
            let applied = self.applied(id).index;
            if applied < acked_max {
                self.checker.fail(format!(
                    "server {id} applied only {applied} of the {acked_max} entries acknowledged"
                ));
            }
        }
        self.acked = acked;
    }

    // ----- helpers for scripted scenarios ---------------------------------

    /// A simulation for a scripted scenario: five servers, no nemesis, no
    /// clients; the scenario drives everything.
    pub fn scenario(seed: u64, opts: Options) -> Sim {
        Sim::new(seed, 5, opts, Timing::default())
    }

    /// The highest term of any running server.
    pub fn max_term(&self) -> Term {
        self.nodes
            .iter()
            .filter_map(|n| n.raft.as_ref())
            .map(|r| r.term())
            .max()
            .unwrap_or(0)
    }

    /// Runs until some running server leads (and has committed its
    /// barrier), for at most `bound_us`.
    pub fn wait_for_leader(&mut self, bound_us: u64) -> Option<NodeId> {
        let deadline = self.now_us + bound_us;
        let found = self.run_until(deadline, |sim| {
            sim.leader()
                .is_some_and(|l| sim.raft(l).is_some_and(|r| r.barrier_passed()))
        });
        if found {
            self.leader()
        } else {
            None
        }
    }

    /// Runs until `id` leads with its barrier committed, for at most `bound_us`.
    pub fn wait_until_leader(&mut self, id: NodeId, bound_us: u64) -> bool {
        let deadline = self.now_us + bound_us;
        self.run_until(deadline, |sim| {
            sim.status(id) == Status::Up && sim.raft(id).is_some_and(|r| r.barrier_passed())
        })
    }

    /// Runs until a server other than `old` leads with its barrier
    /// committed, for at most `bound_us`.
    pub fn wait_for_new_leader(&mut self, old: NodeId, bound_us: u64) -> Option<NodeId> {
        let deadline = self.now_us + bound_us;
        let mut found = None;
        self.run_until(deadline, |sim| {
            found = sim.ids().into_iter().find(|&n| {
                n != old
                    && sim.status(n) == Status::Up
                    && sim.raft(n).is_some_and(|r| r.barrier_passed())
            });
            found.is_some()
        });
        found
    }

    /// Proposes through `via` and runs until the proposal is acknowledged,
    /// for at most `bound_us`; returns its position if it was.
    pub fn propose_acked(&mut self, via: NodeId, bound_us: u64) -> Option<LogId> {
        let at = self.propose(via)?;
        let deadline = self.now_us + bound_us;
        let acked = self.run_until(deadline, |sim| sim.acked.iter().any(|a| a.at == at));
        acked.then_some(at)
    }

    /// Makes `id` start an election now, as if its election timer fired:
    /// its clock jumps forward just until it starts asking for pre-votes.
    pub fn campaign(&mut self, id: NodeId) {
        for _ in 0..2 * self.opts.election_ticks_min {
            let Some(raft) = self.node(id).raft.as_ref() else {
                return;
            };
            if raft.role() == Role::Leader {
                return;
            }
            self.clock_jump(id, 1);
            let Some(raft) = self.node(id).raft.as_ref() else {
                return;
            };
            if raft.role() == Role::PreCandidate && raft.election_elapsed() == 0 {
                return;
            }
        }
    }

    /// Test only: `id`'s log panics when an append reaches `index` (a bug
    /// planted in a server, to show what its trace looks like).
    pub fn inject_panic_at(&mut self, id: NodeId, index: Index) {
        let node = self.node_mut(id);
        if let Some(raft) = node.raft.as_mut() {
            raft.log_mut().inject_panic_at(Some(index));
        } else if let Some(log) = node.disk.as_mut() {
            log.inject_panic_at(Some(index));
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

    /// Installs a packet filter (return false to drop a packet).
    pub fn set_filter(&mut self, filter: impl FnMut(&Packet) -> bool + 'static) {
        self.filter = Some(Box::new(filter));
    }

    pub fn clear_filter(&mut self) {
        self.filter = None;
    }

    /// One line per server: status, role, term, leader, commit, last log.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let state = match node.raft.as_ref() {
                Some(r) => format!(
                    "{:?} t{} lead {:?} commit {} durable {} last {} applied {}",
                    r.role(),
                    r.term(),
                    r.leader_id(),
                    r.commit_index(),
                    r.durable_index(),
                    r.last_log_id(),
                    node.app.applied.index
                ),
                None => String::new(),
            };
            out.push_str(&format!("[{} {:?} {state}] ", node.id, node.status));
        }
        out
    }

    /// Blocked directed links, as "a->b" pairs.
    pub fn describe_links(&self) -> String {
        let mut out = Vec::new();
        for a in self.ids() {
            for b in self.ids() {
                if a == b {
                    continue;
                }
                let l = self.net.link(a, b);
                if l.blocked {
                    out.push(format!("{a}-x>{b}"));
                } else if l.loss > 0.0 || !l.drop_kinds.is_empty() {
                    out.push(format!("{a}-{:.0}%{:?}>{b}", l.loss * 100.0, l.drop_kinds));
                }
            }
        }
        out.join(" ")
    }

    /// The digest of the entry a proposal created (for scenario assertions).
    pub fn digest_of(entry: &ringlog::Entry) -> u64 {
        entry_digest(entry)
    }
}

/// One line for a packet of the consensus simulator.
fn describe_packet(packet: &Packet) -> String {
    match packet {
        Packet::Raft(m) => describe_message(m),
        Packet::Snapshot {
            from,
            to,
            term,
            state,
        } => format!(
            "Snapshot {from}->{to} t{term} at {} hash {:016x}",
            state.applied, state.hash
        ),
    }
}

impl crate::sim::nemesis::FaultTarget for Sim {
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
        Sim::ids(self)
    }
    fn status(&self, id: NodeId) -> Status {
        Sim::status(self, id)
    }
    fn leader(&self) -> Option<NodeId> {
        Sim::leader(self)
    }
    fn alive(&self) -> Vec<NodeId> {
        Sim::alive(self)
    }
    fn election_us(&self) -> u64 {
        self.opts.election_ticks_min as u64 * self.timing.tick_us
    }
    fn election_ticks_min(&self) -> u32 {
        self.opts.election_ticks_min
    }
    fn crash(&mut self, id: NodeId) {
        Sim::crash(self, id)
    }
    fn restart_after(&mut self, id: NodeId, delay_us: u64) {
        Sim::restart_after(self, id, delay_us)
    }
    fn pause(&mut self, id: NodeId, duration_us: u64) {
        Sim::pause(self, id, duration_us)
    }
    fn destroy(&mut self, id: NodeId) {
        Sim::destroy(self, id)
    }
    fn set_clock_rate(&mut self, id: NodeId, rate: f64) {
        Sim::set_clock_rate(self, id, rate)
    }
    fn clock_jump(&mut self, id: NodeId, ticks: u32) {
        Sim::clock_jump(self, id, ticks)
    }
}
