//! The FUSE-served working copy records what the application does (writes
//! page by page, as the kernel writes them back) and passes everything
//! through to the backing directory. Real mounts: these tests need root and /dev/fuse, and skip
//! (saying why) without them; CI runs them as root, where nothing skips.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;

use bunker::fuse::{self, coalesce, Record, RecordingMount};

fn mounted() -> Option<(tempfile::TempDir, RecordingMount)> {
    testenv::require(fuse::available())?;
    let dir = tempfile::tempdir().expect("temp dir");
    fs::create_dir(dir.path().join("backing")).expect("backing");
    fs::create_dir(dir.path().join("mnt")).expect("mount point");
    let mount =
        RecordingMount::mount(&dir.path().join("backing"), &dir.path().join("mnt")).expect("mount");
    // A bug in the filesystem would block the test inside a system call
    // on the mount for ever: bound it.
    std::thread::spawn(|| {
        std::thread::sleep(std::time::Duration::from_secs(120));
        eprintln!("a FUSE test hung for 120 s: aborting");
        std::process::abort();
    });
    Some((dir, mount))
}

#[test]
fn every_change_through_the_mount_is_recorded() {
    let Some((dir, mount)) = mounted() else {
        return;
    };
    let mnt = mount.mountpoint().to_path_buf();
    // SAFETY: umask has no preconditions; the old mask is put back at once.
    let umask = unsafe {
        let old = libc::umask(0o022);
        libc::umask(old);
        old
    };
    let dir_mode = 0o777 & !umask;
    let f = OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .mode_compat(0o644)
        .open(mnt.join("a"))
        .expect("create a");
    f.write_all_at(b"hello", 0).expect("write");
    f.write_all_at(b"XY", 100).expect("write at 100");
    drop(f);
    let mut appender = OpenOptions::new()
        .append(true)
        .open(mnt.join("a"))
        .expect("open for append");
    appender.write_all(b"tail").expect("append");
    drop(appender);
    OpenOptions::new()
        .write(true)
        .open(mnt.join("a"))
        .expect("open")
        .set_len(50)
        .expect("truncate");
    fs::create_dir(mnt.join("d")).expect("mkdir");
    fs::rename(mnt.join("a"), mnt.join("d/b")).expect("rename");
    fs::hard_link(mnt.join("d/b"), mnt.join("c")).expect("link");
    std::os::unix::fs::symlink("d/b", mnt.join("s")).expect("symlink");
    fs::set_permissions(mnt.join("c"), fs::Permissions::from_mode(0o600)).expect("chmod");
    fs::remove_file(mnt.join("c")).expect("unlink");
    fs::create_dir(mnt.join("e")).expect("mkdir e");
    fs::remove_dir(mnt.join("e")).expect("rmdir");

    let taken = mount.take().expect("take");
    assert!(!taken.overflowed);
    // Writes arrive as the kernel writes their pages back (the writeback
    // cache): whole pages, clipped to the file's size, at the latest when
    // the file is closed. Every byte written is in a recorded range, and
    // every recorded range is within a page that was written.
    let (writes, others): (Vec<Record>, Vec<Record>) = taken
        .records
        .iter()
        .cloned()
        .partition(|r| matches!(r, Record::Write { .. }));
    let in_a: Vec<(u64, u64)> = coalesce(&writes).written["a"].clone();
    assert_eq!(in_a, vec![(0, 106)], "{writes:?}");
    for w in &writes {
        assert!(
            matches!(w, Record::Write { path, offset, len } if path == "a" && offset + len <= 4096),
            "{w:?}"
        );
    }
    let expected = vec![
        Record::Create {
            path: "a".into(),
            mode: 0o644 & !umask,
        },
        Record::SetLen {
            path: "a".into(),
            len: 50,
        },
        Record::Mkdir {
            path: "d".into(),
            mode: dir_mode,
        },
        Record::Rename {
            from: "a".into(),
            to: "d/b".into(),
            exchange: false,
        },
        Record::Link {
            from: "d/b".into(),
            to: "c".into(),
        },
        Record::Symlink {
            path: "s".into(),
            target: "d/b".into(),
        },
        Record::Chmod {
            path: "c".into(),
            mode: 0o600,
        },
        Record::Unlink { path: "c".into() },
        Record::Mkdir {
            path: "e".into(),
            mode: dir_mode,
        },
        Record::Rmdir { path: "e".into() },
    ];
    assert_eq!(others, expected);
    let folded = coalesce(&taken.records);
    assert_eq!(folded.written["d/b"], vec![(0, 50)], "clipped at 50 bytes");
    assert_eq!(mount.take().expect("take").records, vec![], "taken once");

    // Everything went through to the backing directory.
    let backing = dir.path().join("backing");
    let data = fs::read(backing.join("d/b")).expect("d/b in the backing directory");
    assert_eq!(data.len(), 50);
    assert_eq!(&data[..5], b"hello");
    assert_eq!(
        fs::read_link(backing.join("s")).expect("symlink"),
        Path::new("d/b")
    );
    assert!(!backing.join("c").exists() && !backing.join("e").exists());
    mount.unmount().expect("unmount");
}

/// A new file of `len` bytes through the mount, mapped shared and writable.
fn mapped_new_file(mount: &RecordingMount, name: &str, len: u64) -> (fs::File, memmap2::MmapMut) {
    let file = OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(mount.mountpoint().join(name))
        .expect("create");
    file.set_len(len).expect("size");
    // SAFETY: the file is not changed by anyone else while mapped.
    let map = unsafe { memmap2::MmapMut::map_mut(&file) }.expect("map shared");
    (file, map)
}

#[test]
fn stores_through_a_shared_mapping_are_recorded_when_written_back() {
    let Some((dir, mount)) = mounted() else {
        return;
    };
    let (file, mut map) = mapped_new_file(&mount, "mapped", 64 << 10);
    let _ = mount.take().expect("take");
    map[3 * 4096 + 10] = 7;
    map[9 * 4096] = 9;
    map.flush().expect("msync");
    let taken = mount.take().expect("take");
    let folded = coalesce(&taken.records);
    let ranges = folded.written.get("mapped").cloned().unwrap_or_default();
    for at in [3 * 4096 + 10, 9 * 4096] {
        assert!(
            ranges.iter().any(|&(s, e)| s <= at && at < e),
            "byte {at} written through the mapping is in {ranges:?} ({:?})",
            taken.records
        );
    }
    drop(map);
    drop(file);
    let data = fs::read(dir.path().join("backing/mapped")).expect("backing file");
    assert_eq!((data[3 * 4096 + 10], data[9 * 4096]), (7, 9));
    mount.unmount().expect("unmount");
}

#[test]
fn a_take_writes_back_the_pages_of_a_mapping_the_application_keeps() {
    // An application that keeps its file mapped and never calls msync:
    // its stores reach the mount only when the kernel writes the pages
    // back, which `take` forces before it hands the records over.
    let Some((dir, mount)) = mounted() else {
        return;
    };
    let (file, mut map) = mapped_new_file(&mount, "kept", 32 << 10);
    drop(file);
    mount.take().expect("take");
    for round in 1..=3u8 {
        let at = usize::from(round) * 5000;
        map[at] = round;
        let taken = mount.take().expect("take");
        let ranges = coalesce(&taken.records)
            .written
            .get("kept")
            .cloned()
            .unwrap_or_default();
        assert!(
            ranges
                .iter()
                .any(|&(s, e)| s <= at as u64 && (at as u64) < e),
            "round {round}: the store at {at} is in {ranges:?}"
        );
    }
    let data = fs::read(dir.path().join("backing/kept")).expect("backing file");
    assert_eq!((data[5000], data[10000], data[15000]), (1, 2, 3));
    drop(map);
    mount.unmount().expect("unmount");
}

/// `OpenOptionsExt::mode`, spelled so that the umask of the test process
/// cannot change what the test expects.
trait ModeCompat {
    fn mode_compat(&mut self, mode: u32) -> &mut Self;
}

impl ModeCompat for OpenOptions {
    fn mode_compat(&mut self, mode: u32) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, mode)
    }
}
