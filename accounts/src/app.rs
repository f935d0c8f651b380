//! The two ways Bunker runs the application: `exec` (one command per process)
//! and `serve` (a long-running process fed framed commands over a pipe).
//!
//! What it does: turns bytes in into bytes out with the right status, for both
//! modes, over any `Read`/`Write` (the binary passes stdin and stdout; tests
//! pass buffers). The database is opened on the first command, never before,
//! so that starting `serve` changes nothing in the data directory.
//!
//! What it does not do: retries, deduplication or durability. Those are
//! Bunker's: a command given twice runs twice (so a checker can tell).
//!
//! Invariants: exactly one response per command frame, in order, flushed
//! before the next frame is read; a response is only written after the
//! command's transaction committed (or rolled back, for a refusal); after an
//! internal failure `serve` answers `internal` and stops, so that Bunker
//! restarts it on a working copy it trusts.

use std::io::{Read, Write};
use std::path::PathBuf;

use thiserror::Error;

use crate::command::{self, COMMAND_BYTES_MAX};
use crate::frame::{self, FrameError, COMMAND_FRAME_BYTES_MAX};
use crate::response::{ErrorCode, Response, Status};
use crate::store::{Environment, Store, StoreError, SyncMode};

/// Where the data lives and how it is written.
#[derive(Debug, Clone)]
pub struct Options {
    pub data_dir: PathBuf,
    pub sync: SyncMode,
}

/// The result of one `exec` run.
#[derive(Debug)]
pub enum ExecResult {
    /// A response for the client (exit 0 if ok, 1 if the bank refused).
    Answered(Response),
    /// Bad input or internal failure: a message for stderr, exit 2.
    Failed(String),
}

impl ExecResult {
    pub fn exit_code(&self) -> u8 {
        match self {
            ExecResult::Answered(response) => response.status().as_byte(),
            ExecResult::Failed(_) => Status::BadCommand.as_byte(),
        }
    }
}

/// Reads at most `limit` bytes (plus one, to tell that there were more).
pub fn read_bounded<R: Read>(input: R, limit: usize) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    input.take(limit as u64 + 1).read_to_end(&mut bytes)?;
    assert!(bytes.len() <= limit + 1);
    Ok(bytes)
}

/// `exec` mode: one command (the whole of `input`), one response.
pub fn exec<R: Read>(input: R, options: &Options, env: &mut dyn Environment) -> ExecResult {
    let bytes = match read_bounded(input, COMMAND_BYTES_MAX) {
        Ok(bytes) => bytes,
        Err(e) => return ExecResult::Failed(format!("reading the command from stdin: {e}")),
    };
    let command = match command::parse(&bytes) {
        Ok(command) => command,
        Err(e) => return ExecResult::Failed(format!("bad command: {e}")),
    };
    let mut store = match Store::open(&options.data_dir, options.sync) {
        Ok(store) => store,
        Err(e) => return ExecResult::Failed(e.to_string()),
    };
    match store.execute(&command, env) {
        Ok(response) => ExecResult::Answered(response),
        Err(e) => ExecResult::Failed(e.to_string()),
    }
}

/// Why `serve` stopped before the end of its input.
#[derive(Debug, Error)]
pub enum ServeError {
    #[error("bad input frame: {0}")]
    Frame(#[from] FrameError),
    #[error("writing a response: {0}")]
    Output(std::io::Error),
    #[error("{0}")]
    Internal(#[from] StoreError),
}

/// `serve` mode: framed commands in, framed responses out, until the input
/// ends (`Ok`) or something makes going on unsafe (`Err`).
pub fn serve<R: Read, W: Write>(
    mut input: R,
    mut output: W,
    options: &Options,
    env: &mut dyn Environment,
) -> Result<(), ServeError> {
    let mut store: Option<Store> = None;
    loop {
        let payload = match frame::read_frame(&mut input, COMMAND_FRAME_BYTES_MAX) {
            Ok(Some(payload)) => payload,
            Ok(None) => return Ok(()),
            Err(e @ FrameError::TooLarge { .. }) => {
                // The length may be garbage: the stream cannot be trusted to
                // stay in step, so answer this frame and stop.
                let refusal = Response::rejected(ErrorCode::BadCommand, e.to_string());
                respond(&mut output, &refusal)?;
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        let command = match command::parse(&payload) {
            Ok(command) => command,
            Err(e) => {
                respond(
                    &mut output,
                    &Response::rejected(ErrorCode::BadCommand, e.to_string()),
                )?;
                continue;
            }
        };
        let result = match store.as_mut() {
            Some(open) => open.execute(&command, env),
            None => Store::open(&options.data_dir, options.sync)
                .and_then(|opened| store.insert(opened).execute(&command, env)),
        };
        match result {
            Ok(response) => respond(&mut output, &response)?,
            Err(e) => {
                respond(
                    &mut output,
                    &Response::rejected(ErrorCode::Internal, e.to_string()),
                )?;
                return Err(e.into());
            }
        }
    }
}

fn respond<W: Write>(output: &mut W, response: &Response) -> Result<(), ServeError> {
    let payload = frame::encode_response(response.status(), &response.to_json());
    frame::write_frame(output, &payload).map_err(ServeError::Output)?;
    output.flush().map_err(ServeError::Output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode_response, read_frame, write_frame, RESPONSE_FRAME_BYTES_MAX};
    use crate::store::SystemEnvironment;

    fn options(dir: &tempfile::TempDir) -> Options {
        Options {
            data_dir: dir.path().to_owned(),
            sync: SyncMode::Off,
        }
    }

    fn frames(commands: &[&[u8]]) -> Vec<u8> {
        let mut stream = Vec::new();
        for c in commands {
            write_frame(&mut stream, c).expect("in memory");
        }
        stream
    }

    fn statuses(output: &[u8]) -> Vec<Status> {
        let mut reader = output;
        let mut out = Vec::new();
        while let Some(payload) = read_frame(&mut reader, RESPONSE_FRAME_BYTES_MAX).expect("frame")
        {
            let (status, body) = decode_response(&payload).expect("status");
            Response::from_json(body).expect("json");
            out.push(status);
        }
        out
    }

    #[test]
    fn serve_answers_each_frame_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = frames(&[
            b"open a 10",
            b"withdraw a 11",
            b"nonsense",
            b"",
            b"balance a",
        ]);
        let mut output = Vec::new();
        serve(
            &input[..],
            &mut output,
            &options(&dir),
            &mut SystemEnvironment,
        )
        .expect("clean end");
        assert_eq!(
            statuses(&output),
            [
                Status::Ok,
                Status::Business,
                Status::BadCommand,
                Status::BadCommand,
                Status::Ok
            ]
        );
    }

    #[test]
    fn serve_stops_on_an_oversized_frame_after_answering_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut input = frames(&[b"audit"]);
        input.extend_from_slice(&(COMMAND_FRAME_BYTES_MAX + 1).to_le_bytes());
        input.extend_from_slice(&frames(&[b"audit"]));
        let mut output = Vec::new();
        let err = serve(
            &input[..],
            &mut output,
            &options(&dir),
            &mut SystemEnvironment,
        )
        .expect_err("must stop");
        assert!(matches!(
            err,
            ServeError::Frame(FrameError::TooLarge { .. })
        ));
        assert_eq!(statuses(&output), [Status::Ok, Status::BadCommand]);
    }

    #[test]
    fn serve_reports_a_truncated_frame() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = frames(&[b"audit"]);
        let mut output = Vec::new();
        let err = serve(
            &input[..input.len() - 1],
            &mut output,
            &options(&dir),
            &mut SystemEnvironment,
        )
        .expect_err("must stop");
        assert!(matches!(
            err,
            ServeError::Frame(FrameError::Truncated { .. })
        ));
        assert!(output.is_empty());
    }

    #[test]
    fn serve_answers_internal_and_stops_when_the_directory_is_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = Options {
            data_dir: dir.path().join("missing"),
            sync: SyncMode::Off,
        };
        let input = frames(&[b"audit", b"audit"]);
        let mut output = Vec::new();
        let err =
            serve(&input[..], &mut output, &options, &mut SystemEnvironment).expect_err("stops");
        assert!(matches!(
            err,
            ServeError::Internal(StoreError::DataDir { .. })
        ));
        assert_eq!(statuses(&output), [Status::BadCommand]);
    }

    #[test]
    fn exec_exit_codes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = options(&dir);
        let run = |text: &[u8]| exec(text, &opts, &mut SystemEnvironment).exit_code();
        assert_eq!(run(b"open a 5\n"), 0);
        assert_eq!(run(b"withdraw a 6"), 1);
        assert_eq!(run(b"withdraw a"), 2);
        assert_eq!(run(&vec![b'x'; COMMAND_BYTES_MAX + 10]), 2);
    }
}
