//! `bunker-bench delta`: capture time, apply time and delta size of the delta
//! engine against database size and change size, for one large file with
//! random page writes (like SQLite) and for a tree of many files, on real
//! files (memmap2, inotify, the fsync thread).
//!
//! Baselines measured in the same run, per iteration: a plain xxh3 pass over
//! the changed bytes (the least any capture must do), and a full read (plus
//! xxh3) of the changed files (what a capture without page-level change
//! information costs). Ratios against both are reported.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bunker::delta::{Engine, EngineConfig, RealTree};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use xxhash_rust::xxh3::xxh3_64;

const PAGE: u64 = 4096;
/// File size of the many-files layout.
const TREE_FILE_BYTES: u64 = 64 * 1024;
/// Files per directory in the many-files layout.
const TREE_FANOUT: u64 = 256;

#[derive(clap::Args, Debug)]
pub struct DeltaArgs {
    /// Database sizes (suffixes K, M, G).
    #[arg(long, value_delimiter = ',', default_value = "1M,16M,256M,1G")]
    pub sizes: Vec<String>,
    /// Change sizes per command (bytes; suffixes K, M).
    #[arg(long, value_delimiter = ',', default_value = "1,4K,64K,1M,10M")]
    pub changes: Vec<String>,
    /// Layouts: `single` (one large file, random page writes) and `tree`
    /// (64 KiB files, 256 per directory).
    #[arg(long, value_delimiter = ',', default_value = "single,tree")]
    pub layouts: Vec<String>,
    /// Measured commands per case (fewer are run on the largest sizes).
    #[arg(long, default_value_t = 20)]
    pub iters: u64,
    /// Scratch directory (needs about 4x the largest size free).
    #[arg(long, default_value = "/tmp/bunker-bench-delta")]
    pub dir: PathBuf,
    /// Where the JSON results go.
    #[arg(long, default_value = "results/delta.json")]
    pub out: PathBuf,
    /// Maximum size of one delta part (the log's entry size).
    #[arg(long, default_value = "4M")]
    pub max_part: String,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

#[derive(Serialize, Debug)]
struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

#[derive(Serialize, Debug)]
struct CaseResult {
    layout: String,
    db_bytes: u64,
    files: u64,
    change_bytes: u64,
    iters: u64,
    capture_us: Percentiles,
    apply_us: Percentiles,
    baseline_xxh3_changed_us: Percentiles,
    baseline_read_changed_files_us: Percentiles,
    delta_bytes_p50: u64,
    delta_to_change_ratio: f64,
    bytes_hashed_p50: u64,
    capture_vs_xxh3_ratio_p50: f64,
    capture_vs_read_ratio_p50: f64,
}

#[derive(Serialize, Debug)]
struct Report {
    benchmark: &'static str,
    command: String,
    page_bytes: u64,
    max_part_bytes: usize,
    cases: Vec<CaseResult>,
}

pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .map(|n| n * mult)
        .map_err(|e| format!("bad size {text:?}: {e}"))
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    let us = |v: u64| v as f64 / 1000.0;
    Percentiles {
        p50: us(h.value_at_quantile(0.5)),
        p90: us(h.value_at_quantile(0.9)),
        p99: us(h.value_at_quantile(0.99)),
        max: us(h.max()),
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

/// Paths (relative to a data directory) of the layout's files.
fn layout_files(layout: &str, db_bytes: u64) -> Vec<(String, u64)> {
    match layout {
        "single" => vec![("db.sqlite".to_string(), db_bytes)],
        _ => {
            let count = (db_bytes / TREE_FILE_BYTES).max(1);
            (0..count)
                .map(|i| {
                    (
                        format!("d{:03}/f{:05}", i / TREE_FANOUT, i),
                        TREE_FILE_BYTES.min(db_bytes),
                    )
                })
                .collect()
        }
    }
}

/// Writes the initial database into `dir` (deterministic content).
fn write_initial(dir: &Path, files: &[(String, u64)], seed: u64) -> std::io::Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut buf = vec![0u8; 1 << 20];
    for (path, size) in files {
        let full = dir.join(path);
        if let Some(parent) = full.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut file = fs::File::create(&full)?;
        let mut left = *size;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            rng.fill(&mut buf[..n]);
            file.write_all(&buf[..n])?;
            left -= n as u64;
        }
    }
    Ok(())
}

/// Opens an engine at `root` whose committed state is the initial database.
fn engine_with_db(
    root: &Path,
    files: &[(String, u64)],
    seed: u64,
    config: &EngineConfig,
) -> Result<Engine<RealTree>, String> {
    let _ = fs::remove_dir_all(root);
    let tree = RealTree::open(root).map_err(|e| e.to_string())?;
    let (engine, _) = Engine::open(tree, config.clone()).map_err(|e| e.to_string())?;
    let base = root.join(engine.base_dir());
    drop(engine);
    write_initial(&base, files, seed).map_err(|e| e.to_string())?;
    let tree = RealTree::open(root).map_err(|e| e.to_string())?;
    let (mut engine, _) = Engine::open(tree, config.clone()).map_err(|e| e.to_string())?;
    engine.bootstrap_from_base().map_err(|e| e.to_string())?;
    Ok(engine)
}

/// One command of the benchmark's application: `change` bytes written in
/// `live/` (random pages of random files). Returns the changed files and the
/// bytes written (for the xxh3 baseline).
fn run_command(
    live: &Path,
    files: &[(String, u64)],
    change: u64,
    rng: &mut ChaCha8Rng,
) -> std::io::Result<(BTreeSet<String>, Vec<u8>)> {
    let mut touched = BTreeSet::new();
    let mut written = Vec::with_capacity(change as usize);
    if change < PAGE {
        let (path, size) = &files[rng.gen_range(0..files.len())];
        let offset = rng.gen_range(0..size - change);
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(live.join(path))?;
        let mut old = vec![0u8; change as usize];
        file.read_exact_at(&mut old, offset)?;
        // Every byte really changes (and the size does not).
        let new: Vec<u8> = old.iter().map(|b| !b).collect();
        file.write_all_at(&new, offset)?;
        touched.insert(path.clone());
        written.extend_from_slice(&new);
        return Ok((touched, written));
    }
    let pages = change / PAGE;
    let mut chosen = BTreeSet::new();
    let total_pages: u64 = files.iter().map(|(_, s)| s / PAGE).sum();
    while (chosen.len() as u64) < pages.min(total_pages) {
        chosen.insert(rng.gen_range(0..total_pages));
    }
    let pages_per_file = files[0].1 / PAGE;
    let mut page = vec![0u8; PAGE as usize];
    let mut open: Option<(usize, fs::File)> = None;
    for global in chosen {
        let (file_no, page_no) = ((global / pages_per_file) as usize, global % pages_per_file);
        if open.as_ref().map(|(n, _)| *n) != Some(file_no) {
            open = Some((
                file_no,
                fs::OpenOptions::new()
                    .write(true)
                    .open(live.join(&files[file_no].0))?,
            ));
        }
        rng.fill(&mut page[..]);
        open.as_ref()
            .expect("opened")
            .1
            .write_all_at(&page, page_no * PAGE)?;
        touched.insert(files[file_no].0.clone());
        written.extend_from_slice(&page);
    }
    Ok((touched, written))
}

fn run_case(
    args: &DeltaArgs,
    layout: &str,
    db_bytes: u64,
    changes: &[u64],
    config: &EngineConfig,
    out: &mut Vec<CaseResult>,
) -> Result<(), String> {
    let files = layout_files(layout, db_bytes);
    let started = Instant::now();
    let mut leader = engine_with_db(&args.dir.join("leader"), &files, args.seed, config)?;
    let mut follower = engine_with_db(&args.dir.join("follower"), &files, args.seed, config)?;
    // Flush the setup's dirty pages so that they do not land in the first
    // measured fsyncs.
    let _ = std::process::Command::new("sync").status();
    eprintln!(
        "delta: {layout} {} MiB in {} files: setup {:.1}s",
        db_bytes >> 20,
        files.len(),
        started.elapsed().as_secs_f64()
    );
    let live = args.dir.join("leader").join("live");
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed ^ db_bytes);
    let mut index = 0u64;
    for &change in changes {
        if change > db_bytes / 4 {
            continue;
        }
        let iters = if db_bytes >= 1 << 30 {
            args.iters.div_ceil(4)
        } else if db_bytes >= 256 << 20 {
            args.iters.div_ceil(2)
        } else {
            args.iters
        };
        let (mut capture, mut apply, mut xxh, mut read) =
            (histogram(), histogram(), histogram(), histogram());
        let mut delta_sizes = Vec::new();
        let mut hashed = Vec::new();
        let mut ratios_xxh = Vec::new();
        let mut ratios_read = Vec::new();
        for _ in 0..iters {
            let (touched, written) =
                run_command(&live, &files, change, &mut rng).map_err(|e| e.to_string())?;
            let t = Instant::now();
            let captured = leader.capture().map_err(|e| e.to_string())?;
            let capture_ns = t.elapsed().as_nanos() as u64;
            let t = Instant::now();
            let mut start = index;
            for part in &captured.parts {
                start += 1;
                follower.apply(start, 1, part).map_err(|e| e.to_string())?;
            }
            let apply_ns = t.elapsed().as_nanos() as u64;
            for part in &captured.parts {
                index += 1;
                leader.apply(index, 1, part).map_err(|e| e.to_string())?;
            }
            // Baselines, same iteration.
            let t = Instant::now();
            std::hint::black_box(xxh3_64(&written));
            let xxh_ns = (t.elapsed().as_nanos() as u64).max(1);
            let t = Instant::now();
            for path in &touched {
                let bytes = fs::read(live.join(path)).map_err(|e| e.to_string())?;
                std::hint::black_box(xxh3_64(&bytes));
            }
            let read_ns = (t.elapsed().as_nanos() as u64).max(1);
            capture
                .record(capture_ns.max(1))
                .map_err(|e| e.to_string())?;
            apply.record(apply_ns.max(1)).map_err(|e| e.to_string())?;
            xxh.record(xxh_ns).map_err(|e| e.to_string())?;
            read.record(read_ns).map_err(|e| e.to_string())?;
            delta_sizes.push(captured.stats.encoded_bytes);
            hashed.push(captured.stats.bytes_hashed);
            ratios_xxh.push(capture_ns as f64 / xxh_ns as f64);
            ratios_read.push(capture_ns as f64 / read_ns as f64);
        }
        let delta_p50 = median_u64(&mut delta_sizes);
        let result = CaseResult {
            layout: layout.to_string(),
            db_bytes,
            files: files.len() as u64,
            change_bytes: change,
            iters,
            capture_us: percentiles(&capture),
            apply_us: percentiles(&apply),
            baseline_xxh3_changed_us: percentiles(&xxh),
            baseline_read_changed_files_us: percentiles(&read),
            delta_bytes_p50: delta_p50,
            delta_to_change_ratio: delta_p50 as f64 / change as f64,
            bytes_hashed_p50: median_u64(&mut hashed),
            capture_vs_xxh3_ratio_p50: median_f64(&mut ratios_xxh),
            capture_vs_read_ratio_p50: median_f64(&mut ratios_read),
        };
        eprintln!(
            "  change {:>9} B: capture p50 {:>10.1} us  apply p50 {:>9.1} us  delta {:>9} B ({:.2}x)  vs xxh3 {:>7.1}x  vs read {:.2}x",
            change,
            result.capture_us.p50,
            result.apply_us.p50,
            delta_p50,
            result.delta_to_change_ratio,
            result.capture_vs_xxh3_ratio_p50,
            result.capture_vs_read_ratio_p50
        );
        out.push(result);
    }
    drop(leader);
    drop(follower);
    let _ = fs::remove_dir_all(&args.dir);
    Ok(())
}

fn median_u64(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn median_f64(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

pub fn run(args: DeltaArgs) -> Result<(), String> {
    let sizes: Vec<u64> = args
        .sizes
        .iter()
        .map(|s| parse_size(s))
        .collect::<Result<_, _>>()?;
    let changes: Vec<u64> = args
        .changes
        .iter()
        .map(|s| parse_size(s))
        .collect::<Result<_, _>>()?;
    let max_part = parse_size(&args.max_part)? as usize;
    if changes.contains(&0) {
        return Err("change sizes must be at least 1 byte".into());
    }
    let config = EngineConfig {
        max_part_bytes: max_part,
        ..EngineConfig::default()
    };
    let mut cases = Vec::new();
    for layout in &args.layouts {
        if layout != "single" && layout != "tree" {
            return Err(format!("unknown layout {layout:?} (single, tree)"));
        }
        for &size in &sizes {
            run_case(&args, layout, size, &changes, &config, &mut cases)?;
        }
    }
    let report = Report {
        benchmark: "delta",
        command: std::env::args().collect::<Vec<_>>().join(" "),
        page_bytes: PAGE,
        max_part_bytes: max_part,
        cases,
    };
    if let Some(parent) = args.out.parent() {
        fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    fs::write(&args.out, json).map_err(|e| e.to_string())?;
    eprintln!("delta: results in {}", args.out.display());
    Ok(())
}
