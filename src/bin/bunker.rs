//! `bunker`: the server, the client, the cluster tools and the demo.
//!
//! - `bunker demo`: five servers on this machine running the example
//!   accounts application under a crash and the destruction of two servers,
//!   with every acknowledged command checked (the README's main job);
//! - `bunker serve --config node.toml`: one server;
//! - `bunker exec`: send one command to a cluster;
//! - `bunker status`: the cluster at a glance;
//! - `bunker certs`: a cluster CA and the certificates of servers and clients;
//! - `bunker accounts exec|serve`: the example application itself (the same
//!   program as `bunker-accounts`, built in so that the demo needs only this
//!   executable).

use bunker::demo::{self, DemoOptions};
use bunker::server::config::NodeConfig;
use bunker::server::status::{fetch_status, render};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "bunker",
    version,
    about = "Bunker: replication of an opaque, file-backed application over five servers",
    long_about = "Bunker runs an opaque, non-deterministic, file-backed application on the \
leader of a five-server cluster, replicates the filesystem delta of every command through a \
Raft log, and answers the client only once the delta is durable on a majority. Start with \
`bunker demo`."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Five servers on this machine, the accounts application, clients, a
    /// crash, two servers destroyed, and a check that nothing was lost.
    Demo(DemoArgs),
    /// Run one server.
    Serve {
        /// The server's configuration (see deploy/ for examples).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Five servers in a private network namespace under a seeded sequence
    /// of faults (partitions, loss, kills, pauses), every epoch checked
    /// (needs root, `ip` and `iptables`).
    Nemesis(NemesisArgs),
    /// Send one command to the cluster and print its response.
    Exec(bunker::client::ExecArgs),
    /// Show every server's role, term, indexes, lag and state hash.
    Status {
        /// Any server's configuration: the metrics addresses of its peers are used.
        #[arg(long, value_name = "FILE", required_unless_present = "metrics")]
        config: Option<PathBuf>,
        /// Metrics addresses to ask, as id=addr, instead of a configuration.
        #[arg(long, value_delimiter = ',', value_parser = parse_id_addr)]
        metrics: Vec<(u64, SocketAddr)>,
    },
    /// Make a cluster CA and the certificates of servers and clients.
    Certs(bunker::transport::certs::CertsArgs),
    /// The example application (bunker-accounts), built in.
    #[command(hide = true, disable_help_flag = true)]
    Accounts {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run a program with its writes confined to a directory (Landlock).
    #[command(name = "sandbox-exec", hide = true, disable_help_flag = true)]
    SandboxExec {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The benchmarks' minimal application (each command changes 256 bytes).
    #[command(hide = true, disable_help_flag = true)]
    Blob {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// A test application that writes only through a shared mapping.
    #[command(hide = true, disable_help_flag = true)]
    Mapped {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Where to put the cluster (a fresh temporary directory by default).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Keep the directory (configurations, certificates, data, logs).
    #[arg(long)]
    keep: bool,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Accounts to transfer between.
    #[arg(long, default_value_t = 20)]
    accounts: usize,
    /// Length of the workload in seconds.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Run the application once per command (exec adapter) instead of as
    /// one long-running process (serve adapter).
    #[arg(long)]
    exec_mode: bool,
    /// No crash and no destruction.
    #[arg(long)]
    calm: bool,
}

#[derive(clap::Args)]
struct NemesisArgs {
    /// Seed of the fault sequence (faults, durations, victims by role).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Total length of the run in seconds.
    #[arg(long, default_value_t = 120)]
    seconds: u64,
    /// Length of one epoch's fault phase; each epoch is checked on its own.
    #[arg(long, default_value_t = 60)]
    epoch_seconds: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Accounts opened per epoch.
    #[arg(long, default_value_t = 10)]
    accounts: usize,
    /// Faults to draw from, comma-separated (all by default): partition, split,
    /// leader-isolated, ring, bridge, one-peer, deaf-leader, mute-leader,
    /// loss, one-way-loss, flapping, kill, kill-two, pause.
    #[arg(long, value_delimiter = ',')]
    faults: Vec<bunker::nemesis::FaultKind>,
    /// Where to put the cluster (kept); a temporary directory, removed
    /// after a clean run, by default.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

fn parse_id_addr(s: &str) -> Result<(u64, SocketAddr), String> {
    let (id, addr) = s.split_once('=').ok_or("expected id=host:port")?;
    let id = id.parse().map_err(|e| format!("server id {id:?}: {e}"))?;
    let addr = addr.parse().map_err(|e| format!("address {addr:?}: {e}"))?;
    Ok((id, addr))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(
        cli.command,
        Cmd::Accounts { .. } | Cmd::Blob { .. } | Cmd::Mapped { .. } | Cmd::SandboxExec { .. }
    ) {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_writer(std::io::stderr)
            // Colour codes only for a person at a terminal, never in a log file.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    match cli.command {
        Cmd::Demo(args) => run_demo(args),
        Cmd::Nemesis(args) => run_nemesis(args),
        Cmd::Serve { config } => run_serve(&config),
        Cmd::Exec(args) => bunker::client::run_exec(args),
        Cmd::Status { config, metrics } => run_status(config, metrics),
        Cmd::Certs(args) => bunker::transport::certs::run_certs(args),
        Cmd::Accounts { args } => bunker::accounts::main(args),
        Cmd::Blob { args } => bunker::blob::main(args),
        Cmd::Mapped { args } => bunker::mapped::main(args),
        Cmd::SandboxExec { args } => bunker::app::sandbox::main(args),
    }
}

fn run_demo(args: DemoArgs) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("bunker demo: cannot find this executable to start the servers: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = DemoOptions {
        dir: args.dir,
        keep: args.keep,
        clients: args.clients.max(1),
        accounts: args.accounts.max(2),
        seconds: args.seconds.max(3),
        exe,
        exec_mode: args.exec_mode,
        calm: args.calm,
    };
    match demo::run(&opts) {
        Ok(report) if report.failures.is_empty() => {
            println!("[demo] PASS: no acknowledged command was lost, replicas identical");
            ExitCode::SUCCESS
        }
        Ok(report) => {
            for f in &report.failures {
                println!("[demo] {f}");
            }
            println!("[demo] FAIL: {} check(s) failed", report.failures.len());
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("bunker demo: {e}");
            ExitCode::from(2)
        }
    }
}

fn run_nemesis(args: NemesisArgs) -> ExitCode {
    if let Err(why) = bunker::faultnet::available() {
        eprintln!("bunker nemesis: cannot inject network faults here: {why}");
        return ExitCode::from(2);
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("bunker nemesis: cannot find this executable to start the servers: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = bunker::nemesis::NemesisOptions {
        seed: args.seed,
        seconds: args.seconds,
        epoch_seconds: args.epoch_seconds.max(5),
        clients: args.clients.max(1),
        accounts: args.accounts.max(2),
        faults: args.faults,
        dir: args.dir,
        exe,
        config_extra: String::new(),
    };
    match bunker::nemesis::run(&opts) {
        Ok(report) => {
            println!("{}", report.text);
            if report.failures.is_empty() {
                println!("[nemesis] PASS: every check of every epoch passed");
                ExitCode::SUCCESS
            } else {
                for f in &report.failures {
                    println!("[nemesis] {f}");
                }
                println!("[nemesis] FAIL: {} check(s) failed", report.failures.len());
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("bunker nemesis: {e}");
            ExitCode::from(2)
        }
    }
}

fn run_serve(config: &std::path::Path) -> ExitCode {
    let cfg = match NodeConfig::load(config) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("bunker serve: {e}");
            return ExitCode::from(2);
        }
    };
    match bunker::server::serve::run(&cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bunker serve: server {}: {e}", cfg.id);
            ExitCode::from(1)
        }
    }
}

fn run_status(config: Option<PathBuf>, metrics: Vec<(u64, SocketAddr)>) -> ExitCode {
    let targets = match config {
        Some(path) => match NodeConfig::load(&path) {
            Ok(cfg) => {
                let targets: Vec<_> = cfg
                    .peers
                    .iter()
                    .filter_map(|p| p.metrics.map(|m| (p.id, m)))
                    .collect();
                if targets.is_empty() {
                    eprintln!(
                        "bunker status: {}: no [[peers]] entry has a `metrics` address",
                        path.display()
                    );
                    return ExitCode::from(2);
                }
                targets
            }
            Err(e) => {
                eprintln!("bunker status: {e}");
                return ExitCode::from(2);
            }
        },
        None => metrics,
    };
    let rows: Vec<_> = targets
        .iter()
        .map(|(id, addr)| (*id, fetch_status(*addr, Duration::from_secs(2))))
        .collect();
    print!("{}", render(&rows));
    if rows.iter().filter(|(_, r)| r.is_ok()).count() * 2 > rows.len() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
