//! TEMPORARY minimal adapter (replaced by the full one from the adapters branch).
use crate::replica::ExecOutcome;
use crate::server::config::{AppConfig, AppMode};
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
#[error("application adapter: {0}")]
pub struct AppError(String);

enum Job {
    Start(u64, Bytes, PathBuf),
    Restart,
}

pub struct Adapter {
    jobs: Sender<Job>,
    rx: Receiver<(u64, ExecOutcome)>,
}

impl Adapter {
    pub fn new(cfg: &AppConfig) -> Result<Adapter, AppError> {
        let (jobs, jobs_rx) = crossbeam_channel::bounded(16);
        let (tx, rx) = crossbeam_channel::bounded(16);
        let cfg = cfg.clone();
        std::thread::Builder::new()
            .name("bunker-app".into())
            .spawn(move || worker(cfg, jobs_rx, tx))
            .map_err(|e| AppError(e.to_string()))?;
        Ok(Adapter { jobs, rx })
    }
}

struct Served {
    child: Child,
    dir: PathBuf,
    frames: Receiver<Option<Vec<u8>>>,
}

fn worker(cfg: AppConfig, jobs: Receiver<Job>, tx: Sender<(u64, ExecOutcome)>) {
    let mut served: Option<Served> = None;
    let timeout = Duration::from_millis(cfg.timeout_ms);
    for job in jobs {
        match job {
            Job::Restart => {
                if let Some(mut s) = served.take() {
                    let _ = s.child.kill();
                    let _ = s.child.wait();
                }
            }
            Job::Start(id, command, dir) => {
                let outcome = match cfg.mode {
                    AppMode::Exec => exec(&cfg, &command, &dir),
                    AppMode::Serve => serve(&cfg, &mut served, &command, &dir, timeout),
                };
                if tx.send((id, outcome)).is_err() {
                    return;
                }
            }
        }
    }
}

fn exec(cfg: &AppConfig, command: &[u8], dir: &Path) -> ExecOutcome {
    let child = Command::new(&cfg.command[0])
        .args(&cfg.command[1..])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            return ExecOutcome::Failed {
                reason: format!("spawn: {e}"),
            }
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(command);
    }
    match child.wait_with_output() {
        Ok(out) => match out.status.code() {
            Some(code) if code <= 125 => ExecOutcome::Done {
                status: code as u8,
                response: Bytes::from(if out.stdout.is_empty() {
                    out.stderr
                } else {
                    out.stdout
                }),
            },
            _ => ExecOutcome::Failed {
                reason: format!("exited {}", out.status),
            },
        },
        Err(e) => ExecOutcome::Failed {
            reason: e.to_string(),
        },
    }
}

fn serve(
    cfg: &AppConfig,
    served: &mut Option<Served>,
    command: &[u8],
    dir: &Path,
    timeout: Duration,
) -> ExecOutcome {
    if served.as_ref().is_some_and(|s| s.dir != dir) {
        if let Some(mut s) = served.take() {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
    }
    if served.is_none() {
        let child = Command::new(&cfg.command[0])
            .args(&cfg.command[1..])
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                return ExecOutcome::Failed {
                    reason: format!("spawn: {e}"),
                }
            }
        };
        let Some(mut stdout) = child.stdout.take() else {
            return ExecOutcome::Failed {
                reason: "no stdout".into(),
            };
        };
        let (ftx, frx) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || loop {
            let mut len = [0u8; 4];
            if stdout.read_exact(&mut len).is_err() {
                let _ = ftx.send(None);
                return;
            }
            let mut buf = vec![0u8; u32::from_le_bytes(len) as usize];
            if stdout.read_exact(&mut buf).is_err() || ftx.send(Some(buf)).is_err() {
                let _ = ftx.send(None);
                return;
            }
        });
        *served = Some(Served {
            child,
            dir: dir.to_path_buf(),
            frames: frx,
        });
    }
    let Some(s) = served.as_mut() else {
        return ExecOutcome::Failed {
            reason: "no process".into(),
        };
    };
    let mut frame = (command.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(command);
    let wrote = s
        .child
        .stdin
        .as_mut()
        .map(|i| i.write_all(&frame).and_then(|_| i.flush()));
    let outcome = match wrote {
        Some(Ok(())) => match s.frames.recv_timeout(timeout) {
            Ok(Some(buf)) if !buf.is_empty() => ExecOutcome::Done {
                status: buf[0],
                response: Bytes::copy_from_slice(&buf[1..]),
            },
            Ok(_) => ExecOutcome::Failed {
                reason: "application exited".into(),
            },
            Err(_) => ExecOutcome::Failed {
                reason: "timed out".into(),
            },
        },
        _ => ExecOutcome::Failed {
            reason: "cannot write to the application".into(),
        },
    };
    if matches!(outcome, ExecOutcome::Failed { .. }) {
        if let Some(mut s) = served.take() {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
    }
    outcome
}

impl crate::server::node::AppRunner for Adapter {
    fn start(&mut self, id: u64, command: Bytes, workdir: &Path) {
        let _ = self
            .jobs
            .send(Job::Start(id, command, workdir.to_path_buf()));
    }
    fn restart(&mut self) {
        let _ = self.jobs.send(Job::Restart);
    }
    fn outcomes(&self) -> &Receiver<(u64, ExecOutcome)> {
        &self.rx
    }
}
