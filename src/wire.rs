//! The wire encoding of consensus messages.
//!
//! What it does: turns a [`Message`] into bytes and back, versioned and
//! bounded, without copying entry payloads on decode (they are slices of the
//! received buffer). Decoding never panics and never trusts a length it has
//! not checked against the bytes actually present: a malformed message is a
//! [`WireError`] that names what is wrong, and the transport closes that one
//! connection.
//!
//! What it does not do: framing, checksums or encryption (the transport's
//! frames carry a length and an xxh3 checksum, inside TLS), or semantic
//! validation (the core checks that entries continue the log, terms, ...).
//!
//! Layout (little-endian): `version:u8 kind:u8 from:u64 to:u64 term:u64`
//! then the body of that kind (see `encode_body`).

use crate::raft::{AppendResult, Body, Message};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use ringlog::{Entry, EntryKind, LogId};

/// The only version this build speaks.
pub const WIRE_VERSION: u8 = 1;
/// Entries in one append message, at most.
pub const ENTRIES_PER_MESSAGE_MAX: usize = 1 << 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("peer sent wire version {0}, this build speaks {WIRE_VERSION}")]
    Version(u8),
    #[error("peer sent unknown message kind {0}")]
    Kind(u8),
    #[error("message truncated: needed {needed} more bytes for {what}")]
    Truncated { what: &'static str, needed: usize },
    #[error("message has {0} trailing bytes")]
    Trailing(usize),
    #[error("bad {what} value {value}")]
    Value { what: &'static str, value: u64 },
    #[error("append carries {0} entries, more than {ENTRIES_PER_MESSAGE_MAX}")]
    TooManyEntries(u64),
}

const KIND_PRE_VOTE: u8 = 1;
const KIND_PRE_VOTE_RESPONSE: u8 = 2;
const KIND_VOTE: u8 = 3;
const KIND_VOTE_RESPONSE: u8 = 4;
const KIND_APPEND: u8 = 5;
const KIND_APPEND_RESPONSE: u8 = 6;
const KIND_HEARTBEAT: u8 = 7;
const KIND_HEARTBEAT_RESPONSE: u8 = 8;

const HEADER_BYTES: usize = 2 + 3 * 8;
const ENTRY_HEADER_BYTES: usize = 8 + 8 + 1 + 4;

/// The exact size `encode` will produce.
pub fn encoded_len(msg: &Message) -> usize {
    HEADER_BYTES
        + match &msg.body {
            Body::PreVote { .. } | Body::Vote { .. } => 16,
            Body::PreVoteResponse { .. } | Body::VoteResponse { .. } => 1,
            Body::Append { entries, .. } => {
                32 + 4
                    + entries
                        .iter()
                        .map(|e| ENTRY_HEADER_BYTES + e.data.len())
                        .sum::<usize>()
            }
            Body::AppendResponse { result, .. } => {
                8 + 1
                    + match result {
                        AppendResult::Success { .. } => 8,
                        AppendResult::Reject { .. } => 8 + 8 + 1 + 8,
                    }
            }
            Body::Heartbeat { .. } | Body::HeartbeatResponse { .. } => 16,
        }
}

/// Appends the encoding of `msg` to `out`.
pub fn encode(msg: &Message, out: &mut BytesMut) {
    let start = out.len();
    out.reserve(encoded_len(msg));
    out.put_u8(WIRE_VERSION);
    out.put_u8(kind_of(&msg.body));
    out.put_u64_le(msg.from);
    out.put_u64_le(msg.to);
    out.put_u64_le(msg.term);
    encode_body(&msg.body, out);
    debug_assert_eq!(out.len() - start, encoded_len(msg));
}

fn kind_of(body: &Body) -> u8 {
    match body {
        Body::PreVote { .. } => KIND_PRE_VOTE,
        Body::PreVoteResponse { .. } => KIND_PRE_VOTE_RESPONSE,
        Body::Vote { .. } => KIND_VOTE,
        Body::VoteResponse { .. } => KIND_VOTE_RESPONSE,
        Body::Append { .. } => KIND_APPEND,
        Body::AppendResponse { .. } => KIND_APPEND_RESPONSE,
        Body::Heartbeat { .. } => KIND_HEARTBEAT,
        Body::HeartbeatResponse { .. } => KIND_HEARTBEAT_RESPONSE,
    }
}

fn encode_body(body: &Body, out: &mut BytesMut) {
    match body {
        Body::PreVote { last_log } | Body::Vote { last_log } => {
            out.put_u64_le(last_log.index);
            out.put_u64_le(last_log.term);
        }
        Body::PreVoteResponse { granted } | Body::VoteResponse { granted } => {
            out.put_u8(u8::from(*granted));
        }
        Body::Append {
            prev,
            entries,
            commit,
            seq,
        } => {
            out.put_u64_le(prev.index);
            out.put_u64_le(prev.term);
            out.put_u64_le(*commit);
            out.put_u64_le(*seq);
            out.put_u32_le(entries.len() as u32);
            for e in entries {
                out.put_u64_le(e.index);
                out.put_u64_le(e.term);
                out.put_u8(e.kind as u8);
                out.put_u32_le(e.data.len() as u32);
                out.put_slice(&e.data);
            }
        }
        Body::AppendResponse { result, seq } => {
            out.put_u64_le(*seq);
            match result {
                AppendResult::Success { match_index } => {
                    out.put_u8(0);
                    out.put_u64_le(*match_index);
                }
                AppendResult::Reject {
                    rejected_prev,
                    hint_index,
                    hint_term,
                } => {
                    out.put_u8(1);
                    out.put_u64_le(*rejected_prev);
                    out.put_u64_le(*hint_index);
                    out.put_u8(u8::from(hint_term.is_some()));
                    out.put_u64_le(hint_term.unwrap_or(0));
                }
            }
        }
        Body::Heartbeat { commit, seq } => {
            out.put_u64_le(*commit);
            out.put_u64_le(*seq);
        }
        Body::HeartbeatResponse { match_index, seq } => {
            out.put_u64_le(*match_index);
            out.put_u64_le(*seq);
        }
    }
}

/// A cursor over received bytes that checks every read.
struct Reader {
    buf: Bytes,
}

impl Reader {
    fn need(&self, what: &'static str, n: usize) -> Result<(), WireError> {
        if self.buf.remaining() < n {
            return Err(WireError::Truncated {
                what,
                needed: n - self.buf.remaining(),
            });
        }
        Ok(())
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        self.need(what, 1)?;
        Ok(self.buf.get_u8())
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        self.need(what, 4)?;
        Ok(self.buf.get_u32_le())
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        self.need(what, 8)?;
        Ok(self.buf.get_u64_le())
    }
    fn bool(&mut self, what: &'static str) -> Result<bool, WireError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(WireError::Value {
                what,
                value: value as u64,
            }),
        }
    }
    fn log_id(&mut self, what: &'static str) -> Result<LogId, WireError> {
        Ok(LogId::new(self.u64(what)?, self.u64(what)?))
    }
    fn bytes(&mut self, what: &'static str, n: usize) -> Result<Bytes, WireError> {
        self.need(what, n)?;
        Ok(self.buf.split_to(n))
    }
}

/// Decodes one message that fills `buf` exactly.
pub fn decode(buf: Bytes) -> Result<Message, WireError> {
    let mut r = Reader { buf };
    let version = r.u8("version")?;
    if version != WIRE_VERSION {
        return Err(WireError::Version(version));
    }
    let kind = r.u8("kind")?;
    let from = r.u64("from")?;
    let to = r.u64("to")?;
    let term = r.u64("term")?;
    let body = match kind {
        KIND_PRE_VOTE => Body::PreVote {
            last_log: r.log_id("last log")?,
        },
        KIND_VOTE => Body::Vote {
            last_log: r.log_id("last log")?,
        },
        KIND_PRE_VOTE_RESPONSE => Body::PreVoteResponse {
            granted: r.bool("granted")?,
        },
        KIND_VOTE_RESPONSE => Body::VoteResponse {
            granted: r.bool("granted")?,
        },
        KIND_APPEND => decode_append(&mut r)?,
        KIND_APPEND_RESPONSE => {
            let seq = r.u64("seq")?;
            let result = match r.u8("result")? {
                0 => AppendResult::Success {
                    match_index: r.u64("match index")?,
                },
                1 => {
                    let rejected_prev = r.u64("rejected prev")?;
                    let hint_index = r.u64("hint index")?;
                    let has_term = r.bool("hint term flag")?;
                    let hint_term = r.u64("hint term")?;
                    AppendResult::Reject {
                        rejected_prev,
                        hint_index,
                        hint_term: has_term.then_some(hint_term),
                    }
                }
                value => {
                    return Err(WireError::Value {
                        what: "append result",
                        value: value as u64,
                    })
                }
            };
            Body::AppendResponse { result, seq }
        }
        KIND_HEARTBEAT => Body::Heartbeat {
            commit: r.u64("commit")?,
            seq: r.u64("seq")?,
        },
        KIND_HEARTBEAT_RESPONSE => Body::HeartbeatResponse {
            match_index: r.u64("match index")?,
            seq: r.u64("seq")?,
        },
        other => return Err(WireError::Kind(other)),
    };
    if r.buf.has_remaining() {
        return Err(WireError::Trailing(r.buf.remaining()));
    }
    Ok(Message {
        from,
        to,
        term,
        body,
    })
}

fn decode_append(r: &mut Reader) -> Result<Body, WireError> {
    let prev = r.log_id("prev")?;
    let commit = r.u64("commit")?;
    let seq = r.u64("seq")?;
    let count = r.u32("entry count")? as usize;
    if count > ENTRIES_PER_MESSAGE_MAX {
        return Err(WireError::TooManyEntries(count as u64));
    }
    // Every entry needs at least its header: a count larger than the bytes
    // can hold is refused before anything is allocated for it.
    r.need("entries", count * ENTRY_HEADER_BYTES)?;
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let index = r.u64("entry index")?;
        let term = r.u64("entry term")?;
        let kind_byte = r.u8("entry kind")?;
        let kind = EntryKind::from_u8(kind_byte).ok_or(WireError::Value {
            what: "entry kind",
            value: kind_byte as u64,
        })?;
        let len = r.u32("entry length")? as usize;
        let data = r.bytes("entry data", len)?;
        entries.push(Entry {
            index,
            term,
            kind,
            data,
        });
    }
    Ok(Body::Append {
        prev,
        entries,
        commit,
        seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(msg: Message) {
        let mut out = BytesMut::new();
        encode(&msg, &mut out);
        assert_eq!(out.len(), encoded_len(&msg));
        assert_eq!(decode(out.freeze()), Ok(msg));
    }

    fn arb_body() -> impl Strategy<Value = Body> {
        let log_id = (any::<u64>(), any::<u64>()).prop_map(|(i, t)| LogId::new(i, t));
        let entry = (
            any::<u64>(),
            any::<u64>(),
            1u8..=3,
            proptest::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(index, term, kind, data)| Entry {
                index,
                term,
                kind: EntryKind::from_u8(kind).expect("valid kind"),
                data: Bytes::from(data),
            });
        prop_oneof![
            log_id
                .clone()
                .prop_map(|last_log| Body::PreVote { last_log }),
            log_id.prop_map(|last_log| Body::Vote { last_log }),
            any::<bool>().prop_map(|granted| Body::PreVoteResponse { granted }),
            any::<bool>().prop_map(|granted| Body::VoteResponse { granted }),
            (
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                proptest::collection::vec(entry, 0..8)
            )
                .prop_map(|(i, t, commit, seq, entries)| Body::Append {
                    prev: LogId::new(i, t),
                    entries,
                    commit,
                    seq
                }),
            (any::<u64>(), any::<u64>()).prop_map(|(m, seq)| Body::AppendResponse {
                result: AppendResult::Success { match_index: m },
                seq
            }),
            (
                any::<u64>(),
                any::<u64>(),
                proptest::option::of(any::<u64>()),
                any::<u64>()
            )
                .prop_map(|(rejected_prev, hint_index, hint_term, seq)| {
                    Body::AppendResponse {
                        result: AppendResult::Reject {
                            rejected_prev,
                            hint_index,
                            hint_term,
                        },
                        seq,
                    }
                }),
            (any::<u64>(), any::<u64>()).prop_map(|(commit, seq)| Body::Heartbeat { commit, seq }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(match_index, seq)| Body::HeartbeatResponse { match_index, seq }),
        ]
    }

    proptest! {
        #[test]
        fn every_message_round_trips(from in any::<u64>(), to in any::<u64>(), term in any::<u64>(), body in arb_body()) {
            round_trip(Message { from, to, term, body });
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(Bytes::from(data));
        }

        #[test]
        fn every_truncation_is_an_error(body in arb_body(), cut in any::<prop::sample::Index>()) {
            let msg = Message { from: 1, to: 2, term: 3, body };
            let mut out = BytesMut::new();
            encode(&msg, &mut out);
            let cut = cut.index(out.len());
            prop_assert!(decode(out.freeze().slice(..cut)).is_err());
        }
    }

    #[test]
    fn huge_entry_count_is_refused_without_allocating() {
        let mut out = BytesMut::new();
        encode(
            &Message {
                from: 1,
                to: 2,
                term: 3,
                body: Body::Append {
                    prev: LogId::ZERO,
                    entries: vec![],
                    commit: 0,
                    seq: 0,
                },
            },
            &mut out,
        );
        let len = out.len();
        out[len - 4..].copy_from_slice(&(ENTRIES_PER_MESSAGE_MAX as u32).to_le_bytes());
        assert!(matches!(
            decode(out.clone().freeze()),
            Err(WireError::Truncated { .. })
        ));
        out[len - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode(out.freeze()),
            Err(WireError::TooManyEntries(u32::MAX as u64))
        );
    }

    #[test]
    fn wrong_version_and_kind_are_named() {
        assert_eq!(decode(Bytes::from_static(&[9])), Err(WireError::Version(9)));
        let mut bad = vec![WIRE_VERSION, 99];
        bad.extend([0u8; 24]);
        assert_eq!(decode(Bytes::from(bad)), Err(WireError::Kind(99)));
    }
}
