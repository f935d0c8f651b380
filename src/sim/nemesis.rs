//! The nemesis: random faults from the fault model (docs/REQUIREMENTS.md),
//! chosen by the run's seed.
//!
//! What it does: at random intervals it changes the network (loss,
//! duplication, delay, clean and partial partitions, one-way links,
//! message-type-selective loss on one link, flapping links), crashes and
//! restarts servers, pauses them for longer than an election timeout,
//! destroys up to two of them for ever (sometimes both at once right after
//! a client was answered), and skews or jumps their clocks.
//!
//! What it does not do: check anything (the checkers do) or heal at the end
//! (the run's liveness phase does).

use crate::raft::MessageKind;
use crate::sim::cluster::Status;
use crate::sim::network::{Link, Network, PacketKind};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use ringlog::NodeId;

/// The nemesis's actions, in the order of `FaultConfig::weights`.
pub const ACTIONS: [&str; 10] = [
    "links",
    "partition",
    "heal",
    "crash-new-leader",
    "power-failure",
    "crash",
    "pause",
    "destroy",
    "clock",
    "links-again",
];

/// How hostile the nemesis is.
#[derive(Clone, Debug)]
pub struct FaultConfig {
    /// Relative weight of each action in `ACTIONS` (an action whose
    /// switch below is off falls back to random link faults).
    pub weights: [u32; 10],
    /// Mean simulated time between two nemesis actions.
    pub interval_us_mean: u64,
    /// Highest random loss probability put on a link.
    pub loss_max: f64,
    pub duplicate_max: f64,
    pub delay_us_max: u64,
    pub partitions: bool,
    pub crashes: bool,
    pub pauses: bool,
    /// Destroy up to this many servers for ever (0 to 2).
    pub destroy_max: usize,
    pub clocks: bool,
}

impl FaultConfig {
    /// No faults at all.
    pub fn calm() -> FaultConfig {
        FaultConfig {
            weights: FaultConfig::WEIGHTS_DEFAULT,
            interval_us_mean: u64::MAX / 4,
            loss_max: 0.0,
            duplicate_max: 0.0,
            delay_us_max: Link::DELAY_US_MAX,
            partitions: false,
            crashes: false,
            pauses: false,
            destroy_max: 0,
            clocks: false,
        }
    }

    /// The fixed mix: link faults 24%, partitions 25%, heal 15%, the
    /// crashes 15%, pauses 7%, destruction 4%, clocks 10%.
    pub const WEIGHTS_DEFAULT: [u32; 10] = [20, 25, 15, 5, 3, 7, 7, 4, 10, 4];

    pub fn level(name: &str) -> Option<FaultConfig> {
        let mut f = FaultConfig {
            weights: FaultConfig::WEIGHTS_DEFAULT,
            interval_us_mean: 400_000,
            loss_max: 0.3,
            duplicate_max: 0.1,
            delay_us_max: 40_000,
            partitions: true,
            crashes: true,
            pauses: true,
            destroy_max: 2,
            clocks: true,
        };
        match name {
            "calm" => return Some(FaultConfig::calm()),
            "low" => {
                f.interval_us_mean = 1_500_000;
                f.loss_max = 0.1;
                f.delay_us_max = 10_000;
            }
            "medium" => {}
            "high" => {
                f.interval_us_mean = 150_000;
                f.loss_max = 0.5;
                f.duplicate_max = 0.3;
                f.delay_us_max = 150_000;
            }
            _ => return None,
        }
        Some(f)
    }
}

/// What the nemesis needs from a simulated cluster: its clock, its
/// randomness, its network, and the fault primitives. Both the consensus
/// simulator (`Sim`) and the replica simulator (`ReplicaSim`) provide it.
pub trait FaultTarget {
    fn rng(&mut self) -> &mut ChaCha8Rng;
    /// The run's recorder of recent events.
    fn trace(&mut self) -> &mut crate::sim::trace::Trace;
    fn now_us(&self) -> u64;
    fn net(&mut self) -> &mut Network;
    fn net_ref(&self) -> &Network;
    fn ids(&self) -> Vec<NodeId>;
    fn status(&self, id: NodeId) -> Status;
    /// The running server that leads the highest term, if any.
    fn leader(&self) -> Option<NodeId>;
    /// Servers not destroyed.
    fn alive(&self) -> Vec<NodeId>;
    /// Simulated microseconds of one minimum election timeout.
    fn election_us(&self) -> u64;
    fn election_ticks_min(&self) -> u32;
    fn crash(&mut self, id: NodeId);
    fn restart_after(&mut self, id: NodeId, delay_us: u64);
    fn pause(&mut self, id: NodeId, duration_us: u64);
    fn destroy(&mut self, id: NodeId);
    fn set_clock_rate(&mut self, id: NodeId, rate: f64);
    fn clock_jump(&mut self, id: NodeId, ticks: u32);
}

/// A link that toggles between blocked and open.
#[derive(Clone, Debug)]
pub struct Flap {
    pub from: NodeId,
    pub to: NodeId,
    pub period_us: u64,
    pub toggles_left: u32,
}

pub struct Nemesis {
    pub cfg: FaultConfig,
    pub flaps: Vec<Flap>,
    /// Destroy this many servers right after the next acknowledgement.
    pub destroy_on_ack: Option<usize>,
    /// Crash the next leader a few milliseconds after it is elected.
    pub crash_on_election: Option<()>,
    pub log: Vec<String>,
}

impl Nemesis {
    pub fn new(cfg: FaultConfig) -> Nemesis {
        Nemesis {
            cfg,
            flaps: Vec::new(),
            destroy_on_ack: None,
            crash_on_election: None,
            log: Vec::new(),
        }
    }

    fn note(&mut self, sim: &mut impl FaultTarget, what: String) {
        const LOG_LINES_MAX: usize = 400;
        let now = sim.now_us();
        if sim.trace().on() {
            sim.trace().record(now, None, "nemesis", || what.clone());
        }
        if self.log.len() < LOG_LINES_MAX {
            self.log.push(format!("{now:>10}us {what}"));
        }
    }

    pub fn destroyed(sim: &impl FaultTarget) -> usize {
        sim.ids()
            .into_iter()
            .filter(|&n| sim.status(n) == Status::Destroyed)
            .count()
    }

    /// Picks and applies one action.
    pub fn act(&mut self, sim: &mut impl FaultTarget) {
        let total: u32 = self.cfg.weights.iter().sum();
        if total == 0 {
            return self.randomize_links(sim);
        }
        let mut choice = sim.rng().gen_range(0..total);
        let mut action = 0;
        while choice >= self.cfg.weights[action] {
            choice -= self.cfg.weights[action];
            action += 1;
        }
        self.act_on(sim, action);
    }

    /// Applies action number `action` of `ACTIONS`.
    fn act_on(&mut self, sim: &mut impl FaultTarget, action: usize) {
        let election_us = sim.election_us();
        match action {
            1 if self.cfg.partitions => self.partition(sim),
            2 => {
                sim.net().heal_all();
                self.flaps.clear();
                self.note(sim, "heal all links".into());
            }
            3 if self.cfg.crashes => {
                self.crash_on_election = Some(());
                self.note(sim, "crash the next leader right after its election".into());
            }
            4 if self.cfg.crashes => self.power_failure(sim),
            5 if self.cfg.crashes => {
                let target = self.pick_target(sim, &[Status::Up, Status::Paused]);
                if let Some(n) = target {
                    sim.crash(n);
                    let delay = sim.rng().gen_range(0..4 * election_us);
                    sim.restart_after(n, delay);
                    self.note(sim, format!("crash {n}, restart in {delay}us"));
                }
            }
            6 if self.cfg.pauses => {
                if let Some(n) = self.pick_target(sim, &[Status::Up]) {
                    let duration = sim.rng().gen_range(election_us * 3 / 2..election_us * 5);
                    sim.pause(n, duration);
                    self.note(sim, format!("pause {n} for {duration}us"));
                }
            }
            7 if self.destroy_room(sim) > 0 => {
                let room = self.destroy_room(sim);
                let count = sim.rng().gen_range(1..=room);
                if sim.rng().gen_bool(0.5) {
                    self.destroy_on_ack = Some(count);
                    self.note(
                        sim,
                        format!("destroy {count} right after the next acknowledgement"),
                    );
                } else {
                    self.destroy_now(sim, count);
                }
            }
            8 if self.cfg.clocks => {
                let n = *sim.ids().choose(sim.rng()).expect("servers");
                if sim.rng().gen_bool(0.5) {
                    let rate = sim.rng().gen_range(0.5..1.5);
                    sim.set_clock_rate(n, rate);
                    self.note(sim, format!("clock of {n} runs at {rate:.2}x"));
                } else {
                    let max = 3 * sim.election_ticks_min();
                    let ticks = sim.rng().gen_range(5..max);
                    sim.clock_jump(n, ticks);
                    self.note(sim, format!("clock of {n} jumps {ticks} ticks"));
                }
            }
            _ => self.randomize_links(sim),
        }
    }

    /// A power failure: several servers crash at the same instant and lose
    /// whatever they had not synced.
    fn power_failure(&mut self, sim: &mut impl FaultTarget) {
        let election_us = sim.election_us();
        let mut up: Vec<NodeId> = sim
            .ids()
            .into_iter()
            .filter(|&n| matches!(sim.status(n), Status::Up | Status::Paused))
            .collect();
        up.shuffle(sim.rng());
        let count = sim.rng().gen_range(2..=3).min(up.len());
        for &n in &up[..count] {
            sim.crash(n);
            let delay = sim.rng().gen_range(0..2 * election_us);
            sim.restart_after(n, delay);
        }
        self.note(sim, format!("power failure on {:?}", &up[..count]));
    }

    /// The leader half the time (the most interesting target), else anyone in `states`.
    fn pick_target(&self, sim: &mut impl FaultTarget, states: &[Status]) -> Option<NodeId> {
        if let Some(leader) = sim.leader() {
            if sim.rng().gen_bool(0.5) && states.contains(&sim.status(leader)) {
                return Some(leader);
            }
        }
        let candidates: Vec<NodeId> = sim
            .ids()
            .into_iter()
            .filter(|&n| states.contains(&sim.status(n)))
            .collect();
        candidates.choose(sim.rng()).copied()
    }

    /// How many more servers may be destroyed, counting a pending
    /// destroy-on-acknowledgement.
    fn destroy_room(&self, sim: &impl FaultTarget) -> usize {
        let planned = Nemesis::destroyed(sim) + self.destroy_on_ack.unwrap_or(0);
        self.cfg.destroy_max.saturating_sub(planned)
    }

    /// Destroys `count` servers at the same instant (the leader among them
    /// half the time), never more than `destroy_max` in all.
    pub fn destroy_now(&mut self, sim: &mut impl FaultTarget, count: usize) {
        let count = count.min(self.cfg.destroy_max.saturating_sub(Nemesis::destroyed(sim)));
        let mut alive = sim.alive();
        alive.shuffle(sim.rng());
        if let Some(leader) = sim.leader() {
            if sim.rng().gen_bool(0.5) {
                alive.retain(|&n| n != leader);
                alive.insert(0, leader);
            }
        }
        let victims: Vec<NodeId> = alive.into_iter().take(count).collect();
        for &n in &victims {
            sim.destroy(n);
        }
        self.note(sim, format!("destroy {victims:?}"));
    }

    fn randomize_links(&mut self, sim: &mut impl FaultTarget) {
        let ids = sim.ids();
        let mut changed = 0;
        for &a in &ids {
            for &b in &ids {
                if a == b || !sim.rng().gen_bool(0.3) {
                    continue;
                }
                changed += 1;
                let loss = sim.rng().gen_range(0.0..=self.cfg.loss_max);
                let duplicate = if sim.rng().gen_bool(0.3) {
                    sim.rng().gen_range(0.0..=self.cfg.duplicate_max)
                } else {
                    0.0
                };
                let delay_us_max = if sim.rng().gen_bool(0.3) {
                    sim.rng().gen_range(
                        Link::DELAY_US_MAX..=self.cfg.delay_us_max.max(Link::DELAY_US_MAX),
                    )
                } else {
                    Link::DELAY_US_MAX
                };
                let link = sim.net().link_mut(a, b);
                link.loss = loss;
                link.duplicate = duplicate;
                link.delay_us_max = delay_us_max;
            }
        }
        self.note(
            sim,
            format!("random loss/duplication/delay on {changed} links"),
        );
    }

    fn partition(&mut self, sim: &mut impl FaultTarget) {
        let mut ids = sim.ids();
        ids.shuffle(sim.rng());
        let leader = sim.leader();
        let pattern = sim.rng().gen_range(0..10u32);
        let what = match pattern {
            0 => {
                let k = sim.rng().gen_range(1..=ids.len() / 2);
                let (minority, majority) = ids.split_at(k);
                sim.net().partition(&[minority.to_vec(), majority.to_vec()]);
                format!("partition {minority:?} | {majority:?}")
            }
            1 => {
                let (a, b) = (ids[0], ids[1]);
                sim.net().link_mut(a, b).blocked = true;
                format!("one-way: {a} -> {b} blocked")
            }
            2 => {
                // Majorities ring: each server reaches only its two ring
                // neighbours; every server sees a majority, none sees all.
                sim.net().partition(&[]);
                let n = ids.len();
                for i in 0..n {
                    sim.net().set_blocked_both(ids[i], ids[(i + 1) % n], false);
                }
                format!("majorities ring {ids:?}")
            }
            3 if ids.len() >= 5 => {
                // Bridge: two halves joined only through one server.
                let (bridge, left, right) = (ids[0], vec![ids[1], ids[2]], ids[3..].to_vec());
                let mut l = left.clone();
                l.push(bridge);
                let mut r = right.clone();
                r.push(bridge);
                sim.net().partition(&[l]);
                for &a in &r {
                    for &b in &r {
                        if a != b {
                            sim.net().link_mut(a, b).blocked = false;
                        }
                    }
                }
                format!("bridge {bridge} between {left:?} and {right:?}")
            }
            4 => {
                let n = leader.unwrap_or(ids[0]);
                let rest: Vec<NodeId> = ids.iter().copied().filter(|&x| x != n).collect();
                sim.net().partition(&[vec![n], rest]);
                format!("isolate {n}")
            }
            5 => {
                let n = ids[0];
                let peer = ids[1];
                let rest: Vec<NodeId> = ids.iter().copied().filter(|&x| x != n).collect();
                sim.net().partition(&[rest]);
                sim.net().set_blocked_both(n, peer, false);
                format!("{n} reaches only {peer}")
            }
            6 => {
                let n = leader.unwrap_or(ids[0]);
                let send_only = sim.rng().gen_bool(0.5);
                for &p in ids.iter().filter(|&&p| p != n) {
                    if send_only {
                        sim.net().link_mut(p, n).blocked = true;
                    } else {
                        sim.net().link_mut(n, p).blocked = true;
                    }
                }
                if send_only {
                    format!("{n} can send but not receive")
                } else {
                    format!("{n} can receive but not send")
                }
            }
            7 => {
                let kinds = [
                    MessageKind::AppendResponse,
                    MessageKind::Heartbeat,
                    MessageKind::HeartbeatResponse,
                    MessageKind::Append,
                    MessageKind::Vote,
                    MessageKind::PreVote,
                    MessageKind::VoteResponse,
                    MessageKind::PreVoteResponse,
                ];
                let kind = *kinds.choose(sim.rng()).expect("kinds");
                let (a, b) = (leader.unwrap_or(ids[0]), ids[1]);
                let (a, b) = if a == b {
                    (ids[0], ids[2 % ids.len()])
                } else {
                    (a, b)
                };
                sim.net()
                    .link_mut(a, b)
                    .drop_kinds
                    .push(PacketKind::Raft(kind));
                format!("link {a} -> {b} drops every {kind:?}")
            }
            8 if ids.len() >= 5 => {
                // A 1-2-3 clique; 4 reaches only 2; 5 reaches only 3.
                let (c, d, e) = ([ids[0], ids[1], ids[2]], ids[3], ids[4]);
                sim.net().partition(&[c.to_vec()]);
                sim.net().set_blocked_both(d, c[1], false);
                sim.net().set_blocked_both(e, c[2], false);
                format!(
                    "clique {c:?}, {d} reaches only {}, {e} reaches only {}",
                    c[1], c[2]
                )
            }
            _ => {
                let (from, to) = (ids[0], ids[1]);
                let period_us = sim.rng().gen_range(5_000..200_000);
                let toggles_left = sim.rng().gen_range(4..40);
                self.flaps.push(Flap {
                    from,
                    to,
                    period_us,
                    toggles_left,
                });
                format!("link {from} <-> {to} flaps every {period_us}us")
            }
        };
        self.note(sim, what);
    }

    /// Toggles every flapping link once; returns the delay to the next toggle.
    pub fn flap(&mut self, sim: &mut impl FaultTarget) -> Option<u64> {
        let mut next = None;
        for flap in &mut self.flaps {
            if flap.toggles_left == 0 {
                continue;
            }
            flap.toggles_left -= 1;
            let blocked = !sim.net_ref().link(flap.from, flap.to).blocked;
            sim.net().set_blocked_both(flap.from, flap.to, blocked);
            next = Some(next.map_or(flap.period_us, |n: u64| n.min(flap.period_us)));
        }
        self.flaps.retain(|f| f.toggles_left > 0);
        next
    }
}
