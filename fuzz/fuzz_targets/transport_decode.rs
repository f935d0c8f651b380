//! Fuzzes the transport's decoders: frames from a byte stream (header,
//! length bound, checksum), and the payloads of peer messages, client
//! requests and responses, which the fuzzer reaches directly without
//! forging checksums. None may panic or allocate past the frame bound.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = bunker::transport::frame::decode(data, 1 << 20);
    let payload = Bytes::copy_from_slice(data);
    let _ = bunker::transport::codec::decode_peer(payload.clone());
    let _ = bunker::transport::codec::decode_request(payload.clone());
    let _ = bunker::transport::codec::decode_response(payload);
});
