//! What the core asks its driver to do, or tells the layer above.

use crate::raft::Message;
use ringlog::{Index, NodeId, Term};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send a message to `message.to`. Anything it depends on is durable.
    Send(Message),
    /// This server became leader of `term`; its barrier entry is not yet
    /// committed, so it must not execute commands yet.
    BecameLeader { term: Term },
    /// The barrier entry (at `index`) of this leader's `term` committed: the
    /// commit index now covers every entry committed by earlier leaders.
    BarrierPassed { term: Term, index: Index },
    /// This server stopped being leader of `term`. Its pending proposals may
    /// still commit or be discarded; it can no longer tell which.
    LostLeadership { term: Term },
    /// Entries up to `index` are committed and durable here: apply them in
    /// order (read them with `Raft::entries`).
    Committed { index: Index },
    /// The log suffix from `from` was discarded: any proposal at or after
    /// `from` that had not committed never will.
    EntriesDiscarded { from: Index },
    /// The read request `ctx` passed its quorum check: answer it once the
    /// state machine has applied `index`.
    ReadReady { ctx: u64, index: Index },
    /// The read request `ctx` cannot be confirmed (leadership lost).
    ReadFailed { ctx: u64 },
    /// Follower `to` needs entries this log released: send it a snapshot of
    /// the state machine, then the core resumes replication.
    SnapshotNeeded { to: NodeId },
}
