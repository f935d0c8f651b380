//! `bunker serve`: wires one server together and runs it until a signal.
//!
//! What it does, in order: opens the log and the state (`open`), starts the
//! metrics endpoint, the transport (TLS listeners and one dialer per peer)
//! and the application adapter, installs SIGTERM/SIGINT handlers that ask
//! the event loop to stop, then runs the event loop (`node`) on this thread.
//! On the way out it stops the transport and the application.
//!
//! What it does not do: retry a failed start. A server that cannot open its
//! storage, bind its addresses or read its certificates exits with an error
//! that names the file, the key or the address; a supervisor (systemd, see
//! `deploy/`) restarts it.
//!
//! Invariant: nothing reaches a peer or a client before the replica is open
//! (the transport starts after `open_replica` has recovered the log, so no
//! message can depend on state that is not yet durable).

use crate::app::Adapter;
use crate::server::config::NodeConfig;
use crate::server::metrics::{serve_http, Metrics, Status};
use crate::server::node::{Event, Node, NodeError};
use crate::server::open::{open_replica, OpenError};
use crate::transport::{Transport, TransportConfig, TransportError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Events queued between the transport and the event loop, at most. The
/// transport drops peer messages and answers clients `Busy` beyond it.
pub const EVENTS_MAX: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Open(#[from] OpenError),
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    #[error("application: {0}")]
    App(#[from] crate::app::AppError),
    #[error("metrics endpoint {addr}: {source} (is the address in use?)")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("cannot become the child subreaper of the application's processes: {0}")]
    Subreaper(#[source] std::io::Error),
    #[error("{0}")]
    Node(#[from] NodeError),
}

/// Runs server `cfg.id` until SIGTERM or SIGINT.
pub fn run(cfg: &NodeConfig) -> Result<(), ServeError> {
    if cfg.pipeline.test_mutation != "none" {
        tracing::error!(
            mutation = %cfg.pipeline.test_mutation,
            "THIS SERVER RUNS A DELIBERATE BUG (pipeline.test_mutation): tests only; it will lose acknowledged data"
        );
    }
    // Every process the application starts stays a descendant of this one,
    // even one that daemonizes, so the capture can see what it maps.
    crate::delta::writers::become_subreaper().map_err(ServeError::Subreaper)?;
    let replica = open_replica(cfg)?;
    tracing::info!(
        id = cfg.id,
        term = replica.raft().term(),
        last = replica.raft().last_log_id().index,
        applied = replica.applied_index(),
        "storage recovered"
    );
    let metrics = Arc::new(Metrics::new());
    let status = Arc::new(Mutex::new(Status {
        id: cfg.id,
        role: "starting".into(),
        ..Status::default()
    }));
    if let Some(addr) = cfg.listen.metrics {
        serve_http(addr, metrics.clone(), status.clone())
            .map_err(|source| ServeError::Metrics { addr, source })?;
    }
    let (events_tx, events_rx) = crossbeam_channel::bounded(EVENTS_MAX);
    let transport = Transport::start(TransportConfig::from_node(cfg), events_tx.clone())?;
    let app = Adapter::new(&cfg.app)?;
    install_signal_handlers(events_tx)?;
    tracing::info!(id = cfg.id, peer = %cfg.listen.peer, client = %cfg.listen.client, "serving");
    let mut node = Node::new(
        replica,
        transport.peer_out(),
        transport.client_out(),
        app,
        events_rx,
        Duration::from_millis(cfg.timing.tick_ms),
        metrics,
        status,
    );
    let result = node.run();
    transport.shutdown();
    match &result {
        Ok(()) => tracing::info!(id = cfg.id, "stopped"),
        Err(e) => tracing::error!(id = cfg.id, error = %e, "stopped on an error"),
    }
    Ok(result?)
}

/// SIGTERM and SIGINT ask the event loop to stop after its current event:
/// the log's in-flight writes complete or are lost like in a crash, which
/// recovery handles; nothing half-done is acknowledged.
fn install_signal_handlers(events: crossbeam_channel::Sender<Event>) -> Result<(), ServeError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(ServeError::Signals)?;
    std::thread::Builder::new()
        .name("bunker-signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                tracing::info!(signal, "stopping");
                // A full queue still stops: the send waits its turn.
                let _ = events.send(Event::Shutdown);
            }
        })
        .map_err(ServeError::Signals)?;
    Ok(())
}
