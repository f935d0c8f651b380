//! `bunker-bench e2e`: end-to-end throughput and latency of real clusters.
//!
//! For each application (`blob`: every command changes 256 bytes of one
//! file; `accounts`: a SQLite transfer) it starts, in the same run, a
//! five-server cluster and a one-server cluster (no replication, the same
//! log, the same sync policy, the same TLS path) of real `bunker serve`
//! processes on loopback, then for each client count runs closed-loop
//! clients (one TLS connection each, one command in flight each) against
//! the five-server cluster and then the one-server cluster, alternating, and
//! prints throughput, hdrhistogram percentiles and the ratio
//! five-server / one-server. JSON with every figure goes to `--json`.
//!
//! What it does not do: compare with other systems (`bunker-bench anchors`
//! does) or inject faults.

use crate::anchors::{closed_loop, Conn, Loop};
use bunker::client::{BlockingClient, ClientConfig};
use bunker::demo::{AppSpec, LocalCluster};
use bytes::Bytes;
use clap::Args;
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct E2eArgs {
    /// Client counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    clients: Vec<usize>,
    /// Seconds of load per point.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Applications: blob, accounts.
    #[arg(long, value_delimiter = ',', default_value = "blob,accounts")]
    apps: Vec<String>,
    /// The `bunker` executable (default: next to this one).
    #[arg(long)]
    bunker: Option<PathBuf>,
    /// Where the clusters live (default: a temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Write every figure as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A quick run for CI: 1 and 4 clients, 2 s per point, blob only.
    #[arg(long)]
    smoke: bool,
}

#[derive(Debug, Serialize)]
struct Point {
    app: String,
    servers: u64,
    clients: usize,
    seconds: f64,
    commands: u64,
    errors: u64,
    per_second: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    /// Where a command's time went on the leader (means over the point).
    profile: Vec<Stage>,
}

/// One stage of a command on the leader: its mean over a point.
#[derive(Clone, Debug, Serialize)]
struct Stage {
    stage: &'static str,
    mean_ms: f64,
    count: u64,
}

/// The leader's histograms (`name -> (sum seconds, count)`), from its
/// `/metrics` page.
fn scrape(addr: std::net::SocketAddr) -> Result<HashMap<String, (f64, f64)>, String> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("metrics {addr}: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
        .map_err(|e| format!("metrics {addr}: {e}"))?;
    let mut text = String::new();
    conn.take(8 << 20)
        .read_to_string(&mut text)
        .map_err(|e| format!("metrics {addr}: {e}"))?;
    let mut out: HashMap<String, (f64, f64)> = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        if let Some(base) = name.strip_suffix("_sum") {
            out.entry(base.to_string()).or_default().0 += value;
        } else if let Some(base) = name.strip_suffix("_count") {
            out.entry(base.to_string()).or_default().1 += value;
        }
    }
    Ok(out)
}

/// The stages of a command on the leader, from two scrapes of its
/// histograms around a point (means of what happened in between).
fn profile(
    before: &HashMap<String, (f64, f64)>,
    after: &HashMap<String, (f64, f64)>,
) -> Vec<Stage> {
    const STAGES: &[(&str, &str)] = &[
        ("queue", "bunker_queue_seconds"),
        ("execute (application)", "bunker_execute_seconds"),
        ("capture + propose", "bunker_capture_seconds"),
        (
            "commit wait (log + replication)",
            "bunker_commit_wait_seconds",
        ),
        ("  of which: a log flush", "bunker_sync_latency_seconds"),
        ("total (arrival to reply)", "bunker_commit_latency_seconds"),
    ];
    STAGES
        .iter()
        .map(|&(stage, metric)| {
            let (s0, c0) = before.get(metric).copied().unwrap_or_default();
            let (s1, c1) = after.get(metric).copied().unwrap_or_default();
            let count = (c1 - c0).max(0.0);
            Stage {
                stage,
                mean_ms: if count > 0.0 {
                    (s1 - s0) * 1e3 / count
                } else {
                    0.0
                },
                count: count as u64,
            }
        })
        .collect()
}

pub fn run(mut args: E2eArgs) -> Result<(), String> {
    if args.smoke {
        args.clients = vec![1, 4];
        args.seconds = 2;
        args.apps = vec!["blob".into()];
    }
    let exe = crate::bunker_exe(&args.bunker)?;
    if !exe.exists() {
        return Err(format!(
            "{} not found: build it first (cargo build --release -p bunker) or pass --bunker",
            exe.display()
        ));
    }
    let root = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("bunker-e2e-{}", std::process::id())));
    let mut points = Vec::new();
    for app in &args.apps {
        if app != "blob" && app != "accounts" {
            return Err(format!("unknown application {app:?} (blob, accounts)"));
        }
        let mut five = start(&root.join(format!("{app}-5")), &exe, 5, app)?;
        let mut one = start(&root.join(format!("{app}-1")), &exe, 1, app)?;
        for &clients in &args.clients {
            for cluster in [&mut five, &mut one] {
                let servers = cluster.addrs.len() as u64;
                let point = measure(
                    cluster,
                    app,
                    servers,
                    clients,
                    Duration::from_secs(args.seconds),
                )?;
                print_point(&point);
                points.push(point);
            }
            let n = points.len();
            let (p5, p1) = (&points[n - 2], &points[n - 1]);
            println!(
                "  ratio 5 servers / 1 server at {clients} clients: throughput {:.2}x, p50 {:.2}x, p99 {:.2}x",
                p5.per_second / p1.per_second.max(1e-9),
                p5.p50_us as f64 / p1.p50_us.max(1) as f64,
                p5.p99_us as f64 / p1.p99_us.max(1) as f64
            );
        }
        five.stop_all();
        one.stop_all();
    }
    let _ = std::fs::remove_dir_all(&root);
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&points).map_err(|e| e.to_string())?;
        std::fs::write(path, json).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

pub(crate) fn start(
    dir: &std::path::Path,
    exe: &std::path::Path,
    servers: u64,
    app: &str,
) -> Result<LocalCluster, String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let spec = AppSpec::builtin(app, false);
    let mut cluster = LocalCluster::create(dir, exe, servers, spec).map_err(|e| e.to_string())?;
    cluster.start_all().map_err(|e| e.to_string())?;
    cluster.wait_for_leader(&[]).map_err(|e| e.to_string())?;
    if app == "accounts" {
        open_accounts(&cluster)?;
    }
    Ok(cluster)
}

/// Opens the 256 accounts the accounts commands move money between.
pub(crate) fn open_accounts(cluster: &LocalCluster) -> Result<(), String> {
    let mut admin = BlockingClient::connect(cluster.client_config()).map_err(|e| e.to_string())?;
    for i in 0..256 {
        admin
            .call(Bytes::from(format!("open a{i} 1000000000")))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

pub(crate) fn command(app: &str, client: usize, n: u64) -> Bytes {
    match app {
        "accounts" => {
            // Each client moves money between its own pair of accounts, so
            // that no transfer is refused for lack of funds.
            let from = (client * 2) % 256;
            let (a, b) = if n.is_multiple_of(2) {
                (from, from + 1)
            } else {
                (from + 1, from)
            };
            Bytes::from(format!("transfer a{a} a{b} 1 ref=c{client}-{n}"))
        }
        _ => {
            let mut s = format!("c{client}-{n}-");
            while s.len() < 256 {
                s.push('x');
            }
            Bytes::from(s)
        }
    }
}

/// One client of the e2e benchmark: a command of `app` per write.
struct AppConn {
    client: BlockingClient,
    app: String,
    id: usize,
}

impl Conn for AppConn {
    fn write(&mut self, seq: u64) -> Result<(), String> {
        self.client
            .call(command(&self.app, self.id, seq))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

fn measure(
    cluster: &LocalCluster,
    app: &str,
    servers: u64,
    clients: usize,
    length: Duration,
) -> Result<Point, String> {
    let cfg: ClientConfig = cluster.client_config();
    let mut conns: Vec<Box<dyn Conn>> = Vec::with_capacity(clients);
    for id in 0..clients {
        let client = BlockingClient::connect(cfg.clone()).map_err(|e| e.to_string())?;
        let app = app.to_string();
        conns.push(Box::new(AppConn { client, app, id }));
    }
    let leader = cluster.wait_for_leader(&[]).map_err(|e| e.to_string())?;
    let metrics = cluster.addrs[&leader].metrics;
    let before = scrape(metrics)?;
    let Loop {
        histogram: all,
        errors,
        seconds,
    } = closed_loop(conns, length)?;
    // The leader may have changed meanwhile: then the profile is partial.
    let profile = profile(&before, &scrape(metrics).unwrap_or_default());
    Ok(Point {
        app: app.to_string(),
        servers,
        clients,
        seconds,
        commands: all.len(),
        errors,
        per_second: all.len() as f64 / seconds,
        p50_us: all.value_at_quantile(0.5),
        p99_us: all.value_at_quantile(0.99),
        p999_us: all.value_at_quantile(0.999),
        max_us: all.max(),
        profile,
    })
}

fn print_point(p: &Point) {
    println!(
        "{:<9} {} server(s) {:>3} clients: {:>8.0} cmd/s  p50 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  max {:>7.2} ms  errors {}",
        p.app,
        p.servers,
        p.clients,
        p.per_second,
        p.p50_us as f64 / 1e3,
        p.p99_us as f64 / 1e3,
        p.p999_us as f64 / 1e3,
        p.max_us as f64 / 1e3,
        p.errors
    );
    let stages: Vec<String> = p
        .profile
        .iter()
        .map(|s| format!("{} {:.3}", s.stage.trim(), s.mean_ms))
        .collect();
    println!("    leader, mean ms per command: {}", stages.join(" | "));
}
