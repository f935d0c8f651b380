//! What the application did to the working copy, as the FUSE mount saw it:
//! one [`Record`] per operation that changes the tree, and the per-file
//! byte ranges a capture must read ([`coalesce`]).
//!
//! What it does: [`Recorder`] appends records in the order the mount
//! served them (one mount thread: that is the order the application's
//! operations took effect) and hands them over at a capture
//! ([`Recorder::take`]). [`coalesce`] folds a sequence of records into what
//! changed since the previous capture: for each file, the sorted, disjoint
//! byte ranges written (ranges follow a file through renames and are
//! clipped by truncation), and the paths whose existence, kind, mode or
//! link target may have changed.
//!
//! What it does not do: read any byte (the capture reads the ranges), or
//! see writes that did not go through the mount (dirty pages of a shared
//! mapping arrive as writes when the kernel writes them back: a capture
//! must first force that writeback).
//!
//! Invariants: records are bounded (`RECORDS_MAX`); past the bound the
//! recorder keeps only an "overflowed" mark, and the capture must compare
//! the whole tree, as after an inotify queue overflow. Every range in a
//! [`Coalesced`] is non-empty, sorted and disjoint from its neighbours.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use crate::delta::tree::is_under;

/// Records kept between two captures, at most (each is a few dozen bytes
/// plus a path): past it, the capture compares the whole tree.
pub const RECORDS_MAX: usize = 1 << 20;

/// One operation that changed the working copy. Paths are relative to the
/// mount's root, `/`-separated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// `len` bytes written at `offset`: pages written back by the kernel
    /// (from `write(2)` or a shared mapping).
    Write {
        path: String,
        offset: u64,
        len: u64,
    },
    /// The file's size set to `len` (truncate or extend).
    SetLen {
        path: String,
        len: u64,
    },
    /// Space allocated or punched in `[offset, offset + len)`: its bytes
    /// (zeroes, or what was there) and possibly the size changed.
    Fallocate {
        path: String,
        offset: u64,
        len: u64,
    },
    Create {
        path: String,
        mode: u32,
    },
    Mkdir {
        path: String,
        mode: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
    /// A new name `to` for the file `from`.
    Link {
        from: String,
        to: String,
    },
    Unlink {
        path: String,
    },
    Rmdir {
        path: String,
    },
    /// `from` moved to `to`, replacing what `to` was (`exchange`: swapped).
    Rename {
        from: String,
        to: String,
        exchange: bool,
    },
    Chmod {
        path: String,
        mode: u32,
    },
}

/// Appends records as the mount serves operations; a capture takes them.
#[derive(Debug, Default)]
pub struct Recorder {
    inner: Mutex<Taken>,
}

/// The records since the previous [`Recorder::take`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Taken {
    pub records: Vec<Record>,
    /// More than `RECORDS_MAX` operations: `records` is incomplete, and the
    /// capture must compare the whole tree.
    pub overflowed: bool,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder::default()
    }

    pub fn push(&self, record: Record) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.overflowed {
            return;
        }
        if inner.records.len() >= RECORDS_MAX {
            inner.records = Vec::new();
            inner.overflowed = true;
            return;
        }
        inner.records.push(record);
    }

    /// Everything recorded since the previous take.
    pub fn take(&self) -> Taken {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *inner)
    }
}

/// What changed, folded: what a capture must look at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Coalesced {
    /// Per file (its path now): byte ranges `[start, end)` written since
    /// the previous capture, sorted and disjoint. Only files that still
    /// exist under that path, as far as the records tell.
    pub written: BTreeMap<String, Vec<(u64, u64)>>,
    /// Paths whose existence, kind, mode, size or link target may have
    /// changed: the capture compares their metadata (and, for a file that
    /// is new under its path, its whole content).
    pub touched: BTreeSet<String>,
}

/// Folds `records`, in order, into the ranges and paths a capture reads.
pub fn coalesce(records: &[Record]) -> Coalesced {
    let mut c = Coalesced::default();
    for record in records {
        match record {
            Record::Write { path, offset, len } | Record::Fallocate { path, offset, len } => {
                add_range(c.written.entry(path.clone()).or_default(), *offset, *len);
                if matches!(record, Record::Fallocate { .. }) {
                    c.touched.insert(path.clone());
                }
            }
            Record::SetLen { path, len } => {
                if let Some(ranges) = c.written.get_mut(path) {
                    clip(ranges, *len);
                }
                c.touched.insert(path.clone());
            }
            Record::Create { path, .. }
            | Record::Mkdir { path, .. }
            | Record::Symlink { path, .. }
            | Record::Chmod { path, .. } => {
                c.touched.insert(path.clone());
            }
            Record::Link { to, .. } => {
                c.touched.insert(to.clone());
            }
            Record::Unlink { path } | Record::Rmdir { path } => {
                drop_under(&mut c.written, path);
                c.touched.insert(path.clone());
            }
            Record::Rename { from, to, exchange } => rename(&mut c, from, to, *exchange),
        }
    }
    c
}

/// Adds `[offset, offset + len)` to sorted, disjoint `ranges`, merging
/// the ranges it overlaps or touches.
fn add_range(ranges: &mut Vec<(u64, u64)>, offset: u64, len: u64) {
    if len == 0 {
        return;
    }
    let (mut start, mut end) = (offset, offset.saturating_add(len));
    let first = ranges.partition_point(|&(_, e)| e < start);
    let mut last = first;
    while last < ranges.len() && ranges[last].0 <= end {
        start = start.min(ranges[last].0);
        end = end.max(ranges[last].1);
        last += 1;
    }
    ranges.splice(first..last, [(start, end)]);
    debug_assert!(
        ranges.windows(2).all(|w| w[0].1 < w[1].0),
        "sorted, disjoint"
    );
}

/// Drops the parts of `ranges` at or past `len`.
fn clip(ranges: &mut Vec<(u64, u64)>, len: u64) {
    ranges.retain(|&(s, _)| s < len);
    if let Some(last) = ranges.last_mut() {
        last.1 = last.1.min(len);
    }
}

fn drop_under(written: &mut BTreeMap<String, Vec<(u64, u64)>>, dir: &str) {
    written.retain(|p, _| !is_under(p, dir));
}

/// Moves what is known under `from` to `to` (and back, for an exchange).
fn rename(c: &mut Coalesced, from: &str, to: &str, exchange: bool) {
    let moved = |map: &mut BTreeMap<String, Vec<(u64, u64)>>, a: &str| {
        let keys: Vec<String> = map.keys().filter(|p| is_under(p, a)).cloned().collect();
        keys.into_iter()
            .map(|k| {
                let v = map.remove(&k).unwrap_or_default();
                (k, v)
            })
            .collect::<Vec<_>>()
    };
    let from_side = moved(&mut c.written, from);
    let to_side = moved(&mut c.written, to);
    for (k, v) in from_side {
        c.written.insert(format!("{to}{}", &k[from.len()..]), v);
    }
    if exchange {
        for (k, v) in to_side {
            c.written.insert(format!("{from}{}", &k[to.len()..]), v);
        }
    }
    // Both names changed; whatever was under either is now elsewhere or
    // gone, and the capture compares both subtrees.
    let touched_from: Vec<String> = c
        .touched
        .iter()
        .filter(|p| is_under(p, from))
        .cloned()
        .collect();
    for p in touched_from {
        c.touched.insert(format!("{to}{}", &p[from.len()..]));
    }
    c.touched.insert(from.to_string());
    c.touched.insert(to.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(path: &str, offset: u64, len: u64) -> Record {
        Record::Write {
            path: path.into(),
            offset,
            len,
        }
    }

    #[test]
    fn overlapping_and_touching_writes_merge() {
        let c = coalesce(&[
            w("f", 10, 5),
            w("f", 0, 2),
            w("f", 15, 5),
            w("f", 1, 3),
            w("f", 100, 1),
        ]);
        assert_eq!(c.written["f"], vec![(0, 4), (10, 20), (100, 101)]);
        assert!(c.touched.is_empty());
    }

    #[test]
    fn truncation_clips_and_unlink_forgets() {
        let c = coalesce(&[
            w("a", 0, 100),
            w("a", 200, 10),
            Record::SetLen {
                path: "a".into(),
                len: 50,
            },
            w("d/x", 0, 1),
            Record::Unlink { path: "d/x".into() },
        ]);
        assert_eq!(c.written["a"], vec![(0, 50)]);
        assert!(!c.written.contains_key("d/x"));
        assert!(c.touched.contains("a") && c.touched.contains("d/x"));
    }

    #[test]
    fn ranges_follow_a_file_through_renames() {
        let c = coalesce(&[
            w("d/f", 0, 8),
            w("g", 4, 4),
            Record::Rename {
                from: "d".into(),
                to: "e".into(),
                exchange: false,
            },
            Record::Rename {
                from: "e/f".into(),
                to: "g".into(),
                exchange: false,
            },
        ]);
        assert_eq!(c.written.keys().collect::<Vec<_>>(), vec!["g"]);
        assert_eq!(c.written["g"], vec![(0, 8)], "the old g was replaced");
        for p in ["d", "e", "e/f", "g"] {
            assert!(c.touched.contains(p), "{p}");
        }
    }

    #[test]
    fn the_recorder_bounds_what_it_keeps() {
        let r = Recorder::new();
        r.push(w("f", 0, 1));
        assert_eq!(r.take().records.len(), 1);
        assert_eq!(r.take(), Taken::default());
        for _ in 0..=RECORDS_MAX {
            r.push(w("f", 0, 1));
        }
        let taken = r.take();
        assert!(taken.overflowed && taken.records.is_empty());
    }
}
