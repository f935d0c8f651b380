//! Client sessions: exactly-once execution across retries and failovers
//! (invariant I4, docs/REQUIREMENTS.md).
//!
//! What it does: keeps, for each client, the sequence number and response
//! of its last command that changed the state. The table is part of the
//! replicated state itself: each record is a small file under
//! [`SESSIONS_DIR`] in the application's data directory, written by the
//! leader into the working copy together with the command's own changes, so
//! it travels in the same delta, commits atomically with it, is covered by
//! the state hash and by snapshots, and is rolled back with it. Every server
//! also keeps the committed records in memory ([`SessionTable`]), updated
//! when a command entry applies and reloaded from the files after a restart
//! or a snapshot.
//!
//! Sessions are opened by the cluster: a request of sequence
//! [`crate::replica::OPEN_SEQ`] commits a record with sequence 0 under a
//! new id, the generation of that entry, so no id is ever handed out twice
//! and a retry whose session expired is recognised as such (refused with
//! `SessionExpired`) instead of being taken for a new command.
//!
//! What it does not do: decide expiry (the leader's pipeline does, and the
//! decision travels in the log as the removal of the record files plus the
//! list in the entry), or speculative bookkeeping (the pipeline's).
//!
//! Record file layout (little-endian): `version:u8 seq:u64 status:u8
//! generation:u64 response_len:u32 response checksum:u64` (xxh3-64 of the
//! bytes before it).

use crate::delta::{FileTree, TreeError};
use crate::replica::entry::ClientId;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::{BTreeMap, BTreeSet};
use xxhash_rust::xxh3::xxh3_64;

/// The directory, inside the application's data directory, that Bunker
/// reserves for session records. Applications must not touch it.
pub const SESSIONS_DIR: &str = ".bunker/sessions";
const RECORD_VERSION: u8 = 1;

/// The last state-changing command of one client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub seq: u64,
    pub status: u8,
    pub response: Bytes,
    /// Increases with every command the cluster records (any client): the
    /// leader expires the sessions with the lowest generation first.
    pub generation: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("session record {path}: {what}")]
    Corrupt { path: String, what: &'static str },
    #[error(transparent)]
    Tree(#[from] TreeError),
}

/// The file name of `client`'s record, relative to the data directory.
pub fn record_path(client: ClientId) -> String {
    format!("{SESSIONS_DIR}/{client:016x}")
}

pub fn encode_record(session: &Session) -> Bytes {
    let mut out = BytesMut::with_capacity(1 + 8 + 1 + 8 + 4 + session.response.len() + 8);
    out.put_u8(RECORD_VERSION);
    out.put_u64_le(session.seq);
    out.put_u8(session.status);
    out.put_u64_le(session.generation);
    out.put_u32_le(session.response.len() as u32);
    out.put_slice(&session.response);
    let sum = xxh3_64(&out);
    out.put_u64_le(sum);
    out.freeze()
}

pub fn decode_record(path: &str, data: &[u8]) -> Result<Session, SessionError> {
    let corrupt = |what| SessionError::Corrupt {
        path: path.to_string(),
        what,
    };
    if data.len() < 1 + 8 + 1 + 8 + 4 + 8 {
        return Err(corrupt("too short"));
    }
    let (body, sum) = data.split_at(data.len() - 8);
    if xxh3_64(body) != u64::from_le_bytes(sum.try_into().map_err(|_| corrupt("checksum"))?) {
        return Err(corrupt("checksum mismatch"));
    }
    let mut r = body;
    if r.get_u8() != RECORD_VERSION {
        return Err(corrupt("unknown version"));
    }
    let seq = r.get_u64_le();
    let status = r.get_u8();
    let generation = r.get_u64_le();
    let len = r.get_u32_le() as usize;
    if r.remaining() != len {
        return Err(corrupt("response length"));
    }
    Ok(Session {
        seq,
        status,
        response: Bytes::copy_from_slice(r),
        generation,
    })
}

/// Parses a record file name back into a client id.
fn client_of(name: &str) -> Option<ClientId> {
    if name.len() != 16 {
        return None;
    }
    ClientId::from_str_radix(name, 16).ok()
}

/// The committed session records, in memory.
#[derive(Clone, Debug, Default)]
pub struct SessionTable {
    sessions: BTreeMap<ClientId, Session>,
    /// The same sessions by (generation, client): the leader picks the
    /// oldest to expire with every command once the table is full, so this
    /// must not cost a sort of the whole table.
    by_generation: BTreeSet<(u64, ClientId)>,
    /// Highest generation recorded.
    generation: u64,
}

impl SessionTable {
    pub fn get(&self, client: ClientId) -> Option<&Session> {
        self.sessions.get(&client)
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Records a committed command of `client`.
    pub fn record(&mut self, client: ClientId, session: Session) {
        self.generation = self.generation.max(session.generation);
        self.by_generation.insert((session.generation, client));
        if let Some(old) = self.sessions.insert(client, session) {
            if self.sessions[&client].generation != old.generation {
                self.by_generation.remove(&(old.generation, client));
            }
        }
        debug_assert_eq!(self.by_generation.len(), self.sessions.len());
    }

    pub fn expire(&mut self, client: ClientId) {
        if let Some(old) = self.sessions.remove(&client) {
            self.by_generation.remove(&(old.generation, client));
        }
        debug_assert_eq!(self.by_generation.len(), self.sessions.len());
    }

    /// Clients by ascending generation (least recently recorded first).
    pub fn oldest(&self) -> impl Iterator<Item = ClientId> + '_ {
        self.by_generation.iter().map(|(_, c)| *c)
    }

    /// Reads every record under `root` (a committed tree directory).
    pub fn load<T: FileTree>(tree: &mut T, root: &str) -> Result<SessionTable, SessionError> {
        let dir = if root.is_empty() {
            SESSIONS_DIR.to_string()
        } else {
            format!("{root}/{SESSIONS_DIR}")
        };
        let mut table = SessionTable::default();
        if tree.stat(&dir)?.is_none() {
            return Ok(table);
        }
        for name in tree.list(&dir)? {
            let path = format!("{dir}/{name}");
            let Some(client) = client_of(&name) else {
                return Err(SessionError::Corrupt {
                    path,
                    what: "not a session record name",
                });
            };
            let session = tree.with_file(&path, |data| decode_record(&path, data))??;
            table.record(client, session);
        }
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn records_round_trip(seq in any::<u64>(), status in any::<u8>(), generation in any::<u64>(),
                              response in proptest::collection::vec(any::<u8>(), 0..200)) {
            let s = Session { seq, status, response: response.into(), generation };
            prop_assert_eq!(decode_record("x", &encode_record(&s)).unwrap(), s);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_record("x", &data);
        }
    }

    #[test]
    fn the_oldest_come_first_and_follow_records_and_expiries() {
        let s = |generation| Session {
            seq: 1,
            status: 0,
            response: Bytes::new(),
            generation,
        };
        let mut t = SessionTable::default();
        t.record(7, s(3));
        t.record(5, s(1));
        t.record(9, s(2));
        assert_eq!(t.oldest().collect::<Vec<_>>(), vec![5, 9, 7]);
        t.record(5, s(4)); // client 5 recorded again: now the newest
        assert_eq!(t.oldest().collect::<Vec<_>>(), vec![9, 7, 5]);
        t.expire(9);
        t.expire(42); // unknown: nothing happens
        assert_eq!(t.oldest().collect::<Vec<_>>(), vec![7, 5]);
        assert_eq!((t.len(), t.generation()), (2, 4));
    }

    #[test]
    fn names_round_trip() {
        let path = record_path(0xdead_beef);
        let name = path.rsplit('/').next().unwrap();
        assert_eq!(client_of(name), Some(0xdead_beef));
        assert_eq!(client_of("zz"), None);
    }
}
