//! `bunker-bench anchors`: Bunker against the systems a user would pick
//! instead, on the same machine, in the same run.
//!
//! What it does: for each system it starts the cluster itself (data in a
//! temporary directory, loopback ports only), runs closed-loop clients
//! (one connection and one operation in flight each) at 1, 8, 64 and 256
//! clients, each operation durably recording about 256 bytes, and records
//! throughput and hdrhistogram percentiles; then it kills the leader again
//! and again and measures the time until a command started after the kill
//! is committed. The systems:
//!
//! - `bunker-blob-5`, `bunker-accounts-5`: five real `bunker serve`
//!   processes on loopback, the minimal application and the accounts
//!   application;
//! - `bunker-blob-1`, `bunker-accounts-1`: one server, no replication,
//!   the same log and sync policy;
//! - `postgres`: PostgreSQL 15, a primary and 4 streaming standbys,
//!   `synchronous_commit = on`, `synchronous_standby_names = 'ANY 2 (s1,
//!   s2, s3, s4)'`, 256-byte rows inserted by prepared statements over
//!   persistent connections;
//! - `etcd`: etcd 3.4, five members on loopback, 256-byte values put
//!   through etcd's JSON gateway, one kept-alive HTTP/1.1 connection per
//!   client (`etcd.rs` says why not gRPC).
//!
//! PostgreSQL and etcd come from Debian's packages; the harness installs
//! them when missing and it runs as root (`--no-install` turns that off).
//! Output: a markdown table, JSON, and SVG plots (latency against
//! throughput) in `--out`, with the machine's description and its disk's
//! sync latency measured in the same run.
//!
//! What it does not do: measure catch-up of a replaced server (Bunker has
//! no membership change yet, and restarting a server empty under its old
//! identity is not safe: it would forget its votes), or fail PostgreSQL
//! over (it has no built-in failover; that takes Patroni or similar).

mod bunker_sys;
mod etcd;
mod http;
mod machine;
mod plot;
mod postgres;
mod report;

use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct AnchorsArgs {
    /// Client counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64,256")]
    clients: Vec<usize>,
    /// Seconds of load per point.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Systems: bunker-blob-5, bunker-accounts-5, bunker-blob-1,
    /// bunker-accounts-1, postgres, etcd.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "bunker-blob-5,bunker-accounts-5,bunker-blob-1,postgres,etcd"
    )]
    systems: Vec<String>,
    /// Leader kills per system that has a leader to kill.
    #[arg(long, default_value_t = 20)]
    failover_trials: usize,
    /// Where the table, the JSON and the plots go.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// The `bunker` executable (default: next to this one).
    #[arg(long)]
    bunker: Option<PathBuf>,
    /// Where the clusters live (default: a temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Do not install PostgreSQL or etcd; skip a system that is missing.
    #[arg(long)]
    no_install: bool,
    /// A quick run for CI: 1 and 8 clients, 1 s per point, 2 failovers.
    #[arg(long)]
    smoke: bool,
}

/// One measured point: a system at a client count.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    pub system: String,
    pub clients: usize,
    pub seconds: f64,
    pub operations: u64,
    pub errors: u64,
    pub per_second: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// Failover times of one system, in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Failover {
    pub system: String,
    pub trials_ms: Vec<f64>,
}

/// A running system under test.
pub trait System {
    fn name(&self) -> String;
    /// A new client connection (called once per client thread).
    fn connect(&self, client: usize) -> Result<Box<dyn Conn>, String>;
    /// The connection that measures failover: it retries quickly by itself
    /// or fails fast so that the harness retries.
    fn connect_prober(&self, client: usize) -> Result<Box<dyn Conn>, String> {
        self.connect(client)
    }
    /// Kills the leader with SIGKILL; returns the kill's instant, or
    /// `None` when the system has no leader to kill (failover not measured).
    fn kill_leader(&mut self) -> Result<Option<Instant>, String>;
    /// Restarts what `kill_leader` killed and waits until it caught up.
    fn recover(&mut self) -> Result<(), String>;
    fn stop(&mut self);
}

/// One client connection: `write` durably records about 256 bytes.
pub trait Conn: Send {
    fn write(&mut self, seq: u64) -> Result<(), String>;
}

/// 256 bytes naming the client and sequence number, padded.
pub fn payload(client: usize, seq: u64) -> Vec<u8> {
    let mut s = format!("c{client}-{seq}-").into_bytes();
    s.resize(256, b'x');
    s
}

pub fn run(mut args: AnchorsArgs) -> Result<(), String> {
    if args.smoke {
        args.clients = vec![1, 8];
        args.seconds = 1;
        args.failover_trials = 2;
    }
    let exe = crate::bunker_exe(&args.bunker)?;
    let root = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("bunker-anchors-{}", std::process::id()))
    });
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let machine = machine::describe(&root)?;
    println!("{}", machine.text());
    let mut points = Vec::new();
    let mut failovers = Vec::new();
    let mut skipped = Vec::new();
    for name in &args.systems {
        let dir = root.join(name);
        let started = match start(name, &dir, &exe, args.no_install) {
            Ok(s) => s,
            Err(Skip(why)) => {
                println!("SKIP {name}: {why}");
                skipped.push(format!("{name}: {why}"));
                continue;
            }
        };
        let mut system = started;
        for &clients in &args.clients {
            let p = measure(system.as_ref(), clients, Duration::from_secs(args.seconds))?;
            print_point(&p);
            points.push(p);
        }
        if let Some(f) = failover(system.as_mut(), args.failover_trials)? {
            failovers.push(f);
        }
        system.stop();
        let _ = std::fs::remove_dir_all(&dir);
    }
    let _ = std::fs::remove_dir_all(&root);
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    report::write(&args.out, &command, &machine, &points, &failovers, &skipped)?;
    plot::write(&args.out, &points)?;
    println!("results in {}", args.out.display());
    Ok(())
}

/// Why a system was not measured (not installed and not installable).
pub struct Skip(pub String);

impl From<String> for Skip {
    fn from(s: String) -> Skip {
        Skip(s)
    }
}

fn start(name: &str, dir: &Path, exe: &Path, no_install: bool) -> Result<Box<dyn System>, Skip> {
    std::fs::create_dir_all(dir).map_err(|e| Skip(format!("{}: {e}", dir.display())))?;
    match name {
        "bunker-blob-5" => Ok(Box::new(bunker_sys::Bunker::start(dir, exe, 5, "blob")?)),
        "bunker-accounts-5" => Ok(Box::new(bunker_sys::Bunker::start(
            dir, exe, 5, "accounts",
        )?)),
        "bunker-blob-1" => Ok(Box::new(bunker_sys::Bunker::start(dir, exe, 1, "blob")?)),
        "bunker-accounts-1" => Ok(Box::new(bunker_sys::Bunker::start(
            dir, exe, 1, "accounts",
        )?)),
        "postgres" => Ok(Box::new(postgres::Postgres::start(dir, no_install)?)),
        "etcd" => Ok(Box::new(etcd::Etcd::start(dir, no_install)?)),
        other => Err(Skip(format!("unknown system {other:?}"))),
    }
}

/// What closed-loop clients measured together.
pub struct Loop {
    /// Latency of every answered operation, in microseconds.
    pub histogram: Histogram<u64>,
    /// Operations that ended in an error.
    pub errors: u64,
    pub seconds: f64,
}

/// Closed-loop clients for `length`, one thread per connection: each sends
/// its next operation as soon as the previous one is answered.
pub fn closed_loop(conns: Vec<Box<dyn Conn>>, length: Duration) -> Result<Loop, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let stop = stop.clone();
            std::thread::spawn(move || -> Result<(Histogram<u64>, u64), String> {
                let mut h = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
                let (mut errors, mut seq) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let t = Instant::now();
                    match conn.write(seq) {
                        Ok(()) => {
                            let _ = h.record(t.elapsed().as_micros() as u64);
                        }
                        Err(_) => errors += 1,
                    }
                }
                Ok((h, errors))
            })
        })
        .collect();
    std::thread::sleep(length);
    stop.store(true, Ordering::Relaxed);
    let mut histogram = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    let mut errors = 0;
    for t in threads {
        let (h, e) = t
            .join()
            .map_err(|_| "a client thread panicked".to_string())??;
        histogram.add(&h).map_err(|e| e.to_string())?;
        errors += e;
    }
    Ok(Loop {
        histogram,
        errors,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// One point: `clients` closed-loop clients of `system` for `length`.
fn measure(system: &dyn System, clients: usize, length: Duration) -> Result<Point, String> {
    let mut conns = Vec::with_capacity(clients);
    for c in 0..clients {
        conns.push(system.connect(c)?);
    }
    let Loop {
        histogram: all,
        errors,
        seconds,
    } = closed_loop(conns, length)?;
    Ok(Point {
        system: system.name(),
        clients,
        seconds,
        operations: all.len(),
        errors,
        per_second: all.len() as f64 / seconds,
        p50_us: all.value_at_quantile(0.5),
        p99_us: all.value_at_quantile(0.99),
        p999_us: all.value_at_quantile(0.999),
        max_us: all.max(),
    })
}

/// `trials` times: kill the leader, then time one write started right
/// after the kill (the client retries across the election by itself).
fn failover(system: &mut dyn System, trials: usize) -> Result<Option<Failover>, String> {
    let mut times = Vec::new();
    for trial in 0..trials {
        let mut conn = system.connect_prober(10_000 + trial)?;
        let Some(killed) = system.kill_leader()? else {
            return Ok(None);
        };
        let deadline = killed + Duration::from_secs(60);
        let mut seq = 0;
        loop {
            seq += 1;
            match conn.write(seq) {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => {
                    return Err(format!(
                        "{}: no write within 60 s of the kill: {e}",
                        system.name()
                    ))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        let ms = killed.elapsed().as_secs_f64() * 1e3;
        println!("{} failover {}: {ms:.0} ms", system.name(), trial + 1);
        times.push(ms);
        system.recover()?;
    }
    Ok(Some(Failover {
        system: system.name(),
        trials_ms: times,
    }))
}

fn print_point(p: &Point) {
    println!(
        "{:<18} {:>3} clients: {:>8.0} ops/s  p50 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  max {:>7.2} ms  errors {}",
        p.system,
        p.clients,
        p.per_second,
        p.p50_us as f64 / 1e3,
        p.p99_us as f64 / 1e3,
        p.p999_us as f64 / 1e3,
        p.max_us as f64 / 1e3,
        p.errors
    );
}

/// Runs a command; its stderr in the error.
pub fn sh(program: &str, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether `binary --version` runs and succeeds.
fn runs(binary: &Path) -> bool {
    std::process::Command::new(binary)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs Debian packages when `binary` does not run (as root, unless
/// `no_install`).
pub fn ensure_installed(binary: &Path, packages: &[&str], no_install: bool) -> Result<(), Skip> {
    if runs(binary) {
        return Ok(());
    }
    if no_install {
        return Err(Skip(format!(
            "{} is not installed or does not run (--no-install; apt-get install {})",
            binary.display(),
            packages.join(" ")
        )));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Skip(format!(
            "{} is not installed and installing needs root: apt-get install {}",
            binary.display(),
            packages.join(" ")
        )));
    }
    println!("installing {} (apt-get)", packages.join(" "));
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend_from_slice(packages);
    let installed = std::process::Command::new("apt-get")
        .args(&args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map_err(|e| Skip(format!("apt-get: {e}")))?;
    if !installed.success() || !runs(binary) {
        return Err(Skip(format!(
            "apt-get install {} did not provide {}",
            packages.join(" "),
            binary.display()
        )));
    }
    Ok(())
}

/// `count` free TCP ports on 127.0.0.1 (held together, then released).
pub fn free_ports(count: usize) -> Result<Vec<u16>, String> {
    let held: Vec<_> = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    held.iter()
        .map(|l| l.local_addr().map(|a| a.port()).map_err(|e| e.to_string()))
        .collect()
}

/// Polls `ready` every 100 ms until it holds or `limit` passes.
pub fn wait_until(
    what: &str,
    limit: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("{what}: not ready after {} s", limit.as_secs()))
}
