//! Response types: what every command answers, as one JSON object.
//!
//! What it does: defines [`Response`] (an [`Outcome`] or a [`Rejection`]), its
//! JSON form, and the [`Status`] byte a response travels with in `serve` mode
//! (and the exit code it maps to in `exec` mode). Tests, the demo and the fault
//! checker decode responses with these same types.
//!
//! JSON form: success is `{"ok":true,"command":"<verb>", ...fields}`, failure
//! is `{"ok":false,"error":"<code>","message":"<text>"}`. Every number is an
//! integer that fits in 53 bits (see `command::MAX_AMOUNT_CENTS`), so any JSON
//! reader decodes it exactly.
//!
//! Invariants: a response's status follows from its content alone
//! ([`Response::status`]): business error codes give status 1, `bad_command`
//! and `internal` give status 2.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::fee::FeeQuote;

/// The status byte of a response frame, and the exit code of `exec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The command ran.
    Ok = 0,
    /// The command was refused by the bank's rules (unknown account,
    /// insufficient funds, ...): a valid answer the client must see.
    Business = 1,
    /// The command was malformed (or the application failed internally).
    BadCommand = 2,
}

impl Status {
    pub fn as_byte(self) -> u8 {
        self as u8
    }

    pub fn from_byte(byte: u8) -> Option<Status> {
        match byte {
            0 => Some(Status::Ok),
            1 => Some(Status::Business),
            2 => Some(Status::BadCommand),
            _ => None,
        }
    }
}

/// What kind of money movement a transaction is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxnKind {
    Open,
    Deposit,
    Withdraw,
    Transfer,
}

impl TxnKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TxnKind::Open => "open",
            TxnKind::Deposit => "deposit",
            TxnKind::Withdraw => "withdraw",
            TxnKind::Transfer => "transfer",
        }
    }

    pub fn from_str_opt(text: &str) -> Option<TxnKind> {
        match text {
            "open" => Some(TxnKind::Open),
            "deposit" => Some(TxnKind::Deposit),
            "withdraw" => Some(TxnKind::Withdraw),
            "transfer" => Some(TxnKind::Transfer),
            _ => None,
        }
    }
}

/// One recorded transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    /// 128 random bits from the OS, as 32 lowercase hex digits.
    pub id: String,
    /// Position in the bank's ledger (1, 2, 3, ...).
    pub seq: i64,
    pub kind: TxnKind,
    /// Wall-clock time the transaction was recorded, microseconds since 1970.
    pub at_unix_us: i64,
    /// The amount moved (the opening balance for `open`).
    pub cents: i64,
    /// The fee the sender paid to the house (transfers only; else 0).
    pub fee_cents: i64,
    /// Debited account (withdraw, transfer).
    pub from: Option<String>,
    /// Credited account (open, deposit, transfer).
    pub to: Option<String>,
    /// The client's reference, if it gave one.
    #[serde(rename = "ref")]
    pub reference: Option<String>,
}

/// How one statement entry moved the account's balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    Open,
    Deposit,
    Withdraw,
    TransferOut,
    TransferIn,
    /// A fee credited to the house account.
    Fee,
}

/// One line of an account statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The transaction's id.
    pub txn: String,
    pub seq: i64,
    pub kind: EntryKind,
    pub at_unix_us: i64,
    /// Signed change of this account's balance.
    pub delta_cents: i64,
    pub balance_after_cents: i64,
    /// The other account of a transfer (the payer, for a fee).
    pub counterparty: Option<String>,
    #[serde(rename = "ref")]
    pub reference: Option<String>,
}

/// The bank's books, checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audit {
    /// Sum of all balances.
    pub total_cents: i64,
    pub accounts: u64,
    pub transactions: u64,
    /// Money that came in: opening balances plus deposits.
    pub minted_cents: i64,
    /// Money that went out: withdrawals.
    pub burned_cents: i64,
    /// The house account's balance (the fees it collected, less what it spent).
    pub house_cents: i64,
    /// `total_cents == minted_cents - burned_cents`, recomputed from the
    /// transaction log.
    pub conserved: bool,
    /// Every account's balance equals the sum of its postings, and the bank's
    /// running totals equal the ones recomputed from the transaction log.
    pub ledger_consistent: bool,
    /// SQLite's `PRAGMA quick_check` verdict ("ok" when the file is sound).
    pub integrity: String,
    /// xxh3-64 (hex) over every account (name, balance) and every transaction,
    /// in a canonical order: equal states have equal checksums.
    pub checksum: String,
}

/// A successful command's result. The JSON form carries the verb in `command`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Outcome {
    Open {
        account: String,
        balance_cents: i64,
        txn: Txn,
    },
    Deposit {
        account: String,
        balance_cents: i64,
        txn: Txn,
    },
    Withdraw {
        account: String,
        balance_cents: i64,
        txn: Txn,
    },
    Transfer {
        from_balance_cents: i64,
        to_balance_cents: i64,
        fee: FeeQuote,
        txn: Txn,
    },
    Balance {
        account: String,
        balance_cents: i64,
    },
    Statement {
        account: String,
        balance_cents: i64,
        /// Newest first.
        entries: Vec<Entry>,
    },
    Audit(Audit),
    Find {
        #[serde(rename = "ref")]
        reference: String,
        /// How many transactions carry this reference (all of them).
        count: u64,
        /// The first of them, oldest first, at most `store::FIND_RESULTS_MAX`.
        txns: Vec<Txn>,
    },
}

/// Why a command did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    // Business errors (status 1): the bank's rules said no.
    UnknownAccount,
    AccountExists,
    InsufficientFunds,
    /// The money supply would pass `command::MAX_AMOUNT_CENTS`.
    LimitExceeded,
    // Status 2: the command was malformed, or the application failed.
    BadCommand,
    Internal,
}

impl ErrorCode {
    pub fn status(self) -> Status {
        match self {
            ErrorCode::UnknownAccount
            | ErrorCode::AccountExists
            | ErrorCode::InsufficientFunds
            | ErrorCode::LimitExceeded => Status::Business,
            ErrorCode::BadCommand | ErrorCode::Internal => Status::BadCommand,
        }
    }
}

/// A refused command: a machine-readable code and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub error: ErrorCode,
    pub message: String,
}

/// One response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Ok(Outcome),
    Err(Rejection),
}

impl Response {
    pub fn rejected(error: ErrorCode, message: impl Into<String>) -> Response {
        Response::Err(Rejection {
            error,
            message: message.into(),
        })
    }

    pub fn status(&self) -> Status {
        match self {
            Response::Ok(_) => Status::Ok,
            Response::Err(rejection) => rejection.error.status(),
        }
    }

    /// The response as compact JSON bytes (no trailing newline).
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing these types into memory cannot fail: every map key is a
        // string and every value is a plain number, string, bool or list.
        serde_json::to_vec(self).expect("responses always serialize")
    }

    /// Decodes a response from JSON bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Response, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[derive(Serialize)]
struct OkWire<'a> {
    ok: bool,
    #[serde(flatten)]
    outcome: &'a Outcome,
}

#[derive(Serialize)]
struct ErrWire<'a> {
    ok: bool,
    #[serde(flatten)]
    rejection: &'a Rejection,
}

impl Serialize for Response {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Response::Ok(outcome) => OkWire { ok: true, outcome }.serialize(serializer),
            Response::Err(rejection) => ErrWire {
                ok: false,
                rejection,
            }
            .serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Response {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Response, D::Error> {
        let mut value = serde_json::Value::deserialize(deserializer)?;
        let object = value
            .as_object_mut()
            .ok_or_else(|| D::Error::custom("a response is a JSON object"))?;
        let ok = object
            .remove("ok")
            .and_then(|v| v.as_bool())
            .ok_or_else(|| D::Error::custom("a response has a boolean \"ok\" field"))?;
        if ok {
            Outcome::deserialize(value)
                .map(Response::Ok)
                .map_err(D::Error::custom)
        } else {
            Rejection::deserialize(value)
                .map(Response::Err)
                .map_err(D::Error::custom)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fee::MoonPhase;

    fn txn() -> Txn {
        Txn {
            id: "00112233445566778899aabbccddeeff".into(),
            seq: 7,
            kind: TxnKind::Transfer,
            at_unix_us: 1_713_873_600_000_000,
            cents: 10_000,
            fee_cents: 60,
            from: Some("alice".into()),
            to: Some("bob".into()),
            reference: Some("r1".into()),
        }
    }

    #[test]
    fn json_shape_is_documented_shape() {
        let response = Response::Ok(Outcome::Balance {
            account: "alice".into(),
            balance_cents: 5,
        });
        assert_eq!(
            String::from_utf8(response.to_json()).expect("utf8"),
            r#"{"ok":true,"command":"balance","account":"alice","balance_cents":5}"#
        );
        let rejected = Response::rejected(ErrorCode::InsufficientFunds, "no");
        assert_eq!(
            String::from_utf8(rejected.to_json()).expect("utf8"),
            r#"{"ok":false,"error":"insufficient_funds","message":"no"}"#
        );
        assert_eq!(rejected.status(), Status::Business);
    }

    #[test]
    fn every_outcome_round_trips() {
        let outcomes = vec![
            Outcome::Transfer {
                from_balance_cents: 1,
                to_balance_cents: 2,
                fee: FeeQuote {
                    cents: 60,
                    rate_bps: 30,
                    multiplier: 2,
                    utc_hour: 12,
                    moon: MoonPhase::Full,
                },
                txn: txn(),
            },
            Outcome::Statement {
                account: "alice".into(),
                balance_cents: 3,
                entries: vec![Entry {
                    txn: "ab".into(),
                    seq: 1,
                    kind: EntryKind::TransferOut,
                    at_unix_us: 1,
                    delta_cents: -5,
                    balance_after_cents: 3,
                    counterparty: Some("bob".into()),
                    reference: None,
                }],
            },
            Outcome::Audit(Audit {
                total_cents: 1,
                accounts: 2,
                transactions: 3,
                minted_cents: 4,
                burned_cents: 3,
                house_cents: 0,
                conserved: true,
                ledger_consistent: true,
                integrity: "ok".into(),
                checksum: "0123456789abcdef".into(),
            }),
            Outcome::Find {
                reference: "r1".into(),
                count: 1,
                txns: vec![txn()],
            },
        ];
        for outcome in outcomes {
            let response = Response::Ok(outcome);
            let decoded = Response::from_json(&response.to_json()).expect("decodes");
            assert_eq!(decoded, response);
        }
        for code in [
            ErrorCode::UnknownAccount,
            ErrorCode::BadCommand,
            ErrorCode::Internal,
        ] {
            let response = Response::rejected(code, "why");
            assert_eq!(
                Response::from_json(&response.to_json()).expect("decodes"),
                response
            );
        }
    }

    #[test]
    fn decoding_rejects_junk() {
        for junk in [
            &b"[]"[..],
            b"{}",
            b"{\"ok\":1}",
            b"{\"ok\":true}",
            b"not json",
        ] {
            assert!(Response::from_json(junk).is_err());
        }
    }

    #[test]
    fn status_bytes_round_trip() {
        for status in [Status::Ok, Status::Business, Status::BadCommand] {
            assert_eq!(Status::from_byte(status.as_byte()), Some(status));
        }
        assert_eq!(Status::from_byte(3), None);
    }
}
