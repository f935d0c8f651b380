//! Resolves operations whose outcome the client never saw.
//!
//! After the run the harness asks `find <ref>` for every write whose outcome is
//! unknown. Found (count ≥ 1) → the write happened, at some point after its
//! invocation: it gets the interval `[invoke, +∞)` and the fee `find` reported.
//! Not found → it never happened and is dropped. Unknown-outcome reads (and
//! `find`s) constrain nothing and are dropped. An unknown write without a
//! reference cannot be resolved and is an error: the workload always tags its
//! writes with references (see docs/CHECKER.md).
//!
//! Duplicates (count > 1) are the invariant checker's business; here a found
//! write is simply a write that happened once in the model.
use super::history::{Command, FindResult, Op, Outcome};
use std::collections::HashMap;

/// An op ready for the linearizability search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedOp {
    /// Index in the recorded history (for messages).
    pub index: usize,
    pub client: u64,
    pub invoke_ns: u64,
    /// `u64::MAX` for a resolved unknown-outcome write.
    pub complete_ns: u64,
    pub command: Command,
    pub outcome: Outcome,
    /// True when the outcome came from `find` after the run, so only `ok`
    /// and `fee_cents` are known (no balances).
    pub resolved_later: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    #[error("op {op}: outcome unknown and the write has no reference, so it cannot be resolved (workload bug: every write must carry ref=)")]
    UnreferencedUnknownWrite { op: usize },
    #[error("op {op}: outcome unknown and no `find {reference}` result was recorded after the run (harness bug)")]
    MissingFind { op: usize, reference: String },
    #[error("op {op}: completed without a response (harness bug)")]
    MissingResult { op: usize },
    #[error("op {op}: found after the run but `find` gave no fee for the transfer (server bug or harness bug)")]
    MissingFee { op: usize },
    #[error("op {op}: completes before it is invoked (harness bug)")]
    BackwardsInterval { op: usize },
}

/// Turns the recorded history into the ops the model must place.
pub fn resolve(
    ops: &[Op],
    finds: &HashMap<String, FindResult>,
) -> Result<Vec<ResolvedOp>, ResolveError> {
    let mut out = Vec::with_capacity(ops.len());
    for (index, op) in ops.iter().enumerate() {
        match (op.complete_ns, &op.result) {
            (Some(done), Some(outcome)) => {
                if done < op.invoke_ns {
                    return Err(ResolveError::BackwardsInterval { op: index });
                }
                out.push(ResolvedOp {
                    index,
                    client: op.client,
                    invoke_ns: op.invoke_ns,
                    complete_ns: done,
                    command: op.command.clone(),
                    outcome: outcome.clone(),
                    resolved_later: false,
                });
            }
            (Some(_), None) => return Err(ResolveError::MissingResult { op: index }),
            (None, _) => {
                if !op.command.is_write() {
                    continue; // an unanswered read constrains nothing
                }
                let Some(reference) = op.command.reference() else {
                    return Err(ResolveError::UnreferencedUnknownWrite { op: index });
                };
                let Some(found) = finds.get(reference) else {
                    return Err(ResolveError::MissingFind {
                        op: index,
                        reference: reference.to_string(),
                    });
                };
                if found.count == 0 {
                    continue; // it never happened
                }
                let fee_cents = match op.command {
                    Command::Transfer { .. } => Some(
                        found
                            .fee_cents
                            .ok_or(ResolveError::MissingFee { op: index })?,
                    ),
                    _ => None,
                };
                out.push(ResolvedOp {
                    index,
                    client: op.client,
                    invoke_ns: op.invoke_ns,
                    complete_ns: u64::MAX,
                    command: op.command.clone(),
                    outcome: Outcome {
                        ok: true,
                        fee_cents,
                        ..Outcome::default()
                    },
                    resolved_later: true,
                });
            }
        }
    }
    Ok(out)
}
