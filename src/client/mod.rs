//! The Bunker client library, and `bunker exec`.
//!
//! ```no_run
//! use bunker::client::{BlockingClient, ClientConfig};
//! # fn main() -> Result<(), bunker::client::ClientError> {
//! let cfg = ClientConfig::new(
//!     vec!["127.0.0.1:7201".parse().unwrap(), "127.0.0.1:7202".parse().unwrap()],
//!     "certs/ca.pem", "certs/client-ops.pem", "certs/client-ops.key",
//! );
//! let mut client = BlockingClient::connect(cfg)?;
//! let response = client.call(bytes::Bytes::from_static(b"balance alice"))?;
//! println!("{} {}", response.status, String::from_utf8_lossy(&response.body));
//! # Ok(()) }
//! ```
//!
//! What it does: finds the leader (tries the configured servers, follows
//! `NotLeader` hints, remembers the leader), opens a session (the cluster
//! commits it and names it: ids are never reused), sends each command with
//! the session's id and the next sequence number, and retries the *same*
//! (id, sequence) across timeouts, lost connections, `Unknown` outcomes and
//! failovers until an answer arrives or the limits (`attempts_max`,
//! `total_timeout_ms`) are reached; it polls briefly while it looks for a
//! leader and backs off when the cluster is busy (docs/PROTOCOL.md). The server's session table makes the
//! retries safe: a command runs at most once, and a retry of a command
//! that committed gets the stored response. Sessions are bounded, so an
//! idle one can expire: a command refused for that before any earlier
//! attempt was sent is sent again in a new session; a *retry* refused for
//! that is an error (`ClientError::SessionExpired`), since the first
//! attempt may have run and nobody can tell any more.
//!
//! What it does not do: run two commands of one client at once (one
//! command in flight per client; use several clients for concurrency), or
//! hide an unknown outcome: `ClientError::Unavailable` means the command
//! may or may not have run.

use crate::replica::{decode_session_id, OPEN_SEQ};
use crate::transport::codec::{self, WireReply, WireRequest};
use crate::transport::frame::{self, Kind};
use crate::transport::tls::{server_name, Identity, TlsError, TlsFiles, SERVER_NAME};
use bytes::Bytes;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Largest response accepted from a server.
pub const RESPONSE_BYTES_MAX: usize = 64 << 20;
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// The longest pause while looking for a leader (a server down, no leader
/// known, leadership just changed): an election ends within a few election
/// timeouts (100 to 200 ms on a LAN), so waiting longer than this between
/// polls only adds to the failover time the client sees. Overload (`Busy`)
/// still backs off up to `BACKOFF_MAX`.
const LEADER_POLL_MAX: Duration = Duration::from_millis(40);
// A poll is never longer than the longest backoff (Pause::duration relies
// on it to hand over to Backoff without a jump down).
const _: () = assert!(LEADER_POLL_MAX.as_millis() <= BACKOFF_MAX.as_millis());
/// Short polls per request before the pauses back off as for `Busy`:
/// about 1.5 s of polling, several election timeouts. A leader still
/// missing after that is a partition or a lost majority, not an election,
/// and `attempts_max` must then last until `total_timeout_ms`.
const LEADER_POLLS_MAX: u32 = 25;

/// What to do before the next attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pause {
    /// Go on at once (the attempt already waited, or a hint names the
    /// leader).
    None,
    /// Looking for a leader: a short pause, growing to `LEADER_POLL_MAX`.
    Poll,
    /// The cluster is busy: exponential backoff to `BACKOFF_MAX`.
    Backoff,
}

impl Pause {
    /// How long to sleep, given the current backoff; and the next backoff.
    fn duration(self, backoff: Duration) -> (Duration, Duration) {
        let next = (backoff * 2).min(BACKOFF_MAX);
        match self {
            Pause::None => (Duration::ZERO, backoff),
            Pause::Poll => (backoff.min(LEADER_POLL_MAX), next),
            Pause::Backoff => (backoff, next),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The servers' client addresses (any subset; the leader is found).
    pub servers: Vec<SocketAddr>,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Resume a session: (its id, the sequence number of the next call).
    /// `None` opens a new session on the first call. Two clients must never
    /// use one session at once.
    pub session: Option<(u64, u64)>,
    /// One attempt (send and wait for the answer) at most.
    pub attempt_timeout_ms: u64,
    /// A whole call, retries included, at most.
    pub total_timeout_ms: u64,
    /// Attempts per call at most.
    pub attempts_max: u32,
}

impl ClientConfig {
    /// Defaults: 2 s per attempt, 30 s and 200 attempts per call.
    pub fn new(
        servers: Vec<SocketAddr>,
        ca: impl Into<PathBuf>,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        ClientConfig {
            servers,
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
            session: None,
            attempt_timeout_ms: 2_000,
            total_timeout_ms: 30_000,
            attempts_max: 200,
        }
    }
}

/// An answer from the application: its status (0 success; other values
/// its own errors, which are still answers) and its response bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u8,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("client configuration: {0}")]
    Config(#[from] TlsError),
    #[error("client configuration: no servers given")]
    NoServers,
    #[error(
        "cluster unavailable: no answer after {attempts} attempts in {elapsed_ms} ms (last: {last_error}); {outcome}"
    )]
    Unavailable {
        attempts: u32,
        elapsed_ms: u64,
        last_error: String,
        /// What may have happened, and how to retry safely.
        outcome: String,
    },
    #[error(
        "session {client} expired while sequence {seq} was being retried: an earlier attempt may have run \
and the cluster can no longer tell; look at the application's state before running it again"
    )]
    SessionExpired { client: u64, seq: u64 },
    #[error("the application failed on this command (nothing it did was kept): {reason}")]
    AppFailed { reason: String },
    #[error("sequence {seq} is stale: the server already has {last_seq} from this client id (is another client using it?)")]
    Stale { seq: u64, last_seq: u64 },
    #[error("command too large: the server accepts at most {max} bytes")]
    TooLarge { max: u64 },
    #[error("the server rejected the request: {reason}")]
    Rejected { reason: String },
    #[error("cannot start the client's runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

type Stream = tokio_rustls::client::TlsStream<TcpStream>;

/// How one request's exchange ended without an error.
enum Answer {
    Reply(Response),
    /// The session had expired; `sent_before`: an earlier attempt of this
    /// request was sent (and may have run).
    Expired {
        sent_before: bool,
    },
}

/// The asynchronous client (tokio).
pub struct Client {
    cfg: ClientConfig,
    tls: Arc<rustls::ClientConfig>,
    client_id: u64,
    seq: u64,
    /// The next call continues a session given in the configuration: it
    /// may be a retry of a command an earlier process sent, so a
    /// `SessionExpired` answer to it is an error, never a reason to run it
    /// in a new session.
    resuming: bool,
    leader: Option<SocketAddr>,
    next_server: usize,
    conn: Option<(SocketAddr, Stream)>,
}

impl Client {
    /// Loads the identity; connections are made on the first call.
    pub async fn connect(cfg: ClientConfig) -> Result<Client, ClientError> {
        Client::new(cfg)
    }

    fn new(cfg: ClientConfig) -> Result<Client, ClientError> {
        if cfg.servers.is_empty() {
            return Err(ClientError::NoServers);
        }
        let identity = Identity::load(&TlsFiles {
            ca: cfg.ca.clone(),
            cert: cfg.cert.clone(),
            key: cfg.key.clone(),
        })?;
        let (client_id, next_seq) = cfg.session.unwrap_or((0, 1));
        Ok(Client {
            tls: identity.client_config()?,
            client_id,
            seq: next_seq.saturating_sub(1),
            resuming: cfg.session.is_some(),
            leader: None,
            next_server: rand::random::<usize>() % cfg.servers.len(),
            conn: None,
            cfg,
        })
    }

    /// The session's id (0 before the first call opened one).
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// The sequence number of the last command sent.
    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    /// Sends `command` with the next sequence number; retries it (same
    /// sequence) until an answer arrives or the limits are reached.
    pub async fn call(&mut self, command: Bytes) -> Result<Response, ClientError> {
        let started = Instant::now();
        // At most two rounds: the second only after the session expired
        // before this command was ever sent, so that it cannot have run.
        for _ in 0..2 {
            if self.client_id == 0 {
                self.open_session(started).await?;
            }
            self.seq += 1;
            let seq = self.seq;
            let resuming = std::mem::replace(&mut self.resuming, false);
            match self.exchange(seq, &command, started).await? {
                Answer::Reply(r) => return Ok(r),
                Answer::Expired { sent_before } => {
                    let client = std::mem::replace(&mut self.client_id, 0);
                    if sent_before || resuming {
                        return Err(ClientError::SessionExpired { client, seq });
                    }
                }
            }
        }
        Err(ClientError::Rejected {
            reason: "a session opened for this command expired at once: the cluster's session table is too small for its clients".into(),
        })
    }

    /// Opens a session: the cluster commits it and answers with its id.
    async fn open_session(&mut self, started: Instant) -> Result<(), ClientError> {
        let Answer::Reply(r) = self.exchange(OPEN_SEQ, &Bytes::new(), started).await? else {
            return Err(ClientError::Rejected {
                reason: "opening a session was refused as expired".into(),
            });
        };
        self.client_id = decode_session_id(&r.body).ok_or_else(|| ClientError::Rejected {
            reason: format!("the answer to opening a session is not an id: {:?}", r.body),
        })?;
        self.seq = 0;
        Ok(())
    }

    /// Sends request `seq` and retries it until an answer or the limits.
    async fn exchange(
        &mut self,
        seq: u64,
        command: &Bytes,
        started: Instant,
    ) -> Result<Answer, ClientError> {
        let total = Duration::from_millis(self.cfg.total_timeout_ms);
        let mut backoff = BACKOFF_MIN;
        let mut polls = 0;
        let mut redirects = 0;
        let mut sent_before = false;
        let mut last_error = String::from("no attempt made");
        for attempt in 1..=self.cfg.attempts_max {
            if started.elapsed() >= total {
                return Err(self.unavailable(attempt - 1, started, last_error));
            }
            let target = self.target();
            let limit = Duration::from_millis(self.cfg.attempt_timeout_ms)
                .min(total.saturating_sub(started.elapsed()));
            let mut sent = false;
            let outcome =
                tokio::time::timeout(limit, self.attempt(target, seq, command, &mut sent)).await;
            let earlier = sent_before;
            sent_before |= sent;
            let pause = match outcome {
                Err(_) => {
                    last_error = format!("{target}: no answer within {} ms", limit.as_millis());
                    self.forget(target);
                    Pause::None
                }
                Ok(Err(e)) => {
                    // A server down or unreachable: the next one is tried.
                    last_error = format!("{target}: {e}");
                    self.forget(target);
                    Pause::Poll
                }
                Ok(Ok(reply)) => match reply {
                    WireReply::Ok { status, body } => {
                        self.leader = Some(target);
                        return Ok(Answer::Reply(Response { status, body }));
                    }
                    WireReply::SessionExpired => {
                        self.leader = Some(target);
                        return Ok(Answer::Expired {
                            sent_before: earlier,
                        });
                    }
                    WireReply::NotLeader { hint } => {
                        last_error = format!("{target}: not the leader");
                        redirects += 1;
                        match hint
                            .and_then(|h| h.parse::<SocketAddr>().ok())
                            .filter(|h| *h != target)
                        {
                            Some(leader) => {
                                self.leader = Some(leader);
                                // Hints that go round in circles (an election
                                // under way) must not burn the attempts.
                                if redirects > 2 {
                                    Pause::Poll
                                } else {
                                    Pause::None
                                }
                            }
                            // No leader known there: an election is under way.
                            None => {
                                self.forget(target);
                                Pause::Poll
                            }
                        }
                    }
                    WireReply::Unknown => {
                        last_error = format!("{target}: outcome unknown (leadership changed)");
                        self.forget(target);
                        Pause::Poll
                    }
                    WireReply::Busy => {
                        last_error = format!("{target}: busy");
                        Pause::Backoff
                    }
                    WireReply::Stale { last_seq } => {
                        return Err(ClientError::Stale { seq, last_seq })
                    }
                    WireReply::AppFailed { reason } if seq == OPEN_SEQ => {
                        // Not proposed (a full pipeline or log): opening a
                        // session is always safe to send again.
                        last_error = format!("{target}: {reason}");
                        Pause::Backoff
                    }
                    WireReply::AppFailed { reason } => {
                        return Err(ClientError::AppFailed { reason })
                    }
                    WireReply::TooLarge { max } => return Err(ClientError::TooLarge { max }),
                    WireReply::BadRequest { reason } => {
                        return Err(ClientError::Rejected { reason })
                    }
                },
            };
            let pause = match pause {
                Pause::Poll if polls >= LEADER_POLLS_MAX => Pause::Backoff,
                Pause::Poll => {
                    polls += 1;
                    Pause::Poll
                }
                other => other,
            };
            let (sleep, next) = pause.duration(backoff);
            backoff = next;
            if !sleep.is_zero() {
                // Jitter up to the pause again, so that clients that lost
                // the same leader do not poll in step.
                let jitter =
                    Duration::from_millis(rand::random::<u64>() % (sleep.as_millis() as u64 + 1));
                tokio::time::sleep((sleep + jitter).min(total.saturating_sub(started.elapsed())))
                    .await;
            }
        }
        Err(self.unavailable(self.cfg.attempts_max, started, last_error))
    }

    fn unavailable(&self, attempts: u32, started: Instant, last_error: String) -> ClientError {
        ClientError::Unavailable {
            attempts,
            elapsed_ms: started.elapsed().as_millis() as u64,
            last_error,
            outcome: if self.client_id == 0 {
                "no command ran (no session could be opened)".into()
            } else {
                format!(
                    "the command may or may not have run: sending it again as sequence {seq} of session {client} is safe (bunker exec --session {client}:{seq})",
                    seq = self.seq,
                    client = self.client_id
                )
            },
        }
    }

    fn target(&mut self) -> SocketAddr {
        if let Some(leader) = self.leader {
            return leader;
        }
        let n = self.cfg.servers.len();
        self.cfg.servers[self.next_server % n]
    }

    /// Stops trusting `target`: drop its connection, try the next server.
    fn forget(&mut self, target: SocketAddr) {
        if self.conn.as_ref().is_some_and(|(a, _)| *a == target) {
            self.conn = None;
        }
        if self.leader == Some(target) {
            self.leader = None;
        }
        self.next_server = self.next_server.wrapping_add(1);
    }

    async fn attempt(
        &mut self,
        target: SocketAddr,
        seq: u64,
        command: &Bytes,
        sent: &mut bool,
    ) -> Result<WireReply, String> {
        if self.conn.as_ref().is_none_or(|(a, _)| *a != target) {
            self.conn = None;
            let stream = self.open(target).await?;
            self.conn = Some((target, stream));
        }
        let Some((_, stream)) = self.conn.as_mut() else {
            return Err("no connection".into());
        };
        let payload = codec::encode_request(&WireRequest {
            client: self.client_id,
            seq,
            command: command.clone(),
        });
        let bytes = frame::encode_to_bytes(Kind::Request, 0, 0, &payload);
        // From here on, this attempt may reach the server and run.
        *sent = true;
        let written = async {
            stream.write_all(&bytes).await?;
            stream.flush().await
        };
        if let Err(e) = written.await {
            self.conn = None;
            return Err(format!("send: {e}"));
        }
        loop {
            let f = match frame::read_frame(stream, RESPONSE_BYTES_MAX).await {
                Ok(f) => f,
                Err(e) => {
                    self.conn = None;
                    return Err(format!("receive: {e}"));
                }
            };
            let response =
                codec::decode_response(f.payload).map_err(|e| format!("bad response: {e}"))?;
            // Answers to earlier attempts of this or an earlier command
            // may still arrive on a reused connection: skip them.
            // Any answer to an open request names a usable session.
            let opening = seq == OPEN_SEQ && response.seq == OPEN_SEQ;
            if matches!(response.reply, WireReply::TooLarge { .. })
                || opening
                || (response.client == self.client_id && response.seq == seq)
            {
                return Ok(response.reply);
            }
        }
    }

    async fn open(&self, target: SocketAddr) -> Result<Stream, String> {
        let tcp = TcpStream::connect(target)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let name = server_name(SERVER_NAME).map_err(|e| e.to_string())?;
        tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))
    }
}

/// The same client for code without an async runtime: each call blocks.
pub struct BlockingClient {
    runtime: tokio::runtime::Runtime,
    inner: Client,
}

impl BlockingClient {
    pub fn connect(cfg: ClientConfig) -> Result<BlockingClient, ClientError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ClientError::Runtime)?;
        let inner = Client::new(cfg)?;
        Ok(BlockingClient { runtime, inner })
    }

    pub fn call(&mut self, command: Bytes) -> Result<Response, ClientError> {
        self.runtime.block_on(self.inner.call(command))
    }

    pub fn client_id(&self) -> u64 {
        self.inner.client_id()
    }
}

#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    /// The servers' client addresses, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub servers: Vec<SocketAddr>,
    /// The cluster CA certificate.
    #[arg(long)]
    pub ca: PathBuf,
    /// This client's certificate (from `bunker certs --client NAME`).
    #[arg(long)]
    pub cert: PathBuf,
    #[arg(long)]
    pub key: PathBuf,
    /// Send the command as sequence SEQ of session ID (`ID:SEQ`), to retry
    /// a command whose outcome is unknown (the error message of the failed
    /// run gives both). By default the command opens a new session.
    #[arg(long, value_parser = parse_session)]
    pub session: Option<(u64, u64)>,
    /// Give up after this long (the command may or may not have run).
    #[arg(long, default_value_t = 30_000)]
    pub timeout_ms: u64,
    /// The command; read from stdin when absent.
    #[arg(trailing_var_arg = true)]
    pub command: Vec<String>,
}

fn parse_session(text: &str) -> Result<(u64, u64), String> {
    let bad = || format!("{text:?} is not ID:SEQ (two positive integers)");
    let (id, seq) = text.split_once(':').ok_or_else(bad)?;
    let id: u64 = id.parse().map_err(|_| bad())?;
    let seq: u64 = seq.parse().map_err(|_| bad())?;
    if id == 0 || seq == 0 {
        return Err(bad());
    }
    Ok((id, seq))
}

/// `bunker exec`: exit 0 on status 0, 1 on another application status
/// (the response is printed either way), 2 on errors.
pub fn run_exec(args: ExecArgs) -> ExitCode {
    let command = if args.command.is_empty() {
        let mut buf = Vec::new();
        if let Err(e) = std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf) {
            eprintln!("bunker exec: reading the command from stdin: {e}");
            return ExitCode::from(2);
        }
        Bytes::from(buf)
    } else {
        Bytes::from(args.command.join(" "))
    };
    let cfg = ClientConfig {
        session: args.session,
        total_timeout_ms: args.timeout_ms,
        ..ClientConfig::new(args.servers, args.ca, args.cert, args.key)
    };
    let result = BlockingClient::connect(cfg).and_then(|mut c| c.call(command));
    match result {
        Ok(r) => {
            println!("{}", String::from_utf8_lossy(&r.body));
            if r.status == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("bunker exec: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looking_for_a_leader_polls_briefly_and_overload_backs_off() {
        let mut backoff = BACKOFF_MIN;
        let mut polls = Vec::new();
        for _ in 0..8 {
            let (sleep, next) = Pause::Poll.duration(backoff);
            polls.push(sleep.as_millis());
            backoff = next;
        }
        assert_eq!(polls, [10, 20, 40, 40, 40, 40, 40, 40]);
        // The backoff kept growing underneath: once polling gives up, the
        // next pause is the long one.
        assert_eq!(Pause::Backoff.duration(backoff).0, BACKOFF_MAX);
        assert_eq!(Pause::None.duration(backoff), (Duration::ZERO, backoff));
    }
}
