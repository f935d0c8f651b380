//! Payloads of frames: peer messages, client requests and responses.
//!
//! What it does: encodes and decodes, little endian, with every length
//! checked against what remains; consensus messages use `crate::wire`.
//!
//! What it does not do: framing or checksums (`frame`).
//!
//! Invariant: decoders never panic and reject trailing bytes (fuzzed with
//! the frame decoder).

use crate::replica::{PeerMessage, Reply};
use bytes::{Buf, BufMut, Bytes, BytesMut};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("truncated {0}")]
    Truncated(&'static str),
    #[error("unknown {what} tag {tag}")]
    Tag { what: &'static str, tag: u8 },
    #[error("{0} trailing bytes")]
    Trailing(usize),
    #[error("consensus message: {0}")]
    Wire(#[from] crate::wire::WireError),
    #[error("text is not UTF-8")]
    Utf8,
}

struct Reader(Bytes);

impl Reader {
    fn u8(&mut self, what: &'static str) -> Result<u8, CodecError> {
        if self.0.remaining() < 1 {
            return Err(CodecError::Truncated(what));
        }
        Ok(self.0.get_u8())
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, CodecError> {
        if self.0.remaining() < 8 {
            return Err(CodecError::Truncated(what));
        }
        Ok(self.0.get_u64_le())
    }
    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.0)
    }
    fn text(&mut self) -> Result<String, CodecError> {
        String::from_utf8(self.rest().to_vec()).map_err(|_| CodecError::Utf8)
    }
    fn end(&self) -> Result<(), CodecError> {
        match self.0.remaining() {
            0 => Ok(()),
            n => Err(CodecError::Trailing(n)),
        }
    }
}

const RAFT: u8 = 0;
const CHUNK: u8 = 1;
const ACK: u8 = 2;
const SNAPSHOT_REQUEST: u8 = 3;

pub fn encode_peer(msg: &PeerMessage) -> Bytes {
    let mut out = BytesMut::new();
    match msg {
        PeerMessage::Raft(m) => {
            out.put_u8(RAFT);
            crate::wire::encode(m, &mut out);
        }
        PeerMessage::SnapshotChunk {
            from,
            to,
            term,
            snapshot,
            seq,
            data,
        } => {
            out.put_u8(CHUNK);
            for v in [*from, *to, *term, *snapshot, *seq] {
                out.put_u64_le(v);
            }
            out.put_slice(data);
        }
        PeerMessage::SnapshotAck {
            from,
            to,
            snapshot,
            next_seq,
        } => {
            out.put_u8(ACK);
            for v in [*from, *to, *snapshot, *next_seq] {
                out.put_u64_le(v);
            }
        }
        PeerMessage::SnapshotRequest { from, to } => {
            out.put_u8(SNAPSHOT_REQUEST);
            out.put_u64_le(*from);
            out.put_u64_le(*to);
        }
    }
    out.freeze()
}

pub fn decode_peer(payload: Bytes) -> Result<PeerMessage, CodecError> {
    let mut r = Reader(payload);
    let msg = match r.u8("peer message tag")? {
        RAFT => return Ok(PeerMessage::Raft(crate::wire::decode(r.rest())?)),
        CHUNK => PeerMessage::SnapshotChunk {
            from: r.u64("chunk")?,
            to: r.u64("chunk")?,
            term: r.u64("chunk")?,
            snapshot: r.u64("chunk")?,
            seq: r.u64("chunk")?,
            data: r.rest(),
        },
        ACK => PeerMessage::SnapshotAck {
            from: r.u64("ack")?,
            to: r.u64("ack")?,
            snapshot: r.u64("ack")?,
            next_seq: r.u64("ack")?,
        },
        SNAPSHOT_REQUEST => PeerMessage::SnapshotRequest {
            from: r.u64("snapshot request")?,
            to: r.u64("snapshot request")?,
        },
        tag => {
            return Err(CodecError::Tag {
                what: "peer message",
                tag,
            })
        }
    };
    r.end()?;
    Ok(msg)
}

/// A client's command on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireRequest {
    pub client: u64,
    pub seq: u64,
    pub command: Bytes,
}

pub fn encode_request(r: &WireRequest) -> Bytes {
    let mut out = BytesMut::with_capacity(16 + r.command.len());
    out.put_u64_le(r.client);
    out.put_u64_le(r.seq);
    out.put_slice(&r.command);
    out.freeze()
}

pub fn decode_request(payload: Bytes) -> Result<WireRequest, CodecError> {
    let mut r = Reader(payload);
    Ok(WireRequest {
        client: r.u64("request client id")?,
        seq: r.u64("request sequence")?,
        command: r.rest(),
    })
}

/// The answer to a command, as the client sees it. Beyond the replica's
/// `Reply`, the transport itself may answer `TooLarge` and `BadRequest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireReply {
    Ok {
        status: u8,
        body: Bytes,
    },
    /// Not the leader; `hint` is the leader's client address if known.
    NotLeader {
        hint: Option<String>,
    },
    Unknown,
    Stale {
        last_seq: u64,
    },
    Busy,
    AppFailed {
        reason: String,
    },
    TooLarge {
        max: u64,
    },
    BadRequest {
        reason: String,
    },
    SessionExpired,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireResponse {
    pub client: u64,
    pub seq: u64,
    pub reply: WireReply,
}

impl WireReply {
    /// The wire form of the replica's reply; `hint` maps a node id to its
    /// client address.
    pub fn from_reply(reply: Reply, hint: impl Fn(u64) -> Option<String>) -> WireReply {
        match reply {
            Reply::Ok { status, response } => WireReply::Ok {
                status,
                body: response,
            },
            Reply::NotLeader { leader } => WireReply::NotLeader {
                hint: leader.and_then(hint),
            },
            Reply::Unknown => WireReply::Unknown,
            Reply::Stale { last_seq } => WireReply::Stale { last_seq },
            Reply::Busy => WireReply::Busy,
            Reply::AppFailed { reason } => WireReply::AppFailed { reason },
            Reply::SessionExpired => WireReply::SessionExpired,
        }
    }
}

pub fn encode_response(r: &WireResponse) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u64_le(r.client);
    out.put_u64_le(r.seq);
    match &r.reply {
        WireReply::Ok { status, body } => {
            out.put_u8(0);
            out.put_u8(*status);
            out.put_slice(body);
        }
        WireReply::NotLeader { hint } => {
            out.put_u8(1);
            if let Some(h) = hint {
                out.put_slice(h.as_bytes());
            }
        }
        WireReply::Unknown => out.put_u8(2),
        WireReply::Stale { last_seq } => {
            out.put_u8(3);
            out.put_u64_le(*last_seq);
        }
        WireReply::Busy => out.put_u8(4),
        WireReply::AppFailed { reason } => {
            out.put_u8(5);
            out.put_slice(reason.as_bytes());
        }
        WireReply::TooLarge { max } => {
            out.put_u8(6);
            out.put_u64_le(*max);
        }
        WireReply::BadRequest { reason } => {
            out.put_u8(7);
            out.put_slice(reason.as_bytes());
        }
        WireReply::SessionExpired => out.put_u8(8),
    }
    out.freeze()
}

pub fn decode_response(payload: Bytes) -> Result<WireResponse, CodecError> {
    let mut r = Reader(payload);
    let client = r.u64("response client id")?;
    let seq = r.u64("response sequence")?;
    let reply = match r.u8("response code")? {
        0 => WireReply::Ok {
            status: r.u8("status")?,
            body: r.rest(),
        },
        1 => {
            let hint = r.text()?;
            WireReply::NotLeader {
                hint: (!hint.is_empty()).then_some(hint),
            }
        }
        2 => WireReply::Unknown,
        3 => WireReply::Stale {
            last_seq: r.u64("last sequence")?,
        },
        4 => WireReply::Busy,
        5 => WireReply::AppFailed { reason: r.text()? },
        6 => WireReply::TooLarge {
            max: r.u64("maximum")?,
        },
        7 => WireReply::BadRequest { reason: r.text()? },
        8 => WireReply::SessionExpired,
        tag => {
            return Err(CodecError::Tag {
                what: "response",
                tag,
            })
        }
    };
    r.end()?;
    Ok(WireResponse { client, seq, reply })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reply() -> impl Strategy<Value = WireReply> {
        prop_oneof![
            (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40)).prop_map(|(status, b)| {
                WireReply::Ok {
                    status,
                    body: Bytes::from(b),
                }
            }),
            proptest::option::of("[a-z0-9.:]{1,20}").prop_map(|hint| WireReply::NotLeader { hint }),
            Just(WireReply::Unknown),
            any::<u64>().prop_map(|last_seq| WireReply::Stale { last_seq }),
            Just(WireReply::Busy),
            ".{0,20}".prop_map(|reason| WireReply::AppFailed { reason }),
            any::<u64>().prop_map(|max| WireReply::TooLarge { max }),
            ".{0,20}".prop_map(|reason| WireReply::BadRequest { reason }),
            Just(WireReply::SessionExpired),
        ]
    }

    proptest! {
        #[test]
        fn responses_round_trip(client: u64, seq: u64, reply in reply()) {
            let r = WireResponse { client, seq, reply };
            prop_assert_eq!(decode_response(encode_response(&r)).unwrap(), r);
        }

        #[test]
        fn requests_round_trip(client: u64, seq: u64, command in proptest::collection::vec(any::<u8>(), 0..40)) {
            let r = WireRequest { client, seq, command: Bytes::from(command) };
            prop_assert_eq!(decode_request(encode_request(&r)).unwrap(), r);
        }

        #[test]
        fn snapshot_messages_round_trip(a: u64, b: u64, c: u64, d: u64, e: u64, data in proptest::collection::vec(any::<u8>(), 0..40)) {
            for m in [
                PeerMessage::SnapshotChunk { from: a, to: b, term: c, snapshot: d, seq: e, data: Bytes::from(data.clone()) },
                PeerMessage::SnapshotAck { from: a, to: b, snapshot: c, next_seq: d },
                PeerMessage::SnapshotRequest { from: a, to: b },
            ] {
                prop_assert_eq!(decode_peer(encode_peer(&m)).unwrap(), m);
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = decode_peer(Bytes::from(bytes.clone()));
            let _ = decode_response(Bytes::from(bytes.clone()));
            let _ = decode_request(Bytes::from(bytes));
        }
    }
}
