//! Choosing the sync path by measurement, while the log runs.
//!
//! What it does: [`SyncChooser`] decides, for each flush, whether the I/O
//! thread makes its writes durable with a linked `fdatasync` or with writes
//! flagged `RWF_DSYNC`, from the latencies the two paths showed on this
//! disk, for flushes of a similar size, recently. The driver reports every
//! flush's latency back ([`SyncChooser::record`]).
//!
//! Why: both paths are durable, but which one is faster depends on the
//! machine and on what else syncs on the filesystem, by an order of
//! magnitude (docs/PERFORMANCE.md, "ringlog"): on a quiet disk `RWF_DSYNC`
//! (a FUA write) saves 40 to 70 µs of a 190 µs flush; with other sync
//! writers on the same filesystem every synchronous-write path was seen at
//! 4 ms while an io_uring `fdatasync` stayed at 0.1 ms. No fixed choice is
//! right for both, and the regime changes while a server runs.
//!
//! What it does not do: touch a clock or the disk (the driver measures and
//! reports), or affect durability: whichever path it picks, the flush is
//! durable when it completes.
//!
//! Invariants: deterministic for a given sequence of `choose`/`record`
//! calls; memory is fixed (`SIZE_CLASSES x 2` rings of `SAMPLES` values);
//! the path that is not preferred is still tried (probed) at a bounded
//! rate, at most one flush in `PROBE_EVERY_MIN` and at least one in
//! `PROBE_EVERY_MAX` once both paths have `SAMPLES_MIN` samples, so a
//! change of regime is noticed; the further behind the other path is, the
//! rarer the probe, so a path that is ten times slower costs little.

/// A concrete way to make a flush durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPath {
    /// Writes, then `fdatasync`, linked in one io_uring submission.
    Fdatasync,
    /// Writes flagged `RWF_DSYNC`.
    Dsync,
}

impl SyncPath {
    fn slot(self) -> usize {
        match self {
            SyncPath::Fdatasync => 0,
            SyncPath::Dsync => 1,
        }
    }

    fn other(self) -> SyncPath {
        match self {
            SyncPath::Fdatasync => SyncPath::Dsync,
            SyncPath::Dsync => SyncPath::Fdatasync,
        }
    }
}

/// Flush sizes are compared in classes of powers of two of 4 KiB (4 KiB,
/// 8 KiB, ... , 512 KiB and above): a 1 MiB flush's latency says nothing
/// about a 4 KiB one's.
pub const SIZE_CLASSES: usize = 8;
/// Latencies kept per path and size class (the median of these decides).
pub const SAMPLES: usize = 9;
/// Samples a path needs in a class before the medians are compared.
pub const SAMPLES_MIN: usize = 3;
/// The other path is probed at most once in this many flushes...
pub const PROBE_EVERY_MIN: u32 = 16;
/// ...and at least once in this many, however far behind it is.
pub const PROBE_EVERY_MAX: u32 = 512;

/// The size class of a flush of `bytes`.
pub fn size_class(bytes: u64) -> usize {
    let sectors = bytes.div_ceil(4096).max(1);
    let class = 63 - sectors.leading_zeros() as usize;
    class.min(SIZE_CLASSES - 1)
}

/// The last `SAMPLES` latencies of one path in one size class.
#[derive(Clone, Copy, Debug, Default)]
struct Samples {
    ns: [u64; SAMPLES],
    count: usize,
    next: usize,
}

impl Samples {
    fn push(&mut self, ns: u64) {
        self.ns[self.next] = ns;
        self.next = (self.next + 1) % SAMPLES;
        self.count = (self.count + 1).min(SAMPLES);
    }

    fn median(&self) -> Option<u64> {
        if self.count < SAMPLES_MIN {
            return None;
        }
        let mut sorted = self.ns;
        let sorted = &mut sorted[..self.count];
        sorted.sort_unstable();
        Some(sorted[self.count / 2])
    }
}

/// Per size class: both paths' samples, and flushes since each path was
/// last used.
#[derive(Clone, Copy, Debug, Default)]
struct Class {
    samples: [Samples; 2],
    since_used: [u32; 2],
}

/// The chooser (see the module documentation).
#[derive(Clone, Debug)]
pub struct SyncChooser {
    classes: [Class; SIZE_CLASSES],
}

impl Default for SyncChooser {
    fn default() -> SyncChooser {
        SyncChooser::new()
    }
}

impl SyncChooser {
    pub fn new() -> SyncChooser {
        SyncChooser {
            classes: [Class::default(); SIZE_CLASSES],
        }
    }

    /// The path for a flush of `bytes`.
    pub fn choose(&mut self, bytes: u64) -> SyncPath {
        let class = &mut self.classes[size_class(bytes)];
        let f = class.samples[0].median();
        let d = class.samples[1].median();
        let path = match (f, d) {
            // Too few samples: learn both, the one with fewer first.
            (None, _) | (_, None) => {
                if class.samples[0].count <= class.samples[1].count {
                    SyncPath::Fdatasync
                } else {
                    SyncPath::Dsync
                }
            }
            (Some(f), Some(d)) => {
                let (best, best_ns, other_ns) = if d < f {
                    (SyncPath::Dsync, d, f)
                } else {
                    (SyncPath::Fdatasync, f, d)
                };
                // Probe the other path more rarely the further behind it
                // is: at 2x, once in 32 flushes; at 10x, once in 160.
                let every = (PROBE_EVERY_MIN as u64).saturating_mul(other_ns) / best_ns.max(1);
                let every = every.clamp(PROBE_EVERY_MIN as u64, PROBE_EVERY_MAX as u64) as u32;
                if class.since_used[best.other().slot()] >= every {
                    best.other()
                } else {
                    best
                }
            }
        };
        for slot in 0..2 {
            class.since_used[slot] = class.since_used[slot].saturating_add(1);
        }
        class.since_used[path.slot()] = 0;
        path
    }

    /// Reports that a flush of `bytes` by `path` took `latency_ns`.
    pub fn record(&mut self, bytes: u64, path: SyncPath, latency_ns: u64) {
        self.classes[size_class(bytes)].samples[path.slot()].push(latency_ns);
    }

    /// The preferred path for a flush of `bytes`, without counting it as a
    /// use (for the owner's own small durable writes).
    pub fn preferred(&self, bytes: u64) -> SyncPath {
        let class = &self.classes[size_class(bytes)];
        match (class.samples[0].median(), class.samples[1].median()) {
            (Some(f), Some(d)) if d < f => SyncPath::Dsync,
            _ => SyncPath::Fdatasync,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `flushes` of `bytes`, with the given latency per path, and
    /// returns how many went to each path.
    fn run(chooser: &mut SyncChooser, bytes: u64, flushes: u32, f_ns: u64, d_ns: u64) -> [u32; 2] {
        let mut counts = [0; 2];
        for _ in 0..flushes {
            let path = chooser.choose(bytes);
            counts[path.slot()] += 1;
            let ns = match path {
                SyncPath::Fdatasync => f_ns,
                SyncPath::Dsync => d_ns,
            };
            chooser.record(bytes, path, ns);
        }
        counts
    }

    #[test]
    fn size_classes_are_powers_of_two_of_a_sector() {
        assert_eq!(size_class(0), 0);
        assert_eq!(size_class(1), 0);
        assert_eq!(size_class(4096), 0);
        assert_eq!(size_class(4097), 1);
        assert_eq!(size_class(8192), 1);
        assert_eq!(size_class(16384), 2);
        assert_eq!(size_class(512 << 10), 7);
        assert_eq!(size_class(64 << 20), 7);
    }

    #[test]
    fn the_faster_path_carries_almost_every_flush() {
        let mut chooser = SyncChooser::new();
        // Quiet disk: RWF_DSYNC 130 µs, write + fdatasync 190 µs.
        let counts = run(&mut chooser, 4096, 1000, 190_000, 130_000);
        assert!(counts[1] >= 930, "{counts:?}");
        // Still probed: a change of regime must be seen.
        assert!(counts[0] >= 1000 / (PROBE_EVERY_MIN * 2), "{counts:?}");
        assert_eq!(chooser.preferred(4096), SyncPath::Dsync);
    }

    #[test]
    fn a_much_slower_path_is_probed_rarely() {
        let mut chooser = SyncChooser::new();
        // Busy filesystem: every sync write 4 ms, io_uring fdatasync 0.1 ms.
        let counts = run(&mut chooser, 4096, 5000, 100_000, 4_000_000);
        let probes = counts[1];
        assert!(
            probes <= 5000 / PROBE_EVERY_MAX + SAMPLES_MIN as u32 + 1,
            "{counts:?}"
        );
        assert!(probes >= 5000 / PROBE_EVERY_MAX, "{counts:?}");
    }

    #[test]
    fn a_change_of_regime_is_followed() {
        let mut chooser = SyncChooser::new();
        run(&mut chooser, 4096, 500, 190_000, 130_000);
        assert_eq!(chooser.preferred(4096), SyncPath::Dsync);
        // Another writer starts syncing on the filesystem: RWF_DSYNC falls
        // into the slow regime. Its own samples show it at once.
        let counts = run(&mut chooser, 4096, 200, 190_000, 4_000_000);
        assert_eq!(chooser.preferred(4096), SyncPath::Fdatasync);
        assert!(counts[1] <= 10, "{counts:?}");
        // The writer stops: the probes find RWF_DSYNC fast again.
        run(&mut chooser, 4096, 20 * PROBE_EVERY_MAX, 190_000, 130_000);
        assert_eq!(chooser.preferred(4096), SyncPath::Dsync);
    }

    #[test]
    fn size_classes_decide_apart() {
        let mut chooser = SyncChooser::new();
        run(&mut chooser, 4096, 300, 190_000, 130_000);
        run(&mut chooser, 1 << 20, 300, 550_000, 600_000);
        assert_eq!(chooser.preferred(4096), SyncPath::Dsync);
        assert_eq!(chooser.preferred(1 << 20), SyncPath::Fdatasync);
    }

    #[test]
    fn an_outlier_does_not_flip_the_choice() {
        let mut chooser = SyncChooser::new();
        run(&mut chooser, 4096, 100, 190_000, 130_000);
        // One flush of the preferred path hits a 4 ms tick.
        let path = chooser.choose(4096);
        chooser.record(4096, path, 4_000_000);
        assert_eq!(chooser.preferred(4096), SyncPath::Dsync);
    }
}
