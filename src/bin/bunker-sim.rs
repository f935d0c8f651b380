//! bunker-sim: runs the deterministic cluster simulator over a range of
//! seeds. One line per failing seed (with the command that replays it), a
//! summary line at the end, and a non-zero exit status on any violation.

use bunker::raft::Mutation;
use bunker::sim::{
    run_replica_seed, run_seed, FaultConfig, ReplicaRunConfig, RunConfig, RunReport, Violation,
};
use clap::Parser;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(
    name = "bunker-sim",
    about = "Deterministic simulation of a Bunker cluster under faults",
    long_about = "Runs five servers built from Bunker's real consensus core over a simulated \
network, disk and clock, seed by seed. Each seed runs a safety phase under random faults \
(loss, duplication, delay, partitions, one-way and selective loss, crashes with torn writes, \
pauses, destroyed servers, clock skew), then a liveness phase that heals a random core of \
three or more servers and requires progress, then a convergence phase. Invariant checkers \
run after every event. A failing seed prints the command that replays it."
)]
struct Cli {
    /// What to simulate: `consensus` (the Raft core alone, a state machine
    /// of hashes: fastest) or `replica` (whole servers: core, ringlog, delta
    /// engine and replication pipeline, running a ledger application for
    /// clients that retry, with the client history checked at the end).
    #[arg(long, default_value = "consensus", value_parser = ["consensus", "replica"])]
    layer: String,
    /// Seeds to run, as A..B (B excluded) or a single seed.
    #[arg(long, default_value = "0..100", value_parser = parse_seeds)]
    seeds: Range<u64>,
    /// Length of the safety phase, in ticks of 10 ms of simulated time.
    #[arg(long, default_value_t = 1000)]
    ticks: u64,
    /// Fault intensity: calm, low, medium or high.
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
    /// Print the fault log of every failing seed (use with one seed).
    #[arg(long)]
    trace: bool,
    /// Stop at the first failing seed.
    #[arg(long)]
    stop_on_failure: bool,
    /// Also print a line for every passing seed whose liveness recovery took
    /// at least this many ticks.
    #[arg(long)]
    show_recovery_over: Option<u64>,
}

fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn parse_seeds(s: &str) -> Result<Range<u64>, String> {
    let parse = |x: &str| {
        x.trim()
            .parse::<u64>()
            .map_err(|e| format!("bad seed {x:?}: {e}"))
    };
    match s.split_once("..") {
        Some((a, b)) => {
            let (a, b) = (parse(a)?, parse(b)?);
            if a >= b {
                return Err(format!("empty seed range {s}"));
            }
            Ok(a..b)
        }
        None => {
            let a = parse(s)?;
            Ok(a..a + 1)
        }
    }
}

fn main() {
    let cli = Cli::parse();
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
    let mut cfg = RunConfig {
        faults: faults.clone(),
        trace: cli.trace,
        ..RunConfig::default()
    };
    cfg.safety_us = cli.ticks * cfg.timing.tick_us;
    cfg.liveness_us_max =
        cli.liveness_timeouts * cfg.opts.election_ticks_min as u64 * cfg.timing.tick_us;
    cfg.opts.mutation = cli.mutation;
    let replica_cfg = ReplicaRunConfig {
        faults,
        trace: cli.trace,
        safety_us: cfg.safety_us,
        liveness_us_max: cfg.liveness_us_max,
        opts: cfg.opts.clone(),
        workload: bunker::sim::Workload {
            mutation: cli.replica_mutation,
            ..bunker::sim::Workload::default()
        },
        ..ReplicaRunConfig::default()
    };
    let run = |seed: u64| -> Seed {
        if cli.layer == "replica" {
            let r = run_replica_seed(seed, &replica_cfg);
            Seed {
                seed,
                violations: r.violations,
                recovery_us: r.recovery_us,
                core: r.core,
                trace: r.trace,
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
            }
        } else {
            let r: RunReport = run_seed(seed, &cfg);
            Seed {
                seed,
                violations: r.violations,
                recovery_us: r.recovery_us,
                core: r.core,
                trace: r.trace,
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
    };

    // Panics are reported per seed as violations; keep stderr readable.
    if std::env::var_os("SIM_PANIC").is_none() {
        std::panic::set_hook(Box::new(|_| {}));
    }
    let started = Instant::now();
    let next = AtomicU64::new(cli.seeds.start);
    let reports: Mutex<Vec<Seed>> = Mutex::new(Vec::new());
    let failed = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..cli.jobs.max(1) {
            scope.spawn(|| loop {
                if cli.stop_on_failure && failed.load(Ordering::Relaxed) > 0 {
                    return;
                }
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= cli.seeds.end {
                    return;
                }
                let report = run(seed);
                if !report.violations.is_empty() {
                    failed.fetch_add(1, Ordering::Relaxed);
                    print_failure(&cli, &report);
                } else if let (Some(limit), Some(us)) = (cli.show_recovery_over, report.recovery_us)
                {
                    let ticks = us / cfg.timing.tick_us;
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
                reports
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(report);
            });
        }
    });
    let reports = reports.into_inner().unwrap_or_else(|e| e.into_inner());
    summarize(
        &cli,
        &reports,
        started.elapsed().as_secs_f64(),
        cfg.timing.tick_us,
    );
    if reports.iter().any(|r| !r.violations.is_empty()) {
        std::process::exit(1);
    }
}

/// What one seed produced, whatever the layer.
struct Seed {
    seed: u64,
    violations: Vec<Violation>,
    recovery_us: Option<u64>,
    core: Vec<u64>,
    trace: Vec<String>,
    /// Acknowledged commands per simulated second.
    rate: f64,
    counters: Vec<(&'static str, u64)>,
}

fn print_failure(cli: &Cli, report: &Seed) {
    let first = &report.violations[0];
    let mut replay = format!(
        "cargo run --release --bin bunker-sim -- --layer {} --seeds {} --ticks {} --faults {}",
        cli.layer, report.seed, cli.ticks, cli.faults
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
    println!(
        "FAIL seed {} at {}us: {} ({} violations) | replay: {replay} --trace",
        report.seed,
        first.at_us,
        first.what,
        report.violations.len()
    );
    if cli.trace {
        for v in &report.violations {
            println!("  violation at {}us: {}", v.at_us, v.what);
        }
        for line in &report.trace {
            println!("  {line}");
        }
    }
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

fn summarize(cli: &Cli, reports: &[Seed], wall_s: f64, tick_us: u64) {
    let failed = reports.iter().filter(|r| !r.violations.is_empty()).count();
    let mut recovery: Vec<f64> = reports
        .iter()
        .filter_map(|r| r.recovery_us)
        .map(|us| us as f64 / tick_us as f64)
        .collect();
    recovery.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| -> f64 {
        if recovery.is_empty() {
            return f64::NAN;
        }
        recovery[((recovery.len() - 1) as f64 * p).round() as usize]
    };
    let mut counters: Vec<(&str, u64)> = Vec::new();
    for r in reports {
        for (i, (name, value)) in r.counters.iter().enumerate() {
            if counters.len() <= i {
                counters.push((name, 0));
            }
            counters[i].1 += value;
        }
    }
    let counters: Vec<String> = counters.iter().map(|(n, v)| format!("{n} {v}")).collect();
    let mut rates: Vec<f64> = reports.iter().map(|r| r.rate).collect();
    rates.sort_by(|a, b| a.total_cmp(b));
    let rate_p50 = rates.get(rates.len() / 2).copied().unwrap_or(f64::NAN);
    println!(
        "summary: layer {} seeds {}..{} ran {} failed {} | wall {:.1}s, {:.2} seeds/s ({} jobs) | \
         recovery ticks p50 {:.1} p90 {:.1} p99 {:.1} max {:.1} | acked per simulated s p50 {:.0} | {} | faults {} mutation {}",
        cli.layer,
        cli.seeds.start,
        cli.seeds.end,
        reports.len(),
        failed,
        wall_s,
        reports.len() as f64 / wall_s.max(1e-9),
        cli.jobs,
        pct(0.5),
        pct(0.9),
        pct(0.99),
        recovery.last().copied().unwrap_or(f64::NAN),
        rate_p50,
        counters.join(" "),
        cli.faults,
        mutation_name(cli.mutation),
    );
}
