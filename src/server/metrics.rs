//! Prometheus metrics and the status document of one server.
//!
//! What it does: keeps the metrics in a `prometheus-client` registry (all
//! atomics, updated by the event loop without locks) and a small status
//! document (JSON) that `bunker status` reads; serves both over plain HTTP
//! on the configured metrics address (`/metrics`, `/status`).
//!
//! What it does not do: measure anything itself; the event loop reports.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

/// Everything the event loop reports.
pub struct Metrics {
    pub role: Gauge,
    pub term: Gauge,
    pub commit_index: Gauge,
    pub applied_index: Gauge,
    pub checkpoint_index: Gauge,
    pub last_log_index: Gauge,
    pub leader: Gauge,
    pub peer_match: Family<PeerLabel, Gauge>,
    pub peer_lag: Family<PeerLabel, Gauge>,
    pub commit_latency_seconds: Histogram,
    pub sync_latency_seconds: Histogram,
    pub execute_seconds: Histogram,
    pub capture_seconds: Histogram,
    /// Leader: from a command's arrival to the start of its run.
    pub queue_seconds: Histogram,
    /// Leader: from a command's proposal to its committed response (own
    /// log append and replication, in parallel, then the commit).
    pub commit_wait_seconds: Histogram,
    /// Time the event loop spent in the replica per event kind (where a
    /// command's latency goes: apply and sync waits show up here).
    pub handle_seconds: Family<KindLabel, Histogram>,
    pub delta_bytes: Counter,
    pub elections_won: Counter,
    pub rollbacks: Counter,
    pub entries_applied: Counter,
    pub snapshots_sent: Counter,
    pub snapshots_installed: Counter,
    pub app_failures: Counter,
    pub replies: Family<KindLabel, Counter>,
    /// Log flushes by the sync path that made them durable (`log.sync =
    /// "adaptive"` picks one per flush).
    pub log_flushes: Family<KindLabel, Counter>,
    registry: Registry,
}

fn latency_histogram() -> Histogram {
    // 20 µs to about 20 s.
    Histogram::new(exponential_buckets(20e-6, 2.0, 20))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("bunker");
        let m = Metrics {
            role: Gauge::default(),
            term: Gauge::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            checkpoint_index: Gauge::default(),
            last_log_index: Gauge::default(),
            leader: Gauge::default(),
            peer_match: Family::default(),
            peer_lag: Family::default(),
            commit_latency_seconds: latency_histogram(),
            sync_latency_seconds: latency_histogram(),
            execute_seconds: latency_histogram(),
            capture_seconds: latency_histogram(),
            queue_seconds: latency_histogram(),
            commit_wait_seconds: latency_histogram(),
            handle_seconds: Family::new_with_constructor(latency_histogram),
            delta_bytes: Counter::default(),
            elections_won: Counter::default(),
            rollbacks: Counter::default(),
            entries_applied: Counter::default(),
            snapshots_sent: Counter::default(),
            snapshots_installed: Counter::default(),
            app_failures: Counter::default(),
            replies: Family::default(),
            log_flushes: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "role",
            "0 follower, 1 pre-candidate, 2 candidate, 3 leader",
            m.role.clone(),
        );
        r.register("term", "Current Raft term", m.term.clone());
        r.register(
            "commit_index",
            "Highest log index known committed",
            m.commit_index.clone(),
        );
        r.register(
            "applied_index",
            "Highest log index applied to the state",
            m.applied_index.clone(),
        );
        r.register(
            "checkpoint_index",
            "Last durable checkpoint of the state (a restart replays the log after it)",
            m.checkpoint_index.clone(),
        );
        r.register(
            "last_log_index",
            "Last index in the log",
            m.last_log_index.clone(),
        );
        r.register(
            "leader",
            "The leader this server follows (0: none known)",
            m.leader.clone(),
        );
        r.register(
            "peer_match_index",
            "Leader only: each follower's match index",
            m.peer_match.clone(),
        );
        r.register(
            "peer_lag_entries",
            "Leader only: entries each follower lacks",
            m.peer_lag.clone(),
        );
        r.register(
            "commit_latency_seconds",
            "Leader: from a command's arrival to its committed response",
            m.commit_latency_seconds.clone(),
        );
        r.register(
            "log_flushes",
            "Log flushes by sync path (kind: fdatasync or dsync)",
            m.log_flushes.clone(),
        );
        r.register(
            "sync_latency_seconds",
            "Group commit of the log: write and sync",
            m.sync_latency_seconds.clone(),
        );
        r.register(
            "execute_seconds",
            "Application run time per command",
            m.execute_seconds.clone(),
        );
        r.register(
            "capture_seconds",
            "Capturing and proposing a command's delta",
            m.capture_seconds.clone(),
        );
        r.register(
            "queue_seconds",
            "Leader: from a command's arrival to the start of its run",
            m.queue_seconds.clone(),
        );
        r.register(
            "commit_wait_seconds",
            "Leader: from a command's proposal to its committed response",
            m.commit_wait_seconds.clone(),
        );
        r.register(
            "handle_seconds",
            "Event loop time in the replica per event kind",
            m.handle_seconds.clone(),
        );
        r.register(
            "delta_bytes",
            "Bytes of delta entries proposed",
            m.delta_bytes.clone(),
        );
        r.register(
            "elections_won",
            "Times this server became leader",
            m.elections_won.clone(),
        );
        r.register("rollbacks", "Working-copy rollbacks", m.rollbacks.clone());
        r.register(
            "entries_applied",
            "Log entries applied",
            m.entries_applied.clone(),
        );
        r.register(
            "snapshots_sent",
            "Snapshot transfers started",
            m.snapshots_sent.clone(),
        );
        r.register(
            "snapshots_installed",
            "Snapshots installed",
            m.snapshots_installed.clone(),
        );
        r.register(
            "app_failures",
            "Application runs that failed",
            m.app_failures.clone(),
        );
        r.register(
            "client_replies",
            "Replies to clients, by kind",
            m.replies.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

/// What `bunker status` shows for one server.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub id: u64,
    pub role: String,
    pub term: u64,
    pub leader: Option<u64>,
    pub commit_index: u64,
    pub applied_index: u64,
    /// The last durable checkpoint of the state (the log holds everything
    /// after it; a restart replays from here).
    #[serde(default)]
    pub checkpoint_index: u64,
    pub last_log_index: u64,
    pub state_hash: String,
    pub diverged: Option<u64>,
    pub peers: Vec<PeerStatus>,
    pub uptime_s: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PeerStatus {
    pub id: u64,
    pub match_index: u64,
    pub lag: u64,
}

/// Serves `/metrics` and `/status` until the process exits.
pub fn serve_http(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    status: Arc<Mutex<Status>>,
) -> std::io::Result<()> {
    let server = tiny_http::Server::http(addr).map_err(std::io::Error::other)?;
    std::thread::Builder::new()
        .name("bunker-metrics".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let (body, content_type) = match request.url() {
                    "/metrics" => (
                        metrics.encode(),
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                    "/status" => {
                        let status = status.lock().unwrap_or_else(|e| e.into_inner()).clone();
                        (
                            serde_json::to_string(&status).unwrap_or_default(),
                            "application/json",
                        )
                    }
                    _ => ("see /metrics and /status\n".to_string(), "text/plain"),
                };
                let header = tiny_http::Header::from_bytes("Content-Type", content_type)
                    .unwrap_or_else(|_| {
                        tiny_http::Header::from_bytes("Content-Type", "text/plain")
                            .expect("static header")
                    });
                let response = tiny_http::Response::from_string(body).with_header(header);
                // A client that went away is not the server's problem.
                let _ = request.respond(response);
            }
        })?;
    Ok(())
}
