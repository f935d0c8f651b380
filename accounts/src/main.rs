//! The `bunker-accounts` binary: see `bunker_accounts::cli` and
//! `accounts/README.md`.

fn main() -> std::process::ExitCode {
    bunker_accounts::cli::main(std::env::args_os())
}
