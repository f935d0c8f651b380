//! Cluster membership: the set of voters and its quorum.
//!
//! The configuration lives in the log (`EntryKind::Config` entries, encoded
//! here), so that membership change can be added without a redesign; the
//! core tracks the latest configuration in its log.

use bytes::{BufMut, Bytes, BytesMut};
use ringlog::NodeId;

/// Voters are kept sorted and distinct; there is at most this many.
pub const VOTERS_MAX: usize = 15;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    voters: Vec<NodeId>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MembershipError {
    #[error("a configuration needs at least one voter")]
    Empty,
    #[error("a configuration holds at most {VOTERS_MAX} voters, got {0}")]
    TooMany(usize),
    #[error("voter ids must be distinct and non-zero")]
    BadId,
    #[error("configuration entry is malformed ({0} bytes)")]
    Malformed(usize),
}

impl Membership {
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Result<Membership, MembershipError> {
        let mut voters: Vec<NodeId> = voters.into_iter().collect();
        let count = voters.len();
        voters.sort_unstable();
        voters.dedup();
        if voters.is_empty() {
            return Err(MembershipError::Empty);
        }
        if voters.len() > VOTERS_MAX {
            return Err(MembershipError::TooMany(voters.len()));
        }
        if voters.len() != count || voters[0] == 0 {
            return Err(MembershipError::BadId);
        }
        Ok(Membership { voters })
    }

    pub fn voters(&self) -> &[NodeId] {
        &self.voters
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.binary_search(&id).is_ok()
    }

    /// The smallest number of voters that forms a majority.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// Encodes the configuration as the payload of a `Config` entry:
    /// a little-endian u64 count followed by that many u64 ids.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(8 + 8 * self.voters.len());
        buf.put_u64_le(self.voters.len() as u64);
        for id in &self.voters {
            buf.put_u64_le(*id);
        }
        buf.freeze()
    }

    pub fn decode(data: &[u8]) -> Result<Membership, MembershipError> {
        let malformed = || MembershipError::Malformed(data.len());
        let (count_bytes, rest) = data.split_first_chunk::<8>().ok_or_else(malformed)?;
        let count = u64::from_le_bytes(*count_bytes);
        if count > VOTERS_MAX as u64 || rest.len() as u64 != count * 8 {
            return Err(malformed());
        }
        let ids = rest
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])));
        Membership::new(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_sizes() {
        assert_eq!(Membership::new([1]).unwrap().quorum(), 1);
        assert_eq!(Membership::new([1, 2, 3]).unwrap().quorum(), 2);
        assert_eq!(Membership::new([1, 2, 3, 4]).unwrap().quorum(), 3);
        assert_eq!(Membership::new([5, 4, 3, 2, 1]).unwrap().quorum(), 3);
    }

    #[test]
    fn encode_round_trip_and_bad_input() {
        let m = Membership::new([3, 1, 2]).unwrap();
        assert_eq!(Membership::decode(&m.encode()).unwrap(), m);
        assert_eq!(Membership::decode(&[]), Err(MembershipError::Malformed(0)));
        let mut bad = m.encode().to_vec();
        bad.push(0);
        assert!(Membership::decode(&bad).is_err());
        assert_eq!(Membership::new([1, 1]), Err(MembershipError::BadId));
        assert_eq!(Membership::new([0, 1]), Err(MembershipError::BadId));
        assert_eq!(Membership::new([]), Err(MembershipError::Empty));
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = Membership::decode(&data);
        }
    }
}
