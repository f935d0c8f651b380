//! Messages between consensus cores.
//!
//! Every message names its source, its destination and the sender's term, so
//! that a transport can route or relay it without understanding it. Message
//! contents come from peers: the core validates them and drops malformed ones;
//! it never panics on them.

use ringlog::{Entry, Index, LogId, NodeId, Term};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    /// The sender's term; for `PreVote` the term the sender would campaign in,
    /// for a granted `PreVoteResponse` that same term.
    pub term: Term,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// Would you vote for me in `term` (Raft thesis §9.6)? Changes no state.
    PreVote {
        last_log: LogId,
    },
    PreVoteResponse {
        granted: bool,
    },
    /// Raft §5.2 RequestVote.
    Vote {
        last_log: LogId,
    },
    VoteResponse {
        granted: bool,
    },
    /// Raft §5.3 AppendEntries. `seq` is the leader's quorum-check sequence
    /// number at sending time (ReadIndex).
    Append {
        prev: LogId,
        entries: Vec<Entry>,
        commit: Index,
        seq: u64,
    },
    AppendResponse {
        result: AppendResult,
        seq: u64,
    },
    /// Leader liveness and commit propagation, without entries.
    Heartbeat {
        commit: Index,
        seq: u64,
    },
    /// `match_index`: what the follower holds durably and knows to match
    /// this leader's log.
    HeartbeatResponse {
        match_index: Index,
        seq: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendResult {
    /// The follower's log matches the leader's up to `match_index`, and that
    /// prefix is durable on the follower.
    Success { match_index: Index },
    /// The entry at `rejected_prev` did not match. The follower's hint for
    /// where to retry: if `hint_term` is set, the follower's entry at the
    /// conflict has that term and its first entry of that term is at
    /// `hint_index`; otherwise the follower's log ends before `hint_index`.
    Reject {
        rejected_prev: Index,
        hint_index: Index,
        hint_term: Option<Term>,
    },
}

/// Message kinds, for selective fault injection and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MessageKind {
    PreVote,
    PreVoteResponse,
    Vote,
    VoteResponse,
    Append,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
}

impl MessageKind {
    pub const ALL: [MessageKind; 8] = [
        MessageKind::PreVote,
        MessageKind::PreVoteResponse,
        MessageKind::Vote,
        MessageKind::VoteResponse,
        MessageKind::Append,
        MessageKind::AppendResponse,
        MessageKind::Heartbeat,
        MessageKind::HeartbeatResponse,
    ];
}

impl Message {
    pub fn kind(&self) -> MessageKind {
        match self.body {
            Body::PreVote { .. } => MessageKind::PreVote,
            Body::PreVoteResponse { .. } => MessageKind::PreVoteResponse,
            Body::Vote { .. } => MessageKind::Vote,
            Body::VoteResponse { .. } => MessageKind::VoteResponse,
            Body::Append { .. } => MessageKind::Append,
            Body::AppendResponse { .. } => MessageKind::AppendResponse,
            Body::Heartbeat { .. } => MessageKind::Heartbeat,
            Body::HeartbeatResponse { .. } => MessageKind::HeartbeatResponse,
        }
    }
}
