//! etcd 3.4 as an anchors system: five members on loopback (Debian's
//! `etcd-server`), each client a gRPC connection (`etcd-client`) putting
//! 256-byte values under its own keys. etcd syncs its WAL before it
//! answers; its timing is etcd's default (100 ms heartbeat, 1 s election
//! timeout), what a user gets without tuning.

use super::{ensure_installed, free_ports, wait_until, Conn, Skip, System};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ETCD: &str = "/usr/bin/etcd";
const MEMBERS: usize = 5;
/// The failover prober's limit per put: short, so that the measured time
/// is etcd's election and not a client's timeout.
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);

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
        let endpoints = e.endpoints();
        wait_until("etcd cluster", Duration::from_secs(60), || {
            block_on(async {
                let mut c = etcd_client::Client::connect(&endpoints, None).await.ok()?;
                c.put("bench-ready", "1", None).await.ok()
            })
            .ok()
            .flatten()
            .is_some()
        })?;
        Ok(e)
    }

    fn endpoints(&self) -> Vec<String> {
        self.client_ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
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

    fn conn(
        &self,
        client: usize,
        timeout: Duration,
        prober: bool,
    ) -> Result<Box<dyn Conn>, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let endpoints = self.endpoints();
        let c = rt
            .block_on(etcd_client::Client::connect(&endpoints, None))
            .map_err(|e| e.to_string())?;
        Ok(Box::new(EtcdConn {
            rt,
            client: c,
            id: client,
            timeout,
            endpoints: prober.then_some(endpoints),
        }))
    }

    /// The member that says it is the leader.
    fn leader(&self) -> Result<usize, String> {
        let endpoints = self.endpoints();
        for (i, ep) in endpoints.iter().enumerate() {
            let status = block_on(async {
                let mut c = etcd_client::Client::connect([ep.as_str()], None).await?;
                c.status().await
            })?;
            if let Ok(s) = status {
                if s.header().map(|h| h.member_id()) == Some(s.leader()) {
                    return Ok(i);
                }
            }
        }
        Err("etcd: no member says it leads".into())
    }
}

/// Runs a future on a small runtime of the calling thread.
fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    Ok(rt.block_on(f))
}

struct EtcdConn {
    rt: tokio::runtime::Runtime,
    client: etcd_client::Client,
    id: usize,
    /// Per-put limit; a prober also reconnects after each failure (the
    /// gRPC channel may stay pinned to a dead member).
    timeout: Duration,
    endpoints: Option<Vec<String>>,
}

impl Conn for EtcdConn {
    fn write(&mut self, seq: u64) -> Result<(), String> {
        let key = format!("bench/{}/{seq}", self.id);
        let value = super::payload(self.id, seq);
        let client = &mut self.client;
        let limit = self.timeout;
        let timed = async { tokio::time::timeout(limit, client.put(key, value, None)).await };
        let result = match self.rt.block_on(timed) {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("put timed out after {} ms", limit.as_millis())),
        };
        if let (Err(_), Some(endpoints)) = (&result, &self.endpoints) {
            let connect = etcd_client::Client::connect(endpoints, None);
            if let Ok(Ok(c)) = self
                .rt
                .block_on(async { tokio::time::timeout(limit, connect).await })
            {
                self.client = c;
            }
        }
        result
    }
}

impl System for Etcd {
    fn name(&self) -> String {
        "etcd-5".into()
    }

    fn connect(&self, client: usize) -> Result<Box<dyn Conn>, String> {
        self.conn(client, Duration::from_secs(5), false)
    }

    fn connect_prober(&self, client: usize) -> Result<Box<dyn Conn>, String> {
        self.conn(client, PROBE_TIMEOUT, true)
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
            let ep = self.endpoints()[i].clone();
            wait_until("etcd member back", Duration::from_secs(60), || {
                block_on(async {
                    let mut c = etcd_client::Client::connect([ep.as_str()], None)
                        .await
                        .ok()?;
                    c.status().await.ok()
                })
                .ok()
                .flatten()
                .is_some()
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
