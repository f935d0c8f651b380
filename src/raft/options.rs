//! Tunables of the consensus core, in ticks, entries and bytes.
//!
//! A tick is whatever period the driver chooses (the server uses a few
//! milliseconds); the core only counts them.

#[derive(Clone, Debug)]
pub struct Options {
    /// A leader sends heartbeats every this many ticks.
    pub heartbeat_ticks: u32,
    /// Election timeouts are drawn uniformly from `[min, 2 * min)`. This is
    /// also the leader-stickiness window and the CheckQuorum period.
    pub election_ticks_min: u32,
    /// A follower whose acknowledgements stall this long is probed again.
    pub retransmit_ticks: u32,
    /// A follower left in snapshot transfer this long is probed again (and
    /// gets a new snapshot if it still needs one): a lost transfer costs this.
    pub snapshot_ticks_max: u32,
    /// Append messages in flight per follower (the pipeline window).
    pub inflight_appends_max: usize,
    /// Entries per append message.
    pub batch_entries_max: usize,
    /// Payload bytes per append message (at least one entry is always sent).
    pub batch_bytes_max: u64,
    /// Proposals accepted beyond the commit index before `propose` pushes back.
    pub uncommitted_entries_max: u64,
    /// Payload bytes accepted beyond the commit index before `propose`
    /// pushes back; one proposal (a command's delta, all its parts) larger
    /// than this is refused (`ProposeError::TooLarge`).
    /// Every follower's log must hold them, with room for a barrier: a log
    /// full of entries that cannot commit yet takes nothing more, not even
    /// the barrier a new leader needs to commit them. Set it to a fraction
    /// of the smallest log's capacity.
    pub uncommitted_bytes_max: u64,
    /// Largest payload of one entry.
    pub entry_bytes_max: u64,
    /// Read requests waiting for their quorum check.
    pub pending_reads_max: usize,
    /// Test-only: a deliberate bug, to prove the checkers catch it.
    #[doc(hidden)]
    pub mutation: Mutation,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            heartbeat_ticks: 2,
            election_ticks_min: 10,
            retransmit_ticks: 6,
            snapshot_ticks_max: 30,
            inflight_appends_max: 16,
            batch_entries_max: 256,
            batch_bytes_max: 1 << 20,
            uncommitted_entries_max: 4096,
            uncommitted_bytes_max: 64 << 20,
            entry_bytes_max: 8 << 20,
            pending_reads_max: 4096,
            mutation: Mutation::None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionsError {
    #[error("option {0} must be at least 1")]
    Zero(&'static str),
    #[error("election_ticks_min ({election}) must exceed 2 * heartbeat_ticks ({heartbeat})")]
    ElectionTooShort { election: u32, heartbeat: u32 },
}

impl Options {
    pub fn validate(&self) -> Result<(), OptionsError> {
        let nonzero = [
            ("heartbeat_ticks", self.heartbeat_ticks as u64),
            ("election_ticks_min", self.election_ticks_min as u64),
            ("retransmit_ticks", self.retransmit_ticks as u64),
            ("snapshot_ticks_max", self.snapshot_ticks_max as u64),
            ("inflight_appends_max", self.inflight_appends_max as u64),
            ("batch_entries_max", self.batch_entries_max as u64),
            ("batch_bytes_max", self.batch_bytes_max),
            ("uncommitted_entries_max", self.uncommitted_entries_max),
            ("uncommitted_bytes_max", self.uncommitted_bytes_max),
            ("entry_bytes_max", self.entry_bytes_max),
            ("pending_reads_max", self.pending_reads_max as u64),
        ];
        for (name, value) in nonzero {
            if value == 0 {
                return Err(OptionsError::Zero(name));
            }
        }
        if self.election_ticks_min <= 2 * self.heartbeat_ticks {
            return Err(OptionsError::ElectionTooShort {
                election: self.election_ticks_min,
                heartbeat: self.heartbeat_ticks,
            });
        }
        Ok(())
    }
}

/// Deliberate bugs, switched on only by tests and `bunker-sim --mutation`,
/// to show that the simulator's checkers and the scenarios catch them.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Mutation {
    #[default]
    None,
    /// Commit by counting replicas of entries from older terms (breaks Raft
    /// §5.4.2, Figure 8).
    CommitOlderTerms,
    /// Acknowledge (and count the leader's own log) before the write is durable.
    AckBeforeDurable,
    /// Grant votes without persisting them.
    ForgetVote,
    /// A leader never steps down for lack of a quorum.
    SkipCheckQuorum,
}

impl std::str::FromStr for Mutation {
    type Err = String;

    fn from_str(s: &str) -> Result<Mutation, String> {
        match s {
            "none" => Ok(Mutation::None),
            "commit-older-terms" => Ok(Mutation::CommitOlderTerms),
            "ack-before-durable" => Ok(Mutation::AckBeforeDurable),
            "forget-vote" => Ok(Mutation::ForgetVote),
            "skip-check-quorum" => Ok(Mutation::SkipCheckQuorum),
            other => Err(format!(
                "unknown mutation {other:?}; expected one of none, commit-older-terms, \
                 ack-before-durable, forget-vote, skip-check-quorum"
            )),
        }
    }
}
