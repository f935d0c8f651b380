//! Integration tests against real `bunker serve` processes on loopback:
//! TLS transport, io_uring log, the accounts application in a real process.
//!
//! - a normal run: commands answered, replicas converge to one state hash;
//! - the leader killed (SIGKILL): a new leader takes over, the client's
//!   retries (same client id and sequence) get answers, nothing is lost;
//! - a server restarted: it recovers its log and state and catches up;
//! - two servers destroyed at once: the other three go on;
//! - a client with a certificate from another CA is refused, and the
//!   cluster keeps serving good clients;
//! - a resumed session gets stored responses, an unknown one is refused.
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

/// Exactly once across client processes (invariant I4): a command sent again
/// as the same sequence of the same session (what `bunker exec --session
/// ID:SEQ` does after an unknown outcome) gets the stored response and does
/// not run again; a session the cluster never opened (or expired) is
/// refused with `SessionExpired`, never run in a new session.
#[test]
fn a_resumed_session_gets_the_stored_response_and_an_unknown_one_is_refused() {
    let (_tmp, c) = cluster("bunker-sessions-", 3);
    let cfg = c.client_config();
    let mut first = BlockingClient::connect(cfg.clone()).expect("connect");
    let opened = call(&mut first, "open sess-a 700");
    let (id, seq) = (first.client_id(), 1);
    assert_ne!(id, 0, "the first call opened a session");
    // A second process retries sequence 1 of that session.
    let resume = |session| {
        BlockingClient::connect(ClientConfig {
            session: Some(session),
            ..cfg.clone()
        })
        .expect("connect")
    };
    let mut retry = resume((id, seq));
    assert_eq!(
        call(&mut retry, "open sess-a 700"),
        opened,
        "the stored response"
    );
    assert_eq!(balance(&mut retry, "sess-a"), 700, "ran once");
    let mut unknown = resume((id + 1_000_000, 1));
    match unknown.call(Bytes::from_static(b"open sess-b 5")) {
        Err(bunker::client::ClientError::SessionExpired { .. }) => {}
        other => panic!("an unknown session was not refused: {other:?}"),
    }
    let mut fresh = BlockingClient::connect(cfg).expect("connect");
    assert_eq!(call(&mut fresh, "balance sess-b")["ok"], false, "never ran");
}

/// Opens a TLS connection with `cert` (a file stem under certs/) to `addr`,
/// checking the server's name `name`; sends `bytes`; returns what the server
/// sent back before closing (bounded wait).
fn raw_exchange(
    dir: &std::path::Path,
    stem: &str,
    addr: std::net::SocketAddr,
    name: &str,
    bytes: Vec<u8>,
) -> Vec<u8> {
    use bunker::transport::tls::{server_name, Identity, TlsFiles};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let certs = dir.join("certs");
    let identity = Identity::load(&TlsFiles {
        ca: certs.join("ca.pem"),
        cert: certs.join(format!("{stem}.pem")),
        key: certs.join(format!("{stem}.key")),
    })
    .expect("identity");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let connector = tokio_rustls::TlsConnector::from(identity.client_config().expect("config"));
        let mut tls = connector
            .connect(server_name(name).expect("name"), tcp)
            .await
            .expect("handshake");
        tls.write_all(&bytes).await.expect("send");
        tls.flush().await.expect("flush");
        let mut back = Vec::new();
        // The server must close the connection: reading ends (EOF or reset)
        // well within the bound, else the test fails here.
        let read = tokio::time::timeout(Duration::from_secs(20), tls.read_to_end(&mut back)).await;
        assert!(
            read.is_ok(),
            "the server kept a connection open after a malformed frame"
        );
        back
    })
}

#[test]
fn malformed_frames_from_a_peer_and_a_client_close_the_connection_and_nothing_is_lost() {
    use bunker::transport::frame::{self, Kind};
    let (tmp, mut c) = cluster("bunker-frames-", 3);
    let mut client = BlockingClient::connect(c.client_config()).expect("connect");
    assert_eq!(call(&mut client, "open carol 500")["ok"], true);
    let target = *c.addrs.keys().next().expect("a server");
    let addrs = c.addrs[&target];

    // A client sends garbage: not a frame.
    raw_exchange(
        tmp.path(),
        "client-demo",
        addrs.client,
        "bunker-server",
        b"GET / HTTP/1.1\r\nHost: bunker\r\nAccept: */*\r\n\r\n".to_vec(),
    );
    // A client sends a frame whose checksum is wrong.
    let mut bad =
        frame::encode_to_bytes(Kind::Request, 0, 0, b"0123456789abcdefdeposit carol 1").to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    raw_exchange(
        tmp.path(),
        "client-demo",
        addrs.client,
        "bunker-server",
        bad,
    );
    // A client announces a frame far larger than allowed: answered TooLarge, closed.
    let mut huge = frame::encode_to_bytes(Kind::Request, 0, 0, b"x").to_vec();
    huge[12..16].copy_from_slice(&(512u32 << 20).to_le_bytes());
    let back = raw_exchange(
        tmp.path(),
        "client-demo",
        addrs.client,
        "bunker-server",
        huge,
    );
    let (f, _) = frame::decode(&back, 1 << 20)
        .expect("a valid frame")
        .expect("a whole frame");
    let r = bunker::transport::codec::decode_response(f.payload).expect("a response");
    assert!(
        matches!(
            r.reply,
            bunker::transport::codec::WireReply::TooLarge { .. }
        ),
        "{r:?}"
    );

    // A peer (a real member's certificate) says hello, then sends garbage.
    let other = *c
        .addrs
        .keys()
        .find(|id| **id != target)
        .expect("another server");
    let mut stream = frame::encode_to_bytes(Kind::Hello, other as u32, target as u32, &[]).to_vec();
    stream.extend_from_slice(&[0xde; 64]);
    raw_exchange(
        tmp.path(),
        &format!("node-{other}"),
        addrs.peer,
        &format!("node-{target}"),
        stream,
    );
    // A peer claims to be a server its certificate does not name.
    let liar =
        frame::encode_to_bytes(Kind::Hello, target as u32 + 100, target as u32, &[]).to_vec();
    raw_exchange(
        tmp.path(),
        &format!("node-{other}"),
        addrs.peer,
        &format!("node-{target}"),
        liar,
    );

    // The cluster keeps serving and nothing was lost.
    for _ in 0..10 {
        assert_eq!(call(&mut client, "deposit carol 1")["ok"], true);
    }
    assert_eq!(balance(&mut client, "carol"), 510);
    wait_converged(&c);
    assert!(c.exited().is_empty(), "a server stopped on its own");
}

/// A log much smaller than the load writes (8 MiB against about 1 MiB/s
/// of SQLite page deltas), with a follower killed for a while: the
/// replicas release their applied prefix by space, not only by entry
/// count, a full ring is backpressure rather than a fatal error, the
/// follower that comes back catches up (from the log or a snapshot), and
/// nothing acknowledged is lost. The nemesis found the ring filling up and
/// three servers stopping; this is its regression test.
#[test]
fn a_small_log_keeps_serving_under_load_and_a_lagging_follower() {
    let tmp = tempfile::Builder::new()
        .prefix("small-log")
        .tempdir()
        .expect("tempdir");
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_bunker"));
    let mut c = LocalCluster::create(tmp.path(), &exe, 5, AppSpec::accounts(false))
        .expect("create cluster");
    c.edit_config(|text| {
        text.replace("segment_mib = 16", "segment_mib = 2")
            + "\n[pipeline]\nentry_bytes_max = 1048576\n"
    })
    .expect("config");
    c.start_all().expect("start");
    c.wait_for_leader(&[]).expect("a leader");
    let cfg = c.client_config();
    let mut admin = BlockingClient::connect(cfg.clone()).expect("client");
    let names: Vec<String> = (0..10).map(|i| format!("acct-{i}")).collect();
    for n in &names {
        call(
            &mut admin,
            &format!("open {n} {}", bunker::demo::OPENING_CENTS),
        );
    }
    let work = bunker::demo::Workload::start(&cfg, 4, names.clone());
    work.wait(Duration::from_secs(4), &c);
    let lagging = c.pick_follower(&[]).expect("a follower");
    c.kill(lagging);
    work.wait(Duration::from_secs(10), &c);
    c.start(lagging).expect("restart");
    work.wait(Duration::from_secs(8), &c);
    let outcome = work.stop();
    let exited: Vec<String> = c
        .exited()
        .into_iter()
        .map(|(id, status)| format!("server {id} stopped ({status}):\n{}", c.log_tail(id, 5)))
        .collect();
    assert!(exited.is_empty(), "{exited:#?}");
    wait_converged(&c);
    let initial = names
        .iter()
        .map(|n| (n.clone(), bunker::demo::OPENING_CENTS))
        .collect();
    let verdict = bunker::nemesis::verify_history(&cfg, &outcome.history, &initial);
    println!(
        "acknowledged {}, {} ops linearizable",
        outcome.acked.len(),
        verdict.linearizable_ops
    );
    assert!(verdict.failures.is_empty(), "{:#?}", verdict.failures);
    assert!(
        outcome.acked.len() > 100,
        "the load was too light to fill the log"
    );
}

/// An application that writes only through a shared mapping (no
/// `write(2)`, no `msync`, its file never closed) is replicated: every
/// acknowledged store is on the new leader after the old one is killed,
/// including a store made by a daemon that left the application's process
/// tree, and the replicas converge to one state hash.
#[test]
fn stores_through_a_shared_mapping_survive_a_leader_kill() {
    let tmp = tempfile::Builder::new()
        .prefix("bunker-mapped-")
        .tempdir()
        .expect("tempdir");
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_bunker"));
    let mut c = LocalCluster::create(tmp.path(), &exe, 5, AppSpec::builtin("mapped", false))
        .expect("create cluster");
    c.start_all().expect("start");
    c.wait_for_leader(&[]).expect("a leader");
    let mut client = BlockingClient::connect(c.client_config()).expect("connect");
    let put = |client: &mut BlockingClient, command: String| {
        let r = client
            .call(Bytes::from(command.clone()))
            .unwrap_or_else(|e| panic!("{command}: {e}"));
        assert_eq!((r.status, &r.body[..]), (0, &b"ok"[..]), "{command}");
    };
    for i in 0..60 {
        put(&mut client, format!("put k{i} v{i}"));
    }
    put(&mut client, "put-detached kd vd".to_string());
    for i in 60..80 {
        put(&mut client, format!("put k{i} v{i}"));
    }
    wait_converged(&c);
    let leader = c.wait_for_leader(&[]).expect("leader");
    c.kill(leader);
    for i in 80..100 {
        put(&mut client, format!("put k{i} v{i}"));
    }
    let keys = (0..100).map(|i| (format!("k{i}"), format!("v{i}")));
    for (key, value) in keys.chain([("kd".to_string(), "vd".to_string())]) {
        let r = client
            .call(Bytes::from(format!("get {key}")))
            .unwrap_or_else(|e| panic!("get {key}: {e}"));
        assert_eq!(
            (r.status, String::from_utf8_lossy(&r.body).into_owned()),
            (0, value),
            "acknowledged store of {key} lost"
        );
    }
    c.start(leader).expect("restart");
    wait_converged(&c);
    assert!(c.exited().is_empty(), "a server stopped on its own");
}
