//! Opening a server's storage: the log and the state directory.
//!
//! What it does: creates the data directory on first start (a preallocated,
//! pre-written ringlog file and an empty state tree) and recovers both on
//! later starts, then builds the replica over them. Every failure names the
//! path and what to do.
//!
//! What it does not do: start any network or process.

use crate::delta::RealTree;
use crate::replica::{Replica, ReplicaError};
use crate::server::config::NodeConfig;
use crate::server::node::ServerReplica;
use ringlog::uring::{create_log, open_log, UringOptions};
use ringlog::{Geometry, Options, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "cannot create the data directory {path}: {source} (check the path and its permissions)"
    )]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("log {path}: {source}")]
    Log {
        path: String,
        #[source]
        source: StorageError,
    },
    #[error("state directory {path}: {source}")]
    State {
        path: String,
        #[source]
        source: crate::delta::TreeError,
    },
    #[error("replica: {0}")]
    Replica(#[from] ReplicaError),
}

/// Opens (or creates) server `cfg.id`'s log and state and builds its replica.
pub fn open_replica(cfg: &NodeConfig) -> Result<ServerReplica, OpenError> {
    std::fs::create_dir_all(&cfg.data_dir).map_err(|source| OpenError::DataDir {
        path: cfg.data_dir.display().to_string(),
        source,
    })?;
    let uring = UringOptions {
        allow_volatile_fs: cfg.log.allow_volatile,
        sync_mode: cfg.log.sync.mode(),
        spin_us: cfg.log.spin_us,
        ..UringOptions::default()
    };
    let options = Options::default();
    let log_path = cfg.log_path();
    let log = if log_path.exists() {
        open_log(&log_path, options, uring)
    } else {
        let geometry = Geometry {
            segment_bytes: cfg.log.segment_mib << 20,
            segment_count: cfg.log.segment_count,
        };
        create_log(&log_path, geometry, options, uring)
    }
    .map_err(|source| OpenError::Log {
        path: log_path.display().to_string(),
        source,
    })?;
    let state_path = cfg.state_path();
    let tree = RealTree::open(&state_path).map_err(|source| OpenError::State {
        path: state_path.display().to_string(),
        source,
    })?;
    let seed = rand::random::<u64>();
    Ok(Replica::open(cfg.id, &cfg.setup(), log, tree, seed)?)
}
