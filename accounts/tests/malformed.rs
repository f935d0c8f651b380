//! Bad input through the real binary: malformed commands in both modes and
//! malformed frames in `serve`. Bad input gets a clear error, never a panic,
//! and never changes the database.

mod common;

use bunker_accounts::command::COMMAND_BYTES_MAX;
use bunker_accounts::frame::COMMAND_FRAME_BYTES_MAX;
use bunker_accounts::response::{ErrorCode, Response, Status};
use common::{exec_raw, snapshot, ExecRunner, Runner, Server};

/// Inputs that are not commands, and a word the error message must contain.
const BAD_COMMANDS: &[(&[u8], &str)] = &[
    (b"", "empty"),
    (b"\n", "empty"),
    (b"fly me to the moon", "unknown command"),
    (b"deposit alice", "usage"),
    (b"deposit alice -5", "digits only"),
    (b"deposit alice 5.00", "digits only"),
    (b"deposit alice 0", "at least 1"),
    (b"deposit Alice 5", "lowercase"),
    (b"deposit alice 99999999999999999999", "above the limit"),
    (b"deposit alice 5 ref=a b", "last argument"),
    (b"transfer alice alice 5", "itself"),
    (b"statement alice 5000", "limit"),
    (b"audit\naudit\n", "line break"),
    (b"balance \xc3\x28", "UTF-8"),
    (b"balance al\x07ice", "control"),
];

#[test]
fn exec_rejects_bad_commands_with_exit_2_and_a_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    ExecRunner::new(dir.path()).run("open alice 10");
    let before = snapshot(dir.path());
    for (input, expected) in BAD_COMMANDS {
        let output = exec_raw(dir.path(), input);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{input:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{input:?}: nothing on stdout");
        assert!(
            stderr.contains(expected),
            "{input:?}: {stderr:?} lacks {expected:?}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let oversized = vec![b'a'; COMMAND_BYTES_MAX * 4];
    let output = exec_raw(dir.path(), &oversized);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("longer than"));
    assert_eq!(snapshot(dir.path()), before, "bad input changes nothing");
}

#[test]
fn exec_reports_an_unusable_data_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing");
    let output = exec_raw(&missing, b"audit");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("data directory"));
    assert!(!missing.exists(), "the data directory is not created");

    std::fs::write(
        dir.path().join("accounts.db"),
        b"this is not a database, it is a poem",
    )
    .expect("write");
    let output = exec_raw(dir.path(), b"audit");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not a database"), "{stderr}");
}

#[test]
fn exec_refuses_some_other_programs_sqlite_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conn = rusqlite_free_foreign_db(dir.path());
    let output = exec_raw(dir.path(), b"audit");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("not a bunker-accounts database"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("accounts.db")).expect("read"),
        conn,
        "left alone"
    );
}

/// A valid SQLite file made by "someone else": a bunker-accounts database
/// whose header's application_id was changed (offset 68, big-endian).
fn rusqlite_free_foreign_db(dir: &std::path::Path) -> Vec<u8> {
    ExecRunner::new(dir).run("audit");
    let path = dir.join("accounts.db");
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[68..72].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    std::fs::write(&path, &bytes).expect("write");
    bytes
}

#[test]
fn serve_answers_bad_commands_with_status_2_and_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(dir.path());
    server.run("open alice 10");
    let before = snapshot(dir.path());
    for (input, expected) in BAD_COMMANDS {
        server.send_frame(input);
        let answer = server.receive().expect("an answer for every frame");
        assert_eq!(answer.status, Status::BadCommand, "{input:?}");
        match answer.response {
            Response::Err(rejection) => {
                assert_eq!(rejection.error, ErrorCode::BadCommand);
                assert!(
                    rejection.message.contains(expected),
                    "{input:?}: {}",
                    rejection.message
                );
            }
            other => panic!("{input:?}: {other:?}"),
        }
    }
    // A frame within the frame limit but over the command limit.
    server.send_frame(&vec![b'a'; COMMAND_BYTES_MAX + 1]);
    assert_eq!(server.receive().expect("answer").status, Status::BadCommand);
    // Still serving, and nothing changed.
    assert_eq!(server.run("balance alice").status, Status::Ok);
    assert_eq!(snapshot(dir.path()), before);
    let (code, stderr) = server.finish();
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn serve_answers_then_stops_on_an_oversized_frame() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(dir.path());
    server.run("open alice 10");
    server.send_bytes(&(COMMAND_FRAME_BYTES_MAX + 1).to_le_bytes());
    let answer = server.receive().expect("the oversized frame is answered");
    assert_eq!(answer.status, Status::BadCommand);
    assert!(format!("{:?}", answer.response).contains("limit"));
    assert!(
        server.receive().is_none(),
        "then the server closes its output"
    );
    let output = server.child.wait_with_output().expect("wait");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("longer than"));
}

#[test]
fn serve_exits_2_on_a_truncated_frame() {
    for cut in [1usize, 3, 4, 7] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut server = Server::start(dir.path());
        let mut frame = 9u32.to_le_bytes().to_vec();
        frame.extend_from_slice(b"balance a");
        server.send_bytes(&frame[..cut]);
        drop(server.stdin.take());
        assert!(server.receive().is_none(), "no answer to half a frame");
        let output = server.child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "cut {cut}: {stderr}");
        assert!(stderr.contains("ended inside a frame"), "{stderr}");
        assert!(snapshot(dir.path()).is_empty(), "nothing was created");
    }
}

#[test]
fn serve_with_no_input_exits_0_and_creates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let (code, stderr) = server.finish();
    assert_eq!(code, 0, "{stderr}");
    assert!(snapshot(dir.path()).is_empty());
}

#[test]
fn serve_answers_internal_and_exits_when_the_database_is_unusable() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("accounts.db"), vec![0x5a; 8192]).expect("write");
    let mut server = Server::start(dir.path());
    server.send_frame(b"audit");
    let answer = server.receive().expect("answered");
    assert_eq!(answer.status, Status::BadCommand);
    match answer.response {
        Response::Err(rejection) => {
            assert_eq!(rejection.error, ErrorCode::Internal);
            assert!(
                rejection.message.contains("not a database"),
                "{}",
                rejection.message
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(server.receive().is_none());
    assert_eq!(server.child.wait().expect("wait").code(), Some(2));
}

#[test]
fn help_explains_the_modes() {
    let output = std::process::Command::new(common::BIN)
        .arg("--help")
        .output()
        .expect("run");
    let help = String::from_utf8_lossy(&output.stdout);
    for word in ["exec", "serve", "transfer", "audit", "find"] {
        assert!(help.contains(word), "--help mentions {word}: {help}");
    }
    let output = std::process::Command::new(common::BIN)
        .args(["exec", "--sync", "sometimes"])
        .output()
        .expect("run");
    assert_eq!(
        output.status.code(),
        Some(2),
        "clap rejects bad flags with 2"
    );
}
