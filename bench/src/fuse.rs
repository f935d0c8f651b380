//! `bunker-bench fuse`: what the FUSE-served working copy costs the
//! application, against the same operations on the plain backing
//! directory, measured alternately in the same run.
//!
//! Workloads, each on a file of `--file-mib` MiB:
//! - `pwrite 4k`: a 4 KiB `pwrite` at a random page-aligned offset;
//! - `pread 4k`: a 4 KiB `pread` at a random page-aligned offset, the
//!   file's pages cached (read once before);
//! - `take`: after `--batch` such writes, one `RecordingMount::take`
//!   (write back, hand over the records) and `coalesce`: what a capture
//!   pays to learn what changed, against the baseline of reading and
//!   hashing the whole file (what the inotify backend pays per changed
//!   file).
//!
//! Needs root and /dev/fuse (it says so and stops otherwise).

use clap::Args;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use bunker::fuse::{self, coalesce, RecordingMount};

#[derive(Args, Debug)]
pub struct FuseArgs {
    /// Operations per workload and round.
    #[arg(long, default_value_t = 20_000)]
    ops: u64,
    /// Size of the file written and read.
    #[arg(long, default_value_t = 256)]
    file_mib: u64,
    /// Writes between two takes.
    #[arg(long, default_value_t = 16)]
    batch: u64,
    /// Alternating rounds (plain directory, then the mount).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

const PAGE: u64 = 4096;

fn hist() -> Result<Histogram<u64>, String> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).map_err(|e| e.to_string())
}

fn make_file(path: &Path, bytes: u64) -> Result<File, String> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // Written, not sparse: reads and writes hit real pages.
    let chunk = vec![0xA5u8; 1 << 20];
    let mut at = 0;
    while at < bytes {
        file.write_all_at(&chunk, at).map_err(|e| e.to_string())?;
        at += chunk.len() as u64;
    }
    Ok(file)
}

/// Per-operation latencies (ns) of `ops` random 4 KiB writes or reads.
fn io_run(
    file: &File,
    pages: u64,
    ops: u64,
    write: bool,
    seed: u64,
) -> Result<Histogram<u64>, String> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut h = hist()?;
    let mut buf = vec![0u8; PAGE as usize];
    for i in 0..ops {
        let at = rng.gen_range(0..pages) * PAGE;
        buf[0] = i as u8;
        let t = Instant::now();
        if write {
            file.write_all_at(&buf, at).map_err(|e| e.to_string())?;
        } else {
            file.read_exact_at(&mut buf, at)
                .map_err(|e| e.to_string())?;
        }
        h.record(t.elapsed().as_nanos().max(1) as u64)
            .map_err(|e| e.to_string())?;
    }
    Ok(h)
}

/// Reads the whole file once, so that its pages are cached.
fn warm(file: &File, bytes: u64) -> Result<(), String> {
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < bytes {
        file.read_exact_at(&mut buf, at)
            .map_err(|e| e.to_string())?;
        at += buf.len() as u64;
    }
    Ok(())
}

/// Time (ns) per take + coalesce after each batch of writes through the mount.
fn take_run(
    mount: &RecordingMount,
    file: &File,
    pages: u64,
    args: &FuseArgs,
) -> Result<Histogram<u64>, String> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut h = hist()?;
    let buf = vec![1u8; PAGE as usize];
    mount.take().map_err(|e| e.to_string())?;
    for _ in 0..args.ops / args.batch.max(1) {
        for _ in 0..args.batch {
            let at = rng.gen_range(0..pages) * PAGE;
            file.write_all_at(&buf, at).map_err(|e| e.to_string())?;
        }
        let t = Instant::now();
        let taken = mount.take().map_err(|e| e.to_string())?;
        let folded = coalesce(&taken.records);
        h.record(t.elapsed().as_nanos().max(1) as u64)
            .map_err(|e| e.to_string())?;
        if folded.written.is_empty() {
            return Err("a take after writes recorded nothing".into());
        }
    }
    Ok(h)
}

/// Time (ns) to read and hash the whole file: the inotify backend's cost
/// for one changed file.
fn hash_run(path: &Path, rounds: u64) -> Result<Histogram<u64>, String> {
    let mut h = hist()?;
    for _ in 0..rounds {
        let t = Instant::now();
        let data = fs::read(path).map_err(|e| e.to_string())?;
        std::hint::black_box(xxhash_rust::xxh3::xxh3_64(&data));
        h.record(t.elapsed().as_nanos().max(1) as u64)
            .map_err(|e| e.to_string())?;
    }
    Ok(h)
}

fn us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn row(name: &str, plain: &Histogram<u64>, mounted: &Histogram<u64>) {
    println!(
        "{name:<10} plain p50 {:>9.2} us p99 {:>9.2} us | mount p50 {:>9.2} us p99 {:>9.2} us | p50 ratio {:>8.4}x",
        us(plain, 0.5),
        us(plain, 0.99),
        us(mounted, 0.5),
        us(mounted, 0.99),
        us(mounted, 0.5) / us(plain, 0.5).max(0.001),
    );
}

pub fn run(args: FuseArgs) -> Result<(), String> {
    fuse::available().map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (backing, mnt) = (dir.path().join("backing"), dir.path().join("mnt"));
    fs::create_dir(&backing).map_err(|e| e.to_string())?;
    fs::create_dir(&mnt).map_err(|e| e.to_string())?;
    let bytes = args.file_mib << 20;
    let pages = bytes / PAGE;
    make_file(&backing.join("plain"), bytes)?;
    make_file(&backing.join("served"), bytes)?;
    let mount = RecordingMount::mount(&backing, &mnt).map_err(|e| e.to_string())?;
    let plain = OpenOptions::new()
        .read(true)
        .write(true)
        .open(backing.join("plain"))
        .map_err(|e| e.to_string())?;
    let served = OpenOptions::new()
        .read(true)
        .write(true)
        .open(mnt.join("served"))
        .map_err(|e| e.to_string())?;
    println!(
        "bunker-bench fuse: {} ops per workload and round, file {} MiB, take every {} writes, {} rounds",
        args.ops, args.file_mib, args.batch, args.rounds
    );
    for round in 1..=args.rounds {
        let seed = round as u64;
        let (pw, mw) = (
            io_run(&plain, pages, args.ops, true, seed)?,
            io_run(&served, pages, args.ops, true, seed)?,
        );
        mount.take().map_err(|e| e.to_string())?;
        // Reads in the steady state: every page in the page cache (through
        // the mount, the kernel caches the served file's pages apart from
        // the backing file's).
        warm(&plain, bytes)?;
        warm(&served, bytes)?;
        let (pr, mr) = (
            io_run(&plain, pages, args.ops, false, seed)?,
            io_run(&served, pages, args.ops, false, seed)?,
        );
        let take = take_run(&mount, &served, pages, &args)?;
        let hash = hash_run(&backing.join("plain"), 5)?;
        println!("round {round}");
        row("pwrite 4k", &pw, &mw);
        row("pread 4k", &pr, &mr);
        row("capture", &hash, &take);
        println!("           (capture: plain = read and hash the whole file; mount = take + coalesce after {} writes)", args.batch);
    }
    drop((plain, served));
    mount.unmount().map_err(|e| e.to_string())
}
