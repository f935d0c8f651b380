//! Test helpers shared by the end-to-end tests: run the built binary in both
//! modes, a pinned environment for in-process runs, directory snapshots.

#![allow(dead_code)] // Each test file uses a different part of this module.

use std::collections::BTreeMap;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};

use bunker_accounts::frame::{self, RESPONSE_FRAME_BYTES_MAX};
use bunker_accounts::response::{ErrorCode, Response, Status};
use bunker_accounts::store::{Environment, StoreError};

pub const BIN: &str = env!("CARGO_BIN_EXE_bunker-accounts");

/// One answer: the status (exit code in `exec` mode) and the decoded JSON.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: Status,
    pub response: Response,
}

/// Something that runs commands: `exec` or `serve`, through the real binary.
pub trait Runner {
    fn run(&mut self, command: &str) -> Answer;
    fn name(&self) -> &'static str;
}

/// Runs `bunker-accounts exec --data DIR` once per command.
pub struct ExecRunner {
    pub data_dir: PathBuf,
}

impl ExecRunner {
    pub fn new(data_dir: &Path) -> ExecRunner {
        ExecRunner {
            data_dir: data_dir.to_owned(),
        }
    }
}

/// Runs `exec` with raw stdin bytes; returns the whole process output.
pub fn exec_raw(data_dir: &Path, stdin: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .args(["exec", "--data"])
        .arg(data_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bunker-accounts exec");
    let mut input = child.stdin.take().expect("stdin");
    // The binary may stop reading early (oversized input): ignore EPIPE.
    let _ = input.write_all(stdin);
    drop(input);
    child.wait_with_output().expect("wait for exec")
}

impl Runner for ExecRunner {
    fn run(&mut self, command: &str) -> Answer {
        exec_answer(&exec_raw(&self.data_dir, command.as_bytes()))
    }

    fn name(&self) -> &'static str {
        "exec"
    }
}

/// Reads an `exec` run's answer: exit 0 or 1 with one JSON response on
/// stdout, or exit 2 with a message on stderr (shown as a `bad_command`
/// rejection carrying that message).
pub fn exec_answer(output: &Output) -> Answer {
    let code = output.status.code().expect("exec exits, it is not killed");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let status = match code {
        0 => Status::Ok,
        1 => Status::Business,
        2 => {
            assert!(output.stdout.is_empty(), "exit 2 prints nothing on stdout");
            assert!(!stderr.is_empty(), "exit 2 explains itself on stderr");
            return Answer {
                status: Status::BadCommand,
                response: Response::rejected(ErrorCode::BadCommand, stderr),
            };
        }
        other => panic!("exec exited {other}: {stderr}"),
    };
    let stdout = &output.stdout;
    assert_eq!(
        stdout.last(),
        Some(&b'\n'),
        "exec ends its JSON with a newline"
    );
    let response = Response::from_json(stdout).expect("exec prints one JSON response");
    assert_eq!(response.status(), status, "exit code matches the response");
    Answer { status, response }
}

/// A running `bunker-accounts serve`.
pub struct Server {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub stdout: BufReader<ChildStdout>,
}

impl Server {
    pub fn start(data_dir: &Path) -> Server {
        Server::start_with(Command::new(BIN).args(["serve", "--data"]).arg(data_dir))
    }

    pub fn start_with(command: &mut Command) -> Server {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn bunker-accounts serve");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Server {
            child,
            stdin,
            stdout,
        }
    }

    pub fn send_frame(&mut self, payload: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        frame::write_frame(stdin, payload).expect("write frame");
        stdin.flush().expect("flush");
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(bytes).expect("write bytes");
        stdin.flush().expect("flush");
    }

    /// Reads one response frame; `None` if the server closed stdout.
    pub fn receive(&mut self) -> Option<Answer> {
        let payload = frame::read_frame(&mut self.stdout, RESPONSE_FRAME_BYTES_MAX)
            .expect("response frame")?;
        let (status, body) = frame::decode_response(&payload).expect("status byte");
        let response = Response::from_json(body).expect("JSON response");
        assert_eq!(
            response.status(),
            status,
            "status byte matches the response"
        );
        Some(Answer { status, response })
    }

    /// Closes stdin and waits; returns the exit code and stderr.
    pub fn finish(mut self) -> (i32, String) {
        drop(self.stdin.take());
        let mut rest = Vec::new();
        self.stdout.read_to_end(&mut rest).expect("drain stdout");
        assert!(
            rest.is_empty(),
            "no output after the last response: {rest:?}"
        );
        let output = self.child.wait_with_output().expect("wait");
        (
            output.status.code().expect("exits, not killed"),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// kill -9, then reap.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

impl Runner for Server {
    fn run(&mut self, command: &str) -> Answer {
        self.send_frame(command.as_bytes());
        self.receive().expect("serve answers every frame")
    }

    fn name(&self) -> &'static str {
        "serve"
    }
}

/// Every file under `dir` (relative path -> bytes), for before/after checks.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let path = entry.expect("entry").path();
            let relative = path.strip_prefix(dir).expect("under dir").to_owned();
            if path.is_dir() {
                out.insert(relative.join(""), Vec::new());
                stack.push(path);
            } else {
                out.insert(relative, std::fs::read(&path).expect("read file"));
            }
        }
    }
    out
}

/// A pinned clock and counter-based ids, for in-process runs.
pub struct FixedEnv {
    pub now_unix_us: i64,
    pub next_id: u128,
}

impl FixedEnv {
    pub fn new(now_unix_us: i64) -> FixedEnv {
        FixedEnv {
            now_unix_us,
            next_id: 1,
        }
    }
}

impl Environment for FixedEnv {
    fn now_unix_us(&mut self) -> i64 {
        self.now_unix_us
    }

    fn random_id(&mut self) -> Result<[u8; 16], StoreError> {
        let id = self.next_id;
        self.next_id += 1;
        Ok(id.to_be_bytes())
    }
}

/// Audit through a runner, asserting the books are sound.
pub fn audit_ok(runner: &mut dyn Runner) -> bunker_accounts::response::Audit {
    match runner.run("audit").response {
        Response::Ok(bunker_accounts::Outcome::Audit(audit)) => {
            assert!(
                audit.conserved,
                "{}: money not conserved: {audit:?}",
                runner.name()
            );
            assert!(
                audit.ledger_consistent,
                "{}: ledger inconsistent: {audit:?}",
                runner.name()
            );
            assert_eq!(audit.integrity, "ok", "{}: SQLite integrity", runner.name());
            audit
        }
        other => panic!("audit failed: {other:?}"),
    }
}
