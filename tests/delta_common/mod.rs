//! Shared harness of the delta engine's property tests: a random
//! application doing arbitrary file operations, and tree comparisons.
#![allow(dead_code)]

use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;

use bunker::delta::index::{FileNode, Node, StateIndex};
use bunker::delta::mem::{listing, Listing};
use bunker::delta::{FileTree, MemTree};
use proptest::prelude::*;

pub const FILES: &[&str] = &[
    "a", "b", "c.db", "d0/a", "d0/b", "d1/a", "d1/x/y", "d0/e/f", "many/0", "many/1", "many/2",
];
pub const DIRS: &[&str] = &["d0", "d1", "d1/x", "d0/e", "many", "empty"];

/// One operation of the random application.
#[derive(Clone, Debug)]
pub enum AppOp {
    /// Write `len` bytes at `offset` (extending the file if needed).
    Write {
        f: usize,
        offset: u32,
        len: u16,
        seed: u8,
    },
    /// Overwrite bytes inside the file without changing its size.
    Overwrite {
        f: usize,
        offset: u32,
        len: u16,
        seed: u8,
    },
    Truncate {
        f: usize,
        len: u32,
    },
    Extend {
        f: usize,
        by: u32,
    },
    /// Truncate to `cut` then extend back to the old size.
    TruncateExtend {
        f: usize,
        cut: u32,
    },
    Create {
        f: usize,
    },
    Remove {
        f: usize,
    },
    /// Remove then create again with new content.
    Recreate {
        f: usize,
        seed: u8,
    },
    Rename {
        from: usize,
        to: usize,
    },
    Mkdir {
        d: usize,
    },
    RemoveDir {
        d: usize,
    },
    RenameDir {
        from: usize,
        to: usize,
    },
    Chmod {
        f: usize,
        mode: u32,
    },
    /// A write far past the end (a sparse hole).
    Sparse {
        f: usize,
        pages: u16,
        seed: u8,
    },
    /// A large write.
    Big {
        f: usize,
        kib: u16,
        seed: u8,
    },
}

pub fn app_op() -> impl Strategy<Value = AppOp> {
    let f = 0..FILES.len();
    let d = 0..DIRS.len();
    prop_oneof![
        6 => (f.clone(), 0u32..20_000, 1u16..3000, any::<u8>()).prop_map(|(f, offset, len, seed)| AppOp::Write { f, offset, len, seed }),
        4 => (f.clone(), 0u32..20_000, 1u16..600, any::<u8>()).prop_map(|(f, offset, len, seed)| AppOp::Overwrite { f, offset, len, seed }),
        1 => (f.clone(), 0u32..12_000).prop_map(|(f, len)| AppOp::Truncate { f, len }),
        1 => (f.clone(), 1u32..9000).prop_map(|(f, by)| AppOp::Extend { f, by }),
        1 => (f.clone(), 0u32..9000).prop_map(|(f, cut)| AppOp::TruncateExtend { f, cut }),
        2 => f.clone().prop_map(|f| AppOp::Create { f }),
        1 => f.clone().prop_map(|f| AppOp::Remove { f }),
        1 => (f.clone(), any::<u8>()).prop_map(|(f, seed)| AppOp::Recreate { f, seed }),
        1 => (f.clone(), f.clone()).prop_map(|(from, to)| AppOp::Rename { from, to }),
        2 => d.clone().prop_map(|d| AppOp::Mkdir { d }),
        1 => d.clone().prop_map(|d| AppOp::RemoveDir { d }),
        1 => (d.clone(), d.clone()).prop_map(|(from, to)| AppOp::RenameDir { from, to }),
        1 => (f.clone(), prop_oneof![Just(0o600u32), Just(0o644), Just(0o640), Just(0o755)]).prop_map(|(f, mode)| AppOp::Chmod { f, mode }),
        1 => (f.clone(), 1u16..300, any::<u8>()).prop_map(|(f, pages, seed)| AppOp::Sparse { f, pages, seed }),
        1 => (f, 1u16..200, any::<u8>()).prop_map(|(f, kib, seed)| AppOp::Big { f, kib, seed }),
    ]
}

pub fn data(len: usize, seed: u8) -> Vec<u8> {
    // Includes zero bytes on purpose (zero runs inside writes).
    (0..len)
        .map(|i| {
            if i % 97 < 5 {
                0
            } else {
                seed.wrapping_add((i as u8).wrapping_mul(31)) | 1
            }
        })
        .collect()
}

fn parent_of(p: &str) -> &str {
    p.rfind('/').map_or("", |i| &p[..i])
}

/// The application's file operations, on some file system.
pub trait AppFs {
    fn size(&mut self, path: &str) -> Option<u64>;
    fn is_dir(&mut self, path: &str) -> bool;
    fn write(&mut self, path: &str, offset: u64, data: &[u8]) -> bool;
    fn set_len(&mut self, path: &str, len: u64) -> bool;
    fn create(&mut self, path: &str) -> bool;
    fn remove(&mut self, path: &str) -> bool;
    fn rename(&mut self, from: &str, to: &str) -> bool;
    fn mkdir(&mut self, path: &str) -> bool;
    fn remove_tree(&mut self, path: &str) -> bool;
    fn chmod(&mut self, path: &str, mode: u32) -> bool;
}

/// Runs `op`; operations that do not make sense in the current tree (a
/// missing parent, say) simply fail, as they would for a real application.
pub fn run_op(fs: &mut dyn AppFs, op: &AppOp) {
    match *op {
        AppOp::Write {
            f,
            offset,
            len,
            seed,
        } => {
            let p = FILES[f];
            if fs.size(p).is_some() {
                fs.write(p, offset as u64, &data(len as usize, seed));
            }
        }
        AppOp::Overwrite {
            f,
            offset,
            len,
            seed,
        } => {
            let p = FILES[f];
            if let Some(size) = fs.size(p) {
                if size > 0 {
                    let at = offset as u64 % size;
                    let n = (len as u64).min(size - at) as usize;
                    fs.write(p, at, &data(n, seed));
                }
            }
        }
        AppOp::Truncate { f, len } => {
            fs.set_len(FILES[f], len as u64);
        }
        AppOp::Extend { f, by } => {
            if let Some(size) = fs.size(FILES[f]) {
                fs.set_len(FILES[f], size + by as u64);
            }
        }
        AppOp::TruncateExtend { f, cut } => {
            if let Some(size) = fs.size(FILES[f]) {
                fs.set_len(FILES[f], (cut as u64).min(size));
                fs.set_len(FILES[f], size);
            }
        }
        AppOp::Create { f } => {
            let p = FILES[f];
            if fs.size(p).is_none() && fs.is_dir(parent_of(p)) {
                fs.create(p);
            }
        }
        AppOp::Remove { f } => {
            fs.remove(FILES[f]);
        }
        AppOp::Recreate { f, seed } => {
            let p = FILES[f];
            if fs.size(p).is_some() && fs.remove(p) && fs.create(p) {
                fs.write(p, 0, &data(100 + seed as usize * 7, seed));
            }
        }
        AppOp::Rename { from, to } => {
            if fs.size(FILES[from]).is_some()
                && !fs.is_dir(FILES[to])
                && fs.is_dir(parent_of(FILES[to]))
            {
                fs.rename(FILES[from], FILES[to]);
            }
        }
        AppOp::Mkdir { d } => {
            let p = DIRS[d];
            if fs.is_dir(parent_of(p)) && fs.size(p).is_none() {
                fs.mkdir(p);
            }
        }
        AppOp::RemoveDir { d } => {
            if fs.is_dir(DIRS[d]) {
                fs.remove_tree(DIRS[d]);
            }
        }
        AppOp::RenameDir { from, to } => {
            let (a, b) = (DIRS[from], DIRS[to]);
            let into_itself = b == a || b.starts_with(&format!("{a}/"));
            if fs.is_dir(a)
                && !into_itself
                && fs.size(b).is_none()
                && !fs.is_dir(b)
                && fs.is_dir(parent_of(b))
            {
                fs.rename(a, b);
            }
        }
        AppOp::Chmod { f, mode } => {
            if fs.size(FILES[f]).is_some() {
                fs.chmod(FILES[f], mode);
            }
        }
        AppOp::Sparse { f, pages, seed } => {
            if let Some(size) = fs.size(FILES[f]) {
                fs.write(FILES[f], size + pages as u64 * 4096 + 13, &data(50, seed));
            }
        }
        AppOp::Big { f, kib, seed } => {
            if fs.size(FILES[f]).is_some() {
                fs.write(FILES[f], 777, &data(kib as usize * 1024, seed));
            }
        }
    }
}

/// The application on the in-memory tree (through the tree's own methods,
/// which record changes as inotify would).
pub struct MemApp<'a> {
    pub tree: &'a mut MemTree,
    pub root: &'static str,
}

impl MemApp<'_> {
    fn p(&self, path: &str) -> String {
        if path.is_empty() {
            self.root.to_string()
        } else {
            format!("{}/{path}", self.root)
        }
    }
}

impl AppFs for MemApp<'_> {
    fn size(&mut self, path: &str) -> Option<u64> {
        let p = self.p(path);
        match self.tree.stat(&p) {
            Ok(Some(m)) if m.kind == bunker::delta::Kind::File => Some(m.size_bytes),
            _ => None,
        }
    }
    fn is_dir(&mut self, path: &str) -> bool {
        let p = self.p(path);
        matches!(self.tree.stat(&p), Ok(Some(m)) if m.kind == bunker::delta::Kind::Dir)
    }
    fn write(&mut self, path: &str, offset: u64, data: &[u8]) -> bool {
        let p = self.p(path);
        self.tree.write_at(&p, offset, data).is_ok()
    }
    fn set_len(&mut self, path: &str, len: u64) -> bool {
        let p = self.p(path);
        self.size(path).is_some() && self.tree.set_len(&p, len).is_ok()
    }
    fn create(&mut self, path: &str) -> bool {
        let p = self.p(path);
        self.tree.create_file(&p, 0o644).is_ok()
    }
    fn remove(&mut self, path: &str) -> bool {
        let p = self.p(path);
        self.size(path).is_some() && self.tree.remove_file(&p).is_ok()
    }
    fn rename(&mut self, from: &str, to: &str) -> bool {
        let (a, b) = (self.p(from), self.p(to));
        self.tree.rename(&a, &b).is_ok()
    }
    fn mkdir(&mut self, path: &str) -> bool {
        let p = self.p(path);
        self.tree.mkdir(&p, 0o755).is_ok()
    }
    fn remove_tree(&mut self, path: &str) -> bool {
        let p = self.p(path);
        let names = match self.tree.list(&p) {
            Ok(names) => names,
            Err(_) => return false,
        };
        for name in names {
            let child = format!("{path}/{name}");
            if self.is_dir(&child) {
                self.remove_tree(&child);
            } else {
                self.remove(&child);
            }
        }
        self.tree.remove_dir(&p).is_ok()
    }
    fn chmod(&mut self, path: &str, mode: u32) -> bool {
        let p = self.p(path);
        self.tree.set_mode(&p, mode).is_ok()
    }
}

/// The application on real files, through std::fs (as a real program).
pub struct RealApp<'a> {
    pub root: &'a Path,
}

impl AppFs for RealApp<'_> {
    fn size(&mut self, path: &str) -> Option<u64> {
        std::fs::symlink_metadata(self.root.join(path))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }
    fn is_dir(&mut self, path: &str) -> bool {
        std::fs::symlink_metadata(self.root.join(path))
            .map(|m| m.is_dir())
            .unwrap_or(false)
    }
    fn write(&mut self, path: &str, offset: u64, data: &[u8]) -> bool {
        let Ok(file) = std::fs::OpenOptions::new()
            .write(true)
            .open(self.root.join(path))
        else {
            return false;
        };
        file.write_all_at(data, offset).is_ok()
    }
    fn set_len(&mut self, path: &str, len: u64) -> bool {
        let Ok(file) = std::fs::OpenOptions::new()
            .write(true)
            .open(self.root.join(path))
        else {
            return false;
        };
        file.set_len(len).is_ok()
    }
    fn create(&mut self, path: &str) -> bool {
        std::fs::File::create(self.root.join(path)).is_ok()
            && std::fs::set_permissions(
                self.root.join(path),
                std::fs::Permissions::from_mode(0o644),
            )
            .is_ok()
    }
    fn remove(&mut self, path: &str) -> bool {
        std::fs::remove_file(self.root.join(path)).is_ok()
    }
    fn rename(&mut self, from: &str, to: &str) -> bool {
        std::fs::rename(self.root.join(from), self.root.join(to)).is_ok()
    }
    fn mkdir(&mut self, path: &str) -> bool {
        std::fs::create_dir(self.root.join(path)).is_ok()
            && std::fs::set_permissions(
                self.root.join(path),
                std::fs::Permissions::from_mode(0o755),
            )
            .is_ok()
    }
    fn remove_tree(&mut self, path: &str) -> bool {
        std::fs::remove_dir_all(self.root.join(path)).is_ok()
    }
    fn chmod(&mut self, path: &str, mode: u32) -> bool {
        std::fs::set_permissions(self.root.join(path), std::fs::Permissions::from_mode(mode))
            .is_ok()
    }
}

/// The state hash of a listing, computed from scratch.
pub fn hash_of(listing: &Listing) -> u128 {
    let mut index = StateIndex::new();
    for (path, (is_dir, mode, data)) in listing {
        let node = if *is_dir {
            Node::Dir { mode: *mode }
        } else {
            Node::File(FileNode::from_bytes(*mode, data))
        };
        index.insert(path, node);
    }
    index.hash()
}

pub fn list<T: FileTree>(tree: &mut T, root: &str) -> Listing {
    listing(tree, root).expect("listing")
}

/// Asserts two listings are equal, with a readable difference.
pub fn assert_same(what: &str, got: &Listing, want: &Listing) {
    if got == want {
        return;
    }
    let mut report = String::new();
    for (path, entry) in want {
        match got.get(path) {
            None => report.push_str(&format!("  missing {path}\n")),
            Some(g) if g != entry => report.push_str(&format!(
                "  differs {path}: dir {} vs {}, mode {:o} vs {:o}, {} vs {} bytes, first diff at {:?}\n",
                g.0,
                entry.0,
                g.1,
                entry.1,
                g.2.len(),
                entry.2.len(),
                g.2.iter().zip(&entry.2).position(|(a, b)| a != b)
            )),
            _ => {}
        }
    }
    for path in got.keys() {
        if !want.contains_key(path) {
            report.push_str(&format!("  extra {path}\n"));
        }
    }
    panic!("{what}: trees differ:\n{report}");
}

/// A first command that populates the tree (directories, files with data),
/// so that random operations find something to work on.
pub fn setup_ops() -> Vec<AppOp> {
    let mut ops: Vec<AppOp> = (0..DIRS.len()).map(|d| AppOp::Mkdir { d }).collect();
    for f in 0..FILES.len() {
        ops.push(AppOp::Create { f });
        ops.push(AppOp::Write {
            f,
            offset: 0,
            len: 1000 + 997 * f as u16,
            seed: f as u8,
        });
    }
    ops
}

/// Proptest cases: `default`, or `DELTA_CASES` from the environment (for
/// longer soak runs: `DELTA_CASES=5000 cargo test --test delta_props`).
pub fn cases(default: u32) -> u32 {
    std::env::var("DELTA_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
