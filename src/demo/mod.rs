//! `bunker demo`: five real servers on this machine, the accounts
//! application, concurrent clients, a crash, two servers destroyed at the
//! same instant, and a check that nothing acknowledged was lost.
//!
//! What it does, in order:
//! 1. makes a cluster CA and certificates (node and client), five
//!    configuration files and five data directories under one directory;
//! 2. starts five `bunker serve` processes (this same executable) running
//!    `bunker accounts serve` as the application, and waits for a leader;
//! 3. opens the accounts, then runs concurrent clients that transfer money
//!    with a unique reference on every transfer (and read balances) for the
//!    whole run; a third of the way through it kills one follower with
//!    SIGKILL and restarts it; two thirds of the way through it destroys two
//!    servers at the same instant (the leader and one follower: SIGKILL and
//!    their data directories deleted);
//! 4. checks, through the surviving three: every acknowledged transfer is
//!    recorded exactly once (`find <ref>`), no refused one is recorded, a
//!    transfer whose outcome the client never learned is recorded at most
//!    once, money is conserved (`audit`), and the surviving replicas hold the
//!    same state hash and byte-identical files;
//! 5. prints the figures (throughput, latency percentiles, longest time
//!    without an answer) and stops the servers.
//!
//! What it does not do: bring the destroyed servers back (that needs
//! membership change), or inject network faults (the fault-injection suite
//! does, inside a network namespace). Every wait is bounded.

use crate::client::{BlockingClient, ClientConfig, ClientError};
use crate::server::status::{fetch_status, render};
pub mod cluster;

use crate::check::FindResult;
use bytes::Bytes;
pub use cluster::{AppSpec, LocalCluster, SERVERS, WAIT_MAX};
use hdrhistogram::Histogram;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Opening balance of every account, in cents.
pub const OPENING_CENTS: u64 = 1_000_000;

#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Where the cluster lives; a fresh directory under the system's
    /// temporary directory when `None`.
    pub dir: Option<PathBuf>,
    /// Keep the directory (logs, data, certificates) at the end.
    pub keep: bool,
    pub clients: usize,
    pub accounts: usize,
    /// Length of the workload.
    pub seconds: u64,
    /// The `bunker` executable that the servers run.
    pub exe: PathBuf,
    /// Run the application once per command instead of as one process.
    pub exec_mode: bool,
    /// Skip the crash and the destruction (a calm run).
    pub calm: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo directory {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("certificates: {0}")]
    Certs(String),
    #[error("starting server {id}: {source}")]
    Spawn {
        id: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Cluster(String),
    #[error("client: {0}")]
    Client(#[from] ClientError),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DemoError + '_ {
    move |source| DemoError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What the demo found. `failures` is empty when every check passed.
#[derive(Debug, Default)]
pub struct DemoReport {
    pub issued: u64,
    pub acknowledged: u64,
    pub refused: u64,
    pub unknown: u64,
    pub reads: u64,
    pub failures: Vec<String>,
    pub text: String,
}

/// Runs the demo; the report says what was checked and what failed.
pub fn run(opts: &DemoOptions) -> Result<DemoReport, DemoError> {
    let dir = match &opts.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("bunker-demo-{}", std::process::id())),
    };
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
    }
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    say(&format!("demo directory: {}", dir.display()));
    let mut cluster =
        LocalCluster::create(&dir, &opts.exe, SERVERS, AppSpec::accounts(opts.exec_mode))?;
    let result = drive(&mut cluster, opts);
    cluster.stop_all();
    if !opts.keep {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        say(&format!("kept {} (logs: node-N.log)", dir.display()));
    }
    result
}

fn drive(cluster: &mut LocalCluster, opts: &DemoOptions) -> Result<DemoReport, DemoError> {
    cluster.start_all()?;
    let leader = cluster.wait_for_leader(&[])?;
    say(&format!("five servers up; server {leader} leads"));
    let client_cfg = cluster.client_config();
    let mut admin = BlockingClient::connect(client_cfg.clone())?;
    let names: Vec<String> = (0..opts.accounts).map(|i| format!("acct-{i}")).collect();
    for name in &names {
        let r = admin.call(Bytes::from(format!("open {name} {OPENING_CENTS}")))?;
        if r.status != 0 {
            return Err(DemoError::Cluster(format!(
                "opening {name}: {}",
                String::from_utf8_lossy(&r.body)
            )));
        }
    }
    say(&format!(
        "opened {} accounts of {} cents each",
        names.len(),
        OPENING_CENTS
    ));
    let work = Workload::start(&client_cfg, opts.clients, names.clone());
    let third = Duration::from_secs(opts.seconds) / 3;
    let started = Instant::now();
    let mut destroyed = Vec::new();
    if !opts.calm {
        work.wait(third, cluster);
        let follower = cluster.pick_follower(&[])?;
        say(&format!(
            "crash: SIGKILL server {follower}, then restart it"
        ));
        cluster.kill(follower);
        std::thread::sleep(Duration::from_millis(500));
        cluster.start(follower)?;
        work.wait(third.saturating_sub(Duration::from_millis(500)), cluster);
        let leader = cluster.wait_for_leader(&[])?;
        let follower = cluster.pick_follower(&[leader])?;
        say(&format!(
            "nuclear strike: servers {leader} (the leader) and {follower} destroyed at the same instant"
        ));
        destroyed = vec![leader, follower];
        cluster.destroy(&destroyed)?;
        let next = cluster.wait_for_leader(&destroyed)?;
        say(&format!("server {next} leads the three survivors"));
    }
    let rest = Duration::from_secs(opts.seconds).saturating_sub(started.elapsed());
    work.wait(rest, cluster);
    let outcome = work.stop();
    say(&format!(
        "workload done: {} transfers issued, {} acknowledged, {} refused by the bank, {} outcome unknown, {} reads",
        outcome.issued, outcome.acked.len(), outcome.refused.len(), outcome.unknown.len(), outcome.reads
    ));
    let mut report = DemoReport {
        issued: outcome.issued,
        acknowledged: outcome.acked.len() as u64,
        refused: outcome.refused.len() as u64,
        unknown: outcome.unknown.len() as u64,
        reads: outcome.reads,
        ..DemoReport::default()
    };
    for (id, status) in cluster.exited() {
        report.failures.push(format!(
            "SERVER {id} STOPPED ON ITS OWN ({status}); its log ends with:\n{}",
            cluster.log_tail(id, 20)
        ));
    }
    check_history(&client_cfg, &outcome, &mut report)?;
    check_audit(&mut admin, names.len() as u64, &mut report)?;
    check_replicas(cluster, &destroyed, &mut report)?;
    report.text = outcome.describe(opts.seconds, opts.calm);
    print!("{}", report.text);
    let rows: Vec<_> = cluster
        .addrs
        .iter()
        .map(|(id, a)| (*id, fetch_status(a.metrics, Duration::from_secs(2))))
        .collect();
    print!("{}", render(&rows));
    Ok(report)
}

pub(crate) fn say(line: &str) {
    use std::sync::OnceLock;
    static START: OnceLock<Instant> = OnceLock::new();
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    println!("[demo {t:6.1}s] {line}");
}

// --------------------------------------------------------------- workload

/// What the clients saw.
#[derive(Default)]
pub struct Outcome {
    pub issued: u64,
    pub reads: u64,
    /// References of transfers answered "done".
    pub acked: Vec<String>,
    /// References of transfers the bank refused (a valid answer: nothing happened).
    pub refused: Vec<String>,
    /// References of transfers whose outcome the client never learned.
    pub unknown: Vec<String>,
    pub latency_us: Option<Histogram<u64>>,
    /// Instants of every answer, to find the longest silence.
    pub answers: Vec<Duration>,
    pub elapsed: Duration,
    /// Every command with its invocation and completion times (since the
    /// workload started) and its parsed result: what `crate::check` checks.
    pub history: Vec<crate::check::Op>,
}

/// Counters the clients update as they go, for the progress display.
#[derive(Default)]
struct Progress {
    answered: AtomicU64,
    acked: AtomicU64,
    unknown: AtomicU64,
}

pub struct Workload {
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
    started: Instant,
    threads: Vec<std::thread::JoinHandle<Outcome>>,
}

impl Workload {
    pub fn start(cfg: &ClientConfig, clients: usize, names: Vec<String>) -> Workload {
        Workload::start_tagged(cfg, clients, names, "")
    }

    /// As `start`, with every transfer reference prefixed by `tag`, so
    /// that several workloads against one cluster never share references.
    pub fn start_tagged(
        cfg: &ClientConfig,
        clients: usize,
        names: Vec<String>,
        tag: &str,
    ) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let names = Arc::new(names);
        let progress = Arc::new(Progress::default());
        let threads = (0..clients)
            .map(|c| {
                let cfg = cfg.clone();
                let stop = stop.clone();
                let names = names.clone();
                let progress = progress.clone();
                let tag = format!("{tag}c{c}");
                std::thread::spawn(move || {
                    client_loop(c, &tag, cfg, &names, &stop, &progress, started)
                })
            })
            .collect();
        Workload {
            stop,
            progress,
            started,
            threads,
        }
    }

    /// Waits `duration`, printing one progress line a second.
    pub fn wait(&self, duration: Duration, cluster: &LocalCluster) {
        let until = Instant::now() + duration;
        while Instant::now() < until {
            std::thread::sleep(
                Duration::from_secs(1).min(until.saturating_duration_since(Instant::now())),
            );
            let leader = cluster
                .statuses()
                .into_iter()
                .find(|(_, s)| s.as_ref().is_ok_and(|s| s.role == "leader"))
                .map_or("none".to_string(), |(id, _)| id.to_string());
            let secs = self.started.elapsed().as_secs_f64();
            let answered = self.progress.answered.load(Ordering::Relaxed);
            say(&format!(
                "{secs:5.1} s  answered {answered:>7} ({:>5.0}/s)  transfers acknowledged {:>7}  outcome unknown {:>3}  leader {leader}",
                answered as f64 / secs.max(1e-9),
                self.progress.acked.load(Ordering::Relaxed),
                self.progress.unknown.load(Ordering::Relaxed),
            ));
        }
    }

    /// When the workload started: `Outcome::answers` and the history's
    /// times count from here.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Transfers acknowledged so far.
    pub fn acknowledged(&self) -> u64 {
        self.progress.acked.load(Ordering::Relaxed)
    }

    pub fn stop(self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Outcome {
            latency_us: Histogram::new(3).ok(),
            ..Outcome::default()
        };
        for t in self.threads {
            if let Ok(o) = t.join() {
                all.issued += o.issued;
                all.reads += o.reads;
                all.acked.extend(o.acked);
                all.refused.extend(o.refused);
                all.unknown.extend(o.unknown);
                all.answers.extend(o.answers);
                all.history.extend(o.history);
                if let (Some(a), Some(h)) = (all.latency_us.as_mut(), o.latency_us.as_ref()) {
                    let _ = a.add(h);
                }
            }
        }
        all.elapsed = self.started.elapsed();
        all.answers.sort();
        all
    }
}

fn client_loop(
    c: usize,
    tag: &str,
    cfg: ClientConfig,
    names: &[String],
    stop: &AtomicBool,
    progress: &Progress,
    started: Instant,
) -> Outcome {
    let mut out = Outcome {
        latency_us: Histogram::new(3).ok(),
        ..Outcome::default()
    };
    let mut client = match BlockingClient::connect(cfg) {
        Ok(client) => client,
        Err(e) => {
            say(&format!("client {c}: cannot connect: {e}"));
            return out;
        }
    };
    let mut rng = rand::random::<u64>() | 1;
    let mut next = move || {
        // xorshift: the workload's choices need not be reproducible.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let from = (next() % names.len() as u64) as usize;
        let to = (from + 1 + (next() % (names.len() as u64 - 1)) as usize) % names.len();
        let read = next() % 10 == 0;
        let (command, reference) = if read {
            (format!("balance {}", names[from]), None)
        } else {
            n += 1;
            let reference = format!("{tag}-{n}");
            let cents = 1 + next() % 5_000;
            (
                format!(
                    "transfer {} {} {cents} ref={reference}",
                    names[from], names[to]
                ),
                Some(reference),
            )
        };
        let sent = Instant::now();
        let invoke_ns = started.elapsed().as_nanos() as u64;
        let parsed = crate::check::Command::parse(&command);
        let result = client.call(Bytes::from(command));
        let took = sent.elapsed();
        if let Some(parsed) = parsed {
            let op_result = result
                .as_ref()
                .ok()
                .and_then(|r| crate::check::parse_response(out.history.len(), &r.body).ok());
            out.history.push(crate::check::Op {
                client: c as u64,
                invoke_ns,
                complete_ns: op_result
                    .as_ref()
                    .map(|_| started.elapsed().as_nanos() as u64),
                command: parsed,
                result: op_result,
            });
        }
        match (&result, reference) {
            (Ok(_), None) => out.reads += 1,
            (Ok(r), Some(reference)) if r.status == 0 => {
                progress.acked.fetch_add(1, Ordering::Relaxed);
                out.acked.push(reference)
            }
            (Ok(_), Some(reference)) => out.refused.push(reference),
            (Err(_), Some(reference)) => {
                progress.unknown.fetch_add(1, Ordering::Relaxed);
                out.unknown.push(reference)
            }
            (Err(_), None) => {}
        }
        if !read {
            out.issued += 1;
        }
        if result.is_ok() {
            if let Some(h) = out.latency_us.as_mut() {
                let _ = h.record(took.as_micros() as u64);
            }
            out.answers.push(started.elapsed());
            progress.answered.fetch_add(1, Ordering::Relaxed);
        } else if let Err(e) = result {
            say(&format!("client {c}: {e}"));
        }
    }
    out
}

impl Outcome {
    pub fn describe(&self, seconds: u64, calm: bool) -> String {
        let mut s = String::new();
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let answered = self.answers.len() as f64;
        let _ = writeln!(s, "\n== bunker demo: figures ==");
        let _ = writeln!(
            s,
            "workload: {seconds} s planned, {:.1} s run; {:.0} answered commands/s",
            secs,
            answered / secs
        );
        if let Some(h) = &self.latency_us {
            let _ = writeln!(
                s,
                "latency (answered commands, includes the failover waits): p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
                h.value_at_quantile(0.5) as f64 / 1e3,
                h.value_at_quantile(0.9) as f64 / 1e3,
                h.value_at_quantile(0.99) as f64 / 1e3,
                h.value_at_quantile(0.999) as f64 / 1e3,
                h.max() as f64 / 1e3
            );
        }
        let gap = self
            .answers
            .windows(2)
            .map(|w| w[1].saturating_sub(w[0]))
            .max()
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "longest time without any answer: {:.0} ms{}",
            gap.as_secs_f64() * 1e3,
            if calm {
                " (a calm run)"
            } else {
                " (the crash and the destruction fall in the run)"
            }
        );
        s
    }
}

// ----------------------------------------------------------------- checks

/// Every reference the workload recorded, looked up with `find`:
/// acknowledged ones exactly once, refused ones never, unknown ones at most
/// once.
pub fn check_history(
    cfg: &ClientConfig,
    outcome: &Outcome,
    report: &mut DemoReport,
) -> Result<(), DemoError> {
    let mut work: Vec<(&String, &'static str)> = Vec::new();
    work.extend(outcome.acked.iter().map(|r| (r, "acked")));
    work.extend(outcome.refused.iter().map(|r| (r, "refused")));
    work.extend(outcome.unknown.iter().map(|r| (r, "unknown")));
    let references = work.iter().map(|(r, _)| (*r).clone()).collect();
    let found = find_all(cfg, references).map_err(DemoError::Cluster)?;
    let mut problems = Vec::new();
    for (reference, kind) in &work {
        let count = found.get(*reference).map(|f| f.count);
        let ok = matches!(
            (*kind, count),
            ("acked", Some(1)) | ("refused", Some(0)) | ("unknown", Some(0 | 1))
        );
        if !ok {
            problems.push(format!(
                "LOST OR DUPLICATED: transfer {reference} ({kind}) found {count:?} times"
            ));
        }
    }
    if problems.is_empty() {
        say(&format!(
            "history: all {} acknowledged transfers present exactly once; {} refused absent; {} unknown at most once",
            outcome.acked.len(),
            outcome.refused.len(),
            outcome.unknown.len()
        ));
    }
    say(&format!(
        "history: {} references checked with `find`",
        work.len()
    ));
    report.failures.extend(problems);
    Ok(())
}

/// Parallel `find` clients.
const FIND_CLIENTS: usize = 8;

/// `find` of every reference, by `FIND_CLIENTS` clients in parallel.
pub fn find_all(
    cfg: &ClientConfig,
    references: Vec<String>,
) -> Result<HashMap<String, FindResult>, String> {
    let queue = Arc::new(Mutex::new(references));
    let found = Arc::new(Mutex::new(HashMap::new()));
    let threads: Vec<_> = (0..FIND_CLIENTS)
        .map(|_| {
            let (queue, found, cfg) = (queue.clone(), found.clone(), cfg.clone());
            std::thread::spawn(move || -> Result<(), String> {
                let mut client = BlockingClient::connect(cfg).map_err(|e| e.to_string())?;
                loop {
                    let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop();
                    let Some(reference) = next else {
                        return Ok(());
                    };
                    let r = client
                        .call(Bytes::from(format!("find {reference}")))
                        .map_err(|e| format!("find {reference}: {e}"))?;
                    let v: serde_json::Value = serde_json::from_slice(&r.body)
                        .map_err(|e| format!("find {reference}: not JSON: {e}"))?;
                    let count = v["count"]
                        .as_u64()
                        .ok_or_else(|| format!("find {reference}: no count in {v}"))?;
                    let fee_cents = v["txns"][0]["fee_cents"].as_u64();
                    found
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(reference, FindResult { count, fee_cents });
                }
            })
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| "a find client panicked".to_string())??;
    }
    let found = std::mem::take(&mut *found.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(found)
}

/// `audit` through the cluster: money conserved, ledger consistent, and
/// the total equal to the opening balances (the workload only transfers).
pub fn check_audit(
    admin: &mut BlockingClient,
    accounts: u64,
    report: &mut DemoReport,
) -> Result<(), DemoError> {
    let r = admin.call(Bytes::from_static(b"audit"))?;
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
    let expected = accounts * OPENING_CENTS;
    let total = v.get("total_cents").and_then(|t| t.as_u64());
    let conserved = v.get("conserved").and_then(|c| c.as_bool()) == Some(true);
    let consistent = v.get("ledger_consistent").and_then(|c| c.as_bool()) == Some(true);
    if conserved && consistent && total == Some(expected) {
        say(&format!("audit: money conserved ({expected} cents in {accounts} accounts and the house), ledger consistent"));
    } else {
        report.failures.push(format!(
            "AUDIT FAILED: expected total {expected}: {}",
            String::from_utf8_lossy(&r.body)
        ));
    }
    Ok(())
}

/// The survivors reach the same applied index and state hash, and their
/// committed directories hold the same bytes.
pub fn check_replicas(
    cluster: &LocalCluster,
    destroyed: &[u64],
    report: &mut DemoReport,
) -> Result<(), DemoError> {
    let deadline = Instant::now() + WAIT_MAX;
    let survivors: Vec<u64> = cluster
        .running()
        .into_iter()
        .filter(|id| !destroyed.contains(id))
        .collect();
    loop {
        let Some(settled) = settled_state(cluster, &survivors, deadline, report) else {
            return Ok(());
        };
        let mut files = Vec::new();
        for &id in &survivors {
            files.push((id, committed_files(&cluster.data_dir(id).join("state"))?));
        }
        // The status a server publishes is refreshed on its tick, so it
        // can lag its state by one tick: the last command answered may
        // apply on the leader while the files are read, before the
        // followers learn it committed. Then the copies were taken at
        // different indexes and prove nothing. Statuses that still agree
        // well after the read (many ticks) prove the files were read at
        // the settled index; otherwise read again.
        std::thread::sleep(STATUS_LAG_MAX);
        if current_states(cluster, &survivors).as_ref() != Some(&settled) {
            if Instant::now() > deadline {
                report
                    .failures
                    .push("REPLICAS KEPT CHANGING while their files were compared".into());
                return Ok(());
            }
            continue;
        }
        let (applied, _, hash) = &settled[0];
        say(&format!(
            "replicas: servers {survivors:?} all applied index {applied}, state hash {}",
            &hash[..16.min(hash.len())]
        ));
        let Some((first, reference)) = files.first() else {
            return Ok(());
        };
        for (id, theirs) in &files[1..] {
            if theirs != reference {
                report.failures.push(format!(
                    "FILES DIFFER between server {first} and server {id}"
                ));
            }
        }
        say(&format!(
            "replicas: committed files byte-identical on the survivors ({} files)",
            reference.len()
        ));
        return Ok(());
    }
}

/// Longer than many server ticks (5 ms by default): a published status
/// is at most one tick old.
const STATUS_LAG_MAX: Duration = Duration::from_millis(500);

/// (applied index, commit index, state hash) of each survivor, if every
/// one answered.
type States = Vec<(u64, u64, String)>;

fn current_states(cluster: &LocalCluster, survivors: &[u64]) -> Option<States> {
    let rows = cluster.statuses();
    let states: States = rows
        .iter()
        .filter(|(id, _)| survivors.contains(id))
        .filter_map(|(_, s)| s.as_ref().ok())
        .map(|s| (s.applied_index, s.commit_index, s.state_hash.clone()))
        .collect();
    (states.len() == survivors.len()).then_some(states)
}

/// Waits until every survivor applied its whole commit and all agree on
/// the applied index and state hash; `None` (with a failure recorded) if
/// that does not happen by `deadline`.
fn settled_state(
    cluster: &LocalCluster,
    survivors: &[u64],
    deadline: Instant,
    report: &mut DemoReport,
) -> Option<States> {
    loop {
        if let Some(states) = current_states(cluster, survivors) {
            let agreed = states.windows(2).all(|w| w[0] == w[1])
                && states.first().is_some_and(|s| s.0 == s.1);
            if agreed {
                return Some(states);
            }
        }
        if Instant::now() > deadline {
            report.failures.push(format!(
                "REPLICAS DID NOT CONVERGE:\n{}",
                render(&cluster.statuses())
            ));
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every file of the committed directory (`base.<gen>/`), by relative path.
/// The generation is the one the durable metadata names: a higher one can
/// exist while a snapshot is being received or before an old one is
/// removed, and is not the committed state.
fn committed_files(state: &Path) -> Result<BTreeMap<String, Vec<u8>>, DemoError> {
    let gen = crate::delta::RealTree::open(state)
        .ok()
        .and_then(|mut tree| crate::delta::meta::read(&mut tree).ok().flatten())
        .map(|record| record.gen);
    let mut files = BTreeMap::new();
    let Some(gen) = gen else {
        return Ok(files);
    };
    let base = state.join(format!("base.{gen}"));
    if base.is_dir() {
        collect(&base, &base, &mut files)?;
    }
    Ok(files)
}

fn collect(
    root: &Path,
    dir: &Path,
    files: &mut BTreeMap<String, Vec<u8>>,
) -> Result<(), DemoError> {
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(root, &path, files)?;
        } else {
            let bytes = std::fs::read(&path).map_err(io_err(&path))?;
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .display()
                .to_string();
            files.insert(rel, bytes);
        }
    }
    Ok(())
}
