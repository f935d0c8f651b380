//! Fuzz target: recovery (the superblock and hard-state reads, the
//! checkpoint search, the chain replay and the corruption scan) never
//! panics on arbitrary disk contents, and whatever it recovers is readable.
//!
//! The input is laid over a freshly formatted small log (4 segments of
//! 64 KiB) that holds a few entries: the first input byte picks how much of
//! the real log to keep intact, the rest overwrites the ring from there, so
//! the fuzzer reaches the deep paths (valid checkpoints, chains, stale and
//! damaged records) and not only the "no superblock" exit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlog::format::RING_OFFSET_BYTES;
use ringlog::sim::SimDisk;
use ringlog::{Entry, EntryKind, Geometry, LogStore, Options, RingLog};

/// The formatted log, built once per process.
fn base_image() -> &'static [u8] {
    static IMAGE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    IMAGE.get_or_init(build_base_image)
}

fn build_base_image() -> Vec<u8> {
    let geometry = Geometry { segment_bytes: 64 << 10, segment_count: 4 };
    let disk = SimDisk::new(geometry.disk_bytes());
    let mut log = RingLog::format(disk, geometry, 7, Options::default()).expect("format");
    for i in 1..=20u64 {
        let entry = Entry { index: i, term: 0, kind: EntryKind::Command, data: vec![i as u8; 300 * (i as usize % 7)].into() };
        log.append(&[entry]).expect("append");
        if i % 3 == 0 {
            log.flush().expect("flush");
        }
    }
    log.flush().expect("flush");
    log.into_disk().into_image()
}

fuzz_target!(|data: &[u8]| {
    let Some((&keep, rest)) = data.split_first() else { return };
    let mut image = base_image().to_vec();
    let ring = RING_OFFSET_BYTES as usize;
    let start = ring + (keep as usize * 97) % (image.len() - ring);
    let end = (start + rest.len()).min(image.len());
    image[start..end].copy_from_slice(&rest[..end - start]);
    if let Ok(log) = RingLog::open(SimDisk::from_image(image), Options::default()) {
        let first = log.snapshot_id().index + 1;
        let last = log.last_id().index;
        if last >= first {
            let _ = log.entries(first, last + 1, u64::MAX);
        }
    }
});
