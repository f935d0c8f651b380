//! Fuzz target: the ringlog record, superblock, hard-state and checkpoint
//! decoders never panic on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlog::format::{decode_header, decode_record, Checkpoint, HardStateSlot, Superblock};

fuzz_target!(|data: &[u8]| {
    let seed = data.first().copied().unwrap_or(0) as u64;
    let _ = decode_header(data);
    let _ = decode_record(data, seed);
    let _ = Superblock::decode(data);
    let _ = HardStateSlot::decode(data, seed);
    let _ = Checkpoint::decode(data);
});
