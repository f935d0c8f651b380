//! The TOML configuration of one `bunker serve` process.
//!
//! What it does: parses and validates the file, with errors that name the
//! file, the key and what is wrong; fills sensible LAN defaults; and turns
//! it into the options of the core, the log, the engine and the pipeline.
//!
//! What it does not do: open anything. Example (every key not shown has a
//! default; `deploy/` holds a full five-server example):
//!
//! ```toml
//! id = 1
//! data_dir = "/var/lib/bunker"
//!
//! [listen]
//! peer = "10.0.0.1:7100"
//! client = "10.0.0.1:7200"
//! metrics = "127.0.0.1:7300"
//!
//! [tls]
//! ca = "/etc/bunker/ca.pem"
//! cert = "/etc/bunker/node-1.pem"
//! key = "/etc/bunker/node-1.key"
//!
//! [[peers]]
//! id = 1
//! peer = "10.0.0.1:7100"
//! client = "10.0.0.1:7200"
//! # ... one [[peers]] table per server, this one included
//!
//! [app]
//! mode = "serve"                       # or "exec"
//! command = ["bunker-accounts", "serve"]
//! ```

use crate::delta::EngineConfig;
use crate::raft::{Membership, Options};
use crate::replica::{ReplicaConfig, ReplicaSetup};
use ringlog::NodeId;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("configuration {path}: {message}")]
    Parse { path: String, message: String },
    #[error("configuration {path}: key `{key}`: {problem}")]
    Invalid {
        path: String,
        key: String,
        problem: String,
    },
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This server's id: one of `peers[].id`, never reused for another server.
    pub id: NodeId,
    /// Where this server keeps its log and its state.
    pub data_dir: PathBuf,
    pub listen: Listen,
    pub tls: TlsPaths,
    /// Every server of the cluster, this one included.
    pub peers: Vec<PeerConfig>,
    pub app: AppConfig,
    #[serde(default)]
    pub timing: TimingConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub pipeline: PipelineConfig,
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
}

/// `[checkpoint]`: when the committed state is synced so that the log may
/// release the entries before it. Applying an entry does not sync it (the
/// log is the durable copy); these bound the log tail a restart replays,
/// and so the recovery time (docs/DELTA.md §6).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Start one after this many applied deltas...
    pub entries: u64,
    /// ...or this many MiB of deltas (at most a quarter of the log)...
    pub mib: u64,
    /// ...or this long (milliseconds) with anything applied.
    pub interval_ms: u64,
}

impl Default for CheckpointConfig {
    fn default() -> CheckpointConfig {
        CheckpointConfig {
            entries: 10_000,
            mib: 64,
            interval_ms: 1_000,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// Address for other servers (mutual TLS).
    pub peer: SocketAddr,
    /// Address for clients (TLS with client certificates).
    pub client: SocketAddr,
    /// Address of the Prometheus `/metrics` and `/status` endpoint (plain
    /// HTTP: bind it to a management network or loopback).
    pub metrics: Option<SocketAddr>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsPaths {
    /// The cluster CA certificate (PEM).
    pub ca: PathBuf,
    /// This server's certificate (PEM), signed by the cluster CA.
    pub cert: PathBuf,
    /// This server's private key (PEM).
    pub key: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub id: NodeId,
    pub peer: SocketAddr,
    pub client: SocketAddr,
    /// The server's metrics address, for `bunker status`.
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AppMode {
    /// The program runs once per command.
    Exec,
    /// One long-running program takes framed commands on stdin.
    Serve,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    pub mode: AppMode,
    /// The program and its arguments.
    pub command: Vec<String>,
    /// A command that takes longer is killed and fails.
    #[serde(default = "default_app_timeout_ms")]
    pub timeout_ms: u64,
    /// Largest response the application may give.
    #[serde(default = "default_response_bytes_max")]
    pub response_bytes_max: usize,
    /// Confine the application's writes to its directory (Landlock).
    #[serde(default)]
    pub sandbox: bool,
}

fn default_app_timeout_ms() -> u64 {
    10_000
}
fn default_response_bytes_max() -> usize {
    1 << 20
}

/// LAN defaults: a 5 ms tick, elections after 100 to 200 ms of silence,
/// heartbeats every 20 ms.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimingConfig {
    pub tick_ms: u64,
    pub heartbeat_ticks: u32,
    pub election_ticks_min: u32,
}

impl Default for TimingConfig {
    fn default() -> TimingConfig {
        TimingConfig {
            tick_ms: 5,
            heartbeat_ticks: 4,
            election_ticks_min: 20,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub segment_mib: u64,
    pub segment_count: u32,
    /// Release the log prefix once this many entries are applied beyond it.
    pub compact_entries: u64,
    /// Entries kept for followers that lag a little.
    pub compact_keep_entries: u64,
    /// Allow a log on tmpfs or another filesystem that does not survive a
    /// power loss (tests and demos only).
    pub allow_volatile: bool,
    /// How a log flush is made durable: `adaptive` (the default: whichever
    /// of the two others measured faster for flushes of that size on this
    /// disk, recently), `fdatasync` (write, then fdatasync) or `dsync`
    /// (writes flagged RWF_DSYNC). docs/RINGLOG.md says when to pin one.
    pub sync: LogSync,
    /// Microseconds the log's I/O thread, waiting for work, polls before it
    /// sleeps: saves a scheduler wake-up per flush (tens of microseconds)
    /// at the cost of a busy core. For a dedicated server with cores to
    /// spare; 0 (the default) never polls.
    pub spin_us: u64,
}

/// `log.sync` in the configuration.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogSync {
    #[default]
    Adaptive,
    Fdatasync,
    Dsync,
}

impl LogSync {
    pub fn mode(self) -> ringlog::uring::SyncMode {
        match self {
            LogSync::Adaptive => ringlog::uring::SyncMode::Adaptive,
            LogSync::Fdatasync => ringlog::uring::SyncMode::Fdatasync,
            LogSync::Dsync => ringlog::uring::SyncMode::Dsync,
        }
    }
}

/// Longest poll of the log's I/O thread accepted in the configuration.
pub const LOG_SPIN_US_MAX: u64 = 10_000;

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            segment_mib: 64,
            segment_count: 16,
            compact_entries: 10_000,
            compact_keep_entries: 1_000,
            allow_volatile: false,
            sync: LogSync::Adaptive,
            spin_us: 0,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    pub pipeline_commands_max: usize,
    pub queued_requests_max: usize,
    pub sessions_max: usize,
    /// Largest delta part in one log entry.
    pub entry_bytes_max: u64,
    /// TEST ONLY: a deliberate bug in the pipeline (for example
    /// "release-before-commit"), so that the fault-injection suite can show
    /// it catches one. Never set it on a server that holds real data.
    #[doc(hidden)]
    pub test_mutation: String,
}

impl Default for PipelineConfig {
    fn default() -> PipelineConfig {
        PipelineConfig {
            pipeline_commands_max: 256,
            queued_requests_max: 4096,
            sessions_max: 100_000,
            entry_bytes_max: 4 << 20,
            test_mutation: "none".into(),
        }
    }
}

impl NodeConfig {
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        NodeConfig::parse(&shown, &text)
    }

    pub fn parse(path: &str, text: &str) -> Result<NodeConfig, ConfigError> {
        let config: NodeConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let bad = |key: &str, problem: String| {
            Err(ConfigError::Invalid {
                path: path.to_string(),
                key: key.to_string(),
                problem,
            })
        };
        if self.peers.is_empty() {
            return bad(
                "peers",
                "list every server of the cluster, this one included".into(),
            );
        }
        if let Err(e) = Membership::new(self.peers.iter().map(|p| p.id)) {
            return bad(
                "peers",
                format!("the server ids are not a valid configuration: {e}"),
            );
        }
        if !self.peers.iter().any(|p| p.id == self.id) {
            return bad(
                "id",
                format!("{} is not one of the ids in [[peers]]", self.id),
            );
        }
        if self.app.command.is_empty() {
            return bad("app.command", "name the program to run".into());
        }
        if self.app.timeout_ms == 0 {
            return bad("app.timeout_ms", "must be at least 1".into());
        }
        if self.timing.tick_ms == 0 {
            return bad("timing.tick_ms", "must be at least 1".into());
        }
        if let Err(e) = self.raft_options().validate() {
            return bad("timing", e.to_string());
        }
        if self.log.segment_mib == 0 || self.log.segment_count < 3 {
            return bad(
                "log",
                "segment_mib must be at least 1 and segment_count at least 3".into(),
            );
        }
        let c = &self.checkpoint;
        if c.entries == 0 || c.mib == 0 || c.interval_ms < self.timing.tick_ms {
            return bad(
                "checkpoint",
                "entries and mib must be at least 1, interval_ms at least timing.tick_ms".into(),
            );
        }
        if self.log.spin_us > LOG_SPIN_US_MAX {
            return bad(
                "log.spin_us",
                format!(
                    "{} is more than {LOG_SPIN_US_MAX}: a poll longer than a flush only burns \
                     the core",
                    self.log.spin_us
                ),
            );
        }
        let largest_entry = self.pipeline.entry_bytes_max;
        if largest_entry < (64 << 10) || largest_entry > (self.log.segment_mib << 20) / 2 {
            return bad(
                "pipeline.entry_bytes_max",
                format!(
                    "must be between 64 KiB and half a log segment ({} bytes)",
                    (self.log.segment_mib << 20) / 2
                ),
            );
        }
        if let Err(e) = self
            .pipeline
            .test_mutation
            .parse::<crate::replica::ReplicaMutation>()
        {
            return bad("pipeline.test_mutation", e);
        }
        Ok(())
    }

    /// A quarter of the log space that entries not yet released can count
    /// on (one segment is kept free, the head one may hold released
    /// entries): with entries of at most half a segment, at least half of
    /// that space takes entries, so every follower holds the uncommitted
    /// backlog twice over, with room for a new leader's barrier. It is
    /// also the most one command may change: a larger delta is refused.
    fn uncommitted_bytes_max(&self) -> u64 {
        let usable =
            u64::from(self.log.segment_count.saturating_sub(2)) * (self.log.segment_mib << 20);
        (usable / 4).max(1)
    }

    pub fn raft_options(&self) -> Options {
        Options {
            heartbeat_ticks: self.timing.heartbeat_ticks,
            election_ticks_min: self.timing.election_ticks_min,
            entry_bytes_max: self.pipeline.entry_bytes_max,
            uncommitted_bytes_max: self.uncommitted_bytes_max(),
            ..Options::default()
        }
    }

    pub fn setup(&self) -> ReplicaSetup {
        let voters = Membership::new(self.peers.iter().map(|p| p.id)).expect("validated");
        let envelope = crate::replica::entry::ENVELOPE_BYTES as u64
            + self.app.response_bytes_max as u64
            + 8 * 1024;
        let part = self
            .pipeline
            .entry_bytes_max
            .saturating_sub(envelope)
            .max(16 << 10);
        ReplicaSetup {
            raft: self.raft_options(),
            voters,
            engine: EngineConfig {
                max_part_bytes: part as usize,
                ..EngineConfig::default()
            },
            replica: ReplicaConfig {
                pipeline_commands_max: self.pipeline.pipeline_commands_max,
                queued_requests_max: self.pipeline.queued_requests_max,
                sessions_max: self.pipeline.sessions_max,
                response_bytes_max: self.app.response_bytes_max,
                compact_entries: self.log.compact_entries,
                compact_keep_entries: self.log.compact_keep_entries,
                checkpoint_entries: self.checkpoint.entries,
                // A quarter of the log at most, so that the log can always
                // release its prefix before it fills.
                checkpoint_bytes: (self.checkpoint.mib << 20)
                    .min((self.log.segment_mib << 20) * u64::from(self.log.segment_count) / 4),
                checkpoint_ticks: (self.checkpoint.interval_ms / self.timing.tick_ms.max(1))
                    .clamp(1, u32::MAX as u64) as u32,
                mutation: self.pipeline.test_mutation.parse().unwrap_or_default(),
                ..ReplicaConfig::default()
            },
        }
    }

    pub fn peer(&self, id: NodeId) -> Option<&PeerConfig> {
        self.peers.iter().find(|p| p.id == id)
    }

    pub fn log_path(&self) -> PathBuf {
        self.data_dir.join("log")
    }

    pub fn state_path(&self) -> PathBuf {
        self.data_dir.join("state")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
id = 2
data_dir = "/tmp/x"
[listen]
peer = "127.0.0.1:7102"
client = "127.0.0.1:7202"
[tls]
ca = "ca.pem"
cert = "n.pem"
key = "n.key"
[[peers]]
id = 1
peer = "127.0.0.1:7101"
client = "127.0.0.1:7201"
[[peers]]
id = 2
peer = "127.0.0.1:7102"
client = "127.0.0.1:7202"
[[peers]]
id = 3
peer = "127.0.0.1:7103"
client = "127.0.0.1:7203"
[app]
mode = "serve"
command = ["bunker-accounts", "serve"]
"#;

    #[test]
    fn a_good_file_parses_with_defaults() {
        let c = NodeConfig::parse("node.toml", GOOD).unwrap();
        assert_eq!(c.id, 2);
        assert_eq!(c.timing.tick_ms, 5);
        assert_eq!(c.app.mode, AppMode::Serve);
        assert_eq!(c.setup().voters.voters(), &[1, 2, 3]);
    }

    #[test]
    fn errors_name_the_key() {
        let unknown = GOOD.replace("[app]", "[app]\nmoed = 1");
        let e = NodeConfig::parse("node.toml", &unknown)
            .unwrap_err()
            .to_string();
        assert!(e.contains("moed"), "{e}");
        let bad_id = GOOD.replace("id = 2\ndata_dir", "id = 9\ndata_dir");
        let e = NodeConfig::parse("node.toml", &bad_id)
            .unwrap_err()
            .to_string();
        assert!(e.contains("key `id`"), "{e}");
        let bad_addr = GOOD.replace("127.0.0.1:7202\"\n[tls]", "nowhere\"\n[tls]");
        let e = NodeConfig::parse("node.toml", &bad_addr)
            .unwrap_err()
            .to_string();
        assert!(e.contains("node.toml"), "{e}");
        let bad_timing = format!("{GOOD}\n[timing]\nelection_ticks_min = 1\n");
        let e = NodeConfig::parse("node.toml", &bad_timing)
            .unwrap_err()
            .to_string();
        assert!(e.contains("timing"), "{e}");
    }

    #[test]
    fn the_log_sync_path_is_adaptive_unless_pinned() {
        let c = NodeConfig::parse("node.toml", GOOD).unwrap();
        assert_eq!(c.log.sync, LogSync::Adaptive);
        assert_eq!(c.log.spin_us, 0);
        let pinned = format!("{GOOD}\n[log]\nsync = \"dsync\"\nspin_us = 100\n");
        let c = NodeConfig::parse("node.toml", &pinned).unwrap();
        assert_eq!(c.log.sync, LogSync::Dsync);
        assert_eq!(c.log.spin_us, 100);
        let wrong = format!("{GOOD}\n[log]\nsync = \"fsync\"\n");
        let e = NodeConfig::parse("node.toml", &wrong)
            .unwrap_err()
            .to_string();
        assert!(e.contains("fsync") && e.contains("adaptive"), "{e}");
        let long = format!("{GOOD}\n[log]\nspin_us = 1000000\n");
        let e = NodeConfig::parse("node.toml", &long)
            .unwrap_err()
            .to_string();
        assert!(e.contains("log.spin_us"), "{e}");
    }
}
