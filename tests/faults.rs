//! Fault injection against real processes: five
//! `bunker serve` processes inside a network namespace this test creates,
//! each on its own loopback address, with iptables rules inside that
//! namespace cutting or thinning the links between them, while clients make
//! transfers. After the network heals: every acknowledged transfer present
//! exactly once, refused ones absent, unknown ones at most once, money
//! conserved, replicas byte-identical, and commands answered while a
//! majority could talk.
//!
//! Needs root, `ip` and `iptables`, and for the full-disk test `mkfs.ext4`
//! and loop devices (CI installs them); without them each test records a
//! skip with the reason (`testenv`: counted when the binary exits, a
//! failure under BUNKER_REQUIRE_ALL=1). Every wait is bounded; no rule
//! touches the host's network.

use bunker::check::Op;
use bunker::client::BlockingClient;
use bunker::demo::cluster::server_ip;
use bunker::demo::{AppSpec, LocalCluster, Workload};
use bunker::faultdisk::SmallDisk;
use bunker::faultnet::{available, Netns};
use bunker::nemesis::{check_healed, FaultKind, HistoryVerdict, NemesisOptions};
use bytes::Bytes;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const ACCOUNTS: usize = 10;
const CLIENTS: usize = 4;
const BEFORE: Duration = Duration::from_secs(2);
const DURING: Duration = Duration::from_secs(6);
const AFTER: Duration = Duration::from_secs(3);

/// What one run found: check failures, and answers during and after the
/// fault.
struct Findings {
    failures: Vec<String>,
    during: usize,
    after: usize,
}

/// Runs `fault` against a five-server cluster in a namespace of its own
/// and asserts that every check passes; `majority_connected` says whether
/// 3 or more servers can talk during the fault (then commands must be
/// answered during it).
fn scenario(
    name: &str,
    majority_connected: bool,
    fault: impl FnOnce(&Netns, &LocalCluster) + Send,
) {
    let Some(found) = in_namespace(name, None, fault) else {
        return;
    };
    assert!(found.failures.is_empty(), "{:#?}", found.failures);
    if majority_connected {
        assert!(
            found.during > 0,
            "no command answered while a majority could talk"
        );
    }
    assert!(
        found.after > 0,
        "no command answered after the network healed"
    );
}

/// Creates the namespace and runs the cluster inside it; `None` when this
/// machine cannot (the reason is printed).
fn in_namespace(
    name: &str,
    mutation: Option<&str>,
    fault: impl FnOnce(&Netns, &LocalCluster) + Send,
) -> Option<Findings> {
    testenv::require(available())?;
    let ns = testenv::require(
        Netns::create(&format!("bk-{name}"))
            .map_err(|e| format!("cannot create a network namespace here: {e}")),
    )?;
    std::thread::scope(|s| {
        s.spawn(|| {
            ns.enter_this_thread().expect("enter the namespace");
            run(&ns, mutation, fault)
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
    .into()
}

fn run(ns: &Netns, mutation: Option<&str>, fault: impl FnOnce(&Netns, &LocalCluster)) -> Findings {
    let tmp = tempfile::tempdir().expect("tempdir");
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_bunker"));
    let mut c =
        LocalCluster::create(tmp.path(), &exe, 5, AppSpec::accounts(false)).expect("cluster");
    if let Some(m) = mutation {
        c.append_config(&format!("\n[pipeline]\ntest_mutation = \"{m}\"\n"))
            .expect("config");
    }
    c.start_all().expect("start");
    c.wait_for_leader(&[]).expect("a leader");
    let cfg = c.client_config();
    let mut admin = BlockingClient::connect(cfg.clone()).expect("client");
    let names = open_accounts(&mut admin);
    let work = Workload::start(&cfg, CLIENTS, names.clone());
    let started = Instant::now();
    work.wait(BEFORE, &c);
    let fault_at = started.elapsed();
    fault(ns, &c);
    work.wait(DURING, &c);
    let heal_at = started.elapsed();
    ns.heal().expect("heal");
    work.wait(AFTER, &c);
    let outcome = work.stop();
    let (failures, verdict) = checks(&mut c, &mut admin, &names, &outcome.history);
    println!(
        "{} ops linearizable{}",
        verdict.linearizable_ops,
        if verdict.undecided {
            " (search undecided)"
        } else {
            ""
        }
    );
    // Availability: answers while a majority could talk (after a grace of
    // two election timeouts and the clients' backoff), and after healing.
    let grace = Duration::from_millis(1500);
    let during = outcome
        .answers
        .iter()
        .filter(|t| **t > fault_at + grace && **t < heal_at)
        .count();
    let after = outcome
        .answers
        .iter()
        .filter(|t| **t > heal_at + grace)
        .count();
    println!(
        "acknowledged {}, unknown {}, answered during the fault {during}, after healing {after}",
        outcome.acked.len(),
        outcome.unknown.len()
    );
    Findings {
        failures,
        during,
        after,
    }
}

/// Every check on the healed cluster (`bunker::nemesis::check_healed`):
/// replicas identical, no server stopped, the audit, every acknowledged
/// transfer once, refused absent, unknown at most once, fees within the
/// rule, and linearizability (`bunker::check`).
fn checks(
    c: &mut LocalCluster,
    admin: &mut BlockingClient,
    names: &[String],
    history: &[Op],
) -> (Vec<String>, HistoryVerdict) {
    let initial = names
        .iter()
        .map(|n| (n.clone(), bunker::demo::OPENING_CENTS))
        .collect();
    check_healed(c, admin, ACCOUNTS as u64, history, &initial).expect("checks")
}

fn open_accounts(admin: &mut BlockingClient) -> Vec<String> {
    let names: Vec<String> = (0..ACCOUNTS).map(|i| format!("acct-{i}")).collect();
    for n in &names {
        let r = admin
            .call(Bytes::from(format!(
                "open {n} {}",
                bunker::demo::OPENING_CENTS
            )))
            .expect("open");
        assert_eq!(r.status, 0, "{:?}", r.body);
    }
    names
}

fn leader_ip(c: &LocalCluster) -> (u64, Ipv4Addr) {
    let leader = c.wait_for_leader(&[]).expect("a leader");
    (leader, server_ip(leader))
}

#[test]
fn leader_partitioned_into_the_minority() {
    scenario("minority", true, |ns, c| {
        let (leader, ip) = leader_ip(c);
        let buddy = (1..=5).find(|i| *i != leader).expect("another server");
        let minority = [ip, server_ip(buddy)];
        let majority: Vec<_> = (1..=5)
            .filter(|i| *i != leader && *i != buddy)
            .map(server_ip)
            .collect();
        ns.partition(&minority, &majority).expect("partition");
    });
}

#[test]
fn leader_that_can_send_but_not_receive() {
    scenario("deaf-leader", true, |ns, c| {
        let (leader, ip) = leader_ip(c);
        for other in (1..=5).filter(|i| *i != leader) {
            ns.drop_link(server_ip(other), ip, 1.0).expect("rule");
        }
    });
}

#[test]
fn random_loss_of_thirty_percent_on_every_link() {
    scenario("loss30", true, |ns, _| {
        for a in 1..=5u64 {
            for b in (1..=5u64).filter(|b| *b != a) {
                ns.drop_link(server_ip(a), server_ip(b), 0.3).expect("rule");
            }
        }
    });
}

#[test]
fn bridge_server_between_two_halves() {
    // 1,2 | 3 | 4,5: server 3 reaches everyone; {1,2,3} and {3,4,5} are
    // both connected majorities.
    scenario("bridge", true, |ns, _| {
        let left = [server_ip(1), server_ip(2)];
        let right = [server_ip(4), server_ip(5)];
        ns.partition(&left, &right).expect("partition");
    });
}

/// The suite bites: a server build that releases responses before their
/// entry commits (a deliberate bug, `pipeline.test_mutation`) loses
/// acknowledged transfers when its leader is partitioned away, and the
/// checks say so.
///
/// The loss needs the partitioned server to still be the leader, and to
/// answer a command, in the moment after the cut; on a loaded machine the
/// leadership can move just before the cut (CI once saw a run in which
/// it did, and nothing was lost). So the test gives the bug up to
/// `ATTEMPTS` fresh clusters and fails only if every one of them passes
/// every check: a suite that cannot see the bug fails here.
#[test]
fn the_suite_catches_responses_released_before_commit() {
    const ATTEMPTS: usize = 4;
    for attempt in 1..=ATTEMPTS {
        let found = in_namespace("broken", Some("release-before-commit"), |ns, c| {
            let (leader, ip) = leader_ip(c);
            let buddy = (1..=5).find(|i| *i != leader).expect("another server");
            let majority: Vec<_> = (1..=5)
                .filter(|i| *i != leader && *i != buddy)
                .map(server_ip)
                .collect();
            ns.partition(&[ip, server_ip(buddy)], &majority)
                .expect("partition");
        });
        let Some(found) = found else { return };
        println!(
            "attempt {attempt}: the broken build was caught by {} check(s):",
            found.failures.len()
        );
        for f in found.failures.iter().take(5) {
            println!("  {}", f.chars().take(300).collect::<String>());
        }
        if !found.failures.is_empty() {
            return;
        }
    }
    panic!(
        "a build that releases responses before commit passed every check in {ATTEMPTS} attempts"
    );
}

/// A full disk, first under the leader, then under a follower: the
/// kernel's real ENOSPC on a small loop-mounted ext4 filesystem that holds
/// the server's data. A server that cannot write stops with an error that
/// names the full disk (fail-stop: the supervisor, systemd's
/// `Restart=always` in deploy/, starts it again, and here the test does,
/// once the space is back). Nothing acknowledged may be lost, the history
/// must be linearizable, the replicas must converge, and no server may
/// stop for any other reason.
#[test]
fn full_disk_on_the_leader_then_on_a_follower() {
    if testenv::require(bunker::faultdisk::available()).is_none() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_bunker"));
    let mut c =
        LocalCluster::create(tmp.path(), &exe, 5, AppSpec::accounts(false)).expect("cluster");
    let disks: HashMap<u64, SmallDisk> = (1..=5)
        .map(|id| {
            let image = tmp.path().join(format!("disk-{id}.img"));
            (
                id,
                SmallDisk::mount(&image, &c.data_dir(id), 160).expect("loop disk"),
            )
        })
        .collect();
    c.start_all().expect("start");
    let leader = c.wait_for_leader(&[]).expect("a leader");
    let cfg = c.client_config();
    let mut admin = BlockingClient::connect(cfg.clone()).expect("client");
    let names = open_accounts(&mut admin);
    let work = Workload::start(&cfg, CLIENTS, names.clone());
    let mut failures = Vec::new();
    let mut full_stops = 0;
    work.wait(BEFORE, &c);
    for victim in [Some(leader), None] {
        let victim = victim.unwrap_or_else(|| c.pick_follower(&[]).expect("a follower"));
        let filled = disks[&victim].fill().expect("fill");
        println!(
            "disk of server {victim} full ({} MiB of filler)",
            filled >> 20
        );
        for _ in 0..DURING.as_secs() {
            work.wait(Duration::from_secs(1), &c);
            full_stops += note_exits(&mut c, &mut failures);
        }
        disks[&victim].free().expect("free");
        // The supervisor's restart, now that the space is back.
        c.start_all().expect("restart");
        for _ in 0..AFTER.as_secs() {
            work.wait(Duration::from_secs(1), &c);
            full_stops += note_exits(&mut c, &mut failures);
        }
        c.start_all().expect("restart");
    }
    let outcome = work.stop();
    full_stops += note_exits(&mut c, &mut failures);
    c.start_all().expect("restart");
    let (more, verdict) = checks(&mut c, &mut admin, &names, &outcome.history);
    println!(
        "acknowledged {}, unknown {}, refused {}; {} ops linearizable{}; {full_stops} stop(s) on the full disk",
        outcome.acked.len(),
        outcome.unknown.len(),
        outcome.refused.len(),
        verdict.linearizable_ops,
        if verdict.undecided { " (search undecided)" } else { "" }
    );
    failures.extend(more);
    c.stop_all();
    drop(disks);
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Servers that stopped since the last look: a stop that names the full
/// disk is the documented fail-stop (counted); any other is a failure.
fn note_exits(c: &mut LocalCluster, failures: &mut Vec<String>) -> usize {
    let mut full = 0;
    for (id, status) in c.exited() {
        let tail = c.log_tail(id, 5);
        if tail.contains("No space left on device") {
            println!("server {id} stopped on the full disk ({status}), as documented");
            full += 1;
        } else {
            failures.push(format!(
                "server {id} stopped on its own ({status}):\n{tail}"
            ));
        }
    }
    full
}

// ------------------------------------------------------------ the nemesis

/// `bunker::nemesis` restricted to `faults` for one epoch of `seconds`:
/// each fault drawn several times, with every check at the end.
fn nemesis(faults: Vec<FaultKind>, seconds: u64, seed: u64) {
    if testenv::require(available()).is_none() {
        return;
    }
    let opts = NemesisOptions {
        seed,
        seconds,
        epoch_seconds: seconds,
        clients: CLIENTS,
        accounts: ACCOUNTS,
        faults,
        dir: None,
        exe: PathBuf::from(env!("CARGO_BIN_EXE_bunker")),
        config_extra: String::new(),
    };
    let report = bunker::nemesis::run(&opts).expect("the nemesis runs");
    println!("{}", report.text);
    assert!(report.failures.is_empty(), "{:#?}", report.failures);
    assert!(report.acknowledged > 0, "nothing was acknowledged");
}

/// 2 | 2 | 1: no majority anywhere; nothing may be acknowledged that is
/// later lost, and the cluster must come back once the network heals.
#[test]
fn three_way_split_without_a_majority() {
    nemesis(vec![FaultKind::Split], 12, 18);
}

#[test]
fn majorities_ring() {
    nemesis(vec![FaultKind::Ring], 12, 11);
}

#[test]
fn a_server_that_reaches_only_one_peer() {
    nemesis(vec![FaultKind::OnePeer], 12, 12);
}

#[test]
fn leader_that_can_receive_but_not_send() {
    nemesis(vec![FaultKind::MuteLeader], 12, 13);
}

#[test]
fn loss_on_one_direction_of_one_pair() {
    nemesis(vec![FaultKind::OneWayLoss], 12, 14);
}

#[test]
fn flapping_partition() {
    nemesis(vec![FaultKind::Flapping], 12, 15);
}

#[test]
fn kill_9_and_restart_one_server_then_two_at_once() {
    nemesis(vec![FaultKind::Kill, FaultKind::KillTwo], 15, 16);
}

#[test]
fn sigstop_longer_than_an_election_timeout_then_sigcont() {
    nemesis(vec![FaultKind::Pause], 12, 17);
}

/// Every fault kind, drawn by a seed: `BUNKER_NEMESIS_SEED` and
/// `BUNKER_NEMESIS_SECONDS` choose another run (long runs: `bunker
/// nemesis --seed S --seconds N`).
#[test]
fn randomized_nemesis() {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let seed = env("BUNKER_NEMESIS_SEED", 20_261_125);
    let seconds = env("BUNKER_NEMESIS_SECONDS", 40);
    println!("randomized nemesis: seed {seed}, {seconds} s");
    nemesis(Vec::new(), seconds, seed);
}

// ------------------------------------------- applications that map files

/// Keys each client stores, at most (every loop is bounded).
const KV_PUTS_MAX: usize = 5_000;

/// What the key-value clients saw.
#[derive(Default)]
struct KvOutcome {
    acked: Vec<(String, String)>,
    unknown: usize,
}

/// Clients that store unique keys until `stop`, through `cfg`.
fn kv_clients(
    cfg: &bunker::client::ClientConfig,
    stop: &std::sync::atomic::AtomicBool,
) -> KvOutcome {
    use std::sync::atomic::Ordering;
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..CLIENTS)
            .map(|i| {
                s.spawn(move || {
                    let mut out = KvOutcome::default();
                    let mut client = BlockingClient::connect(cfg.clone()).expect("client");
                    for n in 0..KV_PUTS_MAX {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let (key, value) = (format!("c{i}-{n}"), format!("v{i}-{n}-{}", n * 7));
                        match client.call(Bytes::from(format!("put {key} {value}"))) {
                            Ok(r) if r.status == 0 => out.acked.push((key, value)),
                            Ok(r) => panic!("put {key}: status {} {:?}", r.status, r.body),
                            Err(_) => out.unknown += 1,
                        }
                    }
                    out
                })
            })
            .collect();
        let mut all = KvOutcome::default();
        for w in workers {
            let one = w.join().expect("client thread");
            all.acked.extend(one.acked);
            all.unknown += one.unknown;
        }
        all
    })
}

/// A key-value application that writes through shared mappings, under a
/// leader partitioned into the minority and a majority follower killed
/// (SIGKILL) and restarted: after healing, every acknowledged key has its
/// value, the replicas' committed files are byte-identical, and no server
/// stopped on its own.
fn kv_scenario(name: &str, app: AppSpec) {
    if testenv::require(available()).is_none() {
        return;
    }
    let Some(ns) = testenv::require(Netns::create(&format!("bk-{name}"))) else {
        return;
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            ns.enter_this_thread().expect("enter the namespace");
            kv_run(&ns, app)
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    });
}

fn kv_run(ns: &Netns, app: AppSpec) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let tmp = tempfile::tempdir().expect("tempdir");
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_bunker"));
    let mut c = LocalCluster::create(tmp.path(), &exe, 5, app).expect("cluster");
    c.start_all().expect("start");
    c.wait_for_leader(&[]).expect("a leader");
    let cfg = c.client_config();
    let stop = AtomicBool::new(false);
    let outcome = std::thread::scope(|s| {
        let clients = s.spawn(|| kv_clients(&cfg, &stop));
        std::thread::sleep(BEFORE);
        let (leader, ip) = leader_ip(&c);
        let buddy = (1..=5).find(|i| *i != leader).expect("another server");
        let majority: Vec<u64> = (1..=5).filter(|i| *i != leader && *i != buddy).collect();
        let ips: Vec<_> = majority.iter().copied().map(server_ip).collect();
        ns.partition(&[ip, server_ip(buddy)], &ips)
            .expect("partition");
        std::thread::sleep(DURING / 2);
        c.kill(majority[0]);
        std::thread::sleep(DURING / 2);
        ns.heal().expect("heal");
        c.start(majority[0]).expect("restart");
        std::thread::sleep(AFTER);
        stop.store(true, Ordering::Relaxed);
        clients.join().expect("clients")
    });
    println!(
        "acknowledged {}, unknown {}",
        outcome.acked.len(),
        outcome.unknown
    );
    assert!(!outcome.acked.is_empty(), "nothing was acknowledged");
    let mut admin = BlockingClient::connect(cfg).expect("client");
    let mut lost = Vec::new();
    for (key, value) in &outcome.acked {
        let r = admin
            .call(Bytes::from(format!("get {key}")))
            .unwrap_or_else(|e| panic!("get {key} on a healed network: {e}"));
        if (r.status, &r.body[..]) != (0, value.as_bytes()) {
            lost.push(format!(
                "{key}: acknowledged {value:?}, now {} {:?}",
                r.status, r.body
            ));
        }
    }
    assert!(
        lost.is_empty(),
        "{} acknowledged stores lost: {lost:#?}",
        lost.len()
    );
    let mut report = bunker::demo::DemoReport::default();
    bunker::demo::check_replicas(&c, &[], &mut report).expect("replica check");
    assert!(report.failures.is_empty(), "{:#?}", report.failures);
    assert!(c.exited().is_empty(), "a server stopped on its own");
}

/// `bunker mapped`: one file mapped for the application's whole life,
/// changed only by stores into the mapping.
#[test]
fn an_application_writing_only_through_a_shared_mapping() {
    kv_scenario("mapped", AppSpec::builtin("mapped", false));
}

/// LMDB in `writemap` mode (`tests/apps/lmdb_kv.py`, Debian's
/// python3-lmdb), serve mode.
#[test]
fn lmdb_in_writemap_mode() {
    let python = "/usr/bin/python3";
    let has_lmdb = std::process::Command::new(python)
        .args(["-c", "import lmdb"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_lmdb {
        testenv::skip(format!(
            "{python} with the lmdb module is not installed (Debian: python3-lmdb)"
        ));
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/apps/lmdb_kv.py");
    let app = AppSpec {
        program: Some(vec![python.to_string(), script.to_string()]),
        ..AppSpec::builtin("lmdb", false)
    };
    kv_scenario("lmdb", app);
}
