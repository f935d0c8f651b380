//! Framing for `serve` mode: `u32` little-endian length, then that many bytes.
//!
//! What it does: reads and writes length-prefixed frames on byte streams, with
//! a bound on the length so that a corrupt or hostile prefix cannot make the
//! reader allocate gigabytes. A response frame's payload is one status byte
//! followed by the response (JSON); [`encode_response`] and
//! [`decode_response`] build and split it.
//!
//! What it does not do: checksums. The frames travel over a local pipe between
//! Bunker and its application; integrity across the network is Bunker's
//! transport's job.
//!
//! Invariants: a clean end of stream is only ever reported *between* frames
//! (`Ok(None)`); a stream that ends inside a length prefix or a payload is
//! [`FrameError::Truncated`]; no frame longer than the caller's bound is ever
//! allocated or returned.

use std::io::{self, ErrorKind, Read, Write};

use thiserror::Error;

use crate::response::Status;

/// Size of the length prefix.
pub const LENGTH_BYTES: usize = 4;
/// The largest command frame `serve` accepts. Commands are short (see
/// `command::COMMAND_BYTES_MAX`); anything longer is refused as a whole.
pub const COMMAND_FRAME_BYTES_MAX: u32 = 64 * 1024;
/// The largest response frame `serve` ever writes (a 1000-entry statement is
/// about 300 KiB); readers of responses use this bound.
pub const RESPONSE_FRAME_BYTES_MAX: u32 = 4 * 1024 * 1024;

/// Why a frame could not be read. The sender is at fault unless it is `Io`.
#[derive(Debug, Error)]
pub enum FrameError {
    #[error("frame of {size_bytes} bytes is longer than the {max_bytes}-byte limit")]
    TooLarge { size_bytes: u32, max_bytes: u32 },
    #[error("stream ended inside a frame: {got_bytes} of {expected_bytes} bytes of its {part}")]
    Truncated {
        part: &'static str,
        expected_bytes: usize,
        got_bytes: usize,
    },
    #[error("reading a frame: {0}")]
    Io(#[from] io::Error),
}

/// Writes one frame (the length prefix and the payload). Does not flush.
pub fn write_frame<W: Write>(writer: &mut W, payload: &[u8]) -> io::Result<()> {
    let length = u32::try_from(payload.len())
        .map_err(|_| io::Error::new(ErrorKind::InvalidInput, "frame payload longer than 4 GiB"))?;
    writer.write_all(&length.to_le_bytes())?;
    writer.write_all(payload)
}

/// Reads one frame of at most `max_bytes`. `Ok(None)` means the stream ended
/// cleanly before the next frame.
pub fn read_frame<R: Read>(reader: &mut R, max_bytes: u32) -> Result<Option<Vec<u8>>, FrameError> {
    let mut prefix = [0u8; LENGTH_BYTES];
    let got_bytes = read_full(reader, &mut prefix)?;
    if got_bytes == 0 {
        return Ok(None);
    }
    if got_bytes < LENGTH_BYTES {
        return Err(FrameError::Truncated {
            part: "length prefix",
            expected_bytes: LENGTH_BYTES,
            got_bytes,
        });
    }
    let size_bytes = u32::from_le_bytes(prefix);
    if size_bytes > max_bytes {
        return Err(FrameError::TooLarge {
            size_bytes,
            max_bytes,
        });
    }
    let mut payload = vec![0u8; size_bytes as usize];
    let got_bytes = read_full(reader, &mut payload)?;
    if got_bytes < payload.len() {
        return Err(FrameError::Truncated {
            part: "payload",
            expected_bytes: payload.len(),
            got_bytes,
        });
    }
    assert_eq!(payload.len(), size_bytes as usize);
    Ok(Some(payload))
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full<R: Read>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    assert!(filled <= buf.len());
    Ok(filled)
}

/// A response frame's payload: the status byte, then the response bytes.
pub fn encode_response(status: Status, body: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(1 + body.len());
    payload.push(status.as_byte());
    payload.extend_from_slice(body);
    payload
}

/// Why a response frame's payload could not be split.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ResponseFrameError {
    #[error("response frame is empty (it must start with a status byte)")]
    Empty,
    #[error("response frame has unknown status byte {0}")]
    UnknownStatus(u8),
}

/// Splits a response frame's payload into its status and response bytes.
pub fn decode_response(payload: &[u8]) -> Result<(Status, &[u8]), ResponseFrameError> {
    let (&byte, body) = payload.split_first().ok_or(ResponseFrameError::Empty)?;
    let status = Status::from_byte(byte).ok_or(ResponseFrameError::UnknownStatus(byte))?;
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out one byte per call, to exercise short reads.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match (self.0.split_first(), buf.first_mut()) {
                (Some((&b, rest)), Some(slot)) => {
                    *slot = b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    #[test]
    fn round_trip_with_short_reads() {
        let mut stream = Vec::new();
        write_frame(&mut stream, b"audit").expect("write");
        write_frame(&mut stream, b"").expect("write");
        write_frame(&mut stream, &[7u8; 300]).expect("write");
        let mut reader = Trickle(&stream);
        assert_eq!(
            read_frame(&mut reader, 1024).expect("frame"),
            Some(b"audit".to_vec())
        );
        assert_eq!(
            read_frame(&mut reader, 1024).expect("frame"),
            Some(Vec::new())
        );
        assert_eq!(
            read_frame(&mut reader, 1024).expect("frame"),
            Some(vec![7u8; 300])
        );
        assert_eq!(read_frame(&mut reader, 1024).expect("end"), None);
    }

    #[test]
    fn truncation_and_size_are_detected() {
        let mut stream = Vec::new();
        write_frame(&mut stream, b"deposit alice 5").expect("write");
        for cut in 1..stream.len() {
            let err = read_frame(&mut &stream[..cut], 1024).expect_err("truncated");
            assert!(
                matches!(err, FrameError::Truncated { .. }),
                "cut {cut}: {err}"
            );
        }
        let err = read_frame(&mut &stream[..], 3).expect_err("too large");
        assert!(matches!(
            err,
            FrameError::TooLarge {
                size_bytes: 15,
                max_bytes: 3
            }
        ));
        let huge = u32::MAX.to_le_bytes();
        assert!(matches!(
            read_frame(&mut &huge[..], COMMAND_FRAME_BYTES_MAX),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn response_payloads() {
        let payload = encode_response(Status::Business, b"{}");
        assert_eq!(
            decode_response(&payload),
            Ok((Status::Business, &b"{}"[..]))
        );
        assert_eq!(decode_response(&[]), Err(ResponseFrameError::Empty));
        assert_eq!(
            decode_response(&[9]),
            Err(ResponseFrameError::UnknownStatus(9))
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let mut reader = &bytes[..];
            for _ in 0..bytes.len() + 1 {
                match read_frame(&mut reader, 16) {
                    Ok(Some(frame)) => proptest::prop_assert!(frame.len() <= 16),
                    Ok(None) | Err(_) => break,
                }
            }
            let _ = decode_response(&bytes);
        }
    }
}
