//! `bunker-bench accounts`: per-command latency of the example application
//! (`bunker-accounts`) in both of the ways Bunker runs it: `exec` (one process
//! per command) and `serve` (one process, framed commands over a pipe).
//!
//! Baselines measured in the same run: the same commands executed in process
//! through the library (`Store::execute`: SQLite alone, no process, no pipe),
//! and, for `exec`, spawning the binary with `--version` (the cost of a
//! process that does no database work). Ratios against them are reported.
//!
//! What it does not measure: Bunker itself (capture, replication, fsync of
//! the log). This is the application's own cost, the floor under Bunker's
//! per-command latency with each adapter.

use std::fs;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use bunker_accounts::frame::{self, RESPONSE_FRAME_BYTES_MAX};
use bunker_accounts::response::Status;
use bunker_accounts::store::{Store, SyncMode, SystemEnvironment};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// Commands run and thrown away before measuring (page cache, code paths).
const WARMUP_COMMANDS: u64 = 50;

#[derive(clap::Args, Debug)]
pub struct AccountsArgs {
    /// Measured commands per case in process and in `serve`.
    #[arg(long, default_value_t = 3000)]
    pub iters: u64,
    /// Measured commands per case in `exec` (a process each, so fewer).
    #[arg(long, default_value_t = 300)]
    pub exec_iters: u64,
    /// Accounts opened before measuring.
    #[arg(long, default_value_t = 100)]
    pub accounts: u64,
    /// The application's fsync policy.
    #[arg(long, value_enum, default_value_t = SyncMode::Off)]
    pub sync: SyncMode,
    /// The `bunker-accounts` binary (default: next to this one; build it with
    /// `cargo build --release -p bunker-accounts`).
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// Scratch directory (emptied first).
    #[arg(long, default_value = "/tmp/bunker-bench-accounts")]
    pub dir: PathBuf,
    /// Where the JSON results go.
    #[arg(long, default_value = "results/accounts.json")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

#[derive(Serialize, Debug)]
struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

#[derive(Serialize, Debug)]
struct CaseResult {
    /// `deposit` (writes one account), `transfer` (two accounts and the
    /// house, with the fee), `balance` (a read).
    command: &'static str,
    in_process_us: Percentiles,
    serve_us: Percentiles,
    exec_us: Percentiles,
    serve_to_in_process_p50: f64,
    exec_to_in_process_p50: f64,
    exec_to_spawn_only_p50: f64,
}

#[derive(Serialize, Debug)]
struct Report {
    benchmark: &'static str,
    command: String,
    sync: String,
    accounts: u64,
    iters: u64,
    exec_iters: u64,
    /// Spawning `bunker-accounts --version` and waiting for it.
    spawn_only_us: Percentiles,
    cases: Vec<CaseResult>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    let us = |v: u64| v as f64 / 1000.0;
    Percentiles {
        p50: us(h.value_at_quantile(0.5)),
        p90: us(h.value_at_quantile(0.9)),
        p99: us(h.value_at_quantile(0.99)),
        max: us(h.max()),
    }
}

fn record(h: &mut Histogram<u64>, started: Instant) -> Result<(), String> {
    let ns = (started.elapsed().as_nanos() as u64).max(1);
    h.record(ns).map_err(|e| format!("histogram: {e}"))
}

fn ratio(a: &Histogram<u64>, b: &Histogram<u64>) -> f64 {
    a.value_at_quantile(0.5) as f64 / b.value_at_quantile(0.5).max(1) as f64
}

/// Generates the commands of one case.
struct Workload {
    kind: &'static str,
    accounts: u64,
    rng: ChaCha8Rng,
}

impl Workload {
    fn next(&mut self) -> String {
        let a = self.rng.gen_range(0..self.accounts);
        match self.kind {
            "deposit" => format!("deposit a{a} 100"),
            "transfer" => {
                let b = (a + self.rng.gen_range(1..self.accounts)) % self.accounts;
                format!("transfer a{a} a{b} 100")
            }
            _ => format!("balance a{a}"),
        }
    }
}

/// A fresh data directory with `accounts` rich accounts.
fn prepare(dir: &Path, accounts: u64, sync: SyncMode) -> Result<(), String> {
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(|e| format!("emptying {}: {e}", dir.display()))?;
    }
    fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut store = Store::open(dir, sync).map_err(|e| e.to_string())?;
    for a in 0..accounts {
        let command = bunker_accounts::parse(format!("open a{a} 1000000000").as_bytes())
            .map_err(|e| e.to_string())?;
        let response = store
            .execute(&command, &mut SystemEnvironment)
            .map_err(|e| e.to_string())?;
        if response.status() != Status::Ok {
            return Err(format!("setup: {response:?}"));
        }
    }
    Ok(())
}

fn check(status: Status, command: &str) -> Result<(), String> {
    if status == Status::Ok {
        Ok(())
    } else {
        Err(format!("{command:?} answered status {status:?}"))
    }
}

fn in_process(
    dir: &Path,
    args: &AccountsArgs,
    workload: &mut Workload,
) -> Result<Histogram<u64>, String> {
    let mut store = Store::open(dir, args.sync).map_err(|e| e.to_string())?;
    let mut h = histogram();
    for i in 0..WARMUP_COMMANDS + args.iters {
        let text = workload.next();
        let started = Instant::now();
        let command = bunker_accounts::parse(text.as_bytes()).map_err(|e| e.to_string())?;
        let response = store
            .execute(&command, &mut SystemEnvironment)
            .map_err(|e| e.to_string())?;
        let _json = response.to_json();
        if i >= WARMUP_COMMANDS {
            record(&mut h, started)?;
        }
        check(response.status(), &text)?;
    }
    Ok(h)
}

struct Server {
    child: Child,
    stdin: BufWriter<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

fn spawn_serve(binary: &Path, dir: &Path, sync: SyncMode) -> Result<Server, String> {
    let sync = match sync {
        SyncMode::Off => "off",
        SyncMode::Full => "full",
    };
    let mut child = Command::new(binary)
        .args(["serve", "--sync", sync, "--data"])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning {}: {e}", binary.display()))?;
    let stdin = BufWriter::new(child.stdin.take().ok_or("no stdin")?);
    let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
    Ok(Server {
        child,
        stdin,
        stdout,
    })
}

fn serve(
    binary: &Path,
    dir: &Path,
    args: &AccountsArgs,
    workload: &mut Workload,
) -> Result<Histogram<u64>, String> {
    let mut server = spawn_serve(binary, dir, args.sync)?;
    let mut h = histogram();
    for i in 0..WARMUP_COMMANDS + args.iters {
        let text = workload.next();
        let started = Instant::now();
        frame::write_frame(&mut server.stdin, text.as_bytes()).map_err(|e| e.to_string())?;
        server.stdin.flush().map_err(|e| e.to_string())?;
        let payload = frame::read_frame(&mut server.stdout, RESPONSE_FRAME_BYTES_MAX)
            .map_err(|e| e.to_string())?
            .ok_or("serve closed its output")?;
        if i >= WARMUP_COMMANDS {
            record(&mut h, started)?;
        }
        let (status, _body) = frame::decode_response(&payload).map_err(|e| e.to_string())?;
        check(status, &text)?;
    }
    drop(server.stdin);
    let status = server.child.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("serve exited with {status}"));
    }
    Ok(h)
}

/// One `exec` run; returns its exit code.
fn exec_once(binary: &Path, dir: &Path, sync: SyncMode, text: &str) -> Result<i32, String> {
    let sync = match sync {
        SyncMode::Off => "off",
        SyncMode::Full => "full",
    };
    let mut child = Command::new(binary)
        .args(["exec", "--sync", sync, "--data"])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning {}: {e}", binary.display()))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    stdin
        .write_all(text.as_bytes())
        .map_err(|e| e.to_string())?;
    drop(stdin);
    let mut out = Vec::new();
    child
        .stdout
        .take()
        .ok_or("no stdout")?
        .read_to_end(&mut out)
        .map_err(|e| e.to_string())?;
    let status = child.wait().map_err(|e| e.to_string())?;
    status
        .code()
        .ok_or_else(|| format!("exec killed: {status}"))
}

fn exec(
    binary: &Path,
    dir: &Path,
    args: &AccountsArgs,
    workload: &mut Workload,
) -> Result<Histogram<u64>, String> {
    let mut h = histogram();
    for i in 0..WARMUP_COMMANDS.min(10) + args.exec_iters {
        let text = workload.next();
        let started = Instant::now();
        let code = exec_once(binary, dir, args.sync, &text)?;
        if i >= WARMUP_COMMANDS.min(10) {
            record(&mut h, started)?;
        }
        if code != 0 {
            return Err(format!("exec {text:?} exited {code}"));
        }
    }
    Ok(h)
}

fn spawn_only(binary: &Path, iters: u64) -> Result<Histogram<u64>, String> {
    let mut h = histogram();
    for _ in 0..iters {
        let started = Instant::now();
        let status = Command::new(binary)
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("spawning {}: {e}", binary.display()))?;
        record(&mut h, started)?;
        if !status.success() {
            return Err(format!("{} --version: {status}", binary.display()));
        }
    }
    Ok(h)
}

fn default_binary() -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = me.parent().ok_or("no directory for this executable")?;
    Ok(dir.join("bunker-accounts"))
}

pub fn run(args: AccountsArgs) -> Result<(), String> {
    if args.accounts < 2 || args.iters == 0 || args.exec_iters == 0 {
        return Err("need at least 2 accounts and 1 iteration".into());
    }
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None => default_binary()?,
    };
    if !binary.is_file() {
        return Err(format!(
            "{} not found: build it with `cargo build --release -p bunker-accounts` or pass --binary",
            binary.display()
        ));
    }
    let spawn = spawn_only(&binary, args.exec_iters)?;
    let mut cases = Vec::new();
    for kind in ["deposit", "transfer", "balance"] {
        let mut workload = Workload {
            kind,
            accounts: args.accounts,
            rng: ChaCha8Rng::seed_from_u64(args.seed),
        };
        let dir = args.dir.join(kind);
        eprintln!("accounts: {kind}: in process");
        prepare(&dir, args.accounts, args.sync)?;
        let in_process = in_process(&dir, &args, &mut workload)?;
        eprintln!("accounts: {kind}: serve");
        prepare(&dir, args.accounts, args.sync)?;
        let served = serve(&binary, &dir, &args, &mut workload)?;
        eprintln!("accounts: {kind}: exec");
        prepare(&dir, args.accounts, args.sync)?;
        let execed = exec(&binary, &dir, &args, &mut workload)?;
        cases.push(CaseResult {
            command: kind,
            serve_to_in_process_p50: ratio(&served, &in_process),
            exec_to_in_process_p50: ratio(&execed, &in_process),
            exec_to_spawn_only_p50: ratio(&execed, &spawn),
            in_process_us: percentiles(&in_process),
            serve_us: percentiles(&served),
            exec_us: percentiles(&execed),
        });
    }
    let report = Report {
        benchmark: "accounts",
        command: std::env::args().collect::<Vec<_>>().join(" "),
        sync: format!("{:?}", args.sync).to_lowercase(),
        accounts: args.accounts,
        iters: args.iters,
        exec_iters: args.exec_iters,
        spawn_only_us: percentiles(&spawn),
        cases,
    };
    eprintln!(
        "{:<9} {:>14} {:>10} {:>10} {:>9} {:>9}",
        "command", "in-process p50", "serve p50", "exec p50", "serve/in", "exec/in"
    );
    for c in &report.cases {
        eprintln!(
            "{:<9} {:>11.1} us {:>7.1} us {:>7.1} us {:>8.2}x {:>8.1}x",
            c.command,
            c.in_process_us.p50,
            c.serve_us.p50,
            c.exec_us.p50,
            c.serve_to_in_process_p50,
            c.exec_to_in_process_p50
        );
    }
    eprintln!(
        "spawn only (--version) p50 {:.1} us",
        report.spawn_only_us.p50
    );
    if let Some(parent) = args.out.parent() {
        fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    fs::write(&args.out, json).map_err(|e| e.to_string())?;
    eprintln!("accounts: results in {}", args.out.display());
    Ok(())
}
