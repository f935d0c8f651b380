//! One simulated run: a safety phase under random faults, a liveness phase
//! that heals a random connected core of three or more live servers and
//! requires progress within a bound, and a convergence phase that heals
//! everything and checks that every acknowledged proposal reached every
//! surviving server. Each seed runs with the fixed configuration or its
//! swarm draw (`swarm.rs`); a panic anywhere in the run is caught with
//! the simulator's state intact, so the report says when, on which server
//! and after which events it happened (`trace.rs`).

use crate::raft::Options;
use crate::sim::checker::Violation;
use crate::sim::cluster::{Sim, Stats, Status, Timing};
use crate::sim::nemesis::{FaultConfig, Nemesis};
use crate::sim::network::Link;
use crate::sim::swarm::Draw;
use crate::sim::trace::{PanicReport, Trace};
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
    /// acknowledged within this long (scaled by the drawn election timeout
    /// under swarm testing).
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
    /// Explain failures: keep the nemesis log, the configuration and the
    /// last `trace_events` events of every layer in the report.
    pub trace: bool,
    pub trace_events: usize,
    /// Swarm testing (`swarm.rs`): each seed draws its own configuration
    /// and fault mix, so that different seeds explore different shapes of
    /// the same protocol.
    pub swarm: bool,
    /// Test only: server `.0`'s log panics when an append reaches entry
    /// `.1` (shows how a panic in a server is reported).
    pub inject_panic: Option<(NodeId, u64)>,
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
            trace_events: crate::sim::trace::EVENTS_DEFAULT,
            swarm: true,
            inject_panic: None,
        }
    }
}

impl RunConfig {
    /// What `seed` runs with: the fixed configuration, or its swarm draw.
    pub fn draw(&self, seed: u64) -> Draw {
        let fixed = Draw::fixed(
            self.nodes,
            &self.opts,
            &self.timing,
            &self.faults,
            &crate::sim::replicas::Workload::default(),
        );
        if self.swarm {
            Draw::consensus(seed, fixed)
        } else {
            fixed
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
    /// With `trace`: the configuration, the nemesis log, the last events
    /// and the panic's backtrace, ready to print.
    pub trace: Vec<String>,
    /// The configuration the seed ran with, in one line.
    pub config: String,
    pub panic: Option<PanicReport>,
}

impl RunReport {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Runs one seed; a panic inside the core or the simulator is reported as a
/// violation of that seed, at the simulated time and on the server where it
/// happened, with its backtrace and the events that led to it.
pub fn run_seed(seed: u64, cfg: &RunConfig) -> RunReport {
    let draw = cfg.draw(seed);
    let mut d = Driver::new(seed, cfg, &draw);
    let outcome = crate::sim::trace::catch(|| d.phases());
    let (recovery_us, core, panic) = match outcome {
        Ok((recovery_us, core)) => (recovery_us, core, None),
        Err(panic) => {
            d.sim
                .checker
                .fail(format!("panic: {} (at {})", panic.message, panic.location));
            (None, Vec::new(), Some(panic))
        }
    };
    let config = draw.describe();
    let trace = if cfg.trace {
        crate::sim::trace::explain(&config, &d.nemesis.log, &d.sim.trace, panic.as_ref())
    } else {
        Vec::new()
    };
    RunReport {
        seed,
        violations: d.sim.checker.violations.clone(),
        stats: d.sim.stats.clone(),
        recovery_us,
        core,
        sim_us: d.sim.now_us,
        trace,
        config,
        panic,
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
    /// The liveness bound for this seed's election timeout.
    liveness_us_max: u64,
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
                    let delay = exp_delay(&mut self.sim, self.nemesis.cfg.interval_us_mean);
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

impl Driver {
    fn new(seed: u64, cfg: &RunConfig, draw: &Draw) -> Driver {
        let trace = if cfg.trace {
            Trace::new(cfg.trace_events)
        } else {
            Trace::off()
        };
        let mut sim = Sim::build(
            seed,
            cfg.nodes,
            draw.opts.clone(),
            draw.timing.clone(),
            draw.geometry,
            trace,
        );
        sim.compact_entries = draw.compact_entries;
        for (id, &rate) in sim.ids().into_iter().zip(&draw.clock_rates) {
            if rate != 1.0 {
                sim.set_clock_rate(id, rate);
            }
        }
        if let Some((id, index)) = cfg.inject_panic {
            sim.inject_panic_at(id, index);
        }
        let client_targets = sim.ids();
        sim.set_timer(1, TIMER_NEMESIS);
        sim.set_timer(1, TIMER_CLIENT);
        sim.set_timer(1, TIMER_READ);
        // The bound is in election timeouts: it scales with the drawn one.
        let liveness_us_max = cfg.liveness_us_max * draw.opts.election_ticks_min as u64
            / cfg.opts.election_ticks_min.max(1) as u64;
        Driver {
            sim,
            nemesis: Nemesis::new(draw.faults.clone()),
            cfg: cfg.clone(),
            liveness_us_max: liveness_us_max.max(cfg.liveness_us_max),
            nemesis_on: true,
            clients_on: true,
            client_targets,
            flap_armed: false,
            clients: vec![None; CLIENTS],
            acked_seen: 0,
        }
    }

    /// The three phases; returns the recovery time and the healed core.
    fn phases(&mut self) -> (Option<u64>, Vec<NodeId>) {
        // Safety phase: random faults.
        self.run(self.cfg.safety_us, |_| false);
        let (recovery_us, core) = self.liveness();
        self.converge();
        self.sim.check_acked();
        (recovery_us, core)
    }

    /// Heals a random connected core of 3+ live servers; a proposal made
    /// after the heal must be acknowledged within the bound.
    fn liveness(&mut self) -> (Option<u64>, Vec<NodeId>) {
        self.nemesis_on = false;
        self.nemesis.destroy_on_ack = None;
        let core = pick_core(&mut self.sim);
        for &n in &core {
            match self.sim.status(n) {
                Status::Crashed => self.sim.restart(n),
                Status::Paused => self.sim.resume(n),
                _ => {}
            }
            for &m in &core {
                if n != m {
                    *self.sim.net.link_mut(n, m) = Link::healthy();
                }
            }
        }
        self.phase_note(format!("liveness phase: core {core:?}"));
        self.client_targets = core.clone();
        // Clients waiting on answers from before the heal retry at once.
        self.clients.iter_mut().for_each(|c| *c = None);
        let heal_us = self.sim.now_us;
        let deadline = heal_us + self.liveness_us_max;
        if self.cfg.trace {
            let links = self.sim.describe_links();
            self.nemesis.log.push(format!("links: {links}"));
        }
        let mut live = false;
        while self.sim.now_us < deadline && !live {
            let step_end = (self.sim.now_us + 10 * self.cfg.timing.tick_us).min(deadline);
            live = self.run(step_end, |sim| {
                sim.acked().iter().any(|a| a.created_us >= heal_us)
            });
            if self.cfg.trace {
                let state = self.sim.describe();
                self.nemesis
                    .log
                    .push(format!("{:>10}us {state}", self.sim.now_us));
            }
        }
        if !live {
            self.sim.checker.fail(format!(
                "liveness: no proposal made after healing core {core:?} was acknowledged within {}us",
                self.liveness_us_max
            ));
            return (None, core);
        }
        let recovery_us = self
            .sim
            .acked()
            .iter()
            .filter(|a| a.created_us >= heal_us)
            .map(|a| a.acked_us - heal_us)
            .min();
        (recovery_us, core)
    }

    /// Heals everything; every survivor must catch up.
    fn converge(&mut self) {
        self.clients_on = false;
        self.sim.net.heal_all();
        for n in self.sim.alive() {
            match self.sim.status(n) {
                Status::Crashed => self.sim.restart(n),
                Status::Paused => self.sim.resume(n),
                _ => {}
            }
        }
        self.phase_note("convergence phase: everything healed".into());
        let target = self.sim.acked_max_index();
        let deadline = self.sim.now_us + self.cfg.convergence_us_max;
        let converged = self.run(deadline, |sim| {
            let alive = sim.alive();
            let first = sim.applied(alive[0]);
            first.index >= target && alive.iter().all(|&n| sim.applied(n) == first)
        });
        if !converged {
            let applied: Vec<_> = self
                .sim
                .alive()
                .iter()
                .map(|&n| (n, self.sim.applied(n).index))
                .collect();
            self.sim.checker.fail(format!(
                "convergence: survivors did not catch up within the bound: {applied:?}"
            ));
        }
    }

    /// A line in the nemesis log and the trace.
    fn phase_note(&mut self, what: String) {
        let now = self.sim.now_us;
        self.nemesis.log.push(format!("{now:>10}us {what}"));
        self.sim.trace.record(now, None, "phase", || what);
    }
}

/// A random set of 3 or more servers that are not destroyed.
fn pick_core(sim: &mut Sim) -> Vec<NodeId> {
    let mut alive = sim.alive();
    alive.shuffle(&mut sim.rng);
    let quorum = sim.ids().len() / 2 + 1;
    if alive.len() < quorum {
        // The nemesis destroys a minority at most: servers that could not
        // restart (already a violation) took the rest.
        sim.checker.fail(format!(
            "only {} servers left for the liveness phase: no quorum",
            alive.len()
        ));
        alive.sort_unstable();
        return alive;
    }
    let size = sim.rng.gen_range(quorum..=alive.len());
    let mut core: Vec<NodeId> = alive.into_iter().take(size).collect();
    core.sort_unstable();
    core
}
