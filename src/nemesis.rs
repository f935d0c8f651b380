//! The randomized nemesis: five real `bunker serve` processes in
//! a network namespace of their own, a seeded sequence of faults against
//! them while clients transfer money, and every check of the history after
//! each epoch.
//!
//! What it does: `run` creates the namespace (`faultnet`), starts the
//! cluster inside it, and splits the run into epochs. Each epoch opens fresh
//! accounts, starts a workload whose references carry the epoch's tag, and
//! injects faults chosen by a ChaCha RNG seeded with `seed` (the same seed
//! gives the same sequence of faults, durations and victims by role; the
//! timing of real processes is not reproducible). Between faults the
//! network heals and every server runs. At the end of an epoch it stops the
//! workload, `find`s every reference, and checks: every acknowledged
//! transfer present exactly once, refused ones absent, unknown ones at most
//! once, money conserved (audit), the history linearizable against the
//! accounts model (`crate::check`), replicas at the same index with the
//! same state hash and byte-identical committed files, and no server that
//! stopped on its own. It measures availability: the fraction of seconds,
//! within windows where 3 or more servers could exchange messages (after a
//! grace for the election), in which some command was answered, and the
//! longest such stretch without an answer.
//!
//! What it does not do: destroy servers (without membership change a
//! destroyed server cannot be replaced, and two losses leave no room for
//! another fault; `tests/cluster.rs` and the demo destroy two), fill disks
//! (a scenario of its own in `tests/faults.rs`), or touch the host's
//! network: every rule lives inside the namespace.
//!
//! Invariants: every fault is undone before the next one starts; every wait
//! is bounded; an epoch's checks run on a healed network with all five
//! servers running.

use crate::check::{check_invariants, check_linearizable, resolve, Budget, Op, Verdict};
use crate::client::{BlockingClient, ClientConfig};
use crate::demo::cluster::server_ip;
use crate::demo::{
    check_audit, check_replicas, find_all, say, AppSpec, DemoError, DemoReport, LocalCluster,
    Workload, OPENING_CENTS,
};
use crate::faultnet::{NetError, Netns};
use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Servers of the cluster under attack. `plan` cuts the shuffled list
/// into fixed groups (2 | 1 | 2, 2 | 2 | 1) that assume exactly five.
const SERVERS: u64 = 5;
const _: () = assert!(SERVERS == 5, "fault plans are written for five servers");
/// Time after a fault starts, or ends, before commands are expected again:
/// an election (100 to 200 ms, twice for a PreVote round) plus the clients'
/// retry backoff.
const GRACE: Duration = Duration::from_millis(2000);
/// The network stays whole this long after each epoch's last fault before
/// the workload stops.
const SETTLE: Duration = Duration::from_secs(3);
/// Bounds on one fault's and one calm stretch's length.
const FAULT_MS: (u64, u64) = (1_000, 6_000);
const CALM_MS: (u64, u64) = (500, 2_500);
/// A flapping link changes state this often.
const FLAP_MS: (u64, u64) = (150, 700);
/// A linearizability search gives up (verdict "undecided") after this.
const SEARCH_TIME_MAX: Duration = Duration::from_secs(120);

#[derive(Clone, Debug)]
pub struct NemesisOptions {
    pub seed: u64,
    /// Total length of the run (epochs are started while time remains).
    pub seconds: u64,
    /// Length of the fault phase of one epoch.
    pub epoch_seconds: u64,
    pub clients: usize,
    /// Accounts opened per epoch.
    pub accounts: usize,
    /// Faults to draw from; every kind when empty.
    pub faults: Vec<FaultKind>,
    /// Where the cluster lives (a fresh temporary directory when `None`).
    pub dir: Option<PathBuf>,
    /// The `bunker` executable the servers run.
    pub exe: PathBuf,
    /// Extra server configuration (TOML), e.g. a deliberate bug.
    pub config_extra: String,
}

#[derive(Debug, thiserror::Error)]
pub enum NemesisError {
    #[error("network: {0}")]
    Net(#[from] NetError),
    #[error("cluster: {0}")]
    Cluster(#[from] DemoError),
    #[error("the nemesis thread panicked: {0}")]
    Panicked(String),
}

/// The faults the nemesis draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// Two servers against three, the leader on a random side.
    Partition,
    /// Three groups, 2 | 2 | 1: no majority anywhere (nothing may be
    /// answered; everything must resume after).
    Split,
    /// The leader alone.
    LeaderIsolated,
    /// Each server reaches only its two neighbours on a ring.
    Ring,
    /// Two halves joined by one server.
    Bridge,
    /// One server reaches only one peer.
    OnePeer,
    /// The leader sends but does not receive.
    DeafLeader,
    /// The leader receives but does not send.
    MuteLeader,
    /// Random loss on every directed link, each its own probability.
    Loss,
    /// Loss on one direction of one server pair only.
    OneWayLoss,
    /// A partition that comes and goes every few hundred milliseconds.
    Flapping,
    /// SIGKILL of one server (the leader half the time), restarted later.
    Kill,
    /// SIGKILL of two servers at the same instant, restarted later.
    KillTwo,
    /// SIGSTOP of one server (the leader half the time) for longer than an
    /// election timeout, then SIGCONT.
    Pause,
}

impl FaultKind {
    pub const ALL: [FaultKind; 14] = [
        FaultKind::Partition,
        FaultKind::Split,
        FaultKind::LeaderIsolated,
        FaultKind::Ring,
        FaultKind::Bridge,
        FaultKind::OnePeer,
        FaultKind::DeafLeader,
        FaultKind::MuteLeader,
        FaultKind::Loss,
        FaultKind::OneWayLoss,
        FaultKind::Flapping,
        FaultKind::Kill,
        FaultKind::KillTwo,
        FaultKind::Pause,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Partition => "partition",
            FaultKind::Split => "split",
            FaultKind::LeaderIsolated => "leader-isolated",
            FaultKind::Ring => "ring",
            FaultKind::Bridge => "bridge",
            FaultKind::OnePeer => "one-peer",
            FaultKind::DeafLeader => "deaf-leader",
            FaultKind::MuteLeader => "mute-leader",
            FaultKind::Loss => "loss",
            FaultKind::OneWayLoss => "one-way-loss",
            FaultKind::Flapping => "flapping",
            FaultKind::Kill => "kill",
            FaultKind::KillTwo => "kill-two",
            FaultKind::Pause => "pause",
        }
    }
}

impl std::str::FromStr for FaultKind {
    type Err = String;
    fn from_str(s: &str) -> Result<FaultKind, String> {
        FaultKind::ALL
            .iter()
            .copied()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = FaultKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown fault {s:?}; known: {}", names.join(", "))
            })
    }
}

/// What the run found and measured.
#[derive(Debug, Default)]
pub struct NemesisReport {
    pub failures: Vec<String>,
    pub epochs: u64,
    pub faults: u64,
    pub issued: u64,
    pub acknowledged: u64,
    pub refused: u64,
    pub unknown: u64,
    pub reads: u64,
    /// Operations proven linearizable, and epochs whose search ran out of
    /// budget (proving nothing either way).
    pub linearizable_ops: u64,
    pub undecided_epochs: u64,
    pub availability: Availability,
    pub wall: Duration,
    pub text: String,
}

/// Seconds (within windows where a majority could talk, after the grace)
/// with and without an answer, overall and per fault kind.
#[derive(Debug, Default, Clone)]
pub struct Availability {
    pub slots: u64,
    pub answered: u64,
    /// Commands invoked inside such windows, and how many of them got an
    /// answer (the client library retries for up to its total timeout; an
    /// unanswered command ended in "unavailable, outcome unknown").
    pub commands: u64,
    pub commands_answered: u64,
    pub gap_max: Duration,
    pub by_kind: std::collections::BTreeMap<&'static str, (u64, u64)>,
}

impl Availability {
    pub fn fraction(&self) -> f64 {
        if self.slots == 0 {
            1.0
        } else {
            self.answered as f64 / self.slots as f64
        }
    }
}

/// One stretch of the run: a fault or a calm, when it held, and whether 3
/// or more servers could exchange messages during it.
#[derive(Clone, Debug)]
struct Window {
    kind: &'static str,
    start: Duration,
    end: Duration,
    majority: bool,
}

/// Runs the nemesis in a namespace of its own (needs root, `ip`,
/// `iptables`; see `faultnet::available`).
pub fn run(opts: &NemesisOptions) -> Result<NemesisReport, NemesisError> {
    // Several runs may share a process (the tests): each its own name.
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let run_id = format!(
        "{}-{}",
        std::process::id() % 100_000,
        RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let ns = Netns::create(&format!("bk-nem-{run_id}"))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            ns.enter_this_thread()?;
            run_inside(&ns, opts, &run_id)
        })
        .join()
        .map_err(|e| {
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            NemesisError::Panicked(why)
        })?
    })
}

fn run_inside(
    ns: &Netns,
    opts: &NemesisOptions,
    run_id: &str,
) -> Result<NemesisReport, NemesisError> {
    let began = Instant::now();
    let dir = opts
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("bunker-nemesis-{run_id}")));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cluster = LocalCluster::create(&dir, &opts.exe, SERVERS, AppSpec::accounts(false))?;
    if !opts.config_extra.is_empty() {
        cluster.append_config(&opts.config_extra)?;
    }
    cluster.start_all()?;
    cluster.wait_for_leader(&[])?;
    say(&format!(
        "nemesis: seed {}, {} s in epochs of {} s, {} clients, cluster in {}",
        opts.seed,
        opts.seconds,
        opts.epoch_seconds,
        opts.clients,
        dir.display()
    ));
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let kinds: Vec<FaultKind> = if opts.faults.is_empty() {
        FaultKind::ALL.to_vec()
    } else {
        opts.faults.clone()
    };
    let cfg = cluster.client_config();
    let mut admin = BlockingClient::connect(cfg.clone()).map_err(DemoError::from)?;
    let mut report = NemesisReport::default();
    let deadline = began + Duration::from_secs(opts.seconds);
    let mut accounts_total = 0u64;
    let mut epoch = 0u64;
    while epoch == 0 || Instant::now() + Duration::from_secs(opts.epoch_seconds) <= deadline {
        let names: Vec<String> = (0..opts.accounts.max(2))
            .map(|i| format!("e{epoch}-a{i}"))
            .collect();
        for n in &names {
            let r = admin
                .call(Bytes::from(format!("open {n} {OPENING_CENTS}")))
                .map_err(DemoError::from)?;
            if r.status != 0 {
                report.failures.push(format!(
                    "epoch {epoch}: opening {n} failed: {}",
                    String::from_utf8_lossy(&r.body)
                ));
            }
        }
        accounts_total += names.len() as u64;
        let e = EpochRun {
            ns,
            cfg: &cfg,
            epoch,
            seconds: opts.epoch_seconds,
            clients: opts.clients.max(1),
            kinds: &kinds,
        };
        e.run(
            &mut cluster,
            &mut rng,
            &mut admin,
            names,
            accounts_total,
            &mut report,
        )?;
        epoch += 1;
        if !report.failures.is_empty() {
            say("nemesis: stopping at the first epoch with a failure");
            break;
        }
    }
    report.epochs = epoch;
    report.wall = began.elapsed();
    report.text = describe(opts, &report);
    cluster.stop_all();
    if report.failures.is_empty() && opts.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(report)
}

struct EpochRun<'a> {
    ns: &'a Netns,
    cfg: &'a ClientConfig,
    epoch: u64,
    seconds: u64,
    clients: usize,
    kinds: &'a [FaultKind],
}

impl EpochRun<'_> {
    fn run(
        &self,
        cluster: &mut LocalCluster,
        rng: &mut ChaCha8Rng,
        admin: &mut BlockingClient,
        names: Vec<String>,
        accounts_total: u64,
        report: &mut NemesisReport,
    ) -> Result<(), NemesisError> {
        let epoch = self.epoch;
        let work =
            Workload::start_tagged(self.cfg, self.clients, names.clone(), &format!("e{epoch}"));
        let t0 = work.started();
        let until = t0 + Duration::from_secs(self.seconds);
        let mut windows = Vec::new();
        while Instant::now() < until {
            let kind = self.kinds[rng.gen_range(0..self.kinds.len())];
            let hold = Duration::from_millis(rng.gen_range(FAULT_MS.0..=FAULT_MS.1));
            let start = t0.elapsed();
            let majority = inject(self.ns, cluster, rng, kind, hold)?;
            windows.push(Window {
                kind: kind.name(),
                start,
                end: t0.elapsed(),
                majority,
            });
            report.faults += 1;
            let calm = Duration::from_millis(rng.gen_range(CALM_MS.0..=CALM_MS.1));
            let start = t0.elapsed();
            std::thread::sleep(calm);
            windows.push(Window {
                kind: "calm",
                start,
                end: t0.elapsed(),
                majority: true,
            });
        }
        let start = t0.elapsed();
        std::thread::sleep(SETTLE);
        windows.push(Window {
            kind: "calm",
            start,
            end: t0.elapsed(),
            majority: true,
        });
        let outcome = work.stop();
        let initial: HashMap<String, u64> =
            names.iter().map(|n| (n.clone(), OPENING_CENTS)).collect();
        let (failures, verdict) =
            check_healed(cluster, admin, accounts_total, &outcome.history, &initial)?;
        let failures: Vec<String> = failures
            .into_iter()
            .map(|f| format!("epoch {epoch}: {f}"))
            .collect();
        report.linearizable_ops += verdict.linearizable_ops;
        report.undecided_epochs += u64::from(verdict.undecided);
        let avail = availability(&windows, &outcome.answers, &outcome.history);
        merge(&mut report.availability, &avail);
        report.issued += outcome.issued;
        report.acknowledged += outcome.acked.len() as u64;
        report.refused += outcome.refused.len() as u64;
        report.unknown += outcome.unknown.len() as u64;
        report.reads += outcome.reads;
        let kinds: BTreeSet<&str> = windows
            .iter()
            .map(|w| w.kind)
            .filter(|k| *k != "calm")
            .collect();
        say(&format!(
            "epoch {epoch}: {} faults ({}), {} transfers acknowledged, {} unknown, {} refused; {}; available {}/{} s, longest gap {:.1} s; {}",
            windows.iter().filter(|w| w.kind != "calm").count(),
            kinds.into_iter().collect::<Vec<_>>().join(" "),
            outcome.acked.len(),
            outcome.unknown.len(),
            outcome.refused.len(),
            if verdict.undecided { "linearizability undecided".to_string() } else { format!("{} ops linearizable", verdict.linearizable_ops) },
            avail.answered,
            avail.slots,
            avail.gap_max.as_secs_f64(),
            if failures.is_empty() { "all checks pass" } else { "CHECKS FAILED" },
        ));
        report.failures.extend(failures);
        Ok(())
    }
}

/// Every check after a run, on a healed network: the survivors' replicas
/// identical (index, state hash, committed files), no server stopped on its
/// own (each is named with its log's tail, then started again), the audit
/// over `accounts_total` opened accounts (money conserved, ledger
/// consistent), and `history` (see [`verify_history`]) from `initial`.
/// Returns the failures and the history's verdict.
pub fn check_healed(
    cluster: &mut LocalCluster,
    admin: &mut BlockingClient,
    accounts_total: u64,
    history: &[Op],
    initial: &HashMap<String, u64>,
) -> Result<(Vec<String>, HistoryVerdict), DemoError> {
    let mut checks = DemoReport::default();
    check_replicas(cluster, &[], &mut checks)?;
    for (id, status) in cluster.exited() {
        checks.failures.push(format!(
            "server {id} stopped on its own ({status}):\n{}",
            cluster.log_tail(id, 20)
        ));
        cluster.start(id)?;
    }
    if let Err(e) = check_audit(admin, accounts_total, &mut checks) {
        checks
            .failures
            .push(format!("audit unanswered on a healed network: {e}"));
    }
    let verdict = verify_history(&cluster.client_config(), history, initial);
    checks.failures.extend(verdict.failures.iter().cloned());
    Ok((checks.failures, verdict))
}

/// The checks of one history, after the run.
#[derive(Debug, Default)]
pub struct HistoryVerdict {
    pub failures: Vec<String>,
    pub linearizable_ops: u64,
    /// The linearizability search ran out of budget.
    pub undecided: bool,
}

/// `find`s every reference of `history` (in parallel), then checks the
/// invariants (acknowledged once, refused absent, unknown at most once,
/// fees within the rule) and linearizability against the accounts model,
/// starting from `initial` balances (money conservation over the whole
/// bank is the audit's job).
pub fn verify_history(
    cfg: &ClientConfig,
    history: &[Op],
    initial: &HashMap<String, u64>,
) -> HistoryVerdict {
    let mut verdict = HistoryVerdict::default();
    let references: BTreeSet<String> = history
        .iter()
        .filter_map(|op| op.command.reference().map(str::to_string))
        .collect();
    let finds = match find_all(cfg, references.into_iter().collect()) {
        Ok(f) => f,
        Err(e) => {
            verdict
                .failures
                .push(format!("finding the references: {e}"));
            return verdict;
        }
    };
    let total: u64 = initial.values().sum();
    verdict.failures.extend(
        check_invariants(history, &finds, total, None)
            .iter()
            .map(|v| format!("invariant: {v:?}")),
    );
    let resolved = match resolve(history, &finds) {
        Ok(r) => r,
        Err(e) => {
            verdict
                .failures
                .push(format!("history cannot be resolved: {e}"));
            return verdict;
        }
    };
    let mut initial = initial.clone();
    initial.entry("house".into()).or_insert(0);
    let budget = Budget {
        steps_max: 50_000_000,
        deadline: Some(Instant::now() + SEARCH_TIME_MAX),
    };
    match check_linearizable(&resolved, &initial, &budget) {
        Verdict::Linearizable => verdict.linearizable_ops = resolved.len() as u64,
        Verdict::NotLinearizable { witness } => verdict
            .failures
            .push(format!("NOT LINEARIZABLE: {witness:?}")),
        Verdict::Unknown { .. } => verdict.undecided = true,
    }
    verdict
}

// ----------------------------------------------------------------- faults

/// What one fault does, decided before anything is touched: a pure
/// function of the kind, the RNG and who leads (unit-tested for every
/// kind).
#[derive(Debug, Default)]
struct Plan {
    /// Directed links whose every packet is dropped.
    cut: BTreeSet<(u64, u64)>,
    /// Directed links that drop packets with a probability.
    loss: Vec<(u64, u64, f64)>,
    kill: BTreeSet<u64>,
    pause: BTreeSet<u64>,
    /// A partition (one side, the other) switched on and off.
    flap: Option<(Vec<u64>, Vec<u64>)>,
}

fn two_way(cut: &mut BTreeSet<(u64, u64)>, a: &[u64], b: &[u64]) {
    for &x in a {
        for &y in b {
            cut.insert((x, y));
            cut.insert((y, x));
        }
    }
}

fn others(ids: &[u64], not: &[u64]) -> Vec<u64> {
    ids.iter().copied().filter(|i| !not.contains(i)).collect()
}

fn plan(kind: FaultKind, rng: &mut ChaCha8Rng, leader: Option<u64>) -> Plan {
    let ids: Vec<u64> = (1..=SERVERS).collect();
    let mut shuffled = ids.clone();
    shuffle(rng, &mut shuffled);
    // A victim: the leader half the time (when there is one), else anyone;
    // and a second server that is not the victim.
    let victim = match leader {
        Some(l) if rng.gen_bool(0.5) => l,
        _ => shuffled[0],
    };
    let second = *shuffled.iter().find(|i| **i != victim).unwrap_or(&victim);
    let leader_or_any = leader.unwrap_or(shuffled[0]);
    let mut p = Plan::default();
    match kind {
        FaultKind::Partition => {
            two_way(
                &mut p.cut,
                &[victim, second],
                &others(&ids, &[victim, second]),
            );
        }
        FaultKind::Split => {
            // 2 | 2 | 1: no side has a majority.
            let (a, b, c) = (&shuffled[0..2], &shuffled[2..4], &shuffled[4..5]);
            two_way(&mut p.cut, a, b);
            two_way(&mut p.cut, a, c);
            two_way(&mut p.cut, b, c);
        }
        FaultKind::LeaderIsolated => {
            two_way(
                &mut p.cut,
                &[leader_or_any],
                &others(&ids, &[leader_or_any]),
            );
        }
        FaultKind::Ring => {
            // Positions on the ring in shuffled order; cut every link that
            // is not between neighbours.
            let n = shuffled.len();
            for i in 0..n {
                for j in 0..n {
                    let d = (i + n - j) % n;
                    if i != j && d != 1 && d != n - 1 {
                        p.cut.insert((shuffled[i], shuffled[j]));
                    }
                }
            }
        }
        FaultKind::Bridge => two_way(&mut p.cut, &shuffled[0..2], &shuffled[3..5]),
        FaultKind::OnePeer => {
            two_way(&mut p.cut, &[victim], &others(&ids, &[victim, second]));
        }
        FaultKind::DeafLeader => {
            for o in others(&ids, &[leader_or_any]) {
                p.cut.insert((o, leader_or_any));
            }
        }
        FaultKind::MuteLeader => {
            for o in others(&ids, &[leader_or_any]) {
                p.cut.insert((leader_or_any, o));
            }
        }
        FaultKind::Loss => {
            for &a in &ids {
                for &b in ids.iter().filter(|b| **b != a) {
                    p.loss.push((a, b, rng.gen_range(0.0..0.4)));
                }
            }
        }
        FaultKind::OneWayLoss => p.loss.push((victim, second, rng.gen_range(0.5..1.0))),
        FaultKind::Flapping => {
            p.flap = Some((vec![victim, second], others(&ids, &[victim, second])));
        }
        FaultKind::Kill => {
            p.kill.insert(victim);
        }
        FaultKind::KillTwo => {
            p.kill.insert(victim);
            p.kill.insert(second);
        }
        FaultKind::Pause => {
            p.pause.insert(victim);
        }
    }
    p
}

impl Plan {
    /// Whether 3 or more servers can exchange messages while the fault
    /// holds (in both phases of a flapping partition).
    fn majority(&self) -> bool {
        let ids: Vec<u64> = (1..=SERVERS).collect();
        let down: BTreeSet<u64> = self.kill.union(&self.pause).copied().collect();
        let mut cut = self.cut.clone();
        if let Some((a, b)) = &self.flap {
            two_way(&mut cut, a, b);
        }
        majority_connected(&ids, &self.cut, &down) && majority_connected(&ids, &cut, &down)
    }

    fn describe(&self) -> String {
        let mut s = String::new();
        if !self.kill.is_empty() {
            let _ = write!(s, ", killed {:?}", self.kill);
        }
        if !self.pause.is_empty() {
            let _ = write!(s, ", paused {:?}", self.pause);
        }
        if !self.cut.is_empty() {
            let _ = write!(s, ", cut {}", links(&self.cut));
        }
        if !self.loss.is_empty() {
            let _ = write!(s, ", loss");
            for (a, b, p) in &self.loss {
                let _ = write!(s, " {a}>{b}:{:.0}%", p * 100.0);
            }
        }
        if let Some((a, b)) = &self.flap {
            let _ = write!(s, ", flapping {a:?} | {b:?}");
        }
        s
    }
}

/// Applies `kind` for `hold`, then undoes it. Returns whether 3 or more
/// servers could exchange messages meanwhile.
fn inject(
    ns: &Netns,
    cluster: &mut LocalCluster,
    rng: &mut ChaCha8Rng,
    kind: FaultKind,
    hold: Duration,
) -> Result<bool, NemesisError> {
    let leader = current_leader(cluster);
    let plan = plan(kind, rng, leader);
    say(&format!(
        "fault {} for {:.1} s: {}{}",
        kind.name(),
        hold.as_secs_f64(),
        leader.map_or("no leader".to_string(), |l| format!("leader {l}")),
        plan.describe()
    ));
    for &(a, b) in &plan.cut {
        ns.drop_link(server_ip(a), server_ip(b), 1.0)?;
    }
    for &(a, b, p) in &plan.loss {
        ns.drop_link(server_ip(a), server_ip(b), p)?;
    }
    for &id in &plan.kill {
        cluster.kill(id);
    }
    for &id in &plan.pause {
        cluster.signal_pause(id, true);
    }
    match &plan.flap {
        Some((a, b)) => flap(ns, rng, a, b, hold)?,
        None => std::thread::sleep(hold),
    }
    ns.heal()?;
    for &id in &plan.pause {
        cluster.signal_pause(id, false);
    }
    for &id in &plan.kill {
        cluster.start(id)?;
    }
    Ok(plan.majority())
}

/// Switches the partition `a | b` on and off for `hold`.
fn flap(
    ns: &Netns,
    rng: &mut ChaCha8Rng,
    a: &[u64],
    b: &[u64],
    hold: Duration,
) -> Result<(), NemesisError> {
    let a: Vec<_> = a.iter().map(|i| server_ip(*i)).collect();
    let b: Vec<_> = b.iter().map(|i| server_ip(*i)).collect();
    let until = Instant::now() + hold;
    let mut cut_now = false;
    while Instant::now() < until {
        if cut_now {
            ns.heal()?;
        } else {
            ns.partition(&a, &b)?;
        }
        cut_now = !cut_now;
        let step = Duration::from_millis(rng.gen_range(FLAP_MS.0..=FLAP_MS.1));
        std::thread::sleep(step.min(until.saturating_duration_since(Instant::now())));
    }
    Ok(())
}

/// `1>2 2>1 ...`: the directed links cut.
fn links(cut: &BTreeSet<(u64, u64)>) -> String {
    cut.iter()
        .map(|(a, b)| format!("{a}>{b}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether some running server has two-way links with 2 or more running
/// peers: then a leader with a majority can exist (this is what Raft needs;
/// in a ring, no 3 servers are pairwise connected, yet each has 2).
fn majority_connected(ids: &[u64], cut: &BTreeSet<(u64, u64)>, down: &BTreeSet<u64>) -> bool {
    let up: Vec<u64> = ids.iter().copied().filter(|i| !down.contains(i)).collect();
    up.iter().any(|&s| {
        up.iter()
            .filter(|&&t| t != s && !cut.contains(&(s, t)) && !cut.contains(&(t, s)))
            .count()
            >= 2
    })
}

fn current_leader(cluster: &LocalCluster) -> Option<u64> {
    cluster
        .statuses()
        .into_iter()
        .find(|(_, s)| s.as_ref().is_ok_and(|s| s.role == "leader"))
        .map(|(id, _)| id)
}

fn shuffle(rng: &mut ChaCha8Rng, v: &mut [u64]) {
    for i in (1..v.len()).rev() {
        let j = rng.gen_range(0..=i);
        v.swap(i, j);
    }
}

// ------------------------------------------------------------ availability

/// Availability over `windows`: every whole second after `GRACE` into a
/// window where a majority could talk counts; it is answered if a command
/// was answered in it. The longest gap is the longest stretch without an
/// answer inside such windows.
fn availability(windows: &[Window], answers: &[Duration], history: &[Op]) -> Availability {
    let mut a = Availability::default();
    for w in windows.iter().filter(|w| w.majority) {
        let from = w.start + GRACE;
        if from >= w.end {
            continue;
        }
        for op in history {
            let invoked = Duration::from_nanos(op.invoke_ns);
            if invoked >= from && invoked < w.end {
                a.commands += 1;
                a.commands_answered += u64::from(op.complete_ns.is_some());
            }
        }
        let inside: Vec<Duration> = answers
            .iter()
            .copied()
            .filter(|t| *t >= from && *t < w.end)
            .collect();
        let mut slot = from;
        while slot + Duration::from_secs(1) <= w.end {
            let next = slot + Duration::from_secs(1);
            let hit = inside.iter().any(|t| *t >= slot && *t < next);
            a.slots += 1;
            a.answered += u64::from(hit);
            let e = a.by_kind.entry(w.kind).or_default();
            e.0 += 1;
            e.1 += u64::from(hit);
            slot = next;
        }
        let mut last = from;
        for t in inside.iter().copied().chain(std::iter::once(w.end)) {
            a.gap_max = a.gap_max.max(t.saturating_sub(last));
            last = t;
        }
    }
    a
}

fn merge(total: &mut Availability, one: &Availability) {
    total.slots += one.slots;
    total.answered += one.answered;
    total.commands += one.commands;
    total.commands_answered += one.commands_answered;
    total.gap_max = total.gap_max.max(one.gap_max);
    for (k, (s, h)) in &one.by_kind {
        let e = total.by_kind.entry(k).or_default();
        e.0 += s;
        e.1 += h;
    }
}

fn describe(opts: &NemesisOptions, r: &NemesisReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\n== bunker nemesis: seed {} ==", opts.seed);
    let _ = writeln!(
        s,
        "ran {:.0} s: {} epochs, {} faults; transfers issued {}, acknowledged {}, refused {}, outcome unknown {}; reads {}",
        r.wall.as_secs_f64(),
        r.epochs,
        r.faults,
        r.issued,
        r.acknowledged,
        r.refused,
        r.unknown,
        r.reads
    );
    let lost = r
        .failures
        .iter()
        .filter(|f| f.contains("AcknowledgedNotOnce"))
        .count();
    let _ = writeln!(
        s,
        "lost or duplicated acknowledged transfers: {lost}; linearizable operations {}; epochs undecided {}",
        r.linearizable_ops, r.undecided_epochs
    );
    let a = &r.availability;
    let _ = writeln!(
        s,
        "availability while a majority could talk (after a {} s grace): {}/{} s answered ({:.1} %), longest gap {:.1} s",
        GRACE.as_secs(),
        a.answered,
        a.slots,
        100.0 * a.fraction(),
        a.gap_max.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "commands invoked in those windows: {} answered of {} ({:.2} %)",
        a.commands_answered,
        a.commands,
        100.0 * a.commands_answered as f64 / a.commands.max(1) as f64
    );
    for (k, (slots, hit)) in &a.by_kind {
        let _ = writeln!(
            s,
            "  {k:<16} {hit:>5}/{slots:<5} s  {:5.1} %",
            100.0 * *hit as f64 / (*slots).max(1) as f64
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_keeps_a_majority_and_an_isolated_pair_plus_a_pause_does_not() {
        let ids: Vec<u64> = (1..=5).collect();
        let mut ring = BTreeSet::new();
        for a in 1..=5u64 {
            for b in 1..=5u64 {
                let d = (a + 5 - b) % 5;
                if a != b && d != 1 && d != 4 {
                    ring.insert((a, b));
                }
            }
        }
        assert!(majority_connected(&ids, &ring, &BTreeSet::new()));
        // Two servers down and 3 cut off from 4 and 5: nobody has two peers.
        let mut cut = BTreeSet::new();
        two_way(&mut cut, &[3], &[4, 5]);
        let down: BTreeSet<u64> = [1, 2].into_iter().collect();
        assert!(!majority_connected(&ids, &cut, &down));
        assert!(majority_connected(&ids, &BTreeSet::new(), &down));
    }

    #[test]
    fn availability_counts_whole_seconds_after_the_grace() {
        let w = Window {
            kind: "partition",
            start: Duration::ZERO,
            end: Duration::from_secs(5),
            majority: true,
        };
        // Answers in the 3rd and 5th second after the grace's end (2 s).
        let answers = [Duration::from_millis(2_500), Duration::from_millis(4_200)];
        let a = availability(&[w], &answers, &[]);
        assert_eq!((a.slots, a.answered), (3, 2));
        assert_eq!(a.gap_max, Duration::from_millis(1_700));
    }

    #[test]
    fn every_fault_but_the_three_way_split_keeps_a_majority_connected() {
        for seed in 0..200 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            for kind in FaultKind::ALL {
                let leader = (seed % 3 != 0).then_some(1 + seed % 5);
                let p = plan(kind, &mut rng, leader);
                assert_eq!(
                    p.majority(),
                    kind != FaultKind::Split,
                    "seed {seed} {kind:?}: {}",
                    p.describe()
                );
                match kind {
                    FaultKind::Partition => assert_eq!(p.cut.len(), 12),
                    FaultKind::Split => assert_eq!(p.cut.len(), 16),
                    FaultKind::Ring => assert_eq!(p.cut.len(), 10),
                    FaultKind::KillTwo => assert_eq!(p.kill.len(), 2),
                    FaultKind::DeafLeader | FaultKind::MuteLeader => {
                        assert_eq!(p.cut.len(), 4);
                        if let Some(l) = leader {
                            assert!(p.cut.iter().all(|(a, b)| *a == l || *b == l));
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn fault_names_round_trip() {
        for k in FaultKind::ALL {
            assert_eq!(k.name().parse::<FaultKind>(), Ok(k));
        }
        assert!("nope".parse::<FaultKind>().is_err());
    }
}
