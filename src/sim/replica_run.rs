//! One seed of the replica simulator: a safety phase under random faults
//! with clients running the ledger, a liveness phase that heals a random
//! connected core of three or more servers and requires a new command to be
//! answered within a bound, and a convergence phase after which every
//! surviving server must hold the same committed tree and the client
//! history must pass every check (`history`).

use crate::raft::Options;
use crate::sim::checker::Violation;
use crate::sim::cluster::{Status, Timing};
use crate::sim::history::Outcome;
use crate::sim::nemesis::{FaultConfig, FaultTarget, Nemesis};
use crate::sim::network::Link;
use crate::sim::replicas::{ReplicaSim, ReplicaStats, Workload};
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
    pub trace: bool,
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
    pub trace: Vec<String>,
}

impl ReplicaRunReport {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

pub fn run_replica_seed(seed: u64, cfg: &ReplicaRunConfig) -> ReplicaRunReport {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_inner(seed, cfg)));
    result.unwrap_or_else(|payload| {
        let what = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        ReplicaRunReport {
            seed,
            violations: vec![Violation {
                at_us: 0,
                what: format!("panic: {what}"),
            }],
            stats: ReplicaStats::default(),
            recovery_us: None,
            core: Vec::new(),
            sim_us: 0,
            answered_per_s: 0.0,
            trace: Vec::new(),
        }
    })
}

struct Driver {
    sim: ReplicaSim,
    nemesis: Nemesis,
    nemesis_on: bool,
    flap_armed: bool,
    interval_us_mean: u64,
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

fn run_inner(seed: u64, cfg: &ReplicaRunConfig) -> ReplicaRunReport {
    let mut sim = ReplicaSim::new(
        seed,
        cfg.nodes,
        cfg.opts.clone(),
        cfg.timing.clone(),
        cfg.workload.clone(),
    );
    sim.set_timer(1, TIMER_NEMESIS);
    sim.start_clients();
    let mut d = Driver {
        sim,
        nemesis: Nemesis::new(cfg.faults.clone()),
        nemesis_on: true,
        flap_armed: false,
        interval_us_mean: cfg.faults.interval_us_mean,
    };

    // Safety phase.
    d.run(cfg.safety_us, |_| false);
    let answered_per_s = d.sim.stats.answered as f64 / (cfg.safety_us as f64 / 1e6);

    // Liveness phase: heal a random core of 3+ live servers.
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
    d.sim.client_targets = core.clone();
    let heal_us = d.sim.now_us;
    let answered_write_after_heal = move |sim: &ReplicaSim| {
        sim.history.operations.iter().any(|op| {
            op.invoked_us >= heal_us
                && op.command.writes()
                && matches!(op.outcome, Some(Outcome::Ok { status: 0, .. }))
        })
    };
    let deadline = heal_us + cfg.liveness_us_max;
    let mut live = false;
    while d.sim.now_us < deadline && !live {
        let step_end = (d.sim.now_us + 10 * cfg.timing.tick_us).min(deadline);
        live = d.run(step_end, answered_write_after_heal);
        if cfg.trace {
            let state = d.sim.describe();
            d.nemesis
                .log
                .push(format!("{:>10}us {state}", d.sim.now_us));
        }
    }
    let recovery_us = if live {
        d.sim
            .history
            .operations
            .iter()
            .filter(|op| op.invoked_us >= heal_us && op.command.writes())
            .filter(|op| matches!(op.outcome, Some(Outcome::Ok { status: 0, .. })))
            .filter_map(|op| op.completed_us)
            .min()
            .map(|t| t - heal_us)
    } else {
        d.sim.checker.fail(format!(
            "liveness: no command issued after healing core {core:?} was answered within {}us",
            cfg.liveness_us_max
        ));
        None
    };

    // Convergence phase: heal everything, stop the clients once their
    // commands are answered, and let every survivor catch up.
    d.sim.net.heal_all();
    d.sim.client_targets = d.sim.alive();
    for n in d.sim.alive() {
        match d.sim.status(n) {
            Status::Crashed => d.sim.restart(n),
            Status::Paused => d.sim.resume(n),
            _ => {}
        }
    }
    // Clients stop starting commands (under full load they were rarely all
    // idle at one instant, and this phase then ran its whole bound).
    d.sim.clients_draining = true;
    let deadline = d.sim.now_us + cfg.convergence_us_max / 2;
    d.run(deadline, |sim| {
        sim.clients.iter().all(|c| c.current.is_none())
    });
    d.sim.clients_on = false;
    let deadline = d.sim.now_us + cfg.convergence_us_max / 2;
    let caught_up = |sim: &ReplicaSim| {
        let alive = sim.alive();
        let target = sim.history.commit_index;
        let first = sim.applied(alive[0]);
        first.is_some_and(|f| f >= target) && alive.iter().all(|&n| sim.applied(n) == first)
    };
    let mut converged = false;
    while d.sim.now_us < deadline && !converged {
        let step_end = (d.sim.now_us + 100 * cfg.timing.tick_us).min(deadline);
        converged = d.run(step_end, caught_up);
        if cfg.trace {
            let state = d.sim.describe();
            d.nemesis
                .log
                .push(format!("{:>10}us converging {state}", d.sim.now_us));
        }
    }
    if !converged {
        let applied: Vec<_> = d
            .sim
            .alive()
            .iter()
            .map(|&n| (n, d.sim.applied(n)))
            .collect();
        d.sim.checker.fail(format!(
            "convergence: survivors did not catch up: {applied:?}"
        ));
    }
    d.sim.check_trees_identical();
    for v in d.sim.history.check() {
        d.sim.checker.fail(v);
    }

    ReplicaRunReport {
        seed,
        violations: d.sim.checker.violations.clone(),
        stats: d.sim.stats.clone(),
        recovery_us,
        core,
        sim_us: d.sim.now_us,
        answered_per_s,
        trace: if cfg.trace {
            d.nemesis.log.clone()
        } else {
            Vec::new()
        },
    }
}

fn pick_core(sim: &mut ReplicaSim) -> Vec<NodeId> {
    let mut alive = sim.alive();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(sim.rng.gen());
    alive.shuffle(&mut rng);
    let quorum = sim.ids().len() / 2 + 1;
    assert!(
        alive.len() >= quorum,
        "the nemesis destroys at most a minority"
    );
    let size = rng.gen_range(quorum..=alive.len());
    let mut core: Vec<NodeId> = alive.into_iter().take(size).collect();
    core.sort_unstable();
    core
}
