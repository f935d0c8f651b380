//! Invariant checkers, one per property, fed by the simulator after every
//! event. Each records violations instead of panicking, so a run reports
//! every broken property with the seed that broke it.
//!
//! - Election safety (Raft §5.2): at most one leader per term.
//! - Log matching (§5.3): two entries with the same index and term have the
//!   same content and the same predecessor term, so the logs are identical
//!   up to them (checked on every append, on every server, for all time).
//! - Leader completeness (§5.4): a new leader's log holds every entry
//!   committed before it was elected.
//! - State machine safety (§5.4.3): no two servers apply different entries
//!   at the same index, and states at equal index are equal.
//! - Durable hard state: a server's term never goes backwards and its vote
//!   never changes within a term, across crashes.
//! - Acknowledged proposals survive: every proposal reported committed to a
//!   client is in the committed log at the end (checked by the simulator).
//! - Linearizable reads: a read confirmed by ReadIndex returns an index that
//!   covers every proposal acknowledged before the read began.

use crate::sim::app::entry_digest;
use ringlog::{Entry, Index, LogId, NodeId, Term};
use std::collections::HashMap;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub at_us: u64,
    /// The server whose event was being handled, if any.
    pub server: Option<NodeId>,
    pub what: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.server {
            Some(id) => write!(f, "at {}us on server {id}: {}", self.at_us, self.what),
            None => write!(f, "at {}us: {}", self.at_us, self.what),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Committed {
    term: Term,
    digest: u64,
    /// State hash after applying the entry, if the entry changed the state.
    state_hash: Option<u128>,
    /// An upper bound on the term in which the entry committed: the lowest
    /// current term of any server when it applied the entry.
    commit_term: Term,
}

#[derive(Default)]
pub struct Checker {
    now_us: u64,
    /// The server whose event the simulator is handling.
    server: Option<NodeId>,
    leaders: HashMap<Term, NodeId>,
    /// (index, term) -> (digest, term of the previous entry).
    entries: HashMap<(Index, Term), (u64, Term)>,
    /// Committed entries by index (1-based at position 0).
    committed: Vec<Committed>,
    /// Last hard state seen, by server id (a vector: it is read after
    /// every event).
    hard: Vec<Option<(Term, Option<NodeId>)>>,
    pub violations: Vec<Violation>,
}

impl Checker {
    pub fn new() -> Checker {
        Checker::default()
    }

    pub fn set_now(&mut self, now_us: u64) {
        self.now_us = now_us;
    }

    /// Notes which server's event the simulator handles from now on.
    pub fn set_server(&mut self, server: Option<NodeId>) {
        self.server = server;
    }

    pub fn server(&self) -> Option<NodeId> {
        self.server
    }

    pub fn fail(&mut self, what: String) {
        // Keep the first few: one bug tends to cascade.
        const VIOLATIONS_MAX: usize = 16;
        if self.violations.len() < VIOLATIONS_MAX {
            self.violations.push(Violation {
                at_us: self.now_us,
                server: self.server,
                what,
            });
        }
    }

    pub fn committed_len(&self) -> Index {
        self.committed.len() as Index
    }

    pub fn committed_term(&self, index: Index) -> Option<Term> {
        index
            .checked_sub(1)
            .and_then(|i| self.committed.get(i as usize))
            .map(|c| c.term)
    }

    pub fn committed_digest(&self, index: Index) -> Option<u64> {
        index
            .checked_sub(1)
            .and_then(|i| self.committed.get(i as usize))
            .map(|c| c.digest)
    }

    /// Election safety.
    pub fn became_leader(&mut self, node: NodeId, term: Term) {
        if let Some(&other) = self.leaders.get(&term) {
            if other != node {
                self.fail(format!(
                    "election safety: servers {other} and {node} both led term {term}"
                ));
            }
        }
        self.leaders.insert(term, node);
    }

    /// Leader completeness (Raft §5.4): the log of the leader of `term`
    /// (answered by `term_of`) holds every entry committed in an earlier
    /// term. A leader of an older term can be elected late, by delayed
    /// votes, and rightly lack entries committed since, so only entries
    /// whose commit term is known to be lower are checked.
    pub fn check_leader_log(
        &mut self,
        node: NodeId,
        term: Term,
        snapshot: LogId,
        term_of: impl Fn(Index) -> Option<Term>,
    ) {
        for index in snapshot.index + 1..=self.committed_len() {
            let c = self.committed[(index - 1) as usize];
            if c.commit_term >= term {
                continue;
            }
            let want = c.term;
            if term_of(index) != Some(want) {
                self.fail(format!(
                    "leader completeness: server {node}, leader of term {term}, lacks committed entry {index}@t{want} (has {:?})",
                    term_of(index)
                ));
                return;
            }
        }
    }

    /// Log matching, for a batch appended after an entry of `prev_term`.
    pub fn appended(&mut self, node: NodeId, prev_term: Term, entries: &[Entry]) {
        let mut prev = prev_term;
        for entry in entries {
            let value = (entry_digest(entry), prev);
            match self.entries.get(&(entry.index, entry.term)) {
                Some(&seen) if seen != value => {
                    let what = format!(
                        "log matching: server {node} appended {}@t{} with (digest, prev term) {value:?}, seen elsewhere as {seen:?}",
                        entry.index, entry.term
                    );
                    self.fail(what);
                }
                Some(_) => {}
                None => {
                    self.entries.insert((entry.index, entry.term), value);
                }
            }
            prev = entry.term;
        }
    }

    /// State machine safety: `node`, in term `node_term`, applied `entry`,
    /// reaching `state_hash`.
    pub fn applied(&mut self, node: NodeId, node_term: Term, entry: &Entry, state_hash: u64) {
        let digest = entry_digest(entry);
        self.applied_entry(
            node,
            node_term,
            entry.id(),
            Some(digest),
            Some(state_hash as u128),
        );
    }

    /// State machine safety by position: `node` applied the entry at
    /// `index` of `term` (log matching makes the position name its
    /// content), reaching `state_hash` if the entry changed the state.
    pub fn applied_position(
        &mut self,
        node: NodeId,
        node_term: Term,
        index: Index,
        term: Term,
        state_hash: Option<u128>,
    ) {
        self.applied_entry(node, node_term, LogId::new(index, term), None, state_hash);
    }

    fn applied_entry(
        &mut self,
        node: NodeId,
        node_term: Term,
        at: LogId,
        digest: Option<u64>,
        state_hash: Option<u128>,
    ) {
        let len = self.committed_len();
        if at.index == len + 1 {
            self.committed.push(Committed {
                term: at.term,
                digest: digest.unwrap_or(0),
                state_hash,
                commit_term: node_term,
            });
            return;
        }
        if at.index > len + 1 {
            // A server that installed a snapshot applies entries past what
            // anyone applied one by one: record the gap as unknown.
            while self.committed_len() + 1 < at.index {
                self.committed.push(Committed {
                    term: 0,
                    digest: 0,
                    state_hash: None,
                    commit_term: Term::MAX,
                });
            }
            self.committed.push(Committed {
                term: at.term,
                digest: digest.unwrap_or(0),
                state_hash,
                commit_term: node_term,
            });
            return;
        }
        let c = &mut self.committed[(at.index - 1) as usize];
        if c.term == 0 && c.commit_term == Term::MAX {
            // Filling a gap left by a snapshot.
            *c = Committed {
                term: at.term,
                digest: digest.unwrap_or(0),
                state_hash,
                commit_term: node_term,
            };
            return;
        }
        c.commit_term = c.commit_term.min(node_term);
        if c.state_hash.is_none() {
            c.state_hash = state_hash;
        }
        let (term, want_digest, want_hash) = (c.term, c.digest, c.state_hash);
        if term != at.term || digest.is_some_and(|d| d != want_digest) {
            self.fail(format!(
                "state machine safety: server {node} applied {}@t{} but {}@t{term} was applied elsewhere",
                at.index, at.term, at.index
            ));
        } else if state_hash.is_some() && want_hash != state_hash {
            self.fail(format!(
                "state divergence: server {node} has a different state hash after {}",
                at.index
            ));
        }
    }

    /// A snapshot installed at `applied` with `state_hash` must equal the
    /// committed state there.
    pub fn installed(&mut self, node: NodeId, applied: LogId, state_hash: u64) {
        match applied.index.checked_sub(1).and_then(|i| self.committed.get(i as usize)) {
            Some(c) if c.term == applied.term && c.state_hash == Some(state_hash as u128) => {}
            Some(_) => self.fail(format!("snapshot: server {node} installed a state at {applied} that differs from the committed one")),
            None => self.fail(format!("snapshot: server {node} installed {applied}, beyond anything applied")),
        }
    }

    /// Durable hard state: `node` now has `term` and `vote`.
    pub fn hard_state(&mut self, node: NodeId, term: Term, vote: Option<NodeId>) {
        let slot = node as usize;
        if self.hard.len() <= slot {
            self.hard.resize(slot + 1, None);
        }
        if let Some((old_term, old_vote)) = self.hard[slot] {
            if (old_term, old_vote) == (term, vote) {
                return;
            }
            if term < old_term {
                self.fail(format!(
                    "durability: server {node}'s term went back from {old_term} to {term}"
                ));
            } else if term == old_term && old_vote.is_some() && vote != old_vote {
                self.fail(format!(
                    "durability: server {node} changed its vote in term {term} from {old_vote:?} to {vote:?}"
                ));
            }
        }
        self.hard[node as usize] = Some((term, vote));
    }

    /// A destroyed server's history leaves the record (a new server would start empty).
    pub fn forget(&mut self, node: NodeId) {
        if let Some(slot) = self.hard.get_mut(node as usize) {
            *slot = None;
        }
    }
}
