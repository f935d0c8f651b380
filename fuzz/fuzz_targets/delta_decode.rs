//! Fuzzes the delta decoder: whole parts (header, checksum, records), raw
//! record payloads (so the fuzzer reaches the record decoder without forging
//! checksums), and snapshot chunks. None may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = bunker::delta::format::validate_part(data);
    let _ = bunker::delta::format::validate_payload(data);
    let _ = bunker::delta::snapshot::parse_chunk(data);
});
