//! Linearizability of an accounts history, by the Wing & Gong / Lowe search
//! (the algorithm of Porcupine and Knossos' `wgl`).
//!
//! The history is first split into independent components (P-compositionality):
//! accounts named by the same op (a transfer's two ends) are linked, an `audit`
//! links everything, and `house` is linked to every fee-paying transfer only if
//! some op reads `house` (names it, or audits). When nothing reads `house`, fees
//! still leave the sender but the credit to `house` is not modelled: it is
//! write-only, so it cannot make a history fail. Each component is searched on
//! its own; the history is linearizable iff every component is.
//!
//! The search walks a linked list of call/return events in real-time order,
//! linearizing a pending op when the model accepts its recorded outcome and
//! backtracking at the first return of an op not yet linearized. Pairs
//! (linearized set, model state) already explored are memoized, which turns the
//! exponential search into one bounded by the distinct reachable pairs.
//!
//! What it does not do: model `find` during the run (dropped; `find` after the
//! run is the invariant checker's input), model `statement`, or resolve unknown
//! outcomes (see `resolve`). The search is bounded by a [`Budget`]; running out
//! gives [`Verdict::Unknown`], never a wrong answer.
use super::history::Command;
use super::resolve::ResolvedOp;
use std::collections::{HashMap, HashSet};
use std::time::Instant;

/// Search limits given by the caller.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Model steps tried, summed over all components.
    pub steps_max: u64,
    /// Wall-clock deadline, checked every few thousand steps.
    pub deadline: Option<Instant>,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            steps_max: 50_000_000,
            deadline: None,
        }
    }
}

/// Why a history is not linearizable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Witness {
    /// History index of the op that could not be placed.
    pub op: usize,
    /// History indices of the longest linearized prefix found, in order.
    pub prefix: Vec<usize>,
    /// The same, in words.
    pub explanation: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    NotLinearizable { witness: Witness },
    Unknown { reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Open,
    Deposit,
    Withdraw,
    Transfer,
    Balance,
    Audit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Err {
    None,
    UnknownAccount,
    Exists,
    Insufficient,
    /// Any other refusal (limit_exceeded, bad_command, internal): no effect.
    NoEffect,
}

/// One op in a component's local account numbering.
#[derive(Debug, Clone, Copy)]
struct MOp {
    kind: Kind,
    err: Err,
    a: usize,
    b: usize,
    cents: u64,
    fee: u64,
    /// Maximum fee the rule allows: decides `insufficient_funds` refusals,
    /// whose actual fee the client never sees.
    fee_max: u64,
    bal_a: Option<u64>,
    bal_b: Option<u64>,
    total: Option<u64>,
}

type State = Vec<Option<u64>>;

/// Why the model refused an op at some state.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mismatch {
    Missing(usize),
    Exists(usize),
    ShouldBeMissing(usize),
    Funds {
        acct: usize,
        have: u64,
        need: u64,
    },
    NotInsufficient {
        acct: usize,
        have: u64,
        need_max: u64,
    },
    Balance {
        acct: usize,
        model: u64,
        reported: u64,
    },
    Total {
        model: u64,
        reported: u64,
    },
    Overflow,
}

/// Maximum fee for a transfer of `cents`: 30 bp × multiplier 2.
pub fn fee_max_cents(cents: u64) -> u64 {
    (cents as u128 * 60).div_ceil(10_000).min(u64::MAX as u128) as u64
}

fn check_bal(acct: usize, model: u64, reported: Option<u64>) -> Result<(), Mismatch> {
    match reported {
        Some(r) if r != model => Err(Mismatch::Balance {
            acct,
            model,
            reported: r,
        }),
        _ => Ok(()),
    }
}

fn get(s: &State, a: usize) -> Result<u64, Mismatch> {
    s.get(a).copied().flatten().ok_or(Mismatch::Missing(a))
}

fn step(s: &mut State, op: &MOp, house: Option<usize>) -> Result<(), Mismatch> {
    let exists = |s: &State, a: usize| s.get(a).copied().flatten().is_some();
    match (op.kind, op.err) {
        (_, Err::NoEffect) => Ok(()),
        (Kind::Open, Err::None) => {
            if exists(s, op.a) {
                return Err(Mismatch::Exists(op.a));
            }
            check_bal(op.a, op.cents, op.bal_a)?;
            s[op.a] = Some(op.cents);
            Ok(())
        }
        (Kind::Open, Err::Exists) => get(s, op.a).map(|_| ()),
        (Kind::Deposit, Err::None) => {
            let v = get(s, op.a)?
                .checked_add(op.cents)
                .ok_or(Mismatch::Overflow)?;
            check_bal(op.a, v, op.bal_a)?;
            s[op.a] = Some(v);
            Ok(())
        }
        (Kind::Withdraw, Err::None) => {
            let have = get(s, op.a)?;
            let v = have.checked_sub(op.cents).ok_or(Mismatch::Funds {
                acct: op.a,
                have,
                need: op.cents,
            })?;
            check_bal(op.a, v, op.bal_a)?;
            s[op.a] = Some(v);
            Ok(())
        }
        (Kind::Withdraw, Err::Insufficient) => {
            let have = get(s, op.a)?;
            if have >= op.cents {
                return Err(Mismatch::NotInsufficient {
                    acct: op.a,
                    have,
                    need_max: op.cents,
                });
            }
            Ok(())
        }
        (Kind::Transfer, Err::None) => {
            let have = get(s, op.a)?;
            let to = get(s, op.b)?;
            let need = op.cents.checked_add(op.fee).ok_or(Mismatch::Overflow)?;
            let from_after = have.checked_sub(need).ok_or(Mismatch::Funds {
                acct: op.a,
                have,
                need,
            })?;
            let to_after = to.checked_add(op.cents).ok_or(Mismatch::Overflow)?;
            check_bal(op.a, from_after, op.bal_a)?;
            check_bal(op.b, to_after, op.bal_b)?;
            s[op.a] = Some(from_after);
            s[op.b] = Some(to_after);
            if let Some(h) = house {
                if op.fee > 0 {
                    let hv = get(s, h)?.checked_add(op.fee).ok_or(Mismatch::Overflow)?;
                    s[h] = Some(hv);
                }
            }
            Ok(())
        }
        (Kind::Transfer, Err::Insufficient) => {
            let have = get(s, op.a)?;
            get(s, op.b)?;
            let need_max = op.cents.saturating_add(op.fee_max);
            if have >= need_max {
                return Err(Mismatch::NotInsufficient {
                    acct: op.a,
                    have,
                    need_max,
                });
            }
            Ok(())
        }
        (Kind::Balance, Err::None) => check_bal(op.a, get(s, op.a)?, op.bal_a),
        (Kind::Audit, _) => {
            let mut sum: u64 = 0;
            for v in s.iter().flatten() {
                sum = sum.checked_add(*v).ok_or(Mismatch::Overflow)?;
            }
            match op.total {
                Some(t) if t != sum => Err(Mismatch::Total {
                    model: sum,
                    reported: t,
                }),
                _ => Ok(()),
            }
        }
        (Kind::Transfer, Err::UnknownAccount) => {
            if exists(s, op.a) && exists(s, op.b) {
                return Err(Mismatch::ShouldBeMissing(op.a));
            }
            Ok(())
        }
        (_, Err::UnknownAccount) => {
            if exists(s, op.a) {
                return Err(Mismatch::ShouldBeMissing(op.a));
            }
            Ok(())
        }
        // A refusal code that cannot happen for this verb (e.g. a deposit
        // refused for insufficient funds) has no state that explains it.
        (_, Err::Insufficient) | (_, Err::Exists) => Err(Mismatch::Exists(op.a)),
    }
}

/// A compact set of op indices.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

struct Component {
    names: Vec<String>,
    house: Option<usize>,
    /// History ops (indices into the resolved slice) in this component.
    ops: Vec<usize>,
}

/// Checks a resolved history against the model bank, starting from `initial`
/// balances (an empty bank has only `house` at 0).
pub fn check_linearizable(
    ops: &[ResolvedOp],
    initial: &HashMap<String, u64>,
    budget: &Budget,
) -> Verdict {
    let comps = components(ops, initial);
    let mut steps: u64 = 0;
    for comp in &comps {
        match search(ops, initial, comp, budget, &mut steps) {
            Verdict::Linearizable => {}
            other => return other,
        }
    }
    Verdict::Linearizable
}

fn accounts_of(c: &Command) -> Vec<&str> {
    match c {
        Command::Open { account, .. }
        | Command::Deposit { account, .. }
        | Command::Withdraw { account, .. }
        | Command::Balance { account } => vec![account.as_str()],
        Command::Transfer { from, to, .. } => vec![from.as_str(), to.as_str()],
        Command::Audit | Command::Find { .. } => vec![],
    }
}

struct Names {
    ids: HashMap<String, usize>,
    names: Vec<String>,
    parent: Vec<usize>,
}

impl Names {
    fn id(&mut self, s: &str) -> usize {
        if let Some(&i) = self.ids.get(s) {
            return i;
        }
        let i = self.names.len();
        self.ids.insert(s.to_string(), i);
        self.names.push(s.to_string());
        self.parent.push(i);
        i
    }
    fn root(&mut self, mut x: usize) -> usize {
        while self.parent[x] != x {
            self.parent[x] = self.parent[self.parent[x]];
            x = self.parent[x];
        }
        x
    }
    fn union(&mut self, a: usize, b: usize) {
        let (x, y) = (self.root(a), self.root(b));
        self.parent[y] = x;
    }
}

fn components(ops: &[ResolvedOp], initial: &HashMap<String, u64>) -> Vec<Component> {
    const HOUSE: &str = "house";
    let audit = ops.iter().any(|o| o.command == Command::Audit);
    let house_read = audit || ops.iter().any(|o| accounts_of(&o.command).contains(&HOUSE));
    let mut nm = Names {
        ids: HashMap::new(),
        names: Vec::new(),
        parent: Vec::new(),
    };
    if audit {
        // The audit sums every account, including those no op names.
        let mut init: Vec<&String> = initial.keys().collect();
        init.sort();
        for k in init {
            nm.id(k);
        }
        nm.id(HOUSE);
    }
    let mut op_acct: Vec<Option<usize>> = Vec::with_capacity(ops.len());
    for o in ops {
        let mut acc: Vec<&str> = accounts_of(&o.command);
        if house_read && matches!(o.command, Command::Transfer { .. }) {
            acc.push(HOUSE);
        }
        let ids: Vec<usize> = acc.iter().map(|a| nm.id(a)).collect();
        if let Some(&f) = ids.first() {
            for &i in &ids[1..] {
                nm.union(f, i);
            }
        }
        op_acct.push(ids.first().copied());
    }
    if audit {
        for i in 1..nm.names.len() {
            nm.union(0, i);
        }
    }
    let mut by_root: HashMap<usize, usize> = HashMap::new();
    let mut comps: Vec<Component> = Vec::new();
    for (i, acct) in op_acct.iter().enumerate() {
        let root = match acct {
            Some(a) => nm.root(*a),
            None if ops[i].command == Command::Audit => nm.root(0),
            None => continue, // find during the run: not modelled
        };
        let c = *by_root.entry(root).or_insert_with(|| {
            comps.push(Component {
                names: Vec::new(),
                house: None,
                ops: Vec::new(),
            });
            comps.len() - 1
        });
        comps[c].ops.push(i);
    }
    for i in 0..nm.names.len() {
        let root = nm.root(i);
        if let Some(&c) = by_root.get(&root) {
            if nm.names[i] == HOUSE {
                comps[c].house = Some(comps[c].names.len());
            }
            comps[c].names.push(nm.names[i].clone());
        }
    }
    comps
}

fn to_mop(o: &ResolvedOp, local: &HashMap<&str, usize>) -> MOp {
    let ix = |s: &str| local.get(s).copied().unwrap_or(0);
    let out = &o.outcome;
    let err = if out.ok {
        Err::None
    } else {
        match out.error.as_deref() {
            Some("unknown_account") => Err::UnknownAccount,
            Some("account_exists") => Err::Exists,
            Some("insufficient_funds") => Err::Insufficient,
            _ => Err::NoEffect,
        }
    };
    let mut m = MOp {
        kind: Kind::Audit,
        err,
        a: 0,
        b: 0,
        cents: 0,
        fee: out.fee_cents.unwrap_or(0),
        fee_max: 0,
        bal_a: out.balance_cents,
        bal_b: None,
        total: out.total_cents,
    };
    match &o.command {
        Command::Open { account, cents } => {
            m.kind = Kind::Open;
            m.a = ix(account);
            m.cents = *cents;
        }
        Command::Deposit { account, cents, .. } => {
            m.kind = Kind::Deposit;
            m.a = ix(account);
            m.cents = *cents;
        }
        Command::Withdraw { account, cents, .. } => {
            m.kind = Kind::Withdraw;
            m.a = ix(account);
            m.cents = *cents;
        }
        Command::Transfer {
            from, to, cents, ..
        } => {
            m.kind = Kind::Transfer;
            m.a = ix(from);
            m.b = ix(to);
            m.cents = *cents;
            m.bal_a = out.from_balance_cents;
            m.bal_b = out.to_balance_cents;
            m.fee_max = if from == "house" || to == "house" {
                0
            } else {
                fee_max_cents(*cents)
            };
        }
        Command::Balance { account } => {
            m.kind = Kind::Balance;
            m.a = ix(account);
        }
        Command::Audit | Command::Find { .. } => {}
    }
    m
}

fn describe(o: &ResolvedOp) -> String {
    let done = if o.complete_ns == u64::MAX {
        "unknown, found after the run".to_string()
    } else {
        format!("{}", o.complete_ns)
    };
    let res = if o.outcome.ok {
        let mut parts = vec!["ok".to_string()];
        if let Some(b) = o.outcome.balance_cents {
            parts.push(format!("balance {b}"));
        }
        if let (Some(f), Some(t)) = (o.outcome.from_balance_cents, o.outcome.to_balance_cents) {
            parts.push(format!("from {f} to {t}"));
        }
        if let Some(f) = o.outcome.fee_cents {
            parts.push(format!("fee {f}"));
        }
        if let Some(t) = o.outcome.total_cents {
            parts.push(format!("total {t}"));
        }
        parts.join(", ")
    } else {
        o.outcome.error.clone().unwrap_or_default()
    };
    format!(
        "op {} (client {}, {:?}, invoked {} ns, completed {}) → {}",
        o.index, o.client, o.command, o.invoke_ns, done, res
    )
}

fn explain(m: &Mismatch, names: &[String]) -> String {
    let n = |i: &usize| names.get(*i).cloned().unwrap_or_default();
    match m {
        Mismatch::Missing(a) => format!("account {} does not exist at that point", n(a)),
        Mismatch::Exists(a) => format!(
            "account {} already exists (or the refusal is impossible) at that point",
            n(a)
        ),
        Mismatch::ShouldBeMissing(a) => {
            format!("unknown_account, but {} exists at that point", n(a))
        }
        Mismatch::Funds { acct, have, need } => format!(
            "{} holds {have} cents, less than the {need} needed",
            n(acct)
        ),
        Mismatch::NotInsufficient {
            acct,
            have,
            need_max,
        } => {
            format!(
                "insufficient_funds, but {} holds {have} cents, enough for {need_max}",
                n(acct)
            )
        }
        Mismatch::Balance {
            acct,
            model,
            reported,
        } => {
            format!(
                "{} reported as {reported} cents, but the model holds {model}",
                n(acct)
            )
        }
        Mismatch::Total { model, reported } => {
            format!("audit total {reported}, but the model sums to {model}")
        }
        Mismatch::Overflow => "arithmetic overflow in the model".into(),
    }
}

const NONE: usize = usize::MAX;

fn search(
    ops: &[ResolvedOp],
    initial: &HashMap<String, u64>,
    comp: &Component,
    budget: &Budget,
    steps: &mut u64,
) -> Verdict {
    let local: HashMap<&str, usize> = comp
        .names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let mut state: State = comp
        .names
        .iter()
        .map(|n| {
            initial
                .get(n)
                .copied()
                .or(if n == "house" { Some(0) } else { None })
        })
        .collect();
    let mops: Vec<MOp> = comp.ops.iter().map(|&i| to_mop(&ops[i], &local)).collect();
    let n = mops.len();
    // Events: (time, is_return, local op). Calls sort before returns at equal
    // times, so touching intervals count as concurrent (never a false alarm).
    let mut ev: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (k, &i) in comp.ops.iter().enumerate() {
        ev.push((ops[i].invoke_ns, false, k));
        ev.push((ops[i].complete_ns, true, k));
    }
    ev.sort();
    // Node 0 is the head; event e is node e + 1.
    let m = ev.len() + 1;
    let mut next = vec![NONE; m];
    let mut prev = vec![NONE; m];
    for i in 0..m {
        next[i] = if i + 1 < m { i + 1 } else { NONE };
        prev[i] = if i == 0 { NONE } else { i - 1 };
    }
    let mut ret_node = vec![0usize; n];
    for (e, &(_, is_ret, k)) in ev.iter().enumerate() {
        if is_ret {
            ret_node[k] = e + 1;
        }
    }
    let mut cache: HashSet<(Bits, State)> = HashSet::new();
    let mut lin = Bits::new(n);
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut best: Option<(Vec<usize>, usize, State)> = None;
    let mut entry = next[0];
    while next[0] != NONE {
        *steps += 1;
        if *steps > budget.steps_max {
            return Verdict::Unknown {
                reason: format!("step budget of {} exhausted", budget.steps_max),
            };
        }
        if (*steps).is_multiple_of(4096) {
            if let Some(d) = budget.deadline {
                if Instant::now() >= d {
                    return Verdict::Unknown {
                        reason: "time budget exhausted".into(),
                    };
                }
            }
        }
        if entry == NONE {
            // Cannot happen: a pending call's return is still in the list.
            return Verdict::Unknown {
                reason: "internal: ran off the event list".into(),
            };
        }
        let (_, is_ret, k) = ev[entry - 1];
        if !is_ret {
            let mut s2 = state.clone();
            if step(&mut s2, &mops[k], comp.house).is_ok() {
                let mut l2 = lin.clone();
                l2.set(k);
                if cache.insert((l2.clone(), s2.clone())) {
                    let old = std::mem::replace(&mut state, s2);
                    stack.push((entry, old));
                    lin = l2;
                    // Lift the call and its return out of the list.
                    for node in [entry, ret_node[k]] {
                        next[prev[node]] = next[node];
                        if next[node] != NONE {
                            prev[next[node]] = prev[node];
                        }
                    }
                    entry = next[0];
                    continue;
                }
            }
            entry = next[entry];
        } else {
            if best.as_ref().is_none_or(|b| stack.len() > b.0.len()) {
                let prefix = stack.iter().map(|(e, _)| ev[*e - 1].2).collect();
                best = Some((prefix, k, state.clone()));
            }
            let Some((call, old)) = stack.pop() else {
                return not_linearizable(ops, comp, &mops, best);
            };
            let k2 = ev[call - 1].2;
            state = old;
            lin.clear(k2);
            // Put the return back, then the call (reverse of lifting).
            for node in [ret_node[k2], call] {
                if next[node] != NONE {
                    prev[next[node]] = node;
                }
                next[prev[node]] = node;
            }
            entry = next[call];
        }
    }
    Verdict::Linearizable
}

fn not_linearizable(
    ops: &[ResolvedOp],
    comp: &Component,
    mops: &[MOp],
    best: Option<(Vec<usize>, usize, State)>,
) -> Verdict {
    let Some((prefix, k, state)) = best else {
        return Verdict::Unknown {
            reason: "internal: no witness recorded".into(),
        };
    };
    let op = &ops[comp.ops[k]];
    let mut s2 = state.clone();
    let why = match step(&mut s2, &mops[k], comp.house) {
        Err(m) => explain(&m, &comp.names),
        Ok(()) => {
            "it fits the model there, but every order that places it leaves a later op unplaceable"
                .into()
        }
    };
    let balances: Vec<String> = comp
        .names
        .iter()
        .zip(state.iter())
        .filter_map(|(n, v)| v.map(|v| format!("{n}={v}")))
        .collect();
    let tail: Vec<String> = prefix
        .iter()
        .rev()
        .take(5)
        .rev()
        .map(|&p| describe(&ops[comp.ops[p]]))
        .collect();
    let explanation = format!(
        "no serial order explains the history up to the response of {}. \
         The longest consistent prefix linearizes {} ops (last: [{}]), leaving balances [{}]; \
         there {} cannot take effect: {}.",
        describe(op),
        prefix.len(),
        tail.join("; "),
        balances.join(", "),
        op.index,
        why
    );
    Verdict::NotLinearizable {
        witness: Witness {
            op: op.index,
            prefix: prefix.iter().map(|&p| ops[comp.ops[p]].index).collect(),
            explanation,
        },
    }
}
