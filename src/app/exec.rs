//! `exec` mode: one process per command. See `super` for the contract.

use super::{kill_group, Spawn, STDERR_BYTES_MAX};
use crate::replica::ExecOutcome;
use bytes::Bytes;
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What a reader thread collected: the bytes kept, and whether there were more.
type Collected = (Vec<u8>, bool);

/// Reads `from` to its end, keeping at most `keep` bytes (draining the rest
/// so that the writer never blocks on a full pipe).
fn collect(
    mut from: impl Read + Send + 'static,
    keep: usize,
) -> crossbeam_channel::Receiver<Collected> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut more = false;
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = keep.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                    more |= n > room;
                }
            }
        }
        let _ = tx.send((kept, more));
    });
    rx
}

pub(super) fn run(spawn: &Spawn, command: &[u8], dir: &Path) -> ExecOutcome {
    let mut pid = None;
    let outcome = run_once(spawn, command, dir, &mut pid);
    if let Some(pid) = pid {
        // Waited for by now (every path of `run_once` reaps it).
        crate::delta::writers::forget_root(pid);
    }
    outcome
}

fn run_once(spawn: &Spawn, command: &[u8], dir: &Path, pid: &mut Option<u32>) -> ExecOutcome {
    let started = Instant::now();
    let deadline = started + spawn.timeout;
    let mut child = match spawn
        .command(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            return ExecOutcome::Failed {
                reason: format!("cannot start the application: {e}"),
            }
        }
    };
    let pgid = child.id();
    // A process of the application: the capture looks at what it maps.
    crate::delta::writers::register_root(pgid);
    *pid = Some(pgid);
    if let Some(mut stdin) = child.stdin.take() {
        // A writer thread: an application that does not read its stdin
        // must not block the adapter.
        let command = command.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&command);
        });
    }
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        kill_group(pgid);
        let _ = child.wait();
        return ExecOutcome::Failed {
            reason: "no pipes to the application".into(),
        };
    };
    let out = collect(stdout, spawn.response_bytes_max);
    let err = collect(stderr, STDERR_BYTES_MAX);
    let timed_out = |child: &mut std::process::Child| {
        kill_group(pgid);
        let _ = child.wait();
        ExecOutcome::Failed {
            reason: format!("timed out after {} ms (killed)", spawn.timeout.as_millis()),
        }
    };
    let Ok((response, too_large)) = out.recv_deadline(deadline) else {
        return timed_out(&mut child);
    };
    if too_large {
        kill_group(pgid);
        let _ = child.wait();
        return ExecOutcome::Failed {
            reason: format!(
                "response larger than {} bytes (killed)",
                spawn.response_bytes_max
            ),
        };
    }
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => return timed_out(&mut child),
            Ok(None) => std::thread::sleep(Duration::from_micros(200)),
            Err(e) => {
                kill_group(pgid);
                return ExecOutcome::Failed {
                    reason: format!("cannot wait for the application: {e}"),
                };
            }
        }
    };
    // A process left in the group (a daemonized grandchild) must not
    // outlive the command: it could change the working copy later.
    kill_group(pgid);
    let stderr = err
        .recv_deadline(deadline.max(Instant::now() + Duration::from_millis(100)))
        .map(|(e, _)| e)
        .unwrap_or_default();
    outcome(status, response, stderr)
}

/// Maps an exit status: 0 to 125 are answers; anything else is a failure.
fn outcome(status: ExitStatus, response: Vec<u8>, stderr: Vec<u8>) -> ExecOutcome {
    let stderr_text = String::from_utf8_lossy(&stderr).trim().to_string();
    match (status.code(), status.signal()) {
        (Some(code @ 0..=125), _) => {
            let body = if response.is_empty() && code != 0 {
                stderr
            } else {
                response
            };
            ExecOutcome::Done {
                status: code as u8,
                response: Bytes::from(body),
            }
        }
        (Some(126), _) => ExecOutcome::Failed {
            reason: format!("exited 126: the program cannot be run: {stderr_text}"),
        },
        (Some(127), _) => ExecOutcome::Failed {
            reason: format!("exited 127: the program was not found: {stderr_text}"),
        },
        (Some(code), _) => ExecOutcome::Failed {
            reason: format!("exited {code}: {stderr_text}"),
        },
        (None, Some(signal)) => ExecOutcome::Failed {
            reason: format!("killed by signal {signal}: {stderr_text}"),
        },
        (None, None) => ExecOutcome::Failed {
            reason: format!("ended abnormally ({status})"),
        },
    }
}
