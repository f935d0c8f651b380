//! Bunker as an anchors system: real `bunker serve` processes on loopback
//! (`bunker::demo::LocalCluster`), the blob or accounts application.

use super::{Conn, Skip, System};
use bunker::client::BlockingClient;
use bunker::demo::LocalCluster;
use std::path::Path;
use std::time::{Duration, Instant};

pub struct Bunker {
    cluster: LocalCluster,
    app: &'static str,
    servers: u64,
    killed: Option<u64>,
}

impl Bunker {
    pub fn start(dir: &Path, exe: &Path, servers: u64, app: &'static str) -> Result<Bunker, Skip> {
        if !exe.exists() {
            return Err(Skip(format!(
                "{} not found: build it first (cargo build --release -p bunker) or pass --bunker",
                exe.display()
            )));
        }
        let cluster = crate::e2e::start(dir, exe, servers, app)?;
        Ok(Bunker {
            cluster,
            app,
            servers,
            killed: None,
        })
    }
}

struct BunkerConn {
    client: BlockingClient,
    app: &'static str,
    id: usize,
}

impl Conn for BunkerConn {
    fn write(&mut self, seq: u64) -> Result<(), String> {
        let r = self
            .client
            .call(crate::e2e::command(self.app, self.id, seq))
            .map_err(|e| e.to_string())?;
        if r.status == 0 {
            Ok(())
        } else {
            Err(format!(
                "application error: {}",
                String::from_utf8_lossy(&r.body)
            ))
        }
    }
}

impl System for Bunker {
    fn name(&self) -> String {
        format!("bunker-{}-{}", self.app, self.servers)
    }

    fn connect(&self, client: usize) -> Result<Box<dyn Conn>, String> {
        let client_conn =
            BlockingClient::connect(self.cluster.client_config()).map_err(|e| e.to_string())?;
        Ok(Box::new(BunkerConn {
            client: client_conn,
            app: self.app,
            id: client,
        }))
    }

    fn kill_leader(&mut self) -> Result<Option<Instant>, String> {
        if self.servers < 3 {
            return Ok(None);
        }
        let leader = self
            .cluster
            .wait_for_leader(&[])
            .map_err(|e| e.to_string())?;
        self.cluster.kill(leader);
        self.killed = Some(leader);
        Ok(Some(Instant::now()))
    }

    fn recover(&mut self) -> Result<(), String> {
        if let Some(id) = self.killed.take() {
            self.cluster.start(id).map_err(|e| e.to_string())?;
        }
        // Caught up: every server applied the same index as committed.
        super::wait_until("bunker catch-up", Duration::from_secs(60), || {
            let states: Vec<_> = self
                .cluster
                .statuses()
                .into_iter()
                .filter_map(|(_, s)| s.ok())
                .map(|s| (s.applied_index, s.commit_index))
                .collect();
            states.len() == self.servers as usize
                && states.windows(2).all(|w| w[0] == w[1])
                && states.iter().all(|(a, c)| a == c)
        })
    }

    fn stop(&mut self) {
        self.cluster.stop_all();
    }
}
