//! `bunker-bench recovery`: how long a server takes to come back after a
//! crash with the longest log tail its checkpoint settings allow.
//!
//! What it does: starts one real server (blob or accounts application)
//! whose checkpoints happen only after `--entries` applied deltas (no
//! byte or time trigger within the run), waits for one checkpoint, then
//! runs `--entries - 1` more commands, so that the log holds that many
//! entries after the checkpoint, kills the server with SIGKILL (nothing is
//! flushed or synced beyond what it did by itself), restarts it, and
//! measures the time from the restart to the first answer to a new
//! command: opening the log, re-indexing the state, replaying the tail
//! from the checkpoint, the election, the command. The same with a tail of
//! one entry gives the baseline in the same run.
//!
//! What it does not do: measure a follower catching up from its peers
//! (`anchors` measures failover), or crash in the middle of a write (the
//! crash tests and the simulator do).

use bunker::client::BlockingClient;
use bunker::demo::{AppSpec, LocalCluster};
use clap::Args;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct RecoveryArgs {
    /// The application: blob or accounts.
    #[arg(long, default_value = "blob")]
    app: String,
    /// Entries after the last checkpoint when the server is killed (the
    /// checkpoint trigger by entries; the default is the server's).
    #[arg(long, default_value_t = 10_000)]
    entries: u64,
    /// Concurrent clients filling the log.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// The `bunker` executable (default: next to this one).
    #[arg(long)]
    bunker: Option<PathBuf>,
    /// Where the server lives (default: a temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
}

pub fn run(args: RecoveryArgs) -> Result<(), String> {
    if args.app != "blob" && args.app != "accounts" {
        return Err(format!(
            "unknown application {:?} (blob, accounts)",
            args.app
        ));
    }
    let exe = crate::bunker_exe(&args.bunker)?;
    let root = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("bunker-recovery-{}", std::process::id()))
    });
    for tail in [1, args.entries] {
        let dir = root.join(format!("tail-{tail}"));
        let (restart_ms, state_bytes) = trial(&dir, &exe, &args, tail)?;
        println!(
            "{} app, {tail} entries after the checkpoint, state {:.1} MiB: restart to first answer {restart_ms:.0} ms",
            args.app,
            state_bytes as f64 / (1 << 20) as f64
        );
    }
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

/// One crash with `tail` entries after the checkpoint; returns the time
/// from the restart to the first answer, and the state's size.
fn trial(
    dir: &std::path::Path,
    exe: &std::path::Path,
    args: &RecoveryArgs,
    tail: u64,
) -> Result<(f64, u64), String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut cluster = LocalCluster::create(dir, exe, 1, AppSpec::builtin(&args.app, false))
        .map_err(|e| e.to_string())?;
    // Checkpoints by entries only (a large log, so that the tail fits).
    let every = args.entries.max(tail + 1);
    cluster
        .edit_config(|text| {
            text.replace("segment_mib = 16", "segment_mib = 64")
                + &format!("\n[checkpoint]\nentries = {every}\nmib = 4096\ninterval_ms = 3600000\n")
        })
        .map_err(|e| e.to_string())?;
    cluster.start_all().map_err(|e| e.to_string())?;
    cluster.wait_for_leader(&[]).map_err(|e| e.to_string())?;
    if args.app == "accounts" {
        crate::e2e::open_accounts(&cluster)?;
    }
    // Up to the first checkpoint, then the tail.
    let applied = status_applied(&cluster)?;
    fill(
        &cluster,
        &args.app,
        args.clients,
        every.saturating_sub(applied) + 8,
    )?;
    wait_checkpoint(&cluster)?;
    fill(&cluster, &args.app, args.clients, tail)?;
    let state_bytes = dir_bytes(&cluster.data_dir(1).join("state"));
    cluster.kill(1);
    let restarted = Instant::now();
    cluster.start(1).map_err(|e| e.to_string())?;
    let mut client = BlockingClient::connect(cluster.client_config()).map_err(|e| e.to_string())?;
    client
        .call(crate::e2e::command(&args.app, 0, u64::MAX / 2))
        .map_err(|e| format!("the first command after the restart: {e}"))?;
    let ms = restarted.elapsed().as_secs_f64() * 1e3;
    cluster.stop_all();
    Ok((ms, state_bytes))
}

/// Runs `commands` commands with `clients` closed-loop clients.
fn fill(cluster: &LocalCluster, app: &str, clients: usize, commands: u64) -> Result<(), String> {
    let per = commands.div_ceil(clients.max(1) as u64);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..clients)
            .map(|c| {
                let cfg = cluster.client_config();
                s.spawn(move || -> Result<(), String> {
                    let mut client = BlockingClient::connect(cfg).map_err(|e| e.to_string())?;
                    for n in 0..per {
                        client
                            .call(crate::e2e::command(app, c, n))
                            .map_err(|e| e.to_string())?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().map_err(|_| "a client panicked".to_string())?)
    })
}

fn status_applied(cluster: &LocalCluster) -> Result<u64, String> {
    cluster
        .statuses()
        .into_iter()
        .find_map(|(_, s)| s.ok())
        .map(|s| s.applied_index)
        .ok_or_else(|| "no status from the server".to_string())
}

/// Waits until the server's last checkpoint covers what it applied.
fn wait_checkpoint(cluster: &LocalCluster) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = cluster.statuses().into_iter().find_map(|(_, s)| s.ok()) {
            if s.checkpoint_index > 0 {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err("no checkpoint within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
