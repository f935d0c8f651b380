//! The payload of a replicated command entry.
//!
//! What it does: encodes and decodes what the leader puts in the log for one
//! command: the client's identity and sequence number, the response the
//! client will get, the sessions the leader expires with it, and one part of
//! the command's delta. A delta larger than one entry is split by the delta
//! engine into parts; all parts but the last travel as `Part` entries, the
//! last as the `Command` entry that carries the client's data, so a command
//! takes effect (and its response exists) only when its last part commits.
//!
//! What it does not do: interpret the delta (the delta engine does) or
//! decide anything.
//!
//! Layout (little-endian): `version:u8 kind:u8 client:u64 seq:u64
//! status:u8 generation:u64 expired_count:u16 expired:[u64]
//! response_len:u32 response part_len:u32 part checksum:u64`, the checksum being xxh3-64 of every byte
//! before it. Decoding checks every length against the bytes present and
//! never panics.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use xxhash_rust::xxh3::xxh3_64;

pub const ENTRY_VERSION: u8 = 1;
/// Sessions one entry may expire.
pub const EXPIRED_PER_ENTRY_MAX: usize = 1024;
/// Fixed bytes of an entry around its response, expiries and part.
pub const ENVELOPE_BYTES: usize = 1 + 1 + 8 + 8 + 1 + 8 + 2 + 4 + 4 + 8;

const KIND_PART: u8 = 1;
const KIND_COMMAND: u8 = 2;

/// A client's identity: chosen by the client, unique per client.
pub type ClientId = u64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaEntry {
    /// A non-final part of a command's delta.
    Part { part: Bytes },
    /// The final part of a command, with what the client will see.
    Command(CommandEntry),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandEntry {
    pub client: ClientId,
    pub seq: u64,
    /// The application's status for the response (0: success; other values
    /// are application-level errors, still a valid answer).
    pub status: u8,
    /// The session generation the leader gave this command (see
    /// `session::Session::generation`).
    pub generation: u64,
    pub response: Bytes,
    /// Sessions the leader expires with this entry (their records are
    /// removed by the delta too).
    pub expired: Vec<ClientId>,
    /// The last (or only) part of the command's delta.
    pub part: Bytes,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EntryError {
    #[error("entry version {0}, this build reads {ENTRY_VERSION}")]
    Version(u8),
    #[error("unknown entry kind {0}")]
    Kind(u8),
    #[error("entry truncated reading {0}")]
    Truncated(&'static str),
    #[error("entry checksum mismatch")]
    Checksum,
    #[error("entry expires {0} sessions, more than {EXPIRED_PER_ENTRY_MAX}")]
    TooManyExpired(usize),
    #[error("entry has {0} trailing bytes")]
    Trailing(usize),
}

impl ReplicaEntry {
    pub fn encode(&self) -> Bytes {
        let empty = Bytes::new();
        let (kind, client, seq, status, generation, response, expired, part) = match self {
            ReplicaEntry::Part { part } => (KIND_PART, 0, 0, 0, 0, &empty, &[][..], part),
            ReplicaEntry::Command(c) => {
                assert!(c.expired.len() <= EXPIRED_PER_ENTRY_MAX);
                let (client, seq, status, generation) = (c.client, c.seq, c.status, c.generation);
                (
                    KIND_COMMAND,
                    client,
                    seq,
                    status,
                    generation,
                    &c.response,
                    &c.expired[..],
                    &c.part,
                )
            }
        };
        let len = ENVELOPE_BYTES + 8 * expired.len() + response.len() + part.len();
        let mut out = BytesMut::with_capacity(len);
        out.put_u8(ENTRY_VERSION);
        out.put_u8(kind);
        out.put_u64_le(client);
        out.put_u64_le(seq);
        out.put_u8(status);
        out.put_u64_le(generation);
        out.put_u16_le(expired.len() as u16);
        for id in expired {
            out.put_u64_le(*id);
        }
        out.put_u32_le(response.len() as u32);
        out.put_slice(response);
        out.put_u32_le(part.len() as u32);
        out.put_slice(part);
        let checksum = xxh3_64(&out);
        out.put_u64_le(checksum);
        assert_eq!(out.len(), len);
        out.freeze()
    }

    pub fn decode(data: &Bytes) -> Result<ReplicaEntry, EntryError> {
        if data.len() < 8 {
            return Err(EntryError::Truncated("checksum"));
        }
        let (body, sum) = data.split_at(data.len() - 8);
        let stored = u64::from_le_bytes(
            sum.try_into()
                .map_err(|_| EntryError::Truncated("checksum"))?,
        );
        if xxh3_64(body) != stored {
            return Err(EntryError::Checksum);
        }
        let mut r = data.slice(..data.len() - 8);
        let need = |r: &Bytes, n: usize, what| {
            if r.remaining() < n {
                Err(EntryError::Truncated(what))
            } else {
                Ok(())
            }
        };
        need(&r, 2 + 8 + 8 + 1 + 8 + 2, "header")?;
        let version = r.get_u8();
        if version != ENTRY_VERSION {
            return Err(EntryError::Version(version));
        }
        let kind = r.get_u8();
        let client = r.get_u64_le();
        let seq = r.get_u64_le();
        let status = r.get_u8();
        let generation = r.get_u64_le();
        let expired_count = r.get_u16_le() as usize;
        if expired_count > EXPIRED_PER_ENTRY_MAX {
            return Err(EntryError::TooManyExpired(expired_count));
        }
        need(&r, 8 * expired_count, "expired sessions")?;
        let expired: Vec<ClientId> = (0..expired_count).map(|_| r.get_u64_le()).collect();
        need(&r, 4, "response length")?;
        let response_len = r.get_u32_le() as usize;
        need(&r, response_len, "response")?;
        let response = r.split_to(response_len);
        need(&r, 4, "part length")?;
        let part_len = r.get_u32_le() as usize;
        need(&r, part_len, "part")?;
        let part = r.split_to(part_len);
        if r.has_remaining() {
            return Err(EntryError::Trailing(r.remaining()));
        }
        match kind {
            KIND_PART => Ok(ReplicaEntry::Part { part }),
            KIND_COMMAND => Ok(ReplicaEntry::Command(CommandEntry {
                client,
                seq,
                status,
                generation,
                response,
                expired,
                part,
            })),
            other => Err(EntryError::Kind(other)),
        }
    }

    pub fn part(&self) -> &Bytes {
        match self {
            ReplicaEntry::Part { part } => part,
            ReplicaEntry::Command(c) => &c.part,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(
            client in any::<u64>(), seq in any::<u64>(), status in any::<u8>(), generation in any::<u64>(),
            response in proptest::collection::vec(any::<u8>(), 0..100),
            expired in proptest::collection::vec(any::<u64>(), 0..10),
            part in proptest::collection::vec(any::<u8>(), 0..300),
            command in any::<bool>(),
        ) {
            let entry = if command {
                ReplicaEntry::Command(CommandEntry {
                    client, seq, status, generation, response: response.into(), expired, part: part.into(),
                })
            } else {
                ReplicaEntry::Part { part: part.into() }
            };
            prop_assert_eq!(ReplicaEntry::decode(&entry.encode()), Ok(entry));
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = ReplicaEntry::decode(&Bytes::from(data));
        }

        #[test]
        fn any_flipped_bit_is_detected(part in proptest::collection::vec(any::<u8>(), 1..100), bit in any::<prop::sample::Index>()) {
            let entry = ReplicaEntry::Part { part: part.into() }.encode();
            let mut bad = entry.to_vec();
            let bit = bit.index(bad.len() * 8);
            bad[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(ReplicaEntry::decode(&Bytes::from(bad)).is_err());
        }
    }

    #[test]
    fn structurally_bad_entries_with_valid_checksums_are_named() {
        let seal = |mut body: Vec<u8>| {
            let sum = xxh3_64(&body);
            body.extend(sum.to_le_bytes());
            Bytes::from(body)
        };
        let mut bad_version = vec![9u8];
        bad_version.extend([0u8; 1 + 8 + 8 + 1 + 8 + 2 + 4 + 4]);
        assert_eq!(
            ReplicaEntry::decode(&seal(bad_version)),
            Err(EntryError::Version(9))
        );
        let mut bad_kind = vec![ENTRY_VERSION, 7];
        bad_kind.extend([0u8; 8 + 8 + 1 + 8 + 2]);
        bad_kind.extend([0u8; 8]);
        assert_eq!(
            ReplicaEntry::decode(&seal(bad_kind)),
            Err(EntryError::Kind(7))
        );
        let mut many = vec![ENTRY_VERSION, KIND_COMMAND];
        many.extend([0u8; 8 + 8 + 1 + 8]);
        many.extend(u16::MAX.to_le_bytes());
        assert_eq!(
            ReplicaEntry::decode(&seal(many)),
            Err(EntryError::TooManyExpired(u16::MAX as usize))
        );
    }
}
