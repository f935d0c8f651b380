//! The flight recorder of a simulated run, and the capture of panics, for
//! both simulators (consensus and replica): what makes a failing seed
//! explain itself.
//!
//! What it does: keeps a bounded ring of the most recent events of every
//! layer (messages delivered and dropped, crashes, restarts, pauses,
//! destructions, log appends, truncations, releases and syncs, applies with
//! their state hashes, snapshots, client requests and replies, role
//! changes, the nemesis's actions), each with its simulated time and
//! server. The ring is frozen at the first violation, so it ends where the
//! run went wrong. A panic inside a server is caught by [`catch`], which
//! returns the panic's message, location and backtrace (captured by a
//! panic hook into a thread-local) while the simulator's state, and so
//! the ring, stays reachable to the caller.
//!
//! What it does not do: draw random numbers or change what a run does.
//! Recording is a side channel: a seed runs the same events with tracing
//! on and off (`tests/sim_seeds.rs` checks it). When tracing is off,
//! recording costs one branch per hook and no allocation.
//!
//! Invariants: the ring holds at most `capacity` events, in simulated-time
//! order; after `freeze` it never changes.

use crate::raft::{AppendResult, Body, Message};
use crate::sim::log::LogOp;
use ringlog::NodeId;
use std::backtrace::Backtrace;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;

/// Events a trace keeps by default (`bunker-sim --trace-events`).
pub const EVENTS_DEFAULT: usize = 4000;

/// One recorded event.
#[derive(Clone, Debug)]
pub struct TraceEvent {
    pub at_us: u64,
    /// The server it happened on, if any (the nemesis acts on none).
    pub server: Option<NodeId>,
    /// What kind of event: `recv`, `drop`, `crash`, `append`, `apply`...
    pub kind: &'static str,
    pub detail: String,
}

impl fmt::Display for TraceEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let server = match self.server {
            Some(id) => format!("s{id}"),
            None => "--".to_string(),
        };
        write!(
            f,
            "{:>10}us {server:>3} {:<9} {}",
            self.at_us, self.kind, self.detail
        )
    }
}

/// A bounded ring of recent events (see the module documentation).
#[derive(Debug, Default)]
pub struct Trace {
    capacity: usize,
    events: VecDeque<TraceEvent>,
    /// Events that fell out of the ring.
    forgotten: u64,
    frozen: bool,
}

impl Trace {
    /// A trace that records nothing.
    pub fn off() -> Trace {
        Trace::default()
    }

    /// A trace keeping the last `capacity` events (none if 0).
    pub fn new(capacity: usize) -> Trace {
        Trace {
            capacity,
            ..Trace::default()
        }
    }

    /// Whether events are being recorded (check before building one).
    #[inline]
    pub fn on(&self) -> bool {
        self.capacity > 0 && !self.frozen
    }

    /// Records an event; `detail` is only called when recording.
    #[inline]
    pub fn record(
        &mut self,
        at_us: u64,
        server: Option<NodeId>,
        kind: &'static str,
        detail: impl FnOnce() -> String,
    ) {
        if self.on() {
            self.push(TraceEvent {
                at_us,
                server,
                kind,
                detail: detail(),
            });
        }
    }

    fn push(&mut self, event: TraceEvent) {
        if self.events.len() == self.capacity {
            self.events.pop_front();
            self.forgotten += 1;
        }
        self.events.push_back(event);
    }

    /// Stops recording for good: the ring keeps what led up to now.
    pub fn freeze(&mut self) {
        self.frozen = true;
    }

    pub fn is_frozen(&self) -> bool {
        self.frozen
    }

    pub fn events(&self) -> impl Iterator<Item = &TraceEvent> {
        self.events.iter()
    }

    /// The events as printable lines, oldest first.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::with_capacity(self.events.len() + 1);
        if self.forgotten > 0 {
            out.push(format!(
                "({} earlier events not kept; --trace-events raises the bound)",
                self.forgotten
            ));
        }
        out.extend(self.events.iter().map(|e| e.to_string()));
        out
    }
}

/// The explanation of a seed, ready to print: its configuration, the
/// nemesis's actions over the whole run (with the phases), the last events
/// before the first violation (or the end), and a panic's backtrace.
pub fn explain(
    config: &str,
    fault_log: &[String],
    trace: &Trace,
    panic: Option<&PanicReport>,
) -> Vec<String> {
    let mut out = vec![format!("config: {config}")];
    out.push(format!("faults and phases ({} lines):", fault_log.len()));
    out.extend(fault_log.iter().map(|l| format!("  {l}")));
    let ending = if trace.is_frozen() || panic.is_some() {
        "the first violation"
    } else {
        "the end of the run"
    };
    out.push(format!(
        "last {} events up to {ending} (time, server, kind, detail):",
        trace.events.len()
    ));
    out.extend(trace.lines().into_iter().map(|l| format!("  {l}")));
    if let Some(p) = panic {
        out.push(format!("panic: {} at {}", p.message, p.location));
        out.push("backtrace (from the panic down to the simulator):".to_string());
        out.extend(p.backtrace.lines().map(|l| format!("  {l}")));
    }
    out
}

/// One line for a consensus message: kind, route, term and indexes.
pub fn describe_message(m: &Message) -> String {
    let route = format!("{}->{} t{}", m.from, m.to, m.term);
    match &m.body {
        Body::PreVote { last_log } => format!("PreVote {route} last {last_log}"),
        Body::PreVoteResponse { granted } => format!("PreVoteResp {route} granted {granted}"),
        Body::Vote { last_log } => format!("Vote {route} last {last_log}"),
        Body::VoteResponse { granted } => format!("VoteResp {route} granted {granted}"),
        Body::Append {
            prev,
            entries,
            commit,
            seq,
        } => {
            let span = match (entries.first(), entries.last()) {
                (Some(a), Some(b)) => format!("{}..={}", a.index, b.index),
                _ => "none".to_string(),
            };
            format!("Append {route} prev {prev} entries {span} commit {commit} seq {seq}")
        }
        Body::AppendResponse { result, seq } => match result {
            AppendResult::Success { match_index } => {
                format!("AppendResp {route} ok match {match_index} seq {seq}")
            }
            AppendResult::Reject {
                rejected_prev,
                hint_index,
                hint_term,
            } => format!(
                "AppendResp {route} reject prev {rejected_prev} hint {hint_index}/{hint_term:?} seq {seq}"
            ),
        },
        Body::Heartbeat { commit, seq } => format!("Heartbeat {route} commit {commit} seq {seq}"),
        Body::HeartbeatResponse { match_index, seq } => {
            format!("HeartbeatResp {route} match {match_index} seq {seq}")
        }
    }
}

/// Records the appends and other log operations of one call into a
/// server (both simulators drain them from `SimLog` after every call).
pub fn record_log_ops(
    trace: &mut Trace,
    at_us: u64,
    server: NodeId,
    appended: &[(ringlog::Term, Vec<ringlog::Entry>)],
    ops: &[LogOp],
) {
    for op in ops {
        let (kind, detail) = match *op {
            LogOp::TruncateFrom(i) => ("truncate", format!("log truncated from {i}")),
            LogOp::ReleaseTo(i) => ("release", format!("log released up to {i}")),
            LogOp::Reset(at) => ("reset", format!("log reset to snapshot {at}")),
            LogOp::HardState(term, vote) => ("hardstate", format!("t{term} vote {vote:?}")),
        };
        trace.record(at_us, Some(server), kind, || detail);
    }
    for (_, entries) in appended {
        if let (Some(a), Some(b)) = (entries.first(), entries.last()) {
            trace.record(at_us, Some(server), "append", || {
                format!(
                    "entries {}..={} (term {}..{})",
                    a.index, b.index, a.term, b.term
                )
            });
        }
    }
}

/// A panic caught inside a simulated run.
#[derive(Clone, Debug)]
pub struct PanicReport {
    pub message: String,
    /// `file:line:column` of the panic.
    pub location: String,
    /// The frames from the panic down to the simulator's entry point.
    pub backtrace: String,
}

thread_local! {
    /// Set while this thread runs inside `catch`.
    static CATCHING: Cell<bool> = const { Cell::new(false) };
    /// What the panic hook captured for `catch`.
    static CAUGHT: RefCell<Option<PanicReport>> = const { RefCell::new(None) };
}

/// Installs (once per process) a panic hook that, on a thread running
/// inside [`catch`], captures the panic's message, location and backtrace
/// instead of printing them; other panics go to the hook that was there.
pub fn install_panic_hook() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CATCHING.with(|c| c.get()) {
                return previous(info);
            }
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_string());
            let location = info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
                .unwrap_or_default();
            let backtrace = trim_backtrace(&Backtrace::force_capture().to_string());
            CAUGHT.with(|c| {
                *c.borrow_mut() = Some(PanicReport {
                    message,
                    location,
                    backtrace,
                })
            });
        }));
    });
}

/// Runs `f`, catching a panic: returns what the panic hook captured. The
/// caller's state that `f` borrowed is reachable again afterwards.
pub fn catch<R>(f: impl FnOnce() -> R) -> Result<R, PanicReport> {
    install_panic_hook();
    let was = CATCHING.with(|c| c.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(was));
    result.map_err(|payload| {
        CAUGHT
            .with(|c| c.borrow_mut().take())
            .unwrap_or_else(|| PanicReport {
                message: payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into()),
                location: String::new(),
                backtrace: String::new(),
            })
    })
}

/// Keeps the frames between the panic machinery and the unwinding catch:
/// what the program was doing, not how Rust reports a panic.
fn trim_backtrace(full: &str) -> String {
    const MACHINERY: &[&str] = &[
        "std::",
        "core::",
        "alloc::",
        "rust_begin_unwind",
        "__rust",
        "__rustc::",
        "bunker::sim::trace::install_panic_hook",
        "<alloc::boxed::Box",
    ];
    const FRAMES_MAX: usize = 60;
    let mut out = Vec::new();
    let mut started = false;
    let mut frames = 0;
    for line in full.lines() {
        let trimmed = line.trim_start();
        let function = trimmed
            .split_once(": ")
            .filter(|(n, _)| n.chars().all(|c| c.is_ascii_digit()))
            .map(|(_, f)| f);
        if let Some(function) = function {
            if !started && MACHINERY.iter().any(|m| function.starts_with(m)) {
                continue;
            }
            if started
                && (function.contains("catch_unwind") || function.contains("AssertUnwindSafe"))
            {
                break;
            }
            started = true;
            frames += 1;
            if frames > FRAMES_MAX {
                out.push("      ...".to_string());
                break;
            }
        }
        if started {
            out.push(line.to_string());
        }
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_last_events_and_freezes() {
        let mut t = Trace::new(3);
        for i in 0..5u64 {
            t.record(i, Some(1), "tick", || format!("{i}"));
        }
        let lines = t.lines();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].contains("2 earlier events"));
        assert!(lines[1].ends_with(" 2"));
        t.freeze();
        t.record(9, None, "tick", || unreachable!("not called once frozen"));
        assert_eq!(t.events().count(), 3);
        let mut off = Trace::off();
        off.record(1, None, "tick", || unreachable!("not called when off"));
        assert!(!off.on());
    }

    #[test]
    fn a_caught_panic_carries_its_message_location_and_frames() {
        fn deep(n: u32) -> u32 {
            assert!(n < 3, "n reached {n}");
            deep(n + 1) + 1
        }
        let mut state = 5;
        let err = catch(|| {
            state += 1;
            deep(0)
        })
        .expect_err("panics");
        assert_eq!(state, 6, "the caller's state is reachable after the panic");
        assert_eq!(err.message, "n reached 3");
        assert!(err.location.contains("trace.rs"), "{}", err.location);
        assert!(err.backtrace.contains("deep"), "{}", err.backtrace);
        assert_eq!(catch(|| 7).ok(), Some(7));
    }
}
