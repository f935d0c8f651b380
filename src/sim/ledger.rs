//! The simulator's application: a small, honestly non-deterministic ledger
//! over the simulated file tree.
//!
//! What it does: keeps account balances in one file per account, appends
//! every transaction to journal files, and writes large blobs on request,
//! so that commands change several files, grow files, and sometimes produce
//! deltas larger than one log entry. Its results depend on things no replica
//! can reproduce: transaction ids come from the server's own random
//! generator and transfer fees from the time of day on that server's clock.
//! It can also fail in the middle of a command, leaving partial changes
//! behind, as a crashing process would.
//!
//! Money is conserved: fees move to the house account (account 0), so the
//! total of all balances changes only by deposits. Every response states
//! the balances it saw before and left after, which lets the history
//! checker verify that each command ran on exactly the committed state that
//! precedes it (invariant I3, docs/REQUIREMENTS.md) and that every read matches a committed state.
//!
//! What it does not do: anything outside its directory, or anything between
//! commands.

use crate::delta::{FileTree, TreeError};
use crate::replica::ExecOutcome;
use bytes::Bytes;
use rand::Rng;

/// Accounts 0..ACCOUNTS; account 0 is the house, which collects fees.
pub const ACCOUNTS: u64 = 6;

/// A command of the ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LedgerCommand {
    Deposit {
        account: u64,
        amount: u64,
    },
    Transfer {
        from: u64,
        to: u64,
        amount: u64,
    },
    Balance {
        account: u64,
    },
    Sum,
    /// Writes a blob of `kib` KiB (a delta larger than one entry).
    Large {
        kib: u64,
    },
}

impl LedgerCommand {
    pub fn encode(&self) -> Bytes {
        let text = match self {
            LedgerCommand::Deposit { account, amount } => format!("deposit {account} {amount}"),
            LedgerCommand::Transfer { from, to, amount } => {
                format!("transfer {from} {to} {amount}")
            }
            LedgerCommand::Balance { account } => format!("balance {account}"),
            LedgerCommand::Sum => "sum".to_string(),
            LedgerCommand::Large { kib } => format!("large {kib}"),
        };
        Bytes::from(text)
    }

    pub fn decode(data: &[u8]) -> Option<LedgerCommand> {
        let text = std::str::from_utf8(data).ok()?;
        let words: Vec<&str> = text.split_whitespace().collect();
        let num = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok());
        let account = |i: usize| num(i).filter(|&a| a < ACCOUNTS);
        match words.first().copied()? {
            "deposit" if words.len() == 3 => Some(LedgerCommand::Deposit {
                account: account(1)?,
                amount: num(2)?,
            }),
            "transfer" if words.len() == 4 => {
                let (from, to) = (account(1)?, account(2)?);
                (from != to).then_some(LedgerCommand::Transfer {
                    from,
                    to,
                    amount: num(3)?,
                })
            }
            "balance" if words.len() == 2 => Some(LedgerCommand::Balance {
                account: account(1)?,
            }),
            "sum" if words.len() == 1 => Some(LedgerCommand::Sum),
            "large" if words.len() == 2 => Some(LedgerCommand::Large {
                kib: num(1).filter(|&k| k <= 1024)?,
            }),
            _ => None,
        }
    }

    /// Whether the command may change the state.
    pub fn writes(&self) -> bool {
        matches!(
            self,
            LedgerCommand::Deposit { .. }
                | LedgerCommand::Transfer { .. }
                | LedgerCommand::Large { .. }
        )
    }
}

/// How a run of the application should end (chosen by the simulator).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    Normal,
    /// Crash after the first write.
    CrashMidway,
}

fn account_path(root: &str, account: u64) -> String {
    format!("{root}/acct/{account}")
}

fn read_balance<T: FileTree>(tree: &mut T, root: &str, account: u64) -> Result<u64, TreeError> {
    let path = account_path(root, account);
    if tree.stat(&path)?.is_none() {
        return Ok(0);
    }
    tree.with_file(&path, |data| {
        std::str::from_utf8(data)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
    })
}

fn write_balance<T: FileTree>(
    tree: &mut T,
    root: &str,
    account: u64,
    balance: u64,
) -> Result<(), TreeError> {
    tree.mkdir(&format!("{root}/acct"), 0o755)?;
    let path = account_path(root, account);
    let text = format!("{balance}\n");
    tree.create_file(&path, 0o644)?;
    tree.write_at(&path, 0, text.as_bytes())
}

fn append_journal<T: FileTree>(
    tree: &mut T,
    root: &str,
    which: u64,
    line: &str,
) -> Result<(), TreeError> {
    tree.mkdir(&format!("{root}/journal"), 0o755)?;
    let path = format!("{root}/journal/{}.log", which % 2);
    let size = match tree.stat(&path)? {
        Some(meta) => meta.size_bytes,
        None => {
            tree.create_file(&path, 0o644)?;
            0
        }
    };
    tree.write_at(&path, size, line.as_bytes())
}

/// The fee depends on the time of day on this server's clock, and a little
/// on luck: no replica could compute it again.
fn fee(now_us: u64, rng: &mut impl Rng, amount: u64) -> u64 {
    let hour = (now_us / 1_000_000) % 24;
    let base = if hour.is_multiple_of(3) { 2 } else { 1 };
    (base + rng.gen_range(0..2)).min(amount)
}

/// Runs one command in the ledger at `root` of `tree`.
pub fn execute<T: FileTree>(
    tree: &mut T,
    root: &str,
    command: &[u8],
    now_us: u64,
    rng: &mut impl Rng,
    fate: Fate,
) -> ExecOutcome {
    let Some(command) = LedgerCommand::decode(command) else {
        return ExecOutcome::Done {
            status: 2,
            response: Bytes::from_static(b"bad command"),
        };
    };
    match run(tree, root, &command, now_us, rng, fate) {
        Ok(outcome) => outcome,
        Err(e) => ExecOutcome::Failed {
            reason: format!("ledger storage error: {e}"),
        },
    }
}

fn done(status: u8, text: String) -> Result<ExecOutcome, TreeError> {
    Ok(ExecOutcome::Done {
        status,
        response: Bytes::from(text),
    })
}

fn crashed() -> Result<ExecOutcome, TreeError> {
    Ok(ExecOutcome::Failed {
        reason: "the application crashed in the middle of the command".into(),
    })
}

fn run<T: FileTree>(
    tree: &mut T,
    root: &str,
    command: &LedgerCommand,
    now_us: u64,
    rng: &mut impl Rng,
    fate: Fate,
) -> Result<ExecOutcome, TreeError> {
    match *command {
        LedgerCommand::Deposit { account, amount } => {
            let txid: u64 = rng.gen();
            // The house pays no fee to itself.
            let fee = if account == 0 {
                0
            } else {
                fee(now_us, rng, amount)
            };
            let before = read_balance(tree, root, account)?;
            let after = before.saturating_add(amount - fee);
            write_balance(tree, root, account, after)?;
            if fate == Fate::CrashMidway {
                return crashed();
            }
            if fee > 0 {
                let house = read_balance(tree, root, 0)?;
                write_balance(tree, root, 0, house.saturating_add(fee))?;
            }
            append_journal(
                tree,
                root,
                txid,
                &format!("{txid:016x} deposit {account} {amount} {fee} {now_us}\n"),
            )?;
            done(
                0,
                format!("D {account} {amount} {fee} {before} {after} {txid:016x}"),
            )
        }
        LedgerCommand::Transfer { from, to, amount } => {
            let a_before = read_balance(tree, root, from)?;
            let fee = fee(now_us, rng, amount);
            if a_before < amount.saturating_add(fee) || amount == 0 {
                return done(1, format!("X! {from} {a_before}"));
            }
            let txid: u64 = rng.gen();
            let b_before = read_balance(tree, root, to)?;
            let a_after = a_before - amount - fee;
            write_balance(tree, root, from, a_after)?;
            if fate == Fate::CrashMidway {
                return crashed();
            }
            let b_after = b_before.saturating_add(amount);
            write_balance(tree, root, to, b_after)?;
            if fee > 0 {
                let house = read_balance(tree, root, 0)?;
                write_balance(tree, root, 0, house.saturating_add(fee))?;
            }
            append_journal(
                tree,
                root,
                txid,
                &format!("{txid:016x} transfer {from} {to} {amount} {fee} {now_us}\n"),
            )?;
            done(
                0,
                format!("X {from} {to} {amount} {fee} {a_before} {a_after} {b_before} {b_after} {txid:016x}"),
            )
        }
        LedgerCommand::Balance { account } => {
            let balance = read_balance(tree, root, account)?;
            done(0, format!("B {account} {balance}"))
        }
        LedgerCommand::Sum => {
            let mut total = 0u64;
            for account in 0..ACCOUNTS {
                total = total.saturating_add(read_balance(tree, root, account)?);
            }
            done(0, format!("S {total}"))
        }
        LedgerCommand::Large { kib } => {
            let txid: u64 = rng.gen();
            tree.mkdir(&format!("{root}/blob"), 0o755)?;
            let path = format!("{root}/blob/{}", txid % 3);
            tree.create_file(&path, 0o644)?;
            let mut data = vec![0u8; (kib * 1024) as usize];
            rng.fill(&mut data[..]);
            tree.write_at(&path, 0, &data)?;
            if fate == Fate::CrashMidway {
                return crashed();
            }
            done(0, format!("L {kib} {txid:016x}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::MemTree;
    use rand::SeedableRng;

    #[test]
    fn commands_round_trip_and_bad_ones_are_refused() {
        let all = [
            LedgerCommand::Deposit {
                account: 1,
                amount: 50,
            },
            LedgerCommand::Transfer {
                from: 1,
                to: 2,
                amount: 5,
            },
            LedgerCommand::Balance { account: 3 },
            LedgerCommand::Sum,
            LedgerCommand::Large { kib: 40 },
        ];
        for c in all {
            assert_eq!(LedgerCommand::decode(&c.encode()), Some(c));
        }
        for bad in [
            "",
            "deposit 9 1",
            "transfer 1 1 5",
            "large 99999",
            "sum 1",
            "\u{0}",
        ] {
            assert_eq!(LedgerCommand::decode(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn money_is_conserved_by_transfers() {
        let mut tree = MemTree::new(1);
        tree.mkdir("live", 0o755).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let run = |tree: &mut MemTree, rng: &mut rand_chacha::ChaCha8Rng, c: LedgerCommand| {
            execute(tree, "live", &c.encode(), 7_000_000, rng, Fate::Normal)
        };
        run(
            &mut tree,
            &mut rng,
            LedgerCommand::Deposit {
                account: 1,
                amount: 100,
            },
        );
        run(
            &mut tree,
            &mut rng,
            LedgerCommand::Transfer {
                from: 1,
                to: 2,
                amount: 30,
            },
        );
        let ExecOutcome::Done { response, .. } = run(&mut tree, &mut rng, LedgerCommand::Sum)
        else {
            panic!("sum answers");
        };
        assert_eq!(&response[..], b"S 100");
    }
}
