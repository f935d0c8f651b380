//! The client-visible history and its checker (invariants I1, I3, I4 and I5
//! of docs/REQUIREMENTS.md).
//!
//! What it does: records every client operation (invocation, completion,
//! response) and every committed command entry (in log order, with the
//! response it carries), then checks:
//! - I1: every response a client received for a state-changing command is
//!   in the committed log, for that (client, sequence), with the same bytes;
//! - I4: no (client, sequence) is committed twice, ever (sessions have ids
//!   that are never reused, and a retry after its session expired is
//!   refused, not run again);
//! - sessions: every session the cluster said had expired was expired by
//!   a committed entry; every operation answered "failed" (the
//!   application failed, or the session had expired before the only
//!   attempt) is absent from the committed log;
//! - I3: replaying the committed ledger commands in log order, every
//!   command's response states exactly the balances the committed state
//!   held just before it (so no command ran on rolled-back or missing
//!   state), and money is conserved;
//! - I5 and linearizability of reads: every read's answer equals the
//!   committed state at some point between the latest write acknowledged
//!   before the read began and the commit index when it was answered.
//!
//! What it does not do: look at servers; it sees only what clients saw and
//! what the log committed.

use crate::replica::ClientId;
use crate::sim::ledger::{LedgerCommand, ACCOUNTS};
use ringlog::Index;
use std::collections::BTreeMap;

/// How an operation ended, as its client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok {
        status: u8,
        response: Vec<u8>,
    },
    /// The application failed; nothing was kept.
    Failed,
}

#[derive(Clone, Debug)]
pub struct Operation {
    pub client: ClientId,
    pub seq: u64,
    pub command: LedgerCommand,
    pub invoked_us: u64,
    pub completed_us: Option<u64>,
    pub outcome: Option<Outcome>,
    /// The highest committed index when the answer was sent.
    pub commit_at_completion: Index,
}

/// A committed command entry.
#[derive(Clone, Debug)]
pub struct CommittedCommand {
    pub index: Index,
    pub client: ClientId,
    pub seq: u64,
    pub status: u8,
    pub response: Vec<u8>,
    pub expired: Vec<ClientId>,
}

#[derive(Default)]
pub struct History {
    pub operations: Vec<Operation>,
    /// By index; filled by whichever server applies an index first.
    pub committed: BTreeMap<Index, CommittedCommand>,
    /// The highest index applied anywhere.
    pub commit_index: Index,
    /// Clients told their session had expired.
    pub told_expired: Vec<ClientId>,
    /// `Ok` answers to attempts their client had given up on (it retried):
    /// (session, sequence, status, response). The client never saw them,
    /// but I1 holds for them too.
    pub earlier_answers: Vec<(ClientId, u64, u8, Vec<u8>)>,
}

/// The committed ledger state after each index where it changed.
struct Model {
    /// Per account: (index, balance after it), in index order.
    balances: Vec<Vec<(Index, u64)>>,
    totals: Vec<(Index, u64)>,
}

impl Model {
    fn value_at(series: &[(Index, u64)], index: Index) -> u64 {
        match series.partition_point(|(i, _)| *i <= index) {
            0 => 0,
            n => series[n - 1].1,
        }
    }

    /// Every value `series` takes at some index in `[lo, hi]`.
    fn values_between(series: &[(Index, u64)], lo: Index, hi: Index) -> Vec<u64> {
        let mut values = vec![Model::value_at(series, lo)];
        values.extend(
            series
                .iter()
                .filter(|(i, _)| *i > lo && *i <= hi)
                .map(|(_, v)| *v),
        );
        values
    }
}

impl History {
    pub fn committed_command(&mut self, c: CommittedCommand) {
        self.commit_index = self.commit_index.max(c.index);
        self.committed.entry(c.index).or_insert(c);
    }

    pub fn note_commit(&mut self, index: Index) {
        self.commit_index = self.commit_index.max(index);
    }

    /// Runs every check; returns the violations found.
    pub fn check(&self) -> Vec<String> {
        let mut violations = Vec::new();
        let by_request = self.check_unique(&mut violations);
        self.check_sessions(&by_request, &mut violations);
        let (model, index_of) = self.replay(&mut violations);
        self.check_acknowledged(&by_request, &mut violations);
        self.check_reads(&model, &index_of, &mut violations);
        violations.truncate(16);
        violations
    }

    /// I4: one committed entry per (client, sequence), sessions permitting.
    fn check_unique(&self, violations: &mut Vec<String>) -> BTreeMap<(ClientId, u64), Vec<Index>> {
        let mut by_request: BTreeMap<(ClientId, u64), Vec<Index>> = BTreeMap::new();
        for c in self.committed.values() {
            let seen = by_request.entry((c.client, c.seq)).or_default();
            if let Some(&first) = seen.last() {
                violations.push(format!(
                    "I4: client {:x} sequence {} committed twice (entries {first} and {})",
                    c.client, c.seq, c.index
                ));
            }
            seen.push(c.index);
        }
        by_request
    }

    /// Sessions: "expired" only after a committed expiry, and "failed"
    /// operations never committed.
    fn check_sessions(
        &self,
        by_request: &BTreeMap<(ClientId, u64), Vec<Index>>,
        violations: &mut Vec<String>,
    ) {
        let expired: std::collections::BTreeSet<ClientId> = self
            .committed
            .values()
            .flat_map(|c| c.expired.iter().copied())
            .collect();
        for client in &self.told_expired {
            if !expired.contains(client) {
                violations.push(format!(
                    "sessions: client {client:x} was told its session expired, but no committed entry expired it"
                ));
            }
        }
        for op in &self.operations {
            if op.outcome != Some(Outcome::Failed) {
                continue;
            }
            if let Some(indexes) = by_request.get(&(op.client, op.seq)) {
                violations.push(format!(
                    "client {:x} sequence {} ({:?}) was answered \"failed\" but entry {} committed it",
                    op.client, op.seq, op.command, indexes[0]
                ));
            }
        }
    }

    /// I3: every committed command saw exactly the committed state before it.
    fn replay(&self, violations: &mut Vec<String>) -> (Model, BTreeMap<(ClientId, u64), Index>) {
        let mut balance = [0u64; ACCOUNTS as usize];
        let mut model = Model {
            balances: vec![Vec::new(); ACCOUNTS as usize],
            totals: Vec::new(),
        };
        let mut index_of = BTreeMap::new();
        let mut total = 0u64;
        for c in self.committed.values() {
            if c.seq == crate::replica::OPEN_SEQ {
                // A session opened: no ledger change.
                continue;
            }
            index_of.insert((c.client, c.seq), c.index);
            let text = String::from_utf8_lossy(&c.response).to_string();
            let words: Vec<&str> = text.split_whitespace().collect();
            let num = |i: usize| {
                words
                    .get(i)
                    .and_then(|w| w.parse::<u64>().ok())
                    .unwrap_or(u64::MAX)
            };
            let set = |account: u64, value: u64, model: &mut Model, balance: &mut [u64]| {
                balance[account as usize] = value;
                model.balances[account as usize].push((c.index, value));
            };
            match words.first().copied() {
                Some("D") => {
                    let (account, amount, fee, before) = (num(1), num(2), num(3), num(4));
                    if account >= ACCOUNTS || balance[account as usize] != before || fee > amount {
                        violations.push(format!(
                            "I3: entry {} deposit saw balance {before} of account {account}, committed state held {:?}",
                            c.index,
                            balance.get(account as usize)
                        ));
                        continue;
                    }
                    let after = before + amount - fee;
                    set(account, after, &mut model, &mut balance);
                    if fee > 0 {
                        let house = balance[0] + fee;
                        set(0, house, &mut model, &mut balance);
                    }
                    total += amount;
                }
                Some("X") => {
                    let (from, to, amount, fee, a_before, b_before) =
                        (num(1), num(2), num(3), num(4), num(5), num(7));
                    let valid = from < ACCOUNTS && to < ACCOUNTS && from != to;
                    if !valid
                        || balance[from as usize] != a_before
                        || balance[to as usize] != b_before
                        || a_before < amount.saturating_add(fee)
                    {
                        violations.push(format!(
                            "I3: entry {} transfer saw balances {a_before}/{b_before}, committed state held {:?}",
                            c.index, balance
                        ));
                        continue;
                    }
                    set(from, a_before - amount - fee, &mut model, &mut balance);
                    let to_after = balance[to as usize] + amount;
                    set(to, to_after, &mut model, &mut balance);
                    let house = balance[0] + fee;
                    set(0, house, &mut model, &mut balance);
                }
                Some("L") => {}
                _ => violations.push(format!(
                    "entry {} carries an unexpected response {text:?}",
                    c.index
                )),
            }
            if balance.iter().sum::<u64>() != total {
                violations.push(format!(
                    "money: after entry {} the balances sum to {} but deposits total {total}",
                    c.index,
                    balance.iter().sum::<u64>()
                ));
            }
            model.totals.push((c.index, total));
        }
        (model, index_of)
    }

    /// I1: every answered state change is committed with the same response.
    fn check_acknowledged(
        &self,
        by_request: &BTreeMap<(ClientId, u64), Vec<Index>>,
        violations: &mut Vec<String>,
    ) {
        let ops: BTreeMap<(ClientId, u64), &Operation> = self
            .operations
            .iter()
            .map(|op| ((op.client, op.seq), op))
            .collect();
        let seen = self.operations.iter().filter_map(|op| match &op.outcome {
            Some(Outcome::Ok { status, response }) => Some((op, *status, response)),
            _ => None,
        });
        let earlier = self
            .earlier_answers
            .iter()
            .filter_map(|(client, seq, status, response)| {
                ops.get(&(*client, *seq)).map(|op| (*op, *status, response))
            });
        for (op, status, response) in seen.chain(earlier) {
            let is_write = op.command.writes() && !response.starts_with(b"X!") && status == 0;
            if !is_write {
                continue;
            }
            let Some(indexes) = by_request.get(&(op.client, op.seq)) else {
                violations.push(format!(
                    "I1: client {:x} sequence {} ({:?}) was answered {:?} but is not in the committed log",
                    op.client,
                    op.seq,
                    op.command,
                    String::from_utf8_lossy(response)
                ));
                continue;
            };
            let c = &self.committed[&indexes[0]];
            if &c.response != response || c.status != status {
                violations.push(format!(
                    "I1: client {:x} sequence {} was answered {:?} but entry {} committed {:?}",
                    op.client,
                    op.seq,
                    String::from_utf8_lossy(response),
                    c.index,
                    String::from_utf8_lossy(&c.response)
                ));
            }
        }
    }

    /// I5 and linearizability: reads see a committed state of their window.
    fn check_reads(
        &self,
        model: &Model,
        index_of: &BTreeMap<(ClientId, u64), Index>,
        violations: &mut Vec<String>,
    ) {
        // The commit index of every acknowledged write, by completion time.
        let mut acked: Vec<(u64, Index)> = self
            .operations
            .iter()
            .filter_map(|op| {
                let done = op.completed_us?;
                index_of.get(&(op.client, op.seq)).map(|&i| (done, i))
            })
            .collect();
        acked.sort_unstable();
        let mut floor_by_time: Vec<(u64, Index)> = Vec::with_capacity(acked.len());
        let mut floor = 0;
        for (t, i) in acked {
            floor = floor.max(i);
            floor_by_time.push((t, floor));
        }
        for op in &self.operations {
            let Some(Outcome::Ok { response, .. }) = &op.outcome else {
                continue;
            };
            let text = String::from_utf8_lossy(response).to_string();
            let words: Vec<&str> = text.split_whitespace().collect();
            let num = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok());
            let (series, seen): (&[(Index, u64)], Option<u64>) =
                match (words.first().copied(), &op.command) {
                    (Some("B"), LedgerCommand::Balance { account }) => {
                        (&model.balances[*account as usize], num(2))
                    }
                    (Some("X!"), LedgerCommand::Transfer { from, .. }) => {
                        (&model.balances[*from as usize], num(2))
                    }
                    (Some("S"), LedgerCommand::Sum) => (&model.totals, num(1)),
                    _ => continue,
                };
            let Some(seen) = seen else {
                violations.push(format!("read answer {text:?} does not parse"));
                continue;
            };
            let lo = match floor_by_time.partition_point(|(t, _)| *t < op.invoked_us) {
                0 => 0,
                n => floor_by_time[n - 1].1,
            };
            let hi = op.commit_at_completion.max(lo);
            let allowed = Model::values_between(series, lo, hi);
            if !allowed.contains(&seen) {
                violations.push(format!(
                    "I5: client {:x} read {text:?} ({:?}) but the committed state between entries {lo} and {hi} held {allowed:?}",
                    op.client, op.command
                ));
            }
        }
    }
}
