//! Integration tests against real `bunker serve` processes on loopback:
//! TLS transport, io_uring log, the accounts application in a real process.
//!
//! - a normal run: commands answered, replicas converge to one state hash;
//! - the leader killed (SIGKILL): a new leader takes over, the client's
//!   retries (same client id and sequence) get answers, nothing is lost;
//! - a server restarted: it recovers its log and state and catches up;
//! - two servers destroyed at once: the other three go on;
//! - a client with a certificate from another CA is refused, and the
//!   cluster keeps serving good clients.
//!
//! No timing assertions: every wait is bounded and fails only when the
//! bound is exceeded by a wide margin.

use bunker::client::{BlockingClient, ClientConfig};
use bunker::demo::{AppSpec, LocalCluster};
use bytes::Bytes;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn cluster(name: &str, servers: u64) -> (tempfile::TempDir, LocalCluster) {
    let tmp = tempfile::Builder::new()
        .prefix(name)
        .tempdir()
        .expect("tempdir");
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_bunker"));
    let mut c = LocalCluster::create(tmp.path(), &exe, servers, AppSpec::accounts(false))
        .expect("create cluster");
    c.start_all().expect("start");
    c.wait_for_leader(&[]).expect("a leader");
    (tmp, c)
}

fn call(client: &mut BlockingClient, command: &str) -> serde_json::Value {
    let r = client
        .call(Bytes::from(command.to_string()))
        .unwrap_or_else(|e| panic!("{command}: {e}"));
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{command}: not JSON ({e}): {:?}", r.body))
}

fn balance(client: &mut BlockingClient, account: &str) -> u64 {
    call(client, &format!("balance {account}"))["balance_cents"]
        .as_u64()
        .expect("a balance")
}

/// Waits until every running server reports the same applied index (equal
/// to its commit index) and state hash.
fn wait_converged(c: &LocalCluster) -> (u64, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = c.statuses();
        let states: Vec<_> = rows
            .iter()
            .filter(|(id, _)| c.running().contains(id))
            .filter_map(|(_, s)| s.as_ref().ok())
            .map(|s| (s.applied_index, s.commit_index, s.state_hash.clone()))
            .collect();
        if states.len() == c.running().len()
            && states.windows(2).all(|w| w[0] == w[1])
            && states.first().is_some_and(|s| s.0 == s.1 && s.0 > 0)
        {
            return (states[0].0, states[0].2.clone());
        }
        assert!(
            Instant::now() < deadline,
            "servers did not converge:\n{}",
            bunker::server::status::render(&rows)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn normal_run_leader_kill_restart_and_two_destroyed() {
    let (_tmp, mut c) = cluster("bunker-cluster-", 5);
    let mut client = BlockingClient::connect(c.client_config()).expect("connect");
    assert_eq!(call(&mut client, "open alice 1000")["ok"], true);
    assert_eq!(call(&mut client, "open bob 0")["ok"], true);
    let mut expected = 1000;
    let deposit = |client: &mut BlockingClient, expected: &mut u64, n: u64| {
        for _ in 0..n {
            assert_eq!(call(client, "deposit alice 10")["ok"], true);
            *expected += 10;
        }
    };
    deposit(&mut client, &mut expected, 20);
    wait_converged(&c);

    // Raft §5.2: the leader fails; a new one is elected and serves.
    let leader = c.wait_for_leader(&[]).expect("leader");
    c.kill(leader);
    deposit(&mut client, &mut expected, 20);
    let next = c.wait_for_leader(&[leader]).expect("a new leader");
    assert_ne!(next, leader);
    assert_eq!(balance(&mut client, "alice"), expected);

    // The killed server recovers its log and state and catches up.
    c.start(leader).expect("restart");
    deposit(&mut client, &mut expected, 10);
    let (_, hash_five) = wait_converged(&c);
    assert!(!hash_five.is_empty());

    // Two servers destroyed at the same instant: three go on.
    let leader = c.wait_for_leader(&[]).expect("leader");
    let follower = *c
        .running()
        .iter()
        .find(|id| **id != leader)
        .expect("a follower");
    c.destroy(&[leader, follower]).expect("destroy");
    deposit(&mut client, &mut expected, 20);
    assert_eq!(balance(&mut client, "alice"), expected);
    let audit = call(&mut client, "audit");
    assert_eq!(audit["conserved"], true, "{audit}");
    assert_eq!(audit["total_cents"].as_u64(), Some(expected), "{audit}");
    wait_converged(&c);
    assert!(c.exited().is_empty(), "a server stopped on its own");
}

#[test]
fn a_client_certificate_from_another_ca_is_refused() {
    let (tmp, c) = cluster("bunker-certs-", 3);
    let rogue = tmp.path().join("rogue");
    bunker::transport::certs::generate(
        &rogue,
        &[(1, vec!["127.0.0.1".into()])],
        &["demo".to_string()],
    )
    .expect("rogue certificates");
    let good = c.client_config();
    let bad = ClientConfig {
        ca: good.ca.clone(),
        cert: rogue.join("client-demo.pem"),
        key: rogue.join("client-demo.key"),
        attempts_max: 3,
        attempt_timeout_ms: 1_000,
        total_timeout_ms: 5_000,
        ..good.clone()
    };
    let refused =
        BlockingClient::connect(bad).and_then(|mut b| b.call(Bytes::from_static(b"audit")));
    assert!(
        refused.is_err(),
        "a client with a foreign certificate was served"
    );
    let mut client = BlockingClient::connect(good).expect("connect");
    assert_eq!(call(&mut client, "audit")["ok"], true);
}
