//! The delta wire format: versioned, checksummed parts carrying idempotent
//! file operations.
//!
//! What it does: encodes a delta (a list of [`Op`]s plus the state hashes
//! before and after) into one or more *parts* of at most `max_part_bytes`
//! each, so that a delta of any size fits in log entries of bounded size; and
//! decodes parts, rejecting (never panicking on) anything malformed.
//!
//! Part layout (little-endian), `HEADER_BYTES` = 80:
//!
//! ```text
//!  0 magic u32 = "BKDL"     4 version u16 = 1    6 flags u16 = 0
//!  8 part_no u32           12 part_count u32    16 payload_len u32
//! 20 reserved u32 = 0      24 delta_id u128     40 pre_hash u128
//! 56 post_hash u128        72 checksum u64 = xxh3_64(bytes 0..72 ‖ payload)
//! 80 payload: records
//! ```
//!
//! Records (a tag byte, then fields): `1 PATH len:u16 utf8` sets the path
//! the following records apply to; `2 REMOVE`; `3 MKDIR mode:u32`;
//! `4 CREATE mode:u32`; `5 SETSIZE size:u64`; `6 WRITE offset:u64 len:u32
//! bytes`; `7 SETMODE mode:u32`. Every part starts with a PATH record before
//! its first operation, so parts decode independently. `delta_id` is
//! `xxh3_128(pre ‖ post ‖ part_count ‖ payload_0 ‖ … ‖ payload_n-1)`: parts
//! of one delta are recognised, and a reassembled delta is verified, by it.
//!
//! Semantics of operations (each is an absolute assignment, so replaying a
//! prefix of a delta and then the whole delta gives the same result as the
//! whole delta once; see docs/DELTA.md for the argument):
//! REMOVE makes the path absent (recursively); MKDIR makes it a directory
//! with `mode` (replacing a file); CREATE makes it an empty regular file with
//! `mode` (replacing anything); SETSIZE truncates or zero-extends; WRITE sets
//! bytes; SETMODE sets permission bits.

use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use super::index::StateHash;
use super::tree::check_rel_path;

pub const MAGIC: u32 = u32::from_le_bytes(*b"BKDL");
pub const VERSION: u16 = 1;
pub const HEADER_BYTES: usize = 80;
/// Smallest allowed part: room for a header, a maximal path and some data.
pub const PART_BYTES_MIN: usize = 16 * 1024;
/// Largest allowed part (the payload length is a u32; keep well inside it).
pub const PART_BYTES_MAX: usize = 1 << 30;
/// Largest file offset a delta may address (guards against absurd sizes).
pub const FILE_BYTES_MAX: u64 = 1 << 44;

const TAG_PATH: u8 = 1;
const TAG_REMOVE: u8 = 2;
const TAG_MKDIR: u8 = 3;
const TAG_CREATE: u8 = 4;
const TAG_SETSIZE: u8 = 5;
const TAG_WRITE: u8 = 6;
const TAG_SETMODE: u8 = 7;

/// One idempotent operation on a path (relative to the data directory).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op<'a> {
    Remove {
        path: &'a str,
    },
    Mkdir {
        path: &'a str,
        mode: u32,
    },
    Create {
        path: &'a str,
        mode: u32,
    },
    SetSize {
        path: &'a str,
        size_bytes: u64,
    },
    Write {
        path: &'a str,
        offset: u64,
        data: &'a [u8],
    },
    SetMode {
        path: &'a str,
        mode: u32,
    },
}

impl<'a> Op<'a> {
    pub fn path(&self) -> &'a str {
        match self {
            Op::Remove { path }
            | Op::Mkdir { path, .. }
            | Op::Create { path, .. }
            | Op::SetSize { path, .. }
            | Op::Write { path, .. }
            | Op::SetMode { path, .. } => path,
        }
    }
}

/// Why a part was rejected. The bytes came from a peer (or from the log, which
/// holds what a peer sent): the sender or the storage is at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("delta part truncated: {0}")]
    Truncated(&'static str),
    #[error("delta part has bad magic {0:#x}")]
    BadMagic(u32),
    #[error("delta part has unsupported version {0}")]
    BadVersion(u16),
    #[error("delta part checksum mismatch")]
    BadChecksum,
    #[error("delta part header invalid: {0}")]
    BadHeader(&'static str),
    #[error("delta record invalid at payload offset {offset}: {reason}")]
    BadRecord { offset: usize, reason: &'static str },
    #[error("reassembled delta does not match its id")]
    BadDeltaId,
}

/// The fixed header of a part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartHeader {
    pub part_no: u32,
    pub part_count: u32,
    pub payload_len: u32,
    pub delta_id: u128,
    pub pre_hash: StateHash,
    pub post_hash: StateHash,
}

/// Parses and verifies one part: header fields, length and checksum. Returns
/// the header and the payload.
pub fn parse_part(bytes: &[u8]) -> Result<(PartHeader, &[u8]), DecodeError> {
    if bytes.len() < HEADER_BYTES {
        return Err(DecodeError::Truncated("shorter than the header"));
    }
    let magic = read_u32(bytes, 0);
    if magic != MAGIC {
        return Err(DecodeError::BadMagic(magic));
    }
    let version = read_u16(bytes, 4);
    if version != VERSION {
        return Err(DecodeError::BadVersion(version));
    }
    if read_u16(bytes, 6) != 0 || read_u32(bytes, 20) != 0 {
        return Err(DecodeError::BadHeader("reserved bits set"));
    }
    let header = PartHeader {
        part_no: read_u32(bytes, 8),
        part_count: read_u32(bytes, 12),
        payload_len: read_u32(bytes, 16),
        delta_id: read_u128(bytes, 24),
        pre_hash: read_u128(bytes, 40),
        post_hash: read_u128(bytes, 56),
    };
    if header.part_count == 0 || header.part_no >= header.part_count {
        return Err(DecodeError::BadHeader("part number outside part count"));
    }
    if bytes.len() != HEADER_BYTES + header.payload_len as usize {
        return Err(DecodeError::Truncated("length differs from header"));
    }
    let checksum = read_u64(bytes, 72);
    let mut hasher = Xxh3::new();
    hasher.update(&bytes[..72]);
    hasher.update(&bytes[HEADER_BYTES..]);
    if hasher.digest() != checksum {
        return Err(DecodeError::BadChecksum);
    }
    Ok((header, &bytes[HEADER_BYTES..]))
}

/// Decodes the records of one payload into operations.
pub struct OpIter<'a> {
    payload: &'a [u8],
    at: usize,
    path: Option<&'a str>,
    failed: bool,
}

impl<'a> OpIter<'a> {
    pub fn new(payload: &'a [u8]) -> OpIter<'a> {
        OpIter {
            payload,
            at: 0,
            path: None,
            failed: false,
        }
    }

    fn bad(&mut self, reason: &'static str) -> Option<Result<Op<'a>, DecodeError>> {
        self.failed = true;
        Some(Err(DecodeError::BadRecord {
            offset: self.at,
            reason,
        }))
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let slice = self.payload.get(self.at..end)?;
        self.at = end;
        Some(slice)
    }

    fn take_u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| read_u32(b, 0))
    }

    fn take_u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| read_u64(b, 0))
    }
}

impl<'a> Iterator for OpIter<'a> {
    type Item = Result<Op<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.failed || self.at == self.payload.len() {
                return None;
            }
            let record_at = self.at;
            let tag = self.payload[self.at];
            self.at += 1;
            if tag == TAG_PATH {
                let Some(len) = self.take(2).map(|b| read_u16(b, 0) as usize) else {
                    return self.bad("truncated path length");
                };
                let Some(raw) = self.take(len) else {
                    return self.bad("truncated path");
                };
                let Ok(path) = std::str::from_utf8(raw) else {
                    return self.bad("path is not UTF-8");
                };
                if check_rel_path(path).is_err() {
                    return self.bad("path is not a clean relative path");
                }
                self.path = Some(path);
                continue;
            }
            let Some(path) = self.path else {
                self.at = record_at;
                return self.bad("operation before any path");
            };
            let op = match tag {
                TAG_REMOVE => Op::Remove { path },
                TAG_MKDIR | TAG_CREATE | TAG_SETMODE => {
                    let Some(mode) = self.take_u32() else {
                        return self.bad("truncated mode");
                    };
                    if mode > 0o7777 {
                        return self.bad("mode has bits outside 0o7777");
                    }
                    match tag {
                        TAG_MKDIR => Op::Mkdir { path, mode },
                        TAG_CREATE => Op::Create { path, mode },
                        _ => Op::SetMode { path, mode },
                    }
                }
                TAG_SETSIZE => {
                    let Some(size_bytes) = self.take_u64() else {
                        return self.bad("truncated size");
                    };
                    if size_bytes > FILE_BYTES_MAX {
                        return self.bad("size beyond the maximum file size");
                    }
                    Op::SetSize { path, size_bytes }
                }
                TAG_WRITE => {
                    let (Some(offset), Some(len)) = (self.take_u64(), self.take_u32()) else {
                        return self.bad("truncated write header");
                    };
                    if offset.saturating_add(len as u64) > FILE_BYTES_MAX {
                        return self.bad("write beyond the maximum file size");
                    }
                    let Some(data) = self.take(len as usize) else {
                        return self.bad("truncated write data");
                    };
                    Op::Write { path, offset, data }
                }
                _ => {
                    self.at = record_at;
                    return self.bad("unknown record tag");
                }
            };
            return Some(Ok(op));
        }
    }
}

/// Builds the parts of one delta. Operations are appended in order; a part is
/// closed when the next record would not fit, and large writes are split.
pub struct Encoder {
    payload_bytes_max: usize,
    payloads: Vec<Vec<u8>>,
    current: Vec<u8>,
    current_path: Option<String>,
    ops: u64,
}

/// Counters of what an encoded delta holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncodedStats {
    pub ops: u64,
    pub parts: u32,
    pub encoded_bytes: u64,
}

impl Encoder {
    /// `max_part_bytes` bounds every part, header included (see
    /// `PART_BYTES_MIN..=PART_BYTES_MAX`).
    pub fn new(max_part_bytes: usize) -> Encoder {
        assert!(
            (PART_BYTES_MIN..=PART_BYTES_MAX).contains(&max_part_bytes),
            "max_part_bytes {max_part_bytes} outside [{PART_BYTES_MIN}, {PART_BYTES_MAX}]"
        );
        Encoder {
            payload_bytes_max: max_part_bytes - HEADER_BYTES,
            payloads: Vec::new(),
            current: Vec::new(),
            current_path: None,
            ops: 0,
        }
    }

    fn room(&self) -> usize {
        self.payload_bytes_max - self.current.len()
    }

    fn close_part(&mut self) {
        let full = std::mem::take(&mut self.current);
        self.payloads.push(full);
        self.current_path = None;
    }

    /// Ensures `needed` bytes fit in the current part after its PATH record.
    fn reserve(&mut self, path: &str, needed: usize) {
        let path_record = 3 + path.len();
        let fits = |enc: &Encoder| {
            let path_cost = if enc.current_path.as_deref() == Some(path) {
                0
            } else {
                path_record
            };
            path_cost + needed <= enc.room()
        };
        if !fits(self) {
            self.close_part();
        }
        assert!(
            fits(self),
            "record of {needed} bytes cannot fit an empty part"
        );
        if self.current_path.as_deref() != Some(path) {
            self.current.push(TAG_PATH);
            self.current
                .extend_from_slice(&(path.len() as u16).to_le_bytes());
            self.current.extend_from_slice(path.as_bytes());
            self.current_path = Some(path.to_string());
        }
    }

    /// Appends one operation (splitting a large write over parts).
    pub fn push(&mut self, op: &Op<'_>) {
        let path = op.path();
        assert!(check_rel_path(path).is_ok(), "encoding a bad path {path:?}");
        self.ops += 1;
        match *op {
            Op::Remove { .. } => {
                self.reserve(path, 1);
                self.current.push(TAG_REMOVE);
            }
            Op::Mkdir { mode, .. } | Op::Create { mode, .. } | Op::SetMode { mode, .. } => {
                assert!(mode <= 0o7777);
                let tag = match op {
                    Op::Mkdir { .. } => TAG_MKDIR,
                    Op::Create { .. } => TAG_CREATE,
                    _ => TAG_SETMODE,
                };
                self.reserve(path, 5);
                self.current.push(tag);
                self.current.extend_from_slice(&mode.to_le_bytes());
            }
            Op::SetSize { size_bytes, .. } => {
                self.reserve(path, 9);
                self.current.push(TAG_SETSIZE);
                self.current.extend_from_slice(&size_bytes.to_le_bytes());
            }
            Op::Write { offset, data, .. } => self.push_write(path, offset, data),
        }
    }

    fn push_write(&mut self, path: &str, offset: u64, data: &[u8]) {
        const WRITE_HEADER: usize = 13;
        const SPLIT_MIN: usize = 256;
        let mut done = 0usize;
        while done < data.len() {
            let left = data.len() - done;
            // Use what is left of this part if it holds a useful piece.
            let path_cost = if self.current_path.as_deref() == Some(path) {
                0
            } else {
                3 + path.len()
            };
            let room = self.room().saturating_sub(path_cost + WRITE_HEADER);
            let take = if room >= left || room >= SPLIT_MIN {
                left.min(room)
            } else {
                self.close_part();
                left.min(self.payload_bytes_max - (3 + path.len()) - WRITE_HEADER)
            };
            self.reserve(path, WRITE_HEADER + take);
            self.current.push(TAG_WRITE);
            self.current
                .extend_from_slice(&(offset + done as u64).to_le_bytes());
            self.current.extend_from_slice(&(take as u32).to_le_bytes());
            self.current.extend_from_slice(&data[done..done + take]);
            done += take;
        }
    }

    /// Bytes of the part being filled (for callers that cut their own chunks).
    pub fn current_bytes(&self) -> usize {
        self.current.len()
    }

    /// Closes the encoder and returns the raw payloads (no headers), for
    /// formats that wrap records in their own envelope (snapshot chunks).
    pub fn into_payloads(mut self) -> Vec<Vec<u8>> {
        if !self.current.is_empty() || self.payloads.is_empty() {
            self.close_part();
        }
        self.payloads
    }

    /// Closes the delta: returns its parts (at least one) and counters.
    pub fn finish(
        mut self,
        pre_hash: StateHash,
        post_hash: StateHash,
    ) -> (Vec<Vec<u8>>, u128, EncodedStats) {
        if !self.current.is_empty() || self.payloads.is_empty() {
            self.close_part();
        }
        let part_count = self.payloads.len() as u32;
        let mut id_hasher = Xxh3::new();
        id_hasher.update(&pre_hash.to_le_bytes());
        id_hasher.update(&post_hash.to_le_bytes());
        id_hasher.update(&part_count.to_le_bytes());
        for payload in &self.payloads {
            id_hasher.update(payload);
        }
        let delta_id = id_hasher.digest128();
        let mut parts = Vec::with_capacity(self.payloads.len());
        let mut encoded_bytes = 0u64;
        for (part_no, payload) in self.payloads.into_iter().enumerate() {
            let header = PartHeader {
                part_no: part_no as u32,
                part_count,
                payload_len: payload.len() as u32,
                delta_id,
                pre_hash,
                post_hash,
            };
            let part = seal_part(&header, &payload);
            encoded_bytes += part.len() as u64;
            parts.push(part);
        }
        let stats = EncodedStats {
            ops: self.ops,
            parts: part_count,
            encoded_bytes,
        };
        (parts, delta_id, stats)
    }
}

/// Writes a header and payload into one checksummed part.
pub fn seal_part(header: &PartHeader, payload: &[u8]) -> Vec<u8> {
    assert_eq!(header.payload_len as usize, payload.len());
    let mut part = Vec::with_capacity(HEADER_BYTES + payload.len());
    part.extend_from_slice(&MAGIC.to_le_bytes());
    part.extend_from_slice(&VERSION.to_le_bytes());
    part.extend_from_slice(&0u16.to_le_bytes());
    part.extend_from_slice(&header.part_no.to_le_bytes());
    part.extend_from_slice(&header.part_count.to_le_bytes());
    part.extend_from_slice(&header.payload_len.to_le_bytes());
    part.extend_from_slice(&0u32.to_le_bytes());
    part.extend_from_slice(&header.delta_id.to_le_bytes());
    part.extend_from_slice(&header.pre_hash.to_le_bytes());
    part.extend_from_slice(&header.post_hash.to_le_bytes());
    assert_eq!(part.len(), 72);
    let mut hasher = Xxh3::new();
    hasher.update(&part);
    hasher.update(payload);
    part.extend_from_slice(&hasher.digest().to_le_bytes());
    part.extend_from_slice(payload);
    part
}

/// Incremental check of a reassembled delta against its id.
pub struct DeltaIdCheck {
    hasher: Xxh3,
    expected: u128,
}

impl DeltaIdCheck {
    pub fn new(header: &PartHeader) -> DeltaIdCheck {
        let mut hasher = Xxh3::new();
        hasher.update(&header.pre_hash.to_le_bytes());
        hasher.update(&header.post_hash.to_le_bytes());
        hasher.update(&header.part_count.to_le_bytes());
        DeltaIdCheck {
            hasher,
            expected: header.delta_id,
        }
    }

    pub fn update(&mut self, payload: &[u8]) {
        self.hasher.update(payload);
    }

    pub fn verify(self) -> Result<(), DecodeError> {
        if self.hasher.digest128() != self.expected {
            return Err(DecodeError::BadDeltaId);
        }
        Ok(())
    }
}

/// Decodes every part of a complete delta, in order; for tests and tools.
pub fn decode_all(parts: &[&[u8]]) -> Result<(PartHeader, Vec<Op<'static>>), DecodeError> {
    let mut first: Option<PartHeader> = None;
    let mut check: Option<DeltaIdCheck> = None;
    let mut ops = Vec::new();
    for (i, bytes) in parts.iter().enumerate() {
        let (header, payload) = parse_part(bytes)?;
        let expected = first.get_or_insert(header);
        if header.part_no as usize != i
            || header.part_count != expected.part_count
            || header.delta_id != expected.delta_id
            || header.part_count as usize != parts.len()
        {
            return Err(DecodeError::BadHeader(
                "parts out of order or from different deltas",
            ));
        }
        check
            .get_or_insert_with(|| DeltaIdCheck::new(&header))
            .update(payload);
        for op in OpIter::new(payload) {
            ops.push(leak_op(op?));
        }
    }
    let (Some(header), Some(check)) = (first, check) else {
        return Err(DecodeError::Truncated("no parts"));
    };
    check.verify()?;
    Ok((header, ops))
}

/// Owned copy of an op for `decode_all` (tests only; leaks small strings).
fn leak_op(op: Op<'_>) -> Op<'static> {
    let path: &'static str = Box::leak(op.path().to_string().into_boxed_str());
    match op {
        Op::Remove { .. } => Op::Remove { path },
        Op::Mkdir { mode, .. } => Op::Mkdir { path, mode },
        Op::Create { mode, .. } => Op::Create { path, mode },
        Op::SetSize { size_bytes, .. } => Op::SetSize { path, size_bytes },
        Op::SetMode { mode, .. } => Op::SetMode { path, mode },
        Op::Write { offset, data, .. } => Op::Write {
            path,
            offset,
            data: Box::leak(data.to_vec().into_boxed_slice()),
        },
    }
}

/// Checks everything a decoder checks without applying anything: used by the
/// fuzz target and the "arbitrary bytes never panic" property.
pub fn validate_part(bytes: &[u8]) -> Result<u64, DecodeError> {
    let (_, payload) = parse_part(bytes)?;
    let mut ops = 0u64;
    for op in OpIter::new(payload) {
        op?;
        ops += 1;
    }
    Ok(ops)
}

/// Same as [`validate_part`] on a raw payload (skipping the header checks, so
/// a fuzzer reaches the record decoder without forging checksums).
pub fn validate_payload(payload: &[u8]) -> Result<u64, DecodeError> {
    let mut ops = 0u64;
    for op in OpIter::new(payload) {
        op?;
        ops += 1;
    }
    Ok(ops)
}

/// The checksum helper for chunk formats that reuse this module's records.
pub fn checksum(parts: &[&[u8]]) -> u64 {
    match parts {
        [one] => xxh3_64(one),
        _ => {
            let mut hasher = Xxh3::new();
            for part in parts {
                hasher.update(part);
            }
            hasher.digest()
        }
    }
}

fn read_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn read_u128(b: &[u8], at: usize) -> u128 {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    u128::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_single_and_split() {
        let big = vec![0xAB; 100_000];
        let ops = vec![
            Op::Remove { path: "old" },
            Op::Mkdir {
                path: "d",
                mode: 0o755,
            },
            Op::Create {
                path: "d/f",
                mode: 0o600,
            },
            Op::SetSize {
                path: "d/f",
                size_bytes: 200_000,
            },
            Op::Write {
                path: "d/f",
                offset: 7,
                data: &big,
            },
            Op::SetMode {
                path: "d/f",
                mode: 0o640,
            },
        ];
        for max in [PART_BYTES_MIN, 1 << 20] {
            let mut enc = Encoder::new(max);
            for op in &ops {
                enc.push(op);
            }
            let (parts, _, stats) = enc.finish(1, 2);
            assert!(parts.iter().all(|p| p.len() <= max));
            assert_eq!(stats.parts as usize, parts.len());
            let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
            let (header, decoded) = decode_all(&refs).unwrap();
            assert_eq!((header.pre_hash, header.post_hash), (1, 2));
            // Writes may be split: re-join them for the comparison.
            let mut joined: Vec<u8> = Vec::new();
            let mut non_writes = Vec::new();
            for op in decoded {
                match op {
                    Op::Write { offset, data, .. } => {
                        assert_eq!(offset as usize, 7 + joined.len());
                        joined.extend_from_slice(data);
                    }
                    other => non_writes.push(other),
                }
            }
            assert_eq!(joined, big);
            assert_eq!(non_writes.len(), 5);
        }
    }

    #[test]
    fn corruption_is_detected() {
        let mut enc = Encoder::new(PART_BYTES_MIN);
        enc.push(&Op::Create {
            path: "f",
            mode: 0o644,
        });
        let (parts, _, _) = enc.finish(0, 9);
        let good = &parts[0];
        assert!(validate_part(good).is_ok());
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            assert!(validate_part(&bad).is_err(), "flip at {i} undetected");
        }
        assert!(validate_part(&good[..good.len() - 1]).is_err());
    }

    #[test]
    fn empty_delta_has_one_part() {
        let (parts, _, stats) = Encoder::new(PART_BYTES_MIN).finish(5, 5);
        assert_eq!(parts.len(), 1);
        assert_eq!(stats.ops, 0);
        let (header, ops) = decode_all(&[&parts[0]]).unwrap();
        assert!(ops.is_empty());
        assert_eq!(header.pre_hash, 5);
    }
}
