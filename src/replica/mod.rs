//! The replication pipeline: one server's replica of the application,
//! joining the consensus core, the delta engine and the application.
//!
//! What it does (invariants I1 to I5 of docs/REQUIREMENTS.md):
//! - the leader barrier: a new leader commits an entry of its own term and
//!   has applied everything committed before it executes anything;
//! - serial speculative execution: the leader runs commands one after
//!   another on its working copy, captures each command's delta and
//!   proposes it at once (a delta larger than one entry as several), and
//!   starts the next command without waiting;
//! - output commit: a response is released only when the entry carrying it
//!   commits in the leader's current term;
//! - rollback: when leadership is lost, or a command fails and its effects
//!   must be undone, the working copy returns to the committed state before
//!   anything else runs, and every pending client hears "outcome unknown"
//!   (never "failed": the entry may still commit);
//! - every server applies committed deltas in log order and verifies the
//!   state hash; a mismatch makes it stop applying, refuse to lead and ask
//!   for a snapshot;
//! - sessions (exactly-once across retries, `session`): a retry of a
//!   committed command gets the stored response, a retry of one still in the
//!   pipeline waits for it;
//! - a command whose delta is empty (a read) is answered only after a
//!   ReadIndex quorum check started after it ran and after every earlier
//!   entry of the pipeline committed;
//! - snapshots to and from peers, chunked and resumable.
//!
//! What it does not do: any I/O of its own. Like the consensus core it is
//! driven by events and produces effects; the log and the file tree are
//! passed in (`LogStore`, `FileTree`), and running the application is an
//! effect (`Effect::Execute`) whose outcome the driver reports. The same
//! code runs in the simulator and in the server.
//!
//! Order of calls: build with [`Replica::open`]; feed `handle_tick`,
//! `handle_message`, `handle_log_durable`, `handle_request` and
//! `handle_executed`; after each call drain [`Replica::poll_effect`]. While
//! an `Execute` is outstanding the application runs in the working copy and
//! the driver must not call `handle_executed` for another id; everything
//! else may arrive meanwhile.

mod core;
pub mod entry;
pub mod session;

pub use self::core::decode_session_id;
pub use self::core::{
    Effect, ExecOutcome, PeerMessage, Replica, ReplicaConfig, ReplicaError, ReplicaMutation,
    ReplicaSetup, ReplicaStats, Reply, Request, OPEN_SEQ,
};
pub use entry::{ClientId, CommandEntry, ReplicaEntry};
pub use session::{Session, SessionTable, SESSIONS_DIR};
