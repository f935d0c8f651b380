//! `bunker blob`: the minimal application of the benchmarks. Each command
//! writes its own bytes (padded or cut to 256) into one of 4096 slots of a
//! 1 MiB file `blob.dat` in the working directory, so that every command
//! changes about 256 bytes, and answers `ok <slot>`. The slot is the
//! command's xxh3 hash modulo 4096.
//!
//! It exists to measure Bunker's own cost (log, delta, replication) without
//! an application's: compare `bunker-bench e2e` figures for `blob` and
//! `accounts`. Same two modes and the same framing as `bunker accounts`:
//! `exec` reads one command from stdin; `serve` reads frames (u32
//! little-endian length, payload) and writes frames (status byte, body).
//!
//! What it does not do: fsync (Bunker's log is the durable copy), or keep
//! any state outside `blob.dat`.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::process::ExitCode;

/// Bytes each command writes.
pub const SLOT_BYTES: usize = 256;
/// Slots in the file.
pub const SLOTS: u64 = 4096;
/// Largest command accepted.
pub const COMMAND_BYTES_MAX: usize = 4096;
const FILE: &str = "blob.dat";

/// Runs `bunker blob exec|serve`.
pub fn main(args: Vec<String>) -> ExitCode {
    let result = match args.first().map(String::as_str) {
        Some("exec") => exec(),
        Some("serve") => serve(),
        _ => {
            eprintln!("usage: bunker blob exec|serve (the benchmark's minimal application)");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bunker blob: {e}");
            ExitCode::from(2)
        }
    }
}

/// Writes `command` into its slot and returns the response.
pub fn run_command(command: &[u8]) -> std::io::Result<Vec<u8>> {
    let slot = xxhash_rust::xxh3::xxh3_64(command) % SLOTS;
    let mut record = [0u8; SLOT_BYTES];
    let n = command.len().min(SLOT_BYTES);
    record[..n].copy_from_slice(&command[..n]);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(FILE)?;
    file.write_all_at(&record, slot * SLOT_BYTES as u64)?;
    Ok(format!("ok {slot}").into_bytes())
}

fn exec() -> std::io::Result<()> {
    let mut command = Vec::new();
    std::io::stdin()
        .take(COMMAND_BYTES_MAX as u64 + 1)
        .read_to_end(&mut command)?;
    if command.len() > COMMAND_BYTES_MAX {
        return Err(std::io::Error::other(format!(
            "command larger than {COMMAND_BYTES_MAX} bytes"
        )));
    }
    let response = run_command(&command)?;
    std::io::stdout().write_all(&response)
}

fn serve() -> std::io::Result<()> {
    let mut input = std::io::BufReader::new(std::io::stdin().lock());
    let mut output = std::io::stdout().lock();
    loop {
        let mut len = [0u8; 4];
        match input.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > COMMAND_BYTES_MAX {
            return Err(std::io::Error::other(format!(
                "frame of {len} bytes is larger than {COMMAND_BYTES_MAX}: the stream is out of step"
            )));
        }
        let mut command = vec![0u8; len];
        input.read_exact(&mut command)?;
        let (status, body) = match run_command(&command) {
            Ok(body) => (0u8, body),
            Err(e) => (2u8, format!("error {e}").into_bytes()),
        };
        let frame_len = (body.len() + 1) as u32;
        output.write_all(&frame_len.to_le_bytes())?;
        output.write_all(&[status])?;
        output.write_all(&body)?;
        output.flush()?;
    }
}
