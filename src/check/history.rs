//! The recorded history: one [`Op`] per client invocation, its parsed
//! [`Command`] and, when a response came back, the parsed [`Outcome`].
//!
//! Histories are saved and loaded as JSON lines (one `Op` per line) so a run can
//! be re-checked later. Parsing never panics: bad JSON is a [`HistoryError`]
//! that names the operation (or the line) at fault.
//!
//! Invariant: `complete_ns == None` means the outcome is unknown (timeout,
//! connection error), and then `result` is ignored by the checker.
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::Path;

/// One command of the accounts application, as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "snake_case")]
pub enum Command {
    Open {
        account: String,
        cents: u64,
    },
    Deposit {
        account: String,
        cents: u64,
        reference: Option<String>,
    },
    Withdraw {
        account: String,
        cents: u64,
        reference: Option<String>,
    },
    Transfer {
        from: String,
        to: String,
        cents: u64,
        reference: Option<String>,
    },
    Balance {
        account: String,
    },
    Audit,
    Find {
        reference: String,
    },
}

impl Command {
    /// The client reference of a write, if any.
    pub fn reference(&self) -> Option<&str> {
        match self {
            Command::Deposit { reference, .. }
            | Command::Withdraw { reference, .. }
            | Command::Transfer { reference, .. } => reference.as_deref(),
            _ => None,
        }
    }

    /// True for commands that may change the bank.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Command::Open { .. }
                | Command::Deposit { .. }
                | Command::Withdraw { .. }
                | Command::Transfer { .. }
        )
    }

    /// Parses the command text the client sent (the application's grammar,
    /// loosely: this only needs to read what the workload wrote). `None` for a
    /// verb the checker does not model (`statement`) or malformed text.
    pub fn parse(text: &str) -> Option<Command> {
        let mut words: Vec<&str> = text.split_whitespace().collect();
        let mut reference = None;
        if let Some(last) = words.last() {
            if let Some(r) = last.strip_prefix("ref=") {
                reference = Some(r.to_string());
                words.pop();
            }
        }
        let num = |s: &str| s.parse::<u64>().ok();
        match words.as_slice() {
            ["open", a] => Some(Command::Open {
                account: a.to_string(),
                cents: 0,
            }),
            ["open", a, c] => Some(Command::Open {
                account: a.to_string(),
                cents: num(c)?,
            }),
            ["deposit", a, c] => Some(Command::Deposit {
                account: a.to_string(),
                cents: num(c)?,
                reference,
            }),
            ["withdraw", a, c] => Some(Command::Withdraw {
                account: a.to_string(),
                cents: num(c)?,
                reference,
            }),
            ["transfer", f, t, c] => Some(Command::Transfer {
                from: f.to_string(),
                to: t.to_string(),
                cents: num(c)?,
                reference,
            }),
            ["balance", a] => Some(Command::Balance {
                account: a.to_string(),
            }),
            ["audit"] => Some(Command::Audit),
            ["find", r] => Some(Command::Find {
                reference: r.to_string(),
            }),
            _ => None,
        }
    }
}

/// What the model needs from one JSON response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub ok: bool,
    /// Business error code (`insufficient_funds`, `unknown_account`, ...).
    pub error: Option<String>,
    /// `balance_cents` (open, deposit, withdraw, balance).
    pub balance_cents: Option<u64>,
    /// Transfer: the sender's balance after.
    pub from_balance_cents: Option<u64>,
    /// Transfer: the receiver's balance after.
    pub to_balance_cents: Option<u64>,
    /// Transfer: the fee charged (`fee.cents`, else `txn.fee_cents`).
    pub fee_cents: Option<u64>,
    /// Find: number of transactions with the reference.
    pub count: Option<u64>,
    /// Audit: the sum of all balances.
    pub total_cents: Option<u64>,
}

/// One client invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    pub client: u64,
    pub invoke_ns: u64,
    /// `None`: the outcome is unknown (timeout, error).
    pub complete_ns: Option<u64>,
    pub command: Command,
    pub result: Option<Outcome>,
}

/// What `find <ref>` said after the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindResult {
    /// Transactions carrying the reference.
    pub count: u64,
    /// The fee of the (first) transaction found, if any.
    pub fee_cents: Option<u64>,
}

/// Errors reading a history; each names who is at fault.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("op {op}: the server's response is not valid: {reason}")]
    BadResponse { op: usize, reason: String },
    #[error("history file {path}, line {line}: {reason}")]
    BadLine {
        path: String,
        line: usize,
        reason: String,
    },
    #[error("history file {path}: storage error: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn field_u64(v: &serde_json::Value, key: &str) -> Result<Option<u64>, String> {
    match v.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(x) => x
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("field {key} is not a non-negative integer")),
    }
}

/// Parses the JSON response of op number `op` (used only in error messages).
pub fn parse_response(op: usize, bytes: &[u8]) -> Result<Outcome, HistoryError> {
    let bad = |reason: String| HistoryError::BadResponse { op, reason };
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    if !v.is_object() {
        return Err(bad("not a JSON object".into()));
    }
    let ok = v
        .get("ok")
        .and_then(|x| x.as_bool())
        .ok_or_else(|| bad("missing boolean field ok".into()))?;
    let error = match v.get("error") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(bad("field error is not a string".into())),
    };
    if !ok && error.is_none() {
        return Err(bad("ok is false but there is no error code".into()));
    }
    let mut fee_cents = match v.get("fee") {
        Some(f) if f.is_object() => field_u64(f, "cents").map_err(bad)?,
        _ => None,
    };
    if fee_cents.is_none() {
        if let Some(t) = v.get("txn").filter(|t| t.is_object()) {
            fee_cents = field_u64(t, "fee_cents").map_err(bad)?;
        }
    }
    Ok(Outcome {
        ok,
        error,
        balance_cents: field_u64(&v, "balance_cents").map_err(bad)?,
        from_balance_cents: field_u64(&v, "from_balance_cents").map_err(bad)?,
        to_balance_cents: field_u64(&v, "to_balance_cents").map_err(bad)?,
        fee_cents,
        count: field_u64(&v, "count").map_err(bad)?,
        total_cents: field_u64(&v, "total_cents").map_err(bad)?,
    })
}

/// Writes a history as JSON lines.
pub fn save_history(path: &Path, ops: &[Op]) -> Result<(), HistoryError> {
    let p = path.display().to_string();
    let io = |source| HistoryError::Io {
        path: p.clone(),
        source,
    };
    let file = std::fs::File::create(path).map_err(io)?;
    let mut w = std::io::BufWriter::new(file);
    for (i, op) in ops.iter().enumerate() {
        let line = serde_json::to_string(op).map_err(|e| HistoryError::BadLine {
            path: p.clone(),
            line: i + 1,
            reason: e.to_string(),
        })?;
        w.write_all(line.as_bytes()).map_err(io)?;
        w.write_all(b"\n").map_err(io)?;
    }
    w.flush().map_err(io)?;
    Ok(())
}

/// Reads a history written by [`save_history`]. Blank lines are skipped.
pub fn load_history(path: &Path) -> Result<Vec<Op>, HistoryError> {
    let p = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| HistoryError::Io {
        path: p.clone(),
        source,
    })?;
    let mut ops = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| HistoryError::Io {
            path: p.clone(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let op: Op = serde_json::from_str(&line).map_err(|e| HistoryError::BadLine {
            path: p.clone(),
            line: i + 1,
            reason: e.to_string(),
        })?;
        ops.push(op);
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_transfer_response() {
        let r =
            br#"{"ok":true,"command":"transfer","from_balance_cents":7992,"to_balance_cents":2500,
          "fee":{"cents":8,"rate_bps":15},"txn":{"fee_cents":8}}"#;
        let o = parse_response(3, r);
        assert!(matches!(
            o,
            Ok(Outcome {
                ok: true,
                fee_cents: Some(8),
                from_balance_cents: Some(7992),
                ..
            })
        ));
    }

    #[test]
    fn bad_json_names_the_op() {
        match parse_response(42, b"{not json") {
            Err(e) => assert!(e.to_string().contains("op 42"), "{e}"),
            Ok(o) => panic!("accepted garbage: {o:?}"),
        }
        assert!(parse_response(1, br#"{"ok":false}"#).is_err());
        assert!(parse_response(1, br#"{"ok":true,"balance_cents":-3}"#).is_err());
    }

    #[test]
    fn parses_commands() {
        assert_eq!(
            Command::parse("transfer a b 10 ref=x"),
            Some(Command::Transfer {
                from: "a".into(),
                to: "b".into(),
                cents: 10,
                reference: Some("x".into())
            })
        );
        assert_eq!(
            Command::parse("open a"),
            Some(Command::Open {
                account: "a".into(),
                cents: 0
            })
        );
        assert_eq!(Command::parse("bogus"), None);
    }

    #[test]
    fn round_trips_jsonl() -> Result<(), HistoryError> {
        let dir = std::env::temp_dir().join(format!("bunker-hist-{}", std::process::id()));
        let ops = vec![Op {
            client: 1,
            invoke_ns: 5,
            complete_ns: None,
            command: Command::Audit,
            result: None,
        }];
        save_history(&dir, &ops)?;
        let back = load_history(&dir)?;
        let _ = std::fs::remove_file(&dir);
        assert_eq!(back, ops);
        Ok(())
    }
}
