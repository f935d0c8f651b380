//! A leader's view of one follower's log (Raft §5.3 nextIndex/matchIndex),
//! with the pipeline window.

use ringlog::Index;
use std::collections::VecDeque;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// Searching for the point where the logs match: one append at a time.
    Probe,
    /// Logs match up to `matched`: appends are pipelined within the window.
    Replicate,
    /// The follower needs a snapshot at least up to `index`.
    Snapshot { index: Index },
}

#[derive(Clone, Debug)]
pub struct Progress {
    pub state: ProgressState,
    /// Next entry to send.
    pub next: Index,
    /// Highest entry known durable on the follower and matching our log.
    pub matched: Index,
    /// Last index carried by each append in flight (Replicate only), oldest first.
    pub inflight: VecDeque<Index>,
    /// A probe is outstanding (Probe only).
    pub probe_sent: bool,
    /// Heard from this follower during the current CheckQuorum period.
    pub recent_active: bool,
    /// Highest quorum-check sequence number the follower echoed.
    pub acked_seq: u64,
    /// Ticks without progress while something is outstanding.
    pub stall_ticks: u32,
    /// `matched` when the current CheckQuorum period began.
    pub period_matched: Index,
    /// The snapshot transfer to this follower started or advanced during
    /// the current CheckQuorum period.
    pub snapshot_progressed: bool,
}

impl Progress {
    pub fn new(next: Index) -> Progress {
        Progress {
            state: ProgressState::Probe,
            next,
            matched: 0,
            inflight: VecDeque::new(),
            probe_sent: false,
            recent_active: false,
            acked_seq: 0,
            stall_ticks: 0,
            period_matched: 0,
            snapshot_progressed: false,
        }
    }

    /// Records that the follower holds `index`; returns whether `matched` grew.
    pub fn advance(&mut self, index: Index) -> bool {
        let grew = index > self.matched;
        if grew {
            self.matched = index;
            self.stall_ticks = 0;
        }
        self.next = self.next.max(self.matched + 1);
        while self
            .inflight
            .front()
            .is_some_and(|&last| last <= self.matched)
        {
            self.inflight.pop_front();
        }
        assert!(self.next > self.matched);
        grew
    }

    /// Starts probing again at `next`.
    pub fn reset_to_probe(&mut self, next: Index) {
        assert!(
            next > self.matched,
            "probe must start after the match point"
        );
        self.state = ProgressState::Probe;
        self.next = next;
        self.inflight.clear();
        self.probe_sent = false;
        self.stall_ticks = 0;
    }

    /// Whether this follower counts towards CheckQuorum for the period
    /// that ends now: it answered, and it holds what the leader's log held
    /// when the period began (`owed`; entries proposed during the period
    /// may still be in flight), or its match index advanced, or a snapshot
    /// transfer to it started or moved during the period. A follower that answers heartbeats but never accepts an
    /// append (say, a link that loses only appends) does not count: a
    /// leader kept in office by such followers could never commit, and its
    /// lease would stop the others from electing one that can.
    pub fn kept_up(&self, owed: Index) -> bool {
        let progressing = self.matched >= owed
            || self.matched > self.period_matched
            || (matches!(self.state, ProgressState::Snapshot { .. }) && self.snapshot_progressed);
        self.recent_active && progressing
    }

    /// Starts a new CheckQuorum period.
    pub fn start_period(&mut self) {
        self.recent_active = false;
        self.period_matched = self.matched;
        self.snapshot_progressed = false;
    }

    /// Something sent to this follower awaits an acknowledgement.
    pub fn outstanding(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => !self.inflight.is_empty(),
            ProgressState::Snapshot { .. } => true,
        }
    }
}
