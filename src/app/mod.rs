//! Application adapters: how the leader runs the application on its working
//! copy, one command at a time.
//!
//! - `exec` mode: the program runs once per command, in the working copy,
//!   with the command on stdin; its stdout is the response and its exit
//!   status (0 to 125) the status.
//! - `serve` mode: one long-running program, started lazily in the working
//!   copy, takes framed commands on stdin and answers framed responses on
//!   stdout (u32 little-endian length, then the payload; a response payload
//!   is a status byte and the body). It is restarted on `restart()`
//!   (rollback, promotion, snapshot install: the files changed under it),
//!   after any failure, and when the working directory changes.
//!
//! What it does: runs every command on one dedicated worker thread (the
//! event loop never waits for the application), enforces the timeout by
//! killing the application's whole process group, bounds the response and
//! the captured stderr, and turns every misbehaviour into
//! `ExecOutcome::Failed` with a precise reason. The outcome table is in
//! `docs/APPLICATIONS.md`.
//!
//! What it does not do: decide what a failure means for replication (the
//! replica rolls the working copy back and answers `AppFailed`), or confine
//! the application by itself (`sandbox = true` runs it through
//! `bunker sandbox-exec`, see `sandbox`).
//!
//! Invariants: at most one command runs at a time (asserted); every
//! `start` produces exactly one outcome with its id; a killed application
//! leaves no process of its group behind.

mod exec;
pub mod sandbox;
mod serve;

use crate::replica::ExecOutcome;
use crate::server::config::{AppConfig, AppMode};
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Bytes of the application's stderr kept for a failure's reason.
pub const STDERR_BYTES_MAX: usize = 4096;
/// Jobs queued for the worker, at most (one runs at a time; restarts and
/// the shutdown may queue behind it).
const JOBS_MAX: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("app.command is empty (configuration)")]
    NoCommand,
    #[error("cannot start the application thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("cannot find the bunker executable for the sandbox: {0}")]
    Exe(#[source] std::io::Error),
}

enum Job {
    Start {
        id: u64,
        command: Bytes,
        dir: PathBuf,
    },
    Restart,
    Shutdown,
}

/// What the worker needs to spawn the application.
#[derive(Clone, Debug)]
pub(crate) struct Spawn {
    program: Vec<String>,
    /// `Some(bunker executable)` when the application runs sandboxed.
    sandbox: Option<PathBuf>,
    pub timeout: Duration,
    pub response_bytes_max: usize,
}

impl Spawn {
    /// The command that runs the application in `dir`, in its own process
    /// group (so that a kill reaches its children too).
    pub fn command(&self, dir: &Path) -> Command {
        use std::os::unix::process::CommandExt;
        let mut cmd = match &self.sandbox {
            Some(exe) => {
                let mut c = Command::new(exe);
                c.arg(sandbox::SUBCOMMAND).arg(dir).args(&self.program);
                c
            }
            None => {
                let mut c = Command::new(&self.program[0]);
                c.args(&self.program[1..]);
                c
            }
        };
        cmd.current_dir(dir).process_group(0);
        cmd
    }
}

/// Kills the process group `pgid` (the application and its children).
pub(crate) fn kill_group(pgid: u32) {
    // SAFETY: kill(2) has no memory-safety preconditions; a negative pid
    // names the process group the child leads (process_group(0)).
    unsafe {
        libc::kill(-(pgid as i32), libc::SIGKILL);
    }
}

pub struct Adapter {
    jobs: Sender<Job>,
    outcomes: Receiver<(u64, ExecOutcome)>,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl Adapter {
    pub fn new(cfg: &AppConfig) -> Result<Adapter, AppError> {
        let exe = if cfg.sandbox {
            Some(std::env::current_exe().map_err(AppError::Exe)?)
        } else {
            None
        };
        Adapter::with_sandbox_exe(cfg, exe)
    }

    /// As `new`, naming the `bunker` executable that provides
    /// `sandbox-exec` (tests run from another executable).
    pub fn with_sandbox_exe(cfg: &AppConfig, exe: Option<PathBuf>) -> Result<Adapter, AppError> {
        if cfg.command.is_empty() {
            return Err(AppError::NoCommand);
        }
        let sandbox = if cfg.sandbox { exe } else { None };
        let spawn = Spawn {
            program: cfg.command.clone(),
            sandbox,
            timeout: Duration::from_millis(cfg.timeout_ms),
            response_bytes_max: cfg.response_bytes_max,
        };
        let (jobs, jobs_rx) = crossbeam_channel::bounded(JOBS_MAX);
        let (outcomes_tx, outcomes) = crossbeam_channel::bounded(JOBS_MAX);
        let mode = cfg.mode;
        let worker = std::thread::Builder::new()
            .name("bunker-app".into())
            .spawn(move || worker(mode, spawn, jobs_rx, outcomes_tx))
            .map_err(AppError::Thread)?;
        Ok(Adapter {
            jobs,
            outcomes,
            worker: Some(worker),
        })
    }

    /// Stops the application and the worker thread.
    pub fn shutdown(&mut self) {
        let _ = self.jobs.send(Job::Shutdown);
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

impl Drop for Adapter {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl crate::server::node::AppRunner for Adapter {
    fn start(&mut self, id: u64, command: Bytes, workdir: &Path) {
        let job = Job::Start {
            id,
            command,
            dir: workdir.to_path_buf(),
        };
        if self.jobs.send(job).is_err() {
            tracing::error!(id, "the application thread is gone; the command cannot run");
        }
    }

    fn restart(&mut self) {
        let _ = self.jobs.send(Job::Restart);
    }

    fn outcomes(&self) -> &Receiver<(u64, ExecOutcome)> {
        &self.outcomes
    }
}

fn worker(mode: AppMode, spawn: Spawn, jobs: Receiver<Job>, outcomes: Sender<(u64, ExecOutcome)>) {
    let mut served = serve::Served::new(spawn.clone());
    for job in jobs {
        match job {
            Job::Start { id, command, dir } => {
                let outcome = match mode {
                    AppMode::Exec => exec::run(&spawn, &command, &dir),
                    AppMode::Serve => served.run(&command, &dir),
                };
                if let ExecOutcome::Failed { reason } = &outcome {
                    tracing::warn!(id, %reason, "the application failed on a command");
                }
                if outcomes.send((id, outcome)).is_err() {
                    break;
                }
            }
            Job::Restart => served.stop(),
            Job::Shutdown => break,
        }
        // Descendants that daemonized were re-parented to the server (a
        // subreaper, so that the capture still sees what they map): collect
        // those that exited. Only this thread spawns and waits for children.
        let keep: Vec<u32> = served.pid().into_iter().collect();
        crate::delta::writers::reap_orphans(&keep);
    }
    served.stop();
}
