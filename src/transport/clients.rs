//! Client connections: requests in, replies out. See `super` for bounds.

use super::codec::{self, WireReply, WireResponse};
use super::frame::{self, Kind};
use super::{Shared, CLIENT_REPLIES_MAX};
use crate::replica::Request;
use crate::server::node::Event;
use bytes::{Bytes, BytesMut};
use crossbeam_channel::TrySendError;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Room for the request header beyond the command itself.
const REQUEST_HEADER_BYTES: usize = 16;

type Tls = tokio_rustls::server::TlsStream<TcpStream>;

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
                tracing::warn!(error = %e, "accepting a client connection failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        if shared.open_connections.load(Ordering::Relaxed) >= shared.cfg.client_connections_max {
            tracing::warn!(%addr, max = shared.cfg.client_connections_max, "client refused: too many connections");
            shared
                .stats
                .connections_rejected
                .fetch_add(1, Ordering::Relaxed);
            continue;
        }
        shared.open_connections.fetch_add(1, Ordering::Relaxed);
        let (acceptor, shared) = (acceptor.clone(), shared.clone());
        tokio::spawn(async move {
            if let Err(reason) = serve_client(tcp, acceptor, &shared).await {
                tracing::info!(%addr, %reason, "client connection closed");
            }
            shared.open_connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn serve_client(
    tcp: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: &Arc<Shared>,
) -> Result<(), String> {
    let _ = tcp.set_nodelay(true);
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| {
            shared
                .stats
                .connections_rejected
                .fetch_add(1, Ordering::Relaxed);
            format!(
                "TLS handshake failed (client's certificate is not from this cluster's CA?): {e}"
            )
        })?;
    let ctx = shared.next_ctx.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = tokio::sync::mpsc::channel(CLIENT_REPLIES_MAX);
    lock(shared).insert(ctx, tx.clone());
    let (read, write) = tokio::io::split(stream);
    let writer = tokio::spawn(write_replies(write, rx));
    let result = read_requests(read, ctx, &tx, shared).await;
    lock(shared).remove(&ctx);
    drop(tx);
    // Let the writer send what is queued (a TooLarge answer, say), bounded.
    let _ = tokio::time::timeout(WRITE_TIMEOUT, writer).await;
    result
}

fn lock(
    shared: &Shared,
) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, tokio::sync::mpsc::Sender<Bytes>>> {
    shared.connections.lock().unwrap_or_else(|e| e.into_inner())
}

async fn read_requests(
    mut read: ReadHalf<Tls>,
    ctx: u64,
    tx: &tokio::sync::mpsc::Sender<Bytes>,
    shared: &Shared,
) -> Result<(), String> {
    let max = shared.cfg.command_bytes_max + REQUEST_HEADER_BYTES;
    loop {
        let f = match frame::read_frame(&mut read, max).await {
            Ok(f) => f,
            Err(frame::ReadError::Closed) => return Ok(()),
            Err(frame::ReadError::Frame(frame::FrameError::TooLarge { len, .. })) => {
                answer(
                    tx,
                    0,
                    0,
                    WireReply::TooLarge {
                        max: shared.cfg.command_bytes_max as u64,
                    },
                );
                return Err(format!("request frame of {len} bytes is too large"));
            }
            Err(e) => return Err(e.to_string()),
        };
        if f.kind != Kind::Request {
            return Err(format!("unexpected {:?} frame from a client", f.kind));
        }
        let request = codec::decode_request(f.payload).map_err(|e| format!("bad request: {e}"))?;
        shared.stats.client_requests.fetch_add(1, Ordering::Relaxed);
        let event = Event::Request(Request {
            ctx,
            client: request.client,
            seq: request.seq,
            command: request.command,
        });
        match shared.events.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => answer(tx, request.client, request.seq, WireReply::Busy),
            Err(TrySendError::Disconnected(_)) => return Ok(()),
        }
    }
}

fn answer(tx: &tokio::sync::mpsc::Sender<Bytes>, client: u64, seq: u64, reply: WireReply) {
    let payload = codec::encode_response(&WireResponse { client, seq, reply });
    let _ = tx.try_send(frame::encode_to_bytes(Kind::Response, 0, 0, &payload));
}

async fn write_replies(mut write: WriteHalf<Tls>, mut rx: tokio::sync::mpsc::Receiver<Bytes>) {
    let mut batch = BytesMut::new();
    while let Some(first) = rx.recv().await {
        batch.clear();
        batch.extend_from_slice(&first);
        while let Ok(more) = rx.try_recv() {
            batch.extend_from_slice(&more);
        }
        let write = async {
            write.write_all(&batch).await?;
            write.flush().await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
    let _ = write.shutdown().await;
}

/// Queues a reply for connection `ctx`; a reply for a closed connection, or
/// for a client that stopped reading, is dropped (the client retries).
pub(super) fn send_reply(shared: &Shared, ctx: u64, response: WireResponse) {
    let payload = codec::encode_response(&response);
    let bytes = frame::encode_to_bytes(Kind::Response, shared.id as u32, 0, &payload);
    if let Some(tx) = lock(shared).get(&ctx) {
        let _ = tx.try_send(bytes);
    }
}
