//! `serve` mode: one long-running process answering framed commands. See
//! `super` for the contract.

use super::{kill_group, Spawn};
use crate::replica::ExecOutcome;
use bytes::Bytes;
use crossbeam_channel::Receiver;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};

/// What the reader thread saw on the application's stdout.
enum Frame {
    Response(Vec<u8>),
    TooLarge(usize),
    /// End of stdout or a read error: the application is gone or broken.
    Closed(String),
}

struct Running {
    child: Child,
    stdin: ChildStdin,
    frames: Receiver<Frame>,
    dir: PathBuf,
}

pub(super) struct Served {
    spawn: Spawn,
    running: Option<Running>,
}

impl Served {
    pub fn new(spawn: Spawn) -> Served {
        Served {
            spawn,
            running: None,
        }
    }

    /// The running application's process id.
    pub fn pid(&self) -> Option<u32> {
        self.running.as_ref().map(|r| r.child.id())
    }

    /// Kills the application (if running); the next command starts it again.
    pub fn stop(&mut self) {
        if let Some(mut r) = self.running.take() {
            kill_group(r.child.id());
            let _ = r.child.wait();
            crate::delta::writers::forget_root(r.child.id());
        }
    }

    fn start(&mut self, dir: &Path) -> Result<(), String> {
        let mut child = self
            .spawn
            .command(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start the application: {e}"))?;
        // A process of the application: the capture looks at what it maps.
        crate::delta::writers::register_root(child.id());
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            crate::delta::writers::forget_root(child.id());
            kill_group(child.id());
            let _ = child.wait();
            return Err("no pipes to the application".into());
        };
        let frames = read_frames(stdout, self.spawn.response_bytes_max + 1);
        self.running = Some(Running {
            child,
            stdin,
            frames,
            dir: dir.to_path_buf(),
        });
        Ok(())
    }

    /// Runs one command; any failure stops the application, which the next
    /// command restarts.
    pub fn run(&mut self, command: &[u8], dir: &Path) -> ExecOutcome {
        if self.running.as_ref().is_some_and(|r| r.dir != dir) {
            self.stop();
        }
        if self.running.is_none() {
            if let Err(reason) = self.start(dir) {
                return ExecOutcome::Failed { reason };
            }
        }
        let outcome = self.exchange(command);
        if matches!(outcome, ExecOutcome::Failed { .. }) {
            self.stop();
        }
        outcome
    }

    fn exchange(&mut self, command: &[u8]) -> ExecOutcome {
        let Some(r) = self.running.as_mut() else {
            return ExecOutcome::Failed {
                reason: "the application is not running".into(),
            };
        };
        let Ok(len) = u32::try_from(command.len()) else {
            return ExecOutcome::Failed {
                reason: "command larger than 4 GiB".into(),
            };
        };
        let sent = r
            .stdin
            .write_all(&len.to_le_bytes())
            .and_then(|()| r.stdin.write_all(command))
            .and_then(|()| r.stdin.flush());
        if let Err(e) = sent {
            return ExecOutcome::Failed {
                reason: format!("cannot send the command: {e} ({})", exit_of(&mut r.child)),
            };
        }
        match r.frames.recv_timeout(self.spawn.timeout) {
            Ok(Frame::Response(payload)) => match payload.split_first() {
                Some((status, body)) => ExecOutcome::Done {
                    status: *status,
                    response: Bytes::copy_from_slice(body),
                },
                None => ExecOutcome::Failed {
                    reason: "empty response frame (a status byte is required)".into(),
                },
            },
            Ok(Frame::TooLarge(len)) => ExecOutcome::Failed {
                reason: format!(
                    "response of {len} bytes is larger than {} (killed)",
                    self.spawn.response_bytes_max
                ),
            },
            Ok(Frame::Closed(why)) => ExecOutcome::Failed {
                reason: format!(
                    "application {} while running a command ({why})",
                    exit_of(&mut r.child)
                ),
            },
            Err(_) => ExecOutcome::Failed {
                reason: format!(
                    "timed out after {} ms (killed)",
                    self.spawn.timeout.as_millis()
                ),
            },
        }
    }
}

/// How the application ended, if it did (reaps it).
fn exit_of(child: &mut Child) -> String {
    use std::os::unix::process::ExitStatusExt;
    for _ in 0..50 {
        if let Ok(Some(status)) = child.try_wait() {
            return match (status.code(), status.signal()) {
                (Some(code), _) => format!("exited with status {code}"),
                (None, Some(signal)) => format!("was killed by signal {signal}"),
                _ => format!("ended ({status})"),
            };
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    "closed its output".into()
}

/// A thread that reads response frames until stdout closes. One frame is
/// buffered at most: the application answers one command at a time.
fn read_frames(
    mut stdout: impl Read + Send + 'static,
    payload_bytes_max: usize,
) -> Receiver<Frame> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || loop {
        let mut len = [0u8; 4];
        if let Err(e) = stdout.read_exact(&mut len) {
            let _ = tx.send(Frame::Closed(e.to_string()));
            return;
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > payload_bytes_max {
            let _ = tx.send(Frame::TooLarge(len));
            return;
        }
        let mut payload = vec![0u8; len];
        if let Err(e) = stdout.read_exact(&mut payload) {
            let _ = tx.send(Frame::Closed(format!("a response frame ended early: {e}")));
            return;
        }
        if tx.send(Frame::Response(payload)).is_err() {
            return;
        }
    });
    rx
}
