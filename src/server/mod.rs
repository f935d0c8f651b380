//! The `bunker serve` process: one server's replica driven by real I/O.
//!
//! What it does: loads the configuration, opens the ringlog (io_uring,
//! O_DIRECT) and the delta engine over real files, runs the replica's event
//! loop on one thread (consensus messages and client requests from the
//! transport, group commits from the log's I/O thread, application results
//! from the adapter, ticks from a timer), and publishes metrics.
//!
//! What it does not do: decide anything. Every decision is the replica's
//! (`crate::replica`), the same code the simulator drives.

pub mod config;
pub mod metrics;
pub mod node;
pub mod open;
pub mod serve;
pub mod status;

pub use config::{AppMode, ConfigError, NodeConfig};
