//! bunker-bench: Bunker's benchmark harness. Every subcommand measures a
//! baseline in the same run and prints ratios against it (the machines are
//! shared and noisy: compare medians and ratios, not absolute times).

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bunker-bench",
    about = "Bunker's benchmarks (hdrhistogram percentiles, JSON output)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Placeholder until the first benchmark lands.
    Version,
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => println!("bunker-bench {}", env!("CARGO_PKG_VERSION")),
    }
}
