//! bunker-bench: Bunker's benchmark harness. Every subcommand measures a
//! baseline in the same run and prints ratios against it (the machines are
//! shared and noisy: compare medians and ratios, not absolute times).

use clap::{Parser, Subcommand};

mod accounts;
mod anchors;
mod delta;
mod e2e;
mod fuse;
mod log;
mod net;
mod recovery;

/// The `bunker` executable: the one given, or the one next to this program.
fn bunker_exe(given: &Option<std::path::PathBuf>) -> Result<std::path::PathBuf, String> {
    match given {
        Some(p) => Ok(p.clone()),
        None => Ok(std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("bunker")),
    }
}

#[derive(Parser)]
#[command(
    name = "bunker-bench",
    about = "Bunker's benchmarks (hdrhistogram percentiles, JSON output)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Placeholder until the first benchmark lands.
    Version,
    /// Delta engine: capture/apply time and delta size vs database and change size.
    Delta(delta::DeltaArgs),
    /// The durable log (ringlog): append latency and throughput against the
    /// disk's own sync-write baselines.
    Log(log::LogArgs),
    /// Example application: per-command latency of bunker-accounts in exec
    /// and serve modes, against the same commands in process.
    Accounts(accounts::AccountsArgs),
    /// Real clusters end to end: 5 servers against 1 server (no
    /// replication), blob and accounts applications, 1/8/64 clients.
    E2e(e2e::E2eArgs),
    /// Bunker against PostgreSQL (quorum sync replication), etcd and a
    /// single server: throughput, latency, failover; table and plots.
    Anchors(anchors::AnchorsArgs),
    /// Networking stacks: tokio (epoll) against tokio-uring, loopback.
    Net(net::NetArgs),
    /// The FUSE-served working copy: 4 KiB writes and reads through the
    /// mount against the plain directory, and what a capture pays to
    /// learn what changed (root and /dev/fuse).
    Fuse(fuse::FuseArgs),
    /// Restart after a crash with the longest log tail the checkpoint
    /// settings allow: time to the first answer.
    Recovery(recovery::RecoveryArgs),
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => println!("bunker-bench {}", env!("CARGO_PKG_VERSION")),
        Command::Delta(args) => {
            if let Err(err) = delta::run(args) {
                eprintln!("bunker-bench delta: {err}");
                std::process::exit(1);
            }
        }
        Command::Log(args) => {
            if let Err(e) = log::run(args) {
                eprintln!("bunker-bench log: {e}");
                std::process::exit(1);
            }
        }
        Command::Net(args) => {
            if let Err(e) = net::run(args) {
                eprintln!("bunker-bench net: {e}");
                std::process::exit(1);
            }
        }
        Command::Fuse(args) => {
            if let Err(e) = fuse::run(args) {
                eprintln!("bunker-bench fuse: {e}");
                std::process::exit(1);
            }
        }
        Command::Recovery(args) => {
            if let Err(e) = recovery::run(args) {
                eprintln!("bunker-bench recovery: {e}");
                std::process::exit(1);
            }
        }
        Command::E2e(args) => {
            if let Err(e) = e2e::run(args) {
                eprintln!("bunker-bench e2e: {e}");
                std::process::exit(1);
            }
        }
        Command::Anchors(args) => {
            if let Err(e) = anchors::run(args) {
                eprintln!("bunker-bench anchors: {e}");
                std::process::exit(1);
            }
        }
        Command::Accounts(args) => {
            if let Err(err) = accounts::run(args) {
                eprintln!("bunker-bench accounts: {err}");
                std::process::exit(1);
            }
        }
    }
}
