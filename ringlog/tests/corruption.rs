//! Corruption detection: damage to a durable record that later records
//! vouch for is reported as `StorageError::Corrupt`, never silently
//! truncated; damage the format cannot tell from a torn write (inside the
//! last flush) at worst loses that flush; redundant structures (superblock
//! copies, hard-state slots) survive damage to one copy. Also: arbitrary
//! bytes never make the decoder or the recovery scan panic.

mod common;

use common::*;
use proptest::prelude::*;
use ringlog::format::{decode_record, Superblock, RING_OFFSET_BYTES, SECTOR_BYTES};
use ringlog::sim::SimDisk;
use ringlog::{HardState, LogStore, RingLog, StorageError};

/// A log with `flushes` flushes of entries; returns it with the model state
/// before the last flush and after it, and the byte range the last flush
/// wrote.
fn written_log(flushes: u64) -> (SimDisk, State, State, std::ops::Range<u64>) {
    let mut log = new_log(SMALL, small_options(1 << 20));
    log.save_hard_state(HardState {
        term: 3,
        vote: None,
    })
    .unwrap();
    let mut before_last = State::empty();
    let mut last_range = 0..0;
    for f in 0..flushes {
        before_last = read_state(&log);
        let first = log.last_id().index + 1;
        let entries: Vec<_> = (0..4)
            .map(|i| entry(first + i, 3, 300 + 97 * i as usize, f))
            .collect();
        log.append(&entries).unwrap();
        let ticket = log.begin_flush().unwrap().unwrap();
        let writes = log.disk().pending_writes();
        let start = writes.first().unwrap().0;
        let end = writes.last().map(|&(o, l)| o + l as u64).unwrap();
        last_range = start..end;
        log.complete_flush(ticket).unwrap();
    }
    let after = read_state(&log);
    (log.into_disk(), before_last, after, last_range)
}

#[test]
fn a_bad_checksum_followed_by_valid_records_is_corruption() {
    let (mut disk, _, _, last_flush) = written_log(6);
    // Damage a record in the first flush (which starts at the sector after
    // the segment's checkpoint): later flushes vouch for it.
    let offset = RING_OFFSET_BYTES + SECTOR_BYTES as u64 + 100;
    assert!(offset < last_flush.start);
    disk.flip_bit(offset, 3);
    match RingLog::open(disk, small_options(1 << 20)) {
        Err(StorageError::Corrupt(why)) => {
            assert!(why.contains("durable record is damaged"), "{why}")
        }
        Err(e) => panic!("expected corruption, got {e}"),
        Ok(log) => panic!("damage silently accepted: log ends at {}", log.last_id()),
    }
}

#[test]
fn every_bit_flip_is_detected_or_harmless() {
    let (disk, before_last, after, last_flush) = written_log(5);
    let end = last_flush.end;
    let (mut corrupt, mut harmless, mut lost_tail) = (0, 0, 0);
    for offset in (RING_OFFSET_BYTES..end).step_by(37) {
        let mut damaged = disk.clone();
        damaged.flip_bit(offset, (offset % 8) as u8);
        match RingLog::open(damaged, small_options(1 << 20)) {
            Err(StorageError::Corrupt(_)) => corrupt += 1,
            Err(e) => panic!("flip at {offset}: unexpected error {e}"),
            Ok(log) => {
                let state = read_state(&log);
                if state == after {
                    harmless += 1;
                } else {
                    // Only damage inside the last flush may read as a torn
                    // tail, and then only that flush is lost.
                    assert!(
                        last_flush.contains(&offset),
                        "flip at {offset} silently truncated the log"
                    );
                    // What remains is the log before that flush plus a
                    // prefix of that flush's entries.
                    let kept = state.entries.len();
                    assert!(
                        kept >= before_last.entries.len(),
                        "flip at {offset} lost more than the last flush"
                    );
                    assert!(
                        state.entries[..] == after.entries[..kept],
                        "flip at {offset}: entries differ"
                    );
                    lost_tail += 1;
                }
            }
        }
    }
    assert!(
        corrupt > 50,
        "corrupt {corrupt} harmless {harmless} lost tail {lost_tail}"
    );
    assert!(harmless > 0 && lost_tail > 0);
}

#[test]
fn one_damaged_superblock_copy_or_hard_state_slot_is_survived() {
    let (disk, _, after, _) = written_log(2);
    let mut damaged = disk.clone();
    damaged.flip_bit(20, 1);
    let log = RingLog::open(damaged, small_options(1 << 20)).unwrap();
    assert_eq!(read_state(&log), after);
    // Both copies damaged: corruption, named.
    let mut damaged = disk.clone();
    damaged.flip_bit(20, 1);
    damaged.flip_bit(3 * SECTOR_BYTES as u64 + 20, 1);
    assert!(matches!(
        RingLog::open(damaged, small_options(1 << 20)),
        Err(StorageError::Corrupt(_))
    ));
    // The newest hard-state slot torn: the previous one is used.
    let mut log = RingLog::open(disk, small_options(1 << 20)).unwrap();
    log.save_hard_state(HardState {
        term: 4,
        vote: Some(2),
    })
    .unwrap();
    log.save_hard_state(HardState {
        term: 5,
        vote: Some(3),
    })
    .unwrap();
    let mut disk = log.into_disk();
    let mut torn = disk.clone();
    // seq 4 went to slot 0 (sector 1).
    torn.flip_bit(SECTOR_BYTES as u64 + 30, 0);
    let log = RingLog::open(torn, small_options(1 << 20)).unwrap();
    assert_eq!(
        log.hard_state(),
        HardState {
            term: 4,
            vote: Some(2)
        }
    );
    disk.flip_bit(SECTOR_BYTES as u64 + 30, 0);
    disk.flip_bit(2 * SECTOR_BYTES as u64 + 30, 0);
    assert!(matches!(
        RingLog::open(disk, small_options(1 << 20)),
        Err(StorageError::Corrupt(_))
    ));
}

#[test]
fn an_unformatted_disk_is_a_clear_error() {
    let disk = SimDisk::new(SMALL.disk_bytes());
    match RingLog::open(disk, small_options(1 << 20)) {
        Err(e) => assert!(e.to_string().contains("never formatted"), "{e}"),
        Ok(_) => panic!("opened a blank disk"),
    }
}

/// A disk image whose superblock is valid and whose every other byte comes
/// from the test input: recovery must return, not panic.
fn disk_from_bytes(bytes: &[u8], valid_checkpoint: bool) -> SimDisk {
    let mut log = new_log(SMALL, small_options(1 << 20));
    if valid_checkpoint {
        log.append(&[entry(1, 0, 10, 0)]).unwrap();
        log.flush().unwrap();
    }
    let mut image = log.into_disk().into_image();
    let ring = RING_OFFSET_BYTES as usize;
    for (i, &b) in bytes.iter().enumerate() {
        // Keep the checkpoint of segment 0 (its first 128 bytes) when asked.
        let at =
            ring + if valid_checkpoint { 128 } else { 0 } + (i * 7919) % (image.len() - ring - 128);
        image[at] = b;
    }
    SimDisk::from_image(image)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..600), seed in any::<u64>()) {
        let _ = decode_record(&bytes, seed);
        let _ = Superblock::decode(&bytes);
        let _ = ringlog::format::HardStateSlot::decode(&bytes, seed);
        let _ = ringlog::format::Checkpoint::decode(&bytes);
    }

    #[test]
    fn arbitrary_disk_contents_never_panic_recovery(
        bytes in proptest::collection::vec(any::<u8>(), 0..4000),
        keep_checkpoint in any::<bool>(),
    ) {
        let disk = disk_from_bytes(&bytes, keep_checkpoint);
        if let Ok(log) = RingLog::open(disk, small_options(1 << 20)) {
            let _ = read_state(&log);
        }
    }

    #[test]
    fn random_damage_to_a_real_log_never_panics(flips in proptest::collection::vec((0u64..200_000, 0u8..8), 1..20)) {
        let (disk, _, _, _) = written_log(4);
        let mut damaged = disk;
        let size = ringlog::Disk::size_bytes(&damaged);
        for (offset, bit) in flips {
            damaged.flip_bit(offset % size, bit);
        }
        if let Ok(log) = RingLog::open(damaged, small_options(1 << 20)) {
            let last = log.last_id().index;
            let first = log.snapshot_id().index + 1;
            if last >= first {
                let _ = log.entries(first, last + 1, u64::MAX);
            }
        }
    }
}
