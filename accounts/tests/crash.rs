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
use std::path::Path;
use std::process::Stdio;
use std::thread;

use bunker_accounts::frame;
use bunker_accounts::response::{Outcome, Response, Status};
use common::{audit_ok, snapshot, ExecRunner, Runner, Server};

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
    // Some early rounds fsync on commit: commits then take far longer, so
    // more kills land inside one (and leave a hot journal to roll back).
    // Only early ones: fsync makes a round slow.
    let sync = if round % 2 == 1 && answers_before_kill < 30 {
        "full"
    } else {
        "off"
    };
    let mut server = Server::start_with(
        std::process::Command::new(common::BIN)
            .args(["serve", "--sync", sync, "--data"])
            .arg(dir),
    );
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

/// Runs `exec` under strace, killed (SIGKILL) when it enters the `nth` call
/// of `syscall`. Returns whether it was killed (false: it ran to the end).
fn exec_killed_at(strace: &str, dir: &Path, stdin: &str, syscall: &str, nth: usize) -> bool {
    let mut child = std::process::Command::new(strace)
        .args(["-f", "-qq", "-o", "/dev/null", "-e"])
        .arg(format!("trace={syscall}"))
        .arg("-e")
        .arg(format!("inject={syscall}:signal=KILL:when={nth}"))
        .args([common::BIN, "exec", "--data"])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn strace");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write");
    let output = child.wait_with_output().expect("wait");
    // strace ends the way its tracee did: killed by SIGKILL, or exit 0.
    use std::os::unix::process::ExitStatusExt;
    match (output.status.code(), output.status.signal()) {
        (Some(0), _) => false,
        (None, Some(9)) => true,
        other => panic!(
            "strace run ended with {other:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// The strace executable, or why there is none.
fn strace_path() -> Result<&'static str, String> {
    ["/usr/bin/strace", "/bin/strace"]
        .into_iter()
        .find(|p| testenv::tool(p, "-V", "strace").is_ok())
        .ok_or_else(|| {
            "strace does not run here (apt-get install strace); the random-kill tests still run"
                .to_string()
        })
}

/// Deterministic crash points: kill `exec` at every write SQLite makes while
/// committing one deposit (journal writes, then database page writes), at
/// the journal's deletion (the commit point), and at the response write
/// (after the commit). Every time, the next open recovers a sound database in
/// which the deposit is all there or not there at all, and it is there
/// whenever the kill came after the commit point.
#[test]
fn kill_at_every_write_of_a_commit() {
    let Some(strace) = testenv::require(strace_path()) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut exec = ExecRunner::new(dir.path());
    assert_eq!(exec.run("open alice 1000").status, Status::Ok);
    let mut total = 1000;
    let mut hot_journals = 0;
    let mut nth = 1;
    loop {
        let reference = format!("p{nth}");
        let killed = exec_killed_at(
            strace,
            dir.path(),
            &format!("deposit alice 5 ref={reference}"),
            "pwrite64",
            nth,
        );
        if dir.path().join("accounts.db-journal").exists() {
            hot_journals += 1;
        }
        let audit = audit_ok(&mut exec);
        let present = find_count(&mut exec, &reference);
        assert!(present <= 1);
        if !killed {
            assert_eq!(present, 1, "a deposit that ran to the end is there");
        }
        total += 5 * present as i64;
        assert_eq!(
            audit.total_cents, total,
            "kill at write {nth}: all or nothing"
        );
        if !killed {
            break;
        }
        nth += 1;
        assert!(nth < 1000, "a deposit makes a bounded number of writes");
    }
    eprintln!(
        "a deposit's commit makes {} writes; {hot_journals} kills left a journal file",
        nth - 1
    );
    assert!(nth > 10, "a commit takes several writes; saw {nth}");
    assert!(
        hot_journals > 0,
        "some kills left a hot journal to roll back"
    );

    // Killed at the journal's deletion: not committed yet, so rolled back.
    assert!(exec_killed_at(
        strace,
        dir.path(),
        "deposit alice 5 ref=at-unlink",
        "unlink",
        1
    ));
    assert_eq!(audit_ok(&mut exec).total_cents, total);
    assert_eq!(find_count(&mut exec, "at-unlink"), 0);
    // Killed as it writes the response: committed before the response.
    assert!(exec_killed_at(
        strace,
        dir.path(),
        "deposit alice 5 ref=at-reply",
        "write",
        1
    ));
    total += 5;
    assert_eq!(audit_ok(&mut exec).total_cents, total);
    assert_eq!(find_count(&mut exec, "at-reply"), 1);
    assert_eq!(exec.run("deposit alice 1").status, Status::Ok);
    let files: Vec<_> = snapshot(dir.path()).into_keys().collect();
    assert_eq!(files, [std::path::PathBuf::from("accounts.db")]);
}
