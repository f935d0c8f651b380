//! The application's footprint: it writes only inside its data directory, and
//! only while it runs a command.
//!
//! Bunker captures a command's effect by watching the data directory; a
//! change made between commands (a background checkpoint, a lazy write at
//! startup) would be attributed to the wrong command or missed, and a write
//! elsewhere (a temp file) would not be replicated at all. These tests
//! snapshot the directory (every file's name and bytes) around and between
//! commands, run the binary with its home and temp directories pointed at
//! watched empty directories, and, where `strace` is installed, check every
//! file-changing system call the process makes.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

use bunker_accounts::response::Status;
use common::{snapshot, ExecRunner, Runner, Server};

/// How long to watch an idle directory for a change that should not come.
/// (Not a timed assertion: a longer wait can only find more.)
const IDLE_WATCH: Duration = Duration::from_millis(30);

/// A mix of writes, reads, refusals and bad commands.
fn workload() -> Vec<String> {
    let mut commands = vec![
        "open alice 100000".to_owned(),
        "open bob 5".to_owned(),
        "audit".to_owned(),
    ];
    for i in 0..10 {
        commands.push(format!("deposit alice {} ref=d{i}", 10 + i));
        commands.push(format!("transfer alice bob {} ref=t{i}", 100 + i));
        commands.push("balance bob".to_owned());
        commands.push(format!("withdraw bob 1000000 ref=w{i}")); // refused
        commands.push("statement alice 1000".to_owned());
        commands.push(format!("find t{i}"));
        commands.push("deposit nobody 5".to_owned()); // refused
        commands.push("deposit alice 0".to_owned()); // bad command
    }
    commands.push("audit".to_owned());
    commands
}

fn only_the_database(state: &BTreeMap<PathBuf, Vec<u8>>) -> bool {
    state.keys().eq([PathBuf::from("accounts.db")].iter())
}

/// Runs the workload and checks the directory around every command: a
/// command that changes nothing (a read, a refusal, a bad command) leaves
/// every byte as it was; after any command the directory holds only the
/// database (no journal); and nothing changes while the application idles.
fn check_footprint(runner: &mut dyn Runner, dir: &Path, idle_between: bool) {
    for command in workload() {
        let before = snapshot(dir);
        let answer = runner.run(&command);
        let after = snapshot(dir);
        let writes = answer.status == Status::Ok
            && !bunker_accounts::parse(command.as_bytes())
                .expect("valid")
                .is_read_only();
        if !writes {
            assert_eq!(
                after,
                before,
                "{}: {command:?} changed the directory",
                runner.name()
            );
        }
        assert!(
            only_the_database(&after),
            "{}: after {command:?}: {:?}",
            runner.name(),
            after.keys()
        );
        if idle_between {
            thread::sleep(IDLE_WATCH);
            assert_eq!(
                snapshot(dir),
                after,
                "{}: the directory changed after {command:?}",
                runner.name()
            );
        }
    }
}

#[test]
fn serve_changes_nothing_at_startup_or_between_commands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(dir.path());
    // Starting writes nothing: the database is opened by the first command.
    thread::sleep(IDLE_WATCH * 5);
    assert!(snapshot(dir.path()).is_empty(), "serve wrote at startup");
    // A read as the first command creates the database (inside the command).
    assert_eq!(server.run("balance alice").status, Status::Business);
    assert!(only_the_database(&snapshot(dir.path())));
    check_footprint(&mut server, dir.path(), true);
    let last = snapshot(dir.path());
    assert_eq!(server.finish().0, 0);
    assert_eq!(snapshot(dir.path()), last, "exiting writes nothing");
}

#[test]
fn serve_on_an_existing_database_writes_nothing_at_startup() {
    let dir = tempfile::tempdir().expect("tempdir");
    ExecRunner::new(dir.path()).run("open alice 5");
    let before = snapshot(dir.path());
    let mut server = Server::start(dir.path());
    thread::sleep(IDLE_WATCH * 5);
    assert_eq!(snapshot(dir.path()), before);
    assert_eq!(server.run("audit").status, Status::Ok);
    assert_eq!(
        snapshot(dir.path()),
        before,
        "reads write nothing, even the first"
    );
    assert_eq!(server.finish().0, 0);
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn exec_changes_nothing_but_its_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    check_footprint(&mut ExecRunner::new(dir.path()), dir.path(), false);
}

/// A sandbox: `data/` is the working copy; `home/` and `tmp/` are the
/// process's HOME and temp directories; nothing else may appear.
struct Sandbox {
    root: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let root = tempfile::tempdir().expect("tempdir");
        for sub in ["data", "home", "tmp"] {
            std::fs::create_dir(root.path().join(sub)).expect("mkdir");
        }
        Sandbox { root }
    }

    fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// `program` run with cwd = data/ and HOME and the temp directories in
    /// the sandbox; the caller adds the arguments (no --data: the default).
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command
            .current_dir(self.data())
            .env_clear()
            .env("HOME", self.root.path().join("home"))
            .env("TMPDIR", self.root.path().join("tmp"))
            .env("SQLITE_TMPDIR", self.root.path().join("tmp"));
        command
    }

    /// Everything outside data/ is as it was created: two empty directories.
    fn assert_untouched_outside_data(&self) {
        let all = snapshot(self.root.path());
        let outside: Vec<_> = all.keys().filter(|p| !p.starts_with("data")).collect();
        assert_eq!(
            outside,
            [&PathBuf::from("home/"), &PathBuf::from("tmp/")],
            "files appeared outside the data directory"
        );
    }
}

struct SandboxRunner<'a> {
    sandbox: &'a Sandbox,
}

impl Runner for SandboxRunner<'_> {
    fn run(&mut self, command: &str) -> common::Answer {
        use std::io::Write;
        let mut child = self
            .sandbox
            .command(common::BIN)
            .arg("exec")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(command.as_bytes())
            .expect("write");
        common::exec_answer(&child.wait_with_output().expect("wait"))
    }

    fn name(&self) -> &'static str {
        "exec in a sandbox"
    }
}

#[test]
fn nothing_is_written_outside_the_data_directory() {
    let sandbox = Sandbox::new();
    let mut server = Server::start_with(sandbox.command(common::BIN).arg("serve"));
    for command in workload() {
        server.run(&command);
    }
    common::audit_ok(&mut server);
    assert_eq!(server.finish().0, 0);
    let mut exec = SandboxRunner { sandbox: &sandbox };
    for command in workload().iter().skip(2) {
        exec.run(command);
    }
    common::audit_ok(&mut exec);
    assert!(only_the_database(&snapshot(&sandbox.data())));
    sandbox.assert_untouched_outside_data();
}

/// Paths the traced process opened for writing, created, removed or renamed.
fn changed_paths(strace_log: &str, cwd: &Path) -> Vec<(String, PathBuf)> {
    const MUTATING: &[&str] = &[
        "creat",
        "rename",
        "renameat",
        "renameat2",
        "unlink",
        "unlinkat",
        "mkdir",
        "mkdirat",
        "rmdir",
        "truncate",
        "link",
        "linkat",
        "symlink",
        "symlinkat",
    ];
    let mut out = Vec::new();
    for line in strace_log.lines() {
        // "<pid> name(args) = result", pid present because of -f.
        let call = line
            .split_once(' ')
            .map_or(line, |(_, rest)| rest)
            .trim_start();
        let Some((name, args)) = call.split_once('(') else {
            continue;
        };
        let opens = matches!(name, "open" | "openat" | "openat2");
        let writes = opens
            && ["O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC"]
                .iter()
                .any(|f| args.contains(f));
        if !(writes || MUTATING.contains(&name)) {
            continue;
        }
        // Every quoted argument is a path for these calls.
        for (i, part) in args.split('"').enumerate() {
            if i % 2 == 1 {
                let path = Path::new(part);
                let absolute = if path.is_absolute() {
                    path.to_owned()
                } else {
                    cwd.join(path)
                };
                out.push((name.to_owned(), absolute));
            }
        }
    }
    out
}

#[test]
fn strace_sees_no_write_outside_the_data_directory() {
    let strace = ["/usr/bin/strace", "/bin/strace"]
        .into_iter()
        .find(|p| testenv::tool(p, "-V", "strace").is_ok())
        .ok_or(
            "strace does not run here (apt-get install strace); the sandbox test still checks the footprint",
        );
    let Some(strace) = testenv::require(strace) else {
        return;
    };
    let sandbox = Sandbox::new();
    let log = sandbox.root.path().join("tmp/strace.log");
    let mut traced = sandbox.command(strace);
    traced
        .args(["-f", "-qq", "-e", "trace=%file", "-o"])
        .arg(&log)
        .args([common::BIN, "serve"]);
    let mut server = Server::start_with(&mut traced);
    for command in workload() {
        server.run(&command);
    }
    common::audit_ok(&mut server);
    assert_eq!(server.finish().0, 0);
    let text = std::fs::read_to_string(&log).expect("strace log");
    let data = sandbox.data().canonicalize().expect("canonical");
    let changed = changed_paths(&text, &data);
    assert!(
        changed
            .iter()
            .any(|(_, p)| p.ends_with("accounts.db-journal")),
        "the trace shows the journal's lifecycle (else the parser is broken):\n{text}"
    );
    let outside: Vec<_> = changed
        .iter()
        .filter(|(_, p)| !p.starts_with(&data) && !p.starts_with(sandbox.data()))
        .collect();
    assert!(
        outside.is_empty(),
        "writes outside the data directory: {outside:?}"
    );
}

#[test]
fn the_strace_parser_catches_what_it_claims_to() {
    let log = r#"12 openat(AT_FDCWD, "/etc/ld.so.cache", O_RDONLY|O_CLOEXEC) = 3
12 openat(AT_FDCWD, "/var/tmp/etilqs_123", O_RDWR|O_CREAT|O_EXCL, 0600) = 4
12 unlink("/var/tmp/etilqs_123") = 0
12 openat(AT_FDCWD, "rel.db", O_RDWR|O_CREAT|O_CLOEXEC, 0644) = 5
12 rename("/d/a", "/e/b") = 0
"#;
    let changed = changed_paths(log, Path::new("/d"));
    let paths: Vec<_> = changed
        .iter()
        .map(|(_, p)| p.display().to_string())
        .collect();
    assert_eq!(
        paths,
        [
            "/var/tmp/etilqs_123",
            "/var/tmp/etilqs_123",
            "/d/rel.db",
            "/d/a",
            "/e/b"
        ]
    );
}
