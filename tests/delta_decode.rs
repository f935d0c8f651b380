//! The delta and snapshot decoders never panic on arbitrary bytes (CI runs
//! this; the cargo-fuzz target in fuzz/ explores the same property deeper),
//! and an engine fed corrupt entries reports them as corrupt, changing
//! nothing.

use bunker::delta::format::{self, Encoder, Op};
use bunker::delta::snapshot::parse_chunk;
use bunker::delta::{Engine, EngineConfig, EngineError, MemTree};
use proptest::prelude::*;

fn valid_part() -> Vec<u8> {
    let mut encoder = Encoder::new(format::PART_BYTES_MIN);
    encoder.push(&Op::Mkdir {
        path: "d",
        mode: 0o755,
    });
    encoder.push(&Op::Create {
        path: "d/f",
        mode: 0o644,
    });
    encoder.push(&Op::SetSize {
        path: "d/f",
        size_bytes: 100,
    });
    encoder.push(&Op::Write {
        path: "d/f",
        offset: 3,
        data: b"hello",
    });
    encoder.push(&Op::SetMode {
        path: "d/f",
        mode: 0o600,
    });
    encoder.push(&Op::Remove { path: "old" });
    let (mut parts, _, _) = encoder.finish(1, 2);
    parts.remove(0)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = format::validate_part(&bytes);
        let _ = format::validate_payload(&bytes);
        let _ = parse_chunk(&bytes);
    }

    #[test]
    fn mutated_parts_never_panic(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
                                 cut in any::<prop::sample::Index>()) {
        let mut part = valid_part();
        for (at, byte) in &flips {
            let i = at.index(part.len());
            part[i] ^= byte | 1;
        }
        let _ = format::validate_part(&part);
        let payload = &part[format::HEADER_BYTES.min(part.len())..];
        let _ = format::validate_payload(payload);
        let _ = format::validate_part(&part[..cut.index(part.len() + 1)]);
    }

    #[test]
    fn engine_rejects_corrupt_entries(flip in any::<prop::sample::Index>(), byte in 1u8..) {
        let mut part = valid_part();
        let i = flip.index(part.len());
        part[i] ^= byte;
        let (mut engine, _) = Engine::open(MemTree::new(0), EngineConfig::default()).unwrap();
        let before = engine.status();
        match engine.apply(1, 1, &part) {
            Err(EngineError::Corrupt { index: 1, .. }) => {}
            other => prop_assert!(false, "corrupt entry accepted: {other:?}"),
        }
        prop_assert_eq!(engine.status(), before);
    }
}

#[test]
fn valid_part_decodes() {
    assert_eq!(format::validate_part(&valid_part()), Ok(6));
}
