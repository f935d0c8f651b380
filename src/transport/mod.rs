//! The transport: TLS connections between servers and from clients.
//!
//! What it does: runs a small tokio runtime (two threads) that
//! - dials every other server for this server's outgoing messages: one
//!   outbound TLS connection per peer, used only to send (inbound
//!   connections only receive), so a one-way fault behaves as one-way and
//!   there is no duplicate-connection dance; reconnects with exponential
//!   backoff and jitter (20 ms to 1 s);
//! - accepts peers' connections, checks their certificate names the server
//!   their hello claims to be, and delivers their messages as
//!   `Event::Peer`;
//! - accepts clients' connections (client certificate from the cluster CA
//!   required), delivers their commands as `Event::Request` with
//!   `ctx` = the connection, and writes the replica's replies back.
//!
//! What it does not do: decide anything, retry anything (Raft resends), or
//! block the event loop: `PeerSender::send` and `ClientReplier::reply` only
//! queue.
//!
//! Bounds (a slow or dead peer cannot exhaust memory): each peer's send
//! queue holds at most `peer_queue_bytes_max` bytes; beyond it new messages
//! are dropped and counted (Raft tolerates loss); messages queued while a
//! peer is unreachable are dropped at each failed connection attempt (they
//! are stale by then). A write that does not complete within 5 s closes the
//! connection. Client connections are at most `client_connections_max`;
//! each has a reply queue of `CLIENT_REPLIES_MAX`. When the event loop's
//! queue is full, peer messages are dropped and clients are answered
//! `Busy`. Frames are at most `frame_bytes_max` (servers) or
//! `command_bytes_max` plus a header (clients), checked before allocation.
//! See `docs/PROTOCOL.md`.

pub mod certs;
mod clients;
pub mod codec;
pub mod frame;
mod peers;
pub mod tls;

use crate::replica::{ClientId, PeerMessage, Reply};
use crate::server::node::{ClientOut, Event, PeerOut};
use bytes::Bytes;
use crossbeam_channel::Sender;
use ringlog::NodeId;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
pub use tls::{Identity, TlsError, TlsFiles};

/// Replies queued for one client connection, at most.
pub const CLIENT_REPLIES_MAX: usize = 1024;

/// One server of the cluster, as the transport addresses it.
#[derive(Clone, Debug)]
pub struct PeerAddr {
    pub id: NodeId,
    pub peer: SocketAddr,
    pub client: SocketAddr,
}

#[derive(Clone, Debug)]
pub struct TransportConfig {
    pub id: NodeId,
    pub peer_listen: SocketAddr,
    pub client_listen: SocketAddr,
    /// Every server, this one included.
    pub peers: Vec<PeerAddr>,
    pub tls: TlsFiles,
    pub frame_bytes_max: usize,
    pub peer_queue_bytes_max: usize,
    pub client_connections_max: usize,
    pub command_bytes_max: usize,
}

impl TransportConfig {
    pub fn from_node(cfg: &crate::server::config::NodeConfig) -> TransportConfig {
        TransportConfig {
            id: cfg.id,
            peer_listen: cfg.listen.peer,
            client_listen: cfg.listen.client,
            peers: cfg
                .peers
                .iter()
                .map(|p| PeerAddr {
                    id: p.id,
                    peer: p.peer,
                    client: p.client,
                })
                .collect(),
            tls: TlsFiles {
                ca: cfg.tls.ca.clone(),
                cert: cfg.tls.cert.clone(),
                key: cfg.tls.key.clone(),
            },
            // An append batch is bounded by entry_bytes_max per entry and
            // the core's batch limits; leave room for a few large entries.
            frame_bytes_max: (cfg.pipeline.entry_bytes_max as usize)
                .saturating_mul(4)
                .max(16 << 20),
            peer_queue_bytes_max: 256 << 20,
            client_connections_max: 4096,
            command_bytes_max: 1 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr}: {source} (is another process using it? configuration)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the network threads: {0}")]
    Runtime(#[source] std::io::Error),
}

/// Counters, for metrics and tests.
#[derive(Debug, Default)]
pub struct TransportStats {
    pub frames_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub frames_dropped: AtomicU64,
    pub frames_received: AtomicU64,
    pub connections_rejected: AtomicU64,
    pub reconnects: AtomicU64,
    pub client_requests: AtomicU64,
}

/// What the runtime's tasks share.
pub(crate) struct Shared {
    pub id: NodeId,
    pub events: Sender<Event>,
    pub stats: TransportStats,
    pub peer_ids: Vec<NodeId>,
    /// Leader hints: node id to its client address.
    pub client_addrs: HashMap<NodeId, SocketAddr>,
    pub connections: Mutex<HashMap<u64, tokio::sync::mpsc::Sender<Bytes>>>,
    pub open_connections: AtomicUsize,
    pub next_ctx: AtomicU64,
    pub cfg: TransportConfig,
}

/// One peer's send queue.
pub(crate) struct PeerQueue {
    pub tx: tokio::sync::mpsc::UnboundedSender<Bytes>,
    /// Bytes queued and not yet written; bounded by `peer_queue_bytes_max`.
    pub bytes: Arc<AtomicUsize>,
}

pub struct Transport {
    runtime: Option<tokio::runtime::Runtime>,
    shared: Arc<Shared>,
    queues: Arc<HashMap<NodeId, PeerQueue>>,
    peer_addr: SocketAddr,
    client_addr: SocketAddr,
}

impl Transport {
    /// Binds both listeners, then starts dialing peers and accepting.
    pub fn start(cfg: TransportConfig, events: Sender<Event>) -> Result<Transport, TransportError> {
        let identity = Identity::load(&cfg.tls)?;
        let server_tls = identity.server_config()?;
        let client_tls = identity.client_config()?;
        let bind = |addr: SocketAddr| -> Result<std::net::TcpListener, TransportError> {
            let l = std::net::TcpListener::bind(addr)
                .map_err(|source| TransportError::Bind { addr, source })?;
            l.set_nonblocking(true)
                .map_err(|source| TransportError::Bind { addr, source })?;
            Ok(l)
        };
        let peer_listener = bind(cfg.peer_listen)?;
        let client_listener = bind(cfg.client_listen)?;
        let local = |l: &std::net::TcpListener, addr| {
            l.local_addr()
                .map_err(|source| TransportError::Bind { addr, source })
        };
        let peer_addr = local(&peer_listener, cfg.peer_listen)?;
        let client_addr = local(&client_listener, cfg.client_listen)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bunker-net")
            .enable_all()
            .build()
            .map_err(TransportError::Runtime)?;
        let shared = Arc::new(Shared {
            id: cfg.id,
            events,
            stats: TransportStats::default(),
            peer_ids: cfg.peers.iter().map(|p| p.id).collect(),
            client_addrs: cfg.peers.iter().map(|p| (p.id, p.client)).collect(),
            connections: Mutex::new(HashMap::new()),
            open_connections: AtomicUsize::new(0),
            next_ctx: AtomicU64::new(1),
            cfg: cfg.clone(),
        });
        let mut queues = HashMap::new();
        {
            let _guard = runtime.enter();
            let peer_listener =
                tokio::net::TcpListener::from_std(peer_listener).map_err(|source| {
                    TransportError::Bind {
                        addr: peer_addr,
                        source,
                    }
                })?;
            let client_listener =
                tokio::net::TcpListener::from_std(client_listener).map_err(|source| {
                    TransportError::Bind {
                        addr: client_addr,
                        source,
                    }
                })?;
            runtime.spawn(peers::accept_loop(
                peer_listener,
                server_tls.clone(),
                shared.clone(),
            ));
            runtime.spawn(clients::accept_loop(
                client_listener,
                server_tls,
                shared.clone(),
            ));
            for peer in cfg.peers.iter().filter(|p| p.id != cfg.id) {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                let bytes = Arc::new(AtomicUsize::new(0));
                runtime.spawn(peers::dial_loop(
                    peer.clone(),
                    rx,
                    bytes.clone(),
                    client_tls.clone(),
                    shared.clone(),
                ));
                queues.insert(peer.id, PeerQueue { tx, bytes });
            }
        }
        Ok(Transport {
            runtime: Some(runtime),
            shared,
            queues: Arc::new(queues),
            peer_addr,
            client_addr,
        })
    }

    /// The addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> (SocketAddr, SocketAddr) {
        (self.peer_addr, self.client_addr)
    }

    pub fn peer_out(&self) -> PeerSender {
        PeerSender {
            id: self.shared.id,
            queues: self.queues.clone(),
            shared: self.shared.clone(),
        }
    }

    pub fn client_out(&self) -> ClientReplier {
        ClientReplier {
            shared: self.shared.clone(),
        }
    }

    pub fn stats(&self) -> &TransportStats {
        &self.shared.stats
    }

    /// Stops every task and closes every connection.
    pub fn shutdown(mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
        }
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Queues messages for peers (the event loop's `PeerOut`).
#[derive(Clone)]
pub struct PeerSender {
    id: NodeId,
    queues: Arc<HashMap<NodeId, PeerQueue>>,
    shared: Arc<Shared>,
}

impl PeerOut for PeerSender {
    fn send(&self, msg: PeerMessage) {
        let to = msg.to();
        let Some(queue) = self.queues.get(&to) else {
            // Not a peer of this configuration: a bug above, not a peer's fault.
            tracing::debug!(to, "message for an unknown server dropped");
            return;
        };
        let payload = codec::encode_peer(&msg);
        let frame = frame::encode_to_bytes(frame::Kind::Peer, self.id as u32, to as u32, &payload);
        let len = frame.len();
        let max = self.shared.cfg.peer_queue_bytes_max;
        if queue.bytes.load(Ordering::Relaxed) + len > max {
            self.shared
                .stats
                .frames_dropped
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        queue.bytes.fetch_add(len, Ordering::Relaxed);
        if queue.tx.send(frame).is_err() {
            queue.bytes.fetch_sub(len, Ordering::Relaxed);
            self.shared
                .stats
                .frames_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Routes replies to client connections (the event loop's `ClientOut`).
#[derive(Clone)]
pub struct ClientReplier {
    shared: Arc<Shared>,
}

impl ClientOut for ClientReplier {
    fn reply(&self, ctx: u64, client: ClientId, seq: u64, reply: Reply) {
        let addrs = &self.shared.client_addrs;
        let reply = codec::WireReply::from_reply(reply, |id| addrs.get(&id).map(|a| a.to_string()));
        clients::send_reply(
            &self.shared,
            ctx,
            codec::WireResponse { client, seq, reply },
        );
    }
}
