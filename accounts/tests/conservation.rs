//! Money conservation under random command sequences (proptest).
//!
//! In process, with a pinned clock: a model bank predicts every answer
//! exactly (including fees at random instants across hours and moon phases,
//! refusals, the lifetime inflow cap) and the audit must agree with the model
//! after every command.
//!
//! Through the real `serve` binary, with the real clock: the model cannot
//! know the fee in advance, so it checks each fee against the rule at the
//! recorded instant, and the audit at the end.

mod common;

use std::collections::BTreeMap;

use bunker_accounts::command::{Command, MAX_AMOUNT_CENTS};
use bunker_accounts::fee;
use bunker_accounts::response::{ErrorCode, Outcome, Response};
use bunker_accounts::store::{Store, SyncMode};
use common::{FixedEnv, Runner, Server};
use proptest::prelude::*;

const NAMES: [&str; 6] = ["alice", "bob", "carol", "dave", "house", "ghost"];
/// Instants from 1970 to 2100, in microseconds.
const LATEST_UNIX_US: i64 = 4_102_444_800_000_000;

#[derive(Debug, Clone)]
enum Op {
    Open(usize, i64),
    Deposit(usize, i64),
    Withdraw(usize, i64),
    Transfer(usize, usize, i64),
    Balance(usize),
    Statement(usize),
    Find(u8),
}

fn amount() -> impl Strategy<Value = i64> {
    prop_oneof![
        8 => 1i64..5_000,
        2 => 1i64..1_000_000,
        1 => Just(MAX_AMOUNT_CENTS),
        1 => MAX_AMOUNT_CENTS / 2..=MAX_AMOUNT_CENTS,
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let who = 0..NAMES.len();
    prop_oneof![
        2 => (0..4usize, prop_oneof![Just(0i64), amount()]).prop_map(|(a, c)| Op::Open(a, c)),
        4 => (who.clone(), amount()).prop_map(|(a, c)| Op::Deposit(a, c)),
        3 => (who.clone(), amount()).prop_map(|(a, c)| Op::Withdraw(a, c)),
        6 => (who.clone(), 1..NAMES.len(), amount())
            .prop_map(|(a, k, c)| Op::Transfer(a, (a + k) % NAMES.len(), c)),
        1 => who.clone().prop_map(Op::Balance),
        1 => who.prop_map(Op::Statement),
        1 => (0u8..4).prop_map(Op::Find),
    ]
}

/// The op as command text, with a reference on every money movement.
fn text(op: &Op, index: usize) -> String {
    match op {
        Op::Open(a, c) => format!("open {} {c}", NAMES[*a]),
        Op::Deposit(a, c) => format!("deposit {} {c} ref=r{}", NAMES[*a], index % 4),
        Op::Withdraw(a, c) => format!("withdraw {} {c} ref=r{}", NAMES[*a], index % 4),
        Op::Transfer(a, b, c) => format!(
            "transfer {} {} {c} ref=r{}",
            NAMES[*a],
            NAMES[*b],
            index % 4
        ),
        Op::Balance(a) => format!("balance {}", NAMES[*a]),
        Op::Statement(a) => format!("statement {} 5", NAMES[*a]),
        Op::Find(r) => format!("find r{r}"),
    }
}

/// The bank as the README describes it.
#[derive(Debug, Default)]
struct Model {
    balances: BTreeMap<&'static str, i64>,
    minted: i64,
    burned: i64,
    transactions: u64,
    refs: BTreeMap<String, u64>,
}

impl Model {
    fn new() -> Model {
        let mut model = Model::default();
        model.balances.insert("house", 0);
        model
    }

    fn total(&self) -> i64 {
        self.balances.values().sum()
    }

    fn record(&mut self, reference: String) {
        self.transactions += 1;
        *self.refs.entry(reference).or_insert(0) += 1;
    }
}

/// The fee the rule charges, or none when the house is involved.
fn fee_for(from: &str, to: &str, cents: i64, at: i64) -> i64 {
    if from == "house" || to == "house" {
        0
    } else {
        fee::quote(cents, at).cents
    }
}

/// Applies `op` to the model and checks the store's answer against it.
fn check(
    model: &mut Model,
    op: &Op,
    index: usize,
    at: i64,
    response: &Response,
) -> Result<(), TestCaseError> {
    let refused = |code: ErrorCode| match response {
        Response::Err(r) if r.error == code => Ok(()),
        other => Err(TestCaseError::fail(format!(
            "{op:?}: expected {code:?}, got {other:?}"
        ))),
    };
    let reference = format!("r{}", index % 4);
    match op {
        Op::Open(a, c) => {
            let name = NAMES[*a];
            if model.balances.contains_key(name) {
                return refused(ErrorCode::AccountExists);
            }
            if model.minted + c > MAX_AMOUNT_CENTS {
                return refused(ErrorCode::LimitExceeded);
            }
            prop_assert!(
                matches!(response, Response::Ok(Outcome::Open { balance_cents, .. }) if balance_cents == c),
                "{op:?}: {response:?}"
            );
            model.balances.insert(name, *c);
            model.minted += c;
            model.transactions += 1;
        }
        Op::Deposit(a, c) => {
            let Some(&before) = model.balances.get(NAMES[*a]) else {
                return refused(ErrorCode::UnknownAccount);
            };
            if model.minted + c > MAX_AMOUNT_CENTS {
                return refused(ErrorCode::LimitExceeded);
            }
            prop_assert!(
                matches!(response, Response::Ok(Outcome::Deposit { balance_cents, .. }) if *balance_cents == before + c),
                "{op:?}: {response:?}"
            );
            model.balances.insert(NAMES[*a], before + c);
            model.minted += c;
            model.record(reference);
        }
        Op::Withdraw(a, c) => {
            let Some(&before) = model.balances.get(NAMES[*a]) else {
                return refused(ErrorCode::UnknownAccount);
            };
            if before < *c {
                return refused(ErrorCode::InsufficientFunds);
            }
            prop_assert!(
                matches!(response, Response::Ok(Outcome::Withdraw { balance_cents, .. }) if *balance_cents == before - c),
                "{op:?}: {response:?}"
            );
            model.balances.insert(NAMES[*a], before - c);
            model.burned += c;
            model.record(reference);
        }
        Op::Transfer(a, b, c) => {
            let (from, to) = (NAMES[*a], NAMES[*b]);
            let Some(&from_before) = model.balances.get(from) else {
                return refused(ErrorCode::UnknownAccount);
            };
            let Some(&to_before) = model.balances.get(to) else {
                return refused(ErrorCode::UnknownAccount);
            };
            let fee_cents = fee_for(from, to, *c, at);
            if from_before < c + fee_cents {
                return refused(ErrorCode::InsufficientFunds);
            }
            match response {
                Response::Ok(Outcome::Transfer {
                    from_balance_cents,
                    to_balance_cents,
                    fee,
                    txn,
                }) => {
                    prop_assert_eq!(fee.cents, fee_cents);
                    prop_assert_eq!(txn.fee_cents, fee_cents);
                    prop_assert_eq!(*from_balance_cents, from_before - c - fee_cents);
                    prop_assert_eq!(*to_balance_cents, to_before + c);
                }
                other => return Err(TestCaseError::fail(format!("{op:?}: {other:?}"))),
            }
            model.balances.insert(from, from_before - c - fee_cents);
            model.balances.insert(to, to_before + c);
            *model.balances.get_mut("house").expect("house") += fee_cents;
            model.record(reference);
        }
        Op::Balance(a) | Op::Statement(a) => match model.balances.get(NAMES[*a]) {
            None => return refused(ErrorCode::UnknownAccount),
            Some(&expected) => match response {
                Response::Ok(Outcome::Balance { balance_cents, .. })
                | Response::Ok(Outcome::Statement { balance_cents, .. }) => {
                    prop_assert_eq!(*balance_cents, expected)
                }
                other => return Err(TestCaseError::fail(format!("{op:?}: {other:?}"))),
            },
        },
        Op::Find(r) => match response {
            Response::Ok(Outcome::Find { count, txns, .. }) => {
                let expected = model.refs.get(&format!("r{r}")).copied().unwrap_or(0);
                prop_assert_eq!(*count, expected);
                prop_assert_eq!(txns.len() as u64, expected.min(100));
            }
            other => return Err(TestCaseError::fail(format!("{op:?}: {other:?}"))),
        },
    }
    Ok(())
}

fn audit_matches(store: &mut Store, model: &Model) -> Result<(), TestCaseError> {
    let mut env = FixedEnv::new(0);
    match store.execute(&Command::Audit, &mut env) {
        Ok(Response::Ok(Outcome::Audit(audit))) => {
            prop_assert!(audit.conserved, "{:?}", audit);
            prop_assert!(audit.ledger_consistent, "{:?}", audit);
            prop_assert_eq!(audit.total_cents, model.total());
            prop_assert_eq!(audit.total_cents, audit.minted_cents - audit.burned_cents);
            prop_assert_eq!(audit.minted_cents, model.minted);
            prop_assert_eq!(audit.burned_cents, model.burned);
            prop_assert_eq!(audit.transactions, model.transactions);
            prop_assert_eq!(audit.accounts, model.balances.len() as u64);
            prop_assert_eq!(audit.house_cents, model.balances["house"]);
            Ok(())
        }
        other => Err(TestCaseError::fail(format!("audit: {other:?}"))),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn money_is_conserved_and_every_answer_is_predicted(
        steps in prop::collection::vec((op(), 0..LATEST_UNIX_US), 1..60)
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(dir.path(), SyncMode::Off).expect("open");
        let mut env = FixedEnv::new(0);
        let mut model = Model::new();
        for (index, (op, at)) in steps.iter().enumerate() {
            let command = bunker_accounts::parse(text(op, index).as_bytes()).expect("valid command");
            env.now_unix_us = *at;
            let response = store.execute(&command, &mut env).expect("no internal error");
            check(&mut model, op, index, *at, &response)?;
            audit_matches(&mut store, &model)?;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn money_is_conserved_through_serve(ops in prop::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut server = Server::start(dir.path());
        let mut balances: BTreeMap<&str, i64> = BTreeMap::from([("house", 0)]);
        let (mut minted, mut burned) = (0i64, 0i64);
        for (index, op) in ops.iter().enumerate() {
            let answer = server.run(&text(op, index));
            match (op, &answer.response) {
                (Op::Open(a, c), Response::Ok(_)) => {
                    balances.insert(NAMES[*a], *c);
                    minted += c;
                }
                (Op::Deposit(a, c), Response::Ok(_)) => {
                    *balances.get_mut(NAMES[*a]).expect("known") += c;
                    minted += c;
                }
                (Op::Withdraw(a, c), Response::Ok(_)) => {
                    *balances.get_mut(NAMES[*a]).expect("known") -= c;
                    burned += c;
                }
                (Op::Transfer(a, b, c), Response::Ok(Outcome::Transfer { fee, txn, .. })) => {
                    let expected = fee_for(NAMES[*a], NAMES[*b], *c, txn.at_unix_us);
                    prop_assert_eq!(fee.cents, expected, "fee at {}", txn.at_unix_us);
                    *balances.get_mut(NAMES[*a]).expect("known") -= c + fee.cents;
                    *balances.get_mut(NAMES[*b]).expect("known") += c;
                    *balances.get_mut("house").expect("house") += fee.cents;
                }
                (Op::Transfer(a, b, c), Response::Err(r)) if r.error == ErrorCode::InsufficientFunds => {
                    // The fee is unknown in advance, but at most 60 bp.
                    let highest_fee = (c * 60 + 9_999) / 10_000;
                    prop_assert!(balances[NAMES[*a]] < c + highest_fee, "{:?}", op);
                    prop_assert!(balances.contains_key(NAMES[*b]));
                }
                (_, Response::Err(r)) => prop_assert!(r.error != ErrorCode::Internal && r.error != ErrorCode::BadCommand, "{:?}", r),
                _ => {}
            }
        }
        let audit = common::audit_ok(&mut server);
        prop_assert_eq!(audit.total_cents, balances.values().sum::<i64>());
        prop_assert_eq!((audit.minted_cents, audit.burned_cents), (minted, burned));
        for (name, expected) in &balances {
            match server.run(&format!("balance {name}")).response {
                Response::Ok(Outcome::Balance { balance_cents, .. }) => prop_assert_eq!(balance_cents, *expected),
                other => prop_assert!(false, "{:?}", other),
            }
        }
        let (code, stderr) = server.finish();
        prop_assert_eq!(code, 0, "{}", stderr);
    }
}
