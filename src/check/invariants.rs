//! Cheap invariant checks, always run before the linearizability search.
//!
//! - every acknowledged write with a reference is present exactly once in the
//!   final `find` results, every refused one is absent, every unknown one is
//!   present at most once;
//! - money is conserved: the final audit total equals opening balances plus
//!   deposits minus withdrawals that happened (acknowledged, or unknown and
//!   found);
//! - every transfer's fee respects the rule's bound, ceil(cents × 60 / 10 000),
//!   and is 0 when `house` is an end.
//!
//! It does not check orders or intermediate balances (that is `linear`).
//! References are assumed unique per op; a reused reference is reported.
use super::history::{Command, FindResult, Op};
use super::linear::fee_max_cents;
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// An acknowledged write is missing (count 0) or duplicated (count > 1).
    AcknowledgedNotOnce {
        op: usize,
        reference: String,
        count: u64,
    },
    /// A refused write left a trace.
    RefusedPresent {
        op: usize,
        reference: String,
        count: u64,
    },
    /// An unknown-outcome write happened more than once.
    UnknownDuplicated {
        op: usize,
        reference: String,
        count: u64,
    },
    /// No `find` result was recorded for a referenced write (harness bug).
    FindMissing { op: usize, reference: String },
    /// Two ops of the workload share a reference (workload bug).
    ReferenceReused { op: usize, reference: String },
    /// Final audit total differs from minted − burned.
    MoneyNotConserved {
        expected_cents: i128,
        audit_cents: u64,
    },
    /// A fee outside the rule's bounds.
    FeeOutOfBounds {
        op: usize,
        fee_cents: u64,
        max_cents: u64,
    },
    /// An acknowledged transfer without a fee in its response.
    FeeMissing { op: usize },
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Violation::AcknowledgedNotOnce { op, reference, count } => write!(
                f,
                "op {op}: acknowledged write ref={reference} is recorded {count} times after the run (must be exactly once)"
            ),
            Violation::RefusedPresent { op, reference, count } => {
                write!(f, "op {op}: refused write ref={reference} is recorded {count} times (must be absent)")
            }
            Violation::UnknownDuplicated { op, reference, count } => {
                write!(f, "op {op}: unknown-outcome write ref={reference} is recorded {count} times (at most once)")
            }
            Violation::FindMissing { op, reference } => {
                write!(f, "op {op}: no find result recorded for ref={reference} (harness bug)")
            }
            Violation::ReferenceReused { op, reference } => {
                write!(f, "op {op}: ref={reference} reused by the workload (workload bug)")
            }
            Violation::MoneyNotConserved { expected_cents, audit_cents } => write!(
                f,
                "money not conserved: opens + deposits - withdrawals = {expected_cents} cents, final audit total {audit_cents}"
            ),
            Violation::FeeOutOfBounds { op, fee_cents, max_cents } => {
                write!(f, "op {op}: transfer fee {fee_cents} cents exceeds the rule's bound {max_cents}")
            }
            Violation::FeeMissing { op } => write!(f, "op {op}: acknowledged transfer without a fee in its response"),
        }
    }
}

/// Runs every invariant; an empty list means all hold. `final_audit_total` is
/// the `total_cents` of an audit taken after the run (skipped when `None`).
/// `initial_total_cents` is the money in the bank before the history.
pub fn check_invariants(
    ops: &[Op],
    finds: &HashMap<String, FindResult>,
    initial_total_cents: u64,
    final_audit_total: Option<u64>,
) -> Vec<Violation> {
    let mut v = Vec::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut money: i128 = initial_total_cents as i128;
    for (i, op) in ops.iter().enumerate() {
        let known = op.complete_ns.is_some();
        let outcome = op.result.as_ref().filter(|_| known);
        let acked = outcome.is_some_and(|o| o.ok);
        let refused = outcome.is_some_and(|o| !o.ok);
        let mut happened = acked;
        if let Some(r) = op.command.reference() {
            if seen.insert(r, i).is_some() {
                v.push(Violation::ReferenceReused {
                    op: i,
                    reference: r.into(),
                });
            }
            match finds.get(r) {
                None => v.push(Violation::FindMissing {
                    op: i,
                    reference: r.into(),
                }),
                Some(f) => {
                    let reference = r.to_string();
                    if acked && f.count != 1 {
                        v.push(Violation::AcknowledgedNotOnce {
                            op: i,
                            reference,
                            count: f.count,
                        });
                    } else if refused && f.count != 0 {
                        v.push(Violation::RefusedPresent {
                            op: i,
                            reference,
                            count: f.count,
                        });
                    } else if !known && f.count > 1 {
                        v.push(Violation::UnknownDuplicated {
                            op: i,
                            reference,
                            count: f.count,
                        });
                    }
                    if !known && f.count >= 1 {
                        happened = true;
                        if let (Command::Transfer { cents, .. }, Some(fee)) =
                            (&op.command, f.fee_cents)
                        {
                            check_fee(&mut v, i, &op.command, *cents, fee);
                        }
                    }
                }
            }
        }
        if acked {
            if let Command::Transfer { cents, .. } = &op.command {
                match outcome.and_then(|o| o.fee_cents) {
                    Some(fee) => check_fee(&mut v, i, &op.command, *cents, fee),
                    None => v.push(Violation::FeeMissing { op: i }),
                }
            }
        }
        if happened {
            match &op.command {
                Command::Open { cents, .. } | Command::Deposit { cents, .. } => {
                    money += *cents as i128
                }
                Command::Withdraw { cents, .. } => money -= *cents as i128,
                _ => {}
            }
        }
    }
    if let Some(total) = final_audit_total {
        if money != total as i128 {
            v.push(Violation::MoneyNotConserved {
                expected_cents: money,
                audit_cents: total,
            });
        }
    }
    v
}

fn check_fee(v: &mut Vec<Violation>, op: usize, c: &Command, cents: u64, fee: u64) {
    let house = matches!(c, Command::Transfer { from, to, .. } if from == "house" || to == "house");
    let max = if house { 0 } else { fee_max_cents(cents) };
    if fee > max {
        v.push(Violation::FeeOutOfBounds {
            op,
            fee_cents: fee,
            max_cents: max,
        });
    }
}
