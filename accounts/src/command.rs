//! The command grammar: parses one command (UTF-8 text) into a [`Command`].
//!
//! What it does: validates every token (account names, amounts, client
//! references, limits) so that the store only ever sees well-formed input, and
//! prints a command back in canonical form (`Display`), so that
//! `parse(c.to_string()) == c` for every valid command.
//!
//! What it does not do: it never looks at the database. "Unknown account" or
//! "insufficient funds" are business errors decided by the store; everything
//! this module rejects is a *bad command* (status 2), decided by the text alone.
//!
//! Grammar (tokens are separated by runs of spaces or tabs; one trailing
//! `\n` or `\r\n` is allowed, any other line break is not):
//!
//! ```text
//! open      <account> [<initial_cents>]
//! deposit   <account> <cents> [ref=<token>]
//! withdraw  <account> <cents> [ref=<token>]
//! transfer  <from> <to> <cents> [ref=<token>]
//! balance   <account>
//! statement <account> [<limit>]
//! audit
//! find      <token>
//! ```
//!
//! Invariants: an [`Account`] is 1..=64 bytes of `[a-z0-9_-]` starting with a
//! letter or digit; a [`ClientRef`] is 1..=128 bytes of `[A-Za-z0-9._:-]`;
//! amounts are decimal digits only, at most [`MAX_AMOUNT_CENTS`], and at least
//! 1 except an opening balance (which may be 0); a transfer's two accounts differ;
//! a statement limit is 1..=[`STATEMENT_LIMIT_MAX`].

use std::fmt;

use thiserror::Error;

/// The longest command accepted, in bytes (a valid command is far shorter:
/// the longest is a transfer with two 64-byte names and a 128-byte reference).
pub const COMMAND_BYTES_MAX: usize = 4096;
/// The longest account name, in bytes.
pub const ACCOUNT_BYTES_MAX: usize = 64;
/// The longest client reference, in bytes.
pub const REF_BYTES_MAX: usize = 128;
/// The largest amount one command may carry, and the largest money supply the
/// bank holds: 2^53 - 1 cents, so that every amount, balance and total is
/// exactly representable as a JSON number in any language (doubles included).
pub const MAX_AMOUNT_CENTS: i64 = (1 << 53) - 1;
/// Entries a `statement` returns when no limit is given.
pub const STATEMENT_LIMIT_DEFAULT: u32 = 20;
/// The most entries a `statement` may ask for (bounds the response size).
pub const STATEMENT_LIMIT_MAX: u32 = 1000;
/// The account that collects transfer fees; it exists from the first command on.
pub const HOUSE_ACCOUNT: &str = "house";

/// A validated account name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Account(String);

impl Account {
    /// Validates `name` as an account name.
    pub fn new(name: &str) -> Result<Account, ParseError> {
        let bad = |why: &'static str| ParseError::BadAccount {
            token: shorten(name),
            why,
        };
        if name.is_empty() {
            return Err(bad("it is empty"));
        }
        if name.len() > ACCOUNT_BYTES_MAX {
            return Err(bad("it is longer than 64 bytes"));
        }
        let first = name.as_bytes()[0];
        if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
            return Err(bad("it must start with a lowercase letter or a digit"));
        }
        let allowed =
            |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-';
        if !name.bytes().all(allowed) {
            return Err(bad(
                "only lowercase letters, digits, '_' and '-' are allowed",
            ));
        }
        Ok(Account(name.to_owned()))
    }

    /// The house account, which collects fees.
    pub fn house() -> Account {
        Account(HOUSE_ACCOUNT.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_house(&self) -> bool {
        self.0 == HOUSE_ACCOUNT
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated client reference: an opaque token the client attaches to a
/// money movement so that it can later `find` it (and check it happened once).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientRef(String);

impl ClientRef {
    /// Validates `token` as a client reference.
    pub fn new(token: &str) -> Result<ClientRef, ParseError> {
        let bad = |why: &'static str| ParseError::BadRef {
            token: shorten(token),
            why,
        };
        if token.is_empty() {
            return Err(bad("it is empty"));
        }
        if token.len() > REF_BYTES_MAX {
            return Err(bad("it is longer than 128 bytes"));
        }
        let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-');
        if !token.bytes().all(allowed) {
            return Err(bad(
                "only letters, digits, '.', '_', ':' and '-' are allowed",
            ));
        }
        Ok(ClientRef(token.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Open {
        account: Account,
        initial_cents: i64,
    },
    Deposit {
        account: Account,
        cents: i64,
        reference: Option<ClientRef>,
    },
    Withdraw {
        account: Account,
        cents: i64,
        reference: Option<ClientRef>,
    },
    Transfer {
        from: Account,
        to: Account,
        cents: i64,
        reference: Option<ClientRef>,
    },
    Balance {
        account: Account,
    },
    Statement {
        account: Account,
        limit: u32,
    },
    Audit,
    Find {
        reference: ClientRef,
    },
}

impl Command {
    /// The command's verb, as written.
    pub fn verb(&self) -> &'static str {
        match self {
            Command::Open { .. } => "open",
            Command::Deposit { .. } => "deposit",
            Command::Withdraw { .. } => "withdraw",
            Command::Transfer { .. } => "transfer",
            Command::Balance { .. } => "balance",
            Command::Statement { .. } => "statement",
            Command::Audit => "audit",
            Command::Find { .. } => "find",
        }
    }

    /// Whether the command never changes the database (its delta is empty).
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            Command::Balance { .. }
                | Command::Statement { .. }
                | Command::Audit
                | Command::Find { .. }
        )
    }
}

impl fmt::Display for Command {
    /// The canonical text of the command (single spaces, no trailing newline).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let with_ref = |f: &mut fmt::Formatter<'_>, reference: &Option<ClientRef>| match reference {
            Some(r) => write!(f, " ref={r}"),
            None => Ok(()),
        };
        match self {
            Command::Open {
                account,
                initial_cents,
            } => write!(f, "open {account} {initial_cents}"),
            Command::Deposit {
                account,
                cents,
                reference,
            } => {
                write!(f, "deposit {account} {cents}")?;
                with_ref(f, reference)
            }
            Command::Withdraw {
                account,
                cents,
                reference,
            } => {
                write!(f, "withdraw {account} {cents}")?;
                with_ref(f, reference)
            }
            Command::Transfer {
                from,
                to,
                cents,
                reference,
            } => {
                write!(f, "transfer {from} {to} {cents}")?;
                with_ref(f, reference)
            }
            Command::Balance { account } => write!(f, "balance {account}"),
            Command::Statement { account, limit } => write!(f, "statement {account} {limit}"),
            Command::Audit => f.write_str("audit"),
            Command::Find { reference } => write!(f, "find {reference}"),
        }
    }
}

/// Why a command was rejected before it reached the database. The client is
/// at fault in every case.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    #[error("command is {size_bytes} bytes, longer than the {COMMAND_BYTES_MAX}-byte limit")]
    TooLong { size_bytes: usize },
    #[error("command is not valid UTF-8 (byte {valid_up_to} starts an invalid sequence)")]
    NotUtf8 { valid_up_to: usize },
    #[error("command is empty")]
    Empty,
    #[error("command has a line break inside it: send exactly one command")]
    LineBreak,
    #[error("command has a control character (byte {byte:#04x}) in it")]
    ControlCharacter { byte: u8 },
    #[error("unknown command {verb:?}: expected one of open, deposit, withdraw, transfer, balance, statement, audit, find")]
    UnknownVerb { verb: String },
    #[error("wrong number of arguments for {verb}: usage: {usage}")]
    Usage {
        verb: &'static str,
        usage: &'static str,
    },
    #[error("bad account name {token:?}: {why}")]
    BadAccount { token: String, why: &'static str },
    #[error("bad amount {token:?}: {why}")]
    BadAmount { token: String, why: &'static str },
    #[error("bad client reference {token:?}: {why}")]
    BadRef { token: String, why: &'static str },
    #[error(
        "bad statement limit {token:?}: expected a whole number from 1 to {STATEMENT_LIMIT_MAX}"
    )]
    BadLimit { token: String },
    #[error("transfer from {account} to itself")]
    SameAccount { account: String },
}

const USAGE_OPEN: &str = "open <account> [initial_cents]";
const USAGE_DEPOSIT: &str = "deposit <account> <cents> [ref=<token>]";
const USAGE_WITHDRAW: &str = "withdraw <account> <cents> [ref=<token>]";
const USAGE_TRANSFER: &str = "transfer <from> <to> <cents> [ref=<token>]";
const USAGE_BALANCE: &str = "balance <account>";
const USAGE_STATEMENT: &str = "statement <account> [limit]";
const USAGE_AUDIT: &str = "audit";
const USAGE_FIND: &str = "find <ref>";

/// Parses one command from raw bytes (as read from stdin or a frame).
pub fn parse(bytes: &[u8]) -> Result<Command, ParseError> {
    if bytes.len() > COMMAND_BYTES_MAX {
        return Err(ParseError::TooLong {
            size_bytes: bytes.len(),
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| ParseError::NotUtf8 {
        valid_up_to: e.valid_up_to(),
    })?;
    parse_str(text)
}

/// Parses one command from text.
pub fn parse_str(text: &str) -> Result<Command, ParseError> {
    if text.len() > COMMAND_BYTES_MAX {
        return Err(ParseError::TooLong {
            size_bytes: text.len(),
        });
    }
    // One trailing line break is allowed so that `echo cmd | exec` works.
    let line = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(text);
    if line.contains(['\n', '\r']) {
        return Err(ParseError::LineBreak);
    }
    if let Some(byte) = line.bytes().find(|b| b.is_ascii_control() && *b != b'\t') {
        return Err(ParseError::ControlCharacter { byte });
    }
    let tokens: Vec<&str> = line.split([' ', '\t']).filter(|t| !t.is_empty()).collect();
    let Some((&verb, args)) = tokens.split_first() else {
        return Err(ParseError::Empty);
    };
    match verb {
        "open" => parse_open(args),
        "deposit" => parse_money(args, "deposit", USAGE_DEPOSIT),
        "withdraw" => parse_money(args, "withdraw", USAGE_WITHDRAW),
        "transfer" => parse_transfer(args),
        "balance" => match args {
            [account] => Ok(Command::Balance {
                account: Account::new(account)?,
            }),
            _ => Err(usage("balance", USAGE_BALANCE)),
        },
        "statement" => parse_statement(args),
        "audit" => match args {
            [] => Ok(Command::Audit),
            _ => Err(usage("audit", USAGE_AUDIT)),
        },
        "find" => match args {
            [reference] => Ok(Command::Find {
                reference: ClientRef::new(reference)?,
            }),
            _ => Err(usage("find", USAGE_FIND)),
        },
        other => Err(ParseError::UnknownVerb {
            verb: shorten(other),
        }),
    }
}

fn usage(verb: &'static str, usage: &'static str) -> ParseError {
    ParseError::Usage { verb, usage }
}

fn parse_open(args: &[&str]) -> Result<Command, ParseError> {
    let (account, initial_cents) = match args {
        [account] => (account, 0),
        [account, initial] => (account, parse_cents(initial, 0)?),
        _ => return Err(usage("open", USAGE_OPEN)),
    };
    Ok(Command::Open {
        account: Account::new(account)?,
        initial_cents,
    })
}

/// `deposit` and `withdraw` share one shape.
fn parse_money(
    args: &[&str],
    verb: &'static str,
    usage_text: &'static str,
) -> Result<Command, ParseError> {
    let (args, reference) = split_ref(args)?;
    let [account, cents] = args else {
        return Err(usage(verb, usage_text));
    };
    let account = Account::new(account)?;
    let cents = parse_cents(cents, 1)?;
    Ok(if verb == "deposit" {
        Command::Deposit {
            account,
            cents,
            reference,
        }
    } else {
        Command::Withdraw {
            account,
            cents,
            reference,
        }
    })
}

fn parse_transfer(args: &[&str]) -> Result<Command, ParseError> {
    let (args, reference) = split_ref(args)?;
    let [from, to, cents] = args else {
        return Err(usage("transfer", USAGE_TRANSFER));
    };
    let from = Account::new(from)?;
    let to = Account::new(to)?;
    let cents = parse_cents(cents, 1)?;
    if from == to {
        return Err(ParseError::SameAccount {
            account: from.to_string(),
        });
    }
    Ok(Command::Transfer {
        from,
        to,
        cents,
        reference,
    })
}

fn parse_statement(args: &[&str]) -> Result<Command, ParseError> {
    let (account, limit) = match args {
        [account] => (account, STATEMENT_LIMIT_DEFAULT),
        [account, limit] => (account, parse_limit(limit)?),
        _ => return Err(usage("statement", USAGE_STATEMENT)),
    };
    Ok(Command::Statement {
        account: Account::new(account)?,
        limit,
    })
}

/// Splits an optional trailing `ref=<token>` off the arguments. A `ref=`
/// anywhere else is a misplaced argument, reported as such.
fn split_ref<'a, 'b>(
    args: &'a [&'b str],
) -> Result<(&'a [&'b str], Option<ClientRef>), ParseError> {
    let Some((last, rest)) = args.split_last() else {
        return Ok((args, None));
    };
    if let Some(misplaced) = rest.iter().find(|t| t.starts_with("ref=")) {
        return Err(ParseError::BadRef {
            token: shorten(misplaced),
            why: "ref=<token> must be the last argument, and may appear once",
        });
    }
    match last.strip_prefix("ref=") {
        Some(token) => Ok((rest, Some(ClientRef::new(token)?))),
        None => Ok((args, None)),
    }
}

/// Parses a non-negative amount of cents, at least `min_cents`, at most
/// [`MAX_AMOUNT_CENTS`]. Digits only: no sign, no decimal point, no separators.
fn parse_cents(token: &str, min_cents: i64) -> Result<i64, ParseError> {
    assert!((0..=1).contains(&min_cents));
    let bad = |why: &'static str| ParseError::BadAmount {
        token: shorten(token),
        why,
    };
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(
            "amounts are whole cents written with digits only (no sign, point or separator)",
        ));
    }
    // More than 16 digits is certainly above the limit; checking length first
    // keeps the parse below from overflowing on absurd inputs.
    let cents = if token.trim_start_matches('0').len() > 16 {
        None
    } else {
        token.parse::<i64>().ok()
    };
    match cents {
        Some(c) if c > MAX_AMOUNT_CENTS => Err(bad("above the limit of 9007199254740991 cents")),
        None => Err(bad("above the limit of 9007199254740991 cents")),
        Some(c) if c < min_cents => Err(bad("must be at least 1 cent")),
        Some(c) => Ok(c),
    }
}

fn parse_limit(token: &str) -> Result<u32, ParseError> {
    let bad = || ParseError::BadLimit {
        token: shorten(token),
    };
    if token.is_empty() || token.len() > 4 || !token.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match token.parse::<u32>() {
        Ok(limit) if (1..=STATEMENT_LIMIT_MAX).contains(&limit) => Ok(limit),
        _ => Err(bad()),
    }
}

/// Error messages quote the offending token, cut to a readable length.
fn shorten(token: &str) -> String {
    const SHOWN_CHARS_MAX: usize = 80;
    if token.chars().count() <= SHOWN_CHARS_MAX {
        token.to_owned()
    } else {
        let mut cut: String = token.chars().take(SHOWN_CHARS_MAX).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acct(name: &str) -> Account {
        Account::new(name).expect("valid account")
    }

    #[test]
    fn parses_every_verb() {
        assert_eq!(
            parse(b"open alice 100\n"),
            Ok(Command::Open {
                account: acct("alice"),
                initial_cents: 100
            })
        );
        assert_eq!(
            parse(b"open bob"),
            Ok(Command::Open {
                account: acct("bob"),
                initial_cents: 0
            })
        );
        assert_eq!(
            parse(b"  deposit\talice  5 ref=r-1\r\n"),
            Ok(Command::Deposit {
                account: acct("alice"),
                cents: 5,
                reference: Some(ClientRef::new("r-1").expect("valid"))
            })
        );
        assert_eq!(
            parse(b"withdraw alice 7"),
            Ok(Command::Withdraw {
                account: acct("alice"),
                cents: 7,
                reference: None
            })
        );
        assert_eq!(
            parse(b"transfer alice bob 9 ref=x"),
            Ok(Command::Transfer {
                from: acct("alice"),
                to: acct("bob"),
                cents: 9,
                reference: Some(ClientRef::new("x").expect("valid"))
            })
        );
        assert_eq!(
            parse(b"balance alice"),
            Ok(Command::Balance {
                account: acct("alice")
            })
        );
        assert_eq!(
            parse(b"statement alice"),
            Ok(Command::Statement {
                account: acct("alice"),
                limit: STATEMENT_LIMIT_DEFAULT
            })
        );
        assert_eq!(
            parse(b"statement alice 1000"),
            Ok(Command::Statement {
                account: acct("alice"),
                limit: 1000
            })
        );
        assert_eq!(parse(b"audit"), Ok(Command::Audit));
        assert_eq!(
            parse(b"find abc:1"),
            Ok(Command::Find {
                reference: ClientRef::new("abc:1").expect("valid")
            })
        );
    }

    #[test]
    fn rejects_bad_input_with_the_right_error() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "empty"),
            (b"   \n", "empty"),
            (b"audit\naudit", "line break"),
            (b"audit\n\n", "line break"),
            (b"Open alice", "unknown command"),
            (b"open Alice", "lowercase"),
            (b"open -alice", "start with"),
            (b"open al!ce", "only lowercase"),
            (b"open alice -5", "digits only"),
            (b"open alice 1.5", "digits only"),
            (b"open alice 9007199254740992", "above the limit"),
            (
                b"open alice 99999999999999999999999999999",
                "above the limit",
            ),
            (b"deposit alice 0", "at least 1"),
            (b"deposit alice", "usage"),
            (b"deposit alice 5 6", "usage"),
            (b"deposit alice ref=x 5", "last argument"),
            (b"deposit alice 5 ref=", "empty"),
            (b"deposit alice 5 ref=a/b", "only letters"),
            (b"transfer alice alice 5", "to itself"),
            (b"statement alice 0", "limit"),
            (b"statement alice 1001", "limit"),
            (b"audit now", "usage"),
            (b"find", "usage"),
            (b"balance a\x00", "control"),
            (b"balance \xff", "UTF-8"),
        ];
        for (input, expected) in cases {
            let err = parse(input).expect_err("must be rejected");
            let message = err.to_string();
            assert!(
                message.contains(expected),
                "{:?}: {message:?} does not mention {expected:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn limits_are_exact() {
        let name = "a".repeat(ACCOUNT_BYTES_MAX);
        assert!(Account::new(&name).is_ok());
        assert!(Account::new(&format!("{name}a")).is_err());
        let token = "r".repeat(REF_BYTES_MAX);
        assert!(ClientRef::new(&token).is_ok());
        assert!(ClientRef::new(&format!("{token}r")).is_err());
        assert_eq!(parse_cents("9007199254740991", 1), Ok(MAX_AMOUNT_CENTS));
        assert_eq!(parse_cents("0009007199254740991", 1), Ok(MAX_AMOUNT_CENTS));
        assert!(parse_cents("9007199254740992", 1).is_err());
        let long = vec![b'a'; COMMAND_BYTES_MAX + 1];
        assert_eq!(
            parse(&long),
            Err(ParseError::TooLong {
                size_bytes: COMMAND_BYTES_MAX + 1
            })
        );
    }

    #[test]
    fn error_messages_quote_long_tokens_shortly() {
        let token = "x".repeat(1000);
        let err = parse(format!("frobnicate{token}").as_bytes()).expect_err("unknown verb");
        assert!(err.to_string().len() < 300);
    }

    fn account_strategy() -> impl proptest::strategy::Strategy<Value = Account> {
        use proptest::strategy::Strategy;
        "[a-z0-9][a-z0-9_-]{0,63}".prop_map(|n| Account::new(&n).expect("matches the grammar"))
    }

    fn command_strategy() -> impl proptest::strategy::Strategy<Value = Command> {
        use proptest::prelude::*;
        let cents = 1..=MAX_AMOUNT_CENTS;
        let reference = proptest::option::of(
            "[A-Za-z0-9._:-]{1,128}".prop_map(|r| ClientRef::new(&r).expect("matches the grammar")),
        );
        prop_oneof![
            (account_strategy(), 0..=MAX_AMOUNT_CENTS).prop_map(|(account, initial_cents)| {
                Command::Open {
                    account,
                    initial_cents,
                }
            }),
            (account_strategy(), cents.clone(), reference.clone()).prop_map(
                |(account, cents, reference)| Command::Deposit {
                    account,
                    cents,
                    reference
                }
            ),
            (account_strategy(), cents.clone(), reference.clone()).prop_map(
                |(account, cents, reference)| Command::Withdraw {
                    account,
                    cents,
                    reference
                }
            ),
            (
                account_strategy(),
                account_strategy(),
                cents,
                reference.clone()
            )
                .prop_filter("distinct accounts", |(from, to, _, _)| from != to)
                .prop_map(|(from, to, cents, reference)| Command::Transfer {
                    from,
                    to,
                    cents,
                    reference
                }),
            account_strategy().prop_map(|account| Command::Balance { account }),
            (account_strategy(), 1..=STATEMENT_LIMIT_MAX)
                .prop_map(|(account, limit)| Command::Statement { account, limit }),
            Just(Command::Audit),
            "[A-Za-z0-9._:-]{1,128}".prop_map(|r| Command::Find {
                reference: ClientRef::new(&r).expect("matches the grammar")
            }),
        ]
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,80}") {
            if let Ok(command) = parse_str(&text) {
                proptest::prop_assert_eq!(parse_str(&command.to_string()), Ok(command));
            }
        }

        #[test]
        fn every_command_prints_back_to_itself(command in command_strategy()) {
            let text = command.to_string();
            proptest::prop_assert!(text.len() <= COMMAND_BYTES_MAX);
            proptest::prop_assert_eq!(parse(text.as_bytes()), Ok(command.clone()));
            proptest::prop_assert_eq!(parse(format!("  {}\n", text.replace(' ', " \t ")).as_bytes()), Ok(command));
        }
    }
}
