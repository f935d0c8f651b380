//! kill -9 of `serve` mid-stream, then a restart on the same directory.
//!
//! Bunker kills and restarts the application on rollback and promotion, at
//! any instant. After a kill the database must open cleanly, pass SQLite's
//! check and the audit, contain every command that was answered, and contain
//! a *prefix* of the commands that were sent: commands run one at a time, so
//! the only one that may be half done is the last, and SQLite's rollback
//! journal makes that one all or nothing.

mod common;

use std::io::Write;
use std::thread;

use bunker_accounts::frame;
use bunker_accounts::response::{Outcome, Response, Status};
use common::{audit_ok, snapshot, Runner, Server};

/// Commands per round, all sent at once (pipelined) so that the server is
/// busy when the kill lands.
const COMMANDS_PER_ROUND: usize = 300;

/// The i-th command of a round: every one succeeds (alice is rich, bob gets
/// more than he withdraws) and leaves a transaction with a unique reference.
fn command(round: usize, i: usize) -> String {
    match i % 3 {
        0 => format!("deposit alice 100 ref=c{round}-{i}"),
        1 => format!("transfer alice bob 50 ref=c{round}-{i}"),
        _ => format!("withdraw bob 10 ref=c{round}-{i}"),
    }
}

fn find_count(runner: &mut dyn Runner, reference: &str) -> u64 {
    match runner.run(&format!("find {reference}")).response {
        Response::Ok(Outcome::Find { count, .. }) => count,
        other => panic!("find {reference}: {other:?}"),
    }
}

/// Runs one round: sends every command, reads `answers_before_kill`
/// answers, kills the server. Returns how many answers it read.
fn round_with_kill(dir: &std::path::Path, round: usize, answers_before_kill: usize) -> usize {
    let mut server = Server::start(dir);
    let mut stdin = server.stdin.take().expect("stdin");
    let writer = thread::spawn(move || {
        let mut stream = Vec::new();
        for i in 0..COMMANDS_PER_ROUND {
            frame::write_frame(&mut stream, command(round, i).as_bytes()).expect("in memory");
        }
        // The server dies mid-stream: a broken pipe here is expected.
        let _ = stdin.write_all(&stream).and_then(|()| stdin.flush());
    });
    let mut answered = 0;
    while answered < answers_before_kill {
        let answer = server.receive().expect("an answer before the kill");
        assert_eq!(answer.status, Status::Ok, "{:?}", answer.response);
        answered += 1;
    }
    server.kill();
    writer.join().expect("writer thread");
    // For the log: whether this kill landed inside a commit (it left a hot
    // journal that the next open must roll back).
    let journal = dir.join("accounts.db-journal");
    eprintln!(
        "round {round}: killed after {answered} answers; hot journal left: {}",
        journal.exists()
    );
    answered
}

#[test]
fn kill_9_mid_stream_then_restart_keeps_the_database_intact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut setup = Server::start(dir.path());
    assert_eq!(setup.run("open alice 100000000").status, Status::Ok);
    assert_eq!(setup.run("open bob").status, Status::Ok);
    assert_eq!(setup.finish().0, 0);

    // Kill after different numbers of answers, including none at all (the
    // kill then lands while the first commands run, or before).
    let kill_points = [
        0usize, 1, 2, 3, 5, 8, 13, 17, 21, 34, 55, 64, 89, 144, 150, 233, 299,
    ];
    let mut transactions_before = 2u64;
    for (round, &kill_after) in kill_points.iter().enumerate() {
        let answered = round_with_kill(dir.path(), round, kill_after);
        assert_eq!(answered, kill_after);

        // Restart on the same directory.
        let mut server = Server::start(dir.path());
        let audit = audit_ok(&mut server);
        // Which commands of this round ran? They must form a prefix that
        // contains every answered one.
        let ran: Vec<u64> = (0..COMMANDS_PER_ROUND)
            .map(|i| find_count(&mut server, &format!("c{round}-{i}")))
            .collect();
        let executed = ran.iter().take_while(|&&c| c == 1).count();
        assert!(
            ran.iter().all(|&c| c <= 1),
            "round {round}: a command ran twice: {ran:?}"
        );
        assert!(
            ran[executed..].iter().all(|&c| c == 0),
            "round {round}: executed commands are not a prefix: {ran:?}"
        );
        assert!(
            executed >= answered,
            "round {round}: answered {answered}, only {executed} in the database"
        );
        assert_eq!(audit.transactions, transactions_before + executed as u64);
        transactions_before = audit.transactions;

        // The database goes on working, and the directory is back to one file
        // (a hot journal left by the kill was rolled back and removed).
        assert_eq!(server.run("deposit alice 1 ref=after").status, Status::Ok);
        transactions_before += 1;
        audit_ok(&mut server);
        assert_eq!(server.finish().0, 0);
        let files: Vec<_> = snapshot(dir.path()).into_keys().collect();
        assert_eq!(
            files,
            [std::path::PathBuf::from("accounts.db")],
            "round {round}"
        );
    }
}

#[test]
fn kill_9_between_commands_loses_nothing_answered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(dir.path());
    server.run("open alice 10");
    for i in 0..20 {
        assert_eq!(
            server.run(&format!("deposit alice 1 ref=k{i}")).status,
            Status::Ok
        );
    }
    server.kill();
    let mut server = Server::start(dir.path());
    let audit = audit_ok(&mut server);
    assert_eq!(audit.total_cents, 30);
    for i in 0..20 {
        assert_eq!(find_count(&mut server, &format!("k{i}")), 1);
    }
    assert_eq!(server.finish().0, 0);
}
