//! `bunker-bench log`: durable-append latency and throughput of the ring
//! log, with the disk's own baselines measured in the same run on the same
//! filesystem.
//!
//! What it measures:
//! - baselines (4 KiB unless said): buffered pwrite + fdatasync on a
//!   pre-written file; O_DIRECT pwrite + fdatasync; O_DIRECT|O_DSYNC pwrite
//!   (the single sync-write floor); O_DIRECT|O_DSYNC rewriting one block in
//!   place (for the pad-or-rewrite choice); 1 MiB O_DIRECT|O_DSYNC
//!   sequential writes (the disk's sync bandwidth);
//! - the ring log over the production driver, for every record size and
//!   batch size, in both sync modes: append a batch, flush, wait until
//!   durable (one flush in flight, a closed loop: the latency one client
//!   sees when its append waits for nothing else).
//!
//! What it does not do: measure concurrency with other work (the Raft
//! pipeline benchmarks do) or run for long: each point runs for a fixed
//! short time (the machine is shared).
//!
//! Output: a table on stdout and a JSON file with every percentile.

use bytes::Bytes;
use hdrhistogram::Histogram;
use ringlog::uring::{create_log, SyncMode, UringOptions};
use ringlog::{AlignedBuf, Entry, EntryKind, Geometry, LogStore, Options};
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct LogArgs {
    /// Directory for the benchmark files (on the disk to measure).
    #[arg(long, default_value = "target/bench-ringlog")]
    dir: PathBuf,
    /// Record (entry payload) sizes in bytes.
    #[arg(long, value_delimiter = ',', default_value = "64,1024,16384,262144")]
    sizes: Vec<usize>,
    /// Entries per flush.
    #[arg(long, value_delimiter = ',', default_value = "1,4,32,256")]
    batches: Vec<usize>,
    /// Time per measured point, in milliseconds.
    #[arg(long, default_value_t = 400)]
    point_ms: u64,
    /// Sync modes of the ring log to measure: adaptive, dsync, fdatasync,
    /// both (dsync and fdatasync) or all.
    #[arg(long, default_value = "all")]
    modes: String,
    /// Where the JSON results go.
    #[arg(long, default_value = "results")]
    out_dir: PathBuf,
    /// Spin budgets (microseconds) of the driver's threads to measure.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    spins: Vec<u64>,
    /// Skip the recovery measurement (it writes a 1 GiB log).
    #[arg(long)]
    skip_recovery: bool,
    /// Allow a memory filesystem (tmpfs): the numbers then mean nothing for
    /// durability.
    #[arg(long)]
    allow_volatile_fs: bool,
}

#[derive(Serialize, Debug, Clone)]
struct Point {
    name: String,
    record_bytes: usize,
    batch: usize,
    ops: u64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    max_us: f64,
    mean_us: f64,
    /// Payload bytes made durable per second.
    mb_per_s: f64,
    /// Entries (or writes) made durable per second.
    per_s: f64,
    /// Adaptive sync mode: the share of flushes that took `RWF_DSYNC`.
    #[serde(skip_serializing_if = "Option::is_none")]
    dsync_share: Option<f64>,
}

#[derive(Serialize)]
struct Report {
    command: String,
    dir: String,
    filesystem: String,
    point_ms: u64,
    baselines: Vec<Point>,
    ringlog: Vec<Point>,
    recovery: Vec<Point>,
    ratios: Vec<(String, f64)>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

fn point(
    name: &str,
    record_bytes: usize,
    batch: usize,
    hist: &Histogram<u64>,
    elapsed: Duration,
) -> Point {
    let us = |ns: u64| ns as f64 / 1000.0;
    let ops = hist.len();
    let secs = elapsed.as_secs_f64().max(1e-9);
    Point {
        name: name.into(),
        record_bytes,
        batch,
        ops,
        p50_us: us(hist.value_at_quantile(0.5)),
        p90_us: us(hist.value_at_quantile(0.9)),
        p99_us: us(hist.value_at_quantile(0.99)),
        max_us: us(hist.max()),
        mean_us: hist.mean() / 1000.0,
        mb_per_s: (ops as f64 * (record_bytes * batch) as f64) / secs / 1e6,
        per_s: ops as f64 * batch as f64 / secs,
        dsync_share: None,
    }
}

/// Runs `op` for about `point_ms` (at least 5 times) and records each call.
fn measure(
    point_ms: u64,
    mut op: impl FnMut() -> std::io::Result<()>,
) -> std::io::Result<(Histogram<u64>, Duration)> {
    let mut hist = histogram();
    // Warm up (first-touch effects of the file and the device).
    for _ in 0..3 {
        op()?;
    }
    let budget = Duration::from_millis(point_ms);
    let start = Instant::now();
    while start.elapsed() < budget || hist.len() < 5 {
        let t = Instant::now();
        op()?;
        hist.record(t.elapsed().as_nanos().max(1) as u64)
            .expect("in range");
    }
    Ok((hist, start.elapsed()))
}

fn prewritten(path: &Path, size: u64, flags: i32) -> std::io::Result<File> {
    let _ = std::fs::remove_file(path);
    {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)?;
        let zeros = vec![0u8; 1 << 20];
        let mut offset = 0;
        while offset < size {
            file.write_all_at(&zeros, offset)?;
            offset += zeros.len() as u64;
        }
        file.sync_all()?;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(flags)
        .open(path)
}

fn baselines(args: &LogArgs) -> std::io::Result<Vec<Point>> {
    const FILE_BYTES: u64 = 256 << 20;
    let path = args.dir.join("baseline.dat");
    let mut out = Vec::new();
    let block = AlignedBuf::zeroed(4096);
    let big = AlignedBuf::zeroed(1 << 20);
    let cases: [(&str, i32, usize, bool, bool); 5] = [
        (
            "pwrite+fdatasync (buffered, pre-written)",
            0,
            4096,
            true,
            true,
        ),
        (
            "O_DIRECT pwrite+fdatasync",
            libc::O_DIRECT,
            4096,
            true,
            true,
        ),
        (
            "O_DIRECT|O_DSYNC pwrite",
            libc::O_DIRECT | libc::O_DSYNC,
            4096,
            false,
            true,
        ),
        (
            "O_DIRECT|O_DSYNC pwrite, same block rewritten",
            libc::O_DIRECT | libc::O_DSYNC,
            4096,
            false,
            false,
        ),
        (
            "O_DIRECT|O_DSYNC 1 MiB sequential",
            libc::O_DIRECT | libc::O_DSYNC,
            1 << 20,
            false,
            true,
        ),
    ];
    for (name, flags, len, fdatasync, advance) in cases {
        let file = prewritten(&path, FILE_BYTES, flags)?;
        let buf = if len == 4096 { &block } else { &big };
        let mut offset = 0u64;
        let (hist, elapsed) = measure(args.point_ms, || {
            file.write_all_at(buf.as_slice(), offset)?;
            if fdatasync {
                file.sync_data()?;
            }
            if advance {
                offset = (offset + len as u64) % FILE_BYTES;
            }
            Ok(())
        })?;
        out.push(point(name, len, 1, &hist, elapsed));
    }
    // The same durable writes through io_uring, as the ring log's driver
    // issues them: O_DIRECT write linked to IORING_OP_FSYNC(DATASYNC), and
    // an RWF_DSYNC write.
    for (name, len, dsync) in [
        (
            "io_uring O_DIRECT write+fdatasync (linked)",
            4096usize,
            false,
        ),
        ("io_uring O_DIRECT write RWF_DSYNC", 4096, true),
        (
            "io_uring O_DIRECT 1 MiB write+fdatasync (linked)",
            1 << 20,
            false,
        ),
    ] {
        let file = prewritten(&path, FILE_BYTES, libc::O_DIRECT)?;
        let mut ring = io_uring::IoUring::new(8)?;
        let buf = if len == 4096 { &block } else { &big };
        let mut offset = 0u64;
        let (hist, elapsed) = measure(args.point_ms, || {
            uring_write(&mut ring, &file, buf, offset, dsync)?;
            offset = (offset + len as u64) % FILE_BYTES;
            Ok(())
        })?;
        out.push(point(name, len, 1, &hist, elapsed));
    }
    let _ = std::fs::remove_file(&path);
    Ok(out)
}

/// Bytes one flush of `batch` records of `record_bytes` writes (headers
/// included, padded to a sector, as the ring log pads each flush).
fn flush_bytes(record_bytes: usize, batch: usize) -> usize {
    let raw = batch * (record_bytes + ringlog::format::RECORD_HEADER_BYTES);
    raw.div_ceil(4096) * 4096
}

/// The same-size floor of each point: O_DIRECT|O_DSYNC writes of exactly
/// the bytes one flush writes, one after another. A closed loop of small
/// flushes is bound by the sync's latency, not the disk's bandwidth, and a
/// 256 KiB record cannot be compared with a 4 KiB write; this says how
/// close the log comes to what the disk does with a write of that size.
fn flush_baselines(args: &LogArgs) -> std::io::Result<Vec<Point>> {
    const FILE_BYTES: u64 = 256 << 20;
    let path = args.dir.join("baseline-flush.dat");
    let mut sizes: Vec<usize> = args
        .sizes
        .iter()
        .flat_map(|&size| {
            args.batches
                .iter()
                .map(move |&batch| flush_bytes(size, batch))
        })
        .filter(|&bytes| bytes as u64 <= FILE_BYTES / 2)
        .collect();
    sizes.sort_unstable();
    sizes.dedup();
    let file = prewritten(&path, FILE_BYTES, libc::O_DIRECT | libc::O_DSYNC)?;
    let mut out = Vec::new();
    for len in sizes {
        let buf = AlignedBuf::zeroed(len);
        let mut offset = 0u64;
        let (hist, elapsed) = measure(args.point_ms, || {
            file.write_all_at(buf.as_slice(), offset)?;
            offset = (offset + len as u64) % (FILE_BYTES - len as u64 + 1) / 4096 * 4096;
            Ok(())
        })?;
        out.push(point(FLUSH_FLOOR, len, 1, &hist, elapsed));
    }
    let _ = std::fs::remove_file(&path);
    Ok(out)
}

const FLUSH_FLOOR: &str = "O_DIRECT|O_DSYNC pwrite, one flush's bytes";

/// One durable write through io_uring: a write linked to a data sync, or
/// a write flagged RWF_DSYNC.
fn uring_write(
    ring: &mut io_uring::IoUring,
    file: &File,
    buf: &AlignedBuf,
    offset: u64,
    dsync: bool,
) -> std::io::Result<()> {
    use io_uring::{opcode, squeue, types};
    use std::os::fd::AsRawFd;
    let fd = types::Fd(file.as_raw_fd());
    let write = opcode::Write::new(fd, buf.as_slice().as_ptr(), buf.len() as u32)
        .offset(offset)
        .rw_flags(if dsync { libc::RWF_DSYNC } else { 0 })
        .build();
    let entries = if dsync { 1 } else { 2 };
    // SAFETY: `buf` outlives the wait for both completions below.
    unsafe {
        if dsync {
            ring.submission()
                .push(&write)
                .map_err(|_| std::io::Error::other("queue full"))?;
        } else {
            let sync = opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build();
            ring.submission()
                .push(&write.flags(squeue::Flags::IO_LINK))
                .map_err(|_| std::io::Error::other("queue full"))?;
            ring.submission()
                .push(&sync)
                .map_err(|_| std::io::Error::other("queue full"))?;
        }
    }
    ring.submit_and_wait(entries)?;
    for cqe in ring.completion() {
        if cqe.result() < 0 {
            return Err(std::io::Error::from_raw_os_error(-cqe.result()));
        }
    }
    Ok(())
}

fn ring_points(args: &LogArgs, mode: SyncMode, spin_us: u64) -> Result<Vec<Point>, String> {
    let geometry = Geometry {
        segment_bytes: 64 << 20,
        segment_count: 8,
    };
    let options = Options {
        cache_bytes_max: 16 << 20,
        unflushed_bytes_max: 96 << 20,
        flushes_in_flight_max: 1,
    };
    let uring = UringOptions {
        sync_mode: mode,
        allow_volatile_fs: args.allow_volatile_fs,
        spin_us,
        ..UringOptions::default()
    };
    let mode_name = match mode {
        SyncMode::Dsync => "RWF_DSYNC",
        SyncMode::Fdatasync => "write+fdatasync",
        SyncMode::Adaptive => "adaptive",
    };
    // One log per mode, reused by every point: the file is created (and
    // pre-written) once, and each point keeps appending where the previous
    // one stopped, releasing what is durable so the ring never fills.
    let path = args.dir.join("ringlog.dat");
    let _ = std::fs::remove_file(&path);
    let mut log = create_log(&path, geometry, options, uring).map_err(|e| e.to_string())?;
    log.save_hard_state(ringlog::HardState {
        term: 1,
        vote: None,
    })
    .map_err(|e| e.to_string())?;
    let mut index = 0u64;
    let mut out = Vec::new();
    for &size in &args.sizes {
        for &batch in &args.batches {
            let data = Bytes::from(vec![0xa5u8; size]);
            let mut error = None;
            let paths_before = log.disk().sync_path_counts();
            let result = measure(args.point_ms, || {
                let entries: Vec<Entry> = (1..=batch as u64)
                    .map(|i| Entry {
                        index: index + i,
                        term: 1,
                        kind: EntryKind::Command,
                        data: data.clone(),
                    })
                    .collect();
                index += batch as u64;
                let step = log
                    .append(&entries)
                    .and_then(|()| log.flush())
                    .and_then(|durable| {
                        assert_eq!(durable.index, index);
                        // Keep the ring from filling: everything durable but the
                        // last batch is released (as snapshots would).
                        let release = index.saturating_sub(batch as u64);
                        if release > log.snapshot_id().index {
                            log.release_to(release)?;
                        }
                        Ok(())
                    });
                step.map_err(|e| {
                    let text = e.to_string();
                    error = Some(text.clone());
                    std::io::Error::other(text)
                })
            });
            let (hist, elapsed) =
                result.map_err(|e| error.clone().unwrap_or_else(|| e.to_string()))?;
            let spin = if spin_us > 0 {
                format!(", spin {spin_us} us")
            } else {
                String::new()
            };
            let mut p = point(
                &format!("ringlog {mode_name}{spin}"),
                size,
                batch,
                &hist,
                elapsed,
            );
            if mode == SyncMode::Adaptive {
                let after = log.disk().sync_path_counts();
                let dsync = after.dsync - paths_before.dsync;
                let all = dsync + after.fdatasync - paths_before.fdatasync;
                p.dsync_share = Some(dsync as f64 / all.max(1) as f64);
            }
            out.push(p);
        }
    }
    drop(log);
    let _ = std::fs::remove_file(&path);
    Ok(out)
}

/// Recovery time of a full default-size ring (16 x 64 MiB): recovery reads
/// every sector start of the ring once, so this is its worst case.
fn recovery_point(args: &LogArgs) -> Result<Point, String> {
    let geometry = Geometry {
        segment_bytes: 64 << 20,
        segment_count: 16,
    };
    let uring = UringOptions {
        allow_volatile_fs: args.allow_volatile_fs,
        ..UringOptions::default()
    };
    let path = args.dir.join("recovery.dat");
    let _ = std::fs::remove_file(&path);
    let mut log =
        create_log(&path, geometry, Options::default(), uring).map_err(|e| e.to_string())?;
    log.save_hard_state(ringlog::HardState {
        term: 1,
        vote: None,
    })
    .map_err(|e| e.to_string())?;
    // Fill most of the ring with 4 KiB entries (the ring keeps one segment free).
    let data = Bytes::from(vec![0x5au8; 4096]);
    let mut index = 0u64;
    let target_bytes = (geometry.segment_count as u64 - 2) * geometry.segment_bytes;
    while index * 4168 < target_bytes {
        let entries: Vec<Entry> = (1..=256u64)
            .map(|i| Entry {
                index: index + i,
                term: 1,
                kind: EntryKind::Command,
                data: data.clone(),
            })
            .collect();
        index += 256;
        log.append(&entries)
            .and_then(|()| log.flush())
            .map_err(|e| e.to_string())?;
    }
    let last = log.last_id();
    drop(log);
    let mut hist = histogram();
    let start = Instant::now();
    for _ in 0..3 {
        let t = Instant::now();
        let log = ringlog::uring::open_log(&path, Options::default(), uring)
            .map_err(|e| e.to_string())?;
        hist.record(t.elapsed().as_nanos().max(1) as u64)
            .expect("in range");
        assert_eq!(log.last_id(), last);
    }
    let elapsed = start.elapsed();
    let _ = std::fs::remove_file(&path);
    Ok(point(
        &format!(
            "recovery of a 1 GiB ring holding {} entries of 4 KiB",
            last.index
        ),
        geometry.disk_bytes() as usize,
        1,
        &hist,
        elapsed,
    ))
}

fn filesystem(dir: &Path) -> String {
    // SAFETY: statfs fills the zeroed struct; the path is NUL-terminated.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    let c_path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap_or_default();
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return "unknown".into();
    }
    match stat.f_type as i64 {
        0xef53 => "ext4".into(),
        0x5846_5342 => "xfs".into(),
        0x0102_1994 => "tmpfs".into(),
        0x9123_683e => "btrfs".into(),
        other => format!("0x{other:x}"),
    }
}

fn print_points(title: &str, points: &[Point]) {
    println!("\n{title}");
    println!(
        "{:<48} {:>8} {:>5} {:>7} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>7}",
        "what",
        "bytes",
        "batch",
        "ops",
        "p50 us",
        "p90 us",
        "p99 us",
        "max us",
        "MB/s",
        "entries/s",
        "dsync%"
    );
    for p in points {
        let share = p
            .dsync_share
            .map(|s| format!("{:.0}", s * 100.0))
            .unwrap_or_default();
        println!(
            "{:<48} {:>8} {:>5} {:>7} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>10.1} {:>10.0} {:>7}",
            p.name,
            p.record_bytes,
            p.batch,
            p.ops,
            p.p50_us,
            p.p90_us,
            p.p99_us,
            p.max_us,
            p.mb_per_s,
            p.per_s,
            share
        );
    }
}

pub fn run(args: LogArgs) -> Result<(), String> {
    std::fs::create_dir_all(&args.dir).map_err(|e| format!("{}: {e}", args.dir.display()))?;
    let fs = filesystem(&args.dir);
    println!(
        "ringlog benchmark in {} ({fs}), {} ms per point",
        args.dir.display(),
        args.point_ms
    );
    let mut baselines =
        baselines(&args).map_err(|e| format!("baseline on {}: {e}", args.dir.display()))?;
    baselines.extend(
        flush_baselines(&args).map_err(|e| format!("baseline on {}: {e}", args.dir.display()))?,
    );
    print_points("baselines (same filesystem, same run)", &baselines);
    let mut ring = Vec::new();
    let modes: Vec<SyncMode> = match args.modes.as_str() {
        "dsync" => vec![SyncMode::Dsync],
        "fdatasync" => vec![SyncMode::Fdatasync],
        "adaptive" => vec![SyncMode::Adaptive],
        "both" => vec![SyncMode::Dsync, SyncMode::Fdatasync],
        "all" => vec![SyncMode::Adaptive, SyncMode::Dsync, SyncMode::Fdatasync],
        other => {
            return Err(format!(
                "--modes {other}: expected adaptive, dsync, fdatasync, both (dsync and \
                 fdatasync) or all"
            ))
        }
    };
    for mode in modes {
        for &spin_us in &args.spins {
            ring.extend(ring_points(&args, mode, spin_us)?);
        }
    }
    print_points("ringlog: append a batch, flush, wait until durable", &ring);
    let recovery = if args.skip_recovery {
        Vec::new()
    } else {
        vec![recovery_point(&args)?]
    };
    print_points("ringlog: recovery (open) time", &recovery);

    let find = |name: &str| baselines.iter().find(|p| p.name == name).expect("measured");
    let floor = find("O_DIRECT|O_DSYNC pwrite").p50_us;
    let bandwidth = find("O_DIRECT|O_DSYNC 1 MiB sequential").mb_per_s;
    let uring_floor = find("io_uring O_DIRECT write+fdatasync (linked)").p50_us;
    let uring_bandwidth = find("io_uring O_DIRECT 1 MiB write+fdatasync (linked)").mb_per_s;
    let mut ratios = Vec::new();
    for p in &ring {
        let bytes = flush_bytes(p.record_bytes, p.batch);
        let same = baselines
            .iter()
            .find(|b| b.name == FLUSH_FLOOR && b.record_bytes == bytes);
        if let (1, Some(same)) = (p.batch, same) {
            ratios.push((
                format!(
                    "{} {} B batch 1: p50 / O_DSYNC write of the same {} KiB p50",
                    p.name,
                    p.record_bytes,
                    bytes >> 10
                ),
                p.p50_us / same.p50_us,
            ));
        }
        if p.batch == 1 {
            ratios.push((
                format!(
                    "{} {} B batch 1: p50 / O_DIRECT|O_DSYNC 4 KiB p50",
                    p.name, p.record_bytes
                ),
                p.p50_us / floor,
            ));
            ratios.push((
                format!(
                    "{} {} B batch 1: p50 / io_uring write+fdatasync 4 KiB p50",
                    p.name, p.record_bytes
                ),
                p.p50_us / uring_floor,
            ));
        }
        if p.batch >= 32 {
            if let Some(same) = same {
                ratios.push((
                    format!(
                        "{} {} B batch {}: flushes/s / {} KiB O_DSYNC writes/s",
                        p.name,
                        p.record_bytes,
                        p.batch,
                        bytes >> 10
                    ),
                    (p.per_s / p.batch as f64) / same.per_s,
                ));
            }
            ratios.push((
                format!(
                    "{} {} B batch {}: MB/s / 1 MiB O_DSYNC MB/s",
                    p.name, p.record_bytes, p.batch
                ),
                p.mb_per_s / bandwidth,
            ));
            ratios.push((
                format!(
                    "{} {} B batch {}: MB/s / 1 MiB io_uring write+fdatasync MB/s",
                    p.name, p.record_bytes, p.batch
                ),
                p.mb_per_s / uring_bandwidth,
            ));
        }
    }
    println!(
        "\nratios (targets: batch 1 p50 <= 1.1x the sync-write floor; batch >= 32 >= 0.9x the 1 MiB \
         bandwidth; and, for reading the small-record points, flushes against O_DSYNC writes of \
         the same bytes)"
    );
    for (what, ratio) in &ratios {
        println!("  {what:<90} {ratio:>6.2}");
    }
    let report = Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        dir: args.dir.display().to_string(),
        filesystem: fs,
        point_ms: args.point_ms,
        baselines,
        ringlog: ring,
        recovery,
        ratios,
    };
    std::fs::create_dir_all(&args.out_dir)
        .map_err(|e| format!("{}: {e}", args.out_dir.display()))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let out = args.out_dir.join(format!("ringlog-{stamp}.json"));
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    std::fs::write(&out, json).map_err(|e| format!("{}: {e}", out.display()))?;
    println!("\nJSON: {}", out.display());
    Ok(())
}
