//! bunker-sim: runs the deterministic cluster simulator over seeds. One
//! line per failing seed (with the command that replays it), a progress
//! line every few seconds on long runs, a summary line at the end (the
//! exact range of seeds that ran), and a non-zero exit status on any
//! violation.
//!
//! Seeds come as a fixed range (`--seeds A..B`, what CI and replays use) or
//! from a random start that is printed (`--seeds random:N`, or `--seeds
//! random` with `--budget-secs`, which runs until the time budget is
//! spent), so that long runs explore seeds no earlier run tried. Swarm
//! testing (each seed draws its own configuration and fault mix) is on by
//! default for random starts and off for fixed ranges; `--swarm` and
//! `--no-swarm` choose explicitly, and a replay line always says which.

use bunker::raft::Mutation;
use bunker::sim::{
    run_replica_seed, run_seed, FaultConfig, ReplicaRunConfig, RunConfig, RunReport, Violation,
};
use clap::Parser;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "bunker-sim",
    about = "Deterministic simulation of a Bunker cluster under faults",
    long_about = "Runs five servers built from Bunker's real consensus core over a simulated \
network, disk and clock, seed by seed. Each seed runs a safety phase under random faults \
(loss, duplication, delay, partitions, one-way and selective loss, crashes with torn writes, \
pauses, destroyed servers, clock skew), then a liveness phase that heals a random core of \
three or more servers and requires progress, then a convergence phase. Invariant checkers \
run after every event. A failing seed prints the command that replays it; with --trace it \
also prints its configuration, the faults, the last events of every layer before the \
failure and, for a panic, its backtrace."
)]
struct Cli {
    /// What to simulate: `consensus` (the Raft core alone, a state machine
    /// of hashes: fastest) or `replica` (whole servers: core, ringlog, delta
    /// engine and replication pipeline, running a ledger application for
    /// clients that retry, with the client history checked at the end).
    #[arg(long, default_value = "consensus", value_parser = ["consensus", "replica"])]
    layer: String,
    /// Seeds to run: A..B (B excluded), a single seed, `random:N` (N seeds
    /// from a random start, printed) or `random` (from a random start until
    /// --budget-secs runs out).
    #[arg(long, default_value = "0..100", value_parser = parse_seeds)]
    seeds: Seeds,
    /// Run until this many seconds of wall time have passed (then finish
    /// the seeds in progress), printing progress every --progress-secs.
    #[arg(long)]
    budget_secs: Option<u64>,
    /// Seconds between two progress lines (0: none).
    #[arg(long, default_value_t = 10)]
    progress_secs: u64,
    /// Swarm testing: each seed draws its own configuration and fault mix
    /// (the default for random starts).
    #[arg(long, conflicts_with = "no_swarm")]
    swarm: bool,
    /// Every seed runs the fixed configuration and fault mix (the default
    /// for fixed ranges).
    #[arg(long)]
    no_swarm: bool,
    /// Length of the safety phase, in ticks of 10 ms of simulated time.
    #[arg(long, default_value_t = 1000)]
    ticks: u64,
    /// Fault intensity: calm, low, medium or high (swarm testing draws its
    /// own mix instead).
    #[arg(long, default_value = "medium")]
    faults: String,
    /// Override the highest random loss probability on a link (0.0 to 1.0).
    #[arg(long)]
    loss_max: Option<f64>,
    /// Do not destroy servers.
    #[arg(long)]
    no_destroy: bool,
    /// Liveness bound, in election timeouts (of the minimum length).
    #[arg(long, default_value_t = 50)]
    liveness_timeouts: u64,
    /// Worker threads (seeds are independent).
    #[arg(long, default_value_t = default_jobs())]
    jobs: usize,
    /// Test only: run with a deliberate bug (commit-older-terms, ack-before-durable,
    /// forget-vote, skip-check-quorum) to show the checkers catch it.
    #[arg(long, default_value = "none")]
    mutation: Mutation,
    /// Test only, with --layer replica: a deliberate bug in the pipeline
    /// (release-before-commit, skip-rollback, skip-barrier, skip-dedup,
    /// read-without-quorum).
    #[arg(long, default_value = "none")]
    replica_mutation: bunker::replica::ReplicaMutation,
    /// Test only: SERVER:INDEX makes that server's log panic when an append
    /// reaches that entry (shows how a panic in a server is reported).
    #[arg(long, value_parser = parse_injection)]
    inject_panic: Option<(u64, u64)>,
    /// Explain every failing seed: its configuration, the faults, the last
    /// events of every layer before the failure, a panic's backtrace (use
    /// with one seed: recording costs time).
    #[arg(long)]
    trace: bool,
    /// Events of the trace kept before the failure.
    #[arg(long, default_value_t = bunker::sim::trace::EVENTS_DEFAULT)]
    trace_events: usize,
    /// Stop at the first failing seed.
    #[arg(long)]
    stop_on_failure: bool,
    /// Also print a line for every passing seed whose liveness recovery took
    /// at least this many ticks.
    #[arg(long)]
    show_recovery_over: Option<u64>,
}

/// The seeds to run: from `start`, up to `end` (excluded) if bounded.
#[derive(Clone, Debug)]
struct Seeds {
    start: u64,
    end: Option<u64>,
    random: bool,
}

fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A random 9-digit start, far from the small seeds CI and the
/// regressions use.
fn random_start() -> u64 {
    100_000_000 + rand::random::<u64>() % 900_000_000
}

fn parse_seeds(s: &str) -> Result<Seeds, String> {
    let parse = |x: &str| {
        x.trim()
            .parse::<u64>()
            .map_err(|e| format!("bad seed {x:?}: {e}"))
    };
    if let Some(rest) = s.strip_prefix("random") {
        let start = random_start();
        let end = match rest.strip_prefix(':') {
            Some(n) => Some(start + parse(n)?),
            None if rest.is_empty() => None,
            None => return Err(format!("expected random or random:N, not {s:?}")),
        };
        return Ok(Seeds {
            start,
            end,
            random: true,
        });
    }
    let (a, b) = match s.split_once("..") {
        Some((a, b)) => (parse(a)?, parse(b)?),
        None => {
            let a = parse(s)?;
            (a, a.checked_add(1).ok_or("seed too large")?)
        }
    };
    if a >= b {
        return Err(format!("empty seed range {s}"));
    }
    Ok(Seeds {
        start: a,
        end: Some(b),
        random: false,
    })
}

fn parse_injection(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s.split_once(':').ok_or("expected SERVER:INDEX")?;
    let server = a.parse::<u64>().map_err(|e| e.to_string())?;
    let index = b.parse::<u64>().map_err(|e| e.to_string())?;
    if !(1..=5).contains(&server) {
        return Err("SERVER is 1 to 5".into());
    }
    Ok((server, index))
}

fn main() {
    let cli = Cli::parse();
    if cli.seeds.end.is_none() && cli.budget_secs.is_none() {
        eprintln!("error: --seeds random needs --budget-secs (or use random:N)");
        std::process::exit(2);
    }
    let (cfg, replica_cfg) = configs(&cli);
    if cli.seeds.random {
        println!(
            "random start: seed {} (layer {}, swarm {})",
            cli.seeds.start, cli.layer, cfg.swarm
        );
    }
    let pool = Pool::new(&cli);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..cli.jobs.max(1) {
            scope.spawn(|| pool.work(&cli, &cfg, &replica_cfg, started));
        }
        if cli.progress_secs > 0 {
            scope.spawn(|| pool.progress(&cli, started));
        }
    });
    let total = pool.totals.into_inner().unwrap_or_else(|e| e.into_inner());
    let end = pool.next.load(Ordering::Relaxed);
    let end = cli.seeds.end.map_or(end, |e| end.min(e));
    summarize(&cli, &total, cli.seeds.start..end, started.elapsed(), &cfg);
    if total.failed > 0 {
        std::process::exit(1);
    }
}

/// The run configurations of both layers, from the command line.
fn configs(cli: &Cli) -> (RunConfig, ReplicaRunConfig) {
    let Some(mut faults) = FaultConfig::level(&cli.faults) else {
        eprintln!(
            "error: --faults must be calm, low, medium or high, not {:?}",
            cli.faults
        );
        std::process::exit(2);
    };
    if let Some(loss) = cli.loss_max {
        if !(0.0..=1.0).contains(&loss) {
            eprintln!("error: --loss-max must be between 0 and 1");
            std::process::exit(2);
        }
        faults.loss_max = loss;
    }
    if cli.no_destroy {
        faults.destroy_max = 0;
    }
    let swarm = cli.swarm || (!cli.no_swarm && (cli.seeds.random || cli.budget_secs.is_some()));
    let mut cfg = RunConfig {
        faults: faults.clone(),
        trace: cli.trace,
        trace_events: cli.trace_events,
        swarm,
        inject_panic: cli.inject_panic,
        ..RunConfig::default()
    };
    cfg.safety_us = cli.ticks * cfg.timing.tick_us;
    cfg.liveness_us_max =
        cli.liveness_timeouts * cfg.opts.election_ticks_min as u64 * cfg.timing.tick_us;
    cfg.opts.mutation = cli.mutation;
    let replica_cfg = ReplicaRunConfig {
        faults,
        trace: cli.trace,
        trace_events: cli.trace_events,
        swarm,
        inject_panic: cli.inject_panic,
        safety_us: cfg.safety_us,
        liveness_us_max: cfg.liveness_us_max,
        opts: cfg.opts.clone(),
        workload: bunker::sim::Workload {
            mutation: cli.replica_mutation,
            ..bunker::sim::Workload::default()
        },
        ..ReplicaRunConfig::default()
    };
    (cfg, replica_cfg)
}

/// What one seed produced, whatever the layer.
struct Seed {
    seed: u64,
    violations: Vec<Violation>,
    recovery_us: Option<u64>,
    core: Vec<u64>,
    trace: Vec<String>,
    config: String,
    panic: Option<String>,
    /// Acknowledged commands per simulated second.
    rate: f64,
    counters: Vec<(&'static str, u64)>,
}

fn run_one(cli: &Cli, cfg: &RunConfig, replica_cfg: &ReplicaRunConfig, seed: u64) -> Seed {
    if cli.layer == "replica" {
        let r = run_replica_seed(seed, replica_cfg);
        return Seed {
            seed,
            violations: r.violations,
            recovery_us: r.recovery_us,
            core: r.core,
            trace: r.trace,
            config: r.config,
            panic: r.panic.map(|p| p.location),
            rate: r.answered_per_s,
            counters: vec![
                ("requests", r.stats.requests),
                ("writes acked", r.stats.writes_acked),
                ("reads acked", r.stats.reads_acked),
                ("app failures", r.stats.app_failures),
                ("retries", r.stats.retries),
                ("elections", r.stats.elections),
                ("crashes", r.stats.crashes),
                ("destroyed", r.stats.destroyed),
                ("entries applied", r.stats.entries_applied),
                ("events", r.stats.events),
            ],
        };
    }
    let r: RunReport = run_seed(seed, cfg);
    Seed {
        seed,
        violations: r.violations,
        recovery_us: r.recovery_us,
        core: r.core,
        trace: r.trace,
        config: r.config,
        panic: r.panic.map(|p| p.location),
        rate: r.stats.acked as f64 / (r.sim_us.max(1) as f64 / 1e6),
        counters: vec![
            ("proposals", r.stats.proposals),
            ("acked", r.stats.acked),
            ("reads", r.stats.reads_ok),
            ("elections", r.stats.elections),
            ("crashes", r.stats.crashes),
            ("destroyed", r.stats.destroyed),
            ("snapshots", r.stats.snapshots_installed),
            ("events", r.stats.events),
        ],
    }
}

/// Aggregates of every seed run so far (nothing per seed is kept but two
/// numbers, so a run of millions of seeds stays small).
#[derive(Default)]
struct Totals {
    ran: u64,
    failed: u64,
    recovery_ticks: Vec<f32>,
    rates: Vec<f32>,
    counters: Vec<(&'static str, u64)>,
}

impl Totals {
    fn add(&mut self, seed: &Seed, tick_us: u64) {
        self.ran += 1;
        if !seed.violations.is_empty() {
            self.failed += 1;
        }
        if let Some(us) = seed.recovery_us {
            self.recovery_ticks.push(us as f32 / tick_us as f32);
        }
        self.rates.push(seed.rate as f32);
        for (i, (name, value)) in seed.counters.iter().enumerate() {
            if self.counters.len() <= i {
                self.counters.push((name, 0));
            }
            self.counters[i].1 += value;
        }
    }
}

/// The workers' shared state.
struct Pool {
    next: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    finished: AtomicBool,
    totals: Mutex<Totals>,
    budget: Option<Duration>,
}

impl Pool {
    fn new(cli: &Cli) -> Pool {
        Pool {
            next: AtomicU64::new(cli.seeds.start),
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            finished: AtomicBool::new(false),
            totals: Mutex::new(Totals::default()),
            budget: cli.budget_secs.map(Duration::from_secs),
        }
    }

    /// One worker: takes the next seed until the range, the budget or
    /// (with --stop-on-failure) the first failure ends the run.
    fn work(&self, cli: &Cli, cfg: &RunConfig, replica_cfg: &ReplicaRunConfig, started: Instant) {
        loop {
            let out_of_time = self.budget.is_some_and(|b| started.elapsed() >= b);
            let stop = cli.stop_on_failure && self.failed.load(Ordering::Relaxed) > 0;
            if out_of_time || stop || self.finished.load(Ordering::Relaxed) {
                self.finished.store(true, Ordering::Relaxed);
                return;
            }
            let seed = self.next.fetch_add(1, Ordering::Relaxed);
            if cli.seeds.end.is_some_and(|end| seed >= end) {
                self.finished.store(true, Ordering::Relaxed);
                return;
            }
            let report = run_one(cli, cfg, replica_cfg, seed);
            if !report.violations.is_empty() {
                self.failed.fetch_add(1, Ordering::Relaxed);
                print_failure(cli, cfg.swarm, &report);
            } else {
                print_slow(cli, &report, cfg.timing.tick_us);
            }
            self.totals
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .add(&report, cfg.timing.tick_us);
            self.done.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Prints a progress line every --progress-secs until the run ends.
    fn progress(&self, cli: &Cli, started: Instant) {
        let period = Duration::from_secs(cli.progress_secs);
        let mut next = period;
        while !self.finished.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
            let elapsed = started.elapsed();
            if elapsed < next {
                continue;
            }
            next += period;
            let done = self.done.load(Ordering::Relaxed);
            println!(
                "progress: {:.0}s, {done} seeds ({:.2} seeds/s), {} failed, next seed {}",
                elapsed.as_secs_f64(),
                done as f64 / elapsed.as_secs_f64(),
                self.failed.load(Ordering::Relaxed),
                self.next.load(Ordering::Relaxed),
            );
        }
    }
}

fn print_slow(cli: &Cli, report: &Seed, tick_us: u64) {
    let (Some(limit), Some(us)) = (cli.show_recovery_over, report.recovery_us) else {
        return;
    };
    let ticks = us / tick_us;
    if ticks >= limit {
        println!(
            "slow seed {}: recovery {ticks} ticks, core {:?}",
            report.seed, report.core
        );
        if cli.trace {
            for line in &report.trace {
                println!("  {line}");
            }
        }
    }
}

/// The command that replays one seed of this run.
fn replay_line(cli: &Cli, swarm: bool, seed: u64) -> String {
    let mut replay = format!(
        "cargo run --release --bin bunker-sim -- --layer {} --seeds {seed} --ticks {} --faults {} {}",
        cli.layer,
        cli.ticks,
        cli.faults,
        if swarm { "--swarm" } else { "--no-swarm" }
    );
    if let Some(loss) = cli.loss_max {
        replay.push_str(&format!(" --loss-max {loss}"));
    }
    if cli.no_destroy {
        replay.push_str(" --no-destroy");
    }
    if cli.mutation != Mutation::None {
        replay.push_str(&format!(" --mutation {}", mutation_name(cli.mutation)));
    }
    if cli.replica_mutation != bunker::replica::ReplicaMutation::None {
        replay.push_str(&format!(" --replica-mutation {}", cli.replica_mutation));
    }
    if let Some((server, index)) = cli.inject_panic {
        replay.push_str(&format!(" --inject-panic {server}:{index}"));
    }
    replay
}

fn print_failure(cli: &Cli, swarm: bool, report: &Seed) {
    let first = &report.violations[0];
    let mut out = format!(
        "FAIL seed {} {first} ({} violations) | replay: {} --trace",
        report.seed,
        report.violations.len(),
        replay_line(cli, swarm, report.seed)
    );
    if swarm {
        out.push_str(&format!("\n  config: {}", report.config));
    }
    if cli.trace {
        for v in &report.violations {
            out.push_str(&format!("\n  violation {v}"));
        }
        for line in &report.trace {
            out.push_str(&format!("\n  {line}"));
        }
    } else if let Some(location) = &report.panic {
        out.push_str(&format!(
            "\n  (a panic at {location}: --trace prints its backtrace and the events before it)"
        ));
    }
    println!("{out}");
}

fn mutation_name(m: Mutation) -> &'static str {
    match m {
        Mutation::None => "none",
        Mutation::CommitOlderTerms => "commit-older-terms",
        Mutation::AckBeforeDurable => "ack-before-durable",
        Mutation::ForgetVote => "forget-vote",
        Mutation::SkipCheckQuorum => "skip-check-quorum",
    }
}

fn summarize(
    cli: &Cli,
    total: &Totals,
    range: std::ops::Range<u64>,
    wall: Duration,
    cfg: &RunConfig,
) {
    let mut recovery = total.recovery_ticks.clone();
    recovery.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| -> f32 {
        if recovery.is_empty() {
            return f32::NAN;
        }
        recovery[((recovery.len() - 1) as f64 * p).round() as usize]
    };
    let mut rates = total.rates.clone();
    rates.sort_by(|a, b| a.total_cmp(b));
    let rate_p50 = rates.get(rates.len() / 2).copied().unwrap_or(f32::NAN);
    let counters: Vec<String> = total
        .counters
        .iter()
        .map(|(n, v)| format!("{n} {v}"))
        .collect();
    let wall_s = wall.as_secs_f64();
    println!(
        "summary: layer {} seeds {}..{} ran {} failed {} swarm {} | wall {:.1}s, {:.2} seeds/s ({} jobs) | \
         recovery ticks p50 {:.1} p90 {:.1} p99 {:.1} max {:.1} | acked per simulated s p50 {:.0} | {} | faults {} mutation {}",
        cli.layer,
        range.start,
        range.end,
        total.ran,
        total.failed,
        cfg.swarm,
        wall_s,
        total.ran as f64 / wall_s.max(1e-9),
        cli.jobs,
        pct(0.5),
        pct(0.9),
        pct(0.99),
        recovery.last().copied().unwrap_or(f32::NAN),
        rate_p50,
        counters.join(" "),
        cli.faults,
        mutation_name(cli.mutation),
    );
}
