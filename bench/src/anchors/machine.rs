//! The machine a run measured: cores, memory, kernel, and the disk's sync
//! latency measured in the same run (4 KiB pwrite + fdatasync, the floor
//! under every durable write of every system in the table).

use hdrhistogram::Histogram;
use serde::Serialize;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

const SYNC_SAMPLES: usize = 300;

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub cpu: String,
    pub sync_p50_us: u64,
    pub sync_p99_us: u64,
}

impl Machine {
    pub fn text(&self) -> String {
        format!(
            "machine: {} cores ({}), {:.1} GiB memory, Linux {}; disk: 4 KiB pwrite+fdatasync p50 {:.3} ms, p99 {:.3} ms ({SYNC_SAMPLES} samples, same filesystem as the clusters)",
            self.cores,
            self.cpu,
            self.memory_gib,
            self.kernel,
            self.sync_p50_us as f64 / 1e3,
            self.sync_p99_us as f64 / 1e3
        )
    }
}

pub fn describe(dir: &Path) -> Result<Machine, String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib: f64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    let path = dir.join("sync-probe");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let block = vec![0x5Au8; 4096];
    let mut h = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    for i in 0..SYNC_SAMPLES {
        let t = Instant::now();
        file.write_all_at(&block, (i as u64 % 64) * 4096)
            .and_then(|_| file.sync_data())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let _ = h.record(t.elapsed().as_micros() as u64);
    }
    let _ = std::fs::remove_file(&path);
    Ok(Machine {
        cores,
        memory_gib: memory_kib / (1024.0 * 1024.0),
        kernel,
        cpu,
        sync_p50_us: h.value_at_quantile(0.5),
        sync_p99_us: h.value_at_quantile(0.99),
    })
}
