//! A cluster of real `bunker serve` processes on this machine: what the
//! demo and the integration tests start, crash, destroy and inspect.
//!
//! What it does: makes certificates, configuration files and data
//! directories under one directory, starts and stops `bunker serve`
//! processes (this same executable, or the one given), kills them with
//! SIGKILL, destroys them (SIGKILL and delete their data), and reads their
//! status endpoints. Every wait is bounded by `WAIT_MAX`.
//!
//! What it does not do: inject network faults (the fault-injection suite
//! does, inside a network namespace), or hide a server's failure: a process
//! that exits on its own is reported by `exited`.

use super::{io_err, DemoError};
use crate::client::ClientConfig;
use crate::server::status::{fetch_status, render};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Servers in the cluster: five, as in the brief (two may be lost).
pub const SERVERS: u64 = 5;
/// Waiting for a leader, for replicas to converge, for a server to stop.
pub const WAIT_MAX: Duration = Duration::from_secs(60);

/// The addresses of one demo server.
#[derive(Clone, Copy, Debug)]
pub struct Addrs {
    pub peer: SocketAddr,
    pub client: SocketAddr,
    pub metrics: SocketAddr,
}

/// The running cluster: processes and where everything is.
pub struct LocalCluster {
    pub dir: PathBuf,
    exe: PathBuf,
    app: AppSpec,
    /// Servers not destroyed, running or not.
    pub addrs: BTreeMap<u64, Addrs>,
    children: BTreeMap<u64, Child>,
}

/// The application the servers run: a subcommand of the `bunker`
/// executable (`accounts` or `blob`) in one of the two adapter modes.
#[derive(Clone, Debug)]
pub struct AppSpec {
    /// `accounts`, `blob` or `mapped`.
    pub name: String,
    /// Run once per command (exec adapter) instead of as one process.
    pub exec_mode: bool,
    /// Another program instead of `bunker NAME MODE` (tests: an
    /// application from elsewhere, such as a script).
    pub program: Option<Vec<String>>,
}

impl AppSpec {
    pub fn accounts(exec_mode: bool) -> AppSpec {
        AppSpec::builtin("accounts", exec_mode)
    }

    /// `bunker NAME exec|serve`.
    pub fn builtin(name: &str, exec_mode: bool) -> AppSpec {
        AppSpec {
            name: name.into(),
            exec_mode,
            program: None,
        }
    }
}

impl LocalCluster {
    /// Prepares (does not start) a cluster of `servers` servers.
    pub fn create(
        dir: &Path,
        exe: &Path,
        servers: u64,
        app: AppSpec,
    ) -> Result<LocalCluster, DemoError> {
        let addrs = free_addrs(dir, servers)?;
        let certs = dir.join("certs");
        let nodes: Vec<(u64, Vec<String>)> = (1..=servers)
            .map(|id| (id, vec![server_ip(id).to_string(), "localhost".to_string()]))
            .collect();
        crate::transport::certs::generate(&certs, &nodes, &["demo".to_string()])
            .map_err(|e| DemoError::Certs(e.to_string()))?;
        let cluster = LocalCluster {
            dir: dir.to_path_buf(),
            exe: exe.to_path_buf(),
            app,
            addrs,
            children: BTreeMap::new(),
        };
        for id in 1..=servers {
            let path = cluster.config_path(id);
            std::fs::write(&path, cluster.config_text(id)).map_err(io_err(&path))?;
        }
        Ok(cluster)
    }

    pub fn config_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}.toml"))
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}"))
    }

    pub fn config_text(&self, id: u64) -> String {
        let me = self.addrs[&id];
        let certs = self.dir.join("certs");
        let mut text = String::new();
        let _ = writeln!(text, "# bunker demo: server {id} of {}", self.addrs.len());
        let _ = writeln!(text, "id = {id}");
        let _ = writeln!(
            text,
            "data_dir = {:?}",
            self.data_dir(id).display().to_string()
        );
        let _ = writeln!(text, "\n[listen]");
        let _ = writeln!(
            text,
            "peer = \"{}\"\nclient = \"{}\"\nmetrics = \"{}\"",
            me.peer, me.client, me.metrics
        );
        let _ = writeln!(text, "\n[tls]");
        let _ = writeln!(
            text,
            "ca = {:?}",
            certs.join("ca.pem").display().to_string()
        );
        let _ = writeln!(
            text,
            "cert = {:?}",
            certs.join(format!("node-{id}.pem")).display().to_string()
        );
        let _ = writeln!(
            text,
            "key = {:?}",
            certs.join(format!("node-{id}.key")).display().to_string()
        );
        for (peer, a) in &self.addrs {
            let _ = writeln!(text, "\n[[peers]]\nid = {peer}");
            let _ = writeln!(
                text,
                "peer = \"{}\"\nclient = \"{}\"\nmetrics = \"{}\"",
                a.peer, a.client, a.metrics
            );
        }
        let mode = if self.app.exec_mode { "exec" } else { "serve" };
        // The application may write only its working copy (Landlock).
        let _ = writeln!(text, "\n[app]\nmode = \"{mode}\"\nsandbox = true");
        let program = self.app.program.clone().unwrap_or_else(|| {
            vec![
                self.exe.display().to_string(),
                self.app.name.clone(),
                mode.to_string(),
            ]
        });
        let _ = writeln!(text, "command = {program:?}");
        // A small log: the demo writes little, and creating the file
        // pre-writes every segment. The demo directory may sit on tmpfs.
        let _ = writeln!(
            text,
            "\n[log]\nsegment_mib = 16\nsegment_count = 4\nallow_volatile = true"
        );
        text
    }

    pub fn start(&mut self, id: u64) -> Result<(), DemoError> {
        let log_path = self.dir.join(format!("node-{id}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_err(&log_path))?;
        let err = log.try_clone().map_err(io_err(&log_path))?;
        let child = Command::new(&self.exe)
            .arg("serve")
            .arg("--config")
            .arg(self.config_path(id))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|source| DemoError::Spawn { id, source })?;
        self.children.insert(id, child);
        Ok(())
    }

    /// Appends `text` (TOML) to every server's configuration file; call
    /// before `start`.
    pub fn append_config(&self, text: &str) -> Result<(), DemoError> {
        self.edit_config(|current| format!("{current}{text}"))
    }

    /// Rewrites every server's configuration file with `edit`; call
    /// before `start`.
    pub fn edit_config(&self, edit: impl Fn(&str) -> String) -> Result<(), DemoError> {
        for id in self.addrs.keys() {
            let path = self.config_path(*id);
            let current = std::fs::read_to_string(&path).map_err(io_err(&path))?;
            std::fs::write(&path, edit(&current)).map_err(io_err(&path))?;
        }
        Ok(())
    }

    /// Starts every server that is not running.
    pub fn start_all(&mut self) -> Result<(), DemoError> {
        let ids: Vec<u64> = self
            .addrs
            .keys()
            .copied()
            .filter(|id| !self.children.contains_key(id))
            .collect();
        for id in ids {
            self.start(id)?;
        }
        Ok(())
    }

    /// Servers whose process is running (started and not killed).
    pub fn running(&self) -> Vec<u64> {
        self.children.keys().copied().collect()
    }

    /// Servers whose process ended on its own, with how it ended: a server
    /// should only ever stop because it was told to.
    pub fn exited(&mut self) -> Vec<(u64, std::process::ExitStatus)> {
        let mut gone = Vec::new();
        for (id, child) in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                gone.push((*id, status));
            }
        }
        for (id, _) in &gone {
            self.children.remove(id);
        }
        gone
    }

    /// The tail of server `id`'s log file, for error messages.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let path = self.dir.join(format!("node-{id}.log"));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.children.remove(&id) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP (`stop = true`) or SIGCONT to server `id`'s process: a
    /// pause the server cannot notice until it runs again.
    pub fn signal_pause(&self, id: u64, stop: bool) {
        if let Some(child) = self.children.get(&id) {
            let sig = if stop { libc::SIGSTOP } else { libc::SIGCONT };
            // SAFETY: kill(2) on the pid of a child we own and have not
            // reaped; it cannot name another process.
            unsafe {
                libc::kill(child.id() as libc::pid_t, sig);
            }
        }
    }

    /// Kills every server of `ids` at once, then deletes their data.
    pub fn destroy(&mut self, ids: &[u64]) -> Result<(), DemoError> {
        let mut victims: Vec<Child> = ids
            .iter()
            .filter_map(|id| self.children.remove(id))
            .collect();
        for child in &mut victims {
            let _ = child.kill();
        }
        for child in &mut victims {
            let _ = child.wait();
        }
        for &id in ids {
            let data = self.data_dir(id);
            std::fs::remove_dir_all(&data).map_err(io_err(&data))?;
            self.addrs.remove(&id);
        }
        Ok(())
    }

    /// SIGTERM to every server, then SIGKILL to any still running after a
    /// bounded wait.
    pub fn stop_all(&mut self) {
        for child in self.children.values() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (_, mut child) in std::mem::take(&mut self.children) {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn statuses(&self) -> Vec<(u64, Result<crate::server::metrics::Status, String>)> {
        self.addrs
            .iter()
            .map(|(id, a)| (*id, fetch_status(a.metrics, Duration::from_secs(1))))
            .collect()
    }

    /// Waits for one server (not in `except`) to report itself leader.
    pub fn wait_for_leader(&self, except: &[u64]) -> Result<u64, DemoError> {
        let deadline = Instant::now() + WAIT_MAX;
        while Instant::now() < deadline {
            for (id, status) in self.statuses() {
                if let Ok(s) = status {
                    if s.role == "leader" && !except.contains(&id) {
                        return Ok(id);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(DemoError::Cluster(format!(
            "no leader after {} s; see the node-N.log files (run with --keep)\n{}",
            WAIT_MAX.as_secs(),
            render(&self.statuses())
        )))
    }

    /// A running server that is not the leader and not in `except`.
    pub fn pick_follower(&self, except: &[u64]) -> Result<u64, DemoError> {
        let leader = self.wait_for_leader(&[])?;
        self.children
            .keys()
            .copied()
            .find(|id| *id != leader && !except.contains(id))
            .ok_or_else(|| DemoError::Cluster("no follower left".into()))
    }

    pub fn client_config(&self) -> ClientConfig {
        let certs = self.dir.join("certs");
        ClientConfig {
            servers: self.addrs.values().map(|a| a.client).collect(),
            ca: certs.join("ca.pem"),
            cert: certs.join("client-demo.pem"),
            key: certs.join("client-demo.key"),
            session: None,
            attempt_timeout_ms: 2_000,
            total_timeout_ms: 30_000,
            attempts_max: 200,
        }
    }
}

/// The loopback address of server `id`: each server has its own
/// (127.0.0.10 + id), so that packet filters can tell the servers apart
/// (the transport dials from its own peer address).
pub fn server_ip(id: u64) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(127, 0, 0, 10 + (id % 200) as u8)
}

/// Three addresses per server on its own loopback address, on ports the
/// kernel says are free (held open together so that no two coincide, then
/// released).
pub fn free_addrs(dir: &Path, servers: u64) -> Result<BTreeMap<u64, Addrs>, DemoError> {
    let mut held = Vec::new();
    let mut take = |id: u64| -> Result<SocketAddr, DemoError> {
        let l = TcpListener::bind((server_ip(id), 0)).map_err(io_err(dir))?;
        let a = l.local_addr().map_err(io_err(dir))?;
        held.push(l);
        Ok(a)
    };
    let mut addrs = BTreeMap::new();
    for id in 1..=servers {
        addrs.insert(
            id,
            Addrs {
                peer: take(id)?,
                client: take(id)?,
                metrics: take(id)?,
            },
        );
    }
    Ok(addrs)
}

impl Drop for LocalCluster {
    /// A cluster never outlives its owner: a failing test or an error in
    /// the demo still kills every server it started.
    fn drop(&mut self) {
        for (_, mut child) in std::mem::take(&mut self.children) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
