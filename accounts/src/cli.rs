//! The command line of the application: `exec` runs one command read from
//! stdin; `serve` answers framed commands from stdin until it ends. See
//! `accounts/README.md` for the grammar, the JSON and the frame format.
//!
//! Shared by the `bunker-accounts` binary and `bunker accounts` (the same
//! program built into Bunker's executable, which its demo runs).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::app::{self, ExecResult, Options};
use crate::{SyncMode, SystemEnvironment};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bunker-accounts",
    version,
    about = "An accounts database on SQLite, the example application Bunker replicates",
    long_about = "An accounts database on SQLite whose whole state is one directory \
(the working copy). Commands are text, responses are JSON. It is honestly \
non-deterministic: transaction ids are random, timestamps are real, and the fee on a \
transfer depends on the time of day and the phase of the moon.\n\n\
Commands:\n  open <account> [initial_cents]\n  deposit <account> <cents> [ref=<token>]\n  \
withdraw <account> <cents> [ref=<token>]\n  transfer <from> <to> <cents> [ref=<token>]\n  \
balance <account>\n  statement <account> [limit]\n  audit\n  find <ref>"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Run one command read from stdin (to EOF) and print its JSON response.
    /// Exit 0: done; 1: refused by the bank (response on stdout); 2: bad
    /// command or internal failure (message on stderr).
    Exec(Common),
    /// Answer framed commands from stdin until EOF: each frame is a u32
    /// little-endian length and that many bytes; each response frame's payload
    /// is a status byte (0 ok, 1 refused, 2 bad command or internal) then JSON.
    Serve(Common),
}

#[derive(Args)]
struct Common {
    /// The data directory (the working copy). It must exist.
    #[arg(long, value_name = "DIR", default_value = ".")]
    data: PathBuf,
    /// fsync on commit? "off" is safe under Bunker, whose replicated log is
    /// the durable copy: after a crash the working copy is rebuilt from it.
    #[arg(long, value_enum, default_value_t = SyncMode::Off)]
    sync: SyncMode,
}

impl Common {
    fn options(self) -> Options {
        Options {
            data_dir: self.data,
            sync: self.sync,
        }
    }
}

/// Runs the program with `args` (the first is the program name).
pub fn main<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not errors (exit 0); usage errors exit 2.
            let code = e.exit_code();
            let _ = e.print();
            return ExitCode::from(u8::try_from(code).unwrap_or(2));
        }
    };
    match cli.mode {
        Mode::Exec(common) => run_exec(common.options()),
        Mode::Serve(common) => run_serve(common.options()),
    }
}

fn run_exec(options: Options) -> ExitCode {
    let result = app::exec(std::io::stdin().lock(), &options, &mut SystemEnvironment);
    let code = result.exit_code();
    match result {
        ExecResult::Answered(response) => {
            let mut stdout = std::io::stdout().lock();
            let mut json = response.to_json();
            json.push(b'\n');
            if let Err(e) = stdout.write_all(&json).and_then(|()| stdout.flush()) {
                eprintln!("bunker-accounts exec: writing the response: {e}");
                return ExitCode::from(2);
            }
        }
        ExecResult::Failed(message) => eprintln!("bunker-accounts exec: {message}"),
    }
    ExitCode::from(code)
}

fn run_serve(options: Options) -> ExitCode {
    let input = std::io::BufReader::new(std::io::stdin().lock());
    let output = std::io::BufWriter::new(std::io::stdout().lock());
    match app::serve(input, output, &options, &mut SystemEnvironment) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bunker-accounts serve: {e}");
            ExitCode::from(2)
        }
    }
}
