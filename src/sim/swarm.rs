//! Swarm testing (as in TigerBeetle's VOPR and FoundationDB's simulation,
//! after Groce et al., "Swarm Testing", ISSTA 2012): each seed draws its
//! own configuration and fault mix before it runs, so that different seeds
//! explore different corners (a log small enough to fill, a window of one
//! append, batches of one entry, no pauses but many partitions, twelve
//! clients with a session table of eight...) instead of every seed running
//! the defaults under the same mix.
//!
//! What it does: from the seed alone (a generator of its own, never the
//! run's), draws the consensus options (batch sizes, pipeline window,
//! election and heartbeat ticks, proposal backpressure), the simulated
//! hardware (sync latency, each server's clock rate), the log geometry and
//! compaction, the fault mix (which nemesis actions, how often, how much
//! loss, duplication and delay, how many servers may be destroyed) and,
//! for the replica layer, the engine's part and chunk sizes, the
//! pipeline's limits and the workload (clients, application crashes, large
//! commands, session churn, client timeouts). Every draw goes through the
//! configuration's own validation (`Options::validate`, the geometry's and
//! the engine's limits); a combination they refuse is drawn again, so an
//! invalid configuration never reaches a server.
//!
//! What it does not do: change what the run does with its draws (a seed
//! with its configuration replays exactly), or draw anything that can
//! break an invariant by itself (the fault model stays that of docs/REQUIREMENTS.md:
//! at most two servers destroyed, everything healed for liveness).
//!
//! Invariants: the draw depends only on the seed and the base
//! configuration; `describe` prints everything drawn.

use crate::raft::Options;
use crate::sim::cluster::Timing;
use crate::sim::log::SIM_GEOMETRY;
use crate::sim::nemesis::{FaultConfig, ACTIONS};
use crate::sim::replicas::{ReplicaShape, Workload};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ringlog::Geometry;

/// What a seed runs with, whatever the layer.
#[derive(Clone, Debug)]
pub struct Draw {
    pub opts: Options,
    pub timing: Timing,
    pub faults: FaultConfig,
    /// Each server's clock rate at the start (the nemesis changes them).
    pub clock_rates: Vec<f64>,
    /// Each server's log.
    pub geometry: Geometry,
    /// Consensus layer: compact a log once it holds this many applied entries.
    pub compact_entries: u64,
    /// Replica layer: the servers' configuration and the workload.
    pub shape: ReplicaShape,
    pub workload: Workload,
    /// Whether this was drawn (false: the fixed defaults).
    pub swarm: bool,
}

/// The generator of a seed's configuration: independent of the run's.
fn rng_of(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_5A44)
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, choices: &[T]) -> T {
    *choices.choose(rng).expect("choices are never empty")
}

impl Draw {
    /// The fixed configuration (swarm testing off).
    pub fn fixed(
        nodes: usize,
        opts: &Options,
        timing: &Timing,
        faults: &FaultConfig,
        workload: &Workload,
    ) -> Draw {
        Draw {
            opts: opts.clone(),
            timing: timing.clone(),
            faults: faults.clone(),
            clock_rates: vec![1.0; nodes],
            geometry: SIM_GEOMETRY,
            compact_entries: 64,
            shape: ReplicaShape::default(),
            workload: workload.clone(),
            swarm: false,
        }
    }

    /// The consensus layer's draw for `seed` over the base configuration.
    pub fn consensus(seed: u64, base: Draw) -> Draw {
        let mut rng = rng_of(seed);
        let mut d = base;
        d.swarm = true;
        d.draw_common(&mut rng);
        d.geometry = pick_geometry(&mut rng, &[SIM_GEOMETRY, geometry(8, 64), geometry(4, 64)]);
        d.compact_entries = pick(&mut rng, &[8, 64, 1024]);
        // Consensus entries are small: each group commit takes one sector.
        d.opts.uncommitted_entries_max =
            fit_uncommitted(d.opts.uncommitted_entries_max, d.geometry, SECTOR);
        d
    }

    /// The replica layer's draw for `seed` over the base configuration.
    pub fn replica(seed: u64, base: Draw) -> Draw {
        let mut rng = rng_of(seed);
        let mut d = base;
        d.swarm = true;
        d.draw_common(&mut rng);
        d.geometry = pick_geometry(&mut rng, &[SIM_GEOMETRY, geometry(8, 128), geometry(6, 64)]);
        d.draw_shape(&mut rng);
        d.draw_workload(&mut rng);
        // A follower appends a batch whole or not at all: a batch larger
        // than its free log never fits, and it never catches up (replica
        // seed 949194826 of the first swarm run: 8 parts of 32 KiB to a
        // 6 x 64 KiB ring). A batch takes a quarter of the usable log at most.
        d.opts.batch_bytes_max = d
            .opts
            .batch_bytes_max
            .min(usable_bytes(d.geometry) / 4)
            .max(1);
        // As a server's configuration sets it: a follower's log holds the
        // leader's uncommitted backlog twice over (replica seed 876162001:
        // twelve entries of up to 32 KiB, proposed while no majority
        // answered, filled a 6 x 64 KiB ring on every follower, and none
        // could take the barrier that would commit them).
        d.opts.uncommitted_bytes_max = uncommitted_bytes_max(d.geometry);
        d
    }

    fn draw_common(&mut self, rng: &mut ChaCha8Rng) {
        self.opts = draw_options(rng, &self.opts);
        self.timing.sync_us_max = pick(rng, &[500, 2_000, 20_000]);
        self.timing.sync_us_min = self.timing.sync_us_min.min(self.timing.sync_us_max);
        if rng.gen_bool(0.5) {
            for rate in self.clock_rates.iter_mut() {
                *rate = rng.gen_range(0.8..1.25);
            }
        }
        self.faults = draw_faults(rng, &self.faults);
    }

    /// Engine and pipeline limits that fit the drawn log.
    fn draw_shape(&mut self, rng: &mut ChaCha8Rng) {
        let s = &mut self.shape;
        s.geometry = self.geometry;
        // As a server's configuration requires: an entry is at most half a
        // segment (a log of a few entries cannot hold a backlog and the
        // barrier that commits it).
        s.entry_bytes_max = s
            .entry_bytes_max
            .min(self.geometry.entry_payload_bytes_max())
            .min(self.geometry.segment_bytes / 2);
        // A part plus the pipeline's envelope (a response of up to
        // `response_bytes_max`, ids, hashes) fits in one entry.
        let envelope = s.replica.response_bytes_max as u64 + 4096;
        let part_max = s.entry_bytes_max.saturating_sub(envelope);
        let parts: Vec<usize> = [16usize << 10, 24 << 10, 32 << 10]
            .into_iter()
            .filter(|&p| p as u64 <= part_max)
            .collect();
        if let Some(&p) = parts.choose(rng) {
            s.engine.max_part_bytes = p;
        }
        s.engine.snapshot_chunk_bytes = pick(rng, &[16 << 10, 64 << 10, 256 << 10]);
        s.replica.compact_entries = pick(rng, &[8, 64, 1_000]);
        s.replica.compact_keep_entries = pick(rng, &[0, 4, 16, 200]);
        s.replica.pipeline_commands_max = pick(rng, &[1, 4, 64]);
        s.replica.snapshot_chunks_in_flight = pick(rng, &[1, 4, 16]);
        s.replica.sessions_max = pick(rng, &[8, 12, 64]);
        // Checkpoints after every entry, rarely, or by time alone.
        s.replica.checkpoint_entries = pick(rng, &[1, 8, 48, 100_000]);
        s.replica.checkpoint_bytes = pick(rng, &[16 << 10, 256 << 10, 1 << 30]);
        s.replica.checkpoint_ticks = pick(rng, &[1, 10, 50, 1_000]);
    }

    fn draw_workload(&mut self, rng: &mut ChaCha8Rng) {
        let w = &mut self.workload;
        w.clients = pick(rng, &[1, 3, 6, 12]);
        w.app_crash = pick(rng, &[0.0, 0.01, 0.1]);
        w.large = pick(rng, &[0.0, 0.01, 0.1]);
        w.commands_per_identity = pick(rng, &[10, 100, 1_000]);
        w.client_timeout_us = pick(rng, &[100_000, 300_000, 1_000_000]);
        // A timeout shorter than the latency under load (one command in the
        // pipeline, 20 ms syncs, twelve clients) livelocks clients that
        // retry at a fixed pace (replica seed 949194516 of the first swarm
        // run): swarm clients back off, as real ones do.
        w.retry_backoff = true;
        // Every client keeps its session while it is active: a table
        // smaller than the clients would only measure session churn.
        let sessions = &mut self.shape.replica.sessions_max;
        *sessions = (*sessions).max(w.clients + 2);
    }

    /// One line with everything the seed runs with.
    pub fn describe(&self) -> String {
        let o = &self.opts;
        let f = &self.faults;
        let mut out = format!(
            "{}: batch {} entries/{} B, window {}, election {} ticks, heartbeat {}, \
             uncommitted {}/{} B, sync <= {}us, clocks {}, log {}x{} KiB",
            if self.swarm { "swarm" } else { "fixed" },
            o.batch_entries_max,
            o.batch_bytes_max,
            o.inflight_appends_max,
            o.election_ticks_min,
            o.heartbeat_ticks,
            o.uncommitted_entries_max,
            o.uncommitted_bytes_max,
            self.timing.sync_us_max,
            describe_rates(&self.clock_rates),
            self.geometry.segment_count,
            self.geometry.segment_bytes >> 10,
        );
        out.push_str(&format!(
            " | faults every {}ms, loss <= {:.2}, dup <= {:.2}, delay <= {}ms, \
             partitions {}, crashes {}, pauses {}, clocks {}, destroy <= {}, mix {}",
            f.interval_us_mean / 1000,
            f.loss_max,
            f.duplicate_max,
            f.delay_us_max / 1000,
            f.partitions,
            f.crashes,
            f.pauses,
            f.clocks,
            f.destroy_max,
            describe_weights(&f.weights),
        ));
        out
    }

    /// The replica layer's part of the configuration, for its reports.
    pub fn describe_replica(&self) -> String {
        let s = &self.shape;
        let w = &self.workload;
        format!(
            "entry <= {} B, part <= {} B, chunk {} B x {}, compact {} keep {}, checkpoint \
             {} entries {} B {} ticks, pipeline {}, sessions {} | {} clients, timeout {}ms (backoff {}), app crash {}, large {}, \
             {} commands per session",
            s.entry_bytes_max,
            s.engine.max_part_bytes,
            s.engine.snapshot_chunk_bytes,
            s.replica.snapshot_chunks_in_flight,
            s.replica.compact_entries,
            s.replica.compact_keep_entries,
            s.replica.checkpoint_entries,
            s.replica.checkpoint_bytes,
            s.replica.checkpoint_ticks,
            s.replica.pipeline_commands_max,
            s.replica.sessions_max,
            w.clients,
            w.client_timeout_us / 1000,
            w.retry_backoff,
            w.app_crash,
            w.large,
            w.commands_per_identity,
        )
    }
}

const SECTOR: u64 = ringlog::format::SECTOR_BYTES as u64;

/// The largest proposal backlog (`uncommitted_entries_max`, at most
/// `wanted`) whose entries a log of `geometry` holds three times over when
/// each takes `record_bytes` (a group commit per entry, padded to a
/// sector), counting only the segments that can hold entries not yet
/// released (one is kept free, and the head segment may still hold
/// released ones). Entries beyond the commit index cannot be released, a
/// follower may hold several leaders' worth of them, and a server whose
/// ring is full of them cannot append the barrier of its own election: it
/// stops, and if its log is the most up to date no one else can lead
/// (consensus seeds 1076, 1086 and 848 of the first swarm builds, with
/// 4 x 64 KiB rings).
pub fn fit_uncommitted(wanted: u64, geometry: Geometry, record_bytes: u64) -> u64 {
    let fits = usable_bytes(geometry) / record_bytes.max(1) / 3;
    wanted.min(fits.saturating_sub(1)).max(1)
}

/// The log space that entries not yet released can count on: one segment
/// is kept free and the head one may still hold released entries.
/// The uncommitted-bytes bound a server sets for its log: a quarter of the
/// usable space (`ServerConfig::raft_options`).
pub(crate) fn uncommitted_bytes_max(geometry: Geometry) -> u64 {
    (usable_bytes(geometry) / 4).max(1)
}

fn usable_bytes(geometry: Geometry) -> u64 {
    u64::from(geometry.segment_count.saturating_sub(2))
        * geometry
            .segment_bytes
            .saturating_sub(ringlog::format::CONTROL_RESERVE_BYTES)
}

fn geometry(segment_count: u32, segment_kib: u64) -> Geometry {
    Geometry {
        segment_bytes: segment_kib << 10,
        segment_count,
    }
}

/// A geometry the ring accepts (every candidate here does; the check is
/// what keeps a future candidate honest).
fn pick_geometry(rng: &mut ChaCha8Rng, choices: &[Geometry]) -> Geometry {
    let g = pick(rng, choices);
    let valid = g.segment_count >= 3
        && g.segment_bytes >= ringlog::format::SEGMENT_BYTES_MIN
        && g.segment_bytes.is_multiple_of(SECTOR);
    if valid {
        g
    } else {
        SIM_GEOMETRY
    }
}

/// Consensus options, drawn until `Options::validate` accepts them.
fn draw_options(rng: &mut ChaCha8Rng, base: &Options) -> Options {
    const TRIES: usize = 16;
    for _ in 0..TRIES {
        let o = Options {
            batch_entries_max: pick(rng, &[1, 2, 3, 8, 64, 256]),
            batch_bytes_max: pick(rng, &[512, 8 << 10, 1 << 20]),
            inflight_appends_max: pick(rng, &[1, 2, 4, 16]),
            heartbeat_ticks: pick(rng, &[1, 2, 3]),
            election_ticks_min: pick(rng, &[5, 10, 20]),
            uncommitted_entries_max: pick(rng, &[256, 4096]),
            ..base.clone()
        };
        if o.validate().is_ok() {
            return o;
        }
    }
    base.clone()
}

/// A fault mix: each action kept with its weight scaled, or left out.
fn draw_faults(rng: &mut ChaCha8Rng, base: &FaultConfig) -> FaultConfig {
    let mut f = base.clone();
    f.interval_us_mean = pick(rng, &[150_000, 400_000, 1_500_000]);
    f.loss_max = pick(rng, &[0.0, 0.1, 0.3, 0.5]);
    f.duplicate_max = pick(rng, &[0.0, 0.1, 0.3]);
    f.delay_us_max = pick(rng, &[10_000, 40_000, 150_000]);
    f.partitions = rng.gen_bool(0.8);
    f.crashes = rng.gen_bool(0.8);
    f.pauses = rng.gen_bool(0.8);
    f.clocks = rng.gen_bool(0.8);
    f.destroy_max = f.destroy_max.min(pick(rng, &[0, 1, 2, 2]));
    for (w, default) in f.weights.iter_mut().zip(FaultConfig::WEIGHTS_DEFAULT) {
        // Off a quarter of the time; otherwise a half to four times as likely.
        *w = pick(
            rng,
            &[0, default / 2, default, default, 2 * default, 4 * default],
        );
    }
    f
}

fn describe_rates(rates: &[f64]) -> String {
    if rates.iter().all(|&r| r == 1.0) {
        return "1x".to_string();
    }
    let rates: Vec<String> = rates.iter().map(|r| format!("{r:.2}")).collect();
    format!("[{}]", rates.join(" "))
}

fn describe_weights(weights: &[u32; 10]) -> String {
    let parts: Vec<String> = ACTIONS
        .iter()
        .zip(weights)
        .map(|(name, w)| format!("{name} {w}"))
        .collect();
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Draw {
        Draw::fixed(
            5,
            &Options::default(),
            &Timing::default(),
            &FaultConfig::level("medium").expect("level"),
            &Workload::default(),
        )
    }

    #[test]
    fn draws_depend_on_the_seed_only_and_are_valid() {
        let mut shapes = std::collections::HashSet::new();
        for seed in 0..500 {
            let a = Draw::replica(seed, base());
            let b = Draw::replica(seed, base());
            assert_eq!(a.describe(), b.describe());
            assert_eq!(a.describe_replica(), b.describe_replica());
            assert!(a.opts.validate().is_ok());
            let s = &a.shape;
            assert!(s.entry_bytes_max <= a.geometry.entry_payload_bytes_max());
            assert!(s.engine.max_part_bytes as u64 + 4096 < s.entry_bytes_max);
            assert!(s.replica.sessions_max >= a.workload.clients + 2);
            shapes.insert(a.describe());
            let c = Draw::consensus(seed, base());
            let small = 4 * (64 << 10) / SECTOR;
            assert!(c.geometry != geometry(4, 64) || c.opts.uncommitted_entries_max < small);
        }
        assert!(shapes.len() > 400, "seeds draw different configurations");
    }
}
