//! Every command end to end, through the real binary, in both modes: the same
//! scenario runs once through `exec` (one process per command) and once
//! through `serve` (framed commands over a pipe), and must give the same
//! answers (up to the honestly non-deterministic parts: ids, times, fees).

mod common;

use bunker_accounts::fee;
use bunker_accounts::response::{
    EntryKind, ErrorCode, Outcome, Rejection, Response, Status, TxnKind,
};
use common::{audit_ok, ExecRunner, Runner, Server};

fn ok(runner: &mut dyn Runner, command: &str) -> Outcome {
    let answer = runner.run(command);
    assert_eq!(
        answer.status,
        Status::Ok,
        "{} {command:?}: {:?}",
        runner.name(),
        answer.response
    );
    match answer.response {
        Response::Ok(outcome) => outcome,
        Response::Err(e) => panic!("{command:?}: {e:?}"),
    }
}

fn refused(runner: &mut dyn Runner, command: &str, code: ErrorCode) -> Rejection {
    let answer = runner.run(command);
    assert_eq!(
        answer.status,
        Status::Business,
        "{} {command:?}",
        runner.name()
    );
    match answer.response {
        Response::Err(rejection) => {
            assert_eq!(rejection.error, code, "{command:?}: {}", rejection.message);
            assert!(!rejection.message.is_empty());
            rejection
        }
        Response::Ok(o) => panic!("{command:?} should be refused, got {o:?}"),
    }
}

fn balance(runner: &mut dyn Runner, account: &str) -> i64 {
    match ok(runner, &format!("balance {account}")) {
        Outcome::Balance { balance_cents, .. } => balance_cents,
        other => panic!("{other:?}"),
    }
}

fn scenario(runner: &mut dyn Runner) {
    // open, with and without an opening balance; the house exists already.
    match ok(runner, "open alice 100000") {
        Outcome::Open {
            account,
            balance_cents,
            txn,
        } => {
            assert_eq!((account.as_str(), balance_cents), ("alice", 100_000));
            assert_eq!(
                (txn.kind, txn.cents, txn.to.as_deref()),
                (TxnKind::Open, 100_000, Some("alice"))
            );
            assert_eq!(txn.id.len(), 32);
            assert!(txn.id.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        other => panic!("{other:?}"),
    }
    ok(runner, "open bob");
    assert_eq!(balance(runner, "bob"), 0);
    assert_eq!(balance(runner, "house"), 0);
    refused(runner, "open alice 5", ErrorCode::AccountExists);
    refused(runner, "open house", ErrorCode::AccountExists);

    // deposit and withdraw.
    match ok(runner, "deposit bob 5000 ref=dep-1") {
        Outcome::Deposit {
            balance_cents, txn, ..
        } => {
            assert_eq!(balance_cents, 5000);
            assert_eq!(txn.reference.as_deref(), Some("dep-1"));
        }
        other => panic!("{other:?}"),
    }
    match ok(runner, "withdraw bob 1200 ref=wd-1") {
        Outcome::Withdraw {
            balance_cents, txn, ..
        } => {
            assert_eq!(balance_cents, 3800);
            assert_eq!(
                (txn.kind, txn.from.as_deref()),
                (TxnKind::Withdraw, Some("bob"))
            );
        }
        other => panic!("{other:?}"),
    }
    refused(runner, "withdraw bob 3801", ErrorCode::InsufficientFunds);
    refused(runner, "withdraw carol 1", ErrorCode::UnknownAccount);
    refused(runner, "deposit carol 1", ErrorCode::UnknownAccount);
    refused(
        runner,
        "deposit bob 9007199254740991",
        ErrorCode::LimitExceeded,
    );

    // transfer: the fee follows the published rule at the recorded instant.
    let (fee_cents, at) = match ok(runner, "transfer alice bob 10000 ref=tr-1") {
        Outcome::Transfer {
            from_balance_cents,
            to_balance_cents,
            fee,
            txn,
        } => {
            let expected = fee::quote(10_000, txn.at_unix_us);
            assert_eq!(fee, expected, "fee rule at {}", txn.at_unix_us);
            assert_eq!(txn.fee_cents, fee.cents);
            assert_eq!(from_balance_cents, 100_000 - 10_000 - fee.cents);
            assert_eq!(to_balance_cents, 3800 + 10_000);
            (fee.cents, txn.at_unix_us)
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(balance(runner, "house"), fee_cents);
    refused(runner, "transfer alice carol 1", ErrorCode::UnknownAccount);
    refused(runner, "transfer carol alice 1", ErrorCode::UnknownAccount);
    refused(
        runner,
        "transfer bob alice 13801",
        ErrorCode::InsufficientFunds,
    );
    // Transfers that involve the house carry no fee.
    if fee_cents > 0 {
        match ok(runner, &format!("transfer house alice {fee_cents}")) {
            Outcome::Transfer { fee, .. } => assert_eq!(fee.cents, 0),
            other => panic!("{other:?}"),
        }
        assert_eq!(balance(runner, "house"), 0);
    }

    // statement: newest first, with the right kinds and running balances.
    match ok(runner, "statement bob") {
        Outcome::Statement {
            balance_cents,
            entries,
            ..
        } => {
            assert_eq!(balance_cents, 13_800);
            let kinds: Vec<EntryKind> = entries.iter().map(|e| e.kind).collect();
            assert_eq!(
                kinds,
                [
                    EntryKind::TransferIn,
                    EntryKind::Withdraw,
                    EntryKind::Deposit,
                    EntryKind::Open
                ]
            );
            assert_eq!(entries[0].counterparty.as_deref(), Some("alice"));
            assert_eq!(entries[0].balance_after_cents, 13_800);
            assert_eq!(entries[1].delta_cents, -1200);
            assert!(entries.windows(2).all(|w| w[0].seq > w[1].seq));
        }
        other => panic!("{other:?}"),
    }
    match ok(runner, "statement bob 2") {
        Outcome::Statement { entries, .. } => assert_eq!(entries.len(), 2),
        other => panic!("{other:?}"),
    }
    refused(runner, "statement carol", ErrorCode::UnknownAccount);
    refused(runner, "balance carol", ErrorCode::UnknownAccount);

    // find: exactly the transactions that carry the reference.
    match ok(runner, "find tr-1") {
        Outcome::Find {
            count,
            txns,
            reference,
        } => {
            assert_eq!((reference.as_str(), count, txns.len()), ("tr-1", 1, 1));
            assert_eq!((txns[0].kind, txns[0].at_unix_us), (TxnKind::Transfer, at));
        }
        other => panic!("{other:?}"),
    }
    match ok(runner, "find never-used") {
        Outcome::Find { count, txns, .. } => assert_eq!((count, txns.len()), (0, 0)),
        other => panic!("{other:?}"),
    }
    // The application does not deduplicate: that is Bunker's job, and a
    // checker must be able to see a duplicate.
    ok(runner, "deposit bob 1 ref=dup");
    ok(runner, "deposit bob 1 ref=dup");
    match ok(runner, "find dup") {
        Outcome::Find { count, .. } => assert_eq!(count, 2),
        other => panic!("{other:?}"),
    }

    // audit: money in minus money out equals the money held.
    let audit = audit_ok(runner);
    assert_eq!(audit.accounts, 3);
    assert_eq!(audit.minted_cents, 100_000 + 5000 + 2);
    assert_eq!(audit.burned_cents, 1200);
    assert_eq!(audit.total_cents, audit.minted_cents - audit.burned_cents);
    let transfers_with_fee = if fee_cents > 0 { 2 } else { 1 };
    assert_eq!(audit.transactions, 2 + 2 + transfers_with_fee + 2);
    assert_eq!(audit.checksum.len(), 16);
    // A read changes nothing, so the checksum is stable.
    assert_eq!(audit_ok(runner).checksum, audit.checksum);
}

#[test]
fn every_command_through_exec() {
    let dir = tempfile::tempdir().expect("tempdir");
    scenario(&mut ExecRunner::new(dir.path()));
}

#[test]
fn every_command_through_serve() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(dir.path());
    scenario(&mut server);
    let (code, stderr) = server.finish();
    assert_eq!(code, 0, "EOF on stdin means exit 0; stderr: {stderr}");
}

#[test]
fn both_modes_share_one_database() {
    // A directory written by serve is read by exec and the other way round
    // (Bunker may switch an application between restarts).
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(dir.path());
    ok(&mut server, "open alice 10");
    assert_eq!(server.finish().0, 0);
    let mut exec = ExecRunner::new(dir.path());
    ok(&mut exec, "deposit alice 5");
    let mut server = Server::start(dir.path());
    assert_eq!(balance(&mut server, "alice"), 15);
    audit_ok(&mut server);
    assert_eq!(server.finish().0, 0);
}

#[test]
fn cwd_is_the_default_data_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = std::process::Command::new(common::BIN)
        .arg("exec")
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run");
    // Empty stdin: a bad command, and nothing created.
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("empty"));
    assert!(common::snapshot(dir.path()).is_empty());
    let mut child = std::process::Command::new(common::BIN)
        .arg("exec")
        .current_dir(dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"open zoe 1\n")
        .expect("write");
    let output = child.wait_with_output().expect("wait");
    assert_eq!(output.status.code(), Some(0));
    assert!(dir.path().join("accounts.db").is_file());
}
