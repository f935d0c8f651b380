//! The consensus core: Raft as a deterministic, sans-IO state machine.
//!
//! What it does: leader election (randomized timeouts from a seeded RNG,
//! PreVote, CheckQuorum, leader stickiness), pipelined log replication with
//! per-follower progress and bounded in-flight windows, the commit rule of
//! Raft §5.4.2 (Figure 8), a ReadIndex quorum check (Raft thesis §6.4),
//! snapshot hooks, and the barrier entry every new leader appends.
//!
//! What it does not do: any I/O. It reads no clock (time is `handle_tick`),
//! opens no file or socket (the log is a [`ringlog::LogStore`] passed in,
//! messages leave as [`Effect::Send`]), starts no thread and uses no global
//! randomness (the RNG is seeded by the caller). The same code runs under the
//! deterministic simulator (`crate::sim`) and under the real server.
//!
//! Order of calls (the driver's contract):
//! 1. Build with [`Raft::new`] from a recovered log and the durable
//!    state-machine position.
//! 2. Feed events: [`Raft::handle_tick`], [`Raft::handle_message`],
//!    [`Raft::handle_log_durable`] (the log is durable up to a position),
//!    [`Raft::handle_snapshot_installed`], [`Raft::handle_snapshot_failed`];
//!    and requests: [`Raft::propose`], [`Raft::read_index`], [`Raft::compact`].
//! 3. After each call, drain [`Raft::poll_effect`] until it returns `None`
//!    and carry the effects out in order. Messages may be sent at once: every
//!    term and vote they depend on was made durable (through
//!    `LogStore::save_hard_state`) before they were produced, and followers
//!    acknowledge only durable entries.
//! 4. A returned [`CoreError`] is fatal for this server incarnation (its
//!    storage failed): stop it, report the error, and restart from disk.
//!
//! Invariants (asserted here, and checked independently by the simulator):
//! at most one leader per term; a leader never overwrites or deletes entries
//! of its own log; the commit index never decreases; a leader counts
//! replicas only for entries of its own term; an acknowledgement names only
//! entries that are durable on the acknowledging server.

mod core;
mod effect;
mod membership;
mod message;
mod options;
mod progress;

pub use self::core::{CoreError, ProposeError, Raft, ReadError, Role};
pub use effect::Effect;
pub use membership::{Membership, MembershipError};
pub use message::{AppendResult, Body, Message, MessageKind};
pub use options::{Mutation, Options, OptionsError};
pub use ringlog::{Entry, EntryKind, HardState, Index, LogId, LogStore, NodeId, Term};

#[cfg(test)]
mod tests;
