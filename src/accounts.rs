//! `bunker accounts`: the example application (`bunker-accounts`) built
//! into the `bunker` executable, so that the demo and a quick trial need
//! only one program. Same commands, same output, same exit codes; see
//! `accounts/README.md`.
//!
//! What it does not do: anything Bunker-specific. The application knows
//! nothing of replication; it is run by the adapters like any other program.

use std::process::ExitCode;

/// Runs the accounts application with `args` (without the program name).
pub fn main(args: Vec<String>) -> ExitCode {
    bunker_accounts::cli::main(std::iter::once("bunker accounts".to_string()).chain(args))
}
