//! One simulated run: a safety phase under random faults, a liveness phase
//! that heals a random connected core of three or more live servers and
//! requires progress within a bound, and a convergence phase that heals
//! everything and checks that every acknowledged proposal reached every
//! surviving server.

use crate::raft::Options;
use crate::sim::checker::Violation;
use crate::sim::cluster::{Sim, Stats, Status, Timing};
use crate::sim::nemesis::{FaultConfig, Nemesis};
use crate::sim::network::Link;
use rand::seq::SliceRandom;
use rand::Rng;
use ringlog::{LogId, NodeId};

const TIMER_NEMESIS: u64 = 1;
const TIMER_CLIENT: u64 = 2;
const TIMER_READ: u64 = 3;
const TIMER_FLAP: u64 = 4;
const TIMER_CRASH_LEADER: u64 = 5;

#[derive(Clone, Debug)]
pub struct RunConfig {
    pub nodes: usize,
    /// Simulated duration of the safety phase.
    pub safety_us: u64,
    /// Bound on the liveness phase: a proposal made after the heal must be
    /// acknowledged within this long.
    pub liveness_us_max: u64,
    /// Bound on the convergence phase.
    pub convergence_us_max: u64,
    pub faults: FaultConfig,
    /// Mean time between two turns of the (closed-loop) clients.
    pub client_us_mean: u64,
    /// Mean time between client reads.
    pub read_us_mean: u64,
    pub opts: Options,
    pub timing: Timing,
    /// Keep the nemesis log in the report (for replaying one seed).
    pub trace: bool,
    /// Swarm testing: draw batch sizes, pipeline windows and disk latency
    /// from the seed too, so that different seeds explore different shapes
    /// of the same protocol (a batch that ends just before a new leader's
    /// barrier, a window of one, a slow disk).
    pub swarm: bool,
}

impl Default for RunConfig {
    fn default() -> RunConfig {
        RunConfig {
            nodes: 5,
            safety_us: 10_000_000,
            liveness_us_max: 10_000_000,
            convergence_us_max: 20_000_000,
            faults: FaultConfig::level("medium").expect("level"),
            client_us_mean: 1_000,
            read_us_mean: 20_000,
            opts: Options::default(),
            timing: Timing::default(),
            trace: false,
            swarm: true,
        }
    }
}

#[derive(Clone, Debug)]
pub struct RunReport {
    pub seed: u64,
    pub violations: Vec<Violation>,
    pub stats: Stats,
    /// Simulated time from the heal to the first acknowledged proposal made
    /// after it, if the liveness phase succeeded.
    pub recovery_us: Option<u64>,
    pub core: Vec<NodeId>,
    pub sim_us: u64,
    pub trace: Vec<String>,
}

impl RunReport {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Runs one seed; a panic inside the core or the simulator is reported as a
/// violation of that seed.
pub fn run_seed(seed: u64, cfg: &RunConfig) -> RunReport {
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_seed_inner(seed, cfg)));
    match result {
        Ok(report) => report,
        Err(payload) => {
            let what = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            RunReport {
                seed,
                violations: vec![Violation {
                    at_us: 0,
                    what: format!("panic: {what}"),
                }],
                stats: Stats::default(),
                recovery_us: None,
                core: Vec::new(),
                sim_us: 0,
                trace: Vec::new(),
            }
        }
    }
}

fn exp_delay(sim: &mut Sim, mean_us: u64) -> u64 {
    let u: f64 = sim.rng.gen_range(f64::EPSILON..1.0);
    ((-u.ln()) * mean_us as f64).min(1e15) as u64 + 1
}

struct Driver {
    sim: Sim,
    nemesis: Nemesis,
    cfg: RunConfig,
    nemesis_on: bool,
    clients_on: bool,
    /// Clients send to these servers (all in the safety phase).
    client_targets: Vec<NodeId>,
    flap_armed: bool,
    /// Closed-loop clients: each waits for its proposal's answer (or gives
    /// up after `CLIENT_TIMEOUT_US`) before it sends another.
    clients: Vec<Option<(LogId, u64)>>,
    acked_seen: usize,
}

/// Concurrent clients in a run.
const CLIENTS: usize = 8;
/// A client gives up on an answer after this long and sends anew.
const CLIENT_TIMEOUT_US: u64 = 300_000;

impl Driver {
    fn handle_timers(&mut self) {
        for timer in self.sim.take_fired() {
            match timer {
                TIMER_NEMESIS if self.nemesis_on => {
                    self.nemesis.act(&mut self.sim);
                    if !self.nemesis.flaps.is_empty() && !self.flap_armed {
                        self.flap_armed = true;
                        self.sim.set_timer(1, TIMER_FLAP);
                    }
                    let delay = exp_delay(&mut self.sim, self.cfg.faults.interval_us_mean);
                    self.sim.set_timer(delay, TIMER_NEMESIS);
                }
                TIMER_FLAP => {
                    self.flap_armed = false;
                    if self.nemesis_on {
                        if let Some(delay) = self.nemesis.flap(&mut self.sim) {
                            self.flap_armed = true;
                            self.sim.set_timer(delay, TIMER_FLAP);
                        }
                    }
                }
                TIMER_CRASH_LEADER if self.nemesis_on => {
                    if let Some(leader) = self.sim.leader() {
                        self.sim.crash(leader);
                        let election_us =
                            self.sim.opts.election_ticks_min as u64 * self.sim.timing.tick_us;
                        let delay = self.sim.rng.gen_range(0..4 * election_us);
                        self.sim.restart_after(leader, delay);
                        let line = format!("{:>10}us crash new leader {leader}", self.sim.now_us);
                        self.nemesis.log.push(line);
                    }
                }
                TIMER_CLIENT if self.clients_on => {
                    self.client_turn();
                    let delay = exp_delay(&mut self.sim, self.cfg.client_us_mean);
                    self.sim.set_timer(delay, TIMER_CLIENT);
                }
                TIMER_READ if self.clients_on => {
                    if let Some(&via) = self.client_targets.choose(&mut self.sim.rng) {
                        self.sim.read(via);
                    }
                    let delay = exp_delay(&mut self.sim, self.cfg.read_us_mean);
                    self.sim.set_timer(delay, TIMER_READ);
                }
                _ => {}
            }
        }
    }

    /// One random client acts: an idle client (or one that gave up) sends a
    /// new proposal through a random target.
    fn client_turn(&mut self) {
        let i = self.sim.rng.gen_range(0..self.clients.len());
        let now = self.sim.now_us;
        if let Some((_, deadline)) = self.clients[i] {
            if now < deadline {
                return;
            }
        }
        self.clients[i] = None;
        if let Some(&via) = self.client_targets.choose(&mut self.sim.rng) {
            if let Some(at) = self.sim.propose(via) {
                self.clients[i] = Some((at, now + CLIENT_TIMEOUT_US));
            }
        }
    }

    /// Frees the clients whose proposals were acknowledged since last time.
    fn note_acks(&mut self) {
        let acked = self.sim.acked();
        for a in &acked[self.acked_seen..] {
            for client in self.clients.iter_mut() {
                if client.is_some_and(|(at, _)| at == a.at) {
                    *client = None;
                }
            }
        }
        self.acked_seen = acked.len();
    }

    /// Runs until `deadline_us` or `done`; returns whether `done` held.
    fn run(&mut self, deadline_us: u64, mut done: impl FnMut(&Sim) -> bool) -> bool {
        let mut acked = self.sim.acked().len();
        let mut elections = self.sim.stats.elections;
        while self.sim.now_us < deadline_us {
            if done(&self.sim) {
                return true;
            }
            if !self.sim.step() {
                break;
            }
            self.handle_timers();
            if self.sim.stats.elections > elections {
                elections = self.sim.stats.elections;
                if self.nemesis.crash_on_election.take().is_some() {
                    // Crash the new leader a few milliseconds into its term:
                    // its barrier (and maybe more) is written locally but
                    // not yet replicated.
                    let delay = self.sim.rng.gen_range(0..5_000);
                    self.sim.set_timer(delay, TIMER_CRASH_LEADER);
                }
            }
            if self.sim.acked().len() > acked {
                acked = self.sim.acked().len();
                self.note_acks();
                if let Some(count) = self.nemesis.destroy_on_ack.take() {
                    self.nemesis.destroy_now(&mut self.sim, count);
                }
            }
        }
        done(&self.sim)
    }
}

fn swarm(seed: u64, cfg: &RunConfig) -> (crate::raft::Options, Timing) {
    use rand::SeedableRng;
    let mut opts = cfg.opts.clone();
    let mut timing = cfg.timing.clone();
    if cfg.swarm {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_5A44);
        opts.batch_entries_max = *[1, 2, 3, 8, 64, 256].choose(&mut rng).expect("sizes");
        opts.inflight_appends_max = *[1, 2, 4, 16].choose(&mut rng).expect("windows");
        timing.sync_us_max = *[500, 2_000, 20_000].choose(&mut rng).expect("latencies");
        timing.sync_us_min = timing.sync_us_min.min(timing.sync_us_max);
    }
    (opts, timing)
}

fn run_seed_inner(seed: u64, cfg: &RunConfig) -> RunReport {
    let (opts, timing) = swarm(seed, cfg);
    let mut sim = Sim::new(seed, cfg.nodes, opts, timing);
    let client_targets = sim.ids();
    sim.set_timer(1, TIMER_NEMESIS);
    sim.set_timer(1, TIMER_CLIENT);
    sim.set_timer(1, TIMER_READ);
    let mut d = Driver {
        sim,
        nemesis: Nemesis::new(cfg.faults.clone()),
        cfg: cfg.clone(),
        nemesis_on: true,
        clients_on: true,
        client_targets,
        flap_armed: false,
        clients: vec![None; CLIENTS],
        acked_seen: 0,
    };

    // Safety phase: random faults.
    d.run(cfg.safety_us, |_| false);

    // Liveness phase: heal a random connected core of 3+ live servers.
    d.nemesis_on = false;
    d.nemesis.destroy_on_ack = None;
    let core = pick_core(&mut d.sim);
    for &n in &core {
        match d.sim.status(n) {
            Status::Crashed => d.sim.restart(n),
            Status::Paused => d.sim.resume(n),
            _ => {}
        }
        for &m in &core {
            if n != m {
                *d.sim.net.link_mut(n, m) = Link::healthy();
            }
        }
    }
    d.nemesis.log.push(format!(
        "{:>10}us liveness phase: core {core:?}",
        d.sim.now_us
    ));
    d.client_targets = core.clone();
    // Clients waiting on answers from before the heal retry at once.
    d.clients.iter_mut().for_each(|c| *c = None);
    let heal_us = d.sim.now_us;
    let deadline = heal_us + cfg.liveness_us_max;
    if cfg.trace {
        let links = d.sim.describe_links();
        d.nemesis.log.push(format!("links: {links}"));
    }
    let mut live = false;
    while d.sim.now_us < deadline && !live {
        let step_end = (d.sim.now_us + 10 * cfg.timing.tick_us).min(deadline);
        live = d.run(step_end, |sim| {
            sim.acked().iter().any(|a| a.created_us >= heal_us)
        });
        if cfg.trace {
            let state = d.sim.describe();
            d.nemesis
                .log
                .push(format!("{:>10}us {state}", d.sim.now_us));
        }
    }
    let recovery_us = if live {
        d.sim
            .acked()
            .iter()
            .filter(|a| a.created_us >= heal_us)
            .map(|a| a.acked_us - heal_us)
            .min()
    } else {
        d.sim.checker.fail(format!(
            "liveness: no proposal made after healing core {core:?} was acknowledged within {}us",
            cfg.liveness_us_max
        ));
        None
    };

    // Convergence phase: heal everything; every survivor must catch up.
    d.clients_on = false;
    d.sim.net.heal_all();
    for n in d.sim.alive() {
        match d.sim.status(n) {
            Status::Crashed => d.sim.restart(n),
            Status::Paused => d.sim.resume(n),
            _ => {}
        }
    }
    let target = d.sim.acked_max_index();
    let deadline = d.sim.now_us + cfg.convergence_us_max;
    let converged = d.run(deadline, |sim| {
        let alive = sim.alive();
        let first = sim.applied(alive[0]);
        first.index >= target && alive.iter().all(|&n| sim.applied(n) == first)
    });
    if !converged {
        let applied: Vec<_> = d
            .sim
            .alive()
            .iter()
            .map(|&n| (n, d.sim.applied(n).index))
            .collect();
        d.sim.checker.fail(format!(
            "convergence: survivors did not catch up within the bound: {applied:?}"
        ));
    }
    d.sim.check_acked();

    RunReport {
        seed,
        violations: d.sim.checker.violations.clone(),
        stats: d.sim.stats.clone(),
        recovery_us,
        core,
        sim_us: d.sim.now_us,
        trace: if cfg.trace {
            d.nemesis.log.clone()
        } else {
            Vec::new()
        },
    }
}

/// A random set of 3 or more servers that are not destroyed.
fn pick_core(sim: &mut Sim) -> Vec<NodeId> {
    let mut alive = sim.alive();
    alive.shuffle(&mut sim.rng);
    let quorum = sim.ids().len() / 2 + 1;
    assert!(
        alive.len() >= quorum,
        "the nemesis destroys at most a minority"
    );
    let size = sim.rng.gen_range(quorum..=alive.len());
    let mut core: Vec<NodeId> = alive.into_iter().take(size).collect();
    core.sort_unstable();
    core
}
