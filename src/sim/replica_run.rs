//! One seed of the replica simulator: a safety phase under random faults
//! with clients running the ledger, a liveness phase that heals a random
//! connected core of three or more servers and requires a new command to be
//! answered within a bound, and a convergence phase after which every
//! surviving server must hold the same committed tree and the client
//! history must pass every check (`history`). Each seed runs with the
//! fixed configuration or its swarm draw (`swarm.rs`); a panic anywhere in
//! the run is caught with the simulator's state intact (`trace.rs`).

use crate::raft::Options;
use crate::sim::checker::Violation;
use crate::sim::cluster::{Status, Timing};
use crate::sim::history::Outcome;
use crate::sim::nemesis::{FaultConfig, FaultTarget, Nemesis};
use crate::sim::network::Link;
use crate::sim::replicas::{ReplicaSim, ReplicaStats, Workload};
use crate::sim::swarm::Draw;
use crate::sim::trace::{PanicReport, Trace};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use ringlog::NodeId;

const TIMER_NEMESIS: u64 = 1;
const TIMER_FLAP: u64 = 4;

#[derive(Clone, Debug)]
pub struct ReplicaRunConfig {
    pub nodes: usize,
    pub safety_us: u64,
    pub liveness_us_max: u64,
    pub convergence_us_max: u64,
    pub faults: FaultConfig,
    pub opts: Options,
    pub timing: Timing,
    pub workload: Workload,
    /// Explain failures (see `RunConfig::trace`).
    pub trace: bool,
    pub trace_events: usize,
    /// Swarm testing: each seed draws its configuration, workload and
    /// fault mix (`swarm.rs`).
    pub swarm: bool,
    /// Test only: server `.0`'s log panics when an append reaches entry `.1`.
    pub inject_panic: Option<(NodeId, u64)>,
}

impl Default for ReplicaRunConfig {
    fn default() -> ReplicaRunConfig {
        ReplicaRunConfig {
            nodes: 5,
            safety_us: 5_000_000,
            liveness_us_max: 10_000_000,
            convergence_us_max: 20_000_000,
            faults: FaultConfig::level("medium").expect("level"),
            opts: Options::default(),
            timing: Timing::default(),
            workload: Workload::default(),
            trace: false,
            trace_events: crate::sim::trace::EVENTS_DEFAULT,
            swarm: false,
            inject_panic: None,
        }
    }
}

impl ReplicaRunConfig {
    /// What `seed` runs with: the fixed configuration, or its swarm draw.
    pub fn draw(&self, seed: u64) -> Draw {
        let fixed = Draw::fixed(
            self.nodes,
            &self.opts,
            &self.timing,
            &self.faults,
            &self.workload,
        );
        if self.swarm {
            Draw::replica(seed, fixed)
        } else {
            fixed
        }
    }
}

#[derive(Clone, Debug)]
pub struct ReplicaRunReport {
    pub seed: u64,
    pub violations: Vec<Violation>,
    pub stats: ReplicaStats,
    pub recovery_us: Option<u64>,
    pub core: Vec<NodeId>,
    pub sim_us: u64,
    /// Commands answered per simulated second during the safety phase.
    pub answered_per_s: f64,
    /// With `trace`: the explanation of the seed (see `RunReport::trace`).
    pub trace: Vec<String>,
    /// The configuration the seed ran with, in one line.
    pub config: String,
    pub panic: Option<PanicReport>,
}

impl ReplicaRunReport {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Runs one seed; a panic is reported as a violation at the simulated time
/// and on the server where it happened, with its backtrace and the events
/// that led to it.
pub fn run_replica_seed(seed: u64, cfg: &ReplicaRunConfig) -> ReplicaRunReport {
    let draw = cfg.draw(seed);
    let mut d = Driver::new(seed, cfg, &draw);
    let outcome = crate::sim::trace::catch(|| d.phases(cfg));
    let (recovery_us, core, panic) = match outcome {
        Ok((recovery_us, core)) => (recovery_us, core, None),
        Err(panic) => {
            d.sim
                .checker
                .fail(format!("panic: {} (at {})", panic.message, panic.location));
            (None, Vec::new(), Some(panic))
        }
    };
    let config = format!("{} | {}", draw.describe(), draw.describe_replica());
    let trace = if cfg.trace {
        crate::sim::trace::explain(&config, &d.nemesis.log, &d.sim.trace, panic.as_ref())
    } else {
        Vec::new()
    };
    ReplicaRunReport {
        seed,
        violations: d.sim.checker.violations.clone(),
        stats: d.sim.stats.clone(),
        recovery_us,
        core,
        sim_us: d.sim.now_us,
        answered_per_s: d.answered_per_s,
        trace,
        config,
        panic,
    }
}

struct Driver {
    sim: ReplicaSim,
    nemesis: Nemesis,
    nemesis_on: bool,
    flap_armed: bool,
    interval_us_mean: u64,
    /// The liveness bound for this seed's election timeout.
    liveness_us_max: u64,
    answered_per_s: f64,
}

impl Driver {
    fn run(&mut self, deadline_us: u64, mut done: impl FnMut(&ReplicaSim) -> bool) -> bool {
        let mut answered = self.sim.stats.writes_acked;
        while self.sim.now_us < deadline_us {
            if done(&self.sim) {
                return true;
            }
            if !self.sim.step() {
                break;
            }
            for timer in self.sim.take_fired() {
                self.on_timer(timer);
            }
            if self.sim.stats.writes_acked > answered {
                answered = self.sim.stats.writes_acked;
                if let Some(count) = self.nemesis.destroy_on_ack.take() {
                    self.nemesis.destroy_now(&mut self.sim, count);
                }
            }
        }
        done(&self.sim)
    }

    fn on_timer(&mut self, timer: u64) {
        match timer {
            TIMER_NEMESIS if self.nemesis_on => {
                self.nemesis.act(&mut self.sim);
                // Crash-on-election is driven by the consensus simulator's
                // driver; here a new leader is crashed at the next action.
                if self.nemesis.crash_on_election.take().is_some() {
                    if let Some(leader) = self.sim.leader() {
                        self.sim.crash(leader);
                        let delay = self.sim.rng.gen_range(0..4 * self.sim.election_us());
                        self.sim.restart_after(leader, delay);
                    }
                }
                if !self.nemesis.flaps.is_empty() && !self.flap_armed {
                    self.flap_armed = true;
                    self.sim.set_timer(1, TIMER_FLAP);
                }
                let u: f64 = self.sim.rng.gen_range(f64::EPSILON..1.0);
                let delay = ((-u.ln()) * self.interval_us_mean as f64).min(1e15) as u64 + 1;
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
            _ => {}
        }
    }
}

impl Driver {
    fn new(seed: u64, cfg: &ReplicaRunConfig, draw: &Draw) -> Driver {
        let trace = if cfg.trace {
            Trace::new(cfg.trace_events)
        } else {
            Trace::off()
        };
        let mut sim = ReplicaSim::build(
            seed,
            cfg.nodes,
            draw.opts.clone(),
            draw.timing.clone(),
            draw.workload.clone(),
            &draw.shape,
            trace,
        );
        for (id, &rate) in sim.ids().into_iter().zip(&draw.clock_rates) {
            if rate != 1.0 {
                sim.set_clock_rate(id, rate);
            }
        }
        if let Some((id, index)) = cfg.inject_panic {
            sim.inject_panic_at(id, index);
        }
        sim.set_timer(1, TIMER_NEMESIS);
        sim.start_clients();
        let liveness_us_max = cfg.liveness_us_max * draw.opts.election_ticks_min as u64
            / cfg.opts.election_ticks_min.max(1) as u64;
        Driver {
            sim,
            nemesis: Nemesis::new(draw.faults.clone()),
            nemesis_on: true,
            flap_armed: false,
            interval_us_mean: draw.faults.interval_us_mean,
            liveness_us_max: liveness_us_max.max(cfg.liveness_us_max),
            answered_per_s: 0.0,
        }
    }

    /// The phases and the end-of-run checks; returns the recovery time and
    /// the healed core.
    fn phases(&mut self, cfg: &ReplicaRunConfig) -> (Option<u64>, Vec<NodeId>) {
        self.run(cfg.safety_us, |_| false);
        self.answered_per_s = self.sim.stats.answered as f64 / (cfg.safety_us as f64 / 1e6);
        let (recovery_us, core) = self.liveness(cfg);
        self.converge(cfg);
        self.sim.check_trees_identical();
        for v in self.sim.history.check() {
            self.sim.checker.fail(v);
        }
        (recovery_us, core)
    }

    /// Heals a random core of 3+ live servers; a write issued after the
    /// heal must be answered within the bound.
    fn liveness(&mut self, cfg: &ReplicaRunConfig) -> (Option<u64>, Vec<NodeId>) {
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
        self.sim.client_targets = core.clone();
        let heal_us = self.sim.now_us;
        let answered_write_after_heal = move |sim: &ReplicaSim| {
            sim.history.operations.iter().any(|op| {
                op.invoked_us >= heal_us
                    && op.command.writes()
                    && matches!(op.outcome, Some(Outcome::Ok { status: 0, .. }))
            })
        };
        let deadline = heal_us + self.liveness_us_max;
        let mut live = false;
        while self.sim.now_us < deadline && !live {
            let step_end = (self.sim.now_us + 10 * cfg.timing.tick_us).min(deadline);
            live = self.run(step_end, answered_write_after_heal);
            self.describe_state(cfg, "");
        }
        if !live {
            self.sim.checker.fail(format!(
                "liveness: no command issued after healing core {core:?} was answered within {}us",
                self.liveness_us_max
            ));
            return (None, core);
        }
        let recovery_us = self
            .sim
            .history
            .operations
            .iter()
            .filter(|op| op.invoked_us >= heal_us && op.command.writes())
            .filter(|op| matches!(op.outcome, Some(Outcome::Ok { status: 0, .. })))
            .filter_map(|op| op.completed_us)
            .min()
            .map(|t| t - heal_us);
        (recovery_us, core)
    }

    /// Heals everything, stops the clients once their commands are
    /// answered, and lets every survivor catch up.
    fn converge(&mut self, cfg: &ReplicaRunConfig) {
        self.sim.net.heal_all();
        self.sim.client_targets = self.sim.alive();
        for n in self.sim.alive() {
            match self.sim.status(n) {
                Status::Crashed => self.sim.restart(n),
                Status::Paused => self.sim.resume(n),
                _ => {}
            }
        }
        self.phase_note("convergence phase: everything healed, clients draining".into());
        // Clients stop starting commands (under full load they were rarely
        // all idle at one instant, and this phase then ran its whole bound).
        self.sim.clients_draining = true;
        let deadline = self.sim.now_us + cfg.convergence_us_max / 2;
        self.run(deadline, |sim| {
            sim.clients.iter().all(|c| c.current.is_none())
        });
        self.sim.clients_on = false;
        let deadline = self.sim.now_us + cfg.convergence_us_max / 2;
        let caught_up = |sim: &ReplicaSim| {
            let alive = sim.alive();
            let target = sim.history.commit_index;
            let first = sim.applied(alive[0]);
            first.is_some_and(|f| f >= target) && alive.iter().all(|&n| sim.applied(n) == first)
        };
        let mut converged = false;
        while self.sim.now_us < deadline && !converged {
            let step_end = (self.sim.now_us + 100 * cfg.timing.tick_us).min(deadline);
            converged = self.run(step_end, caught_up);
            self.describe_state(cfg, "converging ");
        }
        if !converged {
            let applied: Vec<_> = self
                .sim
                .alive()
                .iter()
                .map(|&n| (n, self.sim.applied(n)))
                .collect();
            self.sim.checker.fail(format!(
                "convergence: survivors did not catch up: {applied:?}"
            ));
        }
    }

    /// With tracing, every server's state into the nemesis log.
    fn describe_state(&mut self, cfg: &ReplicaRunConfig, what: &str) {
        if cfg.trace {
            let state = self.sim.describe();
            self.nemesis
                .log
                .push(format!("{:>10}us {what}{state}", self.sim.now_us));
        }
    }

    /// A line in the nemesis log and the trace.
    fn phase_note(&mut self, what: String) {
        let now = self.sim.now_us;
        self.nemesis.log.push(format!("{now:>10}us {what}"));
        self.sim.trace.record(now, None, "phase", || what);
    }
}

fn pick_core(sim: &mut ReplicaSim) -> Vec<NodeId> {
    let mut alive = sim.alive();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(sim.rng.gen());
    alive.shuffle(&mut rng);
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
    let size = rng.gen_range(quorum..=alive.len());
    let mut core: Vec<NodeId> = alive.into_iter().take(size).collect();
    core.sort_unstable();
    core
}
