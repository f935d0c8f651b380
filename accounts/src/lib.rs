//! bunker-accounts: the example application that Bunker replicates and that
//! its demo runs. An accounts database on SQLite, honestly non-deterministic
//! (random transaction ids, real timestamps, transfer fees that depend on the
//! time of day and the phase of the moon), whose whole state is the files of
//! one directory.
//!
//! The library part is what the binary, the tests, the benchmark and the
//! future demo and fault checker share: the command grammar ([`command`]), the
//! response types ([`response`]), the framing of `serve` mode ([`frame`]), the
//! fee rule ([`fee`]), the database ([`store`]) and the two run modes
//! ([`app`]). See `accounts/README.md` for the grammar and the JSON.
//!
//! What it does not do: make anything durable or exactly-once. Bunker does;
//! this application only promises that each command's effects are written to
//! its files (with write()) before its response leaves, and that nothing
//! changes in its directory between commands.

pub mod app;
pub mod cli;
pub mod command;
pub mod fee;
pub mod frame;
pub mod response;
pub mod store;

pub use command::{parse, Command, ParseError};
pub use response::{Outcome, Rejection, Response, Status};
pub use store::{Environment, Store, StoreError, SyncMode, SystemEnvironment};
