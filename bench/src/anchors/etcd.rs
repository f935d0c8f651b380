//! etcd 3.4 as an anchors system: five members on loopback (Debian's
//! `etcd-server`), each client putting 256-byte values under its own keys.
//! etcd syncs its WAL before it answers; its timing is etcd's default (100
//! ms heartbeat, 1 s election timeout), what a user gets without tuning.
//!
//! The clients talk to etcd through its JSON gateway, which etcd 3.4 serves
//! on every client URL: `POST /v3/kv/put` with the key and value in base64,
//! over one kept-alive HTTP/1.1 connection per client (`http.rs`). Client
//! `c` talks to member `c % 5`; a member that does not lead forwards the
//! put to the leader, as it does for a gRPC client whose requests are
//! spread over the members. Not gRPC, because a gRPC client crate needs
//! `protoc` to build and the default build needs nothing beyond a Rust
//! toolchain and a C compiler. The gateway turns each request into a gRPC
//! call to its own member over loopback, which adds some time per request
//! (measured in docs/PERFORMANCE.md).

use super::http::HttpConn;
use super::{ensure_installed, free_ports, wait_until, Conn, Skip, System};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ETCD: &str = "/usr/bin/etcd";
const MEMBERS: usize = 5;
/// The failover prober's limit per put: short, so that the measured time
/// is etcd's election and not a client's timeout.
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);
/// The limit of one request while the harness waits for a member.
const SETUP_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Etcd {
    dir: PathBuf,
    client_ports: Vec<u16>,
    peer_ports: Vec<u16>,
    children: Vec<Option<Child>>,
    killed: Option<usize>,
}

impl Etcd {
    pub fn start(dir: &Path, no_install: bool) -> Result<Etcd, Skip> {
        ensure_installed(Path::new(ETCD), &["etcd-server"], no_install)?;
        let ports = free_ports(2 * MEMBERS)?;
        let mut e = Etcd {
            dir: dir.to_path_buf(),
            client_ports: ports[..MEMBERS].to_vec(),
            peer_ports: ports[MEMBERS..].to_vec(),
            children: (0..MEMBERS).map(|_| None).collect(),
            killed: None,
        };
        for i in 0..MEMBERS {
            e.spawn(i)?;
        }
        let addrs = e.addrs();
        wait_until("etcd cluster", Duration::from_secs(60), || {
            let mut c = HttpConn::new(addrs[0], SETUP_TIMEOUT);
            put(&mut c, b"bench-ready", b"1").is_ok()
        })?;
        Ok(e)
    }

    /// The members' client addresses (where the gateway listens).
    fn addrs(&self) -> Vec<SocketAddr> {
        self.client_ports
            .iter()
            .map(|&p| SocketAddr::from((Ipv4Addr::LOCALHOST, p)))
            .collect()
    }

    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let cluster: Vec<String> = self
            .peer_ports
            .iter()
            .enumerate()
            .map(|(j, p)| format!("m{j}=http://127.0.0.1:{p}"))
            .collect();
        let data = self.dir.join(format!("m{i}"));
        let log_path = self.dir.join(format!("m{i}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let peer = format!("http://127.0.0.1:{}", self.peer_ports[i]);
        let client = format!("http://127.0.0.1:{}", self.client_ports[i]);
        let child = Command::new(ETCD)
            .args(["--name", &format!("m{i}")])
            .args(["--data-dir", &data.display().to_string()])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "bunker-anchors"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{ETCD}: {e}"))?;
        self.children[i] = Some(child);
        Ok(())
    }

    fn conn(&self, client: usize, timeout: Duration, prober: bool) -> Box<dyn Conn> {
        let addrs = self.addrs();
        let member = client % addrs.len();
        Box::new(EtcdConn {
            http: HttpConn::new(addrs[member], timeout),
            addrs,
            member,
            id: client,
            timeout,
            prober,
        })
    }

    /// The member that says it is the leader.
    fn leader(&self) -> Result<usize, String> {
        for (i, &addr) in self.addrs().iter().enumerate() {
            if let Ok(s) = status(addr) {
                if s.member_id.is_some() && s.member_id == s.leader {
                    return Ok(i);
                }
            }
        }
        Err("etcd: no member says it leads".into())
    }
}

/// Puts `value` under `key` on the connection's member.
fn put(c: &mut HttpConn, key: &[u8], value: &[u8]) -> Result<(), String> {
    let body = serde_json::json!({
        "key": BASE64.encode(key),
        "value": BASE64.encode(value),
    })
    .to_string();
    c.post_json("/v3/kv/put", body.as_bytes())
        .map(drop)
        .map_err(|e| e.to_string())
}

/// What a member says about itself (`/v3/maintenance/status`): its id
/// and its leader's. The gateway writes 64-bit ids as JSON strings.
struct Status {
    member_id: Option<String>,
    leader: Option<String>,
}

fn status(addr: SocketAddr) -> Result<Status, String> {
    let mut c = HttpConn::new(addr, SETUP_TIMEOUT);
    let body = c
        .post_json("/v3/maintenance/status", b"{}")
        .map_err(|e| e.to_string())?;
    let v: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("{addr}: status: {e}"))?;
    let id = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    Ok(Status {
        member_id: id(&v["header"]["member_id"]),
        leader: id(&v["leader"]),
    })
}

struct EtcdConn {
    http: HttpConn,
    addrs: Vec<SocketAddr>,
    member: usize,
    id: usize,
    /// Per-request limit (connect, send, answer).
    timeout: Duration,
    /// A prober moves to the next member after a failure (its member may
    /// be the leader that was killed).
    prober: bool,
}

impl Conn for EtcdConn {
    fn write(&mut self, seq: u64) -> Result<(), String> {
        let key = format!("bench/{}/{seq}", self.id);
        let value = super::payload(self.id, seq);
        let result = put(&mut self.http, key.as_bytes(), &value);
        if result.is_err() && self.prober {
            self.member = (self.member + 1) % self.addrs.len();
            self.http = HttpConn::new(self.addrs[self.member], self.timeout);
        }
        result
    }
}

impl System for Etcd {
    fn name(&self) -> String {
        "etcd-5".into()
    }

    fn connect(&self, client: usize) -> Result<Box<dyn Conn>, String> {
        Ok(self.conn(client, Duration::from_secs(5), false))
    }

    fn connect_prober(&self, client: usize) -> Result<Box<dyn Conn>, String> {
        Ok(self.conn(client, PROBE_TIMEOUT, true))
    }

    fn kill_leader(&mut self) -> Result<Option<Instant>, String> {
        let leader = self.leader()?;
        if let Some(mut child) = self.children[leader].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.killed = Some(leader);
        Ok(Some(Instant::now()))
    }

    fn recover(&mut self) -> Result<(), String> {
        if let Some(i) = self.killed.take() {
            self.spawn(i)?;
            let addr = self.addrs()[i];
            wait_until("etcd member back", Duration::from_secs(60), || {
                status(addr).is_ok()
            })?;
        }
        Ok(())
    }

    fn stop(&mut self) {
        for mut child in self.children.iter_mut().filter_map(Option::take) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
