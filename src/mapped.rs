//! `bunker mapped`: a test application that writes only through a shared
//! memory mapping, as LMDB in `writemap` mode and many embedded stores do.
//!
//! It keeps one file, `mapped.kv` (4 MiB: 16,384 slots of 256 bytes), open
//! and mapped `MAP_SHARED` for its whole life (serve mode) and changes it
//! only by storing into the mapping: never `write(2)`, never `msync`, never
//! a close between commands. A slot holds a key and a value; the slot is
//! the key's xxh3 hash modulo the slot count, probing linearly.
//!
//! Commands (one per frame, same framing as `bunker blob`):
//! - `put KEY VALUE` stores, answers `ok`;
//! - `get KEY` answers the value, or status 1 and `missing`;
//! - `put-detached KEY VALUE` starts a daemon (double fork, new session)
//!   that maps the file itself, stores the pair, tells the command it is
//!   done and then stays alive holding its mapping: the daemon is no child
//!   of the application any more, which tests that the server still counts
//!   it as one of the application's processes.
//!
//! What it does not do: fsync or msync (Bunker's log is the durable copy),
//! delete keys, or grow the file.

use memmap2::MmapMut;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::process::ExitCode;

const FILE: &str = "mapped.kv";
const SLOT_BYTES: usize = 256;
const SLOTS: usize = 16_384;
const KEY_BYTES_MAX: usize = 64;
const VALUE_BYTES_MAX: usize = SLOT_BYTES - KEY_BYTES_MAX - 2;
const COMMAND_BYTES_MAX: usize = 4096;
/// How long a detached daemon keeps its mapping before it exits.
const DAEMON_LINGER_SECS: u64 = 30;

/// Runs `bunker mapped serve`.
pub fn main(args: Vec<String>) -> ExitCode {
    let result = match args.first().map(String::as_str) {
        Some("serve") => serve(),
        _ => {
            eprintln!(
                "usage: bunker mapped serve (a test application writing through a shared mapping)"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bunker mapped: {e}");
            ExitCode::from(2)
        }
    }
}

/// The store: the file (kept open) and its shared mapping.
struct Store {
    _file: File,
    map: MmapMut,
}

impl Store {
    fn open() -> std::io::Result<Store> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(FILE)?;
        if file.metadata()?.len() != (SLOTS * SLOT_BYTES) as u64 {
            file.set_len((SLOTS * SLOT_BYTES) as u64)?;
        }
        // SAFETY: the file is this application's own; no other process
        // truncates it while it is mapped (Bunker replaces files only while
        // the application is stopped).
        let map = unsafe { MmapMut::map_mut(&file)? };
        Ok(Store { _file: file, map })
    }

    /// The slot holding `key`, or the empty slot where it would go.
    fn find(&self, key: &[u8]) -> std::io::Result<usize> {
        let start = xxhash_rust::xxh3::xxh3_64(key) as usize % SLOTS;
        for i in 0..SLOTS {
            let slot = (start + i) % SLOTS;
            let record = &self.map[slot * SLOT_BYTES..(slot + 1) * SLOT_BYTES];
            let key_len = record[0] as usize;
            if key_len == 0 || &record[2..2 + key_len] == key {
                return Ok(slot);
            }
        }
        Err(std::io::Error::other("the store is full"))
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> std::io::Result<()> {
        let slot = self.find(key)?;
        let record = &mut self.map[slot * SLOT_BYTES..(slot + 1) * SLOT_BYTES];
        record.fill(0);
        record[0] = key.len() as u8;
        record[1] = value.len() as u8;
        record[2..2 + key.len()].copy_from_slice(key);
        record[2 + KEY_BYTES_MAX..2 + KEY_BYTES_MAX + value.len()].copy_from_slice(value);
        Ok(())
    }

    fn get(&self, key: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
        let slot = self.find(key)?;
        let record = &self.map[slot * SLOT_BYTES..(slot + 1) * SLOT_BYTES];
        if record[0] == 0 {
            return Ok(None);
        }
        let len = record[1] as usize;
        Ok(Some(
            record[2 + KEY_BYTES_MAX..2 + KEY_BYTES_MAX + len].to_vec(),
        ))
    }
}

/// `(key, value)` of `put KEY VALUE`, checked.
fn key_value(rest: &str) -> Result<(&[u8], &[u8]), String> {
    let (key, value) = rest.split_once(' ').ok_or("expected KEY VALUE")?;
    if key.is_empty() || key.len() > KEY_BYTES_MAX || value.len() > VALUE_BYTES_MAX {
        return Err(format!(
            "keys are 1 to {KEY_BYTES_MAX} bytes, values at most {VALUE_BYTES_MAX}"
        ));
    }
    Ok((key.as_bytes(), value.as_bytes()))
}

fn run_command(store: &mut Store, command: &[u8]) -> (u8, Vec<u8>) {
    let text = String::from_utf8_lossy(command);
    let (verb, rest) = text.split_once(' ').unwrap_or((&text, ""));
    let result = match verb {
        "put" => key_value(rest).and_then(|(k, v)| {
            store.put(k, v).map_err(|e| e.to_string())?;
            Ok((0, b"ok".to_vec()))
        }),
        "put-detached" => key_value(rest).and_then(|(k, v)| {
            put_detached(k, v).map_err(|e| e.to_string())?;
            Ok((0, b"ok".to_vec()))
        }),
        "get" => match store.get(rest.as_bytes()) {
            Ok(Some(value)) => Ok((0, value)),
            Ok(None) => Ok((1, b"missing".to_vec())),
            Err(e) => Err(e.to_string()),
        },
        _ => Err(format!("unknown command {verb:?}")),
    };
    result.unwrap_or_else(|e| (2, format!("error {e}").into_bytes()))
}

/// Stores the pair from a daemon that leaves this process's tree (double
/// fork, new session) and keeps its own mapping afterwards.
fn put_detached(key: &[u8], value: &[u8]) -> std::io::Result<()> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe writes two descriptors into the array.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fork in a single-threaded process; the child only calls
    // async-signal-safe functions until it forks again and then runs
    // ordinary code in a process of its own.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: see above; setsid and fork take no pointers.
        unsafe {
            libc::close(fds[0]);
            libc::setsid();
            if libc::fork() != 0 {
                libc::_exit(0);
            }
            // The application's pipes to Bunker are not the daemon's.
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            if null >= 0 {
                libc::dup2(null, 0);
                libc::dup2(null, 1);
                libc::close(null);
            }
        }
        let done = Store::open().and_then(|mut store| store.put(key, value));
        let byte = [u8::from(done.is_ok())];
        // SAFETY: writing one byte from a valid buffer to our pipe end.
        unsafe {
            libc::write(fds[1], byte.as_ptr().cast(), 1);
            libc::close(fds[1]);
        }
        std::thread::sleep(std::time::Duration::from_secs(DAEMON_LINGER_SECS));
        // SAFETY: ends the daemon without running the parent's atexit code.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: closing our copy of the write end; waiting for the
    // intermediate child, which exits at once.
    unsafe {
        libc::close(fds[1]);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    let mut byte = [0u8; 1];
    // SAFETY: reading one byte into a valid buffer from our pipe end.
    let n = unsafe { libc::read(fds[0], byte.as_mut_ptr().cast(), 1) };
    // SAFETY: closing our read end.
    unsafe { libc::close(fds[0]) };
    if n == 1 && byte[0] == 1 {
        Ok(())
    } else {
        Err(std::io::Error::other("the detached writer failed"))
    }
}

fn serve() -> std::io::Result<()> {
    let mut store = Store::open()?;
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
        let (status, body) = run_command(&mut store, &command);
        output.write_all(&((body.len() + 1) as u32).to_le_bytes())?;
        output.write_all(&[status])?;
        output.write_all(&body)?;
        output.flush()?;
    }
}
