//! The accounts database: one SQLite file, `accounts.db`, in the data directory.
//!
//! What it does: opens (and on first use creates) the database with settings
//! that fit Bunker's contract, and executes parsed commands against it, each in
//! its own SQLite transaction that is committed (written to the file with
//! write()) before the response is returned.
//!
//! Settings, and why:
//! - `journal_mode=DELETE`: between commands the directory holds exactly one
//!   file, `accounts.db`; a command's delta is the set of pages it changed in
//!   that file (the rollback journal is created and deleted inside the
//!   command). WAL would need either a `-shm` file that SQLite writes through
//!   mmap (Bunker cannot see such writes reliably) or exclusive locking, plus a
//!   checkpoint policy; DELETE needs neither. A process killed mid-commit
//!   leaves a hot journal that SQLite rolls back on the next open, so the file
//!   is consistent after `kill -9` without any fsync (the page cache survives
//!   the process).
//! - `mmap_size=0`: every change goes through write(), which Bunker observes.
//! - `temp_store=MEMORY`: no temporary files, in the directory or elsewhere.
//! - `synchronous=OFF` by default (`SyncMode::Off`): under Bunker, durability
//!   comes from the replicated log; after a machine crash the working copy is
//!   never trusted but rebuilt from the committed state, so the application's
//!   own fsync buys nothing. `SyncMode::Full` is there for standalone use.
//! - No background threads and no automatic checkpoints: nothing touches the
//!   directory between commands.
//!
//! Non-determinism, on purpose: transaction ids come from the OS RNG,
//! timestamps from the real clock, and transfer fees from the clock too (see
//! `fee`). Both come through the [`Environment`] trait so that tests can pin
//! them; the binary always uses [`SystemEnvironment`].
//!
//! Invariants (checked by `audit`): no balance is negative; every balance is
//! the sum of its account's postings; the sum of all balances equals the money
//! that came in (opening balances and deposits) minus the money that went out
//! (withdrawals): transfers and fees only move money. Lifetime inflow is capped
//! at `MAX_AMOUNT_CENTS`, so every number fits in 53 bits and no arithmetic
//! can overflow; it is checked anyway. Business errors change nothing.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::RngCore;
use rusqlite::{
    params, Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior,
};
use thiserror::Error;
use xxhash_rust::xxh3::Xxh3;

use crate::command::{Account, ClientRef, Command, MAX_AMOUNT_CENTS};
use crate::fee::{self, FeeQuote};
use crate::response::{Audit, Entry, EntryKind, ErrorCode, Outcome, Response, Txn, TxnKind};

/// The database file's name inside the data directory.
pub const DB_FILE_NAME: &str = "accounts.db";
/// `PRAGMA application_id` of our databases ("BNKA"), so that we refuse to
/// run on some other program's SQLite file.
pub const APPLICATION_ID: i32 = 0x424e_4b41;
/// `PRAGMA user_version` of the schema this program writes.
pub const SCHEMA_VERSION: i32 = 1;
/// The most transactions `find` lists (it always gives the full count).
pub const FIND_RESULTS_MAX: u32 = 100;
/// How long to wait for another process's lock (only an operator running a
/// second copy by hand can cause one; Bunker runs one at a time).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether SQLite fsyncs on commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncMode {
    /// No fsync (`PRAGMA synchronous=OFF`): safe under Bunker, whose log is
    /// the durable copy.
    Off,
    /// fsync on every commit (`PRAGMA synchronous=FULL`): for standalone use.
    Full,
}

/// Where the store gets the time and its randomness.
pub trait Environment {
    /// Wall-clock time, microseconds since 1970-01-01 UTC.
    fn now_unix_us(&mut self) -> i64;
    /// 128 random bits for a transaction id.
    fn random_id(&mut self) -> Result<[u8; 16], StoreError>;
}

/// The real clock and the OS random number generator.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemEnvironment;

impl Environment for SystemEnvironment {
    fn now_unix_us(&mut self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
            Err(before) => -i64::try_from(before.duration().as_micros()).unwrap_or(i64::MAX),
        }
    }

    fn random_id(&mut self) -> Result<[u8; 16], StoreError> {
        let mut id = [0u8; 16];
        rand::rngs::OsRng
            .try_fill_bytes(&mut id)
            .map_err(|e| StoreError::Random(e.to_string()))?;
        Ok(id)
    }
}

/// Why a command could not be executed. None of these is the client's fault:
/// they are storage or environment failures, answered as `internal`.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("storage: data directory {path}: {source}")]
    DataDir { path: PathBuf, source: io::Error },
    #[error("storage: cannot open database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("storage: {path} is not a bunker-accounts database (application_id {found:#x}, user_version {version})")]
    Foreign {
        path: PathBuf,
        found: i32,
        version: i32,
    },
    #[error("storage: {path} has schema version {found}; this program knows version {SCHEMA_VERSION} only")]
    TooNew { path: PathBuf, found: i32 },
    #[error("storage: {path}: SQLite kept journal_mode {journal_mode:?} instead of \"delete\"")]
    JournalMode { path: PathBuf, journal_mode: String },
    #[error("storage: SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("storage: ledger invariant broken: {0}")]
    Corrupt(String),
    #[error("environment: the OS random number generator failed: {0}")]
    Random(String),
}

/// An open accounts database.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Opens the database in `data_dir`, creating it (with the house account)
    /// if the directory has none yet. The directory must exist.
    pub fn open(data_dir: &Path, sync: SyncMode) -> Result<Store, StoreError> {
        let metadata = std::fs::metadata(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_owned(),
            source,
        })?;
        if !metadata.is_dir() {
            return Err(StoreError::DataDir {
                path: data_dir.to_owned(),
                source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
        let path = data_dir.join(DB_FILE_NAME);
        let open_error = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&path, flags).map_err(open_error)?;
        let journal_mode = configure(&conn, sync).map_err(open_error)?;
        if !journal_mode.eq_ignore_ascii_case("delete") {
            return Err(StoreError::JournalMode { path, journal_mode });
        }
        let mut store = Store { conn, path };
        store.ensure_schema()?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Executes one command. Business errors are `Ok(Response::Err(..))` and
    /// change nothing; `Err` means the command may not have run (storage or
    /// environment failure) and, if it wrote, SQLite rolled it back.
    pub fn execute(
        &mut self,
        command: &Command,
        env: &mut dyn Environment,
    ) -> Result<Response, StoreError> {
        match command {
            Command::Open {
                account,
                initial_cents,
            } => self.write(|tx| open(tx, env, account, *initial_cents)),
            Command::Deposit {
                account,
                cents,
                reference,
            } => self.write(|tx| deposit(tx, env, account, *cents, reference.as_ref())),
            Command::Withdraw {
                account,
                cents,
                reference,
            } => self.write(|tx| withdraw(tx, env, account, *cents, reference.as_ref())),
            Command::Transfer {
                from,
                to,
                cents,
                reference,
            } => self.write(|tx| transfer(tx, env, from, to, *cents, reference.as_ref())),
            Command::Balance { account } => self.read(|tx| balance(tx, account)),
            Command::Statement { account, limit } => self.read(|tx| statement(tx, account, *limit)),
            Command::Audit => self.read(audit),
            Command::Find { reference } => self.read(|tx| find(tx, reference)),
        }
    }

    /// Runs `body` in a write transaction; commits if it succeeded, rolls
    /// back (writing nothing) if the bank refused it.
    fn write<F>(&mut self, body: F) -> Result<Response, StoreError>
    where
        F: FnOnce(&Transaction<'_>) -> Result<Response, StoreError>,
    {
        // IMMEDIATE: take the write lock first, so the reads below and the
        // writes that depend on them see one state.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let response = body(&tx)?;
        match response {
            Response::Ok(_) => tx.commit()?,
            Response::Err(_) => tx.rollback()?,
        }
        assert!(
            self.conn.is_autocommit(),
            "no transaction outlives its command"
        );
        Ok(response)
    }

    /// Runs `body` in a read transaction (one consistent snapshot).
    fn read<F>(&mut self, body: F) -> Result<Response, StoreError>
    where
        F: FnOnce(&Transaction<'_>) -> Result<Response, StoreError>,
    {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Deferred)?;
        let response = body(&tx)?;
        tx.rollback()?;
        assert!(
            self.conn.is_autocommit(),
            "no transaction outlives its command"
        );
        Ok(response)
    }

    /// Creates the schema on an empty database; checks it on any other.
    fn ensure_schema(&mut self) -> Result<(), StoreError> {
        let (found, version) = identity(&self.conn).map_err(|source| StoreError::Open {
            path: self.path.clone(),
            source,
        })?;
        match (found, version) {
            (APPLICATION_ID, SCHEMA_VERSION) => Ok(()),
            (APPLICATION_ID, v) if v > SCHEMA_VERSION => Err(StoreError::TooNew {
                path: self.path.clone(),
                found: v,
            }),
            (0, 0) => self.create_schema(),
            (found, version) => Err(StoreError::Foreign {
                path: self.path.clone(),
                found,
                version,
            }),
        }
    }

    fn create_schema(&mut self) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Another process may have created it while we waited for the lock.
        let (found, version) = identity(&tx)?;
        if (found, version) == (APPLICATION_ID, SCHEMA_VERSION) {
            return Ok(());
        }
        let tables: i64 = tx.query_row("SELECT COUNT(*) FROM sqlite_schema", [], |r| r.get(0))?;
        if (found, version) != (0, 0) || tables != 0 {
            return Err(StoreError::Foreign {
                path: self.path.clone(),
                found,
                version,
            });
        }
        tx.execute_batch(SCHEMA_SQL)?;
        tx.execute(
            "INSERT INTO accounts (name, balance_cents, opened_unix_us) VALUES (?1, 0, 0)",
            [Account::house().as_str()],
        )?;
        tx.pragma_update(None, "application_id", APPLICATION_ID)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
        Ok(())
    }
}

const SCHEMA_SQL: &str = "
CREATE TABLE accounts (
    name TEXT PRIMARY KEY NOT NULL,
    balance_cents INTEGER NOT NULL CHECK (balance_cents >= 0),
    opened_unix_us INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE txns (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('open', 'deposit', 'withdraw', 'transfer')),
    at_unix_us INTEGER NOT NULL,
    cents INTEGER NOT NULL CHECK (cents >= 0),
    fee_cents INTEGER NOT NULL CHECK (fee_cents >= 0),
    from_account TEXT REFERENCES accounts (name),
    to_account TEXT REFERENCES accounts (name),
    client_ref TEXT
);
CREATE INDEX txns_by_ref ON txns (client_ref) WHERE client_ref IS NOT NULL;
CREATE TABLE postings (
    account TEXT NOT NULL REFERENCES accounts (name),
    seq INTEGER NOT NULL REFERENCES txns (seq),
    delta_cents INTEGER NOT NULL,
    balance_after_cents INTEGER NOT NULL CHECK (balance_after_cents >= 0),
    PRIMARY KEY (account, seq)
) WITHOUT ROWID;
CREATE TABLE bank (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    minted_cents INTEGER NOT NULL CHECK (minted_cents >= 0),
    burned_cents INTEGER NOT NULL CHECK (burned_cents >= 0)
);
INSERT INTO bank (id, minted_cents, burned_cents) VALUES (1, 0, 0);
";

/// Applies the settings the module comment explains; returns the journal
/// mode SQLite reports (which must be "delete").
fn configure(conn: &Connection, sync: SyncMode) -> rusqlite::Result<String> {
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "DELETE", |r| r.get(0))?;
    let synchronous = match sync {
        SyncMode::Off => "OFF",
        SyncMode::Full => "FULL",
    };
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.pragma_update(None, "mmap_size", 0)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mmap_size: i64 = conn.pragma_query_value(None, "mmap_size", |r| r.get(0))?;
    assert_eq!(mmap_size, 0, "writes must never go through mmap");
    Ok(mode)
}

fn identity(conn: &Connection) -> rusqlite::Result<(i32, i32)> {
    let app: i32 = conn.pragma_query_value(None, "application_id", |r| r.get(0))?;
    let version: i32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    Ok((app, version))
}

fn unknown(account: &Account) -> Response {
    Response::rejected(
        ErrorCode::UnknownAccount,
        format!("account {account} does not exist"),
    )
}

fn balance_of(tx: &Transaction<'_>, account: &Account) -> Result<Option<i64>, StoreError> {
    let balance: Option<i64> = tx
        .prepare_cached("SELECT balance_cents FROM accounts WHERE name = ?1")?
        .query_row([account.as_str()], |r| r.get(0))
        .optional()?;
    if let Some(b) = balance {
        if !(0..=MAX_AMOUNT_CENTS).contains(&b) {
            return Err(StoreError::Corrupt(format!(
                "account {account} has balance {b}"
            )));
        }
    }
    Ok(balance)
}

fn set_balance(
    tx: &Transaction<'_>,
    account: &Account,
    balance_cents: i64,
) -> Result<(), StoreError> {
    assert!((0..=MAX_AMOUNT_CENTS).contains(&balance_cents));
    let changed = tx
        .prepare_cached("UPDATE accounts SET balance_cents = ?2 WHERE name = ?1")?
        .execute(params![account.as_str(), balance_cents])?;
    assert_eq!(changed, 1, "the account was read in this transaction");
    Ok(())
}

/// Money in and out since the bank opened.
fn bank_totals(tx: &Transaction<'_>) -> Result<(i64, i64), StoreError> {
    let totals = tx
        .prepare_cached("SELECT minted_cents, burned_cents FROM bank WHERE id = 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(totals)
}

fn set_bank_totals(
    tx: &Transaction<'_>,
    minted_cents: i64,
    burned_cents: i64,
) -> Result<(), StoreError> {
    assert!(0 <= burned_cents && burned_cents <= minted_cents && minted_cents <= MAX_AMOUNT_CENTS);
    tx.prepare_cached("UPDATE bank SET minted_cents = ?1, burned_cents = ?2 WHERE id = 1")?
        .execute(params![minted_cents, burned_cents])?;
    Ok(())
}

/// Adds `cents` to the lifetime inflow, or refuses if that passes the cap.
fn mint(tx: &Transaction<'_>, cents: i64) -> Result<Option<Response>, StoreError> {
    let (minted, burned) = bank_totals(tx)?;
    match minted.checked_add(cents) {
        Some(m) if m <= MAX_AMOUNT_CENTS => {
            set_bank_totals(tx, m, burned)?;
            Ok(None)
        }
        _ => Ok(Some(Response::rejected(
            ErrorCode::LimitExceeded,
            format!(
                "the bank has taken in {minted} cents since it opened; {cents} more would pass its lifetime limit of {MAX_AMOUNT_CENTS}"
            ),
        ))),
    }
}

fn burn(tx: &Transaction<'_>, cents: i64) -> Result<(), StoreError> {
    let (minted, burned) = bank_totals(tx)?;
    let burned = burned
        .checked_add(cents)
        .filter(|b| *b <= minted)
        .ok_or_else(|| {
            StoreError::Corrupt(format!("withdrawing {cents} passes the inflow {minted}"))
        })?;
    set_bank_totals(tx, minted, burned)
}

/// What a new transaction records.
struct NewTxn<'a> {
    kind: TxnKind,
    at_unix_us: i64,
    cents: i64,
    fee_cents: i64,
    from: Option<&'a Account>,
    to: Option<&'a Account>,
    reference: Option<&'a ClientRef>,
}

fn insert_txn(
    tx: &Transaction<'_>,
    env: &mut dyn Environment,
    new: NewTxn<'_>,
) -> Result<Txn, StoreError> {
    assert!(new.cents >= 0 && new.fee_cents >= 0);
    let id: String = env
        .random_id()?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    tx.prepare_cached(
        "INSERT INTO txns (id, kind, at_unix_us, cents, fee_cents, from_account, to_account, client_ref)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        id,
        new.kind.as_str(),
        new.at_unix_us,
        new.cents,
        new.fee_cents,
        new.from.map(Account::as_str),
        new.to.map(Account::as_str),
        new.reference.map(ClientRef::as_str),
    ])?;
    Ok(Txn {
        id,
        seq: tx.last_insert_rowid(),
        kind: new.kind,
        at_unix_us: new.at_unix_us,
        cents: new.cents,
        fee_cents: new.fee_cents,
        from: new.from.map(Account::to_string),
        to: new.to.map(Account::to_string),
        reference: new.reference.map(ClientRef::to_string),
    })
}

fn post(
    tx: &Transaction<'_>,
    account: &Account,
    seq: i64,
    delta_cents: i64,
    balance_after_cents: i64,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO postings (account, seq, delta_cents, balance_after_cents) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![account.as_str(), seq, delta_cents, balance_after_cents])?;
    Ok(())
}

fn open(
    tx: &Transaction<'_>,
    env: &mut dyn Environment,
    account: &Account,
    initial_cents: i64,
) -> Result<Response, StoreError> {
    assert!((0..=MAX_AMOUNT_CENTS).contains(&initial_cents));
    if balance_of(tx, account)?.is_some() {
        return Ok(Response::rejected(
            ErrorCode::AccountExists,
            format!("account {account} already exists"),
        ));
    }
    if let Some(refused) = mint(tx, initial_cents)? {
        return Ok(refused);
    }
    let at_unix_us = env.now_unix_us();
    tx.prepare_cached(
        "INSERT INTO accounts (name, balance_cents, opened_unix_us) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![account.as_str(), initial_cents, at_unix_us])?;
    let txn = insert_txn(
        tx,
        env,
        NewTxn {
            kind: TxnKind::Open,
            at_unix_us,
            cents: initial_cents,
            fee_cents: 0,
            from: None,
            to: Some(account),
            reference: None,
        },
    )?;
    post(tx, account, txn.seq, initial_cents, initial_cents)?;
    Ok(Response::Ok(Outcome::Open {
        account: account.to_string(),
        balance_cents: initial_cents,
        txn,
    }))
}

fn deposit(
    tx: &Transaction<'_>,
    env: &mut dyn Environment,
    account: &Account,
    cents: i64,
    reference: Option<&ClientRef>,
) -> Result<Response, StoreError> {
    assert!((1..=MAX_AMOUNT_CENTS).contains(&cents));
    let Some(before) = balance_of(tx, account)? else {
        return Ok(unknown(account));
    };
    if let Some(refused) = mint(tx, cents)? {
        return Ok(refused);
    }
    // The lifetime inflow cap bounds every balance, so this cannot fail.
    let after = before
        .checked_add(cents)
        .filter(|a| *a <= MAX_AMOUNT_CENTS)
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "{account}: {before} + {cents} passes the inflow cap"
            ))
        })?;
    set_balance(tx, account, after)?;
    let new = NewTxn {
        kind: TxnKind::Deposit,
        at_unix_us: env.now_unix_us(),
        cents,
        fee_cents: 0,
        from: None,
        to: Some(account),
        reference,
    };
    let txn = insert_txn(tx, env, new)?;
    post(tx, account, txn.seq, cents, after)?;
    Ok(Response::Ok(Outcome::Deposit {
        account: account.to_string(),
        balance_cents: after,
        txn,
    }))
}

fn withdraw(
    tx: &Transaction<'_>,
    env: &mut dyn Environment,
    account: &Account,
    cents: i64,
    reference: Option<&ClientRef>,
) -> Result<Response, StoreError> {
    assert!((1..=MAX_AMOUNT_CENTS).contains(&cents));
    let Some(before) = balance_of(tx, account)? else {
        return Ok(unknown(account));
    };
    let Some(after) = before.checked_sub(cents).filter(|a| *a >= 0) else {
        return Ok(Response::rejected(
            ErrorCode::InsufficientFunds,
            format!("account {account} has {before} cents; cannot withdraw {cents}"),
        ));
    };
    burn(tx, cents)?;
    set_balance(tx, account, after)?;
    let new = NewTxn {
        kind: TxnKind::Withdraw,
        at_unix_us: env.now_unix_us(),
        cents,
        fee_cents: 0,
        from: Some(account),
        to: None,
        reference,
    };
    let txn = insert_txn(tx, env, new)?;
    post(tx, account, txn.seq, -cents, after)?;
    Ok(Response::Ok(Outcome::Withdraw {
        account: account.to_string(),
        balance_cents: after,
        txn,
    }))
}

fn transfer(
    tx: &Transaction<'_>,
    env: &mut dyn Environment,
    from: &Account,
    to: &Account,
    cents: i64,
    reference: Option<&ClientRef>,
) -> Result<Response, StoreError> {
    assert!((1..=MAX_AMOUNT_CENTS).contains(&cents));
    assert_ne!(from, to, "the parser refuses transfers to the same account");
    let Some(from_before) = balance_of(tx, from)? else {
        return Ok(unknown(from));
    };
    let Some(to_before) = balance_of(tx, to)? else {
        return Ok(unknown(to));
    };
    let at_unix_us = env.now_unix_us();
    let fee: FeeQuote = if from.is_house() || to.is_house() {
        fee::waived(at_unix_us)
    } else {
        fee::quote(cents, at_unix_us)
    };
    // cents + fee <= 2 * 2^53: no overflow in i64.
    let needed = cents + fee.cents;
    let Some(from_after) = from_before.checked_sub(needed).filter(|a| *a >= 0) else {
        return Ok(Response::rejected(
            ErrorCode::InsufficientFunds,
            format!(
                "account {from} has {from_before} cents; the transfer needs {cents} plus a fee of {} ({} bp x{} at {:02}h UTC, {:?} moon)",
                fee.cents, fee.rate_bps, fee.multiplier, fee.utc_hour, fee.moon
            ),
        ));
    };
    let to_after = credit(to, to_before, cents)?;
    let new = NewTxn {
        kind: TxnKind::Transfer,
        at_unix_us,
        cents,
        fee_cents: fee.cents,
        from: Some(from),
        to: Some(to),
        reference,
    };
    let txn = insert_txn(tx, env, new)?;
    set_balance(tx, from, from_after)?;
    post(tx, from, txn.seq, -needed, from_after)?;
    set_balance(tx, to, to_after)?;
    post(tx, to, txn.seq, cents, to_after)?;
    if fee.cents > 0 {
        let house = Account::house();
        let house_before = balance_of(tx, &house)?
            .ok_or_else(|| StoreError::Corrupt("the house account is missing".into()))?;
        let house_after = credit(&house, house_before, fee.cents)?;
        set_balance(tx, &house, house_after)?;
        post(tx, &house, txn.seq, fee.cents, house_after)?;
    }
    Ok(Response::Ok(Outcome::Transfer {
        from_balance_cents: from_after,
        to_balance_cents: to_after,
        fee,
        txn,
    }))
}

/// A credit of money already in the bank: bounded by the inflow cap.
fn credit(account: &Account, before: i64, cents: i64) -> Result<i64, StoreError> {
    before
        .checked_add(cents)
        .filter(|a| *a <= MAX_AMOUNT_CENTS)
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "{account}: {before} + {cents} passes the inflow cap"
            ))
        })
}

fn balance(tx: &Transaction<'_>, account: &Account) -> Result<Response, StoreError> {
    Ok(match balance_of(tx, account)? {
        Some(balance_cents) => Response::Ok(Outcome::Balance {
            account: account.to_string(),
            balance_cents,
        }),
        None => unknown(account),
    })
}

fn statement(tx: &Transaction<'_>, account: &Account, limit: u32) -> Result<Response, StoreError> {
    let Some(balance_cents) = balance_of(tx, account)? else {
        return Ok(unknown(account));
    };
    let mut query = tx.prepare_cached(
        "SELECT p.seq, p.delta_cents, p.balance_after_cents, t.id, t.kind, t.at_unix_us,
                t.from_account, t.to_account, t.client_ref
         FROM postings p JOIN txns t ON t.seq = p.seq
         WHERE p.account = ?1 ORDER BY p.seq DESC LIMIT ?2",
    )?;
    let mut rows = query.query(params![account.as_str(), limit])?;
    let mut entries = Vec::new();
    while let Some(row) = rows.next()? {
        let kind_text: String = row.get(4)?;
        let from: Option<String> = row.get(6)?;
        let to: Option<String> = row.get(7)?;
        let kind = TxnKind::from_str_opt(&kind_text).ok_or_else(|| {
            StoreError::Corrupt(format!("unknown transaction kind {kind_text:?}"))
        })?;
        let me = Some(account.as_str());
        let (kind, counterparty) = match kind {
            TxnKind::Open => (EntryKind::Open, None),
            TxnKind::Deposit => (EntryKind::Deposit, None),
            TxnKind::Withdraw => (EntryKind::Withdraw, None),
            TxnKind::Transfer if from.as_deref() == me => (EntryKind::TransferOut, to),
            TxnKind::Transfer if to.as_deref() == me => (EntryKind::TransferIn, from),
            TxnKind::Transfer => (EntryKind::Fee, from),
        };
        entries.push(Entry {
            txn: row.get(3)?,
            seq: row.get(0)?,
            kind,
            at_unix_us: row.get(5)?,
            delta_cents: row.get(1)?,
            balance_after_cents: row.get(2)?,
            counterparty,
            reference: row.get(8)?,
        });
    }
    assert!(entries.len() <= limit as usize);
    Ok(Response::Ok(Outcome::Statement {
        account: account.to_string(),
        balance_cents,
        entries,
    }))
}

fn txn_from_row(row: &rusqlite::Row<'_>) -> Result<Txn, StoreError> {
    let kind_text: String = row.get(2)?;
    Ok(Txn {
        seq: row.get(0)?,
        id: row.get(1)?,
        kind: TxnKind::from_str_opt(&kind_text).ok_or_else(|| {
            StoreError::Corrupt(format!("unknown transaction kind {kind_text:?}"))
        })?,
        at_unix_us: row.get(3)?,
        cents: row.get(4)?,
        fee_cents: row.get(5)?,
        from: row.get(6)?,
        to: row.get(7)?,
        reference: row.get(8)?,
    })
}

const TXN_COLUMNS: &str =
    "seq, id, kind, at_unix_us, cents, fee_cents, from_account, to_account, client_ref";

fn find(tx: &Transaction<'_>, reference: &ClientRef) -> Result<Response, StoreError> {
    let count: i64 = tx
        .prepare_cached("SELECT COUNT(*) FROM txns WHERE client_ref = ?1")?
        .query_row([reference.as_str()], |r| r.get(0))?;
    let mut query = tx.prepare_cached(&format!(
        "SELECT {TXN_COLUMNS} FROM txns WHERE client_ref = ?1 ORDER BY seq LIMIT ?2"
    ))?;
    let mut rows = query.query(params![reference.as_str(), FIND_RESULTS_MAX])?;
    let mut txns = Vec::new();
    while let Some(row) = rows.next()? {
        txns.push(txn_from_row(row)?);
    }
    assert!(txns.len() <= FIND_RESULTS_MAX as usize && txns.len() as i64 <= count);
    Ok(Response::Ok(Outcome::Find {
        reference: reference.to_string(),
        count: count as u64,
        txns,
    }))
}

/// Feeds one length-prefixed field to the checksum (so that field boundaries
/// are part of what is hashed).
fn hash_field(hasher: &mut Xxh3, bytes: &[u8]) {
    hasher.update(&(bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
}

fn hash_opt(hasher: &mut Xxh3, text: Option<&str>) {
    match text {
        Some(t) => {
            hasher.update(&[1]);
            hash_field(hasher, t.as_bytes());
        }
        None => hasher.update(&[0]),
    }
}

fn audit(tx: &Transaction<'_>) -> Result<Response, StoreError> {
    let mut hasher = Xxh3::new();
    hash_field(&mut hasher, b"bunker-accounts/audit/v1");

    // Accounts, by name.
    let mut balances: BTreeMap<String, i64> = BTreeMap::new();
    let mut total_cents: i128 = 0;
    {
        let mut query =
            tx.prepare_cached("SELECT name, balance_cents FROM accounts ORDER BY name")?;
        let mut rows = query.query([])?;
        while let Some(row) = rows.next()? {
            let name: String = row.get(0)?;
            let balance_cents: i64 = row.get(1)?;
            hash_field(&mut hasher, name.as_bytes());
            hasher.update(&balance_cents.to_le_bytes());
            total_cents += i128::from(balance_cents);
            balances.insert(name, balance_cents);
        }
    }

    // Transactions, in ledger order; recompute the inflow and outflow.
    let (mut minted, mut burned, mut transactions) = (0i128, 0i128, 0u64);
    {
        let mut query =
            tx.prepare_cached(&format!("SELECT {TXN_COLUMNS} FROM txns ORDER BY seq"))?;
        let mut rows = query.query([])?;
        while let Some(row) = rows.next()? {
            let txn = txn_from_row(row)?;
            hasher.update(&txn.seq.to_le_bytes());
            hash_field(&mut hasher, txn.id.as_bytes());
            hash_field(&mut hasher, txn.kind.as_str().as_bytes());
            hasher.update(&txn.at_unix_us.to_le_bytes());
            hasher.update(&txn.cents.to_le_bytes());
            hasher.update(&txn.fee_cents.to_le_bytes());
            hash_opt(&mut hasher, txn.from.as_deref());
            hash_opt(&mut hasher, txn.to.as_deref());
            hash_opt(&mut hasher, txn.reference.as_deref());
            match txn.kind {
                TxnKind::Open | TxnKind::Deposit => minted += i128::from(txn.cents),
                TxnKind::Withdraw => burned += i128::from(txn.cents),
                TxnKind::Transfer => {}
            }
            transactions += 1;
        }
    }

    // Every balance is the sum of its postings.
    let mut posted: BTreeMap<String, i128> = BTreeMap::new();
    {
        let mut query = tx.prepare_cached("SELECT account, delta_cents FROM postings")?;
        let mut rows = query.query([])?;
        while let Some(row) = rows.next()? {
            let account: String = row.get(0)?;
            let delta: i64 = row.get(1)?;
            *posted.entry(account).or_insert(0) += i128::from(delta);
        }
    }
    let postings_match = balances
        .iter()
        .all(|(name, balance)| posted.get(name).copied().unwrap_or(0) == i128::from(*balance))
        && posted.keys().all(|name| balances.contains_key(name));

    let (bank_minted, bank_burned) = bank_totals(tx)?;
    let totals_match = i128::from(bank_minted) == minted && i128::from(bank_burned) == burned;
    let conserved = total_cents == minted - burned;
    let integrity = quick_check(tx)?;
    let to_i64 = |v: i128| i64::try_from(v).unwrap_or(i64::MAX);
    Ok(Response::Ok(Outcome::Audit(Audit {
        total_cents: to_i64(total_cents),
        accounts: balances.len() as u64,
        transactions,
        minted_cents: to_i64(minted),
        burned_cents: to_i64(burned),
        house_cents: balances
            .get(Account::house().as_str())
            .copied()
            .unwrap_or(0),
        conserved,
        ledger_consistent: postings_match && totals_match,
        integrity,
        checksum: format!("{:016x}", hasher.digest()),
    })))
}

/// SQLite's own structural check; "ok" or the first few problems.
fn quick_check(tx: &Transaction<'_>) -> Result<String, StoreError> {
    const PROBLEMS_SHOWN_MAX: usize = 5;
    let mut query = tx.prepare("PRAGMA quick_check")?;
    let mut rows = query.query([])?;
    let mut problems = Vec::new();
    while let Some(row) = rows.next()? {
        if problems.len() == PROBLEMS_SHOWN_MAX {
            break;
        }
        problems.push(row.get::<_, String>(0)?);
    }
    Ok(problems.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(dir: &Path) -> Connection {
        Connection::open(dir.join(DB_FILE_NAME)).expect("open with rusqlite")
    }

    #[test]
    fn opening_twice_keeps_one_house_and_the_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut env = SystemEnvironment;
        let open = crate::parse(b"open alice 7").expect("valid");
        let mut store = Store::open(dir.path(), SyncMode::Full).expect("open");
        assert_eq!(
            store.execute(&open, &mut env).expect("runs").status(),
            crate::Status::Ok
        );
        drop(store);
        let mut store = Store::open(dir.path(), SyncMode::Off).expect("reopen");
        assert_eq!(
            store.execute(&open, &mut env).expect("runs").status(),
            crate::Status::Business,
            "alice is still there"
        );
        let houses: i64 = sqlite(dir.path())
            .query_row(
                "SELECT COUNT(*) FROM accounts WHERE name = 'house'",
                [],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(houses, 1);
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(Store::open(dir.path(), SyncMode::Off).expect("create"));
        sqlite(dir.path())
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .expect("bump");
        let err = Store::open(dir.path(), SyncMode::Off)
            .err()
            .expect("refused");
        assert!(
            matches!(err, StoreError::TooNew { found, .. } if found == SCHEMA_VERSION + 1),
            "{err}"
        );
    }

    #[test]
    fn refuses_someone_elses_database_and_leaves_it_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        sqlite(dir.path())
            .execute_batch("CREATE TABLE recipes (name TEXT)")
            .expect("their table");
        let before = std::fs::read(dir.path().join(DB_FILE_NAME)).expect("read");
        let err = Store::open(dir.path(), SyncMode::Off)
            .err()
            .expect("refused");
        assert!(
            matches!(
                err,
                StoreError::Foreign {
                    found: 0,
                    version: 0,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            std::fs::read(dir.path().join(DB_FILE_NAME)).expect("read"),
            before
        );
    }

    #[test]
    fn the_data_directory_must_be_a_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").expect("write");
        for path in [file, dir.path().join("missing")] {
            let err = Store::open(&path, SyncMode::Off).err().expect("refused");
            assert!(matches!(err, StoreError::DataDir { .. }), "{err}");
        }
    }

    #[test]
    fn settings_are_the_documented_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), SyncMode::Off).expect("open");
        let get = |name: &str| -> i64 {
            store
                .conn
                .pragma_query_value(None, name, |r| r.get(0))
                .expect("pragma")
        };
        assert_eq!(get("mmap_size"), 0);
        assert_eq!(get("temp_store"), 2, "MEMORY");
        assert_eq!(get("synchronous"), 0, "OFF");
        assert_eq!(get("foreign_keys"), 1);
        let mode: String = store
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .expect("pragma");
        assert_eq!(mode, "delete");
    }
}
