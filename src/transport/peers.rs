//! Server-to-server connections: one dialer per peer (sends only) and the
//! acceptor of peers' connections (receives only). See `super` for the
//! bounds.

use super::frame::{self, Kind};
use super::tls::{certificate_names, node_name, server_name};
use super::{codec, PeerAddr, Shared};
use crate::server::node::Event;
use bytes::{Bytes, BytesMut};
use crossbeam_channel::TrySendError;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::UnboundedReceiver;

const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A write that takes longer means the peer stopped reading (paused, or
/// its network is gone): close and reconnect rather than queue forever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes coalesced into one write.
const WRITE_BATCH_BYTES_MAX: usize = 1 << 20;

/// Keeps one outbound connection to `peer` and writes its queue into it.
pub(super) async fn dial_loop(
    peer: PeerAddr,
    mut rx: UnboundedReceiver<Bytes>,
    queued: Arc<AtomicUsize>,
    tls: Arc<rustls::ClientConfig>,
    shared: Arc<Shared>,
) {
    let mut backoff = BACKOFF_MIN;
    let mut failures = 0u64;
    loop {
        match connect(&peer, &tls, &shared).await {
            Ok(mut stream) => {
                if failures > 0 {
                    tracing::info!(peer = peer.id, "connected after {failures} failed attempts");
                    shared.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                failures = 0;
                backoff = BACKOFF_MIN;
                match pump(&mut stream, &mut rx, &queued, &shared).await {
                    Ok(()) => return, // the transport is shutting down
                    Err(e) => tracing::info!(peer = peer.id, error = %e, "connection lost"),
                }
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::info!(peer = peer.id, addr = %peer.peer, error = %e, "cannot connect; retrying with backoff");
                }
            }
        }
        // Messages queued while the peer was unreachable are stale: Raft
        // resends what still matters once the peer answers again.
        while let Ok(f) = rx.try_recv() {
            queued.fetch_sub(f.len(), Ordering::Relaxed);
            shared.stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
        }
        let jitter =
            Duration::from_millis(rand::random::<u64>() % (backoff.as_millis() as u64 / 2 + 1));
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;

async fn connect(
    peer: &PeerAddr,
    tls: &Arc<rustls::ClientConfig>,
    shared: &Shared,
) -> std::io::Result<ClientTls> {
    // Dial from this server's own peer address (port chosen by the
    // kernel), so that the peer, firewalls and fault-injection rules see
    // one source address per server even when all share one host.
    let socket = match peer.peer {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    let local = shared.cfg.peer_listen.ip();
    if !local.is_unspecified() && local.is_ipv4() == peer.peer.is_ipv4() {
        socket.bind(std::net::SocketAddr::new(local, 0))?;
    }
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(peer.peer))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    tcp.set_nodelay(true)?;
    let name = server_name(&node_name(peer.id)).map_err(std::io::Error::other)?;
    let connector = tokio_rustls::TlsConnector::from(tls.clone());
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
        })??;
    let hello = frame::encode_to_bytes(Kind::Hello, shared.id as u32, peer.id as u32, &[]);
    stream.write_all(&hello).await?;
    stream.flush().await?;
    Ok(stream)
}

/// Writes queued frames until the queue closes (`Ok`) or a write fails.
async fn pump(
    stream: &mut ClientTls,
    rx: &mut UnboundedReceiver<Bytes>,
    queued: &AtomicUsize,
    shared: &Shared,
) -> std::io::Result<()> {
    let mut batch = BytesMut::new();
    loop {
        let Some(first) = rx.recv().await else {
            return Ok(());
        };
        batch.clear();
        let mut frames = 1;
        batch.extend_from_slice(&first);
        while batch.len() < WRITE_BATCH_BYTES_MAX {
            match rx.try_recv() {
                Ok(f) => {
                    batch.extend_from_slice(&f);
                    frames += 1;
                }
                Err(_) => break,
            }
        }
        queued.fetch_sub(batch.len(), Ordering::Relaxed);
        let write = async {
            stream.write_all(&batch).await?;
            stream.flush().await
        };
        tokio::time::timeout(WRITE_TIMEOUT, write)
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "peer stopped reading")
            })??;
        shared
            .stats
            .frames_sent
            .fetch_add(frames, Ordering::Relaxed);
        shared
            .stats
            .bytes_sent
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
    }
}

pub(super) async fn accept_loop(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors, say: wait and go on rather than spin.
                tracing::warn!(error = %e, "accepting a peer connection failed");
                tokio::time::sleep(BACKOFF_MIN).await;
                continue;
            }
        };
        let (acceptor, shared) = (acceptor.clone(), shared.clone());
        tokio::spawn(async move {
            if let Err(reason) = serve_peer(tcp, acceptor, &shared).await {
                tracing::warn!(%addr, %reason, "peer connection closed");
            }
        });
    }
}

/// Reads one peer's messages into the event loop until the connection ends.
async fn serve_peer(
    tcp: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: &Shared,
) -> Result<(), String> {
    let _ = tcp.set_nodelay(true);
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| {
            shared
                .stats
                .connections_rejected
                .fetch_add(1, Ordering::Relaxed);
            format!("TLS handshake failed (peer's fault, or not a cluster member): {e}")
        })?;
    let max = shared.cfg.frame_bytes_max;
    let hello = tokio::time::timeout(CONNECT_TIMEOUT, frame::read_frame(&mut stream, max))
        .await
        .map_err(|_| "no hello".to_string())?
        .map_err(|e| format!("bad hello: {e}"))?;
    let from = hello.from as u64;
    let known = hello.kind == Kind::Hello && from != shared.id && shared.peer_ids.contains(&from);
    let cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first().cloned());
    let named = cert.is_some_and(|c| certificate_names(&c, &node_name(from)));
    if !known || !named {
        shared
            .stats
            .connections_rejected
            .fetch_add(1, Ordering::Relaxed);
        return Err(format!(
            "rejected: hello claims server {from}, which is {} and whose name the certificate {}",
            if known {
                "a peer"
            } else {
                "not a peer of this cluster"
            },
            if named { "carries" } else { "does not carry" }
        ));
    }
    tracing::info!(peer = from, "peer connected");
    loop {
        let f = match frame::read_frame(&mut stream, max).await {
            Ok(f) => f,
            Err(frame::ReadError::Closed) => return Ok(()),
            Err(e) => return Err(format!("server {from}: {e}")),
        };
        let msg = match (f.kind, codec::decode_peer(f.payload)) {
            (Kind::Peer, Ok(msg)) => msg,
            (kind, Err(e)) => return Err(format!("server {from}: bad {kind:?} frame: {e}")),
            (kind, Ok(_)) => return Err(format!("server {from}: unexpected {kind:?} frame")),
        };
        // A peer speaks only for itself, and only to this server.
        if msg.from() != from || msg.to() != shared.id {
            return Err(format!(
                "server {from} sent a message from {} to {}",
                msg.from(),
                msg.to()
            ));
        }
        shared.stats.frames_received.fetch_add(1, Ordering::Relaxed);
        match shared.events.try_send(Event::Peer(msg)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                shared.stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => return Ok(()),
        }
    }
}
