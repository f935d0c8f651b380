//! Frames: the unit of everything Bunker sends over a connection.
//!
//! ```text
//! offset size field
//!  0     2    magic 0xB7C1 (little endian)
//!  2     1    version (1)
//!  3     1    kind (Kind)
//!  4     4    from: sender's node id (0 for a client)
//!  8     4    to: receiver's node id (0 for a client); lets a relay forward later
//! 12     4    payload length in bytes
//! 16     8    xxh3-64 of bytes 0..16 and the payload
//! 24     -    payload
//! ```
//!
//! What it does: encodes frames and decodes them from a byte stream, with
//! the payload length checked against a maximum before anything is
//! allocated and the checksum checked before the payload is trusted.
//!
//! What it does not do: interpret payloads (`codec`), or recover from a bad
//! frame: the stream is out of step, so the connection is closed.
//!
//! Invariant: `decode` never panics and never allocates more than
//! `frame_bytes_max` for any input (fuzzed: `fuzz/fuzz_targets/transport_decode.rs`).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

pub const MAGIC: u16 = 0xB7C1;
pub const VERSION: u8 = 2;
pub const HEADER_BYTES: usize = 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// First frame of a server-to-server connection: `from` is the dialer.
    Hello = 1,
    /// A `PeerMessage` (codec).
    Peer = 2,
    /// A client's command.
    Request = 3,
    /// The answer to a command.
    Response = 4,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Hello),
            2 => Some(Kind::Peer),
            3 => Some(Kind::Request),
            4 => Some(Kind::Response),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub from: u32,
    pub to: u32,
    pub payload: Bytes,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("bad magic {0:#06x}: not a Bunker connection, or the stream is out of step")]
    Magic(u16),
    #[error("frame version {0}; this build speaks {VERSION}")]
    Version(u8),
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("frame checksum mismatch (corrupted in transit)")]
    Checksum,
}

/// Appends the encoding of a frame to `out`.
pub fn encode(kind: Kind, from: u32, to: u32, payload: &[u8], out: &mut BytesMut) {
    let start = out.len();
    out.reserve(HEADER_BYTES + payload.len());
    out.put_u16_le(MAGIC);
    out.put_u8(VERSION);
    out.put_u8(kind as u8);
    out.put_u32_le(from);
    out.put_u32_le(to);
    out.put_u32_le(payload.len() as u32);
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(&out[start..start + 16]);
    hasher.update(payload);
    out.put_u64_le(hasher.digest());
    out.put_slice(payload);
    debug_assert_eq!(out.len() - start, HEADER_BYTES + payload.len());
}

/// The encoding of one frame.
pub fn encode_to_bytes(kind: Kind, from: u32, to: u32, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER_BYTES + payload.len());
    encode(kind, from, to, payload, &mut out);
    out.freeze()
}

/// A parsed header: what to expect of the payload.
struct Header {
    kind: Kind,
    from: u32,
    to: u32,
    len: usize,
    checksum: u64,
}

fn parse_header(h: &[u8; HEADER_BYTES], max: usize) -> Result<Header, FrameError> {
    let mut r = &h[..];
    let magic = r.get_u16_le();
    if magic != MAGIC {
        return Err(FrameError::Magic(magic));
    }
    let version = r.get_u8();
    if version != VERSION {
        return Err(FrameError::Version(version));
    }
    let kind_byte = r.get_u8();
    let kind = Kind::from_u8(kind_byte).ok_or(FrameError::Kind(kind_byte))?;
    let from = r.get_u32_le();
    let to = r.get_u32_le();
    let len = r.get_u32_le() as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let checksum = r.get_u64_le();
    Ok(Header {
        kind,
        from,
        to,
        len,
        checksum,
    })
}

fn verify(h: &[u8; HEADER_BYTES], header: &Header, payload: &[u8]) -> Result<(), FrameError> {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(&h[..16]);
    hasher.update(payload);
    if hasher.digest() != header.checksum {
        return Err(FrameError::Checksum);
    }
    Ok(())
}

/// Decodes one frame from the front of `buf`: `Ok(None)` if more bytes are
/// needed, else the frame and the bytes it used.
pub fn decode(buf: &[u8], max: usize) -> Result<Option<(Frame, usize)>, FrameError> {
    let Some(h) = buf.get(..HEADER_BYTES) else {
        return Ok(None);
    };
    let h: &[u8; HEADER_BYTES] = h.try_into().map_err(|_| FrameError::Checksum)?;
    let header = parse_header(h, max)?;
    let Some(payload) = buf.get(HEADER_BYTES..HEADER_BYTES + header.len) else {
        return Ok(None);
    };
    verify(h, &header, payload)?;
    let frame = Frame {
        kind: header.kind,
        from: header.from,
        to: header.to,
        payload: Bytes::copy_from_slice(payload),
    };
    Ok(Some((frame, HEADER_BYTES + header.len)))
}

/// Why reading a frame from a stream stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("connection closed")]
    Closed,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Frame(#[from] FrameError),
}

/// Reads one frame from `stream` (a clean end of stream between frames is
/// `Closed`).
pub async fn read_frame<R: AsyncRead + Unpin>(
    stream: &mut R,
    max: usize,
) -> Result<Frame, ReadError> {
    let mut h = [0u8; HEADER_BYTES];
    match stream.read_exact(&mut h).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(ReadError::Closed),
        Err(e) => return Err(e.into()),
    }
    let header = parse_header(&h, max)?;
    let mut payload = vec![0u8; header.len];
    stream.read_exact(&mut payload).await?;
    verify(&h, &header, &payload)?;
    Ok(Frame {
        kind: header.kind,
        from: header.from,
        to: header.to,
        payload: Bytes::from(payload),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(kind in 1u8..=4, from: u32, to: u32, payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let kind = Kind::from_u8(kind).unwrap();
            let bytes = encode_to_bytes(kind, from, to, &payload);
            let (frame, used) = decode(&bytes, 1024).unwrap().unwrap();
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(frame, Frame { kind, from, to, payload: Bytes::from(payload.clone()) });
            // Every strict prefix asks for more bytes.
            for cut in 0..bytes.len() {
                prop_assert_eq!(decode(&bytes[..cut], 1024).unwrap(), None);
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes, 64);
        }

        #[test]
        fn any_flipped_bit_is_caught(payload in proptest::collection::vec(any::<u8>(), 1..64), bit in 0usize..(88 * 8)) {
            let mut bytes = encode_to_bytes(Kind::Peer, 1, 2, &payload).to_vec();
            let bit = bit % (bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            // A flipped length may ask for more bytes; otherwise it is an error.
            prop_assert!(!matches!(decode(&bytes, 1 << 20), Ok(Some(_))));
        }
    }

    #[test]
    fn oversized_frames_are_refused_before_allocating() {
        let bytes = encode_to_bytes(Kind::Request, 0, 0, &[0u8; 100]);
        assert_eq!(
            decode(&bytes, 99),
            Err(FrameError::TooLarge { len: 100, max: 99 })
        );
    }
}
