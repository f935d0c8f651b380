//! Tests of the history checker (`bunker::check`): hand-written histories with a
//! known verdict, randomized histories generated from the model (must pass),
//! the same with one read made impossible (must fail), and a 2,000-op history.
use bunker::check::{
    check_invariants, check_linearizable, resolve, Budget, Command, FindResult, Op, Outcome,
    Verdict, Violation,
};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

fn cmd(text: &str) -> Command {
    match Command::parse(text) {
        Some(c) => c,
        None => panic!("test bug: bad command {text}"),
    }
}

fn op(client: u64, inv: u64, done: Option<u64>, text: &str, result: Option<Outcome>) -> Op {
    Op {
        client,
        invoke_ns: inv,
        complete_ns: done,
        command: cmd(text),
        result,
    }
}

fn bal(b: u64) -> Option<Outcome> {
    Some(Outcome {
        ok: true,
        balance_cents: Some(b),
        ..Outcome::default()
    })
}

fn tr(from: u64, to: u64, fee: u64) -> Option<Outcome> {
    Some(Outcome {
        ok: true,
        from_balance_cents: Some(from),
        to_balance_cents: Some(to),
        fee_cents: Some(fee),
        ..Outcome::default()
    })
}

fn refused(code: &str) -> Option<Outcome> {
    Some(Outcome {
        ok: false,
        error: Some(code.into()),
        ..Outcome::default()
    })
}

fn audit(total: u64) -> Option<Outcome> {
    Some(Outcome {
        ok: true,
        total_cents: Some(total),
        ..Outcome::default()
    })
}

fn verdict(ops: &[Op], finds: &HashMap<String, FindResult>) -> Verdict {
    let resolved = match resolve(ops, finds) {
        Ok(r) => r,
        Err(e) => panic!("resolve failed: {e}"),
    };
    check_linearizable(&resolved, &HashMap::new(), &Budget::default())
}

fn no_finds() -> HashMap<String, FindResult> {
    HashMap::new()
}

#[test]
fn valid_concurrent_history_is_linearizable() {
    let h = vec![
        op(1, 0, Some(10), "open a 100", bal(100)),
        op(2, 0, Some(10), "open b", bal(0)),
        op(1, 20, Some(40), "deposit a 50", bal(150)),
        // Concurrent with the deposit: may see the old balance.
        op(2, 25, Some(35), "balance a", bal(100)),
        op(1, 50, Some(60), "transfer a b 30 ref=t1", tr(119, 30, 1)),
        op(2, 55, Some(70), "balance b", bal(30)),
        op(3, 80, Some(90), "audit", audit(150)),
        op(3, 95, Some(99), "balance house", bal(1)),
    ];
    assert_eq!(verdict(&h, &no_finds()), Verdict::Linearizable);
}

#[test]
fn stale_read_is_not_linearizable() {
    let h = vec![
        op(1, 0, Some(10), "open a 100", bal(100)),
        op(1, 20, Some(40), "deposit a 50", bal(150)),
        // Invoked after the deposit completed, yet sees the old balance.
        op(2, 50, Some(60), "balance a", bal(100)),
    ];
    match verdict(&h, &no_finds()) {
        Verdict::NotLinearizable { witness } => {
            assert_eq!(witness.op, 2, "{}", witness.explanation);
            assert!(
                witness.explanation.contains("reported as 100"),
                "{}",
                witness.explanation
            );
            assert!(
                witness.explanation.contains("a=150"),
                "{}",
                witness.explanation
            );
        }
        other => panic!("stale read accepted: {other:?}"),
    }
}

#[test]
fn only_one_order_works_for_overlapping_ops() {
    // All three overlap; the only order: deposit, withdraw 80, refused withdraw 50.
    let h = vec![
        op(1, 0, Some(5), "open a 100", bal(100)),
        op(
            2,
            10,
            Some(50),
            "withdraw a 50 ref=w2",
            refused("insufficient_funds"),
        ),
        op(3, 10, Some(50), "withdraw a 80 ref=w1", bal(30)),
        op(1, 10, Some(50), "deposit a 10 ref=d1", bal(110)),
    ];
    assert_eq!(verdict(&h, &no_finds()), Verdict::Linearizable);
    // Same without the deposit: the balance 30 is impossible.
    let bad: Vec<Op> = h[..3].to_vec();
    assert!(matches!(
        verdict(&bad, &no_finds()),
        Verdict::NotLinearizable { .. }
    ));
}

#[test]
fn unknown_transfer_found_later_takes_effect_after_its_invocation() {
    let h = vec![
        op(1, 0, Some(5), "open a 100", bal(100)),
        op(1, 1, Some(6), "open b", bal(0)),
        op(1, 10, None, "transfer a b 10 ref=t1", None),
        op(2, 50, Some(60), "balance b", bal(0)),
        op(2, 100, Some(110), "balance b", bal(10)),
        op(2, 120, Some(130), "balance a", bal(89)),
        op(3, 140, None, "deposit a 5 ref=lost", None),
        op(2, 150, Some(160), "balance a", bal(89)),
    ];
    let mut finds = HashMap::new();
    finds.insert(
        "t1".to_string(),
        FindResult {
            count: 1,
            fee_cents: Some(1),
        },
    );
    finds.insert(
        "lost".to_string(),
        FindResult {
            count: 0,
            fee_cents: None,
        },
    );
    assert_eq!(verdict(&h, &finds), Verdict::Linearizable);
    assert!(check_invariants(&h, &finds, 0, Some(100)).is_empty());
    // If find says the transfer never happened, b = 10 is impossible.
    finds.insert(
        "t1".to_string(),
        FindResult {
            count: 0,
            fee_cents: None,
        },
    );
    assert!(matches!(
        verdict(&h, &finds),
        Verdict::NotLinearizable { .. }
    ));
}

#[test]
fn unknown_write_without_reference_is_a_typed_error() {
    let h = vec![op(1, 0, None, "deposit a 5", None)];
    assert!(resolve(&h, &no_finds()).is_err());
}

fn transfer_history() -> Vec<Op> {
    vec![
        op(1, 0, Some(5), "open a 100", bal(100)),
        op(1, 6, Some(9), "open b", bal(0)),
        op(1, 10, Some(20), "transfer a b 10 ref=t1", tr(89, 10, 1)),
        op(
            1,
            30,
            Some(40),
            "transfer a b 500 ref=t2",
            refused("insufficient_funds"),
        ),
    ]
}

#[test]
fn lost_acknowledged_transfer_is_reported() {
    let mut finds = HashMap::new();
    finds.insert(
        "t1".to_string(),
        FindResult {
            count: 0,
            fee_cents: None,
        },
    );
    finds.insert(
        "t2".to_string(),
        FindResult {
            count: 0,
            fee_cents: None,
        },
    );
    let v = check_invariants(&transfer_history(), &finds, 0, Some(100));
    assert_eq!(
        v,
        vec![Violation::AcknowledgedNotOnce {
            op: 2,
            reference: "t1".into(),
            count: 0
        }]
    );
}

#[test]
fn duplicated_transfer_is_reported() {
    let mut finds = HashMap::new();
    finds.insert(
        "t1".to_string(),
        FindResult {
            count: 2,
            fee_cents: Some(1),
        },
    );
    finds.insert(
        "t2".to_string(),
        FindResult {
            count: 1,
            fee_cents: Some(5),
        },
    );
    let v = check_invariants(&transfer_history(), &finds, 0, Some(100));
    assert!(
        v.contains(&Violation::AcknowledgedNotOnce {
            op: 2,
            reference: "t1".into(),
            count: 2
        }),
        "{v:?}"
    );
    assert!(
        v.contains(&Violation::RefusedPresent {
            op: 3,
            reference: "t2".into(),
            count: 1
        }),
        "{v:?}"
    );
}

#[test]
fn money_and_fee_bounds_are_checked() {
    let mut finds = HashMap::new();
    finds.insert(
        "t1".to_string(),
        FindResult {
            count: 1,
            fee_cents: Some(1),
        },
    );
    finds.insert(
        "t2".to_string(),
        FindResult {
            count: 0,
            fee_cents: None,
        },
    );
    assert!(check_invariants(&transfer_history(), &finds, 0, Some(100)).is_empty());
    let v = check_invariants(&transfer_history(), &finds, 0, Some(99));
    assert_eq!(
        v,
        vec![Violation::MoneyNotConserved {
            expected_cents: 100,
            audit_cents: 99
        }]
    );
    let mut h = transfer_history();
    h[2].result = tr(88, 10, 2); // 10 cents allow at most ceil(10*60/10000) = 1
    let v = check_invariants(&h, &finds, 0, Some(100));
    assert_eq!(
        v,
        vec![Violation::FeeOutOfBounds {
            op: 2,
            fee_cents: 2,
            max_cents: 1
        }]
    );
}

/// A history generated by running the model serially, with each op's interval
/// jittered around its serial instant (so real-time order is kept).
struct Generated {
    ops: Vec<Op>,
    finds: HashMap<String, FindResult>,
    /// More money than any account ever held.
    money_bound: u64,
    final_total: u64,
}

fn fee_max(c: u64) -> u64 {
    (c * 60).div_ceil(10_000)
}

fn generate(
    seed: u64,
    n: usize,
    accounts: usize,
    clients: u64,
    jitter_ns: u64,
    audits: bool,
) -> Generated {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let names: Vec<String> = (0..accounts).map(|i| format!("acct{i}")).collect();
    let mut bals: HashMap<String, u64> = HashMap::new();
    bals.insert("house".into(), 0);
    let mut ops = Vec::with_capacity(n);
    let mut finds = HashMap::new();
    let mut minted: u64 = 0;
    for k in 0..n {
        let t = 10_000 + k as u64 * 1_000;
        let client = k as u64 % clients;
        let inv = t - rng.gen_range(0..=jitter_ns);
        let done = t + rng.gen_range(0..=jitter_ns);
        let r = format!("r{k}");
        let (text, result): (String, Option<Outcome>) = if k < accounts {
            let c = rng.gen_range(0..10_000);
            bals.insert(names[k].clone(), c);
            minted += c;
            (format!("open {} {c}", names[k]), bal(c))
        } else {
            let a = &names[rng.gen_range(0..accounts)];
            let ba = bals.get(a).copied().unwrap_or(0);
            match rng.gen_range(0..100) {
                0..=14 => {
                    let c = rng.gen_range(1..1_000);
                    bals.insert(a.clone(), ba + c);
                    minted += c;
                    (format!("deposit {a} {c} ref={r}"), bal(ba + c))
                }
                15..=24 => {
                    let c = rng.gen_range(1..2_000);
                    if c <= ba {
                        bals.insert(a.clone(), ba - c);
                        minted -= c;
                        (format!("withdraw {a} {c} ref={r}"), bal(ba - c))
                    } else {
                        (
                            format!("withdraw {a} {c} ref={r}"),
                            refused("insufficient_funds"),
                        )
                    }
                }
                25..=59 => {
                    let mut b = &names[rng.gen_range(0..accounts)];
                    if b == a {
                        b = &names[(names.iter().position(|x| x == a).unwrap_or(0) + 1) % accounts];
                    }
                    let c = rng.gen_range(1..3_000);
                    let fee = [0, fee_max(c), (c * 15).div_ceil(10_000)][rng.gen_range(0..3)];
                    if c + fee <= ba {
                        let bb = bals.get(b).copied().unwrap_or(0);
                        bals.insert(a.clone(), ba - c - fee);
                        bals.insert(b.clone(), bb + c);
                        *bals.entry("house".into()).or_insert(0) += fee;
                        finds.insert(
                            r.clone(),
                            FindResult {
                                count: 1,
                                fee_cents: Some(fee),
                            },
                        );
                        (
                            format!("transfer {a} {b} {c} ref={r}"),
                            tr(ba - c - fee, bb + c, fee),
                        )
                    } else if c > ba {
                        finds.insert(
                            r.clone(),
                            FindResult {
                                count: 0,
                                fee_cents: None,
                            },
                        );
                        (
                            format!("transfer {a} {b} {c} ref={r}"),
                            refused("insufficient_funds"),
                        )
                    } else {
                        (format!("balance {a}"), bal(ba))
                    }
                }
                60..=62 if audits => {
                    let total = bals.values().sum();
                    ("audit".into(), audit(total))
                }
                _ => (format!("balance {a}"), bal(ba)),
            }
        };
        let command = cmd(&text);
        if let Some(rf) = command.reference() {
            finds.entry(rf.to_string()).or_insert(FindResult {
                count: u64::from(result.as_ref().is_some_and(|o| o.ok)),
                fee_cents: None,
            });
        }
        // Some acknowledged referenced writes lose their response.
        let lost = command.reference().is_some() && rng.gen_range(0..20) == 0;
        ops.push(Op {
            client,
            invoke_ns: inv,
            complete_ns: if lost { None } else { Some(done) },
            command,
            result: if lost { None } else { result },
        });
    }
    let final_total = bals.values().sum();
    Generated {
        ops,
        finds,
        money_bound: minted + 1,
        final_total,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn generated_histories_are_linearizable(seed in any::<u64>(), jitter in 0u64..6_000, audits in any::<bool>()) {
        let g = generate(seed, 120, 4, 4, jitter, audits);
        let v = verdict(&g.ops, &g.finds);
        prop_assert_eq!(v, Verdict::Linearizable);
        let inv = check_invariants(&g.ops, &g.finds, 0, Some(g.final_total));
        prop_assert!(inv.is_empty(), "{:?}", inv);
    }

    #[test]
    fn an_impossible_read_is_caught(seed in any::<u64>(), jitter in 0u64..6_000, pick in any::<usize>()) {
        let mut g = generate(seed, 120, 4, 4, jitter, false);
        let reads: Vec<usize> = g.ops.iter().enumerate()
            .filter(|(_, o)| matches!(o.command, Command::Balance { .. }) && o.complete_ns.is_some())
            .map(|(i, _)| i).collect();
        prop_assume!(!reads.is_empty());
        let i = reads[pick % reads.len()];
        // No account ever holds more than all the money minted.
        g.ops[i].result = bal(g.money_bound);
        match verdict(&g.ops, &g.finds) {
            Verdict::NotLinearizable { witness } => prop_assert_eq!(witness.op, i, "{}", witness.explanation),
            other => prop_assert!(false, "impossible read accepted: {:?}", other),
        }
    }
}

#[test]
fn two_thousand_ops_eight_clients_twenty_accounts() {
    let g = generate(7, 2_000, 20, 8, 4_000, true);
    let budget = Budget {
        steps_max: 20_000_000,
        deadline: None,
    };
    let resolved = match resolve(&g.ops, &g.finds) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(
        check_linearizable(&resolved, &HashMap::new(), &budget),
        Verdict::Linearizable
    );
}

#[test]
fn exhausted_budget_is_unknown_not_a_verdict() {
    let g = generate(3, 300, 4, 4, 4_000, true);
    let resolved = match resolve(&g.ops, &g.finds) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    let budget = Budget {
        steps_max: 10,
        deadline: None,
    };
    assert!(matches!(
        check_linearizable(&resolved, &HashMap::new(), &budget),
        Verdict::Unknown { .. }
    ));
}

#[test]
fn saved_history_is_rechecked_and_bad_lines_are_named() {
    let g = generate(11, 200, 5, 4, 3_000, false);
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let path = dir.path().join("history.jsonl");
    if let Err(e) = bunker::check::save_history(&path, &g.ops) {
        panic!("{e}");
    }
    let back = match bunker::check::load_history(&path) {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(back, g.ops);
    assert_eq!(verdict(&back, &g.finds), Verdict::Linearizable);
    if let Err(e) = std::fs::write(&path, "{\"client\":1}\n") {
        panic!("{e}");
    }
    match bunker::check::load_history(&path) {
        Err(e) => assert!(e.to_string().contains("line 1"), "{e}"),
        Ok(ops) => panic!("accepted a bad line: {ops:?}"),
    }
}
