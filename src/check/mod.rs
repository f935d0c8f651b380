//! History checker for the fault-injection suite (`tests/faults.rs`) and
//! the nemesis.
//!
//! What it does: loads a recorded client history of the example accounts
//! application ([`history`]), resolves operations whose outcome the client never
//! saw with `find <ref>` results gathered after the run ([`resolve`]), runs cheap
//! invariant checks ([`invariants`]) and a bounded Wing & Gong / Lowe
//! linearizability search against a model bank ([`linear`]).
//!
//! What it does not do: talk to servers, run a workload, or compare replica
//! files; the harness does that and hands the results in.
//!
//! Invariants: nothing here panics on input; malformed input is a typed error
//! naming the operation or line; every search is bounded by a caller budget.
pub mod history;
pub mod invariants;
pub mod linear;
pub mod resolve;

pub use history::{
    load_history, parse_response, save_history, Command, FindResult, HistoryError, Op, Outcome,
};
pub use invariants::{check_invariants, Violation};
pub use linear::{check_linearizable, Budget, Verdict, Witness};
pub use resolve::{resolve, ResolveError, ResolvedOp};
