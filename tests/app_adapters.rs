//! The application adapters against real processes: answers, exit codes,
//! hangs, crashes, huge outputs, leftover children, restarts, the working
//! directory, the sandbox, and the real accounts application.

use bunker::app::Adapter;
use bunker::replica::ExecOutcome;
use bunker::server::config::{AppConfig, AppMode};
use bunker::server::node::AppRunner;
use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn config(mode: AppMode, command: &[&str], timeout_ms: u64) -> AppConfig {
    AppConfig {
        mode,
        command: command.iter().map(|s| s.to_string()).collect(),
        timeout_ms,
        response_bytes_max: 64 * 1024,
        sandbox: false,
    }
}

fn bunker_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bunker"))
}

struct Harness {
    adapter: Adapter,
    next: u64,
}

impl Harness {
    fn new(cfg: AppConfig) -> Harness {
        Harness {
            adapter: Adapter::with_sandbox_exe(&cfg, Some(bunker_exe())).expect("adapter"),
            next: 0,
        }
    }

    fn run(&mut self, command: &str, dir: &Path) -> ExecOutcome {
        self.next += 1;
        self.adapter
            .start(self.next, Bytes::from(command.to_string()), dir);
        let (id, outcome) = self
            .adapter
            .outcomes()
            .recv_timeout(Duration::from_secs(60))
            .expect("an outcome for every command");
        assert_eq!(id, self.next, "outcomes carry the id of their command");
        outcome
    }
}

fn done(o: &ExecOutcome) -> (u8, String) {
    match o {
        ExecOutcome::Done { status, response } => {
            (*status, String::from_utf8_lossy(response).to_string())
        }
        ExecOutcome::Failed { reason } => panic!("failed: {reason}"),
    }
}

fn failed(o: &ExecOutcome) -> String {
    match o {
        ExecOutcome::Failed { reason } => reason.clone(),
        ExecOutcome::Done { status, response } => panic!("answered {status}: {response:?}"),
    }
}

#[test]
fn exec_mode_answers_and_maps_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::new(config(
        AppMode::Exec,
        &["sh", "-c", "cat; printf ' done'"],
        10_000,
    ));
    assert_eq!(done(&h.run("hello", dir.path())), (0, "hello done".into()));

    let mut h = Harness::new(config(
        AppMode::Exec,
        &["sh", "-c", "echo refused; exit 1"],
        10_000,
    ));
    assert_eq!(done(&h.run("x", dir.path())), (1, "refused\n".into()));

    let mut h = Harness::new(config(
        AppMode::Exec,
        &["sh", "-c", "echo oops >&2; exit 3"],
        10_000,
    ));
    assert_eq!(done(&h.run("x", dir.path())), (3, "oops\n".into()));

    let mut h = Harness::new(config(AppMode::Exec, &["sh", "-c", "pwd"], 10_000));
    let cwd = std::fs::canonicalize(dir.path()).unwrap();
    assert_eq!(
        done(&h.run("x", dir.path())).1.trim(),
        cwd.to_str().unwrap()
    );
}

#[test]
fn exec_mode_failures_have_precise_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::new(config(AppMode::Exec, &["sleep", "30"], 300));
    assert!(failed(&h.run("x", dir.path())).contains("timed out after 300 ms"));

    let mut h = Harness::new(config(
        AppMode::Exec,
        &["sh", "-c", "head -c 200000 /dev/zero"],
        10_000,
    ));
    assert!(failed(&h.run("x", dir.path())).contains("larger than"));

    let mut h = Harness::new(config(AppMode::Exec, &["sh", "-c", "kill -9 $$"], 10_000));
    assert!(failed(&h.run("x", dir.path())).contains("signal 9"));

    let mut h = Harness::new(config(AppMode::Exec, &["/nonexistent/program"], 10_000));
    assert!(failed(&h.run("x", dir.path())).contains("cannot start"));

    let mut h = Harness::new(config(AppMode::Exec, &["sh", "-c", "exit 127"], 10_000));
    assert!(failed(&h.run("x", dir.path())).contains("127"));
}

#[test]
fn exec_mode_leaves_no_child_behind() {
    let dir = tempfile::tempdir().unwrap();
    // The command answers at once but leaves a child that would write to
    // the working copy a moment later, behind Bunker's back.
    let script = "(sleep 1; touch late) > /dev/null 2>&1 & echo answered";
    let mut h = Harness::new(config(AppMode::Exec, &["sh", "-c", script], 10_000));
    assert_eq!(done(&h.run("x", dir.path())).1, "answered\n");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !dir.path().join("late").exists(),
        "a leftover child changed the working copy"
    );
}

const SERVE_SCRIPT: &str = r#"
import os, struct, sys, time
inp, out = sys.stdin.buffer, sys.stdout.buffer
while True:
    h = inp.read(4)
    if len(h) < 4:
        sys.exit(0)
    cmd = inp.read(struct.unpack('<I', h)[0]).decode()
    if cmd == 'crash':
        os._exit(7)
    if cmd == 'hang':
        time.sleep(60)
    if cmd == 'pid':
        body = str(os.getpid())
    elif cmd == 'cwd':
        body = os.getcwd()
    elif cmd == 'huge':
        body = 'x' * 200000
    else:
        body = cmd[::-1]
    data = bytes([0]) + body.encode()
    out.write(struct.pack('<I', len(data)) + data)
    out.flush()
"#;

/// `python3`, or a recorded skip: the serve-mode test application is a
/// python script.
fn python() -> Option<&'static str> {
    testenv::require(testenv::tool("python3", "--version", "python3")).map(|()| "python3")
}

#[test]
fn serve_mode_answers_recovers_from_crash_and_hang_and_restarts() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::new(config(AppMode::Serve, &[py, "-c", SERVE_SCRIPT], 2_000));
    assert_eq!(done(&h.run("abc", dir.path())), (0, "cba".into()));
    let pid = done(&h.run("pid", dir.path())).1;
    assert_eq!(
        done(&h.run("pid", dir.path())).1,
        pid,
        "one process serves every command"
    );

    assert!(failed(&h.run("crash", dir.path())).contains("exited with status 7"));
    assert_eq!(
        done(&h.run("abc", dir.path())),
        (0, "cba".into()),
        "restarted after a crash"
    );

    assert!(failed(&h.run("hang", dir.path())).contains("timed out"));
    assert_eq!(
        done(&h.run("xy", dir.path())),
        (0, "yx".into()),
        "restarted after a hang"
    );

    assert!(failed(&h.run("huge", dir.path())).contains("larger than"));

    let before = done(&h.run("pid", dir.path())).1;
    h.adapter.restart();
    assert_ne!(
        done(&h.run("pid", dir.path())).1,
        before,
        "restart() starts a new process"
    );

    let other = tempfile::tempdir().unwrap();
    let cwd = std::fs::canonicalize(other.path()).unwrap();
    assert_eq!(done(&h.run("cwd", other.path())).1, cwd.to_str().unwrap());
}

#[test]
fn the_accounts_application_works_under_both_adapters() {
    let exe = bunker_exe();
    let exe = exe.to_str().unwrap();
    for mode in [AppMode::Serve, AppMode::Exec] {
        let dir = tempfile::tempdir().unwrap();
        let mode_name = if mode == AppMode::Serve {
            "serve"
        } else {
            "exec"
        };
        let mut h = Harness::new(config(mode, &[exe, "accounts", mode_name], 10_000));
        assert_eq!(done(&h.run("open alice 100", dir.path())).0, 0);
        assert_eq!(done(&h.run("deposit alice 5", dir.path())).0, 0);
        let (status, body) = done(&h.run("balance alice", dir.path()));
        assert_eq!(status, 0);
        assert!(body.contains("\"balance_cents\":105"), "{body}");
        let (status, body) = done(&h.run("withdraw alice 1000", dir.path()));
        assert_eq!(status, 1, "a refusal is an answer: {body}");
    }
}

#[test]
fn the_sandbox_refuses_writes_outside_the_working_copy() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("escaped");
    let script = format!(
        "echo in > inside && echo out > {} ; echo $?",
        target.display()
    );
    let mut cfg = config(AppMode::Exec, &["sh", "-c", &script], 10_000);
    cfg.sandbox = true;
    let mut h = Harness::new(cfg);
    let outcome = h.run("x", dir.path());
    if !bunker::app::sandbox::supported() {
        testenv::skip("this kernel does not enforce Landlock");
        return;
    }
    let (_, body) = done(&outcome);
    assert!(
        dir.path().join("inside").exists(),
        "writes inside the working copy work: {body}"
    );
    assert!(
        !target.exists(),
        "a sandboxed application wrote outside its directory"
    );
}
