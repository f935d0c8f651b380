//! The simulator's state machine for the consensus layer: a running hash of
//! every applied entry. Two servers at the same applied index hold the same
//! hash exactly when they applied the same entries.

use crate::raft::Membership;
use ringlog::{Entry, LogId};
use xxhash_rust::xxh3::xxh3_64_with_seed;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppState {
    pub applied: LogId,
    pub hash: u64,
    pub membership: Membership,
}

impl AppState {
    pub fn new(membership: Membership) -> AppState {
        AppState {
            applied: LogId::ZERO,
            hash: 0,
            membership,
        }
    }

    pub fn apply(&mut self, entry: &Entry) {
        assert_eq!(
            entry.index,
            self.applied.index + 1,
            "entries apply in order"
        );
        self.hash = xxh3_64_with_seed(&entry_digest(entry).to_le_bytes(), self.hash);
        self.applied = entry.id();
    }
}

/// A digest of one entry's identity and content.
pub fn entry_digest(entry: &Entry) -> u64 {
    let seed =
        entry.index.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ entry.term ^ ((entry.kind as u64) << 56);
    xxh3_64_with_seed(&entry.data, seed)
}
