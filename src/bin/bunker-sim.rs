//! bunker-sim: runs the deterministic cluster simulator over a range of
//! seeds. One line per failing seed (with the command that replays it), a
//! summary line at the end, and a non-zero exit status on any violation.

use bunker::raft::Mutation;
use bunker::sim::{run_seed, FaultConfig, RunConfig, RunReport};
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
        faults,
        trace: cli.trace,
        ..RunConfig::default()
    };
    cfg.safety_us = cli.ticks * cfg.timing.tick_us;
    cfg.liveness_us_max =
        cli.liveness_timeouts * cfg.opts.election_ticks_min as u64 * cfg.timing.tick_us;
    cfg.opts.mutation = cli.mutation;

    // Panics are reported per seed as violations; keep stderr readable.
    std::panic::set_hook(Box::new(|_| {}));
    let started = Instant::now();
    let next = AtomicU64::new(cli.seeds.start);
    let reports: Mutex<Vec<RunReport>> = Mutex::new(Vec::new());
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
                let report = run_seed(seed, &cfg);
                if !report.ok() {
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
    summarize(&cli, &reports, started.elapsed().as_secs_f64(), &cfg);
    if reports.iter().any(|r| !r.ok()) {
        std::process::exit(1);
    }
}

fn print_failure(cli: &Cli, report: &RunReport) {
    let first = &report.violations[0];
    let mut replay = format!(
        "cargo run --release --bin bunker-sim -- --seeds {} --ticks {} --faults {}",
        report.seed, cli.ticks, cli.faults
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

fn summarize(cli: &Cli, reports: &[RunReport], wall_s: f64, cfg: &RunConfig) {
    let failed = reports.iter().filter(|r| !r.ok()).count();
    let tick_us = cfg.timing.tick_us as f64;
    let mut recovery: Vec<f64> = reports
        .iter()
        .filter_map(|r| r.recovery_us)
        .map(|us| us as f64 / tick_us)
        .collect();
    recovery.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| -> f64 {
        if recovery.is_empty() {
            return f64::NAN;
        }
        recovery[((recovery.len() - 1) as f64 * p).round() as usize]
    };
    let sum = |f: fn(&RunReport) -> u64| reports.iter().map(f).sum::<u64>();
    println!(
        "summary: seeds {}..{} ran {} failed {} | wall {:.1}s, {:.2} seeds/s ({} jobs) | \
         recovery ticks p50 {:.1} p90 {:.1} p99 {:.1} max {:.1} | proposals {} acked {} reads {} \
         elections {} crashes {} destroyed {} snapshots {} events {} | faults {} mutation {}",
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
        sum(|r| r.stats.proposals),
        sum(|r| r.stats.acked),
        sum(|r| r.stats.reads_ok),
        sum(|r| r.stats.elections),
        sum(|r| r.stats.crashes),
        sum(|r| r.stats.destroyed),
        sum(|r| r.stats.snapshots_installed),
        sum(|r| r.stats.events),
        cli.faults,
        mutation_name(cli.mutation),
    );
}
